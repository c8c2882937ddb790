"""Train an encoder-decoder Transformer to translate free-text dates to ISO.

    python examples/train_seq2seq.py
    python examples/train_seq2seq.py --position rotary --output-dir runs/rot
    python examples/train_seq2seq.py --data spa.txt --tokenizer word
    python examples/train_seq2seq.py --sampler beam --num-beams 4

The default task is generated in the script, so it runs anywhere with no
download: dates written the ways people write them ("3rd of March 2021",
"Wednesday, March 3, 2021", "mar 3 2021", "03.03.2021", ...) become ISO
dates ("2021-03-03"). Source and target differ in length and order (the
year moves to the front, month names become numbers), and the test split
holds dates never seen in training, in any format.

`--data PATH` trains on your own tab-separated `source<TAB>target` pairs
instead (the format of the Anki/Tatoeba files that the keras.io
English-Spanish example uses; extra columns are ignored), with a character
or whitespace tokenizer.

The model trains with the paper's recipe: the TransformerSchedule warm-up,
Adam(beta_2=0.98), label smoothing (MaskedSparseCategoricalCrossentropy)
and masked token accuracy. Afterwards `keras_tfm.generation.Generator`
decodes the test split (greedily unless `--sampler` says otherwise) and
the exact-match accuracy is reported. `--distribute` trains on several
devices (see the README's "Distribution"). OUTPUT_DIR receives checkpoints,
history.csv, metrics.json and plots (learning curves, the position table,
a cross-attention map); the last line printed is the JSON of the final
metrics. Interrupt it and run the same command again to resume.
"""

import datetime

import _common as common
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
    parser = common.make_parser(__doc__)
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        metavar="PATH",
        help="a UTF-8 file of source<TAB>target lines to train on instead "
        "of the generated dates",
    )
    group.add_argument(
        "--tokenizer",
        choices=("char", "word"),
        default="char",
        help="split texts into characters or whitespace-separated words "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--max-length",
        type=common.positive_int,
        default=64,
        help="longest sequence in tokens; longer --data pairs are dropped "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--max-vocabulary",
        type=common.positive_int,
        default=20000,
        help="most tokens kept in the vocabulary; rarer ones become <unk> "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--train-size",
        type=common.positive_int,
        default=12000,
        help="generated training pairs (default: %(default)s)",
    )
    group.add_argument(
        "--test-size",
        type=common.positive_int,
        default=1000,
        help="generated test pairs (default: %(default)s)",
    )
    group.add_argument(
        "--test-fraction",
        type=common.rate,
        default=0.1,
        help="share of --data pairs held out for testing "
        "(default: %(default)s)",
    )
    common.add_model_flags(
        parser,
        num_layers=2,
        embedding_dim=64,
        num_heads=4,
        intermediate_dim=128,
        dropout=0.1,
    )
    common.add_training_flags(
        parser,
        epochs=10,
        batch_size=64,
        warmup_steps=400,
        lr_scale=0.5,
        label_smoothing=0.1,
        output_dir="runs/seq2seq",
    )
    common.add_generation_flags(parser, sampler="greedy", temperature=1.0)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.test_fraction == 0:
        parser.error("--test-fraction must be > 0 with --data")
    common.check_args(parser, args)
    return parser, args


def load_pairs(parser, args, rng):
    """Train and test pairs of texts, and the vocabulary."""
    if args.data is None:
        train, test = date_pairs(args.train_size, args.test_size, rng)
    else:
        pairs = common.read_tsv(
            parser, "--data", args.data, ("source", "target")
        )
        pairs = [
            (s, t)
            for s, t in pairs
            if len(common.Vocabulary.split_text(s, args.tokenizer))
            <= args.max_length
            and len(common.Vocabulary.split_text(t, args.tokenizer)) + 1
            <= args.max_length
        ]
        if len(pairs) < 2:
            parser.error(
                f"--data {args.data}: fewer than 2 pairs of at most "
                f"--max-length {args.max_length} tokens"
            )
        train, test = common.split(pairs, args.test_fraction, rng)
    vocabulary = common.Vocabulary.build(
        [text for pair in train for text in pair],
        level=args.tokenizer,
        max_size=args.max_vocabulary,
    )
    return train, test, vocabulary


def encode(pairs, vocabulary, source_length, target_length):
    """Encoder ids, decoder inputs (`<start>` + target) and labels."""
    sources = common.pad(
        [vocabulary.encode(s) for s, _ in pairs], source_length
    )
    targets = common.pad(
        [vocabulary.encode(t, end=True) for _, t in pairs], target_length
    )
    decoder_inputs = np.concatenate(
        [np.full((len(pairs), 1), common.START, "int32"), targets[:, :-1]],
        axis=1,
    )
    inputs = {"encoder_token_ids": sources, "decoder_token_ids": decoder_inputs}
    return inputs, targets


def main(argv=None):
    parser, args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train, test, vocabulary = load_pairs(parser, args, rng)
    encoded = [vocabulary.encode(s) for s, _ in train + test]
    source_length = max(len(ids) for ids in encoded)
    target_length = 1 + max(len(vocabulary.encode(t)) for _, t in train + test)
    train_x, train_y = encode(train, vocabulary, source_length, target_length)
    test_x, test_y = encode(test, vocabulary, source_length, target_length)

    # Imported once the inputs are known to be good (see _common).
    import keras

    import keras_tfm as tfm

    distribution = common.Distribution(parser, args)  # before seeding
    keras.utils.set_random_seed(args.seed)
    with distribution.scope():
        model = common.build(
            parser,
            tfm.models.seq2seq_transformer,
            len(vocabulary),
            max(source_length, target_length),
            **common.model_kwargs(args),
        )
        model.compile(
            optimizer=common.optimizer(args),
            loss=tfm.losses.MaskedSparseCategoricalCrossentropy(
                label_smoothing=args.label_smoothing
            ),
            metrics=[tfm.metrics.MaskedAccuracy()],
        )
    run = common.Run(args, distribution)
    vocabulary.save(run.path("vocabulary.json"))
    print(
        f"{len(train)} training and {len(test)} test pairs, "
        f"{len(vocabulary)} tokens, e.g. {test[0][0]!r} -> {test[0][1]!r}"
    )
    history = run.fit(model, train_x, train_y, validation_data=(test_x, test_y))

    generator = tfm.generation.Generator(
        model, jit_compile=distribution.jit_compile
    )
    predicted = common.generate(
        generator,
        test_x["encoder_token_ids"],
        target_length,
        start_id=common.START,
        end_id=common.END,
        seed=args.seed,
        **common.generation_options(args),
    )
    for (source, target), guess in zip(test[:5], predicted, strict=False):
        print(f"{source!r} -> {vocabulary.decode(guess)!r} (want {target!r})")
    metrics = {
        "test_exact_match": common.exact_match(predicted, test_y),
        "sampler": args.sampler,
        "val_masked_accuracy": history["val_masked_accuracy"][-1],
        "first_loss": history["loss"][0],
        "loss": history["loss"][-1],
        "val_loss": history["val_loss"][-1],
        "epochs": len(history["loss"]),
    }
    run.plot("learning_curves", tfm.plotting.plot_history, history)
    if args.position != "rotary":
        run.plot(
            "position_encoding",
            tfm.plotting.plot_position_encoding,
            model,
            title=f"{args.position} position table (encoder)",
        )
    # The test pair with the longest source: the most reordering to see.
    index = int(np.argmax([len(source) for source, _ in test]))
    example = {name: ids[index : index + 1] for name, ids in test_x.items()}
    run.plot(
        "attention",
        tfm.plotting.plot_attention,
        model,
        example,
        vocabulary=vocabulary.tokens,
        title=f"cross-attention of the last decoder layer ({args.position})",
    )
    return run.finish(model, metrics)


if __name__ == "__main__":
    main()
