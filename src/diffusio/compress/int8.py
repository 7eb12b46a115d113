"""8-bit post-training quantization of a Model's network with real int8 CPU kernels (no fake-quant at inference).

Two backends (``BACKENDS``):

- ``pt2e``: static int8 through PyTorch 2 export: ``torch.export`` -> ``prepare_pt2e`` with the X86 Inductor
  quantizer (convolutions and linears; uint8 activations with per-tensor scales fitted by histogram observers on
  the calibration set, int8 weights per channel or per tensor) -> calibrate -> ``convert_pt2e`` -> ``torch.compile``
  (Inductor lowers the quantize/dequantize pattern to oneDNN int8 convolution and matmul kernels). This is where
  the calibration set matters: activation ranges are fixed once, so the times they are fitted on decide the error
  (Shang et al. 2023, PTQ4DM, Sec. 4; Li et al. 2023, Q-Diffusion, Sec. 4.2).
- ``torchao``: dynamic int8 (``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``) on ``nn.Linear`` only,
  then ``torch.compile``; activation scales are computed per row at every call, so no calibration is needed.

``backend="auto"`` takes ``pt2e`` if it can run here, else ``torchao``, else keeps the network in float32 and
says so with a warning (and ``QuantizedModel.backend == "fp32"``); naming an unavailable backend is an error.
Lower bit widths (``bits`` / ``weight_bits`` < 8) restrict the integer range of the same int8 kernels.

Mixed precision: ``keep_float`` names layers (module names, or module types) that stay float32 while the rest runs
in int8, the usual remedy for the few layers whose inputs carry information below one activation step (Nagel et
al. 2021, "A White Paper on Neural Network Quantization", Sec. 4.6: per-layer sensitivity analysis). On a diffusion
U-Net these are the stem and the first block after it: at low noise the network must read a noise component of size
``sigma`` riding on the image, and a per-tensor 8-bit activation step (range / 255) over the whole range of
``t`` is larger than that. :func:`diffusio.compress.layer_sensitivity` measures each layer's share of the error.
What is not implemented from PTQ4DM: block-wise reconstruction (AdaRound/BRECQ); scales come from observers.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import shutil
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffusio.compress.calibration import CALIBRATIONS, CalibrationSet, calibration_set
from diffusio.io import load_safetensors, save_safetensors
from diffusio.models.base import Model, ModelBase, ModelWrapper

__all__ = [
    "BACKENDS",
    "GRANULARITIES",
    "OBSERVERS",
    "QuantizedModel",
    "backend_status",
    "load_quantized",
    "quantize",
    "save_quantized",
]

BACKENDS = ("auto", "pt2e", "torchao", "fp32")
GRANULARITIES = ("per_channel", "per_tensor")
OBSERVERS = ("histogram", "minmax")
FORMAT = "diffusio-quantized-1"
_QOPS = ("quantize_per_tensor",)


def _quiet_torchao():
    """Import torchao with its import-time chatter (optional CUDA kernels, enum registrations) silenced."""
    for name in ("torch.utils._pytree", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization  # noqa: F401


def backend_status() -> dict[str, str | None]:
    """For each int8 backend, ``None`` if it can run here, else the reason it cannot (with the fix)."""
    status: dict[str, str | None] = {"fp32": None}
    try:
        _quiet_torchao()
        status["torchao"] = None
    except ImportError:
        status["torchao"] = "torchao is not installed (pip install 'diffusio[compress]')"
        status["pt2e"] = status["torchao"]
        return status
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer  # noqa: F401
    except ImportError as e:
        status["pt2e"] = f"this torchao has no PT2E X86 quantizer ({e}); pip install -U torchao"
        return status
    if platform.machine().lower() not in ("x86_64", "amd64"):
        status["pt2e"] = f"the X86 Inductor int8 kernels need an x86-64 CPU; this is {platform.machine()}"
    elif not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")):
        status["pt2e"] = "torch.compile (Inductor) needs a C++ compiler: apt-get install g++"
    else:
        status["pt2e"] = None
    return status


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    status = backend_status()
    if backend == "auto":
        for name in ("pt2e", "torchao"):
            if status[name] is None:
                return name
        warnings.warn(
            f"no int8 backend can run here (pt2e: {status['pt2e']}; torchao: {status['torchao']}): the model stays "
            "float32 (QuantizedModel.backend == 'fp32')",
            stacklevel=3,
        )
        return "fp32"
    if status[backend] is not None:
        raise RuntimeError(f"backend {backend!r} is not available: {status[backend]}")
    return backend


class QuantizedModel(ModelWrapper):
    """A quantized network seen as a Model: ``predict`` runs the int8 module in place of the float network.

    ``backend``, ``method`` (calibration), ``bits``, ``weight_bits``, ``granularity``, ``observer`` and
    ``keep_float`` (the module names left in float32) describe it; ``module`` is
    the quantized network before ``torch.compile`` (what :func:`save_quantized` writes), ``info`` a few facts
    (calibration size, quantized layer count). Inputs must carry the condition keys it was built with.
    """

    def __init__(self, inner: Model, module: nn.Module, *, backend: str, method: str, bits: int, weight_bits: int,
                 granularity: str, input_spec: dict, info: dict, observer: str = "histogram",
                 keep_float: tuple[str, ...] = ()):  # fmt: skip
        super().__init__(inner)
        self.module = module
        self.observer, self.keep_float = observer, tuple(keep_float)
        self.backend, self.method, self.bits, self.weight_bits = backend, method, bits, weight_bits
        self.granularity, self.input_spec, self.info = granularity, input_spec, info

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        want = self.input_spec.get("cond_keys", [])
        if self.backend == "pt2e" and sorted(cond) != want:
            raise ValueError(
                f"this quantized model was exported with condition keys {want}; got {sorted(cond)} (pass the same "
                "keys, e.g. y = the null class for unconditional samples of a class-conditional net)"
            )
        return self.inner.predict(x, t, kind, **cond)

    def size_bytes(self) -> int:
        """Bytes of the tensors that define the quantized network (what :func:`save_quantized` stores)."""
        return sum(v.numel() * v.element_size() for v in _module_tensors(self)[0].values())

    def extra_repr(self) -> str:
        return (
            f"backend={self.backend!r}, method={self.method!r}, bits={self.bits}, weight_bits={self.weight_bits}, "
            f"keep_float={self.keep_float}"
        )


# --- the public entry point -------------------------------------------------------------------------------------
def quantize(
    model: ModelBase,
    calibration: CalibrationSet | int = 256,
    method: str = "ptq4dm",
    bits: int = 8,
    backend: str = "auto",
    *,
    shape: tuple[int, ...] | None = None,
    weight_bits: int | None = None,
    granularity: str = "per_channel",
    observer: str = "histogram",
    keep_float: Sequence[str | type] = (),
    cond: dict | None = None,
    data: Tensor | None = None,
    steps: int = 20,
    batch_size: int = 256,
    compile: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> QuantizedModel:
    """Quantize ``model``'s network to int8 and return it as a Model.

    ``calibration``: a :class:`CalibrationSet`, or the number of inputs to draw with ``method`` (``naive``,
    ``data``, ``uniform`` or ``ptq4dm``; see :mod:`diffusio.compress.calibration`) from ``steps``-step DDIM runs of
    the float model on per-sample ``shape`` with condition ``cond`` (values with that many rows; ``data``: training
    images for ``method="data"``). ``bits`` (2-8) sets the activation and weight integer ranges, ``weight_bits``
    overrides the weights'; ``granularity`` is ``per_channel`` or ``per_tensor`` symmetric weight scales;
    ``observer`` fits the static activation ranges (``histogram``: the range minimising the L2 quantization error
    of the observed values; ``minmax``: the observed extremes). ``keep_float``: module names of the network (e.g.
    ``"conv_in"``, ``"enc.0.blocks.0.conv1"``) or module types whose layers stay float32. ``compile=False`` keeps
    the quantized module un-compiled (reference int8 arithmetic, slow; for tests).
    """
    if not isinstance(model, Model) or not isinstance(model.net, nn.Module):
        raise TypeError(f"quantize needs a diffusio Model wrapping an nn.Module network; got {type(model).__name__}")
    weight_bits = bits if weight_bits is None else weight_bits
    for name, b in (("bits", bits), ("weight_bits", weight_bits)):
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8:
            raise ValueError(f"{name} must be an integer in [2, 8] (int8 kernels), got {b!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
    keep = _resolve_keep(model.net, keep_float)
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(CALIBRATIONS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    backend = _check_backend(backend)
    if backend == "torchao" and (bits != 8 or weight_bits != 8):
        raise ValueError("the torchao backend is int8 only: use bits=8, or backend='pt2e' for narrower ranges")
    if isinstance(calibration, CalibrationSet):
        calib = calibration
        method = calibration.method
    else:
        if shape is None:
            raise ValueError(
                "pass shape=(per-sample shape, e.g. (1, 8, 8)) to draw a calibration set, or a CalibrationSet"
            )
        calib = calibration_set(
            model, tuple(shape), calibration, method, steps=steps, cond=cond, data=data, generator=generator
        )
    _check_calibration(model, calib)
    args, kwargs = _net_inputs(model, calib)
    spec = {
        "args": [_spec(a) for a in args],
        "cond_keys": sorted(kwargs),
        "kwargs": {k: _spec(v) for k, v in kwargs.items()},
    }
    common = {"method": method, "bits": bits, "weight_bits": weight_bits, "granularity": granularity,
              "observer": observer, "keep_float": keep}  # fmt: skip
    if backend == "fp32":
        module, info = copy.deepcopy(model.net).eval(), {"note": "float32: no int8 backend available"}
    elif backend == "torchao":
        module, info = _torchao(model.net, granularity, keep), {"note": "dynamic activation scales: calibration unused"}
    else:
        qz = _quantizer(bits, weight_bits, granularity, observer, keep)
        module, info = _pt2e(model, calib, args, kwargs, qz, batch_size, progress)
    info = {**info, "calibration_size": len(calib)}
    run = _compiled(module, backend) if compile and backend != "fp32" else module
    inner = Model(run, model.path, model.prediction, model.precond)
    return QuantizedModel(inner, module, backend=backend, input_spec=spec, info=info, **common)


def _resolve_keep(net: nn.Module, keep_float) -> tuple[str, ...]:
    """``keep_float`` (module names or types) as the sorted module names it selects; unknown names are an error."""
    if isinstance(keep_float, str | type):
        keep_float = (keep_float,)
    names = dict(net.named_modules())
    out = set()
    for k in keep_float:
        if isinstance(k, type) and issubclass(k, nn.Module):
            out |= {n for n, m in names.items() if isinstance(m, k) and n}
        elif isinstance(k, str) and k in names and k:
            out.add(k)
        else:
            layers = [n for n, m in names.items() if isinstance(m, _QUANTIZABLE)][:8]
            raise ValueError(
                f"keep_float entry {k!r} is not a module name of this network nor an nn.Module type; module names "
                f"look like {layers} (see net.named_modules())"
            )
    return tuple(sorted(out))


_QUANTIZABLE = (nn.Conv2d, nn.Linear)


def _check_calibration(model: Model, calib: CalibrationSet) -> None:
    """Fail early and clearly when the calibration inputs do not fit the network."""
    x, t, cond = next(calib.batches(2))
    try:
        with torch.no_grad():
            model.predict(x, t.to(x.dtype), "x0", **cond)
    except (ValueError, RuntimeError) as e:
        raise ValueError(
            f"the calibration set does not fit this model (x {tuple(calib.x.shape)}, cond keys "
            f"{sorted(calib.cond)}): {e}"
        ) from None


def _net_inputs(model: Model, calib: CalibrationSet) -> tuple[tuple, dict]:
    """The exact ``(args, kwargs)`` the network receives for the first calibration batch (EDM scaling included)."""
    seen = {}

    def hook(_mod, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    h = model.net.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        x, t, cond = next(calib.batches(8))
        with torch.no_grad():
            model.predict(x, t.to(x.dtype), "x0", **cond)
    finally:
        h.remove()
    kwargs = {k: v for k, v in seen["kwargs"].items() if v is not None}
    return tuple(seen["args"]), kwargs


def _spec(v: Tensor) -> dict:
    return {"shape": list(v.shape[1:]), "dtype": str(v.dtype).removeprefix("torch.")}


def _example(spec: dict, batch: int) -> Tensor:
    dtype = getattr(torch, spec["dtype"])
    if dtype.is_floating_point:
        return torch.randn(batch, *spec["shape"], dtype=dtype)
    return torch.zeros(batch, *spec["shape"], dtype=dtype)


class _FrozenCompiled(nn.Module):
    """``torch.compile`` of a PT2E int8 module with Inductor's ``freezing`` on, so the int8 weights are pre-packed
    into oneDNN's layout (the fast path). One static graph per input shape (the int8 linear pre-pack needs static
    shapes): each new batch size compiles once (seconds to a minute), then runs from the cache."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, *args, **kwargs):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):  # torch.compile(options=...) does not reach the int8 passes
            return self.compiled(*args, **kwargs)


def _compiled(module: nn.Module, backend: str) -> nn.Module:
    if backend == "pt2e":
        return _FrozenCompiled(module)
    return torch.compile(module)


# --- torchao: dynamic int8 linears ------------------------------------------------------------------------------
def _torchao_config(granularity: str):
    _quiet_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from torchao.quantization.granularity import PerRow, PerTensor

    return Int8DynamicActivationInt8WeightConfig(granularity=PerRow() if granularity == "per_channel" else PerTensor())


def _torchao(net: nn.Module, granularity: str, keep: tuple[str, ...] = ()) -> nn.Module:
    from torchao.quantization import quantize_

    if not any(isinstance(m, nn.Linear) for m in net.modules()):
        raise ValueError("the torchao backend quantizes nn.Linear layers and this network has none; use backend='pt2e'")
    q = copy.deepcopy(net).eval()

    def wanted(mod, fqn: str) -> bool:
        return isinstance(mod, nn.Linear) and not any(fqn == k or fqn.startswith(k + ".") for k in keep)

    quantize_(q, _torchao_config(granularity), filter_fn=wanted)
    return q


# --- PT2E: static int8 through export + the X86 Inductor quantizer -----------------------------------------------
def _quantizer(bits: int, weight_bits: int, granularity: str, observer: str = "histogram", keep_float=(), only=None):
    """The X86 Inductor quantizer: uint8 per-tensor activations (``observer``), int8 symmetric weights; modules in
    ``keep_float`` stay float; with ``only`` (a module name) only that module is quantized (sensitivity analysis)."""
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config as default_config,
    )

    base = default_config()
    eps = {"eps": 2**-12}
    act = QuantizationSpec(
        dtype=torch.uint8, quant_min=0, quant_max=2**bits - 1, qscheme=torch.per_tensor_affine, is_dynamic=False,
        observer_or_fake_quant_ctr=(HistogramObserver if observer == "histogram" else MinMaxObserver).with_args(**eps),
    )  # fmt: skip
    half = 2 ** (weight_bits - 1)
    per_channel = granularity == "per_channel"
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=-half, quant_max=half - 1,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0, is_dynamic=False,
        observer_or_fake_quant_ctr=(PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(**eps),
    )  # fmt: skip
    config = type(base)(act, act, weight, base.bias, base.is_qat)
    q = X86InductorQuantizer()
    if only is not None:
        return q.set_module_name_qconfig(only, config)
    for k in keep_float:
        q.set_module_name_qconfig(k, None)
    return q.set_global(config)


def _export(net: nn.Module, args: tuple, kwargs: dict):
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dyn_args = tuple({0: batch} if torch.is_tensor(a) and a.ndim >= 1 else None for a in args)
    dyn_kwargs = {k: {0: batch} for k in kwargs}
    names = list(_forward_params(net))[: len(args)]
    dynamic = {**dict(zip(names, dyn_args)), **dyn_kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(copy.deepcopy(net).eval(), args, kwargs, dynamic_shapes=dynamic).module()


def _forward_params(net: nn.Module):
    import inspect

    return inspect.signature(net.forward).parameters


def _prepared(net, args, kwargs, quantizer):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_pt2e(_export(net, args, kwargs), quantizer)


def _convert(prepared):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_pt2e(prepared)


def _pt2e(model: Model, calib, args, kwargs, quantizer, batch_size, progress):
    from tqdm.auto import tqdm

    prepared = _prepared(model.net, args, kwargs, quantizer)
    observing = Model(prepared, model.path, model.prediction, model.precond)
    n_batches = -(-len(calib) // batch_size)
    with torch.no_grad():
        for x, t, cond in tqdm(calib.batches(batch_size), total=n_batches, desc="calibrating", disable=not progress):
            observing.predict(x, t.to(x.dtype), "x0", **cond)
    q = _convert(prepared)
    n_q = sum(1 for n in q.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target))
    return q, {"quantized_activations": n_q}


def _activation_qparams(gm) -> dict[str, list]:
    """Static activation ``(scale, zero_point)`` of every quantize/dequantize node, by node name."""
    out = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and not torch.is_tensor(n.args[1]):
            if isinstance(n.args[1], float):
                out[n.name] = [n.args[1], n.args[2]]
    return out


# --- save / load ------------------------------------------------------------------------------------------------
def _module_tensors(qm: QuantizedModel) -> tuple[dict[str, Tensor], dict]:
    """The tensors that define ``qm.module`` and the extra metadata needed to restore them."""
    mod = qm.module
    if qm.backend == "pt2e":
        tensors = {}
        for n in mod.graph.nodes:
            if n.op == "get_attr":
                v = _getattr(mod, n.target)
                if torch.is_tensor(v):
                    tensors[f"g/{n.target}"] = v
        return tensors, {"activation_qparams": _activation_qparams(mod)}
    if qm.backend == "torchao":
        tensors = {}
        for name, p in mod.state_dict().items():
            if type(p) not in (torch.Tensor, nn.Parameter) and hasattr(p, "__tensor_flatten__"):
                for k in p.__tensor_flatten__()[0]:
                    tensors[f"q/{name}/{k}"] = getattr(p, k)
            else:
                tensors[f"p/{name}"] = p
        return tensors, {}
    return {f"p/{k}": v for k, v in mod.state_dict().items()}, {}


def _getattr(mod, target: str):
    for part in target.split("."):
        mod = getattr(mod, part)
    return mod


def _setattr(mod, target: str, value: Tensor) -> None:
    *parents, last = target.split(".")
    for part in parents:
        mod = getattr(mod, part)
    old = getattr(mod, last)
    setattr(mod, last, nn.Parameter(value, requires_grad=False) if isinstance(old, nn.Parameter) else value)


def save_quantized(qm: QuantizedModel, file: str | os.PathLike) -> os.PathLike:
    """Write a quantized model to safetensors (int8 weights, scales, zero points; activation qparams and the
    settings in the metadata), atomically. Reload with :func:`load_quantized` and the float model's architecture."""
    if not isinstance(qm, QuantizedModel):
        raise TypeError(f"save_quantized takes a QuantizedModel, got {type(qm).__name__}")
    tensors, extra = _module_tensors(qm)
    meta = {
        "format": FORMAT,
        "backend": qm.backend,
        "method": qm.method,
        "bits": qm.bits,
        "weight_bits": qm.weight_bits,
        "granularity": qm.granularity,
        "observer": qm.observer,
        "keep_float": list(qm.keep_float),
        "input_spec": qm.input_spec,
        "info": qm.info,
        **extra,
    }
    return save_safetensors(tensors, file, meta)


def load_quantized(file: str | os.PathLike, model: Model, *, compile: bool = True) -> QuantizedModel:
    """Rebuild a quantized model written by :func:`save_quantized`; ``model`` is a float Model of the same
    architecture (path, parametrization and network layout; its weights are not used)."""
    tensors, meta = load_safetensors(file)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} is not a diffusio quantized model (format {meta.get('format')!r})")
    backend = meta["backend"]
    if backend != "fp32":
        _check_backend(backend)
    bits, wbits, gran, spec = meta["bits"], meta["weight_bits"], meta["granularity"], meta["input_spec"]
    observer, keep = meta.get("observer", "histogram"), _resolve_keep(model.net, meta.get("keep_float", []))
    if backend == "pt2e":
        args = tuple(_example(s, 2) for s in spec["args"])
        kwargs = {k: _example(s, 2) for k, s in spec["kwargs"].items()}
        prepared = _prepared(model.net, args, kwargs, _quantizer(bits, wbits, gran, observer, keep))
        with torch.no_grad():
            prepared(*args, **kwargs)
        module = _convert(prepared)
        _restore_pt2e(module, tensors, meta["activation_qparams"], file)
    elif backend == "torchao":
        module = _restore_torchao(model.net, tensors, gran, file, keep)
    else:
        module = copy.deepcopy(model.net).eval()
        _load_exact(module, {k[2:]: v for k, v in tensors.items()}, file)
    run = _compiled(module, backend) if compile and backend != "fp32" else module
    inner = Model(run, model.path, model.prediction, model.precond)
    common = {"method": meta["method"], "bits": bits, "weight_bits": wbits, "granularity": gran,
              "observer": observer, "keep_float": keep}  # fmt: skip
    return QuantizedModel(inner, module, backend=backend, input_spec=spec, info=meta["info"], **common)


def _mismatch(file, what: str) -> ValueError:
    return ValueError(f"{file} does not match this model's architecture: {what}; pass the float model it was made from")


def _restore_pt2e(module, tensors: dict, qparams: dict, file) -> None:
    want = {
        f"g/{n.target}"
        for n in module.graph.nodes
        if n.op == "get_attr" and torch.is_tensor(_getattr(module, n.target))
    }
    if want != set(tensors):
        raise _mismatch(file, f"tensor names differ ({sorted(want ^ set(tensors))[:5]})")
    for key, v in tensors.items():
        old = _getattr(module, key[2:])
        if old.shape != v.shape or old.dtype != v.dtype:
            raise _mismatch(
                file, f"{key[2:]} is {tuple(v.shape)} {v.dtype}, the model has {tuple(old.shape)} {old.dtype}"
            )
        _setattr(module, key[2:], v)
    nodes = {n.name: n for n in module.graph.nodes}
    if set(qparams) != set(_activation_qparams(module)):
        raise _mismatch(file, "the quantized activations differ")
    for name, (scale, zp) in qparams.items():
        n = nodes[name]
        n.args = (n.args[0], float(scale), int(zp), *n.args[3:])
    module.recompile()


def _restore_torchao(net: nn.Module, tensors: dict, granularity: str, file, keep=()) -> nn.Module:
    module = _torchao(net, granularity, keep)
    state = module.state_dict()
    for name, p in state.items():
        if f"p/{name}" in tensors:
            continue
        inner, meta = p.__tensor_flatten__()
        try:
            parts = {k: tensors[f"q/{name}/{k}"] for k in inner}
        except KeyError:
            raise _mismatch(file, f"no quantized tensors for {name}") from None
        new = type(p).__tensor_unflatten__(parts, meta, p.shape, p.stride())
        *parents, last = name.split(".")
        owner = module.get_submodule(".".join(parents))
        setattr(owner, last, nn.Parameter(new, requires_grad=False))
    plain = {k[2:]: v for k, v in tensors.items() if k.startswith("p/")}
    missing = [k for k in plain if k not in state]
    if missing:
        raise _mismatch(file, f"unknown tensors {missing[:5]}")
    module.load_state_dict(plain, strict=False)
    return module


def _load_exact(module: nn.Module, state: dict, file) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise _mismatch(file, str(e).splitlines()[0]) from None
