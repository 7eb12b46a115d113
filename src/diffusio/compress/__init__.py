"""Compression: 8-bit post-training quantization with timestep-aware calibration (real int8 CPU kernels)."""

from diffusio.compress.calibration import CALIBRATIONS, CalibrationSet, calibration_set, ndtc_indices
from diffusio.compress.int8 import (
    BACKENDS,
    GRANULARITIES,
    OBSERVERS,
    QuantizedModel,
    backend_status,
    load_quantized,
    quantize,
    save_quantized,
)
from diffusio.compress.sensitivity import choose_keep_float, eps_error_per_t, layer_sensitivity

__all__ = [
    "BACKENDS",
    "CALIBRATIONS",
    "GRANULARITIES",
    "OBSERVERS",
    "CalibrationSet",
    "QuantizedModel",
    "backend_status",
    "calibration_set",
    "choose_keep_float",
    "eps_error_per_t",
    "layer_sensitivity",
    "load_quantized",
    "ndtc_indices",
    "quantize",
    "save_quantized",
]
