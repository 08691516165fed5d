"""The other implementations the benchmark runs beside ours, loaded with the same weights: timm and Hugging Face."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch
from torch import nn

from ..export.openvino import OpenVINORunner
from ..models import PVTConfig, PyramidVisionTransformer

log = logging.getLogger(__name__)


def timm_model(model: PyramidVisionTransformer, name: str) -> nn.Module | None:
    """timm's implementation of ``name`` with ``model``'s weights (None if timm or the variant is missing)."""
    try:
        import timm
    except ImportError:
        return None
    if model.cfg.pos_embed or name not in timm.list_models("pvt_v2_*"):
        return None
    from ..weights import convert

    peer = timm.create_model(name, num_classes=model.num_classes, depths=model.cfg.depths,
                             drop_path_rate=model.cfg.drop_path_rate)
    peer.load_state_dict(convert(model.state_dict(), "pvtv2", "timm"), strict=True)
    return peer.to(next(model.parameters()).device)


class HFLogits(nn.Module):
    """Hugging Face's ``PvtV2ForImageClassification`` called like ours: ``images -> logits``."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits


def hf_classifier(cfg: PVTConfig, num_classes: int) -> nn.Module:
    """A randomly initialised ``transformers.PvtV2ForImageClassification`` equivalent to ``cfg``.

    HF uses eps 1e-6 in every LayerNorm, the released code 1e-5 in the patch embeddings and spatial reductions; they
    are aligned so that comparisons measure arithmetic and weight conversion, not a different epsilon.
    """
    import transformers

    hf_cfg = transformers.PvtV2Config(
        hidden_sizes=list(cfg.embed_dims),
        depths=list(cfg.depths),
        num_attention_heads=list(cfg.num_heads),
        mlp_ratios=list(cfg.mlp_ratios),
        sr_ratios=list(cfg.sr_ratios),
        linear_attention=cfg.attn_mode == "linear",
        drop_path_rate=cfg.drop_path_rate,
        num_labels=num_classes,
    )
    hf = transformers.PvtV2ForImageClassification(hf_cfg)
    for name, mod in hf.named_modules():
        if isinstance(mod, nn.LayerNorm) and name.endswith(("patch_embedding.layer_norm", "attention.layer_norm")):
            mod.eps = 1e-5
    return hf


def hf_model(model: PyramidVisionTransformer) -> nn.Module | None:
    """Hugging Face transformers' PVT v2 with an equivalent config and ``model``'s weights (None if unavailable)."""
    if importlib.util.find_spec("transformers") is None:
        return None
    cfg = model.cfg
    if cfg.pos_embed or not cfg.overlap_patch_embed or not cfg.conv_ffn or model.num_classes == 0:
        return None
    from ..weights import convert

    hf = hf_classifier(cfg, model.num_classes)
    hf.load_state_dict(convert(model.state_dict(), "pvtv2", "hf"), strict=True)
    return HFLogits(hf).to(next(model.parameters()).device)


def onnxruntime_runner(module: nn.Module, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A peer exported to ONNX and run in onnxruntime (dynamic batch; dynamic H/W when its code allows it)."""
    from ..export.onnx import onnx_session, spec_to_onnx
    from ..export.spec import ExportSpec

    spec = ExportSpec(module.eval(), ("logits",))
    try:
        data = spec_to_onnx(spec, size, dynamic=True)
    except Exception as e:  # noqa: BLE001 - a peer's code may not trace with symbolic sizes
        log.debug("dynamic export of %s failed (%s); exporting at %s", type(module).__name__, e, size)
        data = spec_to_onnx(spec, size, dynamic=False)
    session = onnx_session(data)
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def openvino_runner(module: nn.Module, precision: str) -> OpenVINORunner | None:
    """:class:`~pvtv2.export.openvino.OpenVINORunner` of ``module`` (the same converter and compiled-model cache as
    our ``openvino`` backend), or None when OpenVINO is not installed (``pip install 'pvtv2[openvino]'``).

    A peer is traced once per input shape (``per_shape``), as its users would with ``ov.convert_model``; the bf16
    hint is given as asked (OpenVINO emulates it where the CPU has no native bf16; ``precision`` says what ran).
    """
    if importlib.util.find_spec("openvino") is None:
        return None
    return OpenVINORunner(module, precision, per_shape=True)
