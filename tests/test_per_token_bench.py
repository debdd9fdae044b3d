"""The benchmark of the per-token report against stored logits (``identirep.bench
.bench_per_token``, ``benchmarks/bench_per_token.py``): its baseline, the materialising
approach of llama.cpp's ``--kl-divergence`` (``baselines.stored_logits_write`` /
``stored_logits_compare``), computes the same statistics as the float64 oracle; the rows,
notes and the memory measurement work on small shapes. Real numbers are in BENCHMARKS.md.
"""
import numpy as np
import pytest

from identirep import bench
from identirep.baselines import stored_logits_compare, stored_logits_write
from identirep.reference import per_token_reference


@pytest.mark.parametrize("dtype, rtol, gemm", [("float32", 1e-4, "numpy"),
                                               ("float16", 2e-2, "numpy"),
                                               ("float32", 1e-4, "torch")])
def test_stored_logits_baseline_equals_the_oracle(torch, tmp_path, dtype, rtol, gemm):
    """Written and read back in chunks that do not divide N, the baseline's per-position
    statistics equal the float64 oracle's to the storage precision: float32 log-probabilities
    to 1e-4, float16 ones (3 decimal digits) to 2e-2 of the typical value."""
    a, b = bench._lm_pair(700, 300, 16, context=128)
    path = tmp_path / "reference.logprobs"
    assert stored_logits_write(a.f, a.g, path, rows=96, dtype=dtype, gemm=gemm) == (700, 300)
    assert path.stat().st_size == 700 * 300 * np.dtype(dtype).itemsize
    got = stored_logits_compare(b.f, b.g, path, b.targets, rows=96, dtype=dtype, jsd=True,
                                gemm=gemm)
    want = per_token_reference(a, b, k=10, jsd=True)
    for key in ("kl12", "kl21", "jsd", "logp1", "logp2", "p2_of_top1", "p1_of_top2"):
        w = want[key]
        scale = np.nanmean(np.abs(w))
        assert np.array_equal(np.isnan(got[key]), np.isnan(w)), key
        err = np.nanmax(np.abs(got[key] - w))
        assert err <= rtol * scale, (key, err, scale)
    assert np.isnan(got["logp1"]).sum() == (a.targets < 0).sum() > 0
    if dtype == "float32":      # the top-10 ids as the oracle's (no near-ties at this seed)
        np.testing.assert_array_equal(got["top1"], want["top1"])
    np.testing.assert_array_equal(got["top2"], want["top2"])


def test_bench_rows_and_notes(torch, tmp_path):
    """Every variant timed against the floor, the identirep rows against the stored-logits
    approach in the same rounds, file sizes, and the two ways agreeing on mean KL."""
    rows = bench.bench_per_token(600, 500, 8, repeats=1, memory=False, tmpdir=tmp_path)
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"identirep per-token report", "identirep per-token report + JSD",
                       "stored logits: write reference", "stored logits: compare against them",
                       "stored logits: compare + JSD", "stored logits: both halves",
                       "stored logits: both halves + JSD"}
    for r in rows:
        assert r["seconds"] > 0 and r["floor_seconds"] > 0 and r["ratio"] > 0
        assert r["shape"] == ("N=600 V=500 M=8 f32, logits stored as float32, stored-logits "
                              "GEMMs by numpy")
    note = by["identirep per-token report"]["notes"]
    assert "x the stored-logits approach's both halves in the same rounds" in note
    assert "stored float32 log-probabilities 1 MiB" in note           # 600 x 500 x 4 bytes
    rel = float(note.split("rel. diff ")[1].rstrip(")"))
    assert rel < 1e-5
    assert "both halves + JSD" in by["identirep per-token report + JSD"]["notes"]
    assert list(tmp_path.iterdir()) == []           # the stored file is removed


@pytest.mark.slow       # a fresh Python process with torch: seconds
def test_memory_of_a_variant_in_a_fresh_process(torch, tmp_path):
    """A variant run alone in a subprocess: its peak resident memory over the process's
    before it, at least the stored-logits chunk it must hold (512 x V float32)."""
    a, _ = bench._lm_pair(1024, 4000, 8)
    path = tmp_path / "reference.logprobs"
    stored_logits_write(a.f, a.g, path)
    info = bench._memory_in_subprocess("stored logits: compare against them", 1024, 4000, 8,
                                       path, "float32", False)
    assert "error" not in info, info
    if info["extra_bytes"] is None:
        pytest.skip("this system does not let a process reset its peak memory")
    assert info["extra_bytes"] >= 512 * 4000 * 4 and info["peak_bytes"] > info["rss_before"]


def test_bench_skips_without_torch(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch", None)
    rows = bench.bench_per_token(64, 50, 4, repeats=1)
    assert rows[0]["variant"] == "skipped" and "needs torch" in rows[0]["notes"]
