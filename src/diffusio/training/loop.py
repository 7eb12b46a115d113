"""The training loop: AdamW with linear warm-up, gradient clipping, EMA, JSONL metrics, atomic safetensors
checkpoints, exact resume and DistributedDataParallel.

Every random draw (data order, t, noise, label dropout) comes from one ``torch.Generator`` seeded by the
config, and each step draws the *global* batch then keeps this rank's slice. So a resumed run continues
bit-for-bit, and two DDP ranks with batch B each reproduce one process with batch 2B.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusio.io import remove_stale_temp, save_text
from diffusio.models.base import Model
from diffusio.training.checkpoint import load_checkpoint, save_checkpoint, save_model_file
from diffusio.training.distributed import DistInfo
from diffusio.training.ema import EMA
from diffusio.training.losses import DiffusionLoss

__all__ = ["TrainConfig", "Trainer"]


@dataclass
class TrainConfig:
    """Optimisation settings (``batch_size`` is the global batch, split evenly over ranks)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    label_dropout: float = 0.0
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "ckpt_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {v!r}")
        if self.lr <= 0 or self.warmup < 0 or self.weight_decay < 0:
            raise ValueError("train.lr must be > 0, train.warmup and train.weight_decay >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"train.grad_clip must be > 0 or null, got {self.grad_clip}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"train.label_dropout must be in [0, 1), got {self.label_dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown train option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**d)


class Trainer:
    """Train ``model.net`` under ``loss`` on ``data`` (anything with ``sample(n, generator) -> (x0, cond)``).

    ``out_dir`` receives ``checkpoint.safetensors`` (resumable), ``model.safetensors`` (EMA weights) and
    ``metrics.jsonl``; ``run_config`` is stored in both files' metadata so the model can be rebuilt.
    """

    def __init__(
        self,
        model: Model,
        loss: DiffusionLoss,
        data,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        run_config: dict | None = None,
        dist_info: DistInfo | None = None,
    ):
        self.model, self.loss, self.data, self.cfg = model, loss, data, config
        self.out = Path(out_dir) if out_dir is not None else None
        self.run_config = run_config or {}
        self.dist = dist_info or DistInfo()
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"train.batch_size ({config.batch_size}) must be divisible by the number of processes "
                f"({self.dist.world_size})"
            )
        self.net: nn.Module = model.net.to(self.dist.device)
        make = getattr(self.net, "make_optimizer", None)  # nets with their own parametrization (muP: MuAdamW)
        self.optimizer = (
            make(lr=config.lr, weight_decay=config.weight_decay)
            if make is not None
            else torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        )
        for group in self.optimizer.param_groups:  # per-group learning-rate ratios survive the warm-up schedule
            group.setdefault("lr_scale", group["lr"] / config.lr)
        self.ema = EMA(self.net, config.ema_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self._window: list[float] = []  # losses since the last metrics line (saved with the checkpoint)
        self.train_model = self._train_model()

    def _train_model(self) -> Model:
        if self.dist.world_size == 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        ddp = DDP(self.net, device_ids=ids)
        if hasattr(self.model, "with_net"):  # model families other than Model rebuild themselves around the DDP net
            return self.model.with_net(ddp)
        return Model(ddp, self.model.path, self.model.prediction, self.model.precond)

    # --- one step ----------------------------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Draw the global batch from the generator, then keep this rank's slice (on the device)."""
        g, n = self.generator, self.cfg.batch_size
        x0, cond = self.data.sample(n, g)
        if self.cfg.label_dropout > 0 and "y" in cond:
            null = getattr(self.net, "num_classes", None)
            if null is None:
                raise ValueError("train.label_dropout needs a class-conditional net (num_classes set)")
            drop = torch.rand(n, generator=g) < self.cfg.label_dropout
            cond = {**cond, "y": torch.where(drop, torch.full_like(cond["y"], null), cond["y"])}
        t, noise = self.loss.draw(x0, self.model.path, g)
        couple = getattr(self.loss, "couple", None)
        if couple is not None:  # on the global batch, before the rank split (DDP stays equal to one process)
            x0, noise = couple(x0, noise, g)
        b = n // self.dist.world_size
        sl = slice(self.dist.rank * b, (self.dist.rank + 1) * b)
        dev = self.dist.device
        return x0[sl].to(dev), t[sl].to(dev), noise[sl].to(dev), {k: v[sl].to(dev) for k, v in cond.items()}

    def train_step(self) -> tuple[float, float]:
        """One optimisation step; returns (loss, gradient norm before clipping)."""
        x0, t, noise, cond = self._batch()
        loss = self.loss(self.train_model, x0, t, noise, cond).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss is {float(loss.detach())} at step {self.step + 1}: lower train.lr, set train.grad_clip, "
                "or check the data for extreme values"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        gnorm = float(nn.utils.clip_grad_norm_(self.net.parameters(), clip))
        lr = self.cfg.lr * min(1.0, (self.step + 1) / max(self.cfg.warmup, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.ema.update(self.net)
        self.step += 1
        return float(loss.detach()), gnorm

    # --- the loop ----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train until ``config.steps``; with ``resume`` continue from ``out_dir/checkpoint.safetensors``."""
        if self.out is not None and self.dist.is_main:
            remove_stale_temp(self.out)  # temp files of a save that was killed
        if resume:
            self.resume()
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step,
            disable=not (self.cfg.progress and self.dist.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        window: list[float] = self._window
        t0 = time.perf_counter()
        last: dict = {}
        while self.step < self.cfg.steps:
            loss, gnorm = self.train_step()
            window.append(loss)
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                last = {
                    "step": self.step,
                    "loss": sum(window) / len(window),
                    "grad_norm": gnorm,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "time": time.perf_counter() - t0,
                }
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                self._log(last)
                window.clear()
            if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps:
                self.save()
        bar.close()
        return last

    def _log(self, record: dict) -> None:
        if self.out is None or not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _config(self) -> dict:
        return {**self.run_config, "train": asdict(self.cfg)}

    def save(self) -> None:
        """Write checkpoint.safetensors and model.safetensors (rank 0 only)."""
        if self.out is None or not self.dist.is_main:
            return
        cfg = self._config()
        save_checkpoint(
            self.out / "checkpoint.safetensors",
            model=self.net,
            ema_state=self.ema.state_dict(),
            optimizer=self.optimizer,
            generators={"train": self.generator},
            step=self.step,
            config=cfg,
            log_window=self._window,
        )
        save_model_file(self.out / "model.safetensors", self.ema.state_dict(), cfg, self.step)

    def resume(self) -> None:
        """Restore weights, EMA, optimizer, generator and step from ``out_dir/checkpoint.safetensors``."""
        if self.out is None:
            raise ValueError("resume needs an output directory (out_dir) holding checkpoint.safetensors")
        path = self.out / "checkpoint.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {path}; run without --resume first")
        ck = load_checkpoint(path)
        self.net.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.generator.set_state(ck["rng"]["train"])
        torch.set_rng_state(ck["rng"]["torch_global"])
        self.step = ck["step"]
        self._window[:] = ck["log_window"]
        self._truncate_log()
        model_file = self.out / "model.safetensors"
        if self.dist.is_main and _file_step(model_file) != self.step:  # a save killed between the two files
            save_model_file(model_file, ck["ema"], ck["config"], self.step)

    def _truncate_log(self) -> None:
        """Drop metric lines written after the checkpoint we resume from."""
        log = self.out / "metrics.jsonl" if self.out else None
        if log is None or not log.is_file() or not self.dist.is_main:
            return
        keep = [ln for ln in log.read_text().splitlines() if (_log_step(ln) or math.inf) <= self.step]
        save_text("".join(ln + "\n" for ln in keep), log)


def _log_step(line: str) -> int | None:
    """The step of a metrics line, None for a torn or foreign line (a kill during the write)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec.get("step") if isinstance(rec, dict) and isinstance(rec.get("step"), int) else None


def _file_step(path: Path) -> int | None:
    """The step stored in a model file's metadata (None if absent or unreadable)."""
    from diffusio.io import read_safetensors_header

    try:
        return int(read_safetensors_header(path).get("__metadata__", {}).get("step"))
    except (OSError, ValueError, TypeError):
        return None
