"""Memorization on a small scale, and MemControl's search over which blocks to adapt.

The class-conditional digits MLP of ``bench.finetune`` (pre-trained on 0-4) is fine-tuned on digits 5-9 in which
``--dup`` images are repeated ``--rep`` times (a duplicated subset, the setting in which diffusion models
regurgitate training images). Memorization: the share of class-conditional samples within 1/3 of the typical
train-to-train nearest-neighbour distance of a training image (``analysis.fraction_memorized``), and the
conditional-vs-null noise difference on the duplicated images (``analysis.noise_difference``). Quality: Fréchet
distance (digit-classifier features) of the samples to real 5-9. Full fine-tuning is the baseline; MemControl
(``finetune.memcontrol_search``, optuna) searches masks over the network's blocks with LoRA and returns the Pareto
front and the chosen mask.

``python -m bench.memorization`` (or ``diffusio bench memorization``).
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch

from bench.common import results_dir, write_results
from bench.finetune import _subset, pretrained
from diffusio.analysis import fraction_memorized, noise_difference
from diffusio.data.sources import TensorSource
from diffusio.finetune import finetune, memcontrol_search
from diffusio.samplers import sample

SITES = ["net.cond", "net.inp", "net.blocks.0", "net.blocks.1", "net.blocks.2", "net.out"]


def _log(msg: str) -> None:
    print(f"[memorization] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench memorization", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--dup", type=int, default=10, help="number of duplicated images")
    p.add_argument("--rep", type=int, default=200, help="copies of each duplicated image")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--n", type=int, default=200, help="samples per evaluation")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusio.data.digits import load_digits
    from diffusio.metrics import digits_frechet_distance, get_digits_classifier

    clf = get_digits_classifier()
    x, y = load_digits(8, "pad", "train")
    base = pretrained(x, y, 600)  # the bench.finetune model (cached)
    x_new, y_new = _subset(x, y, [5, 6, 7, 8, 9])
    g = torch.Generator().manual_seed(0)
    dup = torch.randperm(len(x_new), generator=g)[: args.dup]
    x_ft = torch.cat([x_new, x_new[dup].repeat(args.rep, 1, 1, 1)])
    y_ft = torch.cat([y_new, y_new[dup].repeat(args.rep)])
    data = TensorSource(x_ft, y_ft)
    real = _subset(*load_digits(8, "pad", "all"), [5, 6, 7, 8, 9])[0]

    def evaluate(model) -> tuple[float, float]:
        """(share of samples that copy a duplicated image, Fréchet distance to real 5-9); fixed seeds."""
        labels = y_new[dup].repeat(args.n // args.dup + 1)[: args.n]  # the duplicated images' classes
        xs = model.path.prior_sample((args.n, 1, 8, 8), generator=torch.Generator().manual_seed(3))
        s = sample(model, xs, solver="ddim", steps=20, cond={"y": labels}).x.clamp(-1, 1)
        return fraction_memorized(s, torch.cat([x_new[dup], x_new])), digits_frechet_distance(s, real, clf)

    def noise_diff(model) -> dict:
        gen = torch.Generator().manual_seed(4)
        d_dup = noise_difference(model, x_new[dup], {"y": y_new[dup]}, {}, generator=gen)
        rest = torch.ones(len(x_new), dtype=torch.bool)
        rest[dup] = False
        d_rest = noise_difference(model, x_new[rest][:100], {"y": y_new[rest][:100]}, {}, generator=gen)
        return {"noise_diff_duplicated": float(d_dup.mean()), "noise_diff_other": float(d_rest.mean())}

    rows = []
    m0, q0 = evaluate(base)
    rows.append({"model": "pre-trained (0-4)", "memorized": m0, "fd": q0, **noise_diff(base)})
    _log(f"full fine-tuning on 5-9 with {args.dup} images x {args.rep} ({args.steps} steps)")
    full = copy.deepcopy(base)
    finetune(full, data, args.steps, lr=1e-3, batch_size=128, label_dropout=0.1, progress=False)
    m1, q1 = evaluate(full)
    rows.append({"model": "full fine-tuning", "memorized": m1, "fd": q1, **noise_diff(full)})
    _log(f"MemControl search over {SITES} ({args.trials} trials)")
    res = memcontrol_search(base, SITES, data, evaluate, n_trials=args.trials, steps=args.steps, rank=4,
                            lr_range=(3e-4, 3e-3), max_memorization=0.5 * m1, progress=True)  # fmt: skip
    chosen = res.chosen
    rows.append({"model": f"MemControl mask {chosen['mask']} (LoRA)", "memorized": chosen["memorization"],
                 "fd": chosen["quality"]})  # fmt: skip
    payload = {"rows": rows, "trials": res.trials, "pareto": res.pareto, "chosen": chosen, "sites": SITES,
               "args": vars(args)}  # fmt: skip
    md = _markdown(payload, m1, q1)
    out = results_dir(args.out)
    write_results(out, "memorization", payload, md)
    _plot(payload, m1, q1, out / "memorization.png")
    print(md)
    return 0


def _markdown(res: dict, m_full: float, q_full: float) -> str:
    a = res["args"]
    lines = ["# Memorization and MemControl", "",
             f"`diffusio bench memorization` — digits MLP pre-trained on 0-4, fine-tuned {a['steps']} steps on 5-9 "
             f"with {a['dup']} images repeated {a['rep']} times. Memorized: share of {a['n']} class-conditional "
             "samples (the duplicated images' classes) whose nearest-neighbour distance ratio to the training set is "
             "< 1/3. FD: Fréchet distance to real 5-9 (digit-classifier features). Noise difference: mean "
             "||eps(x_t, y) - eps(x_t, null)|| over t in [0.2, 0.8].", "",
             "| model | memorized | FD | noise diff. (duplicated) | noise diff. (other) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        nd = f"{r['noise_diff_duplicated']:.3f} | {r['noise_diff_other']:.3f}" if "noise_diff_other" in r else "- | -"
        lines.append(f"| {r['model']} | {r['memorized']:.3f} | {r['fd']:.2f} | {nd} |")
    c = res["chosen"]
    lines += ["", f"Sites (mask positions): {res['sites']}. Pareto front ({len(res['pareto'])} of "
              f"{len(res['trials'])} trials):", "", "| mask | lr | memorized | FD | trainable |",
              "|---|---|---|---|---|"]  # fmt: skip
    for t in sorted(res["pareto"], key=lambda t: t["memorization"]):
        lines.append(
            f"| {t['mask']} | {t['lr']:.1e} | {t['memorization']:.3f} | {t['quality']:.2f} | {t['trainable']} |"
        )
    dm = (c["memorization"] / m_full - 1) * 100 if m_full > 0 else float("nan")
    lines += ["", f"Chosen mask {c['mask']}: memorized {c['memorization']:.3f} vs full fine-tuning {m_full:.3f} "
              f"({dm:+.0f}%), FD {c['quality']:.2f} vs {q_full:.2f} "
              f"({(c['quality'] / q_full - 1) * 100:+.0f}%)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(res: dict, m_full: float, q_full: float, file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([t["memorization"] for t in res["trials"]], [t["quality"] for t in res["trials"]], c="lightgray",
               label="trials")  # fmt: skip
    front = sorted(res["pareto"], key=lambda t: t["memorization"])
    ax.plot([t["memorization"] for t in front], [t["quality"] for t in front], "o-", label="Pareto front")
    ax.scatter([m_full], [q_full], marker="x", s=80, c="red", label="full fine-tuning")
    c = res["chosen"]
    ax.scatter([c["memorization"]], [c["quality"]], marker="*", s=160, c="gold", edgecolors="k", label="chosen")
    ax.set(xlabel="share of memorized samples", ylabel="Fréchet distance to real 5-9", title="MemControl search")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
