"""Fuzzing the boundaries (issue 9): one field wrong at a time over diffusio.sample, inverse.solve, the config loader
and the CLI, each case under a time limit: 0 silent NaN, 0 hangs, 0 raw tracebacks. The larger run and the
numerics sweep table: ``diffusio bench fuzz`` (bench/results/fuzz.md)."""

from __future__ import annotations

import random

import pytest
import torch
from bench.fuzz import FAILURES, classify, cli_case, config_case, inverse_case, numerics_sweep, sample_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _check(case):
    name, fn = case
    outcome, detail = classify(fn, limit=10.0)
    assert outcome not in FAILURES, f"{outcome}: {name}: {detail}"


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_fuzz_sample(seed):
    _check(sample_case(random.Random(seed)))


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2**32 - 1))
def test_fuzz_inverse(seed):
    _check(inverse_case(random.Random(seed)))


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_fuzz_config(seed):
    _check(config_case(random.Random(seed)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from bench.fuzz import _tiny_checkpoint

    root = tmp_path_factory.mktemp("fuzz")
    return str(root), _tiny_checkpoint(root)


def test_fuzz_cli(ckpt):
    root, model = ckpt

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 2**32 - 1))
    def run(seed):
        _check(cli_case(random.Random(seed), model, root))

    run()


def test_numerics_sweep_subset(monkeypatch):
    """Every solver on the paths with singular ends (VP: data end; flow: both) and EDM at 5 steps in float32,
    defaults and accepted domain ends: 0 NaN returned, every refusal a one-line error (all paths: the bench)."""
    rows = numerics_sweep((5,), (torch.float32,), progress=False, paths=("vp_linear", "flow", "edm"))
    bad = [r for r in rows if r["outcome"] in FAILURES]
    assert not bad, bad[:5]
    assert all("\n" not in r["detail"] for r in rows)
    assert sum(r["outcome"] == "ok" for r in rows) > len(rows) // 2
