"""Memorization on a small scale, and MemControl's search over which blocks to adapt.

The class-conditional digits MLP of ``bench.finetune`` (pre-trained on 0-4, cached) is fine-tuned on a small set of
digits 5-9 — a ``--subset`` of the training images (MemControl's 1-10% data ratio) in which ``--dup`` images are
repeated ``--rep`` times (the duplicated subset that makes diffusion models regurgitate training images). Full
fine-tuning (``--steps``, cached in ``diffusio.io.cache_dir("bench", "memorization")``) is the memorizing baseline.

Memorization: the share of class-conditional samples (classes 5-9, balanced) that are near-copies of a fine-tuning
image — nearest-neighbour distance below 1/3 of the typical train-to-train nearest-neighbour distance
(``analysis.fraction_memorized``) — compared with the pre-trained model and with held-out real digits (fresh images
that were never trained on); and the conditional-vs-null noise difference ``||eps(x_t, y) - eps(x_t, null)||``
(``analysis.noise_difference``) on the duplicated images against the other fine-tuning images. Quality: Fréchet
distance (digit-classifier features) of the same samples to real 5-9.

MemControl (``finetune.memcontrol_search``, optuna TPE, two objectives): a binary mask over the network's six
blocks (mask position -> module in the results) and a learning rate; each trial adapts the masked blocks with LoRA
for ``--trial-steps`` steps on the same data and scores (memorization, Fréchet distance) on fixed seeds. Reported:
every trial, the Pareto front, the chosen mask (lowest Fréchet distance with memorization <= half of full
fine-tuning's) and its quality cost.

``python -m bench.memorization`` (or ``diffusio bench memorization``).
"""

from __future__ import annotations

import argparse
import copy
import os
import warnings

import torch

from bench.common import results_dir, write_results
from bench.finetune import NEW, _subset, pretrained
from diffusio.analysis import fraction_memorized, noise_difference
from diffusio.data.sources import TensorSource
from diffusio.finetune import finetune, memcontrol_search
from diffusio.io import cache_dir, load_safetensors, save_safetensors
from diffusio.samplers import sample

SITES = ["net.cond", "net.inp", "net.blocks.0", "net.blocks.1", "net.blocks.2", "net.out"]


def _log(msg: str) -> None:
    print(f"[memorization] {msg}", flush=True)


def fine_tuning_set(x, y, subset: int, dup: int, rep: int):
    """(images, labels, the unique training images, the duplicated images' indices into them)."""
    x_new, y_new = _subset(x, y, NEW)
    perm = torch.randperm(len(x_new), generator=torch.Generator().manual_seed(0))[:subset]
    xs, ys = x_new[perm], y_new[perm]
    x_ft = torch.cat([xs, xs[:dup].repeat(rep, 1, 1, 1)])
    y_ft = torch.cat([ys, ys[:dup].repeat(rep)])
    return x_ft, y_ft, xs, ys


def full_finetuned(base, data, args):
    """Full fine-tuning of ``base`` on ``data`` (cached by its settings)."""
    model = copy.deepcopy(base)
    key = f"full_{args.pretrain_steps}_{args.subset}_{args.dup}_{args.rep}_{args.steps}_{args.lr:g}"
    f = cache_dir("bench", "memorization") / f"{key}.safetensors"
    if f.is_file():
        model.net.load_state_dict(load_safetensors(f)[0])
        return model.eval()
    _log(f"full fine-tuning ({args.steps} steps, once; cached in {f.parent})")
    for p in model.net.parameters():
        p.requires_grad_(True)
    finetune(model, data, args.steps, lr=args.lr, batch_size=128, label_dropout=0.1)
    save_safetensors(model.net.state_dict(), f, {"key": key})
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench memorization", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--pretrain-steps", type=int, default=4000, help="the bench.finetune base model")
    p.add_argument("--subset", type=int, default=76, help="training images of 5-9 fine-tuned on (about 10%%)")
    p.add_argument("--dup", type=int, default=10, help="number of duplicated images")
    p.add_argument("--rep", type=int, default=50, help="extra copies of each duplicated image")
    p.add_argument("--steps", type=int, default=2000, help="full fine-tuning steps")
    p.add_argument("--lr", type=float, default=1e-3, help="full fine-tuning learning rate")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--trial-steps", type=int, default=400)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank of the MemControl trials")
    p.add_argument("--n", type=int, default=200, help="samples per evaluation")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusio.data.digits import load_digits
    from diffusio.metrics import digits_frechet_distance, get_digits_classifier

    clf = get_digits_classifier()
    x, y = load_digits(8, "pad", "train")
    base = pretrained(x, y, args.pretrain_steps)
    x_ft, y_ft, xs, ys = fine_tuning_set(x, y, args.subset, args.dup, args.rep)
    data = TensorSource(x_ft, y_ft)
    real = _subset(*load_digits(8, "pad", "all"), NEW)[0]
    held_out = _subset(*load_digits(8, "pad", "test"), NEW)[0]
    labels = torch.tensor(NEW).repeat(args.n // len(NEW) + 1)[: args.n]

    def evaluate(model) -> tuple[float, float]:
        """(share of samples that copy a fine-tuning image, Fréchet distance to real 5-9); fixed seeds."""
        z = model.path.prior_sample((args.n, 1, 8, 8), generator=torch.Generator().manual_seed(3))
        s = sample(model, z, solver="ddim", steps=20, cond={"y": labels}).x.clamp(-1, 1)
        return fraction_memorized(s, xs), digits_frechet_distance(s, real, clf)

    def noise_diff(model) -> dict:
        gen = torch.Generator().manual_seed(4)
        d = noise_difference(model, xs, {"y": ys}, {"y": torch.full_like(ys, 10)}, generator=gen)
        return {"noise_diff_duplicated": float(d[: args.dup].mean()), "noise_diff_other": float(d[args.dup :].mean())}

    rows = [{"model": "held-out real 5-9 (fresh images)", "memorized": fraction_memorized(held_out, xs),
             "fd": digits_frechet_distance(held_out, real, clf)}]  # fmt: skip
    m0, q0 = evaluate(base)
    rows.append({"model": "pre-trained on 0-4 (fresh model)", "memorized": m0, "fd": q0, **noise_diff(base)})
    full = full_finetuned(base, data, args)
    m1, q1 = evaluate(full)
    rows.append({"model": f"full fine-tuning ({args.steps} steps)", "memorized": m1, "fd": q1, **noise_diff(full)})
    _log(f"full fine-tuning: memorized {m1:.3f} (fresh model {m0:.3f}), FD {q1:.1f}")
    _log(f"MemControl search over {SITES} ({args.trials} trials of {args.trial_steps} steps)")
    res = memcontrol_search(base, SITES, data, evaluate, n_trials=args.trials, steps=args.trial_steps,
                            rank=args.rank, lr_range=(1e-3, 1e-2), max_memorization=0.5 * m1,
                            progress=True)  # fmt: skip
    chosen = res.chosen
    mask_name = "".join(map(str, chosen["mask"]))
    rows.append({"model": f"MemControl mask {mask_name} (LoRA r{args.rank}, lr {chosen['lr']:.1e})",
                 "memorized": chosen["memorization"], "fd": chosen["quality"]})  # fmt: skip
    payload = {"rows": rows, "trials": res.trials, "pareto": res.pareto, "chosen": chosen, "sites": SITES,
               "full": {"memorized": m1, "fd": q1}, "load_average": os.getloadavg(), "args": vars(args)}  # fmt: skip
    md = _markdown(payload)
    out = results_dir(args.out)
    write_results(out, "memorization", payload, md)
    _plot(payload, out / "memorization.png")
    print(md)
    return 0


def _markdown(res: dict) -> str:
    a, c, full = res["args"], res["chosen"], res["full"]
    load = ", ".join(f"{v:.1f}" for v in res["load_average"])
    lines = ["# Memorization and MemControl", "",
             f"`diffusio bench memorization` — digits MLP pre-trained {a['pretrain_steps']} steps on 0-4, fine-tuned "
             f"on {a['subset']} training images of 5-9 of which {a['dup']} are repeated {a['rep']} more times "
             f"(batch 128, 10% label dropout). Memorized: share of {a['n']} class-conditional samples (20-step DDIM, "
             "classes 5-9) whose nearest fine-tuning image is closer than 1/3 of the median train-to-train "
             "nearest-neighbour distance. FD: Fréchet distance of the same samples to real 5-9 (digit-classifier "
             "features). Noise difference: mean ||eps(x_t, y) - eps(x_t, null)|| over t in [0.2, 0.8] on the "
             f"duplicated vs the other fine-tuning images. Load average at the end (2 CPUs): {load}.", "",
             "| model | memorized | FD | noise diff. (duplicated) | noise diff. (other) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        nd = f"{r['noise_diff_duplicated']:.3f} | {r['noise_diff_other']:.3f}" if "noise_diff_other" in r else "- | -"
        lines.append(f"| {r['model']} | {r['memorized']:.3f} | {r['fd']:.1f} | {nd} |")
    sites = ", ".join(f"{j}: {s}" for j, s in enumerate(res["sites"]))
    lines += ["", f"MemControl: {a['trials']} optuna trials (TPE, seed 0), LoRA rank {a['rank']} on the masked blocks, "
              f"{a['trial_steps']} steps each, lr in [1e-3, 1e-2] (log). Mask positions: {sites}. Pareto front "
              f"({len(res['pareto'])} of {len(res['trials'])} trials):", "",
              "| mask | lr | memorized | FD | trainable |", "|---|---|---|---|---|"]  # fmt: skip
    for t in sorted(res["pareto"], key=lambda t: t["memorization"]):
        mask = "".join(map(str, t["mask"]))
        lines.append(f"| {mask} | {t['lr']:.1e} | {t['memorization']:.3f} | {t['quality']:.1f} | {t['trainable']} |")
    dm = (c["memorization"] / full["memorized"] - 1) * 100 if full["memorized"] > 0 else float("nan")
    lines += ["", f"Chosen mask {''.join(map(str, c['mask']))} (lowest FD with memorization <= half of full "
              f"fine-tuning's): memorized {c['memorization']:.3f} vs full fine-tuning {full['memorized']:.3f} "
              f"({dm:+.0f}%), FD {c['quality']:.1f} vs {full['fd']:.1f} "
              f"({(c['quality'] / full['fd'] - 1) * 100:+.0f}%, the quality cost)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(res: dict, file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    ax.scatter([t["memorization"] for t in res["trials"]], [t["quality"] for t in res["trials"]], c="lightgray",
               edgecolors="gray", label="MemControl trials")  # fmt: skip
    front = sorted(res["pareto"], key=lambda t: t["memorization"])
    ax.step([t["memorization"] for t in front], [t["quality"] for t in front], "o-", where="post",
            label=f"Pareto front ({len(front)} points)")  # fmt: skip
    for t in front:
        ax.annotate("".join(map(str, t["mask"])), (t["memorization"], t["quality"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.scatter([res["full"]["memorized"]], [res["full"]["fd"]], marker="x", s=80, c="red", label="full fine-tuning")
    c = res["chosen"]
    ax.scatter([c["memorization"]], [c["quality"]], marker="*", s=180, c="gold", edgecolors="k", label="chosen")
    ax.set(xlabel="share of samples that copy a fine-tuning image", ylabel="Fréchet distance to real 5-9",
           title="MemControl: memorization vs quality")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
