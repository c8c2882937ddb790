"""BERT (`model_type: bert`): token, learned position and segment
(token-type) embeddings summed and layer-normalized, post-norm encoder
blocks (LayerNorm epsilon 1e-12), and the `[CLS]` pooler."""

import keras

from keras_tfm.checkpoints._table import (
    LINEAR,
    ModelType,
    activation,
    config_value,
    require,
    rows,
)
from keras_tfm.layers import TokenAndPositionEmbedding, TransformerEncoderBlock
from keras_tfm.models import EncoderModel


def check(config):
    require(config, "is_decoder", (False,), False)
    require(config, "add_cross_attention", (False,), False)
    require(config, "position_embedding_type", ("absolute",), "absolute")


def build(config, names, dtype):
    """`names`: the checkpoint's tensor names, or None (with a pooler)."""
    width = config["hidden_size"]
    epsilon = config_value(config, "layer_norm_eps", 1e-12)
    dropout = config_value(config, "hidden_dropout_prob", 0.0)
    embedding = TokenAndPositionEmbedding(
        config["vocab_size"],
        config["max_position_embeddings"],
        width,
        position="learned",
        mask_zero=False,
        scale=False,
        segment_vocabulary_size=config_value(config, "type_vocab_size", 2),
        normalization="layer",
        normalization_epsilon=epsilon,
        dropout=dropout,
        dtype=dtype,
        name="embedding",
    )
    blocks = [
        TransformerEncoderBlock(
            num_heads=config["num_attention_heads"],
            intermediate_dim=config["intermediate_size"],
            dropout=dropout,
            activation=activation(config, "hidden_act"),
            layer_norm_epsilon=epsilon,
            dtype=dtype,
            name=f"block_{i}",
        )
        for i in range(config["num_hidden_layers"])
    ]
    pooler = None
    if names is None or "pooler.dense.weight" in names:
        pooler = keras.layers.Dense(
            width, activation="tanh", dtype=dtype, name="pooler"
        )
    return EncoderModel(embedding, blocks, pooler=pooler, name="bert")


def table(config, model):
    n = config["num_hidden_layers"]
    layer = "encoder.layer.{i}"
    block = "blocks[{i}]"
    attention = f"{block}.self_attention"
    table = []
    for theirs, ours in (
        ("word_embeddings", "token_embedding"),
        ("position_embeddings", "position_embedding"),
        ("token_type_embeddings", "segment_embedding"),
    ):
        table += rows(
            f"embeddings.{theirs}.weight", f"embedding.{ours}.embeddings"
        )
    dense = [
        (f"{layer}.attention.self.query", f"{attention}.query_dense"),
        (f"{layer}.attention.self.key", f"{attention}.key_dense"),
        (f"{layer}.attention.self.value", f"{attention}.value_dense"),
        (f"{layer}.attention.output.dense", f"{attention}.output_dense"),
        (
            f"{layer}.intermediate.dense",
            f"{block}.feed_forward.intermediate_dense",
        ),
        (f"{layer}.output.dense", f"{block}.feed_forward.output_dense"),
    ]
    for theirs, ours in dense:
        table += rows(f"{theirs}.weight", f"{ours}.kernel", LINEAR, layers=n)
        table += rows(f"{theirs}.bias", f"{ours}.bias", layers=n)
    norms = [
        ("embeddings.LayerNorm", "embedding.norm", None),
        (
            f"{layer}.attention.output.LayerNorm",
            f"{block}.self_attention_add_norm.norm",
            n,
        ),
        (f"{layer}.output.LayerNorm", f"{block}.feed_forward_add_norm.norm", n),
    ]
    for theirs, ours, layers in norms:
        table += rows(f"{theirs}.weight", f"{ours}.gamma", layers=layers)
        table += rows(f"{theirs}.bias", f"{ours}.beta", layers=layers)
    if model.pooler is not None:
        table += rows("pooler.dense.weight", "pooler.kernel", LINEAR)
        table += rows("pooler.dense.bias", "pooler.bias")
    return table


BERT = ModelType(
    build=build,
    table=table,
    prefixes=("", "bert."),
    architecture="BertModel",
    ignored=(r"embeddings\.position_ids",),
    checks=check,
)
