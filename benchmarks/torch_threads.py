"""PyTorch: `torch.set_num_threads` for the examples' models, 1 vs 2.

A training step (`train_on_batch`, eager) and greedy generation (eager
`Generator`, batch 1) of `train_lm.py`'s default model ("lm": 3 layers,
width 128, sequence 128, batch 32) and of the test suite's tiny one ("tiny":
1 layer, width 16, sequence 32, batch 16), with each thread count in turn
over `--rounds` rounds (alternating, so slow phases of a shared machine hit
both alike). Prints the median ms per step / per generated token and the
machine's load average, and writes them to `--output` as JSON; the
examples' `--torch-threads` default comes from it (README, "Speed").
`--busy N` runs N spinning processes beside it (other jobs on a loaded
machine).

    KERAS_BACKEND=torch python benchmarks/torch_threads.py
    KERAS_BACKEND=torch python benchmarks/torch_threads.py --busy 2
"""

import argparse
import json
import multiprocessing
import os
import statistics
import time

import numpy as np

SIZES = {
    "lm": dict(
        vocabulary=4000,
        length=128,
        batch=32,
        num_layers=3,
        embedding_dim=128,
        num_heads=4,
        intermediate_dim=512,
    ),
    "tiny": dict(
        vocabulary=200,
        length=32,
        batch=16,
        num_layers=1,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=32,
    ),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="spinning processes to run beside the measurement",
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    busy = [
        multiprocessing.Process(target=_spin, daemon=True)
        for _ in range(args.busy)
    ]
    for process in busy:
        process.start()
    try:
        rows, load = _measure(args)
    finally:
        for process in busy:
            process.terminate()
    print(f"load average before / after: {load[0]} / {load[1]}")
    print("| model | threads | train ms/step | generate ms/token (eager) |")
    print("|---|---:|---:|---:|")
    for name, count, step, token in rows:
        print(f"| {name} | {count} | {step:.1f} | {token:.2f} |")
    output = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"torch_threads_busy{args.busy}.json",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(
            {
                "benchmark": "torch_threads",
                "cpus": os.cpu_count(),
                "busy_processes": args.busy,
                "load_average_before": load[0],
                "load_average_after": load[1],
                "config": vars(args),
                "rows": [
                    {
                        "model": name,
                        "threads": count,
                        "train_ms_per_step": step,
                        "generate_ms_per_token": token,
                    }
                    for name, count, step, token in rows
                ],
            },
            f,
            indent=2,
        )
    print(f"wrote {output}")


def _spin():
    while True:
        pass


def _measure(args):
    import keras
    import torch

    from keras_tfm.generation import Generator
    from keras_tfm.models import decoder_lm

    assert keras.backend.backend() == "torch", "set KERAS_BACKEND=torch"
    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    before = os.getloadavg()
    rows = []
    for name, size in SIZES.items():
        size = dict(size)
        vocabulary, length, batch = (
            size.pop(k) for k in ("vocabulary", "length", "batch")
        )
        model = decoder_lm(vocabulary, length, dropout=0.0, **size)
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        ids = keras.ops.convert_to_tensor(
            rng.integers(1, vocabulary, size=(batch, length)).astype("int32")
        )
        generator = Generator(model, jit_compile=False)
        prompt = rng.integers(1, vocabulary, size=(1, 4)).astype("int32")
        model.train_on_batch(ids, ids)  # warm-up
        generator.generate(prompt, 4 + args.tokens)
        train = {t: [] for t in threads}
        generate = {t: [] for t in threads}
        for _ in range(args.rounds):
            for count in threads:
                torch.set_num_threads(count)
                start = time.perf_counter()
                for _ in range(args.steps):
                    model.train_on_batch(ids, ids)
                train[count].append(
                    (time.perf_counter() - start) / args.steps * 1e3
                )
                start = time.perf_counter()
                generator.generate(prompt, 4 + args.tokens)
                generate[count].append(
                    (time.perf_counter() - start) / args.tokens * 1e3
                )
        for count in threads:
            rows.append(
                (
                    name,
                    count,
                    statistics.median(train[count]),
                    statistics.median(generate[count]),
                )
            )
    return rows, (before, os.getloadavg())


if __name__ == "__main__":
    main()
