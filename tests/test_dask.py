"""identirep.dask on a LocalCluster of two worker processes: matrix over model files equals
the single-process matrix to the last bit (the same code computes each number: the per-model
statistics and each pair's cells; on this BLAS the products do not depend on the number of
threads), also when a worker is killed mid-run; the CLI's --scheduler."""
import contextlib
import json
import logging
import os
import sys
import types

import numpy as np
import pytest

import identirep as ir
import identirep.dask as idk
from identirep import _dask_worker as W
from identirep import constructions as C
from identirep.cli import main

from test_accumulate import _pair, assert_reports_match

OPTS = dict(num_samples=20, seed=3, max_label_sets=30, rep_sets=40)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed",
                                      reason="dask.distributed is not installed (identirep[dask])")
    from identirep.dask import kept_environ
    with kept_environ(), distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
            silence_logs=logging.ERROR) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    import distributed
    with distributed.Client(cluster) as c:
        yield c


def _model(N, V, M, seed, dtype=np.float64, name=None):
    m = C.random_model(N=N, V=V, M=M, seed=seed, bias=True, name=name)
    return ir.Model(*(np.asarray(x, dtype) for x in (m.f, m.g, m.bias)), name=name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Four models on N = 900 inputs and V = 40 labels: two float64 of M = 4 (one a noisy copy
    of the other), a float32 one (its pairs run in float32), one of M = 5 (no d_SVD with
    it: failures in the matrix)."""
    d = tmp_path_factory.mktemp("models")
    base = _model(900, 40, 4, 0, name="base")
    models = [base, C.perturbed_copy(base, 0.3, seed=1),
              _model(900, 40, 4, 2, np.float32, name="f32"), _model(900, 40, 5, 3, name="m5")]
    return [str(ir.save_model(m, d / f"{k}.safetensors")) for k, m in enumerate(models)]


def assert_same(got, want):
    assert got.names == want.names
    for k in want.values:
        assert np.array_equal(got.values[k], want.values[k], equal_nan=True), k
    assert got.pairs == want.pairs and got.failures == want.failures
    assert got.notes == want.notes


def test_matrix_equals_the_single_process_matrix(client, files):
    got = idk.matrix(files, client, **OPTS)
    want = ir.matrix(ir.io.load_models(files), **OPTS)
    assert_same(got, want)
    assert any(f["measure"] == "max_d_svd" for f in got.failures)    # M = 4 vs 5
    assert np.isfinite(got.values["d_llv"]).all()


def test_statistics_once_per_model_and_no_arrays_in_results(client, files):
    """f's and g's moments are computed once per model and compute dtype, by the statistics
    tasks; the pair tasks take them. No task returns as much as one column of f (each
    result as the scheduler sizes it, not a mean)."""
    client.run(_count_calls, "identirep._model_cache", "_single_moments")
    with _task_sizes(client) as sizes:
        idk.matrix(files[:3], client, **OPTS)
    counts = client.run(_calls_counted, "identirep._model_cache", "_single_moments")
    # float64, float64, float32: the first pair runs in float64, the two with the float32
    # model in float32; 5 (model, dtype), f and g each
    assert sum(counts.values()) == 2 * 5, counts
    assert not any(client.run(_kept_models).values())    # the workers let go of the models
    column = 900 * 8           # one float64 column of f: N = 900 >> M^2 = 16
    results = {k: v for k, v in sizes["result"].items() if k.startswith("identirep")}
    assert {k.split("-")[1] for k in results} >= {"pair", "statistics", "read"}
    assert max(results.values()) < column, results      # each task's result, not a mean


def _count_calls(module: str, name: str):
    """On a worker: count the calls of module.name (``_calls_counted`` puts it back)."""
    import importlib
    mod = importlib.import_module(module)
    orig = mod.__dict__.setdefault(f"_original_{name}", getattr(mod, name))
    setattr(mod, f"_calls_{name}", 0)

    def counting(*a, **kw):
        setattr(mod, f"_calls_{name}", getattr(mod, f"_calls_{name}") + 1)
        return orig(*a, **kw)
    setattr(mod, name, counting)


def _calls_counted(module: str, name: str) -> int:
    import importlib
    mod = importlib.import_module(module)
    setattr(mod, name, mod.__dict__.pop(f"_original_{name}"))
    return getattr(mod, f"_calls_{name}")


def _kept_models():
    return len(W._LOADED)


@contextlib.contextmanager
def _task_sizes(client):
    """{"spec": bytes of each task's pickled spec, "result": the largest size (dask.sizeof)
    of each task's result}, per task key, as the scheduler sees them while in the block."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskSizes(SchedulerPlugin):
        name = "identirep-task-sizes"

        async def start(self, scheduler):
            self.scheduler = scheduler
            scheduler.identirep_task_sizes = {"spec": {}, "result": {}}

        def transition(self, key, start, finish, *a, **kw):
            import pickle
            ts, sizes = self.scheduler.tasks.get(key), self.scheduler.identirep_task_sizes
            if ts is None:
                return
            if finish == "processing" and ts.run_spec is not None:
                sizes["spec"][str(key)] = len(pickle.dumps(ts.run_spec))
            if finish == "memory":
                sizes["result"][str(key)] = max(ts.nbytes, sizes["result"].get(str(key), 0))
    out = {}
    client.register_plugin(TaskSizes())
    try:
        yield out
        out.update(client.run_on_scheduler(lambda dask_scheduler:
                                           dask_scheduler.identirep_task_sizes))
    finally:
        client.run_on_scheduler(lambda dask_scheduler:
                                dask_scheduler.remove_plugin("identirep-task-sizes"))


@pytest.mark.parametrize("per_task", [1, 2])
def test_a_worker_killed_mid_run_gives_the_same_result(client, files, tmp_path, per_task):
    """The worker process that starts the first pair task dies then (os._exit), with the
    statistics it held; Dask runs its tasks again on the other worker and on the one its
    nanny starts in its place, and the matrix is the same."""
    from distributed.diagnostics.plugin import WorkerPlugin
    flag = str(tmp_path / "killed")

    class KillOnce(WorkerPlugin):
        def __init__(self, flag):
            self.flag = flag

        def transition(self, key, start, finish, **kw):
            if finish != "executing" or "identirep-pair" not in str(key):
                return
            try:   # one kill in all: the first worker to start a pair
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(1)

    before = set(client.scheduler_info()["workers"])
    client.register_plugin(KillOnce(flag), name="kill-once")
    try:
        got = idk.matrix(files, client, models_per_task=per_task, **OPTS)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert os.path.exists(flag)
    client.wait_for_workers(2, timeout=30)
    assert set(client.scheduler_info()["workers"]) != before      # one was replaced
    assert_same(got, ir.matrix(ir.io.load_models(files), **OPTS))


def test_drop_masked_labels_as_load_models(client, tmp_path):
    paths = []
    for seed, masked in ((0, [3]), (1, [7, 11]), (2, [])):
        m = _model(300, 12, 2, seed)
        b = np.array(m.bias)
        b[masked] = -np.inf
        paths.append(str(tmp_path / f"{seed}.npz"))
        np.savez(paths[-1], f=m.f, g=m.g, b=b)
    seen = []
    got = idk.matrix(paths, client, drop_masked_labels=True, check=seen.extend, **OPTS)
    want = ir.matrix(ir.io.load_models(paths, True), **OPTS)
    assert_same(got, want)
    assert [m.V for m in seen] == [9] * 3 and list(seen[0].dropped_labels) == [3, 7, 11]


def test_errors_are_matrix_errors(client, files, tmp_path):
    other = str(ir.save_model(_model(800, 40, 4, 9), tmp_path / "n800.npz"))
    m = _model(900, 40, 4, 9)
    texts = []
    for k in range(3):      # the same inputs but for the text of model 2 (check_pair's check)
        tokens = np.arange(900) % 40
        tokens[5] += k == 2
        texts.append(str(ir.save_model(ir.Model(m.f, m.g, m.bias, tokens=tokens),
                                       tmp_path / f"text{k}.npz")))
    for paths, says in (([files[0], other], "different inputs"), (texts, "different texts")):
        with pytest.raises(ir.IdentirepError) as want:
            ir.matrix(ir.io.load_models(paths))
        with pytest.raises(ir.IdentirepError) as got:
            idk.matrix(paths, client)
        assert str(got.value) == str(want.value) and says in str(got.value)
        assert (got.value.reason, got.value.fix) == (want.value.reason, want.value.fix)
    with pytest.raises(FileNotFoundError):
        idk.matrix([files[0], str(tmp_path / "missing.npz")], client)
    for bad, match in (([files[0]], "at least two"), (files[0], "list of at least two"),
                       ([files[0], 3], r"paths\[1\] is int")):
        with pytest.raises(ir.IdentirepError, match=match):
            idk.matrix(bad, client)
    with pytest.raises(ir.IdentirepError, match="CPU backend"):
        idk.matrix(files, client, backend="cuda")
    with pytest.raises(ir.IdentirepError, match="unknown option"):
        idk.matrix(files, client, lamda=1)
    with pytest.raises(ir.IdentirepError, match="distributed.Client"):
        idk.matrix(files, client="tcp://x:1")

    def stop(models):
        raise ir.IdentirepError(f"stopped at {len(models)} models")
    with pytest.raises(ir.IdentirepError, match="stopped at 4 models"):
        idk.matrix(files, client, check=stop)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_compare_on_dask_arrays_equals_compare(client, dtype, rtol):
    """Chunks of 130 rows (f2: 90 rows, 2 columns; rechunked to f1's rows), merged 3 at a
    time in a tree: compare's report within the Accumulator's guarantee."""
    import dask.array as da
    f1, g1, b1, f2, g2, b2 = _pair(1000, 30, 4, 5, dtype, bias=True, seed=2)
    got = idk.compare(da.from_array(f1, chunks=(130, -1)), g1, da.from_array(f2, chunks=(90, 2)),
                      g2, b1, b2, client=client, split_every=3, seed=3, num_samples=30)
    want = ir.compare(ir.Model(f1, g1, b1), ir.Model(f2, g2, b2), seed=3, num_samples=30)
    assert got.N == 1000 and any("holds every one" in n for n in got.notes)
    assert_reports_match(got, want, rtol)


def test_compare_refuses_what_is_not_chunked_f(client):
    import dask.array as da
    f1, g1, _, f2, g2, _ = _pair(100, 10, 2, 2)
    with pytest.raises(ir.IdentirepError, match="2-d dask array"):
        idk.compare(f1, g1, da.from_array(f2), g2, client=client)
    with pytest.raises(ir.IdentirepError, match="one row per input"):
        idk.compare(da.from_array(f1), g1, da.from_array(f2[:90]), g2, client=client)
    with pytest.raises(ir.IdentirepError, match="split_every must be at least 2"):
        idk.compare(da.from_array(f1), g1, da.from_array(f2), g2, client=client, split_every=1)
    with pytest.raises(ir.IdentirepError, match="dimensions"):     # the Accumulator's check
        idk.compare(da.from_array(f1), g1, da.from_array(f2), g1[:, :1], client=client)


def test_parse_scheduler():
    assert idk.parse_scheduler("local:3") == ("local", 3)
    for ok in ("tcp://10.0.0.5:8786", "127.0.0.1:8786", "tls://sched.example.org:8786",
               "tcp://[::1]:8786"):
        assert idk.parse_scheduler(ok) == ("address", ok)
    for bad in ("local", "local:0", "local:x", "", "sched", "tcp://h:0", "h:70000", "a b:1"):
        with pytest.raises(ir.IdentirepError, match="local:N"):
            idk.parse_scheduler(bad)
    cores = os.cpu_count()
    assert idk.parse_scheduler(f"local:{2 * cores}") == ("local", 2 * cores)
    with pytest.raises(ir.IdentirepError, match=f"{2 * cores + 1} worker processes") as e:
        idk.parse_scheduler(f"local:{2 * cores + 1}")
    assert f"N <= {cores}" in e.value.fix


def _json_matrix(capsys, *args):
    assert main(["matrix", *args, "--json", "--num-samples", "20", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    out.pop("seconds")
    return out


def test_cli_scheduler_address(cluster, files, capsys):
    want = _json_matrix(capsys, *files)
    assert _json_matrix(capsys, *files, "--scheduler", cluster.scheduler_address) == want
    assert _json_matrix(capsys, *files, "--scheduler", cluster.scheduler_address,
                        "--models-per-task", "3") == want
    assert main(["matrix", *files, "--models-per-task", "2"]) == 2
    assert "--scheduler" in capsys.readouterr().err
    assert main(["matrix", *files, "--scheduler", cluster.scheduler_address,
                 "--models-per-task", "0"]) == 2


@pytest.mark.slow
def test_cli_scheduler_local(files, capsys):
    """--scheduler local:2 starts (and stops) a LocalCluster of its own: 2-6 s. The
    environment its nannies write into (OPENBLAS_NUM_THREADS=1, ...) is put back."""
    pytest.importorskip("distributed")
    want = _json_matrix(capsys, *files)
    before = dict(os.environ)
    assert _json_matrix(capsys, *files, "--scheduler", "local:2") == want
    assert dict(os.environ) == before


@pytest.mark.parametrize("value, says", [("local:0", "integer >= 1"), ("local", "local:N"),
                                         ("nohost", "neither local:N"), ("h:99999", "port"),
                                         ("local:8786", "cores")])
def test_cli_bad_scheduler_exits_2(files, capsys, value, says):
    assert main(["matrix", *files, "--scheduler", value]) == 2
    err = capsys.readouterr().err
    assert "--scheduler" in err and says in err


def test_cli_without_dask_names_the_extra(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)     # import distributed fails
    assert main(["matrix", *files, "--scheduler", "local:2"]) == 2
    assert 'identirep[dask]' in capsys.readouterr().err
    with pytest.raises(ir.IdentirepError, match=r"identirep\[dask\]"):
        idk.matrix(files)
    assert main(["matrix", *files[:2], "--num-samples", "5", "--json"]) == 0   # without it


def test_cli_no_scheduler_at_address(files, capsys, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(idk, "CONNECT_TIMEOUT", 0.5)
    assert main(["matrix", *files, "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "no Dask scheduler answered at tcp://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_dask_script_runs(capsys, monkeypatch):
    """benchmarks/bench_dask.py at a tiny size: its table row, results checked equal."""
    pytest.importorskip("distributed")
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_dask
    bench_dask.main(["--k", "3", "--n", "300", "--v", "20", "--m", "3", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| 3 | 3 | 300 |" in out and "x |" in out


def test_tokenizers_as_matrix(client, tmp_path):
    """Tokenizers whose settings differ: the note of matrix; whose strings differ: its error,
    or with check_tokenizer=False (or allow_tokenizer_mismatch() here) its values and notes."""
    base = _model(300, 12, 2, 0)
    labels = [f"tok{i}" for i in range(12)]
    other = labels[:6] + ["other"] + labels[7:]
    paths = []
    for k, (names, sha) in enumerate(((labels, "ab"), (labels, "cd"), (other, "ef"))):
        m = ir.Model(base.f, base.g, base.bias, labels=names,
                     metadata={"tokenizer": {"sha256": sha * 32, "size": 12}})
        paths.append(str(ir.save_model(m, tmp_path / f"tok{k}.safetensors")))
    got, want = idk.matrix(paths[:2], client, **OPTS), ir.matrix(ir.io.load_models(paths[:2]), **OPTS)
    assert_same(got, want)
    assert "settings differ" in got.notes[0]
    with pytest.raises(ir.IdentirepError) as refused:
        idk.matrix(paths, client, **OPTS)
    assert "token id 6 is 'tok6'" in str(refused.value)
    want = ir.matrix(ir.io.load_models(paths), check_tokenizer=False, **OPTS)
    for got in (idk.matrix(paths, client, check_tokenizer=False, **OPTS),
                _allowing(lambda: idk.matrix(paths, client, **OPTS))):
        assert_same(got, want)
        assert [n.split(":")[0] for n in got.notes] == ["tok0 vs tok1", "tok0 vs tok2",
                                                          "tok1 vs tok2"], got.notes
    # a first model naming no tokenizer passes against both; the pair of the other two is
    # refused all the same, named as matrix names it
    bare = str(ir.save_model(ir.Model(base.f, base.g, base.bias), tmp_path / "bare.safetensors"))
    trio = [bare, paths[0], paths[2]]
    with pytest.raises(ir.IdentirepError) as want:
        ir.matrix(ir.io.load_models(trio), **OPTS)
    with pytest.raises(ir.IdentirepError) as got:
        idk.matrix(trio, client, **OPTS)
    assert str(got.value) == str(want.value) and "tok0 vs tok2: " in str(got.value)
    # before any pair runs: the pass of (bare, huge) would fail first in pair order
    huge = ir.Model(base.f * 1e200, base.g, base.bias, labels=labels,
                    metadata={"tokenizer": {"sha256": "ab" * 32, "size": 12}})
    trio[1] = str(ir.save_model(huge, tmp_path / "huge.safetensors"))
    with pytest.raises(ir.IdentirepError) as want:
        ir.matrix(ir.io.load_models(trio), **OPTS)
    with pytest.raises(ir.IdentirepError) as got:
        idk.matrix(trio, client, **OPTS)
    assert str(got.value) == str(want.value) and "huge vs tok2: " in str(got.value)


def test_pairs_are_checked_by_tasks_only_where_their_models_differ(client, tmp_path,
                                                                    monkeypatch):
    """A check task runs for a pair of models that differ in what check_pair reads (labels,
    tokens, tokenizer, ...) and that the first model's check does not cover; none for
    models that share it all."""
    base = _model(300, 12, 2, 0)
    labels = [f"tok{i}" for i in range(12)]
    paths = [str(ir.save_model(ir.Model(base.f + 0.01 * k, base.g, base.bias, labels=lab),
                               tmp_path / f"m{k}.npz"))
             for k, lab in enumerate((None, labels, labels, None))]
    keys, submit = [], client.submit
    monkeypatch.setattr(client, "submit", lambda *a, **kw: keys.append(kw.get("key", "")) or
                        submit(*a, **kw))
    idk.matrix(paths, client, **OPTS)
    # models 1 and 2 share their labels; 3 names none, as the first: no pair needs a task
    assert not [k for k in keys if k.startswith("identirep-check-")]
    keys.clear()
    other = labels[:3] + ["x"] + labels[4:]
    paths[2] = str(ir.save_model(ir.Model(base.f, base.g, base.bias, labels=other),
                                 tmp_path / "other.npz"))
    with pytest.raises(ir.IdentirepError, match="m1 vs other: label order differs at index 3"):
        idk.matrix(paths, client, **OPTS)
    # (1, 3) and (2, 3): model 3 is as the first, whose check covers them
    assert [k.split("-")[2:4] for k in keys if k.startswith("identirep-check-")] == [["1", "2"]]


def _allowing(call):
    with ir.allow_tokenizer_mismatch():
        return call()


def test_compare_with_a_worker_killed_mid_run(client, tmp_path):
    """The first worker to start a chunk task while holding g dies then (os._exit): g is on
    every worker (scattered data cannot be recomputed), and the report is the same."""
    import dask.array as da
    from distributed.diagnostics.plugin import WorkerPlugin
    flag = str(tmp_path / "killed")

    class KillOnce(WorkerPlugin):
        def __init__(self, flag):
            self.flag = flag

        def setup(self, worker):
            self.worker = worker

        def transition(self, key, start, finish, **kw):
            if finish != "executing" or "_chunk_state_task" not in str(key) or \
                    not any("identirep-g-" in str(k) for k in self.worker.data):
                return
            try:
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(1)

    f1, g1, b1, f2, g2, b2 = _pair(600, 20, 3, 3, np.float64, bias=True, seed=4)
    client.wait_for_workers(2, timeout=30)
    client.register_plugin(KillOnce(flag), name="kill-compare")
    try:
        got = idk.compare(da.from_array(f1, chunks=(100, -1)), g1, da.from_array(f2, chunks=(100, -1)),
                          g2, b1, b2, client=client, split_every=2, seed=3, num_samples=20)
    finally:
        client.unregister_worker_plugin("kill-compare")
    assert os.path.exists(flag)
    client.wait_for_workers(2, timeout=30)
    want = ir.compare(ir.Model(f1, g1, b1), ir.Model(f2, g2, b2), seed=3, num_samples=20)
    assert_reports_match(got, want, 1e-10)


@pytest.mark.parametrize("error", ["KilledWorker", "CommClosedError", "FutureCancelledError"])
def test_cluster_failures_are_identirep_errors(client, cluster, files, capsys, monkeypatch, error):
    """A task whose workers keep dying, a lost scheduler, cancelled tasks: IdentirepError
    (the CLI exits 2 with what to look at), for matrix and compare."""
    import dask.array as da
    import distributed
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    make = {"KilledWorker": lambda: distributed.KilledWorker(
        "identirep-pair-0-1", types.SimpleNamespace(address="tcp://10.0.0.7:4000"), 3),
            "CommClosedError": lambda: CommClosedError("in <TCP ...>: Stream is closed"),
            "FutureCancelledError": lambda: FutureCancelledError("identirep-pair-0-1", "lost")}

    def failing(*a, **kw):
        raise make[error]()
    monkeypatch.setattr(distributed, "as_completed", failing)
    if error == "CommClosedError":     # the scheduler is gone: the clean-up fails too
        monkeypatch.setattr(distributed.Client, "run", failing)
    assert main(["matrix", *files, "--scheduler", cluster.scheduler_address]) == 2
    err = capsys.readouterr().err
    assert "identirep.dask.matrix" in err and "logs" in err and "internal error" not in err
    f1, g1, _, f2, g2, _ = _pair(100, 10, 2, 2)
    with pytest.raises(ir.IdentirepError, match="identirep.dask.compare"):
        idk.compare(da.from_array(f1), g1, da.from_array(f2), g2, client=client)


def test_compare_sends_the_labels_once(client):
    """Labels (O(V)) travel with g, scattered once: no task's spec holds them."""
    import dask.array as da
    f1, g1, b1, f2, g2, b2 = _pair(400, 300, 3, 3, np.float64, bias=True, seed=5)
    labels = [f"label {i} " + "x" * 200 for i in range(300)]       # 60 KB in all
    with _task_sizes(client) as sizes:
        got = idk.compare(da.from_array(f1, chunks=(100, -1)), g1, da.from_array(f2, chunks=(100, -1)),
                          g2, b1, b2, client=client, labels=labels, num_samples=10)
    assert got.N == 400
    tasks = {k: v for k, v in sizes["spec"].items() if "task" in k}
    assert len(tasks) >= 6 and max(tasks.values()) < 20_000, tasks


def test_compare_hashes_g_once_per_worker(client):
    """Each worker makes one Accumulator of g per run and copies it for every task: g is
    hashed (and widened) once per worker, not once per chunk or merged state."""
    import dask.array as da
    f1, g1, b1, f2, g2, b2 = _pair(600, 20, 3, 3, np.float64, bias=True, seed=6)
    # a run whose clean-up could not reach the workers (the lost-scheduler case above)
    # leaves its prototype there: this run is checked to leave none of its own
    kept = client.run(lambda: sorted(W._PROTOTYPES))
    client.run(_count_calls, "identirep.accumulate", "fingerprint_of")
    got = idk.compare(da.from_array(f1, chunks=(50, -1)), g1, da.from_array(f2, chunks=(50, -1)),
                      g2, b1, b2, client=client, split_every=3, num_samples=10)
    counts = client.run(_calls_counted, "identirep.accumulate", "fingerprint_of")
    assert got.N == 600 and 1 <= sum(counts.values()) <= len(counts), counts
    assert client.run(lambda: sorted(W._PROTOTYPES)) == kept


def test_a_task_after_its_run_is_over_keeps_nothing(files):
    """A run that fails lets go of its models while some of its tasks still run: what they
    read then is not kept (the models, the Accumulator prototypes)."""
    W._forget("over")
    entry = W._loaded("over", 0, files[0], False)
    assert entry.model.N == 900 and ("over", 0) not in W._LOADED
    W._forget_prototype("g-over")
    g = _pair(10, 5, 2, 2)
    assert W._accumulator(("g-over", (g[1], g[4], None, None), {})).n == 0
    assert "g-over" not in W._PROTOTYPES


@pytest.mark.parametrize("dtypes", [("float64", "float64", None), ("float64", "float32", None),
                                    ("float64", "float64", "float32"),
                                    ("float32", "float32", "float64"),
                                    ("float32", "float32", "float32")])
def test_the_pass_dtype_without_copying_f(dtypes, monkeypatch):
    """A model's pass dtype is read from one row: as Model.augmented(None) makes it."""
    r = np.random.default_rng(0)
    f, g, b = (r.standard_normal(s).astype(d) if d else None
               for s, d in zip(((20, 3), (7, 3), (7,)), dtypes))
    m = ir.Model(f, g, b)
    want = all(x.dtype == np.float64 for x in m.augmented(None))
    monkeypatch.setattr(ir.Model, "augmented", None)
    assert W._in_float64(m) == want


def test_a_worker_s_threads_read_a_model_once(files, monkeypatch):
    """Several threads of one worker asking for the same model: one reads it, the others
    wait and take it."""
    import threading
    import time
    import identirep.io as io
    reads, orig = [], io.load_model

    def slow_load(*a, **kw):
        reads.append(1)
        time.sleep(0.2)
        return orig(*a, **kw)
    monkeypatch.setattr(io, "load_model", slow_load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(W._loaded("threads", 1, files[1],
                                                                      False)))
               for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        W._forget("threads")
    assert len(reads) == 1 and len(got) == 4 and all(e is got[0] for e in got)
    assert W._cache_of(got[0], np.float64) is W._cache_of(got[0], "float64")


@pytest.mark.parametrize("per_task", [2, 3])
def test_pairs_in_blocks_equal_the_single_process_matrix(client, files, per_task):
    """Pairs in tasks of blocks of models: the same matrix."""
    got = idk.matrix(files, client, models_per_task=per_task, **OPTS)
    assert_same(got, ir.matrix(ir.io.load_models(files), **OPTS))
    assert [len(b) for b in idk.pair_blocks(4, per_task)] == {2: [1, 4, 1], 3: [3, 3]}[per_task]
    with pytest.raises(ir.IdentirepError, match="models_per_task must be an integer >= 1"):
        idk.matrix(files, client, models_per_task=0)


def test_the_first_failing_pair_in_pair_order_is_raised(client):
    """A task of two pairs whose second fails, a task of a later pair that fails itself:
    the error of the earlier pair is raised, as matrix raises it."""
    pairs = [(0, 1), (0, 2), (1, 2)]

    def first_two():
        return {(0, 1): "cells"}, ((0, 2), ir.IdentirepError("pair (0, 2) failed"))

    def last():
        raise ValueError("pair (1, 2) failed")
    futures = {client.submit(first_two, pure=False): pairs[:2],
               client.submit(last, pure=False): pairs[2:]}
    with pytest.raises(ir.IdentirepError, match=r"pair \(0, 2\) failed"):
        idk._gather_in_order(client, futures, pairs, False)
    futures = {client.submit(lambda: ({(0, 1): 1, (0, 2): 2}, None), pure=False): pairs[:2],
               client.submit(last, pure=False): pairs[2:]}
    with pytest.raises(ValueError, match=r"pair \(1, 2\) failed"):
        idk._gather_in_order(client, futures, pairs, False)


def test_a_task_of_pairs_reads_each_model_once(files, monkeypatch):
    """The six pairs of four models in one task: four reads, not one or two per pair."""
    import identirep.io as io
    reads, orig = [], io.load_model
    monkeypatch.setattr(io, "load_model", lambda *a, **kw: reads.append(a[0]) or orig(*a, **kw))
    pairs = idk.pair_blocks(4, 4)[0]
    sig = {k: W._signature(p) for k, p in enumerate(files)}
    try:
        cells, failure = W._pairs_task("block", pairs, {k: (p, sig[k]) for k, p in enumerate(files)},
                                       False, {ij: {} for ij in pairs}, dict(OPTS), True)
    finally:
        W._forget("block")
    assert failure is None and sorted(cells) == pairs and sorted(reads) == sorted(files)
