"""Fine-tune a pretrained causal language model from a Hugging Face checkpoint.

    python examples/finetune.py
    python examples/finetune.py --checkpoint ~/models/qwen3 --data notes.txt
    python examples/finetune.py --checkpoint DIR --data FILE --lora-rank 0

`--checkpoint DIR` is a Hugging Face model directory as `save_pretrained`
writes it (`config.json`, `model.safetensors` or its shards, and the
`tokenizer.json` of the `tokenizers` library) of a GPT-2, Llama, Mistral,
Qwen2 or Qwen3 model, downloaded beforehand: nothing is fetched here.
Without it the script makes a tiny Llama-shaped checkpoint of random
weights (and a byte-level BPE tokenizer trained on the data) under
OUTPUT_DIR/base, so that every step below runs on any machine.

`--data FILE` is UTF-8 text; a training sequence is a paragraph (the text
between blank lines), cut into pieces of `--sequence-length` tokens. The
default is the docstrings of Python's standard library. A tenth is held
out. Sequences are packed several to a row (`keras_tfm.data.pack`), each
attending only to itself; the packed model shares the loaded model's
layers, so training one trains the other.

With `--lora-rank R` (8 by default; 0 trains every weight) only LoRA
factors of rank R on every Dense and token-table layer train
(`keras_tfm.models.enable_lora`). The script prints the held-out
perplexity before and after, a greedy continuation of `--prompt`, and
writes the fine-tuned model, LoRA merged, with its tokenizer to
OUTPUT_DIR/finetuned: a checkpoint that `transformers` and
`keras_tfm.checkpoints.load` read. The last line printed is the JSON of
the metrics, also written to OUTPUT_DIR/metrics.json.
"""

import json
import math
import os
import shutil
import time

import _data as data
import _flags as flags
import numpy as np
from train_lm import stdlib_docstrings


def build_parser():
    parser = flags.make_parser(__doc__)
    add = parser.add_argument
    add(
        "--checkpoint",
        help="Hugging Face model directory with tokenizer.json (default: "
        "a tiny random Llama-shaped one made under OUTPUT_DIR/base)",
    )
    add("--data", help="UTF-8 text file (default: stdlib docstrings)")
    add(
        "--output-dir",
        default="runs/finetune",
        help="where the fine-tuned checkpoint and metrics.json go",
    )
    add(
        "--sequence-length",
        type=flags.positive_int,
        default=64,
        help="tokens per packed row (at most the model's position table)",
    )
    add("--batch-size", type=flags.positive_int, default=8, help="rows a step")
    add("--epochs", type=flags.positive_int, default=2, help="passes")
    add("--learning-rate", type=float, default=2e-3, help="Adam's step size")
    add(
        "--lora-rank",
        type=int,
        default=8,
        help="rank of the LoRA factors; 0 fine-tunes every weight",
    )
    add(
        "--max-chars",
        type=flags.positive_int,
        default=200_000,
        help="characters of the default data to read",
    )
    add("--dtype", default=None, help='weights dtype, e.g. "bfloat16"')
    add("--prompt", default="Return the ", help="text to continue")
    add(
        "--new-tokens",
        type=flags.positive_int,
        default=24,
        help="tokens of the greedy continuation",
    )
    add("--seed", type=int, default=0, help="seed of the split and weights")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lora_rank < 0:
        parser.error(f"--lora-rank must be >= 0, got {args.lora_rank}")
    if args.checkpoint is not None and not os.path.isfile(
        os.path.join(args.checkpoint, "tokenizer.json")
    ):
        parser.error(
            f"--checkpoint {args.checkpoint}: no tokenizer.json (the "
            "`tokenizers` file that Hugging Face model directories carry)"
        )
    return parser, args


def paragraphs(text):
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def tiny_checkpoint(texts, path):
    """A Llama-shaped checkpoint of random weights and a BPE tokenizer
    trained on `texts`, written to `path`: a stand-in for a download."""
    import keras_tfm as tfm

    tokenizer = data.train_tokenizer(texts, "subword", 512)
    config = {
        "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "bos_token_id": data.START,
        "eos_token_id": data.END,
        "pad_token_id": data.PAD,
    }
    tfm.checkpoints.save(tfm.checkpoints.from_config(config), path)
    tokenizer.save(os.path.join(path, "tokenizer.json"))


def held_out_perplexity(model, validation):
    """exp of the mean next-token cross-entropy over held-out rows."""
    results = model.evaluate(*validation, verbose=0, return_dict=True)
    return math.exp(results["loss"])


def main(argv=None):
    parser, args = parse_args(argv)
    if args.data is not None:
        texts = paragraphs(data.read_text(parser, "--data", args.data))
    else:
        texts = paragraphs(stdlib_docstrings(args.max_chars))
    rng = np.random.default_rng(args.seed)
    train_texts, validation_texts = data.split(texts, 0.1, rng)

    import keras
    from tokenizers import Tokenizer

    import keras_tfm as tfm

    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = os.path.join(args.output_dir, "base")
        tiny_checkpoint(train_texts, checkpoint)
    model = tfm.checkpoints.load(checkpoint, dtype=args.dtype)
    if not isinstance(model, tfm.models.CausalLM):
        parser.error(
            f"--checkpoint {checkpoint}: a {type(model).__name__}; this "
            "script fine-tunes causal language models (gpt2, llama, "
            "mistral, qwen2, qwen3)"
        )
    tokenizer = Tokenizer.from_file(os.path.join(checkpoint, "tokenizer.json"))
    pad_id = model.pad_id
    length = args.sequence_length
    if model.max_length is not None:
        length = min(length, model.max_length)
    train = data.pieces(data.encode(tokenizer, train_texts), length)
    validation = data.pieces(data.encode(tokenizer, validation_texts), length)
    packed_train = tfm.data.pack(
        train, length, return_labels=True, pad_id=pad_id
    )
    train_y = packed_train.pop("labels")
    # Held out one sequence a row, in the packed model's format.
    packed_validation = tfm.data.pack(
        [[*ids] for ids in validation],
        length,
        return_labels=True,
        pad_id=pad_id,
    )
    validation_y = packed_validation.pop("labels")

    packed = tfm.models.CausalLM(
        model.embedding,
        model.blocks,
        final_norm=model.final_norm,
        head=model.head,
        packed=True,
        pad_id=pad_id,
    )
    if args.lora_rank:
        adapted = tfm.models.enable_lora(model, args.lora_rank)
        print(f"LoRA rank {args.lora_rank} on {len(adapted)} layers")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(
        f"{checkpoint}: {model.count_params():,} weights, {trainable:,} "
        f"trained; {len(train)} training and {len(validation)} held-out "
        f"sequences of at most {length} tokens, packed into "
        f"{len(train_y)} rows"
    )
    # Labels without a target are the pad id, or -1 when there is none.
    ignore = -1 if pad_id is None else pad_id
    packed.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=tfm.losses.MaskedSparseCategoricalCrossentropy(
            label_smoothing=0.0, ignore_class=ignore
        ),
    )
    held_out = (packed_validation, validation_y)
    before = held_out_perplexity(packed, held_out)
    start = time.perf_counter()
    history = packed.fit(
        packed_train,
        train_y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=2,
    )
    seconds = time.perf_counter() - start
    after = held_out_perplexity(packed, held_out)
    print(f"held-out perplexity: {before:.2f} before, {after:.2f} after")

    prompt = data.encode(tokenizer, [args.prompt])[0] or [0]
    generator = tfm.generation.Generator(model)
    ids = generator.generate([prompt], max_length=len(prompt) + args.new_tokens)
    text = tokenizer.decode([int(i) for i in ids[0]])
    print(f"--- greedy continuation ---\n{text}\n---------------------------")

    finetuned = os.path.join(args.output_dir, "finetuned")
    tfm.checkpoints.save(model, finetuned)
    shutil.copy(os.path.join(checkpoint, "tokenizer.json"), finetuned)
    metrics = {
        "checkpoint": checkpoint,
        "finetuned": finetuned,
        "lora_rank": args.lora_rank,
        "trained_weights": trainable,
        "perplexity_before": before,
        "perplexity_after": after,
        "first_loss": history.history["loss"][0],
        "loss": history.history["loss"][-1],
        "train_seconds": round(seconds, 2),
        "sample": text,
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
