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
from keras import ops

from keras_tfm import _backend, generation, sampling
from keras_tfm import layers as tfm_layers
from keras_tfm.generation import Generator
from keras_tfm.models import (
    CausalLM,
    Seq2SeqLM,
    decoder_lm,
    encoder_classifier,
    seq2seq_transformer,
)

VOCAB = 20
SEQ = 8
POSITIONS = ("sinusoidal", "learned", "rotary", "none")
PROMPTS = np.array([[3, 4, 0], [5, 6, 7]])
SOURCE = np.array([[3, 4, 5, 0], [6, 7, 8, 9]])
COMPILED = True
START_ID = 1


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


def starting(kind):
    """The options an encoder-decoder given sources needs: `start_id`."""
    return {"start_id": START_ID} if kind == "seq2seq" else {}


def make_generator(model, jit_compile=None, **kwargs):
    # TensorFlow without XLA in most tests, to keep compile times short
    # (`test_no_recompilation` covers XLA); PyTorch on its compiled path,
    # whose traced step the suite runs without `torch.compile` (conftest).
    if jit_compile is None:
        jit_compile = keras.backend.backend() == "torch"
    return Generator(model, jit_compile=jit_compile, **kwargs)


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
    cached = generator.generate(
        inputs_for(kind), 6, **starting(kind), end_id=None
    )
    uncached = generator.generate(
        inputs_for(kind), 6, **starting(kind), end_id=None, use_cache=False
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
    cached = generator.generate(
        inputs_for(kind), 7, **starting(kind), end_id=None
    )
    uncached = generator.generate(
        inputs_for(kind), 7, **starting(kind), end_id=None, use_cache=False
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
    cached = generator.generate(inputs_for(kind), 6, **starting(kind), **kwargs)
    uncached = generator.generate(
        inputs_for(kind), 6, **starting(kind), use_cache=False, **kwargs
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
    greedy = generator.generate(
        inputs_for(kind), 6, **starting(kind), end_id=None
    )
    beam = generator.generate(
        inputs_for(kind),
        6,
        **starting(kind),
        end_id=None,
        sampler="beam",
        num_beams=1,
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
    first = generator.generate(SOURCE, 8, start_id=START_ID, seed=123, **kwargs)
    again = generator.generate(SOURCE, 8, start_id=START_ID, seed=123, **kwargs)
    other = generator.generate(SOURCE, 8, start_id=START_ID, seed=124, **kwargs)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    assert first.min() >= 1  # padding is never generated


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
    free = generator.generate(
        inputs_for(kind), 8, **starting(kind), end_id=None
    )
    first = [0, 0] if kind == "seq2seq" else [2, 3]
    # End on the token row 0 generates second: row 0 must stop early.
    end_id = int(free[0, first[0] + 1])
    stopped = generator.generate(
        inputs_for(kind), 8, **starting(kind), end_id=end_id
    )
    expected = truncate_at(free, end_id, first)
    np.testing.assert_array_equal(stopped, expected)
    assert (stopped[0, first[0] + 2 :] == 0).all()
    # Beam search pads after the end too.
    beam = generator.generate(
        inputs_for(kind),
        8,
        **starting(kind),
        end_id=end_id,
        sampler="beam",
        num_beams=2,
    )
    for row, start in enumerate(first):
        generated = beam[row, start:]
        hits = np.flatnonzero(generated == end_id)
        stop = hits[0] + 1 if len(hits) else len(generated)
        assert (generated[:stop] > 0).all()
        assert (generated[stop:] == 0).all()


# ---------------------------------------------------------- compile once


def test_prompt_buckets_compile_once_decoder_lm():
    # Five prompt lengths (9 to 13) in the power-of-two bucket 16: one
    # compiled search, the tokens of unbucketed generation.
    model = make_model("decoder_lm", "sinusoidal", seed=12)
    generator = make_generator(model)
    unbucketed = make_generator(model, prompt_buckets=False)
    rng = np.random.default_rng(0)
    for width in range(9, 14):
        prompts = rng.integers(1, VOCAB, size=(2, width))
        prompts[0, width - 2 :] = 0  # ragged: row 0 is shorter
        ids = generator.generate(prompts, 16)
        np.testing.assert_array_equal(ids, unbucketed.generate(prompts, 16))
        np.testing.assert_array_equal(ids[1, :width], prompts[1])
        if keras.backend.backend() == "torch":  # against an eager prefill
            eager = Generator(model, jit_compile=False)
            np.testing.assert_array_equal(ids, eager.generate(prompts, 16))
    assert generator.trace_count == 1
    assert unbucketed.trace_count == 5
    assert prefill_graphs(generator) == torch_only(1)
    assert prefill_graphs(unbucketed) == torch_only(5)


def prefill_graphs(generator):
    """How many prefill graphs PyTorch traced (`_backend.traced_call`)."""
    steps = generator._steps.values()
    return sum(key[0] == "call" for graphs in steps for key in graphs)


def torch_only(count):
    return count if keras.backend.backend() == "torch" else 0


def test_prompt_buckets_argument_seq2seq():
    # Sources of lengths 1 to 5 padded to the width 5 (`prompt_buckets`),
    # decoder prompts of lengths 1 to 5 to the width 6: one compiled search.
    model = make_model("seq2seq", "learned", seed=13)
    generator = make_generator(model, prompt_buckets=[5, 6])
    unbucketed = make_generator(model, prompt_buckets=False)
    rng = np.random.default_rng(1)
    for width in range(1, 6):
        inputs = {
            "encoder_token_ids": rng.integers(1, VOCAB, size=(2, width)),
            "encoder_padding_mask": np.ones((2, width), bool),
            "decoder_token_ids": rng.integers(1, VOCAB, size=(2, width)),
            "decoder_padding_mask": np.ones((2, width), bool),
        }
        ids = generator.generate(inputs, SEQ)
        np.testing.assert_array_equal(ids, unbucketed.generate(inputs, SEQ))
        assert ids.shape == (2, SEQ)
        if keras.backend.backend() == "torch":  # the encoder eager too
            eager = Generator(model, jit_compile=False)
            np.testing.assert_array_equal(ids, eager.generate(inputs, SEQ))
    assert generator.trace_count == 1
    assert unbucketed.trace_count == 5
    # The encoder and the decoder prompts' prefill: one graph.
    assert prefill_graphs(generator) == torch_only(1)
    assert prefill_graphs(unbucketed) == torch_only(5)


@pytest.mark.parametrize("buckets", ([], [0, 4], "pow2", [True]))
def test_prompt_buckets_bad_values(buckets):
    with pytest.raises(ValueError, match="prompt_buckets"):
        Generator(make_model("decoder_lm"), prompt_buckets=buckets)


def test_no_recompilation():
    model = make_model("decoder_lm", "learned", seed=10)
    generator = Generator(model, jit_compile=True)

    def assert_compiled(functions, traces):
        # One function per shape and search configuration on every backend;
        # JAX and TensorFlow trace each once, PyTorch runs it eagerly and
        # never traces.
        assert len(generator._functions) == functions
        assert generator.trace_count == (traces if COMPILED else 0)

    first = generator.generate(PROMPTS, 6)
    assert_compiled(1, 1)
    # Same shapes, other values (prompts, seed, temperature): no retrace.
    other_prompts = np.array([[9, 0, 0], [8, 7, 0]])
    generator.generate(other_prompts, 6)
    again = generator.generate(PROMPTS, 6)
    assert_compiled(1, 1)
    np.testing.assert_array_equal(first, again)
    # Temperature, top_p, seed and stop ids are arguments, not constants.
    kwargs = dict(sampler="top_p", top_p=0.8)
    generator.generate(PROMPTS, 6, temperature=0.5, seed=1, end_id=3, **kwargs)
    generator.generate(PROMPTS, 6, temperature=2.0, seed=2, end_id=4, **kwargs)
    assert_compiled(2, 2)
    # A new shape is a new function.
    generator.generate(PROMPTS, 7)
    assert_compiled(3, 3)
    # Weights are read at call time, not baked into the compiled function.
    table = model.get_layer("token_embedding").embeddings
    table.assign(-table)
    flipped = generator.generate(PROMPTS, 6)
    assert_compiled(3, 3)
    assert_greedy_is_argmax(model, "decoder_lm", flipped)


def test_reloaded_model(tmp_path):
    # The reloaded model keeps its cached step and protocol properties.
    model = make_model("seq2seq", "rotary", seed=12, norm_first=True)
    expected = make_generator(model).generate(SOURCE, 5, start_id=START_ID)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = make_generator(loaded).generate(SOURCE, 5, start_id=START_ID)
    np.testing.assert_array_equal(actual, expected)


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
        (dict(temperature=0.0, sampler="top_k", top_k=3), "temperature"),
        (dict(temperature=-1.0, sampler="top_k", top_k=3), "temperature"),
        (dict(top_k=0, sampler="top_k"), "top_k"),
        (dict(sampler="top_k"), "top_k"),
        (dict(sampler="top_p"), "top_p"),
        (dict(sampler="nucleus"), "sampler"),
        (dict(end_id=0), "stop_ids"),
        (dict(end_id=VOCAB), "stop_ids"),
        (dict(stop_ids=[3, 0]), "stop_ids"),
        (dict(temperature=0.5), "greedy.*does not use temperature"),
        (dict(seed=1.5), "seed"),
        (dict(length_penalty=float("nan"), sampler="beam"), "length_penalty"),
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
        generator.generate(SOURCE, 10, start_id=START_ID)
    with pytest.raises(ValueError, match="start_id"):
        generator.generate(SOURCE, 4, start_id=0)
    long_source = np.ones((1, SEQ + 1), "int32")
    with pytest.raises(ValueError, match="length 9.*sequence_length=8"):
        generator.generate(long_source, 4)


def test_seq2seq_needs_start_id():
    generator = Generator(make_model("seq2seq"), jit_compile=False)
    with pytest.raises(ValueError, match="start_id=None"):
        generator.generate(SOURCE, 4)


def test_models_without_the_protocol_are_refused():
    classifier = encoder_classifier(
        VOCAB, SEQ, 3, num_layers=1, embedding_dim=16, num_heads=2
    )
    with pytest.raises(TypeError, match="`init_cache`, `call_with_cache`"):
        Generator(classifier)
    inputs = keras.Input((None,), dtype="int32", name="token_ids")
    plain = keras.Model(inputs, keras.layers.Embedding(VOCAB, 4)(inputs))
    with pytest.raises(TypeError, match="init_cache"):
        Generator(plain)
    with pytest.raises(TypeError, match="call_with_cache"):
        Generator(keras.layers.Dense(3))


# ------------------------------------------------ composed models


def composed_causal_lm(position, name_prefix="mine"):
    embedding_position = "none" if position == "rotary" else position
    embedding = tfm_layers.TokenAndPositionEmbedding(
        VOCAB,
        SEQ,
        16,
        position=embedding_position,
        scale=True,
        name=f"{name_prefix}_in",
    )
    blocks = [
        tfm_layers.TransformerDecoderBlock(
            num_heads=2,
            intermediate_dim=32,
            dropout=0.2,
            norm_first=True,
            cross_attention=False,
            position="rotary" if position == "rotary" else "none",
            name=f"{name_prefix}_block_{7 - i}",
        )
        for i in range(2)
    ]
    model = CausalLM(
        embedding,
        blocks,
        final_norm=keras.layers.LayerNormalization(name=f"{name_prefix}_ln"),
        head=keras.layers.Dense(VOCAB, name=f"{name_prefix}_out"),
        name=f"{name_prefix}_lm",
    )
    return randomize(model, seed=POSITIONS.index(position) + 20)


def composed_seq2seq(position):
    embedding_position = "none" if position == "rotary" else position
    block_position = "rotary" if position == "rotary" else "none"

    def embedding(name):
        return tfm_layers.TokenAndPositionEmbedding(
            VOCAB, SEQ, 16, position=embedding_position, name=name
        )

    model = Seq2SeqLM(
        embedding("source_in"),
        [
            tfm_layers.TransformerEncoderBlock(
                num_heads=2,
                intermediate_dim=32,
                norm_first=True,
                position=block_position,
                name="enc_x",
            )
        ],
        embedding("target_in"),
        [
            tfm_layers.TransformerDecoderBlock(
                num_heads=2,
                intermediate_dim=32,
                norm_first=True,
                position=block_position,
                name=f"d{i}",
            )
            for i in (3, 1)
        ],
        encoder_final_norm=keras.layers.LayerNormalization(name="enc_ln"),
        decoder_final_norm=keras.layers.LayerNormalization(name="dec_ln"),
        head=keras.layers.Dense(VOCAB, name="untied"),
    )
    return randomize(model, seed=POSITIONS.index(position) + 30)


def argmax_by_full_passes(model, kind, inputs, max_length):
    """Greedy decoding by running the whole model again for every token."""
    if kind == "seq2seq":
        ids = np.zeros((len(inputs), max_length + 1), "int32")
        ids[:, 0] = START_ID
        lengths = np.ones(len(inputs), "int32")
    else:
        ids = np.zeros((len(inputs), max_length), "int32")
        ids[:, : inputs.shape[1]] = inputs
        lengths = (inputs > 0).sum(axis=1)
    for index in range(int(lengths.min()), ids.shape[1]):
        if kind == "seq2seq":
            logits = model(
                {"encoder_token_ids": inputs, "decoder_token_ids": ids},
                training=False,
            )
        else:
            logits = model(ids, training=False)
        logits = ops.convert_to_numpy(logits)[:, index - 1]
        tokens = np.argmax(logits[:, 1:], axis=-1) + 1
        keep = index < lengths
        ids[:, index] = np.where(keep, ids[:, index], tokens)
    return ids[:, 1:] if kind == "seq2seq" else ids


@pytest.mark.parametrize(
    "kind, position", list(itertools.product(("seq2seq", "lm"), POSITIONS))
)
def test_composed_models_generate_exactly(kind, position, tmp_path):
    if kind == "seq2seq":
        model, inputs = composed_seq2seq(position), SOURCE
    else:
        model, inputs = composed_causal_lm(position), PROMPTS
    expected = argmax_by_full_passes(model, kind, inputs, 7)
    generated = make_generator(model).generate(inputs, 7, **starting(kind))
    np.testing.assert_array_equal(generated, expected)
    path = str(tmp_path / "composed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    reloaded = make_generator(loaded).generate(inputs, 7, **starting(kind))
    np.testing.assert_array_equal(reloaded, expected)


class AdapterLM(CausalLM):
    """Adds a layer before the head, in the graph and in the cached step."""

    def __init__(self, *args, **kwargs):
        self.adapter = keras.layers.Dense(16, activation="tanh", name="adapt")
        super().__init__(*args, **kwargs)

    def logits(self, x):
        return super().logits(self.adapter(x))


class ForgetfulLM(CausalLM):
    """Changes the graph but not the cached step: must be caught."""

    def build_graph(self, token_ids):
        x = self.embedding(token_ids)
        x = keras.layers.Dense(16, name="extra")(x)
        for block in self.blocks:
            x = block(x)
        return self.logits(x)


def lm_parts():
    return dict(
        embedding=tfm_layers.TokenAndPositionEmbedding(VOCAB, SEQ, 16),
        blocks=[
            tfm_layers.TransformerDecoderBlock(
                num_heads=2, intermediate_dim=32, cross_attention=False
            )
        ],
    )


def test_subclass_with_an_adapter_generates_exactly():
    model = randomize(AdapterLM(**lm_parts()), seed=40)
    expected = argmax_by_full_passes(model, "lm", PROMPTS, 7)
    np.testing.assert_array_equal(
        make_generator(model).generate(PROMPTS, 7), expected
    )


def test_subclass_that_forgets_call_with_cache_is_caught():
    model = randomize(ForgetfulLM(**lm_parts()), seed=41)
    with pytest.raises(ValueError, match="cached step does not match"):
        Generator(model)


def test_disagreeing_positions_fail_loudly():
    embedding = tfm_layers.TokenAndPositionEmbedding(
        VOCAB, SEQ, 16, position="rotary"
    )
    with pytest.raises(ValueError, match='position="rotary"'):
        CausalLM(embedding, lm_parts()["blocks"])
    rotary_block = tfm_layers.TransformerDecoderBlock(
        num_heads=2,
        intermediate_dim=32,
        cross_attention=False,
        position="rotary",
    )
    with pytest.raises(ValueError, match="rotary"):
        CausalLM(lm_parts()["embedding"], [rotary_block])


def test_model_constructor_errors():
    parts = lm_parts()
    with pytest.raises(TypeError, match="`blocks`"):
        CausalLM(parts["embedding"], parts["blocks"][0])
    with pytest.raises(ValueError, match="`blocks` must not be empty"):
        CausalLM(parts["embedding"], [])
    with pytest.raises(ValueError, match="head=None"):
        CausalLM(keras.layers.Embedding(VOCAB, 16), parts["blocks"])
    with pytest.raises(TypeError, match="`head`"):
        CausalLM(parts["embedding"], parts["blocks"], head="dense")


def test_composed_config_round_trip_keeps_one_shared_table():
    table = tfm_layers.TokenEmbedding(VOCAB, 16, name="shared")
    model = Seq2SeqLM(
        tfm_layers.TokenAndPositionEmbedding(
            VOCAB, SEQ, 16, token_embedding=table
        ),
        [tfm_layers.TransformerEncoderBlock(num_heads=2, intermediate_dim=32)],
        tfm_layers.TokenAndPositionEmbedding(
            VOCAB, SEQ, 16, token_embedding=table
        ),
        [tfm_layers.TransformerDecoderBlock(num_heads=2, intermediate_dim=32)],
    )
    clone = Seq2SeqLM.from_config(model.get_config())
    assert (
        clone.encoder_embedding.token_embedding
        is clone.decoder_embedding.token_embedding
    )
    assert clone.encoder_embedding.token_embedding is not table
    assert len(clone.weights) == len(model.weights)


# ------------------------------------------- stream, stop ids, all beams


@pytest.mark.parametrize("kind", ("seq2seq", "decoder_lm"))
def test_stream_chunks_concatenate_to_generate(kind):
    model = make_model(kind, "sinusoidal", seed=42)
    generator = make_generator(model)
    free = generator.generate(inputs_for(kind), 8, **starting(kind))
    stop = int(free[0, 4])
    for kwargs in (
        {},
        {"stop_ids": [stop]},
        {"sampler": "top_k", "top_k": 5, "seed": 3},
    ):
        expected = generator.generate(
            inputs_for(kind), 8, **starting(kind), **kwargs
        )
        for chunk_size in (1, 3, 8):
            chunks = list(
                generator.stream(
                    inputs_for(kind),
                    8,
                    **starting(kind),
                    chunk_size=chunk_size,
                    **kwargs,
                )
            )
            assert all(c.shape[0] == 2 for c in chunks)
            np.testing.assert_array_equal(
                np.concatenate(chunks, axis=1), expected
            )
    with pytest.raises(ValueError, match="beam"):
        next(
            generator.stream(
                inputs_for(kind), 8, **starting(kind), sampler="beam"
            )
        )


def test_several_stop_ids_stop_each_row_at_the_first():
    model = make_model("decoder_lm", "sinusoidal", seed=43)
    generator = make_generator(model)
    free = generator.generate(PROMPTS, 8)
    stops = [int(free[0, 3]), int(free[1, 5])]
    stopped = generator.generate(PROMPTS, 8, stop_ids=stops)
    for row, start in enumerate((2, 3)):
        generated = free[row, start:]
        hits = np.flatnonzero(np.isin(generated, stops))
        end = start + hits[0] + 1 if len(hits) else 8
        np.testing.assert_array_equal(stopped[row, :end], free[row, :end])
        assert (stopped[row, end:] == 0).all()


def test_beam_search_returns_every_beam_best_first():
    model = make_model("seq2seq", "sinusoidal", seed=44)
    generator = make_generator(model)
    sampler = sampling.BeamSampler(num_beams=3, return_all=True)
    ids, scores = generator.generate(
        SOURCE, 6, start_id=START_ID, sampler=sampler
    )
    assert ids.shape == (2, 3, 6) and scores.shape == (2, 3)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    best = generator.generate(
        SOURCE, 6, start_id=START_ID, sampler="beam", num_beams=3
    )
    np.testing.assert_array_equal(ids[:, 0], best)
    assert len({tuple(row) for row in ids[0]}) == 3


# ------------------------------------------------ explicit padding (pad_id)


def real_zero_lm(pad_id=None, bias_on=None, seed=50):
    """A decoder-only model where id 0 is a real token (`mask_zero=False`),
    with an untied head whose bias can force one id to win."""
    model = CausalLM(
        tfm_layers.TokenAndPositionEmbedding(VOCAB, SEQ, 16, mask_zero=False),
        [
            tfm_layers.TransformerDecoderBlock(
                num_heads=2,
                intermediate_dim=32,
                dropout=0.0,
                cross_attention=False,
            )
        ],
        head=keras.layers.Dense(VOCAB, name="head"),
        pad_id=pad_id,
    )
    randomize(model, seed)
    if bias_on is not None:
        bias = np.zeros(VOCAB, "float32")
        bias[bias_on] = 1e4
        model.get_layer("head").bias.assign(bias)
    return model


def real_zero_seq2seq(pad_id=None, seed=51):
    def embedding():
        return tfm_layers.TokenAndPositionEmbedding(
            VOCAB, SEQ, 16, mask_zero=False
        )

    model = Seq2SeqLM(
        embedding(),
        [
            tfm_layers.TransformerEncoderBlock(
                num_heads=2, intermediate_dim=32, dropout=0.0
            )
        ],
        embedding(),
        [
            tfm_layers.TransformerDecoderBlock(
                num_heads=2, intermediate_dim=32, dropout=0.0
            )
        ],
        head=keras.layers.Dense(VOCAB),
        pad_id=pad_id,
    )
    return randomize(model, seed)


def argmax_all_ids(model, prompts, max_length):
    """Greedy decoding by full passes, every id allowed (no padding)."""
    out = []
    for prompt in prompts:
        ids = list(prompt)
        while len(ids) < max_length:
            logits = model(np.array([ids], "int32"), training=False)
            ids.append(int(np.argmax(ops.convert_to_numpy(logits)[0, -1])))
        out.append(ids)
    return np.array(out, "int32")


def test_protocol_properties_and_pad_id_argument():
    model = real_zero_lm()
    assert (model.pad_id, model.vocabulary_size, model.max_length) == (
        None,
        VOCAB,
        None,
    )
    assert real_zero_lm(pad_id=3).pad_id == 3
    learned = make_model("decoder_lm", "learned")
    assert (learned.pad_id, learned.max_length) == (0, SEQ)
    seq2seq = make_model("seq2seq", "learned", target_vocabulary_size=17)
    assert (seq2seq.pad_id, seq2seq.vocabulary_size) == (0, 17)
    assert (seq2seq.encoder_vocabulary_size, seq2seq.encoder_max_length) == (
        VOCAB,
        SEQ,
    )
    clone = CausalLM.from_config(real_zero_lm(pad_id=3).get_config())
    assert clone.get_config()["pad_id"] == 3 and clone.pad_id == 3
    parts = lm_parts()
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match="pad_id"):
            CausalLM(parts["embedding"], parts["blocks"], pad_id=bad)
    with pytest.raises(ValueError, match="mask_zero=True.*pad_id=2"):
        CausalLM(parts["embedding"], parts["blocks"], pad_id=2)


def test_prompts_holding_id_zero_decode_exactly_without_pad_id():
    model = real_zero_lm()
    generator = make_generator(model)
    prompts = [[5, 0, 7, 8], [0, 3]]
    expected = argmax_all_ids(model, prompts, 7)
    np.testing.assert_array_equal(generator.generate(prompts, 7), expected)
    np.testing.assert_array_equal(
        generator.generate(prompts, 7, use_cache=False), expected
    )
    # A rectangular array: every position is a real token.
    array = np.array([[5, 0, 7, 8]])
    np.testing.assert_array_equal(
        generator.generate(array, 7), argmax_all_ids(model, array, 7)
    )


def test_list_dict_and_array_prompts_give_the_same_tokens():
    generator = make_generator(make_model("decoder_lm", seed=52))
    array = generator.generate(PROMPTS, 7)
    ragged = generator.generate([[3, 4], [5, 6, 7]], 7)
    masked = generator.generate(
        {"token_ids": PROMPTS, "padding_mask": PROMPTS != 0}, 7
    )
    np.testing.assert_array_equal(ragged, array)
    np.testing.assert_array_equal(masked, array)
    # Without a pad id the mask says where prompts end, any ids inside.
    free = make_generator(real_zero_lm())
    ids = np.array([[5, 0, 9], [0, 3, 9]])
    mask = np.array([[True, True, False], [True, True, True]])
    dict_ids = free.generate({"token_ids": ids, "padding_mask": mask}, 6)
    list_ids = free.generate([[5, 0], [0, 3, 9]], 6)
    np.testing.assert_array_equal(dict_ids, list_ids)
    with pytest.raises(ValueError, match="padding mask"):
        free.generate({"token_ids": ids, "padding_mask": ~mask}, 6)
    with pytest.raises(ValueError, match="padding id 0"):
        generator.generate([[3, 0], [5, 6, 7]], 6)


def test_seq2seq_dict_inputs_and_decoder_prompts():
    model = real_zero_seq2seq()
    generator = make_generator(model)
    source = np.array([[3, 0, 5], [6, 7, 0]])
    plain = generator.generate(source, 5, start_id=START_ID)
    as_dict = generator.generate(
        {
            "encoder_token_ids": source,
            "encoder_padding_mask": np.ones(source.shape, bool),
        },
        5,
        start_id=START_ID,
    )
    np.testing.assert_array_equal(as_dict, plain)
    prompted = generator.generate(
        {
            "encoder_token_ids": source,
            "encoder_padding_mask": np.ones(source.shape, bool),
            "decoder_token_ids": np.full((2, 1), START_ID),
            "decoder_padding_mask": np.ones((2, 1), bool),
        },
        6,
    )
    assert (prompted[:, 0] == START_ID).all()
    np.testing.assert_array_equal(prompted[:, 1:], plain)
    uncached = generator.generate(source, 5, start_id=START_ID, use_cache=False)
    np.testing.assert_array_equal(uncached, plain)
    with pytest.raises(ValueError, match="start_id.*decoder prompts"):
        generator.generate(
            {
                "encoder_token_ids": source,
                "encoder_padding_mask": np.ones(source.shape, bool),
                "decoder_token_ids": np.full((2, 1), START_ID),
                "decoder_padding_mask": np.ones((2, 1), bool),
            },
            6,
            start_id=START_ID,
        )


SAMPLERS = (
    {},
    {"sampler": "top_k", "top_k": 3, "seed": 1},
    {"sampler": "top_p", "top_p": 0.9, "seed": 2},
    {"sampler": "beam", "num_beams": 2},
)


@pytest.mark.parametrize("options", SAMPLERS)
def test_the_pad_id_is_never_generated_and_zero_can_be(options):
    # The head's bias makes id 5 win by far: with pad_id=5 it never comes.
    padded = make_generator(real_zero_lm(pad_id=5, bias_on=5))
    ids = padded.generate([[3, 4], [6]], 6, **options)
    assert not (ids == 5).any()
    # With pad_id=None, id 0 is a token like any other.
    free = make_generator(real_zero_lm(bias_on=0))
    ids = free.generate([[3, 4], [6]], 6, **options)
    assert (ids[0, 2:] == 0).all() and (ids[1, 1:] == 0).all()


def test_rows_end_padded_with_the_pad_id():
    model = real_zero_lm(pad_id=5)
    generator = make_generator(model)
    free = generator.generate([[3, 4]], 8)
    stop = int(free[0, 3])
    stopped = generator.generate([[3, 4]], 8, stop_ids=[stop])
    end = 2 + int(np.flatnonzero(free[0, 2:] == stop)[0]) + 1
    np.testing.assert_array_equal(stopped[0, :end], free[0, :end])
    assert (stopped[0, end:] == 5).all()


def test_options_that_do_not_apply_are_errors(lm_generator):
    with pytest.raises(ValueError, match="start_id.*decoder-only"):
        lm_generator.generate(PROMPTS, 6, start_id=1)
    with pytest.raises(ValueError, match="does not use seed"):
        lm_generator.generate(PROMPTS, 6, seed=1)
    with pytest.raises(ValueError, match="does not use seed"):
        lm_generator.generate(PROMPTS, 6, sampler="beam", seed=1)
    with pytest.raises(TypeError, match="top_n"):
        lm_generator.generate(PROMPTS, 6, top_n=3)
    with pytest.raises(TypeError, match="top_n"):
        next(lm_generator.stream(PROMPTS, 6, top_n=3))


def test_search_function_is_the_generate_search():
    model = make_model("decoder_lm", seed=53)
    generator = make_generator(model)
    search = generator.search_function(6, sampler="beam", num_beams=2)
    inputs = {
        "token_ids": np.pad(PROMPTS, [(0, 0), (0, 3)]),
        "padding_mask": np.pad(PROMPTS != 0, [(0, 0), (0, 3)]),
    }
    ids = ops.convert_to_numpy(search(inputs))
    expected = generator.generate(PROMPTS, 6, sampler="beam", num_beams=2)
    np.testing.assert_array_equal(ids, expected)


# --------------------------------------------- a long loop, in stretches


@pytest.mark.parametrize("kind", ("seq2seq", "decoder_lm"))
def test_a_long_loop_in_stretches_equals_one_loop(kind, monkeypatch):
    """On JAX on the CPU, `generate` runs its loop in
    stretches whose steps read only the cache below the stretch's end; the
    tokens equal one loop over the whole cache, and each is the argmax of
    the full model's logits."""
    length = 260
    builder = seq2seq_transformer if kind == "seq2seq" else decoder_lm
    model = randomize(
        builder(
            VOCAB,
            length,
            num_layers=1,
            embedding_dim=16,
            num_heads=2,
            intermediate_dim=32,
            position="rotary",
        ),
        seed=26 if kind == "seq2seq" else 21,
    )
    prefixes = []
    reading = _backend.reading_cache_prefix

    def spy(prefix):
        prefixes.append(prefix)
        return reading(prefix)

    monkeypatch.setattr(_backend, "reading_cache_prefix", spy)
    options = dict(end_id=None, **starting(kind))
    stretched = Generator(model).generate(inputs_for(kind), length, **options)
    if keras.backend.backend() == "jax" and _backend.xla_loop_on_cpu(True):
        # Ends at a quarter, a half and 3/4 of the buffer (a start id adds
        # one position).
        buffer = length + (kind == "seq2seq")
        assert prefixes == [-(-buffer * k // 4) for k in (1, 2, 3)] + [None]
    else:
        assert prefixes == [None]
    del prefixes[:]
    monkeypatch.setattr(generation, "_SEGMENT_MIN", length + 1)
    whole = Generator(model).generate(inputs_for(kind), length, **options)
    assert prefixes == [None]  # one loop over the whole cache
    np.testing.assert_array_equal(stretched, whole)
    assert_greedy_is_argmax(model, kind, stretched)
    assert len(np.unique(stretched[:, -100:])) > 1
