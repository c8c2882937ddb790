"""keras_tfm: Keras 3 layers for building Transformers."""

from keras_tfm import layers, masks, models
from keras_tfm.layers import *  # noqa: F403

__version__ = "0.1.0"

__all__ = ["layers", "masks", "models", *layers.__all__]
