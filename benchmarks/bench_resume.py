"""Resume from anywhere: kill ``gpal learn`` at many moments, resume, count the damage.

Each case starts ``gpal learn --run-dir DIR --steps N`` (the CLI, in its own process),
kills it at one moment, then runs ``gpal learn --resume DIR --steps N`` to completion
and checks:

* the resume exits 0;
* 0 labels lost: every complete frame of ``train.xyz`` at the kill is still there, in
  the same order, after the resume;
* 0 labelled twice: no two frames of the final ``train.xyz`` have the same positions;
* the final ``state.json`` and ``summary.json`` are at step N;
* ``summary.json``'s ``oracle_calls`` >= the number of labels, its breakdown by reason
  sums to it, and the final model holds every label (``model.npz``);
* a SIGTERM or SIGINT ends the killed run without a traceback (one line on stderr).

Kill moments (``CASES``), found by watching the run folder (files appearing, the
events of ``log.jsonl``, the ``*.tmp`` files of an atomic write):

* bootstrap: between ``bootstrap.xyz`` and the first label, during a bootstrap oracle
  call, during the bootstrap fit / hyperparameter optimisation;
* MD between labels; during an oracle call of MD (a check event said ``label``, no new
  frame yet); during the model update that follows a label; during a checkpoint
  write (``model.npz.tmp``, ``walkers.npz.tmp`` or ``state.json.tmp`` present);
* a kill while a label is appended to ``train.xyz``: a SIGKILL cannot be aimed at
  that moment (one small write), so the case kills during an MD oracle call and then
  appends the first half of a frame to ``train.xyz``, which is what such a kill leaves;
* ``--random`` kills at seeded random times (seconds after the start, drawn between the
  first ``state.json`` and 80 % of the duration of an uninterrupted run of the same
  settings); their phase is read from the folder at the kill.

Most kills are SIGKILL; some are SIGTERM or SIGINT (the CLI then checkpoints and exits).

Oracle calls are made slow on purpose so that they can be hit: the run's oracle is
:class:`DelayedEMT` below (EMT that sleeps ``$GPAL_BENCH_ORACLE_DELAY`` seconds per
calculation; the variable is read here only, gpal knows nothing of it). The resumed runs
use no delay.

By default the runs use a small configuration (``TINY_CONFIG``: 32 Cu atoms, a lower
trigger threshold so that MD labels happen within a few hundred steps, no validation
trajectory) so that each run takes well under a minute; ``--default-config`` uses the
CLI's default (108 atoms; about 3 minutes per 400 steps on a busy 2-core machine, and
no MD label in the first 400 steps, so the MD-label phases are then not reached).

Run:  python benchmarks/bench_resume.py --out resume.json
      python benchmarks/bench_resume.py --steps 500 --random 4 --seed 1 --keep
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ase.calculators.emt import EMT

HERE = Path(__file__).resolve().parent
DELAY_ENV = "GPAL_BENCH_ORACLE_DELAY"


class DelayedEMT(EMT):
    """EMT that sleeps ``$GPAL_BENCH_ORACLE_DELAY`` seconds before each calculation."""

    def calculate(self, *args, **kwargs):
        delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)
        super().calculate(*args, **kwargs)


TINY_CONFIG = """
[structure]
repeat = [2, 2, 2]
[oracle]
factory = "bench_resume:DelayedEMT"
[md]
temperature = [300.0, 1500.0]
timestep = 2.0
[trigger]
threshold = 0.02
every = 5
[model]
n_sparse = 40
[learner]
sparse_per_label = 5
checkpoint_seconds = 3.0
[validation]
steps = 0
"""

DEFAULT_ORACLE_CONFIG = """
[oracle]
factory = "bench_resume:DelayedEMT"
"""


# ---------------------------------------------------------------------- run folder
def complete_frames(path: Path) -> tuple[list[str], bool]:
    """Keys (hash of species + positions) of the complete extxyz frames; and whether a
    partial frame follows them."""
    if not path.exists():
        return [], False
    text = path.read_text()
    lines = text.split("\n")  # a complete file ends with "\n": last element ""
    keys, i = [], 0
    while i < len(lines) - 1:
        try:
            n = int(lines[i].strip())
        except ValueError:
            return keys, True
        if i + 2 + n > len(lines) - 1:  # the last atom line must end with a newline
            return keys, True
        block = lines[i + 2 : i + 2 + n]
        ncol = len(block[0].split()) if block else 0
        if any(len(b.split()) != ncol for b in block):
            return keys, True
        h = hashlib.sha1()
        for b in block:
            h.update(" ".join(b.split()[:4]).encode())  # species x y z
        keys.append(h.hexdigest())
        i += 2 + n
    return keys, i < len(lines) - 1 or lines[-1] != ""


class Watch:
    """What a running learner has done so far, from its run folder."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.events: list[dict] = []
        self._offset = 0
        self._partial = ""

    def poll(self) -> None:
        path = self.run_dir / "log.jsonl"
        if not path.exists():
            return
        with open(path) as fh:
            fh.seek(self._offset)
            chunk = fh.read()
            self._offset = fh.tell()
        chunk = self._partial + chunk
        lines = chunk.split("\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def n_train(self) -> int:
        return len(complete_frames(self.run_dir / "train.xyz")[0])

    def exists(self, name: str) -> bool:
        return (self.run_dir / name).exists()

    def tmp_files(self) -> list[str]:
        return [n for n in ("model.npz.tmp", "walkers.npz.tmp", "state.json.tmp") if self.exists(n)]

    def count(self, event: str, **match) -> int:
        return sum(1 for e in self.events if e.get("event") == event
                   and all(e.get(k) == v for k, v in match.items()))

    def phase(self) -> str:
        """The phase the run is in, as far as the folder tells."""
        if not self.exists("state.json"):
            return "setup"
        if not self.exists("bootstrap.xyz"):
            return "bootstrap-select"
        if self.tmp_files():
            return "checkpoint"
        labels = [e for e in self.events if e.get("event") == "label"]
        if not self.exists("model.npz"):
            if labels:
                return "bootstrap-fit"
            return "bootstrap-label" if self.exists("train.xyz") else "bootstrap-gap"
        last = next((e for e in reversed(self.events) if e.get("event") in ("check", "label")), None)
        if last is not None and last["event"] == "check" and last.get("label"):
            return "md-oracle"
        if last is not None and last["event"] == "label" and last.get("reason") != "bootstrap":
            return "model-update"
        return "md"


# ---------------------------------------------------------------------- cases
def after_events(event, n=1, wait=0.0, **match):
    return lambda w, t: (w.count(event, **match) >= n, wait)


def md_oracle(n):
    """The n-th check that asked for a label: the oracle call is under way."""

    def ready(w, t):
        checks = [e for e in w.events if e.get("event") == "check" and e.get("label")]
        return len(checks) >= n, None  # wait: half the oracle delay

    return ready


CASES = [
    # name, phase aimed at, signal, predicate(watch, t) -> (ready, extra wait s or None)
    ("boot-gap", "bootstrap: bootstrap.xyz written, no label yet", signal.SIGKILL,
     lambda w, t: (w.exists("bootstrap.xyz") and not w.exists("train.xyz"), 0.0)),
    ("boot-label", "bootstrap: oracle call (3rd label)", signal.SIGKILL,
     lambda w, t: (w.n_train() >= 2, None)),
    ("boot-label-term", "bootstrap: oracle call (2nd label)", signal.SIGTERM,
     lambda w, t: (w.n_train() >= 1, None)),
    ("boot-fit", "bootstrap: fit / hyperparameters", signal.SIGKILL,
     lambda w, t: (w.count("label", reason="bootstrap") >= 1 and not w.exists("model.npz"), 0.0)),
    ("boot-fit-int", "bootstrap: fit / hyperparameters", signal.SIGINT,
     lambda w, t: (w.count("label", reason="bootstrap") >= 1 and not w.exists("model.npz"), 0.0)),
    ("md", "MD between labels", signal.SIGKILL,
     lambda w, t: (w.count("check") >= 12 and w.phase() == "md", 0.0)),
    ("md-term", "MD between labels", signal.SIGTERM,
     lambda w, t: (w.count("check") >= 25 and w.phase() == "md", 0.0)),
    ("md-oracle", "MD: oracle call", signal.SIGKILL, md_oracle(1)),
    ("md-oracle-int", "MD: oracle call", signal.SIGINT, md_oracle(2)),
    ("update", "model update after an MD label", signal.SIGKILL,
     after_events("label", 1, reason="uncertain")),
    ("update-term", "model update after an MD label", signal.SIGTERM,
     after_events("label", 2, reason="uncertain")),
    ("checkpoint", "checkpoint write (after the bootstrap)", signal.SIGKILL,
     lambda w, t: (w.exists("model.npz") and bool(w.tmp_files()), 0.0)),
    ("checkpoint-term", "checkpoint write (after an MD label)", signal.SIGTERM,
     lambda w, t: (w.count("label", reason="uncertain") >= 1 and bool(w.tmp_files()), 0.0)),
    ("append-partial", "train.xyz append (partial frame)", signal.SIGKILL, md_oracle(1)),
]


# ---------------------------------------------------------------------- processes
def gpal_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "gpal.cli", "learn", *args, "-q"]


def env_with(delay: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env[DELAY_ENV] = str(delay)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _default_sigint():
    # a background shell starts children with SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: give the learner the SIGINT a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(run_dir: Path, config: Path, steps: int, delay: float, log_path: Path):
    fh = open(log_path, "w")
    proc = subprocess.Popen(gpal_cmd(str(config), "--run-dir", str(run_dir), "--steps", str(steps)),
                            env=env_with(delay), stdout=fh, stderr=subprocess.STDOUT,
                            cwd=run_dir.parent, preexec_fn=_default_sigint)
    return proc, fh


def baseline(work: Path, config: Path, steps: int, delay: float) -> dict:
    run_dir = work / "baseline"
    t0 = time.time()
    proc, fh = start(run_dir, config, steps, delay, work / "baseline.log")
    w = Watch(run_dir)
    t_state = None
    while proc.poll() is None:
        if t_state is None and w.exists("state.json"):
            t_state = time.time() - t0
        time.sleep(0.05)
    fh.close()
    w.poll()
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed; see {work / 'baseline.log'}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"wall": time.time() - t0, "t_state": t_state or 0.0, "labels": w.n_train(),
            "oracle_calls": summary["oracle_calls"]}


def kill_case(work: Path, config: Path, steps: int, delay: float, name: str, aim: str, sig,
              ready=None, at: float | None = None, timeout: float = 600.0) -> dict:
    run_dir = work / name
    t0 = time.time()
    proc, fh = start(run_dir, config, steps, delay, work / f"{name}.kill.log")
    w = Watch(run_dir)
    row = {"case": name, "aim": aim, "signal": signal.Signals(sig).name, "at": at}
    fired = False
    while proc.poll() is None and time.time() - t0 < timeout:
        t = time.time() - t0
        if at is not None:
            ok, wait = t >= at, 0.0
        else:
            w.poll()
            ok, wait = ready(w, t)
        if ok:
            if wait is None:
                wait = 0.5 * delay
            if wait:
                time.sleep(wait)
            w.poll()
            row["phase"] = w.phase()
            row["t_kill"] = round(time.time() - t0, 2)
            proc.send_signal(sig)
            fired = True
            break
        time.sleep(0.002 if "checkpoint" in name else 0.02)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    fh.close()
    out = (work / f"{name}.kill.log").read_text()
    row["killed_rc"] = rc
    row["fired"] = fired
    if not fired:
        row["phase"] = "finished before the moment"
        row["t_kill"] = round(time.time() - t0, 2)
    row["traceback"] = "Traceback" in out
    row["kill_msg"] = out.strip().splitlines()[-1] if out.strip() else ""
    before, partial = complete_frames(run_dir / "train.xyz")
    if name == "append-partial" and fired:
        simulate_partial_append(run_dir / "train.xyz")
        partial = True
    row["partial_frame"] = partial
    row["labels_before"] = len(before)
    # resume to completion (no oracle delay)
    t1 = time.time()
    res = subprocess.run(gpal_cmd("--resume", str(run_dir), "--steps", str(steps)), env=env_with(0.0),
                         cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    (work / f"{name}.resume.log").write_text(res.stdout)
    row["resume_rc"] = res.returncode
    row["resume_s"] = round(time.time() - t1, 1)
    after, partial_after = complete_frames(run_dir / "train.xyz")
    row["labels_after"] = len(after)
    row["partial_after"] = partial_after
    row["lost"] = sum(1 for k, a in enumerate(before) if k >= len(after) or after[k] != a)
    row["duplicated"] = len(after) - len(set(after))
    state = _json(run_dir / "state.json")
    summary = _json(run_dir / "summary.json")
    row["final_step"] = state.get("step")
    row["summary_steps"] = summary.get("steps")
    row["oracle_calls"] = summary.get("oracle_calls")
    row["oracle_calls_by_reason"] = summary.get("oracle_calls_by_reason")
    row["model_frames"] = _model_frames(run_dir / "model.npz")
    problems = []
    if res.returncode != 0:
        problems.append(f"resume exit {res.returncode}: {res.stdout.strip().splitlines()[-1:] or ''}")
    if row["lost"]:
        problems.append(f"{row['lost']} lost")
    if row["duplicated"]:
        problems.append(f"{row['duplicated']} duplicated")
    if partial_after:
        problems.append("partial frame left in train.xyz")
    if row["final_step"] != steps or row["summary_steps"] != steps:
        problems.append(f"step {row['final_step']}/{row['summary_steps']} != {steps}")
    if row["oracle_calls"] is None or row["oracle_calls"] < len(after):
        problems.append(f"oracle calls {row['oracle_calls']} < labels {len(after)}")
    by_reason = sum((row["oracle_calls_by_reason"] or {}).values())
    if row["oracle_calls"] is not None and by_reason != row["oracle_calls"]:
        problems.append(f"calls by reason sum to {by_reason}, not {row['oracle_calls']}")
    if row["model_frames"] != len(after):
        problems.append(f"model holds {row['model_frames']} frames, train.xyz {len(after)}")
    if fired and sig != signal.SIGKILL and (row["traceback"] or rc != 128 + sig
                                            or not row["kill_msg"].startswith("gpal learn: interrupted")):
        problems.append(f"{row['signal']}: exit {rc}" + (" with a traceback" if row["traceback"] else "")
                        + f" (expected {128 + sig} and one line)")
    row["outcome"] = "ok" if not problems else "FAIL: " + "; ".join(problems)
    return row


def simulate_partial_append(path: Path) -> None:
    """Append the first half of the last complete frame (a kill in the middle of an append)."""
    text = path.read_text()
    lines = text.split("\n")
    keys, _ = complete_frames(path)
    if not keys:
        return
    # find the start of the last frame
    i, starts = 0, []
    while i < len(lines) - 1:
        n = int(lines[i].strip())
        starts.append(i)
        i += 2 + n
    last = lines[starts[-1]:-1]
    half = last[: 2 + (len(last) - 2) // 2]
    chunk = "\n".join(half) + "\n" + half[-1][: len(half[-1]) // 2]  # cut inside a line too
    with open(path, "a") as fh:
        fh.write(chunk)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _model_frames(path: Path):
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return int(len(z["frame_natoms"]))
    except Exception:  # noqa: BLE001 - missing or unreadable: reported as None
        return None


# ---------------------------------------------------------------------- main
def table(rows: list[dict]) -> str:
    head = (f"{'case':<16}{'phase at kill':<18}{'t (s)':>7} {'signal':<8}{'rc':>5}{'before':>7}"
            f"{'after':>6}{'lost':>5}{'dup':>4}{'step':>6}{'calls':>6}  outcome")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['case']:<16}{r['phase']:<18}{r['t_kill']:>7.1f} {r['signal']:<8}{r['killed_rc']:>5}"
                   f"{r['labels_before']:>7}{r['labels_after']:>6}{r['lost']:>5}{r['duplicated']:>4}"
                   f"{str(r['final_step']):>6}{str(r['oracle_calls']):>6}  {r['outcome']}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500, help="MD steps of every run (default 500)")
    p.add_argument("--delay", type=float, default=1.5, help="seconds per oracle calculation in killed runs")
    p.add_argument("--random", type=int, default=4, help="extra kills at seeded random times")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--default-config", action="store_true", help="the CLI's default settings")
    p.add_argument("--work-dir", help="where the run folders go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpal_bench_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.toml"
    config.write_text(DEFAULT_ORACLE_CONFIG if args.default_config else TINY_CONFIG)
    rng = random.Random(args.seed)
    print(f"bench_resume: run folders in {work}", flush=True)
    base = baseline(work, config, args.steps, args.delay)
    print(f"uninterrupted run: {base['wall']:.1f} s, state.json at {base['t_state']:.1f} s, "
          f"{base['labels']} labels, {base['oracle_calls']} oracle calls", flush=True)
    wanted = set(args.cases.split(",")) if args.cases else None
    rows = []
    for name, aim, sig, ready in CASES:
        if wanted and name not in wanted:
            continue
        row = kill_case(work, config, args.steps, args.delay, name, aim, sig, ready=ready)
        print(table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    sigs = [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
    for k in range(args.random):
        at = round(rng.uniform(base["t_state"], 0.8 * base["wall"]), 2)  # runs vary: stay inside
        sig = sigs[k % len(sigs)]
        name = f"random-{k}"
        if wanted and name not in wanted:
            continue
        row = kill_case(work, config, args.steps, args.delay, name, f"seeded random time {at} s", sig, at=at)
        print(table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    print()
    print(table(rows))
    n_fail = sum(1 for r in rows if r["outcome"] != "ok")
    print(f"\n{len(rows)} kills, {n_fail} failed")
    if args.out:
        Path(args.out).write_text(json.dumps({"steps": args.steps, "delay": args.delay, "seed": args.seed,
                                              "default_config": args.default_config, "baseline": base,
                                              "rows": rows}, indent=1))
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
