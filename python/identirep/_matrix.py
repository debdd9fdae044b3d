"""K x K matrices of every measure over a list of models (one streaming pass per pair)."""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from ._backends import resolve
from .errors import IdentirepError
from .gpu.streams import on_caller_stream
from .model import Model, check_pair
from .progress import progress_bar
from .results import _Result

#: measure name -> (value on the diagonal, reader of a Report)
MEASURES = {
    "kl": (0.0, lambda r: r.kl.kl12),
    "d_llv": (0.0, lambda r: r.d_llv.value),
    "d_logit": (0.0, lambda r: r.d_logit.value),
    "mcca_f": (1.0, lambda r: r.mcca_f.value),
    "mcca_g": (1.0, lambda r: r.mcca_g.value),
    "max_d_svd": (0.0, lambda r: r.d_svd.max_d_svd if r.d_svd is not None else np.nan),
    "d_rep": (0.0, lambda r: r.d_rep.value if r.d_rep is not None else np.nan),
    "top1_agreement": (1.0, lambda r: r.kl.top1_agreement),
}


@dataclass
class MatrixResult(_Result):
    """``values[measure][i][j]`` compares model i (first) with model j (second)."""
    names: List[str]
    values: Dict[str, np.ndarray]
    seconds: float = 0.0
    pairs: List[dict] = field(default_factory=list)

    def to_csv(self, measure: str) -> str:
        rows = ["," + ",".join(self.names)]
        for name, row in zip(self.names, self.values[measure]):
            rows.append(name + "," + ",".join("" if not np.isfinite(v) else repr(float(v)) for v in row))
        return "\n".join(rows) + "\n"


@on_caller_stream
def matrix(models: Sequence[Model], *, backend: str = "auto", progress=None, **opts) -> MatrixResult:
    """Compare every pair of ``models``: one pass per unordered pair gives both directions.

    Parameters
    ----------
    models : sequence of Model
        At least two models on the same inputs and labels.
    backend : {"auto", "cpu", "cuda", "cupy"}
    progress : bool or callable, optional
        A bar over the pairs on stderr (None: when stderr is a terminal), or a callable
        ``progress(fraction)`` called after each pair.
    **opts
        ``compare``'s options (lam, combine, term, num_samples, seed, num_pivots, ...),
        checked before the first pair.

    Returns
    -------
    MatrixResult
        ``names``, ``values[measure]`` (K x K; row i, column j compares model i with model
        j), the choices per pair, and ``to_csv``/``to_dict``.

    Per-model statistics (moments of f and g, whitenings, input-side factors) are computed
    once per model (``ModelCache``) and shared by all of its pairs; each pair adds only its
    cross products and the quantities that depend on its pass."""
    from ._model_cache import ModelCache
    from .measures import _report_from_engine, check_compare_options, check_progress, engine
    t0 = time.perf_counter()
    check_compare_options(**opts)
    check_progress(progress)
    models = _model_list(models)
    for m in models[1:]:
        check_pair(models[0], m)
    names = [m.name or f"model {i}" for i, m in enumerate(models)]
    if len(set(names)) != len(names):
        names = [f"{n} [{i}]" for i, n in enumerate(names)]
    K = len(models)
    values = {k: np.full((K, K), np.nan) for k in MEASURES}
    for k, (diag, _) in MEASURES.items():
        np.fill_diagonal(values[k], diag)
    pairs = list(itertools.combinations(range(K), 2))
    out_pairs = []
    cache = {}
    if resolve(backend, *models) in ("cuda", "cupy"):   # each model to the device once
        from .gpu.arrays import on_device
        models = [on_device(m) for m in models]

    def caches(i, j):
        def get(cdt):
            for k in (i, j):
                if (k, cdt) not in cache:
                    cache[k, cdt] = ModelCache(models[k], cdt)
            return cache[i, cdt], cache[j, cdt]
        return get

    call = progress if callable(progress) else None
    with progress_bar(f"{len(pairs)} model pairs", len(pairs),
                      None if call else progress) as update:
        for done, (i, j) in enumerate(pairs):
            e = engine(models[i], models[j], backend, caches=caches(i, j))
            for (p, q), eng in (((i, j), e), ((j, i), e.swapped())):
                r = _report_from_engine(eng, backend=e.stats.backend, **opts)
                for k, (_, read) in MEASURES.items():
                    values[k][p, q] = read(r)
                out_pairs.append({"i": p, "j": q, "pivot": r.d_llv.pivot,
                                  "leave_out": r.d_llv.leave_out, "input_set": r.d_llv.input_set})
            update(done + 1)
            if call is not None:
                call((done + 1) / len(pairs))
    return MatrixResult(names=names, values=values, seconds=time.perf_counter() - t0, pairs=out_pairs)


def _model_list(models) -> List[Model]:
    """``models`` as a list of at least two Models, else an IdentirepError saying what it is."""
    if isinstance(models, (str, bytes, Model)) or not isinstance(models, Iterable):
        raise IdentirepError(f"matrix takes a list of at least two identirep.Model objects, got "
                             f"{type(models).__name__} {models!r:.60}",
                             fix="pass e.g. [load_model(p) for p in paths]")
    models = list(models)
    for i, m in enumerate(models):
        if not isinstance(m, Model):
            raise IdentirepError(f"models[{i}] is {type(m).__name__} {m!r:.60}, not an "
                                 "identirep.Model", fix="load each model with load_model or "
                                                        "make it with Model(f, g, b)")
    if len(models) < 2:
        raise IdentirepError(f"matrix needs at least two models, got {len(models)}",
                             fix="pass two or more models; compare one pair with compare")
    return models
