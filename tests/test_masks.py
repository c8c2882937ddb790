"""Truth tables for `keras_tfm.masks`, written out by hand."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm import masks

T, F = True, False


def as_numpy(mask):
    return np.asarray(ops.convert_to_numpy(mask))


def assert_mask(mask, expected):
    expected = np.array(expected, dtype="bool")
    got = as_numpy(mask)
    assert got.dtype == np.bool_, got.dtype
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_array_equal(got, expected)


# --- padding_mask ----------------------------------------------------------


def test_padding_mask_marks_padding_false():
    ids = np.array([[5, 7, 0, 0], [3, 0, 0, 0], [0, 1, 2, 3]])
    assert_mask(
        masks.padding_mask(ids),
        [[T, T, F, F], [T, F, F, F], [F, T, T, T]],
    )


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_padding_mask_other_padding_id(dtype):
    ids = np.array([[4, 1, 1], [1, 2, 1]], dtype=dtype)
    assert_mask(masks.padding_mask(ids, padding_id=1), [[T, F, F], [F, T, F]])


def test_padding_mask_negative_padding_id_keeps_zero_tokens():
    ids = np.array([[0, 3, -1]])
    assert_mask(masks.padding_mask(ids, padding_id=-1), [[T, T, F]])


def test_padding_mask_float_ids_raise():
    with pytest.raises(TypeError, match="token_ids"):
        masks.padding_mask(np.array([[1.0, 0.0]], dtype="float32"))


@pytest.mark.parametrize("padding_id", [1.5, "0", True, None])
def test_padding_mask_bad_padding_id_raises(padding_id):
    with pytest.raises(TypeError, match="padding_id"):
        masks.padding_mask(np.array([[1, 0]]), padding_id=padding_id)


# --- causal_mask -----------------------------------------------------------


def test_causal_mask_square():
    assert_mask(
        masks.causal_mask(4),
        [
            [T, F, F, F],
            [T, T, F, F],
            [T, T, T, F],
            [T, T, T, T],
        ],
    )


def test_causal_mask_length_one():
    assert_mask(masks.causal_mask(1), [[T]])


def test_causal_mask_more_keys_than_queries():
    # Queries sit at positions 0 and 1 (offset 0).
    assert_mask(
        masks.causal_mask(2, key_length=4),
        [[T, F, F, F], [T, T, F, F]],
    )


def test_causal_mask_offset_for_a_cache():
    # Two new queries at positions 3 and 4 over a 5-slot cache.
    assert_mask(
        masks.causal_mask(2, key_length=5, offset=3),
        [[T, T, T, T, F], [T, T, T, T, T]],
    )
    # One query at step 2 sees keys 0..2.
    assert_mask(masks.causal_mask(1, key_length=4, offset=2), [[T, T, T, F]])


def test_causal_mask_tensor_offset():
    offset = ops.convert_to_tensor(1, dtype="int32")
    assert_mask(
        masks.causal_mask(2, key_length=3, offset=offset),
        [[T, T, F], [T, T, T]],
    )


def test_causal_mask_batch_size():
    mask = masks.causal_mask(3, batch_size=2)
    table = [[T, F, F], [T, T, F], [T, T, T]]
    assert_mask(mask, [table, table])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"query_length": 0}, "query_length"),
        ({"query_length": -2}, "query_length"),
        ({"query_length": True}, "query_length"),
        ({"query_length": 3, "key_length": 0}, "key_length"),
        ({"query_length": 3, "batch_size": 0}, "batch_size"),
        ({"query_length": 3, "batch_size": -1}, "batch_size"),
        ({"query_length": 3, "offset": -1}, "offset"),
    ],
)
def test_causal_mask_bad_lengths_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        masks.causal_mask(**kwargs)


# --- attention_mask --------------------------------------------------------


def test_attention_mask_nothing_gives_none():
    assert masks.attention_mask() is None
    assert masks.attention_mask(query_length=3) is None


def test_attention_mask_key_only():
    key_mask = np.array([[T, T, F], [T, F, F]])
    assert_mask(
        masks.attention_mask(key_mask=key_mask),
        [
            [[T, T, F], [T, T, F], [T, T, F]],
            [[T, F, F], [T, F, F], [T, F, F]],
        ],
    )


def test_attention_mask_key_and_causal_decoder_self_attention():
    key_mask = np.array([[T, T, F], [T, F, F], [T, T, T]])
    assert_mask(
        masks.attention_mask(key_mask=key_mask, causal=True),
        [
            [[T, F, F], [T, T, F], [T, T, F]],
            [[T, F, F], [T, F, F], [T, F, F]],
            [[T, F, F], [T, T, F], [T, T, T]],
        ],
    )


def test_attention_mask_query_and_key():
    query_mask = np.array([[T, T, F]])
    key_mask = np.array([[T, F, T]])
    assert_mask(
        masks.attention_mask(query_mask=query_mask, key_mask=key_mask),
        [[[T, F, T], [T, F, T], [F, F, F]]],
    )


def test_attention_mask_query_only_is_self_attention():
    query_mask = np.array([[T, T, F]])
    assert_mask(
        masks.attention_mask(query_mask=query_mask, causal=True),
        [[[T, F, F], [T, T, F], [F, F, F]]],
    )


def test_attention_mask_cross_attention_query_length():
    # Two decoder queries over four encoder keys; no causality.
    key_mask = np.array([[T, T, T, F], [T, F, F, F]])
    assert_mask(
        masks.attention_mask(key_mask=key_mask, query_length=2),
        [
            [[T, T, T, F], [T, T, T, F]],
            [[T, F, F, F], [T, F, F, F]],
        ],
    )


def test_attention_mask_cross_attention_query_and_key_masks():
    query_mask = np.array([[T, F]])
    key_mask = np.array([[T, T, F, T]])
    assert_mask(
        masks.attention_mask(query_mask=query_mask, key_mask=key_mask),
        [[[T, T, F, T], [F, F, F, F]]],
    )


def test_attention_mask_causal_with_offset_over_cache():
    # One query at step 2 of a 4-slot cache whose last slot is padding.
    key_mask = np.array([[T, T, T, F]])
    assert_mask(
        masks.attention_mask(
            key_mask=key_mask, causal=True, query_length=1, offset=2
        ),
        [[[T, T, T, F]]],
    )


def test_attention_mask_causal_only():
    assert_mask(
        masks.attention_mask(causal=True, query_length=3),
        [[[T, F, F], [T, T, F], [T, T, T]]],
    )
    with pytest.raises(ValueError, match="query_length"):
        masks.attention_mask(causal=True)


def test_attention_mask_accepts_integer_masks():
    key_mask = np.array([[1, 0]], dtype="int32")
    assert_mask(masks.attention_mask(key_mask=key_mask), [[[T, F], [T, F]]])


@pytest.mark.parametrize("name", ["key_mask", "query_mask"])
def test_attention_mask_wrong_rank_raises(name):
    with pytest.raises(ValueError, match=name):
        masks.attention_mask(**{name: np.ones((2, 3, 3), "bool")})


# --- compiled and symbolic -------------------------------------------------


class DecoderSelfAttentionMask(keras.layers.Layer):
    """Token ids -> the decoder's self-attention mask, as int32."""

    def call(self, token_ids):
        mask = masks.attention_mask(
            key_mask=masks.padding_mask(token_ids), causal=True
        )
        return ops.cast(mask, "int32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[1])


def test_masks_inside_a_compiled_model():
    ids = keras.Input(shape=(None,), dtype="int32")
    model = keras.Model(ids, DecoderSelfAttentionMask()(ids))
    # torch.compile is slow to start; the other backends compile with XLA.
    jit = keras.backend.backend() != "torch"
    model.compile(jit_compile=jit)
    data = np.array([[4, 2, 0], [7, 0, 0]], dtype="int32")
    got = model.predict(data, verbose=0)
    np.testing.assert_array_equal(
        got,
        [
            [[1, 0, 0], [1, 1, 0], [1, 1, 0]],
            [[1, 0, 0], [1, 0, 0], [1, 0, 0]],
        ],
    )


@pytest.mark.parametrize("length", [5, None])
def test_masks_on_symbolic_tensors(length):
    ids = keras.Input(shape=(length,), dtype="int32")
    padding = masks.padding_mask(ids)
    assert tuple(padding.shape) == (None, length)
    assert keras.backend.standardize_dtype(padding.dtype) == "bool"

    self_mask = masks.attention_mask(key_mask=padding, causal=True)
    assert tuple(self_mask.shape) == (None, length, length)
    assert keras.backend.standardize_dtype(self_mask.dtype) == "bool"

    cross = masks.attention_mask(key_mask=padding, query_length=3)
    assert tuple(cross.shape) == (None, 3, length)

    queries = keras.Input(shape=(4,), dtype="bool")
    both = masks.attention_mask(query_mask=queries, key_mask=padding)
    assert tuple(both.shape) == (None, 4, length)


# --- segment_mask ----------------------------------------------------------


def segment_reference(query_ids, key_ids, causal):
    """Loop over every (query, key) pair: same non-zero segment [, j <= i]."""
    batch, query_len = query_ids.shape
    key_len = key_ids.shape[1]
    expected = np.zeros((batch, query_len, key_len), "bool")
    for b in range(batch):
        for i in range(query_len):
            for j in range(key_len):
                same = query_ids[b, i] == key_ids[b, j] != 0
                expected[b, i, j] = same and (j <= i or not causal)
    return expected


def random_segment_ids(rng, batch, length):
    """Rows of runs `1, 1, 2, 2, 2, ...` followed by padding zeros."""
    rows = []
    for _ in range(batch):
        used = int(rng.integers(0, length + 1))
        cuts = np.sort(rng.choice(np.arange(1, length), 3, replace=False))
        row = 1 + np.searchsorted(cuts, np.arange(length), side="right")
        row[used:] = 0
        rows.append(row)
    return np.array(rows, "int32")


@pytest.mark.parametrize("causal", [False, True])
def test_segment_mask_matches_reference_on_random_rows(causal):
    rng = np.random.default_rng(0)
    ids = random_segment_ids(rng, batch=6, length=9)
    assert_mask(
        masks.segment_mask(ids, causal=causal),
        segment_reference(ids, ids, causal),
    )


def test_segment_mask_cross_attention_reference():
    rng = np.random.default_rng(1)
    queries = random_segment_ids(rng, batch=4, length=5)
    keys = random_segment_ids(rng, batch=4, length=7)
    assert_mask(
        masks.segment_mask(queries, keys),
        segment_reference(queries, keys, causal=False),
    )


def test_segment_mask_by_hand():
    ids = np.array([[1, 1, 2, 2, 0]])
    assert_mask(
        masks.segment_mask(ids, causal=True),
        [
            [
                [T, F, F, F, F],
                [T, T, F, F, F],
                [F, F, T, F, F],
                [F, F, T, T, F],
                [F, F, F, F, F],
            ]
        ],
    )


def test_segment_mask_padding_rows_and_columns_are_false():
    ids = np.array([[0, 0, 0], [3, 3, 0]], "int64")
    mask = as_numpy(masks.segment_mask(ids))
    assert not mask[0].any()
    assert not mask[1, 2].any() and not mask[1, :, 2].any()


def test_segment_mask_mixed_integer_dtypes():
    queries = np.array([[1, 2]], "int32")
    keys = np.array([[2, 1, 0]], "int64")
    assert_mask(
        masks.segment_mask(queries, keys),
        [[[F, T, F], [T, F, F]]],
    )


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (
            {"query_segment_ids": np.ones((2, 3), "float32")},
            TypeError,
            "query_segment_ids.*dtype=float32",
        ),
        (
            {"query_segment_ids": np.ones((2, 3), "bool")},
            TypeError,
            "query_segment_ids",
        ),
        (
            {"query_segment_ids": np.ones((2, 3, 1), "int32")},
            ValueError,
            r"query_segment_ids.*shape \(2, 3, 1\)",
        ),
        (
            {
                "query_segment_ids": np.ones((2, 3), "int32"),
                "key_segment_ids": np.ones((3,), "int32"),
            },
            ValueError,
            "key_segment_ids",
        ),
        (
            {
                "query_segment_ids": np.ones((2, 3), "int32"),
                "key_segment_ids": np.ones((3, 4), "int32"),
            },
            ValueError,
            r"batch size.*\(2\).*key_segment_ids with shape \(3, 4\)",
        ),
        (
            {"query_segment_ids": np.ones((2, 3), "int32"), "causal": 1},
            TypeError,
            "causal=1",
        ),
    ],
)
def test_segment_mask_bad_inputs_raise(kwargs, error, words):
    with pytest.raises(error, match=words):
        masks.segment_mask(**kwargs)


@pytest.mark.parametrize("length", [6, None])
def test_segment_mask_on_symbolic_tensors(length):
    ids = keras.Input(shape=(length,), dtype="int32")
    mask = masks.segment_mask(ids, causal=True)
    assert tuple(mask.shape) == (None, length, length)
    assert keras.backend.standardize_dtype(mask.dtype) == "bool"
    keys = keras.Input(shape=(4,), dtype="int32")
    assert tuple(masks.segment_mask(ids, keys).shape) == (None, length, 4)


class CausalSegmentMask(keras.layers.Layer):
    def call(self, segment_ids):
        mask = masks.segment_mask(segment_ids, causal=True)
        return ops.cast(mask, "int32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[1])


def test_segment_mask_inside_a_compiled_model():
    ids = keras.Input(shape=(None,), dtype="int32")
    model = keras.Model(ids, CausalSegmentMask()(ids))
    model.compile(jit_compile=keras.backend.backend() != "torch")
    data = random_segment_ids(np.random.default_rng(2), batch=3, length=6)
    got = model.predict(data, verbose=0)
    np.testing.assert_array_equal(got, segment_reference(data, data, True))


def test_segment_mask_of_one_segment_rows_is_the_padding_attention_mask():
    ids = np.array([[4, 2, 0], [7, 0, 0], [1, 1, 1]])
    padding = masks.padding_mask(ids)
    segments = ops.cast(padding, "int32")
    for causal in (False, True):
        np.testing.assert_array_equal(
            as_numpy(masks.segment_mask(segments, causal=causal)),
            as_numpy(
                masks.attention_mask(
                    query_mask=padding, key_mask=padding, causal=causal
                )
            ),
        )


# --------------------------------------------------------- sliding window


@pytest.mark.parametrize("window", [1, 2, 3, 10])
@pytest.mark.parametrize("offset", [0, 4])
def test_sliding_window_mask_is_transformers_overlay(window, offset):
    got = ops.convert_to_numpy(
        masks.sliding_window_mask(3, 9, window, offset=offset)
    )
    q = offset + np.arange(3)[:, None]
    k = np.arange(9)[None, :]
    np.testing.assert_array_equal(got, k > q - window)
    causal = ops.convert_to_numpy(
        masks.causal_mask(3, 9, offset=offset, window=window)
    )
    np.testing.assert_array_equal(causal, (k <= q) & (k > q - window))


def test_causal_window_with_batch_and_tensor_offset():
    mask = masks.causal_mask(
        2, 6, batch_size=3, offset=ops.convert_to_tensor(3), window=2
    )
    expected = np.array([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(mask), np.broadcast_to(expected, (3, 2, 6))
    )


@pytest.mark.parametrize("window", [0, -1, 1.5, True, None])
def test_sliding_window_mask_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        masks.sliding_window_mask(3, 3, window)
