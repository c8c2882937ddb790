"""Model-parallel checks on JAX host devices, run in a fresh process.

The device count must be fixed before JAX starts, so the tests of
`tests/test_model_parallel.py` run this script:

    python tests/_model_parallel_worker.py OUT_JSON checks
    python tests/_model_parallel_worker.py OUT_JSON process PORT ID

`checks` (8 host devices, one process) writes, as JSON: every variable's
sharding spec next to the layout map's, for a decoder-only, a composed
and an encoder-decoder model; the losses and largest weight differences
of 3 packed `fit` steps with the masked loss on meshes 1x8 and 2x4 against
one device; and greedy tokens under `ModelParallel` and on one device.

`process` is one of two processes (2 host devices each) joined on
127.0.0.1:PORT by `keras.distribution.initialize`: a 2x2 mesh, the batch
split over the processes and the weights over each process's devices. It
trains the same 3 steps on its half of the batch and writes the losses.
The test starts both and compares them with `checks`' one-device losses.
"""

import json
import os
import sys

VOCAB, LENGTH, ROWS, STEPS = 64, 8, 8, 3


def _configure(devices):
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices}"
    )


def build_lm(packed=False, **overrides):
    from keras_tfm.models import decoder_lm

    options = dict(
        num_layers=1,
        embedding_dim=16,
        num_heads=8,
        intermediate_dim=32,
        dropout=0.0,
        packed=packed,
    )
    options.update(overrides)
    return decoder_lm(VOCAB, LENGTH, **options)


def build_composed():
    import keras

    from keras_tfm.layers import (
        TokenAndPositionEmbedding,
        TransformerDecoderBlock,
    )
    from keras_tfm.models import CausalLM

    return CausalLM(
        TokenAndPositionEmbedding(VOCAB, LENGTH, 16, position="learned"),
        [
            TransformerDecoderBlock(
                num_heads=4, intermediate_dim=32, cross_attention=False
            )
        ],
        final_norm=keras.layers.LayerNormalization(),
        head=keras.layers.Dense(VOCAB),
    )


def build_seq2seq():
    from keras_tfm.models import seq2seq_transformer

    return seq2seq_transformer(
        VOCAB,
        LENGTH,
        num_layers=1,
        embedding_dim=16,
        num_heads=8,
        intermediate_dim=32,
        dropout=0.0,
    )


def build_checkpoint_model():
    """A model as `checkpoints.load` builds it: Llama's options, with
    grouped-query attention (4 key/value heads of 8 shard on 4 devices)."""
    from keras_tfm.checkpoints import from_config

    return from_config(
        {
            "model_type": "llama",
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
        }
    )


def initial_weights(model):
    """Deterministic weights, the same in every process and layout."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        (0.3 * rng.normal(size=w.shape)).astype(w.dtype)
        if w.dtype.kind == "f"
        else w
        for w in model.get_weights()
    ]


def make_data():
    """Packed rows of varied lengths, labels 0 at padding."""
    import numpy as np

    from keras_tfm.data import pack

    rng = np.random.default_rng(1)
    lengths = (8, 5, 3, 7, 2, 6, 4, 8, 1, 3, 5, 2, 8)
    sequences = [rng.integers(1, VOCAB, size=n) for n in lengths]
    packed = pack(sequences, LENGTH, return_labels=True)
    labels = packed.pop("labels")
    assert len(labels) == ROWS, len(labels)
    return packed, labels


def mesh(shape, devices=None):
    import keras

    devices = devices or keras.distribution.list_devices()
    return keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)


def train(distribution, inputs, labels):
    """3 SGD steps of the packed LM; `(losses, weights)`."""
    import contextlib

    import keras
    import numpy as np

    from keras_tfm.losses import MaskedSparseCategoricalCrossentropy

    scope = distribution.scope() if distribution else contextlib.nullcontext()
    with scope:
        model = build_lm(packed=True)
        model.set_weights(initial_weights(model))
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.5),
            loss=MaskedSparseCategoricalCrossentropy(),
        )
        # `fit` inside the scope too: Keras lays the batch out over the
        # mesh only while a distribution is set.
        history = model.fit(
            inputs,
            labels,
            batch_size=len(labels),
            epochs=STEPS,
            shuffle=False,
            verbose=0,
        )
    weights = [np.asarray(w) for w in model.get_weights()]
    return history.history["loss"], weights, model


def spec_report(build, device_mesh):
    """Each variable's placed spec and the map's, built under the map."""
    import keras

    from keras_tfm.distribution import layout_map

    layouts = layout_map(build(), device_mesh)
    distribution = keras.distribution.ModelParallel(layout_map=layouts)
    with distribution.scope():
        model = build()
    report = []
    for variable in model.variables:
        layout = layouts[variable.path]
        report.append(
            {
                "path": variable.path,
                "placed": list(variable.value.sharding.spec),
                "mapped": None if layout is None else list(layout.axes),
                "shape": list(variable.shape),
            }
        )
    return report


def difference(a, b):
    import numpy as np

    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def checks(out):
    import keras
    import numpy as np

    from keras_tfm.distribution import layout_map
    from keras_tfm.generation import Generator

    result = {"devices": len(keras.distribution.list_devices())}
    result["specs"] = {
        "decoder_lm": spec_report(
            lambda: build_lm(tie_embeddings=False, gated=True), mesh((1, 8))
        ),
        "composed": spec_report(build_composed, mesh((2, 4))),
        "seq2seq": spec_report(build_seq2seq, mesh((2, 4))),
        "checkpoint": spec_report(build_checkpoint_model, mesh((2, 4))),
    }
    inputs, labels = make_data()
    single_loss, single_weights, _ = train(None, inputs, labels)
    result["single_loss"] = single_loss
    result["fit"] = {}
    for shape in ((1, 8), (2, 4)):
        layouts = layout_map(build_lm(packed=True), mesh(shape))
        distribution = keras.distribution.ModelParallel(layout_map=layouts)
        loss, weights, model = train(distribution, inputs, labels)
        kernel = model.get_layer("decoder_layer_0").feed_forward
        result["fit"]["x".join(map(str, shape))] = {
            "loss": loss,
            "weight_difference": difference(weights, single_weights),
            "ffn_spec": list(kernel.output_dense.kernel.value.sharding.spec),
        }
    prompts = np.array([[5, 6, 7, 0], [9, 0, 0, 0]], "int32")
    one = build_lm()
    one.set_weights(initial_weights(one))
    expected = Generator(one).generate(prompts, LENGTH)
    layouts = layout_map(one, mesh((2, 4)))
    with keras.distribution.ModelParallel(layout_map=layouts).scope():
        sharded = build_lm()
        sharded.set_weights(initial_weights(sharded))
        tokens = Generator(sharded).generate(prompts, LENGTH)
        cache = sharded.init_cache(2, LENGTH)[0]
    result["generate"] = {
        "single": np.asarray(expected).tolist(),
        "sharded": np.asarray(tokens).tolist(),
        "cache_spec": list(cache.sharding.spec),
        "query_spec": list(
            sharded.get_layer(
                "decoder_layer_0"
            ).self_attention.query_dense.kernel.value.sharding.spec
        ),
    }
    with open(out, "w") as f:
        json.dump(result, f)


def process(out, port, process_id):
    import keras

    from keras_tfm.distribution import layout_map

    keras.distribution.initialize(f"127.0.0.1:{port}", 2, process_id)
    # Rows of the mesh: one process each (its 2 local devices hold the
    # model axis), so the batch splits over processes.
    device_mesh = mesh((2, 2))
    layouts = layout_map(build_lm(packed=True), device_mesh)
    # Each process passes its own half of the batch (NumPy arrays).
    distribution = keras.distribution.ModelParallel(
        layout_map=layouts, auto_shard_dataset=False
    )
    inputs, labels = make_data()
    half = slice(process_id * ROWS // 2, (process_id + 1) * ROWS // 2)
    local = {name: value[half] for name, value in inputs.items()}
    loss, _, _ = train(distribution, local, labels[half])
    with open(out, "w") as f:
        json.dump({"loss": loss, "processes": 2}, f)


if __name__ == "__main__":
    out_path, mode = sys.argv[1], sys.argv[2]
    if mode == "checks":
        _configure(8)
        checks(out_path)
    elif mode == "process":
        _configure(2)
        process(out_path, int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
