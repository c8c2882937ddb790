"""Bytes per device and step time: replicated vs sharded weights.

Trains one decoder-only language model (`keras_tfm.models.decoder_lm`,
vocabulary 8192, width 256, 8 heads, FFN 1024, 4 layers, sinusoidal
positions, tied head, length 64, batch 8, Adam) on 8 virtual JAX host
devices, three ways:

  replicated  `keras.distribution.DataParallel`: every device holds the
              whole model and optimizer state, the batch is split 8 ways;
  1x8         `ModelParallel` with `keras_tfm.distribution.layout_map`:
              the weights split 8 ways (Megatron-style), the batch whole;
  2x4         the same on a 2 (batch) x 4 (model) mesh.

On CPU the virtual devices share the machine's memory and cores, so what
this measures is what each device is handed: the bytes of weights and of
optimizer state placed on each device (from each array's addressable
shards; the largest over the devices), not a memory saving or a speed-up
one could see on the wall clock. The step time (median of `--steps`
`train_on_batch` calls after one compiling call) is reported for
completeness; on shared CPU cores it says nothing about accelerators.
The target (issue 22): the 1x8 weights per device at most 1/6 of the
replicated model's.

Run from the repository root (it sets up JAX itself):

    python benchmarks/model_parallel.py

`--quick` is a smoke run (tiny model, 2 steps).
"""

import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
)

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402

DEFAULTS = dict(
    vocabulary_size=8192,
    width=256,
    num_heads=8,
    intermediate_dim=1024,
    num_layers=4,
    sequence_length=64,
    batch_size=8,
    steps=5,
)
QUICK = dict(
    vocabulary_size=64,
    width=32,
    num_heads=8,
    intermediate_dim=64,
    num_layers=1,
    sequence_length=8,
    batch_size=8,
    steps=2,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in DEFAULTS:
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--output",
        default=os.path.join(_common.RESULTS, "model_parallel.json"),
    )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def build(args):
    from keras_tfm.models import decoder_lm

    return decoder_lm(
        args.vocabulary_size,
        args.sequence_length,
        num_layers=args.num_layers,
        embedding_dim=args.width,
        num_heads=args.num_heads,
        intermediate_dim=args.intermediate_dim,
        dropout=0.0,
    )


def bytes_per_device(variables):
    """Largest and total bytes that `variables` place on any one device."""
    per_device = {}
    for variable in variables:
        for shard in variable.value.addressable_shards:
            per_device[shard.device] = (
                per_device.get(shard.device, 0) + shard.data.nbytes
            )
    return max(per_device.values())


def run(args, distribution):
    import keras

    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.sequence_length)
    ids = rng.integers(1, args.vocabulary_size, shape).astype("int32")
    labels = np.roll(ids, -1, axis=1)
    keras.utils.set_random_seed(0)
    with distribution.scope():
        model = build(args)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.optimizer.build(model.trainable_variables)
        weights = bytes_per_device(model.weights)
        optimizer = bytes_per_device(model.optimizer.variables)
        model.train_on_batch(ids, labels)  # compiles
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            loss = model.train_on_batch(ids, labels)
            times.append(time.perf_counter() - start)
    total = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    return {
        "weight_bytes_per_device": weights,
        "optimizer_bytes_per_device": optimizer,
        "model_bytes": total,
        "step_seconds": statistics.median(times),
        "loss": float(loss),
    }


def main(argv=None):
    args = parse_args(argv)
    import keras

    from keras_tfm.distribution import layout_map

    devices = keras.distribution.list_devices()
    rows = {"replicated": keras.distribution.DataParallel(devices=devices)}
    for shape in ((1, 8), (2, 4)):
        mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)
        layouts = layout_map(build(args), mesh)
        rows["x".join(map(str, shape))] = keras.distribution.ModelParallel(
            layout_map=layouts
        )
    results = {name: run(args, d) for name, d in rows.items()}
    base = results["replicated"]
    print(
        f"\n{'layout':<11} {'weights/device':>15} {'ratio':>6} "
        f"{'optimizer/device':>17} {'ratio':>6} {'step s':>8} {'loss':>8}"
    )
    for name, r in results.items():
        w = r["weight_bytes_per_device"]
        o = r["optimizer_bytes_per_device"]
        r["weight_ratio"] = w / base["weight_bytes_per_device"]
        r["optimizer_ratio"] = o / base["optimizer_bytes_per_device"]
        print(
            f"{name:<11} {w / 2**20:>12.2f} MiB {r['weight_ratio']:>6.3f} "
            f"{o / 2**20:>14.2f} MiB {r['optimizer_ratio']:>6.3f} "
            f"{r['step_seconds']:>8.3f} {r['loss']:>8.4f}"
        )
    target = results["1x8"]["weight_ratio"] <= 1 / 6
    print(f"\n1x8 weights per device <= 1/6 of replicated: {target}")
    settings = {k: getattr(args, k) for k in DEFAULTS}
    _common.write_json(
        {
            "benchmark": "model_parallel",
            "settings": settings,
            "devices": len(devices),
            "results": results,
            "target_met": target,
            "environment": _common.environment("jax"),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
