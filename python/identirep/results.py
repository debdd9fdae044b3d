"""Result types. Every measure returns a dataclass that carries its choices, not just a float."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


def _jsonable(v: Any) -> Any:
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


class _Result:
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-serialisable dict (NaN/Inf become None)."""
        return _jsonable(self)


def _internal():
    return field(default=None, repr=False, metadata={"internal": True})


@dataclass
class KLResult(_Result):
    """Mean KL divergence over inputs, both directions, plus cheap extras of the same pass."""
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
    """Mean of the leading canonical correlations."""
    value: float
    correlations: List[float]
    n_components: int


@dataclass
class DLogitResult(_Result):
    """d_logit^2 = E_x ||c1(x) - c2(x)||^2 with c_k the label-centred logits."""
    value: float
    value_sq: float


@dataclass
class DRepResult(_Result):
    """d_rep = mean_x ||f1(x) - A f2(x) - c||^2 with A = L1^-1 L2, over diversity sets."""
    value: float
    mean: float
    min: float
    num_sets: int
    skipped_sets: int
    sets: List[List[int]]
    per_set: Optional[np.ndarray] = _internal()


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
    d_llv: DLLVResult
    d_logit: DLogitResult
    mcca_f: Optional[MCCAResult] = None
    mcca_g: Optional[MCCAResult] = None
    d_svd: Optional[DSVDResult] = None
    d_rep: Optional[DRepResult] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)
