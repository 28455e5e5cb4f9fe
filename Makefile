# Two entry points for a fresh machine: `make demo` and `make test` (see README).
# While developing: `make check` (unit and property tests) and `make mutate [MODULE=src/ctreduce/...py]`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORE := $(VENV)/.installed-core
MUTATE_STAMP := $(VENV)/.installed-mutate
DEMO := demo-out

.PHONY: install demo test check mutate bench lint clean

# Two installs in the one .venv: the core (what `make demo` needs: no torch, about 0.9 GB) and everything
# (`make test`: the train, ray, deepnet and dev extras, about 7 GB). Each reinstalls only when the package
# metadata changed, so a second `make` is instant; everything includes the core.
$(CORE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(CORE)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,dev,ray,deepnet]'
	touch $(CORE) $(STAMP)

install: $(STAMP)

demo: $(CORE)
	$(BIN)/ctreduce samples
	$(BIN)/ctreduce reduce "$$($(BIN)/python -c 'from ctreduce.sample_data.real_ct import sample_dir; print(sample_dir())')" \
		--out $(DEMO)/hash6 --method hash --threshold 6 --workers 2 --csv --quiet
	$(BIN)/ctreduce export $(DEMO)/hash6 --format png --out $(DEMO)/png --overwrite --quiet
	$(BIN)/ctreduce export $(DEMO)/hash6 --format npy --size 224 --out $(DEMO)/npy --overwrite --quiet
	$(BIN)/ctreduce report $(DEMO)/hash6 -o $(DEMO)/report.html
	@echo
	@echo "Outputs:"
	@echo "  manifest (one row per slice): $(DEMO)/hash6/manifest.parquet (and manifest.csv)"
	@echo "  summary (counts, timings):    $(DEMO)/hash6/summary.json"
	@echo "  kept slices as PNG:           $(DEMO)/png/images/"
	@echo "  kept slices as uint8 array:   $(DEMO)/npy/shards/*.npy + versions/*.parquet"
	@echo "  visual report (open it):      $(DEMO)/report.html"

# Everything (CI: .ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The unit and property tests of every module: the tests marked slow (end to end, integration) left out.
check: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

$(MUTATE_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[mutate]'
	touch $(MUTATE_STAMP)

# Mutation testing driven by `make check`'s tests: MODULE=path runs that module, none runs every module
# changed since its recorded score (.mutation/scores.json); see docs/testing.md.
mutate: $(MUTATE_STAMP)
	$(BIN)/python tools/mutate.py $(MODULE)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_reduce.py
	$(BIN)/python benchmarks/bench_profile.py
	$(BIN)/python benchmarks/bench_methods.py
	$(BIN)/python benchmarks/bench_pretrain.py
	$(BIN)/python benchmarks/bench_integrity.py
	$(BIN)/python benchmarks/bench_verify.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_curate.py --imagededup-n 10000
	$(BIN)/python benchmarks/bench_finetune.py
	$(BIN)/python benchmarks/bench_threads.py
	$(BIN)/python benchmarks/bench_ray_cluster.py
	$(BIN)/python benchmarks/bench_read_memory.py
	$(BIN)/python benchmarks/bench_fuzz_series.py
	$(BIN)/python benchmarks/bench_messages.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools

clean:
	rm -rf $(DEMO) .pytest_cache .mutation/work
