"""Greedy decoding of pretrained-shaped models against a measured floor.

Milliseconds per decoding step (time of one `generate` call over the new
tokens it makes) of a GPT-2-small-shaped model (vocabulary 50257, 1024
positions, width 768, 12 layers, 12 heads, tied head: 124M parameters)
and a Llama-shaped one (vocabulary 32000, width 768, 12 layers, 12 query
heads over 4 key/value heads, SiLU-gated FFN 2048, untied head: 125M
parameters, 100M of them read per step), at batch 1 and 8, for 128 and
512 new tokens after an 8-token prompt.
The weights are random (seeded) and made here with `transformers`,
written with `save_pretrained` to a temporary directory; every row runs
those same weights:

- "keras_tfm JAX", "keras_tfm TensorFlow", "keras_tfm PyTorch":
  `keras_tfm.checkpoints.load` and
  `keras_tfm.generation.Generator(model).generate(prompts,
  max_length=prompt + new)`, one compiled loop per shape (XLA on JAX and
  TensorFlow; on PyTorch a Python loop over one inductor-compiled step);
- "transformers eager": `model.generate(do_sample=False,
  max_new_tokens=new)` on PyTorch, with its dynamic cache;
- "transformers compiled": the same with `cache_implementation="static"`
  and `model.forward = torch.compile(model.forward)` (on CPU: inductor's
  C++ code); a failure is recorded in the JSON and the row left out;
- "keras-hub JAX" (GPT-2 only): `keras_hub.models.GPT2Backbone.
  from_preset(dir)` (keras-hub's own converter of the same directory) in
  a `GPT2CausalLM(preprocessor=None)` with the greedy sampler, called
  with `{"token_ids", "padding_mask"}` and `stop_token_ids=None`.

Each Keras backend runs in its own worker process (`KERAS_BACKEND` is read
at import), which this script starts and drives over a pipe; the PyTorch
rows run in this process. For each (model, batch, new tokens) every row is
called once untimed (its `first_call_seconds`: tracing, compilation and
one run), then `--rounds` timed rounds call every row in an order that
rotates each round; the tables give medians. Every row must make the
tokens of "transformers eager" (`same_tokens`).

The floor of one decoding step is the larger of (bytes of the weights a
step reads, plus the mean filled key/value cache, in float32) / the copy
bandwidth and (its FLOPs: 2 per weight and token plus attention) / the
float32 GEMM rate, both measured here first: a `numpy.copyto` of
`--bandwidth-mib` MiB (read + write bytes, the STREAM convention) and a
`torch.matmul` of two `--gemm-size` square matrices, with every core.
Gathered tables (position embeddings, an untied input embedding) are not
counted: a step reads one row of them.

Targets (issue 19): batch 1 within 1.15x of the floor; batch 8 at least
1.5x faster per step than "transformers eager"; no other row faster than
ours by more than 5%.

Run from the repository root:

    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/pretrained.py
    python benchmarks/pretrained.py --quick     # smoke run

`--quick` uses tiny models, 8 new tokens and one round. Results go to
`--output`, by default `benchmarks/results/pretrained[_quick].json`.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

OURS = {"jax": "keras_tfm JAX", "tensorflow": "keras_tfm TensorFlow"}
OURS["torch"] = "keras_tfm PyTorch"
HUB = "keras-hub JAX"
EAGER = "transformers eager"
COMPILED = "transformers compiled"
MARK = "@@pretrained "

MODELS = {
    "gpt2": dict(
        model_type="gpt2",
        vocab_size=50257,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
    ),
    "llama": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    ),
}
QUICK_MODELS = {
    "gpt2": dict(MODELS["gpt2"], vocab_size=100, n_positions=64, n_embd=32)
    | dict(n_layer=2, n_head=2),
    "llama": dict(MODELS["llama"], vocab_size=100, hidden_size=32)
    | dict(intermediate_size=64, num_hidden_layers=2)
    | dict(num_attention_heads=4, num_key_value_heads=2)
    | dict(max_position_embeddings=64),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=None)
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--backends",
        nargs="*",
        default=["jax", "tensorflow", "torch"],
        help="Keras backends of the keras_tfm rows (one worker each)",
    )
    parser.add_argument(
        "--torch-rows",
        nargs="*",
        default=["eager", "compiled"],
        help="which transformers rows to run",
    )
    parser.add_argument(
        "--compiled-new-tokens",
        type=int,
        nargs="*",
        default=None,
        help="the new-token counts at which the transformers compiled row "
        "runs (default: all; each shape compiles anew)",
    )
    parser.add_argument(
        "--keras-hub",
        choices=("on", "off"),
        default="on",
        help="the keras-hub GPT-2 row (needs the jax worker)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch.set_num_threads for the transformers rows (0: torch's "
        "default, one per core)",
    )
    parser.add_argument("--bandwidth-mib", type=int, default=512)
    parser.add_argument("--gemm-size", type=int, default=4096)
    parser.add_argument("--initializer-range", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.new_tokens = args.new_tokens or [8]
        args.bandwidth_mib = min(args.bandwidth_mib, 64)
        args.gemm_size = min(args.gemm_size, 1024)
    args.new_tokens = args.new_tokens or [128, 512]
    if args.compiled_new_tokens is None:
        args.compiled_new_tokens = args.new_tokens
    return args


# --------------------------------------------------------------------------
# Checkpoints, made with transformers


def make_checkpoints(args, directory):
    """Seeded random transformers models, saved in `directory`.

    Returns `({name: path}, {name: weight_figures(model)})`.
    """
    import torch
    import transformers

    configs = QUICK_MODELS if args.quick else MODELS
    paths, figures = {}, {}
    for name in args.models:
        options = dict(configs[name])
        kind = options.pop("model_type")
        config = transformers.AutoConfig.for_model(
            kind,
            initializer_range=args.initializer_range,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            **options,
        )
        torch.manual_seed(args.seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
        paths[name] = os.path.join(directory, name)
        model.save_pretrained(paths[name])
        figures[name] = weight_figures(model)
        figures[name]["vocabulary_size"] = config.vocab_size
    return paths, figures


def weight_figures(model):
    """Parameters, the parameters a decoding step reads, and the cache
    sizes of a transformers causal LM."""
    import torch

    config = model.config
    output = model.get_output_embeddings().weight
    gathered = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            if module.weight.data_ptr() != output.data_ptr():
                gathered += module.weight.numel()
    params = sum(p.numel() for p in model.parameters())
    heads = config.num_attention_heads
    width = config.hidden_size
    return {
        "parameters": int(params),
        "parameters_read_per_step": int(params - gathered),
        "layers": int(config.num_hidden_layers),
        "heads": int(heads),
        "key_value_heads": int(getattr(config, "num_key_value_heads", heads)),
        "head_dim": int(getattr(config, "head_dim", None) or width // heads),
    }


def floor_ms(figures, batch, prompt, new, bandwidth, gemm):
    """The floor of one decoding step, from the machine's measured rates:
    max(bytes read / bandwidth, FLOPs / GEMM rate), mean over the steps."""
    # Step s (0-based) attends over prompt + s + 1 positions.
    mean_positions = prompt + (new + 1) / 2
    kv_width = figures["key_value_heads"] * figures["head_dim"]
    cache_bytes = 2 * figures["layers"] * kv_width * mean_positions * 4
    weight_bytes = 4 * figures["parameters_read_per_step"]
    bytes_read = weight_bytes + batch * cache_bytes
    attention = (
        4 * figures["layers"] * figures["heads"] * figures["head_dim"]
    ) * mean_positions
    flops = batch * (2 * figures["parameters_read_per_step"] + attention)
    memory_ms = 1000 * bytes_read / bandwidth
    compute_ms = 1000 * flops / gemm
    return {
        "ms_per_step": max(memory_ms, compute_ms),
        "memory_ms": memory_ms,
        "compute_ms": compute_ms,
        "bytes_per_step": bytes_read,
        "flops_per_step": flops,
    }


# --------------------------------------------------------------------------
# The machine's own rates


def copy_bandwidth(mib, repeats=10):
    """Bytes per second of `numpy.copyto` (read + write), best of repeats."""
    source = np.ones(mib * 2**20 // 4, "float32")
    target = np.empty_like(source)
    np.copyto(target, source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def gemm_rate(size, repeats=10):
    """FLOP/s of a float32 `torch.matmul`, best of repeats."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=generator)
    b = torch.rand(size, size, generator=generator)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# --------------------------------------------------------------------------
# Rows


def prompts_for(vocabulary, batch, length, seed):
    rng = np.random.default_rng([seed, batch, length, vocabulary])
    return rng.integers(0, vocabulary, (batch, length)).astype("int32")


class TorchRows:
    """The transformers rows, in this process."""

    def __init__(self, paths, kinds):
        import torch
        import transformers

        self.torch = torch
        self.models = {}
        self.errors = {}
        for name, path in paths.items():
            for kind in kinds:
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    path, dtype=torch.float32
                ).eval()
                model.generation_config.eos_token_id = None
                model.generation_config.pad_token_id = 0
                if kind == "compiled":
                    model.generation_config.cache_implementation = "static"
                    model.forward = torch.compile(model.forward)
                row = EAGER if kind == "eager" else COMPILED
                self.models[(row, name)] = model

    def names(self):
        return sorted({row for row, _ in self.models})

    def call(self, row, model, prompts, new):
        ids = self.torch.from_numpy(prompts.astype("int64"))
        start = time.perf_counter()
        with self.torch.inference_mode():
            out = self.models[(row, model)].generate(
                ids,
                attention_mask=self.torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
            )
        return time.perf_counter() - start, out.numpy()


class Worker:
    """A Keras backend's rows, in a child process of this script."""

    def __init__(self, backend, args, paths):
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            backend,
            "--checkpoints",
            json.dumps(paths),
            "--keras-hub",
            args.keras_hub,
        ]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read()
        self.rows = self.ready["rows"]

    def _read(self):
        for line in self.process.stdout:
            if line.startswith(MARK):
                message = json.loads(line[len(MARK) :])
                if "error" in message:
                    raise RuntimeError(message["error"])
                return message
            sys.stderr.write(line)
        raise RuntimeError(f"worker exited with {self.process.wait()}")

    def call(self, row, model, prompts, new):
        request = {"row": row, "model": model, "new": new}
        request["prompts"] = prompts.tolist()
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self._read()
        return reply["seconds"], np.asarray(reply["ids"], "int64")

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=120)


def worker_main(args):
    """Serve one Keras backend's rows over stdin/stdout (JSON lines)."""
    import keras

    import keras_tfm.checkpoints
    from keras_tfm.generation import Generator

    backend = keras.backend.backend()

    def send(message):
        sys.stdout.write(MARK + json.dumps(message) + "\n")
        sys.stdout.flush()

    paths = json.loads(args.checkpoints)
    calls = {}
    for name, path in paths.items():
        generator = Generator(keras_tfm.checkpoints.load(path))

        def ours(prompts, new, generator=generator):
            return generator.generate(prompts, prompts.shape[1] + new)

        calls[(OURS[backend], name)] = ours
        if name == "gpt2" and backend == "jax" and args.keras_hub == "on":
            import keras_hub

            backbone = keras_hub.models.GPT2Backbone.from_preset(path)
            hub = keras_hub.models.GPT2CausalLM(
                backbone=backbone, preprocessor=None
            )
            hub.compile(sampler="greedy")

            def keras_hub_call(prompts, new, hub=hub):
                batch, length = prompts.shape
                ids = np.zeros((batch, length + new), "int32")
                ids[:, :length] = prompts
                mask = np.zeros(ids.shape, bool)
                mask[:, :length] = True
                inputs = {"token_ids": ids, "padding_mask": mask}
                out = hub.generate(inputs, stop_token_ids=None)
                return np.asarray(out["token_ids"])

            calls[(HUB, name)] = keras_hub_call
    import keras_tfm

    send(
        {
            "rows": sorted({row for row, _ in calls}),
            "versions": {
                "keras": keras.__version__,
                "keras_tfm": getattr(keras_tfm, "__version__", "?"),
                **{
                    module: getattr(sys.modules[module], "__version__", "?")
                    for module in ("jax", "tensorflow", "keras_hub")
                    if module in sys.modules
                },
            },
        }
    )
    for line in sys.stdin:
        request = json.loads(line)
        prompts = np.asarray(request["prompts"], "int32")
        call = calls[(request["row"], request["model"])]
        start = time.perf_counter()
        ids = np.asarray(call(prompts, request["new"]))
        seconds = time.perf_counter() - start
        send({"seconds": seconds, "ids": ids.tolist()})


# --------------------------------------------------------------------------
# Running and reporting


def run_config(callers, rows, model, prompts, new, rounds, errors):
    """First calls, then `rounds` timed rounds in a rotating order; a row
    whose first call raises is recorded in `errors` and dropped."""
    first, ids, working = {}, {}, []
    for row in rows:
        # Eager PyTorch compiles nothing per shape: a short warm-up call.
        warm_up = min(new, 4) if row == EAGER else new
        try:
            first[row], ids[row] = callers[row](row, model, prompts, warm_up)
        except Exception as error:  # noqa: BLE001 - recorded, row dropped
            errors[row] = f"{type(error).__name__}: {error}"
            print(f"  {row} failed: {errors[row]}", flush=True)
            continue
        working.append(row)
        print(f"  first call {row:>22}: {first[row]:7.2f} s", flush=True)
    rows, seconds = working, {row: [] for row in working}
    for index in range(rounds):
        shift = index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            elapsed, out = callers[row](row, model, prompts, new)
            seconds[row].append(elapsed)
            ids[row] = out  # the timed call's ids, compared below
    return rows, first, seconds, ids


def targets_for(entry, ours_rows, others):
    """Issue 19's targets for one (model, batch, new tokens) entry."""
    out = []
    rows = entry["rows"]
    for ours in ours_rows:
        if ours not in rows:
            continue
        mine = rows[ours]["ms_per_step"]
        if entry["batch"] == 1:
            ratio = mine / entry["floor"]["ms_per_step"]
            out.append(
                {
                    "row": ours,
                    "target": "batch 1 within 1.15x of the floor",
                    "ratio": ratio,
                    "met": ratio <= 1.15,
                }
            )
        elif EAGER in rows:
            ratio = rows[EAGER]["ms_per_step"] / mine
            out.append(
                {
                    "row": ours,
                    "target": f"batch {entry['batch']} >= 1.5x faster than "
                    "transformers eager",
                    "ratio": ratio,
                    "met": ratio >= 1.5,
                }
            )
        present = [row for row in others if row in rows]
        if present:
            best = min(present, key=lambda row: rows[row]["ms_per_step"])
            ratio = mine / rows[best]["ms_per_step"]
            out.append(
                {
                    "row": ours,
                    "target": f"no other row >5% faster (fastest: {best})",
                    "ratio": ratio,
                    "met": ratio <= 1.05,
                }
            )
    return out


def table_of(entries, names, key="ms_per_step", digits=2):
    header = "| model | batch | new | floor | " + " | ".join(names) + " |"
    lines = [header, "|---|---:|---:|" + "---:|" * (len(names) + 1)]
    for entry in entries:
        cells = []
        for name in names:
            row = entry["rows"].get(name)
            if row is None:
                cells.append("-")
                continue
            cell = f"{row[key]:.{digits}f}"
            if key == "ms_per_step" and not row["same_tokens"]:
                cell += " (tokens differ)"
            cells.append(cell)
        floor = (
            f"{entry['floor']['ms_per_step']:.2f}"
            if key == "ms_per_step"
            else "-"
        )
        lines.append(
            f"| {entry['model']} | {entry['batch']} | {entry['new_tokens']} "
            f"| {floor} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def targets_table_of(entries):
    lines = [
        "| model | batch | new | row | target | ratio | met |",
        "|---|---:|---:|---|---|---:|---|",
    ]
    for entry in entries:
        for goal in entry["targets"]:
            lines.append(
                f"| {entry['model']} | {entry['batch']} | "
                f"{entry['new_tokens']} | {goal['row']} | {goal['target']} "
                f"| {goal['ratio']:.2f}x | "
                f"{'met' if goal['met'] else 'not met'} |"
            )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return

    load_start = os.getloadavg()
    print(f"load average {load_start}", flush=True)
    bandwidth = copy_bandwidth(args.bandwidth_mib)
    gemm = gemm_rate(args.gemm_size)  # every core, before --torch-threads
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    rates = {
        "copy_bandwidth_bytes_per_second": bandwidth,
        "gemm_flops_per_second": gemm,
        "load_average_start": list(load_start),
    }
    print(
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
        f"GEMM {gemm / 1e9:.0f} GFLOP/s",
        flush=True,
    )
    directory = tempfile.TemporaryDirectory(prefix="pretrained_")
    paths, figures = make_checkpoints(args, directory.name)

    callers, errors, versions = {}, {}, {}
    torch_rows = TorchRows(paths, args.torch_rows)
    for row in torch_rows.names():
        callers[row] = torch_rows.call
    workers = []
    for backend in args.backends:
        start = time.perf_counter()
        worker = Worker(backend, args, paths)
        workers.append(worker)
        versions[backend] = worker.ready["versions"]
        print(
            f"{backend} worker ready in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        for row in worker.rows:
            callers[row] = worker.call
    ours_rows = [OURS[b] for b in args.backends]
    order = [
        *ours_rows,
        EAGER,
        COMPILED,
        HUB,
    ]
    names = [row for row in order if row in callers]

    entries = []
    try:
        # The shorter runs first: a run cut short has every row there.
        for new in args.new_tokens:
            for model in args.models:
                for batch in args.batch_sizes:
                    load = os.getloadavg()
                    print(
                        f"{model} batch {batch} new {new} (load {load[0]:.1f})",
                        flush=True,
                    )
                    prompts = prompts_for(
                        figures[model]["vocabulary_size"],
                        batch,
                        args.prompt_length,
                        args.seed,
                    )
                    rows = [
                        row
                        for row in names
                        if (row != HUB or model == "gpt2")
                        and (row != COMPILED or new in args.compiled_new_tokens)
                        and row not in errors
                    ]
                    entry = _measure(
                        callers, rows, model, prompts, new, args, errors
                    )
                    entry.update(
                        model=model,
                        batch=batch,
                        new_tokens=new,
                        prompt_length=args.prompt_length,
                        load_average=list(load),
                        floor=floor_ms(
                            figures[model],
                            batch,
                            args.prompt_length,
                            new,
                            bandwidth,
                            gemm,
                        ),
                    )
                    others = [r for r in names if r not in ours_rows]
                    entry["targets"] = targets_for(entry, ours_rows, others)
                    entries.append(entry)
                    # What is done so far, in case a later shape fails.
                    partial = summary(
                        args, entries, names, errors, versions, figures
                    )
                    write(args, dict(partial, **rates, partial=True))
    finally:
        for worker in workers:
            worker.close()
        directory.cleanup()

    result = summary(args, entries, names, errors, versions, figures)
    result.update(rates)
    load_end = result["load_average_end"]
    print()
    print(
        "Greedy decoding, float32, ms per step (one new token for every "
        f"row of the batch); copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
        f"GEMM {gemm / 1e9:.0f} GFLOP/s; load {load_start[0]:.1f} at the "
        f"start, {load_end[0]:.1f} at the end"
    )
    print(result["table"])
    print(
        "\nFirst call (trace, compile and one run; transformers eager: "
        "a 4-token warm-up), seconds:"
    )
    print(result["first_call_table"])
    print("\nTargets:")
    print(result["targets_table"])
    for row, error in errors.items():
        print(f"\n{row} failed: {error}")
    write(args, result)


def summary(args, entries, names, errors, versions, figures):
    """The JSON of the run so far."""
    import torch
    import transformers

    config = {k: v for k, v in vars(args).items() if k not in _PRIVATE}
    return {
        "benchmark": "pretrained",
        "config": config,
        "environment": {
            "machine": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "workers": versions,
        },
        "load_average_end": list(os.getloadavg()),
        "models": figures,
        "entries": entries,
        "errors": errors,
        "table": table_of(entries, names),
        "first_call_table": table_of(entries, names, "first_call_seconds", 2),
        "targets_table": targets_table_of(entries),
    }


def write(args, result):
    output = args.output or os.path.join(
        "benchmarks",
        "results",
        f"pretrained{'_quick' if args.quick else ''}.json",
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as file:
        json.dump(result, file, indent=2)
    print(f"wrote {output}", flush=True)


_PRIVATE = ("output", "worker", "checkpoints")


def _measure(callers, rows, model, prompts, new, args, errors):
    """Run one configuration: each row's times and `same_tokens`."""
    working, first, seconds, ids = run_config(
        callers, rows, model, prompts, new, args.rounds, errors
    )
    reference = ids.get(EAGER)
    out = {"rows": {}}
    for row in working:
        median = statistics.median(seconds[row])
        same = reference is None or np.array_equal(ids[row], reference)
        expected = (prompts.shape[0], prompts.shape[1] + new)
        out["rows"][row] = {
            "ms_per_step": 1000 * median / new,
            "seconds_per_call": seconds[row],
            "first_call_seconds": first[row],
            "first_call_new_tokens": min(new, 4) if row == EAGER else new,
            "same_tokens": bool(same and ids[row].shape == expected),
        }
        print(
            f"  {row:>22}: {1000 * median / new:8.2f} ms/step"
            f"{'' if same else '  (tokens differ)'}",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main()
