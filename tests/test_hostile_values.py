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


_f, _g = arrays()


@pytest.mark.parametrize("kw, message", [
    ({"f": [[1.0, 2.0], [3.0]]}, "f \\(embeddings\\) is a ragged nested list"),
    ({"g": [[1.0, 2.0], [3.0, 4.0, 5.0]] * 2}, "g \\(unembeddings\\) is a ragged nested list"),
    ({"bias": [[0.0], [1.0, 2.0]]}, "bias is a ragged nested list"),
    ({"f": None}, "f \\(embeddings\\) must be an array, got NoneType"),
    ({"f": [["a", "b"]] * 5}, "dtype <U1"),
    ({"labels": 5}, "labels must be a sequence of names .* got int"),
    ({"labels": "abc"}, "labels must be a sequence of names .* got str"),
    ({"labels": [["a", "b"]] + [["c"]] * (V - 1)}, "labels\\[0\\] is list"),
    ({"labels": ["a"] * (V - 1) + [None]}, f"labels\\[{V - 1}\\] is NoneType"),
    ({"labels": np.array([["a"] * V])}, "labels must be a 1-d sequence"),
    ({"name": 5}, "name must be a string or None, got int 5"),
    ({"metadata": [1]}, "metadata must be a dict"),
    ({"drop_masked_labels": "yes"}, "drop_masked_labels must be True, False or a sequence"),
    ({"drop_masked_labels": 3}, "drop_masked_labels must be True, False or a sequence"),
    ({"drop_masked_labels": [0.5]}, "label ids in \\[0, 30\\)"),
    ({"drop_masked_labels": [[1, 2], [3]]}, "label ids in \\[0, 30\\)"),
])
def test_model_arguments_of_the_wrong_type_or_shape(kw, message):
    kw = {"f": _f, "g": _g} | kw
    with pytest.raises(IdentirepError, match=message):
        ir.Model(**kw)


def test_model_arguments_that_are_accepted():
    """NumPy scalars, integer label names and NumPy booleans are what they look like."""
    m = ir.Model(_f.tolist(), _g.tolist(), labels=np.arange(V), name=np.str_("m"),
                 drop_masked_labels=np.True_)
    assert m.labels[:3] == ["0", "1", "2"] and type(m.labels[0]) is str and m.name == "m"
    assert ir.Model(_f, _g, drop_masked_labels=np.array([1, 2])).V == V - 2
