"""SIGKILL during ``diffusio train`` (issue 9): nothing unloadable, every resume works, no temp file survives a
start, and the finished run equals an uninterrupted one bit for bit. The ``DIFFUSIO_SLOW_WRITE_SECONDS`` test
hook lands a kill inside an atomic write."""

import json
import shutil

import pytest
from bench.crash import compare, run_crash

from diffusio.io import SLOW_WRITE_ENV, load_safetensors, save_json, save_safetensors


def test_sigkill_during_training_loses_nothing(tmp_path):
    res = run_crash(
        tmp_path, kills=3, steps=8, seed=1, slow=0.1, reference="inprocess", startup_window=2.0, progress=False
    )
    assert res["kills"] == 3 and res["kills_by_kind"] == {"write": 1, "training": 1, "startup": 1}
    assert res["kills_in_a_write"] >= 1  # the hook held a write open and the kill left its temp file
    assert res["unloadable"] == 0, res["failures"]
    assert res["failed_resumes"] == 0 and res["failed_fresh_starts"] == 0, res["failures"]
    assert res["leftovers"] == 0 and res["model_file_disagrees_after_start"] == 0, res["failures"]
    assert res["runs_completed"] >= 1 and res["equal"], res["comparisons"]
    # the comparison can fail: one metrics line changed, or one weight, is caught
    ref, bad = tmp_path / "reference", tmp_path / "bad"
    shutil.copytree(ref, bad)
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["loss"] += 1e-12
    (bad / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(rec)]) + "\n")
    assert compare(bad, ref)["metrics.jsonl"] is False and not compare(bad, ref)["equal"]
    shutil.copy(ref / "metrics.jsonl", bad / "metrics.jsonl")
    tensors, meta = load_safetensors(bad / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-6
    save_safetensors(tensors, bad / "model.safetensors", meta)
    assert compare(bad, ref)["model.safetensors"] is False and compare(bad, ref)["metrics.jsonl"] is True


def test_slow_write_hook_keeps_content_and_refuses_bad_values(tmp_path, monkeypatch):
    save_json({"a": 1}, tmp_path / "plain.json")
    monkeypatch.setenv(SLOW_WRITE_ENV, "0.01")
    save_json({"a": 1}, tmp_path / "slow.json")
    assert (tmp_path / "slow.json").read_bytes() == (tmp_path / "plain.json").read_bytes()
    for bad in ("nan", "-1", "inf", "abc", "1e9"):
        monkeypatch.setenv(SLOW_WRITE_ENV, bad)
        with pytest.raises(ValueError, match=SLOW_WRITE_ENV):
            save_json({"a": 2}, tmp_path / "slow.json")
        assert json.loads((tmp_path / "slow.json").read_text()) == {"a": 1}  # the old file is intact
        assert not list(tmp_path.glob(".*.tmp"))  # and the refused write left no temp file
