"""Benchmark of identirep's per-token report against the materialising approach (stored logits).

The materialising approach is what llama.cpp's `llama-perplexity --kl-divergence-base` /
`--kl-divergence` do, here in NumPy and torch (float32, chunks of 512 positions; the GEMMs by
NumPy's BLAS unless --gemm torch): the reference model's log-probabilities are computed and
written to a file (N x V, --logits-dtype), then the compared model's logits are computed chunk
by chunk and KL both ways, log p of the targets, top-10 ids and the top tokens' probabilities
are read against the stored ones. identirep runs
its streaming pass with top-10 ids and builds its TokenReport (with --jsd also the second
pass). For each shape it prints a table row per variant: median seconds over --repeats
interleaved rounds, the ratio to the GEMM floor (both models' logits, 512 rows at a time),
the peak resident memory of each variant run alone in a fresh process, and the file sizes.

    python benchmarks/bench_per_token.py                                  # N=4096, V=50304, M=768
    python benchmarks/bench_per_token.py --shape 4096,128256,2048 --logits-dtype float16
    python benchmarks/bench_per_token.py --shape 4096,50304,768 4096,50304,2048 --repeats 2
"""
from __future__ import annotations

import argparse

from bench_stream import parse_shape     # N,V,M (this folder is on the path when run)

from identirep.bench import bench_per_token, machine, markdown


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", nargs="+", type=parse_shape, default=[(4096, 50304, 768)],
                   help="N,V,M (default 4096,50304,768)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--logits-dtype", default="float32", choices=["float32", "float16"],
                   help="dtype of the stored log-probabilities (default float32)")
    p.add_argument("--no-jsd", action="store_true", help="leave out the JSD variants")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the memory measurement (a fresh process per variant)")
    p.add_argument("--tmpdir", default=None, help="where the stored log-probabilities go")
    p.add_argument("--gemm", default="numpy", choices=["numpy", "torch"],
                   help="BLAS of the stored-logits approach's GEMMs: numpy (default; the "
                        "library of identirep's pass and the floor) or torch (MKL in its wheels)")
    a = p.parse_args(argv)
    for n, v, m in a.shape:     # each shape's table as soon as it is measured
        rows = bench_per_token(n, v, m, repeats=a.repeats, logits_dtype=a.logits_dtype,
                               jsd=not a.no_jsd, memory=not a.no_memory, tmpdir=a.tmpdir,
                               gemm=a.gemm)
        print(markdown({"machine": machine(), "repeats": a.repeats, "rows": rows}) + "\n",
              flush=True)


if __name__ == "__main__":
    main()
