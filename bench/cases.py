"""The benchmark cases. Each returns a plain dict (JSON-ready) of what it measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import evsim
from evsim import memory as evsim_memory
from evsim.compiler import ConvGeometry, conv_geometry
from evsim.projections import conv_rows as KR
from evsim.projections.conv_rows import lower_weights as row_kernel
from evsim.projections.csr import conv_explicit_nnz
from evsim.tuning import CHANNEL_MAJOR_WEIGHT_BYTES
from evsim.engine import run as evsim_run
from evsim.reports import build_report

from timing import set_threads, summarize, throughput, time_calls

HERE = Path(__file__).resolve().parent
IMPLS = ("evsim", "torch_model", "torch_folded")
IMPL_LABEL = {"evsim": "evsim float32", "torch_model": "PyTorch, trained model (eval)",
              "torch_folded": "PyTorch, folded network"}


def log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ helpers
def dense_work(net) -> int:
    """Multiply-accumulates a dense execution of the folded network does per sample
    (every projection every step, except a direct-input projection, once)."""
    T = net.network.timesteps
    return int(sum(cp.dense_macs * (1 if cp.mode == "dense" else T) for cp in net.projections))


def activity(net, result) -> dict:
    """Firing rates and operation counts per sample, from the engine's own counters."""
    rep = build_report(net, result, mac_basis="all")     # the engine computes the first layer at every position
    t = rep.totals
    events_in = sum(p.events_in for p in rep.projections)
    return {
        "firing_rate": t["firing_rate"],
        "spikes_per_sample": t["spikes"],
        "events_in_per_sample": events_in,
        "synaptic_ops_per_sample": t["synaptic_ops"],
        "macs_per_sample": t["macs"],
        "ann_macs_per_sample": t["ann_macs"],
        "dense_work_per_sample": dense_work(net),
        "neurons": t["neurons"],
        "layers": [{"name": p.name, "neurons": p.neurons, "rate": p.firing_rate} for p in rep.populations],
        "projections": [{"name": p.name, "kind": p.kind, "events_in": p.events_in, "synaptic_ops": p.synaptic_ops}
                        for p in rep.projections],
    }


def torch_callable(model):
    import torch

    def f(xb):
        with torch.inference_mode():
            return model(torch.from_numpy(xb))
    return f


def evsim_callable(net):
    def f(xb):
        return evsim_run(net, xb, batch_size=len(xb))
    return f


def explain_speed(act: dict, ev: float, tf: float, th: int) -> dict:
    """Why the ratio is what it is: work done (events vs dense) and speed per operation.
    ``ev``: evsim samples/s; ``tf``: the folded runner's samples/s (its best configuration)."""
    adds_per_s = act["synaptic_ops_per_sample"] * ev
    macs_per_s = act["dense_work_per_sample"] * tf
    work_ratio = act["synaptic_ops_per_sample"] / act["dense_work_per_sample"]
    per_op = adds_per_s / macs_per_s
    need_work = per_op / 2.0
    return {
        "threads": th,
        "evsim_gadds_per_s": adds_per_s / 1e9,
        "torch_folded_gmacs_per_s": macs_per_s / 1e9,
        "work_ratio_adds_over_dense_macs": work_ratio,
        "per_op_speed_ratio": per_op,
        "predicted_ratio_vs_torch_folded": per_op / work_ratio,
        "work_ratio_needed_for_2x": need_work,
        "firing_rate_needed_for_2x_estimate": act["firing_rate"] * need_work / work_ratio,
    }


def separate_processes(cfg: dict, what: str, tmp: Path, x: np.ndarray, networks: dict, torch_weights: str,
                       torch_model: dict, batches: list[int], compile_batches: list[int], reps: int,
                       min_samples: int, max_rep_s: float) -> dict:
    """evsim and PyTorch timed in processes of their own, interleaved rounds (bench/compare.py).
    ``networks``: label -> folded.h5 for evsim; ``torch_model``: {"checkpoint": path} or {"module": path}."""
    from compare import baselines, compile_warmups, run_comparison, summarize_comparison, torch_configs
    tmp.mkdir(parents=True, exist_ok=True)
    xin = tmp / "inputs.npy"
    np.save(xin, np.ascontiguousarray(x))
    common = {"inputs": str(xin), "reps": reps, "min_samples": min_samples, "max_rep_s": max_rep_s}
    configs = torch_configs(("torch_model", "torch_folded"), cfg["torch_formats"], cfg["torch_modes"], batches,
                            compile_batches)
    ev_spec = dict(common, networks={k: str(v) for k, v in networks.items()}, batches=list(batches))
    t_spec = dict(common, weights=str(torch_weights), configs=configs, formats=cfg["torch_formats"],
                  **{k: str(v) for k, v in torch_model.items()})
    raw = run_comparison(what, cfg["base_env"], cfg["threads"], cfg["rounds"], ev_spec, t_spec, log)
    rows = summarize_comparison(raw)
    return {"rows": rows, "baselines": baselines(rows, cfg["threads"], batches), "load": raw["load"],
            "warmup": compile_warmups(raw), "setup_wall_s": raw.get("setup_wall_s"), "envs": raw["envs"], "rounds": raw["rounds"], "batches": list(batches),
            "compile_batches": list(compile_batches), "configs_searched": len(configs),
            "setup": {k: {kk: v[kk] for kk in ("setup_s", "info", "env", "env_changed_by_imports", "errors", "warmup_s")
                          if kk in v} for k, v in raw["setup"].items()}}


def ratios_of(cmp: dict, net: str, threads) -> dict:
    """The ratios the targets read: evsim (network ``net``) / PyTorch's best, best batch and batch 1."""
    out = {}
    for th in threads:
        b = cmp["baselines"][th]
        e = b["evsim"].get(net)
        if not e:
            continue
        r = {"best_vs_fastest_torch": e["vs_torch_best"]["ratio"], "best_vs_fastest_torch_rounds": e["vs_torch_best"],
             "baseline": b["torch_best"], "evsim_best": e["best"]}
        if "vs_torch_best_eager" in e:
            r["best_vs_best_eager"] = e["vs_torch_best_eager"]["ratio"]
        if "batch1_vs_torch_best_batch1" in e:
            r["batch1_vs_fastest_torch"] = e["batch1_vs_torch_best_batch1"]["ratio"]
        if "batch1_vs_torch_best_eager_batch1" in e:
            r["batch1_vs_best_eager"] = e["batch1_vs_torch_best_eager_batch1"]["ratio"]
        out[th] = r
    return out


def explain_of(act: dict, cmp: dict, net: str, threads) -> dict:
    out = {}
    for th in threads:
        b = cmp["baselines"][th]
        e, tf = b["evsim"].get(net), b.get("best_torch_folded")
        if e and tf:
            out[th] = explain_speed(act, e["best"]["median"], tf["median"], th)
    return out


def profile_evsim(net, x: np.ndarray, batch: int) -> dict:
    """Where a run's time goes, per kernel: the engine's own profiling run (``profile=True``: the
    driver reads the CPU clock between its steps, same code path) summed over the layers of each
    kind, plus the dense direct-input current and the Python around the driver."""
    evsim_run(net, x[:batch], batch_size=batch, profile=True)        # warm
    n_done = (len(x) // batch) * batch
    t0 = time.perf_counter()
    r = evsim_run(net, x[:n_done], batch_size=batch, profile=True)
    total = time.perf_counter() - t0
    prof = r.profile
    parts = prof.by_kind()
    parts["rest (Python around the driver: checks, allocation, outputs)"] = total - prof.driver_s - sum(
        sec for _, what, sec in prof.parts if what.startswith("dense MACs"))
    layers: dict[str, int] = {}
    for _, what, _ in prof.parts:
        layers[what] = layers.get(what, 0) + 1
    return {"batch": batch, "samples": n_done, "total_s": total, "clock": prof.available,
            "share": {k: v / total for k, v in parts.items()},
            "ms_per_sample": {k: 1e3 * v / n_done for k, v in parts.items()},
            "layers": {k: layers.get(k, "-") for k in parts}}


def _profiled_runs(net, x, reps: int) -> list:
    """``reps`` profiled runs of one batch on 1 thread, after a warm-up run: each result's ``profile.parts``
    gives every projection's share of the driver's time."""
    evsim_run(net, x, batch_size=len(x), threads=1, profile=True)        # warm
    return [evsim_run(net, x, batch_size=len(x), threads=1, profile=True) for _ in range(reps)]


def _layer_seconds(run_, name: str) -> float:
    return next(sec for label, _, sec in run_.profile.parts if label == name)


def scatter_by_shape(net, x, reps: int = 3) -> list[dict]:
    """Wall time of the conv scatter per layer shape (1 thread, one batch, from the engine's profiling
    run: each conv_rows projection's share of the driver's time); median over ``reps`` runs."""
    runs = _profiled_runs(net, x, reps)
    acc, secs = {}, {}
    for cp in net.projections:
        if cp.mode != KR.NAME:
            continue
        g = cp.geometry
        key = (g.c_in, g.c_out, g.h_out, g.stride[0], g.kernel[0] * g.kernel[1])
        r = acc.setdefault(key, {"c_in": key[0], "c_out": key[1], "map": key[2], "stride": key[3],
                                 "taps_per_channel": key[4], "events": 0, "synaptic_ops": 0, "calls": 0,
                                 "weights_mib": cp.arrays["row_w"].nbytes / 2**20})
        r["events"] += int(runs[0].counters.events_in[cp.name].sum())
        r["synaptic_ops"] += int(runs[0].counters.synaptic_ops[cp.name].sum())
        r["calls"] += 1
        times = secs.setdefault(key, [0.0] * reps)
        for i, run_ in enumerate(runs):
            times[i] += _layer_seconds(run_, cp.name)
    rows = []
    for key, r in acc.items():
        r["seconds"] = summarize(secs[key])
        sec = r["seconds"]["median"]
        r["gadds_per_s"] = r["synaptic_ops"] / sec / 1e9 if sec else 0.0
        r["events"] /= len(x)
        r["synaptic_ops"] /= len(x)
        r["ms_per_sample"] = 1e3 * sec / len(x)
        rows.append(r)
    return rows


# ======================================================== case 1: shipped
def case_shipped(cfg: dict, paths: dict) -> dict:
    import torch
    from evsim.bridge.train import load_checkpoint
    from evsim.datasets import load_fashion_mnist
    from evsim.format import read_network

    from evsim.bridge.dense import DenseRunner

    log("case 1: shipped model on Fashion-MNIST")
    x_all, y_all = load_fashion_mnist("test")
    need = max(max(b, cfg["min_samples"]) for b in cfg["shipped_batches"])
    n_eval = max(need, cfg["shipped_eval_samples"])
    x = np.ascontiguousarray(x_all[:n_eval])
    y = y_all[:n_eval]
    threads = cfg["threads"]
    # timing first, each side in its own processes, while this process sits idle
    cmp = separate_processes(cfg, f"shipped {Path(paths['dir']).name}", Path(cfg["tmp"]) / f"shipped-{Path(paths['dir']).name}",
                             x[:need], {"evsim": paths["weights"]}, paths["weights"],
                             {"checkpoint": paths["checkpoint"]}, cfg["shipped_batches"], cfg["compile_batches"],
                             cfg["reps"], cfg["min_samples"], cfg["max_rep_s"])

    network = read_network(paths["weights"])
    net = evsim.compile_network(network, dtype="float32")
    model, ckpt = load_checkpoint(paths["checkpoint"])
    model = model.float().eval()
    folded = DenseRunner(network, torch.float32)
    # what the engine did, and whether all three agree (predictions, accuracy)
    set_threads(max(threads))
    res = evsim_run(net, x, batch_size=256)
    act = activity(net, res)
    with torch.inference_mode():
        p_model = torch.cat([model(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).argmax(1).numpy()
        p_fold = torch.cat([folded(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).argmax(1).numpy()
    p_ev = res.predictions
    agree = {"samples": int(len(x)), "accuracy_evsim": float((p_ev == y).mean()),
             "accuracy_torch_model": float((p_model == y).mean()), "accuracy_torch_folded": float((p_fold == y).mean()),
             "agreement_evsim_torch_model": float((p_ev == p_model).mean()),
             "agreement_evsim_torch_folded": float((p_ev == p_fold).mean())}
    # the dense runner against the bridge's own float64 reference of the folded network
    from evsim.bridge.dense import run_folded_torch
    n_ref = min(16, len(x))
    o_ref, _ = run_folded_torch(network, torch.from_numpy(x[:n_ref]))
    o_ft = folded(torch.from_numpy(x[:n_ref])).double()
    o_cl = DenseRunner(network, torch.float32, memory_format=torch.channels_last)(torch.from_numpy(x[:n_ref])).double()
    agree["folded_runner_vs_run_folded_torch"] = {
        "samples": n_ref, "max_abs_output_diff": float((o_ft - o_ref).abs().max()),
        "max_abs_output_diff_channels_last": float((o_cl - o_ref).abs().max()),
        "prediction_agreement": float((o_ft.argmax(1) == o_ref.argmax(1)).double().mean())}
    set_threads(1)
    b1 = cmp["baselines"][1]["evsim"]["evsim"]["best"]["batch"] if 1 in cmp["baselines"] else 64
    prof = profile_evsim(net, x[:max(b1, cfg["min_samples"], 2 * b1)], b1)
    convs = conv_layers(net, x[:64])
    return {"name": Path(paths["dir"]).name, "weights": str(paths["weights"]), "checkpoint": str(paths["checkpoint"]),
            "notes": paths.get("notes", []), "architecture": ckpt.get("config", {}),
            "timesteps": network.timesteps, "input_shape": list(network.input_shape),
            "compiled_nbytes": net.nbytes, "comparison": cmp,
            "ratios": ratios_of(cmp, "evsim", threads), "activity": act, "agreement": agree,
            "explain": explain_of(act, cmp, "evsim", threads), "profile_1thread": prof, "conv_layers": convs}


# ======================================================== case 2: ResNet-19
def trained_layer_rates(paths: dict | None, cfg: dict) -> tuple[dict, str]:
    """Per-layer firing rates of the shipped (first) model: measured by the engine on test images, or
    from its card; the ResNet-19 case carries them over stage by stage."""
    if paths:
        from evsim.datasets import load_fashion_mnist
        from evsim.format import read_network
        net = evsim.compile_network(read_network(paths["weights"]), dtype="float32")
        x, _ = load_fashion_mnist("test")
        set_threads(max(cfg["threads"]))
        act = activity(net, evsim_run(net, np.ascontiguousarray(x[:256]), batch_size=64))
        return {l["name"]: l["rate"] for l in act["layers"]}, f"{Path(paths['dir']).name} (engine, 256 test images)"
    card = HERE.parent / "models" / "fmnist-resnet8-ternary" / "card.json"
    c = json.loads(card.read_text())
    return {p["name"]: p["firing_rate"] for p in c["populations"]}, f"{card} (model card)"


def build_resnet19(cfg: dict, paths: dict | None = None) -> dict:
    """ResNet-19 at full width, random init, calibrated twice: every layer at the sparse target
    (``r19_target_rate``), and each layer at the shipped model's rate for its place in the network."""
    import copy

    import torch
    from evsim.bridge.fold import fold_model
    from evsim.bridge.models import build_model

    from synthetic import calibrate_layers, stage_layer_rates

    torch.manual_seed(cfg["seed"])
    model = build_model("resnet19", width=128, in_channels=3, image_size=32, timesteps=4).eval()
    rng = np.random.default_rng(cfg["seed"])
    x_cal = torch.from_numpy(rng.random((cfg["r19_calib_samples"], 3, 32, 32), dtype=np.float32))
    src, src_note = trained_layer_rates(paths, cfg)
    targets = {"trained": stage_layer_rates(src, (1, 1, 1), [n for n, _ in model.neurons()], (3, 3, 2)),
               "sparse": cfg["r19_target_rate"]}
    out = {"x_cal": x_cal, "settings": {}, "trained_rates_source": src_note, "trained_rates": src}
    for label in ("sparse", "trained"):
        m = model if label == "sparse" else copy.deepcopy(model)
        set_threads(max(cfg["threads"]))
        t0 = time.perf_counter()
        cal = calibrate_layers(m, x_cal, targets[label], cfg["r19_bn_std"])
        cal["seconds"] = time.perf_counter() - t0
        log(f"case 2: calibrated ResNet-19 '{label}' (overall {cal['rate'] * 100:.1f}%, layers "
            f"{min(cal['layer_rates'].values()) * 100:.1f}-{max(cal['layer_rates'].values()) * 100:.1f}%) on "
            f"{cal['samples']} samples, {cal['passes']} passes ({cal['seconds']:.1f} s)")
        t0 = time.perf_counter()
        network = fold_model(m, input_range=(0.0, 1.0))
        out["settings"][label] = {"model": m, "network": network, "calibration": cal,
                                  "fold_s": time.perf_counter() - t0}
    # the sparse setting also serves the linearity and memory cases
    sp = out["settings"]["sparse"]
    out.update(model=sp["model"], network=sp["network"], calibration=sp["calibration"], fold_s=sp["fold_s"])
    return out


def case_resnet19(cfg: dict, r19: dict) -> dict:
    import torch
    from evsim.format import write_network

    from evsim.bridge.dense import DenseRunner

    log("case 2: ResNet-19 (width 128, 32x32, T=4) at the trained model's per-layer rates and at a sparse rate")
    tmp = Path(cfg["tmp"]) / "resnet19"
    tmp.mkdir(parents=True, exist_ok=True)
    files = {}
    for label, st in r19["settings"].items():
        files[label] = tmp / f"{label}.h5"
        write_network(st["network"], files[label])
    torch.save(r19["settings"]["sparse"]["model"], tmp / "sparse_model.pt")
    rng = np.random.default_rng(cfg["seed"] + 1)
    need = max(max(b, cfg["r19_min_samples"]) for b in cfg["r19_batches"])
    x = rng.random((need, 3, 32, 32), dtype=np.float32)
    threads = cfg["threads"]
    # PyTorch's dense run costs the same at any firing rate: it is timed on the sparse setting's network
    cmp = separate_processes(cfg, "resnet19", tmp, x, files, files["sparse"], {"module": tmp / "sparse_model.pt"},
                             cfg["r19_batches"], cfg["r19_compile_batches"], cfg["r19_reps"], cfg["r19_min_samples"],
                             cfg["r19_max_rep_s"])
    settings = {}
    set_threads(max(threads))
    for label, st in r19["settings"].items():
        model, network = st["model"], st["network"]
        net = evsim.compile_network(network, dtype="float32")
        folded = DenseRunner(network, torch.float32)
        n_act = min(len(x), max(2, cfg["r19_min_samples"]))
        res = evsim_run(net, x[:n_act], batch_size=n_act)
        act = activity(net, res)
        out_f = folded(torch.from_numpy(x[:n_act])).numpy()
        with torch.inference_mode():
            out_m = model(torch.from_numpy(x[:n_act])).numpy()
        agree = {"samples": int(n_act),
                 "agreement_evsim_torch_folded": float((res.predictions == out_f.argmax(1)).mean()),
                 "agreement_evsim_torch_model": float((res.predictions == out_m.argmax(1)).mean()),
                 "max_abs_output_diff_evsim_torch_folded": float(np.abs(res.outputs - out_f).max()),
                 "output_scale": float(np.abs(out_f).max())}
        settings[label] = {"calibration": st["calibration"], "fold_s": st["fold_s"], "compiled_nbytes": net.nbytes,
                           "activity": act, "agreement": agree, "ratios": ratios_of(cmp, label, threads),
                           "explain": explain_of(act, cmp, label, threads)}
    return {"comparison": cmp, "settings": settings, "trained_rates_source": r19["trained_rates_source"],
            "trained_rates": r19["trained_rates"], "torch_timed_on": "sparse"}


# ============================================== case 3: synaptic kernel rate
def _events(rng, n_samples, c_in, hw, density, channel_major):
    """Events as the engine's ``fire`` emits them: memory order (channels-last index ascending), or
    channel by channel when the layer's weights exceed the compiler's cache threshold; random signs."""
    n_neurons = hw * hw * c_in
    idx = np.zeros((n_samples, n_neurons), np.int32)
    sign = np.zeros((n_samples, n_neurons), np.int8)
    cnt = np.zeros(n_samples, np.int64)
    for n in range(n_samples):
        ii = np.nonzero(rng.random(n_neurons) < density)[0]
        if channel_major:
            ii = ii[np.lexsort((ii // c_in, ii % c_in))]
        idx[n, :len(ii)] = ii
        sign[n, :len(ii)] = rng.choice(np.array([-1, 1], np.int8), len(ii))
        cnt[n] = len(ii)
    return idx, sign, cnt


def _conv3x3(rng, c_in, c_out, hw, n_samples):
    """One 3x3 stride-1 conv layer with random float32 weights, lowered for the row kernel, with its weights
    and ``n_samples`` accumulators in the memory the engine gives them (evsim.memory: huge pages). Returns
    the lowered arrays, the accumulators, the per-sample operation counts and ``args(idx, sign, cnt)``: the
    arguments of ``scatter_batch`` for a batch of events."""
    w = rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)
    geom = ConvGeometry(c_in, hw, hw, c_out, hw, hw, (3, 3), (1, 1), (1, 1))
    a = row_kernel(w, geom, np.float32)
    a["row_w"] = evsim_memory.copy(a["row_w"])
    acc = evsim_memory.empty((n_samples, hw * hw * c_out), np.float32)
    acc[...] = 0.0
    ops = np.zeros(n_samples, np.int64)
    row_map = geom.offset_maps()[0]

    def args(idx, sign, cnt):
        return (idx, sign, cnt, c_in, hw, 3, 3, row_map, a["col_plan"], hw, c_out, a["row_w"], a["reach"],
                bool(a["has_zeros"]), acc, ops)
    return a, acc, ops, args


def scatter_rate(rng, c_in, c_out, hw, density, n_samples, threads, reps) -> dict:
    """The engine's conv kernel (``scatter_conv_rows``) on one 3x3 stride-1 layer, the same call repeated."""
    set_threads(threads)
    a, acc, ops, layer_args = _conv3x3(rng, c_in, c_out, hw, n_samples)
    channel_major = a["row_w"].nbytes > CHANNEL_MAJOR_WEIGHT_BYTES
    idx, sign, cnt = _events(rng, n_samples, c_in, hw, density, channel_major)
    args = layer_args(idx, sign, cnt)
    KR.scatter_batch(*args)
    ops[:] = 0
    KR.scatter_batch(*args)
    n_ops = int(ops.sum())
    st = time_calls(lambda: KR.scatter_batch(*args), reps, warmup=0)
    runs = int(cnt.sum()) * 3          # (event, kernel row) runs, borders aside
    return {"c_in": c_in, "c_out": c_out, "map": hw, "density": density, "samples": n_samples, "threads": threads,
            "event_order": "channel by channel" if channel_major else "memory order",
            "weights_mib": a["row_w"].nbytes / 2**20, "accumulator_mib_per_sample": acc[0].nbytes / 2**20,
            "events_per_sample": float(cnt.mean()), "syn_ops_per_call": n_ops, "seconds": st,
            # each addition reads one 4-byte weight; the accumulators of a group of events (one input
            # position) are read and written once per group, so weights are the traffic that scales
            "weight_gbytes_per_s": 4 * n_ops / st["median"] / 1e9,
            "gadds_per_s": n_ops / st["median"] / 1e9,
            "gadds_per_s_min": n_ops / st["max"] / 1e9, "gadds_per_s_max": n_ops / st["min"] / 1e9,
            "ns_per_event": st["median"] / max(1, int(cnt.sum())) * 1e9,
            "ns_per_row_run": st["median"] / max(1, runs) * 1e9, "ns_per_add": st["median"] / n_ops * 1e9,
            "huge_page_share": {"weights": evsim_memory.huge_page_share(a["row_w"]),
                                "accumulators": evsim_memory.huge_page_share(acc)}}


def _position_events(rng, n_samples, c_in, hw, per_position):
    """``per_position`` events (distinct random channels, random signs) at every input position, in
    memory order: the grouping the kernel sees when that many of a position's channels fire."""
    n_pos = hw * hw
    idx = np.zeros((n_samples, n_pos * per_position), np.int32)
    sign = rng.choice(np.array([-1, 1], np.int8), idx.shape)
    for n in range(n_samples):
        ch = np.sort(np.argsort(rng.random((n_pos, c_in)), axis=1)[:, :per_position], axis=1)
        idx[n] = (np.arange(n_pos)[:, None] * c_in + ch).ravel()
    return idx, sign, np.full(n_samples, n_pos * per_position, np.int64)


def scatter_per_position(rng, c, hw, groups, n_samples, reps) -> dict:
    """What one input position and one event cost the conv kernel, on one 3x3 stride-1 ``c -> c`` layer
    (1 thread): every position carries ``g`` events for each ``g`` in ``groups``, and a least-squares line
    ``time per position = fixed + g * per event`` separates the cost a position pays once (decoding it,
    loading and storing its output runs' accumulators) from what each of its events adds (one weight
    load and one addition per vector of the runs)."""
    set_threads(1)
    _, _, _, layer_args = _conv3x3(rng, c, c, hw, n_samples)
    points = []
    for g in groups:
        if g > c:
            continue
        idx, sign, cnt = _position_events(rng, n_samples, c, hw, g)
        args = layer_args(idx, sign, cnt)
        KR.scatter_batch(*args)
        st = time_calls(lambda: KR.scatter_batch(*args), reps, warmup=1)
        points.append({"events_per_position": g, "ns_per_position": st["median"] / (n_samples * hw * hw) * 1e9,
                       "ns_per_event": st["median"] / int(cnt.sum()) * 1e9, "seconds": st})
    gs = np.array([p["events_per_position"] for p in points], float)
    ts = np.array([p["ns_per_position"] for p in points], float)
    per_event, fixed = np.polyfit(gs, ts, 1) if len(points) >= 2 else (float("nan"), float("nan"))
    return {"c_in": c, "c_out": c, "map": hw, "samples": n_samples, "points": points,
            "fixed_ns_per_position": float(fixed), "ns_per_event": float(per_event)}


def conv_layers(net, x, reps: int = 5) -> list[dict]:
    """Per conv_rows layer of a run (1 thread, one batch): its input events and occupied input positions
    per sample (a position's events are the group the kernel adds with one load and store of the
    accumulators of its runs; from the recorded spikes), its time (the engine's profiling run, median of
    ``reps``) and its synaptic additions per second."""
    res = evsim.simulate(net, x, record=True)
    runs = _profiled_runs(net, x, reps)
    pops = [p.name for p in net.populations]
    rows = []
    for cp in net.projections:
        if cp.mode != KR.NAME or cp.source < 0:
            continue
        s = res.spikes[pops[cp.source]]                  # (T, N, C, H, W)
        positions = int((s != 0).any(axis=2).sum())       # positions with at least one event, over steps
        events = int((s != 0).sum())
        g = cp.geometry
        sec = summarize([_layer_seconds(r, cp.name) for r in runs])
        ops = int(runs[0].counters.synaptic_ops[cp.name].sum())
        rows.append({"name": cp.name, "c_in": g.c_in, "c_out": g.c_out, "map_in": g.h_in, "map_out": g.h_out,
                     "stride": g.stride[0], "kernel": g.kernel[0], "events_per_sample": events / len(x),
                     "positions_per_sample": positions / len(x), "events_per_position": events / max(1, positions),
                     "synaptic_ops_per_sample": ops / len(x), "ms_per_sample": 1e3 * sec["median"] / len(x),
                     "gadds_per_s": ops / sec["median"] / 1e9 if sec["median"] else 0.0})
    return rows


def case_kernels(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    log("case 3: conv scatter (scatter_conv_rows) synaptic additions per second")
    rng = np.random.default_rng(cfg["seed"])
    rows = []
    for c_out in cfg["kern_cout"]:
        r = scatter_rate(rng, 128, c_out, 32, 0.10, cfg["kern_samples"], 1, cfg["kern_reps"])
        rows.append(r)
        log(f"case 3: 128->{c_out}, 1 thread: {r['gadds_per_s']:.2f} G additions/s ({r['ns_per_row_run']:.2f} ns per row run)")
    # cost of one (event, kernel row) run: c0 + c1 * (3 * C_out) additions (least squares)
    co = np.array([3 * r["c_out"] for r in rows], float)
    tt = np.array([r["ns_per_row_run"] for r in rows], float)
    c1, c0 = np.polyfit(co, tt, 1) if len(rows) >= 2 else (float("nan"), float("nan"))
    # the same 128->128 layer at other event densities: does an addition cost the same at any density?
    dens = []
    for d in cfg["kern_densities"]:
        r = scatter_rate(rng, 128, 128, 32, d, cfg["kern_samples"], 1, cfg["kern_reps"])
        dens.append(r)
        log(f"case 3: 128->128 at {d * 100:.0f}% events: {r['gadds_per_s']:.2f} G additions/s")
    # layer shapes of ResNet-19's deeper stages: weights beyond the L2 cache
    shapes = []
    for c_in, c_out, hw in cfg["kern_shapes"]:
        r = scatter_rate(rng, c_in, c_out, hw, 0.10, cfg["kern_samples"], 1, cfg["kern_reps"])
        shapes.append(r)
        log(f"case 3: {c_in}->{c_out} on {hw}x{hw}: {r['gadds_per_s']:.2f} G additions/s "
            f"(weights {r['weights_mib']:.1f} MiB, {r['event_order']})")
    # what an input position and an event cost, at the shipped ResNet-8's 3x3 layer shapes
    per_position = []
    for c, hw in cfg["kern_positions"]:
        r = scatter_per_position(rng, c, hw, (1, 2, 4, 8, 16), max(8, cfg["kern_samples"]), cfg["kern_reps"])
        per_position.append(r)
        log(f"case 3: {c}->{c} on {hw}x{hw}: {r['fixed_ns_per_position']:.1f} ns per input position + "
            f"{r['ns_per_event']:.2f} ns per event")
    two = None
    if max(cfg["threads"]) >= 2:
        two = scatter_rate(rng, 128, 128, 32, 0.10, 2 * cfg["kern_samples"], 2, cfg["kern_reps"])
        one = scatter_rate(rng, 128, 128, 32, 0.10, 2 * cfg["kern_samples"], 1, cfg["kern_reps"])
        two["speedup_vs_1_thread"] = two["gadds_per_s"] / one["gadds_per_s"]
    # the dense alternative on the same core: one 128->128 3x3 conv of a 32x32 map
    set_threads(1)
    xin = torch.randn(1, 128, 32, 32)
    wt = torch.randn(128, 128, 3, 3)
    with torch.inference_mode():
        st = time_calls(lambda: F.conv2d(xin, wt, padding=1), cfg["kern_reps"], warmup=2)
    cy, cx = ConvGeometry(128, 32, 32, 128, 32, 32, (3, 3), (1, 1), (1, 1)).valid_counts()
    dense_macs = int((cy[:, None] * cx[None, :]).sum()) * 128 * 128    # taps inside the map only
    torch_gmacs = dense_macs / st["median"] / 1e9
    head = next((r for r in rows if r["c_out"] == 128), rows[-1])
    from timing import add_roofline
    roof = add_roofline()
    if roof["gadds_per_s"]:
        log(f"case 3: add roofline {roof['gadds_per_s']:.1f} G/s ({roof['basis']}): 128->128 at "
            f"{head['gadds_per_s'] / roof['gadds_per_s'] * 100:.0f} %")
    return {"rows": rows, "per_run_fit_ns": {"c0_ns_per_run": float(c0), "c1_ns_per_add": float(c1)},
            "roofline": roof,
            "densities": dens, "shapes": shapes, "per_position": per_position,
            "two_threads": two, "torch_dense_conv": {"seconds": st, "gmacs_per_s": torch_gmacs, "dense_macs": dense_macs},
            "break_even_density": head["gadds_per_s"] / torch_gmacs}


# ==================================================== case 4: linearity
def case_linearity(cfg: dict, r19: dict) -> dict:
    import copy

    import torch
    from evsim.bridge.fold import fold_model

    from synthetic import calibrate_layers

    log("case 4: time per sample vs events (ResNet-19, every layer calibrated to each target rate)")
    model = copy.deepcopy(r19["model"])
    x_cal = r19["x_cal"]
    rng = np.random.default_rng(cfg["seed"] + 2)
    x = rng.random((max(cfg["lin_samples"], cfg["lin_batch"]), 3, 32, 32), dtype=np.float32)
    from evsim.bridge.dense import DenseRunner

    # Calibrate and compile one network per target rate first, then time them all together,
    # repetitions interleaved (r1 r2 ... r5 r1 r2 ...): a change in the machine's state during the
    # case (load, page placement) then hits every rate alike instead of tilting the line.
    points, nets, acts, cal_secs = [], [], [], []
    for tgt in cfg["lin_targets"]:
        set_threads(max(cfg["threads"]))
        t0 = time.perf_counter()
        calibrate_layers(model, x_cal, tgt, cfg["r19_bn_std"])
        nets.append(evsim.compile_network(fold_model(model, input_range=(0.0, 1.0)), dtype="float32"))
        cal_secs.append(time.perf_counter() - t0)
        set_threads(1)
        acts.append(activity(nets[-1], evsim_run(nets[-1], x[:cfg["lin_samples"]], batch_size=cfg["lin_batch"])))
        log(f"case 4: target {tgt * 100:.0f}% calibrated: rate {acts[-1]['firing_rate'] * 100:.1f}% "
            f"({cal_secs[-1]:.0f} s)")
    set_threads(1)
    # the dense run costs the same at any firing rate: time it once, same thread count and batch
    folded = DenseRunner(fold_model(model, input_range=(0.0, 1.0)), torch.float32)
    tt = throughput({"torch_folded": torch_callable(folded)}, x, cfg["lin_batch"],
                    cfg["lin_reps"], cfg["lin_samples"], max_rep_s=30.0)["torch_folded"]
    torch_sec = summarize([1.0 / v for v in tt["values"]])
    tp = throughput({i: evsim_callable(net) for i, net in enumerate(nets)}, x, cfg["lin_batch"], cfg["lin_reps"],
                    cfg["lin_samples"], max_rep_s=30.0)
    for i, (tgt, act) in enumerate(zip(cfg["lin_targets"], acts)):
        sec = summarize([1.0 / v for v in tp[i]["values"]])
        rates = [l["rate"] for l in act["layers"]]
        points.append({"target": tgt, "firing_rate": act["firing_rate"], "events": act["spikes_per_sample"],
                       "events_in": act["events_in_per_sample"], "synaptic_ops": act["synaptic_ops_per_sample"],
                       "seconds_per_sample": sec, "layer_rate_min": min(rates),
                       "layer_rate_max": max(rates), "calibration_s": cal_secs[i], "layers": act["layers"],
                       "speed_vs_torch_folded": torch_sec["median"] / sec["median"]})
        log(f"case 4: target {tgt * 100:.0f}%: rate {act['firing_rate'] * 100:.1f}% (layers {min(rates) * 100:.1f}-"
            f"{max(rates) * 100:.1f}%), {act['spikes_per_sample'] / 1e6:.3f} M events, "
            f"{sec['median'] * 1e3:.1f} ms/sample")

    by_shape = {}
    if points:
        for label, i in (("lowest rate", 0), ("highest rate", len(points) - 1)):
            by_shape[label] = {"firing_rate": points[i]["firing_rate"],
                               "rows": scatter_by_shape(nets[i], x[:cfg["lin_batch"]])}

    def fit(xs, ts):
        xs, ts = np.asarray(xs, float), np.asarray(ts, float)
        A = np.stack([np.ones_like(xs), xs], 1)
        (a, b), *_ = np.linalg.lstsq(A, ts, rcond=None)
        pred = a + b * xs
        rel = np.abs(ts - pred) / pred
        ss_res = float(((ts - pred) ** 2).sum())
        ss_tot = float(((ts - ts.mean()) ** 2).sum())
        return {"a_s": float(a), "b_s_per_unit": float(b), "max_rel_dev": float(rel.max()),
                "rel_dev": [float(v) for v in rel], "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")}

    ts = [p["seconds_per_sample"]["median"] for p in points]
    fit_events = fit([p["events"] for p in points], ts) if len(points) >= 3 else None
    fit_ops = fit([p["synaptic_ops"] for p in points], ts) if len(points) >= 3 else None

    # consistency: the last calibrated model and its folded network fire alike on the same sample
    for _, nrn in model.neurons():
        nrn.record_spikes = True
    with torch.inference_mode():
        model(torch.from_numpy(x[:1]))
    sp = sum(float(n.spikes.abs().sum()) for _, n in model.neurons())
    tot = sum(n.spikes[0, 0].numel() * n.spikes.shape[0] for _, n in model.neurons())
    for _, nrn in model.neurons():
        nrn.record_spikes = False
        nrn.spikes = None
    ev_rate = activity(nets[-1], evsim_run(nets[-1], x[:1]))["firing_rate"] if nets else float("nan")
    return {"network": "ResNet-19 of case 2 (width 128, 32x32, T=4), every spiking layer calibrated to each "
                       "target rate (its BatchNorm shifts bisected, calibrate_layers)", "threads": 1,
            "batch": cfg["lin_batch"], "samples": cfg["lin_samples"], "points": points, "fit_events": fit_events,
            "torch_folded_seconds_per_sample": torch_sec,
            "fit_synaptic_ops": fit_ops, "scatter_by_shape": by_shape,
            "consistency": {"target": points[-1]["target"] if points else None, "torch_rate": sp / tot,
                            "evsim_rate": ev_rate}}


# ======================================================== case 5: memory
def case_memory(cfg: dict, paths: dict, r19_network=None) -> dict:
    log("case 5: peak memory and compiled size, kernel vs explicit CSR")
    rows = []
    for mode in ("kernel", "explicit"):
        for bs in cfg["mem_batches"]:
            cmd = [sys.executable, str(HERE / "memory_probe.py"), str(paths["weights"]), mode, str(bs)]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                rows.append({"conv_mode": mode, "batch": bs, "error": (p.stderr or p.stdout).strip().splitlines()[-1:]})
                continue
            d = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(d)
            log(f"case 5: {mode} batch {bs}: compiled {d['compiled_nbytes'] / 2**20:.2f} MiB, run peak (tracemalloc) "
                f"{d['run_tracemalloc_peak_mib']:.1f} MiB, RSS delta {d['rss_run_delta_mib']:.1f} MiB")
    out = {"shipped": rows}
    if r19_network is not None:
        net = evsim.compile_network(r19_network, dtype="float32")
        nnz, n_bytes = 0, 0
        shapes = {p.name: p.shape for p in r19_network.populations}
        for pr in r19_network.projections:
            if pr.kind != "conv2d" or pr.source == "input":
                continue
            geom = conv_geometry(pr, shapes[pr.source], shapes[pr.target])
            z = conv_explicit_nnz(pr.weight, geom)
            nnz += z
            n_bytes += z * (4 + 4) + (geom.c_in * geom.h_in * geom.w_in + 1) * 8
        out["resnet19"] = {"kernel_nbytes": net.nbytes, "explicit_synapses": int(nnz),
                           "explicit_nbytes_estimate": int(n_bytes),
                           "note": "explicit CSR not built: over the compiler's 1024 MB per-projection guard"
                                   if n_bytes > 2**30 else "estimate from conv_explicit_nnz"}
    return out


# ======================================================== case 6: start-up
def evsim_executable() -> list[str]:
    cand = Path(sys.executable).parent / "evsim"
    if cand.exists():
        return [str(cand)]
    w = shutil.which("evsim")
    return [w] if w else [sys.executable, "-m", "evsim.cli"]


def case_startup(cfg: dict, paths: dict) -> dict:
    log("case 6: start-up of `evsim run` (cold and warm Numba cache)")
    exe = evsim_executable()
    cmd = exe + ["run", "--weights", str(paths["weights"]), "--input", str(paths["sample"])]

    def timed(env, extra=()):
        t0 = time.perf_counter()
        p = subprocess.run(list(cmd) + list(extra), env=env, capture_output=True, text=True, timeout=600)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()[-500:]}")
        return dt, p.stdout

    cold, warm, dirs = [], [], []
    try:
        for _ in range(cfg["start_cold"]):
            d = tempfile.mkdtemp(prefix="evsim-bench-numba-")
            dirs.append(d)
            env = dict(os.environ, NUMBA_CACHE_DIR=d)
            cold.append(timed(env)[0])
        env = dict(os.environ, NUMBA_CACHE_DIR=dirs[-1])
        for _ in range(cfg["start_warm"]):
            warm.append(timed(env)[0])
        _, out = timed(env, ["--json"])
        doc = json.loads(out)
        # pieces of the warm time
        t_py = time_calls(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 3, warmup=0)
        t_imp = time_calls(lambda: subprocess.run(
            [sys.executable, "-c", "import evsim.cli, evsim.engine, evsim.format, evsim.compiler, evsim.reports"],
            check=True, env=env), 3, warmup=0)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    res = {"command": " ".join(cmd), "cold_s": summarize(cold), "warm_s": summarize(warm),
           "breakdown_warm": {"python_start_s": t_py["median"], "python_start_plus_imports_s": t_imp["median"],
                              "compile_network_s": doc["timing"]["compile_s"],
                              "simulate_s_incl_jit_cache_load": doc["timing"]["simulate_s"]}}
    log(f"case 6: cold {res['cold_s']['median']:.2f} s, warm {res['warm_s']['median']:.2f} s")
    return res


# ======================================================== case 7: scaling
def _speedup(a: dict, b: dict) -> dict:
    return {"samples_per_s_lo": a["median"], "samples_per_s_hi": b["median"], "speedup": b["median"] / a["median"],
            "speedup_min": b["min"] / a["max"], "speedup_max": b["max"] / a["min"]}


def scaling_row(rows: list[dict], net: str, bs: int, lo: int, hi: int) -> dict | None:
    """lo -> hi thread speed-up at batch ``bs``: evsim (network ``net``), and each PyTorch implementation
    in its best configuration (format, mode) at each thread count."""
    ev = {r["threads"]: r for r in rows if r["side"] == "evsim" and r["network"] == net and r["batch"] == bs}
    if lo not in ev or hi not in ev:
        return None
    row = {"batch": bs, "evsim": _speedup(ev[lo], ev[hi])}
    for impl in IMPLS[1:]:
        best = {}
        for th in (lo, hi):
            c = [r for r in rows if r["side"] == "torch" and r["impl"] == impl and r["threads"] == th and r["batch"] == bs]
            if c:
                best[th] = max(c, key=lambda r: r["median"])
        if len(best) == 2:
            row[impl] = _speedup(best[lo], best[hi])
            row[impl]["configs"] = [f"{best[t]['format']}, {best[t]['mode']}" for t in (lo, hi)]
    e1 = {r["threads"]: r for r in rows if r["side"] == "evsim" and r["network"] == net and r["batch"] == 1}
    if lo in e1 and hi in e1:
        row["evsim_batch1_speedup"] = e1[hi]["median"] / e1[lo]["median"]
    return row


def case_scaling(cfg: dict, results: dict) -> dict:
    """1 -> 2 thread speed-up at the largest batch measured in cases 1 and 2 (same runs)."""
    th = sorted(cfg["threads"])
    if len(th) < 2:
        return {"note": "only one thread count measured"}
    lo, hi = th[0], th[-1]
    out = {"threads": [lo, hi]}
    for case in [c for c in results if c.startswith("shipped")]:
        rows = results[case]["comparison"].get("rows")
        if rows:
            r = scaling_row(rows, "evsim", max(cfg["shipped_batches"]), lo, hi)
            if r:
                out[case] = dict(r, name=results[case].get("name", case))
    if "resnet19" in results:
        rows = results["resnet19"]["comparison"]["rows"]
        for label, key in (("sparse", "resnet19"), ("trained", "resnet19:trained")):
            r = scaling_row(rows, label, max(cfg["r19_batches"]), lo, hi)
            if r:
                out[key] = dict(r, name=f"resnet19 ({label} rates)")
    return out
