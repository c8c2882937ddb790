"""Tests of keras_tfm.layers.attention.MultiHeadAttention."""

import functools

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_tfm import _backend, masks
from keras_tfm.layers.attention import MultiHeadAttention
from tests.helpers import (
    assert_real_positions_close,
    copy_hf_attention,
    hf_config,
    hf_mask,
    hf_modules,
    padding,
    random_inputs,
    randomize_torch,
    run_layer_test,
    to_numpy,
)

DIM, HEADS, KEY_DIM, LENGTH, BATCH = 16, 2, 8, 6, 2
BACKEND = keras.backend.backend()


@functools.cache
def built_layer(position="none", dropout=0.0):
    layer = MultiHeadAttention(
        HEADS, KEY_DIM, position=position, dropout=dropout
    )
    x = random_inputs()
    layer(x, x)
    return layer


# ---------------------------------------------------------------- NumPy


def numpy_dense(dense, x):
    kernel = to_numpy(dense.kernel)
    bias = to_numpy(dense.bias) if dense.use_bias else 0.0
    return x @ kernel + bias


def numpy_rotary(x, start=0, max_wavelength=10000):
    # x: (batch, seq, heads, dim); half-split pairs (x[i], x[i + d/2]).
    dim = x.shape[-1]
    positions = np.arange(x.shape[1]) + start
    inverse = max_wavelength ** (-np.arange(0, dim, 2) / dim)
    angles = positions[:, None] * inverse[None, :]
    angles = np.concatenate([angles, angles], axis=-1)[None, :, None, :]
    first, second = np.split(x, 2, axis=-1)
    rotated = np.concatenate([-second, first], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def numpy_attention(layer, query, value, key_mask=None, causal=False):
    """Reference MHA in float64 with the layer's weights."""
    query, value = query.astype("float64"), value.astype("float64")
    batch, tq, _ = query.shape
    tk = value.shape[1]
    heads = layer.num_heads
    value_dim = layer.value_dim or layer.key_dim
    kv_heads = layer.num_key_value_heads or heads
    q = numpy_dense(layer.query_dense, query).reshape(batch, tq, heads, -1)
    k = numpy_dense(layer.key_dense, value).reshape(batch, tk, kv_heads, -1)
    v = numpy_dense(layer.value_dense, value).reshape(batch, tk, kv_heads, -1)
    # Grouped heads: query head `h` reads key/value head `h // group`.
    k, v = (np.repeat(t, heads // kv_heads, axis=2) for t in (k, v))
    if layer.position == "rotary":
        q, k = numpy_rotary(q), numpy_rotary(k)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(layer.key_dim)
    allowed = np.ones((batch, tq, tk), bool)
    if key_mask is not None:
        allowed &= key_mask[:, None, :]
    if causal:
        allowed &= np.tril(np.ones((tq, tk), bool))[None]
    logits = np.where(allowed[:, None], logits, -np.inf)
    peak = np.max(logits, axis=-1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(peak), peak, 0.0))
    total = weights.sum(axis=-1, keepdims=True)
    probabilities = np.where(total > 0, weights / np.maximum(total, 1e-30), 0)
    out = np.einsum("bhts,bshd->bthd", probabilities, v)
    out = out.reshape(batch, tq, heads * value_dim)
    return numpy_dense(layer.output_dense, out), probabilities


@pytest.mark.parametrize(
    "position, value_dim, output_dim",
    [("none", None, None), ("rotary", None, None), ("none", 4, 12)],
)
def test_matches_numpy_reference(position, value_dim, output_dim):
    layer = MultiHeadAttention(
        HEADS,
        KEY_DIM,
        value_dim=value_dim,
        output_dim=output_dim,
        position=position,
        bias_initializer="random_normal",
    )
    query, value = random_inputs(0), random_inputs(1, length=LENGTH - 1)
    key_mask = padding([LENGTH - 1, 3], LENGTH - 1)
    output, scores = layer(
        query, value, value_mask=key_mask, return_attention_scores=True
    )
    fused = layer(query, value, value_mask=key_mask)
    expected, probabilities = numpy_attention(layer, query, value, key_mask)
    assert output.shape == (BATCH, LENGTH, output_dim or DIM)
    np.testing.assert_allclose(to_numpy(output), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(fused), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(scores), probabilities, atol=1e-6)


@pytest.mark.parametrize("value_dim", [KEY_DIM - 4, KEY_DIM + 4])
@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_value_heads_of_another_size_match_numpy_reference(value_dim, kv_heads):
    """`value_dim != key_dim`, narrower and wider, with and without grouped
    key/value heads, on the fused call (which falls back to the explicit
    path), with scores, and causal. A cache needs `value_dim == key_dim`."""
    layer = MultiHeadAttention(
        4,
        KEY_DIM,
        value_dim=value_dim,
        num_key_value_heads=kv_heads,
        bias_initializer="random_normal",
    )
    query, value = random_inputs(5), random_inputs(6, length=LENGTH - 1)
    key_mask = padding([LENGTH - 1, 3], LENGTH - 1)
    output, scores = layer(
        query, value, value_mask=key_mask, return_attention_scores=True
    )
    fused = layer(query, value, value_mask=key_mask)
    expected, probabilities = numpy_attention(layer, query, value, key_mask)
    assert layer.value_dense.kernel.shape == (DIM, (kv_heads or 4) * value_dim)
    assert tuple(output.shape) == (BATCH, LENGTH, DIM)
    np.testing.assert_allclose(to_numpy(output), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(fused), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(scores), probabilities, atol=1e-6)
    causal, _ = numpy_attention(layer, query, query, causal=True)
    output = layer(query, query, use_causal_mask=True)
    np.testing.assert_allclose(to_numpy(output), causal, atol=1e-5)
    with pytest.raises(ValueError, match="value_dim"):
        layer.empty_cache(BATCH, LENGTH)
    with pytest.raises(ValueError, match="value_dim"):
        layer.compute_cache(value)


def test_matches_numpy_reference_causal_self_attention():
    layer = built_layer("rotary")
    x = random_inputs(2)
    key_mask = padding([LENGTH, 4])
    expected, _ = numpy_attention(layer, x, x, key_mask, causal=True)
    output = layer(x, x, value_mask=key_mask, use_causal_mask=True)
    np.testing.assert_allclose(to_numpy(output), expected, atol=1e-5)
    expected, _ = numpy_attention(layer, x, x, causal=True)
    output = layer(x, x, use_causal_mask=True)
    np.testing.assert_allclose(to_numpy(output), expected, atol=1e-5)


def test_rotary_matches_rotary_embedding_reference():
    # Rotating projected queries and keys by hand gives the same result.
    layer = built_layer("rotary")
    plain = MultiHeadAttention(HEADS, KEY_DIM)
    x = random_inputs(3)
    plain(x, x)
    plain.set_weights(layer.get_weights())
    q = numpy_dense(layer.query_dense, x).reshape(BATCH, LENGTH, HEADS, -1)
    rotated = to_numpy(
        layer.rotary_embedding(q.astype("float32"), start_index=2)
    )
    np.testing.assert_allclose(rotated, numpy_rotary(q, start=2), atol=1e-5)
    assert not np.allclose(to_numpy(layer(x, x)), to_numpy(plain(x, x)))


# ------------------------------------------------- other implementations


def test_matches_torch_multihead_attention():
    import torch

    layer = MultiHeadAttention(HEADS, DIM // HEADS, bias_initializer="ones")
    query, value = random_inputs(4), random_inputs(5)
    layer(query, value)
    reference = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    kernels = [
        to_numpy(dense.kernel).T
        for dense in (layer.query_dense, layer.key_dense, layer.value_dense)
    ]
    biases = [
        to_numpy(dense.bias)
        for dense in (layer.query_dense, layer.key_dense, layer.value_dense)
    ]
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.tensor(np.concatenate(kernels)))
        reference.in_proj_bias.copy_(torch.tensor(np.concatenate(biases)))
        reference.out_proj.weight.copy_(
            torch.tensor(to_numpy(layer.output_dense.kernel).T)
        )
        reference.out_proj.bias.copy_(
            torch.tensor(to_numpy(layer.output_dense.bias))
        )
    key_mask = padding([LENGTH, 2])
    expected, _ = reference(
        torch.tensor(query),
        torch.tensor(value),
        torch.tensor(value),
        key_padding_mask=torch.tensor(~key_mask),
        need_weights=False,
    )
    output = layer(query, value, value_mask=key_mask)
    real = padding([LENGTH, 4])  # real queries
    np.testing.assert_allclose(
        to_numpy(output)[real], expected.detach().numpy()[real], atol=1e-5
    )


def test_loads_keras_multi_head_attention_weights_by_reshape():
    reference = keras.layers.MultiHeadAttention(HEADS, KEY_DIM)
    layer = MultiHeadAttention(HEADS, KEY_DIM)
    query, value = random_inputs(6), random_inputs(7)
    reference(query, value)
    layer(query, value)
    for ours, theirs in (
        (layer.query_dense, reference.query_dense),
        (layer.key_dense, reference.key_dense),
        (layer.value_dense, reference.value_dense),
        (layer.output_dense, reference.output_dense),
    ):
        kernel, bias = (to_numpy(w) for w in theirs.weights)
        ours.kernel.assign(kernel.reshape(ours.kernel.shape))
        ours.bias.assign(bias.reshape(ours.bias.shape))
    key_mask = padding([LENGTH, 3])
    mask = np.repeat(key_mask[:, None, :], LENGTH, axis=1)
    expected = reference(query, value, attention_mask=mask)
    output = layer(query, value, attention_mask=mask)
    np.testing.assert_allclose(to_numpy(output), to_numpy(expected), atol=1e-5)


# ------------------------------------------------------------ inertness

GARBAGE = st.sampled_from([np.nan, np.inf, -np.inf, 1e4])


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.integers(1, LENGTH), min_size=2, max_size=2),
    garbage=GARBAGE,
    position=st.sampled_from(["none", "rotary"]),
    scores=st.booleans(),
    causal=st.booleans(),
)
def test_garbage_at_padding_does_not_reach_real_outputs(
    lengths, garbage, position, scores, causal
):
    layer = built_layer(position)
    key_mask = padding(lengths)
    clean = random_inputs(8)
    dirty = np.where(key_mask[..., None], clean, garbage).astype("float32")
    kwargs = dict(
        value_mask=key_mask,
        use_causal_mask=causal,
        return_attention_scores=scores,
    )
    expected = layer(clean, clean, **kwargs)
    output = layer(dirty, dirty, **kwargs)
    if scores:
        (expected, expected_scores), (output, output_scores) = expected, output
        # (batch, heads, query_len, key_len) at real queries
        rows = np.broadcast_to(
            key_mask[:, None, :, None], (BATCH, HEADS) + (LENGTH,) * 2
        )
        np.testing.assert_array_equal(
            to_numpy(output_scores)[rows], to_numpy(expected_scores)[rows]
        )
    real = to_numpy(output)[key_mask]
    assert np.isfinite(real).all()
    np.testing.assert_allclose(real, to_numpy(expected)[key_mask], atol=1e-6)


@pytest.mark.parametrize(
    "dtype", ["float32", "mixed_float16", "mixed_bfloat16"]
)
@pytest.mark.parametrize("scores", [False, True])
def test_rows_without_keys_are_zero_and_finite(dtype, scores):
    layer = MultiHeadAttention(HEADS, KEY_DIM, use_bias=False, dtype=dtype)
    x = random_inputs(9) * 100
    mask = np.ones((BATCH, LENGTH, LENGTH), bool)
    mask[0, 2] = False  # one empty row
    mask[1] = False  # a sequence with no key at all
    result = layer(x, x, attention_mask=mask, return_attention_scores=scores)
    output = result[0] if scores else result
    output = to_numpy(output)
    assert np.isfinite(output).all()
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output[0, 2], 0.0)
    np.testing.assert_array_equal(output[1], 0.0)
    assert np.abs(output[0, 3]).max() > 0
    if scores:
        attention = to_numpy(result[1])
        np.testing.assert_array_equal(attention[0, :, 2], 0.0)
        np.testing.assert_array_equal(attention[1], 0.0)
        np.testing.assert_allclose(attention[0, :, 3].sum(-1), 1.0, atol=1e-2)


def test_fused_path_equals_explicit_path():
    layer = built_layer("rotary")
    x = random_inputs(10)
    mask = masks.attention_mask(key_mask=padding([LENGTH, 3]), causal=True)
    mask = np.array(to_numpy(mask), bool)
    mask[0, 1] = False
    fused = layer(x, x, attention_mask=mask)
    explicit, _ = layer(x, x, attention_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(to_numpy(fused), to_numpy(explicit), atol=1e-6)
    np.testing.assert_array_equal(to_numpy(fused)[0, 1], 0.0)


def test_dropout_paths_agree_on_rows_without_keys():
    layer = MultiHeadAttention(HEADS, KEY_DIM, dropout=0.5, use_bias=False)
    x = random_inputs(11)
    mask = np.ones((BATCH, LENGTH, LENGTH), bool)
    mask[:, 4] = False
    inference = to_numpy(layer(x, x, attention_mask=mask, training=False))
    train = to_numpy(layer(x, x, attention_mask=mask, training=True))
    np.testing.assert_array_equal(inference[:, 4], 0.0)
    np.testing.assert_array_equal(train[:, 4], 0.0)
    assert np.isfinite(train).all()
    assert not np.allclose(train, inference)  # dropout is active


@pytest.mark.parametrize("scores", [False, True])
def test_key_padding_mask_broadcasts_over_queries(scores):
    layer = built_layer()
    x = random_inputs(12)
    keys = padding([3, 0])  # the second sequence has no key at all
    full = np.broadcast_to(keys[:, None, :], (BATCH, LENGTH, LENGTH))
    results = [
        layer(x, x, attention_mask=mask, return_attention_scores=scores)
        for mask in (keys[:, None, :], full)
    ]
    if not scores:
        results = [(result,) for result in results]
    for broadcast, expanded in zip(*results, strict=True):
        np.testing.assert_array_equal(to_numpy(broadcast), to_numpy(expanded))
    output = to_numpy(results[0][0]) - to_numpy(layer.output_dense.bias)
    np.testing.assert_array_equal(output[1], 0.0)
    assert np.abs(output[0]).max() > 0
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, x, attention_mask=np.ones((BATCH, 2, LENGTH), bool))


@pytest.mark.parametrize("key_lengths", [None, [LENGTH, 4]])
@pytest.mark.parametrize("scores", [False, True])
def test_future_does_not_change_past(key_lengths, scores):
    layer = built_layer("rotary")
    key_mask = None if key_lengths is None else padding(key_lengths)
    x = random_inputs(12)
    changed = x.copy()
    changed[:, 3:] = random_inputs(13)[:, 3:]
    kwargs = dict(
        value_mask=key_mask,
        use_causal_mask=True,
        return_attention_scores=scores,
    )
    before, after = layer(x, x, **kwargs), layer(changed, changed, **kwargs)
    if scores:
        before, after = before[0], after[0]
    before, after = to_numpy(before), to_numpy(after)
    np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert not np.allclose(before[:, 3:], after[:, 3:])


# ---------------------------------------------------------------- cache


def compiled(function):
    """`function` compiled the way the backend's generation loop would be."""
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    return function


@pytest.mark.parametrize("position", ["none", "rotary"])
def test_cached_decoding_equals_full_causal_attention(position):
    layer = built_layer(position)
    x = random_inputs(14)
    full = to_numpy(layer(x, x, use_causal_mask=True))

    def step(inputs, cache, index):
        return layer(
            inputs, inputs, cache=cache, cache_index=index, use_causal_mask=True
        )

    compiled_step = compiled(step)
    cache = layer.empty_cache(BATCH, LENGTH)
    # A prompt of 2 tokens at once, then one token at a time.
    prompt, cache = step(x[:, :2], cache, 0)
    outputs = [to_numpy(prompt)]
    for index in range(2, LENGTH):
        index = ops.convert_to_tensor(index, "int32")
        output, cache = compiled_step(x[:, index : index + 1], cache, index)
        outputs.append(to_numpy(output))
    assert tuple(cache.shape) == (BATCH, 2, HEADS, LENGTH, KEY_DIM)
    np.testing.assert_allclose(np.concatenate(outputs, 1), full, atol=1e-5)
    # The cache holds the projected (rotated) keys and values.
    np.testing.assert_allclose(
        to_numpy(cache), to_numpy(layer.compute_cache(x)), atol=1e-5
    )


def test_cross_attention_cache_equals_direct_call():
    layer = built_layer("none")
    query, memory = random_inputs(15), random_inputs(16, length=LENGTH - 2)
    memory_mask = padding([LENGTH - 2, 2], LENGTH - 2)
    direct, direct_scores = layer(
        query, memory, value_mask=memory_mask, return_attention_scores=True
    )
    cache = layer.compute_cache(memory)
    assert tuple(cache.shape) == (BATCH, 2, HEADS, LENGTH - 2, KEY_DIM)
    # The cache holds no mask: the source padding comes as attention_mask,
    # and the placeholder `value`'s own Keras mask is not used.
    source_mask = ops.expand_dims(memory_mask, 1)  # (batch, 1, source_len)
    query_padding = padding([LENGTH, 1], LENGTH)
    output, scores, new_cache = layer(
        query,
        query,
        attention_mask=source_mask,
        value_mask=query_padding,
        cache=cache,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(to_numpy(output), to_numpy(direct), atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(scores), to_numpy(direct_scores), atol=1e-6
    )
    np.testing.assert_array_equal(to_numpy(new_cache), to_numpy(cache))
    for index in range(LENGTH):
        step, _ = layer(
            query[:, index : index + 1],
            memory,
            attention_mask=source_mask,
            cache=cache,
        )
        np.testing.assert_allclose(
            to_numpy(step)[:, 0], to_numpy(direct)[:, index], atol=1e-5
        )
    padded = layer.compute_cache(memory, max_length=LENGTH + 1)
    assert tuple(padded.shape) == (BATCH, 2, HEADS, LENGTH + 1, KEY_DIM)
    np.testing.assert_array_equal(to_numpy(padded)[:, :, LENGTH - 2 :], 0.0)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_heads=0), "num_heads"),
        (dict(num_heads=-2), "num_heads"),
        (dict(key_dim=0), "key_dim"),
        (dict(key_dim=2.5), "key_dim"),
        (dict(value_dim=0), "value_dim"),
        (dict(output_dim=-1), "output_dim"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(position="sinusoidal"), "TokenAndPositionEmbedding"),
        (dict(position="learned"), "position"),
        (dict(position="alibi"), "position"),
        (dict(position="rotary", key_dim=7), "key_dim"),
        (dict(max_wavelength=0), "max_wavelength"),
        (dict(use_bias="yes"), "use_bias"),
        (dict(kernel_initializer="nope"), "kernel_initializer"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    arguments = dict(num_heads=HEADS, key_dim=KEY_DIM)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        MultiHeadAttention(**arguments)


def test_bad_inputs_raise():
    layer = MultiHeadAttention(HEADS, KEY_DIM)
    x = random_inputs(17)
    with pytest.raises(ValueError, match="query"):
        layer(x[0], x)
    with pytest.raises(ValueError, match="value"):
        layer(x, x[0])
    with pytest.raises(ValueError, match="query"):
        layer(np.ones((BATCH, LENGTH, DIM), "int32"), x)
    layer(x, x)
    with pytest.raises(ValueError, match="query"):
        layer(x[0], x)
    with pytest.raises(ValueError, match=r"attention_mask.*\(2, 6, 5\)"):
        layer(x, x, attention_mask=np.ones((BATCH, LENGTH, 5), bool))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, x, attention_mask=np.ones((LENGTH, LENGTH), bool))
    with pytest.raises(ValueError, match="cache"):
        layer(x, x, cache_index=0)
    with pytest.raises(ValueError, match="cache"):
        layer(x, x, cache=ops.zeros((BATCH, 2, HEADS, LENGTH, 4)))
    symbolic = keras.Input((LENGTH, DIM))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(symbolic, symbolic, attention_mask=keras.Input((LENGTH, 3)))
    with pytest.raises(ValueError, match="value_dim"):
        MultiHeadAttention(HEADS, KEY_DIM, value_dim=4).empty_cache(1, 4)
    with pytest.raises(ValueError, match="build"):
        MultiHeadAttention(HEADS, KEY_DIM).compute_cache(x)
    with pytest.raises(ValueError, match="value"):
        layer.compute_cache(x[0])


# ------------------------------------------------- Keras integration


def test_keras_masks_are_used_as_keras_does_and_propagated():
    ids = keras.Input((LENGTH,), dtype="int32")
    embedded = keras.layers.Embedding(30, DIM, mask_zero=True)(ids)
    layer = MultiHeadAttention(HEADS, KEY_DIM)
    attended = layer(embedded, embedded)
    pooled = keras.layers.GlobalAveragePooling1D()(attended)
    model = keras.Model(ids, [attended, pooled])
    tokens = np.array([[3, 4, 5, 6, 7, 8], [9, 2, 5, 0, 0, 0]], "int32")
    attended, pooled = (to_numpy(t) for t in model(tokens))
    vectors = to_numpy(model.layers[1](tokens))
    key_mask = tokens != 0
    # As Keras: the query mask AND the key mask; a padded query attends to
    # nothing, which gives the output bias (zero with the default bias).
    mask = key_mask[:, :, None] & key_mask[:, None, :]
    expected = to_numpy(layer(vectors, vectors, attention_mask=mask))
    np.testing.assert_allclose(attended, expected, atol=1e-6)
    np.testing.assert_array_equal(attended[~key_mask], 0.0)
    # The output keeps the query's Keras mask: pooling skips padding.
    mean = (expected * key_mask[..., None]).sum(1) / key_mask.sum(1)[:, None]
    np.testing.assert_allclose(pooled, mean, atol=1e-5)


def test_symbolic_outputs_with_scores_and_cache():
    layer = MultiHeadAttention(HEADS, KEY_DIM, output_dim=10)
    x = keras.Input((LENGTH, DIM))
    cache = keras.Input((2, HEADS, LENGTH + 2, KEY_DIM))
    output, scores, new_cache = layer(
        x[:, :1],
        x[:, :1],
        cache=cache,
        cache_index=0,
        use_causal_mask=True,
        return_attention_scores=True,
    )
    assert tuple(output.shape) == (None, 1, 10)
    assert tuple(scores.shape) == (None, HEADS, 1, LENGTH + 2)
    assert tuple(new_cache.shape) == (None, 2, HEADS, LENGTH + 2, KEY_DIM)
    model = keras.Model([x, cache], [output, scores, new_cache])
    empty = to_numpy(layer.empty_cache(BATCH, LENGTH + 2))
    eager = model([random_inputs(18), empty])
    assert tuple(eager[0].shape) == (BATCH, 1, 10)
    assert tuple(eager[1].shape) == (BATCH, HEADS, 1, LENGTH + 2)
    assert layer.compute_output_shape((None, 3, DIM), (None, 5, 4)) == (
        None,
        3,
        10,
    )


def test_config_round_trip():
    layer = MultiHeadAttention(
        HEADS,
        KEY_DIM,
        value_dim=4,
        dropout=0.1,
        use_bias=False,
        output_dim=12,
        position="rotary",
        max_wavelength=500,
        kernel_initializer="he_normal",
        name="attention",
    )
    config = layer.get_config()
    for name in ("num_heads", "key_dim", "value_dim", "dropout", "position"):
        assert config[name] == getattr(layer, name)
    clone = MultiHeadAttention.from_config(config)
    assert clone.get_config() == config
    x = random_inputs(19)
    layer(x, x)
    clone(x, x)
    clone.set_weights(layer.get_weights())
    assert layer.get_config() == config  # build does not rewrite it
    np.testing.assert_allclose(
        to_numpy(clone(x, x)), to_numpy(layer(x, x)), atol=1e-6
    )


def test_saved_model_reloads_with_identical_outputs(tmp_path):
    ids = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(30, DIM, mask_zero=True)(ids)
    x = MultiHeadAttention(HEADS, KEY_DIM, position="rotary", dropout=0.1)(
        x, x, use_causal_mask=True
    )
    model = keras.Model(ids, keras.layers.Dense(30)(x))
    tokens = np.array([[3, 4, 5, 6, 7, 8], [9, 2, 5, 0, 0, 0]], "int32")
    path = str(tmp_path / "attention.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(tokens)), to_numpy(model(tokens)), atol=1e-6
    )
    assert isinstance(loaded.layers[2], MultiHeadAttention)


def test_fit_step_under_jit_compile():
    ids = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(30, DIM, mask_zero=True)(ids)
    layer = MultiHeadAttention(HEADS, KEY_DIM, dropout=0.1, position="rotary")
    x = layer(x, x, use_causal_mask=True)
    model = keras.Model(ids, keras.layers.Dense(30)(x))
    # The Dense gives logits. Read as probabilities, the padded query rows
    # (the output bias: all zeros at initialization) would normalize to
    # 0/0, and PyTorch's masked loss keeps that NaN.
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=BACKEND != "torch" or "auto",
    )
    rng = np.random.default_rng(20)
    tokens = rng.integers(1, 30, size=(4, LENGTH)).astype("int32")
    tokens[1, 4:] = 0
    before = to_numpy(layer.query_dense.kernel)
    history = model.fit(tokens, tokens, epochs=2, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(to_numpy(layer.query_dense.kernel), before)


def test_key_and_value_lengths_must_match():
    layer = MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    query = random_inputs(30)
    key = random_inputs(31, length=LENGTH)
    value = random_inputs(32, length=LENGTH - 1)
    with pytest.raises(ValueError, match="`key` and `value` must have"):
        layer(query, value, key=key)
    with pytest.raises(ValueError, match="`key` and `value` must have"):
        layer.compute_output_shape(query.shape, value.shape, key.shape)
    symbolic = keras.Input((LENGTH, DIM)), keras.Input((LENGTH - 1, DIM))
    with pytest.raises(ValueError, match="`key` and `value` must have"):
        layer(symbolic[0], symbolic[1], key=symbolic[0])


def test_key_side_padding_is_the_keys_mask():
    # With an explicit `key`, its Keras mask decides; `value`'s does not.
    layer = built_layer("none")
    query, key, value = (random_inputs(33 + i) for i in range(3))
    half = padding([LENGTH // 2, LENGTH // 2])
    real = padding([LENGTH, LENGTH])
    plain = layer(query, value, key=key)
    with_value_mask = layer(query, value, key=key, value_mask=half)
    np.testing.assert_allclose(
        to_numpy(with_value_mask), to_numpy(plain), atol=1e-6
    )
    masked = layer(query, value, key=key, key_mask=half)
    explicit = layer(
        query, value, key=key, attention_mask=ops.expand_dims(half, 1)
    )
    np.testing.assert_allclose(to_numpy(masked), to_numpy(explicit), atol=1e-6)
    both = layer(query, value, key=key, key_mask=real, value_mask=half)
    np.testing.assert_allclose(to_numpy(both), to_numpy(plain), atol=1e-6)
    # Without `key`, the value's mask is the key side's.
    self_masked = layer(query, value, value_mask=half)
    self_explicit = layer(query, value, attention_mask=ops.expand_dims(half, 1))
    np.testing.assert_allclose(
        to_numpy(self_masked), to_numpy(self_explicit), atol=1e-6
    )


def test_keras_argument_names_are_accepted():
    # Code written for keras.layers.MultiHeadAttention runs unchanged.
    query, value = random_inputs(40), random_inputs(41)
    keras_style = MultiHeadAttention(
        num_heads=HEADS, key_dim=KEY_DIM, output_shape=12, attention_axes=None
    )
    output, scores = keras_style(
        query,
        value,
        value_mask=padding([LENGTH, 2]),
        return_attention_scores=True,
        use_causal_mask=False,
    )
    assert tuple(output.shape) == (BATCH, LENGTH, 12)
    assert tuple(scores.shape) == (BATCH, HEADS, LENGTH, LENGTH)
    assert keras_style.output_dim == 12
    again = MultiHeadAttention.from_config(keras_style.get_config())
    assert again.output_dim == 12
    MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, attention_axes=(1,))
    with pytest.raises(ValueError, match="attention_axes"):
        MultiHeadAttention(HEADS, KEY_DIM, attention_axes=(1, 2))
    with pytest.raises(ValueError, match="output_shape"):
        MultiHeadAttention(HEADS, KEY_DIM, output_shape=(4, 3))
    with pytest.raises(ValueError, match="not both"):
        MultiHeadAttention(HEADS, KEY_DIM, output_dim=3, output_shape=4)


# ------------------------------------------- architectures: transformers


def _our_attention(kind, config, **overrides):
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // heads
    )
    bias = {"llama": False, "mistral": False, "qwen2": True, "qwen3": False}
    kwargs = {
        "num_heads": heads,
        "key_dim": head_dim,
        "num_key_value_heads": config.num_key_value_heads,
        "use_bias": bias[kind],
        "output_use_bias": False,
        "position": "rotary",
        "max_wavelength": config.rope_parameters["rope_theta"],
        "query_key_norm": kind == "qwen3",
        "query_key_norm_epsilon": config.rms_norm_eps,
        "sliding_window": getattr(config, "sliding_window", None),
        "rope_scaling": config.rope_parameters
        if config.rope_parameters.get("rope_type", "default") != "default"
        else None,
        **overrides,
    }
    return MultiHeadAttention(**kwargs)


HF_ATTENTIONS = [
    ("llama", {}),
    ("llama", {"num_key_value_heads": 1}),
    ("llama", {"num_key_value_heads": 4, "rope_theta": 500000.0}),
    (
        "llama",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
    ),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("mistral", {"sliding_window": 3}),
    ("qwen2", {}),
    ("qwen3", {}),
    ("qwen3", {"head_dim": 24, "hidden_size": 64}),
]


@pytest.mark.parametrize("kind, overrides", HF_ATTENTIONS)
def test_matches_transformers_attention(kind, overrides):
    import torch

    config = hf_config(kind, **overrides)
    module, prefix = hf_modules(kind, config)
    torch.manual_seed(0)
    theirs = getattr(module, f"{prefix}Attention")(config, layer_idx=0).eval()
    randomize_torch(theirs)
    if getattr(theirs, "q_norm", None) is not None:
        with torch.no_grad():
            theirs.q_norm.weight.add_(1.0)
            theirs.k_norm.weight.add_(1.0)
    rotary = getattr(module, f"{prefix}RotaryEmbedding")(config)
    length = 10
    x = random_inputs(dim=config.hidden_size, length=length)
    lengths = [length, 7]
    additive, allowed = hf_mask(
        length, getattr(config, "sliding_window", None), lengths
    )
    with torch.no_grad():
        hidden = torch.from_numpy(x)
        position_ids = torch.arange(length)[None].expand(BATCH, -1)
        expected = theirs(
            hidden,
            rotary(hidden, position_ids),
            torch.from_numpy(additive),
        )[0].numpy()
    ours = _our_attention(kind, config)
    ours(x, x)
    copy_hf_attention(ours, theirs)
    outputs = to_numpy(
        ours(
            x,
            x,
            value_mask=padding(lengths, length),
            use_causal_mask=True,
        )
    )
    # Real queries only: a padded query whose window holds only padding
    # has no key, which is zero here and a uniform average there.
    assert_real_positions_close(outputs, expected, lengths, atol=2e-5)
    # The explicit path (scores requested) agrees too.
    outputs, _ = ours(
        x,
        x,
        attention_mask=allowed,
        return_attention_scores=True,
    )
    assert_real_positions_close(to_numpy(outputs), expected, lengths, 2e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"num_key_value_heads": 2},
        {"num_key_value_heads": 1, "sliding_window": 3},
        {
            "num_key_value_heads": 2,
            "sliding_window": 4,
            "query_key_norm": True,
            "position": "rotary",
        },
    ],
)
def test_cached_decoding_equals_full_pass_with_new_options(options):
    layer = MultiHeadAttention(4, 8, **options)
    x = random_inputs(length=9)
    full = to_numpy(layer(x, x, use_causal_mask=True))
    cache = layer.empty_cache(BATCH, 9)
    assert tuple(cache.shape) == (
        BATCH,
        2,
        options["num_key_value_heads"],
        9,
        8,
    )
    # A prompt of 3 steps, then one step at a time.
    prompt, cache = layer(
        x[:, :3], x[:, :3], cache=cache, cache_index=0, use_causal_mask=True
    )
    steps = [to_numpy(prompt)]
    for index in range(3, 9):
        step, cache = layer(
            x[:, index : index + 1],
            x[:, index : index + 1],
            cache=cache,
            cache_index=index,
            use_causal_mask=True,
        )
        steps.append(to_numpy(step))
    np.testing.assert_allclose(
        np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0
    )
    # A cache from `compute_cache` continues the same way.
    cache = layer.compute_cache(x[:, :5], max_length=9)
    step, _ = layer(
        x[:, 5:6], x[:, 5:6], cache=cache, cache_index=5, use_causal_mask=True
    )
    np.testing.assert_allclose(to_numpy(step), full[:, 5:6], atol=1e-5, rtol=0)


def test_grouped_heads_equal_repeated_key_value_heads():
    grouped = MultiHeadAttention(4, 8, num_key_value_heads=2)
    full = MultiHeadAttention(4, 8)
    x = random_inputs()
    grouped(x, x)
    full(x, x)
    for name in ("query_dense", "output_dense"):
        for a, b in zip(
            getattr(full, name).weights,
            getattr(grouped, name).weights,
            strict=True,
        ):
            a.assign(b)
    for name in ("key_dense", "value_dense"):
        source = getattr(grouped, name)
        kernel = to_numpy(source.kernel).reshape(DIM, 2, 1, 8)
        bias = to_numpy(source.bias).reshape(2, 1, 8)
        target = getattr(full, name)
        target.kernel.assign(np.repeat(kernel, 2, axis=2).reshape(DIM, 32))
        target.bias.assign(np.repeat(bias, 2, axis=1).reshape(32))
    lengths = [LENGTH, 3]
    for kwargs in ({}, {"return_attention_scores": True}):
        a = grouped(x, x, value_mask=padding(lengths), **kwargs)
        b = full(x, x, value_mask=padding(lengths), **kwargs)
        a, b = (a, b) if kwargs else ((a,), (b,))
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(to_numpy(u), to_numpy(v), atol=1e-5)


def test_new_options_weights_and_config():
    layer = MultiHeadAttention(
        4,
        6,
        num_key_value_heads=2,
        use_bias=True,
        output_use_bias=False,
        query_key_norm=True,
        sliding_window=3,
        position="rotary",
        rope_scaling={"type": "linear", "factor": 2.0},
    )
    x = random_inputs()
    layer(x, x)
    assert tuple(layer.query_dense.kernel.shape) == (DIM, 24)
    assert tuple(layer.key_dense.kernel.shape) == (DIM, 12)
    assert tuple(layer.value_dense.kernel.shape) == (DIM, 12)
    assert layer.query_dense.use_bias and not layer.output_dense.use_bias
    assert tuple(layer.query_norm.scale.shape) == (6,)
    assert tuple(layer.key_norm.scale.shape) == (6,)
    config = layer.get_config()
    for name in (
        "num_key_value_heads",
        "output_use_bias",
        "query_key_norm",
        "query_key_norm_epsilon",
        "sliding_window",
        "rope_scaling",
    ):
        assert config[name] == getattr(layer, name)
    assert MultiHeadAttention.from_config(config).get_config() == config


@keras.saving.register_keras_serializable(package="keras_tfm_tests")
class CausalSelfAttention(MultiHeadAttention):
    """One-input causal self-attention, the shape `run_layer_test` calls."""

    def build(self, input_shape):
        super().build(input_shape, input_shape)

    def call(self, inputs, mask=None, training=None):
        return super().call(
            inputs,
            inputs,
            use_causal_mask=True,
            query_mask=mask,
            value_mask=mask,
            training=training,
        )

    def compute_output_shape(self, input_shape, *args):
        return tuple(input_shape)

    def compute_output_spec(self, inputs, mask=None, training=None):
        return keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)


def test_new_options_pass_the_layer_checks():
    from tests.helpers import run_layer_test

    x = random_inputs(length=6)
    run_layer_test(
        CausalSelfAttention,
        {
            "num_heads": 4,
            "key_dim": 4,
            "num_key_value_heads": 2,
            "use_bias": False,
            "query_key_norm": True,
            "sliding_window": 3,
            "position": "rotary",
            "rope_scaling": {"rope_type": "linear", "factor": 4.0},
        },
        x,
        expected_output_shape=x.shape,
        input_mask=padding([6, 4], 6),
        num_trainable_weights=6,
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_key_value_heads": 0}, "num_key_value_heads"),
        ({"output_use_bias": "no"}, "output_use_bias"),
        ({"query_key_norm": 1}, "query_key_norm"),
        ({"query_key_norm_epsilon": 0}, "query_key_norm_epsilon"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"sliding_window": 2.5}, "sliding_window"),
        (
            {"position": "rotary", "rope_scaling": {"rope_type": "yarn"}},
            "rope_scaling.*yarn",
        ),
        (
            {"position": "rotary", "rope_scaling": {"rope_type": "linear"}},
            "rope_scaling.*factor",
        ),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2}}, "position"),
    ],
)
def test_bad_new_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiHeadAttention(4, 8, **kwargs)


def test_cache_shape_check_names_key_value_heads():
    layer = MultiHeadAttention(4, 8, num_key_value_heads=2)
    x = random_inputs(length=1)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        layer(
            x,
            x,
            cache=ops.zeros((BATCH, 2, 4, 5, 8)),
            cache_index=0,
            use_causal_mask=True,
        )


# ------------------------------------------------- Keras drop-in


def test_run_layer_test():
    x = random_inputs(70)
    run_layer_test(
        MultiHeadAttention,
        {"num_heads": HEADS, "key_dim": KEY_DIM, "dropout": 0.1, "seed": 3},
        (x, x),
        # query, key, value and output kernels and biases.
        num_trainable_weights=8,
        num_seed_generators=1,
        expected_output_shape=x.shape,
        input_mask=padding([LENGTH, 3]),
    )


def test_compute_output_shape_checks_ranks():
    layer = MultiHeadAttention(HEADS, KEY_DIM)
    with pytest.raises(ValueError, match="key"):
        layer.compute_output_shape((2, 4, 8), (2, 2, 7), (2,))


@pytest.mark.parametrize("shape", [(0, LENGTH, DIM), (BATCH, 0, DIM)])
def test_empty_batch_or_sequence_gives_an_empty_output(shape):
    x = np.zeros(shape, "float32")
    output = MultiHeadAttention(HEADS, KEY_DIM)(x, x)
    assert tuple(output.shape) == shape


def _copy_from_keras(ours, theirs):
    """Keras's EinsumDense kernels (dim, heads, head_dim) reshape to ours."""
    pairs = [
        (ours.query_dense, theirs._query_dense),
        (ours.key_dense, theirs._key_dense),
        (ours.value_dense, theirs._value_dense),
        (ours.output_dense, theirs._output_dense),
    ]
    for dense, einsum in pairs:
        kernel, bias = (to_numpy(w) for w in einsum.weights)
        dense.kernel.assign(kernel.reshape(dense.kernel.shape))
        dense.bias.assign(bias.reshape(dense.bias.shape))


def test_keras_call_patterns_give_keras_results():
    arguments = {
        "num_heads": HEADS,
        "key_dim": KEY_DIM,
        "value_dim": KEY_DIM + 2,
        "output_shape": 10,
        "kernel_regularizer": "l2",
        "bias_regularizer": "l1",
        "activity_regularizer": "l2",
        "kernel_constraint": "non_neg",
        "bias_constraint": "unit_norm",
        "seed": 1,
    }
    theirs = keras.layers.MultiHeadAttention(**arguments)
    ours = MultiHeadAttention(**arguments)
    query, value, key = (random_inputs(80 + i) for i in range(3))
    # Keras's fused path fails on JAX when `value_dim != key_dim` (JAX's
    # kernel wants equal head sizes); its explicit path, taken when scores
    # are returned, builds the same weights. Ours takes the explicit path
    # itself (see `MultiHeadAttention.call`).
    theirs(query, value, key, return_attention_scores=True)
    ours(query, value, key)
    _copy_from_keras(ours, theirs)
    for name in ("num_heads", "key_dim", "value_dim", "dropout", "use_bias"):
        assert getattr(ours, name) == getattr(theirs, name)
        with pytest.raises(AttributeError):
            setattr(ours, name, 1)
    config = ours.get_config()
    assert config["output_dim"] == 10 and "output_shape" not in config
    assert MultiHeadAttention.from_config(config).get_config() == config
    assert len(ours.losses) == len(theirs.losses) > 0

    query_mask = padding([LENGTH, 4])
    value_mask = padding([LENGTH, 3])
    mask = np.tril(np.ones((LENGTH, LENGTH), bool))[None].repeat(BATCH, 0)
    patterns = [
        ((query, value), {}),
        ((query, value, key), {}),
        # Masks go by keyword: Keras's `__call__` fills `query_mask` from
        # the query's Keras mask by keyword, so a positional `None` there
        # clashes, in Keras's layer as in ours.
        ((query, value, key), {"key_mask": value_mask}),
        ((query, value), {"attention_mask": mask}),
        ((query, value), {"use_causal_mask": True}),
        ((query, value), {"value_mask": value_mask}),
    ]
    for args, kwargs in patterns:
        expected, expected_scores = theirs(
            *args, return_attention_scores=True, **kwargs
        )
        got, scores = ours(*args, return_attention_scores=True, **kwargs)
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), atol=1e-5)
        np.testing.assert_allclose(
            to_numpy(scores), to_numpy(expected_scores), atol=1e-5
        )

    # Keras reads the query's Keras mask: a padded query attends to
    # nothing. The real queries agree; Keras gives padded ones the mean of
    # the values, this layer the output bias.
    inputs = keras.Input((LENGTH, DIM))
    masked = keras.layers.Masking()(inputs)
    for layer in (theirs, ours):
        # Scores returned: the explicit path (see above).
        output, _ = layer(masked, masked, return_attention_scores=True)
        model = keras.Model(inputs, output)
        data = np.where(query_mask[..., None], query, 0.0).astype("float32")
        result = to_numpy(model(data))
        if layer is theirs:
            expected = result
    np.testing.assert_allclose(
        result[query_mask], expected[query_mask], atol=1e-5
    )


def test_a_cache_prefix_reads_only_the_leading_slots():
    """While a decoding loop's stretch below position 6 is traced
    (`_backend.reading_cache_prefix`), a cached step reads the cache's first
    6 slots: the same output and cache as reading all 12, scores over 6
    keys, and an attention mask over all 12 slots cut to match."""
    layer = MultiHeadAttention(
        num_heads=4, num_key_value_heads=2, key_dim=8, position="rotary"
    )
    rng = np.random.default_rng(0)
    query = rng.normal(size=(2, 1, 16)).astype("float32")
    cache = rng.normal(size=(2, 2, 2, 12, 8)).astype("float32")
    mask = np.ones((2, 1, 12), bool)
    mask[0, 0, 1] = False
    layer(query, query, cache=cache, cache_index=4)

    def step():
        return layer(
            query,
            query,
            attention_mask=mask,
            cache=cache,
            cache_index=4,
            use_causal_mask=True,
            return_attention_scores=True,
        )

    full_output, full_scores, full_cache = step()
    with _backend.reading_cache_prefix(6):
        output, scores, new_cache = step()
    assert tuple(scores.shape) == (2, 4, 1, 6)
    np.testing.assert_allclose(
        ops.convert_to_numpy(output),
        ops.convert_to_numpy(full_output),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(scores),
        ops.convert_to_numpy(full_scores)[..., :6],
        atol=1e-6,
    )
    assert float(ops.convert_to_numpy(scores)[0, :, 0, 1].max()) == 0.0
    np.testing.assert_array_equal(
        ops.convert_to_numpy(new_cache), ops.convert_to_numpy(full_cache)
    )
    # A prefix as long as the cache, and cross-attention, read it all.
    with _backend.reading_cache_prefix(12):
        assert tuple(step()[1].shape) == (2, 4, 1, 12)
    with _backend.reading_cache_prefix(6):
        _, cross_scores, _ = layer(
            query,
            query,
            cache=cache,
            return_attention_scores=True,
        )
    assert tuple(cross_scores.shape) == (2, 4, 1, 12)
