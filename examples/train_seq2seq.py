"""Train an encoder-decoder Transformer to translate free-text dates to ISO.

    python examples/train_seq2seq.py
    python examples/train_seq2seq.py --position rotary --output-dir runs/rot
    python examples/train_seq2seq.py --data de_en.tsv --output-dir runs/de_en
    python examples/train_seq2seq.py --sampler beam --num-beams 4
    python examples/train_seq2seq.py --packing
    python examples/train_seq2seq.py --export runs/seq2seq_export

The default task is generated in the script, so it runs anywhere with no
download: dates written the ways people write them ("3rd of March 2021",
"Wednesday, March 3, 2021", "mar 3 2021", "03.03.2021", ...) become ISO
dates ("2021-03-03"), one character per token. Source and target differ
in length and order (the year moves to the front, month names become
numbers), and the test split holds dates never seen in training.

`--data PATH` trains on your own tab-separated `source<TAB>target` pairs
instead (the format of the Anki/Tatoeba files that the keras.io
English-Spanish example uses; extra columns are ignored; see
scripts/ding_to_tsv.py for German-English sentences from Debian), with a
byte-level BPE tokenizer trained on the training split (`--tokenizer`).

With `--packing` (the default with `--data`) the training pairs are
packed several to a row by `keras_tfm.data.pack_pairs` (each pair's
source in an encoder row, its target in the decoder row of the same
index, attending only to each other) and the model is
`seq2seq_transformer(..., packed=True)`; `--no-packing` (the default for
the dates, whose lengths vary little) pads each pair to a row of its
own. Decoding uses the unpacked model with the trained weights.

The model trains with the paper's recipe: the TransformerSchedule warm-up,
Adam(beta_2=0.98), label smoothing and masked token accuracy. The loss is
MaskedSparseCategoricalCrossentropy: the Keras padding mask only covers
positions whose input is padding, and the label right after `<end>` (a
padding label at a real input position) would count in a plain
SparseCategoricalCrossentropy without `ignore_class=0`. Afterwards
`keras_tfm.generation.Generator` decodes the test split (greedily unless
`--sampler` says otherwise) and the script reports exact match, corpus
BLEU and chrF (sacrebleu, default settings, its signatures included).
`--export DIR` writes the decoding loop (`--sampler greedy` or `beam`)
as a TensorFlow SavedModel with the tokenizer beside it (TensorFlow
backend only). `--distribute` trains on several devices (see the
README's "Distribution"). OUTPUT_DIR receives checkpoints, the tokenizer,
history.csv, metrics.json, test_predictions.tsv (each test pair's source,
reference and decoded hypothesis, to rescore or inspect) and plots
(learning curves, the position table, a cross-attention map); the last
line printed is the JSON of the final metrics. Interrupt it and run the
same command again to resume.
"""

import datetime
import math

import _data as data
import _decoding as decoding
import _flags as flags
import _training as training
import numpy as np

MONTHS = [
    datetime.date(2000, month, 1).strftime("%B") for month in range(1, 13)
]
WEEKDAYS = [datetime.date(2024, 1, day).strftime("%A") for day in range(1, 8)]
FORMATS = (
    "{Month} {day}, {year}",
    "{day} {Month} {year}",
    "{ordinal} of {Month} {year}",
    "{Weekday}, {Month} {day}, {year}",
    "{Mon} {day} {year}",
    "{Month} {ordinal}, {year}",
    "{Wkd} {day} {Mon} {year}",
    "{dd}.{mm}.{year}",
    "{year}/{mm}/{dd}",
)


def ordinal(day):
    if day in (11, 12, 13):
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th') }"


def spell_date(date, rng):
    """`date` written in one of FORMATS, in title case or lower case."""
    month, weekday = MONTHS[date.month - 1], WEEKDAYS[date.weekday()]
    text = FORMATS[rng.integers(len(FORMATS))].format(
        Month=month,
        Mon=month[:3],
        Weekday=weekday,
        Wkd=weekday[:3],
        day=date.day,
        ordinal=ordinal(date.day),
        dd=f"{date.day:02d}",
        mm=f"{date.month:02d}",
        year=date.year,
    )
    return text.lower() if rng.random() < 0.5 else text


def date_pairs(train_size, test_size, rng):
    """`(train, test)` pairs `(free text, ISO)`; disjoint sets of dates."""
    first = datetime.date(1950, 1, 1)
    days = (datetime.date(2050, 1, 1) - first).days
    chosen = rng.choice(days, size=train_size + test_size, replace=False)
    pairs = []
    for offset in chosen:
        date = first + datetime.timedelta(days=int(offset))
        pairs.append((spell_date(date, rng), date.isoformat()))
    return pairs[:train_size], pairs[train_size:]


def build_parser():
    parser = flags.make_parser(__doc__)
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        metavar="PATH",
        help="a UTF-8 file of source<TAB>target lines to train on instead "
        "of the generated dates",
    )
    data.add_tokenizer_flags(
        parser,
        group,
        default_help="subword with --data, char for the dates",
        max_vocabulary=8000,
    )
    group.add_argument(
        "--max-length",
        type=flags.positive_int,
        default=64,
        help="longest sequence in tokens; longer --data pairs are dropped "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--train-size",
        type=flags.positive_int,
        default=12000,
        help="generated training pairs (default: %(default)s)",
    )
    group.add_argument(
        "--test-size",
        type=flags.positive_int,
        default=1000,
        help="generated test pairs (default: %(default)s)",
    )
    group.add_argument(
        "--test-fraction",
        type=flags.rate,
        default=0.1,
        help="share of --data pairs held out for testing "
        "(default: %(default)s)",
    )
    training.add_packing_flag(
        group,
        sequences="pairs",
        default_help="on with --data, off for the dates, as measured "
        "fastest; see the README's Results",
    )
    flags.add_model_flags(
        parser,
        num_layers=2,
        embedding_dim=64,
        num_heads=4,
        intermediate_dim=128,
        dropout=0.1,
    )
    training.add_training_flags(
        parser,
        epochs=10,
        batch_size=64,
        warmup_steps=400,
        lr_scale=0.5,
        label_smoothing=0.1,
        output_dir="runs/seq2seq",
    )
    decoding.add_generation_flags(parser, sampler="greedy", temperature=1.0)
    decoding.add_export_flag(parser)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.test_fraction == 0:
        parser.error("--test-fraction must be > 0 with --data")
    data.resolve_tokenizer(
        parser, args, "char" if args.data is None else "subword"
    )
    training.resolve_packing(args, args.data is not None)
    flags.check_model_args(parser, args)
    decoding.check_generation_args(parser, args)
    decoding.check_export_args(parser, args)
    training.check_run_args(parser, args)
    return parser, args


def load_pairs(parser, args, rng):
    """Train and test pairs of texts, and the tokenizer, trained on the
    training pairs (or the one of the run being resumed)."""
    if args.data is None:
        train, test = date_pairs(args.train_size, args.test_size, rng)
    else:
        pairs = data.read_tsv(parser, "--data", args.data, ("source", "target"))
        if len(pairs) < 2:
            parser.error(f"--data {args.data}: fewer than 2 pairs")
        train, test = data.split(pairs, args.test_fraction, rng)
    tokenizer = data.tokenizer_for(
        parser,
        [text for pair in train for text in pair],
        args.tokenizer,
        args.max_vocabulary,
        saved=training.resumed_file(args, data.TOKENIZER_FILE),
    )
    if args.data is not None:
        train, test = (
            fitting(pairs, tokenizer, args) for pairs in (train, test)
        )
        if not train or not test:
            parser.error(
                f"--data {args.data}: no {'training' if not train else 'test'} "
                f"pairs of at most --max-length {args.max_length} tokens"
            )
    return train, test, tokenizer


def fitting(pairs, tokenizer, args):
    """The pairs whose source, and target with `<end>`, fit --max-length."""
    sources = data.encode(tokenizer, [source for source, _ in pairs])
    targets = data.encode(tokenizer, [target for _, target in pairs])
    return [
        pair
        for pair, source, target in zip(pairs, sources, targets, strict=True)
        if len(source) <= args.max_length and len(target) < args.max_length
    ]


def encode(pairs, tokenizer, source_length, target_length):
    """Encoder ids, decoder inputs (`<start>` + target) and labels
    (target + `<end>`), padded with 0."""
    sources = data.encode(tokenizer, [source for source, _ in pairs])
    targets = data.encode(tokenizer, [target for _, target in pairs])
    labels = data.pad([ids + [data.END] for ids in targets], target_length)
    decoder_inputs = data.pad(
        [[data.START] + ids for ids in targets], target_length
    )
    inputs = {
        "encoder_token_ids": data.pad(sources, source_length),
        "decoder_token_ids": decoder_inputs,
    }
    return inputs, labels


# Packed rows hold about this many pairs of average length (each side's
# row is that many times its mean length, and at least its longest).
PAIRS_PER_ROW = 4


def pack(pairs, tokenizer):
    """Packed training rows of `pairs` and their labels.

    `keras_tfm.data.pack_pairs` puts the source of each pair in an
    encoder row and `<start>` + target + `<end>` in the decoder row of
    the same index, under one segment id; the labels are the next target
    token within each segment (target + `<end>`, as unpacked, and 0 at
    the `<end>` input, which predicts nothing).
    """
    from keras_tfm.data import pack_pairs

    sources = data.encode(tokenizer, [source for source, _ in pairs])
    targets = [
        [data.START, *ids, data.END]
        for ids in data.encode(tokenizer, [target for _, target in pairs])
    ]
    lengths = [
        max(
            max(map(len, side)),
            math.ceil(PAIRS_PER_ROW * np.mean([len(ids) for ids in side])),
        )
        for side in (sources, targets)
    ]
    rows = pack_pairs(sources, targets, *lengths)
    labels = rows.pop("labels")
    return rows, labels


def real_tokens(inputs, labels):
    """Source tokens plus target tokens with their `<end>` (the labels):
    the same count for padded and packed rows of the same pairs."""
    return int(
        np.count_nonzero(inputs["encoder_token_ids"]) + np.count_nonzero(labels)
    )


def fill(inputs):
    """Share of the encoder and decoder slots that hold a token."""
    arrays = [inputs[f"{side}_token_ids"] for side in ("encoder", "decoder")]
    return sum(map(np.count_nonzero, arrays)) / sum(a.size for a in arrays)


PREDICTIONS = "test_predictions.tsv"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def write_predictions(path, test, hypotheses):
    """Write `source<TAB>reference<TAB>hypothesis`, a header line and one
    row per test pair, so that a run can be rescored; a backslash, tab or
    line break inside a text is written `\\\\`, `\\t`, `\\n` or `\\r`."""
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write("source\treference\thypothesis\n")
        for (source, reference), hypothesis in zip(
            test, hypotheses, strict=True
        ):
            texts = (source, reference, hypothesis)
            file.write("\t".join(t.translate(_ESCAPES) for t in texts) + "\n")


def main(argv=None):
    parser, args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train, test, tokenizer = load_pairs(parser, args, rng)
    sources, targets = zip(*train, *test, strict=True)
    source_length = max(map(len, data.encode(tokenizer, sources)))
    # <start> + target as the decoder's input, target + <end> as labels.
    target_length = 1 + max(map(len, data.encode(tokenizer, targets)))
    train_x, train_y = encode(train, tokenizer, source_length, target_length)
    test_x, test_y = encode(test, tokenizer, source_length, target_length)

    # Imported once the inputs are known to be good (see _training).
    import keras

    import keras_tfm as tfm

    tokens = real_tokens(train_x, train_y)
    validation = (test_x, test_y)
    if args.packing:
        train_x, train_y = pack(train, tokenizer)
        # Validation stays one pair a row, in the packed model's format:
        # the same loss and accuracy as the unpacked model's.
        validation = (
            {
                **data.one_segment_per_row(
                    test_x["encoder_token_ids"], "encoder_"
                ),
                **data.one_segment_per_row(
                    test_x["decoder_token_ids"], "decoder_"
                ),
            },
            test_y,
        )

    distribution = training.Distribution(parser, args)  # before seeding
    keras.utils.set_random_seed(args.seed)
    with distribution.scope():
        build = dict(
            # Packed, a decoder row also holds the <end> of the longest
            # target as an input, one position more.
            sequence_length=max(source_length, target_length + 1),
            **flags.model_kwargs(args),
        )
        # Decoding and evaluation use the unpacked model; with --packing
        # it gets the trained weights of the packed one (the same
        # weights: packing only changes the masks and positions).
        translator = flags.build_model(
            parser,
            tfm.models.seq2seq_transformer,
            tokenizer.get_vocab_size(),
            **build,
        )
        model = translator
        if args.packing:
            model = flags.build_model(
                parser,
                tfm.models.seq2seq_transformer,
                tokenizer.get_vocab_size(),
                packed=True,
                **build,
            )
            model.set_weights(translator.get_weights())  # the same start
        model.compile(
            optimizer=training.optimizer(args),
            jit_compile=training.jit_compile(args),
            # The Keras padding mask covers padded *inputs* only; the label
            # after `<end>` is padding at a real input position, which only
            # the masked loss (ignore_class=0) leaves out.
            loss=tfm.losses.MaskedSparseCategoricalCrossentropy(
                label_smoothing=args.label_smoothing
            ),
            metrics=[tfm.metrics.MaskedAccuracy()],
        )
    run = training.Run(args, distribution)
    tokenizer.save(run.path(data.TOKENIZER_FILE))
    train_fill = fill(train_x)
    print(
        f"{len(train)} training and {len(test)} test pairs, "
        f"{tokenizer.get_vocab_size()} {args.tokenizer} tokens, e.g. "
        f"{test[0][0]!r} -> {test[0][1]!r}; "
        f"{'packed' if args.packing else 'padded'} into "
        f"{len(train_y)} training rows, {train_fill:.1%} of their slots "
        "filled"
    )
    history = run.fit(
        model,
        train_x,
        train_y,
        validation_data=validation,
        tokens=tokens,
        sequences=len(train) if args.packing else None,
    )
    tokens_per_second = run.throughput()
    print(f"training: {tokens_per_second} real tokens/s")
    if args.packing:
        translator.set_weights(model.get_weights())

    generator = tfm.generation.Generator(
        translator, jit_compile=distribution.jit_compile
    )
    predicted = decoding.generate(
        generator,
        test_x["encoder_token_ids"],
        target_length,
        start_id=data.START,
        end_id=data.END,
        seed=args.seed,
        **decoding.generation_options(args),
    )
    hypotheses = [data.decode(tokenizer, ids) for ids in predicted]
    write_predictions(run.path(PREDICTIONS), test, hypotheses)
    for (source, target), guess in zip(test[:5], hypotheses, strict=False):
        print(f"{source!r} -> {guess!r} (want {target!r})")
    metrics = {
        "test_exact_match": decoding.exact_match(predicted, test_y),
        **decoding.translation_scores(hypotheses, [t for _, t in test]),
        "sampler": args.sampler,
        "tokenizer": args.tokenizer,
        "val_masked_accuracy": history["val_masked_accuracy"][-1],
        "first_loss": history["loss"][0],
        "loss": history["loss"][-1],
        "val_loss": history["val_loss"][-1],
        "epochs": len(history["loss"]),
        "packing": args.packing,
        "train_fill": round(train_fill, 4),
        "train_tokens_per_second": tokens_per_second,
    }
    if args.export:
        metrics["export"] = decoding.export(
            translator,
            tokenizer,
            args,
            target_length,
            start_id=data.START,
            end_id=data.END,
        )
    run.plot("learning_curves", tfm.plotting.plot_history, history)
    if args.position != "rotary":
        run.plot(
            "position_encoding",
            tfm.plotting.plot_position_encoding,
            translator,
            title=f"{args.position} position table (encoder)",
        )
    # The test pair with the longest source: the most reordering to see.
    index = int(np.argmax([len(source) for source, _ in test]))
    example = {name: ids[index : index + 1] for name, ids in test_x.items()}
    run.plot(
        "attention",
        tfm.plotting.plot_attention,
        translator,
        example,
        vocabulary=data.token_names(tokenizer),
        title=f"cross-attention of the last decoder layer ({args.position})",
    )
    return run.finish(translator, metrics)


if __name__ == "__main__":
    main()
