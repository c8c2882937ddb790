"""Real tokens per second of training: packing vs padding, vs keras-hub.

Trains one causal language model of the issue-3 reference sizes
(vocabulary 8000, width 256, 4 heads, FFN 1024, 2 post-norm layers,
learned positions, tied output head, length 128, dropout 0.1, Adam 1e-3)
on a real length distribution: the docstrings of the Python standard
library that ships with the machine, split at blank lines into paragraphs
(or, with `--data`, each side of a TSV of sentence pairs). Four variants
train in one process, in rounds whose order rotates:

  (a) keras_tfm packed: `keras_tfm.data.pack(..., return_labels=True)`
      rows of 128 slots and a `CausalLM(..., packed=True)`, whose tokens
      attend only within their own sequence, positions restarting at 0;
  (b) keras_tfm padded, length-bucketed: `keras_tfm.data.bucket_batches`;
  (c) keras_tfm padded to each batch's longest sequence;
  (d) keras-hub padded to each batch's longest sequence (the same
      batches as (c)).

A decoder (causal) model rather than issue 3's encoder: with next-token
labels a bidirectional encoder sees its own target, so its validation
loss would say nothing, and packing needs per-segment attention, which a
causal model makes exact (each sequence is computed as if alone). The
keras_tfm model is composed from the library's blocks, as
`keras_tfm.models.decoder_lm(..., packed=True)` composes it, with the
settings that make its computation keras-hub's: no dropout on the
embeddings or on the FFN hidden layer (keras-hub's `TransformerDecoder`
and `TokenAndPositionEmbedding` have none there), unscaled embeddings.

Same work for every variant: the timed rounds are exactly one epoch over
the same training paragraphs. The paragraphs are chosen so that they pack
into `--rounds * --steps` batches of `--batch-size` rows (rows left over
stay empty and are trained on, as a fixed-shape pipeline would), and the
padded variants cut the same paragraphs into as many batches, so every
variant makes the same number of optimizer steps on the same real tokens
(about `--batch-size * 128` per step). Each variant starts from the same
weights as the others of its library ((a), (b) and (c) share one
initialization), and each distinct batch shape is trained on once before
timing (compilation), after which weights and optimizer state are reset.
After the epoch, each model's validation loss per real token (summed
cross-entropy over the next-token targets of held-out paragraphs, divided
by their number) is measured.

Tokens: each paragraph is split into words and punctuation marks
(`\\w+|[^\\w\\s]`); the `vocabulary_size - 2` most frequent in the
training paragraphs get ids 2, 3, ... (ties by spelling), every other
word id 1; id 0 is padding. Paragraphs with fewer than 2 tokens are
dropped and longer ones are cut to `--sequence-length`.

Run from the repository root (the backend comes from `KERAS_BACKEND`):

    TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow \\
        python benchmarks/packing.py --jit-compile false
    TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow \\
        python benchmarks/packing.py --jit-compile true
    KERAS_BACKEND=jax python benchmarks/packing.py

`--quick` is a smoke run (tiny model, a few files' docstrings, 2 rounds).
The table gives each variant's fill (`keras_tfm.data.fill`: the fraction
of slots holding a real token), real tokens/s (all real tokens over all
timed seconds), its ratio to keras-hub, the median of same-round ratios
with a 95% bootstrap interval, and the validation loss. Results go to
`--output`, by default `benchmarks/results/packing_<backend>[_jit]
[_quick].json`.
"""

import argparse
import ast
import collections
import os
import re
import statistics
import sys
import sysconfig
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

VARIANTS = ("packed", "bucketed", "padded", "keras_hub")
LABELS = {
    "packed": "keras_tfm, packed",
    "bucketed": "keras_tfm, padded, length-bucketed",
    "padded": "keras_tfm, padded to batch max",
    "keras_hub": "keras-hub, padded to batch max",
}
QUICK = dict(
    _common.QUICK_MODEL,
    rounds=2,
    steps=1,
    max_files=40,
    validation_sequences=16,
    pad_to_multiple_of=4,
)
WORD = re.compile(r"\w+|[^\w\s]")
# Directories of the standard library that hold tests, not the library.
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common.add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--steps", type=int, default=2, help="training steps per round"
    )
    parser.add_argument(
        "--pad-to-multiple-of",
        type=int,
        default=16,
        help="padded batches' length is rounded up to a multiple of this "
        "(fewer shapes to compile)",
    )
    parser.add_argument("--validation-sequences", type=int, default=1000)
    parser.add_argument(
        "--data",
        default=None,
        help="TSV of sentence pairs; each side is one sequence (replaces "
        "the standard library's docstrings)",
    )
    parser.add_argument(
        "--max-files",
        type=int,
        default=None,
        help="read the docstrings of this many standard library files",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny sizes, few files, 2 rounds of 1 step",
    )
    parser.add_argument("--output", default=None, help="results JSON path")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.width % args.num_heads:
        parser.error("--num-heads must divide --width")
    return args


# --------------------------------------------------------------------------
# Data


def stdlib_paragraphs(max_files=None):
    """Docstring paragraphs of the standard library's modules, in order."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            d
            for d in subdirectories
            if d not in SKIP_DIRS and not d.startswith("lib2to3")
        )
        paths += [
            os.path.join(directory, f) for f in sorted(files) if f[-3:] == ".py"
        ]
    paths = paths[:max_files]
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    paragraphs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, nodes):
                doc = ast.get_docstring(node)
                if doc:
                    paragraphs += re.split(r"\n\s*\n", doc)
    source = f"docstrings of {len(paths)} files under {root}"
    return paragraphs, source


def tsv_sentences(path):
    """Every non-empty side of every line of a TSV of sentence pairs."""
    with open(path, encoding="utf-8") as f:
        sentences = [
            side for line in f for side in line.rstrip("\n").split("\t")[:2]
        ]
    return sentences, f"both sides of the sentence pairs in {path}"


def load_sequences(args):
    """Training and validation sequences of token ids, and a description."""
    if args.data:
        texts, source = tsv_sentences(args.data)
    else:
        texts, source = stdlib_paragraphs(args.max_files)
    words = [WORD.findall(text) for text in texts]
    words = [w for w in words if len(w) >= 2]
    rng = np.random.default_rng(args.seed)
    words = [words[i] for i in rng.permutation(len(words))]
    validation = words[: args.validation_sequences]
    train = words[args.validation_sequences :]
    counts = collections.Counter(w for sequence in train for w in sequence)
    frequent = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ids = {
        w: i + 2
        for i, (w, _) in enumerate(frequent[: args.vocabulary_size - 2])
    }

    def encode(sequences):
        return [
            np.array(
                [ids.get(w, 1) for w in s[: args.sequence_length]], "int32"
            )
            for s in sequences
        ]

    return encode(train), encode(validation), source


def choose_training_set(pool, args):
    """The first paragraphs of `pool` that pack into one epoch of batches.

    Returns the largest prefix whose length is a multiple of the number of
    steps and that `pack` fits in `steps * batch_size` rows.
    """
    import keras_tfm

    steps = args.rounds * args.steps
    rows = steps * args.batch_size

    def packed_rows(n):
        packed = keras_tfm.data.pack(pool[:n], args.sequence_length)
        return len(packed["token_ids"])

    low, high = 0, len(pool) // steps  # in units of `steps` paragraphs
    while low < high:
        middle = (low + high + 1) // 2
        if packed_rows(middle * steps) <= rows:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        raise SystemExit(
            f"not enough sequences ({len(pool)}) for {steps} steps of "
            f"{args.batch_size}; lower --rounds, --steps or --batch-size"
        )
    return pool[: low * steps]


def packed_batches(sequences, args, rng, rows):
    """`rows` packed rows (empty ones last) in shuffled batches."""
    import keras_tfm

    packed = keras_tfm.data.pack(
        sequences, args.sequence_length, return_labels=True
    )
    extra = rows - len(packed["token_ids"])
    packed = {
        k: np.concatenate([v, np.zeros((extra, v.shape[1]), v.dtype)])
        for k, v in packed.items()
    }
    order = rng.permutation(rows)
    batches = []
    for start in range(0, rows, args.batch_size):
        chosen = order[start : start + args.batch_size]
        batch = {k: v[chosen] for k, v in packed.items()}
        labels = batch.pop("labels")
        batches.append((batch, labels, batch["token_ids"]))
    return batches


def padded_batches(sequences, batch_size, multiple, rng):
    """Batches of `batch_size` sequences in a random order, each padded to
    its longest (rounded up to `multiple`)."""
    import keras_tfm

    order = rng.permutation(len(sequences))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [sequences[i] for i in order[start : start + batch_size]]
        longest = max(len(s) for s in chunk)
        length = -(-longest // multiple) * multiple
        ids = np.zeros((len(chunk), length), "int32")
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)] = sequence
        labels = keras_tfm.data.next_token_labels(ids, ids != 0)
        batches.append((ids, labels, ids))
    return batches


def bucketed_batches(sequences, batch_size, multiple, seed):
    import keras_tfm

    return [
        (b["token_ids"], b["labels"], b["token_ids"])
        for b in keras_tfm.data.bucket_batches(
            sequences,
            batch_size,
            pad_to_multiple_of=multiple,
            seed=seed,
            return_labels=True,
        )
    ]


# --------------------------------------------------------------------------
# Models


def build_keras_tfm(keras, args, packed):
    import keras_tfm

    layers = keras_tfm.layers
    embedding = layers.TokenAndPositionEmbedding(
        args.vocabulary_size,
        args.sequence_length,
        args.width,
        position="learned",
        mask_zero=True,
        scale=False,  # as keras-hub's
        name="embedding",
    )
    blocks = [
        layers.TransformerDecoderBlock(
            num_heads=args.num_heads,
            intermediate_dim=args.intermediate_dim,
            dropout=args.dropout,
            # keras-hub's decoder has no dropout on the FFN hidden layer.
            activation_dropout=0.0,
            activation="relu",
            norm_first=False,
            cross_attention=False,
            name=f"decoder_layer_{i}",
        )
        for i in range(args.num_layers)
    ]
    return keras_tfm.models.CausalLM(
        embedding,
        blocks,
        packed=packed,
        name="keras_tfm_packed_lm" if packed else "keras_tfm_lm",
    )


def build_keras_hub(keras, args):
    import keras_hub

    token_ids = keras.Input((None,), dtype="int32")
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
        # Without an encoder sequence: causal self-attention only.
        x = keras_hub.layers.TransformerDecoder(
            intermediate_dim=args.intermediate_dim,
            num_heads=args.num_heads,
            dropout=args.dropout,
            activation="relu",
            normalize_first=False,
            name=f"decoder_layer_{i}",
        )(x)
    logits = embedding.token_embedding(x, reverse=True)
    return keras.Model(token_ids, logits, name="keras_hub_lm")


class Trainer:
    """One variant: a compiled model and its epoch of batches."""

    def __init__(self, keras, model, args, batches):
        self.keras = keras
        self.model = model
        _common.compile_model(keras, model, args)
        self.batches = batches
        self.next = 0

    def step(self, batch):
        inputs, labels, _ = batch
        weights = (labels != 0).astype("float32")
        # Returns Python floats: the step has finished when this returns.
        return self.model.train_on_batch(inputs, labels, sample_weight=weights)

    def shapes(self):
        """One batch of each distinct shape."""
        found = {}
        for batch in self.batches:
            found.setdefault(batch[2].shape, batch)
        return found

    def warm_up(self):
        """Train once on every shape, then restore weights and optimizer."""
        weights = self.model.get_weights()
        start = time.perf_counter()
        for batch in self.shapes().values():
            self.step(batch)
        seconds = time.perf_counter() - start
        self.model.set_weights(weights)
        for variable in self.model.optimizer.variables:
            if variable.path.split("/")[-1] != "learning_rate":
                variable.assign(np.zeros(variable.shape, variable.dtype))
        return seconds

    def train(self, steps):
        """Train on the next `steps` batches: (real tokens, seconds)."""
        batches = self.batches[self.next : self.next + steps]
        self.next += steps
        tokens = sum(int(np.count_nonzero(b[2])) for b in batches)
        start = time.perf_counter()
        for batch in batches:
            self.step(batch)
        return tokens, time.perf_counter() - start


def validation_loss(keras, model, batches):
    """Summed cross-entropy over next-token targets, and their number."""
    total, count = 0.0, 0
    for inputs, labels, _ in batches:
        logits = model(inputs, training=False)
        losses = keras.losses.sparse_categorical_crossentropy(
            keras.ops.convert_to_tensor(labels), logits, from_logits=True
        )
        losses = keras.ops.convert_to_numpy(losses).astype("float64")
        total += float(np.sum(losses[labels != 0]))
        count += int(np.count_nonzero(labels))
    return total, count


# --------------------------------------------------------------------------
# Report


def format_table(result):
    lines = [
        "| variant | fill | real tokens/s | vs keras-hub | vs keras-hub, "
        "paired [95% CI] | validation loss / token |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        paired = "-"
        if row["name"] != "keras_hub":
            low, high = row["relative_to_keras_hub_paired_ci95"]
            paired = (
                f"{row['relative_to_keras_hub_paired_median']:.2f}x "
                f"[{low:.2f}, {high:.2f}]"
            )
        lines.append(
            f"| {LABELS[row['name']]} | {row['fill']:.3f} "
            f"| {row['real_tokens_per_second']:,.0f} "
            f"| {row['relative_to_keras_hub']:.2f}x | {paired} "
            f"| {row['validation_loss']:.4f} |"
        )
    env, data = result["environment"], result["data"]
    check = result["validation"]
    lines += [
        "",
        f"backend={env['backend']}, jit_compile={result['jit_compile']}, "
        f"keras {env['keras']}, keras-hub {env.get('keras_hub', '?')}, "
        f"CPUs={env['cpu_count']}",
        f"one epoch: {result['config']['rounds'] * result['config']['steps']}"
        f" steps of {data['real_tokens_per_epoch']:,} real tokens in "
        f"{data['train_sequences']:,} sequences (mean length "
        f"{data['train_length_mean']:.1f}); padded batches of "
        f"{data['padded_batch_size']} sequences, packed of "
        f"{result['config']['batch_size']} rows of "
        f"{result['config']['sequence_length']}",
        f"validation: {data['validation_tokens']:,} target tokens in "
        f"{data['validation_sequences']:,} sequences; packed / padded loss "
        f"{check['packed_over_padded']:.4f}, packed / bucketed "
        f"{check['packed_over_bucketed']:.4f}; packed weights on padded "
        f"batches give {check['packed_weights_on_padded_batches']:.4f}",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    # keras-hub's PositionEmbedding warns that it drops the mask, which its
    # TokenAndPositionEmbedding then restores.
    warnings.filterwarnings("ignore", message=".*does not support masking")
    import keras

    import keras_tfm

    backend = keras.backend.backend()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    pool, validation, source = load_sequences(args)
    train = choose_training_set(pool, args)
    steps = args.rounds * args.steps
    batch_size = len(train) // steps  # padded batches: same steps
    multiple = args.pad_to_multiple_of
    padded = padded_batches(train, batch_size, multiple, rng)
    data = {
        "packed": packed_batches(train, args, rng, steps * args.batch_size),
        "bucketed": bucketed_batches(train, batch_size, multiple, args.seed),
        "padded": padded,
        "keras_hub": padded,
    }
    lengths = np.array([len(s) for s in train])
    real_tokens = int(lengths.sum())
    for name, batches in data.items():
        if len(batches) != steps:  # pragma: no cover - by construction
            raise RuntimeError(f"{name}: {len(batches)} batches, not {steps}")
        counted = sum(int(np.count_nonzero(b[2])) for b in batches)
        if counted != real_tokens:  # pragma: no cover - by construction
            raise RuntimeError(f"{name}: {counted} tokens, not {real_tokens}")
    print(
        f"data: {source}; {len(train):,} training sequences "
        f"({real_tokens:,} tokens, lengths median {np.median(lengths):.0f}, "
        f"mean {lengths.mean():.1f}, max {lengths.max()}), "
        f"{len(validation):,} validation; {steps} steps per variant",
        flush=True,
    )

    models = {"packed": build_keras_tfm(keras, args, packed=True)}
    for name in ("bucketed", "padded"):
        models[name] = build_keras_tfm(keras, args, packed=False)
        models[name].set_weights(models["packed"].get_weights())
    models["keras_hub"] = build_keras_hub(keras, args)
    trainers = {
        name: Trainer(keras, models[name], args, data[name])
        for name in VARIANTS
    }
    rows = {}
    for name, trainer in trainers.items():
        seconds = trainer.warm_up()
        rows[name] = {
            "name": name,
            "label": LABELS[name],
            "parameters": int(trainer.model.count_params()),
            "jit_compile": bool(trainer.model.jit_compile),
            "warmup_seconds": seconds,
            "batch_shapes": sorted(
                [list(s) for s in trainer.shapes()], key=lambda s: s[::-1]
            ),
            "fill": keras_tfm.data.fill([b[2] for b in data[name]]),
            "real_tokens_per_round": [],
            "seconds_per_round": [],
        }
        print(
            f"{LABELS[name]}: {rows[name]['parameters']:,} parameters, "
            f"fill {rows[name]['fill']:.3f}, "
            f"{len(rows[name]['batch_shapes'])} batch shapes, warm-up "
            f"{seconds:.1f}s",
            flush=True,
        )

    order = list(VARIANTS)
    for round_index in range(args.rounds):
        # Rotate the order so no variant always runs first.
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            tokens, seconds = trainers[name].train(args.steps)
            rows[name]["real_tokens_per_round"].append(tokens)
            rows[name]["seconds_per_round"].append(seconds)
        rates = {
            n: r["real_tokens_per_round"][-1] / r["seconds_per_round"][-1]
            for n, r in rows.items()
        }
        report = ", ".join(f"{n} {rate:,.0f}" for n, rate in rates.items())
        print(
            f"round {round_index + 1}/{args.rounds}: real tokens/s {report}",
            flush=True,
        )

    for row in rows.values():
        row["real_tokens"] = sum(row["real_tokens_per_round"])
        row["seconds"] = sum(row["seconds_per_round"])
        row["real_tokens_per_second"] = row["real_tokens"] / row["seconds"]
        row["real_tokens_per_second_per_round"] = [
            t / s
            for t, s in zip(
                row["real_tokens_per_round"],
                row["seconds_per_round"],
                strict=True,
            )
        ]
        row["real_tokens_per_second_median"] = statistics.median(
            row["real_tokens_per_second_per_round"]
        )
    hub = rows["keras_hub"]
    for row in rows.values():
        ratios = _common.paired_ratios(
            row["real_tokens_per_second_per_round"],
            hub["real_tokens_per_second_per_round"],
            args.seed,
        )
        row["relative_to_keras_hub"] = (
            row["real_tokens_per_second"] / hub["real_tokens_per_second"]
        )
        row["relative_to_keras_hub_per_round"] = ratios["per_round"]
        row["relative_to_keras_hub_paired_median"] = ratios["paired_median"]
        row["relative_to_keras_hub_paired_ci95"] = ratios["paired_ci95"]

    # Validation: packed rows for the packed model, length-bucketed padded
    # batches for the others (trailing padding changes no causal output).
    packed_validation = keras_tfm.data.pack(
        validation, args.sequence_length, return_labels=True
    )
    labels = packed_validation.pop("labels")
    packed_validation = [
        (
            {
                k: v[i : i + args.batch_size]
                for k, v in packed_validation.items()
            },
            labels[i : i + args.batch_size],
            None,
        )
        for i in range(0, len(labels), args.batch_size)
    ]
    padded_validation = bucketed_batches(
        validation, batch_size, multiple, args.seed
    )
    counts = set()
    for name in VARIANTS:
        batches = packed_validation if name == "packed" else padded_validation
        total, count = validation_loss(keras, models[name], batches)
        rows[name]["validation_loss"] = total / count
        counts.add(count)
    # The packed model's weights in the padded model: equal losses say
    # that packing computed each sequence as if it were alone.
    models["padded"].set_weights(models["packed"].get_weights())
    total, count = validation_loss(keras, models["padded"], padded_validation)
    check = {
        "packed_over_padded": rows["packed"]["validation_loss"]
        / rows["padded"]["validation_loss"],
        "packed_over_bucketed": rows["packed"]["validation_loss"]
        / rows["bucketed"]["validation_loss"],
        "packed_weights_on_padded_batches": total / count,
    }

    jit = sorted({row["jit_compile"] for row in rows.values()})
    result = {
        "benchmark": "packing",
        "quick": args.quick,
        "jit_compile_requested": args.jit_compile,
        "jit_compile": jit[0] if len(jit) == 1 else jit,
        "environment": _common.environment(backend),
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "data": {
            "source": source,
            "tokenizer": (
                r"words and punctuation (\w+|[^\w\s]); the vocabulary_size "
                "- 2 most frequent training words get ids 2.., others 1"
            ),
            "train_sequences": len(train),
            "train_length_mean": float(lengths.mean()),
            "train_length_percentiles": {
                str(p): float(np.percentile(lengths, p))
                for p in (10, 50, 90, 99)
            },
            "real_tokens_per_epoch": real_tokens,
            "padded_batch_size": batch_size,
            "validation_sequences": len(validation),
            "validation_tokens": counts.pop() if len(counts) == 1 else None,
        },
        "validation": check,
        "rows": [rows[name] for name in VARIANTS],
    }
    table = format_table(result)
    result["table_markdown"] = table
    print()
    print(table)

    output = args.output
    if output is None:
        suffix = "_jit" if True in jit else ""
        suffix += "_quick" if args.quick else ""
        output = os.path.join(
            _common.RESULTS, f"packing_{backend}{suffix}.json"
        )
    _common.write_json(result, output)
    return result


if __name__ == "__main__":
    main()
