"""``openeva quickstart``: the EVA chain (CLIP teacher -> EVA-02 MIM student -> EVA-CLIP, plus a CLIP from scratch
with the same compute) on built-in synthetic data, and ``openeva quickstart --data``: the chain on your labelled
images, each evaluated and reported, in minutes on a CPU.

Both chains are lists of stages (:mod:`.stages`) over one config base (:mod:`.config`), one report writer
(:mod:`.report`) and one ``--minutes`` planner (:mod:`.budget`)::

    from openeva.quickstart import QuickstartConfig, format_table, run_quickstart
    report = run_quickstart("quickstart_out", QuickstartConfig.preset("fast"))
    print(format_table(report))
"""

from openeva.quickstart.builtin import STAGES, QuickstartConfig, run_quickstart
from openeva.quickstart.builtin_view import compare
from openeva.quickstart.report import load_report
from openeva.quickstart.stages import QuickstartStageError
from openeva.quickstart.user_chain import UserChainConfig, run_user_quickstart
from openeva.quickstart.views import format_table, write_report

__all__ = ["STAGES", "QuickstartConfig", "QuickstartStageError", "UserChainConfig", "compare", "format_table",
           "load_report", "run_quickstart", "run_user_quickstart", "write_report"]
