"""Shared pytest setup: quiet TensorFlow, a clean Keras state per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "keras_tfm",
    deadline=None,
    max_examples=10,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
    ],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "keras_tfm"))


if keras.backend.backend() == "torch":
    import torch

    # Tiny test models: a second intra-op thread only adds contention (a
    # training step measured ~20x slower with two on a loaded 2-core box).
    torch.set_num_threads(1)

    from keras_tfm import _backend  # noqa: E402

    # Generators trace their decoding step into one graph as in use, but
    # run it without inductor: the C++ compiler would take seconds to tens
    # of seconds per test. tests/test_torch_compile.py compiles for real.
    _backend.TORCH_COMPILE = False


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def clean_keras_state():
    """Seed before each test; reset the dtype policy and session after."""
    keras.utils.set_random_seed(1337)
    yield
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session(free_memory=False)
