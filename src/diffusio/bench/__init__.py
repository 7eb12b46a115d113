"""Benchmarks run from the CLI (``diffusio bench ...``): each writes JSON, a markdown table and a plot."""
