"""examples/finetune.py: a checkpoint in, a fine-tuned checkpoint out."""

import importlib
import json
import os
import sys

import numpy as np
import pytest
import torch
import transformers

from keras_tfm import checkpoints
from tests.helpers import to_numpy

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
sys.path.insert(0, EXAMPLES)
TINY = [
    "--max-chars", "30000", "--sequence-length", "32", "--batch-size",
    "16", "--epochs", "2", "--new-tokens", "4",
]  # fmt: skip


def finetune():
    return importlib.import_module("finetune")


def test_finetunes_and_writes_a_checkpoint(tmp_path, capsys):
    metrics = finetune().main([*TINY, "--output-dir", str(tmp_path / "a")])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == metrics
    assert metrics["perplexity_after"] < metrics["perplexity_before"]
    assert metrics["sample"].startswith("Return the ")
    # LoRA trains a small part of the model.
    model = checkpoints.load(metrics["finetuned"])
    assert 0 < metrics["trained_weights"] < model.count_params() / 4
    # The merged checkpoint reads in transformers, to the same logits.
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        metrics["finetuned"], attn_implementation="eager"
    ).eval()
    ids = np.array([[5, 0, 9, 300, 17, 4]])
    with torch.no_grad():
        want = theirs(torch.tensor(ids)).logits.numpy()
    got = to_numpy(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())

    # The fine-tuned checkpoint is a user's --checkpoint: all weights train.
    again = finetune().main(
        [
            *TINY,
            "--checkpoint", metrics["finetuned"],
            "--lora-rank", "0",
            "--epochs", "1",
            "--output-dir", str(tmp_path / "b"),
        ]
    )  # fmt: skip
    assert again["trained_weights"] == model.count_params()
    assert again["perplexity_before"] == pytest.approx(
        metrics["perplexity_after"], rel=1e-3
    )


def test_help_documents_every_flag(capsys):
    parser = finetune().build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lora-rank", "-1"], "--lora-rank"),
        (["--checkpoint", "/nonexistent"], "tokenizer.json"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        finetune().parse_args(argv)
    assert done.value.code == 2
    assert message in capsys.readouterr().err
