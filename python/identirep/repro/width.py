"""``identirep repro width``: the synthetic width experiment, trained and measured.

Models of widths w train on the angle-class data set (``data``) from seeds 0..n-1 per width
(``train``); every pair of seeds of one width whose models' test accuracies both exceed
``MIN_ACCURACY`` is compared with :func:`identirep.compare` (d_LLV with lam = 1e-5, max/max,
max d_SVD of f and g, KL both ways, mCCA, d_logit, d_rep), f on the held-out test inputs and
g on every class. A width with fewer than ``MIN_SEEDS`` such seeds is reported as such, and
left out of the per-width means. The finding to reproduce: wider networks learn
distributions closer in d_LLV and more similar representations (smaller max d_SVD).

``run`` writes OUT/width_results.json (settings, per-width summary, per-pair records),
OUT/pairs.csv, OUT/widths.csv and the figures (``figures``); checkpoints live under
OUT/checkpoints and are reused. Paths in the results are relative to OUT.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import IdentirepError
from ..io import check_output
from ..measures import compare
from ..results import _jsonable
from .data import N_TEST, N_TRAIN
from .train import TrainSettings, checkpoint_path, device_type, finished, load_checkpoint

#: the paper's settings
PAPER_WIDTHS = (16, 32, 64, 128, 256)
PAPER_SEEDS = 20
PAPER_STEPS = 15_000
PAPER_CLASSES = 4
#: quick mode: the paper's widths but 256 (on a CPU as costly as the other four together),
#: half its seeds, its steps (README.md, "Reproducing the paper": what it found with seeds
#: 0, 1 and 2)
QUICK_WIDTHS = (16, 32, 64, 128)
QUICK_SEEDS = 10
QUICK_STEPS = 15_000
#: a pair is admissible when both models' test accuracies exceed this
MIN_ACCURACY = 0.9
#: a width with fewer admissible seeds is reported as such and left out of the means
MIN_SEEDS = 5
#: compare's options (the paper's for trained models)
MEASURE_OPTIONS = {"lam": 1e-5, "combine": "max", "term": "max", "num_samples": 200}
#: the per-pair values summarised per width
SUMMARISED = ("d_llv", "d_svd_max", "d_svd_f", "d_svd_g", "kl_sym", "kl_ab", "kl_ba",
              "mcca_f", "mcca_g", "d_logit", "top1_agreement")
#: what each per-pair value is
FIELDS = {
    "width": "hidden width w of both models",
    "seed_a": "seed of model a (the lower one)",
    "seed_b": "seed of model b",
    "acc_a": "test accuracy of model a (argmax over classes, held-out test set)",
    "acc_b": "test accuracy of model b",
    "M": "representation dimension (2)",
    "kl_ab": "KL(p_a || p_b), nats, mean over the test inputs (distance)",
    "kl_ba": "KL(p_b || p_a), nats, mean over the test inputs (distance)",
    "kl_sym": "(kl_ab + kl_ba) / 2, nats (distance)",
    "d_llv": "d_LLV, lam = 1e-5, combine max, term max (distance, 0 = identifiably equal)",
    "d_llv_t1": "d_LLV label-side term t1", "d_llv_t2": "d_LLV input-side term t2",
    "d_llv_t3": "d_LLV sqrt-variance gap t3 (weighted by lam)",
    "d_llv_t4": "d_LLV sqrt-variance gap t4 (weighted by lam)",
    "d_svd_f": "max d_SVD of f over label diversity sets (distance in [0, 1])",
    "d_svd_g": "d_SVD of g on d_LLV's input set (distance in [0, 1])",
    "d_svd_max": "max d_SVD = max(d_svd_f, d_svd_g) (distance in [0, 1])",
    "bound": "2 M d_LLV, the paper's bound on max d_SVD",
    "mcca_f": "mean canonical correlation of f_a, f_b over the test inputs (similarity, 1 = same)",
    "mcca_g": "mean canonical correlation of g_a, g_b over the classes (similarity)",
    "d_logit": "d_logit, logit units (distance, metric)",
    "d_rep": "d_rep of a ~ A b, squared units of f_a, mean over well-conditioned label sets",
    "top1_agreement": "fraction of test inputs whose argmax class agrees (similarity)",
}


@dataclass(frozen=True)
class Plan:
    """What one run trains and measures."""
    mode: str
    widths: Tuple[int, ...]
    seeds: int
    steps: int
    classes: int = PAPER_CLASSES
    seed: int = 0
    fixed_length: str = "none"

    def train_settings(self, device: str = "cpu") -> TrainSettings:
        """The training settings of this plan on a torch ``device`` ("cpu", "cuda", "cuda:1":
        its type is part of a checkpoint's identity)."""
        return TrainSettings(classes=self.classes, steps=self.steps,
                             fixed_length=self.fixed_length, data_seed=self.seed,
                             base_seed=self.seed, device=device_type(device))

    def differences(self) -> List[str]:
        """How this run differs from the paper's experiment (none in full mode)."""
        out = []
        if self.widths != PAPER_WIDTHS:
            out.append(f"widths {list(self.widths)} instead of {list(PAPER_WIDTHS)}")
        if self.seeds != PAPER_SEEDS:
            pairs = self.seeds * (self.seeds - 1) // 2
            out.append(f"{self.seeds} seeds per width (0..{self.seeds - 1}) instead of "
                       f"{PAPER_SEEDS}, so at most {pairs} pair{'s' * (pairs != 1)} per width "
                       f"instead of {PAPER_SEEDS * (PAPER_SEEDS - 1) // 2}")
        if self.steps != PAPER_STEPS:
            out.append(f"{self.steps} training steps instead of {PAPER_STEPS}")
        if self.classes != PAPER_CLASSES:
            out.append(f"{self.classes} classes (the paper's main figure: {PAPER_CLASSES}; its "
                       "appendix also 6, 10, 18)")
        if self.fixed_length != "none":
            out.append(f"fixed-length variant: {self.fixed_length} rescaled to norm 20")
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


def make_plan(mode: str = "quick", widths: Optional[Sequence[int]] = None,
              seeds: Optional[int] = None, steps: Optional[int] = None, classes: int = 4,
              seed: int = 0, fixed_length: str = "none") -> Plan:
    """The quick or full plan; with any of widths, seeds, steps replaced, a "custom" one."""
    if mode not in ("quick", "full"):
        raise IdentirepError(f"mode must be 'quick' or 'full', got {mode!r}")
    full = mode == "full"
    if widths or seeds or steps:
        mode = "custom"
    return Plan(mode, tuple(sorted(set(widths or (PAPER_WIDTHS if full else QUICK_WIDTHS)))),
                seeds or (PAPER_SEEDS if full else QUICK_SEEDS),
                steps or (PAPER_STEPS if full else QUICK_STEPS), classes, seed, fixed_length)


# ------------------------------------------------------------------------------ measuring

def pair_record(width: int, a, b, meta_a: dict, meta_b: dict, seed: int) -> dict:
    """Every measure of one pair (``FIELDS``), from ``compare``'s report."""
    r = compare(a, b, seed=seed, progress=False, **MEASURE_OPTIONS)
    kl, d, s = r.kl, r.d_llv, r.d_svd
    rec = {"width": width, "seed_a": meta_a["seed"], "seed_b": meta_b["seed"],
           "acc_a": meta_a["test_accuracy"], "acc_b": meta_b["test_accuracy"], "M": r.M1,
           "kl_ab": kl.kl12, "kl_ba": kl.kl21, "kl_sym": 0.5 * (kl.kl12 + kl.kl21),
           "top1_agreement": kl.top1_agreement, "d_logit": r.d_logit.value}
    rec.update({k: None for k in ("d_llv", "d_llv_t1", "d_llv_t2", "d_llv_t3", "d_llv_t4",
                                  "bound", "d_svd_f", "d_svd_g", "d_svd_max", "mcca_f",
                                  "mcca_g", "d_rep")})
    if d is not None:
        rec.update(d_llv=d.value, d_llv_t1=d.t1, d_llv_t2=d.t2, d_llv_t3=d.t3, d_llv_t4=d.t4,
                   bound=2 * r.M1 * d.value)
    if s is not None:
        rec.update(d_svd_f=s.max_d_svd_f, d_svd_g=s.d_svd_g, d_svd_max=s.max_d_svd)
    for name in ("mcca_f", "mcca_g", "d_rep"):
        if getattr(r, name) is not None:
            rec[name] = getattr(r, name).value
    if r.failures:
        rec["failures"] = {k: f.reason for k, f in r.failures.items()}
    return rec


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], float)
    if not v.size:
        return {"mean": None, "median": None, "q25": None, "q75": None, "min": None,
                "max": None, "n": 0}
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {"mean": float(v.mean()), "median": float(q50), "q25": float(q25),
            "q75": float(q75), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def measure_width(root, plan: Plan, width: int,
                  device: str = "cpu") -> Tuple[dict, List[dict], List[dict]]:
    """(summary, pair records, model records) of one width from its checkpoints trained on
    ``device``."""
    t0 = time.perf_counter()
    settings = plan.train_settings(device)
    loaded, models = [], []
    for s in range(plan.seeds):
        m, meta = load_checkpoint(root, settings, width, s)
        loaded.append((m, meta))
        models.append({"width": width, "seed": s, "test_accuracy": meta["test_accuracy"],
                       "train_nll": meta["train_nll"], "train_seconds": meta["train_seconds"],
                       "trained_with_seeds": meta["trained_with_seeds"],
                       "checkpoint": checkpoint_path(root, settings, width, s).relative_to(
                           root.parent).as_posix()})
    ok = [(m, meta) for m, meta in loaded if meta["test_accuracy"] > MIN_ACCURACY]
    pairs = [pair_record(width, a, b, ma, mb, plan.seed)
             for (a, ma), (b, mb) in itertools.combinations(ok, 2)]
    enough = len(ok) >= MIN_SEEDS
    summary = {"width": width, "models": plan.seeds,
               "admissible_seeds": [meta["seed"] for _, meta in ok], "pairs": len(pairs),
               "enough_seeds": enough,
               "status": "ok" if enough else (
                   f"fewer than {MIN_SEEDS} seeds with test accuracy > {MIN_ACCURACY} "
                   f"({len(ok)} of {plan.seeds}): left out of the means"),
               "test_accuracy": _stats([m["test_accuracy"] for m in models]),
               "train_seconds": _train_seconds(models),
               "measure_seconds": time.perf_counter() - t0}
    for key in SUMMARISED:
        summary[key] = _stats([p[key] for p in pairs] if enough else [])
    return summary, pairs, models


def _train_seconds(models: List[dict]) -> float:
    """Wall time spent training a width's models (models trained together counted once)."""
    runs = {tuple(m["trained_with_seeds"]): m["train_seconds"] for m in models}
    return float(sum(runs.values()))


def finding(widths: List[dict]) -> dict:
    """Mean d_LLV and mean max d_SVD at the widest width against the narrowest, over the
    widths with enough admissible seeds (and both means measured)."""
    ok = [w for w in widths if w["enough_seeds"]
          and w["d_llv"]["mean"] is not None and w["d_svd_max"]["mean"] is not None]
    if len(ok) < 2:
        return {"compared": None, "holds": None,
                "why": f"fewer than 2 widths with at least {MIN_SEEDS} admissible seeds "
                       "and pairs measured in d_LLV and max d_SVD"}
    lo, hi = ok[0], ok[-1]
    out = {"compared": [lo["width"], hi["width"]]}
    for key in ("d_llv", "d_svd_max"):
        a, b = lo[key]["mean"], hi[key]["mean"]
        out[key] = {"narrowest": a, "widest": b, "widest_below_narrowest": bool(b < a)}
    out["holds"] = out["d_llv"]["widest_below_narrowest"] and \
        out["d_svd_max"]["widest_below_narrowest"]
    return out


def kl_vs_d_llv(pairs: List[dict], widths: List[dict]) -> dict:
    """Spearman's rank correlation of the symmetrised KL and d_LLV over the pairs of the
    widths with enough admissible seeds, all together and per width: whether pairs closer in
    KL are closer in d_LLV."""
    from scipy.stats import spearmanr

    def rho(ps):
        ps = [p for p in ps if p["kl_sym"] is not None and p["d_llv"] is not None]
        if len(ps) < 3:
            return {"spearman": None, "pairs": len(ps)}
        r = spearmanr([p["kl_sym"] for p in ps], [p["d_llv"] for p in ps])[0]
        return {"spearman": float(r), "pairs": len(ps)}
    ok = {w["width"] for w in widths if w["enough_seeds"]}
    used = [p for p in pairs if p["width"] in ok]
    return {"kl": "(kl_ab + kl_ba) / 2", "all": rho(used),
            "per_width": {str(w): rho([p for p in used if p["width"] == w]) for w in sorted(ok)}}


# ------------------------------------------------------------------------------ the run

def missing(root, plan: Plan, device: str = "cpu") -> Dict[int, List[int]]:
    """The seeds per width without a finished checkpoint trained on ``device``."""
    settings = plan.train_settings(device)
    out = {}
    for w in plan.widths:
        todo = [s for s in range(plan.seeds)
                if not finished(checkpoint_path(root, settings, w, s), w, s, settings)]
        if todo:
            out[w] = todo
    return out


def run(plan: Plan, out, device: str = "cpu", jobs: int = 1,
        say: Callable[[str], None] = lambda s: None) -> dict:
    """Train what is missing, measure every width, write the files; returns the results."""
    from .jobs import train_all
    t0 = time.perf_counter()
    out = Path(out)
    root = out / "checkpoints"
    todo = missing(root, plan, device)
    settings = plan.train_settings(device)
    for w, seeds in todo.items():      # a checkpoint that cannot be written fails now, not
        for s in seeds:                # after the training
            check_output(checkpoint_path(root, settings, w, s))
    reused = sum(plan.seeds - len(todo.get(w, ())) for w in plan.widths)
    if reused:
        say(f"reusing {reused} finished checkpoint(s) under {root}")
    train_seconds = train_all(root, plan, todo, device, jobs, say) if todo else 0.0
    t1 = time.perf_counter()
    widths, pairs, models = [], [], []
    for w in plan.widths:
        summary, p, m = measure_width(root, plan, w, device)
        say(f"width {w}: {len(p)} pairs measured in {summary['measure_seconds']:.1f} s")
        widths.append(summary)
        pairs += p
        models += m
    t2 = time.perf_counter()
    payload = {
        "experiment": "width",
        "mode": plan.mode,
        "plan": plan.to_dict(),
        "paper": {"widths": list(PAPER_WIDTHS), "seeds": PAPER_SEEDS, "steps": PAPER_STEPS,
                  "classes": PAPER_CLASSES},
        "differences_from_paper": plan.differences(),
        "settings": {"train": settings.to_dict(), "n_train": N_TRAIN,
                     "n_test": N_TEST, "min_accuracy": MIN_ACCURACY, "min_seeds": MIN_SEEDS,
                     "measures": {**MEASURE_OPTIONS, "seed": plan.seed,
                                  "inputs": f"f on the {N_TEST} held-out test inputs",
                                  "labels": f"g on all {plan.classes} classes"},
                     "device": device, "jobs": jobs},
        "widths": widths,
        "pairs": pairs,
        "models": models,
        "finding": finding(widths),
        "kl_vs_d_llv": kl_vs_d_llv(pairs, widths),
        "fields": FIELDS,
        "seconds": {"training": train_seconds, "measuring": t2 - t1, "total": t2 - t0},
        "checkpoints": {"trained": sum(len(v) for v in todo.values()), "reused": reused,
                        "dir": root.name},
    }
    payload = _jsonable(payload)
    payload["files"] = write_outputs(payload, out)
    return payload


def _csv(path: Path, rows: List[dict], keys: Sequence[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in rows:
            w.writerow(["" if r.get(k) is None else r.get(k) for k in keys])


def width_rows(widths: List[dict]) -> Tuple[List[dict], List[str]]:
    """widths.csv: one flat row per width."""
    rows = []
    for s in widths:
        row = {k: s[k] for k in ("width", "models", "pairs", "enough_seeds", "train_seconds",
                                 "measure_seconds")}
        row["admissible_seeds"] = len(s["admissible_seeds"])
        row["mean_test_accuracy"] = s["test_accuracy"]["mean"]
        for key in SUMMARISED:
            for stat in ("mean", "median", "q25", "q75", "min", "max"):
                row[f"{key}_{stat}"] = s[key][stat]
        rows.append(row)
    return rows, list(rows[0]) if rows else []


def write_outputs(payload: dict, out: Path) -> Dict[str, str]:
    """width_results.json, pairs.csv, widths.csv and the figures, under ``out``; returns
    their names."""
    from .figures import width_figures
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "width_results.json", "pairs_csv": out / "pairs.csv",
             "widths_csv": out / "widths.csv"}
    keys = list(FIELDS)
    _csv(files["pairs_csv"], payload["pairs"], keys)
    rows, wkeys = width_rows(payload["widths"])
    _csv(files["widths_csv"], rows, wkeys)
    files.update(width_figures(payload, out))
    names = {k: v.name for k, v in files.items()}
    payload = {**payload, "files": names}
    tmp = files["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, files["json"])
    return names
