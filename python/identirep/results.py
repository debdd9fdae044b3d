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
class TokenShown:
    """One token with its probability under a model: ``id``, its text ``token`` (see
    ``TokenReport``: byte-level vocabularies decoded) and ``p``."""
    id: int
    token: str
    p: float


@dataclass
class TopPosition:
    """A position (input) with one of the largest KL(p1||p2): where it is, the text before it
    and what each model predicts there.

    ``context`` is the text of the input tokens of the last positions of its document up to
    and including this one (``context_tokens`` one string per token; empty without
    ``tokens``); ``target`` the observed next token (-1: none) with ``p1_target`` and
    ``p2_target``; ``top1`` (``top2``) the first model's (second model's) most likely
    tokens with their probability under that model."""
    position: int
    document: Optional[int]
    kl12: float
    kl21: float
    jsd: Optional[float]
    context: str
    context_tokens: List[str]
    target: int
    target_token: Optional[str]
    p1_target: Optional[float]
    p2_target: Optional[float]
    top1: List[TokenShown]
    top2: List[TokenShown]


@dataclass
class TopTarget:
    """A target token (label id) with its KL(p1||p2) over the positions that predict it:
    ``count`` positions, their ``sum_kl12`` and ``mean_kl12``."""
    id: int
    token: str
    count: int
    sum_kl12: float
    mean_kl12: float


@dataclass
class TokenReport(_Result):
    """Per-position (per-token) closeness of two models, summarised: what the quantisation
    tools report (mean KL with an interval, KL quantiles, perplexities, the change in the
    target's probability, top-k agreement), with the positions and target tokens where the
    models differ most, as text. Headline (``float()``): ``kl12_mean`` = mean over positions
    of KL(p1(.|x) || p2(.|x)) in nats. ``definitions`` (also in the JSON) says what every
    field is; per-position arrays are in ``arrays`` (not in the JSON: ``identirep compare
    --per-token FILE`` writes them)."""
    meaning: ClassVar[Meaning] = Meaning(
        "distance", False, "none beyond the distributions (any models with equal p agree)",
        "nats; not symmetric (kl12 vs kl21)")
    definitions: ClassVar[Dict[str, str]] = {
        "positions": "inputs (token positions) summarised; every statistic is over them "
                     "unless it says 'with a target'",
        "positions_with_target": "positions whose observed next token (target) is known to "
                                 "both models; perplexities and delta p are over these",
        "documents": "texts the positions come from (None: not given)",
        "kl12_mean": "mean over positions of KL(p1||p2) in nats (the headline)",
        "kl12_ci": "95% interval of kl12_mean (see ci_method)",
        "kl21_mean": "mean over positions of KL(p2||p1) in nats",
        "kl21_ci": "95% interval of kl21_mean (see ci_method)",
        "ci_method": "how the intervals were computed",
        "kl12_quantiles": "quantiles of KL(p1||p2) over positions (q50 = median ... q99.9), "
                          "NumPy's linear interpolation between order statistics",
        "kl12_max": "largest KL(p1||p2) over positions",
        "kl21_quantiles": "the same for KL(p2||p1)",
        "kl21_max": "largest KL(p2||p1) over positions",
        "jsd_mean": "mean over positions of the Jensen-Shannon divergence 0.5 KL(p1||m) + "
                    "0.5 KL(p2||m), m = (p1 + p2) / 2, in nats (<= log 2); None: not asked for",
        "jsd_quantiles": "quantiles of the JSD over positions, as kl12_quantiles",
        "jsd_max": "largest JSD over positions",
        "jsd_seconds": "what the JSD cost: the seconds of its second pass over the logits "
                       "(None: not computed, or computed with the rest by the reference)",
        "ppl1": "perplexity of model 1: exp(-mean log p1(target)) over the positions with a "
                "target; identirep scores every position that has a target (a text's first "
                "tokens too), while llama.cpp's perplexity tool scores only the second half of "
                "each context window, so the two tools' perplexities and KL are not comparable",
        "ppl2": "perplexity of model 2, over the same positions",
        "ppl_ratio": "ppl2 / ppl1 (1 = the same perplexity; > 1: model 2 predicts the text "
                     "worse)",
        "dp_mean": "mean over the positions with a target of p2(target) - p1(target)",
        "dp_rms": "root mean square of p2(target) - p1(target) over the same positions",
        "top_k": "the most likely tokens per position each model's top list holds (k)",
        "agreement": "top-k agreement for k = 1, 5, 10 and top_k (up to top_k, and below V: "
                     "lists of all V labels agree trivially): mean over positions of "
                     "|T1_k & T2_k| / k, T_k a model's k most likely tokens (ties to the lower "
                     "id); top1 is the fraction of positions whose most likely tokens coincide",
        "p2_of_top1_mean": "mean over positions of p2(model 1's most likely token)",
        "p1_of_top2_mean": "mean over positions of p1(model 2's most likely token)",
        "top_positions": "the positions with the largest KL(p1||p2), largest first (ties to "
                         "the lower position), with their text and each model's top tokens",
        "top_targets": "the target tokens with the largest KL(p1||p2) summed over the "
                       "positions that predict them, largest sum first (ties to the lower id)",
        "notes": "what the statistics could not include, and why; after a float32 pass, the "
                 "bound on each position's KL rounding (tokens.float32_kl_bound: per-position "
                 "KL below ~1e-5 nats is then mostly noise; extract in float64 for it)",
        "token_text": "how token strings are shown: 'byte-level decoded' (GPT-2 style labels "
                      "such as 'Ġthe' shown as ' the'), 'as given' or 'ids' (no labels)",
    }
    positions: int
    positions_with_target: int
    documents: Optional[int]
    kl12_mean: float
    kl12_ci: List[float]
    kl21_mean: float
    kl21_ci: List[float]
    ci_method: str
    kl12_quantiles: Dict[str, float]
    kl12_max: float
    kl21_quantiles: Dict[str, float]
    kl21_max: float
    ppl1: Optional[float]
    ppl2: Optional[float]
    ppl_ratio: Optional[float]
    dp_mean: Optional[float]
    dp_rms: Optional[float]
    top_k: int
    agreement: Dict[str, float]
    p2_of_top1_mean: float
    p1_of_top2_mean: float
    top_positions: List[TopPosition]
    top_targets: List[TopTarget]
    token_text: str
    jsd_mean: Optional[float] = None
    jsd_quantiles: Optional[Dict[str, float]] = None
    jsd_max: Optional[float] = None
    jsd_seconds: Optional[float] = None
    #: what the statistics could not include, and why (no targets, one document)
    notes: List[str] = field(default_factory=list)
    #: the per-position arrays the statistics come from (keys as
    #: ``identirep.reference.per_token_reference``, plus ``targets``, ``tokens``,
    #: ``documents`` where the models carry them)
    arrays: Optional[Dict[str, np.ndarray]] = _internal()

    @property
    def value(self) -> float:
        return self.kl12_mean

    def to_dict(self) -> Dict[str, Any]:
        d = super().to_dict()
        d["definitions"] = dict(self.definitions)
        return d

    def as_dict(self) -> Dict[str, Any]:
        """The JSON form: ``to_dict`` (which every result has) under another name."""
        return self.to_dict()

    def __repr__(self) -> str:
        ci = "[" + ", ".join(f"{x:.3g}" for x in self.kl12_ci) + "]"
        ppl = (f", PPL {self.ppl1:.4g}/{self.ppl2:.4g}" if self.ppl1 is not None
               and self.ppl2 is not None else "")
        return (f"TokenReport(KL12 {self.kl12_mean:.3g} {ci}, top-1 "
                f"{self.agreement.get('top1', float('nan')):.3f}{ppl}, N={self.positions})")


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
    kl: Optional[KLResult]
    d_llv: Optional[DLLVResult]
    d_logit: Optional[DLogitResult]
    mcca_f: Optional[MCCAResult] = None
    mcca_g: Optional[MCCAResult] = None
    d_svd: Optional[DSVDResult] = None
    d_rep: Optional[DRepResult] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)
    #: the measures that could not be computed, by name: why and how to fix it
    failures: Dict[str, Failure] = field(default_factory=dict)
    #: the per-token report; None when off: models without their text (tokens, targets),
    #: ``per_token=False``, a GPU backend, or logits too small to resolve (a note says so)
    tokens: Optional[TokenReport] = None

