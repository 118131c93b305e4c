"""Report of ``openeva quickstart --data``: ``report.json``, ``report.html`` and plots, with a computed verdict.

The verdict compares the fine-tune from the MIM student (a) with the fine-tune from random weights at equal
steps (b) and at equal CPU time (c). A difference counts as beyond noise when it exceeds two standard errors of
the difference of two accuracies on the same ``n`` validation images. Every arm records which validation images
it got right (``val_correct``, a string of 0/1 in image order), so the standard error is the paired one
(McNemar's: only the images the two disagree on carry noise); a report without them falls back to two
independent binomials, sqrt(p(1-p)/n) each, which overstates the noise of two classifiers scored on the same
images (for a fine-tune against its own probe, about twice).
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

from openeva.runtime import cpu_capability

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
            "machine": {"cpu_threads": torch.get_num_threads(), **cpu_capability()},
            "data": data, "val": val, "templates": templates, "config": cfg.to_dict(), "stages": {}}


def correctness(scores: torch.Tensor, labels: torch.Tensor) -> str:
    """Which of the images an (N, C) score matrix gets right, as an N-character string of 0/1 (compact in JSON)."""
    return "".join("1" if ok else "0" for ok in (scores.argmax(-1) == labels.to(scores.device)).tolist())


def _unpaired_se(a: float, b: float, n: int) -> float:
    return math.sqrt(max(a * (1 - a), 1e-12) / n + max(b * (1 - b), 1e-12) / n)


def _paired_se(correct_a: str, correct_b: str) -> float:
    """Standard error of the mean per-image difference (1 - 0, 0 - 1 or 0) of two classifiers on the same images."""
    n = len(correct_a)
    a_only = sum(1 for x, y in zip(correct_a, correct_b) if x == "1" and y == "0")
    b_only = sum(1 for x, y in zip(correct_a, correct_b) if x == "0" and y == "1")
    mean = (a_only - b_only) / n
    return math.sqrt(max((a_only + b_only) / n - mean * mean, 1e-12) / n)


def difference(a: float, b: float, n: int, correct_a: str | None = None, correct_b: str | None = None) -> dict:
    """a - b on the same n images, its standard error and whether it is beyond NOISE_SIGMAS of it.

    With both arms' per-image correctness over the same n images, the paired standard error; otherwise (or when a
    skipped image left the two of different lengths) the unpaired one. Both are returned.
    """
    unpaired = _unpaired_se(a, b, n)
    paired = correct_a is not None and correct_b is not None and len(correct_a) == len(correct_b) == n
    se = _paired_se(correct_a, correct_b) if paired else unpaired
    diff = a - b
    return {"diff": diff, "se": se, "paired": paired, "se_unpaired": unpaired,
            "beyond_noise": abs(diff) > NOISE_SIGMAS * se}


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
    a, a_ok = st["finetune_student"]["acc1"], st["finetune_student"].get("val_correct")

    def arm(key: str) -> tuple[float, str | None]:
        return st[key]["acc1"], st[key].get("val_correct")

    def probe_of(who: str) -> tuple[float, str | None]:
        p = st["probes"][who]
        return p["linear_probe_acc1"], p.get("linear_probe_val_correct")

    def vs(first: tuple, second: tuple) -> dict:
        return difference(first[0], second[0], n, first[1], second[1])

    steps = vs((a, a_ok), arm("finetune_random_equal_steps"))
    timed = vs((a, a_ok), arm("finetune_random_equal_time"))
    probe = vs(probe_of("student"), probe_of("random"))
    keeps = vs((a, a_ok), probe_of("student"))
    sentence = (_phrase("At equal steps", steps) + "; " + _phrase("at equal CPU time", timed)
                + f". The student's frozen linear probe is {100 * probe['diff']:+.1f} points from random features"
                + f", and its fine-tune is {100 * keeps['diff']:+.1f} points from that probe"
                + f" ({'beyond' if keeps['beyond_noise'] else 'within'} noise, +-{200 * keeps['se']:.1f}).")
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


def _noise_model(report: dict) -> str:
    if report.get("verdict", {}).get("equal_steps", {}).get("paired", True):
        return "paired over the same validation images (only the images two arms disagree on carry noise)"
    return "as two independent binomials on the validation images (no per-image results to pair)"


def render_html(report: dict, plots: list[str]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _rows(report))
    sentence = report.get("verdict", {}).get("sentence", "the chain has not finished")
    imgs = "".join(f'<p><img src="{e(p)}" alt="{e(p)}"></p>' for p in plots)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report['title'])}</title></head><body>"
            f"<h1>{e(report['title'])}</h1><p><b>{e(sentence)}</b></p>"
            f"<p>data: {e(str(report['data']))}; counts: {e(json.dumps(report.get('data_counts', {})))}</p>"
            f"<table border='1' cellpadding='4'><tr><th>stage</th><th>validation top-1</th></tr>{rows}</table>"
            f"{imgs}<p>Noise: a difference counts when it exceeds {NOISE_SIGMAS:g} standard errors of the "
            f"difference, {e(_noise_model(report))}. Machine: {e(json.dumps(report['machine']))}.</p></body></html>")


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
