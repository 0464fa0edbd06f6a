"""The Keras 3 LSTM caption decoder: pure (no file I/O, no search).

Design: the classic merge captioner with the image also initialising the LSTM.
    v   = relu(W_img · dropout(features))                  image projection        [B, E]
    h0  = tanh(W_h · v), c0 = tanh(W_c · v)                 initial LSTM state      [B, H]
    e_t = dropout(Embedding(token_t))                       caption prefix          [B, T, E]
    s_t = LSTM(e_t; h0, c0)                                                         [B, T, H]
    z_t = relu(W_s · dropout(s_t) + v)                      merge of text and image [B, T, E]
    logits_t = W_out · dropout(z_t)                                                 [B, T, V]
Calling the model runs teacher forcing over whole sequences; incremental inference is ``model.step.NumpyDecoder``,
which implements the same equations on the same weights (tests check they agree).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.model.config import DecoderConfig


def build_decoder(config: DecoderConfig) -> keras.Model:
    """Functional Keras model for ``config``: (features [B, F], tokens [B, T]) -> logits [B, T, V].

    Functional (not subclassed) so that ``caption_model.keras`` loads with plain ``keras.saving.load_model``
    and every weight is stored under its layer's name, which ``NumpyDecoder`` reads without TensorFlow.
    """
    c = config
    features = keras.Input((c.feature_size,), dtype="float32", name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    v = layers.Dense(c.embed_dim, activation="relu", name="image_proj")(
        layers.Dropout(c.feature_dropout)(features)
    )
    h0 = layers.Dense(c.hidden_dim, activation="tanh", name="init_h")(v)
    c0 = layers.Dense(c.hidden_dim, activation="tanh", name="init_c")(v)
    e = layers.Dropout(c.dropout)(layers.Embedding(c.vocab_size, c.embed_dim, name="embedding")(tokens))
    s = layers.LSTM(c.hidden_dim, return_sequences=True, name="lstm")(e, initial_state=[h0, c0])
    s = layers.Dense(c.embed_dim, name="lstm_proj")(layers.Dropout(c.dropout)(s))
    z = layers.ReLU(name="merge")(s + ops.expand_dims(v, 1))
    logits = layers.Dense(c.vocab_size, name="logits")(layers.Dropout(c.dropout)(z))
    return keras.Model([features, tokens], logits, name="caption_decoder")
