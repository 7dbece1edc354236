"""The ``evsim`` command line.

Commands: ``run`` (simulate a folded network on samples or a dataset),
``info`` (describe a file), and, with the ``torch`` extra installed,
``train``, ``export``, ``verify`` and ``convert-checkpoint``. Any :class:`~evsim.errors.EvsimError`
becomes one line on stderr and exit code 1; ``--json`` prints one JSON
document on stdout.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time

import click
import numpy as np

from .errors import EvsimError, InputError

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def user_errors(fn):
    """Turn the project's one-line errors into click's (stderr, exit code 1)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EvsimError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError as e:            # NumPy names the allocation: "Unable to allocate 3.2 GiB for ..."
            detail = str(e).strip().splitlines()
            raise click.ClickException("out of memory" + (f": {detail[0]}" if detail else "")) from None
    return wrapper


def need_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EvsimError("this command needs PyTorch: pip install torch==2.13.0 'evsim[torch]'") from None


def load_array(path: str, what: str = "input") -> np.ndarray:
    """Read a .npy array from an untrusted file: a regular file whose header is checked before its data.

    Special files (a FIFO would block), object, complex, structured and text dtypes, and arrays
    over the memory budget (EVSIM_MAX_BYTES) are refused in one line before anything is allocated.
    """
    from .files import open_regular, read_npy_header
    from .limits import Limits

    with open_regular(path, f"{what} file") as f:
        shape, _, dtype, data_at = read_npy_header(f, f"{what} file {path}", InputError,
                                                   " (a .npz archive: save the array itself with numpy.save)")
        if dtype.hasobject:
            raise InputError(f"{what} file {path}: cannot read as a .npy array (Object arrays cannot be loaded: "
                             f"they hold Python objects, not numbers)")
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise InputError(f"{what} file {path}: {what} dtype {dtype.str} is not numeric (real numbers only)")
        nbytes = math.prod(shape) * dtype.itemsize
        Limits.from_env().check_bytes(f"{what} file {path}: an array of shape {shape} ({dtype})", nbytes)
        held = os.fstat(f.fileno()).st_size - data_at
        if held < nbytes:
            raise InputError(f"{what} file {path}: cannot read as a .npy array (truncated: the header declares "
                             f"{nbytes} bytes of data, the file holds {held})")
        try:
            f.seek(0)
            a = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            detail = (str(e).splitlines() or [type(e).__name__])[0]
            raise InputError(f"{what} file {path}: cannot read as a .npy array ({detail})") from None
    if a.ndim == 0 and what == "input":
        raise InputError(f"{what} file {path}: holds a single value, not an array of samples")
    return a


def _progress_runner(net, x, batch_size, record=False, show=True, threads=None, profile=False):
    """Run in batches with a progress bar on stderr when the run is long enough to want one."""
    from .engine import run
    n = len(x)
    if not show or n <= batch_size:
        return run(net, x, batch_size=batch_size, record=record, threads=threads, profile=profile)
    with click.progressbar(length=n, label="simulating", file=sys.stderr, show_pos=True) as bar:
        return run(net, x, batch_size=batch_size, record=record, progress=bar.update, threads=threads,
                   profile=profile)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="evsim")
def main():
    """evsim: event-driven emulation of ternary spiking neural networks on the CPU."""
    # The engine's process: Numba's OpenMP threads wait passively between parallel regions (libgomp
    # reads this when Numba first starts its thread pool, after this point), so that they do not spin on
    # the cores the serial parts of a run need. Only the command sets it, never `import evsim`, and
    # a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


# ----------------------------------------------------------------------- run
@main.command()
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False), help="Folded network (HDF5).")
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help="Samples as .npy: one sample or a batch (N, ...).")
@click.option("--dataset", type=click.Choice(["fashion-mnist"]), help="Run a dataset's test split instead of --input.")
@click.option("--events", "events_path", type=click.Path(),
              help="Event-camera streams instead of --input: .npy of events (fields t, x, y, p [, sample]), "
                   ".npz or a directory of streams, or .aedat4; binned into the network's T windows "
                   "(docs/FORMAT.md, Event-stream input).")
@click.option("--window-us", type=click.IntRange(min=1),
              help="With --events: windows of this many microseconds from each sample's first event "
                   "(default: T equal windows over each sample's span).")
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels (.npy, N integers) to report accuracy.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--dtype", type=click.Choice(["float32", "float64", "int32", "int16"]), default="float32",
              show_default=True,
              help="float64 for verification, float32 for speed; a fixed-point file (evsim quantize) runs in int32 "
                   "(the default there) or int16.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--energy-model", default="45nm-fp32", show_default=True,
              help="Energy per operation (see README); a fixed-point file defaults to 45nm-int32.")
@click.option("--conv-mode", type=click.Choice(["kernel", "explicit"]), default="kernel", show_default=True,
              help="Weight-shared conv kernels (whole kernel rows, or taps for mostly empty kernels), "
                   "or an explicit per-neuron CSR (memory-guarded).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for the engine (default: all cores).")
@click.option("--first-layer-macs", "mac_basis", type=click.Choice(["nonzero", "all"]), default="nonzero",
              show_default=True,
              help="MACs of a direct-encoded input: each non-zero input value once (an event processor), "
                   "or every input position (a dense first layer). Both are in --json.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document instead of tables (with every sample's raw outputs).")
@click.option("--per-sample", is_flag=True, help="With --json: every counter of every sample, not only means.")
@click.option("--profile", is_flag=True,
              help="Also say where the time went: every step of the engine's driver timed with the CPU's clock "
                   "(same code path), per layer and per kernel.")
@click.option("--hardware", metavar="NAME_OR_FILE",
              help="Also map the network onto a chip (built-in profile: loihi, loihi2, truenorth, spinnaker2, "
                   "dynapcnn; or a .toml profile) and report its packets, synaptic ops per core, latency and energy "
                   "(docs/HARDWARE.md).")
@user_errors
def run(weights, input_path, dataset, events_path, window_us, labels, limit, dtype, batch_size, top_k, energy_model,
        conv_mode, threads, mac_basis, as_json, per_sample, profile, hardware=None):
    """Simulate a folded network event by event and report what the hardware did."""
    from .compiler import compile_network
    from .format import read_network
    from .reports import build_report, energy_model as get_energy_model, format_report, per_sample as sample_rows

    get_energy_model(energy_model)
    chip = None
    if hardware is not None:
        from .hardware import load_profile
        chip = load_profile(hardware)
    if per_sample and not as_json:
        raise click.UsageError("--per-sample goes with --json")
    if sum(v is not None for v in (input_path, dataset, events_path)) != 1:
        raise EvsimError("give exactly one of --input, --dataset or --events")
    if window_us is not None and events_path is None:
        raise click.UsageError("--window-us goes with --events")
    network = read_network(weights)
    from .compiler import engine_dtype
    ctx = click.get_current_context()
    dtype = engine_dtype(network, dtype, ctx.get_parameter_source("dtype") != click.core.ParameterSource.DEFAULT)
    if network.fixed_point is not None and ctx.get_parameter_source("energy_model") == click.core.ParameterSource.DEFAULT:
        energy_model = "45nm-int32"          # the arithmetic that runs: integer adds
    y = None
    binning = None
    if events_path:
        from .events import load_events_for_network
        x, binning = load_events_for_network(events_path, network, window_us, limit)
        if labels:
            y = load_array(labels, "labels")
    elif dataset:
        from .datasets import load_dataset
        x, y = load_dataset(dataset, "test")
        if labels:
            raise EvsimError("--labels goes with --input; a dataset brings its own")
    else:
        x = load_array(input_path)
        if labels:
            y = load_array(labels, "labels")
    t0 = time.perf_counter()
    net = compile_network(network, dtype=dtype, conv_mode=conv_mode)
    t_compile = time.perf_counter() - t0
    g = network
    lead = (g.timesteps,) if g.encoding == "spikes" else ()
    if x.shape == lead + tuple(g.input_shape):
        x = x[None]
    if limit:
        x = x[:limit]
        y = None if y is None else y[:limit]
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"labels must be {len(x)} integers, one per sample; got shape {y.shape}, dtype {y.dtype}")
    traffic = None
    if chip is not None:                  # map first: the traffic is counted batch by batch as the run goes
        from .hardware.traffic import map_and_run
        t0 = time.perf_counter()
        result, traffic = map_and_run(net, x, chip, batch_size, threads=threads, profile=profile)
    else:
        t0 = time.perf_counter()
        result = _progress_runner(net, x, batch_size, show=not as_json or sys.stderr.isatty(), threads=threads,
                                  profile=profile)
    t_run = time.perf_counter() - t0
    report = build_report(net, result, energy_model, mac_basis)

    names = g.class_names or [str(i) for i in range(net.n_outputs)]
    k = min(top_k, net.n_outputs)
    scores = result.outputs
    if g.fixed_point is not None:         # integer sums over T, shown as the real logits they stand for
        from .fixedpoint import real_outputs
        scores = real_outputs(g, result.outputs)
    order = np.argsort(-result.outputs, axis=1, kind="stable")[:, :k]
    preds = [[{"class": int(c), "name": names[c], "score": float(scores[i, c])} for c in order[i]]
             for i in range(len(x))]
    doc = {"weights": str(weights), "samples": len(x), "dtype": dtype, "class_names": names,
           "predictions": [p[0]["class"] for p in preds], "top_k": preds,
           "outputs": [[float(v) for v in row] for row in scores]}
    if g.fixed_point is not None:
        doc["outputs_int"] = result.outputs.tolist()
        doc["readout_unit"] = g.fixed_point.membrane_unit["readout"]
    if y is not None:
        doc["accuracy"] = float((result.predictions == y).mean())
        doc["correct"] = int((result.predictions == y).sum())
    doc.update(report.to_dict())
    if binning is not None:
        doc["event_binning"] = binning.to_dict()
    doc["timing"] = {"compile_s": t_compile, "simulate_s": t_run, "samples_per_s": len(x) / t_run if t_run else None,
                     "compiled_bytes": net.nbytes}
    if result.profile is not None:
        doc["profile"] = result.profile.to_dict()
    if traffic is not None:
        doc["hardware"] = traffic.to_dict()
    if as_json:
        if per_sample:
            doc["per_sample"] = sample_rows(net, result, mac_basis)
        click.echo(json.dumps(doc, indent=2))
        return
    if len(x) == 1:
        click.echo("prediction: " + ", ".join(f"{p['name']} ({p['score']:.3f})" for p in preds[0]))
    else:
        shown = min(len(x), 10)
        click.echo(f"predictions ({len(x)} samples" + (f", first {shown}" if shown < len(x) else "") + "): "
                   + ", ".join(preds[i][0]["name"] for i in range(shown)))
    if y is not None:
        click.echo(f"accuracy: {doc['accuracy'] * 100:.2f}% ({doc['correct']}/{len(x)})")
    if binning is not None:
        b = doc["event_binning"]
        click.echo(f"events: {b['events']} read, {b['binned']} in the T={g.timesteps} windows"
                   + (f" ({b['dropped_after_last_window']} after the last)" if b["dropped_after_last_window"] else "")
                   + f", {b['input_spikes']} input spikes after merging per pixel and window")
    click.echo("")
    click.echo(format_report(report))
    click.echo(f"  time: {t_run:.3f} s for {len(x)} samples ({len(x) / t_run:.1f} samples/s), compiled network "
               f"{net.nbytes / 2**20:.2f} MiB")
    if result.profile is not None:
        from .reports import format_profile
        click.echo("")
        click.echo(format_profile(result.profile))
    if traffic is not None:
        from .hardware.report import format_traffic
        click.echo("")
        click.echo(format_traffic(traffic))


# ----------------------------------------------------------------------- map
@main.command("map")
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False), help="Folded network (HDF5).")
@click.option("--hardware", required=True, metavar="NAME_OR_FILE",
              help="Built-in profile (loihi, loihi2, truenorth, spinnaker2, dynapcnn) or a .toml profile file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (with every core and the profile).")
@user_errors
def map_(weights, hardware, as_json):
    """Partition a network over a chip's cores and say whether it fits (docs/HARDWARE.md).

    A network that does not fit is a result, not an error: the exit code is 0 either way."""
    from .format import read_network
    from .hardware import load_profile
    from .hardware.mapping import map_network
    from .hardware.report import format_mapping

    chip = load_profile(hardware)
    mapping = map_network(read_network(weights), chip)
    if as_json:
        click.echo(json.dumps({"weights": str(weights), **mapping.to_dict(), "profile_numbers": chip.to_dict()},
                              indent=2))
        return
    click.echo(format_mapping(mapping))


# ---------------------------------------------------------------------- info
@main.command()
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@user_errors
def info(weights, as_json):
    """Describe a folded network file: graph, shapes, parameters, provenance."""
    from .format import file_version, read_network
    from .neurons import neuron_model

    g = read_network(weights)
    version = file_version(g)
    pops = [{"name": p.name, "shape": list(p.shape), "neurons": p.size, "model": p.model, "params": p.params}
            for p in g.populations]
    projs = []
    for pr in g.projections:
        d = {"name": pr.name, "source": pr.source, "target": pr.target, "kind": pr.kind, "params": pr.n_params}
        if pr.weight is not None:
            d["weight_shape"] = list(pr.weight.shape)
            d["nonzero"] = int(np.count_nonzero(pr.weight))
        if pr.kind == "conv2d":
            d["stride"], d["padding"] = list(pr.stride), list(pr.padding)
            if pr.pool is not None:
                d["pool"] = pr.pool.to_dict()
        if pr.kind == "identity":
            d["scale"] = pr.scale
        d["bias"] = pr.bias is not None
        projs.append(d)
    doc = {"file": str(weights), "format_version": version, "timesteps": g.timesteps,
           "input_shape": list(g.input_shape), "encoding": g.encoding, "readout": g.readout,
           "input_range": list(g.input_range) if g.input_range else None, "outputs": g.n_classes,
           "class_names": g.class_names, "neurons": sum(p.size for p in g.populations),
           "parameters": g.n_params, "populations": pops, "projections": projs, "provenance": g.provenance,
           "order": g.topological_order()}
    if g.fixed_point is not None:
        from .fixedpoint import summary
        doc["fixed_point"] = summary(g)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    from .reports import table
    click.echo(f"{weights}: evsim network, format v{version}" + (", fixed point" if g.fixed_point else ""))
    click.echo(f"  T={g.timesteps}, input {tuple(g.input_shape)} ({g.encoding} encoding"
               + (f", values in [{g.input_range[0]:g}, {g.input_range[1]:g}]" if g.input_range else "") + "), "
               f"readout {g.readout} over T, {g.n_classes} outputs")
    if g.class_names:
        click.echo(f"  classes: {', '.join(g.class_names)}")
    click.echo(f"  {len(g.populations)} populations, {doc['neurons']} neurons; {len(g.projections)} projections, "
               f"{g.n_params} parameters")
    click.echo("")
    click.echo(table([[p["name"], "x".join(map(str, p["shape"])), p["neurons"], p["model"],
                       ", ".join(f"{k}={v:g}" for k, v in p["params"].items())] for p in pops],
                     ["population", "shape", "neurons", "model", "constants"]))
    for name in dict.fromkeys(p["model"] for p in pops):
        click.echo(f"  {name}: {neuron_model(name).doc}")
    click.echo("")
    rows = []
    for d in projs:
        detail = ""
        if d["kind"] == "conv2d":
            detail = f"k={d['weight_shape'][2]}x{d['weight_shape'][3]} s={d['stride'][0]} p={d['padding'][0]}"
            if "pool" in d:
                detail = f"{g.projections[len(rows)].pool.describe()}, then {detail}"
        elif d["kind"] == "identity":
            detail = f"scale={d['scale']:g}"
        rows.append([d["name"], d["kind"], f"{d['source']} -> {d['target']}",
                     "x".join(map(str, d.get("weight_shape", []))) or "-", detail, d["params"], d.get("nonzero", "-")])
    click.echo(table(rows, ["projection", "kind", "source -> target", "weight", "geometry", "params", "nonzero"]))
    if g.fixed_point is not None:
        from .fixedpoint import format_summary
        click.echo("")
        click.echo(format_summary(g))
    if g.provenance:
        click.echo("")
        click.echo("provenance:")
        for k, v in g.provenance.items():
            click.echo(f"  {k}: {v if not isinstance(v, (dict, list)) else json.dumps(v)}")


# ------------------------------------------------------------------ quantize
@main.command()
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False),
              help="Real-valued folded network (HDF5).")
@click.option("--weight-bits", required=True, type=click.IntRange(2, 16),
              help="Bits per weight level, sign included (2: ternary weights, one step per projection).")
@click.option("--membrane-bits", type=click.IntRange(4, 32), default=16, show_default=True,
              help="Width of a membrane; it saturates at this many signed bits.")
@click.option("--frac-bits", type=click.IntRange(1, 24), default=12, show_default=True,
              help="Fraction bits of tau and the CTSN/CUBA constants (numerators over 2**F).")
@click.option("--input-bits", type=click.IntRange(2, 16), default=8, show_default=True,
              help="Bits of a direct-encoded input, over the file's input_range.")
@click.option("--scale-rule", type=click.Choice(["mse", "max"]), default="mse", show_default=True,
              help="A projection's level scale: least squared error over clipping points, or max|W| (no clipping).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Fixed-point network to write (.h5).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document.")
@user_errors
def quantize(weights, weight_bits, membrane_bits, frac_bits, input_bits, scale_rule, out, force, as_json):
    """Make a folded network fixed point (integer weights, membranes and constants; docs/FIXED_POINT.md).

    Post-training and deterministic; `evsim run` runs the result in int32 (or int16 where it fits) and
    `evsim verify --weights OUT` checks the engine against the integer PyTorch reference.
    """
    from .files import check_writable_target
    from .fixedpoint import format_summary, quantize as quantize_fn, summary
    from .format import read_network, write_network
    check_writable_target(out, force)
    network = read_network(weights)
    pooled = [pr.name for pr in network.projections if pr.pool is not None]
    if pooled:
        raise EvsimError(f"projection {pooled[0]!r} is a pooled conv (format v3): evsim quantize does not quantise "
                         f"average pooling before a conv; run the network in float32 or float64")
    q = quantize_fn(network, weight_bits, membrane_bits=membrane_bits, frac_bits=frac_bits, input_bits=input_bits,
                    scale_rule=scale_rule)
    write_network(q, out, overwrite=force)
    if as_json:
        click.echo(json.dumps(dict(summary(q), out=str(out)), indent=2))
        return
    click.echo(f"wrote {out}: {weights} quantised ({scale_rule} scales)")
    click.echo(format_summary(q))


# ------------------------------------------------------------------ datasets
@main.group(context_settings=CONTEXT)
def datasets():
    """Make datasets: synthetic event data from real images (evsim/eventcam.py)."""


@datasets.command("nfashion-mnist")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Threshold mismatch and noise.")
@click.option("--noise-hz", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Noise events per pixel per second.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True,
              help="Contrast threshold (log intensity).")
@click.option("--refractory-us", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing files.")
@user_errors
def nfashion_mnist(out, split, limit, seed, noise_hz, threshold, refractory_us, force):
    """SYNTHETIC neuromorphic Fashion-MNIST: the real images moved along three saccades (N-MNIST protocol)
    in front of a simulated event camera. Writes SPLIT_events.npy, SPLIT_labels.npy, SPLIT_meta.json."""
    from .datasets import write_nfashion_mnist
    from .eventcam import CameraConfig
    cfg = CameraConfig(noise_hz=noise_hz, threshold=threshold, refractory_us=refractory_us)
    show = sys.stderr.isatty()
    if show:
        n = 10_000 if split == "test" else 60_000
        with click.progressbar(length=min(n, limit or n), label="recording", file=sys.stderr, show_pos=True) as bar:
            meta = write_nfashion_mnist(out, split, limit, force, seed, cfg, progress=bar.update)
    else:
        meta = write_nfashion_mnist(out, split, limit, force, seed, cfg)
    click.echo(f"wrote {', '.join(meta['paths'])}: {meta['samples']} samples, {meta['events']} events "
               f"({meta['events_per_sample_mean']:.0f} per sample), {meta['generation_s']:.1f} s; synthetic "
               f"(real images, simulated camera)")


# ---------------------------------------------------------------- torch side
@main.command()
@click.option("--arch", default="resnet8", show_default=True,
              type=click.Choice(["convnet", "vgg", "resnet8", "resnet19", "resnet20"]))
@click.option("--neuron", default="ternary", show_default=True,
              type=click.Choice(["ternary", "ternary-fixed", "binary", "ctsn", "ctsn-event"]))
@click.option("--width", type=click.IntRange(min=1), default=16, show_default=True, help="Channels of the first stage.")
@click.option("--timesteps", "-T", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--tmpr", type=float, default=0.0, show_default=True, help="TMPR lambda (0 = off; paper: 0.05 static).")
@click.option("--rate-reg", type=float, default=0.0, show_default=True,
              help="Weight of the mean firing rate in the loss: sparser spikes, fewer operations (0 = off).")
@click.option("--grad-clip", type=float, default=None, help="Clip the global gradient norm to this value.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init", type=click.Path(dir_okay=False),
              help="Start from this checkpoint's weights (fine-tuning, e.g. with --rate-reg); same architecture.")
@click.option("--qat-bits", type=click.IntRange(2, 16),
              help="Quantisation-aware: train the folded network as `evsim quantize --weight-bits N` makes it "
                   "(evsim/bridge/qat.py; LIF neurons). Then export and quantise with the same N.")
@click.option("--dataset", type=click.Choice(["fashion-mnist", "nfashion-mnist"]), default="fashion-mnist",
              show_default=True, help="nfashion-mnist: the synthetic event-camera version (`evsim datasets "
                                      "nfashion-mnist`, seed 0), binned into T frames as `evsim run --events` does; "
                                      "the network is spike-encoded.")
@click.option("--event-channels", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="Event data: 2 = OFF and ON events as +1 spikes in two channels, 1 = the sign of ON - OFF.")
@click.option("--train-limit", type=click.IntRange(min=1), help="Use only the first N training images.")
@click.option("--test-limit", type=click.IntRange(min=1), help="Evaluate on the first N test images only.")
@click.option("--threads", type=click.IntRange(min=1), help="PyTorch CPU threads.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
@user_errors
def train(out, force, event_channels, **kw):
    """Train a spiking network on Fashion-MNIST or its event-camera form (needs the torch extra).

    The full training state is kept in OUT.resume after every epoch: the same command, run again
    after an interruption, goes on from the last finished epoch (and removes it when done)."""
    need_torch()
    from .files import check_writable_target
    resume = out + ".resume"
    if not os.path.exists(resume):
        check_writable_target(out, force, "checkpoint")     # before training, not after it
    from .bridge.train import TrainConfig, save_checkpoint, train as train_fn
    cfg = TrainConfig(event_channels=int(event_channels), **kw)
    model, record = train_fn(cfg, out=out, force=force or os.path.exists(resume), resume=resume)
    os.remove(resume)
    record["command"] = " ".join(["evsim"] + sys.argv[1:])
    save_checkpoint(out, model, record, force=True)      # this run's own checkpoint, written after each epoch
    click.echo(f"wrote {out}: test accuracy (PyTorch) {record['history'][-1]['test_acc_torch'] * 100:.2f}%")


@main.command()
@click.argument("network_file", required=False, type=click.Path(dir_okay=False))
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["nir"]),
              help="Write the evsim network NETWORK_FILE (.h5) as a NIR graph instead (docs/NIR.md).")
@click.option("--dt", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="--to nir: the time step the NIR time constants are written for (snnTorch's convention).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Folded network to write (.h5), or the NIR file with --to nir.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@user_errors
def export(network_file, checkpoint, to, dt, out, force):
    """Fold BatchNorm, amplitudes and pooling into the weights and write HDF5 (needs torch);
    or, with --to nir NETWORK_FILE, write an evsim network as a NIR graph (no torch)."""
    if to == "nir":
        if network_file is None or checkpoint is not None:
            raise click.UsageError("--to nir takes the evsim network file as its argument, not --checkpoint")
        from .bridge.nir import network_to_nir
        from .format import read_network
        net = read_network(network_file)
        network_to_nir(net, out, dt=dt, force=force)
        click.echo(f"wrote {out}: NIR graph of {len(net.populations)} populations, {len(net.projections)} "
                   f"projections (dt {dt:g}; evsim's models in the nodes' metadata)")
        return
    if checkpoint is None or network_file is not None:
        raise click.UsageError("export needs --checkpoint (or --to nir NETWORK_FILE)")
    need_torch()
    from .bridge.checkpoint import load_checkpoint
    from .bridge.fold import fold_model
    from .datasets import DATASET_INFO
    from .files import check_writable_target
    from .format import write_network
    check_writable_target(out, force)
    model, ckpt = load_checkpoint(checkpoint)
    record = ckpt.get("record", {})
    meta = DATASET_INFO.get(record.get("train_config", {}).get("dataset"), {})
    network = fold_model(model, class_names=meta.get("class_names"), input_range=meta.get("input_range"),
                         provenance={"checkpoint": os.path.basename(checkpoint), "training": record})
    write_network(network, out, overwrite=force)
    click.echo(f"wrote {out}: {len(network.populations)} populations, {len(network.projections)} projections, "
               f"{network.n_params} parameters")


@main.command()
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False))
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False),
              help="The trained model the file was folded from. Not for a fixed-point file (evsim quantize): that "
                   "is checked against the integer PyTorch reference computed from the file itself.")
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help="Samples (.npy). Required for evsim checkpoints; with --from, defaults to --samples random images; "
                   "for a fixed-point file, to the first --samples Fashion-MNIST test images.")
@click.option("--events", "events_path", type=click.Path(),
              help="Instead of --input: an event stream, binned as `evsim run --events` bins it (its first "
                   "--samples samples).")
@click.option("--window-us", type=click.IntRange(min=1), help="With --events: fixed windows (as evsim run).")
@click.option("--from", "source", type=click.Choice(["ternary-spike", "ctsn"]),
              help="CHECKPOINT is a state_dict of the papers' training code (see evsim import).")
@click.option("--arch", help="With --from: the architecture (as given to evsim import).")
@click.option("--samples", type=click.IntRange(min=1, max=10_000), default=8, show_default=True,
              help="Without --input: this many seeded standard-normal images (--from) or Fashion-MNIST test "
                   "images (a fixed-point file); with --events, the first this many streams.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def verify(weights, checkpoint, input_path, events_path, window_us, source, arch, samples, batch_size, as_json):
    """Check that the engine reproduces the PyTorch model spike for spike (needs torch).

    A fixed-point file needs no checkpoint: its reference is the integer PyTorch model of the file itself,
    and every spike and every integer output must be identical."""
    need_torch()
    from .bridge.checkpoint import load_checkpoint
    from .bridge.verify import format_verification, verify as verify_fn
    from .format import read_network
    if events_path is not None:
        if input_path is not None:
            raise click.UsageError("give --input or --events, not both")
        from .events import load_events_for_network
        frames, _ = load_events_for_network(events_path, read_network(weights), window_us, limit=samples)
        given = lambda: frames                      # noqa: E731
    elif window_us is not None:
        raise click.UsageError("--window-us goes with --events")
    else:       # the samples the user gave, read once the options are known to fit together
        given = (lambda: load_array(input_path)) if input_path else None
    if checkpoint is None:
        network = read_network(weights)
        if network.fixed_point is None:
            raise click.UsageError("give --checkpoint: a real-valued file is verified against the model it was "
                                   "folded from (only a fixed-point file is verified on its own)")
        _verify_fixed(network, given, source, arch, samples, batch_size, as_json)
        return
    if source is None and (arch is not None or given is None):
        raise click.UsageError("--arch goes with --from" if arch is not None else "give --input (samples as .npy) or --events")
    if source is not None and arch is None:
        raise click.UsageError("--from needs --arch")
    network = read_network(weights)
    if network.fixed_point is not None:
        raise click.UsageError("a fixed-point file is verified against its own integer reference: leave out "
                               "--checkpoint")
    if source is None:
        model, _ = load_checkpoint(checkpoint)
    else:
        from .bridge.papers import model_for_network, sample_inputs
        model = model_for_network(checkpoint, source, arch, network)
    x = given() if given is not None else sample_inputs(network.input_shape, samples)
    result = verify_fn(model, network, x, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_verification(result))
    if not result["passed"]:
        sys.exit(1)


def _verify_fixed(network, given, source, arch, samples, batch_size, as_json):
    """evsim verify of a fixed-point file: the engine against the integer reference, on the samples given
    (``given()``: --input or --events) or on the first Fashion-MNIST test images."""
    from .bridge.verify import format_fixed_verification, verify_fixed
    if source is not None or arch is not None:
        raise click.UsageError("--from and --arch go with --checkpoint")
    if given is not None:
        x = given()
    elif network.encoding == "direct" and tuple(network.input_shape) == (1, 28, 28):
        from .datasets import load_dataset
        x = load_dataset("fashion-mnist", "test")[0][:samples]
    else:
        raise click.UsageError(f"give --input: this network's input {tuple(network.input_shape)} "
                               f"({network.encoding}) is not Fashion-MNIST's")
    result = verify_fixed(network, x, batch_size=batch_size)
    click.echo(json.dumps(result, indent=2) if as_json else format_fixed_verification(result))
    if not result["passed"]:
        sys.exit(1)


@main.command("convert-checkpoint")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Converted checkpoint to write (.pt).")
@click.option("--trust", is_flag=True,
              help="Required: converting unpickles CHECKPOINT, which runs any code it holds. Give it only for a "
                   "file you made or trust.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@user_errors
def convert_checkpoint(checkpoint, out, trust, force):
    """Rewrite a checkpoint of an older evsim as plain data, loadable without unpickling code (one time).

    Every other command loads checkpoints with PyTorch's weights-only loader, which runs no pickle code and
    refuses these older files.
    """
    need_torch()
    if not trust:
        raise click.UsageError("converting unpickles the checkpoint, which can run code it holds: pass --trust "
                               "only for a file you made or trust")
    from .bridge.checkpoint import convert_checkpoint as convert
    convert(checkpoint, out, trust=True, force=force)
    click.echo(f"wrote {out}: loads with weights_only=True")


# ------------------------------------------------ the papers' own checkpoints
@main.command("import")
@click.argument("graph", required=False, type=click.Path(dir_okay=False))
@click.option("--from", "source", required=True, type=click.Choice(["ternary-spike", "ctsn", "nir"]),
              help="The training code: yfguo91/Ternary-Spike or ZBX05/Enhanced-TernarySNN (CTSN); or nir: "
                   "GRAPH is a NIR file (snnTorch, Norse, Sinabs...; docs/NIR.md).")
@click.option("--arch",
              help="ternary-spike: resnet18, resnet34, resnet19, resnet20, resnet20m, vgg16; ctsn: vgg11, vgg16 "
                   "(others are refused with the reason).")
@click.option("--timesteps", "-T", type=click.IntRange(min=1, max=10_000),
              help="T the model runs for (their --step; nir: default 10).")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False),
              help="state_dict saved by their training script (.pth).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Folded network to write (.h5).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Outputs (default: read off the classifier).")
@click.option("--input-shape", help="C,H,W of one image (default: C of the first conv, 32x32; 224x224 for the "
                                    "ImageNet resnet18 and resnet34).")
@click.option("--ctsn-form", type=click.Choice(["static", "event"]), default="static", show_default=True,
              help="ctsn: the complemental term's form (their 'static', or 'dvs' = event).")
@click.option("--dt", type=click.FloatRange(min=0, min_open=True),
              help="nir: the time step (default: 1e-4 for snntorch, the dt of its export; 1e-3 otherwise).")
@click.option("--discretisation", type=click.Choice(["snntorch", "norse", "exp"]), default="snntorch",
              show_default=True, help="nir: snntorch/norse: beta = 1 - dt/tau (forward Euler); exp: exp(-dt/tau).")
@click.option("--reset", type=click.Choice(["nir", "subtract"]), default="nir", show_default=True,
              help="nir: reset to v_reset = 0 as NIR states it, or by subtraction (snnTorch's default "
                   "reset_mechanism, which its export does not record).")
@click.option("--encoding", type=click.Choice(["direct", "spikes"]), default="direct", show_default=True,
              help="nir: the input is a real value fed every step, or a ternary spike tensor per step.")
@click.option("--li-readout", type=click.Choice(["refuse", "mean"]), default="refuse", show_default=True,
              help="nir: an LI/CubaLI readout becomes evsim's mean readout (its leak is not applied).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@user_errors
def import_(graph, source, arch, timesteps, checkpoint, out, num_classes, input_shape, ctsn_form, dt,
            discretisation, reset, encoding, li_readout, force):
    """Import a checkpoint trained with the papers' own code and fold it into an evsim network (needs torch),
    or a NIR graph (--from nir GRAPH; no torch)."""
    if source == "nir":
        if graph is None:
            raise click.UsageError("--from nir needs the NIR file: evsim import --from nir GRAPH.nir --out F.h5")
        from .bridge.nir import nir_to_network
        from .files import check_writable_target
        from .format import write_network
        shape = None
        if input_shape:
            try:
                shape = tuple(int(v) for v in input_shape.split(","))
            except ValueError:
                raise click.BadParameter(f"{input_shape!r} is not comma-separated integers",
                                         param_hint="--input-shape") from None
        check_writable_target(out, force)
        network = nir_to_network(graph, timesteps or 10, dt, discretisation, reset, shape, encoding,
                                 li_readout == "mean")
        write_network(network, out, overwrite=force)
        click.echo(f"wrote {out}: NIR {graph}, T={network.timesteps}, input {tuple(network.input_shape)}, "
                   f"{network.n_classes} outputs; {len(network.populations)} populations, "
                   f"{len(network.projections)} projections, {network.n_params} parameters "
                   f"({discretisation}, dt {network.provenance['dt']:g}, reset {reset})")
        return
    if graph is not None or arch is None or checkpoint is None or timesteps is None:
        raise click.UsageError(f"--from {source} needs --arch, --timesteps and --checkpoint (and no GRAPH argument)")
    need_torch()
    from .bridge.papers import import_checkpoint, parse_input_shape
    from .files import check_writable_target
    from .format import write_network
    check_writable_target(out, force)
    _, network = import_checkpoint(checkpoint, source, arch, timesteps, num_classes, parse_input_shape(input_shape),
                                   ctsn_form)
    write_network(network, out, overwrite=force)
    click.echo(f"wrote {out}: {source} {arch}, T={timesteps}, input {tuple(network.input_shape)}, "
               f"{network.n_classes} outputs; {len(network.populations)} populations, "
               f"{len(network.projections)} projections, {network.n_params} parameters")


# ------------------------------------------- whole datasets and sweeps (evsim/distributed.py)
def _dataset_options(fn):
    """Options shared by eval and sweep: the data, where the chunks run, the engine's settings."""
    for opt in reversed([
        click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False), help="Folded network (HDF5)."),
        click.option("--data", "-d", required=True,
                     help="fashion-mnist (test split), FILE.npy, FILE.npz[:KEY] or FILE.h5[:/PATH]; read chunk by chunk."),
        click.option("--labels", help="Labels (N integers), in any form --data takes (a dataset brings its own)."),
        click.option("--workers", type=click.IntRange(min=1),
                     help="Run on a Dask LocalCluster of N worker processes (needs evsim[distributed])."),
        click.option("--scheduler", help="Run on an existing Dask cluster: the scheduler's address (tcp://host:8786)."),
        click.option("--chunk-size", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Samples per chunk (the unit of work, of progress and of resuming)."),
        click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
                     help="For real-valued networks; a fixed-point one (a file from evsim quantize, or a weight_bits "
                          "point of a sweep) runs in int32."),
        click.option("--conv-mode", type=click.Choice(["kernel", "explicit"]), default="kernel", show_default=True),
        click.option("--threads", type=click.IntRange(min=1),
                     help="Engine threads per process (default: all cores here; cores / N with --workers N)."),
        click.option("--energy-model", default="45nm-fp32", show_default=True),
        click.option("--first-layer-macs", "mac_basis", type=click.Choice(["nonzero", "all"]), default="nonzero",
                     show_default=True),
        click.option("--progress/--no-progress", default=None,
                     help="Chunks, samples/s and ETA on stderr (default: when stderr is a terminal)."),
    ]):
        fn = opt(fn)
    return fn


@main.command("eval")
@_dataset_options
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Results file (HDF5): every sample's prediction, label, outputs and counters, and the report. "
                   "Running again with the same --out resumes.")
@click.option("--force", is_flag=True, help="Replace an existing --out (and discard partial results that do not fit).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (report, accuracy, confusion matrix).")
@user_errors
def eval_(weights, data, labels, workers, scheduler, chunk_size, limit, dtype, conv_mode, threads, energy_model,
          mac_basis, progress, out, force, as_json):
    """Run a network over a whole dataset, here or on a Dask cluster, with bit-identical results."""
    from .distributed import evaluate
    from .reports import format_report
    r = evaluate(weights, data, labels, workers=workers, scheduler=scheduler, chunk_size=chunk_size, out=out,
                 force=force, dtype=dtype, conv_mode=conv_mode, threads=threads, progress=progress,
                 energy=energy_model, mac_basis=mac_basis, limit=limit)
    doc = {"weights": str(weights), "data": str(data), "samples": r.samples, "chunks": r.chunks,
           "chunks_resumed": r.chunks_resumed, "where": r.where, "seconds": r.seconds,
           "samples_per_s": r.samples_per_s, "out": r.out, "accuracy": r.accuracy, "correct": r.correct,
           "confusion": None if r.confusion is None else r.confusion.tolist()}
    doc.update(r.report.to_dict())
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    if r.accuracy is not None:
        click.echo(f"accuracy: {100 * r.accuracy:.2f}% ({r.correct}/{r.samples})")
    click.echo("")
    click.echo(format_report(r.report))
    rate = f" ({r.samples_per_s:.1f} samples/s)" if r.samples_per_s else ""
    resumed = f", {r.chunks_resumed} resumed" if r.chunks_resumed else ""
    click.echo(f"  run: {r.samples} samples in {r.chunks} chunks{resumed}, {r.where}, {r.seconds:.3f} s{rate}")
    if r.out:
        click.echo(f"wrote {r.out}")


@main.command()
@_dataset_options
@click.option("--grid", "grid", multiple=True, required=True,
              help="NAME=V1,V2,... (repeatable; every combination runs): timesteps, threshold_scale, weight_bits "
                   "(quantise each point from the same file, as evsim quantize; such points run in int32), "
                   "membrane_bits (with weight_bits).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Table to write: OUT.csv and OUT.md (a .csv or .md suffix is dropped). Finished points and "
                   "chunks are kept in OUT.partial/ until then: running again with the same --out resumes.")
@click.option("--force", is_flag=True, help="Replace existing tables (and discard partial results that do not fit).")
@user_errors
def sweep(weights, data, labels, workers, scheduler, chunk_size, limit, dtype, conv_mode, threads, energy_model,
          mac_basis, progress, grid, out, force):
    """Run every point of a parameter grid over a dataset and write one table (CSV and Markdown)."""
    from pathlib import Path

    from .distributed import parse_grid, sweep as run_sweep, table_base
    from .reports import energy_model as get_energy_model
    get_energy_model(energy_model)
    g = parse_grid(grid)
    base = table_base(out)

    def title(points):
        arith = "int32 (fixed point)" if any("weight_bits" in p.params for p in points) else dtype
        return f"evsim sweep: {weights} on {data} ({points[0].result.samples} samples, {arith}, {energy_model})\n"

    points = run_sweep(weights, data, g, labels, workers=workers, scheduler=scheduler, chunk_size=chunk_size,
                       dtype=dtype, conv_mode=conv_mode, threads=threads, progress=progress, energy=energy_model,
                       mac_basis=mac_basis, limit=limit, out=base, force=force, title=title)
    csv_path, md_path = Path(base + ".csv"), Path(base + ".md")
    click.echo(md_path.read_text().rstrip())
    done = sum(p.result.chunks_resumed == p.result.chunks for p in points)
    part = sum(0 < p.result.chunks_resumed < p.result.chunks for p in points)
    if done or part:
        click.echo(f"resumed from {base}.partial: {done} finished point(s), {part} point(s) part done")
    click.echo(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":  # pragma: no cover
    main()
