"""Helpers shared by benchmarks: where results go, timing, writing JSON + markdown."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffusio.io import save_json

__all__ = ["environment", "median_time", "results_dir", "write_results"]


def results_dir(arg: str | None = None) -> Path:
    """``bench/results`` beside this module (or ``arg``)."""
    out = Path(arg) if arg else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    return out


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_results(out: Path, name: str, payload: dict, markdown: str) -> None:
    save_json({**payload, "environment": environment()}, out / f"{name}.json")
    (out / f"{name}.md").write_text(markdown)


def publish(out_arg: str | None, name: str, payload: dict, markdown: str, plot: Callable[[dict, str], None]) -> int:
    """Write ``name``.json/.md and the PNG drawn by ``plot(payload, file)`` to the results directory; print the
    markdown."""
    out = results_dir(out_arg)
    write_results(out, name, payload, markdown)
    plot(payload, str(out / f"{name}.png"))
    print(markdown)
    return 0
