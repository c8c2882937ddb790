"""Decoding loops over a fixed-shape buffer: `decode` and `beam_search`.

Both take any `next_logits(ids, cache, index) -> (logits, cache)`
function, so they run (and are tested) without a Transformer, and both are
one `keras.ops.while_loop` over fixed-shape state, so they compile once
per shape (on PyTorch, which runs eagerly, the same body in a Python
loop). Each step reads and writes one column of the token buffer with a
dynamic slice, so its cost does not grow with the buffer. Positions
`< lengths[b]` of row `b` are its prompt and are kept; a row that
generates one of `stop_ids` is finished, and every later position of it
holds the padding id (`pad_id`, `0` when it is None). The padding id is
never generated; with `pad_id=None` every id can be.

The loop state has names: `DecodeState` and `BeamState`.
"""

from typing import Any, NamedTuple

import keras
from keras import ops

from keras_tfm import _backend, sampling

NEG = sampling.NEG


def _is_stop(tokens, stop_ids):
    """Whether each token is one of `stop_ids` (int32 `(count,)` or None)."""
    if stop_ids is None:
        return ops.zeros(ops.shape(tokens), dtype="bool")
    return ops.any(ops.expand_dims(tokens, -1) == stop_ids, axis=-1)


def _stop_tensor(stop_ids):
    if stop_ids is None:
        return None
    stop_ids = ops.convert_to_tensor(stop_ids, dtype="int32")
    return ops.reshape(stop_ids, (-1,))


def fill_id(pad_id):
    """What fills a row after it ends: the padding id, or `0` without one.

    Example:

    >>> fill_id(3), fill_id(None)
    (3, 0)
    """
    return 0 if pad_id is None else pad_id


class DecodeState(NamedTuple):
    """The state of the greedy or sampling loop.

    Attributes:
        index: the next position to fill (a scalar; an int on PyTorch).
        ids: int32 `(batch, length)` token buffer.
        cache: whatever `next_logits` carries (a model's cache).
        finished: bool `(batch,)`: rows that generated a stop id.
    """

    index: Any
    ids: Any
    cache: Any
    finished: Any


class BeamState(NamedTuple):
    """The state of the beam search loop.

    Attributes:
        index: the next position to fill.
        beam_ids: int32 `(batch, beams, length)` live hypotheses.
        scores: float32 `(batch, beams)` their total log-probabilities.
        cache: the cache of the `batch * beams` live rows.
        finished_ids: int32 `(batch, beams, length)` finished hypotheses.
        finished_scores: float32 `(batch, beams)` their normalized scores.
        done: bool `(batch,)`: rows holding `beams` finished hypotheses.
    """

    index: Any
    beam_ids: Any
    scores: Any
    cache: Any
    finished_ids: Any
    finished_scores: Any
    done: Any


def start_state(ids, lengths, cache, pad_id=0):
    """The `DecodeState` before the first step: positions after each
    prompt hold `fill_id(pad_id)`.

    Example:

    >>> import numpy as np
    >>> state = start_state(np.array([[3, 9, 9], [1, 2, 9]]), [1, 2], ())
    >>> ops.convert_to_numpy(state.ids).tolist(), int(state.index)
    ([[3, 0, 0], [1, 2, 0]], 1)
    """
    ids = ops.convert_to_tensor(ids, dtype="int32")
    lengths = ops.convert_to_tensor(lengths, dtype="int32")
    positions = ops.arange(ids.shape[-1], dtype="int32")[None, :]
    ids = ops.where(positions < lengths[:, None], ids, fill_id(pad_id))
    finished = ops.zeros(ops.shape(lengths), dtype="bool")
    return DecodeState(
        _backend.loop_index(ops.min(lengths)), ids, cache, finished
    )


def decode_steps(
    next_logits,
    state,
    lengths,
    *,
    sampler=None,
    stop_ids=None,
    seed=0,
    until=None,
    pad_id=0,
):
    """Run the greedy or sampling loop from `state` up to position `until`.

    Args:
        next_logits: `next_logits(ids, cache, index) -> (logits, cache)`:
            float logits `(batch, vocabulary)` of the token at position
            `index` given `ids[:, :index]`, and the updated cache.
        state: a `DecodeState` from `start_state` or a previous call.
        lengths: int32 `(batch,)` prompt lengths.
        sampler: a `keras_tfm.sampling` sampler (not beam); greedy if None.
            It reads its own settings (`sampler.temperature`, ...), which
            may be tensors (`Sampler.with_settings`).
        stop_ids: int32 `(count,)` ids that finish a row, or None.
        seed: int32 scalar seed of the sampling samplers.
        until: stop before this position (default: the buffer length).
        pad_id: the id never generated and written after a row ends (None:
            any id can be generated, and `0` is written).

    Returns:
        The new `DecodeState`; the loop also ends once every row is
        finished.

    Example:

    >>> import numpy as np
    >>> def next_logits(ids, cache, index):  # always "previous token + 1"
    ...     previous = ops.take(ids, index - 1, axis=1)
    ...     return ops.one_hot(previous + 1, 8), cache
    >>> ids = np.array([[3, 0, 0, 0, 0]], "int32")
    >>> state = start_state(ids, [1], ())
    >>> state = decode_steps(next_logits, state, [1], until=3)
    >>> ops.convert_to_numpy(state.ids).tolist()
    [[3, 4, 5, 0, 0]]
    >>> state = decode_steps(next_logits, state, [1])  # on to the end
    >>> ops.convert_to_numpy(state.ids).tolist()
    [[3, 4, 5, 6, 7]]
    """
    sampler = sampler or sampling.GreedySampler()
    stop_ids = _stop_tensor(stop_ids)
    lengths = ops.convert_to_tensor(lengths, dtype="int32")
    state = DecodeState(*state)
    state = state._replace(index=_backend.loop_index(state.index))
    length = state.ids.shape[-1]
    until = length if until is None else until
    end = ops.minimum(until, length)
    fill = fill_id(pad_id)

    # Without stop ids no row finishes: neither `cond` nor `body` spends
    # work on `finished` (which stays all False).
    def cond(state):
        if stop_ids is None:
            return state.index < end
        return ops.logical_and(
            state.index < end, ops.logical_not(ops.all(state.finished))
        )

    def body(state):
        index, ids, finished = state.index, state.ids, state.finished
        logits, cache = next_logits(ids, state.cache, index)
        tokens = sampler.choose(logits, index, seed, pad_id)
        if stop_ids is not None:
            tokens = ops.where(finished, fill, tokens)
        in_prompt = index < lengths
        tokens = ops.where(in_prompt, _backend.column(ids, index), tokens)
        if stop_ids is not None:
            finished = ops.logical_or(
                finished,
                ops.logical_and(
                    ops.logical_not(in_prompt), _is_stop(tokens, stop_ids)
                ),
            )
        ids = _backend.set_column(ids, index, tokens)
        return DecodeState(index + 1, ids, cache, finished)

    return _backend.while_loop(cond, body, state)


def decode(
    next_logits,
    ids,
    lengths,
    cache,
    *,
    sampler=None,
    stop_ids=None,
    seed=0,
    pad_id=0,
):
    """Greedy or sampled decoding over a fixed-shape buffer.

    Positions `< lengths[b]` of row `b` are its prompt and are kept; every
    later position is generated, one step per position, from the logits
    `next_logits` returns. A row that generates one of `stop_ids` is
    finished and every later position of it is `fill_id(pad_id)` (also
    when the loop ends early because every row has finished).

    Args:
        next_logits: `next_logits(ids, cache, index) -> (logits, cache)`.
        ids: int32 `(batch, length)` buffer holding the prompts.
        lengths: int32 `(batch,)` prompt lengths, at least 1.
        cache: the initial cache passed to `next_logits` (any nest of
            tensors whose shapes do not change).
        sampler: a sampler from `keras_tfm.sampling` (greedy if None).
        stop_ids: ids that end a row, or None.
        seed: int32 scalar; samples are a pure function of the seed.
        pad_id: the id never generated, written after a row ends; None
            lets every id be generated (and writes `0`).

    Returns:
        int32 `(batch, length)`: the prompts followed by the generated
        tokens.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> def next_logits(ids, cache, index):  # always "previous token + 1"
    ...     previous = ops.take(ids, index - 1, axis=1)
    ...     return ops.one_hot(previous + 1, 8), cache
    >>> ids = np.array([[3, 0, 0, 0, 0], [1, 2, 0, 0, 0]], "int32")
    >>> out = decode(next_logits, ids, [1, 2], (), stop_ids=[5])
    >>> ops.convert_to_numpy(out).tolist()
    [[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]]
    """
    state = decode_steps(
        next_logits,
        start_state(ids, lengths, cache, pad_id),
        lengths,
        sampler=sampler,
        stop_ids=stop_ids,
        seed=seed,
        pad_id=pad_id,
    )
    return state.ids


def _flat_take(x, batch_index, width):
    """`x[b * width + batch_index[b, j]]` for x `(batch * width, ...)`."""
    batch, count = batch_index.shape
    rows = ops.arange(batch, dtype="int32")[:, None] * width
    flat = ops.reshape(rows + ops.cast(batch_index, "int32"), (-1,))
    return ops.take(x, flat, axis=0)


def repeat_rows(x, times):
    """`(batch, ...)` -> `(batch * times, ...)`, each row `times` times.

    Example:

    >>> import numpy as np
    >>> out = repeat_rows(np.array([[1, 2], [3, 4]]), 2)
    >>> ops.convert_to_numpy(out).tolist()
    [[1, 2], [1, 2], [3, 4], [3, 4]]
    """
    return ops.repeat(x, times, axis=0)


def beam_search(
    next_logits,
    ids,
    lengths,
    cache,
    *,
    num_beams=4,
    length_penalty=1.0,
    stop_ids=None,
    return_all=False,
    pad_id=0,
):
    """Beam search over a fixed-shape buffer.

    Each row keeps `num_beams` live hypotheses. At each step the `2 *
    num_beams` best one-token extensions (by total log-probability) are
    found; those ending in a stop id among the `num_beams` best join the
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
        stop_ids: ids that end a hypothesis, or None.
        return_all: also return every beam.
        pad_id: the id never generated, written after a hypothesis ends;
            None lets every id be generated (and writes `0`).

    Returns:
        int32 `(batch, length)`: the best hypothesis of each row,
        `fill_id(pad_id)` after its stop id. With `return_all=True`, the
        pair `(ids, scores)`: int32 `(batch, num_beams, length)` and
        float32 `(batch, num_beams)`, best first.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> def next_logits(ids, cache, index):
    ...     previous = ops.take(ids, index - 1, axis=1)
    ...     return ops.one_hot(previous + 1, 8) * 5.0, cache
    >>> ids = np.array([[3, 0, 0, 0]], "int32")
    >>> out = beam_search(next_logits, ids, [1], (), num_beams=2,
    ...                   stop_ids=[5])
    >>> ops.convert_to_numpy(out).tolist()
    [[3, 4, 5, 0]]
    """
    stop_ids = _stop_tensor(stop_ids)
    fill = fill_id(pad_id)
    ids = start_state(ids, lengths, cache, pad_id).ids
    lengths = ops.convert_to_tensor(lengths, dtype="int32")
    batch, length = ids.shape
    beams = num_beams
    penalty = ops.cast(length_penalty, "float32")
    start = _backend.loop_index(ops.min(lengths))
    beam_ids = ops.reshape(
        repeat_rows(ids, beams), (batch, beams, length)
    )  # (batch, beams, length)
    cache = keras.tree.map_structure(lambda c: repeat_rows(c, beams), cache)
    # Only beam 0 is live at first: the beams start identical.
    first = ops.arange(beams, dtype="int32") == 0
    scores = ops.where(first, 0.0, NEG) * ops.ones((batch, 1), "float32")
    finished_ids = ops.full((batch, beams, length), fill, dtype="int32")
    finished_scores = ops.full((batch, beams), NEG, dtype="float32")
    done = ops.zeros((batch,), dtype="bool")
    keep_beams = ops.arange(beams, dtype="int32")[None, :] * ops.ones(
        (batch, 1), "int32"
    )
    ranks = ops.arange(2 * beams, dtype="int32")[None, :]

    def normalized(log_probs, generated):
        generated = ops.cast(ops.maximum(generated, 1), "float32")
        return log_probs / ops.power(generated, penalty)[:, None]

    def cond(state):
        return ops.logical_and(
            state.index < length, ops.logical_not(ops.all(state.done))
        )

    def body(state):
        index, beam_ids, scores, done = (
            state.index,
            state.beam_ids,
            state.scores,
            state.done,
        )
        flat_ids = ops.reshape(beam_ids, (batch * beams, length))
        logits, cache = next_logits(flat_ids, state.cache, index)
        log_probs = ops.log_softmax(
            sampling.mask_padding(logits, pad_id), axis=-1
        )
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
        candidate_ids = _backend.set_column(candidate_ids, index, tokens)

        in_prompt = index < lengths  # (batch,)
        generated = index + 1 - lengths
        is_end = _is_stop(tokens, stop_ids)
        # Finished: ends with a stop id, among the `beams` best, real.
        new_finished = ops.logical_and(
            ops.logical_and(is_end, ranks < beams),
            ops.logical_and(
                top_scores > NEG / 2,
                ops.logical_not(ops.logical_or(done, in_prompt))[:, None],
            ),
        )
        pool_scores = ops.concatenate(
            [
                state.finished_scores,
                ops.where(new_finished, normalized(top_scores, generated), NEG),
            ],
            axis=1,
        )
        pool_ids = ops.concatenate([state.finished_ids, candidate_ids], axis=1)
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
        live_scores, live = ops.top_k(ops.where(is_end, NEG, top_scores), beams)
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
            ops.sum(ops.cast(finished_scores > NEG / 2, "int32"), 1) >= beams,
        )
        return BeamState(
            index + 1,
            beam_ids,
            scores,
            cache,
            finished_ids,
            finished_scores,
            done,
        )

    state = BeamState(
        start, beam_ids, scores, cache, finished_ids, finished_scores, done
    )
    state = _backend.while_loop(cond, body, state)
    live_scores = normalized(state.scores, state.index - lengths)
    live_scores = ops.where(state.done[:, None], NEG, live_scores)
    all_scores = ops.concatenate([state.finished_scores, live_scores], axis=1)
    all_ids = ops.concatenate([state.finished_ids, state.beam_ids], axis=1)
    if return_all:
        best_scores, best = ops.top_k(all_scores, beams)
    else:
        best_scores = None
        best = ops.cast(ops.argmax(all_scores, axis=1), "int32")[:, None]
    count = beams if return_all else 1
    best_ids = ops.reshape(
        _flat_take(
            ops.reshape(all_ids, (batch * 2 * beams, length)),
            best,
            2 * beams,
        ),
        (batch, count, length),
    )
    if return_all:
        return best_ids, best_scores
    return ops.reshape(best_ids, (batch, length))
