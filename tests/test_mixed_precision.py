"""Mixed precision end to end: every builder trains under mixed_float16
(with Keras's automatic loss scaling) and mixed_bfloat16, its blocks
computing in the half type, with finite, decreasing losses and float32
logits (symbolic and computed), on every backend."""

import keras
import numpy as np
import pytest

from keras_tfm import models
from keras_tfm.losses import MaskedSparseCategoricalCrossentropy

VOCAB, LENGTH, BATCH, EPOCHS = 12, 6, 4, 4
TINY = dict(num_layers=1, embedding_dim=16, num_heads=2, intermediate_dim=32)


def _tokens(rng):
    ids = rng.integers(3, VOCAB, size=(BATCH, LENGTH)).astype("int32")
    ids[0, 3:] = 0  # some padding
    return ids


def _seq2seq(rng):
    model = models.seq2seq_transformer(VOCAB, LENGTH, dropout=0.0, **TINY)
    ids = _tokens(rng)
    decoder = np.concatenate([np.ones((BATCH, 1), "int32"), ids[:, :-1]], 1)
    decoder[ids == 0] = 0
    x = {"encoder_token_ids": ids[:, ::-1].copy(), "decoder_token_ids": decoder}
    return model, x, ids, MaskedSparseCategoricalCrossentropy()


def _classifier(rng):
    model = models.encoder_classifier(VOCAB, LENGTH, 3, dropout=0.0, **TINY)
    labels = np.arange(BATCH) % 3
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, _tokens(rng), labels, loss


def _lm(rng):
    model = models.decoder_lm(VOCAB, LENGTH, dropout=0.0, **TINY)
    ids = _tokens(rng)
    labels = np.concatenate([ids[:, 1:], np.zeros((BATCH, 1), "int32")], 1)
    return model, ids, labels, MaskedSparseCategoricalCrossentropy()


BUILDERS = {"seq2seq": _seq2seq, "classifier": _classifier, "lm": _lm}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_builder_trains_under_mixed_precision(builder, policy):
    keras.config.set_dtype_policy(policy)
    model, x, y, loss = BUILDERS[builder](np.random.default_rng(0))
    assert model.dtype_policy.name == policy
    block = "encoder_layer_0" if builder == "classifier" else "decoder_layer_0"
    compute_dtype = keras.mixed_precision.DTypePolicy(policy).compute_dtype
    assert model.get_layer(block).compute_dtype == compute_dtype
    symbolic = keras.tree.map_structure(
        lambda a: keras.Input(a.shape[1:], dtype="int32"), x
    )
    assert keras.backend.standardize_dtype(model(symbolic).dtype) == "float32"
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    losses = np.array(history.history["loss"])
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    logits = model.predict(x, batch_size=BATCH, verbose=0)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
