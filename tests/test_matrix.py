"""K x K matrices reuse one pass per pair and agree with pairwise comparisons."""
import numpy as np
import pytest

import identirep as ir
from identirep import constructions as C

from helpers import assert_close


def test_matrix_matches_pairwise_compare():
    base = C.random_model(N=150, V=21, M=3, seed=0, bias=True, name="base")
    models = [base, C.perturbed_copy(base, 0.3, seed=1), C.linear_transform(base, seed=2)]
    m = ir.matrix(models, num_samples=20)
    assert m.names == ["base", models[1].name, models[2].name]
    for i in range(3):
        assert m.values["kl"][i, i] == 0 and m.values["mcca_f"][i, i] == 1
        for j in range(3):
            if i == j:
                continue
            r = ir.compare(models[i], models[j], num_samples=20)
            for key, want in (("kl", r.kl.kl12), ("d_llv", r.d_llv.value), ("d_rep", r.d_rep.value),
                              ("mcca_g", r.mcca_g.value), ("max_d_svd", r.d_svd.max_d_svd)):
                assert_close(m.values[key][i, j], want, atol=1e-12, what=f"{key}[{i},{j}]")
    assert m.values["d_llv"][0, 2] < 1e-5 < m.values["d_llv"][0, 1]
    assert not np.allclose(m.values["kl"], m.values["kl"].T)     # KL is not symmetric
    csv = m.to_csv("d_llv").splitlines()
    assert len(csv) == 4 and csv[0].split(",")[1:] == m.names


def test_matrix_needs_compatible_models():
    a = C.random_model(N=50, V=9, M=2)
    with pytest.raises(ir.IdentirepError, match="at least two"):
        ir.matrix([a])
    with pytest.raises(ir.IdentirepError, match="different inputs"):
        ir.matrix([a, C.random_model(N=40, V=9, M=2)])


def test_matrix_checks_and_notes_every_pair_before_the_first_pass(monkeypatch):
    """Two models that each pass against a first model naming no labels can still differ:
    matrix refuses them before any pass (naming the pair), or with check_tokenizer=False
    notes what differs for that pair too."""
    base = C.random_model(N=80, V=9, M=2, seed=1)
    labels = [f"t{k}" for k in range(9)]
    other = list(labels)
    other[4] = "x4"
    models = [ir.Model(base.f, base.g, name="bare"),
              ir.Model(base.f + 0.1, base.g, labels=labels, name="one"),
              ir.Model(base.f - 0.1, base.g, labels=other, name="two")]
    passes = []
    import identirep.measures as ms
    orig = ms._engine
    monkeypatch.setattr(ms, "_engine", lambda *a, **k: passes.append(1) or orig(*a, **k))
    with pytest.raises(ir.IdentirepError, match=r"one vs two: label order differs at index 4"):
        ir.matrix(models, num_samples=10)
    assert not passes                                # refused before the first pair's pass
    m = ir.matrix(models, num_samples=10, check_tokenizer=False)
    assert [n.split(":")[0] for n in m.notes] == ["one vs two"], m.notes
    assert len(passes) == 3                          # the pass tally counts
    assert "label 4 is 't4' in the first and 'x4' in the second" in m.notes[0], m.notes


def test_matrix_computes_per_model_statistics_once(monkeypatch):
    """K models: moments of f and of g once per model (2K single-model products), not per pair."""
    import importlib
    eng = importlib.import_module("identirep._model_cache")
    calls = []
    orig = eng._single_moments
    monkeypatch.setattr(eng, "_single_moments",
                        lambda X, *a: calls.append(X.shape) or orig(X, *a))
    base = C.random_model(N=120, V=15, M=3, seed=3)
    models = [base] + [C.perturbed_copy(base, 0.2 * k, seed=k) for k in (1, 2, 3)]
    m = ir.matrix(models, num_samples=10)
    assert len(calls) == 2 * len(models)
    assert np.isfinite(m.values["mcca_g"]).all() and np.isfinite(m.values["d_llv"]).all()


def test_input_factors_released_by_compare_and_kept_by_matrix(monkeypatch):
    """compare drops its private caches' N x M input factors once d_LLV has its input set;
    matrix shares each model's cache between pairs and makes each model's factor once."""
    import importlib
    mc = importlib.import_module("identirep._model_cache")
    made, engines = [], []
    orig_get, orig_release = mc.ModelCache._get, ir.PairEngine.release_input_factors

    def get(self, key, make):
        if key == "H" and key not in self._cache:
            made.append(id(self))
        return orig_get(self, key, make)
    monkeypatch.setattr(mc.ModelCache, "_get", get)
    monkeypatch.setattr(ir.PairEngine, "release_input_factors",
                        lambda self: engines.append(self) or orig_release(self))
    base = C.random_model(N=120, V=15, M=3, seed=3)
    models = [base] + [C.perturbed_copy(base, 0.2 * k, seed=k) for k in (1, 2)]
    r = ir.compare(models[0], models[1], num_samples=10)
    assert len(made) == 2 and len(engines) == 1
    assert all("H" not in c._cache for c in (engines[0].c1, engines[0].c2))
    assert_close(r.d_llv.value, ir.engine(models[0], models[1]).d_llv(num_samples=10).value,
                 atol=0)
    made.clear()
    ir.matrix(models, num_samples=10)
    assert len(made) == len(models)                  # once per model, not once per pair


def test_label_moments_are_the_moments_of_both_gs_over_labels():
    a, b = C.random_model(N=60, V=17, M=3, seed=6), C.random_model(N=60, V=17, M=4, seed=7)
    got, want = ir.engine(a, b).label_moments, ir.Moments.from_rows(np.hstack([a.g, b.g]))
    assert got.n == 17
    assert_close(got.mean, want.mean, atol=1e-12)
    assert_close(got.scatter, want.scatter, atol=1e-10)


def test_swapped_engine_equals_the_engine_of_the_swapped_pair():
    a, b = C.random_model(N=90, V=13, M=3, seed=4, bias=True), C.random_model(N=90, V=13, M=4, seed=5)
    e = ir.engine(a, b)
    e.mcca_g()                       # the label cross block computed before the swap is swapped too
    s, fresh = e.swapped(), ir.engine(b, a)
    assert s.stats.dtype == fresh.stats.dtype
    for x, y in ((s.mom.scatter, fresh.mom.scatter), (s.label_cross, fresh.label_cross),
                 (s.labels.A1, fresh.labels.A1), (s.labels.B12, fresh.labels.B12)):
        assert_close(x, y, atol=1e-10)
    assert_close(s.d_llv(num_samples=10).value, fresh.d_llv(num_samples=10).value)


def test_swapped_pass_keeps_its_dtype():
    a, b = C.random_model(N=60, V=9, M=2, seed=6), C.random_model(N=60, V=9, M=2, seed=7)
    a32 = ir.Model(a.f.astype(np.float32), a.g.astype(np.float32))
    e = ir.engine(a32, b)
    assert e.stats.dtype == "float32" and e.swapped().stats.dtype == "float32"
    assert e.swapped().cdt == np.float32


def _with_a_model_too_wide_for_d_llv(tmp_path=None):
    """Two models of M = 4 and a third of M = 39 on N = 40 inputs: d_LLV (and so d_SVD) needs
    N >= M + 2 and fails for both pairs with the third; KL, d_logit, mCCA work for all."""
    rng = np.random.default_rng(0)
    models = [ir.Model(rng.standard_normal((40, M)), rng.standard_normal((30, M)), name=n)
              for n, M in (("a", 4), ("b", 4), ("wide", 39))]
    paths = [str(ir.save_model(m, tmp_path / f"{m.name}.npz")) for m in models] if tmp_path else None
    return models, paths


def test_matrix_keeps_the_pairs_it_computed_and_says_why_the_others_failed(tmp_path, capsys):
    import json

    from identirep.cli import main
    models, paths = _with_a_model_too_wide_for_d_llv(tmp_path)
    m = ir.matrix(models, num_samples=5)
    assert np.isfinite(m.values["kl"]).all() and np.isfinite(m.values["mcca_f"]).all()
    assert np.isfinite(m.values["d_llv"][0, 1]) and np.isfinite(m.values["d_llv"][1, 0])
    for i, j in ((0, 2), (2, 0), (1, 2), (2, 1)):
        assert np.isnan(m.values["d_llv"][i, j]) and np.isnan(m.values["max_d_svd"][i, j])
        fail = m.failure("d_llv", i, j)
        assert "d_LLV needs N >= M + 2 inputs" in fail["reason"] and "41" in fail["fix"]
        assert m.failure("max_d_svd", i, j)["reason"]
        assert m.failure("kl", i, j) is None
    assert {(f["i"], f["j"]) for f in m.failures} == {(0, 2), (2, 0), (1, 2), (2, 1)}
    assert m.pairs[2] == {"i": 0, "j": 2, "pivot": None, "leave_out": None, "input_set": None}
    d = m.to_dict()
    assert d["values"]["d_llv"][0][2] is None and d["values"]["d_llv"][0][1] is not None
    assert any(f["measure"] == "d_llv" and "N >= M + 2" in f["reason"] for f in d["failures"])
    assert m.to_csv("d_llv").splitlines()[1].endswith(",")       # a missing value: empty
    # the command line: exit 0, the failures in the JSON, "-" (never nan) in the tables
    assert main(["matrix", *paths, "--num-samples", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["values"]["d_llv"][2][0] is None
    assert {f["measure"] for f in out["failures"] if (f["i"], f["j"]) == (2, 0)} \
        >= {"d_llv", "max_d_svd"}
    assert main(["matrix", *paths, "--num-samples", "5", "--out", str(tmp_path / "m"),
                 "--no-plots"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "nan" not in out and " - " in out
    # under the tables, each reason once, with the cells it left empty
    text = " ".join(out.split())
    assert "not computed (d_llv" in text and "d_LLV needs N >= M + 2 inputs" in text
    assert text.count("d_LLV needs N >= M + 2 inputs") == 1
    saved = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert saved["failures"] == m.failures


def test_a_matrix_of_which_nothing_could_be_computed_is_an_error(monkeypatch, tmp_path, capsys):
    """When every measure fails for every pair, matrix raises with the reasons (the command
    line exits 2 with them) rather than return a matrix of missing values."""
    from identirep import measures
    from identirep.cli import main
    from identirep.results import Failure, Report

    def nothing(e, **kw):
        fail = Failure(reason="no luck", fix="try other models")
        return Report(name1="x", name2="y", N=e.N, V=e.V, M1=e.M1, M2=e.M2, backend="cpu",
                      kl=None, d_llv=None, d_logit=None, failures={
                          k: fail for k in ("kl", "d_llv", "d_logit", "mcca_f", "mcca_g",
                                            "d_svd", "d_rep")})
    monkeypatch.setattr(measures, "_report_from_engine", nothing)
    models, paths = _with_a_model_too_wide_for_d_llv(tmp_path)
    with pytest.raises(ir.IdentirepError, match="no measure could be computed for any pair of "
                                                "models \\(kl of a vs b: no luck\\); fix: try"):
        ir.matrix(models[:2])
    assert main(["matrix", *paths[:2], "--num-samples", "5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no luck" in err.strip().splitlines()[-1]
