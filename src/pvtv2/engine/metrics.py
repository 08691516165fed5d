"""The run directory: resolved config, metrics as JSONL and CSV, and a PNG of the curves.

How a task uses it (rank 0 only; other ranks get a logger that writes nothing)::

    run = RunDir.create(args.out or None, main=dist_env.is_main)     # runs/<timestamp> by default
    run.write_config(cfg)                                           # config.json
    log = MetricsLogger(run, resume=bool(args.resume))              # keeps earlier epochs on resume
    log.log({"epoch": 1, "train_loss": 0.61, "val_top1": 88.2, "lr": 1e-3})   # rewrites metrics.jsonl/.csv
    log.plot(panels={"loss": ["train_loss"], "accuracy (%)": ["val_top1"]})     # curves.png

Every file goes through :func:`pvtv2._io.atomic_write`: a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write, atomic_write_text


class RunDir:
    """A directory holding one run's outputs. ``path`` is created only by the main process."""

    def __init__(self, path: str | os.PathLike[str], main: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        if main:
            self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, path: str | os.PathLike[str] | None = None, root: str = "runs", main: bool = True) -> RunDir:
        """``path`` if given, else ``<root>/<YYYYmmdd-HHMMSS>`` (a suffix keeps names unique)."""
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(root) / stamp
            n = 1
            while path.exists():
                path, n = Path(root) / f"{stamp}-{n}", n + 1
        return cls(path, main=main)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: Mapping[str, Any], name: str = "config.json") -> Path | None:
        """The resolved configuration as pretty JSON."""
        if not self.main:
            return None
        return atomic_write_text(self.path / name, json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")

    def write_json(self, name: str, data: Any) -> Path | None:
        if not self.main:
            return None
        return atomic_write_text(self.path / name, json.dumps(data, indent=2, default=str) + "\n")


class MetricsLogger:
    """Per-epoch (or per-eval) records, rewritten atomically as ``metrics.jsonl`` and ``metrics.csv``.

    Args:
        run: the run directory.
        resume: keep the records already in ``metrics.jsonl`` (those with ``epoch`` below the first new record's
            are kept, later ones dropped when a record with an earlier epoch arrives).
        x: the record key that orders records (``"epoch"`` or ``"step"``).
    """

    def __init__(self, run: RunDir, resume: bool = False, x: str = "epoch") -> None:
        self.run = run
        self.x = x
        self.records: list[dict[str, Any]] = []
        jsonl = run / "metrics.jsonl"
        if resume and jsonl.is_file():
            self.records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]

    def log(self, record: Mapping[str, Any]) -> None:
        """Add one record (replacing any with the same or a later ``x``, as after a resume) and rewrite the files."""
        rec = dict(record)
        if self.x in rec:
            self.records = [r for r in self.records if r.get(self.x, -math.inf) < rec[self.x]]
        self.records.append(rec)
        if not self.run.main:
            return
        lines = "".join(json.dumps(r, default=float) + "\n" for r in self.records)
        atomic_write_text(self.run / "metrics.jsonl", lines)
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(self.run / "metrics.csv", buf.getvalue())

    def plot(
        self, panels: Mapping[str, Sequence[str]], name: str = "curves.png", title: str | None = None
    ) -> Path | None:
        """One subplot per panel, one line per metric key, against ``x``; written as a PNG."""
        if not self.run.main or not self.records:
            return None
        return plot_curves(self.records, self.run / name, panels, x=self.x, title=title)


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    panels: Mapping[str, Sequence[str]],
    x: str = "epoch",
    title: str | None = None,
) -> Path:
    """Draw ``panels`` (title -> metric keys) from ``records`` against ``x`` and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (label, keys) in zip(axes[0], panels.items()):
        for key in keys:
            pts = [(r[x], r[key]) for r in records if r.get(key) is not None and x in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 40 else None, label=key)
                if len(pts) <= 60:  # label the last value of short curves
                    ax.annotate(f"{ys[-1]:.2f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=8)
        ax.set_xlabel(x)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=110, format="png")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
