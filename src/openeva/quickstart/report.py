"""The quickstart report: ``report.json``, PNG plots, a one-page ``report.html`` and a printed table.

Everything here works on the plain, JSON-serialisable report dict that :mod:`openeva.quickstart.pipeline`
builds, so a report can be re-rendered from ``report.json`` alone (:func:`write_report`). The verdict is
computed from the numbers (:func:`compare`), never written by hand: whatever the run measured is what the
report says, including when the student-initialised CLIP loses to the one trained from scratch.

Report dict shape::

    {"title", "created", "versions": {...}, "seed", "scale", "wall_s", "config": {...},
     "eval_counts": {"zeroshot": n, "retrieval_images": n, "retrieval_texts": n, "linear_probe_test": n, ...},
     "stages": [{"name", "title", "model", "init", "run_dir", "trained", "steps", "batch_size", "wall_s",
                 "final_loss", "loss_name", "loss_curve": [[step, loss], ...], "metrics": {key: value}}, ...],
     "comparison": {...}}   # filled by compare()
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

# (key, short label for tables, description) in table order; every value is a fraction in [0, 1].
METRICS = (
    ("zeroshot_pair_acc1", "ZS pair", "zero-shot top-1 over all 30 shape+color classes, held-out pairs only"),
    ("zeroshot_shape_acc1", "ZS shape", "zero-shot top-1 over the 5 shapes, held-out pairs"),
    ("zeroshot_color_acc1", "ZS color", "zero-shot top-1 over the 6 colors, held-out pairs"),
    ("retrieval_i2t_r1", "I->T R@1", "image -> text retrieval recall@1 on held-out pairs"),
    ("retrieval_t2i_r1", "T->I R@1", "text -> image retrieval recall@1 on held-out pairs"),
    ("linear_probe_shape_acc1", "LP shape", "linear probe (shape) fitted on all pairs, tested on held-out"),
)
METRIC_KEYS = tuple(k for k, _, _ in METRICS)
# Which evaluation count is the sample size of each metric (for the standard error in the verdict).
_COUNT_OF = {
    "zeroshot_pair_acc1": "zeroshot", "zeroshot_shape_acc1": "zeroshot", "zeroshot_color_acc1": "zeroshot",
    "retrieval_i2t_r1": "retrieval_images", "retrieval_t2i_r1": "retrieval_texts",
    "linear_probe_shape_acc1": "linear_probe_test",
}
CANDIDATE, BASELINE = "evaclip", "scratch"  # the comparison the quickstart exists to make


# ------------------------------------------------------------------------------------------------ verdict
def _stage(report: dict, name: str) -> dict | None:
    return next((s for s in report.get("stages", []) if s["name"] == name), None)


def _standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else float("inf")


def compare(report: dict, candidate: str = CANDIDATE, baseline: str = BASELINE) -> dict:
    """Per-metric comparison of two stages and a verdict sentence computed from the numbers.

    "beat" means a higher mean over the metrics both have. A per-metric difference counts as beyond noise when
    it exceeds two standard errors of a difference of two proportions measured on the same number of samples.
    """
    cand, base = _stage(report, candidate), _stage(report, baseline)
    if cand is None or base is None or not cand.get("metrics") or not base.get("metrics"):
        missing = candidate if not (cand and cand.get("metrics")) else baseline
        return {"candidate": candidate, "baseline": baseline, "beat": None,
                "verdict": f"No comparison: stage {missing!r} has no metrics (see its error above)."}
    counts = report.get("eval_counts", {})
    rows, ahead, behind, ahead_sig, behind_sig = [], 0, 0, 0, 0
    for key in METRIC_KEYS:
        if key not in cand["metrics"] or key not in base["metrics"]:
            continue
        a, b = float(cand["metrics"][key]), float(base["metrics"][key])
        n = int(counts.get(_COUNT_OF[key], 0))
        se = math.hypot(_standard_error(a, n), _standard_error(b, n))
        diff = a - b
        beyond = abs(diff) > 2 * se
        ahead += diff > 0
        behind += diff < 0
        ahead_sig += diff > 0 and beyond
        behind_sig += diff < 0 and beyond
        rows.append({"metric": key, candidate: a, baseline: b, "diff": diff, "two_se": 2 * se, "beyond_noise": beyond})
    if not rows:
        return {"candidate": candidate, "baseline": baseline, "beat": None,
                "verdict": "No comparison: the two stages share no metric."}
    mean_c = sum(r[candidate] for r in rows) / len(rows)
    mean_b = sum(r[baseline] for r in rows) / len(rows)
    beat = mean_c > mean_b
    c_title, b_title = cand.get("title", candidate), base.get("title", baseline)
    same = ("with the same steps and batch size" if (cand.get("steps"), cand.get("batch_size")) ==
            (base.get("steps"), base.get("batch_size")) else "with DIFFERENT steps or batch size")
    word = "beat" if beat else ("tied with" if mean_c == mean_b else "did not beat")
    sentence = (
        f"The {c_title} {word} the {b_title} trained {same}: mean of {len(rows)} metrics "
        f"{100 * mean_c:.1f} vs {100 * mean_b:.1f}; it was ahead on {ahead} of {len(rows)} metrics "
        f"({ahead_sig} beyond two standard errors) and behind on {behind} ({behind_sig} beyond two standard errors)."
    )
    if ahead_sig == behind_sig == 0:
        sentence += " Every difference is within noise: this run shows no clear winner."
    elif (ahead_sig > 0) != (behind_sig > 0):
        sentence += (f" The differences beyond noise all favour the {c_title if ahead_sig else b_title}.")
    else:
        sentence += " Beyond noise, each is ahead somewhere: the result is mixed."
    return {"candidate": candidate, "baseline": baseline, "beat": beat, "mean": {candidate: mean_c,
            baseline: mean_b}, "ahead": ahead, "behind": behind, "ahead_beyond_noise": ahead_sig,
            "behind_beyond_noise": behind_sig, "metrics": rows, "verdict": sentence}


# -------------------------------------------------------------------------------------------------- table
def _pct(value) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison table: one row per stage, metrics in percent."""
    header = ["stage", "init", "steps", "train s", "final loss", *(label for _, label, _ in METRICS)]
    rows = []
    for s in report.get("stages", []):
        metrics = s.get("metrics") or {}
        loss = s.get("final_loss")
        rows.append([
            s.get("title", s["name"]) + ("" if s.get("status", "ok") == "ok" else f" [{s['status']}]"),
            s.get("init", "-"),
            str(s.get("steps", 0)) if s.get("trained") else "-",
            f"{s['wall_s']:.0f}" if s.get("trained") and s.get("wall_s") is not None else "-",
            f"{loss:.3f}" if isinstance(loss, (int, float)) else "-",
            *(_pct(metrics.get(k)) for k in METRIC_KEYS),
        ])
    return header, rows


def format_table(report: dict) -> str:
    """The stage comparison as a fixed-width text table (metrics in percent), verdict below it."""
    header, rows = table_rows(report)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    verdict = report.get("comparison", {}).get("verdict")
    if verdict:
        out += ["", verdict]
    return "\n".join(out)


# -------------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_loss_curves(report: dict, path) -> Path:
    """Training loss against step: one panel per loss kind; EVA-CLIP and scratch share a panel (same compute)."""
    trained = [s for s in report.get("stages", []) if s.get("trained") and s.get("loss_curve")]
    if not trained:
        raise ValueError("no stage has a loss curve to plot")
    panels: dict[str, list[dict]] = {}
    for s in trained:
        key = "evaclip vs scratch" if s["name"] in (CANDIDATE, BASELINE) else s["name"]
        panels.setdefault(key, []).append(s)
    fig = _figure(4.2 * len(panels), 3.4)
    for i, (key, stages) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for s in stages:
            steps, losses = zip(*s["loss_curve"])
            ax.plot(steps, losses, label=s.get("title", s["name"]), linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(stages[0].get("loss_name", "loss"))
        ax.set_title(key if len(stages) > 1 else stages[0].get("title", key), fontsize=10)
        ax.grid(alpha=0.3)
        if len(stages) > 1:
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metrics(report: dict, path) -> Path:
    """Grouped bars: each metric (x) for each stage that has it (bars)."""
    import numpy as np

    stages = [s for s in report.get("stages", []) if s.get("metrics")]
    if not stages:
        raise ValueError("no stage has metrics to plot")
    keys = [k for k in METRIC_KEYS if any(k in s["metrics"] for s in stages)]
    labels = [label for k, label, _ in METRICS if k in keys]
    fig = _figure(max(7.0, 1.3 * len(keys) + 2), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(stages)
    x = np.arange(len(keys))
    for j, s in enumerate(stages):
        values = [100 * s["metrics"].get(k, float("nan")) for k in keys]
        ax.bar(x + (j - (len(stages) - 1) / 2) * width, values, width, label=s.get("title", s["name"]))
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylabel("percent")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(3, len(stages)))
    ax.set_title("held-out attribute combinations (higher is better)", fontsize=10)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------------- html
def render_html(report: dict, plot_files: list[str]) -> str:
    """One self-contained page (plots linked relative to the page): verdict, table, plots, stages, settings."""
    e = html.escape
    header, rows = table_rows(report)
    table = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
    for r in rows:
        table += "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
    table += "</table>"
    legend = "".join(f"<li><b>{e(label)}</b>: {e(desc)}</li>" for _, label, desc in METRICS)
    stage_items = ""
    for s in report.get("stages", []):
        bits = [f"<b>{e(s.get('title', s['name']))}</b> ({e(s.get('model', '-'))}; init: {e(s.get('init', '-'))})"]
        if s.get("run_dir"):
            bits.append(f"run dir <code>{e(str(s['run_dir']))}</code>")
        if s.get("trained"):
            bits.append(f"{s.get('steps')} steps x batch {s.get('batch_size')}, {s.get('wall_s', 0):.0f} s")
        if s.get("error"):
            bits.append(f"<span class=bad>FAILED: {e(s['error'])}</span>")
        if s.get("note"):
            bits.append(e(s["note"]))
        stage_items += "<li>" + "; ".join(bits) + "</li>"
    comparison = report.get("comparison", {})
    cmp_rows = ""
    for r in comparison.get("metrics", []):
        cand, base = comparison["candidate"], comparison["baseline"]
        cmp_rows += (f"<tr><td>{e(r['metric'])}</td><td>{_pct(r[cand])}</td><td>{_pct(r[base])}</td>"
                     f"<td>{100 * r['diff']:+.1f}</td><td>{100 * r['two_se']:.1f}</td>"
                     f"<td>{'yes' if r['beyond_noise'] else 'no'}</td></tr>")
    cmp_table = ("<table><tr><th>metric</th><th>EVA-CLIP</th><th>scratch</th><th>diff</th><th>2 s.e.</th>"
                 f"<th>beyond noise</th></tr>{cmp_rows}</table>") if cmp_rows else ""
    images = "".join(f'<p><img src="{e(p)}" alt="{e(p)}"></p>' for p in plot_files)
    notes = "".join(f"<li>{e(n)}</li>" for n in report.get("notes", []))
    settings = e(json.dumps(report.get("config", {}), indent=1, default=str))
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(report.get('title', 'openeva quickstart'))}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 1.5em auto; color: #222; }}
table {{ border-collapse: collapse; margin: .6em 0; font-size: 14px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
td:first-child, th:first-child, td:nth-child(2) {{ text-align: left; }}
img {{ max-width: 100%; }} .verdict {{ font-size: 1.1em; background: #f4f6f8; padding: .6em; }}
.bad {{ color: #b00; }} pre {{ font-size: 12px; background: #f8f8f8; padding: .5em; overflow-x: auto; }}
</style></head><body>
<h1>{e(report.get('title', 'openeva quickstart'))}</h1>
<p>The EVA bootstrapping chain on the built-in synthetic shapes data: a CLIP teacher, an EVA-02 student
MIM-pretrained against it, an EVA-CLIP whose vision tower starts from the student, and a CLIP from scratch with
the same steps and batch size. Evaluated on (shape, color) combinations never seen in training.
Total wall time {report.get('wall_s', 0):.0f} s; seed {report.get('seed')}; scale {e(str(report.get('scale')))};
{e(report.get('created', ''))}; {e(versions)}.</p>
<p class="verdict">{e(comparison.get('verdict', 'no verdict'))}</p>
<h2>Results (percent)</h2>{table}
<ul>{legend}</ul>
<h2>EVA-CLIP vs scratch</h2>{cmp_table}
<h2>Plots</h2>{images}
<h2>Stages</h2><ul>{stage_items}</ul>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Settings</h2><pre>{settings}</pre>
</body></html>
"""


# ------------------------------------------------------------------------------------------------- writing
def write_report(report: dict, out_dir) -> dict[str, str]:
    """Fill ``report["comparison"]`` and write report.json, plots/*.png and report.html under ``out_dir``.

    Returns the written paths by kind. A plot that cannot be drawn (e.g. every stage failed) is skipped and
    named in the page's notes instead of failing the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["comparison"] = compare(report)
    paths: dict[str, str] = {}
    plot_files = []
    for kind, fn in (("loss_curves", plot_loss_curves), ("metrics", plot_metrics)):
        try:
            fn(report, out / "plots" / f"{kind}.png")
        except ValueError as err:
            report.setdefault("notes", []).append(f"plot {kind} not drawn: {err}")
            continue
        plot_files.append(f"plots/{kind}.png")
        paths[kind] = str(out / "plots" / f"{kind}.png")
    report["plots"] = plot_files
    paths["json"] = str(_atomic_write(out / "report.json", json.dumps(report, indent=1, default=_jsonable)))
    paths["html"] = str(_atomic_write(out / "report.html", render_html(report, plot_files)))
    return paths


def load_report(path) -> dict:
    """A ``report.json`` (or the folder holding it) back as the report dict."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"no quickstart report at {p}")
    return json.loads(p.read_text(encoding="utf-8"))


def _jsonable(value):
    if hasattr(value, "item"):  # tensors / numpy scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _atomic_write(path: Path, text: str) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
