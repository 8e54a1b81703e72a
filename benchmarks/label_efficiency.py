"""Label efficiency on synthetic OCT: supervised vs Mean Teacher at 5 %, 10 % and 25 % labelled volumes.

Data: the synthetic RETOUCH-like generator (``octseg.data.synthetic``), 72 volumes x 6 B-scans at
scale 0.5 (24 per vendor style), generator seed fixed (0), prepared at 128x128: the same bytes in
every run. Fixed held-out volumes for all runs: 9 validation and 15 test volumes (3 + 5 per
vendor, drawn once with a fixed seed); the other 48 volumes train.

Labelled subsets: for each seed, one vendor-interleaved random order of the 48 training volumes;
a fraction f labels its first max(1, round(f * 48)) volumes (5 % -> 2, 10 % -> 5, 25 % -> 12), so the
subsets are nested and both methods at one (fraction, seed) train on exactly the same labelled
volumes (one split file, ``PREPARED/splits/le-fF-sS.json``, used by both). Mean Teacher uses the
remaining training volumes as unlabelled data; supervised never sees them. The run seed (network
initialisation, batch order, augmentation) is the same seed for both methods.

Recipe: ``configs/demo_cpu.yaml`` (U-Net ResNet18 from scratch, dice+CE, AdamW 1e-3 cosine, batch
4 labelled + 4 unlabelled, EMA 0.99, consistency weight 1) with ``--epochs`` x ``--steps-per-epoch``
steps (default 20 x 30 = 600; the consistency ramp-up is set to a quarter of the epochs, as the
demo's 2 of 8). Checkpoint: ``best.ckpt``, selected on the validation volumes (for Mean Teacher on the
teacher's Dice); scored on the test volumes it never saw: per-class Dice of hard label maps pooled
over the test B-scans, and the mean over the three fluid classes ("mean foreground Dice").
Spread over seeds: mean, sample std (ddof=1) and min/max.

    python benchmarks/label_efficiency.py               # 3 fractions x 2 seeds x 2 methods, ~25 min on 2 idle cores
    python benchmarks/label_efficiency.py --quick       # smoke run, ~0.5 min
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import run_training, save_split, print_table, write_results  # noqa: E402

RECIPE = "demo_cpu"
SYNTH = dict(volumes=72, slices=6, scale=0.5, fluid_free_fraction=0.1)
SIZE = (128, 128)
DATA_SEED = 0          # the generator's seed: the data never changes between runs
HELDOUT_SEED = 12345   # draws the validation and test volumes, once
N_VAL, N_TEST = 9, 15  # volumes (divisible by the 3 vendor styles)
METHODS = ("supervised", "mean_teacher")
TARGET_GAIN_LOWEST = 0.05  # Mean Teacher over supervised (mean foreground Dice) at 5 %
QUICK = {"volumes": 24, "n_val": 3, "n_test": 6, "epochs": 1, "steps_per_epoch": 4,
         "fractions": [0.05, 0.25], "seeds": [0]}


def _quiet() -> None:
    """Keep the console to octseg's own lines: Lightning sets its loggers to INFO when imported."""
    import lightning.pytorch  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (".*LeafSpec.*", ".*litlogger.*", ".*does not have many workers.*",
                ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=msg)


# ----------------------------------------------------------------------------- data and splits


def prepare(workdir: Path, volumes: int):
    from octseg.data.prepare import prepare_dataset
    from octseg.data.prepared import PreparedDataset, is_prepared
    from octseg.data.synthetic import write_synthetic_dataset

    prepared = workdir / "prepared"
    if is_prepared(prepared):
        ds = PreparedDataset(prepared)
        if ds.meta.get("n_volumes") == volumes:
            return ds
        raise SystemExit(f"{prepared} holds another dataset ({ds.meta.get('n_volumes')} volumes); "
                         f"delete it or choose another --workdir")
    synth = dict(SYNTH, volumes=volumes)
    summary = write_synthetic_dataset(workdir / "synthetic", fmt="mhd", seed=DATA_SEED, progress=False, **synth)
    print(summary["text"])
    return prepare_dataset(workdir / "synthetic", prepared, size=SIZE, progress=False)


def _by_vendor(vols, vendor_of) -> dict:
    groups = defaultdict(list)
    for v in sorted(vols):
        groups[vendor_of[v]].append(v)
    return dict(sorted(groups.items()))


def heldout(ds, n_val: int, n_test: int) -> tuple[list, list, list]:
    """Fixed val/test volumes, an equal number per vendor; the rest train."""
    vendor_of = {s.volume: s.vendor or "" for s in ds.slices}
    groups = _by_vendor(vendor_of, vendor_of)
    rng = np.random.default_rng(HELDOUT_SEED)
    val, test, train = [], [], []
    k = len(groups)
    for g, vs in groups.items():
        vs = [vs[i] for i in rng.permutation(len(vs))]
        nv, nt = n_val // k, n_test // k
        val += vs[:nv]
        test += vs[nv:nv + nt]
        train += vs[nv + nt:]
    return sorted(train), sorted(val), sorted(test)


def labelled_order(train: list, vendor_of: dict, seed: int) -> list:
    """A seed's order of the training volumes, vendors interleaved (every prefix is balanced)."""
    rng = np.random.default_rng([seed, 7])
    groups = {g: [vs[i] for i in rng.permutation(len(vs))] for g, vs in _by_vendor(train, vendor_of).items()}
    vendors = [list(groups)[i] for i in rng.permutation(len(groups))]
    order = []
    for i in range(max(len(v) for v in groups.values())):
        order += [groups[g][i] for g in vendors if i < len(groups[g])]
    return order


def write_split(ds, name: str, labelled_vols, train, val, test, note: str) -> str:

    lab, v, t = set(labelled_vols), set(val), set(test)
    parts = {"labelled": [], "unlabelled": [], "val": [], "test": []}
    for s in ds.slices:
        part = ("val" if s.volume in v else "test" if s.volume in t else
                "labelled" if s.volume in lab and s.labelled else "unlabelled")
        parts[part].append(s.id)
    volumes = {"labelled": sorted(lab), "unlabelled": sorted(set(train) - lab), "val": sorted(v),
               "test": sorted(t), "train": sorted(train)}
    return save_split(ds, name, parts, volumes, note)


# ----------------------------------------------------------------------------- runs


def run_one(cfg, run_dir: Path) -> tuple[Path, dict]:
    """Train (or reuse/resume) one run; the best checkpoint is the one scored."""
    best, last, info = run_training(cfg, run_dir)
    return best, info


def score(ckpt: Path, ds, split_name: str) -> dict:
    from octseg.checkpoint import load_networks
    from octseg.data.splits import load_split, split_indices
    from octseg.metrics import score_networks

    rows = np.sort(split_indices(ds, load_split(ds, split_name))["test"])
    images, gt = np.asarray(ds.images[rows]), np.asarray(ds.masks[rows])
    vols = [ds.slices[r].volume for r in rows]
    nets, meta = load_networks(ckpt)
    reports = score_networks(nets, meta, images, gt, volumes=vols, class_names=list(ds.classes), batch=32)
    out = {}
    for weights, rep in reports.items():
        out[weights] = {
            "dice": {c: rep["pooled"]["dice"][c] for c in ds.classes[1:]},
            "mean_foreground": rep["mean_foreground_dice"]["pooled"],
            "mean_foreground_per_volume": rep["mean_foreground_dice"]["per_volume"],
            "default": weights == meta["default_weights"],
        }
    return out


def spread(values) -> dict:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def plot(path: Path, summary: dict, fractions, n_lab: dict, per_run: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.3))
    style = {"supervised": ("tab:blue", "o", "supervised"), "mean_teacher": ("tab:red", "s", "Mean Teacher (teacher)")}
    xs = np.array(fractions) * 100
    for k, (method, weights) in enumerate((("supervised", "student"), ("mean_teacher", "teacher"))):
        colour, marker, label = style[method]
        m = [summary[f"{f:g}"][method][weights]["mean_foreground"]["mean"] for f in fractions]
        s = [summary[f"{f:g}"][method][weights]["mean_foreground"]["std"] for f in fractions]
        off = 1.0 + (k - 0.5) * 0.05  # side by side on the log axis
        ax.errorbar(xs * off, m, yerr=s, color=colour, marker=marker, capsize=4, lw=1.8, label=label + " (mean ± std)")
        pts = [(r["fraction"] * 100 * off, r["scores"][weights]["mean_foreground"]) for r in per_run
               if r["method"] == method]
        if pts:
            ax.scatter(*zip(*pts), color=colour, alpha=0.35, s=14, marker=marker, label=f"{label}: each seed")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs, [f"{f:.0%}\n({n_lab[f'{f:g}']} vol)" for f in fractions])
    ax.set(xlabel="labelled training volumes", ylabel="mean foreground Dice (test, pooled)",
           title="Label efficiency on synthetic OCT (IRF, SRF, PED)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default benchmarks/results/label_efficiency.json; _quick with --quick)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="figure (default benchmarks/results/label_efficiency.png; _quick with --quick)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="data and run folders (default runs/bench-label-efficiency[-quick])")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.10, 0.25],
                    help="labelled fraction of the training volumes (at least one volume each)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps-per-epoch", type=int, default=30)
    ap.add_argument("--minutes", type=float, default=6.0,
                    help="per-run wall-clock cap, a safety net (default 6; a run takes ~1.5 (supervised) "
                         "to ~2.7 (Mean Teacher) min on 2 idle cores)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = ap.parse_args(argv)
    if any(not 0 < f <= 1 for f in args.fractions):
        ap.error("--fractions must be in (0, 1]")

    import torch

    torch.set_num_threads(args.threads)
    _quiet()
    from octseg.config import config_to_dict, load_config

    q = args.quick
    volumes = QUICK["volumes"] if q else SYNTH["volumes"]
    n_val, n_test = (QUICK["n_val"], QUICK["n_test"]) if q else (N_VAL, N_TEST)
    epochs = QUICK["epochs"] if q else args.epochs
    steps = QUICK["steps_per_epoch"] if q else args.steps_per_epoch
    fractions = sorted(QUICK["fractions"] if q else args.fractions)
    seeds = QUICK["seeds"] if q else args.seeds
    suffix = "_quick" if q else ""
    out_json = args.out or REPO / "benchmarks" / "results" / f"label_efficiency{suffix}.json"
    out_png = args.plot or REPO / "benchmarks" / "results" / f"label_efficiency{suffix}.png"
    workdir = (args.workdir or Path("runs") / f"bench-label-efficiency{'-quick' if q else ''}").absolute()
    workdir.mkdir(parents=True, exist_ok=True)

    t_all = time.time()
    ds = prepare(workdir, volumes)
    vendor_of = {s.volume: s.vendor or "" for s in ds.slices}
    train_vols, val_vols, test_vols = heldout(ds, n_val, n_test)
    n_lab = {f"{f:g}": max(1, int(np.floor(f * len(train_vols) + 0.5))) for f in fractions}
    print(f"synthetic data: {len(ds)} B-scans in {volumes} volumes at {SIZE[0]}x{SIZE[1]} ({ds.path}); "
          f"{len(train_vols)} training, {len(val_vols)} validation, {len(test_vols)} test volumes; labelled volumes "
          + ", ".join(f"{float(f):.0%} -> {n}" for f, n in n_lab.items()))

    plan = [(seed, f, m) for seed in seeds for f in fractions for m in METHODS]
    per_run = []
    for i, (seed, f, method) in enumerate(plan, 1):
        order = labelled_order(train_vols, vendor_of, seed)
        lab = order[:n_lab[f"{f:g}"]]
        split = write_split(ds, f"le-f{f:g}-s{seed}", lab, train_vols, val_vols, test_vols,
                            f"label efficiency: {len(lab)} of {len(train_vols)} training volumes labelled "
                            f"(fraction {f:g}, seed {seed}); val/test fixed for every run")
        run_dir = workdir / f"f{f:g}-s{seed}" / method
        cfg = load_config(RECIPE, [f"data.path={ds.path}", f"data.split={split}", f"method.name={method}",
                                   f"seed={seed}", f"trainer.max_epochs={epochs}",
                                   f"trainer.steps_per_epoch={steps}", "trainer.progress=false",
                                   f"trainer.max_minutes={args.minutes}", f"name=le-f{f:g}-s{seed}-{method}",
                                   f"method.mean_teacher.consistency_rampup_epochs={max(1, round(epochs / 4))}",
                                   *args.overrides])
        print(f"\n[{i}/{len(plan)}] fraction {f:.0%} ({len(lab)} volumes), seed {seed}, {method} -> {run_dir}")
        t0 = time.time()
        ckpt, info = run_one(cfg, run_dir)
        if info.get("global_step", epochs * steps) < epochs * steps:
            print(f"  WARNING: stopped by the {args.minutes} min cap after {info.get('global_step')} of "
                  f"{epochs * steps} steps")
        scores = score(ckpt, ds, split)
        wall = time.time() - t0
        per_run.append({"seed": seed, "fraction": f, "method": method, "labelled_volumes": lab, "split": split,
                        "run_dir": str(run_dir), "checkpoint": str(ckpt), "train": info,
                        "wall_seconds": round(wall, 1), "scores": scores,
                        "config": config_to_dict(cfg)})
        done = time.time() - t_all
        left = done / i * (len(plan) - i)
        print(f"  {wall:.0f} s{' (reused)' if info.get('reused') else ''}; test mean foreground Dice: "
              + ", ".join(f"{w} {s['mean_foreground']:.3f}" for w, s in scores.items())
              + f" | elapsed {done / 60:.1f} min, ~{left / 60:.1f} min left")

    # ------------------------------------------------------------------ aggregate, table, plot
    classes = list(ds.classes[1:])
    summary: dict = {}
    for f in fractions:
        summary[f"{f:g}"] = {}
        for method in METHODS:
            runs = [r for r in per_run if r["fraction"] == f and r["method"] == method]
            summary[f"{f:g}"][method] = {}
            for weights in runs[0]["scores"]:
                summary[f"{f:g}"][method][weights] = {
                    "mean_foreground": spread([r["scores"][weights]["mean_foreground"] for r in runs]),
                    "mean_foreground_per_volume": spread([r["scores"][weights]["mean_foreground_per_volume"]
                                                          for r in runs]),
                    "dice": {c: spread([r["scores"][weights]["dice"][c] for r in runs]) for c in classes},
                    "seeds": [r["seed"] for r in runs],
                }
    fmt = lambda s: "n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"  # noqa: E731
    rows = []
    for f in fractions:
        for method in METHODS:
            for weights, s in summary[f"{f:g}"][method].items():
                mf = s["mean_foreground"]
                rows.append([f"{f:.0%}", n_lab[f"{f:g}"], method, weights, fmt(mf),
                             f"{mf['min']:.3f}-{mf['max']:.3f}", *(fmt(s["dice"][c]) for c in classes)])
    print(f"\nTest set: {len(test_vols)} synthetic volumes ({sum(1 for x in ds.slices if x.volume in set(test_vols))} "
          f"B-scans), the same for every run; {epochs} x {steps} steps per run; seeds {seeds}. Dice of hard masks "
          f"pooled over the test B-scans, mean ± std (ddof=1) over seeds, and min-max:")
    print_table(["labelled", "vols", "method", "weights", "mean fg Dice", "min-max", *classes], rows)

    gains = {}
    for f in fractions:
        sup = summary[f"{f:g}"]["supervised"]["student"]["mean_foreground"]["mean"]
        mt = summary[f"{f:g}"]["mean_teacher"]["teacher"]["mean_foreground"]["mean"]
        gains[f"{f:g}"] = mt - sup
    above = all(g > 0 for g in gains.values())
    lowest = fractions[0]
    targets = {
        "mt_above_supervised_everywhere": {"gains": gains, "met": bool(above)},
        "mt_gain_at_lowest_fraction": {"fraction": lowest, "target": f">= {TARGET_GAIN_LOWEST}",
                                       "gain": gains[f"{lowest:g}"],
                                       "met": bool(gains[f"{lowest:g}"] >= TARGET_GAIN_LOWEST),
                                       "note": None if abs(lowest - 0.05) < 1e-9 else "target is stated for 5 %"},
    }
    print("\nMean Teacher (teacher) minus supervised, mean foreground Dice: "
          + ", ".join(f"{float(f):.0%} {g:+.3f}" for f, g in gains.items()))
    print(f"Target: Mean Teacher above supervised at every fraction -> {'met' if above else 'NOT met'}")
    print(f"Target: Mean Teacher >= supervised + {TARGET_GAIN_LOWEST} at {lowest:.0%} -> "
          f"{'met' if targets['mt_gain_at_lowest_fraction']['met'] else 'NOT met'} ({gains[f'{lowest:g}']:+.3f})")
    if q:
        print("(--quick: a smoke run of a few steps on a small dataset; these figures mean nothing)")

    plot(out_png, summary, fractions, n_lab, per_run)
    figures = {
        "settings": {
            "recipe": RECIPE, "synthetic": dict(SYNTH, volumes=volumes), "data_seed": DATA_SEED,
            "heldout_seed": HELDOUT_SEED, "size": list(SIZE), "epochs": epochs, "steps_per_epoch": steps,
            "seeds": seeds, "fractions": fractions, "labelled_volumes": n_lab, "minutes_cap": args.minutes,
            "threads": args.threads, "quick": q, "overrides": args.overrides,
            "consistency_rampup_epochs": max(1, round(epochs / 4)), "workdir": str(workdir),
            "checkpoint": "best.ckpt, selected on the validation volumes (teacher's Dice for Mean Teacher)",
            "metric": "Dice of hard label maps pooled over the test B-scans; mean foreground = mean over IRF, SRF, PED",
        },
        "volumes": {"train": train_vols, "val": val_vols, "test": test_vols},
        "summary": summary,
        "targets": targets,
        "runs": per_run,
        "plot": str(out_png),
        "total_seconds": round(time.time() - t_all, 1),
    }
    path = write_results(out_json, "label_efficiency", figures)
    print(f"\nwrote {path} and {out_png} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
