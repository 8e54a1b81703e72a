"""learning_curves.png from a run's CSV logs (all parts of a resumed run)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def plot_learning_curves(run_dir: Path) -> Optional[Path]:
    """learning_curves.png from the CSV log: training loss and validation Dice per epoch."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted((run_dir / "logs").glob("metrics.part*.csv"), key=lambda p: int(p.stem.split("part")[1]))
    logs += [p for p in [run_dir / "logs" / "metrics.csv"] if p.is_file()]
    if not logs:
        return None
    rows = [r for p in logs for r in csv.DictReader(p.open())]
    def series(key):
        pts = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return zip(*pts) if pts else ((), ())
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in [("train/loss_epoch", "total"), ("train/loss_sup_epoch", "supervised"),
                       ("train/loss_cons_epoch", "consistency")]:
        xs, ys = series(key)
        if xs:
            a1.plot(xs, ys, marker="o", ms=3, label=label)
    a1.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    a1.legend()
    keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.count("/") == 2})
    for key in keys:
        xs, ys = series(key)
        if xs:
            a2.plot(xs, ys, marker="o", ms=3, label=key[4:], ls="-" if "teacher" in key or "mean_fg" in key else "--")
    a2.set(xlabel="epoch", ylabel="Dice (hard masks, pooled)", title="Validation Dice", ylim=(0, 1))
    a2.legend(fontsize=7)
    fig.tight_layout()
    out = run_dir / "learning_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
