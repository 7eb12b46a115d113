"""Adapting a class-conditional digits model from classes 0-4 to 5-9: full fine-tuning, LoRA, LoHa, LoKr, OFT (peft)
and SaRA at matched trainable-parameter counts; peak training memory measured per method; SaRA's premise (zeroing
the smallest weights barely matters).

Model: a residual MLP (hidden 256, 3 blocks) on flattened 8x8 digits, eps-prediction on the linear VP path,
pre-trained on digits 0-4 with 10% label dropout (cached in ``diffusio.io.cache_dir("bench", "finetune")``). Each
method fine-tunes on digits 5-9 for the same number of AdamW steps, **in its own subprocess** so that its peak
memory is its own: the subprocess loads the model and builds the adapter, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs`` = 5) and reads ``VmRSS``, trains, then reads the peak ``VmHWM``; the training memory is
the difference (gradients, optimizer state, activations and autograd buffers above the loaded model). Where
``clear_refs`` is not writable, ``getrusage(RUSAGE_SELF).ru_maxrss`` minus its value before training is used (stated
in the results). Reported: trainable parameters, peak memory, wall time, new-class accuracy (the metrics digit
classifier on class-conditional samples, classifier-free guidance scale ``--cfg``), Fréchet distance to real 5-9,
and forgetting (accuracy and Fréchet distance on classes 0-4 before and after).

``python -m bench.finetune`` (or ``diffusio bench finetune``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from bench.common import results_dir, write_results
from diffusio.core.paths import LinearVP
from diffusio.data.sources import TensorSource
from diffusio.finetune import adapt, finetune, sara, sara_threshold
from diffusio.io import cache_dir, load_safetensors, save_safetensors
from diffusio.models import Model
from diffusio.nets import MLP, FlattenNet
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss

OLD, NEW = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
# Settings chosen so that every parameter-efficient method trains within ~2% of LoRA rank 6 (34176 parameters on
# this network): LoHa rank 3 (two rank-3 Hadamard factors), LoKr with a 2 x 2 Kronecker factor and a rank-12 large
# factor, OFT with 32 x 32 orthogonal blocks, SaRA with the matching share of the smallest weights.
TARGET = 34176
METHODS = {
    "full": {},
    "lora": {"rank": 6},
    "loha": {"rank": 3},
    "lokr": {"rank": 12, "decompose_factor": 2},
    "oft": {"block_size": 32},
    "sara": {"count": TARGET},
}


def _log(msg: str) -> None:
    print(f"[finetune] {msg}", flush=True)


def _subset(x, y, classes):
    keep = torch.isin(y, torch.tensor(classes))
    return x[keep], y[keep]


def pretrained(x, y, steps: int) -> Model:
    """The MLP pre-trained ``steps`` AdamW steps on digits 0-4 (lr 2e-3, batch 128, label dropout 0.1), cached."""
    torch.manual_seed(0)
    net = FlattenNet(MLP(64, hidden=256, depth=3, time_dim=64, num_classes=10), (1, 8, 8))
    model = Model(net, LinearVP(), "eps")
    f = cache_dir("bench", "finetune") / f"mlp256_04_{steps}.safetensors"
    if f.is_file():
        net.load_state_dict(load_safetensors(f)[0])
        return model.eval()
    _log(f"pre-training on digits 0-4 ({steps} steps, once; cached in {f.parent})")
    finetune(model, TensorSource(*_subset(x, y, OLD)), steps, lr=2e-3, batch_size=128, label_dropout=0.1)
    save_safetensors(net.state_dict(), f, {"steps": str(steps)})
    return model.eval()


def _samples(model, classes, per_class: int, steps: int, cfg: float) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusio.guidance import ClassifierFreeGuidance

    y = torch.tensor(classes).repeat_interleave(per_class)
    x = model.path.prior_sample((len(y), 1, 8, 8), generator=torch.Generator().manual_seed(5))
    guided = ClassifierFreeGuidance(model, cfg, null_label=10) if cfg != 1 else model
    return sample(guided, x, solver="ddim", steps=steps, cond={"y": y}).x.clamp(-1, 1), y


def _evaluate(model, clf, args) -> dict:
    from diffusio.data.digits import load_digits
    from diffusio.metrics import digits_frechet_distance

    x_all, y_all = load_digits(8, "pad", "all")
    out = {}
    for name, classes in (("new", NEW), ("old", OLD)):
        s, y = _samples(model, classes, args.per_class, args.sample_steps, args.cfg)
        with torch.no_grad():
            out[f"{name}_accuracy"] = float((clf(s).argmax(1) == y).float().mean())
        out[f"{name}_fd"] = digits_frechet_distance(s, _subset(x_all, y_all, classes)[0], clf)
    return out


def _weights(net):
    return [p for n, p in net.named_parameters() if n.endswith("weight") and p.ndim >= 2]


def build(base: Model, name: str):
    """The model to fine-tune for method ``name`` (a fresh copy of ``base``)."""
    opts = METHODS[name]
    if name == "full":
        model = copy.deepcopy(base)
        for p in model.net.parameters():
            p.requires_grad_(True)
        return model
    if name == "sara":
        share = opts["count"] / sum(p.numel() for p in _weights(base.net))
        return sara(base, fraction=share, lambda_rank=5e-4, min_rank_dim=32)
    return adapt(base, name, **opts)


class _PeakMemory:
    """Training memory of this process: peak resident set during the block minus the resident set at its start
    (after ``gc`` and glibc's ``malloc_trim``, so that freed heap memory is not silently reused)."""

    def __enter__(self):
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak RSS) to the current RSS
            self.method = "VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS at the reset"
            self.start = _status("VmRSS")
        except OSError:
            self.method = "ru_maxrss after training minus ru_maxrss before (getrusage)"
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        if self.method.startswith("VmHWM"):
            peak = _status("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mib = (peak - self.start) / 1024
        return False


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def worker(args) -> dict:
    """Fine-tune one method (in a fresh process) and evaluate it."""
    from diffusio.data.digits import load_digits
    from diffusio.metrics import get_digits_classifier

    x, y = load_digits(8, "pad", "train")
    base = pretrained(x, y, args.pretrain_steps)
    model = build(base, args.worker)
    data = TensorSource(*_subset(x, y, NEW))
    trainable = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    lr = args.lr_full if args.worker == "full" else args.lr
    # warm-up on a throw-away copy: the first steps load code pages and thread pools, which are not training memory
    finetune(build(base, args.worker), data, 4, lr=lr, batch_size=128, label_dropout=0.1, progress=False)
    with _PeakMemory() as mem:
        res = finetune(model, data, args.steps, lr=lr, batch_size=128, label_dropout=0.1, progress=False)
    return {"method": args.worker, "trainable": trainable, "peak_memory_mib": mem.mib, "memory_method": mem.method,
            "time": res["time"], "lr": lr, "final_loss": res["loss"],
            **_evaluate(model, get_digits_classifier(), args)}  # fmt: skip


def _run_worker(name: str, args) -> dict:
    import diffusio

    roots = [str(Path(diffusio.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(roots + [os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(args.threads)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "bench.finetune", "--worker", name, "--json", str(out)]
        cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in _SHARED]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the {name} worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


_SHARED = ("pretrain_steps", "steps", "per_class", "sample_steps", "cfg", "lr", "lr_full", "threads")


def _val_loss(model, x, n_t: int = 8) -> float:
    loss, g = DiffusionLoss("eps"), torch.Generator().manual_seed(11)
    vals = []
    with torch.no_grad():
        for _ in range(n_t):
            t, noise = loss.draw(x, model.path, g)
            vals.append(float(loss(model, x, t, noise, {}).mean()))
    return sum(vals) / len(vals)


def premise(model, x_val, y_val) -> list[dict]:
    """SaRA's premise: zero every weight matrix entry below the q-quantile of |W|; relative change of the validation
    loss and of the eps output (class-conditional, t uniform in [0.05, 0.95], the same noise)."""
    base = _val_loss(model, x_val)
    g = torch.Generator().manual_seed(12)
    t = 0.05 + 0.9 * torch.rand(len(x_val), generator=g)
    xt = model.path.perturb(x_val, torch.randn(x_val.shape, generator=g), t)
    with torch.no_grad():
        ref = model.eps(xt, t, y=y_val)
    rows = []
    for q in (0.1, 0.2):
        m = copy.deepcopy(model)
        tau = sara_threshold(m.net, q)
        with torch.no_grad():
            for w in _weights(m.net):
                w[w.abs() < tau] = 0
            out = m.eps(xt, t, y=y_val)
        rows.append({"fraction": q, "tau": tau, "val_loss": _val_loss(m, x_val), "base_val_loss": base,
                     "output_change": float((out - ref).norm() / ref.norm())})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench finetune", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--pretrain-steps", type=int, default=4000)
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps per method")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of the parameter-efficient methods")
    p.add_argument("--lr-full", type=float, default=5e-4, help="learning rate of full fine-tuning")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale of the evaluation samples")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.worker is not None:
        Path(args.json).write_text(json.dumps(worker(args)))
        return 0
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; valid: {','.join(METHODS)}")
    from diffusio.data.digits import load_digits
    from diffusio.metrics import get_digits_classifier

    x, y = load_digits(8, "pad", "train")
    base = pretrained(x, y, args.pretrain_steps)
    total = sum(p.numel() for p in base.net.parameters())
    rows = [{"method": "pre-trained (0-4)", "trainable": 0, **_evaluate(base, get_digits_classifier(), args)}]
    _log(f"pre-trained: 0-4 accuracy {rows[0]['old_accuracy']:.3f}, FD {rows[0]['old_fd']:.1f}")
    for name in methods:
        _log(f"{name}: fine-tuning on 5-9 ({args.steps} steps, own process)")
        rows.append(_run_worker(name, args))
        r = rows[-1]
        _log(f"{name}: {r['trainable']} trainable, {r['peak_memory_mib']:.1f} MiB, {r['time']:.0f} s, "
             f"new acc {r['new_accuracy']:.3f}, old acc {r['old_accuracy']:.3f}")  # fmt: skip
    xo, yo = _subset(x, y, OLD)
    prem = premise(base, xo[:512], yo[:512])
    payload = {"rows": rows, "premise": prem, "total_parameters": total, "target": TARGET, "settings": METHODS,
               "load_average": os.getloadavg(), "cpus": os.cpu_count(), "args": vars(args)}  # fmt: skip
    md = _markdown(payload)
    out = results_dir(args.out)
    write_results(out, "finetune", payload, md)
    _plot(rows, out / "finetune.png")
    print(md)
    return 0


def _markdown(res: dict) -> str:
    a, rows = res["args"], res["rows"]
    mem = next((r["memory_method"] for r in rows if "memory_method" in r), "-")
    load = ", ".join(f"{v:.1f}" for v in res["load_average"])
    lines = ["# Fine-tuning a digits model from classes 0-4 to 5-9", "",
             f"`diffusio bench finetune` — MLP (hidden 256, 3 blocks, {res['total_parameters']} parameters) "
             f"pre-trained {a['pretrain_steps']} AdamW steps on 0-4; each method {a['steps']} AdamW steps on 5-9 "
             f"(batch 128, lr {a['lr']:g}, full fine-tuning {a['lr_full']:g}, 10% label dropout) in its own "
             f"process, {a['threads']} thread. Parameter-efficient methods matched to {res['target']} trainable "
             f"parameters ({', '.join(f'{k} {v}' for k, v in res['settings'].items() if v)}). Evaluation: "
             f"{a['per_class']} samples per class, {a['sample_steps']}-step DDIM, classifier-free guidance "
             f"{a['cfg']:g}; accuracy by the metrics digit classifier, FD = Fréchet distance in its features to the "
             f"real digits of those classes (old = 0-4: forgetting). Peak memory (after a 4-step warm-up on a "
             f"throw-away copy): {mem}. Load average at the end ({res['cpus']} CPUs): {load}.", "",
             "| method | trainable | share | vs target | peak memory (MiB) | time (s) | final loss | new-class acc. | "
             "new FD | old-class acc. | old FD |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        share = r["trainable"] / res["total_parameters"]
        vs = f"{100 * (r['trainable'] / res['target'] - 1):+.1f}%" if r["method"] not in ("full",) and r[
            "trainable"] else "-"  # fmt: skip
        t = f"{r['time']:.1f}" if "time" in r else "-"
        m = f"{r['peak_memory_mib']:.1f}" if "peak_memory_mib" in r else "-"
        fl = f"{r['final_loss']:.4f}" if "final_loss" in r else "-"
        lines.append(f"| {r['method']} | {r['trainable']} | {100 * share:.1f}% | {vs} | {m} | {t} | {fl} | "
                     f"{r['new_accuracy']:.3f} | {r['new_fd']:.1f} | {r['old_accuracy']:.3f} | "
                     f"{r['old_fd']:.1f} |")  # fmt: skip
    lines += ["", "SaRA's premise (zero every weight-matrix entry with |w| below the quantile; eps validation loss on "
              "0-4, and the relative change of the class-conditional eps output on the same noisy inputs):", "",
              "| zeroed share | tau | loss before | loss after | loss change | output change |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["premise"]:
        ch = r["val_loss"] / r["base_val_loss"] - 1
        lines.append(f"| {r['fraction']:.0%} | {r['tau']:.2e} | {r['base_val_loss']:.4f} | {r['val_loss']:.4f} | "
                     f"{100 * ch:+.2f}% | {100 * r['output_change']:.2f}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    names = [r["method"].replace("pre-trained (0-4)", "base") for r in rows]
    ax[0].bar(names, [r["new_accuracy"] for r in rows], color="tab:blue", alpha=0.7, label="new classes 5-9")
    ax[0].plot(names, [r["old_accuracy"] for r in rows], "ko-", label="old classes 0-4 (forgetting)")
    ax[0].set(ylabel="classifier accuracy of samples", title="adaptation and forgetting", ylim=(0, 1.05))
    ax[0].legend(fontsize=8)
    trained = [r for r in rows if "time" in r]
    ax[1].scatter([r["new_fd"] for r in rows], [r["old_fd"] for r in rows])
    for r, n in zip(rows, names, strict=True):
        ax[1].annotate(f"{n} ({r['trainable']})", (r["new_fd"], r["old_fd"]), fontsize=8)
    ax[1].set(xscale="log", yscale="log", xlabel="Fréchet distance to real 5-9 (adaptation)",
              ylabel="Fréchet distance to real 0-4 (forgetting)", title="quality (trainable parameters)")  # fmt: skip
    ax[2].bar([r["method"] for r in trained], [r["peak_memory_mib"] for r in trained], color="tab:orange")
    ax[2].set(ylabel="peak training memory above the loaded model (MiB)", title="memory")
    for a in ax:
        a.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
