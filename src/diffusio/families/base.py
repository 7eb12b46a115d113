"""The record every family exports: how to build its model and loss from a run config, how to generate, its solvers
and its bundled configs. The app's registry (``diffusio.families.FAMILIES``) maps a config's ``family`` to it.

Families sit below the app, so the app passes its config readers down as a :class:`Builders` value (nets, paths,
data, trained models, string registries) instead of the families importing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DIFFUSION", "Builders", "Family"]


@dataclass(frozen=True)
class Builders:
    """The app's config readers a family uses.

    ``net(section, data_shape, num_classes, seed)``, ``path(section)``, ``data(section)``, ``load_model(file)``
    (a trained model), ``pick(registry, section, what)`` (a name to an object, listing the valid names on error),
    ``densities`` (the t-density registry) and ``metrics`` (name to function, e.g. ``psnr``; metrics sit above the
    families).
    """

    net: Callable
    path: Callable
    data: Callable
    load_model: Callable
    pick: Callable
    densities: dict
    metrics: dict


@dataclass(frozen=True)
class Family:
    """A model family: ``name`` (the config's ``family`` value) and what the app needs to run it.

    ``build_model(config, data_shape, num_classes, build)`` returns the model (``None``: the Gaussian diffusion
    ``Model`` of the config's path, net and parametrization); ``build_loss(config, model, build)`` the objective
    (``None``: ``loss_class`` (default ``DiffusionLoss``) from the config's target, density, weighting and coupling);
    ``generate(model, config, n, *, solver, steps, seed, build, **options) -> (samples, calls, extra metrics)``
    (``None``: batched ``samplers.sample``). ``solvers``: the solvers it registers; ``configs``: its bundled configs
    (names in ``diffusio/app/configs``).
    """

    name: str
    summary: str
    build_model: Callable | None = None
    build_loss: Callable | None = None
    loss_class: type | None = None
    generate: Callable | None = None
    solvers: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()


DIFFUSION = Family(
    "diffusion",
    "Gaussian diffusion on any path (VP, VE, EDM, flows), any parametrization, optional EDM preconditioning",
    configs=(
        "checkerboard.yaml",
        "digits.yaml",
        "digits16.yaml",
        "gaussians.yaml",
        "images.yaml",
        "moons.yaml",
        "patches.yaml",
        "phantoms.yaml",
        "rings.yaml",
        "spirals.yaml",
        "swiss_roll.yaml",
    ),
)
