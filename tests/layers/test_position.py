"""Position layers against independent NumPy float64 references."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

from keras_tfm.layers.position import (
    LearnedPositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionEncoding,
)
from tests.helpers import run_layer_test, to_numpy


def sinusoid_reference(positions, dim, max_wavelength=10000.0):
    """The paper's formula, interleaved: sin on even, cos on odd features."""
    positions = np.asarray(positions, dtype="float64")[:, None]
    features = np.arange(dim)
    exponent = 2 * (features // 2) / dim  # 2i / d for features 2i and 2i+1
    angles = positions / np.power(max_wavelength, exponent)
    return np.where(features % 2 == 0, np.sin(angles), np.cos(angles))


def rotary_reference(x, positions, max_wavelength=10000.0):
    """GPT-NeoX rotation of the pairs `(x[i], x[i + d/2])`."""
    x = np.asarray(x, dtype="float64")
    half = x.shape[-1] // 2
    inverse = np.power(max_wavelength, -np.arange(half) * 2 / x.shape[-1])
    angles = np.asarray(positions, "float64")[:, None] * inverse  # (seq, d/2)
    if x.ndim == 4:
        angles = angles[:, None, :]  # broadcast over heads
    cos, sin = np.cos(angles), np.sin(angles)
    first, second = x[..., :half], x[..., half:]
    return np.concatenate(
        [first * cos - second * sin, second * cos + first * sin], axis=-1
    )


# --- SinusoidalPositionEncoding --------------------------------------------


@pytest.mark.parametrize("dim", [32, 7])
def test_sinusoidal_matches_paper_float32_up_to_4096(dim):
    length = 4097
    encoding = SinusoidalPositionEncoding()(np.zeros((1, length, dim)))
    assert keras.backend.standardize_dtype(encoding.dtype) == "float32"
    expected = sinusoid_reference(np.arange(length), dim)
    error = np.abs(to_numpy(encoding)[0] - expected).max()
    assert error <= 2e-5, error


def test_sinusoidal_first_rows_by_hand():
    encoding = to_numpy(SinusoidalPositionEncoding()(np.zeros((1, 2, 4))))[0]
    # Position 0: sin 0 = 0, cos 0 = 1 on every pair.
    np.testing.assert_allclose(encoding[0], [0, 1, 0, 1], atol=1e-7)
    # Position 1: angles 1 and 1/100 (10000^(2/4)).
    np.testing.assert_allclose(
        encoding[1],
        [np.sin(1), np.cos(1), np.sin(0.01), np.cos(0.01)],
        atol=1e-6,
    )


def test_sinusoidal_broadcasts_over_batch():
    x = np.random.default_rng(0).normal(size=(3, 5, 6)).astype("float32")
    encoding = to_numpy(SinusoidalPositionEncoding()(x))
    assert encoding.shape == (3, 5, 6)
    for row in encoding[1:]:
        np.testing.assert_array_equal(row, encoding[0])


def test_sinusoidal_max_wavelength():
    encoding = SinusoidalPositionEncoding(max_wavelength=100)(
        np.zeros((1, 50, 8))
    )
    expected = sinusoid_reference(np.arange(50), 8, max_wavelength=100.0)
    np.testing.assert_allclose(to_numpy(encoding)[0], expected, atol=2e-6)


def test_sinusoidal_mixed_float16_up_to_4096():
    keras.config.set_dtype_policy("mixed_float16")
    length, dim = 4097, 32
    encoding = SinusoidalPositionEncoding()(np.zeros((1, length, dim)))
    assert keras.backend.standardize_dtype(encoding.dtype) == "float16"
    expected = sinusoid_reference(np.arange(length), dim)
    error = np.abs(to_numpy(encoding)[0] - expected).max()
    assert error <= 1.5e-3, error


def test_sinusoidal_mixed_bfloat16_keeps_positions_distinct():
    keras.config.set_dtype_policy("mixed_bfloat16")
    encoding = SinusoidalPositionEncoding()(np.zeros((1, 300, 16)))
    assert keras.backend.standardize_dtype(encoding.dtype) == "bfloat16"
    encoding = to_numpy(encoding)[0]
    # In bfloat16, 256 + 1 == 256: positions must not be rounded that way.
    assert not np.array_equal(encoding[257], encoding[256])
    expected = sinusoid_reference(np.arange(300), 16)
    assert np.abs(encoding - expected).max() <= 1e-2


@pytest.mark.parametrize("tensor", [False, True])
def test_sinusoidal_start_index_shifts_positions(tensor):
    start = 1000
    if tensor:
        start = ops.convert_to_tensor(start, dtype="int32")
    encoding = SinusoidalPositionEncoding()(
        np.zeros((2, 6, 10)), start_index=start
    )
    expected = sinusoid_reference(np.arange(1000, 1006), 10)
    np.testing.assert_allclose(to_numpy(encoding)[1], expected, atol=2e-5)


@pytest.mark.parametrize("start", [10**6, 2**24 - 100])
def test_sinusoidal_far_positions_stay_accurate(start):
    encoding = SinusoidalPositionEncoding()(
        np.zeros((1, 20, 64)), start_index=start
    )
    expected = sinusoid_reference(np.arange(start, start + 20), 64)
    np.testing.assert_allclose(to_numpy(encoding)[0], expected, atol=2e-5)


@pytest.mark.parametrize("max_wavelength", [0, -1.0, "big", True, None])
def test_sinusoidal_bad_max_wavelength(max_wavelength):
    with pytest.raises(ValueError, match="max_wavelength"):
        SinusoidalPositionEncoding(max_wavelength=max_wavelength)


def test_sinusoidal_wrong_rank():
    with pytest.raises(ValueError, match="rank"):
        SinusoidalPositionEncoding()(np.zeros((2, 5)))


def test_sinusoidal_layer_contract():
    x = np.random.default_rng(1).normal(size=(2, 6, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype="bool")
    run_layer_test(
        SinusoidalPositionEncoding,
        {"max_wavelength": 500},
        x,
        num_trainable_weights=0,
        expected_output_shape=(2, 6, 8),
        input_mask=mask,
    )


def test_sinusoidal_layer_contract_start_index():
    x = np.zeros((2, 4, 6), "float32")
    (out,) = run_layer_test(
        SinusoidalPositionEncoding,
        {},
        x,
        call_kwargs={"start_index": 7},
        num_trainable_weights=0,
        run_mixed_precision=False,
    )
    expected = sinusoid_reference(np.arange(7, 11), 6)
    np.testing.assert_allclose(to_numpy(out)[0], expected, atol=2e-6)


# --- LearnedPositionEmbedding ----------------------------------------------


def test_learned_weight_name_and_shape():
    layer = LearnedPositionEmbedding(sequence_length=8)
    layer(np.zeros((2, 5, 4), "float32"))
    assert len(layer.weights) == 1
    assert layer.weights[0] is layer.embeddings
    assert layer.embeddings.name == "embeddings"
    assert tuple(layer.embeddings.shape) == (8, 4)
    assert layer.embeddings.trainable


def test_learned_returns_table_rows():
    layer = LearnedPositionEmbedding(sequence_length=8)
    out = to_numpy(layer(np.zeros((3, 5, 4), "float32")))
    table = to_numpy(layer.embeddings)
    for row in out:
        np.testing.assert_array_equal(row, table[:5])


@pytest.mark.parametrize("tensor", [False, True])
def test_learned_start_index_slices(tensor):
    layer = LearnedPositionEmbedding(sequence_length=8)
    start = 3
    if tensor:
        start = ops.convert_to_tensor(start, dtype="int32")
    out = to_numpy(layer(np.zeros((2, 4, 4), "float32"), start_index=start))
    table = to_numpy(layer.embeddings)
    np.testing.assert_array_equal(out[0], table[3:7])


def test_learned_full_length_fits():
    layer = LearnedPositionEmbedding(sequence_length=8)
    assert tuple(layer(np.zeros((1, 8, 4), "float32")).shape) == (1, 8, 4)
    out = layer(np.zeros((1, 2, 4), "float32"), start_index=6)
    assert tuple(out.shape) == (1, 2, 4)


def test_learned_overflow_raises_eagerly():
    layer = LearnedPositionEmbedding(sequence_length=8)
    with pytest.raises(ValueError, match="sequence_length"):
        layer(np.zeros((1, 9, 4), "float32"))
    layer = LearnedPositionEmbedding(sequence_length=8)
    layer(np.zeros((1, 4, 4), "float32"))
    with pytest.raises(ValueError, match="sequence_length"):
        layer(np.zeros((1, 4, 4), "float32"), start_index=5)
    # A concrete tensor start index is checked too (JAX would clamp it).
    start = ops.convert_to_tensor(5, dtype="int32")
    with pytest.raises(ValueError, match="sequence_length"):
        layer(np.zeros((1, 4, 4), "float32"), start_index=start)


def test_learned_overflow_raises_at_model_construction():
    inputs = keras.Input(shape=(9, 4))
    with pytest.raises(ValueError, match="sequence_length"):
        LearnedPositionEmbedding(sequence_length=8)(inputs)


def test_learned_overflow_raises_at_predict_with_unknown_length():
    inputs = keras.Input(shape=(None, 4))
    model = keras.Model(inputs, LearnedPositionEmbedding(8)(inputs))
    assert model.predict(np.zeros((2, 3, 4)), verbose=0).shape == (2, 3, 4)
    # A second length makes TensorFlow retrace with a relaxed (unknown)
    # length, which the graph assertion guards.
    assert model.predict(np.zeros((2, 8, 4)), verbose=0).shape == (2, 8, 4)
    # Any backend error type, but it must name the table size.
    with pytest.raises(Exception, match="sequence_length"):
        model.predict(np.zeros((2, 9, 4)), verbose=0)


@pytest.mark.parametrize("sequence_length", [0, -3, 2.5, True, None])
def test_learned_bad_sequence_length(sequence_length):
    with pytest.raises(ValueError, match="sequence_length"):
        LearnedPositionEmbedding(sequence_length=sequence_length)


def test_learned_bad_initializer():
    with pytest.raises(ValueError, match="initializer"):
        LearnedPositionEmbedding(sequence_length=4, initializer="nope")


def test_learned_layer_contract():
    x = np.random.default_rng(2).normal(size=(2, 6, 4)).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype="bool")
    run_layer_test(
        LearnedPositionEmbedding,
        {"sequence_length": 8, "initializer": "random_normal"},
        x,
        num_trainable_weights=1,
        expected_output_shape=(2, 6, 4),
        input_mask=mask,
    )


# --- RotaryEmbedding -------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 7, 3, 8), (2, 7, 8)])
def test_rotary_matches_neox_reference(shape):
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    out = RotaryEmbedding()(x)
    assert tuple(out.shape) == shape
    np.testing.assert_allclose(
        to_numpy(out), rotary_reference(x, np.arange(7)), atol=2e-5
    )


@pytest.mark.parametrize("tensor", [False, True])
def test_rotary_start_index(tensor):
    x = np.random.default_rng(4).normal(size=(1, 5, 2, 16)).astype("float32")
    start = 3000
    if tensor:
        start = ops.convert_to_tensor(start, dtype="int32")
    out = RotaryEmbedding(max_wavelength=500)(x, start_index=start)
    expected = rotary_reference(x, np.arange(3000, 3005), max_wavelength=500)
    np.testing.assert_allclose(to_numpy(out), expected, atol=5e-5)


def test_rotary_far_positions_stay_accurate():
    x = np.random.default_rng(8).normal(size=(1, 20, 2, 16)).astype("float32")
    start = 2**24 - 100
    out = RotaryEmbedding()(x, start_index=start)
    expected = rotary_reference(x, np.arange(start, start + 20))
    np.testing.assert_allclose(to_numpy(out), expected, atol=5e-5)


def test_rotary_position_zero_is_identity():
    x = np.random.default_rng(5).normal(size=(2, 1, 2, 8)).astype("float32")
    np.testing.assert_allclose(to_numpy(RotaryEmbedding()(x)), x, atol=1e-7)


def test_rotary_keeps_norm():
    x = np.random.default_rng(6).normal(size=(1, 50, 16)).astype("float32")
    out = to_numpy(RotaryEmbedding()(x))
    np.testing.assert_allclose(
        np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
    )


@given(
    p1=st.integers(0, 5000),
    p2=st.integers(0, 5000),
    shift=st.integers(0, 5000),
)
def test_rotary_dot_product_depends_on_relative_position(p1, p2, shift):
    rng = np.random.default_rng(p1 + 7 * p2)
    q = rng.normal(size=(1, 1, 16)).astype("float32")
    k = rng.normal(size=(1, 1, 16)).astype("float32")
    layer = RotaryEmbedding()

    def score(query_position, key_position):
        rq = to_numpy(layer(q, start_index=query_position))
        rk = to_numpy(layer(k, start_index=key_position))
        return float(np.sum(rq * rk))

    assert score(p1, p2) == pytest.approx(
        score(p1 + shift, p2 + shift), abs=1e-4
    )


@pytest.mark.parametrize("max_wavelength", [0, -10, "x", None])
def test_rotary_bad_max_wavelength(max_wavelength):
    with pytest.raises(ValueError, match="max_wavelength"):
        RotaryEmbedding(max_wavelength=max_wavelength)


def test_rotary_odd_dim_raises():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding()(np.zeros((1, 3, 5), "float32"))


def test_rotary_wrong_rank():
    with pytest.raises(ValueError, match="rank"):
        RotaryEmbedding()(np.zeros((3, 4), "float32"))


def test_rotary_layer_contract():
    shape = (2, 6, 2, 4)  # (batch, seq, heads, head_dim)
    x = np.random.default_rng(7).normal(size=shape).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype="bool")
    run_layer_test(
        RotaryEmbedding,
        {"max_wavelength": 1000},
        x,
        num_trainable_weights=0,
        expected_output_shape=shape,
        input_mask=mask,
    )


# --- per-token `positions` (packed rows) -----------------------------------

RESTARTED = np.array([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]], "int32")
SEGMENTS = [(0, 3), (3, 5), (5, 6)]  # the segments of RESTARTED[0]


def arange_positions(batch, length):
    return np.broadcast_to(np.arange(length, dtype="int32"), (batch, length))


def make_layer(name):
    if name == "sinusoidal":
        return SinusoidalPositionEncoding(), (2, 6, 8)
    if name == "learned":
        return LearnedPositionEmbedding(sequence_length=8), (2, 6, 8)
    return RotaryEmbedding(), (2, 6, 2, 8)


LAYERS = ["sinusoidal", "learned", "rotary"]


@pytest.mark.parametrize("name", LAYERS)
def test_arange_positions_equal_the_default_bit_for_bit(name):
    layer, shape = make_layer(name)
    x = np.random.default_rng(9).normal(size=shape).astype("float32")
    default = ops.convert_to_numpy(layer(x))
    given = ops.convert_to_numpy(
        layer(x, positions=arange_positions(*shape[:2]))
    )
    np.testing.assert_array_equal(given, default)


@pytest.mark.parametrize("name", LAYERS)
def test_restarted_positions_equal_each_segment_alone(name):
    layer, shape = make_layer(name)
    x = np.random.default_rng(10).normal(size=shape).astype("float32")
    packed = to_numpy(layer(x, positions=RESTARTED))
    for start, end in SEGMENTS:
        alone = to_numpy(layer(x[:1, start:end]))
        np.testing.assert_allclose(packed[:1, start:end], alone, atol=1e-6)
    # The second row counts 0..5: the default positions.
    np.testing.assert_allclose(packed[1], to_numpy(layer(x))[1], atol=1e-6)


def test_sinusoidal_positions_match_the_paper_far_out():
    positions = np.array([[5000, 5001, 0, 2**20]], "int32")
    encoding = SinusoidalPositionEncoding()(
        np.zeros((1, 4, 16)), positions=positions
    )
    expected = sinusoid_reference(positions[0], 16)
    np.testing.assert_allclose(to_numpy(encoding)[0], expected, atol=2e-5)


def test_rotary_positions_match_reference_per_row():
    x = np.random.default_rng(11).normal(size=(2, 6, 2, 8)).astype("float32")
    out = to_numpy(RotaryEmbedding()(x, positions=RESTARTED))
    for row in range(2):
        expected = rotary_reference(x[row : row + 1], RESTARTED[row])
        np.testing.assert_allclose(out[row : row + 1], expected, atol=2e-5)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("length", [6, None])
def test_positions_on_symbolic_tensors(name, length):
    layer, shape = make_layer(name)
    x = keras.Input(shape=(length, *shape[2:]))
    positions = keras.Input(shape=(length,), dtype="int32")
    out = layer(x, positions=positions)
    assert tuple(out.shape) == (None, length, *shape[2:])


@pytest.mark.parametrize("name", LAYERS)
def test_positions_in_a_compiled_fit(name):
    layer, shape = make_layer(name)
    x = keras.Input(shape=(None, *shape[2:]))
    positions = keras.Input(shape=(None,), dtype="int32")
    out = keras.layers.Dense(1)(layer(x, positions=positions))
    model = keras.Model([x, positions], out)
    # torch.compile is slow to start; the other backends compile with XLA.
    model.compile("sgd", "mse", jit_compile=keras.backend.backend() != "torch")
    data = np.random.default_rng(12).normal(size=shape).astype("float32")
    target = np.zeros((*shape[:-1], 1), "float32")
    model.fit([data, RESTARTED], target, epochs=1, verbose=0)
    compiled = model.predict([data, RESTARTED], verbose=0)
    eager = ops.convert_to_numpy(model([data, RESTARTED]))
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


@pytest.mark.parametrize("name", LAYERS)
def test_positions_bad_inputs_raise(name):
    layer, shape = make_layer(name)
    x = np.zeros(shape, "float32")
    with pytest.raises(ValueError, match="start_index=2"):
        layer(x, start_index=2, positions=RESTARTED)
    with pytest.raises(TypeError, match="positions with dtype=float32"):
        layer(x, positions=RESTARTED.astype("float32"))
    with pytest.raises(ValueError, match=r"positions with shape \(2, 5\)"):
        layer(x, positions=RESTARTED[:, :5])
    with pytest.raises(ValueError, match=r"positions with shape \(12,\)"):
        layer(x, positions=RESTARTED.reshape(-1))


def test_learned_positions_past_the_table_raise_eagerly():
    layer = LearnedPositionEmbedding(sequence_length=8)
    x = np.zeros((2, 6, 4), "float32")
    with pytest.raises(ValueError, match="needs 10 rows.*sequence_length=8"):
        layer(x, positions=RESTARTED + np.array([[0, 0, 7, 0, 0, 0]]))
    with pytest.raises(ValueError, match="non-negative.*minimum -1"):
        layer(x, positions=RESTARTED - 1)
    # The last row is fine.
    layer(x, positions=np.full((2, 6), 7, "int32"))


# --- the learned table's overflow, per backend and compile mode ------------
# (issue 13; the contract is in `LearnedPositionEmbedding`'s docstring)


def expect_overflow(mode):
    """What overflowing the table gives here: see the layer's docstring."""
    if keras.backend.backend() == "tensorflow" and mode == "graph":
        return "assertion"
    if keras.backend.backend() == "tensorflow" and mode == "jit":
        return "xla"
    return "value_error"


def check_overflow_error(info, mode, needed):
    expected = expect_overflow(mode)
    message = str(info.value)
    if expected == "value_error":
        assert info.type is ValueError
        assert f"needs {needed} rows" in message, message
        assert "sequence_length=8" in message, message
        return
    import tensorflow as tf

    assert info.type is tf.errors.InvalidArgumentError
    if expected == "assertion":
        assert "sequence_length=8" in message, message
        assert f"[{needed}]" in message, message
    else:
        # XLA drops assertions: its own shape error, no `sequence_length`.
        assert "sequence_length" not in message, message


def skip_torch_compile(mode):
    if keras.backend.backend() == "torch" and mode == "jit":
        # Checked by hand: ValueError, as eagerly (the check runs in Python
        # while dynamo traces), but each test takes ~30 s on 2 CPU cores.
        pytest.skip("torch.compile is too slow to start for a unit test")


@pytest.mark.parametrize("mode", ["graph", "jit"])
def test_learned_overflow_with_a_length_known_only_at_run_time(mode):
    skip_torch_compile(mode)
    inputs = keras.Input(shape=(None, 4))
    model = keras.Model(inputs, LearnedPositionEmbedding(8)(inputs))
    model.compile(jit_compile=mode == "jit")
    model.predict(np.zeros((2, 3, 4)), verbose=0)
    # A second length makes TensorFlow retrace with an unknown length.
    model.predict(np.zeros((2, 8, 4)), verbose=0)
    with pytest.raises(Exception) as info:
        model.predict(np.zeros((2, 9, 4)), verbose=0)
    check_overflow_error(info, mode, needed=9)


@pytest.mark.parametrize("mode", ["eager", "graph", "jit"])
def test_learned_overflow_with_positions(mode):
    skip_torch_compile(mode)
    x = keras.Input(shape=(None, 4))
    positions = keras.Input(shape=(None,), dtype="int32")
    layer = LearnedPositionEmbedding(8)
    model = keras.Model([x, positions], layer(x, positions=positions))
    model.compile(jit_compile=mode == "jit")
    data = np.zeros((2, 6, 4), "float32")
    bad = RESTARTED.copy()
    bad[0, 2] = 9
    if mode == "eager":
        with pytest.raises(ValueError) as info:
            model([data, bad])
        check_overflow_error(info, mode, needed=10)
        return
    model.predict([data, RESTARTED], verbose=0)
    backend = keras.backend.backend()
    if mode == "jit" and backend in ("tensorflow", "jax"):
        out = model.predict([data, bad], verbose=0)
        table = to_numpy(layer.embeddings)
        if backend == "tensorflow":  # XLA clamps to the last row
            np.testing.assert_array_equal(out[0, 2], table[7])
        else:  # `jnp.take` fills with NaN
            assert np.isnan(out[0, 2]).all()
        np.testing.assert_array_equal(out[0, 1], table[1])
        return
    with pytest.raises(Exception) as info:
        model.predict([data, bad], verbose=0)
    check_overflow_error(info, mode, needed=10)


@pytest.mark.parametrize("mode", ["graph", "jit"])
def test_learned_overflow_with_a_start_index_known_only_at_run_time(mode):
    layer = LearnedPositionEmbedding(8)
    x = np.zeros((1, 4, 2), "float32")
    layer(x)
    table = to_numpy(layer.embeddings)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        call = jax.jit(lambda start: layer(x, start_index=start))
        if mode == "graph":
            pytest.skip("JAX has no graph mode without jit")
        # A traced start index cannot be checked: the slice start clamps.
        np.testing.assert_array_equal(to_numpy(call(6))[0], table[4:8])
        return
    if backend == "torch":
        pytest.skip("torch has no graph of its own; eager is tested above")
    import tensorflow as tf

    call = tf.function(
        lambda start: layer(x, start_index=start), jit_compile=mode == "jit"
    )
    np.testing.assert_array_equal(to_numpy(call(tf.constant(4)))[0], table[4:])
    with pytest.raises(Exception) as info:
        call(tf.constant(6))
    check_overflow_error(info, mode, needed=10)


# ------------------------------------------------------- rope scaling

ROPE_SCALINGS = [
    None,
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 4.0},
    {"type": "linear", "factor": 2.5},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
]


@pytest.mark.parametrize("scaling", ROPE_SCALINGS)
def test_rotary_scaling_matches_transformers(scaling):
    import torch
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    parameters = {"rope_theta": 500000.0, **(scaling or {})}
    parameters.setdefault("rope_type", parameters.pop("type", "default"))
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        rope_parameters=parameters,
    )
    rope_type = parameters["rope_type"]
    if rope_type == "default":
        dim = 32
        inverse = (
            1.0 / (500000.0 ** (torch.arange(0, dim, 2).float() / dim)).numpy()
        )
    else:
        inverse = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")[0].numpy()
    # The transformers rotation: x * cos + rotate_half(x) * sin.
    positions = np.arange(40)
    angles = positions[:, None] * inverse[None, :].astype("float64")
    angles = np.concatenate([angles, angles], axis=-1)
    x = np.random.default_rng(0).normal(size=(1, 40, 2, 32))
    first, second = x[..., :16], x[..., 16:]
    rotated = np.concatenate([-second, first], axis=-1)
    expected = (
        x * np.cos(angles)[None, :, None]
        + rotated * np.sin(angles)[None, :, None]
    )
    layer = RotaryEmbedding(500000.0, scaling=scaling)
    got = ops.convert_to_numpy(layer(x.astype("float32")))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert layer.get_config()["scaling"] == scaling
    revived = RotaryEmbedding.from_config(layer.get_config())
    np.testing.assert_array_equal(
        ops.convert_to_numpy(revived(x.astype("float32"))), got
    )


def test_rotary_scaling_changes_the_rotation():
    x = np.random.default_rng(1).normal(size=(1, 12, 8)).astype("float32")
    plain = ops.convert_to_numpy(RotaryEmbedding()(x))
    linear = RotaryEmbedding(scaling={"rope_type": "linear", "factor": 2.0})
    # Linear scaling is position interpolation: position p acts as p / 2.
    halved = RotaryEmbedding()(x[:, ::2], positions=np.arange(0, 12, 2)[None])
    doubled = linear(x[:, ::2], positions=2 * np.arange(0, 12, 2)[None])
    np.testing.assert_allclose(
        ops.convert_to_numpy(doubled), ops.convert_to_numpy(halved), atol=1e-5
    )
    assert not np.allclose(ops.convert_to_numpy(linear(x)), plain)


@pytest.mark.parametrize(
    "scaling, match",
    [
        ({"rope_type": "yarn", "factor": 2.0}, "scaling.*yarn"),
        ({"rope_type": "dynamic", "factor": 2.0}, "scaling.*dynamic"),
        ({"rope_type": "linear"}, "factor"),
        ({"rope_type": "linear", "factor": -1.0}, "factor"),
        ({"rope_type": "llama3", "factor": 8.0}, "low_freq_factor"),
        ("linear", "scaling"),
    ],
)
def test_rotary_bad_scaling(scaling, match):
    with pytest.raises(ValueError, match=match):
        RotaryEmbedding(scaling=scaling)
