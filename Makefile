# Two commands matter: `make dev` runs the whole stack, `make test` proves it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(wildcard protos/*/v1/*.proto)

.PHONY: dev test protos lint typecheck pytest clean

dev: $(STAMP) protos
	$(BIN)/paylayer dev

test: $(STAMP) protos lint typecheck pytest

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generated code is never committed: it is rebuilt from the .proto files with the pinned tools
# (a wheel makes its own: setup.py's build hook).
protos: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I . \
		--python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. \
		$(PROTO_FILES)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP) protos
	$(BIN)/mypy

pytest: $(STAMP) protos
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .paylayer build
	find protos -name '*_pb2*' -delete
