"""`compile(jit_compile=True)` trains as eager does.

Three steps of the same batches, one model compiled and one eager from the
same weights: losses and weights after the steps agree to rtol 1e-5. On
PyTorch `jit_compile=True` is `torch.compile` of Keras's train step (this
file is the issue-20 check that every model kind goes through it); on JAX
and TensorFlow it is XLA, and the same comparison holds, so it runs on every
backend. The models are tiny, and one model of each kind is compiled once
(the C++ compile of inductor takes seconds per model on a loaded 2-core box).
"""

import os

import keras
import numpy as np
import pytest

from keras_tfm import checkpoints, data, layers, models
from keras_tfm.losses import MaskedSparseCategoricalCrossentropy

VOCAB = 24
LENGTH = 12
STEPS = 3
SIZE = dict(num_layers=1, embedding_dim=16, num_heads=2, intermediate_dim=32)
RNG = np.random.default_rng(7)


def ragged(rows, length, low=3):
    """Token ids 1.. with padding 0 after a random length per row."""
    ids = RNG.integers(1, VOCAB, size=(rows, length)).astype("int32")
    for row in range(rows):
        ids[row, RNG.integers(low, length + 1) :] = 0
    return ids


def sequences(count, longest):
    return [
        RNG.integers(1, VOCAB, size=RNG.integers(2, longest + 1)).tolist()
        for _ in range(count)
    ]


def decoder_lm_packed():
    model = models.decoder_lm(
        VOCAB, LENGTH, packed=True, position="rotary", dropout=0.0, **SIZE
    )
    packed = data.pack(sequences(10, 6), LENGTH, return_labels=True)
    labels = packed.pop("labels")
    return model, packed, labels, MaskedSparseCategoricalCrossentropy()


def seq2seq_packed():
    model = models.seq2seq_transformer(
        VOCAB, LENGTH, packed=True, position="learned", dropout=0.0, **SIZE
    )
    sources = sequences(8, 5)
    targets = [[1, *sequence, 2] for sequence in sequences(8, 4)]
    packed = data.pack_pairs(sources, targets, LENGTH, LENGTH)
    labels = packed.pop("labels")
    return model, packed, labels, MaskedSparseCategoricalCrossentropy()


def classifier():
    model = models.encoder_classifier(
        VOCAB, LENGTH, 3, position="sinusoidal", dropout=0.0, **SIZE
    )
    labels = RNG.integers(0, 3, size=(4,)).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, ragged(4, LENGTH), labels, loss


def composed_causal_lm():
    """Rotary blocks, a final norm and an untied head; Keras's mask."""
    model = models.CausalLM(
        layers.TokenEmbedding(VOCAB, 16, mask_zero=True),
        [
            layers.TransformerDecoderBlock(
                num_heads=2,
                intermediate_dim=32,
                dropout=0.0,
                norm_first=True,
                cross_attention=False,
                position="rotary",
            )
        ],
        final_norm=keras.layers.LayerNormalization(),
        head=keras.layers.Dense(VOCAB),
    )
    ids = ragged(4, LENGTH + 1)
    return model, ids[:, :-1], ids[:, 1:], MaskedSparseCategoricalCrossentropy()


def composed_seq2seq_lm():
    def embedding():
        return layers.TokenAndPositionEmbedding(
            VOCAB, LENGTH, 16, position="sinusoidal"
        )

    model = models.Seq2SeqLM(
        embedding(),
        [
            layers.TransformerEncoderBlock(
                num_heads=2, intermediate_dim=32, dropout=0.0
            )
        ],
        embedding(),
        [
            layers.TransformerDecoderBlock(
                num_heads=2, intermediate_dim=32, dropout=0.0
            )
        ],
        head=keras.layers.Dense(VOCAB),
    )
    targets = ragged(4, LENGTH + 1)
    inputs = {
        "encoder_token_ids": ragged(4, LENGTH),
        "decoder_token_ids": targets[:, :-1],
    }
    return model, inputs, targets[:, 1:], MaskedSparseCategoricalCrossentropy()


def llama_from_config():
    """A checkpoint-built model: explicit `padding_mask`, id 0 a token."""
    model = checkpoints.from_config(
        {
            "model_type": "llama",
            "vocab_size": VOCAB,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
        }
    )
    ids = RNG.integers(0, VOCAB, size=(4, LENGTH + 1)).astype("int32")
    mask = ragged(4, LENGTH + 1) > 0
    inputs = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    labels = np.where(mask[:, 1:], ids[:, 1:], -1)
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=-1
    )
    return model, inputs, labels, loss


CASES = {
    "decoder_lm_packed": decoder_lm_packed,
    "seq2seq_packed": seq2seq_packed,
    "encoder_classifier": classifier,
    "composed_causal_lm": composed_causal_lm,
    "composed_seq2seq_lm": composed_seq2seq_lm,
    "llama_from_config": llama_from_config,
}


# On PyTorch each case costs one inductor compile: 20-42 s each on the quiet
# 2-core box (all six passed there with KERAS_TFM_ALL_COMPILES=1, 193 s),
# 65-120 s loaded. CI runs two there: the packed encoder-decoder (every block
# kind, segments, cross-attention) and the checkpoint-built model (grouped
# heads, explicit padding, rotary); the rest run with
# KERAS_TFM_ALL_COMPILES=1 (and on the other backends always).
TORCH_OPTIONAL = {
    "decoder_lm_packed",
    "encoder_classifier",
    "composed_causal_lm",
    "composed_seq2seq_lm",
}


def train(model, weights, x, y, loss, jit_compile):
    """`STEPS` updates of the whole batch, through `fit` as a user trains
    (`fit` hands the compiled step tensors, not NumPy arrays)."""
    model.set_weights(weights)
    model.compile(
        # SGD: an update is linear in the gradient, so rounding differences
        # of the compiled kernels stay rounding-sized (Adam's normalization
        # turns those of near-zero gradients into whole steps).
        optimizer=keras.optimizers.SGD(0.1),
        loss=loss,
        jit_compile=jit_compile,
    )
    history = model.fit(
        x, y, batch_size=len(y), epochs=STEPS, shuffle=False, verbose=0
    )
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    return history.history["loss"], weights


@pytest.mark.parametrize("name", list(CASES))
def test_jit_compile_trains_as_eager(name):
    if (
        keras.backend.backend() == "torch"
        and name in TORCH_OPTIONAL
        and not os.environ.get("KERAS_TFM_ALL_COMPILES")
    ):
        pytest.skip("PyTorch: set KERAS_TFM_ALL_COMPILES=1 (a compile each)")
    model, x, y, loss = CASES[name]()
    model(x)  # built
    weights = model.get_weights()
    eager_losses, eager_weights = train(model, weights, x, y, loss, False)
    losses, trained = train(model, weights, x, y, loss, True)
    assert model.jit_compile  # not turned off by Keras
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    assert eager_losses[-1] != eager_losses[0]  # the steps did update
    for got, expected in zip(trained, eager_weights, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
