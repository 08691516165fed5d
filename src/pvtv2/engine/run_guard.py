"""One run per run directory: a new run never replaces a finished one, two processes never share one.

- A folder that already holds a run (its ``config.json``, checkpoints or metrics) is refused for a *new* run in one
  line that points to ``--resume`` and to ``--overwrite`` (which deletes that run's files first).
- While a run trains, its folder is locked (``fcntl.flock`` on ``.lock`` inside it). The kernel drops the lock when
  the process ends, however it ends (``kill -9`` included), so a dead run never leaves a stale lock behind; a second
  process that tries the same folder is refused in one line naming the holder's pid.

Only the main process claims the folder (the other ranks of a ``torchrun`` job write nothing there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import TrainingError

# What a run writes into its folder (the trainer's files and the tasks' own): a folder with any of them holds a run.
RUN_FILES = ("config.json", "last.pth", "best.pth", "metrics.jsonl", "metrics.csv", "summary.json", "curves.png",
             "predictions.png", "results.json", "metrics.json")
LOCK = ".lock"


def existing_run(path: Path) -> list[str]:
    """The run files already in ``path`` (empty: no run there)."""
    return [name for name in RUN_FILES if (path / name).exists()]


@contextlib.contextmanager
def claim_run_dir(path: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
                  main: bool = True) -> Iterator[Path]:
    """Hold ``path`` for one run for the duration of the ``with`` block.

    Args:
        path: the run directory (created if missing).
        resume: the run continues the one in ``path`` (its files are expected there).
        overwrite: a new run may replace the run in ``path`` (its files are deleted once the lock is held).
        main: False on the other ranks of a multi-process job: nothing is checked or written.

    Raises:
        TrainingError: ``path`` holds a run and neither ``resume`` nor ``overwrite`` is set, or another process is
            training in ``path``.
    """
    path = Path(path)
    if not main:
        yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        found = existing_run(path)
        if found and not resume:
            if not overwrite:
                raise TrainingError(
                    f"{path} already holds a run ({', '.join(found)}): continue it with --resume {path / 'last.pth'}, "
                    "choose another --out, or pass --overwrite to replace it")
            for name in found:
                (path / name).unlink()
        yield path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock, the run-files check above still protects finished runs
        yield
        return
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise TrainingError(f"{path} is in use by another training process (pid {holder}): wait for it to end or "
                                "choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
