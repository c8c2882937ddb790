"""Tests of keras_tfm.layers.decoder.TransformerDecoderBlock."""

import functools
import os

import keras
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_tfm.layers.decoder import TransformerDecoderBlock
from keras_tfm.layers.embedding import TokenAndPositionEmbedding
from keras_tfm.layers.encoder import TransformerEncoderBlock
from tests.helpers import (
    BATCH,
    DIM,
    FFN,
    FILLS,
    HEADS,
    LENGTH,
    PADDED_LENGTH,
    POLICIES,
    REAL_LENGTHS,
    VOCAB,
    MaskProbe,
    assert_real_positions_close,
    block_kwargs,
    copy_attention,
    copy_feed_forward,
    copy_hf_attention,
    copy_linear,
    copy_norm,
    fill_values,
    hf_config,
    hf_mask,
    hf_modules,
    jit_compile,
    padding,
    random_inputs,
    randomize_torch,
    randomize_weights,
    run_layer_test,
    to_numpy,
    torch_encoder_layer,
    torch_tensor,
)

SOURCE = 5  # encoder length


@functools.cache
def built_decoder(
    norm_first=False, activation="relu", position="none", cross=True
):
    block = TransformerDecoderBlock(
        **block_kwargs(
            norm_first=norm_first,
            activation=activation,
            position=position,
            cross_attention=cross,
        )
    )
    block.build((None, None, DIM), (None, None, DIM) if cross else None)
    randomize_weights(block, seed=7)
    return block


def decode(block, x, source=None, **kwargs):
    if block.cross_attention:
        return to_numpy(block(x, source, **kwargs))
    return to_numpy(block(x, **kwargs))


def torch_causal_mask(length):
    # torch: True = may NOT attend.
    return torch.from_numpy(~np.tril(np.ones((length, length), bool)))


# ------------------------------------------------------- generic checks


def test_run_layer_test_without_cross_attention():
    outputs = run_layer_test(
        TransformerDecoderBlock,
        {
            "num_heads": HEADS,
            "intermediate_dim": FFN,
            "cross_attention": False,
            "norm_first": True,
            "position": "rotary",
        },
        random_inputs(),
        num_trainable_weights=16,
        num_seed_generators=4,
        expected_output_shape=(BATCH, LENGTH, DIM),
        input_mask=padding([LENGTH, 3]),
        run_fit=False,  # test_fit_step_under_jit_compile trains the block
    )
    assert np.isfinite(to_numpy(outputs[0])).all()


def test_cross_attention_keras_round_trip(tmp_path):
    target = keras.Input((None, DIM))
    source = keras.Input((None, DIM))
    block = TransformerDecoderBlock(**block_kwargs(dropout=0.1), name="dec")
    outputs = block(target, source)
    assert tuple(outputs.shape) == (None, None, DIM)
    model = keras.Model([target, source], outputs)
    randomize_weights(block)
    data = [random_inputs(seed=1), random_inputs(seed=2, length=SOURCE)]
    expected = model.predict(data, verbose=0)
    assert expected.shape == (BATCH, LENGTH, DIM)

    path = os.path.join(tmp_path, "decoder.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_block = loaded.get_layer("dec")
    assert type(loaded_block) is TransformerDecoderBlock
    assert loaded_block.cross_attention
    assert loaded_block.get_config() == block.get_config()
    assert len(loaded.weights) == len(model.weights) == 26
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), expected)

    revived = TransformerDecoderBlock.from_config(block.get_config())
    assert revived.get_config() == block.get_config()


# ------------------------------------------------ reference equality


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_torch_decoder_layer(norm_first, activation):
    block = built_decoder(norm_first, activation)
    reference = torch.nn.TransformerDecoderLayer(
        DIM,
        HEADS,
        dim_feedforward=FFN,
        dropout=0.0,
        activation=activation,
        layer_norm_eps=1e-5,
        batch_first=True,
        norm_first=norm_first,
    )
    copy_attention(block.self_attention, reference.self_attn)
    copy_attention(block.cross_attention_layer, reference.multihead_attn)
    copy_feed_forward(block.feed_forward, reference)
    copy_norm(block.self_attention_add_norm, reference.norm1)
    copy_norm(block.cross_attention_add_norm, reference.norm2)
    copy_norm(block.feed_forward_add_norm, reference.norm3)
    reference.eval()

    x = random_inputs(seed=3)
    source = random_inputs(seed=4, length=SOURCE)
    lengths = [LENGTH, 4]
    target_keep = padding(lengths)
    source_keep = padding([3, SOURCE], SOURCE)
    ours = decode(
        block,
        x,
        source,
        decoder_padding_mask=target_keep,
        encoder_padding_mask=source_keep,
    )
    with torch.no_grad():
        theirs = reference(
            torch_tensor(x),
            torch_tensor(source),
            tgt_mask=torch_causal_mask(LENGTH),
            tgt_key_padding_mask=torch.from_numpy(~target_keep),
            memory_key_padding_mask=torch.from_numpy(~source_keep),
        ).numpy()
    worst = assert_real_positions_close(ours, theirs, lengths)
    print(f"max |ours - torch| = {worst:.2e}")


@pytest.mark.parametrize("norm_first", [False, True])
def test_without_cross_attention_matches_causal_torch_encoder_layer(
    norm_first,
):
    block = built_decoder(norm_first, "gelu", cross=False)
    reference = torch_encoder_layer(block)
    x = random_inputs(seed=5)
    lengths = [LENGTH, 2]
    keep = padding(lengths)
    ours = decode(block, x, decoder_padding_mask=keep)
    with torch.no_grad():
        theirs = reference(
            torch_tensor(x),
            src_mask=torch_causal_mask(LENGTH),
            src_key_padding_mask=torch.from_numpy(~keep),
        ).numpy()
    worst = assert_real_positions_close(ours, theirs, lengths)
    print(f"max |ours - torch| = {worst:.2e}")


# ----------------------------------------------------------- properties


@settings(max_examples=10, deadline=None)
@given(
    lengths=REAL_LENGTHS,
    fill=FILLS,
    norm_first=st.booleans(),
    cross=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_appended_padding_does_not_change_real_positions(
    lengths, fill, norm_first, cross, seed
):
    block = built_decoder(norm_first, position="rotary", cross=cross)
    rng = np.random.default_rng(seed)
    total = PADDED_LENGTH
    x = rng.normal(size=(len(lengths), total, DIM)).astype("float32")
    source = rng.normal(size=(len(lengths), SOURCE, DIM)).astype("float32")
    keep = padding(lengths, total)
    x[~keep] = fill_values(fill, x[~keep].shape, rng)
    padded = decode(block, x, source, decoder_padding_mask=keep)
    for row, length in enumerate(lengths):
        alone = decode(block, x[row : row + 1, :length], source[row : row + 1])
        np.testing.assert_allclose(
            padded[row, :length], alone[0], rtol=0, atol=1e-5
        )


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.sampled_from((1, 3)), min_size=BATCH, max_size=BATCH),
    fill=FILLS,
    norm_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_padded_encoder_outputs_do_not_change_the_decoder(
    lengths, fill, norm_first, seed
):
    block = built_decoder(norm_first)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, PADDED_LENGTH, DIM)).astype("float32")
    source = rng.normal(size=(BATCH, SOURCE, DIM)).astype("float32")
    keep = padding(lengths, SOURCE)
    source[~keep] = fill_values(fill, source[~keep].shape, rng)
    padded = decode(block, x, source, encoder_padding_mask=keep)
    assert np.isfinite(padded).all()
    for row, length in enumerate(lengths):
        alone = decode(block, x[row : row + 1], source[row : row + 1, :length])
        np.testing.assert_allclose(padded[row], alone[0], rtol=0, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    norm_first=st.booleans(),
    cross=st.booleans(),
    position=st.sampled_from(["none", "rotary"]),
    seed=st.integers(0, 2**16),
)
def test_future_does_not_change_the_past(norm_first, cross, position, seed):
    block = built_decoder(norm_first, position=position, cross=cross)
    rng = np.random.default_rng(seed)
    length = PADDED_LENGTH
    x = rng.normal(size=(BATCH, length, DIM)).astype("float32")
    source = random_inputs(seed=seed, length=SOURCE)
    outputs = decode(block, x, source)
    for t in range(length - 1):
        changed = x.copy()
        changed[:, t + 1 :] = 5.0 * rng.normal(size=changed[:, t + 1 :].shape)
        got = decode(block, changed, source)
        np.testing.assert_allclose(
            got[:, : t + 1], outputs[:, : t + 1], rtol=0, atol=1e-5
        )
        assert not np.allclose(got[:, t + 1 :], outputs[:, t + 1 :])


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_fully_padded_rows_are_finite(cross, norm_first, policy):
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
        block = TransformerDecoderBlock(
            **block_kwargs(norm_first=norm_first, cross_attention=cross)
        )
        source = random_inputs(seed=1, length=SOURCE)
        kwargs = {"decoder_padding_mask": padding([LENGTH, 0])}
        if cross:
            kwargs["encoder_padding_mask"] = padding([0, 0], SOURCE)
        outputs = decode(block, random_inputs(), source, **kwargs)
        assert block.compute_dtype == policy.removeprefix("mixed_")
    finally:
        keras.config.set_dtype_policy(previous)
    assert outputs.shape == (BATCH, LENGTH, DIM)
    assert np.isfinite(outputs).all(), f"non-finite output under {policy}"


@pytest.mark.parametrize("norm_first", [False, True])
def test_cross_attention_sublayers_follow_the_block_dtype_policy(norm_first):
    """Under `dtype="mixed_bfloat16"` every sublayer, cross-attention's
    and the source mask reader included, computes in bfloat16 with
    float32 weights, and the output is bfloat16."""
    block = TransformerDecoderBlock(
        **block_kwargs(norm_first=norm_first, cross_attention=True),
        dtype="mixed_bfloat16",
    )
    outputs = block(
        random_inputs(),
        random_inputs(seed=1, length=SOURCE),
        encoder_padding_mask=padding([SOURCE, 2], SOURCE),
    )
    sublayers = block._flatten_layers(include_self=False, recursive=True)
    names = {layer.name for layer in sublayers}
    assert {"cross_attention", "read_mask", "cross_attention_add_norm"} <= (
        names
    )
    for layer in sublayers:
        assert layer.dtype_policy.name == "mixed_bfloat16", (
            layer.name,
            layer.dtype_policy.name,
        )
    assert all(w.dtype == "float32" for w in block.weights)
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"


# ---------------------------------------------------------- Keras masks


def test_uses_keras_masks_of_inputs_and_encoder_outputs():
    source_ids = np.array([[3, 4, 5, 6, 7], [8, 9, 0, 0, 0]], "int32")
    target_ids = np.array([[3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0]], "int32")
    source_embedding = TokenAndPositionEmbedding(VOCAB, SOURCE, DIM)
    target_embedding = TokenAndPositionEmbedding(VOCAB, LENGTH, DIM)
    encoder = TransformerEncoderBlock(**block_kwargs())
    decoder = TransformerDecoderBlock(**block_kwargs())
    source_input = keras.Input((SOURCE,), dtype="int32")
    target_input = keras.Input((LENGTH,), dtype="int32")
    encoded = encoder(source_embedding(source_input))
    outputs = decoder(target_embedding(target_input), encoded)
    model = keras.Model(
        [source_input, target_input], [outputs, MaskProbe()(outputs)]
    )
    got, mask = model.predict([source_ids, target_ids], verbose=0)
    np.testing.assert_array_equal(mask, (target_ids != 0).astype("int32"))

    # The same with explicit masks on NumPy vectors (no Keras masks).
    source_keep, target_keep = source_ids != 0, target_ids != 0
    source = to_numpy(
        encoder(
            to_numpy(source_embedding(source_ids)), padding_mask=source_keep
        )
    )
    target = to_numpy(target_embedding(target_ids))
    explicit = to_numpy(
        decoder(
            target,
            source,
            decoder_padding_mask=target_keep,
            encoder_padding_mask=source_keep,
        )
    )
    np.testing.assert_allclose(got, explicit, rtol=0, atol=1e-5)
    # ... and the encoder's mask matters for row 1.
    no_source_mask = to_numpy(
        decoder(target, source, decoder_padding_mask=target_keep)
    )
    assert not np.allclose(got[1, :3], no_source_mask[1, :3], atol=1e-3)


# ---------------------------------------------------------------- cache


@pytest.mark.parametrize(
    "position, cross, norm_first",
    [("none", True, False), ("rotary", True, True), ("rotary", False, False)],
)
def test_cached_decoding_equals_full_call(position, cross, norm_first):
    block = built_decoder(norm_first, position=position, cross=cross)
    x = random_inputs(seed=8)
    source = random_inputs(seed=9, length=SOURCE)
    source_keep = padding([SOURCE, 2], SOURCE)
    kwargs = {"encoder_padding_mask": source_keep} if cross else {}
    full = decode(block, x, source, **kwargs)
    if cross:
        kwargs["cross_attention_cache"] = block.compute_cross_attention_cache(
            source
        )
    cache = block.self_attention.empty_cache(BATCH, LENGTH)
    steps = []
    for index in range(LENGTH):
        output, cache = block(
            x[:, index : index + 1], cache=cache, cache_index=index, **kwargs
        )
        steps.append(to_numpy(output))
    assert tuple(cache.shape) == (BATCH, 2, HEADS, LENGTH, DIM // HEADS)
    np.testing.assert_allclose(
        np.concatenate(steps, axis=1), full, rtol=0, atol=1e-5
    )


# --------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_heads": 0}, "num_heads"),
        ({"num_heads": -1}, "num_heads"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"position": "alibi"}, "position"),
        ({"position": "learned"}, "position"),
        ({"normalization": "batch"}, "normalization"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerDecoderBlock(**block_kwargs(**kwargs))


def test_num_heads_must_divide_the_width():
    block = TransformerDecoderBlock(num_heads=3, intermediate_dim=FFN)
    x = random_inputs(dim=8)
    with pytest.raises(ValueError, match="num_heads.*divide.*8"):
        block(x, x)


def test_wrong_input_rank_raises():
    block = TransformerDecoderBlock(**block_kwargs(cross_attention=False))
    with pytest.raises(ValueError, match="rank 3"):
        block(np.zeros((BATCH, DIM), "float32"))


@pytest.mark.parametrize("built", [False, True])
def test_wrong_encoder_outputs_rank_raises(built):
    block = TransformerDecoderBlock(**block_kwargs())
    if built:
        block(random_inputs(), random_inputs(length=SOURCE))
    with pytest.raises(ValueError, match="`encoder_outputs` of rank 3"):
        block(random_inputs(), np.zeros((BATCH, DIM), "float32"))


def test_integer_inputs_raise():
    block = TransformerDecoderBlock(**block_kwargs(cross_attention=False))
    with pytest.raises(ValueError, match="floating-point"):
        block(np.zeros((BATCH, LENGTH, DIM), "int32"))


@pytest.mark.parametrize("built", [False, True])
def test_mismatched_encoder_width_raises(built):
    block = TransformerDecoderBlock(**block_kwargs())
    if built:
        block(random_inputs(), random_inputs(length=SOURCE))
    with pytest.raises(ValueError, match="encoder_outputs.*width 16"):
        block(random_inputs(), random_inputs(length=SOURCE, dim=8))


@pytest.mark.parametrize("built", [False, True])
def test_cross_attention_needs_encoder_outputs(built):
    block = TransformerDecoderBlock(**block_kwargs())
    if built:
        block(random_inputs(), random_inputs(length=SOURCE))
    with pytest.raises(ValueError, match="needs `encoder_outputs`"):
        block(random_inputs())


def test_no_cross_attention_rejects_encoder_outputs():
    block = TransformerDecoderBlock(**block_kwargs(cross_attention=False))
    with pytest.raises(ValueError, match="cross_attention=False"):
        block(random_inputs(), random_inputs(length=SOURCE))
    block(random_inputs())
    with pytest.raises(ValueError, match="cross_attention=False"):
        block.compute_cross_attention_cache(random_inputs(length=SOURCE))


# ------------------------------------------------------------- training


def test_fit_step_under_jit_compile():
    source_ids = keras.Input((SOURCE,), dtype="int32")
    target_ids = keras.Input((LENGTH,), dtype="int32")
    # The embedding's Keras mask reaches cross-attention under XLA too.
    source = TokenAndPositionEmbedding(VOCAB, SOURCE, DIM)(source_ids)
    target = TokenAndPositionEmbedding(VOCAB, LENGTH, DIM)(target_ids)
    decoder = TransformerDecoderBlock(**block_kwargs(dropout=0.1), name="dec")
    logits = keras.layers.Dense(VOCAB)(decoder(target, source))
    model = keras.Model([source_ids, target_ids], logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile(),
    )
    rng = np.random.default_rng(0)
    inputs = [
        rng.integers(1, VOCAB, size=(4, SOURCE)).astype("int32"),
        rng.integers(1, VOCAB, size=(4, LENGTH)).astype("int32"),
    ]
    inputs[0][1, 3:] = 0
    inputs[1][2, 4:] = 0
    before = [keras.ops.convert_to_numpy(w) for w in decoder.trainable_weights]
    history = model.fit(inputs, inputs[1], batch_size=4, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    # The key biases shift every logit of a query equally: zero gradient.
    unchanged = [
        w.path
        for a, w in zip(before, decoder.trainable_weights, strict=True)
        if np.allclose(a, keras.ops.convert_to_numpy(w))
    ]
    assert unchanged == [
        "dec/self_attention/key_dense/bias",
        "dec/cross_attention/key_dense/bias",
    ]


# ------------------------------------------------------- mask paths


def masked_vectors(ids, seed):
    """Vectors that carry a Keras padding mask, as an embedding gives."""
    keras.utils.set_random_seed(seed)
    embedding = TokenAndPositionEmbedding(VOCAB, 16, DIM, scale=True)
    return embedding(np.asarray(ids, "int32"))


def target_and_source(source_length):
    target_ids = [[5, 6, 0, 0], [7, 8, 9, 0]]
    source_ids = np.zeros((BATCH, source_length), "int32")
    source_ids[0, :3] = [4, 5, 6]
    source_ids[1, :2] = [7, 8]
    real = np.asarray(target_ids) != 0
    return masked_vectors(target_ids, 1), masked_vectors(source_ids, 2), real


@pytest.mark.parametrize("source_length", [4, 6])
def test_cross_attention_cache_masks_the_source_not_the_target(
    source_length,
):
    # The decoder input's own Keras mask must not reach the encoder keys,
    # and the cache must keep the encoder outputs' Keras mask.
    block = built_decoder()
    x, source, real = target_and_source(source_length)
    full = to_numpy(block(x, source))
    cross = block.compute_cross_attention_cache(source)
    cache = block.empty_cache(BATCH, x.shape[1])
    steps = []
    for index in range(x.shape[1]):
        output, cache = block(
            x[:, index : index + 1],
            cache=cache,
            cache_index=index,
            cross_attention_cache=cross,
        )
        steps.append(to_numpy(output))
    cached = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached[real], full[real], atol=1e-5)


def test_explicit_padding_masks_replace_the_keras_mask():
    decoder = built_decoder()
    encoder = TransformerEncoderBlock(**block_kwargs())
    x, source, _ = target_and_source(5)
    plain_x = to_numpy(x)  # the same values, no Keras mask
    plain_source = to_numpy(source)
    everything = np.ones(plain_x.shape[:2], bool)
    np.testing.assert_allclose(
        to_numpy(encoder(x, padding_mask=everything)),
        to_numpy(encoder(plain_x)),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(
            decoder(
                x,
                source,
                decoder_padding_mask=everything,
                encoder_padding_mask=np.ones(plain_source.shape[:2], bool),
            )
        ),
        to_numpy(decoder(plain_x, plain_source)),
        atol=1e-6,
    )


@pytest.mark.parametrize("cross", [True, False])
def test_cached_step_uses_an_explicit_decoder_padding_mask(cross):
    block = built_decoder(cross=cross)
    x = random_inputs(seed=20)
    source = random_inputs(seed=21, length=SOURCE)
    keep = padding([LENGTH, 3])
    keep[0, 1] = False  # a hole in the middle, not only at the end
    kwargs = {}
    if cross:
        kwargs["cross_attention_cache"] = block.compute_cross_attention_cache(
            source
        )
    full = decode(block, x, source, decoder_padding_mask=keep)
    cache = block.empty_cache(BATCH, LENGTH)
    steps = []
    for index in range(LENGTH):
        output, cache = block(
            x[:, index : index + 1],
            cache=cache,
            cache_index=index,
            decoder_padding_mask=keep,
            **kwargs,
        )
        steps.append(to_numpy(output))
    np.testing.assert_allclose(
        np.concatenate(steps, axis=1), full, rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="decoder_padding_mask"):
        block(
            x[:, :1],
            cache=cache,
            cache_index=0,
            decoder_padding_mask=keep[:, :2],
            **kwargs,
        )


def test_padding_mask_errors_name_the_argument():
    block = built_decoder()
    x = random_inputs(seed=22)
    source = random_inputs(seed=23, length=SOURCE)
    with pytest.raises(ValueError, match="`decoder_padding_mask`"):
        block(x, source, decoder_padding_mask=padding([2, 2], LENGTH + 1))
    with pytest.raises(ValueError, match="`encoder_padding_mask`"):
        block(x, source, encoder_padding_mask=padding([2, 2], SOURCE + 1))
    encoder = TransformerEncoderBlock(**block_kwargs())
    with pytest.raises(ValueError, match="`padding_mask`"):
        encoder(x, padding_mask=padding([2, 2], LENGTH + 1))


def test_cross_attention_argument_is_validated():
    with pytest.raises(ValueError, match="cross_attention"):
        TransformerDecoderBlock(**block_kwargs(cross_attention="yes"))


# ------------------------------------------------------- scores


def test_blocks_return_their_attention_scores():
    block = built_decoder()
    x = random_inputs(seed=24)
    source = random_inputs(seed=25, length=SOURCE)
    keep = padding([LENGTH, 3])
    source_keep = padding([SOURCE, 2], SOURCE)
    output, self_scores, cross_scores = block(
        x,
        source,
        decoder_padding_mask=keep,
        encoder_padding_mask=source_keep,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(
        to_numpy(output),
        decode(
            block,
            x,
            source,
            decoder_padding_mask=keep,
            encoder_padding_mask=source_keep,
        ),
        atol=1e-6,
    )
    self_scores, cross_scores = to_numpy(self_scores), to_numpy(cross_scores)
    assert self_scores.shape == (BATCH, HEADS, LENGTH, LENGTH)
    assert cross_scores.shape == (BATCH, HEADS, LENGTH, SOURCE)
    np.testing.assert_allclose(np.triu(self_scores, k=1), 0.0)
    np.testing.assert_allclose(self_scores[1, :, :, 3:], 0.0)
    np.testing.assert_allclose(cross_scores[1, :, :, 2:], 0.0)
    np.testing.assert_allclose(cross_scores.sum(-1), 1.0, rtol=1e-5)
    # With a cache the scores cover the cache's slots.
    cache = block.empty_cache(BATCH, LENGTH)
    cross = block.compute_cross_attention_cache(source, source_keep)
    _, step_self, step_cross, _ = block(
        x[:, :1],
        cache=cache,
        cache_index=0,
        cross_attention_cache=cross,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(
        to_numpy(step_cross)[:, :, 0], cross_scores[:, :, 0], atol=1e-6
    )
    np.testing.assert_allclose(to_numpy(step_self)[:, :, 0, 1:], 0.0)
    symbolic = block(
        keras.Input((LENGTH, DIM)),
        keras.Input((SOURCE, DIM)),
        return_attention_scores=True,
    )
    assert [tuple(t.shape) for t in symbolic] == [
        (None, LENGTH, DIM),
        (None, HEADS, LENGTH, LENGTH),
        (None, HEADS, LENGTH, SOURCE),
    ]
    encoder = TransformerEncoderBlock(**block_kwargs())
    output, scores = encoder(x, padding_mask=keep, return_attention_scores=True)
    np.testing.assert_allclose(
        to_numpy(output), to_numpy(encoder(x, padding_mask=keep)), atol=1e-6
    )
    assert tuple(scores.shape) == (BATCH, HEADS, LENGTH, LENGTH)
    np.testing.assert_allclose(to_numpy(scores)[1, :, :, 3:], 0.0)


# ------------------------------------------- architectures: transformers


def _llama_family_block(kind, config, **overrides):
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None)
    scaling = config.rope_parameters
    kwargs = {
        "num_heads": heads,
        "intermediate_dim": config.intermediate_size,
        "dropout": 0.0,
        "activation": "silu",
        "gated": True,
        "norm_first": True,
        "normalization": "rms",
        "layer_norm_epsilon": config.rms_norm_eps,
        "position": "rotary",
        "max_wavelength": scaling["rope_theta"],
        "rope_scaling": scaling
        if scaling.get("rope_type", "default") != "default"
        else None,
        "cross_attention": False,
        "head_dim": head_dim if kind == "qwen3" else None,
        "num_key_value_heads": config.num_key_value_heads,
        "attention_bias": kind == "qwen2",
        "attention_output_bias": False,
        "feed_forward_bias": False,
        "query_key_norm": kind == "qwen3",
        "sliding_window": getattr(config, "sliding_window", None),
        **overrides,
    }
    return TransformerDecoderBlock(**kwargs)


def _copy_llama_layer(block, layer):
    copy_hf_attention(block.self_attention, layer.self_attn)
    norms = (
        (block.self_attention_add_norm, layer.input_layernorm),
        (block.feed_forward_add_norm, layer.post_attention_layernorm),
    )
    for add_norm, norm in norms:
        add_norm.norm.scale.assign(norm.weight.detach().numpy())
    copy_linear(block.feed_forward.gate_dense, layer.mlp.gate_proj)
    copy_linear(block.feed_forward.intermediate_dense, layer.mlp.up_proj)
    copy_linear(block.feed_forward.output_dense, layer.mlp.down_proj)


LLAMA_FAMILY = [
    (
        "llama",
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
    ("mistral", {"sliding_window": 4}),
    ("qwen2", {}),
    ("qwen3", {"hidden_size": 64, "head_dim": 24}),
]


@pytest.mark.parametrize("kind, overrides", LLAMA_FAMILY)
def test_matches_transformers_decoder_layer(kind, overrides):
    config = hf_config(kind, **overrides)
    module, prefix = hf_modules(kind, config)
    layer = getattr(module, f"{prefix}DecoderLayer")(config, layer_idx=0)
    randomize_torch(layer.eval(), seed=1, scale=0.1)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if "norm" in name:
                parameter.add_(1.0)
    rotary = getattr(module, f"{prefix}RotaryEmbedding")(config)
    length, lengths = 10, [10, 6]
    x = random_inputs(length=length, dim=config.hidden_size)
    additive, _ = hf_mask(
        length, getattr(config, "sliding_window", None), lengths
    )
    with torch.no_grad():
        hidden = torch.from_numpy(x)
        position_ids = torch.arange(length)[None].expand(BATCH, -1)
        expected = layer(
            hidden,
            attention_mask=torch.from_numpy(additive),
            position_embeddings=rotary(hidden, position_ids),
        )
        expected = expected[0] if isinstance(expected, tuple) else expected
    block = _llama_family_block(kind, config)
    block(x)
    _copy_llama_layer(block, layer)
    outputs = to_numpy(block(x, decoder_padding_mask=padding(lengths, length)))
    assert_real_positions_close(outputs, expected.numpy(), lengths, 2e-5)


def test_matches_transformers_gpt2_block():
    import transformers
    from transformers.models.gpt2 import modeling_gpt2

    config = transformers.GPT2Config(
        n_embd=32,
        n_head=4,
        n_inner=48,
        n_positions=16,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
        embd_pdrop=0.0,
    )
    config._attn_implementation = "eager"
    layer = modeling_gpt2.GPT2Block(config, layer_idx=0).eval()
    randomize_torch(layer, seed=2, scale=0.1)
    length, lengths = 8, [8, 5]
    x = random_inputs(length=length, dim=32)
    additive, _ = hf_mask(length, None, lengths)
    with torch.no_grad():
        expected = layer(
            torch.from_numpy(x), attention_mask=torch.from_numpy(additive)
        )
        expected = expected[0] if isinstance(expected, tuple) else expected
    block = TransformerDecoderBlock(
        num_heads=4,
        intermediate_dim=48,
        dropout=0.0,
        activation="gelu_approximate",
        norm_first=True,
        layer_norm_epsilon=1e-5,
        cross_attention=False,
    )
    block(x)

    def split(conv, parts):
        # Conv1D weights are (in, out), as Keras kernels.
        kernels = np.split(conv.weight.detach().numpy(), parts, axis=1)
        biases = np.split(conv.bias.detach().numpy(), parts)
        return list(zip(kernels, biases, strict=True))

    attention = block.self_attention
    projections = (
        attention.query_dense,
        attention.key_dense,
        attention.value_dense,
    )
    for dense, (kernel, bias) in zip(
        projections, split(layer.attn.c_attn, 3), strict=True
    ):
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)
    pairs = (
        (attention.output_dense, layer.attn.c_proj),
        (block.feed_forward.intermediate_dense, layer.mlp.c_fc),
        (block.feed_forward.output_dense, layer.mlp.c_proj),
    )
    for dense, conv in pairs:
        ((kernel, bias),) = split(conv, 1)
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)
    for add_norm, norm in (
        (block.self_attention_add_norm, layer.ln_1),
        (block.feed_forward_add_norm, layer.ln_2),
    ):
        add_norm.norm.gamma.assign(norm.weight.detach().numpy())
        add_norm.norm.beta.assign(norm.bias.detach().numpy())
    outputs = to_numpy(block(x, decoder_padding_mask=padding(lengths, length)))
    assert_real_positions_close(outputs, expected.numpy(), lengths, 2e-5)


def test_cached_steps_equal_full_pass_with_architecture_options():
    block = TransformerDecoderBlock(
        num_heads=4,
        intermediate_dim=32,
        dropout=0.0,
        norm_first=True,
        normalization="rms",
        gated=True,
        activation="silu",
        position="rotary",
        cross_attention=False,
        head_dim=6,
        num_key_value_heads=2,
        attention_bias=False,
        feed_forward_bias=False,
        query_key_norm=True,
        sliding_window=3,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )
    x = random_inputs(length=8, dim=DIM)
    full = to_numpy(block(x))
    cache = block.empty_cache(BATCH, 8)
    assert tuple(cache.shape) == (BATCH, 2, 2, 8, 6)
    steps = []
    for index in range(8):
        step, cache = block(
            x[:, index : index + 1], cache=cache, cache_index=index
        )
        steps.append(to_numpy(step))
    np.testing.assert_allclose(
        np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0
    )


def test_architecture_options_pass_the_layer_checks():
    init_kwargs = block_kwargs(
        norm_first=True,
        normalization="rms",
        gated=True,
        activation="silu",
        position="rotary",
        cross_attention=False,
        head_dim=6,
        num_key_value_heads=1,
        attention_bias=True,
        attention_output_bias=False,
        feed_forward_bias=False,
        query_key_norm=True,
        sliding_window=3,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )
    x = random_inputs()
    block = TransformerDecoderBlock(**init_kwargs)
    block(x)
    attention = block.self_attention
    assert attention.key_dim == 6
    assert tuple(attention.key_dense.kernel.shape) == (DIM, 6)
    assert attention.query_dense.use_bias
    assert not attention.output_dense.use_bias
    assert not block.feed_forward.use_bias
    assert tuple(attention.query_norm.scale.shape) == (6,)
    assert attention.sliding_window == 3
    config = block.get_config()
    for name in (
        "head_dim",
        "num_key_value_heads",
        "attention_bias",
        "attention_output_bias",
        "feed_forward_bias",
        "query_key_norm",
        "sliding_window",
        "rope_scaling",
    ):
        assert config[name] == init_kwargs[name]
    run_layer_test(
        TransformerDecoderBlock,
        init_kwargs,
        x,
        expected_output_shape=x.shape,
        input_mask=padding([LENGTH, 3]),
        # q, k, v kernels and biases, output kernel, two query/key norm
        # scales, three FFN kernels, two RMS scales.
        num_trainable_weights=14,
    )


def test_cross_attention_takes_the_head_options():
    block = TransformerDecoderBlock(
        **block_kwargs(head_dim=4, num_key_value_heads=1, attention_bias=False)
    )
    block(random_inputs(), random_inputs(length=5))
    cross = block.cross_attention_layer
    assert (cross.key_dim, cross.num_key_value_heads) == (4, 1)
    assert not cross.use_bias and cross.sliding_window is None


def test_heads_and_widths_are_keyword_only():
    with pytest.raises(TypeError):
        TransformerDecoderBlock(2, 32)
    with pytest.raises(TypeError):
        TransformerEncoderBlock(2, 32)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"head_dim": 0}, "head_dim"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"attention_bias": None}, "attention_bias"),
        ({"attention_output_bias": 0}, "attention_output_bias"),
        ({"feed_forward_bias": "yes"}, "feed_forward_bias"),
        ({"query_key_norm": None}, "query_key_norm"),
        ({"sliding_window": -1}, "sliding_window"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2}}, "position"),
        (
            {"position": "rotary", "rope_scaling": {"type": "dynamic"}},
            "rope_scaling.*dynamic",
        ),
    ],
)
def test_bad_architecture_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TransformerDecoderBlock(**block_kwargs(**kwargs))


def _copy_layer_norm(add_norm, norm):
    add_norm.norm.gamma.assign(norm.weight.detach().numpy())
    add_norm.norm.beta.assign(norm.bias.detach().numpy())


def _copy_bart_attention(ours, theirs):
    for dense, linear in (
        (ours.query_dense, theirs.q_proj),
        (ours.key_dense, theirs.k_proj),
        (ours.value_dense, theirs.v_proj),
        (ours.output_dense, theirs.out_proj),
    ):
        copy_linear(dense, linear)


def test_matches_transformers_bart_decoder_layer():
    import transformers
    from transformers.models.bart import modeling_bart

    config = transformers.BartConfig(
        d_model=32,
        decoder_attention_heads=4,
        decoder_ffn_dim=48,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    config._attn_implementation = "eager"
    layer = modeling_bart.BartDecoderLayer(config, layer_idx=0).eval()
    randomize_torch(layer, seed=4, scale=0.1)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if "layer_norm.weight" in name:
                parameter.add_(1.0)
    length, lengths, source_lengths = 6, [6, 4], [7, 5]
    x = random_inputs(length=length, dim=32)
    source = random_inputs(seed=1, length=7, dim=32)
    additive, _ = hf_mask(length, None, lengths)
    source_allowed = padding(source_lengths, 7)[:, None, None, :]
    source_additive = np.where(source_allowed, 0.0, np.finfo("float32").min)
    with torch.no_grad():
        expected = layer(
            torch.from_numpy(x),
            attention_mask=torch.from_numpy(additive),
            encoder_hidden_states=torch.from_numpy(source),
            encoder_attention_mask=torch.from_numpy(
                source_additive.astype("float32")
            ),
            use_cache=False,
        )
        expected = expected[0] if isinstance(expected, tuple) else expected
    block = TransformerDecoderBlock(
        num_heads=4,
        intermediate_dim=48,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-5,
    )
    block(x, source)
    _copy_bart_attention(block.self_attention, layer.self_attn)
    _copy_bart_attention(block.cross_attention_layer, layer.encoder_attn)
    _copy_layer_norm(block.self_attention_add_norm, layer.self_attn_layer_norm)
    _copy_layer_norm(
        block.cross_attention_add_norm, layer.encoder_attn_layer_norm
    )
    _copy_layer_norm(block.feed_forward_add_norm, layer.final_layer_norm)
    copy_linear(block.feed_forward.intermediate_dense, layer.fc1)
    copy_linear(block.feed_forward.output_dense, layer.fc2)
    outputs = block(
        x,
        source,
        decoder_padding_mask=padding(lengths, length),
        encoder_padding_mask=padding(source_lengths, 7),
    )
    assert_real_positions_close(
        to_numpy(outputs), expected.numpy(), lengths, 2e-5
    )
