"""Residual connection, dropout and normalization ("Add & Norm")."""

import keras
from keras import ops

from keras_tfm._validation import (
    as_shape,
    check_bool,
    check_choice,
    check_positive_number,
    check_rate,
    shapes_compatible,
)

NORMALIZATIONS = ("layer", "rms")


@keras.saving.register_keras_serializable(package="keras_tfm")
class RMSNormalization(keras.layers.RMSNormalization):
    """Root mean square normalization over the last axis, keeping masks.

    `x / sqrt(mean(x**2) + epsilon) * scale`, with the statistics in
    float32 and the result cast back to the input dtype before the scale
    is applied, exactly as transformers' `LlamaRMSNorm`. Unlike
    `keras.layers.RMSNormalization` it passes Keras masks through (the
    normalization is position-wise).

    Args:
        epsilon: small constant added to the mean square. Defaults to
            `1e-6`.
        **kwargs: `axis` and base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(..., dim)`.

    Returns:
        Tensor of the same shape and dtype, with weight `scale` `(dim,)`.

    Example:

    >>> import numpy as np
    >>> tuple(RMSNormalization()(np.ones((2, 3, 8), "float32")).shape)
    (2, 3, 8)

    References:
        Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019.
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        check_positive_number("epsilon", epsilon)
        super().__init__(epsilon=epsilon, **kwargs)
        self.supports_masking = True

    def call(self, inputs):
        dtype = inputs.dtype
        x = ops.cast(inputs, "float32")
        mean_square = ops.mean(ops.square(x), axis=self.axis, keepdims=True)
        normalized = ops.cast(x * ops.rsqrt(mean_square + self.epsilon), dtype)
        return ops.cast(self.scale, dtype) * normalized

    def compute_mask(self, inputs, mask=None):
        return mask


@keras.saving.register_keras_serializable(package="keras_tfm")
class MaskedRMSNormalization(RMSNormalization):
    """The former name of `RMSNormalization`, kept so that `.keras` files
    saved with it still load."""


def normalization_layer(normalization, epsilon, **kwargs):
    """A LayerNormalization or mask-keeping RMSNormalization layer."""
    if normalization == "rms":
        return RMSNormalization(epsilon=epsilon, **kwargs)
    return keras.layers.LayerNormalization(epsilon=epsilon, **kwargs)


@keras.saving.register_keras_serializable(package="keras_tfm")
class AddNorm(keras.layers.Layer):
    """Residual connection with dropout, then normalization over features.

    A block writes the same lines for both arrangements, and this layer
    alone decides where the norm goes:

    ```python
    h = add_norm.sublayer_input(x)
    x = add_norm([x, sublayer(h)])
    ```

    - `norm_first=False` (post-norm, the paper's): `sublayer_input(x)` is
      `x` and `call([residual, sublayer_output])` returns
      `Norm(residual + Dropout(sublayer_output))`;
    - `norm_first=True` (pre-norm, GPT-2 style): `sublayer_input(x)` is
      `Norm(x)` and `call` returns `residual + Dropout(sublayer_output)`:
      the norm moves from the sum to the sublayer's input, so `call` itself
      does not normalize (stack a final norm after the last block).

    Either way the one `norm` sublayer holds the weights. Normalization runs
    over the last (model) axis — layer norm, not batch norm, whose
    statistics across sentences mean nothing for text — with statistics in
    float32 under mixed precision. The residual's Keras mask is propagated.

    Args:
        normalization: `"layer"` (LayerNorm) or `"rms"` (RMSNorm).
        epsilon: small constant added to the variance.
        dropout: dropout rate applied to the sublayer output.
        norm_first: pre-norm arrangement: the norm applies to the
            sublayer's input (`sublayer_input`), not to the sum (see
            above).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[residual, sublayer_output]` of tensors of equal
            shape `(..., model_dim)`.
        training: whether dropout is active.

    Returns:
        Tensor of the same shape as the inputs.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = np.random.rand(2, 3, 8).astype("float32")
    >>> out = ops.convert_to_numpy(AddNorm()([x, x]))
    >>> [round(float(v), 4) + 0.0 for v in out.mean(-1)[0]]
    [0.0, 0.0, 0.0]

    References:
        Vaswani et al., 2017, section 3.1; Ba et al., "Layer
        Normalization", 2016; Zhang & Sennrich, "Root Mean Square Layer
        Normalization", 2019.
    """

    def __init__(
        self,
        normalization="layer",
        epsilon=1e-5,
        dropout=0.0,
        norm_first=False,
        **kwargs,
    ):
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_positive_number("epsilon", epsilon)
        check_rate("dropout", dropout)
        check_bool("norm_first", norm_first)
        super().__init__(**kwargs)
        self.normalization = normalization
        self.epsilon = epsilon
        self.dropout = dropout
        self.norm_first = norm_first
        self.supports_masking = True

    def build(self, input_shape):
        # Any two shape sequences: tuples, lists, `tf.TensorShape`s, ...
        shapes = None
        if isinstance(input_shape, (list, tuple)) and len(input_shape) == 2:
            shapes = [as_shape(s) for s in input_shape]
        if shapes is None or None in shapes:
            raise ValueError(
                "AddNorm expects `inputs` to be a list [residual, "
                f"sublayer_output]. Received: inputs with shape {input_shape}"
            )
        residual_shape, sublayer_shape = shapes
        if not shapes_compatible(sublayer_shape, residual_shape):
            raise ValueError(
                "AddNorm `inputs` must have equal shapes. Received: "
                f"residual {residual_shape} and sublayer_output "
                f"{sublayer_shape}"
            )
        self.norm = normalization_layer(
            self.normalization,
            self.epsilon,
            dtype=self.dtype_policy,
            name="norm",
        )
        self.norm.build(residual_shape)
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="dropout"
        )
        self.built = True

    def normalize(self, inputs):
        """Apply this layer's normalization alone."""
        return self.norm(inputs)

    def sublayer_input(self, inputs):
        """The sublayer's input: `Norm(inputs)` pre-norm, `inputs`
        post-norm."""
        return self.norm(inputs) if self.norm_first else inputs

    def call(self, inputs, training=None):
        residual, sublayer_output = inputs
        total = residual + self.dropout_layer(
            sublayer_output, training=training
        )
        return total if self.norm_first else self.norm(total)

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        residual_mask, sublayer_mask = mask
        return residual_mask if residual_mask is not None else sublayer_mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "normalization": self.normalization,
                "epsilon": self.epsilon,
                "dropout": self.dropout,
                "norm_first": self.norm_first,
            }
        )
        return config
