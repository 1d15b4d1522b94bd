# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup demo test lint unit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "installing Java 17 for Spark"; \
	  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless; }
	@command -v docker-compose >/dev/null || { echo "installing docker-compose to check compose/"; \
	  apt-get update -qq && apt-get install -y -qq docker-compose; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[local,train,airflow,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	EPHEMERAL_HOME=$${EPHEMERAL_HOME:-$(CURDIR)/.home} $(PY) scripts/demo.py

lint: setup
	$(VENV)/bin/ruff check ephemeral tests bench scripts jobs dags
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -p no:cacheprovider

unit: setup
	$(VENV)/bin/pytest -m "not local" -q

bench: setup
	EPHEMERAL_HOME=$${EPHEMERAL_HOME:-$(CURDIR)/.home} $(PY) bench/bench_local.py
	EPHEMERAL_HOME=$${EPHEMERAL_HOME:-$(CURDIR)/.home} $(PY) bench/bench_jobs.py
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) bench/bench_pipeline.py

clean:
	rm -rf $(VENV) .home
