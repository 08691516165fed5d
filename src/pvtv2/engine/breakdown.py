"""Where a training step's time goes: loading the batch, each part's forward and backward, the rest, the optimizer.

    >>> cfg = get_recipe("scenes").replace(arch="mask_rcnn", backbone_weights=None)  # the weights do not change the time
    >>> rows = step_breakdown(DetectionTask(cfg), steps=6)

The steps are the trainer's (the task's data loader, its losses under the run's autocast, backward, AdamW as the
trainer builds it); only the timing is added. A task names its parts with ``Task.parts(model)`` (the backbone, the
neck, the heads: modules that do not contain one another). Each part's forward time is measured by module hooks in
the step itself. Its backward time cannot be read off the step (autograd interleaves the parts' backward nodes), so
after each step every call of the part is run again alone on the inputs and RNG state it had (detached), and its
backward from the gradients its outputs received in the step is timed. What the parts do not cover (anchors,
matching, losses, the transform) is the step's forward and backward minus the parts'. Data loading is timed in the
loader's own process (``workers=0``): the CPU time a batch costs, which worker processes move elsewhere but do not
remove.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .amp import Precision
from .distributed import DistEnv
from .sampling import StepSampler
from .trainer import peak_lr, run_optimizer


@dataclass
class _Part:
    """One part: its modules, the forward seconds of the current step, and what replaying its backward needs."""

    modules: list[nn.Module]
    forward: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)  # per call: inputs, RNG state, outputs, their gradients
    handles: list[Any] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    replaying: bool = False


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors of a nested structure of tensors, dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _detached(obj: Any) -> Any:
    """``obj`` with every floating-point tensor detached (requiring grad again where it did)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().requires_grad_(obj.requires_grad) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return type(obj)((k, _detached(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached(v) for v in obj)
    return obj


def _attach(part: _Part) -> None:
    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if part.replaying:
            return
        part.calls.append({"module": module, "args": _detached(args), "kwargs": _detached(kwargs),
                           "rng": torch.get_rng_state(), "grads": {}})
        part.started.append(time.perf_counter())

    def post(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if part.replaying:
            return
        part.forward += time.perf_counter() - part.started.pop()
        call = part.calls[-1]
        for i, t in enumerate(t for t in _tensors(out) if t.requires_grad):
            t.register_hook(lambda g, i=i, grads=call["grads"]: grads.__setitem__(i, g.detach()))

    for m in part.modules:
        part.handles += [m.register_forward_pre_hook(pre, with_kwargs=True),
                         m.register_forward_hook(post, with_kwargs=True)]


def _replay_backward(part: _Part, precision: Precision) -> float:
    """Seconds of the part's backward: each call of the step run again alone on its recorded inputs (and RNG
    state), then its backward from the gradients its outputs received in the step."""
    part.replaying = True
    try:
        return sum(_replay_call(call, precision) for call in part.calls if call["grads"])
    finally:
        part.replaying = False


def _replay_call(call: dict[str, Any], precision: Precision) -> float:
    module, rng = call["module"], torch.get_rng_state()
    buffers = {k: b.clone() for k, b in module.named_buffers()}  # e.g. BatchNorm statistics: the replay keeps them
    torch.set_rng_state(call["rng"])
    with precision.autocast():
        out = module(*call["args"], **call["kwargs"])
    torch.set_rng_state(rng)
    outputs = [t for t in _tensors(out) if t.requires_grad]
    pairs = [(outputs[i], g) for i, g in call["grads"].items() if i < len(outputs)]
    t0 = time.perf_counter()
    torch.autograd.backward([o for o, _ in pairs], [g.to(o.dtype) for o, g in pairs])
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for k, b in module.named_buffers():
            b.copy_(buffers[k])
    return seconds


def step_breakdown(task: Any, *, steps: int = 6, warmup: int = 2, device: str = "cpu") -> dict[str, Any]:
    """Mean milliseconds per training step of ``task`` (a :class:`~pvtv2.engine.task.Task` with its config), over
    ``steps`` steps after ``warmup`` untimed ones: ``{"rows": [(part, forward ms, backward ms), ...], "data_ms",
    "optimizer_ms", "step_ms", "images", "threads", "precision"}``; ``rows`` ends with the rest of the forward and
    backward."""
    cfg = task.cfg
    env = DistEnv(device=torch.device(device))
    task.progress = False
    n = task.setup(env)
    model = task.build_model(env).to(env.device).train()
    optimizer = run_optimizer(task, model, peak_lr(task))
    precision = Precision.resolve(cfg.precision, env.device)
    sampler = StepSampler(n=n, batch_size=cfg.batch_size, rank=0, world_size=1, seed=cfg.seed,
                          repeats=task.sampler_repeats())
    batches = iter(task.train_loader(sampler, env))
    parts = {name: _Part(mods if isinstance(mods, list) else [mods]) for name, mods in task.parts(model).items()}
    for part in parts.values():
        _attach(part)
    totals: dict[str, float] = {}

    def add(key: str, seconds: float) -> None:
        totals[key] = totals.get(key, 0.0) + seconds

    try:
        for i in range(warmup + steps):
            for part in parts.values():
                part.forward, part.calls = 0.0, []
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            with precision.autocast():
                loss = sum(task.losses(model, batch, env).values())
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            if i < warmup:
                for part in parts.values():
                    part.calls = []
                continue
            add("data", t1 - t0)
            add("forward", t2 - t1)
            add("backward", t3 - t2)
            add("optimizer", t4 - t3)
            for name, part in parts.items():
                add(f"{name}/forward", part.forward)
                add(f"{name}/backward", _replay_backward(part, precision))
            optimizer.zero_grad(set_to_none=True)  # the replays' gradients
    finally:
        for part in parts.values():
            for h in part.handles:
                h.remove()
    ms = {k: 1e3 * v / steps for k, v in totals.items()}
    rows = [(name, ms[f"{name}/forward"], ms[f"{name}/backward"]) for name in parts]
    # the rest by difference; a replayed backward carries its own graph's overhead, so on tiny models the parts'
    # backward can add up to more than the step's: the rest is then 0
    rows.append(("the rest (" + task.rest_of_step(model) + ")", max(ms["forward"] - sum(r[1] for r in rows), 0.0),
                 max(ms["backward"] - sum(r[2] for r in rows), 0.0)))
    return {"rows": rows, "data_ms": ms["data"], "optimizer_ms": ms["optimizer"],
            "step_ms": ms["data"] + ms["forward"] + ms["backward"] + ms["optimizer"], "images": cfg.batch_size,
            "threads": torch.get_num_threads(), "precision": precision.name}


def format_breakdown(title: str, result: dict[str, Any]) -> str:
    """A Markdown table of :func:`step_breakdown`'s result."""
    step = result["step_ms"]
    lines = [f"{title}: {step:.0f} ms per step of {result['images']} images ({result['threads']} thread(s), "
             f"{result['precision']})", "", "| part | forward ms | backward ms | share of the step |",
             "|---|---|---|---|", f"| loading the batch (in this process) | {result['data_ms']:.0f} | - | "
                                 f"{100 * result['data_ms'] / step:.1f}% |"]
    for name, fwd, bwd in result["rows"]:
        lines.append(f"| {name} | {fwd:.0f} | {bwd:.0f} | {100 * (fwd + bwd) / step:.1f}% |")
    optimizer = result["optimizer_ms"]
    lines.append(f"| optimizer step | - | - | {100 * optimizer / step:.1f}% ({optimizer:.0f} ms) |")
    return "\n".join(lines)
