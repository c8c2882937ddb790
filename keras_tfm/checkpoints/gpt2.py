"""GPT-2 (`model_type: gpt2`): learned positions, pre-norm LayerNorm blocks
with GPT-2's tanh GELU, a tied head. `transformers`' `Conv1D` stores
kernels as (in, out), like Keras, and fuses query, key and value."""

import keras

from keras_tfm.checkpoints._table import (
    ModelType,
    activation,
    config_value,
    require,
    rows,
    split_columns,
)
from keras_tfm.layers import TokenAndPositionEmbedding, TransformerDecoderBlock
from keras_tfm.models import CausalLM


def check(config):
    require(config, "add_cross_attention", (False,), False)
    require(config, "scale_attn_by_inverse_layer_idx", (False,), False)
    require(config, "scale_attn_weights", (True,), True)
    require(config, "tie_word_embeddings", (True,), True)


def build(config, names, dtype):
    width = config["n_embd"]
    epsilon = config_value(config, "layer_norm_epsilon", 1e-5)
    embedding = TokenAndPositionEmbedding(
        config["vocab_size"],
        config["n_positions"],
        width,
        position="learned",
        mask_zero=False,
        scale=False,
        dropout=config_value(config, "embd_pdrop", 0.0),
        dtype=dtype,
        name="embedding",
    )
    blocks = [
        TransformerDecoderBlock(
            num_heads=config["n_head"],
            intermediate_dim=config_value(config, "n_inner", 4 * width),
            dropout=config_value(config, "resid_pdrop", 0.0),
            activation=activation(config, "activation_function"),
            norm_first=True,
            layer_norm_epsilon=epsilon,
            cross_attention=False,
            dtype=dtype,
            name=f"block_{i}",
        )
        for i in range(config["n_layer"])
    ]
    final_norm = keras.layers.LayerNormalization(
        epsilon=epsilon, dtype=dtype, name="final_norm"
    )
    return CausalLM(
        embedding,
        blocks,
        final_norm=final_norm,
        padding_mask=True,
        pad_id=config.get("pad_token_id"),
        name="gpt2",
    )


def table(config, model):
    n = config["n_layer"]
    layer = "transformer.h.{i}"
    block = "blocks[{i}]"
    attention = f"{block}.self_attention"
    qkv = [f"{attention}.{d}_dense" for d in ("query", "key", "value")]
    table = [
        *rows("transformer.wte.weight", "embedding.token_embedding.embeddings"),
        *rows(
            "transformer.wpe.weight", "embedding.position_embedding.embeddings"
        ),
        *rows("transformer.ln_f.weight", "final_norm.gamma"),
        *rows("transformer.ln_f.bias", "final_norm.beta"),
    ]
    for theirs, ours in (
        ("ln_1", "self_attention_add_norm.norm"),
        ("ln_2", "feed_forward_add_norm.norm"),
    ):
        table += rows(
            f"{layer}.{theirs}.weight", f"{block}.{ours}.gamma", layers=n
        )
        table += rows(
            f"{layer}.{theirs}.bias", f"{block}.{ours}.beta", layers=n
        )
    for kind in ("weight", "bias"):
        ours = "kernel" if kind == "weight" else "bias"
        table += rows(
            f"{layer}.attn.c_attn.{kind}",
            [f"{dense}.{ours}" for dense in qkv],
            split_columns(3),
            layers=n,
        )
        for theirs, dense in (
            ("attn.c_proj", f"{attention}.output_dense"),
            ("mlp.c_fc", f"{block}.feed_forward.intermediate_dense"),
            ("mlp.c_proj", f"{block}.feed_forward.output_dense"),
        ):
            table += rows(
                f"{layer}.{theirs}.{kind}", f"{dense}.{ours}", layers=n
            )
    return table


GPT2 = ModelType(
    build=build,
    table=table,
    prefixes=("transformer.", ""),
    architecture="GPT2LMHeadModel",
    # Causal-mask buffers that older `transformers` versions saved, and
    # the head, which is the token table.
    ignored=(r"h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
    checks=check,
)
