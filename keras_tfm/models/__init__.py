"""Generation models that own their cached step, and the builders.

`CausalLM` and `Seq2SeqLM` wire any keras_tfm embedding, blocks, final
norm and head into a functional `keras.Model` and decode one step at a
time with a key/value cache (`init_cache`, `call_with_cache`, and
`encode` for the encoder-decoder). The builders `decoder_lm` and
`seq2seq_transformer` return them; `encoder_classifier` returns a plain
functional model.
"""

from keras_tfm.models.builders import (
    decoder_lm,
    encoder_classifier,
    seq2seq_transformer,
)
from keras_tfm.models.causal_lm import CausalLM
from keras_tfm.models.encoder_model import EncoderModel
from keras_tfm.models.lora import enable_lora
from keras_tfm.models.seq2seq_lm import Seq2SeqLM

__all__ = [
    "CausalLM",
    "EncoderModel",
    "Seq2SeqLM",
    "decoder_lm",
    "enable_lora",
    "encoder_classifier",
    "seq2seq_transformer",
]
