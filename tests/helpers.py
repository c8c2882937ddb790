"""The checks every keras_tfm layer owes, in one helper (`run_layer_test`).

Modelled on Keras core's `TestCase.run_layer_test`, but a plain function so
that pytest tests (and hypothesis tests) can call it.
"""

import inspect
import math
import os
import socket
import subprocess
import tempfile
import warnings

import keras
import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from keras import ops

from keras_tfm import models
from keras_tfm.losses import MaskedSparseCategoricalCrossentropy


class AttachMask(keras.layers.Layer):
    """Return `inputs[0]` carrying the boolean mask `inputs[1]`.

    Attaches a Keras implicit mask inside a functional model, so the mask
    travels the way it does behind an embedding with `mask_zero=True`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        return ops.cast(inputs[1], "bool")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


class MaskProbe(keras.layers.Layer):
    """Output the Keras mask that reaches this layer, as int32.

    `1`/`0` where the mask is `True`/`False`, and all `-1` of shape
    `(batch, seq)` when no mask arrives. This reads a mask on every backend,
    eager or compiled, without touching Keras internals.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if mask is None:
            return -ops.ones(ops.shape(inputs)[:2], dtype="int32")
        return ops.cast(mask, "int32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:2]


def _as_list(input_data):
    return list(input_data) if isinstance(input_data, (list, tuple)) else None


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _is_float(x):
    return keras.backend.is_float_dtype(_dtype(x))


def _numpy(x):
    x = ops.convert_to_numpy(x)
    if keras.backend.is_float_dtype(str(x.dtype)):
        x = x.astype("float32")  # bfloat16 arrays do not compare well
    return x


def _has_sequence_axis(x):
    # (batch, seq, ...features) or integer token ids (batch, seq).
    return len(x.shape) >= 3 or (
        len(x.shape) == 2 and not keras.backend.is_float_dtype(_dtype(x))
    )


def _symbolic_inputs(input_data, dynamic_sequence=False):
    """`keras.Input`s matching the data, optionally with a `None` seq axis."""

    def make(x):
        shape = tuple(x.shape[1:])
        if dynamic_sequence and _has_sequence_axis(x):
            shape = (None, *shape[1:])
        return keras.Input(shape=shape, dtype=_dtype(x))

    listed = _as_list(input_data)
    if listed is None:
        return make(input_data)
    made = [make(x) for x in listed]
    return tuple(made) if isinstance(input_data, tuple) else made


def _apply(layer, inputs, call_kwargs):
    """A tuple holds positional arguments (`(query, value)`); a list is
    one argument (AddNorm's `[residual, sublayer]`)."""
    if isinstance(inputs, tuple):
        return layer(*inputs, **call_kwargs)
    return layer(inputs, **call_kwargs)


def _call(layer, inputs, call_kwargs, tied_check):
    if tied_check is not None:
        return tied_check(layer, inputs)
    return _apply(layer, inputs, call_kwargs)


def _flat(outputs):
    return keras.tree.flatten(outputs)


def _check_config(layer_cls, init_kwargs):
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    params = inspect.signature(layer_cls.__init__).parameters.values()
    missing = [
        p.name
        for p in params
        if p.name != "self"
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and p.name not in config
    ]
    assert not missing, (
        f"{layer_cls.__name__}.get_config() lacks constructor arguments "
        f"{missing}. Received: config keys {sorted(config)}"
    )
    revived = layer_cls.from_config(config)
    assert type(revived) is layer_cls
    assert revived.get_config() == config
    # Serialising through Keras' registry (what `.keras` files use) too.
    serialized = keras.saving.serialize_keras_object(layer)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is layer_cls
    assert revived.get_config() == config


def _check_shapes(
    layer_cls, init_kwargs, input_data, call_kwargs, expected_output_shape
):
    """Eager output vs `compute_output_shape` vs symbolic output."""
    layer = layer_cls(**init_kwargs)
    outputs = _apply(layer, input_data, call_kwargs)
    flat_outputs = _flat(outputs)
    eager_shapes = [tuple(o.shape) for o in flat_outputs]
    eager_dtypes = [_dtype(o) for o in flat_outputs]

    if expected_output_shape is not None:
        expected = expected_output_shape
        if not isinstance(expected, list):
            expected = [expected]
        assert [tuple(s) for s in expected] == eager_shapes, (
            f"expected {expected}, got {eager_shapes}"
        )

    listed = _as_list(input_data)
    input_shape = (
        tuple(input_data.shape)
        if listed is None
        else [tuple(x.shape) for x in listed]
    )
    # Keras passes only shapes to `compute_output_shape`; a layer whose call
    # arguments change the shape (`reverse=True`) defines
    # `compute_output_spec` instead, which the symbolic calls below check.
    signature = inspect.signature(layer.compute_output_shape).parameters
    if all(k in signature for k in call_kwargs):
        # A tuple spreads into positional shapes, as `_apply` spreads the
        # tensors (`compute_output_shape(query_shape, value_shape)`).
        if isinstance(input_data, tuple):
            computed = layer.compute_output_shape(*input_shape, **call_kwargs)
        else:
            computed = layer.compute_output_shape(input_shape, **call_kwargs)
        computed = keras.tree.map_shape_structure(tuple, computed)
        computed = computed if isinstance(computed, list) else [computed]
        assert [tuple(s) for s in computed] == eager_shapes, (
            f"compute_output_shape gave {computed}, eager call gave "
            f"{eager_shapes}"
        )

    # Static and dynamic (sequence axis `None`) symbolic calls.
    for dynamic in (False, True):
        symbolic = _flat(
            _apply(
                layer_cls(**init_kwargs),
                _symbolic_inputs(input_data, dynamic),
                call_kwargs,
            )
        )
        assert len(symbolic) == len(flat_outputs)
        for out, shape, dtype in zip(
            symbolic, eager_shapes, eager_dtypes, strict=True
        ):
            assert len(out.shape) == len(shape), (out.shape, shape)
            for sym_dim, dim in zip(out.shape, shape, strict=True):
                assert sym_dim is None or sym_dim == dim, (out.shape, shape)
            if not dynamic:
                assert tuple(out.shape[1:]) == shape[1:], (out.shape, shape)
            assert _dtype(out) == dtype, (out.dtype, dtype)
    return flat_outputs


def _check_saving(layer_cls, init_kwargs, input_data, call_kwargs, tied_check):
    layer = layer_cls(**init_kwargs)
    inputs = _symbolic_inputs(input_data)
    model = keras.Model(inputs, _call(layer, inputs, call_kwargs, tied_check))
    expected = _flat(model.predict(input_data, verbose=0))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    loaded_layer = loaded.get_layer(layer.name)
    assert type(loaded_layer) is layer_cls
    assert loaded_layer.get_config() == layer.get_config()
    if tied_check is not None:
        # A tied layer is one set of variables however often it is called.
        assert len(model.weights) == len(layer.weights)
        assert len(loaded.weights) == len(loaded_layer.weights)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    got = _flat(loaded.predict(input_data, verbose=0))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(_numpy(b), _numpy(a), atol=1e-6)


def _check_mask(
    layer_cls, init_kwargs, input_data, call_kwargs, input_mask, expect_mask
):
    input_mask = np.asarray(input_mask, dtype="bool")
    inputs = _symbolic_inputs(input_data)
    mask_input = keras.Input(shape=input_mask.shape[1:], dtype="bool")
    listed = _as_list(inputs)
    if listed is None:
        masked = AttachMask()([inputs, mask_input])
        model_inputs = [inputs, mask_input]
    else:
        masked = [AttachMask()([x, mask_input]) for x in listed]
        model_inputs = [*listed, mask_input]
    if isinstance(input_data, tuple):
        masked = tuple(masked)
    outputs = _apply(layer_cls(**init_kwargs), masked, call_kwargs)
    probe = MaskProbe()(_flat(outputs)[0])
    model = keras.Model(model_inputs, probe)
    if listed is None:
        data = [input_data, input_mask]
    else:
        data = [*input_data, input_mask]
    received = ops.convert_to_numpy(model.predict(data, verbose=0))
    if expect_mask:
        np.testing.assert_array_equal(
            received,
            input_mask.astype("int32"),
            err_msg=f"{layer_cls.__name__} did not propagate the mask",
        )
    else:
        assert (received == -1).all(), (
            f"{layer_cls.__name__} should not output a mask. "
            f"Received: {received}"
        )


def _jit_compile():
    # "auto" would turn XLA off on a CPU-only TensorFlow; torch.compile is
    # too slow for a unit test, so torch runs its default ("auto": eager).
    return "auto" if keras.backend.backend() == "torch" else True


def _check_fit(layer_cls, init_kwargs, input_data, call_kwargs, tied_check):
    layer = layer_cls(**init_kwargs)
    inputs = _symbolic_inputs(input_data)
    outputs = [
        o
        for o in _flat(_call(layer, inputs, call_kwargs, tied_check))
        if keras.backend.is_float_dtype(o.dtype)
    ]
    if not outputs:
        return
    model = keras.Model(inputs, outputs)
    targets = [
        np.zeros(tuple(o.shape), "float32")
        for o in _flat(model.predict(input_data, verbose=0))
    ]
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=["mse"] * len(outputs),
        jit_compile=_jit_compile(),
    )
    batch_size = len(_flat(input_data)[0])
    with warnings.catch_warnings():
        # Weightless layers (e.g. sinusoids) still run the compiled step.
        warnings.filterwarnings("ignore", "The model does not have any")
        history = model.fit(
            input_data, targets, batch_size=batch_size, epochs=1, verbose=0
        )
    loss = history.history["loss"][-1]
    assert np.isfinite(loss), f"non-finite loss {loss}"


def _check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs):
    previous = keras.config.dtype_policy()
    try:
        for policy in ("mixed_float16", "mixed_bfloat16"):
            keras.config.set_dtype_policy(policy)
            layer = layer_cls(**init_kwargs)
            outputs = _flat(_apply(layer, input_data, call_kwargs))
            for out in outputs:
                if _is_float(out):
                    assert np.isfinite(_numpy(out)).all(), (
                        f"non-finite output under {policy}"
                    )
            for variable in layer.weights:
                if keras.backend.is_float_dtype(variable.dtype):
                    assert _dtype(variable) == "float32", (
                        f"{variable.path} is {variable.dtype} under {policy}"
                    )
    finally:
        keras.config.set_dtype_policy(previous)


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    *,
    call_kwargs=None,
    expected_output_shape=None,
    input_mask=None,
    expect_mask=True,
    run_fit=True,
    run_mixed_precision=True,
    tied_check=None,
    num_trainable_weights,
    num_non_trainable_weights=0,
    num_seed_generators=0,
):
    """Run the checks every keras_tfm layer owes.

    1. Config: every `__init__` argument of `layer_cls` (but `**kwargs`)
       is in `get_config()`, and `from_config` and Keras (de)serialisation
       give back an equal config.
    2. Shapes: the eager output's shape equals `expected_output_shape`
       (when given) and `compute_output_shape` (skipped when a call
       argument is not one of its parameters), and a call on `keras.Input`s
       (static, then with a `None` sequence axis) gives the same shape
       (`None` allowed for dynamic axes) and dtype.
    3. Saving: a functional model wrapping the layer survives a `.keras`
       save/load with equal weights, identical outputs (atol 1e-6) and the
       same layer class.
    4. Masks (when `input_mask` is given): the boolean `(batch, seq)` mask
       is attached to every input as a Keras implicit mask; the output's
       mask must equal it (`expect_mask=True`) or be absent.
    5. Training (`run_fit`): one `model.fit` step with an MSE loss on the
       float outputs, XLA-compiled on TensorFlow and JAX; the loss is
       finite.
    6. Mixed precision (`run_mixed_precision`): under `mixed_float16` and
       `mixed_bfloat16` a freshly built layer gives finite outputs and
       keeps its float variables in float32. The policy is restored.
    7. Weights: once called, the layer holds exactly the expected numbers
       of trainable and non-trainable weights and of seed generators
       (dropout) in itself and its sublayers, so a layer that gains or
       loses one fails (as Keras core's `run_layer_test`).

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: a NumPy array, a list of arrays (one argument, e.g.
            AddNorm's `[residual, sublayer]`) or a tuple of arrays
            (positional arguments, e.g. attention's `(query, value)`);
            `keras.Input` dtypes follow the arrays, so integer token ids
            work.
        call_kwargs: dict of extra Python-valued call arguments.
        expected_output_shape: the eager output shape (or a list of shapes
            for several outputs).
        input_mask: optional boolean `(batch, seq)` array for check 4.
        expect_mask: whether the output must carry `input_mask`.
        run_fit: whether to run check 5.
        run_mixed_precision: whether to run check 6.
        tied_check: optional callable `tied_check(layer, inputs) ->
            outputs` that calls the layer more than once (e.g.
            `lambda layer, ids: layer(layer(ids), reverse=True)`). When
            given, checks 3 and 5 use the model it builds, and check 3 also
            asserts that the model, before and after loading, holds exactly
            the layer's variables once (the tie survives).
        num_trainable_weights: expected trainable weights (check 7).
        num_non_trainable_weights: expected non-trainable weights.
        num_seed_generators: expected seed generators.

    Returns:
        The eager outputs of check 2, flattened to a list.
    """
    call_kwargs = dict(call_kwargs or {})
    _check_config(layer_cls, init_kwargs)
    outputs = _check_shapes(
        layer_cls, init_kwargs, input_data, call_kwargs, expected_output_shape
    )
    _check_saving(layer_cls, init_kwargs, input_data, call_kwargs, tied_check)
    if input_mask is not None:
        _check_mask(
            layer_cls,
            init_kwargs,
            input_data,
            call_kwargs,
            input_mask,
            expect_mask,
        )
    if run_fit:
        _check_fit(layer_cls, init_kwargs, input_data, call_kwargs, tied_check)
    if run_mixed_precision:
        _check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs)
    _check_weight_counts(
        layer_cls,
        init_kwargs,
        input_data,
        call_kwargs,
        (num_trainable_weights, num_non_trainable_weights, num_seed_generators),
    )
    return outputs


def _check_weight_counts(layer_cls, init_kwargs, input_data, call_kwargs, want):
    layer = layer_cls(**init_kwargs)
    _apply(layer, input_data, call_kwargs)
    seeds = sum(len(sub._seed_generators) for sub in layer._flatten_layers())
    got = (
        len(layer.trainable_weights),
        len(layer.non_trainable_weights),
        seeds,
    )
    assert got == tuple(want), (
        f"{layer_cls.__name__}: (trainable, non-trainable, seed generators) "
        f"= {got}, expected {tuple(want)}"
    )


# --- fresh processes (strategies, multi-worker, several host devices) --------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs in the tensorflow pass of CI",
)
jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="runs in the jax pass of CI"
)
torch_only = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="runs in the torch pass of CI"
)


def subprocess_env(**extra):
    """This process's environment for a child that imports keras_tfm from
    the repository, without an inherited `TF_CONFIG`, plus `extra`."""
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join(
            p for p in (REPO, env.get("PYTHONPATH")) if p
        ),
        **extra,
    )
    return env


def run_processes(commands, envs, timeout):
    """Run the commands at once; kill them all on failure or timeout.

    Returns `(returncode, output)` per command, stdout and stderr together.
    """
    processes = [
        subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command, env in zip(commands, envs, strict=True)
    ]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        (p.returncode, out) for p, out in zip(processes, outputs, strict=True)
    ]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- shared by the layer tests (attention, encoder, decoder blocks) ---------

DIM, HEADS, FFN, LENGTH, BATCH, VOCAB = 16, 2, 32, 6, 2, 20
HEAD_DIM = DIM // HEADS
BACKEND = keras.backend.backend()
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def to_numpy(x):
    return ops.convert_to_numpy(ops.cast(x, "float32"))


def random_inputs(seed=0, batch=BATCH, length=LENGTH, dim=DIM):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, dim)).astype("float32")


def padding(lengths, total=LENGTH):
    # (batch, total), True at the first `lengths[b]` positions.
    return np.arange(total)[None, :] < np.asarray(lengths)[:, None]


def fill_values(kind, shape, rng):
    """Garbage for padded positions: random, huge, or NaN."""
    if kind == "random":
        return 3.0 * rng.normal(size=shape).astype("float32")
    if kind == "large":
        return np.full(shape, 1e4, "float32")
    return np.full(shape, np.nan, "float32")


def randomize_weights(layer, seed=0):
    """Perturb every weight, so zero biases and unit gammas are not trusted."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        noise = 0.2 * rng.normal(size=tuple(weight.shape))
        weight.assign(to_numpy(weight) + noise.astype("float32"))


def torch_tensor(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype="float32"))


def copy_dense(dense, linear):
    """Keras Dense (in, out) -> torch Linear weight (out, in)."""
    with torch.no_grad():
        linear.weight.copy_(torch_tensor(to_numpy(dense.kernel).T))
        linear.bias.copy_(torch_tensor(to_numpy(dense.bias)))


def copy_attention(attention, torch_attention):
    """Our MultiHeadAttention -> torch.nn.MultiheadAttention."""
    projections = (
        attention.query_dense,
        attention.key_dense,
        attention.value_dense,
    )
    weight = np.concatenate([to_numpy(d.kernel).T for d in projections])
    bias = np.concatenate([to_numpy(d.bias) for d in projections])
    with torch.no_grad():
        torch_attention.in_proj_weight.copy_(torch_tensor(weight))
        torch_attention.in_proj_bias.copy_(torch_tensor(bias))
    copy_dense(attention.output_dense, torch_attention.out_proj)


def copy_norm(add_norm, torch_norm):
    with torch.no_grad():
        torch_norm.weight.copy_(torch_tensor(to_numpy(add_norm.norm.gamma)))
        torch_norm.bias.copy_(torch_tensor(to_numpy(add_norm.norm.beta)))


def copy_feed_forward(feed_forward, torch_layer):
    copy_dense(feed_forward.intermediate_dense, torch_layer.linear1)
    copy_dense(feed_forward.output_dense, torch_layer.linear2)


def torch_encoder_layer(block, causal=False):
    """A torch.nn.TransformerEncoderLayer holding the weights of `block`.

    With `causal=True` it stands for a decoder block without
    cross-attention (the caller passes a causal `src_mask`).
    """
    layer = torch.nn.TransformerEncoderLayer(
        DIM,
        HEADS,
        dim_feedforward=FFN,
        dropout=0.0,
        activation=keras.activations.serialize(block.activation),
        layer_norm_eps=block.layer_norm_epsilon,
        batch_first=True,
        norm_first=block.norm_first,
    )
    copy_attention(block.self_attention, layer.self_attn)
    copy_feed_forward(block.feed_forward, layer)
    copy_norm(block.self_attention_add_norm, layer.norm1)
    copy_norm(block.feed_forward_add_norm, layer.norm2)
    return layer.eval()


def assert_real_positions_close(actual, expected, lengths, atol=1e-5):
    """Compare `(batch, seq, dim)` outputs at each row's real positions."""
    worst = 0.0
    for row, length in enumerate(lengths):
        a = np.asarray(actual[row, :length], "float64")
        b = np.asarray(expected[row, :length], "float64")
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def jit_compile():
    # torch.compile is too slow for a unit test: torch runs "auto" (eager).
    return "auto" if BACKEND == "torch" else True


def block_kwargs(**overrides):
    return {
        "num_heads": HEADS,
        "intermediate_dim": FFN,
        "dropout": 0.0,
        **overrides,
    }


# Few distinct shapes: eager JAX compiles every op once per new shape.
REAL_LENGTHS = st.lists(st.sampled_from((2, 5)), min_size=BATCH, max_size=BATCH)
PADDED_LENGTH = 8
FILLS = st.sampled_from(["random", "large", "nan"])


# ------------------------------------ transformers modules as oracles


def hf_config(kind, **overrides):
    import transformers

    config_class = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[kind]
    settings = {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": 50,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        **overrides,
    }
    if kind == "qwen3":
        settings.setdefault("head_dim", 12)
    if kind in ("qwen2", "qwen3", "mistral"):
        settings.setdefault("sliding_window", None)
    config = config_class(**settings)
    config._attn_implementation = "eager"
    return config


def hf_modules(kind, config):
    import importlib

    module = importlib.import_module(
        f"transformers.models.{kind}.modeling_{kind}"
    )
    prefix = {
        "llama": "Llama",
        "mistral": "Mistral",
        "qwen2": "Qwen2",
        "qwen3": "Qwen3",
    }[kind]
    return module, prefix


def randomize_torch(module, seed=0, scale=0.3):
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(
                scale * torch.randn(parameter.shape, generator=generator)
            )
    return module


def copy_linear(dense, linear):
    dense.kernel.assign(linear.weight.detach().numpy().T)
    if linear.bias is not None:
        dense.bias.assign(linear.bias.detach().numpy())


def copy_hf_attention(ours, theirs):
    copy_linear(ours.query_dense, theirs.q_proj)
    copy_linear(ours.key_dense, theirs.k_proj)
    copy_linear(ours.value_dense, theirs.v_proj)
    copy_linear(ours.output_dense, theirs.o_proj)
    if getattr(theirs, "q_norm", None) is not None:
        ours.query_norm.scale.assign(theirs.q_norm.weight.detach().numpy())
        ours.key_norm.scale.assign(theirs.k_norm.weight.detach().numpy())


def hf_mask(length, window=None, lengths=None):
    # Additive (batch, 1, q, k) mask from the definition, in NumPy.
    q = np.arange(length)[:, None]
    k = np.arange(length)[None, :]
    allowed = k <= q
    if window is not None:
        allowed &= k > q - window
    allowed = np.broadcast_to(allowed, (BATCH, length, length)).copy()
    if lengths is not None:
        allowed &= padding(lengths, length)[:, None, :]
    additive = np.where(allowed, 0.0, np.finfo("float32").min)
    return additive[:, None].astype("float32"), allowed


# --- bigram tables: `next_logits` functions without a Transformer ----------

START = 1


def markov(log_probs):
    """`next_logits` of a bigram table: row = previous token."""
    table = ops.convert_to_tensor(np.asarray(log_probs, "float32"))

    def next_logits(ids, cache, index):
        previous = ops.take(ids, index - 1, axis=1)
        return ops.take(table, previous, axis=0), cache

    return next_logits


def table_from(probabilities, vocabulary):
    """Log-probabilities (vocab, vocab) from {prev: {next: p}}."""
    table = np.full((vocabulary, vocabulary), -30.0)
    for previous, row in probabilities.items():
        for token, p in row.items():
            table[previous, token] = math.log(p)
    return table


def start_buffer(batch, length):
    ids = np.zeros((batch, length), "int32")
    ids[:, 0] = START
    return ids, np.ones((batch,), "int32")


# --- tiny training tasks, one per builder --------------------------------

TASK_VOCAB, TASK_LENGTH, TASK_BATCH = 12, 6, 4
TASK_MODEL = dict(
    num_layers=1, embedding_dim=16, num_heads=2, intermediate_dim=32
)


def _task_tokens(rng):
    shape = (TASK_BATCH, TASK_LENGTH)
    ids = rng.integers(3, TASK_VOCAB, size=shape).astype("int32")
    ids[0, 3:] = 0  # some padding
    return ids


def _seq2seq_task(rng):
    model = models.seq2seq_transformer(
        TASK_VOCAB, TASK_LENGTH, dropout=0.0, **TASK_MODEL
    )
    ids = _task_tokens(rng)
    decoder = np.concatenate(
        [np.ones((TASK_BATCH, 1), "int32"), ids[:, :-1]], 1
    )
    decoder[ids == 0] = 0
    x = {"encoder_token_ids": ids[:, ::-1].copy(), "decoder_token_ids": decoder}
    return model, x, ids, MaskedSparseCategoricalCrossentropy()


def _classifier_task(rng):
    model = models.encoder_classifier(
        TASK_VOCAB, TASK_LENGTH, 3, dropout=0.0, **TASK_MODEL
    )
    labels = np.arange(TASK_BATCH) % 3
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, _task_tokens(rng), labels, loss


def _lm_task(rng):
    model = models.decoder_lm(
        TASK_VOCAB, TASK_LENGTH, dropout=0.0, **TASK_MODEL
    )
    ids = _task_tokens(rng)
    labels = np.concatenate([ids[:, 1:], np.zeros((TASK_BATCH, 1), "int32")], 1)
    return model, ids, labels, MaskedSparseCategoricalCrossentropy()


# Each builder's tiny training task: `(model, x, y, loss)` from a NumPy
# generator (test_mixed_precision, test_xla).
TRAINING_TASKS = {
    "seq2seq": _seq2seq_task,
    "classifier": _classifier_task,
    "lm": _lm_task,
}


def labels_and_logits(seed, shape=(3, 7), vocabulary=6, padded=True):
    """Random int32 labels (right-padded with 0 unless `padded=False`, one
    row fully real) and float32 logits `shape + (vocabulary,)`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, vocabulary, size=shape)
    if padded:
        lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
        lengths.flat[0] = shape[-1]
        positions = np.arange(shape[-1])
        labels = np.where(positions < lengths[..., None], labels, 0)
    logits = rng.normal(scale=3.0, size=shape + (vocabulary,))
    return labels.astype("int32"), logits.astype("float32")
