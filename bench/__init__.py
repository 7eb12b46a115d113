"""diffusio's benchmarks (a checkout's top-level ``bench/``, not installed).

Run one as ``diffusio bench NAME`` or ``python -m bench.NAME``; each writes JSON, markdown and a plot to
``bench/results/``. Trained models they need are cached under :func:`diffusio.io.cache_dir`.
"""
