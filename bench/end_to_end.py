"""Wall time of the default command line, end to end, on each shared benchmark file.

For each CSV in ``../shared/data/``, the same training / held-out split as
bench/quality.py, then ``python run_pipeline.py --train ... --test ... --workdir <fresh>``
in a subprocess: embed (every text encoded: a fresh workdir has no cache), features,
stack with the default members, submission and report. Prints a table with the load
average before and after each run; nothing is cached between files or runs.

    python bench/end_to_end.py                       # every file
    python bench/end_to_end.py --only pandalm_test   # one file
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.quality import split_file  # noqa: E402
from pipeline.catalog import write_text_atomic  # noqa: E402

RESULTS = REPO / "bench" / "results" / "end_to_end.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--only", nargs="*", default=None, help="file stems to run (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = []
    for path in sorted(args.data.glob("*.csv")):
        if args.only and path.stem not in args.only:
            continue
        train, test, _ = split_file(path, args.workdir / "bench_data" / path.stem, None, 0)
        work = args.workdir / "e2e-work" / path.stem
        if work.exists():
            shutil.rmtree(work)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), "--train", str(train),
                            "--test", str(test), "--workdir", str(work)],
                           capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        metrics = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
        stages = {}
        for line in r.stderr.splitlines():
            if "== stage " in line and " finished in " in line:
                name = line.split("== stage ")[1].split()[0]
                stages[name] = float(line.rsplit(" finished in ", 1)[1].rstrip("s"))
        rows.append((path.stem, metrics["rows"], metrics["test_rows"], stages, seconds,
                     summary["oof_log_loss"], load_before, os.getloadavg()[0]))
        print(f"{path.stem}: {seconds:.1f}s, OOF {summary['oof_log_loss']:.4f}", flush=True)
    lines = ["# End to end", "",
             f"`python bench/end_to_end.py`: the default `python run_pipeline.py --train ... --test ...` "
             f"from an empty workdir (every text embedded), on {platform.machine()}, {os.cpu_count()} CPU "
             f"cores, no GPU, Python {platform.python_version()}, written {time.strftime('%Y-%m-%d %H:%M')}.",
             "", "| file | train / test rows | embed s | features s | stack s | total s (process) | "
             "OOF log loss | load before / after |", "|---|---|---|---|---|---|---|---|"]
    for stem, n, nt, st, sec, loss, lb, la in rows:
        lines.append(f"| {stem} | {n:,} / {nt:,} | {st.get('embed', 0):.1f} | {st.get('features', 0):.1f} | "
                     f"{st.get('stack', 0):.1f} | {sec:.1f} | {loss:.4f} | {lb:.2f} / {la:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.only:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
