"""Hugging Face model directories in and out.

`load(path)` reads a `transformers` model directory (`config.json` and
`model.safetensors`, or the shards listed in `model.safetensors.index.json`)
with the `safetensors` package alone, builds the model from keras_tfm layers
with the options its config names, and copies every weight through the
model type's name table. `save(model, path)` writes the same layout back,
which `transformers` loads.

- gpt2, llama, mistral, qwen2, qwen3: a `CausalLM` taking `token_ids`
  and `padding_mask`;
- bart: a `Seq2SeqLM` taking `encoder_`/`decoder_` `token_ids` and
  `padding_mask`;
- bert: an `EncoderModel` taking `token_ids`, `padding_mask` and
  `segment_ids`.

Padding is explicit in every one of them: in these vocabularies id 0 is a
real token, so no id means padding; the padding mask does.
"""

import json
import os
import re

import keras
import numpy as np
from keras import ops

from keras_tfm.checkpoints._table import resolve
from keras_tfm.checkpoints.bart import BART
from keras_tfm.checkpoints.bert import BERT
from keras_tfm.checkpoints.gpt2 import GPT2
from keras_tfm.checkpoints.llama import MODEL_TYPES as LLAMA_FAMILY

MODEL_TYPES = {"gpt2": GPT2, "bert": BERT, "bart": BART, **LLAMA_FAMILY}

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

__all__ = ["MODEL_TYPES", "from_config", "load", "save"]


def _read_config(path):
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise ValueError(
            "`path` must be a Hugging Face model directory with a "
            f"{CONFIG}. Received: path={path!r}"
        )
    with open(file) as f:
        return json.load(f)


def _model_type(config):
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"`model_type` {model_type!r} is not supported; keras_tfm loads "
            f"{', '.join(sorted(MODEL_TYPES))}. Received: "
            f"model_type={model_type!r}"
        )
    return MODEL_TYPES[model_type]


def _weight_files(path):
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(weight_map.values()))
    if os.path.isfile(os.path.join(path, WEIGHTS)):
        return [WEIGHTS]
    raise ValueError(
        f"`path` has no {WEIGHTS} or {INDEX} (keras_tfm reads safetensors "
        f"only). Received: path={path!r}"
    )


def _read_tensors(path):
    """Every tensor of the checkpoint, by name, as NumPy arrays."""
    from safetensors import safe_open

    tensors = {}
    for file in _weight_files(path):
        with safe_open(os.path.join(path, file), framework="numpy") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def _canonical_names(tensors, model_type, table):
    """Rename tensors saved under another prefix (a base model's, `""`,
    or a task model's) to the prefix the table uses."""
    canonical = model_type.prefixes[0]
    anchor = table[0].checkpoint[len(canonical) :]
    for prefix in model_type.prefixes:
        if prefix + anchor not in tensors:
            continue
        if prefix == canonical:
            return tensors
        return {
            (
                canonical + name[len(prefix) :]
                if name.startswith(prefix)
                else name
            ): value
            for name, value in tensors.items()
        }
    return tensors


def _ignored(name, model_type):
    return any(re.fullmatch(pattern, name) for pattern in model_type.ignored)


def _assign(variable, array, name, path):
    if tuple(variable.shape) != tuple(array.shape):
        raise ValueError(
            f"Checkpoint weight {name!r} does not fit {path}: expected shape "
            f"{tuple(variable.shape)} from config.json, received "
            f"{tuple(array.shape)}"
        )
    variable.assign(ops.cast(np.asarray(array, "float32"), variable.dtype))


def load(path, dtype=None):
    """Build a keras_tfm model from a Hugging Face model directory.

    Args:
        path: a directory holding `config.json` and `model.safetensors`
            (or shards listed in `model.safetensors.index.json`), as
            `save_pretrained` writes it.
        dtype: the models' dtype policy, e.g. `"bfloat16"` or
            `"mixed_bfloat16"`. Defaults to Keras's float type.

    Returns:
        A `CausalLM` (gpt2, llama, mistral, qwen2, qwen3), a `Seq2SeqLM`
        (bart) or an `EncoderModel` (bert), built from keras_tfm layers,
        holding the checkpoint's weights, with explicit padding
        (`padding_mask=True`) and the config's `pad_token_id` as `pad_id`.
        Its `checkpoint_config` attribute is the config, which `save`
        writes back.

    Raises:
        ValueError: for an unknown `model_type`, a config option keras_tfm
            does not support (naming the key and its value), or a weight
            that is missing, left unused or of the wrong shape (naming the
            weight).

    Example (a directory written by `save`; `save_pretrained` writes the
    same layout):

    >>> import os, tempfile
    >>> import numpy as np
    >>> config = {"model_type": "llama", "vocab_size": 50,
    ...     "hidden_size": 16, "intermediate_size": 32,
    ...     "num_hidden_layers": 1, "num_attention_heads": 2,
    ...     "hidden_act": "silu"}
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-llama")
    >>> save(from_config(config), path)
    >>> model = load(path)
    >>> ids = np.array([[5, 0, 7]])  # id 0 is a token, not padding
    >>> logits = model({"token_ids": ids, "padding_mask": np.ones((1, 3))})
    >>> tuple(logits.shape), model.pad_id
    ((1, 3, 50), None)
    """
    config = _read_config(path)
    model_type = _model_type(config)
    if model_type.checks is not None:
        model_type.checks(config)
    tensors = _read_tensors(path)
    model = model_type.build(config, _strip_names(tensors, model_type), dtype)
    table = model_type.table(config, model)
    tensors = _canonical_names(tensors, model_type, table)

    assigned = set()
    for row in table:
        if row.checkpoint not in tensors:
            if row.optional:
                continue
            raise ValueError(
                f"The checkpoint at {path!r} has no weight "
                f"{row.checkpoint!r}, which its config needs (model_type "
                f"{config['model_type']!r})"
            )
        arrays = row.transform.load(tensors.pop(row.checkpoint))
        for target, array in zip(row.targets, arrays, strict=True):
            variable = resolve(model, target)
            _assign(variable, array, row.checkpoint, target)
            assigned.add(id(variable))
    unused = sorted(name for name in tensors if not _ignored(name, model_type))
    if unused:
        raise ValueError(
            f"The checkpoint at {path!r} has weights that the "
            f"{config['model_type']!r} table does not use: "
            f"{', '.join(unused)}. keras_tfm loads the base model and the "
            "language-model head only."
        )
    missed = [v.path for v in model.weights if id(v) not in assigned]
    if missed:
        raise ValueError(
            "These variables were left without checkpoint weights: "
            f"{', '.join(missed)}"
        )
    model.checkpoint_config = dict(config)
    return model


def from_config(config, dtype=None):
    """Build the model `load` would build for `config`, with fresh weights.

    For a model of a checkpoint's shape without its weights: to train from
    scratch, to benchmark, or to write a checkpoint with `save`.

    Args:
        config: a `transformers` config dict (what `config.json` holds).
        dtype: the models' dtype policy. Defaults to Keras's float type.

    Returns:
        The model, with `checkpoint_config` set to `config`.

    Example:

    >>> model = from_config({"model_type": "gpt2", "vocab_size": 50,
    ...     "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2,
    ...     "activation_function": "gelu_new"})
    >>> type(model).__name__, model.count_params()
    ('CausalLM', 4368)
    """
    model_type = _model_type(config)
    if model_type.checks is not None:
        model_type.checks(config)
    model = model_type.build(config, None, dtype)
    model.checkpoint_config = dict(config)
    return model


def _strip_names(tensors, model_type):
    """Tensor names with any of the model type's prefixes removed."""
    names = set()
    for name in tensors:
        for prefix in model_type.prefixes:
            if prefix and name.startswith(prefix):
                name = name[len(prefix) :]
                break
        names.add(name)
    return names


def save(model, path, config=None):
    """Write `model` as a Hugging Face model directory.

    The tensors take the names and layouts of the model type's table (the
    same as `load` reads), merged with LoRA updates where LoRA is enabled
    (Keras's `kernel` and `embeddings` are the merged values), in the
    model's variable dtype; `config.json` is `config`, with
    `architectures` set to the `transformers` class that reads it.

    Args:
        model: a model from `load` (or built like one).
        path: the directory to write (created if needed).
        config: the `transformers` config dict. Defaults to the model's
            `checkpoint_config` (set by `load` and `from_config`; a model
            reloaded from a `.keras` file has none: pass the config).

    Example:

    >>> import os, tempfile
    >>> model = from_config({"model_type": "gpt2", "vocab_size": 50,
    ...     "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2,
    ...     "activation_function": "gelu_new"})
    >>> path = tempfile.mkdtemp()
    >>> save(model, path)
    >>> sorted(os.listdir(path))
    ['config.json', 'model.safetensors']
    """
    from safetensors.numpy import save_file

    if config is None:
        config = getattr(model, "checkpoint_config", None)
    if not isinstance(config, dict):
        raise ValueError(
            "`save` writes a model's `transformers` config: pass `config` "
            "or a model from `keras_tfm.checkpoints.load`. Received: "
            f"config={config!r}"
        )
    config = json.loads(json.dumps(dict(config)))
    model_type = _model_type(config)
    tensors = {}
    for row in model_type.table(config, model):
        arrays = [
            keras.ops.convert_to_numpy(resolve(model, target))
            for target in row.targets
        ]
        tensors[row.checkpoint] = np.ascontiguousarray(
            row.transform.save(arrays)
        )
    config["architectures"] = [model_type.architecture]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(path, WEIGHTS), metadata={"format": "pt"})
