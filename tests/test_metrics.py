"""Tests for the metrics: SW2 and MMD against exact values, Fréchet distance, digits classifier, PSNR/SSIM."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
import torch

from diffusio.data.digits import load_digits
from diffusio.metrics import (
    DigitsClassifier,
    classifier_confidence,
    digits_frechet_distance,
    frechet_distance,
    get_digits_classifier,
    mmd,
    psnr,
    sliced_wasserstein,
    ssim,
)
from diffusio.metrics import classifier as classifier_module


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- sliced Wasserstein ---------------------------------------------------------------------------------
def test_sw2_of_two_samples_of_one_gaussian_is_small():
    x, y = torch.randn(20000, 2, generator=gen(1)), torch.randn(20000, 2, generator=gen(2))
    assert sliced_wasserstein(x, y, generator=gen(3)) < 0.03
    assert sliced_wasserstein(x[:2000], x[:2000], generator=gen(3)) == 0.0


@pytest.mark.parametrize("n_y", [20000, 7000])
def test_sw2_of_a_mean_shift_matches_closed_form(n_y):
    """For y = x + m in law, SW2^2 = E_theta[(theta.m)^2] = |m|^2 / D."""
    m = torch.tensor([1.5, -1.0, 0.5, 2.0])
    x = torch.randn(20000, 4, generator=gen(4))
    y = torch.randn(n_y, 4, generator=gen(5)) + m
    exact = math.sqrt(float(m.square().sum()) / 4)
    assert sliced_wasserstein(x, y, generator=gen(6)) == pytest.approx(exact, rel=0.05)


def test_sw2_compares_empirical_quantile_functions_exactly():
    """Repeating every point of y leaves its empirical law, hence SW2, unchanged (N != M path)."""
    x, y = torch.randn(300, 3, generator=gen(1)), torch.randn(300, 3, generator=gen(2)) + 1
    same = sliced_wasserstein(x, y, generator=gen(3))
    assert sliced_wasserstein(x, torch.cat([y, y]), generator=gen(3)) == pytest.approx(same, rel=1e-12)


def test_sw2_flattens_images_and_depends_on_the_generator():
    x, y = torch.randn(300, 1, 4, 4, generator=gen(1)), torch.rand(200, 1, 4, 4, generator=gen(2))
    a = sliced_wasserstein(x, y, 5, generator=gen(7))
    assert a == sliced_wasserstein(x, y, 5, generator=gen(7))
    assert a != sliced_wasserstein(x, y, 5, generator=gen(8))


def test_distance_input_errors():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="same number of features"):
        sliced_wasserstein(x, torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"N >= 1"):
        sliced_wasserstein(x, torch.randn(0, 3))
    bad = x.clone()
    bad[0, 0], bad[3, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="2 non-finite"):
        sliced_wasserstein(bad, x)
    with pytest.raises(ValueError, match="2 non-finite"):
        mmd(x, bad)
    with pytest.raises(ValueError, match="same number of features"):
        mmd(x, torch.randn(10, 2))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=[1.0, -1.0])


# --- MMD ------------------------------------------------------------------------------------------------
def test_mmd_is_unbiased_under_the_null_and_positive_otherwise():
    g = gen(10)
    null = torch.tensor([mmd(torch.randn(200, 2, generator=g), torch.randn(150, 2, generator=g)) for _ in range(30)])
    se = null.std() / math.sqrt(len(null))
    assert null.mean().abs() < 3 * se  # a biased (V-statistic) estimator fails this
    shifted = mmd(torch.randn(200, 2, generator=g), torch.randn(150, 2, generator=g) + 0.7)
    assert shifted > null.mean() + 10 * null.std()


def test_mmd_with_explicit_bandwidth_matches_direct_formula():
    x, y = torch.randn(40, 3, generator=gen(1)), torch.randn(30, 3, generator=gen(2)) + 0.3

    def k(a, b):
        return torch.exp(-(torch.cdist(a.double(), b.double()) ** 2) / 2)

    kxx, kyy = k(x, x), k(y, y)
    exact = (kxx.sum() - kxx.trace()) / (40 * 39) + (kyy.sum() - kyy.trace()) / (30 * 29) - 2 * k(x, y).mean()
    assert mmd(x, y, bandwidths=[1.0]) == pytest.approx(float(exact), rel=1e-9)


# --- Fréchet distance -----------------------------------------------------------------------------------
def _fd_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    import scipy.linalg

    a, b = a.double().numpy(), b.double().numpy()
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def test_frechet_distance_matches_scipy_and_is_zero_on_itself():
    a = torch.randn(500, 12, generator=gen(1))
    b = torch.randn(400, 12, generator=gen(2)) @ torch.randn(12, 12, generator=gen(3)) * 0.4 + 0.5
    assert frechet_distance(a, b) == pytest.approx(_fd_reference(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(a[:1], b)


# --- digits classifier ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("diffusio_cache")


@pytest.fixture(scope="module")
def clf8(classifier_cache):
    return get_digits_classifier(8, "pad", cache_dir=classifier_cache)


def test_classifier_accuracy_and_cache(clf8, classifier_cache, monkeypatch):
    x, y = load_digits(8, "pad", "test")
    with torch.no_grad():
        acc = (clf8(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.97
    assert not clf8.training and clf8.features(x[:5]).shape == (5, 64)
    files = list(classifier_cache.glob("digits_classifier_pad8_v*.safetensors"))
    assert len(files) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(classifier_module, "train_digits_classifier", no_training)
    monkeypatch.setenv("DIFFUSIO_CACHE", str(classifier_cache))
    again = get_digits_classifier(8, "pad")  # cache found through $DIFFUSIO_CACHE
    with torch.no_grad():
        assert torch.equal(again(x), clf8(x))


def test_corrupt_classifier_cache_is_retrained(tmp_path, monkeypatch):
    path = tmp_path / f"digits_classifier_pad8_{classifier_module.CLASSIFIER_VERSION}.safetensors"
    path.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(classifier_module, "_EPOCHS", 1)
    with pytest.warns(UserWarning, match="unreadable digits-classifier cache"):
        clf = get_digits_classifier(8, "pad", cache_dir=tmp_path)
    assert isinstance(clf, DigitsClassifier) and path.stat().st_size > 1000


def test_classifier_training_is_deterministic(monkeypatch):
    """Two trainings from the fixed seed give the same first steps (checked on a shortened schedule)."""
    monkeypatch.setattr(classifier_module, "_EPOCHS", 1)
    a = classifier_module.train_digits_classifier(8, "pad", progress=False)
    b = classifier_module.train_digits_classifier(8, "pad", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_classifier_rejects_wrong_size(clf8):
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        clf8(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="size must be one of"):
        DigitsClassifier(12)


def test_digits_frechet_distance_separates_real_from_noise(clf8):
    x, _ = load_digits(8, "pad", "test")
    real = digits_frechet_distance(x[:135], x[135:], clf8)
    noise = digits_frechet_distance(torch.randn(135, 1, 8, 8, generator=gen(1)).clamp(-1, 1), x[135:], clf8)
    assert digits_frechet_distance(x, x, clf8) == pytest.approx(0.0, abs=1e-6)
    assert noise > 5 * real  # ~12x measured; FD at N=135 carries a large positive bias


def test_classifier_confidence(clf8):
    x, y = load_digits(8, "pad", "test")
    conf = classifier_confidence(x, clf8)
    assert conf["mean_max_prob"] > 0.9
    assert sum(conf["class_histogram"]) == len(y) and len(conf["class_histogram"]) == 10
    assert math.log(10) - 0.1 < conf["entropy_of_class_histogram"] <= math.log(10) + 1e-9
    ones = classifier_confidence(x[y == 1], clf8)
    assert ones["entropy_of_class_histogram"] < 0.3 and ones["class_histogram"][1] >= 0.9 * int((y == 1).sum())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DIFFUSIO_RUN_SLOW"), reason="set DIFFUSIO_RUN_SLOW=1 (trains ~10-20 s each)")
@pytest.mark.parametrize(("size", "mode"), [(16, "pad"), (16, "upscale"), (32, "pad"), (32, "upscale")])
def test_classifier_accuracy_other_sizes(size, mode, tmp_path):
    start = time.perf_counter()
    clf = get_digits_classifier(size, mode, cache_dir=tmp_path)
    elapsed = time.perf_counter() - start
    x, y = load_digits(size, mode, "test")
    with torch.no_grad():
        assert (clf(x).argmax(1) == y).double().mean() >= 0.97
    assert elapsed < 60


# --- PSNR / SSIM ----------------------------------------------------------------------------------------
def test_ssim_and_psnr_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x = torch.rand(3, 3, 32, 32, generator=gen(1)) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen(2))).clamp(-1, 1)
    ours_ssim, ours_psnr = ssim(x, y), psnr(x, y)
    assert ours_ssim.shape == (3,) and ours_psnr.shape == (3,)
    for i in range(3):
        ref = structural_similarity(
            x[i].numpy(),
            y[i].numpy(),
            data_range=2.0,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(float(ours_ssim[i]) - ref) < 1e-3
        assert float(ours_psnr[i]) == pytest.approx(peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=2))


def test_ssim_psnr_identity_and_errors():
    x = torch.rand(2, 1, 16, 16, generator=gen(3))
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert torch.isinf(psnr(x, x)).all()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(x, x[:1])
    with pytest.raises(ValueError, match="win_size=11"):
        ssim(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0)
