"""K-fold cross-validation by volume (nnU-Net style): one ordinary training run per fold, the
out-of-fold predictions of every labelled volume, post-processing chosen on them, and a summary.

Design (README, "Cross-validation"):

* the labelled volumes outside the recipe's test set are dealt into K folds (recipe seed,
  vendor-balanced, sizes within one volume); the recipe's test volumes are in no fold's split;
* fold k scores fold k's volumes. ``select="best"`` (default): fold (k+1) mod K validates and
  picks ``best.ckpt``, the other K-2 folds train; ``select="last"``: all K-1 other folds train and
  the final weights (``last.ckpt``) are kept (fold k+1 still validates, for the logs only);
* within a fold's training volumes, ``data.labelled`` / ``data.labelled_count`` choose the labelled
  ones exactly as ``octseg split`` does; the other training B-scans are unlabelled (semi-supervised
  methods use them); the scored and validating volumes are never unlabelled training data;
* every fold's split is a named split of the prepared dataset (``splits/cvK-fK-...json``) and every
  fold an ordinary ``octseg train`` run folder ``OUT/fold_k``.

Why out-of-fold: each labelled volume is scored once by a model that never trained or validated
on it, so post-processing can be decided on honest predictions of the whole labelled set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from octseg.config import Config
from octseg.errors import ConfigError, DataError
from octseg.io.outputs import atomic_write, atomic_write_text, json_default, read_json_object

CV_FORMAT = 1
SELECT_MODES = ("best", "last")


@dataclass
class FoldPlan:
    """One fold: the volumes it scores, those that validate it, its split and run folder."""

    index: int
    scored: list[str]
    val: list[str]
    split: str

    @property
    def run_name(self) -> str:
        return f"fold_{self.index}"


@dataclass
class CVPlan:
    """What a CV run will do; written to ``cv_plan.json`` first so a resumed run can check it."""

    recipe: str
    folds: int
    seed: int
    select: str
    dataset: str
    classes: list[str]
    test_volumes: list[str]
    fold_volumes: list[list[str]]
    fold_plans: list[FoldPlan] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "folds": self.folds, "seed": self.seed, "select": self.select,
                "dataset": self.dataset, "classes": self.classes, "test_volumes": self.test_volumes,
                "fold_volumes": self.fold_volumes, "splits": [f.split for f in self.fold_plans]}

    def checkpoint(self, k: int) -> str:
        """The fold's ensemble member, relative to the CV folder."""
        return f"fold_{k}/checkpoints/{'best' if self.select == 'best' else 'last'}.ckpt"


@dataclass
class CVResult:
    out_dir: Path
    cv: dict
    summary: dict
    table: str

    def summary_text(self) -> str:
        return f"{self.table}\nCV folder: {self.out_dir} (predict with: octseg predict {self.out_dir} SCANS OUT)"


# ----------------------------------------------------------------------------------- planning


def _recipe_test_volumes(cfg: Config, ds) -> list[str]:
    """The volumes ``octseg train`` with this recipe would test on (named split or fractions):
    they stay out of every fold."""
    from octseg.data.splits import make_split
    from octseg.training.data import _split_name

    if not cfg.data.split and cfg.data.test <= 0:
        return []
    name = _split_name(cfg)
    if not (ds.path / "splits" / f"{name}.json").is_file():
        if cfg.data.split:
            ds.split(name)  # the dataset's error listing the splits it has
        d = cfg.data
        make_split(ds.path, labelled=None if d.labelled_count is not None else d.labelled,
                   labelled_count=d.labelled_count, val=d.val, test=d.test, seed=cfg.seed, by=d.split_by, name=name)
    split = ds.split(name)
    return sorted(split.get("volumes", {}).get("test", []))


def plan_cv(cfg: Config, folds: int, select: str = "best", recipe: str = "", ds=None) -> CVPlan:
    """Deal the volumes into folds and write each fold's named split (see the module docstring)."""
    from octseg.data.prepare import ensure_prepared
    from octseg.data.splits import assign_folds, make_fold_split

    if select not in SELECT_MODES:
        raise ConfigError(f"select must be one of {', '.join(SELECT_MODES)}, not {select!r}")
    if int(folds) != folds or folds < 2:
        raise ConfigError(f"--folds must be an integer >= 2, not {folds!r}")
    if select == "best" and folds < 3:
        raise ConfigError(f"--folds {folds} with checkpoint selection on an inner validation fold leaves no fold to "
                          f"train on; use --folds 3 or more, or --select last")
    if cfg.data.split_by != "volume":
        raise ConfigError(f"data.split_by={cfg.data.split_by!r}: cross-validation folds are by volume")
    if not cfg.data.path:
        raise ConfigError("data.path is empty: set it to a prepared dataset or a raw data folder")
    if ds is None:
        p = Path(cfg.data.path).expanduser()
        if not p.exists():
            raise DataError(p, "data.path does not exist")
        ds = ensure_prepared(p, tuple(cfg.data.size) if cfg.data.size else None, layout=cfg.data.layout,
                             volume_regex=cfg.data.volume_regex)
    test = _recipe_test_volumes(cfg, ds)
    fold_volumes = assign_folds(ds, folds, cfg.seed, exclude=test)
    d = cfg.data
    lab = None if d.labelled_count is not None else d.labelled
    fractions = {"labelled": lab, "labelled_count": d.labelled_count, "val": d.val, "test": d.test}
    plan = CVPlan(recipe, int(folds), cfg.seed, select, str(ds.path), list(ds.classes), test, fold_volumes)
    for k in range(folds):
        val = fold_volumes[(k + 1) % folds]
        digest = hashlib.sha1(json.dumps([fold_volumes[k], val, test, select, lab, d.labelled_count],
                                         sort_keys=True).encode()).hexdigest()[:8]
        name = f"cv{folds}-f{k}-s{cfg.seed}-{digest}"
        make_fold_split(ds, name, val_volumes=val, test_volumes=fold_volumes[k], excluded=test, labelled=lab,
                        labelled_count=d.labelled_count, seed=cfg.seed, fractions=fractions, val_trains=select == "last",
                        note={"folds": folds, "fold": k, "select": select, "scored_volumes": fold_volumes[k],
                              "val_volumes": val, "excluded_test_volumes": test})
        plan.fold_plans.append(FoldPlan(k, fold_volumes[k], val, name))
    return plan


def fold_config(cfg: Config, plan: CVPlan, k: int) -> Config:
    """The recipe of fold k: the same recipe on the fold's named split."""
    return dataclasses.replace(cfg, name=f"{cfg.name}-fold{k}",
                               data=dataclasses.replace(cfg.data, split=plan.fold_plans[k].split))


# ----------------------------------------------------------------------------------- one fold


def _save_npz(path: Path, **arrays) -> None:
    def write(fh):
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        fh.write(buf.getvalue())

    atomic_write(path, write)


def load_oof(path: Path) -> dict:
    """One fold's out-of-fold arrays: pred, gt (uint8 (N, H, W)), ids, volumes."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(path, f"cannot read out-of-fold predictions ({exc}); delete it to score the fold again") \
            from None


def score_fold(ds, split: dict, ckpt: Path, device: str = "cpu", tta: bool = False, batch: int = 16):
    """Predict the fold's scored ("test") B-scans with the checkpoint's default network and report on them."""
    from octseg.checkpoint import load_network
    from octseg.metrics import score_networks

    rows = ds.indices(split["parts"]["test"])
    if len(rows) == 0:
        raise DataError(ckpt, "the fold has no labelled B-scans to score")
    net, meta = load_network(ckpt, device=device)
    gt = np.asarray(ds.masks[rows])
    vols = [ds.slices[r].volume for r in rows]
    images = np.asarray(ds.images[rows])
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    k = int(meta.get("context_slices", model.get("context_slices", 0)) or 0)
    if k > 0:  # 2.5D input: neighbours from the whole dataset (as training scores), not only the scored B-scans
        from octseg.data.context import context_rows, stack_context

        ctx = context_rows([s.volume for s in ds.slices], [s.slice_index for s in ds.slices], k, warn=False)
        images = stack_context(ds.images, ctx, rows)
    reps, preds = score_networks({meta["weights"]: net}, meta, images, gt, volumes=vols,
                                 vendors=[ds.slices[r].vendor for r in rows], device=device, batch=batch, tta=tta,
                                 tables="per_volume", return_predictions=True)
    name = meta["weights"]
    arrays = {"pred": preds[name], "gt": gt, "ids": np.asarray([ds.slices[r].id for r in rows]),
              "volumes": np.asarray(vols)}
    return reps[name], name, arrays


def _fold_done(out: Path, plan: CVPlan, k: int, tta: bool) -> bool:
    doc = read_json_object(out / "oof" / f"fold_{k}.json")
    return ((out / f"fold_{k}" / "metrics.json").is_file() and (out / "oof" / f"fold_{k}.npz").is_file()
            and doc is not None and doc.get("tta") == tta and doc.get("checkpoint") == plan.checkpoint(k)
            and doc.get("scored_volumes") == plan.fold_plans[k].scored)


def _run_fold(cfg: Config, plan: CVPlan, k: int, out: Path, tta: bool, device: str, log: Callable) -> None:
    from octseg.data.prepared import PreparedDataset
    from octseg.training.run import train

    fp = plan.fold_plans[k]
    run_dir = out / fp.run_name
    K = plan.folds
    t0 = time.time()
    if not (run_dir / "metrics.json").is_file():
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        log(f"[cv] fold {k + 1}/{K} {'resumed' if resume else 'started'} {time.strftime('%H:%M:%S')}: scores "
            f"{', '.join(fp.scored)}; " + (f"selects best.ckpt on {', '.join(fp.val)}" if plan.select == "best" else
                                            "trains on all other folds, keeps the last weights"))
        train(fold_config(cfg, plan, k), out_dir=run_dir, resume=resume)
    else:
        log(f"[cv] fold {k + 1}/{K} trained earlier; scoring {', '.join(fp.scored)}")
    ckpt = out / plan.checkpoint(k)
    if not ckpt.is_file():
        raise DataError(ckpt, f"fold {k} finished without this checkpoint")
    ds = PreparedDataset(plan.dataset)
    split = read_json_object(run_dir / "split.json") or ds.split(fp.split)
    rep, weights, arrays = score_fold(ds, split, ckpt, device=device, tta=tta)
    _save_npz(out / "oof" / f"fold_{k}.npz", **arrays)
    doc = {"fold": k, "scored_volumes": fp.scored, "val_volumes": fp.val, "split": fp.split,
           "checkpoint": plan.checkpoint(k), "weights": weights, "tta": tta, "report": rep}
    atomic_write_text(out / "oof" / f"fold_{k}.json", json.dumps(doc, indent=1, default=json_default))
    mfd = rep["mean_foreground_dice"]["pooled"]
    log(f"[cv] fold {k + 1}/{K} done in {_duration(time.time() - t0)} {time.strftime('%H:%M:%S')}: "
        f"mean foreground Dice {_fmt(mfd)} on {rep['n_bscans']} B-scans")


# ----------------------------------------------------------------------------------- summary


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _mean_sd(values) -> tuple[Optional[float], Optional[float]]:
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def _dice_row(rep: dict, classes: list[str]) -> dict:
    return {"dice": {c: rep["pooled"]["dice"].get(c) for c in classes[1:]},
            "mean_foreground_dice": rep["mean_foreground_dice"]["pooled"]}


def summarise(out: Path, plan: CVPlan, grid=None) -> tuple[dict, dict, str]:
    """Choose post-processing on the out-of-fold predictions; (cv.json, cv_summary.json, markdown table)."""
    from octseg.inference.postprocess import MIN_SIZE_GRID, choose_min_sizes, remove_small_components
    from octseg.metrics.report import segmentation_report

    classes = plan.classes
    n = len(classes)
    oof = [load_oof(out / "oof" / f"fold_{k}.npz") for k in range(plan.folds)]
    reps = [(read_json_object(out / "oof" / f"fold_{k}.json") or {}).get("report") for k in range(plan.folds)]
    gt_all = np.concatenate([o["gt"] for o in oof])
    pred_all = np.concatenate([o["pred"] for o in oof])
    vols_all = np.concatenate([o["volumes"] for o in oof])
    grid = tuple(grid or MIN_SIZE_GRID)
    # nnU-Net's rule: the mean over volumes of each volume's Dice, not Dice pooled over B-scans
    min_sizes, trials = choose_min_sizes(gt_all, pred_all, n, grid, volumes=vols_all)

    def report(gt, pred, vols):
        return segmentation_report(gt, pred, n, class_names=classes, volumes=list(vols), hd95="off", tables=False)

    folds = []
    for k, (o, rep) in enumerate(zip(oof, reps)):
        raw = rep if rep is not None else report(o["gt"], o["pred"], o["volumes"])
        post = report(o["gt"], remove_small_components(o["pred"], min_sizes), o["volumes"]) if min_sizes else raw
        folds.append({"fold": k, "volumes": plan.fold_plans[k].scored, "n_bscans": int(len(o["gt"])),
                      "raw": _dice_row(raw, classes), "postprocessed": _dice_row(post, classes),
                      "per_volume_dice": raw.get("per_volume_table")})
    pooled = {"raw": _dice_row(report(gt_all, pred_all, vols_all), classes)}
    pooled["postprocessed"] = _dice_row(report(gt_all, remove_small_components(pred_all, min_sizes), vols_all),
                                        classes) if min_sizes else pooled["raw"]
    stats = {}
    for kind in ("raw", "postprocessed"):
        cols = {c: _mean_sd(f[kind]["dice"][c] for f in folds) for c in classes[1:]}
        mfd = _mean_sd(f[kind]["mean_foreground_dice"] for f in folds)
        stats[kind] = {"mean": {"dice": {c: v[0] for c, v in cols.items()}, "mean_foreground_dice": mfd[0]},
                       "sd": {"dice": {c: v[1] for c, v in cols.items()}, "mean_foreground_dice": mfd[1]}}
    # min_sizes count pixels of B-scans at at_size (the prepared dataset's): at another size a reader scales them
    post = {"min_sizes": {str(c): int(s) for c, s in sorted(min_sizes.items())},
            "at_size": [int(x) for x in oof[0]["gt"].shape[1:]], "chosen_by": "volume_mean_dice"}
    cv = {"format": CV_FORMAT, "recipe": plan.recipe, "folds": plan.folds, "seed": plan.seed, "classes": classes,
          "fold_volumes": plan.fold_volumes, "postprocessing": post,
          "checkpoints": [plan.checkpoint(k) for k in range(plan.folds)],
          "select": plan.select, "test_volumes": plan.test_volumes, "dataset": plan.dataset,
          "splits": [f.split for f in plan.fold_plans],
          "postprocessing_grid": list(grid)}
    summary = {"format": CV_FORMAT, "recipe": plan.recipe, "folds": folds, "pooled": pooled, **stats,
               "postprocessing": {"min_sizes": post["min_sizes"], "at_size": post["at_size"], "grid": list(grid),
                                  "rule": "per class, the size maximising the mean over volumes of the "
                                          "volume's Dice (volumes with the class in neither truth nor "
                                          "prediction left out); kept only if above no removal",
                                  "volume_mean_dice_by_min_size": {classes[c]: row for c, row in trials.items()},
                                  "note": "sizes chosen on all out-of-fold predictions, so the post-processed "
                                          "figures are slightly optimistic (as nnU-Net's)"}}
    return cv, summary, format_summary(summary, classes)


def format_summary(summary: dict, classes: list[str]) -> str:
    """Markdown table: folds + mean ± sd (+ pooled), raw and post-processed Dice per class."""
    fg = classes[1:]
    lines = []
    for kind, title in (("raw", "raw"), ("postprocessed", "post-processed")):
        lines += [f"Dice ({title})", "",
                  "| fold | volumes | " + " | ".join(fg) + " | mean fg |",
                  "|---|---|" + "---|" * (len(fg) + 1)]
        for f in summary["folds"]:
            r = f[kind]
            lines.append(f"| {f['fold']} | {', '.join(f['volumes'])} | "
                         + " | ".join(_fmt(r["dice"][c]) for c in fg) + f" | {_fmt(r['mean_foreground_dice'])} |")
        m, s = summary[kind]["mean"], summary[kind]["sd"]
        pm = lambda a, b: f"{_fmt(a)} ± {_fmt(b)}"  # noqa: E731
        lines.append("| mean ± sd | | " + " | ".join(pm(m["dice"][c], s["dice"][c]) for c in fg)
                     + f" | {pm(m['mean_foreground_dice'], s['mean_foreground_dice'])} |")
        p = summary["pooled"][kind]
        lines.append("| pooled | all | " + " | ".join(_fmt(p["dice"][c]) for c in fg)
                     + f" | {_fmt(p['mean_foreground_dice'])} |")
        lines.append("")
    ms = summary["postprocessing"]["min_sizes"]
    chosen = ", ".join(f"{classes[int(c)]} < {s} px" for c, s in ms.items())
    ms_at = "x".join(map(str, summary["postprocessing"].get("at_size") or [])) or "the prepared size"
    lines.append("Post-processing chosen on the out-of-fold predictions: "
                 + (f"remove components of {chosen} (pixels at {ms_at}; each raised its class's mean "
                    f"per-volume Dice)." if chosen else "none (no component removal raised a class's mean "
                                                        "per-volume Dice)."))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- the command


def run_cv(cfg: Config, out_dir, folds: int = 5, recipe: str = "", resume: bool = False, select: str = "best",
           tta: bool = False, device: str = "auto", overwrite: bool = False,
           log: Callable[[str], object] = print) -> CVResult:
    """Cross-validate a recipe into ``out_dir`` (see the module docstring and README).

    ``resume``: reuse finished folds, continue an interrupted fold from its ``last.ckpt``, and
    re-summarise a finished CV; the folds must be the ones this folder started with."""
    from octseg.inference.predictor import resolve_device
    from octseg.io.outputs import OutputFolder

    out = Path(out_dir)
    with OutputFolder(out, "cv", whole=True, overwrite=overwrite, protect=[cfg.data.path, *cfg.data.extra_unlabelled]):
        plan_path = out / "cv_plan.json"
        if plan_path.is_file() and not resume:
            raise ConfigError(f"{out} already holds a cross-validation; use --resume to continue it or choose "
                              f"another --out")
        plan = plan_cv(cfg, folds, select, recipe)
        if plan_path.is_file():
            old = read_json_object(plan_path)
            new = json.loads(json.dumps(plan.to_dict()))
            if old is None or {k: v for k, v in old.items() if k != "recipe"} != \
                    {k: v for k, v in new.items() if k != "recipe"}:
                differ = sorted(k for k in new if k != "recipe" and (old is None or old.get(k) != new[k]))
                raise ConfigError(f"{plan_path}: --resume with different folds ({', '.join(differ)} changed); use "
                                  f"the recipe, --folds and --select this CV started with, or another --out")
        else:
            atomic_write_text(plan_path, json.dumps(plan.to_dict(), indent=1))
        dev = resolve_device(device)
        log(f"[cv] {plan.folds} folds over {sum(map(len, plan.fold_volumes))} labelled volumes "
            f"({', '.join(str(len(f)) for f in plan.fold_volumes)} per fold)"
            + (f"; {len(plan.test_volumes)} test volume(s) left out" if plan.test_volumes else "")
            + f"; checkpoint: {plan.select}" + ("; TTA flip" if tta else ""))
        for k in range(plan.folds):
            if _fold_done(out, plan, k, tta):
                log(f"[cv] fold {k + 1}/{plan.folds} finished earlier (reused)")
                continue
            _run_fold(cfg, plan, k, out, tta, dev, log)
        cv, summary, table = summarise(out, plan)
        atomic_write_text(out / "cv_summary.json", json.dumps(summary, indent=1, default=json_default))
        atomic_write_text(out / "cv_summary.md", table + "\n")
        atomic_write_text(out / "cv.json", json.dumps(cv, indent=1, default=json_default))
    return CVResult(out, cv, summary, table)
