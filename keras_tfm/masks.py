"""Boolean attention masks: the one place masks are built and merged.

Convention (used by every layer in keras_tfm): masks are boolean and `True`
means "real token" / "may attend". Padding masks have shape `(batch, seq)`;
attention masks have shape `(batch, query_len, key_len)`.

The decoder's first self-attention uses the padding mask AND the causal mask;
every other attention (encoder self-attention, cross-attention) uses the key
side's padding mask alone.

Packed rows (several sequences per row, see `keras_tfm.data.pack`) carry
`segment_ids` of shape `(batch, seq)`: `0` is padding and `1, 2, ...` number
the sequences of a row. `segment_mask` lets a token attend only within its
own segment.

All functions accept concrete or symbolic tensors on any backend and work
under `jit_compile`.
"""

import keras
from keras import ops

from keras_tfm._validation import is_integer_dtype


def padding_mask(token_ids, padding_id=0):
    """Return the padding mask of a batch of token ids.

    Args:
        token_ids: integer tensor of shape `(batch, seq)`.
        padding_id: the id used for padding. Defaults to `0`.

    Returns:
        Boolean tensor of shape `(batch, seq)`, `False` at padding.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> ids = np.array([[5, 7, 0, 0], [3, 0, 0, 0]])
    >>> ops.convert_to_numpy(padding_mask(ids)).tolist()
    [[True, True, False, False], [True, False, False, False]]
    """
    if not isinstance(padding_id, int) or isinstance(padding_id, bool):
        raise TypeError(
            "`padding_id` must be an integer. "
            f"Received: padding_id={padding_id!r}"
        )
    token_ids = ops.convert_to_tensor(token_ids)
    if not is_integer_dtype(token_ids.dtype, allow_bool=True):
        raise TypeError(
            "`token_ids` must be an integer tensor of token ids. "
            f"Received: token_ids with dtype={token_ids.dtype}"
        )
    return ops.not_equal(token_ids, padding_id)


def causal_mask(
    query_length, key_length=None, batch_size=None, offset=0, window=None
):
    """Return the causal ("sequence") mask: query `t` sees keys `<= t`.

    Query `i` sits at absolute position `offset + i`, so with a key/value cache
    of `key_length` slots a single new query at step `offset` sees the keys
    `0..offset`. With a `window`, query `t` sees only the keys `k` with
    `t - window < k <= t` (sliding-window attention, as Mistral's).

    Args:
        query_length: number of queries (int or scalar tensor).
        key_length: number of keys. Defaults to `query_length`.
        batch_size: when given, a leading batch axis of this size is added.
        offset: absolute position of the first query (int or scalar tensor).
        window: optional positive int: the number of most recent keys
            (the query's own included) each query sees; see
            `sliding_window_mask`.

    Returns:
        Boolean tensor `(query_length, key_length)`, or
        `(batch_size, query_length, key_length)` when `batch_size` is given;
        lower-triangular including the diagonal.

    Example:

    >>> from keras import ops
    >>> ops.convert_to_numpy(causal_mask(3)).astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    >>> tuple(causal_mask(3, batch_size=2).shape)
    (2, 3, 3)
    >>> ops.convert_to_numpy(causal_mask(3, window=2)).astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    """
    for name, value in (
        ("query_length", query_length),
        ("key_length", key_length),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
            raise ValueError(
                f"`{name}` must be a positive integer. Received: {name}={value}"
            )
    if isinstance(offset, int) and offset < 0:
        raise ValueError(
            "`offset` must be a non-negative integer. "
            f"Received: offset={offset}"
        )
    if key_length is None:
        key_length = query_length
    query_positions = ops.arange(query_length, dtype="int32") + ops.cast(
        offset, "int32"
    )
    key_positions = ops.arange(key_length, dtype="int32")
    # (query_len, key_len)
    mask = ops.greater_equal(
        ops.expand_dims(query_positions, 1), ops.expand_dims(key_positions, 0)
    )
    if window is not None:
        mask = ops.logical_and(
            mask,
            sliding_window_mask(query_length, key_length, window, offset),
        )
    if batch_size is not None:
        mask = ops.broadcast_to(
            ops.expand_dims(mask, 0), (batch_size, query_length, key_length)
        )
    return mask


def sliding_window_mask(query_length, key_length, window, offset=0):
    """Return the sliding-window mask: query `q` sees keys `k > q - window`.

    Positions are absolute: query `i` sits at `offset + i` (a key/value
    cache's step) and key `j` at `j`. This is transformers'
    `sliding_window_overlay` (`kv_idx > q_idx - sliding_window`); it says
    nothing about later keys, so AND it with `causal_mask` (or pass
    `window` to `causal_mask`) for causal sliding-window attention.

    Args:
        query_length: number of queries (int or scalar tensor).
        key_length: number of keys (int or scalar tensor).
        window: positive int, the window size.
        offset: absolute position of the first query (int or scalar tensor).

    Returns:
        Boolean tensor `(query_length, key_length)`.

    Example:

    >>> from keras import ops
    >>> m = sliding_window_mask(3, 3, window=2)
    >>> ops.convert_to_numpy(m).astype(int).tolist()
    [[1, 1, 1], [1, 1, 1], [0, 1, 1]]
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(
            f"`window` must be a positive integer. Received: window={window!r}"
        )
    query_positions = ops.arange(query_length, dtype="int32") + ops.cast(
        offset, "int32"
    )
    key_positions = ops.arange(key_length, dtype="int32")
    # (query_len, key_len)
    return ops.greater(
        ops.expand_dims(key_positions, 0),
        ops.expand_dims(query_positions, 1) - window,
    )


def _as_bool_mask(mask, name):
    mask = ops.convert_to_tensor(mask)
    if len(mask.shape) != 2:
        raise ValueError(
            f"`{name}` must be a padding mask of shape (batch, seq). "
            f"Received: {name} with shape {tuple(mask.shape)}"
        )
    if str(mask.dtype) != "bool":
        mask = ops.cast(mask, "bool")
    return mask


def attention_mask(
    query_mask=None,
    key_mask=None,
    causal=False,
    *,
    query_length=None,
    offset=0,
):
    """Merge padding and causal masks into one `(batch, Tq, Tk)` mask.

    The decoder's first self-attention passes its padding mask as `key_mask`
    with `causal=True`; every other attention passes the key side's padding
    mask only (for cross-attention, the encoder's).

    Args:
        query_mask: optional `(batch, Tq)` padding mask of the queries. When
            given, rows of padded queries are fully masked (they attend to
            nothing). The blocks of keras_tfm do not pass it.
        key_mask: optional `(batch, Tk)` padding mask of the keys.
        causal: whether query `t` may only see keys `<= t`.
        query_length: number of queries when `query_mask` is not given;
            defaults to the key length (self-attention).
        offset: absolute position of the first query, for causal masks over a
            key/value cache.

    Returns:
        Boolean tensor of shape `(batch, Tq, Tk)`, or `None` when no mask
        applies (no padding masks and `causal=False`).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> keys = np.array([[True, True, False]])
    >>> m = attention_mask(key_mask=keys, causal=True)
    >>> ops.convert_to_numpy(m).astype(int).tolist()
    [[[1, 0, 0], [1, 1, 0], [1, 1, 0]]]
    """
    if query_mask is None and key_mask is None:
        if not causal:
            return None
        if query_length is None:
            raise ValueError(
                "A causal `attention_mask` without padding masks needs "
                "`query_length`. Received: query_length=None"
            )
        return ops.expand_dims(causal_mask(query_length, offset=offset), 0)
    if query_mask is not None:
        query_mask = _as_bool_mask(query_mask, "query_mask")
    if key_mask is not None:
        key_mask = _as_bool_mask(key_mask, "key_mask")
    # Build by broadcasting from the masks themselves (no `ops.ones(shape)`):
    # lengths may be `None` on symbolic `keras.Input`s.
    if query_mask is not None:
        queries = ops.expand_dims(query_mask, 2)  # (batch, Tq, 1)
    elif query_length is None:
        queries = ops.expand_dims(ops.ones_like(key_mask), 2)  # Tq = Tk
    else:
        queries = ops.ones((query_length, 1), dtype="bool")  # (Tq, 1)
    if key_mask is not None:
        keys = ops.expand_dims(key_mask, 1)  # (batch, 1, Tk)
    else:
        keys = ops.expand_dims(ops.ones_like(query_mask), 1)  # Tk = Tq
    # (batch, Tq, Tk)
    mask = ops.logical_and(queries, keys)
    if causal:
        # 1-based positions along the broadcast axes: (..., Tq, 1), (..., 1, Tk)
        query_positions = ops.cumsum(
            ops.ones_like(queries, dtype="int32"), axis=-2
        ) + ops.cast(offset, "int32")
        key_positions = ops.cumsum(ops.ones_like(keys, dtype="int32"), axis=-1)
        mask = ops.logical_and(
            mask, ops.greater_equal(query_positions, key_positions)
        )
    return mask


def combine_masks(*masks):
    """AND together boolean masks that broadcast, skipping `None`.

    Args:
        *masks: boolean tensors (e.g. `(batch, Tq, Tk)` and `(1, Tq, Tk)`)
            or `None`.

    Returns:
        Their logical AND, or `None` when every mask is `None`.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> a = np.array([[[True, True]]])
    >>> b = np.array([[[True, False]]])
    >>> ops.convert_to_numpy(combine_masks(a, None, b)).tolist()
    [[[True, False]]]
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    combined = ops.cast(present[0], "bool")
    for mask in present[1:]:
        combined = ops.logical_and(combined, ops.cast(mask, "bool"))
    return combined


def _as_segment_ids(segment_ids, name):
    segment_ids = ops.convert_to_tensor(segment_ids)
    if not is_integer_dtype(segment_ids.dtype):
        raise TypeError(
            f"`{name}` must be an integer tensor of segment ids. "
            f"Received: {name} with "
            f"dtype={keras.backend.standardize_dtype(segment_ids.dtype)}"
        )
    if len(segment_ids.shape) != 2:
        raise ValueError(
            f"`{name}` must have shape (batch, seq). "
            f"Received: {name} with shape {tuple(segment_ids.shape)}"
        )
    return segment_ids


def segment_mask(query_segment_ids, key_segment_ids=None, causal=False):
    """Return the attention mask of packed rows: attend within a segment.

    Packed rows hold several sequences; `segment_ids` number them `1, 2,
    ...` within each row and mark padding with `0`. A query may attend to a
    key when both carry the same non-zero segment id, so sequences packed
    into one row never see each other and padding sees nothing (its row of
    the mask is all `False`, which attention turns into a finite output).

    Self-attention passes one set of ids; cross-attention in a packed
    encoder-decoder passes the decoder's ids as queries and the encoder's as
    keys (a pair shares its segment id on both sides, see
    `keras_tfm.data.pack_pairs`).

    Args:
        query_segment_ids: integer tensor `(batch, query_len)`.
        key_segment_ids: integer tensor `(batch, key_len)`. Defaults to
            `query_segment_ids` (self-attention).
        causal: whether query `i` may only see keys `j <= i` as well (the
            decoder's self-attention). Positions are the indices along the
            row, so this composes with the segment test: a token sees the
            earlier tokens of its own segment.

    Returns:
        Boolean tensor `(batch, query_len, key_len)`.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> ids = np.array([[1, 1, 2, 0]])
    >>> ops.convert_to_numpy(segment_mask(ids)).astype(int).tolist()
    [[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]]
    >>> m = segment_mask(ids, causal=True)
    >>> ops.convert_to_numpy(m).astype(int)[0, :3].tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]]
    """
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool. Received: causal={causal!r}")
    queries = _as_segment_ids(query_segment_ids, "query_segment_ids")
    if key_segment_ids is None:
        keys = queries
    else:
        keys = _as_segment_ids(key_segment_ids, "key_segment_ids")
        query_batch, key_batch = queries.shape[0], keys.shape[0]
        if (
            query_batch is not None
            and key_batch is not None
            and query_batch != key_batch
        ):
            raise ValueError(
                "`key_segment_ids` must have the batch size of "
                f"`query_segment_ids` ({query_batch}). Received: "
                f"key_segment_ids with shape {tuple(keys.shape)}"
            )
    if queries.dtype != keys.dtype:
        keys = ops.cast(keys, queries.dtype)
    queries = ops.expand_dims(queries, 2)  # (batch, Tq, 1)
    keys = ops.expand_dims(keys, 1)  # (batch, 1, Tk)
    # Equal ids and a real query imply a real key too.
    # (batch, Tq, Tk)
    mask = ops.logical_and(ops.equal(queries, keys), ops.not_equal(queries, 0))
    if causal:
        # Built from the ids themselves: lengths may be `None` symbolically.
        query_positions = ops.cumsum(
            ops.ones_like(queries, dtype="int32"), axis=1
        )  # (batch, Tq, 1)
        key_positions = ops.cumsum(
            ops.ones_like(keys, dtype="int32"), axis=2
        )  # (batch, 1, Tk)
        mask = ops.logical_and(
            mask, ops.greater_equal(query_positions, key_positions)
        )
    return mask
