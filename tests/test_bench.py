"""Bench reports: the verdicts of ``diffusio bench solvers`` and ``sde-order`` follow from the numbers."""

from bench import sde_order, solvers


def _rows(ours: float, peer: float) -> dict:
    return {
        "diffusio:dpmpp_2m@logsnr": {5: {"error": ours, "sliced_w2": 0.1}, 10: {"error": ours / 2, "sliced_w2": 0.1}},
        "k-diffusion:dpmpp_2m@logsnr": {5: {"error": peer, "sliced_w2": 0.1}, 10: {"error": peer, "sliced_w2": 0.1}},
    }


def test_solvers_summary_flags_losses_and_disagreements():
    pair = {"ours": "diffusio:dpmpp_2m", "peer": "k-diffusion:dpmpp_2m@logsnr", "nfe": 5, "error_ours": 0.2}
    good = {**pair, "error_peer": 0.2, "rel": 0.001}
    bad = {**pair, "error_peer": 0.2, "rel": 0.05}
    model = {"rows": _rows(0.1, 0.08), "pairs": [good], "peers": [], "reference_sliced_w2": 0.1, "batch": 4}
    model.update(reference_rtol=1e-7)
    md = solvers.markdown({"models": {"toy": model}}, (5, 10))
    assert "| toy | 5 | diffusio:dpmpp_2m@logsnr (1.000e-01) | k-diffusion:dpmpp_2m@logsnr (8.000e-02) | 1.25 |" in md
    assert "(8.000e-02) | 1.25 | **no** |" in md
    assert "| toy | 10 |" in md and "0.62 | yes |" in md
    assert "worst relative difference 0.100% (target < 2%): yes." in md and "| 0.100% | pass |" in md
    model["pairs"] = [good, bad]
    md = solvers.markdown({"models": {"toy": model}}, (5, 10))
    assert "(target < 2%): **no**." in md and "| 5.000% | **FAIL** |" in md


def test_sde_order_slopes_skip_unresolved_errors():
    rows = [
        {"steps": 16, "err_m2": 0.16, "se_m2": 0.001},
        {"steps": 32, "err_m2": 0.04, "se_m2": 0.001},
        {"steps": 64, "err_m2": 0.01, "se_m2": 0.001},
        {"steps": 128, "err_m2": -0.002, "se_m2": 0.001},  # within 4 standard errors of 0
    ]
    assert [round(s, 6) if s else s for s in sde_order.slopes(rows)] == [2.0, 2.0, None]
    assert abs(sde_order.measured_order(rows) - 2.0) < 1e-12 and abs(sde_order.fitted_order(rows) - 2.0) < 1e-12
    assert sde_order.measured_order(rows[2:]) is None
