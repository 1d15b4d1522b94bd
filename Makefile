# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup demo test lint unit bench clean airflow airflow-down screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# Java 17 runs Spark; docker-compose and shellcheck check the files in compose/.
	@missing=""; \
	  command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	  command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	  command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then echo "installing$$missing"; \
	    apt-get update -qq && apt-get install -y -qq $$missing; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[local,train,airflow,registry,kubernetes,dev]'
	@# Class-data-sharing archives: local Spark masters, workers and drivers start in half the CPU.
	@# Not fatal: Spark starts without them, slower (tests/integration/test_spark_cds.py says so).
	-$(PY) -m ephemeral.backends.local
	rm -f $(VENV)/.installed-*
	touch $@

# Folder settings are absolute (each process would resolve a relative one on its own); a
# relative EPHEMERAL_HOME given to make is taken from the checkout.
EPH_HOME = EPHEMERAL_HOME="$$(realpath -m "$${EPHEMERAL_HOME:-$(CURDIR)/.home}")"

demo: setup
	$(EPH_HOME) $(PY) scripts/demo.py

lint: setup
	$(VENV)/bin/ruff check ephemeral tests bench scripts jobs dags
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -p no:cacheprovider

unit: setup
	$(VENV)/bin/pytest -m "not local" -q

bench: setup
	$(EPH_HOME) $(PY) bench/bench_local.py
	$(EPH_HOME) $(PY) bench/bench_jobs.py
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) bench/bench_pipeline.py
	$(PY) bench/baseline.py  # fails if any by-hand node of the benches is still running

# A local Airflow (api-server, scheduler, dag-processor, triggerer) for this checkout, in the
# foreground until Ctrl-C; EPHEMERAL_AIRFLOW_DB=postgres for a throwaway PostgreSQL.
STACK_ENV := AIRFLOW_HOME="$$(realpath -m "$${AIRFLOW_HOME:-$(CURDIR)/.home/stack}")" \
	$(EPH_HOME)
airflow: setup
	$(STACK_ENV) $(PY) -m ephemeral.devstack up

airflow-down:
	$(STACK_ENV) $(PY) -m ephemeral.devstack down

# The reference DAGs' graphs and the trigger form, from a real stack in headless Chromium.
screenshots: setup
	$(EPH_HOME) $(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) .home
