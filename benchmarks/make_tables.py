"""Renders the tables of benchmarks/README.md from benchmarks/results/*.json, so no number is copied by hand.

The README holds one block per benchmark between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; this
script rewrites what lies between them (a block whose JSON is missing says so). ``--check`` only reports
whether the README is up to date (exit status 1 if not).

    .venv/bin/python benchmarks/make_tables.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
MiB = 2**20


def _machine_line(report: dict) -> str:
    m = report.get("machine") or {}
    device = m.get("device") or report.get("device", "?")
    threads = m.get("threads") or report.get("threads") or report.get("torch_threads", "?")
    torch_version = m.get("torch") or report.get("torch", "?")
    parts = [f"{device}, {threads} threads, torch {torch_version}"]
    if m.get("open_clip"):
        parts.append(f"open_clip {m['open_clip']}, timm {m.get('timm')}")
    rev = m.get("openeva") or {}
    if rev.get("commit"):
        parts.append(f"openeva {rev['commit']}" + (" + uncommitted src changes" if rev.get("src_modified") else ""))
    if "load_average_1m" in m:
        end = report.get("load_average_1m_at_end")
        load = f"{m['load_average_1m']}" + (f" -> {end}" if end is not None else "")
        parts.append(f"1-min load average {load} at start -> end (the benchmark itself adds about its thread count)")
    return "_Machine: " + "; ".join(parts) + "._"


def image_encoder(r: dict) -> str:
    lines = [
        f"{r['model']} at {r['img_size'][0]}x{r['img_size'][1]}, `encode_image` under `torch.inference_mode()`, "
        f"median of {r['settings']['repeats']} interleaved calls.",
        "",
        "| mode | batch | openeva img/s | open_clip img/s | openeva / open_clip |",
        "|---|---|---|---|---|",
    ]
    for row in r["results"]:
        lines.append(f"| {row['mode']} | {row['batch']} | {row['openeva']['images_per_s']:.2f} | "
                     f"{row['open_clip']['images_per_s']:.2f} | **{row['ratio_openeva_over_open_clip']:.2f}x** |")
    agree = "; ".join(f"{a['mode']}: max abs diff {a['max_abs_diff']:.2g} (outputs up to {a['max_abs_output']:.2g}, "
                      f"relative {a['rel_diff']:.2g})" for a in r["agreement"])
    lines += ["", f"Same weights, outputs before timing: {agree}."]
    if r.get("profiles"):
        lines += ["", f"Where the time goes (one profiled forward, batch {r['profile_batch']}; top ops by self CPU "
                      "time, share of the forward):", "",
                  "| implementation / mode | forward (ms, profiled) | top ops |", "|---|---|---|"]
        for key, prof in r["profiles"].items():
            ops = ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.0%}" for o in prof["top_ops"][:6])
            lines.append(f"| {key} | {prof['total_self_cpu_ms']:.0f} | {ops} |")
    return "\n".join(lines + ["", _machine_line(r)])


def train_step(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"{r['what']}; {s['optimizer']}; {s['loss']}. Median of the interleaved timed steps "
        f"({', '.join(f'{k}: {v}' for k, v in s['repeats'].items())}) after {s['warmup']} warm-up step(s).",
        "",
        "| model | precision | batch | openeva img/s | open_clip img/s | openeva / open_clip | loss after the run "
        "(openeva / open_clip) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["throughput"]:
        lines.append(f"| {row['model']} | {row['precision']} | {row['batch']} | {row['openeva']['images_per_s']:.2f} | "
                     f"{row['open_clip']['images_per_s']:.2f} | **{row['ratio_openeva_over_open_clip']:.2f}x** | "
                     f"{row['openeva']['last_loss']:.4f} / {row['open_clip']['last_loss']:.4f} |")
    if r.get("memory"):
        lines += ["", "Peak resident memory, fresh process per row (total, and above model + optimizer + batch):", "",
                  "| model | precision | batch | openeva peak (MiB) | open_clip peak (MiB) | openeva above model | "
                  "open_clip above model |", "|---|---|---|---|---|---|---|"]
        pairs: dict[tuple, dict] = {}
        for row in r["memory"]:
            pairs.setdefault((row["model"], row["precision"], row["batch"]), {})[row["impl"]] = row

        def cell(row, key):
            return f"{row[key]:.0f}" if row and row.get("status") == "ok" else (row or {}).get("status", "-")

        for (model, precision, batch), impls in pairs.items():
            ours, theirs = impls.get("openeva"), impls.get("open_clip")
            lines.append(f"| {model} | {precision} | {batch} | {cell(ours, 'peak_rss_mib')} | "
                         f"{cell(theirs, 'peak_rss_mib')} | {cell(ours, 'peak_above_model_mib')} | "
                         f"{cell(theirs, 'peak_above_model_mib')} |")
    agree = "; ".join(f"{k}: image {v['max_abs_diff_image_features']:.2g}, text {v['max_abs_diff_text_features']:.2g}"
                      for k, v in r.get("agreement_fp32_forward", {}).items())
    if agree:
        lines += ["", f"Same weights, fp32 forward before timing, max abs diff of the normalised features: {agree}."]
    lines += ["", f"Tiny open_clip build: {s['tiny_open_clip']}."]
    return "\n".join(lines + ["", _machine_line(r)])


def loss_memory(r: dict) -> str:
    lines = [
        f"ClipLoss forward + backward on B x {r['dim']} fp32 features, one process; openeva tiled (tile "
        f"{r['tile_size']}) vs open_clip's dense ClipLoss. Peak memory above the inputs, fresh process per row.",
        "",
        "| batch | openeva peak (MiB) | open_clip peak (MiB) | open_clip / openeva | openeva time (s) | "
        "open_clip time (s) | loss (openeva / open_clip) | values match |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_batch: dict[int, dict] = {}
    for row in r["results"]:
        by_batch.setdefault(row["batch"], {})[row["impl"]] = row
    for batch, impls in sorted(by_batch.items()):
        ours, theirs = impls.get("openeva_tiled", {}), impls.get("open_clip", {})

        def mib(row):
            return f"{row['peak_bytes'] / MiB:.0f}" if row.get("status") == "ok" else row.get("status", "-")

        def secs(row):
            return f"{row['seconds']:.2f}" if row.get("status") == "ok" else "-"

        ratio = ours.get("memory_ratio_open_clip_over_ours")
        loss = (f"{ours['loss']:.6f} / {theirs['loss']:.6f}" if theirs.get("status") == "ok" and ours.get("status") == "ok"
                else f"{ours.get('loss', float('nan')):.6f} / -")
        reason = f" ({theirs['reason']})" if theirs.get("status") == "skipped" else ""
        match = ours.get("values_match")
        lines.append(f"| {batch} | {mib(ours)} | {mib(theirs)}{reason} | {f'**{ratio:.1f}x**' if ratio else '-'} | "
                     f"{secs(ours)} | {secs(theirs)} | {loss} | {'-' if match is None else match} |")
    return "\n".join(lines + ["", _machine_line(r)])


def mim_step(r: dict) -> str:
    lines = [
        f"MIM step ({r['precision']}): {r['student']} student ({r['student_params_m']}M) against a frozen "
        f"{r['teacher']} teacher ({r['teacher_params_m']}M), {r['masked_patches']} masked patches, median of "
        f"{r['steps']} steps.",
        "",
        "| batch | step (s) | img/s | teacher fwd bf16 (s) | teacher share of step | teacher fwd fp32 (s) | "
        "peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|",
        f"| {r['batch_size']} | {r['step_s_median']:.2f} | {r['images_per_s']:.2f} | {r['teacher_forward_s_median']:.2f} "
        f"| {r['teacher_fraction_of_step']:.0%} | {r['teacher_fp32_forward_s_median']:.2f} | {r['peak_rss_gib']:.2f} |",
    ]
    return "\n".join(lines + ["", _machine_line(r)])


def _env_line(r: dict) -> str:
    env = r.get("environment") or {}
    line = _machine_line({"machine": env})
    return line[:-2] + f"; torch CPU capability {env.get('torch_cpu_capability')}, mkldnn bf16 " \
        f"{r.get('mkldnn_bf16_supported')}; shared machine, other jobs running._"


def embed_throughput(r: dict) -> str:
    ips = r["images_per_s"]
    lines = [
        f"`openeva embed` on {r['images']} JPEGs ({r['image_size']} px) with {r['model']} ({r['precision']}, batch "
        f"{r['batch_size']}, {r['workers']} decode workers), same weights in all three.",
        "",
        "| bare forward (img/s) | openeva embed (img/s) | open_clip loop (img/s) | embed / bare | embed / open_clip |",
        "|---|---|---|---|---|",
        f"| {ips['bare_forward']:.2f} | {ips['openeva_embed']:.2f} | {ips['open_clip_loop']:.2f} "
        f"| {r['embed_vs_bare_forward']:.2f} | {r['embed_vs_open_clip_loop']:.2f} |",
    ]
    return "\n".join(lines + ["", _env_line(r)])


def search(r: dict) -> str:
    lines = [f"Random unit vectors, {r['queries']} held-out queries, k=10, faiss {r['faiss']}.", "",
             "| vectors | dim | kind | params | build (s) | 1-query p50 (ms) | p99 (ms) | batch q/s | recall@10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['n']:,} | | {row['kind']} | skipped: {row['skipped']} | | | | | |")
            continue
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "exact"
        lines.append(f"| {row['n']:,} | {row['dim']} | {row['kind']} | {params} | {row['build_s']} "
                     f"| {row['latency_ms_p50']} | {row['latency_ms_p99']} | {row['batch_queries_per_s']} "
                     f"| {row['recall@10']:.3f} |")
    return "\n".join(lines + ["", _env_line(r)])


def service_load(r: dict) -> str:
    lines = [f"`openeva serve --model {r['model']}` ({r['weights']} weights, {r['precision']}) on 127.0.0.1, one "
             "item per request.", "",
             "| micro-batching | kind | requests | clients | errors | req/s | p50 (ms) | p99 (ms) | mean batch "
             "| server peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in r["modes"]:
        for kind in ("text", "image"):
            if kind not in mode:
                continue
            m = mode[kind]
            lines.append(f"| {'on' if mode['batching'] else 'off'} | {kind} | {m['requests']} | {m['clients']} "
                         f"| {m['errors']} | {m['throughput_rps']} | {m['latency_ms_p50']} | {m['latency_ms_p99']} "
                         f"| {mode['batch_size_mean'].get(kind)} | {mode['server_peak_rss_mb']} |")
    return "\n".join(lines + ["", _env_line(r)])


RENDERERS = {"image_encoder": image_encoder, "train_step": train_step, "loss_memory": loss_memory,
             "mim_step": mim_step, "embed_throughput": embed_throughput, "search": search,
             "service_load": service_load}


def render(readme: str, results_dir: Path) -> str:
    def block(match: re.Match) -> str:
        name = match.group(1)
        path = results_dir / f"{name}.json"
        if name not in RENDERERS:
            raise SystemExit(f"README block {name!r} has no renderer; known: {sorted(RENDERERS)}")
        body = RENDERERS[name](json.loads(path.read_text())) if path.exists() else f"_No {path.name} yet._"
        return f"<!-- table:{name} -->\n{body}\n<!-- /table:{name} -->"

    return re.sub(r"<!-- table:(\w+) -->.*?<!-- /table:\1 -->", block, readme, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(HERE / "README.md"))
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README tables are stale")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    if not readme.exists():
        raise SystemExit(f"{readme} not found")
    old = readme.read_text()
    new = render(old, Path(args.results))
    if args.check:
        print("up to date" if new == old else f"{readme} is stale: run benchmarks/make_tables.py")
        return 0 if new == old else 1
    readme.write_text(new)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
