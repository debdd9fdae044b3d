"""identirep on Dask (the optional extra ``identirep[dask]``): ``matrix`` over model files with
the per-model statistics computed once and the pairs run across workers, which read the files
themselves; ``compare`` on Dask arrays of f chunked over inputs.

What crosses the network: paths, per-model statistics of O(M^2) each (moments, whitenings,
factors) and the results (a few numbers per pair). Never f or g: each worker reads the model
files it needs from the paths, which must name the same files on every worker (a shared file
system)."""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
import uuid
from types import SimpleNamespace
from typing import Callable, List, Optional, Sequence

import numpy as np

from ._dask_worker import KEEP_MODELS  # noqa: F401 - documented here, used there
from ._dask_worker import (_check_task, _chunk_state_task, _compute_task, _describe_task,
                           _forget, _forget_prototype, _masked_task, _merge_states_task,
                           _pairs_task, _statistics_task)
from .errors import IdentirepError
from .model import tokenizer_checked, tokenizer_option

#: how to install what this module needs
INSTALL = 'pip install "identirep[dask]"'
#: seconds to wait for a scheduler at an address (``client_for``)
CONNECT_TIMEOUT = 10


def distributed():
    """The ``distributed`` module, or an IdentirepError naming the extra that brings it."""
    try:
        import distributed as dist
    except ImportError as e:
        raise IdentirepError(f"identirep.dask needs dask.distributed, which is not installed "
                             f"({e})", fix=INSTALL) from None
    return dist


# ------------------------------------------------------------------- scheduler specification

_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d+)/?$")


def parse_scheduler(text: str):
    """``local:N`` (a LocalCluster of N worker processes) as ("local", N), or a scheduler's
    address ``[protocol://]host:port`` as ("address", text); anything else an IdentirepError
    with an example."""
    hint = ("give local:N (N worker processes on this machine, e.g. local:2) or a running "
            "scheduler's address, e.g. tcp://10.0.0.5:8786")
    if not isinstance(text, str) or not text.strip():
        raise IdentirepError(f"the scheduler must not be empty; {hint}")
    if text == "local" or text.startswith("local:"):
        n = text[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise IdentirepError(f"scheduler {text!r}: the number of workers after 'local:' "
                                 f"must be an integer >= 1; {hint}")
        cores = os.cpu_count() or 1
        if int(n) > 2 * cores:
            raise IdentirepError(
                f"scheduler {text!r}: {n} worker processes on this machine of {cores} cores "
                f"(at most 2 per core: {2 * cores})",
                fix=f"give local:N with N <= {cores} (one process of one thread per core), "
                    "or a scheduler's address host:port for a cluster")
        return "local", int(n)
    m = _ADDRESS.match(text)
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise IdentirepError(f"scheduler {text!r} is neither local:N nor an address "
                             f"[protocol://]host:port with a port 1-65535; {hint}")
    return "address", text


@contextlib.contextmanager
def kept_environ():
    """``os.environ`` as it was, back on leaving: a LocalCluster's nannies write their workers'
    settings (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_,
    PYTHONHASHSEED) into this process's environment, where every later subprocess would
    inherit them."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def client_for(spec):
    """A ``distributed.Client`` for ``parse_scheduler``'s result, closed (with its
    LocalCluster) on leaving: ``local:N`` starts N worker processes of one thread each here;
    an address connects to the scheduler there (an IdentirepError when none answers within
    ``CONNECT_TIMEOUT`` seconds)."""
    dist = distributed()
    kind, where = parse_scheduler(spec) if isinstance(spec, str) else spec
    if kind == "local":
        import logging
        with kept_environ(), dist.LocalCluster(n_workers=where, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                dist.Client(cluster) as client:
            yield client
        return
    try:
        client = dist.Client(where, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise IdentirepError(
            f"no Dask scheduler answered at {where} within {CONNECT_TIMEOUT} s ({e})",
            fix="start one there (dask scheduler, then dask worker ADDRESS on each machine) "
                "or give local:N") from None
    with client:
        yield client


def _client(client):
    dist = distributed()
    if client is None:
        try:
            return dist.default_client()
        except ValueError:
            raise IdentirepError("identirep.dask found no Dask client",
                                 fix="pass client=distributed.Client(...) or create one "
                                     "first (Client() starts a cluster on this machine)") from None
    if not isinstance(client, dist.Client):
        raise IdentirepError(f"client must be a distributed.Client, got "
                             f"{type(client).__name__} {client!r:.60}",
                             fix="pass client=distributed.Client(address) or leave it out")
    return client


@contextlib.contextmanager
def cluster_errors(what: str):
    """The cluster's failures as IdentirepError: a task whose workers kept dying
    (``KilledWorker``), a lost connection to the scheduler, cancelled tasks. A task's own
    exception passes as it is."""
    import asyncio
    import concurrent.futures
    dist = distributed()
    from distributed.comm.core import CommClosedError
    logs = ("the workers' and the scheduler's logs say why; a worker that runs out of memory "
            "dies: give each worker more memory (or fewer threads)")
    try:
        yield
    except dist.KilledWorker as e:
        raise IdentirepError(f"{what}: Dask gave up on a task after the workers running it "
                             f"died ({e})", fix=logs) from None
    except (CommClosedError, asyncio.CancelledError, concurrent.futures.CancelledError) as e:
        raise IdentirepError(f"{what}: the Dask cluster was lost or cancelled the run's tasks "
                             f"({type(e).__name__}: {e})",
                             fix=f"check that the scheduler and workers are running; {logs}") \
            from None


def check_backend(backend) -> None:
    """identirep.dask runs the CPU engine: "auto" (unless IDENTIREP_BACKEND names a GPU
    backend) or "cpu"; any other an IdentirepError."""
    be = backend if backend not in (None, "auto") else os.environ.get("IDENTIREP_BACKEND")
    if be not in (None, "", "auto", "cpu"):
        where = f"backend={backend!r}" if backend not in (None, "auto") else \
            f"IDENTIREP_BACKEND={be!r}"
        raise IdentirepError(f"identirep.dask runs on the CPU backend ({where})",
                             fix="leave backend out or pass backend='cpu' (and unset "
                                 "IDENTIREP_BACKEND); each worker then runs the CPU engine")


# ----------------------------------------------------------------------------------- matrix

def _path_list(paths) -> List[str]:
    if isinstance(paths, (str, bytes, os.PathLike)) or not hasattr(paths, "__iter__"):
        raise IdentirepError(f"identirep.dask.matrix takes a list of at least two model file "
                             f"paths, got {type(paths).__name__} {paths!r:.60}",
                             fix="pass e.g. ['a.safetensors', 'b.safetensors']")
    out = []
    for i, p in enumerate(paths):
        if not isinstance(p, (str, os.PathLike)):
            raise IdentirepError(f"paths[{i}] is {type(p).__name__} {p!r:.60}, not a path",
                                 fix="pass the model files' paths (str or pathlib.Path); the "
                                     "workers read them")
        out.append(os.path.abspath(os.fspath(p)))
    if len(out) < 2:
        raise IdentirepError(f"matrix needs at least two models, got {len(out)}",
                             fix="pass two or more paths; compare one pair with compare")
    return out


@tokenizer_option
def matrix(paths: Sequence, client=None, *, drop_masked_labels: bool = False,
           backend: str = "auto", progress=None, check_tokenizer: bool = True,
           check: Optional[Callable[[list], None]] = None, models_per_task: int = 1,
           **opts):
    """``identirep.matrix`` of the model files ``paths``, computed on a Dask cluster.

    Parameters
    ----------
    paths : sequence of str or Path
        At least two model files (``load_model``'s formats). The workers read them: a path
        must name the same file on every worker (relative paths are taken from this
        process's working directory).
    client : distributed.Client, optional
        Default: the current client (``distributed.default_client()``).
    drop_masked_labels : bool
        As ``load_models``: drop the labels whose bias is -inf in any model from every model.
    backend : {"auto", "cpu"}
        The workers run the CPU engine.
    progress : bool or callable, optional
        A bar over the pairs on stderr (None: when stderr is a terminal), or a callable
        ``progress(fraction)`` called after each pair.
    check_tokenizer : bool
        As ``identirep.matrix``'s (``allow_tokenizer_mismatch()`` around this call counts
        too: the workers are told).
    check : callable, optional
        ``check(models)`` with one description per model (``name``, ``N``, ``V``, ``M``,
        ``dropped_labels``) once the files are read and before any pair runs; it may raise
        IdentirepError to stop.
    models_per_task : int
        The pairs run in tasks of two blocks of this many models (one block: the pairs
        within it): a task reads each of its models once, so the files are read about
        K^2 / models_per_task times in all, and a worker holds up to 2 x models_per_task
        models at once. 1: one task per pair, a worker holds about two models.
    **opts
        ``compare``'s options, as ``identirep.matrix``.

    Returns
    -------
    MatrixResult
        The same values, choices, failures and notes as ``identirep.matrix`` of
        ``load_models(paths, drop_masked_labels)`` (``seconds`` aside); the same errors.
        Every pair is checked before any pair runs, as ``identirep.matrix`` checks them: each
        model against the first by its describe task, and each other pair whose models
        differ in what ``check_pair`` reads (their digests) by a task of its own.

    Each model is read and its statistics of O(M^2) size (moments of f and g, whitenings,
    factors) computed once, by one task; the K (K - 1) / 2 pairs run in tasks that read
    their files on their worker (a worker keeps the ``KEEP_MODELS`` most recent between
    tasks), take the models' statistics from the workers that hold them and return the
    cells. A worker lost mid-run costs only a re-run of its tasks (Dask's own recovery)."""
    from ._rules import check_callable, check_count, check_flag
    from .measures import check_compare_options, check_progress
    t0 = time.perf_counter()
    check_compare_options(**opts)
    check_progress(progress)
    check_callable("check", check)
    check_flag("drop_masked_labels", drop_masked_labels)
    check_backend(backend)
    check_count("models_per_task", models_per_task)
    paths = _path_list(paths)
    client = _client(client)
    token = uuid.uuid4().hex
    with cluster_errors("identirep.dask.matrix"):   # also when the clean-up finds no cluster
        try:
            return _matrix_run(client, token, paths, drop_masked_labels, progress, check,
                               opts, t0, tokenizer_checked(), models_per_task)
        finally:   # the workers let go of the models they keep for this run
            client.run(_forget, token, on_error="ignore")


def pair_blocks(K: int, models_per_task: int) -> list:
    """The pairs of K models in tasks: the models in blocks of ``models_per_task``, one task
    per two blocks (or one) with the pairs between them, each task's pairs in pair order."""
    blocks = [range(s, min(s + models_per_task, K)) for s in range(0, K, models_per_task)]
    out = []
    for a, b in itertools.combinations_with_replacement(range(len(blocks)), 2):
        pairs = sorted((i, j) for i in blocks[a] for j in blocks[b] if i < j)
        if pairs:
            out.append(pairs)
    return out


def _matrix_run(client, token, paths, drop_masked_labels, progress, check, opts, t0, checked,
                models_per_task):
    from ._matrix import add_cells, empty_values, finish, unique_names
    K = len(paths)

    def run(fn, *args, name):
        return client.submit(fn, *args, key=f"identirep-{name}-{token}", pure=False)

    masked = False
    if drop_masked_labels:
        found = client.gather([run(_masked_task, p, name=f"masked-{k}")
                               for k, p in enumerate(paths)])
        masked = np.empty(0, np.int64)
        for ids in found:
            masked = np.union1d(masked, ids)
    desc = client.gather([run(_describe_task, token, k, p, masked, paths[0], checked,
                              name=f"read-{k}") for k, p in enumerate(paths)])
    names = unique_names([d["name"] for d in desc])
    for k, d in enumerate(desc):
        if d["problem"] is not None:     # as matrix names it
            p = d["problem"]
            raise IdentirepError(f"{names[0]} vs {names[k]}: {p.reason}", fix=p.fix) from None
    # the other pairs, before any pair runs (as matrix checks them): two models with equal
    # check keys pass against each other, and a model whose key is the first's passes against
    # whatever passed against the first; each other pair is checked on a worker
    key0 = desc[0]["check_key"]
    todo = [(i, j) for i, j in itertools.combinations(range(1, K), 2)
            if desc[i]["check_key"] != desc[j]["check_key"]
            and key0 not in (desc[i]["check_key"], desc[j]["check_key"])]
    found = client.gather([run(_check_task, token, (i, j),
                               {k: (paths[k], desc[k]["signature"]) for k in (i, j)}, masked,
                               checked, name=f"check-{i}-{j}") for i, j in todo])
    for (i, j), err in zip(todo, found):
        if err is not None:
            raise IdentirepError(f"{names[i]} vs {names[j]}: {err.reason}", fix=err.fix) from None
    if check is not None:
        check([SimpleNamespace(**{x: d[x] for x in ("name", "N", "V", "M", "dropped_labels")})
               for d in desc])
    pairs = list(itertools.combinations(range(K), 2))
    # the pass of a pair runs in float64 when both models' arrays are float64, else float32;
    # each model's statistics at each compute dtype one of its pairs needs, once
    cdt = {(i, j): "float64" if desc[i]["float64"] and desc[j]["float64"] else "float32"
           for i, j in pairs}
    stats = {}
    for (i, j), dt in cdt.items():
        for k in (i, j):
            if (k, dt) not in stats:
                stats[k, dt] = run(_statistics_task, token, k, paths[k], desc[k]["signature"],
                                   masked, dt, name=f"statistics-{k}-{dt}")
    futures = {}
    for block in pair_blocks(K, models_per_task):
        ks = sorted({k for ij in block for k in ij})
        files = {k: (paths[k], desc[k]["signature"]) for k in ks}
        shared = {(i, j): {cdt[i, j]: (stats[i, cdt[i, j]], stats[j, cdt[i, j]])}
                  for i, j in block}
        name = "pair-" + "-".join(map(str, block[0])) + (f"-{len(block)}" if len(block) > 1
                                                          else "")
        futures[run(_pairs_task, token, block, files, masked, shared, dict(opts), checked,
                    name=name)] = block
    cells = _gather_in_order(client, futures, pairs, progress)
    values, out_pairs, failures, notes = empty_values(K), [], [], []
    for i, j in pairs:
        pair, note = cells[i, j]
        add_cells(values, out_pairs, failures, pair)
        if note:
            notes.append(f"{names[i]} vs {names[j]}: {note}")
    return finish(names, values, out_pairs, failures, len(pairs), t0, notes)


def _gather_in_order(client, futures: dict, pairs, progress) -> dict:
    """Each pair's result as its task completes (a bar or ``progress(fraction)``; a task:
    the pairs ``futures`` maps it to); when pairs fail, the error of the first failing pair
    in pair order, as ``matrix`` would raise it (the later tasks are cancelled)."""
    from .progress import progress_bar
    dist = distributed()
    order = {ij: n for n, ij in enumerate(pairs)}
    results, first = {}, None        # first: (its order, the failing pair's error or future)
    call = progress if callable(progress) else None
    with progress_bar(f"{len(pairs)} model pairs on Dask", len(pairs),
                      None if call else progress) as update:
        for fut in dist.as_completed(list(futures)):
            if fut.status == "error":     # the task itself failed: at its first pair
                failed = (order[futures[fut][0]], fut)
            else:
                cells, failure = fut.result()
                results.update(cells)
                failed = None if failure is None else (order[failure[0]], failure[1])
            if failed is not None and (first is None or failed[0] < first[0]):
                first = failed
            update(len(results))
            if call is not None:
                call(len(results) / len(pairs))
            if first is not None and all(p in results for p in pairs[:first[0]]):
                client.cancel([f for f in futures if not f.done()])
                if isinstance(first[1], BaseException):
                    raise first[1]
                first[1].result()   # raises the worker's exception
    return results


# ---------------------------------------------------------------------------------- compare

def compare(f1, g1, f2, g2, bias1=None, bias2=None, *, client=None, reservoir: int = 4096,
            reservoir_seed: int = 0, labels=None, names=(None, None), split_every: int = 8,
            progress=None, **opts):
    """``identirep.compare`` of two models whose f are Dask arrays chunked over inputs.

    Parameters
    ----------
    f1, f2 : dask.array.Array (N x M1), (N x M2)
        The models' representations, one row per input, chunked over rows (f2 is rechunked
        to f1's row chunks; the columns are taken whole).
    g1, g2, bias1, bias2 : array
        The label vectors and biases (NumPy or torch CPU), as ``Accumulator`` takes them.
    client : distributed.Client, optional
        Default: the current client.
    reservoir, reservoir_seed
        ``Accumulator``'s ``reservoir`` and ``seed``: input rows kept for the input side.
    labels, names
        As ``Accumulator``.
    split_every : int
        How many consecutive chunks' statistics one merge task takes (>= 2).
    progress : bool or callable, optional
        A bar over the tasks on stderr (None: when stderr is a terminal), or a callable
        ``progress(fraction)``.
    **opts
        ``compare``'s options (lam, combine, term, num_samples, seed, ...).

    Returns
    -------
    Report
        ``Accumulator.compute`` of the chunks' statistics: each chunk is one task
        (``Accumulator.update``), consecutive chunks merge in a tree in their order
        (``Accumulator.merge``), and one task computes the report. Equal to ``compare`` of
        the whole arrays within the Accumulator's guarantee (float64: 1e-10 relative,
        float32: 1e-5) when the reservoir holds every distinct input; otherwise the input
        side is estimated from the reservoir's sample, and the report's notes say so.
    """
    from ._rules import check_count
    from .measures import check_compare_options, check_progress
    check_compare_options(**opts)
    check_progress(progress)
    check_count("split_every", split_every)
    if split_every < 2:
        raise IdentirepError(f"split_every must be at least 2, got {split_every}",
                             fix="merge 2 or more chunks' statistics per task, e.g. 8")
    client = _client(client)
    import dask.array as da
    for f, nm in ((f1, "f1"), (f2, "f2")):
        if not isinstance(f, da.Array) or f.ndim != 2:
            raise IdentirepError(f"{nm} must be a 2-d dask array (inputs x dimensions), got "
                                 f"{type(f).__name__} of shape {getattr(f, 'shape', None)}",
                                 fix="wrap it, e.g. dask.array.from_array(f, chunks=(100_000, "
                                     "-1)), or use identirep.compare on arrays in memory")
    if f1.shape[0] != f2.shape[0] or any(np.isnan(s) for s in f1.shape + f2.shape):
        raise IdentirepError(f"f1 and f2 must have one row per input, known in advance: "
                             f"shapes {f1.shape} and {f2.shape}",
                             fix="give both the same inputs in the same order (compute "
                                 "unknown chunk sizes first: f.compute_chunk_sizes())")
    cfg = dict(reservoir=reservoir, seed=reservoir_seed, labels=labels, names=names)
    g = (g1, g2, bias1, bias2)
    from .accumulate import Accumulator
    Accumulator(*g, **cfg)     # g, biases, labels and names checked here, before any task
    f1 = f1.rechunk({1: -1})
    f2 = f2.rechunk({0: f1.chunks[0], 1: -1})
    blocks = [(b1, b2) for b1, b2, rows in zip(f1.to_delayed().ravel(), f2.to_delayed().ravel(),
                                               f1.chunks[0]) if rows > 0]
    if len(blocks) == 0 or f1.shape[0] < 2:
        raise IdentirepError(f"compare needs at least 2 inputs, got {f1.shape[0]}")
    with cluster_errors("identirep.dask.compare"):
        return _run_tree(client, g, cfg, blocks, split_every, dict(opts), progress)


def _run_tree(client, g, cfg, blocks, split_every, opts, progress):
    """The chunk tasks, their merge tree and the compute task; the report."""
    # g with the options (labels, names: O(V)) once, to every worker, not in each task's
    # spec: scattered data cannot be recomputed, so a worker lost with the only copy would
    # fail the run
    key = f"identirep-g-{uuid.uuid4().hex}"
    try:
        return _tree(client, client.scatter({key: (key, g, cfg)}, broadcast=True)[key],
                     blocks, split_every, opts, progress)
    finally:   # the workers let go of their prototypes of this run
        client.run(_forget_prototype, key, on_error="ignore")


def _tree(client, model, blocks, split_every, opts, progress):
    import dask
    from .progress import progress_bar
    chunk = dask.delayed(_chunk_state_task, pure=False)
    level = client.compute([chunk(model, b1, b2) for b1, b2 in blocks])
    tasks = [level]
    while len(level) > 1:
        level = [client.submit(_merge_states_task, model, *level[i:i + split_every],
                               pure=False)
                 for i in range(0, len(level), split_every)]
        tasks.append(level)
    final = client.submit(_compute_task, model, level[0], opts, pure=False)
    total = sum(len(lv) for lv in tasks) + 1
    # only as_completed holds the partial results' futures: each is let go once done
    pending = distributed().as_completed([f for lv in tasks for f in lv] + [final])
    del level, tasks
    call = progress if callable(progress) else None
    with progress_bar(f"{len(blocks)} chunks on Dask", total,
                      None if call else progress) as update:
        for done, fut in enumerate(pending, 1):
            if fut.status == "error":
                fut.result()          # raises the task's exception
            del fut
            update(done)
            if call is not None:
                call(done / total)
    return final.result()
