"""evsim eval / sweep (evsim/distributed.py, evsim/data.py): lazy readers of hostile files, results
bit for bit those of one in-process run whatever the chunking and the workers, a worker killed
mid-run, resuming from partial results, corrupt chunks, and the command line."""

from __future__ import annotations

import json
import os
import signal

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import networks
from evsim import compile_network, run, write_network
from evsim.cli import main
from evsim.data import open_data
from evsim.distributed import COUNTERS, EvalError, evaluate, parse_grid, sweep, write_table
from evsim.errors import EvsimError, InputError
from evsim.reports import build_report

distributed = pytest.importorskip("distributed")

N = 23


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    net = networks.residual_net()
    write_network(net, d / "net.h5")
    x = networks.random_input(net, N, seed=3).astype(np.float32)
    y = (np.arange(N) * 7) % 5
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    cn = compile_network(net, dtype="float32")
    ref = run(cn, x, batch_size=64)
    return dict(dir=d, net=net, x=x, y=y, weights=str(d / "net.h5"), data=str(d / "x.npy"), labels=str(d / "y.npy"),
                ref=ref, report=build_report(cn, ref).to_dict())


def _per_sample_ref(net, ref):
    c = ref.counters
    out = {"outputs": ref.outputs, "input_events": c.input_events}
    for k in ("spikes_pos", "spikes_neg"):
        out[k] = np.stack([getattr(c, k)[p.name] for p in net.populations], 1)
    for k in ("events_in", "synaptic_ops", "macs", "macs_nonzero"):
        out[k] = np.stack([getattr(c, k)[p.name] for p in net.projections], 1)
    return out


def _same(case, r):
    """Every per-sample array and the whole report identical to one in-process engine.run."""
    assert r.report.to_dict() == case["report"]
    want = _per_sample_ref(case["net"], case["ref"])
    for k in COUNTERS + ("outputs",):
        assert np.array_equal(r.per_sample[k], want[k]), k
        assert r.per_sample[k].dtype == want[k].dtype
    assert np.array_equal(r.predictions, case["ref"].predictions)


@pytest.fixture(scope="module")
def threads_client():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            Client(cl) as c:
        yield c


@pytest.mark.parametrize("chunk", [1, 4, N, 100])
def test_in_process_identical_for_any_chunk_size(case, chunk):
    r = evaluate(case["weights"], case["data"], case["labels"], chunk_size=chunk, keep_samples=True)
    _same(case, r)
    assert r.chunks == -(-N // chunk)
    assert r.correct == int((case["ref"].predictions == case["y"]).sum())
    conf = np.zeros((5, 5), np.int64)
    np.add.at(conf, (case["y"], case["ref"].predictions), 1)
    assert np.array_equal(r.confusion, conf)


@pytest.mark.parametrize("chunk", [3, 8])
def test_dask_identical_to_in_process(case, threads_client, chunk):
    r = evaluate(case["weights"], case["data"], case["labels"], client=threads_client, chunk_size=chunk,
                 keep_samples=True)
    _same(case, r)


def test_killed_worker_loses_nothing_and_counts_nothing_twice(case, tmp_path):
    """Worker processes over loopback; after the first chunk, one worker that holds tasks is SIGKILLed."""
    from distributed import Client, LocalCluster
    x = np.concatenate([case["x"]] * 3)                   # 69 samples, 18 chunks of 4
    ref = run(compile_network(case["net"], dtype="float32"), x)
    killed = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}) as cl, Client(cl) as c:
        pids = c.run(os.getpid)

        def kill(idx, done):
            if killed:
                return
            busy = {w: len(k) for w, k in c.processing().items()}
            victim = max(busy, key=busy.get)
            if busy[victim]:              # kill the first time a worker holds tasks (the scheduler's view)
                killed.update(worker=victim, holding=busy[victim], after=done)
                os.kill(pids[victim], signal.SIGKILL)

        r = evaluate(case["weights"], x, np.tile(case["y"], 3), client=c, chunk_size=2, keep_samples=True,
                     out=tmp_path / "r.h5", on_chunk=kill)
    assert killed and killed["holding"] > 0 and killed["after"] < 35
    assert r.chunks == 35 and r.chunks_resumed == 0
    assert np.array_equal(r.per_sample["outputs"], ref.outputs)
    for p in case["net"].populations:
        assert np.array_equal(r.per_sample["spikes_pos"][:, [q.name for q in case["net"].populations].index(p.name)],
                              ref.counters.spikes_pos[p.name])
    cn = compile_network(case["net"], dtype="float32")
    assert r.report.to_dict() == build_report(cn, ref).to_dict()
    with h5py.File(tmp_path / "r.h5") as f:
        assert np.array_equal(f["samples/outputs"][()], ref.outputs)
        assert f["samples/predictions"].shape == (69,)


def test_out_file_holds_everything_and_resumes(case, tmp_path):
    out = tmp_path / "res.h5"
    seen = []

    def crash(idx, done):
        seen.append(idx)
        if done == 3:
            raise KeyboardInterrupt      # a run stopped after three chunks

    with pytest.raises(KeyboardInterrupt):
        evaluate(case["weights"], case["data"], case["labels"], chunk_size=4, out=out, on_chunk=crash)
    partial = tmp_path / "res.h5.partial"
    assert not out.exists() and len(list(partial.glob("chunk-*.npz"))) == 3
    # a different chunk size, network or data: refused in one line, the partial results kept
    with pytest.raises(EvalError, match="different chunk size"):
        evaluate(case["weights"], case["data"], case["labels"], chunk_size=5, out=out)
    other = tmp_path / "other.h5"
    write_network(networks.residual_net(seed=9), other)
    with pytest.raises(EvalError, match="different network"):
        evaluate(str(other), case["data"], case["labels"], chunk_size=4, out=out)
    with pytest.raises(EvalError, match="different data"):
        evaluate(case["weights"], case["data"], case["labels"], chunk_size=4, out=out, limit=20)
    assert len(list(partial.glob("chunk-*.npz"))) == 3
    seen.clear()
    r = evaluate(case["weights"], case["data"], case["labels"], chunk_size=4, out=out, keep_samples=True,
                 on_chunk=lambda i, d: seen.append(i))
    assert r.chunks_resumed == 3 and len(seen) == r.chunks - 3     # the finished chunks were not recomputed
    _same(case, r)
    assert not partial.exists()
    want = _per_sample_ref(case["net"], case["ref"])
    with h5py.File(out) as f:
        assert f.attrs["format"] == "evsim-eval"
        for k in COUNTERS + ("outputs",):
            assert np.array_equal(f["samples"][k][()], want[k]), k
        assert np.array_equal(f["samples/labels"][()], case["y"])
        assert np.array_equal(f["samples/predictions"][()], case["ref"].predictions)
        assert json.loads(f.attrs["report"]) == json.loads(json.dumps(case["report"]))
        assert f["report"].attrs["accuracy"] == r.accuracy
        assert np.array_equal(f["report/confusion"][()], r.confusion)
        assert list(f["report/firing_rate"][()]) == [p["firing_rate"] for p in case["report"]["populations"]]
    with pytest.raises(EvsimError, match="already exists"):
        evaluate(case["weights"], case["data"], case["labels"], chunk_size=4, out=out)


def test_corrupt_chunk_is_one_line_and_keeps_what_was_done(case, tmp_path):
    x = case["x"].copy()
    x[9, 0, 2, 3] = np.nan
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("images/test", data=x, chunks=(2,) + x.shape[1:], compression="gzip")
    out = tmp_path / "r.h5"
    with pytest.raises(InputError, match=r"chunk 2: sample 9 holds NaN"):
        evaluate(case["weights"], f"{tmp_path / 'd.h5'}:/images/test", case["labels"], chunk_size=4, out=out)
    done = sorted(p.name for p in (tmp_path / "r.h5.partial").glob("chunk-*.npz"))
    assert done == ["chunk-00000000.npz", "chunk-00000001.npz"]
    x[9, 0, 2, 3] = 7.0                                     # outside the network's input range [-3, 3]
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(InputError, match=r"chunk 1: sample 9 holds values outside .*\[-3, 3\]"):
        evaluate(case["weights"], str(tmp_path / "big.npy"), chunk_size=8)


def test_readers_agree_and_refuse_hostile_files(case, tmp_path):
    x = case["x"]
    np.savez_compressed(tmp_path / "c.npz", images=x, labels=case["y"])
    np.savez(tmp_path / "s.npz", x)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("x", data=x)
        f["soft"] = h5py.SoftLink("/x")
        f["ext"] = h5py.ExternalLink("other.h5", "/x")
        f.create_dataset("text", data=np.array(["a"] * 4, dtype=object), dtype=h5py.string_dtype())
    for spec in (str(tmp_path / "c.npz") + ":images", str(tmp_path / "s.npz"), str(tmp_path / "d.h5") + ":/x",
                 case["data"]):
        with open_data(spec) as src:
            assert len(src) == N and np.array_equal(src.read(5, 12), x[5:12]) and np.array_equal(src.read(0, 3), x[:3])
    r = evaluate(case["weights"], str(tmp_path / "c.npz") + ":images", str(tmp_path / "c.npz") + ":labels",
                 chunk_size=6, keep_samples=True)
    _same(case, r)
    bad = {str(tmp_path / "c.npz"): "holds 2 arrays", str(tmp_path / "d.h5") + ":/soft": "soft link",
           str(tmp_path / "d.h5") + ":/ext": "external link", str(tmp_path / "d.h5") + ":/text": "real numbers",
           str(tmp_path / "d.h5") + ":/nope": "no dataset", str(tmp_path / "x.txt"): "give a dataset name"}
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    bad[str(tmp_path / "obj.npy")] = "Python objects"
    os.mkfifo(tmp_path / "fifo.npy")
    bad[str(tmp_path / "fifo.npy")] = "named pipe"
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "obj.npy").read_bytes()[:0] + open(case["data"], "rb").read()[:300])
    bad[str(tmp_path / "trunc.npy")] = "truncated"
    for spec, msg in bad.items():
        with pytest.raises(EvsimError, match=msg):
            open_data(spec).close()


def test_sweep_table_and_parameters(case, tmp_path, threads_client):
    grid = parse_grid(["timesteps=2,4", "threshold_scale=0.8,1"])
    pts = sweep(case["weights"], case["data"], grid, case["labels"], client=threads_client, chunk_size=8)
    assert [p.params for p in pts] == [{"timesteps": 2, "threshold_scale": 0.8}, {"timesteps": 2, "threshold_scale": 1.0},
                                       {"timesteps": 4, "threshold_scale": 0.8}, {"timesteps": 4, "threshold_scale": 1.0}]
    # the point equal to the file's own network is the in-process run of the file, bit for bit
    assert pts[3].result.report.to_dict() == case["report"]
    # a point is the network with its parameters applied
    net2 = networks.residual_net()
    net2.timesteps = 2
    for p in net2.populations:
        p.params["v_threshold"] *= 0.8
    cn = compile_network(net2, dtype="float32")
    assert pts[0].result.report.to_dict() == build_report(cn, run(cn, case["x"])).to_dict()
    csv_path, md_path = write_table(pts, str(tmp_path / "t"))
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("timesteps,threshold_scale,accuracy,firing_rate,synaptic_ops") and len(lines) == 5
    assert sum(line.startswith("| ") for line in md_path.read_text().splitlines()) == 5
    with pytest.raises(EvalError, match="unknown parameter 'bits'"):
        parse_grid(["bits=4,8"])
    with pytest.raises(EvalError, match="timesteps must be"):
        parse_grid(["timesteps=0"])


def _runner():
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def test_cli_eval_and_sweep(case, tmp_path):
    r = _runner().invoke(main, ["eval", "-w", case["weights"], "-d", case["data"], "--labels", case["labels"],
                                "--chunk-size", "5", "--out", str(tmp_path / "r.h5"), "--json", "--progress"])
    assert r.exit_code == 0, r.output + r.stderr
    doc = json.loads(r.stdout)
    assert doc["samples"] == N and doc["chunks"] == 5 and doc["totals"] == case["report"]["totals"]
    assert "5/5 chunks" in r.stderr and "ETA" in r.stderr
    r = _runner().invoke(main, ["eval", "-w", case["weights"], "-d", case["data"], "--out", str(tmp_path / "r.h5")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    r = _runner().invoke(main, ["eval", "-w", case["weights"], "-d", str(tmp_path / "none.npy")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    r = _runner().invoke(main, ["eval", "-w", case["weights"], "-d", case["data"], "--workers", "2",
                                "--scheduler", "tcp://127.0.0.1:1"])
    assert r.exit_code == 1 and "not both" in r.stderr
    r = _runner().invoke(main, ["sweep", "-w", case["weights"], "-d", case["data"], "--labels", case["labels"],
                                "--grid", "threshold_scale=0.9,1.1", "--out", str(tmp_path / "tab.csv")])
    assert r.exit_code == 0, r.output + r.stderr
    assert (tmp_path / "tab.csv").exists() and (tmp_path / "tab.md").exists()
    r = _runner().invoke(main, ["sweep", "-w", case["weights"], "-d", case["data"], "--grid", "width=1",
                                "--out", str(tmp_path / "tab2")])
    assert r.exit_code == 1 and r.stderr.strip() == ("Error: unknown parameter 'width' in --grid (known: timesteps, "
                                                     "threshold_scale, weight_bits, membrane_bits)")


def test_weight_bits_points_are_the_quantised_network(case, tmp_path):
    """A sweep point with weight_bits runs what `evsim quantize` writes, in int32, bit for bit as a run of
    that file; its integer outputs survive an interrupted, resumed --out; membrane_bits alone is refused."""
    from evsim.fixedpoint import quantize
    pts = sweep(case["net"], case["x"], parse_grid(["weight_bits=4,8", "membrane_bits=12"]), case["y"])
    assert [p.params for p in pts] == [{"weight_bits": 4, "membrane_bits": 12}, {"weight_bits": 8, "membrane_bits": 12}]
    for p in pts:
        q = quantize(case["net"], p.params["weight_bits"], membrane_bits=12)
        cn = compile_network(q, dtype="int32")
        ref = run(cn, case["x"], batch_size=64)
        assert p.result.report.to_dict() == build_report(cn, ref).to_dict()
        assert p.result.correct == int((ref.predictions == case["y"]).sum())
    q = quantize(case["net"], 4, membrane_bits=12)
    q_file = tmp_path / "q.h5"
    write_network(q, q_file)
    out = tmp_path / "q_res.h5"

    def stop(idx, done):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(str(q_file), case["data"], case["labels"], chunk_size=5, out=out, on_chunk=stop)
    r = evaluate(str(q_file), case["data"], case["labels"], chunk_size=5, out=out, keep_samples=True)
    assert r.chunks_resumed == 2            # int64 outputs of the finished chunks were taken as they are
    ref = run(compile_network(q, dtype="int32"), case["x"], batch_size=64)
    assert r.per_sample["outputs"].dtype == np.int64 and np.array_equal(r.per_sample["outputs"], ref.outputs)
    with h5py.File(out) as f:
        assert f["samples/outputs"].dtype == np.int64
    with pytest.raises(EvalError, match="membrane_bits goes with weight_bits"):
        evaluate(case["net"], case["x"], params={"membrane_bits": 12})
    with pytest.raises(EvalError, match="fixed point already"):
        evaluate(q, case["x"], params={"weight_bits": 4})
    with pytest.raises(EvalError, match="weight_bits must be between 2 and 16"):
        parse_grid(["weight_bits=1"])


def _table_without_rate(path):
    """The CSV table with its timing column (samples_per_s, the one figure that is not a function of the data)
    dropped: every other cell must be bit for bit that of an uninterrupted run."""
    lines = path.read_text().splitlines()
    col = lines[0].split(",").index("samples_per_s")
    return [[c for j, c in enumerate(line.split(",")) if j != col] for line in lines]


def test_sweep_out_resumes_points_and_chunks(case, tmp_path):
    """A sweep with out, stopped after two points, then stopped again within the third, then run to the end:
    finished points and chunks are not recomputed, and the table is that of an uninterrupted run."""
    grid = parse_grid(["threshold_scale=0.8,1", "weight_bits=4,8"])     # float and int32 points: 4 points
    whole = sweep(case["weights"], case["data"], grid, case["labels"], chunk_size=5, out=tmp_path / "whole.csv")
    assert not (tmp_path / "whole.partial").exists()
    out, partial = tmp_path / "t", tmp_path / "t.partial"
    seen = []

    def stop_after_two_points(i, p, r):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(case["weights"], case["data"], grid, case["labels"], chunk_size=5, out=out, on_point=stop_after_two_points,
              on_chunk=lambda i, c, d: seen.append((i, c)))
    assert sorted(p.name for p in partial.glob("point-*.npz")) == ["point-0000.npz", "point-0001.npz"]
    assert not (tmp_path / "t.csv").exists() and len(seen) == 10

    def stop_in_point_two(i, c, d):
        seen.append((i, c))
        if i == 2 and d == 3:
            raise KeyboardInterrupt

    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        sweep(case["weights"], case["data"], grid, case["labels"], chunk_size=5, out=out, on_chunk=stop_in_point_two)
    assert seen == [(2, 0), (2, 1), (2, 2)]                      # points 0 and 1 were not run again
    assert len(list((partial / "point-0002.partial").glob("chunk-*.npz"))) == 3
    # anything that would change the results is refused in one line, the partial results kept
    for kw, what in ((dict(grid=parse_grid(["threshold_scale=0.8,1", "weight_bits=4,6"])), "different grid"),
                     (dict(chunk_size=4), "different chunk size"), (dict(limit=20), "different data"),
                     (dict(labels=case["y"][::-1].copy()), "different labels"),
                     (dict(weights=case["net"], dtype="float64"), "different dtype")):
        args = dict(weights=case["weights"], grid=grid, labels=case["labels"], chunk_size=5)
        args.update(kw)
        with pytest.raises(EvalError, match=what) as e:
            sweep(args.pop("weights"), case["data"], args.pop("grid"), args.pop("labels"), out=out, **args)
        assert "\n" not in str(e.value) and "--force" in str(e.value)
    other = tmp_path / "other.h5"
    write_network(networks.residual_net(seed=9), other)
    with pytest.raises(EvalError, match="different network"):
        sweep(str(other), case["data"], grid, case["labels"], chunk_size=5, out=out)
    assert len(list(partial.glob("point-*.npz"))) == 2

    seen.clear()
    pts = sweep(case["weights"], case["data"], grid, case["labels"], chunk_size=5, out=out,
                on_chunk=lambda i, c, d: seen.append((i, c)))
    assert seen == [(2, 3), (2, 4)] + [(3, c) for c in range(5)]
    assert [(p.result.chunks_resumed, p.result.chunks) for p in pts] == [(5, 5), (5, 5), (3, 5), (0, 5)]
    assert not partial.exists()
    assert _table_without_rate(tmp_path / "t.csv") == _table_without_rate(tmp_path / "whole.csv")
    for a, b in zip(pts, whole):
        assert a.params == b.params and a.result.report.to_dict() == b.result.report.to_dict()
        assert np.array_equal(a.result.predictions, b.result.predictions)
        assert np.array_equal(a.result.confusion, b.result.confusion) and a.result.correct == b.result.correct
        for k in COUNTERS:
            assert np.array_equal(a.result.totals[k], b.result.totals[k])
    # points finished in the first run keep that run's samples/s; the table is refused without --force
    assert pts[0].result.samples_per_s is not None
    with pytest.raises(EvsimError, match="already exists"):
        sweep(case["weights"], case["data"], grid, case["labels"], chunk_size=5, out=out)


def test_cli_sweep_resumes_and_refuses_other_settings(case, tmp_path):
    out = str(tmp_path / "tab")
    args = ["sweep", "-w", case["weights"], "-d", case["data"], "--labels", case["labels"], "--chunk-size", "6",
            "--grid", "threshold_scale=0.9,1.1", "--out", out]

    def stop(i, p, r):
        raise KeyboardInterrupt

    # the same settings as the command line's defaults: a partial sweep the command picks up
    with pytest.raises(KeyboardInterrupt):
        sweep(case["weights"], case["data"], parse_grid(["threshold_scale=0.9,1.1"]), case["labels"], chunk_size=6,
              out=out, on_point=stop)
    r = _runner().invoke(main, args[:-4] + ["--grid", "threshold_scale=0.9,1.2", "--out", out])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "different grid" in r.stderr, r.output + r.stderr
    r = _runner().invoke(main, args)
    assert r.exit_code == 0, r.output + r.stderr
    assert "resumed from" in r.stdout and "1 finished point(s)" in r.stdout
    assert not (tmp_path / "tab.partial").exists()
    whole = str(tmp_path / "whole")
    r = _runner().invoke(main, args[:-1] + [whole])
    assert r.exit_code == 0 and "resumed" not in r.stdout
    assert _table_without_rate(tmp_path / "tab.csv") == _table_without_rate(tmp_path / "whole.csv")
    # a partial sweep of another grid is discarded with --force
    with pytest.raises(KeyboardInterrupt):
        sweep(case["weights"], case["data"], parse_grid(["threshold_scale=0.7,1.1"]), case["labels"], chunk_size=6,
              out=out, on_point=stop, force=True)
    r = _runner().invoke(main, args + ["--force"])
    assert r.exit_code == 0 and "resumed" not in r.stdout, r.output + r.stderr
    assert _table_without_rate(tmp_path / "tab.csv") == _table_without_rate(tmp_path / "whole.csv")


def test_own_local_cluster_listens_on_loopback_only_and_runs_no_profiler():
    """`--workers N` starts a cluster whose every listening socket (scheduler, HTTP pages, workers, nannies) is on
    127.0.0.1, and whose workers do not sample the engine thread's stack every 10 ms for a dashboard;
    Dask's defaults would open the HTTP port on every interface and profile."""
    import dask
    import psutil

    from evsim.distributed import runner
    def listening():      # (pid, address) of every listening socket of this process and its children
        procs = [psutil.Process()] + psutil.Process().children(recursive=True)
        return {(p.pid, c.laddr) for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    before = listening()          # other tests' clusters in this process (module fixtures) are not this one's
    with runner(workers=1, threads=1) as run:
        opened = listening() - before
        assert len(opened) >= 3 and {a.ip for _, a in opened} == {"127.0.0.1"}, opened
        profiling = run.client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert list(profiling.values()) == [False]
    assert dask.config.get("distributed.worker.profile.enabled") is True     # the caller's config is left alone
