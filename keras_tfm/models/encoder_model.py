"""`EncoderModel`: an encoder-only (BERT-style) model composed from layers."""

import keras

from keras_tfm._masking import AttachMask
from keras_tfm.layers.pooling import SequencePooling
from keras_tfm.models import _parts


@keras.saving.register_keras_serializable(package="keras_tfm")
class EncoderModel(_parts.EarlyAttributes, _parts.IntegerTokenIds, keras.Model):
    """An encoder-only (BERT-style) Transformer composed from layers.

    Wires `embedding -> blocks -> final_norm` into a functional model whose
    inputs are keras-hub's: `token_ids` and `padding_mask` (`(batch, seq)`,
    1 or `True` at real tokens; no token id means padding), plus
    `segment_ids` when the embedding has a segment (token-type) table. The
    outputs are a dict: `sequence_output` `(batch, seq, dim)`, carrying
    the padding mask as its Keras mask, and, with a `pooler`,
    `pooled_output` `(batch, pooled_dim)`: the pooler applied to the first
    token's vector (BERT's `[CLS]` pooler is `Dense(dim, "tanh")`).

    Args:
        embedding: the token (and position, and segment) embedding, e.g. a
            `TokenAndPositionEmbedding` with `segment_vocabulary_size`.
        blocks: list of encoder blocks (`TransformerEncoderBlock`).
        final_norm: optional layer after the last block (pre-norm stacks).
        pooler: optional layer applied to the first token's vector.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Example:

    >>> import numpy as np
    >>> from keras_tfm.layers import (TokenAndPositionEmbedding,
    ...                               TransformerEncoderBlock)
    >>> model = EncoderModel(
    ...     TokenAndPositionEmbedding(50, 16, 16, mask_zero=False),
    ...     [TransformerEncoderBlock(num_heads=2, intermediate_dim=32)],
    ...     pooler=keras.layers.Dense(16, activation="tanh"),
    ... )
    >>> outputs = model({"token_ids": np.array([[4, 0, 6, 7]]),
    ...                  "padding_mask": np.array([[1, 1, 1, 0]])})
    >>> tuple(outputs["sequence_output"].shape)
    (1, 4, 16)
    >>> tuple(outputs["pooled_output"].shape)
    (1, 16)
    """

    def __init__(
        self, embedding, blocks, final_norm=None, pooler=None, **kwargs
    ):
        _parts.check_layer("embedding", embedding)
        blocks = _parts.check_blocks("blocks", blocks)
        _parts.check_layer("final_norm", final_norm, allow_none=True)
        _parts.check_layer("pooler", pooler, allow_none=True)
        _parts.check_positions("embedding", embedding, "blocks", blocks)
        self.embedding = embedding
        self.blocks = blocks
        self.final_norm = final_norm
        self.pooler = pooler
        self.mask_outputs = AttachMask(name="mask_outputs")
        if pooler is not None:
            self.first_token = SequencePooling("first", name="first_token")
        inputs = _parts.padded_inputs()
        if self.uses_segments:
            inputs["segment_ids"] = keras.Input(
                shape=(None,), dtype="int32", name="segment_ids"
            )
        outputs = self.build_graph(inputs)
        self.keras_init_starts()
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.track_early_attributes()

    @property
    def uses_segments(self):
        """Whether the embedding adds segment (token-type) vectors."""
        return bool(getattr(self.embedding, "segment_vocabulary_size", None))

    def build_graph(self, inputs):
        """The functional graph: the symbolic inputs dict to outputs."""
        padding_mask = inputs["padding_mask"]
        if self.uses_segments:
            x = self.embedding(
                inputs["token_ids"], segment_ids=inputs["segment_ids"]
            )
        else:
            x = self.embedding(inputs["token_ids"])
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        outputs = {"sequence_output": self.mask_outputs([x, padding_mask])}
        if self.pooler is not None:
            outputs["pooled_output"] = self.pooler(self.first_token(x))
        return outputs

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedding": _parts.serialize(self.embedding),
            "blocks": [_parts.serialize(block) for block in self.blocks],
            "final_norm": _parts.serialize(self.final_norm),
            "pooler": _parts.serialize(self.pooler),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("embedding", "final_norm", "pooler"):
            config[key] = _parts.deserialize(config.get(key))
        config["blocks"] = [_parts.deserialize(b) for b in config["blocks"]]
        return cls(**config)
