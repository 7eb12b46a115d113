"""DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, NeurIPS 2023): exponential integrator with empirical model statistics (EMS).

Writing f = e^{-lambda} eps_hat - l x/alpha, the PF-ODE in lambda is d(x/alpha)/dlambda = -l x/alpha - f (paper Eq. 8).
Per-dimension statistics l, s, b on a lambda grid (``Statistics``) are chosen so that f' ~ s f + b; with the
cumulative integrals L = int l, S = int s, B = int e^{-S} b, I = int e^{L+S}, C = int e^{L+S} B, the step s -> t is

    x_t = (alpha_t/alpha_s) e^{L_s - L_t} x_s - alpha_t e^{-L_t - S_s} (I_t - I_s) g_s
          - alpha_t e^{-L_t} (C_t - C_s - B_s (I_t - I_s)) - alpha_t e^{L_s - L_t} sum_k g^(k) E_k          (Eq. 14)

with g = e^{S_s - S} f - e^{S_s} (B - B_s) Taylor-expanded around lambda_s from past points (multistep) and
E_k = int e^{(L+S) - (L+S)_s} (lambda - lambda_s)^k / k!. l = 1, s = b = 0 gives the data-form (DPM-Solver++) Taylor
solver; (l, s, b) = (0, -1, 0) the noise form.

Statistics are estimated once per model and time range (App. C.1) by ``estimate_statistics`` and cached in a
safetensors file keyed by a model fingerprint and the grid (``statistics_for``).

The subpackage: ``statistics`` (the EMS record and its integrals), ``estimate`` (App. C.1 estimator, with a
finite-difference fallback for models without forward-mode AD), ``cache`` (model fingerprints and the on-disk
cache), ``sampler`` (Alg. 1-2).
"""

from __future__ import annotations

from diffusio.samplers.dpm_v3.cache import (
    ESTIMATOR_VERSION,
    cache_dir,
    load_statistics,
    model_fingerprint,
    save_statistics,
    statistics_for,
)
from diffusio.samplers.dpm_v3.estimate import estimate_statistics
from diffusio.samplers.dpm_v3.sampler import keep_n, sample_dpm_v3
from diffusio.samplers.dpm_v3.statistics import Statistics

__all__ = [
    "ESTIMATOR_VERSION",
    "Statistics",
    "cache_dir",
    "estimate_statistics",
    "keep_n",
    "load_statistics",
    "model_fingerprint",
    "sample_dpm_v3",
    "save_statistics",
    "statistics_for",
]
