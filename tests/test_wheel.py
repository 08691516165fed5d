"""The package as users install it: sdist and wheel built, the wheel installed into a fresh virtual environment.

Nothing is downloaded: the build runs without isolation (setuptools and build come with ``make``'s set-up), the
wheel goes in with ``--no-deps --no-index``, and the fresh environment sees the set-up's torch & co. through a path
file placed *after* its own site-packages (so ``pvtv2`` itself can only come from the wheel; the repository's
``src/`` is on no path).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _run(cmd: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist + wheel (the wheel built from the sdist, as ``python -m build`` does), installed into a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)], cwd=root)
    wheels, sdists = sorted(dist.glob("pvtv2-*.whl")), sorted(dist.glob("pvtv2-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist, got {os.listdir(dist)}"
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
         cwd=root)
    # the set-up's packages (torch, torchvision, ...) after the fresh environment's own site-packages
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    (site / "zz_setup_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return {"wheel": wheels[0], "sdist": sdists[0], "env": env_dir, "python": py, "root": root}


def test_wheel_holds_the_package_data_and_the_entry_point(built: dict[str, Path]) -> None:
    names = zipfile.ZipFile(built["wheel"]).namelist()
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["pvtv2"]:
        assert fnmatch.filter(names, f"pvtv2/{pattern}"), f"package data pvtv2/{pattern} missing from the wheel"
    for required in ("pvtv2/py.typed", "pvtv2/serve/page.html", "pvtv2/serve/page.js", "pvtv2/cli/__init__.py"):
        assert required in names, f"{required} missing from the wheel"
    ep = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(built["wheel"]).read(ep).decode()
    assert re.search(r"^pvtv2\s*=\s*pvtv2\.cli:main$", entry_points, re.M), entry_points
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "docs/"))], "repository folders in the wheel"


def test_wheel_metadata_declares_ranges_not_pins(built: dict[str, Path]) -> None:
    names = zipfile.ZipFile(built["wheel"]).namelist()
    meta = zipfile.ZipFile(built["wheel"]).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = re.findall(r"^Requires-Dist: (.+)$", meta, re.M)
    core = {r.split(";")[0].strip() for r in requires if "extra ==" not in r}
    torch_req = [r for r in core if re.match(r"torch\b", r) and not r.startswith("torchvision")]
    assert torch_req and all(">=" in r and "==" not in r for r in torch_req), torch_req
    assert not [r for r in core if "==" in r], f"exact pins in the install requirements: {core}"


def test_installed_wheel_runs(built: dict[str, Path], tmp_path: Path) -> None:
    bindir = built["env"] / "bin"
    assert (bindir / "pvtv2").exists(), "the pvtv2 console script was not installed"
    out = _run([str(bindir / "pvtv2"), "--help"], cwd=tmp_path).stdout
    assert "usage: pvtv2" in out and "det" in out
    out = _run([str(bindir / "pvtv2"), "models"], cwd=tmp_path).stdout
    assert "pvt_v2_b0" in out and "pvt_v2_b2_li" in out
    script = """
import json, sys, torch, pvtv2
from pathlib import Path
from importlib.resources import files
from pvtv2.detection import build_detector
m = pvtv2.create_model("pvt_v2_b0", num_classes=10)
pvtv2.save_weights(m, "b0.safetensors")
m2 = pvtv2.create_model("pvt_v2_b0", num_classes=10)
pvtv2.load_weights(m2, "b0.safetensors")
x = torch.randn(1, 3, 64, 64)
m.eval(); m2.eval()
same = bool(torch.equal(m(x), m2(x)))
det = build_detector("retinanet", backbone="pvt_v2_b0", num_classes=3, fpn_channels=32).eval()
with torch.inference_mode():
    out = det([torch.rand(3, 96, 128)])
print(json.dumps({"file": pvtv2.__file__, "same": same, "keys": sorted(out[0]),
                  "typed": files("pvtv2").joinpath("py.typed").is_file()}))
"""
    got = json.loads(_run([str(built["python"]), "-c", script], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert Path(got["file"]).is_relative_to(built["env"]), f"pvtv2 was imported from {got['file']}, not the wheel"
    assert got["same"] and got["typed"]
    assert {"boxes", "labels", "scores"} <= set(got["keys"])
