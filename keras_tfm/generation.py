"""`Generator`: fast, exact generation for any model with a cached step.

A generation model owns its cached step (`keras_tfm.models.CausalLM`,
`keras_tfm.models.Seq2SeqLM`, or any model with the same methods):

- `call_with_cache(token_ids, cache, cache_index)` -> `(logits, cache)`,
  the same for both kinds of model;
- the initial cache: `init_cache(batch_size, max_length)` for a
  decoder-only model; `encode(encoder_token_ids, max_length,
  padding_mask=None)` for an encoder-decoder model, which runs the
  encoder once and returns the cache that carries its outputs;
- the properties `pad_id` (the padding id, or None when every id is a
  real token), `vocabulary_size` (the logits' size) and `max_length`
  (the longest position the model embeds, or None); an encoder-decoder
  model also has `encoder_vocabulary_size` and `encoder_max_length`;
- calling the model itself: `model(token_ids)`, or for encoder-decoder
  models `model({"encoder_token_ids": ..., "decoder_token_ids": ...})`.

A step at `cache_index` writes the cache from that slot on and attends to
the slots up to its own positions, never past them: on JAX on the CPU the
loop runs in stretches whose steps read only the slots below the stretch's
end (`Generator._segments`).

`Generator` relies on that protocol only, never on layer names. When it
starts, it decodes a short probe with the cache and compares it with the
model's own full forward pass; a difference beyond float tolerance is a
`ValueError`, so a cached step that drifted from the model (a subclass
that changed the graph but not `call_with_cache`) cannot go unnoticed.

The whole search (encoder, prompt, loop) is one function over fixed-shape
state, compiled once per input shape and search configuration (`jax.jit`
on JAX, `tf.function` on TensorFlow; on PyTorch the loop is Python and
each decoding step, a trace of the whole step over the weights as tensors,
is compiled by inductor, `torch.compile`'s compiler) and reused. Prompts
are padded to length buckets first, so that prompts of other lengths reuse
it. The model's `pad_id` is never generated; with `pad_id=None` every id
can be.
"""

import collections
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_tfm import _backend, sampling, search
from keras_tfm._validation import check_positive_int

PROPERTIES = ("pad_id", "vocabulary_size", "max_length")
# The shortest stretch `Generator._segments` cuts a loop into (positions).
_SEGMENT_MIN = 64
ENCODER_PROPERTIES = ("encoder_vocabulary_size", "encoder_max_length")

# The generation options, defined once: these and the sampler options
# (`keras_tfm.sampling.SamplerOptions`). `generate`, `stream`,
# `search_function` and `keras_tfm.export.export_generator` take them as
# keywords.
_OWN_OPTIONS = {
    "sampler": "greedy",
    "start_id": None,
    "stop_ids": None,
    "end_id": None,
    "use_cache": True,
}
Options = collections.namedtuple(
    "Options",
    [*_OWN_OPTIONS, *sampling.SamplerOptions._fields],
    defaults=[
        *_OWN_OPTIONS.values(),
        *sampling.SamplerOptions._field_defaults.values(),
    ],
)
Options.__doc__ = """The keyword options of `Generator.generate`.

Attributes:
    sampler: a `keras_tfm.sampling` sampler, or `"greedy"`, `"beam"`,
        `"top_k"`, `"top_p"` with the sampler options below.
    start_id: first decoder token of an encoder-decoder model given
        sources only (required there; an error anywhere else).
    stop_ids: ids that end a row (a row stops at the first of them), or
        None: then every row runs to `max_length`.
    end_id: one more stop id (the common single end token).
    use_cache: decode with the key/value cache. With False every step
        runs the whole model over the full fixed-shape buffer (quadratic
        cost; for comparisons).
    num_beams, length_penalty: options of `"beam"`.
    top_k, top_p, temperature, seed: options of `"top_k"` and `"top_p"`
        (see `keras_tfm.sampling`).

An option that does not apply (a sampler option the sampler does not use,
`start_id` where the decoder's prompt is given) is a `ValueError`.
"""


def _options(function, options):
    unknown = sorted(set(options) - set(Options._fields))
    if unknown:
        raise TypeError(f"{function}() got unexpected arguments {unknown}")
    return Options(**options)


class Plan(NamedTuple):
    """What a compiled search depends on (its cache key, with the shapes).

    Attributes:
        length: the token buffer's length.
        sampler: the sampler (its `static()` goes into the key).
        use_cache: whether the search uses the key/value cache.
        stops: whether any stop ids were given.
        start: whether the decoder starts from `start_id` (dropped from
            the output).
    """

    length: int
    sampler: Any
    use_cache: bool
    stops: bool
    start: bool

    def key(self):
        return (
            self.length,
            self.sampler.static(),
            self.use_cache,
            self.stops,
            self.start,
        )


class Settings(NamedTuple):
    """What a compiled search takes as tensors: changing it does not
    compile again.

    Attributes:
        seed: int32 scalar seed of the sampling samplers.
        start_id: int32 scalar first decoder token (0 when unused).
        stop_ids: int32 `(count,)` stop ids (one unused 0 when none).
        sampler: the sampler's `settings()`, float32 scalars by name.
    """

    seed: Any
    start_id: Any
    stop_ids: Any
    sampler: Any


def _as_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _tensors(tree):
    return keras.tree.map_structure(ops.convert_to_tensor, tree)


class Generator:
    """Generate from a model that owns its cached step.

    Inputs of `generate` and `stream`:

    - decoder-only: prompts, each continued right after its own last token
      (so ragged prompts decode exactly in one batch), as
      - a rectangular array `(batch, length)`: right-padded with the
        model's `pad_id`, or, when it is None, every id a real token;
      - a list of lists of ids of any lengths: every id is a real token;
      - a dict `{"token_ids", "padding_mask"}`, the mask `True` at each
        prompt's tokens (at the start of the row), any ids.
      The output starts with each row's prompt.
    - encoder-decoder: sources, in the same three forms (the dict's keys
      `encoder_token_ids` and `encoder_padding_mask`); decoding starts
      from `start_id` and the output excludes it. Or a dict that also
      holds the decoder's prompts, `decoder_token_ids` and
      `decoder_padding_mask`: decoding continues them (no `start_id`) and
      the output starts with them.

    A row stops at the first of `stop_ids` (or `end_id`) it generates; the
    positions after it hold the model's `pad_id` (`0` when the model has
    none). With no stop ids every row runs to `max_length`. The `pad_id`
    is never generated. The model runs with `training=False`.

    Args:
        model: a model with the cached-step protocol (see the module
            docstring), e.g. from `keras_tfm.models.decoder_lm`.
        jit_compile: whether TensorFlow compiles the search with XLA, and
            PyTorch each decoding step with inductor, `torch.compile`'s
            compiler (static shapes, one graph; the first call of each
            shape pays the compile time, seconds). On CPU the step holds
            the weights as constants (packed for inductor's C++ matrix
            kernels, as much memory again as the weights); if they change
            after that, the step compiles once more, reading them as
            inputs. JAX always compiles. `jit_compile=False` on PyTorch
            runs the loop eagerly: no compile time, much slower steps.
            With XLA on the CPU (JAX, TensorFlow), `generate` (not
            `stream`) computes the projections that read one input
            (query/key/value, an FFN's gate and up) as one product over
            their kernels, concatenated once per call: a temporary copy
            of those kernels, for one wide product a step in place of
            several narrow ones.
        prompt_buckets: the widths prompts (and sources) are padded to
            before the search, so that prompts of other lengths reuse one
            compiled search: None (the default) for powers of two, a list
            of widths (the smallest that holds the prompts; a wider prompt
            keeps its width), or False to keep every width. Widths never
            exceed the output length (or a learned position table).
            Padding changes nothing in the output.

    Example:

    >>> from keras_tfm.models import decoder_lm
    >>> model = decoder_lm(20, 8, num_layers=1, embedding_dim=16,
    ...                    num_heads=2, intermediate_dim=32)
    >>> generator = Generator(model)
    >>> ids = generator.generate([[3, 4], [5, 6, 7]], max_length=6)
    >>> ids.shape, ids.dtype.name
    ((2, 6), 'int32')
    >>> ids[0, :2].tolist(), ids[1, :3].tolist()
    ([3, 4], [5, 6, 7])
    """

    def __init__(self, model, jit_compile=True, prompt_buckets=None):
        self.seq2seq = callable(getattr(model, "encode", None))
        methods = (
            "call_with_cache",
            "encode" if self.seq2seq else "init_cache",
        )
        missing = [m for m in methods if not callable(getattr(model, m, None))]
        if missing or not callable(model):
            raise TypeError(
                "Generator needs a model that owns its cached step: "
                "`init_cache`, `call_with_cache` (or `encode` and "
                "`call_with_cache` for encoder-decoder models), such as "
                "keras_tfm.models.CausalLM or Seq2SeqLM. Received: "
                f"{type(model).__name__} without "
                f"{', '.join(f'`{m}`' for m in missing) or '`__call__`'}"
            )
        properties = PROPERTIES + (ENCODER_PROPERTIES if self.seq2seq else ())
        missing = [p for p in properties if not hasattr(model, p)]
        if missing:
            raise TypeError(
                "Generator needs the model's protocol properties "
                f"{', '.join(f'`{p}`' for p in properties)} (None where "
                f"unknown). Received: {type(model).__name__} without "
                f"{', '.join(f'`{p}`' for p in missing)}"
            )
        if getattr(model, "packed", False) is True:
            raise ValueError(
                "Generate with the unpacked twin of a packed model: build it "
                "with packed=False (same layers and weights) and copy the "
                "weights with `set_weights(packed.get_weights())`. "
                f"Received: {type(model).__name__} with packed=True"
            )
        self.model = model
        self.pad_id = model.pad_id
        self.vocabulary_size = model.vocabulary_size
        self.max_length = model.max_length
        self.jit_compile = bool(jit_compile)
        self.prompt_buckets = _check_buckets(prompt_buckets)
        self.trace_count = 0
        self._functions = {}
        self._steps = {}
        self._check_cached_step()

    # -------------------------------------------------------------- probe

    def _full_logits(self, source, target, source_mask=None):
        """The full model's logits for `source` and unpadded `target`, in
        the model's input format: where it takes explicit padding masks,
        `source_mask` (all True when None) and an all-True target mask
        (causal attention keeps what follows a position out of its
        logits)."""
        ids = {
            "token_ids": target,
            "decoder_token_ids": target,
            "encoder_token_ids": source,
        }
        names = [tensor.name for tensor in self.model.inputs]
        if not any(name.endswith("padding_mask") for name in names):
            if self.seq2seq:
                inputs = {
                    "encoder_token_ids": source,
                    "decoder_token_ids": target,
                }
                return self.model(inputs, training=False)
            return self.model(target, training=False)
        inputs = {}
        for name in names:
            ids_name = name.replace("padding_mask", "token_ids")
            value = ids[ids_name]
            if name == ids_name:
                inputs[name] = value
            elif name == "encoder_padding_mask" and source_mask is not None:
                inputs[name] = ops.cast(source_mask, "int32")
            else:
                inputs[name] = ops.ones_like(value)
        return self.model(inputs, training=False)

    def _probe_ids(self, vocabulary, count):
        """Varied ids in `[1, vocabulary)`, none of them the pad id."""
        choices = [
            i for i in range(1, max(vocabulary or 4, 2)) if i != self.pad_id
        ] or [1]
        ids = [choices[(i * 7) % len(choices)] for i in range(count)]
        return ops.convert_to_tensor(np.array([ids], dtype="int32"))

    def _prefill(self, prompts, source, source_mask, length):
        """The cache of a search of `length` positions (the encoder's
        outputs, for an encoder-decoder) with the keys and values of the
        prompts' first `width - 1` positions, prefilled in one call.

        The loop starts at the shortest prompt and runs the token before
        each position it fills, so it writes every later slot itself (and
        rewrites the slots where shorter rows got keys for padding before
        any query sees them).
        """
        batch_size, width = ops.shape(prompts)[0], prompts.shape[1]
        cache = self._initial_cache(source, source_mask, batch_size, length)
        if width > 1:
            _, cache = self.model.call_with_cache(
                prompts[:, : width - 1], cache, 0
            )
        return cache

    def _initial_cache(self, source, source_mask, batch_size, length):
        if self.seq2seq:
            return self.model.encode(source, length, source_mask)
        return self.model.init_cache(batch_size, length)

    def _check_cached_step(self):
        """Cached logits of a 3-token probe (2 at once, then 1) must equal
        the full model's."""
        target = self._probe_ids(self.vocabulary_size, 3)
        source = None
        if self.seq2seq:
            source = self._probe_ids(self.model.encoder_vocabulary_size, 4)
        full = _as_numpy(self._full_logits(source, target)).astype("float32")
        cache = self._initial_cache(source, None, 1, 3)
        first, cache = self.model.call_with_cache(target[:, :2], cache, 0)
        last, _ = self.model.call_with_cache(target[:, 2:], cache, 2)
        cached = np.concatenate(
            [_as_numpy(first), _as_numpy(last)], axis=1
        ).astype("float32")
        if cached.shape != full.shape:
            raise ValueError(
                "`call_with_cache` must return logits shaped like the "
                f"model's. Received: {cached.shape} from call_with_cache, "
                f"{full.shape} from the model"
            )
        if full.shape[-1] != self.vocabulary_size:
            raise ValueError(
                "The model's `vocabulary_size` must be its logits' size "
                f"{full.shape[-1]}. Received: vocabulary_size="
                f"{self.vocabulary_size}"
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

    # ------------------------------------------------------------ search

    def _start(self, plan, inputs, settings):
        """The loop's first `DecodeState` and the prompt lengths.

        `inputs` holds the decoder's prompts (`token_ids`, `padding_mask`)
        or, for an encoder-decoder, `encoder_token_ids`,
        `encoder_padding_mask` and optionally `decoder_token_ids`,
        `decoder_padding_mask`.
        """
        source = inputs.get("encoder_token_ids")
        source_mask = inputs.get("encoder_padding_mask")
        if not self.seq2seq:
            prompts, mask = inputs["token_ids"], inputs["padding_mask"]
        elif plan.start:
            # (batch, 1), static width even where the source's is not.
            first = ops.zeros_like(ops.cast(source[:, 0], "int32"))
            prompts = ops.expand_dims(first + settings.start_id, 1)
            mask = ops.ones_like(prompts, dtype="bool")
        else:
            prompts = inputs["decoder_token_ids"]
            mask = inputs["decoder_padding_mask"]
        prompts = ops.cast(prompts, "int32")
        lengths = ops.sum(ops.cast(mask, "int32"), axis=1)
        width = prompts.shape[1]
        ids = ops.pad(prompts, [[0, 0], [0, plan.length - width]])
        if not plan.use_cache:
            # The loop state carries the sources (beams reorder them).
            cache = ()
            if self.seq2seq:
                cache = {"source": source, "source_mask": source_mask}
        else:
            # One traced graph on PyTorch, not eager (`_backend.traced_call`).
            cache = _backend.traced_call(
                self._prefill, prompts, source, source_mask, plan.length
            )
        state = search.start_state(ids, lengths, cache, self.pad_id)
        return state, lengths

    def _next_logits(self, plan):
        if plan.use_cache:

            def next_logits(ids, cache, index):
                tokens = ops.expand_dims(_backend.column(ids, index - 1), 1)
                logits, cache = self.model.call_with_cache(
                    tokens, cache, index - 1
                )
                return logits[:, 0], cache

        else:

            def next_logits(ids, cache, index):
                # The whole prefix again (quadratic; for comparisons).
                source, source_mask = None, None
                if self.seq2seq:
                    source, source_mask = cache["source"], cache["source_mask"]
                logits = self._full_logits(
                    source, ids[:, : plan.length - 1], source_mask
                )
                return ops.take(logits, index - 1, axis=1), cache

        return next_logits

    def _advance(self, plan, state, lengths, settings, until=None):
        """The decoding loop from `state` up to `until` (the end: in
        stretches, see `_segments`)."""
        if until is not None:  # `stream`'s chunk: one loop, every slot
            return self._decode(plan, state, lengths, settings, until)
        for bound in self._segments(plan) + [None]:
            with _backend.reading_cache_prefix(bound):
                state = self._decode(plan, state, lengths, settings, bound)
        return state

    def _decode(self, plan, state, lengths, settings, until):
        return search.decode_steps(
            self._next_logits(plan),
            state,
            lengths,
            sampler=plan.sampler.with_settings(settings.sampler),
            stop_ids=settings.stop_ids if plan.stops else None,
            seed=settings.seed,
            until=until,
            pad_id=self.pad_id,
        )

    def _segments(self, plan):
        """Where `generate`'s loop is cut into stretches: one loop per
        stretch, whose steps read only the cache slots below its end
        (`_backend.reading_cache_prefix`). Step `i` writes slot `i - 1` and
        attends to slots `< i`, so a stretch ending at `bound` never needs
        the slots past it: the work shrinks with the position (on average
        to 5/8 of the cache with 4 stretches).

        Only on JAX on the CPU, where it was measured (each stretch
        compiles its own copy of the step), with stretches of at least
        `_SEGMENT_MIN` positions. TensorFlow with XLA takes one loop: its
        XLA bridge fails on a third loop in one function ("Cannot find
        body function ..._const_0"), and two made no difference there.
        """
        if not (
            plan.use_cache
            and keras.backend.backend() == "jax"
            and self._joins_projections()
        ):
            return []
        count = min(4, plan.length // _SEGMENT_MIN)
        return [-(-plan.length * k // count) for k in range(1, count)]

    def _search(self, plan, inputs, settings):
        """The whole search, traceable: ids (or beams and scores)."""
        state, lengths = self._start(plan, inputs, settings)
        sampler = plan.sampler.with_settings(settings.sampler)
        if isinstance(sampler, sampling.BeamSampler):
            result = search.beam_search(
                self._next_logits(plan),
                state.ids,
                lengths,
                state.cache,
                num_beams=sampler.num_beams,
                length_penalty=sampler.length_penalty,
                stop_ids=settings.stop_ids if plan.stops else None,
                return_all=sampler.return_all,
                pad_id=self.pad_id,
            )
        else:
            result = self._advance(plan, state, lengths, settings).ids
        if not plan.start:
            return result
        if isinstance(result, tuple):
            ids, scores = result
            return ids[..., 1:], scores
        return result[..., 1:]

    def _joins_projections(self):
        """Whether `generate`'s search joins the projections that share an
        input (see `_backend.joining_projections`)."""
        return _backend.xla_loop_on_cpu(self.jit_compile)

    def _compiled(self, key, function):
        """`function` compiled once, cached under `key` (a name, then the
        input shapes and the plan's key). On PyTorch the functions of one
        plan (`generate`'s search, `stream`'s steps) share their compiled
        decoding step."""
        compiled = self._functions.get(key)
        if compiled is None:

            def count():
                self.trace_count += 1

            compiled = _backend.compile_function(
                function,
                self.model.variables,
                self.jit_compile,
                count,
                steps=self._steps.setdefault(key[1:], {}),
            )
            self._functions[key] = compiled
        return compiled

    # ------------------------------------------------------------ inputs

    def _ids_and_mask(self, name, value, vocabulary, limit):
        """Token ids and padding mask `(batch, length)` as numpy arrays
        from an array (padding: the pad id), a list of lists (any
        lengths, every id real) or a `(token_ids, padding_mask)` pair."""
        if isinstance(value, tuple):
            ids, mask = value
            ids = np.asarray(ops.convert_to_numpy(ids))
            mask = np.asarray(ops.convert_to_numpy(mask))
            # Boolean, or 0/1 integers as tokenizers give them.
            binary = mask.dtype == bool or (
                np.issubdtype(mask.dtype, np.integer)
                and np.isin(mask, (0, 1)).all()
            )
            if mask.shape != ids.shape or not binary:
                raise ValueError(
                    f"The padding mask of `{name}` must be boolean (or 0/1) "
                    f"and shaped like the ids {ids.shape}. Received: mask "
                    f"with shape {mask.shape} and dtype {mask.dtype}"
                )
            mask = mask.astype(bool)
            real = mask.sum(axis=1)
            starts = np.arange(mask.shape[1])[None, :] < real[:, None]
            if (mask != starts).any():
                raise ValueError(
                    f"The padding mask of `{name}` must be True at each "
                    "row's tokens, at the start of the row, then False. "
                    f"Received: {mask.tolist()}"
                )
        elif (
            isinstance(value, list)
            and all(isinstance(row, (list, tuple)) for row in value)
            and len({len(row) for row in value}) > 1
        ):
            rows = [np.asarray(row) for row in value]
            if any(row.ndim != 1 for row in rows):
                raise ValueError(
                    f"`{name}` must be lists of token ids. Received: {value!r}"
                )
            width = max(len(row) for row in rows)
            fill = search.fill_id(self.pad_id)
            ids = np.full((len(rows), width), fill, dtype="int64")
            mask = np.zeros((len(rows), width), dtype=bool)
            for index, row in enumerate(rows):
                if row.size and not np.issubdtype(row.dtype, np.integer):
                    raise ValueError(
                        f"`{name}` must be integer token ids. Received: "
                        f"a row of dtype {row.dtype}"
                    )
                ids[index, : len(row)] = row
                mask[index, : len(row)] = True
                if self.pad_id is not None and (row == self.pad_id).any():
                    raise ValueError(
                        f"`{name}` of different lengths hold real tokens "
                        f"only; the padding id {self.pad_id} is not one. "
                        f"Received: row {index} = {row.tolist()}"
                    )
        else:
            try:
                ids = np.asarray(
                    ops.convert_to_numpy(value)
                    if ops.is_tensor(value)
                    else value
                )
            except ValueError as error:
                raise ValueError(
                    f"`{name}` must be a rectangular array of token ids, "
                    "lists of ids, or a dict with a padding mask. "
                    "Received: ragged inputs"
                ) from error
            mask = None
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"`{name}` must be integer token ids of shape (batch, "
                f"length). Received: {name} with shape {ids.shape} and "
                f"dtype {ids.dtype}"
            )
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(
                f"`{name}` must hold at least one token per row. Received: "
                f"{name} with shape {ids.shape}"
            )
        if vocabulary is not None and (
            ids.min() < 0 or ids.max() >= vocabulary
        ):
            raise ValueError(
                f"`{name}` must be token ids in [0, {vocabulary}). Received: "
                f"ids from {ids.min()} to {ids.max()}"
            )
        if limit is not None and ids.shape[1] > limit:
            raise ValueError(
                f"`{name}` of length {ids.shape[1]} is longer than the "
                f"learned position table: sequence_length={limit}"
            )
        if mask is None:
            if self.pad_id is None:
                mask = np.ones(ids.shape, dtype=bool)
            else:
                mask = ids != self.pad_id
        return ids.astype("int32"), mask

    def _check_prompts(self, name, ids, mask, max_length):
        lengths = mask.sum(axis=1)
        if (lengths == 0).any():
            pad = "" if self.pad_id is None else f" other than {self.pad_id}"
            raise ValueError(
                f"Every prompt needs at least one token (ids{pad}). "
                f"Received: empty prompts in rows "
                f"{np.flatnonzero(lengths == 0).tolist()}"
            )
        starts = np.arange(mask.shape[1])[None, :] < lengths[:, None]
        if (mask != starts).any():
            raise ValueError(
                f"Prompts must be right-padded with the pad id {self.pad_id} "
                f"(none before a token). Received: {name}={ids.tolist()}"
            )
        if ids.shape[1] > max_length:
            raise ValueError(
                "`max_length` counts the prompt and must be at least the "
                f"prompt length {ids.shape[1]}. Received: "
                f"max_length={max_length}"
            )

    def _prepare(self, inputs, max_length):
        """The inputs as a dict of numpy ids and boolean padding masks."""
        model = self.model
        if not self.seq2seq:
            if isinstance(inputs, dict):
                _check_keys(inputs, ("token_ids", "padding_mask"), ())
                inputs = (inputs["token_ids"], inputs["padding_mask"])
            ids, mask = self._ids_and_mask(
                "inputs", inputs, self.vocabulary_size, self.max_length
            )
            self._check_prompts("inputs", ids, mask, max_length)
            return {"token_ids": ids, "padding_mask": mask}
        decoder = ("decoder_token_ids", "decoder_padding_mask")
        if isinstance(inputs, dict):
            _check_keys(
                inputs, ("encoder_token_ids", "encoder_padding_mask"), decoder
            )
            prompts = None
            if "decoder_token_ids" in inputs:
                prompts = (inputs[decoder[0]], inputs[decoder[1]])
            inputs = (
                inputs["encoder_token_ids"],
                inputs["encoder_padding_mask"],
            )
        else:
            prompts = None
        ids, mask = self._ids_and_mask(
            "inputs",
            inputs,
            model.encoder_vocabulary_size,
            model.encoder_max_length,
        )
        prepared = {"encoder_token_ids": ids, "encoder_padding_mask": mask}
        if prompts is not None:
            ids, mask = self._ids_and_mask(
                "decoder_token_ids",
                prompts,
                self.vocabulary_size,
                self.max_length,
            )
            self._check_prompts("decoder_token_ids", ids, mask, max_length)
            if len(ids) != len(prepared["encoder_token_ids"]):
                raise ValueError(
                    "`decoder_token_ids` must hold one prompt per source. "
                    f"Received: {len(ids)} prompts for "
                    f"{len(prepared['encoder_token_ids'])} sources"
                )
            prepared.update(decoder_token_ids=ids, decoder_padding_mask=mask)
        return prepared

    def _token_id(self, name, value):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 0 <= value < self.vocabulary_size
            or value == self.pad_id
        ):
            pad = "" if self.pad_id is None else f", not {self.pad_id}"
            raise ValueError(
                f"`{name}` must be a token id in [0, {self.vocabulary_size})"
                f"{pad} (the padding id). Received: {name}={value!r}"
            )
        return int(value)

    def _plan(self, max_length, options, start):
        """Validate the options; return the `Plan` and numpy `Settings`.

        `start`: whether an encoder-decoder decodes from `start_id` (no
        decoder prompts given).
        """
        check_positive_int("max_length", max_length)
        sampler_options = {
            name: getattr(options, name)
            for name in sampling.SamplerOptions._fields
        }
        sampler = sampling.get(options.sampler, **sampler_options)
        stops = (
            [] if options.stop_ids is None else list(np.ravel(options.stop_ids))
        )
        stops += [] if options.end_id is None else [options.end_id]
        stops = [self._token_id("stop_ids", s) for s in stops]
        start_id = options.start_id
        if self.seq2seq and start:
            if start_id is None:
                raise ValueError(
                    "An encoder-decoder model given sources only starts "
                    "decoding from `start_id`, the id of the start token. "
                    "Received: start_id=None"
                )
            start_id = self._token_id("start_id", start_id)
        elif start_id is not None:
            where = (
                "with decoder prompts (they start the decoder)"
                if self.seq2seq
                else "a decoder-only model (its prompts start it)"
            )
            raise ValueError(
                f"`start_id` does not apply to {where}. Received: "
                f"start_id={start_id!r}"
            )
        if self.max_length is not None and max_length > self.max_length:
            raise ValueError(
                f"`max_length`={max_length} is longer than the learned "
                "position table of the decoder: sequence_length="
                f"{self.max_length}"
            )
        start = self.seq2seq and start
        seed = getattr(sampler, "seed", None)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        plan = Plan(
            # An encoder-decoder keeps the start token in front.
            length=max_length + 1 if start else max_length,
            sampler=sampler,
            use_cache=bool(options.use_cache),
            stops=bool(stops),
            start=start,
        )
        settings = Settings(
            seed=np.int32(seed % (2**31)),
            start_id=np.int32(start_id or 0),
            stop_ids=np.array(stops or [0], dtype="int32"),
            sampler=sampler.settings(),
        )
        return plan, settings

    def _setup(self, function, inputs, max_length, options):
        options = _options(function, options)
        inputs = self._prepare(inputs, max_length)
        plan, settings = self._plan(
            max_length, options, "decoder_token_ids" not in inputs
        )
        inputs = self._bucketed(inputs, plan)
        key = (
            tuple((k, v.shape) for k, v in sorted(inputs.items())),
            plan.key(),
        )
        return plan, key, _tensors(inputs), _tensors(settings)

    def _bucket(self, width, limit):
        if self.prompt_buckets is False:
            return width
        if self.prompt_buckets is None:
            bucket = 1 << (width - 1).bit_length()
        else:
            bucket = min(
                (b for b in self.prompt_buckets if b >= width), default=width
            )
        return max(width, bucket if limit is None else min(bucket, limit))

    def _bucketed(self, inputs, plan):
        """The prepared inputs, their width padded to a bucket (padding:
        mask False, ids `fill_id(pad_id)`) so that other prompt lengths
        reuse one compiled search."""
        limits = {"token_ids": plan.length, "decoder_token_ids": plan.length}
        if self.seq2seq:
            # Sources are padded only where the search masks them: the
            # cached step reads the mask; an uncached one only when the
            # model takes a mask or a padding id.
            names = [tensor.name for tensor in self.model.inputs]
            maskable = (
                plan.use_cache
                or self.pad_id is not None
                or "encoder_padding_mask" in names
            )
            limits["encoder_token_ids"] = (
                self.model.encoder_max_length if maskable else 0
            )
        inputs = dict(inputs)
        fill = search.fill_id(self.pad_id)
        for name, limit in limits.items():
            if name not in inputs:
                continue
            mask_name = name.replace("token_ids", "padding_mask")
            ids, mask = inputs[name], inputs[mask_name]
            extra = self._bucket(ids.shape[1], limit) - ids.shape[1]
            if extra > 0:
                inputs[name] = np.pad(
                    ids, [(0, 0), (0, extra)], constant_values=fill
                )
                inputs[mask_name] = np.pad(mask, [(0, 0), (0, extra)])
        return inputs

    # ------------------------------------------------------------ public

    def search_function(self, max_length, **options):
        """The whole search as one traceable function of the inputs.

        Validates the options as `generate` does (its keywords, see
        `Options`) and returns `search(inputs)`, written with
        `keras.ops`, which `tf.function`, `jax.jit` or a SavedModel
        export can trace. `inputs` is the dict `generate` builds: for a
        decoder-only model `{"token_ids", "padding_mask"}`, the prompts
        right-aligned in a buffer of static width at most `max_length`;
        for an encoder-decoder `{"encoder_token_ids",
        "encoder_padding_mask"}` (the batch and source length may be
        dynamic). Every option is a constant of the function, a random
        sampler's seed included. It returns what `generate` returns, as
        tensors.

        Returns:
            `search(inputs) -> ids` (or `(ids, scores)` with
            `BeamSampler(return_all=True)`).
        """
        plan, settings = self._plan(
            max_length, _options("search_function", options), True
        )

        def function(inputs):
            return self._search(plan, inputs, _tensors(settings))

        function.plan = plan
        return function

    def generate(self, inputs, max_length, **options):
        """Generate token ids.

        Args:
            inputs: prompts (decoder-only) or sources (encoder-decoder),
                as described in the class docstring.
            max_length: output length: generated tokens for an
                encoder-decoder given sources only, prompt plus generated
                tokens otherwise.
            **options: the generation options, `Options`' fields:
                `sampler`, `start_id`, `stop_ids`, `end_id`, `use_cache`,
                `num_beams`, `length_penalty`, `top_k`, `top_p`,
                `temperature`, `seed`.

        Returns:
            int32 numpy array `(batch, max_length)`; with
            `BeamSampler(return_all=True)`, the pair `(ids, scores)`: ids
            `(batch, num_beams, max_length)` and float32 scores `(batch,
            num_beams)`, best first.
        """
        plan, key, inputs, settings = self._setup(
            "generate", inputs, max_length, options
        )
        if "token_ids" in inputs:
            lengths = _as_numpy(inputs["padding_mask"]).sum(axis=1)
            if lengths.min() >= plan.length:
                # Every prompt fills the output: nothing to generate.
                ids = _as_numpy(inputs["token_ids"])[:, : plan.length]
                return ids.astype("int32")

        def function(inputs, settings):
            with _backend.joining_projections(self._joins_projections()):
                return self._search(plan, inputs, settings)

        result = self._compiled(("generate", *key), function)(inputs, settings)
        if isinstance(result, tuple):
            ids, scores = (_as_numpy(t) for t in result)
            return ids.astype("int32"), scores.astype("float32")
        return _as_numpy(result).astype("int32")

    def stream(self, inputs, max_length, *, chunk_size=8, **options):
        """Yield the output of `generate` chunk by chunk, as it is made.

        Takes the same arguments as `generate` (beam search excepted: its
        best hypothesis is known only at the end) plus `chunk_size`. One
        compiled function advances the loop by `chunk_size` positions;
        each yield is the int32 numpy array `(batch, columns)` of the
        output columns completed since the last, and the chunks
        concatenated along axis 1 equal `generate`'s output. The first
        chunk starts with the prompts (when they are part of the output).
        """
        check_positive_int("chunk_size", chunk_size)
        plan, key, inputs, settings = self._setup(
            "stream", inputs, max_length, options
        )
        if isinstance(plan.sampler, sampling.BeamSampler):
            raise ValueError(
                "`stream` decodes greedily or by sampling; beam search "
                "knows its best hypothesis only at the end (use "
                f"`generate`). Received: sampler={plan.sampler!r}"
            )

        def start(inputs, settings):
            return self._start(plan, inputs, settings)

        def advance(state, lengths, settings, until):
            return self._advance(plan, state, lengths, settings, until)

        state, lengths = self._compiled(("start", *key), start)(
            inputs, settings
        )
        step = self._compiled(("advance", *key), advance)
        length = plan.length
        sent = 1 if plan.start else 0
        while sent < length:
            until = min(int(_as_numpy(state.index)) + chunk_size, length)
            state = step(
                state, lengths, settings, ops.convert_to_tensor(until, "int32")
            )
            index = int(_as_numpy(state.index))
            if bool(_as_numpy(state.finished).all()):
                index = length  # every row finished: the rest is filled
            if index > sent:
                yield _as_numpy(state.ids)[:, sent:index].astype("int32")
                sent = index


def _check_buckets(buckets):
    if buckets is None or buckets is False:
        return buckets
    try:
        widths = sorted(int(b) for b in buckets)
    except (TypeError, ValueError):
        widths = None
    if (
        not widths
        or any(w < 1 for w in widths)
        or any(isinstance(b, bool) for b in buckets)
    ):
        raise ValueError(
            "`prompt_buckets` must be None (powers of two), False (no "
            "buckets) or a list of positive widths. Received: "
            f"prompt_buckets={buckets!r}"
        )
    return tuple(widths)


def _check_keys(inputs, required, optional):
    keys = set(inputs)
    missing = [k for k in required if k not in keys]
    unknown = sorted(keys - set(required) - set(optional))
    partial = 0 < len(keys & set(optional)) < len(optional)
    if missing or unknown or partial:
        expected = ", ".join(f'"{k}"' for k in required + optional)
        both = " (the decoder's two together or neither)" if optional else ""
        raise ValueError(
            f"`inputs` as a dict holds {expected}{both}. Received: keys "
            f"{sorted(keys)}"
        )
