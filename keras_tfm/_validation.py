"""Argument checks shared by every layer: one wording, one place."""

import keras

ACTIVATIONS_HINT = "a name known to `keras.activations.get` or a callable"


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
        or not value > 0
    ):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
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


def check_choice(name, value, choices):
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"`{name}` must be one of {listed}. Received: {name}={value!r}"
        )
    return value


def check_activation(name, value):
    try:
        keras.activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be {ACTIVATIONS_HINT}. Received: {name}={value!r}"
        ) from error
    return value


def check_rank(layer, name, shape, ranks):
    if len(shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{type(layer).__name__} expects `{name}` of rank {expected}. "
            f"Received: {name} with shape {tuple(shape)}"
        )


def is_integer_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return "int" in dtype
