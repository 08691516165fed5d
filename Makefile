# Set-up and entry points. `make demo` and `make test` each create .venv, install everything (Python and Debian
# packages) and then run the main job / the whole test suite. Both are idempotent and fast once set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pvtv2-installed
DEBS := dataset-fashion-mnist labelme-examples
# The test oracles: mmdet / mmseg as the released PVT v2 detectors and segmentors were trained with (tests/mmdet_oracle.py).
ORACLE := mmcv==1.3.18 mmdet==2.13.0 mmsegmentation==0.14.1
PYTEST_ARGS ?=

.PHONY: setup debs demo test bench clean

setup: $(STAMP) debs

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,oracle]'
	@# The oracles without their own requirements (they would replace torch, numpy and pycocotools; the extra
	@# 'oracle' holds the small ones), mmcv without its compiled operators; its setup.py needs pkg_resources.
	echo 'setuptools<70' > $(VENV)/oracle-build-constraints.txt
	MMCV_WITH_OPS=0 $(BIN)/pip install -q --no-deps --build-constraint $(VENV)/oracle-build-constraints.txt $(ORACLE)
	touch $@

# Debian's data packages: Fashion-MNIST for the main job, labelme-examples for detection/segmentation tests.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q $$missing >/dev/null; }; \
	fi

# A short libgomp spin (unless the caller chose a wait policy): 1-2% slower on an idle machine, 7-10x faster when
# another job holds a core (docs/classification.md, "Shared machines").
OMP_ENV := $(if $(OMP_WAIT_POLICY)$(GOMP_SPINCOUNT),,GOMP_SPINCOUNT=10000)

demo: setup
	$(OMP_ENV) $(BIN)/pvtv2 train

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/pvtv2 bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
