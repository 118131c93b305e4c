"""Process layout: environment detection (torchrun, SLURM), process-group setup, DDP / FSDP2 wrapping.

All rank and device logic of a run lives here and in the engine; models and tasks only receive ``rank`` and
``world_size`` through ``Task.set_world``. The environment is read when :func:`detect_world` is called, never
at import.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from openeva.runtime import resolve_device
from openeva.models.text import TextBlock
from openeva.models.vit import Block


@dataclass(frozen=True)
class World:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env, *names: str) -> int | None:
    for name in names:
        if env.get(name) not in (None, ""):
            try:
                return int(env[name])
            except ValueError:
                raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None
    return None


def expand_hostlist(nodelist: str) -> list[str]:
    """A SLURM node list as ``scontrol show hostnames`` expands it, without calling scontrol.

    ``rack[1-2]-n[01-02],gpu7`` -> ``rack1-n01, rack1-n02, rack2-n01, rack2-n02, gpu7``: commas outside
    brackets separate names, each bracket holds numbers and zero-padded ranges, several brackets multiply."""
    names, depth, current = [], 0, ""
    for c in nodelist.strip():
        if c == "," and depth == 0:
            names.append(current)
            current = ""
            continue
        depth += (c == "[") - (c == "]")
        if depth < 0 or depth > 1:
            raise ValueError(f"malformed SLURM node list {nodelist!r} (unbalanced or nested brackets)")
        current += c
    if depth:
        raise ValueError(f"malformed SLURM node list {nodelist!r} (unclosed bracket)")
    names.append(current)
    return [host for name in names if name for host in _expand_host(name, nodelist)]


def _expand_host(name: str, nodelist: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", name)
    if m is None:
        return [name]
    options = []
    for part in m.group(1).split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise ValueError(f"malformed range {part!r} in SLURM node list {nodelist!r}")
        options += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi if dash else lo) + 1)]
    head, tail = name[: m.start()], name[m.end():]
    return [host for option in options for host in _expand_host(head + option + tail, nodelist)]


def slurm_master_port(job_id: str | int | None) -> int:
    """A rendezvous port derived from the job id, so jobs sharing a node do not collide on a fixed port
    (10000 + id mod 20000: below Linux's ephemeral range); 29500 without a job id."""
    if job_id in (None, ""):
        return 29500
    digits = re.sub(r"\D", "", str(job_id))  # array jobs: "1234_7"
    return 10000 + int(digits) % 20000 if digits else 29500


def detect_env(env=None) -> dict:
    """``{rank, world_size, local_rank, source}`` from torchrun's or SLURM's variables (torchrun wins).

    Under plain ``srun`` (no torchrun), the rank, local rank and world size come from ``SLURM_PROCID``,
    ``SLURM_LOCALID`` and ``SLURM_NTASKS``; MASTER_ADDR defaults to the first host of ``SLURM_JOB_NODELIST``
    (expanded as ``scontrol show hostnames`` does) and MASTER_PORT to :func:`slurm_master_port` of
    ``SLURM_JOB_ID``; both are set in the environment (when it is ``os.environ``) for ``init_process_group``,
    and returned as ``master_addr`` / ``master_port``.
    """
    env = os.environ if env is None else env
    world_size = _env_int(env, "WORLD_SIZE")
    if world_size is not None and _env_int(env, "RANK") is not None:
        return {"rank": _env_int(env, "RANK"), "world_size": world_size,
                "local_rank": _env_int(env, "LOCAL_RANK") or 0, "source": "torchrun"}
    slurm_ntasks = _env_int(env, "SLURM_NTASKS")
    if slurm_ntasks is not None and slurm_ntasks > 1 and _env_int(env, "SLURM_PROCID") is not None:
        hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1")
        addr = env.get("MASTER_ADDR") or hosts[0]
        port = env.get("MASTER_PORT") or str(slurm_master_port(env.get("SLURM_JOB_ID")))
        if env is os.environ:
            os.environ.setdefault("MASTER_ADDR", addr)
            os.environ.setdefault("MASTER_PORT", port)
        return {"rank": _env_int(env, "SLURM_PROCID"), "world_size": slurm_ntasks,
                "local_rank": _env_int(env, "SLURM_LOCALID") or 0, "source": "slurm", "master_addr": addr,
                "master_port": int(port)}
    return {"rank": 0, "world_size": 1, "local_rank": 0, "source": "single"}


def init_world(device: str = "auto", backend: str = "auto", env=None, timeout_s: float | None = None) -> World:
    """Detect the layout and join the process group (if several processes and none is initialised yet).

    An already initialised default group (a test harness, a notebook) is used as is. ``timeout_s``: how long a
    collective waits for the other ranks (None: torch's default, 10 minutes under NCCL).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = detect_env(env)["local_rank"] if detect_env(env)["world_size"] == world_size else rank
        dev = resolve_device(device, local_rank)
        return World(rank, world_size, local_rank, dev, dist.get_backend())
    info = detect_env(env)
    dev = resolve_device(device, info["local_rank"])
    if info["world_size"] == 1:
        return World(0, 1, 0, dev, None)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("backend nccl needs CUDA devices; use dist.backend=gloo on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, rank=info["rank"], world_size=info["world_size"], timeout=timeout)
    return World(info["rank"], info["world_size"], info["local_rank"], dev, backend)


def wrap_task(task: nn.Module, world: World, strategy: str = "ddp", find_unused_parameters: bool = False,
              static_graph: bool = False, param_dtype: torch.dtype | None = None) -> nn.Module:
    """The module the engine calls: the Task itself (one process), DDP around it, or the Task sharded in place
    by FSDP2.

    FSDP2 as current practice: each transformer block with trained parameters is its own unit, then the Task
    (the root unit: embeddings, heads); ``param_dtype`` (bf16 runs) all-gathers and computes in that dtype while
    gradients are reduced in fp32 (``MixedPrecisionPolicy``). Frozen parameters outside those blocks (a MIM
    teacher, a locked tower, an EMA copy) are left out of the root unit: a replica on every rank, never
    all-gathered nor kept through backward; so are the 0-dim parameters (:func:`replicated_params`).
    """
    if not world.distributed:
        return task
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [world.device.index] if world.device.type == "cuda" else None
        return DDP(task, device_ids=ids, find_unused_parameters=find_unused_parameters, static_graph=static_graph)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        meta = _any_rank(any(t.is_meta for _, t in _named_tensors(task)), world)
        source = dict(_named_tensors(task)) if meta and world.is_main else None  # rank 0's whole model
        mp = MixedPrecisionPolicy() if param_dtype is None else MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32)
        sharded: set[nn.Parameter] = set()
        for module in list(task.modules()):
            if _is_block(module) and any(p.requires_grad for p in module.parameters()):
                fully_shard(module, mp_policy=mp)
                sharded.update(module.parameters())
        outside = {p for p in task.parameters() if p not in sharded and (not p.requires_grad or p.ndim == 0)}
        fully_shard(task, mp_policy=mp, ignored_params=outside or None)
        if meta:
            if not world.is_main:
                task.to_empty(device=world.device)  # this rank's shards (and replicas), allocated, not initialised
            _load_from_rank0(task, source, world)
        return task
    raise ValueError(f"dist.strategy must be ddp or fsdp, got {strategy!r}")


def builds_on_meta(world: World, strategy: str, meta_init: bool = True) -> bool:
    """Whether this rank builds its model on the meta device (``dist.meta_init``): FSDP ranks other than 0, which
    receive their shards from rank 0 in :func:`wrap_task` (the same weights as building everywhere, without every
    rank initialising, reading weight files or holding the whole model)."""
    return meta_init and strategy == "fsdp" and world.distributed and not world.is_main


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters, then buffers (persistent or not), by name, in module order: the same list on every rank."""
    return [*module.named_parameters(), *(("buffer:" + n, b) for n, b in module.named_buffers())]


def _any_rank(flag: bool, world: World) -> bool:
    t = torch.tensor([int(flag)], device=_comm_device(world))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())  # once, while wrapping


@torch.no_grad()
def _load_from_rank0(task: nn.Module, source: dict | None, world: World) -> None:
    """Every tensor of the sharded ``task`` set from rank 0's whole model ``source``, one tensor at a time (peak
    extra memory: one whole tensor): a sharded parameter keeps its rank's shard, a replica (frozen modules, 0-dim
    parameters, buffers) the whole tensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    comm = _comm_device(world)
    for name, local in _named_tensors(task):
        whole = source[name].detach().to(comm) if world.is_main else torch.empty(
            local.shape, dtype=local.dtype, device=comm)
        dist.broadcast(whole, src=0)
        if isinstance(local, DTensor):  # chunked on every rank as FSDP2 shards (dim 0), no further communication
            whole = distribute_tensor(whole.to(local.device), local.device_mesh, local.placements, src_data_rank=None)
        local.copy_(whole)


def compile_blocks(model: nn.Module) -> list[nn.Module]:
    """``torch.compile`` each transformer block's ``forward`` in place, after DDP / FSDP wrapping: the wrappers'
    hooks (DDP's bucketed all-reduce, FSDP2's all-gather / reshard around each block) run eagerly around the
    compiled blocks, so communication still overlaps computation, and parameter names do not change. Blocks
    compile without a graph break (RoPE's layout check is skipped under the compiler, openeva.layers.rope).
    Returns the compiled blocks (their eager ``forward`` is ``block.forward._torchdynamo_orig_callable``)."""
    blocks = [m for m in model.modules() if _is_block(m)]
    for block in blocks:
        block.forward = torch.compile(block.forward)
    return blocks


def replicated_params(task: nn.Module) -> list[nn.Parameter]:
    """Scalar parameters (CLIP's logit scale), which FSDP2 cannot shard: kept whole on every rank, their
    gradients averaged by :func:`average_replicated_grads`."""
    return [p for p in task.parameters() if p.ndim == 0]


def average_replicated_grads(params: list[nn.Parameter], world: World) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world.world_size)


def _is_block(module: nn.Module) -> bool:
    """Transformer blocks (vision and text towers) are FSDP's sharding units."""
    return isinstance(module, (Block, TextBlock))


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "no_sync") and hasattr(module, "module") else module


def is_fsdp(module: nn.Module) -> bool:
    return hasattr(module, "set_requires_gradient_sync")


@contextlib.contextmanager
def unsharded(module: nn.Module):
    """Within the block, every FSDP2 unit of ``module`` (the root and each block) holds its parameters whole (in
    the policy's ``param_dtype``) and keeps them through its forwards: evaluation can call methods other than
    ``forward`` (``encode_image``, ``forward_features``, a Task's ``encode`` ...) and each rank can run a different
    number of forwards over its share of the validation data, since no forward starts a collective. The cost: the
    whole model's parameters on every rank while evaluating. A no-op for any other module."""
    if not is_fsdp(module):
        yield
        return
    units = [m for m in module.modules() if is_fsdp(m)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            if unit is not module:  # the root keeps its parameters after forward anyway (FSDP2's default)
                unit.set_reshard_after_forward(True, recurse=False)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on non-final accumulation micro-steps (DDP ``no_sync``, FSDP2 flag)."""
    if enabled:
        yield
        return
    if hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    elif is_fsdp(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_min(value: int, world: World) -> int:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_comm_device(world))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _comm_device(world: World) -> torch.device:
    return world.device if world.backend == "nccl" else torch.device("cpu")


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj, world: World, src: int = 0):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj, world: World) -> list:
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
