"""The float64 reference is an independent oracle: it imports nothing of the engine, the
backends or the GPU code, and for every measure a wrong engine helper makes the comparison
with the reference fail (each helper below is made slightly wrong, 1e-6 relative, and the
comparison the other tests make must then raise)."""
import numpy as np
import pytest

import identirep as ir
from identirep import _cpu_pass, _input_side, _label_side, _pair

from helpers import assert_close, import_graph, imported_by, random_pair

#: what the oracle may import: the data types, the shared rules and the seeded draws
ORACLE_MAY_IMPORT = {"identirep._rules", "identirep.sampling", "identirep.model",
                     "identirep.results", "identirep.errors"}


def test_the_reference_imports_no_engine_backend_or_gpu_module():
    assert imported_by(import_graph(), "identirep.reference") <= ORACLE_MAY_IMPORT


def test_the_shared_rules_import_only_the_draws_and_the_errors():
    # the rules module and what it imports stay below the engine, the backends and the oracle
    assert imported_by(import_graph(), "identirep._rules") <= {"identirep.sampling",
                                                              "identirep.errors"}


def test_no_pass_linear_algebra_or_engine_module_imports_the_oracle():
    graph = import_graph()
    engine = [m for m in graph if m.startswith("identirep.gpu") or m in {
        "identirep.passes", "identirep._cpu_pass", "identirep._linalg", "identirep._model_cache",
        "identirep._label_side", "identirep._input_side", "identirep._pair"}]
    assert len(engine) > 10
    assert not [m for m in engine if "identirep.reference" in imported_by(graph, m)]


# ------------------------------------------------------------------ engine vs reference
def _pair_models():
    return random_pair(N=157, V=23, M=3, bias=True, seed=16)


def check_kl(a, b):
    got, want = ir.kl(a, b), ir.kl(a, b, backend="reference")
    for k in ("kl12", "kl21", "top1_agreement", "entropy1", "entropy2"):
        assert_close(getattr(got, k), getattr(want, k), atol=1e-14, what=k)


def check_d_logit(a, b):
    got, want = ir.d_logit(a, b), ir.d_logit(a, b, backend="reference")
    assert_close(got.value_sq, want.value_sq, what="value_sq")


def check_d_llv(a, b):
    got = ir.d_llv(a, b, num_samples=30)
    want = ir.d_llv(a, b, num_samples=30, backend="reference")
    assert (got.pivot, got.leave_out, got.input_set) == (want.pivot, want.leave_out,
                                                        want.input_set)
    for k in ("value", "t1", "t2", "t3", "t4"):
        assert_close(getattr(got, k), getattr(want, k), what=k)


def check_d_svd(a, b):
    got = ir.d_svd(a, b, pivot=2, leave_out=5, input_set=[0, 3, 9, 12], max_sets=200)
    want = ir.d_svd(a, b, pivot=2, leave_out=5, input_set=[0, 3, 9, 12], max_sets=200,
                    backend="reference")
    assert_close(got.d_svd_f_per_set, want.d_svd_f_per_set, what="d_svd_f_per_set")
    assert_close(got.d_svd_g, want.d_svd_g, what="d_svd_g")


def check_mcca(a, b):
    for x, y in ((a.f, b.f), (a.g, b.g)):
        assert_close(ir.mcca(x, y).correlations,
                     ir.mcca(x, y, backend="reference").correlations, atol=1e-12)
    got, want = ir.compare(a, b, num_samples=30), ir.compare(a, b, num_samples=30,
                                                             backend="reference")
    for sec in ("mcca_f", "mcca_g"):
        assert_close(getattr(got, sec).correlations, getattr(want, sec).correlations,
                     atol=1e-12, what=sec)


def check_d_rep(a, b):
    got, want = ir.d_rep(a, b), ir.d_rep(a, b, backend="reference")
    assert_close(got.per_set, want.per_set, atol=1e-14, what="per_set")
    assert_close(got.cond_per_set, want.cond_per_set, what="cond_per_set")


def _scale_output(fn, key, factor):
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        out[key] = out[key] * factor
        return out
    return wrong


def _scale_result(fn, factor):
    def wrong(*args, **kwargs):
        return fn(*args, **kwargs) * factor
    return wrong


def _wrong_row_moments(stream_pass):
    def wrong(*args, **kwargs):
        out = stream_pass(*args, **kwargs)
        out["row_moments"][4] *= 1 + 1e-6      # the sums of squares of l1 - l2
        return out
    return wrong


def _wrong_final_terms(final_terms):
    def wrong(self, *args):
        t1, t3 = final_terms(self, *args)
        return t1 * (1 + 1e-6), t3
    return wrong


def _wrong_rep_maps(rep_maps):
    def wrong(*args):
        return [None if s is None else (s[0] * (1 + 1e-6),) + s[1:] for s in rep_maps(*args)]
    return wrong


#: measure -> (its comparison with the reference, (module, helper), how the helper goes wrong)
MUTANTS = {
    "kl": (check_kl, (_cpu_pass, "finalize"), lambda f: _scale_output(f, "kl12", 1 + 1e-6)),
    "d_logit": (check_d_logit, (_cpu_pass, "stream_pass"), _wrong_row_moments),
    "d_llv label side": (check_d_llv, (_label_side.LabelSide, "final_terms"),
                         _wrong_final_terms),
    "d_llv input side": (check_d_llv, (_input_side.InputSide, "criteria"),
                         lambda f: lambda self, *a, **k: f(self, *a, **k)[::-1]),
    "d_svd": (check_d_svd, (_pair, "quad_diag"), lambda f: _scale_result(f, 1 + 1e-6)),
    "mcca": (check_mcca, (_pair, "singular_values"), lambda f: _scale_result(f, 1 - 1e-6)),
    "d_rep": (check_d_rep, (_pair, "_rep_maps"), _wrong_rep_maps),
}


@pytest.mark.parametrize("measure", list(MUTANTS))
def test_a_wrong_engine_helper_fails_the_comparison_with_the_reference(monkeypatch, measure):
    check, (owner, name), mutate = MUTANTS[measure]
    a, b = _pair_models()
    check(a, b)                                   # the engine as it is agrees
    monkeypatch.setattr(owner, name, mutate(getattr(owner, name)))
    with pytest.raises(AssertionError):
        check(a, b)
    monkeypatch.undo()
    check(a, b)


def test_distinct_inputs_hashed_on_the_engine_side_match_the_sorted_rows_of_the_reference():
    rng = np.random.default_rng(8)
    f1, f2 = rng.standard_normal((3000, 5)), rng.standard_normal((3000, 2)).astype(np.float32)
    f1[[10, 2000, 2999]] = f1[3]
    f2[[10, 2000]] = f2[3]          # inputs 10 and 2000 repeat input 3; 2999 differs in f2
    f1[50], f2[50] = f1[40], f2[40]
    f1[41, 0], f1[42, 0] = 0.0, -0.0  # distinct bits, equal values
    f1[41, 1:], f2[41], f2[42] = f1[42, 1:], f2[40], f2[40]
    a, b = ir.Model(f1, rng.standard_normal((7, 5))), ir.Model(f2, rng.standard_normal((7, 2)))
    want = ir.reference.distinct_inputs(a, b)
    got = _input_side.distinct_inputs(a.f, b.f)
    np.testing.assert_array_equal(got, want)
    assert len(want) == 3000 - 3 and 41 in want and 42 in want
