"""Tests of keras_tfm.search: the decoding loops on bigram tables.

`next_logits` reads a fixed (vocabulary, vocabulary) table of
log-probabilities by the previous token, so the best sequences are known
in closed form and the loops run without a Transformer.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_tfm.search import beam_search, decode
from tests.helpers import START, markov, start_buffer, table_from

END, A, B, C, D = 2, 3, 4, 5, 6
# Greedy takes A (0.55) and ends with 0.55 * 0.36 = 0.198; B then END has
# 0.45 * 0.9 = 0.405.
TRAP = table_from(
    {
        START: {A: 0.55, B: 0.45},
        A: {END: 0.30, C: 0.36, D: 0.34},
        B: {END: 0.90, C: 0.05, D: 0.05},
        C: {END: 1.0},
        D: {END: 1.0},
    },
    7,
)


def search(function, table, length=5, **kwargs):
    ids, lengths = start_buffer(1, length)
    cache = ops.zeros((1, 1))
    out = function(markov(table), ids, lengths, cache, **kwargs)
    return ops.convert_to_numpy(out)[0, 1:].tolist()


def test_beam_search_beats_greedy_where_greedy_is_suboptimal():
    greedy = search(decode, TRAP, stop_ids=[END])
    assert greedy == [A, C, END, 0]
    assert search(beam_search, TRAP, stop_ids=[END], num_beams=1) == greedy
    for length_penalty in (0.0, 1.0):
        beam = search(
            beam_search,
            TRAP,
            stop_ids=[END],
            num_beams=2,
            length_penalty=length_penalty,
        )
        assert beam == [B, END, 0, 0]


def test_beam_search_keeps_finished_hypotheses():
    # Ending at once (0.5) beats every longer sequence (at most 0.25 * 1),
    # but the live beams go on after it has finished.
    table = table_from(
        {
            START: {END: 0.5, A: 0.25, B: 0.25},
            A: {C: 0.5, D: 0.5},
            B: {C: 0.5, D: 0.5},
            C: {A: 0.5, B: 0.5},
            D: {A: 0.5, B: 0.5},
        },
        7,
    )
    for length_penalty in (0.0, 1.0):
        beam = search(
            beam_search,
            table,
            length=6,
            stop_ids=[END],
            num_beams=2,
            length_penalty=length_penalty,
        )
        assert beam == [END, 0, 0, 0, 0]


def test_length_penalty_can_prefer_longer_hypotheses():
    # [A, END] = 0.65 * 0.55 = 0.3575 (mean log-prob -0.51) has the best
    # total; [B, C, END] = 0.35 * 0.9 * 0.9 = 0.2835 (mean -0.42) the best
    # mean.
    table = table_from(
        {
            START: {A: 0.65, B: 0.35},
            A: {END: 0.55, D: 0.45},
            B: {C: 0.9, D: 0.1},
            C: {END: 0.9, C: 0.1},
            D: {END: 0.6, C: 0.4},
        },
        7,
    )
    kwargs = dict(length=6, stop_ids=[END], num_beams=2)
    total = search(beam_search, table, length_penalty=0.0, **kwargs)
    mean = search(beam_search, table, length_penalty=1.0, **kwargs)
    assert total == [A, END, 0, 0, 0]
    assert mean == [B, C, END, 0, 0]


@settings(max_examples=3)
@given(seed=st.integers(0, 2**16))
def test_beam_search_is_exhaustive_when_beams_cover_everything(seed):
    # 3 real tokens, 3 steps: 27 sequences. With 9 beams nothing is pruned,
    # so beam search finds the most likely sequence; with one beam it is
    # greedy.
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (4, 4))
    logits[:, 0] = -30.0  # padding, never generated
    table = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def score(seq):
        return (
            table[START, seq[0]] + table[seq[0], seq[1]] + table[seq[1], seq[2]]
        )

    best = max(itertools.product((1, 2, 3), repeat=3), key=score)
    found = search(beam_search, table, length=4, num_beams=9)
    # Sequences that take the same transitions in another order tie
    # exactly (1-3-1 and 3-1-1 after START 1): either is the best.
    assert set(found) <= {1, 2, 3} and len(found) == 3
    assert score(found) == pytest.approx(score(best), abs=1e-9)
    greedy = search(decode, table, length=4)
    one_beam = search(beam_search, table, length=4, num_beams=1)
    assert one_beam == greedy


def test_decode_keeps_prompts_of_different_lengths():
    table = table_from({k: {k % 6 + 1: 1.0} for k in range(1, 7)}, 7)
    ids = np.array([[3, 0, 0, 0, 0], [4, 5, 6, 0, 0]], "int32")
    lengths = np.array([1, 3], "int32")
    cache = ops.zeros((2, 1))
    for function, kwargs in ((decode, {}), (beam_search, {"num_beams": 2})):
        out = function(
            markov(table), ids, lengths, cache, stop_ids=[2], **kwargs
        )
        np.testing.assert_array_equal(
            ops.convert_to_numpy(out), [[3, 4, 5, 6, 1], [4, 5, 6, 1, 2]]
        )


def test_decode_zeroes_the_buffer_after_every_row_finished():
    table = table_from({k: {2: 1.0} for k in range(1, 7)}, 7)
    ids = np.array([[3, 9, 9, 9, 9], [4, 5, 9, 9, 9]], "int32")
    lengths = np.array([1, 2], "int32")
    out = decode(markov(table), ids, lengths, ops.zeros((2, 1)), stop_ids=[2])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(out), [[3, 2, 0, 0, 0], [4, 5, 2, 0, 0]]
    )
