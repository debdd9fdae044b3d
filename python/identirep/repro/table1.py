"""``identirep repro table1``: the paper's Table 1, KL -> 0 while d_LLV stays.

Model 1 is a 2-d classifier of 7 classes whose labels g(y) have length rho and are evenly
spaced in angle; model 2 is model 1 with its labels permuted (``constructions.table1_pair``).
Both put each input's mass on the same label, so KL -> 0 as rho grows, while no linear map
relates their representations: d_LLV stays at about 1.32, max d_SVD at 1 and mCCA of f near 0.
The settings are the paper's (its code tabulates rho = 1, ..., 20 with 500 inputs per class,
d_LLV with lam = 1e-5, max/max and 100 candidate input sets).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

from .. import _rules as rules
from .. import constructions as C
from ..errors import IdentirepError, why
from ..measures import compare
from ..report import fmt
from ..results import _jsonable

#: the paper's grid of label lengths rho (its code tabulates every one of 1, ..., 20)
DEFAULT_RHOS = tuple(float(r) for r in range(1, 21))
#: the most inputs per class ``table1`` takes (7 classes: N = 7,000,000, f 112 MB)
MAX_INPUTS_PER_CLASS = 1_000_000
#: the paper's inputs per class (7 classes: N = 3500)
INPUTS_PER_CLASS = 500
#: d_LLV as the paper's Table 1 computes it: 100 candidate input sets
MEASURE_OPTIONS = {"lam": 1e-5, "combine": "max", "term": "max", "num_samples": 100}

#: every column of the table (JSON rows, CSV) and what it is
COLUMNS = {
    "rho": "length of every label vector g(y) (the paper's g_length)",
    "N": "inputs (7 classes x inputs per class)",
    "kl12": "distance, nats: KL(p1 || p2) averaged over the N inputs",
    "kl21": "distance, nats: KL(p2 || p1) averaged over the N inputs",
    "top1_agreement": "similarity: share of inputs whose most likely label is the same",
    "d_llv": "distance: max(t1, t2, lam t3, lam t4), lam = 1e-5, terms max over labels and "
             "inputs; exact pivot search over the 7 labels, best of 100 candidate input sets",
    "t1": "d_LLV's label-side term",
    "t2": "d_LLV's input-side term",
    "t3": "d_LLV's label-side sqrt-variance gap (weighted by lam)",
    "t4": "d_LLV's input-side sqrt-variance gap (weighted by lam)",
    "pivot": "d_LLV's pivot label",
    "leave_out": "d_LLV's leave-out label",
    "max_d_svd": "distance in [0, 1]: the larger of d_SVD f and d_SVD g",
    "d_svd_f": "distance in [0, 1]: PLS-SVD of f, max over every set of 2 of the 5 labels "
               "other than d_LLV's pivot and leave-out",
    "d_svd_g": "distance in [0, 1]: PLS-SVD of g on d_LLV's input set",
    "num_label_sets": "label sets d_SVD f is the max over",
    "mcca_f": "similarity in [0, 1]: mean of the 2 exact canonical correlations of f1, f2 "
              "over all N inputs",
    "mcca_g": "similarity in [0, 1]: the same for g1, g2 over the 7 labels",
    "bound": "2 M d_LLV (M = 2), the paper's bound on max d_SVD",
}


@dataclass
class Table1Result:
    """The rows of Table 1 (one per rho, keys of ``COLUMNS``) and the settings that made them."""
    settings: Dict[str, Any]
    rows: List[Dict[str, Any]]
    seconds: float = 0.0
    columns: Dict[str, str] = field(default_factory=lambda: dict(COLUMNS))

    def column(self, name: str) -> List[float]:
        return [r[name] for r in self.rows]

    def summary(self) -> Dict[str, Any]:
        """What the table shows, in numbers: KL at the smallest and largest rho, the band of
        d_LLV, the smallest max d_SVD and the largest mCCA of f."""
        first, last = self.rows[0], self.rows[-1]
        llv = self.column("d_llv")
        return {"rho_first": first["rho"], "kl12_first": first["kl12"],
                "rho_last": last["rho"], "kl12_last": last["kl12"], "kl21_last": last["kl21"],
                "d_llv_min": min(llv), "d_llv_max": max(llv),
                "max_d_svd_min": min(self.column("max_d_svd")),
                "mcca_f_max": max(self.column("mcca_f"))}

    def to_dict(self) -> Dict[str, Any]:
        return _jsonable({"experiment": "table1", "settings": self.settings,
                          "columns": self.columns, "rows": self.rows,
                          "summary": self.summary(), "seconds": self.seconds})

    def to_csv(self) -> str:
        return rows_csv(self.rows, list(self.columns))


def rows_csv(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` with these columns; a missing or non-finite number is empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None or (isinstance(r[c], float) and not math.isfinite(r[c]))
                    else r[c] for c in columns])
    return buf.getvalue()


def check_rhos(rhos, shown=None) -> List[float]:
    """The label lengths, ascending: finite, > 0, distinct, at least one (``shown``: how the
    caller gave them, for the message)."""
    shown = repr(rhos) if shown is None else shown
    fix = "give label lengths > 0, e.g. 1, 2, 5, 10, 20"
    try:
        out = [float(r) for r in rhos]
    except (TypeError, ValueError):
        raise IdentirepError(f"rhos must be numbers, got {shown}", fix=fix) from None
    if not out or not all(math.isfinite(r) and r > 0 for r in out):
        raise IdentirepError(f"rhos must be finite numbers > 0, got {shown}", fix=fix)
    if len(set(out)) != len(out):
        raise IdentirepError(f"rhos repeat a value: {shown}", fix="give each rho once")
    return sorted(out)


def _check_inputs_per_class(name: str, n) -> None:
    rules.check_count(name, n)
    if n > MAX_INPUTS_PER_CLASS:
        raise IdentirepError(f"{name} must be at most {MAX_INPUTS_PER_CLASS:,}, got {n:,}",
                             fix="the measures are exact at the paper's 500 per class; "
                                 "more inputs only cost memory")


def run_table1(rhos: Sequence[float] = DEFAULT_RHOS, inputs_per_class: int = INPUTS_PER_CLASS,
               seed: int = 0) -> Table1Result:
    """Table 1: ``compare`` of ``table1_pair(rho)`` for each rho (ascending).

    ``seed`` draws the inputs' angles and lengths and seeds every measure's search."""
    rhos = check_rhos(rhos)
    _check_inputs_per_class("inputs_per_class", inputs_per_class)
    rules.check_count("seed", seed, 0)
    t0 = time.perf_counter()
    rows = []
    for rho in rhos:
        a, b = C.table1_pair(rho, inputs_per_class=inputs_per_class, seed=seed)
        try:
            r = compare(a, b, seed=seed, **MEASURE_OPTIONS)
        except IdentirepError as e:   # which rho, and what to give instead
            raise IdentirepError(f"rho={rho:g}: {e.reason}",
                                 fix="give other rhos (the paper's are 1 to 20)") from None
        failed = {k: v for k, v in r.failures.items() if k in ("kl", "d_llv", "d_svd", "mcca_f",
                                                               "mcca_g")}
        if failed:
            raise IdentirepError(f"rho={rho:g}: " + "; ".join(
                f"{k}: {v.reason}" for k, v in failed.items()), fix="give other rhos")
        d, s = r.d_llv, r.d_svd
        rows.append({
            "rho": rho, "N": r.N, "kl12": r.kl.kl12, "kl21": r.kl.kl21,
            "top1_agreement": r.kl.top1_agreement, "d_llv": d.value, "t1": d.t1, "t2": d.t2,
            "t3": d.t3, "t4": d.t4, "pivot": d.pivot, "leave_out": d.leave_out,
            "max_d_svd": s.max_d_svd, "d_svd_f": s.max_d_svd_f, "d_svd_g": s.d_svd_g,
            "num_label_sets": s.num_label_sets, "mcca_f": r.mcca_f.value,
            "mcca_g": r.mcca_g.value, "bound": 2 * r.M1 * d.value})
    settings = {"rhos": rhos, "inputs_per_class": inputs_per_class, "seed": seed,
                "num_classes": len(C.TABLE1_PERMUTATION),
                "permutation": C.TABLE1_PERMUTATION.tolist(), "min_f_length": 2.0,
                "M": 2, **MEASURE_OPTIONS}
    return Table1Result(settings=settings, rows=rows, seconds=time.perf_counter() - t0)


def table1_figure(res: Table1Result):
    """Left: KL both ways against rho on a log axis. Right: d_LLV, max d_SVD (distances) and
    mCCA of f (a similarity) against rho on a linear axis."""
    from ..plots import _pyplot
    plt = _pyplot()
    rho = res.column("rho")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    for key, label, marker in (("kl12", "KL(p1 || p2)", "o"), ("kl21", "KL(p2 || p1)", "s")):
        pts = [(x, y) for x, y in zip(rho, res.column(key)) if y is not None and y > 0]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=4, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("rho (length of every label vector g(y))")
    ax.set_ylabel("KL, nats, mean over inputs (log scale)")
    ax.set_title("closeness in distribution: KL -> 0 as rho grows")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    for key, label, marker, color in (
            ("d_llv", "d_LLV (distance, lam = 1e-5, max/max)", "o", "C3"),
            ("max_d_svd", "max d_SVD (distance in [0, 1])", "^", "C2"),
            ("mcca_f", "mCCA of f (similarity in [0, 1])", "s", "C4")):
        ax2.plot(rho, res.column(key), marker=marker, ms=4, color=color, label=label)
    top = max(1.0, max(res.column("d_llv")))
    ax2.set_ylim(-0.05, 1.25 * top)
    ax2.set_xlabel("rho (length of every label vector g(y))")
    ax2.set_ylabel("value (linear scale)")
    ax2.set_title("representations: d_LLV stays, d_SVD ~ 1, mCCA ~ 0")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=9, loc="center right")
    st = res.settings
    fig.suptitle(f"Table 1: model 2 = model 1 with its {st['num_classes']} labels permuted "
                 f"(N = {res.rows[0]['N']} inputs, M = 2, seed {st['seed']})", fontsize=11)
    fig.tight_layout()
    return fig


def render_table1(res: Table1Result, console=None) -> None:
    """The table, what each column is, and what it shows."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    st = res.settings
    t = Table(title=f"Table 1: KL -> 0 while d_LLV stays (model 2 = model 1 with its "
                    f"{st['num_classes']} labels permuted; N = {res.rows[0]['N']}, M = 2, "
                    f"seed {st['seed']})")
    heads = (("rho", "rho"), ("kl12", "KL(1||2)"), ("kl21", "KL(2||1)"), ("d_llv", "d_LLV"),
             ("max_d_svd", "max d_SVD"), ("d_svd_f", "d_SVD f"), ("d_svd_g", "d_SVD g"),
             ("mcca_f", "mCCA f"), ("mcca_g", "mCCA g"))
    for _, head in heads:
        t.add_column(head, justify="right")
    for r in res.rows:
        t.add_row(f"{r['rho']:g}", *(fmt(float(r[k]), 4) for k, _ in heads[1:]))
    console.print(t)
    for k, head in heads:
        console.print(f"  {head}: {COLUMNS[k]}", highlight=False)
    s = res.summary()
    console.print(
        f"KL(1||2) is {fmt(s['kl12_first'], 3)} nats at rho={s['rho_first']:g} and "
        f"{fmt(s['kl12_last'], 3)} at rho={s['rho_last']:g}, while d_LLV stays within "
        f"[{s['d_llv_min']:.4f}, {s['d_llv_max']:.4f}], max d_SVD >= {s['max_d_svd_min']:.4f} "
        f"and mCCA of f <= {s['mcca_f_max']:.4f}: a tiny KL does not make representations "
        f"similar; d_LLV says they are not.", highlight=False)


# ------------------------------------------------------------------ command line
def rho_list(text: str) -> List[float]:
    """An argparse ``type``: a comma-separated list of label lengths."""
    try:
        return check_rhos([s for s in text.split(",") if s.strip()], repr(text))
    except IdentirepError as e:
        raise argparse.ArgumentTypeError(f"{e.reason}; {e.fix}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rhos", type=rho_list, default=list(DEFAULT_RHOS), metavar="R,R,...",
                        help="comma-separated label lengths (default the paper's 1,2,...,20)")
    parser.add_argument("--inputs-per-class", type=int, default=INPUTS_PER_CLASS,
                        help=f"inputs per class of the 7 (default the paper's "
                             f"{INPUTS_PER_CLASS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and of every "
                                                            "measure's search (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", metavar="DIR",
                        help="directory for table1.json, table1.csv and table1.png")


def write_outputs(payload: Dict[str, Any], csv_text: str, fig, out: str, stem: str) -> List[str]:
    """``stem``.json, ``stem``.csv and ``stem``.png in ``out`` (created when missing)."""
    from ..plots import _pyplot
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{stem}.{ext}") for ext in ("json", "csv", "png")]
    with open(paths[0], "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    with open(paths[1], "w") as fh:
        fh.write(csv_text)
    fig.savefig(paths[2], dpi=100)
    _pyplot().close(fig)
    return paths


def check_out(out) -> None:
    """--out: a directory, created when missing, that can be written to; and matplotlib for
    its figure. Checked before any work."""
    from ..plots import _pyplot
    if not out:
        return
    fix = "give a directory you can write to (it is created when missing)"
    if os.path.exists(out) and not os.path.isdir(out):
        raise IdentirepError(f"--out {out} is a file", fix=fix)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise IdentirepError(f"--out {out}: cannot create it ({why(e)})", fix=fix) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise IdentirepError(f"--out {out}: cannot write there (permission denied)", fix=fix)
    _pyplot()


def drive(args: argparse.Namespace, stem: str, run, figure, render, checks=()) -> int:
    """A driver's ``main``: --out (and ``checks``) checked before any work, exit 2 with the
    message when one fails; then ``run()``, its ``stem``.json, .csv and .png in --out, and
    its JSON (--json) or its table (``render``)."""
    try:
        rules.check_count("--seed", args.seed, 0)
        for check in checks:
            check()
        check_out(args.out)
    except IdentirepError as e:
        print(f"identirep: error: {e}", file=sys.stderr)
        return 2
    res = run()
    payload = res.to_dict()
    if args.out:
        paths = write_outputs(payload, res.to_csv(), figure(res), args.out, stem)
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    render(res)
    if args.out:
        print("wrote " + ", ".join(paths))
    return 0


def main(args: argparse.Namespace) -> int:
    return drive(args, "table1", lambda: run_table1(args.rhos, args.inputs_per_class, args.seed),
                 table1_figure, render_table1,
                 [lambda: _check_inputs_per_class("--inputs-per-class", args.inputs_per_class)])
