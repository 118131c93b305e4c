"""How the report of ``openeva quickstart --data`` is shown (:data:`VIEW` for :mod:`.report`), with its verdict.

The verdict compares the fine-tune from the MIM student (a) with the fine-tune from random weights at equal
steps (b) and at equal CPU time (c), by the noise rule of :mod:`.noise`, paired over the validation images: every
arm records which validation images it got right (``val_correct``).

Report dict shape (filled by :mod:`.user_chain`)::

    {"title", "created", "versions", "machine", "data", "val", "templates", "config", "wall_s",
     "data_counts": {"train", "val", "skipped", "classes"}, "budget": {...} (with --minutes),
     "stages": {"teacher": {"metrics": {"zeroshot_acc1", ...}}, "mim": {...},
                "probes": {"student": {...}, "random": {...}}, "finetune_student": {"acc1", "val_correct", ...},
                "finetune_random_equal_steps": {...}, "finetune_random_equal_time": {...}},
     "equal_time": {...}, "verdict": {...}}
"""

from __future__ import annotations

import html
import json

from openeva.quickstart.noise import NOISE_SIGMAS, difference
from openeva.quickstart.report import ReportView, figure, pct, save_figure

ARMS = (("finetune_student", "(a) fine-tune from the MIM student"),
        ("finetune_random_equal_steps", "(b) from random weights, same steps"),
        ("finetune_random_equal_time", "(c) from random weights, same CPU time as the chain"))


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

    def arm(key: str) -> tuple[float, str | None]:
        return st[key]["acc1"], st[key].get("val_correct")

    def probe_of(who: str) -> tuple[float, str | None]:
        p = st["probes"][who]
        return p["linear_probe_acc1"], p.get("linear_probe_val_correct")

    def vs(first: tuple, second: tuple) -> dict:
        return difference(first[0], second[0], n, first[1], second[1])

    a = arm("finetune_student")
    steps = vs(a, arm("finetune_random_equal_steps"))
    timed = vs(a, arm("finetune_random_equal_time"))
    probe = vs(probe_of("student"), probe_of("random"))
    keeps = vs(a, probe_of("student"))
    sentence = (_phrase("At equal steps", steps) + "; " + _phrase("at equal CPU time", timed)
                + f". The student's frozen linear probe is {100 * probe['diff']:+.1f} points from random features"
                + f", and its fine-tune is {100 * keeps['diff']:+.1f} points from that probe"
                + f" ({'beyond' if keeps['beyond_noise'] else 'within'} noise, +-{200 * keeps['se']:.1f}).")
    return {"equal_steps": steps, "equal_time": timed, "probe_vs_random": probe, "finetune_vs_probe": keeps,
            "noise_sigmas": NOISE_SIGMAS, "n_val": n, "sentence": sentence}


def _conclude(report: dict) -> str | None:
    """The verdict once every arm and the probes have finished, else None (a partial report has none)."""
    st = report["stages"]
    if not all(st.get(k, {}).get("status") == "ok" for k in ("probes", *(key for key, _ in ARMS))):
        return None
    report["verdict"] = verdict(report)
    return report["verdict"]["sentence"]


def _table(report: dict) -> tuple[list[str], list[list[str]]]:
    st = report["stages"]
    rows = []
    if st.get("teacher", {}).get("status") == "ok":
        rows.append(["CLIP teacher zero-shot", pct(st["teacher"]["metrics"]["zeroshot_acc1"])])
    if st.get("probes", {}).get("status") == "ok":
        for who in ("student", "random"):
            p = st["probes"][who]
            rows.append([f"frozen {who}: linear probe / kNN-10 / kNN-20",
                         " / ".join(pct(p[k]) for k in ("linear_probe_acc1", "knn10_acc1", "knn20_acc1"))])
    for key, title in ARMS:
        if st.get(key, {}).get("status") == "ok":
            rows.append([f"{title} ({st[key]['steps']} steps, {st[key]['wall_s']:.0f} s)", pct(st[key]["acc1"])])
    rows += [[f"{name} [failed]", s["error"]] for name, s in st.items() if s.get("status") == "failed"]
    return ["stage", "validation top-1 (%)"], rows


def plot_accuracies(report: dict, path):
    """Bars: the three fine-tunes, the two frozen probes and the teacher's zero-shot accuracy."""
    st = report["stages"]
    bars = [(title.split(")")[0] + ")", st[key]["acc1"]) for key, title in ARMS
            if st.get(key, {}).get("status") == "ok"]
    if st.get("probes", {}).get("status") == "ok":
        bars += [("LP student", st["probes"]["student"]["linear_probe_acc1"]),
                 ("LP random", st["probes"]["random"]["linear_probe_acc1"])]
    if st.get("teacher", {}).get("status") == "ok":
        bars.append(("zero-shot", st["teacher"]["metrics"]["zeroshot_acc1"]))
    if not bars:
        raise ValueError("no stage has an accuracy to plot")
    fig = figure(7, 3.2)
    ax = fig.add_subplot()
    ax.bar([b[0] for b in bars], [100 * b[1] for b in bars], color="#4a7bb7")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("fine-tunes (a, b, c), frozen probes, teacher zero-shot", fontsize=10)
    return save_figure(fig, path)


def _sections(report: dict) -> list[tuple[str, str]]:
    e = html.escape
    paired = report.get("verdict", {}).get("equal_steps", {}).get("paired", True)
    noise = ("paired over the same validation images (only the images two arms disagree on carry noise)" if paired
             else "as two independent binomials on the validation images (no per-image results to pair)")
    data = (f"<p>data: {e(str(report.get('data')))}; validation: {e(str(report.get('val') or '20% of the data'))}; "
            f"counts: {e(json.dumps(report.get('data_counts', {})))}</p>")
    return [("Data", data), ("Noise", f"<p>A difference counts when it exceeds {NOISE_SIGMAS:g} standard errors of "
                                      f"the difference, {e(noise)}.</p>")]


VIEW = ReportView(
    intro="The EVA chain on your labelled images: a CLIP teacher on captions made from the class names, an EVA-02 "
          "student MIM-pretrained against it, frozen probes of the student and of random weights, and fine-tunes "
          "(a) from the student, (b) from random weights with the same steps, (c) from random weights with the "
          "CPU time of the whole chain.",
    table=_table, conclude=_conclude, plots=(("accuracies", plot_accuracies),), sections=_sections)
