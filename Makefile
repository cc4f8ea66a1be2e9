# Two entry points for a fresh machine: `make demo` builds the example recipe, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench browser

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[reference,tvm,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/bmbuild run recipes/resnet.yaml

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2

# The HTML report test renders the page in a real headless Chromium (Debian's package).
# Installed when missing and apt is usable (CI runs as root); otherwise that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed: the browser test will be skipped"

bench: $(STAMP)
	$(BIN)/python benchmarks/plan_scale.py
	$(BIN)/python benchmarks/calibration.py
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf build .bmbuild
