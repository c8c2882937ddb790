"""Argument checks shared by every layer: one wording, one place."""

import math
import operator

import keras
from keras import ops

from keras_tfm import _backend, activations

ACTIVATIONS_HINT = (
    'a name known to `keras.activations.get`, "gelu_approximate" or a callable'
)


def check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return value


def check_positive_number(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not value > 0
    ):
        raise ValueError(
            f"`{name}` must be a positive finite number. "
            f"Received: {name}={value!r}"
        )
    return value


def check_rate(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < 1
    ):
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def check_bool(name, value):
    """`value` if it is a Python bool; no truthiness (`"no"` is not False)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return value


def check_choice(name, value, choices):
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"`{name}` must be one of {listed}. Received: {name}={value!r}"
        )
    return value


def check_activation(name, value):
    try:
        activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be {ACTIVATIONS_HINT}. Received: {name}={value!r}"
        ) from error
    return value


def check_initializer(name, value):
    """The initializer `keras.initializers.get(value)`, or a ValueError."""
    try:
        return keras.initializers.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a Keras initializer or its name. "
            f"Received: {name}={value!r}"
        ) from error


def clone_initializer(initializer):
    """A new instance of `initializer`, for one more sublayer.

    Keras warns when one unseeded initializer instance creates several
    variables, and returns the same values each time; a clone of an
    unseeded initializer draws its own values. A seeded one keeps its seed
    (and so its values), as in Keras-Hub. Plain callables are returned
    as they are.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    return initializer.__class__.from_config(initializer.get_config())


def check_rank(layer, name, shape, ranks):
    if len(shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{type(layer).__name__} expects `{name}` of rank {expected}. "
            f"Received: {name} with shape {tuple(shape)}"
        )


def as_shape(value):
    """`value` as a tuple of ints and `None`s, or `None` if not a shape.

    Accepts any shape sequence: tuples, lists, `tf.TensorShape`,
    `torch.Size`, with Python or NumPy integer sizes; strings, scalars
    and nested sequences are not shapes.
    """
    if isinstance(value, (str, bytes)):
        return None
    try:
        dims = tuple(value)
    except (TypeError, ValueError):  # not iterable; unknown-rank TensorShape
        return None
    shape = []
    for dim in dims:
        if dim is None:
            shape.append(None)
        elif isinstance(dim, bool) or not hasattr(dim, "__index__"):
            return None
        else:
            shape.append(operator.index(dim))
    return tuple(shape)


def shapes_compatible(shape, expected, broadcast_axes=()):
    """Whether `shape` can stand for `expected`, axis by axis.

    Same rank; on each axis the sizes are equal, or one of them is unknown
    (`None`), or the axis is in `broadcast_axes` and `shape` has size 1.
    """
    shape, expected = tuple(shape), tuple(expected)
    if len(shape) != len(expected):
        return False
    return all(
        got is None
        or want is None
        or got == want
        or (axis in broadcast_axes and got == 1)
        for axis, (got, want) in enumerate(zip(shape, expected, strict=True))
    )


def is_integer_dtype(dtype, allow_bool=False):
    """Whether `dtype` is a (signed or unsigned) integer dtype.

    `bool` counts only with `allow_bool=True` (`keras_tfm.masks` reads
    boolean ids as 0/1; embeddings do not).
    """
    dtype = keras.backend.standardize_dtype(dtype)
    return "int" in dtype or (allow_bool and dtype == "bool")


def concrete_value(tensor):
    """`tensor` as a NumPy array when it holds values, else `None`.

    Eager tensors (TensorFlow and JAX outside a traced function, PyTorch
    always) hold values; inside `tf.function`, `jax.jit` or a symbolic
    shape inference they do not, and no Keras op can raise at run time
    there. The cost is one device-to-host copy of `tensor`. Under
    `torch.compile` the values exist, but reading them would break the
    graph and check only the batch traced, so they count as unknown too.
    """
    if _backend.torch_compiling():
        return None
    try:
        return ops.convert_to_numpy(tensor)
    except (TypeError, NotImplementedError, RuntimeError):
        # TypeError: a JAX tracer; NotImplementedError: a symbolic
        # TensorFlow tensor or a PyTorch "meta" tensor.
        return None


def dtype_policy_config(layer, sublayers):
    """`layer`'s dtype policy for `get_config`, naming quantized sublayers.

    Sublayers created in `build` with `dtype=layer.dtype_policy` are not in
    the config, so after `model.quantize(...)` a reloaded layer would build
    them unquantized and fail to load their int8/int4 weights. As Keras's
    `DTypePolicyMap` docs show, the config then holds a map from each
    quantized sublayer's path to its policy, with the layer's own policy
    as the default; the rebuilt sublayers receive the map as their dtype
    and look themselves up in it. A map (from a quantized parent) is
    already updated in place by `quantize` and is returned as it is.
    """
    policy = layer.dtype_policy
    quantized = {
        sublayer.path: sublayer.dtype_policy
        for sublayer in sublayers
        if sublayer is not None and sublayer.quantization_mode is not None
    }
    if quantized and not isinstance(
        policy, keras.dtype_policies.DTypePolicyMap
    ):
        policy = keras.dtype_policies.DTypePolicyMap(
            default_policy=policy, policy_map=quantized
        )
    return keras.dtype_policies.serialize(policy)
