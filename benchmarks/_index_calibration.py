"""The reference for the clustered vectors: top-10 neighbour similarities of real image embeddings.

Fashion-MNIST (Debian's ``dataset-fashion-mnist``) is read through openeva's data layer and written as class
folders with class-name captions (the quickstart's :func:`prepare_user_data`); a small CLIP (``EVA02-test``, the
``clip_tiny`` recipe's model; ``--model EVA02-quickstart`` for the quickstart's larger teacher) is trained on those
captions with ``openeva train``'s engine (the ``clip_tiny`` recipe) for a few hundred steps;
``openeva embed`` embeds the held-out test images; the top-10 cosine similarities of every embedding to the others
are summarised (:func:`_index_vectors.describe`) and cached in ``benchmarks/results/index_scale_reference.json``,
so the benchmark itself never retrains. The fitted generator is stored beside it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import _index_vectors as iv

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def reference_embeddings(work: Path, steps: int, train_samples: int, val_samples: int, model: str = "EVA02-test",
                         log=print) -> tuple[Path, dict]:
    """Train the small CLIP and embed the held-out images; -> (embedding folder, facts about the run)."""
    import torch

    from openeva.configs import load_config
    from openeva.data.classnames import load_classnames
    from openeva.quickstart.user_chain import UserChainConfig, prepare_user_data
    from openeva.serve.embed import embed
    from openeva.train.config import ModelConfig
    from openeva.train.runner import train

    if not Path(FASHION_MNIST).is_dir():
        raise FileNotFoundError(f"{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist")
    torch.set_num_threads(2)
    facts = {"dataset": FASHION_MNIST, "model": model, "recipe": "clip_tiny", "steps": steps, "batch_size": 128,
             "train_images": train_samples}
    t0 = time.perf_counter()
    data_dir = work / "fmnist"
    if not (data_dir / "data" / "train_captions.csv").is_file():
        log(f"writing {train_samples} training and {val_samples} test images of Fashion-MNIST ...")
        cfg = UserChainConfig(train_samples=train_samples, val_samples=val_samples, batch_size=128)
        prepare_user_data(FASHION_MNIST, FASHION_MNIST, data_dir, cfg, classnames=load_classnames("fashion_mnist"))
    run_dir = work / "runs" / f"clip_{model}_{steps}"
    if not (run_dir / "final").is_dir():
        log(f"training {model} on the class-name captions, {steps} steps ...")
        base = load_config("clip_tiny")
        cfg = base.replace(name=run_dir.name, output_dir=str(work / "runs"), progress=False, tensorboard=False, plot=False,
                           eval_every=0, save_every=steps, keep_last=1, log_every=50, device="cpu",
                           model=ModelConfig(name=model),
                           data=dataclasses.replace(base.data, train=str(data_dir / "data" / "train_captions.csv"),
                                                    batch_size=128, scale=(0.8, 1.0), val=None, zeroshot=None),
                           schedule=dataclasses.replace(base.schedule, warmup_steps=steps // 10, total_steps=steps),
                           optim=dataclasses.replace(base.optim, lr=2e-3))
        summary = train(cfg)
        facts["train_summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
        facts["data_and_train_s"] = round(time.perf_counter() - t0, 1)
    else:
        facts["trained"] = f"earlier (the run in {run_dir} was reused)"
    last = (run_dir / "metrics.jsonl").read_text().strip().splitlines()
    facts["final_train_loss"] = json.loads(last[-1]).get("loss") if last else None
    emb = work / f"fmnist_emb_{run_dir.name}"
    embed(str(data_dir / "data" / "val"), str(run_dir / "final"), str(emb), dtype="float32", progress=False,
          batch_size=256)
    return emb, facts


def build_reference(work: Path, out_json: Path, steps: int = 300, train_samples: int = 20_000,
                    val_samples: int = 10_000, tolerance: float = 0.03, model: str = "EVA02-test", log=print) -> dict:
    """Reference distribution + fitted generator, written to ``out_json``; returns that dict."""
    from openeva.serve.embed import load_embeddings
    from openeva.runtime import atomic_write_json

    emb, facts = reference_embeddings(work, steps, train_samples, val_samples, model, log)
    vectors, _, manifest = load_embeddings(emb)  # (N, E)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = iv.topk_similarities(vectors, vectors, k=10, exclude_self=True)  # (N, 10)
    reference = iv.describe(sims)
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(vectors), size=(20_000, 2))
    random_pairs = np.einsum("nd,nd->n", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    log("reference (Fashion-MNIST test images, top-10 neighbour cosine): " + json.dumps(reference["quantiles"]))
    log("fitting the clustered generator (dimension 512) ...")
    gen, fit = iv.fit_generator(reference, tolerance=tolerance, log=log)
    result = {"what": "top-10 neighbour cosine similarities of real image embeddings (pooled over ranks 1..10), and "
                      "the clustered generator fitted to them",
              "source": {**facts, "images": len(vectors), "embed_dim": int(manifest["dim"]),
                         "random_pair_cosine_median": round(float(np.median(random_pairs)), 4)},
              "reference": reference, "generator": gen.to_dict(), "fit": fit}
    atomic_write_json(out_json, result)
    return result
