"""Dense inference on the scenes: the network in PyTorch (fp32, bf16 autocast) against OpenVINO (fp32, bf16).

    python scripts/dense_openvino_speed.py RETINANET_RUN/last.pth SEMFPN_RUN/last.pth [--threads 2]

Times a whole RetinaNet (backbone and FPN by each backend, heads and NMS in PyTorch) on 8 scenes of 256x256, and the
Semantic FPN network on the same batch, interleaved (medians of 5 rounds).
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from pvtv2.bench.measure import interleaved  # noqa: E402
from pvtv2.detection.inference import load_detector, run_backbone_with  # noqa: E402
from pvtv2.segmentation import load_segmentor  # noqa: E402
from pvtv2.runtime import as_module  # noqa: E402
from pvtv2.precision import autocast_module  # noqa: E402
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("detector")
ap.add_argument("segmentor")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
x = torch.rand(8, 3, 256, 256)
det, _ = load_detector(args.detector)
dets = {b + '-' + p: run_backbone_with(copy.deepcopy(det), b, p) for b in ('torch', 'openvino') for p in ('fp32', 'bf16')}
imgs = list(x)
calls = {k: (lambda m=m: m(imgs)) for k, m in dets.items()}
with torch.inference_mode():
    t = interleaved(calls, 5, 1, torch.device('cpu'))
print('RetinaNet-B0 (whole detector, batch 8 of 256x256 scenes) ms:', {k: round(v.median * 1e3) for k, v in t.items()})
seg, _ = load_segmentor(args.segmentor)
segs = {'torch-fp32': seg.eval(), 'torch-bf16': autocast_module(copy.deepcopy(seg).eval(), 'bf16', 'cpu'),
        'openvino-fp32': as_module(seg, 'openvino'), 'openvino-bf16': as_module(seg, 'openvino', precision='bf16')}
xn = (x - 0.45) / 0.25
calls = {k: (lambda m=m: m(xn)) for k, m in segs.items()}
with torch.inference_mode():
    t = interleaved(calls, 5, 1, torch.device('cpu'))
print('Semantic FPN-B0 (network, batch 8 of 256x256) ms:', {k: round(v.median * 1e3) for k, v in t.items()})
