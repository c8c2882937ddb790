"""Packed rows are exact: each sequence as if run alone, nothing leaks."""

import keras
import numpy as np
import pytest

from keras_tfm import data, layers
from keras_tfm.models import decoder_lm, seq2seq_transformer
from tests.helpers import to_numpy

POSITIONS = ("sinusoidal", "learned", "rotary", "none")
VOCAB, SEQ = 23, 12
TINY = dict(num_layers=2, embedding_dim=16, num_heads=2, intermediate_dim=32)


def ragged(seed, count, low=2, high=6, vocabulary=VOCAB):
    rng = np.random.default_rng(seed)
    return [
        rng.integers(1, vocabulary, size=int(rng.integers(low, high)))
        for _ in range(count)
    ]


def input_names(model):
    return [tensor.name for tensor in model.inputs]


def twins(build, position, **kwargs):
    """An unpacked and a packed model with the same weights."""
    common = dict(TINY, position=position, dropout=0.0, **kwargs)
    unpacked = build(VOCAB, SEQ, **common)
    packed = build(VOCAB, SEQ, packed=True, **common)
    packed.set_weights(unpacked.get_weights())
    return unpacked, packed


@pytest.mark.parametrize("position", POSITIONS)
def test_packed_decoder_lm_equals_each_sequence_alone(position):
    unpacked, packed = twins(decoder_lm, position)
    sequences = ragged(1, 7)
    rows = data.pack(sequences, SEQ)
    logits = to_numpy(packed({k: rows[k] for k in input_names(packed)}))
    seen = 0
    for row in range(rows["segment_ids"].shape[0]):
        for segment in range(1, rows["segment_ids"][row].max() + 1):
            columns = np.flatnonzero(rows["segment_ids"][row] == segment)
            ids = rows["token_ids"][row, columns][None]
            alone = to_numpy(unpacked(ids))
            np.testing.assert_allclose(
                logits[row, columns][None], alone, rtol=0, atol=1e-5
            )
            seen += 1
    assert seen == len(sequences)


@pytest.mark.parametrize("position", POSITIONS)
def test_packed_seq2seq_equals_each_pair_alone(position):
    unpacked, packed = twins(seq2seq_transformer, position)
    sources, targets = ragged(2, 5), ragged(3, 5)
    rows = data.pack_pairs(sources, targets, SEQ, SEQ)
    inputs = {k: rows[k] for k in input_names(packed)}
    logits = to_numpy(packed(inputs))
    seen = 0
    for row in range(rows["decoder_segment_ids"].shape[0]):
        for segment in range(1, rows["decoder_segment_ids"][row].max() + 1):
            source = np.flatnonzero(rows["encoder_segment_ids"][row] == segment)
            target = np.flatnonzero(rows["decoder_segment_ids"][row] == segment)
            alone = to_numpy(
                unpacked(
                    {
                        "encoder_token_ids": rows["encoder_token_ids"][
                            row, source
                        ][None],
                        "decoder_token_ids": rows["decoder_token_ids"][
                            row, target
                        ][None],
                    }
                )
            )
            np.testing.assert_allclose(
                logits[row, target][None], alone, rtol=0, atol=1e-5
            )
            seen += 1
    assert seen == len(sources)


def test_packed_gradients_equal_the_sum_over_sequences():
    unpacked, packed = twins(decoder_lm, "rotary", num_layers=1)
    sequences = ragged(4, 3)
    rows = data.pack(sequences, SEQ, return_labels=True)
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=0, reduction="sum"
    )

    def total(model, inputs, labels):
        return loss(labels, model(inputs))

    packed_value = total(
        packed, {k: rows[k] for k in input_names(packed)}, rows["labels"]
    )
    alone = sum(
        float(
            to_numpy(
                total(
                    unpacked,
                    np.asarray(s)[None],
                    np.append(np.asarray(s)[1:], 0)[None],
                )
            )
        )
        for s in sequences
    )
    np.testing.assert_allclose(float(to_numpy(packed_value)), alone, rtol=1e-5)
    grads_packed = gradients(
        packed,
        lambda: total(
            packed, {k: rows[k] for k in input_names(packed)}, rows["labels"]
        ),
    )
    grads_alone = gradients(
        unpacked,
        lambda: sum(
            total(
                unpacked,
                np.asarray(s)[None],
                np.append(np.asarray(s)[1:], 0)[None],
            )
            for s in sequences
        ),
    )
    for a, b in zip(grads_packed, grads_alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def gradients(model, compute):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = compute()
        grads = tape.gradient(value, model.trainable_variables)
        return [to_numpy(g) for g in grads]
    if backend == "torch":
        for v in model.trainable_variables:
            v.value.grad = None
        compute().backward()
        return [to_numpy(v.value.grad) for v in model.trainable_variables]
    import jax

    variables = model.trainable_variables

    def pure(values):
        mapping = list(zip(variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return compute()

    # One compiled program, not op-by-op tracing (minutes on 2 cores).
    grads = jax.jit(jax.grad(pure))([v.value for v in variables])
    return [to_numpy(g) for g in grads]


def test_no_token_of_one_segment_changes_another():
    unpacked, packed = twins(decoder_lm, "learned")
    rows = data.pack(ragged(5, 6), SEQ)
    inputs = {k: np.array(rows[k]) for k in input_names(packed)}
    before = to_numpy(packed(inputs))
    changed = {k: v.copy() for k, v in inputs.items()}
    row = 0
    column = int(np.flatnonzero(rows["segment_ids"][row] == 2)[-1])
    changed["token_ids"][row, column] = (
        changed["token_ids"][row, column] % (VOCAB - 1)
    ) + 1
    after = to_numpy(packed(changed))
    other = rows["segment_ids"][row] != 2
    np.testing.assert_array_equal(after[row, other], before[row, other])
    assert not np.allclose(after[row, column], before[row, column])


def test_packed_blocks_alone_match_sequences_alone():
    block = layers.TransformerEncoderBlock(
        num_heads=2, intermediate_dim=32, dropout=0.0
    )
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1, 7, 16)).astype("float32")
    segments = np.array([[1, 1, 1, 2, 2, 2, 0]])
    packed = to_numpy(block(x, segment_ids=segments))
    first = to_numpy(block(x[:, :3]))
    second = to_numpy(block(x[:, 3:6]))
    np.testing.assert_allclose(packed[:, :3], first, atol=1e-5)
    np.testing.assert_allclose(packed[:, 3:6], second, atol=1e-5)
    assert np.isfinite(packed).all()


def test_packed_model_trains_compiled_and_in_mixed_precision():
    rows = data.pack(ragged(7, 20), SEQ, return_labels=True)
    compiled = keras.backend.backend() != "torch"
    # XLA in float32, mixed precision without it (two compilations would
    # double the time for nothing the pairing adds).
    for policy, jit_compile in (
        ("float32", compiled),
        ("mixed_float16", False),
    ):
        keras.config.set_dtype_policy(policy)
        try:
            model = decoder_lm(
                VOCAB, SEQ, packed=True, **dict(TINY, num_layers=1)
            )
            model.compile(
                "adam",
                keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True, ignore_class=0
                ),
                jit_compile=jit_compile,
            )
            inputs = {k: rows[k] for k in input_names(model)}
            history = model.fit(
                inputs, rows["labels"], batch_size=8, epochs=1, verbose=0
            )
        finally:
            keras.config.set_dtype_policy("float32")
        assert np.isfinite(history.history["loss"]).all()


def test_generation_uses_the_unpacked_twin():
    from keras_tfm.generation import Generator

    unpacked, packed = twins(decoder_lm, "sinusoidal", num_layers=1)
    with pytest.raises(ValueError, match="unpacked twin"):
        Generator(packed)
    ids = Generator(unpacked, jit_compile=False).generate([[3, 4]], 5)
    assert ids.shape == (1, 5)


@pytest.mark.parametrize("build", [decoder_lm, seq2seq_transformer])
def test_packed_must_be_a_bool(build):
    with pytest.raises(ValueError, match="Received: packed='yes'"):
        build(VOCAB, SEQ, packed="yes", **TINY)
