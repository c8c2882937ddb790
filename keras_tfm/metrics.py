"""Metrics: token accuracy that ignores padding."""

import keras
from keras import ops

from keras_tfm._masking import (
    ReadMask,
    check_ignore_class,
    label_mask,
    sparse_labels,
)


@keras.saving.register_keras_serializable(package="keras_tfm")
class MaskedAccuracy(keras.metrics.Metric):
    """Accuracy of sparse labels over the real (unpadded) positions.

    The fraction of positions whose arg-max prediction equals the label,
    counting neither positions labelled `ignore_class` nor positions that
    the Keras mask of `y_pred` hides (a model whose output carries the
    padding mask). Sample weights, per example or per position, weight the
    positions. The mean is over every real position seen since the last
    reset, however the batches differ in length. Keras's
    `SparseCategoricalAccuracy` counts padding as ordinary positions when
    no mask reaches it; this metric never does.

    Args:
        ignore_class: label to ignore (the padding id), or `None`.
        name: metric name.
        dtype: dtype of the metric's variables.

    Example:

    >>> import numpy as np
    >>> metric = MaskedAccuracy()
    >>> y_true = np.array([[3, 1, 0, 0]])  # two real labels, two padding
    >>> y_pred = np.eye(4, dtype="float32")[[[3, 2, 0, 0]]]  # one right
    >>> metric.update_state(y_true, y_pred)
    >>> float(metric.result())
    0.5
    """

    def __init__(self, ignore_class=0, name="masked_accuracy", dtype=None):
        check_ignore_class(ignore_class)
        super().__init__(name=name, dtype=dtype)
        self.ignore_class = ignore_class
        self._direction = "up"
        self._read_mask = ReadMask(name=f"{name}_mask")
        self.correct = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, name="correct"
        )
        self.count = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, name="count"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        # The mask is read before anything makes a new tensor of y_pred.
        weights = ops.cast(self._read_mask(y_pred), self.dtype)
        y_pred = ops.convert_to_tensor(y_pred)
        labels = sparse_labels(ops.convert_to_tensor(y_true), y_pred)
        valid = label_mask(labels, self.ignore_class)
        if valid is not None:
            weights = weights * ops.cast(valid, self.dtype)
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, self.dtype)
            rank = len(weights.shape)
            if len(sample_weight.shape) == rank + 1:
                sample_weight = ops.squeeze(sample_weight, axis=-1)
            while len(sample_weight.shape) < rank:
                # One weight per example: the same for all its positions.
                sample_weight = ops.expand_dims(sample_weight, -1)
            weights = weights * sample_weight
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        hits = ops.cast(ops.equal(predicted, labels), self.dtype)
        self.correct.assign_add(ops.sum(hits * weights))
        self.count.assign_add(ops.sum(weights * ops.ones_like(hits)))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {
            "ignore_class": self.ignore_class,
            "name": self.name,
            "dtype": self.dtype,
        }
