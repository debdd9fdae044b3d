"""The width experiment's results as a terminal table (rich), every number named."""
from __future__ import annotations

import os
import sys

from ..report import fmt, literal


def _g(v: float) -> str:
    return f"{v:g}".replace("e-0", "e-")


def _spread(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{fmt(stats['mean'], 3)} [{fmt(stats['q25'], 3)}, {fmt(stats['q75'], 3)}]"


def finding_lines(payload: dict):
    """What the run found about the paper's claim, in words."""
    f = payload["finding"]
    if f["compared"] is None:
        return [f"finding: not checked: {f['why']}"]
    lo, hi = f["compared"]
    out = []
    for key, name in (("d_llv", "mean d_LLV"), ("d_svd_max", "mean max d_SVD")):
        g = f[key]
        rel = "below" if g["widest_below_narrowest"] else "NOT below"
        out.append(f"{name} at width {hi} ({fmt(g['widest'], 3)}) is {rel} that at width {lo} "
                   f"({fmt(g['narrowest'], 3)})")
    verdict = ("reproduced: wider networks are closer in d_LLV and have more similar "
               "representations" if f["holds"] else "NOT reproduced in this run")
    return [f"finding: {out[0]}; {out[1]}: {verdict}"]


def render_width(payload: dict, out=".", console=None) -> None:
    """The table and what its numbers are; ``out``: the directory the files were written to."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    plan, st = payload["plan"], payload["settings"]
    t = Table(title=f"identirep repro width: {plan['classes']} classes, {payload['mode']} mode, "
                    f"seed {plan['seed']}")
    for col in ("width", "seeds", "pairs", "d_LLV", "max d_SVD", "KL sym", "mCCA f",
                "test acc", "train s"):
        t.add_column(col, justify="right")
    for w in payload["widths"]:
        t.add_row(str(w["width"]), f"{len(w['admissible_seeds'])}/{w['models']}",
                  str(w["pairs"]), _spread(w["d_llv"]), _spread(w["d_svd_max"]),
                  fmt(w["kl_sym"]["mean"], 3), fmt(w["mcca_f"]["mean"], 3),
                  fmt(w["test_accuracy"]["mean"], 3), f"{w['train_seconds']:.0f}")
    console.print(t)
    m = st["measures"]
    lines = [
        f"seeds: models with test accuracy > {st['min_accuracy']} / trained; pairs: the pairs "
        f"of those (a width with fewer than {st['min_seeds']} such seeds is left out: '-'). "
        f"d_LLV, max d_SVD: mean [q25, q75] over the pairs; KL sym, mCCA f, test acc: means. "
        f"f on the {st['n_test']} held-out test inputs, g on all {plan['classes']} classes.",
        f"d_LLV: distance (0 = identifiably equal), lam = {_g(m['lam'])}, {m['combine']}(t1, t2, "
        f"lam t3, lam t4), term {m['term']}, {m['num_samples']} candidate input sets.",
        "max d_SVD: distance in [0, 1], the larger of f's (max over label diversity sets) and "
        "g's (d_LLV's input set).",
        "KL sym: (KL(a||b) + KL(b||a)) / 2, nats, mean over test inputs (distance); mCCA f: "
        "mean canonical correlation of f, similarity (1 = same up to affine maps).",
        "train s: training wall time of the width's models (tasks in parallel processes add "
        "up).",
    ]
    for w in payload["widths"]:
        if not w["enough_seeds"]:
            lines.append(f"width {w['width']}: {w['status']}")
    lines += finding_lines(payload)
    kd = payload["kl_vs_d_llv"]
    if kd["all"]["spearman"] is not None:
        per = ", ".join(f"width {w}: {fmt(v['spearman'], 2)}" for w, v in kd["per_width"].items()
                        if v["spearman"] is not None)
        lines.append(f"KL sym against d_LLV: Spearman rank correlation "
                     f"{fmt(kd['all']['spearman'], 2)} over {kd['all']['pairs']} pairs ({per}); "
                     "near 0: closeness in KL says little about d_LLV.")
    diff = payload["differences_from_paper"]
    if diff:
        lines.append(f"{payload['mode']} mode differs from the paper: " + "; ".join(diff)
                     + (". Run --full for the paper's settings." if payload["mode"] != "full"
                        else "."))
    else:
        lines.append("settings: the paper's (20 seeds, 15000 steps, widths 16 to 256).")
    c, s = payload["checkpoints"], payload["seconds"]
    lines.append(f"trained {c['trained']} model(s), reused {c['reused']} checkpoint(s); "
                 f"training {s['training']:.0f} s, measuring {s['measuring']:.0f} s, "
                 f"total {s['total']:.0f} s.")
    for line in lines:
        console.print(literal(line))
    files = [os.path.join(out, f) for f in payload["files"].values()]
    console.print(Text.assemble("wrote ", literal(", ".join(files))))
