PY ?= .venv/bin/python
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/infermesh
export REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install test lint fmt proto demo

install:
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy meshweb agents router

fmt:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

proto:
	$(PY) -m agents.proto.build

demo:
	.venv/bin/infermesh demo
