"""BART (`model_type: bart`): a shared token table, learned positions
stored with an offset of 2, a LayerNorm after each embedding, post-norm
encoder and decoder blocks, a tied head."""

import numpy as np

from keras_tfm.checkpoints._table import (
    LINEAR,
    ModelType,
    Transform,
    activation,
    config_value,
    drop_rows,
    require,
    rows,
    unsupported,
)
from keras_tfm.layers import (
    TokenAndPositionEmbedding,
    TokenEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)
from keras_tfm.models import Seq2SeqLM

# BART's learned positions start at row 2 of the checkpoint's table.
POSITION_OFFSET = 2


def check(config):
    require(config, "normalize_before", (False,), False)
    require(config, "add_final_layer_norm", (False,), False)
    require(config, "tie_word_embeddings", (True,), True)


def build(config, names, dtype):
    width = config["d_model"]
    dropout = config_value(config, "dropout", 0.0)
    act = activation(config, "activation_function")
    activation_dropout = config_value(config, "activation_dropout", 0.0)
    table = TokenEmbedding(
        config["vocab_size"], width, dtype=dtype, name="token_embedding"
    )

    def embedding(name):
        return TokenAndPositionEmbedding(
            config["vocab_size"],
            config["max_position_embeddings"],
            width,
            position="learned",
            mask_zero=False,
            scale=bool(config.get("scale_embedding", False)),
            normalization="layer",
            dropout=dropout,
            token_embedding=table,
            dtype=dtype,
            name=name,
        )

    options = dict(
        dropout=dropout,
        activation=act,
        activation_dropout=activation_dropout,
        dtype=dtype,
    )
    encoder_blocks = [
        TransformerEncoderBlock(
            num_heads=config["encoder_attention_heads"],
            intermediate_dim=config["encoder_ffn_dim"],
            name=f"encoder_block_{i}",
            **options,
        )
        for i in range(config["encoder_layers"])
    ]
    decoder_blocks = [
        TransformerDecoderBlock(
            num_heads=config["decoder_attention_heads"],
            intermediate_dim=config["decoder_ffn_dim"],
            name=f"decoder_block_{i}",
            **options,
        )
        for i in range(config["decoder_layers"])
    ]
    return Seq2SeqLM(
        embedding("encoder_embedding"),
        encoder_blocks,
        embedding("decoder_embedding"),
        decoder_blocks,
        padding_mask=True,
        pad_id=config.get("pad_token_id"),
        name="bart",
    )


def _zero_logits_bias(config):
    """`final_logits_bias`, a buffer that `transformers` keeps at zero."""

    def load(array):
        if np.any(array != 0):
            unsupported(
                config,
                "final_logits_bias",
                "a nonzero bias",
                "a zero final_logits_bias (as transformers trains it)",
            )
        return []

    def save(arrays):
        return np.zeros((1, config["vocab_size"]), "float32")

    return Transform(load, save)


def _attention(theirs, ours, layers):
    table = []
    for their_name, our_name in (
        ("q_proj", "query_dense"),
        ("k_proj", "key_dense"),
        ("v_proj", "value_dense"),
        ("out_proj", "output_dense"),
    ):
        name = f"{theirs}.{their_name}"
        dense = f"{ours}.{our_name}"
        table += rows(f"{name}.weight", f"{dense}.kernel", LINEAR, layers)
        table += rows(f"{name}.bias", f"{dense}.bias", layers=layers)
    return table


def _norm(theirs, ours, layers=None):
    return [
        *rows(f"{theirs}.weight", f"{ours}.gamma", layers=layers),
        *rows(f"{theirs}.bias", f"{ours}.beta", layers=layers),
    ]


def _feed_forward(layer, block, layers):
    table = []
    for theirs, ours in (
        ("fc1", "intermediate_dense"),
        ("fc2", "output_dense"),
    ):
        dense = f"{block}.feed_forward.{ours}"
        table += rows(
            f"{layer}.{theirs}.weight", f"{dense}.kernel", LINEAR, layers
        )
        table += rows(f"{layer}.{theirs}.bias", f"{dense}.bias", layers=layers)
    return table


def table(config, model):
    table = [
        *rows(
            "model.shared.weight",
            "encoder_embedding.token_embedding.embeddings",
        ),
        *rows(
            "final_logits_bias", (), _zero_logits_bias(config), optional=True
        ),
    ]
    for side, layers in (
        ("encoder", config["encoder_layers"]),
        ("decoder", config["decoder_layers"]),
    ):
        theirs = f"model.{side}"
        layer = f"{theirs}.layers.{{i}}"
        block = f"{side}_blocks[{{i}}]"
        table += rows(
            f"{theirs}.embed_positions.weight",
            f"{side}_embedding.position_embedding.embeddings",
            drop_rows(POSITION_OFFSET),
        )
        table += _norm(
            f"{theirs}.layernorm_embedding", f"{side}_embedding.norm"
        )
        table += _attention(
            f"{layer}.self_attn", f"{block}.self_attention", layers
        )
        table += _norm(
            f"{layer}.self_attn_layer_norm",
            f"{block}.self_attention_add_norm.norm",
            layers,
        )
        if side == "decoder":
            table += _attention(
                f"{layer}.encoder_attn",
                f"{block}.cross_attention_layer",
                layers,
            )
            table += _norm(
                f"{layer}.encoder_attn_layer_norm",
                f"{block}.cross_attention_add_norm.norm",
                layers,
            )
        table += _feed_forward(layer, block, layers)
        table += _norm(
            f"{layer}.final_layer_norm",
            f"{block}.feed_forward_add_norm.norm",
            layers,
        )
    return table


BART = ModelType(
    build=build,
    table=table,
    prefixes=("model.", ""),
    architecture="BartForConditionalGeneration",
    # Copies of the shared table that some versions save.
    ignored=(
        r"model\.(encoder|decoder)\.embed_tokens\.weight",
        r"lm_head\.weight",
    ),
    checks=check,
)
