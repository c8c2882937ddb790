"""`Generator`: fast, exact generation for any model with a cached step.

A generation model owns its cached step (`keras_tfm.models.CausalLM`,
`keras_tfm.models.Seq2SeqLM`, or any model with the same methods):

- `init_cache(batch_size, max_length)` -> the empty cache;
- `call_with_cache(token_ids, cache, cache_index)` -> `(logits, cache)`
  (encoder-decoder models take a fourth argument, what `encode` returned);
- `encode(encoder_token_ids)`, for encoder-decoder models only;
- calling the model itself: `model(token_ids)`, or for encoder-decoder
  models `model({"encoder_token_ids": ..., "decoder_token_ids": ...})`.

`Generator` relies on that protocol only, never on layer names. When it
starts, it decodes a short probe with the cache and compares it with the
model's own full forward pass; a difference beyond float tolerance is a
`ValueError`, so a cached step that drifted from the model (a subclass
that changed the graph but not `call_with_cache`) cannot go unnoticed.

The whole search (encoder, prompt, loop) is one function over fixed-shape
state, compiled once per input shape and search configuration (`jax.jit`
on JAX, `tf.function` on TensorFlow, eager under `torch.inference_mode()`
on PyTorch, where the loop is plain Python) and reused. Token `0` is padding
and is never generated.
"""

import inspect

import keras
import numpy as np
from keras import ops

from keras_tfm import _backend, sampling, search
from keras_tfm._validation import check_positive_int

PROTOCOL = ("init_cache", "call_with_cache")


def _as_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _probe_ids(vocabulary, count):
    """Varied ids in [1, vocabulary) (none is padding)."""
    high = max((vocabulary or 4) - 1, 1)
    return (np.arange(count, dtype="int32") * 7) % high + 1


class Generator:
    """Generate from a model that owns its cached step.

    Inputs:

    - encoder-decoder: source ids `(batch, source_len)`, `0` being padding;
      decoding starts from `start_id` and the output excludes it.
    - decoder-only: prompts `(batch, prompt_len)`, right-padded with `0`
      (`[[5, 6, 7], [8, 0, 0]]`), at least one token a row. The output
      starts with each row's prompt and each row continues right after
      its own prompt, so ragged prompts decode exactly in one batch.

    A row stops at the first of `stop_ids` (or `end_id`) it generates and
    is `0` after it; with no stop ids every row runs to `max_length`. The
    model runs with `training=False`.

    Args:
        model: a model with the cached-step protocol (see the module
            docstring), e.g. from `keras_tfm.models.decoder_lm`.
        jit_compile: whether TensorFlow compiles the search with XLA.
            JAX always compiles; PyTorch runs eagerly.

    Example:

    >>> from keras_tfm.models import decoder_lm
    >>> model = decoder_lm(20, 8, num_layers=1, embedding_dim=16,
    ...                    num_heads=2, intermediate_dim=32)
    >>> generator = Generator(model)
    >>> ids = generator.generate([[3, 4, 0], [5, 6, 7]], max_length=6)
    >>> ids.shape, ids.dtype.name
    ((2, 6), 'int32')
    >>> ids[0, :2].tolist(), ids[1, :3].tolist()
    ([3, 4], [5, 6, 7])
    """

    def __init__(self, model, jit_compile=True):
        missing = [m for m in PROTOCOL if not callable(getattr(model, m, None))]
        if missing or not callable(model):
            raise TypeError(
                "Generator needs a model that owns its cached step: "
                "`init_cache`, `call_with_cache` (and `encode` for "
                "encoder-decoder models), such as keras_tfm.models.CausalLM "
                f"or Seq2SeqLM. Received: {type(model).__name__} without "
                f"{', '.join(f'`{m}`' for m in missing) or '`__call__`'}"
            )
        if getattr(model, "packed", False) is True:
            raise ValueError(
                "Generate with the unpacked twin of a packed model: build it "
                "with packed=False (same layers and weights) and copy the "
                "weights with `set_weights(packed.get_weights())`. "
                f"Received: {type(model).__name__} with packed=True"
            )
        self.model = model
        self.seq2seq = callable(getattr(model, "encode", None))
        self.jit_compile = bool(jit_compile)
        self.trace_count = 0
        self._functions = {}
        self.vocabulary_size = self._check_cached_step()

    # -------------------------------------------------------------- probe

    def _full_logits(self, source, target):
        if self.seq2seq:
            inputs = {"encoder_token_ids": source, "decoder_token_ids": target}
            return self.model(inputs, training=False)
        return self.model(target, training=False)

    def _cached_logits(self, encoded, target, cache, index):
        if self.seq2seq:
            return self.model.call_with_cache(target, cache, index, encoded)
        return self.model.call_with_cache(target, cache, index)

    def _check_cached_step(self):
        """Cached logits of a 3-token probe (2 at once, then 1) must equal
        the full model's; returns the vocabulary size."""
        source_vocabulary = self._input_vocabulary(source=True)
        target_vocabulary = self._input_vocabulary(source=False)
        target = ops.convert_to_tensor(_probe_ids(target_vocabulary, 3)[None])
        source = None
        encoded = None
        if self.seq2seq:
            source = _probe_ids(source_vocabulary, 4)[None]
            source = ops.convert_to_tensor(source)
            encoded = self.model.encode(source)
        full = _as_numpy(self._full_logits(source, target)).astype("float32")
        cache = self.model.init_cache(1, 3)
        first, cache = self._cached_logits(encoded, target[:, :2], cache, 0)
        last, _ = self._cached_logits(encoded, target[:, 2:], cache, 2)
        cached = np.concatenate(
            [_as_numpy(first), _as_numpy(last)], axis=1
        ).astype("float32")
        if cached.shape != full.shape:
            raise ValueError(
                "`call_with_cache` must return logits shaped like the "
                f"model's. Received: {cached.shape} from call_with_cache, "
                f"{full.shape} from the model"
            )
        policy = keras.config.dtype_policy().compute_dtype
        tolerance = 1e-3 if policy == "float32" else 3e-2
        scale = max(1.0, float(np.abs(full).max()))
        difference = float(np.abs(cached - full).max())
        if not difference <= tolerance * scale:
            raise ValueError(
                "The model's cached step does not match its forward pass: "
                f"the largest logit difference on a probe is {difference:.3g}"
                f" (tolerance {tolerance * scale:.3g}). A model whose graph "
                "has other pieces than its class wires must override "
                "`call_with_cache` to do the same. Received: "
                f"{type(self.model).__name__}"
            )
        return full.shape[-1]

    def _embedding(self, source):
        name = (
            "encoder_embedding"
            if source
            else ("decoder_embedding" if self.seq2seq else "embedding")
        )
        return getattr(self.model, name, None)

    def _input_vocabulary(self, source):
        return getattr(self._embedding(source), "vocabulary_size", None)

    def _position_limit(self, source):
        embedding = self._embedding(source)
        if getattr(embedding, "position", None) == "learned":
            return embedding.sequence_length
        return None

    # ------------------------------------------------------------ search

    def _start(self, static, inputs, lengths, integers):
        """Initial loop state and the encoder's output (or None)."""
        batch, length, _, use_cache = static[:4]
        model = self.model
        encoded = None
        if self.seq2seq:
            first = ops.arange(length, dtype="int32") == 0
            ids = ops.where(first, integers[1], 0) * ops.ones(
                (batch, 1), dtype="int32"
            )
            if use_cache:
                encoded = model.encode(inputs)
            else:
                encoded = inputs
            cache = model.init_cache(batch, length) if use_cache else ()
        else:
            ids = ops.pad(inputs, [[0, 0], [0, length - inputs.shape[1]]])
            cache = ()
            if use_cache:
                cache = model.init_cache(batch, length)
                width = inputs.shape[1]
                if width > 1:
                    # Prefill the keys and values of the prompts' first
                    # `width - 1` positions in one call. The loop starts
                    # at the shortest prompt and runs the token before
                    # each position it fills, so it writes every later
                    # slot itself (and rewrites the slots where shorter
                    # rows got keys for padding before any query sees
                    # them).
                    _, cache = model.call_with_cache(
                        inputs[:, : width - 1], cache, 0
                    )
        return search.start_state(ids, lengths, cache), encoded

    def _next_logits(self, static, encoded, expand):
        length, _, use_cache = static[1:4]
        if encoded is not None and expand > 1:
            encoded = keras.tree.map_structure(
                lambda t: search.repeat_rows(t, expand), encoded
            )
        if use_cache:

            def next_logits(ids, cache, index):
                tokens = ops.expand_dims(_backend.column(ids, index - 1), 1)
                logits, cache = self._cached_logits(
                    encoded, tokens, cache, index - 1
                )
                return logits[:, 0], cache

        else:

            def next_logits(ids, cache, index):
                # The whole prefix again (quadratic; for comparisons).
                logits = self._full_logits(encoded, ids[:, : length - 1])
                return ops.take(logits, index - 1, axis=1), cache

        return next_logits

    def _search(self, static, inputs, lengths, floats, integers, stop_ids):
        sampler = static[2]
        state, encoded = self._start(static, inputs, lengths, integers)
        if isinstance(sampler, sampling.BeamSampler):
            next_logits = self._next_logits(static, encoded, sampler.num_beams)
            _, ids, cache, _ = state
            return search.beam_search(
                next_logits,
                ids,
                lengths,
                cache,
                num_beams=sampler.num_beams,
                length_penalty=floats[0],
                stop_ids=stop_ids,
                return_all=sampler.return_all,
            )
        next_logits = self._next_logits(static, encoded, 1)
        _, ids, _, _ = search.decode_steps(
            next_logits,
            state,
            lengths,
            sampler=sampler,
            stop_ids=stop_ids,
            seed=integers[0],
            floats=floats,
        )
        return ids

    def _compiled(self, key, function):
        compiled = self._functions.get(key)
        if compiled is None:

            def count():
                self.trace_count += 1

            compiled = _backend.compile_function(
                function, self.model.variables, self.jit_compile, count
            )
            self._functions[key] = compiled
        return compiled

    # ---------------------------------------------------------- generate

    def _prepare(self, inputs, max_length):
        try:
            array = np.asarray(
                ops.convert_to_numpy(inputs)
                if ops.is_tensor(inputs)
                else inputs
            )
        except ValueError as error:
            raise ValueError(
                "`inputs` must be a rectangular array of token ids; pad "
                "rows with 0. Received: ragged inputs"
            ) from error
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                "`inputs` must be integer token ids of shape (batch, "
                f"length). Received: inputs with shape {array.shape} and "
                f"dtype {array.dtype}"
            )
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(
                "`inputs` must hold at least one token per row. Received: "
                f"inputs with shape {array.shape}"
            )
        vocabulary = (
            self._input_vocabulary(source=True)
            if self.seq2seq
            else self.vocabulary_size
        )
        if vocabulary is not None and (
            array.min() < 0 or array.max() >= vocabulary
        ):
            raise ValueError(
                f"`inputs` must be token ids in [0, {vocabulary}). Received: "
                f"ids from {array.min()} to {array.max()}"
            )
        limit = self._position_limit(source=self.seq2seq)
        if limit is not None and array.shape[1] > limit:
            raise ValueError(
                f"`inputs` of length {array.shape[1]} is longer than the "
                f"learned position table: sequence_length={limit}"
            )
        array = array.astype("int32")
        if self.seq2seq:
            return array, np.ones((array.shape[0],), dtype="int32")
        real = array != 0
        lengths = real.sum(axis=1).astype("int32")
        if (lengths == 0).any():
            raise ValueError(
                "Every prompt needs at least one token (ids other than 0). "
                f"Received: empty prompts in rows "
                f"{np.flatnonzero(lengths == 0).tolist()}"
            )
        right_padded = real == (
            np.arange(array.shape[1])[None, :] < lengths[:, None]
        )
        if not right_padded.all():
            raise ValueError(
                "Prompts must be right-padded with 0 (no 0 before a token). "
                f"Received: inputs={array.tolist()}"
            )
        if array.shape[1] > max_length:
            raise ValueError(
                "`max_length` counts the prompt and must be at least the "
                f"prompt length {array.shape[1]}. Received: "
                f"max_length={max_length}"
            )
        return array, lengths

    def _token_id(self, name, value):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 0 < value < self.vocabulary_size
        ):
            raise ValueError(
                f"`{name}` must be a token id in [1, {self.vocabulary_size}) "
                f"(0 is padding). Received: {name}={value!r}"
            )
        return int(value)

    def _setup(self, inputs, max_length, options):
        """Validate a call; return what the compiled functions take."""
        check_positive_int("max_length", max_length)
        stop_ids = options.pop("stop_ids")
        end_id = options.pop("end_id")
        start_id = options.pop("start_id")
        use_cache = bool(options.pop("use_cache"))
        seed = options.pop("seed")
        sampler = sampling.get(options.pop("sampler"), seed=seed, **options)
        stops = [] if stop_ids is None else list(np.atleast_1d(stop_ids))
        stops += [] if end_id is None else [end_id]
        stops = [self._token_id("stop_ids", s) for s in stops]
        if self.seq2seq:
            if start_id is None:
                raise ValueError(
                    "An encoder-decoder model starts decoding from "
                    "`start_id`, the id of the start token. Received: "
                    "start_id=None"
                )
            start_id = self._token_id("start_id", start_id)
        limit = self._position_limit(source=False)
        if limit is not None and max_length > limit:
            raise ValueError(
                f"`max_length`={max_length} is longer than the learned "
                f"position table of the decoder: sequence_length={limit}"
            )
        array, lengths = self._prepare(inputs, max_length)
        # Buffer length: an encoder-decoder keeps the start token in front.
        length = max_length + 1 if self.seq2seq else max_length
        seed = getattr(sampler, "seed", None)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        floats = np.array(sampler.floats() or (0.0,), dtype="float32")
        integers = np.array([seed % (2**31), start_id or 0], dtype="int32")
        static = (array.shape[0], length, sampler, use_cache, len(stops))
        key = (array.shape, length, sampler.static(), use_cache, len(stops))
        tensors = (
            ops.convert_to_tensor(array),
            ops.convert_to_tensor(lengths),
            ops.convert_to_tensor(floats),
            ops.convert_to_tensor(integers),
            ops.convert_to_tensor(np.array(stops or [0], dtype="int32")),
        )
        return static, key, tensors, sampler

    def generate(
        self,
        inputs,
        max_length,
        *,
        sampler="greedy",
        start_id=None,
        stop_ids=None,
        end_id=None,
        num_beams=None,
        length_penalty=None,
        top_k=None,
        top_p=None,
        temperature=None,
        seed=None,
        use_cache=True,
    ):
        """Generate token ids.

        Args:
            inputs: integer array-like `(batch, length)`: source ids for an
                encoder-decoder model, right-padded prompts for a
                decoder-only one (see the class docstring).
            max_length: output length: generated tokens for an
                encoder-decoder, prompt plus generated tokens for a
                decoder-only model.
            sampler: a `keras_tfm.sampling` sampler, or `"greedy"`,
                `"beam"`, `"top_k"`, `"top_p"` with the options below.
            start_id: first decoder token of an encoder-decoder model
                (required there; not used by decoder-only models).
            stop_ids: ids that end a row (a row stops at the first of
                them), or None.
            end_id: one more stop id (the common single end token).
            num_beams, length_penalty: options of `"beam"`.
            top_k, top_p, temperature, seed: options of `"top_k"` and
                `"top_p"` (see `keras_tfm.sampling`).
            use_cache: decode with the key/value cache. With False every
                step runs the whole model over the full fixed-shape buffer
                (quadratic cost; for comparisons).

        Returns:
            int32 numpy array `(batch, max_length)`; with
            `BeamSampler(return_all=True)`, the pair `(ids, scores)`: ids
            `(batch, num_beams, max_length)` and float32 scores `(batch,
            num_beams)`, best first.
        """
        static, key, tensors, sampler = self._setup(
            inputs, max_length, _options(locals())
        )
        if not self.seq2seq and _as_numpy(tensors[1]).min() >= static[1]:
            # Every prompt fills the output: nothing to generate.
            return _as_numpy(tensors[0])[:, : static[1]].astype("int32")

        def function(inputs, lengths, floats, integers, stop_ids):
            return self._search(
                static,
                inputs,
                lengths,
                floats,
                integers,
                stop_ids if static[-1] else None,
            )

        result = self._compiled(("generate", *key), function)(*tensors)
        if isinstance(result, tuple):
            ids, scores = (_as_numpy(t) for t in result)
            ids = ids[..., 1:] if self.seq2seq else ids
            return ids.astype("int32"), scores.astype("float32")
        ids = _as_numpy(result).astype("int32")
        return ids[:, 1:] if self.seq2seq else ids

    def stream(self, inputs, max_length, *, chunk_size=8, **options):
        """Yield the output of `generate` chunk by chunk, as it is made.

        Takes the same arguments as `generate` (beam search excepted: its
        best hypothesis is known only at the end) plus `chunk_size`. One
        compiled function advances the loop by `chunk_size` positions;
        each yield is the int32 numpy array `(batch, columns)` of the
        output columns completed since the last, and the chunks
        concatenated along axis 1 equal `generate`'s output. A decoder-only
        model's first chunk starts with the prompts.
        """
        check_positive_int("chunk_size", chunk_size)
        options = {**_DEFAULTS, **options}
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise TypeError(f"stream() got unexpected arguments {unknown}")
        static, key, tensors, sampler = self._setup(inputs, max_length, options)
        if isinstance(sampler, sampling.BeamSampler):
            raise ValueError(
                "`stream` decodes greedily or by sampling; beam search "
                "knows its best hypothesis only at the end (use "
                f"`generate`). Received: sampler={sampler!r}"
            )
        inputs, lengths, floats, integers, stop_ids = tensors

        def start(inputs, lengths, integers):
            return self._start(static, inputs, lengths, integers)

        def advance(state, encoded, lengths, floats, integers, stop_ids, until):
            next_logits = self._next_logits(static, encoded, 1)
            return search.decode_steps(
                next_logits,
                state,
                lengths,
                sampler=sampler,
                stop_ids=stop_ids if static[-1] else None,
                seed=integers[0],
                floats=floats,
                until=until,
            )

        state, encoded = self._compiled(("start", *key), start)(
            inputs, lengths, integers
        )
        step = self._compiled(("advance", *key), advance)
        length = static[1]
        offset = 1 if self.seq2seq else 0
        sent = offset
        while sent < length:
            until = min(int(_as_numpy(state[0])) + chunk_size, length)
            state = step(
                state,
                encoded,
                lengths,
                floats,
                integers,
                stop_ids,
                ops.convert_to_tensor(until, "int32"),
            )
            index = int(_as_numpy(state[0]))
            if bool(_as_numpy(state[3]).all()):
                index = length  # every row finished: the rest is 0
            if index > sent:
                yield _as_numpy(state[1])[:, sent:index].astype("int32")
                sent = index


# `generate`'s keyword options and their defaults, which `stream` shares.
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(
        Generator.generate
    ).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}


def _options(arguments):
    return {name: arguments[name] for name in _DEFAULTS}
