"""Crash test (issue 9): ``kill -9`` during ``diffusio train``, many times, then check nothing was lost.

A tiny run (two moons, a 16-wide MLP, a checkpoint every 2 steps, a metrics line every 3) is started as a
subprocess (``python -m diffusio train CONFIG --out DIR [--resume]``) and killed with SIGKILL, over and over.
Kills come in three kinds, in turn:

- ``write``: the writer is slowed by the test hook ``DIFFUSIO_SLOW_WRITE_SECONDS`` (a pause between writing a
  temp file and renaming it) and killed when its j-th temp file appears (j random in 1..5): inside a write of
  ``checkpoint.safetensors``, ``model.safetensors`` or the resume's rewrite of ``metrics.jsonl``;
- ``training``: killed a few milliseconds after a new checkpoint appears (in a step, an append or a write);
- ``startup``: killed at a random time in [0, T] with T the wall time of a whole uninterrupted run (in the
  imports, in the resume, or later).

After each kill: (a) every ``checkpoint.safetensors`` / ``model.safetensors`` present must load
(``load_checkpoint``, ``load_model``); (b) a start from that state must resume (checked on a copy of the
directory, in process, and by every real start that reaches a new checkpoint or ends); (c) after that start no
temporary file may remain. When a run reaches its last step it is compared bit-exactly (raw weights, EMA,
optimizer and generator states, the model file, ``metrics.jsonl`` without its wall-clock ``time`` field) with an
uninterrupted run of the same config; then a new run starts, until the kills are used up and the last run is
finished without a kill. Targets: 0 unloadable, 0 failed resumes, 0 leftovers, equal.

    diffusio bench crash [--kills 100] [--steps 60] [--seed 0] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

import diffusio
from diffusio.io import SLOW_WRITE_ENV, load_safetensors

KINDS = ("write", "training", "startup")
# The process-wide torch generator, stored so a resume restores it; training never draws from it (every draw uses
# the run's seeded generator, ``rng/train``, which is compared) and torch seeds it afresh in each new process, so
# two uninterrupted runs already differ there. It is left out of the bit-exact comparison.
UNSEEDED = ("rng/torch_global",)
FILES = ("checkpoint.safetensors", "model.safetensors")


def config(steps: int = 60) -> dict:
    """The bundled two-moons flow-matching config, shrunk so that a start costs little more than the imports."""
    return {
        "data": {"name": "toy", "dataset": "moons"},
        "path": {"name": "flow"},
        "net": {"name": "mlp", "hidden": 16, "depth": 2},
        "model": {"prediction": "velocity"},
        "loss": {"target": "velocity", "density": {"name": "logit_normal"}, "weighting": "uniform"},
        "train": {
            "steps": steps,
            "batch_size": 64,
            "lr": 2.0e-3,
            "warmup": 10,
            "ema_decay": 0.9,
            "log_every": 3,  # does not divide the checkpoint interval: resumes land mid-window
            "ckpt_every": 2,
            "progress": False,
        },
    }


def _env(slow: float | None) -> dict:
    env = dict(os.environ)
    src = str(Path(diffusio.__file__).resolve().parents[1])  # the subprocess runs this very diffusio
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env.pop(SLOW_WRITE_ENV, None)
    if slow:
        env[SLOW_WRITE_ENV] = str(slow)
    return env


def _start(cfg_file: Path, out: Path, log: Path, slow: float | None = None) -> subprocess.Popen:
    resume = (out / "checkpoint.safetensors").is_file()
    cmd = [sys.executable, "-m", "diffusio", "train", str(cfg_file), "--out", str(out), "--device", "cpu"]
    with open(log, "ab") as f:
        return subprocess.Popen(cmd + ["--resume"] * resume, stdout=f, stderr=subprocess.STDOUT, env=_env(slow))


def _temps(d: Path) -> set[str]:
    return {p.name for p in d.glob(".*.tmp")} if d.is_dir() else set()


def _stamp(p: Path):
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _step_of(path: Path) -> int | None:
    from diffusio.training.loop import _file_step

    return _file_step(path)


def check_loadable(d: Path) -> tuple[int, list[str]]:
    """(number of unloadable checkpoint/model files in ``d``, messages)."""
    from diffusio.app.config import load_model
    from diffusio.training.checkpoint import load_checkpoint

    bad = []
    for name in FILES:
        p = d / name
        if not p.exists():
            continue
        try:
            if name == "checkpoint.safetensors":
                load_checkpoint(p)
                load_model(p, ema=True)
            else:
                load_safetensors(p)
                load_model(p)
        except Exception as e:
            bad.append(f"{name}: {type(e).__name__}: {e}")
    return len(bad), bad


def check_resume(d: Path, cfg: dict, scratch: Path) -> dict:
    """Start from a copy of ``d`` in process (resume, clean-up, model-file repair) without training further."""
    from diffusio.app.config import run_training

    ck = d / "checkpoint.safetensors"
    if not ck.is_file():
        return {"resumed": None, "leftovers": 0, "model_agrees": True}
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(d, scratch)
    step = _step_of(scratch / "checkpoint.safetensors")
    try:
        run_training(cfg, scratch, steps=step, resume=True, progress=False)
        ok, err = True, None
    except Exception as e:
        ok, err = False, f"{type(e).__name__}: {e}"
    out = {
        "resumed": ok,
        "error": err,
        "leftovers": len(_temps(scratch)),
        "model_agrees": _step_of(scratch / "model.safetensors") == step,
    }
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def compare(run: Path, ref: Path) -> dict:
    """Bit-exact comparison of a finished run with the reference: checkpoint, model file, metrics."""
    res = {}
    for name in FILES:
        a, ma = load_safetensors(run / name)
        b, mb = load_safetensors(ref / name)
        keys = a.keys() - set(UNSEEDED)
        res[name] = (
            a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in keys) and ma.get("step") == mb.get("step")
        )

    def lines(p):
        return [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in p.read_text().splitlines()]

    res["metrics.jsonl"] = lines(run / "metrics.jsonl") == lines(ref / "metrics.jsonl")
    res["equal"] = all(res.values())
    return res


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"diffusio train did not finish within {timeout:.0f} s") from None


def run_crash(
    work: str | os.PathLike,
    kills: int = 100,
    steps: int = 60,
    seed: int = 0,
    slow: float = 0.3,
    timeout: float = 120.0,
    progress: bool = True,
    reference: str = "subprocess",
    startup_window: float | None = None,
) -> dict:
    """Kill ``diffusio train`` ``kills`` times in ``work`` and count what went wrong (see the module docstring).

    ``reference``: how the uninterrupted run is made, ``"subprocess"`` (``diffusio train``, as the killed runs)
    or ``"inprocess"`` (``run_training`` here: the same code, a few seconds faster, for the test).
    ``startup_window``: the ``startup`` kills land uniformly in [0, this] seconds (default: the wall time of the
    uninterrupted run)."""
    if reference not in ("subprocess", "inprocess"):
        raise ValueError(f"reference must be 'subprocess' or 'inprocess', got {reference!r}")
    if not isinstance(kills, int) or kills < 1:
        raise ValueError(f"kills must be an integer >= 1, got {kills!r}")
    if not isinstance(steps, int) or steps < 4:
        raise ValueError(f"steps must be an integer >= 4 (two checkpoints), got {steps!r}")
    if not 0 < slow <= 5:
        raise ValueError(f"slow must be a pause in (0, 5] seconds, got {slow!r}")
    if startup_window is not None and not 0 < startup_window < timeout:
        raise ValueError(f"startup_window must be in (0, timeout={timeout}) seconds, got {startup_window!r}")
    rng = random.Random(seed)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = config(steps)
    cfg_file = work / "crash.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = work / "train.log"

    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.perf_counter()
    if reference == "subprocess":
        rc = _wait(_start(cfg_file, ref, log), timeout)
        if rc != 0:
            raise RuntimeError(f"the uninterrupted reference run failed (exit {rc}); see {log}")
        t_ref = time.perf_counter() - t0
    else:
        from diffusio.app.config import run_training

        run_training(cfg, ref, progress=False)
        t_ref = time.perf_counter() - t0 + 3.0  # + the imports of a new process, for the startup kills' window
    window = t_ref if startup_window is None else startup_window

    records: list[dict] = []
    counts = Counter()
    comparisons: list[dict] = []
    failures: list[str] = []
    run_id, run = 0, work / "run0"
    shutil.rmtree(run, ignore_errors=True)
    pending: set[str] = set()  # temp files left by a kill, to be gone once a later start gets going
    bar = tqdm(total=kills, desc="crash", disable=not progress, dynamic_ncols=True)

    def settle(started_ok: bool) -> None:
        nonlocal pending
        if started_ok and pending:
            left = pending & _temps(run)
            counts["leftovers"] += len(left)
            if left:
                failures.append(f"{run.name}: temp files survived a start: {sorted(left)}")
            pending = set()

    def finish_run() -> None:
        nonlocal run_id, run
        cmp = compare(run, ref)
        comparisons.append({"run": run.name, **cmp})
        run_id += 1
        run = work / f"run{run_id}"
        shutil.rmtree(run, ignore_errors=True)

    while len(records) < kills:
        kind = KINDS[len(records) % len(KINDS)]
        before_tmp = _temps(run)
        before_ck = _stamp(run / "checkpoint.safetensors")
        resume = before_ck is not None
        j = rng.randint(1, 5)
        delay = rng.uniform(0.0, window)
        proc = _start(cfg_file, run, log, slow if kind == "write" else None)
        t_start = time.perf_counter()
        seen: set[str] = set()
        fired = False
        while proc.poll() is None:
            now = time.perf_counter() - t_start
            if now > timeout:
                break
            if kind == "startup":
                fire = now >= delay
            elif kind == "write":
                seen |= _temps(run) - before_tmp
                fire = len(seen) >= j
            else:
                stamp = _stamp(run / "checkpoint.safetensors")
                fire = stamp is not None and stamp != before_ck
                if fire:
                    time.sleep(rng.uniform(0.0, 0.03))
            if fire:
                proc.send_signal(signal.SIGKILL)
                fired = True
                break
            time.sleep(0.002)
        t_kill = time.perf_counter() - t_start
        rc = _wait(proc, timeout)
        progressed = _stamp(run / "checkpoint.safetensors") != before_ck
        if not fired:  # the process ended by itself: finished, or failed
            counts["starts_ended"] += 1
            if rc != 0:
                counts["failed_resumes" if resume else "failed_starts"] += 1
                failures.append(f"{run.name}: a start exited with code {rc} (see {log})")
                if counts["failed_resumes"] + counts["failed_starts"] > 3:
                    break
                continue
            settle(True)
            finish_run()
            continue
        settle(progressed)
        # the state a kill left behind
        left = _temps(run)
        in_write = sorted(left - before_tmp)
        pending |= left
        n_bad, msgs = check_loadable(run)
        counts["unloadable"] += n_bad
        failures += [f"{run.name} after kill {len(records) + 1}: {m}" for m in msgs]
        lag = (run / "model.safetensors").is_file() and _step_of(run / "model.safetensors") != _step_of(
            run / "checkpoint.safetensors"
        )
        chk = check_resume(run, cfg, work / "scratch")
        if chk["resumed"] is False:
            counts["failed_resumes"] += 1
            failures.append(f"{run.name} after kill {len(records) + 1}: resume failed: {chk['error']}")
        counts["leftovers"] += chk["leftovers"]
        counts["model_disagrees_after_start"] += not chk["model_agrees"]
        records.append(
            {
                "kind": kind,
                "run": run.name,
                "time": round(t_kill, 4),
                "step": _step_of(run / "checkpoint.safetensors"),
                "in_write": in_write,
                "model_lags_checkpoint": bool(lag),
            }
        )
        bar.update(1)
    bar.close()

    # finish the last run without a kill
    if len(records) >= kills:
        rc = _wait(_start(cfg_file, run, log), timeout)
        settle(rc == 0)
        if rc == 0:
            finish_run()
        else:
            counts["failed_resumes"] += 1
            failures.append(f"{run.name}: the final start exited with code {rc}")

    def in_file(rec, name):
        return any(n.startswith(f".{name}.") for n in rec["in_write"])

    by_kind = Counter(r["kind"] for r in records)
    return {
        "config": cfg,
        "kills": len(records),
        "kills_by_kind": dict(by_kind),
        "kills_in_a_write": sum(bool(r["in_write"]) for r in records),
        "kills_in_checkpoint_write": sum(in_file(r, "checkpoint.safetensors") for r in records),
        "kills_in_model_write": sum(in_file(r, "model.safetensors") for r in records),
        "kills_in_metrics_rewrite": sum(in_file(r, "metrics.jsonl") for r in records),
        "model_file_lagging_after_kill": sum(r["model_lags_checkpoint"] for r in records),
        "unloadable": counts["unloadable"],
        "failed_resumes": counts["failed_resumes"],
        "failed_fresh_starts": counts["failed_starts"],
        "leftovers": counts["leftovers"],
        "model_file_disagrees_after_start": counts["model_disagrees_after_start"],
        "runs_completed": len(comparisons),
        "comparisons": comparisons,
        "equal": bool(comparisons) and all(c["equal"] for c in comparisons),
        "reference": reference,
        "reference_seconds": t_ref,
        "not_compared": list(UNSEEDED),
        "failures": failures[:20],
        "records": records,
    }


def markdown(res: dict, seconds: float) -> str:
    yes = "yes" if res["equal"] else "no"
    kinds = " / ".join(str(res["kills_by_kind"].get(k, 0)) for k in KINDS)
    rows = [
        ("SIGKILLs of `diffusio train`", res["kills"], ">= 100"),
        ("... by kind (write / training / startup)", kinds, ""),
        ("... landing inside an atomic write (a temp file left)", res["kills_in_a_write"], ""),
        ("... inside a checkpoint.safetensors write", res["kills_in_checkpoint_write"], ""),
        ("... inside a model.safetensors write", res["kills_in_model_write"], ""),
        ("... inside the resume's metrics.jsonl rewrite", res["kills_in_metrics_rewrite"], ""),
        ("model file one save behind the checkpoint after a kill", res["model_file_lagging_after_kill"], "(repaired)"),
        ("unloadable checkpoint/model files", res["unloadable"], "0"),
        ("failed resumes", res["failed_resumes"], "0"),
        ("temporary files left after the next start", res["leftovers"], "0"),
        ("model file disagreeing with the checkpoint after a start", res["model_file_disagrees_after_start"], "0"),
        ("runs completed and compared", res["runs_completed"], ">= 1"),
        ("bit-exact with an uninterrupted run (weights, EMA, optimizer, RNG, model file, metrics)", yes, "yes"),
    ]
    note = (
        "Bit-exact: every tensor of checkpoint.safetensors and model.safetensors, their step, and every line of "
        "metrics.jsonl but its wall-clock `time`; not compared: the process-wide torch generator "
        "(`rng/torch_global`), which training never draws from and torch seeds afresh in every process."
    )
    lines = [
        "# Crash test: SIGKILL during `diffusio train`",
        "",
        f"Config: two moons, MLP width 16, {res['config']['train']['steps']} steps, checkpoint every 2, "
        f"metrics every 3; {seconds:.0f} s in all. Command: `diffusio bench crash --kills {res['kills']}`.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        note,
        "",
    ]
    if res["failures"]:
        lines += ["Failures:", "", *[f"- {f}" for f in res["failures"]], ""]
    return "\n".join(lines)


def plot(res: dict, file: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = ["kills", "in a write", "unloadable", "failed\nresumes", "leftovers"]
    vals = [res["kills"], res["kills_in_a_write"], res["unloadable"], res["failed_resumes"], res["leftovers"]]
    colors = ["tab:gray", "tab:blue", "tab:red", "tab:red", "tab:red"]
    a1.bar(labels, vals, color=colors)
    for i, v in enumerate(vals):
        a1.text(i, v, str(v), ha="center", va="bottom")
    a1.set_title(f"outcomes (bit-exact with uninterrupted run: {'yes' if res['equal'] else 'no'})")
    for kind, c in zip(KINDS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        ts = [r["time"] for r in res["records"] if r["kind"] == kind]
        a2.hist(ts, bins=20, alpha=0.6, color=c, label=f"{kind} ({len(ts)})")
    a2.set_xlabel("time of the kill after the process started (s)")
    a2.set_ylabel("kills")
    a2.legend()
    a2.set_title("kill times")
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from bench.common import results_dir, write_results
    from diffusio.app.cli import positive_int

    parser = argparse.ArgumentParser(prog="diffusio bench crash", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=positive_int, default=100, help="SIGKILLs in all (default 100)")
    parser.add_argument("--steps", type=positive_int, default=60, help="training steps of each run (>= 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--slow", type=float, default=0.3, help="seconds the test hook holds each write open")
    parser.add_argument("--work", help="keep the runs in this directory (default: a temporary one)")
    parser.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.work:
        res = run_crash(args.work, args.kills, args.steps, args.seed, args.slow)
    else:
        with tempfile.TemporaryDirectory(prefix="diffusio-crash-") as work:
            res = run_crash(work, args.kills, args.steps, args.seed, args.slow)
    seconds = time.perf_counter() - t0
    res["seconds"] = seconds
    out = results_dir(args.out)
    md = markdown(res, seconds)
    write_results(out, "crash", res, md)
    plot(res, str(out / "crash.png"))
    print(md)
    ok = res["equal"] and not (res["unloadable"] or res["failed_resumes"] or res["leftovers"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
