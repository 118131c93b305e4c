"""Run a test file as several gloo processes: ``python FILE RANK STORE OUT`` for each rank, all at once.

The file's ``__main__`` block joins a process group through a FileStore at STORE and writes its results under OUT;
the caller reads them back. A rank that fails fails the test with the end of its stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_ranks(script: str, world_size: int, out: Path, timeout_s: float = 180) -> None:
    procs = [subprocess.Popen([sys.executable, script, str(rank), str(out / "store"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(world_size)]
    try:
        outputs = [proc.communicate(timeout=timeout_s) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, (_, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{err[-3000:]}"
