"""Training the missing models of a plan, in parallel over processes where cores allow.

The unit of work is a *task*: some seeds of one width, trained together as one stacked model
(``train.train_width``) and checkpointed when done. With ``jobs`` = 1 (and always on a GPU)
the tasks run here one after the other; with ``jobs`` = J > 1 each width's seeds are split
into up to J tasks that run in J processes of one torch thread each, the costliest first.
Tiny MLPs are overhead-bound: one thread per process is faster than several threads on one
model, and a model's numbers do not depend on the task it is trained in (each is seeded by
its own seed alone).
"""
from __future__ import annotations

import queue as queue_mod
import time
from typing import Callable, Dict, List, Tuple

from ..progress import progress_bar
from .data import make_dataset
from .train import TrainSettings, require_torch, train_width


def split(todo: Dict[int, List[int]], jobs: int) -> List[Tuple[int, List[int]]]:
    """(width, seeds) tasks: each width's seeds in up to ``jobs`` contiguous runs, the
    costliest task (models x width^2) first."""
    tasks = []
    for w, seeds in todo.items():
        n = max(1, min(jobs, len(seeds)))
        size = -(-len(seeds) // n)
        tasks += [(w, seeds[i:i + size]) for i in range(0, len(seeds), size)]
    return sorted(tasks, key=lambda t: -len(t[1]) * (t[0] ** 2 + 256))


def seed_list(seeds: List[int]) -> str:
    """"0..4" for a contiguous run of seeds, "0, 2, 7" otherwise (a resumed run's)."""
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _task(root, settings: TrainSettings, width: int, seeds: List[int], device: str,
          threads: int, report=None) -> dict:
    """Train one task (in this process or a worker); ``report(models x steps done)``."""
    torch = require_torch()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = make_dataset(settings.classes, settings.data_seed)
        progress = None if report is None else (lambda done: report(done * len(seeds)))
        return train_width(root, width, seeds, data, settings, device, progress)
    finally:
        torch.set_num_threads(before)


def _worker(args) -> dict:
    root, settings, width, seeds, device, q, key = args

    def report(done):
        q.put((key, done))
    return _task(root, settings, width, seeds, device, 1, report)


def train_all(root, plan, todo: Dict[int, List[int]], device: str = "cpu", jobs: int = 1,
              say: Callable[[str], None] = lambda s: None) -> float:
    """Train and checkpoint the seeds ``todo[width]`` of ``plan``; returns the wall time."""
    settings = plan.train_settings(device)
    jobs = 1 if device != "cpu" else jobs
    tasks = split(todo, jobs)
    total = sum(len(s) for _, s in tasks) * settings.steps
    how = "here" if jobs == 1 else f"in up to {jobs} processes of one thread each"
    say(f"training {sum(len(s) for s in todo.values())} model(s) of width(s) "
        f"{', '.join(str(w) for w in todo)} for {settings.steps} steps, {how}")
    t0 = time.perf_counter()
    with progress_bar(f"training {total // settings.steps} models", total) as bar:
        if jobs == 1:
            done = 0
            for w, seeds in tasks:
                base = done

                def report(n, base=base):
                    bar(base + n)
                _task(root, settings, w, seeds, device, 1, report)
                done += len(seeds) * settings.steps
                say(f"width {w}: trained seeds {seed_list(seeds)} "
                    f"({time.perf_counter() - t0:.0f} s so far)")
        else:
            _in_processes(root, settings, tasks, device, jobs, bar, say, t0)
    return time.perf_counter() - t0


def _in_processes(root, settings, tasks, device, jobs, bar, say, t0) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    ctx = mp.get_context("spawn")     # no fork of a process that holds torch's threads
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        q = manager.Queue()
        futures = {pool.submit(_worker, (root, settings, w, seeds, device, q, k)): (w, seeds)
                   for k, (w, seeds) in enumerate(tasks)}
        progress = {}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        key, n = q.get_nowait()
                    except queue_mod.Empty:
                        break
                    progress[key] = n
                bar(sum(progress.values()))
                for f in finished:
                    f.result()     # a worker's error is raised here
                    w, seeds = futures[f]
                    say(f"width {w}: trained seeds {seed_list(seeds)} "
                        f"({time.perf_counter() - t0:.0f} s so far)")
        except BaseException:
            for f in pending:
                f.cancel()
            raise
