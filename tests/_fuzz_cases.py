"""Fuzzing octseg's readers with hypothesis, shared by tests/io/test_fuzz_readers.py (a sample) and
benchmarks/fuzz.py (>= 2,000 cases): random and mutated PNG, JPEG, MetaImage (.mhd + .raw/.zraw),
NIfTI, YAML recipes, checkpoints and split files.

Every case writes its files into a fresh folder and runs the reader octseg uses for them under a
time limit. The outcome is one of

* ``ok``: read (and, where asked, predicted with complete outputs);
* ``error``: an :class:`~octseg.errors.OctsegError` whose message names one of the case's files;
* ``bug``: any other exception, or an OctsegError that does not name the file (a traceback for a user);
* ``hang``: over the time limit;
* ``partial``: a failed prediction left a mask, an overlay or a table behind.

(Skipping an unreadable file is what ``octseg predict`` does with the ``error`` of one input among many.)
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
import shutil
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("png", "jpeg", "mhd", "nifti", "yaml", "checkpoint", "split")
TIME_LIMIT = 10.0  # seconds per case


class Hang(BaseException):
    """Raised by the timer inside a case that runs too long (a BaseException: no reader catches it)."""


def _on_alarm(signum, frame):
    raise Hang()


# ----------------------------------------------------------------------------------------- seeds


def _png(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, format="PNG")
    return buf.getvalue()


def _img_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


MHD_HEADER = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "DimSize = 16 12 3\nElementSpacing = 0.0117 0.0039 0.12\nElementType = MET_UCHAR\n"
              "ElementDataFile = oct.raw\n")


class Seeds:
    """Valid files of every format (the starting points of mutations), made once in ``root``."""

    def __init__(self, root: Path):
        import SimpleITK as sitk
        import torch

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        gray = rng.integers(0, 256, (12, 16), dtype=np.uint8)
        labels = (rng.integers(0, 4, (12, 16))).astype(np.uint8)
        pal = Image.fromarray(labels, mode="L").convert("P")
        pal.info["transparency"] = 0
        self.png = [_png(gray), _png((gray.astype(np.uint16) * 257)), _png(np.stack([gray] * 3, -1)),
                    _png(labels), _png(labels * 85), _img_bytes(pal, "PNG"),
                    _img_bytes(Image.fromarray(gray > 128), "PNG")]
        self.jpeg = [_img_bytes(Image.fromarray(gray), "JPEG", quality=90),
                     _img_bytes(Image.fromarray(np.stack([gray, gray, labels * 60], -1)), "JPEG", progressive=True)]
        vol = rng.integers(0, 256, (3, 12, 16), dtype=np.uint8)
        lab = rng.integers(0, 4, (3, 12, 16), dtype=np.uint8)
        self.mhd = [{"oct.mhd": MHD_HEADER.encode(), "oct.raw": vol.tobytes()},
                    {"oct.mhd": MHD_HEADER.encode(), "oct.raw": vol.tobytes(),
                     "reference.mhd": MHD_HEADER.replace("oct.raw", "reference.raw").encode(),
                     "reference.raw": lab.tobytes()}]
        tmp = self.root / "seed_volumes"
        tmp.mkdir(exist_ok=True)
        img = sitk.GetImageFromArray(vol.astype(np.int16))
        img.SetSpacing((0.0117, 0.0039, 0.12))
        sitk.WriteImage(img, str(tmp / "oct.mhd"), True)  # -> oct.zraw, CompressedData = True
        self.mhd.append({"oct.mhd": (tmp / "oct.mhd").read_bytes(), "oct.zraw": (tmp / "oct.zraw").read_bytes()})
        sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp / "v.nii"))
        sitk.WriteImage(sitk.GetImageFromArray(vol.astype(np.float32)), str(tmp / "v.nii.gz"))
        self.nifti = [("v.nii", (tmp / "v.nii").read_bytes()), ("v.nii.gz", (tmp / "v.nii.gz").read_bytes())]
        from octseg.config.loading import RECIPES

        self.yaml = [(RECIPES / "demo_cpu.yaml").read_bytes(),
                     b"name: tiny\ndata:\n  labelled: 0.5\n  labelled_batch: 2\ntrainer:\n  max_epochs: 2\n"
                     b"model:\n  decoder_channels: [32, 16, 8]\noptim:\n  lr: 0.001\n"]
        sys.path.insert(0, str(Path(__file__).parent))
        from conftest import make_tiny_checkpoint

        self.ckpt_path = make_tiny_checkpoint(self.root / "seed.ckpt", method="supervised")
        self.checkpoint = self.ckpt_path.read_bytes()
        self.checkpoint_obj = torch.load(self.ckpt_path, weights_only=True)
        self.prepared = self._prepared()
        self.split = (self.prepared / "splits" / "seed.json").read_bytes()

    def _prepared(self) -> Path:
        from octseg.data.prepare import prepare_dataset
        from octseg.data.prepared import PreparedDataset
        from octseg.data.synthetic import write_synthetic_dataset

        raw, prep = self.root / "raw", self.root / "prepared"
        write_synthetic_dataset(raw, 3, vendors=["cirrus"], fmt="png", slices=2, scale=0.1, seed=1, progress=False)
        prepare_dataset(raw, prep, size=(32, 32), progress=False)
        ids = [s.id for s in PreparedDataset(prep).slices]
        doc = {"name": "seed", "by": "volume", "seed": 0, "fractions": {"labelled": 0.5, "val": 0.25, "test": 0.0},
               "parts": {"labelled": ids[:2], "unlabelled": ids[2:4], "val": ids[4:], "test": []}}
        (prep / "splits").mkdir(exist_ok=True)
        (prep / "splits" / "seed.json").write_text(json.dumps(doc, indent=2))
        return prep


# ----------------------------------------------------------------------------------------- mutations

INTERESTING = ["0", "-1", "1", "2", "3", "65535", "65536", "2147483648", "99999999999", "-99999999999", "1e308",
               "-1e308", "nan", "inf", "-inf", "0.0", "1e-320", "", " ", "[", "]", "{", "}", "[]", "{}", "null",
               "true", "~", "&a [*a]", "*a", "!!python/object/apply:os.system ['true']", "!!binary AAAA",
               "MET_DOUBLE", "MET_FLOAT", "MET_SHORT", "MET_ULONG_LONG", "MET_OTHER", "LOCAL", "LIST 2D",
               "oct.raw", "../../etc/passwd", "/dev/zero", "/dev/stdin", "True", "False", "\t", "\x00", "\xff",
               "é", "0x10", "1 2", "1 2 3 4", "1000000 1000000 1000000", "0 0 0", "-5 12 3", "a: b: c",
               "- - -", "? x", "'", '"', "%", "@", "`", "|", ">"]

ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("repeat"), st.integers(0, 1 << 20), st.integers(1, 64)),
)
text_ops = st.one_of(
    ops,
    st.tuples(st.just("token"), st.integers(0, 1 << 20), st.sampled_from(INTERESTING)),
    st.tuples(st.just("line"), st.integers(0, 1 << 20), st.sampled_from(["drop", "dup", "swap", "indent"])),
)


def mutate(data: bytes, edits) -> bytes:
    """``data`` with byte/text edits applied (positions taken modulo the length)."""
    b = bytearray(data)
    for op, pos, arg in edits:
        n = len(b)
        i = pos % (n + 1)
        if op == "flip" and n:
            b[i % n] = arg
        elif op == "insert":
            b[i:i] = arg
        elif op == "delete":
            del b[i:i + arg]
        elif op == "truncate":
            del b[i:]
        elif op == "repeat":
            b[i:i] = b[i:i + arg]
        elif op == "token":
            tokens = [m.span() for m in re.finditer(rb"[^\s:=,\[\]{}]+", bytes(b))]
            if tokens:
                s, e = tokens[pos % len(tokens)]
                b[s:e] = arg.encode("utf-8", "surrogateescape")
        elif op == "line":
            lines = bytes(b).split(b"\n")
            k = pos % len(lines)
            if arg == "drop":
                del lines[k]
            elif arg == "dup":
                lines.insert(k, lines[k])
            elif arg == "swap" and len(lines) > 1:
                lines[k], lines[k - 1] = lines[k - 1], lines[k]
            elif arg == "indent":
                lines[k] = b"   " + lines[k]
            b = bytearray(b"\n".join(lines))
    return bytes(b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["teacher", "student", "Unet", "resnet18", "tu-resnet10t", "IRF"]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=8)


def _paths(obj, prefix=()):
    """Every key path into nested dicts/lists."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in list(obj.items())[:64]:
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            yield from _paths(v, prefix + (i,))


def mutate_tree(obj, edits):
    """A deep copy of ``obj`` with values at drawn key paths replaced (or deleted: value ``"<del>"``)."""
    obj = copy.deepcopy(obj)
    for pos, value in edits:
        paths = [p for p in _paths(obj) if p]
        if not paths:
            return value
        path = paths[pos % len(paths)]
        node = obj
        for k in path[:-1]:
            node = node[k]
        if value == "<del>":
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return obj


tree_edits = st.lists(st.tuples(st.integers(0, 1 << 16), json_values | st.just("<del>")), min_size=1, max_size=3)


def case_strategy(fmt: str, seeds: Seeds):
    """Hypothesis strategy of one case of ``fmt``: ``(kind, {file name: bytes})``."""
    def pick(seq):
        return st.integers(0, len(seq) - 1).map(lambda i: seq[i])

    if fmt in ("png", "jpeg"):
        ext = ".png" if fmt == "png" else ".jpg"
        seedlist = seeds.png if fmt == "png" else seeds.jpeg
        mutated = st.tuples(pick(seedlist), st.lists(ops, min_size=1, max_size=6)).map(
            lambda t: ("mutated", {f"scan{ext}": mutate(t[0], t[1])}))
        rand = st.binary(max_size=256).map(lambda b: ("random", {f"scan{ext}": b}))
        magic = st.binary(max_size=128).map(lambda b: ("random", {f"scan{ext}": seedlist[0][:16] + b}))
        return st.one_of(mutated, mutated, mutated, rand, magic)
    if fmt == "mhd":
        def build(t):
            seed, which, edits = t
            files = dict(seed)
            names = sorted(files)
            name = names[which % len(names)]
            files[name] = mutate(files[name], edits)
            return "mutated", files
        return st.tuples(pick(seeds.mhd), st.integers(0, 3), st.lists(text_ops, min_size=1, max_size=5)).map(build)
    if fmt == "nifti":
        def build_nii(t):
            (name, data), edits, inner = t
            if name.endswith(".gz") and inner:  # mutate the NIfTI inside the gzip, so the header is reached
                return "mutated", {name: gzip.compress(mutate(gzip.decompress(data), edits), mtime=0)}
            return "mutated", {name: mutate(data, edits)}
        return st.tuples(pick(seeds.nifti), st.lists(ops, min_size=1, max_size=5), st.booleans()).map(build_nii)
    if fmt == "yaml":
        mutated = st.tuples(pick(seeds.yaml), st.lists(text_ops, min_size=1, max_size=5)).map(
            lambda t: ("mutated", {"recipe.yaml": mutate(t[0], t[1])}))
        rand = st.text(max_size=200).map(lambda s: ("random", {"recipe.yaml": s.encode("utf-8", "surrogatepass")}))
        return st.one_of(mutated, mutated, mutated, rand)
    if fmt == "checkpoint":
        raw = st.lists(ops, min_size=1, max_size=4).map(
            lambda e: ("bytes", {"model.ckpt": mutate(seeds.checkpoint, e)}))
        tree = tree_edits.map(lambda e: ("tree", {"model.ckpt": _save_ckpt(seeds.checkpoint_obj, e)}))
        return st.one_of(raw, tree, tree)
    if fmt == "split":
        doc = json.loads(seeds.split)
        text = st.lists(text_ops, min_size=1, max_size=4).map(lambda e: ("text", {"fuzz.json": mutate(seeds.split, e)}))
        tree = tree_edits.map(lambda e: ("tree", {"fuzz.json": _dump_json(mutate_tree(doc, e))}))
        return st.one_of(text, tree)
    raise ValueError(fmt)


def _dump_json(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def _save_ckpt(obj, edits) -> bytes:
    """The checkpoint dict with meta values replaced (tensors kept by reference, so this is cheap)."""
    import torch

    meta = mutate_tree(obj["octseg"], edits) if obj.get("octseg") is not None else None
    new = dict(obj, octseg=meta)
    buf = io.BytesIO()
    try:
        torch.save(new, buf)
    except Exception:  # noqa: BLE001 - a value torch cannot save: keep the original meta
        buf = io.BytesIO()
        torch.save(obj, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- running a case


class SilentPadding(AssertionError):
    """A volume read returned more voxels than its files hold bytes: the reader padded it silently."""


def _not_padded(voxels: int, data_files: list, header: int) -> None:
    """The oracle for volumes that read "fine": at least one byte per voxel must be in the files
    (inflated, for .zraw/.gz)."""
    import zlib

    have = 0
    for f in data_files:
        raw = f.read_bytes()
        if f.suffix in (".zraw", ".gz"):
            try:
                d = zlib.decompressobj(32 + zlib.MAX_WBITS)
                raw = d.decompress(raw, voxels * 8 + header + 1)
            except zlib.error:
                pass
        have += max(len(raw) - header, 0)
    if voxels > have:
        raise SilentPadding(f"read {voxels} voxels from {have} bytes of data in {[f.name for f in data_files]}")


class Runner:
    """Runs cases of every format and counts outcomes; ``predict_every`` > 0 also predicts every
    n-th image/volume case into a fresh OUT and checks for partial outputs."""

    def __init__(self, root: Path, seeds: Seeds, time_limit: float = TIME_LIMIT, predict_every: int = 0):
        import SimpleITK as sitk

        sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK's warnings about odd headers: noise here
        self.root, self.seeds, self.time_limit, self.predict_every = Path(root), seeds, time_limit, predict_every
        self.counts: dict[str, dict[str, int]] = {}
        self.error_types: dict[str, int] = {}
        self.bugs: list[dict] = []
        self.n = 0
        self.predicted = 0
        self.slowest = 0.0
        self._predictor = None

    def predictor(self):
        if self._predictor is None:
            from octseg.inference.predictor import Predictor

            self._predictor = Predictor.from_checkpoint(self.seeds.ckpt_path, device="cpu", batch=4)
        return self._predictor

    def _read(self, fmt: str, folder: Path, files: dict) -> None:
        """The reader octseg uses for ``fmt`` (raises on a bad file)."""
        from octseg.constants import RETOUCH_CLASSES

        if fmt in ("png", "jpeg"):
            from octseg.inference.inputs import read_bscans
            from octseg.io.images import header_size, mask_array, read_image

            p = folder / next(iter(files))
            header_size(p)
            read_image(p)
            mask_array(p)
            list(read_bscans(p, "folders", RETOUCH_CLASSES).load())
        elif fmt == "mhd":
            from octseg.inference.inputs import read_bscans
            from octseg.io.volumes import volume_header

            volume_header(folder / "oct.mhd")
            bscans = list(read_bscans(folder / "oct.mhd", "retouch", RETOUCH_CLASSES).load())
            _not_padded(sum(b.image.size for b in bscans), [folder / n for n in files if not n.endswith(".mhd")
                                                             and n.startswith("oct.")], 0)
        elif fmt == "nifti":
            from octseg.io.images import to_uint8
            from octseg.io.volumes import Volume, volume_header

            p = folder / next(iter(files))
            volume_header(p)
            _not_padded(to_uint8(Volume(p).array, source=p).size, [p], 348)
        elif fmt == "yaml":
            from octseg.config import load_config

            load_config(folder / "recipe.yaml")
        elif fmt == "checkpoint":
            from octseg.inference.predictor import Predictor

            Predictor.from_checkpoint(folder / "model.ckpt", device="cpu")
        elif fmt == "split":
            from octseg.data.splits import load_split, split_indices

            split = load_split(self.seeds.prepared, "fuzz")
            split_indices(self.seeds.prepared, split)

    def _write(self, fmt: str, folder: Path, files: dict) -> None:  # noqa: D401
        if fmt == "split":
            folder = self.seeds.prepared / "splits"
        for name, data in files.items():
            (folder / name).write_bytes(data)

    def _predict(self, fmt: str, folder: Path, files: dict) -> Optional[str]:
        """Predict the case's input into a fresh OUT: None when the outputs are whole (or absent after
        an error), else what is partial."""
        from octseg.errors import OctsegError
        from octseg.inference.run import predict_path

        src = folder / ("oct.mhd" if fmt == "mhd" else next(iter(files)))
        out = folder / "out"
        self.predicted += 1
        try:
            run = predict_path(self.predictor(), src, out, progress=False)
        except OctsegError:
            run = None
        left = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".octseg" not in p.parts] \
            if out.exists() else []
        if run is None:
            return f"left {left} after an error" if left else None
        if "fluid.csv" not in left or not any(p.startswith("masks/") for p in left):
            return f"finished without its outputs: {left}"
        for p in out.rglob("*.png"):
            with Image.open(p) as im:
                im.load()
        return None

    def run(self, fmt: str, kind: str, files: dict) -> str:
        """One case: its outcome (``ok``, ``error``, ``bug``, ``hang``, ``partial``), counted."""
        from octseg.errors import OctsegError

        self.n += 1
        folder = self.root / f"case{self.n}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self._write(fmt, folder, files)
        outcome, detail = "ok", None
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.time_limit)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    self._read(fmt, folder, files)
                except OctsegError as exc:
                    names = [n for n in files] + [str(folder)]
                    if any(n in str(exc) for n in names) and "\n" not in str(exc).strip():
                        outcome = "error"
                        self.error_types[type(exc).__name__] = self.error_types.get(type(exc).__name__, 0) + 1
                    else:
                        outcome, detail = "bug", f"{type(exc).__name__} not naming the file: {exc}"
                if self.predict_every and fmt in ("png", "jpeg", "mhd") and self.n % self.predict_every == 0:
                    problem = self._predict(fmt, folder, files)
                    if problem:
                        outcome, detail = "partial", problem
        except Hang:
            outcome, detail = "hang", f"over {self.time_limit} s"
        except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
            outcome = "bug"
            detail = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=-6))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        self.slowest = max(self.slowest, time.perf_counter() - t0)
        c = self.counts.setdefault(fmt, {})
        c[outcome] = c.get(outcome, 0) + 1
        if outcome in ("bug", "hang", "partial"):
            self.bugs.append({"format": fmt, "kind": kind, "outcome": outcome, "detail": str(detail)[:3000],
                              "files": {k: v[:2000].hex() if len(v) <= 2000 else v[:2000].hex() + "..."
                                        for k, v in files.items()}})
        if fmt != "split":
            shutil.rmtree(folder, ignore_errors=True)
        return outcome

    def summary(self) -> dict:
        total = {k: sum(c.get(k, 0) for c in self.counts.values()) for k in ("ok", "error", "bug", "hang", "partial")}
        return {"cases": self.n, "per_format": {f: sum(c.values()) for f, c in self.counts.items()},
                "outcomes_per_format": self.counts, "outcomes": total, "errors_by_type": self.error_types,
                "tracebacks": total["bug"], "hangs": total["hang"], "partial_outputs": total["partial"],
                "predicted_cases": self.predicted, "slowest_case_s": round(self.slowest, 3),
                "time_limit_s": self.time_limit}
