"""Multi-head attention with a fixed-shape key/value cache."""

import keras
import numpy as np
from keras import ops

from keras_tfm import _backend, masks
from keras_tfm._validation import (
    check_bool,
    check_initializer,
    check_positive_int,
    check_positive_number,
    check_rank,
    check_rate,
    clone_initializer,
    dtype_policy_config,
    shapes_compatible,
)
from keras_tfm.layers.add_norm import RMSNormalization
from keras_tfm.layers.position import RotaryEmbedding, check_rope_scaling

POSITIONS = ("none", "rotary")
# Logits of masked keys; finite, so that no `inf - inf` can appear.
_LARGE_NEGATIVE = -0.7 * float(np.finfo("float32").max)


def check_position(position):
    """`position` of attention: "none" or "rotary" (the others are the
    embedding's)."""
    if position not in POSITIONS:
        raise ValueError(
            '`position` must be "none" or "rotary"; sinusoidal and learned '
            "positions are added by `TokenAndPositionEmbedding`. Received: "
            f"position={position!r}"
        )


def _keras_output_shape(output_dim, output_shape):
    """`output_dim` from Keras's `output_shape` argument (an int or a
    1-tuple: the last axis), so code written for
    `keras.layers.MultiHeadAttention` runs unchanged."""
    if output_shape is None:
        return output_dim
    shape = output_shape
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        shape = shape[0]
    if isinstance(shape, bool) or not isinstance(shape, int) or shape < 1:
        raise ValueError(
            "`output_shape` must be a positive int or a 1-tuple (the "
            "output's last axis); keras_tfm attention projects the last "
            f"axis only. Received: output_shape={output_shape!r}"
        )
    if output_dim is not None and output_dim != shape:
        raise ValueError(
            "Pass `output_dim` or Keras's `output_shape`, not both. "
            f"Received: output_dim={output_dim}, output_shape={output_shape!r}"
        )
    return shape


def _check_attention_axes(attention_axes):
    # Keras's default (None) attends over every axis between batch and
    # features; for (batch, seq, dim) inputs that is the sequence axis.
    if attention_axes is None or attention_axes in (1, (1,), [1], -2, (-2,)):
        return
    raise ValueError(
        "`attention_axes` must be None or the sequence axis (1): keras_tfm "
        "attention takes (batch, seq, dim) inputs. Received: "
        f"attention_axes={attention_axes!r}"
    )


def _static_dim(tensor, axis):
    return tuple(tensor.shape)[axis]


def _check_float(layer, name, tensor):
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if "float" not in dtype:
        raise ValueError(
            f"{type(layer).__name__} expects a floating-point `{name}`. "
            f"Received: {name} with dtype={dtype}"
        )


@keras.saving.register_keras_serializable(package="keras_tfm")
class MultiHeadAttention(keras.layers.Layer):
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

    The attention itself runs through `keras.ops.dot_product_attention` (a
    fused kernel where the backend has one; a causal mask alone uses its
    `is_causal` kernel) unless attention dropout is active, the scores are
    requested or `value_dim != key_dim` (JAX's kernel needs equal head
    sizes); then an explicit path computes the logits, a float32 softmax,
    dropout and the weighted sum. The softmax is in float32 under mixed
    precision on both paths.

    Masks follow `keras_tfm.masks`: boolean, `True` means "may attend". The
    mask used is the AND of `attention_mask`, the key side's padding mask
    (the Keras mask of `key` when `key` is given, else the Keras mask of
    `value`) and, with `use_causal_mask=True`, the causal mask. The
    query's padding mask is never used: padded queries attend like real
    ones and the loss ignores them. Masked positions are inert:

    - a query row with no allowed key gives exactly zero before the output
      projection (so the layer returns the output bias there), and zero
      attention scores, on every path and in every dtype;
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
        output_shape: Keras's name for the same (an int or a 1-tuple),
            accepted so code written for `keras.layers.MultiHeadAttention`
            runs unchanged.
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
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        query: float tensor `(batch, query_len, dim)`.
        value: float tensor `(batch, key_len, dim_v)`. Ignored when a cross
            attention `cache` is given (`cache_index=None`).
        key: optional float tensor `(batch, key_len, dim_k)`. Defaults to
            `value`.
        attention_mask: optional boolean `(batch, query_len, key_len)`;
            `batch` and `query_len` may be 1 to broadcast (a key padding
            mask `(batch, 1, key_len)` costs no `(query, key)` tensor).
            `key_len` is the cache length when a cache is used.
        use_causal_mask: whether query `t` may only see keys `<= t` (keys
            `<= cache_index + t` when decoding with a cache).
        return_attention_scores: whether to also return the attention
            probabilities `(batch, heads, query_len, key_len)`.
        training: whether attention dropout is active.
        cache: optional key/value cache `(batch, 2, num_key_value_heads,
            max_length, key_dim)`: index 0 holds keys (rotated when
            `position` is `"rotary"`), index 1 values; see `compute_cache` and
            `empty_cache`. Needs `value_dim == key_dim`. Heads come before
            positions so that each decoding step reads the cache in the
            layout the attention matmuls use (no per-step transpose).
        positions: optional int `(batch, query_len)` positions of the
            queries for `position="rotary"` (packed rows, where positions
            restart in each segment); instead of `0, 1, ...`.
        key_positions: the same for the keys; defaults to `positions` in
            self-attention (the key tensor is the query tensor).
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
        query_mask, value_mask, key_mask: padding masks `(batch, seq)`,
            filled in by Keras from the inputs' masks. `query_mask` is not
            used for attention; the output keeps it as its Keras mask.

    Returns:
        The output `(batch, query_len, output_dim)`; with
        `return_attention_scores=True` the tuple `(output, scores)`; with a
        `cache`, the updated cache is appended: `(output, cache)` or
        `(output, scores, cache)`.

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
        output_shape=None,
        attention_axes=None,
        num_key_value_heads=None,
        output_use_bias=None,
        query_key_norm=False,
        query_key_norm_epsilon=1e-6,
        sliding_window=None,
        rope_scaling=None,
        **kwargs,
    ):
        check_positive_int("num_heads", num_heads)
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim, allow_none=True)
        dropout = check_rate("dropout", dropout)
        check_bool("use_bias", use_bias)
        check_positive_int("output_dim", output_dim, allow_none=True)
        output_dim = _keras_output_shape(output_dim, output_shape)
        _check_attention_axes(attention_axes)
        check_position(position)
        if position == "rotary" and key_dim % 2:
            raise ValueError(
                '`key_dim` must be even with position="rotary". '
                f"Received: key_dim={key_dim}"
            )
        check_positive_number("max_wavelength", max_wavelength)
        check_positive_int(
            "num_key_value_heads", num_key_value_heads, allow_none=True
        )
        if num_key_value_heads is not None and num_heads % num_key_value_heads:
            raise ValueError(
                "`num_key_value_heads` must divide `num_heads` "
                f"({num_heads}). Received: "
                f"num_key_value_heads={num_key_value_heads}"
            )
        if output_use_bias is not None:
            check_bool("output_use_bias", output_use_bias)
        check_bool("query_key_norm", query_key_norm)
        check_positive_number("query_key_norm_epsilon", query_key_norm_epsilon)
        check_positive_int("sliding_window", sliding_window, allow_none=True)
        check_rope_scaling("rope_scaling", rope_scaling)
        if rope_scaling is not None and position != "rotary":
            raise ValueError(
                '`rope_scaling` needs position="rotary". Received: '
                f"rope_scaling={rope_scaling!r}, position={position!r}"
            )
        kernel_initializer = check_initializer(
            "kernel_initializer", kernel_initializer
        )
        bias_initializer = check_initializer(
            "bias_initializer", bias_initializer
        )
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.output_dim = output_dim
        self.output_shape_argument = output_shape
        self.attention_axes = attention_axes
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
        self.supports_masking = True
        self._value_dim = key_dim if value_dim is None else value_dim
        self._kv_heads = (
            num_heads if num_key_value_heads is None else num_key_value_heads
        )
        # Query heads per key/value head.
        self._group = num_heads // self._kv_heads

    def _dense(self, units, name, use_bias=None):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias if use_bias is None else use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape, key_shape=None):
        check_rank(self, "query", query_shape, (3,))
        check_rank(self, "value", value_shape, (3,))
        if key_shape is None:
            key_shape = value_shape
        check_rank(self, "key", key_shape, (3,))
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
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self.built = True

    def _check_inputs(self, attention_mask=None, cache=None, **tensors):
        for name, tensor in tensors.items():
            if tensor is None:
                continue
            check_rank(self, name, tensor.shape, (3,))
            _check_float(self, name, tensor)
        key, value = tensors.get("key"), tensors.get("value")
        if key is not None and value is not None:
            _check_key_value_shapes(key.shape, value.shape)
        if cache is not None:
            self._check_cache(cache)
        if attention_mask is None:
            return
        query = tensors["query"]
        if cache is not None:
            key_length = _static_dim(cache, 3)
        else:
            key = tensors.get("key")
            key_length = _static_dim(
                tensors["value"] if key is None else key, 1
            )
        expected = (_static_dim(query, 0), _static_dim(query, 1), key_length)
        mask_shape = tuple(attention_mask.shape)
        mismatch = not shapes_compatible(
            mask_shape, expected, broadcast_axes=(0, 1)
        )
        if mismatch:
            raise ValueError(
                "`attention_mask` must have shape (batch, query_len, "
                f"key_len) = {expected} (batch and query_len may be 1). "
                f"Received: attention_mask with shape {mask_shape}, query "
                f"with shape {tuple(query.shape)}"
            )

    def _check_cacheable(self):
        if self._value_dim != self.key_dim:
            raise ValueError(
                "A key/value cache needs `value_dim` equal to `key_dim`. "
                f"Received: key_dim={self.key_dim}, "
                f"value_dim={self._value_dim}"
            )

    def _check_cache(self, cache):
        self._check_cacheable()
        expected = (None, 2, self._kv_heads, None, self.key_dim)
        shape = tuple(cache.shape)
        if len(shape) != 5 or any(
            want is not None and got is not None and got != want
            for got, want in zip(shape, expected, strict=True)
        ):
            raise ValueError(
                "`cache` must have shape (batch, 2, num_key_value_heads, "
                f"max_length, key_dim) = (batch, 2, {self._kv_heads}, "
                f"max_length, {self.key_dim}). Received: cache with shape "
                f"{shape}"
            )

    def _project(self, dense, x, head_dim, heads=None):
        # (batch, seq, dim) -> (batch, seq, heads, head_dim), as one
        # (tokens, dim) matmul: see FeedForward.call.
        shape = ops.shape(x)
        projected = dense(ops.reshape(x, (-1, shape[-1])))
        heads = self.num_heads if heads is None else heads
        return ops.reshape(projected, (shape[0], shape[1], heads, head_dim))

    def _project_query(self, query, start_index=0, positions=None):
        query = self._project(self.query_dense, query, self.key_dim)
        if self.query_key_norm:
            query = self.query_norm(query)
        if self.position == "rotary":
            query = self.rotary_embedding(
                query, start_index=start_index, positions=positions
            )
        return query

    def _project_key(self, key, start_index=0, positions=None):
        key = self._project(
            self.key_dense, key, self.key_dim, heads=self._kv_heads
        )
        if self.query_key_norm:
            key = self.key_norm(key)
        if self.position == "rotary":
            key = self.rotary_embedding(
                key, start_index=start_index, positions=positions
            )
        return key

    def _project_value(self, value):
        return self._project(
            self.value_dense, value, self._value_dim, heads=self._kv_heads
        )

    def _keys_and_values(self, key, value, cache, cache_index, positions):
        """Return keys, values and the cache.

        Without a cache keys and values are `(batch, key_len, kv_heads,
        dim)`; with one they are the cache's `(batch, kv_heads, max_length,
        dim)`.
        """
        if cache is None:
            return (
                self._project_key(key, positions=positions),
                self._project_value(value),
                None,
            )
        if cache_index is not None:
            # The new steps `(batch, 2, kv_heads, steps, key_dim)` are written
            # at `cache_index` with one update of the whole cache, which
            # compiled loops do in place.
            update = ops.stack(
                [
                    ops.transpose(
                        self._project_key(key, cache_index), (0, 2, 1, 3)
                    ),
                    ops.transpose(self._project_value(value), (0, 2, 1, 3)),
                ],
                axis=1,
            )
            cache = _backend.slice_update(
                cache, [0, 0, 0, cache_index, 0], ops.cast(update, cache.dtype)
            )
        keys, values = cache[:, 0], cache[:, 1]
        return (
            ops.cast(keys, self.compute_dtype),
            ops.cast(values, self.compute_dtype),
            cache,
        )

    def _merged_mask(
        self,
        query,
        key_length,
        attention_mask,
        key_padding,
        use_causal_mask,
        offset,
    ):
        query_length = ops.shape(query)[1]
        mask = None
        if key_padding is not None:
            # Without the causal mask, (batch, 1, key_len) broadcasts over
            # queries and no (batch, query_len, key_len) tensor is built.
            mask = masks.attention_mask(
                key_mask=key_padding,
                causal=use_causal_mask,
                query_length=query_length if use_causal_mask else 1,
                offset=offset,
            )
        elif use_causal_mask:
            causal = masks.causal_mask(query_length, key_length, offset=offset)
            mask = ops.expand_dims(causal, 0)
        window = None
        if self.sliding_window is not None:
            # (1, query_len, key_len)
            window = ops.expand_dims(
                masks.sliding_window_mask(
                    query_length, key_length, self.sliding_window, offset
                ),
                0,
            )
        return masks.combine_masks(mask, attention_mask, window)

    def _scores(self, query, key, mask, is_causal, keys):
        """Float32 attention probabilities (uniform on rows with no key;
        `call` zeroes those rows where they are visible)."""
        if is_causal:
            length = ops.shape(query)[1]
            mask = ops.expand_dims(masks.causal_mask(length), 0)
        query = query * ops.cast(1.0 / np.sqrt(self.key_dim), query.dtype)
        # (batch, heads, query_len, key_len)
        logits = ops.cast(self._logits(query, key, keys), "float32")
        if mask is not None:
            logits = ops.where(
                ops.expand_dims(mask, 1), logits, _LARGE_NEGATIVE
            )
        return ops.softmax(logits, axis=-1)

    def _logits(self, query, key, keys):
        """Query-key products `(batch, heads, query_len, key_len)`.

        Grouped heads are contracted as `(kv_heads, group)` against the
        key/value heads, without repeating keys.
        """
        group = self._group
        if group == 1:
            if _one_step(query, keys):
                return ops.expand_dims(
                    ops.einsum("bnh,bnsh->bns", ops.squeeze(query, 1), key), 2
                )
            return ops.einsum(f"btnh,{keys}->bnts", query, key)
        shape = ops.shape(query)
        kv_heads, key_dim = self._kv_heads, self.key_dim
        if _one_step(query, keys):
            # (batch, kv_heads, group, key_dim)
            grouped = ops.reshape(query, (shape[0], kv_heads, group, key_dim))
            logits = ops.einsum("bkgh,bksh->bkgs", grouped, key)
            return ops.reshape(logits, (shape[0], self.num_heads, 1, -1))
        # (batch, query_len, kv_heads, group, key_dim)
        grouped = ops.reshape(
            query, (shape[0], shape[1], kv_heads, group, key_dim)
        )
        key_spec = keys.replace("n", "k")
        logits = ops.einsum(f"btkgh,{key_spec}->bkgts", grouped, key)
        return ops.reshape(
            logits, (shape[0], self.num_heads, shape[1], ops.shape(logits)[-1])
        )

    def _weighted_sum(self, weights, value, keys):
        """Attention output `(batch, query_len, heads, value_dim)`."""
        group = self._group
        one_step = keys == "bnsh" and _static_dim(weights, 2) == 1
        if group == 1:
            if one_step:
                return ops.expand_dims(
                    ops.einsum("bns,bnsh->bnh", ops.squeeze(weights, 2), value),
                    1,
                )
            return ops.einsum(f"bnts,{keys}->btnh", weights, value)
        shape = ops.shape(weights)
        kv_heads, value_dim = self._kv_heads, self._value_dim
        if one_step:
            # (batch, kv_heads, group, key_len)
            grouped = ops.reshape(weights, (shape[0], kv_heads, group, -1))
            output = ops.einsum("bkgs,bksh->bkgh", grouped, value)
            return ops.reshape(output, (shape[0], 1, self.num_heads, value_dim))
        # (batch, kv_heads, group, query_len, key_len)
        grouped = ops.reshape(
            weights, (shape[0], kv_heads, group, shape[2], shape[3])
        )
        key_spec = keys.replace("n", "k")
        output = ops.einsum(f"bkgts,{key_spec}->btkgh", grouped, value)
        return ops.reshape(
            output, (shape[0], shape[2], self.num_heads, value_dim)
        )

    def call(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_index=None,
        positions=None,
        key_positions=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
    ):
        self._check_inputs(
            attention_mask, cache, query=query, value=value, key=key
        )
        if cache_index is not None and cache is None:
            raise ValueError(
                "`cache_index` needs a `cache`. Received: cache=None, "
                f"cache_index={cache_index}"
            )
        if positions is not None or key_positions is not None:
            if self.position != "rotary":
                raise ValueError(
                    '`positions` apply to position="rotary" attention only; '
                    "other positions are added by the embedding. Received: "
                    f"positions with position={self.position!r}"
                )
            if cache is not None:
                raise ValueError(
                    "`positions` are for packed rows without a cache; with a "
                    "cache positions follow `cache_index`. Received: a cache"
                )
            if key_positions is None:
                if (value if key is None else key) is not query:
                    raise ValueError(
                        "`key_positions` are needed when the keys are not "
                        "the queries (cross-attention). Received: "
                        "key_positions=None"
                    )
                key_positions = positions
        explicit_key = key is not None
        key = value if key is None else key
        start_index = 0 if cache_index is None else cache_index

        # (batch, query_len, heads, key_dim)
        query_heads = self._project_query(query, start_index, positions)

        key_heads, value_heads, cache = self._keys_and_values(
            key, value, cache, cache_index, key_positions
        )
        # Keys and values: (batch, key_len, heads, dim), or heads first,
        # (batch, heads, max_length, dim), when they come from a cache.
        keys = "bsnh" if cache is None else "bnsh"
        key_axis = 1 if cache is None else 2
        key_padding = None
        if cache is None:
            # The key side's padding: `key`'s mask when `key` was given,
            # else `value`'s. (With a self-attention cache the Keras masks
            # cover only the new steps; with a cross-attention cache `value`
            # is a placeholder.)
            key_padding = key_mask if explicit_key else value_mask

        query_length = _static_dim(query, 1)
        key_length = _static_dim(key_heads, key_axis)
        is_causal = (
            use_causal_mask
            and cache is None
            and attention_mask is None
            and key_padding is None
            and query_length is not None
            and query_length == key_length
            and self.sliding_window is None
        )
        mask = None
        if not is_causal:
            mask = self._merged_mask(
                query,
                ops.shape(key_heads)[key_axis],
                attention_mask,
                key_padding,
                use_causal_mask,
                start_index,
            )

        has_key = None
        if mask is not None:
            # Inert masked positions: zero what no one may use, and let
            # empty rows attend everywhere (finite), then zero their output.
            has_key = ops.any(mask, axis=-1)  # (batch, query_len)
            attended = ops.any(mask, axis=-2)  # (batch, key_len)
            query_heads = _where_rows(has_key, query_heads)
            key_heads = _where_rows(attended, key_heads, key_axis)
            value_heads = _where_rows(attended, value_heads, key_axis)
            mask = ops.logical_or(
                mask, ops.expand_dims(ops.logical_not(has_key), -1)
            )

        use_dropout = self.dropout > 0 and bool(training)
        scores = None
        if (
            use_dropout
            or return_attention_scores
            or self._value_dim != self.key_dim
            or cache is not None
        ):
            scores = self._scores(query_heads, key_heads, mask, is_causal, keys)
            weights = scores
            if use_dropout:
                weights = self.attention_dropout(weights, training=training)
            weights = ops.cast(weights, value_heads.dtype)
            # (batch, query_len, heads, value_dim)
            output = self._weighted_sum(weights, value_heads, keys)
            if return_attention_scores and has_key is not None:
                # Only the returned scores need zero rows: the output of
                # such rows is zeroed below, so the training graph skips
                # this (batch, heads, query, key) select.
                keep = ops.expand_dims(ops.expand_dims(has_key, 1), -1)
                scores = ops.where(keep, scores, ops.zeros_like(scores))
            scores = ops.cast(scores, self.compute_dtype)
        else:
            fused_dtype = query_heads.dtype
            if _float16_unsupported(fused_dtype):
                query_heads, key_heads, value_heads = (
                    ops.cast(t, "float32")
                    for t in (query_heads, key_heads, value_heads)
                )
            if self._group > 1:
                # (batch, key_len, heads, dim), in `repeat_kv`'s order.
                key_heads = ops.repeat(key_heads, self._group, axis=2)
                value_heads = ops.repeat(value_heads, self._group, axis=2)
            output = ops.dot_product_attention(
                query_heads,
                key_heads,
                value_heads,
                mask=None if mask is None else ops.expand_dims(mask, 1),
                scale=1.0 / float(np.sqrt(self.key_dim)),
                is_causal=is_causal,
                flash_attention=_backend.flash_attention(),
            )
            output = ops.cast(output, fused_dtype)
        if has_key is not None:
            output = _where_rows(has_key, output)

        # (batch * query_len, heads * value_dim): one matmul over tokens.
        shape = ops.shape(output)
        output = self.output_dense(
            ops.reshape(output, (-1, self.num_heads * self._value_dim))
        )
        output = ops.reshape(output, (shape[0], shape[1], -1))
        results = (output,)
        if return_attention_scores:
            results += (scores,)
        if cache is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    def compute_mask(self, query, mask=None):
        return mask

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        if key_shape is not None:
            _check_key_value_shapes(key_shape, value_shape)
        output_dim = self.output_dim or query_shape[-1]
        return tuple(query_shape[:-1]) + (output_dim,)

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_index=None,
        positions=None,
        key_positions=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
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

    def empty_cache(self, batch_size, max_length, dtype=None):
        """Return a zero self-attention cache for `call(..., cache_index=)`.

        Args:
            batch_size: the batch size.
            max_length: number of positions the cache holds.
            dtype: dtype of the cache. Defaults to the compute dtype.

        Returns:
            Zeros `(batch_size, 2, num_key_value_heads, max_length,
            key_dim)`.
        """
        check_positive_int("max_length", max_length)
        self._check_cacheable()
        return ops.zeros(
            (batch_size, 2, self._kv_heads, max_length, self.key_dim),
            dtype=dtype or self.compute_dtype,
        )

    def compute_cache(self, value, key=None, max_length=None):
        """Project `key`/`value` once, for attention with a fixed cache.

        For cross-attention, pass the result as `cache` with
        `cache_index=None` at every decoding step, with the source's
        padding as `attention_mask` (the cache holds no mask, and Keras
        masks of `value` are not read here). For self-attention, a
        prompt's cache padded to `max_length` can be continued with
        `cache_index=prompt_length`.

        Args:
            value: float tensor `(batch, key_len, dim_v)`.
            key: optional float tensor `(batch, key_len, dim_k)`. Defaults
                to `value`.
            max_length: when given, the cache is padded with zeros to this
                length along the key axis.

        Returns:
            Tensor `(batch, 2, num_key_value_heads, key_len or max_length,
            key_dim)`:
            the projected keys (rotated from position 0 when `position` is
            `"rotary"`) at index 0 and values at index 1.
        """
        if not self.built:
            raise ValueError(
                "`compute_cache` needs a built layer: call the layer once "
                "or call `build(query_shape, value_shape)` first."
            )
        key = value if key is None else key
        self._check_inputs(value=value, key=key)
        self._check_cacheable()
        # (batch, 2, heads, key_len, head_dim)
        cache = ops.transpose(
            ops.stack(
                [self._project_key(key), self._project_value(value)], axis=1
            ),
            (0, 1, 3, 2, 4),
        )
        if max_length is not None:
            check_positive_int("max_length", max_length)
            length = _static_dim(cache, 3)
            if length is not None and length > max_length:
                raise ValueError(
                    "`max_length` must be at least the key length "
                    f"{length}. Received: max_length={max_length}"
                )
            pad = max_length - ops.shape(cache)[3]
            cache = ops.pad(cache, [[0, 0], [0, 0], [0, 0], [0, pad], [0, 0]])
        return cache

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
            "output_shape": self.output_shape_argument,
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
        }
        return {**base, **config}

    def _dense_layers(self):
        return [
            self.query_dense,
            self.key_dense,
            self.value_dense,
            self.output_dense,
        ]


def _one_step(query, keys):
    """Whether `query` is one decoding step against a cache: its length is
    statically 1. The einsums then drop that axis, so that XLA on CPU runs
    each head as a matrix-vector product over the cache (about 2x faster
    at 512 cached positions than the same dot with a unit axis)."""
    return keys == "bnsh" and _static_dim(query, 1) == 1


def _where_rows(keep, x, axis=1):
    """Zero `x` where `keep` (batch, seq) is False; `seq` is `x`'s `axis`
    (`(batch, seq, heads, dim)`, or heads first with `axis=2`)."""
    keep = ops.expand_dims(keep, -1)
    keep = ops.expand_dims(keep, -1 if axis == 1 else 1)
    return ops.where(keep, x, ops.zeros_like(x))


def _check_key_value_shapes(key_shape, value_shape):
    key_length, value_length = tuple(key_shape)[1], tuple(value_shape)[1]
    if (
        key_length is not None
        and value_length is not None
        and key_length != value_length
    ):
        raise ValueError(
            "`key` and `value` must have the same length. Received: key "
            f"with shape {tuple(key_shape)}, value with shape "
            f"{tuple(value_shape)}"
        )


def _float16_unsupported(dtype):
    """Whether the fused kernel rejects float16 here (compiled JAX on CPU:
    "precision 'F16_F16_F32' is not supported by dot_general on CPU")."""
    if keras.backend.standardize_dtype(dtype) != "float16":
        return False
    if keras.backend.backend() != "jax":
        return False
    return keras.distribution.list_devices()[0].lower().startswith("cpu")
