"""Mixed precision end to end: every builder trains under mixed_float16
(with Keras's automatic loss scaling) and mixed_bfloat16, its blocks
computing in the half type, with finite, decreasing losses and float32
logits (symbolic and computed), on every backend."""

import keras
import numpy as np
import pytest

from tests.helpers import TASK_BATCH, TRAINING_TASKS

EPOCHS = 4


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("builder", sorted(TRAINING_TASKS))
def test_builder_trains_under_mixed_precision(builder, policy):
    keras.config.set_dtype_policy(policy)
    model, x, y, loss = TRAINING_TASKS[builder](np.random.default_rng(0))
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
    history = model.fit(x, y, batch_size=TASK_BATCH, epochs=EPOCHS, verbose=0)
    losses = np.array(history.history["loss"])
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    logits = model.predict(x, batch_size=TASK_BATCH, verbose=0)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
