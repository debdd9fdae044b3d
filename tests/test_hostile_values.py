"""Hostile values: finite but extreme numbers, option values of the wrong type or range, and
user text that looks like markup. Each ends in an IdentirepError (the API) or exit code 2 with
a one-line message (the command line): never a traceback, a leaked NumPy warning or a silent
NaN. Tiny models (N=40, V=30, M=4) keep the file fast."""
import numpy as np
import pytest

import identirep as ir
from identirep import IdentirepError
from identirep.model import masked_labels

N, V, M = 40, 30, 4


def arrays(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, M)).astype(dtype), rng.standard_normal((V, M)).astype(dtype))


@pytest.mark.parametrize("value", [1e50, -1e50, 1e300, -1e300, 1e-300])
def test_float64_bias_beyond_float32_is_neither_masked_nor_warned_about(value):
    """A -inf bias marks a masked label; a finite float64 bias beyond float32's range is not
    one (read in its own dtype: no cast, no overflow warning)."""
    f, g = arrays()
    b = np.zeros(V)
    b[3] = value
    assert masked_labels(b).size == 0
    assert ir.Model(f, g, b).V == V
    b[5] = -np.inf
    assert masked_labels(b).tolist() == [5]
    with pytest.raises(IdentirepError, match=r"bias is -inf for 1 label\(s\) \(ids \[5\]\)"):
        ir.Model(f, g, b)
