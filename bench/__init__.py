"""Reproducible benchmark of the captioning engine against the original design: ``python -m bench --help``.

__main__.py    the one entry point: runs every part below in its own process and writes bench/results/
baseline.py    the original loop, faithfully (TensorFlow/Keras, predict per request and per word)
merge_step.py  a NumPy incremental step for the original merge decoder, so our engine runs the same weights
engine.py      our engine timed (single, batched, micro-batched, parts), quantised encoders, dev BLEU-4
http.py        the service over HTTP on loopback: cold start, memory, latency and throughput by concurrency
machine.py     the machine's fp32 matmul peak and an ONNX encoder's FLOPs
report.py      ratios against the targets, the JSON file, the PNG chart and the printed table
"""
