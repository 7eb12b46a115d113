"""Compression: 8-bit post-training quantization with timestep-aware calibration (real int8 CPU kernels)."""

from diffusio.compress.calibration import CALIBRATIONS, CalibrationSet, calibration_set, ndtc_indices
from diffusio.compress.int8 import (
    BACKENDS,
    GRANULARITIES,
    QuantizedModel,
    backend_status,
    load_quantized,
    quantize,
    save_quantized,
)

__all__ = [
    "BACKENDS",
    "CALIBRATIONS",
    "GRANULARITIES",
    "CalibrationSet",
    "QuantizedModel",
    "backend_status",
    "calibration_set",
    "load_quantized",
    "ndtc_indices",
    "quantize",
    "save_quantized",
]
