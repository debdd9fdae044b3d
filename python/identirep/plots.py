"""Plots (matplotlib, optional extra ``[plot]``): heatmaps, per-label terms, KL vs d_LLV.

Every heatmap uses one colour convention: dark = identical. Its colour scale is fixed per
measure (``SCALES``), never stretched to the values at hand, so a matrix of round-off-sized
distances stays dark:

- similarities in [0, 1] (mCCA, top-1 agreement): the fixed range 0 to 1, 1 (identical) dark;
- d_SVD, a dissimilarity in [0, 1]: the fixed range 0 to 1, 0 dark;
- d_LLV and d_logit: linear from 0 to the larger of a floor (1) and the largest value;
- KL and d_rep, heavy-tailed: from 0, linear up to a small threshold and logarithmic above it,
  to the larger of a floor (1) and the largest value.

A cell outside its measure's scale is marked ``*`` and named in a note under the heatmap.
Model names and token strings are shown literally (never parsed as mathtext), with control
characters escaped and long strings shortened.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import IdentirepError

TITLES = {"kl": "KL(row || column)", "d_llv": "d_LLV", "d_logit": "d_logit",
          "mcca_f": "mCCA of f", "mcca_g": "mCCA of g", "max_d_svd": "max d_SVD",
          "d_rep": "d_rep (row ~ A column)", "top1_agreement": "top-1 agreement"}


@dataclass(frozen=True)
class Scale:
    """How one measure is coloured.

    ``kind``: "similarity" (fixed [lo, hi], hi = identical), "bounded" (a dissimilarity with
    the fixed range [lo, hi], lo = identical) or "distance" (from 0 to max(floor, largest
    value); ``linthresh`` set: linear below it, logarithmic above)."""
    kind: str
    lo: float = 0.0
    hi: float = 1.0
    floor: float = 1.0
    linthresh: float | None = None
    what: str = "distance"


SCALES = {
    "kl": Scale("distance", linthresh=1e-3, what="KL in nats"),
    "d_llv": Scale("distance"),
    "d_logit": Scale("distance"),
    "d_rep": Scale("distance", linthresh=1e-3),
    "max_d_svd": Scale("bounded", what="dissimilarity"),
    "d_svd": Scale("bounded", what="dissimilarity"),
    "d_svd_f": Scale("bounded", what="dissimilarity"),
    "d_svd_g": Scale("bounded", what="dissimilarity"),
    "mcca_f": Scale("similarity", what="similarity"),
    "mcca_g": Scale("similarity", what="similarity"),
    "top1_agreement": Scale("similarity", what="agreement"),
}
_DEFAULT_SCALE = Scale("distance", what="value")
_CMAP = "viridis"


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise IdentirepError('plots need matplotlib: pip install "identirep[plot]"') from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def shown(s, width: int = 24) -> str:
    """``s`` as a plot shows it: control characters escaped, shortened to ``width``
    characters with a trailing ellipsis. Put it in a Text with ``parse_math=False``."""
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(s))
    return s if len(s) <= width else s[:width - 1] + "\u2026"


def _g(v: float) -> str:
    return f"{v:.3g}"


def color_scale(measure: str, values):
    """(norm, cmap, colorbar label, out-of-scale mask) for a K x K matrix of ``measure``."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize, SymLogNorm
    s = SCALES.get(measure, _DEFAULT_SCALE)
    vals = np.asarray(values, float)
    off = ~np.eye(*vals.shape, dtype=bool) if vals.ndim == 2 and vals.shape[0] == vals.shape[1] \
        else np.ones(vals.shape, bool)
    finite = vals[off & np.isfinite(vals)]
    cmap = colormaps[_CMAP].with_extremes(bad="0.85")
    if s.kind == "similarity":
        lo, hi = s.lo, s.hi
        cmap = cmap.reversed()
        label = f"{s.what}, {_g(hi)} = identical (dark)\nfixed scale {_g(lo)} to {_g(hi)}"
    elif s.kind == "bounded":
        lo, hi = s.lo, s.hi
        label = f"{s.what}, {_g(lo)} = identical (dark)\nfixed scale {_g(lo)} to {_g(hi)}"
    else:
        lo = 0.0
        hi = max(s.floor, float(finite.max()) if finite.size else 0.0)
        scale = (f"linear to {_g(s.linthresh)}, log above" if s.linthresh
                 else "linear")
        label = f"{s.what}, 0 = identical (dark)\n{scale}, 0 to max({_g(s.floor)}, largest)"
    if s.kind == "distance" and s.linthresh:
        norm = SymLogNorm(linthresh=s.linthresh, linscale=1.0, vmin=lo, vmax=hi, base=10)
    else:
        norm = Normalize(vmin=lo, vmax=hi)
    tol = 1e-9 * (hi - lo)
    with np.errstate(invalid="ignore"):
        outside = np.isfinite(vals) & ((vals < lo - tol) | (vals > hi + tol))
    return norm, cmap, label, outside


def _cell_text(v: float) -> str:
    if not np.isfinite(v):
        return "-"
    return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e3) else f"{v:.3f}"


def _text_color(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def heatmap_figure(result, measure: str):
    """The heatmap of ``result.values[measure]`` as a matplotlib figure (not saved)."""
    plt = _pyplot()
    vals = np.asarray(result.values[measure], float)
    K = len(result.names)
    names = [shown(n) for n in result.names]
    norm, cmap, label, outside = color_scale(measure, vals)
    fig, ax = plt.subplots(figsize=(2.4 + 0.9 * K, 1.6 + 0.8 * K))
    im = ax.imshow(vals, cmap=cmap, norm=norm)
    ax.set_xticks(range(K), names, rotation=45, ha="right", parse_math=False)
    ax.set_yticks(range(K), names, parse_math=False)
    for i in range(K):
        for j in range(K):
            v = vals[i, j]
            color = "black" if not np.isfinite(v) else _text_color(im.to_rgba(v))
            ax.text(j, i, _cell_text(v) + ("*" if outside[i, j] else ""), ha="center",
                    va="center", fontsize=8, color=color, parse_math=False)
    ax.set_title(TITLES.get(measure, measure), parse_math=False)
    above = bool((outside & (vals > norm.vmax)).any())
    below = bool((outside & (vals < norm.vmin)).any())
    extend = {(True, True): "both", (True, False): "max", (False, True): "min"}.get((above, below), "neither")
    cb = fig.colorbar(im, ax=ax, shrink=0.8, extend=extend)
    cb.set_label(label, fontsize=8, parse_math=False)
    if outside.any():
        ax.set_xlabel(f"* outside the colour scale {_g(norm.vmin)} to {_g(norm.vmax)}",
                      fontsize=8, parse_math=False)
    fig.tight_layout()
    return fig


def heatmap(result, measure: str, path) -> str:
    plt = _pyplot()
    fig = heatmap_figure(result, measure)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def heatmaps(result, out_dir) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    return [heatmap(result, m, os.path.join(out_dir, f"heatmap_{m}.png")) for m in result.values]


def kl_vs_llv_figure(result, width: int = 20):
    """One point per pair of models, symmetrised KL against d_LLV, annotated
    "name_i vs name_j" (each name shortened to ``width`` characters); pairs at the same spot
    (e.g. models identical in distribution) share one annotation, a line each."""
    plt = _pyplot()
    K = len(result.names)
    kl = np.asarray(result.values["kl"], float)
    llv = np.asarray(result.values["d_llv"], float)
    pts = [(0.5 * (kl[i, j] + kl[j, i]), llv[i, j],
            f"{shown(result.names[i], width)} vs {shown(result.names[j], width)}")
           for i in range(K) for j in range(i + 1, K)]
    pts = [p for p in pts if np.isfinite(p[0]) and np.isfinite(p[1])]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_xscale("symlog", linthresh=1e-4)
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0")
    # both axes from 0 to at least 1, as the heatmaps: round-off-sized values sit at 0
    xmax = max([1.0] + [1.5 * p[0] for p in pts])
    ymax = max([1.0] + [1.08 * p[1] for p in pts])
    ax.set_xlim(-2e-5, xmax)
    ax.set_ylim(-0.03 * ymax, ymax)
    ax.set_xlabel("(KL(p_i || p_j) + KL(p_j || p_i)) / 2, linear below 1e-4, log above",
                  parse_math=False)
    ax.set_ylabel("d_LLV (first model ~ second)", parse_math=False)
    ax.set_title("closeness in distribution vs d_LLV")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # group the pairs drawn on the same spot (4 pixels apart at most)
    xy = ax.transData.transform([(p[0], p[1]) for p in pts]) if pts else np.zeros((0, 2))
    groups: list[list[int]] = []
    for k in range(len(pts)):
        for grp in groups:
            if np.abs(xy[k] - xy[grp[0]]).max() <= 4:
                grp.append(k)
                break
        else:
            groups.append([k])
    mid = ax.transAxes.transform((0.5, 0.5))[0]
    notes = []
    for grp in sorted(groups, key=lambda grp: -xy[grp[0], 1]):
        x, y, _ = pts[grp[0]]
        left = xy[grp[0], 0] <= mid
        notes.append(ax.annotate("\n".join(pts[k][2] for k in grp), (x, y), fontsize=8,
                                 xytext=(5 if left else -5, 3), textcoords="offset points",
                                 ha="left" if left else "right", va="bottom", parse_math=False,
                                 arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6}))
        notes[-1].arrow_patch.set_visible(False)
    _unoverlap(fig, notes)
    return fig


def _unoverlap(fig, notes) -> None:
    """Move annotations (placed top first) down until none overlaps one placed before it;
    a moved one shows its line to its point."""
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    placed = []
    for a in notes:
        for _ in range(50):
            box = a.get_window_extent(renderer)
            hit = [b for b in placed if box.overlaps(b)]
            if not hit:
                break
            dy = (box.y1 - min(b.y0 for b in hit)) / px_per_pt + 2
            x, y = a.xyann
            a.xyann = (x, y - dy)
            a.arrow_patch.set_visible(True)
        placed.append(a.get_window_extent(renderer))


def kl_vs_llv(result, path) -> str:
    """One point per pair of models: symmetrised KL against d_LLV, annotated by model names."""
    plt = _pyplot()
    fig = kl_vs_llv_figure(result)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _label_name(y: int, tokens) -> str:
    if tokens is not None and tokens[y] is not None:
        return f'"{shown(tokens[y], 20)}" ({y})'
    return f"label {y}"


def top_labels(terms: dict, top: int = 10, tokens: Sequence[str] | None = None):
    """The ``top`` valid labels with the largest max(rest, piv), largest first, as
    (label id, term, name) with name the shown token string and id, else "label <id>"."""
    m = np.maximum(np.asarray(terms["rest"], float), np.asarray(terms["piv"], float))
    ok = np.asarray(terms["valid"], bool) & np.isfinite(m)
    if tokens is not None and len(tokens) != len(m):
        raise IdentirepError(f"tokens has {len(tokens)} strings for {len(m)} labels")
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-m[idx], kind="stable")][:top]
    return [(int(y), float(m[y]), _label_name(int(y), tokens)) for y in idx]


def label_terms_figure(terms: dict, d, tokens: Sequence[str] | None = None, top: int = 10):
    """The per-label terms figure from ``terms`` (``engine.label_terms(d.pivot)``).

    Left: the overview, max(rest, piv) of every valid label sorted in decreasing order
    against its rank (a line, readable at any V; log ranks for V > 100), with t1 and the
    leave-out. Right: the ``top`` labels by name (token strings when given)."""
    plt = _pyplot()
    m = np.maximum(np.asarray(terms["rest"], float), np.asarray(terms["piv"], float))
    V = len(m)
    ok = np.asarray(terms["valid"], bool) & np.isfinite(m)
    rows = top_labels(terms, top, tokens)
    order = np.flatnonzero(ok)
    order = order[np.argsort(-m[order], kind="stable")]
    ranks = np.arange(1, len(order) + 1)
    excluded = int((~ok).sum()) - (0 if ok[d.pivot] else 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    ax.plot(ranks, m[order], color="C0", lw=1.2, marker="o" if len(order) <= 60 else None,
            ms=3, label=f"max(rest, piv), {len(order)} labels")
    lo = np.flatnonzero(order == d.leave_out)
    if lo.size:
        ax.scatter([lo[0] + 1], [m[d.leave_out]], s=70, facecolors="none", edgecolors="C1", lw=1.5,
                   zorder=3, label=f"leave-out {_label_name(d.leave_out, tokens)}")
    ax.axhline(d.t1, color="gray", ls="--", lw=1, label=f"t1 = {d.t1:.4g}")
    if len(order) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("rank of the label (largest term first)")
    ax.set_ylabel("max(rest, piv)")
    ax.set_title(f"label-side d_LLV terms against pivot {_label_name(d.pivot, tokens)}", parse_math=False)
    if excluded:
        ax.text(0.99, 0.02, f"{excluded} degenerate label{'s' * (excluded != 1)} excluded",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="C3")
    leg = ax.legend(fontsize=8, loc="upper right")
    for t in leg.get_texts():
        t.set_parse_math(False)
    ax.grid(alpha=0.3)
    pos = np.arange(len(rows))
    ax2.barh(pos, [v for _, v, _ in rows],
             color=["C1" if y == d.leave_out else "C0" for y, _, _ in rows])
    ax2.set_yticks(pos, [n for _, _, n in rows], fontsize=8, parse_math=False)
    ax2.invert_yaxis()
    ax2.axvline(d.t1, color="gray", ls="--", lw=1)
    ax2.set_xlabel("max(rest, piv)")
    ax2.set_title(f"top {len(rows)} of {V} labels (orange: leave-out)")
    fig.tight_layout()
    return fig


def label_terms(engine, d, path, tokens: Sequence[str] | None = None, top: int = 10) -> str:
    """Per-label terms max(rest, piv) at the chosen pivot: the sorted overview with t1 and
    the leave-out, and the ``top`` labels, named by ``tokens`` (label id -> string) when given."""
    plt = _pyplot()
    fig = label_terms_figure(engine.label_terms(d.pivot), d, tokens, top)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
