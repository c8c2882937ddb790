"""Transformer encoder block."""

import keras

from keras_tfm.layers._block import TransformerBlock, split_attention_results


@keras.saving.register_keras_serializable(package="keras_tfm")
class TransformerEncoderBlock(TransformerBlock):
    """Transformer encoder block: self-attention and a feed-forward network.

    Post-norm (the paper's, `norm_first=False`):
    `x = Norm(x + SelfAttention(x)); x = Norm(x + FFN(x))`. Pre-norm
    (`norm_first=True`): `x = x + SelfAttention(Norm(x));
    x = x + FFN(Norm(x))` — stack a final norm after the last block. Every
    residual branch goes through `AddNorm`, with dropout on the sublayer
    output; attention probabilities use the same `dropout`, and so does the
    FFN hidden layer unless `activation_dropout` is given. Self-attention
    uses the padding mask of the keys only, so padding never changes the
    outputs at real positions and a fully padded sequence stays finite.
    The layout matches
    `torch.nn.TransformerEncoderLayer`, so weights copy across.

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
        position: `"none"` or `"rotary"` (rotary embedding of queries and
            keys in self-attention).
        max_wavelength: longest rotary wavelength.
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
        inputs: float tensor `(batch, seq, model_dim)`.
        padding_mask: optional boolean `(batch, seq)`, `False` at padding.
            Defaults to the Keras mask of `inputs`; when given, it replaces
            that mask (it is not combined with it).
        attention_mask: optional boolean `(batch, seq, seq)`, combined with
            the padding mask.
        segment_ids: optional int `(batch, seq)` for packed rows: `1, 2,
            ...` number the sequences of a row, `0` is padding. A token
            attends only within its segment (`keras_tfm.masks.segment_mask`),
            and padding is where the id is `0` (the Keras mask is not used).
        positions: optional int `(batch, seq)` per-token positions for
            rotary attention (restarting in each segment of packed rows).
        return_attention_scores: whether to also return the attention
            probabilities `(batch, heads, seq, seq)` (no dropout on them).
        training: whether dropout is active.
        mask, inputs_mask: the Keras mask of `inputs`, filled in by Keras.

    Returns:
        Tensor `(batch, seq, model_dim)`, carrying the input's Keras mask;
        with `return_attention_scores=True`, the tuple `(outputs, scores)`.

    Example:

    >>> import numpy as np
    >>> block = TransformerEncoderBlock(num_heads=2, intermediate_dim=32)
    >>> x = np.random.rand(2, 5, 16).astype("float32")
    >>> padding = np.array([[True] * 5, [True] * 3 + [False] * 2])
    >>> tuple(block(x, padding_mask=padding).shape)
    (2, 5, 16)

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.1;
        Xiong et al., "On Layer Normalization in the Transformer
        Architecture", 2020 (pre-norm).
    """

    def build(self, input_shape):
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
        self.feed_forward = self._feed_forward(input_shape)
        self.feed_forward_add_norm = self._add_norm(
            "feed_forward_add_norm", input_shape
        )
        self.built = True

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        segment_ids=None,
        positions=None,
        return_attention_scores=False,
        training=None,
        mask=None,
        inputs_mask=None,
    ):
        self._check_inputs("inputs", inputs.shape)
        padding_mask, attention_mask = self._masks(
            inputs,
            padding_mask,
            attention_mask,
            segment_ids,
            mask if mask is not None else inputs_mask,
        )

        residual = inputs
        x = self.self_attention_add_norm.sublayer_input(inputs)
        # The padding mask goes in as the key side's mask: passed
        # explicitly, it replaces the Keras mask `x` may carry.
        attended = self.self_attention(
            x,
            x,
            value_mask=padding_mask,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            **self._rotary_positions(positions),
        )
        x, scores, _ = split_attention_results(
            attended, return_attention_scores, False
        )
        x = self.self_attention_add_norm([residual, x], training=training)

        residual = x
        x = self.feed_forward_add_norm.sublayer_input(x)
        x = self.feed_forward(x, training=training)
        x = self.feed_forward_add_norm([residual, x], training=training)
        return (x, scores) if return_attention_scores else x

    def _masks(self, inputs, padding_mask, attention_mask, segment_ids, mask):
        """The self-attention's key padding and attention masks, from the
        arguments or else from the Keras `mask` of `inputs`."""
        if attention_mask is not None:
            self._check_attention_mask(attention_mask, inputs)
        if segment_ids is not None:
            return self._segments(
                segment_ids, inputs, attention_mask, causal=False
            )
        if padding_mask is None:
            return mask, attention_mask
        self._check_padding_mask("padding_mask", padding_mask, inputs.shape[1])
        return padding_mask, attention_mask

    def compute_output_spec(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        segment_ids=None,
        positions=None,
        return_attention_scores=False,
        **kwargs,
    ):
        outputs = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return outputs
        batch, length = inputs.shape[:2]
        scores = keras.KerasTensor(
            (batch, self.num_heads, length, length), dtype=self.compute_dtype
        )
        return outputs, scores

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape)
