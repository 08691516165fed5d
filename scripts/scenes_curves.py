"""Held-out curves of long scenes runs, against optimizer steps and against the run's CPU minutes.

    python scripts/scenes_curves.py RUN_DIR [RUN_DIR ...] --out docs/figures/scenes_convergence.png

Each RUN_DIR is a ``pvtv2 det train`` / ``pvtv2 seg train`` run directory; its ``metrics.jsonl`` is read (a resumed
run keeps all its records). One row per run: the task's held-out metrics against steps, then against CPU minutes
(``cpu_minutes``: the training process's CPU time over every resumed part, evaluations included). Also prints the
records as a Markdown table, the form docs/scenes.md gives them in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# metric key -> label, per task (the keys metrics.jsonl holds)
PANELS = {
    "det": {"bbox_AP": "box AP", "bbox_AP50": "AP50", "bbox_AP75": "AP75", "bbox_APs": "AP_S", "bbox_APm": "AP_M",
            "bbox_APl": "AP_L", "segm_AP": "mask AP"},
    "seg": {"val_miou": "mIoU", "val_pixel_acc": "pixel acc", "val_macc": "mAcc"},
}


def records(run: Path) -> list[dict]:
    """The evaluated records of a run, in step order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "bbox_AP" in r or "val_miou" in r]


def task_of(rows: list[dict]) -> str:
    return "det" if "bbox_AP" in rows[0] else "seg"


def table(run: Path, rows: list[dict]) -> str:
    seg = task_of(rows) == "seg"
    keys = [k for k in PANELS[task_of(rows)] if k in rows[0]]
    head = ["step", "epoch", *(PANELS[task_of(rows)][k] for k in keys), "train loss", "CPU min", "wall min"]
    lines = [f"{run}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["step"]), f"{r['epoch']:.0f}", *(f"{100 * r[k]:.2f}%" if seg else f"{r[k]:.3f}" for k in keys),
                 f"{r.get('train_loss', float('nan')):.3f}", f"{r.get('cpu_minutes', float('nan')):.0f}",
                 f"{r.get('run_minutes', float('nan')):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", nargs="*", default=None, help="one title per run (default: the run directory's name)")
    args = p.parse_args()
    fig, axes = plt.subplots(len(args.runs), 2, figsize=(11, 3.6 * len(args.runs)), squeeze=False)
    for i, run in enumerate(args.runs):
        rows = records(run)
        if not rows:
            raise SystemExit(f"{run}/metrics.jsonl has no evaluated record yet")
        print(table(run, rows), end="\n\n")
        title = args.title[i] if args.title else run.name
        for ax, x, xlabel in ((axes[i][0], "step", "optimizer steps (batch 8)"),
                              (axes[i][1], "cpu_minutes", "CPU minutes of the training process")):
            for key, label in PANELS[task_of(rows)].items():
                pts = [(r[x], r[key] * (100 if task_of(rows) == "seg" else 1)) for r in rows if key in r and x in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=label)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("held-out COCO AP" if task_of(rows) == "det" else "held-out %")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
