"""Norse networks in NIR, and Norse's own spikes to check evsim's import against.

    python3 -m venv /tmp/norse-venv && . /tmp/norse-venv/bin/activate
    pip install torch==2.13.0 torchvision==0.28.0 norse==1.1.0 nir==1.0.8 nirtorch==2.6      # docs/NIR.md
    python models/nir/make_norse_example.py     # models/nir/norse_<case>.nir, norse_<case>_spikes.npz, norse_inputs.npy

Float64 MLPs (Affine -> neuron -> Affine -> neuron), ``T`` steps of the same input, Norse's ``dt = 1e-3``:

- ``lifbox``: ``LIFBoxCell`` (NIR ``LIF``; ``v <- v + dt/tau (x - v)``, spike at ``v > v_th``, reset to 0),
  written by Norse's ``to_nir``. Norse 1.1.0 writes ``tau = dt / tau_mem_inv``, dt times the real time constant
  (norse/norse#411, open), so evsim reads it with ``--discretisation norse --dt 1e-6`` (dt squared).
- ``iaf``: ``IAFCell`` (NIR ``IF``; ``v <- v + x``, reset to 0), written by Norse's ``to_nir``.
- ``cuba_lifcell``: ``LIFCell`` (NIR ``CubaLIF``), written by Norse's ``to_nir``: the cell adds its input to
  the current as a jump (gain 1) while NIR's CubaLIF gives it the gain ``w_in dt / tau_syn`` and Norse writes
  ``w_in = 1``: not the same network; evsim's result is measured, not expected to match.
- ``cuba_nir``: a NIR CubaLIF graph written with the ``nir`` package (time constants in seconds), run by
  Norse's own ``from_nir`` (a ``LIBoxCell`` synapse into a ``LIFBoxCell``): evsim ``--discretisation norse``.

Norse keeps a scalar ``tau_mem_inv``/``v_th`` as a NIR node of shape (), which ``nir.write`` cannot store (scalar
datasets take no filters): every parameter is given per neuron. Norse's ``to_nir`` also leaves the batch
dimension in the Input and Output types, which ``nir.read`` refuses: it is dropped before writing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DT = 1e-3
CASES = {  # case: (evsim --dt, NIR writer)
    "lifbox": (DT * DT, "norse"), "iaf": (DT, "norse"), "cuba_lifcell": (DT * DT, "norse"), "cuba_nir": (DT, "nir")}
N_IN, HIDDEN, N_OUT = 6, 8, 4
LAYERS = ("1", "3")                               # the spiking layers' names, in Norse's Sequential and in NIR


def _full(n, v):
    return torch.full((n,), float(v), dtype=torch.float64)


def build(case="lifbox", seed=0):
    """A Norse SequentialState network for the cases Norse exports itself."""
    import norse.torch as nt

    torch.manual_seed(seed)

    def cell(n, tau_inv, th):
        if case == "lifbox":
            return nt.LIFBoxCell(nt.LIFBoxParameters(tau_mem_inv=_full(n, tau_inv), v_th=_full(n, th),
                                                     v_leak=_full(n, 0), v_reset=_full(n, 0)), dt=DT)
        if case == "iaf":
            return nt.IAFCell(nt.IAFParameters(v_th=_full(n, th), v_reset=_full(n, 0)), dt=DT)
        if case == "cuba_lifcell":
            return nt.LIFCell(nt.LIFParameters(tau_syn_inv=_full(n, 2 * tau_inv), tau_mem_inv=_full(n, tau_inv),
                                               v_th=_full(n, th), v_leak=_full(n, 0), v_reset=_full(n, 0)), dt=DT)
        raise ValueError(f"no Norse network for case {case!r}")

    net = nt.SequentialState(torch.nn.Linear(N_IN, HIDDEN), cell(HIDDEN, 100.0, 0.5),
                             torch.nn.Linear(HIDDEN, N_OUT), cell(N_OUT, 50.0, 0.3)).double()
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.mul_({"lifbox": 8.0, "iaf": 1.0, "cuba_lifcell": 4.0}[case])
    return net


def nir_cuba_graph(seed=0):
    """Affine -> CubaLIF -> Affine -> CubaLIF written with the nir package (tau in seconds, w_in = r = 1)."""
    import nir
    rng = np.random.default_rng(seed)
    n = lambda k, v: np.full(k, float(v))  # noqa: E731

    def cuba(k, tau_mem, tau_syn, th):
        return nir.CubaLIF(tau_mem=n(k, tau_mem), tau_syn=n(k, tau_syn), r=n(k, 1), v_leak=n(k, 0),
                           v_reset=n(k, 0), v_threshold=n(k, th), w_in=n(k, 1))
    nodes = {"input": nir.Input(input_type=np.array([N_IN])),
             "0": nir.Affine(weight=rng.normal(0, 3.0, (HIDDEN, N_IN)), bias=rng.normal(0, 0.5, HIDDEN)),
             "1": cuba(HIDDEN, 0.01, 0.005, 0.5),
             "2": nir.Affine(weight=rng.normal(0, 2.0, (N_OUT, HIDDEN)), bias=np.zeros(N_OUT)),
             "3": cuba(N_OUT, 0.02, 0.01, 0.3),
             "output": nir.Output(output_type=np.array([N_OUT]))}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "0"), ("0", "1"), ("1", "2"), ("2", "3"), ("3", "output")])


def _run(module, cells, x, timesteps):
    out = {k: [] for k in cells}
    hooks = [m.register_forward_hook(lambda mod, a, o, k=k: out[k].append(o[0].detach().numpy().copy()))
             for k, m in cells.items()]
    state = None
    with torch.no_grad():
        for _ in range(timesteps):
            _, state = module(torch.as_tensor(x), state)
    for h in hooks:
        h.remove()
    return {k: np.stack(v) for k, v in out.items()}


def forward_spikes(net, x, timesteps):
    """Norse's own forward pass, T steps of the same input x (N, n_in): {layer: (T, N, n)}."""
    return _run(net, {k: net[int(k)] for k in LAYERS}, x, timesteps)


def from_nir_spikes(path, x, timesteps):
    """Norse's ``from_nir`` of a NIR file, run by Norse: {layer: (T, N, n)}."""
    import nir
    import norse.torch as nt
    m = nt.from_nir(nir.read(str(path)), dt=DT).double()
    return _run(m, {k: m.get_submodule(k) for k in LAYERS}, x, timesteps)


def export(case, path, seed=0):
    """Write the case's NIR file; returns the Norse module whose spikes are the reference (None: from_nir)."""
    import nir
    if CASES[case][1] == "nir":
        nir.write(str(path), nir_cuba_graph(seed))
        return None
    import norse.torch as nt
    net = build(case, seed)
    graph = nt.to_nir(net, torch.zeros((1, N_IN), dtype=torch.float64), dt=DT)
    for node in graph.nodes.values():     # drop the batch dimension Norse leaves in the Input and Output types
        if isinstance(node, (nir.Input, nir.Output)):
            shape = np.array(node.input_type["input"][1:])
            node.input_type, node.output_type = {"input": shape}, {"output": shape}
    nir.write(str(path), graph)
    return net


def reference_spikes(case, path, net, x, timesteps):
    return forward_spikes(net, x, timesteps) if net is not None else from_nir_spikes(path, x, timesteps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=str(HERE))
    ap.add_argument("--timesteps", type=int, default=20)
    a = ap.parse_args()
    x = np.random.default_rng(0).normal(0.5, 1.0, size=(5, N_IN))
    np.save(Path(a.out_dir) / "norse_inputs.npy", x)
    for case in CASES:
        path = Path(a.out_dir) / f"norse_{case}.nir"
        net = export(case, path)
        spikes = reference_spikes(case, path, net, x, a.timesteps)
        assert all(np.isin(v, (0, 1)).all() for v in spikes.values())
        np.savez_compressed(path.with_name(f"norse_{case}_spikes.npz"),
                            **{k: v.astype(np.uint8) for k, v in spikes.items()})
        print(f"wrote {path}; Norse firing rates:", {k: round(float(v.mean()), 3) for k, v in spikes.items()})


if __name__ == "__main__":
    main()
