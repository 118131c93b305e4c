"""The one training engine: runs any :class:`~openeva.train.task.Task` (CLIP, MIM, fine-tuning).

Per optimizer step: ``accum_steps`` micro-batches (batches whose samples all failed are skipped and counted;
under several processes every rank trims to the smallest batch so gathering losses see equal shapes), each
``task(batch)`` under autocast with gradient sync only on the last micro-batch, then unscale, clip, step,
schedule, ``task.on_step_end``, log, validate, checkpoint. The Task never sees precision, devices, ranks
(beyond ``set_world``), optimizers or files; the engine never sees what the Task computes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from openeva.factory import model_config_dict
from openeva.runtime import cpu_capability, resolve_precision
from openeva.train.config import TrainConfig
from openeva.train.data import batch_size_of, derive_seed, to_device, trim_batch
from openeva.train.logging import RunLogger, plot_run
from openeva.train.optim import create_optimizer, describe_groups, param_groups
from openeva.runtime import Precision
from openeva.train.schedule import LRSchedule
from openeva.train.task import Task
from openeva.train.checkpointing import (
    TRAIN_STATE, CheckpointManager, export_target, read_checkpoint, rng_state, set_rng_state, split_task_state,
    write_model_dir,
)
from openeva.train.distributed import (
    World, all_reduce_min, all_reduce_sum, average_replicated_grads, barrier, gradient_sync, is_fsdp,
    replicated_params, unwrap, wrap_task,
)

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's RNGs."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def _rng_preserved():
    """Validation must not change the training RNG stream (a resumed run would diverge otherwise)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class Trainer:
    """Train ``task`` on ``data`` (a :class:`~openeva.train.data.ResumableLoader`) as ``cfg`` says.

    ``run_dir`` receives ``config.json``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``plots/`` and, when the
    run completes, ``final/`` (the trained model in openeva's format). Construction builds the optimizer and
    restores a checkpoint when ``cfg.resume`` names one; :meth:`fit` trains.
    """

    def __init__(self, cfg: TrainConfig, task: Task, data, world: World | None = None, run_dir=None):
        self.cfg, self.task, self.data = cfg, task, data
        self.world = world or World()
        self.run_dir = Path(run_dir if run_dir is not None else Path(cfg.output_dir) / (cfg.name or "run"))
        self.accum = cfg.optim.accum_steps
        self.steps_per_epoch = len(data) // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch has {len(data)} batches, fewer than optim.accum_steps={self.accum}")
        self.total_steps = cfg.schedule.total_steps or cfg.schedule.epochs * self.steps_per_epoch
        precision, reason = resolve_precision(cfg.precision, self.world.device)  # "auto" -> what is fast here
        self.precision = Precision(precision, self.world.device)
        self.precision_info = {"requested": cfg.precision, "precision": precision, "reason": reason,
                               "device": str(self.world.device), **cpu_capability()}
        if self.world.is_main:
            print(f"precision {cfg.precision} -> {precision}: {reason}", flush=True)

        task.to(self.world.device)
        task.set_world(self.world.rank, self.world.world_size)
        if cfg.model.compile:
            task.compile()
        self.model = wrap_task(task, self.world, cfg.dist.strategy, cfg.dist.find_unused_parameters,
                               cfg.dist.static_graph)
        o = cfg.optim
        self.groups = param_groups(task, task.param_group_specs(), o.lr, o.weight_decay)
        self.optimizer = create_optimizer(self.groups, o.optimizer, o.lr, o.betas, o.eps, o.weight_decay,
                                          o.lamb_max_grad_norm)
        s = cfg.schedule
        self.schedule = LRSchedule(self.optimizer, self.total_steps, s.warmup_steps, s.scheduler, s.min_lr_ratio,
                                   s.cooldown_steps)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.replicated = replicated_params(task) if is_fsdp(self.model) else []
        self.export = export_target(task)
        self.ckpt = CheckpointManager(self.run_dir, cfg.keep_last)
        self.step, self.epoch, self.position = 0, 0, 0  # position: next batch of the epoch to read
        self.counters = {"samples": 0, "skipped_samples": 0, "skipped_batches": 0}
        self.last_saved = self.last_evaluated = -1
        resume = self.ckpt.resolve(cfg.resume)
        if resume is not None:
            self._restore(resume)
        else:
            seed_all(derive_seed(cfg.seed, self.world.rank, 1))  # training randomness differs per rank
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(cfg.to_json())
            (self.run_dir / "precision.json").write_text(json.dumps(self.precision_info, indent=1))
            (self.run_dir / "param_groups.json").write_text(
                json.dumps(describe_groups(self.groups), indent=1))

    # ------------------------------------------------------------------------------------------- data
    def _stream(self):
        """Batches from the current (epoch, position) on, rolling over epochs; tracks the position.

        A whole epoch without one usable sample on this rank (every image unreadable, no captions where
        captions are needed) stops the run with the skip counts instead of looping forever.
        """
        while True:
            usable, from_start = 0, self.position == 0  # a resumed epoch's tail may legitimately be empty
            for batch in self.data.batches(self.epoch, self.position):
                self.position += 1
                usable += batch_size_of(batch) if batch is not None else 0
                yield batch
            if usable == 0 and from_start:
                raise ValueError(f"epoch {self.epoch} of the training data gave no usable sample "
                                 f"({self.counters['skipped_samples']} skipped so far); check data.train and the "
                                 "log's 'skipping sample' lines")
            self.epoch, self.position = self.epoch + 1, 0

    def _next_batch(self, stream):
        """The next usable micro-batch, identical in size on every rank; skipped samples are counted."""
        B = getattr(self.data, "batch_size", None)
        while True:
            batch = next(stream)
            n = batch_size_of(batch)
            self.counters["skipped_samples"] += getattr(batch, "num_skipped", 0) if batch is not None else (B or 0)
            common = all_reduce_min(n, self.world)
            if common == 0:  # some rank has nothing: every rank skips this micro-batch together
                self.counters["skipped_batches"] += 1
                if n:
                    self.counters["skipped_samples"] += n
                continue
            self.counters["skipped_samples"] += n - common
            self.counters["samples"] += common
            return to_device(trim_batch(batch, common), self.world.device)

    # ------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        cfg, world = self.cfg, self.world
        log = RunLogger(self.run_dir, world.is_main, self.total_steps, self.step, cfg.tensorboard, cfg.progress)
        stream = self._stream()
        stop_at = self.total_steps if cfg.max_steps_this_run is None else min(
            self.total_steps, self.step + cfg.max_steps_this_run)
        self.model.train()
        last = {}
        t_log, samples_at_log = time.perf_counter(), self.counters["samples"]
        try:
            while self.step < stop_at:
                self.schedule.set_step(self.step)
                sums: dict[str, torch.Tensor] = {}
                for micro in range(self.accum):
                    batch = self._next_batch(stream)
                    with gradient_sync(self.model, micro == self.accum - 1):
                        with self.precision.autocast():
                            loss, metrics = self.model(batch)
                        self.precision.backward(loss / self.accum)
                    for k, v in {"loss": loss, **metrics}.items():
                        v = torch.as_tensor(v, dtype=torch.float32, device=loss.device).detach().float()
                        sums[k] = sums.get(k, 0) + v / self.accum
                average_replicated_grads(self.replicated, self.world)
                self.precision.unscale_(self.optimizer)
                grad_norm = self._clip()
                stepped = self.precision.step(self.optimizer)
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.task.on_step_end(self.step)
                if self.step % cfg.log_every == 0 or self.step == stop_at:
                    now = time.perf_counter()
                    rate = (self.counters["samples"] - samples_at_log) * world.world_size / max(now - t_log, 1e-9)
                    t_log, samples_at_log = now, self.counters["samples"]
                    last = self._log_step(log, sums, grad_norm, stepped, rate)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.evaluate(log)
                if self.step % cfg.save_every == 0:
                    self.save()
            if self.step == self.total_steps and self.last_evaluated != self.step:
                self.evaluate(log)
            if self.last_saved != self.step:
                self.save()
            if self.step == self.total_steps:
                self.export_final()
        finally:
            log.close()
        if world.is_main and cfg.plot:
            plot_run(self.run_dir / "metrics.jsonl", self.run_dir / "plots")
        return {"step": self.step, "total_steps": self.total_steps, "epoch": self.epoch, "rank": self.world.rank,
                **self.counters,
                **{k: v for k, v in last.items() if k in ("loss",)}, "run_dir": str(self.run_dir)}

    def _clip(self) -> torch.Tensor | None:
        if self.cfg.optim.grad_clip is None:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def _log_step(self, log: RunLogger, sums: dict, grad_norm, stepped: bool, rate: float) -> dict:
        """Average the step's metrics over ranks, then write them (rank 0) and advance the progress bar."""
        keys = sorted(sums)
        values = torch.stack([sums[k] for k in keys]).float()
        values = all_reduce_sum(values, self.world) / self.world.world_size
        counts = all_reduce_sum(torch.tensor([float(self.counters[k]) for k in ("samples", "skipped_samples")],
                                             device=values.device), self.world)
        metrics = {k: float(v) for k, v in zip(keys, values.tolist())}
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss is {metrics['loss']} at step {self.step}; lower the lr or use "
                                     "precision=bf16/fp32")
        metrics.update({"lr": max(g["lr"] for g in self.optimizer.param_groups), "epoch": self.epoch,
                        "samples_per_s": rate, "samples_seen": int(counts[0]), "skipped_samples": int(counts[1])})
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if not stepped:
            metrics["skipped_step"] = 1  # fp16 overflow: the scaler skipped this update
        log.log(self.step, metrics)
        log.progress(self.step, metrics["loss"], rate)
        return metrics

    def evaluate(self, log: RunLogger | None = None) -> dict:
        """``task.evaluate`` on rank 0 (every rank under FSDP, whose forward needs all of them), in eval mode,
        without touching the training RNG."""
        metrics: dict = {}
        run_here = self.world.is_main or is_fsdp(self.model)
        if run_here:
            self.task.eval()
            with _rng_preserved(), torch.no_grad():
                metrics = self.task.evaluate(self.step) or {}
            self.task.train()
        if log is not None and metrics:
            log.log(self.step, metrics, prefix="val")
            log.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                        if isinstance(v, (int, float))))
        self.last_evaluated = self.step
        barrier(self.world)
        return metrics

    # ------------------------------------------------------------------------------------- checkpoints
    def _task_state(self) -> dict:
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return unwrap(self.model).state_dict()

    def _optim_state(self) -> dict:
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def _model_config(self, step: int) -> dict:
        return {**model_config_dict(self.export[1]), "train_config": self.cfg.to_dict(), "step": step}

    def save(self) -> Path | None:
        """Checkpoint the current step (every rank takes part; rank 0 writes the shared files)."""
        world, prefix = self.world, self.export[0] if self.export else None
        tmp = self.ckpt.tmp_dir(self.step)
        if world.is_main:
            self.ckpt.prepare(self.step)
        barrier(world)
        task_state, optim_state = self._task_state(), self._optim_state()
        if world.is_main:
            weights, rest = split_task_state(task_state, prefix)
            if self.export is not None:
                write_model_dir(tmp, weights, self._model_config(self.step))
            torch.save({"step": self.step, "epoch": self.epoch, "position": self.position,
                        "counters": dict(self.counters), "world_size": world.world_size,
                        "export_prefix": prefix, "task_state": rest, "optimizer": optim_state,
                        "schedule": self.schedule.state_dict(), "scaler": self.precision.state_dict(),
                        "config": self.cfg.to_dict()}, tmp / TRAIN_STATE)
        torch.save(rng_state(), tmp / f"rng_rank{world.rank}.pt")
        barrier(world)
        final = self.ckpt.commit(self.step) if world.is_main else None
        barrier(world)
        self.last_saved = self.step
        return final

    def _restore(self, path: Path) -> None:
        weights, state, rng = read_checkpoint(path, self.world.rank)
        prefix = state.get("export_prefix")
        full = {**{f"{prefix}.{k}": v for k, v in weights.items()}, **state["task_state"]}
        current = {g["name"]: (g["base_lr"], g["lr_scale"], g["weight_decay"]) for g in self.optimizer.param_groups}
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, full, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        else:
            unwrap(self.model).load_state_dict(full)
            self.optimizer.load_state_dict(state["optimizer"])
        for g in self.optimizer.param_groups:  # the config of this run wins over the saved hyperparameters
            g["base_lr"], g["lr_scale"], g["weight_decay"] = current.get(g["name"], (g["base_lr"], g["lr_scale"],
                                                                                      g["weight_decay"]))
        self.schedule.load_state_dict(state["schedule"])
        self.precision.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.counters.update(state["counters"])
        self.last_saved = self.step
        if rng is not None and state["world_size"] == self.world.world_size:
            set_rng_state(rng)
        else:
            logger.warning("no RNG state for rank %d of %d in %s: reseeding (the run is no longer bit-exact)",
                           self.world.rank, self.world.world_size, path)
            seed_all(derive_seed(self.cfg.seed, self.world.rank, 1 + self.step))
        if self.world.is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.position)

    def export_final(self) -> Path | None:
        """``RUN/final``: the trained model in openeva's format (``openeva.create_model(RUN/final)``)."""
        if self.export is None:
            return None
        task_state = self._task_state()
        out = self.run_dir / "final"
        if self.world.is_main:
            weights, _ = split_task_state(task_state, self.export[0])
            write_model_dir(out, weights, self._model_config(self.step))
        barrier(self.world)
        return out
