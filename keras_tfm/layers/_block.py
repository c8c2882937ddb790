"""What the encoder and decoder blocks share: arguments and sublayers."""

import keras

from keras_tfm import activations, masks
from keras_tfm._masking import MaskArgument
from keras_tfm._validation import (
    check_activation,
    check_bool,
    check_choice,
    check_initializer,
    check_positive_int,
    check_positive_number,
    check_rank,
    check_rate,
    clone_initializer,
    dtype_policy_config,
    shapes_compatible,
)
from keras_tfm.layers._attention_ops import check_head_options
from keras_tfm.layers.add_norm import NORMALIZATIONS, AddNorm
from keras_tfm.layers.attention import MultiHeadAttention
from keras_tfm.layers.feed_forward import FeedForward


class TransformerBlock(MaskArgument, keras.layers.Layer):
    """Base of `TransformerEncoderBlock` and `TransformerDecoderBlock`."""

    def __init__(
        self,
        *,
        num_heads,
        intermediate_dim,
        dropout=0.1,
        activation="relu",
        norm_first=False,
        layer_norm_epsilon=1e-5,
        gated=False,
        normalization="layer",
        position="none",
        max_wavelength=10000,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        activation_dropout=None,
        head_dim=None,
        num_key_value_heads=None,
        attention_bias=True,
        attention_output_bias=None,
        feed_forward_bias=True,
        query_key_norm=False,
        sliding_window=None,
        rope_scaling=None,
        **kwargs,
    ):
        check_head_options(
            num_heads,
            position,
            num_key_value_heads,
            sliding_window,
            rope_scaling,
        )
        check_positive_int("head_dim", head_dim, allow_none=True)
        check_bool("attention_bias", attention_bias)
        if attention_output_bias is not None:
            check_bool("attention_output_bias", attention_output_bias)
        check_bool("feed_forward_bias", feed_forward_bias)
        check_bool("query_key_norm", query_key_norm)
        check_positive_int("intermediate_dim", intermediate_dim)
        check_rate("dropout", dropout)
        if activation_dropout is not None:
            check_rate("activation_dropout", activation_dropout)
        check_activation("activation", activation)
        check_positive_number("layer_norm_epsilon", layer_norm_epsilon)
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_positive_number("max_wavelength", max_wavelength)
        check_bool("norm_first", norm_first)
        check_bool("gated", gated)
        kernel_initializer = check_initializer(
            "kernel_initializer", kernel_initializer
        )
        bias_initializer = check_initializer(
            "bias_initializer", bias_initializer
        )
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activations.get(activation)
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.gated = gated
        self.normalization = normalization
        self.position = position
        self.max_wavelength = max_wavelength
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.activation_dropout = activation_dropout
        self.head_dim = head_dim
        self.num_key_value_heads = num_key_value_heads
        self.attention_bias = attention_bias
        self.attention_output_bias = attention_output_bias
        self.feed_forward_bias = feed_forward_bias
        self.query_key_norm = query_key_norm
        self.sliding_window = sliding_window
        self.rope_scaling = None if rope_scaling is None else dict(rope_scaling)
        self.supports_masking = True

    def _check_inputs(self, name, shape):
        check_rank(self, name, shape, (3,))
        model_dim = shape[-1]
        if model_dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last dimension. "
                f"Received: {name} with shape {tuple(shape)}"
            )
        if self.head_dim is None and model_dim % self.num_heads:
            raise ValueError(
                "`num_heads` must divide the model dimension "
                f"{model_dim}. Received: num_heads={self.num_heads}"
            )
        return model_dim

    def _check_attention_mask(self, attention_mask, inputs):
        # Checked before merging with the padding mask, where a wrong shape
        # would broadcast silently or fail with a backend-specific error.
        shape = tuple(attention_mask.shape)
        batch, length = tuple(inputs.shape)[:2]
        expected = (batch, length, length)
        if not shapes_compatible(shape, expected, broadcast_axes=(0,)):
            raise ValueError(
                "`attention_mask` must have shape (batch, seq, seq) = "
                f"{expected}. Received: attention_mask with shape {shape}"
            )

    def _check_padding_mask(self, name, padding_mask, length):
        # Checked here so that a wrong shape names the argument the caller
        # gave, not an internal tensor.
        shape = tuple(padding_mask.shape)
        if len(shape) != 2 or (
            shape[1] is not None and length is not None and shape[1] != length
        ):
            raise ValueError(
                f"`{name}` must have shape (batch, {length}). Received: "
                f"{name} with shape {shape}"
            )

    def _segments(self, segment_ids, inputs, attention_mask, causal):
        """Padding and attention masks of packed rows."""
        self._check_padding_mask("segment_ids", segment_ids, inputs.shape[1])
        segments = masks.segment_mask(segment_ids, causal=causal)
        return (
            masks.padding_mask(segment_ids),
            masks.combine_masks(segments, attention_mask),
        )

    def _rotary_positions(self, positions):
        """Keyword arguments that pass `positions` to rotary attention."""
        if positions is None or self.position != "rotary":
            return {}
        return {"positions": positions}

    def _attention(
        self,
        name,
        model_dim,
        position,
        query_shape,
        value_shape,
        sliding_window=None,
    ):
        layer = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self.head_dim or model_dim // self.num_heads,
            dropout=self.dropout,
            use_bias=self.attention_bias,
            output_dim=model_dim,
            num_key_value_heads=self.num_key_value_heads,
            output_use_bias=self.attention_output_bias,
            query_key_norm=self.query_key_norm,
            query_key_norm_epsilon=self.layer_norm_epsilon,
            sliding_window=sliding_window,
            position=position,
            max_wavelength=self.max_wavelength,
            rope_scaling=self.rope_scaling if position == "rotary" else None,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )
        # The block chooses its masks itself (the key side's padding only,
        # explicit arguments replacing Keras masks): the query's Keras mask
        # that Keras fills in is not applied.
        layer._use_query_mask = False
        layer.build(query_shape, value_shape)
        return layer

    def _add_norm(self, name, shape):
        layer = AddNorm(
            normalization=self.normalization,
            epsilon=self.layer_norm_epsilon,
            dropout=self.dropout,
            norm_first=self.norm_first,
            dtype=self.dtype_policy,
            name=name,
        )
        layer.build([shape, shape])
        return layer

    def _feed_forward(self, shape):
        layer = FeedForward(
            self.intermediate_dim,
            activation=self.activation,
            dropout=(
                self.dropout
                if self.activation_dropout is None
                else self.activation_dropout
            ),
            gated=self.gated,
            use_bias=self.feed_forward_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="feed_forward",
        )
        layer.build(shape)
        return layer

    def compute_mask(self, inputs, mask=None, *args, **kwargs):
        return mask

    def _dense_layers(self):
        """Every Dense layer inside the block (for quantized configs)."""
        found = []
        for name in ("self_attention", "cross_attention_layer"):
            attention = getattr(self, name, None)
            if attention is not None:
                found += attention._dense_layers()
        return found + self.feed_forward._dense_layers()

    def get_config(self):
        config = super().get_config()
        if self.built:
            # After model.quantize(...), the nested Dense layers' policies.
            config["dtype"] = dtype_policy_config(self, self._dense_layers())
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": activations.serialize(self.activation),
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "gated": self.gated,
                "normalization": self.normalization,
                "position": self.position,
                "max_wavelength": self.max_wavelength,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "activation_dropout": self.activation_dropout,
                "head_dim": self.head_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "attention_bias": self.attention_bias,
                "attention_output_bias": self.attention_output_bias,
                "feed_forward_bias": self.feed_forward_bias,
                "query_key_norm": self.query_key_norm,
                "sliding_window": self.sliding_window,
                "rope_scaling": self.rope_scaling,
            }
        )
        return config


def split_attention_results(results, scores, cache):
    """`(output, scores, cache)` of an attention call, with `None` for the
    scores or the cache that were not asked for."""
    output, *rest = results if scores or cache else (results,)
    return (
        output,
        rest.pop(0) if scores else None,
        rest.pop(0) if cache else None,
    )
