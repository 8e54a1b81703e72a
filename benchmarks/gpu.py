"""Speed on a CUDA GPU, in one command of at most 8 minutes: training steps and prediction.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json]     # on a CUDA machine
    python benchmarks/gpu.py --quick                                 # every code path on CPU, tiny sizes
    python benchmarks/gpu.py --parts predict profile                 # prediction and where a step's time goes

Three parts, all in one process, so that every ratio compares figures measured side by side:

1. **matmul peak**: the FLOP/s of an 8192^3 ``torch.mm`` in float32 (TF32 off), TF32, bfloat16 and
   float16 (best of 5 x 10 products) — the ceilings the steps are set against.
2. **training**: the original project's Mean Teacher loop (``_speed.OriginalLoop``: PNG reads, fp32,
   NCHW, as its code did it) against octseg's step (``octseg train``'s Lightning loop on prepared
   arrays; ``_speed.OctsegStep``) for UNet-ResNet50 and UNet-VGG19-BN at 256x256, 1 labelled +
   5 unlabelled B-scans per step: fp32 NCHW, fp32 channels-last, AMP bf16 and fp16, bf16 with
   ``trainer.deterministic=false``, and ``torch.compile`` (inductor). Per variant: median step time
   over ``--steps`` steps after ``--warmup``, FLOPs per step (``torch.utils.flop_counter``, counted
   once per network on an untimed step), achieved TFLOP/s and its share of the matmul peak of the
   step's compute type (fp32 steps against TF32, as cuDNN runs float32 convolutions on TF32 tensor
   cores by default), and peak GPU memory (``torch.cuda.max_memory_allocated``).
3. **prediction**: B-scans/s of ``octseg predict`` (``octseg.inference.run.predict_path`` with a
   ``Predictor``: read, resize, infer, resize back, write mask volume, overlays, fluid.csv) on a
   synthetic Cirrus volume (128 B-scans of 1024x512) with a random-weight UNet-ResNet50 at 256x256:
   PyTorch at batch 8 (octseg predict's default) and 32, channels-last, and ONNX Runtime with the
   CUDA execution provider (the model exported by ``octseg.inference.export``) when onnxruntime-gpu
   is installed; best of 2 runs each, alternating.

4. **profile** (``--parts ... profile``; off by default, on with ``--quick``): torch.profiler over 5 timed steps of
   octseg's bf16 channels-last step per network: the operators by device and by host time, the device's busy
   share of the wall time and the kernel launches per step, in ``<out>_profile_<network>.txt``.

``--parts`` picks what runs (training, predict, compile, profile); the first GPU run (2026-11-27, H200) showed
training steps of 1 % of the TF32 peak, so a short second run profiles them and re-measures prediction.
A time guard skips what no longer fits in ``--budget`` seconds (default 450) and a watchdog writes
what was measured and exits before 8 minutes, whatever is running. Results go to ``--out`` through
``benchmarks/_common.write_results`` (which records the machine and the GPU's name) after every
measurement, so an interrupted run still leaves its figures. Without CUDA the script refuses, unless
``--quick``: then every code path runs on the CPU with a tiny network, 32x32 images and one step
(inductor replaced by the ``eager`` compile backend; fp16 AMP becomes bf16 there, as Lightning does
on CPU), writing benchmarks/results/gpu_quick.json — a smoke test, not a result.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the time guard counts from the start of the process

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HARD_LIMIT_S = 460  # the watchdog's last word: under 8 minutes from the start of the process, with slack
                   # for a main thread that holds the interpreter lock a few seconds longer

RECIPES = {"resnet50": "original_mean_teacher_resnet50", "vgg19_bn": "original_mean_teacher_vgg19bn"}
#: octseg variants: label -> (trainer overrides, matmul peak it is compared with)
STEP_VARIANTS = {
    "octseg fp32": (["trainer.precision=32", "trainer.channels_last=false"], "fp32"),
    "octseg fp32, channels-last": (["trainer.precision=32", "trainer.channels_last=true"], "fp32"),
    "octseg bf16-mixed, channels-last": (["trainer.precision=bf16-mixed", "trainer.channels_last=true"], "bfloat16"),
    "octseg 16-mixed, channels-last": (["trainer.precision=16-mixed", "trainer.channels_last=true"], "float16"),
    "octseg bf16-mixed, channels-last, non-deterministic": (
        ["trainer.precision=bf16-mixed", "trainer.channels_last=true", "trainer.deterministic=false"], "bfloat16"),
}
#: compiled variants, last (they take minutes to compile): (model, eager twin whose FLOPs they share)
COMPILED = [("resnet50", "octseg bf16-mixed, channels-last"), ("vgg19_bn", "octseg bf16-mixed, channels-last"),
            ("resnet50", "octseg fp32, channels-last")]
#: seconds a measurement may need before the guard lets it start (GPU); compile includes compilation
PARTS = ("training", "predict", "compile", "profile")
COST = {"original": 30, "octseg": 25, "compile": 150, "predict_setup": 60, "predict_run": 20}


class Results:
    """The figures so far, written after every measurement (and by the watchdog), under one lock."""

    def __init__(self, path: Path, figures: dict):
        self.path, self.figures, self.lock = path, figures, threading.RLock()
        self.work: Path | None = None  # scratch folder, removed by the watchdog too

    def save(self) -> None:
        from benchmarks._common import write_results

        with self.lock:
            self.figures["elapsed_seconds"] = round(time.monotonic() - T0, 1)
            write_results(self.path, "gpu", self.figures)


class Guard:
    """The soft time guard: a measurement starts only when its estimated cost still fits the budget."""

    def __init__(self, budget: float, results: Results):
        self.budget, self.results, self.skipped = budget, results, 0

    def left(self) -> float:
        return self.budget - (time.monotonic() - T0)

    def allows(self, what: str, cost: float) -> bool:
        if self.left() >= cost:
            return True
        with self.results.lock:
            self.results.figures["skipped"].append(f"{what}: {self.left():.0f} s left of the budget, needs ~{cost} s")
        self.skipped += 1
        print(f"  skipped (time guard): {what}", flush=True)
        return False


def start_watchdog(results: Results, limit: float) -> None:
    """Write what was measured and end the process at ``limit`` seconds after its start."""

    def fire():
        with results.lock:
            results.figures["complete"] = False
            results.figures["stopped_by"] = f"watchdog at {limit:.0f} s"
            results.save()
        print(f"\nwatchdog: {limit:.0f} s reached; wrote what was measured to {results.path}", flush=True)
        if results.work is not None:
            shutil.rmtree(results.work, ignore_errors=True)
        os._exit(0)

    t = threading.Timer(max(0.0, limit - (time.monotonic() - T0)), fire)
    t.daemon = True
    t.start()


def fail_to_import(modules=("numpy", "torch", "lightning", "segmentation_models_pytorch", "octseg")) -> int:
    missing = []
    for mod in modules:
        try:
            __import__(mod)
        except ImportError as exc:
            missing.append(f"{mod} ({exc})")
    if missing:
        print("gpu.py: cannot import " + "; ".join(missing) + ".\nInstall octseg and its dependencies first: "
              "`make install` (or `pip install -e '.[onnx]'`) in the repository root.", file=sys.stderr)
        return 2
    return 0


def reset_global_state() -> None:
    """Lightning sets deterministic algorithms (and cuDNN's flags) process-wide when a trainer is
    built; the original project's loop ran with PyTorch's defaults, so it gets them back."""
    import torch

    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the three parts


def measure_peaks(res: Results, device: str, quick: bool) -> None:
    import torch

    from benchmarks import _speed as S

    n, inner = (256, 1) if quick else (8192, 10)
    kinds = {"float32": (torch.float32, False), "tf32": (torch.float32, True), "bfloat16": (torch.bfloat16, False),
             "float16": (torch.float16, False)}
    if device == "cpu":
        kinds = {k: v for k, v in kinds.items() if k in ("float32", "bfloat16")}
    saved = torch.backends.cuda.matmul.allow_tf32
    out = {}
    try:
        for name, (dtype, tf32) in kinds.items():
            torch.backends.cuda.matmul.allow_tf32 = tf32
            out[name] = S.matmul_peak(device, dtype, n, repeats=5 if not quick else 2, inner=inner)
            unit, uname = flop_unit(device)
            print(f"  matmul peak {name}: {out[name]['flops_per_s'] / unit:.2f} {uname}", flush=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    with res.lock:
        res.figures["matmul_peak"] = out
    res.save()


def peak_for(res: Results, kind: str, device: str) -> tuple[str, float | None]:
    """The measured matmul peak a step of compute type ``kind`` is compared with."""
    import torch

    peaks = res.figures.get("matmul_peak", {})
    if kind == "fp32":
        kind = "tf32" if device == "cuda" and torch.backends.cudnn.allow_tf32 else "float32"
    if kind not in peaks:  # float16 on the CPU: compared with bfloat16 (Lightning runs bf16 there)
        kind = "bfloat16" if kind == "float16" and "bfloat16" in peaks else "float32"
    p = peaks.get(kind)
    return kind, (p["flops_per_s"] if p else None)


def flop_unit(device: str) -> tuple[float, str]:
    return (1e12, "TFLOP/s") if device == "cuda" else (1e9, "GFLOP/s")


def record_step(res: Results, model: str, label: str, raw: dict, peak_kind: str, device: str,
                flops: int | None = None, extra: dict | None = None) -> None:
    from benchmarks import _speed as S

    ref, peak = peak_for(res, peak_kind, device)
    s = S.summarise(raw, peak, flops)
    s.update(peak_reference=ref, **(extra or {}))
    with res.lock:
        block = res.figures["training"][model]
        block["variants"][label] = s
        orig = block["variants"].get("original loop (fp32)")
        if orig:
            for v in block["variants"].values():
                v["ratio_vs_original"] = v["steps_per_s"] / orig["steps_per_s"]
    mem = s["peak_memory_bytes"]
    unit, uname = flop_unit(device)
    print(f"  {model} | {label}: {s['median_s_per_step'] * 1e3:.1f} ms/step, "
          f"{S.fmt_flops(s['achieved_flops_per_s'], unit, 2)} {uname} ({S.fmt_pct(s['pct_of_peak'])} of {ref}), "
          f"peak memory {'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'}", flush=True)
    res.save()


def step_setup(a, device: str, model: str) -> tuple[dict, int, list]:
    """(network spec, input size, overrides every octseg step of ``model`` gets): the tiny network at 32x32
    on the CPU with ``--quick``, the real one at 256x256 on the GPU."""
    from benchmarks import _speed as S

    spec = S.MODELS["tiny" if a.quick else model]
    size = 32 if a.quick else 256
    common = ["trainer.accelerator=cpu"] if device == "cpu" else []
    extra = (S.model_overrides(spec) + [f"data.size=[{size},{size}]"]) if a.quick else []
    return spec, size, [*common, *extra]


def run_training(res: Results, guard: Guard, a, device: str, data: dict, models: list, compiled: bool) -> None:
    """Part 2: every eager variant per network (``compiled=False``), or the compiled ones."""
    from benchmarks import _speed as S

    for model in models:
        spec, size, setup = step_setup(a, device, model)
        recipe = RECIPES[model]
        with res.lock:
            res.figures["training"].setdefault(model, {
                "network": f"Unet-{spec['encoder']}", "recipe": recipe, "input_size": [size, size],
                "labelled_batch": 1, "unlabelled_batch": 5, "variants": {}, "flops_per_step": {}})
        block = res.figures["training"][model]
        if not compiled:
            jobs = [("original loop (fp32)", None)] + [(k, None) for k in STEP_VARIANTS]
        else:
            jobs = [(f"{twin}, compiled", twin) for m, twin in COMPILED if m == model]
            if a.quick:
                jobs = jobs[:1]
        for label, twin in jobs:
            kind = "original" if label.startswith("original") else ("compile" if twin else "octseg")
            if not guard.allows(f"training {model} {label}", COST[kind]):
                continue
            try:
                t = time.perf_counter()
                if kind == "original":
                    reset_global_state()
                    runner = S.OriginalLoop(data["images"], data["masks"], data["images"], spec, size, device)
                    raw = runner.run(a.warmup, a.steps, count_flops=True)
                    block["flops_per_step"]["original"] = raw["flops"]
                    peak_kind, flops = "fp32", None
                else:
                    overrides, peak_kind = STEP_VARIANTS[twin or label]
                    runner = S.OctsegStep(data["prepared"][size], recipe, [*overrides, *setup], data["work"],
                                          compile=a.compile_backend if twin else None)
                    count = not twin and "octseg" not in block["flops_per_step"]
                    raw = runner.run(max(a.warmup, 2) if twin else a.warmup, a.steps, count_flops=count)
                    if count:
                        block["flops_per_step"]["octseg"] = raw["flops"]
                    flops = block["flops_per_step"].get("octseg")
                wall = time.perf_counter() - t
                del runner
                free_memory()
                record_step(res, model, label, raw, peak_kind, device, flops,
                            {"wall_seconds_incl_setup": round(wall, 1),
                             **({"compile_backend": a.compile_backend} if twin else {})})
            except Exception as exc:  # one failing variant must not lose the others' figures
                note_error(res, f"training {model} {label}", exc)
                free_memory()


def run_profiles(res: Results, guard: Guard, a, device: str, data: dict, models: list, out: Path) -> None:
    """torch.profiler over the timed steps of octseg's bf16 channels-last step, per network: where a step's
    time goes (``out``'s name + ``_profile_<network>.txt``; the head line also in the JSON)."""
    from benchmarks import _speed as S

    label = "octseg bf16-mixed, channels-last"
    for model in models:
        _, size, setup = step_setup(a, device, model)
        if not guard.allows(f"profile {model}", COST["octseg"]):
            continue
        path = out.with_name(f"{out.stem}_profile_{model}.txt")
        try:
            runner = S.OctsegStep(data["prepared"][size], RECIPES[model], [*STEP_VARIANTS[label][0], *setup],
                                  data["work"])
            runner.run(a.warmup, min(a.steps, 5), profile=path)
            del runner
            with res.lock:
                res.figures.setdefault("profile", {})[model] = {"variant": label, "file": path.name,
                                                                "summary": path.read_text().splitlines()[0]}
            res.save()
        except Exception as exc:
            note_error(res, f"profile {model}", exc)
        free_memory()


def note_error(res: Results, what: str, exc: BaseException) -> None:
    msg = f"{type(exc).__name__}: {exc}".strip()
    print(f"  ERROR in {what}: {msg}", file=sys.stderr, flush=True)
    traceback.print_exc(limit=4)
    with res.lock:
        res.figures["errors"].append({"what": what, "error": msg[:2000]})
    res.save()


def run_predict(res: Results, guard: Guard, a, device: str, work: Path) -> None:
    """Part 3: octseg predict on a Cirrus-geometry volume, PyTorch and ONNX Runtime."""
    import numpy as np
    import torch

    from benchmarks import _speed as S
    from octseg.data.synthetic import write_synthetic_dataset
    from octseg.inference.predictor import Predictor
    from octseg.inference.run import predict_path

    if not guard.allows("prediction (set-up)", COST["predict_setup"]):
        return
    work.mkdir(parents=True, exist_ok=True)
    slices = a.slices
    spec = S.MODELS["tiny" if a.quick else "resnet50"]
    input_size = (32, 32) if a.quick else (256, 256)
    t = time.perf_counter()
    write_synthetic_dataset(work / "raw", 1, vendors=["cirrus"], slices=slices, seed=0, fluid_free_fraction=0.0,
                            scale=0.25 if a.quick else 1.0, progress=False)
    src = next((work / "raw").rglob("oct.mhd"))
    synth_s = time.perf_counter() - t
    ckpt = S.random_checkpoint(work / "predict.ckpt", spec, input_size)
    block = {"volume": {"slices": slices, "vendor": "cirrus", "synth_seconds": synth_s},
             "network": f"Unet-{spec['encoder']}", "input_size": list(input_size), "repeats": a.repeats,
             "variants": {}}
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src))
    reader.ReadImageInformation()
    block["volume"]["bscan_size"] = list(reader.GetSize()[1::-1])  # (x, y, B-scans) -> (H, W)
    with res.lock:
        res.figures["predict"] = block
    # the ways to run it: label -> (predictor factory, notes)
    makers = {}
    for batch in a.batches:
        makers[f"torch, batch {batch}"] = lambda b=batch: Predictor.from_checkpoint(ckpt, device=device, batch=b)
    big = max(a.batches)
    makers[f"torch channels-last, batch {big}"] = lambda: Predictor.from_checkpoint(ckpt, device=device, batch=big,
                                                                                    channels_last=True)
    try:
        import onnxruntime as ort

        from octseg.inference.export import export_onnx

        block["onnxruntime"] = ort.__version__
        block["onnxruntime_providers_available"] = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            res.figures["skipped"].append("prediction onnxruntime CUDA: this onnxruntime has no CUDAExecutionProvider "
                                          "(install onnxruntime-gpu)")
        else:
            t = time.perf_counter()
            onnx_path = export_onnx(ckpt, work / "predict.onnx")
            block["onnx_export_seconds"] = time.perf_counter() - t
            name = "onnxruntime " + ("CUDA" if device == "cuda" else "CPU")
            makers[f"{name}, batch {big}"] = lambda: Predictor.from_onnx(onnx_path, device=device, batch=big)
    except ImportError:
        res.figures["skipped"].append("prediction onnxruntime: onnxruntime is not installed (pip install "
                                      "'octseg[onnx]', or onnxruntime-gpu for the CUDA provider)")
    res.save()

    predictors = {}
    for label, make in makers.items():
        try:
            t = time.perf_counter()
            p = make()
            warm = np.zeros((p.batch, *block["volume"]["bscan_size"]), np.uint8)
            p.predict_u8(warm)  # warm-up: cuDNN/cuBLAS handles, ORT's CUDA graph of shapes
            v = {"load_and_warmup_seconds": time.perf_counter() - t, "batch": p.batch, "runs": []}
            if p.backend == "onnx":
                v["providers"] = p.net.session.get_providers()
            predictors[label] = p
            block["variants"][label] = v
        except Exception as exc:
            note_error(res, f"prediction {label} (load)", exc)
    for rep in range(a.repeats):
        for label, p in predictors.items():
            if not guard.allows(f"prediction {label}, run {rep + 1}", COST["predict_run"]):
                continue
            out = work / f"pred-{len(os.listdir(work))}"
            try:
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                run = predict_path(p, src, out, progress=False)
                if run.failures or run.n_bscans != slices:
                    raise RuntimeError(f"predicted {run.n_bscans} of {slices} B-scans; failures {run.failures}")
                mem = torch.cuda.max_memory_allocated() if device == "cuda" and p.backend == "torch" else None
                v = block["variants"][label]
                v["runs"].append({"seconds": run.seconds, "stage_seconds": dict(run.timings),
                                  "peak_memory_bytes": mem})
                best = min(v["runs"], key=lambda r: r["seconds"])
                v.update(seconds_per_volume=best["seconds"], bscans_per_s=slices / best["seconds"],
                         stage_seconds=best["stage_seconds"],
                         peak_memory_bytes=max((r["peak_memory_bytes"] or 0) for r in v["runs"]) or None)
                base = block["variants"].get(f"torch, batch {a.batches[0]}", {}).get("bscans_per_s")
                for w in block["variants"].values():
                    if base and "bscans_per_s" in w:
                        w["ratio_vs_torch_default"] = w["bscans_per_s"] / base
                print(f"  predict | {label} run {rep + 1}: {run.seconds:.2f} s ({slices / run.seconds:.1f} B-scans/s)",
                      flush=True)
                res.save()
            except Exception as exc:
                note_error(res, f"prediction {label} run {rep + 1}", exc)
            finally:
                shutil.rmtree(out, ignore_errors=True)
    if device == "cuda":
        block["notes"] = ("peak memory: torch's allocator only (onnxruntime's CUDA memory is not counted); "
                          "pre- and post-processing run on the CPU for onnxruntime")
    predictors.clear()
    free_memory()


# ----------------------------------------------------------------------------- report


def print_tables(fig: dict) -> None:
    from benchmarks import _speed as S
    from benchmarks._common import print_table

    gib = lambda b: "n/a" if not b else f"{b / 2**30:.2f}"  # noqa: E731
    unit, uname = flop_unit("cpu" if fig["device"] == "cpu" else "cuda")
    if fig.get("matmul_peak"):
        print("\nmatmul peak (torch.mm):")
        print_table(["type", "n", uname], [[k, v["n"], f"{v['flops_per_s'] / unit:.2f}"]
                                               for k, v in fig["matmul_peak"].items()])
    for model, block in fig.get("training", {}).items():
        h, w = block["input_size"]
        fl = block["flops_per_step"]
        print(f"\ntraining {block['network']}, {h}x{w}, 1 + 5 B-scans per step (GFLOP/step: original "
              f"{S.fmt_flops(fl.get('original'))}, octseg {S.fmt_flops(fl.get('octseg'))}):")
        rows = [[label, v["precision"], f"{v['median_s_per_step'] * 1e3:.1f}", f"{v['steps_per_s']:.2f}",
                 f"{v.get('ratio_vs_original', float('nan')):.2f}x", S.fmt_flops(v["achieved_flops_per_s"], unit, 2),
                 f"{S.fmt_pct(v['pct_of_peak'])} {v['peak_reference']}", gib(v["peak_memory_bytes"])]
                for label, v in block["variants"].items()]
        print_table(["loop", "precision", "ms/step", "steps/s", "vs original", uname, "% of peak", "peak GiB"],
                    rows)
    pred = fig.get("predict")
    if pred and pred.get("variants"):
        vol = pred["volume"]
        print(f"\nprediction: octseg predict on a {vol['slices']}-B-scan Cirrus volume "
              f"({vol.get('bscan_size', ['?', '?'])[0]}x{vol.get('bscan_size', ['?', '?'])[1]}), "
              f"{pred['network']} at {pred['input_size'][0]}x{pred['input_size'][1]}, best of {pred['repeats']}:")
        rows = [[label, f"{v['seconds_per_volume']:.2f}", f"{v['bscans_per_s']:.1f}",
                 f"{v.get('ratio_vs_torch_default', float('nan')):.2f}x", gib(v.get("peak_memory_bytes")),
                 " ".join(f"{k}={x:.2f}" for k, x in v["stage_seconds"].items())]
                for label, v in pred["variants"].items() if "bscans_per_s" in v]
        print_table(["backend", "s/volume", "B-scans/s", "vs torch default", "peak GiB", "stages (s)"], rows)
    for s in fig.get("skipped", []):
        print(f"skipped: {s}")
    for e in fig.get("errors", []):
        print(f"ERROR: {e['what']}: {e['error'].splitlines()[0]}")


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/gpu.json; gpu_quick.json with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test on the CPU: every code path, tiny network and sizes, one step")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds after which nothing new starts (default %(default)s; a watchdog ends the "
                         f"process at budget + 10 s, at most {HARD_LIMIT_S} s)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per variant (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    ap.add_argument("--slices", type=int, default=None, help="B-scans in the predicted volume (default 128)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32],
                    help="prediction batch sizes; the first is the reference of the ratios (8: octseg predict's "
                         "default)")
    ap.add_argument("--repeats", type=int, default=2, help="prediction runs per backend (best is kept)")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor; eager with --quick)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=None,
                    help="what to measure (default: all but profile; all with --quick); profile = torch.profiler "
                         "tables of the octseg bf16 channels-last step of each network, written beside --out")
    a = ap.parse_args(argv)

    rc = fail_to_import(("numpy", "torch"))
    if rc:
        return rc
    import torch

    if not torch.cuda.is_available() and not a.quick:  # said before the slow imports of the rest
        print(f"gpu.py: torch {torch.__version__} sees no CUDA GPU here (built for CUDA {torch.version.cuda}); "
              "this benchmark measures a GPU. Run it on a CUDA machine, or pass --quick for a CPU smoke test of "
              "every code path.", file=sys.stderr)
        return 2
    rc = fail_to_import()
    if rc:
        return rc
    device = "cpu" if a.quick else "cuda"
    a.parts = a.parts or list(PARTS if a.quick else PARTS[:-1])
    a.steps = a.steps or (1 if a.quick else 10)
    a.warmup = max(1, a.warmup or (1 if a.quick else 3))
    a.slices = a.slices or (4 if a.quick else 128)
    a.compile_backend = a.compile_backend or ("eager" if a.quick else "inductor")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = a.out or ROOT / "benchmarks" / "results" / ("gpu_quick.json" if a.quick else "gpu.json")

    warnings.filterwarnings("ignore")
    from benchmarks import _speed as S
    from benchmarks._common import quiet_lightning

    quiet_lightning()
    figures = {"quick": a.quick, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               "complete": False, "budget_seconds": a.budget, "steps": a.steps, "warmup": a.warmup,
               "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if device == "cuda" else None},
               "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "compile_backend": a.compile_backend,
               "matmul_peak": {}, "training": {}, "predict": None, "skipped": [], "errors": []}
    res = Results(out, figures)
    guard = Guard(a.budget, res)
    start_watchdog(res, min(a.budget + 10.0, HARD_LIMIT_S))
    print(f"gpu.py on {figures['device']}{' (QUICK SMOKE TEST: tiny sizes, not results)' if a.quick else ''}; "
          f"budget {a.budget:.0f} s; writing {out}", flush=True)

    work = res.work = Path(tempfile.mkdtemp(prefix="octseg-gpu-"))
    try:
        figures["parts"] = a.parts
        measure_peaks(res, device, a.quick)
        models = ["resnet50"] if a.quick else ["resnet50", "vgg19_bn"]
        size = 32 if a.quick else 256
        if {"training", "compile", "profile"} & set(a.parts):
            data = S.make_training_data(work / "train", [size], **({"slices": 2, "scale": 0.25} if a.quick else {}))
            data["work"] = work
        if "training" in a.parts:
            run_training(res, guard, a, device, data, models, compiled=False)
        if "predict" in a.parts:
            reset_global_state()  # Lightning's deterministic flags from the training part would slow inference
            run_predict(res, guard, a, device, work / "predict")
        if "profile" in a.parts:
            run_profiles(res, guard, a, device, data, models, out)
        if a.no_compile or "compile" not in a.parts:
            figures["skipped"].append("torch.compile variants: --no-compile or not in --parts")
        else:
            run_training(res, guard, a, device, data, models, compiled=True)
        with res.lock:  # complete: nothing skipped for time, nothing failed
            figures["complete"] = guard.skipped == 0 and not figures["errors"]
    except Exception as exc:
        note_error(res, "gpu.py", exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.save()
    print_tables(figures)
    print(f"\n{'QUICK SMOKE TEST - ' if a.quick else ''}wrote {out} ({figures['elapsed_seconds']:.0f} s)")
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
