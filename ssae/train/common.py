"""Training infrastructure shared by the SMPN, SAE and RB trainers.

Resumable, atomically written checkpoints; a JSONL metrics log; a progress line with losses and throughput;
seeds; CPU (bf16 autocast on AMX CPUs) or CUDA; data parallelism across processes launched with `torchrun`
(gradients averaged with all-reduce after each backward, the scheme of NVlabs/stylegan2-ada-pytorch, which also
covers the R1 double-backward that the DDP module wrapper does not).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist

from ..fileio import atomic_write
from .configs import DataConfig, TrainConfig  # noqa: F401


def world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA). Returns (rank, world_size)."""
    rank, size = world()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, size


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of `params` across processes, as one flat buffer."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on any process (one tiny all-reduce in data-parallel runs, so all ranks agree).
    device: the ranks' device (NCCL reduces CUDA tensors only)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class StopRequest:
    """While active, SIGTERM and SIGINT ask the training loop to stop after the current step (it then writes its
    checkpoint and weights) instead of killing the process mid-step; a second SIGINT interrupts at once.
    Handlers are only installed in the main thread (elsewhere `requested` just stays False)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this step (checkpoint and weights are written; rerun to resume)",
              file=sys.stderr, flush=True)


def broadcast_parameters(modules: Iterable[torch.nn.Module]) -> None:
    """Make every process start from rank 0's weights."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, 0)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA requested but no CUDA device is available")
    return torch.device(name)


def use_bf16(setting: str, device: torch.device) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from ..info import cpu_flags
    return "amx_bf16" in cpu_flags()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class Progress:
    """A single updating progress line on stderr: step/total, rate, losses, ETA."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every_s: float = 2.0):
        self.total, self.start, self.enabled, self.every_s = total, start, enabled, every_s
        self.t0 = self.last = time.time()
        self.tty = sys.stderr.isatty()

    def update(self, step: int, metrics: dict, images_per_step: int) -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every_s and step < self.total):
            return
        self.last = now
        done = step - self.start
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        pct = 100.0 * step / max(self.total, 1)
        loss = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        line = (f"step {step}/{self.total} ({pct:.0f}%) {rate:.2f} it/s {rate * images_per_step:.1f} img/s "
                f"eta {eta / 60:.1f} min | {loss}")
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")


class RunState:
    """Run folder: `checkpoint.pt` (resumable training state), `metrics.jsonl`, `config.json`."""

    def __init__(self, out: str | os.PathLike, rank: int = 0):
        self.dir = Path(out)
        self.rank = rank
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def save(self, state: dict) -> None:
        if self.rank == 0:
            atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def load(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)

    def log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_config(self, cfg) -> None:
        if self.rank == 0:
            atomic_write(self.dir / "config.json",
                         lambda tmp: Path(tmp).write_text(json.dumps(dataclasses.asdict(cfg), indent=1, default=str)))

    def metrics(self) -> list[dict]:
        p = self.dir / "metrics.jsonl"
        return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []


def seed_everything(seed: int, rank: int = 0) -> None:
    torch.manual_seed(seed * 1000 + rank)
    np.random.seed((seed * 1000 + rank) % 2 ** 32)


def finite_or_raise(values: dict, step: int) -> None:
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise FloatingPointError(f"loss {k} became {v} at step {step}")
