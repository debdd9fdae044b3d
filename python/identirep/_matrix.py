"""K x K matrices of every measure over a list of models (one streaming pass per pair)."""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ._backends import resolve
from .errors import IdentirepError
from .gpu.streams import on_caller_stream
from .model import Model, check_pair, logit_spread_failure, tokenizer_note, tokenizer_option
from .progress import progress_bar
from .results import _Result

#: measure name -> (value on the diagonal, reader of a Report)
MEASURES = {
    "kl": (0.0, lambda r: r.kl.kl12),
    "d_llv": (0.0, lambda r: r.d_llv.value),
    "d_logit": (0.0, lambda r: r.d_logit.value),
    "mcca_f": (1.0, lambda r: r.mcca_f.value),
    "mcca_g": (1.0, lambda r: r.mcca_g.value),
    "max_d_svd": (0.0, lambda r: r.d_svd.max_d_svd),
    "d_rep": (0.0, lambda r: r.d_rep.value),
    "top1_agreement": (1.0, lambda r: r.kl.top1_agreement),
}
#: measure name -> the Report's field it is read from (None there: a failure, with its reason)
SOURCE = {"kl": "kl", "d_llv": "d_llv", "d_logit": "d_logit", "mcca_f": "mcca_f",
          "mcca_g": "mcca_g", "max_d_svd": "d_svd", "d_rep": "d_rep", "top1_agreement": "kl"}


@dataclass
class MatrixResult(_Result):
    """``values[measure][i][j]`` compares model i (first) with model j (second); NaN where
    that measure could not be computed for that pair, and ``failures`` then holds an entry
    ``{i, j, measure, reason, fix}`` saying why."""
    names: List[str]
    values: Dict[str, np.ndarray]
    seconds: float = 0.0
    pairs: List[dict] = field(default_factory=list)
    failures: List[dict] = field(default_factory=list)
    #: what the values could not include or hold despite a difference (tokenizers)
    notes: List[str] = field(default_factory=list)

    def failure(self, measure: str, i: int, j: int) -> Optional[dict]:
        """Why ``values[measure][i][j]`` could not be computed (``{i, j, measure, reason,
        fix}``), or None when it was."""
        return next((f for f in self.failures
                     if f["measure"] == measure and f["i"] == i and f["j"] == j), None)

    def to_csv(self, measure: str) -> str:
        rows = ["," + ",".join(self.names)]
        for name, row in zip(self.names, self.values[measure]):
            rows.append(name + "," + ",".join("" if not np.isfinite(v) else repr(float(v)) for v in row))
        return "\n".join(rows) + "\n"


@on_caller_stream
@tokenizer_option
def matrix(models: Sequence[Model], *, backend: str = "auto", progress=None,
           check_tokenizer: bool = True, **opts) -> MatrixResult:
    """Compare every pair of ``models``: one pass per unordered pair gives both directions.

    Parameters
    ----------
    models : sequence of Model
        At least two models on the same inputs and labels.
    backend : {"auto", "cpu", "cuda", "cupy"}
    progress : bool or callable, optional
        A bar over the pairs on stderr (None: when stderr is a terminal), or a callable
        ``progress(fraction)`` called after each pair.
    check_tokenizer : bool
        As ``compare``'s: False compares models whose tokenizers' vocabularies differ, by
        token id; ``notes`` say what differs.
    **opts
        ``compare``'s options (lam, combine, term, num_samples, seed, num_pivots, ...),
        checked before the first pair.

    Returns
    -------
    MatrixResult
        ``names``, ``values[measure]`` (K x K; row i, column j compares model i with model
        j), the choices per pair, the ``failures`` and ``to_csv``/``to_dict``. A measure that
        cannot be computed for a pair (d_LLV when N < M + 2, d_SVD when M1 != M2, ...) is NaN
        there (null in JSON, empty in CSV, "-" in tables), and ``failures`` says why and how
        to fix it, as ``compare``'s ``Report.failures``; the other values are still computed.
        When no measure could be computed for any pair, matrix raises IdentirepError with the
        reasons.

    Per-model statistics (moments of f and g, whitenings, input-side factors) are computed
    once per model (``ModelCache``) and shared by all of its pairs; each pair adds only its
    cross products and the quantities that depend on its pass."""
    from ._model_cache import ModelCache
    from .measures import _engine, check_compare_options, check_progress
    t0 = time.perf_counter()
    check_compare_options(**opts)
    check_progress(progress)
    models = _model_list(models)
    K = len(models)
    pairs = list(itertools.combinations(range(K), 2))
    # every pair before the first pass (equal to a third model, two models can still differ
    # where that one names no tokenizer or labels), and a note for each pair that differs
    names = unique_names([m.name for m in models])
    for i, j in pairs:
        try:
            check_pair(models[i], models[j])
        except IdentirepError as err:
            raise IdentirepError(f"{names[i]} vs {names[j]}: {err.reason}", fix=err.fix) from None
    notes = [f"{names[i]} vs {names[j]}: {n}" for i, j in pairs
             if (n := tokenizer_note(models[i], models[j]))]
    values = empty_values(K)
    out_pairs, failures = [], []
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
            e = _engine(models[i], models[j], backend, caches=caches(i, j),
                        logit_failure=logit_spread_failure(models[i], models[j]))
            add_cells(values, out_pairs, failures, pair_cells(e, i, j, opts))
            update(done + 1)
            if call is not None:
                call((done + 1) / len(pairs))
    return finish(names, values, out_pairs, failures, len(pairs), t0, notes)


def unique_names(names: Sequence[Optional[str]]) -> List[str]:
    """The matrix's row names: each model's name ("model i" when it has none), each with its
    index when two coincide."""
    names = [n or f"model {i}" for i, n in enumerate(names)]
    if len(set(names)) != len(names):
        names = [f"{n} [{i}]" for i, n in enumerate(names)]
    return names


def empty_values(K: int) -> Dict[str, np.ndarray]:
    """K x K NaN matrices of every measure, with each measure's value on the diagonal."""
    values = {k: np.full((K, K), np.nan) for k in MEASURES}
    for k, (diag, _) in MEASURES.items():
        np.fill_diagonal(values[k], diag)
    return values


def pair_cells(e, i: int, j: int, opts: dict) -> tuple:
    """The cells of models i and j, both directions, from their ``PairEngine`` ``e``:
    (values as (measure, row, column, value), failures, the choices of each direction), small
    enough to send between processes."""
    from .measures import _report_from_engine
    cells, failures, choices = [], [], []
    for (p, q), eng in (((i, j), e), ((j, i), e.swapped())):
        r = _report_from_engine(eng, backend=e.stats.backend, **opts)
        for k, (_, read) in MEASURES.items():
            fail = r.failures.get(SOURCE[k])
            if fail is None:
                cells.append((k, p, q, read(r)))
            else:
                failures.append({"i": p, "j": q, "measure": k, "reason": fail.reason,
                                 "fix": fail.fix})
        d = r.d_llv       # None: d_LLV failed, and its choices with it
        choices.append({"i": p, "j": q, "pivot": None if d is None else d.pivot,
                        "leave_out": None if d is None else d.leave_out,
                        "input_set": None if d is None else d.input_set})
    return cells, failures, choices


def add_cells(values, out_pairs: list, failures: list, cells: tuple) -> None:
    """Write one pair's ``pair_cells`` into the matrices and lists (pairs in their order)."""
    found, failed, choices = cells
    for k, p, q, v in found:
        values[k][p, q] = v
    failures.extend(failed)
    out_pairs.extend(choices)


def finish(names, values, out_pairs, failures, n_pairs: int, t0: float,
           notes: Optional[List[str]] = None) -> MatrixResult:
    """The MatrixResult, or the IdentirepError of a matrix none of whose values was computed."""
    if len(failures) == len(MEASURES) * n_pairs * 2:
        raise _nothing_computed(names, failures)
    return MatrixResult(names=names, values=values, seconds=time.perf_counter() - t0,
                        pairs=out_pairs, failures=failures, notes=list(notes or []))


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


def _nothing_computed(names, failures) -> IdentirepError:
    """The error of a matrix none of whose values could be computed: each distinct reason once,
    with the first pair and measure that gave it."""
    seen = {}
    for f in failures:
        seen.setdefault(f["reason"], f)
    why = "; ".join(f"{f['measure']} of {names[f['i']]} vs {names[f['j']]}: {reason}"
                    for reason, f in seen.items())
    return IdentirepError(f"no measure could be computed for any pair of models ({why})",
                          fix="; ".join(dict.fromkeys(f["fix"] for f in seen.values())))
