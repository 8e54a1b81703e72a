"""The `octseg` command line. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from octseg import __version__
from octseg.errors import OctsegError


def _add_reader_options(p: argparse.ArgumentParser) -> None:
    """Options that choose how a raw data folder is read (shared by prepare/evaluate/predict/train)."""
    p.add_argument("--layout", choices=["auto", "retouch", "folders", "clinic"], default="auto",
                   help="data layout of SRC (default: detect)")
    p.add_argument("--images", type=Path, default=None, help="explicit image folder (folders layout)")
    p.add_argument("--masks", type=Path, default=None, help="explicit mask folder (folders layout)")
    p.add_argument("--pair-by-order", action="store_true",
                   help="pair images and masks by sorted order instead of by file stem (as the original project did)")
    p.add_argument("--volume-regex", default=None,
                   help="regular expression with groups 'volume' and 'slice' that parses file stems")
    p.add_argument("--keep-identifiers", action="store_true", help=KEEP_IDENTIFIERS_HELP)


OVERWRITE_HELP = ("write into OUT although it holds files octseg did not write (those with octseg's names are "
                  "replaced, others kept), or replace an earlier octseg run's output there")


ENSEMBLE_HELP = ("an octseg checkpoint (.ckpt; for predict --backend onnx also an exported .onnx); several "
                 "checkpoints and/or a CV folder (octseg cv) run as one ensemble that averages their class "
                 "probabilities")


KEEP_IDENTIFIERS_HELP = ("let patient names, ids and birth dates from clinic file headers into volume ids, file "
                         "names, tables and DICOM SEG files (by default they are removed)")


def _reader_kwargs(a) -> dict:
    kw = dict(layout=a.layout, images=a.images, masks=a.masks,
              pair_by_order=a.pair_by_order, volume_regex=a.volume_regex)
    if getattr(a, "keep_identifiers", False):
        kw["keep_identifiers"] = True
    return kw


def cmd_synth(a) -> int:
    from octseg.data.synthetic import write_synthetic_dataset

    summary = write_synthetic_dataset(
        a.out, volumes=a.volumes, vendors=[v.strip() for v in a.vendors.split(",") if v.strip()],
        fmt=a.format, slices=a.slices, scale=a.scale, seed=a.seed,
        fluid_free_fraction=a.fluid_free, preview=a.preview, real_reference=a.real_reference,
        overwrite=a.overwrite,
    )
    print(summary["text"])
    return 0


def cmd_prepare(a) -> int:
    from octseg.data.prepare import prepare_dataset

    size = None if a.keep_size else (tuple(a.size) if a.size else None)
    ds = prepare_dataset(a.src, a.out, size=size, **_reader_kwargs(a))
    n_lab = int(ds.labelled.sum())
    n_vol = len({s.volume for s in ds.slices})
    print(f"prepared {len(ds)} B-scans ({n_lab} labelled, {len(ds) - n_lab} unlabelled) "
          f"in {n_vol} volumes at {ds.size[0]}x{ds.size[1]}, classes {list(ds.classes)} -> {a.out}")
    return 0


def cmd_split(a) -> int:
    from octseg.data.splits import make_split

    path = make_split(a.prepared, labelled=a.labelled, labelled_count=a.labelled_count, val=a.val,
                      test=a.test, seed=a.seed, by=a.by, name=a.name)
    import json

    parts = json.loads(Path(path).read_text())["parts"]
    counts = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    print(f"split written to {path}: {counts} B-scans")
    return 0


def cmd_train(a) -> int:
    from octseg.config import load_config
    from octseg.training.run import train

    cfg = load_config(a.config, a.overrides)
    result = train(cfg, out_dir=a.out, resume=a.resume, overwrite=a.overwrite)
    print(result.summary())
    return 0


def cmd_cv(a) -> int:
    from octseg.config import load_config
    from octseg.cv import run_cv

    cfg = load_config(a.config, a.overrides)
    out = a.out if a.out is not None else Path("runs") / f"{cfg.name}-cv{a.folds}"
    result = run_cv(cfg, out, folds=a.folds, recipe=str(a.config), resume=a.resume, select=a.select,
                    tta=a.tta == "flip", device=a.device, overwrite=a.overwrite)
    print(result.summary_text())
    return 0


def cmd_pretrain(a) -> int:
    from octseg.training.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(out=a.out, objective=a.objective, data=list(a.data), synthetic_volumes=a.synthetic_volumes,
                         synthetic_slices=a.synthetic_slices, encoder=a.encoder, arch=a.arch,
                         encoder_depth=a.encoder_depth, decoder_channels=a.decoder_channels, size=tuple(a.size),
                         steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, mask_ratio=a.mask_ratio, patch=a.patch,
                         noise=a.noise, checkpoint_every=a.checkpoint_every, device=a.device, overwrite=a.overwrite)
    print(pretrain(cfg, resume=a.resume).summary())
    return 0


def cmd_demo(a) -> int:
    from octseg.demo import run_demo

    run_demo(a.out, minutes=a.minutes, seed=a.seed, precision=a.precision)
    return 0


def cmd_evaluate(a) -> int:
    from octseg.errors import ConfigError
    from octseg.evaluate import evaluate, format_evaluation, write_json
    from octseg.io.outputs import check_output_file

    protect = [*a.checkpoint, a.data]
    if a.json is not None:  # before the work, not after it
        check_output_file(a.json, a.overwrite, protect)
    if a.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {a.batch}")
    result = evaluate(a.checkpoint, a.data, split=a.split, part=a.part, tta=a.tta, weights=a.weights,
                      at_model_size=a.at_model_size, batch=a.batch, device=a.device, progress=True,
                      min_sizes=a.min_size or None, **_reader_kwargs(a))
    print(format_evaluation(result))
    if a.json is not None:
        print(f"\nreport written to {write_json(result, a.json, a.overwrite, protect)}")
    return 0


def cmd_predict(a) -> int:
    """Returns 0, or 1 when some inputs failed (the others were predicted)."""
    import time

    from octseg.errors import DataError
    from octseg.inference.postprocess import parse_min_sizes
    from octseg.inference.predictor import Predictor
    from octseg.inference.inputs import plan_inputs
    from octseg.inference.run import claim_output, format_summary, predict_path

    from octseg.inference.shards import resolve_shard

    t0 = time.perf_counter()
    shard = resolve_shard(a.shard)
    if shard is not None and a.report:
        from octseg.errors import ConfigError

        raise ConfigError("--report with --shard: merge the shards (octseg merge-csv OUT), then run octseg report OUT")
    jobs, notes = plan_inputs(a.input, keep_identifiers=a.keep_identifiers)  # a bad INPUT fails before the model loads
    with claim_output(a.out, a.input, a.overwrite, shard, a.resume, models=a.checkpoint) as folder:
        predictor = Predictor.from_checkpoint(a.checkpoint, device=a.device, weights=a.weights,
                                              tta=a.tta == "flip", backend=a.backend, batch=a.batch)
        if a.min_size:  # else none, or a CV folder's recorded min_sizes
            predictor.min_sizes = parse_min_sizes(a.min_size, predictor.classes)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        load_s = time.perf_counter() - t0
        run = predict_path(predictor, a.input, a.out, fmt=a.format, jobs=jobs, folder=folder,
                           keep_images=a.report, shard=shard, resume=a.resume)
        report = None
        if a.report and run.n_bscans:
            from octseg.report.prediction import write_prediction_report

            skipped = run.journal is not None and run.journal.skipped  # their B-scans: read again from the sources
            report = write_prediction_report(a.out, folder=folder, images=None if skipped else run.images,
                                             spacings={v: d["spacing"] for v, d in run.volumes.items()})
            run.images = None
    print(format_summary(run, predictor))
    if a.resume and run.journal is not None:
        print(run.journal.summary())
    print(f"(model loaded in {load_s:.1f} s)")
    if report is not None:
        print(f"report written to {report.path} ({report.size_bytes / 1e6:.1f} MB in {report.seconds:.1f} s)")
    if shard is not None:
        print(f"shard {shard.index}/{shard.count} ({shard.origin}): its tables are in {a.out / 'parts'}; when "
              f"every shard has finished, `octseg merge-csv {a.out}` writes fluid.csv and confidence.csv")
        if run.n_bscans == 0 and not run.failures:
            return 0  # more shards than inputs: this one had nothing to do
    if run.n_bscans == 0:
        raise DataError(a.input, f"none of the {len(jobs)} input(s) could be predicted")
    return 1 if run.failures else 0


def cmd_merge_csv(a) -> int:
    """Returns 0, or 1 when some inputs failed in the shards."""
    from octseg.inference.shards import merge_parts

    result = merge_parts(a.out)
    print(result.summary())
    return 1 if result.failures else 0


def cmd_info(a) -> int:
    """What a clinic OCT file (or .mhd/.nii volume) holds: geometry, spacing, vendor; patient fields redacted."""
    from octseg.io.vendor import clinic_format, describe, probe

    if clinic_format(a.path) is None and a.path.suffix.lower() in (".mhd", ".nii", ".gz", ".mha"):
        from octseg.io.volumes import volume_header

        h = volume_header(a.path)
        W, H, S = h.GetSize()
        sx, sy, sz = h.GetSpacing()
        print(f"{a.path}: volume of {S} B-scans of {H} x {W} pixels; spacing axial {sy:.6g} mm, lateral "
              f"{sx:.6g} mm, between B-scans {sz:.6g} mm")
        return 0
    print(describe(probe(a.path), keep_identifiers=a.keep_identifiers))
    return 0


def cmd_report(a) -> int:
    from octseg.report import write_report

    r = write_report(a.path, out=a.out, overwrite=a.overwrite)
    extra = f" ({r.size_bytes / 1e6:.1f} MB in {r.seconds:.1f} s)" if hasattr(r, "size_bytes") else ""
    print(f"report written to {r.path}{extra}")
    return 0


def cmd_export(a) -> int:
    from octseg.inference.export import export_onnx

    path = export_onnx(a.checkpoint, a.out, weights=a.weights, overwrite=a.overwrite)
    print(f"exported {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="octseg", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--version", action="version", version=f"octseg {__version__}")
    ap.add_argument("--debug", action="store_true",
                    help="show the full traceback of an error (also OCTSEG_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_IntermixedParser)

    p = sub.add_parser("synth", help="generate synthetic RETOUCH-like OCT volumes")
    p.add_argument("out", type=Path)
    p.add_argument("--volumes", type=int, required=True, help="number of volumes")
    p.add_argument("--vendors", default="cirrus,spectralis,topcon", help="comma-separated vendor styles")
    p.add_argument("--format", choices=["mhd", "png"], default="mhd",
                   help="mhd: RETOUCH challenge layout; png: images/ + masks/ folders")
    p.add_argument("--slices", type=int, default=None, help="B-scans per volume (default: the vendor's)")
    p.add_argument("--scale", type=float, default=1.0, help="scale factor on B-scan height/width (keeps tests small)")
    p.add_argument("--fluid-free", type=float, default=0.2, help="fraction of volumes without fluid")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--preview", type=Path, default=None, help="write a preview figure (PNG)")
    p.add_argument("--real-reference", type=Path, default=None,
                   help="a real B-scan image shown beside the synthetic ones in the preview")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="turn a raw data folder into a prepared dataset")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize every B-scan to H x W")
    g.add_argument("--keep-size", action="store_true",
                   help="keep the native size (the default; all B-scans must share one size)")
    _add_reader_options(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("split", help="split a prepared dataset by volume into labelled/unlabelled/val/test")
    p.add_argument("prepared", type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--labelled", "--labeled", type=float, help="fraction of the training volumes whose labels are used")
    g.add_argument("--labelled-count", "--labeled-count", type=int, help="number of labelled B-scans to use")
    p.add_argument("--val", type=float, required=True, help="fraction of volumes for validation")
    p.add_argument("--test", type=float, default=0.0, help="fraction of volumes for testing")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--by", choices=["volume", "slice"], default="volume",
                   help="volume (default, no leakage) or slice (the original project's leaky per-B-scan split)")
    p.add_argument("--name", default=None,
                   help="split name: writes splits/NAME.json (default: named after the parameters, e.g. "
                        "volume-l0.5-v0.2-t0-s0, the name training uses for the same values)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", type=Path, help="YAML recipe, e.g. configs/demo_cpu.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_epochs=3")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="K-fold cross-validation of a recipe by volume: one run folder per fold, "
                                  "out-of-fold scores, post-processing chosen on them, a fold ensemble")
    p.add_argument("config", type=Path, help="YAML recipe, as octseg train takes it")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as octseg train takes them")
    p.add_argument("--folds", type=int, default=5, help="number of folds K (default 5)")
    p.add_argument("--out", type=Path, default=None, help="CV folder (default: runs/<recipe name>-cvK)")
    p.add_argument("--select", choices=["best", "last"], default="best",
                   help="best: best.ckpt selected on fold k+1 (the other K-2 folds train; default); last: train "
                        "on all K-1 other folds and keep the final weights")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="test-time augmentation when scoring")
    p.add_argument("--device", default="auto", help="device for scoring the held-out volumes")
    p.add_argument("--resume", action="store_true",
                   help="reuse finished folds, continue an interrupted fold from its last.ckpt, re-summarise")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("pretrain", help="pretrain an encoder without internet (on synthetic OCT or unlabelled "
                                        "B-scans) for model.encoder_weights=PATH")
    p.add_argument("--out", type=Path, required=True, help="the encoder file to write, e.g. encoder.pth")
    p.add_argument("--objective", choices=["synthetic", "mim", "denoise"], required=True,
                   help="synthetic: supervised 4-class segmentation of octseg synth volumes; mim: reconstruct "
                        "masked patches; denoise: reconstruct speckle-noised B-scans")
    p.add_argument("--data", type=Path, action="append", default=[], metavar="PATH",
                   help="unlabelled B-scans for mim/denoise in any layout octseg reads (repeatable)")
    p.add_argument("--synthetic-volumes", type=int, default=0, metavar="N",
                   help="octseg synth volumes (generated once into the cache): the data of --objective synthetic, "
                        "extra images for mim/denoise")
    p.add_argument("--synthetic-slices", type=int, default=12, help="B-scans per synthetic volume (default 12)")
    p.add_argument("--encoder", default="resnet18", help="segmentation-models-pytorch encoder (default resnet18)")
    p.add_argument("--arch", default="Unet", help="architecture around the encoder while pretraining (default Unet)")
    p.add_argument("--encoder-depth", type=int, default=5)
    p.add_argument("--decoder-channels", type=int, nargs="+", default=None, metavar="C")
    p.add_argument("--size", type=int, nargs=2, default=[256, 384], metavar=("H", "W"),
                   help="B-scans are resized to H x W (default 256 384)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-ratio", type=float, default=0.6, help="mim: fraction of patches masked (default 0.6)")
    p.add_argument("--patch", type=int, default=0, help="mim: patch side in pixels (default: shorter side / 16)")
    p.add_argument("--noise", type=float, default=0.5, help="denoise: speckle strength (default 0.5)")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS",
                   help="write the resumable checkpoint OUT.pretrain.ckpt every STEPS steps (and at the end)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT.pretrain.ckpt (e.g. with more --steps)")
    p.add_argument("--overwrite", action="store_true", help="start again, replacing OUT and its checkpoint")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("demo", help="synthesise data, train supervised and Mean Teacher on CPU, compare")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--minutes", type=float, default=None, help="training time budget per method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "32", "bf16-mixed"], default="auto",
                   help="training precision (default auto: bf16 mixed precision where the CPU does bf16 natively, "
                        "else 32; 32 times the demo as a CPU without bf16 runs it)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="score a checkpoint on a dataset with honest per-class metrics")
    p.add_argument("checkpoint", type=Path, nargs="+", metavar="CHECKPOINT", help=ENSEMBLE_HELP)
    p.add_argument("data", type=Path, help="prepared dataset or raw data folder")
    p.add_argument("--split", default=None, help="split name of a prepared dataset")
    p.add_argument("--part", default="test", help="part of the split to score (default: test)")
    p.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    p.add_argument("--tta", choices=["none", "flip"], default="none")
    p.add_argument("--weights", choices=["teacher", "student"], default=None,
                   help="which network of a Mean Teacher checkpoint (default: the checkpoint's, the teacher)")
    p.add_argument("--at-model-size", action="store_true",
                   help="score at the model's input size instead of each scan's native size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--min-size", action="append", default=[], metavar="CLASS=PIXELS",
                   help="remove connected components smaller than PIXELS (of the scored B-scan) of CLASS before "
                        "scoring (default: none, or a CV folder's recorded min_sizes, scaled from its at_size); "
                        "repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file that octseg did not write")
    _add_reader_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="segment scans: masks, overlays and fluid volumes")
    p.add_argument("checkpoint", type=Path, nargs="+", metavar="CHECKPOINT", help=ENSEMBLE_HELP)
    p.add_argument("input", type=Path, help="an image, a folder of images, an oct.mhd volume or a folder of volumes")
    p.add_argument("out", type=Path)
    p.add_argument("--tta", choices=["none", "flip"], default="none")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--format", choices=["png", "mhd", "nii", "dcm"], default=None,
                   help="mask format (default: png for images, mhd for volumes; dcm: a DICOM Segmentation per "
                        "volume, referencing the input DICOM OCT or the B-scans written beside it as DICOM OCT)")
    p.add_argument("--keep-identifiers", action="store_true", help=KEEP_IDENTIFIERS_HELP)
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--weights", choices=["teacher", "student"], default=None,
                   help="which network of a Mean Teacher checkpoint (default: the checkpoint's, the teacher)")
    p.add_argument("--min-size", action="append", default=[], metavar="CLASS=PIXELS",
                   help="remove connected components smaller than PIXELS (of the output B-scan) of CLASS (name "
                        "or index); repeatable (default: none, or a CV folder's recorded min_sizes, scaled from "
                        "its at_size to each B-scan's size)")
    p.add_argument("--report", action="store_true",
                   help="also write OUT/report.html: a self-contained page with a viewer per volume")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="predict only shard I of N (0-based) of INPUT's files into the shared OUT, writing its own "
                        "CSV part; 'auto' takes I and N from torchrun or a SLURM array job (under torchrun with "
                        "several processes this is the default); then run octseg merge-csv OUT")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped octseg predict into OUT: inputs whose outputs are complete (checked "
                        "against OUT/.octseg/manifest.jsonl's checksums) are skipped, the rest predicted")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("merge-csv", help="join the CSV parts of a sharded octseg predict (--shard I/N) into "
                                         "OUT/fluid.csv and OUT/confidence.csv")
    p.add_argument("out", type=Path, help="the OUT folder the shards wrote into")
    p.set_defaults(func=cmd_merge_csv)

    p = sub.add_parser("info", help="what a clinic OCT file holds: format, geometry, voxel spacing, laterality, "
                                    "localizer, vendor (patient fields redacted)")
    p.add_argument("path", type=Path, help="a .vol, .e2e, HEYEX XML export (file or folder), .fda, .fds, .img or "
                                           "DICOM OCT file (or an .mhd/.nii volume)")
    p.add_argument("--keep-identifiers", action="store_true", help="also print the patient fields' values")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("report", help="write a self-contained HTML report of a prediction, a training run "
                                      "or a benchmark JSON")
    p.add_argument("path", type=Path, help="an octseg predict OUT folder (-> OUT/report.html), a training run "
                                           "folder (-> RUN/report.html) or a benchmark JSON file")
    p.add_argument("--out", type=Path, default=None,
                   help="the HTML file for a benchmark JSON (default: beside it, NAME.html)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file that octseg did not write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a checkpoint (or an ensemble) to ONNX")
    p.add_argument("checkpoint", type=Path, nargs="+", metavar="CHECKPOINT", help=ENSEMBLE_HELP)
    p.add_argument("out", type=Path)
    p.add_argument("--weights", choices=["teacher", "student"], default=None,
                   help="which network of a Mean Teacher checkpoint (default: the checkpoint's, the teacher)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT file that octseg did not write")
    p.set_defaults(func=cmd_export)
    for p in sub.choices.values():  # `octseg predict ... --debug` works as well as `octseg --debug predict`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return ap


class _IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes options anywhere between its positionals, as a user expects:
    ``octseg predict A.ckpt B.ckpt scans/ --tta flip out/`` (plain argparse splits positionals at the
    option and, with several checkpoints, misreads which is INPUT and which is OUT)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv=None) -> int:
    import warnings

    warnings.formatwarning = _format_warning
    # Lightning's start-up chatter (accelerator lines, tips) and third-party deprecation notices
    # are noise for a command-line user; octseg prints what matters (device and precision included).
    # Importing Lightning sets its package loggers back to INFO, so the loggers its messages come
    # from (the rank-zero helpers, children of those) are the ones quietened; they keep warnings.
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|does not have many workers|smaller than the logging "
                                              r"interval|exists and is not empty).*")
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("OCTSEG_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure a user sees is one line; --debug shows the traceback
        if debug:
            raise
        print(f"octseg {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, OctsegError) else 1


def _one_line(exc: BaseException) -> str:
    """The error as one line: octseg's own message, an OS error with its file, or the type and
    first line of anything unexpected (with a pointer to --debug)."""
    if isinstance(exc, OctsegError):
        return " ".join(str(exc).split("\n"))
    if isinstance(exc, OSError):
        from octseg.io.outputs import write_error

        if exc.errno is not None and exc.filename:
            return str(write_error(exc, exc.filename, "cannot access"))
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"unexpected {type(exc).__name__}: {first} (this is a bug in octseg or an input it does not "
            f"recognise; rerun with --debug for the traceback and report it)")


if __name__ == "__main__":
    sys.exit(main())
