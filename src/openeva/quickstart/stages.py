"""The one stage runner of the quickstart chains: a chain is a list of :class:`Stage` run by :class:`ChainRun`.

The runner owns what every chain needs around its stages: the output-folder guard (:func:`open_out_dir`),
a start line, sub-step lines (:meth:`ChainRun.say`) and an end line with the time for each stage, the stage's
report entry filed in the report, the partial report written after each stage (so a later failure or a kill
leaves what was measured), and any failure turned into a :class:`QuickstartStageError` naming the stage, with the
failed stage in the written report.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from openeva.quickstart.report import ReportView, write_report


class QuickstartStageError(RuntimeError):
    """A quickstart stage failed; ``stage`` names it, the original error is the ``__cause__``."""

    def __init__(self, stage: str, error: BaseException, out_dir: Path | None = None):
        self.stage = stage
        where = f" (partial report in {out_dir / 'report.html'})" if out_dir is not None else ""
        super().__init__(f"quickstart stage {stage!r} failed: {type(error).__name__}: {error}{where}")


@dataclass(frozen=True)
class Stage:
    """One step of a chain: ``run()`` trains and/or measures and returns the stage's report entry (JSON-able)."""

    name: str
    title: str
    run: Callable[[], dict]


def open_out_dir(out: Path, outputs: Sequence[str], overwrite: bool) -> None:
    """Create ``out``; refuse (ValueError) one that holds any of a chain's ``outputs`` unless ``overwrite``,
    which removes them first (and nothing else in the folder)."""
    existing = [out / n for n in outputs if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds a quickstart ({', '.join(p.name for p in existing)}); pass "
                         "overwrite=True (--overwrite) or another output folder (--out)")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class ChainRun:
    """One run of a chain: its output folder, the report being filled and how it is shown, and the log.

    ``report["stages"]`` is a list (entries carry ``name`` and ``title``) or a dict keyed by stage name; the
    runner files each entry the way the report holds them.
    """

    out: Path
    report: dict
    view: ReportView
    log: Callable[[str], None] = print
    prefix: str = "[quickstart]"
    t0: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        """A progress line under the chain's prefix."""
        self.log(f"{self.prefix} {message}")

    def run(self, stages: Sequence[Stage]) -> None:
        """Run ``stages`` in order (see the module doc); raises :class:`QuickstartStageError` on the first failure."""
        for stage in stages:
            self.say(f"{stage.title} ...")
            start = time.perf_counter()
            try:
                entry = stage.run()
            except Exception as err:  # every failure is reported under its stage's name, the report written first
                self._file(stage, {"status": "failed", "error": f"{type(err).__name__}: {err}"})
                self.finish()
                raise QuickstartStageError(stage.name, err, self.out) from err
            entry.setdefault("status", "ok")
            entry.setdefault("total_s", time.perf_counter() - start)
            self._file(stage, entry)
            self.say(f"{stage.title}: done in {entry['total_s']:.0f} s")
            write_report(self.report, self.out, self.view, final=False)

    def entry(self, name: str) -> dict:
        """The report entry of the finished stage ``name``."""
        stages = self.report["stages"]
        if isinstance(stages, dict):
            return stages[name]
        return next(s for s in stages if s["name"] == name)

    def finish(self) -> dict[str, str]:
        """Total wall time into the report (and the budget's), the whole report written; returns the paths."""
        self.report["wall_s"] = time.perf_counter() - self.t0
        if "budget" in self.report:  # a --minutes plan is kept next to the time the run took
            self.report["budget"]["actual_s"] = self.report["wall_s"]
        self.report["paths"] = write_report(self.report, self.out, self.view)
        return self.report["paths"]

    def _file(self, stage: Stage, entry: dict) -> None:
        if isinstance(self.report["stages"], dict):
            self.report["stages"][stage.name] = entry
        else:
            self.report["stages"].append({"name": stage.name, "title": stage.title, **entry})
