"""Exact label-side pivot search against the bare V x V x M GEMMs of both models.

    python benchmarks/bench_pivots.py --vocab 1024 2048 4096 --dim 768
"""
import argparse

from identirep.bench import bench_pivots, machine, markdown


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    rows = [r for v in a.vocab for r in bench_pivots(v, a.dim, repeats=a.repeats)]
    print(markdown({"machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
