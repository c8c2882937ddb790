"""Transformer decoder block."""

import keras
from keras import ops

from keras_tfm import masks
from keras_tfm._masking import ReadMask
from keras_tfm._validation import check_bool, check_rank
from keras_tfm.layers._attention_ops import check_cache_index
from keras_tfm.layers._block import TransformerBlock, split_attention_results


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
    `empty_cache(batch, max_length)`) and `cache_index`, and a
    `cross_attention_cache` from `compute_cross_attention_cache` so the
    encoder outputs are projected once; the block then returns
    `(outputs, new_cache)`. Masks are the same as without a cache: the
    causal mask at the cache offset, AND an explicit `decoder_padding_mask`
    over the cache's positions when given, and the source padding carried
    by the cross-attention cache.

    Args:
        num_heads: number of attention heads (keyword-only, as
            `intermediate_dim`); must divide the model width unless
            `head_dim` is given.
        intermediate_dim: width of the feed-forward hidden layer.
        dropout: dropout rate of the residual branches and the attention
            probabilities, and of the feed-forward hidden layer unless
            `activation_dropout` is given.
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
        head_dim: size of each attention head (queries, keys, values).
            Defaults to `model_dim // num_heads`; when given, `num_heads`
            need not divide the model width (Qwen3).
        num_key_value_heads: key/value heads of grouped-query attention;
            must divide `num_heads`. Defaults to `num_heads`.
        attention_bias: whether the query, key and value projections have
            biases.
        attention_output_bias: whether the attention output projection
            has a bias. Defaults to `attention_bias` (Qwen2: `True` and
            `False`).
        feed_forward_bias: whether the feed-forward dense layers have
            biases.
        query_key_norm: RMS-normalize each query and key head (Qwen3),
            with epsilon `layer_norm_epsilon`.
        sliding_window: optional window of the self-attention: a query at
            position `q` sees keys at positions `> q - sliding_window`
            (Mistral).
        rope_scaling: optional Hugging Face `rope_scaling` dict for
            `position="rotary"` (`"linear"`, `"llama3"`); see
            `RotaryEmbedding(scaling=...)`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(batch, target_len, model_dim)`.
        encoder_outputs: float tensor `(batch, source_len, model_dim)`;
            required when `cross_attention=True` (unless a
            `cross_attention_cache` is given).
        decoder_padding_mask: optional boolean `(batch, target_len)`.
            Defaults to the Keras mask of `inputs`; when given, it replaces
            that mask (it is not combined with it). With a `cache` it
            covers the cache's positions, `(batch, max_length)`, and the
            Keras mask of `inputs` (the new steps only) is not used.
        encoder_padding_mask: optional boolean `(batch, source_len)`.
            Defaults to the Keras mask of `encoder_outputs`, or with a
            `cross_attention_cache` to the mask that the cache carries.
        cache: optional self-attention cache `(batch, 2,
            num_key_value_heads, max_length, head_dim)`.
        cache_index: position of the first query in the cache.
        cross_attention_cache: the pair `(cache, encoder_padding_mask)`
            from `compute_cross_attention_cache` (or the cache alone,
            `(batch, 2, heads, source_len, head_dim)`, with the mask passed
            as `encoder_padding_mask`).
        segment_ids: optional int `(batch, target_len)` for packed rows
            (`0` padding, `1, 2, ...` the sequences of a row): a token
            attends only to earlier tokens of its own segment; replaces
            the decoder padding mask. Not with a `cache`.
        encoder_segment_ids: optional int `(batch, source_len)`: with
            `segment_ids`, cross-attention sees only the source segment
            with the same id (a pair shares its id on both sides).
        positions: optional int `(batch, target_len)` per-token positions
            for rotary self-attention (packed rows).
        return_attention_scores: whether to also return the attention
            probabilities `(batch, heads, target_len, key_len)` of the
            self-attention and, with `cross_attention=True`, of the
            cross-attention.
        training: whether dropout is active.
        mask, inputs_mask, encoder_outputs_mask: Keras masks, filled in by
            Keras.

    Returns:
        Tensor `(batch, target_len, model_dim)` carrying the input's Keras
        mask. With `return_attention_scores=True` the scores follow it
        (`(outputs, self_scores)`, or `(outputs, self_scores,
        cross_scores)` with cross-attention); with a `cache` the new cache
        comes last.

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
        cross_attention=True,
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
        check_bool("cross_attention", cross_attention)
        super().__init__(
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            activation=activation,
            norm_first=norm_first,
            layer_norm_epsilon=layer_norm_epsilon,
            gated=gated,
            normalization=normalization,
            position=position,
            max_wavelength=max_wavelength,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            activation_dropout=activation_dropout,
            head_dim=head_dim,
            num_key_value_heads=num_key_value_heads,
            attention_bias=attention_bias,
            attention_output_bias=attention_output_bias,
            feed_forward_bias=feed_forward_bias,
            query_key_norm=query_key_norm,
            sliding_window=sliding_window,
            rope_scaling=rope_scaling,
            **kwargs,
        )
        self.cross_attention = cross_attention

    def build(self, inputs_shape, encoder_outputs_shape=None):
        input_shape = inputs_shape
        model_dim = self._check_inputs("inputs", input_shape)
        self.self_attention = self._attention(
            "self_attention",
            model_dim,
            self.position,
            input_shape,
            input_shape,
            sliding_window=self.sliding_window,
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
            self._read_mask = ReadMask(
                dtype=self.dtype_policy, name="read_mask"
            )
            self._read_mask.build(encoder_outputs_shape)
        self.feed_forward = self._feed_forward(input_shape)
        self.feed_forward_add_norm = self._add_norm(
            "feed_forward_add_norm", input_shape
        )
        self.built = True

    def empty_cache(self, batch_size, max_length):
        """Return a zero self-attention cache `(batch_size, 2,
        num_key_value_heads, max_length, head_dim)` for `call(...,
        cache=, cache_index=)`."""
        return self.self_attention.empty_cache(batch_size, max_length)

    def compute_cross_attention_cache(
        self, encoder_outputs, encoder_padding_mask=None
    ):
        """Project the encoder outputs once for every decoding step.

        Args:
            encoder_outputs: float tensor `(batch, source_len, model_dim)`.
            encoder_padding_mask: optional boolean `(batch, source_len)`.
                Defaults to the Keras mask of `encoder_outputs` (all real
                when it has none).

        Returns:
            The pair `(cache, encoder_padding_mask)` to pass as
            `cross_attention_cache`: the projected keys and values
            `(batch, 2, heads, source_len, head_dim)` and the source's
            padding mask, so the cached step masks the source exactly as
            the direct call does.
        """
        if not self.cross_attention:
            raise ValueError(
                "This block has no cross-attention. Received: "
                "cross_attention=False"
            )
        if encoder_padding_mask is None:
            encoder_padding_mask = self._read_mask(encoder_outputs)
        else:
            self._check_padding_mask(
                "encoder_padding_mask",
                encoder_padding_mask,
                encoder_outputs.shape[1],
            )
        cache = self.cross_attention_layer.compute_cache(encoder_outputs)
        return cache, ops.cast(encoder_padding_mask, "bool")

    def call(
        self,
        inputs,
        encoder_outputs=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        cache=None,
        cache_index=None,
        cross_attention_cache=None,
        segment_ids=None,
        encoder_segment_ids=None,
        positions=None,
        return_attention_scores=False,
        training=None,
        mask=None,
        inputs_mask=None,
        encoder_outputs_mask=None,
    ):
        self._check_call(
            inputs,
            encoder_outputs,
            cache,
            cache_index,
            cross_attention_cache,
            segment_ids,
            encoder_segment_ids,
        )
        self_padding, self_mask = self._self_attention_masks(
            inputs,
            decoder_padding_mask,
            cache,
            segment_ids,
            mask if mask is not None else inputs_mask,
        )

        residual = inputs
        x = self.self_attention_add_norm.sublayer_input(inputs)
        attended = self.self_attention(
            x,
            x,
            value_mask=self_padding,
            attention_mask=self_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            use_causal_mask=True,
            cache=cache,
            cache_index=cache_index,
            **self._rotary_positions(positions),
        )
        x, self_scores, cache = split_attention_results(
            attended, return_attention_scores, cache is not None
        )
        x = self.self_attention_add_norm([residual, x], training=training)

        cross_scores = None
        if self.cross_attention:
            x, cross_scores = self._attend_source(
                x,
                encoder_outputs,
                encoder_padding_mask,
                cross_attention_cache,
                (segment_ids, encoder_segment_ids),
                encoder_outputs_mask,
                return_attention_scores,
                training,
            )
        residual = x
        x = self.feed_forward_add_norm.sublayer_input(x)
        x = self.feed_forward(x, training=training)
        x = self.feed_forward_add_norm([residual, x], training=training)

        results = (x,)
        if return_attention_scores:
            results += (self_scores,)
            results += (cross_scores,) if self.cross_attention else ()
        if cache is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    def _attend_source(
        self,
        x,
        encoder_outputs,
        encoder_padding_mask,
        cross_attention_cache,
        segment_ids,
        encoder_outputs_mask,
        return_attention_scores,
        training,
    ):
        """The cross-attention sublayer with its residual: the new `x` and
        the scores (`None` unless asked for)."""
        source_cache, source_padding, source_mask = self._cross_attention_masks(
            encoder_outputs,
            encoder_padding_mask,
            cross_attention_cache,
            *segment_ids,
            encoder_outputs_mask,
        )
        residual = x
        x = self.cross_attention_add_norm.sublayer_input(x)
        attended = self.cross_attention_layer(
            x,
            # With a cache, `value` is a placeholder.
            x if source_cache is not None else encoder_outputs,
            value_mask=source_padding,
            attention_mask=source_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            cache=source_cache,
        )
        # The cross-attention cache does not change: it is dropped.
        x, scores, _ = split_attention_results(
            attended, return_attention_scores, source_cache is not None
        )
        return (
            self.cross_attention_add_norm([residual, x], training=training),
            scores,
        )

    def _check_call(
        self,
        inputs,
        encoder_outputs,
        cache,
        cache_index,
        cross_attention_cache,
        segment_ids,
        encoder_segment_ids,
    ):
        """The checks of `call`'s arguments, before any mask is read."""
        self._check_inputs("inputs", inputs.shape)
        has_source = (
            encoder_outputs is not None or cross_attention_cache is not None
        )
        if self.cross_attention and not has_source:
            raise ValueError(
                "A decoder block with cross_attention=True needs "
                "`encoder_outputs`. Received: encoder_outputs=None"
            )
        if not self.cross_attention and has_source:
            raise ValueError(
                "A decoder block with cross_attention=False takes no "
                "`encoder_outputs` or `cross_attention_cache`. Received: "
                "encoder_outputs or cross_attention_cache"
            )
        if encoder_outputs is not None:
            self._check_inputs("encoder_outputs", encoder_outputs.shape)
            if encoder_outputs.shape[-1] != inputs.shape[-1]:
                raise ValueError(
                    "`encoder_outputs` must have the decoder's width "
                    f"{inputs.shape[-1]}. Received: encoder_outputs with "
                    f"shape {tuple(encoder_outputs.shape)}"
                )
        check_cache_index(cache, cache_index)
        if cache is not None and cache_index is None:
            raise ValueError(
                "A self-attention `cache` needs `cache_index`, the position "
                "of the first new step. Received: cache_index=None"
            )
        if segment_ids is None and encoder_segment_ids is None:
            return
        if cache is not None or cross_attention_cache is not None:
            raise ValueError(
                "`segment_ids` are for packed rows without a cache. "
                "Received: segment_ids with a cache"
            )
        if segment_ids is None or (
            self.cross_attention and encoder_segment_ids is None
        ):
            raise ValueError(
                "Packed rows need `segment_ids` and, with "
                "cross-attention, `encoder_segment_ids`. Received: "
                f"segment_ids={_given(segment_ids)}, "
                f"encoder_segment_ids={_given(encoder_segment_ids)}"
            )

    def _self_attention_masks(
        self, inputs, decoder_padding_mask, cache, segment_ids, mask
    ):
        """The self-attention's key padding and attention masks (the causal
        mask is added by the attention layer)."""
        if segment_ids is not None:
            return self._segments(segment_ids, inputs, None, causal=True)
        if cache is None:
            if decoder_padding_mask is None:
                return mask, None
            self._check_padding_mask(
                "decoder_padding_mask", decoder_padding_mask, inputs.shape[1]
            )
            return decoder_padding_mask, None
        if decoder_padding_mask is None:
            return None, None
        # Over the cache's positions, as a (batch, 1, max_length) mask.
        self._check_padding_mask(
            "decoder_padding_mask", decoder_padding_mask, cache.shape[3]
        )
        return None, masks.attention_mask(
            key_mask=decoder_padding_mask, query_length=1
        )

    def _cross_attention_masks(
        self,
        encoder_outputs,
        encoder_padding_mask,
        cross_attention_cache,
        segment_ids,
        encoder_segment_ids,
        encoder_outputs_mask,
    ):
        """The cross-attention's cache, key padding and attention masks."""
        if encoder_segment_ids is not None:
            self._check_padding_mask(
                "encoder_segment_ids",
                encoder_segment_ids,
                encoder_outputs.shape[1],
            )
            return (
                None,
                masks.padding_mask(encoder_segment_ids),
                masks.segment_mask(segment_ids, encoder_segment_ids),
            )
        source_cache = cross_attention_cache
        if isinstance(source_cache, (tuple, list)):
            # The pair from `compute_cross_attention_cache`.
            source_cache, carried = source_cache
            if encoder_padding_mask is None:
                encoder_padding_mask = carried
        if encoder_padding_mask is not None and encoder_outputs is not None:
            self._check_padding_mask(
                "encoder_padding_mask",
                encoder_padding_mask,
                encoder_outputs.shape[1],
            )
        if source_cache is None:
            if encoder_padding_mask is None:
                return None, encoder_outputs_mask, None
            return None, encoder_padding_mask, None
        # With a cache the source padding comes as a (batch, 1, source_len)
        # attention mask.
        if encoder_padding_mask is None:
            return source_cache, None, None
        return (
            source_cache,
            None,
            masks.attention_mask(key_mask=encoder_padding_mask, query_length=1),
        )

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape)

    def compute_output_spec(
        self,
        inputs,
        encoder_outputs=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        cache=None,
        cache_index=None,
        cross_attention_cache=None,
        segment_ids=None,
        encoder_segment_ids=None,
        positions=None,
        return_attention_scores=False,
        **kwargs,
    ):
        outputs = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        results = (outputs,)
        if return_attention_scores:
            batch, length = inputs.shape[:2]
            key_length = length if cache is None else cache.shape[3]
            results += (
                keras.KerasTensor(
                    (batch, self.num_heads, length, key_length),
                    dtype=self.compute_dtype,
                ),
            )
            if self.cross_attention:
                if cross_attention_cache is not None:
                    source = cross_attention_cache
                    if isinstance(source, (tuple, list)):
                        source = source[0]
                    source_length = source.shape[3]
                else:
                    source_length = encoder_outputs.shape[1]
                results += (
                    keras.KerasTensor(
                        (batch, self.num_heads, length, source_length),
                        dtype=self.compute_dtype,
                    ),
                )
        if cache is not None:
            results += (keras.KerasTensor(cache.shape, dtype=cache.dtype),)
        return results[0] if len(results) == 1 else results

    def get_config(self):
        config = super().get_config()
        config.update({"cross_attention": self.cross_attention})
        return config


def _given(value):
    return "None" if value is None else "given"
