"""Samplers: how the next token is chosen from the logits.

A sampler is a small object with validated arguments and `get_config`:
`GreedySampler`, `BeamSampler(num_beams, length_penalty, return_all)`,
`TopKSampler(k, temperature, seed)` and `TopPSampler(p, temperature, seed,
k=None)`. `keras_tfm.generation.Generator` takes one (or the shorthands
`"greedy"`, `"beam"`, `"top_k"`, `"top_p"`). Sampling draws Gumbel noise
from a counter-based integer hash of `(seed, position, row, token)`, so a
seeded search is reproducible inside compiled loops and gives the same
tokens on every backend.

The model's padding id (`pad_id`, see `keras_tfm.models.CausalLM`) is
never chosen; with `pad_id=None` every id can be, `0` included.
"""

import copy
import math
from typing import NamedTuple

import numpy as np
from keras import ops

from keras_tfm._validation import (
    check_bool,
    check_positive_int,
    check_positive_number,
)

# Logit and score of what must never be chosen; finite, so that sums and
# differences of masked values stay finite (no `inf - inf`).
NEG = -1e9


def _int32(value):
    return ops.convert_to_tensor(np.asarray(value, dtype="int32"))


def mask_padding(logits, pad_id=0):
    """Float32 logits with the padding id never chosen (none when
    `pad_id` is None).

    Example:

    >>> logits = mask_padding(np.array([[5.0, 1.0, 2.0]]), pad_id=0)
    >>> ops.convert_to_numpy(ops.argmax(logits, axis=-1)).tolist()
    [2]
    """
    logits = ops.cast(logits, "float32")
    if pad_id is None:
        return logits
    vocabulary = ops.shape(logits)[-1]
    is_padding = ops.arange(vocabulary, dtype="int32") == pad_id
    return ops.where(is_padding, NEG, logits)


def _logical_right_shift(x, bits):
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _hash32(x):
    """The "lowbias32" integer hash on int32 with wrap-around products."""
    x = ops.bitwise_xor(x, _logical_right_shift(x, 16))
    x = ops.multiply(x, _int32(0x7FEB352D))
    x = ops.bitwise_xor(x, _logical_right_shift(x, 15))
    x = ops.multiply(x, _int32(0x846CA68B - (1 << 32)))
    return ops.bitwise_xor(x, _logical_right_shift(x, 16))


def gumbel_noise(seed, index, shape):
    """Gumbel(0, 1) noise `(batch, vocabulary)` from a counter-based hash.

    The noise is a pure function of `(seed, index, row, token)` computed
    with 32-bit integer ops, so a seeded search is reproducible inside
    compiled loops without threading random state, and gives the same
    samples on every backend.

    Args:
        seed: int32 scalar (tensor or int).
        index: int32 scalar: the position being sampled.
        shape: `(batch, vocabulary)`.

    Returns:
        float32 tensor of `shape`.

    Example:

    >>> from keras import ops
    >>> noise = ops.convert_to_numpy(gumbel_noise(7, 3, (2, 5)))
    >>> again = ops.convert_to_numpy(gumbel_noise(7, 3, (2, 5)))
    >>> noise.shape, bool((noise == again).all())
    ((2, 5), True)
    """
    batch, vocabulary = shape
    rows = ops.arange(batch, dtype="int32")[:, None] * vocabulary
    counter = rows + ops.arange(vocabulary, dtype="int32")[None, :]
    key = _hash32(
        ops.bitwise_xor(
            _hash32(ops.cast(seed, "int32")),
            ops.cast(index, "int32") * _int32(0x27D4EB2F),
        )
    )
    bits = _hash32(ops.bitwise_xor(counter, key))
    # 23 random bits -> uniform in (0, 1), exact in float32: never 0 or 1.
    uniform = (
        ops.cast(_logical_right_shift(bits, 9), "float32") + 0.5
    ) / float(1 << 23)
    return -ops.log(-ops.log(uniform))


def filter_top_k(logits, top_k):
    """Keep the `top_k` largest logits of each row, the rest `NEG`.

    Example:

    >>> logits = ops.convert_to_tensor([[1.0, 3.0, 2.0]])
    >>> logits = filter_top_k(logits, 2)
    >>> (ops.convert_to_numpy(logits) > NEG).tolist()
    [[False, True, True]]
    """
    top_k = min(top_k, logits.shape[-1])
    kth = ops.top_k(logits, top_k)[0][:, -1:]
    return ops.where(logits >= kth, logits, NEG)


def filter_top_p(logits, top_p):
    """Keep the smallest set of most likely tokens whose mass is >= top_p.

    Example:

    >>> logits = ops.log(ops.convert_to_tensor([[0.2, 0.5, 0.3]]))
    >>> kept = filter_top_p(logits, 0.7)  # 0.5 + 0.3 reaches 0.7
    >>> (ops.convert_to_numpy(kept) > NEG).tolist()
    [[False, True, True]]
    """
    probabilities = ops.softmax(logits, axis=-1)
    vocabulary = logits.shape[-1]
    descending = ops.top_k(probabilities, vocabulary)[0]
    mass_before = ops.cumsum(descending, axis=-1) - descending
    kept = mass_before < top_p  # always keeps the most likely token
    threshold = ops.min(ops.where(kept, descending, 2.0), axis=-1)
    return ops.where(probabilities >= threshold[:, None], logits, NEG)


def tempered(logits, temperature):
    """`(logits - row max) / temperature`: the best token is exactly 0, so
    tiny or huge temperatures cannot overflow the softmax to NaN.

    Example:

    >>> out = tempered(ops.convert_to_tensor([[1.0, 3.0]]), 2.0)
    >>> ops.convert_to_numpy(out).tolist()
    [[-1.0, 0.0]]
    """
    logits = logits - ops.max(logits, axis=-1, keepdims=True)
    return logits / ops.cast(temperature, "float32")


def _python_scalar(value):
    """A NumPy scalar as the Python number it holds; anything else as is."""
    return value.item() if isinstance(value, np.generic) else value


def _check_probability(name, value):
    """`value` as a float in (0, 1]."""
    value = _python_scalar(value)
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and 0 < value <= 1
    ):
        raise ValueError(
            f"`{name}` must be a number in (0, 1]. Received: {name}={value!r}"
        )
    return float(value)


def _check_temperature(temperature):
    temperature = _python_scalar(temperature)
    return float(check_positive_number("temperature", temperature))


def _check_seed(seed):
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
    ):
        raise ValueError(
            f"`seed` must be an integer or None. Received: seed={seed!r}"
        )
    return None if seed is None else int(seed)


class Sampler:
    """Base of the samplers.

    `choose` picks tokens, reading the sampler's own attributes
    (`self.temperature`, `self.k`, ...); `get_config` lists the constructor
    arguments. The attributes named in `SETTINGS` are numbers a compiled
    search takes as tensors (`settings()` gives them, `with_settings`
    returns a copy holding the tensors), so changing them does not compile
    again; `static()` is what the compiled search depends on.

    Example:

    >>> logits = np.array([[9.0, 2.0, 5.0]], "float32")  # id 0 is padding
    >>> ops.convert_to_numpy(Sampler().choose(logits, 0, 0)).tolist()
    [2]
    """

    SETTINGS = ()

    def static(self):
        return (type(self).__name__,)

    def settings(self):
        """The float32 values of the `SETTINGS` attributes, by name."""
        return {name: np.float32(getattr(self, name)) for name in self.SETTINGS}

    def with_settings(self, settings):
        """A copy whose `SETTINGS` attributes are `settings`' values
        (tensors inside a compiled search)."""
        sampler = copy.copy(self)
        for name in self.SETTINGS:
            setattr(sampler, name, settings[name])
        return sampler

    def choose(self, logits, index, seed, pad_id=0):
        """Next tokens `(batch,)` int32 from logits `(batch, vocabulary)`,
        never `pad_id` (any id when it is None)."""
        return ops.cast(
            ops.argmax(mask_padding(logits, pad_id), axis=-1), "int32"
        )

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items()
        )
        return f"{type(self).__name__}({arguments})"


class GreedySampler(Sampler):
    """Greedy decoding: the most likely token (padding excluded).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> logits = np.array([[9.0, 1.0, 3.0, 2.0]], "float32")
    >>> ops.convert_to_numpy(GreedySampler().choose(logits, 0, 0)).tolist()
    [2]
    >>> no_padding = GreedySampler().choose(logits, 0, 0, pad_id=None)
    >>> ops.convert_to_numpy(no_padding).tolist()
    [0]
    """


class BeamSampler(Sampler):
    """Beam search with `num_beams` hypotheses per row.

    Each row keeps `num_beams` live hypotheses; finished ones are scored
    by `log_prob / generated_length ** length_penalty` (Hugging Face's
    `early_stopping=True`). With `return_all=True` the search returns every
    beam, best first, with its score.

    Args:
        num_beams: beams per row; `1` is greedy search.
        length_penalty: finite exponent of the generated length that divides
            a finished hypothesis's log-probability (`0`: total, `1`: mean
            per token).
        return_all: return all beams and their scores instead of the best.

    Example:

    >>> BeamSampler(num_beams=2).get_config()
    {'num_beams': 2, 'length_penalty': 1.0, 'return_all': False}
    """

    def __init__(self, num_beams=4, length_penalty=1.0, return_all=False):
        check_positive_int("num_beams", num_beams)
        if (
            isinstance(length_penalty, bool)
            or not isinstance(length_penalty, (int, float))
            or not math.isfinite(length_penalty)
        ):
            raise ValueError(
                "`length_penalty` must be a finite number. Received: "
                f"length_penalty={length_penalty!r}"
            )
        self.num_beams = num_beams
        self.length_penalty = float(length_penalty)
        self.return_all = check_bool("return_all", return_all)

    SETTINGS = ("length_penalty",)

    def static(self):
        return ("beam", self.num_beams, self.return_all)

    def get_config(self):
        return {
            "num_beams": self.num_beams,
            "length_penalty": self.length_penalty,
            "return_all": self.return_all,
        }


class _RandomSampler(Sampler):
    def __init__(self, temperature, seed):
        self.temperature = _check_temperature(temperature)
        self.seed = _check_seed(seed)

    def _filter(self, logits):
        return logits

    def choose(self, logits, index, seed, pad_id=0):
        logits = tempered(mask_padding(logits, pad_id), self.temperature)
        logits = self._filter(logits)
        noise = gumbel_noise(seed, index, tuple(logits.shape))
        return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")


class TopKSampler(_RandomSampler):
    """Sample from the `k` most likely tokens at `temperature`.

    Args:
        k: number of tokens to sample from.
        temperature: the logits are divided by it; positive.
        seed: integer seed: the same seed gives the same tokens on every
            backend. None draws one at each `generate`.

    Example:

    >>> TopKSampler(k=5, temperature=0.7, seed=1).get_config()
    {'k': 5, 'temperature': 0.7, 'seed': 1}
    """

    def __init__(self, k, temperature=1.0, seed=None):
        check_positive_int("k", k)
        super().__init__(temperature, seed)
        self.k = k

    SETTINGS = ("temperature",)

    def static(self):
        return ("top_k", self.k)

    def _filter(self, logits):
        return filter_top_k(logits, self.k)

    def get_config(self):
        return {"k": self.k, "temperature": self.temperature, "seed": self.seed}


class TopPSampler(_RandomSampler):
    """Nucleus sampling: the smallest set of most likely tokens whose
    probability reaches `p`, at `temperature` (and within the `k` most
    likely when `k` is given).

    Args:
        p: probability mass, in (0, 1].
        temperature: the logits are divided by it; positive.
        seed: integer seed, or None to draw one at each `generate`.
        k: optional top-k filter applied first.

    Example:

    >>> TopPSampler(p=0.9).get_config()
    {'p': 0.9, 'temperature': 1.0, 'seed': None, 'k': None}
    """

    def __init__(self, p, temperature=1.0, seed=None, k=None):
        p = _check_probability("p", p)
        check_positive_int("k", k, allow_none=True)
        super().__init__(temperature, seed)
        self.p = p
        self.k = k

    SETTINGS = ("temperature", "p")

    def static(self):
        return ("top_p", self.k)

    def _filter(self, logits):
        if self.k is not None:
            logits = filter_top_k(logits, self.k)
        return filter_top_p(logits, self.p)

    def get_config(self):
        return {
            "p": self.p,
            "temperature": self.temperature,
            "seed": self.seed,
            "k": self.k,
        }


SHORTHANDS = ("greedy", "beam", "top_k", "top_p")


class SamplerOptions(NamedTuple):
    """The options of the sampler shorthands, the one place they are
    defined (`Generator.generate`, `stream` and `export_generator` take
    them as keywords).

    Attributes:
        num_beams, length_penalty: options of `"beam"` (`BeamSampler`).
        top_k, top_p, temperature, seed: options of `"top_k"` and
            `"top_p"` (`TopKSampler`, `TopPSampler`).

    Example:

    >>> get("top_k", **SamplerOptions(top_k=5, seed=1)._asdict())
    TopKSampler(k=5, temperature=1.0, seed=1)
    """

    num_beams: int | None = None
    length_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    seed: int | None = None


# The options each shorthand uses; any other given option is an error.
USES = {
    "greedy": (),
    "beam": ("num_beams", "length_penalty"),
    "top_k": ("top_k", "top_p", "temperature", "seed"),
    "top_p": ("top_p", "top_k", "temperature", "seed"),
}


def get(sampler, **options):
    """A sampler object from an object or a shorthand with its options.

    `options` are `SamplerOptions` fields. An option the named sampler
    does not use is an error (`get("greedy", temperature=0.7)`, `seed`
    with a deterministic sampler), as is any option next to a sampler
    object, whose own arguments hold them.

    Example:

    >>> get("top_k", top_k=5, temperature=0.7, seed=1)
    TopKSampler(k=5, temperature=0.7, seed=1)
    >>> get("greedy", temperature=0.7)
    Traceback (most recent call last):
    ...
    ValueError: sampler='greedy' does not use temperature. Received: ...
    """
    given = SamplerOptions(**options)._asdict()
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(sampler, Sampler):
        if given:
            raise ValueError(
                "Options go into the sampler object itself. Received: "
                f"sampler={sampler!r} and {sorted(given)}"
            )
        return sampler
    if sampler not in SHORTHANDS:
        raise ValueError(
            "`sampler` must be a Sampler or one of "
            f"{', '.join(repr(s) for s in SHORTHANDS)}. Received: "
            f"sampler={sampler!r}"
        )
    unused = sorted(set(given) - set(USES[sampler]))
    if unused:
        raise ValueError(
            f"sampler={sampler!r} does not use {', '.join(unused)}. "
            f"Received: {', '.join(f'{k}={given[k]!r}' for k in unused)}"
        )
    # Checked under the names the caller used.
    seed = _check_seed(given.get("seed"))
    top_k = given.get("top_k")
    top_p = given.get("top_p")
    check_positive_int("top_k", top_k, allow_none=True)
    check_positive_int("num_beams", given.get("num_beams"), allow_none=True)
    if top_p is not None:
        _check_probability("top_p", top_p)
    if sampler == "greedy":
        return GreedySampler()
    if sampler == "beam":
        return BeamSampler(
            given.get("num_beams", 4), given.get("length_penalty", 1.0)
        )
    options = dict(temperature=given.get("temperature", 1.0), seed=seed)
    if sampler == "top_k":
        if top_k is None:
            raise ValueError(
                'sampler="top_k" needs `top_k`. Received: top_k=None'
            )
        if top_p is not None:
            return TopPSampler(top_p, k=top_k, **options)
        return TopKSampler(top_k, **options)
    if top_p is None:
        raise ValueError('sampler="top_p" needs `top_p`. Received: top_p=None')
    return TopPSampler(top_p, k=top_k, **options)
