"""Result types. Every measure returns a dataclass that carries its choices, not just a float."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import numpy as np


def _jsonable(v: Any) -> Any:
    if isinstance(v, _Result):
        return v.to_dict()
    if dataclasses.is_dataclass(v):
        return {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)
                if not f.metadata.get("internal")}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


@dataclass(frozen=True)
class Meaning:
    """What a number is: a distance (0 = identical up to ``invariance``) or a similarity (1 =
    identical up to it), whether it is a metric, what it is invariant to, and its scale."""
    kind: str
    metric: bool
    invariance: str
    scale: str


class _Result:
    """A measure's result: its headline is ``value``, also ``float(result)``; results compare
    with numbers (``r < 0.1``) by their headline. ``meaning`` says what the number is."""
    meaning: ClassVar[Optional[Meaning]] = None

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-serialisable dict (NaN/Inf become None), with the headline ``value`` and
        the ``meaning`` of the number."""
        d = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
             if not f.metadata.get("internal")}
        if self.meaning is not None:
            d.setdefault("value", _jsonable(float(self)))
            d["meaning"] = _jsonable(self.meaning)
        return d

    def __float__(self) -> float:
        return float(self.value)  # type: ignore[attr-defined]

    def _cmp(self, other, op):
        try:
            o = float(other)
        except (TypeError, ValueError):
            return NotImplemented
        return op(float(self), o)

    def __lt__(self, other):
        return self._cmp(other, lambda x, y: x < y)

    def __le__(self, other):
        return self._cmp(other, lambda x, y: x <= y)

    def __gt__(self, other):
        return self._cmp(other, lambda x, y: x > y)

    def __ge__(self, other):
        return self._cmp(other, lambda x, y: x >= y)


def _internal():
    return field(default=None, repr=False, metadata={"internal": True})


@dataclass
class KLResult(_Result):
    """Mean KL divergence over inputs, both directions, plus cheap extras of the same pass.
    Headline: ``kl12`` = mean_x KL(p1(.|x) || p2(.|x)) in nats."""
    meaning: ClassVar[Meaning] = Meaning(
        "distance", False, "none beyond the distributions (any models with equal p agree)",
        "nats; not symmetric (kl12 vs kl21)")
    kl12: float
    kl21: float
    top1_agreement: float
    entropy1: float
    entropy2: float
    per_input_kl12: Optional[np.ndarray] = _internal()
    per_input_kl21: Optional[np.ndarray] = _internal()

    @property
    def value(self) -> float:
        return self.kl12


@dataclass
class DLLVResult(_Result):
    """d_LLV^lambda with its four terms and every choice that produced them."""
    meaning: ClassVar[Meaning] = Meaning(
        "distance", False,
        "invertible linear maps of f and g (g(y) - g(y0) -> A^-T (g(y) - g(y0))), biases",
        "dimensionless (standardised log-likelihood differences); 0 iff p1 = p2 under the "
        "diversity condition")
    value: float
    t1: float
    t2: float
    t3: float
    t4: float
    lam: float
    combine: str
    term: str
    pivot: int
    leave_out: int
    input_set: List[int]
    pivot_search: str
    input_search: str
    num_input_candidates: int
    degenerate_pairs: int = 0
    degenerate_labels: List[int] = field(default_factory=list)
    rejected_input_sets: int = 0


@dataclass
class DSVDResult(_Result):
    """PLS-SVD representational dissimilarity (1 - mean PLS-SVD covariance)."""
    meaning: ClassVar[Meaning] = Meaning(
        "distance", False, "invertible linear maps of f and g (through the diversity sets)",
        "in [0, 1]: 1 - mean singular value of the standardised cross-covariance")
    max_d_svd: float
    max_d_svd_f: float
    d_svd_g: float
    mean_d_svd_f: float
    pivot: int
    leave_out: int
    input_set: List[int]
    num_label_sets: int
    label_set_search: str
    skipped_label_sets: int = 0
    d_svd_f_per_set: Optional[np.ndarray] = _internal()

    @property
    def value(self) -> float:
        return self.max_d_svd


@dataclass
class MCCAResult(_Result):
    """Mean canonical correlation over the meaningful components: the first
    min(rank1, rank2) of the two data sets' column spaces (or ``n_components`` of them)."""
    meaning: ClassVar[Meaning] = Meaning(
        "similarity", False, "invertible affine maps of either data set",
        "in [0, 1]: 1 = the column spaces coincide")
    value: float
    correlations: List[float]
    n_components: int
    rank1: int = 0
    rank2: int = 0
    rank_rtol: float = 0.0
    #: leading correlations that are 1 by the sample count alone (n <= rank1 + rank2:
    #: ``_rules.trivially_one``), counted in ``value``; they say nothing about the data
    trivially_one: int = 0


@dataclass
class DLogitResult(_Result):
    """d_logit = sqrt(E_x ||c1(x) - c2(x)||^2) with c_k the label-centred logits
    (``value_sq`` is d_logit^2)."""
    meaning: ClassVar[Meaning] = Meaning(
        "distance", True, "adding a per-input constant to the logits (softmax shift)",
        "logit units; a sum over the V labels, so it grows with V (compare like with like)")
    value: float
    value_sq: float


@dataclass
class DRepResult(_Result):
    """d_rep: per label set (pivot y0 and M1 labels of the first model's dimension), with
    A = L1^-1 L2 (L_k rows g_k(y_i) - g_k(y0); M1 x M2) and c the bias offsets,
    mean_x ||f1(x) - A f2(x) - c||^2 (squared units of f1). ``value`` is the mean over the
    sets that pass the condition-number rule ``max_cond`` ("median": cond_1(L1) at most the
    median over the drawn sets; a number: at most it; None: every non-singular set), with the
    spread over those sets in ``quantiles``; ``followup`` is the follow-up paper's reported
    number (the mean over every non-singular set divided once more by the number of sets);
    ``unsquared`` the mean of mean_x ||f1 - A f2 - c|| over the used sets, when asked for."""
    meaning: ClassVar[Meaning] = Meaning(
        "distance", False, "invertible linear maps of f2 (and of g2 by the inverse transpose)",
        "squared units of f1; grows with the scale of f1")
    value: float
    median: float
    quantiles: Dict[str, float]
    min: float
    max: float
    followup: float
    num_sets: int
    used_sets: int
    excluded_sets: int
    singular_sets: int
    max_cond: Any
    cond_threshold: float
    num_pivots: Optional[int] = None
    sets_per_pivot: Optional[int] = None
    unsquared: Optional[float] = None
    sets: Optional[List[List[int]]] = field(default=None, repr=False)
    per_set: Optional[np.ndarray] = _internal()
    cond_per_set: Optional[np.ndarray] = _internal()


@dataclass
class Failure:
    """A measure that could not be computed for a pair: why, and how to fix it."""
    reason: str
    fix: str


@dataclass
class Report(_Result):
    """All measures for one pair of models."""
    name1: str
    name2: str
    N: int
    V: int
    M1: int
    M2: int
    backend: str
    kl: KLResult
    d_llv: Optional[DLLVResult]
    d_logit: DLogitResult
    mcca_f: Optional[MCCAResult] = None
    mcca_g: Optional[MCCAResult] = None
    d_svd: Optional[DSVDResult] = None
    d_rep: Optional[DRepResult] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)
    #: the measures that could not be computed, by name: why and how to fix it
    failures: Dict[str, Failure] = field(default_factory=dict)
