"""Public keras_tfm layers, one per file."""

from keras_tfm.layers.add_norm import AddNorm, RMSNormalization
from keras_tfm.layers.attention import MultiHeadAttention
from keras_tfm.layers.decoder import TransformerDecoderBlock
from keras_tfm.layers.embedding import TokenAndPositionEmbedding, TokenEmbedding
from keras_tfm.layers.encoder import TransformerEncoderBlock
from keras_tfm.layers.feed_forward import FeedForward
from keras_tfm.layers.pooling import SequencePooling
from keras_tfm.layers.position import (
    LearnedPositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionEncoding,
)

__all__ = [
    "AddNorm",
    "FeedForward",
    "LearnedPositionEmbedding",
    "MultiHeadAttention",
    "RMSNormalization",
    "RotaryEmbedding",
    "SequencePooling",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TokenEmbedding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
]
