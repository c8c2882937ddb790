"""TokenEmbedding and TokenAndPositionEmbedding: tying, masks, errors."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfm.layers import TokenAndPositionEmbedding, TokenEmbedding
from tests.helpers import jax_only, run_layer_test, tensorflow_only

IDS = np.array([[3, 4, 5, 0], [6, 7, 0, 0]], "int32")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_token_embedding_layer_checks():
    run_layer_test(
        TokenEmbedding,
        {"vocabulary_size": 10, "embedding_dim": 8, "mask_zero": True},
        IDS,
        num_trainable_weights=1,
        expected_output_shape=(2, 4, 8),
        run_mixed_precision=True,
    )


def test_token_embedding_reverse_layer_checks():
    vectors = np.random.default_rng(0).normal(size=(2, 4, 8))
    run_layer_test(
        TokenEmbedding,
        {"vocabulary_size": 10, "embedding_dim": 8},
        vectors.astype("float32"),
        call_kwargs={"reverse": True},
        num_trainable_weights=1,
        expected_output_shape=(2, 4, 10),
        input_mask=IDS != 0,
    )


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "none"])
def test_token_and_position_layer_checks(position):
    run_layer_test(
        TokenAndPositionEmbedding,
        {
            "vocabulary_size": 10,
            "sequence_length": 8,
            "embedding_dim": 8,
            "position": position,
        },
        IDS,
        num_trainable_weights=2 if position == "learned" else 1,
        expected_output_shape=(2, 4, 8),
    )


def test_lookup_scale_and_reverse_values():
    layer = TokenEmbedding(10, 4, scale=True)
    vectors = ops.convert_to_numpy(layer(IDS))
    table = ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_allclose(vectors, table[IDS] * 2.0, rtol=1e-6)
    logits = ops.convert_to_numpy(layer(vectors, reverse=True))
    np.testing.assert_allclose(logits, vectors @ table.T, rtol=1e-5)


def test_mask_zero_attaches_padding_mask_and_reverse_keeps_it():
    layer = TokenEmbedding(10, 4, mask_zero=True)
    mask = ops.convert_to_numpy(layer.compute_mask(ops.convert_to_tensor(IDS)))
    np.testing.assert_array_equal(mask, IDS != 0)
    vectors = ops.ones((2, 4, 4))
    kept = layer.compute_mask(vectors, ops.convert_to_tensor(IDS != 0))
    np.testing.assert_array_equal(ops.convert_to_numpy(kept), IDS != 0)


def test_token_and_position_values():
    tok = TokenEmbedding(10, 6)
    layer = TokenAndPositionEmbedding(
        10, 8, 6, position="sinusoidal", scale=True, token_embedding=tok
    )
    out = ops.convert_to_numpy(layer(IDS))
    table = ops.convert_to_numpy(tok.embeddings)
    positions = np.arange(4)[:, None] / np.power(
        10000.0, 2 * (np.arange(6) // 2) / 6
    )
    encoding = np.where(
        np.arange(6) % 2 == 0, np.sin(positions), np.cos(positions)
    )
    np.testing.assert_allclose(
        out, table[IDS] * np.sqrt(6) + encoding, atol=1e-5
    )


def _tied_model(position):
    tok = TokenEmbedding(12, 8, name="token_embedding")
    ids = keras.Input((None,), dtype="int32")
    x = TokenAndPositionEmbedding(
        12, 16, 8, position=position, token_embedding=tok
    )(ids)
    x = keras.layers.Dense(8)(x)
    return keras.Model(ids, tok(x, reverse=True))


@pytest.mark.parametrize("position", ["sinusoidal", "learned"])
def test_tied_head_loss_ignores_appended_padding(position):
    model = _tied_model(position)
    model.compile(loss=LOSS)
    targets = np.array([[1, 2, 3, 0], [4, 5, 0, 0]], "int32")
    loss = model.evaluate(IDS, targets, verbose=0)
    padded = model.evaluate(
        np.pad(IDS, ((0, 0), (0, 5))),
        np.pad(targets, ((0, 0), (0, 5))),
        verbose=0,
    )
    np.testing.assert_allclose(loss, padded, rtol=1e-5)
    # Without the mask the padded loss would differ: check it does.
    unmasked = LOSS(
        np.pad(targets, ((0, 0), (0, 5))),
        model.predict(np.pad(IDS, ((0, 0), (0, 5))), verbose=0),
    )
    assert abs(float(unmasked) - loss) > 1e-3


@pytest.mark.parametrize("position", ["sinusoidal", "learned"])
def test_tied_model_saves_and_loads_as_one_table(position, tmp_path):
    model = _tied_model(position)
    path = str(tmp_path / "tied.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        model.predict(IDS, verbose=0), loaded.predict(IDS, verbose=0), atol=0
    )
    tables = [w for w in loaded.weights if w.shape == (12, 8)]
    assert len(tables) == 1
    embedding = loaded.layers[1]
    assert embedding.token_embedding is loaded.get_layer("token_embedding")
    loaded.compile(optimizer="sgd", loss=LOSS)
    before = ops.convert_to_numpy(tables[0]).copy()
    loaded.fit(IDS, IDS, epochs=1, verbose=0)
    assert not np.allclose(before, ops.convert_to_numpy(tables[0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocabulary_size": 0, "embedding_dim": 4}, "vocabulary_size"),
        ({"vocabulary_size": 5, "embedding_dim": -1}, "embedding_dim"),
        (
            {
                "vocabulary_size": 5,
                "embedding_dim": 4,
                "embeddings_initializer": "x",
            },
            "embeddings_initializer",
        ),
        (
            {"vocabulary_size": 5, "embedding_dim": 4, "mask_zero": "no"},
            "mask_zero.*Received: mask_zero='no'",
        ),
        ({"vocabulary_size": 5, "embedding_dim": 4, "scale": 1}, "scale"),
    ],
)
def test_token_embedding_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenEmbedding(**kwargs)


@pytest.mark.parametrize(
    "name, value",
    [("tie_weights", False), ("input_dim", 5), ("logit_soft_cap", 30.0)],
)
def test_fixed_reversible_embedding_arguments_are_rejected(name, value):
    with pytest.raises(TypeError, match=f"`{name}`.*Received: {name}="):
        TokenEmbedding(5, 4, **{name: value})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sequence_length": 0}, "sequence_length"),
        ({"vocabulary_size": -3}, "vocabulary_size"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"position": "absolute"}, "position.*sinusoidal"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"max_wavelength": 0}, "max_wavelength"),
        ({"max_wavelength": float("inf")}, "max_wavelength"),
        ({"mask_zero": 1}, "mask_zero"),
        ({"scale": "yes"}, "scale.*Received: scale='yes'"),
        ({"embeddings_initializer": "x"}, "embeddings_initializer"),
    ],
)
def test_token_and_position_bad_arguments(kwargs, match):
    arguments = {"vocabulary_size": 5, "sequence_length": 4, "embedding_dim": 4}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TokenAndPositionEmbedding(**arguments)


def test_shared_table_must_match():
    with pytest.raises(ValueError, match="token_embedding"):
        TokenAndPositionEmbedding(5, 4, 4, token_embedding=TokenEmbedding(6, 4))
    with pytest.raises(TypeError, match="token_embedding"):
        TokenAndPositionEmbedding(5, 4, 4, token_embedding="table")


def test_float_token_ids_are_cast_like_keras_embedding():
    ids = IDS.astype("float32")
    table = TokenEmbedding(10, 8, mask_zero=True)
    model = keras.Sequential([table])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model(ids)), ops.convert_to_numpy(table(IDS))
    )
    mask = table.compute_mask(ops.convert_to_tensor(ids))
    np.testing.assert_array_equal(ops.convert_to_numpy(mask), IDS != 0)
    wrapper = TokenAndPositionEmbedding(10, 8, 8, token_embedding=table)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(wrapper(ids)), ops.convert_to_numpy(wrapper(IDS))
    )
    # keras.Input's default dtype is float32.
    inputs = keras.Input((10,))
    assert tuple(TokenEmbedding(100, 32)(inputs).shape) == (None, 10, 32)
    outputs = TokenAndPositionEmbedding(100, 16, 32)(inputs)
    assert tuple(outputs.shape) == (None, 10, 32)
    # The wrapper never projects back: float ids of any length are ids.
    wrapper = TokenAndPositionEmbedding(10, 8, 4)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(wrapper(IDS.astype("float32"))),
        ops.convert_to_numpy(wrapper(IDS)),
    )
    assert tuple(wrapper(keras.Input((4,))).shape) == (None, 4, 4)


def test_vectors_without_reverse_are_rejected():
    # Floats whose last axis is embedding_dim are model vectors: the
    # forgotten `reverse=True`.
    with pytest.raises(TypeError, match="reverse=True"):
        TokenEmbedding(5, 4)(np.ones((1, 3, 4), "float32"))
    with pytest.raises(TypeError, match="reverse=True"):
        TokenEmbedding(5, 4)(keras.Input((3, 4)))
    with pytest.raises(TypeError, match="reverse=True"):
        TokenEmbedding(5, 4)(np.ones((2, 4), "float16"))
    # Integer ids of that shape are ids, and so are floats of another width.
    assert tuple(TokenEmbedding(5, 4)(np.ones((1, 3, 4), "int32")).shape) == (
        1,
        3,
        4,
        4,
    )
    assert tuple(TokenEmbedding(5, 4)(np.ones((1, 3), "float32")).shape) == (
        1,
        3,
        4,
    )


def test_boolean_ids_are_rejected():
    with pytest.raises(TypeError, match="integer token ids"):
        TokenEmbedding(5, 4)(np.ones((1, 3), bool))
    with pytest.raises(TypeError, match="integer token ids"):
        TokenAndPositionEmbedding(5, 4, 4)(np.ones((1, 3), bool))


def test_reverse_keeps_the_mask_of_rank_two_vectors():
    table = TokenEmbedding(10, 8, mask_zero=True)
    vectors = ops.ones((2, 8))
    assert table.compute_mask(vectors, None) is None
    assert tuple(table(vectors, reverse=True).shape) == (2, 10)


def test_reverse_width_mismatch_is_rejected():
    with pytest.raises(ValueError, match="embedding_dim=4"):
        TokenEmbedding(5, 4)(np.ones((1, 3, 6), "float32"), reverse=True)


def test_learned_overflow_names_sequence_length():
    layer = TokenAndPositionEmbedding(5, 4, 4, position="learned")
    with pytest.raises(ValueError, match="sequence_length"):
        layer(np.ones((1, 6), "int32"))


# --- a shared table: the wrapper owns scale and mask_zero ---------------------


def test_shared_table_with_scale_is_rejected():
    for wrapper_scale in (True, False):
        with pytest.raises(ValueError, match="token_embedding.*scale=True"):
            TokenAndPositionEmbedding(
                5,
                4,
                4,
                scale=wrapper_scale,
                token_embedding=TokenEmbedding(5, 4, scale=True),
            )


def test_shared_masking_table_needs_a_masking_wrapper():
    masking = TokenEmbedding(5, 4, mask_zero=True)
    with pytest.raises(ValueError, match="mask_zero=False.*mask_zero=True"):
        TokenAndPositionEmbedding(
            5, 4, 4, mask_zero=False, token_embedding=masking
        )
    # Agreeing, or the table's default mask_zero=False: the wrapper's mask.
    for mask_zero, table in ((True, masking), (False, TokenEmbedding(5, 4))):
        layer = TokenAndPositionEmbedding(
            5, 4, 4, mask_zero=mask_zero, token_embedding=table
        )
        mask = layer.compute_mask(ops.convert_to_tensor(IDS % 5))
        if mask_zero:
            np.testing.assert_array_equal(
                ops.convert_to_numpy(mask), IDS % 5 != 0
            )
        else:
            assert mask is None


def test_default_scale_is_the_papers():
    layer = TokenAndPositionEmbedding(10, 8, 6, position="none")
    assert layer.scale is True
    out = ops.convert_to_numpy(layer(IDS))
    table = ops.convert_to_numpy(layer.token_embedding.embeddings)
    np.testing.assert_allclose(out, table[IDS] * np.sqrt(6), rtol=1e-6)


def test_rotary_warns_that_the_blocks_must_rotate():
    with pytest.warns(UserWarning, match="position='rotary'.*attention"):
        layer = TokenAndPositionEmbedding(10, 8, 4, position="rotary")
    assert layer.position_embedding is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for position in ("sinusoidal", "learned", "none"):
            TokenAndPositionEmbedding(10, 8, 4, position=position)
        # Loading a saved model is not composing one: no warning.
        TokenAndPositionEmbedding.from_config(layer.get_config())


# --- out-of-range token ids -------------------------------------------------

BAD_IDS = np.array([[3, 4, 12, 0], [-1, 7, 0, 0]], "int32")


@pytest.mark.parametrize("layer_cls", ["table", "wrapper"])
def test_out_of_range_ids_raise_when_eager(layer_cls):
    layer = (
        TokenEmbedding(12, 8)
        if layer_cls == "table"
        else TokenAndPositionEmbedding(12, 8, 8)
    )
    with pytest.raises(ValueError, match=r"vocabulary_size.*ids in \[-1, 12\]"):
        layer(BAD_IDS)
    with pytest.raises(ValueError, match=r"\[0, 12\).*ids in \[0, 12\]"):
        layer(np.abs(BAD_IDS))
    with pytest.raises(ValueError, match=r"ids in \[-1, 11\]"):
        layer(np.minimum(BAD_IDS, 11).astype("float32"))
    layer(BAD_IDS % 12)  # in range: fine


def _bad_rows(vectors):
    # (batch, seq) True where a vector has a NaN.
    return np.isnan(ops.convert_to_numpy(vectors)).any(-1)


@jax_only
def test_out_of_range_ids_are_nan_under_jax_jit():
    import jax

    layer = TokenEmbedding(12, 8)
    layer.build()
    vectors = jax.jit(lambda ids: layer(ids))(BAD_IDS)
    np.testing.assert_array_equal(
        _bad_rows(vectors), (BAD_IDS < 0) | (BAD_IDS >= 12)
    )


@tensorflow_only
def test_out_of_range_ids_in_tensorflow_graphs():
    import tensorflow as tf

    layer = TokenEmbedding(12, 8)
    layer.build()
    bad = (BAD_IDS < 0) | (BAD_IDS >= 12)
    # XLA clamps gather indices: the layer turns those vectors to NaN.
    vectors = tf.function(layer, jit_compile=True)(tf.constant(BAD_IDS))
    np.testing.assert_array_equal(_bad_rows(vectors), bad)
    # Without XLA the CPU gather raises for ids >= vocabulary_size (a GPU
    # one reads zeros, turned to NaN) ...
    if tf.config.list_physical_devices("GPU"):
        vectors = tf.function(layer, jit_compile=False)(tf.constant(BAD_IDS))
        np.testing.assert_array_equal(_bad_rows(vectors), bad)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match="GatherV2"):
            tf.function(layer, jit_compile=False)(tf.constant(BAD_IDS))
    # ... and negative ids (which TensorFlow would wrap around) are NaN.
    negative = np.minimum(BAD_IDS, 11)
    vectors = tf.function(layer, jit_compile=False)(tf.constant(negative))
    np.testing.assert_array_equal(_bad_rows(vectors), negative < 0)


def test_out_of_range_ids_in_fit():
    model = _tied_model("sinusoidal")  # vocabulary_size=12
    if keras.backend.backend() == "torch":
        # PyTorch runs the step eagerly: the check raises.
        model.compile(optimizer="sgd", loss=LOSS)
        with pytest.raises(ValueError, match="vocabulary_size"):
            model.fit(BAD_IDS, BAD_IDS % 12, verbose=0)
        return
    # A compiled step cannot raise: the out-of-range vectors, and so the
    # loss, are NaN.
    model.compile(optimizer="sgd", loss=LOSS, jit_compile=True)
    history = model.fit(BAD_IDS, BAD_IDS % 12, verbose=0)
    assert np.isnan(history.history["loss"][-1])


def test_the_previous_layers_config_and_weights_load():
    # What TokenEmbedding wrote before it was a ReversibleEmbedding: these
    # keys, and its one variable under "0" in the .keras weights store.
    config = {
        "name": "token_embedding",
        "trainable": True,
        "dtype": "float32",
        "vocabulary_size": 10,
        "embedding_dim": 4,
        "mask_zero": True,
        "scale": True,
        "embeddings_initializer": keras.initializers.serialize(
            keras.initializers.get("uniform")
        ),
    }
    layer = TokenEmbedding.from_config(config)
    layer.build()
    table = np.arange(40, dtype="float32").reshape(10, 4) / 40
    layer.load_own_variables({"0": table})
    assert layer.weights[0].path == "token_embedding/embeddings"
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(IDS)), table[IDS] * 2.0, rtol=1e-6
    )


# --------------------------------------------- segments, norm (BERT, BART)

SEGMENTS = np.array([[0, 0, 1, 1], [0, 1, 1, 0]], "int32")


@keras.saving.register_keras_serializable(package="keras_tfm_tests")
class SegmentedEmbedding(TokenAndPositionEmbedding):
    """Takes `[token_ids, segment_ids]`, the form `run_layer_test` calls."""

    def build(self, input_shape):
        super().build(input_shape[0])

    def call(self, inputs, training=None):
        ids, segment_ids = inputs
        return super().call(ids, segment_ids=segment_ids, training=training)

    def compute_mask(self, inputs, mask=None):
        return super().compute_mask(inputs[0])

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(input_shape[0])


@pytest.mark.parametrize("normalization", ["layer", "rms"])
def test_segments_and_norm_layer_checks(normalization):
    run_layer_test(
        SegmentedEmbedding,
        {
            "vocabulary_size": 10,
            "sequence_length": 8,
            "embedding_dim": 8,
            "position": "learned",
            "scale": False,
            "segment_vocabulary_size": 2,
            "normalization": normalization,
            "normalization_epsilon": 1e-12,
        },
        [IDS, SEGMENTS],
        num_trainable_weights=5 if normalization == "layer" else 4,
        expected_output_shape=(2, 4, 8),
    )


def test_matches_transformers_bert_embeddings():
    import torch
    import transformers
    from transformers.models.bert import modeling_bert

    from tests.helpers import randomize_torch

    config = transformers.BertConfig(
        vocab_size=10,
        hidden_size=8,
        max_position_embeddings=8,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
    )
    theirs = modeling_bert.BertEmbeddings(config).eval()
    randomize_torch(theirs, seed=3)
    with torch.no_grad():
        expected = theirs(
            input_ids=torch.from_numpy(IDS).long(),
            token_type_ids=torch.from_numpy(SEGMENTS).long(),
        ).numpy()
    ours = TokenAndPositionEmbedding(
        10,
        8,
        8,
        position="learned",
        mask_zero=False,
        scale=False,
        segment_vocabulary_size=2,
        normalization="layer",
        normalization_epsilon=1e-12,
    )
    ours(IDS, segment_ids=SEGMENTS)
    pairs = (
        (ours.token_embedding.embeddings, theirs.word_embeddings.weight),
        (ours.position_embedding.embeddings, theirs.position_embeddings.weight),
        (
            ours.segment_embedding.embeddings,
            theirs.token_type_embeddings.weight,
        ),
        (ours.norm.gamma, theirs.LayerNorm.weight),
        (ours.norm.beta, theirs.LayerNorm.bias),
    )
    for variable, parameter in pairs:
        variable.assign(parameter.detach().numpy())
    outputs = ops.convert_to_numpy(ours(IDS, segment_ids=SEGMENTS))
    np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=0)


def test_norm_comes_before_dropout_and_after_the_sum():
    layer = TokenAndPositionEmbedding(
        10, None, 8, position="none", scale=False, normalization="rms"
    )
    vectors = ops.convert_to_numpy(layer(IDS))
    table = ops.convert_to_numpy(layer.token_embedding.embeddings)[IDS]
    rms = np.sqrt((table**2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(vectors, table / rms, atol=1e-5)


def test_segment_ids_errors():
    segmented = TokenAndPositionEmbedding(10, 8, 8, segment_vocabulary_size=2)
    with pytest.raises(ValueError, match="segment_ids=None"):
        segmented(IDS)
    plain = TokenAndPositionEmbedding(10, 8, 8)
    with pytest.raises(ValueError, match="segment_vocabulary_size"):
        plain(IDS, segment_ids=SEGMENTS)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sequence_length": None, "position": "learned"}, "sequence_length"),
        ({"sequence_length": 0}, "sequence_length"),
        ({"segment_vocabulary_size": 0}, "segment_vocabulary_size"),
        ({"normalization": "batch"}, "normalization"),
        ({"normalization_epsilon": 0.0}, "normalization_epsilon"),
    ],
)
def test_new_embedding_arguments_raise(kwargs, name):
    arguments = {"vocabulary_size": 10, "sequence_length": 8}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        TokenAndPositionEmbedding(embedding_dim=8, **arguments)


@pytest.mark.parametrize("position", ["none", "rotary", "sinusoidal"])
def test_sequence_length_may_be_none_without_a_table(position):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = TokenAndPositionEmbedding(10, None, 8, position=position)
    assert layer.get_config()["sequence_length"] is None
    assert tuple(layer(IDS).shape) == (2, 4, 8)
