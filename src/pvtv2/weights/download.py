"""Checked downloads into torch.hub's cache: nothing unverified or half-written is ever left there.

A download streams into a temporary file next to its destination, hashing as it goes; the file is renamed into
place only when its length equals the server's ``Content-Length`` and its SHA-256 matches what is expected (the
full hash recorded in :mod:`pvtv2.weights.release`, or, following torch.hub's ``check_hash`` convention, the hex
prefix in a file name like ``name-1a2b3c4d.pth``). A mismatch, a dropped connection or Ctrl-C deletes the
temporary file and leaves any earlier file untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.error import URLError
from urllib.request import Request, urlopen

import torch

from .._io import atomic_write
from ..errors import CheckpointError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
TIMEOUT = 30  # seconds without data before a download is abandoned
_BARS: contextvars.ContextVar[bool] = contextvars.ContextVar("pvtv2_download_bars", default=True)


def download_bars() -> bool:
    """Whether a download draws a progress bar when not told otherwise (see :func:`progress_bars`)."""
    return _BARS.get()


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Within the block, weight downloads not told otherwise draw a progress bar only when ``enabled``: the released
    files (:func:`download`), torchvision's ImageNet weights and Hugging Face Hub files. A command's
    ``--no-progress`` runs it inside ``progress_bars(False)``, since weights load deep inside model builders."""
    token = _BARS.set(enabled)
    try:
        yield
    finally:
        _BARS.reset(token)


def cache_dir() -> Path:
    """Where released files are kept: torch.hub's ``checkpoints`` folder (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def expected_hash(filename: str, sha256: str | None = None) -> str | None:
    """The hash a downloaded ``filename`` must start with: ``sha256`` if given, else torch.hub's file-name
    prefix (``resnet50-19c8e357.pth`` -> ``19c8e357``), else ``None``."""
    if sha256:
        return sha256.lower()
    m = torch.hub.HASH_REGEX.search(filename)
    return m.group(1) if m and m.group(1) else None


def offline() -> bool:
    """True when ``PVTV2_OFFLINE`` is set (tests and air-gapped machines): never open a connection."""
    return os.environ.get("PVTV2_OFFLINE", "") not in ("", "0")


def _open(url: str) -> Any:
    """The response of ``url`` (``http(s)://`` or ``file://``); a seam for tests."""
    return urlopen(Request(url, headers={"User-Agent": "pvtv2"}), timeout=TIMEOUT)


def download(url: str, dst: str | os.PathLike[str], *, sha256: str | None = None,
             progress: bool | None = None) -> Path:
    """Download ``url`` to ``dst`` atomically, checking its length and SHA-256 before it appears at ``dst``.

    Args:
        url: ``http(s)://`` or ``file://`` address.
        dst: destination file; its directory is created.
        sha256: expected full hash; default: torch.hub's prefix in ``dst``'s name, or no hash check.
        progress: show a tqdm bar (default: unless inside ``progress_bars(False)``).

    Raises:
        CheckpointError: offline, unreachable, cut short, or a hash mismatch; ``dst`` is then left as it was.
    """
    dst = Path(dst)
    progress = download_bars() if progress is None else progress
    want = expected_hash(dst.name, sha256)
    where = f"put {url} at {dst} yourself or pass weights=PATH (CLI: --weights PATH)"
    if offline():
        raise CheckpointError(f"cannot download {dst.name}: PVTV2_OFFLINE is set; {where}")
    got: dict[str, str] = {}

    def fetch(tmp: str) -> None:
        with _open(url) as response, open(tmp, "wb") as out:
            got["sha256"] = _stream(response, out, dst.name, progress)
        if want and not got["sha256"].startswith(want):
            raise CheckpointError(
                f"{url} downloaded with SHA-256 {got['sha256']}, expected {want}: the transfer was corrupted or the "
                f"file changed upstream; nothing was kept in {dst.parent}. Retry, or {where}"
            )

    try:
        atomic_write(dst, fetch)
    except (URLError, OSError) as e:  # timeouts and dropped connections are OSErrors
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"could not download {url} ({reason}); {where}") from None
    if want:
        log.info("%s: SHA-256 %s checked", dst.name, got["sha256"])
    else:
        log.info("%s: SHA-256 %s (no recorded hash to check it against)", dst.name, got["sha256"])
    return dst


def _stream(response: Any, out: IO[bytes], name: str, progress: bool) -> str:
    """Copy ``response`` to ``out``; return the SHA-256 of the bytes; raise if fewer than announced arrived."""
    from tqdm import tqdm

    length = response.headers.get("Content-Length")
    total = int(length) if length else None
    h, n = hashlib.sha256(), 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress,
              leave=False) as bar:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            h.update(chunk)
            n += len(chunk)
            bar.update(len(chunk))
    if total is not None and n != total:
        raise ConnectionError(f"the transfer stopped after {n} of {total} bytes; nothing was kept")
    return h.hexdigest()


def released_file(name: str, *, progress: bool | None = None) -> Path:
    """The authors' released file of model ``name``: from torch.hub's cache, or downloaded and checked into it."""
    from .release import RELEASES, release

    rel = release(name)
    if rel is None:
        raise CheckpointError(f"no released weights for {name}; the authors released {', '.join(RELEASES)}")
    dst = cache_dir() / rel.file
    if dst.is_file():
        return dst
    return download(rel.url, dst, sha256=rel.sha256, progress=progress)
