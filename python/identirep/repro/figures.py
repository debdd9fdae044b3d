"""The width experiment's figures (matplotlib, Agg).

- ``width_d_llv_d_svd.png``: mean d_LLV and mean max d_SVD over the admissible pairs of each
  width against the width (log scale), with the interquartile range over pairs as a band and
  the minimum and maximum as whiskers; a width with too few admissible seeds is not drawn.
- ``width_kl_vs_d_llv.png``: one point per pair, the symmetrised KL (KL(a||b) + KL(b||a)) / 2
  against d_LLV, coloured by width: pairs close in KL need not be close in d_LLV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ..plots import _pyplot

_DPI = 110


def _spread_panel(ax, widths, key: str, label: str) -> None:
    rows = [w for w in widths if w["enough_seeds"] and w[key]["mean"] is not None]
    x = np.array([w["width"] for w in rows], float)
    get = {s: np.array([w[key][s] for w in rows], float) for s in ("mean", "q25", "q75",
                                                                  "min", "max")}
    ax.fill_between(x, get["q25"], get["q75"], color="C0", alpha=0.2,
                    label="interquartile range over pairs")
    ax.errorbar(x, get["mean"], yerr=[get["mean"] - get["min"], get["max"] - get["mean"]],
                color="C0", marker="o", capsize=4, lw=1.5, elinewidth=0.8,
                label="mean over pairs; whiskers: min to max")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(int(v)) for v in x])
    ax.minorticks_off()
    ax.set_xlabel("hidden width w")
    ax.set_ylabel(label, parse_math=False)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    for w in rows:
        ax.annotate(f"{w['pairs']} pairs", (w["width"], w[key]["mean"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points", color="0.35")


def width_figure(payload: dict):
    """The two panels, d_LLV and max d_SVD against width (not saved)."""
    plt = _pyplot()
    widths = payload["widths"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _spread_panel(axes[0], widths, "d_llv", "d_LLV (lam = 1e-5, max/max), distance")
    _spread_panel(axes[1], widths, "d_svd_max", "max d_SVD (max of f and g), distance")
    axes[0].legend(fontsize=7, loc="upper right")
    left_out = [str(w["width"]) for w in widths if not w["enough_seeds"]]
    plan = payload["plan"]
    title = (f"{plan['classes']} classes, {plan['seeds']} seeds x {plan['steps']} steps per "
             f"width ({payload['mode']} mode)")
    if left_out:
        title += f"; not drawn (too few seeds with accuracy > 0.9): width {', '.join(left_out)}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def kl_figure(payload: dict):
    """Symmetrised KL against d_LLV, one point per pair, coloured by width (not saved): the
    pairs of the widths with enough seeds, those the Spearman correlation in the title is
    over."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, w in enumerate(payload["widths"]):
        if not w["enough_seeds"]:
            continue
        pts = [(p["kl_sym"], p["d_llv"]) for p in payload["pairs"]
               if p["width"] == w["width"] and p["kl_sym"] is not None
               and p["d_llv"] is not None]
        if pts:
            kl, llv = np.array(pts).T
            ax.scatter(kl, llv, s=14, alpha=0.75, color=f"C{i}",
                       label=f"width {w['width']} ({len(pts)} pairs)")
    ax.set_xscale("log")
    ax.set_xlabel("(KL(a || b) + KL(b || a)) / 2, nats, mean over test inputs",
                  parse_math=False)
    ax.set_ylabel("d_LLV (lam = 1e-5, max/max)", parse_math=False)
    rho = payload["kl_vs_d_llv"]["all"]["spearman"]
    ax.set_title("closeness in KL against d_LLV, per pair of seeds"
                 + (f"\nSpearman rank correlation {rho:.2f}" if rho is not None else ""),
                 fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def width_figures(payload: dict, out: Path) -> Dict[str, Path]:
    """Save both figures under ``out``; {name: path}."""
    plt = _pyplot()
    files = {"figure_width": out / "width_d_llv_d_svd.png",
             "figure_kl": out / "width_kl_vs_d_llv.png"}
    for make, key in ((width_figure, "figure_width"), (kl_figure, "figure_kl")):
        fig = make(payload)
        fig.savefig(files[key], dpi=_DPI)
        plt.close(fig)
    return files
