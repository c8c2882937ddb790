"""MaskedAccuracy: ignored labels, Keras masks, weights, serialization."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm.losses import MaskedSparseCategoricalCrossentropy
from keras_tfm.metrics import MaskedAccuracy
from tests.helpers import AttachMask, labels_and_logits


def result(metric):
    return float(ops.convert_to_numpy(metric.result()))


def test_ignores_padding_labels():
    labels, logits = labels_and_logits(0)
    metric = MaskedAccuracy()
    metric.update_state(labels, logits)
    hits = logits.argmax(-1) == labels
    np.testing.assert_allclose(result(metric), hits[labels != 0].mean())
    # Keras's accuracy counts padding as ordinary positions.
    keras_metric = keras.metrics.SparseCategoricalAccuracy()
    keras_metric.update_state(labels, logits)
    assert result(keras_metric) == pytest.approx(hits.mean())


def test_without_ignore_class_equals_keras():
    labels, logits = labels_and_logits(1)
    ours, theirs = (
        MaskedAccuracy(ignore_class=None),
        (keras.metrics.SparseCategoricalAccuracy()),
    )
    for metric in (ours, theirs):
        metric.update_state(labels, logits)
    assert result(ours) == pytest.approx(result(theirs))


def test_accumulates_and_resets():
    metric = MaskedAccuracy()
    first, second = labels_and_logits(2), labels_and_logits(3, shape=(2, 4))
    hits = real = 0
    for labels, logits in (first, second):
        metric.update_state(labels, logits)
        hits += (logits.argmax(-1) == labels)[labels != 0].sum()
        real += (labels != 0).sum()
    np.testing.assert_allclose(result(metric), hits / real, rtol=1e-6)
    metric.reset_state()
    assert result(metric) == 0.0


def test_sample_weights_per_position_and_per_example():
    labels, logits = labels_and_logits(4)
    hits = (logits.argmax(-1) == labels).astype("float64")
    real = (labels != 0).astype("float64")
    per_position = np.random.default_rng(4).random(labels.shape)
    per_example = np.array([1.0, 0.0, 2.0])
    for weights, full in (
        (per_position, per_position),
        (per_example, np.broadcast_to(per_example[:, None], labels.shape)),
    ):
        metric = MaskedAccuracy()
        metric.update_state(labels, logits, sample_weight=weights)
        want = (hits * real * full).sum() / (real * full).sum()
        np.testing.assert_allclose(result(metric), want, rtol=1e-5)


def test_honours_the_keras_mask_of_the_output():
    labels, logits = labels_and_logits(5)
    mask = labels != 0
    mask[:, 0] = False  # the model's mask hides more than the padding
    logits_in = keras.Input((None, logits.shape[-1]))
    mask_in = keras.Input((None,), dtype="bool")
    model = keras.Model(
        [logits_in, mask_in], AttachMask()([logits_in, mask_in])
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[MaskedAccuracy()],
    )
    logs = model.evaluate(
        [logits, mask], labels, batch_size=3, verbose=0, return_dict=True
    )
    hits = logits.argmax(-1) == labels
    np.testing.assert_allclose(
        logs["masked_accuracy"], hits[mask].mean(), rtol=1e-5
    )


def test_config_round_trip():
    metric = MaskedAccuracy(ignore_class=None, name="acc")
    assert metric.get_config() == {
        "ignore_class": None,
        "name": "acc",
        "dtype": "float32",
    }
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric)
    )
    assert type(revived) is MaskedAccuracy
    assert revived.get_config() == metric.get_config()


@pytest.mark.parametrize("ignore_class", ["0", 1.0, True])
def test_bad_ignore_class(ignore_class):
    with pytest.raises(ValueError, match="`ignore_class`.*Received"):
        MaskedAccuracy(ignore_class=ignore_class)


@pytest.mark.parametrize("ignore_class", ["0", 1.0, True])
def test_loss_and_metric_share_one_ignore_class_rule(ignore_class):
    messages = []
    for cls in (MaskedAccuracy, MaskedSparseCategoricalCrossentropy):
        with pytest.raises(ValueError) as error:
            cls(ignore_class=ignore_class)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
