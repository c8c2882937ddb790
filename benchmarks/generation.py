"""Generation speed: keras_tfm cached vs uncached decoding vs keras-hub.

Time per generated token of greedy decoding from a one-token prompt, at
output lengths 32, 128 and 512, for three rows built in one process:

- "keras_tfm cached": `keras_tfm.generation.Generator(model).generate(...)`
  on a `decoder_lm` (key/value cache, one compiled loop);
- "keras_tfm uncached": the same call with `use_cache=False`, which runs
  the whole model over the full fixed-length buffer at every step, as the
  keras.io translation example does (quadratic work);
- "keras-hub cached": `keras_hub.models.GPT2CausalLM(backbone,
  preprocessor=None).generate({"token_ids", "padding_mask"},
  stop_token_ids=None)` with the greedy sampler, on a randomly initialised
  `GPT2Backbone` of the same sizes (no download), compiled with keras-hub's
  default `jit_compile="auto"`; on TensorFlow that resolves to no XLA, so
  a "keras-hub cached XLA" row (`jit_compile=True`) is added there.

Both models are GPT-2 shaped: learned positions, pre-norm blocks with a
final norm, GELU feed-forward, tied output head; width 256, 4 heads, 2
layers, FFN 1024, vocabulary 1000, table length 1024, batch 1 by default.
Each row is called once untimed (tracing and compilation), then the rows
alternate over `--rounds` timed rounds (`--uncached-rounds` for the slow
uncached row) so slow phases of a shared machine hit every row alike; the
table reports the median. No row stops early (`end_id=None`,
`stop_token_ids=None`): every call generates exactly `length` tokens.
keras-hub's greedy sampler, like ours, runs one compiled loop; it first
runs the model once over the whole padded buffer to seed its cache.

Run from the repository root (the backend comes from `KERAS_BACKEND`):

    KERAS_BACKEND=jax python benchmarks/generation.py
    TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow \\
        python benchmarks/generation.py
    KERAS_BACKEND=torch python benchmarks/generation.py

Add `--quick` for a smoke run (width 64, lengths 8 and 16, one round).
Results go to `--output`, by default
`benchmarks/results/generation_<backend>[_quick].json`.
"""

import argparse
import json
import os
import platform
import statistics
import time

import keras
import numpy as np

from keras_tfm.generation import Generator
from keras_tfm.models import decoder_lm


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--vocabulary-size", type=int, default=1000)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--intermediate-dim", type=int, default=1024)
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--uncached-rounds", type=int, default=1)
    parser.add_argument(
        "--skip-keras-hub", action="store_true", help="omit the keras-hub row"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.quick:
        args.embedding_dim, args.intermediate_dim = 64, 128
        args.sequence_length = 64
        args.rounds = args.uncached_rounds = 1
        args.lengths = args.lengths or [8, 16]
    args.lengths = args.lengths or [32, 128, 512]
    if max(args.lengths) + 1 > args.sequence_length:
        raise ValueError(
            "`--sequence-length` must exceed the longest length. Received: "
            f"sequence_length={args.sequence_length}, lengths={args.lengths}"
        )
    return args


def build_ours(args):
    model = decoder_lm(
        args.vocabulary_size,
        args.sequence_length,
        num_layers=args.num_layers,
        embedding_dim=args.embedding_dim,
        num_heads=args.num_heads,
        intermediate_dim=args.intermediate_dim,
        activation="gelu",
        position="learned",
        norm_first=True,
        tie_embeddings=True,
        name="keras_tfm_lm",
    )
    return Generator(model)


def build_keras_hub(args, jit_compile="auto"):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=args.vocabulary_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.embedding_dim,
        intermediate_dim=args.intermediate_dim,
        max_sequence_length=args.sequence_length,
    )
    causal_lm = keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=None
    )
    causal_lm.compile(sampler="greedy", jit_compile=jit_compile)
    return causal_lm, keras_hub.__version__


def make_rows(args, prompts):
    """{name: {length: zero-argument call}}, each generating `length`."""
    generator = build_ours(args)
    rows = {
        "keras_tfm cached": {
            length: lambda n=length: generator.generate(
                prompts, n + 1, end_id=None
            )
            for length in args.lengths
        },
        "keras_tfm uncached": {
            length: lambda n=length: generator.generate(
                prompts, n + 1, end_id=None, use_cache=False
            )
            for length in args.lengths
        },
    }
    hub_version = None
    if args.skip_keras_hub:
        return rows, generator, hub_version
    variants = {"keras-hub cached": "auto"}
    if keras.backend.backend() == "tensorflow":
        # keras-hub's "auto" resolves to no XLA for GPT2CausalLM on
        # TensorFlow; show the XLA-compiled loop as well.
        variants["keras-hub cached XLA"] = True
    for name, jit_compile in variants.items():
        causal_lm, hub_version = build_keras_hub(args, jit_compile)

        def hub_call(n, causal_lm=causal_lm):
            batch = prompts.shape[0]
            token_ids = np.zeros((batch, n + 1), "int32")
            token_ids[:, :1] = prompts
            padding_mask = np.zeros((batch, n + 1), bool)
            padding_mask[:, 0] = True
            inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
            return causal_lm.generate(inputs, stop_token_ids=None)

        rows[name] = {
            length: lambda n=length, call=hub_call: call(n)
            for length in args.lengths
        }
    return rows, generator, hub_version


def timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main():
    args = parse_args()
    backend = keras.backend.backend()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(
        1, args.vocabulary_size, (args.batch_size, 1)
    ).astype("int32")
    rows, generator, hub_version = make_rows(args, prompts)

    # Untimed first calls: tracing and compilation, once per shape.
    compile_s = {}
    for name, calls in rows.items():
        for length, call in calls.items():
            compile_s[(name, length)] = timed(call)
            print(
                f"first call {name:>18} length {length:>4}: "
                f"{compile_s[(name, length)]:.2f} s",
                flush=True,
            )
    for length in args.lengths:
        cached = generator.generate(prompts, length + 1, end_id=None)
        uncached = generator.generate(
            prompts, length + 1, end_id=None, use_cache=False
        )
        if not np.array_equal(cached, uncached):
            print(f"warning: cached != uncached at length {length}")

    seconds = {key: [] for key in compile_s}
    for round_index in range(args.rounds):
        for name, calls in rows.items():
            if "uncached" in name and round_index >= args.uncached_rounds:
                continue
            for length, call in calls.items():
                seconds[(name, length)].append(timed(call))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    results = []
    for (name, length), values in seconds.items():
        median = statistics.median(values)
        results.append(
            {
                "row": name,
                "length": length,
                "ms_per_token": 1000 * median / length,
                "min_ms_per_token": 1000 * min(values) / length,
                "seconds_per_call": values,
                "first_call_seconds": compile_s[(name, length)],
            }
        )

    def ms(name, length):
        for result in results:
            if result["row"] == name and result["length"] == length:
                return result["ms_per_token"]
        return None

    names = list(rows)
    hub_names = [name for name in names if name.startswith("keras-hub")]
    header = (
        "| tokens | "
        + " | ".join(f"{name} (ms/token)" for name in names)
        + " | uncached / cached |"
        + "".join(f" {name} / keras_tfm cached |" for name in hub_names)
    )
    lines = [header, "|" + "---:|" * (header.count("|") - 1)]
    for length in args.lengths:
        cells = [f"{ms(name, length):.2f}" for name in names]
        cached = ms("keras_tfm cached", length)
        cells.append(f"{ms('keras_tfm uncached', length) / cached:.1f}x")
        for name in hub_names:
            cells.append(f"{ms(name, length) / cached:.2f}x")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print()
    print(
        f"Greedy generation, backend {backend}, batch {args.batch_size}, "
        f"width {args.embedding_dim}, {args.num_layers} layers, "
        f"{os.cpu_count()} CPUs visible"
    )
    print(table)

    output = args.output or os.path.join(
        "benchmarks",
        "results",
        f"generation_{backend}{'_quick' if args.quick else ''}.json",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    config = {
        key: value
        for key, value in vars(args).items()
        if key not in ("output",)
    }
    with open(output, "w") as file:
        json.dump(
            {
                "benchmark": "generation",
                "backend": backend,
                "keras": keras.__version__,
                "keras_hub": hub_version,
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "config": config,
                "results": results,
                "table": table,
            },
            file,
            indent=2,
        )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
