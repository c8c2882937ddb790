"""What `CausalLM` and `Seq2SeqLM` share: checking and running their parts."""

import keras

from keras_tfm._validation import check_bool
from keras_tfm.layers.embedding import (
    TokenAndPositionEmbedding,
    TokenEmbedding,
)


def check_layer(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, keras.layers.Layer):
        raise TypeError(
            f"`{name}` must be a Keras layer. Received: {name}={value!r}"
        )


def check_blocks(name, blocks):
    if isinstance(blocks, keras.layers.Layer) or not isinstance(
        blocks, (list, tuple)
    ):
        raise TypeError(
            f"`{name}` must be a list of layers. Received: {name}={blocks!r}"
        )
    if not blocks:
        raise ValueError(f"`{name}` must not be empty. Received: {name}=[]")
    for index, block in enumerate(blocks):
        check_layer(f"{name}[{index}]", block)
    return list(blocks)


def check_no_cross_attention(name, blocks):
    """Refuse decoder blocks that attend to an encoder in a decoder-only
    model, which has no encoder outputs to give them."""
    for index, block in enumerate(blocks):
        if getattr(block, "cross_attention", False) is True:
            raise ValueError(
                f"`{name}[{index}]` ({block.name}) has cross_attention=True, "
                "but a decoder-only model has no encoder outputs: build it "
                "with TransformerDecoderBlock(..., cross_attention=False). "
                f"Received: {name}[{index}] with cross_attention=True"
            )


def token_table(name, embedding):
    """The `TokenEmbedding` that a tied head (`head=None`) projects with."""
    if isinstance(embedding, TokenEmbedding):
        return embedding
    if isinstance(embedding, TokenAndPositionEmbedding):
        return embedding.token_embedding
    raise ValueError(
        "`head=None` ties the output projection to the token table of "
        f"`{name}`, which must be a TokenEmbedding or a "
        "TokenAndPositionEmbedding; pass a `head` layer otherwise. Received: "
        f"{name}={embedding!r}"
    )


def project(x, final_norm, head, embedding_name, embedding):
    """`final_norm` (if any), then `head`, or the embedding's token table
    reversed when `head` is None (tied)."""
    if final_norm is not None:
        x = final_norm(x)
    if head is None:
        return token_table(embedding_name, embedding)(x, reverse=True)
    return head(x)


def check_positions(embedding_name, embedding, blocks_name, blocks):
    """Fail loudly where the embedding and the blocks disagree on rotary
    positions: one without the other leaves the model without positions
    (or with two kinds)."""
    position = getattr(embedding, "position", None)
    for index, block in enumerate(blocks):
        block_position = getattr(block, "position", None)
        if block_position is None:
            continue
        if position == "rotary" and block_position != "rotary":
            raise ValueError(
                f'`{embedding_name}` has position="rotary", which adds no '
                "position to the token vectors: the blocks must rotate "
                f'queries and keys (position="rotary"). Received: '
                f"{blocks_name}[{index}] with position={block_position!r}"
            )
        if position in ("sinusoidal", "learned") and block_position == (
            "rotary"
        ):
            raise ValueError(
                f"`{embedding_name}` adds {position} positions and "
                f'{blocks_name}[{index}] rotary ones; use position="rotary" '
                f'(or "none") on the embedding with rotary blocks. Received: '
                f"{embedding_name} with position={position!r}"
            )


def embed(embedding, token_ids, start_index):
    """Embed `token_ids` whose first position is `start_index`."""
    if isinstance(embedding, TokenAndPositionEmbedding):
        return embedding(token_ids, start_index=start_index, training=False)
    return embedding(token_ids, training=False)


def check_padding_mask(padding_mask, packed):
    check_bool("padding_mask", padding_mask)
    if padding_mask and packed:
        raise ValueError(
            "Packed rows carry their padding as segment id 0; pass "
            "`packed=True` or `padding_mask=True`, not both. Received: "
            "packed=True, padding_mask=True"
        )


def padded_inputs(prefix=""):
    """Symbolic inputs of explicitly padded rows (keras-hub's names): token
    ids, and a padding mask that is 1 (True) at real tokens."""
    return {
        f"{prefix}{name}": keras.Input(
            shape=(None,), dtype="int32", name=f"{prefix}{name}"
        )
        for name in ("token_ids", "padding_mask")
    }


def packed_inputs(prefix=""):
    """Symbolic inputs of packed rows: token ids, segment ids, positions."""
    return {
        f"{prefix}{name}": keras.Input(
            shape=(None,), dtype="int32", name=f"{prefix}{name}"
        )
        for name in ("token_ids", "segment_ids", "positions")
    }


def embed_packed(name, embedding, token_ids, positions):
    """Embed packed rows: positions restart in every segment."""
    if isinstance(embedding, TokenAndPositionEmbedding):
        return embedding(token_ids, positions=positions)
    if isinstance(embedding, TokenEmbedding):
        return embedding(token_ids)
    raise ValueError(
        "`packed=True` passes per-token positions to the embedding, which "
        "must be a TokenAndPositionEmbedding (or a TokenEmbedding, which "
        f"adds no positions). Received: {name}={embedding!r}"
    )


def run_packed_blocks(blocks, x, segment_ids, positions, **kwargs):
    for block in blocks:
        x = block(x, segment_ids=segment_ids, positions=positions, **kwargs)
    return x


def empty_caches(blocks, batch_size, max_length):
    caches = []
    for index, block in enumerate(blocks):
        if not hasattr(block, "empty_cache"):
            raise TypeError(
                "Cached decoding needs blocks with `empty_cache` and a "
                "`cache`/`cache_index` call (TransformerDecoderBlock); "
                "override `init_cache` and `call_with_cache` for other "
                f"blocks. Received: block {index} of type "
                f"{type(block).__name__}"
            )
        cache = block.empty_cache(batch_size, max_length)
        caches.append(_lay_out_cache(block, cache))
    return tuple(caches)


def _lay_out_cache(block, cache):
    """Split a cache over heads as its block's keys are, under ModelParallel.

    The cache `(batch, 2, heads, length, head_dim)` follows the layout of
    the key projection's kernel `(dim, heads * head_dim)`: sharded over
    heads where `keras_tfm.distribution.layout_map` sharded the keys, so
    each device keeps the keys and values of its own heads.
    """
    distribution = keras.distribution.distribution()
    attention = getattr(block, "self_attention", None)
    key_dense = getattr(attention, "key_dense", None)
    if not isinstance(distribution, keras.distribution.ModelParallel) or (
        key_dense is None or len(cache.shape) != 5
    ):
        return cache
    kernel_layout = distribution.get_variable_layout(key_dense.kernel)
    axis = None if kernel_layout is None else kernel_layout.axes[-1]
    if axis is None:
        return cache
    layout = keras.distribution.TensorLayout(
        (None, None, axis, None, None), distribution.device_mesh
    )
    return keras.distribution.distribute_tensor(cache, layout)


def check_cache(caches, blocks):
    if not isinstance(caches, (list, tuple)) or len(caches) != len(blocks):
        raise ValueError(
            f"`cache` must hold one cache per block ({len(blocks)}), as "
            "`init_cache` returns. Received: cache of type "
            f"{type(caches).__name__}"
        )


def check_pad_id(pad_id, embeddings):
    """`pad_id` is None or a non-negative int; an embedding built with
    `mask_zero=True` already makes `0` the padding id."""
    if pad_id is not None and (
        isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0
    ):
        raise ValueError(
            "`pad_id` must be None or a non-negative integer. Received: "
            f"pad_id={pad_id!r}"
        )
    if pad_id not in (None, 0) and any(mask_zero(e) for e in embeddings):
        raise ValueError(
            "An embedding built with `mask_zero=True` makes `0` the padding "
            "id; `pad_id` must then be None or 0. Received: "
            f"pad_id={pad_id!r}"
        )


def mask_zero(embedding):
    return bool(getattr(embedding, "mask_zero", False))


def pad_id(argument, embeddings):
    """The model's padding id: the argument, else `0` when an embedding
    masks id 0, else None (every id is a real token)."""
    if argument is not None:
        return argument
    return 0 if any(mask_zero(e) for e in embeddings) else None


def output_size(model):
    """The last axis of the functional model's (first) output: the logits'
    vocabulary."""
    return int(keras.tree.flatten(model.outputs)[0].shape[-1])


def input_vocabulary(embedding):
    """How many ids the embedding takes, or None when it does not say."""
    size = getattr(embedding, "vocabulary_size", None)
    if size is None:
        size = getattr(embedding, "input_dim", None)
    return None if size is None else int(size)


def position_limit(embedding):
    """The longest input a learned position table embeds, or None."""
    if getattr(embedding, "position", None) == "learned":
        return int(embedding.sequence_length)
    return None


def serialize(layer):
    return None if layer is None else keras.saving.serialize_keras_object(layer)


def deserialize(config):
    if config is None or isinstance(config, keras.layers.Layer):
        return config
    return keras.saving.deserialize_keras_object(config)


def check_token_ids(inputs):
    """Refuse boolean token ids, as the embeddings do.

    A functional model casts its inputs to the `keras.Input` dtypes, so
    without this check `True`/`False` would reach the embedding as ids
    1 and 0. Every input named `*token_ids` (or a single tensor input) is
    checked; `padding_mask` may be boolean.
    """
    if isinstance(inputs, dict):
        named = [v for k, v in inputs.items() if k.endswith("token_ids")]
    elif isinstance(inputs, (list, tuple)):
        named = []
    else:
        named = [inputs]
    for ids in named:
        dtype = getattr(ids, "dtype", None)
        if (
            dtype is not None
            and keras.backend.standardize_dtype(dtype) == "bool"
        ):
            raise TypeError(
                "The model expects integer token ids, not booleans. "
                f"Received: token ids with dtype={dtype}"
            )


class EarlyAttributes:
    """Lets a model set attributes before `keras.Model.__init__`.

    The functional graph is wired from the model's parts (and a
    subclass's own layers) before the model exists. PyTorch modules refuse
    attributes before `__init__`, so until `keras_init_starts` they are
    placed plainly and `track_early_attributes` sets them again, tracked,
    once the model exists.
    """

    def __setattr__(self, name, value):
        if "_keras_init_started" not in self.__dict__ and not (
            name.startswith("_")
        ):
            self.__dict__.setdefault("_early_attributes", []).append(name)
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def keras_init_starts(self):
        object.__setattr__(self, "_keras_init_started", True)

    def track_early_attributes(self):
        early = self.__dict__.pop("_early_attributes", [])
        values = {
            name: self.__dict__.pop(name)
            for name in early
            if name in self.__dict__
        }
        for name, value in values.items():
            setattr(self, name, value)


class IntegerTokenIds:
    """A model `call` that refuses boolean token ids (`check_token_ids`),
    the one rule the embeddings follow too."""

    def call(self, inputs, *args, **kwargs):
        check_token_ids(inputs)
        return super().call(inputs, *args, **kwargs)
