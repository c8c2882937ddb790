"""What the benchmark scripts share (private; not a benchmark itself).

The reference model's flags and sizes, its random training batch, the
keras_tfm and keras-hub encoder language models of issue 3, a runner that
trains a Keras model one batch at a time, and the timing helpers: a matmul
peak, paired ratios with a bootstrap interval, the environment, JSON out.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The issue-3 reference model and its training settings.
MODEL_DEFAULTS = dict(
    vocabulary_size=8000,
    width=256,
    num_heads=4,
    intermediate_dim=1024,
    num_layers=2,
    sequence_length=128,
    batch_size=16,
    dropout=0.1,
    learning_rate=1e-3,
    seed=0,
)
QUICK_MODEL = dict(
    vocabulary_size=100,
    width=32,
    num_heads=2,
    intermediate_dim=64,
    num_layers=1,
    sequence_length=16,
    batch_size=4,
)
JIT_CHOICES = {"auto": "auto", "true": True, "false": False}


def add_model_arguments(parser):
    """The reference model's flags, with the issue-3 defaults."""
    for name, value in MODEL_DEFAULTS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), type=type(value), default=value
        )
    parser.add_argument(
        "--jit-compile",
        choices=tuple(JIT_CHOICES),
        default="auto",
        help="passed to model.compile",
    )


def model_namespace(quick=False, **overrides):
    """The reference model's settings as parsed flags, without argv."""
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args([])
    if quick:
        for name, value in QUICK_MODEL.items():
            setattr(args, name, value)
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def make_data(args):
    """Random ids with trailing padding, next-token labels and weights."""
    rng = np.random.default_rng(args.seed)
    batch, length = args.batch_size, args.sequence_length
    ids = rng.integers(1, args.vocabulary_size, (batch, length), "int32")
    # Every other row keeps its full length; the rest end in padding.
    lengths = rng.integers(length // 2, length + 1, batch)
    lengths[::2] = length
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    labels = np.zeros_like(ids)
    labels[:, :-1] = ids[:, 1:]
    weights = (labels != 0).astype("float32")
    return ids, labels, weights


# --------------------------------------------------------------------------
# The issue-3 encoder language models


def build_keras_tfm(keras, args):
    import keras_tfm

    token_ids = keras.Input((args.sequence_length,), dtype="int32")
    table = keras_tfm.layers.TokenEmbedding(
        args.vocabulary_size, args.width, name="token_embedding"
    )
    x = keras_tfm.layers.TokenAndPositionEmbedding(
        args.vocabulary_size,
        args.sequence_length,
        args.width,
        position="learned",
        mask_zero=True,
        scale=False,  # as keras-hub's
        token_embedding=table,
        name="embedding",
    )(token_ids)
    for i in range(args.num_layers):
        x = keras_tfm.layers.TransformerEncoderBlock(
            num_heads=args.num_heads,
            intermediate_dim=args.intermediate_dim,
            dropout=args.dropout,
            # keras-hub's TransformerEncoder has no dropout on the FFN
            # hidden layer; match its computation exactly.
            activation_dropout=0.0,
            activation="relu",
            norm_first=False,
            name=f"encoder_layer_{i}",
        )(x)
    logits = table(x, reverse=True)
    return keras.Model(token_ids, logits, name="keras_tfm_lm")


def build_keras_hub(keras, args):
    import keras_hub

    token_ids = keras.Input((args.sequence_length,), dtype="int32")
    embedding = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=args.vocabulary_size,
        sequence_length=args.sequence_length,
        embedding_dim=args.width,
        mask_zero=True,
        tie_weights=True,
        name="embedding",
    )
    x = embedding(token_ids)
    for i in range(args.num_layers):
        x = keras_hub.layers.TransformerEncoder(
            intermediate_dim=args.intermediate_dim,
            num_heads=args.num_heads,
            dropout=args.dropout,
            activation="relu",
            normalize_first=False,
            name=f"encoder_layer_{i}",
        )(x)
    logits = embedding.token_embedding(x, reverse=True)
    return keras.Model(token_ids, logits, name="keras_hub_lm")


def compile_model(keras, model, args):
    """Adam and cross-entropy from logits, as every benchmark trains."""
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT_CHOICES[args.jit_compile],
    )


class KerasRunner:
    """Trains a compiled model on one fixed batch, one step per call."""

    def __init__(self, keras, model, args, data):
        self.model = model
        compile_model(keras, model, args)
        # Backend tensors once, so each step only trains.
        self.batch = [keras.ops.convert_to_tensor(a) for a in data]

    @property
    def jit_compile(self):
        return bool(self.model.jit_compile)

    def params(self):
        return int(self.model.count_params())

    def step(self):
        ids, labels, weights = self.batch
        # Returns Python floats: the step has finished when this returns.
        return self.model.train_on_batch(ids, labels, sample_weight=weights)


# --------------------------------------------------------------------------
# Timing and statistics


def matmul_gflops(keras, size, iterations, seed):
    """GFLOP/s of `keras.ops.matmul` of two float32 square matrices."""
    rng = np.random.default_rng(seed)
    a = keras.ops.convert_to_tensor(rng.random((size, size), "float32"))
    b = keras.ops.convert_to_tensor(rng.random((size, size), "float32"))

    def run(n):
        outputs = [keras.ops.matmul(a, b) for _ in range(n)]
        for output in outputs:  # JAX dispatches asynchronously.
            if hasattr(output, "block_until_ready"):
                output.block_until_ready()
        keras.ops.convert_to_numpy(outputs[-1])

    run(2)  # warm-up
    start = time.perf_counter()
    run(iterations)
    elapsed = time.perf_counter() - start
    return 2 * size**3 * iterations / elapsed / 1e9


def bootstrap_median_ci(values, seed, resamples=2000, level=0.95):
    """Percentile bootstrap interval of the median of `values`."""
    values = np.asarray(values, dtype="float64")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), (resamples, len(values)))
    medians = np.median(values[picks], axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return [float(low), float(high)]


def paired_ratios(per_round, reference_per_round, seed):
    """A row's speed relative to a reference row timed in the same rounds.

    Args:
        per_round: the row's rate (e.g. tokens/s) in each round.
        reference_per_round: the reference row's rate in the same rounds.
        seed: seed of the bootstrap.

    Returns:
        A dict: `ratio_of_medians`, the same-round ratios `per_round`,
        their median `paired_median` (which cancels slow phases of a
        shared machine) and its 95% bootstrap interval `paired_ci95`.
    """
    if len(per_round) != len(reference_per_round) or not per_round:
        raise ValueError(
            "`per_round` and `reference_per_round` must be non-empty and of "
            f"one length. Received: lengths {len(per_round)} and "
            f"{len(reference_per_round)}"
        )
    paired = [
        a / b for a, b in zip(per_round, reference_per_round, strict=True)
    ]
    return {
        "ratio_of_medians": statistics.median(per_round)
        / statistics.median(reference_per_round),
        "per_round": paired,
        "paired_median": statistics.median(paired),
        "paired_ci95": bootstrap_median_ci(paired, seed),
    }


def time_steps(runner, steps):
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return time.perf_counter() - start


def versions(backend):
    import keras

    found = {"python": platform.python_version(), "keras": keras.__version__}
    for name in ("keras_hub", "tensorflow", "jax", "torch", "keras_tfm"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    found["backend"] = backend
    return found


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def environment(backend):
    """Versions, CPU count and machine of this process."""
    found = versions(backend)
    found.update(
        cpu_count=cpu_count(),
        machine=platform.machine(),
        processor=platform.processor(),
    )
    return found


def write_json(result, output):
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {output}")
