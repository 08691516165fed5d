# Set-up and entry points. `make demo` and `make test` each create .venv, install everything (Python and Debian
# packages) and then run the main job / the whole test suite. Both are idempotent and fast once set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pvtv2-installed
# Debian's data packages (Fashion-MNIST for the main job, labelme-examples for detection/segmentation tests) and the
# headless browser the page's test drives (pvtv2 serve).
DEBS := dataset-fashion-mnist labelme-examples chromium chromium-driver
# The test oracles: mmdet / mmseg as the released PVT v2 detectors and segmentors were trained with (tests/mmdet_oracle.py).
ORACLE := mmcv==1.3.18 mmdet==2.13.0 mmsegmentation==0.14.1
PYTEST_ARGS ?=

# The lowest torch / torchvision pyproject.toml declares, for `make test-min` (scripts/lowest_requirements.py).
VENV_MIN := .venv-min
MIN_STAMP := $(VENV_MIN)/.pvtv2-installed
# What the lower bound must pass: models, weights, classification, detection and segmentation (no oracle, no peers).
MIN_TESTS := tests/test_models.py tests/test_weights.py tests/test_data.py tests/test_train.py \
	tests/test_detection_models.py tests/test_detection_data.py tests/test_detection_train.py \
	tests/test_mstrain_recipe.py tests/test_segmentation_model.py tests/test_segmentation_train.py tests/test_engine.py \
	tests/test_export.py::test_too_old_torch_for_the_exporter_is_one_line

.PHONY: setup debs demo test test-min bench clean

setup: $(STAMP) debs

# The exact versions (constraints.txt) for the reproducible set-up; the package itself declares ranges.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,oracle]'
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

# The lowest declared torch / torchvision in a second environment: torch first, then `pip install .` (which must keep
# it: checked), then the tests of MIN_TESTS.
$(MIN_STAMP): pyproject.toml Makefile scripts/lowest_requirements.py
	test -x $(VENV_MIN)/bin/python || $(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/pip install -q --upgrade pip
	$(VENV_MIN)/bin/pip install -q $$($(PYTHON) scripts/lowest_requirements.py torch torchvision)
	$(VENV_MIN)/bin/pip install -q '.[test,deploy,openvino]'
	$(VENV_MIN)/bin/python scripts/lowest_requirements.py --check torch torchvision
	touch $@

test-min: $(MIN_STAMP) debs
	$(VENV_MIN)/bin/pip install -q --no-deps --force-reinstall .  # this checkout's code, not the stamp's
	$(VENV_MIN)/bin/python -m pytest -q $(PYTEST_ARGS) $(MIN_TESTS)

bench: setup
	$(BIN)/pvtv2 bench

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache build dist *.egg-info src/*.egg-info
