"""Public keras_tfm layers, one per file."""

from keras_tfm.layers.add_norm import AddNorm
from keras_tfm.layers.embedding import TokenAndPositionEmbedding, TokenEmbedding
from keras_tfm.layers.feed_forward import FeedForward
from keras_tfm.layers.position import (
    LearnedPositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionEncoding,
)

__all__ = [
    "AddNorm",
    "FeedForward",
    "LearnedPositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TokenEmbedding",
]
