"""Kernels chosen by measurement (pvtv2.kernel_choice): the fastest candidate runs, the choice is kept per machine,
and every candidate computes what the plain path computes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import pvtv2
from pvtv2 import kernel_choice, runtime
from pvtv2.layers import fused

from conftest import max_abs

pytestmark = pytest.mark.usefixtures("one_thread")


class Spy(nn.Module):
    """Records the kernel setting it was called under."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.seen: list[tuple[bool, int | None]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((fused.enabled(), fused._CHUNK_BYTES))
        return x


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PVTV2_CACHE", str(tmp_path))
    return tmp_path / "kernels"


def _fake_times(fastest: str):
    return lambda module, x, rounds=kernel_choice.ROUNDS: {n: 1.0 if n == fastest else 2.0
                                                           for n in kernel_choice.CANDIDATES}


@pytest.mark.parametrize("fastest", sorted(kernel_choice.CANDIDATES))
def test_the_fastest_candidate_runs_and_is_kept_per_machine(fastest, cache, monkeypatch):
    if not fused.enabled():
        pytest.fail("oneDNN's fused kernels are not available in this torch: kernel choice cannot be tested")
    monkeypatch.setattr(kernel_choice, "measure", _fake_times(fastest))
    spy = Spy()
    run = kernel_choice.MeasuredKernels(spy)
    with torch.inference_mode():
        run(torch.zeros(2, 3))
        run(torch.zeros(2, 3))
    want = kernel_choice.CANDIDATES[fastest]
    assert spy.seen[-1][0] == want.fused
    if want.chunk_bytes is not None:
        assert spy.seen[-1][1] == want.chunk_bytes
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["machine"]["threads"] == torch.get_num_threads() and data["machine"]["torch"] == torch.__version__
    (record,) = data["choices"].values()
    assert record["choice"] == fastest

    # a new process (a new runner) on the same machine reads the choice instead of measuring again
    def no_measuring(*a, **k):
        raise AssertionError("measured again although the machine's choice was on disk")

    monkeypatch.setattr(kernel_choice, "measure", no_measuring)
    spy2 = Spy()
    with torch.inference_mode():
        kernel_choice.MeasuredKernels(spy2)(torch.zeros(2, 3))
    assert spy2.seen[-1][0] == want.fused
    # another shape is measured on its own
    monkeypatch.setattr(kernel_choice, "measure", _fake_times("plain"))
    with torch.inference_mode():
        kernel_choice.MeasuredKernels(spy2)(torch.zeros(4, 3))
    assert spy2.seen[-1][0] is False
    assert len(json.loads(files[0].read_text())["choices"]) == 2


def test_plain_when_the_user_turned_fusion_off_and_a_bad_cache_file_is_measured_over(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(kernel_choice, "measure", lambda m, x, rounds=3: calls.append(1) or {"fused": 1.0,
                                                                                           "fused-whole-batch": 2.0,
                                                                                           "plain": 3.0})
    spy = Spy()
    with torch.inference_mode(), fused.fused_kernels(False):
        kernel_choice.MeasuredKernels(spy)(torch.zeros(2, 3))
    assert spy.seen == [(False, fused._CHUNK_BYTES)] and not calls  # not measured, not changed
    cache.mkdir(parents=True)
    kernel_choice._cache_file().write_text("{not json")
    with torch.inference_mode():
        kernel_choice.MeasuredKernels(spy)(torch.zeros(2, 3))
    assert calls == [1] and spy.seen[-1][0] is True
    assert json.loads(kernel_choice._cache_file().read_text())["choices"]


def test_every_candidate_computes_the_plain_result(cache):
    model = pvtv2.create_model("pvt_v2_b0", num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode(), fused.fused_kernels(False):
        plain = model(x)
    ms = kernel_choice.measure(model, x, rounds=1)
    assert set(ms) == set(kernel_choice.CANDIDATES) and all(v > 0 for v in ms.values())
    for name, setting in kernel_choice.CANDIDATES.items():
        with torch.inference_mode(), setting.active():
            assert max_abs(model(x), plain) < 1e-4, name
    run = runtime.prepare(model, "torch", example_input=x)  # measures on the example now
    assert max_abs(run(x), plain) < 1e-4
    assert isinstance(run._fn, kernel_choice.MeasuredKernels) and len(run._fn.choices) == 1


def test_plain_unless_a_fused_candidate_is_clearly_faster():
    near = {"fused": 97.0, "fused-whole-batch": 98.0, "plain": 100.0}  # within three rounds' noise: the plain path
    assert kernel_choice.pick(near) == "plain"
    assert kernel_choice.pick({**near, "fused-whole-batch": 90.0}) == "fused-whole-batch"
    assert kernel_choice.pick({**near, "plain": 80.0}) == "plain"
