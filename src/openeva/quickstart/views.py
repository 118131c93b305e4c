"""Each chain's report view by name, so a report dict (or a ``report.json`` read back) is shown or re-written
without knowing which chain made it: ``format_table(report)``, ``write_report(report, out_dir)``."""

from __future__ import annotations

from openeva.quickstart import report as report_mod
from openeva.quickstart.builtin_view import VIEW as BUILTIN_VIEW
from openeva.quickstart.report import ReportView
from openeva.quickstart.user_view import VIEW as USER_VIEW

VIEWS = {"builtin": BUILTIN_VIEW, "data": USER_VIEW}


def view_of(report: dict) -> ReportView:
    """The view of the chain that wrote ``report`` (its ``chain`` field; older reports by their stages' layout)."""
    chain = report.get("chain") or ("data" if isinstance(report.get("stages"), dict) else "builtin")
    if chain not in VIEWS:
        raise ValueError(f"report of unknown chain {chain!r}; known: {sorted(VIEWS)}")
    return VIEWS[chain]


def format_table(report: dict) -> str:
    """The report's results table with its verdict (:func:`openeva.quickstart.report.format_table`)."""
    return report_mod.format_table(report, view_of(report))


def write_report(report: dict, out_dir) -> dict[str, str]:
    """Re-write the report's json, html and plots under ``out_dir`` (:func:`openeva.quickstart.report.write_report`)."""
    return report_mod.write_report(report, out_dir, view_of(report))
