"""``identirep repro bound``: the paper's bound max d_SVD <= 2 M d_LLV, point by point.

Each pair of models is a point: x = 2 M d_LLV, y = max d_SVD (M the representations'
dimension). The bound says every point lies under the line y = x. The pairs are constructed
(noisy copies of a 2-d classifier and of a random model over a range of noise levels, linear
maps of those copies, exactly equivalent linear maps, and Table 1's permuted pairs) and,
optionally, trained: the pairs of ``identirep repro width`` (its ``width_results.json``).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .. import _rules as rules
from .. import constructions as C
from ..errors import IdentirepError
from ..io import MAX_JSON_BYTES, _loads
from ..measures import engine
from ..report import fmt
from ..results import _jsonable
from .table1 import MEASURE_OPTIONS, drive, rows_csv, run_table1

#: constructed pairs per base model and construction (noisy copy, linear map of one)
NUM_PAIRS = 20
#: noise levels of the copies: geometric from the first to the second
NOISE_RANGE = (1e-3, 10.0)
#: the Table 1 pairs among the points: a part of its grid (they all give about one point),
#: with 100 inputs per class
TABLE1_RHOS = (1.0, 2.0, 5.0, 10.0, 20.0)
TABLE1_INPUTS_PER_CLASS = 100
#: a point is under the line when max d_SVD <= 2 M d_LLV + BOUND_ATOL (as compare's note)
BOUND_ATOL = 1e-9
#: what ``identirep repro width --out DIR`` writes, read by --width-results DIR
WIDTH_RESULTS = "width_results.json"
#: the keys every pair of width_results.json must have
WIDTH_KEYS = ("width", "seed_a", "seed_b", "kl_ab", "kl_ba", "d_llv", "d_svd_f", "d_svd_g",
              "d_svd_max", "M")
#: drawn at this value on the log axes when below it (round-off of equivalent models)
PLOT_FLOOR = 1e-10

#: every column of the points (JSON, CSV) and what it is
COLUMNS = {
    "kind": "constructed or trained",
    "family": "how the pair was made",
    "base": "the model the pair starts from",
    "noise": "standard deviation of the Gaussian noise added to f (constructed copies)",
    "rho": "label length of a Table 1 pair",
    "width": "hidden width of a trained pair",
    "seed_a": "seed of the first model of a trained pair (constructed: of the noise and map)",
    "seed_b": "seed of the second model of a trained pair",
    "M": "dimension of the representations",
    "kl12": "distance, nats: KL(p1 || p2) averaged over the inputs",
    "kl21": "distance, nats: KL(p2 || p1) averaged over the inputs",
    "d_llv": "distance: d_LLV, lam = 1e-5, max/max",
    "d_svd_f": "distance in [0, 1]: PLS-SVD of f, max over label sets",
    "d_svd_g": "distance in [0, 1]: PLS-SVD of g on d_LLV's input set",
    "max_d_svd": "distance in [0, 1]: the larger of d_SVD f and d_SVD g (y)",
    "bound": "2 M d_LLV, the paper's bound on max d_SVD (x)",
    "ratio": "max d_SVD / (2 M d_LLV): below 1 under the line",
    "under": "max d_SVD <= 2 M d_LLV + 1e-9",
}


@dataclass
class BoundResult:
    """One point per pair (keys of ``COLUMNS``), the settings, and the pairs of a width
    results file that had no value to plot."""
    settings: Dict[str, Any]
    points: List[Dict[str, Any]]
    skipped: List[Dict[str, Any]]
    seconds: float = 0.0

    @property
    def over(self) -> List[Dict[str, Any]]:
        """The points above the line: each one a violation of the bound."""
        return [p for p in self.points if not p["under"]]

    def summary(self) -> Dict[str, Any]:
        by_kind = {}
        for p in self.points:
            k = by_kind.setdefault(p["kind"], {"points": 0, "under": 0, "max_ratio": 0.0})
            k["points"] += 1
            k["under"] += bool(p["under"])
            k["max_ratio"] = max(k["max_ratio"], p["ratio"])
        return {"points": len(self.points), "under": len(self.points) - len(self.over),
                "over": len(self.over), "by_kind": by_kind, "skipped": len(self.skipped)}

    def to_dict(self) -> Dict[str, Any]:
        return _jsonable({"experiment": "bound", "settings": self.settings, "columns": COLUMNS,
                          "points": self.points, "skipped": self.skipped,
                          "summary": self.summary(), "seconds": self.seconds})

    def to_csv(self) -> str:
        return rows_csv(self.points, list(COLUMNS))


def point(kind: str, family: str, M: int, d_llv: float, max_d_svd: float, **extra) -> dict:
    """A point of the figure: x = 2 M d_LLV, y = max d_SVD, and whether it is under y = x."""
    x = 2 * M * d_llv
    ratio = max_d_svd / x if x > 0 else (0.0 if max_d_svd <= 0 else math.inf)
    row = {c: None for c in COLUMNS}
    row.update(extra, kind=kind, family=family, M=M, d_llv=d_llv, max_d_svd=max_d_svd,
               bound=x, ratio=ratio, under=bool(max_d_svd <= x + BOUND_ATOL))
    return row


def constructed_pairs(num_pairs: int = NUM_PAIRS, seed: int = 0):
    """(family, base name, noise, seed of the construction, model 1, model 2) of the
    constructed pairs: for each base model, one exact linear map, ``num_pairs`` noisy copies
    at noise levels geometric over ``NOISE_RANGE``, and a linear map of each of those copies.
    The constructions draw from seeds 1000 ``seed`` + 1, + 2, ..., never the bases' own
    ``seed`` (noise drawn from it would be a multiple of f: a linear map, not noise)."""
    bases = {
        "2-d classifier": C.even_spaced_classifier(7, 100, g_length=20, min_f_length=5,
                                                   seed=seed)[0],
        "random model": C.random_model(N=2000, V=50, M=4, scale=3.0, seed=seed),
    }
    noises = np.geomspace(*NOISE_RANGE, num_pairs)
    first = 1000 * seed + 1
    for name, base in bases.items():
        yield ("linear map (equivalent)", name, 0.0, first, base,
               C.linear_transform(base, seed=first))
        for i, noise in enumerate(noises):
            s = first + 1 + i
            copy = C.perturbed_copy(base, float(noise), seed=s)
            yield "noisy copy", name, float(noise), s, base, copy
            yield ("linear map of a noisy copy", name, float(noise), s, base,
                   C.linear_transform(copy, seed=s))


def constructed_points(num_pairs: int = NUM_PAIRS, seed: int = 0) -> List[dict]:
    """The points of ``constructed_pairs`` and of Table 1's pairs at ``TABLE1_RHOS``."""
    out = []
    for family, base, noise, s, a, b in constructed_pairs(num_pairs, seed):
        e = engine(a, b)
        d = e.d_llv(seed=seed, **MEASURE_OPTIONS)
        sv = e.d_svd(d.pivot, d.leave_out, d.input_set, seed=seed)
        k = e.kl()
        out.append(point("constructed", family, a.M, d.value, sv.max_d_svd, base=base,
                         noise=noise, seed_a=s, kl12=k.kl12, kl21=k.kl21,
                         d_svd_f=sv.max_d_svd_f, d_svd_g=sv.d_svd_g))
    for r in run_table1(TABLE1_RHOS, TABLE1_INPUTS_PER_CLASS, seed=seed).rows:
        out.append(point("constructed", "Table 1 pair (labels permuted)", 2, r["d_llv"],
                         r["max_d_svd"], base="2-d classifier", rho=r["rho"], kl12=r["kl12"],
                         kl21=r["kl21"], d_svd_f=r["d_svd_f"], d_svd_g=r["d_svd_g"]))
    return out


def _number(v, what: str, where: str, none_ok: bool = False):
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise IdentirepError(f"{where}: {what} must be a finite number, got {v!r}",
                             fix=f"rerun identirep repro width to rewrite {WIDTH_RESULTS}")
    return v


def read_width_results(directory) -> Dict[str, Any]:
    """``directory``/width_results.json, checked: a JSON object whose "pairs" is a list of
    records with the keys ``WIDTH_KEYS`` (d_llv and d_svd_max may be null: not computed)."""
    path = Path(directory) / WIDTH_RESULTS
    fix = f"run identirep repro width --out {directory} first, or give the directory it wrote"
    if not Path(directory).is_dir():
        raise IdentirepError(f"--width-results {directory} is not a directory", fix=fix)
    if not path.is_file():
        raise IdentirepError(f"{directory} has no {WIDTH_RESULTS}", fix=fix)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise IdentirepError(f"{path} is larger than {MAX_JSON_BYTES} bytes of JSON",
                             fix="give the width_results.json that identirep repro width wrote")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = _loads(fh.read(MAX_JSON_BYTES + 1), str(path))
    except UnicodeDecodeError as e:
        raise IdentirepError(f"{path} is not UTF-8 text ({e.reason})", fix=fix) from None
    except IdentirepError as e:
        raise IdentirepError(e.reason, fix=fix) from None
    pairs = obj.get("pairs") if isinstance(obj, dict) else None
    if not isinstance(pairs, list):
        raise IdentirepError(f"{path} has no list \"pairs\"", fix=fix)
    for i, rec in enumerate(pairs):
        where = f"{path}: pairs[{i}]"
        if not isinstance(rec, dict):
            raise IdentirepError(f"{where} is not an object", fix=fix)
        missing = [k for k in WIDTH_KEYS if k not in rec]
        if missing:
            raise IdentirepError(f"{where} lacks {', '.join(missing)}", fix=fix)
        for k in WIDTH_KEYS:
            _number(rec[k], k, where, none_ok=k not in ("width", "M", "seed_a", "seed_b"))
        for k, low in (("M", 1), ("seed_a", 0), ("seed_b", 0)):
            if not (isinstance(rec[k], int) and not isinstance(rec[k], bool) and rec[k] >= low):
                raise IdentirepError(f"{where}: {k} must be an integer >= {low}, got "
                                     f"{rec[k]!r}", fix=fix)
    return obj


def trained_points(results: Dict[str, Any]):
    """(points, skipped) of a checked width results object: a pair whose d_LLV or max d_SVD
    is null is skipped (with its width and seeds)."""
    points, skipped = [], []
    for rec in results["pairs"]:
        ids = {k: rec[k] for k in ("width", "seed_a", "seed_b")}
        if rec["d_llv"] is None or rec["d_svd_max"] is None:
            skipped.append({**ids, "why": "d_LLV or max d_SVD not computed"})
            continue
        points.append(point("trained", f"trained, width {rec['width']:g}", rec["M"],
                            float(rec["d_llv"]), float(rec["d_svd_max"]),
                            base="trained MLPs", kl12=rec["kl_ab"], kl21=rec["kl_ba"],
                            d_svd_f=rec["d_svd_f"], d_svd_g=rec["d_svd_g"], **ids))
    return points, skipped


def run_bound(num_pairs: int = NUM_PAIRS, seed: int = 0,
              width_results: Optional[str] = None) -> BoundResult:
    """Every point: the constructed pairs, and the trained ones of ``width_results`` (a
    directory holding width_results.json) when given."""
    rules.check_count("num_pairs", num_pairs)
    rules.check_count("seed", seed, 0)
    t0 = time.perf_counter()
    trained = read_width_results(width_results) if width_results is not None else None
    points = constructed_points(num_pairs, seed)
    skipped: List[Dict[str, Any]] = []
    settings = {"num_pairs": num_pairs, "seed": seed, "noise_range": list(NOISE_RANGE),
                "table1_rhos": list(TABLE1_RHOS),
                "table1_inputs_per_class": TABLE1_INPUTS_PER_CLASS, "bound_atol": BOUND_ATOL,
                "width_results": None, **MEASURE_OPTIONS}
    if trained is not None:
        more, skipped = trained_points(trained)
        points += more
        settings["width_results"] = str(Path(width_results) / WIDTH_RESULTS)
        settings["width_settings"] = {k: v for k, v in trained.items() if k != "pairs"
                                      and isinstance(v, (int, float, str, bool))}
    return BoundResult(settings=settings, points=points, skipped=skipped,
                       seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------ figure and table
#: marker, hollow, size and drawing order per family (trained pairs: one, whatever the width)
STYLES = {"noisy copy": ("o", False, 30, 2), "linear map of a noisy copy": ("D", True, 55, 2),
          "linear map (equivalent)": ("s", True, 40, 2),
          "Table 1 pair (labels permuted)": ("*", False, 160, 3),
          "trained pairs": ("^", False, 40, 4)}
COLORS = {"constructed": "C0", "trained": "C1"}


def _family_key(p: dict) -> str:
    return "trained pairs" if p["kind"] == "trained" else p["family"]


def bound_figure(res: BoundResult):
    """max d_SVD (y) against 2 M d_LLV (x), log axes, with the line y = x; colour by kind,
    marker by family; a value below ``PLOT_FLOOR`` is drawn at it."""
    from ..plots import _pyplot
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    pts = res.points
    xs = np.maximum(np.array([p["bound"] for p in pts], float), PLOT_FLOOR)
    ys = np.maximum(np.array([p["max_d_svd"] for p in pts], float), PLOT_FLOOR)
    groups: Dict[tuple, List[int]] = {}
    for i, p in enumerate(pts):
        groups.setdefault((p["kind"], _family_key(p)), []).append(i)
    for (kind, fam), idx in groups.items():
        marker, hollow, size, z = STYLES[fam]
        color = COLORS[kind]
        ax.scatter(xs[idx], ys[idx], marker=marker, s=size, zorder=z, alpha=0.8,
                   facecolors="none" if hollow else color, edgecolors=color,
                   linewidths=1.2 if hollow else 0.5, label=f"{kind}: {fam} ({len(idx)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    xlo, ylo = xs.min() / 3, PLOT_FLOOR / 3
    hi = max(xs.max(), 1.0) * 3
    line = np.array([min(xlo, ylo), hi])
    ax.plot(line, line, color="black", lw=1, zorder=1, label="y = x: the bound")
    ax.fill_between(line, line, hi, color="C3", alpha=0.07, lw=0)
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.text(xlo * 1.5, 0.8, "d_SVD <= 1", ha="left", va="top", fontsize=8, color="gray")
    ax.text(xlo * 1.5, hi / 2, "above the line: the bound would fail", ha="left", va="top",
            fontsize=9, color="C3")
    if (ys <= PLOT_FLOOR).any():
        ax.axhline(PLOT_FLOOR, color="gray", ls="--", lw=0.6)
        ax.text(hi / 1.5, PLOT_FLOOR * 1.4, f"max d_SVD below {PLOT_FLOOR:g} (round-off) "
                f"is drawn at {PLOT_FLOOR:g}", ha="right", va="bottom", fontsize=8,
                color="gray")
    ax.set_xlim(xlo, hi)
    ax.set_ylim(ylo, hi)
    ax.set_xlabel("2 M d_LLV (d_LLV with lam = 1e-5, max/max; M = dimension of f and g)")
    ax.set_ylabel("max d_SVD (larger of d_SVD f and d_SVD g)")
    s = res.summary()
    verdict = (f"all {s['points']} points under the line" if not s["over"]
               else f"{s['over']} of {s['points']} points ABOVE the line")
    ax.set_title(f"max d_SVD <= 2 M d_LLV: {verdict}")
    ax.grid(alpha=0.3, which="major")
    leg = ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.07))
    for t in leg.get_texts():
        t.set_parse_math(False)
    fig.tight_layout()
    return fig


def describe(p: dict) -> str:
    """Which pair a point is, in words."""
    if p["kind"] == "trained":
        return f"{p['family']}, seeds {p['seed_a']} and {p['seed_b']}"
    if p["rho"] is not None:
        return f"{p['family']}, rho = {p['rho']:g}"
    return f"{p['family']} of the {p['base']}, noise {p['noise']:.3g}, seed {p['seed_a']}"


def render_bound(res: BoundResult, console=None) -> None:
    """Per family: the points, their ranges and largest ratio, and how many lie under the
    line; then the verdict, loud when a point lies above it."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    t = Table(title="the bound max d_SVD <= 2 M d_LLV, one point per pair of models")
    for col in ("kind", "family", "pairs", "2 M d_LLV (x)", "max d_SVD (y)",
                "largest y / x", "under y = x"):
        t.add_column(col, justify="left" if col in ("kind", "family") else "right")
    groups: Dict[tuple, List[dict]] = {}
    for p in res.points:
        groups.setdefault((p["kind"], p["family"]), []).append(p)
    for (kind, fam), ps in groups.items():
        xs = [p["bound"] for p in ps]
        ys = [p["max_d_svd"] for p in ps]
        under = sum(p["under"] for p in ps)
        t.add_row(kind, fam, str(len(ps)), f"{fmt(min(xs), 3)} .. {fmt(max(xs), 3)}",
                  f"{fmt(min(ys), 3)} .. {fmt(max(ys), 3)}",
                  fmt(max(p["ratio"] for p in ps), 3), f"{under} of {len(ps)}")
    console.print(t)
    console.print("  x = 2 M d_LLV: d_LLV a distance (lam = 1e-5, max/max; constructed pairs: "
                  "best of 100 input sets, trained pairs: as their width run computed it), M "
                  "the dimension of f and g; y = max d_SVD: a distance in [0, 1], the larger of "
                  "d_SVD of f (max over label sets) and of g (d_LLV's input set).",
                  highlight=False)
    s = res.summary()
    if s["over"]:
        console.print(f"[bold red]BOUND VIOLATED: {s['over']} of {s['points']} points lie "
                      f"above the line y = x:[/bold red]")
        for p in res.over:
            console.print(f"  {describe(p)}: 2 M d_LLV = {fmt(p['bound'], 4)}, max d_SVD = "
                          f"{fmt(p['max_d_svd'], 4)}", highlight=False, markup=False)
    else:
        console.print(f"All {s['points']} points lie under the line y = x (max d_SVD <= 2 M "
                      f"d_LLV + {BOUND_ATOL:g}); the largest ratio y / x is "
                      f"{fmt(max(p['ratio'] for p in res.points), 3)}.", highlight=False)
    if res.skipped:
        console.print(f"{len(res.skipped)} trained pair(s) left out: d_LLV or max d_SVD was "
                      "not computed for them.", highlight=False)


# ------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-pairs", type=int, default=NUM_PAIRS,
                        help=f"noise levels per base model and construction (default "
                             f"{NUM_PAIRS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the constructed models "
                                                            "and of every search (default 0)")
    parser.add_argument("--width-results", metavar="DIR",
                        help=f"also plot the trained pairs of DIR/{WIDTH_RESULTS} (written by "
                             "identirep repro width --out DIR)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", metavar="DIR",
                        help="directory for bound.json, bound.csv and bound.png")


def main(args: argparse.Namespace) -> int:
    checks = [lambda: rules.check_count("--num-pairs", args.num_pairs)]
    if args.width_results is not None:
        checks.append(lambda: read_width_results(args.width_results))
    return drive(args, "bound", lambda: run_bound(args.num_pairs, args.seed, args.width_results),
                 bound_figure, render_bound, checks)
