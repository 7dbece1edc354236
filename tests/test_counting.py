"""docs/COUNTING.md's worked example, checked number by number against the engine and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evsim import compile_network, simulate, write_network
from evsim.cli import main
from evsim.graph import Network, Population, Projection
from evsim.reports import build_report, per_sample

DOC = Path(__file__).resolve().parents[1] / "docs" / "COUNTING.md"
LIF = {"tau": 0.5, "v_threshold": 0.5}


def example() -> tuple[Network, np.ndarray]:
    """The network and input of the worked example, as the page describes them."""
    w_stem = np.ones((1, 1, 3, 3))
    w_stem[0, 0, 1, 1] = 0.0
    net = Network(
        populations=[Population("a", (1, 3, 3), "ternary_lif", LIF), Population("b", (1, 2, 2), "ternary_lif", LIF),
                     Population("c", (1, 2, 2), "ternary_lif", LIF)],
        projections=[
            Projection("stem", "input", "a", "conv2d", weight=w_stem, stride=(1, 1), padding=(1, 1)),
            Projection("down", "a", "b", "conv2d", weight=np.ones((1, 1, 3, 3)), stride=(2, 2), padding=(1, 1)),
            Projection("b.conv", "b", "c", "conv2d", weight=np.ones((1, 1, 1, 1))),
            Projection("b.skip", "b", "c", "identity", scale=0.0),
            Projection("fc", "c", "readout", "linear", weight=np.array([[1.0, 0, 0, -1], [0, 1, 1, 0]]),
                       bias=np.array([0.25, -0.25]))],
        timesteps=2, input_shape=(1, 3, 3), encoding="direct")
    x = np.zeros((1, 3, 3))
    x[0, 0, 0], x[0, 2, 2] = 0.6, -0.6
    return net, x


def documented() -> dict[str, float]:
    """The ``| counter | value |`` table of the worked example."""
    section = DOC.read_text(encoding="utf-8").split("## Worked example", 1)[1]
    rows = re.findall(r"^\| ([\w.\[\]]+) \| (-?[\d.]+) \|$", section, flags=re.M)
    table = {k: float(v) for k, v in rows if k != "counter"}
    assert len(table) >= 30, "the worked example's table was not found"
    return table


def measured(report, outputs) -> dict[str, float]:
    got = {"outputs[0]": outputs[0], "outputs[1]": outputs[1]}
    for p in report.populations:
        got[f"{p.name}.spikes_pos"], got[f"{p.name}.spikes_neg"] = p.spikes_pos, p.spikes_neg
    for p in report.projections:
        for key in ("events_in", "synaptic_ops", "macs_all_positions", "macs_nonzero_input", "dense_macs"):
            got[f"{p.name}.{key}"] = getattr(p, key)
    for key, v in report.totals.items():
        got[f"totals.{key}"] = v
    got["energy.snn_pj"] = report.energy["snn_uj"] * 1e6
    got["energy.ann_pj"] = report.energy["ann_uj"] * 1e6
    return got


@pytest.mark.parametrize("profile", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_worked_example_matches_the_page(dtype, profile):
    net, x = example()
    cn = compile_network(net, dtype=dtype)
    r = simulate(cn, x, profile=profile)
    got = measured(build_report(cn, r), r.outputs[0])
    for key, value in documented().items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_worked_example_through_the_cli(tmp_path):
    net, x = example()
    write_network(net, tmp_path / "ex.h5")
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(main, ["run", "-w", str(tmp_path / "ex.h5"), "-i", str(tmp_path / "x.npy"),
                                       "--dtype", "float64", "--json", "--per-sample"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    want = documented()
    assert doc["outputs"] == [[want["outputs[0]"], want["outputs[1]"]]]
    (sample,) = doc["per_sample"]
    assert sample["outputs"] == doc["outputs"][0] and sample["prediction"] == 0
    for p in sample["populations"]:
        assert (p["spikes_pos"], p["spikes_neg"]) == (want[f"{p['name']}.spikes_pos"], want[f"{p['name']}.spikes_neg"])
    for p in sample["projections"]:
        for key in ("events_in", "synaptic_ops"):
            assert p[key] == want[f"{p['name']}.{key}"], (p["name"], key)
        assert isinstance(p["synaptic_ops"], int)
    stem = sample["projections"][0]
    assert (stem["macs"], stem["macs_nonzero_input"], stem["macs_all_positions"]) == (6, 6, 40)
    assert sample["totals"]["synaptic_ops"] == want["totals.synaptic_ops"]

    every = CliRunner().invoke(main, ["run", "-w", str(tmp_path / "ex.h5"), "-i", str(tmp_path / "x.npy"),
                                      "--json", "--first-layer-macs", "all"])
    doc = json.loads(every.stdout)
    assert doc["mac_basis"] == "all" and doc["totals"]["macs"] == want["totals.macs_all_positions"]
    assert doc["energy"]["snn_uj"] * 1e6 == pytest.approx(24 * 0.9 + 40 * 4.6)


def test_per_sample_rows_average_to_the_report():
    """The report's figures are the means of the per-sample counters, sample by sample distinct."""
    net, x = example()
    xs = np.stack([x, 2 * x, np.zeros_like(x), -x])
    cn = compile_network(net, dtype="float64")
    r = simulate(cn, xs)
    rows, rep = per_sample(cn, r), build_report(cn, r)
    assert len({row["totals"]["synaptic_ops"] for row in rows}) > 1
    for i, p in enumerate(rep.projections):
        for key in ("events_in", "synaptic_ops", "macs", "macs_nonzero_input", "macs_all_positions"):
            assert np.mean([row["projections"][i][key] for row in rows]) == pytest.approx(getattr(p, key)), key
    assert rows[2]["totals"]["macs"] == 0 and rows[2]["totals"]["spikes"] == 0     # an all-zero image


def test_per_sample_needs_json(tmp_path):
    net, x = example()
    write_network(net, tmp_path / "ex.h5")
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(main, ["run", "-w", str(tmp_path / "ex.h5"), "-i", str(tmp_path / "x.npy"),
                                       "--per-sample"])
    assert result.exit_code == 2 and "--per-sample goes with --json" in result.output
