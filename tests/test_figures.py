"""The package's category plots stay readable: no two tick labels overlap, and every text lies inside the figure
(texts placed in an axes inside that axes), for the longest names they are drawn with (all registered detectors,
the longest ImageNet names, many long class names)."""

from __future__ import annotations

import itertools
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from PIL import Image  # noqa: E402

from pvtv2.detection import DETECTORS, get_detector  # noqa: E402
from pvtv2.detection.compare import plot_table  # noqa: E402


def _in_view_tick_labels(axis) -> list[Text]:
    """The drawn tick labels of ``axis``: visible, non-empty, at a tick inside the view limits."""
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-9
    labels = []
    for tick, loc in zip(axis.get_major_ticks(), axis.get_majorticklocs()):
        if lo - eps <= loc <= hi + eps:
            labels += [t for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text().strip()]
    return labels


def _inside(box: Bbox, outer: Bbox, slack: float = 1.0) -> bool:
    return (outer.x0 - slack <= box.x0 and box.x1 <= outer.x1 + slack
            and outer.y0 - slack <= box.y0 and box.y1 <= outer.y1 + slack)


def _overlapping(texts: list[Text], renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def check_readable(fig: Figure) -> int:
    """Draw ``fig`` (Agg) and assert that its tick labels do not overlap one another (within and across axes), that
    the texts placed in an axes (values, annotations) do not overlap one another and stay inside it, that legend
    entries do not overlap, and that every drawn text lies inside the figure. Returns the number of tick labels."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = [t for ax in fig.axes if ax.axison for axis in (ax.xaxis, ax.yaxis) for t in _in_view_tick_labels(axis)]
    assert _overlapping(ticks, renderer) == []
    for ax in fig.axes:
        assert _overlapping(list(ax.texts), renderer) == []
        for t in ax.texts:
            assert _inside(t.get_window_extent(renderer), ax.get_window_extent(renderer)), t.get_text()
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]:
        assert _overlapping(legend.get_texts(), renderer) == []
    every_tick_label = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for tick in axis.get_major_ticks()
                        for t in (tick.label1, tick.label2)}
    drawn = {id(t) for t in ticks}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and (id(t) not in every_tick_label or id(t) in drawn)]
    for t in texts:
        assert _inside(t.get_window_extent(renderer), fig.bbox), f"{t.get_text()!r} leaves the figure"
    return len(ticks)


def _rows(names: list[str]) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name in names:
        ap = float(rng.uniform(0.001, 0.4))
        row = {"arch": name, "bbox_AP": ap, "bbox_AP50": min(1.0, ap * 1.8), "infer_ms": float(rng.uniform(20, 500))}
        if name in DETECTORS and get_detector(name).masks:
            row["segm_AP"] = ap * 1.1
        rows.append(row)
    return rows


def test_det_compare_figure_with_every_registered_detector():
    names = list(DETECTORS)
    assert len(names) >= 7
    fig = plot_table(_rows(names))
    assert check_readable(fig) >= len(names)
    ax_ap = fig.axes[0]
    assert [t.get_text() for t in ax_ap.get_yticklabels()] == names  # every detector named once, in order


def test_det_compare_figure_with_long_names_and_missing_values():
    names = [f"{n}_with_a_much_longer_variant_name" for n in DETECTORS] + ["x"]
    rows = _rows(names)
    rows[0]["infer_ms"] = math.nan  # no evaluation set: nothing timed
    del rows[1]["bbox_AP50"]
    rows[2]["segm_AP"] = 0.5  # mask AP beyond every box bar
    check_readable(plot_table(rows))


def test_classification_prediction_bars(tmp_path):
    from pvtv2.classification.inference import imagenet_classes, plot_predictions

    _, lemmas = imagenet_classes()
    longest = sorted(lemmas, key=len)[-20:]
    image = tmp_path / "a.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(image)
    preds = [[(n, 0.95 / (i + 1)) for i, n in enumerate(longest)], [(n, 0.3) for n in lemmas[:5]]]
    assert check_readable(plot_predictions([image, image], preds, title="top-k")) >= 25


def test_segmentation_legend(tmp_path, monkeypatch):
    from pvtv2.segmentation import visualize

    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    names = ["background"] + [f"chest of drawers, chest, bureau, dresser {i}" if i % 3 == 0 else f"class {i}"
                              for i in range(1, 25)]
    h, w = 64, 96
    labels = torch.arange(h * w).reshape(h, w) * 25 // (h * w)
    image = torch.full((3, h, w), 100, dtype=torch.uint8)
    path = visualize.save_visualization(tmp_path / "vis.png", image, labels, names, title="many long classes")
    assert path.is_file() and len(saved) == 1
    check_readable(saved[0])
    assert len(saved[0].legends[0].get_texts()) == 20  # max_legend


@pytest.mark.parametrize("n", [1, 3])
def test_det_compare_figure_few_rows(n):
    check_readable(plot_table(_rows(list(DETECTORS)[:n])))
