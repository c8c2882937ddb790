"""Masked pooling of a sequence into one vector."""

import keras
from keras import ops

from keras_tfm._masking import MaskArgument
from keras_tfm._validation import check_choice, check_rank

POOLINGS = ("mean", "first", "max")


@keras.saving.register_keras_serializable(package="keras_tfm")
class SequencePooling(MaskArgument, keras.layers.Layer):
    """Pool `(batch, seq, dim)` into `(batch, dim)`, ignoring padding.

    `"mean"` averages real positions only (a fully padded row gives
    zeros, not NaN), `"max"` takes the maximum over real positions (zeros
    for a fully padded row), `"first"` takes position 0 (the `[CLS]`
    token). Appending padding never changes the result.

    Args:
        mode: `"mean"`, `"first"` or `"max"`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(batch, seq, dim)`.
        mask: boolean `(batch, seq)`; defaults to the Keras mask of
            `inputs`.

    Returns:
        Tensor `(batch, dim)` without a mask.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = np.array([[[1.0], [3.0], [100.0]]], "float32")
    >>> mask = np.array([[True, True, False]])
    >>> ops.convert_to_numpy(SequencePooling()(x, mask=mask)).tolist()
    [[2.0]]
    """

    def __init__(self, mode="mean", **kwargs):
        check_choice("mode", mode, POOLINGS)
        super().__init__(**kwargs)
        self.mode = mode
        self.supports_masking = True

    def build(self, input_shape):
        check_rank(self, "inputs", input_shape, (3,))
        self.built = True

    def call(self, inputs, mask=None):
        if self.mode == "first":
            return inputs[:, 0]
        if mask is None:
            if self.mode == "mean":
                return ops.mean(inputs, axis=1)
            return ops.max(inputs, axis=1)
        keep = ops.expand_dims(ops.cast(mask, "bool"), -1)
        if self.mode == "max":
            dtype = keras.backend.standardize_dtype(inputs.dtype)
            lowest = ops.cast(-6e4 if "16" in dtype else -3e38, dtype)
            pooled = ops.max(ops.where(keep, inputs, lowest), axis=1)
            return ops.where(ops.any(keep, axis=1), pooled, 0)
        values = ops.cast(ops.where(keep, inputs, 0), "float32")
        count = ops.sum(ops.cast(keep, "float32"), axis=1)
        pooled = ops.divide_no_nan(ops.sum(values, axis=1), count)
        return ops.cast(pooled, inputs.dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
