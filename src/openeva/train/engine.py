"""The one training engine: runs any :class:`~openeva.train.task.Task` (CLIP, MIM, fine-tuning).

Per optimizer step: ``accum_steps`` micro-batches of a fixed shape (the rows of skipped samples are padding,
marked False in the ``valid`` mask the Task's loss honours, so no rank waits on another's sample count; a Task
without ``valid`` gets batches trimmed to the smallest over ranks instead), each ``task(batch)`` under autocast
with gradient sync only on the last micro-batch (a contrastive Task's loss covering all of them,
:mod:`openeva.train.accumulate`), then unscale, clip, step,
schedule, ``task.on_step_end``, log, validate, checkpoint. The Task never sees precision, devices, ranks
(beyond ``set_world``), optimizers or files; the engine never sees what the Task computes.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from pathlib import Path

import torch

from openeva.data.loader import take_failed_shards
from openeva.factory import model_config_dict
from openeva.runtime import cpu_capability, resolve_precision
from openeva.train.config import TrainConfig
from openeva.train.data import batch_size_of, derive_seed, to_device, trim_batch
from openeva.train.logging import RunLogger, plot_run
from openeva.train.optim import create_optimizer, describe_groups, param_groups
from openeva.runtime import Precision
from openeva.train.schedule import LRSchedule
from openeva.train.task import Task
from openeva.train.evals import accepts_group, eval_group
from openeva.train.nan_guard import NanGuard
from openeva.train.accumulate import cached_accumulation
from openeva.train.checkpointing import (
    SHARDED, TRAIN_STATE, CheckpointManager, export_target, load_sharded, rng_state, save_sharded, set_rng_state,
    split_task_state, write_model_dir,
)
from openeva.train.distributed import (
    World, all_gather_object, all_reduce_min, all_reduce_sum, average_replicated_grads, barrier, gradient_sync,
    compile_blocks, is_fsdp, replicated_params, unsharded, unwrap, wrap_task,
)

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's RNGs."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def pad_batch(batch, template, size: int):
    """``batch`` (or None) filled to ``size`` rows with the first rows of ``template`` (a batch of ``size``)."""
    n = batch_size_of(batch)

    def fill(column, pad):
        if column is None:
            return pad[:size]
        return torch.cat([column, pad[:size - n]]) if torch.is_tensor(column) else [*column, *pad[:size - n]]

    if batch is None:
        batch = {k: None for k in template} if isinstance(template, dict) else [None] * len(template) if isinstance(
            template, (tuple, list)) else None
    if isinstance(template, dict):
        return {k: fill(batch[k], template[k]) for k in template}
    if isinstance(template, (tuple, list)):
        columns = [fill(c, t) for c, t in zip(batch, template)]
        skipped = getattr(batch, "num_skipped", None)
        return type(template)(columns, skipped or 0) if hasattr(template, "num_skipped") else type(template)(columns)
    return fill(batch, template)


def use_tf32(device: torch.device) -> bool:
    """Whether a run on ``device`` does its fp32 matmuls in TF32: on CUDA, yes (products with a 10-bit mantissa,
    accumulated in fp32, as cluster training of these models runs: the fp32 parts of a bf16 run, such as the loss
    and logit matmuls, and every matmul of an fp32 run go to the tensor cores); no other device has TF32."""
    return torch.device(device).type == "cuda"


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
        tf32 = use_tf32(self.world.device)
        if tf32:
            torch.set_float32_matmul_precision("high")  # process-wide: fp32 matmuls (also outside autocast) in TF32
        self.precision_info = {"requested": cfg.precision, "precision": precision, "reason": reason,
                               "device": str(self.world.device), "tf32_matmul": tf32, **cpu_capability()}
        if self.world.is_main:
            print(f"precision {cfg.precision} -> {precision}: {reason}"
                  f"{'; fp32 matmuls in TF32 (CUDA)' if tf32 else ''}", flush=True)

        if not any(p.is_meta for p in task.parameters()):  # meta: materialised shard by shard in wrap_task
            task.to(self.world.device)
        task.set_world(self.world.rank, self.world.world_size)
        # a Task that honours a validity mask gets fixed-shape batches (no per-micro-batch sync in _next_batch)
        self.masked, self._template = "valid" in inspect.signature(task.forward).parameters, None
        self.model = wrap_task(task, self.world, cfg.dist.strategy, cfg.dist.find_unused_parameters,
                               cfg.dist.static_graph, torch.bfloat16 if precision == "bf16" else None)
        self.compiled = compile_blocks(self.model) if cfg.model.compile else []  # wrapped first, then compiled
        o = cfg.optim
        self.groups = param_groups(task, task.param_group_specs(), o.lr, o.weight_decay)
        self.optimizer = create_optimizer(self.groups, o.optimizer, o.lr, o.betas, o.eps, o.weight_decay)
        s = cfg.schedule
        self.schedule = LRSchedule(self.optimizer, self.total_steps, s.warmup_steps, s.scheduler, s.min_lr_ratio,
                                   s.cooldown_steps)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.replicated = replicated_params(task) if is_fsdp(self.model) else []
        self.export = export_target(task)
        self.ckpt = CheckpointManager(self.run_dir, cfg.keep_last)
        self.guard = NanGuard(cfg.nan_max_retries, self.world.device)
        self.step, self.epoch, self.position = 0, 0, 0  # position: next batch of the epoch to read
        self.counters = {"samples": 0, "skipped_samples": 0, "skipped_batches": 0, "failed_shards": 0}
        self.new_failed_shards: list[str] = []  # names not yet in metrics.jsonl
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
                failed = take_failed_shards(getattr(self.data, "dataset", None))  # from workers too
                self.counters["failed_shards"] += len(failed)
                self.new_failed_shards += failed
                usable += batch_size_of(batch) if batch is not None else 0
                yield batch
            if usable == 0 and from_start:
                raise ValueError(f"epoch {self.epoch} of the training data gave no usable sample "
                                 f"({self.counters['skipped_samples']} skipped so far); check data.train and the "
                                 "log's 'skipping sample' lines")
            self.epoch, self.position = self.epoch + 1, 0

    def _next_batch(self, stream) -> tuple:
        """``(batch, valid)``: the next micro-batch on the device, the same shape on every rank.

        A Task whose ``forward`` takes ``valid`` gets every batch at the loader's size, the rows of skipped samples
        filled from an earlier batch and marked False in ``valid`` (a (B,) bool tensor; None when every row is a
        sample): no rank waits on another's count. Any other Task gets batches trimmed on every rank to the
        smallest (an all-reduce and a host read per micro-batch), wholly failed micro-batches skipped together.
        """
        B = getattr(self.data, "batch_size", None)
        if self.masked and B:
            batch = next(stream)
            n = batch_size_of(batch)
            self.counters["skipped_samples"] += getattr(batch, "num_skipped", 0) if batch is not None else B
            self.counters["samples"] += n
            if n == B or (self._template is None and n):
                self._template = batch  # the rows that pad later batches
            if n == B:
                return to_device(batch, self.world.device), None
            if self._template is None:
                raise ValueError("the first batch of this process has no usable sample, so there is nothing to "
                                 "pad it with; check data.train and the log's 'skipping sample' lines")
            valid = torch.arange(B) < n  # (B,) host-side, copied without a sync
            return (to_device(pad_batch(batch, self._template, B), self.world.device),
                    valid.to(self.world.device, non_blocking=True))
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
            return to_device(trim_batch(batch, common), self.world.device), None

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
                window = self.epoch * len(self.data) + self.position  # global index of the step's first batch
                if window in self.guard.skip:  # it gave a non-finite step before a restore (nan_guard.py)
                    for _ in range(self.accum):
                        next(stream)
                    log.log(self.step, {"skipped_window": window, "window_batches": self.accum}, prefix="nan_guard")
                    continue
                self.schedule.set_step(self.step)
                sums, grad_norm, stepped = self.train_step([self._next_batch(stream) for _ in range(self.accum)])
                self.step += 1
                if stepped:  # an fp16 step the grad scaler skipped (inf/NaN gradients) left the weights as they were
                    self.guard.record(self.step, window, sums["loss"], grad_norm)
                self.task.on_step_end(self.step)
                logs = self.step % cfg.log_every == 0 or self.step == stop_at
                if (logs or self.step % cfg.save_every == 0) and self._nonfinite(log):
                    stream = self._stream()  # restored: the data from the checkpoint's position on
                    continue
                if logs:
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

    def _nonfinite(self, log: RunLogger) -> bool:
        """At a logging or saving step: whether a step since the last check was not finite on some rank; if so,
        restore the newest checkpoint and mark the first such step's data window to be skipped (or stop after
        ``nan_max_retries`` restores). See :mod:`openeva.train.nan_guard`."""
        found = self.guard.check(self.world)
        if found is None:
            return False
        step, window = found
        self.guard.retries += 1
        path = self.ckpt.latest()
        event = {"nonfinite_step": step, "window": window, "window_batches": self.accum,
                 "retry": self.guard.retries, "max_retries": self.guard.max_retries,
                 "restored_step": None if path is None else int(path.name.rsplit("_", 1)[-1])}
        stop = self.guard.retries > self.guard.max_retries or path is None
        log.log(self.step, {**event, "stopped": int(stop)}, prefix="nan_guard")
        if self.guard.retries > self.guard.max_retries:
            raise FloatingPointError(
                f"the loss or gradient norm was not finite at step {step} (data window {window}), after "
                f"{self.guard.max_retries} restore(s) from checkpoints (nan_max_retries={self.guard.max_retries}); "
                f"stopping. Lower the lr, check the data, use precision=bf16/fp32, or raise nan_max_retries")
        if path is None:
            raise FloatingPointError(
                f"the loss or gradient norm was not finite at step {step} (data window {window}) and no checkpoint "
                f"was written yet to restore (save_every={self.cfg.save_every}); stopping")
        self.guard.skip.add(window)
        if self.world.is_main:
            logger.warning("non-finite loss at step %d: restoring %s and skipping data window %d (%d batches), "
                           "retry %d of %d", step, path, window, self.accum, self.guard.retries,
                           self.guard.max_retries)
        self._restore(path)
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def train_step(self, batches: list[tuple]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, bool]:
        """One optimizer step over ``accum`` ``(batch, valid)`` micro-batches (from :meth:`_next_batch`) ->
        (the step's metrics as device tensors, grad norm, whether the optimizer stepped). Reads nothing back to
        the host (fp16's scaler excepted): a step that does not log never waits for the device."""
        sums = self._accumulate(batches)
        average_replicated_grads(self.replicated, self.world)
        self.precision.unscale_(self.optimizer)
        grad_norm = self._clip()
        stepped = self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return sums, grad_norm, stepped

    def _accumulate(self, batches: list[tuple]) -> dict[str, torch.Tensor]:
        """Forward and backward of one optimizer step's micro-batches (gradient sync on the last); returns the
        step's metrics. A contrastive Task's loss covers the whole step (:mod:`.accumulate`), any other Task's
        step averages its micro-batch losses."""
        inputs = [(batch, {"valid": valid} if self.masked else {}) for batch, valid in batches]
        if self.accum > 1 and self.task.accumulate_features:
            return cached_accumulation(self.model, self.task, inputs, self.precision, self.world.device)
        sums: dict[str, torch.Tensor] = {}
        for micro, (batch, kw) in enumerate(inputs):
            with gradient_sync(self.model, micro == self.accum - 1):
                with self.precision.autocast():
                    loss, metrics = self.model(batch, **kw)
                self.precision.backward(loss / self.accum)
            for k, v in {"loss": loss, **metrics}.items():
                v = torch.as_tensor(v, dtype=torch.float32, device=loss.device).detach().float()
                sums[k] = sums.get(k, 0) + v / self.accum
        return sums

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
        counts = all_reduce_sum(torch.tensor([float(self.counters[k]) for k in ("samples", "skipped_samples",
                                              "failed_shards")] + [float(len(self.new_failed_shards))],
                                             device=values.device), self.world)
        if counts[3] > 0:  # every rank agrees; names gathered only when some shard failed since the last record
            names = [n for part in all_gather_object(self.new_failed_shards, self.world) for n in part]
            self.new_failed_shards = []
        metrics = {k: float(v) for k, v in zip(keys, values.tolist())}
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss is {metrics['loss']} at step {self.step}; lower the lr or use "
                                     "precision=bf16/fp32")
        metrics.update({"lr": max(g["lr"] for g in self.optimizer.param_groups), "epoch": self.epoch,
                        "samples_per_s": rate, "samples_seen": int(counts[0]), "skipped_samples": int(counts[1]),
                        "failed_shards": int(counts[2])})
        if counts[3] > 0:
            metrics["failed_shard_names"] = names
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if not stepped:
            metrics["skipped_step"] = 1  # fp16 overflow: the scaler skipped this update
        log.log(self.step, metrics)
        log.progress(self.step, metrics["loss"], rate)
        return metrics

    def evaluate(self, log: RunLogger | None = None) -> dict:
        """``task.evaluate`` in eval mode without touching the training RNG, on every rank: each scores its share of
        the validation data and the evaluators combine the shares over the run's process group
        (:func:`~openeva.train.evals.eval_group`), so the metrics are one process's. Under FSDP every unit is
        gathered whole for the evaluation (:func:`~openeva.train.distributed.unsharded`: evaluators call methods
        that bypass the root's forward, and ranks run different numbers of forwards) and it runs in the run's
        autocast. A Task whose ``evaluate`` takes no ``group`` runs on rank 0 alone (on every rank under FSDP)."""
        metrics: dict = {}
        fsdp = is_fsdp(self.model)
        shares = accepts_group(self.task.evaluate)
        if shares or self.world.is_main or fsdp:
            self.task.eval()
            with _rng_preserved(), torch.no_grad(), unsharded(self.model), (
                    self.precision.autocast() if fsdp else contextlib.nullcontext()):
                kwargs = {"group": eval_group(self.world)} if shares else {}
                metrics = self.task.evaluate(self.step, **kwargs) or {}
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
        """The whole Task state on rank 0 (gathered to the CPU under FSDP) for the exported model."""
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return unwrap(self.model).state_dict()

    def _model_config(self, step: int) -> dict:
        return {**model_config_dict(self.export[1]), "train_config": self.cfg.to_dict(), "step": step}

    def _write_export(self, out: Path) -> None:
        """``out/model.safetensors`` + ``config.json``: the trained model in openeva's format (rank 0 writes)."""
        task_state = self._task_state()
        if self.world.is_main:
            weights, _ = split_task_state(task_state, self.export[0])
            write_model_dir(out, weights, self._model_config(self.step))

    def save(self) -> Path | None:
        """Checkpoint the current step: every rank writes its part of the sharded state, rank 0 the rest."""
        world = self.world
        tmp = self.ckpt.tmp_dir(self.step)
        if world.is_main:
            self.ckpt.prepare(self.step)
        barrier(world)
        save_sharded(tmp, self.model, self.optimizer)
        if self.export is not None:
            self._write_export(tmp)
        keys = sorted(self.counters)  # run-wide totals, so a resume under another world size counts on
        totals = all_reduce_sum(torch.tensor([float(self.counters[k]) for k in keys], dtype=torch.float64,
                                             device=self.world.device), world)
        if world.is_main:
            torch.save({"step": self.step, "epoch": self.epoch, "position": self.position,
                        "counters": {k: int(v) for k, v in zip(keys, totals.tolist())},
                        "world_size": world.world_size, "strategy": self.cfg.dist.strategy,
                        "schedule": self.schedule.state_dict(), "scaler": self.precision.state_dict(),
                        "nan_guard": self.guard.state_dict(),
                        "config": self.cfg.to_dict()}, tmp / TRAIN_STATE)
        torch.save(rng_state(), tmp / f"rng_rank{world.rank}.pt")
        barrier(world)
        final = self.ckpt.commit(self.step) if world.is_main else None
        barrier(world)
        self.last_saved = self.step
        return final

    def _restore(self, path: Path) -> None:
        """Resume from a step directory, under any strategy and number of processes (:func:`load_sharded`)."""
        state = torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=True)
        rng_file = path / f"rng_rank{self.world.rank}.pt"
        rng = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.is_file() else None
        if not (path / SHARDED).is_dir():
            raise ValueError(f"{path} has no {SHARDED}/ (a checkpoint of an openeva before sharded checkpoints); "
                             "start a new run from its weights with model.pretrained=" + str(path))
        current = {g["name"]: (g["base_lr"], g["lr_scale"], g["weight_decay"]) for g in self.optimizer.param_groups}
        load_sharded(path, self.model, self.optimizer)
        for g in self.optimizer.param_groups:  # the config of this run wins over the saved hyperparameters
            g["base_lr"], g["lr_scale"], g["weight_decay"] = current.get(g["name"], (g["base_lr"], g["lr_scale"],
                                                                                      g["weight_decay"]))
        self.schedule.load_state_dict(state["schedule"])
        self.guard.load_state_dict(state.get("nan_guard"))
        self.precision.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.counters.update({k: v if self.world.is_main else 0 for k, v in state["counters"].items()})
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
        out = self.run_dir / "final"
        self._write_export(out)
        barrier(self.world)
        return out
