"""Where a TensorFlow training step spends its time: keras_tfm vs keras-hub.

Builds the two encoder language models of `train_throughput.py` (same
sizes, from `_common.py`), warms each up, then records `--steps`
training steps of each with the TensorFlow profiler, alternating the
models `--repeats` times (medians over repeats), and sums the kernel
time of every op by the part of the model it belongs to (from the op's
name scope): token and position embedding, each encoder layer, the tied
output head, the compile loss and the optimizer, forward and backward
apart. Kernel time is summed over TensorFlow's inter-op threads, so it
can exceed wall time, and two ops running at once slow each other down:
compare parts between the libraries, not to the step's wall time.

    TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow \\
        python benchmarks/train_step_profile.py

TensorFlow only (the profiler's trace is TensorFlow's). Writes JSON to
`--output` (default `benchmarks/results/train_step_profile.json`).
"""

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

# (op-name pattern, part, direction); a direction of None comes from the
# name (ops under "gradient_tape/" are the backward pass). First match wins.
PARTS = (
    (r"encoder_layer_(\d+)", "encoder layer {}", None),
    (r"embedding(?:_\d+)?/token_embedding", "token embedding", None),
    (r"position_embedding", "position embedding", None),
    (r"token_embedding", "tied output head", None),
    (r"compile_loss", "loss", None),
    (r"adam", "optimizer", "update"),
    # The shared table's two gradients (lookup and head) summed.
    (r"^AddN", "tied table gradient sum", "backward"),
)


def part_of(op_name):
    """(part, direction) of one op from its name scope."""
    label, direction = "other", None
    for pattern, part, fixed in PARTS:
        found = re.search(pattern, op_name)
        if found:
            label, direction = part.format(*found.groups()), fixed
            break
    if direction is None:
        direction = "backward" if "gradient_tape/" in op_name else "forward"
    return label, direction


def profile_steps(tf, runner, steps):
    """Kernel milliseconds per step by (part, direction), and wall time."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            runner.step()
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # not a kernel
                    continue
                part = part_of(name.rsplit(":", 1)[0])
                totals[part] += event.duration_ps / 1e9 / steps
    return dict(totals), 1e3 * wall / steps


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=5, help="per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--jit-compile", choices=("auto", "true", "false"), default="false"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--output", default=None, help="results JSON path")
    args = parser.parse_args(argv)
    model_args = _common.model_namespace(
        quick=args.quick, jit_compile=args.jit_compile
    )
    warnings.filterwarnings("ignore", message=".*does not support masking")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        parser.error("run with KERAS_BACKEND=tensorflow")
    data = _common.make_data(model_args)
    builders = {
        "keras_tfm": _common.build_keras_tfm,
        "keras_hub": _common.build_keras_hub,
    }
    runners = {}
    for name, build in builders.items():
        keras.utils.set_random_seed(model_args.seed)
        runners[name] = _common.KerasRunner(
            keras, build(keras, model_args), model_args, data
        )
        for _ in range(args.warmup):
            runners[name].step()
    # The models alternate, `--repeats` times, so the machine's slow phases
    # hit both; each part's figure is its median over the repeats.
    samples = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            # A first profiled step pays the profiler's start-up.
            profile_steps(tf, runner, 1)
            samples[name].append(profile_steps(tf, runner, args.steps))
    results = {}
    for name, runs in samples.items():
        keys = set().union(*(parts for parts, _ in runs))
        results[name] = {
            "wall_ms_per_step": statistics.median(wall for _, wall in runs),
            "kernel_ms_per_step": {
                key: statistics.median(parts.get(key, 0.0) for parts, _ in runs)
                for key in keys
            },
        }

    keys = sorted(
        set().union(*(r["kernel_ms_per_step"] for r in results.values())),
        key=lambda k: (k[0].startswith("other"), k[0], k[1] == "backward"),
    )
    lines = [
        "| part | direction | keras_tfm ms | keras-hub ms |",
        "|---|---|---:|---:|",
    ]
    for key in keys:
        ours, hub = (
            results[n]["kernel_ms_per_step"].get(key, 0.0) for n in runners
        )
        lines.append(f"| {key[0]} | {key[1]} | {ours:.1f} | {hub:.1f} |")
    totals = [sum(results[n]["kernel_ms_per_step"].values()) for n in runners]
    walls = [results[n]["wall_ms_per_step"] for n in runners]
    lines.append(f"| all kernels | | {totals[0]:.1f} | {totals[1]:.1f} |")
    lines.append(f"| wall time per step | | {walls[0]:.1f} | {walls[1]:.1f} |")
    table = "\n".join(lines)
    print(table)

    output = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        "train_step_profile" + ("_quick" if args.quick else "") + ".json",
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(
            {
                "benchmark": "train_step_profile",
                "config": vars(args),
                "environment": _common.versions("tensorflow"),
                "results": {
                    name: {
                        "wall_ms_per_step": r["wall_ms_per_step"],
                        "kernel_ms_per_step": {
                            f"{part} ({direction})": ms
                            for (part, direction), ms in sorted(
                                r["kernel_ms_per_step"].items()
                            )
                        },
                    }
                    for name, r in results.items()
                },
                "table_markdown": table,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
