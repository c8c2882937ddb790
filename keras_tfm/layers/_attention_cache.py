"""The key/value cache methods of `MultiHeadAttention`.

A mixin, so that `attention.py` keeps the layer's arguments, sublayers and
call; these methods use its projections (`_project`, `_rotated`)
and sizes (`key_dim`, `_value_dim`, `_kv_heads`). Heads come before
positions in a cache, so that each decoding step reads it in the layout the
attention matmuls use (no per-step transpose).
"""

from keras import ops

from keras_tfm._validation import check_positive_int, shapes_compatible
from keras_tfm.layers._attention_ops import static_dim


class KeyValueCache:
    """`empty_cache`, `compute_cache` and the checks of a cache."""

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
        key_heads, value_heads = self._project(
            [(self.key_dense, key), (self.value_dense, value)]
        )
        cache = ops.transpose(
            ops.stack(
                [self._rotated(key_heads, "key_norm"), value_heads], axis=1
            ),
            (0, 1, 3, 2, 4),
        )
        if max_length is not None:
            check_positive_int("max_length", max_length)
            length = static_dim(cache, 3)
            if length is not None and length > max_length:
                raise ValueError(
                    "`max_length` must be at least the key length "
                    f"{length}. Received: max_length={max_length}"
                )
            pad = max_length - ops.shape(cache)[3]
            cache = ops.pad(cache, [[0, 0], [0, 0], [0, 0], [0, pad], [0, 0]])
        return cache

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
        if not shapes_compatible(shape, expected):
            raise ValueError(
                "`cache` must have shape (batch, 2, num_key_value_heads, "
                f"max_length, key_dim) = (batch, 2, {self._kv_heads}, "
                f"max_length, {self.key_dim}). Received: cache with shape "
                f"{shape}"
            )
