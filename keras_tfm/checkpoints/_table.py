"""Name tables: how a checkpoint's tensors become our variables and back.

A model type is a `ModelType`: how to build our model from the checkpoint's
`config.json`, and a table of `Weight` rows, each naming one checkpoint
tensor, the variables it fills (attribute paths on the model, such as
`"blocks[0].self_attention.query_dense.kernel"`, so the layers' names are
free) and the `Transform` between the two layouts. Loading and saving both
read the same rows, so a new model type is mostly a table.
"""

import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Transform(NamedTuple):
    """`load(array) -> arrays` for the targets, `save(arrays) -> array`."""

    load: Callable
    save: Callable


IDENTITY = Transform(lambda a: [a], lambda arrays: arrays[0])
# torch.nn.Linear stores (out, in); a Keras Dense kernel is (in, out).
LINEAR = Transform(lambda a: [a.T], lambda arrays: arrays[0].T)


def split_columns(parts):
    """One fused tensor (GPT-2's `c_attn`: query, key and value side by
    side on the last axis) to `parts` variables."""
    return Transform(
        lambda a: np.split(a, parts, axis=-1),
        lambda arrays: np.concatenate(arrays, axis=-1),
    )


def drop_rows(count):
    """A position table whose first `count` rows are never read (BART
    offsets its learned positions by 2); they are written back as zeros."""
    return Transform(
        lambda a: [a[count:]],
        lambda arrays: np.concatenate(
            [np.zeros((count,) + arrays[0].shape[1:], arrays[0].dtype)]
            + list(arrays),
            axis=0,
        ),
    )


class Weight(NamedTuple):
    """One checkpoint tensor and the variables it fills."""

    checkpoint: str
    targets: tuple
    transform: Transform = IDENTITY
    # A tensor that fills no variable and that some checkpoints leave out.
    optional: bool = False


def rows(checkpoint, targets, transform=IDENTITY, layers=None, optional=False):
    """Table rows; with `layers`, one per layer, `{i}` filled in."""
    if isinstance(targets, str):
        targets = (targets,)
    if layers is None:
        return [Weight(checkpoint, tuple(targets), transform, optional)]
    return [
        Weight(
            checkpoint.format(i=i),
            tuple(t.format(i=i) for t in targets),
            transform,
            optional,
        )
        for i in range(layers)
    ]


class ModelType(NamedTuple):
    """What `checkpoints.load` and `save` need to know of one model type.

    Attributes:
        build: `build(config, names, dtype) -> model`; `names` are the
            checkpoint's tensor names (prefix removed), for parts that are
            optional in a checkpoint (BERT's pooler).
        table: `table(config, model) -> [Weight, ...]`.
        prefixes: the name prefixes checkpoints of this type use; the
            first is the one `save` writes (the task model of
            `architecture`).
        architecture: the `transformers` class `save` names in
            `config.json`.
        ignored: regexes of checkpoint tensors that are not weights (the
            buffers some versions of `transformers` save).
        checks: `check(config)` raising `ValueError` on an option we do
            not support.
    """

    build: Callable
    table: Callable
    prefixes: tuple
    architecture: str
    ignored: tuple = ()
    checks: Callable = None


_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


def resolve(model, path):
    """The object at an attribute path like `blocks[0].feed_forward.kernel`."""
    value = model
    for part in path.split("."):
        match = _PART.fullmatch(part)
        name, index = match.group(1), match.group(2)
        value = getattr(value, name)
        if index is not None:
            value = value[int(index)]
    return value


def config_value(config, key, default=None):
    """`config[key]`, or `default` when absent or null."""
    value = config.get(key)
    return default if value is None else value


def unsupported(config, key, value, supported):
    raise ValueError(
        f"`{key}` is not supported for model_type "
        f"{config.get('model_type')!r}: keras_tfm supports {supported}. "
        f"Received: {key}={value!r}"
    )


def require(config, key, allowed, default=None):
    """Raise a `ValueError` naming `key` unless its value is in `allowed`."""
    value = config.get(key, default)
    if value not in allowed:
        supported = " or ".join(repr(a) for a in allowed)
        unsupported(config, key, value, supported)
    return value


ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "gelu_fast": "gelu_approximate",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}


def activation(config, key):
    """Our activation name for a `transformers` activation name."""
    value = config.get(key)
    if value not in ACTIVATIONS:
        supported = ", ".join(sorted(ACTIVATIONS))
        unsupported(config, key, value, f"one of {supported}")
    return ACTIVATIONS[value]
