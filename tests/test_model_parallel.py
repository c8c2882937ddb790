"""Model parallelism: `layout_map` under `keras.distribution.ModelParallel`.

ModelParallel runs on the JAX backend, and the host device count is fixed
before JAX starts, so every check runs `tests/_model_parallel_worker.py`
in fresh JAX processes whatever this pass's backend: one process on 8
host devices (`checks`) and, at the same time, two processes of 2 devices
joined on 127.0.0.1 (`process`). The three start together in one module
fixture and stop by themselves within `TIMEOUT`. Being the same JAX
processes in every pass, they run in the JAX pass only (CI runs the suite
once per backend); the in-process checks below the fixture run in all.
"""

import json
import os
import sys

import keras
import numpy as np
import pytest

from keras_tfm import distribution
from keras_tfm.models import decoder_lm
from tests.helpers import free_port, run_processes, subprocess_env

WORKER = os.path.join(os.path.dirname(__file__), "_model_parallel_worker.py")
TIMEOUT = 240  # seconds, for the three processes together
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if keras.backend.backend() != "jax":
        pytest.skip(
            "JAX subprocesses whatever the parent backend: run once, in "
            "the KERAS_BACKEND=jax pass"
        )
    out = tmp_path_factory.mktemp("model_parallel")
    port = free_port()
    env = subprocess_env(KERAS_BACKEND="jax")
    commands = [[sys.executable, WORKER, str(out / "checks.json"), "checks"]]
    commands += [
        [sys.executable, WORKER, str(out / f"p{i}.json"), "process"]
        + [str(port), str(i)]
        for i in range(2)
    ]
    results = run_processes(commands, [env] * 3, TIMEOUT)
    for status, output in results:
        assert status == 0, output[-4000:]
    with open(out / "checks.json") as f:
        checks = json.load(f)
    processes = []
    for i in range(2):
        with open(out / f"p{i}.json") as f:
            processes.append(json.load(f))
    return checks, processes


@pytest.mark.parametrize(
    "name", ["decoder_lm", "composed", "seq2seq", "checkpoint"]
)
def test_every_weight_placed_as_mapped(runs, name):
    checks, _ = runs
    assert checks["devices"] == 8
    sharded = 0
    for entry in checks["specs"][name]:
        path = entry["path"]
        if path.endswith("seed_generator_state"):
            # Left to Keras on purpose: replicated.
            assert entry["mapped"] is None, path
            assert set(entry["placed"]) <= {None}, path
            continue
        assert entry["mapped"] is not None, f"{path} is not in the map"
        assert entry["placed"] == entry["mapped"], path
        sharded += "model" in entry["mapped"]
    assert sharded >= 10


def test_megatron_layouts(runs):
    checks, _ = runs
    specs = {e["path"]: e["mapped"] for e in checks["specs"]["decoder_lm"]}
    block = "decoder_layer_0"
    assert specs["decoder_embedding/token_embedding/embeddings"] == [
        "model",
        None,
    ]
    for name in ("query_dense", "key_dense", "value_dense"):
        assert specs[f"{block}/self_attention/{name}/kernel"] == [
            None,
            "model",
        ]
        assert specs[f"{block}/self_attention/{name}/bias"] == ["model"]
    assert specs[f"{block}/self_attention/output_dense/kernel"] == [
        "model",
        None,
    ]
    for name in ("intermediate_dense", "gate_dense"):
        assert specs[f"{block}/feed_forward/{name}/kernel"] == [None, "model"]
    assert specs[f"{block}/feed_forward/output_dense/kernel"] == [
        "model",
        None,
    ]
    assert specs[f"{block}/feed_forward_add_norm/norm/gamma"] == [None]
    assert specs["output_projection/kernel"] == [None, "model"]


def test_checkpoint_model_shards_grouped_heads(runs):
    checks, _ = runs
    specs = {e["path"]: e["mapped"] for e in checks["specs"]["checkpoint"]}
    # 4 key/value heads over a model axis of 4: sharded like the queries.
    for name in ("query_dense", "key_dense", "value_dense"):
        assert specs[f"block_0/self_attention/{name}/kernel"] == [
            None,
            "model",
        ]
    assert specs["head/kernel"] == [None, "model"]
    assert specs["block_0/self_attention_add_norm/norm/scale"] == [None]


@pytest.mark.parametrize("mesh", ["1x8", "2x4"])
def test_fit_matches_one_device(runs, mesh):
    checks, _ = runs
    fit = checks["fit"][mesh]
    np.testing.assert_allclose(
        fit["loss"], checks["single_loss"], rtol=0, atol=ATOL
    )
    assert fit["weight_difference"] <= ATOL
    assert fit["ffn_spec"] == ["model", None]


def test_greedy_generation_matches_one_device(runs):
    checks, _ = runs
    generated = checks["generate"]
    assert generated["sharded"] == generated["single"]
    assert generated["query_spec"] == [None, "model"]
    # (batch, 2, heads, length, head_dim): split over heads as the keys.
    assert generated["cache_spec"][:3] == [None, None, "model"]


def test_two_processes_match_one(runs):
    checks, processes = runs
    for result in processes:
        np.testing.assert_allclose(
            result["loss"], checks["single_loss"], rtol=0, atol=ATOL
        )


# --- in process, every backend: the map itself ------------------------------


def _mesh(shape):
    # Only the map is made here, never a placement: names will do.
    devices = [f"cpu:{i}" for i in range(shape[0] * shape[1])]
    return keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)


def _lm(**options):
    return decoder_lm(
        64,
        8,
        num_layers=1,
        embedding_dim=16,
        num_heads=options.pop("num_heads", 4),
        intermediate_dim=options.pop("intermediate_dim", 32),
        dropout=0.0,
        **options,
    )


def _axes(layouts, path):
    return tuple(layouts[path].axes)


def test_indivisible_sizes_are_replicated():
    # 2 heads and 10 hidden units on a model axis of 4; 63 tokens: the
    # table is split over its width instead.
    model = decoder_lm(
        63,
        8,
        num_layers=1,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=10,
        dropout=0.0,
    )
    layouts = distribution.layout_map(model, _mesh((1, 4)))
    attention = "decoder_layer_0/self_attention"
    assert _axes(layouts, f"{attention}/query_dense/kernel") == (None, None)
    assert _axes(layouts, f"{attention}/output_dense/kernel") == (None, None)
    ffn = "decoder_layer_0/feed_forward"
    assert _axes(layouts, f"{ffn}/intermediate_dense/kernel") == (None, None)
    table = "decoder_embedding/token_embedding/embeddings"
    assert _axes(layouts, table) == (None, "model")


def test_grouped_key_value_heads():
    model = _lm(num_heads=4)
    attention = model.get_layer("decoder_layer_0").self_attention
    # 2 key/value heads (what `num_key_value_heads` gives): sharded on a
    # model axis of 2, replicated on 4.
    attention.num_key_value_heads = 2
    path = "decoder_layer_0/self_attention"
    two = distribution.layout_map(model, _mesh((2, 2)))
    four = distribution.layout_map(model, _mesh((1, 4)))
    assert _axes(two, f"{path}/key_dense/kernel") == (None, "model")
    assert _axes(four, f"{path}/key_dense/kernel") == (None, None)
    assert _axes(four, f"{path}/value_dense/bias") == (None,)
    assert _axes(four, f"{path}/query_dense/kernel") == (None, "model")


def test_default_names_match_any_number():
    from keras_tfm.layers import FeedForward

    inputs = keras.Input((8, 16))
    outputs = FeedForward(32)(inputs)
    first = keras.Model(inputs, outputs)
    layouts = distribution.layout_map(first, _mesh((1, 4)))
    inputs = keras.Input((8, 16))
    second = FeedForward(32)
    keras.Model(inputs, second(inputs))
    assert second.name != first.layers[-1].name
    kernel = second.intermediate_dense.kernel
    assert tuple(layouts[kernel.path].axes) == (None, "model")


def test_layout_map_errors():
    model = _lm()
    with pytest.raises(ValueError, match="model_dim.*'tensor'"):
        distribution.layout_map(model, _mesh((1, 2)), model_dim="tensor")
    with pytest.raises(ValueError, match="batch_dim.*'data'"):
        distribution.layout_map(model, _mesh((1, 2)), batch_dim="data")
    with pytest.raises(ValueError, match="built"):
        distribution.layout_map(keras.layers.Dense(4), _mesh((1, 2)))
