"""Decoding after training: the flags of `keras_tfm.generation.Generator`,
batched generation, and the scores of decoded text (exact match, BLEU,
chrF)."""

import os

import numpy as np
from _data import END, TOKENIZER_FILE
from _flags import finite_float, positive_float, positive_int, probability

# The names of keras_tfm.generation.SAMPLERS, spelled out so that the
# flags parse without importing Keras (tests/test_examples.py checks).
SAMPLERS = ("greedy", "beam", "top_k", "top_p")
SAMPLING = ("top_k", "top_p")  # the samplers that draw at random


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
    for name in (
        "num_beams",
        "length_penalty",
        "top_k",
        "top_p",
        "temperature",
    ):
        if getattr(args, name) == parser.get_default(name):
            continue
        users = (
            ("beam",) if name in ("num_beams", "length_penalty") else SAMPLING
        )
        if args.sampler not in users:
            parser.error(
                f"--{name.replace('_', '-')} applies to --sampler "
                f"{' or '.join(users)} only, not {args.sampler}"
            )


EXPORTABLE = ("greedy", "beam")  # keras_tfm.export: no random samplers


def add_export_flag(parser):
    """`--export DIR`: the decoding loop as a TensorFlow SavedModel."""
    group = parser.add_argument_group("export")
    group.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="after training, write the whole decoding loop (--sampler "
        "greedy or beam) as a TensorFlow SavedModel to DIR, with "
        f"{TOKENIZER_FILE} beside it; needs KERAS_BACKEND=tensorflow",
    )


def check_export_args(parser, args):
    """Refuse an --export that cannot work, before any training: another
    Keras backend, a random sampler, a DIR that is a file."""
    if args.export is None:
        return
    if args.sampler not in EXPORTABLE:
        parser.error(
            f"--export writes --sampler greedy or beam only, not "
            f"{args.sampler} (a SavedModel would repeat one baked-in seed)"
        )
    if os.path.exists(args.export) and not os.path.isdir(args.export):
        parser.error(f"--export {args.export} is not a directory")
    import keras  # only now: the backend decides

    backend = keras.backend.backend()
    if backend != "tensorflow":
        parser.error(
            f"--export needs KERAS_BACKEND=tensorflow (a SavedModel is a "
            f"TensorFlow graph), not {backend}; or train here and export "
            "OUTPUT_DIR/model.keras from a TensorFlow process with "
            "keras_tfm.export.export_generator"
        )


def export(model, tokenizer, args, max_length, **options):
    """Write the SavedModel of `--export` and its tokenizer; its path."""
    from keras_tfm.export import export_generator

    export_generator(
        model,
        args.export,
        max_length,
        **generation_options(args),
        **options,
    )
    tokenizer.save(os.path.join(args.export, TOKENIZER_FILE))
    print(f"exported the {args.sampler} decoding loop to {args.export}")
    return args.export


# The options each sampler takes (`Generator.generate` refuses the others).
SAMPLER_OPTIONS = {
    "greedy": (),
    "beam": ("num_beams", "length_penalty"),
    "top_k": ("top_k", "top_p", "temperature"),
    "top_p": ("top_p", "top_k", "temperature"),
}


def generation_options(args):
    """`Generator.generate` keyword arguments from the decoding flags."""
    options = {
        name: getattr(args, name)
        for name in SAMPLER_OPTIONS[args.sampler]
        if getattr(args, name) is not None
    }
    return dict(sampler=args.sampler, **options)


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
        seed: seed of the first batch of a random sampler (`"top_k"`,
            `"top_p"`); batch `i` uses `seed + i`.
        batch_size: rows decoded at once.
        **options: the other `Generator.generate` arguments (`sampler`,
            `num_beams`, `start_id`, `end_id`, ...).

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
        if options.get("sampler") in ("top_k", "top_p"):
            # Only the random samplers take a seed (others refuse one).
            options = {**options, "seed": seed + number}
        ids = generator.generate(chunk, max_length, **options)
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


def translation_scores(hypotheses, references):
    """Corpus BLEU and chrF of decoded texts against one reference each,
    in percent, with sacrebleu's default settings and their signatures
    (which name the settings and the sacrebleu version)."""
    from sacrebleu.metrics import BLEU, CHRF

    scores = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        score = metric.corpus_score(list(hypotheses), [list(references)])
        scores[f"test_{name}"] = round(score.score, 2)
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores
