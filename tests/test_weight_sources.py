"""Weight sources: released v1/v2 files, checked downloads, Hugging Face Hub names, ``pvtv2 weights``. No network:
downloads come from ``file://`` URLs and a Hub cache laid out on disk the way huggingface_hub lays it out."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import pytest
from conftest import require
import torch

from pvtv2 import CheckpointError, convert, create_model, save_weights
from pvtv2.cli import main as cli
from pvtv2.weights import download as dl
from pvtv2.weights import release

SMALL = dict(depths=(1, 1, 1, 1))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch.hub's cache in a temporary folder; returns its ``checkpoints`` folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    return tmp_path / "torch" / "checkpoints"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve release files from a local folder: ``serve(name, data, sha256=...)`` rewrites the release table."""
    root = tmp_path / "server"
    root.mkdir()
    monkeypatch.setattr(release, "RELEASE_URL", root.as_uri() + "/{file}")
    monkeypatch.setenv("PVTV2_OFFLINE", "0")

    def serve(name: str, data: bytes, sha256: str | None = None) -> release.Release:
        rel = dataclasses.replace(release.RELEASES[name], sha256=sha256)
        monkeypatch.setitem(release.RELEASES, name, rel)
        (root / rel.file).write_bytes(data)
        return rel

    return serve


def _official_bytes(name: str, **kw) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A file in the released key layout (written by our converter) and the pvtv2 state dict it holds."""
    sd = create_model(name, **kw).state_dict()
    buf = io.BytesIO()
    torch.save(convert(sd, "pvtv2", "official"), buf)
    return buf.getvalue(), sd


# --- released files -----------------------------------------------------------------------------------------
def test_v1_releases_sit_beside_v2() -> None:
    assert release.release("pvt_v1_small").url == "https://github.com/whai362/PVT/releases/download/v2/pvt_small.pth"
    assert {r.file for r in release.RELEASES.values()} >= {"pvt_tiny.pth", "pvt_medium.pth", "pvt_large.pth"}
    for h in release.HUB_FILES.values():
        assert h.sha256 is None or len(h.sha256) == 64 and int(h.sha256, 16) >= 0
        assert h.name in {r.name for r in release.RELEASES.values()}


def test_v1_official_loads_from_the_released_layout(torch_cache: Path) -> None:
    data, sd = _official_bytes("pvt_v1_tiny")
    torch_cache.mkdir(parents=True)
    (torch_cache / "pvt_tiny.pth").write_bytes(data)
    released = torch.load(io.BytesIO(data), weights_only=True)
    assert released["pos_embed4"].shape == (1, 7 * 7 + 1, 512) and released["cls_token"].shape == (1, 1, 512)
    model = create_model("pvt_v1_tiny", weights="official")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert create_model("pvt_v1_tiny", weights="official", num_classes=10).head.out_features == 10


def test_checked_download_then_cache(tmp_path: Path, torch_cache: Path, server) -> None:
    data, sd = _official_bytes("pvt_v2_b0")
    server("pvt_v2_b0", data, sha256=_sha(data))
    model = create_model("pvt_v2_b0", weights="official")
    assert torch.equal(model.stages[3].blocks[1].attn.kv.weight, sd["stages.3.blocks.1.attn.kv.weight"])
    assert _leftovers(torch_cache) == ["pvt_v2_b0.pth"]  # no temporary file left
    (tmp_path / "server" / "pvt_v2_b0.pth").unlink()  # the server goes away: the cached file is used
    assert torch.equal(create_model("pvt_v2_b0", weights="official").head.bias, sd["head.bias"])


@pytest.mark.parametrize("case", ["wrong hash", "truncated file"])
def test_a_bad_download_leaves_nothing(torch_cache: Path, server, case: str) -> None:
    data = b"x" * 5000
    served = data if case == "wrong hash" else data[:1234]
    server("pvt_v2_b0", served, sha256=_sha(b"other bytes") if case == "wrong hash" else _sha(data))
    with pytest.raises(CheckpointError, match="nothing was kept") as e:
        create_model("pvt_v2_b0", weights="official")
    assert "\n" not in str(e.value) and "SHA-256" in str(e.value)
    assert _leftovers(torch_cache) == []


class _Response(io.BytesIO):
    """A response announcing ``length`` bytes; ``fail`` raises after the first chunk (Ctrl-C, dropped link)."""

    def __init__(self, data: bytes, length: int, fail: BaseException | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(length)}
        self.fail = fail

    def read(self, n: int = -1) -> bytes:
        if self.fail is not None and self.tell() > 0:
            raise self.fail
        return super().read(min(n, 1000))


@pytest.mark.parametrize("fail", [None, KeyboardInterrupt(), ConnectionResetError("connection reset by peer")])
def test_an_interrupted_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail) -> None:
    monkeypatch.setenv("PVTV2_OFFLINE", "0")
    dst = tmp_path / "cache" / "w.pth"
    dst.parent.mkdir()
    data = b"y" * 5000
    # fail=None: the server closes the connection early (3000 of the 5000 announced bytes)
    monkeypatch.setattr(dl, "_open", lambda url: _Response(data[:3000] if fail is None else data, 5000, fail))
    expected = KeyboardInterrupt if isinstance(fail, KeyboardInterrupt) else CheckpointError
    with pytest.raises(expected) as e:
        dl.download("https://example.invalid/w.pth", dst, progress=False)
    if fail is None:
        assert "3000 of 5000 bytes" in str(e.value)
    assert _leftovers(dst.parent) == []


def test_torch_hub_hash_prefix_in_the_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVTV2_OFFLINE", "0")
    src = tmp_path / "w.pth"
    src.write_bytes(b"weights")
    good, bad = tmp_path / "c" / f"w-{_sha(b'weights')[:8]}.pth", tmp_path / "c" / "w-0badc0de.pth"
    assert dl.expected_hash(good.name) == _sha(b"weights")[:8] and dl.expected_hash("pvt_v2_b2_li.pth") is None
    assert dl.download(src.as_uri(), good, progress=False).read_bytes() == b"weights"
    with pytest.raises(CheckpointError, match="expected 0badc0de"):
        dl.download(src.as_uri(), bad, progress=False)
    assert _leftovers(good.parent) == [good.name]


def test_offline_release_names_the_file_to_place(torch_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVTV2_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"PVTV2_OFFLINE is set; put https://\S+/pvt_large.pth at \S+large.pth"):
        create_model("pvt_v1_large", weights="official")
    assert _leftovers(torch_cache) == []


# --- Hugging Face Hub ---------------------------------------------------------------------------------------
COMMIT = "a" * 40


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty huggingface_hub cache; ``put(repo, filename, data)`` stores a file as a download would."""
    constants = require("huggingface_hub.constants")  # the [hub] extra, installed by make test

    root = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cache only (online_hub turns it off)

    def put(repo: str, filename: str, data: bytes, declared: str | None = None) -> Path:
        folder = root / f"models--{repo.replace('/', '--')}"
        blob = folder / "blobs" / (declared or _sha(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / COMMIT / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(COMMIT)
        return link

    return put


def _safetensors(tmp_path: Path, fmt: str, name: str = "pvt_v2_b0") -> tuple[bytes, dict[str, torch.Tensor]]:
    model = create_model(name, **SMALL)
    path = save_weights(model, tmp_path / f"{fmt}.safetensors", format=fmt)
    return path.read_bytes(), model.state_dict()


@pytest.mark.parametrize("source, fmt", [("hf-hub:timm/pvt_v2_b0.in1k", "timm"), ("timm/pvt_v2_b0.in1k", "timm"),
                                         ("hf-hub:OpenGVLab/pvt_v2_b0", "hf"), ("OpenGVLab/pvt_v2_b0", "hf")])
def test_hub_names_load_from_the_local_cache(tmp_path: Path, hub_cache, source: str, fmt: str) -> None:
    data, sd = _safetensors(tmp_path, fmt)
    hub_cache(source.removeprefix("hf-hub:"), "model.safetensors", data)
    model = create_model("pvt_v2_b0", weights=source, **SMALL)  # offline: from the cache
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert create_model("pvt_v2_b0", weights=source, num_classes=10, **SMALL).head.out_features == 10


def test_hub_offline_and_not_cached_is_one_line(hub_cache) -> None:
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache .* offline mode is on") as e:
        create_model("pvt_v2_b0", weights="hf-hub:timm/pvt_v2_b0.in1k")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=r"does not exist \(a Hugging Face Hub repository\? write hf-hub:me/x"):
        create_model("pvt_v2_b0", weights="me/x")
    with pytest.raises(CheckpointError, match="write hf-hub:OWNER/NAME"):
        create_model("pvt_v2_b0", weights="hf-hub:justone")


def test_hub_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(CheckpointError, match=r"need the huggingface_hub package: pip install 'pvtv2\[hub\]'"):
        create_model("pvt_v2_b0", weights="hf-hub:timm/pvt_v2_b0.in1k")


@pytest.fixture
def online_hub(hub_cache, monkeypatch: pytest.MonkeyPatch):
    """Online mode with ``hf_hub_download`` replaced: ``serve({filename: (data, declared hash)})``."""
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import RemoteEntryNotFoundError

    for var in ("HF_HUB_OFFLINE", "PVTV2_OFFLINE"):
        monkeypatch.setenv(var, "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls: list[str] = []

    def serve(files: dict[str, tuple[bytes, str | None]]) -> list[str]:
        def fake_download(repo_id: str, filename: str, revision: str | None = None) -> str:
            calls.append(filename)
            if filename not in files:
                err = RemoteEntryNotFoundError.__new__(RemoteEntryNotFoundError)  # without the HTTP response its
                err.args = (f"404 Client Error: {filename} not found",)  # __init__ wants
                raise err
            data, declared = files[filename]
            return str(hub_cache(repo_id, filename, data, declared))

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
        return calls

    return serve


def test_hub_download_is_checked(tmp_path: Path, online_hub, monkeypatch: pytest.MonkeyPatch) -> None:
    data, sd = _safetensors(tmp_path, "timm")
    online_hub({"model.safetensors": (data, _sha(b"what the Hub declared"))})  # corrupted in transit
    with pytest.raises(CheckpointError, match="the Hub declares .* removed from the cache"):
        create_model("pvt_v2_b0", weights="hf-hub:someone/b0", **SMALL)
    assert not list((tmp_path / "hf").rglob("model.safetensors")) and not list((tmp_path / "hf").rglob("blobs/*"))
    # a file that matches the Hub's hash but not the one pvtv2 recorded for that repository
    monkeypatch.setitem(release.HUB_FILES, "timm/pvt_v2_b0.in1k",
                        dataclasses.replace(release.HUB_FILES["timm/pvt_v2_b0.in1k"], sha256=_sha(b"recorded")))
    online_hub({"model.safetensors": (data, None)})
    with pytest.raises(CheckpointError, match="not the [0-9a-f]{64} pvtv2 recorded"):
        create_model("pvt_v2_b0", weights="timm/pvt_v2_b0.in1k", **SMALL)
    monkeypatch.setitem(release.HUB_FILES, "timm/pvt_v2_b0.in1k",
                        dataclasses.replace(release.HUB_FILES["timm/pvt_v2_b0.in1k"], sha256=_sha(data)))
    model = create_model("pvt_v2_b0", weights="timm/pvt_v2_b0.in1k", **SMALL)
    assert torch.equal(model.stages[1].patch_embed.proj.weight, sd["stages.1.patch_embed.proj.weight"])


def test_hub_falls_back_to_pytorch_model_bin(tmp_path: Path, online_hub) -> None:
    model = create_model("pvt_v2_b0", **SMALL)
    path = save_weights(model, tmp_path / "w.bin", format="hf")
    calls = online_hub({"pytorch_model.bin": (path.read_bytes(), None)})
    loaded = create_model("pvt_v2_b0", weights="hf-hub:someone/b0", **SMALL)
    assert calls == ["model.safetensors", "pytorch_model.bin"]
    assert torch.equal(loaded.head.weight, model.head.weight)
    online_hub({})
    with pytest.raises(CheckpointError, match="has no model.safetensors nor pytorch_model.bin"):
        create_model("pvt_v2_b0", weights="hf-hub:someone/empty", **SMALL)


# --- pvtv2 weights ------------------------------------------------------------------------------------------
def test_weights_command(torch_cache: Path, hub_cache, capsys: pytest.CaptureFixture,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    torch_cache.mkdir(parents=True)
    (torch_cache / "pvt_small.pth").write_bytes(b"v1 small")
    hub_cache("timm/pvt_v2_b5.in1k", "model.safetensors", b"b5")
    assert cli(["weights"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["pvt_small.pth"].split()[1:] == ["pvt_v1_small", "official", "93", "unrecorded", "yes"]
    assert lines["pvt_v2_b0.pth"].endswith("no")
    b5 = lines["hf-hub:timm/pvt_v2_b5.in1k"]
    assert "070ea6f6e2b9c06f" in b5 and b5.endswith("yes")
    assert "hf-hub:OpenGVLab/pvt_v2_b2_linear" in lines
    monkeypatch.setitem(release.RELEASES, "pvt_v1_small",
                        dataclasses.replace(release.RELEASES["pvt_v1_small"], sha256=_sha(b"v1 small")))
    assert cli(["weights", "pvt_v1_*", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "pvt_small.pth" in out and out.count(" ok") == 1 and "pvt_v2" not in out
    assert cli(["weights", "nothing*"]) == 2
