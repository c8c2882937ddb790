"""Losses: sparse cross-entropy with label smoothing and an ignored class."""

import keras
from keras import ops

from keras_tfm._masking import (
    AttachMask,
    ReadMask,
    check_ignore_class,
    label_mask,
    sparse_labels,
)
from keras_tfm._validation import check_bool, check_rate
from keras_tfm.distribution import masked_global_mean


@keras.saving.register_keras_serializable(package="keras_tfm")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing and padding.

    The target distribution of a label `y` among `V` classes is
    `(1 - label_smoothing) * one_hot(y) + label_smoothing / V`, and the
    loss is its cross-entropy with the predicted distribution,
    `-sum_v q_v log p_v`, computed in float32. Positions whose label is
    `ignore_class` add nothing, and the mean is over the real positions
    only; a Keras mask on `y_pred` (from a model whose output carries the
    padding mask) is honoured too, so the mean is over positions that are
    real in both. With `label_smoothing=0` this is Keras's
    `SparseCategoricalCrossentropy(from_logits=..., ignore_class=...)`,
    which has no label smoothing.

    The mean is global under distribution: with the default reduction
    each replica returns its own sum divided by the count of real tokens
    over *all* replicas (`keras_tfm.distribution.masked_global_mean`), so
    the replicas' values add up to the one-device mean however the padding
    is split among them. Keras's own masked reduction averages each
    replica over its own tokens and then averages the replicas, which
    weighs a token on a padding-heavy replica more. Other reductions
    (`"sum"`, `None`) are Keras's.

    Args:
        from_logits: whether `y_pred` holds logits (else probabilities).
        label_smoothing: `epsilon` in `[0, 1)`; `0.1` in the paper.
        ignore_class: label to ignore (the padding id), or `None`.
        reduction: Keras loss reduction; the default averages over the
            real positions.
        name: loss name.
        dtype: dtype of the loss computation (float32 by default).

    Example:

    >>> import numpy as np
    >>> loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.0)
    >>> y_true = np.array([[3, 1, 0]])  # the last label is padding
    >>> y_pred = np.zeros((1, 3, 4), "float32")  # uniform over 4 classes
    >>> round(float(loss(y_true, y_pred)), 4)  # log(4), padding ignored
    1.3863

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer
        Vision", 2016 (label smoothing); Vaswani et al., "Attention Is All
        You Need", 2017, section 5.4.
    """

    def __init__(
        self,
        from_logits=True,
        label_smoothing=0.1,
        ignore_class=0,
        reduction="sum_over_batch_size",
        name="masked_sparse_categorical_crossentropy",
        dtype=None,
    ):
        label_smoothing = check_rate("label_smoothing", label_smoothing)
        check_bool("from_logits", from_logits)
        check_ignore_class(ignore_class)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.ignore_class = ignore_class
        self._attach_mask = AttachMask(name=f"{name}_mask")
        self._read_mask = ReadMask(name=f"{name}_read_mask")

    def call(self, y_true, y_pred):
        labels = sparse_labels(y_true, y_pred)
        y_pred = ops.cast(y_pred, "float32")
        if self.from_logits:
            log_probs = ops.log_softmax(y_pred, axis=-1)
        else:
            probs = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
            log_probs = ops.log(ops.clip(probs, 1e-7, 1.0))
        valid = label_mask(labels, self.ignore_class)
        if valid is not None:
            labels = ops.where(valid, labels, ops.zeros_like(labels))
        # (batch, ..., 1) -> (batch, ...)
        picked = ops.take_along_axis(
            log_probs, ops.expand_dims(labels, -1), axis=-1
        )
        losses = -ops.squeeze(picked, axis=-1)
        if self.label_smoothing:
            uniform = -ops.mean(log_probs, axis=-1)
            losses = (
                1.0 - self.label_smoothing
            ) * losses + self.label_smoothing * uniform
        if valid is None:
            return losses
        losses = ops.where(valid, losses, ops.zeros_like(losses))
        return self._attach_mask([losses, valid])

    def __call__(self, y_true, y_pred, sample_weight=None):
        if self.reduction not in ("sum_over_batch_size", "mean"):
            return super().__call__(y_true, y_pred, sample_weight)
        in_mask = self._read_mask(y_pred)
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        y_true = ops.convert_to_tensor(y_true)
        losses = self.call(y_true, y_pred)
        valid = label_mask(sparse_labels(y_true, y_pred), self.ignore_class)
        if valid is not None:
            in_mask = ops.logical_and(in_mask, valid)
        return masked_global_mean(losses, in_mask, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing,
                "ignore_class": self.ignore_class,
                "dtype": self.dtype,
            }
        )
        return config
