"""Plots of position encodings, attention weights and training curves.

matplotlib is an optional extra (`pip install "keras_tfm[examples]"`); it
is imported when a plot is made, never when `keras_tfm` is. Every function
returns a `matplotlib.figure.Figure` drawn on the non-interactive Agg
canvas (no pyplot state, no window), and saves it as a PNG when given a
`path`.
"""

import numpy as np
from keras import ops

from keras_tfm import masks

_MISSING_MATPLOTLIB = (
    "keras_tfm.plotting needs matplotlib, an optional dependency. Install "
    'it with `pip install "keras_tfm[examples]"` or `pip install '
    "matplotlib`."
)


def _new_figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_MISSING_MATPLOTLIB) from error
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _finish(figure, path):
    if path is not None:
        figure.savefig(path, format="png", dpi=100)
    return figure


def _position_table(source, length, dim):
    """The `(length, dim)` table that `source` adds to token vectors."""
    # Imported here: keras_tfm.layers imports nothing from this module, but
    # keeping the layer classes out of module import keeps it light.
    import keras

    from keras_tfm.layers import (
        LearnedPositionEmbedding,
        SinusoidalPositionEncoding,
        TokenAndPositionEmbedding,
    )

    if isinstance(source, keras.Model):
        found = [
            layer
            for layer in source.layers
            if isinstance(layer, TokenAndPositionEmbedding)
        ]
        if not found:
            raise ValueError(
                "`source` model has no TokenAndPositionEmbedding layer. "
                f"Received: model {source.name!r}"
            )
        source = found[0]
    if isinstance(source, TokenAndPositionEmbedding):
        if source.position_embedding is None:
            raise ValueError(
                "This TokenAndPositionEmbedding adds no position table. "
                f"Received: position={source.position!r}"
            )
        dim = dim or source.embedding_dim
        length = length or source.sequence_length
        source = source.position_embedding
    if isinstance(source, SinusoidalPositionEncoding):
        fresh = SinusoidalPositionEncoding.from_config(source.get_config())
        zeros = np.zeros((1, length or 64, dim or 64), "float32")
        return ops.convert_to_numpy(fresh(zeros))[0].astype("float32")
    if isinstance(source, LearnedPositionEmbedding):
        if not source.built:
            raise ValueError(
                "The LearnedPositionEmbedding is not built: it has no table "
                "yet. Call it (or train its model) first."
            )
        table = ops.convert_to_numpy(source.embeddings).astype("float32")
        return table[:length] if length else table
    table = np.asarray(ops.convert_to_numpy(source), dtype="float32")
    if table.ndim == 3 and table.shape[0] == 1:
        table = table[0]
    if table.ndim != 2:
        raise ValueError(
            "`source` must be a position layer, a model with a "
            "TokenAndPositionEmbedding, or an array (length, dim). "
            f"Received: an array with shape {table.shape}"
        )
    return table[:length] if length else table


def plot_position_encoding(
    source, *, length=None, dim=None, path=None, title=None
):
    """Plot a position table as a heatmap (positions by features).

    The classic picture of the sinusoidal encoding, or of what a learned
    table became after training.

    Args:
        source: a `SinusoidalPositionEncoding`, a (built)
            `LearnedPositionEmbedding`, a `TokenAndPositionEmbedding`, a
            model (its first `TokenAndPositionEmbedding` is used), or an
            array `(length, dim)`.
        length: number of positions to show (default: the whole learned
            table, the embedding's `sequence_length`, or 64).
        dim: feature count of a sinusoidal encoding (default: the
            embedding's width, or 64).
        path: optional PNG file to write.
        title: optional title.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:

    >>> from keras_tfm.layers import SinusoidalPositionEncoding
    >>> figure = plot_position_encoding(
    ...     SinusoidalPositionEncoding(), length=32, dim=16)
    >>> type(figure).__name__
    'Figure'
    """
    table = _position_table(source, length, dim)
    figure = _new_figure((7, 4))
    axes = figure.subplots()
    limit = float(np.abs(table).max()) or 1.0
    image = axes.imshow(
        table,
        aspect="auto",
        cmap="RdBu",
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
    )
    axes.set_xlabel("feature")
    axes.set_ylabel("position")
    axes.set_title(title or f"position table {table.shape[0]}x{table.shape[1]}")
    figure.colorbar(image, ax=axes)
    return _finish(figure, path)


def _blocks(model):
    from keras_tfm.layers import (
        TransformerDecoderBlock,
        TransformerEncoderBlock,
    )

    return [
        layer
        for layer in model.layers
        if isinstance(layer, (TransformerEncoderBlock, TransformerDecoderBlock))
    ]


def _find_block(model, layer):
    blocks = _blocks(model)
    names = [block.name for block in blocks]
    if not blocks:
        raise ValueError(
            "`model` has no TransformerEncoderBlock or "
            f"TransformerDecoderBlock. Received: model {model.name!r}"
        )
    if layer is None:
        return blocks[-1]
    if isinstance(layer, int) and not isinstance(layer, bool):
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(
                f"`layer` index out of range for {len(blocks)} blocks "
                f"{names}. Received: layer={layer}"
            )
        return blocks[layer]
    for block in blocks:
        if block is layer or block.name == layer:
            return block
    raise ValueError(
        f"`layer` must be the name, index or instance of one of the blocks "
        f"{names}. Received: layer={layer!r}"
    )


def _token_ids(inputs, key):
    if isinstance(inputs, dict):
        if key not in inputs:
            raise ValueError(
                f"`inputs` must have a {key!r} entry. Received: keys "
                f"{sorted(inputs)}"
            )
        return np.asarray(inputs[key])
    return np.asarray(inputs)


def _attention_scores(model, inputs, block, attention, padding_id):
    """The block's attention probabilities `(batch, heads, Tq, Tk)`."""
    import keras

    from keras_tfm.layers import TransformerDecoderBlock

    is_decoder = isinstance(block, TransformerDecoderBlock)
    # The block's inputs, through a sub-model up to the layer before it:
    # the first tensor is the block input, a second float tensor the
    # encoder outputs (decoder blocks with cross-attention).
    block_inputs = block.input
    if not isinstance(block_inputs, (list, tuple)):
        block_inputs = [block_inputs]
    block_inputs = [
        t for t in block_inputs if keras.backend.is_float_dtype(t.dtype)
    ]
    # Compiled (one XLA program on JAX, not one per op).
    outputs = keras.Model(model.input, block_inputs).predict_on_batch(inputs)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    x = ops.convert_to_tensor(outputs[0])
    query_key = "decoder_token_ids" if is_decoder else "encoder_token_ids"
    query_ids = _token_ids(inputs, query_key)
    query_mask = masks.padding_mask(query_ids, padding_id)
    key_ids = query_ids
    # The block itself returns its probabilities, with its own masks.
    if not is_decoder:
        _, scores = block(
            x, padding_mask=query_mask, return_attention_scores=True
        )
    elif block.cross_attention:
        key_ids = _token_ids(inputs, "encoder_token_ids")
        _, self_scores, cross_scores = block(
            x,
            ops.convert_to_tensor(outputs[1]),
            decoder_padding_mask=query_mask,
            encoder_padding_mask=masks.padding_mask(key_ids, padding_id),
            return_attention_scores=True,
        )
        scores = cross_scores if attention == "cross" else self_scores
        key_ids = key_ids if attention == "cross" else query_ids
    else:
        _, scores = block(
            x, decoder_padding_mask=query_mask, return_attention_scores=True
        )
    scores = ops.convert_to_numpy(ops.cast(scores, "float32"))
    return scores, query_ids, key_ids


def _labels(ids, vocabulary, padding_id):
    ids = [int(i) for i in ids if int(i) != padding_id]
    if vocabulary is None:
        labels = [str(i) for i in ids]
    elif callable(vocabulary):
        labels = [str(vocabulary(i)) for i in ids]
    else:
        labels = [str(vocabulary[i]) for i in ids]
    # A space token would be an invisible tick label.
    return [label if label.strip() else "\u2423" for label in labels]


def plot_attention(
    model,
    inputs,
    *,
    layer=None,
    head=None,
    attention=None,
    index=0,
    vocabulary=None,
    padding_id=0,
    path=None,
    title=None,
):
    """Plot the attention weights of one example as a heatmap.

    The probabilities are recomputed for `inputs` (no dropout): the block's
    input comes from a sub-model of `model` up to the layer before it, and
    the block itself returns them (`return_attention_scores=True`).
    Padding (`padding_id`) is left out of the picture; rows are queries,
    columns keys, labelled with tokens.

    Args:
        model: a functional model built from keras_tfm blocks (such as
            `keras_tfm.models.seq2seq_transformer`).
        inputs: the model's inputs (a batch); a dict for seq2seq models,
            whose `"encoder_token_ids"` and `"decoder_token_ids"` give the
            padding and the labels.
        layer: the block's name, index among the model's blocks, or the
            block itself; defaults to the last block.
        head: the head to show, or `None` for one panel per head.
        attention: `"self"` or `"cross"`; defaults to `"cross"` for a
            decoder block with cross-attention, else `"self"`.
        index: which example of the batch to show.
        vocabulary: token labels: a sequence (`vocabulary[id]`), a mapping
            or a callable; defaults to the ids.
        padding_id: the padding token id.
        path: optional PNG file to write.
        title: optional title.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:

    >>> import numpy as np
    >>> from keras_tfm.models import seq2seq_transformer
    >>> model = seq2seq_transformer(20, 8, num_layers=1, embedding_dim=16,
    ...                             num_heads=2, intermediate_dim=16)
    >>> inputs = {"encoder_token_ids": np.array([[5, 6, 7, 0]]),
    ...           "decoder_token_ids": np.array([[1, 8, 9]])}
    >>> figure = plot_attention(model, inputs, head=0)
    >>> figure.axes[0].get_xlabel()
    'key (encoder)'
    """
    block = _find_block(model, layer)
    has_cross = getattr(block, "cross_attention", False)
    if attention is None:
        attention = "cross" if has_cross else "self"
    if attention not in ("self", "cross"):
        raise ValueError(
            "`attention` must be 'self' or 'cross'. "
            f"Received: attention={attention!r}"
        )
    if attention == "cross" and not has_cross:
        raise ValueError(
            f"Block {block.name!r} has no cross-attention. "
            "Received: attention='cross'"
        )
    scores, query_ids, key_ids = _attention_scores(
        model, inputs, block, attention, padding_id
    )
    num_heads = scores.shape[1]
    if head is not None and not -num_heads <= head < num_heads:
        raise ValueError(
            f"`head` must be in [0, {num_heads}). Received: head={head}"
        )
    query_ids, key_ids = query_ids[index], key_ids[index]
    rows = np.flatnonzero(query_ids != padding_id)
    columns = np.flatnonzero(key_ids != padding_id)
    weights = scores[index][:, rows][:, :, columns]
    heads = range(num_heads) if head is None else [head % num_heads]
    query_labels = _labels(query_ids, vocabulary, padding_id)
    key_labels = _labels(key_ids, vocabulary, padding_id)
    # Up to two panels a row, each sized to its tokens.
    columns_per_row = min(len(heads), 2)
    rows_of_panels = -(-len(heads) // columns_per_row)
    width = max(2.5, 0.28 * len(columns) + 1.5)
    height = max(2.5, 0.28 * len(rows) + 1.2)
    figure = _new_figure(
        (width * columns_per_row + 1.0, height * rows_of_panels + 0.5)
    )
    panels = figure.subplots(
        rows_of_panels, columns_per_row, squeeze=False
    ).ravel()
    for unused in panels[len(heads) :]:
        unused.remove()
    panels = panels[: len(heads)]
    key_side = "encoder" if attention == "cross" else "self"
    for axes, h in zip(panels, heads, strict=True):
        image = axes.imshow(
            weights[h], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto"
        )
        axes.set_xticks(range(len(key_labels)), key_labels, fontsize=8)
        axes.set_yticks(range(len(query_labels)), query_labels, fontsize=8)
        axes.set_xlabel(f"key ({key_side})")
        axes.set_ylabel("query")
        axes.set_title(f"head {h}", fontsize=10)
    figure.colorbar(image, ax=list(panels), shrink=0.8)
    figure.suptitle(title or f"{block.name}: {attention}-attention")
    return _finish(figure, path)


def plot_history(history, *, metrics=None, path=None, title=None):
    """Plot training curves: one panel per metric, train and validation.

    Args:
        history: the `keras.callbacks.History` that `model.fit` returns,
            or a dict of per-epoch lists (`history.history`).
        metrics: names to plot (without `val_`); defaults to every metric
            except the learning rate.
        path: optional PNG file to write.
        title: optional title.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:

    >>> figure = plot_history({"loss": [2.0, 1.2, 0.9],
    ...                        "val_loss": [2.1, 1.4, 1.1]})
    >>> [axes.get_title() for axes in figure.axes]
    ['loss']
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError(
            "`history` must be a keras History or a non-empty dict of "
            f"per-epoch lists. Received: history={history!r}"
        )
    if metrics is None:
        metrics = [
            name
            for name in logs
            if not name.startswith("val_")
            and name not in ("learning_rate", "lr")
        ]
        metrics += [
            name[4:]
            for name in logs
            if name.startswith("val_") and name[4:] not in logs
        ]
    missing = [m for m in metrics if m not in logs and f"val_{m}" not in logs]
    if missing or not metrics:
        raise ValueError(
            f"`metrics` must name entries of the history {sorted(logs)}. "
            f"Received: metrics={metrics!r}"
        )
    figure = _new_figure((4.0 * len(metrics), 3.2))
    panels = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axes, name in zip(panels, metrics, strict=True):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in logs:
                values = [float(v) for v in logs[key]]
                epochs = range(1, len(values) + 1)
                axes.plot(epochs, values, marker=".", label=label)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    return _finish(figure, path)
