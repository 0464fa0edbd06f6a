"""captioner: image captioning with an ONNX CNN encoder and an LSTM decoder.

``captioner.load(path)`` returns a ready ``Captioner`` for a bundle folder or the original design's artefacts.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``import captioner.data`` (training, tests) must not pull in onnxruntime and Pillow.
    if name == "load":
        from captioner.loading import load

        return load
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
