"""The backend-specific pieces of keras_tfm, behind small functions.

Library code imports only `keras`; what truly needs a backend lives here.
"""

import keras


def compile_function(function, variables, jit_compile=True, on_trace=None):
    """Compile `function(*tensors)` once per input shape, where possible.

    - JAX: `jax.jit` over a stateless function of the `variables`' values
      (so assigning new weights does not compile again).
    - TensorFlow: `tf.function`, with XLA when `jit_compile`.
    - PyTorch: eager, under `torch.no_grad()` (nothing to compile; no
      autograd graph is kept while generating).

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
            with torch.no_grad():
                return function(*args)

        return eager
    return function
