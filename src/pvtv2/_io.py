"""File helpers shared by every writer: nothing is ever left half-written.

Files are written to a temporary file beside the destination, then renamed over it: a crash, Ctrl-C or a full disk
during the write leaves any previous file intact and no partial file behind. The result gets the permissions any
new file gets (``0666`` minus the umask), not ``mkstemp``'s private ``0600``, so a team can share a run directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import PVTError

_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutOfSpace(PVTError):
    """A file could not be written for want of disk space (the previous version, if any, is intact)."""

    def __init__(self, path: Path, free: int, needed: int | None) -> None:
        self.path, self.free, self.needed = path, free, needed
        need = f"about {_mb(needed)} needed, " if needed else ""
        super().__init__(f"no space left to write {path} ({need}{_mb(free)} free on its disk)")


def cache_root() -> Path:
    """pvtv2's cache (scenes, pretrained backbones, kernel choices): ``$PVTV2_CACHE``, else
    ``$XDG_CACHE_HOME/pvtv2``, else ``~/.cache/pvtv2``."""
    if os.environ.get("PVTV2_CACHE"):
        return Path(os.environ["PVTV2_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pvtv2"


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` across processes, waiting for its holder (POSIX ``flock`` on a sibling
    ``.<name>.lock``; the kernel drops it when the holder dies; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.1f} MB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], *, size_hint: int | None = None) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over ``path``.

    Args:
        path: the destination (parent folders are created).
        write: writes the whole file to the path it is given.
        size_hint: the expected size in bytes: refuse at once, before writing anything, when the disk has less free.

    Raises:
        OutOfSpace: the disk is (or became) full; nothing was changed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size_hint is not None:
        free = shutil.disk_usage(path.parent).free
        if free < size_hint:
            raise OutOfSpace(path, free, size_hint)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        full = _is_out_of_space(e, path.parent, size_hint)  # before the partial file frees its space again
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise OutOfSpace(path, shutil.disk_usage(path.parent).free, size_hint) from None
        raise
    return path


def _is_out_of_space(e: BaseException, folder: Path, size_hint: int | None) -> bool:
    """An OSError with ENOSPC/EDQUOT, or a writer's own error (torch.save's "file write failed") on a disk that has
    less room than the file needs (or under 1 MiB)."""
    if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
        return True
    if not isinstance(e, (OSError, RuntimeError)):
        return False
    return shutil.disk_usage(folder).free < max(size_hint or 0, 2**20)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Put a snapshot of ``src`` at ``dst`` atomically: a hard link where the file system has them, else a copy.

    A link costs no space (a detector's ``best.pth`` beside ``last.pth`` would double a run's size) and is a true
    snapshot because every writer here replaces files by renaming a new one over them, never by writing in place:
    the next ``last.pth`` is a new file and ``dst`` keeps the old one (timm's checkpoint saver does the same).
    """
    path = Path(dst)
    tmp = path.parent / f".{path.name}.{os.getpid()}.link"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.link(src, tmp)
        os.replace(tmp, path)
        return path
    except OSError:  # no hard links here (another device, FAT, some network file systems): copy
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp), size_hint=os.path.getsize(src))


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it (also when writing fails)."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def save_image_grid(rows: list[list[tuple[str, Any]]], path: str | os.PathLike[str], *, title: str = "",
                    cell: float = 3.2) -> Path:
    """A PNG grid of images (one row per sample: ``(caption, (3, H, W) uint8 tensor)`` per column), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cell * cols, cell * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax, (caption, image) in zip(ax_row, row):
            ax.imshow(image.permute(1, 2, 0).cpu().numpy())  # (3, H, W) -> (H, W, 3)
            ax.set_title(caption, fontsize=8)
        for ax in ax_row:
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
