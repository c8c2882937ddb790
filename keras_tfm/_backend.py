"""What needs a backend itself, behind small functions.

With `distribution.py` (whose subject is `tf.distribute`), this is the only
module of keras_tfm that imports TensorFlow, JAX or PyTorch; each import is
made inside the function that needs it, for the backend in use only.
"""

import keras
import numpy as np


def static_value(x):
    """Return the value of `x` as a NumPy array when it is known now.

    Known now: Python numbers and NumPy arrays, eager tensors of every
    backend, and TensorFlow graph tensors that constant-fold (such as a
    static dimension). Unknown (returns `None`): `keras.KerasTensor`s, JAX
    tracers (inside `jax.jit`, `jax.eval_shape`) and TensorFlow graph
    tensors whose value depends on the inputs.

    Args:
        x: a Python number, NumPy array or backend tensor, or `None`.

    Returns:
        A NumPy array, or `None` when the value is not known yet.

    Example:

    >>> int(static_value(3))
    3
    >>> static_value(None) is None
    True
    """
    if x is None or isinstance(x, keras.KerasTensor):
        return None
    if isinstance(x, (int, float, np.integer, np.floating, np.ndarray)):
        return np.asarray(x)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        value = tf.get_static_value(x)
        return None if value is None else np.asarray(value)
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
        return np.asarray(x)
    if backend == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        if isinstance(x, torch.SymInt):
            # A dynamic size under torch.compile: reading it specializes the
            # compiled code on it, as a Python check needs.
            return np.asarray(int(x))
    return np.asarray(keras.ops.convert_to_numpy(x))


def with_runtime_check(tensor, condition, message, value):
    """Return `tensor`, guarded by a run-time check inside a TensorFlow graph.

    Callers check every value known in Python themselves (see
    `static_value`). What is left is a value known only when a TensorFlow
    graph runs (`model.predict`/`fit` without XLA, with a length unknown at
    trace time): there the returned tensor depends on an assertion that
    `condition` holds, and running it otherwise raises
    `tf.errors.InvalidArgumentError` whose message is `message` followed by
    `value` in brackets.

    Where no such check can run, `tensor` comes back unchanged: eagerly on
    any backend, under JAX tracing (JAX has no run-time assertion), and
    under TensorFlow XLA, which compiles assertions away.

    Args:
        tensor: the tensor to guard.
        condition: scalar boolean tensor.
        message: the error message, a Python string.
        value: scalar tensor printed after the message (the offending
            value).

    Returns:
        `tensor`, or an identity of it that runs the assertion first.
    """
    if keras.backend.backend() != "tensorflow":
        return tensor
    import tensorflow as tf

    if tf.executing_eagerly():
        return tensor
    check = tf.debugging.Assert(condition, [message, value])
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def compile_function(function, variables, jit_compile=True, on_trace=None):
    """Compile `function(*tensors)` once per input shape, where possible.

    - JAX: `jax.jit` over a stateless function of the `variables`' values
      (so assigning new weights does not compile again).
    - TensorFlow: `tf.function`, with XLA when `jit_compile`.
    - PyTorch: eager, under `torch.inference_mode()` (nothing to compile;
      no autograd graph or version counters are kept while generating,
      which saves a little on each of the many small eager ops). Its
      outputs are inference tensors: read them, or pass them back in.

    Args:
        function: a function of tensors, written with `keras.ops`.
        variables: the Keras variables it reads.
        jit_compile: whether TensorFlow compiles with XLA.
        on_trace: optional callable, run once per trace (not per call).

    Returns:
        A callable with the same arguments.
    """
    backend = keras.backend.backend()

    def traced(*args):
        if on_trace is not None:
            on_trace()
        return function(*args)

    if backend == "jax":
        import jax

        def stateless(values, *args):
            mapping = list(zip(variables, values, strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                return traced(*args)

        jitted = jax.jit(stateless)

        def compiled(*args):
            return jitted([v.value for v in variables], *args)

        return compiled
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(
            traced, jit_compile=jit_compile, reduce_retracing=False
        )
    if backend == "torch":
        import torch

        def eager(*args):
            with torch.inference_mode():
                return function(*args)

        return eager
    return function


def loop_index(index):
    """A decoding loop's position: a Python int on PyTorch, else as is.

    PyTorch runs the loop in Python (see `while_loop`); an int position
    lets each step index and update its buffers with plain slices (a
    tensor position sends `keras.ops.slice_update` down a path of a dozen
    index ops per call).
    """
    if keras.backend.backend() == "torch":
        return int(index)
    return index


def while_loop(cond, body, state):
    """`keras.ops.while_loop` over a NamedTuple state; a plain Python loop
    on PyTorch.

    `cond(state)` and `body(state)` take (and `body` returns) the state
    as its NamedTuple, read by field. PyTorch runs eagerly, so the loop is
    Python control flow around the same `body`: the state stays on its
    device, and nothing converts it between steps.
    """
    kind = type(state)
    if keras.backend.backend() != "torch":
        fields = keras.ops.while_loop(
            lambda *fields: cond(kind(*fields)),
            lambda *fields: tuple(body(kind(*fields))),
            tuple(state),
        )
        return kind(*fields)
    while bool(cond(state)):
        state = kind(*body(state))
    return state


def column(x, index):
    """`x[..., index]` for a scalar `index` (an int or an int tensor).

    One dynamic slice (O(1) per step in a compiled loop), or plain
    indexing on PyTorch.
    """
    if keras.backend.backend() == "torch":
        return x[..., index]
    ops = keras.ops
    rank = len(x.shape)
    start = [0] * (rank - 1) + [index]
    size = [*ops.shape(x)[:-1], 1]
    return ops.squeeze(ops.slice(x, start, size), -1)


def set_column(x, index, values):
    """`x` with `x[..., index] = values`, for a scalar `index`.

    One dynamic update slice (in place in a compiled loop); on PyTorch a
    copy of `x` written by index assignment, so `x` itself is unchanged.
    """
    values = keras.ops.cast(values, x.dtype)
    if keras.backend.backend() == "torch":
        x = x.clone()
        x[..., index] = values
        return x
    start = [0] * (len(x.shape) - 1) + [index]
    return keras.ops.slice_update(x, start, keras.ops.expand_dims(values, -1))


def float16_unsupported(dtype):
    """Whether `keras.ops.dot_product_attention` rejects float16 here
    (compiled JAX on CPU: "precision 'F16_F16_F32' is not supported by
    dot_general on CPU")."""
    if keras.backend.standardize_dtype(dtype) != "float16":
        return False
    if keras.backend.backend() != "jax":
        return False
    return keras.distribution.list_devices()[0].lower().startswith("cpu")
