"""What needs a backend itself, behind small functions.

With `distribution.py` (whose subject is `tf.distribute`), this is the only
module of keras_tfm that imports TensorFlow, JAX or PyTorch; each import is
made inside the function that needs it, for the backend in use only.
"""

import contextlib

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
            if torch_compiling() or _is_traced(x):
                return None
            return x.detach().cpu().numpy()
        if isinstance(x, torch.SymInt):
            # A dynamic size under torch.compile: reading it specializes the
            # compiled code on it, as a Python check needs.
            return np.asarray(int(x))
    return np.asarray(keras.ops.convert_to_numpy(x))


_JOINED = [False]


def xla_loop_on_cpu(jit_compile):
    """Whether a compiled function's loop runs on XLA on the CPU: JAX, or
    TensorFlow with `jit_compile`, with no accelerator in use."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow" and jit_compile:
        import tensorflow as tf

        return not tf.config.list_logical_devices("GPU")
    return False


def joined_projections():
    """Whether layers join the Dense products that share an input into one
    (see `keras_tfm.layers._projections.project_together`)."""
    return _JOINED[0]


@contextlib.contextmanager
def joining_projections(on=True):
    """Join shared-input projections while a compiled decoding loop is
    traced on XLA on the CPU (see `xla_loop_on_cpu`).

    XLA hoists the concatenation of loop-invariant kernels out of the loop
    (once per call of the compiled function), so each step reads one wide
    matrix per group. Off elsewhere: an eager step, or a PyTorch step that
    reads its weights as inputs, would concatenate them every step, and
    on an accelerator the copy's memory is dearer than the gain, which was
    measured on CPU only.
    """
    previous = _JOINED[0]
    _JOINED[0] = bool(on)
    try:
        yield
    finally:
        _JOINED[0] = previous


_CACHE_PREFIX = [None]


def cache_prefix():
    """How many leading slots of a self-attention cache the step being
    traced reads, or None for all (see `reading_cache_prefix`)."""
    return _CACHE_PREFIX[0]


@contextlib.contextmanager
def reading_cache_prefix(length):
    """Let self-attention over a cache read only its first `length` slots
    while a stretch of a decoding loop is traced in which every step writes
    and attends below position `length`.

    The slots past it are masked for every query of that stretch, so the
    outputs do not change; what shrinks is the cache each step reads (and,
    on XLA, copies: at batch > 1 the keys and values are strided halves of
    the cache). `Generator` splits its loop into such stretches on JAX on
    the CPU (see `Generator._segments`).
    """
    previous = _CACHE_PREFIX[0]
    _CACHE_PREFIX[0] = length
    try:
        yield
    finally:
        _CACHE_PREFIX[0] = previous


def torch_compiling():
    """Whether PyTorch is tracing with `torch.compile` (dynamo) now.

    There a tensor reads like an eager one, but reading its value would
    break the graph (and then check only the first batch it saw).
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def flash_attention():
    """`flash_attention` of `keras.ops.dot_product_attention`.

    None (Keras decides) except on PyTorch: there Keras decides by building
    a `torch.backends.cuda.SDPAParams`, a C++ object that `torch.compile`
    cannot trace, so every attention call broke the compiled training
    step in two. `False` calls `scaled_dot_product_attention` plainly, and
    PyTorch still picks its flash kernel itself where the inputs allow.
    """
    return False if keras.backend.backend() == "torch" else None


def constant_result(function):
    """Decorate `function`: Python constants in, NumPy arrays out (one or a
    tuple), which the decorated function returns as tensors.

    `torch.compile` then calls `function` while tracing and keeps its
    arrays as constants of the graph, instead of tracing its NumPy code
    (which it cannot do for every NumPy function, `np.frexp` for one, and
    which breaks the graph at NumPy attributes such as `ndarray.dtype`,
    as `keras.ops.convert_to_tensor` reads). Other backends trace Python
    as Python: there it is `function` with its arrays converted.
    """
    if keras.backend.backend() != "torch":

        def converted(*args, **kwargs):
            arrays = function(*args, **kwargs)
            return _map_arrays(keras.ops.convert_to_tensor, arrays)

        return converted
    import torch

    constant = torch.compiler.assume_constant_result(function)

    def as_tensors(*args, **kwargs):
        # Not `keras.tree`: dynamo cannot flatten a constant result.
        return _map_arrays(
            lambda array: keras.ops.convert_to_tensor(torch.as_tensor(array)),
            constant(*args, **kwargs),
        )

    return as_tensors


def _map_arrays(function, arrays):
    if isinstance(arrays, tuple):
        return tuple(function(array) for array in arrays)
    return function(arrays)


def _is_traced(x):
    """Whether a torch tensor is a stand-in of a trace (`make_fx`,
    `torch.compile`): its value is not known while tracing."""
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(x)


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


def map_rows(function, elements, shape, dtype):
    """`function` on each row of the tensors `elements` (a tuple), stacked:
    `tf.map_fn` with the output signature `shape` and `dtype` of one row,
    so that a TensorFlow graph traces `function` once (`keras.ops.map`
    traces it a second time to find that signature). Other backends:
    `keras.ops.map`."""
    if keras.backend.backend() != "tensorflow":
        return keras.ops.map(function, elements)
    import tensorflow as tf

    return tf.map_fn(
        function,
        elements,
        fn_output_signature=tf.TensorSpec(shape, dtype),
    )


def serving_function(function, name, shape, dtype, jit_compile):
    """`function` of one tensor as a `tf.function` with the input signature
    `name`, `shape`, `dtype` and `jit_compile` (XLA), for a SavedModel
    endpoint (`keras.export.ExportArchive.add_endpoint`, given a
    `tf.function`, keeps its `jit_compile`; given an input signature it
    builds its own function without one). TensorFlow only."""
    import tensorflow as tf

    return tf.function(
        function,
        input_signature=[tf.TensorSpec(shape, dtype, name=name)],
        jit_compile=jit_compile,
        autograph=False,
    )


# Whether `Generator` compiles its decoding step on PyTorch (see
# `compile_function`) with inductor, or runs the traced graph as it is (no
# compiler: what the test suite uses, so that it does not spend minutes in
# the C++ compiler; the tests that check compilation set this back
# themselves).
TORCH_COMPILE = True


class _TorchLoops:
    """The compiled steps of one compiled function's loops, on PyTorch.

    Set while a function from `compile_function` runs (the loop itself is
    Python); `while_loop` finds it here and compiles its step once per
    loop and shape.
    """

    active = None

    def __init__(self, variables, on_trace, steps):
        self.variables = variables
        self.on_trace = on_trace
        self.steps = {} if steps is None else steps
        self.tracing = False


def compile_function(
    function, variables, jit_compile=True, on_trace=None, steps=None
):
    """Compile `function(*tensors)` once per input shape, where possible.

    - JAX: `jax.jit` over a stateless function of the `variables`' values
      (so assigning new weights does not compile again).
    - TensorFlow: `tf.function`, with XLA when `jit_compile`.
    - PyTorch, with `jit_compile`: `function` runs in Python, and each
      `while_loop` in it compiles its step (one iteration of the loop and
      its condition) once per shape: the step is traced once into one
      graph of aten operations over the weights as tensors (`make_fx`, in
      the spirit of `stateless_call`: Keras's per-call layer bookkeeping
      runs at trace time only), then compiled by inductor, the compiler
      of `torch.compile` (`torch._inductor.compile`: the graph is one
      already, so dynamo, `torch.compile`'s tracer, has nothing to do but
      cost 50 us a step). On CPU the weights are constants of the compiled
      step (see `TORCH_FROZEN`). With `jit_compile` False everything runs
      eagerly. Either way, under `torch.no_grad()`.

    Args:
        function: a function of tensors, written with `keras.ops`.
        variables: the Keras variables it reads.
        jit_compile: whether TensorFlow compiles with XLA, and PyTorch
            compiles its loops' steps.
        on_trace: optional callable, run once per trace (not per call):
            on PyTorch, once per compiled loop step.
        steps: optional dict where PyTorch keeps the compiled loop steps;
            functions given the same dict share them (they must run the
            same loops with the same Python constants).

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

        loops = _TorchLoops(variables, on_trace, steps) if jit_compile else None

        def run(*args):
            previous = _TorchLoops.active
            _TorchLoops.active = loops
            try:
                with torch.no_grad():
                    return function(*args)
            finally:
                _TorchLoops.active = previous

        return run
    return function


class _Inputs:
    """A nest split for tracing: its tensors are a graph's inputs, anything
    else (None, Python numbers) a constant of the graph, part of `key`
    with the tensors' shapes and dtypes. `rebuild(tensors)` makes the nest
    again from (traced) tensors."""

    def __init__(self, nest):
        import torch
        from torch.utils import _pytree

        leaves, self.spec = _pytree.tree_flatten(nest)
        self.where = [
            i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)
        ]
        self.static = [
            (i, x) for i, x in enumerate(leaves) if i not in set(self.where)
        ]
        self.tensors = [leaves[i] for i in self.where]
        self.key = (
            str(self.spec),
            repr(self.static),
            tuple((tuple(x.shape), x.dtype) for x in self.tensors),
        )

    def rebuild(self, tensors):
        from torch.utils import _pytree

        leaves = [x for _, x in self.static]
        for i, x in zip(self.where, tensors, strict=True):
            leaves.insert(i, x)
        return _pytree.tree_unflatten(leaves, self.spec)


def _trace(loops, function, values, tensors):
    """`function(weights, tensors)` traced with fake tensors into one graph
    of aten operations over the weights `values` and `tensors` (Keras's
    bookkeeping runs now, once), with the Keras variables stateless."""
    import torch

    variables = loops.variables

    def pure(*flat):
        weights, inputs = flat[: len(variables)], flat[len(variables) :]
        mapping = list(zip(variables, weights, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return function(inputs)

    loops.tracing = True
    try:
        return torch.fx.experimental.proxy_tensor.make_fx(
            pure, tracing_mode="fake"
        )(*values, *tensors)
    finally:
        loops.tracing = False


def _torch_step(loops, cond, body, state, constants):
    """`body` and then `cond`, traced and compiled for these shapes."""
    from torch.utils import _pytree

    inputs = _Inputs((state, constants))
    key = (body.__code__, cond.__code__, *inputs.key)
    variables = loops.variables
    step = loops.steps.get(key)
    if step is not None and step.current(variables):
        return step
    kind = type(state)

    def one_step(tensors):
        state, constants = inputs.rebuild(tensors)
        state = kind(*body(state, constants))
        going = cond(state, constants)
        return (*_pytree.tree_flatten(state)[0], going)

    values = [v.value for v in variables]
    # Frozen unless this step was compiled frozen before and its weights
    # have changed since: then they stay inputs, so that further changes
    # (a model trained between generations) do not compile it again.
    frozen = (
        step is None
        and TORCH_COMPILE
        and TORCH_FROZEN is not None
        and all(x.device.type == "cpu" for x in values)
    )
    graph = _trace(loops, one_step, values, inputs.tensors)
    if loops.on_trace is not None:
        loops.on_trace()
    if frozen:
        _weights_as_constants(graph, values)
    step = _TorchStep(
        graph,
        kind,
        _pytree.tree_flatten(state)[1],
        inputs.where,
        weights=_weights_key(variables) if frozen else None,
    )
    loops.steps[key] = step
    return step


def traced_call(function, *args):
    """`function(*args)`: a nest of tensors in and out, called once per
    search (a prompt's prefill, with the encoder of an encoder-decoder).

    On PyTorch, inside a function from `compile_function` with
    `jit_compile`, it is traced once per shape into one graph of aten
    operations over the weights (as a loop step is, see `_torch_step`),
    and that graph runs: Keras's per-layer dispatch, which eagerly costs
    more than the arithmetic of a short prompt, runs at trace time only.
    The graph is not given to inductor: its compile costs more at the
    first call of a shape than it saves in hundreds of calls (numbers in
    `benchmarks/README.md`, "Measurements behind choices in the code").
    Elsewhere, and while a step traces, it is `function(*args)`.
    """
    loops = _TorchLoops.active
    if keras.backend.backend() != "torch" or loops is None or loops.tracing:
        return function(*args)
    from torch.utils import _pytree

    inputs = _Inputs(args)
    key = ("call", function.__code__, *inputs.key)
    values = [v.value for v in loops.variables]
    call = loops.steps.get(key)
    if call is None:
        specs = []

        def once(tensors):
            result = function(*inputs.rebuild(tensors))
            flat, spec = _pytree.tree_flatten(result)
            specs.append(spec)
            return flat

        graph = _trace(loops, once, values, inputs.tensors)
        call = loops.steps[key] = (graph, specs[-1])
    graph, spec = call
    return _pytree.tree_unflatten(graph(*values, *inputs.tensors), spec)


# How `Generator` compiles its decoding step on CPU: inductor settings for
# a step whose weights are constants of the compiled graph ("freezing").
# With them inductor writes its own C++ kernels for the weight matrices
# (its "CPP" GEMM template, with the weights packed once): a one-token step
# takes half the time that ATen's `addmm` gives (benchmarks/generation.py,
# README "Speed"). The packed copies hold as much memory again as the
# weights. None compiles with the weights as inputs and ATen's kernels.
TORCH_FROZEN = {"freezing": True, "max_autotune": True}


def _weights_key(variables):
    """What changes when a weight does: each tensor (held, so that no other
    tensor can take its place) and its version counter (which every
    in-place write, `assign` and optimizer steps included, advances)."""
    return [(v.value, v.value._version) for v in variables]


def _weights_as_constants(graph, values):
    """Make the first `len(values)` inputs of the traced `graph` its own
    (frozen) parameters, holding `values` (sharing their memory)."""
    import torch

    inputs = [n for n in graph.graph.nodes if n.op == "placeholder"]
    for i, (node, value) in enumerate(zip(inputs, values, strict=False)):
        name = f"weight_{i}"
        graph.register_parameter(
            name, torch.nn.Parameter(value, requires_grad=False)
        )
        with graph.graph.inserting_before(node):
            node.replace_all_uses_with(graph.graph.get_attr(name))
        graph.graph.erase_node(node)
    graph.recompile()


class _TorchStep:
    """One traced loop step, compiled on its first call:
    `step(state, constants, variables)` returns the next state and whether
    the loop goes on (`variables` are read only when the weights are
    inputs).

    `weights` is `_weights_key` of the weights frozen into it, or None
    when it reads them as inputs.
    """

    def __init__(self, graph, kind, state_spec, where, weights):
        self.graph = graph
        self.kind = kind
        self.state_spec = state_spec
        self.where = where
        self.weights = weights
        self.compiled = None
        self.gemm_backends = None  # what a frozen step compiled with

    def current(self, variables):
        if self.weights is None:
            return True
        now = _weights_key(variables)
        return all(
            tensor is held and version == seen
            for (tensor, version), (held, seen) in zip(
                now, self.weights, strict=True
            )
        )

    def __call__(self, state, constants, variables):
        from torch.utils import _pytree

        leaves = _pytree.tree_flatten((state, constants))[0]
        tensors = [leaves[i] for i in self.where]
        if self.weights is None:
            tensors = [v.value for v in variables] + tensors
        if self.compiled is None:
            self.compiled = self._compile(tensors)
        *out, going = self.compiled(*tensors)
        state = self.kind(*_pytree.tree_unflatten(out, self.state_spec))
        return state, going

    def _compile(self, tensors):
        if not TORCH_COMPILE:
            return self.graph
        import torch

        if self.weights is None:
            return torch._inductor.compile(self.graph, tensors)
        # The C++ GEMM template alone compiles fastest (no autotuning
        # against ATen); a matrix product it cannot take (of two
        # activations, not of a weight) needs ATen's kernel as well.
        for backends in _GEMM_BACKENDS:
            options = {**TORCH_FROZEN, "max_autotune_gemm_backends": backends}
            try:
                compiled = torch._inductor.compile(self.graph, tensors, options)
            except torch._inductor.exc.InductorError:
                if backends == _GEMM_BACKENDS[-1]:
                    raise
                continue
            self.gemm_backends = backends
            return compiled


# The GEMM backends a frozen step tries, in order (see `_TorchStep`).
_GEMM_BACKENDS = ("CPP", "CPP,ATEN")


def loop_index(index):
    """A decoding loop's position: a Python int on eager PyTorch, else as
    is.

    Eager PyTorch runs the loop in Python (see `while_loop`); an int
    position lets each step index and update its buffers with plain slices
    (a tensor position sends `keras.ops.slice_update` down a path of a
    dozen index ops per call). A compiled PyTorch loop keeps it a tensor:
    its step is traced once for every position.
    """
    if keras.backend.backend() == "torch":
        if _TorchLoops.active is not None:
            return keras.ops.convert_to_tensor(index, "int32")
        return int(index)
    return index


def while_loop(cond, body, state, constants=()):
    """`keras.ops.while_loop` over a NamedTuple state; a Python loop on
    PyTorch.

    `cond(state, constants)` and `body(state, constants)` take (and `body`
    returns) the state as its NamedTuple, read by field; `constants` is
    a nest of tensors the loop reads and never changes. Tensors the loop
    reads must come through `state` or `constants`, never a closure: on
    PyTorch the compiled step takes only those (a closure's tensor would
    be frozen into it).

    On PyTorch the loop is Python control flow. Inside a function from
    `compile_function` with `jit_compile`, each iteration is one call of
    the compiled step, which also evaluates `cond` (one scalar read per
    iteration); otherwise `body` runs eagerly.
    """
    kind = type(state)
    if keras.backend.backend() != "torch":
        fields = keras.ops.while_loop(
            lambda *fields: cond(kind(*fields), constants),
            lambda *fields: tuple(body(kind(*fields), constants)),
            tuple(state),
        )
        return kind(*fields)
    loops = _TorchLoops.active
    if loops is None or loops.tracing:
        while bool(cond(state, constants)):
            state = kind(*body(state, constants))
        return state
    step = _torch_step(loops, cond, body, state, constants)
    going = cond(state, constants)
    while bool(going):
        state, going = step(state, constants, loops.variables)
    return state


def slice_update(x, start_indices, updates):
    """`keras.ops.slice_update`, in place while a compiled PyTorch loop
    traces its step.

    A key/value cache is rewritten one slot per step; a functional update
    copies the whole cache at each step (a cost that grows with its
    length). Inside the step of a compiled PyTorch loop the state is
    passed on and never read again, so the update is made in place.
    """
    loops = _TorchLoops.active
    if keras.backend.backend() != "torch" or loops is None or not loops.tracing:
        return keras.ops.slice_update(x, start_indices, updates)
    import torch

    updates = keras.ops.cast(updates, x.dtype)
    partial = [
        axis
        for axis, (start, size) in enumerate(
            zip(start_indices, updates.shape, strict=True)
        )
        if not (isinstance(start, int) and start == 0 and size == x.shape[axis])
    ]
    if len(partial) != 1:
        return keras.ops.slice_update(x, start_indices, updates)
    (axis,) = partial
    start = torch.as_tensor(start_indices[axis], device=x.device)
    index = torch.arange(updates.shape[axis], device=x.device) + start.to(
        torch.int64
    )
    # Indexing assignment traces to `index_put_`, which inductor updates
    # in place in the input's buffer (an `index_copy_` there is copied
    # whole into it).
    x[(slice(None),) * axis + (index,)] = updates
    return x


def column(x, index):
    """`x[..., index]` for a scalar `index` (an int or an int tensor).

    One dynamic slice (O(1) per step in a compiled loop), or plain
    indexing on PyTorch.
    """
    if keras.backend.backend() == "torch":
        if isinstance(index, int):
            return x[..., index]
        # A tensor index (a compiled loop): one gather, no read of its value.
        position = keras.ops.reshape(keras.ops.cast(index, "int64"), (1,))
        return x.index_select(x.ndim - 1, position).squeeze(-1)
    ops = keras.ops
    rank = len(x.shape)
    start = [0] * (rank - 1) + [index]
    size = [*ops.shape(x)[:-1], 1]
    return ops.squeeze(ops.slice(x, start, size), -1)


def rows(table, start, length):
    """`table[start:start + length]` for a scalar `start` (an int or an int
    tensor).

    One dynamic slice; on PyTorch one gather, since `keras.ops.slice`
    there reads a tensor start's value (four scalar reads in a compiled
    step, which the compiler cannot fold).
    """
    if keras.backend.backend() == "torch" and not isinstance(start, int):
        import torch

        start = torch.as_tensor(start, device=table.device).to(torch.int64)
        index = torch.arange(length, device=table.device) + start
        return table.index_select(0, index)
    start = keras.ops.cast(start, "int32")
    return keras.ops.slice(table, (start, 0), (length, table.shape[1]))


def set_column(x, index, values):
    """`x` with `x[..., index] = values`, for a scalar `index`.

    One dynamic update slice (in place in a compiled loop); on PyTorch a
    copy of `x` written by index assignment, so `x` itself is unchanged.
    """
    values = keras.ops.cast(values, x.dtype)
    if keras.backend.backend() == "torch":
        if isinstance(index, int):
            x = x.clone()
            x[..., index] = values
            return x
        position = keras.ops.reshape(keras.ops.cast(index, "int64"), (1,))
        return x.index_copy(x.ndim - 1, position, values.unsqueeze(-1))
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
