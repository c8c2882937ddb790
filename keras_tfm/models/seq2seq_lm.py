"""`Seq2SeqLM`: an encoder-decoder model that owns its cached step."""

from typing import NamedTuple

import keras
from keras import ops

from keras_tfm._masking import AttachMask
from keras_tfm._validation import check_bool
from keras_tfm.models import _parts


class Seq2SeqCache(NamedTuple):
    """The cached state of an encoder-decoder's decoding.

    Attributes:
        decoder: the decoder blocks' self-attention caches, written at
            every step.
        encoder: the cross-attention caches, one per decoder block, each
            `(keys_and_values, source_padding_mask)`; computed once by
            `Seq2SeqLM.encode` and only read afterwards.
    """

    decoder: tuple
    encoder: tuple


@keras.saving.register_keras_serializable(package="keras_tfm")
class Seq2SeqLM(_parts.EarlyAttributes, _parts.IntegerTokenIds, keras.Model):
    """An encoder-decoder Transformer composed from layers.

    Wires the encoder (`encoder_embedding -> encoder_blocks ->
    encoder_final_norm`) and the decoder (`decoder_embedding ->
    decoder_blocks -> decoder_final_norm -> head`, each decoder block
    attending to the encoder outputs) into a functional model whose inputs
    are a dict of integer `(batch, None)` tensors, `"encoder_token_ids"`
    and `"decoder_token_ids"` (`0` being padding), and whose output is
    float logits `(batch, target_len, vocabulary)`.

    It owns its cached step: `encode(encoder_token_ids, max_length)` runs
    the encoder once and returns the initial `Seq2SeqCache`: the decoder's
    empty self-attention caches and the encoder outputs projected once per
    decoder block (the cross-attention caches, which carry the source
    padding mask); `call_with_cache(token_ids, cache, cache_index)` runs
    new decoder tokens, with the same signature as `CausalLM`'s.
    `keras_tfm.generation.Generator` drives any model with this protocol
    and never looks up layer names.

    Args:
        encoder_embedding: embedding of the source ids.
        encoder_blocks: list of encoder blocks.
        decoder_embedding: embedding of the target ids (may share its
            `TokenEmbedding` with `encoder_embedding`).
        decoder_blocks: list of decoder blocks with cross-attention.
        encoder_final_norm: optional layer after the last encoder block.
        decoder_final_norm: optional layer after the last decoder block.
        head: optional layer mapping the model width to target logits.
            `None` ties the output to the decoder embedding's token table.
        packed: whether the inputs are packed pairs (see
            `keras_tfm.data.pack_pairs`): `encoder_`/`decoder_` `token_ids`,
            `segment_ids` and `positions`; a pair shares its segment id on
            both sides and attends only within it. Same weights and cached
            step as the unpacked model.
        padding_mask: whether padding is explicit (pretrained
            vocabularies, where id 0 is a real token): the inputs are
            `encoder_token_ids`, `encoder_padding_mask`,
            `decoder_token_ids` and `decoder_padding_mask` (masks 1 or
            `True` at real tokens), and the logits carry the decoder
            padding mask as their Keras mask.
        pad_id: the id that pads sources, decoder prompts and generated
            rows, or None (the default) when every id is a real token.
            With None and an embedding built with `mask_zero=True`, the
            `pad_id` property is `0`.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Example:

    >>> import numpy as np
    >>> from keras_tfm.layers import (TokenAndPositionEmbedding,
    ...     TokenEmbedding, TransformerDecoderBlock, TransformerEncoderBlock)
    >>> table = TokenEmbedding(40, 16)
    >>> model = Seq2SeqLM(
    ...     TokenAndPositionEmbedding(40, 16, 16, token_embedding=table),
    ...     [TransformerEncoderBlock(num_heads=2, intermediate_dim=32)],
    ...     TokenAndPositionEmbedding(40, 16, 16, token_embedding=table),
    ...     [TransformerDecoderBlock(num_heads=2, intermediate_dim=32)],
    ... )
    >>> inputs = {"encoder_token_ids": np.array([[4, 5, 6, 0]]),
    ...           "decoder_token_ids": np.array([[1, 7, 8]])}
    >>> tuple(model(inputs).shape)
    (1, 3, 40)
    >>> cache = model.encode(inputs["encoder_token_ids"], max_length=5)
    >>> logits, cache = model.call_with_cache(
    ...     inputs["decoder_token_ids"], cache, 0)
    >>> from keras import ops
    >>> bool(np.allclose(ops.convert_to_numpy(logits),
    ...                  ops.convert_to_numpy(model(inputs)), atol=1e-5))
    True
    """

    def __init__(
        self,
        encoder_embedding,
        encoder_blocks,
        decoder_embedding,
        decoder_blocks,
        encoder_final_norm=None,
        decoder_final_norm=None,
        head=None,
        packed=False,
        padding_mask=False,
        pad_id=None,
        **kwargs,
    ):
        _parts.check_layer("encoder_embedding", encoder_embedding)
        encoder_blocks = _parts.check_blocks("encoder_blocks", encoder_blocks)
        _parts.check_layer("decoder_embedding", decoder_embedding)
        decoder_blocks = _parts.check_blocks("decoder_blocks", decoder_blocks)
        for name, layer in (
            ("encoder_final_norm", encoder_final_norm),
            ("decoder_final_norm", decoder_final_norm),
            ("head", head),
        ):
            _parts.check_layer(name, layer, allow_none=True)
        if head is None:
            _parts.token_table("decoder_embedding", decoder_embedding)
        _parts.check_positions(
            "encoder_embedding",
            encoder_embedding,
            "encoder_blocks",
            encoder_blocks,
        )
        check_bool("packed", packed)
        _parts.check_padding_mask(padding_mask, packed)
        _parts.check_pad_id(pad_id, [encoder_embedding, decoder_embedding])
        _parts.check_positions(
            "decoder_embedding",
            decoder_embedding,
            "decoder_blocks",
            decoder_blocks,
        )
        self.encoder_embedding = encoder_embedding
        self.encoder_blocks = encoder_blocks
        self.decoder_embedding = decoder_embedding
        self.decoder_blocks = decoder_blocks
        self.encoder_final_norm = encoder_final_norm
        self.decoder_final_norm = decoder_final_norm
        self.head = head
        self.packed = packed
        self.padding_mask = padding_mask
        if packed:
            inputs = {
                **_parts.packed_inputs("encoder_"),
                **_parts.packed_inputs("decoder_"),
            }
        elif padding_mask:
            self.mask_logits = AttachMask(name="mask_logits")
            inputs = {
                **_parts.padded_inputs("encoder_"),
                **_parts.padded_inputs("decoder_"),
            }
        else:
            inputs = {
                "encoder_token_ids": keras.Input(
                    shape=(None,), dtype="int32", name="encoder_token_ids"
                ),
                "decoder_token_ids": keras.Input(
                    shape=(None,), dtype="int32", name="decoder_token_ids"
                ),
            }
        outputs = self.build_graph(inputs)
        self.keras_init_starts()
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.track_early_attributes()
        self._pad_id = pad_id

    def build_graph(self, inputs):
        """The functional graph: the symbolic inputs dict to logits."""
        if self.packed:
            return self._packed_graph(inputs)
        if self.padding_mask:
            return self._padded_graph(inputs)
        encoded = self.encoder_outputs(inputs["encoder_token_ids"])
        x = self.decoder_embedding(inputs["decoder_token_ids"])
        for block in self.decoder_blocks:
            x = block(x, encoded)
        return self.logits(x)

    def _padded_graph(self, inputs):
        source_padding = inputs["encoder_padding_mask"]
        target_padding = inputs["decoder_padding_mask"]
        encoded = self.encoder_outputs(
            inputs["encoder_token_ids"], padding_mask=source_padding
        )
        x = self.decoder_embedding(inputs["decoder_token_ids"])
        for block in self.decoder_blocks:
            x = block(
                x,
                encoded,
                decoder_padding_mask=target_padding,
                encoder_padding_mask=source_padding,
            )
        return self.mask_logits([self.logits(x), target_padding])

    def _packed_graph(self, inputs):
        source_segments = inputs["encoder_segment_ids"]
        target_segments = inputs["decoder_segment_ids"]
        x = _parts.embed_packed(
            "encoder_embedding",
            self.encoder_embedding,
            inputs["encoder_token_ids"],
            inputs["encoder_positions"],
        )
        encoded = _parts.run_packed_blocks(
            self.encoder_blocks, x, source_segments, inputs["encoder_positions"]
        )
        if self.encoder_final_norm is not None:
            encoded = self.encoder_final_norm(encoded)
        x = _parts.embed_packed(
            "decoder_embedding",
            self.decoder_embedding,
            inputs["decoder_token_ids"],
            inputs["decoder_positions"],
        )
        for block in self.decoder_blocks:
            x = block(
                x,
                encoded,
                segment_ids=target_segments,
                encoder_segment_ids=source_segments,
                positions=inputs["decoder_positions"],
            )
        return self.logits(x)

    def encoder_outputs(
        self, encoder_token_ids, padding_mask=None, training=None
    ):
        """Encoder embedding, blocks and final norm. The padding is
        `padding_mask` when given, else the embedding's Keras mask."""
        x = self.encoder_embedding(encoder_token_ids, training=training)
        for block in self.encoder_blocks:
            if padding_mask is None:
                x = block(x, training=training)
            else:
                x = block(x, padding_mask=padding_mask, training=training)
        if self.encoder_final_norm is not None:
            x = self.encoder_final_norm(x, training=training)
        return x

    def logits(self, x):
        """Final norm and output projection: `(..., dim)` to logits."""
        return _parts.project(
            x,
            self.decoder_final_norm,
            self.head,
            "decoder_embedding",
            self.decoder_embedding,
        )

    @property
    def pad_id(self):
        """The padding id: the `pad_id` argument, else `0` when an
        embedding has `mask_zero=True`, else None (every id is real)."""
        return _parts.pad_id(
            self._pad_id, [self.encoder_embedding, self.decoder_embedding]
        )

    @property
    def vocabulary_size(self):
        """The size of the output (target) logits' last axis."""
        return _parts.output_size(self)

    @property
    def max_length(self):
        """The longest target the decoder embeds (a learned position
        table's length), or None when unbounded."""
        return _parts.position_limit(self.decoder_embedding)

    @property
    def encoder_vocabulary_size(self):
        """How many source ids the encoder embeds, or None if unknown."""
        return _parts.input_vocabulary(self.encoder_embedding)

    @property
    def encoder_max_length(self):
        """The longest source the encoder embeds, or None when unbounded."""
        return _parts.position_limit(self.encoder_embedding)

    def encode(self, encoder_token_ids, max_length, padding_mask=None):
        """Run the encoder once; return the initial cache of decoding.

        Args:
            encoder_token_ids: int tensor `(batch, source_len)`.
            max_length: how many decoder tokens the cache holds.
            padding_mask: optional boolean `(batch, source_len)`, `False`
                at padding. By default the encoder embedding's mask
                (`mask_zero=True`), or every token real.

        Returns:
            A `Seq2SeqCache`: the decoder's empty self-attention caches
            and the cross-attention caches, one per decoder block (each
            `(keys_and_values, source_padding_mask)` from
            `TransformerDecoderBlock.compute_cross_attention_cache`). Pass
            it to `call_with_cache`.
        """
        encoder_token_ids = ops.convert_to_tensor(encoder_token_ids, "int32")
        if padding_mask is None:
            padding = self.encoder_embedding.compute_mask(encoder_token_ids)
            if padding is None:
                padding = ops.ones(ops.shape(encoder_token_ids), "bool")
        else:
            padding = ops.cast(padding_mask, "bool")
        x = self.encoder_outputs(
            encoder_token_ids, padding_mask=padding_mask, training=False
        )
        batch_size = ops.shape(encoder_token_ids)[0]
        return Seq2SeqCache(
            decoder=self.init_cache(batch_size, max_length),
            encoder=tuple(
                block.compute_cross_attention_cache(x, padding)
                for block in self.decoder_blocks
            ),
        )

    def init_cache(self, batch_size, max_length):
        """Empty decoder self-attention caches for `max_length` tokens
        (the `decoder` part of what `encode` returns)."""
        return _parts.empty_caches(self.decoder_blocks, batch_size, max_length)

    def call_with_cache(self, token_ids, cache, cache_index):
        """Run new decoder tokens, reading and writing the cache.

        Args:
            token_ids: int tensor `(batch, steps)`: the decoder tokens at
                positions `cache_index, ..., cache_index + steps - 1`.
            cache: the `Seq2SeqCache` from `encode` (or a previous call).
            cache_index: position of the first token.

        Returns:
            `(logits, cache)`: float logits `(batch, steps, vocabulary)`,
            equal to the full model's at those positions, and the updated
            cache.
        """
        if not isinstance(cache, Seq2SeqCache):
            raise ValueError(
                "`cache` must be the `Seq2SeqCache` that `encode` returns. "
                f"Received: cache of type {type(cache).__name__}"
            )
        _parts.check_cache(cache.decoder, self.decoder_blocks)
        x = _parts.embed(self.decoder_embedding, token_ids, cache_index)
        new_cache = []
        for block, block_cache, source in zip(
            self.decoder_blocks, cache.decoder, cache.encoder, strict=True
        ):
            x, block_cache = block(
                x,
                cache=block_cache,
                cache_index=cache_index,
                cross_attention_cache=source,
                training=False,
            )
            new_cache.append(block_cache)
        return self.logits(x), cache._replace(decoder=tuple(new_cache))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder_embedding": _parts.serialize(self.encoder_embedding),
            "encoder_blocks": [
                _parts.serialize(block) for block in self.encoder_blocks
            ],
            "decoder_embedding": _parts.serialize(self.decoder_embedding),
            "decoder_blocks": [
                _parts.serialize(block) for block in self.decoder_blocks
            ],
            "encoder_final_norm": _parts.serialize(self.encoder_final_norm),
            "decoder_final_norm": _parts.serialize(self.decoder_final_norm),
            "head": _parts.serialize(self.head),
            "packed": self.packed,
            "padding_mask": self.padding_mask,
            "pad_id": self._pad_id,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder_embedding = _parts.deserialize(config["encoder_embedding"])
        config["encoder_embedding"] = encoder_embedding
        config["decoder_embedding"] = _parts.deserialize(
            _shared_table(config["decoder_embedding"], encoder_embedding)
        )
        for key in ("encoder_final_norm", "decoder_final_norm", "head"):
            config[key] = _parts.deserialize(config.get(key))
        for key in ("encoder_blocks", "decoder_blocks"):
            config[key] = [_parts.deserialize(b) for b in config[key]]
        return cls(**config)


def _shared_table(decoder_config, encoder_embedding):
    """The decoder embedding's config, with the encoder's live table in it
    when the two were built on one `TokenEmbedding` (its serialized config
    is then the same in both), so one table comes back, not two."""
    if not isinstance(decoder_config, dict):
        return decoder_config
    inner = decoder_config.get("config", {})
    table = inner.get("token_embedding")
    encoder_table = getattr(encoder_embedding, "token_embedding", None)
    if not isinstance(table, dict) or encoder_table is None:
        return decoder_config
    if table.get("config", {}).get("name") != encoder_table.name:
        return decoder_config
    if table.get("class_name") != type(encoder_table).__name__:
        return decoder_config
    return {
        **decoder_config,
        "config": {**inner, "token_embedding": encoder_table},
    }
