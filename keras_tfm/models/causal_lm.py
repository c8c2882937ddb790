"""`CausalLM`: a decoder-only language model that owns its cached step."""

import keras

from keras_tfm._masking import AttachMask
from keras_tfm._validation import check_bool
from keras_tfm.models import _parts


@keras.saving.register_keras_serializable(package="keras_tfm")
class CausalLM(_parts.EarlyAttributes, _parts.IntegerTokenIds, keras.Model):
    """A decoder-only (GPT-style) language model composed from layers.

    Wires `embedding -> blocks -> final_norm -> head` into a functional
    model with one input, integer `token_ids` `(batch, None)` (`0` being
    padding), and float logits `(batch, seq, vocabulary)` as output, and
    decodes one step at a time with a key/value cache:
    `init_cache(batch_size, max_length)` and `call_with_cache(token_ids,
    cache, cache_index)`. `keras_tfm.generation.Generator` drives any model
    with this protocol; it never looks up layers by name, so the layers'
    names are free.

    The embedding is called with `start_index=cache_index` when it is a
    `TokenAndPositionEmbedding`, so sinusoidal and learned positions follow
    the cache; rotary blocks rotate at the cache index themselves. A model
    whose graph has other pieces overrides `logits` (used by both the graph
    and the cached step), or `build_graph` and `call_with_cache` together;
    `Generator` compares one cached step with the full model when it
    starts, so a cached step that differs is an error, not a silent drift.

    Args:
        embedding: the token (and position) embedding, e.g. a
            `TokenAndPositionEmbedding`.
        blocks: list of decoder blocks without cross-attention
            (`TransformerDecoderBlock(..., cross_attention=False)`).
        final_norm: optional layer after the last block (pre-norm stacks).
        head: optional layer mapping the model width to vocabulary logits.
            `None` ties the output to the embedding's token table
            (`token_embedding(x, reverse=True)`).
        packed: whether the inputs are packed rows (see
            `keras_tfm.data.pack`): a dict of `token_ids`, `segment_ids`
            and `positions`; each token attends only to earlier tokens of
            its own segment and positions restart in each segment. The
            weights are those of the unpacked model (`set_weights` moves
            between the two) and the cached step is the same.
        padding_mask: whether padding is explicit: the inputs are a dict
            of `token_ids` and `padding_mask` (`(batch, seq)`, 1 or `True`
            at real tokens; keras-hub's names), and no token id means
            padding. This is how models of pretrained vocabularies, where
            id 0 is a real token, take their inputs
            (`keras_tfm.checkpoints.load` builds them so). The logits
            carry the padding mask as their Keras mask, so a compiled loss
            skips padded positions.
        pad_id: the id that pads prompts and generated rows, or None
            (the default) when every id is a real token: GPT-2's and
            Llama's id `0` is. With None and an embedding built with
            `mask_zero=True`, the `pad_id` property is `0`.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Example:

    >>> import numpy as np
    >>> from keras_tfm.layers import (TokenAndPositionEmbedding,
    ...                               TransformerDecoderBlock)
    >>> model = CausalLM(
    ...     TokenAndPositionEmbedding(50, 16, 16),
    ...     [TransformerDecoderBlock(num_heads=2, intermediate_dim=32,
    ...                              cross_attention=False)],
    ... )
    >>> ids = np.array([[4, 5, 6, 0]])
    >>> tuple(model(ids).shape)
    (1, 4, 50)
    >>> cache = model.init_cache(batch_size=1, max_length=8)
    >>> logits, cache = model.call_with_cache(ids[:, :3], cache, 0)
    >>> from keras import ops
    >>> full = ops.convert_to_numpy(model(ids))
    >>> bool(np.allclose(ops.convert_to_numpy(logits), full[:, :3],
    ...                  atol=1e-5))
    True
    """

    def __init__(
        self,
        embedding,
        blocks,
        final_norm=None,
        head=None,
        packed=False,
        padding_mask=False,
        pad_id=None,
        **kwargs,
    ):
        _parts.check_layer("embedding", embedding)
        blocks = _parts.check_blocks("blocks", blocks)
        _parts.check_no_cross_attention("blocks", blocks)
        _parts.check_layer("final_norm", final_norm, allow_none=True)
        _parts.check_layer("head", head, allow_none=True)
        if head is None:
            _parts.token_table("embedding", embedding)
        _parts.check_positions("embedding", embedding, "blocks", blocks)
        check_bool("packed", packed)
        _parts.check_padding_mask(padding_mask, packed)
        _parts.check_pad_id(pad_id, [embedding])
        self.embedding = embedding
        self.blocks = blocks
        self.final_norm = final_norm
        self.head = head
        self.packed = packed
        self.padding_mask = padding_mask
        if packed:
            inputs = _parts.packed_inputs()
        elif padding_mask:
            self.mask_logits = AttachMask(name="mask_logits")
            inputs = _parts.padded_inputs()
        else:
            inputs = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        outputs = self.build_graph(inputs)
        self.keras_init_starts()
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.track_early_attributes()
        self._pad_id = pad_id

    def build_graph(self, token_ids):
        """The functional graph: symbolic `token_ids` (a dict of packed
        inputs with `packed=True`, of token ids and padding mask with
        `padding_mask=True`) to logits."""
        if self.packed:
            x = _parts.embed_packed(
                "embedding",
                self.embedding,
                token_ids["token_ids"],
                token_ids["positions"],
            )
            x = _parts.run_packed_blocks(
                self.blocks, x, token_ids["segment_ids"], token_ids["positions"]
            )
            return self.logits(x)
        if self.padding_mask:
            padding_mask = token_ids["padding_mask"]
            x = self.embedding(token_ids["token_ids"])
            for block in self.blocks:
                x = block(x, decoder_padding_mask=padding_mask)
            return self.mask_logits([self.logits(x), padding_mask])
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x)
        return self.logits(x)

    def logits(self, x):
        """Final norm and output projection: `(..., dim)` to logits."""
        return _parts.project(
            x, self.final_norm, self.head, "embedding", self.embedding
        )

    @property
    def pad_id(self):
        """The padding id: the `pad_id` argument, else `0` when the
        embedding has `mask_zero=True`, else None (every id is real)."""
        return _parts.pad_id(self._pad_id, [self.embedding])

    @property
    def vocabulary_size(self):
        """The size of the output logits' last axis."""
        return _parts.output_size(self)

    @property
    def max_length(self):
        """The longest sequence the model embeds (a learned position
        table's length), or None when unbounded."""
        return _parts.position_limit(self.embedding)

    def init_cache(self, batch_size, max_length):
        """Empty key/value caches, one per block, for `max_length` tokens."""
        return _parts.empty_caches(self.blocks, batch_size, max_length)

    def call_with_cache(self, token_ids, cache, cache_index):
        """Run new tokens through the model, reading and writing the cache.

        Args:
            token_ids: int tensor `(batch, steps)`: the tokens at positions
                `cache_index, ..., cache_index + steps - 1`.
            cache: the caches from `init_cache` (or a previous call).
            cache_index: position of the first token (an int or a scalar
                int tensor).

        Returns:
            `(logits, cache)`: float logits `(batch, steps, vocabulary)`,
            equal to the full model's at those positions, and the updated
            cache.
        """
        _parts.check_cache(cache, self.blocks)
        x = _parts.embed(self.embedding, token_ids, cache_index)
        new_cache = []
        for block, block_cache in zip(self.blocks, cache, strict=True):
            x, block_cache = block(
                x, cache=block_cache, cache_index=cache_index, training=False
            )
            new_cache.append(block_cache)
        return self.logits(x), tuple(new_cache)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedding": _parts.serialize(self.embedding),
            "blocks": [_parts.serialize(block) for block in self.blocks],
            "final_norm": _parts.serialize(self.final_norm),
            "head": _parts.serialize(self.head),
            "packed": self.packed,
            "padding_mask": self.padding_mask,
            "pad_id": self._pad_id,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("embedding", "final_norm", "head"):
            config[key] = _parts.deserialize(config.get(key))
        config["blocks"] = [_parts.deserialize(b) for b in config["blocks"]]
        return cls(**config)
