"""Command-line options generated from a config dataclass, and the one ``train`` command every task shares.

Each field of a :class:`~pvtv2.engine.config.TrainConfig` subclass becomes ``--field-name`` with the field's help
text and the recipe's value as its shown default; options the user did not give are left out, so a recipe's values
stand unless overridden. ``--set FIELD=JSON`` reaches every field, the ones without a flag too.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import PVTError


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _scalar(t: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def add_config_options(parser: argparse.ArgumentParser, defaults: Any, *, title: str = "run configuration") -> None:
    """One option per command-line field of ``defaults``' dataclass, showing ``defaults``' values."""
    group = parser.add_argument_group(title, "defaults are the chosen recipe's (shown: the default recipe's)")
    hints = typing.get_type_hints(type(defaults))
    for f in dataclasses.fields(defaults):
        if not f.metadata.get("cli", True):
            continue
        t = _scalar(hints[f.name])
        value = getattr(defaults, f.name)
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        shown = "none" if value is None or value == () else shown
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{f.metadata.get('help', '')} (default: {shown})"}
        if t is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(t) is tuple:
            kw.update(nargs="+", type=typing.get_args(t)[0], metavar="N")
        elif t is str and t is not hints[f.name]:  # str | None: the word "none" is None (e.g. --backbone-weights none)
            kw["type"] = _str_or_none
        elif t in (int, float, str):
            kw["type"] = t
        elif typing.get_origin(t) is dict:
            kw.update(action="extend", nargs="+", type=key_value, metavar="KEY=VALUE")
            kw["help"] = f"{f.metadata.get('help', '')} (one or more, repeatable; default: {value or 'none'})"
        else:
            continue  # nested dataclasses: --set FIELD=JSON
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        group.add_argument(_flag(f), *f.metadata.get("aliases", ()), **kw)
    group.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", dest="set_fields",
                       help="any field, e.g. --set backbone_overrides='{\"depths\": [1, 1, 1, 1]}'")


def _str_or_none(text: str) -> str | None:
    return None if text.lower() == "none" else text


def key_value(text: str) -> tuple[str, Any]:
    """``depths=1,1,1,1`` -> ``("depths", (1, 1, 1, 1))``; ``drop_path_rate=0.2`` -> ``("drop_path_rate", 0.2)``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare string
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def given_options(args: argparse.Namespace, base: Any) -> dict[str, Any]:
    """The config fields the command line set (flags and ``--set``), by field name; ``KEY=VALUE`` options update
    ``base``'s dict."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(base)
             if f.metadata.get("cli", True) and hasattr(args, f.name)}
    for name, value in given.items():
        if isinstance(value, list) and isinstance(getattr(base, name), dict):
            given[name] = {**getattr(base, name), **dict(value)}
    for item in getattr(args, "set_fields", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise PVTError(f"--set expects FIELD=JSON, got {item!r}")
        try:
            given[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            given[key.strip()] = value  # a bare string
    return given


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` of every inference command (training takes its config's ``device`` field)."""
    parser.add_argument("--device", default="auto", help="auto (the CUDA device if there is one, else the CPU), cpu, "
                                                         "cuda or cuda:N")


def add_ema_option(parser: argparse.ArgumentParser) -> None:
    """``--ema`` of every command that reads a trained checkpoint."""
    parser.add_argument("--ema", action="store_true",
                        help="use the checkpoint's EMA weights (a training checkpoint of a run with --ema)")


def device_of(args: argparse.Namespace) -> Any:
    """The ``torch.device`` of ``--device`` (one line if CUDA is asked for and missing)."""
    from ..engine.distributed import resolve_device

    return resolve_device(args.device)


def add_scenes_option(parser: argparse.ArgumentParser) -> None:
    """``--scenes TRAIN TEST SIZE``: which generated scenes set the data word ``scenes`` names."""
    parser.add_argument("--scenes", type=int, nargs=3, default=(4000, 500, 256), metavar=("TRAIN", "TEST", "SIZE"),
                        help="with data 'scenes': the generated set's train and test scene counts and canvas side "
                             "(default: 4000 500 256, the training default)")


def add_train_arguments(parser: argparse.ArgumentParser, recipes: Mapping[str, Any], default: str) -> None:
    """``--recipe``, the config options of ``recipes[default]``'s dataclass, and the run options."""
    parser.add_argument("--recipe", default=default, choices=list(recipes),
                        help=f"named configuration to start from (default: {default})")
    add_config_options(parser, recipes[default])
    run = parser.add_argument_group("run")
    run.add_argument("--out", help="run directory (default: runs/<task>/<timestamp>; on --resume: the checkpoint's)")
    run.add_argument("--resume", metavar="CKPT", help="continue exactly from a run's last.pth (alone: the run's own "
                     "configuration; only run length, periods and processes may change)")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files are "
                     "deleted); without it a folder holding a run is refused")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def resolve_config(args: argparse.Namespace, recipes: Mapping[str, Any]) -> Any:
    """The recipe (or the resumed run's configuration) with the command line applied."""
    from ..engine import resume_config

    base = recipes[args.recipe]
    given = given_options(args, base)
    if args.resume:
        return resume_config(args.resume, type(base), **given)
    return base.replace(**given)


def run_training(args: argparse.Namespace, recipes: Mapping[str, Any], make_task: Callable[[Any], Any]) -> int:
    """Resolve the configuration, then train the task it makes (or print the configuration)."""
    cfg = resolve_config(args, recipes)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from ..engine import train
    from .pretrain import resolve_backbone_weights

    cfg = resolve_backbone_weights(cfg, progress=not args.no_progress)  # --backbone-weights fashion-mnist
    train(make_task(cfg), out=args.out, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


def add_profile_arguments(parser: argparse.ArgumentParser, recipes: Mapping[str, Any], default: str) -> None:
    """``--recipe``, the config options and the options of a ``profile`` command (where a training step's time
    goes)."""
    parser.add_argument("--recipe", default=default, choices=list(recipes),
                        help=f"named configuration to start from (default: {default})")
    add_config_options(parser, recipes[default])
    parser.add_argument("--profile-steps", type=int, default=6, metavar="N",
                        help="timed training steps, after two untimed ones (default 6)")
    parser.add_argument("--out", metavar="MD", help="also write the tables to this Markdown file")


def run_profile(args: argparse.Namespace, recipes: Mapping[str, Any], make_tasks: Callable[[Any], list[Any]]) -> int:
    """Time the training step of each task ``make_tasks(cfg)`` gives, part by part, and print the tables."""
    import torch

    from ..engine.breakdown import format_breakdown, step_breakdown
    from ..engine.distributed import resolve_device
    from .pretrain import PRETRAINED

    cfg = recipes[args.recipe].replace(**given_options(args, recipes[args.recipe]))
    if getattr(cfg, "backbone_weights", None) == PRETRAINED:  # the weights do not change the time: don't make them
        cfg = cfg.replace(backbone_weights=None)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    tables = []
    for task in make_tasks(cfg.replace(workers=0)):  # the batch is loaded in this process, so that it is timed
        result = step_breakdown(task, steps=args.profile_steps, device=str(resolve_device(cfg.device)))
        tables.append(format_breakdown(task.describe(), result))
        print(tables[-1], end="\n\n", flush=True)
    if args.out:
        from .._io import atomic_write_text

        atomic_write_text(args.out, "\n\n".join(tables) + "\n")
    return 0
