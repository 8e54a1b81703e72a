"""Fuzz octseg's readers: random and mutated PNG, JPEG, MetaImage (.mhd + .raw/.zraw), NIfTI, YAML
recipes, checkpoints and split files, generated with hypothesis (tests/_fuzz_cases.py).

Each case must end as an OctsegError naming the file, or be read; never another exception (a
traceback for a user), never a hang (each case under a time limit; a native hang is ended by
faulthandler), and a prediction of a bad input never leaves a partial output.

    python benchmarks/fuzz.py                      # 2,800 cases (400 per format) -> benchmarks/results/fuzz.json
    python benchmarks/fuzz.py --cases 50 --out /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_results  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=400, help="cases per format (7 formats)")
    ap.add_argument("--formats", default=None, help="comma-separated subset of the formats")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per case")
    ap.add_argument("--predict-every", type=int, default=5,
                    help="also predict every n-th image/volume case and check its outputs (0: never)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    a = ap.parse_args(argv)

    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    import _fuzz_cases as fc

    torch.set_num_threads(1)
    formats = a.formats.split(",") if a.formats else list(fc.FORMATS)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="octseg-fuzz-") as tmp:
        seeds = fc.Seeds(Path(tmp) / "seeds")
        runner = fc.Runner(Path(tmp) / "cases", seeds, time_limit=a.time_limit, predict_every=a.predict_every)
        per_format_s = {}
        for fmt in formats:
            t0 = time.perf_counter()

            @hseed(a.seed)
            @settings(max_examples=a.cases, database=None, deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(fc.case_strategy(fmt, seeds))
            def one(case):
                kind, files = case
                # a native call stuck past the limit (SIGALRM cannot interrupt it) ends the run with a dump
                faulthandler.dump_traceback_later(a.time_limit * 3, exit=True)
                try:
                    runner.run(fmt, kind, files)
                finally:
                    faulthandler.cancel_dump_traceback_later()

            one()
            per_format_s[fmt] = round(time.perf_counter() - t0, 1)
            c = runner.counts.get(fmt, {})
            print(f"{fmt:10s} {sum(c.values()):5d} cases  " + "  ".join(f"{k} {v}" for k, v in sorted(c.items()))
                  + f"  ({per_format_s[fmt]} s)", flush=True)
    figures = runner.summary()
    figures.update(seconds=round(time.perf_counter() - t_start, 1), seconds_per_format=per_format_s, seed=a.seed,
                   command="python benchmarks/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   bugs=runner.bugs[:50])
    path = write_results(a.out, "fuzz", figures)
    print(f"{figures['cases']} cases in {figures['seconds']} s: {figures['tracebacks']} tracebacks, "
          f"{figures['hangs']} hangs, {figures['partial_outputs']} partial outputs "
          f"({figures['predicted_cases']} predicted); errors by type {figures['errors_by_type']} -> {path}")
    for b in runner.bugs[:20]:
        print(f"--- {b['format']} ({b['kind']}) {b['outcome']}: {b['detail'][:1500]}")
    return 0 if not runner.bugs else 1


if __name__ == "__main__":
    sys.exit(main())
