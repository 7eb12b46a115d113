"""Adapting a class-conditional digits model from classes 0-4 to 5-9: full fine-tuning, LoRA, LoHa, LoKr, OFT (peft)
and SaRA at similar trainable-parameter counts; and SaRA's premise (zeroing the smallest weights barely matters).

Model: a residual MLP (hidden 256, 3 blocks) on flattened 8x8 digits, eps-prediction on the linear VP path,
pre-trained on digits 0-4 (cached). Each method fine-tunes on digits 5-9 for the same number of steps. Reported:
trainable parameters, optimizer-state size, wall time, new-class accuracy (the metrics digit classifier on
class-conditional samples), Fréchet distance to real 5-9, and forgetting (Fréchet distance to real 0-4 of samples
of classes 0-4, before and after). Small sizes so that it runs in minutes on a loaded 2-core CPU.

``python -m bench.finetune`` (or ``diffusio bench finetune``).
"""

from __future__ import annotations

import argparse
import copy
import warnings

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


def _log(msg: str) -> None:
    print(f"[finetune] {msg}", flush=True)


def _subset(x, y, classes):
    keep = torch.isin(y, torch.tensor(classes))
    return x[keep], y[keep]


def pretrained(x, y, steps: int) -> Model:
    torch.manual_seed(0)
    net = FlattenNet(MLP(64, hidden=256, depth=3, time_dim=64, num_classes=10), (1, 8, 8))
    model = Model(net, LinearVP(), "eps")
    f = cache_dir("bench", "finetune") / f"mlp256_04_{steps}.safetensors"
    if f.is_file():
        net.load_state_dict(load_safetensors(f)[0])
        return model.eval()
    _log(f"pre-training on digits 0-4 ({steps} steps, once; cached in {f.parent})")
    finetune(model, TensorSource(*_subset(x, y, [0, 1, 2, 3, 4])), steps, lr=2e-3, batch_size=128,
             label_dropout=0.1, progress=False)  # fmt: skip
    save_safetensors(net.state_dict(), f, {"steps": steps})
    return model.eval()


def _samples(model, classes, per_class: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.tensor(classes).repeat_interleave(per_class)
    x = model.path.prior_sample((len(y), 1, 8, 8), generator=torch.Generator().manual_seed(5))
    return sample(model, x, solver="ddim", steps=steps, cond={"y": y}).x.clamp(-1, 1), y


def _evaluate(model, x_all, y_all, clf, per_class: int, steps: int) -> dict:
    from diffusio.metrics import digits_frechet_distance

    out = {}
    for name, classes in (("new", [5, 6, 7, 8, 9]), ("old", [0, 1, 2, 3, 4])):
        s, y = _samples(model, classes, per_class, steps)
        with torch.no_grad():
            acc = float((clf(s).argmax(1) == y).float().mean())
        real = _subset(x_all, y_all, classes)[0]
        out[f"{name}_accuracy"] = acc
        out[f"{name}_fd"] = digits_frechet_distance(s, real, clf)
    return out


def _val_loss(model, x, n_t: int = 8) -> float:
    loss, g = DiffusionLoss("eps"), torch.Generator().manual_seed(11)
    vals = []
    with torch.no_grad():
        for _ in range(n_t):
            t, noise = loss.draw(x, model.path, g)
            vals.append(float(loss(model, x, t, noise, {}).mean()))
    return sum(vals) / len(vals)


def premise(model, x_val) -> list[dict]:
    """SaRA's premise: zero every Linear weight below the q-quantile of |W|; relative change of the validation loss."""
    base = _val_loss(model, x_val)
    rows = []
    for q in (0.1, 0.2):
        m = copy.deepcopy(model)
        tau = sara_threshold(m.net, q)
        with torch.no_grad():
            for mod in m.net.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.weight[mod.weight.abs() < tau] = 0
        rows.append({"fraction": q, "tau": tau, "val_loss": _val_loss(m, x_val), "base_val_loss": base})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench finetune", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.04, help="SaRA's share of weights (sets the budget)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusio.data.digits import load_digits
    from diffusio.metrics import get_digits_classifier

    clf = get_digits_classifier()
    x, y = load_digits(8, "pad", "train")
    x_all, y_all = load_digits(8, "pad", "all")
    base = pretrained(x, y, args.pretrain_steps)
    data = TensorSource(*_subset(x, y, [5, 6, 7, 8, 9]))
    total = sum(p.numel() for p in base.net.parameters())
    methods = {
        "full": lambda: copy.deepcopy(base),
        "lora": lambda: adapt(base, "lora", rank=4),
        "loha": lambda: adapt(base, "loha", rank=2),
        "lokr": lambda: adapt(base, "lokr", rank=8),
        "oft": lambda: adapt(base, "oft", block_size=4),
        "sara": lambda: sara(base, fraction=args.fraction, lambda_rank=5e-4, min_rank_dim=32),
    }
    rows = [{"method": "pre-trained (0-4)", "trainable": 0, **_evaluate(base, x_all, y_all, clf, args.per_class,
                                                                          args.sample_steps)}]  # fmt: skip
    for name, make in methods.items():
        _log(f"{name}: fine-tuning on 5-9 ({args.steps} steps)")
        model = make()
        if name == "full":
            for p_ in model.net.parameters():
                p_.requires_grad_(True)
        trainable = sum(p_.numel() for p_ in model.net.parameters() if p_.requires_grad)
        res = finetune(model, data, args.steps, lr=1e-3 if name != "full" else 5e-4, batch_size=128,
                       label_dropout=0.1, progress=False)  # fmt: skip
        rows.append({"method": name, "trainable": trainable, "optimizer_state": 2 * trainable, "time": res["time"],
                     "final_loss": res["loss"], **_evaluate(model, x_all, y_all, clf, args.per_class,
                                                            args.sample_steps)})  # fmt: skip
    prem = premise(base, _subset(x, y, [0, 1, 2, 3, 4])[0][:512])
    payload = {"rows": rows, "premise": prem, "total_parameters": total, "args": vars(args)}
    md = _markdown(payload)
    out = results_dir(args.out)
    write_results(out, "finetune", payload, md)
    _plot(rows, out / "finetune.png")
    print(md)
    return 0


def _markdown(res: dict) -> str:
    a = res["args"]
    lines = ["# Fine-tuning a digits model from classes 0-4 to 5-9", "",
             f"`diffusio bench finetune` — MLP (hidden 256, 3 blocks, {res['total_parameters']} parameters) "
             "pre-trained "
             f"{a['pretrain_steps']} steps on 0-4; each method {a['steps']} AdamW steps on 5-9 (batch 128); "
             f"{a['per_class']} samples per class, {a['sample_steps']}-step DDIM. Accuracy: the metrics digit "
             "classifier on class-conditional samples. FD: Fréchet distance in its features to the real digits of "
             "those classes. Optimizer state = 2 x trainable (AdamW moments); peak process memory was not measured.",
             "", "| method | trainable | share | time (s) | new-class acc. | new FD | old-class acc. | old FD "
             "(forgetting) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        share = r["trainable"] / res["total_parameters"]
        t = f"{r['time']:.1f}" if "time" in r else "-"
        lines.append(f"| {r['method']} | {r['trainable']} | {100 * share:.1f}% | {t} | {r['new_accuracy']:.3f} | "
                     f"{r['new_fd']:.2f} | {r['old_accuracy']:.3f} | {r['old_fd']:.2f} |")  # fmt: skip
    lines += ["", "SaRA's premise (zero every Linear weight with |w| below the quantile; eps validation loss on 0-4):",
              "", "| zeroed share | tau | loss before | loss after | change |", "|---|---|---|---|---|"]  # fmt: skip
    for r in res["premise"]:
        ch = r["val_loss"] / r["base_val_loss"] - 1
        lines.append(f"| {r['fraction']:.0%} | {r['tau']:.2e} | {r['base_val_loss']:.4f} | {r['val_loss']:.4f} | "
                     f"{100 * ch:+.2f}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["method"] for r in rows]
    ax[0].bar(names, [r["new_accuracy"] for r in rows], color="tab:blue", alpha=0.7, label="new classes 5-9")
    ax[0].plot(names, [r["old_accuracy"] for r in rows], "ko-", label="old classes 0-4")
    ax[0].set(ylabel="classifier accuracy of samples", title="adaptation and forgetting")
    ax[0].legend(fontsize=8)
    ax[1].scatter([max(r["trainable"], 1) for r in rows], [r["new_fd"] for r in rows])
    for r in rows:
        ax[1].annotate(r["method"], (max(r["trainable"], 1), r["new_fd"]), fontsize=8)
    ax[1].set(xscale="log", xlabel="trainable parameters", ylabel="Fréchet distance to real 5-9")
    for a in ax:
        a.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
