"""The web studio's HTTP API (diffusio serve) against a live server on 127.0.0.1: refusals with 4xx and a clear
message, results equal to the library's front doors, previews and cancellation within one step, PNG parameters and
re-run, the comparison grid, and a server that answers while a run is going."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from diffusio.app.cli import main  # noqa: E402

pytestmark = pytest.mark.xdist_group("studio")

TINY_DIGITS = {
    "data": {"name": "digits", "size": 8, "mode": "pad", "split": "train"},
    "path": {"name": "edm"},
    "net": {"name": "unet", "channels": [8, 16], "num_res_blocks": 1, "time_dim": 16},
    "model": {"precond": {"sigma_data": 0.6}},
    "loss": {"target": "x0", "density": {"name": "edm"}, "weighting": {"name": "edm", "sigma_data": 0.6}},
    "train": {"steps": 6, "batch_size": 16, "log_every": 3, "ckpt_every": 6, "progress": False, "label_dropout": 0.1},
}
TINY_TOY = {
    "data": {"name": "toy", "dataset": "rings"},
    "path": {"name": "flow"},
    "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16},
    "model": {"prediction": "velocity"},
    "loss": {"target": "velocity"},
    "train": {"steps": 6, "batch_size": 32, "log_every": 3, "ckpt_every": 6, "progress": False},
}


def make_runs(root):
    """A checkpoint folder with a tiny class-conditional digits model and a tiny 2-D flow model (seconds)."""
    for name, cfg in (("digits", TINY_DIGITS), ("rings", TINY_TOY)):
        f = root / f"{name}.yaml"
        f.write_text(yaml.safe_dump(cfg))
        assert main(["train", str(f), "--out", str(root / "runs" / name)]) == 0
    return root / "runs"


class LiveServer:
    """``create_app`` served by uvicorn in a daemon thread on a free port of 127.0.0.1."""

    def __init__(self, root):
        from diffusio.app.ui import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(root)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the studio server did not start within 30 s")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def events(self, job: str, on_event=None) -> list[tuple[str, dict, float]]:
        """Read a job's server-sent events until the stream ends: (event, data, arrival time)."""
        out, name = [], None
        with urllib.request.urlopen(f"{self.url}/api/jobs/{job}/events", timeout=120) as r:
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    if name == "end":
                        return out
                    out.append((name, json.loads(line[6:]), time.perf_counter()))
                    if on_event is not None:
                        on_event(name, out[-1][1])
        return out


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = make_runs(tmp_path_factory.mktemp("studio"))
    srv = LiveServer(root)
    yield srv
    srv.stop()


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def url_pixels(url: str) -> np.ndarray:
    return png_pixels(base64.b64decode(url.split(",", 1)[1]))


def mask_png(shape, box) -> str:
    """A white-on-black mask PNG (white = repaint) as a data URL."""
    from PIL import Image

    m = np.zeros(shape, np.uint8)
    m[box] = 255
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_bad_requests_get_4xx_and_a_clear_message(live):
    ok = {"ckpt": "digits/model.safetensors", "solver": "euler", "steps": 2, "batch": 2}
    cases = [
        ({**ok, "solver": "rk9"}, 400, "unknown solver 'rk9'; valid:"),
        ({**ok, "steps": 0}, 400, "steps must be in [1, 1000]"),
        ({**ok, "steps": 100000}, 400, "steps must be in [1, 1000]"),
        ({**ok, "solver": "dpmpp_3m", "steps": 2}, 400, "steps must be in [3, 1000] for solver 'dpmpp_3m'"),
        ({**ok, "batch": 10**6}, 400, "batch must be in [1, 256]"),
        ({**ok, "scale": -1}, 400, "scale must be a finite number"),
        ({**ok, "grid": "1, 2, 3"}, 400, "strictly decreasing"),
        ({**ok, "grid": "squiggly"}, 400, "grid must be one of"),
        ({**ok, "label": 10}, 400, "label must be in [0, 9]"),
        ({**ok, "ckpt": "../../etc/passwd"}, 403, "outside the checkpoint folder"),
        ({**ok, "ckpt": "/etc/passwd"}, 403, "outside the checkpoint folder"),
        ({**ok, "ckpt": "nope/model.safetensors"}, 404, "no checkpoint"),
        ({**ok, "ckpt": "rings/model.safetensors", "scale": 3.0}, 400, "class-conditional models only"),
        ({**ok, "options": {"churn": 1.0}}, 400, "unknown option(s) churn for solver 'euler'"),
    ]
    for body, status, msg in cases:
        code, out = live.request("POST", "/api/sample", body)
        assert code == status and msg in out["error"], (body, code, out)
    code, out = live.request("POST", "/api/inpaint", {"ckpt": "digits/model.safetensors", "method": "pinv",
                                                      "mask": mask_png((10, 10), np.s_[2:5, 2:5])})  # fmt: skip
    assert code == 400 and "the mask is 10x10 pixels but the model's images are 8x8" in out["error"]
    code, out = live.request("POST", "/api/inpaint", {"ckpt": "digits/model.safetensors", "method": "ddnm",
                                                      "mask": mask_png((8, 8), np.s_[2:5, 2:5])})  # fmt: skip
    assert code == 400 and "unknown inpainting method 'ddnm'" in out["error"]
    code, out = live.request("GET", "/gallery/..%2F..%2Fdigits.yaml")
    assert code in (400, 404)
    code, out = live.request("GET", "/api/checkpoint?path=../digits.yaml")
    assert code == 403
    code, out = live.request("POST", "/api/jobs/nope/cancel")
    assert code == 404 and "no job" in out["error"]


def test_sample_equals_the_front_door_and_png_carries_its_parameters(live):
    """The studio's picture is the picture of ``diffusio.sample`` with the same seed (guided: the CFG wrapper)."""
    from diffusio.app.config import load_model
    from diffusio.app.ui.jobs import read_png_params, render
    from diffusio.guidance import ClassifierFreeGuidance
    from diffusio.samplers import sample

    body = {"ckpt": "digits/model.safetensors", "solver": "dpmpp_2m", "steps": 6, "batch": 4, "seed": 7,
            "scale": 2.0, "preview_every": 2, "grid": "karras"}  # fmt: skip
    code, out = live.request("POST", "/api/sample", body)
    assert code == 200, out
    ev = live.events(out["job"])
    kinds = [e for e, _, _ in ev]
    assert kinds.count("progress") == 4 and kinds[-1] == "done"  # steps 1, 3, 5 and the last
    assert [d["step"] for e, d, _ in ev if e == "progress"] == [1, 3, 5, 6]
    done = ev[-1][1]
    png = urllib.request.urlopen(live.url + done["image"]).read()
    params = read_png_params(png)
    assert params == {**done["params"]} and params["seed"] == 7 and params["solver"] == "dpmpp_2m"
    model, _ = load_model(live.app.state.studio.root / "digits" / "model.safetensors")
    x = sample(ClassifierFreeGuidance(model, 2.0), shape=(4, 1, 8, 8), solver="dpmpp_2m", steps=6, grid="karras",
               cond={"y": torch.arange(4) % 10}, generator=torch.Generator().manual_seed(7)).x  # fmt: skip
    assert np.array_equal(png_pixels(png), render(x)[..., 0])
    # re-run from the gallery image: the same pixels
    code, out = live.request("POST", "/api/rerun", {"name": done["name"]})
    assert code == 200, out
    again = live.events(out["job"])[-1][1]
    assert again["name"] != done["name"]
    assert np.array_equal(png_pixels(urllib.request.urlopen(live.url + again["image"]).read()), png_pixels(png))
    # ... and from an uploaded PNG
    code, out = live.request("POST", "/api/rerun", {"png": "data:image/png;base64," + base64.b64encode(png).decode()})
    assert code == 200
    third = live.events(out["job"])[-1][1]
    assert np.array_equal(png_pixels(urllib.request.urlopen(live.url + third["image"]).read()), png_pixels(png))
    names = [it["name"] for it in live.request("GET", "/api/gallery")[1]]
    assert {done["name"], again["name"], third["name"]} <= set(names)


def test_typed_grid_and_2d_model(live):
    from diffusio.app.config import load_model
    from diffusio.app.ui.jobs import render
    from diffusio.samplers import sample

    body = {"ckpt": "rings/model.safetensors", "solver": "euler", "grid": "1, 0.6, 0.3, 0.001", "batch": 200,
            "seed": 3, "preview_every": 10}  # fmt: skip
    code, out = live.request("POST", "/api/sample", body)
    assert code == 200, out
    assert out["params"]["steps"] == 3
    done = live.events(out["job"])[-1][1]
    assert done["nfe"] == 3
    model, _ = load_model(live.app.state.studio.root / "rings" / "model.safetensors")
    ts = torch.tensor([1, 0.6, 0.3, 0.001], dtype=torch.float64)
    x = sample(model, shape=(200, 2), solver="euler", steps=3, grid=ts, generator=torch.Generator().manual_seed(3)).x
    png = urllib.request.urlopen(live.url + done["image"]).read()
    assert np.array_equal(png_pixels(png), render(x)[..., 0])


def test_cancel_stops_within_one_step_and_server_stays_responsive(live):
    body = {"ckpt": "digits/model.safetensors", "solver": "euler", "steps": 1000, "batch": 64, "seed": 0}
    code, out = live.request("POST", "/api/sample", body)
    assert code == 200
    job = out["job"]
    answered = []

    def on_event(name, data):
        if name == "progress" and data["step"] == 3:
            t0 = time.perf_counter()
            assert live.request("GET", "/api/info")[0] == 200  # the server answers during a run
            answered.append(time.perf_counter() - t0)
            assert live.request("POST", f"/api/jobs/{job}/cancel")[0] == 200

    ev = live.events(job, on_event)
    last = ev[-1]
    assert last[0] == "cancelled", [e for e, _, _ in ev][-3:]
    assert last[1]["steps_after_cancel"] <= 1
    assert 3 <= last[1]["step"] < 1000
    assert last[1]["state"].startswith("data:image/png")
    assert answered


def test_inpainting_keeps_the_known_pixels(live):
    """Masked (painted) pixels are re-generated by the inverse solver; the others are the source's."""
    from diffusio.app.config import build_data

    box = np.s_[2:6, 1:5]
    for method in ("pinv", "dps"):
        body = {"ckpt": "digits/model.safetensors", "method": method, "steps": 4, "seed": 1,
                "mask": mask_png((8, 8), box), "source": {"data": 5}, "preview_every": 1}  # fmt: skip
        code, out = live.request("POST", "/api/inpaint", body)
        assert code == 200, out
        ev = live.events(out["job"])
        assert ev[-1][0] == "done", ev[-1]
        done = ev[-1][1]
        x = np.array(done["result_values"])[0]
        src = np.array(done["source_values"])[0]
        truth = build_data({**TINY_DIGITS["data"], "split": "test"}).x[5, 0].numpy()
        assert np.allclose(src, truth)
        keep = np.ones((8, 8), bool)
        keep[box] = False
        assert np.abs(x[keep] - src[keep]).max() < 1e-6
        if method == "pinv":
            assert np.allclose(x[~keep], 0)  # zero fill
        else:
            assert sum(e == "progress" for e, _, _ in ev) >= 4  # previews from the watched model calls
            assert np.abs(x[~keep] - src[~keep]).max() > 1e-3


def test_compare_grid_cells_equal_single_runs(live):
    body = {"ckpt": "digits/model.safetensors", "solver": "euler", "batch": 2, "seeds": [0, 4], "axis": "steps",
            "values": [2, 5]}  # fmt: skip
    code, out = live.request("POST", "/api/compare", body)
    assert code == 200, out
    done = live.events(out["job"])[-1][1]
    assert len(done["grid"]) == 2 and all(len(r) == 2 for r in done["grid"])
    code, out = live.request("POST", "/api/sample", {"ckpt": "digits/model.safetensors", "solver": "euler",
                                                     "batch": 2, "seed": 4, "steps": 5})  # fmt: skip
    single = live.events(out["job"])[-1][1]
    png = urllib.request.urlopen(live.url + single["image"]).read()
    assert np.array_equal(url_pixels(done["grid"][1][1]["image"]), png_pixels(png))
    assert not np.array_equal(url_pixels(done["grid"][0][1]["image"]), png_pixels(png))
    code, out = live.request("POST", "/api/compare", {**body, "seeds": [1], "axis": "solver", "steps": 3,
                                                      "values": ["euler", "heun", "dpmpp_2m"]})  # fmt: skip
    assert code == 200, out
    by_solver = live.events(out["job"])[-1][1]
    assert [c["nfe"] for c in by_solver["grid"][0]] == [3, 6, 3]
    code, out = live.request("POST", "/api/compare", {**body, "axis": "solver", "values": ["euler", "rk9"]})
    assert code == 400 and "unknown solver 'rk9'" in out["error"]
    code, out = live.request("POST", "/api/compare", {**body, "seeds": list(range(10)), "values": [1, 2, 3, 4]})
    assert code == 400 and "at most 36 cells" in out["error"]


def test_serve_command_is_registered():
    from diffusio.app.cli import build_parser

    args = build_parser().parse_args(["serve", "--root", "x"])
    assert args.host == "127.0.0.1" and args.root == "x" and args.port == 8765


def test_autotune_sample_equals_the_plan_and_rerun_reuses_it(live):
    """Solver ``auto``: the studio tunes (progress, then a status naming the choice), the picture equals
    ``diffusio.sample`` with the plan, the PNG stores the plan, and a re-run samples with it without re-tuning."""
    from diffusio.app.config import load_model
    from diffusio.app.ui.jobs import read_png_params, render
    from diffusio.samplers import sample

    body = {"ckpt": "rings/model.safetensors", "solver": "auto", "nfe": 6, "batch": 64, "seed": 3}
    code, out = live.request("POST", "/api/sample", body)
    assert code == 200, out
    ev = live.events(out["job"])
    assert ev[-1][0] == "done", ev[-1]
    done = ev[-1][1]
    plan = done["params"]["plan"]
    assert plan["solver"] and len(plan["grid"]) == plan["steps"] + 1 and done["nfe"] <= 6
    png = urllib.request.urlopen(live.url + done["image"]).read()
    assert read_png_params(png)["plan"] == plan
    model, _ = load_model(live.app.state.studio.root / "rings" / "model.safetensors")
    x = sample(model, shape=(64, 2), solver=plan["solver"], steps=plan["steps"], grid=torch.tensor(plan["grid"],
               dtype=torch.float64), generator=torch.Generator().manual_seed(3), **plan["options"]).x  # fmt: skip
    assert np.array_equal(png_pixels(png), render(x)[..., 0])
    code, out = live.request("POST", "/api/rerun", {"name": done["name"]})
    assert code == 200, out
    again = live.events(out["job"])
    assert not any(e == "status" and "searching" in d["message"] for e, d, _ in again)
    assert np.array_equal(png_pixels(urllib.request.urlopen(live.url + again[-1][1]["image"]).read()), png_pixels(png))


def test_search_equals_the_front_door_and_reruns(live):
    """A studio search is ``diffusio.scaling.search`` with the same seed (best first in the picture), its curve is the
    search history, and a re-run from the PNG gives the same pixels."""
    from diffusio.app.config import load_model
    from diffusio.app.ui.jobs import render
    from diffusio.scaling import SelfConsistency, search

    body = {"ckpt": "rings/model.safetensors", "strategy": "zero_order", "budget": 45, "steps": 4, "n": 6, "seed": 5}
    code, out = live.request("POST", "/api/search", body)
    assert code == 200, out
    assert out["params"]["verifier"] == "self" and out["params"]["solver"] == "heun"
    ev = live.events(out["job"])
    assert ev[-1][0] == "done", ev[-1]
    done = ev[-1][1]
    model, _ = load_model(live.app.state.studio.root / "rings" / "model.safetensors")
    res = search(model, SelfConsistency(model), shape=(6, 2), strategy="zero_order", budget=45, solver="heun",
                 steps=4, generator=torch.Generator().manual_seed(5))  # fmt: skip
    order = res.scores.argsort(descending=True)
    png = urllib.request.urlopen(live.url + done["image"]).read()
    assert np.array_equal(png_pixels(png), render(res.x[order])[..., 0])
    assert done["scores"] == res.scores[order].tolist()
    assert done["history"] == [list(h) for h in res.history] and done["nfe"] <= 45
    code, out = live.request("POST", "/api/rerun", {"name": done["name"]})
    assert code == 200, out
    again = live.events(out["job"])[-1][1]
    assert np.array_equal(png_pixels(urllib.request.urlopen(live.url + again["image"]).read()), png_pixels(png))


def test_search_with_the_digits_classifier_conditions_on_the_class(live):
    code, out = live.request("POST", "/api/search", {"ckpt": "digits/model.safetensors", "strategy": "best_of_n",
                                                     "budget": 12, "steps": 3, "n": 2, "label": 4})  # fmt: skip
    assert code == 200, out
    assert out["params"]["verifier"] == "classifier" and out["params"]["label"] == 4
    ev = live.events(out["job"])
    assert ev[-1][0] == "done", ev[-1]
    scores = ev[-1][1]["scores"]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)  # the class probability


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/api/search", {"ckpt": "rings/model.safetensors", "strategy": "beam"}, "unknown strategy"),
        ("/api/search", {"ckpt": "rings/model.safetensors", "verifier": "classifier"}, "digits metric classifier"),
        ("/api/search", {"ckpt": "rings/model.safetensors", "verifier": "clip"}, "unknown verifier"),
        ("/api/search", {"ckpt": "digits/model.safetensors", "verifier": "classifier"}, "set the class"),
        ("/api/search", {"ckpt": "rings/model.safetensors", "budget": 5, "steps": 10}, "below one sample's cost"),
        ("/api/search", {"ckpt": "rings/model.safetensors", "budget": 10**6}, "budget must be in"),
        ("/api/search", {"ckpt": "rings/model.safetensors", "solver": "dpm_adaptive"}, "cannot drive a search"),
        ("/api/search", {"ckpt": "rings/model.safetensors", "n": 0}, "n must be in"),
        ("/api/sample", {"ckpt": "rings/model.safetensors", "solver": "auto", "grid": "karras"}, "chooses the grid"),
        ("/api/sample", {"ckpt": "rings/model.safetensors", "solver": "auto", "nfe": 0}, "nfe must be in"),
        ("/api/sample", {"ckpt": "rings/model.safetensors", "solver": "auto", "plan": {"solver": "x"}}, "studio plan"),
        ("/api/sample", {"ckpt": "rings/model.safetensors", "grid": "saved:nothing-here"}, "saved:nothing-here"),
    ],
)
def test_search_and_autotune_refusals(live, path, body, needle):
    code, out = live.request("POST", path, body)
    assert code == 400 and needle in out["error"], out


def test_saved_searched_grid_is_offered_and_used(live):
    """A grid saved for this model (``diffusio tune --save``) is listed for its checkpoint only and samples as the
    same grid typed in."""
    from diffusio.app.config import load_model
    from diffusio.samplers.tuning import SearchedGrid, model_fingerprint, save_grid

    model, _ = load_model(live.app.state.studio.root / "rings" / "model.safetensors")
    ts = torch.tensor([0.999, 0.6, 0.2, 0.05, 0.001], dtype=torch.float64)
    save_grid(SearchedGrid(ts, "heun", 4, 0.0, model_fingerprint(model), method="test"), "studio-test-rings")
    listed = {name: live.request("GET", f"/api/checkpoint?path={name}/model.safetensors")[1]["searched_grids"]
              for name in ("rings", "digits")}  # fmt: skip
    assert "studio-test-rings" in listed["rings"] and "studio-test-rings" not in listed["digits"]
    pics = []
    for grid in ("saved:studio-test-rings", "0.999, 0.6, 0.2, 0.05, 0.001"):
        code, out = live.request("POST", "/api/sample", {"ckpt": "rings/model.safetensors", "solver": "heun",
                                                         "grid": grid, "batch": 32, "seed": 1})  # fmt: skip
        assert code == 200, out
        done = live.events(out["job"])[-1][1]
        pics.append(png_pixels(urllib.request.urlopen(live.url + done["image"]).read()))
    assert np.array_equal(*pics)
    other = {"ckpt": "digits/model.safetensors", "grid": "saved:studio-test-rings"}
    code, out = live.request("POST", "/api/sample", other)
    assert code == 400 and "another model" in out["error"], out
