"""Token embeddings, tied with the output projection, plus positions."""

import math

import keras
from keras import ops

from keras_tfm import masks
from keras_tfm._validation import (
    check_choice,
    check_positive_int,
    check_positive_number,
    check_rate,
    is_integer_dtype,
)
from keras_tfm.layers.position import (
    LearnedPositionEmbedding,
    SinusoidalPositionEncoding,
)

POSITIONS = ("sinusoidal", "learned", "rotary", "none")


def _check_initializer(value):
    try:
        return keras.initializers.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`embeddings_initializer` must be a Keras initializer or its "
            f"name. Received: embeddings_initializer={value!r}"
        ) from error


@keras.saving.register_keras_serializable(package="keras_tfm")
class TokenEmbedding(keras.layers.Layer):
    """Token embedding that doubles as the tied output projection.

    `call(ids)` looks up a `(vocabulary_size, embedding_dim)` table named
    `embeddings` (times `sqrt(embedding_dim)` when `scale=True`, as in the
    paper). `call(x, reverse=True)` computes logits `x @ embeddings.T`: the
    same table, so input and output embeddings are tied by calling one layer
    twice. The reverse call keeps the incoming Keras mask, so a compiled loss
    on the logits skips padding. Logits are computed in float32 under mixed
    precision.

    Args:
        vocabulary_size: number of tokens.
        embedding_dim: size of each vector.
        mask_zero: whether id `0` is padding; if so the forward call attaches
            a `(batch, seq)` padding mask (`False` at padding).
        scale: multiply looked-up vectors by `sqrt(embedding_dim)`.
        embeddings_initializer: initializer of the table.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: integer ids `(batch, seq)`, or with `reverse=True` vectors
            `(..., embedding_dim)`.
        reverse: compute logits over the vocabulary instead of looking up.

    Returns:
        `(batch, seq, embedding_dim)` vectors, or `(..., vocabulary_size)`
        float32 logits when `reverse=True`.

    Example:

    >>> import numpy as np
    >>> embed = TokenEmbedding(vocabulary_size=10, embedding_dim=4)
    >>> vectors = embed(np.array([[1, 2, 0]]))
    >>> tuple(vectors.shape)
    (1, 3, 4)
    >>> tuple(embed(vectors, reverse=True).shape)
    (1, 3, 10)

    References:
        Press & Wolf, "Using the Output Embedding to Improve Language
        Models", 2017; Vaswani et al., 2017, section 3.4.
    """

    def __init__(
        self,
        vocabulary_size,
        embedding_dim,
        mask_zero=False,
        scale=False,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        check_positive_int("vocabulary_size", vocabulary_size)
        check_positive_int("embedding_dim", embedding_dim)
        initializer = _check_initializer(embeddings_initializer)
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.mask_zero = bool(mask_zero)
        self.scale = bool(scale)
        self.embeddings_initializer = initializer
        self.supports_masking = True

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocabulary_size, self.embedding_dim),
            initializer=self.embeddings_initializer,
            trainable=True,
        )
        self.built = True

    def call(self, inputs, reverse=False):
        if reverse:
            if inputs.shape[-1] != self.embedding_dim:
                raise ValueError(
                    "TokenEmbedding(reverse=True) expects vectors whose last "
                    f"dimension is embedding_dim={self.embedding_dim}. "
                    f"Received: inputs with shape {tuple(inputs.shape)}"
                )
            table = ops.cast(self.embeddings, "float32")
            # (tokens, dim) @ (dim, vocab): one 2-D matmul, whose table
            # gradient is a plain GEMM (see FeedForward.call).
            shape = ops.shape(inputs)
            vectors = ops.reshape(
                ops.cast(inputs, "float32"), (-1, self.embedding_dim)
            )
            logits = ops.matmul(vectors, ops.transpose(table))
            return ops.reshape(logits, (*shape[:-1], self.vocabulary_size))
        if not is_integer_dtype(inputs.dtype):
            raise TypeError(
                "TokenEmbedding expects integer token ids (use reverse=True "
                "to project vectors to logits). Received: inputs with "
                f"dtype={inputs.dtype}"
            )
        vectors = ops.take(self.embeddings, inputs, axis=0)
        vectors = ops.cast(vectors, self.compute_dtype)
        if self.scale:
            vectors = vectors * ops.cast(
                math.sqrt(self.embedding_dim), self.compute_dtype
            )
        return vectors

    def compute_mask(self, inputs, mask=None):
        if is_integer_dtype(inputs.dtype):
            return masks.padding_mask(inputs) if self.mask_zero else None
        # The reverse call keeps the sequence axis, so it keeps the mask.
        return mask

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return tuple(input_shape)[:-1] + (self.vocabulary_size,)
        return tuple(input_shape) + (self.embedding_dim,)

    def compute_output_spec(self, inputs, reverse=False):
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        dtype = "float32" if reverse else self.compute_dtype
        if not reverse and not is_integer_dtype(inputs.dtype):
            self.call(inputs)  # raises the TypeError for float ids
        return keras.KerasTensor(shape, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "embedding_dim": self.embedding_dim,
                "mask_zero": self.mask_zero,
                "scale": self.scale,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_tfm")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding plus position information, behind one flag.

    Looks up token vectors (optionally scaled by `sqrt(embedding_dim)`),
    adds the position strategy chosen by `position`, applies dropout, and
    attaches the padding mask (`mask_zero=True`), which plain `+` or
    `keras.layers.Add` would drop. Pass `token_embedding=` an existing
    `TokenEmbedding` to share one table between encoder, decoder and the
    output projection; the sharing survives `.keras` save and load.

    Args:
        vocabulary_size: number of tokens.
        sequence_length: longest input; the size of the learned table (the
            sinusoidal encoding and rotary work for any length).
        embedding_dim: size of each vector.
        position: `"sinusoidal"` (fixed, the paper's), `"learned"` (a
            trainable `(sequence_length, embedding_dim)` table), `"rotary"`
            (applied inside attention, so nothing is added here) or
            `"none"`.
        mask_zero: whether id `0` is padding (attaches the padding mask).
        scale: multiply token vectors by `sqrt(embedding_dim)`.
        dropout: dropout rate applied to the sum.
        token_embedding: optional `TokenEmbedding` to use (and share)
            instead of creating one.
        max_wavelength: longest wavelength of the sinusoidal encoding.
        embeddings_initializer: initializer of a created token table.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: integer ids `(batch, seq)`.
        start_index: position of the first token, for incremental decoding.
        positions: optional int `(batch, seq)` per-token positions (packed
            rows, where positions restart in each segment); instead of
            `start_index, start_index + 1, ...`. Not used by `"rotary"`
            and `"none"`, which add no position here.
        training: whether dropout is active.

    Returns:
        `(batch, seq, embedding_dim)` vectors carrying the padding mask.

    Example:

    >>> import numpy as np
    >>> layer = TokenAndPositionEmbedding(
    ...     vocabulary_size=20, sequence_length=8, embedding_dim=4,
    ...     position="learned")
    >>> tuple(layer(np.array([[3, 4, 0]])).shape)
    (1, 3, 4)

    References:
        Vaswani et al., "Attention Is All You Need", 2017, sections 3.4-3.5.
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        embedding_dim,
        position="sinusoidal",
        mask_zero=True,
        scale=False,
        dropout=0.0,
        token_embedding=None,
        max_wavelength=10000,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        check_positive_int("vocabulary_size", vocabulary_size)
        check_positive_int("sequence_length", sequence_length)
        check_positive_int("embedding_dim", embedding_dim)
        check_choice("position", position, POSITIONS)
        check_rate("dropout", dropout)
        check_positive_number("max_wavelength", max_wavelength)
        initializer = _check_initializer(embeddings_initializer)
        if isinstance(token_embedding, dict):
            token_embedding = keras.saving.deserialize_keras_object(
                token_embedding
            )
        if token_embedding is not None:
            if not isinstance(token_embedding, TokenEmbedding):
                raise TypeError(
                    "`token_embedding` must be a keras_tfm TokenEmbedding. "
                    f"Received: token_embedding={token_embedding!r}"
                )
            if (
                token_embedding.vocabulary_size != vocabulary_size
                or token_embedding.embedding_dim != embedding_dim
            ):
                raise ValueError(
                    "`token_embedding` must match vocabulary_size="
                    f"{vocabulary_size} and embedding_dim={embedding_dim}. "
                    "Received: token_embedding with vocabulary_size="
                    f"{token_embedding.vocabulary_size} and embedding_dim="
                    f"{token_embedding.embedding_dim}"
                )
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.position = position
        self.mask_zero = bool(mask_zero)
        self.scale = bool(scale)
        self.dropout = dropout
        self.max_wavelength = max_wavelength
        self.embeddings_initializer = initializer
        self.supports_masking = True
        self._shared_table = token_embedding is not None
        if token_embedding is None:
            token_embedding = TokenEmbedding(
                vocabulary_size,
                embedding_dim,
                embeddings_initializer=initializer,
                dtype=self.dtype_policy,
                name="token_embedding",
            )
        self.token_embedding = token_embedding
        self.position_embedding = None
        if position == "sinusoidal":
            self.position_embedding = SinusoidalPositionEncoding(
                max_wavelength,
                dtype=self.dtype_policy,
                name="position_encoding",
            )
        elif position == "learned":
            self.position_embedding = LearnedPositionEmbedding(
                sequence_length,
                dtype=self.dtype_policy,
                name="position_embedding",
            )
        self.dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="dropout"
        )

    def build(self, input_shape):
        if not self.token_embedding.built:
            self.token_embedding.build(input_shape)
        vector_shape = tuple(input_shape) + (self.embedding_dim,)
        if self.position_embedding is not None:
            self.position_embedding.build(vector_shape)
        self.built = True

    def call(self, inputs, start_index=0, positions=None, training=None):
        if not is_integer_dtype(inputs.dtype):
            raise TypeError(
                "TokenAndPositionEmbedding expects integer token ids. "
                f"Received: inputs with dtype={inputs.dtype}"
            )
        vectors = self.token_embedding(inputs)
        if self.scale:
            vectors = vectors * ops.cast(
                math.sqrt(self.embedding_dim), vectors.dtype
            )
        if self.position_embedding is not None:
            position_kwargs = {"start_index": start_index}
            if positions is not None:
                position_kwargs["positions"] = positions
            vectors = vectors + self.position_embedding(
                vectors, **position_kwargs
            )
        return self.dropout_layer(vectors, training=training)

    def compute_mask(self, inputs, mask=None):
        return masks.padding_mask(inputs) if self.mask_zero else None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "position": self.position,
                "mask_zero": self.mask_zero,
                "scale": self.scale,
                "dropout": self.dropout,
                # A shared table is left as the layer itself: Keras then
                # serializes it in place, records it as one shared object
                # and restores one table for every user of it.
                "token_embedding": (
                    self.token_embedding if self._shared_table else None
                ),
                "max_wavelength": self.max_wavelength,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
