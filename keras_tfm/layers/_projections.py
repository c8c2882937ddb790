"""Dense products of a compiled decoding loop, shaped for XLA on the CPU."""

import keras
from keras import ops

from keras_tfm import _backend

# Rows of a kernel per slice in `_matvec` (see there).
_SLICE_ROWS = (192, 256, 128, 384)


def _joinable(denses):
    first = denses[0]
    return all(
        dense.quantization_mode is None
        and (dense.bias is None) == (first.bias is None)
        and dense.compute_dtype == first.compute_dtype
        for dense in denses
    )


def _matvec(x, kernel):
    """`x @ kernel` for `x` of one row, as a sum over slices of the kernel.

    XLA on the CPU reads a `(dim, units)` kernel at batch 1 faster when
    the product is a batch of `(1, ~200)` by `(~200, units)` products
    summed afterwards: 4-19% faster for GPT-2's 768-row kernels, 25-36%
    for its 3072-row output kernel of the feed-forward network, on JAX and
    TensorFlow (measured on this project's 2-core CPU; figures in
    benchmarks/README.md, "Batch 1 after sliced one-row products"). The reshape
    of the kernel is free (its slices are contiguous). With more rows the
    partial sums cost more than they save, so this is for one row only,
    and a kernel whose rows do not divide evenly keeps the plain product;
    so does a kernel of lower precision than float32, whose partial
    products would each be rounded (and which was not measured).
    """
    dim, units = kernel.shape
    rows = next((r for r in _SLICE_ROWS if dim % r == 0 and r < dim), None)
    dtype = keras.backend.standardize_dtype(kernel.dtype)
    if rows is None or dtype != "float32":
        return ops.matmul(x, kernel)
    slices = dim // rows
    x = ops.reshape(x, (slices, 1, rows))
    products = ops.matmul(x, ops.reshape(kernel, (slices, rows, units)))
    return ops.reshape(ops.sum(products, axis=0), (1, units))


def project_together(denses, x):
    """`[dense(x) for dense in denses]` for Keras `Dense` layers and `x` of
    shape `(tokens, dim)`.

    While `_backend.joined_projections()` is on (a compiled decoding loop
    is being traced for XLA on the CPU, see there), and the layers are
    plain float ones of one dtype with biases all on or all off:

    - several layers are one product with the kernels concatenated along
      the output axis, then split: XLA computes the concatenation once,
      outside the loop, and each step streams one wide matrix instead of
      several narrow ones (at batch 1 a narrow matrix-vector product reads
      memory at half the rate of a wide one);
    - a product with one row (batch 1) is a sum over slices of the kernel
      (see `_matvec`).

    The results are each layer's own, to float rounding.
    """
    one_row = x.shape[0] == 1
    if (
        not _backend.joined_projections()
        or (len(denses) == 1 and not one_row)
        or not _joinable(denses)
    ):
        return [dense(x) for dense in denses]
    dtype = denses[0].compute_dtype
    x = ops.cast(x, dtype)
    kernel = ops.concatenate(
        [ops.cast(dense.kernel, dtype) for dense in denses], axis=-1
    )
    y = _matvec(x, kernel) if one_row else ops.matmul(x, kernel)
    if denses[0].bias is not None:
        y = y + ops.concatenate(
            [ops.cast(dense.bias, dtype) for dense in denses], axis=-1
        )
    parts, start = [], 0
    for dense in denses:
        part = y[:, start : start + dense.units]
        start += dense.units
        if dense.activation is not None:
            part = dense.activation(part)
        parts.append(part)
    return parts


def project(dense, x):
    """`dense(x)` for a Keras `Dense` layer and `x` of shape
    `(tokens, dim)` (see `project_together`)."""
    return project_together([dense], x)[0]
