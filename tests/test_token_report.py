"""The per-token report (identirep.tokens, results.TokenReport): its per-position arrays equal
the float64 oracle's, every statistic equals a NumPy computation written here from the
oracle's arrays, token strings are shown as text, the JSON holds everything, the command
line writes the arrays and refuses bad options, and compare turns the report on and off by
the stated rules."""
import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as sstats

import identirep as ir
from identirep import reference, tokens
from identirep.cli import main
from identirep.errors import IdentirepError
from identirep.report import render_report, report_rows

from helpers import assert_close

#: GPT-2 style byte-level token strings: 'Ġ' is a space, 'Ċ' a line break, 'Ã' and '©' the
#: two bytes of 'é'
WORDS = ["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", "Ċ", "Ġcaf", "Ã", "©", "<|endoftext|>"]


def lm_pair(seed=0, N=240, V=40, M=6, docs=(60, 60, 60, 60), dtype=np.float64, noise=0.3,
            text=True, labels=True):
    """Two related models on the same token stream: ``docs`` texts of the given lengths, each
    position's target the next token of its text (-1 at a text's end)."""
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((N, M))
    g1 = rng.standard_normal((V, M)) * 1.5
    b1 = rng.standard_normal(V) * 0.5
    f2 = f1 + noise * rng.standard_normal((N, M))
    g2 = g1 + noise * rng.standard_normal((V, M))
    documents = np.repeat(np.arange(len(docs)), docs)
    toks = rng.integers(0, V, N)
    targets = np.roll(toks, -1)
    targets[np.r_[np.flatnonzero(np.diff(documents)), N - 1]] = -1
    names = (WORDS + [f"Ġw{i}" for i in range(V - len(WORDS))])[:V] if labels else None
    extra = dict(tokens=toks, targets=targets, documents=documents) if text else {}
    a = ir.Model(f1.astype(dtype), g1.astype(dtype), b1.astype(dtype), name="base",
                 labels=names, **extra)
    b = ir.Model(f2.astype(dtype), g2.astype(dtype), b1.astype(dtype), name="changed",
                 labels=names, **extra)
    return a, b


def fast_arrays(a, b, k=10, jsd=True):
    from identirep._cpu_pass import jsd_pass
    e = ir.engine(a, b, "cpu", topk=k)
    values = None
    if jsd:
        f1, g1 = a.augmented(None)
        f2, g2 = b.augmented(None)
        values = jsd_pass(f1, g1, f2, g2, e.stats.L1, e.stats.L2)
    return tokens.per_token_arrays(a, b, e.stats, values)


# ------------------------------------------------------------------ the arrays
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_per_token_arrays_equal_the_reference(dtype):
    a, b = lm_pair(dtype=dtype)
    got = fast_arrays(a, b)
    want = reference.per_token_reference(a, b, k=10, jsd=True)
    assert set(got) == set(want)
    # float64: the same numbers to 1e-10; float32: the logits come from float32 GEMM tiles
    # (log-normalisers to ~1e-7 of the logits' size), so 1e-5 of a scale of 1 nat
    rtol, scale = (1e-10, 0.0) if dtype == np.float64 else (1e-5, 1.0)
    for key in ("L1", "L2", "kl12", "kl21", "logp1", "logp2", "p2_of_top1", "p1_of_top2",
                "jsd"):
        assert_close(got[key], want[key], rtol=rtol, scale=scale, what=key)
    for key in ("top1", "top2"):
        assert got[key].shape == (a.N, 10) and got[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert np.isnan(got["logp1"][a.targets < 0]).all()
    assert np.isfinite(got["logp1"][a.targets >= 0]).all()


def test_per_token_arrays_of_bfloat16_and_torch_models_equal_the_reference(bfloat16, torch):
    # bfloat16 values are exact in float64 (the reference) and run in float32 (the pass):
    # the float32 tolerance; torch tensors are read as NumPy arrays
    a, b = lm_pair(dtype=bfloat16)
    want = reference.per_token_reference(a, b, k=10, jsd=False)
    ta, tb = (ir.Model(*(torch.from_numpy(x.astype(np.float64)) for x in (m.f, m.g, m.bias)),
                       targets=m.targets) for m in (a, b))
    for x, y in ((a, b), (ta, tb)):
        got = fast_arrays(x, y, jsd=False)
        for key in ("kl12", "logp1", "logp2", "p2_of_top1", "p1_of_top2"):
            assert_close(got[key], want[key], rtol=1e-5, scale=1.0, what=key)
        np.testing.assert_array_equal(got["top1"], want["top1"])


def test_per_token_arrays_of_models_without_targets_have_no_log_probabilities():
    a, b = lm_pair(text=False)
    got = fast_arrays(a, b, jsd=False)
    assert np.isnan(got["logp1"]).all() and np.isnan(got["logp2"]).all()
    want = reference.per_token_reference(a, b, k=10, jsd=False)
    assert_close(got["p2_of_top1"], want["p2_of_top1"], rtol=1e-10)


def test_per_token_arrays_need_the_pass_top_k():
    a, b = lm_pair()
    with pytest.raises(IdentirepError, match="topk"):
        tokens.per_token_arrays(a, b, ir.engine(a, b).stats)


def test_per_token_arrays_allocate_nothing_of_n_by_v():
    import tracemalloc
    rng = np.random.default_rng(0)
    N, V, M = 1024, 32768, 8
    t = rng.integers(0, V, N)
    a = ir.Model(rng.standard_normal((N, M)), rng.standard_normal((V, M)), targets=t)
    b = ir.Model(rng.standard_normal((N, M)), rng.standard_normal((V, M)), targets=t)
    e = ir.engine(a, b, topk=10)
    tracemalloc.start()
    try:
        arrays = tokens.per_token_arrays(a, b, e.stats)
        tokens.token_report(a, b, arrays)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * N * V / 8, f"{peak} bytes: an allocation approaching N x V"


# ------------------------------------------------------------------ the statistics
def linear_quantile(x, q):
    """The quantile of ``x`` by linear interpolation between order statistics (Hyndman and
    Fan's definition 7), written out."""
    s = np.sort(x)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def test_report_statistics_equal_numpy_computations_from_the_reference_arrays():
    a, b = lm_pair()
    arr = reference.per_token_reference(a, b, k=10, jsd=True)
    r = tokens.token_report(a, b, arr)
    kl12, kl21, jsd = arr["kl12"], arr["kl21"], arr["jsd"]
    assert r.positions == a.N and r.documents == 4
    assert float(r) == r.kl12_mean == pytest.approx(kl12.mean(), rel=1e-14)
    assert r.kl21_mean == pytest.approx(kl21.mean(), rel=1e-14)
    for got, x in ((r.kl12_quantiles, kl12), (r.kl21_quantiles, kl21),
                   (r.jsd_quantiles, jsd)):
        for key, q in (("q50", .5), ("q90", .9), ("q95", .95), ("q99", .99), ("q99.9", .999)):
            assert got[key] == pytest.approx(linear_quantile(x, q), rel=1e-12), key
    assert (r.kl12_max, r.kl21_max, r.jsd_max) == (kl12.max(), kl21.max(), jsd.max())
    assert r.jsd_mean == pytest.approx(jsd.mean(), rel=1e-14)
    # perplexity, delta p: over the positions with a target
    has = a.targets >= 0
    assert r.positions_with_target == has.sum() == a.N - 4
    p1 = np.array([math.exp(v) for v in arr["logp1"][has]])
    p2 = np.array([math.exp(v) for v in arr["logp2"][has]])
    ppl1 = math.exp(-sum(arr["logp1"][has]) / has.sum())
    ppl2 = math.exp(-sum(arr["logp2"][has]) / has.sum())
    assert r.ppl1 == pytest.approx(ppl1, rel=1e-12) and r.ppl2 == pytest.approx(ppl2, rel=1e-12)
    assert r.ppl_ratio == pytest.approx(ppl2 / ppl1, rel=1e-12)
    assert r.dp_mean == pytest.approx((p2 - p1).mean(), rel=1e-10)
    assert r.dp_rms == pytest.approx(math.sqrt(((p2 - p1) ** 2).mean()), rel=1e-12)
    # top-k agreement: shared ids of the two top-k lists, per position, over k
    for k in (1, 5, 10):
        shared = [len(set(x[:k]) & set(y[:k])) / k for x, y in zip(arr["top1"], arr["top2"])]
        assert r.agreement[f"top{k}"] == pytest.approx(np.mean(shared), rel=1e-14)
    assert set(r.agreement) == {"top1", "top5", "top10"} and r.top_k == 10
    assert r.agreement["top1"] == pytest.approx(ir.kl(a, b).top1_agreement, rel=1e-14)
    assert r.p2_of_top1_mean == pytest.approx(arr["p2_of_top1"].mean(), rel=1e-14)
    assert r.p1_of_top2_mean == pytest.approx(arr["p1_of_top2"].mean(), rel=1e-14)


def test_the_interval_over_equal_documents_is_the_t_interval_of_their_means():
    # cluster-robust over documents of equal length = Student's t interval of the
    # documents' means (G - 1 degrees of freedom)
    a, b = lm_pair()
    arr = reference.per_token_reference(a, b, k=10, jsd=False)
    r = tokens.token_report(a, b, arr)
    for x, ci in ((arr["kl12"], r.kl12_ci), (arr["kl21"], r.kl21_ci)):
        means = x.reshape(4, 60).mean(1)
        lo, hi = sstats.t.interval(0.95, 3, loc=means.mean(), scale=sstats.sem(means))
        assert ci == pytest.approx([lo, hi], rel=1e-10)
    assert "4 documents" in r.ci_method and "cluster" in r.ci_method


def test_the_interval_of_uneven_documents_weights_each_by_its_length():
    a, b = lm_pair(docs=(20, 100, 50, 70))
    arr = reference.per_token_reference(a, b, k=10, jsd=False)
    r = tokens.token_report(a, b, arr)
    x, d = arr["kl12"], a.documents
    m = x.mean()
    resid = np.array([x[d == g].sum() - (d == g).sum() * m for g in range(4)])
    se = math.sqrt(4 / 3 * (resid ** 2).sum()) / len(x)
    h = sstats.t.ppf(0.975, 3) * se
    assert r.kl12_ci == pytest.approx([m - h, m + h], rel=1e-10)


def test_without_documents_the_positions_are_taken_as_independent():
    a, b = lm_pair(text=False)
    arr = reference.per_token_reference(a, b, k=10, jsd=False)
    r = tokens.token_report(a, b, arr)
    x = arr["kl12"]
    lo, hi = sstats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sstats.sem(x))
    assert r.kl12_ci == pytest.approx([lo, hi], rel=1e-10)
    assert "independent" in r.ci_method and r.documents is None
    assert r.ppl1 is None and r.dp_mean is None and r.positions_with_target == 0
    assert r.top_targets == [] and all(p.context == "" for p in r.top_positions)


def test_top_positions_and_target_tokens_are_the_largest_kl_in_order():
    a, b = lm_pair()
    arr = reference.per_token_reference(a, b, k=10, jsd=True)
    # many ties (KL rounded): the order breaks them by the lower position, the lower id
    arr["kl12"] = kl = np.round(arr["kl12"], 1)
    # a window longer than a text: the context stops at the start of the position's text
    r = tokens.token_report(a, b, arr, context=70)
    want = sorted(range(a.N), key=lambda i: (-kl[i], i))[:10]
    assert [p.position for p in r.top_positions] == want
    text = tokens.TokenText(a.labels)
    lp1 = reference.log_probs(a)[0]
    lp2 = reference.log_probs(b)[0]
    for p in r.top_positions:
        i = p.position
        assert p.kl12 == kl[i] and p.jsd == arr["jsd"][i] and p.document == a.documents[i]
        start = max(i - 69, int(np.flatnonzero(a.documents == a.documents[i])[0]))
        assert p.context_tokens == [text.token(t) for t in a.tokens[start:i + 1]]
        assert p.target == a.targets[i]
        if p.target >= 0:
            assert p.p1_target == pytest.approx(math.exp(lp1[i, p.target]), rel=1e-10)
        order1 = sorted(range(a.V), key=lambda y: (-lp1[i, y], y))[:3]
        assert [s.id for s in p.top1] == order1
        assert [s.p for s in p.top1] == pytest.approx(np.exp(lp1[i, order1]), rel=1e-10)
        assert [s.id for s in p.top2] == sorted(range(a.V), key=lambda y: (-lp2[i, y], y))[:3]
    sums, counts = {}, {}
    for t, v in zip(a.targets, kl):
        if t >= 0:
            sums[t] = sums.get(t, 0.0) + v
            counts[t] = counts.get(t, 0) + 1
    best = sorted(sums, key=lambda t: (-sums[t], t))[:10]
    assert [x.id for x in r.top_targets] == best
    assert any(p.document > 0 for p in r.top_positions)
    for x in r.top_targets:
        assert x.count == counts[x.id] and x.sum_kl12 == pytest.approx(sums[x.id], rel=1e-12)
        assert x.mean_kl12 == pytest.approx(sums[x.id] / counts[x.id], rel=1e-12)
        assert x.token == text.token(x.id)
    # equal KL everywhere: the target tokens come by count, ties to the lower id
    arr["kl12"] = np.full(a.N, 0.5)
    r = tokens.token_report(a, b, arr)
    assert [x.id for x in r.top_targets] == sorted(counts, key=lambda t: (-counts[t], t))[:10]
    assert [p.position for p in r.top_positions] == list(range(10))


# ------------------------------------------------------------------ token text
def test_byte_level_labels_are_decoded_and_others_shown_as_given():
    t = tokens.TokenText(WORDS)
    assert t.how == "byte-level decoded"
    assert t.token(0) == " the" and t.token(5) == "\n" and t.token(9) == "<|endoftext|>"
    # 'é' is split over two tokens: each alone is not UTF-8, together they are
    assert t.text([6, 7, 8]) == " café" and t.token(7) == "\ufffd"
    assert tokens.TokenText(["Ġcaf", "Ã©"]).token(1) == "é"
    s = tokens.TokenText(["▁the", "▁cat", "s", "<unk>"])
    assert s.how == "'▁' as a space" and s.text([0, 1, 2]) == " the cats"
    plain = tokens.TokenText(["cat", "dog", "a b"])
    assert plain.how == "as given" and plain.token(2) == "a b"
    ids = tokens.TokenText(None)
    assert ids.how == "ids" and ids.text([3, 4]) == "<3><4>" and ids.token(-1) == "<none>"


def test_rendering_shows_the_text_of_the_tokens():
    from rich.console import Console
    a, b = lm_pair()
    r = ir.compare(a, b, num_samples=20, jsd=True)
    con = Console(record=True, width=200)
    render_report(r, con)
    out = con.export_text()
    assert "positions with the largest KL(1||2)" in out
    assert "target tokens with the largest summed KL(1||2)" in out
    top = r.tokens.top_positions[0]
    assert repr(top.top1[0].token) in out and top.top1[0].token.startswith(" ")
    assert "Ġ" not in out
    rows = {name.strip(): (value, detail) for name, value, detail in report_rows(r)}
    assert "perplexity 1 / 2" in rows and "JSD mean" in rows and "top-k agreement" in rows
    assert "second pass took" in rows["JSD mean"][1]
    assert "95% [" in rows["KL(1||2) mean"][1] and "99.9%" in rows["KL(1||2) mean"][1]


# ------------------------------------------------------------------ compare, JSON
def test_compare_json_holds_the_whole_token_report():
    a, b = lm_pair()
    r = ir.compare(a, b, num_samples=20, jsd=True, top_k=5)
    d = json.loads(json.dumps(r.to_dict()))["tokens"]
    t = r.tokens
    assert d == json.loads(json.dumps(t.as_dict()))
    assert d["value"] == t.kl12_mean == r.kl.kl12 and d["meaning"]["kind"] == "distance"
    assert set(d["agreement"]) == {"top1", "top5"} and d["top_k"] == 5
    assert d["jsd_seconds"] > 0 and d["jsd_quantiles"]["q99.9"] == t.jsd_quantiles["q99.9"]
    assert len(d["top_positions"]) == 10 and len(d["top_targets"]) == 10
    assert d["top_positions"][0]["top1"][0].keys() == {"id", "token", "p"}
    # every field is defined, and every definition is a field
    fields = {k for k in d if k not in ("value", "meaning", "definitions")}
    assert fields == set(d["definitions"])
    assert "arrays" not in d and len(repr(t)) < 150
    # the reference backend: the same report
    ref = ir.compare(a, b, num_samples=20, jsd=True, top_k=5, backend="reference").tokens
    for key in ("kl12_mean", "kl21_mean", "ppl1", "ppl2", "dp_rms", "jsd_mean"):
        assert getattr(t, key) == pytest.approx(getattr(ref, key), rel=1e-10), key
    assert t.agreement == ref.agreement and ref.jsd_seconds is None
    assert [p.position for p in t.top_positions] == [p.position for p in ref.top_positions]


def test_per_token_is_on_by_the_stated_rules():
    a, b = lm_pair()
    plain_a, plain_b = lm_pair(text=False)
    run = dict(num_samples=20)
    assert ir.compare(a, b, **run).tokens is not None                 # both carry their text
    assert ir.compare(plain_a, plain_b, **run).tokens is None         # neither
    assert ir.compare(a, b, per_token=False, **run).tokens is None
    assert ir.compare(plain_a, plain_b, per_token=True, **run).tokens.ppl1 is None
    assert ir.compare(plain_a, plain_b, jsd=True, **run).tokens.jsd_mean is not None
    only = ir.Model(a.f, a.g, a.bias, targets=a.targets)               # targets alone
    assert ir.compare(only, only, **run).tokens.ppl_ratio == pytest.approx(1.0, abs=1e-12)
    assert ir.compare(only, plain_b, **run).tokens is None             # one model lacks it
    toks = ir.Model(a.f, a.g, a.bias, tokens=a.tokens)                 # tokens alone
    assert ir.compare(toks, toks, **run).tokens.ppl1 is None
    with pytest.raises(IdentirepError, match="per_token=False"):
        ir.compare(a, b, per_token=False, jsd=True)
    for bad in (dict(top_k=0), dict(top_k=101), dict(top_k=2.0), dict(per_token="yes"),
                dict(jsd=1)):
        with pytest.raises(IdentirepError):
            ir.compare(a, b, **bad)


def test_matrix_runs_no_per_token_pass(monkeypatch):
    from identirep import measures
    a, b = lm_pair()
    asked = []
    real = measures._engine

    def engine(*args, **kw):
        asked.append(kw.get("topk", 0))
        return real(*args, **kw)
    monkeypatch.setattr(measures, "_engine", engine)
    m = ir.matrix([a, b, a], num_samples=20)
    assert asked == [0, 0, 0] and np.isfinite(m.values["kl"]).all()
    ir.compare(a, b, num_samples=20)
    assert asked[-1] == 10


def test_gpu_backends_leave_the_per_token_report_off_or_refuse_it():
    a, b = lm_pair()
    for be in ("cuda", "cupy"):
        on, note = tokens.per_token_choice(a, b, be, None, 10, False)
        assert not on and be in note and "backend='cpu'" in note
        for kw in (dict(per_token=True, jsd=False), dict(per_token=None, jsd=True)):
            with pytest.raises(IdentirepError) as err:
                tokens.per_token_choice(a, b, be, top_k=10, **kw)
            assert 'backend="cpu"' in err.value.fix
    plain = lm_pair(text=False)
    assert tokens.per_token_choice(*plain, "cuda", None, 10, False) == (False, None)


def test_top_k_agreement_leaves_out_lists_of_every_label():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 300)
    a, b = (ir.Model(rng.standard_normal((300, 2)), rng.standard_normal((4, 2)), targets=t)
            for _ in range(2))
    r = ir.compare(a, b, num_samples=20).tokens
    assert r.top_k == 4 and set(r.agreement) == {"top1"}
    assert set(ir.compare(a, b, num_samples=20, top_k=3).tokens.agreement) == {"top1", "top3"}


def test_models_with_different_targets_are_refused():
    a, b = lm_pair()
    t = a.targets.copy()
    t[7] = (t[7] + 1) % a.V
    c = ir.Model(b.f, b.g, b.bias, targets=t)
    with pytest.raises(IdentirepError, match="targets differ at position 7"):
        ir.compare(a, c)


# ------------------------------------------------------------------ command line
@pytest.fixture
def model_files(tmp_path):
    a, b = lm_pair()
    pa, pb = tmp_path / "a.npz", tmp_path / "b.npz"
    ir.save_model(a, pa)
    ir.save_model(b, pb)
    return a, b, str(pa), str(pb)


def test_cli_writes_the_per_position_arrays(model_files, tmp_path, capsys):
    a, b, pa, pb = model_files
    npz, csv_path = tmp_path / "tok.npz", tmp_path / "tok.csv"
    base = ["compare", pa, pb, "--num-samples", "20", "--json"]
    assert main(base + ["--per-token", str(npz), "--jsd", "--top-k", "5"]) == 0
    d = json.loads(capsys.readouterr().out)["tokens"]
    assert d["top_k"] == 5 and d["jsd_mean"] is not None
    want = reference.per_token_reference(a, b, k=5, jsd=True)
    with np.load(npz) as z:
        for key in ("kl12", "kl21", "logp1", "logp2", "jsd", "L1", "L2"):
            assert_close(z[key], want[key], rtol=1e-10, what=key)
        np.testing.assert_array_equal(z["top1"], want["top1"])
        np.testing.assert_array_equal(z["targets"], a.targets)
        np.testing.assert_array_equal(z["tokens"], a.tokens)
        np.testing.assert_array_equal(z["documents"], a.documents)
        np.testing.assert_array_equal(z["position"], np.arange(a.N))
    assert main(base + ["--per-token", str(csv_path)]) == 0
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(tokens.CSV_COLUMNS) and len(rows) == a.N
    text = tokens.TokenText(a.labels)
    for i in (0, 59, 130):
        row = rows[i]
        assert int(row["position"]) == i and int(row["document"]) == a.documents[i]
        assert int(row["token"]) == a.tokens[i] and row["token_text"] == text.token(a.tokens[i])
        assert float(row["kl12"]) == pytest.approx(want["kl12"][i], rel=1e-10)
        assert int(row["top1_id"]) == want["top1"][i, 0] and row["jsd"] == ""
    assert rows[59]["target"] == "-1" and rows[59]["logp1"] == "" and rows[59]["target_text"] == ""


@pytest.mark.parametrize("extra, message", [
    (["--per-token", "{tmp}/missing/tok.npz"], "does not exist"),
    (["--per-token", "{tmp}/tok.txt"], ".npz"),
    (["--per-token", "{tmp}"], ".npz"),
    (["--top-k", "0"], "--top-k"),
    (["--top-k", "101"], "--top-k"),
    (["--top-k", "ten"], "--top-k"),
    (["--per-token", "{tmp}/tok.npz", "--no-per-token"], "give one of them"),
    (["--jsd", "--no-per-token"], "give one of them"),
])
def test_cli_refuses_bad_per_token_options(model_files, tmp_path, capsys, extra, message):
    _, _, pa, pb = model_files
    extra = [x.replace("{tmp}", str(tmp_path)) for x in extra]
    assert main(["compare", pa, pb, "--num-samples", "20"] + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tok.npz").exists()


def test_cli_per_token_is_off_with_no_per_token_and_on_by_default(model_files, capsys):
    _, _, pa, pb = model_files
    assert main(["compare", pa, pb, "--num-samples", "20", "--json", "--no-per-token"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] is None
    assert main(["compare", pa, pb, "--num-samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "per-token" in out and "perplexity 1 / 2" in out and "positions with the largest" in out


def test_cli_plot_path_has_the_same_per_token_report(model_files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _, _, pa, pb = model_files
    base = ["compare", pa, pb, "--num-samples", "20", "--json", "--jsd", "--top-k", "5"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)["tokens"]
    assert main(base + ["--plot", str(tmp_path / "t.png")]) == 0
    plotted = json.loads(capsys.readouterr().out)["tokens"]
    assert (tmp_path / "t.png").exists()
    for d in (plain, plotted):
        d.pop("jsd_seconds")
    assert plotted == plain


# ------------------------------------------------------------------ float32 rounding
def close_float32_pair(seed=0, N=400, V=1200, M=32, noise=3e-3, shift=2.0, offset=-30.0):
    """A close float32 pair (an int8-like perturbation) with logits of a trained LM's size,
    the second model's bias shifted (L1 != L2) and both offset (|L| ~ 30)."""
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((N, M))
    g1 = rng.standard_normal((V, M)) * 4 / np.sqrt(M)
    b1 = rng.standard_normal(V) + offset
    t = np.r_[rng.integers(0, V, N - 1), -1]
    f2 = f1 + noise * rng.standard_normal((N, M))
    g2 = g1 + noise * rng.standard_normal((V, M)) * 4 / np.sqrt(M)
    a, b = (ir.Model(f.astype(np.float32), g.astype(np.float32), bias.astype(np.float32),
                     targets=t) for f, g, bias in ((f1, g1, b1), (f2, g2, b1 + shift)))
    return a, b


def test_float32_per_token_kl_is_within_the_stated_rounding_bound():
    a, b = close_float32_pair()
    got = fast_arrays(a, b, jsd=False)
    want = reference.per_token_reference(a, b, k=10, jsd=False)
    assert np.median(want["kl12"]) < 1e-3                  # close: the floor matters
    for key in ("kl12", "kl21"):
        err = np.abs(got[key] - want[key])
        bound = tokens.float32_kl_bound(got, key)
        assert (err <= bound).all(), f"{key}: {(err / bound).max():.2f} x the bound"
        assert err.max() > 1e-7                   # float32 rounding is there
    # the report says so for a float32 pass, and not for a float64 one
    r = ir.compare(a, b, num_samples=20).tokens
    note = [n for n in r.notes if n.startswith("float32 pass")]
    assert len(note) == 1 and "extract and compare in float64" in note[0]
    assert f"{tokens.FLOAT32_KL_ERROR:.1e}" in note[0]
    a64, b64 = (ir.Model(m.f.astype(np.float64), m.g.astype(np.float64),
                         m.bias.astype(np.float64), targets=m.targets) for m in (a, b))
    assert not any("float32" in n for n in ir.compare(a64, b64, num_samples=20).tokens.notes)


def test_float32_probabilities_are_at_most_one():
    # one label dominates (p ~ 1): the float32 pass's L rounds below its float64 logit
    bias = np.zeros(64, np.float32)
    bias[0] = 40.0
    t = np.r_[np.zeros(399, np.int64), -1]
    a, b = (ir.Model(m.f, m.g, bias, targets=t) for m in close_float32_pair(V=64))
    got = fast_arrays(a, b, jsd=False)
    raw = tokens.gathered_logits(a, np.arange(a.N - 1), np.zeros(a.N - 1, np.int64))
    assert (raw - got["L1"][:-1]).max() > 0               # what the clipping is for
    for key in ("logp1", "logp2"):
        x = got[key][:-1]
        assert (x <= 0).all() and x.min() > -1e-5
    for key in ("p2_of_top1", "p1_of_top2"):
        assert (got[key] <= 1).all()
    r = tokens.token_report(a, b, got)
    assert r.dp_rms < 1e-5 and r.ppl1 >= 1 and r.ppl2 >= 1
    for p in r.top_positions:
        assert all(s.p <= 1 for s in p.top1 + p.top2)
        assert p.p1_target <= 1 and p.p2_target <= 1


# ------------------------------------------------------------------ lost targets
def test_targets_lost_to_dropped_labels_are_named_in_the_notes():
    a, b = lm_pair()
    gone = int(a.targets[0])
    for m in (a, b):
        m.bias[gone] = -np.inf
    a2, b2 = (ir.Model(m.f, m.g, m.bias, labels=m.labels, tokens=m.tokens, targets=m.targets,
                       documents=m.documents, drop_masked_labels=True) for m in (a, b))
    lost = int((a.targets == gone).sum())
    assert a2.metadata["masked_labels_dropped"]["targets_lost"] == lost > 0
    r = ir.compare(a2, b2, num_samples=20).tokens
    assert r.positions_with_target == (a.targets >= 0).sum() - lost
    assert any(f"{lost} position(s) lost their target to drop_masked_labels" in n
               and "left out of the perplexities and delta p" in n for n in r.notes), r.notes
    assert not any("lost their target" in n
                   for n in ir.compare(*lm_pair(), num_samples=20).tokens.notes)


def test_cli_top_k_without_a_per_token_report_is_refused_or_noted(model_files, tmp_path,
                                                                    capsys):
    _, _, pa, pb = model_files
    assert main(["compare", pa, pb, "--num-samples", "20", "--top-k", "5",
                 "--no-per-token"]) == 2
    assert "--top-k" in capsys.readouterr().err
    plain = [str(tmp_path / f"plain_{n}.npz") for n in "ab"]
    for m, p in zip(lm_pair(text=False), plain):
        ir.save_model(m, p)
    assert main(["compare", *plain, "--num-samples", "20", "--json", "--top-k", "5"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tokens"] is None
    assert any(n.startswith("--top-k 5 had no effect") and "do not both carry their text" in n
               for n in d["notes"]), d["notes"]
    assert main(["compare", *plain, "--num-samples", "20", "--json"]) == 0   # not asked: no note
    assert not any("--top-k" in n for n in json.loads(capsys.readouterr().out)["notes"])
    # --jsd turns the report on for any models: --top-k then takes effect
    assert main(["compare", *plain, "--num-samples", "20", "--json", "--top-k", "5",
                 "--jsd"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"]["top_k"] == 5


# ------------------------------------------------------------------ what the docs say
def _docs():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    return {n: " ".join((root / n).read_text(encoding="utf-8").split())
            for n in ("README.md", "NOTES.md", "docs/design.md")}


def test_the_docs_say_which_positions_are_scored():
    from identirep.results import TokenReport
    rule = "identirep scores every position that has a target"
    assert rule in TokenReport.definitions["ppl1"] and rule in _docs()["README.md"]
    assert "llama.cpp" in TokenReport.definitions["ppl1"]


def test_the_docs_say_what_the_report_keeps():
    from identirep import _cpu_pass
    from identirep.results import TokenReport
    docs = _docs()
    # intervals: KL has them, the JSD has none, and the notes say so
    fields = set(TokenReport.__dataclass_fields__)
    assert {f for f in fields if f.endswith("_ci")} == {"kl12_ci", "kl21_ci"}
    assert "(and JSD)" not in docs["NOTES.md"] and "no interval" in docs["NOTES.md"]
    # as_dict is TokenReport's other name for to_dict, which every result has
    assert not hasattr(ir.Report, "as_dict") and "to_dict" in TokenReport.as_dict.__doc__
    assert "the name the other results use" not in TokenReport.as_dict.__doc__
    # the two top-k caps, and where each applies; what the pass keeps
    assert tokens.MAX_TOP_K <= _cpu_pass.MAX_TOPK
    for name in ("NOTES.md", "docs/design.md"):
        assert "`_cpu_pass.MAX_TOPK` = 1024" in docs[name] and "MAX_TOP_K` = 100" in docs[name]
    assert "values (float64) per model" in docs["docs/design.md"]
