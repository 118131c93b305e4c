"""The one report writer of the quickstart chains: ``report.json``, PNG plots, a one-page ``report.html`` and the
printed table, from the plain JSON-able report dict a chain fills.

What differs between the chains is a :class:`ReportView`: the table's rows, the verdict (computed from the
numbers by the view's ``conclude``, never written by hand), the plots and the page's chain-specific sections. The
writer does the rest the same way for both, so a report can be re-rendered from ``report.json`` alone.
"""

from __future__ import annotations

import html
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

import openeva
from openeva.runtime import atomic_write_text, cpu_capability

Table = tuple[list[str], list[list[str]]]  # (header, rows of cells)


@dataclass(frozen=True)
class ReportView:
    """How a chain's report is shown.

    ``intro``: one paragraph saying what the chain did. ``table(report)``: the results table. ``conclude(report)``:
    compute the verdict into the report and return its sentence (None while there is none). ``plots``: (file stem,
    ``draw(report, path)``) pairs; a draw raises ValueError when there is nothing to plot. ``sections(report)``:
    extra (heading, HTML) parts of the page.
    """

    intro: str
    table: Callable[[dict], Table]
    conclude: Callable[[dict], str | None]
    plots: tuple[tuple[str, Callable[[dict, Path], Path]], ...] = ()
    sections: Callable[[dict], list[tuple[str, str]]] = lambda report: []


def new_report(chain: str, title: str, config: dict, stages: list | dict, **fields) -> dict:
    """The report's head: which chain (``builtin``, ``data``), title, time, versions, machine (with the CPU's
    capability) and the config."""
    return {"chain": chain, "title": title, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"openeva": openeva.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "machine": {"cpu_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
                        **cpu_capability()},
            **fields, "config": config, "stages": stages}


def pct(value) -> str:
    """A fraction as a percent with one decimal; "-" for a missing value."""
    return "-" if value is None else f"{100 * float(value):.1f}"


def format_table(report: dict, view: ReportView) -> str:
    """The results as a fixed-width text table (names left, numbers right), the verdict below it."""
    header, rows = view.table(report)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    sentence = view.conclude(report)
    return "\n".join(out + ["", sentence] if sentence else out)


# -------------------------------------------------------------------------------------------------- plots
def figure(width: float, height: float):
    """A matplotlib Figure without pyplot (no global state, no display backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------------- html
_STYLE = """body { font-family: sans-serif; max-width: 1100px; margin: 1.5em auto; color: #222; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
td:first-child, th:first-child, td:nth-child(2) { text-align: left; }
img { max-width: 100%; } .verdict { font-size: 1.1em; background: #f4f6f8; padding: .6em; }
.bad { color: #b00; } pre { font-size: 12px; background: #f8f8f8; padding: .5em; overflow-x: auto; }"""


def html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    cells = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def render_html(report: dict, view: ReportView, plot_files: list[str]) -> str:
    """One self-contained page (plots linked relative to it): intro, verdict, table, the view's sections, plots,
    notes, settings."""
    e = html.escape
    title = e(report.get("title", "openeva quickstart"))
    sentence = view.conclude(report) or "no verdict: the chain has not finished"
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    parts = [f"<h1>{title}</h1>",
             f"<p>{e(view.intro)} Total wall time {report.get('wall_s', 0):.0f} s; seed "
             f"{report.get('config', {}).get('seed')}; {e(report.get('created', ''))}; {e(versions)}.</p>",
             f'<p class="verdict">{e(sentence)}</p>', "<h2>Results</h2>", html_table(*view.table(report))]
    parts += [f"<h2>{e(heading)}</h2>{body}" for heading, body in view.sections(report)]
    if plot_files:
        parts.append("<h2>Plots</h2>" + "".join(f'<p><img src="{e(p)}" alt="{e(p)}"></p>' for p in plot_files))
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    settings = e(json.dumps({"config": report.get("config", {}), "machine": report.get("machine", {})}, indent=1,
                            default=str))
    parts.append(f"<h2>Settings</h2><pre>{settings}</pre>")
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>\n<style>\n{_STYLE}\n'
            "</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ------------------------------------------------------------------------------------------------ writing
def write_report(report: dict, out_dir, view: ReportView, final: bool = True) -> dict[str, str]:
    """Conclude the report and write ``report.json`` and ``report.html`` under ``out_dir`` (atomically), with
    ``plots/*.png`` when ``final`` (a partial report after each stage skips the plots).

    Returns the written paths: ``json``, ``html`` and ``plots`` (a list). A plot that cannot be drawn (e.g. every
    stage failed) is skipped and named in the report's notes instead of failing the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    view.conclude(report)
    plot_files = []
    for stem, draw in view.plots if final else ():
        try:
            draw(report, out / "plots" / f"{stem}.png")
        except ValueError as err:
            report.setdefault("notes", []).append(f"plot {stem} not drawn: {err}")
            continue
        plot_files.append(f"plots/{stem}.png")
    if final:
        report["plots"] = plot_files
    json_path = atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=_jsonable))
    html_path = atomic_write_text(out / "report.html", render_html(report, view, report.get("plots", [])))
    return {"json": str(json_path), "html": str(html_path), "plots": [str(out / p) for p in plot_files]}


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
