# Two entry points for a fresh machine: `make demo` builds the example recipe, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench browser tpu-mlir ajv
TOOLCHAIN ?=
# what `make demo` installs: the reference toolchain (TVM's extra includes it), not the test tools
DEMO_EXTRAS := $(if $(filter tvm,$(TOOLCHAIN)),tvm,reference)
DEMO_STAMP := $(VENV)/.installed-$(DEMO_EXTRAS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[reference,tvm,test]'
	touch $(STAMP) $(VENV)/.installed-reference $(VENV)/.installed-tvm

$(DEMO_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(DEMO_EXTRAS)]'
	touch $(DEMO_STAMP)

venv: $(STAMP)

# `make demo TOOLCHAIN=tpu-mlir` builds real BM1684X and BM1684 bmodels (installing tpu-mlir first):
# resnet.yaml's ResNet-18 once per chip (recipes/resnet_chips.yaml).
DEMO_RECIPE := $(if $(filter tpu-mlir,$(TOOLCHAIN)),recipes/resnet_chips.yaml,recipes/resnet.yaml)
demo: $(DEMO_STAMP) $(if $(filter tpu-mlir,$(TOOLCHAIN)),tpu-mlir)
	$(BIN)/bmbuild run $(DEMO_RECIPE) $(if $(TOOLCHAIN),--toolchain $(TOOLCHAIN))

test: $(STAMP) browser tpu-mlir ajv
	$(BIN)/python -m pytest -q -n 2

# tpu-mlir's Python 3.10 environment, in the user cache dir (outside the clone, reused by later runs;
# a no-op when present). Without Python 3.10 the install says so and the tpu-mlir tests are skipped.
tpu-mlir: $(DEMO_STAMP)
	@$(BIN)/bmbuild toolchains install tpu-mlir || echo "tpu-mlir could not be installed (see above)"

# The HTML report test renders the page in a real headless Chromium (Debian's package).
# Installed when missing and apt is usable (CI runs as root); otherwise that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed: the browser test will be skipped"

# ajv (strict JSON-schema validation of schemas/) for tests/test_schema.py, when npm is there; else that test skips.
ajv: $(STAMP)
	@[ -d $(VENV)/node_modules/ajv ] || ! command -v npm >/dev/null 2>&1 || \
		npm install --prefix $(VENV) --no-save --no-audit --no-fund --silent ajv@8 || \
		echo "ajv could not be installed: the ajv schema test will be skipped"

bench: $(STAMP)
	$(BIN)/python benchmarks/plan_scale.py
	$(BIN)/python benchmarks/calibration.py
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf build .bmbuild
