"""Train a decoder-only Transformer language model.

    python examples/train_lm.py
    python examples/train_lm.py --position rotary --epochs 10
    python examples/train_lm.py --text-file tinyshakespeare.txt
    python examples/train_lm.py --sampler top_k --top-k 10 --temperature 0.7
    python examples/train_lm.py --no-packing
    python examples/train_lm.py --sampler greedy --export runs/lm_export

The default corpus is real English prose that ships with every Python:
the docstrings of the standard library, read from its source files at run
time (nothing is imported or downloaded), one character per token.
`--text-file PATH` trains on any UTF-8 text instead, such as Tiny
Shakespeare, with a byte-level BPE tokenizer trained on the training part
(`--tokenizer`; saved in OUTPUT_DIR).

A training sequence is a paragraph (the text between two blank lines;
for the docstrings mostly a docstring paragraph), one longer than
`--sequence-length` tokens being cut into pieces that long. By default
(`--packing`) they are packed several to a row of `--sequence-length`
slots with `keras_tfm.data.pack`, each attending only to itself, and the
model is `keras_tfm.models.decoder_lm(..., packed=True)`; `--no-packing`
pads each to a row of its own. Either way the model learns the same
thing, the next token within each sequence; packed, almost no slot is
padding, so an epoch takes fewer steps of the same cost. Its output is
tied to the token table and it trains with the TransformerSchedule.
The last tenth of the text is held out, one sequence a row: the script
reports its perplexity per token (exp of the cross-entropy) and prints a
sample from `keras_tfm.generation.Generator` running the unpacked model
with the trained weights (by default temperature sampling from the
whole distribution; see `--sampler`). `--export DIR` writes that
decoding loop, with `--sampler greedy` or `beam`, as a TensorFlow
SavedModel (TensorFlow backend only). `--distribute`
trains on several devices (see the README's "Distribution"). OUTPUT_DIR
receives checkpoints, history.csv, metrics.json and plots; the last line
printed is the JSON of the final metrics. Interrupt it and run the same
command again to resume.
"""

import ast
import math
import os
import re
import sysconfig

import _data as data
import _decoding as decoding
import _flags as flags
import _training as training
import numpy as np


def stdlib_docstrings(max_chars):
    """Docstrings of the standard library's modules, classes and
    functions, in file order, up to `max_chars` characters."""
    root = sysconfig.get_paths()["stdlib"]
    try:
        names = sorted(
            name for name in os.listdir(root) if name.endswith(".py")
        )
    except OSError:
        names = []
    pieces, total = [], 0
    for name in names:
        try:
            with open(os.path.join(root, name), encoding="utf-8") as file:
                tree = ast.parse(file.read())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(
                node,
                (
                    ast.Module,
                    ast.ClassDef,
                    ast.FunctionDef,
                    ast.AsyncFunctionDef,
                ),
            ):
                continue
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 80:
                pieces.append(doc)
                total += len(doc) + 2
                if total >= max_chars:
                    return "\n\n".join(pieces)[:max_chars]
    return "\n\n".join(pieces)


def build_parser():
    parser = flags.make_parser(__doc__)
    group = parser.add_argument_group("data")
    group.add_argument(
        "--text-file",
        metavar="PATH",
        help="a UTF-8 text file to train on instead of the standard "
        "library's docstrings",
    )
    data.add_tokenizer_flags(
        parser,
        group,
        default_help="subword with --text-file, char for the docstrings",
        max_vocabulary=4000,
    )
    group.add_argument(
        "--corpus-chars",
        type=flags.positive_int,
        default=400_000,
        help="characters of the text to use (default: %(default)s)",
    )
    group.add_argument(
        "--sequence-length",
        type=flags.positive_int,
        default=128,
        help="longest training sequence in tokens; longer paragraphs are "
        "cut into pieces this long (default: %(default)s)",
    )
    training.add_packing_flag(
        group,
        sequences="paragraphs",
        default_help="on, as measured fastest; see the README's Results",
    )
    group.add_argument(
        "--validation-fraction",
        type=flags.rate,
        default=0.1,
        help="share of the text, at its end, held out for validation "
        "(default: %(default)s)",
    )
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--prompt",
        default="Return the ",
        help="text that starts the printed sample (default: %(default)r)",
    )
    group.add_argument(
        "--sample-length",
        type=int,
        default=300,
        help="tokens to sample after training; 0 for none "
        "(default: %(default)s)",
    )
    flags.add_model_flags(
        parser,
        num_layers=3,
        embedding_dim=128,
        num_heads=4,
        intermediate_dim=512,
        dropout=0.1,
    )
    training.add_training_flags(
        parser,
        epochs=6,
        batch_size=32,
        warmup_steps=400,
        lr_scale=0.5,
        label_smoothing=0.0,
        output_dir="runs/lm",
    )
    decoding.add_generation_flags(
        parser, sampler="top_p", temperature=0.8, top_p=1.0
    )
    decoding.add_export_flag(parser)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sample_length < 0:
        parser.error(f"--sample-length must be >= 0, got {args.sample_length}")
    if args.validation_fraction == 0:
        parser.error("--validation-fraction must be > 0")
    if args.sample_length and args.sequence_length < 2:
        parser.error("--sample-length needs --sequence-length 2 or more")
    data.resolve_tokenizer(
        parser, args, "char" if args.text_file is None else "subword"
    )
    training.resolve_packing(args, True)
    flags.check_model_args(parser, args)
    decoding.check_generation_args(parser, args)
    decoding.check_export_args(parser, args)
    training.check_run_args(parser, args)
    return parser, args


def paragraphs(text):
    """The paragraphs of `text`: the pieces between blank lines."""
    return [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]


def load_corpus(parser, args):
    """Training and validation sequences (id lists of at most
    `--sequence-length` tokens: the paragraphs, long ones cut into
    pieces), the tokenizer (trained on the training part of the text)
    and the name of the text."""
    if args.text_file is None:
        text = stdlib_docstrings(args.corpus_chars)
        source = "the standard library's docstrings"
    else:
        text = data.read_text(parser, "--text-file", args.text_file)
        text = text[: args.corpus_chars]
        source = args.text_file
    split_at = int(len(text) * (1 - args.validation_fraction))
    tokenizer = data.tokenizer_for(
        parser,
        [text[:split_at]],
        args.tokenizer,
        args.max_vocabulary,
        saved=training.resumed_file(args, data.TOKENIZER_FILE),
    )
    parts = []
    for name, part in (
        ("training", text[:split_at]),
        ("validation", text[split_at:]),
    ):
        sequences = data.pieces(
            data.encode(tokenizer, paragraphs(part)), args.sequence_length
        )
        if not sequences:
            parser.error(
                f"{source}: {len(text)} characters is too short: its "
                f"{name} part has no paragraph of 2 or more "
                f"{args.tokenizer} tokens"
            )
        parts.append(sequences)
    train, validation = parts
    return train, validation, tokenizer, source


def sample(
    generator, tokenizer, prompt, length, sequence_length, seed, **options
):
    """`prompt` and the text of `length` tokens generated after it.

    The model knows positions up to `sequence_length` only (a learned
    table has no others), so longer texts are generated in rounds: each
    round's prompt is the last `sequence_length // 2` tokens so far, and
    it continues them up to `sequence_length`. Every round has the same
    shapes, so the search is compiled once. The text ends early at an
    `<end>` token.

    Args:
        generator: a `keras_tfm.generation.Generator` of the model.
        tokenizer: the tokenizer of the model.
        prompt: text to continue.
        length: tokens to generate.
        sequence_length: the training window, at least 2.
        seed: seed of the first round; round `i` uses `seed + i`.
        **options: `Generator.generate` arguments (`sampler`, ...).
    """
    width = sequence_length // 2
    ids = data.encode(tokenizer, [prompt])[0] or [data.UNK]
    generated = []
    round_ = 0
    while len(generated) < length:  # at least one new token a round
        context = (ids + generated)[-width:]
        window = data.pad([context], width)
        new = decoding.generate(
            generator,
            window,
            sequence_length,
            end_id=data.END,
            seed=seed + round_,
            **options,
        )[0, len(context) :].tolist()
        if data.END in new:
            generated += new[: new.index(data.END) + 1]
            break
        generated += new
        round_ += 1
    return prompt + data.decode(tokenizer, generated[:length])


def main(argv=None):
    parser, args = parse_args(argv)
    train, validation, tokenizer, source = load_corpus(parser, args)

    # Imported once the inputs are known to be good (see _training).
    import keras

    import keras_tfm as tfm

    # One sequence a row, padded, and the next token as its label (0 at
    # its last token, which predicts nothing).
    padded = data.pad(train, args.sequence_length)
    train_x, train_y = padded, tfm.data.next_token_labels(padded, padded != 0)
    validation_x = data.pad(validation, args.sequence_length)
    validation_y = tfm.data.next_token_labels(validation_x, validation_x != 0)
    tokens = int(np.count_nonzero(padded))
    if args.packing:
        train_x = tfm.data.pack(train, args.sequence_length, return_labels=True)
        train_y = train_x.pop("labels")
        # Validation stays one sequence a row, in the packed model's
        # format: the same loss and perplexity as the unpacked model's.
        validation_x = data.one_segment_per_row(validation_x)
    train_fill = tfm.data.fill(
        train_x["token_ids"] if args.packing else train_x
    )

    distribution = training.Distribution(parser, args)  # before seeding
    keras.utils.set_random_seed(args.seed)
    with distribution.scope():
        # Sampling uses the unpacked model; with --packing it gets the
        # trained weights of the packed one (the same weights: packing
        # only changes the masks and positions).
        lm = flags.build_model(
            parser,
            tfm.models.decoder_lm,
            tokenizer.get_vocab_size(),
            args.sequence_length,
            **flags.model_kwargs(args),
        )
        model = lm
        if args.packing:
            model = flags.build_model(
                parser,
                tfm.models.decoder_lm,
                tokenizer.get_vocab_size(),
                args.sequence_length,
                packed=True,
                **flags.model_kwargs(args),
            )
            model.set_weights(lm.get_weights())  # the same start
        model.compile(
            optimizer=training.optimizer(args),
            jit_compile=training.jit_compile(args),
            loss=tfm.losses.MaskedSparseCategoricalCrossentropy(
                label_smoothing=args.label_smoothing
            ),
            metrics=[
                # Unsmoothed, over real targets only: the log perplexity
                # whatever --label-smoothing.
                training.masked_cross_entropy(),
                tfm.metrics.MaskedAccuracy(),
            ],
        )
    run = training.Run(args, distribution)
    tokenizer.save(run.path(data.TOKENIZER_FILE))
    print(
        f"{source}: {len(train)} training and {len(validation)} "
        f"validation paragraphs (or pieces) of at most "
        f"{args.sequence_length} tokens, {tokenizer.get_vocab_size()} "
        f"{args.tokenizer} tokens; {'packed' if args.packing else 'padded'} "
        f"into {len(train_y)} training rows, {train_fill:.1%} of their "
        "slots filled"
    )
    history = run.fit(
        model,
        train_x,
        train_y,
        validation_data=(validation_x, validation_y),
        tokens=tokens,
        sequences=len(train) if args.packing else None,
    )
    tokens_per_second = run.throughput()
    print(f"training: {tokens_per_second} real tokens/s")
    if args.packing:
        lm.set_weights(model.get_weights())

    text = ""
    if args.sample_length:
        generator = tfm.generation.Generator(
            lm, jit_compile=distribution.jit_compile
        )
        text = sample(
            generator,
            tokenizer,
            args.prompt,
            args.sample_length,
            args.sequence_length,
            args.seed,
            **decoding.generation_options(args),
        )
        print(f"--- sample ---\n{text}\n--------------")
    metrics = {
        # Per token: per character with the default --tokenizer char.
        "val_perplexity": math.exp(history["val_cross_entropy"][-1]),
        "val_cross_entropy": history["val_cross_entropy"][-1],
        "val_masked_accuracy": history["val_masked_accuracy"][-1],
        "first_loss": history["loss"][0],
        "loss": history["loss"][-1],
        "epochs": len(history["loss"]),
        "sample": text,
        "sampler": args.sampler,
        "tokenizer": args.tokenizer,
        "packing": args.packing,
        "train_fill": round(train_fill, 4),
        "train_tokens_per_second": tokens_per_second,
    }
    if args.export:
        metrics["export"] = decoding.export(
            lm,
            tokenizer,
            args,
            args.sequence_length,
            end_id=data.END,
        )
    run.plot("learning_curves", tfm.plotting.plot_history, history)
    if args.position != "rotary":
        run.plot("position_encoding", tfm.plotting.plot_position_encoding, lm)
    return run.finish(lm, metrics)


if __name__ == "__main__":
    main()
