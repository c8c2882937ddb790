"""Token embeddings, tied with the output projection, plus positions."""

import math
import re
import warnings

import keras
import numpy as np
from keras import ops

from keras_tfm import _backend, masks
from keras_tfm._validation import (
    check_bool,
    check_choice,
    check_initializer,
    check_positive_int,
    check_positive_number,
    check_rate,
    clone_initializer,
    concrete_value,
    is_integer_dtype,
)
from keras_tfm.layers.add_norm import NORMALIZATIONS, normalization_layer
from keras_tfm.layers.position import (
    LearnedPositionEmbedding,
    SinusoidalPositionEncoding,
)

POSITIONS = ("sinusoidal", "learned", "rotary", "none")

_ROTARY_WARNING = (
    "TokenAndPositionEmbedding(position='rotary') adds no position: the "
    "rotation happens inside attention, so the blocks (or "
    "MultiHeadAttention) must be built with position='rotary' too. Use "
    "position='none' here to say so without this warning."
)

# ReversibleEmbedding arguments that TokenEmbedding fixes: the reverse call
# is the tied projection, in float32, without soft-capping.
_FIXED = ("input_dim", "output_dim", "tie_weights", "reverse_dtype")
_FIXED_OR_UNSUPPORTED = (*_FIXED, "logit_soft_cap")


def _is_float_vectors(inputs, embedding_dim):
    # Floating-point inputs whose last axis is `embedding_dim`: what the
    # reverse call takes, and so never read as token ids.
    return (
        keras.backend.is_float_dtype(inputs.dtype)
        and len(inputs.shape) >= 1
        and inputs.shape[-1] == embedding_dim
    )


def _token_ids(layer, inputs, reversible=True):
    """`inputs` as integer token ids, casting floats as Keras's Embedding.

    Raises a TypeError for non-numeric dtypes (booleans, strings) and, for
    a `reversible` layer, for floats whose last axis is `embedding_dim`:
    the forgotten `reverse=True`.
    """
    if is_integer_dtype(inputs.dtype):
        return inputs
    dim = layer.embedding_dim
    if reversible and _is_float_vectors(inputs, dim):
        raise TypeError(
            f"{type(layer).__name__} received floating-point inputs whose "
            f"last axis is embedding_dim={dim}: vectors, not token ids. "
            "Call it with reverse=True to project vectors to logits, or "
            "cast the ids to an integer dtype. Received: inputs with shape "
            f"{tuple(inputs.shape)} and dtype={inputs.dtype}"
        )
    if not keras.backend.is_float_dtype(inputs.dtype):
        raise TypeError(
            f"{type(layer).__name__} expects integer token ids (or "
            "floating-point ids, cast to int32 as keras.layers.Embedding "
            f"does). Received: inputs with dtype={inputs.dtype}"
        )
    return ops.cast(inputs, "int32")


def _check_id_range(ids, vocabulary_size):
    """Raise for ids outside `[0, vocabulary_size)` when they hold values.

    Returns `None` after an eager check, or, inside a traced function
    (where no op can raise), the boolean `(batch, seq)` mask of the ids in
    range, for the caller to turn the other vectors to NaN.
    """
    if 0 in tuple(ids.shape):
        return None
    bounds = None
    if not _backend.torch_compiling():  # no graph break on a value
        bounds = concrete_value(ops.stack([ops.min(ids), ops.max(ids)]))
    if bounds is not None:
        low, high = (int(b) for b in np.asarray(bounds))
        if low < 0 or high >= vocabulary_size:
            raise ValueError(
                "Token ids must be in [0, vocabulary_size) = "
                f"[0, {vocabulary_size}). Received: ids in [{low}, {high}]"
            )
        return None
    return ops.logical_and(
        ops.greater_equal(ids, 0), ops.less(ids, vocabulary_size)
    )


@keras.saving.register_keras_serializable(package="keras_tfm")
class TokenEmbedding(keras.layers.ReversibleEmbedding):
    """Token embedding that doubles as the tied output projection.

    `call(ids)` looks up a `(vocabulary_size, embedding_dim)` table named
    `embeddings` (times `sqrt(embedding_dim)` when `scale=True`, as in the
    paper). `call(x, reverse=True)` computes logits `x @ embeddings.T`: the
    same table, so input and output embeddings are tied by calling one layer
    twice. The reverse call keeps the incoming Keras mask, so a compiled loss
    on the logits skips padding. Logits are computed in float32 under mixed
    precision.

    It is a `keras.layers.ReversibleEmbedding` (with tied weights) that adds
    the mask through the reverse call, float32 logits, `scale` and the id
    checks below, so it is quantized by `model.quantize("int8")` or
    `"int4"` and fine-tuned with `enable_lora(rank)` like Keras's own layers.

    Token ids: integer ids are looked up as they are. Floating-point ids
    (the default dtype of `keras.Input`) are cast to int32, as
    `keras.layers.Embedding` does, except floats whose last axis has size
    `embedding_dim`: those are model vectors passed without `reverse=True`,
    and raise a `TypeError` (cast such ids to an integer dtype). Boolean
    and other dtypes raise a `TypeError`.

    Ids outside `[0, vocabulary_size)` raise a `ValueError` naming
    `vocabulary_size` and the ids' range in every eager call (TensorFlow
    and JAX outside a compiled function, PyTorch always, its `model.fit`
    included); it costs one min/max and a copy of two numbers to the host.
    Inside a compiled function (`model.fit`/`predict` on TensorFlow and
    JAX, `jax.jit`, `tf.function`) no Keras op can raise, so the vectors of
    out-of-range ids are NaN, and so is the loss: otherwise JAX would give
    NaN only for ids `>= vocabulary_size`, and TensorFlow with XLA and
    JAX would read negative ids from the end of the table. One exception:
    TensorFlow without XLA on CPU raises first, for ids
    `>= vocabulary_size` only, its own `InvalidArgumentError` from
    `GatherV2`.

    Args:
        vocabulary_size: number of tokens.
        embedding_dim: size of each vector.
        mask_zero: whether id `0` is padding; if so the forward call attaches
            a `(batch, seq)` padding mask (`False` at padding).
        scale: multiply looked-up vectors by `sqrt(embedding_dim)`. Leave it
            `False` on a table given to `TokenAndPositionEmbedding`, which
            owns the scaling (see there).
        embeddings_initializer: initializer of the table.
        **kwargs: base layer arguments (`name`, `dtype`, ...) and
            `keras.layers.Embedding`'s `embeddings_regularizer`,
            `embeddings_constraint`, `lora_rank` and `lora_alpha`.

    Call arguments:
        inputs: token ids `(batch, seq)`, or with `reverse=True` vectors
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
    >>> tuple(embed(np.array([[1.0, 2.0, 0.0]])).shape)  # float ids
    (1, 3, 4)

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
        check_bool("mask_zero", mask_zero)
        check_bool("scale", scale)
        initializer = check_initializer(
            "embeddings_initializer", embeddings_initializer
        )
        for name in _FIXED_OR_UNSUPPORTED:
            if name in kwargs:
                raise TypeError(
                    f"`{name}` is not a TokenEmbedding argument: the table "
                    "is tied, the logits float32 and not soft-capped, and "
                    "the sizes are `vocabulary_size` and `embedding_dim`. "
                    f"Received: {name}={kwargs[name]!r}"
                )
        super().__init__(
            vocabulary_size,
            embedding_dim,
            tie_weights=True,
            embeddings_initializer=initializer,
            mask_zero=mask_zero,
            reverse_dtype="float32",
            **kwargs,
        )
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.scale = scale
        self.supports_masking = True  # the reverse call keeps the mask

    def call(self, inputs, reverse=False):
        return self._lookup_or_project(super().call, inputs, reverse)

    def quantized_call(self, inputs, reverse=False):
        return self._lookup_or_project(super().quantized_call, inputs, reverse)

    def _lookup_or_project(self, call, inputs, reverse):
        """Around ReversibleEmbedding's float or quantized call: checks,
        ids, scale, and float32 logits from one 2-D matmul."""
        if reverse:
            self._check_vectors(inputs)
            # (tokens, dim) @ (dim, vocab): one 2-D matmul, whose table
            # gradient is a plain GEMM (see FeedForward.call).
            shape = ops.shape(inputs)
            vectors = ops.reshape(inputs, (-1, self.embedding_dim))
            logits = ops.cast(call(vectors, reverse=True), "float32")
            return ops.reshape(logits, (*shape[:-1], self.vocabulary_size))
        ids = _token_ids(self, inputs)
        in_range = _check_id_range(ids, self.vocabulary_size)
        vectors = call(ids)
        if self.scale:
            vectors = vectors * ops.cast(
                math.sqrt(self.embedding_dim), vectors.dtype
            )
        if in_range is not None:
            # Traced: NaN marks out-of-range ids (see the class docstring).
            vectors = ops.where(
                ops.expand_dims(in_range, -1),
                vectors,
                ops.cast(float("nan"), vectors.dtype),
            )
        return vectors

    def _check_vectors(self, inputs):
        if inputs.shape[-1] != self.embedding_dim:
            raise ValueError(
                "TokenEmbedding(reverse=True) expects vectors whose last "
                f"dimension is embedding_dim={self.embedding_dim}. "
                f"Received: inputs with shape {tuple(inputs.shape)}"
            )

    def quantize(self, mode=None, type_check=True, config=None):
        # ReversibleEmbedding refuses subclasses (type_check) in case they
        # change what its quantized calls compute; this one wraps them.
        super().quantize(mode, type_check=False, config=config)

    def compute_mask(self, inputs, mask=None):
        if _is_float_vectors(inputs, self.embedding_dim):
            # The reverse call keeps the sequence axis, so it keeps the mask.
            return mask
        if not self.mask_zero:
            return None
        return masks.padding_mask(_token_ids(self, inputs))

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return tuple(input_shape)[:-1] + (self.vocabulary_size,)
        return tuple(input_shape) + (self.embedding_dim,)

    def compute_output_spec(self, inputs, reverse=False):
        if reverse:
            self._check_vectors(inputs)
        else:
            _token_ids(self, inputs)  # raises for vectors and bad dtypes
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        dtype = "float32" if reverse else self.compute_dtype
        return keras.KerasTensor(shape, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        for name in _FIXED:
            del config[name]
        config.pop("logit_soft_cap", None)
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

    Looks up token vectors (scaled by `sqrt(embedding_dim)` by default),
    adds the position strategy chosen by `position`, applies dropout, and
    attaches the padding mask (`mask_zero=True`), which plain `+` or
    `keras.layers.Add` would drop. Pass `token_embedding=` an existing
    `TokenEmbedding` to share one table between encoder, decoder and the
    output projection; the sharing survives `.keras` save and load.

    A shared table: this layer owns `scale` and `mask_zero`. The table must
    have `scale=False` (with `scale=True` on both, vectors would be
    multiplied by `sqrt(embedding_dim)` twice), and a table with
    `mask_zero=True` needs `mask_zero=True` here (this layer's mask is the
    one its output carries); either contradiction raises a `ValueError`
    naming both. The table's own `mask_zero` applies where the table is
    called directly.

    Why `scale=True` by default: the paper multiplies token vectors by
    `sqrt(d_model)`, and without it the default `"uniform"` table
    (`U(-0.05, 0.05)`, norm `0.029 * sqrt(d)`) is swamped by the
    sinusoids (norm `sqrt(d / 2)`): measured, 24.5 times larger whatever
    `d`. Scaled, the ratio is `24.5 / sqrt(d)`: 4.4 at `d = 32`, 3.1 at
    64, 1.1 at 512. A character LM composed from these layers (`d = 64`,
    two decoder blocks, 300k characters, the paper's schedule) lost
    3.71, 3.34, 3.28, 2.97, 2.85, 2.73 nats per epoch unscaled, hugging
    the unigram entropy (3.33) for three epochs, and 3.69, 2.78, 2.49,
    2.33, 2.22, 2.14 scaled.

    Position `"rotary"` adds nothing here: the rotation is applied to
    queries and keys inside attention, so the blocks (or
    `MultiHeadAttention`) must be built with `position="rotary"` too. The
    layer warns (`UserWarning`) when built with it, since nothing here can
    check the blocks; `position="none"` is the same computation, silently.

    BERT-style models add a segment ("token type") embedding
    (`segment_vocabulary_size`, called with `segment_ids`) and normalize
    the sum (`normalization="layer"`, BERT's embedding LayerNorm and BART's
    `layernorm_embedding`); the norm comes after token, position and
    segment vectors are summed and before dropout.

    Token ids follow `TokenEmbedding`'s rules: floating-point ids are cast
    to int32 (whatever their length: this layer has no reverse call), and
    ids outside `[0, vocabulary_size)` raise a `ValueError` in eager calls
    (NaN vectors inside compiled functions).

    Args:
        vocabulary_size: number of tokens.
        sequence_length: longest input; the size of the learned table.
            May be `None` unless `position="learned"` (the sinusoidal
            encoding and rotary work for any length).
        embedding_dim: size of each vector.
        position: `"sinusoidal"` (fixed, the paper's), `"learned"` (a
            trainable `(sequence_length, embedding_dim)` table), `"rotary"`
            (applied inside attention, so nothing is added here; warns) or
            `"none"`.
        mask_zero: whether id `0` is padding (attaches the padding mask).
        scale: multiply token vectors by `sqrt(embedding_dim)` (see above).
        dropout: dropout rate applied to the sum.
        token_embedding: optional `TokenEmbedding` to use (and share)
            instead of creating one; it must have `scale=False` (see above).
        max_wavelength: longest wavelength of the sinusoidal encoding.
        embeddings_initializer: initializer of a created token table (and
            of the segment table).
        segment_vocabulary_size: optional number of segment ids; when
            given, a `segment_embedding` table `(segment_vocabulary_size,
            embedding_dim)` (weight `embeddings`) is looked up with the
            `segment_ids` call argument and added.
        normalization: optional `"layer"` or `"rms"`: a norm sublayer
            `norm` applied to the sum, before dropout.
        normalization_epsilon: epsilon of that norm. Defaults to `1e-5`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: token ids `(batch, seq)`.
        start_index: position of the first token, for incremental decoding.
        positions: optional int `(batch, seq)` per-token positions (packed
            rows, where positions restart in each segment); instead of
            `start_index, start_index + 1, ...`. Not used by `"rotary"`
            and `"none"`, which add no position here.
        segment_ids: int `(batch, seq)` ids in `[0,
            segment_vocabulary_size)`; required with
            `segment_vocabulary_size`, refused without it.
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
        scale=True,
        dropout=0.0,
        token_embedding=None,
        max_wavelength=10000,
        embeddings_initializer="uniform",
        segment_vocabulary_size=None,
        normalization=None,
        normalization_epsilon=1e-5,
        **kwargs,
    ):
        check_positive_int("vocabulary_size", vocabulary_size)
        check_choice("position", position, POSITIONS)
        if position == "learned" and sequence_length is None:
            raise ValueError(
                "`sequence_length` is the size of the position table and is "
                'required with position="learned". Received: '
                "sequence_length=None"
            )
        check_positive_int("sequence_length", sequence_length, allow_none=True)
        check_positive_int("embedding_dim", embedding_dim)
        check_positive_int(
            "segment_vocabulary_size", segment_vocabulary_size, allow_none=True
        )
        check_choice("normalization", normalization, (None, *NORMALIZATIONS))
        check_positive_number("normalization_epsilon", normalization_epsilon)
        check_bool("mask_zero", mask_zero)
        check_bool("scale", scale)
        check_rate("dropout", dropout)
        check_positive_number("max_wavelength", max_wavelength)
        initializer = check_initializer(
            "embeddings_initializer", embeddings_initializer
        )
        if isinstance(token_embedding, dict):
            token_embedding = keras.saving.deserialize_keras_object(
                token_embedding
            )
        if token_embedding is not None:
            _check_shared_table(
                token_embedding, vocabulary_size, embedding_dim, mask_zero
            )
        if position == "rotary":
            warnings.warn(_ROTARY_WARNING, UserWarning, stacklevel=2)
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.position = position
        self.mask_zero = mask_zero
        self.scale = scale
        self.dropout = dropout
        self.max_wavelength = max_wavelength
        self.embeddings_initializer = initializer
        self.segment_vocabulary_size = segment_vocabulary_size
        self.normalization = normalization
        self.normalization_epsilon = normalization_epsilon
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
        self.segment_embedding = None
        if segment_vocabulary_size is not None:
            self.segment_embedding = keras.layers.Embedding(
                segment_vocabulary_size,
                embedding_dim,
                embeddings_initializer=clone_initializer(initializer),
                dtype=self.dtype_policy,
                name="segment_embedding",
            )
        self.norm = None
        if normalization is not None:
            self.norm = normalization_layer(
                normalization,
                normalization_epsilon,
                dtype=self.dtype_policy,
                name="norm",
            )
        self.dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="dropout"
        )

    def build(self, input_shape, *args, **kwargs):
        if not self.token_embedding.built:
            self.token_embedding.build(input_shape)
        vector_shape = tuple(input_shape) + (self.embedding_dim,)
        if self.position_embedding is not None:
            self.position_embedding.build(vector_shape)
        if self.segment_embedding is not None:
            self.segment_embedding.build(input_shape)
        if self.norm is not None:
            self.norm.build(vector_shape)
        self.built = True

    def _check_segment_ids(self, inputs, segment_ids):
        if self.segment_embedding is None:
            if segment_ids is not None:
                raise ValueError(
                    "`segment_ids` need a segment table: build the layer "
                    "with `segment_vocabulary_size`. Received: segment_ids "
                    "with segment_vocabulary_size=None"
                )
            return None
        if segment_ids is None:
            raise ValueError(
                "A TokenAndPositionEmbedding with segment_vocabulary_size="
                f"{self.segment_vocabulary_size} needs `segment_ids`. "
                "Received: segment_ids=None"
            )
        shape, expected = tuple(segment_ids.shape), tuple(inputs.shape)
        if not is_integer_dtype(segment_ids.dtype) or len(shape) != 2:
            raise ValueError(
                "`segment_ids` must be integer ids of shape (batch, seq) = "
                f"{expected}. Received: segment_ids with shape {shape} and "
                f"dtype={segment_ids.dtype}"
            )
        return segment_ids

    def call(
        self,
        inputs,
        start_index=0,
        positions=None,
        segment_ids=None,
        training=None,
    ):
        segment_ids = self._check_segment_ids(inputs, segment_ids)
        ids = _token_ids(self, inputs, reversible=False)
        vectors = self.token_embedding(ids)
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
        if segment_ids is not None:
            vectors = vectors + self.segment_embedding(segment_ids)
        if self.norm is not None:
            vectors = self.norm(vectors)
        return self.dropout_layer(vectors, training=training)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return masks.padding_mask(_token_ids(self, inputs, reversible=False))

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape) + (self.embedding_dim,)

    @classmethod
    def from_config(cls, config):
        # The rotary warning is for whoever composes the model, not for
        # every load of a saved one.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", re.escape(_ROTARY_WARNING), UserWarning
            )
            return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        # A shared table is left as the layer itself: Keras then serializes
        # it in place, records it as one shared object and restores one
        # table for every user of it. A quantized table is saved the same
        # way, so that it comes back quantized (with its dtype policy).
        table = self.token_embedding
        keep_table = self._shared_table or table.quantization_mode is not None
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "position": self.position,
                "mask_zero": self.mask_zero,
                "scale": self.scale,
                "dropout": self.dropout,
                "token_embedding": table if keep_table else None,
                "max_wavelength": self.max_wavelength,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "segment_vocabulary_size": self.segment_vocabulary_size,
                "normalization": self.normalization,
                "normalization_epsilon": self.normalization_epsilon,
            }
        )
        return config


def _check_shared_table(table, vocabulary_size, embedding_dim, mask_zero):
    if not isinstance(table, TokenEmbedding):
        raise TypeError(
            "`token_embedding` must be a keras_tfm TokenEmbedding. "
            f"Received: token_embedding={table!r}"
        )
    if (
        table.vocabulary_size != vocabulary_size
        or table.embedding_dim != embedding_dim
    ):
        raise ValueError(
            "`token_embedding` must match vocabulary_size="
            f"{vocabulary_size} and embedding_dim={embedding_dim}. "
            "Received: token_embedding with vocabulary_size="
            f"{table.vocabulary_size} and embedding_dim="
            f"{table.embedding_dim}"
        )
    if table.scale:
        raise ValueError(
            "`token_embedding` must have scale=False: "
            "TokenAndPositionEmbedding owns the sqrt(embedding_dim) "
            "scaling, so set its `scale` instead (scale=True on both would "
            "scale twice). Received: token_embedding with scale=True"
        )
    if table.mask_zero and not mask_zero:
        raise ValueError(
            "`mask_zero` must be True when `token_embedding` has "
            "mask_zero=True: the table treats id 0 as padding, and this "
            "layer's output would carry no padding mask. Received: "
            "mask_zero=False and token_embedding with mask_zero=True"
        )
