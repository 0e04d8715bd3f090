# Two commands do all set-up on a fresh machine:  make demo  (the main job)  and  make test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Point at the shared data when it sits beside the checkout (CI and our machines); else vaelab searches/downloads.
export VAELAB_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
STUDY ?= studies/quick

.PHONY: demo test test-fast bench bench-time venv clean

$(STAMP): pyproject.toml requirements/ci.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/ci.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# The main job: the quick comparative study (both datasets, latent sweep, beta sweep), then its report.
demo: $(STAMP)
	$(BIN)/vaelab study --preset quick --out $(STUDY) --jobs 2
	$(BIN)/vaelab study status $(STUDY)
	$(BIN)/vaelab score $(STUDY)
	$(BIN)/vaelab report $(STUDY)
	@echo "open $(STUDY)/report/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=25

# The fast lane while you work: everything but the tests marked slow (whole studies, reports, the notebook,
# multi-process training, kills). `make test` (what CI runs) still runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow" --durations=10

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

# Time to a test negative ELBO of 247 nats on Fashion-MNIST: vaelab's recipe vs a minimal loop (minutes per rep).
bench-time: $(STAMP)
	$(BIN)/python bench/time_to_elbo.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
