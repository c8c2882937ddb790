"""The arithmetic and argument checks behind `MultiHeadAttention`.

Functions of tensors and sizes only, so that `attention.py` holds the layer
(its arguments, sublayers and the order of a call) and this module the
einsums of grouped heads, the masked softmax and the checks that Keras's
argument names need.
"""

from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_tfm import masks
from keras_tfm._validation import (
    check_bool,
    check_positive_int,
    check_positive_number,
    check_rank,
)
from keras_tfm.layers.position import check_rope_scaling

POSITIONS = ("none", "rotary")
# Logits of masked keys; finite, so that no `inf - inf` can appear.
LARGE_NEGATIVE = -0.7 * float(np.finfo("float32").max)


def check_position(position):
    """`position` of attention: "none" or "rotary" (the others are the
    embedding's)."""
    if position not in POSITIONS:
        raise ValueError(
            '`position` must be "none" or "rotary"; sinusoidal and learned '
            "positions are added by `TokenAndPositionEmbedding`. Received: "
            f"position={position!r}"
        )


def output_dim_from(output_dim, output_shape):
    """`output_dim` from it or from Keras's `output_shape` (an int or a
    1-tuple: the last axis), the same setting under two names."""
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


def check_attention_axes(attention_axes):
    # Keras's default (None) attends over every axis between batch and
    # features; for (batch, seq, dim) inputs that is the sequence axis.
    if attention_axes is None or attention_axes in (1, (1,), [1], -2, (-2,)):
        return
    raise ValueError(
        "`attention_axes` must be None or the sequence axis (1): keras_tfm "
        "attention takes (batch, seq, dim) inputs. Received: "
        f"attention_axes={attention_axes!r}"
    )


def check_float(layer, name, tensor):
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if "float" not in dtype:
        raise ValueError(
            f"{type(layer).__name__} expects a floating-point `{name}`. "
            f"Received: {name} with dtype={dtype}"
        )


def check_shapes(layer, query_shape, value_shape, key_shape=None):
    """Ranks of `query`, `value` and `key` (3) and equal key/value lengths,
    as `build`, `call` and `compute_output_shape` all need them."""
    check_rank(layer, "query", query_shape, (3,))
    check_rank(layer, "value", value_shape, (3,))
    if key_shape is None:
        return
    check_rank(layer, "key", key_shape, (3,))
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


def static_dim(tensor, axis):
    return tuple(tensor.shape)[axis]


def one_step(query, keys):
    """Whether `query` is one decoding step against a cache: its length is
    statically 1. The einsums then drop that axis, so that XLA on CPU runs
    each head as a matrix-vector product over the cache instead of a dot
    with a unit axis."""
    return keys == "bnsh" and static_dim(query, 1) == 1


def where_rows(keep, x, axis=1):
    """Zero `x` where `keep` (batch, seq) is False; `seq` is `x`'s `axis`
    (`(batch, seq, heads, dim)`, or heads first with `axis=2`)."""
    keep = ops.expand_dims(keep, -1)
    keep = ops.expand_dims(keep, -1 if axis == 1 else 1)
    return ops.where(keep, x, ops.zeros_like(x))


def probabilities(logits, mask):
    """Float32 softmax of `logits` `(batch, heads, query_len, key_len)`
    over the keys `mask` `(batch, query_len, key_len)` allows (uniform on
    rows with no key)."""
    logits = ops.cast(logits, "float32")
    if mask is not None:
        logits = ops.where(ops.expand_dims(mask, 1), logits, LARGE_NEGATIVE)
    return ops.softmax(logits, axis=-1)


def logits(query, key, keys, kv_heads):
    """Query-key products `(batch, heads, query_len, key_len)`.

    `query` is `(batch, query_len, heads, dim)`; `key` is laid out as
    `keys` says (`"bsnh"`, or `"bnsh"` from a cache) with `kv_heads`
    heads. Grouped heads are contracted as `(kv_heads, group)` against the
    key/value heads, without repeating keys.
    """
    shape = ops.shape(query)
    heads, key_dim = static_dim(query, 2), static_dim(query, 3)
    group = heads // kv_heads
    if group == 1:
        if one_step(query, keys):
            return ops.expand_dims(
                ops.einsum("bnh,bnsh->bns", ops.squeeze(query, 1), key), 2
            )
        return ops.einsum(f"btnh,{keys}->bnts", query, key)
    if one_step(query, keys):
        # (batch, kv_heads, group, key_dim)
        grouped = ops.reshape(query, (shape[0], kv_heads, group, key_dim))
        scores = ops.einsum("bkgh,bksh->bkgs", grouped, key)
        return ops.reshape(scores, (shape[0], heads, 1, -1))
    # (batch, query_len, kv_heads, group, key_dim)
    grouped = ops.reshape(query, (shape[0], shape[1], kv_heads, group, key_dim))
    key_spec = keys.replace("n", "k")
    scores = ops.einsum(f"btkgh,{key_spec}->bkgts", grouped, key)
    return ops.reshape(
        scores, (shape[0], heads, shape[1], ops.shape(scores)[-1])
    )


def weighted_sum(weights, value, keys, kv_heads):
    """Attention output `(batch, query_len, heads, value_dim)` of `weights`
    `(batch, heads, query_len, key_len)` and `value` laid out as `keys`."""
    shape = ops.shape(weights)
    heads, value_dim = static_dim(weights, 1), static_dim(value, -1)
    group = heads // kv_heads
    one = keys == "bnsh" and static_dim(weights, 2) == 1
    if group == 1:
        if one:
            return ops.expand_dims(
                ops.einsum("bns,bnsh->bnh", ops.squeeze(weights, 2), value),
                1,
            )
        return ops.einsum(f"bnts,{keys}->btnh", weights, value)
    if one:
        # (batch, kv_heads, group, key_len)
        grouped = ops.reshape(weights, (shape[0], kv_heads, group, -1))
        output = ops.einsum("bkgs,bksh->bkgh", grouped, value)
        return ops.reshape(output, (shape[0], 1, heads, value_dim))
    # (batch, kv_heads, group, query_len, key_len)
    grouped = ops.reshape(
        weights, (shape[0], kv_heads, group, shape[2], shape[3])
    )
    key_spec = keys.replace("n", "k")
    output = ops.einsum(f"bkgts,{key_spec}->btkgh", grouped, value)
    return ops.reshape(output, (shape[0], shape[2], heads, value_dim))


def get_regularizer(name, value):
    """`keras.regularizers.get(value)`, naming the argument on failure."""
    try:
        return keras.regularizers.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a Keras regularizer, its name or None. "
            f"Received: {name}={value!r}"
        ) from error


def get_constraint(name, value):
    """`keras.constraints.get(value)`, naming the argument on failure."""
    try:
        return keras.constraints.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a Keras constraint, its name or None. "
            f"Received: {name}={value!r}"
        ) from error


class Heads(NamedTuple):
    """Projected heads: `query` `(batch, query_len, heads, key_dim)`, and
    `key`/`value` laid out as `layout` says: `"bsnh"` `(batch, key_len,
    kv_heads, dim)`, or heads first, `"bnsh"`, when read from a cache."""

    query: Any
    key: Any
    value: Any
    layout: str

    @property
    def key_axis(self):
        return 1 if self.layout == "bsnh" else 2


def check_head_options(
    num_heads, position, num_key_value_heads, sliding_window, rope_scaling
):
    """The checks `MultiHeadAttention` and the blocks share: heads,
    grouped key/value heads, position, window and rotary scaling."""
    check_positive_int("num_heads", num_heads)
    check_position(position)
    check_positive_int(
        "num_key_value_heads", num_key_value_heads, allow_none=True
    )
    if num_key_value_heads is not None and num_heads % num_key_value_heads:
        raise ValueError(
            "`num_key_value_heads` must divide `num_heads` "
            f"({num_heads}). Received: "
            f"num_key_value_heads={num_key_value_heads}"
        )
    check_positive_int("sliding_window", sliding_window, allow_none=True)
    check_rope_scaling("rope_scaling", rope_scaling)
    if rope_scaling is not None and position != "rotary":
        raise ValueError(
            '`rope_scaling` needs position="rotary". Received: '
            f"rope_scaling={rope_scaling!r}, position={position!r}"
        )


def check_cache_index(cache, cache_index):
    """`cache_index` writes into a cache, so it needs one."""
    if cache_index is not None and cache is None:
        raise ValueError(
            "`cache_index` needs a `cache`. Received: cache=None, "
            f"cache_index={cache_index}"
        )


def check_arguments(
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
):
    """The checks of `MultiHeadAttention.__init__` that return nothing."""
    check_head_options(
        num_heads, position, num_key_value_heads, sliding_window, rope_scaling
    )
    check_positive_int("key_dim", key_dim)
    check_positive_int("value_dim", value_dim, allow_none=True)
    check_bool("use_bias", use_bias)
    check_attention_axes(attention_axes)
    if position == "rotary" and key_dim % 2:
        raise ValueError(
            '`key_dim` must be even with position="rotary". '
            f"Received: key_dim={key_dim}"
        )
    check_positive_number("max_wavelength", max_wavelength)
    if output_use_bias is not None:
        check_bool("output_use_bias", output_use_bias)
    check_bool("query_key_norm", query_key_norm)
    check_positive_number("query_key_norm_epsilon", query_key_norm_epsilon)
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int)
    ):
        raise ValueError(
            f"`seed` must be an int or None. Received: seed={seed!r}"
        )


def dense_arguments(
    kernel_regularizer,
    bias_regularizer,
    activity_regularizer,
    kernel_constraint,
    bias_constraint,
):
    """Keras's regularizer and constraint arguments, checked, by name."""
    arguments = {
        "kernel_regularizer": kernel_regularizer,
        "bias_regularizer": bias_regularizer,
        "activity_regularizer": activity_regularizer,
    }
    arguments = {
        name: get_regularizer(name, value) for name, value in arguments.items()
    }
    arguments["kernel_constraint"] = get_constraint(
        "kernel_constraint", kernel_constraint
    )
    arguments["bias_constraint"] = get_constraint(
        "bias_constraint", bias_constraint
    )
    return arguments


def serialize_dense_arguments(arguments):
    return {
        name: (
            keras.constraints.serialize(value)
            if name.endswith("constraint")
            else keras.regularizers.serialize(value)
        )
        for name, value in arguments.items()
    }


def merged_mask(
    query,
    heads,
    attention_mask,
    query_mask,
    key_padding,
    use_causal_mask,
    offset,
    sliding_window,
):
    """The AND of every mask, `(batch or 1, query_len or 1, key_len)`, and
    whether the causal kernel alone stands for it (then the mask is
    `None`)."""
    query_length = static_dim(query, 1)
    is_causal = (
        use_causal_mask
        and heads.layout == "bsnh"
        and attention_mask is None
        and query_mask is None
        and key_padding is None
        and query_length is not None
        and query_length == static_dim(heads.key, heads.key_axis)
        and sliding_window is None
    )
    if is_causal:
        return None, True
    query_length = ops.shape(query)[1]
    key_length = ops.shape(heads.key)[heads.key_axis]
    if query_mask is not None and key_padding is None:
        # (batch, key_len): every key, to pair with the query rows.
        key_padding = ops.ones((ops.shape(query)[0], key_length), "bool")
    mask = None
    if key_padding is not None:
        # Without the causal and query masks, (batch, 1, key_len)
        # broadcasts over queries: no (batch, query_len, key_len) tensor.
        mask = masks.attention_mask(
            query_mask=query_mask,
            key_mask=key_padding,
            causal=use_causal_mask,
            query_length=query_length if use_causal_mask else 1,
            offset=offset,
        )
    elif use_causal_mask:
        causal = masks.causal_mask(query_length, key_length, offset=offset)
        mask = ops.expand_dims(causal, 0)
    window = None
    if sliding_window is not None:
        # (1, query_len, key_len)
        window = ops.expand_dims(
            masks.sliding_window_mask(
                query_length, key_length, sliding_window, offset
            ),
            0,
        )
    return masks.combine_masks(mask, attention_mask, window), False


def inert(mask, heads, keys=True):
    """Make masked positions inert: zero the queries, keys and values that
    no one may use (with `where`: NaN or inf there never reach real
    outputs), and let rows with no allowed key attend everywhere (finite;
    their output is zeroed by the caller). Returns the new mask, `has_key`
    `(batch, query_len)` and the new heads.

    `keys=False` leaves the keys: for a decoding step over a cache, whose
    logits go through `where` (see `probabilities`) and which takes no
    gradient. Zeroing them would copy the whole cache each step."""
    has_key = ops.any(mask, axis=-1)  # (batch, query_len)
    attended = ops.any(mask, axis=-2)  # (batch, key_len)
    heads = heads._replace(
        query=where_rows(has_key, heads.query),
        value=where_rows(attended, heads.value, heads.key_axis),
    )
    if keys:
        heads = heads._replace(
            key=where_rows(attended, heads.key, heads.key_axis)
        )
    mask = ops.logical_or(mask, ops.expand_dims(ops.logical_not(has_key), -1))
    return mask, has_key, heads


def check_positions(
    position, query, value, key, cache, cache_index, positions, key_positions
):
    """Check `cache_index` and the rotary positions of attention with
    `position`; return the keys' positions (`positions` in self-attention).
    """
    check_cache_index(cache, cache_index)
    if positions is None and key_positions is None:
        return None
    if position != "rotary":
        raise ValueError(
            '`positions` apply to position="rotary" attention only; '
            "other positions are added by the embedding. Received: "
            f"positions with position={position!r}"
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
    return key_positions
