"""Joined projections: one product for the Dense layers that share an input,
a sliced product for one row, the same numbers as the layers one by one,
and on only where XLA compiles the decoding loop."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm import _backend
from keras_tfm.generation import Generator
from keras_tfm.layers import FeedForward, MultiHeadAttention, _projections
from keras_tfm.layers._projections import project, project_together
from keras_tfm.models import decoder_lm

X = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")


@pytest.fixture
def dense_calls(monkeypatch):
    """How many times a Dense layer's own `call` ran."""
    calls = []
    call = keras.layers.Dense.call

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Dense, "call", counted)
    return calls


def _denses(use_bias=True, lora=False):
    keras.utils.set_random_seed(1)
    denses = [
        keras.layers.Dense(8, use_bias=use_bias, name="a"),
        keras.layers.Dense(4, use_bias=use_bias, activation="silu", name="b"),
        keras.layers.Dense(3, use_bias=use_bias, name="c"),
    ]
    for dense in denses:
        dense.build((None, 6))
        if use_bias:
            dense.bias.assign(np.linspace(-1, 1, dense.units))
        if lora:
            dense.enable_lora(2)
            dense.lora_kernel_b.assign(np.ones((2, dense.units)) * 0.3)
    return denses


@pytest.mark.parametrize("use_bias, lora", [(True, False), (False, True)])
def test_joined_equals_separate(dense_calls, use_bias, lora):
    denses = _denses(use_bias, lora)
    separate = [ops.convert_to_numpy(y) for y in project_together(denses, X)]
    assert dense_calls == ["a", "b", "c"]
    with _backend.joining_projections():
        joined = project_together(denses, X)
    assert dense_calls == ["a", "b", "c"]  # one joined product, no Dense
    assert [tuple(y.shape) for y in joined] == [(5, 8), (5, 4), (5, 3)]
    for a, b in zip(separate, joined, strict=True):
        np.testing.assert_allclose(a, ops.convert_to_numpy(b), rtol=1e-6)


@pytest.fixture
def products(monkeypatch):
    """The kernel shapes of the matmuls `_projections` computes."""
    shapes = []
    matmul = ops.matmul

    def spy(a, b):
        shapes.append(tuple(b.shape))
        return matmul(a, b)

    monkeypatch.setattr(_projections.ops, "matmul", spy)
    return shapes


@pytest.mark.parametrize("dim", [256, 768, 6])
@pytest.mark.parametrize("lora", [False, True])
def test_one_row_is_a_sliced_product(dense_calls, products, dim, lora):
    keras.utils.set_random_seed(4)
    dense = keras.layers.Dense(5, activation="gelu", name="a")
    dense.build((None, dim))
    dense.bias.assign(np.linspace(-1, 1, 5))
    if lora:
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(np.ones((2, 5)) * 0.3)
    x = np.random.default_rng(5).normal(size=(1, dim)).astype("float32")
    expected = ops.convert_to_numpy(dense(x))
    del dense_calls[:]
    with _backend.joining_projections():
        result = project(dense, x)
    assert dense_calls == []
    rows = {256: 128, 768: 192, 6: None}[dim]
    sliced = [(dim // rows, rows, 5)] if rows else [(dim, 5)]
    assert products == sliced
    np.testing.assert_allclose(
        expected, ops.convert_to_numpy(result), rtol=1e-5, atol=1e-6
    )
    # bfloat16 keeps one product (its partial products would be rounded).
    dense.dtype_policy = "mixed_bfloat16"
    del products[:]
    with _backend.joining_projections():
        project(dense, x)
    assert products == [(dim, 5)]
    dense.dtype_policy = "float32"
    # Several rows, or the switch off: the layer itself.
    with _backend.joining_projections():
        project(dense, np.concatenate([x, x]))
    project(dense, x)
    assert dense_calls == ["a", "a"]


def test_joined_one_row_is_sliced_too(products):
    keras.utils.set_random_seed(6)
    denses = [keras.layers.Dense(units, name=str(units)) for units in (7, 3)]
    for dense in denses:
        dense.build((None, 384))
    x = np.random.default_rng(7).normal(size=(1, 384)).astype("float32")
    expected = [ops.convert_to_numpy(dense(x)) for dense in denses]
    with _backend.joining_projections():
        joined = project_together(denses, x)
    assert products == [(2, 192, 10)]  # one joined kernel, in two slices
    for a, b in zip(expected, joined, strict=True):
        np.testing.assert_allclose(a, ops.convert_to_numpy(b), rtol=1e-5)


def test_mixed_biases_and_quantized_layers_stay_separate(dense_calls):
    denses = _denses()
    mixed = denses[:2] + [keras.layers.Dense(3, use_bias=False, name="d")]
    mixed[2].build((None, 6))
    with _backend.joining_projections():
        project_together(mixed, X)
    assert dense_calls == ["a", "b", "d"]
    del dense_calls[:]
    denses[0].quantize("int8")
    expected = [ops.convert_to_numpy(d(X)) for d in denses]
    with _backend.joining_projections():
        results = project_together(denses, X)
    for a, b in zip(expected, results, strict=True):
        np.testing.assert_allclose(a, ops.convert_to_numpy(b), rtol=1e-6)


def test_joined_attention_step_and_gated_feed_forward():
    keras.utils.set_random_seed(2)
    x = np.random.default_rng(3).normal(size=(2, 6, 16)).astype("float32")
    layer = MultiHeadAttention(
        4,
        8,
        num_key_value_heads=2,
        position="rotary",
        query_key_norm=True,
    )
    layer(x, x)
    ffn = FeedForward(32, activation="silu", gated=True)
    ffn(x)

    def run():
        cache = layer.compute_cache(x[:, :4], max_length=6)
        step, cache = layer(x[:, 4:5], x[:, 4:5], cache=cache, cache_index=4)
        return [ops.convert_to_numpy(t) for t in (step, cache, ffn(x))]

    separate = run()
    with _backend.joining_projections():
        joined = run()
    for a, b in zip(separate, joined, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_generate_joins_where_xla_compiles_the_loop(monkeypatch, jit_compile):
    seen = []
    joined = _backend.joined_projections

    def spy():
        seen.append(joined())
        return seen[-1]

    monkeypatch.setattr(_backend, "joined_projections", spy)
    model = decoder_lm(
        30, 12, num_layers=1, embedding_dim=16, num_heads=2,
        intermediate_dim=32,
    )  # fmt: skip
    generator = Generator(model, jit_compile=jit_compile)
    generator.generate([[3, 4, 5]], max_length=8)
    backend = keras.backend.backend()
    expected = backend == "jax" or (backend == "tensorflow" and jit_compile)
    # Checks outside the compiled search do not join.
    assert (True in seen) == expected
    del seen[:]
    list(generator.stream([[3, 4, 5]], max_length=8))
    assert True not in seen
    # Compiled on PyTorch, `stream` traces nothing: it reuses the prefill
    # graph and the step that `generate` traced.
    assert bool(seen) != (backend == "torch" and jit_compile)
