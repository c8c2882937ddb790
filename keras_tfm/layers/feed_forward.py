"""Position-wise feed-forward network."""

import keras
from keras import ops

from keras_tfm import activations
from keras_tfm._validation import (
    check_activation,
    check_bool,
    check_initializer,
    check_positive_int,
    check_rank,
    check_rate,
    clone_initializer,
    dtype_policy_config,
)
from keras_tfm.layers._projections import project, project_together


@keras.saving.register_keras_serializable(package="keras_tfm")
class FeedForward(keras.layers.Layer):
    """Position-wise feed-forward network: two dense layers around a
    non-linearity.

    `Dense(intermediate_dim, activation) -> Dropout -> Dense(model_dim)`,
    applied to every position independently (the paper's FFN). With
    `gated=True` the first layer is a gated linear unit,
    `activation(x W) * (x V)`, with `W` the kernel of `gate_dense` (the
    half that goes through `activation`) and `V` that of
    `intermediate_dense` (linear); each half is `intermediate_dim` wide,
    so the gated layer has one more `(model_dim, intermediate_dim)` kernel.
    `"gelu"` gives GEGLU, `"silu"` SwiGLU and `"relu"` ReGLU. The output
    has the input's last dimension unless `output_dim` is given. The Keras
    mask passes through unchanged.

    Args:
        intermediate_dim: width of the hidden layer (with `gated=True`,
            of each of `gate_dense` and `intermediate_dense`).
        activation: the non-linearity, a Keras activation name or callable.
        dropout: dropout rate applied to the hidden layer.
        gated: use a gated linear unit for the hidden layer.
        output_dim: width of the output. Defaults to the input's width.
        use_bias: whether the dense layers use biases.
        kernel_initializer: initializer of the dense kernels.
        bias_initializer: initializer of the dense biases.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(..., model_dim)` of rank 2, 3 or 4.
        training: whether dropout is active.

    Returns:
        Tensor `(..., output_dim or model_dim)`.

    Example:

    >>> import numpy as np
    >>> ffn = FeedForward(intermediate_dim=32, activation="gelu", gated=True)
    >>> tuple(ffn(np.ones((2, 5, 8), "float32")).shape)
    (2, 5, 8)

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.3;
        Shazeer, "GLU Variants Improve Transformer", 2020.
    """

    def __init__(
        self,
        intermediate_dim,
        activation="relu",
        dropout=0.0,
        gated=False,
        output_dim=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        check_positive_int("intermediate_dim", intermediate_dim)
        check_activation("activation", activation)
        check_rate("dropout", dropout)
        check_bool("gated", gated)
        check_positive_int("output_dim", output_dim, allow_none=True)
        check_bool("use_bias", use_bias)
        kernel_initializer = check_initializer(
            "kernel_initializer", kernel_initializer
        )
        bias_initializer = check_initializer(
            "bias_initializer", bias_initializer
        )
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.activation = activations.get(activation)
        self.dropout = dropout
        self.gated = gated
        self.output_dim = output_dim
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.supports_masking = True

    def _dense(self, units, name, activation=None):
        return keras.layers.Dense(
            units,
            activation=activation,
            use_bias=self.use_bias,
            # A clone per dense layer: one unseeded instance would give
            # every layer the same values.
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, input_shape):
        check_rank(self, "inputs", input_shape, (2, 3, 4))
        model_dim = input_shape[-1]
        if model_dim is None:
            raise ValueError(
                "FeedForward needs a known last dimension. "
                f"Received: inputs with shape {tuple(input_shape)}"
            )
        hidden_activation = None if self.gated else self.activation
        self.intermediate_dense = self._dense(
            self.intermediate_dim, "intermediate_dense", hidden_activation
        )
        self.intermediate_dense.build(input_shape)
        if self.gated:
            self.gate_dense = self._dense(
                self.intermediate_dim, "gate_dense", self.activation
            )
            self.gate_dense.build(input_shape)
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="dropout"
        )
        self.output_dense = self._dense(
            self.output_dim or model_dim, "output_dense"
        )
        hidden_shape = tuple(input_shape[:-1]) + (self.intermediate_dim,)
        self.output_dense.build(hidden_shape)
        self.built = True

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        # All positions as one (tokens, dim) matrix. Dense on (batch, seq,
        # dim) is a broadcast batched matmul whose kernel gradient contracts
        # two axes (XLA on CPU copies the operands) or sums per-batch
        # products (TensorFlow's BatchMatMulV2 gradient); plain GEMMs give
        # the same results faster (measured in benchmarks/README.md).
        tokens = ops.reshape(inputs, (-1, shape[-1]))
        if self.gated:
            gate, hidden = project_together(
                [self.gate_dense, self.intermediate_dense], tokens
            )
            hidden = ops.multiply(gate, hidden)
        else:
            hidden = project(self.intermediate_dense, tokens)
        hidden = self.dropout_layer(hidden, training=training)
        outputs = project(self.output_dense, hidden)
        return ops.reshape(outputs, (*shape[:-1], ops.shape(outputs)[-1]))

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        width = self.output_dim or input_shape[-1]
        return tuple(input_shape[:-1]) + (width,)

    def _dense_layers(self):
        """The Dense sublayers (for the configs of quantized layers)."""
        return [
            self.intermediate_dense,
            getattr(self, "gate_dense", None),
            self.output_dense,
        ]

    def get_config(self):
        config = super().get_config()
        if self.built:
            # After model.quantize(...), the Dense layers' policies.
            config["dtype"] = dtype_policy_config(self, self._dense_layers())
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": activations.serialize(self.activation),
                "dropout": self.dropout,
                "gated": self.gated,
                "output_dim": self.output_dim,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
