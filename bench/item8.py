"""Issue 11 item 8's two ratios, measured in one run, interleaved against the bare engine:

    python -m bench.item8 [--bundle models/default] [--photos 16] [--rounds 16] [--c8-requests 256]
                          [--b32-images 256] [--src NAME=DIR ...] [--env NAME:KEY=VALUE ...]
                          [--out bench/results/perf_item8.json]

Each round, interleaved on the same photos (the first Flickr8k dev photos), beam 3, max_length 30:
  engine_single   the bare engine in this process, one photo at a time from the file: p50 ms
  http_c1         the service over HTTP, one request at a time (cache and rate limit off): p50 ms
  engine_b32      the bare engine, batches of 32 from the files: images/s
  http_c8         the service over HTTP, 8 closed-loop clients: requests/s
and the ratios http_c1 p50 / engine_single p50 (target <= 1.2) and http_c8 / engine_b32 (target >= 0.9); the
summary gives each ratio's median and range over the rounds and how many rounds meet its target. Also the paired
c=1 ratio: the median over the photos of each photo's HTTP time / its engine time (the same photo, moments
apart). The single-image times are bimodal (the ~40% of photos that also run the constrained search take ~1.4x
longer), and with 16 photos a p50 sits near the gap between the two groups, so a little noise moves the p50s by
several ms (per round 1.02-1.37 for the same code); the paired ratio is not moved by that. With
several ``--src NAME=DIR`` the service runs from each source tree in turn within every round (e.g. the code
before a change, checked out with ``git worktree add``), so before and after share the machine's noise;
``--env NAME:KEY=VALUE`` sets a setting for the service NAME (two names for one tree compare two settings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.__main__ import select_photos
from bench.engine import batched, load_captioner, single_image
from bench.http import REPO, Server, load

PARAMS = {"strategy": "beam", "beam_size": 3, "max_length": 30}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _one_request(conn, path: str, body: bytes, headers: dict) -> float:
    """One POST on a kept-alive connection: its latency in ms (the answer must be 200)."""
    t = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"the service answered {response.status}")
    return (time.perf_counter() - t) * 1000


def _round(r: int, captioner, options, photos, data, servers: dict, args) -> dict:
    """One round: photo by photo, the engine and each service in a rotating order (c=1); then the engine's
    batch-32 block and each service's c=8 block, also rotating; per-round p50s, throughputs and ratios."""
    import http.client
    from urllib.parse import urlencode, urlsplit

    from bench.http import multipart_body, unique_jpeg

    boundary = "item8-boundary"
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    path = "/generate-caption/?" + urlencode(PARAMS)
    conns = {n: http.client.HTTPConnection(urlsplit(s.url).hostname, urlsplit(s.url).port, timeout=60)
             for n, s in servers.items()}  # fmt: skip
    times: dict[str, list[float]] = {n: [] for n in ["engine", *servers]}
    order = ["engine", *servers]
    for i, (p, (name, jpeg)) in enumerate(zip(photos, data, strict=True)):
        for who in order[i % len(order) :] + order[: i % len(order)]:
            if who == "engine":
                times["engine"].append(single_image(captioner, [p], options, 1)["latency_ms"]["p50"])
            else:
                body = multipart_body(name, unique_jpeg(jpeg, 1000 * r + i), boundary)
                times[who].append(_one_request(conns[who], path, body, headers))
    for c in conns.values():
        c.close()
    row: dict = {"round": r, "engine_single_p50_ms": statistics.median(times["engine"])}
    for who in order[r % len(order) :] + order[: r % len(order)]:
        if who == "engine":
            row["engine_b32_img_s"] = batched(captioner, photos, options, 32, args.b32_images)[
                "throughput_img_s"
            ]
        else:
            row[f"{who}_http_c8"] = load(servers[who].url, data, 8, args.c8_requests, PARAMS)
    for name in servers:
        row[f"{name}_http_c1_p50_ms"] = statistics.median(times[name])
        row[f"{name}_c1_ratio"] = row[f"{name}_http_c1_p50_ms"] / row["engine_single_p50_ms"]
        row[f"{name}_c1_paired_ratio"] = statistics.median(
            h / e for h, e in zip(times[name], times["engine"], strict=True)
        )
        row[f"{name}_c8_ratio"] = row[f"{name}_http_c8"]["throughput_rps"] / row["engine_b32_img_s"]
    print(json.dumps({k: round(v, 3) for k, v in row.items() if not isinstance(v, dict)}), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.item8")
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--photos", type=int, default=16)
    # Enough to judge a ratio on a 2-core VM whose speed moves +-15% within an hour (~3 minutes): per round, the
    # c=8 block and the batch-32 block each last ~3-4 s, and the verdict counts the rounds.
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--c8-requests", type=int, default=256)
    parser.add_argument("--b32-images", type=int, default=256)
    parser.add_argument("--src", action="append", default=[], help="NAME=DIR: a source tree to serve from")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME:KEY=VALUE: a setting for service NAME"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "perf_item8.json")
    args = parser.parse_args(argv)
    sources = dict(s.split("=", 1) for s in args.src) or {"current": str(REPO)}
    envs: dict[str, dict[str, str]] = {
        name: {"PYTHONPATH": str(Path(src) / "src")} for name, src in sources.items()
    }
    for item in args.env:
        name, _, setting = item.partition(":")
        key, _, value = setting.partition("=")
        if name not in envs or not key:
            parser.error(f"--env {item!r}: expected NAME:KEY=VALUE with NAME one of {sorted(envs)}")
        envs[name][key] = value

    from captioner.decode.options import DecodeOptions
    from captioner.encoders.runtime import limit_blas_threads

    limit_blas_threads()  # as the service does at startup
    photos = select_photos(args.photos, Path("/tmp/bench-item8"))
    data = [(p.name, p.read_bytes()) for p in photos]
    options = DecodeOptions(**PARAMS)
    captioner = load_captioner(args.bundle, None)
    single_image(captioner, photos[:2], options, 1)  # warm-up

    servers = {name: Server(args.bundle, env) for name, env in envs.items()}
    for s in servers.values():
        s.__enter__()
    try:
        for s in servers.values():
            load(s.url, data, 2, 8, PARAMS)  # warm the connections and code paths
        rounds = [_round(r, captioner, options, photos, data, servers, args) for r in range(args.rounds)]
    finally:
        for s in servers.values():
            s.__exit__()
    summary = {
        "engine_single_p50_ms": _spread([r["engine_single_p50_ms"] for r in rounds]),
        "engine_b32_img_s": _spread([r["engine_b32_img_s"] for r in rounds]),
    }
    for name in servers:
        summary[name] = {
            "http_c1_p50_ms": _spread([r[f"{name}_http_c1_p50_ms"] for r in rounds]),
            "http_c8_rps": _spread([r[f"{name}_http_c8"]["throughput_rps"] for r in rounds]),
            "c1_over_engine_single": _spread([r[f"{name}_c1_ratio"] for r in rounds]),
            "c1_paired_over_engine": _spread([r[f"{name}_c1_paired_ratio"] for r in rounds]),
            "c8_over_engine_b32": _spread([r[f"{name}_c8_ratio"] for r in rounds]),
            "rounds_c1_within_1.2": sum(r[f"{name}_c1_ratio"] <= 1.2 for r in rounds),
            "rounds_c1_paired_within_1.2": sum(r[f"{name}_c1_paired_ratio"] <= 1.2 for r in rounds),
            "rounds_c8_at_least_0.9": sum(r[f"{name}_c8_ratio"] >= 0.9 for r in rounds),
        }
    out = {
        "what": "issue 11 item 8: HTTP c=1 p50 / bare single p50 (<= 1.2); HTTP c=8 / bare batch-32 (>= 0.9)",
        "params": PARAMS,
        "photos": [p.name for p in photos],
        "sources": sources,
        "bundle": str(args.bundle),
        "env": {name: {k: v for k, v in env.items() if k != "PYTHONPATH"} for name, env in envs.items()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": summary,
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
