"""Weights on the Hugging Face Hub: ``hf-hub:OWNER/NAME`` sources, through ``huggingface_hub`` and its cache.

Accepted spellings (wherever a weights path is, e.g. ``create_model(..., weights=...)`` or ``--weights``):

* ``hf-hub:OWNER/NAME``, ``hf-hub:OWNER/NAME@REVISION`` and ``hf-hub:OWNER/NAME/FILE`` (timm's prefix);
* the bare names of :data:`~pvtv2.weights.release.HUB_FILES` (``timm/pvt_v2_b0.in1k``,
  ``OpenGVLab/pvt_v2_b0``) when no local file has that name.

The repository's ``model.safetensors`` is read (else ``pytorch_model.bin``); its keys are converted like any other
file's, so timm's repos load as the ``timm`` layout and the transformers ``PvtV2ForImageClassification`` repos as
``hf``. ``HF_HUB_OFFLINE=1`` (or ``PVTV2_OFFLINE=1``) reads the local cache only. A freshly downloaded file is
hashed: its SHA-256 must equal the one the Hub declares (the cache's blob name) and the one recorded in
:mod:`pvtv2.weights.release`, else it is deleted from the cache and the load fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .download import download_bars
from .download import offline as pvtv2_offline
from .download import sha256_file
from .io import _first_line
from .release import HUB_FILES

log = logging.getLogger(__name__)

PREFIX = "hf-hub:"
FILENAMES = ("model.safetensors", "pytorch_model.bin")  # tried in this order
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INSTALL = "pip install 'pvtv2[hub]' (or pip install huggingface_hub)"


@dataclass(frozen=True)
class HubSource:
    """A parsed Hub source: repository, optional revision and file."""

    repo: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo}{rev}" + (f"/{self.filename}" if self.filename else "")


def parse(source: str | os.PathLike[str]) -> HubSource | None:
    """The Hub source ``source`` names, or ``None`` when it is a local path (an existing file always is)."""
    text = os.fspath(source)
    if text.startswith(PREFIX):
        parts = text[len(PREFIX) :].split("/")
        if len(parts) < 2 or not all(parts[:2]):
            raise CheckpointError(f"{text!r} is not a Hub name: write {PREFIX}OWNER/NAME "
                                  f"(e.g. {PREFIX}timm/pvt_v2_b0.in1k)")
        name, _, revision = parts[1].partition("@")
        return HubSource(f"{parts[0]}/{name}", revision or None, "/".join(parts[2:]) or None)
    if text in HUB_FILES and not Path(text).exists():
        return HubSource(text)
    return None


def _hf() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401 - a lazy submodule: make ``huggingface_hub.constants`` exist
    except ImportError:
        raise CheckpointError(f"Hugging Face Hub weights need the huggingface_hub package: {_INSTALL}") from None
    return huggingface_hub


@contextlib.contextmanager
def _hub_bars() -> Iterator[None]:
    """huggingface_hub's own download bars off inside :func:`~.download.progress_bars` ``(False)``."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = not download_bars() and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            enable_progress_bars()


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (read now, not only when huggingface_hub was imported) or ``PVTV2_OFFLINE``."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if flag in ("1", "true", "yes", "on") or pvtv2_offline():
        return True
    return bool(getattr(_hf().constants, "HF_HUB_OFFLINE", False))


def cached_file(src: HubSource) -> Path | None:
    """The file of ``src`` already in the local Hugging Face cache, or ``None``."""
    hf = _hf()
    for filename in (src.filename,) if src.filename else FILENAMES:
        hit = hf.try_to_load_from_cache(src.repo, filename, revision=src.revision)
        if isinstance(hit, str):
            return Path(hit)
    return None


def hub_file(source: str | os.PathLike[str]) -> Path | None:
    """The local path of a Hub source (from the cache, or downloaded and checked into it); ``None`` when
    ``source`` is not a Hub name."""
    src = parse(source)
    if src is None:
        return None
    hit = cached_file(src)
    if hit is not None:
        return hit
    hf = _hf()
    if is_offline():
        raise CheckpointError(
            f"{src} is not in the local Hugging Face cache ({hf.constants.HF_HUB_CACHE}) and offline mode is on "
            "(HF_HUB_OFFLINE or PVTV2_OFFLINE); download it once with a connection, or pass a local file"
        )
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    for filename in (src.filename,) if src.filename else FILENAMES:
        try:
            with _hub_bars():
                path = Path(hf.hf_hub_download(src.repo, filename, revision=src.revision))
        except LocalEntryNotFoundError as e:  # (an EntryNotFoundError too) no connection, timeout, Hub down
            raise CheckpointError(f"could not reach the Hugging Face Hub for {src} ({_first_line(e)}); check the "
                                  "connection, or pass a local file") from None
        except RepositoryNotFoundError as e:
            raise CheckpointError(f"{src}: no such repository on the Hugging Face Hub, or it is private or "
                                  f"gated ({_first_line(e)})") from None
        except EntryNotFoundError:  # the repository has no such file: try the next name
            continue
        except OSError as e:
            raise CheckpointError(f"could not download {src} ({_first_line(e)}); check the connection, or pass a "
                                  "local file") from None
        verify(path, src.repo, filename)
        return path
    tried = " nor ".join(FILENAMES) if not src.filename else src.filename
    raise CheckpointError(f"{src} has no {tried}; name the weights file: {PREFIX}{src.repo}/FILE")


def verify(path: Path, repo: str, filename: str) -> str:
    """Check a downloaded Hub file against the hash the Hub declares and the one recorded for it; on a mismatch
    delete it from the cache and raise. Returns its SHA-256."""
    blob = path.resolve()
    got = sha256_file(blob)
    declared = blob.name if _SHA256.fullmatch(blob.name) else None  # the cache names LFS blobs by their SHA-256
    known = HUB_FILES.get(repo)
    recorded = known.sha256 if known is not None and known.filename == filename else None
    problem = None
    if declared and got != declared:
        problem = f"has SHA-256 {got} but the Hub declares {declared}: the transfer was corrupted"
    elif recorded and got != recorded:
        problem = (f"has SHA-256 {got}, not the {recorded} pvtv2 recorded for it: the repository now serves "
                   "another file; pin the recorded one with @REVISION or pass a local file")
    if problem:
        for p in {path, blob}:
            p.unlink(missing_ok=True)
        raise CheckpointError(f"{PREFIX}{repo}/{filename} {problem}; it was removed from the cache")
    log.info("%s%s/%s: SHA-256 %s checked", PREFIX, repo, filename, got)
    return got
