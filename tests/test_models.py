"""The functional builders: saving, tied tables, masks, errors, learning."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_tfm import layers
from keras_tfm.models import (
    CausalLM,
    Seq2SeqLM,
    decoder_lm,
    encoder_classifier,
    seq2seq_transformer,
)
from tests.helpers import MaskProbe, to_numpy

VOCAB, LENGTH, DIM, NUM_CLASSES = 12, 10, 16, 3
TINY = dict(num_layers=1, embedding_dim=DIM, num_heads=2, intermediate_dim=32)
POSITIONS = ["sinusoidal", "learned", "rotary", "none"]
BUILDERS = ["seq2seq", "classifier", "lm"]


def token_ids(lengths, total, seed=0, low=3, high=VOCAB):
    """Random ids in `[low, high)` with `0` padding after each length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, high, size=(len(lengths), total)).astype("int32")
    ids[np.arange(total)[None, :] >= np.asarray(lengths)[:, None]] = 0
    return ids


def pad(ids, extra):
    return np.pad(ids, [(0, 0), (0, extra)])


def build(kind, position="sinusoidal", **kwargs):
    """A tiny model of `kind` with dropout off, and inputs for it."""
    kwargs = {**TINY, "dropout": 0.0, "position": position, **kwargs}
    if kind == "seq2seq":
        model = seq2seq_transformer(VOCAB, LENGTH, **kwargs)
        inputs = {
            "encoder_token_ids": token_ids([5, 3], 5, seed=1),
            "decoder_token_ids": token_ids([4, 2], 4, seed=2),
        }
    elif kind == "classifier":
        model = encoder_classifier(VOCAB, LENGTH, NUM_CLASSES, **kwargs)
        inputs = token_ids([6, 2, 4], 6, seed=3)
    else:
        model = decoder_lm(VOCAB, LENGTH, **kwargs)
        inputs = token_ids([6, 3], 6, seed=4)
    return model, inputs


def tables(model, vocabulary_size=VOCAB):
    """The `(vocabulary_size, DIM)` embedding tables listed by a model (a
    shared table listed twice would count twice)."""
    return [
        v
        for v in model.weights
        if tuple(v.shape) == (vocabulary_size, DIM) and "embeddings" in v.path
    ]


def save_and_load(model, tmp_path):
    path = str(tmp_path / "model.keras")
    model.save(path)
    return keras.saving.load_model(path)


# --- .keras round trip ------------------------------------------------------


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", BUILDERS)
def test_keras_file_round_trip(kind, position, tmp_path):
    model, inputs = build(kind, position)
    expected = to_numpy(model(inputs))
    loaded = save_and_load(model, tmp_path)
    np.testing.assert_allclose(to_numpy(loaded(inputs)), expected, atol=1e-6)
    assert len(loaded.weights) == len(model.weights)

    prefixes = {"seq2seq": ["encoder", "decoder"], "classifier": ["encoder"]}
    block_position = "rotary" if position == "rotary" else "none"
    for prefix in prefixes.get(kind, ["decoder"]):
        embedding = loaded.get_layer(f"{prefix}_embedding")
        # Rotary positions are the blocks'; the embedding then adds none.
        embedding_position = "none" if position == "rotary" else position
        assert embedding.position == embedding_position
        assert embedding.get_config()["position"] == embedding_position
        block = loaded.get_layer(f"{prefix}_layer_0")
        assert block.position == block_position
        assert block.get_config()["position"] == block_position


def test_positions_change_the_outputs():
    # The flag is not ignored: built from the same seed, each strategy
    # gives a different output. Pre-norm gives attention scores of order
    # one, so that rotary visibly changes them.
    outputs = []
    for position in POSITIONS:
        keras.utils.set_random_seed(7)
        model, inputs = build("lm", position, norm_first=True)
        outputs.append(to_numpy(model(inputs)))
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert np.abs(outputs[i] - outputs[j]).max() > 1e-3, (i, j)


# --- tied embeddings --------------------------------------------------------


def train_one_step(model, inputs, targets):
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(inputs, targets, batch_size=len(targets), epochs=1, verbose=0)


def test_seq2seq_one_vocabulary_ties_one_table(tmp_path):
    model, inputs = build("seq2seq", tie_embeddings=True)
    assert len(tables(model)) == 1
    assert not any(layer.name == "output_projection" for layer in model.layers)
    expected = to_numpy(model(inputs))

    loaded = save_and_load(model, tmp_path)
    [table] = tables(loaded)
    assert len(loaded.weights) == len(model.weights)
    np.testing.assert_allclose(to_numpy(loaded(inputs)), expected, atol=1e-6)
    shared = loaded.get_layer("token_embedding")
    assert loaded.get_layer("encoder_embedding").token_embedding is shared
    assert loaded.get_layer("decoder_embedding").token_embedding is shared
    assert shared.embeddings is table

    before = to_numpy(table)
    targets = np.roll(inputs["decoder_token_ids"], -1, axis=1)
    train_one_step(loaded, inputs, targets)
    assert len(tables(loaded)) == 1
    assert loaded.get_layer("encoder_embedding").token_embedding is shared
    assert loaded.get_layer("decoder_embedding").token_embedding is shared
    assert np.abs(to_numpy(shared.embeddings) - before).max() > 0


def test_seq2seq_two_vocabularies_tie_decoder_table_with_output(tmp_path):
    target_vocabulary_size = 15
    model, inputs = build(
        "seq2seq",
        tie_embeddings=True,
        target_vocabulary_size=target_vocabulary_size,
    )
    loaded = save_and_load(model, tmp_path)
    for m in (model, loaded):
        assert len(tables(m)) == 1
        assert len(tables(m, target_vocabulary_size)) == 1
        assert not any(layer.name == "output_projection" for layer in m.layers)
        # No (DIM, target_vocabulary_size) kernel: the output is the table.
        assert not any(
            tuple(v.shape) == (DIM, target_vocabulary_size) for v in m.weights
        )
    encoder_table = loaded.get_layer("encoder_embedding").token_embedding
    decoder_table = loaded.get_layer("decoder_embedding").token_embedding
    assert encoder_table is not decoder_table
    assert decoder_table is loaded.get_layer("decoder_token_embedding")
    assert decoder_table.vocabulary_size == target_vocabulary_size
    logits = loaded(inputs)
    assert tuple(logits.shape) == (2, 4, target_vocabulary_size)
    np.testing.assert_allclose(
        to_numpy(logits), to_numpy(model(inputs)), atol=1e-6
    )


@pytest.mark.parametrize(
    "kind, share, expected_tables",
    [("seq2seq", None, 1), ("seq2seq", False, 2), ("lm", None, 1)],
)
def test_untied_models_have_a_dense_head(
    kind, share, expected_tables, tmp_path
):
    # Sharing the encoder/decoder table and tying the output are separate.
    extra = {} if share is None else {"share_embeddings": share}
    model, inputs = build(kind, tie_embeddings=False, **extra)
    loaded = save_and_load(model, tmp_path)
    for m in (model, loaded):
        assert len(tables(m)) == expected_tables
        head = m.get_layer("output_projection")
        assert isinstance(head, keras.layers.Dense)
        assert tuple(head.kernel.shape) == (DIM, VOCAB)
    if kind == "seq2seq":
        encoder_table = loaded.get_layer("encoder_embedding").token_embedding
        decoder_table = loaded.get_layer("decoder_embedding").token_embedding
        assert (encoder_table is decoder_table) == (expected_tables == 1)
    np.testing.assert_allclose(
        to_numpy(loaded(inputs)), to_numpy(model(inputs)), atol=1e-6
    )


def test_share_embeddings_needs_one_vocabulary():
    with pytest.raises(ValueError, match="share_embeddings"):
        seq2seq_transformer(
            VOCAB, 8, target_vocabulary_size=VOCAB + 1, share_embeddings=True
        )


def test_decoder_lm_ties_its_table_with_the_output():
    model, _ = build("lm", tie_embeddings=True)
    assert len(tables(model)) == 1
    assert not any(layer.name == "output_projection" for layer in model.layers)


# --- masks ------------------------------------------------------------------


def compiled(model):
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def evaluate(model, inputs, targets):
    return model.evaluate(inputs, targets, batch_size=len(targets), verbose=0)


@pytest.mark.parametrize("position", POSITIONS)
def test_seq2seq_loss_ignores_appended_padding(position):
    model = compiled(build("seq2seq", position)[0])
    encoder = token_ids([6, 2, 4], 6, seed=5)
    decoder = token_ids([5, 3, 1], 5, seed=6)
    targets = token_ids([5, 3, 1], 5, seed=7)
    loss = evaluate(
        model,
        {"encoder_token_ids": encoder, "decoder_token_ids": decoder},
        targets,
    )
    padded = evaluate(
        model,
        {
            "encoder_token_ids": pad(encoder, 3),
            "decoder_token_ids": pad(decoder, 4),
        },
        pad(targets, 4),
    )
    assert np.isfinite(loss) and loss > 0
    np.testing.assert_allclose(padded, loss, rtol=1e-5)


@pytest.mark.parametrize("position", POSITIONS)
def test_decoder_lm_loss_ignores_appended_padding(position):
    model = compiled(build("lm", position)[0])
    ids = token_ids([6, 4, 2], 6, seed=8)
    targets = token_ids([6, 4, 2], 6, seed=9)
    loss = evaluate(model, ids, targets)
    padded = evaluate(model, pad(ids, 4), pad(targets, 4))
    assert np.isfinite(loss) and loss > 0
    np.testing.assert_allclose(padded, loss, rtol=1e-5)


@pytest.mark.parametrize(
    "pooling, position",
    [
        ("mean", "sinusoidal"),
        ("first", "learned"),
        ("max", "rotary"),
    ],
)
def test_classifier_ignores_appended_padding(pooling, position):
    model, ids = build("classifier", position, pooling=pooling)
    # `predict` compiles once per shape; an eager JAX call is far slower.
    expected = model.predict(ids, verbose=0)

    @settings(max_examples=3, deadline=None)
    @given(extra=st.integers(1, LENGTH - ids.shape[1]))
    def check(extra):
        got = model.predict(pad(ids, extra), verbose=0)
        np.testing.assert_allclose(got, expected, atol=1e-5)

    check()


@pytest.mark.parametrize("tie_embeddings", [True, False])
@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
def test_logits_carry_the_decoder_padding_mask(kind, tie_embeddings):
    model, inputs = build(kind, tie_embeddings=tie_embeddings)
    if kind == "seq2seq":
        symbolic = {
            name: keras.Input((None,), dtype="int32", name=name)
            for name in inputs
        }
        decoder_ids = inputs["decoder_token_ids"]
    else:
        symbolic = keras.Input((None,), dtype="int32")
        decoder_ids = inputs
    logits = model(symbolic)
    probe = keras.Model(symbolic, MaskProbe()(logits))
    received = ops.convert_to_numpy(probe.predict(inputs, verbose=0))
    np.testing.assert_array_equal(received, (decoder_ids != 0).astype(int))


# --- the functional graph holds layers only ---------------------------------


def composed(kind):
    """A model composed from the layers, as the README's recipe does."""
    embedding = layers.TokenAndPositionEmbedding(VOCAB, LENGTH, DIM)
    if kind == "CausalLM":
        block = layers.TransformerDecoderBlock(
            num_heads=2, intermediate_dim=32, cross_attention=False
        )
        return CausalLM(embedding, [block])
    decoder_embedding = layers.TokenAndPositionEmbedding(VOCAB, LENGTH, DIM)
    encoder_block = layers.TransformerEncoderBlock(
        num_heads=2, intermediate_dim=32
    )
    decoder_block = layers.TransformerDecoderBlock(
        num_heads=2, intermediate_dim=32
    )
    if kind == "Seq2SeqLM":
        return Seq2SeqLM(
            embedding, [encoder_block], decoder_embedding, [decoder_block]
        )
    # The plain functional API: an encoder-decoder and a pooled encoder.
    source = keras.Input((None,), dtype="int32")
    target = keras.Input((None,), dtype="int32")
    encoded = encoder_block(embedding(source))
    pooled = layers.SequencePooling()(encoded)
    decoded = decoder_block(decoder_embedding(target), encoded)
    logits = decoder_embedding.token_embedding(decoded, reverse=True)
    return keras.Model([source, target], [logits, pooled])


GRAPHS = [
    ("builder", "lm", False),
    ("builder", "lm", True),
    ("builder", "seq2seq", False),
    ("builder", "seq2seq", True),
    ("builder", "classifier", False),
    ("composed", "CausalLM", None),
    ("composed", "Seq2SeqLM", None),
    ("composed", "functional", None),
]


@pytest.mark.parametrize("origin, kind, packed", GRAPHS)
def test_graph_and_summary_hold_layers_only(origin, kind, packed):
    # Masks are computed inside the layers: no `not_equal` or
    # `convert_to_tensor` node the user never created.
    if origin == "builder":
        extra = {} if kind == "classifier" else {"packed": packed}
        model = call_builder(kind, **extra)
    else:
        model = composed(kind)
    strays = [
        f"{op.name} ({type(op).__name__})"
        for op in model.operations
        if not isinstance(op, keras.layers.Layer)
    ]
    assert strays == []
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    text = "\n".join(lines).lower()
    for name in (
        "convert_to_tensor",
        "converttotensor",
        "not_equal",
        "notequal",
    ):
        assert name not in text


# --- learned positions ------------------------------------------------------


def test_learned_positions_refuse_longer_inputs():
    model = decoder_lm(VOCAB, 8, position="learned", dropout=0.0, **TINY)
    fits = token_ids([8], 8)
    assert tuple(model.predict(fits, verbose=0).shape) == (1, 8, VOCAB)
    too_long = token_ids([12], 12)
    with pytest.raises(ValueError, match="sequence_length"):
        model(too_long)
    # Inside a TensorFlow graph whose length is only known at run time
    # the check is a graph assertion (an InvalidArgumentError).
    with pytest.raises(Exception, match="sequence_length") as error:
        model.predict(too_long, verbose=0)
    if keras.backend.backend() != "tensorflow":
        assert error.type is ValueError


# --- learning ---------------------------------------------------------------

START, END = 1, 2


def reversal_data(count, vocabulary_size, min_length, max_length, seed):
    """Source tokens in `[3, vocabulary_size)`; the target is the source
    reversed then END; the decoder reads START then the reversed source."""
    rng = np.random.default_rng(seed)
    encoder = np.zeros((count, max_length), "int32")
    decoder = np.zeros((count, max_length + 1), "int32")
    targets = np.zeros((count, max_length + 1), "int32")
    for row in range(count):
        length = rng.integers(min_length, max_length + 1)
        reversed_source = rng.integers(3, vocabulary_size, size=length)
        encoder[row, :length] = reversed_source[::-1]
        decoder[row, 0] = START
        decoder[row, 1 : length + 1] = reversed_source
        targets[row, :length] = reversed_source
        targets[row, length] = END
    inputs = {"encoder_token_ids": encoder, "decoder_token_ids": decoder}
    return inputs, targets


def test_seq2seq_learns_to_reverse_sequences():
    keras.utils.set_random_seed(0)
    inputs, targets = reversal_data(1024, 8, 2, 5, seed=0)
    model = seq2seq_transformer(
        8,
        6,
        num_layers=1,
        embedding_dim=32,
        num_heads=4,
        intermediate_dim=64,
        dropout=0.0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(inputs, targets, batch_size=32, epochs=8, verbose=0)
    logits = model.predict(inputs, batch_size=1024, verbose=0)
    real = targets != 0
    accuracy = ((logits.argmax(-1) == targets) & real).sum() / real.sum()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert accuracy > 0.9, accuracy


# --- bad arguments ----------------------------------------------------------

BAD_ARGUMENTS = [
    (
        dict(num_heads=3),
        "`num_heads` must divide the model dimension 16. Received: num_heads=3",
    ),
    (dict(num_heads=0), "num_heads.*Received: num_heads=0"),
    (dict(num_heads=-2), "num_heads.*Received: num_heads=-2"),
    (dict(dropout=1.0), "dropout.*Received: dropout=1.0"),
    (dict(dropout=-0.1), "dropout.*Received: dropout=-0.1"),
    (dict(position="absolute"), "position.*Received: position='absolute'"),
    (dict(vocabulary_size=0), "vocabulary_size.*Received: vocabulary_size=0"),
    (dict(sequence_length=0), "sequence_length.*Received: sequence_length=0"),
    (dict(num_layers=0), "num_layers.*Received: num_layers=0"),
]


def call_builder(kind, **overrides):
    arguments = {
        "vocabulary_size": VOCAB,
        "sequence_length": LENGTH,
        **TINY,
        **overrides,
    }
    if kind == "seq2seq":
        return seq2seq_transformer(**arguments)
    if kind == "classifier":
        return encoder_classifier(**{"num_classes": NUM_CLASSES, **arguments})
    return decoder_lm(**arguments)


@pytest.mark.parametrize("overrides, match", BAD_ARGUMENTS)
@pytest.mark.parametrize("kind", BUILDERS)
def test_bad_arguments_raise(kind, overrides, match):
    with pytest.raises(ValueError, match=match):
        call_builder(kind, **overrides)


@pytest.mark.parametrize(
    "kind, overrides, match",
    [
        ("classifier", dict(pooling="sum"), "pooling.*Received: pooling='sum'"),
        ("classifier", dict(num_classes=0), "num_classes"),
        ("seq2seq", dict(target_vocabulary_size=0), "target_vocabulary_size"),
        ("seq2seq", dict(num_decoder_layers=0), "num_decoder_layers"),
    ],
)
def test_builder_specific_bad_arguments_raise(kind, overrides, match):
    with pytest.raises(ValueError, match=match):
        call_builder(kind, **overrides)


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
def test_boolean_token_ids_are_rejected(kind):
    """One rule with the embeddings: a functional model would cast boolean
    ids to 0 and 1 silently. (`encoder_classifier` returns a plain
    `keras.Model`, which casts them.)"""
    model, inputs = build(kind)
    model(inputs)
    if isinstance(inputs, dict):
        inputs = {
            **inputs,
            "decoder_token_ids": inputs["decoder_token_ids"] > 0,
        }
    else:
        inputs = inputs > 0
    with pytest.raises(TypeError, match="integer token ids"):
        model(inputs)
    with pytest.raises(TypeError, match="integer token ids"):
        model.predict(inputs, verbose=0)
