"""Benchmarks run by ``diffusio bench NAME``; each writes JSON, markdown and a PNG to ``bench/results/``."""
