"""The statistics, tables, targets and figure of ``label_efficiency.py``, apart from its data and runs: they
work on the per-run records alone, so ``label_efficiency.py --replot`` can re-render a committed result
(``runs`` and ``summary`` of its JSON) without training or scoring anything."""

from __future__ import annotations

from pathlib import Path

from benchmarks._common import (SUPERVISED, ci_text, fmt, mean_sd, mean_teacher_target, paired, print_table,
                                rank_key, spread, supervised_only, validation_ties)
from benchmarks._plots import gain_figure
from benchmarks._pool_pretrain import trained_method

REFERENCE = "all"      # supervised with every training volume labelled, one run per seed
TARGET_GAIN = 0.05     # best semi-supervised over best supervised at 1v and 2v
TARGET_GAIN_REGIMES = ("1v", "2v")
STRETCH_FRACTION = 0.9  # best method at 1v vs supervised with all volumes labelled
PLATEAU = 0.01         # rise of validation Dice over the last quarter below which supervised "has converged"


def runs_of(per_run: list, regime: str, method: str) -> list:
    return sorted((r for r in per_run if r["regime"] == regime and r["method"] == method), key=lambda r: r["seed"])


def summarise(runs: list, classes) -> dict:
    """Mean ± sd over seeds of the validation and test scores and of the seconds per step."""
    return {"weights": sorted({r["scores"]["weights"] for r in runs}), "seeds": [r["seed"] for r in runs],
            **{part: {"mean_foreground": spread([r["scores"][part]["mean_foreground"] for r in runs]),
                      "mean_foreground_per_volume": spread([r["scores"][part]["mean_foreground_per_volume"]
                                                            for r in runs]),
                      "dice": {c: spread([r["scores"][part]["dice"][c] for r in runs]) for c in classes}}
               for part in ("val", "test")},
            "sec_per_step": spread([r["sec_per_step"] for r in runs])}


def aggregate(per_run: list, regimes, methods, classes, with_reference: bool) -> dict:
    """Per regime: every method's summary, the better supervised baseline and the best semi-supervised method
    (both chosen on validation, never on test), each method's paired per-seed difference to that baseline on
    test, and how flat supervised's validation curve ends; the all-labelled reference run's summary."""
    semi = [m for m in methods if not supervised_only(m)]
    summary, baseline, best_semi, convergence = {}, {}, {}, {}
    for regime in regimes:
        summary[regime] = {m: summarise(runs_of(per_run, regime, m), classes) for m in methods}
        val_of = lambda m: rank_key(summary[regime][m]["val"]["mean_foreground"])  # noqa: E731
        baseline[regime] = max(SUPERVISED, key=val_of)
        best_semi[regime] = max(semi, key=val_of) if semi else None
        base_runs = {r["seed"]: r for r in runs_of(per_run, regime, baseline[regime])}
        for m in methods:
            summary[regime][m]["vs_best_supervised"] = paired(
                [r["scores"]["test"]["mean_foreground"] - base_runs[r["seed"]]["scores"]["test"]["mean_foreground"]
                 for r in runs_of(per_run, regime, m) if r["seed"] in base_runs])
        convergence[regime] = {}
        for m in SUPERVISED:
            c = [r["val_convergence"] for r in runs_of(per_run, regime, m)]
            convergence[regime][m] = {"per_seed": c,
                                      "slope_per_100_steps": spread([x["slope_per_100_steps"] for x in c]),
                                      "rise": spread([x["rise"] for x in c])}
    reference = {}
    if with_reference:
        ref_runs = runs_of(per_run, REFERENCE, "supervised")
        reference = {**summarise(ref_runs, classes), "val_convergence": [r["val_convergence"] for r in ref_runs]}
    return {"summary": summary, "best_supervised": baseline, "best_semi_supervised": best_semi,
            "convergence": convergence, "reference_all_labelled": reference}


def print_tables(agg: dict, per_run: list, regimes, methods, classes, n_lab: dict) -> None:
    """The results table (mean ± sd over seeds, paired difference to the best supervised baseline with its
    95 % interval, seconds per step) and the convergence table of the supervised runs."""
    summary, baseline, reference = agg["summary"], agg["best_supervised"], agg["reference_all_labelled"]
    rows = []
    for regime in regimes:
        for m in methods:
            s = summary[regime][m]
            p = s["vs_best_supervised"]
            rows.append([regime, n_lab[regime], m + (" *" if m == baseline[regime] else ""), s["weights"][0],
                         mean_sd(s["val"]["mean_foreground"]), mean_sd(s["test"]["mean_foreground"]),
                         *(mean_sd(s["test"]["dice"][c]) for c in classes),
                         "" if m == baseline[regime] else fmt(p["mean"], sign=True),
                         "" if m == baseline[regime] else ci_text(p), fmt(s["sec_per_step"]["mean"])])
    if reference:
        rows.append([REFERENCE, n_lab[REFERENCE], "supervised", reference["weights"][0],
                     mean_sd(reference["val"]["mean_foreground"]), mean_sd(reference["test"]["mean_foreground"]),
                     *(mean_sd(reference["test"]["dice"][c]) for c in classes), "", "",
                     fmt(reference["sec_per_step"]["mean"])])
    print_table(["regime", "vols", "method", "weights", "val mean fg", "test mean fg", *classes,
                 "vs best sup", "95% CI", "s/step"], rows)

    print("\nHas supervised converged? Slope of its validation mean foreground Dice over the last quarter of the "
          f"validation points (per 100 steps; rise over that stretch; 'flat' if the rise < {PLATEAU}). The recipe's "
          f"cosine schedule ends at learning rate 0, so a flat end shows the schedule has run out, not that longer "
          f"training would not help: the all-labelled reference is the better gauge of how far training got:")
    crow = []
    for regime in regimes + ([REFERENCE] if reference else []):
        for m in (SUPERVISED if regime != REFERENCE else ("supervised",)):
            cs = [r["val_convergence"] for r in runs_of(per_run, regime, m)]
            sl = spread([x["slope_per_100_steps"] for x in cs])
            rise = spread([x["rise"] for x in cs])
            verdict = "n/a" if rise["mean"] is None else ("flat" if rise["mean"] < PLATEAU else "still rising")
            crow.append([regime, m, fmt(sl["mean"], 4, sign=True), fmt(rise["mean"], 3, sign=True),
                         cs[0]["points"] if cs else 0, verdict])
    print_table(["regime", "method", "slope/100 steps", "rise", "points", "verdict"], crow)


def evaluate_targets(agg: dict, regimes, methods, n_lab: dict) -> dict:
    """The issue's targets with the measured figures, printed and returned: the gain of the best semi-supervised
    method at 1v and 2v, Mean Teacher above supervised, and the stretch (1v vs all labelled)."""
    summary, baseline, best_semi, reference = (agg["summary"], agg["best_supervised"], agg["best_semi_supervised"],
                                               agg["reference_all_labelled"])
    semi = [m for m in methods if not supervised_only(m)]
    targets = {}
    for regime in TARGET_GAIN_REGIMES:
        key = f"semi_gain_at_{regime}"
        if regime not in regimes or not best_semi.get(regime):
            targets[key] = {"met": None, "note": "regime or semi-supervised methods not run"}
            print(f"Target: best semi-supervised >= best supervised + {TARGET_GAIN} at {regime}: not run")
            continue
        b = best_semi[regime]
        p = summary[regime][b]["vs_best_supervised"]
        met = bool(p["mean"] is not None and p["mean"] >= TARGET_GAIN and p["ci95"] is not None and p["ci95"][0] > 0)
        targets[key] = {"target": f"gain >= {TARGET_GAIN}, 95 % CI above 0", "best_semi": b,
                        "baseline": baseline[regime], "gain": p["mean"], "ci95": p["ci95"], "met": met,
                        "all_methods": {m: {"gain": summary[regime][m]["vs_best_supervised"]["mean"],
                                            "ci95": summary[regime][m]["vs_best_supervised"]["ci95"]} for m in semi}}
        print(f"Target: best semi-supervised ({b}, chosen on validation) >= best supervised ({baseline[regime]}) + "
              f"{TARGET_GAIN} at {regime}, 95 % CI > 0 -> {'met' if met else 'NOT met'} "
              f"(gain {fmt(p['mean'], sign=True)}, CI {ci_text(p)})")
        validation_ties(summary[regime], b, semi, "mean_foreground", targets[key])
    teachers = [m for m in methods if trained_method(m) == "mean_teacher"]
    if teachers:
        targets["mean_teacher_above_supervised"] = mean_teacher_target(summary, regimes, teachers, "mean_foreground")
    if reference and "1v" in regimes:
        best1 = max(methods, key=lambda m: rank_key(summary["1v"][m]["val"]["mean_foreground"]))
        got = summary["1v"][best1]["test"]["mean_foreground"]["mean"]
        ref = reference["test"]["mean_foreground"]["mean"]
        met = bool(got >= STRETCH_FRACTION * ref)
        targets["stretch_1v_vs_all_labelled"] = {"best_method": best1, "dice": got, "all_labelled": ref,
                                                 "ratio": got / ref if ref else None, "met": met}
        print(f"Stretch: best method at 1v ({best1}, chosen on validation) >= {STRETCH_FRACTION:.0%} of supervised "
              f"with all {n_lab[REFERENCE]} volumes labelled -> {'met' if met else 'NOT met'} "
              f"({got:.3f} vs {ref:.3f}: {got / ref:.0%})")
    else:
        targets["stretch_1v_vs_all_labelled"] = {"met": None, "note": "1v or the reference run not run"}
        print("Stretch: best method at 1v vs supervised with all volumes labelled: not run (needs 1v and the reference)")
    return targets


def plot_results(png: Path, figures: dict) -> None:
    """The figure of a result (``figures``, as its JSON holds them; the benchmark's own run and ``--replot`` both
    draw it from there): each method's test mean foreground Dice per regime, the all-labelled reference as a
    band, and each method's paired difference to the best supervised baseline against the +TARGET_GAIN line."""
    s, summary = figures["settings"], figures["summary"]
    regimes, n_lab = list(s["regimes"]), s["labelled_volumes"]
    ref = figures["reference_all_labelled"].get("test", {}).get("mean_foreground", {})
    fg = lambda r, m: summary[r][m]["test"]["mean_foreground"]  # noqa: E731
    gain_figure(Path(png), regimes, list(s["methods"]), score=lambda r, m: (fg(r, m)["mean"], fg(r, m)["sd"]),
                pairs=lambda m: [(r["regime"], r["scores"]["test"]["mean_foreground"]) for r in figures.get("runs", ())
                                 if r["method"] == m],
                gain=lambda r, m: summary[r][m].get("vs_best_supervised"), target=TARGET_GAIN,
                ticks=[f"{r}\n({n_lab[r]} vol)" for r in regimes], ylabel="test mean foreground Dice (pooled)",
                title="Label efficiency on synthetic OCT (mean ± sd over seeds)"
                      + (" — quick smoke run" if s.get("quick") else ""),
                reference=(ref.get("mean"), ref.get("sd")),
                reference_label=f"supervised, all {n_lab[REFERENCE]} vol labelled")
