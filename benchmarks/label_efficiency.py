"""Label efficiency on synthetic OCT: does semi-supervision pay at 1 and 2 labelled volumes?

Data: the synthetic RETOUCH-like generator (``octseg.data.synthetic``), 72 volumes x 6 B-scans at
scale 0.5 (24 per vendor style), generator seed fixed (0), prepared at 96x96: the same bytes in
every run. Fixed held-out volumes shared by every run: 9 validation and 15 test volumes (3 + 5 per
vendor, drawn once with a fixed seed); the other 48 volumes train.

Regimes (``--regimes``, default ``1v 2v 10%``): ``Nv`` labels N training volumes, ``P%`` labels
max(1, round(P/100 x 48)) of them (10 % -> 5); the other training volumes are the unlabelled pool.
The labelled volumes are a function of the seed only: one random order of the training volumes per
seed, a regime labels its first n (nested subsets). The first is drawn among the training volumes
that show all three fluid classes (as a user labelling one volume would pick one that shows them;
a random volume often has one class only, and no method can learn a class it never saw labelled);
the others follow with vendors interleaved, one split file per
(regime, seed) (``PREPARED/splits/le-nN-sS.json``) shared by every method. The run seed (network
initialisation, batch order, labelled augmentation, which the engine pairs by seed) is the same
for every method: paired runs. A reference run per seed trains ``supervised`` with all 48
training volumes labelled ("all labelled").

Methods (``--methods``, default every method of ``octseg.methods.METHODS`` plus
``supervised_strong`` = ``method.name=supervised augment.strong=true``). Each is compared with the
BETTER of the two supervised baselines of its regime, chosen on the validation mean foreground
Dice (mean over seeds), never on test. Besides the variants of ``_common.EXTRA``, two-stage
semi-supervised ones (``_pool_pretrain.POOL_PRETRAINED``, by name only): ``supervised_mim``, ``supervised_denoise``,
``fixmatch_mim``, ``unimatch_mim`` and ``supervised_mim3k`` fine-tune from an encoder pretrained with ``octseg pretrain``
(masked-image modelling or denoising, ``POOL_PRETRAIN`` steps there, three times as many for ``*_mim3k``) on the
48 training volumes' B-scans without labels (written once to ``WORKDIR/pretrain-pool``, the encoders to
``WORKDIR/encoders``; never a validation or test volume), one encoder for every seed. ``self_training`` and
``selftrain_[weak_]mim`` learn from a frozen teacher (``_common.TEACHER_OF``): the same seed's ``supervised`` (from
scratch) or ``supervised_mim`` run, added to the plan and trained first (``selftrain_mim``: student on strong views,
``selftrain_weak_mim``: on the weak view, the method's default; ``selftrain2_weak_mim``: a second round, taught by
the first round's student; ``selftrain_ens_weak_mim``: taught by the ensemble of the seed's ``supervised_mim`` and
``supervised`` runs, their mean probability). The supervised controls of
``_common.STRONG_ABLATIONS`` (by name only; never a baseline, never "semi-supervised") train supervised
with the strong augmentation less one of its parts, or at half strength. The knobs of
``_common.SSL_TUNING`` (by name only) train FixMatch and UniMatch with threshold 0.8 or 0.6, or 12
unlabelled B-scans per step.

Recipe: ``configs/demo_cpu.yaml`` (U-Net ResNet18 from scratch, decoder 256-128-64-32-16, dice+CE,
AdamW 1e-3 cosine, batch 4 labelled + 4 unlabelled (``PINNED``), EMA 0.99, consistency weight 1) at
96x96, with ``--epochs`` x ``--steps-per-epoch`` steps (default 10 x 30 = 300; Mean Teacher's
consistency ramp-up is a quarter of the epochs). ``MODEL`` overrides the network (empty: the
recipe's; the light ResNet10-T network used before underfitted, see the comment there; its figures
are in ``results/label_efficiency_lightnet.json``).
Checkpoint: ``best.ckpt``, selected on the validation volumes; the network scored is the
checkpoint's default (the teacher for mean_teacher and bcp). Scores: Dice of hard label maps pooled
over the test (and validation) B-scans, per class and the mean over the three fluid classes ("mean
foreground Dice").

Statistics per regime and method: mean ± sd (ddof=1) over seeds of the test mean foreground and
per-class Dice; the paired per-seed difference to the best supervised baseline, its mean and 95 %
t-interval (scipy.stats.t, df = n_seeds - 1); seconds per training step (train_seconds /
global_step of the run's metrics.json). Convergence of supervised: the slope of its validation
Dice over the last quarter of the validation points in logs/metrics.csv, per 100 steps and as
the rise over that quarter. Targets (printed with the measured figures): best semi-supervised
method (chosen on validation) >= best supervised + 0.05 with the 95 % interval above 0 at 1v and
2v; Mean Teacher above supervised; stretch: best method at 1v >= 90 % of "all labelled".

Time on 2 CPU cores (AMD EPYC without bf16, so float32): the supervised step takes about 0.41 s
alone at 96x96 (measured in ``octseg demo``); the semi-supervised methods cost 2.2-4.4 times that
(``SEC_PER_STEP``, scaled from side-by-side 40-step runs of the ResNet18 recipe). The s/step column of
a run on a busy machine is that run's wall time per step, not the method's cost. The default plan (3 regimes
x 3 seeds x 21 methods and variants + 3 reference runs = 192 runs of 300 steps) is estimated at about 19 h
(``estimate_seconds``, printed at the start), over the 3-hour budget; ``--regimes 1v`` (66 runs) at about 6.4 h.
On a 2-core CPU with native bf16 (``precision: auto``), two runs of one thread each take 0.19 s per
supervised step, 0.35 FixMatch, 0.57 UniMatch: 5 seeds of 14 methods and variants at 1v (70 runs)
trained in about an hour. Three
processes of one thread each, one per seed, share 2 cores better than one of two threads; runs
of several processes on one workdir are safe once the first has prepared the data (start it
first). ``--quick`` (1 seed, 1v and 2v, 4 methods, 9 runs of 2 x 3 steps on 24 volumes) takes about
3 min. Finished run folders are reused and interrupted ones resumed, so a stopped benchmark
continues where it was, and a final run over everything only scores; a scored run's ``last.ckpt`` is
deleted (``--keep-last`` keeps it: it only resumes an unfinished run, and with its optimiser state it
is as large as ``best.ckpt``), and a finished run whose ``best.ckpt`` is gone trains again to the same
weights. ``--jobs N`` trains N runs at a time in their own processes: on one H200, ``--regimes 1v
--epochs 20 --steps-per-epoch 50 --jobs 15 --threads 1`` trained 15 runs of 1000 steps (5 methods x 3
seeds, bf16) in 4 minutes (``results/label_efficiency_gpu_1000steps.json``); on 2 CPU cores, ``--jobs 2
--threads 1``.

    python benchmarks/label_efficiency.py               # the full comparison (see the estimate above)
    python benchmarks/label_efficiency.py --quick       # smoke run, writes *_quick.json/png
    python benchmarks/label_efficiency.py --replot benchmarks/results/label_efficiency_1v_tuning.json --plot x.png

The statistics, tables, targets and figure live in ``_label_efficiency_report.py``: they need only the per-run
records, so ``--replot`` re-renders a written result's figure without training or scoring.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import (SUPERVISED, add_keep_last, all_methods, base_method, fmt,  # noqa: E402
                                named_methods, prune_last, quiet_lightning, run_training, save_split,
                                teacher_override, train_parallel, write_results)
from benchmarks._label_efficiency_report import (REFERENCE, aggregate, evaluate_targets,  # noqa: E402
                                                 plot_results, print_tables)
from benchmarks._plots import replot  # noqa: E402
from benchmarks._pool_pretrain import (POOL_PRETRAINED, overrides_of, pool_encoder, teacher_depth,  # noqa: E402
                                       teachers_of, with_teachers)

RECIPE = "demo_cpu"
# The recipe's network (U-Net ResNet18, decoder 256-...-16) at 96x96. Lighter networks were measured and
# dropped: timm ResNet10-T with decoder 64-...-4 (0.3x the step time) reached only 0.20 mean foreground Dice with
# every training volume labelled, and ResNet18 with decoder 128-...-8 learnt no SRF/PED in 200 steps (0.29)
# where the full decoder reached 0.72 at 96x96 on the demo's data.
MODEL: list = []
# Pinned where the demo recipe was trimmed for the demo's time budget after these runs (4 unlabelled B-scans per step).
PINNED = ["data.unlabelled_batch=4"]
SYNTH = dict(volumes=72, slices=6, scale=0.5, fluid_free_fraction=0.1)
SIZE = (96, 96)
DATA_SEED = 0          # the generator's seed: the data never changes between runs
HELDOUT_SEED = 12345   # draws the validation and test volumes, once
N_VAL, N_TEST = 9, 15  # volumes (divisible by the 3 vendor styles)
EPOCHS, STEPS = 10, 30  # default run length (300 steps; see the estimate in the docstring)
QUICK = {"volumes": 24, "n_val": 3, "n_test": 6, "epochs": 2, "steps_per_epoch": 3,
         "regimes": ["1v", "2v"], "seeds": [0],
         "methods": ["supervised", "supervised_strong", "fixmatch", "mean_teacher"]}
# For the time estimate: seconds per training step on 2 idle cores (AMD EPYC, float32; 96x96, batch 4 + 4):
# the ResNet18 U-Net's supervised step (0.41 s, measured in octseg demo), the others scaled by the ratios of side-by-side 40-step runs of
# the ResNet18 recipe; a variant (``EXTRA``) costs what its method costs. Per-run fixed cost (start-up, scoring) and cost
# per epoch (validation, checkpoints).
SEC_PER_STEP = {"supervised": 0.41, "mean_teacher": 0.96, "fixmatch": 0.90, "unimatch": 1.51, "cps": 1.80, "bcp": 1.14,
                "self_training": 0.78}  # (scaled by its ratio to supervised in bf16 on an Intel Xeon: 0.45 vs 0.25 s)
RUN_S, EPOCH_S = 8.0, 4.0
# Variants that cost more per step than their method: 12 unlabelled B-scans per step instead of 4 (measured side by
# side in results/label_efficiency_1v_tuning.json: FixMatch 0.564 vs 0.340 s, UniMatch 1.047 vs 0.573 s).
STEP_COST_FACTOR = {"fixmatch_u12": 1.66, "unimatch_u12": 1.83}


def estimate_seconds(plan, epochs: int, steps: int) -> float:
    def per_step(m):
        variant = POOL_PRETRAINED.get(m, (m,))[0]
        return (SEC_PER_STEP.get(base_method(variant), max(SEC_PER_STEP.values()))
                * STEP_COST_FACTOR.get(variant, 1.0))

    return sum(per_step(m) * epochs * steps + RUN_S + EPOCH_S * epochs for _, _, m in plan)


def shown_path(path: Path) -> str:
    """``path`` relative to the checkout when it lies inside it (what a committed result should record), else as is."""
    path = Path(path).absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def known_methods() -> list:
    """Every name ``--methods`` accepts (``named_methods``: the registered methods, the ``EXTRA`` variants, the
    supervised controls of ``STRONG_ABLATIONS`` and the knobs of ``SSL_TUNING``), then the pool-pretrained variants."""
    return named_methods() + list(POOL_PRETRAINED)


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


def labelled_order(train: list, vendor_of: dict, seed: int, complete: set) -> list:
    """A seed's order of the training volumes: first a volume drawn from ``complete`` (those showing
    every fluid class), then the others with vendors interleaved (every prefix is balanced)."""
    rng = np.random.default_rng([seed, 7])
    candidates = sorted(v for v in train if v in complete)
    if not candidates:
        raise SystemExit("no training volume shows every fluid class: the 1-volume regime could never learn them")
    first = candidates[int(rng.integers(len(candidates)))]
    rest = [v for v in train if v != first]
    groups = {g: [vs[i] for i in rng.permutation(len(vs))] for g, vs in _by_vendor(rest, vendor_of).items()}
    vendors = [list(groups)[i] for i in rng.permutation(len(groups))]
    order = [first]
    for i in range(max(len(v) for v in groups.values())):
        order += [groups[g][i] for g in vendors if i < len(groups[g])]
    return order


def complete_volumes(ds) -> set:
    """The volumes whose labelled B-scans show every foreground class."""
    seen = defaultdict(set)
    for i, s in enumerate(ds.slices):
        if s.labelled:
            seen[s.volume] |= set(np.unique(np.asarray(ds.masks[i])).tolist())
    need = set(range(1, len(ds.classes)))
    return {v for v, c in seen.items() if need <= c}


def n_labelled(regime: str, n_train: int) -> int:
    """``Nv`` -> N volumes; ``P%`` -> max(1, round(P/100 * n_train)); ``all`` -> n_train."""
    if regime == REFERENCE:
        return n_train
    m = re.fullmatch(r"(\d+)v", regime)
    if m:
        n = int(m.group(1))
    else:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%", regime)
        if not m:
            raise SystemExit(f"--regimes: {regime!r} is neither Nv (volumes) nor P% (of the training volumes)")
        n = max(1, int(np.floor(float(m.group(1)) / 100 * n_train + 0.5)))
    if not 1 <= n <= n_train:
        raise SystemExit(f"--regimes: {regime} labels {n} of {n_train} training volumes")
    return n


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


# ----------------------------------------------------------------------------- runs and scores


def score(ckpt: Path, ds, split_name: str) -> dict:
    """The checkpoint's default network on the validation and the test volumes (on the GPU if there is one)."""
    import torch

    from octseg.checkpoint import load_networks
    from octseg.data.splits import load_split, split_indices
    from octseg.metrics import score_networks

    device = "cuda" if torch.cuda.is_available() else "cpu"
    idx = split_indices(ds, load_split(ds, split_name))
    nets, meta = load_networks(ckpt, device=device)
    default = meta["default_weights"]
    out = {"weights": default}
    for part in ("val", "test"):
        rows = np.sort(idx[part])
        images, gt = np.asarray(ds.images[rows]), np.asarray(ds.masks[rows])
        vols = [ds.slices[r].volume for r in rows]
        rep = score_networks({default: nets[default]}, meta, images, gt, volumes=vols,
                             class_names=list(ds.classes), batch=32, device=device)[default]
        out[part] = {"dice": {c: rep["pooled"]["dice"][c] for c in ds.classes[1:]},
                     "mean_foreground": rep["mean_foreground_dice"]["pooled"],
                     "mean_foreground_per_volume": rep["mean_foreground_dice"]["per_volume"]}
    return out


def val_curve(run_dir: Path) -> list:
    """(step, validation mean foreground Dice of the default network) from logs/metrics*.csv."""
    pts = {}
    for p in sorted((run_dir / "logs").glob("metrics*.csv")):
        with p.open() as fh:
            for r in csv.DictReader(fh):
                v = r.get("val/mean_fg_dice")
                if v not in (None, ""):
                    pts[int(float(r.get("step") or 0))] = float(v)
    return sorted(pts.items())


def last_quarter_slope(curve: list) -> dict:
    """Least-squares slope of the last quarter of the validation points (at least 2)."""
    if len(curve) < 2:
        return {"points": len(curve), "slope_per_100_steps": None, "rise": None}
    k = max(2, int(np.ceil(len(curve) / 4)))
    x, y = np.array(curve[-k:], dtype=float).T
    slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
    return {"points": k, "slope_per_100_steps": slope * 100, "rise": slope * float(np.ptp(x)),
            "steps": [int(x[0]), int(x[-1])]}


def run_config(ds, split: str, method: list, seed: int, epochs: int, steps: int, name: str, extra: list):
    """The recipe of one run: the same for every method but for ``method`` (its overrides)."""
    from octseg.config import load_config

    return load_config(RECIPE, [f"data.path={ds.path}", f"data.split={split}", *MODEL, *PINNED, *method, f"seed={seed}",
                                f"trainer.max_epochs={epochs}", f"trainer.steps_per_epoch={steps}",
                                "trainer.progress=false", f"name={name}",
                                f"method.mean_teacher.consistency_rampup_epochs={max(1, round(epochs / 4))}", *extra])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default benchmarks/results/label_efficiency.json; _quick with --quick)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="figure (default: the JSON's name with .png)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="data and run folders (default runs/bench-label-efficiency[-quick])")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    ap.add_argument("--regimes", nargs="+", default=None,
                    help="Nv = N labelled volumes, P%% = P %% of the training volumes (default 1v 2v 10%%; "
                         "--quick: 1v 2v)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="default: every registered method + supervised_strong (--quick: "
                         + " ".join(QUICK["methods"]) + "); supervised and supervised_strong are always added")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the supervised run with all training volumes labelled (one per seed)")
    ap.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS} (--quick: {QUICK['epochs']})")
    ap.add_argument("--steps-per-epoch", type=int, default=None,
                    help=f"default {STEPS} (--quick: {QUICK['steps_per_epoch']})")
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="per-run wall-clock cap, a safety net (default 30)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; per run with --jobs)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="training runs at a time, each in its own process (default 1): on a GPU, where one small "
                         "run leaves the card mostly idle, or on a CPU with cores to spare (give each --threads)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    add_keep_last(ap)
    ap.add_argument("--replot", type=Path, default=None, metavar="JSON",
                    help="only re-render the figure of a written result to --plot (default: the JSON's name "
                         "with .png); trains and scores nothing")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: give 1 or more runs at a time")
    if args.replot is not None:
        return replot(ap, args.replot, args.plot, "label_efficiency", plot_results)

    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()
    from octseg.config import config_to_dict, load_config

    q = args.quick
    volumes = QUICK["volumes"] if q else SYNTH["volumes"]
    n_val, n_test = (QUICK["n_val"], QUICK["n_test"]) if q else (N_VAL, N_TEST)
    epochs = args.epochs or (QUICK["epochs"] if q else EPOCHS)
    steps = args.steps_per_epoch or (QUICK["steps_per_epoch"] if q else STEPS)
    regimes = list(dict.fromkeys(args.regimes or (QUICK["regimes"] if q else ["1v", "2v", "10%"])))
    seeds = args.seeds if args.seeds is not None else (QUICK["seeds"] if q else [0, 1, 2])
    methods = args.methods or (QUICK["methods"] if q else all_methods())
    known = known_methods()
    bad = [m for m in methods if m not in known]
    if bad:
        ap.error(f"--methods: unknown {bad}; choose from {known}")
    methods = with_teachers(methods)
    suffix = "_quick" if q else ""
    out_json = args.out or REPO / "benchmarks" / "results" / f"label_efficiency{suffix}.json"
    out_png = args.plot or out_json.with_suffix(".png")  # (never another result's figure)
    workdir = (args.workdir or Path("runs") / f"bench-label-efficiency{'-quick' if q else ''}").absolute()
    workdir.mkdir(parents=True, exist_ok=True)

    t_all = time.time()
    ds = prepare(workdir, volumes)
    vendor_of = {s.volume: s.vendor or "" for s in ds.slices}
    complete = complete_volumes(ds)
    train_vols, val_vols, test_vols = heldout(ds, n_val, n_test)
    n_lab = {r: n_labelled(r, len(train_vols)) for r in [*regimes, REFERENCE]}
    print(f"synthetic data: {len(ds)} B-scans in {volumes} volumes at {SIZE[0]}x{SIZE[1]} ({ds.path}); "
          f"{len(train_vols)} training, {len(val_vols)} validation, {len(test_vols)} test volumes; labelled volumes "
          + ", ".join(f"{r} -> {n}" for r, n in n_lab.items()))
    plan = [(seed, r, m) for seed in seeds for r in regimes for m in methods]
    if not args.no_reference:
        plan += [(seed, REFERENCE, "supervised") for seed in seeds]
    est = estimate_seconds(plan, epochs, steps)
    print(f"{len(plan)} runs of {epochs} x {steps} steps; methods {methods}; seeds {seeds}; estimated "
          f"{est / 3600:.1f} h on 2 shared CPU cores (less where run folders are reused)")

    net = load_config(RECIPE, list(MODEL)).model  # the network every run trains
    torch.set_num_threads(args.threads * args.jobs)  # pretraining runs alone: every core the runs will get
    encoders = {key: pool_encoder(workdir, ds, train_vols, key, SIZE, net, q)
                for key in sorted({POOL_PRETRAINED[m][1] for m in methods if m in POOL_PRETRAINED})}
    torch.set_num_threads(args.threads)
    runs = []  # (seed, regime, method, labelled volumes, split, run folder), in plan order
    for seed, regime, method in plan:
        order = labelled_order(train_vols, vendor_of, seed, complete)   # a function of the seed only
        lab = order[:n_lab[regime]]
        split = write_split(ds, f"le-n{len(lab)}-s{seed}", lab, train_vols, val_vols, test_vols,
                            f"label efficiency: {len(lab)} of {len(train_vols)} training volumes labelled "
                            f"(seed {seed}); val/test fixed for every run")
        runs.append((seed, regime, method, lab, split, workdir / f"n{len(lab)}-s{seed}" / method))

    def config_of(seed, method, lab, split, run_dir):
        """A run's config, made when it is about to train: a student's names its teachers' finished checkpoints."""
        teachers = [run_dir.parent / t for t in teachers_of(method)]
        return run_config(ds, split, overrides_of(method, encoders), seed, epochs, steps,
                          f"le-n{len(lab)}-s{seed}-{method}",
                          [f"trainer.max_minutes={args.minutes}", *args.overrides,
                           *([teacher_override(teachers)] if teachers else [])])

    if args.jobs > 1:  # train in parallel (teachers before their students); the loop below then scores them
        for depth in range(max(map(teacher_depth, methods)) + 1):
            stage = [r for r in runs if teacher_depth(r[2]) == depth]
            if stage:
                train_parallel([(config_of(seed, m, lab, split, run_dir), run_dir)
                                for seed, _, m, lab, split, run_dir in stage], args.jobs, args.threads)

    per_run = []
    for i, (seed, regime, method, lab, split, run_dir) in enumerate(runs, 1):
        print(f"\n[{i}/{len(plan)}] {regime} ({len(lab)} labelled volume{'s' if len(lab) > 1 else ''}), "
              f"seed {seed}, {method} -> {run_dir}")
        t0 = time.time()
        cfg = config_of(seed, method, lab, split, run_dir)
        ckpt, _, info = run_training(cfg, run_dir)
        if info.get("global_step", epochs * steps) < epochs * steps:
            print(f"  WARNING: stopped by the {args.minutes} min cap after {info.get('global_step')} of "
                  f"{epochs * steps} steps")
        scores = score(ckpt, ds, split)
        prune_last(run_dir, args.keep_last)
        m = json.loads((run_dir / "metrics.json").read_text())
        sps = m["train_seconds"] / m["global_step"] if m.get("global_step") else None
        wall = time.time() - t0
        per_run.append({"seed": seed, "regime": regime, "method": method, "labelled_volumes": lab, "split": split,
                        "run_dir": str(run_dir), "checkpoint": str(ckpt), "train": info,
                        "sec_per_step": sps, "wall_seconds": round(wall, 1), "scores": scores,
                        "val_convergence": last_quarter_slope(val_curve(run_dir)) if method in SUPERVISED else None,
                        "config": config_to_dict(cfg)})
        done = time.time() - t_all
        print(f"  {wall:.0f} s{' (reused)' if info.get('reused') else ''}, {fmt(sps)} s/step; mean foreground Dice "
              f"({scores['weights']}): val {scores['val']['mean_foreground']:.3f}, test "
              f"{scores['test']['mean_foreground']:.3f} | elapsed {done / 60:.1f} min, "
              f"~{done / i * (len(plan) - i) / 60:.1f} min left")

    # ------------------------------------------------------------------ statistics, tables, targets
    classes = list(ds.classes[1:])
    agg = aggregate(per_run, regimes, methods, classes, with_reference=not args.no_reference)
    n_test_b = sum(1 for x in ds.slices if x.volume in set(test_vols))
    print(f"\nTest set: {len(test_vols)} synthetic volumes ({n_test_b} B-scans), the same for every run; "
          f"{epochs} x {steps} steps per run; seeds {seeds}. Dice of hard masks pooled over the test B-scans of the "
          f"checkpoint's default network, mean ± sd over seeds; 'vs best sup' = paired difference to the better "
          f"supervised baseline of the regime (chosen on validation, marked *) with its 95 % t-interval:")
    print_tables(agg, per_run, regimes, methods, classes, n_lab)
    print()
    targets = evaluate_targets(agg, regimes, methods, n_lab)
    if q:
        print("(--quick: a smoke run of a few steps on a small dataset; these figures mean nothing)")

    figures = {
        "settings": {
            "recipe": RECIPE, "synthetic": dict(SYNTH, volumes=volumes), "data_seed": DATA_SEED,
            "heldout_seed": HELDOUT_SEED, "size": list(SIZE), "epochs": epochs, "steps_per_epoch": steps,
            "seeds": seeds, "regimes": regimes, "methods": methods, "labelled_volumes": n_lab,
            "minutes_cap": args.minutes, "threads": args.threads, "jobs": args.jobs, "quick": q, "overrides": args.overrides,
            "consistency_rampup_epochs": max(1, round(epochs / 4)), "workdir": str(workdir),
            "checkpoint": "best.ckpt (selected on validation); scored: the checkpoint's default network "
                          "(teacher for mean_teacher and bcp)",
            "baseline": "the better of supervised / supervised_strong per regime on validation mean foreground Dice",
            "metric": "Dice of hard label maps pooled over the B-scans; mean foreground = mean over IRF, SRF, PED",
            "interval": "paired per-seed differences, mean ± t(0.975, n-1) sd / sqrt(n)",
        },
        "volumes": {"train": train_vols, "val": val_vols, "test": test_vols},
        **agg, "targets": targets, "runs": per_run, "plot": shown_path(out_png),
        "total_seconds": round(time.time() - t_all, 1),
    }
    plot_results(out_png, figures)
    path = write_results(out_json, "label_efficiency", figures)
    print(f"\nwrote {path} and {out_png} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
