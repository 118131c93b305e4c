# Two entry points for a fresh machine: `make quickstart` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv quickstart test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[test]" $(TORCH_PINS)
	touch $@

venv: $(VENV)/.installed

quickstart: venv
	$(VENV)/bin/openeva quickstart --out quickstart_out

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

clean:
	rm -rf $(VENV) quickstart_out
