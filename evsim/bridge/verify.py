"""Prove that the engine runs the trained model faithfully.

The trained PyTorch model (unfolded, eval mode, cast to float64) and the
event-driven engine (float64, on the folded file) run side by side on the
same samples. Per population: the share of identical spikes, and where
they first diverge (timestep, sample, neuron). Outputs: the largest
absolute difference and whether predictions agree. The check passes only
with every spike identical and outputs within ``atol`` (1e-9). The float32
engine is compared against the same float64 reference and its agreement
rates are reported, not required.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..compiler import compile_network
from ..engine import check_input, run
from ..errors import EvsimError
from ..graph import Network
from .layers import SpikingNeuron
from .models import SpikingNet

ATOL = 1e-9


@torch.no_grad()
def torch_reference(model: SpikingNet, x: np.ndarray, batch_size: int = 64):
    """Outputs (N, n_out) and spikes {module path: (T, N, ...)} of the model in float64."""
    ref = copy.deepcopy(model).double().eval()
    neurons = dict(ref.neurons())
    for m in neurons.values():
        m.record_spikes = True
    outs, spikes = [], {n: [] for n in neurons}
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float64))
        outs.append(ref(xb).numpy())
        for n, m in neurons.items():
            spikes[n].append(m.spikes.to(torch.int8).numpy())
    return np.concatenate(outs), {n: np.concatenate(v, axis=1) for n, v in spikes.items()}


def _first_divergence(a: np.ndarray, b: np.ndarray):
    """(t, sample, neuron index tuple) of the first differing spike, in time order."""
    diff = np.argwhere(a != b)
    if len(diff) == 0:
        return None
    t, n, *rest = diff[0]
    return int(t), int(n), tuple(int(r) for r in rest)


def verify(model: SpikingNet, network: Network, x: np.ndarray, batch_size: int = 64, atol: float = ATOL) -> dict:
    net64 = compile_network(network, "float64")
    x = check_input(net64, x)
    if network.timesteps != model.timesteps or tuple(network.input_shape) != tuple(model.input_shape):
        raise EvsimError(f"the checkpoint (T={model.timesteps}, input {tuple(model.input_shape)}) and the file "
                         f"(T={network.timesteps}, input {tuple(network.input_shape)}) describe different networks")
    modules = dict(model.named_modules())
    for p in network.populations:
        m = modules.get(p.name)
        if not isinstance(m, SpikingNeuron):
            raise EvsimError(f"population {p.name!r} has no matching neuron layer in the checkpoint")
        if m.model_name != p.model:
            raise EvsimError(f"population {p.name!r} is {p.model} in the file but {m.model_name} in the checkpoint")

    ref_out, ref_spikes = torch_reference(model, x, batch_size)
    r64 = run(net64, x, batch_size=batch_size, record=True)
    r32 = run(compile_network(network, "float32"), x, batch_size=batch_size, record=True)

    layers = []
    first = None
    for name in net64.network.topological_order():
        ref = ref_spikes[name]
        e64, e32 = r64.spikes[name], r32.spikes[name]
        if ref.shape != e64.shape:
            raise EvsimError(f"population {name!r}: spike shape {e64.shape[2:]} in the file, "
                             f"{ref.shape[2:]} in the checkpoint")
        div = _first_divergence(ref, e64)
        layer = {"population": name, "neurons": int(np.prod(ref.shape[2:])),
                 "spikes_reference": int(np.count_nonzero(ref)), "spikes_engine": int(np.count_nonzero(e64)),
                 "identical_float64": float((ref == e64).mean()), "identical_float32": float((ref == e32).mean()),
                 "first_divergence": None}
        if div is not None:
            t, n, idx = div
            layer["first_divergence"] = {"timestep": t, "sample": n, "neuron": list(idx),
                                         "reference": int(ref[(t, n) + idx]), "engine": int(e64[(t, n) + idx])}
            if first is None:
                first = dict(population=name, **layer["first_divergence"])
        layers.append(layer)
    max_diff = float(np.abs(ref_out - r64.outputs).max())
    max_diff32 = float(np.abs(ref_out - r32.outputs).max())
    pred_ref = ref_out.argmax(1)
    all_identical = all(lay["first_divergence"] is None for lay in layers)
    return {
        "passed": bool(all_identical and max_diff <= atol),
        "samples": int(len(x)),
        "timesteps": int(network.timesteps),
        "atol": atol,
        "layers": layers,
        "first_divergence": first,
        "max_output_diff_float64": max_diff,
        "predictions_agree_float64": float((pred_ref == r64.predictions).mean()),
        "max_output_diff_float32": max_diff32,
        "predictions_agree_float32": float((pred_ref == r32.predictions).mean()),
        "spikes_identical_float32": float(np.mean([lay["identical_float32"] for lay in layers])),
    }


def format_verification(res: dict) -> str:
    from ..reports import table
    rows = [[lay["population"], lay["neurons"], lay["spikes_reference"], lay["spikes_engine"],
             f"{100 * lay['identical_float64']:.4f}%", f"{100 * lay['identical_float32']:.4f}%"]
            for lay in res["layers"]]
    out = [f"verify: {res['samples']} samples, T={res['timesteps']}, PyTorch (float64) vs evsim engine", "",
           table(rows, ["population", "neurons", "spikes torch", "spikes evsim", "identical f64", "identical f32"]), ""]
    out.append(f"outputs: max |diff| float64 {res['max_output_diff_float64']:.3e} (tolerance {res['atol']:g}), "
               f"float32 {res['max_output_diff_float32']:.3e}")
    out.append(f"predictions agree: float64 {100 * res['predictions_agree_float64']:.2f}%, "
               f"float32 {100 * res['predictions_agree_float32']:.2f}%")
    if res["first_divergence"]:
        d = res["first_divergence"]
        out.append(f"first divergence: population {d['population']}, timestep {d['timestep']}, sample {d['sample']}, "
                   f"neuron {tuple(d['neuron'])}: PyTorch {d['reference']:+d}, evsim {d['engine']:+d}")
    out.append("PASSED: every spike identical, outputs within tolerance" if res["passed"] else "FAILED")
    return "\n".join(out)


# ---------------------------------------------------------------------- fixed point
def integer_reference(network: Network, x: np.ndarray, batch_size: int = 64):
    """Outputs (N, n_out) int64 and spikes {population: (T, N, ...)} of the integer PyTorch reference
    (:class:`~evsim.bridge.dense.DenseRunner` of a fixed-point network), computed from the file alone."""
    from .dense import DenseRunner
    try:
        runner = DenseRunner(network)
    except ValueError as e:          # sums beyond float64's exact integers: the reference would not be exact
        raise EvsimError(f"the integer reference cannot run this network exactly: {e}") from None
    outs, spikes = [], {}
    for i in range(0, len(x), batch_size):
        out, sp = runner(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])), return_spikes=True)
        outs.append(out.numpy())
        for n, s in sp.items():
            spikes.setdefault(n, []).append(s.to(torch.int8).numpy())
    return np.concatenate(outs), {n: np.concatenate(v, axis=1) for n, v in spikes.items()}


def verify_fixed(network: Network, x: np.ndarray, batch_size: int = 64) -> dict:
    """A fixed-point network: the engine, in int32 and (where the accumulators fit) int16, against the
    integer reference. Integer arithmetic leaves no tolerance: it passes only with every spike and every
    integer output identical in every dtype run."""
    from ..fixedpoint import INT16_BITS
    dtypes = ["int32"] + (["int16"] if network.fixed_point.accumulator_bits <= INT16_BITS else [])
    nets = {d: compile_network(network, d) for d in dtypes}
    x = np.asarray(x)
    check_input(nets["int32"], x)            # refuses what the engine would refuse, before the reference runs
    lead = (network.timesteps,) if network.encoding == "spikes" else ()
    if x.shape == lead + tuple(network.input_shape):
        x = x[None]
    ref_out, ref_spikes = integer_reference(network, x, batch_size)
    runs = {d: run(nets[d], x, batch_size=batch_size, record=True) for d in dtypes}
    layers, first = [], None
    for name in network.topological_order():
        ref = ref_spikes[name]
        layer = {"population": name, "neurons": int(np.prod(ref.shape[2:])),
                 "spikes_reference": int(np.count_nonzero(ref)),
                 "spikes_engine": int(np.count_nonzero(runs["int32"].spikes[name])), "first_divergence": None}
        for d in dtypes:
            e = runs[d].spikes[name]
            layer[f"identical_{d}"] = float((ref == e).mean())
            div = _first_divergence(ref, e)
            if div is not None and layer["first_divergence"] is None:
                t, n, idx = div
                layer["first_divergence"] = {"dtype": d, "timestep": t, "sample": n, "neuron": list(idx),
                                             "reference": int(ref[(t, n) + idx]), "engine": int(e[(t, n) + idx])}
                if first is None:
                    first = dict(population=name, **layer["first_divergence"])
        layers.append(layer)
    res = {"reference": "integer PyTorch (DenseRunner)", "samples": int(len(x)), "timesteps": int(network.timesteps),
           "dtypes": dtypes, "layers": layers, "first_divergence": first}
    outputs_same = True
    for d in dtypes:
        diff = np.abs(ref_out - runs[d].outputs)
        res[f"outputs_identical_{d}"] = bool(not diff.any())
        res[f"max_output_diff_{d}"] = int(diff.max()) if diff.size else 0
        res[f"predictions_agree_{d}"] = float((ref_out.argmax(1) == runs[d].predictions).mean())
        outputs_same &= res[f"outputs_identical_{d}"]
    res["passed"] = bool(first is None and outputs_same)
    return res


def format_fixed_verification(res: dict) -> str:
    from ..reports import table
    dtypes = res["dtypes"]
    rows = [[lay["population"], lay["neurons"], lay["spikes_reference"], lay["spikes_engine"]]
            + [f"{100 * lay[f'identical_{d}']:.4f}%" for d in dtypes] for lay in res["layers"]]
    out = [f"verify: {res['samples']} samples, T={res['timesteps']}, fixed point: integer PyTorch reference vs "
           f"evsim engine ({', '.join(dtypes)})", "",
           table(rows, ["population", "neurons", "spikes reference", "spikes evsim"]
                 + [f"identical {d}" for d in dtypes]), ""]
    out.append("integer outputs: " + ", ".join(
        f"{d} {'identical' if res[f'outputs_identical_{d}'] else 'max |diff| ' + str(res[f'max_output_diff_{d}'])}"
        for d in dtypes))
    if res["first_divergence"]:
        d = res["first_divergence"]
        out.append(f"first divergence ({d['dtype']}): population {d['population']}, timestep {d['timestep']}, sample "
                   f"{d['sample']}, neuron {tuple(d['neuron'])}: reference {d['reference']:+d}, evsim {d['engine']:+d}")
    out.append("PASSED: every spike and every integer output identical" if res["passed"] else "FAILED")
    return "\n".join(out)
