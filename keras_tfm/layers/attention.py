"""Multi-head attention with a fixed-shape key/value cache."""

import keras
import numpy as np
from keras import ops

from keras_tfm import _backend, masks
from keras_tfm._validation import (
    check_initializer,
    check_positive_int,
    check_rank,
    check_rate,
    clone_initializer,
    dtype_policy_config,
    shapes_compatible,
)
from keras_tfm.layers import _attention_ops as attention_ops
from keras_tfm.layers._attention_cache import KeyValueCache
from keras_tfm.layers._attention_ops import (
    static_dim,
    where_rows,
)
from keras_tfm.layers._projections import project, project_together
from keras_tfm.layers.add_norm import RMSNormalization
from keras_tfm.layers.position import RotaryEmbedding


@keras.saving.register_keras_serializable(package="keras_tfm")
class MultiHeadAttention(KeyValueCache, keras.layers.Layer):
    """Multi-head scaled dot-product attention with a key/value cache.

    Queries, keys and values are projected by `Dense` layers to
    `num_heads * key_dim` (`num_heads * value_dim` for values), split into
    heads `(batch, seq, heads, head_dim)`, combined with
    `softmax(q k^T / sqrt(key_dim)) v`, merged back and projected to
    `output_dim`. The kernels are plain `(dim, heads * head_dim)` matrices,
    so weights copy to `torch.nn.MultiheadAttention` (`in_proj_weight` is
    the transposed query, key and value kernels stacked) and from the
    `(dim, heads, head_dim)` `EinsumDense` kernels of
    `keras.layers.MultiHeadAttention` and keras-hub by a reshape.

    Keras's constructor arguments and positional call order (`query, value,
    key, query_mask, value_mask, key_mask, attention_mask, ...`) are taken,
    so code for `keras.layers.MultiHeadAttention` runs unchanged; the
    arguments of its own (cache, rotary, grouped heads) come after them.

    The attention itself runs through `keras.ops.dot_product_attention` (a
    fused kernel where the backend has one; a causal mask alone uses its
    `is_causal` kernel) unless attention dropout is active, the scores are
    requested, a `cache` is given (decoding reads the cache in its own
    layout) or `value_dim != key_dim` (JAX's kernel needs equal head
    sizes); then an explicit path computes the logits, a float32 softmax,
    dropout and the weighted sum. The softmax is in float32 under mixed
    precision on both paths.

    Masks follow `keras_tfm.masks`: boolean, `True` means "may attend". The
    mask used is the AND of `attention_mask`, the query's padding mask
    (`query_mask`, as Keras: a padded query attends to nothing), the key
    side's padding mask (the Keras mask of `key` when `key` is given, else
    the Keras mask of `value`) and, with `use_causal_mask=True`, the causal
    mask. Masked positions are inert:

    - a query row with no allowed key (a padded query among them) gives
      exactly zero before the output projection (so the layer returns the
      output bias there; Keras's layer returns the mean of the values),
      and zero attention scores, on every path and in every dtype;
    - keys and values at positions that no query may attend to, and
      queries of rows with no allowed key, are replaced by zeros (with
      `where`, not a product) before use, so NaN or inf in padded positions
      never reach real outputs.

    Args:
        num_heads: number of attention heads.
        key_dim: size of each head for queries and keys.
        value_dim: size of each head for values. Defaults to `key_dim`.
        dropout: dropout rate on the attention probabilities, in `[0, 1)`.
        use_bias: whether the projections have biases. Defaults to `True`.
        output_dim: size of the output. Defaults to the query's last
            dimension.
        output_shape: Keras's name for `output_dim` (an int or a 1-tuple);
            one setting, stored and serialized as `output_dim`.
        attention_axes: as in Keras: None or the sequence axis (1); other
            axes are refused.
        position: `"none"` or `"rotary"`: rotary position embedding of the
            projected queries (from position `cache_index`, else 0) and
            keys (from position 0). Sinusoidal and learned positions are
            added by `TokenAndPositionEmbedding` instead.
        max_wavelength: the longest rotary wavelength (Hugging Face's
            `rope_theta`). Defaults to `10000`.
        num_key_value_heads: number of key/value heads (grouped-query
            attention); must divide `num_heads`. Query head `h` uses
            key/value head `h // (num_heads // num_key_value_heads)`, the
            order of transformers' `repeat_kv`. Defaults to `num_heads`.
        output_use_bias: whether the output projection has a bias.
            Defaults to `use_bias` (Qwen2: `use_bias=True,
            output_use_bias=False`).
        query_key_norm: RMS-normalize each query and key head over
            `key_dim` (sublayers `query_norm`, `key_norm`, weight `scale`
            `(key_dim,)`) after the projection and before rotary, as
            Qwen3. Defaults to `False`.
        query_key_norm_epsilon: epsilon of that normalization.
        sliding_window: optional positive int: query at absolute position
            `q` sees only keys at positions `k > q - sliding_window`
            (Mistral's window; AND-ed with every other mask, with and
            without a cache).
        rope_scaling: optional Hugging Face `rope_scaling` dict for
            `position="rotary"`: see `RotaryEmbedding(scaling=...)`.
        kernel_initializer: initializer of the projection kernels.
        bias_initializer: initializer of the projection biases.
        kernel_regularizer, bias_regularizer, activity_regularizer,
            kernel_constraint, bias_constraint: as in Keras, for each
            projection.
        seed: optional int seed of the attention dropout.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        query: float tensor `(batch, query_len, dim)`.
        value: float tensor `(batch, key_len, dim_v)`. Ignored when a cross
            attention `cache` is given (`cache_index=None`).
        key: optional float tensor `(batch, key_len, dim_k)`. Defaults to
            `value`.
        query_mask, value_mask, key_mask: padding masks `(batch, seq)`,
            filled in by Keras from the inputs' Keras masks. A padded query
            attends to nothing (see above); the output keeps `query`'s
            Keras mask.
        attention_mask: optional boolean `(batch, query_len, key_len)`;
            `batch` and `query_len` may be 1 to broadcast (a key padding
            mask `(batch, 1, key_len)` costs no `(query, key)` tensor).
            `key_len` is the cache length when a cache is used.
        return_attention_scores: whether to also return the attention
            probabilities `(batch, heads, query_len, key_len)`.
        training: whether attention dropout is active.
        use_causal_mask: whether query `t` may only see keys `<= t` (keys
            `<= cache_index + t` when decoding with a cache).
        cache: optional key/value cache `(batch, 2, num_key_value_heads,
            max_length, key_dim)`: index 0 holds keys (rotated when
            `position` is `"rotary"`), index 1 values; see `compute_cache` and
            `empty_cache`. Needs `value_dim == key_dim`; takes the explicit
            path.
        cache_index: position of the first query when decoding with a self
            attention cache. The projected `key`/`value` of the current
            step(s) are written into `cache` at this index and the queries
            attend over the whole cache; slots past the current step hold
            zeros or stale keys, so the caller must pass
            `use_causal_mask=True` (or an equivalent `attention_mask`). The
            Keras padding masks of `key`/`value` cover only the current
            steps and are not used in this mode: pass key padding over the
            whole cache as `attention_mask` `(batch, 1, max_length)`. With
            `cache_index=None` the cache is a cross-attention cache and is
            used as is; `value` is a placeholder then and its Keras mask is
            not used either: pass the source's padding as
            `attention_mask` `(batch, 1, source_len)`.
        positions: optional int `(batch, query_len)` positions of the
            queries for `position="rotary"` (packed rows, where positions
            restart in each segment); instead of `0, 1, ...`.
        key_positions: the same for the keys; defaults to `positions` in
            self-attention (the key tensor is the query tensor).

    Returns:
        The output `(batch, query_len, output_dim)`; with
        `return_attention_scores=True` the tuple `(output, scores)`; with a
        `cache`, the updated cache is appended: `(output, cache)` or
        `(output, scores, cache)`. An empty batch or sequence gives an
        empty output.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(2, 5, 16).astype("float32")
    >>> keys = np.array([[True] * 5, [True] * 3 + [False] * 2])
    >>> mask = keys[:, None, :].repeat(5, axis=1)
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=8)
    >>> tuple(layer(x, x, attention_mask=mask).shape)
    (2, 5, 16)
    >>> cache = layer.empty_cache(batch_size=2, max_length=5)
    >>> y, cache = layer(x[:, :1], x[:, :1], cache=cache, cache_index=0,
    ...                  use_causal_mask=True)
    >>> tuple(cache.shape)
    (2, 2, 2, 5, 8)

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.2;
        Su et al., "RoFormer: Enhanced Transformer with Rotary Position
        Embedding", 2021.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_dim=None,
        position="none",
        max_wavelength=10000,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        attention_axes=None,
        num_key_value_heads=None,
        output_use_bias=None,
        query_key_norm=False,
        query_key_norm_epsilon=1e-6,
        sliding_window=None,
        rope_scaling=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        attention_ops.check_arguments(
            num_heads,
            key_dim,
            value_dim,
            use_bias,
            attention_axes,
            position,
            max_wavelength,
            num_key_value_heads,
            output_use_bias,
            query_key_norm,
            query_key_norm_epsilon,
            sliding_window,
            rope_scaling,
            seed,
        )
        dropout = check_rate("dropout", dropout)
        check_positive_int("output_dim", output_dim, allow_none=True)
        # Keras's name for `output_dim`, accepted and stored as it.
        output_dim = attention_ops.output_dim_from(
            output_dim, kwargs.pop("output_shape", None)
        )
        kernel_initializer = check_initializer(
            "kernel_initializer", kernel_initializer
        )
        bias_initializer = check_initializer(
            "bias_initializer", bias_initializer
        )
        dense_arguments = attention_ops.dense_arguments(
            kernel_regularizer,
            bias_regularizer,
            activity_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        super().__init__(**kwargs)
        self._num_heads = num_heads
        self._key_dim = key_dim
        self._value_dim = key_dim if value_dim is None else value_dim
        self._dropout = dropout
        self._use_bias = use_bias
        self._attention_axes = attention_axes
        self.output_dim = output_dim
        self.position = position
        self.max_wavelength = max_wavelength
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.num_key_value_heads = num_key_value_heads
        self.output_use_bias = output_use_bias
        self.query_key_norm = query_key_norm
        self.query_key_norm_epsilon = query_key_norm_epsilon
        self.sliding_window = sliding_window
        self.rope_scaling = None if rope_scaling is None else dict(rope_scaling)
        # Not `self.activity_regularizer`, which the base layer would apply
        # to this layer's output too: Keras gives it to the projections.
        self._dense_arguments = dense_arguments
        self.seed = seed
        self.supports_masking = True
        self._kv_heads = (
            num_heads if num_key_value_heads is None else num_key_value_heads
        )
        # Query heads per key/value head.
        self._group = num_heads // self._kv_heads
        # The blocks choose their masks themselves (the key side's padding
        # only) and turn off the query mask that Keras fills in.
        self._use_query_mask = True

    # Read-only, as in `keras.layers.MultiHeadAttention`.
    num_heads = property(lambda self: self._num_heads)
    key_dim = property(lambda self: self._key_dim)
    value_dim = property(lambda self: self._value_dim)
    dropout = property(lambda self: self._dropout)
    use_bias = property(lambda self: self._use_bias)
    attention_axes = property(lambda self: self._attention_axes)

    def _dense(self, units, name, use_bias=None):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias if use_bias is None else use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            **self._dense_arguments,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape, key_shape=None):
        if key_shape is None:
            key_shape = value_shape
        attention_ops.check_shapes(self, query_shape, value_shape, key_shape)
        heads, kv_heads = self.num_heads, self._kv_heads
        self.query_dense = self._dense(heads * self.key_dim, "query_dense")
        self.query_dense.build(query_shape)
        self.key_dense = self._dense(kv_heads * self.key_dim, "key_dense")
        self.key_dense.build(key_shape)
        self.value_dense = self._dense(
            kv_heads * self._value_dim, "value_dense"
        )
        self.value_dense.build(value_shape)
        output_dim = self.output_dim or query_shape[-1]
        self.output_dense = self._dense(
            output_dim, "output_dense", use_bias=self.output_use_bias
        )
        self.output_dense.build(
            tuple(query_shape[:-1]) + (heads * self._value_dim,)
        )
        if self.query_key_norm:
            for name in ("query_norm", "key_norm"):
                norm = RMSNormalization(
                    epsilon=self.query_key_norm_epsilon,
                    dtype=self.dtype_policy,
                    name=name,
                )
                norm.build((None, None, None, self.key_dim))
                setattr(self, name, norm)
        if self.position == "rotary":
            self.rotary_embedding = RotaryEmbedding(
                self.max_wavelength,
                scaling=self.rope_scaling,
                dtype=self.dtype_policy,
                name="rotary_embedding",
            )
            self.rotary_embedding.build((None, None, heads, self.key_dim))
        self.attention_dropout = keras.layers.Dropout(
            self.dropout,
            seed=self.seed,
            dtype=self.dtype_policy,
            name="attention_dropout",
        )
        self.built = True

    def _check_inputs(self, attention_mask=None, cache=None, **tensors):
        for name, tensor in tensors.items():
            if tensor is None:
                continue
            check_rank(self, name, tensor.shape, (3,))
            attention_ops.check_float(self, name, tensor)
        key, value = tensors.get("key"), tensors.get("value")
        if key is not None and value is not None:
            attention_ops.check_shapes(
                self, (None,) * 3, value.shape, key.shape
            )
        if cache is not None:
            self._check_cache(cache)
        if attention_mask is None:
            return
        query = tensors["query"]
        if cache is not None:
            key_length = static_dim(cache, 3)
        else:
            key_length = static_dim(value if key is None else key, 1)
        expected = (static_dim(query, 0), static_dim(query, 1), key_length)
        mask_shape = tuple(attention_mask.shape)
        if not shapes_compatible(mask_shape, expected, broadcast_axes=(0, 1)):
            raise ValueError(
                "`attention_mask` must have shape (batch, query_len, "
                f"key_len) = {expected} (batch and query_len may be 1). "
                f"Received: attention_mask with shape {mask_shape}, query "
                f"with shape {tuple(query.shape)}"
            )

    def _project(self, pairs):
        """The heads `(batch, seq, heads, head_dim)` of `(dense, x)` pairs.

        Each product is one `(tokens, dim)` matmul (see FeedForward.call);
        the denses of one tensor go through `project_together` (one joined
        product while a decoding loop traces).
        """
        heads = [None] * len(pairs)
        for i, (_, x) in enumerate(pairs):
            if heads[i] is not None:
                continue
            group = [j for j, pair in enumerate(pairs) if pair[1] is x]
            shape = ops.shape(x)
            outputs = project_together(
                [pairs[j][0] for j in group],
                ops.reshape(x, (-1, shape[-1])),
            )
            for j, output in zip(group, outputs, strict=True):
                dense = pairs[j][0]
                size = (
                    self._value_dim
                    if dense is self.value_dense
                    else self.key_dim
                )
                heads[j] = ops.reshape(
                    output, (shape[0], shape[1], dense.units // size, size)
                )
        return heads

    def _rotated(self, heads, norm, start_index=0, positions=None):
        """Projected query or key heads, normed by the sublayer `norm`
        (`"query_norm"` or `"key_norm"`) and rotated, as the model says."""
        if self.query_key_norm:
            heads = getattr(self, norm)(heads)
        if self.position == "rotary":
            heads = self.rotary_embedding(
                heads, start_index=start_index, positions=positions
            )
        return heads

    def _padding_masks(self, key, cache, query_mask, value_mask, key_mask):
        """The query's and the key side's padding masks that apply.

        The key side's padding is `key`'s mask when `key` was given, else
        `value`'s. A cache's Keras masks cover only the new steps (self-
        attention) or a placeholder `value` (cross-attention): unused.
        """
        key_padding = None
        if cache is None:
            key_padding = value_mask if key is None else key_mask
        return (query_mask if self._use_query_mask else None), key_padding

    def _heads(
        self,
        query,
        value,
        key,
        cache,
        cache_index,
        positions,
        key_positions,
        prefix=None,
    ):
        """Project the heads; return them and the (updated) cache.

        Without a cache keys and values are `(batch, key_len, kv_heads,
        dim)`; with one they are the cache's `(batch, kv_heads, max_length,
        dim)`, or its first `prefix` slots (see `_cache_prefix`).
        """
        key_positions = attention_ops.check_positions(
            self.position,
            query,
            value,
            key,
            cache,
            cache_index,
            positions,
            key_positions,
        )
        key = value if key is None else key
        start_index = 0 if cache_index is None else cache_index
        if cache is not None and cache_index is None:
            # Cross-attention over a computed cache: the query alone.
            (query_heads,) = self._project([(self.query_dense, query)])
            query_heads = self._rotated(query_heads, "query_norm", start_index)
        else:
            query_heads, key_heads, value_heads = self._project(
                [
                    (self.query_dense, query),
                    (self.key_dense, key),
                    (self.value_dense, value),
                ]
            )
            query_heads = self._rotated(
                query_heads, "query_norm", start_index, positions
            )
        if cache is None:
            key_heads = self._rotated(
                key_heads, "key_norm", positions=key_positions
            )
            return attention_ops.Heads(
                query_heads, key_heads, value_heads, "bsnh"
            ), None
        if cache_index is not None:
            # The new steps `(batch, 2, kv_heads, steps, key_dim)` are written
            # at `cache_index` with one update of the whole cache, which
            # compiled loops do in place.
            key_heads = self._rotated(key_heads, "key_norm", cache_index)
            update = ops.stack(
                [
                    ops.transpose(key_heads, (0, 2, 1, 3)),
                    ops.transpose(value_heads, (0, 2, 1, 3)),
                ],
                axis=1,
            )
            cache = _backend.slice_update(
                cache, [0, 0, 0, cache_index, 0], ops.cast(update, cache.dtype)
            )
        keys, values = cache[:, 0], cache[:, 1]
        if prefix is not None:
            keys, values = keys[:, :, :prefix], values[:, :, :prefix]
        return attention_ops.Heads(
            query_heads,
            ops.cast(keys, self.compute_dtype),
            ops.cast(values, self.compute_dtype),
            "bnsh",
        ), cache

    def _cache_prefix(self, cache, cache_index):
        """The leading slots of a self-attention cache this step reads,
        when a decoding loop's stretch is traced below a position (see
        `_backend.reading_cache_prefix`); None: every slot."""
        prefix = _backend.cache_prefix()
        if cache is None or cache_index is None or prefix is None:
            return None
        length = static_dim(cache, 3)
        if length is None:
            return None
        return prefix if prefix < length else None

    def _explicit_attention(self, heads, mask, is_causal, has_key, dropout):
        """Logits, float32 softmax, dropout and the weighted sum: the output
        `(batch, query_len, heads, value_dim)` and the scores."""
        query, key, value, layout = heads
        if is_causal:
            mask = ops.expand_dims(masks.causal_mask(ops.shape(query)[1]), 0)
        query = query * ops.cast(1.0 / np.sqrt(self.key_dim), query.dtype)
        # (batch, heads, query_len, key_len)
        logits = attention_ops.logits(query, key, layout, self._kv_heads)
        scores = attention_ops.probabilities(logits, mask)
        weights = scores
        if dropout:
            weights = self.attention_dropout(weights, training=True)
        weights = ops.cast(weights, value.dtype)
        output = attention_ops.weighted_sum(
            weights, value, layout, self._kv_heads
        )
        if has_key is not None:
            # Rows with no key get zero scores. Their output is zeroed by
            # `call`, so a training graph that does not return the scores
            # drops this (batch, heads, query, key) select.
            keep = ops.expand_dims(ops.expand_dims(has_key, 1), -1)
            scores = ops.where(keep, scores, ops.zeros_like(scores))
        return output, ops.cast(scores, self.compute_dtype)

    def _fused_attention(self, heads, mask, is_causal):
        """`keras.ops.dot_product_attention`: the output `(batch,
        query_len, heads, value_dim)`."""
        query, key, value, _ = heads
        dtype = query.dtype
        if _backend.float16_unsupported(dtype):
            query, key, value = (
                ops.cast(t, "float32") for t in (query, key, value)
            )
        if self._group > 1:
            # (batch, key_len, heads, dim), in `repeat_kv`'s order.
            key = ops.repeat(key, self._group, axis=2)
            value = ops.repeat(value, self._group, axis=2)
        output = ops.dot_product_attention(
            query,
            key,
            value,
            mask=None if mask is None else ops.expand_dims(mask, 1),
            scale=1.0 / float(np.sqrt(self.key_dim)),
            is_causal=is_causal,
            flash_attention=_backend.flash_attention(),
        )
        return ops.cast(output, dtype)

    def _merge_heads(self, output):
        """`(batch, query_len, heads, value_dim)` through the output
        projection to `(batch, query_len, output_dim)`."""
        shape = ops.shape(output)
        # (batch * query_len, heads * value_dim): one matmul over tokens.
        output = project(
            self.output_dense,
            ops.reshape(output, (-1, self.num_heads * self._value_dim)),
        )
        # Sizes, not -1: an empty batch or sequence has no size to infer.
        return ops.reshape(
            output, (shape[0], shape[1], self.output_dense.units)
        )

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        positions=None,
        key_positions=None,
    ):
        self._check_inputs(
            attention_mask, cache, query=query, value=value, key=key
        )
        query_mask, key_padding = self._padding_masks(
            key, cache, query_mask, value_mask, key_mask
        )
        # The cache slots this step reads (None: all), keys and mask alike.
        prefix = self._cache_prefix(cache, cache_index)
        heads, cache = self._heads(
            query,
            value,
            key,
            cache,
            cache_index,
            positions,
            key_positions,
            prefix,
        )
        if attention_mask is not None and prefix is not None:
            attention_mask = attention_mask[..., :prefix]
        mask, is_causal = attention_ops.merged_mask(
            query,
            heads,
            attention_mask,
            query_mask,
            key_padding,
            use_causal_mask,
            0 if cache_index is None else cache_index,
            self.sliding_window,
        )
        has_key = None
        if mask is not None:
            mask, has_key, heads = attention_ops.inert(
                mask, heads, keys=cache is None
            )

        dropout = self.dropout > 0 and bool(training)
        scores = None
        if (
            dropout
            or return_attention_scores
            or cache is not None
            or self._value_dim != self.key_dim
        ):
            output, scores = self._explicit_attention(
                heads, mask, is_causal, has_key, dropout
            )
        else:
            output = self._fused_attention(heads, mask, is_causal)
        if has_key is not None:
            output = where_rows(has_key, output)
        output = self._merge_heads(output)

        results = (output,)
        if return_attention_scores:
            results += (scores,)
        if cache is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    def compute_mask(self, query, mask=None):
        return mask

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        attention_ops.check_shapes(self, query_shape, value_shape, key_shape)
        output_dim = self.output_dim or query_shape[-1]
        return tuple(query_shape[:-1]) + (output_dim,)

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        positions=None,
        key_positions=None,
    ):
        self._check_inputs(
            attention_mask, cache, query=query, value=value, key=key
        )
        output = keras.KerasTensor(
            self.compute_output_shape(query.shape, value.shape),
            dtype=self.compute_dtype,
        )
        results = (output,)
        if return_attention_scores:
            if cache is not None:
                key_length = cache.shape[3]
            else:
                key_length = (value if key is None else key).shape[1]
            scores_shape = (
                query.shape[0],
                self.num_heads,
                query.shape[1],
                key_length,
            )
            results += (
                keras.KerasTensor(scores_shape, dtype=self.compute_dtype),
            )
        if cache is not None:
            results += (keras.KerasTensor(cache.shape, dtype=cache.dtype),)
        return results[0] if len(results) == 1 else results

    def get_config(self):
        base = super().get_config()
        if self.built:
            # After model.quantize(...), the Dense layers' policies.
            base["dtype"] = dtype_policy_config(self, self._dense_layers())
        config = {
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "output_dim": self.output_dim,
            "attention_axes": self.attention_axes,
            "position": self.position,
            "max_wavelength": self.max_wavelength,
            "num_key_value_heads": self.num_key_value_heads,
            "output_use_bias": self.output_use_bias,
            "query_key_norm": self.query_key_norm,
            "query_key_norm_epsilon": self.query_key_norm_epsilon,
            "sliding_window": self.sliding_window,
            "rope_scaling": self.rope_scaling,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            **attention_ops.serialize_dense_arguments(self._dense_arguments),
            "seed": self.seed,
        }
        return {**base, **config}

    def _dense_layers(self):
        return [
            self.query_dense,
            self.key_dense,
            self.value_dense,
            self.output_dense,
        ]
