"""The families registry: one Family record per family, every bundled config owned by one family and buildable
through it, every family's solvers registered."""

from importlib import resources

import pytest
import yaml

from diffusio.app.config import build_loss, build_model
from diffusio.families import FAMILIES
from diffusio.samplers import SOLVERS

CONFIGS = sorted(p.name for p in resources.files("diffusio.app.configs").iterdir() if p.name.endswith(".yaml"))


def test_every_bundled_config_belongs_to_exactly_one_family():
    owners = {name: [f.name for f in FAMILIES.values() if name in f.configs] for name in CONFIGS}
    assert {k: v for k, v in owners.items() if len(v) != 1} == {}
    listed = {c for f in FAMILIES.values() for c in f.configs}
    assert listed <= set(CONFIGS), listed - set(CONFIGS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_solvers_are_registered(family):
    for name in FAMILIES[family].solvers:
        assert name in SOLVERS


@pytest.mark.parametrize("name", ["interpolant.yaml", "bridge.yaml", "flowmap.yaml", "mr_digits.yaml", "moons.yaml"])
def test_a_config_builds_through_its_family(name):
    cfg = yaml.safe_load(resources.files("diffusio.app.configs").joinpath(name).read_text())
    family = FAMILIES[cfg.get("family", "diffusion")]
    assert name in family.configs or family.name == "diffusion"
    shape = (1, 8, 8) if cfg["data"]["name"] in ("digits", "restoration") else (2,)
    if cfg.get("teacher"):  # a distillation config names a trained model file: build the loss without it
        cfg = {**cfg, "teacher": None}
    model = build_model(cfg, shape, None)
    loss = build_loss(cfg, model)
    if family.build_model is not None:
        assert type(model).__name__ == type(family.build_model(cfg, shape, None, _builders())).__name__
    if family.loss_class is not None:
        assert isinstance(loss, family.loss_class)


def _builders():
    from diffusio.app.config import builders

    return builders()
