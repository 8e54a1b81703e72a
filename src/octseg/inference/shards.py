"""Sharded prediction for cohorts: ``octseg predict --shard I/N`` and ``octseg merge-csv``.

N processes (one machine or many: torchrun, SLURM array jobs) each predict a part of INPUT's files
into one shared OUT. Shard I of N takes a contiguous block of the input list (the same list one
process would work through, in the same order), so its masks and overlays are exactly those one
process writes for these files. Files that one process would name alike (``a.png`` and
``a.jpg`` -> ``a``, ``a_2``; clinic files whose redacted volume ids are equal) always land in one
shard, so names match too; a part never writes a file a sibling part's record lists. Each shard writes its
own CSV part (``parts/fluid.I-of-N.csv``, ``parts/confidence.I-of-N.csv``) and the exact figures
behind it (``parts/state.I-of-N.json``), last and atomically: a part exists only for a finished
shard. ``octseg merge-csv OUT`` checks that every part is there and writes ``fluid.csv`` and
``confidence.csv`` through the same code as a single process, so they are byte-identical to its.

Each shard claims OUT as a part of the group ``shards-N`` of an :class:`~octseg.io.outputs.OutputFolder`:
shards share the folder, a plain ``octseg predict`` into it is refused while they run, and a
rerun of one shard replaces only that shard's files (with ``--overwrite``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from octseg.errors import ConfigError, DataError
from octseg.io.outputs import json_default

STATE_KIND = "octseg predict shard"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int
    origin: str = "--shard"  # where it came from, for messages

    @property
    def tag(self) -> str:
        return f"{self.index}-of-{self.count}"

    @property
    def group(self) -> str:
        return f"shards-{self.count}"

    @property
    def part(self) -> tuple[str, str]:
        return self.group, f"shard-{self.index}"


def parse_shard(text: str) -> Shard:
    """``I/N`` (0 <= I < N) as a :class:`Shard`."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard {text!r}: expected I/N (shard I of N, counted from 0, e.g. 0/4) or auto")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ConfigError(f"--shard {text}: I must be in 0..N-1 and N >= 1")
    return Shard(i, n)


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    v = env.get(name)
    if v is None or v.strip() == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] = os.environ) -> Optional[Shard]:
    """The shard of this process from a launcher's environment, or None outside one:
    torchrun (``RANK``/``WORLD_SIZE``), a SLURM array job (``SLURM_ARRAY_TASK_ID`` - ``_MIN`` of
    ``SLURM_ARRAY_TASK_COUNT``), or the tasks of one SLURM job step (``SLURM_PROCID``/``SLURM_NTASKS``)."""
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    if rank is not None and world is not None:
        return _checked(rank, world, "torchrun (RANK/WORLD_SIZE)")
    task, count = _env_int(env, "SLURM_ARRAY_TASK_ID"), _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None:
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        if step != 1:
            raise ConfigError(f"SLURM array with step {step}: use --array=0-{count - 1} (step 1) for --shard auto")
        return _checked(task - (_env_int(env, "SLURM_ARRAY_TASK_MIN") or 0), count, "the SLURM array")
    proc, ntasks = _env_int(env, "SLURM_PROCID"), _env_int(env, "SLURM_NTASKS")
    if proc is not None and ntasks is not None:
        return _checked(proc, ntasks, "SLURM tasks (SLURM_PROCID/SLURM_NTASKS)")
    return None


def _checked(i: int, n: int, origin: str) -> Shard:
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {i} of {n} from {origin}: expected 0 <= index < count")
    return Shard(i, n, origin)


def resolve_shard(option: Optional[str], env: Mapping[str, str] = os.environ) -> Optional[Shard]:
    """The shard for ``--shard``: ``I/N``; ``auto`` (from the environment, see :func:`shard_from_env`);
    or, without the option, torchrun's rank and world size when there are several processes
    (each would otherwise claim the same OUT); None: one process predicts everything."""
    if option is None:
        rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
        return _checked(rank, world, "torchrun (RANK/WORLD_SIZE)") if rank is not None and world and world > 1 \
            else None
    if option.strip().lower() == "auto":
        shard = shard_from_env(env)
        if shard is None:
            raise ConfigError("--shard auto: no launcher found in the environment (torchrun's RANK/WORLD_SIZE, "
                              "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or SLURM_PROCID/SLURM_NTASKS); give I/N")
        return shard
    return parse_shard(option)


def job_key(job):
    """The name one process gives a job's outputs (before de-duplication): the volume folder for a
    RETOUCH ``oct.mhd``, the volume id of each OCT series for a clinic file (identifiers redacted
    unless ``keep_identifiers``: ``DOE_JOHN_OD.vol`` and ``ROE_JANE_OD.vol`` are both ``anon_anon_OD``;
    a tuple for several series), the file stem otherwise."""
    p = Path(job.path)
    if getattr(job, "kind", None) == "clinic":
        from octseg.io.vendor import probe

        keep = bool(getattr(job, "keep_identifiers", False))
        try:
            ids = tuple(dict.fromkeys(h.volume_id(keep) for h in probe(p)))
        except Exception:  # noqa: BLE001 - an unreadable header fails later, in its shard
            ids = ()
        if ids:
            return ids[0] if len(ids) == 1 else ids
    return p.parent.name if p.name.lower() == "oct.mhd" else p.stem


def shard_bounds(keys: list, count: int) -> list[int]:
    """Cut positions 0 = c0 <= c1 <= ... <= cN = len(keys): contiguous blocks of nearly equal size
    that never separate two equal keys (so de-duplicated names match one process's). A key may be
    a tuple of names (a clinic file's series): it shares a block with every key holding one of them."""
    n = len(keys)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, key in enumerate(keys):
        for k in key if isinstance(key, tuple) else (key,):
            first.setdefault(k, i)
            last[k] = i
    blocked = [0] * (n + 2)  # cut c (between c-1 and c) is invalid where a key spans it
    for k, f in first.items():
        if last[k] > f:
            blocked[f + 1] += 1
            blocked[last[k] + 1] -= 1
    valid, run = [], 0
    for c in range(n + 1):
        run += blocked[c]
        if run == 0:
            valid.append(c)
    cuts = [0]
    for i in range(1, count):
        ideal = round(i * n / count)
        cand = [c for c in valid if c >= cuts[-1]]
        cuts.append(min(cand, key=lambda c: (abs(c - ideal), c)))
    cuts.append(n)
    return cuts


def select_jobs(jobs: list, shard: Optional[Shard]) -> list:
    """This shard's block of ``jobs`` (all of them without a shard)."""
    if shard is None:
        return list(jobs)
    cuts = shard_bounds([job_key(j) for j in jobs], shard.count)
    return list(jobs)[cuts[shard.index]:cuts[shard.index + 1]]


# ----------------------------------------------------------------------------------------- parts


def part_names(shard: Shard) -> dict[str, str]:
    return {k: f"parts/{k}.{shard.tag}.{ext}" for k, ext in
            (("fluid", "csv"), ("confidence", "csv"), ("state", "json"))}


def write_part(run, shard: Shard, input_path, n_jobs: int) -> dict[str, Path]:
    """The shard's CSV part and its state (what :func:`merge_parts` joins), the state last."""
    from octseg import __version__
    from octseg.inference.run import _write_confidence_csv, _write_csv
    from octseg.io.outputs import atomic_write_text

    names = part_names(shard)
    written = {"confidence": _write_confidence_csv(run, names["confidence"]),
               "fluid": _write_csv(run, names["fluid"])}
    state = {
        "written_by": f"octseg {__version__}", "kind": STATE_KIND, "shard": [shard.index, shard.count],
        "input": os.path.abspath(str(input_path)), "jobs_total": n_jobs, "classes": list(run.classes),
        "fmt_images": run.fmt_images, "fmt_volumes": run.fmt_volumes,
        "counts": {"bscans": run.n_bscans, "images": run.n_images, "volumes": run.n_volumes},
        "names": sorted(run.names), "failures": [list(f) for f in run.failures],
        "rows": [list(r) for r in run.rows], "confidence": [list(c) for c in run.confidence],
        "volumes": [[vol, {"pixels": [int(x) for x in v["pixels"]], "n": int(v["n"]), "source": v["source"],
                           "spacing": None if v["spacing"] is None else
                           [v["spacing"].row, v["spacing"].col, v["spacing"].slice]}]
                    for vol, v in run.volumes.items()],
    }
    written["state"] = atomic_write_text(run.folder.file(names["state"]),
                                         json.dumps(state, default=json_default) + "\n")
    return written


@dataclass
class MergeResult:
    out: Path
    shards: int
    n_bscans: int
    n_volumes: int
    failures: list
    written: list

    def summary(self) -> str:
        lines = [f"merged {self.shards} shard(s): {self.n_bscans} B-scan(s) in {self.n_volumes} volume(s) -> "
                 f"{self.out / 'fluid.csv'}, {self.out / 'confidence.csv'}"]
        if self.failures:
            lines.append(f"FAILED in the shards: {len(self.failures)} input(s) could not be predicted:")
            lines += [f"  {p}: {why}" for p, why in self.failures]
        return "\n".join(lines)


def _read_state(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read the shard's state ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != STATE_KIND:
        raise DataError(path, "not an octseg predict shard state")
    return doc


def merge_parts(out) -> MergeResult:
    """Join the parts of a sharded ``octseg predict`` in OUT into ``fluid.csv`` and ``confidence.csv``,
    exactly as one process writes them. Every shard must have finished; parts of one run only."""
    import numpy as np

    from octseg.inference.run import PredictRun, _write_confidence_csv, _write_csv
    from octseg.io.outputs import OutputFolder
    from octseg.records import Spacing

    out = Path(out)
    if not out.is_dir():
        raise DataError(out, "no such folder (give the OUT of the sharded octseg predict runs)")
    states = sorted((out / "parts").glob("state.*-of-*.json")) if (out / "parts").is_dir() else []
    if not states:
        raise DataError(out, "holds no shard parts (parts/state.I-of-N.json); run octseg predict --shard I/N first")
    docs = {}
    for p in states:
        d = _read_state(p)
        docs[tuple(d["shard"])] = (p, d)
    counts = {n for _, n in docs}
    if len(counts) != 1:
        raise DataError(out / "parts", f"holds parts of runs with different shard counts {sorted(counts)}; remove "
                                       f"the stale ones (or predict again with --overwrite)")
    n = counts.pop()
    missing = [i for i in range(n) if (i, n) not in docs]
    group = f"shards-{n}"
    with OutputFolder(out, "predict", part=(group, "merge"), reuse=True) as folder:
        running = [f"{k[1]} (pid {v.get('pid', '?')})" for k, v in folder.part_info().items()
                   if k[0] == group and k[1] != "merge" and v.get("status") == "running"]
        if missing:
            extra = f"; still running: {', '.join(running)}" if running else ""
            raise DataError(out, f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} of {n} have not finished "
                                 f"(no parts/state.I-of-{n}.json){extra}")
        ordered = [docs[(i, n)] for i in range(n)]
        first = ordered[0][1]
        for p, d in ordered[1:]:
            for key in ("classes", "input", "jobs_total", "fmt_images", "fmt_volumes"):
                if d.get(key) != first.get(key):
                    raise DataError(p, f"{key} {d.get(key)!r} differs from shard 0's {first.get(key)!r}: parts of "
                                       f"different runs")
        seen: dict[str, int] = {}
        for i, (p, d) in enumerate(ordered):
            for name in d["names"]:
                if name in seen:
                    raise DataError(p, f"output name {name!r} was written by shards {seen[name]} and {i}; "
                                       f"predict these inputs with one process")
                seen[name] = i
        run = PredictRun(out=out, classes=tuple(first["classes"]), fmt_images=first["fmt_images"],
                         fmt_volumes=first["fmt_volumes"], folder=folder)
        for _, d in ordered:  # shard order is job order: one process's order, exactly
            run.rows += [tuple(r) for r in d["rows"]]
            run.confidence += [tuple(c) for c in d["confidence"]]
            run.failures += [tuple(f) for f in d["failures"]]
            for vol, v in d["volumes"]:
                sp = None if v["spacing"] is None else Spacing(*v["spacing"])
                m = run.volumes.setdefault(vol, {"pixels": np.zeros(len(run.classes), np.int64), "spacing": sp,
                                                 "n": 0, "source": v["source"]})
                m["pixels"] += np.asarray(v["pixels"], np.int64)
                m["n"] += v["n"]
                if m["spacing"] is None:
                    m["spacing"] = sp
            run.n_bscans += d["counts"]["bscans"]
            run.n_volumes += d["counts"]["volumes"]
        written = [_write_confidence_csv(run), _write_csv(run)]
    return MergeResult(out, n, run.n_bscans, len(run.volumes), run.failures, written)
