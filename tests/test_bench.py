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


def _img(prior, task, method, psnr):
    return {"prior": prior, "task": task, "method": method, "psnr": psnr, "ssim": 0.5, "nfe": 1, "seconds": 0.1}


def test_inverse_gaps_compare_our_best_with_deepinvs_best():
    from bench import inverse

    rows = [_img("patches", "inpaint", m, p) for m, p in
            (("pinv", 40.0), ("dps", 30.0), ("ddrm", 31.5), ("deepinv_dps", 32.0), ("deepinv_ddrm", 29.0))]  # fmt: skip
    rows += [_img("digits", "inpaint", "dps", 20.0), _img("digits", "inpaint", "deepinv_dps", 10.0)]
    (gap,) = inverse.gaps(rows)
    assert (gap["ours"], gap["deepinv"]) == ("ddrm", "deepinv_dps")  # pinv is a baseline, not "ours"
    assert abs(gap["gap_db"] + 0.5) < 1e-12


def test_inverse_merge_keeps_earlier_rows_only_for_what_was_not_rerun():
    from bench import inverse

    exact_row = {"method": "smc", "mean_error": 0.1, "cov_rel_error": 0.1, "nfe": 1, "seconds": 0.1}
    old = {"exact": [exact_row], "images": [_img("phantoms", "ct", "dps", 30.0), _img("patches", "sr", "dps", 1)],
           "volume": [], "forward_models": None}  # fmt: skip
    exact, images, volume, dfm, note = inverse._merge(old, [], [_img("patches", "sr", "dps", 2)], [], None, "run.")
    assert exact == old["exact"] and volume == [] and dfm is None
    assert [(r["prior"], r["psnr"], r.get("previous_run")) for r in images] == [("patches", 2, None),
                                                                                ("phantoms", 30.0, True)]  # fmt: skip
    assert "(not rerun here): exact, volume, forward models, images of phantoms." in note
    md = inverse._markdown(exact, images, volume, note)
    assert "| phantoms | ct | dps | 30.00 | 0.500 | 1 | 0.1 | (earlier run)" in md
