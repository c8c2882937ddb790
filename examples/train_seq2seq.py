"""Train a small encoder-decoder Transformer on a generated seq2seq task.

The task: reverse a sequence of symbols (a stand-in for translation that
needs the whole source and exact positions). Data is generated in the
script, so it runs anywhere with no download:

    python examples/train_seq2seq.py
    python examples/train_seq2seq.py --position learned --epochs 20

It trains with `model.fit`, decodes a held-out test split greedily and
prints the exact-match accuracy; the last line printed is a JSON object of
the final metrics, also written to `--output-dir/metrics.json`.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

import keras_tfm as tfm

PAD, START, END = 0, 1, 2
FIRST_SYMBOL = 3


def make_pairs(count, vocabulary_size, max_length, rng):
    """Random symbol strings and their reversals, as id arrays."""
    sources = np.zeros((count, max_length), "int32")
    targets = np.zeros((count, max_length + 1), "int32")
    for row in range(count):
        length = rng.integers(2, max_length + 1)
        symbols = rng.integers(FIRST_SYMBOL, vocabulary_size, size=length)
        sources[row, :length] = symbols
        targets[row, :length] = symbols[::-1]
        targets[row, length] = END
    return sources, targets


def teacher_forcing(sources, targets):
    """Inputs `(source, START + target[:-1])` and labels `target`."""
    decoder_inputs = np.concatenate(
        [np.full((len(targets), 1), START, "int32"), targets[:, :-1]], axis=1
    )
    inputs = {
        "encoder_token_ids": sources,
        "decoder_token_ids": decoder_inputs,
    }
    return inputs, targets


def greedy_decode(model, sources, length):
    """Decode by re-running the model on the growing prefix."""
    decoded = np.zeros((len(sources), length + 1), "int32")
    decoded[:, 0] = START
    for step in range(length):
        logits = model.predict(
            {
                "encoder_token_ids": sources,
                "decoder_token_ids": decoded[:, : step + 1],
            },
            verbose=0,
            batch_size=256,
        )
        decoded[:, step + 1] = np.argmax(logits[:, -1], axis=-1)
    return decoded[:, 1:]


def exact_match(predicted, targets):
    hits = 0
    for guess, truth in zip(predicted, targets, strict=True):
        end = int(np.argmax(truth == END))
        hits += bool(np.array_equal(guess[: end + 1], truth[: end + 1]))
    return hits / len(targets)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--position",
        choices=["sinusoidal", "learned", "rotary"],
        default="sinusoidal",
        help="position strategy (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--vocabulary-size", type=int, default=13)
    parser.add_argument("--max-length", type=int, default=8)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--intermediate-dim", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/seq2seq")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "train_size", "test_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.vocabulary_size <= FIRST_SYMBOL or args.max_length < 2:
        parser.error("--vocabulary-size must be > 3 and --max-length >= 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train = teacher_forcing(
        *make_pairs(args.train_size, args.vocabulary_size, args.max_length, rng)
    )
    test_sources, test_targets = make_pairs(
        args.test_size, args.vocabulary_size, args.max_length, rng
    )
    model = tfm.models.seq2seq_transformer(
        args.vocabulary_size,
        args.max_length + 1,
        num_layers=args.num_layers,
        embedding_dim=args.embedding_dim,
        num_heads=args.num_heads,
        intermediate_dim=args.intermediate_dim,
        dropout=args.dropout,
        position=args.position,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.time()
    history = model.fit(
        *train, batch_size=args.batch_size, epochs=args.epochs, verbose=2
    )
    predicted = greedy_decode(model, test_sources, args.max_length + 1)
    metrics = {
        "backend": keras.backend.backend(),
        "position": args.position,
        "train_loss": float(history.history["loss"][-1]),
        "first_loss": float(history.history["loss"][0]),
        "train_token_accuracy": float(history.history["accuracy"][-1]),
        "test_exact_match": exact_match(predicted, test_targets),
        "seconds": round(time.time() - started, 1),
    }
    model.save(os.path.join(args.output_dir, "model.keras"))
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as file:
        json.dump(metrics, file, indent=2)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
