"""Distribution: the same training on several devices as on one.

The multi-device runs need a device layout fixed before TensorFlow or JAX
starts, so they run `tests/_distribution_worker.py` in subprocesses, each
in one backend's pass of CI only: MirroredStrategy on two logical CPUs and
MultiWorkerMirroredStrategy with two workers on 127.0.0.1 in the
TensorFlow pass, `keras.distribution.DataParallel` on two host devices in
the JAX pass. The global batch puts almost all the padding on the first
replica, where Keras's per-replica averaging of a masked loss goes wrong.
"""

import json
import os
import sys

import keras
import numpy as np
import pytest

from keras_tfm import distribution
from tests.helpers import (
    free_port,
    jax_only,
    run_processes,
    subprocess_env,
    tensorflow_only,
)

WORKER = os.path.join(os.path.dirname(__file__), "_distribution_worker.py")
TIMEOUT = 120  # seconds, for every subprocess of one test together
ATOL = 1e-4


def _run_workers(out_dir, modes, envs, timeout=TIMEOUT):
    """Run one worker per env at once; kill them all on failure or timeout."""
    command = [sys.executable, WORKER, str(out_dir), *modes]
    results = run_processes([command] * len(envs), envs, timeout)
    for status, output in results:
        assert status == 0, output[-4000:]


def _load(path):
    with np.load(path) as saved:
        count = len([k for k in saved.files if k.startswith("w")])
        return saved["loss"], [saved[f"w{i}"] for i in range(count)]


def _differences(out_dir, a, b):
    """(largest loss difference, largest weight difference) of two runs."""
    loss_a, weights_a = _load(out_dir / f"{a}.npz")
    loss_b, weights_b = _load(out_dir / f"{b}.npz")
    assert len(weights_a) == len(weights_b)
    return (
        float(np.max(np.abs(loss_a - loss_b))),
        max(
            float(np.max(np.abs(x - y)))
            for x, y in zip(weights_a, weights_b, strict=True)
        ),
    )


# --- in process, every backend ----------------------------------------------


def test_masked_global_mean_on_one_device():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "float32")
    mask = np.array([[True, False, False], [True, True, True]])
    weight = np.array([2.0, 1.0], "float32")[:, None]
    assert np.isclose(
        float(distribution.masked_global_mean(values, mask)), 16.0 / 4
    )
    assert np.isclose(
        float(distribution.masked_global_mean(values, mask, weight)),
        (2.0 + 15.0) / 4,
    )
    empty = np.zeros_like(mask)
    assert float(distribution.masked_global_mean(values, empty)) == 0.0


def test_check_distribute_errors():
    with pytest.raises(ValueError, match="distribute.*'ring'"):
        distribution.check_distribute("ring")
    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    name = "data-parallel" if other == "jax" else "mirrored"
    with pytest.raises(ValueError, match=f"needs the {other} backend"):
        distribution.check_distribute(name)
    assert distribution.check_distribute("none") == "none"


@tensorflow_only
def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribution.check_distribute("multi-worker")


def test_resolve_jit_compile():
    assert distribution.resolve_jit_compile("none", True) == (True, None)
    for name in ("mirrored", "multi-worker"):
        jit_compile, note = distribution.resolve_jit_compile(name, True)
        assert jit_compile is False
        assert "located in device" in note
    assert distribution.resolve_jit_compile("data-parallel", True)[0]


# --- TensorFlow: MirroredStrategy and MultiWorkerMirroredStrategy -----------


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    """One device and MirroredStrategy on two logical CPUs, one process."""
    out_dir = tmp_path_factory.mktemp("mirrored")
    modes = ["single", "mirrored", "single-keras", "mirrored-keras"]
    env = subprocess_env(KERAS_BACKEND="tensorflow")
    _run_workers(out_dir, [*modes, "xla-probe"], [env])
    return out_dir


@tensorflow_only
def test_mirrored_matches_one_device(mirrored_runs):
    with np.load(mirrored_runs / "mirrored.npz") as saved:
        assert int(saved["devices"]) == 2
    loss_diff, weight_diff = _differences(mirrored_runs, "single", "mirrored")
    assert loss_diff < ATOL
    assert weight_diff < ATOL


@tensorflow_only
def test_per_replica_keras_loss_would_differ(mirrored_runs):
    # The trap the global reduction avoids: Keras's own masked loss
    # averages per replica, so uneven padding changes the training.
    loss_diff, weight_diff = _differences(
        mirrored_runs, "single-keras", "mirrored-keras"
    )
    assert loss_diff > 1e-2
    assert weight_diff > 1e-2


@tensorflow_only
def test_xla_under_mirrored_strategy_is_a_tensorflow_limitation(
    mirrored_runs,
):
    # If this starts passing, TensorFlow lifted the limitation and
    # `resolve_jit_compile` can keep XLA on.
    message = (mirrored_runs / "xla-probe.txt").read_text()
    assert "located in device" in message, message


@tensorflow_only
def test_multi_worker_matches_one_device(mirrored_runs, tmp_path):
    for name in ("init.npz", "single.npz"):
        (tmp_path / name).write_bytes((mirrored_runs / name).read_bytes())
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    envs = [
        subprocess_env(
            KERAS_BACKEND="tensorflow",
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}
            ),
        )
        for i in range(2)
    ]
    _run_workers(tmp_path, ["multi-worker"], envs)
    assert _differences(tmp_path, "multi-worker-0", "multi-worker-1") == (
        0.0,
        0.0,
    )
    loss_diff, weight_diff = _differences(tmp_path, "single", "multi-worker-0")
    assert loss_diff < ATOL
    assert weight_diff < ATOL


# --- JAX: keras.distribution.DataParallel -----------------------------------


@jax_only
def test_data_parallel_matches_one_device(tmp_path):
    env = subprocess_env(
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    _run_workers(tmp_path, ["single", "data-parallel"], [env])
    with np.load(tmp_path / "data-parallel.npz") as saved:
        assert int(saved["devices"]) == 2
    loss_diff, weight_diff = _differences(tmp_path, "single", "data-parallel")
    assert loss_diff < ATOL
    assert weight_diff < ATOL
