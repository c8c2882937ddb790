"""Transformer decoder block."""

import keras

from keras_tfm import masks
from keras_tfm._validation import check_rank
from keras_tfm.layers._block import TransformerBlock


@keras.saving.register_keras_serializable(package="keras_tfm")
class TransformerDecoderBlock(TransformerBlock):
    """Transformer decoder block: causal self-attention, cross-attention
    over the encoder outputs, and a feed-forward network.

    Self-attention uses the decoder padding mask AND the causal mask (query
    `t` sees positions `<= t`); cross-attention uses the encoder's padding
    mask alone. Each sublayer is wrapped in `AddNorm`, post-norm or pre-norm
    (`norm_first=True`). With `cross_attention=False` it is the decoder-only
    (GPT-style) block. The layout matches `torch.nn.TransformerDecoderLayer`,
    so weights copy across.

    For incremental decoding pass a self-attention `cache` (from
    `self_attention.empty_cache(batch, max_length)`) and `cache_index`, and
    optionally a `cross_attention_cache` from `compute_cross_attention_cache`
    so the encoder outputs are projected once; the block then returns
    `(outputs, new_cache)`.

    Args:
        num_heads: number of attention heads; must divide the model width.
        intermediate_dim: width of the feed-forward hidden layer.
        dropout: dropout rate everywhere in the block.
        activation: the FFN non-linearity.
        norm_first: pre-norm instead of post-norm.
        layer_norm_epsilon: epsilon of the normalization layers.
        gated: gated (GLU) feed-forward network.
        normalization: `"layer"` or `"rms"`.
        position: `"none"` or `"rotary"` (rotary embedding in
            self-attention).
        max_wavelength: longest rotary wavelength.
        cross_attention: whether the block attends to encoder outputs.
        kernel_initializer: initializer of every dense kernel.
        bias_initializer: initializer of every dense bias.
        activation_dropout: dropout rate on the feed-forward hidden layer;
            `None` (default) uses `dropout`, as
            `torch.nn.TransformerEncoderLayer` does. keras-hub's blocks
            have no dropout there (`activation_dropout=0.0`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(batch, target_len, model_dim)`.
        encoder_outputs: float tensor `(batch, source_len, model_dim)`;
            required when `cross_attention=True` (unless a
            `cross_attention_cache` is given).
        decoder_padding_mask: optional boolean `(batch, target_len)`.
            Defaults to the Keras mask of `inputs`.
        encoder_padding_mask: optional boolean `(batch, source_len)`.
            Defaults to the Keras mask of `encoder_outputs`.
        cache: optional self-attention cache `(batch, 2, max_length, heads,
            head_dim)`.
        cache_index: position of the first query in the cache.
        cross_attention_cache: optional `(batch, 2, source_len, heads,
            head_dim)` from `compute_cross_attention_cache`.
        training: whether dropout is active.
        mask, inputs_mask, encoder_outputs_mask: Keras masks, filled in by
            Keras.

    Returns:
        Tensor `(batch, target_len, model_dim)` carrying the input's Keras
        mask, or `(outputs, new_cache)` when `cache` is given.

    Example:

    >>> import numpy as np
    >>> block = TransformerDecoderBlock(num_heads=2, intermediate_dim=32)
    >>> target = np.random.rand(2, 4, 16).astype("float32")
    >>> source = np.random.rand(2, 6, 16).astype("float32")
    >>> tuple(block(target, source).shape)
    (2, 4, 16)

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.1.
    """

    def __init__(self, num_heads, intermediate_dim, *args, **kwargs):
        cross_attention = kwargs.pop("cross_attention", True)
        super().__init__(num_heads, intermediate_dim, *args, **kwargs)
        self.cross_attention = bool(cross_attention)

    def build(self, inputs_shape, encoder_outputs_shape=None):
        input_shape = inputs_shape
        model_dim = self._check_inputs("inputs", input_shape)
        self.self_attention = self._attention(
            "self_attention", model_dim, self.position, input_shape, input_shape
        )
        self.self_attention_add_norm = self._add_norm(
            "self_attention_add_norm", input_shape
        )
        if self.cross_attention:
            if encoder_outputs_shape is None:
                encoder_outputs_shape = input_shape
            check_rank(self, "encoder_outputs", encoder_outputs_shape, (3,))
            encoder_dim = encoder_outputs_shape[-1]
            if encoder_dim != model_dim:
                raise ValueError(
                    "`encoder_outputs` must have the decoder's width "
                    f"{model_dim}. Received: encoder_outputs with shape "
                    f"{tuple(encoder_outputs_shape)}"
                )
            self.cross_attention_layer = self._attention(
                "cross_attention",
                model_dim,
                "none",
                input_shape,
                encoder_outputs_shape,
            )
            self.cross_attention_add_norm = self._add_norm(
                "cross_attention_add_norm", input_shape
            )
        self.feed_forward = self._feed_forward(input_shape)
        self.feed_forward_add_norm = self._add_norm(
            "feed_forward_add_norm", input_shape
        )
        self.built = True

    def compute_cross_attention_cache(self, encoder_outputs):
        """Project the encoder outputs once for every decoding step."""
        if not self.cross_attention:
            raise ValueError(
                "This block has no cross-attention. Received: "
                "cross_attention=False"
            )
        return self.cross_attention_layer.compute_cache(encoder_outputs)

    def call(
        self,
        inputs,
        encoder_outputs=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        cache=None,
        cache_index=None,
        cross_attention_cache=None,
        training=None,
        mask=None,
        inputs_mask=None,
        encoder_outputs_mask=None,
    ):
        self._check_inputs("inputs", inputs.shape)
        has_source = (
            encoder_outputs is not None or cross_attention_cache is not None
        )
        if self.cross_attention and not has_source:
            raise ValueError(
                "A decoder block with cross_attention=True needs "
                "`encoder_outputs`. Received: encoder_outputs=None"
            )
        if not self.cross_attention and encoder_outputs is not None:
            raise ValueError(
                "A decoder block with cross_attention=False takes no "
                "`encoder_outputs`. Received: encoder_outputs with shape "
                f"{tuple(encoder_outputs.shape)}"
            )
        if encoder_outputs is not None:
            self._check_inputs("encoder_outputs", encoder_outputs.shape)
            if encoder_outputs.shape[-1] != inputs.shape[-1]:
                raise ValueError(
                    "`encoder_outputs` must have the decoder's width "
                    f"{inputs.shape[-1]}. Received: encoder_outputs with "
                    f"shape {tuple(encoder_outputs.shape)}"
                )
        if decoder_padding_mask is None:
            decoder_padding_mask = mask if mask is not None else inputs_mask
        if encoder_padding_mask is None:
            encoder_padding_mask = encoder_outputs_mask

        if cache is None:
            # Padding AND causal: the decoder's first self-attention.
            self_mask = masks.attention_mask(
                key_mask=decoder_padding_mask,
                causal=True,
                query_length=keras.ops.shape(inputs)[1],
            )
        else:
            # The cache holds only real tokens; the causal mask with the
            # cache offset hides slots not written yet.
            self_mask = None

        def attend_self(x):
            return self.self_attention(
                x,
                x,
                attention_mask=self_mask,
                use_causal_mask=cache is not None,
                cache=cache,
                cache_index=cache_index,
                training=training,
            )

        x = self._residual(
            self.self_attention_add_norm, inputs, attend_self, training
        )
        new_cache = None
        if isinstance(x, tuple):
            x, new_cache = x

        if self.cross_attention:
            cross_mask = None
            if encoder_padding_mask is not None:
                # (batch, 1, source_len): broadcast over queries.
                cross_mask = masks.attention_mask(
                    key_mask=encoder_padding_mask, query_length=1
                )

            def attend_source(h):
                if cross_attention_cache is None:
                    return self.cross_attention_layer(
                        h,
                        encoder_outputs,
                        attention_mask=cross_mask,
                        training=training,
                    )
                output, _ = self.cross_attention_layer(
                    h,
                    h,
                    attention_mask=cross_mask,
                    cache=cross_attention_cache,
                    training=training,
                )
                return output

            x = self._residual(
                self.cross_attention_add_norm, x, attend_source, training
            )
        x = self._residual(
            self.feed_forward_add_norm,
            x,
            lambda h: self.feed_forward(h, training=training),
            training,
        )
        return x if cache is None else (x, new_cache)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"cross_attention": self.cross_attention})
        return config
