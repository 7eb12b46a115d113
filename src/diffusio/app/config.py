"""Strings to objects: the one place where config names map to paths, nets, data, densities and weightings.

A run config is a plain dict (read from YAML) with sections ``data``, ``path``, ``net``, ``model``, ``loss``,
``train`` and ``sample``; each section names its object with ``name`` and passes the rest as arguments. The
same dict is stored in every checkpoint, so :func:`load_model` can rebuild what was trained.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path as FsPath

import torch
import yaml

from diffusio.app.schema import ConfigError, check_call, check_keys, check_value, validate_config
from diffusio.app.schema import _named as named_section
from diffusio.core import paths
from diffusio.data.sources import FunctionSource, TensorSource
from diffusio.families import FAMILIES, Builders, Family, pfgmpp
from diffusio.families.interpolants.family import GAMMAS
from diffusio.families.mean_reverting import sde as mrsde
from diffusio.families.mean_reverting.family import DEGRADATIONS
from diffusio.io import load_safetensors
from diffusio.models.base import EDMPrecond, Model
from diffusio.training import losses

__all__ = [
    "COUPLINGS",
    "DATA",
    "DEGRADATIONS",
    "DENSITIES",
    "FAMILIES",
    "GAMMAS",
    "NETS",
    "PATHS",
    "WEIGHTINGS",
    "build_data",
    "build_loss",
    "build_model",
    "build_path",
    "check_config",
    "load_config",
    "load_model",
]

PATHS: dict[str, Callable[..., paths.Path]] = {
    "vp_linear": paths.LinearVP,
    "vp_cosine": paths.CosineVP,
    "ddpm": paths.DiscreteDDPM,
    "ve": paths.VE,
    "edm": paths.EDM,
    "flow": paths.RectifiedFlow,
    "trig": paths.Trigonometric,
    "pfgmpp": pfgmpp.PFGMPP,
    "mr_cosine": mrsde.CosineTheta,
    "mr_constant": mrsde.ConstantTheta,
}
DENSITIES = {"uniform": losses.UniformTime, "logit_normal": losses.LogitNormal, "edm": losses.EDMLogNormal}
WEIGHTINGS = {"uniform": losses.UniformWeight, "min_snr": losses.MinSNR, "edm": losses.EDMWeight}


def _nets() -> dict[str, Callable[..., torch.nn.Module]]:
    from diffusio.nets import MLP, FlowMapMLP, UNet
    from diffusio.nets.dit import DiT
    from diffusio.nets.energy import EnergyMLP

    return {"mlp": MLP, "unet": UNet, "flowmap_mlp": FlowMapMLP, "dit": DiT, "energy_mlp": EnergyMLP}


NETS = ("mlp", "unet", "flowmap_mlp", "dit", "energy_mlp")
DATA = ("toy", "digits", "images", "patches", "phantoms", "restoration")


def _build_coupling(section: dict | str | None):
    """A noise-data coupling for DiffusionLoss from a config: none, ``ot``, ``ot_sinkhorn`` or ``reflow``."""
    from diffusio.families import flow_matching as fm

    spec = {"name": section} if isinstance(section, str) else dict(section or {"name": "independent"})
    name = spec.pop("name", None)
    if name == "independent":
        return None
    if name == "ot":
        return fm.MinibatchOT()
    if name == "ot_sinkhorn":
        return fm.MinibatchOT(fm.sinkhorn_assignment(spec.pop("reg", 0.05)))
    if name == "reflow":
        teacher = spec.pop("teacher", None)
        if not teacher:
            raise ValueError("coupling 'reflow' needs teacher: PATH/TO/model.safetensors (the model to rectify)")
        model, cfg = load_model(teacher)
        g = torch.Generator().manual_seed(spec.pop("seed", 0))
        n, steps = spec.pop("pairs", 20000), spec.pop("steps", 50)
        if spec:
            raise ValueError(f"unknown reflow option(s) {', '.join(sorted(spec))}; valid: teacher, pairs, steps, seed")
        return fm.ReflowCoupling.from_model(model, n, tuple(cfg["data_shape"]), steps=steps, generator=g)
    raise ValueError(f"unknown coupling {name!r}; valid: {', '.join(COUPLINGS)}")


COUPLINGS = ("independent", "ot", "ot_sinkhorn", "reflow")


def _pick(registry: dict, section: dict | str, what: str):
    """``registry[section['name']](**rest)`` with errors that list the valid names."""
    spec = {"name": section} if isinstance(section, str) else dict(section)
    name = spec.pop("name", None)
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(registry)}")
    try:
        return registry[name](**spec)
    except TypeError as e:
        raise ValueError(f"bad arguments for {what} {name!r}: {e}") from e


def build_path(section: dict | str) -> paths.Path:
    """The path a config section names (``{name: edm, ...}`` or just ``edm``), built with the section's arguments."""
    return _pick(PATHS, section, "path")


def build_data(section: dict):
    """A training data source (``sample(n, generator) -> (x0, cond)``) with ``shape`` and ``num_classes``."""
    spec = dict(section)
    name = spec.pop("name", None)
    if name == "toy":
        from diffusio.data.toy import sample_toy

        dataset = spec.pop("dataset", "moons")
        sample_toy(dataset, 1)  # validates the name early
        return FunctionSource(lambda n, g: sample_toy(dataset, n, generator=g), (2,))
    if name == "digits":
        from diffusio.data.digits import load_digits

        labels = spec.pop("labels", True)
        x, y = load_digits(**spec)
        return TensorSource(x, y if labels else None)
    if name == "images":
        from diffusio.data.images import load_image_folder

        return TensorSource(load_image_folder(**spec))
    if name == "patches":
        from diffusio.data.images import image_patches

        n, image, seed = spec.pop("n", 20000), spec.pop("image", "all"), spec.pop("seed", 0)
        return TensorSource(image_patches(image, n=n, generator=torch.Generator().manual_seed(seed), **spec))
    if name == "restoration":
        clean = build_data(spec.pop("clean", {"name": "digits", "labels": False}))
        degrade = _pick(DEGRADATIONS, spec.pop("degrade", "noise"), "degradation")
        return mrsde.RestorationSource(clean.x, degrade)
    if name == "phantoms":  # fresh procedural phantoms every batch (an infinite data set)
        from diffusio.data.phantoms import random_phantoms

        size = spec.pop("size", 32)
        random_phantoms(1, size, **spec)  # validates the arguments early
        return FunctionSource(lambda n, g: random_phantoms(n, size, generator=g, **spec), (1, size, size))
    raise ValueError(f"unknown data {name!r}; valid: {', '.join(DATA)}")


def build_net(section: dict, data_shape: tuple[int, ...], num_classes: int | None, seed: int = 0):
    """Build the network with a deterministic initialisation (the global RNG is left untouched)."""
    spec = dict(section)
    name = spec.get("name")
    nets = _nets()
    if name in ("mlp", "flowmap_mlp"):
        spec.setdefault("dim", data_shape[0])
    elif name == "unet":
        spec.setdefault("in_channels", data_shape[0])
    elif name == "energy_mlp":
        spec.setdefault("dim", data_shape[0])
    elif name == "dit":
        spec.setdefault("in_channels", data_shape[0])
        spec.setdefault("image_size", data_shape[-1])
    if spec.get("num_classes", "auto") == "auto" and name != "flowmap_mlp":
        spec["num_classes"] = num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _pick(nets, spec, "net")


def _family(config: dict) -> Family:
    family = config.get("family", "diffusion")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def builders() -> Builders:
    """The config readers the families build with (they sit below the app)."""
    from diffusio.metrics import psnr

    return Builders(build_net, build_path, build_data, lambda f: load_model(f)[0], _pick, DENSITIES, {"psnr": psnr})


def build_model(config: dict, data_shape: tuple[int, ...], num_classes: int | None = None):
    """The model of a run config: network + path + parametrization (+ EDM preconditioning) for the diffusion
    family (PFGM++ and flow matching included); the interpolant, flow-map and mean-reverting families' models."""
    family = _family(config)
    if family.build_model is not None:
        return family.build_model(config, data_shape, num_classes, builders())
    path = build_path(config.get("path", "vp_linear"))
    net_cfg = config.get("net")
    if net_cfg is None:
        raise ValueError("the config needs a 'net' section, e.g. {name: mlp, hidden: 256}")
    net = build_net(net_cfg, data_shape, num_classes, config.get("train", {}).get("seed", 0))
    m = dict(config.get("model", {}))
    precond = m.pop("precond", None)
    prediction = m.pop("prediction", "x0" if precond else "eps")
    if m:
        raise ValueError(f"unknown model option(s) {', '.join(sorted(m))}; valid: prediction, precond")
    pre = EDMPrecond(**(precond if isinstance(precond, dict) else {})) if precond else None
    return Model(net, path, prediction, pre)


def build_loss(config: dict, model):
    """The training objective of a run config (DiffusionLoss with an optional coupling, or the family's loss)."""
    family = _family(config)
    if family.build_loss is not None:
        return family.build_loss(config, model, builders())
    spec = dict(config.get("loss", {}))
    target = spec.pop("target", model.prediction)
    density = _pick(DENSITIES, spec.pop("density", "uniform"), "t-density")
    weighting = _pick(WEIGHTINGS, spec.pop("weighting", "uniform"), "weighting")
    coupling = _build_coupling(spec.pop("coupling", None))
    if spec:
        raise ValueError(
            f"unknown loss option(s) {', '.join(sorted(spec))}; valid: target, density, weighting, coupling"
        )
    cls = family.loss_class or losses.DiffusionLoss
    return cls(target, density, weighting, coupling)


# --- the schema (diffusio.app.schema): every section, key, type and range, checked before any work ------------------
def _mapping(where: str, v) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"section {where} must be a mapping of options, got {v!r}")
    return v


def _positive(where: str, spec: dict, keys) -> None:
    for k in keys:
        if k in spec and not spec[k] >= 1:
            raise ConfigError(f"{where}.{k} must be >= 1, got {spec[k]!r}")


def _check_data(where: str, v, cfg: dict) -> None:
    from diffusio.data.digits import load_digits
    from diffusio.data.images import image_patches, load_image_folder
    from diffusio.data.phantoms import random_phantoms

    name, spec = named_section(where, v, DATA)
    where = f"{where} ({name})"
    if name == "toy":
        check_keys(where, spec, {"dataset"})
        check_value(f"{where}.dataset", spec.get("dataset", "moons"), str)
    elif name == "digits":
        check_call(where, load_digits, spec, extra={"labels": bool})
    elif name == "images":
        check_call(where, load_image_folder, spec)
    elif name == "patches":
        check_call(where, image_patches, spec, extra={"image": str, "seed": int}, skip=("name", "generator"))
        _positive(where, spec, ("n", "size"))
    elif name == "phantoms":
        check_call(where, random_phantoms, spec, skip=("n", "generator"))
        _positive(where, spec, ("size",))
    elif name == "restoration":
        check_keys(where, spec, {"clean", "degrade"})
        if "clean" in spec:
            _check_data(f"{where}.clean", spec["clean"], cfg)


def _check_path(where: str, v, cfg: dict) -> None:
    name, spec = named_section(where, v, PATHS)
    check_call(f"{where} ({name})", PATHS[name], spec)


def _check_net(where: str, v, cfg: dict) -> None:
    nets = _nets()
    if cfg.get("family") == "multitask":  # the family's own image-label network (nets.heads)
        from diffusio.nets.heads import image_label_net

        nets = {"image_label": image_label_net}
    if cfg.get("family") == "levels":  # noise-level classifiers (families.levels, for Denoising MCMC)
        from diffusio.families.levels.family import _nets as level_nets

        nets = level_nets()
    name, spec = named_section(where, v, nets)
    skip = ("num_levels", "dim", "in_channels", "image_size") if cfg.get("family") == "levels" else ()
    check_call(f"{where} ({name})", nets[name], spec, extra={"num_classes": int | str | None}, skip=skip)
    for k, val in spec.items():
        if isinstance(val, int) and not isinstance(val, bool) and val < 0:
            raise ConfigError(f"{where}.{k} must be >= 0, got {val}")


def _check_train(where: str, v, cfg: dict) -> None:
    from diffusio.training import TrainConfig

    check_call(where, TrainConfig, _mapping(where, v))


SAMPLE_KEYS = {"solver": str, "steps": int, "n": int, "grid": str | None, "seed": int, "batch_size": int}


def _check_sample(where: str, v, cfg: dict) -> None:
    spec = _mapping(where, v)
    check_keys(where, spec, SAMPLE_KEYS)
    for k, val in spec.items():
        check_value(f"{where}.{k}", val, SAMPLE_KEYS[k])
    _positive(where, spec, ("steps", "n", "batch_size"))


MODEL_KEYS = {"prediction": str, "precond": dict | bool | None, "heads": list[str]}


def _check_model(where: str, v, cfg: dict) -> None:
    spec = _mapping(where, v)
    if cfg.get("family") == "multitask":
        from diffusio.families.multitask import MultiTaskModel

        check_call(where, MultiTaskModel, spec, skip=("net", "path"))
        return
    if cfg.get("family") == "levels":
        from diffusio.families.levels.family import MODEL_KEYS as LEVEL_KEYS

        check_keys(where, spec, LEVEL_KEYS)
        for k, val in spec.items():
            check_value(f"{where}.{k}", val, LEVEL_KEYS[k])
        return
    check_keys(where, spec, MODEL_KEYS)
    for k, val in spec.items():
        check_value(f"{where}.{k}", val, MODEL_KEYS[k])


def _check_loss(where: str, v, cfg: dict) -> None:
    spec = _mapping(where, v)
    family = cfg.get("family", "diffusion")
    if family == "interpolant":
        from diffusio.families.interpolants import InterpolantLoss

        check_call(where, InterpolantLoss, spec, skip=("base",))
    elif family == "multitask":
        from diffusio.families.multitask import MultiTaskLoss

        check_call(where, MultiTaskLoss, spec)
    elif family == "levels":
        from diffusio.families.levels import LevelLoss

        check_call(where, LevelLoss, spec, skip=("num_levels",))
    elif family == "flowmap":
        from diffusio.families.flowmap import FlowMapDistillation

        check_call(where, FlowMapDistillation, spec, extra={"density": str | dict}, skip=("teacher",))
    else:
        keys = {"target": str, "density": str | dict, "weighting": str | dict, "coupling": str | dict | None}
        check_keys(where, spec, keys)
        for k, val in spec.items():
            check_value(f"{where}.{k}", val, keys[k])


def _check_interpolant(where: str, v, cfg: dict) -> None:
    spec = _mapping(where, v)
    check_keys(where, spec, {"a", "b", "gamma"})
    for k, val in spec.items():
        check_value(f"{where}.{k}", val, str | dict)


def _check_family(where: str, v, cfg: dict) -> None:
    if v not in FAMILIES:
        raise ConfigError(f"unknown family {v!r}; valid: {', '.join(FAMILIES)}")


FINETUNE_KEYS = {
    "method": str,
    "from": str,
    "rank": int,
    "alpha": float,
    "target_modules": list[str] | str,
    "block_size": int,
    "dropout": float,
    "tau": float,
    "fraction": float,
    "lambda_rank": float,
    "min_rank_dim": int,
    "reselect_at": list[int] | None,
}


def _check_finetune(where: str, v, cfg: dict) -> None:
    """The ``finetune:`` section (``diffusio train CONFIG --finetune CKPT``); per-method options in run_finetune."""
    spec = _mapping(where, v)
    check_keys(where, spec, FINETUNE_KEYS)
    for k, val in spec.items():
        check_value(f"{where}.{k}", val, FINETUNE_KEYS[k])
    if spec.get("method", "lora") not in FINETUNE_METHODS:
        raise ConfigError(f"{where}.method must be one of {', '.join(FINETUNE_METHODS)}, got {spec['method']!r}")


def _typed(hint):
    return lambda where, v, cfg: check_value(where, v, hint)


SCHEMA = {
    "family": _check_family,
    "data": _check_data,
    "base": _check_data,
    "path": _check_path,
    "net": _check_net,
    "model": _check_model,
    "loss": _check_loss,
    "train": _check_train,
    "sample": _check_sample,
    "interpolant": _check_interpolant,
    "finetune": _check_finetune,
    "teacher": _typed(str | None),
    "data_shape": _typed(list[int]),
    "num_classes": _typed(int | None),
}


def check_config(cfg) -> dict:
    """Validate a run config against the schema (``SCHEMA``): raises :class:`ConfigError` naming the key."""
    return validate_config(cfg, SCHEMA)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without aliases (a billion-laughs expansion) and without python tags (SafeLoader refuses those)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML aliases (*{event.anchor}) are not allowed in diffusio configs")
        return super().compose_node(parent, index)


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML run config and check it against the schema."""
    p = FsPath(path)
    if not p.is_file():
        raise FileNotFoundError(f"no config file at {p}")
    if p.stat().st_size > 1 << 20:
        raise ConfigError(f"{p} is larger than 1 MB; a run config is a few lines")
    try:
        cfg = yaml.load(p.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{p} must hold a mapping with sections data, path, net, model, loss, train")
    return check_config(cfg)


def load_model(file: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True) -> tuple[Model, dict]:
    """Rebuild a trained Model from ``model.safetensors`` (EMA weights) or ``checkpoint.safetensors``.

    A ``model.safetensors`` older than the ``checkpoint.safetensors`` beside it (a save killed between the two
    writes) is never used: the checkpoint's EMA weights are read instead."""
    from diffusio.training.loop import _file_step

    sibling = FsPath(file).with_name("checkpoint.safetensors")
    if ema and FsPath(file).name == "model.safetensors" and sibling.is_file():
        if _file_step(sibling) != _file_step(FsPath(file)):
            file = sibling
    tensors, meta = load_safetensors(file, device=device)
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} has no diffusio config in its metadata; was it written by diffusio?")
    if "data_shape" not in cfg:
        raise ValueError(f"{file}: the stored config has no data_shape; was it written by diffusio train?")
    try:
        check_config(cfg)
    except ConfigError as e:
        raise ValueError(f"{file}: the stored config is invalid: {e}") from e
    if meta.get("format") == "diffusio-checkpoint-1":
        prefix = "ema/" if ema else "model/"
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    shape = tuple(cfg["data_shape"])
    # the architecture is built on the meta device first (no memory) and compared with the file's tensors, so a
    # crafted config (hidden: 300000) is refused before anything is allocated
    try:
        with torch.device("meta"):
            skeleton = build_model(cfg, shape, cfg.get("num_classes"))
    except (RuntimeError, NotImplementedError):  # a family whose constructor reads values (no meta build)
        skeleton = None
    if skeleton is not None:
        _same_tensors(file, skeleton.net.state_dict(), tensors)
    model = build_model(cfg, shape, cfg.get("num_classes"))
    _same_tensors(file, model.net.state_dict(), tensors)
    model.net.load_state_dict(tensors)
    model.net.to(device).eval()
    return model, copy.deepcopy(cfg)


def _same_tensors(file, expected: dict, found: dict) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{file} does not hold the weights of the architecture its config describes (missing: "
            f"{', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(extra[:3]) or 'none'})"
        )
    for k, v in expected.items():
        if tuple(found[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{file}: tensor {k!r} has shape {tuple(found[k].shape)} but the config's architecture needs "
                f"{tuple(v.shape)}; the config and the weights disagree"
            )


def run_training(
    config: dict,
    out_dir: str | os.PathLike | None,
    *,
    steps: int | None = None,
    resume: bool = False,
    dist_info=None,
    progress: bool = True,
):
    """Train from a run config; returns the Trainer (its ``model`` holds the raw weights, ``ema`` the average).

    With ``resume`` the stored config of ``out_dir/checkpoint.safetensors`` must describe the same model.
    """
    from diffusio.training import TrainConfig, Trainer

    cfg = copy.deepcopy(check_config(config))
    train_cfg = dict(cfg.get("train", {}))
    if steps is not None:
        train_cfg["steps"] = steps
    train_cfg.setdefault("progress", progress)
    tc = TrainConfig.from_dict(train_cfg)
    data = build_data(cfg.get("data", {}))
    cfg["data_shape"], cfg["num_classes"] = list(data.shape), data.num_classes
    model = build_model(cfg, data.shape, data.num_classes)
    loss = build_loss(cfg, model)
    run_cfg = {k: v for k, v in cfg.items() if k != "train"}
    trainer = Trainer(model, loss, data, tc, out_dir, run_cfg, dist_info)
    if resume:
        _check_same_model(FsPath(out_dir) / "checkpoint.safetensors", run_cfg)
    trainer.fit(resume=resume)
    return trainer


def _check_same_model(ckpt: FsPath, run_cfg: dict) -> None:
    if not ckpt.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt}; run without --resume first")
    _, meta = load_safetensors(ckpt)
    stored = {k: v for k, v in meta.get("config", {}).items() if k in ("path", "net", "model", "data")}
    want = {k: v for k, v in run_cfg.items() if k in ("path", "net", "model", "data")}
    if stored != want:
        raise ValueError(f"cannot resume: {ckpt} was trained with a different config ({stored} vs {want})")


# --- fine-tuning a trained model (diffusio train CONFIG --finetune CKPT) -----------------------------------------
FINETUNE_METHODS = ("lora", "loha", "lokr", "oft", "sara", "full")


def run_finetune(config: dict, ckpt: str | os.PathLike, out_dir: str | os.PathLike, *, steps: int | None = None,
                 progress: bool = True) -> dict:  # fmt: skip
    """Fine-tune the model in ``ckpt`` on ``config``'s data with its ``finetune:`` section.

    ``finetune: {method: lora|loha|lokr|oft|sara|full, rank, alpha, target_modules, block_size, tau, fraction,
    lambda_rank, reselect_at}``; the optimisation settings come from ``train`` (steps, lr, batch_size,
    label_dropout, seed). Writes ``adapter.safetensors`` (peft methods) or ``sara.safetensors`` (only the trained
    entries) and ``model.safetensors`` (merged weights with the base config, for ``diffusio sample``).
    """
    from diffusio import finetune as ft
    from diffusio.training.checkpoint import save_model_file

    spec = dict(config.get("finetune") or {})
    method = spec.pop("method", "lora")
    if method not in FINETUNE_METHODS:
        raise ValueError(f"unknown finetune method {method!r}; valid: {', '.join(FINETUNE_METHODS)}")
    base, base_cfg = load_model(ckpt)
    data = build_data(config.get("data", base_cfg.get("data", {})))
    if tuple(data.shape) != tuple(base_cfg["data_shape"]):
        raise ValueError(f"the config's data have shape {tuple(data.shape)}, the model {tuple(base_cfg['data_shape'])}")
    train = dict(config.get("train", {}))
    opts = {k: train[k] for k in ("lr", "batch_size", "label_dropout", "seed") if k in train}
    n_steps = steps or train.get("steps", 500)
    reselect_at = spec.pop("reselect_at", None)
    known = {"rank", "alpha", "target_modules", "block_size", "dropout"} if method not in ("sara", "full") else set()
    known |= {"tau", "fraction", "lambda_rank", "min_rank_dim"} if method == "sara" else set()
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(
            f"unknown finetune option(s) {', '.join(unknown)} for {method}; valid: {', '.join(sorted(known))}"
        )
    out = FsPath(out_dir)
    if method == "sara":
        model = ft.sara(base, **spec)
    elif method == "full":
        model = base
    else:
        model = ft.adapt(base, method, **spec)
    result = ft.finetune(model, data, n_steps, reselect_at=reselect_at, progress=progress, **opts)
    if method == "sara":
        ft.save_sara(model, out / "sara.safetensors")
        state = model.merged_state_dict()
    elif method == "full":
        state = base.net.state_dict()
    else:
        ft.save_adapter(model, out / "adapter.safetensors")
        state = model.merged_state_dict()
    cfg = {**base_cfg, "finetune": {"method": method, "from": str(ckpt), **spec}}
    save_model_file(out / "model.safetensors", state, cfg, n_steps)
    return {**result, "method": method, "trainable": sum(p.numel() for p in model.net.parameters() if p.requires_grad)
            if method != "sara" else model.trainable_parameters()}  # fmt: skip
