"""PyTorch: `Generator` compiles its decoding step with inductor.

The rest of the suite runs the traced step without the compiler (see
conftest); here one tiny model is compiled for real, once (module-scoped
fixture: the C++ compile takes tens of seconds on a loaded 2-core box),
and torch's own counters say how often.
"""

from typing import NamedTuple

import keras
import numpy as np
import pytest

from keras_tfm import _backend
from keras_tfm.generation import Generator
from keras_tfm.models import decoder_lm

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch only"
)

VOCAB = 20
RNG = np.random.default_rng(3)


def unique_graphs():
    """How many graphs torch has compiled (each inductor compile goes
    through AOTAutograd once)."""
    from torch._dynamo.utils import counters

    return counters["aot_autograd"]["total"]


@pytest.fixture(scope="module")
def compiled():
    """A tiny model, its compiled generator, and what the first calls
    produced and compiled: ragged prompts of five lengths (9 to 13, one
    bucket) generated twice."""
    previous = _backend.TORCH_COMPILE
    _backend.TORCH_COMPILE = True
    try:
        keras.utils.set_random_seed(0)
        model = decoder_lm(
            VOCAB,
            32,
            num_layers=1,
            embedding_dim=16,
            num_heads=2,
            intermediate_dim=32,
            position="learned",
        )
        for variable in model.weights:  # varied tokens, far-apart logits
            if len(variable.shape) == 2:
                variable.assign(
                    RNG.normal(0, 3 / variable.shape[0] ** 0.5, variable.shape)
                )
        generator = Generator(model)
        before = unique_graphs()
        prompts = []
        outputs = []
        for width in range(9, 14):
            ids = RNG.integers(1, VOCAB, size=(2, width))
            ids[0, width - 3 :] = 0  # ragged
            prompts.append(ids)
            outputs.append(generator.generate(ids, 20))
        first_graphs = unique_graphs() - before
        again = generator.generate(prompts[0], 20)
        streamed = np.concatenate(
            list(generator.stream(prompts[1], 20, chunk_size=4)), axis=1
        )
        graphs = unique_graphs() - before
        yield {
            "model": model,
            "generator": generator,
            "prompts": prompts,
            "outputs": outputs,
            "again": again,
            "streamed": streamed,
            "first_graphs": first_graphs,
            "graphs": graphs,
        }
    finally:
        _backend.TORCH_COMPILE = previous


def test_compiled_once_for_five_prompt_lengths(compiled):
    # One graph for the step: five prompt lengths in one bucket, a second
    # call of the same shape and `stream` all reuse it.
    assert compiled["first_graphs"] == 1
    assert compiled["graphs"] == 1
    assert compiled["generator"].trace_count == 1


def test_compiled_equals_eager_and_full_pass_argmax(compiled):
    model = compiled["model"]
    eager = Generator(model, jit_compile=False)
    for prompts, ids in zip(
        compiled["prompts"], compiled["outputs"], strict=True
    ):
        np.testing.assert_array_equal(ids, eager.generate(prompts, 20))
        # Greedy: each generated token is the full model's argmax (never
        # the padding id 0).
        lengths = (prompts > 0).sum(axis=1)
        logits = keras.ops.convert_to_numpy(model(ids[:, :-1]))
        logits[..., 0] = -np.inf
        for row, length in enumerate(lengths):
            np.testing.assert_array_equal(
                ids[row, length:], logits[row, length - 1 :].argmax(-1)
            )
    np.testing.assert_array_equal(compiled["again"], compiled["outputs"][0])
    np.testing.assert_array_equal(compiled["streamed"], compiled["outputs"][1])


def test_eager_fallback_is_an_option(compiled):
    generator = Generator(compiled["model"], jit_compile=False)
    before = unique_graphs()
    generator.generate(compiled["prompts"][0], 20)
    assert unique_graphs() == before
    assert generator.trace_count == 0


def test_changed_weights_compile_once_more_as_inputs(compiled):
    # The step is compiled with the weights frozen in (as constants); new
    # weights compile it once more, reading them as inputs from then on.
    model, generator = compiled["model"], compiled["generator"]
    prompts = compiled["prompts"][0]
    saved = [keras.ops.copy(v.value) for v in model.weights]
    try:
        before = unique_graphs()
        for round in range(2):
            for variable in model.weights:
                if len(variable.shape) == 2:
                    variable.assign(
                        RNG.normal(
                            0, 3 / variable.shape[0] ** 0.5, variable.shape
                        )
                    )
            ids = generator.generate(prompts, 20)
            eager = Generator(model, jit_compile=False).generate(prompts, 20)
            np.testing.assert_array_equal(ids, eager)
            assert unique_graphs() - before == 1, round
        assert not np.array_equal(ids, compiled["outputs"][0])
    finally:
        for variable, value in zip(model.weights, saved, strict=True):
            variable.assign(value)
    np.testing.assert_array_equal(
        generator.generate(prompts, 20), compiled["outputs"][0]
    )


class _State(NamedTuple):
    x: object
    count: object


def test_frozen_step_falls_back_to_aten_kernels(compiled):
    # A product of two activations with more than one row has no C++ GEMM
    # template: that first compile fails, and the step compiles again with
    # ATen's kernels among the choices.
    import torch

    dense = keras.layers.Dense(8, use_bias=False)
    dense.build((None, 8))

    def body(state, constants):
        x = keras.ops.matmul(state.x, constants)  # (4, 8) @ (8, 8)
        return _State(dense(x), state.count + 1)

    def cond(state, constants):
        return state.count < 3

    def loop(x, constants):
        state = _State(x, keras.ops.convert_to_tensor(0))
        return _backend.while_loop(cond, body, state, constants).x

    steps = {}
    run = _backend.compile_function(loop, dense.weights, steps=steps)
    x = RNG.normal(size=(4, 8)).astype("float32")
    a = RNG.normal(size=(8, 8)).astype("float32")
    got = run(torch.as_tensor(x), torch.as_tensor(a))
    want = x
    kernel = keras.ops.convert_to_numpy(dense.kernel)
    for _ in range(3):
        want = want @ a @ kernel
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-4
    )
    (step,) = steps.values()
    assert step.weights is not None
    assert step.gemm_backends == "CPP,ATEN"


@pytest.mark.parametrize(
    "kind, position", [("seq2seq", "sinusoidal"), ("decoder_lm", "rotary")]
)
def test_compiled_greedy_is_full_pass_argmax(kind, position, monkeypatch):
    # The fixture's model is a decoder with learned positions; an
    # encoder-decoder and the other position kinds compile for real too.
    from tests import test_generation as cases

    monkeypatch.setattr(_backend, "TORCH_COMPILE", True)
    model = cases.make_model(kind, position, seed=5)
    generator = Generator(model)
    before = unique_graphs()
    inputs = cases.inputs_for(kind)
    ids = generator.generate(inputs, 8, **cases.starting(kind), end_id=None)
    assert unique_graphs() - before == 1
    # Each token is the full model's argmax over the tokens before it.
    cases.assert_greedy_is_argmax(model, kind, ids)
    assert len(np.unique(ids)) > 2  # positions and the cache at work
