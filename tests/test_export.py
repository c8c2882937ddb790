"""Exporting: the generation loop as a SavedModel, Keras's own exports."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm import export
from keras_tfm.generation import Generator
from keras_tfm.models import decoder_lm, encoder_classifier, seq2seq_transformer
from tests.helpers import subprocess_env, tensorflow_only

VOCAB = 24
SEQ = 12
COMMON = dict(
    num_layers=1,
    embedding_dim=16,
    num_heads=2,
    intermediate_dim=32,
    dropout=0.0,
    tie_embeddings=False,
)
PROMPTS = np.array(
    [[3, 4, 5, 0, 0], [6, 7, 8, 9, 10], [11, 0, 0, 0, 0]], dtype="int32"
)
SOURCES = np.array(
    [[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 2], [11, 0, 0, 0, 0, 0]],
    dtype="int32",
)
MAX_LENGTH = 9

# A child that has TensorFlow but can import neither keras_tfm nor Keras:
# it loads each SavedModel, runs its signature and prints the ids as JSON.
RELOAD = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras_tfm"] = None
    sys.modules["keras"] = None
    import tensorflow as tf
    for name in ("keras_tfm", "keras"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable")
    results = {}
    for name, (path, ids) in json.loads(sys.argv[1]).items():
        serve = tf.saved_model.load(path).signatures["serving_default"]
        out = serve(token_ids=tf.constant(ids, tf.int32))["token_ids"]
        results[name] = [out.dtype.name, out.numpy().tolist()]
    loaded = sorted(
        m for m, module in sys.modules.items()
        if module is not None and m.split(".")[0] in ("keras", "keras_tfm")
    )
    print("RESULTS " + json.dumps({"results": results, "loaded": loaded}))
    """
)


def _randomize(model):
    """Large random kernels and zero biases: varied tokens, no collapse."""
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if len(weight.shape) >= 2:
            weight.assign(rng.normal(0, 1.0, weight.shape).astype("float32"))
    return model


def _decoder():
    return _randomize(decoder_lm(VOCAB, SEQ, **COMMON))


def _seq2seq():
    return _randomize(seq2seq_transformer(VOCAB, SEQ, **COMMON))


# --------------------------------------------------- the exported generator

# name: (builder, export options, inputs the exported model serves)
CASES = {
    "decoder_greedy": ("decoder", dict(stop_ids=[8]), PROMPTS),
    "decoder_beam": (
        "decoder",
        dict(sampler="beam", num_beams=3, end_id=12),
        PROMPTS,
    ),
    "seq2seq_greedy": ("seq2seq", dict(start_id=1), SOURCES),
    "seq2seq_beam": (
        "seq2seq",
        dict(start_id=1, sampler="beam", num_beams=2, stop_ids=[2, 23]),
        SOURCES,
    ),
}
# Other inputs for the same exports: one row; a prompt wider than
# max_length whose extra columns are padding.
EXTRA = {
    "decoder_greedy_one_row": ("decoder_greedy", PROMPTS[2:, :1]),
    "decoder_beam_wide": (
        "decoder_beam",
        np.pad(PROMPTS, [[0, 0], [0, MAX_LENGTH]]),
    ),
    "seq2seq_greedy_one_row": ("seq2seq_greedy", SOURCES[1:2]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every case; reload all in one child without keras_tfm.

    Returns `(results, loaded, expected)`: the child's ids per input,
    the keras* modules it had loaded, and `Generator.generate`'s ids.
    """
    root = tmp_path_factory.mktemp("generators")
    models = {"decoder": _decoder(), "seq2seq": _seq2seq()}
    # Without XLA, as the export runs by default (and quicker to trace).
    generators = {k: Generator(m, jit_compile=False) for k, m in models.items()}
    jobs, expected = {}, {}
    inputs = {**{n: (n, c[2]) for n, c in CASES.items()}, **EXTRA}
    for name, (kind, options, _) in CASES.items():
        export.export_generator(
            models[kind], str(root / name), MAX_LENGTH, **options
        )
    for name, (case, ids) in inputs.items():
        kind, options, _ = CASES[case]
        jobs[name] = (str(root / case), ids.tolist())
        # Generator.generate refuses a prompt wider than max_length even
        # where the extra columns are padding; the export cuts them.
        expected[name] = generators[kind].generate(
            ids[:, :MAX_LENGTH], MAX_LENGTH, **options
        )
    child = subprocess.run(
        [sys.executable, "-c", RELOAD, json.dumps(jobs)],
        cwd=str(root),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    line = [r for r in child.stdout.splitlines() if r.startswith("RESULTS ")]
    report = json.loads(line[-1][len("RESULTS ") :])
    return report["results"], report["loaded"], expected


@tensorflow_only
def test_reloaded_without_keras_tfm_or_keras(exported):
    _, loaded, _ = exported
    assert loaded == []


@tensorflow_only
@pytest.mark.parametrize("name", [*CASES, *EXTRA])
def test_exported_generator_equals_generate(exported, name):
    results, _, expected = exported
    dtype, ids = results[name]
    assert dtype == "int32"
    np.testing.assert_array_equal(np.array(ids), expected[name])
    assert np.array(ids).shape == (len(expected[name]), MAX_LENGTH)


@tensorflow_only
def test_exported_stop_ids_end_rows(exported):
    # The fixtures' stop ids do occur, so the export's stopping is tested.
    _, _, expected = exported
    ids = expected["decoder_greedy"]
    assert (ids == 8).any() and (ids[:, -1] == 0).any()


@tensorflow_only
def test_exported_generator_checks_prompts_in_graph(tmp_path):
    import tensorflow as tf

    model = decoder_lm(VOCAB, SEQ, **COMMON)
    export.export_generator(model, str(tmp_path), 4)
    serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    bad = {
        "at least one token": [[3, 4], [0, 0]],
        "right-padded": [[0, 3], [4, 5]],
        "max_length=4": [[1, 2, 3, 4, 5]],
    }
    for message, ids in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(token_ids=tf.constant(ids, tf.int32))


@tensorflow_only
def test_export_generator_rejects_options(tmp_path):
    model = decoder_lm(VOCAB, SEQ, **COMMON)
    from keras_tfm import sampling

    with pytest.raises(ValueError, match="sampler"):
        export.export_generator(model, str(tmp_path), 6, sampler="top_k")
    beams = sampling.BeamSampler(num_beams=2, return_all=True)
    with pytest.raises(ValueError, match="return_all"):
        export.export_generator(model, str(tmp_path), 6, sampler=beams)
    with pytest.raises(ValueError, match="max_length"):
        export.export_generator(model, str(tmp_path), 0)
    with pytest.raises(ValueError, match="start_id"):
        export.export_generator(_seq2seq(), str(tmp_path), 6)


# Under JAX or PyTorch: save, then export from a TensorFlow process.
EXPORT_FROM_TENSORFLOW = textwrap.dedent(
    """
    import json, sys
    import keras, tensorflow as tf
    from keras_tfm import export
    model = keras.saving.load_model(sys.argv[1])
    export.export_generator(model, sys.argv[2], int(sys.argv[3]))
    serve = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
    ids = serve(token_ids=tf.constant(json.loads(sys.argv[4]), tf.int32))
    print("IDS " + json.dumps(ids["token_ids"].numpy().tolist()))
    """
)

other_backends = pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="the other backends' path",
)


@other_backends
def test_model_of_another_backend_exports_from_tensorflow(tmp_path):
    model = _decoder()
    expected = Generator(model).generate(PROMPTS, MAX_LENGTH)
    model.save(str(tmp_path / "model.keras"))
    arguments = [
        str(tmp_path / "model.keras"),
        str(tmp_path / "generator"),
        str(MAX_LENGTH),
        json.dumps(PROMPTS.tolist()),
    ]
    child = subprocess.run(
        [sys.executable, "-c", EXPORT_FROM_TENSORFLOW, *arguments],
        cwd=str(tmp_path),
        env=subprocess_env(KERAS_BACKEND="tensorflow"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    line = [r for r in child.stdout.splitlines() if r.startswith("IDS ")]
    np.testing.assert_array_equal(json.loads(line[-1][4:]), expected)


@other_backends
def test_exports_need_tensorflow(tmp_path):
    model = decoder_lm(VOCAB, SEQ, **COMMON)
    backend = keras.backend.backend()
    with pytest.raises(RuntimeError, match=f"TensorFlow.*{backend}"):
        export.export_generator(model, str(tmp_path), 6)
    with pytest.raises(RuntimeError, match=f"TensorFlow.*{backend}"):
        export.export_onnx(model, str(tmp_path / "model.onnx"))


# ------------------------------------------------ Keras's own model.export


def _builders():
    ids = PROMPTS
    return {
        "decoder_lm": (decoder_lm(VOCAB, SEQ, **COMMON), ids),
        "encoder_classifier": (
            encoder_classifier(
                VOCAB,
                SEQ,
                3,
                **{k: v for k, v in COMMON.items() if k != "tie_embeddings"},
            ),
            ids,
        ),
        "seq2seq_transformer": (
            seq2seq_transformer(VOCAB, SEQ, **COMMON),
            {"encoder_token_ids": SOURCES, "decoder_token_ids": ids[:, :4]},
        ),
    }


@tensorflow_only
@pytest.mark.parametrize(
    "name", ["decoder_lm", "encoder_classifier", "seq2seq_transformer"]
)
def test_keras_saved_model_export(tmp_path, name):
    import tensorflow as tf

    model, inputs = _builders()[name]
    expected = ops.convert_to_numpy(model(inputs))
    model.export(str(tmp_path), format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(
        reloaded.serve(inputs).numpy(), expected, atol=1e-4
    )


@tensorflow_only
@pytest.mark.parametrize("name", ["decoder_lm", "encoder_classifier"])
def test_keras_onnx_export(tmp_path, name):
    import onnxruntime

    model, inputs = _builders()[name]
    expected = ops.convert_to_numpy(model(inputs))
    path = str(tmp_path / "model.onnx")
    model.export(path, format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(path)
    (feed,) = session.get_inputs()
    (outputs,) = session.run(None, {feed.name: inputs})
    np.testing.assert_allclose(outputs, expected, atol=1e-4)


@tensorflow_only
def test_export_onnx_exact_gelu(tmp_path):
    # Plain model.export(format="onnx") fails here: tf2onnx cannot convert
    # the Erfc op of TensorFlow's exact GELU; export_onnx teaches it.
    import onnxruntime

    model = decoder_lm(VOCAB, SEQ, **COMMON, activation="gelu", gated=True)
    expected = ops.convert_to_numpy(model(PROMPTS))
    path = str(tmp_path / "model.onnx")
    export.export_onnx(model, path, verbose=False)
    session = onnxruntime.InferenceSession(path)
    (outputs,) = session.run(None, {"token_ids": PROMPTS})
    np.testing.assert_allclose(outputs, expected, atol=1e-4)


@tensorflow_only
def test_export_generator_keeps_jit_compile(tmp_path):
    import tensorflow as tf

    model = decoder_lm(VOCAB, SEQ, **COMMON)
    export.export_generator(model, str(tmp_path), MAX_LENGTH, jit_compile=True)
    serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    library = serve.graph.as_graph_def().library.function
    (served,) = [f for f in library if "_serve_" in f.signature.name]
    assert served.attr["_XlaMustCompile"].b
    ids = serve(token_ids=tf.constant(PROMPTS))["token_ids"].numpy()
    expected = Generator(model).generate(PROMPTS, max_length=MAX_LENGTH)
    np.testing.assert_array_equal(ids, ops.convert_to_numpy(expected))
