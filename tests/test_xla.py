"""XLA: each builder's `fit` with `jit_compile=True` on TensorFlow matches
the non-compiled training from the same initial weights."""

import keras
import numpy as np
import pytest

from tests.helpers import TASK_BATCH, TRAINING_TASKS

STEPS = 3

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs in the tensorflow pass of CI",
)


def _losses(model, x, y, loss, jit_compile):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=loss,
        jit_compile=jit_compile,
    )
    assert model.jit_compile is jit_compile
    history = model.fit(x, y, batch_size=TASK_BATCH, epochs=STEPS, verbose=0)
    return np.array(history.history["loss"]), model.get_weights()


@pytest.mark.parametrize("builder", sorted(TRAINING_TASKS))
def test_jit_compile_matches_eager_graph(builder):
    model, x, y, loss = TRAINING_TASKS[builder](np.random.default_rng(0))
    twin, _, _, _ = TRAINING_TASKS[builder](np.random.default_rng(0))
    twin.set_weights(model.get_weights())
    plain, plain_weights = _losses(model, x, y, loss, jit_compile=False)
    compiled, compiled_weights = _losses(twin, x, y, loss, jit_compile=True)
    assert np.all(np.isfinite(compiled))
    np.testing.assert_allclose(compiled, plain, rtol=0, atol=1e-5)
    for a, b in zip(compiled_weights, plain_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
