"""captioner: image captioning with an ONNX CNN encoder and an LSTM decoder."""

__version__ = "0.1.0"
