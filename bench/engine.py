"""The Ray engine measured against the in-process one, on one machine made into two nodes.

1. Demo: ``--demo`` in process and ``--demo --engine ray`` (a local Ray instance started
   by the run), each from an empty workdir: wall time (the Ray overhead) and whether the
   OOF predictions, the submission and the cache files are the same.
2. Driver killed: ``--demo --engine ray`` SIGKILLed once its stack stage has started,
   then resumed in process, and again under Ray: the same outputs as the clean run.
3. Two nodes: ``ray start --head`` and ``ray start --address`` (two raylets, one CPU
   each, token authentication as Ray 2.60 wants for a second node) and the default
   command line on a shared file (pandalm_test by default) with ``--ray-address``
   against the same file in process: wall times, units per node, equality.

Every run is a subprocess of ``run_pipeline.py`` with a fresh workdir, so each one
embeds every text. Prints a table and writes bench/results/engine.md.

    python bench/engine.py                    # pandalm_test
    python bench/engine.py --file vicuna80_qlora_mturk_human
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.quality import split_file  # noqa: E402
from pipeline.catalog import write_text_atomic  # noqa: E402

RESULTS = REPO / "bench" / "results" / "engine.md"
PORT = 6391


def run(args: list[str], env: dict | None = None, kill_at: str | None = None):
    """(seconds, stderr, returncode) of run_pipeline.py ``args``; with ``kill_at``, the
    process is SIGKILLed when a log line containing it appears."""
    cmd = [sys.executable, str(REPO / "run_pipeline.py"), *args]
    t0 = time.perf_counter()
    if kill_at is None:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        return time.perf_counter() - t0, r.stderr, r.returncode
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=REPO, env=env, start_new_session=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if kill_at in line:
            time.sleep(1.0)  # well inside the stage: some units done, some running
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    return time.perf_counter() - t0, "".join(lines), proc.returncode


def outputs(work: Path, name: str):
    run_dir = work / "runs" / name
    files = sorted(str(p.relative_to(work / "cache")) for p in (work / "cache").rglob("*")
                   if p.is_file() and not p.name.endswith((".lock", ".json")))
    return (pd.read_parquet(run_dir / "oof.parquet"), pd.read_csv(run_dir / "submission.csv"), files)


def compare(a: Path, b: Path, name: str) -> tuple[float, float, bool]:
    """(max |OOF diff|, max |submission diff|, same cache files) of two workdirs."""
    oa, sa, fa = outputs(a, name)
    ob, sb, fb = outputs(b, name)
    assert (oa["id"] == ob["id"]).all() and (sa["id"] == sb["id"]).all()
    num = [c for c in oa.columns if c not in ("id", "fold")]
    sub = [c for c in sa.columns if c != "id"]
    return (float(np.abs(oa[num].to_numpy() - ob[num].to_numpy()).max()),
            float(np.abs(sa[sub].to_numpy() - sb[sub].to_numpy()).max()), fa == fb)


def units_line(stderr: str) -> str:
    for line in stderr.splitlines():
        if "unit(s) ran in" in line:
            return line.split("engine ray: ", 1)[1].strip()
    return "(no units ran)"


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def ray_cli(*args: str, env: dict) -> None:
    exe = Path(sys.executable).with_name("ray")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"ray {' '.join(args)} failed:\n{r.stderr[-2000:]}")


def ray_processes() -> list[str]:
    """Names of Ray's node processes (gcs_server, raylet) running on this machine now."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:  # the process ended meanwhile
            continue
        if name in ("gcs_server", "raylet"):
            found.append(name)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--file", default="pandalm_test")
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")) / "engine")
    p.add_argument("--skip-demo", action="store_true")
    args = p.parse_args(argv)
    w = args.workdir
    rows, notes = [], []
    load = [os.getloadavg()[0]]

    if not args.skip_demo:
        t_local, _, rc = run(["--demo", "--workdir", str(fresh(w / "demo-local"))])
        assert rc == 0
        t_ray, err, rc = run(["--demo", "--engine", "ray", "--workdir", str(fresh(w / "demo-ray"))])
        assert rc == 0, err[-3000:]
        d_oof, d_sub, same = compare(w / "demo-local", w / "demo-ray", "demo")
        rows.append(("demo, in process", t_local, "-", "-", "-", "-"))
        rows.append(("demo, --engine ray (local instance)", t_ray, units_line(err), d_oof, d_sub, same))
        print(f"demo: in process {t_local:.1f}s, ray {t_ray:.1f}s", flush=True)

        # A driver killed in its stack stage, resumed in process and under Ray.
        killed = fresh(w / "demo-killed")
        _, err, rc = run(["--demo", "--engine", "ray", "--workdir", str(killed)],
                         kill_at="== stage stack:")
        assert rc != 0, "the run finished before it could be killed"
        t_resume, err, rc = run(["--demo", "--workdir", str(killed)])
        assert rc == 0, err[-3000:]
        d_oof, d_sub, same = compare(w / "demo-local", killed, "demo")
        rows.append(("demo, ray driver SIGKILLed in stack, resumed in process", t_resume, "-",
                     d_oof, d_sub, same))
        killed2 = fresh(w / "demo-killed-ray")
        run(["--demo", "--engine", "ray", "--workdir", str(killed2)], kill_at="== stage stack:")
        t_resume, err, rc = run(["--demo", "--engine", "ray", "--workdir", str(killed2)])
        assert rc == 0, err[-3000:]
        d_oof, d_sub, same = compare(w / "demo-local", killed2, "demo")
        rows.append(("demo, ray driver SIGKILLed in stack, resumed under ray", t_resume,
                     units_line(err), d_oof, d_sub, same))
        load.append(os.getloadavg()[0])

    train, test, _ = split_file(args.data / f"{args.file}.csv", w / "data" / args.file, None, 0)
    common = ["--train", str(train), "--test", str(test)]
    t_local, err, rc = run([*common, "--workdir", str(fresh(w / "file-local"))])
    assert rc == 0, err[-3000:]
    rows.append((f"{args.file}, in process", t_local, "-", "-", "-", "-"))
    print(f"{args.file}: in process {t_local:.1f}s", flush=True)

    # The two-node part ends with `ray stop --force`, which stops every Ray node on this
    # machine: with someone else's Ray already running, it is skipped rather than that.
    busy = ray_processes()
    if busy:
        notes.append(f"Two-node part skipped: Ray was already running here ({', '.join(sorted(set(busy)))}); "
                     "`ray stop --force` at its end would have stopped it.")
        return write_table(args, rows, notes, load)
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    ray_cli("get-auth-token", "--generate", env=env)
    ray_cli("start", "--head", "--port", str(PORT), "--num-cpus", "1", "--include-dashboard=false",
            "--disable-usage-stats", env=env)
    try:
        ray_cli("start", "--address", f"127.0.0.1:{PORT}", "--num-cpus", "1",
                "--disable-usage-stats", env=env)
        t_ray, err, rc = run([*common, "--workdir", str(fresh(w / "file-ray")), "--engine", "ray",
                              "--ray-address", f"127.0.0.1:{PORT}"], env=env)
        assert rc == 0, err[-3000:]
        nodes = next((ln.split("engine ray: ", 1)[1] for ln in err.splitlines()
                      if "node(s)," in ln), "?")
    finally:
        ray_cli("stop", "--force", env=env)
    d_oof, d_sub, same = compare(w / "file-local", w / "file-ray", "default")
    rows.append((f"{args.file}, --ray-address (two nodes: {nodes})", t_ray, units_line(err),
                 d_oof, d_sub, same))
    print(f"{args.file}: two-node ray {t_ray:.1f}s", flush=True)
    load.append(os.getloadavg()[0])
    return write_table(args, rows, notes, load)


def write_table(args, rows: list, notes: list[str], load: list[float]) -> int:
    def fmt(v):
        return f"{v:.1e}" if isinstance(v, float) else str(v)

    lines = ["# Engines", "",
             f"`python bench/engine.py --file {args.file}`: every run from an empty workdir (every "
             f"text embedded), on {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, Python "
             f"{platform.python_version()}, written {time.strftime('%Y-%m-%d %H:%M')}; load "
             f"average {' -> '.join(f'{x:.2f}' for x in load)}.", "",
             "| run | wall s | where the units ran | max abs OOF diff vs in process | "
             "max abs submission diff | same cache files |", "|---|---|---|---|---|---|"]
    for name, sec, where, d1, d2, same in rows:
        lines.append(f"| {name} | {sec:.1f} | {where} | {fmt(d1)} | {fmt(d2)} | {same} |")
    lines += [""] + notes
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomic(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
