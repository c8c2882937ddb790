"""Autoregressive decoding with the key/value cache: greedy, beam, sampling.

`Generator(model)` decodes from models built by
`keras_tfm.models.seq2seq_transformer` and `keras_tfm.models.decoder_lm`.
It finds their sublayers by name, runs the encoder once, projects the
encoder outputs once per decoder layer (the cross-attention caches) and
then decodes one token per step, each decoder block attending over a
fixed-shape self-attention cache written at the current position. The
whole search (encoder, prompt, loop) is one function over fixed-shape
state, `keras.ops.while_loop` inside, compiled once per input shape and
search configuration (`jax.jit` on JAX, `tf.function` on TensorFlow) and
cached: calling `generate` again with the same shapes does not trace or
compile again. PyTorch runs the same loop eagerly under `torch.no_grad()`.

The searches themselves, `decode` (greedy, top-k, top-p and temperature
sampling) and `beam_search`, take any `next_logits(ids, cache, index)`
function, so they can be used (and tested) without a Transformer.

Conventions: token id `0` is padding and is never generated; a row stops
at `end_id` and is padded with `0` after it.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_tfm._validation import check_choice, check_positive_int

SAMPLERS = ("greedy", "beam", "top_k", "top_p")
# Logit and score of what must never be chosen; finite, so that sums and
# differences of masked values stay finite (no `inf - inf`).
_NEG = -1e9
_SUPPORTED = (
    "Generator supports models built by keras_tfm.models.seq2seq_transformer "
    "(inputs 'encoder_token_ids' and 'decoder_token_ids') and "
    "keras_tfm.models.decoder_lm (input 'token_ids')"
)


# ------------------------------------------------------------------ helpers


def _int32(value):
    return ops.convert_to_tensor(np.asarray(value, dtype="int32"))


def _set_column(ids, index, values):
    """Write `values` (..., ) at position `index` of `ids` (..., length)."""
    length = ops.shape(ids)[-1]
    here = ops.arange(length, dtype="int32") == index
    return ops.where(here, ops.expand_dims(values, -1), ids)


def _column(ids, index):
    """Return `ids[..., index]` for a scalar tensor `index`."""
    length = ops.shape(ids)[-1]
    here = ops.arange(length, dtype="int32") == index
    return ops.sum(ops.where(here, ids, ops.zeros_like(ids)), axis=-1)


def _mask_padding(logits):
    """Padding (id 0) is never generated."""
    vocabulary = ops.shape(logits)[-1]
    is_padding = ops.arange(vocabulary, dtype="int32") == 0
    return ops.where(is_padding, _NEG, ops.cast(logits, "float32"))


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


def _filter_top_k(logits, top_k):
    top_k = min(top_k, logits.shape[-1])
    kth = ops.top_k(logits, top_k)[0][:, -1:]
    return ops.where(logits >= kth, logits, _NEG)


def _filter_top_p(logits, top_p):
    """Keep the smallest set of most likely tokens whose mass is >= top_p."""
    probabilities = ops.softmax(logits, axis=-1)
    vocabulary = logits.shape[-1]
    descending = ops.top_k(probabilities, vocabulary)[0]
    mass_before = ops.cumsum(descending, axis=-1) - descending
    kept = mass_before < top_p  # always keeps the most likely token
    threshold = ops.min(ops.where(kept, descending, 2.0), axis=-1)
    return ops.where(probabilities >= threshold[:, None], logits, _NEG)


def _choose(logits, index, sampler, top_k, top_p, temperature, seed):
    """Next tokens `(batch,)` int32 from float32 logits `(batch, vocab)`."""
    logits = _mask_padding(logits)
    if sampler in ("greedy", "beam"):
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    logits = logits / ops.cast(temperature, "float32")
    if top_k is not None:
        logits = _filter_top_k(logits, top_k)
    if top_p is not None:
        logits = _filter_top_p(logits, top_p)
    noise = gumbel_noise(seed, index, tuple(logits.shape))
    return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")


# ----------------------------------------------------------------- searches


def decode(
    next_logits,
    ids,
    lengths,
    cache,
    *,
    end_id=None,
    sampler="greedy",
    top_k=None,
    top_p=None,
    temperature=1.0,
    seed=0,
):
    """Greedy or sampled decoding over a fixed-shape buffer.

    Positions `< lengths[b]` of row `b` are its prompt and are kept; every
    later position is generated, one step per position, from the logits
    `next_logits` returns. A row that generates `end_id` is finished: every
    later position is `0`. The loop is a `keras.ops.while_loop` over
    fixed-shape state and stops when every row is finished.

    Args:
        next_logits: `next_logits(ids, cache, index) -> (logits, cache)`:
            float logits `(batch, vocabulary)` of the token at position
            `index` (a scalar int32 tensor) given `ids[:, :index]`, and the
            updated cache (any nest of tensors whose shapes do not change).
        ids: int32 `(batch, length)` buffer holding the prompts.
        lengths: int32 `(batch,)` prompt lengths, at least 1.
        cache: the initial cache passed to `next_logits`.
        end_id: token that ends a row, or None.
        sampler: `"greedy"` (argmax), `"top_k"` or `"top_p"` (sampling).
        top_k: when sampling, keep only the `top_k` most likely tokens.
        top_p: when sampling, keep the smallest set of most likely tokens
            whose probability mass reaches `top_p` (nucleus sampling).
        temperature: when sampling, divide the logits by it first.
        seed: int32 scalar; samples are a pure function of the seed.

    Returns:
        int32 `(batch, length)`: the prompts followed by the generated
        tokens, `0` after `end_id`.
    """
    ids = ops.convert_to_tensor(ids, dtype="int32")
    lengths = ops.convert_to_tensor(lengths, dtype="int32")
    length = ids.shape[-1]
    start = ops.min(lengths)
    finished = ops.zeros(ops.shape(lengths), dtype="bool")
    end = -1 if end_id is None else end_id

    def cond(index, ids, cache, finished):
        return ops.logical_and(
            index < length, ops.logical_not(ops.all(finished))
        )

    def body(index, ids, cache, finished):
        logits, cache = next_logits(ids, cache, index)
        tokens = _choose(
            logits, index, sampler, top_k, top_p, temperature, seed
        )
        in_prompt = index < lengths
        tokens = ops.where(finished, 0, tokens)
        tokens = ops.where(in_prompt, _column(ids, index), tokens)
        finished = ops.logical_or(
            finished,
            ops.logical_and(ops.logical_not(in_prompt), tokens == end),
        )
        return index + 1, _set_column(ids, index, tokens), cache, finished

    _, ids, _, _ = ops.while_loop(cond, body, (start, ids, cache, finished))
    return ids


def _flat_take(x, batch_index, width):
    """`x[b * width + batch_index[b, j]]` for x `(batch * width, ...)`."""
    batch, count = batch_index.shape
    rows = ops.arange(batch, dtype="int32")[:, None] * width
    flat = ops.reshape(rows + ops.cast(batch_index, "int32"), (-1,))
    return ops.take(x, flat, axis=0)


def _repeat_rows(x, times):
    """`(batch, ...)` -> `(batch * times, ...)`, each row `times` times."""
    return ops.repeat(x, times, axis=0)


def beam_search(
    next_logits,
    ids,
    lengths,
    cache,
    *,
    num_beams=4,
    length_penalty=1.0,
    end_id=None,
):
    """Beam search over a fixed-shape buffer; returns the best hypothesis.

    Each row keeps `num_beams` live hypotheses. At each step the `2 *
    num_beams` best one-token extensions (by total log-probability) are
    found; those ending in `end_id` among the `num_beams` best join the
    row's finished hypotheses, scored by `log_prob / generated_length **
    length_penalty`, and the `num_beams` best others stay live. A row is
    done once it holds `num_beams` finished hypotheses (Hugging Face's
    `early_stopping=True`); at the end, a row that is not done also
    considers its live hypotheses. With `num_beams=1` this is greedy
    search. Prompts (positions `< lengths[b]`) are kept as in `decode`.

    Args:
        next_logits: as for `decode`; called on `batch * num_beams` rows,
            row `b * num_beams + j` being beam `j` of row `b`.
        ids: int32 `(batch, length)` buffer holding the prompts.
        lengths: int32 `(batch,)` prompt lengths, at least 1.
        cache: the cache for `batch` rows (it is repeated per beam);
            every tensor in it has the batch as its first axis.
        num_beams: beams per row.
        length_penalty: exponent of the generated length that divides the
            log-probability of a finished hypothesis; `0` ranks by total
            log-probability, `1` by mean log-probability per token.
        end_id: token that ends a hypothesis, or None.

    Returns:
        int32 `(batch, length)`: the best hypothesis of each row, `0`
        after `end_id`.
    """
    ids = ops.convert_to_tensor(ids, dtype="int32")
    lengths = ops.convert_to_tensor(lengths, dtype="int32")
    batch, length = ids.shape
    beams = num_beams
    end = -1 if end_id is None else end_id
    penalty = ops.cast(length_penalty, "float32")
    start = ops.min(lengths)
    beam_ids = ops.reshape(
        _repeat_rows(ids, beams), (batch, beams, length)
    )  # (batch, beams, length)
    cache = keras.tree.map_structure(lambda c: _repeat_rows(c, beams), cache)
    # Only beam 0 is live at first: the beams start identical.
    first = ops.arange(beams, dtype="int32") == 0
    scores = ops.where(first, 0.0, _NEG) * ops.ones((batch, 1), "float32")
    finished_ids = ops.zeros((batch, beams, length), dtype="int32")
    finished_scores = ops.full((batch, beams), _NEG, dtype="float32")
    done = ops.zeros((batch,), dtype="bool")
    keep_beams = ops.arange(beams, dtype="int32")[None, :] * ops.ones(
        (batch, 1), "int32"
    )
    ranks = ops.arange(2 * beams, dtype="int32")[None, :]

    def normalized(log_probs, generated):
        generated = ops.cast(ops.maximum(generated, 1), "float32")
        return log_probs / ops.power(generated, penalty)[:, None]

    def cond(index, *state):
        done = state[-1]
        return ops.logical_and(index < length, ops.logical_not(ops.all(done)))

    def body(
        index, beam_ids, scores, cache, finished_ids, finished_scores, done
    ):
        flat_ids = ops.reshape(beam_ids, (batch * beams, length))
        logits, cache = next_logits(flat_ids, cache, index)
        log_probs = ops.log_softmax(_mask_padding(logits), axis=-1)
        vocabulary = log_probs.shape[-1]
        # (batch, beams * vocabulary)
        candidates = ops.reshape(
            scores[:, :, None]
            + ops.reshape(log_probs, (batch, beams, vocabulary)),
            (batch, beams * vocabulary),
        )
        top_scores, top_index = ops.top_k(candidates, 2 * beams)
        source = ops.floor_divide(top_index, vocabulary)  # (batch, 2 beams)
        tokens = ops.cast(ops.mod(top_index, vocabulary), "int32")
        candidate_ids = ops.reshape(
            _flat_take(flat_ids, source, beams), (batch, 2 * beams, length)
        )
        candidate_ids = _set_column(candidate_ids, index, tokens)

        in_prompt = index < lengths  # (batch,)
        generated = index + 1 - lengths
        is_end = tokens == end
        # Finished: ends with `end_id`, among the `beams` best, real.
        new_finished = ops.logical_and(
            ops.logical_and(is_end, ranks < beams),
            ops.logical_and(
                top_scores > _NEG / 2,
                ops.logical_not(ops.logical_or(done, in_prompt))[:, None],
            ),
        )
        pool_scores = ops.concatenate(
            [
                finished_scores,
                ops.where(
                    new_finished, normalized(top_scores, generated), _NEG
                ),
            ],
            axis=1,
        )
        pool_ids = ops.concatenate([finished_ids, candidate_ids], axis=1)
        finished_scores, best = ops.top_k(pool_scores, beams)
        finished_ids = ops.reshape(
            _flat_take(
                ops.reshape(pool_ids, (batch * 3 * beams, length)),
                best,
                3 * beams,
            ),
            (batch, beams, length),
        )

        # Live: the best extensions that do not end.
        live_scores, live = ops.top_k(
            ops.where(is_end, _NEG, top_scores), beams
        )
        live_ids = ops.reshape(
            _flat_take(
                ops.reshape(candidate_ids, (batch * 2 * beams, length)),
                live,
                2 * beams,
            ),
            (batch, beams, length),
        )
        live_source = ops.take_along_axis(source, live, axis=1)
        # Inside its prompt a row keeps its beams and writes the prompt.
        beam_ids = ops.where(in_prompt[:, None, None], beam_ids, live_ids)
        scores = ops.where(in_prompt[:, None], scores, live_scores)
        live_source = ops.where(in_prompt[:, None], keep_beams, live_source)
        cache = keras.tree.map_structure(
            lambda c: _flat_take(c, live_source, beams), cache
        )
        done = ops.logical_or(
            done,
            ops.sum(ops.cast(finished_scores > _NEG / 2, "int32"), 1) >= beams,
        )
        return (
            index + 1,
            beam_ids,
            scores,
            cache,
            finished_ids,
            finished_scores,
            done,
        )

    state = (start, beam_ids, scores, cache, finished_ids, finished_scores)
    index, beam_ids, scores, _, finished_ids, finished_scores, done = (
        ops.while_loop(cond, body, (*state, done))
    )
    live_scores = normalized(scores, index - lengths)
    live_scores = ops.where(done[:, None], _NEG, live_scores)
    all_scores = ops.concatenate([finished_scores, live_scores], axis=1)
    all_ids = ops.concatenate([finished_ids, beam_ids], axis=1)
    best = ops.cast(ops.argmax(all_scores, axis=1), "int32")[:, None]
    return ops.reshape(
        _flat_take(
            ops.reshape(all_ids, (batch * 2 * beams, length)),
            best,
            2 * beams,
        ),
        (batch, length),
    )


# ---------------------------------------------------------------- generator


def _get_layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _input_names(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return sorted(getattr(tensor, "name", None) for tensor in inputs)


class Generator:
    """Fast generation for the keras_tfm seq2seq and decoder-only models.

    Wraps a model built by `keras_tfm.models.seq2seq_transformer` or
    `keras_tfm.models.decoder_lm` (found by its input names and sublayer
    names, so a model loaded from a `.keras` file works too) and decodes
    with a key/value cache: the encoder runs once, each decoder layer
    projects the encoder outputs once, and every step embeds one token at
    its position (`start_index`; rotary positions through `cache_index`)
    and writes its keys and values into fixed-shape caches. The search is
    compiled once per input shape and search configuration and reused
    (`trace_count` counts the traces).

    Inputs:

    - seq2seq: source token ids `(batch, source_len)`, `0` being padding;
      decoding starts from `start_id` and the output excludes it.
    - decoder-only: prompts `(batch, prompt_len)`, right-padded with `0`
      (`[[5, 6, 7], [8, 0, 0]]`); each row needs at least one token. The
      output starts with each row's prompt, generation continuing right
      after it, so rows of different lengths decode in one batch.
      `start_id` is not used.

    Token `0` is never generated; `end_id` ends a row and everything after
    it is `0`. The model runs with `training=False` (no dropout).

    Args:
        model: a model from `seq2seq_transformer` or `decoder_lm`.
        jit_compile: whether TensorFlow compiles the search with XLA.
            JAX always compiles (`jax.jit`); PyTorch runs eagerly.

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
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"{_SUPPORTED}. Received: model={model!r} (not a keras.Model)"
            )
        names = _input_names(model)
        if names == ["decoder_token_ids", "encoder_token_ids"]:
            self.kind = "seq2seq"
        elif names == ["token_ids"]:
            self.kind = "decoder_lm"
        else:
            raise ValueError(
                f"{_SUPPORTED}. Received: a model with inputs {names}"
            )
        self.model = model
        self.jit_compile = bool(jit_compile)
        self.trace_count = 0
        self._functions = {}
        self._find_layers()

    def _require(self, name):
        layer = _get_layer(self.model, name)
        if layer is None:
            raise ValueError(
                f"{_SUPPORTED}; they have a layer named {name!r}. Received: "
                f"a model without it (layers: "
                f"{[layer.name for layer in self.model.layers]})"
            )
        return layer

    def _find_layers(self):
        model = self.model
        self.decoder_embedding = self._require("decoder_embedding")
        self.decoder_layers = []
        while True:
            name = f"decoder_layer_{len(self.decoder_layers)}"
            layer = _get_layer(model, name)
            if layer is None:
                break
            self.decoder_layers.append(layer)
        if not self.decoder_layers:
            self._require("decoder_layer_0")
        self.decoder_final_norm = _get_layer(model, "decoder_final_norm")
        self.output_projection = _get_layer(model, "output_projection")
        self.vocabulary_size = self.decoder_embedding.vocabulary_size
        self.encoder = None
        if self.kind == "seq2seq":
            embedding = self._require("encoder_embedding")
            last = _get_layer(model, "encoder_final_norm")
            if last is None:
                count = 0
                while _get_layer(model, f"encoder_layer_{count}") is not None:
                    count += 1
                last = self._require(f"encoder_layer_{max(count - 1, 0)}")
            # The encoder, from the model's own graph: masks flow as in it.
            self.encoder = keras.Model(
                embedding.input, last.output, name="generator_encoder"
            )
            self.encoder_embedding = embedding

    # ------------------------------------------------------------ the model

    def _head(self, x):
        if self.decoder_final_norm is not None:
            x = self.decoder_final_norm(x, training=False)
        if self.output_projection is not None:
            return self.output_projection(x, training=False)
        return self.decoder_embedding.token_embedding(x, reverse=True)

    def _run_blocks(self, x, caches, cache_index, sources):
        new_caches = []
        for block, cache, source in zip(
            self.decoder_layers, caches, sources, strict=True
        ):
            kwargs = {}
            if source is not None:
                kwargs = dict(
                    cross_attention_cache=source[0],
                    encoder_padding_mask=source[1],
                )
            x, cache = block(
                x,
                cache=cache,
                cache_index=cache_index,
                training=False,
                **kwargs,
            )
            new_caches.append(cache)
        return x, tuple(new_caches)

    def _search(self, config, inputs, lengths, floats, integers):
        """The whole generation for one configuration (traced once)."""
        kind, batch, _, length, sampler, beams, top_k, use_top_p = config[:8]
        use_cache, has_end = config[8:]
        temperature, top_p, length_penalty = floats[0], floats[1], floats[2]
        seed, start_id = integers[0], integers[1]
        end_id = integers[2] if has_end else None
        if self.kind == "seq2seq":
            source = inputs
            source_mask = source != 0
            first = ops.arange(length, dtype="int32") == 0
            ids = ops.where(first, start_id, 0) * ops.ones(
                (batch, 1), dtype="int32"
            )
        else:
            source = source_mask = None
            ids = ops.pad(inputs, [[0, 0], [0, length - inputs.shape[1]]])

        if use_cache:
            caches = tuple(
                block.self_attention.empty_cache(batch, length)
                for block in self.decoder_layers
            )
            sources = [None] * len(self.decoder_layers)
            if source is not None:
                encoded = self.encoder(source, training=False)
                sources = [
                    (block.compute_cross_attention_cache(encoded), source_mask)
                    for block in self.decoder_layers
                ]
            else:
                # Prefill the prompts' keys and values in one call. Rows
                # shorter than the widest prompt get keys for padding there;
                # the loop rewrites each slot before any query can see it.
                x = self.decoder_embedding(
                    inputs, start_index=0, training=False
                )
                _, caches = self._run_blocks(x, caches, 0, sources)
            expand = beams if sampler == "beam" else 1

            def next_logits(ids, caches, index):
                rows = ops.shape(ids)[0]
                tokens = ops.slice(ids, [0, index - 1], [rows, 1])
                x = self.decoder_embedding(
                    tokens, start_index=index - 1, training=False
                )
                x, caches = self._run_blocks(x, caches, index - 1, beam_sources)
                return self._head(x)[:, 0], caches

            beam_sources = [
                None
                if item is None
                else tuple(_repeat_rows(t, expand) for t in item)
                for item in sources
            ]
        else:
            caches = ()
            beam_sources = None
            expand = beams if sampler == "beam" else 1
            repeated_source = (
                None if source is None else _repeat_rows(source, expand)
            )

            def next_logits(ids, caches, index):
                # The whole prefix again (all positions the output needs).
                decoder_ids = ids[:, : length - 1]
                if repeated_source is None:
                    logits = self.model(decoder_ids, training=False)
                else:
                    logits = self.model(
                        {
                            "encoder_token_ids": repeated_source,
                            "decoder_token_ids": decoder_ids,
                        },
                        training=False,
                    )
                return ops.take(logits, index - 1, axis=1), caches

        if sampler == "beam":
            return beam_search(
                next_logits,
                ids,
                lengths,
                caches,
                num_beams=beams,
                length_penalty=length_penalty,
                end_id=end_id,
            )
        return decode(
            next_logits,
            ids,
            lengths,
            caches,
            end_id=end_id,
            sampler=sampler,
            top_k=top_k,
            top_p=top_p if use_top_p else None,
            temperature=temperature,
            seed=seed,
        )

    def _compiled(self, config):
        function = self._functions.get(config)
        if function is not None:
            return function
        backend = keras.backend.backend()

        def search(inputs, lengths, floats, integers):
            return self._search(config, inputs, lengths, floats, integers)

        def traced(*args):
            self.trace_count += 1  # runs once per trace, not per call
            return search(*args)

        if backend == "jax":
            import jax

            variables = self.model.variables

            def stateless(values, *args):
                mapping = list(zip(variables, values, strict=True))
                with keras.StatelessScope(state_mapping=mapping):
                    return traced(*args)

            jitted = jax.jit(stateless)

            def function(*args):
                return jitted([v.value for v in variables], *args)

        elif backend == "tensorflow":
            import tensorflow as tf

            function = tf.function(
                traced, jit_compile=self.jit_compile, reduce_retracing=False
            )
        elif backend == "torch":
            import torch

            def function(*args):
                with torch.no_grad():
                    return search(*args)

        else:
            function = search
        self._functions[config] = function
        return function

    # ------------------------------------------------------------ generate

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
        if self.kind == "seq2seq":
            vocabulary = self.encoder_embedding.vocabulary_size
            name = "encoder_embedding"
            table = self.encoder_embedding
        else:
            vocabulary = self.vocabulary_size
            name = "decoder_embedding"
            table = self.decoder_embedding
        if array.min() < 0 or array.max() >= vocabulary:
            raise ValueError(
                f"`inputs` must be token ids in [0, {vocabulary}). Received: "
                f"ids from {array.min()} to {array.max()}"
            )
        if table.position == "learned" and array.shape[1] > (
            table.sequence_length
        ):
            raise ValueError(
                f"`inputs` of length {array.shape[1]} is longer than the "
                f"learned position table of {name!r}: sequence_length="
                f"{table.sequence_length}"
            )
        array = array.astype("int32")
        if self.kind == "seq2seq":
            lengths = np.ones((array.shape[0],), dtype="int32")
            return array, lengths
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

    def generate(
        self,
        inputs,
        max_length,
        *,
        start_id=1,
        end_id=2,
        sampler="greedy",
        num_beams=4,
        length_penalty=1.0,
        top_k=None,
        top_p=None,
        temperature=1.0,
        seed=None,
        use_cache=True,
    ):
        """Generate token ids.

        Args:
            inputs: integer array-like `(batch, length)`: source ids for a
                seq2seq model, right-padded prompts for a decoder-only one
                (see the class docstring).
            max_length: output length: generated tokens for seq2seq, prompt
                plus generated tokens for decoder-only. With learned
                positions it must fit the position table.
            start_id: first decoder token (seq2seq only).
            end_id: token that ends a row, or None to always generate
                `max_length` tokens.
            sampler: `"greedy"`, `"beam"`, `"top_k"` or `"top_p"`.
            num_beams: beams of `sampler="beam"`.
            length_penalty: beam scores are `log_prob / length **
                length_penalty` (`sampler="beam"`).
            top_k: sample from the `top_k` most likely tokens. Required by
                `sampler="top_k"`; also applied by `"top_p"` when given.
            top_p: sample from the smallest set of most likely tokens whose
                probability reaches `top_p`, in (0, 1]. Required by
                `sampler="top_p"`; also applied by `"top_k"` when given.
            temperature: logits are divided by it before sampling; must be
                positive (greedy and beam search do not depend on it).
            seed: integer seed of the sampling samplers: the same seed gives
                the same tokens (on every backend). None draws one.
            use_cache: decode with the key/value cache. With False every
                step runs the whole model over the full fixed-shape buffer
                (quadratic cost; for comparisons).

        Returns:
            int32 numpy array `(batch, max_length)`.
        """
        check_positive_int("max_length", max_length)
        check_choice("sampler", sampler, SAMPLERS)
        check_positive_int("num_beams", num_beams)
        check_positive_int("top_k", top_k, allow_none=True)
        if top_p is not None and (
            isinstance(top_p, bool)
            or not isinstance(top_p, (int, float))
            or not 0 < top_p <= 1
        ):
            raise ValueError(
                f"`top_p` must be a number in (0, 1]. Received: top_p={top_p!r}"
            )
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not temperature > 0
            or math.isinf(temperature)
        ):
            raise ValueError(
                "`temperature` must be a positive number. Received: "
                f"temperature={temperature!r}"
            )
        if (
            isinstance(length_penalty, bool)
            or not isinstance(length_penalty, (int, float))
            or not math.isfinite(length_penalty)
        ):
            raise ValueError(
                "`length_penalty` must be a finite number. Received: "
                f"length_penalty={length_penalty!r}"
            )
        if sampler == "top_k" and top_k is None:
            raise ValueError(
                'sampler="top_k" needs `top_k`. Received: top_k=None'
            )
        if sampler == "top_p" and top_p is None:
            raise ValueError(
                'sampler="top_p" needs `top_p`. Received: top_p=None'
            )
        for name, value in (("start_id", start_id), ("end_id", end_id)):
            if value is None and name == "end_id":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or not 0 < value < self.vocabulary_size
            ):
                raise ValueError(
                    f"`{name}` must be a token id in [1, "
                    f"{self.vocabulary_size}) (0 is padding). Received: "
                    f"{name}={value!r}"
                )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
        ):
            raise ValueError(
                f"`seed` must be an integer or None. Received: seed={seed!r}"
            )
        table = self.decoder_embedding
        if table.position == "learned" and max_length > table.sequence_length:
            raise ValueError(
                f"`max_length`={max_length} is longer than the learned "
                "position table of the decoder: sequence_length="
                f"{table.sequence_length}"
            )
        array, lengths = self._prepare(inputs, max_length)
        # Buffer length: seq2seq keeps the start token in front.
        length = max_length + 1 if self.kind == "seq2seq" else max_length
        if self.kind == "decoder_lm" and lengths.min() >= length:
            return array[:, :length].copy()
        sampling = sampler in ("top_k", "top_p")
        config = (
            self.kind,
            array.shape[0],
            array.shape[1],
            length,
            sampler,
            num_beams if sampler == "beam" else None,
            top_k if sampling else None,
            sampling and top_p is not None,
            bool(use_cache),
            end_id is not None,
        )
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        floats = np.array(
            [temperature, top_p or 1.0, length_penalty], dtype="float32"
        )
        integers = np.array(
            [int(seed) % (2**31), start_id, -1 if end_id is None else end_id],
            dtype="int32",
        )
        function = self._compiled(config)
        ids = function(
            ops.convert_to_tensor(array),
            ops.convert_to_tensor(lengths),
            ops.convert_to_tensor(floats),
            ops.convert_to_tensor(integers),
        )
        ids = np.asarray(ops.convert_to_numpy(ids), dtype="int32")
        return ids[:, 1:] if self.kind == "seq2seq" else ids
