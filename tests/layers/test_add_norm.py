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


# ----------------------------------------------------- RMSNormalization


def test_rms_normalization_layer_checks():
    from keras_tfm.layers import RMSNormalization

    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    run_layer_test(
        RMSNormalization,
        {"epsilon": 1e-5},
        x,
        expected_output_shape=(2, 5, 8),
        input_mask=np.array([[True] * 5, [True] * 2 + [False] * 3]),
        num_trainable_weights=1,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rms_normalization_matches_llama_rms_norm(dtype):
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    import keras_tfm
    from keras_tfm.layers import RMSNormalization

    assert keras_tfm.RMSNormalization is RMSNormalization
    rng = np.random.default_rng(1)
    x = (3.0 * rng.normal(size=(2, 5, 8))).astype("float32")
    scale = rng.normal(size=(8,)).astype("float32")
    theirs = LlamaRMSNorm(8, eps=1e-6).to(getattr(torch, dtype))
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(scale))
        expected = theirs(torch.from_numpy(x).to(getattr(torch, dtype)))
    ours = RMSNormalization(epsilon=1e-6, dtype=dtype)
    ours.build(x.shape)
    ours.scale.assign(scale)
    got = ours(ops.cast(x, dtype))
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(got, "float32")),
        expected.float().numpy(),
        atol=1e-5 if dtype == "float32" else 0.0,
        rtol=1e-6 if dtype == "float32" else 1e-2,
    )


def test_old_rms_normalization_name_still_loads():
    from keras_tfm.layers.add_norm import MaskedRMSNormalization

    layer = keras.saving.deserialize_keras_object(
        {
            "module": None,
            "class_name": "MaskedRMSNormalization",
            "registered_name": "keras_tfm>MaskedRMSNormalization",
            "config": {"epsilon": 1e-5, "axis": -1},
        }
    )
    assert isinstance(layer, MaskedRMSNormalization)
    assert layer.epsilon == 1e-5 and layer.supports_masking
