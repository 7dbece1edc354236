"""The benchmark's own helpers that decide what is measured (bench/ is not a package)."""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from synthetic import calibrate_layers  # noqa: E402

from evsim import compile_network, run  # noqa: E402
from evsim.bridge.fold import fold_model  # noqa: E402
from evsim.bridge.models import build_model  # noqa: E402
from evsim.reports import build_report  # noqa: E402


def test_calibrate_layers_gives_every_layer_the_target_rate():
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1, image_size=16, timesteps=4).eval()
    x = torch.from_numpy(np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32))
    cal = calibrate_layers(model, x, target=0.15, std=0.12, tol=0.01)
    assert set(cal["layer_rates"]) == {name for name, _ in model.neurons()}
    for name, r in cal["layer_rates"].items():
        assert abs(r - 0.15) <= 0.02, (name, r)
    # the folded network fires the same in the engine, on the calibration inputs
    net = compile_network(fold_model(model, input_range=(0.0, 1.0)), dtype="float64")
    rep = build_report(net, run(net, x.numpy()))
    for layer in rep.populations:
        assert layer.firing_rate == pytest.approx(cal["layer_rates"][layer.name], abs=1e-9), layer.name


def test_report_renders_from_the_shipped_results(tmp_path):
    """`bench/run.py --render` rebuilds the report from results.json alone: the targets are judged from
    the stored measurements, e.g. the kernel rate against its 15 G/s line."""
    import json

    import run as bench_run
    results = Path(__file__).resolve().parents[1] / "bench" / "results.json"
    out = tmp_path / "R.md"
    assert bench_run.main(["--render", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    R = json.loads(results.read_text())
    rate = next(r for r in R["cases"]["kernels"]["rows"] if r["c_out"] == 128)["gadds_per_s"]
    row = next(line for line in text.splitlines() if line.startswith("| synaptic kernel"))
    assert f"{rate:.2f} G/s" in row
    assert row.rstrip(" |").endswith("**met**" if rate >= 15 else "**not met**")


def test_throughput_script_times_a_shipped_model_and_refuses_a_bad_directory(tmp_path):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "bench" / "throughput.py"), "--batch", "2", "--reps", "1",
           "--model-dir", str(root / "models" / "fmnist-resnet8-ternary-sparse")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "samples/s" in ln]
    assert lines and all(float(ln.split(": ")[-1].split()[0]) > 0 for ln in lines)
    bad = subprocess.run(cmd[:-1] + [str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "needs folded.h5" in bad.stderr


def test_torch_configs_compile_only_at_the_compile_batches():
    from compare import torch_configs
    cs = torch_configs(("torch_model", "torch_folded"), ["contiguous", "channels_last"], ["eager", "compile"],
                       [1, 16, 64], compile_batches=[64])
    assert len(cs) == 2 * 2 * 3 + 2 * 2 * 1
    assert {c["batch"] for c in cs if c["mode"] == "compile"} == {64}
    assert len(torch_configs(("torch_folded",), ["contiguous"], ["eager", "compile"], [1, 16])) == 4


def test_combine_rounds_is_the_median_of_per_round_medians_with_their_range():
    from compare import combine_rounds
    c = combine_rounds([[10.0, 12.0, 11.0], [20.0, 19.0, 30.0], [14.0, 15.0, 13.0]])
    assert c["rounds"] == [11.0, 20.0, 14.0]
    assert c["median"] == 14.0 and c["min"] == 11.0 and c["max"] == 20.0 and c["n_rounds"] == 3
    assert len(c["values"]) == 9
    assert combine_rounds([])["n_rounds"] == 0


def test_best_config_picks_the_fastest_within_the_thread_budget():
    from compare import baselines, best_config, ratio_over_rounds

    def row(th, impl, fmt, mode, bs, med, side="torch", net=None):
        r = {"side": side, "threads": th, "impl": impl, "format": fmt, "mode": mode, "batch": bs, "median": med,
             "min": med, "max": med, "rounds": [med, med]}
        if net:
            r["network"] = net
        return r
    rows = [row(1, "torch_folded", "contiguous", "eager", 64, 400.0),
            row(1, "torch_folded", "channels_last", "compile", 64, 500.0),
            row(2, "torch_folded", "contiguous", "eager", 64, 450.0),     # two threads slower than one compiled
            row(2, "torch_model", "contiguous", "compile", 16, 480.0),
            row(1, "torch_model", "contiguous", "eager", 1, 300.0),
            row(2, "torch_folded", "contiguous", "compile", 1, float("nan"))]    # failed: never chosen
    assert best_config(rows, 1)["median"] == 500.0
    assert best_config(rows, 2)["median"] == 500.0 and best_config(rows, 2)["threads"] == 1
    assert best_config(rows, 2, mode="eager")["median"] == 450.0
    assert best_config(rows, 2, mode="compiled")["median"] == 500.0
    assert best_config(rows, 2, batch=1)["median"] == 300.0
    assert best_config(rows, 2, impl="torch_model", mode="eager")["batch"] == 1
    assert best_config(rows, 1, impl="nothing") is None
    r = ratio_over_rounds([1000.0, 900.0, 1100.0], [500.0, 600.0, 400.0])
    assert r["rounds"] == [2.0, 1.5, 2.75] and r["min"] == 1.5 and r["max"] == 2.75 and r["ratio"] == 2.0
    ev = [row(th, "evsim", "-", "-", bs, med, side="evsim", net="evsim")
          for th, bs, med in ((1, 1, 700.0), (1, 64, 800.0), (2, 1, 690.0), (2, 64, 1500.0))]
    b = baselines(rows + ev, [1, 2], [1, 64])
    assert b[2]["torch_best"]["median"] == 500.0
    assert b[2]["evsim"]["evsim"]["vs_torch_best"]["ratio"] == 3.0
    assert b[2]["evsim"]["evsim"]["vs_torch_best_eager"]["ratio"] == 1500.0 / 450.0
    assert b[1]["evsim"]["evsim"]["batch1_vs_torch_best_batch1"]["ratio"] == 700.0 / 300.0


def test_stage_layer_rates_carries_a_resnet8s_rates_over_to_resnet19():
    from synthetic import stage_layer_rates
    src = {"layers.2": 0.68, "layers.3.sn1": 0.72, "layers.3.sn2": 0.81, "layers.4.sn1": 0.75,
           "layers.4.sn2": 0.80, "layers.5.sn1": 0.76, "layers.5.sn2": 0.87}
    dst = ["layers.2"] + [f"layers.{k}.sn{j}" for k in range(3, 11) for j in (1, 2)] + ["other"]
    r = stage_layer_rates(src, (1, 1, 1), dst, (3, 3, 2))
    assert r["layers.2"] == 0.68
    assert [r[f"layers.{k}.sn2"] for k in range(3, 11)] == [0.81] * 3 + [0.80] * 3 + [0.87] * 2
    assert [r[f"layers.{k}.sn1"] for k in (3, 6, 9, 10)] == [0.72, 0.75, 0.76, 0.76]
    assert r["other"] == pytest.approx(sum(src.values()) / len(src))


def test_calibrate_layers_takes_a_rate_per_layer():
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1, image_size=16, timesteps=4).eval()
    x = torch.from_numpy(np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32))
    want = {name: (0.7 if i % 2 else 0.3) for i, (name, _) in enumerate(model.neurons())}
    cal = calibrate_layers(model, x, target=want, std=0.12, tol=0.01)
    for name, r in cal["layer_rates"].items():
        assert abs(r - want[name]) <= 0.03, (name, r, want[name])


def test_microarchitecture_names_zen4_and_sapphire_rapids():
    from timing import microarchitecture
    assert microarchitecture({"vendor": "AuthenticAMD", "family": "25", "model": "17"}, "znver4") == "Zen 4, LLVM: znver4"
    assert microarchitecture({"vendor": "AuthenticAMD", "family": "25", "model": "1"}).startswith("Zen 3")
    assert microarchitecture({"vendor": "GenuineIntel", "family": "6", "model": "143"}) == "Sapphire Rapids"
    assert microarchitecture({}) == "-"


def test_folded_runner_channels_last_gives_the_same_outputs():
    from evsim.bridge.dense import DenseRunner
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1, image_size=16, timesteps=4).eval()
    net = fold_model(model, input_range=(0.0, 1.0))
    x = torch.from_numpy(np.random.default_rng(1).random((3, 1, 16, 16), dtype=np.float32))
    a = DenseRunner(net, torch.float32)(x)
    b, spikes = DenseRunner(net, torch.float32, memory_format=torch.channels_last)(x, return_spikes=True)
    assert torch.equal(a, b)
    first = next(iter(spikes.values()))
    assert first[0].is_contiguous(memory_format=torch.channels_last)


def test_kernel_profile_and_scatter_by_shape_come_from_the_profiled_driver():
    """bench's per-kernel timings are the engine's profiling run: every kind the network uses appears,
    the shares add up to the whole, and the per-shape rows count the conv layers' own operations."""
    import cases
    torch.manual_seed(0)
    model = build_model("resnet8", width=8, in_channels=1, image_size=16, timesteps=2).eval()
    net = compile_network(fold_model(model, input_range=(0.0, 1.0)), dtype="float32")
    x = np.random.default_rng(1).random((8, 1, 16, 16), dtype=np.float32)
    prof = cases.profile_evsim(net, x, 4)
    assert prof["samples"] == 8
    assert sum(prof["share"].values()) == pytest.approx(1.0, abs=1e-9)
    used = {cp.mode for cp in net.projections if cp.mode != "dense"}
    assert used <= set(prof["share"])
    rows = cases.scatter_by_shape(net, x[:4], reps=2)
    conv_rows = [cp for cp in net.projections if cp.mode == "conv_rows"]
    assert sum(r["calls"] for r in rows) == len(conv_rows)
    r = run(net, x[:4])
    assert sum(r_["synaptic_ops"] for r_ in rows) * 4 == sum(int(r.counters.synaptic_ops[cp.name].sum())
                                                            for cp in conv_rows)


def test_conv_layers_count_each_layers_events_and_occupied_positions():
    """The per-layer grouping the report explains the sparse gap with: events and occupied input positions
    per sample come from the recorded spikes of each conv's source, and the layer's additions from the
    engine's counters."""
    import cases
    torch.manual_seed(0)
    model = build_model("resnet8", width=8, in_channels=1, image_size=16, timesteps=2).eval()
    net = compile_network(fold_model(model, input_range=(0.0, 1.0)), dtype="float32")
    x = np.random.default_rng(2).random((4, 1, 16, 16), dtype=np.float32)
    rows = cases.conv_layers(net, x, reps=2)
    r = run(net, x, record=True)
    pops = [p.name for p in net.populations]
    convs = [cp for cp in net.projections if cp.mode == "conv_rows" and cp.source >= 0]
    assert [row["name"] for row in rows] == [cp.name for cp in convs]
    for row, cp in zip(rows, convs):
        s = r.spikes[pops[cp.source]]
        assert row["events_per_sample"] * 4 == int((s != 0).sum())
        assert row["positions_per_sample"] * 4 == int((s != 0).any(axis=2).sum())
        assert row["events_per_position"] >= 1.0 or row["events_per_sample"] == 0
        assert row["synaptic_ops_per_sample"] * 4 == int(r.counters.synaptic_ops[cp.name].sum())


def test_per_position_fit_separates_a_positions_cost_from_its_events():
    """Every position carries exactly g events (distinct channels, memory order), and the fitted line goes
    through the measured points' trend: more events per position cost more per position."""
    import cases
    rng = np.random.default_rng(0)
    idx, sign, cnt = cases._position_events(rng, 2, 16, 6, 4)
    assert cnt.tolist() == [144, 144]
    for n in range(2):
        pos, ch = np.divmod(idx[n], 16)
        assert np.array_equal(pos, np.repeat(np.arange(36), 4))
        assert all(len(set(ch[4 * p:4 * p + 4])) == 4 for p in range(36))
        assert np.all(np.diff(idx[n]) > 0)
    r = cases.scatter_per_position(rng, 16, 8, (1, 4, 16), 2, 3)
    assert [p["events_per_position"] for p in r["points"]] == [1, 4, 16]
    assert r["points"][-1]["ns_per_position"] > r["points"][0]["ns_per_position"]
    assert r["ns_per_event"] > 0


def test_goals_follow_issue_18_by_firing_rate_and_thread_count():
    """A shipped model firing densely is judged at 1.5x (1 thread) and 2x (2 threads), a sparse one at 4x;
    a miss says what per-operation speed the goal would need."""
    import report
    R = {"config": {"threads": [1, 2], "r19_target_rate": 0.12}, "meta": {}, "cases": {}}

    def shipped(rate, r1, r2):
        ex = {th: {"evsim_gadds_per_s": 10.0, "torch_folded_gmacs_per_s": 20.0, "work_ratio_adds_over_dense_macs": rate,
                   "per_op_speed_ratio": 0.5, "predicted_ratio_vs_torch_folded": 0.5 / rate,
                   "work_ratio_needed_for_2x": 0.25, "firing_rate_needed_for_2x_estimate": 0.2} for th in (1, 2)}
        return {"name": "m", "activity": {"firing_rate": rate, "synaptic_ops_per_sample": 1e6 * rate,
                                          "dense_work_per_sample": 1e6},
                "ratios": {1: {"best_vs_fastest_torch": r1}, 2: {"best_vs_fastest_torch": r2}}, "explain": ex}
    R["cases"]["shipped:a"] = shipped(0.75, 1.6, 2.1)
    R["cases"]["shipped:b"] = shipped(0.75, 1.4, 2.1)
    R["cases"]["shipped:c"] = shipped(0.10, 4.2, 3.9)
    rows = [x for x in report.evaluate_targets(R) if x["name"].startswith("end-to-end throughput, shipped")]
    assert [x["status"] for x in rows] == [True, False, False]
    miss = rows
    assert ">= 1.5x at 1 thread; >= 2x at 2 threads" in miss[0]["target"] and ">= 4x" in miss[2]["target"]
    assert "1.5x needs 1.12x" in miss[1]["why"] and "2 thr" not in miss[1]["why"]
    assert "4x needs 0.40x" in miss[2]["why"] and "1 thr" not in miss[2]["why"]


def test_codegen_reads_compress_forms_and_vector_spills_from_the_assembly():
    import codegen
    fire = ("\tvpcompressd\t%zmm1, %zmm2 {%k1} {z}\n\tvpcompressb\t%zmm3, %zmm4 {%k1} {z}\n"
            "\tvpcompressd\t%zmm1, (%rdi,%rax,4) {%k1}\n\tvaddps\t%zmm1, %zmm2, %zmm3\n")
    conv = ("\tvmovups\t%zmm5, 64(%rsp)\n\tvmovups\t128(%rsp), %zmm6\n\tvaddps\t%ymm1, %ymm2, %ymm3\n"
            "\tvpxord\t(%rcx), %zmm1, %zmm2\n")
    r = codegen.read_asm(fire, conv)
    assert r["compress_register"] == ["vpcompressb", "vpcompressd"] and r["compress_memory"] == 1
    assert (r["conv_vector_spills"], r["conv_vector_reloads"]) == (1, 1)
    assert (r["conv_zmm"], r["conv_ymm"]) == (4, 3)


def test_integer_bench_merges_processes_round_by_round():
    """bench/integer.py --processes: the ratio to float32 is the median, over every round of every process,
    of the round's own ratio (the two measured side by side), with each process's own ratio beside it."""
    import integer

    def doc(rounds_f, rounds_i, load):
        res = [{"model": "m", "threads": 1, "arithmetic": "float32", "per_round": rounds_f,
                "base_per_round": rounds_f, "synaptic_ops": 1.0},
               {"model": "m", "threads": 1, "arithmetic": "int32", "per_round": rounds_i,
                "base_per_round": rounds_f, "synaptic_ops": 1.0},
               {"model": "m", "threads": 1, "arithmetic": "int16", "refused": "too wide"}]
        return integer.summarize({"results": res, "load_average_1min": load, "processes": 1})

    a = doc([100.0, 100.0], [120.0, 130.0], [1.0, 1.1])       # ratios 1.2, 1.3
    b = doc([50.0, 200.0], [45.0, 220.0], [1.2])               # ratios 0.9, 1.1: a slower process
    assert a["results"][1]["ratio_to_float32"] == pytest.approx(1.25)
    m = integer.merge([a, b])
    r = m["results"][1]
    assert r["per_round"] == [120.0, 130.0, 45.0, 220.0] and r["base_per_round"] == [100.0, 100.0, 50.0, 200.0]
    assert r["ratio_to_float32"] == pytest.approx(1.15)       # median of 1.2, 1.3, 0.9, 1.1
    assert r["ratio_per_process"] == pytest.approx([1.25, 1.0])
    assert r["samples_per_s"] == pytest.approx(125.0)
    assert m["processes"] == 2 and m["load_average_1min"] == [1.0, 1.1, 1.2]
    assert m["results"][2] == {"model": "m", "threads": 1, "arithmetic": "int16", "refused": "too wide"}
    assert a["results"][1]["per_round"] == [120.0, 130.0]     # the process's own document is left as it was
