"""Keras-mask plumbing shared by the losses and the metrics.

Padding reaches a loss or a metric two ways: as the Keras mask of `y_pred`
(a model whose output carries the padding mask) and as labels equal to
`ignore_class`. These helpers read both, the same way in both modules.
"""

import keras
from keras import ops


def check_ignore_class(ignore_class):
    """`ignore_class` if it is an integer label or None, else ValueError."""
    if ignore_class is not None and (
        isinstance(ignore_class, bool) or not isinstance(ignore_class, int)
    ):
        raise ValueError(
            "`ignore_class` must be an integer label or None. "
            f"Received: ignore_class={ignore_class!r}"
        )
    return ignore_class


class MaskArgument:
    """Mixin that keeps a layer's Keras `mask` argument out of the graph.

    Keras fills the mask attached to a layer's input into its `mask`
    argument. For a call on one tensor and nothing else, Keras writes it
    into the very keyword arguments it records as the layer's node of a
    functional graph, so the ops that computed the mask (the embedding's
    `convert_to_tensor` and `not_equal`) become operations of the model,
    listed by `model.summary()` though the user never made them (Keras's
    own `GlobalAveragePooling1D` shows them too). Given `mask=None`, Keras
    fills in a copy: the node records `mask=None`, and every run of the
    graph reads the mask from the tensor again, as any other call does.
    """

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs:
            kwargs["mask"] = None
        return super().__call__(*args, **kwargs)


class AttachMask(keras.layers.Layer):
    """Return `inputs[0]` carrying the boolean mask `inputs[1]`.

    `keras.losses.Loss.__call__` reduces over the Keras mask of the values
    that `call` returns, AND the mask of `y_pred`, exactly as Keras's own
    `SparseCategoricalCrossentropy(ignore_class=...)` does. A layer's
    `compute_mask` is the public way to attach such a mask.
    """

    def __init__(self, **kwargs):
        super().__init__(dtype="float32", autocast=False, **kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        return ops.cast(inputs[1], "bool")


class ReadMask(MaskArgument, keras.layers.Layer):
    """Return the Keras mask of `inputs` (all `True` when it has none).

    Keras hands a layer the mask of its input as the `mask` argument, the
    public way to read a mask on every backend. Call it on `y_pred` before
    anything makes a new tensor of it: a new tensor has no mask. Its
    `dtype` (float32 by default) only names a policy: nothing is cast.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(autocast=False, **kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.ones(ops.shape(inputs)[:-1], dtype="bool")
        return ops.cast(mask, "bool")

    def compute_mask(self, inputs, mask=None):
        return None


def sparse_labels(y_true, y_pred):
    """Integer labels `(batch, ...)` for predictions `(batch, ..., classes)`.

    A trailing label axis of size 1 (`(batch, ..., 1)`) is squeezed.
    """
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "int32")


def label_mask(labels, ignore_class):
    """Boolean mask, `False` where `labels == ignore_class`; `None` if None."""
    if ignore_class is None:
        return None
    return ops.not_equal(labels, ignore_class)
