"""Timing, statistics, thread control and machine description for the benchmarks."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time

import numpy as np


# ------------------------------------------------------------------ threads
def set_threads(n: int) -> int:
    """Same number of threads for the engine (Numba) and for PyTorch; returns what was set."""
    import numba
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is needed by the suite, but keep the helper usable
        pass
    return n


# --------------------------------------------------------------- statistics
def summarize(values) -> dict:
    """Median and spread of a list of repetitions."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": float("nan"), "min": float("nan"), "max": float("nan"),
                "q1": float("nan"), "q3": float("nan"), "values": []}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "median": float(med), "min": float(v.min()), "max": float(v.max()),
            "q1": float(q1), "q3": float(q3), "values": [float(x) for x in v]}


def fmt_stat(s: dict, digits: int = 1, scale: float = 1.0) -> str:
    """'median [min-max]' for a table cell."""
    if not s or s.get("n", 0) == 0:
        return "-"
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'] * scale)} [{f.format(s['min'] * scale)}-{f.format(s['max'] * scale)}]")


# ----------------------------------------------------------------- throughput
def throughput(impls: dict, x: np.ndarray, batch: int, reps: int, min_samples: int,
               max_rep_s: float = 5.0, warmup: int = 1) -> dict:
    """Samples per second of several implementations on the same batches.

    ``impls``: name -> callable(batch array). One repetition runs consecutive
    batches of ``batch`` samples from ``x`` until ``min_samples`` samples are
    done (at least one batch; it stops early, after whole batches, once it has
    run ``max_rep_s`` seconds, so a slow configuration stays affordable).
    Repetitions of the implementations are interleaved (A B C A B C ...), so
    a load change on the machine hits all of them alike. Returns name ->
    summary of samples/s, plus the samples of each repetition.
    """
    n_batches = max(1, -(-max(min_samples, batch) // batch))
    n_batches = min(n_batches, max(1, len(x) // batch))
    batches = [x[i * batch:(i + 1) * batch] for i in range(n_batches)]
    for fn in impls.values():
        for _ in range(warmup):
            fn(batches[0])
    rates = {k: [] for k in impls}
    samples = {k: [] for k in impls}
    for _ in range(reps):
        for name, fn in impls.items():
            done = 0
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
                done += len(b)
                if time.perf_counter() - t0 > max_rep_s:
                    break
            dt = time.perf_counter() - t0
            rates[name].append(done / dt)
            samples[name].append(done)
    out = {}
    for name in impls:
        s = summarize(rates[name])
        s["samples_per_rep"] = samples[name]
        out[name] = s
    return out


def time_calls(fn, reps: int, warmup: int = 1) -> dict:
    """Wall seconds of ``fn()`` over ``reps`` repetitions."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return summarize(ts)


# ------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cache_sizes() -> str:
    """Per-core data caches from sysfs, e.g. 'L1d 48K, L2 2048K, L3 491520K'."""
    out = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            if not d.startswith("index"):
                continue
            rd = lambda f: open(os.path.join(base, d, f)).read().strip()
            if rd("type") == "Instruction":
                continue
            out.append(f"L{rd('level')}{'d' if rd('type') == 'Data' else ''} {rd('size')}")
    except OSError:
        pass
    return ", ".join(out) or "-"


def machine_info() -> dict:
    import numba
    import numpy
    import scipy
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "caches": cache_sizes(),
        "simd": ", ".join(f for f in ("avx2", "avx512f", "amx_tile") if f in cpu_flags()) or "-",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numba_threading_layer": None,
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_start": list(os.getloadavg()),
    }
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    except ImportError:  # pragma: no cover
        info["torch"] = None
    return info


def busy_cpu_processes(threshold: float = 20.0, own_pid: int | None = None) -> list[str]:
    """Other processes using CPU right now (from /proc, over a 0.5 s window): a noisy-machine warning."""
    own = {own_pid or os.getpid()}

    def snapshot():
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                rp = st.rfind(")")
                fields = st[rp + 2:].split()
                name = st[st.find("(") + 1:rp]
                out[int(d)] = (name, int(fields[11]) + int(fields[12]))
            except (OSError, ValueError, IndexError):
                continue
        return out

    try:
        a = snapshot()
        t0 = time.time()
        time.sleep(0.5)
        b = snapshot()
        dt = time.time() - t0
    except OSError:
        return []
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, ticks) in b.items():
        if pid in own or pid not in a:
            continue
        pct = 100.0 * (ticks - a[pid][1]) / hz / dt
        if pct >= threshold:
            busy.append(f"{name} (pid {pid}, {pct:.0f}% CPU)")
    return busy
