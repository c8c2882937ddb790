"""Position information: fixed sinusoids, a learned table, rotary embedding."""

import math

import keras
import numpy as np
from keras import ops

from keras_tfm._validation import (
    check_positive_int,
    check_positive_number,
    check_rank,
)

# Positions are split as `hi * _SPLIT + lo` and frequencies into 12-bit
# pieces so that every partial product is exact in float32 (see below).
_SPLIT = 4096


def _split_float32(values):
    """Split float64 `values` into three float32 parts, 12 bits each."""
    parts = []
    rest = np.asarray(values, dtype="float64")
    for _ in range(2):
        mantissa, exponent = np.frexp(rest)
        head = np.ldexp(np.round(mantissa * _SPLIT) / _SPLIT, exponent)
        parts.append(head.astype("float32"))
        rest = rest - head
    parts.append(rest.astype("float32"))
    return parts


def _fraction(x):
    return x - ops.floor(x)


def sinusoid_angles_in_turns(positions, inverse_wavelengths):
    """Return `frac(positions * inverse_wavelengths / 2pi)` accurately.

    A plain float32 `position * frequency` loses about `position * 6e-8`
    radians (3e-4 at position 4096); here every partial product is exact in
    float32 and only fractions of a turn are summed, so the angle stays
    accurate to ~1e-6 radians for any position below 2**24.

    Args:
        positions: int32 tensor of positions, any shape `S`.
        inverse_wavelengths: NumPy float64 array `(D,)` of angular
            frequencies.

    Returns:
        float32 tensor of shape `S + (D,)` in `[0, 1)`.
    """
    turns = np.asarray(inverse_wavelengths, "float64") / (2 * math.pi)
    t1, t2, t3 = (ops.convert_to_tensor(t) for t in _split_float32(turns))
    positions = ops.expand_dims(ops.cast(positions, "int32"), -1)
    high = ops.cast(ops.floor_divide(positions, _SPLIT), "float32")
    low = ops.cast(ops.mod(positions, _SPLIT), "float32")
    # Products of two 12-bit numbers are exact; `_fraction` of them too.
    total = (
        _fraction(high * (t1 * _SPLIT))
        + _fraction(high * (t2 * _SPLIT))
        + _fraction(low * t1)
        + _fraction(low * t2)
        + (high * _SPLIT + low) * t3
    )
    return _fraction(total)


def _positions(length, start_index):
    return ops.arange(length, dtype="int32") + ops.cast(start_index, "int32")


@keras.saving.register_keras_serializable(package="keras_tfm")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Fixed sinusoidal position encoding of "Attention Is All You Need".

    `PE[p, 2i] = sin(p / max_wavelength^(2i/d))` and
    `PE[p, 2i+1] = cos(p / max_wavelength^(2i/d))`, interleaved exactly as
    in the paper. The angles are reduced in float32 with exact partial
    products, so positions stay distinct and accurate for any length, even
    when the layer computes in float16 or bfloat16. The layer has no weights;
    it returns the encoding, which the caller adds to its embeddings.

    Args:
        max_wavelength: the longest wavelength, `10000` in the paper.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(batch, seq, dim)`; only its shape is used.
        start_index: position of the first element (an int or a scalar
            tensor), for incremental decoding. Defaults to `0`.

    Returns:
        The encoding broadcast to the shape of `inputs`, in the layer's
        compute dtype.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = np.zeros((2, 4, 6), "float32")
    >>> pe = ops.convert_to_numpy(SinusoidalPositionEncoding()(x))
    >>> pe.shape
    (2, 4, 6)
    >>> [round(float(v), 4) for v in pe[0, 1, :2]]
    [0.8415, 0.5403]

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.5.
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        check_positive_number("max_wavelength", max_wavelength)
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.supports_masking = True

    def build(self, input_shape):
        check_rank(self, "inputs", input_shape, (3,))
        self._dim = input_shape[-1]
        if self._dim is None:
            raise ValueError(
                "SinusoidalPositionEncoding needs a known last dimension. "
                f"Received: inputs with shape {tuple(input_shape)}"
            )
        self.built = True

    def inverse_wavelengths(self, dim):
        """Angular frequency of each feature, float64 `(dim,)`."""
        pair = np.arange(dim) // 2
        return np.power(float(self.max_wavelength), -2.0 * pair / dim)

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        dim = self._dim
        turns = sinusoid_angles_in_turns(
            _positions(shape[1], start_index), self.inverse_wavelengths(dim)
        )
        angles = turns * (2 * math.pi)  # (seq, dim)
        is_even = ops.convert_to_tensor(np.arange(dim) % 2 == 0)
        encoding = ops.where(is_even, ops.sin(angles), ops.cos(angles))
        encoding = ops.cast(encoding, self.compute_dtype)
        return ops.broadcast_to(ops.expand_dims(encoding, 0), shape)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config


def _check_fits(length, start_index, sequence_length):
    """Raise if positions `start_index..start_index + length` overflow.

    Runs in Python whenever the sizes are known (eager, JAX tracing,
    functional build). A length that is only known at run time inside a
    TensorFlow graph is checked with a graph assertion instead.
    """
    static_length = length if isinstance(length, int) else None
    static_start = start_index if isinstance(start_index, int) else 0
    message = (
        "The input is longer than the learned position table: positions "
        "up to {end} requested, but `sequence_length` is "
        f"{sequence_length}. Build the layer with a larger "
        "`sequence_length` or truncate the input."
    )
    if static_length is not None:
        end = static_start + static_length
        if end > sequence_length:
            raise ValueError(message.format(end=end))
        if isinstance(start_index, int):
            return
    if keras.backend.backend() != "tensorflow":
        # A concrete tensor `start_index` (eager JAX/torch): check it, as
        # JAX would silently clamp the slice. A traced one cannot be read.
        try:
            end = int(length) + int(start_index)
        except (TypeError, RuntimeError):
            return None
        if end > sequence_length:
            raise ValueError(message.format(end=end))
        return None
    if keras.backend.backend() == "tensorflow":
        # A TensorFlow graph with an unknown length: `tf.gather` would fail
        # opaquely on CPU and return zeros on GPU, so assert explicitly. This
        # is the one place keras_tfm touches a backend directly.
        import tensorflow as tf

        if tf.executing_eagerly():
            end = int(length) + int(start_index)
            if end > sequence_length:
                raise ValueError(message.format(end=end))
            return
        end = ops.cast(length, "int32") + ops.cast(start_index, "int32")
        return tf.debugging.assert_less_equal(
            end, sequence_length, message=message.format(end="(dynamic)")
        )


@keras.saving.register_keras_serializable(package="keras_tfm")
class LearnedPositionEmbedding(keras.layers.Layer):
    """Trainable position embedding: a `(sequence_length, dim)` table.

    Position `p` is represented by row `p` of a trainable table named
    `embeddings`, as in BERT, GPT-2 and the keras.io Transformer examples.
    Unlike a fixed encoding, the table cannot extend past `sequence_length`:
    a longer input raises a `ValueError` that names `sequence_length`,
    eagerly, when a functional model is built, and at run time in a
    TensorFlow graph whose length is unknown.

    Args:
        sequence_length: number of positions in the table.
        initializer: initializer of the table. Defaults to
            `"glorot_uniform"`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(batch, seq, dim)`; only its shape is used.
        start_index: position of the first element, for incremental
            decoding. Defaults to `0`.

    Returns:
        Rows `start_index .. start_index + seq` of the table broadcast to
        the shape of `inputs`.

    Example:

    >>> import numpy as np
    >>> layer = LearnedPositionEmbedding(sequence_length=8)
    >>> tuple(layer(np.zeros((2, 5, 4), "float32")).shape)
    (2, 5, 4)
    >>> tuple(layer.embeddings.shape)
    (8, 4)

    References:
        Gehring et al., "Convolutional Sequence to Sequence Learning", 2017;
        Devlin et al., "BERT", 2019.
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        check_positive_int("sequence_length", sequence_length)
        try:
            keras.initializers.get(initializer)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "`initializer` must be a Keras initializer or its name. "
                f"Received: initializer={initializer!r}"
            ) from error
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def build(self, input_shape):
        check_rank(self, "inputs", input_shape, (3,))
        if input_shape[1] is not None:
            _check_fits(input_shape[1], 0, self.sequence_length)
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
            trainable=True,
        )
        self.built = True

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        check = _check_fits(shape[1], start_index, self.sequence_length)
        table = ops.convert_to_tensor(self.embeddings)
        if check is not None:
            import tensorflow as tf

            with tf.control_dependencies([check]):
                table = tf.identity(table)
        if isinstance(start_index, int) and start_index == 0:
            rows = table[: shape[1]]
        else:
            rows = ops.slice(
                table,
                (ops.cast(start_index, "int32"), 0),
                (shape[1], shape[2]),
            )
        rows = ops.cast(rows, self.compute_dtype)
        return ops.broadcast_to(ops.expand_dims(rows, 0), shape)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_tfm")
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding (RoPE), applied to queries and keys.

    Each pair of features `(x[i], x[i + d/2])` is rotated by the angle
    `p / max_wavelength^(2i/d)`, so that the dot product of a rotated query
    and key depends only on their relative position. The half-split pairing
    is the one of GPT-NeoX, LLaMA and keras-hub. Angles use the same exact
    float32 reduction as `SinusoidalPositionEncoding`.

    Args:
        max_wavelength: the longest wavelength. Defaults to `10000`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(batch, seq, heads, head_dim)` or `(batch, seq,
            dim)`, with an even last dimension.
        start_index: position of the first element. Defaults to `0`.

    Returns:
        The rotated tensor, same shape and dtype as `inputs`.

    Example:

    >>> import numpy as np
    >>> q = np.ones((1, 3, 2, 4), "float32")
    >>> tuple(RotaryEmbedding()(q).shape)
    (1, 3, 2, 4)

    References:
        Su et al., "RoFormer: Enhanced Transformer with Rotary Position
        Embedding", 2021.
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        check_positive_number("max_wavelength", max_wavelength)
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.supports_masking = True

    def build(self, input_shape):
        check_rank(self, "inputs", input_shape, (3, 4))
        dim = input_shape[-1]
        if dim is None or dim % 2:
            raise ValueError(
                "RotaryEmbedding needs an even, known last dimension. "
                f"Received: inputs with shape {tuple(input_shape)}"
            )
        self.built = True

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        dim = inputs.shape[-1]
        frequencies = np.power(
            float(self.max_wavelength), -np.arange(0, dim, 2) / dim
        )
        turns = sinusoid_angles_in_turns(
            _positions(shape[1], start_index), frequencies
        )
        angles = ops.concatenate([turns, turns], axis=-1) * (2 * math.pi)
        # (seq, dim) -> broadcastable to (batch, seq, [heads,] dim)
        angles = ops.expand_dims(angles, 0)
        if len(inputs.shape) == 4:
            angles = ops.expand_dims(angles, 2)
        cos = ops.cast(ops.cos(angles), inputs.dtype)
        sin = ops.cast(ops.sin(angles), inputs.dtype)
        first, second = ops.split(inputs, 2, axis=-1)
        rotated = ops.concatenate([-second, first], axis=-1)
        return inputs * cos + rotated * sin

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
