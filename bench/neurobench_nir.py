"""evsim's synaptic operation counts on a NIR-imported network against NeuroBench's SynapticOperations.

    python3 -m venv /tmp/nb-venv && . /tmp/nb-venv/bin/activate
    pip install torch==2.13.0 neurobench==2.3.0 snntorch==1.0.0 nir==1.0.8 nirtorch==2.6 \
        "numba>=0.68,<0.69" "llvmlite>=0.50,<0.51" scipy click
    PYTHONPATH=. python bench/neurobench_nir.py --write models/nir/neurobench_ops.json

For each network: snnTorch builds it (float64), snnTorch's export writes models/nir/nb_<name>.nir, NeuroBench 2.3.0
runs the snnTorch network with its ``SynapticOperations`` metric (``Benchmark``, ``SNNTorchModel``) on the inputs,
and evsim imports the NIR file and runs the same inputs. Printed and (with --write) stored: NeuroBench's effective
ACs and MACs per sample, evsim's per projection. ``tests/test_nir.py`` re-runs the evsim half against the stored
NeuroBench numbers without NeuroBench. docs/NIR.md ("Measured against NeuroBench") states the result.

- ``strided``: conv 3x3 -> Leaky -> conv 3x3 stride 2 -> Leaky -> flatten -> linear -> Leaky (no pooling).
- ``pooled``: models/nir/make_example.py's network: conv -> Leaky -> AvgPool2d(2) -> conv -> Leaky -> flatten ->
  linear -> Leaky. evsim folds the pool into the next conv and counts each spike's synapses; NeuroBench counts
  the conv on the pooled map's non-zeros: the counts differ by design (docs/NIR.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "models" / "nir"
T, SEED_X = 8, 21
NETS = ("strided", "pooled")


def inputs():
    return np.random.default_rng(SEED_X).normal(0.5, 1.0, size=(4, 2, 8, 8))


def build(name):
    import torch
    sys.path.insert(0, str(EXAMPLE))
    import make_example as mk
    if name == "pooled":
        return mk.build(seed=3, residual=False, reset="subtract")
    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), mk.leaky((4, 8, 8), 0.8, reset="subtract"),
        torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), mk.leaky((6, 4, 4), 0.7, threshold=0.75, reset="subtract"),
        torch.nn.Flatten(), torch.nn.Linear(96, 5), mk.leaky((5,), 0.9, reset="subtract")).double()
    with torch.no_grad():
        for m in (net[0], net[2], net[5]):
            m.weight.mul_(2.0)
            m.register_forward_pre_hook(lambda mod, a: tuple(t.to(mod.weight.dtype) for t in a))
    return net


def neurobench_ops(net, x):
    """NeuroBench 2.3.0's SynapticOperations of the snnTorch network over T steps of the static input x."""
    import torch
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import SNNTorchModel
    from snntorch import utils

    class TimeLoop(torch.nn.Module):          # (batch, T, ...) -> (T, batch, ...), as custom_forward expects
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, data):
            utils.reset(self.net)
            return torch.stack([self.net(data[:, t]) for t in range(data.shape[1])])

    xs = torch.as_tensor(x)[:, None].expand(x.shape[0], T, *x.shape[1:]).contiguous()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, torch.zeros(len(x))), batch_size=len(x))
    bench = Benchmark(SNNTorchModel(TimeLoop(net), custom_forward=True), loader, [], [], [[], [SynapticOperations]])
    r = bench.run(quiet=True)["SynapticOperations"]
    return {k: float(v) for k, v in r.items()}


def evsim_ops(path, x):
    """evsim's counters per projection (mean per sample) for the NIR file run on x."""
    from evsim import compile_network, simulate
    from evsim.bridge.nir import nir_to_network
    net = nir_to_network(path, timesteps=T, reset="subtract")
    c = simulate(compile_network(net, dtype="float64"), x).counters
    return {name: {"synaptic_ops": float(c.synaptic_ops[name].mean()),
                   "macs_nonzero_input": float(c.macs_nonzero[name].mean())} for name in c.synaptic_ops}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", help="store the results (JSON) for tests/test_nir.py")
    a = ap.parse_args()
    sys.path.insert(0, str(EXAMPLE))
    import make_example as mk
    x = inputs()
    out = {"T": T, "inputs_seed": SEED_X, "neurobench": "2.3.0", "networks": {}}
    for name in NETS:
        net = build(name)
        path = EXAMPLE / f"nb_{name}.nir"
        mk.export(net, (2, 8, 8), str(path))
        nb = neurobench_ops(net, x)
        ev = evsim_ops(path, x)
        ac = sum(v["synaptic_ops"] for k, v in ev.items() if not k.startswith("readout"))
        mac = sum(v["macs_nonzero_input"] for v in ev.values())
        out["networks"][name] = {"neurobench": nb, "evsim": ev}
        print(f"{name}: NeuroBench Effective_ACs {nb['Effective_ACs']:.2f}, Effective_MACs {nb['Effective_MACs']:.2f}, "
              f"Dense {nb['Dense']:.2f} per sample; evsim AC (without the readout) {ac:.2f}, MAC once per sample "
              f"{mac:.2f} (x T = {mac * T:.2f}); per projection {ev}")
    if a.write:
        Path(a.write).write_text(json.dumps(out, indent=1) + "\n")
        print("wrote", a.write)


if __name__ == "__main__":
    main()
