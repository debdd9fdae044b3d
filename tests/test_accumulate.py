"""The Accumulator: compute() equals compare of the concatenated inputs; merges, batchings and
saved states give the same statistics; the reservoir's sample is seeded; bad input is refused."""
import numpy as np
import pytest

import identirep as ir
from identirep.accumulate import Accumulator


def _pair(n, v, m1, m2, dtype=np.float64, bias=False, seed=0):
    r = np.random.default_rng(seed)
    f1 = r.standard_normal((n, m1))
    f2 = f1 @ r.standard_normal((m1, m2)) + 0.3 * r.standard_normal((n, m2))
    g1, g2 = r.standard_normal((v, m1)), r.standard_normal((v, m2))
    b1, b2 = (r.standard_normal(v), r.standard_normal(v)) if bias else (None, None)
    return [None if x is None else x.astype(dtype) for x in (f1, g1, b1, f2, g2, b2)]


def _leaves(d, path=""):
    """(path, value) of every number, string and flag of a report's JSON dict."""
    if isinstance(d, dict):
        for k, v in d.items():
            if k not in ("seconds", "notes"):
                yield from _leaves(v, f"{path}.{k}")
    elif isinstance(d, list):
        yield path + ".len", len(d)
        for i, v in enumerate(d):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, d


def assert_reports_match(got, want, rtol):
    a, b = dict(_leaves(got.to_dict())), dict(_leaves(want.to_dict()))
    assert a.keys() == b.keys()
    for k, w in b.items():
        g = a[k]
        if isinstance(w, float) and isinstance(g, float):
            assert g == pytest.approx(w, rel=rtol, abs=rtol * 1e-3), k
        else:
            assert g == w, k


def _accumulate(f1, g1, b1, f2, g2, b2, batch, **kw):
    acc = Accumulator(g1, g2, b1, b2, **kw)
    for i in range(0, len(f1), batch):
        acc.update(f1[i:i + batch], f2[i:i + batch])
    return acc


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("bias", [False, True])
def test_compute_equals_compare_of_the_concatenated_inputs(dtype, rtol, bias):
    f1, g1, b1, f2, g2, b2 = _pair(300, 40, 6, 6, dtype, bias, seed=1)
    want = ir.compare(ir.Model(f1, g1, b1), ir.Model(f2, g2, b2), seed=3)
    got = _accumulate(f1, g1, b1, f2, g2, b2, 64).compute(seed=3)
    assert got.N == 300 and got.kl.per_input_kl12 is None
    assert_reports_match(got, want, rtol)
    assert any("holds every one" in n for n in got.notes)


def _with_repeats(f1, f2, seed=0):
    """The inputs with a fifth of them repeated (a language model's repeated contexts)."""
    r = np.random.default_rng(seed)
    idx = np.concatenate([np.arange(len(f1)), r.choice(len(f1), len(f1) // 5)])
    r.shuffle(idx)
    return f1[idx], f2[idx]


def test_repeated_inputs_and_different_dimensions_with_biases():
    f1, g1, b1, f2, g2, b2 = _pair(250, 30, 5, 8, np.float64, True, seed=2)
    f1, f2 = _with_repeats(f1, f2)
    want = ir.compare(ir.Model(f1, g1, b1), ir.Model(f2, g2, b2), seed=1, num_samples=50)
    acc = _accumulate(f1, g1, b1, f2, g2, b2, 37)
    got = acc.compute(seed=1, num_samples=50)
    assert acc.complete and acc.kept == 250 < acc.n == 300
    assert "d_svd" in got.failures and got.d_rep is not None
    assert_reports_match(got, want, 1e-10)


def _state_close(a, b, rtol=1e-12):
    sa, sb = a.state_dict(model=False), b.state_dict(model=False)
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            np.testing.assert_allclose(v, sb[k], rtol=rtol, atol=rtol * np.abs(v).max(), err_msg=k)
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, sb[k], err_msg=k)
        else:
            assert v == sb[k], k


@pytest.mark.parametrize("reservoir", [4096, 40])
def test_batchings_and_merge_trees_give_the_same_statistics(reservoir):
    f1, g1, b1, f2, g2, b2 = _pair(240, 30, 4, 4, np.float64, True, seed=3)
    f1, f2 = _with_repeats(f1, f2, seed=1)
    one = _accumulate(f1, g1, b1, f2, g2, b2, len(f1), reservoir=reservoir, seed=5)
    for batch in (1, 13, 100):
        _state_close(_accumulate(f1, g1, b1, f2, g2, b2, batch, reservoir=reservoir, seed=5),
                     one)
    shards = [(f1[i:i + 50], f2[i:i + 50]) for i in range(0, len(f1), 50)]

    def acc(i):
        return Accumulator(g1, g2, b1, b2, reservoir=reservoir, seed=5).update(*shards[i])
    left = acc(0).merge(acc(1)).merge(acc(2)).merge(acc(3)).merge(acc(4)).merge(acc(5))
    tree = acc(0).merge(acc(1)).merge(acc(2).merge(acc(3)).merge(acc(4).merge(acc(5))))
    empty = Accumulator(g1, g2, b1, b2, reservoir=reservoir, seed=5)
    for merged in (left, tree, empty.merge(tree)):
        _state_close(merged, one)
    assert one.complete == (reservoir > 240)
    r1, r2 = one.compute(seed=2, num_samples=20), tree.compute(seed=2, num_samples=20)
    assert_reports_match(r1, r2, 1e-10)
    assert r1.d_llv.input_set == r2.d_llv.input_set


def test_merge_order_is_concatenation_order():
    f1, g1, _, f2, g2, _ = _pair(120, 20, 3, 3, seed=4)
    a = Accumulator(g1, g2).update(f1[:60], f2[:60])
    b = Accumulator(g1, g2).update(f1[60:], f2[60:])
    ba = Accumulator(g1, g2).update(f1[60:], f2[60:]).merge(
        Accumulator(g1, g2).update(f1[:60], f2[:60]))
    whole = Accumulator(g1, g2).update(f1, f2)
    _state_close(a.merge(b), whole)
    # the other order: the same moments, the rows numbered as the other concatenation
    np.testing.assert_array_equal(np.sort(ba.res_index), np.arange(120))
    np.testing.assert_array_equal(ba.res_f1[:60], f1[60:])


def _jsonable(state):
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()}


def test_state_dict_round_trips_and_resumes():
    import json
    f1, g1, b1, f2, g2, b2 = _pair(200, 25, 4, 4, np.float32, True, seed=5)
    whole = _accumulate(f1, g1, b1, f2, g2, b2, 50, reservoir=64, seed=9)
    want = whole.compute(seed=4, num_samples=20)
    half = _accumulate(f1[:100], g1, b1, f2[:100], g2, b2, 50, reservoir=64, seed=9)
    state = json.loads(json.dumps(_jsonable(half.state_dict())))
    resumed = Accumulator.from_state_dict(state)
    for i in (100, 150):
        resumed.update(f1[i:i + 50], f2[i:i + 50])
    _state_close(resumed, whole, rtol=0)
    got = resumed.compute(seed=4, num_samples=20)
    assert got.to_dict() | {"seconds": 0} == want.to_dict() | {"seconds": 0}
    # without the models: loads into an accumulator of the same models only
    light = whole.state_dict(model=False)
    assert "g1" not in light
    again = Accumulator.from_state_dict(light, g1, g2, b1, b2)
    _state_close(again, whole, rtol=0)
    other = Accumulator(g1, g2, None, b2, reservoir=64, seed=9)
    with pytest.raises(ir.IdentirepError, match="other g or biases"):
        other.load_state_dict(light)


def test_state_dict_through_torch_save(tmp_path):
    torch = pytest.importorskip("torch")
    f1, g1, _, f2, g2, _ = _pair(80, 20, 3, 3, seed=6)
    acc = _accumulate(f1, g1, None, f2, g2, None, 30)
    state = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
             for k, v in acc.state_dict().items()}
    torch.save(state, tmp_path / "acc.pt")
    back = Accumulator.from_state_dict(torch.load(tmp_path / "acc.pt", weights_only=True))
    _state_close(back, acc, rtol=0)
    # torch CPU tensors as batches
    t = Accumulator(torch.from_numpy(g1), torch.from_numpy(g2)).update(
        torch.from_numpy(f1), torch.from_numpy(f2))
    _state_close(t, Accumulator(g1, g2).update(f1, f2), rtol=0)


def test_a_small_reservoir_samples_the_inputs_by_seed_and_says_so():
    f1, g1, _, f2, g2, _ = _pair(600, 30, 4, 4, seed=7)
    f1, f2 = _with_repeats(f1, f2, seed=2)
    want = ir.compare(ir.Model(f1, g1), ir.Model(f2, g2), seed=0, num_samples=10)
    accs = [_accumulate(f1, g1, None, f2, g2, None, 97, reservoir=100, seed=s)
            for s in (0, 0, 1)]
    assert not accs[0].complete and accs[0].kept == 100
    np.testing.assert_array_equal(accs[0].res_index, accs[1].res_index)
    assert set(accs[0].res_index) != set(accs[2].res_index)
    # a uniform sample of the 600 distinct inputs: spread over the stream, about 600 found
    assert 150 < accs[0].res_index.mean() < 550
    assert 300 < accs[0].distinct_estimate() < 1200
    got = [a.compute(seed=0, num_samples=10) for a in accs[:2]]
    assert got[0].to_dict() | {"seconds": 0} == got[1].to_dict() | {"seconds": 0}
    assert any("input side estimated" in n and "100 of about" in n for n in got[0].notes)
    assert set(got[0].d_llv.input_set) <= set(accs[0].res_index.tolist())
    # everything but the input side is exact
    for k in ("pivot", "leave_out", "t1", "t3"):
        assert getattr(got[0].d_llv, k) == pytest.approx(getattr(want.d_llv, k), rel=1e-10)
    for k in ("kl", "d_logit", "mcca_f", "mcca_g", "d_rep"):
        assert float(getattr(got[0], k)) == pytest.approx(float(getattr(want, k)), rel=1e-10)
    assert got[0].d_svd.max_d_svd_f == pytest.approx(want.d_svd.max_d_svd_f, rel=1e-10)


def test_state_size_does_not_grow_with_the_inputs():
    f1, g1, _, f2, g2, _ = _pair(2000, 20, 3, 3, seed=8)
    acc = Accumulator(g1, g2, reservoir=50)

    def size():
        return sum(v.nbytes for v in acc.state_dict(model=False).values()
                   if isinstance(v, np.ndarray))
    sizes = []
    for i in range(0, 2000, 100):
        acc.update(f1[i:i + 100], f2[i:i + 100])
        sizes.append(size())
    assert acc.n == 2000 and len(set(sizes)) == 1


def test_hash_collisions_keep_distinct_rows(monkeypatch):
    import identirep._reservoir as rm
    f1, g1, _, f2, g2, _ = _pair(150, 20, 3, 3, seed=9)
    f1, f2 = _with_repeats(f1, f2, seed=3)
    monkeypatch.setattr(rm, "_mix64", lambda h: h % np.uint64(7))   # 7 priorities in all
    acc = _accumulate(f1, g1, None, f2, g2, None, 16, reservoir=1000)
    assert acc.complete and acc.kept == 150
    from identirep._input_side import distinct_inputs
    np.testing.assert_array_equal(acc.res_index, distinct_inputs(f1, f2))


def test_bad_input_is_refused():
    f1, g1, _, f2, g2, _ = _pair(60, 20, 3, 4, seed=10)
    E = ir.IdentirepError
    acc = Accumulator(g1, g2)
    with pytest.raises(E, match="seen no input"):
        acc.engine()
    with pytest.raises(E, match="at least 2"):
        acc.compute()
    with pytest.raises(E, match="f1 has 4 dimensions"):
        acc.update(f2, f2)
    with pytest.raises(E, match="one row per input"):
        acc.update(f1[:5], f2[:6])
    bad = f1.copy()
    bad[3, 1] = np.nan
    with pytest.raises(E, match="NaN"):
        acc.update(bad, f2)
    with pytest.raises(E, match="targets"):
        acc.update(f1, f2, targets=np.zeros(60, np.int64))
    acc.update(f1[:1], f2[:1])
    with pytest.raises(E, match="at least 2"):
        acc.compute()
    with pytest.raises(E, match="dtype float32"):
        acc.update(f1.astype(np.float32), f2)
    with pytest.raises(E, match="logits reach"):
        acc.update(f1 * 1e200, f2)
    assert acc.n == 1     # a refused batch leaves the state as it was
    acc.update(f1[1:], f2[1:])
    with pytest.raises(E, match="unknown option"):
        acc.compute(backend="cpu")
    with pytest.raises(E, match="reservoir"):
        Accumulator(g1, g2, reservoir=0)
    with pytest.raises(E, match="max.M1, M2. \\+ 1 = 5"):
        Accumulator(g1, g2, reservoir=4)
    with pytest.raises(E, match="different label sets"):
        Accumulator(g1, g2[:10])
    with pytest.raises(E, match="differ in reservoir"):
        acc.merge(Accumulator(g1, g2, reservoir=7).update(f1, f2))
    with pytest.raises(E, match="different g"):
        acc.merge(Accumulator(g1 + 1, g2).update(f1, f2))
    small = Accumulator(g1, g2, reservoir=10).update(f1, f2)
    with pytest.raises(E, match="paper_compat"):
        small.compute(paper_compat=True)
    state = acc.state_dict()
    for change, match in (({"version": 1}, "version 1"), ({"format": "x"}, "not an accumulator"),
                          ({"u_mean": state["u_mean"][:-1]}, "u_mean has shape"),
                          ({"n": 3.5}, "n must be int"), ({"M1": 5}, "M1 is 5"),
                          ({"sums": state["sums"] * np.nan}, "NaN")):
        with pytest.raises(E, match=match):
            Accumulator.from_state_dict({**state, **change})
    with pytest.raises(E, match="no 'res_f1'"):
        Accumulator.from_state_dict({k: v for k, v in state.items() if k != "res_f1"})
    with pytest.raises(E, match="no g1, g2"):
        Accumulator.from_state_dict(acc.state_dict(model=False))


@pytest.fixture(scope="module")
def wide():
    """4200 labels (beyond the plain pivot search: the bounded one), float32; accumulators
    of every input and of a 200-row sample."""
    f1, g1, _, f2, g2, _ = _pair(500, 4200, 6, 6, np.float32, seed=11)
    return {"models": (ir.Model(f1, g1), ir.Model(f2, g2)),
            "every": _accumulate(f1, g1, None, f2, g2, None, 128),
            "sample": _accumulate(f1, g1, None, f2, g2, None, 128, reservoir=200)}


def test_bounded_pivot_search_makes_compares_choice(wide):
    # beyond 4096 labels the exact pivot search is a branch and bound whose bounds project f;
    # from a sample of the rows they project f's scatter: the same choice, other pivots
    # evaluated; with every input kept, f itself: the same pivots evaluated
    want = ir.compare(*wide["models"], seed=0, num_samples=20)
    got = wide["every"].compute(seed=0, num_samples=20)
    assert "bounded search" in got.d_llv.pivot_search
    assert_reports_match(got, want, 1e-5)
    sample = wide["sample"].compute(seed=0, num_samples=20)
    assert any("bounded pivot search" in n for n in sample.notes)
    assert not any("label side may differ" in n for n in sample.notes)
    for k in ("pivot", "leave_out", "t1", "t3"):
        assert getattr(sample.d_llv, k) == pytest.approx(getattr(want.d_llv, k), rel=1e-5)


def test_a_small_pivot_budget_makes_compares_choice_when_every_input_is_kept(wide, budget=66):
    # the bounded search stops at the budget before proving its minimum: its choice follows the
    # order of evaluation, from a projection of f; with every input kept it projects f itself
    want = ir.compare(*wide["models"], seed=0, num_samples=20, pivot_budget=budget)
    assert "not proven exact" in want.d_llv.pivot_search
    got = wide["every"].compute(seed=0, num_samples=20, pivot_budget=budget)
    assert got.d_llv.pivot_search == want.d_llv.pivot_search
    assert_reports_match(got, want, 1e-5)
    assert not any("may differ" in n for n in got.notes)
    # from a sample the order differs, and the report says the label side may differ
    sample = wide["sample"].compute(seed=0, num_samples=20, pivot_budget=budget)
    assert "not proven exact" in sample.d_llv.pivot_search
    assert any("label side may differ from compare" in n for n in sample.notes)


def test_empty_batches_states_and_device_arrays():
    f1, g1, _, f2, g2, _ = _pair(50, 20, 3, 3, seed=12)
    acc = Accumulator(g1, g2)
    with pytest.raises(ir.IdentirepError, match="empty"):
        acc.update(f1[:0], f2[:0])
    fresh = Accumulator.from_state_dict(acc.state_dict())    # the state of no input
    assert fresh.n == 0
    fresh.update(f1, f2)
    _state_close(fresh, Accumulator(g1, g2).update(f1, f2), rtol=0)

    class OnDevice:   # what identirep takes for a GPU array
        __cuda_array_interface__ = {}
        shape, ndim = f1.shape, 2
    with pytest.raises(ir.IdentirepError, match="runs on the CPU backend"):
        acc.update(OnDevice(), f2)
    with pytest.raises(ir.IdentirepError, match="runs on the CPU backend"):
        Accumulator(OnDevice(), g2)


def test_d_llv_counts_every_input_not_the_kept_rows():
    # 7 distinct inputs (= max(M) + 1) among 10: compare computes d_LLV, so must the stream
    f1, g1, _, f2, g2, _ = _pair(7, 20, 6, 6, seed=13)
    idx = np.array([0, 1, 2, 3, 4, 5, 6, 2, 4, 0])
    f1, f2 = f1[idx], f2[idx]
    want = ir.compare(ir.Model(f1, g1), ir.Model(f2, g2), seed=0, num_samples=5)
    got = _accumulate(f1, g1, None, f2, g2, None, 4).compute(seed=0, num_samples=5)
    assert want.d_llv is not None and got.d_llv is not None
    for k, w in want.d_llv.to_dict().items():
        if k != "seconds":
            assert got.d_llv.to_dict()[k] == (pytest.approx(w, rel=1e-10)
                                              if isinstance(w, float) else w), k
    # a reservoir of max(M) + 1 rows of 100 distinct inputs: d_LLV from the sample
    f1, g1, _, f2, g2, _ = _pair(100, 20, 4, 4, seed=14)
    small = _accumulate(f1, g1, None, f2, g2, None, 30, reservoir=5).compute(num_samples=5)
    assert small.d_llv is not None, small.failures


def test_a_refused_load_or_batch_leaves_the_state_as_it_was(monkeypatch):
    f1, g1, _, f2, g2, _ = _pair(100, 20, 3, 3, seed=15)
    acc = _accumulate(f1, g1, None, f2, g2, None, 50)
    before = acc.state_dict(model=False)
    other = _accumulate(f1[:40], g1, None, f2[:40], g2, None, 40).state_dict(model=False)
    with pytest.raises(ir.IdentirepError, match="complete"):
        acc.load_state_dict({**other, "complete": "maybe"})
    _state_close(acc, Accumulator.from_state_dict(before, g1, g2), rtol=0)
    import identirep.accumulate as am

    def boom(*a, **k):
        raise ir.IdentirepError("refused")
    monkeypatch.setattr(am, "scatter_blocks", boom)
    with pytest.raises(ir.IdentirepError, match="refused"):
        acc.update(f1[:10], f2[:10])
    _state_close(acc, Accumulator.from_state_dict(before, g1, g2), rtol=0)


def test_bfloat16_and_float16_models_round_trip_and_match_compare():
    torch = pytest.importorskip("torch")
    f1, g1, b1, f2, g2, b2 = _pair(200, 30, 4, 4, np.float32, True, seed=16)
    bf = [torch.from_numpy(x).to(torch.bfloat16) for x in (f1, g1, b1, f2, g2, b2)]
    acc = _accumulate(*bf, 64)
    back = Accumulator.from_state_dict(acc.state_dict())
    assert back.fingerprint() == acc.fingerprint()
    _state_close(back, acc, rtol=0)
    want = ir.compare(ir.Model(bf[0], bf[1], bf[2]), ir.Model(bf[3], bf[4], bf[5]), seed=1,
                      num_samples=20)
    assert_reports_match(acc.compute(seed=1, num_samples=20), want, 1e-5)
    h = [x.astype(np.float16) for x in (f1, g1, b1, f2, g2, b2)]
    acc16 = _accumulate(*h, 64)
    back = Accumulator.from_state_dict(acc16.state_dict())
    _state_close(back, acc16, rtol=0)
    want = ir.compare(ir.Model(h[0], h[1], h[2]), ir.Model(h[3], h[4], h[5]), seed=1,
                      num_samples=20)
    assert_reports_match(acc16.compute(seed=1, num_samples=20), want, 1e-5)


def test_g_is_read_once_not_per_batch_or_compute(monkeypatch):
    # g is widened, augmented and measured (its largest magnitude) once, at construction;
    # neither a batch nor compute converts, scans or re-validates it
    torch = pytest.importorskip("torch")
    import identirep.accumulate as am
    import identirep.model as mm
    f1, g1, b1, f2, g2, b2 = _pair(64, 20, 3, 3, np.float32, True, seed=17)
    g1t, g2t = (torch.from_numpy(g).to(torch.bfloat16) for g in (g1, g2))
    acc = Accumulator(g1t, g2t, b1, b2)
    gs = [g1t, g2t, b1, b2] + [x for pair in acc._host for x in pair]
    seen = []
    for mod, name in ((am, "to_numpy"), (am, "max_abs"), (mm, "check_array")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda x, *a, real=real, **k: seen.append(x) or
                            real(x, *a, **k))
    for i in range(0, 64, 8):
        acc.update(f1[i:i + 8], f2[i:i + 8])
    acc.compute(num_samples=5)
    assert seen and not any(x is y for x in seen for y in gs)


def test_the_fingerprint_reads_every_row_of_g():
    f1, g1, _, f2, g2, _ = _pair(40, 600, 3, 3, seed=18)
    light = _accumulate(f1, g1, None, f2, g2, None, 20).state_dict(model=False)
    # rows that 256 evenly spaced ones leave out, changed by one unit in the last place
    spaced = np.unique(np.linspace(0, 599, 256).astype(np.int64))
    for row in np.setdiff1d(np.arange(600), spaced)[[0, 100, -1]]:
        g = g1.copy()
        g[row, 2] = np.nextafter(g[row, 2], 9)
        with pytest.raises(ir.IdentirepError, match="other g or biases"):
            Accumulator(g, g2).load_state_dict(light)
        with pytest.raises(ir.IdentirepError, match="different g"):
            Accumulator(g, g2).update(f1, f2).merge(Accumulator(g1, g2).update(f1, f2))
    b = np.zeros(600)
    with pytest.raises(ir.IdentirepError, match="different g or biases"):
        Accumulator(g1, g2, b).update(f1, f2).merge(Accumulator(g1, g2, b + 1e-9).update(f1, f2))


def _hostile(state, **change):
    return {**state, **{k: (v(state[k]) if callable(v) else v) for k, v in change.items()}}


def test_hostile_states_are_refused():
    f1, g1, _, f2, g2, _ = _pair(100, 20, 3, 3, seed=19)
    acc = _accumulate(f1, g1, None, f2, g2, None, 50, reservoir=20)
    s = acc.state_dict()
    E = ir.IdentirepError
    D = acc.M1 + acc.M2 + 2

    def asym(S):
        S = S.copy()
        S[0, 1] += 0.5 * np.sqrt(S[0, 0] * S[1, 1])
        return S

    def neg_diag(S):
        S = S.copy()
        S[2, 2] = -1.0
        return S

    def swap(p):
        p = p.copy()
        p[[0, 1]] = p[[1, 0]]
        return p

    def tweak_row(F):
        F = F.copy()
        F[0, 0] += 1.0
        return F
    cases = [({"sums": lambda x: x * np.r_[-1, 1, 1, 1, 1, 1]}, "sums"),
             ({"sums": lambda x: x * np.r_[1, 1, 1, 1, 1e6, 1]}, "agree"),
             ({"u_scatter": asym}, "symmetric"), ({"u_scatter": neg_diag}, "u_scatter"),
             ({"u_scatter": lambda S: S * np.where(np.eye(D) > 0, 1, 3)}, "u_scatter"),
             ({"col_m2_11": lambda x: -x}, "col_m2_11"),
             ({"col_m2_12": lambda x: 3 * x + np.sqrt(s["col_m2_11"] * s["col_m2_22"])},
              "col_m2_12"),
             ({"f_max_abs": np.zeros(2)}, "f_max_abs"), ({"f_max_abs": -np.ones(2)}, "f_max_abs"),
             ({"res_priority": swap}, "priorit"), ({"res_f1": tweak_row}, "priorit"),
             ]
    for change, match in cases:
        with pytest.raises(E, match=match):
            Accumulator.from_state_dict(_hostile(s, **change))
    Accumulator.from_state_dict(s)   # the state itself loads
    # a reservoir that is not full has dropped no input
    full = _accumulate(f1, g1, None, f2, g2, None, 50).state_dict()
    with pytest.raises(E, match="not complete but keeps 100 rows"):
        Accumulator.from_state_dict({**full, "complete": False})


def test_the_empty_state_survives_json():
    import json
    _, g1, _, _, g2, _ = _pair(10, 20, 3, 4, seed=20)
    state = json.loads(json.dumps(_jsonable(Accumulator(g1, g2).state_dict())))
    back = Accumulator.from_state_dict(state)
    assert back.n == 0 and back.res_f1.shape == (0, 3) and back.res_f2.shape == (0, 4)


def test_merge_checks_dtype_labels_and_names_and_from_state_dict_its_arguments():
    f1, g1, _, f2, g2, _ = _pair(30, 20, 3, 3, seed=21)
    E = ir.IdentirepError
    with pytest.raises(E, match="dtypes .'float32', 'float32'. and .'float64'"):
        Accumulator(g1, g2, dtype="float32").merge(Accumulator(g1, g2).update(f1, f2))
    labels = [f"t{i}" for i in range(20)]
    with pytest.raises(E, match="labels"):
        Accumulator(g1, g2, labels=labels).merge(Accumulator(g1, g2).update(f1, f2))
    with pytest.raises(E, match="names"):
        Accumulator(g1, g2, names=("a", "b")).merge(Accumulator(g1, g2).update(f1, f2))
    state = Accumulator(g1, g2).update(f1, f2).state_dict()
    with pytest.raises(E, match="g1 and g2"):
        Accumulator.from_state_dict(state, g1)
    with pytest.raises(E, match="g1 and g2"):
        Accumulator.from_state_dict(state, bias1=np.zeros(20))


def test_many_repeats_fold_as_fast_as_distinct_inputs():
    # the reservoir's duplicate check is vectorised: 60000 inputs, 50 distinct, in one batch,
    # take about what 60000 distinct inputs take (a Python loop per repeat: 6x more)
    import time
    f1, g1, _, f2, g2, _ = _pair(60000, 20, 3, 3, seed=22)
    idx = np.random.default_rng(0).integers(0, 50, 60000)
    times = {}
    for what, rows in (("distinct", slice(None)), ("repeats", idx)):
        best = np.inf
        for _ in range(3):
            acc = Accumulator(g1, g2)
            t0 = time.perf_counter()
            acc.update(f1[rows], f2[rows])
            best = min(best, time.perf_counter() - t0)
        times[what] = best
    assert acc.kept == 50 and acc.complete
    assert times["repeats"] < 2.5 * times["distinct"], times


def test_float32_different_dimensions_and_merge_trees_match_compare():
    f1, g1, b1, f2, g2, b2 = _pair(300, 40, 5, 7, np.float32, True, seed=23)
    want = ir.compare(ir.Model(f1, g1, b1), ir.Model(f2, g2, b2), seed=2, num_samples=30)
    parts = [_accumulate(f1[i:i + 60], g1, b1, f2[i:i + 60], g2, b2, 25)
             for i in range(0, 300, 60)]
    tree = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3].merge(parts[4])))
    assert_reports_match(tree.compute(seed=2, num_samples=30), want, 1e-5)


def test_float32_agrees_with_float64_as_well_as_compare_does():
    # float32: the stream's error against float64 is bounded by compare's own float32 error
    f1, g1, b1, f2, g2, b2 = _pair(3000, 50, 8, 8, np.float64, True, seed=24)
    exact = ir.compare(ir.Model(f1, g1, b1), ir.Model(f2, g2, b2), seed=0, num_samples=20)
    s = [x.astype(np.float32) for x in (f1, g1, b1, f2, g2, b2)]
    c32 = ir.compare(ir.Model(s[0], s[1], s[2]), ir.Model(s[3], s[4], s[5]), seed=0,
                     num_samples=20)
    a32 = _accumulate(*s, 500).compute(seed=0, num_samples=20)
    for k in ("kl", "d_logit", "d_llv", "mcca_f", "mcca_g", "d_rep", "d_svd"):
        w, c, a = (float(getattr(r, k)) for r in (exact, c32, a32))
        assert abs(a - w) <= 2 * abs(c - w) + 1e-5 * abs(w), k
    np.testing.assert_allclose(a32.mcca_f.correlations, exact.mcca_f.correlations,
                               rtol=0, atol=2 * np.abs(np.subtract(
                                   c32.mcca_f.correlations, exact.mcca_f.correlations)).max()
                               + 1e-5)
