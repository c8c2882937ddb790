"""Packing and bucketing (`keras_tfm.data`): invariants, fill, errors, fit."""

import argparse
import ast
import collections
import functools
import inspect
import json
import textwrap

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_tfm import data
from keras_tfm.layers.position import SinusoidalPositionEncoding


def random_sequences(count, low=1, high=12, seed=0):
    """Sequences whose tokens say where they come from: no two are equal."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(low, high + 1, count)
    return [
        (1000 * (i + 1) + np.arange(n)).tolist() for i, n in enumerate(lengths)
    ]


def segments_of(token_ids, segment_ids):
    """Every segment of every row, as a tuple of its tokens."""
    found = []
    for tokens, segments in zip(token_ids, segment_ids, strict=True):
        for segment in range(1, segments.max() + 1):
            found.append(tuple(tokens[segments == segment]))
    return found


def check_row_layout(token_ids, segment_ids, positions, length):
    """Segments 1..k contiguous then padding; positions restart per segment."""
    for array in (token_ids, segment_ids, positions):
        assert array.dtype == np.int32
        assert array.shape[1] == length
    for tokens, segments, places in zip(
        token_ids, segment_ids, positions, strict=True
    ):
        used = np.count_nonzero(segments)
        assert (segments[:used] > 0).all() and (segments[used:] == 0).all()
        assert (tokens[used:] == 0).all() and (places[used:] == 0).all()
        # Runs numbered 1, 2, ... in order, each starting at position 0.
        steps = np.diff(segments[:used])
        assert set(steps.tolist()) <= {0, 1}
        assert segments[0] == 1
        for segment in range(1, segments.max() + 1):
            where = segments == segment
            np.testing.assert_array_equal(places[where], np.arange(where.sum()))


def docstring_paragraph_lengths():
    """Word counts of the paragraphs of a few stdlib modules' docstrings."""
    lengths = []
    for module in (argparse, collections, functools, json, textwrap):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(
                node,
                (
                    ast.Module,
                    ast.ClassDef,
                    ast.FunctionDef,
                    ast.AsyncFunctionDef,
                ),
            ):
                for paragraph in (ast.get_docstring(node) or "").split("\n\n"):
                    if paragraph.split():
                        lengths.append(len(paragraph.split()))
    return lengths


# --- pack -------------------------------------------------------------------


def test_pack_keeps_every_sequence_whole_and_exactly_once():
    sequences = random_sequences(60)
    packed = data.pack(sequences, sequence_length=16)
    check_row_layout(
        packed["token_ids"], packed["segment_ids"], packed["positions"], 16
    )
    found = segments_of(packed["token_ids"], packed["segment_ids"])
    assert sorted(found) == sorted(tuple(s) for s in sequences)


@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=30),
    sequence_length=st.integers(12, 20),
)
def test_pack_invariants_hold_for_any_lengths(lengths, sequence_length):
    sequences = [
        [100 * (i + 1) + j for j in range(n)] for i, n in enumerate(lengths)
    ]
    packed = data.pack(sequences, sequence_length, return_labels=True)
    check_row_layout(
        packed["token_ids"],
        packed["segment_ids"],
        packed["positions"],
        sequence_length,
    )
    found = segments_of(packed["token_ids"], packed["segment_ids"])
    assert sorted(found) == sorted(tuple(s) for s in sequences)
    # First fit never leaves two rows that could have been one.
    used = np.count_nonzero(packed["segment_ids"], axis=1)
    assert all(
        a + b > sequence_length
        for i, a in enumerate(used)
        for b in used[i + 1 :]
    )


def test_pack_first_fit_decreasing_by_hand():
    packed = data.pack([[5, 6, 7], [8, 9], [3, 4, 2, 1], [11]], 5)
    # Longest first: [3, 4, 2, 1] + [11] fill row 0; [5, 6, 7] + [8, 9] row 1.
    assert packed["token_ids"].tolist() == [
        [3, 4, 2, 1, 11],
        [5, 6, 7, 8, 9],
    ]
    assert packed["segment_ids"].tolist() == [
        [1, 1, 1, 1, 2],
        [1, 1, 1, 2, 2],
    ]
    assert packed["positions"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert data.fill(packed["segment_ids"]) == 1.0


def test_pack_is_deterministic():
    sequences = random_sequences(40, seed=3)
    first = data.pack(sequences, 20)
    second = data.pack([np.array(s) for s in sequences], 20)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_pack_fills_rows_of_stdlib_docstring_paragraphs():
    lengths = docstring_paragraph_lengths()
    assert len(lengths) > 100 and max(lengths) > 50
    sequences = [[1] * n for n in lengths]
    packed = data.pack(sequences, sequence_length=128, truncate=True)
    assert data.fill(packed["segment_ids"]) >= 0.95
    # Within one row of the lower bound on the number of rows.
    kept = sum(min(n, 128) for n in lengths)
    assert len(packed["token_ids"]) <= -(-kept // 128) + 1


def test_pack_fills_rows_of_lognormal_lengths():
    rng = np.random.default_rng(4)
    lengths = np.clip(rng.lognormal(3.0, 0.8, 1500).astype(int), 1, 256)
    packed = data.pack([[7] * n for n in lengths], sequence_length=256)
    assert data.fill(packed["segment_ids"]) >= 0.95


def test_pack_labels_are_next_tokens_within_segments():
    packed = data.pack(
        [[1, 2, 3], [4, 5], [6]], sequence_length=4, return_labels=True
    )
    assert packed["token_ids"].tolist() == [[1, 2, 3, 6], [4, 5, 0, 0]]
    assert packed["labels"].tolist() == [[2, 3, 0, 0], [5, 0, 0, 0]]
    assert packed["labels"].dtype == np.int32


def test_next_token_labels_never_cross_segments():
    sequences = random_sequences(30, seed=5)
    packed = data.pack(sequences, 16, return_labels=True)
    labels, segments = packed["labels"], packed["segment_ids"]
    tokens = packed["token_ids"]
    for row in range(len(tokens)):
        for t in range(16):
            last = t == 15 or segments[row, t + 1] != segments[row, t]
            if segments[row, t] == 0 or last:
                assert labels[row, t] == 0
            else:
                assert labels[row, t] == tokens[row, t + 1]


def test_next_token_labels_shape_mismatch_raises():
    with pytest.raises(ValueError, match="segment_ids with shape"):
        data.next_token_labels(np.ones((2, 3)), np.ones((2, 4)))


def test_pack_too_long_raises_unless_truncated():
    sequences = [[1, 2], [3], [4, 5, 6, 7, 8, 9]]
    with pytest.raises(
        ValueError, match=r"`sequences\[2\]`.*sequence_length=4.*length 6"
    ):
        data.pack(sequences, 4)
    packed = data.pack(sequences, 4, truncate=True)
    assert [4, 5, 6, 7] in packed["token_ids"].tolist()


@pytest.mark.parametrize(
    "sequences, words",
    [
        ([[1, 2], []], r"`sequences\[1\]` must not be empty"),
        ([[1.0, 2.0]], r"`sequences\[0\]` must hold integer.*float64"),
        ([[1], [2], [3], [4, -1]], r"`sequences\[3\]`.*non-negative.*-1"),
        ([[1], [[2, 3]]], r"`sequences\[1\]` must be a flat.*\(1, 2\)"),
        ([["a"]], r"`sequences\[0\]` must hold integer"),
        ([], "at least one sequence"),
        (5, "list of sequences"),
    ],
)
def test_pack_bad_sequences_raise_naming_the_sequence(sequences, words):
    with pytest.raises(ValueError, match=words):
        data.pack(sequences, 8)


@pytest.mark.parametrize("length", [0, -1, 2.5, True, None])
def test_pack_bad_sequence_length_raises(length):
    with pytest.raises(ValueError, match="sequence_length"):
        data.pack([[1]], length)


# --- pack_pairs -------------------------------------------------------------


def test_pack_pairs_keep_each_pair_in_one_row_and_segment():
    rng = np.random.default_rng(6)
    sources = random_sequences(50, high=10, seed=7)
    # Targets tell which source they belong to, and have their own lengths.
    targets = [
        [-i - 1 + 10**6] * int(rng.integers(1, 8)) for i in range(len(sources))
    ]
    packed = data.pack_pairs(sources, targets, 16, 12)
    for side, length in (("encoder", 16), ("decoder", 12)):
        check_row_layout(
            packed[f"{side}_token_ids"],
            packed[f"{side}_segment_ids"],
            packed[f"{side}_positions"],
            length,
        )
    encoder = packed["encoder_segment_ids"]
    decoder = packed["decoder_segment_ids"]
    assert encoder.max(axis=1).tolist() == decoder.max(axis=1).tolist()
    pairs = []
    for row in range(len(encoder)):
        for segment in range(1, encoder[row].max() + 1):
            source = packed["encoder_token_ids"][row][encoder[row] == segment]
            target = packed["decoder_token_ids"][row][decoder[row] == segment]
            pairs.append((tuple(source), tuple(target)))
    expected = [
        (tuple(s), tuple(t)) for s, t in zip(sources, targets, strict=True)
    ]
    assert sorted(pairs) == sorted(expected)
    assert data.fill(encoder) >= 0.8 and data.fill(decoder) >= 0.6


def test_pack_pairs_by_hand_with_teacher_forcing_labels():
    packed = data.pack_pairs([[7, 8], [9]], [[1, 5, 2], [1, 6, 2]], 4, 6)
    assert packed["encoder_token_ids"].tolist() == [[7, 8, 9, 0]]
    assert packed["encoder_segment_ids"].tolist() == [[1, 1, 2, 0]]
    assert packed["encoder_positions"].tolist() == [[0, 1, 0, 0]]
    assert packed["decoder_token_ids"].tolist() == [[1, 5, 2, 1, 6, 2]]
    assert packed["decoder_segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2]]
    assert packed["decoder_positions"].tolist() == [[0, 1, 2, 0, 1, 2]]
    assert packed["labels"].tolist() == [[5, 2, 0, 6, 2, 0]]
    assert "labels" not in data.pack_pairs([[1]], [[2]], 2, 2, return_labels=0)


def test_pack_pairs_errors_name_the_side_and_sequence():
    with pytest.raises(ValueError, match=r"`targets\[1\]`.*target_length=3"):
        data.pack_pairs([[1], [2]], [[1], [1, 2, 3, 4]], 4, 3)
    with pytest.raises(ValueError, match=r"`sources\[0\]` must not be empty"):
        data.pack_pairs([[]], [[1]], 4, 3)
    with pytest.raises(ValueError, match="one sequence per source"):
        data.pack_pairs([[1], [2]], [[1]], 4, 3)
    with pytest.raises(ValueError, match="target_length"):
        data.pack_pairs([[1]], [[1]], 4, 0)
    packed = data.pack_pairs([[1]], [[1, 2, 3, 4]], 4, 3, truncate=True)
    assert packed["decoder_token_ids"].tolist() == [[1, 2, 3]]


# --- bucket_batches ---------------------------------------------------------


def test_bucket_batches_keep_lengths_close_and_use_every_sequence():
    lengths = docstring_paragraph_lengths()
    sequences = [[3] * n for n in lengths]
    batches = data.bucket_batches(
        sequences, batch_size=16, seed=0, pad_to_multiple_of=8
    )
    indices = np.concatenate([b["indices"] for b in batches])
    assert sorted(indices.tolist()) == list(range(len(sequences)))
    spreads = []
    for batch in batches:
        sizes = [lengths[i] for i in batch["indices"]]
        spreads.append(max(sizes) - min(sizes))
        assert batch["token_ids"].shape[1] % 8 == 0
        assert batch["token_ids"].shape[1] - max(sizes) < 8
        assert batch["token_ids"].dtype == np.int32
    # Sorted batches: the spread is small except in the long tail.
    assert np.median(spreads) <= 2
    exact = data.bucket_batches(sequences, batch_size=16, seed=0)
    bucketed = data.fill([b["token_ids"] for b in exact])
    # Batching in a random order instead pads far more (fill ~0.26).
    order = np.random.default_rng(0).permutation(len(lengths))
    chunks = [order[i : i + 16] for i in range(0, len(order), 16)]
    slots = sum(len(c) * max(lengths[i] for i in c) for c in chunks)
    assert bucketed >= 0.75 and sum(lengths) / slots < 0.5


def test_bucket_batches_seed_and_remainder():
    sequences = random_sequences(21, seed=8)
    first = data.bucket_batches(sequences, 4, seed=1, return_labels=True)
    again = data.bucket_batches(sequences, 4, seed=1, return_labels=True)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    assert len(first) == 6 and sorted(len(b["indices"]) for b in first)[0] == 1
    batch = first[0]
    np.testing.assert_array_equal(
        batch["labels"],
        data.next_token_labels(batch["token_ids"], batch["token_ids"] != 0),
    )
    dropped = data.bucket_batches(sequences, 4, seed=1, drop_remainder=True)
    assert len(dropped) == 5
    with pytest.raises(ValueError, match=r"`sequences\[0\]`.*max_length=2"):
        data.bucket_batches(sequences, 4, max_length=2)
    with pytest.raises(ValueError, match="batch_size"):
        data.bucket_batches(sequences, 0)


def test_fill():
    assert data.fill(np.array([[1, 1, 2, 0], [1, 0, 0, 0]])) == 0.5
    assert data.fill([np.ones((1, 2)), np.zeros((1, 6))]) == 0.25
    with pytest.raises(ValueError, match="ids"):
        data.fill(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="segment_ids"):
        data.fill(data.pack([[1]], 2))


# --- PyDatasets and fit -----------------------------------------------------


def test_packed_dataset_yields_every_row_once_per_epoch():
    packed = data.pack(random_sequences(40, seed=9), 16, return_labels=True)
    dataset = data.PackedDataset(packed, batch_size=4, seed=0)
    assert isinstance(dataset, keras.utils.PyDataset)
    rows = len(packed["token_ids"])
    assert len(dataset) == -(-rows // 4)

    def epoch():
        seen = []
        for index in range(len(dataset)):
            x, y = dataset[index]
            assert sorted(x) == ["positions", "segment_ids", "token_ids"]
            assert y.shape == x["token_ids"].shape
            seen.extend(map(tuple, x["token_ids"]))
        return seen

    first = epoch()
    assert sorted(first) == sorted(map(tuple, packed["token_ids"]))
    dataset.on_epoch_end()
    second = epoch()
    assert sorted(second) == sorted(first) and second != first


def test_packed_dataset_selects_inputs_and_checks_names():
    packed = data.pack_pairs([[1, 2], [3]], [[4], [5, 6]], 4, 4)
    dataset = data.PackedDataset(
        packed, 2, inputs=["encoder_token_ids", "decoder_token_ids"]
    )
    x, y = dataset[0]
    assert sorted(x) == ["decoder_token_ids", "encoder_token_ids"]
    assert y.shape == (1, 4)
    (x_only,) = data.PackedDataset(packed, 2, labels=False)[0]
    assert "labels" not in x_only
    with pytest.raises(ValueError, match="inputs=\\['nope'\\]"):
        data.PackedDataset(packed, 2, inputs=["nope"])
    with pytest.raises(ValueError, match="packed"):
        data.PackedDataset([1, 2], 2)
    with pytest.raises(ValueError, match="return_labels=True"):
        data.PackedDataset(data.pack([[1, 2]], 4), 2)


def test_datasets_take_labels_as_one_flag():
    packed = data.pack([[1, 2], [3]], 4, return_labels=True)
    sequences = [[1, 2], [3]]
    for labels in ("labels", None, 1):
        with pytest.raises(ValueError, match=f"labels={labels!r}"):
            data.PackedDataset(packed, 2, labels=labels)
        with pytest.raises(ValueError, match=f"labels={labels!r}"):
            data.BucketedDataset(sequences, 2, labels=labels)
    (x,) = data.BucketedDataset(sequences, 2, labels=False)[0]
    assert sorted(x) == ["token_ids"]


def tiny_packed_lm(vocabulary_size):
    """Token embedding + per-token sinusoids + a Dense head."""
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    positions = keras.Input(shape=(None,), dtype="int32", name="positions")
    vectors = keras.layers.Embedding(vocabulary_size, 8)(token_ids)
    vectors = vectors + SinusoidalPositionEncoding()(
        vectors, positions=positions
    )
    logits = keras.layers.Dense(vocabulary_size)(vectors)
    model = keras.Model(
        {"token_ids": token_ids, "positions": positions}, logits
    )
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=0
        ),
    )
    return model


def test_a_model_fits_on_a_packed_dataset():
    rng = np.random.default_rng(10)
    sequences = [rng.integers(1, 20, rng.integers(2, 9)) for _ in range(40)]
    packed = data.pack(sequences, 16, return_labels=True)
    dataset = data.PackedDataset(
        packed, 4, inputs=["token_ids", "positions"], drop_remainder=True
    )
    assert len(dataset) == len(packed["token_ids"]) // 4
    model = tiny_packed_lm(20)
    history = model.fit(dataset, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_a_model_fits_on_a_bucketed_dataset():
    sequences = random_sequences(24, low=2, high=10, seed=11)
    sequences = [[t % 19 + 1 for t in s] for s in sequences]
    dataset = data.BucketedDataset(sequences, 8, seed=0, pad_to_multiple_of=8)
    x, y = dataset[0]
    assert sorted(x) == ["token_ids"] and y.shape == x["token_ids"].shape
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    vectors = keras.layers.Embedding(20, 8, mask_zero=True)(token_ids)
    logits = keras.layers.Dense(20)(vectors)
    model = keras.Model({"token_ids": token_ids}, logits)
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=0
        ),
    )
    history = model.fit(dataset, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


def test_data_imports_numpy_and_keras_only():
    import keras_tfm.data as module

    tree = ast.parse(inspect.getsource(module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    # _validation: the shared argument checks, themselves keras-only.
    allowed = {"keras", "numpy", "math", "keras_tfm._validation"}
    assert imported <= allowed, imported
    assert "keras.src" not in textwrap.dedent(inspect.getsource(module))


def test_pack_pad_id_rule():
    # pad_id=0 (default): 0 marks empty slots only.
    with pytest.raises(ValueError, match=r"`sequences\[1\]` holds the padding"):
        data.pack([[1, 2], [3, 0, 4]], 4)
    # pad_id=None: every id is real; empty token slots hold 0, labels -1.
    packed = data.pack([[1, 0, 3], [0, 5]], 4, return_labels=True, pad_id=None)
    assert packed["token_ids"].tolist() == [[1, 0, 3, 0], [0, 5, 0, 0]]
    assert packed["segment_ids"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert packed["labels"].tolist() == [[0, 3, -1, -1], [5, -1, -1, -1]]
    # Another pad id fills the empty slots and the labels with no target.
    packed = data.pack([[1, 0, 3], [0, 5]], 4, return_labels=True, pad_id=9)
    assert packed["token_ids"].tolist() == [[1, 0, 3, 9], [0, 5, 9, 9]]
    assert packed["labels"].tolist() == [[0, 3, 9, 9], [5, 9, 9, 9]]
    pairs = data.pack_pairs([[0, 7]], [[1, 0, 2]], 3, 4, pad_id=None)
    assert pairs["encoder_token_ids"].tolist() == [[0, 7, 0]]
    assert pairs["labels"].tolist() == [[0, 2, -1, -1]]
    with pytest.raises(ValueError, match="pad_id"):
        data.pack([[1]], 4, pad_id=-1)
