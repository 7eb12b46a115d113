"""Per-layer quantization sensitivity: which layers to keep in float32.

Each convolution / linear layer is quantized *alone* (every other layer float32) with the same calibration set
and settings as :func:`diffusio.compress.quantize`, and the eps error against the float model is measured on an
evaluation set (Nagel et al. 2021, "A White Paper on Neural Network Quantization", Sec. 4.6: layer-wise
sensitivity analysis, then mixed precision for the few layers that dominate). Layers alone make the errors
additive to first order, so the ranking does not depend on which layers are already kept.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from diffusio.compress.calibration import CalibrationSet
from diffusio.compress.int8 import _QUANTIZABLE, _check_backend, _convert, _net_inputs, _prepared, _quantizer
from diffusio.models.base import Model

__all__ = ["choose_keep_float", "eps_error_per_t", "layer_sensitivity"]


def eps_error_per_t(ref: Model, model: Model, inputs: CalibrationSet) -> dict[float, float]:
    """Relative eps MSE ``sum (eps_q - eps)^2 / sum eps^2`` of ``model`` against ``ref`` for each distinct time of
    ``inputs`` (``{t: error}``, times in decreasing order)."""
    out = {}
    with torch.no_grad():
        for t in torch.unique(inputs.t).flip(0):
            rows = inputs.t == t
            x, tt = inputs.x[rows], inputs.t[rows].to(inputs.x.dtype)
            cond = {k: v[rows] for k, v in inputs.cond.items()}
            a, b = ref.eps(x, tt, **cond), model.eps(x, tt, **cond)
            out[float(t)] = float((a - b).square().sum() / a.square().sum().clamp_min(1e-30))
    return out


def layer_sensitivity(
    model: Model,
    calibration: CalibrationSet,
    inputs: CalibrationSet,
    *,
    layers: list[str] | None = None,
    bits: int = 8,
    weight_bits: int | None = None,
    granularity: str = "per_channel",
    observer: str = "histogram",
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, dict[float, float]]:
    """For each layer (default: every ``nn.Conv2d`` / ``nn.Linear`` of ``model.net``), the eps error per time
    (:func:`eps_error_per_t` on ``inputs``) when only that layer is int8 (PT2E, reference int8 arithmetic)."""
    if not isinstance(calibration, CalibrationSet) or not isinstance(inputs, CalibrationSet):
        raise TypeError("calibration and inputs must be CalibrationSet objects (see compress.calibration_set)")
    _check_backend("pt2e")
    names = dict(model.net.named_modules())
    layers = [n for n, m in names.items() if isinstance(m, _QUANTIZABLE)] if layers is None else list(layers)
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(f"layers {unknown} are not module names of this network (see net.named_modules())")
    args, kwargs = _net_inputs(model, calibration)
    wb = bits if weight_bits is None else weight_bits
    out = {}
    for name in tqdm(layers, desc="layer sensitivity", disable=not progress):
        prepared = _prepared(model.net, args, kwargs, _quantizer(bits, wb, granularity, observer, only=name))
        observing = Model(prepared, model.path, model.prediction, model.precond)
        with torch.no_grad():
            for x, t, cond in calibration.batches(batch_size):
                observing.predict(x, t.to(x.dtype), "x0", **cond)
        q = Model(_convert(prepared), model.path, model.prediction, model.precond)
        out[name] = eps_error_per_t(model, q, inputs)
    return out


def choose_keep_float(sensitivity: dict[str, dict[float, float]], budget: float) -> list[str]:
    """The fewest most-sensitive layers to keep float32 so that the summed worst-t errors of the layers left in
    int8 (each measured alone by :func:`layer_sensitivity`; errors of independent roundings add to first order)
    stay within ``budget``. Most sensitive first."""
    if not budget > 0:
        raise ValueError(f"budget must be > 0 (a relative eps MSE, e.g. 0.02); got {budget!r}")
    worst = sorted(((max(e.values()), n) for n, e in sensitivity.items()), key=lambda wn: (-wn[0], wn[1]))
    keep, rest = [], sum(w for w, _ in worst)
    for w, n in worst:
        if rest <= budget:
            break
        keep.append(n)
        rest -= w
    return keep
