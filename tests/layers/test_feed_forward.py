"""FeedForward: values against its Dense layers, GLU variants, errors."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm.layers import FeedForward
from tests.helpers import run_layer_test

X = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")


@pytest.mark.parametrize("gated", [False, True])
def test_layer_checks(gated):
    run_layer_test(
        FeedForward,
        {"intermediate_dim": 16, "activation": "gelu", "gated": gated},
        X,
        num_trainable_weights=6 if gated else 4,
        expected_output_shape=(2, 4, 8),
        input_mask=np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool),
    )


def _dense(layer, x):
    kernel = ops.convert_to_numpy(layer.kernel)
    return x @ kernel + ops.convert_to_numpy(layer.bias)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_matches_its_two_dense_layers(activation):
    ffn = FeedForward(16, activation=activation)
    out = ops.convert_to_numpy(ffn(X))
    act = keras.activations.get(activation)
    hidden = ops.convert_to_numpy(act(_dense(ffn.intermediate_dense, X)))
    np.testing.assert_allclose(out, _dense(ffn.output_dense, hidden), atol=1e-5)


def test_gated_is_activation_of_gate_times_linear():
    ffn = FeedForward(16, activation="silu", gated=True)
    out = ops.convert_to_numpy(ffn(X))
    gate = _dense(ffn.gate_dense, X)
    gate = gate / (1 + np.exp(-gate))
    hidden = gate * _dense(ffn.intermediate_dense, X)
    np.testing.assert_allclose(out, _dense(ffn.output_dense, hidden), atol=1e-5)


def test_output_dim():
    assert tuple(FeedForward(16, output_dim=3)(X).shape) == (2, 4, 3)


def test_dropout_only_in_training():
    ffn = FeedForward(64, dropout=0.5)
    a = ops.convert_to_numpy(ffn(X, training=False))
    b = ops.convert_to_numpy(ffn(X, training=False))
    c = ops.convert_to_numpy(ffn(X, training=True))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"intermediate_dim": 0}, "intermediate_dim"),
        ({"intermediate_dim": 4, "activation": "nope"}, "activation"),
        ({"intermediate_dim": 4, "dropout": 1.5}, "dropout"),
        ({"intermediate_dim": 4, "dropout": -0.5}, "dropout"),
        ({"intermediate_dim": 4, "output_dim": 0}, "output_dim"),
        (
            {"intermediate_dim": 4, "gated": "no"},
            "gated.*Received: gated='no'",
        ),
        ({"intermediate_dim": 4, "use_bias": 0}, "use_bias"),
        ({"intermediate_dim": 4, "kernel_initializer": "x"}, "kernel_init"),
        ({"intermediate_dim": 4, "bias_initializer": 3}, "bias_initializer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeedForward(**kwargs)


@pytest.mark.parametrize("which", ["kernel_initializer", "bias_initializer"])
def test_each_dense_layer_gets_its_own_initializer(which):
    # One unseeded instance shared by the gate and linear layers would give
    # both the same values.
    ffn = FeedForward(
        16, gated=True, **{which: keras.initializers.RandomNormal()}
    )
    ffn.build((2, 4, 8))
    weight = "kernel" if which == "kernel_initializer" else "bias"
    gate = ops.convert_to_numpy(getattr(ffn.gate_dense, weight))
    linear = ops.convert_to_numpy(getattr(ffn.intermediate_dense, weight))
    assert not np.allclose(gate, linear)


def test_quantized_feed_forward_saves_and_loads(tmp_path):
    # Its Dense layers are built in `build`, so the config must say which
    # are quantized for the reloaded ones to take the int8 weights.
    inputs = keras.Input((4, 8))
    model = keras.Model(inputs, FeedForward(16, gated=True)(inputs))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Layer .* does not have")
        model.quantize("int8")
    path = str(tmp_path / "ffn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ffn = loaded.layers[1]
    for dense in (ffn.intermediate_dense, ffn.gate_dense, ffn.output_dense):
        assert dense.quantization_mode == "int8"
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(X)),
        ops.convert_to_numpy(model(X)),
        atol=1e-6,
    )


# ------------------------------------------------------ gelu_approximate


def test_gelu_approximate_is_gpt2_gelu_new():
    import torch
    from transformers.activations import NewGELUActivation

    from keras_tfm.activations import gelu_approximate

    x = np.linspace(-6, 6, 101).astype("float32")
    expected = NewGELUActivation()(torch.from_numpy(x)).numpy()
    got = ops.convert_to_numpy(gelu_approximate(x))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    exact = ops.convert_to_numpy(keras.activations.gelu(x))
    assert not np.allclose(got, exact, atol=1e-5)


@pytest.mark.parametrize("gated", [False, True])
def test_gelu_approximate_round_trips(gated):
    outputs = run_layer_test(
        FeedForward,
        {
            "intermediate_dim": 16,
            "activation": "gelu_approximate",
            "gated": gated,
        },
        np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32"),
        expected_output_shape=(2, 3, 8),
        num_trainable_weights=6 if gated else 4,
    )
    layer = FeedForward(16, activation="gelu_approximate")
    assert layer.get_config()["activation"] == "gelu_approximate"
    assert outputs


def test_gelu_approximate_in_blocks_round_trips(tmp_path):
    from keras_tfm.layers import TransformerDecoderBlock

    block = TransformerDecoderBlock(
        num_heads=2,
        intermediate_dim=16,
        activation="gelu_approximate",
        cross_attention=False,
        norm_first=True,
    )
    inputs = keras.Input((4, 8))
    model = keras.Model(inputs, block(inputs))
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "block.keras")
    loaded = keras.saving.load_model(tmp_path / "block.keras")
    assert loaded.layers[-1].get_config()["activation"] == "gelu_approximate"
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), expected, atol=1e-6
    )


def _local_activation():
    def doubled_relu(x):
        return 2 * ops.relu(x)

    return doubled_relu


@pytest.mark.parametrize(
    "activation", [lambda x: ops.relu(x), _local_activation()]
)
@pytest.mark.parametrize("block", [False, True])
def test_saving_an_unnamed_activation_names_it(tmp_path, activation, block):
    """A lambda or local function runs, but saving it names the callable
    and the registered names to use, instead of failing at load time in
    `from_config`."""
    from keras_tfm.layers import TransformerEncoderBlock

    layer = (
        TransformerEncoderBlock(
            num_heads=2, intermediate_dim=16, activation=activation
        )
        if block
        else FeedForward(16, activation=activation)
    )
    inputs = keras.Input((4, 8))
    model = keras.Model(inputs, layer(inputs))
    assert tuple(model(np.ones((1, 4, 8), "float32")).shape) == (1, 4, 8)
    with pytest.raises(
        ValueError, match="unnamed activation.*gelu_approximate"
    ):
        layer.get_config()
    with pytest.raises(ValueError, match=activation.__qualname__):
        model.save(tmp_path / "model.keras")
