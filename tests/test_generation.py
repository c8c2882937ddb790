"""Tests of keras_tfm.generation: cached search equals full recomputation.

Tiny models (width 16, 2 heads, vocabulary 20, length 8) get random normal
weights large enough that outputs vary from step to step and the best
logit wins by far more than float error, so token-for-token comparisons
test the cache and positions rather than rounding.
"""

import itertools
import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_tfm import generation
from keras_tfm.generation import Generator, beam_search, decode
from keras_tfm.models import decoder_lm, encoder_classifier, seq2seq_transformer

VOCAB = 20
SEQ = 8
POSITIONS = ("sinusoidal", "learned", "rotary", "none")
PROMPTS = np.array([[3, 4, 0], [5, 6, 7]])
SOURCE = np.array([[3, 4, 5, 0], [6, 7, 8, 9]])
COMPILED = keras.backend.backend() in ("jax", "tensorflow")


def randomize(model, seed, scale=3.0):
    """Random normal matrices (std scale/sqrt(fan_in)): varied outputs."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if len(variable.shape) == 2:
            std = scale / math.sqrt(variable.shape[0])
            variable.assign(rng.normal(0.0, std, variable.shape))
    return model


def make_model(kind, position="sinusoidal", seed=0, **kwargs):
    common = dict(
        num_layers=1,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.2,  # must be off while generating
        position=position,
    )
    common.update(kwargs)
    if kind == "seq2seq":
        model = seq2seq_transformer(VOCAB, SEQ, **common)
    else:
        model = decoder_lm(VOCAB, SEQ, **common)
    return randomize(model, seed)


def make_generator(model):
    # TensorFlow without XLA in most tests, to keep compile times short;
    # `test_no_recompilation` covers XLA.
    return Generator(model, jit_compile=False)


def inputs_for(kind):
    return SOURCE if kind == "seq2seq" else PROMPTS


def full_logits(model, kind, outputs):
    """The model's logits on its own outputs, one call, no cache."""
    if kind == "seq2seq":
        decoder_ids = np.concatenate(
            [np.ones((len(outputs), 1), "int32"), outputs[:, :-1]], axis=1
        )
        logits = model(
            {"encoder_token_ids": SOURCE, "decoder_token_ids": decoder_ids},
            training=False,
        )
        return ops.convert_to_numpy(logits)
    logits = model(outputs[:, :-1], training=False)
    return np.pad(ops.convert_to_numpy(logits), [(0, 0), (1, 0), (0, 0)])


def assert_greedy_is_argmax(model, kind, outputs):
    """Each generated token is the argmax (padding excluded) of the full
    model's logits over the tokens before it."""
    logits = full_logits(model, kind, outputs)
    first = 0 if kind == "seq2seq" else None
    for row, output in enumerate(outputs):
        start = first if first is not None else int((PROMPTS[row] > 0).sum())
        for position in range(start, outputs.shape[1]):
            expected = int(np.argmax(logits[row, position, 1:])) + 1
            assert output[position] == expected, (row, position)


# ------------------------------------------------ cached == uncached, model


@pytest.mark.parametrize(
    "kind, position",
    list(itertools.product(("seq2seq", "decoder_lm"), POSITIONS)),
)
def test_cached_greedy_equals_uncached(kind, position):
    model = make_model(kind, position, seed=POSITIONS.index(position))
    generator = make_generator(model)
    cached = generator.generate(inputs_for(kind), 6, end_id=None)
    uncached = generator.generate(
        inputs_for(kind), 6, end_id=None, use_cache=False
    )
    assert cached.shape == (2, 6) and cached.dtype == np.int32
    np.testing.assert_array_equal(cached, uncached)
    if kind == "decoder_lm":
        np.testing.assert_array_equal(cached[:, :3] * (PROMPTS > 0), PROMPTS)
    assert_greedy_is_argmax(model, kind, cached)
    # Not a constant sequence: positions and the cache are exercised.
    generated = cached if kind == "seq2seq" else cached[:, 3:]
    assert len(np.unique(generated)) > 1


@pytest.mark.parametrize("kind", ("seq2seq", "decoder_lm"))
def test_cached_equals_uncached_pre_norm_untied(kind):
    # Two pre-norm RMS decoder layers (final norm), rotary, and an untied
    # head (`output_projection`) or a separate target vocabulary.
    extra = (
        dict(target_vocabulary_size=VOCAB - 3, num_decoder_layers=2)
        if kind == "seq2seq"
        else dict(tie_embeddings=False, num_layers=2)
    )
    model = make_model(
        kind,
        "rotary",
        seed=7,
        norm_first=True,
        normalization="rms",
        **extra,
    )
    generator = make_generator(model)
    cached = generator.generate(inputs_for(kind), 7, end_id=None)
    uncached = generator.generate(
        inputs_for(kind), 7, end_id=None, use_cache=False
    )
    np.testing.assert_array_equal(cached, uncached)
    assert_greedy_is_argmax(model, kind, cached)


@pytest.mark.parametrize(
    "kind, position", [("seq2seq", "learned"), ("decoder_lm", "rotary")]
)
def test_cached_beam_search_equals_uncached(kind, position):
    # Beams reorder the caches at every step.
    model = make_model(kind, position, seed=3, num_layers=2)
    generator = make_generator(model)
    kwargs = dict(sampler="beam", num_beams=3, end_id=5)
    cached = generator.generate(inputs_for(kind), 6, **kwargs)
    uncached = generator.generate(
        inputs_for(kind), 6, use_cache=False, **kwargs
    )
    np.testing.assert_array_equal(cached, uncached)


def test_cached_sampling_equals_uncached():
    model = make_model("decoder_lm", "learned", seed=4)
    generator = make_generator(model)
    kwargs = dict(sampler="top_p", top_p=0.9, top_k=8, temperature=2.0, seed=11)
    cached = generator.generate(PROMPTS, 8, end_id=None, **kwargs)
    uncached = generator.generate(
        PROMPTS, 8, end_id=None, use_cache=False, **kwargs
    )
    np.testing.assert_array_equal(cached, uncached)


# ---------------------------------------------------- samplers vs greedy


@pytest.mark.parametrize("kind", ("seq2seq", "decoder_lm"))
def test_beam_with_one_beam_equals_greedy(kind):
    model = make_model(kind, "sinusoidal", seed=5)
    generator = make_generator(model)
    greedy = generator.generate(inputs_for(kind), 6, end_id=None)
    beam = generator.generate(
        inputs_for(kind), 6, end_id=None, sampler="beam", num_beams=1
    )
    np.testing.assert_array_equal(beam, greedy)


def test_top_k_one_and_tiny_top_p_equal_greedy():
    model = make_model("decoder_lm", "rotary", seed=6)
    generator = make_generator(model)
    greedy = generator.generate(PROMPTS, 8, end_id=None)
    top_k = generator.generate(
        PROMPTS, 8, end_id=None, sampler="top_k", top_k=1, seed=1
    )
    top_p = generator.generate(
        PROMPTS, 8, end_id=None, sampler="top_p", top_p=1e-6, seed=2
    )
    np.testing.assert_array_equal(top_k, greedy)
    np.testing.assert_array_equal(top_p, greedy)


def test_seeded_sampling_is_reproducible():
    model = make_model("seq2seq", "sinusoidal", seed=8)
    generator = make_generator(model)
    kwargs = dict(sampler="top_k", top_k=10, temperature=5.0, end_id=None)
    first = generator.generate(SOURCE, 8, seed=123, **kwargs)
    again = generator.generate(SOURCE, 8, seed=123, **kwargs)
    other = generator.generate(SOURCE, 8, seed=124, **kwargs)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    assert first.min() >= 1  # padding is never generated


def test_gumbel_noise_matches_numpy_reference():
    # Same seeds, same samples on every backend: the hash is exact.
    def lowbias32(x):
        x = x.astype(np.uint32)
        x ^= x >> np.uint32(16)
        x = (x * np.uint32(0x7FEB352D)).astype(np.uint32)
        x ^= x >> np.uint32(15)
        x = (x * np.uint32(0x846CA68B)).astype(np.uint32)
        x ^= x >> np.uint32(16)
        return x

    seed, index, shape = 123456789, 37, (3, 11)
    with np.errstate(over="ignore"):
        key = lowbias32(
            lowbias32(np.array(seed))
            ^ (np.uint32(index) * np.uint32(0x27D4EB2F))
        )
        counter = np.arange(shape[0] * shape[1]).reshape(shape)
        bits = lowbias32(counter.astype(np.uint32) ^ key)
    uniform = ((bits >> np.uint32(9)).astype(np.float64) + 0.5) / 2**23
    expected = -np.log(-np.log(uniform))
    noise = generation.gumbel_noise(
        ops.convert_to_tensor(np.int32(seed)),
        ops.convert_to_tensor(np.int32(index)),
        shape,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(noise), expected, rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------ stopping at end_id


def truncate_at(ids, end_id, first_generated):
    out = ids.copy()
    for row, start in enumerate(first_generated):
        hits = np.flatnonzero(out[row, start:] == end_id)
        if len(hits):
            out[row, start + hits[0] + 1 :] = 0
    return out


@pytest.mark.parametrize("kind", ("seq2seq", "decoder_lm"))
def test_stops_at_end_id_and_pads_after(kind):
    model = make_model(kind, "learned", seed=9)
    generator = make_generator(model)
    free = generator.generate(inputs_for(kind), 8, end_id=None)
    first = [0, 0] if kind == "seq2seq" else [2, 3]
    # End on the token row 0 generates second: row 0 must stop early.
    end_id = int(free[0, first[0] + 1])
    stopped = generator.generate(inputs_for(kind), 8, end_id=end_id)
    expected = truncate_at(free, end_id, first)
    np.testing.assert_array_equal(stopped, expected)
    assert (stopped[0, first[0] + 2 :] == 0).all()
    # Beam search pads after the end too.
    beam = generator.generate(
        inputs_for(kind), 8, end_id=end_id, sampler="beam", num_beams=2
    )
    for row, start in enumerate(first):
        generated = beam[row, start:]
        hits = np.flatnonzero(generated == end_id)
        stop = hits[0] + 1 if len(hits) else len(generated)
        assert (generated[:stop] > 0).all()
        assert (generated[stop:] == 0).all()


# ---------------------------------------------------------- compile once


def test_no_recompilation():
    model = make_model("decoder_lm", "learned", seed=10)
    generator = Generator(model, jit_compile=True)
    first = generator.generate(PROMPTS, 6, end_id=None)
    expected_traces = 1 if COMPILED else 0
    assert generator.trace_count == expected_traces
    # Same shapes, other values (prompts, seed, temperature): no retrace.
    other_prompts = np.array([[9, 0, 0], [8, 7, 0]])
    generator.generate(other_prompts, 6, end_id=None)
    again = generator.generate(PROMPTS, 6, end_id=None)
    assert generator.trace_count == expected_traces
    np.testing.assert_array_equal(first, again)
    # Temperature, top_p, seed and end_id are arguments, not constants.
    kwargs = dict(sampler="top_p", top_p=0.8)
    generator.generate(PROMPTS, 6, temperature=0.5, seed=1, end_id=3, **kwargs)
    generator.generate(PROMPTS, 6, temperature=2.0, seed=2, end_id=4, **kwargs)
    assert generator.trace_count == 2 * expected_traces
    # A new shape is a new function.
    generator.generate(PROMPTS, 7, end_id=None)
    assert generator.trace_count == 3 * expected_traces
    # Weights are read at call time, not baked into the compiled function.
    table = model.get_layer("token_embedding").embeddings
    table.assign(-table)
    flipped = generator.generate(PROMPTS, 6, end_id=None)
    assert generator.trace_count == 3 * expected_traces
    assert_greedy_is_argmax(model, "decoder_lm", flipped)


def test_reloaded_model(tmp_path):
    # Layers are found by name, and the encoder is cut from the loaded graph.
    model = make_model("seq2seq", "rotary", seed=12, norm_first=True)
    expected = make_generator(model).generate(SOURCE, 5)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = make_generator(loaded).generate(SOURCE, 5)
    np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------- the searches on a table


def markov(log_probs):
    """`next_logits` of a bigram table: row = previous token."""
    table = ops.convert_to_tensor(np.asarray(log_probs, "float32"))

    def next_logits(ids, cache, index):
        previous = ops.take(ids, index - 1, axis=1)
        return ops.take(table, previous, axis=0), cache

    return next_logits


def table_from(probabilities, vocabulary):
    """Log-probabilities (vocab, vocab) from {prev: {next: p}}."""
    table = np.full((vocabulary, vocabulary), -30.0)
    for previous, row in probabilities.items():
        for token, p in row.items():
            table[previous, token] = math.log(p)
    return table


START, END, A, B, C, D = 1, 2, 3, 4, 5, 6
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


def start_buffer(batch, length):
    ids = np.zeros((batch, length), "int32")
    ids[:, 0] = START
    return ids, np.ones((batch,), "int32")


def search(function, table, length=5, **kwargs):
    ids, lengths = start_buffer(1, length)
    cache = ops.zeros((1, 1))
    out = function(markov(table), ids, lengths, cache, **kwargs)
    return ops.convert_to_numpy(out)[0, 1:].tolist()


def test_beam_search_beats_greedy_where_greedy_is_suboptimal():
    greedy = search(decode, TRAP, end_id=END)
    assert greedy == [A, C, END, 0]
    assert search(beam_search, TRAP, end_id=END, num_beams=1) == greedy
    for length_penalty in (0.0, 1.0):
        beam = search(
            beam_search,
            TRAP,
            end_id=END,
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
            end_id=END,
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
    kwargs = dict(length=6, end_id=END, num_beams=2)
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
    best = max(
        itertools.product((1, 2, 3), repeat=3),
        key=lambda seq: (
            table[START, seq[0]] + table[seq[0], seq[1]] + table[seq[1], seq[2]]
        ),
    )
    found = search(beam_search, table, length=4, num_beams=9, end_id=None)
    assert found == list(best)
    greedy = search(decode, table, length=4, end_id=None)
    one_beam = search(beam_search, table, length=4, num_beams=1, end_id=None)
    assert one_beam == greedy


def test_decode_keeps_prompts_of_different_lengths():
    table = table_from({k: {k % 6 + 1: 1.0} for k in range(1, 7)}, 7)
    ids = np.array([[3, 0, 0, 0, 0], [4, 5, 6, 0, 0]], "int32")
    lengths = np.array([1, 3], "int32")
    cache = ops.zeros((2, 1))
    for function, kwargs in ((decode, {}), (beam_search, {"num_beams": 2})):
        out = function(markov(table), ids, lengths, cache, end_id=2, **kwargs)
        np.testing.assert_array_equal(
            ops.convert_to_numpy(out), [[3, 4, 5, 6, 1], [4, 5, 6, 1, 2]]
        )


def test_top_k_and_top_p_sample_only_inside_the_set():
    probabilities = np.array([0.0, 0.4, 0.3, 0.2, 0.1])
    logits = np.log(np.maximum(probabilities, 1e-9)).astype("float32")
    batch = 400
    table = np.tile(logits, (5, 1))
    ids, lengths = start_buffer(batch, 2)
    cache = ops.zeros((batch, 1))

    def draw(**kwargs):
        out = decode(markov(table), ids, lengths, cache, seed=3, **kwargs)
        return ops.convert_to_numpy(out)[:, 1]

    top_k = draw(sampler="top_k", top_k=2)
    top_p = draw(sampler="top_p", top_p=0.65)  # 0.4 + 0.3 >= 0.65
    free = draw(sampler="top_k", top_k=4)
    cold = draw(sampler="top_k", top_k=4, temperature=1e-3)
    assert set(top_k.tolist()) == {1, 2}
    assert set(top_p.tolist()) == {1, 2}
    assert set(free.tolist()) == {1, 2, 3, 4}
    assert set(cold.tolist()) == {1}
    # The frequencies follow the distribution (binomial, 400 draws).
    assert abs((free == 1).mean() - 0.4) < 0.1
    assert abs((top_k == 1).mean() - 0.4 / 0.7) < 0.1


# ---------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def lm_generator():
    return make_generator(make_model("decoder_lm", "learned"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_length=9), "max_length.*9.*sequence_length.*8"),
        (dict(max_length=0), "max_length"),
        (dict(num_beams=0, sampler="beam"), "num_beams"),
        (dict(top_p=0.0, sampler="top_p"), "top_p"),
        (dict(top_p=1.5, sampler="top_p"), "top_p"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0, sampler="top_k"), "top_k"),
        (dict(sampler="top_k"), "top_k"),
        (dict(sampler="top_p"), "top_p"),
        (dict(sampler="nucleus"), "sampler"),
        (dict(end_id=0), "end_id"),
        (dict(end_id=VOCAB), "end_id"),
        (dict(seed=1.5), "seed"),
        (dict(length_penalty=float("nan")), "length_penalty"),
        (dict(inputs=[[0, 3, 4]]), "right-padded"),
        (dict(inputs=[[3, 4], [0, 0]]), "at least one token"),
        (dict(inputs=[[3, VOCAB]]), "token ids"),
        (dict(inputs=[3, 4]), "shape"),
        (dict(inputs=[[3.0, 4.0]]), "integer"),
        (dict(inputs=[[3, 4, 5]], max_length=2), "prompt length 3"),
    ],
)
def test_bad_arguments(lm_generator, kwargs, match):
    kwargs = {"inputs": PROMPTS, "max_length": 6, **kwargs}
    with pytest.raises(ValueError, match=match):
        lm_generator.generate(kwargs.pop("inputs"), **kwargs)


def test_seq2seq_bad_arguments():
    generator = make_generator(make_model("seq2seq", "learned"))
    with pytest.raises(ValueError, match="max_length.*10.*sequence_length.*8"):
        generator.generate(SOURCE, 10)
    with pytest.raises(ValueError, match="start_id"):
        generator.generate(SOURCE, 4, start_id=0)
    long_source = np.ones((1, SEQ + 1), "int32")
    with pytest.raises(ValueError, match="length 9.*sequence_length=8"):
        generator.generate(long_source, 4)


def test_unsupported_models():
    classifier = encoder_classifier(
        VOCAB, SEQ, 3, num_layers=1, embedding_dim=16, num_heads=2
    )
    with pytest.raises(ValueError, match="seq2seq_transformer.*decoder_lm"):
        Generator(classifier)
    inputs = keras.Input((None,), dtype="int32", name="token_ids")
    plain = keras.Model(inputs, keras.layers.Embedding(VOCAB, 4)(inputs))
    with pytest.raises(ValueError, match="decoder_embedding"):
        Generator(plain)
    with pytest.raises(ValueError, match="decoder_lm"):
        Generator(keras.layers.Dense(3))
