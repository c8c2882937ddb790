"""keras_tfm: Keras 3 layers for building Transformers."""

from keras_tfm import (
    activations,
    checkpoints,
    data,
    distribution,
    export,
    generation,
    layers,
    losses,
    masks,
    metrics,
    models,
    plotting,
    sampling,
    schedules,
    search,
)
from keras_tfm.layers import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "activations",
    "checkpoints",
    "data",
    "distribution",
    "export",
    "generation",
    "layers",
    "losses",
    "masks",
    "metrics",
    "models",
    "plotting",
    "sampling",
    "schedules",
    "search",
    *layers.__all__,
]
