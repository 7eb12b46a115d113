"""A small fine-tuning loop for adapted models (peft adapters or SaRA): AdamW on the trainable parameters only,
the standard denoising loss, SaRA's rank penalty and progressive re-selection when the model is a SaRAModel."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from diffusio.finetune.sara import SaRAModel
from diffusio.training.losses import DiffusionLoss

__all__ = ["finetune"]


def finetune(
    model,
    data,
    steps: int = 500,
    *,
    lr: float = 1e-3,
    batch_size: int = 128,
    loss: DiffusionLoss | None = None,
    reselect_at: int | None = None,
    label_dropout: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` (AdaptedModel, SaRAModel or a plain Model: then every parameter trains) on ``data``
    (``sample(n, generator) -> (x0, cond)``) for ``steps`` AdamW steps; returns ``{"loss", "time", "steps"}``.

    ``reselect_at``: the SaRA progressive step (default: half-way for a SaRAModel); ``label_dropout``: share of
    labels replaced by the null class (classifier-free guidance).
    """
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not lr > 0 or not 0 <= label_dropout < 1:
        raise ValueError(f"need lr > 0 and label_dropout in [0, 1); got lr={lr}, label_dropout={label_dropout}")
    is_sara = isinstance(model, SaRAModel)
    if is_sara and reselect_at is None:
        reselect_at = steps // 2
    loss = loss or DiffusionLoss(model.prediction)
    g = torch.Generator().manual_seed(seed)
    params = lambda: [p for p in model.net.parameters() if p.requires_grad]  # noqa: E731
    opt = torch.optim.AdamW(params(), lr=lr, weight_decay=1e-2 if is_sara else 0.0)
    model.net.train()
    t0, history = time.perf_counter(), []
    for step in tqdm(range(steps), desc="finetune", disable=not progress):
        if is_sara and step == reselect_at and step > 0:
            model.reselect()
            opt = torch.optim.AdamW(params(), lr=lr, weight_decay=1e-2)  # the paper re-creates the optimizer state
        x0, cond = data.sample(batch_size, g)
        if label_dropout > 0 and "y" in cond:
            null = next((m.num_classes for m in model.net.modules() if getattr(m, "num_classes", None)), None)
            if null is None:
                raise ValueError("label_dropout needs a class-conditional network (num_classes set)")
            drop = torch.rand(batch_size, generator=g) < label_dropout
            cond = {**cond, "y": torch.where(drop, torch.full_like(cond["y"], null), cond["y"])}
        t, noise = loss.draw(x0, model.path, g)
        value = loss(model, x0, t, noise, cond).mean()
        if is_sara:
            value = value + model.rank_penalty(g)
        if not torch.isfinite(value):
            raise FloatingPointError(f"the fine-tuning loss is {float(value)} at step {step + 1}: lower lr")
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        history.append(float(value.detach()))
    model.net.eval()
    tail = history[-max(1, steps // 10) :]
    return {"loss": sum(tail) / len(tail), "time": time.perf_counter() - t0, "steps": steps}
