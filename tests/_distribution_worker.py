"""Train the tiny seq2seq model of the distribution tests in a subprocess.

Device layout (logical CPUs, `XLA_FLAGS`) and `TF_CONFIG` must be set
before TensorFlow or JAX starts, so each layout runs in a fresh process:

    python tests/_distribution_worker.py OUT_DIR MODE [MODE ...]

MODE is `single`, `mirrored` (two logical CPUs, TensorFlow),
`data-parallel` (two host devices, JAX), `multi-worker` (TF_CONFIG set
by the caller) or one of them with `-keras` appended, which trains with
Keras's own per-replica `SparseCategoricalCrossentropy(ignore_class=0)`
to show the difference the global reduction makes. Each mode writes
`OUT_DIR/<MODE>.npz` (loss history and final weights); the first to run
writes `OUT_DIR/init.npz`, the initial weights every other run loads.
MODE `xla-probe` records in `OUT_DIR/xla-probe.txt` what `jit_compile=True`
under MirroredStrategy does (a TensorFlow limitation, see
`keras_tfm.distribution.XLA_NOTE`).
"""

import json
import os
import sys

VOCAB, LENGTH, BATCH, STEPS = 12, 6, 8, 3

# Real tokens per sample: the first replica's half of the global batch is
# almost all padding, the second half has none.
LENGTHS = (1, 2, 1, 1, 6, 6, 5, 6)


def make_data():
    """Deterministic `(inputs, labels)` for one global batch of BATCH."""
    import numpy as np

    rng = np.random.default_rng(0)
    encoder = np.zeros((BATCH, LENGTH), "int32")
    decoder = np.zeros((BATCH, LENGTH), "int32")
    labels = np.zeros((BATCH, LENGTH), "int32")
    for i, n in enumerate(LENGTHS):
        tokens = rng.integers(3, VOCAB, size=n)
        encoder[i, :n] = tokens[::-1]
        labels[i, :n] = tokens
        decoder[i, 0] = 1
        decoder[i, 1:n] = tokens[: n - 1]
    inputs = {"encoder_token_ids": encoder, "decoder_token_ids": decoder}
    return inputs, labels


def build_model():
    from keras_tfm.models import seq2seq_transformer

    return seq2seq_transformer(
        VOCAB,
        LENGTH,
        num_layers=1,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.0,
    )


def make_loss(keras_loss):
    import keras

    from keras_tfm.losses import MaskedSparseCategoricalCrossentropy

    if keras_loss:
        return keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=0
        )
    return MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)


_STRATEGIES = {}


def _strategy(mode):
    # One strategy per process: a second MirroredStrategy reuses the first
    # one's collective keys and their all-reduces clash.
    from keras_tfm import distribution

    if mode not in _STRATEGIES:
        if mode == "mirrored":
            # Over both logical CPUs this process made.
            strategy = distribution.mirrored_strategy()
            assert strategy.num_replicas_in_sync == 2, strategy
        else:
            strategy = distribution.multi_worker_strategy()
        _STRATEGIES[mode] = strategy
    return _STRATEGIES[mode]


def _scope(mode):
    import contextlib

    import keras

    if mode in ("mirrored", "multi-worker"):
        return _strategy(mode).scope()
    if mode == "data-parallel":
        distribution = keras.distribution.DataParallel(
            devices=keras.distribution.list_devices("cpu")[:2]
        )
        keras.distribution.set_distribution(distribution)
        return distribution.scope()
    return contextlib.nullcontext()


def train(out_dir, mode):
    import keras
    import numpy as np

    keras_loss = mode.endswith("-keras")
    base = mode[: -len("-keras")] if keras_loss else mode
    keras.utils.set_random_seed(0)
    with _scope(base):
        model = build_model()
        init = os.path.join(out_dir, "init.npz")
        if os.path.exists(init):
            with np.load(init) as saved:
                model.set_weights([saved[f"w{i}"] for i in range(len(saved))])
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.5),
            loss=make_loss(keras_loss),
        )
    if not os.path.exists(init) and base == "single":
        weights = model.get_weights()
        np.savez(init, **{f"w{i}": w for i, w in enumerate(weights)})
    inputs, labels = make_data()
    history = model.fit(
        inputs,
        labels,
        batch_size=BATCH,
        epochs=STEPS,
        shuffle=False,
        verbose=0,
    )
    devices = 1
    if base == "data-parallel":
        devices = len(keras.distribution.distribution().device_mesh.devices)
        keras.distribution.set_distribution(None)
    elif base in _STRATEGIES:
        devices = _STRATEGIES[base].num_replicas_in_sync
    weights = [np.asarray(w) for w in model.get_weights()]
    name = mode
    if base == "multi-worker":
        name += f"-{json.loads(os.environ['TF_CONFIG'])['task']['index']}"
    np.savez(
        os.path.join(out_dir, f"{name}.npz"),
        loss=np.array(history.history["loss"]),
        devices=np.array(devices),
        **{f"w{i}": w for i, w in enumerate(weights)},
    )


def xla_probe(out_dir):
    """Try `jit_compile=True` under MirroredStrategy with a plain Dense."""
    import keras
    import numpy as np

    with _strategy("mirrored").scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse", jit_compile=True)
    try:
        model.fit(np.ones((4, 3)), np.ones((4, 2)), batch_size=4, verbose=0)
        message = "no error"
    except Exception as error:  # noqa: BLE001 - recorded for the test
        message = f"{type(error).__name__}: {error}"
    with open(os.path.join(out_dir, "xla-probe.txt"), "w") as f:
        f.write(message)


def main(argv):
    import keras

    keras.config.disable_traceback_filtering()
    out_dir, modes = argv[0], argv[1:]
    if any(m.startswith("mirrored") for m in modes):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    if any(m.startswith("multi-worker") for m in modes):
        # Collective ops must be configured before TensorFlow starts.
        _strategy("multi-worker")
    for mode in modes:
        if mode == "xla-probe":
            xla_probe(out_dir)
        else:
            train(out_dir, mode)
    print("done", *modes)


if __name__ == "__main__":
    main(sys.argv[1:])
