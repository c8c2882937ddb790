"""Llama, Mistral, Qwen2 and Qwen3 (`model_type: llama | mistral | qwen2 |
qwen3`): one table. Pre-norm RMSNorm blocks, rotary positions (base
`rope_theta`, Llama-3 or linear scaling), a SiLU-gated feed-forward
network, grouped-query attention; the four differ in options only:
Mistral's sliding window, Qwen2's query/key/value biases, Qwen3's
query/key norm and free head size."""

import keras

from keras_tfm.checkpoints._table import (
    LINEAR,
    ModelType,
    activation,
    config_value,
    require,
    rows,
    unsupported,
)
from keras_tfm.layers import (
    RMSNormalization,
    TokenAndPositionEmbedding,
    TransformerDecoderBlock,
)
from keras_tfm.models import CausalLM

# (bias on query/key/value, bias on the output) when `attention_bias` is
# absent from the config: Qwen2 always has the first and never the second.
_DEFAULT_BIASES = {"qwen2": (True, False)}


def rope(config):
    """`(rope_theta, rope_scaling)` from either config form: transformers
    5's `rope_parameters`, or 4's `rope_theta` and `rope_scaling`."""
    parameters = dict(config.get("rope_parameters") or {})
    theta = parameters.pop("rope_theta", None)
    theta = config_value(config, "rope_theta", theta or 10000.0)
    scaling = config.get("rope_scaling") or parameters or None
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
        elif kind not in ("linear", "llama3"):
            key = (
                "rope_scaling"
                if config.get("rope_scaling")
                else ("rope_parameters")
            )
            unsupported(config, key, scaling, 'rope_type "linear" or "llama3"')
    return float(theta), scaling


def check(config):
    model_type = config["model_type"]
    if model_type in ("qwen2", "qwen3"):
        require(config, "use_sliding_window", (False,), False)
    for kind in config.get("layer_types") or ():
        if kind != "full_attention":
            unsupported(
                config,
                "layer_types",
                config["layer_types"],
                '"full_attention" layers only',
            )
    rope(config)


def _biases(config):
    default = _DEFAULT_BIASES.get(config["model_type"])
    if default is not None and "attention_bias" not in config:
        return default
    bias = bool(config.get("attention_bias", False))
    return bias, bias


def build(config, names, dtype):
    model_type = config["model_type"]
    width = config["hidden_size"]
    heads = config["num_attention_heads"]
    epsilon = config_value(config, "rms_norm_eps", 1e-6)
    theta, scaling = rope(config)
    projection_bias, output_bias = _biases(config)
    window = None
    if model_type == "mistral":
        window = config.get("sliding_window")
    embedding = TokenAndPositionEmbedding(
        config["vocab_size"],
        None,
        width,
        position="none",  # rotary: the blocks rotate queries and keys
        mask_zero=False,
        scale=False,
        dtype=dtype,
        name="embedding",
    )
    blocks = [
        TransformerDecoderBlock(
            num_heads=heads,
            intermediate_dim=config["intermediate_size"],
            dropout=config_value(config, "attention_dropout", 0.0),
            activation=activation(config, "hidden_act"),
            norm_first=True,
            layer_norm_epsilon=epsilon,
            gated=True,
            normalization="rms",
            position="rotary",
            max_wavelength=theta,
            rope_scaling=scaling,
            cross_attention=False,
            head_dim=config_value(config, "head_dim", width // heads),
            num_key_value_heads=config_value(
                config, "num_key_value_heads", heads
            ),
            attention_bias=projection_bias,
            attention_output_bias=output_bias,
            feed_forward_bias=bool(config.get("mlp_bias", False)),
            query_key_norm=model_type == "qwen3",
            sliding_window=window,
            dtype=dtype,
            name=f"block_{i}",
        )
        for i in range(config["num_hidden_layers"])
    ]
    final_norm = RMSNormalization(
        epsilon=epsilon, dtype=dtype, name="final_norm"
    )
    head = None
    if not config.get("tie_word_embeddings", False):
        head = keras.layers.Dense(
            config["vocab_size"], use_bias=False, dtype=dtype, name="head"
        )
    return CausalLM(
        embedding,
        blocks,
        final_norm=final_norm,
        head=head,
        padding_mask=True,
        pad_id=config.get("pad_token_id"),
        name=model_type,
    )


def table(config, model):
    n = config["num_hidden_layers"]
    projection_bias, output_bias = _biases(config)
    attention = "blocks[{i}].self_attention"
    ffn = "blocks[{i}].feed_forward"
    layer = "model.layers.{i}"
    table = [
        *rows(
            "model.embed_tokens.weight", "embedding.token_embedding.embeddings"
        ),
        *rows(
            f"{layer}.input_layernorm.weight",
            "blocks[{i}].self_attention_add_norm.norm.scale",
            layers=n,
        ),
        *rows(
            f"{layer}.post_attention_layernorm.weight",
            "blocks[{i}].feed_forward_add_norm.norm.scale",
            layers=n,
        ),
        *rows("model.norm.weight", "final_norm.scale"),
    ]
    projections = [
        ("q_proj", "query_dense", projection_bias),
        ("k_proj", "key_dense", projection_bias),
        ("v_proj", "value_dense", projection_bias),
        ("o_proj", "output_dense", output_bias),
    ]
    for theirs, ours, bias in projections:
        name = f"{layer}.self_attn.{theirs}"
        table += rows(
            f"{name}.weight", f"{attention}.{ours}.kernel", LINEAR, layers=n
        )
        if bias:
            table += rows(f"{name}.bias", f"{attention}.{ours}.bias", layers=n)
    if config["model_type"] == "qwen3":
        for theirs, ours in (("q_norm", "query_norm"), ("k_norm", "key_norm")):
            table += rows(
                f"{layer}.self_attn.{theirs}.weight",
                f"{attention}.{ours}.scale",
                layers=n,
            )
    feed_forward_bias = bool(config.get("mlp_bias", False))
    for theirs, ours in (
        ("gate_proj", "gate_dense"),
        ("up_proj", "intermediate_dense"),
        ("down_proj", "output_dense"),
    ):
        name = f"{layer}.mlp.{theirs}"
        table += rows(
            f"{name}.weight", f"{ffn}.{ours}.kernel", LINEAR, layers=n
        )
        if feed_forward_bias:
            table += rows(f"{name}.bias", f"{ffn}.{ours}.bias", layers=n)
    if not config.get("tie_word_embeddings", False):
        table += rows("lm_head.weight", "head.kernel", LINEAR)
    return table


ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
MODEL_TYPES = {
    model_type: ModelType(
        build=build,
        table=table,
        prefixes=("model.", ""),
        architecture=architecture,
        ignored=(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
        checks=check,
    )
    for model_type, architecture in ARCHITECTURES.items()
}
