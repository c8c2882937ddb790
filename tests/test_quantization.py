"""Quantization (int8, int4) and LoRA on keras_tfm models and layers.

`TokenEmbedding` is a `keras.layers.ReversibleEmbedding`, and the blocks'
projections are `keras.layers.Dense`, so `model.quantize(mode)` reaches
every weight matrix; layers without quantized kernels (LayerNormalization,
the position layers, Dropout) are skipped with a Keras warning.
"""

import warnings

import keras
import numpy as np
import pytest

from keras_tfm.layers import TokenAndPositionEmbedding, TokenEmbedding
from keras_tfm.models import decoder_lm, encoder_classifier, seq2seq_transformer
from tests.helpers import to_numpy

IDS = np.array([[3, 4, 5, 6, 0, 0, 0, 0], [6, 7, 8, 9, 1, 2, 0, 0]], "int32")
SIZES = dict(
    num_layers=1, embedding_dim=16, num_heads=2, intermediate_dim=32, dropout=0
)
# |quantized - float| / |float| over all outputs (Frobenius norms), for
# these untrained tiny models: measured 0.006-0.018 for int8 and 0.11-0.24
# for int4 across the builders and backends (an unrelated model: ~1.4).
TOLERANCE = {"int8": 0.05, "int4": 0.35}


def build(builder):
    keras.utils.set_random_seed(0)
    if builder == "decoder_lm":
        return decoder_lm(30, 8, **SIZES), IDS
    if builder == "seq2seq_transformer":
        inputs = {"encoder_token_ids": IDS, "decoder_token_ids": IDS}
        return seq2seq_transformer(30, 8, **SIZES), inputs
    return encoder_classifier(30, 8, 3, **SIZES), IDS


def quantize(model, mode):
    with warnings.catch_warnings():
        # "Layer LayerNormalization does not have a `quantize` method ..."
        warnings.filterwarnings("ignore", "Layer .* does not have")
        model.quantize(mode)


def leaves(model):
    """Every layer without sublayers (Keras's own `quantize` walk)."""
    return [
        layer
        for layer in model._flatten_layers()
        if len(list(layer._flatten_layers())) == 1
    ]


def close(got, expected, mode):
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert error < TOLERANCE[mode], f"{mode}: relative error {error}"


BUILDERS = ["decoder_lm", "seq2seq_transformer", "encoder_classifier"]


# Every builder and both modes, in three runs (each costs a compile per
# quantized layer on JAX); each saves and loads.
@pytest.mark.parametrize(
    "builder, mode",
    [
        ("decoder_lm", "int8"),
        ("seq2seq_transformer", "int4"),
        ("encoder_classifier", "int8"),
    ],
)
def test_quantized_builders_stay_close_and_save(builder, mode, tmp_path):
    model, inputs = build(builder)
    expected = to_numpy(model(inputs))
    quantize(model, mode)
    quantized = {
        type(layer).__name__
        for layer in leaves(model)
        if layer.quantization_mode == mode
    }
    assert quantized == {"Dense", "TokenEmbedding"}
    for layer in leaves(model):
        if isinstance(layer, (keras.layers.Dense, TokenEmbedding)):
            assert layer.quantization_mode == mode, layer.path
    got = to_numpy(model(inputs))
    assert got.dtype == expected.dtype
    close(got, expected, mode)
    # The compiled path too.
    np.testing.assert_allclose(
        model.predict(inputs, verbose=0), got, rtol=1e-4, atol=1e-5
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(inputs)), got, atol=1e-6)


@pytest.mark.parametrize("builder", BUILDERS)
def test_lora_trains_only_the_adapters(builder):
    model, inputs = build(builder)
    expected = to_numpy(model(inputs))
    for layer in leaves(model):
        if isinstance(layer, (keras.layers.Dense, TokenEmbedding)):
            layer.enable_lora(2)
    # B starts at zero: the same function until trained.
    np.testing.assert_allclose(to_numpy(model(inputs)), expected, atol=1e-6)
    [table] = [x for x in leaves(model) if isinstance(x, TokenEmbedding)]
    assert not table._embeddings.trainable
    trainable = {w.path.split("/")[-1] for w in model.trainable_weights}
    assert "lora_embeddings_a" in trainable
    assert "lora_kernel_a" in trainable
    assert not trainable & {"kernel", "embeddings"}
    frozen = to_numpy(table._embeddings).copy()
    targets = np.roll(IDS, -1, axis=1)
    if builder == "encoder_classifier":
        targets = np.array([0, 2])
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(inputs, targets, epochs=2, verbose=0)
    np.testing.assert_array_equal(to_numpy(table._embeddings), frozen)
    assert np.abs(to_numpy(model(inputs)) - expected).max() > 1e-4


# --- TokenEmbedding alone ---------------------------------------------------


def tied(table):
    ids = keras.Input((None,), dtype="int32")
    return keras.Model(ids, table(table(ids), reverse=True))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_token_embedding_quantizes_both_directions(mode, tmp_path):
    keras.utils.set_random_seed(0)
    table = TokenEmbedding(30, 16, mask_zero=True, scale=True)
    model = tied(table)
    vectors = to_numpy(table(IDS))
    logits = to_numpy(model(IDS))
    quantize(model, mode)
    assert table.quantization_mode == mode
    assert table._embeddings.name == "embeddings"
    assert table._embeddings.dtype == "int8"
    close(to_numpy(table(IDS)), vectors, mode)  # scaled lookup
    got = model(IDS)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    close(to_numpy(got), logits, mode)
    # The mask goes through the quantized reverse call.
    mask = table.compute_mask(table(IDS), table.compute_mask(IDS))
    np.testing.assert_array_equal(to_numpy(mask), IDS != 0)
    # And the quantized table saves and loads.
    path = str(tmp_path / "tied.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer(table.name).quantization_mode == mode
    np.testing.assert_allclose(to_numpy(loaded(IDS)), to_numpy(got), atol=0)


def test_token_embedding_lora_moves_both_directions():
    keras.utils.set_random_seed(0)
    table = TokenEmbedding(30, 16)
    model = tied(table)
    expected = to_numpy(model(IDS))
    table.enable_lora(4)
    np.testing.assert_allclose(to_numpy(model(IDS)), expected, atol=1e-6)
    table.lora_embeddings_b.assign(np.ones((4, 16), "float32"))
    lookup = to_numpy(table(IDS))
    delta = to_numpy(table.lora_embeddings_a) @ np.ones((4, 16))
    np.testing.assert_allclose(
        lookup, to_numpy(table._embeddings)[IDS] + delta[IDS], atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(model(IDS)),
        lookup @ (to_numpy(table._embeddings) + delta).T,
        rtol=1e-4,
        atol=1e-5,
    )
    config = table.get_config()
    assert config["lora_rank"] == 4
    assert TokenEmbedding.from_config(config).lora_rank == 4


def test_quantized_wrapper_owned_table_saves_and_loads(tmp_path):
    # The table TokenAndPositionEmbedding creates itself is not in its
    # config, unless quantized: then it is saved, policy included.
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    layer = TokenAndPositionEmbedding(30, 8, 16, name="embedding")
    model = keras.Model(ids, layer(ids))
    assert layer.get_config()["token_embedding"] is None
    quantize(model, "int8")
    path = str(tmp_path / "embedding.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    table = loaded.get_layer("embedding").token_embedding
    assert table.quantization_mode == "int8"
    np.testing.assert_allclose(
        to_numpy(loaded(IDS)), to_numpy(model(IDS)), atol=1e-6
    )
