"""TransformerSchedule: the paper's formula, validation, serialization."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm.schedules import TransformerSchedule


def reference(step, model_dim, warmup_steps, scale=1.0):
    """The paper's formula, with `step` counted from 1."""
    return scale * model_dim**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


@pytest.mark.parametrize(
    "model_dim, warmup_steps, scale",
    [(512, 4000, 1.0), (64, 100, 2.0), (16, 1, 0.5)],
)
def test_values_follow_the_formula(model_dim, warmup_steps, scale):
    schedule = TransformerSchedule(model_dim, warmup_steps, scale)
    iterations = [0, 1, 2, warmup_steps - 2, warmup_steps - 1, warmup_steps]
    iterations += [2 * warmup_steps, 10 * warmup_steps, 123_456]
    for iteration in sorted({i for i in iterations if i >= 0}):
        got = float(ops.convert_to_numpy(schedule(iteration)))
        want = reference(iteration + 1, model_dim, warmup_steps, scale)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=iteration)


def test_rises_to_its_peak_at_warmup_then_decays():
    schedule = TransformerSchedule(128, warmup_steps=50)
    values = ops.convert_to_numpy(schedule(ops.arange(200)))
    peak = int(np.argmax(values))
    assert peak == 49  # the 50th update
    assert values[0] > 0
    assert (np.diff(values[: peak + 1]) > 0).all()
    assert (np.diff(values[peak:]) < 0).all()
    np.testing.assert_allclose(values[peak], (128 * 50) ** -0.5, rtol=1e-6)


def test_drives_an_optimizer():
    schedule = TransformerSchedule(32, warmup_steps=10)
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer = keras.optimizers.SGD(schedule)
    for _ in range(3):
        optimizer.apply_gradients([(ops.ones(3), variable)])
    # SGD moved the variable by lr(step 1) + lr(step 2) + lr(step 3).
    moved = sum(reference(s, 32, 10) for s in (1, 2, 3))
    np.testing.assert_allclose(
        ops.convert_to_numpy(variable), 1 - moved, rtol=1e-5
    )
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(optimizer.learning_rate)),
        reference(4, 32, 10),
        rtol=1e-5,
    )


def test_config_round_trip():
    schedule = TransformerSchedule(256, warmup_steps=123, scale=0.5)
    assert schedule.get_config() == {
        "model_dim": 256,
        "warmup_steps": 123,
        "scale": 0.5,
    }
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert type(revived) is TransformerSchedule
    assert revived.get_config() == schedule.get_config()
    optimizer = keras.optimizers.Adam(schedule)
    revived = keras.optimizers.Adam.from_config(optimizer.get_config())
    saved = revived.get_config()["learning_rate"]
    assert saved["config"] == schedule.get_config()
    assert keras.saving.get_registered_object(saved["registered_name"]) is (
        TransformerSchedule
    )


def test_saved_with_a_compiled_model(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(
        optimizer=keras.optimizers.Adam(TransformerSchedule(16, 7)),
        loss="mse",
    )
    model.fit(np.ones((8, 4)), np.zeros((8, 2)), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    saved = loaded.optimizer.get_config()["learning_rate"]
    assert saved["registered_name"] == "keras_tfm>TransformerSchedule"
    assert saved["config"] == {"model_dim": 16, "warmup_steps": 7, "scale": 1}
    # The restored schedule continues from the restored step count.
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(loaded.optimizer.learning_rate)),
        reference(2, 16, 7),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"model_dim": 0}, "model_dim"),
        ({"model_dim": 64.0}, "model_dim"),
        ({"model_dim": 64, "warmup_steps": 0}, "warmup_steps"),
        ({"model_dim": 64, "warmup_steps": -5}, "warmup_steps"),
        ({"model_dim": 64, "scale": 0}, "scale"),
        ({"model_dim": 64, "scale": "big"}, "scale"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        TransformerSchedule(**kwargs)
