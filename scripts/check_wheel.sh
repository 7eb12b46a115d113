#!/usr/bin/env bash
# The wheel works on its own: build it, install it (with the [ui] extra) into a fresh virtual environment that
# has PyTorch installed first, then, from an empty directory (nothing of the checkout in reach), run
# `diffusio demo --fast` and `diffusio serve` and fetch the studio's page, its static files and a checkpoint list.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
SERVER=
cleanup() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT
start=$(date +%s)

echo "check_wheel: fresh venv in $WORK"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VPY" -m pip install -q build
"$VPY" -m build --wheel --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/diffusio-*.whl)
echo "check_wheel: built $(basename "$WHEEL")"
"$VPY" -m pip install -q "${WHEEL}[ui]"
"$VPY" -c "import torch; v = torch.__version__; assert v.startswith('${TORCH_VERSION:-2.13.0}'), v"

mkdir "$WORK/empty" && cd "$WORK/empty"
export PYTHONPATH= OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$VPY" - <<'PY'
import importlib.metadata as md, pathlib, diffusio
f = pathlib.Path(diffusio.__file__).resolve()
assert "site-packages" in str(f), f"diffusio imported from {f}, not from the installed wheel"
assert md.version("diffusio") == diffusio.__version__, (md.version("diffusio"), diffusio.__version__)
print("check_wheel: diffusio", diffusio.__version__, "from", f.parent)
PY
"$WORK/venv/bin/diffusio" --version
"$WORK/venv/bin/diffusio" demo --fast --out runs/demo >"$WORK/demo.log" 2>&1 || { tail -30 "$WORK/demo.log"; exit 1; }
test -s runs/demo/report.md
echo "check_wheel: demo --fast wrote runs/demo/report.md"

PORT=$("$VPY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$WORK/venv/bin/diffusio" serve --root runs --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
"$VPY" - "$PORT" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(300):
    try:
        page = urllib.request.urlopen(url + "/", timeout=5).read().decode()
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("check_wheel: diffusio serve did not answer within 60 s")
assert "diffusio studio" in page
for f in ("app.js", "style.css"):
    assert len(urllib.request.urlopen(f"{url}/static/{f}").read()) > 100, f
info = json.loads(urllib.request.urlopen(url + "/api/info").read())
assert info["checkpoints"], info
print("check_wheel: serve answers; checkpoints", info["checkpoints"])
PY
echo "check_wheel: ok in $(( $(date +%s) - start )) s"
