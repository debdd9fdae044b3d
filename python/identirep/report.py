"""Human-readable rendering of results (rich tables) next to their JSON form."""
from __future__ import annotations

import math
from typing import Iterable, List, Tuple

from .results import Report, TokenReport


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
    """(measure, value, detail) rows of one comparison; a measure that could not be computed
    shows its reason and fix. Distances are 0 for identical models, similarities 1."""
    k, d = r.kl, r.d_llv
    rows = [] if k is None else [
        ("KL(1||2)", fmt(k.kl12), "distance (0 = same p), nats, mean over inputs"),
        ("KL(2||1)", fmt(k.kl21), ""),
        ("top-1 agreement", fmt(k.top1_agreement),
         f"similarity (1 = same); entropies {fmt(k.entropy1)} / {fmt(k.entropy2)}"),
    ]
    if d is not None:
        rows += [
            ("d_LLV", fmt(d.value), f"distance (0 = identifiably equal); {d.combine}(t1, t2, "
                                    f"lam t3, lam t4), lam={d.lam:g}, term={d.term}"),
            ("  t1 (labels)", fmt(d.t1), f"pivot {d.pivot}, leave-out {d.leave_out}; {d.pivot_search}"),
            ("  t2 (inputs)", fmt(d.t2), f"input set {_short(d.input_set)}; {d.input_search}"),
            ("  t3, t4", f"{fmt(d.t3)}, {fmt(d.t4)}", "sqrt-variance gaps"),
        ]
        if d.degenerate_pairs:
            rows.append(("  degenerate labels", str(d.degenerate_pairs), _short(d.degenerate_labels)))
    if r.d_logit is not None:
        rows.append(("d_logit", fmt(r.d_logit.value), f"distance (metric), logit units, grows "
                                                      f"with V={r.V}: sqrt E_x ||c1 - c2||^2"))
    for name, label in (("mcca_f", "mCCA f"), ("mcca_g", "mCCA g")):
        m = getattr(r, name)
        if m is not None:
            trivial = (f"; {m.trivially_one} of them 1 by the sample count alone "
                       f"({r.N if name == 'mcca_f' else r.V} samples <= ranks + 1)"
                       if m.trivially_one else "")
            rows.append((label, fmt(m.value), f"similarity (1 = same up to affine maps); mean "
                                              f"of {m.n_components} canonical correlations, "
                                              f"ranks {m.rank1}/{m.rank2}{trivial}"))
    if r.d_svd is not None:
        s = r.d_svd
        rows.append(("max d_SVD", fmt(s.max_d_svd), f"distance in [0, 1]; f: max over "
                                                    f"{s.label_set_search} label sets; g: chosen input set"))
        bound = f"bound 2 M d_LLV = {fmt(2 * r.M1 * d.value)}" if d is not None else ""
        rows.append(("  d_SVD f / g", f"{fmt(s.max_d_svd_f)} / {fmt(s.d_svd_g)}", bound))
    if r.d_rep is not None:
        p = r.d_rep
        q = p.quantiles
        few = " (too few sets for a spread)" if p.used_sets < 5 else ""
        rows.append(("d_rep", fmt(p.value),
                     f"distance, squared units of f1; mean over {p.used_sets} of {p.num_sets} "
                     f"label sets{few} (cond rule {p.max_cond}: {p.excluded_sets} left out, "
                     f"{p.singular_sets} singular)"))
        rows.append(("  d_rep spread", f"{fmt(q['q05'], 3)} .. {fmt(q['q95'], 3)}",
                     f"5-95% over sets, median {fmt(p.median, 3)}; follow-up's number "
                     f"{fmt(p.followup, 3)}"))
    for name, fail in r.failures.items():
        rows.append((name, "not computed", f"{fail.reason} -- fix: {fail.fix}"))
    if r.tokens is not None:
        rows += token_rows(r.tokens)
    return rows


def token_rows(t: TokenReport) -> List[Tuple[str, str, str]]:
    """(measure, value, detail) rows of the per-token report's statistics."""
    docs = "" if t.documents is None else f" in {t.documents} documents"
    rows = [("per-token", f"{t.positions} positions{docs}",
             f"each position's distributions; 95% intervals: {t.ci_method}")]
    for name, mean, ci, q, mx in (("KL(1||2)", t.kl12_mean, t.kl12_ci, t.kl12_quantiles,
                                   t.kl12_max),
                                  ("KL(2||1)", t.kl21_mean, t.kl21_ci, t.kl21_quantiles,
                                   t.kl21_max)):
        rows.append((f"  {name} mean", fmt(mean, 3),
                     f"95% [{fmt(ci[0], 3)}, {fmt(ci[1], 3)}]; {_quantiles(q, mx)}"))
    if t.jsd_mean is not None:
        cost = ("" if t.jsd_seconds is None else
                f"; its second pass took {t.jsd_seconds:.3g} s")
        rows.append(("  JSD mean", fmt(t.jsd_mean, 3),
                     f"nats (<= log 2); {_quantiles(t.jsd_quantiles, t.jsd_max)}{cost}"))
    if t.ppl1 is not None:
        rows.append(("  perplexity 1 / 2", f"{_sig(t.ppl1, 5)} / {_sig(t.ppl2, 5)}",
                     f"ratio ppl2/ppl1 {_sig(t.ppl_ratio, 5)}; exp(-mean log p(target)) over "
                     f"{t.positions_with_target} positions with a target"))
        rows.append(("  delta p(target)", _sig(t.dp_mean, 3),
                     f"mean of p2(target) - p1(target); RMS {_sig(t.dp_rms, 3)}"))
    agree = ", ".join(f"top-{k[3:]} {fmt(v, 3)}" for k, v in t.agreement.items())
    rows.append(("  top-k agreement", fmt(t.agreement["top1"], 4),
                 f"similarity (1 = same): {agree}; mean |T1_k & T2_k| / k"))
    rows.append(("  p2(top-1 of 1)", fmt(t.p2_of_top1_mean, 3),
                 f"mean p2 of model 1's most likely token; p1(top-1 of 2) "
                 f"{fmt(t.p1_of_top2_mean, 3)}"))
    for n in t.notes:
        rows.append(("  note", "", n))
    return rows


def _quantiles(q, mx) -> str:
    return ("median " + fmt(q["q50"], 3) + ", " + ", ".join(
        f"{k[1:]}% {fmt(v, 3)}" for k, v in q.items() if k != "q50") + f", max {fmt(mx, 3)}")


def _sig(v, digits: int = 2) -> str:
    """A number with ``digits`` significant digits (probabilities, perplexities)."""
    return "-" if v is None else f"{v:.{digits}g}"


def _tok(s) -> str:
    """A token string shown quoted, so that spaces and line breaks are visible."""
    return "-" if s is None else repr(s)


def render_tokens(t: TokenReport, console) -> None:
    """The per-token report's positions and target tokens with the largest KL, as text."""
    from rich.table import Table
    if t.top_positions:
        tab = Table(title=f"positions with the largest KL(1||2) (of {t.positions})")
        for col, just in (("pos", "right"), ("KL(1||2)", "right"), ("text before", "right"),
                          ("target", "left"), ("model 1 predicts", "left"),
                          ("model 2 predicts", "left")):
            tab.add_column(col, justify=just, overflow="fold")
        for p in t.top_positions:
            target = (_tok(p.target_token) + (f" p {_sig(p.p1_target)}/{_sig(p.p2_target)}"
                                               if p.p1_target is not None else ""))
            tab.add_row(*(literal(c) for c in (
                str(p.position) + ("" if p.document is None else f" (text {p.document})"),
                fmt(p.kl12, 3), p.context, target,
                " ".join(f"{_tok(s.token)} {_sig(s.p)}" for s in p.top1),
                " ".join(f"{_tok(s.token)} {_sig(s.p)}" for s in p.top2))))
        console.print(tab)
        console.print("target p shown as p1/p2; the predictions with each model's own p")
    if t.top_targets:
        tab = Table(title="target tokens with the largest summed KL(1||2)")
        for col in ("token", "id", "positions", "mean KL", "sum KL"):
            tab.add_column(col, justify="left" if col == "token" else "right")
        for x in t.top_targets:
            tab.add_row(literal(_tok(x.token)), str(x.id), str(x.count), fmt(x.mean_kl12, 3),
                        fmt(x.sum_kl12, 3))
        console.print(tab)


def _short(xs: Iterable, n: int = 6) -> str:
    xs = list(xs)
    body = ", ".join(str(x) for x in xs[:n])
    return f"[{body}{', ...' if len(xs) > n else ''}] ({len(xs)})" if len(xs) > n else f"[{body}]"


def literal(s):
    """User text (model names, token strings, paths, messages that quote them) for rich
    output: a ``rich.text.Text``, never read as markup ("[/bold]") or emoji codes (":x:"),
    with control characters and line breaks escaped ("\\x1b") so that the text cannot
    restyle the terminal or break a table's rows."""
    from rich.text import Text
    return Text("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(s)))


def render_report(r: Report, console=None) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    t = Table(title=Text.assemble(
        literal(r.name1), " vs ", literal(r.name2),
        f"  (N={r.N}, V={r.V}, M={r.M1}/{r.M2}, {r.backend}, {r.seconds:.2f} s)"))
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("detail", overflow="fold")
    for row in report_rows(r):
        t.add_row(*(literal(c) for c in row))
    console.print(t)
    if r.tokens is not None:
        render_tokens(r.tokens, console)
    for n in r.notes:
        console.print(Text.assemble("note: ", literal(n)))
