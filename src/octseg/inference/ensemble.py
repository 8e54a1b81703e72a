"""Ensembles: several checkpoints (or the folds of an ``octseg cv`` folder) run as one model.

Why: the K models of a cross-validation, or a few runs with other seeds, segment better together
than any one of them. Everywhere a checkpoint is accepted (``octseg predict/evaluate/export``,
:class:`~octseg.inference.predictor.Predictor`) a list of them, or a CV folder, is accepted too.

An :class:`Ensemble` returns the **log of the mean softmax** over its members, so every consumer
of logits keeps working: ``softmax(output)`` is the mean class probability and ``argmax`` the
ensemble's label. Flip TTA (:func:`octseg.inference.forward.predict_logits`) sees
``outputs_log_probs`` and averages probabilities too, so ensemble + TTA is the mean probability
over members x {plain, flipped}. (A single network's TTA keeps averaging its logits, as before.)

A **CV folder** is a folder holding ``cv.json`` (written by ``octseg cv``); its members are the
``checkpoints`` listed there (relative to the folder) and its post-processing
``postprocessing.min_sizes`` (``{"<class index>": pixels}``) applies unless the user gives
``--min-size``. Those sizes count pixels of B-scans at ``postprocessing.at_size`` (the prepared
dataset's size, where they were chosen); a prediction at another size scales them by the ratio of
pixel areas (:func:`octseg.inference.postprocess.scale_min_sizes`). Without ``at_size`` they are
taken as pixels of the output.

Members must agree on classes, input size and ``context_slices`` (2.5D input: every member reads
the same 2k+1 channels); architectures and training methods may differ. Intensity normalisation
may differ too (each fold of a CV computes its own mean and std on its training data): the
ensemble's input is normalised with the first member's (m0, s0), and every other member i is
wrapped in :class:`Renormalised`, which maps that input to ``(x*s0 + m0 - mi)/si`` - exactly what
member i would see with its own normalisation (the map is linear, so it commutes with resizing
and flips). Each member uses its own default weights (the teacher of a Mean Teacher checkpoint)
unless ``weights`` names others.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from octseg.errors import CheckpointError, ConfigError

CV_FILE = "cv.json"
#: cv.json formats this octseg reads.
CV_FORMATS = (1,)
#: What every member must share (intensity normalisation need not: see :class:`Renormalised`).
COMPATIBLE_FIELDS = ("classes", "input_size", "context_slices")

PathLike = Union[str, os.PathLike]


def is_cv_folder(path: PathLike) -> bool:
    """A folder is a CV folder iff it holds ``cv.json``."""
    return (Path(path) / CV_FILE).is_file()


@dataclass(frozen=True)
class CvFolder:
    """What the ensemble needs from a CV folder's ``cv.json``."""

    path: Path
    checkpoints: tuple[Path, ...]
    classes: Optional[tuple[str, ...]]
    min_sizes: dict[str, int]
    #: (H, W) of the B-scans whose pixels ``min_sizes`` count; None: the output's own pixels
    at_size: Optional[tuple[int, int]] = None


def read_cv_folder(folder: PathLike) -> CvFolder:
    """Parse ``folder/cv.json`` (the contract of ``octseg cv``); a clear error for every problem."""
    folder = Path(folder)
    path = folder / CV_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the CV folder's description ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    if doc.get("format") not in CV_FORMATS:
        raise CheckpointError(f"{path}: cv.json format {doc.get('format')!r}; this octseg reads format "
                              f"{', '.join(map(str, CV_FORMATS))}")
    rels = doc.get("checkpoints")
    if not isinstance(rels, list) or not rels or not all(isinstance(r, str) and r for r in rels):
        raise CheckpointError(f"{path}: 'checkpoints' must be a non-empty list of checkpoint paths (relative to "
                              f"{folder}), found {rels!r}")
    checkpoints = []
    for rel in rels:
        ckpt = folder / rel
        if not ckpt.is_file():
            raise CheckpointError(f"{path}: lists checkpoint {rel!r}, but {ckpt} is not there (a fold that did "
                                  f"not finish? rerun octseg cv, or give the checkpoints that exist)")
        checkpoints.append(ckpt)
    classes = doc.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: 'classes' must be a list of class names, found {classes!r}")
    sizes, at_size = parse_postprocessing(doc.get("postprocessing"), path)
    return CvFolder(folder, tuple(checkpoints), None if classes is None else tuple(classes), sizes, at_size)


def parse_postprocessing(post, where) -> tuple[dict[str, int], Optional[tuple[int, int]]]:
    """``{"min_sizes": {"<class index>": pixels}, "at_size": [H, W]}`` (as ``cv.json`` and an exported
    ensemble's ONNX metadata record it) -> (min_sizes, at_size); a clear error naming ``where`` otherwise."""
    post = post or {}
    sizes = post.get("min_sizes") if isinstance(post, dict) else None
    sizes = {} if sizes is None else sizes
    if not isinstance(sizes, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes.values()):
        raise CheckpointError(f"{where}: 'postprocessing.min_sizes' must map class indices to whole numbers of "
                              f"pixels >= 0, found {sizes!r}")
    at_size = post.get("at_size") if isinstance(post, dict) else None
    if at_size is not None and not (isinstance(at_size, list) and len(at_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in at_size)):
        raise CheckpointError(f"{where}: 'postprocessing.at_size' must be [H, W] in pixels (the size at which "
                              f"min_sizes were chosen), found {at_size!r}")
    return {str(k): int(v) for k, v in sizes.items()}, None if at_size is None else tuple(at_size)


@dataclass
class ModelSources:
    """The checkpoints behind a model argument, and the post-processing a CV folder brings."""

    checkpoints: list[Path]
    cv_folders: list[CvFolder] = field(default_factory=list)

    @property
    def is_ensemble(self) -> bool:
        """True unless one plain checkpoint was given (a CV folder is an ensemble, even of one fold)."""
        return len(self.checkpoints) > 1 or bool(self.cv_folders)

    @property
    def paths(self) -> list[Path]:
        """Every file or folder the user named (outputs must never overwrite them)."""
        return [cv.path for cv in self.cv_folders] + list(self.checkpoints)

    def min_sizes(self) -> Optional[dict[str, int]]:
        """The CV folders' ``min_sizes`` (None without a CV folder), in pixels at :meth:`min_sizes_at`;
        folders that disagree are an error."""
        if not self.cv_folders:
            return None
        first = self.cv_folders[0]
        for other in self.cv_folders[1:]:
            if (other.min_sizes, other.at_size) != (first.min_sizes, first.at_size):
                raise ConfigError(f"CV folders {first.path} and {other.path} record different post-processing "
                                  f"(min_sizes {first.min_sizes} at {first.at_size} vs {other.min_sizes} at "
                                  f"{other.at_size}); choose with --min-size CLASS=PIXELS (--min-size IRF=0 for "
                                  f"none)")
        return dict(first.min_sizes)

    def min_sizes_at(self) -> Optional[tuple[int, int]]:
        """(H, W) at which :meth:`min_sizes` count pixels (``cv.json``'s ``at_size``); None: output pixels."""
        self.min_sizes()  # folders that disagree: the error
        return self.cv_folders[0].at_size if self.cv_folders else None

    def describe(self) -> str:
        """How messages and ``repr`` name the model."""
        if not self.is_ensemble:
            return str(self.checkpoints[0])
        where = ", ".join(str(cv.path) for cv in self.cv_folders)
        return f"ensemble of {len(self.checkpoints)}" + (f" from {where}" if where else "")


def resolve_sources(models: Union[PathLike, Sequence[PathLike]]) -> ModelSources:
    """One path or a list: checkpoint files and/or CV folders -> their member checkpoints, in order."""
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    models = [Path(m) for m in models]
    if not models:
        raise ConfigError("no model given: name a checkpoint, several, or a CV folder")
    sources = ModelSources([])
    for m in models:
        if m.is_dir():
            if not is_cv_folder(m):
                hint = (f"; for a training run give its checkpoint, {m / 'checkpoints' / 'best.ckpt'}"
                        if (m / "checkpoints" / "best.ckpt").is_file() else "")
                raise CheckpointError(f"{m}: a folder without {CV_FILE}, so not a CV folder written by octseg cv; "
                                      f"give checkpoint files or a CV folder{hint}")
            cv = read_cv_folder(m)
            sources.cv_folders.append(cv)
            sources.checkpoints.extend(cv.checkpoints)
        else:
            if m.suffix.lower() == ".onnx" and len(models) > 1:
                raise CheckpointError(f"{m}: an ONNX model cannot join an ensemble; give the checkpoints (an "
                                      f"ensemble of checkpoints exports to one ONNX model: octseg export)")
            sources.checkpoints.append(m)
    seen: dict = {}
    for c in sources.checkpoints:
        key = os.path.realpath(c)
        if key in seen:
            raise ConfigError(f"{c}: given twice (also as {seen[key]}); each ensemble member once")
        seen[key] = c
    return sources


def check_compatible(metas: Sequence[dict], paths: Sequence[PathLike]) -> None:
    """Members must mean the same classes and read the same input; a clear error otherwise.
    (Their intensity normalisations may differ: :class:`Renormalised` reconciles them.)"""
    from octseg.checkpoint import context_slices

    first, p0 = metas[0], paths[0]
    for meta, p in zip(metas[1:], paths[1:]):
        for key in COMPATIBLE_FIELDS:
            if key == "context_slices":  # 2.5D members read 2k+1 channels: one input for all of them
                a, b = context_slices(first), context_slices(meta)
                same = a == b
            else:
                a, b = first[key], meta[key]
                same = list(a) == list(b)
            if not same:
                raise CheckpointError(f"{p0} and {p} cannot form an ensemble: their {key} differ ({a!r} vs {b!r}); "
                                      f"members must share classes, input size and context slices (2.5D input)")


def _same_normalization(a: dict, b: dict) -> bool:
    return all(math.isclose(float(a[k]), float(b[k]), rel_tol=1e-6, abs_tol=1e-9) for k in ("mean", "std"))


class Renormalised(nn.Module):
    """A member whose intensity normalisation (mi, si) differs from the ensemble's (m0, s0).

    The ensemble's input is ``x = (u - m0)/s0`` (u the image in [0, 1]); the member needs
    ``(u - mi)/si = (x*s0 + m0 - mi)/si``: one multiply and one add (plain torch ops, so an
    exported ensemble carries them)."""

    def __init__(self, net: nn.Module, ensemble_norm: dict, member_norm: dict):
        super().__init__()
        self.net = net
        m0, s0 = float(ensemble_norm["mean"]), float(ensemble_norm["std"])
        mi, si = float(member_norm["mean"]), float(member_norm["std"])
        # computed in double precision, stored as float32 constants
        self.register_buffer("scale", torch.tensor(s0 / si, dtype=torch.float32), persistent=False)
        self.register_buffer("shift", torch.tensor((m0 - mi) / si, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


def adapt_normalization(nets: Sequence[nn.Module], metas: Sequence[dict]) -> list[nn.Module]:
    """Every member made to read input normalised as the first member's (see :class:`Renormalised`)."""
    norm0 = metas[0]["normalization"]
    return [net if i == 0 or _same_normalization(norm0, meta["normalization"])
            else Renormalised(net, norm0, meta["normalization"])
            for i, (net, meta) in enumerate(zip(nets, metas))]


class Ensemble(nn.Module):
    """Networks run on the same batch; the output is log(mean over members of softmax(logits)).

    ``softmax(output)`` is the members' mean probability, ``argmax`` the ensemble's label."""

    #: Read by :func:`octseg.inference.forward.predict_logits`: flip TTA averages probabilities.
    outputs_log_probs = True

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one network")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


def ensemble_meta(metas: Sequence[dict], paths: Sequence[PathLike], sources: ModelSources) -> dict:
    """The ensemble's meta: the shared fields of the first member (its normalisation is the
    ensemble's input's), plus every member's origin and own normalisation."""
    first = metas[0]
    methods = list(dict.fromkeys(m.get("method") for m in metas))
    members = [{"checkpoint": str(Path(p).resolve()), "weights": m.get("weights"), "method": m.get("method"),
                "model": {k: m.get("model", {}).get(k) for k in ("arch", "encoder")},
                "normalization": {k: float(m["normalization"][k]) for k in ("mean", "std")}}
               for m, p in zip(metas, paths)]
    return {**first, "method": methods[0] if len(methods) == 1 else ",".join(map(str, methods)),
            "weights": [m.get("weights") for m in metas], "model": [m.get("model") for m in metas],
            "members": members, "cv_folders": [str(cv.path.resolve()) for cv in sources.cv_folders]}


def load_models(models: Union[PathLike, Sequence[PathLike]], weights: Optional[str] = None, device="cpu",
                sources: Optional[ModelSources] = None) -> tuple[nn.Module, dict, ModelSources]:
    """The network (eval mode) and meta of one checkpoint, or an :class:`Ensemble` of several / of a
    CV folder with the meta of :func:`ensemble_meta` (``meta["members"]`` lists them)."""
    from octseg.checkpoint import load_network

    sources = sources or resolve_sources(models)
    if not sources.is_ensemble:
        net, meta = load_network(sources.checkpoints[0], weights, device)
        return net, meta, sources
    nets, metas = [], []
    for p in sources.checkpoints:
        net, meta = load_network(p, weights, device)
        if metas:  # before the next member loads: a mismatch is reported early
            check_compatible([metas[0], meta], [sources.checkpoints[0], p])
        nets.append(net)
        metas.append(meta)
    for cv in sources.cv_folders:
        if cv.classes is not None and list(cv.classes) != list(metas[0]["classes"]):
            raise CheckpointError(f"{cv.path / CV_FILE}: records classes {list(cv.classes)}, but its checkpoints "
                                  f"have {list(metas[0]['classes'])}")
    nets = adapt_normalization(nets, metas)
    return Ensemble(nets).to(device).eval(), ensemble_meta(metas, sources.checkpoints, sources), sources
