"""Models with explicit padding: `{"token_ids", "padding_mask"}` inputs,
where no token id means padding, and the BERT-style `EncoderModel`."""

import keras
import numpy as np
import pytest

from keras_tfm import checkpoints, layers, models
from tests.helpers import to_numpy

VOCABULARY = 40


def causal_lm(**kwargs):
    return models.CausalLM(
        layers.TokenAndPositionEmbedding(
            VOCABULARY, 16, 16, position="learned", mask_zero=False
        ),
        [
            layers.TransformerDecoderBlock(
                num_heads=2,
                intermediate_dim=32,
                dropout=0.0,
                norm_first=True,
                cross_attention=False,
            )
        ],
        final_norm=layers.RMSNormalization(epsilon=1e-6),
        padding_mask=True,
        **kwargs,
    )


def encoder_model():
    return models.EncoderModel(
        layers.TokenAndPositionEmbedding(
            VOCABULARY,
            16,
            16,
            position="learned",
            mask_zero=False,
            segment_vocabulary_size=2,
            normalization="layer",
        ),
        [
            layers.TransformerEncoderBlock(
                num_heads=2, intermediate_dim=32, dropout=0.0
            )
        ],
        pooler=keras.layers.Dense(16, activation="tanh"),
    )


def batch():
    ids = np.array([[5, 0, 7, 8, 9], [4, 0, 6, 3, 3]])  # 0 is a real token
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return ids, mask


def test_id_zero_is_a_real_token_and_padding_is_inert():
    model = causal_lm()
    ids, mask = batch()
    logits = to_numpy(model({"token_ids": ids, "padding_mask": mask}))
    # Row 1 alone, unpadded, gives the same logits at its real positions.
    alone = to_numpy(
        model({"token_ids": ids[1:, :3], "padding_mask": mask[1:, :3]})
    )
    np.testing.assert_allclose(logits[1, :3], alone[0], atol=1e-5)
    # Whatever the padding holds.
    other = ids.copy()
    other[1, 3:] = [0, 17]
    changed = to_numpy(model({"token_ids": other, "padding_mask": mask}))
    np.testing.assert_allclose(changed[1, :3], logits[1, :3], atol=1e-6)
    # And 0 as a real token counts: it is not padding.
    zero = ids.copy()
    zero[0, 1] = 1
    moved = to_numpy(model({"token_ids": zero, "padding_mask": mask}))
    assert np.abs(moved[0, 1:] - logits[0, 1:]).max() > 1e-4


def test_compiled_loss_skips_padding_through_the_logits_mask():
    model = causal_lm()
    ids, mask = batch()
    labels = np.roll(ids, -1, axis=1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("sgd", loss)
    got = model.evaluate(
        {"token_ids": ids, "padding_mask": mask}, labels, verbose=0
    )
    logits = to_numpy(model({"token_ids": ids, "padding_mask": mask}))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    want = -picked[mask.astype(bool)].mean()
    assert got == pytest.approx(float(want), rel=1e-5)


def test_causal_lm_with_padding_mask_saves_and_loads(tmp_path):
    model = causal_lm(pad_id=3)
    ids, mask = batch()
    inputs = {"token_ids": ids, "padding_mask": mask}
    path = str(tmp_path / "lm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.padding_mask and loaded.pad_id == 3
    np.testing.assert_allclose(
        to_numpy(loaded(inputs)), to_numpy(model(inputs)), atol=1e-6
    )


def test_padding_mask_and_packed_are_exclusive():
    with pytest.raises(ValueError, match="padding_mask"):
        models.CausalLM(
            layers.TokenEmbedding(VOCABULARY, 16),
            [
                layers.TransformerDecoderBlock(
                    num_heads=2, intermediate_dim=32, cross_attention=False
                )
            ],
            packed=True,
            padding_mask=True,
        )
    with pytest.raises(ValueError, match="padding_mask"):
        causal_lm().__class__(
            layers.TokenEmbedding(VOCABULARY, 16),
            [
                layers.TransformerDecoderBlock(
                    num_heads=2, intermediate_dim=32, cross_attention=False
                )
            ],
            padding_mask="yes",
        )


def test_encoder_model_outputs_fit_and_round_trip(tmp_path):
    model = encoder_model()
    ids, mask = batch()
    segments = np.array([[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]])
    inputs = {"token_ids": ids, "padding_mask": mask, "segment_ids": segments}
    outputs = model(inputs)
    assert tuple(outputs["sequence_output"].shape) == (2, 5, 16)
    assert tuple(outputs["pooled_output"].shape) == (2, 16)
    # Segments change the output; padding does not.
    other = dict(inputs, segment_ids=np.zeros_like(segments))
    changed = to_numpy(model(other)["sequence_output"])
    assert np.abs(changed - to_numpy(outputs["sequence_output"])).max() > 1e-4
    padded = dict(inputs, token_ids=np.where(mask == 1, ids, 11))
    np.testing.assert_allclose(
        to_numpy(model(padded)["sequence_output"])[mask == 1],
        to_numpy(outputs["sequence_output"])[mask == 1],
        atol=1e-5,
    )
    model.compile("adam", {"pooled_output": "mse"})
    history = model.fit(
        inputs, {"pooled_output": np.zeros((2, 16))}, epochs=2, verbose=0
    )
    assert history.history["loss"][1] < history.history["loss"][0]
    path = str(tmp_path / "encoder.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(inputs)["pooled_output"]),
        to_numpy(model(inputs)["pooled_output"]),
        atol=1e-6,
    )


def test_checkpoint_model_saves_as_keras(tmp_path):
    model = checkpoints.from_config(
        {
            "model_type": "qwen3",
            "vocab_size": VOCABULARY,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 12,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
        }
    )
    ids, mask = batch()
    inputs = {"token_ids": ids, "padding_mask": mask}
    path = str(tmp_path / "qwen3.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(inputs)), to_numpy(model(inputs)), atol=1e-6
    )
