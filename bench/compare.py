"""evsim against PyTorch at its best: each side in its own process, interleaved rounds.

For one network (case), at each thread count, two worker processes (``bench/worker.py``) are
started: one times evsim, one times PyTorch in every configuration searched (the trained model
and the folded dense runner; contiguous and channels-last; eager and ``torch.compile``; every batch
size). The PyTorch process gets the environment the benchmark was started with, untouched; the
evsim process the same plus evsim's own settings (``EVSIM_ENV``, recorded in the report). Both are
set up (built, compiled, warmed up) before any timing, then the sides alternate, round after
round (evsim first in odd rounds, PyTorch first in even ones), each round timing every
configuration ``reps`` times. A configuration's figure is the median over rounds of its
per-round medians; the spread is the range of those per-round medians.

The baseline of every ratio at N threads is PyTorch's best configuration using at most N
threads (any implementation, format, mode and batch); the best eager configuration stays beside
it. The selection helpers below are pure (tests/test_bench_helpers.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TORCH_IMPLS = ("torch_model", "torch_folded")
IMPL_SHORT = {"torch_model": "trained model", "torch_folded": "folded runner"}

# evsim's own best setting, given only to evsim's process (the `evsim` command sets the same for
# itself; a setting already in the environment wins): Numba's OpenMP threads wait passively.
EVSIM_ENV = {"OMP_WAIT_POLICY": "passive"}


# ------------------------------------------------------------------ pure helpers
def torch_configs(impls, formats, modes, batches, compile_batches=None) -> list[dict]:
    """Every configuration searched; compiled modes only at ``compile_batches`` (default: all)."""
    cb = set(batches if compile_batches is None else compile_batches)
    return [{"impl": i, "format": f, "mode": m, "batch": int(b)}
            for i in impls for f in formats for m in modes for b in batches if m == "eager" or b in cb]


def combine_rounds(rounds: list[list[float]]) -> dict:
    """Per-round medians of repetitions -> median over rounds, range over rounds, all repetitions."""
    meds = [float(np.median(r)) for r in rounds if len(r)]
    if not meds:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "rounds": [], "n_rounds": 0,
                "values": []}
    return {"median": float(np.median(meds)), "min": min(meds), "max": max(meds), "rounds": meds,
            "n_rounds": len(meds), "spread": (max(meds) - min(meds)) / float(np.median(meds)) if meds else 0.0,
            "values": [float(v) for r in rounds for v in r]}


def best_config(rows: list[dict], max_threads: int, **match) -> dict | None:
    """The row with the highest median among those with ``threads <= max_threads`` whose fields equal
    ``match`` (e.g. ``batch=1``, ``mode="eager"``); ``mode="compiled"`` matches every non-eager mode.
    Rows: dicts with at least threads, impl, format, mode, batch, median."""
    def ok(r):
        if r["threads"] > max_threads or not np.isfinite(r["median"]):
            return False
        for k, v in match.items():
            if k == "mode" and v == "compiled":
                if r["mode"] == "eager":
                    return False
            elif r[k] != v:
                return False
        return True
    cand = [r for r in rows if ok(r)]
    return max(cand, key=lambda r: r["median"]) if cand else None


def ratio_over_rounds(a_rounds: list[float], b_rounds: list[float]) -> dict:
    """a / b round by round (the same interleaved round), and the ratio of the medians."""
    per = [x / y for x, y in zip(a_rounds, b_rounds) if y > 0]
    med_a, med_b = float(np.median(a_rounds)), float(np.median(b_rounds))
    return {"ratio": med_a / med_b if med_b > 0 else float("nan"), "rounds": per,
            "min": min(per) if per else float("nan"), "max": max(per) if per else float("nan")}


def describe(r: dict) -> str:
    """'folded runner, channels_last, compile, 2 thr, batch 64'."""
    return (f"{IMPL_SHORT.get(r['impl'], r['impl'])}, {r['format']}, {r['mode']}, {r['threads']} thr, "
            f"batch {r['batch']}")


# ------------------------------------------------------------------ load on the machine
def _cpu_busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - (v[4] if len(v) > 4 else 0)        # all but idle and iowait


def _pid_jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        fields = st[st.rfind(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


class LoadMeter:
    """CPU time the rest of the machine used while a worker was timing (in cores, from /proc)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        self.t0 = time.perf_counter()
        try:
            self.sys0, self.own0 = _cpu_busy_jiffies(), _pid_jiffies(self.pid)
        except OSError:
            self.sys0 = None
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.other_cores = float("nan")
        self.own_cores = float("nan")
        if self.sys0 is not None and self.wall > 0:
            hz = os.sysconf("SC_CLK_TCK")
            sys1, own1 = _cpu_busy_jiffies(), _pid_jiffies(self.pid)
            self.own_cores = (own1 - self.own0) / hz / self.wall
            self.other_cores = max(0.0, (sys1 - self.sys0) / hz / self.wall - self.own_cores)
        return False


# ------------------------------------------------------------------ workers
class Worker:
    def __init__(self, env: dict, label: str):
        self.label = label
        self.p = subprocess.Popen([sys.executable, str(HERE / "worker.py")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def send(self, msg: dict):
        self.p.stdin.write(json.dumps(msg) + "\n")
        self.p.stdin.flush()

    def ask(self, msg: dict | None, timeout_note: str = "") -> dict:
        """Send ``msg`` (None: only read the answer to what was sent before) and return the answer."""
        if msg is not None:
            self.send(msg)
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label} worker exited (code {self.p.wait()}) {timeout_note}")
        ans = json.loads(line)
        if not ans.get("ok"):
            raise RuntimeError(f"{self.label} worker: {ans.get('error')}")
        return ans

    def close(self):
        try:
            if self.p.poll() is None:
                self.p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.p.stdin.flush()
                self.p.wait(timeout=60)
        except Exception:  # noqa: BLE001
            self.p.kill()
            self.p.wait()


def side_envs(base_env: dict) -> dict:
    """The two sides' environments: the benchmark's starting environment; evsim's adds its own settings."""
    ev = dict(base_env)
    for k, v in EVSIM_ENV.items():
        ev.setdefault(k, v)
    return {"evsim": ev, "torch": dict(base_env)}


def run_comparison(what: str, base_env: dict, threads: list[int], rounds: int, evsim_spec: dict,
                   torch_spec: dict, log) -> dict:
    """Set up one evsim and one PyTorch worker per thread count, then time them in interleaved rounds.

    ``evsim_spec``: networks (label -> folded.h5), inputs, batches, reps, min_samples, max_rep_s;
    ``torch_spec``: weights (folded.h5), checkpoint or module, inputs, configs, formats, reps, ...
    Returns the raw measurements, warm-ups, load, and the per-configuration summaries."""
    envs = side_envs(base_env)
    workers, setups = {}, {}
    setup_wall = float("nan")
    raw = {}
    load = []
    try:
        # every worker builds, compiles and warms up at the same time (nothing is timed yet; on a
        # machine with few cores this roughly halves the wall time of the compilations)
        t0 = time.perf_counter()
        for th in threads:
            for side, spec in (("evsim", evsim_spec), ("torch", torch_spec)):
                w = Worker(envs[side], f"{what} {side} {th} thr")
                workers[(side, th)] = w
                w.send(dict(spec, cmd="setup", side=side, threads=th))
        for (side, th), w in workers.items():
            setups[f"{side}/{th}"] = ans = w.ask(None)
            n_err = len(ans.get("errors") or {})
            log(f"{what}: {side} worker, {th} thread(s), set up in {ans['setup_s']:.1f} s"
                + (f" ({n_err} configuration(s) failed)" if n_err else ""))
        setup_wall = time.perf_counter() - t0
        time.sleep(1.0)            # let the workers' thread pools go idle before the first timing
        for r in range(rounds):
            order = ("evsim", "torch") if r % 2 == 0 else ("torch", "evsim")
            for th in threads:
                for side in order:
                    w = workers[(side, th)]
                    la0 = os.getloadavg()[0]
                    with LoadMeter(w.p.pid) as lm:
                        ans = w.ask({"cmd": "round", "round": r})
                    load.append({"round": r, "side": side, "threads": th, "wall_s": lm.wall,
                                 "worker_cores": lm.own_cores, "other_cores": lm.other_cores,
                                 "loadavg_1min_before": la0, "loadavg_1min_after": os.getloadavg()[0]})
                    for key, by_b in ans["results"].items():
                        for bs, v in by_b.items():
                            raw.setdefault(side, {}).setdefault(str(th), {}).setdefault(key, {}) \
                                .setdefault(bs, []).append(v["values"])
                    best = max((float(np.median(v["values"])), k, bs) for k, bb in ans["results"].items()
                               for bs, v in bb.items())
                    log(f"{what}: round {r + 1}/{rounds}, {side}, {th} thread(s): {ans['round_s']:.1f} s, "
                        f"best {best[0]:.1f}/s ({best[1]} @ batch {best[2]}); other load "
                        f"{lm.other_cores:.2f} cores")
    finally:
        for w in workers.values():
            w.close()
    return {"raw": raw, "setup": setups, "setup_wall_s": setup_wall, "load": load, "rounds": rounds, "threads": threads,
            "envs": {"evsim_added": {k: envs["evsim"][k] for k in EVSIM_ENV},
                     "evsim_env_note": "evsim's own setting, a value already in the environment wins"}}


def summarize_comparison(cmp: dict) -> dict:
    """Raw rounds -> rows (one per side, thread count, configuration and batch) with combine_rounds."""
    rows = []
    for side, by_th in cmp["raw"].items():
        for th, by_key in by_th.items():
            for key, by_b in by_key.items():
                for bs, rounds in by_b.items():
                    if side == "evsim":
                        d = {"side": "evsim", "impl": "evsim", "network": key, "format": "-", "mode": "-"}
                    else:
                        impl, fmt, mode = key.split("|")
                        d = {"side": "torch", "impl": impl, "format": fmt, "mode": mode}
                    d.update(threads=int(th), batch=int(bs), **combine_rounds(rounds))
                    rows.append(d)
    return rows


def baselines(rows: list[dict], threads: list[int], batches: list[int]) -> dict:
    """At each thread count N: PyTorch's best configuration with <= N threads (any batch, and at batch
    1), the best eager one, the best of each implementation; evsim at N threads, best batch and
    batch 1; the ratios, round by round."""
    tr = [r for r in rows if r["side"] == "torch"]
    nets = sorted({r["network"] for r in rows if r["side"] == "evsim"})
    out = {}
    for th in threads:
        b = {"torch_best": best_config(tr, th), "torch_best_eager": best_config(tr, th, mode="eager"),
             "torch_best_compiled": best_config(tr, th, mode="compiled"),
             "torch_best_batch1": best_config(tr, th, batch=1) if 1 in batches else None,
             "torch_best_eager_batch1": best_config(tr, th, batch=1, mode="eager") if 1 in batches else None}
        for impl in TORCH_IMPLS:
            b[f"best_{impl}"] = best_config(tr, th, impl=impl)
            b[f"best_eager_{impl}"] = best_config(tr, th, impl=impl, mode="eager")
        b["evsim"] = {}
        for net in nets:
            ev = [r for r in rows if r["side"] == "evsim" and r["network"] == net and r["threads"] == th]
            if not ev:
                continue
            e_best = max(ev, key=lambda r: r["median"])
            e1 = next((r for r in ev if r["batch"] == 1), None)
            d = {"best": e_best, "batch1": e1}
            for ref in ("torch_best", "torch_best_eager", "torch_best_compiled", "best_torch_model",
                        "best_torch_folded"):
                if b.get(ref):
                    d[f"vs_{ref}"] = ratio_over_rounds(e_best["rounds"], b[ref]["rounds"])
            if e1 and b["torch_best_batch1"]:
                d["batch1_vs_torch_best_batch1"] = ratio_over_rounds(e1["rounds"], b["torch_best_batch1"]["rounds"])
            if e1 and b["torch_best_eager_batch1"]:
                d["batch1_vs_torch_best_eager_batch1"] = ratio_over_rounds(e1["rounds"],
                                                                           b["torch_best_eager_batch1"]["rounds"])
            b["evsim"][net] = d
        out[th] = b
    return out


def compile_warmups(cmp: dict) -> dict:
    """Warm-up seconds of the compiled configurations (excluded from every timing), per thread count."""
    out = {}
    for k, s in cmp["setup"].items():
        side, th = k.split("/")
        if side != "torch":
            continue
        w = {c: v["warmup_s"] for c, v in s["warmup_s"].items() if "|eager@" not in c}
        out[th] = {"total_s": float(sum(w.values())), "max_s": max(w.values()) if w else 0.0, "per_config": w,
                   "setup_s": s["setup_s"], "errors": s.get("errors", {})}
    return out
