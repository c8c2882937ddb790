"""Training on several devices with the engines Keras already supports.

keras_tfm models are plain Keras models, so they train unchanged under
`tf.distribute.MirroredStrategy` / `MultiWorkerMirroredStrategy`
(TensorFlow backend) and `keras.distribution.DataParallel` (JAX backend).
This module holds the two things that are not already Keras's job:

- `global_sum` and `masked_global_mean`, the reduction a masked loss needs
  to give the same value on several replicas as on one device. Under
  `tf.distribute` Keras reduces each replica's loss on its own and then
  averages the replicas, so replicas holding different amounts of padding
  weigh their real tokens differently; dividing each replica's sum by the
  count of real tokens over *all* replicas fixes it. Under JAX
  `DataParallel` the step is one program over the global batch, so the
  local sum and count already are global.
- `strategy_scope(name)` and `resolve_jit_compile`, used by the example
  scripts' `--distribute {none,mirrored,multi-worker,data-parallel}` flag.

It also holds `layout_map`, the `keras.distribution.LayoutMap` that shards
a model built from our layers Megatron-style under
`keras.distribution.ModelParallel` (JAX backend).
"""

import contextlib
import json
import os
import re

import keras
from keras import ops

from keras_tfm.layers.attention import MultiHeadAttention
from keras_tfm.layers.embedding import TokenEmbedding
from keras_tfm.layers.feed_forward import FeedForward

DISTRIBUTE_CHOICES = ("none", "mirrored", "multi-worker", "data-parallel")

_BACKENDS = {
    "mirrored": "tensorflow",
    "multi-worker": "tensorflow",
    "data-parallel": "jax",
}

XLA_NOTE = (
    "XLA (jit_compile=True) is turned off under tf.distribute: "
    "TensorFlow compiles a jit_compile function for one device, and a "
    "step that spans several replicas fails with 'Trying to access "
    "resource ... located in device CPU:1 from device CPU:0' (Keras's own "
    "jit_compile='auto' turns XLA off under tf.distribute too)."
)


def _replica_context():
    """The `tf.distribute` replica context of a multi-replica step, or None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def global_sum(value):
    """Sum `value` over the replicas of a `tf.distribute` step.

    Inside `strategy.run` (as in `model.fit` under a `tf.distribute`
    strategy with several replicas) this is an all-reduce SUM; everywhere
    else (one device, JAX `DataParallel`, PyTorch) `value` is returned
    unchanged, since there it already covers the whole batch.

    Args:
        value: a tensor, typically a count that carries no gradient.

    Returns:
        The sum of `value` over all replicas.

    Example:

    >>> import numpy as np
    >>> float(global_sum(np.float32(3.0)))
    3.0
    """
    context = _replica_context()
    if context is None:
        return value
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def masked_global_mean(values, mask=None, sample_weight=None):
    """Sum of weighted `values` over real tokens / real tokens globally.

    The value returned on each replica is its own weighted sum divided by
    the count of real tokens over all replicas, so the replicas' values add
    up to the mean over every real token of the global batch; Keras sums
    the replicas' gradients, so the gradient is that of one device too. On
    one device this is `sum(values * sample_weight * mask) / sum(mask)`,
    what Keras's `"sum_over_batch_size"` reduction gives for a masked loss.

    Args:
        values: per-token losses, any shape.
        mask: optional boolean mask of `values`' shape; `True` is real.
        sample_weight: optional weights, `(batch,)` or broadcastable to
            `values`.

    Returns:
        A float32 scalar (0 when there is no real token).

    Example:

    >>> import numpy as np
    >>> values = np.array([[1.0, 3.0, 9.0]], "float32")
    >>> mask = np.array([[True, True, False]])
    >>> float(masked_global_mean(values, mask))
    2.0
    """
    values = ops.cast(values, "float32")
    weights = ops.ones_like(values)
    if mask is not None:
        weights = ops.cast(ops.broadcast_to(mask, ops.shape(values)), "float32")
    count = ops.sum(weights)
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        while len(sample_weight.shape) < len(values.shape):
            # (batch,) -> (batch, 1, ...)
            sample_weight = ops.expand_dims(sample_weight, -1)
        weights = weights * sample_weight
    total = ops.sum(values * weights)
    count = ops.stop_gradient(global_sum(count))
    return ops.divide_no_nan(total, count)


def check_distribute(name):
    """Validate a `--distribute` choice against the Keras backend.

    Raises:
        ValueError: for an unknown name, a strategy the backend has no
            engine for, or `"multi-worker"` without `TF_CONFIG`.

    Example:

    >>> check_distribute("none")
    'none'
    >>> check_distribute("ring")
    Traceback (most recent call last):
    ...
    ValueError: `distribute` must be one of ...
    """
    if name not in DISTRIBUTE_CHOICES:
        listed = ", ".join(repr(c) for c in DISTRIBUTE_CHOICES)
        raise ValueError(
            f"`distribute` must be one of {listed}. Received: "
            f"distribute={name!r}"
        )
    backend = keras.backend.backend()
    needed = _BACKENDS.get(name)
    if needed is not None and backend != needed:
        raise ValueError(
            f"`distribute={name!r}` needs the {needed} backend "
            f"(KERAS_BACKEND={needed}). Received: backend={backend!r}"
        )
    if name == "multi-worker":
        try:
            config = json.loads(os.environ.get("TF_CONFIG", ""))
            config["cluster"]["worker"], config["task"]["index"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                "`distribute='multi-worker'` needs TF_CONFIG describing the "
                'cluster, e.g. TF_CONFIG=\'{"cluster": {"worker": '
                '["host1:12345", "host2:12345"]}, "task": {"type": '
                '"worker", "index": 0}}\'. Received: TF_CONFIG='
                f"{os.environ.get('TF_CONFIG')!r}"
            ) from None
    return name


def multi_worker_strategy(**kwargs):
    """A `tf.distribute.MultiWorkerMirroredStrategy` that Keras 3 can fit.

    Keras 3's TensorFlow trainer hands the first input batch, a nested
    structure, to `strategy.reduce` before training; with more than one
    worker `MultiWorkerMirroredStrategy.reduce` accepts single tensors only
    and `fit` fails with "Attempt to convert a value ({...: PerReplica...})
    with an unsupported type" (keras-team/keras#20585); after each step it
    averages the scalar loss with `axis=0`, which fails with "Invalid
    reduction dimension 0 for input with 0 dimensions"
    (tensorflow/tensorflow#72388). This strategy reduces a nest leaf by
    leaf and a scalar across replicas, and is otherwise the TensorFlow one.
    Create it at program start, before TensorFlow runs anything else.

    Args:
        **kwargs: passed to `tf.distribute.MultiWorkerMirroredStrategy`.

    Returns:
        The strategy; the cluster comes from `TF_CONFIG`.

    Example (not run here: it needs `TF_CONFIG` and every worker started;
    `tests/test_examples.py` runs two workers on 127.0.0.1):

    >>> strategy = multi_worker_strategy()  # doctest: +SKIP
    >>> with strategy.scope():  # doctest: +SKIP
    ...     model = keras.Sequential([keras.layers.Dense(1)])
    """
    import tensorflow as tf

    class _KerasFitStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            parent = super()

            def reduce_one(v):
                local = self.experimental_local_results(v)[0]
                # Keras averages scalar metrics with axis=0.
                leaf_axis = None if local.shape.rank == 0 else axis
                return parent.reduce(reduce_op, v, leaf_axis)

            return tf.nest.map_structure(reduce_one, value)

    return _KerasFitStrategy(**kwargs)


def mirrored_strategy():
    """A `tf.distribute.MirroredStrategy` over every local accelerator.

    `tf.distribute.MirroredStrategy()` mirrors over the GPUs, or with none
    over the first CPU only; this one falls back to every logical CPU
    device (one, unless the process split the CPU with
    `tf.config.set_logical_device_configuration` before TensorFlow ran).

    Returns:
        The strategy (TensorFlow backend).

    Example:

    >>> strategy = mirrored_strategy()
    >>> strategy.num_replicas_in_sync >= 1
    True
    """
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU")
    devices = devices or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def strategy_scope(name):
    """A context manager to build and compile a model in, for `name`.

    - `"none"`: one device (a no-op scope).
    - `"mirrored"`: `mirrored_strategy()`, over the local GPUs or else
      every logical CPU (TensorFlow backend).
    - `"multi-worker"`: `tf.distribute.MultiWorkerMirroredStrategy`, the
      cluster read from `TF_CONFIG` (TensorFlow backend). Create it before
      TensorFlow runs anything else.
    - `"data-parallel"`: sets `keras.distribution.DataParallel` over every
      local device as the global distribution (JAX backend) and enters its
      scope.

    Models built under the scope train with `model.fit` as usual; use
    `keras_tfm.losses.MaskedSparseCategoricalCrossentropy`, which reduces
    over real tokens globally, for a loss that does not depend on how the
    batch is split.

    Example:

    >>> with strategy_scope("none"):
    ...     layer = keras.layers.Dense(2)
    """
    check_distribute(name)
    if name == "none":
        return contextlib.nullcontext()
    if name == "data-parallel":
        distribution = keras.distribution.DataParallel()
        keras.distribution.set_distribution(distribution)
        return distribution.scope()
    if name == "mirrored":
        return mirrored_strategy().scope()
    return multi_worker_strategy().scope()


def resolve_jit_compile(name, jit_compile):
    """The `jit_compile` to use under `--distribute name`, with a note.

    XLA cannot compile a TensorFlow step that spans several replicas (see
    `XLA_NOTE`), so under `"mirrored"` and `"multi-worker"` a requested
    `jit_compile=True` becomes `False`; elsewhere it is kept.

    Returns:
        `(jit_compile, note)`; `note` is None when nothing changed.

    Example:

    >>> resolve_jit_compile("none", True)
    (True, None)
    >>> resolve_jit_compile("mirrored", True)[0]
    False
    """
    if name in ("mirrored", "multi-worker") and jit_compile is True:
        return False, XLA_NOTE
    return jit_compile, None


# --- model parallelism: keras.distribution.ModelParallel ---------------------


def _snake_case(name):
    # Keras's own rule for a layer's default name (`Dense` -> `dense`).
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _auto_names(layers):
    """`{name: default name}` of the layers that kept a Keras default name.

    Keras names an unnamed layer after its class and numbers the second
    and later ones (`dense`, `dense_1`, ...), so these names differ from
    one instance of a model to the next; chosen names do not.
    """
    names = {}
    for layer in layers:
        base = _snake_case(type(layer).__name__)
        if re.fullmatch(re.escape(base) + r"(_\d+)?", layer.name):
            names[layer.name] = base
    return names


def _pattern(path, auto_names):
    """A regex for `path` in which default layer names match any number."""
    parts = []
    for part in path.split("/"):
        base = auto_names.get(part)
        if base is None:
            parts.append(re.escape(part))
        else:
            parts.append(re.escape(base) + r"(?:_\d+)?")
    return "/".join(parts)


def _shardable(size, parts):
    return size is not None and parts > 0 and size % parts == 0


def _dense_specs(dense, axis, column):
    """Specs of a Dense layer's kernel (in, units) and bias (units,)."""
    layouts = {
        "kernel": (None, axis) if column else (axis, None),
        "bias": (axis,) if column else (None,),
    }
    return {
        id(weight): layouts[weight.name]
        for weight in dense.weights
        if weight.name in layouts
    }


def _attention_specs(layer, axis, parts):
    # Heads are split whole: a projection is sharded when the model axis
    # divides its head count, so no head straddles two devices.
    specs = {}
    heads = layer.num_heads
    key_value_heads = getattr(layer, "num_key_value_heads", None) or heads
    shard_query = _shardable(heads, parts)
    shard_key_value = _shardable(key_value_heads, parts)
    for name, shard in (
        ("query_dense", shard_query),
        ("key_dense", shard_key_value),
        ("value_dense", shard_key_value),
    ):
        dense = getattr(layer, name, None)
        if dense is not None:
            specs.update(_dense_specs(dense, axis if shard else None, True))
    output = getattr(layer, "output_dense", None)
    if output is not None:
        specs.update(_dense_specs(output, axis if shard_query else None, False))
    return specs


def _feed_forward_specs(layer, axis, parts):
    shard = axis if _shardable(layer.intermediate_dim, parts) else None
    specs = {}
    for name in ("intermediate_dense", "gate_dense"):
        dense = getattr(layer, name, None)
        if dense is not None:
            specs.update(_dense_specs(dense, shard, True))
    specs.update(_dense_specs(layer.output_dense, shard, False))
    return specs


def _embedding_specs(layer, axis, parts):
    # (vocabulary, dim): split over the vocabulary, or over the width when
    # the model axis does not divide the vocabulary.
    vocabulary, dim = layer.input_dim, layer.output_dim
    if _shardable(vocabulary, parts):
        spec = (axis, None)
    elif _shardable(dim, parts):
        spec = (None, axis)
    else:
        spec = (None, None)
    specs = {id(layer.embeddings): spec}
    reverse = getattr(layer, "reverse_embeddings", None)
    if reverse is not None:
        # Untied output table (dim, vocabulary).
        specs[id(reverse)] = (spec[1], spec[0])
    return specs


def _layer_specs(layers, axis, parts):
    """`{id(variable): spec}` for the variables our sharding rules cover."""
    specs = {}
    for layer in layers:
        if isinstance(layer, MultiHeadAttention) and layer.built:
            specs.update(_attention_specs(layer, axis, parts))
        elif isinstance(layer, FeedForward) and layer.built:
            specs.update(_feed_forward_specs(layer, axis, parts))
        elif isinstance(
            layer, (TokenEmbedding, keras.layers.ReversibleEmbedding)
        ):
            specs.update(_embedding_specs(layer, axis, parts))
    # Any other Dense (an untied head, a classifier): column-parallel.
    for layer in layers:
        if isinstance(layer, keras.layers.Dense) and layer.built:
            shard = axis if _shardable(layer.units, parts) else None
            for key, spec in _dense_specs(layer, shard, True).items():
                specs.setdefault(key, spec)
    return specs


def _is_seed_state(variable):
    return variable.path.endswith("seed_generator_state")


def layout_map(model, device_mesh, model_dim="model", batch_dim="batch"):
    """A `keras.distribution.LayoutMap` that shards a model's weights.

    Megatron-style tensor parallelism over the `model_dim` axis of
    `device_mesh`, for any model built from keras_tfm layers (the builders,
    `CausalLM`, `Seq2SeqLM`, encoder models, checkpoints). The rules follow
    the layer classes found by walking `model`, not one model type:

    - `MultiHeadAttention`: `query_dense`, `key_dense`, `value_dense`
      column-parallel (kernel `(None, model)`, bias `(model,)`),
      `output_dense` row-parallel (kernel `(model, None)`, bias
      replicated), so attention runs on each device's own heads and one
      all-reduce follows the output projection. A projection is sharded
      only when the model axis divides its head count (`num_heads` for
      queries and the output, `num_key_value_heads` for grouped-query keys
      and values); otherwise it is replicated. With 2 key/value heads on a
      model axis of 8, keys and values are replicated and queries sharded.
    - `FeedForward`: `intermediate_dense` and `gate_dense` column-parallel,
      `output_dense` row-parallel, when the model axis divides
      `intermediate_dim` (else replicated).
    - `TokenEmbedding` (tied or not, inside `TokenAndPositionEmbedding`
      too): the `(vocabulary, dim)` table split over the vocabulary; when
      the model axis does not divide the vocabulary, over the width.
    - Any other `Dense` (an untied head, a classifier): column-parallel
      when the model axis divides its units.
    - Replicated on purpose: norms (`gamma`, `beta`), position tables,
      row-parallel biases and everything else; every such variable gets an
      explicit replicated entry. Seed generator states are left to Keras
      (replicated).

    JAX needs every sharded dimension to divide evenly, hence the
    divisibility rules. Weights are replicated over `batch_dim`, which
    `keras.distribution.ModelParallel(layout_map=..., batch_dim_name=...)`
    splits the batch over.

    The keys are regexes that Keras matches with `re.fullmatch` against
    each variable's path. Layers that kept a Keras default name (`dense`,
    `dense_1`, `transformer_decoder_block_3`) match with any number, so a
    map made from one instance fits the next one, built inside
    `ModelParallel(...).scope()` (where default names are numbered anew).

    Args:
        model: a built model (or layer) made of keras_tfm layers; typically
            a first instance, or the same builder call with the same
            arguments.
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_dim: the mesh axis the weights are split over.
        batch_dim: the mesh axis the batch is split over (checked to be a
            mesh axis when the mesh has more than one axis), or None.

    Returns:
        A `keras.distribution.LayoutMap` over `device_mesh`.

    Example:

    >>> import keras
    >>> from keras_tfm.models import decoder_lm
    >>> mesh = keras.distribution.DeviceMesh(
    ...     (2, 4), ("batch", "model"), [f"cpu:{i}" for i in range(8)]
    ... )
    >>> def build():
    ...     return decoder_lm(64, 8, num_layers=1, embedding_dim=16,
    ...                       num_heads=4, intermediate_dim=32)
    >>> layouts = layout_map(build(), mesh)
    >>> layouts["decoder_layer_0/feed_forward/output_dense/kernel"].axes
    ('model', None)
    >>> layouts["decoder_embedding/token_embedding/embeddings"].axes
    ('model', None)

    On JAX with 8 devices (`tests/test_model_parallel.py` runs it):

    >>> distribution = keras.distribution.ModelParallel(layout_map=layouts)
    >>> with distribution.scope():  # doctest: +SKIP
    ...     model = build()
    ...     model.compile("adam", "sparse_categorical_crossentropy")
    ...     model.fit(...)
    """
    axis_names = tuple(device_mesh.axis_names)
    if model_dim not in axis_names:
        raise ValueError(
            f"`model_dim` must be an axis of `device_mesh` {axis_names}. "
            f"Received: model_dim={model_dim!r}"
        )
    if len(axis_names) > 1 and batch_dim not in axis_names:
        raise ValueError(
            f"`batch_dim` must be an axis of `device_mesh` {axis_names}. "
            f"Received: batch_dim={batch_dim!r}"
        )
    if not model.built or not model.variables:
        raise ValueError(
            "`layout_map` reads the weights of a built model; call it on "
            f"a model with weights. Received: model={model.name!r} "
            f"(built={model.built})"
        )
    parts = device_mesh.shape[axis_names.index(model_dim)]
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    specs = _layer_specs(layers, model_dim, parts)
    auto_names = _auto_names(layers)
    groups = {}
    for variable in model.variables:
        if _is_seed_state(variable):
            continue
        spec = specs.get(id(variable), (None,) * len(variable.shape))
        pattern = _pattern(variable.path, auto_names)
        groups.setdefault(pattern, []).append((variable.path, spec))
    layouts = keras.distribution.LayoutMap(device_mesh)
    for pattern, entries in groups.items():
        if len({spec for _, spec in entries}) == 1:
            layouts[pattern] = entries[0][1]
        else:
            # Default-named layers that need different layouts: keep their
            # exact paths (another instance gets them replicated).
            for path, spec in entries:
                layouts[re.escape(path)] = spec
    for variable in model.variables:
        if _is_seed_state(variable):
            continue
        got = layouts[variable.path]
        want = specs.get(id(variable), (None,) * len(variable.shape))
        if got is None or tuple(got.axes) != tuple(want):
            raise ValueError(
                f"The layout map gives {variable.path!r} the layout "
                f"{None if got is None else got.axes}, not {want}; rename "
                "the layers whose default names collide."
            )
    return layouts
