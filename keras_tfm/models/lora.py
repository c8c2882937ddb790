"""LoRA fine-tuning of any model built from keras_tfm layers."""

import keras

from keras_tfm._validation import check_positive_int


def lora_layers(model):
    """The layers LoRA can adapt: every Dense and token table in `model`."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, (keras.layers.Dense, keras.layers.Embedding))
    ]


def enable_lora(model, rank, targets=None):
    """Freeze `model` and add Keras's LoRA to the chosen projections.

    Every weight of the model becomes non-trainable; each target layer
    (a `keras.layers.Dense` or a token table) gets Keras's own
    `enable_lora(rank)`, whose two low-rank factors are then the only
    trainable weights. The merged weights (`kernel`, `embeddings`) are what
    the layers compute with and what `keras_tfm.checkpoints.save` writes,
    so a fine-tuned model saves as a plain checkpoint.

    Args:
        model: a model built from keras_tfm layers (e.g. from
            `keras_tfm.checkpoints.load`).
        rank: the rank of the update, a positive int.
        targets: names of the layers to adapt, e.g. `("query_dense",
            "value_dense")` (LoRA's original choice). Defaults to every
            Dense and token-table layer.

    Returns:
        The list of adapted layers.

    Example:

    >>> from keras_tfm.models import decoder_lm
    >>> model = decoder_lm(50, 16, num_layers=1, embedding_dim=16,
    ...                    num_heads=2, intermediate_dim=32)
    >>> adapted = enable_lora(model, rank=2,
    ...                       targets=("query_dense", "value_dense"))
    >>> len(adapted), len(model.trainable_weights)
    (2, 4)
    """
    check_positive_int("rank", rank)
    if isinstance(targets, str):
        targets = (targets,)
    candidates = lora_layers(model)
    if targets is not None:
        names = {layer.name for layer in candidates}
        unknown = sorted(set(targets) - names)
        if unknown:
            raise ValueError(
                "`targets` must name Dense or embedding layers of the model "
                f"(for example {sorted(names)[:4]}). Received: "
                f"targets={tuple(targets)}, unknown {unknown}"
            )
        candidates = [layer for layer in candidates if layer.name in targets]
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in candidates:
        layer.trainable = True
        layer.enable_lora(rank)
        for weight in layer.trainable_weights:
            if "lora" not in weight.path:
                weight.trainable = False
    return candidates
