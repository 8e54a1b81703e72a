"""``octseg predict --resume``: a journal of finished inputs, so a killed run continues where it stopped.

Every ``octseg predict`` keeps ``manifest.jsonl`` in its record (``OUT/.octseg/``, or its shard's
part record): a header line with the settings that shape the outputs (checkpoint(s) and sha256,
weights, TTA, minimum sizes, backend, mask format, input), then one line per input whose outputs
are all in place, with the sha256 of every output file and the figures the input adds to
``fluid.csv`` and ``confidence.csv``. A line is appended only after the input's files were renamed
into place (atomic writes), so it always describes complete files; a kill in the middle of a line
leaves a line that does not parse, and that input is predicted again.

With ``--resume`` an input is skipped only when its line is there, the input file has the size and
modification time it had, and every output still has its checksum (a changed, truncated or
missing output is predicted again); the skipped inputs' figures come from the journal, so the
final tables are byte-identical to an uninterrupted run's. Other settings are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from octseg.errors import DataError
from octseg.io.outputs import append_text, atomic_write_text, json_default, write_error

MANIFEST = "manifest.jsonl"
KIND = "octseg predict manifest"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_key(path) -> str:
    """How the journal names an input: a hash of its path, since clinic file names may hold patient
    identifiers, which stay out of every output unless asked (``--keep-identifiers``)."""
    return hashlib.sha256(os.path.abspath(str(path)).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def input_stat(path) -> list:
    """(size, mtime_ns) of an input: a changed input is predicted again."""
    try:
        st = os.stat(path)
    except OSError:
        return [None, None]
    return [st.st_size, st.st_mtime_ns]


def run_settings(predictor, fmt, input_path) -> dict:
    """What shapes a run's outputs; a resumed run must match it (an ensemble: every member, in order)."""
    meta = getattr(predictor, "meta", {}) or {}
    src = str(getattr(predictor, "source", "") or "")
    members = meta.get("members")
    if members and not os.path.isfile(src):  # an ensemble of checkpoints (not an exported .onnx file)
        ckpt = [m["checkpoint"] for m in members]
        digest = [sha256_file(c) if os.path.isfile(c) else None for c in ckpt]
    else:
        digest = sha256_file(src) if src and os.path.isfile(src) else None
        ckpt = os.path.abspath(src) if src else ""
    return {"checkpoint": ckpt, "checkpoint_sha256": digest,
            "weights": meta.get("weights"), "tta": bool(predictor.tta), "backend": predictor.backend,
            "min_sizes": {str(k): int(v) for k, v in sorted((predictor.min_sizes or {}).items())},
            # a CV folder's sizes count pixels at its at_size (scaled per B-scan); absent: output pixels
            **({"min_sizes_at": list(at)} if (at := getattr(predictor, "min_sizes_at", None)) else {}),
            "format": fmt, "input": input_key(input_path), "classes": list(predictor.classes)}


class Journal:
    """The manifest of one ``octseg predict`` run (see the module docstring)."""

    def __init__(self, record: Path, out: Path, settings: dict, resume: bool):
        self.path = Path(record) / MANIFEST
        self.out = Path(out)
        self.done: dict[str, dict] = {}
        self.skipped = 0
        self.redone: list[str] = []  # inputs journalled as finished whose outputs had changed
        self.note: Optional[str] = None
        if resume:
            self.done = self._read(settings)
        header = {"kind": KIND, "settings": settings}
        lines = [json.dumps(header, default=json_default)] + [json.dumps(e, default=json_default) for e in self.done.values()]
        atomic_write_text(self.path, "\n".join(lines) + "\n", fsync=False)  # compacted: one line per input
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def _read(self, settings: dict) -> dict[str, dict]:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            self.note = f"{self.out} has no manifest of finished inputs (the run stopped before its first one): " \
                        f"predicting every input"
            return {}
        docs = []
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill: that input is predicted again
            if isinstance(doc, dict):
                docs.append(doc)
        if not docs or docs[0].get("kind") != KIND:
            raise DataError(self.path, "not an octseg predict manifest; pass --overwrite to start the prediction over")
        old = docs[0].get("settings") or {}
        differ = [k for k in settings if old.get(k) != settings[k]]
        if differ:
            shown = "; ".join(f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in differ[:4])
            raise DataError(self.path, f"the earlier run used other settings ({shown}); resume with the same "
                                       f"checkpoint and options, or pass --overwrite to start over")
        done = {}
        for doc in docs[1:]:
            if isinstance(doc.get("input"), str) and isinstance(doc.get("outputs"), dict):
                done[doc["input"]] = doc  # the last line of an input wins
        return done

    def finished(self, path, label=None) -> Optional[dict]:
        """The journal entry of ``path`` when its input is unchanged and every output still has its
        checksum; None (predict it) otherwise. ``label()`` names the input in :meth:`summary`
        (a clinic file's path may hold the patient's name: see :func:`octseg.inference.run.input_label`)."""
        entry = self.done.get(input_key(path))
        if entry is None:
            return None
        ok = entry.get("stat") == input_stat(path)
        for rel, digest in entry["outputs"].items() if ok else ():
            p = self.out / rel
            try:
                ok = p.is_file() and sha256_file(p) == digest
            except OSError:
                ok = False
            if not ok:
                break
        if not ok:
            self.redone.append(str(path) if label is None else label())
            return None
        self.skipped += 1
        return entry

    def add(self, path, outputs, figures: dict) -> None:
        """Journal ``path`` as finished: ``outputs`` (paths relative to OUT) are all in place."""
        entry = {"input": input_key(path), "stat": input_stat(path),
                 "outputs": {rel: sha256_file(self.out / rel) for rel in dict.fromkeys(outputs)}, **figures}
        append_text(self._fh, json.dumps(entry, default=json_default) + "\n", self.path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def summary(self) -> str:
        text = f"resumed: {self.skipped} finished input(s) skipped (outputs verified by checksum)"
        if self.redone:
            text += f", {len(self.redone)} predicted again (output or input changed since: " \
                    f"{', '.join(Path(p).name for p in self.redone[:5])}{' ...' if len(self.redone) > 5 else ''})"
        return text
