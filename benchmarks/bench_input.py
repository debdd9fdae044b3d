"""Benchmark of the input side of d_LLV: identirep's search against the paper port's.

For each shape (N inputs, V labels, M dimensions, both models of the same shape, float64)
prints, from identirep.bench.bench_input:
  port       baselines.paper_input_side: the port's draw of --num-samples disjoint candidate
             input sets and its loop over them on the materialised V x N log-likelihoods
             (materialising them is not timed; it takes 16 N V bytes);
  identirep  PairEngine.input_side(num_samples, sets_per_pivot) on an engine whose pass is
             done (not timed): num_samples * sets_per_pivot candidate sets;
  same sets  PairEngine.input_side(num_samples, paper_compat=True): the port's very sets, with
             a check that identirep chooses the same one.
Times are medians over --repeats interleaved rounds (each round runs every variant once);
"/ port" is the median over rounds of time / port time of the same round.
The acceptance target: identirep with 100x the sets in at most the port's time (<= 1.0x).

    python benchmarks/bench_input.py                        # N=16384 V=32000 M=64 (8.4 GB)
    python benchmarks/bench_input.py --shape 4096,8000,16 --repeats 5
"""
from __future__ import annotations

import argparse

from identirep.bench import INPUT, bench_input, machine


def parse_shape(text: str):
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("shape must be N,V,M")
    return tuple(int(p) for p in parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", nargs="+", type=parse_shape, default=[INPUT],
                   help="N,V,M with N >= num_samples * (M + 1) (default %(default)s)")
    p.add_argument("--num-samples", type=int, default=200,
                   help="the port's disjoint candidate sets = identirep's input pivots")
    p.add_argument("--sets-per-pivot", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    print(f"# {machine()}")
    for n, v, m in a.shape:
        rows = bench_input(n, v, m, repeats=a.repeats, num_samples=a.num_samples,
                           sets_per_pivot=a.sets_per_pivot, seed=a.seed)
        print(f"\n{rows[0]['shape']}: port {rows[0]['floor_seconds']:.3f}s")
        for r in rows:
            print(f"{r['variant']:<48} {r['seconds']:>8.3f}s   {r['ratio']:>7.4f}x / port")
            print(f"    {r['notes']}")


if __name__ == "__main__":
    main()
