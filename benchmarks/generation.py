"""Generation speed: keras_tfm cached, streamed and uncached vs keras-hub.

Milliseconds per generated token of greedy decoding from a one-token
prompt, at 32, 128 and 512 new tokens, for these rows built in one
process:

- "keras_tfm cached": `keras_tfm.generation.Generator(model).generate(...)`
  on a `decoder_lm` (key/value cache, one compiled loop);
- "keras_tfm stream": the same tokens from `Generator.stream(...,
  chunk_size=--chunk-size)`, every chunk consumed;
- "keras_tfm uncached": `generate(..., use_cache=False)`, which runs the
  whole model over the full fixed-length buffer at every step, as the
  keras.io translation example does (quadratic work); only at
  `--uncached-lengths` (by default every length, 32 and 128 on PyTorch);
- "keras-hub cached": `keras_hub.models.GPT2CausalLM(backbone,
  preprocessor=None).generate({"token_ids", "padding_mask"},
  stop_token_ids=None)` with the greedy sampler, on a randomly initialised
  `GPT2Backbone` of the same sizes (no download), compiled with keras-hub's
  default `jit_compile="auto"`; on TensorFlow that resolves to no XLA, so
  a "keras-hub cached XLA" row (`jit_compile=True`) is added there;
- PyTorch only: "keras_tfm eager" (`Generator(model, jit_compile=False)`,
  the eager loop) and "PyTorch reference", a plain `nn.Module` of the
  same shape with a static cache, its step compiled with `torch.compile`
  (benchmarks/_torch_reference.py; other random weights, so its tokens
  are not compared): the floor on this backend. `--torch-compile none`
  runs the traced steps uncompiled (a smoke run);
- "naive loop" (PyTorch by default, `--naive` elsewhere): a Python loop
  that calls `model(ids, training=False)` on the growing prefix and
  appends the argmax, with no cache and nothing compiled, under
  `torch.no_grad()` (issue 15's reference; on JAX every new prefix length
  compiles its ops again).

Both models are GPT-2 shaped: learned positions, pre-norm blocks with a
final norm, GELU feed-forward, tied output head; width 256, 4 heads, 2
layers, FFN 1024, vocabulary 1000, table length 1024, batch 1 by default.
Each (row, length) is called once untimed first: its time is recorded as
`first_call_seconds` (tracing and compilation plus one run) and
`compile_seconds` (that minus the median timed call). Then `--rounds`
timed rounds alternate the rows at each length, in an order that rotates
each round, so the slow phases of a shared machine hit every row alike
(the uncached row, and the naive loop beyond 128 tokens, run in the first
`--slow-rounds` rounds only); the table reports the median, and
`paired_ratios` the median over rounds of each row's time over the
cached row's in the same round. No
row stops early (`stop_ids=None`, `stop_token_ids=None`): every call
generates exactly `length` tokens, and the script checks that every
keras_tfm row produces the same tokens. On PyTorch `--torch-threads`
(default 1) sets `torch.set_num_threads` for every row alike: on a
shared 2-core machine two intra-op threads thrash.

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

CACHED = "keras_tfm cached"
EAGER = "keras_tfm eager"
REFERENCE = "PyTorch reference"
STREAM = "keras_tfm stream"
UNCACHED = "keras_tfm uncached"
NAIVE = "naive loop"


def is_slow(name, length):
    """Timed in the first `--slow-rounds` rounds only."""
    return name == UNCACHED or (name == NAIVE and length > 128)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--uncached-lengths", type=int, nargs="*")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--vocabulary-size", type=int, default=1000)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--intermediate-dim", type=int, default=1024)
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--slow-rounds", type=int, default=1)
    parser.add_argument(
        "--naive",
        choices=("auto", "on", "off"),
        default="auto",
        help="the naive-loop row (auto: on PyTorch only)",
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--torch-compile",
        choices=("inductor", "none"),
        default="inductor",
        help="PyTorch: compile the decoding steps with torch.compile, or "
        "run the traced steps uncompiled (a fast smoke run)",
    )
    parser.add_argument(
        "--skip-keras-hub", action="store_true", help="omit the keras-hub row"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    if args.quick:
        args.embedding_dim, args.intermediate_dim = 64, 128
        args.sequence_length = 64
        args.chunk_size = 4
        args.rounds = args.slow_rounds = 1
        args.lengths = args.lengths or [8, 16]
    args.lengths = args.lengths or [32, 128, 512]
    if args.uncached_lengths is None:
        slow = [n for n in args.lengths if n <= 128]
        args.uncached_lengths = (
            slow if backend == "torch" and not args.quick else args.lengths
        )
    args.naive = args.naive == "on" or (
        args.naive == "auto" and backend == "torch"
    )
    if max(args.lengths) + 1 > args.sequence_length:
        raise ValueError(
            "`--sequence-length` must exceed the longest length. Received: "
            f"sequence_length={args.sequence_length}, lengths={args.lengths}"
        )
    return args


def build_model(args):
    return decoder_lm(
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


def naive_generate(model, prompts, new_tokens):
    """Issue 15's reference: the whole growing prefix at every step."""
    from keras import ops

    ids = ops.convert_to_tensor(prompts, "int32")
    for _ in range(new_tokens):
        logits = model(ids, training=False)
        tokens = ops.argmax(logits[:, -1], axis=-1)
        ids = ops.concatenate([ids, ops.cast(tokens[:, None], "int32")], 1)
    return ids


def no_grad(call):
    """PyTorch: run `call` without an autograd graph (as Generator does)."""
    if keras.backend.backend() != "torch":
        return call
    import torch

    def wrapped():
        with torch.no_grad():
            return call()

    return wrapped


def make_rows(args, prompts):
    """{name: {length: zero-argument call returning the ids}}."""
    model = build_model(args)
    generator = Generator(model)

    def cached(n):
        return generator.generate(prompts, n + 1)

    def stream(n):
        chunks = generator.stream(prompts, n + 1, chunk_size=args.chunk_size)
        return np.concatenate(list(chunks), axis=1)

    def uncached(n):
        return generator.generate(prompts, n + 1, use_cache=False)

    def naive(n):
        return naive_generate(model, prompts, n)

    rows = {
        CACHED: {n: lambda n=n: cached(n) for n in args.lengths},
        STREAM: {n: lambda n=n: stream(n) for n in args.lengths},
    }
    if keras.backend.backend() == "torch":
        eager = Generator(model, jit_compile=False)
        rows[EAGER] = {
            n: lambda n=n: eager.generate(prompts, n + 1) for n in args.lengths
        }
        import _torch_reference

        _, reference = _torch_reference.build(
            args, compiled=args.torch_compile != "none"
        )
        rows[REFERENCE] = {
            n: lambda n=n: reference(prompts, n) for n in args.lengths
        }
    if args.uncached_lengths:
        rows[UNCACHED] = {
            n: lambda n=n: uncached(n) for n in args.uncached_lengths
        }
    if args.naive:
        rows[NAIVE] = {n: no_grad(lambda n=n: naive(n)) for n in args.lengths}
    hub_version = None
    if args.skip_keras_hub:
        return rows, hub_version
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
            n: lambda n=n, call=hub_call: call(n) for n in args.lengths
        }
    return rows, hub_version


def timed(call):
    start = time.perf_counter()
    output = call()
    return time.perf_counter() - start, output


def ids_of(output):
    if isinstance(output, dict):  # keras-hub
        output = output["token_ids"]
    return np.asarray(keras.ops.convert_to_numpy(output))


def run_rows(rows, rounds, slow_rounds):
    """First calls, then interleaved timed rounds; returns
    (first-call seconds, timed seconds, ids) keyed by (row, length)."""
    first, outputs = {}, {}
    for name, calls in rows.items():
        for length, call in calls.items():
            first[(name, length)], output = timed(call)
            outputs[(name, length)] = ids_of(output)
            print(
                f"first call {name:>20} length {length:>4}: "
                f"{first[(name, length)]:.2f} s",
                flush=True,
            )
    seconds = {key: [] for key in first}
    names = list(rows)
    lengths = sorted({length for _, length in first})
    for round_index in range(rounds):
        shift = round_index % len(names)
        for length in lengths:
            for name in names[shift:] + names[:shift]:
                if is_slow(name, length) and round_index >= slow_rounds:
                    continue
                if length in rows[name]:
                    seconds[(name, length)].append(timed(rows[name][length])[0])
        print(f"round {round_index + 1}/{rounds} done", flush=True)
    return first, seconds, outputs


def exactness(outputs, lengths):
    """Whether every keras_tfm row (and the naive loop) made the tokens of
    the cached row, per length."""
    same = {}
    for (name, length), ids in outputs.items():
        if name.startswith("keras-hub") or name in (CACHED, REFERENCE):
            continue
        reference = outputs[(CACHED, length)]
        same[f"{name} @ {length}"] = bool(np.array_equal(ids, reference))
    return same


def summarize(first, seconds):
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
                "first_call_seconds": first[(name, length)],
                "compile_seconds": max(first[(name, length)] - median, 0.0),
            }
        )
    return results


def paired_ratios(seconds):
    """Median over rounds of (row's time / cached time in the same
    round), for rows timed in every round: it cancels the slow phases
    of a shared machine."""
    paired = {}
    for (name, length), values in seconds.items():
        cached = seconds[(CACHED, length)]
        if name == CACHED or len(values) != len(cached):
            continue
        ratios = [v / c for v, c in zip(values, cached, strict=True)]
        paired[f"{name} / cached @ {length}"] = statistics.median(ratios)
    return paired


def lookup(results, name, length, key="ms_per_token"):
    for result in results:
        if result["row"] == name and result["length"] == length:
            return result[key]
    return None


def targets(results, lengths):
    """Issue 11's targets, where the rows were measured."""
    out = {}
    shortest, longest = min(lengths), max(lengths)
    cached = lookup(results, CACHED, shortest)
    out[f"cached {longest} / {shortest} (<= 1.3)"] = (
        lookup(results, CACHED, longest) / cached
    )
    for length in lengths:
        ours = lookup(results, CACHED, length)
        for name in ("keras-hub cached", "keras-hub cached XLA"):
            hub = lookup(results, name, length)
            if hub is not None:
                goal = 3 if keras.backend.backend() == "torch" else 1.5
                out[f"{name} / ours @ {length} (>= {goal})"] = hub / ours
        reference = lookup(results, REFERENCE, length)
        if reference is not None:
            out[f"ours / {REFERENCE} @ {length} (<= 1.5)"] = ours / reference
        naive = lookup(results, NAIVE, length)
        if naive is not None:
            out[f"naive / ours @ {length} (>= 1)"] = naive / ours
    return out


def table_of(results, names, lengths):
    def cell(name, length):
        value = lookup(results, name, length)
        return "-" if value is None else f"{value:.2f}"

    hub_names = [name for name in names if name.startswith("keras-hub")]
    ratio_names = [
        *hub_names,
        *(name for name in (NAIVE, EAGER, REFERENCE) if name in names),
    ]
    header = (
        "| tokens | "
        + " | ".join(names)
        + "".join(f" | {name} / cached" for name in ratio_names)
        + " |"
    )
    lines = [header, "|" + "---:|" * (header.count("|") - 1)]
    for length in lengths:
        cells = [cell(name, length) for name in names]
        cached = lookup(results, CACHED, length)
        for name in ratio_names:
            cells.append(f"{lookup(results, name, length) / cached:.2f}x")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compile_table_of(results, names, lengths):
    lines = [
        "| row | "
        + " | ".join(f"first call @ {n} (s)" for n in lengths)
        + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for name in names:
        cells = []
        for length in lengths:
            value = lookup(results, name, length, "first_call_seconds")
            cells.append("-" if value is None else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    backend = keras.backend.backend()
    if backend == "torch" and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
        print(f"torch threads: {torch.get_num_threads()}")
        if args.torch_compile == "none":
            from keras_tfm import _backend

            _backend.TORCH_COMPILE = False
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(
        1, args.vocabulary_size, (args.batch_size, 1)
    ).astype("int32")
    rows, hub_version = make_rows(args, prompts)
    first, seconds, outputs = run_rows(rows, args.rounds, args.slow_rounds)
    same = exactness(outputs, args.lengths)
    for check, equal in same.items():
        if not equal:
            print(f"warning: {check} differs from {CACHED}")
    results = summarize(first, seconds)
    names = list(rows)
    table = table_of(results, names, args.lengths)
    compile_table = compile_table_of(results, names, args.lengths)
    goals = targets(results, args.lengths)
    paired = paired_ratios(seconds)
    print()
    print(
        f"Greedy generation, backend {backend}, batch {args.batch_size}, "
        f"width {args.embedding_dim}, {args.num_layers} layers, "
        f"{os.cpu_count()} CPUs visible; median ms per new token"
    )
    print(table)
    print()
    print(compile_table)
    print()
    for goal, value in goals.items():
        print(f"{goal}: {value:.2f}")
    print()
    for pair, value in paired.items():
        print(f"paired {pair}: {value:.2f}")

    output = args.output or os.path.join(
        "benchmarks",
        "results",
        f"generation_{backend}{'_quick' if args.quick else ''}.json",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    config = {
        key: value for key, value in vars(args).items() if key != "output"
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
                "load_average": list(os.getloadavg()),
                "config": config,
                "results": results,
                "same_tokens_as_cached": same,
                "targets": goals,
                "paired_ratios": paired,
                "table": table,
                "first_call_table": compile_table,
            },
            file,
            indent=2,
        )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
