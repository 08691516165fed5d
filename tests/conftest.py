"""Shared test set-up: offline, deterministic, CPU, a thread per xdist worker."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

# libgomp's threads spin while they wait for each other; on a CI machine shared with other jobs that turns each of
# the thousands of small operators into a wait for a descheduled thread (measured: 60-90x slower steps). A short spin
# costs little when idle. Must be set before torch (and with it libgomp) is loaded.
if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("PVTV2_OFFLINE", "1")  # never download released weights in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# The scenes recipes start from the Fashion-MNIST-pretrained backbone, made on first use: in tests, from a tiny
# pretraining (64 training images, one epoch) so that a default run stays seconds long.
TINY_PRETRAINING = {"train_subset": 64, "val_subset": 32, "batch_size": 8, "epochs": 1, "threads": 1}


@pytest.fixture(autouse=True)
def _tiny_pretraining(monkeypatch: pytest.MonkeyPatch) -> None:
    from pvtv2.cli import pretrain

    monkeypatch.setattr(pretrain, "RECIPE_CHANGES", TINY_PRETRAINING)


@pytest.fixture
def one_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``): much faster than two
    on the shared, oversubscribed CPUs tests run on."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def missing(name: str, error: Exception, how: str = "run `make setup` (it installs every test dependency)") -> None:
    """A test dependency did not import: the test fails in one line saying how to install it (never a skip)."""
    pytest.fail(f"{name} is not importable ({type(error).__name__}: {error}); {how}", pytrace=False)


def require(module: str, name: str | None = None) -> ModuleType:
    """``import module`` for a test, or :func:`missing` (a one-line failure), never a skip."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(name or module.split(".")[0], e)
        raise  # unreachable: missing() fails


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
