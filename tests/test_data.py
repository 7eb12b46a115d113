"""Tests for the bundled data: 2-D toys, sklearn digits, image folders and scikit-image patches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusio.data.digits import load_digits
from diffusio.data.images import image_patches, load_image_folder
from diffusio.data.toy import TOY_DATASETS, sample_toy


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- toy ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_scale_and_determinism(name):
    x = sample_toy(name, 20000, generator=gen(0))
    assert x.shape == (20000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.mean(0).abs().max() < 0.1
    std = x.std(0)
    assert ((std > 0.5) & (std < 2.0)).all(), std
    assert torch.equal(x, sample_toy(name, 20000, generator=gen(0)))
    assert not torch.equal(x, sample_toy(name, 20000, generator=gen(1)))
    x64 = sample_toy(name, 20000, generator=gen(0), dtype=torch.float64)
    assert x64.dtype == torch.float64 and torch.allclose(x64.float(), x)


def test_toy_gaussians_are_sharp_and_balanced():
    x = sample_toy("gaussians", 16000, generator=gen(2)).double()
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    centres = math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], 1)
    d, k = torch.cdist(x, centres).min(1)
    assert d.max() < 0.5 and d.square().mean().sqrt() < 0.15
    counts = torch.bincount(k, minlength=8).double()
    assert (counts / 2000 - 1).abs().max() < 0.1


def test_toy_rings_and_checkerboard_structure():
    r = sample_toy("rings", 8000, generator=gen(3)).double().norm(dim=1)
    assert (r - (r * 2).round() / 2).abs().max() < 0.2  # radii 0.5, 1, 1.5, 2 with noise 0.03
    assert set((r * 2).round().long().tolist()) == {1, 2, 3, 4}
    c = sample_toy("checkerboard", 8000, generator=gen(4))
    assert c.abs().max() <= 2.0
    cells = (c + 2).floor().long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_toy_errors():
    with pytest.raises(ValueError, match="valid names are moons, checkerboard"):
        sample_toy("mooons", 10)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_toy("moons", 0)


# --- digits ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("mode", ["pad", "upscale"])
def test_digits_shapes_and_range(size, mode):
    x, y = load_digits(size, mode)
    assert x.shape == (1797, 1, size, size) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.9
    if mode == "pad" and size > 8:
        p = (size - 8) // 2
        inner = torch.zeros(size, size, dtype=torch.bool)
        inner[p : p + 8, p : p + 8] = True
        assert (x[..., ~inner] == -1).all()
        assert torch.equal(x[..., p : p + 8, p : p + 8], load_digits(8)[0])


def test_digits_match_sklearn_values():
    from sklearn.datasets import load_digits as sk

    raw = torch.as_tensor(sk().images, dtype=torch.float32)
    x, _ = load_digits(8)
    assert torch.allclose(x[:, 0], raw / 8 - 1)


def test_digits_splits_are_disjoint_and_deterministic():
    _, ya = load_digits(split="all")
    xtr, ytr = load_digits(split="train")
    xte, yte = load_digits(split="test")
    assert len(ytr) + len(yte) == len(ya) and abs(len(ytr) / len(ya) - 0.85) < 0.01
    rows = {tuple(r) for r in xtr.flatten(1).tolist()}
    assert sum(tuple(r) in rows for r in xte.flatten(1).tolist()) < 5  # sklearn has a few exact duplicates
    assert torch.equal(xte, load_digits(split="test")[0]) and torch.equal(yte, load_digits(split="test")[1])
    assert sorted(ytr.tolist() + yte.tolist()) == sorted(ya.tolist())


def test_digits_errors():
    with pytest.raises(ValueError, match=r"size must be one of \(8, 16, 32\)"):
        load_digits(12)
    with pytest.raises(ValueError, match="mode must be one of"):
        load_digits(16, "crop")
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits(split="val")


# --- image folders --------------------------------------------------------------------------------------
def _save(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_load_image_folder(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # the centre square is white, the sides black
    _save(tmp_path / "b" / "wide.png", wide, "RGB")
    _save(tmp_path / "a.jpg", np.full((30, 30, 3), 255, np.uint8), "RGB")
    _save(tmp_path / "c" / "d" / "gray.bmp", np.zeros((16, 16), np.uint8), "L")
    (tmp_path / "notes.txt").write_text("not an image")
    x = load_image_folder(tmp_path, 8)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[0], torch.ones(3, 8, 8), atol=0.05)  # a.jpg first (sorted)
    assert torch.allclose(x[1], torch.ones(3, 8, 8), atol=1e-6)  # centre crop of wide.png is all white
    assert torch.equal(x[2], -torch.ones(3, 8, 8))
    g = load_image_folder(tmp_path, 4, channels=1, max_images=2)
    assert g.shape == (2, 1, 4, 4)


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere", 8)
    with pytest.raises(ValueError, match=r"\.png"):
        load_image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_image_folder(tmp_path, 8, channels=2)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        load_image_folder(tmp_path, 0)


# --- scikit-image patches -------------------------------------------------------------------------------
def test_image_patches_shape_range_determinism():
    p = image_patches("all", 16, 64, generator=gen(0))
    assert p.shape == (64, 1, 16, 16) and p.dtype == torch.float32
    assert p.min() >= -1 and p.max() <= 1 and p.std() > 0.05
    assert torch.equal(p, image_patches("all", 16, 64, generator=gen(0)))
    assert not torch.equal(p, image_patches("all", 16, 64, generator=gen(1)))


def test_image_patches_are_crops_of_the_photograph():
    import skimage.data

    cam = torch.from_numpy(skimage.data.camera()).float() / 127.5 - 1
    windows = cam.unfold(0, 8, 1).unfold(1, 8, 1)  # (505, 505, 8, 8)
    for patch in image_patches("camera", 8, 3, generator=gen(5)):
        err = (windows - patch[0]).abs().flatten(2).amax(-1)
        assert err.min() < 1e-5


def test_image_patches_splits_hold_out_the_right_quarter():
    import skimage.data

    cam = torch.from_numpy(skimage.data.camera()).float() / 127.5 - 1  # 512 x 512: test columns are 384..511
    windows = cam.unfold(0, 8, 1).unfold(1, 8, 1)
    for split, inside in (("test", lambda c: c >= 384), ("train", lambda c: c + 8 <= 384)):
        for patch in image_patches("camera", 8, 3, generator=gen(7), split=split):
            err = (windows - patch[0]).abs().flatten(2).amax(-1)
            cols = (err < 1e-5).nonzero()[:, 1]
            assert len(cols) and all(inside(int(c)) for c in cols)


def test_image_patches_errors():
    with pytest.raises(ValueError, match="valid: all, train, test"):
        image_patches("camera", 8, 4, split="val")
    with pytest.raises(ValueError, match="holdout must be in"):
        image_patches("camera", 8, 4, split="test", holdout=1.5)
    with pytest.raises(ValueError, match="valid names are camera"):
        image_patches("lena", 8, 4)
    with pytest.raises(ValueError, match="size must be at most 303"):
        image_patches("all", 400, 4)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        image_patches("moon", 8, 0)
