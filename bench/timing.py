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


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16")


def cpu_ids() -> dict:
    """Vendor, family, model, stepping from /proc/cpuinfo (what tells microarchitectures apart)."""
    keys = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping"}
    out = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                k = k.strip()
                if k in keys:
                    out[keys[k]] = v.strip()
    except OSError:
        pass
    return out


def microarchitecture(ids: dict, llvm_name: str | None = None) -> str:
    """A name for the core: LLVM's host CPU name (what Numba generates code for) and, for the
    common server parts, the family/model reading (AMD family 25 model 0x10-0x1f, 0x90-0xaf: Zen 4)."""
    fam, mod = ids.get("family"), ids.get("model")
    guess = None
    try:
        fam, mod = int(fam), int(mod)
    except (TypeError, ValueError):
        fam = mod = None
    if ids.get("vendor") == "AuthenticAMD" and fam is not None:
        if fam == 25:
            guess = "Zen 4" if (0x10 <= mod <= 0x1f or 0x60 <= mod <= 0x7f or 0xa0 <= mod <= 0xaf) else "Zen 3"
        elif fam == 26:
            guess = "Zen 5"
        elif fam == 23:
            guess = "Zen / Zen 2"
    elif ids.get("vendor") == "GenuineIntel" and fam == 6:
        guess = {85: "Skylake-SP / Cascade Lake", 106: "Ice Lake-SP", 143: "Sapphire Rapids", 207: "Emerald Rapids",
                 173: "Granite Rapids", 175: "Sierra Forest"}.get(mod)
    parts = [p for p in (guess, f"LLVM: {llvm_name}" if llvm_name else None) if p]
    return ", ".join(parts) or "-"


def lscpu_summary() -> dict:
    """A few lines of `lscpu` (model name, threads per core, cores, sockets, caches), if it runs."""
    import subprocess
    want = ("Model name", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "L1d cache", "L2 cache",
            "L3 cache", "Hypervisor vendor", "CPU max MHz")
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for line in txt.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in want:
            out[k.strip()] = v.strip()
    return out


def machine_info() -> dict:
    import numba
    import numpy
    import scipy
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "caches": cache_sizes(),
        "simd": ", ".join(f for f in SIMD_FLAGS if f in cpu_flags()) or "-",
        "cpu_ids": cpu_ids(),
        "lscpu": lscpu_summary(),
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
        import llvmlite.binding as llvm
        info["llvm_host_cpu"] = llvm.get_host_cpu_name()
    except Exception:  # noqa: BLE001
        info["llvm_host_cpu"] = None
    info["microarchitecture"] = microarchitecture(info["cpu_ids"], info["llvm_host_cpu"])
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    except ImportError:  # pragma: no cover
        info["torch"] = None
    return info


# microarchitecture -> (512-bit vector float adds per cycle, 512-bit loads per cycle) of one core, for the
# synaptic run's loop (one weight load and one add per 16 float32 additions, accumulators in registers).
# Zen 4 executes 512-bit operations on its two 256-bit FADD pipes and two 256-bit load ports: one 512-bit
# add and one 512-bit load per cycle (AMD's Software Optimization Guide for Family 19h processors). Intel
# server cores with two 512-bit FMA units (Skylake-SP and later): two of each (Intel's Optimization
# Reference Manual). Other cores: no roofline is claimed.
ADD_PORTS = {"Zen 4": (1.0, 1.0), "Skylake-SP / Cascade Lake": (2.0, 2.0), "Ice Lake-SP": (2.0, 2.0),
             "Sapphire Rapids": (2.0, 2.0), "Emerald Rapids": (2.0, 2.0), "Granite Rapids": (2.0, 2.0)}


def measured_ghz(n: int = 20_000_000, reps: int = 5) -> float:
    """The core's clock while it runs, from a chain of dependent integer operations (shift, xor, add: three
    cycles an iteration on every x86 core of the last decade); the clock /proc/cpuinfo gives in a VM is the
    nominal one, not what runs."""
    from numba import njit

    @njit(cache=False)
    def chain(n, x):
        for _ in range(n):
            x = (x ^ (x >> np.uint64(1))) + np.uint64(0x9E3779B97F4A7C15)
        return x

    chain(10, np.uint64(1))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        chain(n, np.uint64(1))
        best = min(best, time.perf_counter() - t0)
    return 3.0 * n / best / 1e9


def add_roofline(dtype_bytes: int = 4) -> dict:
    """The synaptic runs' ceiling on one core: min(vector adds, vector loads) per cycle x lanes x the measured
    clock, G additions/s; None where the microarchitecture is not in ADD_PORTS."""
    uarch = microarchitecture(cpu_ids()).split(",")[0]
    ports = ADD_PORTS.get(uarch)
    ghz = measured_ghz()
    if ports is None or "avx512f" not in cpu_flags():
        return {"uarch": uarch, "ghz_measured": ghz, "gadds_per_s": None,
                "basis": "no port model for this core (bench/timing.py ADD_PORTS)"}
    lanes = 64 // dtype_bytes
    per_cycle = min(ports) * lanes
    return {"uarch": uarch, "ghz_measured": ghz, "adds_per_cycle": per_cycle, "gadds_per_s": per_cycle * ghz,
            "basis": f"{uarch}: {ports[0]:g} 512-bit adds and {ports[1]:g} 512-bit loads per cycle, {lanes} lanes, "
                     f"{ghz:.2f} GHz measured"}


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
