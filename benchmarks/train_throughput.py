"""Training throughput: keras_tfm vs keras-hub vs a PyTorch reference.

The same encoder language model (learned positions, post-norm blocks, relu
FFN, tied output head) is built twice in one process, once from keras_tfm
and once from keras-hub, and trained with `model.train_on_batch` on a fixed
in-memory batch; a plain `torch.nn.TransformerEncoder` of the same sizes is
trained alongside as a reference. The models alternate over `--rounds`
short rounds of `--steps` steps each, in an order that rotates every round
(after `--warmup` untimed steps that absorb tracing and compilation), so
slow phases of a shared machine hit every row alike; the table reports the
median tokens/s of each row, its ratio to keras-hub's median, and the
median over rounds of the same-round ratio ("paired", which cancels slow
phases of the machine) with a 95% bootstrap confidence interval (rounds
resampled with replacement). Many short rounds give the interval more
pairs, each taken closer together in time, than a few long ones: on the
2-core development machine one model's speed drifts by up to 20% over
tens of seconds.

Run from the repository root (the backend comes from `KERAS_BACKEND`):

    TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow \\
        python benchmarks/train_throughput.py --jit-compile false
    TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow \\
        python benchmarks/train_throughput.py --jit-compile true
    KERAS_BACKEND=jax python benchmarks/train_throughput.py
    KERAS_BACKEND=torch python benchmarks/train_throughput.py

On PyTorch a "keras_tfm jit_compile" row (the keras_tfm model under
`jit_compile=True`, i.e. `torch.compile` of Keras's train step) runs beside
"keras_tfm" (eager: `auto` is eager there); its warm-up time is the
compile. Add `--models keras_tfm,keras_hub` to drop the torch row,
`--torch-threads 1` to pin the reference's threads (PyTorch's OpenMP pool
slows down badly when the cores are shared), and `--quick` for a smoke run
(tiny sizes, 2 rounds of 2 steps). Results go to `--output`, by default
`benchmarks/results/train_throughput_<backend>[_jit][_quick].json` (`_jit`
when the Keras models were compiled with XLA/jit). On TensorFlow,
`--jit-compile auto` means no XLA on a CPU-only machine (Keras' rule).

Model, identical settings for all three rows: vocabulary 8000, width 256,
4 heads, FFN 1024, 2 layers, sequence length 128, batch 16, dropout 0.1 (on
attention probabilities and on every residual branch), Adam(1e-3), sparse
categorical cross-entropy from logits weighted by `labels != 0`. Inputs are
random token ids with trailing padding (0) on most rows; labels are the ids
shifted left by one. Tokens/s counts all `batch * sequence_length`
positions, padding included. (keras-hub's encoder has no dropout inside the
FFN; keras_tfm's and torch's apply it to the FFN hidden layer as well.)

FLOPs per training step are estimated analytically (forward + backward =
3 x forward, a multiply-add = 2 FLOPs):

    6 * N_matmul * tokens  +  12 * num_layers * batch * seq_len^2 * width

with `N_matmul = num_layers * (4 * width^2 + 2 * width * ffn) + vocab *
width` (the q/k/v/output projections, the two FFN kernels and the tied
output head; biases, norms, softmax and the embedding gather are ignored)
and `tokens = batch * seq_len`. The second term is `q k^T` and `probs v`
(`2 * 2 * seq_len^2 * width` FLOPs per sequence and layer forward, x3 for
training). The matmul peak is `keras.ops.matmul` of two float32
`--matmul-size` square matrices in a loop, measured in every round in the
same process on the same backend; "% of peak" divides a row's GFLOP/s by
the median of those measurements.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

ROWS = ("keras_tfm", "keras_tfm_jit", "keras_hub", "torch")
# keras_tfm_jit: the keras_tfm model under `jit_compile=True`, a row of its
# own on PyTorch, where `--jit-compile auto` means eager (Keras's rule).
DEFAULT_ROWS = {"torch": ROWS}
LABELS = {
    "keras_tfm": "keras_tfm",
    "keras_tfm_jit": "keras_tfm jit_compile",
    "keras_hub": "keras-hub",
    "torch": "torch reference",
}
QUICK = dict(
    _common.QUICK_MODEL,
    rounds=2,
    steps=2,
    warmup=1,
    matmul_size=128,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common.add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=2, help="per round")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per model"
    )
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated subset of " + ",".join(ROWS) + " (default: "
        "all but keras_tfm_jit; all on PyTorch)",
    )
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--matmul-iterations", type=int, default=10)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the reference, and on the PyTorch "
        "backend for the Keras rows too (default: torch's)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny sizes, 2 rounds of 2 steps",
    )
    parser.add_argument("--output", default=None, help="results JSON path")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.models is None:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        default = [row for row in ROWS if row != "keras_tfm_jit"]
        args.models = ",".join(DEFAULT_ROWS.get(backend, default))
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(ROWS))
    if unknown:
        parser.error(f"unknown --models {unknown}; choose from {ROWS}")
    if args.width % args.num_heads:
        parser.error("--num-heads must divide --width")
    return args


def training_flops(args):
    width, layers = args.width, args.num_layers
    matmul_params = layers * (
        4 * width * width + 2 * width * args.intermediate_dim
    ) + (args.vocabulary_size * width)
    tokens = args.batch_size * args.sequence_length
    dense = 6 * matmul_params * tokens
    attention = 12 * layers * args.batch_size * args.sequence_length**2 * width
    return {
        "matmul_params": matmul_params,
        "tokens_per_step": tokens,
        "dense_flops_per_step": dense,
        "attention_flops_per_step": attention,
        "flops_per_step": dense + attention,
        "formula": (
            "6 * N_matmul * batch * seq_len + 12 * num_layers * batch * "
            "seq_len^2 * width; N_matmul = num_layers * (4 * width^2 + "
            "2 * width * ffn) + vocab * width"
        ),
    }


# --------------------------------------------------------------------------
# PyTorch reference


class TorchRunner:
    def __init__(self, torch, args, data):
        nn = torch.nn
        self.torch = torch
        self.functional = torch.nn.functional

        class EncoderLM(nn.Module):
            def __init__(self):
                super().__init__()
                self.token_embedding = nn.Embedding(
                    args.vocabulary_size, args.width
                )
                self.position_embedding = nn.Embedding(
                    args.sequence_length, args.width
                )
                layer = nn.TransformerEncoderLayer(
                    args.width,
                    args.num_heads,
                    dim_feedforward=args.intermediate_dim,
                    dropout=args.dropout,
                    activation="relu",
                    layer_norm_eps=1e-5,
                    batch_first=True,
                    norm_first=False,
                )
                self.encoder = nn.TransformerEncoder(
                    layer, args.num_layers, enable_nested_tensor=False
                )

            def forward(self, ids):
                positions = torch.arange(ids.shape[1], device=ids.device)
                x = self.token_embedding(ids) + self.position_embedding(
                    positions
                )
                x = self.encoder(x, src_key_padding_mask=ids == 0)
                # Tied output head.
                return nn.functional.linear(x, self.token_embedding.weight)

        self.model = EncoderLM()
        self.model.train()
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=args.learning_rate
        )
        ids, labels, weights = data
        self.ids = torch.from_numpy(ids).long()
        self.labels = torch.from_numpy(labels).long()
        self.weights = torch.from_numpy(weights)
        self.vocabulary_size = args.vocabulary_size

    jit_compile = False

    def threads(self):
        return self.torch.get_num_threads()

    def params(self):
        return sum(p.numel() for p in self.model.parameters())

    def step(self):
        logits = self.model(self.ids)
        losses = self.functional.cross_entropy(
            logits.reshape(-1, self.vocabulary_size),
            self.labels.reshape(-1),
            reduction="none",
        )
        # Keras' "sum_over_batch_size" with sample weights.
        loss = (losses * self.weights.reshape(-1)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def format_table(result):
    lines = [
        "| model | tokens/s (median) | vs keras-hub | vs keras-hub, "
        "paired [95% CI] | GFLOP/s | % of peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        if row.get("skipped"):
            lines.append(
                f"| {LABELS[row['name']]} | skipped: {row['skipped']} | | | | |"
            )
            continue
        ratios = [
            "-" if r is None else f"{r:.2f}x"
            for r in (
                row.get("relative_to_keras_hub"),
                row.get("relative_to_keras_hub_paired_median"),
            )
        ]
        interval = row.get("relative_to_keras_hub_paired_ci95")
        if interval and row["name"] != "keras_hub":
            ratios[1] += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
        lines.append(
            f"| {LABELS[row['name']]} "
            f"| {row['tokens_per_second']:,.0f} "
            f"| {ratios[0]} | {ratios[1]} "
            f"| {row['gflops']:.1f} "
            f"| {row['percent_of_matmul_peak']:.1f}% |"
        )
    env = result["environment"]
    peak = result["matmul_peak"]
    lines += [
        "",
        f"backend={env['backend']}, jit_compile={result['jit_compile']}, "
        f"keras {env['keras']}, keras-hub {env.get('keras_hub', '?')}, "
        f"CPUs={env['cpu_count']}",
        f"float32 matmul peak ({peak['size']}x{peak['size']}, keras.ops."
        f"matmul): median {peak['median_gflops']:.1f} GFLOP/s, max "
        f"{peak['max_gflops']:.1f} GFLOP/s",
        f"training FLOPs/step (analytic): "
        f"{result['flops']['flops_per_step'] / 1e9:.4g} GFLOP "
        f"({result['flops']['tokens_per_step']} tokens)",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    # keras-hub's PositionEmbedding warns that it drops the mask, which its
    # TokenAndPositionEmbedding then restores.
    warnings.filterwarnings("ignore", message=".*does not support masking")
    import keras

    backend = keras.backend.backend()
    keras.utils.set_random_seed(args.seed)
    data = _common.make_data(args)
    flops = training_flops(args)

    if args.torch_threads and (backend == "torch" or "torch" in args.models):
        import torch

        torch.set_num_threads(args.torch_threads)  # every row's
    runners, rows = {}, {}
    builders = {
        "keras_tfm": _common.build_keras_tfm,
        "keras_hub": _common.build_keras_hub,
    }
    for name in args.models:
        rows[name] = {"name": name}
        if name == "torch":
            try:
                import torch
            except ImportError:
                rows[name]["skipped"] = "torch is not installed"
                continue
            torch.manual_seed(args.seed)
            runners[name] = TorchRunner(torch, args, data)
        elif name == "keras_tfm_jit":
            jit_args = argparse.Namespace(**vars(args))
            jit_args.jit_compile = "true"
            model = _common.build_keras_tfm(keras, jit_args)
            runners[name] = _common.KerasRunner(keras, model, jit_args, data)
        else:
            model = builders[name](keras, args)
            runners[name] = _common.KerasRunner(keras, model, args, data)

    for name, runner in runners.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            runner.step()
        rows[name]["warmup_seconds"] = time.perf_counter() - start
        rows[name]["parameters"] = runner.params()
        rows[name]["jit_compile"] = runner.jit_compile
        rows[name]["tokens_per_second_per_round"] = []
        print(
            f"{LABELS[name]}: {rows[name]['parameters']:,} parameters, "
            f"warm-up {rows[name]['warmup_seconds']:.1f}s",
            flush=True,
        )

    peaks = []
    order = list(runners)
    tokens = flops["tokens_per_step"] * args.steps
    for round_index in range(args.rounds):
        peaks.append(
            _common.matmul_gflops(
                keras, args.matmul_size, args.matmul_iterations, args.seed
            )
        )
        # Rotate the order so no model always runs first.
        shift = round_index % max(len(order), 1)
        for name in order[shift:] + order[:shift]:
            elapsed = _common.time_steps(runners[name], args.steps)
            rows[name]["tokens_per_second_per_round"].append(tokens / elapsed)
        report = ", ".join(
            f"{LABELS[n]} {rows[n]['tokens_per_second_per_round'][-1]:,.0f}"
            for n in order
        )
        print(
            f"round {round_index + 1}/{args.rounds}: tokens/s {report}; "
            f"matmul {peaks[-1]:.1f} GFLOP/s",
            flush=True,
        )

    peak = statistics.median(peaks)
    flops_per_token = flops["flops_per_step"] / flops["tokens_per_step"]
    for name in runners:
        row = rows[name]
        row["tokens_per_second"] = statistics.median(
            row["tokens_per_second_per_round"]
        )
        row["gflops"] = row["tokens_per_second"] * flops_per_token / 1e9
        row["percent_of_matmul_peak"] = 100 * row["gflops"] / peak
    hub = rows.get("keras_hub", {}).get("tokens_per_second")
    hub_rounds = rows.get("keras_hub", {}).get("tokens_per_second_per_round")
    for name in runners:
        row = rows[name]
        row["relative_to_keras_hub"] = (
            row["tokens_per_second"] / hub if hub else None
        )
        row["relative_to_keras_hub_paired_median"] = None
        row["relative_to_keras_hub_paired_ci95"] = None
        if hub_rounds:
            # Same-round ratios cancel slow phases of a shared machine.
            ratios = _common.paired_ratios(
                row["tokens_per_second_per_round"], hub_rounds, args.seed
            )
            row["relative_to_keras_hub_per_round"] = ratios["per_round"]
            row["relative_to_keras_hub_paired_median"] = ratios["paired_median"]
            row["relative_to_keras_hub_paired_ci95"] = ratios["paired_ci95"]
    if "torch" in runners:
        rows["torch"]["torch_threads"] = runners["torch"].threads()

    keras_jit = sorted(
        {
            rows[n]["jit_compile"]
            for n in runners
            if n not in ("torch", "keras_tfm_jit")
        }
    )
    environment = _common.environment(backend)
    result = {
        "benchmark": "train_throughput",
        "quick": args.quick,
        "jit_compile_requested": args.jit_compile,
        "jit_compile": keras_jit[0] if len(keras_jit) == 1 else keras_jit,
        "environment": environment,
        "config": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "flops": flops,
        "matmul_peak": {
            "size": args.matmul_size,
            "gflops_per_round": peaks,
            "median_gflops": peak,
            "max_gflops": max(peaks),
        },
        "rows": [rows[name] for name in args.models],
    }
    table = format_table(result)
    result["table_markdown"] = table
    print()
    print(table)

    output = args.output
    if output is None:
        suffix = "_jit" if True in keras_jit else ""
        suffix += "_quick" if args.quick else ""
        output = os.path.join(
            _common.RESULTS, f"train_throughput_{backend}{suffix}.json"
        )
    _common.write_json(result, output)
    return result


if __name__ == "__main__":
    main()
