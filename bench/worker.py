"""One side of the evsim / PyTorch comparison, in a process of its own (started by ``bench/compare.py``).

    python bench/worker.py          (JSON commands on stdin, one JSON answer per line on stdout)

The process times *one* side at *one* thread count, so neither side's imports, thread pools or
environment variables can reach the other: the evsim side never imports torch, and the PyTorch
side never runs a Numba kernel. Commands, one JSON object per line:

* ``{"cmd": "setup", "side": "evsim" | "torch", "threads": N, "inputs": "x.npy", ...}``: build
  every configuration and warm it up (for ``torch.compile``: the compilation, timed and reported,
  never part of a measurement); answers what was built, the warm-up seconds of each configuration,
  and whether the imports changed the process's environment;
* ``{"cmd": "round", "round": k}``: time every configuration once more (``timing.throughput``:
  the configurations of one batch size interleaved, ``reps`` repetitions each); answers the
  samples/s of each repetition;
* ``{"cmd": "quit"}``.

A persistent process per side keeps the compiled graphs between rounds, so the parent can
alternate the sides round after round (interleaved rounds) without compiling again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ENV_AT_START = dict(os.environ)


def env_changes(before: dict | None = None) -> dict:
    """Environment variables set, changed or removed since ``before`` (default: the process's start)."""
    before = ENV_AT_START if before is None else before
    now = dict(os.environ)
    return {k: [before.get(k), now.get(k)] for k in set(before) | set(now) if before.get(k) != now.get(k)}


def numba_pool_loaded() -> bool:
    """Whether a Numba threading layer (its OpenMP / TBB / workqueue pool) is loaded in this process."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return False
    return any(n in maps for n in ("omppool", "tbbpool", "workqueue.cpython"))


def config_key(c: dict) -> str:
    """'torch_folded|channels_last|compile' (the batch is kept apart)."""
    return "|".join(str(c[k]) for k in ("impl", "format", "mode"))


# ------------------------------------------------------------------ evsim
def setup_evsim(spec: dict) -> dict:
    import numba
    import numpy as np

    import evsim
    from evsim.engine import run as evsim_run
    from evsim.format import read_network
    evsim_env = env_changes()

    th = int(spec["threads"])
    numba.set_num_threads(min(th, numba.config.NUMBA_NUM_THREADS))
    x = np.load(spec["inputs"])
    fns, warm = {}, {}
    for label, weights in spec["networks"].items():
        net = evsim.compile_network(read_network(weights), dtype="float32")

        def f(xb, net=net):
            return evsim_run(net, xb, batch_size=len(xb), threads=th)
        for bs in spec["batches"]:
            t0 = time.perf_counter()
            f(x[:bs])
            warm[f"{label}@{bs}"] = time.perf_counter() - t0
        fns[label] = f
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    return {"x": x, "fns": {(k, bs): f for k, f in fns.items() for bs in spec["batches"]}, "warmup_s": warm,
            "info": {"numba_threading_layer": layer, "numba_threads": numba.get_num_threads(),
                     "torch_imported": "torch" in sys.modules, "env_changed_by_evsim_imports": evsim_env,
                     "env_changed_by_run": env_changes()}}


# ------------------------------------------------------------------ torch
def torch_callable(model, fmt: str, mode: str, compile_kw: dict):
    """A callable(np batch) for one configuration: memory format and eager / torch.compile."""
    import torch
    cl = fmt == "channels_last"
    fn = model
    if mode != "eager":
        kw = dict(compile_kw)
        if mode != "compile":
            kw["mode"] = mode
        fn = torch.compile(model if isinstance(model, torch.nn.Module) else model.__call__, dynamic=False, **kw)

    def f(xb):
        with torch.inference_mode():
            t = torch.from_numpy(xb)
            if cl and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            return fn(t)
    return f


def setup_torch(spec: dict) -> dict:
    import numpy as np
    import torch

    env_torch = dict(os.environ)
    th = int(spec["threads"])
    torch.set_num_threads(th)
    try:   # a configuration of many graphs: more than dynamo's default of 8 per code object
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    except Exception:  # noqa: BLE001 - older/newer dynamo: leave the default
        pass
    from evsim.format import read_network
    from evsim.bridge.dense import DenseRunner
    if spec.get("checkpoint"):
        from evsim.bridge.train import load_checkpoint
    # what importing evsim did to PyTorch's process (should be nothing); TORCHINDUCTOR_* are PyTorch's
    # own (its inductor sets them when one of its modules is first imported, whoever imports it)
    evsim_env = {k: v for k, v in env_changes(env_torch).items() if not k.lstrip("_").startswith("TORCHINDUCTOR")}

    x = np.load(spec["inputs"])
    models = {}
    t0 = time.perf_counter()
    network = read_network(spec["weights"])
    for fmt in spec["formats"]:
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        if spec.get("checkpoint"):
            m, _ = load_checkpoint(spec["checkpoint"])
        else:
            m = torch.load(spec["module"], weights_only=False)
        m = m.float().eval()
        if fmt == "channels_last":
            m = m.to(memory_format=torch.channels_last)
        models[("torch_model", fmt)] = m
        models[("torch_folded", fmt)] = DenseRunner(network, torch.float32, memory_format=mf)
    build_s = time.perf_counter() - t0
    fns, warm, errors = {}, {}, {}
    for c in spec["configs"]:
        key = config_key(c)
        bs = int(c["batch"])
        try:
            f = torch_callable(models[(c["impl"], c["format"])], c["format"], c["mode"], spec.get("compile_kw", {}))
            t0 = time.perf_counter()
            f(x[:bs])                     # eager: first call; compiled: compilation + first call
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            f(x[:bs])
            second = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - a configuration that does not compile is reported, not fatal
            errors[f"{key}@{bs}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print(f"[worker] {key} batch {bs}: {errors[f'{key}@{bs}']}", file=sys.stderr, flush=True)
            continue
        warm[f"{key}@{bs}"] = {"first_call_s": first, "second_call_s": second,
                               "warmup_s": max(0.0, first - second)}
        fns[(key, bs)] = f
    return {"x": x, "fns": fns, "warmup_s": warm, "errors": errors,
            "info": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "torch_interop_threads": torch.get_num_interop_threads(), "build_s": build_s,
                     "mkldnn": bool(torch.backends.mkldnn.is_available()),
                     "numba_pool_loaded": numba_pool_loaded(), "env_changed_by_evsim_imports": evsim_env,
                     "env_changed_by_torch_itself": sorted(k for k in env_changes() if k not in evsim_env),
                     "parallel_info": torch.__config__.parallel_info().splitlines()[:8]}}


# ------------------------------------------------------------------ rounds
def measure_round(state: dict, spec: dict) -> dict:
    from timing import throughput
    x = state["x"]
    out = {}
    for bs in sorted({bs for _, bs in state["fns"]}):
        impls = {k: f for (k, b), f in state["fns"].items() if b == bs}
        res = throughput(impls, x, bs, spec["reps"], spec["min_samples"], spec["max_rep_s"], warmup=1)
        for k, s in res.items():
            out.setdefault(k, {})[str(bs)] = {"values": s["values"], "samples_per_rep": s["samples_per_rep"]}
    return out


def main() -> int:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                   # whatever a library prints goes to stderr, not into the answers
    sys.stdout = sys.stderr
    state, spec = None, None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "setup":
                spec = msg
                t0 = time.perf_counter()
                state = (setup_evsim if spec["side"] == "evsim" else setup_torch)(spec)
                ans = {"ok": True, "setup_s": time.perf_counter() - t0, "warmup_s": state["warmup_s"],
                       "errors": state.get("errors", {}), "info": state["info"], "pid": os.getpid(),
                       "env_changed_by_imports": env_changes(),
                       "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT",
                                                              "KMP_BLOCKTIME", "NUMBA_THREADING_LAYER",
                                                              "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                              "MKL_NUM_THREADS", "NUMBA_CPU_NAME")}}
            elif msg["cmd"] == "round":
                t0 = time.perf_counter()
                ans = {"ok": True, "results": measure_round(state, spec), "round_s": time.perf_counter() - t0}
            elif msg["cmd"] == "quit":
                return 0
            else:
                ans = {"ok": False, "error": f"unknown command {msg['cmd']!r}"}
        except Exception as e:  # noqa: BLE001 - the parent reports it and carries on with the other cases
            import traceback
            traceback.print_exc()
            ans = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(ans) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
