"""Linear probe and kNN at Fashion-MNIST size (60,000 x D train features, 10,000 test): time and accuracy of
the former exhaustive weight-decay search against the subsampled, warm-started one, in the same run.

    apt-get install dataset-fashion-mnist   # real images at /usr/share/datasets/fashion-mnist (IDX .gz)
    .venv/bin/python benchmarks/bench_linear_probe.py --dim 384 --threads 2

Features are a fixed random ReLU projection of the real pixels (784 -> D), a stand-in for a backbone's frozen
features that keeps the class structure of real images without a 70,000-image forward pass on the CPU.
Without the data set installed, ``--synthetic`` draws a Gaussian class mixture of the same shape instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import RESULTS_DIR, environment, write_json  # noqa: E402

from openeva.eval.knn import knn_classify  # noqa: E402
from openeva.eval.linear_probe import DEFAULT_SEARCH_SAMPLES, evaluate_linear_probe  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BEFORE_COMMIT = "0d97e30"  # the linear probe before issue 13: exhaustive search, cold starts, autograd gradient


def probe_at(commit: str):
    """``evaluate_linear_probe`` as it was at ``commit`` (read from git), to time against the current one."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{commit}:src/openeva/eval/linear_probe.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"linear_probe_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module.evaluate_linear_probe


def fashion_mnist_features(root: Path, dim: int, seed: int = 0):
    """(train_x (60000, dim), train_y, test_x (10000, dim), test_y): ReLU(pixels @ random (784, dim))."""
    from openeva.data.idx import read_idx

    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(784, dim, generator=g) / 28.0  # (784, D)
    out = []
    for split in ("train", "t10k"):
        pixels = torch.from_numpy(read_idx(root / f"{split}-images-idx3-ubyte.gz").copy()).float() / 255.0
        labels = torch.from_numpy(read_idx(root / f"{split}-labels-idx1-ubyte.gz").copy()).long()
        x = pixels.flatten(1)  # (N, 784)
        out += [torch.relu((x - x.mean()) @ proj), labels]  # (N, D), (N,)
    return out


def synthetic_features(dim: int, seed: int = 0, n_train: int = 60_000, n_test: int = 10_000, classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 0.15  # (C, D): overlapping classes, accuracy well < 100%
    out = []
    for n in (n_train, n_test):
        y = torch.randint(0, classes, (n,), generator=g)
        out += [centers[y] + torch.randn(n, dim, generator=g), y]
    return out


def render(report: dict) -> str:
    """Markdown table of a result JSON (written next to it as ``.md``)."""
    env = report["environment"]
    lines = [f"Linear probe on {report['num_train']:,} x {report['dim']} train / {report['num_test']:,} test "
             f"features ({report['source']}), 6 weight decays; kNN k=20 for scale.", "",
             "| variant | seconds | test top-1 | chosen weight decay |", "|---|---|---|---|"]
    for row in report["linear_probe"]:
        lines.append(f"| {row['variant']} | {row['seconds']:.0f} | {100 * row['acc1']:.2f}% | {row['weight_decay']:g} |")
    lines.append(f"| kNN (k=20), for scale | {report['knn_k20']['seconds']:.0f} | {100 * report['knn_k20']['acc1']:.2f}% | - |")
    if "speedup" in report:
        lines += ["", f"Speed-up, same run: **{report['speedup']:.1f}x**."]
    lines += ["", f"_Machine: {env['device']}, {env['threads']} thread(s), torch {env['torch']}, capability "
                  f"{env['torch_cpu_capability']}, mkldnn bf16 {report['mkldnn_bf16_supported']}, 1-min load average "
                  f"{env['load_average_1m']} at start; {report['note']}._"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--synthetic", action="store_true", help="Gaussian mixture instead of Fashion-MNIST")
    p.add_argument("--search-samples", type=int, default=DEFAULT_SEARCH_SAMPLES)
    p.add_argument("--skip-before", action="store_true", help="only time the current defaults")
    p.add_argument("--out", default=str(RESULTS_DIR / "linear_probe.json"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md table from --out and exit")
    args = p.parse_args()
    if args.render_only:
        import json

        Path(args.out).with_suffix(".md").write_text(render(json.loads(Path(args.out).read_text())))
        return
    torch.set_num_threads(args.threads)

    if args.synthetic:
        data, source = synthetic_features(args.dim), "synthetic Gaussian mixture"
    elif (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        data, source = fashion_mnist_features(FASHION_MNIST, args.dim), "Fashion-MNIST random ReLU features"
    else:
        raise SystemExit(f"{FASHION_MNIST} not found: `apt-get install dataset-fashion-mnist`, or pass --synthetic")
    train_x, train_y, test_x, test_y = data
    print(f"{source}: train {tuple(train_x.shape)} test {tuple(test_x.shape)}", flush=True)

    variants = {"after (subsampled search, warm starts)": (evaluate_linear_probe, dict(
        search_samples=args.search_samples, warm_start=True))}
    if not args.skip_before:
        variants[f"before ({BEFORE_COMMIT}: exhaustive search, cold starts)"] = (probe_at(BEFORE_COMMIT), {})
    rows = []
    for label, (probe, options) in variants.items():
        t0 = time.perf_counter()
        result = probe(train_x, train_y, test_x, test_y, 10, **options)
        seconds = time.perf_counter() - t0
        row = {"variant": label, **options, "seconds": round(seconds, 2), "acc1": round(result.metrics["acc1"], 4),
               "weight_decay": result.weight_decay, "search_val_acc1": {str(k): round(v, 4)
                                                                        for k, v in result.val_acc1.items()}}
        rows.append(row)
        print(row, flush=True)
    t0 = time.perf_counter()
    knn_metrics, _ = knn_classify(train_x, train_y, test_x, test_y, 10)
    knn = {"seconds": round(time.perf_counter() - t0, 2), "acc1": round(knn_metrics["acc1"], 4)}
    print("knn", knn, flush=True)

    report = {"benchmark": "linear_probe", "source": source, "dim": args.dim, "num_train": len(train_y),
              "num_test": len(test_y), "linear_probe": rows, "knn_k20": knn,
              "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "note": "2-core machine shared with other engineers' jobs; before/after run in the same process",
              "environment": environment()}
    if len(rows) == 2:
        report["speedup"] = round(rows[1]["seconds"] / rows[0]["seconds"], 2)
    print("wrote", write_json(args.out, report))
    Path(args.out).with_suffix(".md").write_text(render(report))


if __name__ == "__main__":
    main()
