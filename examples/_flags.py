"""Command-line flags the example scripts share: checked number types and
the model-size flags.

Nothing here imports Keras, so `--help` and a bad flag answer at once, in
one line.
"""

import argparse
import math

POSITIONS = ("sinusoidal", "learned", "rotary")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(doc):
    """A parser whose description and epilog are the script's docstring."""
    summary, _, details = doc.strip().partition("\n")
    return ArgumentParser(
        description=summary,
        epilog=details.strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


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


def add_model_flags(
    parser, *, num_layers, embedding_dim, num_heads, intermediate_dim, dropout
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


def check_model_args(parser, args):
    """Checks of the model flags that need several of them."""
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


def model_kwargs(args):
    """Keyword arguments of a `keras_tfm.models` builder from the flags."""
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


def build_model(parser, builder, *args, **kwargs):
    """Call a `keras_tfm.models` builder; a size it refuses is a flag error."""
    try:
        return builder(*args, **kwargs)
    except ValueError as error:
        parser.error(str(error))
