"""``openeva quickstart``: the whole EVA chain (CLIP teacher -> EVA-02 MIM student -> EVA-CLIP, plus a CLIP from
scratch with the same compute) on built-in synthetic data, evaluated and reported, in minutes on a CPU.

    from openeva.quickstart import QuickstartConfig, run_quickstart
    report = run_quickstart("quickstart_out", QuickstartConfig.preset("full"))
    print(format_table(report))
"""

from openeva.quickstart.pipeline import STAGES, QuickstartConfig, QuickstartStageError, run_quickstart
from openeva.quickstart.report import compare, format_table, load_report, write_report

__all__ = ["STAGES", "QuickstartConfig", "QuickstartStageError", "compare", "format_table", "load_report",
           "run_quickstart", "write_report"]
