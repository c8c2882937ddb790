"""Plumbing the example scripts share: flags, data files, tokenizing, the
output directory, devices (`--distribute`), resumable training and
decoding with `keras_tfm.generation.Generator`.

Each script stays a readable recipe (data -> model -> compile -> fit ->
evaluate); what is not about Transformers lives here. Keras (and with it
TensorFlow, slow to import) is imported only once the flags and the data
are known to be good, so `--help` and a bad flag answer at once, in one
line.
"""

import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np

POSITIONS = ("sinusoidal", "learned", "rotary")
# The names of keras_tfm.generation.SAMPLERS and
# keras_tfm.distribution.DISTRIBUTE_CHOICES, spelled out so that the flags
# parse without importing Keras (tests/test_examples.py checks they agree).
SAMPLERS = ("greedy", "beam", "top_k", "top_p")
SAMPLING = ("top_k", "top_p")  # the samplers that draw at random
DISTRIBUTE = ("none", "mirrored", "multi-worker", "data-parallel")
PAD, START, END, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")

# Files a run writes under --output-dir.
BACKUP_DIR = "backup"  # keras.callbacks.BackupAndRestore; gone when done
RUN_ARGS = "run_args.json"  # in BACKUP_DIR: the settings being resumed
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.keras"
MODEL = "model.keras"
METRICS = "metrics.json"

# Flags that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {
    "epochs",
    "stop_after_epochs",
    "verbose",
    "tensorboard",
    "output_dir",
    # Decoding after training: no part of the training itself.
    "sampler",
    "num_beams",
    "length_penalty",
    "top_k",
    "top_p",
    "temperature",
    "prompt",
    "sample_length",
}
EXIT_INTERRUPTED = 3


# --- flags ----------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _checked(kind, expected, check, must):
    """An argparse `type`: `kind(text)` that `check` accepts, else an error
    "expected <expected>" (not a `kind`) or "<must>" (rejected)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {expected}, got {text!r}"
            ) from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{must}, got {text!r}")
        return value

    return parse


def _is_positive(value):
    return value > 0 and math.isfinite(value)


positive_int = _checked(int, "a positive int", _is_positive, "must be positive")
positive_float = _checked(
    float, "a positive float", _is_positive, "must be positive"
)
non_negative_int = _checked(
    int, "an integer >= 0", lambda value: value >= 0, "must be >= 0"
)
finite_float = _checked(float, "a number", math.isfinite, "must be finite")
probability = _checked(
    float,
    "a number in (0, 1]",
    lambda value: 0 < value <= 1,
    "must be in (0, 1]",
)
rate = _checked(
    float,
    "a number in [0, 1)",
    lambda value: 0 <= value < 1,
    "must be in [0, 1)",
)


def make_parser(doc):
    """A parser whose description and epilog are the script's docstring."""
    summary, _, details = doc.strip().partition("\n")
    return ArgumentParser(
        description=summary,
        epilog=details.strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_flags(
    parser,
    *,
    num_layers,
    embedding_dim,
    num_heads,
    intermediate_dim,
    dropout,
):
    """The flags every example shares to size its Transformer."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--position",
        choices=POSITIONS,
        default="sinusoidal",
        help="how the model sees token order (default: %(default)s)",
    )
    group.add_argument(
        "--num-layers",
        type=positive_int,
        default=num_layers,
        help="Transformer blocks per stack (default: %(default)s)",
    )
    group.add_argument(
        "--embedding-dim",
        type=positive_int,
        default=embedding_dim,
        help="model width d_model (default: %(default)s)",
    )
    group.add_argument(
        "--num-heads",
        type=positive_int,
        default=num_heads,
        help="attention heads; must divide --embedding-dim "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--intermediate-dim",
        type=positive_int,
        default=intermediate_dim,
        help="feed-forward hidden width (default: %(default)s)",
    )
    group.add_argument(
        "--dropout",
        type=rate,
        default=dropout,
        help="dropout rate everywhere (default: %(default)s)",
    )


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
        help="examples per update (default: %(default)s)",
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


def add_generation_flags(parser, *, sampler, temperature, top_p=None):
    """Flags for `keras_tfm.generation.Generator` after training."""
    group = parser.add_argument_group("decoding")
    group.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=sampler,
        help="how tokens are chosen: 'greedy' (the most likely), 'beam' "
        "(beam search), 'top_k' or 'top_p' (sampling among the --top-k "
        "most likely tokens, or the most likely ones holding --top-p of "
        "the probability) (default: %(default)s)",
    )
    group.add_argument(
        "--num-beams",
        type=positive_int,
        default=4,
        help="beams of --sampler beam (default: %(default)s)",
    )
    group.add_argument(
        "--length-penalty",
        type=finite_float,
        default=1.0,
        help="--sampler beam ranks finished hypotheses by log-probability "
        "/ length ** this; 0 prefers short ones (default: %(default)s)",
    )
    group.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        help="sample among the K most likely tokens; needed by --sampler "
        "top_k, also applied by top_p",
    )
    group.add_argument(
        "--top-p",
        type=probability,
        default=top_p,
        help="sample among the most likely tokens holding this much of "
        "the probability, in (0, 1]; needed by --sampler top_p, also "
        "applied by top_k"
        + ("" if top_p is None else "; 1 keeps them all")
        + (" (default: %(default)s)" if top_p is not None else ""),
    )
    group.add_argument(
        "--temperature",
        type=positive_float,
        default=temperature,
        help="sampling temperature: the logits are divided by it "
        "(default: %(default)s)",
    )


def check_generation_args(parser, args):
    """Refuse decoding flags that the chosen --sampler would ignore."""
    if args.sampler in SAMPLING and getattr(args, args.sampler) is None:
        flag = "--" + args.sampler.replace("_", "-")
        parser.error(f"--sampler {args.sampler} needs {flag}")
    given = [
        name
        for name in (
            "num_beams",
            "length_penalty",
            "top_k",
            "top_p",
            "temperature",
        )
        if getattr(args, name) != parser.get_default(name)
    ]
    for name in given:
        users = (
            ("beam",) if name in ("num_beams", "length_penalty") else SAMPLING
        )
        if args.sampler not in users:
            parser.error(
                f"--{name.replace('_', '-')} applies to --sampler "
                f"{' or '.join(users)} only, not {args.sampler}"
            )


def check_args(parser, args):
    """Checks that need several flags; call before touching any file."""
    if args.embedding_dim % args.num_heads:
        parser.error(
            f"--num-heads {args.num_heads} must divide --embedding-dim "
            f"{args.embedding_dim}"
        )
    if args.position == "rotary" and (args.embedding_dim // args.num_heads) % 2:
        parser.error(
            "--position rotary needs an even head width "
            "(--embedding-dim / --num-heads)"
        )
    if hasattr(args, "sampler"):
        check_generation_args(parser, args)
    check_distribute(parser, args)
    check_output_dir(parser, args)


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


# --- data -----------------------------------------------------------------


def read_text(parser, flag, path):
    """The text of a user's file, or a one-line error naming `flag`."""
    if not os.path.exists(path):
        parser.error(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        parser.error(f"{flag} {path}: is a directory, not a file")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        parser.error(f"{flag} {path}: not UTF-8 text ({error.reason})")
    except OSError as error:
        parser.error(f"{flag} {path}: cannot read it ({error.strerror})")
    if not text.strip():
        parser.error(f"{flag} {path}: the file is empty")
    return text


def read_tsv(parser, flag, path, columns):
    """Rows `(first, second)` of a tab-separated file.

    Extra columns (such as the attribution of Anki/Tatoeba pairs) are
    dropped; blank lines are skipped; a line without a tab, or with an
    empty field, is an error that names the line.
    """
    rows = []
    text = read_text(parser, flag, path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            parser.error(
                f"{flag} {path}, line {number}: no tab; expected "
                f"{columns[0]}<TAB>{columns[1]}"
            )
        first, second = fields[0].strip(), fields[1].strip()
        if not first or not second:
            parser.error(
                f"{flag} {path}, line {number}: empty "
                f"{columns[0] if not first else columns[1]}"
            )
        rows.append((first, second))
    return rows


class Vocabulary:
    """Character- or whitespace-level tokens <-> ids.

    Ids 0-3 are `<pad>`, `<start>`, `<end>`, `<unk>`; the others are the
    tokens of the texts it was built from, most frequent first.
    """

    def __init__(self, tokens, level="char"):
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level}")
        self.level = level
        self.tokens = list(SPECIAL_TOKENS) + [
            t for t in tokens if t not in SPECIAL_TOKENS
        ]
        self.ids = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts, level="char", max_size=None):
        counts = {}
        for text in texts:
            for token in cls.split_text(text, level):
                counts[token] = counts.get(token, 0) + 1
        ranked = sorted(counts, key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIAL_TOKENS))]
        return cls(ranked, level)

    @staticmethod
    def split_text(text, level):
        return list(text) if level == "char" else text.split()

    def __len__(self):
        return len(self.tokens)

    def encode(self, text, start=False, end=False):
        ids = [self.ids.get(t, UNK) for t in self.split_text(text, self.level)]
        return [START] * start + ids + [END] * end

    def decode(self, ids):
        """Text of `ids`, up to the first `<end>`, without specials."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i >= len(SPECIAL_TOKENS):
                tokens.append(self.tokens[i])
        return ("" if self.level == "char" else " ").join(tokens)

    def save(self, path):
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"level": self.level, "tokens": self.tokens}, file)


def pad(sequences, length):
    """Right-pad id lists with 0 into an int32 array `(count, length)`."""
    array = np.zeros((len(sequences), length), "int32")
    for row, ids in enumerate(sequences):
        array[row, : len(ids)] = ids[:length]
    return array


def split(items, test_fraction, rng):
    """Shuffle, then `(train, test)` with at least one of each."""
    items = list(items)
    order = rng.permutation(len(items))
    test_size = min(len(items) - 1, max(1, round(len(items) * test_fraction)))
    test = [items[i] for i in order[:test_size]]
    train = [items[i] for i in order[test_size:]]
    return train, test


# --- model ----------------------------------------------------------------


def model_kwargs(args):
    return dict(
        # Token vectors times sqrt(d_model), as in the paper: a small
        # initial table would otherwise drown in the position encoding.
        scale_embeddings=True,
        num_layers=args.num_layers,
        embedding_dim=args.embedding_dim,
        num_heads=args.num_heads,
        intermediate_dim=args.intermediate_dim,
        dropout=args.dropout,
        position=args.position,
    )


def build(parser, builder, *args, **kwargs):
    """Call a `keras_tfm.models` builder; a bad size is a flag error."""
    try:
        return builder(*args, **kwargs)
    except ValueError as error:
        parser.error(str(error))


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


# --- devices --------------------------------------------------------------


class Distribution:
    """The devices a run trains on, as `--distribute` asks.

    Create it as soon as Keras is imported, before anything else runs
    TensorFlow (seeding included): `MultiWorkerMirroredStrategy` must
    exist before TensorFlow starts. Build and compile the model inside
    `scope()`; `fit` then splits each global batch over `replicas`.

    `mirrored` mirrors over every local GPU or, with none, over every
    logical CPU device (`keras_tfm.distribution.mirrored_strategy`).
    """

    def __init__(self, parser, args):
        import keras

        from keras_tfm import distribution

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


def _take(data, count):
    """The first `count` examples of an array, a dict of arrays or a
    tuple of them."""
    if isinstance(data, dict):
        return {name: _take(value, count) for name, value in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(_take(value, count) for value in data)
    return data[:count]


def _size(data):
    if isinstance(data, dict):
        return _size(next(iter(data.values())))
    if isinstance(data, (tuple, list)):
        return _size(data[0])
    return len(data)


# --- running --------------------------------------------------------------


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

    def fit(self, model, x, y, validation_data=None, **kwargs):
        """`model.fit` with the run's callbacks; the whole history back.

        An interruption (Ctrl-C, or `--stop-after-epochs`) leaves the
        backup of the last finished epoch and exits; running the same
        command again continues from there.
        """
        os.makedirs(self.backup_dir, exist_ok=True)
        with open(self.path(BACKUP_DIR, RUN_ARGS), "w") as file:
            json.dump(_resumable_args(self.args), file, indent=2)
        if self.distribution.even_batches:
            x, y = self._even("training", (x, y))
            if validation_data is not None:
                validation_data = self._even("validation", validation_data)
        try:
            model.fit(
                x,
                y,
                validation_data=validation_data,
                batch_size=self.args.batch_size,
                epochs=self.args.epochs,
                callbacks=self.callbacks(),
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

    def _even(self, name, data):
        """`data` without its last examples beyond a multiple of the
        replicas, so that the last batch splits evenly too."""
        size = _size(data)
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


# --- decoding -------------------------------------------------------------


def generation_options(args):
    """`Generator.generate` keyword arguments from the decoding flags."""
    return dict(
        sampler=args.sampler,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
    )


def generate(
    generator, inputs, max_length, *, seed=0, batch_size=512, **options
):
    """`generator.generate` over `inputs`, `batch_size` rows at a time.

    Every call has the same shape, the last batch being filled up with
    copies of its first row, so the search is compiled once.

    Args:
        generator: a `keras_tfm.generation.Generator`.
        inputs: int array `(count, length)`: sources or prompts.
        max_length: `max_length` of `Generator.generate`.
        seed: seed of the first batch; batch `i` uses `seed + i`.
        batch_size: rows decoded at once.
        **options: the other `Generator.generate` arguments (`sampler`,
            `num_beams`, `end_id`, ...).

    Returns:
        int32 array `(count, max_length)`; for a seq2seq model the
        generated tokens (the end token included, `0` after it).
    """
    inputs = np.asarray(inputs, "int32")
    size = min(batch_size, len(inputs))
    results = []
    for number, first in enumerate(range(0, len(inputs), size)):
        chunk = inputs[first : first + size]
        count = len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - count, 0)])
        ids = generator.generate(
            chunk, max_length, seed=seed + number, **options
        )
        results.append(ids[:count])
    return np.concatenate(results)


def exact_match(predicted, targets):
    """Fraction of rows whose tokens up to `END` equal the target's."""
    hits = 0
    for guess, truth in zip(predicted, targets, strict=True):
        hits += _until_end(guess) == _until_end(truth)
    return hits / len(targets)


def _until_end(ids):
    ids = [int(i) for i in ids]
    return ids[: ids.index(END)] if END in ids else ids
