"""keras_tfm.plotting: figures, PNG files, the weights they show."""

import importlib
import os
import sys

import keras
import numpy as np
import pytest
from keras import ops

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from keras_tfm import plotting  # noqa: E402
from keras_tfm.layers import (  # noqa: E402
    LearnedPositionEmbedding,
    SinusoidalPositionEncoding,
)
from keras_tfm.models import (  # noqa: E402
    decoder_lm,
    encoder_classifier,
    seq2seq_transformer,
)

TINY = dict(num_layers=2, embedding_dim=16, num_heads=2, intermediate_dim=16)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as file:
        head = file.read(8)
    assert head == PNG_MAGIC
    assert os.path.getsize(path) > 1000


def image(figure, panel=0):
    return np.asarray(figure.axes[panel].images[0].get_array())


def seq2seq_inputs():
    return {
        "encoder_token_ids": np.array([[5, 6, 7, 8, 0], [4, 4, 4, 4, 4]]),
        "decoder_token_ids": np.array([[1, 9, 10, 0], [1, 2, 3, 4]]),
    }


def test_sinusoidal_heatmap_shows_the_encoding(tmp_path):
    path = os.path.join(tmp_path, "pe.png")
    layer = SinusoidalPositionEncoding()
    figure = plotting.plot_position_encoding(layer, length=20, dim=8, path=path)
    assert isinstance(figure, Figure)
    assert_png(path)
    want = ops.convert_to_numpy(layer(np.zeros((1, 20, 8), "float32")))[0]
    np.testing.assert_allclose(image(figure), want, atol=1e-6)


@pytest.mark.parametrize("position", ["sinusoidal", "learned"])
def test_position_table_of_a_model(position):
    model = encoder_classifier(30, 12, 2, position=position, **TINY)
    figure = plotting.plot_position_encoding(model)
    assert image(figure).shape == (12, 16)
    if position == "learned":
        table = model.get_layer("encoder_embedding").position_embedding
        np.testing.assert_allclose(
            image(figure), ops.convert_to_numpy(table.embeddings)
        )


def test_position_table_from_arrays_and_errors():
    table = np.random.default_rng(0).normal(size=(10, 4))
    figure = plotting.plot_position_encoding(table, length=6)
    np.testing.assert_allclose(image(figure), table[:6], rtol=1e-6)
    with pytest.raises(ValueError, match="position layer"):
        plotting.plot_position_encoding(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="not built"):
        plotting.plot_position_encoding(LearnedPositionEmbedding(8))
    rotary = encoder_classifier(30, 12, 2, position="rotary", **TINY)
    with pytest.raises(ValueError, match="adds no position table"):
        plotting.plot_position_encoding(rotary)


def test_cross_attention_map(tmp_path):
    path = os.path.join(tmp_path, "attention.png")
    model = seq2seq_transformer(30, 8, **TINY)
    vocabulary = [f"t{i}" for i in range(30)]
    figure = plotting.plot_attention(
        model, seq2seq_inputs(), head=1, vocabulary=vocabulary, path=path
    )
    assert isinstance(figure, Figure)
    assert_png(path)
    weights = image(figure)
    assert weights.shape == (3, 4)  # real decoder x real encoder tokens
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == [
        "t5",
        "t6",
        "t7",
        "t8",
    ]
    assert [t.get_text() for t in axes.get_yticklabels()] == [
        "t1",
        "t9",
        "t10",
    ]
    assert "decoder_layer_1" in figure.get_suptitle()


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_self_attention_is_causal(norm_first):
    model = seq2seq_transformer(30, 8, norm_first=norm_first, **TINY)
    figure = plotting.plot_attention(
        model,
        seq2seq_inputs(),
        layer="decoder_layer_0",
        attention="self",
        index=1,
    )
    assert len(figure.axes) == 3  # two heads and a colour bar
    for panel in (0, 1):
        weights = image(figure, panel)
        assert weights.shape == (4, 4)
        np.testing.assert_allclose(np.triu(weights, k=1), 0.0)
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("position", ["sinusoidal", "rotary"])
def test_encoder_and_lm_self_attention(position):
    classifier = encoder_classifier(30, 8, 2, position=position, **TINY)
    ids = np.array([[3, 4, 5, 6, 0, 0]])
    figure = plotting.plot_attention(classifier, ids, layer=0, head=0)
    weights = image(figure)
    assert weights.shape == (4, 4)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    lm = decoder_lm(30, 8, position=position, **TINY)
    weights = image(plotting.plot_attention(lm, ids, head=-1))
    np.testing.assert_allclose(np.triu(weights, k=1), 0.0)


def test_attention_errors():
    model = seq2seq_transformer(30, 8, **TINY)
    inputs = seq2seq_inputs()
    with pytest.raises(ValueError, match="`layer` must be"):
        plotting.plot_attention(model, inputs, layer="nope")
    with pytest.raises(ValueError, match="out of range"):
        plotting.plot_attention(model, inputs, layer=9)
    with pytest.raises(ValueError, match="`head`"):
        plotting.plot_attention(model, inputs, head=2)
    with pytest.raises(ValueError, match="no cross-attention"):
        plotting.plot_attention(
            model, inputs, layer="encoder_layer_0", attention="cross"
        )
    with pytest.raises(ValueError, match="`attention`"):
        plotting.plot_attention(model, inputs, attention="both")
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no TransformerEncoderBlock"):
        plotting.plot_attention(plain, np.zeros((1, 3)))


def test_history_curves(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    history = model.fit(
        np.ones((8, 2)),
        np.zeros((8, 1)),
        validation_split=0.25,
        epochs=3,
        verbose=0,
    )
    path = os.path.join(tmp_path, "history.png")
    figure = plotting.plot_history(history, path=path, title="run")
    assert isinstance(figure, Figure)
    assert_png(path)
    assert [axes.get_title() for axes in figure.axes] == ["loss", "mae"]
    train, validation = figure.axes[0].get_lines()
    np.testing.assert_allclose(train.get_ydata(), history.history["loss"])
    np.testing.assert_allclose(
        validation.get_ydata(), history.history["val_loss"]
    )
    only = plotting.plot_history(history.history, metrics=["mae"])
    assert [axes.get_title() for axes in only.axes] == ["mae"]
    with pytest.raises(ValueError, match="`history`"):
        plotting.plot_history({})
    with pytest.raises(ValueError, match="`metrics`"):
        plotting.plot_history(history, metrics=["bleu"])


def test_missing_matplotlib_is_a_clear_import_error(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # The module itself imports without matplotlib (keras_tfm imports it).
    importlib.reload(plotting)
    with pytest.raises(ImportError, match=r"pip install .*matplotlib"):
        plotting.plot_history({"loss": [1.0, 0.5]})


def test_plotted_maps_are_the_scores_the_blocks_return():
    model = seq2seq_transformer(30, 8, **TINY)
    inputs = seq2seq_inputs()
    block = model.decoder_blocks[-1]
    # The block's inputs, from the model's own graph.
    target, source = keras.Model(model.input, block.input).predict_on_batch(
        inputs
    )
    target_real = inputs["decoder_token_ids"] != 0
    source_real = inputs["encoder_token_ids"] != 0
    _, self_scores, cross_scores = block(
        target,
        source,
        decoder_padding_mask=target_real,
        encoder_padding_mask=source_real,
        return_attention_scores=True,
    )
    for attention, scores in (("self", self_scores), ("cross", cross_scores)):
        scores = ops.convert_to_numpy(scores)
        keys = target_real[0] if attention == "self" else source_real[0]
        figure = plotting.plot_attention(
            model, inputs, attention=attention, head=1
        )
        expected = scores[0, 1][target_real[0]][:, keys]
        np.testing.assert_allclose(image(figure), expected, atol=1e-6)
    encoder_block = model.encoder_blocks[0]
    x = keras.Model(model.input, encoder_block.input).predict_on_batch(inputs)
    _, scores = encoder_block(
        x, padding_mask=source_real, return_attention_scores=True
    )
    classifier_like = plotting.plot_attention(
        model, inputs, layer=encoder_block, head=0, index=0
    )
    expected = ops.convert_to_numpy(scores)[0, 0][source_real[0]][
        :, source_real[0]
    ]
    np.testing.assert_allclose(image(classifier_like), expected, atol=1e-6)
