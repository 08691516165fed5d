"""The configuration every training run shares, as one frozen dataclass that each task's config extends.

Each field carries its ``--help`` text (:func:`option`), so the command line is generated from the dataclass
(:mod:`pvtv2.cli.options`) and the same concept has the same name in every task: run length (``epochs`` /
``steps``), checkpoint period (``ckpt_every``), evaluation period (``eval_every``), bad-data policy
(``on_bad_data``), global batch size (``batch_size``), ``seed``, ``workers``.

How a task uses it::

    @dataclass(frozen=True)
    class SegmentationConfig(TrainConfig):
        crop_size: int = option(512, "training crop")

    cfg = SegmentationConfig(batch_size=16, steps=40_000).replace(lr=1e-4)
    cfg.to_dict()            # plain values: config.json and checkpoints
    SegmentationConfig.from_dict(d)
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from ..errors import PVTError

C = TypeVar("C", bound="TrainConfig")


def option(default: Any, help: str, *, cli: bool = True, choices: tuple[str, ...] | None = None,
           flag: str | None = None, aliases: tuple[str, ...] = ()) -> Any:
    """A config field with its command-line help (mutable defaults are copied per instance).

    Args:
        default: the default value.
        help: one line for ``--help``.
        cli: False for fields that are not command-line options (set through a recipe, or ``--set FIELD=JSON``).
        choices: allowed values.
        flag: the option's name when it is not ``--<field-name>``.
        aliases: more option names (a field's earlier name, still accepted).
    """
    meta = {"help": help, "cli": cli, "choices": choices, "flag": flag, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """What every training run has, whatever the task (defaults are overridden by each task's recipes)."""

    recipe: str = option("", "the named recipe these values started from", cli=False)
    # --- run length ---
    epochs: float | None = option(None, "passes over the training set (--steps takes precedence)")
    steps: int | None = option(None, "optimizer steps in all; the lr schedule spans them")
    stop_after: int | None = option(None, "stop after N steps with a resumable checkpoint (schedule unchanged)")
    batch_size: int = option(16, "GLOBAL batch size, split evenly over the processes")
    # --- optimisation ---
    lr: float | None = option(None, "peak learning rate; none: base-lr x batch-size / base-batch")
    base_lr: float | None = option(None, "learning rate for base-batch images; none: the task's")
    base_batch: int = option(512, "the batch size base-lr is given for (linear scaling rule)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    decay_norms: bool = option(False, "decay norms, biases and embeddings too (released mmdet/mmseg configs)")
    no_decay_keys: tuple[str, ...] = option((), "no weight decay on parameters whose name contains one of these, "
                                                "all others decayed (mmdet's paramwise_cfg custom_keys)")
    schedule: str = option("cosine", "learning-rate schedule", choices=("cosine", "poly", "step", "constant"))
    milestones: tuple[float, ...] = option((), "step schedule: fractions of the run where the lr drops x0.1")
    power: float = option(0.9, "poly schedule exponent")
    warmup_epochs: float = option(0.0, "linear warm-up, in epochs")
    warmup_steps: int | None = option(None, "linear warm-up, in steps (overrides --warmup-epochs)")
    warmup_ratio: float = option(1e-3, "the warm-up starts at this fraction of the peak lr")
    min_lr_ratio: float = option(0.0, "the cosine / poly schedules end at this fraction of the peak lr")
    clip_grad: float | None = option(None, "max global gradient norm (none or 0: no clipping)")
    ema: bool = option(False, "keep (and evaluate) an exponential moving average of the weights")
    ema_decay: float = option(0.9998, "EMA decay per step")
    precision: str = option("auto", "auto: bf16/fp16 autocast on CUDA, fp32 on CPU; native: as auto, and bf16 on "
                                    "CPUs with native bf16 (avx512_bf16, amx_bf16)",
                            choices=("auto", "native", "fp32", "bf16", "fp16"))
    # --- periods ---
    eval_every: int = option(0, "steps between evaluations (0: at each epoch end); always after the last step")
    ckpt_every: int = option(0, "also write last.pth every N steps (it is written at each evaluation/epoch end)")
    log_every: int = option(20, "steps between progress-bar updates")
    # --- data and processes ---
    on_bad_data: str = option("skip", "unreadable images or annotations: skip and count them, or stop",
                              choices=("skip", "error"))
    workers: int = option(2, "DataLoader worker processes per training process")
    seed: int = option(0, "the seed of every random choice (data order, augmentation, init)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    threads: int | None = option(None, "CPU threads per process; none: this node's cores / its processes")

    # Fields a resumed run may change; every other one must stay as the checkpoint says for an exact continuation.
    RESUMABLE: typing.ClassVar[frozenset[str]] = frozenset(
        {"epochs", "steps", "stop_after", "eval_every", "ckpt_every", "log_every", "workers", "device", "threads"})

    # Fields renamed since an earlier version: old name -> new name (read from older checkpoints and still accepted
    # by ``replace``).
    RENAMED: typing.ClassVar[dict[str, str]] = {}

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (earlier names of renamed fields too); unknown names raise one line
        listing the valid ones."""
        changes = {self.RENAMED.get(k, k): v for k, v in changes.items()}
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise PVTError(f"unknown {type(self).__name__} field(s) {unknown}; valid: {sorted(known)}")
        return dataclasses.replace(self, **{k: coerce(type(self), k, v) for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists, paths as strings): what config.json and checkpoints store."""
        return plain(asdict(self))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], **changes: Any) -> C:
        """Inverse of :meth:`to_dict`; keys this version does not know (e.g. ``resolved``) are left out."""
        known = {f.name for f in fields(cls)}
        data = {cls.RENAMED.get(k, k): v for k, v in data.items()}  # a checkpoint of an earlier version
        return cls().replace(**{**{k: v for k, v in data.items() if k in known}, **changes})

    def check(self) -> None:
        """Raise one line for values that cannot work together."""
        if self.steps is None and self.epochs is None:
            raise PVTError("give the run length: --epochs or --steps")
        if self.batch_size <= 0:
            raise PVTError(f"--batch-size must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class BackboneConfig(TrainConfig):
    """:class:`TrainConfig` with the backbone fields of the dense tasks (detection, segmentation), under the names
    their builders take (``retinanet(backbone=..., backbone_weights=...)``, ``semantic_fpn(...)``)."""

    backbone: str = option("pvt_v2_b0", "registered backbone name (pvtv2 models)")
    backbone_weights: str | None = option(None, "'official', 'fashion-mnist' (pretrained here on first use) or a "
                                                 "checkpoint in any format; none: random init")
    backbone_overrides: dict[str, Any] = option({}, "a PVTConfig field, e.g. depths=1,1,1,1")
    trainable_stages: int | None = option(None, "train only the last N backbone stages (none: all 4)")
    norm_eval: bool = option(False, "freeze the backbone's LayerNorms")

    def backbone_args(self) -> dict[str, Any]:
        """These fields as the dense builders' keyword arguments."""
        return {"backbone": self.backbone, "backbone_weights": self.backbone_weights,
                "backbone_overrides": self.backbone_overrides, "trainable_stages": self.trainable_stages,
                "norm_eval": self.norm_eval}


def coerce(cls: type, name: str, value: Any) -> Any:
    """``value`` as field ``name`` of ``cls`` wants it: JSON lists -> tuples, dicts -> nested dataclasses."""
    if value is None:
        return None
    hint = typing.get_type_hints(cls)[name]
    for t in (hint, *typing.get_args(hint)):  # X, or the X of "X | None"
        origin = typing.get_origin(t) or t
        if dataclasses.is_dataclass(origin) and isinstance(value, dict):
            return origin(**value)
        if origin is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if origin is dict and isinstance(value, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


def plain(v: Any) -> Any:
    """A JSON-like copy: tuples become lists, paths strings (weights-only loadable and diff-able)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


def get_recipe(recipes: typing.Mapping[str, C], name: str) -> C:
    """``recipes[name]``, or one line listing the known names."""
    try:
        return recipes[name]
    except KeyError:
        raise PVTError(f"unknown recipe {name!r}; choose from {', '.join(recipes)}") from None
