"""NumPy input pipelines: packing with segment ids, and length bucketing.

Padding a batch of sentences to its longest wastes most of the work on
short ones. Packing puts several whole sequences side by side in one row
of `sequence_length` slots and numbers them with `segment_ids` (`1, 2, ...`
within a row, `0` at padding); `positions` restart at `0` in each segment.
A model then attends only within a segment
(`keras_tfm.masks.segment_mask`) and the position layers read `positions`
(`SinusoidalPositionEncoding(...)(x, positions=...)`), so every sequence is
computed exactly as if it were alone, while almost every slot holds a real
token. When a model cannot take segment ids, `bucket_batches` batches
sequences of similar length together instead, which keeps padding low too.

Everything here is NumPy and runs before the model, on any backend. Each
result is also available as a `keras.utils.PyDataset` (`PackedDataset`,
`BucketedDataset`) that `model.fit` takes directly, yielding
`(inputs, labels)` batches.

Padding, one rule: `segment_ids` say which slots are real (`0` at
padding), and `pad_id` is only the id written into the slots that hold
nothing: the padding of `token_ids` and the labels with no target. With
`pad_id=0` (the default, for models trained from scratch with
`mask_zero=True`, whose loss takes `ignore_class=0` or the library's
masked loss) or any other id, that id is padding and a sequence holding
it is an error. With `pad_id=None` (pretrained vocabularies, where GPT-2's
and Llama's id `0` is a real token) every id is a real token: padding
slots of `token_ids` hold `0`, read as padding by nothing but
`segment_ids`, and labels with no target hold `-1`
(`SparseCategoricalCrossentropy(ignore_class=-1)`).

Example:

>>> packed = pack([[5, 6, 7], [8, 9], [3, 4, 2, 1]], sequence_length=5)
>>> packed["token_ids"].tolist()
[[3, 4, 2, 1, 0], [5, 6, 7, 8, 9]]
>>> packed["segment_ids"].tolist()
[[1, 1, 1, 1, 0], [1, 1, 1, 2, 2]]
>>> packed["positions"].tolist()
[[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
>>> fill(packed["segment_ids"])
0.9
"""

import math

import keras
import numpy as np

from keras_tfm._validation import check_bool, check_positive_int

__all__ = [
    "BucketedDataset",
    "PackedDataset",
    "bucket_batches",
    "fill",
    "next_token_labels",
    "pack",
    "pack_pairs",
]


# --- validation -------------------------------------------------------------


def _check_length(name, value):
    """`value` as an int if it is a positive Python or NumPy integer."""
    if isinstance(value, np.integer):
        value = int(value)
    return check_positive_int(name, value)


def _check_pad_id(pad_id):
    if pad_id is not None and (
        isinstance(pad_id, bool)
        or not isinstance(pad_id, (int, np.integer))
        or pad_id < 0
    ):
        raise ValueError(
            "`pad_id` must be None or a non-negative integer. Received: "
            f"pad_id={pad_id!r}"
        )
    return None if pad_id is None else int(pad_id)


def _fills(pad_id):
    """What the empty slots hold: `(token, label)`."""
    return (0, -1) if pad_id is None else (pad_id, pad_id)


def _as_sequences(
    sequences, name, max_length, truncate, length_name, pad_id=None
):
    """Validate sequences of token ids; return a list of int32 arrays.

    Every problem names the sequence by its index: `sequences[3]`.
    """
    if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
        sequences = list(sequences)
    try:
        sequences = list(sequences)
    except TypeError as error:
        raise ValueError(
            f"`{name}` must be a list of sequences of token ids. "
            f"Received: {name} of type {type(sequences).__name__}"
        ) from error
    if not sequences:
        raise ValueError(
            f"`{name}` must hold at least one sequence. Received: {name}=[]"
        )
    arrays = []
    for index, sequence in enumerate(sequences):
        label = f"{name}[{index}]"
        array = np.asarray(sequence)
        if array.ndim != 1:
            raise ValueError(
                f"`{label}` must be a flat sequence of token ids. "
                f"Received: {label} with shape {array.shape}"
            )
        if array.size == 0:
            raise ValueError(
                f"`{label}` must not be empty. Received: {label}={sequence!r}"
            )
        if array.dtype.kind not in "iu":
            raise ValueError(
                f"`{label}` must hold integer token ids. Received: {label} "
                f"with dtype={array.dtype}"
            )
        if array.min() < 0:
            raise ValueError(
                f"`{label}` must hold non-negative token ids. Received: "
                f"{label} with minimum {array.min()}"
            )
        if array.max() > np.iinfo(np.int32).max:
            raise ValueError(
                f"`{label}` must hold token ids that fit in int32. Received: "
                f"{label} with maximum {array.max()}"
            )
        if pad_id is not None and (array == pad_id).any():
            raise ValueError(
                f"`{label}` holds the padding id {pad_id}, which marks "
                "empty slots only; pass the id that pads (`pad_id=None` "
                f"when every id is a real token). Received: {label} with "
                f"{pad_id} at position {int(np.argmax(array == pad_id))}"
            )
        if max_length is not None and array.size > max_length:
            if not truncate:
                raise ValueError(
                    f"`{label}` must have at most {length_name}={max_length} "
                    "tokens, or pass `truncate=True` to cut it. Received: "
                    f"{label} of length {array.size}"
                )
            array = array[:max_length]
        arrays.append(array.astype("int32"))
    return arrays


# --- first-fit bin packing ---------------------------------------------------


class _FirstFit:
    """Rows with remaining room; finds the first row where an item fits.

    A binary tree over the rows keeps, per capacity, the largest room left
    below each node. With one capacity the first fitting row is found by
    one descent, `O(log rows)`. With two (source and target), a node's two
    maxima may come from different rows, so the search backtracks; rows
    that can take no remaining item any more are removed from the tree
    (`close`), which keeps the backtracking short.
    """

    def __init__(self, capacities, rows):
        self.size = 1
        while self.size < rows:
            self.size *= 2
        self.trees = []
        for capacity in capacities:
            tree = [-1] * (2 * self.size)
            tree[self.size : self.size + rows] = [capacity] * rows
            for node in range(self.size - 1, 0, -1):
                tree[node] = max(tree[2 * node], tree[2 * node + 1])
            self.trees.append(tree)

    def _find_one(self, need):
        tree = self.trees[0]
        if tree[1] < need:
            return None
        node = 1
        while node < self.size:
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        return node

    def _find_two(self, need_a, need_b):
        tree_a, tree_b = self.trees
        stack = [1]
        while stack:
            node = stack.pop()
            if tree_a[node] < need_a or tree_b[node] < need_b:
                continue
            if node >= self.size:
                return node
            stack.append(2 * node + 1)
            stack.append(2 * node)
        return None

    def _set(self, node, values):
        for tree, value in zip(self.trees, values, strict=True):
            tree[node] = value
            parent = node // 2
            while parent:
                best = max(tree[2 * parent], tree[2 * parent + 1])
                if tree[parent] == best:
                    break
                tree[parent] = best
                parent //= 2

    def place(self, needs):
        """Take `needs` from the first row with room; return the row."""
        if len(needs) == 1:
            node = self._find_one(needs[0])
        else:
            node = self._find_two(*needs)
        if node is None:  # pragma: no cover - as many rows as items
            raise RuntimeError("no row left")
        left = [
            tree[node] - n for tree, n in zip(self.trees, needs, strict=True)
        ]
        self._set(node, left)
        return node - self.size, left

    def close(self, row):
        """Remove a row from the search: nothing left fits in it."""
        self._set(row + self.size, [-1] * len(self.trees))


def _first_fit_decreasing(sizes, capacities):
    """Assign item `i` (sizes `sizes[i]`, a tuple) to a row, first fit.

    Items are placed from the largest to the smallest (by their largest
    share of a capacity; ties by index, so the result is deterministic).

    Returns:
        `(rows, order)`: the row of each item, and the items in the order
        they were placed (which is their order within each row).
    """
    shares = [
        max(s / c for s, c in zip(size, capacities, strict=True))
        for size in sizes
    ]
    order = sorted(range(len(sizes)), key=lambda i: (-shares[i], i))
    # smallest[k][d]: the smallest size along `d` of the items from the k-th
    # placed on; a row with less room than that along `d` is finished.
    smallest = [None] * (len(order) + 1)
    smallest[-1] = [math.inf] * len(capacities)
    for k in range(len(order) - 1, -1, -1):
        size = sizes[order[k]]
        smallest[k] = [
            min(a, b) for a, b in zip(size, smallest[k + 1], strict=True)
        ]
    bins = _FirstFit(capacities, len(sizes))
    rows = [0] * len(sizes)
    for k, item in enumerate(order):
        row, left = bins.place(sizes[item])
        rows[item] = row
        if any(r < m for r, m in zip(left, smallest[k + 1], strict=True)):
            bins.close(row)
    return rows, order


def _layout(arrays, rows, order, num_rows, length, fill=0):
    """Write the packed arrays of one side (tokens, segments, positions)."""
    token_ids = np.full((num_rows, length), fill, "int32")
    segment_ids = np.zeros((num_rows, length), "int32")
    positions = np.zeros((num_rows, length), "int32")
    filled = np.zeros(num_rows, "int64")
    segments = np.zeros(num_rows, "int64")
    for item in order:
        row, array = rows[item], arrays[item]
        start, end = filled[row], filled[row] + array.size
        segments[row] += 1
        token_ids[row, start:end] = array
        segment_ids[row, start:end] = segments[row]
        positions[row, start:end] = np.arange(array.size)
        filled[row] = end
    return token_ids, segment_ids, positions


def next_token_labels(token_ids, segment_ids, pad_id=0):
    """Return language-model labels: the next token of the same segment.

    `labels[b, t] = token_ids[b, t + 1]` when token `t + 1` is in the same
    (non-padding) segment as token `t`, and `pad_id` otherwise (`-1` when
    `pad_id` is None; see the module's padding rule): at the last token
    of every segment and at padding. A label therefore never crosses from
    one packed sequence into the next. End each sequence with an end token
    if the model should learn to stop: its last real target is then that
    token. For unpacked rows pass `segment_ids = (token_ids != 0)`.

    Args:
        token_ids: integer array `(batch, seq)`.
        segment_ids: integer array `(batch, seq)`, `0` at padding.
        pad_id: the label where there is no target (None: `-1`).

    Returns:
        int32 array `(batch, seq)`; the no-target label where there is no
        target.

    Example:

    >>> ids = np.array([[5, 6, 7, 8, 9, 0]])
    >>> segments = np.array([[1, 1, 1, 2, 2, 0]])
    >>> next_token_labels(ids, segments).tolist()
    [[6, 7, 0, 9, 0, 0]]
    """
    token_ids = np.asarray(token_ids)
    segment_ids = np.asarray(segment_ids)
    if token_ids.ndim != 2 or segment_ids.shape != token_ids.shape:
        raise ValueError(
            "`token_ids` and `segment_ids` must have the same shape "
            "(batch, seq). Received: token_ids with shape "
            f"{token_ids.shape} and segment_ids with shape "
            f"{segment_ids.shape}"
        )
    empty = _fills(_check_pad_id(pad_id))[1]
    labels = np.full(token_ids.shape, empty, "int32")
    same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (
        segment_ids[:, :-1] != 0
    )
    labels[:, :-1] = np.where(same, token_ids[:, 1:], empty)
    return labels


def pack(
    sequences,
    sequence_length,
    *,
    truncate=False,
    return_labels=False,
    pad_id=0,
):
    """Pack whole sequences into rows of `sequence_length` slots.

    Sequences are placed by first-fit decreasing: from the longest to the
    shortest, each goes into the first row with room for it (ties keep the
    input order, so the result is deterministic). A sequence is never split.
    Within a row the sequences are numbered `1, 2, ...` in `segment_ids`
    (`0` at padding, which fills the end of each row) and `positions` count
    `0, 1, ...` from the start of each sequence (`0` at padding).

    Args:
        sequences: a list of sequences of non-negative integer token ids
            (lists or 1-D arrays, of any lengths).
        sequence_length: number of slots of a row.
        truncate: when `True`, a sequence longer than `sequence_length` is
            cut to its first `sequence_length` tokens; when `False` (the
            default) it raises a `ValueError`.
        return_labels: also return `labels`, the next token within each
            segment (see `next_token_labels`), for a language model.
        pad_id: the id of empty slots, `0` by default; None when every id
            is a real token (see the module's padding rule).

    Returns:
        A dict of int32 arrays `(rows, sequence_length)`: `token_ids`,
        `segment_ids` and `positions` (and `labels`).

    Raises:
        ValueError: naming the sequence (`sequences[i]`) that is empty, too
            long, or holds non-integer or negative ids or the pad id.

    Example:

    >>> packed = pack([[1, 2, 3], [4, 5], [6]], 4, return_labels=True)
    >>> packed["token_ids"].tolist()
    [[1, 2, 3, 6], [4, 5, 0, 0]]
    >>> packed["labels"].tolist()
    [[2, 3, 0, 0], [5, 0, 0, 0]]
    """
    sequence_length = _check_length("sequence_length", sequence_length)
    pad_id = _check_pad_id(pad_id)
    arrays = _as_sequences(
        sequences,
        "sequences",
        sequence_length,
        truncate,
        "sequence_length",
        pad_id,
    )
    rows, order = _first_fit_decreasing(
        [(a.size,) for a in arrays], (sequence_length,)
    )
    num_rows = max(rows) + 1
    token_ids, segment_ids, positions = _layout(
        arrays, rows, order, num_rows, sequence_length, _fills(pad_id)[0]
    )
    packed = {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "positions": positions,
    }
    if return_labels:
        packed["labels"] = next_token_labels(token_ids, segment_ids, pad_id)
    return packed


def pack_pairs(
    sources,
    targets,
    source_length,
    target_length,
    *,
    truncate=False,
    return_labels=True,
    pad_id=0,
):
    """Pack (source, target) pairs for an encoder-decoder, side by side.

    Pair `i`'s source goes to an encoder row and its target to the decoder
    row of the same index, under the same segment id on both sides, so the
    decoder's cross-attention mask is
    `segment_mask(decoder_segment_ids, encoder_segment_ids)`. Rows are
    filled by first-fit decreasing on both capacities at once: from the pair
    that takes the largest share of a row to the smallest, each goes to the
    first row where both its source and its target fit.

    Teacher forcing: the decoder reads the target as given (add start and
    end tokens before packing if the model uses them) and `labels` are the
    target shifted by one within each segment (`next_token_labels`): the
    next target token, `0` at each target's last token and at padding, never
    crossing into the next pair.

    Args:
        sources: list of source sequences of token ids.
        targets: list of target sequences, as many as `sources`.
        source_length: slots of an encoder row.
        target_length: slots of a decoder row.
        truncate: cut a too long source or target to its row length instead
            of raising a `ValueError`.
        return_labels: include `labels`. Defaults to `True`.
        pad_id: the id of empty slots, `0` by default; None when every id
            is a real token (see the module's padding rule).

    Returns:
        A dict of int32 arrays: `encoder_token_ids`, `encoder_segment_ids`,
        `encoder_positions` of shape `(rows, source_length)`;
        `decoder_token_ids`, `decoder_segment_ids`, `decoder_positions` (and
        `labels`) of shape `(rows, target_length)`.

    Example:

    >>> packed = pack_pairs([[7, 8], [9]], [[1, 5, 2], [1, 6, 2]], 4, 6)
    >>> packed["encoder_segment_ids"].tolist()
    [[1, 1, 2, 0]]
    >>> packed["decoder_token_ids"].tolist()
    [[1, 5, 2, 1, 6, 2]]
    >>> packed["labels"].tolist()
    [[5, 2, 0, 6, 2, 0]]
    """
    source_length = _check_length("source_length", source_length)
    target_length = _check_length("target_length", target_length)
    pad_id = _check_pad_id(pad_id)
    sources = _as_sequences(
        sources, "sources", source_length, truncate, "source_length", pad_id
    )
    targets = _as_sequences(
        targets, "targets", target_length, truncate, "target_length", pad_id
    )
    if len(sources) != len(targets):
        raise ValueError(
            "`targets` must hold one sequence per source "
            f"({len(sources)}). Received: {len(targets)} targets"
        )
    rows, order = _first_fit_decreasing(
        [(s.size, t.size) for s, t in zip(sources, targets, strict=True)],
        (source_length, target_length),
    )
    num_rows = max(rows) + 1
    packed = {}
    for side, arrays, length in (
        ("encoder", sources, source_length),
        ("decoder", targets, target_length),
    ):
        token_ids, segment_ids, positions = _layout(
            arrays, rows, order, num_rows, length, _fills(pad_id)[0]
        )
        packed[f"{side}_token_ids"] = token_ids
        packed[f"{side}_segment_ids"] = segment_ids
        packed[f"{side}_positions"] = positions
    if return_labels:
        packed["labels"] = next_token_labels(
            packed["decoder_token_ids"], packed["decoder_segment_ids"], pad_id
        )
    return packed


def fill(ids):
    """Return the fraction of slots that hold a token: non-zero entries.

    Args:
        ids: segment ids or token ids, an array of any shape with `0` at
            padding; or a list of such arrays (the batches of
            `bucket_batches`), counted together.

    Returns:
        A float in `[0, 1]`.

    Example:

    >>> fill(np.array([[1, 1, 2, 0], [1, 0, 0, 0]]))
    0.5
    """
    if isinstance(ids, dict):
        raise ValueError(
            "`ids` must be an array (or a list of arrays) of segment or token "
            "ids, e.g. `packed['segment_ids']`. Received: a dict with keys "
            f"{sorted(ids)}"
        )
    arrays = ids if isinstance(ids, (list, tuple)) else [ids]
    arrays = [np.asarray(a) for a in arrays]
    total = sum(a.size for a in arrays)
    if total == 0:
        raise ValueError(
            "`ids` must hold at least one slot. Received: ids with no entries"
        )
    return float(sum(np.count_nonzero(a) for a in arrays) / total)


def bucket_batches(
    sequences,
    batch_size,
    *,
    pad_to_multiple_of=1,
    max_length=None,
    truncate=False,
    seed=None,
    drop_remainder=False,
    return_labels=False,
):
    """Batch sequences of similar lengths together, each padded to its max.

    For models that take plain padded batches. Sequences are sorted by
    length (equal lengths in an order drawn from `seed`) and cut into
    batches of `batch_size` consecutive sequences, so a batch spans a narrow
    range of lengths; each batch is padded with `0` to its longest sequence,
    rounded up to a multiple of `pad_to_multiple_of` (fewer distinct shapes
    for compiled code), and the batches come out in an order shuffled by
    `seed`.

    Args:
        sequences: list of sequences of non-negative integer token ids.
        batch_size: sequences per batch.
        pad_to_multiple_of: round each batch's length up to a multiple of
            this. Defaults to `1`.
        max_length: optional longest allowed sequence; longer ones raise a
            `ValueError`, or are cut when `truncate=True`.
        truncate: see `max_length`.
        seed: seed of the shuffles; `None` draws a fresh one.
        drop_remainder: drop the last, smaller batch.
        return_labels: include `labels` (the next token; see
            `next_token_labels`) in each batch.

    Returns:
        A list of dicts, one per batch, with an int32 `token_ids` array
        `(batch, length)` (and `labels`), and `"indices"`, the positions of
        the batch's sequences in `sequences`.

    Example:

    >>> batches = bucket_batches([[1], [2, 3, 4], [5, 6], [7]], 2, seed=0)
    >>> sorted(b["token_ids"].shape for b in batches)
    [(2, 1), (2, 3)]
    """
    batch_size = _check_length("batch_size", batch_size)
    pad_to_multiple_of = _check_length("pad_to_multiple_of", pad_to_multiple_of)
    if max_length is not None:
        max_length = _check_length("max_length", max_length)
    arrays = _as_sequences(
        sequences, "sequences", max_length, truncate, "max_length"
    )
    rng = np.random.default_rng(seed)
    lengths = np.array([a.size for a in arrays])
    order = np.lexsort((rng.permutation(len(arrays)), lengths))
    chunks = [
        order[start : start + batch_size]
        for start in range(0, len(order), batch_size)
    ]
    if drop_remainder and len(chunks[-1]) < batch_size:
        chunks = chunks[:-1]
    batches = []
    for chunk in (chunks[i] for i in rng.permutation(len(chunks))):
        longest = int(lengths[chunk].max())
        length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        token_ids = np.zeros((len(chunk), length), "int32")
        for row, index in enumerate(chunk):
            token_ids[row, : lengths[index]] = arrays[index]
        batch = {"token_ids": token_ids, "indices": chunk}
        if return_labels:
            batch["labels"] = next_token_labels(token_ids, token_ids != 0)
        batches.append(batch)
    return batches


# --- PyDatasets for model.fit ------------------------------------------------


def _split(batch, inputs, labels):
    """`(inputs dict, labels)` from a dict of arrays, as `fit` takes it.

    `inputs` names the arrays the model takes (None: all but `"labels"`
    and `"indices"`); with `labels=True` the array `"labels"` is the
    target, with `labels=False` the item is `(inputs dict,)`.
    """
    keys = inputs
    if keys is None:
        keys = [k for k in batch if k not in ("labels", "indices")]
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(
            f"`inputs` must name arrays of the data, which has "
            f"{sorted(batch)}. Received: inputs={inputs!r}"
        )
    if labels and "labels" not in batch:
        raise ValueError(
            "`labels=True` takes the data's `labels` array, which it lacks "
            "(pack with `return_labels=True`, or pass `labels=False`). "
            f"Received: data with {sorted(batch)}"
        )
    x = {k: batch[k] for k in keys}
    if not labels:
        return (x,)
    return x, batch["labels"]


class PackedDataset(keras.utils.PyDataset):
    """Batches of the rows of `pack` or `pack_pairs`, for `model.fit`.

    Each item is `(inputs, labels)`: `inputs` a dict of the arrays named in
    `inputs` (by default all but `labels`), matched by `fit` to the model's
    inputs of the same names; `labels` the `"labels"` array (from
    `return_labels=True`), or just `(inputs,)` with `labels=False`. Rows
    are shuffled at the start and after every epoch when `shuffle=True`.

    Args:
        packed: the dict returned by `pack` or `pack_pairs`.
        batch_size: rows per batch; the last batch may be smaller (see
            `drop_remainder`).
        inputs: names of the arrays the model takes. Defaults to all but
            `"labels"`.
        labels: yield the `"labels"` array as the target; `False` yields
            inputs only. Defaults to `True`, as for `BucketedDataset`.
        shuffle: shuffle the rows every epoch. Defaults to `True`.
        seed: seed of the shuffles.
        drop_remainder: leave out the last rows that do not fill a batch,
            so that every batch has one shape (one compilation).
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Example:

    >>> packed = pack([[1, 2], [3], [4, 5, 6]], 3, return_labels=True)
    >>> data = PackedDataset(packed, batch_size=2, seed=0)
    >>> x, y = data[0]
    >>> sorted(x), y.shape
    (['positions', 'segment_ids', 'token_ids'], (2, 3))
    """

    def __init__(
        self,
        packed,
        batch_size,
        *,
        inputs=None,
        labels=True,
        shuffle=True,
        seed=None,
        drop_remainder=False,
        **kwargs,
    ):
        self.batch_size = _check_length("batch_size", batch_size)
        labels = check_bool("labels", labels)
        if not isinstance(packed, dict) or not packed:
            raise ValueError(
                "`packed` must be the dict returned by `pack` or "
                f"`pack_pairs`. Received: packed of type "
                f"{type(packed).__name__}"
            )
        super().__init__(**kwargs)
        self.packed = {k: np.asarray(v) for k, v in packed.items()}
        _split(self.packed, inputs, labels)  # checks the names
        self.inputs = inputs
        self.labels = labels
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self._rng = np.random.default_rng(seed)
        self._rows = len(next(iter(self.packed.values())))
        self._order = np.arange(self._rows)
        if shuffle:
            self._order = self._rng.permutation(self._rows)

    def __len__(self):
        if self.drop_remainder:
            return self._rows // self.batch_size
        return -(-self._rows // self.batch_size)

    def __getitem__(self, index):
        rows = self._order[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        batch = {k: v[rows] for k, v in self.packed.items()}
        return _split(batch, self.inputs, self.labels)

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._rng.permutation(self._rows)


class BucketedDataset(keras.utils.PyDataset):
    """Length-bucketed padded batches (`bucket_batches`), for `model.fit`.

    Each item is `({"token_ids": ...}, labels)` where `labels` are the next
    tokens (`next_token_labels`), or just `({"token_ids": ...},)` with
    `labels=False`. The batches are drawn again after every epoch, with a
    seed derived from `seed`, so their composition and order change.

    Args:
        sequences: list of sequences of token ids.
        batch_size: sequences per batch.
        labels: yield next-token labels. Defaults to `True`.
        seed: seed of the shuffles.
        pad_to_multiple_of, max_length, truncate, drop_remainder: as for
            `bucket_batches`.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Example:

    >>> data = BucketedDataset([[1, 2], [3], [4, 5, 6], [7]], 2, seed=0)
    >>> len(data)
    2
    >>> x, y = data[0]
    >>> x["token_ids"].shape == y.shape
    True
    """

    def __init__(
        self,
        sequences,
        batch_size,
        *,
        labels=True,
        seed=None,
        pad_to_multiple_of=1,
        max_length=None,
        truncate=False,
        drop_remainder=False,
        **kwargs,
    ):
        self._options = {
            "batch_size": batch_size,
            "pad_to_multiple_of": pad_to_multiple_of,
            "max_length": max_length,
            "truncate": truncate,
            "drop_remainder": drop_remainder,
            "return_labels": check_bool("labels", labels),
        }
        self.labels = labels
        self._seeds = np.random.default_rng(seed)
        self._batches = bucket_batches(
            sequences, seed=self._next_seed(), **self._options
        )
        super().__init__(**kwargs)
        self.sequences = sequences

    def _next_seed(self):
        return int(self._seeds.integers(2**31))

    def __len__(self):
        return len(self._batches)

    def __getitem__(self, index):
        batch = self._batches[index]
        return _split(batch, ["token_ids"], self.labels)

    def on_epoch_end(self):
        self._batches = bucket_batches(
            self.sequences, seed=self._next_seed(), **self._options
        )
