# Two commands on a fresh machine with Python 3.11 + pip: `make run` and `make test`.
# Both create .venv and install the core (with its test, plot and sweep extras) and every plugin
# (editable) in ONE pip command, so each plugin's `vpmu` dependency resolves to the local core
# (pitfall P10).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# plugins/ (shipped) and examples/ (third-party style, e.g. mode_xen_lazy), one distribution each
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(sort $(wildcard plugins/*/pyproject.toml)) $(sort $(wildcard examples/*/pyproject.toml)))
STAMP  := $(VENV)/.installed

.PHONY: install run test lint docs bench goldens clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) $(wildcard examples/*/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,plot,sweep]' $(foreach p,$(PLUGIN_DIRS),-e '$(p)[test]')
	touch $(STAMP)

install: $(STAMP)

## run: the main job, `vpmu run` on the built-in default scenario
run: install
	$(BIN)/vpmu run

## test: lint, then every suite in its own pytest process (core, then each plugin)
test: install lint
	@status=0; \
	echo "== core"; $(BIN)/python -m pytest -q tests || status=1; \
	for p in $(PLUGIN_DIRS); do \
		echo "== $$p"; (cd $$p && ../../$(BIN)/python -m pytest -q) || status=1; \
	done; \
	exit $$status

## lint: ruff, then mypy ([tool.mypy] in pyproject.toml: the core, every plugin package, the examples)
lint: install
	$(BIN)/ruff check vpmu_core tests benchmarks tools plugins examples
	$(BIN)/ruff format --check vpmu_core tests benchmarks tools plugins examples
	$(BIN)/mypy

## docs: regenerate docs/plugin-hooks.md from vpmu_core/hookspecs.py (tests/test_hook_docs.py checks it)
docs: install
	$(BIN)/python tools/gen_hook_docs.py

## goldens: rewrite the golden-report corpus (tests/golden/) after a reviewed behaviour change
goldens: install
	$(BIN)/python -m tests.golden_corpus

bench: install
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_goals.py

clean:
	rm -rf $(VENV) *.egg-info plugins/*/*.egg-info examples/*/*.egg-info
