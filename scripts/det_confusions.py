"""What limits a detector: finding the items or naming them? Per-class AP, class-agnostic AP, and the confusions.

    python scripts/det_confusions.py ~/.cache/pvtv2/scenes/<set>/annotations/instances_test.json RUN/results.json

``results.json`` is the COCO detections file a run's last evaluation writes (``pvtv2 det train`` / ``det eval
--out``). Printed: AP / AP50 / AR100 with the classes and class-agnostic (pycocotools ``useCats=0``, the same
detections), AP per class, and for each ground-truth item the top-scored detection of any class overlapping it at
IoU >= 0.5: found and named right, found and named wrong (the largest confusions), or not found.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections import Counter

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def stats(gt: COCO, dt: COCO, use_cats: bool, cat: int | None = None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt, dt, "bbox")
        e.params.useCats = int(use_cats)
        if cat is not None:
            e.params.catIds = [cat]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def matches(gt: COCO, dt: COCO) -> tuple[Counter, Counter]:
    """``{(true class, named class): items}`` for the items some detection overlaps at IoU >= 0.5 (the top-scored
    such detection names it), and ``{true class: items}`` that none overlaps."""
    named, missed = Counter(), Counter()
    for img in gt.getImgIds():
        truth = gt.loadAnns(gt.getAnnIds(imgIds=img, iscrowd=False))
        found = dt.loadAnns(dt.getAnnIds(imgIds=img))
        if not found:
            missed.update(a["category_id"] for a in truth)
            continue
        if not truth:
            continue
        iou = mask_utils.iou([d["bbox"] for d in found], [a["bbox"] for a in truth], [0] * len(truth))  # (D, G)
        scores = np.array([d["score"] for d in found])
        for j, a in enumerate(truth):
            hits = np.flatnonzero(iou[:, j] >= 0.5)
            if len(hits) == 0:
                missed[a["category_id"]] += 1
            else:
                named[(a["category_id"], found[hits[np.argmax(scores[hits])]]["category_id"])] += 1
    return named, missed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("annotations", help="the ground truth (COCO instances JSON)")
    ap.add_argument("results", help="the detections (COCO results JSON)")
    args = ap.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(args.annotations)
        dt = gt.loadRes(args.results)
    s, a = stats(gt, dt, True), stats(gt, dt, False)
    print(f"with classes: AP {s[0]:.3f} AP50 {s[1]:.3f} AR100 {s[8]:.3f}; "
          f"class-agnostic: AP {a[0]:.3f} AP50 {a[1]:.3f} AR100 {a[8]:.3f}")
    name = {c: gt.cats[c]["name"] for c in gt.getCatIds()}
    for c in gt.getCatIds():
        st = stats(gt, dt, True, c)
        print(f"  {name[c]:<12} AP {st[0]:.3f} AP50 {st[1]:.3f}")
    named, missed = matches(gt, dt)
    items = Counter(missed)
    for (c, _), n in named.items():
        items[c] += n
    wrong = sorted(((n / items[c], c, p, n) for (c, p), n in named.items() if c != p), reverse=True)[:8]
    print("named as another class (share of the true class's items): "
          + ", ".join(f"{name[c]} as {name[p]} {100 * s:.0f}% ({n})" for s, c, p, n in wrong))
    print("not found: " + ", ".join(f"{name[c]} {100 * n / items[c]:.0f}%"
                                    for c, n in sorted(missed.items(), key=lambda kv: -kv[1] / items[kv[0]])))
    right = sum(n for (c, p), n in named.items() if c == p)
    total = sum(items.values())
    print(f"items found and named right {100 * right / total:.1f}%, found but named wrong "
          f"{100 * (sum(named.values()) - right) / total:.1f}%, not found {100 * sum(missed.values()) / total:.1f}%")


if __name__ == "__main__":
    main()
