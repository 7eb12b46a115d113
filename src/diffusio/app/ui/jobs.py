"""What the studio runs: validated requests, sampling / inpainting / comparison jobs in worker threads, x0 previews
every ``k`` steps, cancellation within one model step, and PNGs that carry their parameters.

Everything here goes through the library's front doors (:func:`diffusio.samplers.sample`,
:class:`diffusio.guidance.ClassifierFreeGuidance`, :func:`diffusio.inverse.solve`); the HTTP layer is
:mod:`diffusio.app.ui.server`.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffusio.core.parametrization import convert
from diffusio.models.base import ModelBase, ModelWrapper

__all__ = [
    "MAX_AUTOTUNE_NFE",
    "MAX_BATCH",
    "MAX_SEARCH_BUDGET",
    "MAX_SEARCH_OUTPUTS",
    "MAX_STEPS",
    "PNG_KEY",
    "SEARCH_VERIFIERS",
    "BadRequest",
    "Cancelled",
    "Job",
    "Studio",
    "read_png_params",
    "render",
]

MAX_STEPS = 1000
MAX_BATCH = 256
MAX_COMPARE_CELLS = 36
MAX_AUTOTUNE_NFE = 100  # autotune budgets the page offers (model calls per sample)
MAX_SEARCH_BUDGET = 4096  # model calls per output a search may spend
MAX_SEARCH_OUTPUTS = 64
SEARCH_VERIFIERS = ("classifier", "self")
PNG_KEY = "diffusio"  # the PNG text chunk holding a picture's parameters (JSON)
GRID_NAMES = ("uniform", "logsnr", "karras", "quadratic")
INPAINT_METHODS = ("dps", "pigdm", "reddiff", "pinv")


class BadRequest(ValueError):
    """A request the studio refuses; ``status`` is the HTTP status (400 bad value, 403 outside root, 404 missing)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """Raised from a step callback when the user pressed cancel; ``state`` is the last x0 preview (or x)."""

    def __init__(self, state: Tensor | None, step: int):
        super().__init__(f"cancelled after step {step}")
        self.state, self.step = state, step


# ---------------------------------------------------------------------------------------------------- pictures


def _to_uint8_image(x: Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` in [-1, 1] tiled in a square-ish grid, uint8 ``(H', W', C)`` (1 px white gaps)."""
    n, c, h, w = x.shape
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    out = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img[i].transpose(1, 2, 0)
    return out


def _scatter_image(x: Tensor, size: int = 192, lim: float = 3.0) -> np.ndarray:
    """2-D points as a density picture (dark = many points), uint8 ``(size, size, 1)``; no matplotlib (fast)."""
    pts = x.detach().double().cpu().numpy()
    pts = pts[np.isfinite(pts).all(1)]
    hist, _, _ = np.histogram2d(-pts[:, 1], pts[:, 0], bins=size, range=[[-lim, lim], [-lim, lim]])
    shade = 1.0 - np.minimum(hist / max(1.0, np.quantile(hist[hist > 0], 0.9) if (hist > 0).any() else 1.0), 1.0)
    return (shade * 255).round().astype(np.uint8)[..., None]


def render(x: Tensor) -> np.ndarray:
    """The picture of a batch: an image grid for ``(N, C, H, W)``, a density plot for 2-D points ``(N, 2)``."""
    if x.ndim == 4:
        return _to_uint8_image(x)
    if x.ndim == 2 and x.shape[1] == 2:
        return _scatter_image(x)
    raise BadRequest(
        f"the studio shows images (N, C, H, W) or 2-D points (N, 2); got samples of shape {tuple(x.shape)}"
    )


def png_bytes(arr: np.ndarray, params: dict | None = None) -> bytes:
    """PNG of a uint8 ``(H, W, C)`` array; ``params`` go into the text chunk ``diffusio`` as JSON."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    info = None
    if params is not None:
        info = PngInfo()
        info.add_text(PNG_KEY, json.dumps(params, sort_keys=True))
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def read_png_params(data: bytes) -> dict:
    """The parameters a studio PNG carries (its ``diffusio`` text chunk); BadRequest if there are none."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # PIL raises many types for a non-PNG
        raise BadRequest(f"not a readable PNG: {e}") from None
    text = getattr(im, "text", {}) or {}
    if PNG_KEY not in text:
        raise BadRequest(
            "this PNG carries no diffusio parameters (no 'diffusio' text chunk); was it saved by the studio?"
        )
    try:
        params = json.loads(text[PNG_KEY])
    except json.JSONDecodeError:
        raise BadRequest("the PNG's diffusio text chunk is not valid JSON") from None
    if not isinstance(params, dict):
        raise BadRequest("the PNG's diffusio text chunk must hold a JSON object")
    return params


def decode_png_array(b64: str, what: str) -> np.ndarray:
    """A base64 PNG (optionally a data URL) as a float array ``(H, W, C)`` in [0, 1]."""
    from PIL import Image

    if not isinstance(b64, str) or not b64:
        raise BadRequest(f"{what} must be a base64 PNG (data URL)")
    try:
        raw = base64.b64decode(b64.split(",", 1)[-1], validate=False)
        im = Image.open(io.BytesIO(raw))
        im.load()
    except Exception as e:
        raise BadRequest(f"{what} is not a readable PNG: {e}") from None
    arr = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"), dtype=np.float64) / 255.0
    return arr


# ---------------------------------------------------------------------------------------------------- requests


def _int(p: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = p.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not float(v).is_integer():
        raise BadRequest(f"{key} must be an integer in [{lo}, {hi}]; got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise BadRequest(f"{key} must be in [{lo}, {hi}]; got {v}")
    return v


def _float(p: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = p.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be a finite number in [{lo}, {hi}]; got {v!r}")
    return float(v)


def _seed(p: dict) -> int:
    v = p.get("seed", 0)
    if v is None or v == "random":
        return secrets.randbelow(2**31)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise BadRequest(f"seed must be an integer in [0, 2^63) or 'random'; got {v!r}")
    return v


def parse_grid(grid, steps: int):
    """A grid name (or None: the solver's) or a typed list of decreasing times ("80, 10, 1, 0.002" or a list);
    returns (grid for ``sample``, steps)."""
    if grid is None or grid == "" or grid == "default":
        return None, steps
    if isinstance(grid, str) and grid.strip() in GRID_NAMES:
        return grid.strip(), steps
    if isinstance(grid, str):
        try:
            grid = [float(s) for s in re.split(r"[,\s]+", grid.strip()) if s]
        except ValueError:
            raise BadRequest(
                f"grid must be one of {', '.join(GRID_NAMES)} or a list of decreasing times like '80, 10, 1, 0.002'; "
                f"got {grid!r}"
            ) from None
    if not isinstance(grid, list) or len(grid) < 2 or not all(isinstance(v, int | float) for v in grid):
        raise BadRequest("a typed grid needs at least two times, e.g. '80, 10, 1, 0.002'")
    if len(grid) - 1 > MAX_STEPS:
        raise BadRequest(f"a typed grid may have at most {MAX_STEPS + 1} times; got {len(grid)}")
    if not all(math.isfinite(v) for v in grid) or any(b >= a for a, b in itertools.pairwise(grid)):
        raise BadRequest(f"a typed grid must be finite and strictly decreasing; got {grid}")
    return torch.tensor(grid, dtype=torch.float64), len(grid) - 1


@dataclass
class SampleSpec:
    """A validated sampling request."""

    ckpt: str
    solver: str
    steps: int
    grid: object
    grid_text: object
    scale: float
    seed: int
    batch: int
    label: int | None
    preview_every: int
    options: dict = field(default_factory=dict)
    nfe: int | None = None  # solver "auto": the budget of model calls per sample autotune plans for
    plan: dict | None = None  # solver "auto": the plan used (solver, steps, grid, options), set once tuned

    def params(self) -> dict:
        """What a PNG stores to re-run this request (for ``auto``, the plan itself: a re-run does not re-tune)."""
        extra = {} if self.solver != "auto" else {"nfe": self.nfe, "plan": self.plan}
        return {
            **extra,
            "kind": "sample",
            "ckpt": self.ckpt,
            "solver": self.solver,
            "steps": self.steps,
            "grid": self.grid_text,
            "scale": self.scale,
            "seed": self.seed,
            "batch": self.batch,
            "label": self.label,
            "options": self.options,
        }


# ---------------------------------------------------------------------------------------------------- jobs


class _Watch(ModelWrapper):
    """Counts model calls, stops within one call when cancelled, and reports x0 every ``every`` calls (for methods
    without a step callback, e.g. inverse solvers)."""

    def __init__(self, inner: ModelBase, job: Job, every: int, total: int):
        super().__init__(inner)
        self.job, self.every, self.total, self.calls, self.last = job, every, total, 0, None

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        if self.job.cancel_event.is_set():
            raise Cancelled(self.last, self.calls)
        t0 = time.perf_counter()
        out = self.inner.predict(x, t, "x0", **cond)
        self.job.step_seconds.append(time.perf_counter() - t0)
        self.last = out.detach()
        if self.calls % self.every == 0:
            self.job.preview(self.calls, self.total, float(t.flatten()[0]), self.last)
        self.calls += 1
        return convert(out, "x0", kind, x, t, self.path)


class _Ticker(ModelWrapper):
    """Passes every call through unchanged (same prediction kind, so results equal the front door's), counts calls,
    stops within one call when cancelled, and reports progress at most every ``interval`` seconds, with the x0 of
    the first 16 samples of the batch as a preview (for long jobs without a step callback: autotune, search)."""

    def __init__(self, inner: ModelBase, job: Job, phase: str, total: int | None = None, interval: float = 0.25):
        super().__init__(inner)
        self.job, self.phase, self.total, self.interval = job, phase, total, interval
        self.calls, self.sent, self.last = 0, 0.0, None

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        if self.job.cancel_event.is_set():
            raise Cancelled(self.last, self.calls)
        t0 = time.perf_counter()
        out = self.inner.predict(x, t, kind, **cond)
        self.job.step_seconds.append(time.perf_counter() - t0)
        self.calls += 1
        if t0 - self.sent >= self.interval:
            self.sent = t0
            x0 = convert(out.detach()[:16], kind, "x0", x[:16], t.reshape(-1)[:16] if t.numel() > 1 else t, self.path)
            self.last = x0
            self.job.emit("progress", step=self.calls, steps=self.total, t=float(t.flatten()[0]), phase=self.phase,
                          step_seconds=self.job.step_seconds[-1], preview=data_url(png_bytes(render(x0))))  # fmt: skip
        return out


class Job:
    """One run in a worker thread: its events (progress with previews, then done / cancelled / error) are read by
    the server's event stream; :meth:`cancel` stops it within one model step."""

    def __init__(self, kind: str, params: dict):
        self.id = secrets.token_hex(8)
        self.kind, self.params = kind, params
        self.events: list[dict] = []
        self.cancel_event = threading.Event()
        self.cancel_time: float | None = None
        self.steps_at_cancel = 0
        self.step_seconds: list[float] = []
        self.finished = threading.Event()
        self.sampling_seconds = 0.0
        self.lock = threading.Lock()
        self._listeners: list = []

    def emit(self, event: str, **data) -> None:
        with self.lock:
            self.events.append({"event": event, "data": data})
        self.notify()

    def listen(self, loop, wake) -> None:
        """Call ``wake()`` in event loop ``loop`` whenever an event arrives or the job ends (the event stream)."""
        with self.lock:
            self._listeners.append((loop, wake))

    def notify(self) -> None:
        with self.lock:
            listeners = list(self._listeners)
        for loop, wake in listeners:
            if not loop.is_closed():
                loop.call_soon_threadsafe(wake)

    def preview(self, i: int, total: int, t: float, x0: Tensor) -> None:
        self.emit(
            "progress",
            step=i + 1,
            steps=total,
            t=t,
            step_seconds=self.step_seconds[-1] if self.step_seconds else None,
            preview=data_url(png_bytes(render(x0))),
        )

    def cancel(self) -> None:
        if not self.cancel_event.is_set():
            self.cancel_time = time.perf_counter()
            self.steps_at_cancel = len(self.step_seconds)
            self.cancel_event.set()

    @property
    def steps_after_cancel(self) -> int:
        """Model steps finished after cancel was pressed (at most one: the step running at that moment)."""
        return 0 if self.cancel_time is None else len(self.step_seconds) - self.steps_at_cancel

    @property
    def done(self) -> bool:
        return self.finished.is_set()


class Studio:
    """The state behind the page: a checkpoint folder ``root``, a gallery folder, loaded models and running jobs."""

    def __init__(self, root: str | Path, gallery: str | Path | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"--root {root} is not a folder; pass the folder holding your runs (e.g. runs/)")
        self.gallery = Path(gallery).resolve() if gallery else self.root / "studio"
        self.gallery.mkdir(parents=True, exist_ok=True)
        self._models: dict[tuple[str, float], tuple[ModelBase, dict]] = {}
        self._model_lock = threading.Lock()
        self.jobs: dict[str, Job] = {}

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[str]:
        """Checkpoints under the root (relative posix paths): each run's model.safetensors (EMA weights), or its
        checkpoint.safetensors where there is no model file."""
        out = []
        for f in self.root.rglob("*.safetensors"):
            if self.gallery in f.parents or f.name not in ("model.safetensors", "checkpoint.safetensors"):
                continue
            if f.name == "checkpoint.safetensors" and (f.parent / "model.safetensors").is_file():
                continue
            out.append(f.relative_to(self.root).as_posix())
        return sorted(out)

    def resolve(self, rel: str) -> Path:
        """A checkpoint path given relative to the root; refuses anything outside it (403) or missing (404)."""
        if not isinstance(rel, str) or not rel:
            raise BadRequest("ckpt must name a checkpoint under the root folder (see the list on the page)")
        f = (self.root / rel).resolve()
        if f != self.root and self.root not in f.parents:
            raise BadRequest(f"ckpt {rel!r} is outside the checkpoint folder; pick one of the listed checkpoints", 403)
        if f.suffix != ".safetensors" or not f.is_file():
            raise BadRequest(f"no checkpoint {rel!r} under the root folder; pick one of the listed checkpoints", 404)
        return f

    def model(self, rel: str) -> tuple[ModelBase, dict]:
        """Load (once, cached by path and modification time) the model of checkpoint ``rel``."""
        from diffusio.app.config import load_model

        f = self.resolve(rel)
        key = (str(f), f.stat().st_mtime)
        with self._model_lock:
            if key not in self._models:
                try:
                    self._models[key] = load_model(f)
                except (ValueError, KeyError) as e:
                    raise BadRequest(f"{rel} is not a diffusio model checkpoint: {e}") from None
            return self._models[key]

    def describe(self, rel: str) -> dict:
        """What the page needs to know about a checkpoint: shape, classes, family, whether it can inpaint."""
        _, cfg = self.model(rel)
        shape = list(cfg["data_shape"])
        return {
            "ckpt": rel,
            "data_shape": shape,
            "num_classes": cfg.get("num_classes"),
            "family": cfg.get("family", "diffusion"),
            "images": len(shape) == 3,
            "data": cfg.get("data", {}),
            "searched_grids": self.searched_grids(rel),
        }

    # ------------------------------------------------------------------ validation
    def _diffusion_checkpoint(self, p: dict, verb: str) -> tuple[str, dict]:
        """The request's checkpoint and config; refuses a non-object body or a non-diffusion family."""
        if not isinstance(p, dict):
            raise BadRequest("the request body must be a JSON object")
        ckpt = p.get("ckpt")
        _, cfg = self.model(ckpt)
        if cfg.get("family", "diffusion") != "diffusion":
            raise BadRequest(f"the studio {verb} diffusion/flow checkpoints; {ckpt} is a {cfg['family']!r} model")
        return ckpt, cfg

    def sample_spec(self, p: dict) -> SampleSpec:
        """Validate a sampling request (unknown solver, steps out of range, bad grid, ... -> BadRequest)."""
        from diffusio.samplers import SOLVERS

        ckpt, cfg = self._diffusion_checkpoint(p, "samples")
        solver = p.get("solver", "heun")
        if solver == "auto":
            return self._auto_spec(p, ckpt, cfg)
        if solver not in SOLVERS:
            raise BadRequest(f"unknown solver {solver!r}; valid: auto, {', '.join(sorted(SOLVERS))}")
        spec = SOLVERS[solver]
        if spec.needs:
            raise BadRequest(f"solver {solver!r} needs {', '.join(spec.needs)}, which the studio cannot supply")
        steps = _int(p, "steps", 18, 1, MAX_STEPS)
        grid, steps = self._grid(ckpt, p.get("grid"), steps)
        if steps < spec.min_steps:
            raise BadRequest(f"steps must be in [{spec.min_steps}, {MAX_STEPS}] for solver {solver!r}; got {steps}")
        scale, label = self._scale_label(p, cfg)
        options = p.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(v, int | float) for v in options.values()):
            raise BadRequest('options must be an object of numeric solver options, e.g. {"eta": 0.5}')
        unknown = sorted(set(options) - set(spec.options()) - {"generator"})
        if unknown:
            raise BadRequest(f"unknown option(s) {', '.join(unknown)} for solver {solver!r}; valid: "
                             f"{', '.join(o for o in spec.options() if o != 'generator') or 'none'}")  # fmt: skip
        return SampleSpec(
            ckpt=ckpt,
            solver=solver,
            steps=steps,
            grid=grid,
            grid_text=p.get("grid") if isinstance(p.get("grid"), str | list) and p.get("grid") != "" else None,
            scale=scale,
            seed=_seed(p),
            batch=_int(p, "batch", 16, 1, MAX_BATCH),
            label=label,
            preview_every=_int(p, "preview_every", 1, 1, MAX_STEPS),
            options={k_: float(v) for k_, v in options.items()},
        )

    @staticmethod
    def _scale_label(p: dict, cfg: dict) -> tuple[float, int | None]:
        scale = _float(p, "scale", 1.0, 0.0, 20.0)
        k = cfg.get("num_classes")
        label = p.get("label")
        if label is not None:
            if not k:
                raise BadRequest("label was given but this model is not class-conditional")
            label = _int(p, "label", 0, 0, k - 1)
        if scale != 1.0 and not k:
            raise BadRequest("guidance scale applies to class-conditional models only; this one has no classes (use 1)")
        return scale, label

    def searched_grids(self, rel: str) -> list[str]:
        """Names of the grids saved with ``diffusio tune --save`` (or ``save_grid``) for this checkpoint's model."""
        from diffusio.samplers.tuning import list_grids, load_grid, model_fingerprint

        model, _ = self.model(rel)
        fp, out = model_fingerprint(model), []
        for name in list_grids():
            try:
                if load_grid(name).fingerprint == fp:
                    out.append(name)
            except (ValueError, KeyError, OSError):  # an unreadable or foreign grid file is not offered
                continue
        return out

    def _grid(self, rel: str, grid, steps: int):
        """A grid name, a typed list, or ``saved:NAME`` (a searched grid saved for this model)."""
        if isinstance(grid, str) and grid.strip().startswith("saved:"):
            from diffusio.samplers.tuning import load_grid

            name = grid.strip()[len("saved:") :]
            model, _ = self.model(rel)
            try:
                g = load_grid(name, model)
            except (ValueError, KeyError, FileNotFoundError) as e:
                raise BadRequest(f"grid {grid!r}: {e}") from None
            return g.ts.clone(), len(g.ts) - 1
        return parse_grid(grid, steps)

    def _auto_spec(self, p: dict, ckpt: str, cfg: dict) -> SampleSpec:
        """Solver ``auto``: autotune plans solver, grid and options for ``nfe`` model calls per sample. A request
        carrying a ``plan`` (a re-run from a PNG) samples with that plan and does not tune again."""
        from diffusio.samplers import SOLVERS

        if p.get("grid") not in (None, "", "default"):
            raise BadRequest("solver auto chooses the grid itself; clear the grid field (or pick a solver)")
        if p.get("options"):
            raise BadRequest("solver auto chooses the solver options itself; drop options")
        nfe = _int(p, "nfe", 10, 1, MAX_AUTOTUNE_NFE)
        plan = p.get("plan")
        if plan is not None:
            if not isinstance(plan, dict) or plan.get("solver") not in SOLVERS or SOLVERS[plan["solver"]].needs:
                raise BadRequest("plan must be a studio plan: {solver, steps, grid, options} with a registered solver")
            grid, steps = parse_grid(plan.get("grid"), 1)
            opts = plan.get("options") or {}
            if not isinstance(grid, Tensor) or not isinstance(opts, dict):
                raise BadRequest("a plan's grid must be a list of decreasing times and its options an object")
            plan = {"solver": plan["solver"], "steps": steps, "grid": [float(v) for v in grid], "options": opts,
                    "grid_source": str(plan.get("grid_source", "")), "error": plan.get("error")}  # fmt: skip
        scale, label = self._scale_label(p, cfg)
        return SampleSpec(
            ckpt=ckpt, solver="auto", steps=0, grid=None, grid_text=None, scale=scale, seed=_seed(p),
            batch=_int(p, "batch", 16, 1, MAX_BATCH), label=label,
            preview_every=_int(p, "preview_every", 1, 1, MAX_STEPS), nfe=nfe, plan=plan,
        )  # fmt: skip

    def tune(self, rel: str, nfe: int, job: Job | None) -> dict:
        """The autotune plan for checkpoint ``rel`` at ``nfe`` calls: the one ``diffusio tune`` cached for this model
        if any, else tuned now (progress and cancel through ``job``; cached for the next request). Solvers that
        need precomputed statistics (DPM-Solver-v3) are left out, so a plan is fully stored in a PNG."""
        from diffusio.app.tune_cli import cached_plan, plan_for
        from diffusio.samplers import SOLVERS
        from diffusio.samplers.tuning import CANDIDATES

        model, cfg = self.model(rel)
        plan = cached_plan(model, nfe)
        if plan is None:
            if job is not None:
                job.emit("status", message=f"autotune: searching solvers and grids for {nfe} model calls")
            watched = model if job is None else _Ticker(model, job, "autotune")
            solvers = tuple(s for s in CANDIDATES if not SOLVERS[s].needs)
            try:
                plan = plan_for(watched, cfg, nfe, solvers=solvers, progress=False)
            except ValueError as e:  # e.g. a budget below the cheapest solver
                raise BadRequest(f"autotune: {e}") from None
        return {"solver": plan.solver, "steps": plan.steps, "grid": [float(v) for v in plan.grid],
                "options": dict(plan.options), "grid_source": plan.grid_source, "error": plan.error,
                "search_calls": plan.search_calls}  # fmt: skip

    # ------------------------------------------------------------------ running
    def start(self, kind: str, params: dict, target) -> Job:
        """Run ``target(job)`` in a daemon worker thread; the server returns at once."""
        job = Job(kind, params)
        self.jobs[job.id] = job
        # forget old finished jobs (keep the 50 newest)
        for old in list(self.jobs)[:-50]:
            if self.jobs[old].done:
                del self.jobs[old]

        def run():
            try:
                target(job)
            except Cancelled as c:
                img = None if c.state is None else data_url(png_bytes(render(c.state)))
                job.emit("cancelled", step=c.step, steps_after_cancel=job.steps_after_cancel, state=img)
            except BadRequest as e:
                job.emit("error", message=str(e), status=e.status)
            except Exception as e:  # a failure inside the library: show it on the page rather than lose it
                job.emit("error", message=f"{type(e).__name__}: {e}", status=500)
            finally:
                job.finished.set()
                job.notify()

        threading.Thread(target=run, name=f"studio-{kind}-{job.id}", daemon=True).start()
        return job

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise BadRequest(f"no job {job_id!r}", 404)
        return self.jobs[job_id]

    def _sample(self, s: SampleSpec, job: Job | None, preview: bool = True) -> tuple[Tensor, int]:
        """Run one validated sampling request (the batch from one seeded generator); returns (x, model calls)."""
        from diffusio.guidance import ClassifierFreeGuidance
        from diffusio.samplers import Step, sample

        if s.solver == "auto" and s.plan is None:
            s.plan = self.tune(s.ckpt, s.nfe, job)
            if job is not None:
                job.step_seconds.clear()
                job.emit("status", message=f"autotune chose {s.plan['solver']} with {s.plan['steps']} steps "
                                           f"({s.plan['grid_source']} grid)")  # fmt: skip
        solver, steps, grid, options = s.solver, s.steps, s.grid, s.options
        if s.solver == "auto":
            plan = s.plan
            solver, steps, options = plan["solver"], plan["steps"], plan["options"]
            grid = torch.tensor(plan["grid"], dtype=torch.float64)
        model, cfg = self.model(s.ckpt)
        k = cfg.get("num_classes")
        cond = None
        if k:
            y = torch.full((s.batch,), s.label) if s.label is not None else torch.arange(s.batch) % k
            cond = {"y": y}
            if s.scale != 1.0:
                model = ClassifierFreeGuidance(model, s.scale)
        g = torch.Generator().manual_seed(s.seed)
        callback = None
        if job is not None:
            last = [time.perf_counter()]

            def callback(step: Step) -> None:
                now = time.perf_counter()
                job.step_seconds.append(now - last[0])
                last[0] = now
                state = step.x0 if step.x0 is not None else step.x
                if job.cancel_event.is_set():
                    raise Cancelled(state.detach().clone(), step.i + 1)
                if preview and (step.i % s.preview_every == 0 or step.i == steps - 1):
                    job.preview(step.i, steps, step.t, state)

        res = sample(
            model,
            shape=(s.batch, *cfg["data_shape"]),
            solver=solver,
            steps=steps,
            grid=grid,
            cond=cond,
            generator=g,
            callback=callback,
            **options,
        )
        if not torch.isfinite(res.x).all():
            raise BadRequest(f"solver {solver!r} at {steps} steps produced NaN/inf; try more steps", 422)
        return res.x, res.nfe

    def save(self, png: bytes, prefix: str) -> str:
        """Write a PNG to the gallery (atomic); returns its file name."""
        from diffusio.io import _atomic_write

        name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.png"
        _atomic_write(self.gallery / name, lambda f: Path(f).write_bytes(png))
        return name

    def run_sample(self, p: dict) -> Job:
        """Start a sampling job; its result is saved to the gallery with its parameters in the PNG."""
        s = self.sample_spec(p)

        def target(job: Job) -> None:
            t0 = time.perf_counter()
            x, nfe = self._sample(s, job)
            job.sampling_seconds = time.perf_counter() - t0
            params = s.params()
            png = png_bytes(render(x), params)
            name = self.save(png, "sample")
            job.emit("done", image=f"/gallery/{name}", name=name, params=params, nfe=nfe,
                     sampling_seconds=job.sampling_seconds)  # fmt: skip

        return self.start("sample", s.params(), target)

    def run_compare(self, p: dict) -> Job:
        """Start a comparison: rows = seeds, columns = step counts or solvers (one picture per cell)."""
        if not isinstance(p, dict):
            raise BadRequest("the request body must be a JSON object")
        seeds = p.get("seeds")
        if not isinstance(seeds, list) or not seeds or not all(isinstance(v, int) and v >= 0 for v in seeds):
            raise BadRequest("seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2]")
        axis = p.get("axis", "steps")
        if axis not in ("steps", "solver"):
            raise BadRequest(f"axis must be 'steps' or 'solver'; got {axis!r}")
        values = p.get("values")
        if not isinstance(values, list) or not values:
            raise BadRequest("values must be a non-empty list (step counts or solver names)")
        if len(seeds) * len(values) > MAX_COMPARE_CELLS:
            raise BadRequest(f"a comparison has at most {MAX_COMPARE_CELLS} cells; got {len(seeds) * len(values)}")
        cells = [[self.sample_spec({**p, "seed": sd, axis: v}) for v in values] for sd in seeds]

        def target(job: Job) -> None:
            t0 = time.perf_counter()
            out, n = [], len(seeds) * len(values)
            for r, row in enumerate(cells):
                pics = []
                for c, s in enumerate(row):
                    if job.cancel_event.is_set():
                        raise Cancelled(None, r * len(values) + c)
                    x, nfe = self._sample(s, job, preview=False)
                    pics.append({"image": data_url(png_bytes(render(x), s.params())), "nfe": nfe})
                    job.emit("progress", step=r * len(values) + c + 1, steps=n, t=None, preview=pics[-1]["image"])
                out.append(pics)
            job.sampling_seconds = time.perf_counter() - t0
            job.emit("done", grid=out, seeds=seeds, axis=axis, values=values, sampling_seconds=job.sampling_seconds)

        return self.start("compare", {"seeds": seeds, "axis": axis, "values": values}, target)

    def source_image(self, rel: str, p: dict) -> Tensor:
        """The image to inpaint ``(1, C, H, W)`` in [-1, 1]: a data set image (``source: {"data": index}``) or an
        uploaded PNG of the model's size (``source: {"png": data URL}``)."""
        from diffusio.app.config import build_data

        _, cfg = self.model(rel)
        shape = tuple(cfg["data_shape"])
        src = p.get("source") or {"data": 0}
        if not isinstance(src, dict):
            raise BadRequest('source must be {"data": index} or {"png": data URL}')
        if "png" in src:
            arr = decode_png_array(src["png"], "source image")
            if arr.shape[:2] != shape[1:]:
                raise BadRequest(f"the source image is {arr.shape[1]}x{arr.shape[0]} but the model makes "
                                 f"{shape[2]}x{shape[1]} images; upload one of that size")  # fmt: skip
            arr = arr[..., :3]
            img = arr.mean(-1, keepdims=True) if shape[0] == 1 else arr
            return torch.from_numpy(img.transpose(2, 0, 1)).float()[None] * 2 - 1
        data_cfg = (
            {**cfg.get("data", {}), "split": "test"}
            if cfg.get("data", {}).get("name") == "digits"
            else cfg.get("data", {})
        )
        data = build_data(data_cfg)
        n = len(data.x) if hasattr(data, "x") else 0
        if n == 0:
            raise BadRequest("this model's data set has no stored images; upload a source PNG instead")
        idx = src.get("data", 0)
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < n:
            raise BadRequest(f"source data index must be an integer in [0, {n - 1}]; got {idx!r}")
        return data.x[idx : idx + 1].float().clone()

    def run_inpaint(self, p: dict) -> Job:
        """Start an inpainting job: ``mask`` is a PNG (data URL) of the model's image size, white = repaint;
        ``method`` one of :data:`INPAINT_METHODS` through :func:`diffusio.inverse.solve`."""
        from diffusio.inverse import Inpainting, solve

        if not isinstance(p, dict):
            raise BadRequest("the request body must be a JSON object")
        rel = p.get("ckpt")
        model, cfg = self.model(rel)
        shape = tuple(cfg["data_shape"])
        if len(shape) != 3:
            raise BadRequest("inpainting needs an image model (data of shape (C, H, W))")
        method = p.get("method", "dps")
        if method not in INPAINT_METHODS:
            raise BadRequest(f"unknown inpainting method {method!r}; valid: {', '.join(INPAINT_METHODS)}")
        steps = _int(p, "steps", 100, 1, MAX_STEPS)
        scale = _float(p, "scale", 1.0, 0.0, 100.0)
        seed = _seed(p)
        preview_every = _int(p, "preview_every", 5, 1, MAX_STEPS)
        keep = bool(p.get("keep_known", True))
        m = decode_png_array(p.get("mask"), "mask")
        if m.shape[:2] != shape[1:]:
            raise BadRequest(f"the mask is {m.shape[1]}x{m.shape[0]} pixels but the model's images are "
                             f"{shape[2]}x{shape[1]}; draw or upload a mask of that size")  # fmt: skip
        # white = repaint (transparent pixels count as black); the operator observes the rest
        painted = m[..., :3].mean(-1) > 0.5
        if m.shape[-1] == 4:
            painted &= m[..., 3] > 0.5
        observed = torch.from_numpy(~painted).float()
        if observed.sum() == observed.numel():
            raise BadRequest("the mask is empty: paint the region to repaint (or upload a mask with white pixels)")
        if observed.sum() == 0:
            raise BadRequest("the mask covers the whole image: leave some pixels unpainted (they are the measurement)")
        truth = self.source_image(rel, p)
        op = Inpainting(observed, shape)
        y = op(truth)
        options: dict = {"generator": torch.Generator().manual_seed(seed)}
        if method != "pinv":
            options["steps"] = steps
        if method == "dps":
            options["scale"] = scale
        params = {"kind": "inpaint", "ckpt": rel, "method": method, "steps": steps, "scale": scale, "seed": seed,
                  "keep_known": keep, "source": p.get("source") or {"data": 0}}  # fmt: skip

        def target(job: Job) -> None:
            t0 = time.perf_counter()
            total = steps
            watched = _Watch(model, job, preview_every, total)
            res = solve(watched, op, y, method=method, **options)
            x = res.x.clamp(-1, 1)
            if keep:  # the observed pixels are the input's, exactly (the solver only fills the painted region)
                x = torch.where(op.mask.bool()[None], truth, x)
            job.sampling_seconds = time.perf_counter() - t0
            png = png_bytes(render(torch.cat([truth, y, x])), {**params, "mask": p.get("mask")})
            name = self.save(png, "inpaint")
            job.emit("done", image=f"/gallery/{name}", name=name, params=params, nfe=res.nfe,
                     result=data_url(png_bytes(render(x))), source=data_url(png_bytes(render(truth))),
                     result_values=x[0].tolist(), source_values=truth[0].tolist(),
                     sampling_seconds=job.sampling_seconds)  # fmt: skip

        return self.start("inpaint", params, target)

    def search_spec(self, p: dict) -> dict:
        """Validate a search request: strategy, budget (model calls per output), outputs, verifier (the digits metric
        classifier's belief in ``label``, or self-consistency), solver, steps and seed."""
        from diffusio.samplers import SOLVERS
        from diffusio.scaling import STRATEGIES

        ckpt, cfg = self._diffusion_checkpoint(p, "searches")
        strategy = p.get("strategy", "best_of_n")
        if strategy not in STRATEGIES:
            raise BadRequest(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        digits = cfg.get("data", {}).get("name") == "digits"
        verifier = p.get("verifier", "classifier" if digits else "self")
        if verifier not in SEARCH_VERIFIERS:
            raise BadRequest(f"unknown verifier {verifier!r}; valid: {', '.join(SEARCH_VERIFIERS)}")
        k = cfg.get("num_classes")
        label = p.get("label")
        if label is not None:
            label = _int(p, "label", 0, 0, (k or 10) - 1)
        if verifier == "classifier":
            if not digits:
                raise BadRequest("verifier 'classifier' is the digits metric classifier: use it with a digits model, "
                                 "or pick verifier 'self'")  # fmt: skip
            if label is None:
                raise BadRequest("verifier 'classifier' scores the probability of a class: set the class")
        particle = strategy in ("smc", "rbf")
        solver = p.get("solver") or ("euler_maruyama" if particle else "heun")
        if solver not in SOLVERS or SOLVERS[solver].needs or SOLVERS[solver].calls_per_step is None:
            valid = sorted(n for n, v in SOLVERS.items() if not v.needs and v.calls_per_step is not None)
            raise BadRequest(f"solver {solver!r} cannot drive a search; valid: {', '.join(valid)}")
        steps = _int(p, "steps", 10, max(1, SOLVERS[solver].min_steps), MAX_STEPS)
        budget = _int(p, "budget", 64, 1, MAX_SEARCH_BUDGET)
        cost = SOLVERS[solver].nfe(steps) + (verifier == "self")
        if budget < cost:
            raise BadRequest(f"budget {budget} is below one sample's cost ({cost} model calls for {solver} at {steps} "
                             f"steps{' + 1 for the self verifier' if verifier == 'self' else ''}); raise the budget "
                             "or lower the steps")  # fmt: skip
        return {"kind": "search", "ckpt": ckpt, "strategy": strategy, "verifier": verifier, "label": label,
                "solver": solver, "steps": steps, "budget": budget, "n": _int(p, "n", 8, 1, MAX_SEARCH_OUTPUTS),
                "seed": _seed(p)}  # fmt: skip

    def _search(self, q: dict, job: Job | None):
        """Run a validated search through :func:`diffusio.scaling.search`; returns its SearchResult."""
        from diffusio.app.scaling_cli import digits_verifier
        from diffusio.scaling import SelfConsistency, search

        model, cfg = self.model(q["ckpt"])
        n, k = q["n"], cfg.get("num_classes")
        cond = vcond = None
        if q["label"] is not None:
            vcond = {"y": torch.full((n,), q["label"])}
            if k:
                cond = vcond
        if q["verifier"] == "classifier":
            data = cfg.get("data", {})
            verifier = digits_verifier(size=data.get("size", 8), mode=data.get("mode", "pad"))
        else:
            verifier = SelfConsistency(model)
        watched = model if job is None else _Ticker(model, job, "search", total=None)
        try:
            return search(watched, verifier, shape=(n, *cfg["data_shape"]), strategy=q["strategy"],
                          budget=q["budget"], solver=q["solver"], steps=q["steps"], cond=cond, verifier_cond=vcond,
                          generator=torch.Generator().manual_seed(q["seed"]))  # fmt: skip
        except ValueError as e:  # a combination search refuses (e.g. too few particles for the steps)
            raise BadRequest(f"search: {e}") from None

    def run_search(self, p: dict) -> Job:
        """Start an inference-time search; the best samples (best first) go to the gallery with their parameters."""
        q = self.search_spec(p)

        def target(job: Job) -> None:
            t0 = time.perf_counter()
            res = self._search(q, job)
            job.sampling_seconds = time.perf_counter() - t0
            order = res.scores.argsort(descending=True)
            name = self.save(png_bytes(render(res.x[order]), q), "search")
            job.emit("done", image=f"/gallery/{name}", name=name, params=q, nfe=float(res.nfe.double().mean()),
                     scores=res.scores[order].tolist(), history=[list(h) for h in res.history],
                     summary={k_: v for k_, v in res.summary().items() if isinstance(v, int | float | str)},
                     sampling_seconds=job.sampling_seconds)  # fmt: skip

        return self.start("search", q, target)

    def rerun(self, params: dict) -> Job:
        """Re-run from the parameters stored in a studio PNG."""
        kind = params.get("kind")
        if kind == "sample":
            return self.run_sample(params)
        if kind == "inpaint":
            return self.run_inpaint(params)
        if kind == "search":
            return self.run_search(params)
        raise BadRequest(f"cannot re-run parameters of kind {kind!r}")

    def gallery_items(self) -> list[dict]:
        """The gallery, newest first: file name and the parameters it carries."""
        items = []
        for f in sorted(self.gallery.glob("*.png"), key=lambda f: f.stat().st_mtime, reverse=True)[:200]:
            try:
                params = read_png_params(f.read_bytes())
            except BadRequest:
                continue
            params.pop("mask", None)
            items.append({"name": f.name, "image": f"/gallery/{f.name}", "params": params})
        return items

    def gallery_file(self, name: str) -> Path:
        """A gallery PNG by bare file name (no folders: refuses traversal)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+\.png", name or "") or name.startswith("."):
            raise BadRequest(f"bad gallery file name {name!r}", 400)
        f = self.gallery / name
        if not f.is_file():
            raise BadRequest(f"no gallery file {name!r}", 404)
        return f
