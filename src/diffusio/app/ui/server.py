"""The studio's HTTP layer (FastAPI): JSON endpoints over :class:`diffusio.app.ui.jobs.Studio`, server-sent events
for progress, the static page. Every refusal is a JSON ``{"error": message}`` with a 4xx status."""

import asyncio
import json
from importlib import resources
from pathlib import Path

from diffusio.app.ui.jobs import (
    INPAINT_METHODS,
    MAX_AUTOTUNE_NFE,
    MAX_BATCH,
    MAX_SEARCH_BUDGET,
    MAX_SEARCH_OUTPUTS,
    MAX_STEPS,
    SEARCH_VERIFIERS,
    BadRequest,
    Studio,
    read_png_params,
)

__all__ = ["create_app"]


def _static_dir() -> Path:
    return Path(str(resources.files("diffusio.app.ui") / "static"))


def create_app(root: str | Path = "runs", gallery: str | Path | None = None):
    """The FastAPI application serving checkpoints under ``root``; PNGs go to ``gallery`` (default ROOT/studio)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles

    from diffusio.inverse import METHODS
    from diffusio.samplers import SOLVERS
    from diffusio.scaling import STRATEGIES

    studio = Studio(root, gallery)
    app = FastAPI(title="diffusio studio", docs_url=None, redoc_url=None)
    app.state.studio = studio
    static = _static_dir()

    @app.exception_handler(BadRequest)
    async def _bad(_request, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def body(request: Request) -> dict:
        try:
            p = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body must be JSON") from None
        if not isinstance(p, dict):
            raise BadRequest("the request body must be a JSON object")
        return p

    @app.get("/")
    async def index():
        return FileResponse(static / "index.html")

    @app.get("/api/info")
    async def info():
        solvers = [
            {"name": s.name, "min_steps": s.min_steps, "default_grid": s.default_grid, "summary": s.summary,
             "stochastic": s.stochastic, "options": [o for o in s.options() if o != "generator"]}
            for s in SOLVERS.values() if not s.needs
        ]  # fmt: skip
        methods = [{"name": m, "summary": METHODS[m].summary} for m in INPAINT_METHODS]
        return {
            "root": str(studio.root),
            "checkpoints": await asyncio.to_thread(studio.checkpoints),
            "solvers": solvers,
            "grids": ["uniform", "logsnr", "karras", "quadratic"],
            "methods": methods,
            "max_steps": MAX_STEPS,
            "max_batch": MAX_BATCH,
            "max_autotune_nfe": MAX_AUTOTUNE_NFE,
            "strategies": list(STRATEGIES),
            "verifiers": list(SEARCH_VERIFIERS),
            "max_search_budget": MAX_SEARCH_BUDGET,
            "max_search_outputs": MAX_SEARCH_OUTPUTS,
        }

    @app.get("/api/checkpoint")
    async def checkpoint(path: str):
        return await asyncio.to_thread(studio.describe, path)

    @app.get("/api/source")
    async def source(ckpt: str, index: int = 0):
        """A data set image of the checkpoint's data (the inpainting canvas's background)."""
        from diffusio.app.ui.jobs import data_url, png_bytes, render

        x = await asyncio.to_thread(studio.source_image, ckpt, {"source": {"data": index}})
        return {"image": data_url(png_bytes(render(x))), "shape": list(x.shape[1:])}

    @app.post("/api/sample")
    async def sample(request: Request):
        p = await body(request)
        job = await asyncio.to_thread(studio.run_sample, p)
        return {"job": job.id, "params": job.params}

    @app.post("/api/search")
    async def search(request: Request):
        p = await body(request)
        job = await asyncio.to_thread(studio.run_search, p)
        return {"job": job.id, "params": job.params}

    @app.post("/api/compare")
    async def compare(request: Request):
        p = await body(request)
        job = await asyncio.to_thread(studio.run_compare, p)
        return {"job": job.id}

    @app.post("/api/inpaint")
    async def inpaint(request: Request):
        p = await body(request)
        job = await asyncio.to_thread(studio.run_inpaint, p)
        return {"job": job.id, "params": {k: v for k, v in job.params.items() if k != "mask"}}

    @app.post("/api/rerun")
    async def rerun(request: Request):
        """Re-run from a gallery name ``{"name": ...}`` or an uploaded studio PNG ``{"png": data URL}``."""
        import base64

        p = await body(request)
        if "name" in p:
            data = studio.gallery_file(p["name"]).read_bytes()
        elif isinstance(p.get("png"), str):
            try:
                data = base64.b64decode(p["png"].split(",", 1)[-1])
            except ValueError:
                raise BadRequest("png must be a base64 data URL") from None
        else:
            raise BadRequest('pass {"name": gallery file} or {"png": data URL of a studio PNG}')
        params = read_png_params(data)
        job = await asyncio.to_thread(studio.rerun, params)
        return {"job": job.id, "params": {k: v for k, v in params.items() if k != "mask"}}

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        job = studio.job(job_id)
        job.cancel()
        return {"job": job.id, "cancelling": not job.done}

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        job = studio.job(job_id)

        async def stream():
            # woken by the worker thread on every event (no polling while a run computes)
            wake = asyncio.Event()
            job.listen(asyncio.get_running_loop(), wake.set)
            sent = 0
            while True:
                wake.clear()
                with job.lock:
                    new = job.events[sent:]
                for ev in new:
                    yield f"event: {ev['event']}\ndata: {json.dumps(ev['data'])}\n\n"
                sent += len(new)
                if job.done and sent == len(job.events):
                    yield "event: end\ndata: {}\n\n"
                    return
                try:
                    await asyncio.wait_for(wake.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/gallery")
    async def gallery():
        return await asyncio.to_thread(studio.gallery_items)

    @app.get("/gallery/{name}")
    async def gallery_file(name: str):
        return FileResponse(studio.gallery_file(name), media_type="image/png")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app


def serve(root: str | Path = "runs", host: str = "127.0.0.1", port: int = 8765, gallery: str | Path | None = None):
    """Start the studio with uvicorn (blocks until Ctrl-C)."""
    import uvicorn

    app = create_app(root, gallery)
    print(f"diffusio studio on http://{host}:{port}/  (checkpoints under {Path(root).resolve()})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
