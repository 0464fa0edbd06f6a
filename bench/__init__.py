"""Reproducible benchmark of the captioning engine against the original design: ``python -m bench --help``.

__main__.py    the one entry point: runs every part below in its own process and writes bench/results/
baseline.py    the original loop, faithfully (TensorFlow/Keras, predict per request and per word)
original.py    the original artefacts served by our engine vs the original loop, same run: original.json
engine.py      our engine timed (single, batched, micro-batched, parts), quantised encoders, dev BLEU-4
timing.py      the shared helpers: percentiles, process memory, BLAS thread limits, a step timer
http.py        the service over HTTP on loopback: cold start, memory, latency and throughput by concurrency
machine.py     the machine's fp32 matmul peak and an ONNX encoder's FLOPs
report.py      the targets (one table), the rows measured against them, the JSON file, the chart, the printout
"""
