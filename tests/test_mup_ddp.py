"""muP under DDP: two gloo processes training a tiny muP DiT follow the single-process loss trajectory and weights,
and the DDP wrapper keeps mup's base shapes (infshape, width multipliers, MuAdamW's per-group learning rates)."""

import os
import socket

import torch
import torch.multiprocessing as mp

from diffusio.app.config import build_data, build_loss, build_model
from diffusio.io import load_safetensors, save_safetensors
from diffusio.training import DistInfo, TrainConfig, Trainer

CFG = {
    "data": {"name": "digits"},
    "path": "vp_linear",
    "net": {"name": "dit", "width": 32, "head_dim": 8, "base_width": 16, "depth": 1, "num_classes": 10},
}
TRAIN = TrainConfig(steps=6, batch_size=32, lr=1e-2, warmup=1, ema_decay=0.9, seed=3, progress=False)


def _run(info: DistInfo) -> tuple[Trainer, list[float]]:
    data = build_data(CFG["data"])
    model = build_model(CFG, data.shape, data.num_classes)
    tr = Trainer(model, build_loss(CFG, model), data, TRAIN, dist_info=info)
    return tr, [tr.train_step()[0] for _ in range(TRAIN.steps)]


def _shapes(net) -> dict:
    return {n: (p.infshape.ninf(), p.infshape.width_mult()) for n, p in net.named_parameters()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from diffusio.training import cleanup, setup

    tr, losses = _run(setup("cpu"))
    ddp = tr.train_model.net
    wrapped = ddp.module  # the DDP wrapper around the muP net the optimizer was built from
    assert type(ddp).__name__ == "DistributedDataParallel" and wrapped is tr.net
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in ddp.parameters()}  # DDP trains the very tensors MuAdamW scales
    lrs = sorted({g["lr"] / TRAIN.lr for g in tr.optimizer.param_groups})
    meta = {"losses": losses, "shapes": _shapes(wrapped), "lr_ratios": lrs}
    save_safetensors(wrapped.state_dict(), f"{out}/rank{rank}.safetensors", meta)
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mup_dit_under_ddp_matches_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one, losses = _run(DistInfo())
    ranks = [load_safetensors(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    # each rank's loss is the mean over its half of the global batch: their average is the global loss
    ddp_losses = [(a + b) / 2 for a, b in zip(ranks[0][1]["losses"], ranks[1][1]["losses"])]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(losses), rtol=1e-5, atol=1e-6)
    assert ranks[0][1]["losses"] != ranks[1][1]["losses"]  # the ranks did see different halves
    assert losses[-1] < losses[0]
    for tensors, meta in ranks:
        for k, v in one.net.state_dict().items():
            torch.testing.assert_close(tensors[k], v, rtol=1e-4, atol=1e-5, msg=k)
        assert {k: tuple(v) for k, v in meta["shapes"].items()} == _shapes(one.net)
        assert meta["lr_ratios"] == [0.5, 1.0]  # hidden matrices at lr / width_mult (32 / 16) on every rank
    assert max(w for _, w in _shapes(one.net).values()) == 2.0
