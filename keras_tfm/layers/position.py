"""Position information: fixed sinusoids, a learned table, rotary embedding."""

import math

import keras
import numpy as np
from keras import ops

from keras_tfm import _backend
from keras_tfm._validation import (
    check_initializer,
    check_positive_int,
    check_positive_number,
    check_rank,
    shapes_compatible,
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


@_backend.constant_result
def _turn_parts(max_wavelength, dim, scaling_items=None, rotary=False):
    """`frequencies / 2pi` as three float32 tensors (`_split_float32`):
    of `SinusoidalPositionEncoding`, or with `rotary` of `RotaryEmbedding`
    (`scaling_items`: its scaling dict's items).

    A constant of the traced step (`_backend.constant_result`): NumPy's
    `frexp` is not something `torch.compile` can trace.
    """
    if rotary:
        scaling = None if scaling_items is None else dict(scaling_items)
        frequencies = rope_frequencies(max_wavelength, dim, scaling)
    else:
        frequencies = _sinusoid_frequencies(max_wavelength, dim)
    turns = np.asarray(frequencies, "float64") / (2 * math.pi)
    return tuple(_split_float32(turns))


@_backend.constant_result
def _even_features(dim):
    """Boolean `(dim,)`: True at the even features (sines)."""
    return np.arange(dim) % 2 == 0


def _items(mapping):
    return None if mapping is None else tuple(sorted(mapping.items()))


def _sinusoid_frequencies(max_wavelength, dim):
    pair = np.arange(dim) // 2
    return np.power(float(max_wavelength), -2.0 * pair / dim)


def _fraction(x):
    return x - ops.floor(x)


def sinusoid_angles_in_turns(positions, turn_parts):
    """Return `frac(positions * inverse_wavelengths / 2pi)` accurately.

    A plain float32 `position * frequency` loses about `position * 6e-8`
    radians (3e-4 at position 4096); here every partial product is exact in
    float32 and only fractions of a turn are summed, so the angle stays
    accurate to ~1e-6 radians for any position below 2**24.

    Args:
        positions: int32 tensor of positions, any shape `S`.
        turn_parts: the three float32 tensors `(D,)` of `_turn_parts`:
            the angular frequencies over 2pi, in 12-bit pieces.

    Returns:
        float32 tensor of shape `S + (D,)` in `[0, 1)`.
    """
    t1, t2, t3 = turn_parts
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


def _check_positions(layer, inputs, positions, start_index):
    """Validate the `positions` call argument; return it as int32."""
    if not (isinstance(start_index, int) and start_index == 0):
        raise ValueError(
            f"{type(layer).__name__} takes `positions` or `start_index`, not "
            "both: `start_index` must be 0 when `positions` is given. "
            f"Received: start_index={start_index!r}"
        )
    positions = ops.convert_to_tensor(positions)
    dtype = keras.backend.standardize_dtype(positions.dtype)
    if "int" not in dtype:
        raise TypeError(
            "`positions` must be an integer tensor. "
            f"Received: positions with dtype={dtype}"
        )
    expected = tuple(inputs.shape[:2])
    got = tuple(positions.shape)
    if not shapes_compatible(got, expected):
        raise ValueError(
            "`positions` must have the shape (batch, seq) of the inputs, "
            f"{expected}. Received: positions with shape {got}"
        )
    return ops.cast(positions, "int32")


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
        positions: optional integer tensor `(batch, seq)` of per-token
            positions, used instead of `start_index + arange(seq)`; packed
            rows pass positions that restart at 0 in each segment (see
            `keras_tfm.data.pack`). `start_index` must then stay `0`.

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
    >>> restarted = np.array([[0, 1, 0, 1], [0, 1, 2, 3]])
    >>> pe2 = SinusoidalPositionEncoding()(x, positions=restarted)
    >>> bool((ops.convert_to_numpy(pe2)[0, 2] == pe[0, 0]).all())
    True

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.5.
    """

    def __init__(self, max_wavelength=10000, scaling=None, **kwargs):
        check_positive_number("max_wavelength", max_wavelength)
        check_rope_scaling("scaling", scaling)
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling = None if scaling is None else dict(scaling)
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
        return _sinusoid_frequencies(self.max_wavelength, dim)

    def call(self, inputs, start_index=0, positions=None):
        shape = ops.shape(inputs)
        dim = self._dim
        if positions is None:
            positions = _positions(shape[1], start_index)  # (seq,)
        else:
            positions = _check_positions(self, inputs, positions, start_index)
        turns = sinusoid_angles_in_turns(
            positions, _turn_parts(self.max_wavelength, dim)
        )
        angles = turns * (2 * math.pi)  # ([batch,] seq, dim)
        is_even = _even_features(dim)
        encoding = ops.where(is_even, ops.sin(angles), ops.cos(angles))
        encoding = ops.cast(encoding, self.compute_dtype)
        if len(encoding.shape) == 2:
            encoding = ops.expand_dims(encoding, 0)
        return ops.broadcast_to(encoding, shape)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"max_wavelength": self.max_wavelength, "scaling": self.scaling}
        )
        return config


def _overflow_message(sequence_length, needed=None):
    """The error of a too short table; `needed=None`: printed after it."""
    if needed is None:
        needed = "the number of rows printed after this message"
    else:
        needed = f"{needed} rows"
    return (
        "`sequence_length` must cover every position of the input, which "
        f"needs {needed} (last position + 1). Received: "
        f"sequence_length={sequence_length}. Build the layer with a larger "
        "`sequence_length` or truncate the input."
    )


def _raise_overflow(needed, sequence_length):
    raise ValueError(_overflow_message(sequence_length, needed))


@keras.saving.register_keras_serializable(package="keras_tfm")
class LearnedPositionEmbedding(keras.layers.Layer):
    """Trainable position embedding: a `(sequence_length, dim)` table.

    Position `p` is represented by row `p` of a trainable table named
    `embeddings`, as in BERT, GPT-2 and the keras.io Transformer examples.
    Unlike a fixed encoding, the table cannot extend past `sequence_length`.
    A position past the table raises an error that names `sequence_length`
    and the number of rows the input needs, wherever a check can run:

    - a `ValueError` whenever the length, `start_index` and `positions` are
      known in Python: eagerly on every backend (PyTorch's `model.fit` and
      `predict` included, also under `torch.compile`, which runs the check
      in Python), when a functional model is built, and while JAX or
      TensorFlow trace a function (JAX shapes are always static);
    - a `tf.errors.InvalidArgumentError` with the same words when a
      TensorFlow graph without XLA runs (`model.predict`/`fit` on a CPU, or
      `jit_compile=False`) with a length, `start_index` or `positions`
      known only then.

    Negative `positions` raise a `ValueError` where they are known.

    Compiled code has no run-time assertions, so two cases cannot raise:

    - JAX, inside `jax.jit` with a traced `start_index` (a cached decoding
      loop) or traced `positions`: `start_index` is clamped to
      `sequence_length - seq` (the last `seq` rows come back), and rows
      gathered for out-of-range `positions` are NaN (`jnp.take` fill mode);
    - TensorFlow XLA (`jit_compile=True`, the default of `model.fit` on a
      GPU), with a length, tensor `start_index` or `positions` unknown at
      trace time: a too long input or too late `start_index` fails with
      XLA's own `tf.errors.InvalidArgumentError` (a shape error), which
      does not name `sequence_length`, and out-of-range `positions` are
      clamped to the last row.

    Args:
        sequence_length: number of positions in the table.
        initializer: initializer of the table. Defaults to
            `"glorot_uniform"`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(batch, seq, dim)`; only its shape is used.
        start_index: position of the first element, for incremental
            decoding. Defaults to `0`.
        positions: optional integer tensor `(batch, seq)` of per-token
            positions, gathered from the table instead of the rows
            `start_index .. start_index + seq`; packed rows pass positions
            that restart at 0 in each segment. `start_index` must then stay
            `0`.

    Returns:
        Rows `start_index .. start_index + seq` of the table (or the rows
        `positions`) broadcast to the shape of `inputs`.

    Example:

    >>> import numpy as np
    >>> layer = LearnedPositionEmbedding(sequence_length=8)
    >>> tuple(layer(np.zeros((2, 5, 4), "float32")).shape)
    (2, 5, 4)
    >>> tuple(layer.embeddings.shape)
    (8, 4)
    >>> positions = np.array([[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]])
    >>> tuple(layer(np.zeros((2, 5, 4)), positions=positions).shape)
    (2, 5, 4)

    References:
        Gehring et al., "Convolutional Sequence to Sequence Learning", 2017;
        Devlin et al., "BERT", 2019.
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        check_positive_int("sequence_length", sequence_length)
        initializer = check_initializer("initializer", initializer)
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = initializer
        self.supports_masking = True

    def build(self, input_shape):
        check_rank(self, "inputs", input_shape, (3,))
        if input_shape[1] is not None and input_shape[1] > self.sequence_length:
            _raise_overflow(input_shape[1], self.sequence_length)
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
            trainable=True,
        )
        self.built = True

    def _checked_table(self, needed):
        """The table, guarded at run time to have `needed` rows."""
        return _backend.with_runtime_check(
            ops.convert_to_tensor(self.embeddings),
            ops.less_equal(needed, self.sequence_length),
            _overflow_message(self.sequence_length),
            needed,
        )

    def _gather(self, positions):
        known = _backend.static_value(positions)
        if known is None:
            table = self._checked_table(ops.max(positions) + 1)
        else:
            if known.size and known.min() < 0:
                raise ValueError(
                    "`positions` must be non-negative. Received: positions "
                    f"with minimum {known.min()}"
                )
            if known.size and known.max() >= self.sequence_length:
                _raise_overflow(int(known.max()) + 1, self.sequence_length)
            table = ops.convert_to_tensor(self.embeddings)
        return ops.take(table, positions, axis=0)  # (batch, seq, dim)

    def call(self, inputs, start_index=0, positions=None):
        if positions is not None:
            positions = _check_positions(self, inputs, positions, start_index)
            return ops.cast(self._gather(positions), self.compute_dtype)
        shape = ops.shape(inputs)
        length = _backend.static_value(shape[1])
        start = _backend.static_value(start_index)
        if length is not None and int(length) > self.sequence_length:
            _raise_overflow(int(length), self.sequence_length)
        if length is not None and start is not None:
            if int(length) + int(start) > self.sequence_length:
                _raise_overflow(int(length) + int(start), self.sequence_length)
            table = ops.convert_to_tensor(self.embeddings)
        else:
            table = self._checked_table(
                ops.cast(shape[1], "int32") + ops.cast(start_index, "int32")
            )
        if isinstance(start_index, int) and start_index == 0:
            rows = table[: shape[1]]
        else:
            rows = _backend.rows(table, start_index, shape[1])
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


_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": (
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    ),
}


def _rope_type(scaling):
    return scaling.get("rope_type", scaling.get("type", "default"))


def check_rope_scaling(name, scaling):
    """Validate a Hugging Face `rope_scaling` dict (or None)."""
    if scaling is None:
        return scaling
    if not isinstance(scaling, dict):
        raise ValueError(
            f"`{name}` must be None or a dict such as "
            '{"rope_type": "linear", "factor": 2.0}. '
            f"Received: {name}={scaling!r}"
        )
    rope_type = _rope_type(scaling)
    if rope_type not in _ROPE_KEYS:
        raise ValueError(
            f'`{name}` must have rope_type "default", "linear" or "llama3". '
            f"Received: {name} with rope_type={rope_type!r}"
        )
    for key in _ROPE_KEYS[rope_type]:
        value = scaling.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not value > 0
        ):
            raise ValueError(
                f'`{name}` with rope_type "{rope_type}" needs a positive '
                f"number `{key}`. Received: {name}={scaling!r}"
            )
    if rope_type == "llama3" and not (
        scaling["high_freq_factor"] > scaling["low_freq_factor"]
    ):
        raise ValueError(
            f"`{name}` needs high_freq_factor > low_freq_factor. "
            f"Received: {name}={scaling!r}"
        )
    return scaling


def rope_frequencies(max_wavelength, dim, scaling=None):
    """Rotary angular frequencies `(dim // 2,)`, float64, as in
    transformers' `_compute_default_rope_parameters`,
    `_compute_linear_scaling_rope_parameters` and
    `_compute_llama3_parameters`."""
    frequencies = 1.0 / np.power(
        float(max_wavelength), np.arange(0, dim, 2, dtype="float64") / dim
    )
    rope_type = "default" if scaling is None else _rope_type(scaling)
    if rope_type == "linear":
        return frequencies / scaling["factor"]
    if rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        context = scaling["original_max_position_embeddings"]
        wavelengths = 2 * math.pi / frequencies
        # Long wavelengths are divided by `factor`, short ones kept, and
        # those between interpolated smoothly.
        smooth = (context / wavelengths - low) / (high - low)
        smoothed = (1 - smooth) * frequencies / factor + smooth * frequencies
        scaled = np.where(
            wavelengths > context / low, frequencies / factor, frequencies
        )
        medium = (wavelengths >= context / high) & (
            wavelengths <= context / low
        )
        return np.where(medium, smoothed, scaled)
    return frequencies


@keras.saving.register_keras_serializable(package="keras_tfm")
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding (RoPE), applied to queries and keys.

    Each pair of features `(x[i], x[i + d/2])` is rotated by the angle
    `p / max_wavelength^(2i/d)`, so that the dot product of a rotated query
    and key depends only on their relative position. The half-split pairing
    is the one of GPT-NeoX, LLaMA and keras-hub. Angles use the same exact
    float32 reduction as `SinusoidalPositionEncoding`.

    Args:
        max_wavelength: the longest wavelength (Hugging Face's
            `rope_theta`). Defaults to `10000`.
        scaling: optional frequency scaling, a dict in Hugging Face's
            `rope_scaling` form: `{"rope_type": "linear", "factor": f}`
            (every frequency divided by `f`), `{"rope_type": "llama3",
            "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}` (Llama 3.1's smooth
            interpolation) or `{"rope_type": "default"}` (none). The key
            `"type"` is accepted for `"rope_type"`. Frequencies follow
            `transformers.modeling_rope_utils` exactly.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(batch, seq, heads, head_dim)` or `(batch, seq,
            dim)`, with an even last dimension.
        start_index: position of the first element. Defaults to `0`.
        positions: optional integer tensor `(batch, seq)` of per-token
            positions (shared by every head), used instead of
            `start_index + arange(seq)`; packed rows pass positions that
            restart at 0 in each segment. `start_index` must then stay `0`.

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

    def __init__(self, max_wavelength=10000, scaling=None, **kwargs):
        check_positive_number("max_wavelength", max_wavelength)
        check_rope_scaling("scaling", scaling)
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling = None if scaling is None else dict(scaling)
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

    def call(self, inputs, start_index=0, positions=None):
        shape = ops.shape(inputs)
        dim = inputs.shape[-1]
        parts = _turn_parts(
            self.max_wavelength, dim, _items(self.scaling), rotary=True
        )
        if positions is None:
            positions = _positions(shape[1], start_index)  # (seq,)
        else:
            positions = _check_positions(self, inputs, positions, start_index)
        turns = sinusoid_angles_in_turns(positions, parts)
        angles = ops.concatenate([turns, turns], axis=-1) * (2 * math.pi)
        # ([batch,] seq, dim) -> broadcastable to (batch, seq, [heads,] dim)
        if len(angles.shape) == 2:
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
        config.update(
            {"max_wavelength": self.max_wavelength, "scaling": self.scaling}
        )
        return config
