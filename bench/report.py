"""Targets (met / not met, from the measurements) and the Markdown report."""

from __future__ import annotations

from pathlib import Path

from cases import IMPL_LABEL, IMPLS
from compare import IMPL_SHORT, describe
from timing import fmt_stat

TARGET_RATIO = 2.0
# issue 18's goals against PyTorch's best configuration, per thread count: the shipped ResNet-8 (dense
# firing) and its sparse twin; ResNet-19 keeps the project's earlier 2x (the issue asks it reported)
GOALS_DENSE = {1: 1.5, 2: 2.0}
GOALS_SPARSE = {1: 4.0, 2: 4.0}
SPARSE_BELOW = 0.30         # a shipped model firing below this rate is judged by the sparse goals
TARGET_GADDS = 15.0
TARGET_LINEAR = 0.10
TARGET_START_S = 2.0
TARGET_SPEEDUP = 1.8



def demote_title(text: str) -> str:
    """A report of its own (``# title``) as a section of this one (``## title``)."""
    return "#" + text if text.startswith("# ") else text

def _pct(x, d=1):
    return f"{100 * x:.{d}f}%"


def _status(ok):
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def _k(d, key):
    """JSON turns int keys into strings; accept both."""
    return d[key] if key in d else d[str(key)]


# ------------------------------------------------------------------ targets
def _position_fit(C: dict, c_out: int):
    """Case 3's per-position fit for a C -> C layer, or None."""
    return next((r for r in (C.get("kernels") or {}).get("per_position", []) if r["c_out"] == c_out), None)


def _conv_position_share(c: dict, C: dict):
    """Of the shipped model's 3x3 stride-1 C -> C conv layers that case 3 measured: (their share of the conv
    time, the share of their predicted time that is the fixed cost of input positions, events per position
    (min, max)), or None."""
    rows = [r for r in c.get("conv_layers", []) if r["stride"] == 1 and r["kernel"] == 3 and r["c_in"] == r["c_out"]
            and _position_fit(C, r["c_out"])]
    if not rows:
        return None
    fixed = sum(r["positions_per_sample"] * _position_fit(C, r["c_out"])["fixed_ns_per_position"] for r in rows)
    per_ev = sum(r["events_per_sample"] * _position_fit(C, r["c_out"])["ns_per_event"] for r in rows)
    conv_ms = sum(r["ms_per_sample"] for r in c["conv_layers"])
    return {"layers": [r["name"] for r in rows], "time_share": sum(r["ms_per_sample"] for r in rows) / conv_ms,
            "fixed_share": fixed / (fixed + per_ev),
            "events_per_position": (min(r["events_per_position"] for r in rows),
                                    max(r["events_per_position"] for r in rows))}


def _why_slower(c: dict, goals: dict, rs: dict, C: dict) -> str:
    """Why a goal is missed, from the measurements: the work evsim skips, its speed per operation against
    PyTorch's, what the goal would need, and (where measured) how much of the conv time is the fixed cost of
    input positions."""
    a = c["activity"]
    parts = []
    for th, g in goals.items():
        e = _k(c["explain"], th) if (th in c["explain"] or str(th) in c["explain"]) else None
        if not e or rs[th]["best_vs_fastest_torch"] >= g:
            continue
        need = g * e["work_ratio_adds_over_dense_macs"]
        parts.append(f"{th} thr: evsim performs {_pct(e['work_ratio_adds_over_dense_macs'])} of the folded network's "
                     f"dense MACs as additions ({a['synaptic_ops_per_sample'] / 1e6:.1f} M of "
                     f"{a['dense_work_per_sample'] / 1e6:.1f} M per sample) at {e['evsim_gadds_per_s']:.2f} G/s against "
                     f"PyTorch's {e['torch_folded_gmacs_per_s']:.1f} G MAC/s (folded runner at its best), "
                     f"{e['per_op_speed_ratio']:.2f}x its speed per operation; {g:g}x needs {need:.2f}x "
                     f"({need * e['torch_folded_gmacs_per_s']:.1f} G additions/s)")
    why = "; ".join(parts) + "." if parts else ""
    roof = (C.get("kernels") or {}).get("roofline") or {}
    if a["firing_rate"] >= SPARSE_BELOW and roof.get("gadds_per_s"):
        why += (f" The firing rate leaves {_pct(1 - a['synaptic_ops_per_sample'] / a['dense_work_per_sample'])} of "
                f"the dense work to skip, and on this CPU a vector addition issues no faster than the vector FMA it "
                f"replaces ({roof['basis']}; a dense conv reuses each weight from a register over many outputs where "
                f"the scatter loads a weight for every addition), so the goal asks the event-driven adds to run "
                f"faster per operation than a tuned dense convolution.")
    sh = _conv_position_share(c, C)
    if sh:
        lo, hi = sh["events_per_position"]
        why += (f" Its 3x3 C -> C conv layers ({', '.join(sh['layers'])}; {_pct(sh['time_share'], 0)} of the conv "
                f"time) see {lo:.1f}-{hi:.1f} events per occupied input position, and case 3's fit puts "
                f"{_pct(sh['fixed_share'], 0)} of their time on the fixed cost of a position (decoding it and its "
                "kernel rows, holding its output runs' accumulators) rather than on the events' additions"
                + ("; at this firing rate few events share each position's fixed cost." if a["firing_rate"] < SPARSE_BELOW
                   else "."))
    return why


def _integer_target(path=None) -> dict | None:
    """Issue 14's speed goal for the integer engine, from the last committed ``bench/integer.py`` run
    (bench/INTEGER.json, run on its own; its report is included below as a section)."""
    import json
    path = Path(path) if path else Path(__file__).resolve().parent / "INTEGER.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    ratios: dict[str, list[float]] = {}
    for r in d["results"]:
        if "ratio_to_float32" in r and r["arithmetic"] != "float32":
            ratios.setdefault(r["arithmetic"], []).append(r["ratio_to_float32"])
    if not ratios:
        return None
    i16, i32, wide = ratios.get("int16", []), ratios.get("int32", []), ratios.get("int32-wide", [])
    measured = "; ".join(f"{k}: {min(v):.2f}-{max(v):.2f}x float32" for k, v in (("int16", i16), ("int32", i32),
                                                                                   ("int32 all in int32", wide)) if v)
    models = sorted({r["model"] for r in d["results"]})
    threads = sorted({r["threads"] for r in d["results"]})
    runs = f"{d['rounds']} rounds in each of {d.get('processes', 1)} process(es)"
    return {"name": "integer engine against float32, shipped models (" + ", ".join(models) + "), "
                    + "/".join(map(str, threads)) + " threads",
            "target": "int32 >= 1x float32 and int16 (16-bit accumulators) > 1x, every model and thread count (issue 14)",
            "measured": measured + f" (`python bench/integer.py --rounds {d['rounds']} --reps {d['reps']} --processes "
                        f"{d.get('processes', 1)}`, {runs}, {d['machine'].get('date', '')[:10]}; section below)",
            "status": bool(i16 and i32 and min(i16) > 1.0 and min(i32) >= 1.0),
            "why": ("int32 runs sum a step's synaptic input in int16 where it fits 16 bits (all three shipped models "
                    "at 8-bit weights), so the conv runs at int16's lanes; where int32 is still below float32, the "
                    "section below says where the time goes." if i32 and min(i32) < 1.0 else "")}


def _scaling_cases(c: dict) -> list[str]:
    """The networks of the scaling case that were measured: the shipped models, then ResNet-19."""
    return [k for k in c if k.startswith("shipped")] + [k for k in c if k.startswith("resnet19")]


def evaluate_targets(R: dict) -> list[dict]:
    C = R["cases"]
    cfg = R["config"]
    out = []

    entries = [(C[k], f"shipped model `{C[k]['name']}` (Fashion-MNIST, firing rate {_pct(C[k]['activity']['firing_rate'])})")
               for k in C if k.split(":")[0] == "shipped" and "activity" in C[k]]
    r19 = C.get("resnet19")
    if r19 and "settings" in r19:
        for label, st in r19["settings"].items():
            what = ("at the shipped model's per-layer rates" if label == "trained"
                    else f"every layer at {_pct(cfg['r19_target_rate'], 0)}")
            entries.append((st, f"ResNet-19 (width 128, 32x32) {what}, firing rate {_pct(st['activity']['firing_rate'])}"))
    else:
        entries.append((r19, "ResNet-19 (width 128, 32x32, every layer at "
                             f"{_pct(cfg['r19_target_rate'], 0)})"))
    new = any("rows" in (C[k].get("comparison") or {}) for k in C if k.startswith(("shipped", "resnet19")))
    for c, label in entries:
        shipped = label.startswith("shipped")
        goals = None
        if shipped and c and "activity" in c:
            goals = GOALS_SPARSE if c["activity"]["firing_rate"] < SPARSE_BELOW else GOALS_DENSE
        if goals:
            goal_text = "; ".join(f">= {g:g}x at {th} thread{'s' if th > 1 else ''}" for th, g in goals.items()
                                  if th in cfg["threads"])
            target = (f"{goal_text} (issue 18), against PyTorch's best configuration with at most that many threads "
                      "(implementation, memory format, eager or compiled, batch), each side in its own process, "
                      "evsim at its best batch")
        elif new:
            target = (f">= {TARGET_RATIO:g}x PyTorch's best configuration with at most the machine's "
                      f"{max(cfg['threads'])} threads (implementation, memory format, eager or compiled, batch), "
                      "each side in its own process, evsim at its best batch (the project's earlier target; issue 18 "
                      "asks for this network reported at both settings)")
        else:
            target = (f">= {TARGET_RATIO:g}x the faster PyTorch variant, both on the machine's "
                      f"{max(cfg['threads'])} threads, each side at its best batch (fewer threads shown too)")
        t = {"name": f"end-to-end throughput, {label}", "target": target, "status": None, "measured": "-", "why": ""}
        if c and "ratios" in c and c["ratios"]:
            rs = {th: _k(c["ratios"], th) for th in cfg["threads"] if th in c["ratios"] or str(th) in c["ratios"]}

            def one(th, r):
                s_ = f"{th} thr: {r['best_vs_fastest_torch']:.2f}x"
                rr = r.get("best_vs_fastest_torch_rounds")
                if rr and rr.get("rounds"):
                    s_ += f" [{rr['min']:.2f}-{rr['max']:.2f} over rounds]"
                extra = []
                if "best_vs_best_eager" in r:
                    extra.append(f"vs best eager {r['best_vs_best_eager']:.2f}x")
                if "batch1_vs_fastest_torch" in r:
                    extra.append(f"batch 1: {r['batch1_vs_fastest_torch']:.2f}x")
                return s_ + (f" ({'; '.join(extra)})" if extra else "")
            t["measured"] = "; ".join(one(th, r) for th, r in rs.items())
            want = goals or {max(rs): TARGET_RATIO}
            judged = {th: g for th, g in want.items() if th in rs}
            t["status"] = all(rs[th]["best_vs_fastest_torch"] >= g for th, g in judged.items()) if judged else None
            if not t["status"] and c.get("explain"):
                t["why"] = _why_slower(c, judged, rs, C)
        out.append(t)

    t = _integer_target()
    if t:
        out.append(t)

    c = C.get("kernels")
    t = {"name": "synaptic kernel (conv scatter), 128->128 3x3, 32x32, 10% events, 1 thread",
         "target": f">= {TARGET_GADDS:g} G additions/s/core", "status": None, "measured": "-", "why": ""}
    if c:
        head = next((r for r in c["rows"] if r["c_out"] == 128), None)
        if head:
            t["measured"] = (f"{head['gadds_per_s']:.2f} G/s (C_out 16/32/64: " + "/".join(
                f"{r['gadds_per_s']:.2f}" for r in c["rows"] if r["c_out"] != 128) + "; " + ", ".join(
                f"{r['c_in']}->{r['c_out']} {r['map']}x{r['map']}: {r['gadds_per_s']:.2f}" for r in c.get("shapes", []))
                + ")")
            roof = c.get("roofline") or {}
            if roof.get("gadds_per_s"):
                t["measured"] += (f"; {100 * head['gadds_per_s'] / roof['gadds_per_s']:.0f} % of the core's add roofline "
                                  f"{roof['gadds_per_s']:.1f} G/s ({roof['basis']})")
            t["status"] = head["gadds_per_s"] >= TARGET_GADDS
            f = c["per_run_fit_ns"]
            if not t["status"]:
                gb = head.get("weight_gbytes_per_s")
                t["why"] = ((f"at C_out=128 the kernel streams {gb:.0f} GB/s of weights (4 B per addition; the "
                             f"accumulators of the events at one input position stay in registers while the group "
                             f"is added) with this layer's {head['weights_mib']:.2f} MiB of weights and "
                             f"{head['accumulator_mib_per_sample']:.2f} MiB of accumulators in the "
                             f"{R['meta'].get('caches', 'L2')} caches. ") if gb else "")
                t["why"] += (f"An (event, kernel row) run of 3 x C_out additions costs {f['c0_ns_per_run']:.2f} ns + "
                             f"{f['c1_ns_per_add']:.3f} ns per addition (fit over C_out): the fixed part (decoding and "
                             f"grouping the events, the border test, loading and storing the accumulators) weighs most "
                             f"at small C_out: " + ", ".join(
                                 f"{r['gadds_per_s']:.1f} G/s at C_out {r['c_out']}" for r in c["rows"] if r["c_out"] != 128)
                             + ".")
    out.append(t)

    c = C.get("linearity")
    t = {"name": "time per sample vs events (ResNet-19, rates varied)",
         "target": f"within {TARGET_LINEAR * 100:.0f}% of a straight line a + b*events", "status": None,
         "measured": "-", "why": ""}
    if c and c.get("fit_events"):
        f = c["fit_events"]
        rates = [p["firing_rate"] for p in c["points"]]
        t["measured"] = (f"max deviation {_pct(f['max_rel_dev'])} over rates {_pct(min(rates))}-{_pct(max(rates))} "
                         f"(R^2 {f['r2']:.4f}; vs synaptic ops: {_pct(c['fit_synaptic_ops']['max_rel_dev'])})")
        t["status"] = f["max_rel_dev"] <= TARGET_LINEAR
        if not t["status"]:
            pts = c["points"]
            worst = max(range(len(rates)), key=lambda i: f["rel_dev"][i])
            tw = pts[worst]["seconds_per_sample"]["median"]
            t["why"] = (f"largest deviation at rate {_pct(rates[worst])}: {tw * 1e3:.1f} ms against "
                        f"{(f['a_s'] + f['b_s_per_unit'] * pts[worst]['events']) * 1e3:.1f} ms on the line "
                        f"(against synaptic ops the deviation is {_pct(c['fit_synaptic_ops']['max_rel_dev'])})")
            bs = c.get("scatter_by_shape") or {}
            if len(bs) == 2:
                (l1, v1), (l2, v2) = bs.items()
                g = []
                for v in (v1, v2):
                    ops = sum(r["synaptic_ops"] for r in v["rows"])
                    sec = sum(r["ms_per_sample"] for r in v["rows"]) / 1e3
                    g.append(ops / sec / 1e9 if sec else float("nan"))
                t["why"] += (f"; and the conv scatter itself adds at {g[0]:.1f} G/s at rate {_pct(v1['firing_rate'])} but "
                             f"{g[1]:.1f} G/s at {_pct(v2['firing_rate'])} (per layer in section 4)")
                k = C.get("kernels")
                r1 = next((r for r in v1["rows"] if (r["c_in"], r["c_out"], r["map"], r["taps_per_channel"]) == (128, 128, 32, 9)), None)
                kd = [r for r in (k or {}).get("densities", []) if r["c_out"] == 128 and r["c_in"] == 128]
                if r1 and kd:
                    lo = min(kd, key=lambda r: r["density"])
                    t["why"] += (f"; the 128->128 32x32 layers run at {r1['gadds_per_s']:.1f} G/s there, against "
                                 f"{lo['gadds_per_s']:.1f} G/s for the same shape at {_pct(lo['density'], 0)} events in case 3, "
                                 f"where one layer's weights and accumulators stay in cache between calls")
            t["why"] += (f"; the intercept ({f['a_s'] * 1e3:.1f} ms/sample) is the work that does not depend on the "
                         f"events: every neuron's update and the vector pass that queues the spikes, each step.")
    out.append(t)

    c = C.get("startup")
    t = {"name": "`evsim run` on the shipped model, one sample, warm JIT cache", "target": f"< {TARGET_START_S:g} s wall",
         "status": None, "measured": "-", "why": ""}
    if c:
        t["measured"] = f"{c['warm_s']['median']:.2f} s median (cold cache: {c['cold_s']['median']:.2f} s)"
        t["status"] = c["warm_s"]["median"] < TARGET_START_S
        if not t["status"]:
            b = c["breakdown_warm"]
            t["why"] = (f"Python + imports {b['python_start_plus_imports_s']:.2f} s, compile {b['compile_network_s']:.2f} s, "
                        f"first simulation incl. loading the cached kernels {b['simulate_s_incl_jit_cache_load']:.2f} s.")
    out.append(t)

    c = C.get("scaling")
    t = {"name": "1 -> 2 thread speed-up of evsim, large batch", "target": f">= {TARGET_SPEEDUP:g}x",
         "status": None, "measured": "-", "why": ""}
    if c and "threads" in c:
        parts, oks = [], []
        cases = _scaling_cases(c)
        for case in cases:
            s = c[case]["evsim"]["speedup"]
            parts.append(f"{c[case].get('name', case)} batch {c[case]['batch']}: {s:.2f}x")
            oks.append(s >= TARGET_SPEEDUP)
        t["measured"] = "; ".join(parts)
        t["status"] = all(oks) if oks else None
        if oks and not all(oks):
            la = R["meta"].get("load_average_start", [0])[0]
            t["why"] = ("the fused driver runs a whole batch in one call, split by sample over the threads (one "
                        "group of samples per thread, nothing shared, no per-layer synchronisation). ")
            k2 = (C.get("kernels") or {}).get("two_threads")
            if k2:
                t["why"] += (f"The conv kernel alone, one sample per thread on independent data (case 3), gets "
                             f"{k2['speedup_vs_1_thread']:.2f}x from the second thread: that is what this machine's "
                             f"two vCPUs give this memory-bound work. ")
            t["why"] += ("PyTorch's speed-up on the same runs (folded runner): " + "; ".join(
                f"{c[case].get('name', case)} {c[case]['torch_folded']['speedup']:.2f}x" for case in cases
                if "torch_folded" in c[case])
                + f". Load average at start {la:.2f} on {R['meta']['cores']} cores"
                + (f"; other busy processes: {', '.join(R['meta']['busy_processes'])}" if R["meta"].get("busy_processes") else "")
                + ".")
    out.append(t)
    return out


# ------------------------------------------------------------------ markdown
def _throughput_table(cmp, threads, batches):
    lines = ["| threads | batch | " + " | ".join(IMPL_LABEL[k] for k in IMPLS) + " | evsim / fastest PyTorch |",
             "|---|---|" + "---|" * len(IMPLS) + "---|"]
    for th in threads:
        t = _k(cmp["table"], th)
        for bs in batches:
            row = _k(t, bs)
            fastest = max(row[k]["median"] for k in IMPLS if k != "evsim")
            lines.append(f"| {th} | {bs} | " + " | ".join(fmt_stat(row[k]) for k in IMPLS)
                         + f" | {row['evsim']['median'] / fastest:.2f}x |")
    lines.append("")
    lines.append("Best batch per side (samples/s, median [min-max]):")
    lines.append("")
    lines.append("| threads | " + " | ".join(IMPL_LABEL[k] for k in IMPLS) + " |")
    lines.append("|---|" + "---|" * len(IMPLS))
    for th in threads:
        b = _k(cmp["best"], th)
        lines.append(f"| {th} | " + " | ".join(f"{fmt_stat(b[k])} @ batch {b[k]['batch']}" for k in IMPLS) + " |")
    return lines


def _ratios_lines(rat, threads):
    lines = ["| threads | evsim / PyTorch model, batch 1 | evsim / PyTorch folded, batch 1 | "
             "evsim / PyTorch model, best vs best | evsim / PyTorch folded, best vs best |", "|---|---|---|---|---|"]
    for th in threads:
        r = _k(rat, th)
        lines.append(f"| {th} | {r.get('batch1_vs_torch_model', float('nan')):.2f}x | "
                     f"{r.get('batch1_vs_torch_folded', float('nan')):.2f}x | {r['best_vs_torch_model']:.2f}x | "
                     f"{r['best_vs_torch_folded']:.2f}x |")
    return lines


def _explain_lines(c, threads):
    a = c["activity"]
    if "firing_rate" not in a:
        return []
    lines = [f"Work per sample (measured by the engine): firing rate {_pct(a['firing_rate'], 2)}, "
             f"{a['spikes_per_sample'] / 1e6:.3f} M events, {a['synaptic_ops_per_sample'] / 1e6:.2f} M synaptic additions "
             f"+ {a['macs_per_sample'] / 1e6:.2f} M MACs (direct input); a dense run of the same folded network: "
             f"{a['dense_work_per_sample'] / 1e6:.2f} M MACs (T steps, direct-input conv once).", "",
             "| threads | evsim G additions/s | PyTorch folded G MAC/s | additions / dense MACs | speed per op (evsim/PyTorch) "
             "| predicted ratio | firing rate for 2x (estimate) |", "|---|---|---|---|---|---|---|"]
    for th in threads:
        e = _k(c["explain"], th)
        lines.append(f"| {th} | {e['evsim_gadds_per_s']:.2f} | {e['torch_folded_gmacs_per_s']:.1f} | "
                     f"{_pct(e['work_ratio_adds_over_dense_macs'])} | {e['per_op_speed_ratio']:.3f} | "
                     f"{e['predicted_ratio_vs_torch_folded']:.2f}x | {_pct(e['firing_rate_needed_for_2x_estimate'])} |")
    return lines



def _rs(r, d=1):
    """'median [min-max]' over rounds of a combined row."""
    if not r:
        return "-"
    f = f"{{:.{d}f}}"
    return f"{f.format(r['median'])} [{f.format(r['min'])}-{f.format(r['max'])}]"


def _ratio(x):
    if not x:
        return "-"
    return f"**{x['ratio']:.2f}x** [{x['min']:.2f}-{x['max']:.2f}]"


def _comparison_lines(cmp: dict, threads, nets: dict) -> list[str]:
    """The separate-process comparison: headline ratios, evsim table, PyTorch's search, load, checks."""
    rows, base = cmp["rows"], cmp["baselines"]
    batches = cmp["batches"]
    L = [f"Each side in processes of its own (one per side and thread count, `bench/worker.py`), "
         f"{cmp['rounds']} interleaved round(s) (evsim first in odd rounds, PyTorch first in even ones), each "
         "configuration timed in every round; a figure is the **median over rounds of the per-round medians "
         "[range of the per-round medians]**, samples/s. Ratios are taken round by round (same round) and shown "
         "as the ratio of the medians [range over rounds]. The baseline at N threads is PyTorch's best "
         "configuration using at most N threads.", ""]
    L += ["| threads | network | evsim, best batch | PyTorch's best (baseline) | evsim / baseline | "
          "PyTorch's best eager | evsim / best eager | evsim, batch 1 | PyTorch's best at batch 1 | "
          "evsim / it, batch 1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for th in threads:
        b = _k(base, th)
        for net, title in nets.items():
            e = b["evsim"].get(net)
            if not e:
                continue
            tb, te, t1 = b.get("torch_best"), b.get("torch_best_eager"), b.get("torch_best_batch1")
            L.append(f"| {th} | {title} | {_rs(e['best'])} @ batch {e['best']['batch']} | "
                     f"{_rs(tb)} ({describe(tb) if tb else '-'}) | {_ratio(e.get('vs_torch_best'))} | "
                     f"{_rs(te)} ({describe(te) if te else '-'}) | {_ratio(e.get('vs_torch_best_eager'))} | "
                     f"{_rs(e.get('batch1'))} | {_rs(t1)} ({describe(t1) if t1 else '-'}) | "
                     f"{_ratio(e.get('batch1_vs_torch_best_batch1'))} |")
    # evsim per batch
    L += ["", "evsim float32, samples/s per batch size:", "",
          "| threads | network | " + " | ".join(f"batch {bs}" for bs in batches) + " |",
          "|---|---|" + "---|" * len(batches)]
    for th in threads:
        for net, title in nets.items():
            cells = []
            for bs in batches:
                r = next((r for r in rows if r["side"] == "evsim" and r["network"] == net and r["threads"] == th
                          and r["batch"] == bs), None)
                cells.append(_rs(r))
            L.append(f"| {th} | {title} | " + " | ".join(cells) + " |")
    # PyTorch search
    warm = cmp.get("warmup", {})
    L += ["", f"PyTorch, every configuration searched ({cmp['configs_searched']} per thread count; compiled "
              f"= `torch.compile(dynamic=False)` (inductor) per batch size, compiled at batch "
              f"{', '.join(map(str, cmp['compile_batches']))}), samples/s; the compile column is the warm-up "
              "of each compiled graph (first call minus second call), excluded from every timing:", "",
          "| threads | implementation | format | mode | " + " | ".join(f"batch {bs}" for bs in batches)
          + " | compile warm-up s |", "|---|---|---|---|" + "---|" * len(batches) + "---|"]
    keys = sorted({(r["threads"], r["impl"], r["format"], r["mode"]) for r in rows if r["side"] == "torch"},
                  key=lambda k: (k[0], k[1], k[2] != "contiguous", k[3] != "eager", k[3]))
    for th, impl, fmt, mode in keys:
        cells = []
        for bs in batches:
            r = next((r for r in rows if r["side"] == "torch" and (r["threads"], r["impl"], r["format"], r["mode"], r["batch"])
                      == (th, impl, fmt, mode, bs)), None)
            best = _k(base, th).get("torch_best")
            mark = "**" if r and best and all(r[k] == best[k] for k in ("threads", "impl", "format", "mode", "batch")) else ""
            cells.append(f"{mark}{_rs(r)}{mark}" if r else "-")
        w = (warm.get(str(th)) or warm.get(th) or {}).get("per_config", {})
        ws = [v for k, v in w.items() if k.startswith(f"{impl}|{fmt}|{mode}@")]
        L.append(f"| {th} | {IMPL_SHORT.get(impl, impl)} | {fmt} | {mode} | " + " | ".join(cells)
                 + f" | {', '.join(f'{v:.1f}' for v in ws) if ws else '-'} |")
    errs = {th: v.get("errors") for th, v in warm.items() if v.get("errors")}
    if errs:
        L += ["", "Configurations that failed to build or compile: " + "; ".join(
            f"{th} thr: " + ", ".join(f"{k} ({e})" for k, e in v.items()) for th, v in errs.items())]
    tot = [v["total_s"] for v in warm.values()]
    if tot:
        L += ["", f"Compile warm-up in all: {sum(tot):.0f} s over the thread counts; the workers were set up "
                  f"concurrently (all sides and thread counts at once, before any timing: "
                  f"{cmp.get('setup_wall_s') or float('nan'):.0f} s wall), so these are wall times under that "
                  "load. TorchInductor's on-disk cache makes a second run of the benchmark compile faster."]
    # load during the timing
    ld = [x for x in cmp.get("load", []) if x.get("other_cores") == x.get("other_cores")]
    if ld:
        oc = [x["other_cores"] for x in ld]
        L += ["", f"Load while the sides were timing (from `/proc/stat`, CPU time of everything but the worker being "
                  f"timed, in cores): mean {sum(oc) / len(oc):.2f}, max {max(oc):.2f}; 1-minute load average "
                  f"{min(x['loadavg_1min_before'] for x in ld):.2f}-{max(x['loadavg_1min_after'] for x in ld):.2f}."]
    # environment checks
    chk = []
    for k, v in sorted(cmp.get("setup", {}).items()):
        side, th = k.split("/")
        info = v.get("info", {})
        ch = v.get("env_changed_by_imports") or {}
        ev_ch = info.get("env_changed_by_evsim_imports", ch)
        if side == "evsim":
            chk.append(f"evsim {th} thr: torch imported {info.get('torch_imported')}, threading layer "
                       f"{info.get('numba_threading_layer')}, environment variables changed by importing evsim: "
                       f"{sorted(ev_ch) or 'none'}")
        else:
            own = info.get("env_changed_by_torch_itself")
            chk.append(f"PyTorch {th} thr: {info.get('torch_threads')} intra-op / {info.get('torch_interop_threads')} "
                       f"inter-op threads, a Numba thread pool loaded {info.get('numba_pool_loaded')}, environment "
                       f"variables changed by importing evsim (for the models and the folded network): "
                       f"{sorted(ev_ch) or 'none'}" + (f" (PyTorch's inductor sets {', '.join(own)} itself)" if own else ""))
    if chk:
        L += ["", "Process checks: " + "; ".join(chk) + "."]
    return L


def _resnet19_lines(c: dict, cfg: dict, th) -> list[str]:
    L = ["", "## 2. ResNet-19, full width, random inputs at calibrated firing rates", "",
         "`build_model('resnet19', width=128, in_channels=3, image_size=32, timesteps=4)`, random init (seed "
         f"{cfg['seed']}), calibrated twice (`bench/synthetic.py: calibrate_layers`): every BatchNorm set from the input "
         "it receives on the calibration samples (uniform in [0, 1]) to output std "
         f"{cfg['r19_bn_std']:g}, and the shift (BN bias) feeding each spiking layer bisected, layer after layer, for "
         "that layer's target rate. **trained**: each layer at the rate of the shipped model's layer at the same place "
         f"(stem to stem, a block's sn1 / sn2 to the same neuron of the shipped model's block in that stage; rates "
         f"from {c.get('trained_rates_source', '-')}); **sparse**: every layer at {_pct(cfg['r19_target_rate'])}. "
         "PyTorch's dense run costs the same at any rate; it is timed once, on the "
         f"{c.get('torch_timed_on', 'sparse')} setting's model and folded network, and is the baseline of both.", "",
         "| layer | target (trained) | evsim (trained) | target (sparse) | evsim (sparse) |", "|---|---|---|---|---|"]
    st = c["settings"]
    tr, sp = st.get("trained"), st.get("sparse")
    names = [l["name"] for l in (tr or sp)["activity"]["layers"]]

    def rate(s_, n):
        return next((l["rate"] for l in s_["activity"]["layers"] if l["name"] == n), float("nan")) if s_ else float("nan")

    def tgt(s_, n):
        if not s_:
            return float("nan")
        t = s_["calibration"]["target"]
        return t.get(n, float("nan")) if isinstance(t, dict) else t
    for n in names:
        L.append(f"| {n} | {_pct(tgt(tr, n))} | {_pct(rate(tr, n))} | {_pct(tgt(sp, n))} | {_pct(rate(sp, n))} |")
    L.append("| overall | | " + (_pct(tr["activity"]["firing_rate"]) if tr else "-") + " | | "
             + (_pct(sp["activity"]["firing_rate"]) if sp else "-") + " |")
    for label, s_ in st.items():
        cal = s_["calibration"]
        L += ["", f"{label}: {cal['passes']} partial forward passes on {cal['samples']} samples, {cal['seconds']:.1f} s; "
                  f"compiled network {s_['compiled_nbytes'] / 2**20:.1f} MiB; same answers on {s_['agreement']['samples']} "
                  f"samples: evsim vs PyTorch folded {_pct(s_['agreement']['agreement_evsim_torch_folded'])}, max |output "
                  f"difference| {s_['agreement']['max_abs_output_diff_evsim_torch_folded']:.3g} (outputs up to "
                  f"{s_['agreement']['output_scale']:.3g})."]
    L += [""]
    L += _comparison_lines(c["comparison"], th, {k: f"{k} rates" for k in st})
    for label, s_ in st.items():
        L += ["", f"**{label} rates.** "]
        L += _explain_lines(s_, [t for t in th if t in s_["explain"] or str(t) in s_["explain"]])
    return L


def write_markdown(R: dict, path) -> str:
    meta, cfg, C = R["meta"], R["config"], R["cases"]
    th = cfg["threads"]
    L = ["# evsim benchmark results", ""]
    L += [f"Command: `{R['command']}`" + (" (quick mode: fewer repetitions and batch sizes)" if cfg["quick"] else ""), ""]
    ls = meta.get("lscpu") or {}
    ids = meta.get("cpu_ids") or {}
    L += ["| | |", "|---|---|",
          f"| machine | {meta['cpu_model']} (caches per core: {meta.get('caches', '-')}"
          + (f"; L3 {ls['L3 cache']}" if ls.get("L3 cache") else "") + (f"; {ls['Hypervisor vendor']} guest" if ls.get(
              "Hypervisor vendor") else "") + ") |",
          f"| microarchitecture | {meta.get('microarchitecture', '-')}"
          + (f" (vendor {ids.get('vendor')}, family {ids.get('family')}, model {ids.get('model')}, stepping "
             f"{ids.get('stepping')})" if ids else "") + " |",
          f"| vector ISA flags | {meta['simd']} |",
          f"| cores | {meta['cores']} ({meta['cores_usable']} usable"
          + (f"; {ls.get('Thread(s) per core')} thread(s) per core, {ls.get('Core(s) per socket')} core(s) per socket, "
             f"{ls.get('Socket(s)')} socket(s)" if ls else "") + f"); threads compared: {', '.join(map(str, th))} |",
          f"| date | {meta['date']} |",
          f"| versions | Python {meta['python']}, numba {meta['numba']} (threading layer {meta.get('numba_threading_layer')}), "
          f"torch {meta['torch']}, numpy {meta['numpy']}, scipy {meta['scipy']} |"]
    if "env_torch_side" in meta:
        ev = ", ".join(f"{k}={v}" for k, v in meta["env_evsim_side"].items() if v is not None) or "none"
        tv = ", ".join(f"{k}={v}" for k, v in meta["env_torch_side"].items() if v is not None) or "none set"
        L += [f"| environment, PyTorch processes | the benchmark's own, untouched ({tv}) |",
              f"| environment, evsim processes | the same plus evsim's own setting: {ev} (what the `evsim` command "
              "sets for itself; a value already in the environment wins) |",
              f"| this (parent) process | OPENBLAS_NUM_THREADS={meta.get('OPENBLAS_NUM_THREADS')} for its own NumPy "
              "bookkeeping; it times nothing of the comparison |"]
    else:
        L += [f"| OMP_WAIT_POLICY | {meta['OMP_WAIT_POLICY']} |",
              f"| OPENBLAS_NUM_THREADS | {meta.get('OPENBLAS_NUM_THREADS')} (NumPy's BLAS, used by neither timed side) |"]
    L += [f"| load average (1 min) | {meta['load_average_start'][0]:.2f} at start, "
          f"{meta.get('load_average_end', [float('nan')])[0]:.2f} at end"
          + (f" (5 min: {meta['load_average_start'][1]:.2f} / {meta.get('load_average_end', [0, float('nan')])[1]:.2f})"
             if len(meta['load_average_start']) > 1 else "") + " |",
          f"| wall time of the suite | {meta.get('suite_s', float('nan')):.0f} s |"]
    if meta.get("model_dir"):
        L.insert(len(L) - 1, f"| shipped model directory | `{meta['model_dir']}` |")
    for n in meta.get("model_notes", []):
        L += ["", f"Note: {n}"]
    if meta.get("busy_processes"):
        L += ["", f"**Warning: the machine was busy** while this ran ({', '.join(meta['busy_processes'])}); "
                  "timings, above all the 2-thread ones, are noisy."]
    if "env_torch_side" in meta:
        L += ["", "Cases 1 and 2 time evsim and PyTorch **each in processes of its own** (one per side and thread "
                  "count, the environment as above), on the same inputs, in interleaved rounds; PyTorch is searched "
                  "over its configurations (trained model or folded runner, contiguous or channels-last, eager or "
                  "`torch.compile`, batch size, thread count) and its **best configuration with at most N threads is "
                  "the baseline of the N-thread ratios**; the best eager figures stay beside it. Other tables: "
                  "samples/s or times as median [min-max] over repetitions (every repetition in `results.json`).", ""]
        modes = cfg.get("torch_modes", [])
        L += [f"PyTorch modes searched: {', '.join(modes)}." + (
            "" if any(m.startswith("max-autotune") for m in modes) else
            " `torch.compile(mode=\"max-autotune-no-cudagraphs\")` is not searched by default (add it with "
            "`--torch-modes eager,compile,max-autotune-no-cudagraphs`): tried on the ResNet-8 models while this "
            "benchmark was written, it took longer to compile and was not faster than the default mode."), ""]
    else:
        L += ["", "Throughputs are samples/s as **median [min-max] over the repetitions** (quartiles and every repetition "
                  "are in `results.json`). evsim and PyTorch run in the same process, on the same inputs, with the same "
                  "number of threads (`numba.set_num_threads` = `torch.set_num_threads`), their repetitions interleaved.", ""]

    L += ["## Targets", "", "| target | goal | measured | status |", "|---|---|---|---|"]
    for t in R["targets"]:
        L.append(f"| {t['name']} | {t['target']} | {t['measured']} | {_status(t['status'])} |")
    misses = [t for t in R["targets"] if t["status"] is False and t["why"]]
    if misses:
        L += ["", "Where a target is missed:", ""]
        for t in misses:
            L.append(f"- **{t['name']}**: {t['why']}")
    if R.get("errors"):
        L += ["", "Cases that failed: " + "; ".join(f"{k}: {v}" for k, v in R["errors"].items())]

    for key in [k for k in C if k.split(":")[0] == "shipped"]:
        c = C[key]
        a = c["activity"]
        L += ["", f"## 1. Shipped model `{c['name']}` on Fashion-MNIST test images", "",
              f"`{c['weights']}` (checkpoint `{c['checkpoint']}`): {c['architecture'].get('arch', '?')} width "
              f"{c['architecture'].get('width', '?')}, T={c['timesteps']}, input {tuple(c['input_shape'])}; compiled "
              f"network {c['compiled_nbytes'] / 2**20:.2f} MiB. Firing rate {_pct(a['firing_rate'], 2)} "
              "(per layer: " + ", ".join(f"{l['name']} {_pct(l['rate'])}" for l in a["layers"]) + ")."]
        L += ["", "PyTorch model = the trained, unfolded network (`load_checkpoint`, eval, `inference_mode`); PyTorch folded = "
                  "the folded network evsim runs, executed densely by `evsim/bridge/dense.py` (each layer for all T "
                  "steps at once, direct-input conv once).", ""]
        if "rows" in c["comparison"]:
            L += _comparison_lines(c["comparison"], th, {"evsim": "evsim float32"})
        else:     # results.json of the earlier, single-process benchmark
            L += _throughput_table(c["comparison"], th, cfg["shipped_batches"])
            L += ["", "Ratios (evsim throughput / PyTorch throughput; > 1 means evsim is faster):", ""]
            L += _ratios_lines(c["ratios"], th)
        g = c["agreement"]
        L += ["", f"Same answers: on {g['samples']} test images, accuracy evsim {_pct(g['accuracy_evsim'], 2)}, PyTorch model "
                  f"{_pct(g['accuracy_torch_model'], 2)}, PyTorch folded {_pct(g['accuracy_torch_folded'], 2)}; "
                  f"prediction agreement evsim vs model {_pct(g['agreement_evsim_torch_model'], 2)}, vs folded "
                  f"{_pct(g['agreement_evsim_torch_folded'], 2)} (float32: spikes at the threshold may flip)."]
        v = g.get("folded_runner_vs_run_folded_torch")
        if v:
            L += [f"The dense runner in float32 checked against itself in float64 (`evsim.bridge.dense.run_folded_torch`) on "
                  f"{v['samples']} images: max |output difference| {v['max_abs_output_diff']:.2g}, predictions "
                  f"{_pct(v['prediction_agreement'])} equal."]
        L += [""]
        L += _explain_lines(c, [t for t in th if t in c["explain"] or str(t) in c["explain"]])
        p = c["profile_1thread"]
        L += ["", f"Where evsim's time goes (1 thread, batch {p['batch']}, {p['samples']} samples, "
                  f"{1e3 * p['total_s'] / p['samples']:.2f} ms/sample; the engine's profiling run: the driver reads "
                  "the CPU's clock between its steps, same code path, summed over the layers of each kind):", "",
              "| part | share | ms/sample | layers |", "|---|---|---|---|"]
        for k, v in sorted(p["share"].items(), key=lambda kv: -kv[1]):
            L.append(f"| {k} | {_pct(v)} | {p['ms_per_sample'][k]:.3f} | {p.get('layers', {}).get(k, '-')} |")
        cl = c.get("conv_layers")
        if cl:
            L += ["", "Its conv layers (1 thread, one batch of 64, the engine's profiling run, median of 5; events and "
                      "occupied input positions from the recorded spikes, summed over the T steps; the last column "
                      "applies case 3's per-position fit where it measured the shape):", "",
                  "| layer | C_in -> C_out, map, stride | events / sample | occupied positions / sample | events per "
                  "position | ms / sample | G additions/s | fixed cost of positions (case 3 fit) |",
                  "|---|---|---|---|---|---|---|---|"]
            for r in cl:
                f = _position_fit(C, r["c_out"]) if (r["stride"] == 1 and r["kernel"] == 3
                                                      and r["c_in"] == r["c_out"]) else None
                share = "-"
                if f:
                    fx = r["positions_per_sample"] * f["fixed_ns_per_position"]
                    share = _pct(fx / (fx + r["events_per_sample"] * f["ns_per_event"]), 0)
                L.append(f"| {r['name']} | {r['c_in']} -> {r['c_out']}, {r['map_in']}x{r['map_in']}, {r['stride']} | "
                         f"{r['events_per_sample']:.0f} | {r['positions_per_sample']:.0f} | {r['events_per_position']:.2f} | "
                         f"{r['ms_per_sample']:.3f} | {r['gadds_per_s']:.2f} | {share} |")

    c = C.get("resnet19")
    if c and "settings" in c:
        L += _resnet19_lines(c, cfg, th)
    elif c:
        cal, a = c["calibration"], c["activity"]
        L += ["", "## 2. ResNet-19, full width, random inputs at a calibrated firing rate", "",
              "`build_model('resnet19', width=128, in_channels=3, image_size=32, timesteps=4)`, random init (seed "
              f"{cfg['seed']}); every BatchNorm set from the input it receives on {cal['samples']} calibration samples "
              f"(uniform in [0, 1]) to output std {cal['std']:g}, and the shift (BN bias) of the BatchNorms feeding "
              f"each spiking layer bisected, layer after layer, so that **every layer fires "
              f"{_pct(cfg['r19_target_rate'])}** (`bench/synthetic.py: calibrate_layers`; {cal['passes']} partial "
              f"forward passes, {cal['seconds']:.1f} s; overall {_pct(cal['rate'], 2)} on the calibration samples). "
              f"Folded with `fold_model` in {c['fold_s']:.1f} s; compiled network {c['compiled_nbytes'] / 2**20:.1f} MiB.", "",
              f"Measured by evsim on the benchmark inputs: overall firing rate **{_pct(a['firing_rate'], 2)}**.", "",
              "| layer | neurons | rate (evsim, benchmark inputs) | rate (PyTorch, calibration) |", "|---|---|---|---|"]
        for l in a["layers"]:
            L.append(f"| {l['name']} | {l['neurons']} | {_pct(l['rate'], 2)} | {_pct(cal['layer_rates'].get(l['name'], float('nan')), 2)} |")
        L += [""]
        L += _throughput_table(c["comparison"], th, cfg["r19_batches"])
        L += ["", "Ratios:", ""]
        L += _ratios_lines(c["ratios"], th)
        g = c["agreement"]
        L += ["", f"Same answers on {g['samples']} samples: evsim vs PyTorch folded {_pct(g['agreement_evsim_torch_folded'])}, "
                  f"vs PyTorch model {_pct(g['agreement_evsim_torch_model'])}; max |output difference| "
                  f"{g['max_abs_output_diff_evsim_torch_folded']:.3g} (outputs up to {g['output_scale']:.3g}).", ""]
        L += _explain_lines(c, th)

    c = C.get("kernels")
    if c:
        L += ["", "## 3. Synaptic additions per second (the conv scatter alone)", "",
              "`evsim.kernels.scatter_conv_rows` (the kernel the engine runs for convs) called directly on one layer: "
              "3x3, stride 1, pad 1, float32, all weights non-zero, events in the order the engine emits them (memory "
              "order; channel by channel where the weights exceed the compiler's 1 MiB threshold), random signs, "
              f"{c['rows'][0]['samples']} sample(s) per call (2 for the 2-thread row), the same call repeated. "
              "G additions/s = synaptic ops counted by the kernel / wall time; weight GB/s = 4 bytes per addition "
              "(each addition reads one weight; the accumulators of the events at one input position are read and "
              "written once for the whole group).", "",
              "| C_in -> C_out | map | events | threads | weights MiB | event order | events/sample | additions/call | "
              "ms/call median [min-max] | G additions/s median [min-max] | weight GB/s | ns per event |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = list(c["rows"]) + list(c.get("densities", [])) + list(c.get("shapes", [])) \
            + ([c["two_threads"]] if c.get("two_threads") else [])
        for r in rows:
            L.append(f"| {r['c_in']} -> {r['c_out']} | {r['map']}x{r['map']} | {_pct(r['density'], 0)} | {r['threads']} | "
                     f"{r['weights_mib']:.2f} | {r['event_order']} | {r['events_per_sample']:.0f} | "
                     f"{r['syn_ops_per_call'] / 1e6:.2f} M | "
                     f"{fmt_stat(r['seconds'], 3, 1e3)} | {r['gadds_per_s']:.2f} [{r['gadds_per_s_min']:.2f}-{r['gadds_per_s_max']:.2f}] "
                     f"| {r.get('weight_gbytes_per_s', float('nan')):.0f} | {r['ns_per_event']:.1f} |")
        head = next((r for r in c["rows"] if r["c_out"] == 128 and r.get("huge_page_share")), None)
        if head and None not in head["huge_page_share"].values():
            hp = head["huge_page_share"]
            L += ["", f"Page placement of the 128 -> 128 call (`/proc/self/smaps`): weights {100 * hp['weights']:.0f} %, "
                      f"accumulators {100 * hp['accumulators']:.0f} % in transparent huge pages (`evsim.memory`; "
                      "arrays under 256 KiB, as for C_out 16 and 32, are ordinary pages by design)."]
        f = c["per_run_fit_ns"]
        L += ["", f"Fit over C_out (C_in 128, 32x32, 10%): time per (event, kernel row) run of 3 x C_out additions = "
                  f"{f['c0_ns_per_run']:.2f} ns + {f['c1_ns_per_add']:.4f} ns per addition."]
        if c.get("two_threads"):
            L += [f"Two threads, {c['two_threads']['samples']} samples per call: {c['two_threads']['speedup_vs_1_thread']:.2f}x "
                  "the one-thread rate on the same call."]
        d = c["torch_dense_conv"]
        L += [f"For comparison, PyTorch's dense conv of the 128 -> 128 layer (1 thread, batch 1): {d['gmacs_per_s']:.1f} G MAC/s; "
              f"the event-driven layer is cheaper than the dense one below ~{_pct(c['break_even_density'])} input density."]
        pp = c.get("per_position")
        if pp:
            gs = [p["events_per_position"] for p in pp[0]["points"]]
            L += ["", "What an input position and an event cost (`scatter_per_position`, the shipped ResNet-8's 3x3 C -> C "
                      f"shapes, 1 thread, {pp[0]['samples']} samples per call): every input position carries g events "
                      "(distinct random channels, random signs, memory order), and a least-squares line through the time "
                      "per position separates the fixed cost of a position (decoding it and its kernel rows, loading and "
                      "storing the accumulators of its output runs, once for all its events) from the cost of each event "
                      "(one weight load and one addition per 64-byte vector of its runs):", "",
                  "| C -> C | map | fixed ns per position | ns per event | " + " | ".join(f"ns per position, g = {g}" for g in gs)
                  + " |", "|---|---|---|---|" + "---|" * len(gs)]
            for r in pp:
                by = {p["events_per_position"]: p["ns_per_position"] for p in r["points"]}
                L.append(f"| {r['c_in']} -> {r['c_out']} | {r['map']}x{r['map']} | {r['fixed_ns_per_position']:.1f} | "
                         f"{r['ns_per_event']:.2f} | " + " | ".join(f"{by[g]:.1f}" if g in by else "-" for g in gs) + " |")

    c = C.get("linearity")
    if c:
        L += ["", "## 4. Time per sample against the number of events", "",
              f"{c['network']}; 1 thread, batch {c['batch']}, {c['samples']} random samples, median of the repetitions; "
              "all rates calibrated first, then timed together with their repetitions interleaved.", "",
              "| target rate per layer | firing rate (layers min-max) | events/sample | synaptic ops/sample | "
              "ms/sample median [min-max] | G synaptic ops/s (whole run) | deviation from line (events) | "
              "evsim / PyTorch folded |", "|---|---|---|---|---|---|---|---|"]
        fe = c.get("fit_events")
        for i, p in enumerate(c["points"]):
            dev = _pct(fe["rel_dev"][i]) if fe else "-"
            L.append(f"| {_pct(p['target'], 0)} | {_pct(p['firing_rate'], 2)} ({_pct(p['layer_rate_min'])}-"
                     f"{_pct(p['layer_rate_max'])}) | {p['events'] / 1e6:.3f} M | "
                     f"{p['synaptic_ops'] / 1e6:.1f} M | {fmt_stat(p['seconds_per_sample'], 1, 1e3)} | "
                     f"{p['synaptic_ops'] / p['seconds_per_sample']['median'] / 1e9:.2f} | {dev} | "
                     f"{p.get('speed_vs_torch_folded', float('nan')):.2f}x |")
        ts = c.get("torch_folded_seconds_per_sample")
        if ts:
            L += ["", f"PyTorch's dense run of the folded network does not depend on the firing rate: "
                      f"{ts['median'] * 1e3:.1f} ms/sample (1 thread, batch {c['batch']}, median; eager, contiguous, "
                      "timed in this process: a rough reference for the last column, not the separate-process "
                      "baseline of sections 1 and 2)."]
        if fe:
            fo = c["fit_synaptic_ops"]
            L += ["", f"Least squares: time = {fe['a_s'] * 1e3:.2f} ms + {fe['b_s_per_unit'] * 1e9:.2f} ns x events "
                      f"(R^2 {fe['r2']:.4f}, max deviation {_pct(fe['max_rel_dev'])}); against synaptic ops: "
                      f"{fo['a_s'] * 1e3:.2f} ms + {fo['b_s_per_unit'] * 1e12:.1f} ps x ops (R^2 {fo['r2']:.4f}, "
                      f"max deviation {_pct(fo['max_rel_dev'])}, i.e. {1e-9 / fo['b_s_per_unit']:.2f} G ops/s marginal)."]
        bs = c.get("scatter_by_shape") or {}
        if bs:
            L += ["", "The conv scatter per layer shape at the lowest and the highest rate (1 thread, wall time of the "
                      "kernel calls, median of 3 runs):", "",
                  "| layer shape | weights MiB | " + " | ".join(f"{lab} ({_pct(v['firing_rate'])}): ms/sample, G additions/s"
                                                             for lab, v in bs.items()) + " |",
                  "|---|---|" + "---|" * len(bs)]
            keyf = lambda r: (r["c_in"], r["c_out"], r["map"], r["stride"], r["taps_per_channel"])
            shapes = sorted({keyf(r) for v in bs.values() for r in v["rows"]})
            for sh in shapes:
                cells = []
                w = "-"
                for v in bs.values():
                    r = next((r for r in v["rows"] if keyf(r) == sh), None)
                    if r is None:
                        cells.append("-")
                        continue
                    w = f"{r['weights_mib']:.2f}"
                    cells.append(f"{r['ms_per_sample']:.1f} ms, {r['gadds_per_s']:.2f}")
                k_ = "3x3" if sh[4] == 9 else ("1x1" if sh[4] == 1 else f"{sh[4]} taps")
                L.append(f"| {sh[0]} -> {sh[1]}, {k_}, stride {sh[3]}, out {sh[2]}x{sh[2]} | {w} | " + " | ".join(cells) + " |")
            for lab, v in bs.items():
                tot_ops = sum(r["synaptic_ops"] for r in v["rows"])
                tot_s = sum(r["ms_per_sample"] for r in v["rows"]) / 1e3
                v["overall_gadds"] = tot_ops / tot_s / 1e9 if tot_s else 0.0
            L += ["", "All conv scatters together: " + ", ".join(
                f"{v['overall_gadds']:.2f} G additions/s at {_pct(v['firing_rate'])}" for v in bs.values()) + "."]
        k = c["consistency"]
        L += [f"Check of the calibrated network at target {_pct(k['target'], 0)}: PyTorch fires "
              f"{_pct(k['torch_rate'], 2)}, evsim (folded) {_pct(k['evsim_rate'], 2)} on the same sample."]

    c = C.get("memory")
    if c:
        L += ["", "## 5. Memory: compiled network and peak of a run, kernel vs explicit CSR (shipped model)", "",
              "Each row is a fresh process (`bench/memory_probe.py`): the compiled connectivity "
              "(`CompiledNetwork.nbytes`), the tracemalloc peak of the NumPy arrays a run allocates (state, queues, "
              "counters, the direct-input current), and the growth of the process's peak RSS during the run.", "",
              "| conv mode | batch | compiled MiB | compile s | compile peak, tracemalloc MiB | run s | run peak, tracemalloc MiB "
              "| RSS before run MiB | peak RSS during run MiB | growth MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in c["shipped"]:
            if "error" in r:
                L.append(f"| {r['conv_mode']} | {r['batch']} | error: {r['error']} | | | | | | | |")
                continue
            L.append(f"| {r['conv_mode']} | {r['batch']} | {r['compiled_nbytes'] / 2**20:.2f} | {r['compile_s']:.2f} | "
                     f"{r['compile_tracemalloc_peak_mib']:.1f} | "
                     f"{r['run_s']:.2f} | {r['run_tracemalloc_peak_mib']:.1f} | {r['rss_before_run_mib']:.0f} | "
                     f"{r['rss_run_peak_mib']:.0f} | {r['rss_run_delta_mib']:.1f} |")
        L += ["", "Run s is one run (a memory probe, not a timing). The RSS growth can be smaller than the tracemalloc "
                  "peak when the run reuses memory the allocator kept from the compile (explicit CSR: scipy temporaries)."]
        if c.get("resnet19"):
            r = c["resnet19"]
            L += ["", f"ResNet-19 (case 2): kernel CSR {r['kernel_nbytes'] / 2**20:.1f} MiB; an explicit CSR would hold "
                      f"{r['explicit_synapses'] / 1e9:.2f} G synapses, ~{r['explicit_nbytes_estimate'] / 2**30:.1f} GiB ({r['note']})."]

    c = C.get("startup")
    if c:
        b = c["breakdown_warm"]
        L += ["", "## 6. Start-up of the command line", "", f"`{c['command']}` as a subprocess, wall time. Cold: "
              "`NUMBA_CACHE_DIR` set to a fresh empty directory (the kernels compile); warm: the same directory again.", "",
              "| | runs | median s | min-max s |", "|---|---|---|---|",
              f"| cold JIT cache | {c['cold_s']['n']} | {c['cold_s']['median']:.2f} | {c['cold_s']['min']:.2f}-{c['cold_s']['max']:.2f} |",
              f"| warm JIT cache | {c['warm_s']['n']} | {c['warm_s']['median']:.2f} | {c['warm_s']['min']:.2f}-{c['warm_s']['max']:.2f} |",
              "", f"Warm run, in pieces: Python start {b['python_start_s']:.2f} s; start + imports of evsim (numba, scipy, "
              f"h5py, click) {b['python_start_plus_imports_s']:.2f} s; compile the network {b['compile_network_s']:.3f} s; "
              f"simulate one sample, including loading the cached kernels, {b['simulate_s_incl_jit_cache_load']:.2f} s."]

    c = C.get("scaling")
    if c and "threads" in c:
        lo, hi = c["threads"]
        L += ["", f"## 7. Scaling: {lo} -> {hi} threads at a large batch", "",
              "From the runs of cases 1 and 2 (same repetitions): speed-up = median at "
              f"{hi} threads / median at {lo} thread (range: worst-best pairing of repetitions, or of the "
              "per-round medians where each side ran in its own processes; each PyTorch implementation in its best "
              "configuration at each thread count).", "",
              "| network | batch | " + " | ".join(IMPL_LABEL[k] for k in IMPLS) + " | evsim at batch 1 |",
              "|---|---|" + "---|" * len(IMPLS) + "---|"]
        for case in _scaling_cases(c):
            r = c[case]
            L.append(f"| {r.get('name', case)} | {r['batch']} | " + " | ".join(
                (f"{r[k]['speedup']:.2f}x [{r[k]['speedup_min']:.2f}-{r[k]['speedup_max']:.2f}]" if k in r else "-")
                for k in IMPLS)
                + f" | {r.get('evsim_batch1_speedup', float('nan')):.2f}x |")
        L += ["", "evsim splits a batch over threads by sample (one group of samples per thread in one `prange` of the "
                  "fused driver), so batch 1 runs on one thread whatever the setting. The driver makes no BLAS call: "
                  "the dense current of a direct-encoded input is a Numba kernel on the same thread pool (OpenBLAS "
                  "worker threads, which keep spinning after a call, had held the speed-up of the sparse model at "
                  "1.0x)."]
    here = Path(__file__).resolve().parent
    codegen = here / "CODEGEN.md"                        # bench/codegen.py, run on its own
    if codegen.is_file():
        L += ["", demote_title(codegen.read_text()).rstrip()]
    integer = here / "INTEGER.md"                        # bench/integer.py, run on its own
    if integer.is_file():
        L += ["", demote_title(integer.read_text()).rstrip()]
    dask_runs = here / "DISTRIBUTED.md"                  # bench/distributed_eval.py, run on its own
    if dask_runs.is_file():
        L += ["", demote_title(dask_runs.read_text()).rstrip()]
    scale = here / "RESNET19_SCALE.md"                   # bench/resnet19_scale.py, run on its own
    if scale.is_file():
        L += ["", scale.read_text().rstrip()]
    L.append("")
    text = "\n".join(L)
    with open(path, "w") as f:
        f.write(text)
    return text
