"""The figure of a paired method comparison, shared by ``label_efficiency.py`` (synthetic, seeds) and ``duke.py``
(Duke, rotations): left, each method's score per regime (mean ± sd over the pairs, each pair faint); right, each
method's paired difference to the regime's best supervised baseline (mean, 95 % interval, each pair) against the
target gain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks._common import supervised_only


def gain_figure(path: Path, regimes: list, methods: list, *, score: Callable, pairs: Callable, gain: Callable,
                target: float | dict, ticks: list, ylabel: str, title: str, reference: tuple | None = None,
                reference_label: str = "", diff_title: str = "Gain per method: mean, 95 % interval, each seed",
                xlabel: str = "labelled training volumes", dashed: Callable = supervised_only) -> None:
    """``score(regime, method)`` -> (mean, sd); ``pairs(method)`` -> [(regime, value), ...] for every seed or
    rotation; ``gain(regime, method)`` -> a ``_common.paired`` dict (mean, ci95, diffs) or None; ``target``: the
    gain aimed for, one for every regime or {regime: gain}; ``reference``: (mean, sd) drawn as a band (e.g.
    supervised with every label); ``dashed(method)``: drawn dashed (default: the supervised-only methods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axd) = plt.subplots(1, 2, figsize=(15.0, 4.8))
    xs = np.arange(len(regimes), dtype=float)
    cmap = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")  # a colour per method
    markers = "osD^vP*X<>"
    width = 0.6 / max(1, len(methods))
    for k, method in enumerate(methods):
        m, s = zip(*(score(r, method) for r in regimes))
        off = (k - (len(methods) - 1) / 2) * width
        style = {"color": cmap(k % cmap.N), "marker": markers[k % len(markers)]}
        ax.errorbar(xs + off, m, yerr=[x or 0.0 for x in s], **style, capsize=3, lw=1.4,
                    ls="--" if dashed(method) else "-", label=method)
        pts = [(xs[regimes.index(r)] + off, v) for r, v in pairs(method) if r in regimes]
        if len(pts) > len(regimes):  # each pair, where there are several
            ax.scatter(*zip(*pts), **style, alpha=0.3, s=10)
        for i, r in enumerate(regimes):  # right: paired difference to the regime's best supervised baseline
            p = gain(r, method) or {}
            if p.get("mean") is None:
                continue
            ci = p.get("ci95")
            yerr = None if ci is None else [[p["mean"] - ci[0]], [ci[1] - p["mean"]]]
            axd.errorbar([xs[i] + off], [p["mean"]], yerr=yerr, **style, capsize=3, lw=1.4, ls="none")
            axd.scatter([xs[i] + off] * len(p["diffs"]), p["diffs"], **style, alpha=0.3, s=10)
    if reference is not None and reference[0] is not None:
        ax.axhline(reference[0], color="k", lw=1, ls=":", label=reference_label)
        if reference[1]:
            ax.axhspan(reference[0] - reference[1], reference[0] + reference[1], color="k", alpha=0.08)
    ax.set_xticks(xs, ticks)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    axd.axhline(0, color="k", lw=1)
    if isinstance(target, dict):  # a target per regime: a segment over each regime's methods
        for i, r in enumerate(regimes):
            if r in target:
                axd.hlines(target[r], xs[i] - 0.4, xs[i] + 0.4, color="tab:green", lw=1, ls="--",
                           label=f"target +{target[r]} ({r})")
    else:
        axd.axhline(target, color="tab:green", lw=1, ls="--", label=f"target +{target}")
    axd.set_xticks(xs, ticks)
    axd.set(xlabel=xlabel, ylabel="paired difference to the best supervised baseline", title=diff_title)
    axd.grid(alpha=0.3)
    axd.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(ap, result_json: Path, png: Path | None, benchmark: str, render: Callable) -> int:
    """``--replot``: ``render(png, figures)`` for a result ``benchmark`` wrote (default figure: the JSON's name with
    .png), training and scoring nothing; anything else is refused through ``ap.error`` (exit 2) naming the file."""
    png = png or Path(result_json).with_suffix(".png")
    try:
        doc = json.loads(Path(result_json).read_text())
        if doc.get("benchmark") != benchmark:
            raise ValueError(f"its 'benchmark' is {doc.get('benchmark')!r}")
        render(png, doc["figures"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        ap.error(f"--replot {result_json}: not a {benchmark} result ({type(exc).__name__}: {exc})")
    print(f"wrote {png}")
    return 0
