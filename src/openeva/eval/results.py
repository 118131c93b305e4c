"""Result records in CLIP_benchmark's shape, their schema check, CSV merge and a printed table.

One JSON per (dataset, model, pretrained, task)::

    {"dataset": "cifar10", "model": "EVA02-B-16", "pretrained": "merged2b", "task": "zeroshot_classification",
     "metrics": {"acc1": 0.98, ...}, "language": "en", "num_skipped": 0, ...}

Task names match CLIP_benchmark where it has the task (``zeroshot_classification``, ``zeroshot_retrieval``,
``linear_probe``); ``knn`` and ``finetune`` are ours. Extra top-level fields are allowed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from openeva import __version__

# CLI task -> result "task" field
TASK_NAMES = {
    "zeroshot": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "linear_probe": "linear_probe",
    "knn": "knn",
    "finetune": "finetune",
    "segmentation": "segmentation",
    "zeroshot_video": "zeroshot_video_classification",
}
REQUIRED_FIELDS = {"dataset": str, "model": str, "pretrained": str, "task": str, "metrics": dict, "language": str}
BASE_COLUMNS = ("dataset", "model", "pretrained", "task")
EXTRA_COLUMNS = ("num_samples", "num_skipped")


def make_result(
    dataset: str,
    model: str,
    pretrained: str | None,
    task: str,
    metrics: dict[str, float],
    language: str = "en",
    **extra,
) -> dict:
    """Build and validate a result record; ``task`` may be the CLI name (``zeroshot``) or the record name."""
    result = {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained or "",
        "task": TASK_NAMES.get(task, task),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "language": language,
        **extra,
    }
    result.setdefault("openeva_version", __version__)
    result.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return validate_result(result)


def validate_result(result) -> dict:
    """Raise ValueError listing every schema problem; return the result unchanged when it is valid."""
    if not isinstance(result, dict):
        raise ValueError(f"a result must be a JSON object, got {type(result).__name__}")
    problems = []
    for key, kind in REQUIRED_FIELDS.items():
        if key not in result:
            problems.append(f"missing field {key!r}")
        elif not isinstance(result[key], kind):
            problems.append(f"field {key!r} must be {kind.__name__}, got {type(result[key]).__name__}")
    for key in ("dataset", "model", "task"):
        if isinstance(result.get(key), str) and not result[key]:
            problems.append(f"field {key!r} is empty")
    known = set(TASK_NAMES.values())  # built-ins, plus tasks registered with eval.tasks.register_eval_task
    if isinstance(result.get("task"), str) and result["task"] and result["task"] not in known:
        problems.append(f"unknown task {result['task']!r}; known: {sorted(known)}")
    metrics = result.get("metrics")
    if isinstance(metrics, dict):
        if not metrics:
            problems.append("metrics is empty")
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                problems.append(f"metric name {name!r} must be a non-empty string")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"metric {name!r} must be a finite number, got {value!r}")
    if "num_skipped" in result and (
        isinstance(result["num_skipped"], bool) or not isinstance(result["num_skipped"], int) or result["num_skipped"] < 0
    ):
        problems.append(f"num_skipped must be a non-negative integer, got {result['num_skipped']!r}")
    if problems:
        raise ValueError("invalid result: " + "; ".join(problems))
    return result


RUNS_DIR = "finetune_runs"  # eval/finetune.py keeps its training runs here


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "none"


def result_filename(result: dict) -> str:
    """``dataset__model__pretrained__task.json``; a path-valued part keeps its last name plus a short hash of the
    whole path, so ``runs/a/final`` and ``runs/b/final`` do not overwrite each other's results."""
    parts = (result["dataset"], result["model"], result["pretrained"] or "none", result["task"])
    return "__".join(_slug(_short(p)) for p in parts) + ".json"


def _short(value: str) -> str:
    if "/" not in value:
        return value
    return f"{Path(value).name}-{hashlib.sha1(value.encode()).hexdigest()[:6]}"


def save_result(result: dict, output_dir) -> Path:
    validate_result(result)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_filename(result)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def load_results(paths: Iterable) -> list[dict]:
    """Load and validate result JSONs; a folder contributes every ``*.json`` below it, except the training runs
    (configs, checkpoints) the finetune task keeps in ``finetune_runs/`` beside its results."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.json") if RUNS_DIR not in f.relative_to(p).parts[:-1])
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"result file or folder not found: {p}")
    results = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            results.append(validate_result(data))
        except (json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"{f}: {e}") from e
    if not results:
        raise ValueError(f"no result JSON files found in {[str(p) for p in paths]}")
    return results


def _metric_columns(results: Sequence[dict]) -> list[str]:
    cols: list[str] = []
    for r in results:
        cols += [m for m in r["metrics"] if m not in cols]
    return cols


def write_csv(results: Sequence[dict], out_path) -> Path:
    """A wide table: one row per result, one column per metric name seen in any result (blank if absent)."""
    metric_cols = _metric_columns(results)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*BASE_COLUMNS, *metric_cols, *EXTRA_COLUMNS])
        for r in results:
            writer.writerow([r[c] for c in BASE_COLUMNS]
                            + [r["metrics"].get(m, "") for m in metric_cols]
                            + [r.get(c, "") for c in EXTRA_COLUMNS])
    return out


def merge_results(paths: Iterable, out_path) -> Path:
    """``openeva eval-merge``: result JSON files/folders -> one CSV."""
    return write_csv(load_results(paths), out_path)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _headline(metric: str) -> bool:
    """Metrics worth a column in the printed table (the CSV keeps them all)."""
    return not metric.endswith(("_rank", "_acc5")) or not re.match(r"(knn\d+|text_retrieval|image_retrieval)", metric)


def format_table(results: Sequence[dict], max_metrics: int = 8) -> str:
    """Plain-text tables, one per task, with up to ``max_metrics`` headline metric columns each."""
    blocks = []
    for task in dict.fromkeys(r["task"] for r in results):
        group = [r for r in results if r["task"] == task]
        metric_cols = [m for m in _metric_columns(group) if _headline(m)][:max_metrics]
        header = ["dataset", "model", "pretrained", *metric_cols, "skipped"]
        rows = [[r["dataset"], r["model"], r["pretrained"] or "-"]
                + [_fmt(r["metrics"][m]) if m in r["metrics"] else "" for m in metric_cols]
                + [str(r.get("num_skipped", ""))] for r in group]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines = [f"== {task} =="]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
