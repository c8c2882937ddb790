"""The example scripts, end to end on tiny settings, in this process.

Each script's `main(argv)` runs on the backend under test; a failed start
must be one line on stderr with exit status 2 and must leave
`--output-dir` as it was.
"""

import builtins
import csv
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from unittest import mock

import keras
import numpy as np
import pytest

from keras_tfm import distribution, generation, models, sampling
from tests.helpers import (
    free_port,
    jax_only,
    run_processes,
    subprocess_env,
    tensorflow_only,
    torch_only,
)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
sys.path.insert(0, EXAMPLES)

data = importlib.import_module("_data")
decoding = importlib.import_module("_decoding")
flags = importlib.import_module("_flags")
training = importlib.import_module("_training")
# Plots need matplotlib, an optional extra; without it runs skip them.
PLOTS = importlib.util.find_spec("matplotlib") is not None
NAMES = ("train_seq2seq", "train_classifier", "train_lm")

# --lr-scale 0.5: two epochs of four steps must lower the loss whatever the
# initial weights (at 2, some initializations diverged; seeds 0-4 checked).
TINY_MODEL = [
    "--num-layers", "1", "--embedding-dim", "16", "--num-heads", "2",
    "--intermediate-dim", "32", "--dropout", "0", "--batch-size", "16",
    "--warmup-steps", "4", "--lr-scale", "0.5", "--verbose", "2",
]  # fmt: skip
TINY = {
    "train_seq2seq": [
        "--train-size", "64", "--test-size", "8", "--epochs", "2",
    ],
    "train_classifier": [
        "--train-size", "64", "--test-size", "16", "--epochs", "2",
        "--max-length", "16", "--position", "learned",
    ],
    "train_lm": [
        "--corpus-chars", "2500", "--sequence-length", "32", "--epochs",
        "2", "--sample-length", "5", "--position", "rotary", "--tensorboard",
    ],
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: more torch threads only
    contend with each other."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def example(name):
    return importlib.import_module(name)


def run(name, output_dir, *extra):
    argv = [*TINY_MODEL, *TINY[name], "--output-dir", str(output_dir)]
    return example(name).main([*argv, *extra])


def read_history(output_dir):
    with open(os.path.join(output_dir, training.HISTORY), newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("name", NAMES)
def test_runs_end_to_end(name, tmp_path, capsys):
    metrics = run(name, tmp_path)
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == metrics  # the last line printed
    with open(tmp_path / training.METRICS) as file:
        assert json.load(file) == metrics
    assert metrics["backend"] == keras.backend.backend()
    assert metrics["epochs"] == 2
    assert metrics["loss"] < metrics["first_loss"]
    files = set(os.listdir(tmp_path))
    assert {training.MODEL, training.CHECKPOINT, training.HISTORY} <= files
    plots = {
        "train_seq2seq": {"attention", "position_encoding", "learning_curves"},
        "train_classifier": {
            "attention",
            "position_encoding",
            "learning_curves",
        },
        "train_lm": {"learning_curves"},  # rotary: no position table
    }[name]
    assert ({f"{plot}.png" for plot in plots} <= files) == PLOTS
    assert training.BACKUP_DIR not in files  # a finished run leaves none
    if name != "train_classifier":  # packed: the LM; the dates: padded
        assert metrics["packing"] is (name == "train_lm")
        assert metrics["train_tokens_per_second"] > 0
    assert len(read_history(tmp_path)) == 2
    if name == "train_seq2seq":
        assert 0 <= metrics["test_exact_match"] <= 1
        check_predictions(tmp_path, metrics)
    if name == "train_classifier":
        assert 0 <= metrics["test_accuracy"] <= 1
    if name == "train_lm":
        assert os.listdir(tmp_path / "logs")  # --tensorboard
        assert 1 < metrics["val_perplexity"] < 200
        assert metrics["sample"].startswith("Return the ")


def read_predictions(output_dir):
    path = os.path.join(output_dir, example("train_seq2seq").PREDICTIONS)
    with open(path, encoding="utf-8", newline="") as file:
        lines = file.read().split("\n")
    assert lines.pop() == ""  # every line ends with a line break
    return [line.split("\t") for line in lines]


def check_predictions(output_dir, metrics):
    """One row per test pair (`--test-size 8`) that rescores the run."""
    header, *rows = read_predictions(output_dir)
    assert header == ["source", "reference", "hypothesis"]
    assert len(rows) == 8 and all(len(row) == 3 for row in rows)
    sources, references, hypotheses = zip(*rows, strict=True)
    assert all(len(reference) == 10 for reference in references)  # ISO
    assert len(set(sources)) == 8  # test dates are distinct
    scores = decoding.translation_scores(hypotheses, references)
    assert scores["test_bleu"] == metrics["test_bleu"]
    assert scores["test_chrf"] == metrics["test_chrf"]


def test_predictions_escape_tabs_and_line_breaks(tmp_path):
    texts = [("a\tb", "c\\d"), ("e", "f")], ["g\nh", "i\rj"]
    example("train_seq2seq").write_predictions(
        os.path.join(tmp_path, "test_predictions.tsv"), *texts
    )
    assert read_predictions(tmp_path) == [
        ["source", "reference", "hypothesis"],
        ["a\\tb", "c\\\\d", "g\\nh"],
        ["e", "f", "i\\rj"],
    ]


def test_resumes_an_interrupted_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run("train_classifier", tmp_path, "--epochs", "3",
            "--stop-after-epochs", "1")  # fmt: skip
    assert stopped.value.code == training.EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert "run the same command again to resume" in err
    assert json.loads(out.strip().splitlines()[-1])["interrupted"] is True
    assert [row["epoch"] for row in read_history(tmp_path)] == ["0"]
    assert os.path.isdir(tmp_path / training.BACKUP_DIR)
    assert not os.path.exists(tmp_path / training.METRICS)

    # Other settings would not resume this run: refused, backup kept.
    with pytest.raises(SystemExit) as refused:
        run("train_classifier", tmp_path, "--epochs", "3",
            "--embedding-dim", "32")  # fmt: skip
    assert refused.value.code == 2
    assert "--embedding-dim" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / training.BACKUP_DIR)

    metrics = run("train_classifier", tmp_path, "--epochs", "3")
    out = capsys.readouterr().out
    assert "Resuming" in out
    assert "Epoch 1/3" not in out
    assert "Epoch 2/3" in out and "Epoch 3/3" in out
    assert [row["epoch"] for row in read_history(tmp_path)] == ["0", "1", "2"]
    assert metrics["epochs"] == 3
    # The optimizer continued too: three epochs of updates in all.
    model = keras.saving.load_model(tmp_path / training.MODEL)
    steps_per_epoch = 64 // 16
    assert int(model.optimizer.iterations.numpy()) == 3 * steps_per_epoch


def snapshot(directory):
    """Every file under `directory` with its content."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                files[os.path.relpath(path, directory)] = file.read()
    return files


@pytest.fixture
def data_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    files = {
        "columns.tsv": "one\tuno\ttatoeba\ntwo\tdos\tt\nthree\ttres\n",
        "no_tab.tsv": "one\tuno\ntwo dos\n",
        "empty.tsv": "",
        "blank.tsv": "\n  \n\n",
        "empty_field.tsv": "one\t\n",
        "one_label.tsv": "pos\tgood film\npos\tgreat film\n",
        "short.txt": "too short",
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "latin1.tsv").write_bytes(
        "one\tuno\n\ncaf\xe9\tcoffee\n".encode("latin-1")
    )
    return folder


# A --distribute choice that the backend under test cannot run.
OTHER_STRATEGY = (
    "data-parallel" if keras.backend.backend() == "tensorflow" else "mirrored"
)
BAD_INPUTS = [
    ("train_seq2seq", ["--data", "{data}/missing.tsv"], "no such file"),
    ("train_seq2seq", ["--data", "{data}"], "is a directory"),
    ("train_seq2seq", ["--data", "{data}/latin1.tsv"], "latin1.tsv, line 3: "
     "not UTF-8 text (invalid continuation byte at byte 4 of the line)"),
    ("train_seq2seq", ["--data", "{data}/columns.tsv"], "columns.tsv, line 3: "
     "2 tab-separated columns, but line 1 has 3"),
    ("train_classifier", ["--data", "{data}/latin1.tsv"], "line 3: not UTF-8"),
    ("train_lm", ["--text-file", "{data}/latin1.tsv"], "line 3: not UTF-8"),
    ("train_seq2seq", ["--tokenizer", "subword", "--max-vocabulary", "100"],
     "--max-vocabulary must be >= 260 with --tokenizer subword"),
    ("train_seq2seq", ["--tokenizer", "bpe"], "invalid choice: 'bpe'"),
    ("train_seq2seq", ["--data", "{data}/no_tab.tsv"], "line 2: no tab"),
    ("train_seq2seq", ["--data", "{data}/empty.tsv"], "the file is empty"),
    ("train_seq2seq", ["--data", "{data}/blank.tsv"], "the file is empty"),
    ("train_seq2seq", ["--data", "{data}/empty_field.tsv"], "empty target"),
    ("train_seq2seq", ["--position", "sinus"], "invalid choice: 'sinus'"),
    ("train_seq2seq", ["--batch-size", "0"], "--batch-size: must be"),
    ("train_seq2seq", ["--epochs", "two"], "--epochs: expected a positive"),
    ("train_seq2seq", ["--num-heads", "3"], "--num-heads 3 must divide"),
    ("train_seq2seq", ["--dropout", "1.5"], "--dropout: must be in"),
    ("train_classifier", ["--data", "{data}/no_tab.tsv"], "no tab"),
    ("train_classifier", ["--data", "{data}/one_label.tsv"], "2 different"),
    ("train_classifier", ["--position", "rope"], "invalid choice"),
    ("train_classifier", ["--batch-size", "0"], "--batch-size: must be"),
    ("train_lm", ["--text-file", "{data}/missing.txt"], "no such file"),
    ("train_lm", ["--text-file", "{data}/empty.tsv"], "the file is empty"),
    ("train_lm", ["--text-file", "{data}/short.txt"], "too short"),
    ("train_lm", ["--position", "learnt"], "invalid choice"),
    ("train_lm", ["--batch-size", "0"], "--batch-size: must be"),
    ("train_lm", ["--seed", "-1"], "--seed: must be >= 0"),
    # Decoding flags.
    ("train_seq2seq", ["--num-beams", "0"], "--num-beams: must be positive"),
    ("train_seq2seq", ["--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    ("train_seq2seq", ["--temperature", "0"], "--temperature: must be"),
    ("train_lm", ["--temperature", "0"], "--temperature: must be positive"),
    ("train_lm", ["--top-k", "0"], "--top-k: must be positive"),
    ("train_lm", ["--length-penalty", "nan"], "--length-penalty: must be"),
    ("train_seq2seq", ["--sampler", "top-k"], "invalid choice: 'top-k'"),
    ("train_seq2seq", ["--sampler", "top_k"], "--sampler top_k needs --top-k"),
    ("train_seq2seq", ["--sampler", "top_p"], "--sampler top_p needs --top-p"),
    ("train_seq2seq", ["--num-beams", "2"], "--num-beams applies to "
     "--sampler beam only, not greedy"),
    ("train_seq2seq", ["--top-k", "5"], "--top-k applies to --sampler "
     "top_k or top_p only, not greedy"),
    ("train_lm", ["--sampler", "beam", "--temperature", "1"],
     "--temperature applies to --sampler top_k or top_p only, not beam"),
    ("train_lm", ["--sequence-length", "1"], "needs --sequence-length 2"),
    # A strategy of another backend; multi-worker without TF_CONFIG.
    ("train_classifier", ["--distribute", OTHER_STRATEGY],
     f"--distribute {OTHER_STRATEGY}: `distribute='{OTHER_STRATEGY}'` "
     "needs the"),
    ("train_seq2seq", ["--distribute", "ring"], "invalid choice: 'ring'"),
    # --export: greedy or beam only, into a directory, on TensorFlow.
    ("train_lm", ["--export", "{data}/export"], "--export writes --sampler "
     "greedy or beam only, not top_p"),
    ("train_seq2seq", ["--export", "{data}/columns.tsv"],
     "is not a directory"),
    *(
        [] if keras.backend.backend() == "tensorflow"
        else [("train_seq2seq", ["--export", "{data}/export"],
               "--export needs KERAS_BACKEND=tensorflow")]
    ),
    ("train_lm", ["--distribute", "multi-worker"],
     "--distribute multi-worker: "),
]  # fmt: skip


@pytest.mark.parametrize("name, args, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_status_2(
    name, args, message, data_files, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / training.METRICS).write_text('{"from": "an earlier run"}')
    (output_dir / "notes.txt").write_text("keep me")
    before = snapshot(output_dir)
    args = [a.replace("{data}", str(data_files)) for a in args]
    with pytest.raises(SystemExit) as error:
        run(name, output_dir, *args)
    assert error.value.code == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err  # exactly one line
    assert err.startswith(f"{os.path.basename(sys.argv[0])}: error: ")
    assert message in err
    assert "Traceback" not in out + err
    assert snapshot(output_dir) == before  # nothing destroyed or added


def test_resuming_without_a_good_tokenizer_is_an_error(
    data_files, tmp_path, capsys
):
    (data_files / "pairs.tsv").write_text("eins\tone\nzwei\ttwo\n")
    output_dir = tmp_path / "out"
    (output_dir / training.BACKUP_DIR).mkdir(parents=True)  # unfinished
    (output_dir / data.TOKENIZER_FILE).write_text("{not json")
    before = snapshot(output_dir)
    with pytest.raises(SystemExit) as error:
        run(
            "train_seq2seq", output_dir, "--data", str(data_files / "pairs.tsv")
        )
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot resume: {output_dir / data.TOKENIZER_FILE}: not a" in err
    assert snapshot(output_dir) == before


def test_output_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(SystemExit) as error:
        run("train_seq2seq", path)
    assert error.value.code == 2
    assert "is not a directory" in capsys.readouterr().err
    assert path.read_text() == "not a directory"


def test_unreadable_data_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "secret.tsv"
    path.write_text("a\tb\n")
    # chmod 0 does not stop root (CI runs as root): refuse the read itself.
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(SystemExit) as error:
        run("train_seq2seq", tmp_path / "out", "--data", str(path))
    assert error.value.code == 2
    assert "cannot read it" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback(tmp_path):
    script = os.path.join(EXAMPLES, "train_seq2seq.py")
    result = subprocess.run(
        [sys.executable, script, "--batch-size", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "train_seq2seq.py: error: argument --batch-size: must be positive, "
        "got '0' (see --help)"
    ]
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []  # no runs/ directory made


@pytest.mark.parametrize("name", NAMES)
def test_help_documents_every_flag(name, capsys):
    module = example(name)
    parser = module.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit) as done:
        module.parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
    assert f"python examples/{name}.py" in text  # the docstring's command


def test_the_docstring_commands_parse():
    for name in NAMES:
        module = example(name)
        for line in module.__doc__.splitlines():
            line = line.strip()
            if line.startswith(f"python examples/{name}.py"):
                argv = line.split()[2:]
                parsed = module.build_parser().parse_args(argv)
                assert parsed.position in flags.POSITIONS


def test_flag_choices_are_the_library_names():
    assert decoding.SAMPLERS == sampling.SHORTHANDS
    assert set(decoding.SAMPLER_OPTIONS) == set(sampling.SHORTHANDS)
    assert training.DISTRIBUTE == distribution.DISTRIBUTE_CHOICES


def tiny_seq2seq(vocabulary_size=12, sequence_length=8):
    return models.seq2seq_transformer(
        vocabulary_size,
        sequence_length,
        num_layers=1,
        embedding_dim=16,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.0,
    )


def test_generate_in_batches_compiles_once():
    generator = generation.Generator(tiny_seq2seq())
    sources = np.random.default_rng(0).integers(1, 12, size=(5, 4))
    sources[1, 2:] = 0  # padding
    decoded = decoding.generate(
        generator, sources, 6, batch_size=2, start_id=data.START
    )
    assert decoded.shape == (5, 6) and decoded.dtype == np.int32
    if keras.backend.backend() != "torch":  # torch runs eagerly
        assert generator.trace_count == 1  # batches 2, 2 and 1 (+ 1 copy)
    # Greedy: the same tokens as all rows in one call.
    expected = generator.generate(sources, 6, start_id=data.START)
    assert decoded.tolist() == expected.tolist()


def test_exact_match_stops_at_end():
    decoded = np.array([[5, 6, 7, 2, 0, 0], [5, 6, 7, 2, 0, 0]])
    targets = np.array([[5, 6, 7, 2, 4, 4], [5, 6, 2, 0, 0, 0]])
    assert decoding.exact_match(decoded, targets) == 0.5


class RecordingGenerator:
    """Stands in for a decoder-only `Generator`: continues each prompt
    with `tokens`, then pads; records every call."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.calls = []

    def generate(self, inputs, max_length, **options):
        inputs = np.asarray(inputs)
        self.calls.append((inputs.shape, max_length, options))
        out = np.zeros((len(inputs), max_length), "int32")
        for row, prompt in enumerate(inputs):
            ids = [int(i) for i in prompt if i] + list(self.tokens)
            out[row, : min(len(ids), max_length)] = ids[:max_length]
        return out


def test_lm_samples_past_its_window_in_rounds():
    module = example("train_lm")
    tokenizer = data.train_tokenizer(["abcdef"], "char", 100)
    [[a, b]] = data.encode(tokenizer, ["ab"])
    generator = RecordingGenerator([a] * 8)
    text = module.sample(
        generator, tokenizer, "fed", 10, 8, 7, sampler="top_k", top_k=2
    )
    assert text == "fed" + "a" * 10  # 5 + 4 + 4 generated, 10 kept
    # Rounds of the last 4 characters continued up to 8: one shape.
    assert [call[:2] for call in generator.calls] == [((1, 4), 8)] * 3
    assert [call[2]["seed"] for call in generator.calls] == [7, 8, 9]
    assert generator.calls[0][2]["sampler"] == "top_k"

    ended = RecordingGenerator([a, data.END, b])
    assert module.sample(ended, tokenizer, "fed", 10, 8, 0) == "feda"
    assert len(ended.calls) == 1


DECODING_RUNS = [
    ("train_seq2seq", ["--sampler", "beam", "--num-beams", "2",
                       "--length-penalty", "0.5"]),
    ("train_seq2seq", ["--sampler", "top_p", "--top-p", "0.9",
                       "--temperature", "0.7", "--seed", "3"]),
    # Learned positions and a sample longer than --sequence-length 32.
    ("train_lm", ["--sampler", "top_k", "--top-k", "5", "--position",
                  "learned", "--sample-length", "40"]),
]  # fmt: skip


# The flags' path to the Generator is the same on every backend (each
# sampler is tested on every backend in test_generation.py): one pass.
@torch_only
@pytest.mark.parametrize("name, args", DECODING_RUNS)
def test_decoding_flags_reach_the_generator(name, args, tmp_path, monkeypatch):
    calls = []
    real_generate = generation.Generator.generate

    def recording_generate(self, inputs, max_length, **options):
        calls.append((np.shape(inputs), max_length, options))
        return real_generate(self, inputs, max_length, **options)

    monkeypatch.setattr(generation.Generator, "generate", recording_generate)
    metrics = run(name, tmp_path, *args)
    parsed = example(name).build_parser().parse_args(args)
    assert metrics["sampler"] == parsed.sampler
    assert calls
    for _, _, options in calls:
        assert options["sampler"] == parsed.sampler
        assert options["end_id"] == data.END
        # The options of the chosen sampler, with the flags' values; no
        # others (the Generator refuses options a sampler would ignore).
        used = decoding.SAMPLER_OPTIONS[parsed.sampler]
        for option in ("num_beams", "length_penalty", "top_k", "top_p"):
            value = getattr(parsed, option)
            if option in used and value is not None:
                assert options[option] == value
            else:
                assert option not in options
        if "temperature" in used:
            assert options["temperature"] == parsed.temperature
    if name == "train_seq2seq":
        assert 0 <= metrics["test_exact_match"] <= 1
        # Only a random sampler takes a seed (the Generator refuses it
        # elsewhere).
        if parsed.sampler in ("top_k", "top_p"):
            assert calls[0][2]["seed"] == parsed.seed
        else:
            assert "seed" not in calls[0][2]
        assert calls[0][0][0] == 8  # the 8 test sources in one batch
    else:
        prompt = "Return the "
        assert metrics["sample"].startswith(prompt)
        assert len(metrics["sample"]) <= len(prompt) + 40
        assert {call[:2] for call in calls} == {((1, 16), 32)}


# train_lm packs by default (test_runs_end_to_end); here only to export.
PACKING_RUNS = ["train_seq2seq"] + (
    ["train_lm"] if keras.backend.backend() == "tensorflow" else []
)


@pytest.mark.parametrize("name", PACKING_RUNS)
def test_packing_trains_and_decodes(name, tmp_path, monkeypatch):
    """--packing: packed rows for training, the weights copied to the
    unpacked model, which decodes; on TensorFlow --export too, whose
    SavedModel decodes as the script did."""
    calls = []
    real_generate = generation.Generator.generate

    def recording_generate(self, inputs, max_length, **options):
        ids = real_generate(self, inputs, max_length, **options)
        assert not self.model.packed  # the unpacked twin decodes
        calls.append((np.array(inputs), ids))
        return ids

    monkeypatch.setattr(generation.Generator, "generate", recording_generate)
    extra = ["--packing", "--epochs", "1"]
    export = keras.backend.backend() == "tensorflow"
    if export:
        extra += ["--export", str(tmp_path / "export")]
        if name == "train_lm":
            extra += ["--sampler", "greedy", "--sample-length", "3"]
    metrics = run(name, tmp_path / "run", *extra)
    assert metrics["packing"] is True and metrics["epochs"] == 1
    assert 0.5 < metrics["train_fill"] <= 1
    assert metrics["train_tokens_per_second"] > 0
    assert calls  # decoded after training
    if name == "train_seq2seq":
        assert 0 <= metrics["test_exact_match"] <= 1
        # The saved (unpacked) model holds the trained (packed) weights.
        trained = keras.saving.load_model(
            tmp_path / "run" / training.CHECKPOINT, compile=False
        )
        saved = keras.saving.load_model(
            tmp_path / "run" / training.MODEL, compile=False
        )
        assert trained.packed and not saved.packed
        for a, b in zip(
            trained.get_weights(), saved.get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    else:
        assert metrics["sample"].startswith("Return the ")
    if not export:
        return
    import tensorflow as tf

    assert metrics["export"] == str(tmp_path / "export")
    serve = tf.saved_model.load(str(tmp_path / "export")).signatures[
        "serving_default"
    ]
    inputs, expected = calls[0]
    ids = serve(token_ids=tf.constant(inputs[:1], tf.int32))["token_ids"]
    assert ids.numpy().tolist() == expected[:1].tolist()
    tokenizer = data.load_tokenizer(
        None, str(tmp_path / "export" / data.TOKENIZER_FILE)
    )
    assert (
        tokenizer.to_str()
        == data.load_tokenizer(
            None, str(tmp_path / "run" / data.TOKENIZER_FILE)
        ).to_str()
    )


def test_tokenizers_reserve_the_special_ids():
    for kind in data.TOKENIZERS:
        tokenizer = data.train_tokenizer(["abc abc", "aab"], kind, 300)
        ids = [tokenizer.token_to_id(t) for t in data.SPECIAL_TOKENS]
        assert ids == [data.PAD, data.START, data.END, data.UNK], kind
    chars = data.train_tokenizer(["abc", "aab"], "char", 100)
    [ids] = data.encode(chars, ["abz"])
    assert ids[2] == data.UNK  # unseen character
    assert data.decode(chars, [data.START, *ids, data.END, 5]) == "ab"
    words = data.train_tokenizer(["the cat", "the dog"], "word", 100)
    [ids] = data.encode(words, ["the  dog"])
    assert data.decode(words, ids) == "the dog"
    assert data.token_names(words)[: len(data.SPECIAL_TOKENS) + 1] == [
        *data.SPECIAL_TOKENS,
        "the",  # the most frequent word first
    ]


GERMAN = [
    ("Die Preise werden sich kaum ändern.", "Prices are unlikely to change."),
    ("Er hat es mir gegenüber erwähnt.", "He mentioned it to me."),
    ("Grüße aus Köln!", "Greetings from Cologne!"),
    ("Das Wetter ist schön.", "The weather is fine."),
    ("Wir müssen uns beeilen.", "We must hurry."),
]


def test_subword_round_trip_is_lossless(tmp_path):
    train = [text for pair in GERMAN[:3] for text in pair]
    # Unseen words, letters and symbols, double and trailing spaces, a
    # decomposed umlaut (u + combining diaeresis), a tab: all restored.
    test = [text for pair in GERMAN[3:] for text in pair] + [
        "Straße, Öl, Ähre, Übel; ½ € 😀 ☃",
        "  zwei  Leerzeichen \tund ein Tab ",
        "fu\u0308r",
    ]
    tokenizer = data.train_tokenizer(train, "subword", 300)
    path = str(tmp_path / data.TOKENIZER_FILE)
    tokenizer.save(path)
    reloaded = data.load_tokenizer(None, path)
    for ids in data.encode(reloaded, train + test):
        assert data.UNK not in ids
    decoded = [
        data.decode(reloaded, ids) for ids in data.encode(reloaded, test)
    ]
    assert decoded == test
    assert data.encode(reloaded, test) == data.encode(tokenizer, test)
    # Subwords: fewer tokens than the UTF-8 bytes of the training text.
    assert len(data.encode(reloaded, [train[0]])[0]) < len(train[0].encode())


def test_translation_scores():
    references = [target for _, target in GERMAN]
    perfect = decoding.translation_scores(references, references)
    assert perfect["test_bleu"] == perfect["test_chrf"] == 100
    empty = decoding.translation_scores([""] * len(GERMAN), references)
    assert empty["test_bleu"] == empty["test_chrf"] == 0
    half = decoding.translation_scores(references[:2] + [""] * 3, references)
    assert 0 < half["test_bleu"] < 100 and 0 < half["test_chrf"] < 100
    assert "tok:13a" in perfect["bleu_signature"]  # sacrebleu's default
    assert "version:" in perfect["chrf_signature"]


def test_seq2seq_reads_pairs(data_files, tmp_path):
    module = example("train_seq2seq")
    lines = [f"{i} apples\tmanzanas {i}" for i in range(40)]
    long = ["a b c d e f g h\tx", "x\ttoo long for four words here"]
    (data_files / "pairs.tsv").write_text("\n".join(lines + long) + "\n")
    parser, args = module.parse_args(
        ["--data", str(data_files / "pairs.tsv"), "--tokenizer", "word",
         "--max-length", "4", "--test-fraction", "0.25",
         "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    rng = np.random.default_rng(0)
    train, test, tokenizer = module.load_pairs(parser, args, rng)
    # The 2 pairs too long are dropped, from whichever split they fell in.
    assert sorted(train + test) == sorted(
        tuple(line.split("\t")) for line in lines
    )
    assert len(train) == 30 and len(test) == 10  # both fell in training
    _, target = train[0]
    [ids] = data.encode(tokenizer, [target])
    assert data.decode(tokenizer, ids) == target
    _, unseen = test[0]  # its number is not a training word: <unk>
    assert data.UNK in data.encode(tokenizer, [unseen])[0]
    assert not os.path.exists(tmp_path / "out")  # loading writes nothing


# Resuming is the same on every backend (test_resumes_an_interrupted_run
# runs in each pass): one pass.
@torch_only
def test_seq2seq_on_data_resumes_with_its_tokenizer(
    data_files, tmp_path, capsys, monkeypatch
):
    """`--data` with the default subword tokenizer: trained and saved by
    the first run, loaded (not retrained) by the resumed one; BLEU and
    chrF on the test split."""
    rows = [f"{de}\t{en}" for de, en in GERMAN * 4]
    (data_files / "de_en.tsv").write_text("\n".join(rows), encoding="utf-8")
    extra = ["--data", str(data_files / "de_en.tsv"), "--test-fraction",
             "0.2", "--epochs", "2", "--max-vocabulary", "300"]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        run("train_seq2seq", tmp_path, *extra, "--stop-after-epochs", "1")
    assert stopped.value.code == training.EXIT_INTERRUPTED
    saved = (tmp_path / data.TOKENIZER_FILE).read_bytes()
    capsys.readouterr()

    def no_training(*args):
        raise AssertionError("the resumed run trained a new tokenizer")

    monkeypatch.setattr(data, "train_tokenizer", no_training)
    metrics = run("train_seq2seq", tmp_path, *extra)
    assert "Resuming" in capsys.readouterr().out
    assert (tmp_path / data.TOKENIZER_FILE).read_bytes() == saved
    assert metrics["tokenizer"] == "subword" and metrics["epochs"] == 2
    assert 0 <= metrics["test_bleu"] <= 100
    assert 0 <= metrics["test_chrf"] <= 100
    assert metrics["bleu_signature"].startswith("nrefs:1|")
    with open(tmp_path / training.METRICS) as file:
        assert json.load(file)["test_chrf"] == metrics["test_chrf"]


def test_classifier_reads_labelled_text(data_files, tmp_path):
    module = example("train_classifier")
    lines = [f"{'pos' if i % 2 else 'neg'}\tText {i} here" for i in range(20)]
    (data_files / "labels.tsv").write_text("\n".join(lines))
    parser, args = module.parse_args(
        ["--data", str(data_files / "labels.tsv"), "--max-length", "4",
         "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    rng = np.random.default_rng(0)
    train, test, tokens, classes, _ = module.load_data(parser, args, rng)
    assert classes == ["neg", "pos"]
    assert train[0].shape == (18, 4) and test[0].shape == (2, 4)
    assert set(train[1]) <= {0, 1}
    assert "text" in tokens  # lower-cased words


def test_classifier_generated_labels_follow_word_order():
    module = example("train_classifier")
    labels, texts = module.order_sentences(50, 16, 40, np.random.default_rng(0))
    for label, text in zip(labels, texts, strict=True):
        words = text.split()
        positions = [words.index(name) for name in module.NAMES]
        order = tuple(np.argsort(positions))
        assert order == module.ORDERS[label]
        assert min(np.diff(sorted(positions))) >= len(words) // 4


def test_imdb(monkeypatch, tmp_path, capsys):
    module = example("train_classifier")
    imdb = keras.datasets.imdb

    def offline(**kwargs):
        raise OSError("no network\nat all")

    monkeypatch.setattr(imdb, "load_data", offline)
    with pytest.raises(SystemExit) as error:
        run("train_classifier", tmp_path, "--dataset", "imdb")
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not load it (no network at" in err

    reviews = np.array([[1, 14, 22, 16], [1, 5, 9]], dtype=object)
    monkeypatch.setattr(
        imdb,
        "load_data",
        lambda num_words: ((reviews, [0, 1]), (reviews[:1], [1])),
    )
    monkeypatch.setattr(imdb, "get_word_index", lambda: {"film": 11})
    parser, args = module.parse_args(
        ["--dataset", "imdb", "--max-length", "3", "--max-vocabulary", "20"]
    )
    train, test, tokens, classes, tokenizer = module.load_data(
        parser, args, None
    )
    assert tokenizer is None
    assert train[0].tolist() == [[1, 14, 22], [1, 5, 9]]
    assert tokens[14] == "film" and len(tokens) == 20
    assert classes == ["negative", "positive"]


def test_lm_reads_a_text_file_as_subwords(data_files, tmp_path):
    module = example("train_lm")
    paragraphs = [f"{de} {en}" for de, en in GERMAN * 12]
    text = "\n\n".join(paragraphs[:-1]) + "\n \n" + paragraphs[-1] * 3
    (data_files / "german.txt").write_text(text, encoding="utf-8")
    parser, args = module.parse_args(
        ["--text-file", str(data_files / "german.txt"), "--sequence-length",
         "16", "--max-vocabulary", "300", "--output-dir", str(tmp_path)]
    )  # fmt: skip
    assert args.tokenizer == "subword"  # the default for a user's text
    assert args.packing is True  # the default
    train, validation, tokenizer, _ = module.load_corpus(parser, args)
    assert tokenizer.get_vocab_size() <= 300
    # The sequences are the paragraphs, a long one cut into pieces.
    assert all(2 <= len(ids) <= 16 for ids in train + validation)
    # Without the blank lines between them, in order.
    decoded = "".join(data.decode(tokenizer, ids) for ids in train)
    assert decoded.startswith(paragraphs[0] + paragraphs[1])
    decoded = "".join(data.decode(tokenizer, ids) for ids in validation)
    assert decoded.endswith(paragraphs[-1] * 3)
    assert os.listdir(tmp_path) == ["data"]  # loading writes nothing


def test_stdlib_corpus():
    text = example("train_lm").stdlib_docstrings(3000)
    assert len(text) == 3000
    assert text.count(" ") > 300  # prose, not code or binary


# --- --distribute: in subprocesses, each in one backend's pass of CI ----------
#
# A device layout must be fixed before TensorFlow or JAX starts, so these
# run the scripts in fresh processes (as tests/test_distribution.py does):
# two logical CPUs for MirroredStrategy (set up by TWO_CPUS before the
# script runs), two workers on 127.0.0.1 for MultiWorkerMirroredStrategy,
# two host devices (XLA_FLAGS) for JAX DataParallel.

TIMEOUT = 240  # seconds, for the processes of one test together
TWO_CPUS = """
import os, runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _script(name, output_dir, *extra, wrapper=()):
    path = os.path.join(EXAMPLES, f"{name}.py")
    argv = [*TINY_MODEL, *TINY[name], "--output-dir", str(output_dir)]
    return [sys.executable, *wrapper, path, *argv, *extra]


def _metrics(output):
    return json.loads(output.strip().splitlines()[-1])


@tensorflow_only
def test_mirrored_on_two_cpus_trains_as_on_one(tmp_path):
    command = _script(
        "train_seq2seq",
        tmp_path / "mirrored",
        "--distribute",
        "mirrored",
        wrapper=("-c", TWO_CPUS),
    )
    [(status, output)] = run_processes([command], [subprocess_env()], TIMEOUT)
    assert status == 0, output[-3000:]
    assert "--distribute mirrored: 2 replicas in all" in output
    mirrored = _metrics(output)
    assert (mirrored["distribute"], mirrored["replicas"]) == ("mirrored", 2)
    # The global batch of 16 split 8 + 8: the same training as one device.
    single = run("train_seq2seq", tmp_path / "single")
    assert single["replicas"] == 1
    for name in ("first_loss", "loss", "val_loss"):
        assert np.isclose(mirrored[name], single[name], atol=1e-4), name
    assert 0 <= mirrored["test_exact_match"] <= 1  # decoded, no XLA


@tensorflow_only
def test_multi_worker_same_command_on_two_workers(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    envs = [
        subprocess_env(
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}
            )
        )
        for i in range(2)
    ]
    command = _script(
        "train_classifier", tmp_path, "--distribute", "multi-worker"
    )
    results = run_processes([command, command], envs, TIMEOUT)
    for status, output in results:
        assert status == 0, output[-3000:]
    chief, worker = (_metrics(output) for _, output in results)
    assert chief["replicas"] == worker["replicas"] == 2
    # One shared filesystem: the second worker writes into worker-1/.
    assert chief["output_dir"] == str(tmp_path)
    assert worker["output_dir"] == str(tmp_path / "worker-1")
    assert (tmp_path / training.MODEL).exists()
    assert (tmp_path / "worker-1" / training.MODEL).exists()
    for name in ("first_loss", "loss", "test_loss", "test_accuracy"):
        assert chief[name] == worker[name], name


@jax_only
def test_data_parallel_on_two_devices(tmp_path):
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    odd = _script("train_lm", tmp_path / "odd", "--distribute",
                  "data-parallel", "--batch-size", "15")  # fmt: skip
    command = _script("train_lm", tmp_path / "run", "--distribute",
                      "data-parallel", "--corpus-chars", "2400")  # fmt: skip
    [(refused, message)] = run_processes([odd], [env], TIMEOUT)
    assert refused == 2
    assert "--batch-size 15 must be a multiple of the 2 devices" in message
    assert not os.path.exists(tmp_path / "odd")
    [(status, output)] = run_processes([command], [env], TIMEOUT)
    assert status == 0, output[-3000:]
    assert "--distribute data-parallel: 2 replicas in all" in output
    # 69 packed training rows: the odd one out is left out, and said so.
    assert "leaving out the last 1 of 69 training examples" in output
    metrics = _metrics(output)
    assert (metrics["distribute"], metrics["replicas"]) == ("data-parallel", 2)
    assert metrics["loss"] < metrics["first_loss"]
    assert metrics["sample"].startswith("Return the ")


def test_ding_to_tsv(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "ding_to_tsv",
        os.path.join(os.path.dirname(EXAMPLES), "scripts", "ding_to_tsv.py"),
    )
    ding = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ding)
    dictionary = "\n".join(
        [
            "# Version :: devel",
            "kaum {adv} | Die Preise werden sich kaum ändern. | Er kam "
            "kaum. :: hardly | Prices are unlikely to change. | He hardly "
            "came.",
            "Gruß {m} | Viele Grüße an Ihre Frau! | Grüße aus Köln! :: "
            "greeting | My regards to your wife! | Greetings from "
            "Cologne (Germany)!",  # optional words: dropped
            "zu {prp} | Ich gebe es jdm. zurück. :: to | I give it back to "
            "sb.",  # placeholders
            "x | Das ist so. | y :: x | That is so.",  # not aligned
            "fast {adv} | Er ist fast fertig. | Er ist fast fertig. :: "
            "almost | He is almost done. | He is almost done.",  # repeated
            "Satz | Zu kurz. | das ist klein. :: x | Too short. | That is "
            "small.",  # 2 words; lower case
        ]
    )
    path = tmp_path / "de-en"
    path.write_text(dictionary, encoding="utf-8")
    output = tmp_path / "pairs.tsv"
    ding.main([str(path), "-o", str(output)])
    assert output.read_text(encoding="utf-8").splitlines() == [
        "Die Preise werden sich kaum ändern.\tPrices are unlikely to change.",
        "Er kam kaum.\tHe hardly came.",
        "Viele Grüße an Ihre Frau!\tMy regards to your wife!",
        "Er ist fast fertig.\tHe is almost done.",
    ]
    # The same from the package: an ar archive holding data.tar.xz.
    data_tar = tmp_path / "data.tar.xz"
    with tarfile.open(data_tar, "w:xz") as tar:
        tar.add(path, arcname="./usr/share/trans/de-en")
    members = [
        ("debian-binary", b"2.0\n"),
        ("data.tar.xz", data_tar.read_bytes()),
    ]
    deb = b"!<arch>\n"
    for name, content in members:
        header = (
            f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n"
        )
        deb += header.encode() + content + b"\n" * (len(content) % 2)
    (tmp_path / "trans-de-en.deb").write_bytes(deb)
    from_deb = tmp_path / "from_deb.tsv"
    ding.main([str(tmp_path / "trans-de-en.deb"), "-o", str(from_deb)])
    assert from_deb.read_text(encoding="utf-8") == output.read_text("utf-8")


def threads_parser():
    parser = flags.make_parser("A test.\n")
    training.add_training_flags(
        parser,
        epochs=1,
        batch_size=2,
        warmup_steps=1,
        lr_scale=1.0,
        label_smoothing=0.0,
        output_dir="out",
    )
    return parser


def test_torch_threads_flag(capsys):
    parser = threads_parser()
    assert parser.parse_args([]).torch_threads is None
    assert parser.parse_args(["--torch-threads", "2"]).torch_threads == 2
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--torch-threads", "0"])
    assert exit_info.value.code == 2
    assert "--torch-threads" in capsys.readouterr().err
    backend = keras.backend.backend()
    if backend != "torch":
        # Ignored when not given; refused, naming the backend, when given.
        args = parser.parse_args([])
        assert training.torch_threads(parser, args, backend) is None
        args = parser.parse_args(["--torch-threads", "1"])
        with pytest.raises(SystemExit) as exit_info:
            training.torch_threads(parser, args, backend)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "PyTorch backend only" in err and backend in err
        return
    import torch

    previous = torch.get_num_threads()
    try:
        args = parser.parse_args(["--torch-threads", "2"])
        assert training.torch_threads(parser, args, backend) == 2
        assert torch.get_num_threads() == 2
        assert "PyTorch threads: 2 (--torch-threads)" in capsys.readouterr().out
        chosen = training.torch_threads(parser, parser.parse_args([]), backend)
        assert torch.get_num_threads() == chosen
        assert f"PyTorch threads: {chosen} (" in capsys.readouterr().out
        if (os.cpu_count() or 1) <= training.FEW_CORES:
            # The default follows the idle CPUs, at least one.
            for idle, want in [(0, 1), (1, 1), (2, 2)]:
                with mock.patch.object(
                    training, "idle_cpus", lambda idle=idle: idle
                ):
                    got = training.torch_threads(
                        parser, parser.parse_args([]), backend
                    )
                assert got == want == torch.get_num_threads()
                assert f"{idle} of" in capsys.readouterr().out
    finally:
        torch.set_num_threads(previous)


def test_jit_compile_flag(capsys):
    parser = threads_parser()
    for flag, want in [(None, "auto"), ("true", True), ("false", False)]:
        argv = [] if flag is None else ["--jit-compile", flag]
        assert training.jit_compile(parser.parse_args(argv)) == want
    with pytest.raises(SystemExit):
        parser.parse_args(["--jit-compile", "yes"])
    assert "--jit-compile" in capsys.readouterr().err


def test_idle_cpus_counts_busy_ones():
    cores = os.cpu_count() or 1
    quiet = training.idle_cpus(0.3)
    assert 0 <= quiet <= cores
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        loaded = training.idle_cpus(0.3)
    finally:
        spinner.kill()
        spinner.wait()
    # A spinning process takes (about) one CPU away.
    assert loaded <= cores - 1
