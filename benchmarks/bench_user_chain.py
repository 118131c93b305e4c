"""The EVA chain on a real labelled image set (Fashion-MNIST), through ``openeva quickstart --data``'s code, plus a
sweep of fine-tune lengths and the 2 x 2 of recipes x initialisations that chose the recipes (issue 13, item 2).

    apt-get install dataset-fashion-mnist   # /usr/share/datasets/fashion-mnist (IDX .gz, 60k + 10k, 28 px)
    .venv/bin/python benchmarks/bench_user_chain.py --out-dir /tmp/fmnist_chain --train-samples 60000 \
        --val-samples 5000 --batch-size 128 --teacher-steps 400 --mim-steps 400 --finetune-steps 100 --sweep 200,400

1. The chain as ``openeva quickstart --data`` runs it: teacher CLIP -> MIM student -> frozen probes -> fine-tunes
   (a) student, pretrained recipe, head from its probe (LP-FT); (b) random weights, from-scratch recipe, same
   steps; (c) random weights, the chain's CPU time.
2. ``--sweep``: (a) and (b) again at other step counts, to show how the equal-steps margin moves with the budget.
3. Cross arms at ``--finetune-steps``: the student with the from-scratch recipe (fresh head), random weights with
   the pretrained recipe (fresh head), and the student with the pretrained recipe but a fresh head (what LP-FT adds).

Writes ``benchmarks/results/user_chain.json`` and ``.md``. ``--precision auto`` (the default) is resolved by the
CPU (bf16 only where oneDNN has native bf16), as the command does. Targets: the student's fine-tune beats its own
frozen linear probe and beats the from-scratch fine-tune at equal steps by >= 5 points; at equal CPU time, whichever
wins is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import RESULTS_DIR, environment, write_json  # noqa: E402

from openeva.eval.finetune_recipe import PRETRAINED_RECIPE, SCRATCH_RECIPE  # noqa: E402
from openeva.quickstart import format_table  # noqa: E402
from openeva.quickstart.noise import difference  # noqa: E402
from openeva.quickstart.user_chain import PreparedData, UserChainConfig, run_finetune_arm, run_user_quickstart  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSNAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
              "Ankle boot"]
CROSS_TITLES = {"student_scratch_recipe": "student, from-scratch recipe, fresh head",
                "random_pretrained_recipe": "random, pretrained recipe, fresh head",
                "student_fresh_head": "student, pretrained recipe, fresh head (no LP-FT)"}


def _arm(v: dict) -> dict:
    return {k: v[k] for k in ("acc1", "steps", "wall_s", "recipe", "probe_head")}


def render(result: dict) -> str:
    """Markdown tables of a result JSON (written next to it as ``.md``)."""
    s, c, env = result["summary"], result["config"], result["environment"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Fashion-MNIST, {result['counts']['train']} training / {result['counts']['val']} validation images "
             f"(stratified), batch {c['batch_size']}, {c['clip_model']} / {c['student_model']}, precision "
             f"{c['precision']}. Command: `{result['command']}`", "",
             "| stage | steps | CPU wall (s) | validation top-1 |", "|---|---|---|---|",
             f"| CLIP teacher zero-shot | {c['teacher_steps']} | - | {pct(s['teacher_zeroshot_acc1'])} |"]
    for who in ("student", "random"):
        p = s[f"{who}_probe"]
        lines.append(f"| frozen {who}: linear probe / kNN-10 / kNN-20 | - | - | {pct(p['linear_probe_acc1'])} / "
                     f"{pct(p['knn10_acc1'])} / {pct(p['knn20_acc1'])} |")
    titles = {"finetune_student": "(a) student, pretrained recipe, head from its probe (LP-FT)",
              "finetune_random_equal_steps": "(b) random, from-scratch recipe, same steps",
              "finetune_random_equal_time": "(c) random, from-scratch recipe, the chain's CPU time", **CROSS_TITLES}
    for key, arm in {**s["finetune"], **s["cross_arms"]}.items():
        lines.append(f"| {titles[key]} (`{arm['recipe']}`) | {arm['steps']} | {arm['wall_s']:.0f} | {pct(arm['acc1'])} |")
    noise = lambda d: f"{100 * d['diff']:+.1f} (+-{200 * d['se']:.1f})"  # noqa: E731
    paired = all(r["margin"].get("paired") for r in s["sweep"])
    lines += ["", "Equal steps, by fine-tune length ((a) vs (b), and (a) vs the student's frozen probe; noise: 2 "
              "standard errors, " + ("paired over the same validation images" if paired else "unpaired binomial")
              + "; both targets: (a) - (b) >= +5 and (a) above its probe beyond noise):", "",
              "| steps | (a) student LP-FT | (b) random | (a) - (b) | (a) - student probe | both targets |",
              "|---|---|---|---|---|---|"]
    for row in s["sweep"]:
        lines.append(f"| {row['steps']} | {pct(row['student'])} | {pct(row['random'])} | {noise(row['margin'])} | "
                     f"{noise(row['vs_probe'])} | {'met' if row['target_met'] else 'not met'} |")
    t = s["targets"]
    lines += ["", f"Verdict (computed, the chain's own budget): {s['verdict']['sentence']}", "",
              f"Targets at {c['finetune_steps']} steps: fine-tune (a) vs its own frozen probe "
              f"{noise(t['finetune_beats_own_probe'])} points ("
              f"{'beyond noise' if t['beats_probe_beyond_noise'] else 'NOT beyond noise'}); (a) vs (b) "
              f"{t['equal_steps_margin_points']:+.1f} points (target >= +5: "
              f"{'met' if t['equal_steps_target_met'] else 'NOT met'}); both met at the sweep's "
              f"{', '.join(str(r['steps']) for r in s['sweep'] if r['target_met']) or 'no'} step budget(s).", "",
              f"_Machine: {env['device']}, {env['threads']} thread(s), torch {env['torch']}, capability "
              f"{env['torch_cpu_capability']}, mkldnn bf16 {env['mkldnn_bf16']}; 1-min load average "
              f"{env['load_average_1m']} at start, {result['load_average_1m_end']} at end (other jobs on the 2 cores "
              f"make wall times, and so the equal-time step count, approximate); whole run {result['wall_s'] / 60:.0f} min._"]
    return "\n".join(lines) + "\n"


def sweep_row(steps: int, student: dict, random: dict, probe: dict, n: int) -> dict:
    """(a) vs (b) and (a) vs the student's probe at one fine-tune length, paired over the validation images."""
    ok = lambda arm, key="val_correct": arm.get(key)  # noqa: E731
    margin = difference(student["acc1"], random["acc1"], n, ok(student), ok(random))
    vs_probe = difference(student["acc1"], probe["linear_probe_acc1"], n, ok(student),
                          ok(probe, "linear_probe_val_correct"))
    return {"steps": steps, "student": student["acc1"], "random": random["acc1"], "margin": margin,
            "vs_probe": vs_probe, "target_met": 100 * margin["diff"] >= 5.0 and vs_probe["beyond_noise"]
            and vs_probe["diff"] > 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(FASHION_MNIST))
    p.add_argument("--out-dir", default="/tmp/openeva_user_chain")
    p.add_argument("--train-samples", type=int, default=60000)
    p.add_argument("--val-samples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--teacher-steps", type=int, default=800)  # the defaults of `openeva quickstart --data`
    p.add_argument("--mim-steps", type=int, default=800)
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--sweep", default="100,200", help="more fine-tune lengths for (a) and (b), comma list ('' none)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-cross-arms", action="store_true")
    p.add_argument("--out", default=str(RESULTS_DIR / "user_chain.json"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md table from --out and exit")
    args = p.parse_args()
    if args.render_only:
        Path(args.out).with_suffix(".md").write_text(render(json.loads(Path(args.out).read_text())))
        return
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data} not found: `apt-get install dataset-fashion-mnist`")
    torch.set_num_threads(args.threads)
    env = environment()
    cfg = UserChainConfig(train_samples=args.train_samples, val_samples=args.val_samples, batch_size=args.batch_size,
                          teacher_steps=args.teacher_steps, mim_steps=args.mim_steps,
                          finetune_steps=args.finetune_steps, precision=args.precision)
    out = Path(args.out_dir)
    report = run_user_quickstart(args.data, out, cfg, val=args.data, classnames=CLASSNAMES, progress=False,
                                 overwrite=True)
    run_cfg = UserChainConfig(**report["config"])  # precision resolved by the chain
    st = report["stages"]
    n = report["data_counts"]["val"]
    prepared = PreparedData(out / "data" / "train", out / "data" / "val", out / "data" / "train_captions.csv",
                            CLASSNAMES, report["data_counts"]["train"], n, 0)
    student = str(out / "mim" / "final")
    probe = st["probes"]["student"]
    sweep = [sweep_row(args.finetune_steps, st["finetune_student"], st["finetune_random_equal_steps"], probe, n)]
    for steps in [int(v) for v in args.sweep.split(",") if v.strip()]:
        a = run_finetune_arm(student, PRETRAINED_RECIPE, steps, prepared, out / "sweep", run_cfg, False, True)
        b = run_finetune_arm(run_cfg.student_model, SCRATCH_RECIPE, steps, prepared, out / "sweep", run_cfg, False)
        sweep.append(sweep_row(steps, a, b, probe, n))
        print(f"sweep {steps} steps: student {a['acc1']:.4f} random {b['acc1']:.4f}", flush=True)
    cross = {}
    if not args.no_cross_arms:
        for key, model, recipe in (("student_scratch_recipe", student, SCRATCH_RECIPE),
                                   ("random_pretrained_recipe", run_cfg.student_model, PRETRAINED_RECIPE),
                                   ("student_fresh_head", student, PRETRAINED_RECIPE)):
            cross[key] = _arm(run_finetune_arm(model, recipe, args.finetune_steps, prepared, out / "cross", run_cfg,
                                               False))
            print(key, round(cross[key]["acc1"], 4), flush=True)
    summary = {
        "teacher_zeroshot_acc1": st["teacher"]["metrics"]["zeroshot_acc1"],
        "student_probe": st["probes"]["student"], "random_probe": st["probes"]["random"],
        "finetune": {k: _arm(st[k]) for k in ("finetune_student", "finetune_random_equal_steps",
                                              "finetune_random_equal_time")},
        "cross_arms": cross, "sweep": sweep, "verdict": report["verdict"],
        "targets": {
            "finetune_beats_own_probe": report["verdict"]["finetune_vs_probe"],
            "beats_probe_beyond_noise": sweep[0]["vs_probe"]["beyond_noise"] and sweep[0]["vs_probe"]["diff"] > 0,
            "equal_steps_margin_points": 100 * report["verdict"]["equal_steps"]["diff"],
            "equal_steps_target_met": 100 * report["verdict"]["equal_steps"]["diff"] >= 5.0,
            "both_met": sweep[0]["target_met"],
        },
    }
    result = {"benchmark": "user_chain", "data": args.data, "config": report["config"], "args": vars(args),
              "command": "python benchmarks/bench_user_chain.py " + " ".join(sys.argv[1:]),
              "counts": report["data_counts"], "summary": summary, "wall_s": report["wall_s"],
              "load_average_1m_end": round(os.getloadavg()[0], 2), "environment": env}
    print(format_table(report))
    print(report["verdict"]["sentence"])
    print("wrote", write_json(args.out, result))
    Path(args.out).with_suffix(".md").write_text(render(result))


if __name__ == "__main__":
    main()
