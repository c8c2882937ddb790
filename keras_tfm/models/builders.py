"""Builders: plain functions that return a model of keras_tfm layers.

Every builder takes the same `position=` flag ("sinusoidal", "learned",
"rotary" or "none"), `norm_first`, `gated`, `normalization` and
`dropout`; pre-norm stacks get a final normalization. `decoder_lm` and
`seq2seq_transformer` return `CausalLM` and `Seq2SeqLM`, which own their
cached step; `encoder_classifier` a functional `keras.Model`. Sublayers are
named for reading (`token_embedding`, `encoder_layer_0`, ...); nothing
looks them up by name. Token ids are integers with `0` as padding; the
padding mask flows as a Keras mask to the logits, so a plain
`model.compile(loss=...)` ignores positions whose input is padding.

Token vectors are multiplied by `sqrt(embedding_dim)` as the paper does
(`scale_embeddings=True`, the default): with the default token
initializer, unscaled token vectors are many times shorter than the
sinusoids added to them, and a model trained without the scaling learns
markedly slower (`keras_tfm.layers.TokenAndPositionEmbedding` says why;
the measurements are in benchmarks/README.md).
"""

from typing import Any, NamedTuple

import keras

from keras_tfm._validation import (
    check_bool,
    check_choice,
    check_positive_int,
)
from keras_tfm.layers.add_norm import normalization_layer
from keras_tfm.layers.decoder import TransformerDecoderBlock
from keras_tfm.layers.embedding import (
    POSITIONS,
    TokenAndPositionEmbedding,
    TokenEmbedding,
)
from keras_tfm.layers.encoder import TransformerEncoderBlock
from keras_tfm.layers.pooling import POOLINGS, SequencePooling
from keras_tfm.models.causal_lm import CausalLM
from keras_tfm.models.seq2seq_lm import Seq2SeqLM


class _Stack(NamedTuple):
    """The options every builder takes, checked once by `_stack_options`."""

    vocabulary_size: int
    sequence_length: int
    num_layers: int
    embedding_dim: int
    num_heads: int
    intermediate_dim: int
    dropout: float
    activation: Any
    position: str
    scale_embeddings: bool
    norm_first: bool
    gated: bool
    normalization: str
    layer_norm_epsilon: float


def _stack_options(arguments):
    """The `_Stack` options among a builder's `arguments` (its `locals()`).

    Checks what no layer checks before the model is built; the layers
    check the rest at construction.
    """
    options = _Stack(**{name: arguments[name] for name in _Stack._fields})
    for name in (
        "vocabulary_size",
        "sequence_length",
        "num_layers",
        "intermediate_dim",
        "embedding_dim",
        "num_heads",
    ):
        check_positive_int(name, getattr(options, name))
    if options.embedding_dim % options.num_heads:
        raise ValueError(
            "`num_heads` must divide the model dimension "
            f"{options.embedding_dim}. Received: num_heads={options.num_heads}"
        )
    check_choice("position", options.position, POSITIONS)
    return options


def _block_kwargs(stack):
    return dict(
        num_heads=stack.num_heads,
        intermediate_dim=stack.intermediate_dim,
        dropout=stack.dropout,
        activation=stack.activation,
        norm_first=stack.norm_first,
        layer_norm_epsilon=stack.layer_norm_epsilon,
        gated=stack.gated,
        normalization=stack.normalization,
        position="rotary" if stack.position == "rotary" else "none",
    )


def _final_norm(stack, name):
    return normalization_layer(
        stack.normalization, stack.layer_norm_epsilon, name=name
    )


def _embedding(stack, vocabulary_size, token_embedding, name):
    return TokenAndPositionEmbedding(
        vocabulary_size,
        stack.sequence_length,
        stack.embedding_dim,
        # Rotary positions are the blocks' (the embedding adds none).
        position="none" if stack.position == "rotary" else stack.position,
        mask_zero=True,
        scale=stack.scale_embeddings,
        dropout=stack.dropout,
        token_embedding=token_embedding,
        name=name,
    )


def _encoder_parts(stack, token_embedding, num_layers, prefix):
    """The embedding, blocks and final norm (or None) of an encoder."""
    embedding = _embedding(
        stack,
        token_embedding.vocabulary_size,
        token_embedding,
        f"{prefix}_embedding",
    )
    blocks = [
        TransformerEncoderBlock(
            **_block_kwargs(stack), name=f"{prefix}_layer_{i}"
        )
        for i in range(num_layers)
    ]
    norm = _final_norm(stack, f"{prefix}_final_norm")
    return embedding, blocks, norm if stack.norm_first else None


def _decoder_parts(stack, token_embedding, num_layers, cross_attention):
    embedding = _embedding(
        stack,
        token_embedding.vocabulary_size,
        token_embedding,
        "decoder_embedding",
    )
    blocks = [
        TransformerDecoderBlock(
            **_block_kwargs(stack),
            cross_attention=cross_attention,
            name=f"decoder_layer_{i}",
        )
        for i in range(num_layers)
    ]
    norm = _final_norm(stack, "decoder_final_norm")
    return embedding, blocks, norm if stack.norm_first else None


def _head(tie_embeddings, vocabulary_size):
    if tie_embeddings:
        return None
    return keras.layers.Dense(
        vocabulary_size, dtype="float32", name="output_projection"
    )


def seq2seq_transformer(
    vocabulary_size,
    sequence_length,
    *,
    target_vocabulary_size=None,
    num_layers=6,
    num_decoder_layers=None,
    embedding_dim=512,
    num_heads=8,
    intermediate_dim=2048,
    dropout=0.1,
    activation="relu",
    position="sinusoidal",
    share_embeddings=None,
    tie_embeddings=True,
    scale_embeddings=True,
    norm_first=False,
    gated=False,
    normalization="layer",
    layer_norm_epsilon=1e-5,
    packed=False,
    name="seq2seq_transformer",
):
    """Build the encoder-decoder Transformer of "Attention Is All You Need".

    Inputs are a dict `{"encoder_token_ids", "decoder_token_ids"}` of
    integer `(batch, None)` tensors, `0` being padding; the output is
    float32 logits `(batch, target_len, target_vocabulary_size)` that carry
    the decoder padding mask. Two independent choices, as in the paper by
    default: `share_embeddings` makes the encoder and decoder embeddings
    one table (`token_embedding`; needs one vocabulary, and is the default
    when there is one), and `tie_embeddings` makes the output projection
    the decoder's table (reversed).

    Args:
        vocabulary_size: source vocabulary size (and target, if
            `target_vocabulary_size` is None).
        sequence_length: longest sequence (the learned table's size).
        target_vocabulary_size: optional separate target vocabulary.
        num_layers: number of encoder layers (and decoder layers unless
            `num_decoder_layers` is given).
        num_decoder_layers: number of decoder layers.
        embedding_dim: model width.
        num_heads: attention heads; must divide `embedding_dim`.
        intermediate_dim: feed-forward hidden width.
        dropout: dropout rate everywhere.
        activation: feed-forward non-linearity.
        position: `"sinusoidal"`, `"learned"`, `"rotary"` or `"none"`.
        share_embeddings: one token table for encoder and decoder. `None`
            (default): shared when `target_vocabulary_size` is None.
        tie_embeddings: the output projection is the decoder's token table
            (else a separate `Dense` named `output_projection`).
        scale_embeddings: multiply token vectors by `sqrt(embedding_dim)`
            (see the module docstring).
        norm_first: pre-norm blocks (with final norms).
        gated: gated (GLU) feed-forward networks.
        normalization: `"layer"` or `"rms"`.
        layer_norm_epsilon: epsilon of every normalization.
        packed: take packed pairs (`keras_tfm.data.pack_pairs`): inputs
            `encoder_`/`decoder_` `token_ids`, `segment_ids`, `positions`.
            The weights are the unpacked model's.
        name: model name.

    Returns:
        A `keras_tfm.models.Seq2SeqLM`.

    Example:

    >>> import numpy as np
    >>> model = seq2seq_transformer(50, 16, num_layers=1, embedding_dim=16,
    ...                             num_heads=2, intermediate_dim=32)
    >>> ids = {"encoder_token_ids": np.array([[4, 5, 6, 0]]),
    ...        "decoder_token_ids": np.array([[1, 7, 0]])}
    >>> tuple(model(ids).shape)
    (1, 3, 50)
    """
    stack = _stack_options(locals())
    check_positive_int(
        "target_vocabulary_size", target_vocabulary_size, allow_none=True
    )
    check_positive_int(
        "num_decoder_layers", num_decoder_layers, allow_none=True
    )
    if share_embeddings is None:
        share_embeddings = target_vocabulary_size is None
    check_bool("share_embeddings", share_embeddings)
    check_bool("tie_embeddings", tie_embeddings)
    if share_embeddings and target_vocabulary_size is not None:
        raise ValueError(
            "`share_embeddings=True` needs one vocabulary for source and "
            "target; pass share_embeddings=False with a separate "
            "`target_vocabulary_size`. Received: target_vocabulary_size="
            f"{target_vocabulary_size}"
        )
    target_vocabulary_size = target_vocabulary_size or vocabulary_size
    source_table = TokenEmbedding(
        vocabulary_size, embedding_dim, name="token_embedding"
    )
    target_table = source_table
    if not share_embeddings:
        target_table = TokenEmbedding(
            target_vocabulary_size,
            embedding_dim,
            name="decoder_token_embedding",
        )
    encoder_embedding, encoder_blocks, encoder_norm = _encoder_parts(
        stack, source_table, num_layers, "encoder"
    )
    decoder_embedding, decoder_blocks, decoder_norm = _decoder_parts(
        stack, target_table, num_decoder_layers or num_layers, True
    )
    return Seq2SeqLM(
        encoder_embedding,
        encoder_blocks,
        decoder_embedding,
        decoder_blocks,
        encoder_final_norm=encoder_norm,
        decoder_final_norm=decoder_norm,
        head=_head(tie_embeddings, target_vocabulary_size),
        packed=packed,
        name=name,
    )


def encoder_classifier(
    vocabulary_size,
    sequence_length,
    num_classes,
    *,
    num_layers=2,
    embedding_dim=128,
    num_heads=4,
    intermediate_dim=512,
    dropout=0.1,
    activation="relu",
    position="sinusoidal",
    pooling="mean",
    scale_embeddings=True,
    norm_first=False,
    gated=False,
    normalization="layer",
    layer_norm_epsilon=1e-5,
    name="encoder_classifier",
):
    """Build a Transformer encoder with a pooled classification head.

    Input: integer `token_ids` `(batch, None)`, `0` being padding. Output:
    float32 logits `(batch, num_classes)`. Pooling is masked, so appending
    padding never changes the prediction.

    Args:
        vocabulary_size: vocabulary size.
        sequence_length: longest sequence (the learned table's size).
        num_classes: number of classes.
        num_layers: number of encoder layers.
        embedding_dim: model width.
        num_heads: attention heads; must divide `embedding_dim`.
        intermediate_dim: feed-forward hidden width.
        dropout: dropout rate everywhere.
        activation: feed-forward non-linearity.
        position: `"sinusoidal"`, `"learned"`, `"rotary"` or `"none"`.
        pooling: `"mean"`, `"first"` or `"max"` (masked).
        scale_embeddings: multiply token vectors by `sqrt(embedding_dim)`
            (see the module docstring).
        norm_first: pre-norm blocks (with a final norm).
        gated: gated (GLU) feed-forward networks.
        normalization: `"layer"` or `"rms"`.
        layer_norm_epsilon: epsilon of every normalization.
        name: model name.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> import numpy as np
    >>> model = encoder_classifier(50, 16, 3, num_layers=1, embedding_dim=16,
    ...                            num_heads=2, intermediate_dim=32)
    >>> tuple(model(np.array([[4, 5, 0]])).shape)
    (1, 3)
    """
    stack = _stack_options(locals())
    check_positive_int("num_classes", num_classes)
    check_choice("pooling", pooling, POOLINGS)
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    table = TokenEmbedding(
        vocabulary_size, embedding_dim, name="token_embedding"
    )
    embedding, blocks, norm = _encoder_parts(
        stack, table, num_layers, "encoder"
    )
    x = embedding(token_ids)
    for block in blocks:
        x = block(x)
    if norm is not None:
        x = norm(x)
    x = SequencePooling(pooling, name="pooling")(x)
    x = keras.layers.Dropout(dropout, name="classifier_dropout")(x)
    logits = keras.layers.Dense(
        num_classes, dtype="float32", name="classifier"
    )(x)
    return keras.Model(token_ids, logits, name=name)


def decoder_lm(
    vocabulary_size,
    sequence_length,
    *,
    num_layers=6,
    embedding_dim=512,
    num_heads=8,
    intermediate_dim=2048,
    dropout=0.1,
    activation="relu",
    position="sinusoidal",
    tie_embeddings=True,
    scale_embeddings=True,
    norm_first=False,
    gated=False,
    normalization="layer",
    layer_norm_epsilon=1e-5,
    packed=False,
    name="decoder_lm",
):
    """Build a decoder-only (GPT-style) causal language model.

    Input: integer `token_ids` `(batch, None)`, `0` being padding. Output:
    float32 next-token logits `(batch, seq, vocabulary_size)` carrying the
    padding mask; the output projection is the token table
    (`tie_embeddings=True`).

    Args:
        vocabulary_size: vocabulary size.
        sequence_length: longest sequence (the learned table's size).
        num_layers: number of decoder layers.
        embedding_dim: model width.
        num_heads: attention heads; must divide `embedding_dim`.
        intermediate_dim: feed-forward hidden width.
        dropout: dropout rate everywhere.
        activation: feed-forward non-linearity.
        position: `"sinusoidal"`, `"learned"`, `"rotary"` or `"none"`.
        tie_embeddings: share the token table with the output projection.
        scale_embeddings: multiply token vectors by `sqrt(embedding_dim)`
            (see the module docstring).
        norm_first: pre-norm blocks (with a final norm).
        gated: gated (GLU) feed-forward networks.
        normalization: `"layer"` or `"rms"`.
        layer_norm_epsilon: epsilon of every normalization.
        packed: take packed rows (`keras_tfm.data.pack`): inputs
            `token_ids`, `segment_ids`, `positions`. The weights are the
            unpacked model's.
        name: model name.

    Returns:
        A `keras_tfm.models.CausalLM`.

    Example:

    >>> import numpy as np
    >>> model = decoder_lm(50, 16, num_layers=1, embedding_dim=16,
    ...                    num_heads=2, intermediate_dim=32)
    >>> tuple(model(np.array([[4, 5, 0]])).shape)
    (1, 3, 50)
    """
    stack = _stack_options(locals())
    check_bool("tie_embeddings", tie_embeddings)
    table = TokenEmbedding(
        vocabulary_size, embedding_dim, name="token_embedding"
    )
    embedding, blocks, norm = _decoder_parts(stack, table, num_layers, False)
    return CausalLM(
        embedding,
        blocks,
        final_norm=norm,
        head=_head(tie_embeddings, vocabulary_size),
        packed=packed,
        name=name,
    )
