"""Published ImageNet-1K weights: the authors' released files and the Hugging Face Hub copies, with what is known
about each file (size, SHA-256) and how its inputs were prepared. Data only: the architecture of each name is in
:mod:`pvtv2.models.registry`, downloading and checking in :mod:`pvtv2.weights.download` and :mod:`pvtv2.weights.hub`.

Sources of the numbers:

* URLs: the v2 files as timm's ``pvt_v2.py`` first pointed to them; the v1 files (``pvt_tiny.pth`` ...
  ``pvt_large.pth``) sit in the same GitHub release, as mmdetection's
  ``configs/pvt/retinanet_pvt-{t,s,m,l}_fpn_1x_coco.py`` load them
  (``https://github.com/whai362/PVT/releases/download/v2/pvt_small.pth``).
* Sizes: the authors' README tables (whai362/PVT ``README.md`` and ``classification/README.md``, branch v2) label
  each download link with its size in MB (14M for B0 ... 313M for B5; 51M ... 234M for v1); those links go to Google
  Drive copies of the same checkpoints. Rounded: a size check needs the exact byte count, which is not published.
* SHA-256 of the release files: **not recorded**. Neither the README nor the release page publishes a hash, and the
  files could not be downloaded where this table was written (no internet), so no hash is checked for them; a
  download logs the SHA-256 it got so that it can be recorded here.
* Hub files: SHA-256 and size as each file's page on huggingface.co lists them ("Git LFS details" of
  ``huggingface.co/<repo>/blob/main/model.safetensors``); ``None`` where that page was not available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RELEASE_URL = "https://github.com/whai362/PVT/releases/download/v2/{file}"

# The released evaluation protocol: resize the shorter side to 256 (bicubic), centre-crop 224, ImageNet mean/std.
IMAGENET_EVAL: dict[str, Any] = {"kind": "imagenet", "size": 224, "crop_pct": 0.875, "interpolation": "bicubic"}


@dataclass(frozen=True)
class Release:
    """One released checkpoint (1000-class ImageNet head).

    Attributes:
        name: the registered model name it fits.
        file: file name in the release (also its name in torch.hub's cache).
        top1: ImageNet-1K top-1 at 224 as the authors' README gives it.
        approx_mb: download size in MB as the authors' README labels it (rounded).
        sha256: full SHA-256 of the file, checked after every download; ``None`` when unknown.
        paper_top1: the paper's figure (Table 2), where it differs from ``top1``.
        preprocess: the evaluation preprocessing the figure was measured with.
    """

    name: str
    file: str
    top1: float
    approx_mb: int
    sha256: str | None = None
    paper_top1: float | None = None
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(IMAGENET_EVAL))

    @property
    def url(self) -> str:
        return RELEASE_URL.format(file=self.file)


RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("pvt_v2_b0", "pvt_v2_b0.pth", 70.5, 14),
    Release("pvt_v2_b1", "pvt_v2_b1.pth", 78.7, 54),
    Release("pvt_v2_b2", "pvt_v2_b2.pth", 82.0, 97),
    Release("pvt_v2_b2_li", "pvt_v2_b2_li.pth", 82.1, 86),
    Release("pvt_v2_b3", "pvt_v2_b3.pth", 83.1, 173, paper_top1=83.2),
    Release("pvt_v2_b4", "pvt_v2_b4.pth", 83.6, 239),
    Release("pvt_v2_b5", "pvt_v2_b5.pth", 83.8, 313),
    Release("pvt_v1_tiny", "pvt_tiny.pth", 75.1, 51),
    Release("pvt_v1_small", "pvt_small.pth", 79.8, 93),
    Release("pvt_v1_medium", "pvt_medium.pth", 81.2, 168),
    Release("pvt_v1_large", "pvt_large.pth", 81.7, 234),
)}


def release(name: str) -> Release | None:
    """The released checkpoint of ``name``, or ``None`` when the authors released none."""
    return RELEASES.get(name)


@dataclass(frozen=True)
class HubFile:
    """A copy of the released ImageNet weights on the Hugging Face Hub.

    Attributes:
        repo: the Hub repository (``weights="hf-hub:<repo>"``, or the bare name).
        name: the registered model name it fits.
        layout: its key layout (a :data:`pvtv2.weights.FORMATS` name): ``timm`` for timm's repos, ``hf`` for the
            transformers ``PvtV2ForImageClassification`` repos.
        filename: the weights file in the repository.
        sha256: full SHA-256 of that file as the Hub lists it; ``None`` when unknown.
        approx_mb: its size in MB as the Hub lists it (rounded).
    """

    repo: str
    name: str
    layout: str
    filename: str = "model.safetensors"
    sha256: str | None = None
    approx_mb: float | None = None


def _timm(name: str, sha256: str | None, mb: float | None) -> HubFile:
    return HubFile(f"timm/{name}.in1k", name, "timm", sha256=sha256, approx_mb=mb)


def _opengvlab(repo: str, name: str, sha256: str, mb: float) -> HubFile:
    return HubFile(f"OpenGVLab/{repo}", name, "hf", sha256=sha256, approx_mb=mb)


HUB_FILES: dict[str, HubFile] = {h.repo: h for h in (
    _timm("pvt_v2_b0", "d0927f8c963fa7ae1ca6cd459449a076a954c561245ca6025103fceffd2df34c", 14.7),
    _timm("pvt_v2_b1", "0cb38d3df58e50bb591e99ded2a1a2a02bc807415e9bed4d4076428239112caa", 56.1),
    _timm("pvt_v2_b2", "0bff520d64b91bdbb35f2b5bff2b62d35a9d9c6d6a5056e683f1e7ce556d0e5e", 101),
    _timm("pvt_v2_b2_li", None, 90.2),
    _timm("pvt_v2_b3", None, 181),
    _timm("pvt_v2_b4", None, None),
    _timm("pvt_v2_b5", "070ea6f6e2b9c06fa8dc9ba943c04d5fb74df01f2cb328d95ae65c94c304176b", 328),
    _opengvlab("pvt_v2_b0", "pvt_v2_b0", "83f9f76db888d15a114a2a4f29f7a951cd22faaa461ded0e64d97c120bcc6314", 14.7),
    _opengvlab("pvt_v2_b1", "pvt_v2_b1", "ce664e249b8d37bff2b212d7a32c29bff7ff8b6ea01f99ddb830b5465b347c5d", 56.1),
    _opengvlab("pvt_v2_b2", "pvt_v2_b2", "7de92c6b5d39f1b50f7d4a3f45ec5c18c56f171b370f05c34d70ae977db0b61d", 101),
    _opengvlab("pvt_v2_b2_linear", "pvt_v2_b2_li",
               "446a8206dea5924c6c59b975a3dc7cc42fe1df81c095fe5308ded479112cad4d", 90.3),
    _opengvlab("pvt_v2_b3", "pvt_v2_b3", "5aa3abb052da631cf44ae71ee5996da1280be694c483597f58bc3b9a1a4ecfd2", 181),
    _opengvlab("pvt_v2_b4", "pvt_v2_b4", "8ff81ec569db6a14bd1d3cd134300ef470295e15c68a3d05ea4c0d07df3b1d38", 250),
    _opengvlab("pvt_v2_b5", "pvt_v2_b5", "ccbc55cf99f06303b7bf5c7a34f9774e41143e127f17eedbb922f2d3d1755312", 328),
)}
