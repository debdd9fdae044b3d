"""Plots (matplotlib, optional extra ``[plot]``): heatmaps, per-label terms, KL vs d_LLV."""
from __future__ import annotations

import os
from typing import List

import numpy as np

from .errors import IdentirepError

TITLES = {"kl": "KL(row || column)", "d_llv": "d_LLV", "d_logit": "d_logit",
          "mcca_f": "mCCA of f", "mcca_g": "mCCA of g", "max_d_svd": "max d_SVD",
          "d_rep": "d_rep (row ~ A column)", "top1_agreement": "top-1 agreement"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise IdentirepError('plots need matplotlib: pip install "identirep[plot]"') from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def heatmap(result, measure: str, path) -> str:
    plt = _pyplot()
    vals = result.values[measure]
    K = len(result.names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * K, 1.0 + 0.8 * K))
    im = ax.imshow(vals, cmap="viridis")
    ax.set_xticks(range(K), result.names, rotation=45, ha="right")
    ax.set_yticks(range(K), result.names)
    finite = vals[np.isfinite(vals)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(K):
        for j in range(K):
            v = vals[i, j]
            txt = "-" if not np.isfinite(v) else (f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e3) else f"{v:.3f}")
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="black" if np.isfinite(v) and v > mid else "white")
    ax.set_title(TITLES.get(measure, measure))
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def heatmaps(result, out_dir) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    return [heatmap(result, m, os.path.join(out_dir, f"heatmap_{m}.png")) for m in result.values]


def kl_vs_llv(result, path) -> str:
    """One point per pair of models: symmetrised KL against d_LLV, annotated 'i-j'."""
    plt = _pyplot()
    K = len(result.names)
    kl = result.values["kl"]
    llv = result.values["d_llv"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i in range(K):
        for j in range(i + 1, K):
            x, y = 0.5 * (kl[i, j] + kl[j, i]), llv[i, j]
            ax.scatter(x, y, color="C0")
            ax.annotate(f"{i}-{j}", (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_xlabel("(KL(p_i || p_j) + KL(p_j || p_i)) / 2")
    ax.set_ylabel("d_LLV")
    ax.set_title("closeness in distribution vs d_LLV")
    ax.grid(alpha=0.3)
    legend = "\n".join(f"{i}: {n}" for i, n in enumerate(result.names))
    ax.text(1.02, 1.0, legend, transform=ax.transAxes, fontsize=8, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def label_terms(engine, d, path) -> str:
    """Per-label terms max(rest, piv) at the chosen pivot; pivot and leave-out marked."""
    plt = _pyplot()
    t = engine.label_terms(d.pivot)
    m = np.maximum(t["rest"], t["piv"])
    y = np.arange(len(m))
    ok = t["valid"].copy()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    ax.scatter(y[ok], m[ok], s=6 if len(m) > 500 else 14, color="C0", label="max(rest, piv)")
    bad = ~ok
    bad[d.pivot] = False
    if bad.any():
        ax.scatter(y[bad], np.zeros(bad.sum()), marker="x", color="C3", label="degenerate (excluded)")
    ax.axvline(d.pivot, color="C2", lw=1.5, label=f"pivot {d.pivot}")
    ax.scatter([d.leave_out], [m[d.leave_out]], s=60, facecolors="none", edgecolors="C1",
               label=f"leave-out {d.leave_out}")
    ax.axhline(d.t1, color="gray", ls="--", lw=1, label=f"t1 = {d.t1:.4g}")
    ax.set_xlabel("label y")
    ax.set_ylabel("term")
    ax.set_title(f"label-side d_LLV terms against pivot {d.pivot}")
    ax.legend(fontsize=8)
    keep = ok.copy()
    keep[d.leave_out] = False
    ax2.hist(m[keep], bins=min(50, max(5, keep.sum() // 5)), color="C0", orientation="horizontal")
    ax2.axhline(d.t1, color="gray", ls="--", lw=1)
    ax2.set_xlabel("labels")
    ax2.set_title("distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
