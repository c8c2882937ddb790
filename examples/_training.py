"""The run of an example script: its flags, the output directory, the
devices (`--distribute`), the optimizer, and a `fit` that resumes.

Keras is imported only inside the functions that need it: a script checks
its flags and data first, so a bad start costs no TensorFlow import and
leaves `--output-dir` untouched.
"""

import argparse
import csv
import json
import os
import statistics
import sys
import time

from _flags import non_negative_int, positive_float, positive_int, rate

# The names of keras_tfm.distribution.DISTRIBUTE_CHOICES, spelled out so
# that the flags parse without importing Keras (tests/test_examples.py
# checks they agree).
DISTRIBUTE = ("none", "mirrored", "multi-worker", "data-parallel")

# Files a run writes under --output-dir.
BACKUP_DIR = "backup"  # keras.callbacks.BackupAndRestore; gone when done
RUN_ARGS = "run_args.json"  # in BACKUP_DIR: the settings being resumed
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.keras"
MODEL = "model.keras"
METRICS = "metrics.json"

# Flags that may change between an interrupted run and its resumption:
# the run's length and outputs, and how the model decodes afterwards.
RESUMABLE_CHANGES = {
    "epochs",
    "stop_after_epochs",
    "verbose",
    "tensorboard",
    "output_dir",
    "sampler",
    "num_beams",
    "length_penalty",
    "top_k",
    "top_p",
    "temperature",
    "prompt",
    "sample_length",
    "export",
    "torch_threads",
    "jit_compile",
}
EXIT_INTERRUPTED = 3

# --torch-threads by default: on a machine with at most FEW_CORES CPUs, the
# CPUs idle when the run starts (at least 1), else PyTorch's default.
# Measured in README "Speed" (benchmarks/torch_threads.py, 2-core machine):
# quiet, two threads trained train_lm.py's model 1.7x faster than one; with
# one or two other busy processes, two threads were 1.4x slower to train,
# 2.4-2.7x slower to generate, and 7-20x slower for the tests' tiny model.
FEW_CORES = 4


def add_training_flags(
    parser,
    *,
    epochs,
    batch_size,
    warmup_steps,
    lr_scale,
    label_smoothing,
    output_dir,
):
    """Flags for the optimizer, the run's length and its outputs."""
    group = parser.add_argument_group("training")
    group.add_argument(
        "--epochs",
        type=positive_int,
        default=epochs,
        help="passes over the training data (default: %(default)s)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help="examples per update; packed, as many rows as hold about "
        "that many (default: %(default)s)",
    )
    group.add_argument(
        "--warmup-steps",
        type=positive_int,
        default=warmup_steps,
        help="TransformerSchedule warm-up updates (default: %(default)s)",
    )
    group.add_argument(
        "--lr-scale",
        type=positive_float,
        default=lr_scale,
        help="factor on the TransformerSchedule learning rate "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--label-smoothing",
        type=rate,
        default=label_smoothing,
        help="label smoothing epsilon of the loss (default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the data, the initialization, dropout and sampling "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--distribute",
        choices=DISTRIBUTE,
        default="none",
        help="train on several devices: 'mirrored' (every local GPU, else "
        "the CPU; TensorFlow), 'multi-worker' (several machines, "
        "TensorFlow, cluster in TF_CONFIG), 'data-parallel' (every local "
        "device, JAX); --batch-size is the global batch, split over the "
        "replicas (default: %(default)s)",
    )
    group.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="model.compile(jit_compile=...): 'auto' is Keras's choice (XLA "
        "on JAX, and on TensorFlow where the model allows; eager on "
        "PyTorch, where compiling the train step costs about a minute "
        "first and saves 12-17%% per step for train_lm.py's model, so it "
        'pays only over long runs; README "Speed") (default: '
        "%(default)s)",
    )
    group.add_argument(
        "--torch-threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="PyTorch backend only: torch.set_num_threads(N) for training "
        "and generation (default: on a machine with at most "
        f"{FEW_CORES} CPUs, the CPUs idle at the start, at least 1, "
        "since a thread more than the idle cores mostly waits on other "
        "jobs; otherwise PyTorch's own choice)",
    )
    group = parser.add_argument_group("output")
    group.add_argument(
        "--output-dir",
        default=output_dir,
        help="where checkpoints, plots, history.csv and metrics.json go; "
        "re-running with the same directory resumes an interrupted run "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard logs to OUTPUT_DIR/logs",
    )
    group.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line "
        "per epoch (default: %(default)s)",
    )
    group.add_argument(
        "--stop-after-epochs",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop as if interrupted after N epochs of this run (exit "
        f"status {EXIT_INTERRUPTED}); run again without it to resume",
    )


def add_packing_flag(group, *, sequences, default_help):
    """`--packing/--no-packing`; `None` until `resolve_packing`."""
    group.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"train on packed rows: several {sequences} side by side in a "
        "row, each attending only to itself (keras_tfm.data), instead of "
        "one a row padded to the longest; decoding and evaluation use the "
        f"same weights in the unpacked model (default: {default_help})",
    )


def resolve_packing(args, default):
    """Set `args.packing` to `default` when neither flag is given."""
    if args.packing is None:
        args.packing = default


def check_run_args(parser, args):
    """Refuse a --distribute or --output-dir that cannot work; call it
    after every other check, before touching any file."""
    check_distribute(parser, args)
    check_output_dir(parser, args)


def torch_threads(parser, args, backend):
    """Apply `--torch-threads` on PyTorch and print the choice; refuse it
    elsewhere. Returns the thread count used, or None (not PyTorch)."""
    if backend != "torch":
        if args.torch_threads is not None:
            parser.error(
                f"--torch-threads applies to the PyTorch backend only; "
                f"this run uses {backend} (set KERAS_BACKEND=torch, or "
                "leave the flag out)"
            )
        return None
    import torch

    threads = args.torch_threads
    reason = "--torch-threads"
    if threads is None:
        cores = os.cpu_count() or 1
        if cores <= FEW_CORES:
            idle = idle_cpus()
            threads = max(1, idle)
            reason = f"default: {idle} of {cores} CPUs idle at the start"
        else:
            threads = torch.get_num_threads()
            reason = f"PyTorch's default on {cores} CPUs"
    torch.set_num_threads(threads)
    print(f"PyTorch threads: {threads} ({reason})")
    return threads


def jit_compile(args):
    """`--jit-compile` as `model.compile`'s `jit_compile` argument."""
    return {"auto": "auto", "true": True, "false": False}[args.jit_compile]


def idle_cpus(seconds=0.25):
    """How many CPUs no process is using now: the idle share of CPU time
    over `seconds` (Linux's /proc/stat) times the CPU count, rounded; where
    that file is missing, the CPU count less the 1-minute load average."""
    cores = os.cpu_count() or 1

    def times():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    try:
        total, idle = times()
        time.sleep(seconds)
        total2, idle2 = times()
        share = (idle2 - idle) / max(total2 - total, 1)
    except (OSError, ValueError, IndexError):
        share = 1 - os.getloadavg()[0] / cores
    return min(cores, max(0, round(share * cores)))


def check_distribute(parser, args):
    """Refuse a --distribute choice the Keras backend cannot run.

    Only then is Keras imported here (the backend decides); the default
    'none' answers without it.
    """
    if args.distribute == "none":
        return
    from keras_tfm import distribution

    try:
        distribution.check_distribute(args.distribute)
    except ValueError as error:
        parser.error(f"--distribute {args.distribute}: {error}")


def check_output_dir(parser, args):
    """Refuse an unusable --output-dir, or one resuming other settings."""
    path = os.path.abspath(args.output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"--output-dir {args.output_dir} is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        parser.error(f"--output-dir {args.output_dir} is not writable")
    saved = _read_json(os.path.join(run_dir(args), BACKUP_DIR, RUN_ARGS))
    if saved is not None:
        changed = sorted(
            name
            for name, value in _resumable_args(args).items()
            if saved.get(name, value) != value
        )
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            parser.error(
                f"--output-dir {args.output_dir} holds an unfinished run "
                f"with other {flags}; resume it with the same settings, or "
                f"use another --output-dir (or delete its {BACKUP_DIR}/)"
            )


def run_dir(args):
    """The directory this process writes: `--output-dir`, except on the
    workers of a multi-worker run other than the chief, which write into
    `OUTPUT_DIR/worker-<index>` (the machines may share a filesystem)."""
    if args.distribute != "multi-worker":
        return args.output_dir
    config = json.loads(os.environ["TF_CONFIG"])  # see check_distribute
    task = config["task"]
    if task["type"] == "chief" or (
        task["type"] == "worker"
        and task["index"] == 0
        and "chief" not in config["cluster"]
    ):
        return args.output_dir
    return os.path.join(args.output_dir, f"{task['type']}-{task['index']}")


def resumed_file(args, name):
    """`name` in the run directory if this run resumes an unfinished one
    (whose files, such as its tokenizer, must be reused), else None."""
    if not os.path.isdir(os.path.join(run_dir(args), BACKUP_DIR)):
        return None
    return os.path.join(run_dir(args), name)


def _resumable_args(args):
    return {
        name: value
        for name, value in vars(args).items()
        if name not in RESUMABLE_CHANGES
    }


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def optimizer(args):
    """Adam on the paper's warm-up schedule (beta_2=0.98, eps=1e-9)."""
    import keras

    import keras_tfm as tfm

    schedule = tfm.schedules.TransformerSchedule(
        args.embedding_dim, warmup_steps=args.warmup_steps, scale=args.lr_scale
    )
    return keras.optimizers.Adam(
        schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9
    )


class Distribution:
    """The devices a run trains on, as `--distribute` asks.

    Create it as soon as Keras is imported, before anything else runs
    TensorFlow (seeding included): `MultiWorkerMirroredStrategy` must
    exist before TensorFlow starts. Build and compile the model inside
    `scope()`; `fit` then splits each global batch over `replicas`.
    """

    def __init__(self, parser, args):
        import keras

        from keras_tfm import distribution

        self.torch_threads = torch_threads(
            parser, args, keras.backend.backend()
        )
        self.name = args.distribute
        self.strategy = None
        if self.name == "mirrored":
            self.strategy = distribution.mirrored_strategy()
        elif self.name == "multi-worker":
            self.strategy = distribution.multi_worker_strategy()
        if self.strategy is not None:
            self._scope = self.strategy.scope()
            self.replicas = self.strategy.num_replicas_in_sync
            self.devices = list(self.strategy.extended.worker_devices)
        else:
            self._scope = distribution.strategy_scope(self.name)
            mesh = None
            if self.name == "data-parallel":
                mesh = keras.distribution.distribution().device_mesh
            self.devices = [] if mesh is None else list(mesh.devices.flat)
            self.replicas = max(1, len(self.devices))
        # XLA cannot compile a TensorFlow step that spans replicas.
        self.jit_compile, _ = distribution.resolve_jit_compile(self.name, True)
        # JAX shards every batch evenly over the devices.
        self.even_batches = self.name == "data-parallel"
        if self.even_batches and args.batch_size % self.replicas:
            parser.error(
                f"--batch-size {args.batch_size} must be a multiple of the "
                f"{self.replicas} devices of --distribute {self.name}"
            )
        if self.name != "none":
            print(
                f"--distribute {self.name}: {self.replicas} "
                f"replica{'s' * (self.replicas != 1)} in all; this "
                "process's devices: "
                + ", ".join(str(device) for device in self.devices)
            )

    def scope(self):
        return self._scope


def epoch_timer():
    """A callback timing the training part of each epoch (up to its
    validation), and the list of seconds it fills."""
    import keras

    seconds = []
    started = []

    def begin(epoch, logs=None):
        started[:] = [time.perf_counter()]

    def end(*args):
        if started:
            seconds.append(time.perf_counter() - started.pop())

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            begin(epoch)

        def on_test_begin(self, logs=None):
            end()

        def on_epoch_end(self, epoch, logs=None):
            end()

    return Timer(), seconds


def masked_cross_entropy(name="cross_entropy"):
    """Unsmoothed cross-entropy per real target token, labels `0` left
    out: the mean over every such token of the epoch (the log of the
    perplexity), whatever the batches and their padding."""
    import keras
    from keras import ops

    class MaskedCrossEntropy(keras.metrics.Mean):
        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = ops.cast(y_true, "int32")
            losses = keras.losses.sparse_categorical_crossentropy(
                y_true, ops.cast(y_pred, "float32"), from_logits=True
            )
            # One value per token, so the mean is over tokens.
            weights = ops.cast(ops.not_equal(y_true, 0), self.dtype)
            super().update_state(
                ops.reshape(losses, (-1,)), ops.reshape(weights, (-1,))
            )

    return MaskedCrossEntropy(name=name)


class Interrupted(Exception):
    """Raised by `stop_after`, as a crash or Ctrl-C would stop a run."""


def stop_after(epochs):
    """A callback that interrupts training after `epochs` epochs."""
    import keras

    seen = []

    def on_epoch_end(epoch, logs=None):
        seen.append(epoch)
        if len(seen) >= epochs:
            raise Interrupted(f"stopped after epoch {epoch + 1}")

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


class Run:
    """One training run's output directory: created only once every input
    is known to be good, so a failed start destroys nothing."""

    def __init__(self, args, distribution):
        self.args = args
        self.distribution = distribution
        self.dir = run_dir(args)
        self.started = time.time()
        self.backup_dir = self.path(BACKUP_DIR)
        self.resuming = os.path.isdir(self.backup_dir)
        os.makedirs(self.dir, exist_ok=True)
        if self.resuming:
            print(f"Resuming the unfinished run in {self.backup_dir}")
        elif os.path.exists(self.path(HISTORY)):
            os.remove(self.path(HISTORY))  # a fresh run's history

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def callbacks(self):
        import keras

        args = self.args
        # The CSV row of an epoch is written before its backup: resuming
        # never loses a row (a repeated epoch replaces its old row).
        callbacks = [
            keras.callbacks.CSVLogger(self.path(HISTORY), append=True),
            keras.callbacks.BackupAndRestore(
                self.backup_dir, double_checkpoint=True
            ),
            keras.callbacks.ModelCheckpoint(self.path(CHECKPOINT)),
        ]
        if args.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(self.path("logs")))
        if args.stop_after_epochs:
            callbacks.append(stop_after(args.stop_after_epochs))
        return callbacks

    def fit(
        self,
        model,
        x,
        y,
        validation_data=None,
        *,
        tokens=None,
        sequences=None,
        **kwargs,
    ):
        """`model.fit` with the run's callbacks; the whole history back.

        `tokens` is the number of real (non-padding) tokens in an epoch of
        `x`: `throughput()` then gives the training tokens per second.
        `sequences`, when the rows of `x` are packed, is how many
        sequences they hold: a batch then takes as many rows as hold
        about `--batch-size` sequences (so the updates per epoch and the
        tokens per update are about those of padded rows), and
        validation, one sequence a row, keeps `--batch-size`.
        An interruption (Ctrl-C, or `--stop-after-epochs`) leaves the
        backup of the last finished epoch and exits; running the same
        command again continues from there.
        """
        os.makedirs(self.backup_dir, exist_ok=True)
        with open(self.path(BACKUP_DIR, RUN_ARGS), "w") as file:
            json.dump(_resumable_args(self.args), file, indent=2)
        self._tokens = tokens
        self._timer, self._epoch_seconds = epoch_timer()
        batch_size = self.args.batch_size
        if sequences is not None:
            rows = len(_first_array(x))
            batch_size = max(1, round(batch_size * rows / sequences))
            if self.distribution.even_batches:
                replicas = self.distribution.replicas
                batch_size = max(replicas, batch_size - batch_size % replicas)
            print(
                f"{sequences} sequences packed into {rows} rows: "
                f"{batch_size} rows a batch"
            )
        if self.distribution.even_batches:
            x, y = self._even("training", (x, y))
            if validation_data is not None:
                validation_data = self._even("validation", validation_data)
        try:
            model.fit(
                x,
                y,
                validation_data=validation_data,
                batch_size=batch_size,
                validation_batch_size=self.args.batch_size,
                epochs=self.args.epochs,
                callbacks=[*self.callbacks(), self._timer],
                verbose=self.args.verbose,
                **kwargs,
            )
        except (Interrupted, KeyboardInterrupt) as error:
            status = EXIT_INTERRUPTED if isinstance(error, Interrupted) else 130
            reason = str(error) or "interrupted"
            print(
                f"{reason}; run the same command again to resume from the "
                f"last finished epoch (backup in {self.backup_dir})",
                file=sys.stderr,
            )
            print(json.dumps({"interrupted": True, "output_dir": self.dir}))
            sys.exit(status)
        return self.history()

    def throughput(self):
        """Real training tokens per second: the median over the epochs
        this process trained, the first (which compiles) left out when
        there are others."""
        seconds = self._epoch_seconds[1:] or self._epoch_seconds
        if self._tokens is None or not seconds:  # or all epochs restored
            return None
        return round(self._tokens / statistics.median(seconds))

    def _even(self, name, data):
        """`data` without its last examples beyond a multiple of the
        replicas, so that the last batch splits evenly too."""
        size = len(_first_array(data))
        keep = size - size % self.distribution.replicas
        if keep == 0:
            sys.exit(
                f"error: {size} {name} examples cannot be split over "
                f"{self.distribution.replicas} devices (--distribute "
                f"{self.distribution.name})"
            )
        if keep < size:
            print(
                f"--distribute {self.distribution.name}: leaving out the "
                f"last {size - keep} of {size} {name} examples, so that "
                f"every batch splits over {self.distribution.replicas} "
                "devices"
            )
        return _take(data, keep)

    def history(self):
        """Per-epoch logs of the whole run, resumed parts included."""
        rows = {}
        with open(self.path(HISTORY), newline="") as file:
            for row in csv.DictReader(file):
                rows[int(row.pop("epoch"))] = row
        history = {}
        for epoch in sorted(rows):
            for name, value in rows[epoch].items():
                history.setdefault(name, []).append(float(value))
        return history

    def finish(self, model, metrics):
        """Save the model and `metrics.json`; print the metrics last."""
        import keras

        model.save(self.path(MODEL))
        metrics = {
            **metrics,
            "backend": keras.backend.backend(),
            "position": self.args.position,
            "distribute": self.args.distribute,
            "replicas": self.distribution.replicas,
            "seconds": round(time.time() - self.started, 1),
            "output_dir": self.dir,
        }
        with open(self.path(METRICS), "w") as file:
            json.dump(metrics, file, indent=2)
        print(json.dumps(metrics))
        return metrics

    def plot(self, name, plot, *args, **kwargs):
        """Write `name.png` with a `keras_tfm.plotting` function, if
        matplotlib is installed (it is an optional extra)."""
        path = self.path(f"{name}.png")
        try:
            plot(*args, path=path, **kwargs)
        except ImportError as error:
            print(f"not plotting {name}: {error}", file=sys.stderr)
            return None
        return path


def _first_array(data):
    """The first array of an array, a dict of arrays or a tuple of them."""
    while isinstance(data, (dict, tuple, list)):
        data = next(iter(data.values())) if isinstance(data, dict) else data[0]
    return data


def _take(data, count):
    """The first `count` examples of an array, a dict of arrays or a
    tuple of them."""
    if isinstance(data, dict):
        return {name: _take(value, count) for name, value in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(_take(value, count) for value in data)
    return data[:count]
