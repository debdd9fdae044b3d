"""Hostile values: finite but extreme numbers, option values of the wrong type or range, and
user text that looks like markup. Each ends in an IdentirepError (the API) or exit code 2 with
a one-line message (the command line), or, for logits too small to resolve, in a report whose
measures that read them are failures with the reason: never a traceback, a leaked NumPy
warning or a silent NaN. Tiny models (N=40, V=30, M=4) keep the file fast."""
import re

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


@pytest.fixture(scope="module")
def pair():
    (f1, g1), (f2, g2) = arrays(1), arrays(2)
    return ir.Model(f1, g1, name="a"), ir.Model(f2, g2, name="b")


#: (measure, option, bad value, what the message says)
BAD_OPTIONS = [
    *[(fn, k, v, msg) for fn in ("compare", "d_llv") for k, v, msg in (
        ("num_samples", 2.5, "num_samples must be an integer >= 1, got 2.5"),
        ("num_samples", None, "num_samples must be an integer >= 1, got NoneType None"),
        ("num_samples", "5", "num_samples must be an integer >= 1, got str '5'"),
        ("num_samples", True, "num_samples must be an integer"),
        ("seed", -1, "seed must be an integer >= 0, got -1"),
        ("seed", np.float64(2.0), "seed must be an integer"),
        ("num_pivots", -1, "num_pivots must be an integer >= 1"),
        ("num_pivots", 0, "num_pivots must be an integer >= 1"),
        ("num_pivots", "3", "num_pivots must be an integer >= 1"),
        ("sets_per_pivot", None, "sets_per_pivot must be an integer >= 1"),
        ("pivot_budget", 1.5, "pivot_budget must be an integer >= 1 or None"),
        ("lam", "x", "lam must be a finite number >= 0, got str 'x'"),
        ("lam", None, "lam must be a finite number >= 0, got NoneType None"),
        ("lam", np.nan, "lam must be a finite number >= 0, got nan"),
        ("lam", np.inf, "lam must be a finite number >= 0, got inf"),
        ("lam", -1e-5, "lam must be a finite number >= 0, got -1e-05"),
        ("lam", True, "lam must be a finite number"),
        ("lam", [1.0], "lam must be a finite number >= 0, got list"),
        ("combine", None, "combine must be 'max' or 'sum', got None"),
        ("term", ["max"], "term must be 'max' or 'mean'"),
        ("paper_compat", "False", "paper_compat must be True or False, got str 'False'"),
        ("paper_compat", 1, "paper_compat must be True or False, got 1"),
        ("paper_compat", None, "paper_compat must be True or False"),
        ("backend", 3, "unknown backend 3"),
    )],
    ("compare", "max_label_sets", 0, "max_label_sets must be an integer >= 1 or None, got 0"),
    ("compare", "max_label_sets", -1, "max_label_sets must be an integer >= 1"),
    ("compare", "max_label_sets", 2.5, "max_label_sets must be an integer >= 1"),
    ("compare", "rep_sets", 0, "rep_sets must be an integer >= 1"),
    ("compare", "rep_sets", "4", "rep_sets must be an integer >= 1"),
    ("compare", "progress", "x", "progress must be a callable"),
    ("compare", "rep_sets", 10**12, "rep_sets=1000000000000 label sets: identirep evaluates "
                                   "at most 1000000"),
    ("compare", "max_label_sets", 2**70, "max_label_sets=.* label sets: .* at most 1000000"),
    ("d_svd", "max_sets", 10**7, "max_sets=10000000 label sets"),
    ("d_rep", "sets_per_pivot", 10**6, "num_pivots x sets_per_pivot=30000000 label sets.*"
                                      "fix: lower num_pivots or sets_per_pivot"),
    ("d_svd", "max_sets", 0, "max_sets must be an integer >= 1, got 0"),
    ("d_svd", "max_sets", None, "max_sets must be an integer >= 1"),
    ("d_svd", "max_sets", 2.5, "max_sets must be an integer >= 1"),
    ("d_svd", "seed", -1, "seed must be an integer >= 0"),
    ("d_svd", "lam", "x", "lam must be a finite number"),
    ("d_svd", "paper_compat", "yes", "paper_compat must be True or False"),
    ("d_svd", "bogus", 1, "unknown option\\(s\\) bogus of d_svd"),
    ("d_rep", "num_pivots", 0, "num_pivots must be an integer >= 1"),
    ("d_rep", "num_pivots", 2.5, "num_pivots must be an integer >= 1"),
    ("d_rep", "sets_per_pivot", 0, "sets_per_pivot must be an integer >= 1 or None"),
    ("d_rep", "seed", -1, "seed must be an integer >= 0"),
    ("d_rep", "max_cond", np.nan, "max_cond must be 'median', None"),
    ("d_rep", "max_cond", "x", "max_cond must be 'median', None"),
    ("d_rep", "unsquared", "no", "unsquared must be True or False, got str 'no'"),
    ("d_rep", "sets", "abc", "sets must be an integer array"),
    ("kl", "backend", "tpu", "unknown backend 'tpu'"),
    ("d_logit", "backend", "tpu", "unknown backend 'tpu'"),
    ("mcca", "n_components", 2.5, "n_components must be an integer >= 1 or None, got 2.5"),
    ("mcca", "n_components", "2", "n_components must be an integer >= 1"),
    ("mcca", "n_components", 0, "n_components must be an integer >= 1"),
    ("mcca", "backend", "cuda", "mcca's backend must be 'auto', 'cpu' or 'reference'"),
    ("engine", "progress", "x", "progress must be a callable or None, got str 'x'"),
    ("engine", "caches", 3, "caches must be a callable or None"),
    ("engine", "backend", "reference", "the reference backend has no engine"),
    ("matrix", "lam", "x", "lam must be a finite number"),
    ("matrix", "seed", -1, "seed must be an integer >= 0"),
    ("matrix", "num_samples", 2.5, "num_samples must be an integer >= 1"),
    ("matrix", "max_label_sets", 0, "max_label_sets must be an integer >= 1"),
    ("matrix", "bogus", 1, "unknown option\\(s\\) bogus"),
]


def _call(fn, a, b, **kw):
    if fn == "mcca":
        return ir.mcca(a.f, b.f, **kw)
    if fn == "matrix":
        return ir.matrix([a, b], **kw)
    if fn == "engine":
        return ir.engine(a, b, **kw)
    quick = {} if fn in ("kl", "d_logit", "d_rep") or "num_samples" in kw else {"num_samples": 5}
    return getattr(ir, fn)(a, b, **quick, **kw)


@pytest.mark.parametrize("fn, option, value, message", BAD_OPTIONS,
                         ids=[f"{fn}-{k}={v!r}" for fn, k, v, _ in BAD_OPTIONS])
def test_bad_option_values_raise_identirep_error(pair, fn, option, value, message):
    """Each public function's options: the wrong type, range, NaN or inf, a string for a
    bool, None; checked before any work (compare never turns them into a failure)."""
    with pytest.raises(IdentirepError, match=message):
        _call(fn, *pair, **{option: value})


@pytest.mark.parametrize("fn, options, message", [
    # NumPy integers whose product wraps in int64 (the draw once crashed the process)
    ("d_llv", dict(num_samples=np.int64(1024), sets_per_pivot=np.int64(2 ** 54)),
     "num_samples x sets_per_pivot = 18446744073709551616 candidate input sets"),
    ("compare", dict(num_samples=np.int64(1024), sets_per_pivot=np.int64(2 ** 54)),
     "= 18446744073709551616 candidate input sets"),
    ("d_rep", dict(num_pivots=np.int64(2 ** 32), sets_per_pivot=np.int64(2 ** 32)),
     "label sets: identirep evaluates at most"),
    # values NumPy cannot take as a number or a truth value
    ("compare", dict(lam=2 ** 1100), "lam must be a finite number"),
    ("compare", dict(combine=np.array(["max", "sum"])), "combine must be 'max' or 'sum'"),
    ("d_llv", dict(term=np.array(["max"])), "term must be 'max' or 'mean'"),
    ("d_rep", dict(max_cond=np.array([1.0, 2.0])), "max_cond must be 'median', None"),
    ("d_rep", dict(max_cond=float("nan")), "max_cond must be 'median', None"),
])
def test_option_values_numpy_cannot_handle_raise_identirep_error(pair, fn, options, message):
    with pytest.raises(IdentirepError, match=message):
        _call(fn, *pair, **options)


def test_a_drop_list_that_is_not_flat_is_refused():
    rng = np.random.default_rng(0)
    b = rng.standard_normal(8)
    b[2] = -np.inf
    for drop in ([[0]], [[0, 1], [2, 3]]):
        with pytest.raises(IdentirepError, match="drop_masked_labels must be True, False or "
                                                 "label ids"):
            ir.Model(rng.standard_normal((30, 3)), rng.standard_normal((8, 3)), b,
                     drop_masked_labels=drop)


@pytest.mark.parametrize("fn, option, value", [
    ("compare", "num_samples", np.int64(5)), ("compare", "seed", np.uint8(3)),
    ("compare", "num_pivots", np.int32(4)), ("compare", "pivot_budget", np.int64(16)),
    ("compare", "lam", np.float32(1e-5)), ("compare", "lam", 0),
    ("compare", "paper_compat", np.False_), ("compare", "max_label_sets", np.int16(3)),
    ("compare", "rep_sets", np.int64(4)), ("d_svd", "max_sets", np.int64(3)),
    ("d_rep", "num_pivots", np.int64(3)), ("d_rep", "unsquared", np.True_),
    ("mcca", "n_components", np.int64(2)), ("mcca", "backend", "cpu"),
])
def test_numpy_scalars_are_accepted_as_options(pair, fn, option, value):
    r = _call(fn, *pair, **{option: value})
    assert not getattr(r, "failures", None)


def test_a_progress_callable_is_called_and_flags_are_flags(pair, capsys):
    seen = []
    ir.compare(*pair, num_samples=5, progress=seen.append)
    assert seen and seen[-1] == pytest.approx(1.0)
    ir.compare(*pair, num_samples=5, progress=False)
    assert capsys.readouterr().err == ""


def _extreme(case):
    """(first model, second model) with one extreme scale in the first (see EXTREME)."""
    dtype = np.float32 if case.startswith("f32") else np.float64
    (f, g), (f2, g2) = arrays(1, dtype), arrays(2, dtype)
    b = None
    kind, value = case.split(":")[1], float(case.split(":")[2])
    if kind == "g_entry":            # one entry of g, f as it is: the logits grow
        g[5, 2] = value
    elif kind == "g_entry_f_small":  # one entry of g, f as small: logits stay, g's moments not
        g[5, 2] = value
        f /= dtype(value)
    elif kind == "g_row":
        g[5] = value
    elif kind == "f_all":
        f *= dtype(value)
    elif kind == "g_all":
        g *= dtype(value)
    elif kind == "g_all_f_large":
        g *= dtype(value)
        f /= dtype(value)
    elif kind == "bias":
        b = np.zeros(V, dtype)
        b[4] = value
    elif kind == "bias_ramp_f_small":  # logits ~ the bias: inputs differ by 1e-300 of them
        b = (value * np.arange(V) / V).astype(dtype)
        f /= dtype(value)
    return ir.Model(f, g, b), ir.Model(f2, g2)


EXTREME = [
    ("f32:g_entry:1e20", "logits reach about 1.08e\\+21 .*beyond the 1e\\+15 that float32"),
    ("f32:g_entry_f_small:1e20", "g reaches 1e\\+20 .*beyond the 1e\\+15 that float32 sums of its "
                                 "squares .*fix: balance the factors: f \\* c and g / c"),
    ("f64:g_entry:1e200", "logits reach about 1.08e\\+201 .*beyond the 1e\\+100 that float64"),
    ("f64:g_entry_f_small:1e200", "g reaches 1e\\+200 .*beyond the 1e\\+100 that float64"),
    ("f32:g_row:1e20", "logits reach about .*e\\+21"),
    ("f64:g_row:1e160", "logits reach about .*e\\+161"),
    ("f32:bias:1e20", "logits reach about 1e\\+20 .*\\+ max \\|b\\| 1e\\+20"),
    ("f32:f_all:1e-30", "logits vary with the input by at most about .*e-29 .*below the 1e-02 "
                        "that float32 resolves"),
    # float64 would not resolve these either: no cast offered
    ("f32:f_all:1e-10", "logits vary with the input by at most about .*e-10 .*below the 1e-02 "
                        "that float32 resolves.*; fix: rescale f and g"),
    ("f64:f_all:1e-90", "logits vary with the input by at most about .*e-90 .*below the 1e-06 "
                        "that float64 resolves"),
    ("f64:bias_ramp_f_small:1e100", "logits vary with the input by at most about .*e-100 "),
    ("f64:f_all:1e-300", "logits vary with the input by at most about .*e-300 .*below the "
                         "1e-06 that float64 resolves"),
    ("f64:f_all:1e-310", "logits vary with the input by at most about .*below the 1e-06"),
    ("f32:g_all_f_large:1e-20", "f reaches .*e\\+20 .*beyond the 1e\\+15.*cast f and g to float64"),
    ("f64:g_all_f_large:1e-120", "f reaches .*e\\+120 .*beyond the 1e\\+100"),
    ("f64:g_all_f_large:1e120", "g reaches .*e\\+120 .*beyond the 1e\\+100 .*max \\|f\\| is .*e-120"),
    # balancing f against g would not help: the logits themselves are too small
    ("f64:g_all:1e-101", "logits vary with the input by at most about .*e-10[01] .*below the "
                         "1e-06 that float64 resolves"),
]


#: logits too small to resolve while f and g are within the limits: compare reports mCCA and
#: d_rep, and the measures that read the logits fail with the reason
SPREAD_ONLY = {"f32:f_all:1e-10", "f64:f_all:1e-90", "f64:bias_ramp_f_small:1e100"}


@pytest.mark.parametrize("case, message", EXTREME, ids=[c for c, _ in EXTREME])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_extreme_finite_values_are_refused_naming_their_scale(case, message, backend):
    """Finite values whose squares or products would overflow (or underflow) the dtype the
    measures are computed in: refused before any work, by every measure that reads them."""
    a, b = _extreme(case)
    for fn in (ir.kl, ir.d_logit):
        with pytest.raises(IdentirepError, match=message):
            fn(a, b, backend=backend)
    if case not in SPREAD_ONLY:
        with pytest.raises(IdentirepError, match=message):
            ir.compare(a, b, backend=backend)
        return
    r = ir.compare(a, b, num_samples=5, backend=backend)
    for name in ("kl", "d_llv", "d_logit"):
        fail = r.failures[name]
        assert re.search(message, str(IdentirepError(fail.reason, fail.fix))), name
    assert "d_LLV could not be computed" in r.failures["d_svd"].reason
    for name in ("mcca_f", "mcca_g", "d_rep"):
        assert name not in r.failures and np.isfinite(float(getattr(r, name))), name


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_logits_too_small_leave_mcca_and_d_rep_computed(backend):
    """mCCA is invariant to f's scale and d_rep is in squared units of f1: the partial report
    of a pair whose first model's f is scaled by 1e-90 has the unscaled pair's mCCA and d_rep
    x 1e-180 where A f2 + c scales with it (the second model's f scaled too). matrix and
    d_rep on their own, the Accumulator, and the per-token report's note, say the same."""
    (f1, g1), (f2, g2) = arrays(1), arrays(2)
    a, b = ir.Model(f1, g1), ir.Model(f2, g2)
    s = 1e-90
    small = (ir.Model(f1 * s, g1), ir.Model(f2 * s, g2))
    want = ir.compare(a, b, num_samples=5, backend=backend)
    got = ir.compare(*small, num_samples=5, backend=backend)
    assert set(got.failures) == {"kl", "d_llv", "d_logit", "d_svd"}
    assert got.mcca_f.value == pytest.approx(want.mcca_f.value, rel=1e-9)
    assert got.mcca_g.value == pytest.approx(want.mcca_g.value, rel=1e-12)
    assert got.d_rep.value == pytest.approx(want.d_rep.value * s * s, rel=1e-8)
    assert ir.d_rep(*small, backend=backend).value == pytest.approx(got.d_rep.value, rel=1e-12)
    if backend == "cpu":
        acc = ir.Accumulator(g1, g2).update(f1 * s, f2 * s).compute(num_samples=5)
        assert set(acc.failures) == set(got.failures)
        assert acc.failures["kl"].reason == got.failures["kl"].reason
        assert acc.mcca_f.value == pytest.approx(got.mcca_f.value, rel=1e-10)
        assert acc.d_rep.value == pytest.approx(got.d_rep.value, rel=1e-10)
        m = ir.matrix([a, b, small[0]], num_samples=5)
        assert np.isnan(m.values["kl"][0, 2]) and np.isnan(m.values["kl"][2, 0])
        assert m.values["mcca_f"][0, 2] == pytest.approx(1.0, abs=1e-9)   # f1 against f1 s
        said = {(f["i"], f["j"], f["measure"]): f["reason"] for f in m.failures}
        assert "the second model's logits vary" in said[0, 2, "kl"]
        assert "the first model's logits vary" in said[2, 0, "kl"]
        assert np.isfinite(m.values["kl"][0, 1])
        tok = np.arange(len(f1)) % 7
        r = ir.compare(*(ir.Model(m_.f, m_.g, tokens=tok) for m_ in small), num_samples=5)
        assert r.tokens is None and any(n.startswith("no per-token report: the first model's "
                                                     "logits vary") for n in r.notes), r.notes


def test_a_mixed_pair_is_checked_in_its_compute_dtype():
    """A float64 model next to a float32 one is computed in float32: its scale is checked
    there (a float64 f of 1e-23 would be subnormal in float32, its mCCA wrong), and the fix
    names the other model's cast."""
    (f1, g1), (f2, g2) = arrays(1), arrays(2)
    b32 = ir.Model(f2.astype(np.float32), g2.astype(np.float32))
    tiny = ir.Model(f1 * 1e-23, g1)
    with pytest.raises(IdentirepError, match=r"that float32 \(the pair's compute dtype: the "
                                             r"other model is not float64\) resolves"):
        ir.compare(tiny, b32, num_samples=5)
    r = ir.compare(tiny, ir.Model(f2, g2), num_samples=5)      # a float64 pair: mCCA, d_rep
    assert set(r.failures) == {"kl", "d_llv", "d_logit", "d_svd"}
    want = ir.compare(ir.Model(f1, g1), ir.Model(f2, g2), num_samples=5)
    assert r.mcca_f.value == pytest.approx(want.mcca_f.value, rel=1e-9)
    # logits float64 resolves and float32 does not: the cast of the other model is the fix
    r = ir.compare(ir.Model(f1 * 1e-4, g1), b32, num_samples=5)
    assert "cast the other model's arrays to float64 too" in r.failures["kl"].fix
    assert np.isfinite(r.mcca_f.value) and np.isfinite(r.d_rep.value)
    # a float64 bias makes the second model's arrays float64 (its f and g are widened): a
    # float64 pair, whose float64 floor these logits clear
    b64 = ir.Model(b32.f, b32.g, bias=np.zeros(len(g2)))
    assert ir.engine(ir.Model(f1 * 1e-4, g1), b64).stats.dtype == "float64"
    r = ir.compare(ir.Model(f1 * 1e-4, g1), b64, num_samples=5)
    assert not r.failures and np.isfinite(ir.kl(ir.Model(f1 * 1e-4, g1), b64).kl12)



def test_a_blocker_of_the_other_model_comes_before_a_spread():
    """The first model's logits too small, the second model's g beyond float64's squares (the
    blocker, which balancing lifts): compare names the second model's objection and its fix."""
    (f1, g1), (f2, g2) = arrays(1), arrays(2)
    with pytest.raises(IdentirepError, match=r"the second model's g reaches .*fix: balance"):
        ir.compare(ir.Model(f1 * 1e-90, g1), ir.Model(f2 * 1e-110, g2 * 1e110), num_samples=5)


def test_logits_too_small_on_the_command_line(tmp_path, capsys):
    """The table and the JSON of such a pair: mCCA and d_rep, the other measures not
    computed with the reason (exit 0: a report with failures)."""
    import json

    from identirep.cli import main
    (f1, g1), (f2, g2) = arrays(1), arrays(2)
    paths = [str(ir.save_model(m, tmp_path / f"{k}.npz")) for k, m in
             enumerate((ir.Model(f1 * 1e-90, g1), ir.Model(f2, g2)))]
    assert main(["compare", *paths, "--num-samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "mCCA f" in out and "KL(1||2)" not in out and "logits vary" in out
    assert main(["compare", *paths, "--num-samples", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kl"] is None and "logits vary" in d["failures"]["kl"]["reason"]
    assert np.isfinite(d["mcca_f"]["value"]) and np.isfinite(d["d_rep"]["value"])
    # with their text: the per-token report asked for is refused; --top-k says why it is off
    tok = np.arange(len(f1)) % 7
    paths = [str(ir.save_model(m, tmp_path / f"t{k}.npz")) for k, m in
             enumerate((ir.Model(f1 * 1e-90, g1, tokens=tok), ir.Model(f2, g2, tokens=tok)))]
    assert main(["compare", *paths, "--num-samples", "5", "--per-token",
                 str(tmp_path / "pt.npz")]) == 2
    assert "logits vary" in capsys.readouterr().err
    assert not (tmp_path / "pt.npz").exists()
    assert main(["compare", *paths, "--num-samples", "5", "--top-k", "3", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("--top-k 3 had no effect") and "logits vary" in n
               and "CPU backend" not in n for n in notes), notes
    with pytest.raises(IdentirepError, match="logits vary"):
        ir.compare(*(ir.io.load_model(p) for p in paths), num_samples=5, jsd=True)


@pytest.mark.parametrize("case", ["f32:g_entry_f_small:1e20", "f64:g_entry_f_small:1e200",
                                  "f64:g_all_f_large:1e-120"])
def test_the_balancing_fix_works(case):
    """The fix of a refused factor, f * c and g / c, leaves the logits (so KL) unchanged and
    the measures computable."""
    a, b = _extreme(case)
    with pytest.raises(IdentirepError) as e:
        ir.kl(a, b)
    c = float(e.value.fix.split("c = ")[1].split()[0])
    fixed = ir.Model(a.f * a.f.dtype.type(c), a.g / a.g.dtype.type(c))
    r = ir.compare(fixed, b, num_samples=5)
    assert r.kl.kl12 == pytest.approx(ir.kl(fixed, b, backend="reference").kl12, rel=1e-3)
    assert np.isfinite(r.kl.kl12) and np.isfinite(r.d_logit.value)


@pytest.mark.parametrize("case", ["f32:g_entry:1e10", "f64:g_row:1e50", "f32:f_all:1e-2",
                                  "f64:bias:-1e90", "f64:f_all:1e-5",
                                  "f64:bias_ramp_f_small:1e4"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_extreme_values_within_the_limits_give_numbers_or_reasons(case, backend):
    """Within the limits every measure is a finite number, or a failure that says why: never
    a NaN headline, a NumPy warning (filterwarnings = error) or a raw LinAlgError."""
    r = ir.compare(*_extreme(case), num_samples=5, backend=backend)
    for name in ("kl", "d_llv", "d_logit", "mcca_f", "mcca_g", "d_svd", "d_rep"):
        res = getattr(r, name)
        assert (res is None) == (name in r.failures), name
        if res is not None:
            assert np.isfinite(float(res)), name
    for fail in r.failures.values():
        assert "internal error" not in fail.reason


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_d_rep_beyond_float64_is_refused_naming_the_scales(backend):
    """Each model within the limits, but d_rep (squared units of f1, through L1^-1) beyond
    float64: an IdentirepError for d_rep, a failure of d_rep alone in compare."""
    (f1, g1), (f2, g2) = arrays(1), arrays(2)
    a, b = ir.Model(f1 * 1e90, g1 * 1e-95), ir.Model(f2 * 1e45, g2 * 1e45)
    message = "d_rep exceeds the float64 range .*max \\|f1\\| 2.71e\\+90"
    with pytest.raises(IdentirepError, match=message):
        ir.d_rep(a, b, backend=backend)
    r = ir.compare(a, b, num_samples=5, backend=backend)
    assert "d_rep exceeds the float64 range" in r.failures["d_rep"].reason
    assert r.failures["d_rep"].fix.startswith("rescale the first model")
    assert np.isfinite(r.kl.kl12) and r.mcca_f is not None


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_mcca_of_arrays_at_any_float64_scale(pair, scale, backend):
    """Canonical correlations do not depend on the arrays' scale: huge or tiny arrays give the
    same numbers (scaled by a power of 2 first), with no overflow."""
    a, b = pair
    want = ir.mcca(a.g, b.g, backend=backend)
    got = ir.mcca(a.g * scale, b.g, backend=backend)
    assert got.correlations == pytest.approx(want.correlations, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("x, message", [
    (np.array([["a", "b"]] * 5), "mcca's x has dtype <U1; it needs real numbers"),
    (np.ones((5, 2), complex), "mcca's x has dtype complex128"),
    (np.array([[1, None]] * 5), "mcca's x has dtype object"),
    ([[1.0, 2.0], [3.0]], "a nested list here is ragged"),
    (np.ones(5), "two 2-d arrays"),
])
def test_mcca_refuses_what_is_not_a_data_set(x, message):
    with pytest.raises(IdentirepError, match=message):
        ir.mcca(x, np.random.default_rng(0).standard_normal((5, 2)))


#: user text that rich would read as markup or emoji, mathtext, control characters
HOSTILE_TEXT = ["[/bold]", "[b]x[/b] :smile: $x^$", "tail\\", "a\\[b]", "\x1b[31mred\nline"]


@pytest.mark.parametrize("name", HOSTILE_TEXT)
def test_report_tables_show_user_text_literally(pair, name):
    """Names, notes and failure reasons are shown as they are (control characters escaped):
    never parsed as rich markup (a MarkupError) or emoji codes."""
    import io

    from rich.console import Console

    from identirep.report import render_report
    a, b = pair
    r = ir.compare(ir.Model(a.f, a.g, name=name), ir.Model(b.f, b.g, name=name + "2"),
                   num_samples=5)
    r.notes.append(name)
    buf = io.StringIO()
    render_report(r, Console(file=buf, width=400))
    shown = name.replace("\x1b", "\\x1b").replace("\n", "\\n")
    lines = buf.getvalue().splitlines()
    assert f"{shown} vs {shown}2" in lines[0] and lines[-1] == f"note: {shown}"
    assert "\x1b" not in buf.getvalue()


def _run_cli(argv, capsys):
    from identirep.cli import main
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


@pytest.mark.parametrize("text", HOSTILE_TEXT[:2])
def test_cli_tables_show_names_labels_and_paths_literally(pair, text, tmp_path, capsys):
    a, b = pair
    labels = [f"{text}{i}" for i in range(V)]
    d = tmp_path / "".join("_" if c in "/\\" else c for c in text)   # "[_bold]"
    d.mkdir()
    pa = ir.save_model(ir.Model(a.f, a.g, name=text, labels=labels), d / "a.npz")
    pb = ir.save_model(ir.Model(b.f, b.g, name=text + "2", labels=labels), d / "b.npz")
    code, out, _ = _run_cli(["compare", str(pa), str(pb), "--num-samples", "5"], capsys)
    assert code == 0 and f"{text} vs {text}2" in out
    code, out, _ = _run_cli(["matrix", str(pa), str(pb), "--num-samples", "5", "--no-plots",
                             "--out", str(d / "m")], capsys)
    assert code == 0 and text in out and str(d / "m") in out.replace("\n", "")


@pytest.fixture(scope="module")
def files(tmp_path_factory, pair):
    d = tmp_path_factory.mktemp("hostile")
    a, b = pair
    big = ir.Model(a.f.astype(np.float32), a.g.astype(np.float32).copy())
    big.g[5, 2] = 1e20
    return {"a": str(ir.save_model(a, d / "a.npz")), "b": str(ir.save_model(b, d / "b.npz")),
            "big": str(ir.save_model(big, d / "big.npz")), "dir": d}


CLI_BAD = [
    (["compare", "A", "B", "--num-pivots", "0"], "--num-pivots: must be >= 1, got 0"),
    (["compare", "A", "B", "--num-pivots", "-1"], "--num-pivots: must be >= 1, got -1"),
    (["compare", "A", "B", "--seed", "-1"], "--seed: must be >= 0, got -1"),
    (["compare", "A", "B", "--seed", "1.5"], "--seed: expected an integer >= 0, got '1.5'"),
    (["compare", "A", "B", "--num-samples", "2.5"], "--num-samples: expected an integer >= 1"),
    (["compare", "A", "B", "--num-samples", "nan"], "--num-samples: expected an integer >= 1"),
    (["compare", "A", "B", "--sets-per-pivot", "0"], "--sets-per-pivot: must be >= 1"),
    (["compare", "A", "B", "--pivot-budget", "-5"], "--pivot-budget: must be >= 1"),
    (["compare", "A", "B", "--lam", "nan"], "--lam: must be a finite number >= 0"),
    (["compare", "A", "B", "--lam=-inf"], "--lam: must be a finite number >= 0"),
    (["compare", "A", "B", "--lam", "1e309"], "--lam: must be a finite number >= 0"),
    (["compare", "A", "B", "--lam", "x"], "--lam: expected a finite number >= 0, got 'x'"),
    (["compare", "A", "B", "--combine", "min"], "--combine: invalid choice: 'min'"),
    (["compare", "A", "B", "--backend", "tpu"], "--backend: invalid choice: 'tpu'"),
    (["compare", "A", "B", "--num-samples", "99999999999999999999"], "is too many"),
    (["compare", "A", "B", "--sets-per-pivot", "1000001"],
     "on a CPU core; give --sets-per-pivot 1000000 or less"),
    (["matrix", "A", "B", "--sets-per-pivot", "99999999"], "give --sets-per-pivot 1000000"),
    (["compare", "BIG", "B", "--num-samples", "5"], "logits reach about 1.08e+21"),
    (["matrix", "A", "B", "--num-pivots", "0"], "--num-pivots: must be >= 1, got 0"),
    (["matrix", "A", "B", "--seed", "-1"], "--seed: must be >= 0"),
    (["matrix", "A", "--num-samples", "5"], "matrix needs at least two models"),
    (["matrix", "A", "BIG", "--num-samples", "5", "--no-plots"], "logits reach about"),
    (["demo", "--seed", "-1"], "--seed: must be >= 0"),
    (["demo", "--seed", "2.0"], "--seed: expected an integer >= 0"),
    (["bench", "--repeats", "0"], "--repeats: must be >= 1"),
    (["bench", "--repeats", "1.5"], "--repeats: expected an integer >= 1"),
    (["extract", "D", "--texts", "T", "-o", "O.npz", "--max-length", "0"],
     "max_length must be a positive integer, got 0"),
    (["extract", "D", "--texts", "T", "-o", "O.npz", "--batch-size", "-1"],
     "batch_size must be a positive integer, got -1"),
    (["extract", "D", "--texts", "T", "-o", "O.npz", "--check-positions", "0"],
     "check_positions must be a positive integer"),
    (["extract", "D", "--texts", "T", "-o", "O.npz", "--seed", "-1"],
     "seed must be a non-negative integer"),
    (["extract", "D", "--texts", "T", "-o", "O.npz", "--max-length", "2.5"],
     "--max-length: invalid int value: '2.5'"),
]


@pytest.mark.parametrize("argv, message", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_cli_bad_values_exit_2_with_one_line(argv, message, files, capsys):
    """Every command's bad option values and extreme model files: exit code 2 and the reason
    on one line (after argparse's usage line, for parsing errors), no traceback."""
    sub = {"A": files["a"], "B": files["b"], "BIG": files["big"],
           "D": str(files["dir"] / "no_model"), "T": str(files["dir"] / "no.txt")}
    code, out, err = _run_cli([sub.get(x, x) for x in argv], capsys)
    assert code == 2, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("identirep") and message in last, err
    assert [line for line in err.strip().splitlines() if not line.startswith(("usage", " "))] \
        == [last], err


@pytest.mark.parametrize("models, kw, message", [
    (None, {}, "matrix takes a list of at least two identirep.Model objects, got NoneType"),
    ("abc", {}, "matrix takes a list .* got str 'abc'"),
    (5, {}, "matrix takes a list .* got int 5"),
    ([], {}, "matrix needs at least two models, got 0"),
    (["A"], {}, "matrix needs at least two models, got 1"),
    (["A", "x"], {}, "models\\[1\\] is str 'x', not an identirep.Model"),
    (["A", "B"], {"progress": "x"}, "progress must be a callable progress\\(fraction\\)"),
    (["A", "B"], {"progress": 2}, "progress must be a callable"),
    (["A", "B"], {"lam": "x"}, "lam must be a finite number >= 0, got str 'x'"),
    (["A", "B"], {"num_samples": 2.5}, "num_samples must be an integer >= 1, got 2.5"),
    (["A", "B"], {"seed": -1}, "seed must be an integer >= 0, got -1"),
    (["A", "B"], {"paper_compat": "no"}, "paper_compat must be True or False"),
    (["A", "B"], {"bogus": 1}, "unknown option\\(s\\) bogus; fix: compare's options are lam"),
], ids=lambda v: repr(v)[:30])
def test_matrix_refuses_what_is_not_a_list_of_models_before_any_pass(pair, monkeypatch, models,
                                                                     kw, message):
    """Not a list of at least two Models, a progress that is neither a flag nor a callable,
    a bad or unknown option: an IdentirepError before the first pair's pass."""
    import identirep.measures as measures

    def no_pass(*args, **kwargs):
        raise AssertionError("a pair's pass ran before the arguments were checked")
    monkeypatch.setattr(measures, "_engine", no_pass)
    if isinstance(models, list):
        models = [{"A": pair[0], "B": pair[1]}.get(m, m) for m in models]
    with pytest.raises(IdentirepError, match=message):
        ir.matrix(models, **kw)


def test_matrix_calls_a_progress_callable_per_pair(pair):
    seen = []
    ir.matrix([*pair, pair[0]], num_samples=5, progress=seen.append)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])


@pytest.fixture(scope="module")
def pair_engine(pair):
    return ir.engine(*pair)


#: (PairEngine method, its arguments, what the message says)
ENGINE_BAD = [
    ("d_svd", dict(pivot=0, leave_out=1, input_set=range(5), max_sets=-1),
     "max_sets must be an integer >= 1, got -1"),
    ("d_svd", dict(pivot=0, leave_out=1, input_set=range(5), seed=-1),
     "seed must be an integer >= 0, got -1"),
    ("d_svd", dict(pivot=99, leave_out=1, input_set=range(5)),
     "pivot must be a label index in \\[0, 30\\), got 99"),
    ("d_svd", dict(pivot=0, leave_out=1, input_set=[0, 1]), "input_set must be 5 integer"),
    ("mcca_f", dict(n_components=2.5), "n_components must be an integer >= 1 or None, got 2.5"),
    ("mcca_g", dict(n_components="2"), "n_components must be an integer >= 1"),
    ("mcca_g", dict(n_components=99), "n_components must be in \\[1, 4\\], got 99"),
    ("label_terms", dict(pivot="x"), "pivot must be an integer >= 0, got str 'x'"),
    ("label_terms", dict(pivot=99), "pivot must be a label index in \\[0, 30\\), got 99"),
    ("label_terms", dict(pivot=True), "pivot must be an integer >= 0, got True"),
    ("d_llv", dict(paper_compat="yes"), "paper_compat must be True or False, got str 'yes'"),
    ("d_llv", dict(num_samples=2.5), "num_samples must be an integer >= 1, got 2.5"),
    ("d_llv", dict(seed=-1), "seed must be an integer >= 0"),
    ("d_llv", dict(pivot_budget=0), "pivot_budget must be an integer >= 1 or None"),
    ("d_llv", dict(progress="x"), "progress must be a callable or None, got str 'x'"),
    ("d_rep", dict(unsquared="x"), "unsquared must be True or False, got str 'x'"),
    ("d_rep", dict(seed=-1), "seed must be an integer >= 0"),
    ("d_rep", dict(num_pivots=0), "num_pivots must be an integer >= 1"),
    ("d_rep", dict(sets_per_pivot=2.5), "sets_per_pivot must be an integer >= 1 or None"),
    ("label_side", dict(term="x"), "term must be 'max' or 'mean', got 'x'"),
    ("label_side", dict(pivot=99), "pivot must be a label index in \\[0, 30\\), got 99"),
    ("label_side", dict(leave_out=-1), "leave_out must be an integer >= 0, got -1"),
    ("label_side", dict(pivot=3, leave_out=3), "pivot and leave_out must be different labels"),
    ("label_side", dict(num_pivots=0), "num_pivots must be an integer >= 1"),
    ("label_side", dict(seed=-1), "seed must be an integer >= 0"),
    ("label_side", dict(bound_budget=0), "pivot_budget must be an integer >= 1 or None, got 0"),
    ("label_side", dict(progress=3), "progress must be a callable or None, got int 3"),
    ("input_side", dict(term=None), "term must be 'max' or 'mean', got None"),
    ("input_side", dict(num_samples=2.5), "num_samples must be an integer >= 1, got 2.5"),
    ("input_side", dict(seed=-1), "seed must be an integer >= 0"),
    ("input_side", dict(paper_compat="yes"), "paper_compat must be True or False"),
    ("input_side", dict(sets_per_pivot=0), "sets_per_pivot must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("method, kw, message", ENGINE_BAD,
                         ids=[f"{m}-{kw}"[:60] for m, kw, _ in ENGINE_BAD])
def test_engine_methods_check_their_arguments(pair_engine, method, kw, message):
    """``identirep.engine(a, b)``'s methods check their arguments as the functions do: never
    a raw ValueError, IndexError or TypeError, and never a string taken for True."""
    with pytest.raises(IdentirepError, match=message):
        getattr(pair_engine, method)(**kw)


def test_engine_methods_take_numpy_integers(pair_engine):
    i = np.int64
    assert pair_engine.label_terms(i(3))["valid"].shape == (V,)
    r = pair_engine.d_svd(i(0), i(1), np.arange(5), max_sets=i(5), seed=np.uint8(1))
    assert r.num_label_sets == 5
    assert pair_engine.mcca_g(n_components=i(2)).n_components == 2
    assert pair_engine.d_llv(num_samples=i(5), paper_compat=np.False_).value > 0


@pytest.mark.parametrize("kw, message", [
    (dict(max_length=np.int64(8)), "is not a local model directory"),
    (dict(batch_size=np.int32(2), check_positions=np.uint16(3), seed=np.int64(1)),
     "is not a local model directory"),
    (dict(allow_softcap=np.True_, progress=lambda done, total: None, device="cpu"),
     "is not a local model directory"),
    (dict(max_length=2.5), "max_length must be a positive integer, got 2.5"),
    (dict(batch_size=True), "batch_size must be a positive integer, got True"),
    (dict(check_positions="8"), "check_positions must be a positive integer, got str '8'"),
    (dict(seed=np.int64(-1)), "seed must be a non-negative integer .*got np.int64\\(-1\\)"),
    (dict(seed=1.0), "seed must be a non-negative integer"),
    (dict(dtype=["float32"]), "dtype must be one of float64, float32"),
    (dict(allow_softcap="no"), "allow_softcap must be True or False, got str 'no'"),
    (dict(progress="x"), "progress must be a callable progress\\(done, total\\)"),
    (dict(device=None), "device must be a torch device such as 'cpu' or 'cuda', got NoneType"),
    (dict(device=2.5), "device must be a torch device"),
    (dict(model_dir=None), "model_dir must be a str or os.PathLike, got NoneType"),
], ids=lambda v: repr(v)[:40])
def test_extract_options_are_checked_before_any_model_is_loaded(tmp_path, kw, message):
    """NumPy integers are integers, bools and strings are not; every option is checked before
    torch or a model is loaded (here there is none: a good set of options gets as far as the
    missing model directory)."""
    from identirep.extract import extract
    kw = {"model_dir": tmp_path / "no_model"} | kw
    with pytest.raises(IdentirepError, match=message):
        extract(texts=["a text"], **kw)
