"""Train a Transformer encoder to classify variable-length text.

    python examples/train_classifier.py
    python examples/train_classifier.py --position learned
    python examples/train_classifier.py --data reviews.tsv
    python examples/train_classifier.py --dataset imdb --max-length 256

The default data is generated in the script: sentences of filler words in
which three names, "alice", "bob" and "carol", appear far apart, and the
class is the order they come in (one of 6). Every sentence holds the same
names, so a bag of words scores 1 in 6: the model must use positions and
attend across the sentence. `--data PATH` reads `label<TAB>text` lines
instead (any label strings; whitespace-separated, lower-cased words), and
`--dataset imdb` uses the IMDB movie reviews of `keras.datasets.imdb`
(downloaded on first use).

The model is `keras_tfm.models.encoder_classifier` (masked mean pooling,
so padding never changes a prediction), trained with the
TransformerSchedule and label smoothing; `--distribute` trains on several
devices (see the README's "Distribution"). OUTPUT_DIR receives checkpoints,
history.csv, metrics.json and plots; the last line printed is the JSON of
the final metrics. Interrupt it and run the same command again to resume.
"""

import itertools

import _data as data
import _flags as flags
import _training as training
import numpy as np

FILLER = (
    "the a of and to in is was it for on that with as at by this from "
    "they we said have had one all were there been would their more when "
    "will about into time some could them other than then now only its "
    "over also after first two many these may way well day even new"
).split()
NAMES = ("alice", "bob", "carol")
ORDERS = list(itertools.permutations(range(len(NAMES))))


def order_sentences(count, min_length, max_length, rng):
    """`(labels, texts)`: the label is the order in which "alice", "bob"
    and "carol" appear (one of 6), at least a quarter of the sentence
    apart from each other."""
    labels, texts = [], []
    for _ in range(count):
        length = int(rng.integers(min_length, max_length + 1))
        words = list(rng.choice(FILLER, size=length))
        gap = length // 4
        # Three positions, each at least `gap` after the one before.
        slack = length - 1 - 2 * gap
        first, second, third = np.sort(rng.integers(0, slack + 1, size=3))
        positions = (first, second + gap, third + 2 * gap)
        label = int(rng.integers(len(ORDERS)))
        for position, name in zip(positions, ORDERS[label], strict=True):
            words[position] = NAMES[name]
        labels.append(label)
        texts.append(" ".join(words))
    return labels, texts


def build_parser():
    parser = flags.make_parser(__doc__)
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        metavar="PATH",
        help="a UTF-8 file of label<TAB>text lines to train on instead of "
        "the generated sentences",
    )
    source.add_argument(
        "--dataset",
        choices=("imdb",),
        help="a Keras dataset to download and train on",
    )
    group.add_argument(
        "--max-length",
        type=flags.positive_int,
        default=48,
        help="longest text in tokens: generated sentences are 16 to this "
        "long, --data and --dataset texts are cut to it "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--max-vocabulary",
        type=flags.positive_int,
        default=20000,
        help="most words kept; rarer ones become <unk> (default: %(default)s)",
    )
    group.add_argument(
        "--train-size",
        type=flags.positive_int,
        default=8000,
        help="generated training sentences (default: %(default)s)",
    )
    group.add_argument(
        "--test-size",
        type=flags.positive_int,
        default=1000,
        help="generated test sentences (default: %(default)s)",
    )
    group.add_argument(
        "--test-fraction",
        type=flags.rate,
        default=0.1,
        help="share of --data lines held out for testing "
        "(default: %(default)s)",
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
        epochs=6,
        batch_size=64,
        warmup_steps=400,
        lr_scale=0.5,
        label_smoothing=0.0,
        output_dir="runs/classifier",
    )
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is None and args.dataset is None and args.max_length < 16:
        parser.error("--max-length must be >= 16 for the generated data")
    if args.data is not None and args.test_fraction == 0:
        parser.error("--test-fraction must be > 0 with --data")
    flags.check_model_args(parser, args)
    training.check_run_args(parser, args)
    return parser, args


def load_imdb(parser, args):
    """IMDB reviews as padded ids (Keras's own word index: 1 starts a
    review, 2 is out-of-vocabulary, 0 pads)."""
    import keras

    imdb = keras.datasets.imdb
    try:
        (train_x, train_y), (test_x, test_y) = imdb.load_data(
            num_words=args.max_vocabulary
        )
        word_index = imdb.get_word_index()
    except Exception as error:  # no network, a broken download, ...
        reason = " ".join(str(error).split())  # one line
        parser.error(f"--dataset imdb: could not load it ({reason})")
    vocabulary = {0: "<pad>", 1: "<start>", 2: "<unk>"}
    for word, index in word_index.items():
        if index + 3 < args.max_vocabulary:
            vocabulary[index + 3] = word
    tokens = [vocabulary.get(i, "<unk>") for i in range(args.max_vocabulary)]
    return (
        (data.pad(list(train_x), args.max_length), np.asarray(train_y)),
        (data.pad(list(test_x), args.max_length), np.asarray(test_y)),
        tokens,
        ["negative", "positive"],
        None,
    )


def load_data(parser, args, rng):
    """`(train, test, tokens, class_names, tokenizer)`, `train = (ids,
    labels)`, `tokens[id]` the text of a token; the tokenizer is None for
    IMDB, whose texts come as ids."""
    if args.dataset == "imdb":
        return load_imdb(parser, args)
    if args.data is None:
        train = order_sentences(args.train_size, 16, args.max_length, rng)
        test = order_sentences(args.test_size, 16, args.max_length, rng)
        class_names = [" < ".join(NAMES[i] for i in order) for order in ORDERS]
    else:
        rows = data.read_tsv(parser, "--data", args.data, ("label", "text"))
        class_names = sorted({label for label, _ in rows})
        if len(class_names) < 2:
            parser.error(
                f"--data {args.data}: needs at least 2 different labels, "
                f"found only {class_names[0]!r}"
            )
        index = {name: i for i, name in enumerate(class_names)}
        rows = [(index[label], text.lower()) for label, text in rows]
        train, test = (
            tuple(zip(*part, strict=True))
            for part in data.split(rows, args.test_fraction, rng)
        )
    tokenizer = data.tokenizer_for(
        parser,
        train[1],
        "word",
        args.max_vocabulary,
        saved=training.resumed_file(args, data.TOKENIZER_FILE),
    )

    def encode(labels, texts):
        ids = data.pad(data.encode(tokenizer, texts), args.max_length)
        return ids, np.asarray(labels, "int32")

    return (
        encode(*train),
        encode(*test),
        data.token_names(tokenizer),
        class_names,
        tokenizer,
    )


def main(argv=None):
    parser, args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train, test, tokens, class_names, tokenizer = load_data(parser, args, rng)

    # Imported once the inputs are known to be good (see _training).
    import keras

    import keras_tfm as tfm

    distribution = training.Distribution(parser, args)  # before seeding
    keras.utils.set_random_seed(args.seed)
    with distribution.scope():
        model = flags.build_model(
            parser,
            tfm.models.encoder_classifier,
            len(tokens),
            args.max_length,
            len(class_names),
            **flags.model_kwargs(args),
        )
        model.compile(
            optimizer=training.optimizer(args),
            jit_compile=training.jit_compile(args),
            loss=tfm.losses.MaskedSparseCategoricalCrossentropy(
                label_smoothing=args.label_smoothing, ignore_class=None
            ),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    run = training.Run(args, distribution)
    if tokenizer is not None:
        tokenizer.save(run.path(data.TOKENIZER_FILE))
    print(
        f"{len(train[0])} training and {len(test[0])} test texts, "
        f"{len(tokens)} tokens, classes {class_names}"
    )
    history = run.fit(model, *train, validation_data=test)

    # The test split is the validation data: its last scores are final.
    metrics = {
        "test_accuracy": history["val_accuracy"][-1],
        "test_loss": history["val_loss"][-1],
        "first_loss": history["loss"][0],
        "loss": history["loss"][-1],
        "epochs": len(history["loss"]),
    }
    run.plot("learning_curves", tfm.plotting.plot_history, history)
    if args.position != "rotary":
        run.plot(
            "position_encoding", tfm.plotting.plot_position_encoding, model
        )
    run.plot(
        "attention",
        tfm.plotting.plot_attention,
        model,
        test[0][:1],
        vocabulary=tokens,
        title=f"self-attention of the last encoder layer ({args.position})",
    )
    return run.finish(model, metrics)


if __name__ == "__main__":
    main()
