"""The mmdet / mmseg oracle itself: compiled operators routed to torchvision, released configs build with the
parameter counts mmdet reports for them, checkpoints saved in mmdet's layout."""

from __future__ import annotations

import pytest
import torch

import mmdet_oracle as O


def test_compiled_ops_routed_to_torchvision() -> None:
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    dets, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2] and dets.shape == (2, 5)
    feats = torch.arange(64.0).reshape(1, 1, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    out = RoIAlign(2, spatial_scale=1.0, sampling_ratio=0, aligned=True)(feats, rois)
    # feats[y, x] = 8y + x. aligned=True shifts the RoI by -0.5 px to (0.5, 4.5); 2x2 samples per bin at 1, 2 | 3, 4
    # (aligned=False would sample at 1.5, 2.5 | 3.5, 4.5)
    assert torch.allclose(out.flatten(), torch.tensor([13.5, 15.5, 29.5, 31.5]))
    from mmcv.utils import ext_loader

    with pytest.raises(NotImplementedError, match="deform_conv"):
        ext_loader.load_ext("_ext", []).deform_conv_forward()


def test_released_configs_build_with_mmdets_counts(tmp_path) -> None:
    name = "pvt_v2_b0"
    cfg = O.retinanet_config(O.oracle_backbone(name), O.stage_channels(name))
    model = O.build_mmdet(cfg)
    assert O.param_count(model) == 12_947_028  # 12.947 M: mmdet 2.13's count of retinanet_pvt_v2_b0_fpn_1x_coco
    path = O.save_mmdet_checkpoint(model, tmp_path / "r.pth", config=O.with_backbone(cfg, O.released_backbone(name)))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["meta"]["mmdet_version"] == "2.13.0" and ckpt["meta"]["CLASSES"][0] == "person"
    assert "type='pvt_v2_b0'" in ckpt["meta"]["config"]
    sd = ckpt["state_dict"]
    assert sd["backbone.patch_embed1.proj.weight"].shape == (32, 3, 7, 7)
    assert sd["backbone.block1.0.mlp.dwconv.dwconv.weight"].shape == (256, 1, 3, 3)
    assert sd["bbox_head.retina_cls.weight"].shape == (9 * 80, 256, 3, 3)
    assert len(sd) == len(model.state_dict())


def _oracle_module_without_mmdet(tmp_path):
    """pytest on a one-test module that imports the oracle, with ``mmdet`` made unimportable (a stand-in package that
    raises ImportError, first on the path)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "fake" / "mmdet"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError('mmdet blocked by the test')\n")
    tests = Path(__file__).parent
    probe = tmp_path / "test_probe.py"
    probe.write_text("import mmdet_oracle\n\ndef test_probe():\n    assert mmdet_oracle.INSTALLED\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), str(tests)]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(probe)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_missing_oracle_fails_in_one_line_and_never_skips(tmp_path) -> None:
    done = _oracle_module_without_mmdet(tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    lines = [ln for ln in out.splitlines() if "oracle is needed" in ln]
    assert lines and "mmdet blocked by the test" in lines[0] and "make setup" in lines[0], out
    assert "skipped" not in out.splitlines()[-1], out
