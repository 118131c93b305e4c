"""What a user watches: a progress bar (throughput, ETA, loss), JSONL + TensorBoard metrics, and a PNG plot.

Only rank 0 writes. On resume, metric records after the resumed step (written before the interruption,
after the last checkpoint) are dropped from ``metrics.jsonl`` and TensorBoard (``purge_step``), so the
logs of a resumed run read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm.auto import tqdm


def _number(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` (an unparsable last line, from a crash mid-write, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class RunLogger:
    """JSONL + TensorBoard + progress bar for one process (a no-op unless ``enabled``)."""

    def __init__(self, run_dir: str | Path, enabled: bool, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        self.bar = None
        self._t0, self._step0 = time.perf_counter(), start_step
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step] if start_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict, prefix: str = "train") -> None:
        """Append ``{"step", "split", **metrics}`` to the JSONL and TensorBoard (``prefix/name``)."""
        if not self.enabled:
            return
        record = {"step": step, "split": prefix, "time": round(time.time(), 3)}
        record.update({k: _number(v) if _number(v) is not None else v for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if _number(v) is not None:
                    self.writer.add_scalar(f"{prefix}/{k}", _number(v), step)

    def progress(self, step: int, loss: float | None, samples_per_s: float | None) -> None:
        """Advance the bar to ``step`` (tqdm shows the ETA) with loss and throughput."""
        if self.bar is None:
            return
        self.bar.update(step - self.bar.n)
        post = {}
        if loss is not None:
            post["loss"] = f"{loss:.4f}"
        if samples_per_s is not None:
            post["samples/s"] = f"{samples_per_s:.1f}"
        self.bar.set_postfix(post, refresh=False)

    def write(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def plot_run(metrics_path: str | Path, out_dir: str | Path) -> Path | None:
    """``out_dir/training.png``: training loss, learning rate and logit scale over steps (plus validation
    loss on the loss panel). None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train:
        return None
    panels = [("loss", "loss"), ("lr", "learning rate"), ("logit_scale", "logit scale")]
    panels = [(k, t) for k, t in panels if any(_number(r.get(k)) is not None for r in train)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        pts = [(r["step"], _number(r[key])) for r in train if _number(r.get(key)) is not None]
        ax.plot(*zip(*pts), label="train")
        if key == "loss":
            vpts = [(r["step"], _number(r["loss"])) for r in val if _number(r.get("loss")) is not None]
            if vpts:
                ax.plot(*zip(*vpts), "o-", label="val")
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
