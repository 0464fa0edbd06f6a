"""Turn the raw measurements into ratios against the targets, a JSON file, a PNG chart and a printed table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# OpenBLAS on all cores (as shipped) / one thread (threadpoolctl) / one thread and onnxruntime not spinning.
CONFIGS = ("blas_default", "blas_1", "blas_1_ort_nospin")


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


@dataclass(frozen=True)
class Target:
    """One goal of the project: a measured figure must be >= (or <=) ``target`` ``unit``."""

    name: str  # may hold {encoder} / {what}, filled per row
    target: float
    higher_is_better: bool
    unit: str


# Every target, once. A row of the summary is one of these with a measured value and a note (which
# configuration, which server): see row().
TARGETS = {
    "incv3_throughput": Target(
        "InceptionV3 end-to-end throughput vs original loop (batched, greedy like the original)",
        20,
        True,
        "x",
    ),
    "incv3_latency": Target("InceptionV3 single-image p50 latency vs original loop (greedy)", 10, True, "x"),
    "decoder_share": Target(
        "{encoder} decoding share of end-to-end time (beam 3, batch 32)", 0.10, False, "fraction"
    ),
    "http_vs_engine": Target(
        "HTTP throughput at concurrency 8 vs the bare engine's batched throughput (beam 3)",
        0.8,
        True,
        "fraction",
    ),
    "serving_rss": Target("serving the bundle: peak RSS", 600, False, "MB"),
    "serving_cold_start": Target("serving the bundle: cold start to ready", 3.0, False, "s"),
    "serving_no_tensorflow": Target("serving the bundle: TensorFlow not loaded", 0.0, False, ""),
    # A loss bound: a quantised variant may not cost more than 0.005 BLEU-4; a gain (negative loss) passes.
    "quantized_bleu": Target("{what}: dev BLEU-4 loss vs fp32 (negative: a gain)", 0.005, False, "BLEU"),
}


def row(key: str, value: float | None, note: str = "", **fill: str) -> dict:
    """The summary row of target ``key``: its value, whether it is met (None: not measured) and a note."""
    t = TARGETS[key]
    met = None if value is None else (value >= t.target if t.higher_is_better else value <= t.target)
    return {
        "name": t.name.format(**fill),
        "value": value,
        "target": t.target,
        "op": ">=" if t.higher_is_better else "<=",
        "unit": t.unit,
        "met": met,
        "note": note,
    }


def encoder_efficiency(flops: dict, encoder_only: dict, peak_gflops: float) -> dict:
    """Achieved GFLOP/s of the encoder and its fraction of the machine's measured matmul peak."""
    out = {"gflops_per_image": flops["gflops"], "peak_gflops": peak_gflops}
    for label, ms in (
        ("b1_best", encoder_only["b1_ms_best"]),
        ("b1_p50", encoder_only["b1_ms"]["p50"]),
        ("b8", encoder_only["b8_ms_per_image"]),
    ):
        achieved = flops["gflops"] / (ms / 1000)
        out[label] = {"ms_per_image": ms, "gflops": achieved, "fraction_of_peak": achieved / peak_gflops}
    return out


def summarize(raw: dict) -> dict:
    """The figures that matter from the raw measurements, and the rows of the targets they are held to."""
    # The other jobs on the machine move the peak too: the best of the measurements at start, middle and end.
    peaks = [
        _get(raw, "machine", k, "gflops") for k in ("matmul_peak", "matmul_peak_middle", "matmul_peak_end")
    ]
    peak = max((p for p in peaks if p), default=None)
    summary: dict = {"targets": []}
    summary["machine"] = {
        "peak_gflops": peak,
        "peaks_measured": peaks,
        "load_avg_start": _get(raw, "machine", "load_avg_start"),
        "load_avg_end": _get(raw, "machine", "load_avg_end"),
    }
    for name, part in (("inception_v3", _inception), ("bundle", _bundle), ("quantization", _quantization)):
        section, rows = part(raw, peak)
        if section is not None:
            summary[name] = section
            summary["targets"] += rows
    return summary


def _configs(eng: dict) -> list[tuple[str, dict]]:
    """The engine's sections by configuration: each BLAS setting, then blas_1 with each encoder variant."""
    configs = [(cfg, eng.get(cfg)) for cfg in CONFIGS]
    configs += [(f"blas_1 + {k} encoder", v) for k, v in (eng.get("variants") or {}).items()]
    return [(cfg, sec) for cfg, sec in configs if sec]


def _best(sec: dict, keys: tuple[str, ...]) -> float:
    return max(sec[k]["throughput_img_s"] for k in keys if k in sec)


def _inception(raw: dict, peak: float | None) -> tuple[dict | None, list[dict]]:
    """The original loop against our engine on the same InceptionV3 and merge decoder weights."""
    inc = raw.get("inception_v3")
    if not inc or "baseline" not in inc:
        return None, []
    base, eng = inc["baseline"], inc["engine"]
    section: dict = {
        "baseline": {
            "latency_p50_ms": base["latency_ms"]["p50"],
            "throughput_img_s": base["throughput_img_s"],
            "cold_start_s": base["cold_start_s"],
            "peak_rss_mb": base["peak_rss_mb"],
            "encoder_ms": base["encoder_ms_mean"],
            "decoder_ms": base["decoder_ms_mean"],
        }
    }
    rows = []
    base_tp, base_p50 = base["throughput_img_s"], base["latency_ms"]["p50"]
    for cfg, sec in _configs(eng):
        ratios = {
            "throughput_batched_greedy_x": _best(sec, ("batch8_greedy", "batch32_greedy")) / base_tp,
            "throughput_batched_beam3_x": _best(sec, ("batch8_beam3", "batch32_beam3")) / base_tp,
            "throughput_single_greedy_x": sec["single_greedy"]["throughput_img_s"] / base_tp,
            "latency_p50_single_greedy_x": base_p50 / sec["single_greedy"]["latency_ms"]["p50"],
            "latency_p50_single_beam3_x": base_p50 / sec["single_beam3"]["latency_ms"]["p50"],
            "decoder_share_batch32_beam3": sec["batch32_beam3"]["decoder_share"],
            "decoder_share_single_beam3": sec["single_beam3"]["parts_ms_mean"]["decoder"]
            / sec["single_beam3"]["latency_ms"]["mean"],
        }
        section[cfg] = ratios
        rows += [
            row("incv3_throughput", ratios["throughput_batched_greedy_x"], cfg),
            row("incv3_latency", ratios["latency_p50_single_greedy_x"], cfg),
            row("decoder_share", ratios["decoder_share_batch32_beam3"], cfg, encoder="InceptionV3"),
        ]
    if peak and "flops" in inc:
        section["encoder"] = encoder_efficiency(inc["flops"], eng["encoder_only"]["fp32"], peak)
        # No fp32 engine can beat the encoder's FLOPs at the machine's peak: the best ratio this caption
        # length allows. And the original loop's cost at 20 words, from its measured per-word cost.
        floor_ms = inc["flops"]["gflops"] / peak * 1000
        base20 = base["encoder_ms_mean"] + 20 * base["decoder_ms_per_word"]
        section["bounds"] = {
            "fp32_encoder_floor_ms": floor_ms,
            "max_throughput_ratio_fp32": (1000 / base_tp) / floor_ms,
            "caption_words": base.get("max_words") or 12,
            "baseline_ms_at_20_words_projected": base20,
            "max_throughput_ratio_fp32_at_20_words": base20 / floor_ms,
        }
    if "same_weights" in eng:
        section["same_weights"] = eng["same_weights"]
    return section, rows


def _bundle(raw: dict, peak: float | None) -> tuple[dict | None, list[dict]]:
    """Our engine on the bundle (each configuration, each decoder backend) and the service over HTTP."""
    bun = raw.get("bundle")
    if not bun:
        return None, []
    eng = bun["engine"]
    encoder = eng["encoder"]
    section: dict = {
        "encoder": encoder,
        "engine_cold_start_s": eng["cold_start_s"],
        "engine_rss_at_ready_mb": eng.get("rss_ready_mb"),
        "engine_peak_rss_mb": eng["peak_rss_mb"],
    }
    rows = []
    for cfg, sec in _configs(eng):
        section[cfg] = {
            "single_beam3_p50_ms": sec["single_beam3"]["latency_ms"]["p50"],
            "single_greedy_p50_ms": sec["single_greedy"]["latency_ms"]["p50"],
            "batched_beam3_img_s": _best(sec, ("batch8_beam3", "batch32_beam3")),
            "micro_batched_c8_img_s": _get(sec, "micro_batched_c8_beam3", "throughput_img_s"),
            "micro_batched_c8_mean_batch": _get(sec, "micro_batched_c8_beam3", "mean_batch_size"),
            "decoder_share_batch32_beam3": sec["batch32_beam3"]["decoder_share"],
            "decoder_ms_batch32_beam3": sec["batch32_beam3"]["decoder_ms_per_image"],
        }
        rows.append(row("decoder_share", sec["batch32_beam3"]["decoder_share"], cfg, encoder=encoder))
    spin = bun.get("engine_spinning")
    ours = _get(eng, "blas_1", "batch32_beam3") or _get(eng, "blas_default", "batch32_beam3")
    if spin and ours:
        spinning = spin["batch32_beam3"]
        section["ort_spinning"] = {
            "spinning_on_b32_beam3_img_s": spinning["throughput_img_s"],
            "spinning_on_decoder_share": spinning["decoder_share"],
            "stopped_b32_beam3_img_s": ours["throughput_img_s"],
            "stopped_decoder_share": ours["decoder_share"],
            "stopped_vs_spinning_on_x": ours["throughput_img_s"] / spinning["throughput_img_s"],
        }
    backends = eng.get("decoder_backends") or {}
    if backends:
        section["decoder_backends"] = {}
        numpy_ms = _get(backends, "numpy", "decoder_only_b32_beam3", "ms_per_image")
        for name, sec in backends.items():
            search_ms = sec["decoder_only_b32_beam3"]["ms_per_image"]
            section["decoder_backends"][name] = {
                "search_ms_per_image_b32": search_ms,
                "step_ms_per_image_b32": sec["decoder_only_b32_beam3"]["step_ms_per_image"],
                "end_to_end_ms_per_image_b32": sec["batch32_beam3"]["ms_per_image"],
                "decoder_share_batch32_beam3": sec["batch32_beam3"]["decoder_share"],
                "single_beam3_p50_ms": _get(sec, "single_beam3", "latency_ms", "p50"),
                "same_captions_as_numpy": sec.get("same_captions_as_numpy"),
            }
            if numpy_ms:
                section["decoder_backends"][name]["search_speedup_vs_numpy_x"] = numpy_ms / search_ms
            default = " (the default)" if name == eng.get("decoder_backend") else ""
            note = f"decoder {name}{default}, blas_1"
            rows.append(row("decoder_share", sec["batch32_beam3"]["decoder_share"], note, encoder=encoder))
    if peak and "flops" in bun:
        section["encoder_efficiency"] = encoder_efficiency(bun["flops"], eng["encoder_only"]["fp32"], peak)
    for name, http in (bun.get("http") or {}).items():
        cfg = http.get("config", "blas_default")
        ref = http.get("engine_reference")
        if ref:  # measured just before this server ran
            engine_best = _best(ref, ("batch8_beam3", "batch32_beam3"))
        else:
            engine_best = _get(section, cfg, "batched_beam3_img_s")
        c8 = _get(http, "levels", "8", "throughput_rps")
        process = http["process"]
        section[f"http_{name}"] = {
            "levels": {
                c: {"rps": lv["throughput_rps"], **lv["latency_ms"], "statuses": lv["statuses"]}
                for c, lv in http["levels"].items()
            },
            "cold_start_s": http["cold_start_s"],
            "engine_reference_batched_beam3_img_s": engine_best,
            "peak_rss_mb": process["peak_rss_mb"],
            "libraries": process["libraries"],
        }
        if c8 is not None and engine_best:
            rows.append(row("http_vs_engine", c8 / engine_best, f"server {name}, engine {cfg}"))
        rows += [
            row("serving_rss", process["peak_rss_mb"], name),
            row("serving_cold_start", http["cold_start_s"], name),
            row("serving_no_tensorflow", 1.0 if process["libraries"].get("tensorflow") else 0.0, name),
        ]
    return section, rows


def _quantization(raw: dict, peak: float | None) -> tuple[dict | None, list[dict]]:
    """Dev BLEU-4 of each encoder and decoder-step variant against fp32's."""
    quality = raw.get("quality")
    if not quality:
        return None, []
    variants = quality["variants"]
    section = {
        k: {m: v.get(m) for m in ("BLEU-4", "BLEU-4_delta", "CIDEr", "same_caption_fraction")}
        for k, v in variants.items()
    }
    rows = []
    for k, v in variants.items():
        if k != "fp32" and v.get("BLEU-4_delta") is not None:
            what = f"{k} encoder" if v.get("decoder", "onnx") == "onnx" else f"{v['decoder']} decoder step"
            note = f"{quality['n_images']} dev images"
            rows.append(row("quantized_bleu", -v["BLEU-4_delta"], note, what=what))
    return section, rows


def write_json(raw: dict, summary: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"summary": summary, "raw": raw}, indent=1, default=float))
    tmp.replace(path)
    return path


def print_table(summary: dict) -> None:
    print("\n== targets (ratios ours/baseline in the same run) ==")
    names = list(dict.fromkeys(t["name"] for t in summary["targets"]))
    for name in names:
        rows = [t for t in summary["targets"] if t["name"] == name]
        print(f"{name} (target {rows[0]['op']} {rows[0]['target']} {rows[0]['unit']}):")
        for t in rows:
            mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
            value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
            print(f"    [{mark}] {value:>8}  {t['note']}")
    for section in ("machine", "inception_v3", "bundle"):
        if section in summary:
            print(f"\n== {section} ==")
            for k, v in summary[section].items():
                print(f"  {k}: {json.dumps(v, default=lambda x: round(x, 3))[:400]}")
    if "quantization" in summary:
        print("\n== quantization (dev) ==")
        for k, v in summary["quantization"].items():
            print(f"  {k}: {v}")


def chart(raw: dict, summary: dict, path: Path) -> Path | None:
    """A 2x2 PNG: throughput, single-image latency, HTTP latency by concurrency, per-image time breakdown."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_tp, ax_lat), (ax_http, ax_parts) = axes

    bars_tp, bars_lat = {}, {}
    inc = raw.get("inception_v3")
    if inc and "baseline" in inc:
        base, eng = inc["baseline"], inc["engine"]
        bars_tp["IncV3 original loop"] = base["throughput_img_s"]
        bars_lat["IncV3 original loop"] = base["latency_ms"]["p50"]
        for cfg, tag in (("blas_default", ""), ("blas_1", " blas1")):
            if cfg in eng:
                bars_tp[f"IncV3 ours b32 greedy{tag}"] = eng[cfg]["batch32_greedy"]["throughput_img_s"]
                bars_tp[f"IncV3 ours b32 beam3{tag}"] = eng[cfg]["batch32_beam3"]["throughput_img_s"]
                bars_lat[f"IncV3 ours greedy{tag}"] = eng[cfg]["single_greedy"]["latency_ms"]["p50"]
                bars_lat[f"IncV3 ours beam3{tag}"] = eng[cfg]["single_beam3"]["latency_ms"]["p50"]
    bun = raw.get("bundle")
    if bun:
        eng = bun["engine"]
        name = eng["encoder"]
        for cfg, tag in (("blas_default", ""), ("blas_1", " blas1")):
            if cfg in eng:
                bars_tp[f"{name} b32 beam3{tag}"] = eng[cfg]["batch32_beam3"]["throughput_img_s"]
                bars_lat[f"{name} beam3{tag}"] = eng[cfg]["single_beam3"]["latency_ms"]["p50"]
        for label, http in (bun.get("http") or {}).items():
            if "8" in http["levels"]:
                bars_tp[f"{name} HTTP c8 {label}"] = http["levels"]["8"]["throughput_rps"]
            cs = sorted(http["levels"], key=int)
            for q, style in (("p50", "-o"), ("p95", "--s"), ("p99", ":^")):
                ax_http.plot(
                    [int(c) for c in cs],
                    [http["levels"][c]["latency_ms"][q] for c in cs],
                    style,
                    label=f"{label} {q}",
                )
    _barh(ax_tp, bars_tp, "images / s (log)", "Throughput", log=True)
    _barh(ax_lat, bars_lat, "ms (log)", "Single-image p50 latency, from the JPEG file", log=True)
    ax_http.set_xscale("log", base=2)
    ax_http.set_xlabel("concurrent clients")
    ax_http.set_ylabel("ms")
    ax_http.set_title("Service over HTTP (loopback): latency")
    if ax_http.lines:
        ax_http.legend(fontsize=7)

    def b32(section: str):  # one BLAS thread where measured, else as shipped
        eng = _get(raw, section, "engine", default={})
        return _get(eng, "blas_1", "batch32_beam3") or _get(eng, "blas_default", "batch32_beam3")

    parts = {}
    for label, sec in (
        ("IncV3 ours (b32)", b32("inception_v3")),
        (f"{_get(raw, 'bundle', 'engine', 'encoder', default='bundle')} ours (b32)", b32("bundle")),
        ("IncV3 original", _get(raw, "inception_v3", "baseline")),
    ):
        if not sec:
            continue
        if "encoder_ms_mean" in sec:
            parts[label] = (sec["encoder_ms_mean"], sec["decoder_ms_mean"])
        else:
            parts[label] = (sec["encoder_ms_per_image"], sec["decoder_ms_per_image"])
    if parts:
        labels = list(parts)
        enc = [parts[k][0] for k in labels]
        dec = [parts[k][1] for k in labels]
        ax_parts.barh(labels, enc, label="encoder")
        ax_parts.barh(labels, dec, left=enc, label="decoder (beam 3; original: greedy)")
        ax_parts.set_xscale("log")
        ax_parts.set_xlim(left=1)  # a log axis cannot start at 0, where the encoder bars start
        ax_parts.legend(fontsize=7)
    ax_parts.set_title("Per image: encoder + decoder, ms (ours: 1 BLAS thread)")
    load = _get(raw, "machine", "load_avg_start")
    fig.suptitle(
        f"captioner bench ({raw.get('mode')}) on {_get(raw, 'machine', 'cpu', default='?')}, "
        f"{_get(raw, 'machine', 'cores', default='?')} cores; load average at start {load}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _barh(ax, bars: dict, xlabel: str, title: str, log: bool = False) -> None:
    if bars:
        labels = list(bars)
        ax.barh(
            labels, [bars[k] for k in labels], color=["#b44" if "original" in k else "#48b" for k in labels]
        )
        for i, k in enumerate(labels):
            ax.text(bars[k], i, f" {bars[k]:.3g}", va="center", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        if log:
            ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
