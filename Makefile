# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# pytest-xdist workers for `make test` (the suite is sized for 2 cores; `make test TEST_WORKERS=8` on more)
TEST_WORKERS ?= 2
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/octseg: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev,formats]'
	touch $(BIN)/octseg

install: $(BIN)/octseg

demo: install
	$(BIN)/octseg demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

clean:
	rm -rf $(VENV) runs .pytest_cache
