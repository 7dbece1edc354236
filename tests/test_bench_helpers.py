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
