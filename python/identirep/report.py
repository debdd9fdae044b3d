"""Human-readable rendering of results (rich tables) next to their JSON form."""
from __future__ import annotations

import math
from typing import Iterable, List, Tuple

from .results import Report


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else "inf"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    return str(v)


def report_rows(r: Report) -> List[Tuple[str, str, str]]:
    """(measure, value, detail) rows of one comparison."""
    d = r.d_llv
    rows = [
        ("KL(1||2)", fmt(r.kl.kl12), "mean over inputs"),
        ("KL(2||1)", fmt(r.kl.kl21), ""),
        ("top-1 agreement", fmt(r.kl.top1_agreement), f"entropies {fmt(r.kl.entropy1)} / {fmt(r.kl.entropy2)}"),
        ("d_LLV", fmt(d.value), f"{d.combine}(t1, t2, lam t3, lam t4), lam={d.lam:g}, term={d.term}"),
        ("  t1 (labels)", fmt(d.t1), f"pivot {d.pivot}, leave-out {d.leave_out}; {d.pivot_search}"),
        ("  t2 (inputs)", fmt(d.t2), f"input set {_short(d.input_set)}; {d.input_search}"),
        ("  t3, t4", f"{fmt(d.t3)}, {fmt(d.t4)}", "sqrt-variance gaps"),
        ("d_logit", fmt(r.d_logit.value), "sqrt E_x ||c1(x) - c2(x)||^2, centred logits"),
    ]
    if d.degenerate_pairs:
        rows.append(("  degenerate labels", str(d.degenerate_pairs), _short(d.degenerate_labels)))
    if r.mcca_f is not None:
        rows.append(("mCCA f", fmt(r.mcca_f.value), f"{r.mcca_f.n_components} canonical correlations"))
    if r.mcca_g is not None:
        rows.append(("mCCA g", fmt(r.mcca_g.value), ""))
    if r.d_svd is not None:
        s = r.d_svd
        rows.append(("max d_SVD", fmt(s.max_d_svd), f"f: max over {s.label_set_search} label sets; g: chosen input set"))
        rows.append(("  d_SVD f / g", f"{fmt(s.max_d_svd_f)} / {fmt(s.d_svd_g)}",
                     f"bound 2 M d_LLV = {fmt(2 * r.M1 * d.value)}"))
    if r.d_rep is not None:
        rows.append(("d_rep", fmt(r.d_rep.value), f"max over {r.d_rep.num_sets} diversity sets (mean {fmt(r.d_rep.mean)})"))
    return rows


def _short(xs: Iterable, n: int = 6) -> str:
    xs = list(xs)
    body = ", ".join(str(x) for x in xs[:n])
    return f"[{body}{', ...' if len(xs) > n else ''}] ({len(xs)})" if len(xs) > n else f"[{body}]"


def render_report(r: Report, console=None) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    t = Table(title=f"{r.name1} vs {r.name2}  (N={r.N}, V={r.V}, M={r.M1}/{r.M2}, "
                    f"{r.backend}, {r.seconds:.2f} s)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("detail", overflow="fold")
    for row in report_rows(r):
        t.add_row(*row)
    console.print(t)
    for n in r.notes:
        console.print(f"note: {n}")
