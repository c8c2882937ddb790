"""Data for the example scripts: reading a user's file, splitting it, and
tokenizers (Hugging Face `tokenizers`) trained on the training split.

Every tokenizer has the same four special tokens, with the ids the scripts
and `keras_tfm.generation.Generator` use: 0 pads (and is what the Keras
padding mask and the masked loss skip), 1 starts and 2 ends a sequence, 3
stands for a token the tokenizer does not know.
"""

import os

import numpy as np
from _flags import positive_int

SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, START, END, UNK = range(len(SPECIAL_TOKENS))
TOKENIZERS = ("char", "word", "subword")
TOKENIZER_FILE = "tokenizer.json"  # saved with each run, reused on resume
# A byte-level BPE needs every byte as a token, and the specials.
MIN_SUBWORD_VOCABULARY = 256 + len(SPECIAL_TOKENS)


def read_text(parser, flag, path):
    """The text of a user's file, or a one-line error naming `flag`."""
    if not os.path.exists(path):
        parser.error(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        parser.error(f"{flag} {path}: is a directory, not a file")
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as error:
        parser.error(f"{flag} {path}: cannot read it ({error.strerror})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        parser.error(
            f"{flag} {path}, line {line}: not UTF-8 text ({error.reason} "
            f"at byte {column} of the line)"
        )
    if not text.strip():
        parser.error(f"{flag} {path}: the file is empty")
    return text


def read_tsv(parser, flag, path, columns):
    """Rows `(first, second)` of a tab-separated file.

    The first line fixes the number of columns, 2 or more; the columns
    after the second (such as the attribution of Anki/Tatoeba pairs) are
    dropped. Blank lines are skipped. A line without a tab, with another
    number of columns or with an empty field is an error that names it.
    """
    rows = []
    expected = None
    text = read_text(parser, flag, path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{flag} {path}, line {number}"
        if len(fields) < 2:
            parser.error(
                f"{where}: no tab; expected {columns[0]}<TAB>{columns[1]}"
            )
        if expected is None:
            expected = (len(fields), number)
        elif len(fields) != expected[0]:
            parser.error(
                f"{where}: {len(fields)} tab-separated columns, but line "
                f"{expected[1]} has {expected[0]}"
            )
        first, second = fields[0].strip(), fields[1].strip()
        if not first or not second:
            parser.error(
                f"{where}: empty {columns[0] if not first else columns[1]}"
            )
        rows.append((first, second))
    return rows


def split(items, test_fraction, rng):
    """Shuffle, then `(train, test)` with at least one of each."""
    items = list(items)
    order = rng.permutation(len(items))
    test_size = min(len(items) - 1, max(1, round(len(items) * test_fraction)))
    test = [items[i] for i in order[:test_size]]
    train = [items[i] for i in order[test_size:]]
    return train, test


def pad(sequences, length):
    """Right-pad id lists with 0 into an int32 array `(count, length)`."""
    array = np.zeros((len(sequences), length), "int32")
    for row, ids in enumerate(sequences):
        array[row, : len(ids)] = ids[:length]
    return array


def pieces(sequences, length):
    """Id lists cut into consecutive pieces of at most `length` tokens.

    A piece of one token is dropped: it has no next token to predict.
    """
    cut = []
    for ids in sequences:
        for start in range(0, len(ids), length):
            piece = list(ids[start : start + length])
            if len(piece) > 1:
                cut.append(piece)
    return cut


def one_segment_per_row(token_ids, prefix=""):
    """Right-padded rows in the input format of a `packed=True` model:
    `token_ids`, `segment_ids` (1 at each token, 0 at padding) and
    `positions` (0, 1, ... from each row's start), named with `prefix`.

    The packed model computes such rows exactly as the unpacked one
    computes the padded rows, so its loss on them is the same.
    """
    token_ids = np.asarray(token_ids, "int32")
    segment_ids = (token_ids != PAD).astype("int32")
    positions = (np.cumsum(segment_ids, axis=1) - 1) * segment_ids
    return {
        f"{prefix}token_ids": token_ids,
        f"{prefix}segment_ids": segment_ids,
        f"{prefix}positions": positions.astype("int32"),
    }


def add_tokenizer_flags(parser, group, *, default_help, max_vocabulary):
    """`--tokenizer` and `--max-vocabulary`; `default_help` says what
    `--tokenizer` is when not given (see `resolve_tokenizer`)."""
    group.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default=None,
        help="split texts into characters, whitespace-separated words or "
        "byte-level BPE subwords (lossless: any text decodes back "
        f"exactly), trained on the training split (default: {default_help})",
    )
    group.add_argument(
        "--max-vocabulary",
        type=positive_int,
        default=max_vocabulary,
        help="most tokens, the 4 special ones included: rarer characters "
        "and words become <unk>, subwords stop merging there; at least "
        f"{MIN_SUBWORD_VOCABULARY} for subword (default: %(default)s)",
    )


def resolve_tokenizer(parser, args, default):
    """Set `args.tokenizer` to `default` when the flag is not given."""
    if args.tokenizer is None:
        args.tokenizer = default
    if (
        args.tokenizer == "subword"
        and args.max_vocabulary < MIN_SUBWORD_VOCABULARY
    ):
        parser.error(
            f"--max-vocabulary must be >= {MIN_SUBWORD_VOCABULARY} with "
            f"--tokenizer subword (the 256 bytes and 4 special tokens), got "
            f"{args.max_vocabulary}"
        )


def train_tokenizer(texts, kind, max_vocabulary):
    """A `tokenizers.Tokenizer` of `kind` ('char', 'word' or 'subword')
    trained on `texts`, with SPECIAL_TOKENS as ids 0 to 3."""
    from tokenizers import Regex, Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pre

    if kind == "subword":
        # Byte-level BPE (GPT-2's): every text is bytes, every byte a
        # token, so nothing is <unk> and decoding restores spaces, umlauts
        # and any other character exactly. No normalizer: what the model
        # reads is the text as written.
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=max_vocabulary,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        if kind == "char":
            tokenizer.pre_tokenizer = pre.Split(Regex(r"[\s\S]"), "isolated")
            tokenizer.decoder = decoders.Fuse()  # no spaces between tokens
        else:  # decoding puts one space between words
            tokenizer.pre_tokenizer = pre.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(
            vocab_size=max_vocabulary,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(parser, path):
    """The tokenizer a run saved in `path`, or a one-line error."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as error:  # a missing file or a bad one alike
        reason = " ".join(str(error).split())
        parser.error(f"cannot resume: {path}: not a saved tokenizer ({reason})")
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != [PAD, START, END, UNK]:
        parser.error(f"cannot resume: {path}: not a tokenizer of this script")
    return tokenizer


def tokenizer_for(parser, texts, kind, max_vocabulary, saved=None):
    """The tokenizer of a run: trained on `texts`, or, when the run resumes
    an unfinished one, the one it saved (`saved`, the path of its file)."""
    if saved is not None:
        return load_tokenizer(parser, saved)
    return train_tokenizer(texts, kind, max_vocabulary)


def encode(tokenizer, texts):
    """Token id lists of `texts`, without special tokens."""
    return [e.ids for e in tokenizer.encode_batch(list(texts))]


def decode(tokenizer, ids):
    """Text of `ids` up to the first `<end>`, special tokens left out."""
    ids = [int(i) for i in ids]
    if END in ids:
        ids = ids[: ids.index(END)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def token_names(tokenizer):
    """Readable text of each id, for plots: a subword as its characters
    (`" aus"`, not byte-level `"Ġaus"`), the special tokens by name."""
    size = tokenizer.get_vocab_size()
    words = tokenizer.decode_batch([[i] for i in range(size)])
    return list(SPECIAL_TOKENS) + words[len(SPECIAL_TOKENS) :]
