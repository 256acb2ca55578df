"""The training loop every trainer shares: resume, step, log, checkpoint, evaluate, export."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..config import preset
from ..models.ssae_model import SSAE
from .common import (Progress, RunState, StopRequest, TrainConfig, any_rank, autocast, broadcast_parameters,
                     finite_or_raise, init_distributed, pick_device, seed_everything, use_bf16)


class Trainer:
    """Subclasses set `component` and implement `build`, `train_step` and optionally `evaluate`."""

    component = ""
    images_per_step = 1

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world = init_distributed(self.device)
        self.bf16 = use_bf16(cfg.bf16, self.device)
        self.run_state = RunState(cfg.out, self.rank)
        self.model_cfg = preset(cfg.preset) if isinstance(cfg.preset, str) else cfg.preset
        seed_everything(cfg.seed, self.rank)
        self.model = SSAE(self.model_cfg)
        self.step = 0
        if cfg.init:
            from ..checkpoint import COMPONENT_PREFIX, read_checkpoint
            _, sd, _ = read_checkpoint(cfg.init)
            prefix = COMPONENT_PREFIX[self.component]
            self.model.load_state_dict({k: v for k, v in sd.items() if k.startswith(prefix)}, strict=False)
        self.build()
        self.model.to(self.device)

    # -- to implement --
    def build(self) -> None:
        raise NotImplementedError

    def modules(self) -> dict[str, torch.nn.Module]:
        """Everything whose state is checkpointed (models and discriminators)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        return {}

    def eval_due(self, step: int) -> bool:
        return self.cfg.eval_every > 0 and step % self.cfg.eval_every == 0

    # -- shared --
    def autocast(self):
        return autocast(self.device, self.bf16)

    def state(self) -> dict:
        return {"step": self.step,
                "modules": {k: m.state_dict() for k, m in self.modules().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "rng": torch.get_rng_state()}

    def resume(self) -> bool:
        st = self.run_state.load()
        if st is None:
            broadcast_parameters(self.modules().values())
            return False
        for k, m in self.modules().items():
            m.load_state_dict(st["modules"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(st["optimizers"][k])
        self.step = int(st["step"])
        torch.set_rng_state(st["rng"])
        torch.manual_seed(self.cfg.seed * 1000 + self.rank + self.step)
        return True

    def save(self) -> None:
        self.run_state.save(self.state())

    def export(self) -> Path:
        """Write the trained component as an SSAE checkpoint (`OUT/<component>.safetensors`)."""
        path = Path(self.cfg.out) / f"{self.component}.safetensors"
        if self.rank == 0:
            save_checkpoint(path, self.model, self.model_cfg, component=self.component,
                            extra={"steps": self.step, "preset": self.model_cfg.name})
        return path

    def run(self) -> dict:
        resumed = self.resume()
        self.run_state.write_config(self.cfg)
        if self.rank == 0:
            print(f"[{self.component}] {'resumed at' if resumed else 'starting at'} step {self.step}/{self.cfg.steps} "
                  f"on {self.device} (bf16={'on' if self.bf16 else 'off'}, world={self.world})", flush=True)
        prog = Progress(self.cfg.steps, self.step, enabled=self.rank == 0)
        t_start, t_log, n_log = time.time(), time.time(), 0
        last, stopped = {}, None
        with StopRequest() as stop:
            while self.step < self.cfg.steps:
                metrics = self.train_step(self.step)
                self.step += 1
                n_log += 1
                finite_or_raise(metrics, self.step)
                last = metrics
                prog.update(self.step, metrics, self.images_per_step * self.world)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    dt = time.time() - t_log
                    self.run_state.log({"step": self.step, "time": time.time(), "sec_per_step": dt / max(n_log, 1),
                                        **metrics})
                    t_log, n_log = time.time(), 0
                if self.eval_due(self.step):
                    ev = self.evaluate()
                    if ev:
                        self.run_state.log({"step": self.step, "eval": ev})
                # a signal or the time limit on any rank stops every rank after this same step
                local = stop.requested or ("max_minutes" if self.cfg.max_minutes > 0 and
                                           time.time() - t_start > 60 * self.cfg.max_minutes else None)
                if any_rank(local is not None, self.device):
                    stopped = local or "stopped on another rank"
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps or stopped:
                    self.save()
                if stopped:
                    break
        prog.close()
        result = {"step": self.step, "finished": self.step >= self.cfg.steps, "last": last}
        if self.step >= self.cfg.steps:
            ev = self.evaluate()
            if ev:
                self.run_state.log({"step": self.step, "eval": ev, "final": True})
            result["eval"] = ev
        else:
            result["stopped"] = stopped
        # the weights so far also when stopped early (the checkpoint resumes the run)
        result["weights"] = str(self.export())
        return result
