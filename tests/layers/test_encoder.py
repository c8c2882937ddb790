"""Tests of keras_tfm.layers.encoder.TransformerEncoderBlock."""

import functools

import keras
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_tfm.layers.embedding import TokenAndPositionEmbedding
from keras_tfm.layers.encoder import TransformerEncoderBlock
from tests.helpers import (
    BATCH,
    DIM,
    FFN,
    FILLS,
    HEAD_DIM,
    HEADS,
    LENGTH,
    PADDED_LENGTH,
    POLICIES,
    REAL_LENGTHS,
    VOCAB,
    MaskProbe,
    assert_real_positions_close,
    block_kwargs,
    fill_values,
    jit_compile,
    padding,
    random_inputs,
    randomize_weights,
    run_layer_test,
    to_numpy,
    torch_encoder_layer,
    torch_tensor,
)


@functools.cache
def built_encoder(norm_first=False, activation="relu", position="none"):
    block = TransformerEncoderBlock(
        **block_kwargs(
            norm_first=norm_first, activation=activation, position=position
        )
    )
    block.build((None, None, DIM))
    randomize_weights(block)
    return block


# ------------------------------------------------------- generic checks


@pytest.mark.parametrize(
    "init_kwargs",
    [
        {"num_heads": HEADS, "intermediate_dim": FFN},
        {
            "num_heads": HEADS,
            "intermediate_dim": FFN,
            "norm_first": True,
            "position": "rotary",
            "normalization": "rms",
            "gated": True,
            "activation": "gelu",
        },
    ],
    ids=["default", "pre_norm_rotary_rms_gated"],
)
def test_run_layer_test(init_kwargs):
    outputs = run_layer_test(
        TransformerEncoderBlock,
        init_kwargs,
        random_inputs(),
        num_trainable_weights=16,  # attention 8, FFN 4 or 6, norms 4 or 2
        num_seed_generators=4,  # dropout 0.1: attention, FFN, 2 residuals
        expected_output_shape=(BATCH, LENGTH, DIM),
        input_mask=padding([LENGTH, 3]),
        run_fit=False,  # test_fit_step_under_jit_compile trains the block
    )
    assert np.isfinite(to_numpy(outputs[0])).all()


# ------------------------------------------------ reference equality


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_torch_encoder_layer(norm_first, activation):
    block = built_encoder(norm_first, activation)
    reference = torch_encoder_layer(block)
    x = random_inputs(seed=1)
    lengths = [LENGTH, 3]
    keep = padding(lengths)
    ours = to_numpy(block(x, padding_mask=keep))
    with torch.no_grad():
        # torch: True = ignore.
        theirs = reference(
            torch_tensor(x), src_key_padding_mask=torch.from_numpy(~keep)
        ).numpy()
    worst = assert_real_positions_close(ours, theirs, lengths)
    print(f"max |ours - torch| = {worst:.2e}")


@pytest.mark.parametrize("normalize_first", [False, True])
def test_matches_keras_hub_transformer_encoder(normalize_first):
    import keras_hub

    block = built_encoder(normalize_first, "gelu")
    hub = keras_hub.layers.TransformerEncoder(
        FFN,
        HEADS,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-5,
        normalize_first=normalize_first,
    )
    hub.build((BATCH, LENGTH, DIM))
    hub_attention = hub._self_attention_layer
    for ours, theirs in (
        (block.self_attention.query_dense, hub_attention._query_dense),
        (block.self_attention.key_dense, hub_attention._key_dense),
        (block.self_attention.value_dense, hub_attention._value_dense),
    ):
        # (dim, heads * head_dim) -> EinsumDense (dim, heads, head_dim)
        theirs.kernel.assign(to_numpy(ours.kernel).reshape(DIM, HEADS, -1))
        theirs.bias.assign(to_numpy(ours.bias).reshape(HEADS, -1))
    # (heads * head_dim, dim) -> (heads, head_dim, dim)
    output = block.self_attention.output_dense
    hub_attention._output_dense.kernel.assign(
        to_numpy(output.kernel).reshape(HEADS, HEAD_DIM, DIM)
    )
    hub_attention._output_dense.bias.assign(to_numpy(output.bias))
    for ours, theirs in (
        (block.self_attention_add_norm.norm, hub._self_attention_layer_norm),
        (block.feed_forward_add_norm.norm, hub._feedforward_layer_norm),
        (
            block.feed_forward.intermediate_dense,
            hub._feedforward_intermediate_dense,
        ),
        (block.feed_forward.output_dense, hub._feedforward_output_dense),
    ):
        theirs.set_weights(ours.get_weights())

    x = random_inputs(seed=2)
    lengths = [LENGTH, 2]
    keep = padding(lengths)
    ours = to_numpy(block(x, padding_mask=keep))
    theirs = to_numpy(hub(x, padding_mask=keep))
    worst = assert_real_positions_close(ours, theirs, lengths)
    print(f"max |ours - keras_hub| = {worst:.2e}")


# ----------------------------------------------------------- properties


@settings(max_examples=10, deadline=None)
@given(
    lengths=REAL_LENGTHS,
    fill=FILLS,
    norm_first=st.booleans(),
    position=st.sampled_from(["none", "rotary"]),
    seed=st.integers(0, 2**16),
)
def test_appended_padding_does_not_change_real_positions(
    lengths, fill, norm_first, position, seed
):
    block = built_encoder(norm_first, position=position)
    rng = np.random.default_rng(seed)
    total = PADDED_LENGTH
    x = rng.normal(size=(len(lengths), total, DIM)).astype("float32")
    keep = padding(lengths, total)
    x[~keep] = fill_values(fill, x[~keep].shape, rng)
    padded = to_numpy(block(x, padding_mask=keep))
    for row, length in enumerate(lengths):
        alone = to_numpy(block(x[row : row + 1, :length]))
        np.testing.assert_allclose(
            padded[row, :length], alone[0], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("norm_first", [False, True])
def test_fully_padded_rows_are_finite(norm_first, policy):
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
        block = TransformerEncoderBlock(**block_kwargs(norm_first=norm_first))
        keep = padding([LENGTH, 0])
        outputs = to_numpy(block(random_inputs(), padding_mask=keep))
        assert block.compute_dtype == policy.removeprefix("mixed_")
    finally:
        keras.config.set_dtype_policy(previous)
    assert outputs.shape == (BATCH, LENGTH, DIM)
    assert np.isfinite(outputs).all(), f"non-finite output under {policy}"


# ---------------------------------------------------------- Keras masks


def test_uses_and_propagates_the_keras_mask_of_an_embedding():
    ids = np.array([[3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0]], "int32")
    embedding = TokenAndPositionEmbedding(
        VOCAB, LENGTH, DIM, position="sinusoidal", mask_zero=True
    )
    block = TransformerEncoderBlock(**block_kwargs())
    token_ids = keras.Input((LENGTH,), dtype="int32")
    outputs = block(embedding(token_ids))
    model = keras.Model(token_ids, [outputs, MaskProbe()(outputs)])
    got, mask = model.predict(ids, verbose=0)

    vectors = to_numpy(embedding(ids))  # NumPy: no Keras mask attached
    explicit = to_numpy(block(vectors, padding_mask=ids != 0))
    unmasked = to_numpy(block(vectors))
    np.testing.assert_allclose(got, explicit, rtol=0, atol=1e-5)
    assert not np.allclose(got[1, :3], unmasked[1, :3], atol=1e-3)
    np.testing.assert_array_equal(mask, (ids != 0).astype("int32"))


# --------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_heads": 0}, "num_heads"),
        ({"num_heads": -2}, "num_heads"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"position": "alibi"}, "position"),
        ({"position": "learned"}, "position"),
        ({"position": "sinusoidal"}, "position"),
        ({"normalization": "batch"}, "normalization"),
        ({"activation": "no_such_activation"}, "activation"),
        ({"intermediate_dim": 0}, "intermediate_dim"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerEncoderBlock(**block_kwargs(**kwargs))


def test_num_heads_must_divide_the_width():
    # keras-hub accepts this silently.
    block = TransformerEncoderBlock(num_heads=3, intermediate_dim=FFN)
    with pytest.raises(ValueError, match="num_heads.*divide.*8"):
        block(random_inputs(dim=8))


def test_wrong_input_rank_raises():
    block = TransformerEncoderBlock(**block_kwargs())
    with pytest.raises(ValueError, match="rank 3"):
        block(np.zeros((BATCH, DIM), "float32"))


@pytest.mark.parametrize("with_padding", [False, True])
@pytest.mark.parametrize(
    "shape",
    [(BATCH, LENGTH, 1), (BATCH, LENGTH - 1, LENGTH), (BATCH, LENGTH)],
)
def test_attention_mask_of_wrong_shape_raises(shape, with_padding):
    block = TransformerEncoderBlock(**block_kwargs())
    keep = padding([LENGTH, 3]) if with_padding else None
    with pytest.raises(ValueError, match="attention_mask"):
        block(
            random_inputs(),
            padding_mask=keep,
            attention_mask=np.ones(shape, bool),
        )


def test_attention_mask_is_combined_with_the_padding_mask():
    block = built_encoder()
    x = random_inputs(seed=3)
    keep = padding([LENGTH, 4])
    # Hide key 0 from every query of row 0 and everything but keys 0..1
    # from row 1: equal to a reference built from one merged mask.
    attention = np.ones((BATCH, LENGTH, LENGTH), bool)
    attention[0, :, 0] = False
    attention[1, :, 2:] = False
    got = to_numpy(block(x, padding_mask=keep, attention_mask=attention))
    merged = attention & keep[:, None, :]
    expected = to_numpy(block(x, attention_mask=merged))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    plain = to_numpy(block(x, padding_mask=keep))
    assert not np.allclose(got[0], plain[0], atol=1e-3)


# ------------------------------------------------------------- training


def test_fit_step_under_jit_compile():
    token_ids = keras.Input((LENGTH,), dtype="int32")
    x = TokenAndPositionEmbedding(VOCAB, LENGTH, DIM, mask_zero=True)(token_ids)
    x = TransformerEncoderBlock(**block_kwargs(dropout=0.1), name="encoder")(x)
    logits = keras.layers.Dense(VOCAB)(x)
    model = keras.Model(token_ids, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile(),
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(4, LENGTH)).astype("int32")
    ids[1, 4:] = 0
    before = [to_numpy(w) for w in model.trainable_weights]
    history = model.fit(ids, ids, batch_size=4, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    # The key bias adds a constant per query to the logits: softmax ignores
    # it, so its gradient is zero.
    unchanged = [
        w.path
        for a, w in zip(before, model.trainable_weights, strict=True)
        if np.allclose(a, to_numpy(w))
    ]
    assert unchanged == ["encoder/self_attention/key_dense/bias"]


def test_matches_transformers_bert_layer():
    import transformers
    from transformers.models.bert import modeling_bert

    from tests.helpers import copy_linear, randomize_torch

    config = transformers.BertConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    layer = modeling_bert.BertLayer(config).eval()
    randomize_torch(layer, seed=5, scale=0.1)
    lengths = [6, 3]
    x = random_inputs(length=6, dim=32)
    allowed = padding(lengths, 6)[:, None, None, :]
    additive = np.where(allowed, 0.0, np.finfo("float32").min)
    block = TransformerEncoderBlock(
        num_heads=4,
        intermediate_dim=48,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-12,
    )
    block(x)
    attention = layer.attention
    for dense, linear in (
        (block.self_attention.query_dense, attention.self.query),
        (block.self_attention.key_dense, attention.self.key),
        (block.self_attention.value_dense, attention.self.value),
        (block.self_attention.output_dense, attention.output.dense),
        (block.feed_forward.intermediate_dense, layer.intermediate.dense),
        (block.feed_forward.output_dense, layer.output.dense),
    ):
        copy_linear(dense, linear)
    for add_norm, norm in (
        (block.self_attention_add_norm, attention.output.LayerNorm),
        (block.feed_forward_add_norm, layer.output.LayerNorm),
    ):
        add_norm.norm.gamma.assign(norm.weight.detach().numpy() + 1.0)
        add_norm.norm.beta.assign(norm.bias.detach().numpy())
        with torch.no_grad():
            norm.weight.add_(1.0)
    with torch.no_grad():
        expected = layer(
            torch.from_numpy(x),
            attention_mask=torch.from_numpy(additive.astype("float32")),
        )
        expected = expected[0] if isinstance(expected, tuple) else expected
    outputs = block(x, padding_mask=padding(lengths, 6))
    assert_real_positions_close(
        to_numpy(outputs), expected.numpy(), lengths, 2e-5
    )
