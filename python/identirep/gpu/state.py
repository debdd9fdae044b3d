"""The device state of a GPU pass (layouts of csrc/kernels/lse_kl.h) and its statistics."""
from __future__ import annotations

from ..passes import PassStats, finalize, init_state


def pass_state(cp, n, v):
    """state (8, n) with m = -inf, args (2, n) = -1, row moments (5, n) and column moments
    (5, v) zero, on CuPy's current device."""
    return (*init_state(n, cp), cp.zeros((5, n), dtype=cp.float64),
            cp.zeros((5, v), dtype=cp.float64))


def pass_stats(state, args, row_m, col_m, backend, dt) -> PassStats:
    """The PassStats (host NumPy arrays) of a finished pass."""
    out = finalize(state.get(), args.get())
    r, c = row_m.get(), col_m.get()
    return PassStats(L1=out["L1"], L2=out["L2"], kl12=out["kl12"], kl21=out["kl21"], H1=out["H1"],
                     H2=out["H2"], agree=out["top1_agree"], row_mean1=r[0], row_mean2=r[1],
                     row_m2_11=r[2], row_m2_22=r[3], row_m2_dd=r[4], col_mean1=c[0],
                     col_mean2=c[1], col_m2_11=c[2], col_m2_22=c[3], col_m2_12=c[4],
                     backend=backend, dtype=dt.name)
