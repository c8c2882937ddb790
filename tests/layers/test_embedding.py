"""TokenEmbedding and TokenAndPositionEmbedding: tying, masks, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm.layers import TokenAndPositionEmbedding, TokenEmbedding
from tests.helpers import run_layer_test

IDS = np.array([[3, 4, 5, 0], [6, 7, 0, 0]], "int32")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_token_embedding_layer_checks():
    run_layer_test(
        TokenEmbedding,
        {"vocabulary_size": 10, "embedding_dim": 8, "mask_zero": True},
        IDS,
        expected_output_shape=(2, 4, 8),
        run_mixed_precision=True,
    )


def test_token_embedding_reverse_layer_checks():
    vectors = np.random.default_rng(0).normal(size=(2, 4, 8))
    run_layer_test(
        TokenEmbedding,
        {"vocabulary_size": 10, "embedding_dim": 8},
        vectors.astype("float32"),
        call_kwargs={"reverse": True},
        expected_output_shape=(2, 4, 10),
        input_mask=IDS != 0,
    )


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "none"])
def test_token_and_position_layer_checks(position):
    run_layer_test(
        TokenAndPositionEmbedding,
        {
            "vocabulary_size": 10,
            "sequence_length": 8,
            "embedding_dim": 8,
            "position": position,
        },
        IDS,
        expected_output_shape=(2, 4, 8),
    )


def test_lookup_scale_and_reverse_values():
    layer = TokenEmbedding(10, 4, scale=True)
    vectors = ops.convert_to_numpy(layer(IDS))
    table = ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_allclose(vectors, table[IDS] * 2.0, rtol=1e-6)
    logits = ops.convert_to_numpy(layer(vectors, reverse=True))
    np.testing.assert_allclose(logits, vectors @ table.T, rtol=1e-5)


def test_mask_zero_attaches_padding_mask_and_reverse_keeps_it():
    layer = TokenEmbedding(10, 4, mask_zero=True)
    mask = ops.convert_to_numpy(layer.compute_mask(ops.convert_to_tensor(IDS)))
    np.testing.assert_array_equal(mask, IDS != 0)
    vectors = ops.ones((2, 4, 4))
    kept = layer.compute_mask(vectors, ops.convert_to_tensor(IDS != 0))
    np.testing.assert_array_equal(ops.convert_to_numpy(kept), IDS != 0)


def test_token_and_position_values():
    tok = TokenEmbedding(10, 6)
    layer = TokenAndPositionEmbedding(
        10, 8, 6, position="sinusoidal", scale=True, token_embedding=tok
    )
    out = ops.convert_to_numpy(layer(IDS))
    table = ops.convert_to_numpy(tok.embeddings)
    positions = np.arange(4)[:, None] / np.power(
        10000.0, 2 * (np.arange(6) // 2) / 6
    )
    encoding = np.where(
        np.arange(6) % 2 == 0, np.sin(positions), np.cos(positions)
    )
    np.testing.assert_allclose(
        out, table[IDS] * np.sqrt(6) + encoding, atol=1e-5
    )


def _tied_model(position):
    tok = TokenEmbedding(12, 8, name="token_embedding")
    ids = keras.Input((None,), dtype="int32")
    x = TokenAndPositionEmbedding(
        12, 16, 8, position=position, token_embedding=tok
    )(ids)
    x = keras.layers.Dense(8)(x)
    return keras.Model(ids, tok(x, reverse=True))


@pytest.mark.parametrize("position", ["sinusoidal", "learned"])
def test_tied_head_loss_ignores_appended_padding(position):
    model = _tied_model(position)
    model.compile(loss=LOSS)
    targets = np.array([[1, 2, 3, 0], [4, 5, 0, 0]], "int32")
    loss = model.evaluate(IDS, targets, verbose=0)
    padded = model.evaluate(
        np.pad(IDS, ((0, 0), (0, 5))),
        np.pad(targets, ((0, 0), (0, 5))),
        verbose=0,
    )
    np.testing.assert_allclose(loss, padded, rtol=1e-5)
    # Without the mask the padded loss would differ: check it does.
    unmasked = LOSS(
        np.pad(targets, ((0, 0), (0, 5))),
        model.predict(np.pad(IDS, ((0, 0), (0, 5))), verbose=0),
    )
    assert abs(float(unmasked) - loss) > 1e-3


@pytest.mark.parametrize("position", ["sinusoidal", "learned"])
def test_tied_model_saves_and_loads_as_one_table(position, tmp_path):
    model = _tied_model(position)
    path = str(tmp_path / "tied.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        model.predict(IDS, verbose=0), loaded.predict(IDS, verbose=0), atol=0
    )
    tables = [w for w in loaded.weights if w.shape == (12, 8)]
    assert len(tables) == 1
    embedding = loaded.layers[1]
    assert embedding.token_embedding is loaded.get_layer("token_embedding")
    loaded.compile(optimizer="sgd", loss=LOSS)
    before = ops.convert_to_numpy(tables[0]).copy()
    loaded.fit(IDS, IDS, epochs=1, verbose=0)
    assert not np.allclose(before, ops.convert_to_numpy(tables[0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocabulary_size": 0, "embedding_dim": 4}, "vocabulary_size"),
        ({"vocabulary_size": 5, "embedding_dim": -1}, "embedding_dim"),
        (
            {
                "vocabulary_size": 5,
                "embedding_dim": 4,
                "embeddings_initializer": "x",
            },
            "embeddings_initializer",
        ),
    ],
)
def test_token_embedding_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenEmbedding(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sequence_length": 0}, "sequence_length"),
        ({"vocabulary_size": -3}, "vocabulary_size"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"position": "absolute"}, "position.*sinusoidal"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"max_wavelength": 0}, "max_wavelength"),
    ],
)
def test_token_and_position_bad_arguments(kwargs, match):
    arguments = {"vocabulary_size": 5, "sequence_length": 4, "embedding_dim": 4}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TokenAndPositionEmbedding(**arguments)


def test_shared_table_must_match():
    with pytest.raises(ValueError, match="token_embedding"):
        TokenAndPositionEmbedding(5, 4, 4, token_embedding=TokenEmbedding(6, 4))
    with pytest.raises(TypeError, match="token_embedding"):
        TokenAndPositionEmbedding(5, 4, 4, token_embedding="table")


def test_float_token_ids_are_rejected():
    with pytest.raises(TypeError, match="integer token ids"):
        TokenEmbedding(5, 4)(np.ones((1, 3), "float32"))
    with pytest.raises(TypeError, match="integer token ids"):
        TokenAndPositionEmbedding(5, 4, 4)(np.ones((1, 3), "float32"))
    with pytest.raises(TypeError, match="integer token ids"):
        TokenEmbedding(5, 4)(keras.Input((3,), dtype="float32"))


def test_reverse_width_mismatch_is_rejected():
    with pytest.raises(ValueError, match="embedding_dim=4"):
        TokenEmbedding(5, 4)(np.ones((1, 3, 6), "float32"), reverse=True)


def test_learned_overflow_names_sequence_length():
    layer = TokenAndPositionEmbedding(5, 4, 4, position="learned")
    with pytest.raises(ValueError, match="sequence_length"):
        layer(np.ones((1, 6), "int32"))
