"""Export a model's whole generation loop as a TensorFlow SavedModel.

`export_generator` writes the search `keras_tfm.generation.Generator`
runs (encoder, prompt prefill, cached greedy or beam loop) as the serving
signature of a SavedModel. The artefact needs TensorFlow only: it reloads
with `tf.saved_model.load(path)` in a process that has neither keras_tfm
nor Keras, and serves from TF Serving.

A model's forward pass alone exports with Keras itself:
`model.export(path, format="tf_saved_model")`, or `format="onnx"` (with
`tf2onnx` and `onnx` installed: `pip install keras_tfm[export]`).
`export_onnx` does the latter for models with exact GELU too, whose
TensorFlow `Erfc` op `tf2onnx` cannot convert by itself.

The serving function is written with `keras.ops`; its TensorFlow pieces
(the `tf.function` signature, `tf.map_fn`, the graph-time prompt checks)
come from `keras_tfm._backend`, so importing this module works on every
backend; exporting needs the TensorFlow backend. A model trained under
JAX or PyTorch exports from a TensorFlow process: `model.save(
"model.keras")` there, then with `KERAS_BACKEND=tensorflow`,
`keras.saving.load_model("model.keras")` and export (the weights are the
same on every backend).
"""

import keras
import numpy as np
from keras import ops

from keras_tfm import _backend, sampling
from keras_tfm.generation import Generator

SIGNATURE_KEY = "serving_default"


def _check_backend():
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            "`export_generator` traces the generation loop into a TensorFlow "
            "graph and needs the TensorFlow backend (set KERAS_BACKEND="
            "tensorflow before importing keras, rebuild or reload the model "
            f"there and export it). Received: backend={backend!r}"
        )


def _fixed_sampler(sampler):
    if isinstance(sampler, sampling.BeamSampler):
        if sampler.return_all:
            raise ValueError(
                "`export_generator` returns one hypothesis per row; "
                "`BeamSampler(return_all=True)` cannot be exported. "
                f"Received: sampler={sampler!r}"
            )
        return sampler
    if isinstance(sampler, sampling.GreedySampler):
        return sampler
    raise ValueError(
        "`sampler` must be greedy or beam search (a random sampler would "
        "repeat one baked-in seed on every call). Received: "
        f"sampler={sampler!r}"
    )


def export_generator(model, path, max_length, *, jit_compile=False, **options):
    """Write a SavedModel whose serving signature generates token ids.

    The signature `serving_default` takes `token_ids`, int32 `(batch,
    length)` with batch and length free: right-padded prompts for a
    decoder-only model, source ids for an encoder-decoder model. Padding
    is the model's `pad_id`; a model whose `pad_id` is None reads every
    id as a real token (each prompt is then the whole row). It returns
    `{"token_ids": ids}`, int32 `(batch, max_length)`, equal to
    `Generator(model).generate(token_ids, max_length, ...)` with the same
    options: the prompts followed by the generated tokens (decoder-only)
    or the generated tokens after `start_id` (encoder-decoder), the pad id
    (`0` without one) after a row's stop id. The prompts' lengths are
    found in the graph; a prompt longer than `max_length`, an empty row or
    a pad id before a token of a prompt fails the call with
    `InvalidArgumentError`, as does a source longer than a learned
    position table.

    Greedy decoding runs the whole batch at once. Beam search decodes row
    by row (`tf.map_fn`), so the batch size stays free; each row's beams
    run together.

    Everything but the ids is fixed at export time: `max_length`, the
    sampler, its options and the stop ids. Only greedy and beam search
    export (a random sampler would repeat one baked-in seed).

    Args:
        model: a model with the cached-step protocol, e.g. from
            `keras_tfm.models.decoder_lm` or `seq2seq_transformer`.
        path: directory to write the SavedModel to.
        max_length: output length, as for `Generator.generate`.
        jit_compile: whether the saved function is compiled with XLA when
            it runs (the serving runtime then needs XLA, and XLA drops the
            prompt checks above: bad prompts give unspecified ids).
        **options: the options of `Generator.generate`
            (`keras_tfm.generation.Options`): `sampler` (`"greedy"`,
            `"beam"`, or a `GreedySampler` or `BeamSampler`),
            `num_beams`, `length_penalty`, `start_id`, `stop_ids`,
            `end_id`.

    Returns:
        The `keras.export.ExportArchive` that was written; its endpoint
        `serving_default` is the exported `tf.function`.

    Raises:
        RuntimeError: under a backend other than TensorFlow.
        ValueError: for options `Generator.generate` refuses, a random
            sampler or `BeamSampler(return_all=True)`.

    Example:

    >>> import os, tempfile
    >>> from keras_tfm.models import decoder_lm
    >>> model = decoder_lm(20, 8, num_layers=1, embedding_dim=16,
    ...                    num_heads=2, intermediate_dim=32)
    >>> path = os.path.join(tempfile.mkdtemp(), "generator")
    >>> if keras.backend.backend() == "tensorflow":  # the backend it needs
    ...     import tensorflow as tf
    ...     _ = export_generator(model, path, max_length=6)
    ...     reloaded = tf.saved_model.load(path)  # no keras_tfm needed
    ...     serve = reloaded.signatures["serving_default"]
    ...     ids = serve(token_ids=tf.constant([[3, 4, 0], [5, 6, 7]]))
    ...     assert ids["token_ids"].shape == (2, 6)
    """
    _check_backend()
    generator = Generator(model, jit_compile=jit_compile)
    search = generator.search_function(max_length, **options)
    plan = search.plan
    _fixed_sampler(plan.sampler)
    seq2seq = generator.seq2seq
    beam = isinstance(plan.sampler, sampling.BeamSampler)
    pad_id = generator.pad_id
    fill = 0 if pad_id is None else pad_id
    names = (
        ("encoder_token_ids", "encoder_padding_mask")
        if seq2seq
        else ("token_ids", "padding_mask")
    )

    def real_tokens(token_ids):
        if pad_id is None:
            return ops.ones_like(token_ids, dtype="bool")
        return ops.not_equal(token_ids, pad_id)

    def prompts(token_ids):
        real = real_tokens(token_ids)
        lengths = ops.sum(ops.cast(real, "int32"), axis=1)
        before = ops.arange(ops.shape(token_ids)[1])[None, :] < lengths[:, None]
        # Each failing check names the first offending row.
        checks = [
            (lengths > 0, "Every prompt needs at least one token. Row:"),
            (
                ops.all(ops.equal(real, before), axis=1),
                f"Prompts must be right-padded with {pad_id}. Row:",
            ),
            (
                lengths <= max_length,
                f"Prompts must be at most max_length={max_length} tokens "
                "long. Row:",
            ),
        ]
        ids = token_ids[:, :max_length]
        for passed, message in checks:
            ids = _backend.with_runtime_check(
                ids,
                ops.all(passed),
                message,
                ops.argmin(ops.cast(passed, "int32")),
            )
        ids = ops.pad(
            ids,
            [[0, 0], [0, max_length - ops.shape(ids)[1]]],
            constant_values=fill,
        )
        # The width, static again after the pad of a traced amount.
        ids = ops.reshape(ids, (-1, max_length))
        return ids, ops.arange(max_length)[None, :] < lengths[:, None]

    def serve(token_ids):
        if seq2seq:
            mask = real_tokens(token_ids)
        else:
            token_ids, mask = prompts(token_ids)
        if beam:

            def one_row(row):
                ids, row_mask = row
                inputs = {names[0]: ids[None], names[1]: row_mask[None]}
                return search(inputs)[0]

            ids = _backend.map_rows(
                one_row, (token_ids, mask), (max_length,), "int32"
            )
        else:
            ids = search({names[0]: token_ids, names[1]: mask})
        return {"token_ids": ops.cast(ids, "int32")}

    archive = keras.export.ExportArchive()
    archive.track(model)
    function = _backend.serving_function(
        serve, "token_ids", (None, None), "int32", jit_compile
    )
    archive.add_endpoint(SIGNATURE_KEY, function)
    archive.write_out(str(path), verbose=False)
    return archive


_ERFC_REGISTERED = []


def _register_erfc():
    """Teach tf2onnx the TensorFlow `Erfc` op: `erfc(x) = 1 - erf(x)`.

    Exact GELU (`keras.activations.gelu`, `activation="gelu"`) is
    `0.5 * x * erfc(-x / sqrt(2))` on TensorFlow; ONNX has `Erf` (opset
    9) but no `Erfc`, and tf2onnx has no rule for it.
    """
    if _ERFC_REGISTERED:
        return
    from tf2onnx import handler, utils

    @handler.tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            node.type = "Erf"
            one = ctx.make_const(
                utils.make_name(f"{node.name}_one"), np.array(1, dtype)
            )
            ctx.insert_new_node_on_output(
                "Sub",
                node.output[0],
                inputs=[one.output[0], node.output[0]],
                name=utils.make_name(f"{node.name}_erfc"),
            )

    _ERFC_REGISTERED.append(Erfc)


def export_onnx(model, path, **kwargs):
    """Export a model's forward pass to ONNX, exact GELU included.

    `model.export(path, format="onnx", **kwargs)`, after teaching
    `tf2onnx` the TensorFlow `Erfc` op that exact GELU (`activation=
    "gelu"`) uses, which it cannot convert by itself ("Tensorflow op
    [...Gelu/Erfc: Erfc] is not supported"). Plain `model.export` works
    for models without it.

    Needs `tf2onnx` and `onnx` (`pip install keras_tfm[export]`) and the
    TensorFlow backend, where Keras converts with `tf2onnx`.

    Args:
        model: a built Keras model, e.g. from `keras_tfm.models`.
        path: the `.onnx` file to write.
        **kwargs: further arguments of `keras.Model.export`
            (`input_signature`, `opset_version`, `verbose`).

    Raises:
        RuntimeError: under a backend other than TensorFlow.

    Example:

    >>> import importlib.util, os, tempfile
    >>> from keras_tfm.models import encoder_classifier
    >>> model = encoder_classifier(20, 8, 2, num_layers=1, embedding_dim=16,
    ...                            num_heads=2, intermediate_dim=32,
    ...                            activation="gelu")
    >>> _ = model(np.array([[3, 4, 0]]))  # Keras exports called models
    >>> path = os.path.join(tempfile.mkdtemp(), "classifier.onnx")
    >>> if (keras.backend.backend() == "tensorflow"  # what it needs
    ...         and importlib.util.find_spec("tf2onnx")):
    ...     export_onnx(model, path, verbose=False)
    ...     assert os.path.getsize(path) > 0
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            "`export_onnx` converts the model's TensorFlow graph with "
            "tf2onnx and needs the TensorFlow backend (elsewhere use "
            "`model.export(path, format='onnx')`). Received: "
            f"backend={backend!r}"
        )
    _register_erfc()
    model.export(str(path), format="onnx", **kwargs)
