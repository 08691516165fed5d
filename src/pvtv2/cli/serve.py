"""``pvtv2 serve``: a local web page to try the models on your photos (classes, boxes and masks, segmentation,
attention maps), offline, on 127.0.0.1 unless ``--host`` says otherwise."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="a local web page to try the models on photos (classes, boxes, masks, attention)",
        description="Start a web server with one page: drop a photo (or pick a bundled example) and see the top-5 "
                    "classes, the detections with a score slider, the segmentation overlay and the attention map "
                    "of the point you click. Each model defaults to a B0 with random weights (labelled so).",
    )
    p.add_argument("--classifier", default="pvt_v2_b0", metavar="CKPT|NAME|none",
                   help="a 'pvtv2 train' checkpoint, a weights file of --classifier-model, 'official', or a model "
                        "name for random weights (default: pvt_v2_b0, random weights); it also gives the attention "
                        "maps")
    p.add_argument("--classifier-model", default="pvt_v2_b0", metavar="NAME",
                   help="the model of a --classifier weights file or 'official' (default: pvt_v2_b0)")
    p.add_argument("--detector", default="random", metavar="CKPT|random|none",
                   help="a detection checkpoint ('pvtv2 det train', save_detector, released mmdet) or 'random' "
                        "(default: Mask R-CNN-B0, COCO classes, random weights)")
    p.add_argument("--segmentor", default="random", metavar="CKPT|random|none",
                   help="a segmentation checkpoint ('pvtv2 seg train', save_segmentor, released mmseg) or 'random' "
                        "(default: Semantic FPN-B0, ADE20K classes, random weights)")
    p.add_argument("--runs", default=None, metavar="DIR",
                   help="checkpoints the page can switch each panel to: */best.pth, */last.pth and *.pth / "
                        "*.safetensors up to 3 levels under DIR, at most 50 files (default: ./runs if it exists)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: a free one, printed)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--det-size", type=int, default=None, metavar="PX",
                   help="detector test size, shorter side (default: the checkpoint's; 640 for random)")
    p.add_argument("--seg-size", type=int, default=512, metavar="PX",
                   help="segmentor test size, shorter side (default: 512)")
    p.add_argument("--work-side", type=int, default=1024, metavar="PX",
                   help="uploads are shrunk to this longer side before any model sees them (default: 1024)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    import torch

    from ..serve.app import make_server
    from pathlib import Path

    from ..serve.models import load_models

    runs = args.runs if args.runs is not None else ("runs" if Path("runs").is_dir() else None)
    if runs and not Path(runs).is_dir():
        log.warning("--runs %s is not a directory: the page offers no checkpoints to switch to", runs)
        runs = None
    if args.threads:
        torch.set_num_threads(args.threads)
    served = load_models(args.classifier, args.detector, args.segmentor, classifier_model=args.classifier_model,
                         det_size=args.det_size, seg_size=args.seg_size, runs=runs)
    server = make_server(served, args.host, args.port, work_side=args.work_side)
    for p in served.panels.values():
        how = "the classifier's blocks" if p.task == "attention" else f"loaded in {p.load_ms:.0f} ms"
        print(f"{p.task:<10} {p.name} ({p.source}), {how}")
    found = sum(c.id.startswith("run") for v in served.choices.values() for c in v)
    if runs:
        print(f"{found} checkpoint(s) under {runs} to choose from on the page")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: other machines can reach the page and run the models", args.host)
    print(f"serving {server.url} (ready in {time.perf_counter() - t0:.1f} s; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
