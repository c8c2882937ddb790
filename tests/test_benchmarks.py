"""Smoke runs of the benchmark scripts (tiny sizes; nothing is timed here)."""

import json
import os
import sys

import keras
import numpy as np
import pytest

from tests.helpers import (
    REPO,
    run_processes,
    subprocess_env,
    tensorflow_only,
    torch_only,
)

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import _common  # noqa: E402
import generation  # noqa: E402
import pretrained  # noqa: E402
import train_step_profile  # noqa: E402


def _run(script, tmp_path, *flags):
    output = tmp_path / "result.json"
    command = [
        sys.executable,
        os.path.join("benchmarks", script),
        "--quick",
        "--output",
        str(output),
        *flags,
    ]
    env = subprocess_env(KERAS_BACKEND=keras.backend.backend())
    ((code, log),) = run_processes([command], [env], timeout=600)
    assert code == 0, log
    with open(output) as f:
        return json.load(f), log


def test_bootstrap_interval_brackets_the_median():
    values = np.random.default_rng(0).normal(1.0, 0.05, 40)
    low, high = _common.bootstrap_median_ci(values, seed=0)
    assert low < np.median(values) < high
    assert high - low < 0.1
    # Identical values leave nothing to be unsure about.
    assert _common.bootstrap_median_ci([1.5] * 5, seed=0) == [1.5, 1.5]


def test_paired_ratios_from_known_timings():
    # Round 3 is a slow phase of the machine for both rows: the ratio of
    # medians and the median of same-round ratios differ.
    ours = [200.0, 300.0, 100.0, 240.0, 330.0]
    hub = [100.0, 100.0, 50.0, 120.0, 110.0]
    ratios = _common.paired_ratios(ours, hub, seed=0)
    assert ratios["per_round"] == [2.0, 3.0, 2.0, 2.0, 3.0]
    assert ratios["paired_median"] == 2.0
    assert ratios["ratio_of_medians"] == 240.0 / 100.0
    low, high = ratios["paired_ci95"]
    assert 2.0 <= low <= high <= 3.0
    with pytest.raises(ValueError, match="one length"):
        _common.paired_ratios(ours, hub[:-1], seed=0)


# One backend's pass runs each backend-neutral script (compiled training
# is tested on every backend in test_torch_training.py).
@torch_only
def test_train_throughput_quick_run_writes_paired_ratios(tmp_path):
    result, log = _run(
        "train_throughput.py", tmp_path, "--models", "keras_tfm,keras_hub"
    )
    rows = {row["name"]: row for row in result["rows"]}
    assert set(rows) == {"keras_tfm", "keras_hub"}
    ours, hub = rows["keras_tfm"], rows["keras_hub"]
    rounds = result["config"]["rounds"]
    assert len(ours["tokens_per_second_per_round"]) == rounds
    # The ratios written are those of the per-round figures written.
    expected = [
        a / b
        for a, b in zip(
            ours["tokens_per_second_per_round"],
            hub["tokens_per_second_per_round"],
            strict=True,
        )
    ]
    assert ours["relative_to_keras_hub_per_round"] == pytest.approx(expected)
    assert ours["relative_to_keras_hub_paired_median"] == pytest.approx(
        float(np.median(expected))
    )
    assert ours["relative_to_keras_hub"] == pytest.approx(
        ours["tokens_per_second"] / hub["tokens_per_second"]
    )
    low, high = ours["relative_to_keras_hub_paired_ci95"]
    assert low <= ours["relative_to_keras_hub_paired_median"] <= high
    assert ours["tokens_per_second"] > 0
    assert "paired [95% CI]" in result["table_markdown"]
    assert result["table_markdown"] in log


def test_profile_parts_come_from_op_names():
    part = train_step_profile.part_of
    assert part("keras_tfm_lm_1/encoder_layer_1_1/feed_forward_1/MatMul") == (
        "encoder layer 1",
        "forward",
    )
    assert part(
        "gradient_tape/keras_hub_lm_1/token_embedding_1/Tensordot/MatMul"
    ) == ("tied output head", "backward")
    assert part("keras_tfm_lm_1/embedding_1/token_embedding_1/GatherV2") == (
        "token embedding",
        "forward",
    )
    assert part("adam/Sqrt") == ("optimizer", "update")
    assert part("AddN") == ("tied table gradient sum", "backward")
    assert part("compile_loss/sparse_categorical_crossentropy/Sum") == (
        "loss",
        "forward",
    )
    assert part("gradient_tape/keras_tfm_lm_1/NotEqual") == (
        "other",
        "backward",
    )


@tensorflow_only
def test_train_step_profile_quick_run_splits_both_models(tmp_path):
    result, _ = _run(
        "train_step_profile.py", tmp_path, "--steps", "1", "--repeats", "1"
    )
    for name in ("keras_tfm", "keras_hub"):
        parts = result["results"][name]["kernel_ms_per_step"]
        for key in (
            "encoder layer 0 (forward)",
            "encoder layer 0 (backward)",
            "tied output head (forward)",
            "loss (forward)",
        ):
            assert parts[key] > 0, (name, key, parts)
        assert result["results"][name]["wall_ms_per_step"] > 0


def test_generation_quick_run_writes_every_row(tmp_path):
    backend = keras.backend.backend()
    # PyTorch: the traced steps uncompiled (the C++ compiler would take
    # minutes here; tests/test_torch_compile.py compiles).
    flags = ("--torch-compile", "none") if backend == "torch" else ()
    result, log = _run("generation.py", tmp_path, *flags)
    rows = {(r["row"], r["length"]): r for r in result["results"]}
    names = {name for name, _ in rows}
    expected = {
        generation.CACHED,
        generation.STREAM,
        generation.UNCACHED,
        "keras-hub cached",
    }
    if backend == "torch":
        expected |= {generation.NAIVE, generation.EAGER, generation.REFERENCE}
    if backend == "tensorflow":
        expected.add("keras-hub cached XLA")
    assert names == expected
    for length in (8, 16):
        cached = rows[(generation.CACHED, length)]
        rounds = result["config"]["rounds"]
        assert len(cached["seconds_per_call"]) == rounds
        assert cached["ms_per_token"] > 0
        assert cached["first_call_seconds"] > 0
        assert cached["compile_seconds"] >= 0
    # Every keras_tfm row (and the naive loop) made the cached row's tokens.
    assert result["same_tokens_as_cached"]
    assert all(result["same_tokens_as_cached"].values())
    assert "cached 16 / 8 (<= 1.3)" in result["targets"]
    assert result["paired_ratios"][f"{generation.STREAM} / cached @ 8"] > 0
    assert result["table"] in log
    assert result["first_call_table"] in log


# The naive loop is a row of the PyTorch run only.
@torch_only
def test_generation_naive_loop_matches_generator():
    keras.utils.set_random_seed(3)
    args = generation.parse_args(["--quick", "--lengths", "6"])
    model = generation.build_model(args)
    prompts = np.array([[4], [9]], "int32")
    naive = generation.no_grad(
        lambda: generation.naive_generate(model, prompts, 6)
    )()
    expected = generation.Generator(model).generate(prompts, 7)
    np.testing.assert_array_equal(generation.ids_of(naive), expected)


# One backend's pass runs each backend-neutral script (the library's
# packing is tested on every backend in test_packing.py).
@torch_only
def test_packing_quick_run_reports_fill_and_real_tokens(tmp_path):
    result, log = _run("packing.py", tmp_path)
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == ["packed", "bucketed", "padded", "keras_hub"]
    hub = rows["keras_hub"]
    for row in rows.values():
        assert 0 < row["fill"] <= 1, row
        # One epoch over the same sequences for every variant.
        assert row["real_tokens"] == result["data"]["real_tokens_per_epoch"]
        assert row["real_tokens_per_second"] > 0
        assert np.isfinite(row["validation_loss"])
    for name in ("packed", "bucketed", "padded"):  # keras-hub's is 1 / 1
        assert rows[name]["relative_to_keras_hub"] == pytest.approx(
            rows[name]["real_tokens_per_second"] / hub["real_tokens_per_second"]
        )
    assert rows["packed"]["fill"] > rows["padded"]["fill"]
    assert rows["bucketed"]["fill"] >= rows["padded"]["fill"]
    # The packed model computes every sequence as if it were alone: its
    # weights give the same loss on padded batches.
    assert result["validation"][
        "packed_weights_on_padded_batches"
    ] == pytest.approx(rows["packed"]["validation_loss"], rel=1e-4)
    assert result["table_markdown"] in log


def test_pretrained_quick_run_reports_rows_floor_and_targets(tmp_path):
    # The current backend's worker only; transformers eager as reference.
    backend = keras.backend.backend()
    result, log = _run(
        "pretrained.py",
        tmp_path,
        "--models",
        "gpt2",
        "--batch-sizes",
        "1",
        "--backends",
        backend,
        "--torch-rows",
        "eager",
    )
    (entry,) = result["entries"]
    ours = pretrained.OURS[backend]
    expected = {ours, pretrained.EAGER}
    if backend == "jax":
        expected.add(pretrained.HUB)
    assert set(entry["rows"]) == expected
    for row in entry["rows"].values():
        assert row["same_tokens"], entry
        assert row["ms_per_step"] > 0
        assert row["first_call_seconds"] > 0
        assert len(row["seconds_per_call"]) == result["config"]["rounds"]
    floor = entry["floor"]
    assert floor["ms_per_step"] == max(floor["memory_ms"], floor["compute_ms"])
    assert floor["ms_per_step"] > 0
    assert result["copy_bandwidth_bytes_per_second"] > 0
    assert result["gemm_flops_per_second"] > 0
    goals = {goal["target"]: goal for goal in entry["targets"]}
    within = goals["batch 1 within 1.15x of the floor"]
    assert within["ratio"] == pytest.approx(
        entry["rows"][ours]["ms_per_step"] / floor["ms_per_step"]
    )
    assert within["met"] == (within["ratio"] <= 1.15)
    assert len(result["load_average_start"]) == 3
    assert not result["errors"]
    assert result["table"] in log
    assert result["targets_table"] in log


def test_pretrained_floor_counts_weights_and_the_filled_cache():
    figures = {
        "parameters_read_per_step": 1000,
        "layers": 2,
        "heads": 4,
        "key_value_heads": 2,
        "head_dim": 8,
    }
    # One new token after a 3-token prompt attends over 4 positions.
    floor = pretrained.floor_ms(figures, 1, 3, 1, bandwidth=1e6, gemm=1e9)
    cache_bytes = 2 * 2 * (2 * 8) * 4 * 4
    assert floor["bytes_per_step"] == 4 * 1000 + cache_bytes
    assert floor["memory_ms"] == pytest.approx(
        1000 * (4000 + cache_bytes) / 1e6
    )
    assert floor["flops_per_step"] == 2 * 1000 + 4 * 2 * 4 * 8 * 4
    # Batch 8 reads the weights once and eight caches.
    floor8 = pretrained.floor_ms(figures, 8, 3, 1, bandwidth=1e6, gemm=1e9)
    assert floor8["bytes_per_step"] == 4 * 1000 + 8 * cache_bytes
    assert floor8["flops_per_step"] == 8 * floor["flops_per_step"]
