# Two commands do all the set-up: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORE := $(VENV)/.core
TORCH_CHECK = $(PY) -c "import torch; v = torch.__version__; assert v.startswith('$${TORCH_VERSION:-2.13.0}'), v"

.PHONY: demo test lint bench clean install chromium docs

# The library alone (what `make demo` needs): PyTorch first (a local CPU build here), then the project, so pip
# never pulls a CUDA build.
$(CORE): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==$${TORCH_VERSION:-2.13.0}"
	$(PY) -m pip install -q -e .
	$(TORCH_CHECK)
	touch $(CORE)

# Everything the tests, benchmarks and docs need.
$(STAMP): $(CORE)
	$(PY) -m pip install -q -e ".[dev,bench,compress,finetune,ui,browser,docs]"
	# Peers whose metadata pulls torchvision (unloadable beside a local CPU torch): no deps; their needs are in [bench].
	$(PY) -m pip install -q --no-deps "k-diffusion==0.1.1.post1" "deepinv==0.5.0"
	# muP for the DiT (nets/dit.py): mup's metadata pulls torchvision, pandas and seaborn, which its core never imports.
	$(PY) -m pip install -q --no-deps "mup==1.0.0"
	$(TORCH_CHECK)
	touch $(STAMP)

install: $(STAMP)

demo: $(CORE)
	$(VENV)/bin/diffusio demo --out runs/demo

# Debian's chromium for the studio's browser tests (tests/test_ui_browser.py; Playwright drives it, no download)
chromium:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; else \
		echo "chromium missing: run 'sudo apt-get install -y chromium' for the browser tests (they skip without it)"; fi; }

test: $(STAMP) chromium
	$(PY) -m pytest -n 2 --dist loadgroup

# the documentation site (mkdocs.yml, docs/): broken links, missing pages or references fail the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(VENV)/bin/diffusio bench overhead

clean:
	rm -rf runs site .pytest_cache .ruff_cache
