"""How the built-in quickstart's report is shown (:data:`VIEW` for :mod:`.report`): the stage table, the verdict
of EVA-CLIP against the CLIP from scratch (:func:`compare`, computed from the numbers, including when the
student-initialised CLIP loses), loss curves and metric bars.

Report dict shape (filled by :mod:`.builtin`)::

    {"title", "created", "versions": {...}, "machine": {...}, "seed", "wall_s", "config": {...}, "notes": [...],
     "eval_counts": {"zeroshot": n, "retrieval_images": n, "retrieval_texts": n, "linear_probe_test": n, ...},
     "stages": [{"name", "title", "model", "init", "run_dir", "trained", "steps", "batch_size", "wall_s",
                 "final_loss", "loss_name", "loss_curve": [[step, loss], ...], "metrics": {key: value}}, ...],
     "budget": {...},       # with --minutes
     "comparison": {...}}   # filled by compare()
"""

from __future__ import annotations

import html

from openeva.quickstart.noise import NOISE_SIGMAS, difference
from openeva.quickstart.report import ReportView, figure, html_table, pct, save_figure

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


def _stage(report: dict, name: str) -> dict | None:
    return next((s for s in report.get("stages", []) if s["name"] == name), None)


def compare(report: dict, candidate: str = CANDIDATE, baseline: str = BASELINE) -> dict:
    """Per-metric comparison of two stages and a verdict sentence computed from the numbers.

    "beat" means a higher mean over the metrics both have. A per-metric difference counts as beyond noise by the
    rule of :mod:`.noise` (two standard errors of a difference of two proportions on the same number of samples).
    """
    cand, base = _stage(report, candidate), _stage(report, baseline)
    if cand is None or base is None or not cand.get("metrics") or not base.get("metrics"):
        missing = candidate if not (cand and cand.get("metrics")) else baseline
        return {"candidate": candidate, "baseline": baseline, "beat": None,
                "verdict": f"No comparison: stage {missing!r} has no metrics (see its error above)."}
    counts = report.get("eval_counts", {})
    rows = []
    for key in METRIC_KEYS:
        if key in cand["metrics"] and key in base["metrics"]:
            a, b = float(cand["metrics"][key]), float(base["metrics"][key])
            d = difference(a, b, int(counts.get(_COUNT_OF[key], 0)))
            rows.append({"metric": key, candidate: a, baseline: b, "diff": d["diff"], "two_se": NOISE_SIGMAS * d["se"],
                         "beyond_noise": d["beyond_noise"]})
    if not rows:
        return {"candidate": candidate, "baseline": baseline, "beat": None,
                "verdict": "No comparison: the two stages share no metric."}
    ahead = sum(r["diff"] > 0 for r in rows)
    behind = sum(r["diff"] < 0 for r in rows)
    ahead_sig = sum(r["diff"] > 0 and r["beyond_noise"] for r in rows)
    behind_sig = sum(r["diff"] < 0 and r["beyond_noise"] for r in rows)
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
        sentence += f" The differences beyond noise all favour the {c_title if ahead_sig else b_title}."
    else:
        sentence += " Beyond noise, each is ahead somewhere: the result is mixed."
    return {"candidate": candidate, "baseline": baseline, "beat": beat, "mean": {candidate: mean_c,
            baseline: mean_b}, "ahead": ahead, "behind": behind, "ahead_beyond_noise": ahead_sig,
            "behind_beyond_noise": behind_sig, "metrics": rows, "verdict": sentence}


def _conclude(report: dict) -> str:
    report["comparison"] = compare(report)
    return report["comparison"]["verdict"]


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
            *(pct(metrics.get(k)) for k in METRIC_KEYS),
        ])
    return header, rows


def plot_loss_curves(report: dict, path):
    """Training loss against step: one panel per loss kind; EVA-CLIP and scratch share a panel (same compute)."""
    trained = [s for s in report.get("stages", []) if s.get("trained") and s.get("loss_curve")]
    if not trained:
        raise ValueError("no stage has a loss curve to plot")
    panels: dict[str, list[dict]] = {}
    for s in trained:
        key = "evaclip vs scratch" if s["name"] in (CANDIDATE, BASELINE) else s["name"]
        panels.setdefault(key, []).append(s)
    fig = figure(4.2 * len(panels), 3.4)
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
    return save_figure(fig, path)


def plot_metrics(report: dict, path):
    """Grouped bars: each metric (x) for each stage that has it (bars)."""
    import numpy as np

    stages = [s for s in report.get("stages", []) if s.get("metrics")]
    if not stages:
        raise ValueError("no stage has metrics to plot")
    keys = [k for k in METRIC_KEYS if any(k in s["metrics"] for s in stages)]
    labels = [label for k, label, _ in METRICS if k in keys]
    fig = figure(max(7.0, 1.3 * len(keys) + 2), 3.8)
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
    return save_figure(fig, path)


def _sections(report: dict) -> list[tuple[str, str]]:
    """Metric legend, the EVA-CLIP vs scratch table, and what each stage was."""
    e = html.escape
    legend = "<ul>" + "".join(f"<li><b>{e(label)}</b>: {e(desc)}</li>" for _, label, desc in METRICS) + "</ul>"
    comparison = report.get("comparison", {})
    cand, base = comparison.get("candidate"), comparison.get("baseline")
    cmp_rows = [[r["metric"], pct(r[cand]), pct(r[base]), f"{100 * r['diff']:+.1f}", f"{100 * r['two_se']:.1f}",
                 "yes" if r["beyond_noise"] else "no"] for r in comparison.get("metrics", [])]
    cmp_table = html_table(["metric", "EVA-CLIP", "scratch", "diff", "2 s.e.", "beyond noise"], cmp_rows) \
        if cmp_rows else "<p>no comparison</p>"
    items = ""
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
        items += "<li>" + "; ".join(bits) + "</li>"
    return [("Metrics (percent)", legend), ("EVA-CLIP vs scratch", cmp_table), ("Stages", f"<ul>{items}</ul>")]


VIEW = ReportView(
    intro="The EVA bootstrapping chain on the built-in synthetic shapes data: a CLIP teacher, an EVA-02 student "
          "MIM-pretrained against it, an EVA-CLIP whose vision tower starts from the student, and a CLIP from "
          "scratch with the same steps and batch size, evaluated on (shape, color) combinations never seen in "
          "training.",
    table=table_rows, conclude=_conclude, plots=(("loss_curves", plot_loss_curves), ("metrics", plot_metrics)),
    sections=_sections)
