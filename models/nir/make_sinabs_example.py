"""Sinabs networks exported with Sinabs' own NIR export, and Sinabs' own spikes to check evsim's import against.

    python3 -m venv /tmp/sinabs-venv && . /tmp/sinabs-venv/bin/activate
    pip install torch==2.13.0 sinabs==3.1.3          # pulls nir 1.0.4, nirtorch 2.0.2, samna (docs/NIR.md)
    python models/nir/make_sinabs_example.py         # models/nir/sinabs_{if,lif,lif_sub}.nir, *_spikes.npz,
                                                     # sinabs_inputs.npy

Sinabs 3.1.3 requires ``nir<=1.0.4``, so it cannot share a virtual environment with the test extra's
``nir==1.0.8``; the files written here are what ``tests/test_nir.py`` checks without Sinabs installed (and, when
Sinabs is importable, it rebuilds and re-runs them live).

Two networks, float64, ``T`` steps of the same (static) input:

- ``if``: Conv2d -> IAFSqueeze -> SumPool2d(2) -> Conv2d -> IAFSqueeze -> Flatten -> Linear -> IAFSqueeze
  (the DYNAP-CNN layer set). Import with ``--discretisation exp --dt 1 --reset subtract`` (an IF ignores the
  discretisation: gain ``r`` per step, no leak).
- ``lif`` (``MembraneReset()``) and ``lif_sub`` (``MembraneSubtract()``, Sinabs' default): Conv2d ->
  LIFSqueeze(tau_mem) -> SumPool2d(2) -> Flatten -> Linear -> LIFSqueeze. Sinabs' LIF decays
  by ``alpha = exp(-1/tau_mem)`` per step and (``norm_input=True``, the default) scales its input by
  ``1 - alpha``: the ``exp`` rule at ``dt = 1`` (Sinabs' tau is in steps). Import with ``--discretisation exp
  --dt 1``; ``--reset nir`` for ``MembraneReset()`` (to 0), ``--reset subtract`` for ``MembraneSubtract()`` (see
  docs/NIR.md: Sinabs subtracts before the decay, evsim after, so that case is not exact).

Every spiking layer uses ``spike_fn=SingleSpike`` (at most one spike per neuron and step, fired at ``v >=
threshold``, as evsim); Sinabs' default ``MultiSpike`` emits ``floor(v / threshold)`` spikes, which a binary
evsim population cannot. Sinabs' spikes are float32 whatever the network's dtype, so a forward pre-hook casts
each weight layer's input back to float64.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CASES = ("if", "lif", "lif_sub")   # name -> the reset it was built with: RESET
RESET = {"if": "subtract", "lif": "zero", "lif_sub": "subtract"}


def _f64_inputs(net):
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_pre_hook(lambda mod, args: tuple(a.to(mod.weight.dtype) for a in args))
    return net


def build(case="if", seed=0, batch=1, c=4, hw=8, n_out=5):
    """A small random float64 Sinabs network; ``batch`` is the Squeeze layers' batch size (input (batch*T, ...))."""
    reset = RESET[case]
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, MembraneSubtract, SingleSpike

    torch.manual_seed(seed)
    reset_fn = MembraneSubtract() if reset == "subtract" else MembraneReset()
    kw = dict(batch_size=batch, spike_fn=SingleSpike, reset_fn=reset_fn)
    if case == "if":
        net = torch.nn.Sequential(
            torch.nn.Conv2d(2, c, 3, padding=1, bias=False), sl.IAFSqueeze(spike_threshold=1.0, **kw),
            sl.SumPool2d(2),
            torch.nn.Conv2d(c, c, 3, padding=1, bias=False), sl.IAFSqueeze(spike_threshold=1.5, **kw),
            torch.nn.Flatten(),
            torch.nn.Linear(c * (hw // 2) ** 2, n_out, bias=False), sl.IAFSqueeze(spike_threshold=1.0, **kw))
    elif case in ("lif", "lif_sub"):
        net = torch.nn.Sequential(
            torch.nn.Conv2d(2, c, 3, padding=1), sl.LIFSqueeze(tau_mem=4.0, spike_threshold=0.2, **kw),
            sl.SumPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(c * (hw // 2) ** 2, n_out), sl.LIFSqueeze(tau_mem=10.0, spike_threshold=0.1, **kw))
    else:
        raise ValueError(f"unknown case {case!r} (known: {', '.join(CASES)})")
    net = net.double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_(3.0)
    return _f64_inputs(net)


def spiking_layers(net):
    import sinabs.layers as sl
    return {str(i): m for i, m in enumerate(net) if isinstance(m, (sl.IAF, sl.LIF))}


def forward_spikes(net, x, timesteps):
    """Sinabs' own forward pass over ``timesteps`` steps of the same input x (N, C, H, W): {layer: (T, N, ...)}."""
    import sinabs
    n = x.shape[0]
    for m in spiking_layers(net).values():
        m.batch_size = n
    sinabs.reset_states(net)
    xs = torch.as_tensor(x)[:, None].expand(n, timesteps, *x.shape[1:]).reshape(n * timesteps, *x.shape[1:])
    out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: out.__setitem__(k, o.detach().numpy().copy()))
             for k, m in spiking_layers(net).items()]
    with torch.no_grad():
        net(xs)
    for h in hooks:
        h.remove()
    sinabs.reset_states(net)
    # (N*T, ...) batch-major -> (T, N, ...), evsim's layout
    return {k: np.swapaxes(v.reshape(n, timesteps, *v.shape[1:]), 0, 1) for k, v in out.items()}


def export(net, sample_shape, path):
    """Sinabs' NIR export (``sinabs.nir.to_nir``, nirtorch's module tracer), written with ``nir.write``."""
    import nir
    import sinabs
    from sinabs.nir import to_nir
    for m in spiking_layers(net).values():
        m.batch_size = 1
    sample = torch.zeros((1,) + tuple(sample_shape), dtype=torch.float64)
    shapes, hooks = {}, []
    for name, m in net.named_modules():
        if name:
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, name=name: shapes.setdefault(name, tuple(i[0].shape[1:])) and None))
    sinabs.reset_states(net)
    graph = to_nir(net, sample)
    for h in hooks:
        h.remove()
    sinabs.reset_states(net)
    # Sinabs 3.1.3 leaves Conv2d.input_shape and Flatten.input_type unset (None), which nir.write cannot store:
    # filled in from the shapes the export's own forward pass saw
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Conv2d) and node.input_shape is None:
            node.input_shape = shapes[name][1:]
        elif isinstance(node, nir.Flatten) and node.input_type["input"] is None:
            node.input_type = {"input": np.array(shapes[name])}
            node.output_type = {"output": np.array([int(np.prod(shapes[name]))])}
    nir.write(str(path), graph)
    return graph


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=str(HERE))
    ap.add_argument("--timesteps", type=int, default=10)
    a = ap.parse_args()
    x = np.random.default_rng(0).normal(0.5, 1.0, size=(3, 2, 8, 8))
    np.save(Path(a.out_dir) / "sinabs_inputs.npy", x)
    for case in CASES:
        net = build(case)
        path = Path(a.out_dir) / f"sinabs_{case}.nir"
        export(net, (2, 8, 8), path)
        spikes = forward_spikes(net, x, a.timesteps)
        assert all(np.isin(v, (0, 1)).all() for v in spikes.values())      # SingleSpike: binary
        np.savez_compressed(path.with_name(f"sinabs_{case}_spikes.npz"),
                            **{k: v.astype(np.uint8) for k, v in spikes.items()})
        print(f"wrote {path}; Sinabs firing rates:", {k: round(float(v.mean()), 3) for k, v in spikes.items()})


if __name__ == "__main__":
    main()
