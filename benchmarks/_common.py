"""Shared by the benchmarks: machine description, the JSON/table output, the methods compared and
the statistics every method comparison reports."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


#: Environment variables that cap the instruction set of PyTorch's kernels, oneDNN and MKL.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):  # the machine class: native bf16 decides `precision: auto`
                    flags = set(line.split(":", 1)[1].split())
                    info["cpu_features"] = [f for f in CPU_FEATURES if f in flags]
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        # the instruction set PyTorch's own kernels use: lower than the CPU's flags when capped by
        # ATEN_CPU_CAPABILITY (oneDNN's by ONEDNN_MAX_CPU_ISA, MKL's by MKL_ENABLE_INSTRUCTIONS; recorded with
        # it), e.g. to time this CPU as one without AVX-512
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        capped = {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}
        if capped:
            info["isa_caps"] = capped
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


#: The two supervised baselines every semi-supervised method is compared with (the better one, chosen
#: on validation): plain, and with the strong augmentation the semi-supervised methods use.
SUPERVISED = ("supervised", "supervised_strong")
#: Variants compared beside the registered methods: name -> (method.name, overrides). FixMatch's
#: published threshold of 0.95 suits runs of many thousand steps; in a few hundred it leaves almost
#: every unlabelled pixel unused (benchmarks/label_efficiency.py logs ``confident_fraction``).
#: ``fixmatch_dice`` learns the pseudo-labels with soft Dice instead of cross-entropy, as UniMatch's medical code
#: does: confident fluid pixels are few, and in a cross-entropy averaged over all pixels background drowns them.
#: ``fixmatch_da`` aligns the pseudo-labels' class distribution with the labels' (ReMixMatch): with one labelled
#: volume a rare class is under-predicted, hence rarer still among the pseudo-labels. ``fixmatch_mild`` halves the
#: strong augmentation's magnitudes (and cutout's probability): at full strength it costs supervised training 0.09;
#: ``unimatch_mild`` does the same to UniMatch, the best method on validation.
#: ``fixmatch_bal`` weights the pseudo-labels' cross-entropy by class rarity (``balanced_ce``):
#: FixMatch and UniMatch gained on IRF and lost or stood still on the rare SRF/PED (1000-step GPU runs).
#: ``fixmatch_guard`` / ``unimatch_guard`` keep background pseudo-labels only 3 pixels (at 96x96) away from any
#: pixel that is not confidently background (``background_guard``): pseudo-label methods erased the rare class.
#: ``*_fda``: half of the labelled views take the low-frequency amplitude spectrum of a random unlabelled B-scan
#: (``augment.fourier_style_p``; FDA): one labelled volume shows one scanner's intensity profile, the pool all three.
FDA = ["augment.fourier_style_p=0.5"]
MILD_STRONG = ["augment.strong_brightness=0.12", "augment.strong_contrast=0.2", "augment.strong_gamma=0.25",
               "augment.speckle_std=0.12", "augment.cutout_p=0.25"]
#: ``fixmatch_cutmix`` / ``unimatch_cutmix``: the strong view is the weak view with a CutMix box from another
#: unlabelled B-scan (in every view, not half) and nothing else (no intensity change, blur, speckle or cutout),
#: a perturbation whose pseudo-labels stay exact: supervised training with the strong intensity augmentation
#: loses SRF and PED at 1v whichever of its parts is left out (``STRONG_ABLATIONS``), so consistency under it
#: might teach the same loss. Measured (1v, 5 seeds): it does not; without it FixMatch fell from +0.032 to
#: -0.018 (UniMatch +0.024 -> +0.030): the intensity perturbations are where FixMatch's gain comes from.
CUTMIX_ONLY = ["augment.strong_brightness=0", "augment.strong_contrast=0", "augment.strong_gamma=0",
               "augment.speckle_std=0", "augment.blur_p=0", "augment.cutout_p=0", "augment.cutmix_p=1"]
#: Supervised controls, by name only (never in a default plan, never a baseline or a semi-supervised method):
#: the strong augmentation on the labelled views less one of its parts, and at half strength (``MILD_STRONG``).
#: They answer why ``supervised_strong`` loses 0.09-0.15 at 1v: if one part destroyed the labels (cutout
#: keeps the masks under its grey box), removing it would restore supervised. Measured (1v, 5 seeds; README):
#: no single part does (-0.088 to -0.124 with any one left out, -0.111 with all; -0.048 at half strength).
STRONG_ABLATIONS = {
    "supervised_strong_nocutout": ("supervised", ["augment.strong=true", "augment.cutout_p=0"]),
    "supervised_strong_noblur": ("supervised", ["augment.strong=true", "augment.blur_p=0"]),
    "supervised_strong_nospeckle": ("supervised", ["augment.strong=true", "augment.speckle_std=0"]),
    "supervised_strong_nointensity": ("supervised", ["augment.strong=true", "augment.strong_brightness=0",
                                                     "augment.strong_contrast=0", "augment.strong_gamma=0"]),
    "supervised_mild": ("supervised", ["augment.strong=true", *MILD_STRONG]),
}
#: Semi-supervised knobs, by name only (never in a default plan): FixMatch's and UniMatch's threshold at 0.8
#: and 0.6 (0.95 is the published value, for runs of many thousand steps; at 1v the rare classes are seldom that
#: confident) and three times as many unlabelled B-scans per step (12 beside 4 labelled; FixMatch's
#: published ratio is 7): the unlabelled pool is what the method is there to use, 4 per step see each
#: unlabelled B-scan about 4 times in 300 steps. Measured (1v, 5 seeds; README): FixMatch +0.041 at 0.8 and
#: +0.047 [-0.025, +0.119] at 0.6 (+0.032 at 0.95), UniMatch +0.035 / +0.022 (+0.024); 12 per step +0.021 / +0.024;
#: with 3 fresh seeds added (8 in all) FixMatch at 0.6 +0.025 [-0.022, +0.072], at 0.95 +0.012 [-0.025, +0.049].
SSL_TUNING = {
    "unimatch_t0.8": ("unimatch", ["method.unimatch.threshold=0.8"]),
    "fixmatch_t0.6": ("fixmatch", ["method.fixmatch.threshold=0.6"]),
    "unimatch_t0.6": ("unimatch", ["method.unimatch.threshold=0.6"]),
    "fixmatch_u12": ("fixmatch", ["data.unlabelled_batch=12"]),
    "unimatch_u12": ("unimatch", ["data.unlabelled_batch=12"]),
    # self-training's student on the strong view, as ST++ and Noisy Student do, or on the weak view (+ CutMix; the
    # default since it was measured: the strong intensity augmentation, which costs supervised training 0.13-0.24
    # here, kept the student below its teacher)
    "self_training_strong": ("self_training", ["method.self_training.strong=true"]),
    "self_training_weak": ("self_training", ["method.self_training.strong=false"]),
    # the same, taught by an ensemble: the supervised models from the student's encoder and from scratch (benchmarks
    # that name encoders, ENSEMBLE_TEACHERS)
    "self_training_weak_ens": ("self_training", ["method.self_training.strong=false"]),
    # Mean Teacher's consistency (MSE between softmax maps) at 10 times the recipes' weight, with CutMix views
    "mean_teacher_cutmix_w10": ("mean_teacher", ["method.mean_teacher.cutmix=true",
                                                 "method.mean_teacher.consistency_weight=10"]),
}
#: Benchmark methods that only run when named: the supervised controls and the semi-supervised knobs.
BY_NAME_ONLY = {**STRONG_ABLATIONS, **SSL_TUNING}
EXTRA = {"supervised_strong": ("supervised", ["augment.strong=true"]),
         "fixmatch_t0.8": ("fixmatch", ["method.fixmatch.threshold=0.8"]),
         "fixmatch_dice": ("fixmatch", ["method.fixmatch.unsup_loss=dice"]),
         "fixmatch_da": ("fixmatch", ["method.fixmatch.distribution_alignment=true"]),
         "fixmatch_bal": ("fixmatch", ["method.fixmatch.unsup_loss=balanced_ce"]),
         "fixmatch_guard": ("fixmatch", ["method.fixmatch.background_guard=3"]),
         "unimatch_guard": ("unimatch", ["method.unimatch.background_guard=3"]),
         "mean_teacher_strong": ("mean_teacher", ["method.mean_teacher.strong=true"]),
         "mean_teacher_cutmix": ("mean_teacher", ["method.mean_teacher.cutmix=true"]),
         "supervised_fda": ("supervised", FDA),
         "fixmatch_fda": ("fixmatch", FDA),
         "unimatch_fda": ("unimatch", FDA),
         "fixmatch_mild": ("fixmatch", MILD_STRONG),
         "unimatch_mild": ("unimatch", MILD_STRONG),
         "fixmatch_cutmix": ("fixmatch", CUTMIX_ONLY),
         "unimatch_cutmix": ("unimatch", CUTMIX_ONLY),
         **BY_NAME_ONLY}


def encoder_variants(specs) -> dict[str, Path]:
    """``--encoder-weights [NAME=]PATH`` values as {variant name: encoder file} (bare PATH: 'pretrained')."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, Path(path)) if sep else ("pretrained", Path(spec))
        if not name or name == "scratch" or name in out:
            raise ValueError(f"--encoder-weights {spec}: the variant name must be new and not 'scratch'")
        if not path.is_file():
            raise ValueError(f"--encoder-weights {spec}: {path} is no such file")
        out[name] = path
    return out


def quiet_lightning() -> None:
    """Keep the console to octseg's own lines: Lightning sets its loggers to INFO when imported."""
    import lightning.pytorch  # noqa: F401 - imported first, so the levels below are not reset

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (".*LeafSpec.*", ".*litlogger.*", ".*does not have many workers.*",
                ".*smaller than the logging interval.*", ".*exists and is used as written.*"):
        warnings.filterwarnings("ignore", message=msg)


def supervised_only(method: str) -> bool:
    """A supervised baseline or control (``SUPERVISED``, ``STRONG_ABLATIONS``): learns nothing from the
    unlabelled pool. Every other benchmark method name (``supervised_fda`` and the pool-pretrained variants
    included) learns from unlabelled B-scans."""
    return method in SUPERVISED or method in STRONG_ABLATIONS


def all_methods() -> list:
    """Every registered method, each variant of ``EXTRA`` right after its method (not the by-name-only
    ``BY_NAME_ONLY``)."""
    from octseg.methods import METHODS

    out = []
    for name in METHODS:
        out += [name] + [v for v, (base, _) in EXTRA.items() if base == name and v not in BY_NAME_ONLY]
    return out


def named_methods() -> list:
    """``all_methods`` and then the by-name-only variants (``BY_NAME_ONLY``): every name ``--methods`` accepts."""
    return all_methods() + list(BY_NAME_ONLY)


def base_method(name: str) -> str:
    """The registered method a benchmark method name trains (itself, or the method of an ``EXTRA`` variant)."""
    return EXTRA.get(name, (name, []))[0]


def method_overrides(name: str) -> list:
    return [f"method.name={base_method(name)}", *EXTRA.get(name, (name, []))[1]]


#: Methods that learn from a teacher trained before them (``method.self_training.teacher``) -> the benchmark method
#: whose run with the same seed (rotation) and labelled B-scans is that teacher: self-training's teacher is the
#: supervised model of the same labels, from the same initialisation as the student.
TEACHER_OF = {"self_training": "supervised"}
#: Variants taught by the ensemble of TEACHER_OF's run from their own encoder and the same method's run from scratch
#: (duke: ``self_training_weak_ens@ENCODER``; label_efficiency: ``selftrain_ens_weak_mim``).
ENSEMBLE_TEACHERS = {"self_training_weak_ens"}


def teacher_override(teacher_runs) -> str:
    """``method.self_training.teacher=`` the best checkpoint of the finished run in ``teacher_runs`` (one folder), or
    the list of them (several: an ensemble teacher)."""
    runs = [teacher_runs] if isinstance(teacher_runs, (str, Path)) else list(teacher_runs)
    best = []
    for run in map(Path, runs):
        metrics = run / "metrics.json"
        if not metrics.is_file():
            raise SystemExit(f"{run}: the teacher run has not finished (no metrics.json); it trains first")
        best.append(json.loads(metrics.read_text())["best_checkpoint"])
    return f"method.self_training.teacher={best[0] if len(best) == 1 else '[' + ','.join(best) + ']'}"


def spread(values) -> dict:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def paired(diffs) -> dict:
    """Mean paired difference and its 95 % t-interval (df = n - 1); no interval with one seed."""
    from scipy import stats

    d = np.array([x for x in diffs if x is not None], dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else None, "sd": None, "ci95": None, "diffs": d.tolist()}
    if n >= 2:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / np.sqrt(n)
        out.update(sd=sd, ci95=[float(d.mean() - half), float(d.mean() + half)])
    return out


def fmt(x, nd=3, sign=False):
    """A figure for a table; "n/a" for None."""
    return "n/a" if x is None else (f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}")


def mean_sd(s):
    """``spread`` as "mean ± sd"."""
    return "n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {fmt(s['sd'])}"


def rank_key(s) -> float:
    """A ``spread``'s mean for choosing the best (on validation): -inf where there is none."""
    m = s.get("mean")
    return -np.inf if m is None or not np.isfinite(m) else float(m)


#: validation means closer than this to the best one's are a tie: the pick among them is reported as a coin toss
VALIDATION_TIE = 0.001


def validation_ties(by_method: dict, best: str, candidates, val_metric: str, target: dict) -> None:
    """Where another candidate's validation ``val_metric`` is within ``VALIDATION_TIE`` of ``best``'s, the pick is a
    coin toss: record each tied one's paired gain in ``target["tied_on_validation"]`` and print them."""
    best_val = rank_key(by_method[best]["val"][val_metric])
    tied = {m: by_method[m]["vs_best_supervised"]["mean"] for m in candidates
            if m != best and best_val - rank_key(by_method[m]["val"][val_metric]) < VALIDATION_TIE}
    if tied:
        target["tied_on_validation"] = tied
        print(f"  (tied with {best} on validation, within {VALIDATION_TIE}: " + ", ".join(
            f"{m} {fmt(g, sign=True)}" for m, g in tied.items()) + ")")


def mean_teacher_target(summary: dict, regimes, forms: list, val_metric: str) -> dict:
    """The target "Mean Teacher above the best supervised baseline in every regime", read on the form of Mean
    Teacher among ``forms`` (plain, strong views, CutMix, an encoder) with the best validation ``val_metric``
    (mean over the regimes; never test): prints it and returns its figures (``summary[regime][form]
    ["vs_best_supervised"]`` from ``paired``) and which form (``variant``)."""
    name = max(forms, key=lambda m: np.mean([rank_key(summary[r][m]["val"][val_metric]) for r in regimes]))
    g = {r: summary[r][name]["vs_best_supervised"] for r in regimes}
    met = all(x["mean"] is not None and x["mean"] > 0 for x in g.values())
    print(f"Target: Mean Teacher ({name}) above the best supervised baseline in every regime -> "
          f"{'met' if met else 'NOT met'} (" + ", ".join(f"{r} {fmt(x['mean'], sign=True)} {ci_text(x)}"
                                                        for r, x in g.items()) + ")")
    return {"variant": name, "gains": {r: x["mean"] for r, x in g.items()},
            "ci95": {r: x["ci95"] for r, x in g.items()}, "met": bool(met)}


def ci_text(p):
    """``paired``'s 95 % interval as text."""
    return "n/a (n = 1)" if p["ci95"] is None else f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"


def write_results(path, name: str, figures: dict) -> Path:
    """Write ``{"benchmark", "machine", "figures"}`` as JSON and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), "figures": figures}, indent=2))
    return path


def print_table(headers, rows) -> None:
    cols = [list(map(str, c)) for c in zip(headers, *rows)]
    widths = [max(len(x) for x in c) for c in cols]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def _own_method_section_only(c) -> None:
    """Drop from a config dict the option sections of methods other than ``method.name``: a method reads only its
    own (``build_method``), so another method's defaults changing must not turn a finished run into "other
    settings" (a supervised run made when ``self_training.strong`` defaulted to true is the same run today)."""
    method = (c or {}).get("method")
    if isinstance(method, dict):
        for k in [k for k, v in method.items() if isinstance(v, dict) and k != method.get("name")]:
            del method[k]


def run_training(cfg, run_dir: Path) -> tuple[Path, Path, dict]:
    """Train one recipe into ``run_dir``: reuse a finished run with the same config, resume an
    interrupted one, refuse a folder holding other settings. Returns (best, last, info)."""
    from octseg.config import config_to_dict, load_config
    from octseg.training.run import train

    last = run_dir / "checkpoints" / "last.ckpt"
    metrics = run_dir / "metrics.json"
    info = {"reused": False, "resumed": False}
    if last.is_file() or metrics.is_file():
        saved = None
        if (run_dir / "config.yaml").is_file():  # read through the schema: keys added since get their defaults
            saved = json.loads(json.dumps(config_to_dict(load_config(run_dir / "config.yaml"))))
        now = json.loads(json.dumps(config_to_dict(cfg)))
        for c in (saved, now):  # the wall-clock cap is a safety net, not a setting of the result
            (c or {}).get("trainer", {}).pop("max_minutes", None)
            _own_method_section_only(c)
        if saved != now:
            diff = [f"{sec}.{k}: {(saved or {}).get(sec, {}).get(k)!r} -> {v!r}" for sec, vals in now.items()
                    if isinstance(vals, dict) for k, v in vals.items() if (saved or {}).get(sec, {}).get(k) != v]
            raise SystemExit(f"{run_dir} holds a run with other settings ({'; '.join(diff) or 'config differs'}): "
                             f"delete it or choose another --workdir")
        m = json.loads(metrics.read_text()) if metrics.is_file() else None
        if m is not None and Path(m["best_checkpoint"]).is_file():  # finished (its last.ckpt may be pruned)
            print(f"  reusing the finished run in {run_dir}")
            info["reused"] = True
            info.update({k: v for k, v in m.items() if k != "val"})
            return Path(m["best_checkpoint"]), last, info
        if m is not None:  # finished, but best.ckpt is gone: train it again (the seed makes it the same run)
            print(f"  {run_dir}: finished before, its best.ckpt is gone; training it again")
        else:
            info["resumed"] = True
    t0 = time.time()
    res = train(cfg, out_dir=run_dir, resume=info["resumed"])
    info.update({k: v for k, v in res.metrics.items() if k != "val"})
    info["wall_seconds"] = round(time.time() - t0, 1)
    return res.best, res.last, info


def add_keep_last(ap) -> None:
    """The ``--keep-last`` option of every benchmark that prunes with :func:`prune_last`."""
    ap.add_argument("--keep-last", action="store_true",
                    help="keep each scored run's last.ckpt (by default deleted once the run is scored: it only "
                         "resumes an unfinished run, and it is as large as best.ckpt)")


def prune_last(run_dir: Path, keep_last: bool) -> None:
    """Delete a scored run's ``last.ckpt`` unless ``keep_last``: it only serves to resume an unfinished run, and
    with its optimiser state it is as large as ``best.ckpt`` (172 MB for the ResNet18 U-Net), so a benchmark of
    100 runs keeps 17 GB less. ``best.ckpt``, which scoring and reuse read, stays."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not keep_last and (Path(run_dir) / "metrics.json").is_file():
        last.unlink(missing_ok=True)


def _train_in_child(cfg, run_dir: Path, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    quiet_lightning()
    return run_training(cfg, run_dir)[2]


def _die_with_parent() -> None:
    """Worker initialiser: on Linux a worker is killed when the benchmark's process ends, however it ends
    (Ctrl-C, kill, crash), so no run goes on writing into the workdir (seen: two orphans trained on for
    minutes after their parent was killed; Lightning catches SIGTERM)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C still cancels the runs not yet started
        pass


def train_parallel(jobs: list, n: int, threads: int) -> None:
    """Train ``(config, run folder)`` pairs ``n`` at a time, each in a fresh (spawned) process; a run
    that fails is reported and the others go on (the scoring loop then names it again). An interrupted
    benchmark cancels what has not started and leaves the started runs to be resumed next time."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    t0 = time.time()
    print(f"training {len(jobs)} runs, {n} at a time ({threads} thread{'s' if threads > 1 else ''} each)", flush=True)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_die_with_parent)
    try:
        futures = {pool.submit(_train_in_child, cfg, run_dir, threads): run_dir for cfg, run_dir in jobs}
        for k, f in enumerate(as_completed(futures), 1):
            run_dir = futures[f]
            try:
                info = f.result()
                state = "reused" if info.get("reused") else f"{info.get('global_step')} steps"
            except Exception as exc:  # noqa: BLE001 - report, keep the other runs
                state = f"FAILED: {type(exc).__name__}: {exc}"
            print(f"  [{k}/{len(jobs)}] {run_dir}: {state} ({(time.time() - t0) / 60:.1f} min)", flush=True)
    finally:  # on Ctrl-C: do not wait for the running runs (they end with this process)
        pool.shutdown(wait=False, cancel_futures=True)


def save_split(ds, name: str, parts: dict, volumes: dict, note: str, seed=None) -> str:
    """A hand-made split in the format of `octseg split`, written only when it changed."""
    from octseg import __version__

    doc = {
        "name": name, "seed": seed, "by": "volume",
        "fractions": {"labelled": None, "labelled_count": None, "val": None, "test": None},
        "parts": parts,
        "volumes": volumes,
        "counts": {k: len(v) for k, v in parts.items()},
        "octseg_version": __version__,
        "note": note,
    }
    path = ds.path / "splits" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".{name}.json.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return name
