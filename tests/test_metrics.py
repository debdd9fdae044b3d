"""identirep.metrics.IdentirepMetric (torchmetrics): compute() equals compare of every input
seen, on one process and on two gloo ranks whatever the split of the inputs (their states
merged in rank order); a sync by hand holds until compute; set_heads and reset forget; a
packed state is checked; without torchmetrics the class names the extra."""
import json
import sys
import types
import warnings

import numpy as np
import pytest

import identirep as ir
import identirep.metrics as im

from test_accumulate import assert_reports_match

OPTS = {"seed": 3, "num_samples": 30}


def _data(n=400, v=30, m=4):
    r = np.random.default_rng(0)
    f1 = r.standard_normal((n, m))
    f2 = f1 @ r.standard_normal((m, m)) + 0.3 * r.standard_normal((n, m))
    return f1, r.standard_normal((v, m)), r.standard_normal(v), f2, r.standard_normal((v, m))


def _want():
    f1, g1, b1, f2, g2 = _data()
    return ir.compare(ir.Model(f1, g1, b1), ir.Model(f2, g2), **OPTS)


def _feed(metric, f1, f2, batch=64):
    import torch
    for i in range(0, len(f1), batch):
        metric.update(torch.from_numpy(f1[i:i + batch]), torch.from_numpy(f2[i:i + batch]))


@pytest.fixture(scope="module")
def torch():
    pytest.importorskip("torchmetrics", reason="torchmetrics is not installed "
                                               "(identirep[torchmetrics])")
    import torch
    return torch


def test_one_process_compute_reset_and_forward(torch):
    f1, g1, b1, f2, g2 = _data()
    m = im.IdentirepMetric(torch.from_numpy(g1), torch.from_numpy(g2), torch.from_numpy(b1),
                           compare_options=OPTS)
    _feed(m, f1, f2)
    want = _want()
    assert_reports_match(m.compute(), want, 1e-10)
    m.reset()
    assert m.accumulator.n == 0
    with pytest.warns(UserWarning, match="before the ``update``"), \
            pytest.raises(ir.IdentirepError, match="seen 0 inputs"):
        m.compute()
    assert m(torch.from_numpy(f1), torch.from_numpy(f2).requires_grad_()) is None   # forward
    assert_reports_match(m.compute(), want, 1e-10)
    other = im.IdentirepMetric(g1, g2, b1, compare_options=OPTS)
    first = im.IdentirepMetric(g1, g2, b1, compare_options=OPTS)
    _feed(first, f1[:150], f2[:150])
    _feed(other, f1[150:], f2[150:])
    first.merge_state(other)
    assert_reports_match(first.compute(), want, 1e-10)
    with pytest.raises(ir.IdentirepError, match="got dict") as e:
        first.merge_state({"packed": []})
    assert "load_state_dict" in e.value.fix


def test_set_heads_takes_new_heads_and_forgets(torch):
    """Heads that train: set_heads gives the metric the heads of now; what was seen with the
    old heads is forgotten, and compute equals compare with the new ones."""
    f1, g1, b1, f2, g2 = _data()
    m = im.IdentirepMetric(torch.from_numpy(-g1), torch.from_numpy(g2), compare_options=OPTS)
    _feed(m, f1[:100], f2[:100])
    m.set_heads(torch.from_numpy(g1), torch.from_numpy(g2), torch.from_numpy(b1))
    assert m.accumulator.n == 0
    _feed(m, f1, f2)
    assert_reports_match(m.compute(), _want(), 1e-10)
    with pytest.raises(ir.IdentirepError, match="heads changed"):
        m.set_heads(g1[:, :3], g2)
    assert m.accumulator.n == 400            # a refused call changes nothing


def test_compute_hashes_g_once(torch, monkeypatch):
    """The ranks' states load into copies of one Accumulator made with the metric: g is
    hashed once, not once per rank's state (nor again at reset)."""
    import identirep.accumulate as acc
    calls = []
    orig = acc.fingerprint_of
    monkeypatch.setattr(acc, "fingerprint_of", lambda *a: calls.append(1) or orig(*a))
    f1, g1, b1, f2, g2 = _data()
    ranks = [im.IdentirepMetric(g1, g2, b1, compare_options=OPTS) for _ in range(2)]
    _feed(ranks[1], f1[200:], f2[200:])
    second = torch.from_numpy(im.pack_state(ranks[1].accumulator.state_dict(model=False)))
    calls.clear()
    m = im.IdentirepMetric(g1, g2, b1, compare_options=OPTS,
                           dist_sync_fn=lambda t, group=None: [t, second],
                           distributed_available_fn=lambda: True)
    _feed(m, f1[:200], f2[:200])
    assert_reports_match(m.compute(), _want(), 1e-10)
    m.reset()
    _feed(m, f1, f2)
    assert m.accumulator.n == 400 and len(calls) == 1


def test_empty_like_is_a_fresh_accumulator():
    from identirep.accumulate import Accumulator
    f1, g1, b1, f2, g2 = _data(n=120)
    proto = Accumulator(g1, g2, b1, reservoir=50, seed=2)
    a, b = proto.empty_like().update(f1, f2), Accumulator(g1, g2, b1, reservoir=50, seed=2)
    b.update(f1, f2)
    assert proto.n == 0 and a.n == 120 and repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], np.ndarray):
            assert np.array_equal(sa[k], sb[k], equal_nan=sa[k].dtype.kind == "f"), k
        else:
            assert sa[k] == sb[k], k
    assert proto.empty_like().n == 0 and proto.state_dict()["n"] == 0


def test_packed_state_round_trips_exactly():
    f1, g1, b1, f2, g2 = _data(n=50)
    from identirep.accumulate import Accumulator
    state = Accumulator(g1, g2, b1).update(f1, f2).state_dict(model=False)
    back = im.unpack_state(im.pack_state(state))
    assert back.keys() == state.keys()
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v, equal_nan=True), k
        else:
            assert back[k] == v and type(back[k]) is type(v), k
    with pytest.raises(ir.IdentirepError, match="not a packed identirep state"):
        im.unpack_state(np.zeros(40, np.uint8))
    packed = im.pack_state(state)
    for cut in (5, 12, 20, 200, len(packed) - 1):      # truncated: in the magic, header, arrays
        with pytest.raises(ir.IdentirepError, match="packed identirep state"):
            im.unpack_state(packed[:cut])
    head = len(im._MAGIC) + 8
    size = int.from_bytes(packed[len(im._MAGIC):head].tobytes(), "little")
    header = json.loads(packed[head:head + size].tobytes())
    for change in ({"at": -8}, {"nbytes": 1 << 40}, {"shape": [-1]}, {"dtype": "O"},
                   {"dtype": "no such"}, {"shape": [1 << 32, 1 << 32], "nbytes": 0, "crc32": 0},
                   {"crc32": "x"}, {"crc32": None}):   # a shape whose int64 product wraps to 0
        bad = [dict(e, **change) if "dtype" in e else e for e in header]
        text = json.dumps(bad).encode()
        altered = np.concatenate([np.frombuffer(im._MAGIC + len(text).to_bytes(8, "little")
                                                + text, np.uint8), packed[head + size:]])
        with pytest.raises(ir.IdentirepError, match="damaged"):
            im.unpack_state(altered)
    for at in (head + size, len(packed) // 2, len(packed) - 1):   # one bit of an array flipped
        flipped = packed.copy()
        flipped[at] ^= 4
        with pytest.raises(ir.IdentirepError, match="do not match their CRC-32"):
            im.unpack_state(flipped)
    with pytest.raises(ir.IdentirepError, match="packed by an older identirep"):
        im.unpack_state(np.concatenate([np.frombuffer(b"IDRPSTATE1", np.uint8),
                                        packed[len(im._MAGIC):]]))
    with pytest.raises(ir.IdentirepError, match="not JSON"):
        im.unpack_state(np.concatenate([packed[:head], np.full(size, 0xFF, np.uint8),
                                        packed[head + size:]]))


def test_sync_merges_the_ranks_states_in_rank_order(torch):
    """torchmetrics' own sync path, in one process: the gather returns rank 0's and rank 1's
    packed states (what all_gather returns on rank 0)."""
    f1, g1, b1, f2, g2 = _data()
    ranks = [im.IdentirepMetric(g1, g2, b1, compare_options=OPTS) for _ in range(2)]
    _feed(ranks[1], f1[200:], f2[200:])
    second = torch.from_numpy(im.pack_state(ranks[1].accumulator.state_dict(model=False)))
    m = im.IdentirepMetric(g1, g2, b1, compare_options=OPTS,
                           dist_sync_fn=lambda t, group=None: [t, second],
                           distributed_available_fn=lambda: True)
    _feed(m, f1[:200], f2[:200])
    assert_reports_match(m.compute(), _want(), 1e-10)
    assert m.accumulator.n == 200 and len(m.packed) == 1     # unsynced: this rank's again


def test_a_sync_by_hand_is_kept_until_compute(torch):
    """sync_on_compute=False, then metric.sync() by hand: compute() merges the gathered
    states (every rank's inputs), and unsync() goes back to this rank's own."""
    f1, g1, b1, f2, g2 = _data()
    other = im.IdentirepMetric(g1, g2, b1, compare_options=OPTS)
    _feed(other, f1[200:], f2[200:])
    second = torch.from_numpy(im.pack_state(other.accumulator.state_dict(model=False)))
    m = im.IdentirepMetric(g1, g2, b1, compare_options=OPTS, sync_on_compute=False,
                           distributed_available_fn=lambda: True)
    _feed(m, f1[:200], f2[:200])
    m.sync(dist_sync_fn=lambda t, group=None: [t, second])
    got = m.compute()
    assert got.N == 400
    assert_reports_match(got, _want(), 1e-10)
    assert not m._is_synced and m.accumulator.n == 200 and len(m.packed) == 1   # unsynced


#: the rows of each rank, per run: even, uneven, rank 1 empty, rank 0 empty
SPLITS = [((0, 200), (200, 400)), ((0, 150), (150, 400)), ((0, 400), (400, 400)),
          ((0, 0), (0, 400))]


def _rank(rank, world, init, out, data):
    """One rank: its rows of each split, in batches; compute() on every rank (it gathers)."""
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        f1, g1, b1, f2, g2 = data
        for run, split in enumerate(SPLITS):
            m = im.IdentirepMetric(torch.from_numpy(g1), torch.from_numpy(g2),
                                   torch.from_numpy(b1), compare_options=OPTS)
            rows = slice(*split[rank])
            _feed(m, f1[rows], f2[rows], batch=48)
            with warnings.catch_warnings():    # an empty rank: compute before update
                warnings.simplefilter("ignore", UserWarning)
                report = m.compute()
            assert m.accumulator.n == rows.stop - rows.start    # its own state again after
            with open(f"{out}.{run}.{rank}", "w") as fh:
                json.dump(report.to_dict(), fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(torch, tmp_path):
    """Two processes (spawned: each imports torch and torchmetrics, 5-15 s), gloo on the
    CPU, the inputs split evenly, unevenly and all on one rank (the other empty); every
    rank's compute() is the one-process result."""
    import torch.multiprocessing as mp
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'init'}", str(tmp_path / "report"),
                          _data()), nprocs=2)
    want = _want()
    for run in range(len(SPLITS)):
        for rank in (0, 1):
            got = json.loads((tmp_path / f"report.{run}.{rank}").read_text())
            assert got["N"] == want.N
            assert_reports_match(types.SimpleNamespace(to_dict=lambda: got), want, 1e-10)


def test_without_torchmetrics_the_class_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    monkeypatch.delitem(im.__dict__, "IdentirepMetric", raising=False)
    with pytest.raises(ir.IdentirepError, match=r"identirep\[torchmetrics\]"):
        im.IdentirepMetric
    with pytest.raises(AttributeError):
        im.NoSuchThing
