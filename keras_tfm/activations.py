"""Activations keras_tfm adds to Keras's, looked up by name in its layers.

`keras.activations.get` does not look registered custom functions up by a
plain name, so the layers resolve activation arguments with `get` here:
Keras's names and callables as before, plus the names below. `serialize`
gives those names back, so configs and `.keras` files hold the plain name.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(
    package="keras_tfm", name="gelu_approximate"
)
def gelu_approximate(x):
    """GELU with the tanh approximation (GPT-2's `gelu_new`).

    `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))`, as
    transformers' `NewGELUActivation` (`"gelu_new"`) and
    `torch.nn.functional.gelu(x, approximate="tanh")`.

    Args:
        x: float tensor.

    Returns:
        Tensor of the same shape and dtype.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> round(float(ops.convert_to_numpy(gelu_approximate(np.float32(1)))), 4)
    0.8412

    References:
        Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016.
    """
    return ops.gelu(x, approximate=True)


ACTIVATIONS = {"gelu_approximate": gelu_approximate}


def get(identifier):
    """The activation named `identifier` here or in Keras, or a callable.

    Example:

    >>> get("gelu_approximate") is gelu_approximate
    True
    >>> get("relu") is keras.activations.relu
    True
    """
    if isinstance(identifier, str) and identifier in ACTIVATIONS:
        return ACTIVATIONS[identifier]
    if isinstance(identifier, dict):
        config = identifier.get("config")
        name = config.split(">")[-1] if isinstance(config, str) else None
        if name in ACTIVATIONS:
            return ACTIVATIONS[name]
    return keras.activations.get(identifier)


def serialize(activation):
    """The plain name of an activation of this module, else Keras's form.

    Example:

    >>> serialize(gelu_approximate), serialize(keras.activations.relu)
    ('gelu_approximate', 'relu')
    """
    for name, function in ACTIVATIONS.items():
        if activation is function:
            return name
    _check_named(activation)
    return keras.activations.serialize(activation)


def _check_named(activation):
    """Raise for a lambda or a function defined inside another function.

    Neither can be found again by name when a `.keras` file is loaded,
    where the error would name only the layer's `from_config`; saving
    (`get_config`) names the callable instead.
    """
    name = getattr(activation, "__name__", None)
    qualified = getattr(activation, "__qualname__", "") or ""
    if name == "<lambda>" or "<locals>" in qualified:
        raise ValueError(
            f"Cannot save the unnamed activation callable {activation!r} "
            f"({qualified or name}): a `.keras` file could not load it "
            'back. Pass a registered name, such as "gelu_approximate", '
            '"gelu" or "silu", or a module-level function decorated with '
            "`@keras.saving.register_keras_serializable()`."
        )
