# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.analytics/dagster_home

.PHONY: demo test dev lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The instance configuration (queued runs, one per timezone, run monitoring) in DAGSTER_HOME,
# refreshed when the repo's dagster.yaml is newer; a replaced copy is kept as dagster.yaml.bak.
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	if [ -f $@ ]; then cp $@ $@.bak; fi
	cp dagster.yaml $@

## demo: generate the demo app database and materialize everything on embedded defaults
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/analytics-pipeline demo

## test: the whole test suite (SQLite always; PostgreSQL on 127.0.0.1:5432 when it is up)
test: $(STAMP)
	$(BIN)/ruff check analytics_pipeline analytics_pipeline_tests bench
	$(BIN)/pytest -q

## dev: the Dagster UI on the same instance as `make demo`
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

## bench: extraction + rollup + write vs PostgreSQL GROUP BY vs DuckDB (EVENTS=2000000)
bench: $(STAMP)
	$(BIN)/python bench/bench_rollup.py --events $${EVENTS:-2000000}

lint: $(STAMP)
	$(BIN)/ruff check analytics_pipeline analytics_pipeline_tests bench

clean:
	rm -rf .analytics
