"""Server overhead per studio request: the wall time from POST /api/sample to the 'done' event minus the sampling
time inside the worker, against the same ``diffusio.sample`` call made directly (same model, solver, steps, batch,
seed); medians of ``--repeats`` alternating runs after one warm-up.

    python scripts/studio_overhead.py --root runs --ckpt digits/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tests.test_ui import LiveServer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--solver", default="heun")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--preview-every", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from diffusio.samplers import sample

    srv = LiveServer(args.root)
    try:
        studio = srv.app.state.studio
        model, cfg = studio.model(args.ckpt)
        body = {"ckpt": args.ckpt, "solver": args.solver, "steps": args.steps, "batch": args.batch, "seed": 0,
                "preview_every": args.preview_every}  # fmt: skip
        k = cfg.get("num_classes")
        cond = {"y": torch.arange(args.batch) % k} if k else None
        direct, served, worker = [], [], []
        srv.events(srv.request("POST", "/api/sample", body)[1]["job"])  # warm-up
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sample(model, shape=(args.batch, *cfg["data_shape"]), solver=args.solver, steps=args.steps, cond=cond,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            code, out = srv.request("POST", "/api/sample", body)
            assert code == 200, out
            ev = srv.events(out["job"])
            assert ev[-1][0] == "done", ev[-1]
            served.append(ev[-1][2] - t0)
            worker.append(ev[-1][1]["sampling_seconds"])
        d, s = statistics.median(direct), statistics.median(served)
        outside = statistics.median(a - b for a, b in zip(served, worker))
        # overhead: what the server adds around the sampling (HTTP, worker start, PNG, gallery write, event
        # stream) over the direct call; the end-to-end ratio also carries the machine's noise between runs
        print(json.dumps({**body, "direct_s": round(d, 4), "served_s": round(s, 4),
                          "server_s": round(outside, 4), "overhead": round(outside / d, 4),
                          "end_to_end_ratio": round(s / d, 4)}))  # fmt: skip
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
