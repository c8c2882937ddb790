"""SequencePooling against NumPy references, with and without masks."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_tfm.layers.pooling import SequencePooling
from tests.helpers import AttachMask, run_layer_test, to_numpy

BATCH, LENGTH, DIM = 3, 5, 4


def random_inputs(seed=0, length=LENGTH):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(BATCH, length, DIM)).astype("float32")


def padding(lengths, total=LENGTH):
    return np.arange(total)[None, :] < np.asarray(lengths)[:, None]


def numpy_pooling(x, mask, mode):
    """Reference: pool each row over its real positions only."""
    out = np.zeros((x.shape[0], x.shape[-1]), "float64")
    for row, (values, keep) in enumerate(zip(x, mask, strict=True)):
        if mode == "first":
            out[row] = values[0]
        elif keep.any():
            real = values[keep].astype("float64")
            out[row] = real.mean(0) if mode == "mean" else real.max(0)
    return out


@pytest.mark.parametrize("mode", ["mean", "max", "first"])
def test_matches_numpy_with_mask(mode):
    x = random_inputs()
    # Large values at padding would dominate an unmasked mean or max.
    mask = padding([5, 3, 1])
    x[~mask] = 100.0
    got = to_numpy(SequencePooling(mode)(x, mask=mask))
    np.testing.assert_allclose(got, numpy_pooling(x, mask, mode), atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max", "first"])
def test_matches_numpy_without_mask(mode):
    x = random_inputs(seed=1)
    got = to_numpy(SequencePooling(mode)(x))
    everything = np.ones((BATCH, LENGTH), bool)
    expected = numpy_pooling(x, everything, mode)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_max_of_negative_values_ignores_padding():
    # Padding that is zero (not large) must not win against negatives.
    x = -np.ones((1, 3, 2), "float32") * np.array([[[3.0], [2.0], [0.0]]])
    mask = np.array([[True, True, False]])
    got = to_numpy(SequencePooling("max")(x, mask=mask))
    np.testing.assert_allclose(got, [[-2.0, -2.0]])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_fully_padded_row_gives_finite_zeros(mode, dtype):
    x = ops.cast(random_inputs(seed=2), dtype)
    mask = padding([0, 2, 5])
    got = to_numpy(SequencePooling(mode, dtype=dtype)(x, mask=mask))
    assert np.isfinite(got).all(), got
    np.testing.assert_array_equal(got[0], np.zeros(DIM))
    assert np.abs(got[1:]).sum() > 0


@pytest.mark.parametrize("mode", ["mean", "max", "first"])
def test_uses_the_keras_mask_of_its_inputs(mode):
    x = random_inputs(seed=3)
    mask = padding([4, 2, 1])
    x[~mask] = 50.0
    values = keras.Input((LENGTH, DIM))
    keep = keras.Input((LENGTH,), dtype="bool")
    pooled = SequencePooling(mode)(AttachMask()([values, keep]))
    model = keras.Model([values, keep], pooled)
    got = to_numpy(model.predict([x, mask], verbose=0))
    np.testing.assert_allclose(got, numpy_pooling(x, mask, mode), atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(
    mode=st.sampled_from(["mean", "max", "first"]),
    lengths=st.lists(st.integers(1, LENGTH), min_size=BATCH, max_size=BATCH),
    extra=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_appending_padding_does_not_change_output(mode, lengths, extra, seed):
    x = random_inputs(seed=4)
    mask = padding(lengths)
    # Garbage of both signs, far larger than the real values.
    garbage = 100 * np.random.default_rng(seed).normal(size=(BATCH, extra, DIM))
    longer = np.concatenate([x, garbage.astype("float32")], axis=1)
    longer_mask = np.concatenate([mask, np.zeros((BATCH, extra), bool)], 1)
    layer = SequencePooling(mode)
    short = to_numpy(layer(x, mask=mask))
    long = to_numpy(layer(longer, mask=longer_mask))
    np.testing.assert_allclose(long, short, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max", "first"])
def test_layer_contract(mode):
    outputs = run_layer_test(
        SequencePooling,
        {"mode": mode},
        random_inputs(seed=5),
        num_trainable_weights=0,
        expected_output_shape=(BATCH, DIM),
        input_mask=padding([5, 3, 1]),
        expect_mask=False,
    )
    assert keras.backend.standardize_dtype(outputs[0].dtype) == "float32"


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode.*Received: mode='sum'"):
        SequencePooling("sum")
    with pytest.raises(ValueError, match="rank 3"):
        SequencePooling()(np.zeros((2, 4), "float32"))
