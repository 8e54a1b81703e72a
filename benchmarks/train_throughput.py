"""Training steps per second and FLOP/s on the CPU: octseg's step against a re-implementation of the
original project's loop, and the demo's step, each against this machine's measured matmul peak.

Two groups of training steps, on synthetic Spectralis-geometry B-scans (496x512 PNG files), on this
machine, interleaved round by round so that any drift in machine load hits all alike:

* the original project's run — U-Net, ResNet50 encoder, 1 input channel, 4 classes, 256x256,
  1 labelled + 5 unlabelled B-scans per step: the original project's loop (``_speed.OriginalLoop``:
  PNG reads every step, softmax into the losses, teacher forward with autograd, Python EMA, a NumPy
  IoU every step) against octseg's Mean Teacher step (recipe ``original_mean_teacher_resnet50``: the
  training loop of ``octseg train`` on prepared uint8 arrays, a gradient-free teacher, a fused EMA,
  channels-last), once in float32 (same arithmetic as the original project) and once with
  ``precision: auto`` (bf16 mixed precision where the CPU does bf16 natively; skipped where auto is
  float32);
* the demo's step (recipe ``configs/demo_cpu.yaml`` at the demo's size, ``octseg.demo.SIZE``: U-Net
  ResNet18 at 96x96, 4 labelled + 2 unlabelled), Mean Teacher and supervised, in float32 and with ``precision: auto``.

Each step's FLOPs (forward + backward convolutions and matmuls, ``torch.utils.flop_counter``) are
counted once on an untimed warm-up step; achieved FLOP/s = FLOPs / median step time, set against
the float32 peak of a large ``torch.mm`` timed on this machine in the same run (best of N, before and
after the rounds, at the same thread count) and, as a second ceiling, that of a large 3x3 convolution
(256 channels, 8 x 64 x 64, channels-last: oneDNN on CPUs, which can outrun the BLAS behind
``torch.mm``). ``--compile`` adds ``torch.compile`` (inductor) variants of octseg's steps; ``--threads
1 2`` repeats everything per intra-op thread count; ``--contiguous`` adds octseg's float32 R50 step without
channels-last. To time this CPU as one without AVX-512 (and so without native bf16), cap the instruction
sets: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` (recorded in the JSON's
``machine``).

    python benchmarks/train_throughput.py [--rounds 3] [--steps 3] [--threads N ...] [--compile]
                                          [--out benchmarks/results/train_throughput.json]
    python benchmarks/train_throughput.py --quick        # tiny sizes, 1 step: a smoke test (~20 s)
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import _speed as S  # noqa: E402
from benchmarks._common import print_table, quiet_lightning, write_results  # noqa: E402
from octseg.demo import SIZE as DEMO_SIZE  # noqa: E402

TARGET = 1.5  # octseg's ResNet50 step vs the original loop, steps/s (issue 15: >= 1.5x in float32 without bf16)
ORIGINAL = "original loop (fp32)"


def plan(a, auto: str) -> list[dict]:
    """The variants: label, group, how to build the runner, and which eager variant's FLOPs a
    compiled variant shares (compiling changes the kernels, not the arithmetic)."""
    quick = a.quick
    r50 = S.MODELS["tiny"] if quick else S.MODELS["resnet50"]
    size_r50, size_demo = (32, 32) if quick else (256, DEMO_SIZE[0])
    # the CPU's figures even where a GPU is present; tiny network and images for the smoke test
    common = ["trainer.accelerator=cpu"]
    if quick:
        common += S.model_overrides(S.MODELS["tiny"]) + ["data.size=[32,32]"]
    precisions = a.precisions or ["32"] + ([] if auto == "32" else ["auto"])
    pname = {"32": "fp32", "auto": "precision auto"}
    out = [{"label": ORIGINAL, "group": "original", "kind": "original", "spec": r50, "size": size_r50}]
    for p in precisions:
        name = pname.get(p, p)
        out.append({"label": f"octseg ({name}, channels-last)" if p == "32" else f"octseg ({name})",
                    "group": "original", "kind": "octseg", "recipe": "original_mean_teacher_resnet50",
                    "size": size_r50, "overrides": [f"trainer.precision={p}", *common]})
    if a.contiguous:  # the same step without channels-last: which layout wins depends on the CPU's kernels
        out.append({"label": "octseg (fp32, contiguous)", "group": "original", "kind": "octseg",
                    "recipe": "original_mean_teacher_resnet50", "size": size_r50,
                    "overrides": ["trainer.precision=32", "trainer.channels_last=false", *common]})
    for method in ("mean_teacher", "supervised"):
        for p in precisions:
            out.append({"label": f"demo {method} ({pname.get(p, p)})", "group": "demo", "kind": "octseg",
                        "recipe": "demo_cpu", "size": size_demo,
                        "overrides": [f"method.name={method}", f"trainer.precision={p}", *common]})
    if a.compile:  # each compiled variant right after its eager twin
        out = [w for v in out for w in ([v] if v["kind"] != "octseg" else
                                        [v, {**v, "label": v["label"][:-1] + ", compiled)",
                                             "compile": a.compile_backend, "flops_from": v["label"]}])]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps (the first one is FLOP-counted)")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="intra-op thread counts to measure (default: torch's default, %(default)s)")
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="trainer.precision values of octseg's steps (default: 32, and auto where auto is not 32)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd octseg steps")
    ap.add_argument("--contiguous", action="store_true",
                    help="also time octseg's float32 ResNet50 step without channels-last")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; eager with --quick, where inductor's C++ "
                         "compilation alone would take minutes)")
    ap.add_argument("--peak-size", type=int, default=None, help="n of the n x n x n matmul (default 2048)")
    ap.add_argument("--peak-repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny network and images, 1 round of 1 step (figures are not results)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/train_throughput.json, _quick with --quick)")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.steps, a.warmup = 1, 1, 1
    a.warmup = max(1, a.warmup)
    a.compile_backend = a.compile_backend or ("eager" if a.quick else "inductor")
    a.compile = a.compile_backend if a.compile else None
    peak_n = a.peak_size or (256 if a.quick else 2048)
    out_path = a.out or ROOT / "benchmarks" / "results" / f"train_throughput{'_quick' if a.quick else ''}.json"
    threads = a.threads or [torch.get_num_threads()]

    warnings.filterwarnings("ignore")
    quiet_lightning()
    from octseg.training.run import resolve_precision

    auto = resolve_precision("auto", "cpu")
    work = Path(tempfile.mkdtemp(prefix="octseg-bench-"))
    try:
        return measure(a, auto, work, peak_n, out_path, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(a, auto: str, work: Path, peak_n: int, out_path: Path, threads: list) -> int:
    variants = plan(a, auto)
    sizes = sorted({v["size"] for v in variants})
    data = S.make_training_data(work, sizes, **({"slices": 2, "scale": 0.25} if a.quick else {}))
    print(f"{len(data['images'])} synthetic B-scans, prepared at {sizes}; precision auto -> {auto}; "
          f"threads {threads}", flush=True)

    peaks = {t: {"before": None, "after": None} for t in threads}
    want_bf16 = auto == "bf16-mixed" or any("bf16" in p for p in (a.precisions or []))
    bf16_peak, conv_peaks = {}, {}
    conv_shape = {"channels": 32, "hw": 16, "batch": 2} if a.quick else {}

    def measure_peaks(when):
        for t in threads:
            torch.set_num_threads(t)
            peaks[t][when] = S.matmul_peak("cpu", torch.float32, peak_n, a.peak_repeats)
            c = S.conv_peak("cpu", torch.float32, repeats=a.peak_repeats, **conv_shape)
            if t not in conv_peaks or c["flops_per_s"] > conv_peaks[t]["flops_per_s"]:
                conv_peaks[t] = c
            if want_bf16:
                p = S.matmul_peak("cpu", torch.bfloat16, peak_n, a.peak_repeats)
                bf16_peak[t] = max(bf16_peak.get(t, 0.0), p["flops_per_s"])

    measure_peaks("before")
    runners, times, flops, setup_s = {}, {}, {}, {}
    for v in variants:
        t = time.perf_counter()
        if v["kind"] == "original":
            runners[v["label"]] = S.OriginalLoop(data["images"], data["masks"], data["images"], v["spec"], v["size"])
        else:
            runners[v["label"]] = S.OctsegStep(data["prepared"][v["size"]], v["recipe"], v["overrides"], work,
                                               compile=v.get("compile"))
        setup_s[v["label"]] = time.perf_counter() - t
    first_run_s = {}
    for r in range(a.rounds):
        for t in threads:
            torch.set_num_threads(t)
            for v in variants:
                key, runner = (v["label"], t), runners[v["label"]]
                count = r == 0 and t == threads[0] and "flops_from" not in v
                warm = a.warmup if (r == 0 or v["kind"] == "octseg") else 0
                if v.get("compile") and r == 0:
                    warm = max(warm, 2)  # the first steps compile (two batch shapes per network)
                t0 = time.perf_counter()
                res = runner.run(warm, a.steps, count_flops=count)
                if r == 0:
                    first_run_s[key] = time.perf_counter() - t0
                if count:
                    flops[v["label"]] = res["flops"]
                times.setdefault(key, {**res, "step_times": []})["step_times"] += res["step_times"]
            print(f"round {r + 1}/{a.rounds}, {t} threads: "
                  + ", ".join(f"{v['label']} {np.median(times[(v['label'], t)]['step_times']):.3f} s"
                              for v in variants), flush=True)
    measure_peaks("after")
    del runners
    gc.collect()

    figures = {"target_ratio": TARGET, "quick": a.quick, "precision_auto_resolved_to": auto, "threads": threads,
               "rounds": a.rounds, "steps_per_round": a.steps, "compile_backend": a.compile,
               "prepare_seconds": data["prepare_seconds"], "setup_seconds": setup_s,
               "matmul_peak": {str(t): {**p, "best_flops_per_s": max(p["before"]["flops_per_s"],
                                                                     p["after"]["flops_per_s"])}
                               for t, p in peaks.items()},
               "bf16_matmul_peak_flops_per_s": {str(t): p for t, p in bf16_peak.items()} or None,
               "conv_peak": {str(t): p for t, p in conv_peaks.items()},
               "variants": {}}
    rows = []
    for t in threads:
        peak = figures["matmul_peak"][str(t)]["best_flops_per_s"]
        orig = 1.0 / np.median(times[(ORIGINAL, t)]["step_times"])
        for v in variants:
            res = times[(v["label"], t)]
            s = S.summarise(res, peak, flops.get(v.get("flops_from", v["label"])))
            s.update(group=v["group"], threads=t, recipe=v.get("recipe"), overrides=v.get("overrides"),
                     input_size=[v["size"], v["size"]], compile=v.get("compile"),
                     first_round_seconds_incl_warmup=first_run_s[(v["label"], t)])
            if v["group"] == "original":
                s["ratio_vs_original"] = s["steps_per_s"] / orig
            if s["achieved_flops_per_s"]:
                s["pct_of_conv_peak"] = 100.0 * s["achieved_flops_per_s"] / conv_peaks[t]["flops_per_s"]
            if s["achieved_flops_per_s"] and t in bf16_peak and "bf16" in str(s["precision"]):
                s["pct_of_bf16_peak"] = 100.0 * s["achieved_flops_per_s"] / bf16_peak[t]
            key = v["label"] if len(threads) == 1 else f"{v['label']} [{t} threads]"
            figures["variants"][key] = s
            ratio = s.get("ratio_vs_original")
            rows.append([v["group"], v["label"], t, s["precision"], f"{s['median_s_per_step']:.3f}",
                         f"{s['steps_per_s']:.3f}", "-" if ratio is None else f"{ratio:.2f}x",
                         S.fmt_flops(s["flops_per_step"]), S.fmt_flops(s["achieved_flops_per_s"]),
                         S.fmt_pct(s["pct_of_peak"]), S.fmt_pct(s.get("pct_of_conv_peak"))])
    ratios = [s["ratio_vs_original"] for k, s in figures["variants"].items()
              if "ratio_vs_original" in s and not k.startswith(ORIGINAL)]
    figures["best_ratio"] = float(max(ratios))
    figures["target_met"] = bool(figures["best_ratio"] >= TARGET)

    tag = "QUICK SMOKE TEST (tiny sizes, 1 step; not results): " if a.quick else ""
    r50, r18 = ("ResNet10T", "ResNet10T") if a.quick else ("ResNet50", "ResNet18")
    print(f"\n{tag}original: UNet-{r50} {size_label(variants, 'original')}, 1 labelled + 5 unlabelled; demo: "
          f"configs/demo_cpu.yaml (UNet-{r18} {size_label(variants, 'demo')}, 4 + 2); median over "
          f"{a.rounds * a.steps} interleaved steps each; precision auto -> {auto}")
    print_table(["group", "loop", "threads", "precision", "s/step", "steps/s", "vs original", "GFLOP/step",
                 "GFLOP/s", "% fp32 mm peak", "% fp32 conv peak"], rows)
    print("\nfloat32 matmul peak (torch.mm, n = %d, best of %d): " % (peak_n, a.peak_repeats)
          + ", ".join(f"{t} threads {figures['matmul_peak'][str(t)]['best_flops_per_s'] / 1e9:.1f} GFLOP/s"
                      for t in threads)
          + (" ; bfloat16: " + ", ".join(f"{t} threads {p / 1e9:.1f} GFLOP/s" for t, p in bf16_peak.items())
             if bf16_peak else "")
          + "\nfloat32 convolution peak (3x3, %s): " % ("x".join(str(conv_peaks[threads[0]][k]) for k in
                                                             ("batch", "channels", "hw")))
          + ", ".join(f"{t} threads {p['flops_per_s'] / 1e9:.1f} GFLOP/s" for t, p in conv_peaks.items()))
    print(f"best octseg / original ratio {figures['best_ratio']:.2f}x (target {TARGET}x: "
          f"{'met' if figures['target_met'] else 'NOT met'})")
    print(f"wrote {write_results(out_path, 'train_throughput', figures)}")
    return 0


def size_label(variants, group) -> str:
    s = next(v["size"] for v in variants if v["group"] == group)
    return f"{s}x{s}"


if __name__ == "__main__":
    sys.exit(main())
