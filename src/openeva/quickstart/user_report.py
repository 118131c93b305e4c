"""Report of ``openeva quickstart --data``: ``report.json``, ``report.html`` and plots, with a computed verdict.

The verdict compares the fine-tune from the MIM student (a) with the fine-tune from random weights at equal
steps (b) and at equal CPU time (c). A difference counts as beyond noise when it exceeds two standard errors of
the difference of two accuracies on the same ``n`` validation images (binomial, sqrt(p(1-p)/n) each).
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

NOISE_SIGMAS = 2.0
ARMS = (("finetune_student", "(a) fine-tune from the MIM student"),
        ("finetune_random_equal_steps", "(b) from random weights, same steps"),
        ("finetune_random_equal_time", "(c) from random weights, same CPU time as the chain"))


def new_report(cfg, data: str, val: str | None, templates: list[str]) -> dict:
    import openeva

    return {"title": "openeva quickstart --data: the EVA chain on your images",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"openeva": openeva.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "machine": {"cpu_threads": torch.get_num_threads(), "cpu_capability":
                        torch.backends.cpu.get_cpu_capability()},
            "data": data, "val": val, "templates": templates, "config": cfg.to_dict(), "stages": {}}


def difference(a: float, b: float, n: int) -> dict:
    """a - b on the same n images, its standard error and whether it is beyond NOISE_SIGMAS of it."""
    se = math.sqrt(max(a * (1 - a), 1e-12) / n + max(b * (1 - b), 1e-12) / n)
    diff = a - b
    return {"diff": diff, "se": se, "beyond_noise": abs(diff) > NOISE_SIGMAS * se}


def _phrase(name: str, d: dict) -> str:
    points = 100 * d["diff"]
    if not d["beyond_noise"]:
        return f"{name}, the chain made no difference beyond noise ({points:+.1f} points, noise +-{200 * d['se']:.1f})"
    word = "helped" if points > 0 else "hurt"
    return f"{name}, the chain {word} by {abs(points):.1f} points (beyond noise, +-{200 * d['se']:.1f})"


def verdict(report: dict) -> dict:
    """Equal-steps and equal-time comparisons of the fine-tunes, and of the frozen probes, as numbers + a sentence."""
    st = report["stages"]
    n = report["data_counts"]["val"]
    a = st["finetune_student"]["acc1"]
    steps = difference(a, st["finetune_random_equal_steps"]["acc1"], n)
    timed = difference(a, st["finetune_random_equal_time"]["acc1"], n)
    probe = difference(st["probes"]["student"]["linear_probe_acc1"], st["probes"]["random"]["linear_probe_acc1"], n)
    keeps = difference(a, st["probes"]["student"]["linear_probe_acc1"], n)
    sentence = (_phrase("At equal steps", steps) + "; " + _phrase("at equal CPU time", timed)
                + f". The student's frozen linear probe is {100 * probe['diff']:+.1f} points from random features"
                + f", and its fine-tune is {100 * keeps['diff']:+.1f} points from that probe.")
    return {"equal_steps": steps, "equal_time": timed, "probe_vs_random": probe, "finetune_vs_probe": keeps,
            "noise_sigmas": NOISE_SIGMAS, "n_val": n, "sentence": sentence}


def _rows(report: dict) -> list[tuple[str, str]]:
    st = report["stages"]
    rows = []
    if "teacher" in st:
        rows.append(("CLIP teacher zero-shot", _pct(st["teacher"]["metrics"]["zeroshot_acc1"])))
    if "probes" in st:
        for who in ("student", "random"):
            p = st["probes"][who]
            rows.append((f"frozen {who}: linear probe / kNN-10 / kNN-20",
                         " / ".join(_pct(p[k]) for k in ("linear_probe_acc1", "knn10_acc1", "knn20_acc1"))))
    for key, title in ARMS:
        if key in st:
            rows.append((f"{title} ({st[key]['steps']} steps, {st[key]['wall_s']:.0f} s)", _pct(st[key]["acc1"])))
    return rows


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def plot_accuracies(report: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = report["stages"]
    bars = [(title.split(")")[0] + ")", st[key]["acc1"]) for key, title in ARMS if key in st]
    if "probes" in st:
        bars += [("LP student", st["probes"]["student"]["linear_probe_acc1"]),
                 ("LP random", st["probes"]["random"]["linear_probe_acc1"])]
    if "teacher" in st:
        bars.append(("zero-shot", st["teacher"]["metrics"]["zeroshot_acc1"]))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar([b[0] for b in bars], [100 * b[1] for b in bars], color="#4a7bb7")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("fine-tunes (a, b, c), frozen probes, teacher zero-shot")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_html(report: dict, plots: list[str]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _rows(report))
    sentence = report.get("verdict", {}).get("sentence", "the chain has not finished")
    imgs = "".join(f'<p><img src="{e(p)}" alt="{e(p)}"></p>' for p in plots)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report['title'])}</title></head><body>"
            f"<h1>{e(report['title'])}</h1><p><b>{e(sentence)}</b></p>"
            f"<p>data: {e(str(report['data']))}; counts: {e(json.dumps(report.get('data_counts', {})))}</p>"
            f"<table border='1' cellpadding='4'><tr><th>stage</th><th>validation top-1</th></tr>{rows}</table>"
            f"{imgs}<p>Noise: a difference counts when it exceeds {NOISE_SIGMAS:g} binomial standard errors on the "
            f"validation images. Machine: {e(json.dumps(report['machine']))}.</p></body></html>")


def write_report(report: dict, out_dir) -> dict[str, str]:
    out = Path(out_dir)
    plots = []
    p = plot_accuracies(report, out / "plots" / "accuracies.png")
    if p is not None:
        plots.append(str(p.relative_to(out)))
    paths = {"json": str(out / "report.json"), "html": str(out / "report.html"), "plots": plots}
    _atomic_write(out / "report.json", json.dumps(report, indent=2, default=str))
    _atomic_write(out / "report.html", render_html(report, plots))
    return paths


def format_table(report: dict) -> str:
    rows = _rows(report)
    width = max((len(k) for k, _ in rows), default=10)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
