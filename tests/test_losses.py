"""MaskedSparseCategoricalCrossentropy against Keras and a NumPy reference."""

import os

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

from keras_tfm.losses import MaskedSparseCategoricalCrossentropy
from keras_tfm.metrics import MaskedAccuracy
from keras_tfm.schedules import TransformerSchedule
from tests.helpers import AttachMask, labels_and_logits


def smoothed_reference(labels, logits, epsilon, ignore_class=0, weights=None):
    """`-sum_v q_v log p_v`, `q = (1 - eps) one_hot + eps / V`, averaged
    over the positions whose label is not `ignore_class`."""
    logits = logits.astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    vocabulary = logits.shape[-1]
    target = (1 - epsilon) * np.eye(vocabulary)[labels] + epsilon / vocabulary
    losses = -(target * log_probs).sum(-1)
    real = np.ones(labels.shape, bool)
    if ignore_class is not None:
        real = labels != ignore_class
    weights = np.ones(labels.shape) if weights is None else weights
    return (losses * weights)[real].sum() / real.sum()


def value(x):
    return float(ops.convert_to_numpy(x))


@given(seed=st.integers(0, 2**16))
def test_equals_keras_without_smoothing(seed):
    labels, logits = labels_and_logits(seed)
    ours = MaskedSparseCategoricalCrossentropy(label_smoothing=0.0)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=0
    )
    np.testing.assert_allclose(
        value(ours(labels, logits)),
        value(keras_loss(labels, logits)),
        rtol=1e-5,
    )
    weights = np.random.default_rng(seed).random(labels.shape)
    np.testing.assert_allclose(
        value(ours(labels, logits, sample_weight=weights)),
        value(keras_loss(labels, logits, sample_weight=weights)),
        rtol=1e-5,
    )


def test_equals_keras_on_probabilities_and_without_ignore_class():
    labels, logits = labels_and_logits(1, padded=False)
    probs = ops.convert_to_numpy(ops.softmax(logits))
    for ours, theirs, y_pred in [
        (
            MaskedSparseCategoricalCrossentropy(
                from_logits=False, label_smoothing=0.0
            ),
            keras.losses.SparseCategoricalCrossentropy(ignore_class=0),
            probs,
        ),
        (
            MaskedSparseCategoricalCrossentropy(
                label_smoothing=0.0, ignore_class=None
            ),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            logits,
        ),
    ]:
        np.testing.assert_allclose(
            value(ours(labels, y_pred)),
            value(theirs(labels, y_pred)),
            rtol=1e-5,
        )


@given(
    seed=st.integers(0, 2**16),
    epsilon=st.sampled_from([0.05, 0.1, 0.3, 0.9]),
)
def test_matches_numpy_label_smoothing(seed, epsilon):
    labels, logits = labels_and_logits(seed)
    loss = MaskedSparseCategoricalCrossentropy(label_smoothing=epsilon)
    np.testing.assert_allclose(
        value(loss(labels, logits)),
        smoothed_reference(labels, logits, epsilon),
        rtol=1e-5,
    )


def test_smoothing_without_ignore_class_and_with_weights():
    labels, logits = labels_and_logits(3)
    weights = np.random.default_rng(3).random(labels.shape)
    loss = MaskedSparseCategoricalCrossentropy(ignore_class=None)
    # Keras's default reduction divides the weighted sum by the count.
    want = smoothed_reference(labels, logits, 0.1, None, weights)
    np.testing.assert_allclose(
        value(loss(labels, logits, sample_weight=weights)), want, rtol=1e-5
    )


def test_classification_logits_and_trailing_label_axis():
    labels, logits = labels_and_logits(4, shape=(5,), padded=False)
    loss = MaskedSparseCategoricalCrossentropy(ignore_class=None)
    want = smoothed_reference(labels, logits, 0.1, None)
    np.testing.assert_allclose(value(loss(labels, logits)), want, rtol=1e-5)
    np.testing.assert_allclose(
        value(loss(labels[:, None], logits)), want, rtol=1e-5
    )


def test_padding_logits_do_not_matter():
    labels, logits = labels_and_logits(5)
    noisy = np.where((labels == 0)[..., None], np.float32(1e4), logits).astype(
        "float32"
    )
    loss = MaskedSparseCategoricalCrossentropy()
    np.testing.assert_allclose(
        value(loss(labels, noisy)), value(loss(labels, logits)), rtol=1e-6
    )


def test_all_padding_gives_zero_not_nan():
    loss = MaskedSparseCategoricalCrossentropy()
    got = value(loss(np.zeros((2, 3), "int32"), np.ones((2, 3, 4), "float32")))
    assert got == 0.0


def masked_output_model():
    """A model whose output is its input logits carrying a Keras mask."""
    logits = keras.Input((None, 6))
    mask = keras.Input((None,), dtype="bool")
    return keras.Model([logits, mask], AttachMask()([logits, mask]))


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_keras_mask_on_the_output_gives_the_same_number(epsilon):
    labels, logits = labels_and_logits(6)
    model = masked_output_model()
    masked = MaskedSparseCategoricalCrossentropy(
        label_smoothing=epsilon, ignore_class=None
    )
    model.compile(loss=masked)
    # Padding hidden by the model's mask, a plain loss ...
    from_mask = model.evaluate(
        [logits, labels != 0], labels, batch_size=len(labels), verbose=0
    )
    # ... equals padding ignored by the loss, on an unmasked output.
    from_labels = value(
        MaskedSparseCategoricalCrossentropy(label_smoothing=epsilon)(
            labels, logits
        )
    )
    np.testing.assert_allclose(from_mask, from_labels, rtol=1e-5)
    np.testing.assert_allclose(
        from_mask, smoothed_reference(labels, logits, epsilon), rtol=1e-5
    )


def test_keras_mask_and_ignore_class_together_average_real_positions():
    labels, logits = labels_and_logits(7)
    # The model's mask also hides the first position of every row.
    mask = labels != 0
    mask[:, 0] = False
    model = masked_output_model()
    model.compile(loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1))
    got = model.evaluate([logits, mask], labels, batch_size=3, verbose=0)
    want = smoothed_reference(
        np.where(mask, labels, 0), logits, 0.1, ignore_class=0
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Keras's own loss, without smoothing, averages the same positions.
    model.compile(loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0))
    ours = model.evaluate([logits, mask], labels, batch_size=3, verbose=0)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=0
        )
    )
    theirs = model.evaluate([logits, mask], labels, batch_size=3, verbose=0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_float16_logits_give_a_float32_loss():
    labels, logits = labels_and_logits(8)
    loss = MaskedSparseCategoricalCrossentropy()
    got = loss(labels, logits.astype("float16") * 100)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    assert np.isfinite(value(got))


def tiny_lm():
    from keras_tfm.models import decoder_lm

    return decoder_lm(
        12, 8, num_layers=1, embedding_dim=16, num_heads=2, intermediate_dim=16
    )


def test_trains_and_saves_with_a_compiled_model(tmp_path):
    # Counting sequences (learnable), half of them padded.
    ids = (3 + (np.arange(16)[:, None] + np.arange(9)) % 9).astype("int32")
    ids[8:, 6:] = 0
    x, y = ids[:, :-1], ids[:, 1:]
    model = tiny_lm()
    model.compile(
        optimizer=keras.optimizers.Adam(TransformerSchedule(16, 4)),
        loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.2),
        metrics=[MaskedAccuracy()],
        jit_compile=keras.backend.backend() != "torch",
    )
    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    before = model.evaluate(x, y, batch_size=16, verbose=0)

    path = os.path.join(tmp_path, "lm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, MaskedSparseCategoricalCrossentropy)
    assert loaded.loss.get_config() == model.loss.get_config()
    after = loaded.evaluate(x, y, batch_size=16, verbose=0)
    np.testing.assert_allclose(after, before, rtol=1e-5)


def test_config_round_trip():
    loss = MaskedSparseCategoricalCrossentropy(
        from_logits=False, label_smoothing=0.25, ignore_class=None, name="x"
    )
    config = loss.get_config()
    assert {
        "from_logits": False,
        "label_smoothing": 0.25,
        "ignore_class": None,
        "name": "x",
    }.items() <= config.items()
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(revived) is MaskedSparseCategoricalCrossentropy
    assert revived.get_config() == config


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"label_smoothing": "0.1"}, "label_smoothing"),
        ({"ignore_class": "0"}, "ignore_class"),
        ({"ignore_class": 1.5}, "ignore_class"),
        ({"ignore_class": True}, "ignore_class"),
        ({"from_logits": "yes"}, "from_logits"),
        ({"from_logits": 1}, "from_logits"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        MaskedSparseCategoricalCrossentropy(**kwargs)
