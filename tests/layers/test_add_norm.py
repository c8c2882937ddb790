"""AddNorm: values against NumPy layer/RMS norm, pre-norm, masks, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm.layers import AddNorm
from tests.helpers import run_layer_test, tensorflow_only

RNG = np.random.default_rng(0)
RESIDUAL = RNG.normal(size=(2, 4, 8)).astype("float32")
SUBLAYER = RNG.normal(size=(2, 4, 8)).astype("float32")
MASK = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)


@pytest.mark.parametrize("normalization", ["layer", "rms"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_checks(normalization, norm_first):
    run_layer_test(
        AddNorm,
        {"normalization": normalization, "norm_first": norm_first},
        [RESIDUAL, SUBLAYER],
        num_trainable_weights=2 if normalization == "layer" else 1,
        expected_output_shape=(2, 4, 8),
        input_mask=MASK,
        # Pre-norm's call only adds; its weights train through normalize().
        run_fit=not norm_first,
    )


def test_layer_norm_matches_numpy():
    out = ops.convert_to_numpy(AddNorm(epsilon=1e-5)([RESIDUAL, SUBLAYER]))
    total = (RESIDUAL + SUBLAYER).astype("float64")
    mean = total.mean(-1, keepdims=True)
    var = total.var(-1, keepdims=True)
    np.testing.assert_allclose(
        out, (total - mean) / np.sqrt(var + 1e-5), atol=1e-5
    )


def test_rms_norm_matches_numpy():
    out = ops.convert_to_numpy(
        AddNorm("rms", epsilon=1e-6)([RESIDUAL, SUBLAYER])
    )
    total = (RESIDUAL + SUBLAYER).astype("float64")
    rms = np.sqrt((total**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, total / rms, atol=1e-5)


def test_normalizes_over_features_not_batch():
    # Scaling one sentence must not change another (batch norm would).
    layer = AddNorm()
    out = ops.convert_to_numpy(layer([RESIDUAL, SUBLAYER]))
    scaled = RESIDUAL.copy()
    scaled[1] *= 100
    out2 = ops.convert_to_numpy(layer([scaled, SUBLAYER]))
    np.testing.assert_allclose(out[0], out2[0], atol=1e-6)


def test_pre_norm_adds_and_normalize_normalizes():
    layer = AddNorm(norm_first=True)
    out = ops.convert_to_numpy(layer([RESIDUAL, SUBLAYER]))
    np.testing.assert_allclose(out, RESIDUAL + SUBLAYER, atol=1e-6)
    normed = ops.convert_to_numpy(layer.normalize(RESIDUAL))
    np.testing.assert_allclose(normed.mean(-1), 0, atol=1e-5)


def test_statistics_in_float32_under_float16():
    keras.config.set_dtype_policy("mixed_float16")
    big = (RESIDUAL * 300).astype("float16")  # squares overflow float16
    out = ops.convert_to_numpy(AddNorm()([big, big]))
    assert np.isfinite(out.astype("float32")).all()
    np.testing.assert_allclose(out.astype("float32").std(-1), 1.0, atol=1e-2)


def test_dropout_applies_to_sublayer_only_in_training():
    layer = AddNorm(dropout=0.5, norm_first=True)
    a = ops.convert_to_numpy(layer([RESIDUAL, SUBLAYER], training=False))
    b = ops.convert_to_numpy(layer([RESIDUAL, SUBLAYER], training=True))
    np.testing.assert_allclose(a, RESIDUAL + SUBLAYER, atol=1e-6)
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"normalization": "batch"}, "normalization"),
        ({"epsilon": 0}, "epsilon"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AddNorm(**kwargs)


def test_inputs_of_different_shapes_are_rejected():
    with pytest.raises(ValueError, match="equal shapes"):
        AddNorm()([RESIDUAL, SUBLAYER[:, :3]])
    with pytest.raises(ValueError, match="list"):
        AddNorm()(RESIDUAL)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": float("inf")}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"norm_first": "yes"}, "norm_first.*Received: norm_first='yes'"),
        ({"norm_first": 1}, "norm_first"),
    ],
)
def test_bad_numbers_and_flags(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AddNorm(**kwargs)


@pytest.mark.parametrize(
    "shape",
    [
        [(2, 4, 8), (2, 4, 8)],
        ([2, 4, 8], [None, 4, 8]),
        [np.array([2, 4, 8]), (2, 4, 8)],  # NumPy integer sizes
    ],
)
def test_build_accepts_any_shape_sequences(shape):
    layer = AddNorm()
    layer.build(shape)
    assert tuple(layer.norm.gamma.shape) == (8,)


@pytest.mark.parametrize(
    "shape", [(2, 4, 8), [(2, 4, 8)], [(2, 4, 8), "abc"], [(2, 4, 8), None]]
)
def test_build_rejects_what_is_not_two_shapes(shape):
    with pytest.raises(ValueError, match="list"):
        AddNorm().build(shape)


@tensorflow_only
def test_builds_from_tensorflow_tensor_shapes():
    import tensorflow as tf

    from keras_tfm.layers import (
        TransformerDecoderBlock,
        TransformerEncoderBlock,
    )

    x = tf.constant(RESIDUAL)
    layer = AddNorm()
    layer.build([x.shape, x.shape])
    assert tuple(layer.norm.gamma.shape) == (8,)
    encoder = TransformerEncoderBlock(num_heads=2, intermediate_dim=16)
    encoder.build(x.shape)
    assert encoder.built
    decoder = TransformerDecoderBlock(
        num_heads=2, intermediate_dim=16, cross_attention=False
    )
    decoder.build(x.shape)
    assert tuple(encoder(x).shape) == tuple(decoder(x).shape) == (2, 4, 8)
