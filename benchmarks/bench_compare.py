"""Full ``compare`` (all measures, sampled pivots) against the pass floor, and identirep's
d_LLV against a faithful port of the paper's algorithm (same choices, same values).

    python benchmarks/bench_compare.py                     # GPT-2 shape + paper port
    python benchmarks/bench_compare.py --shape 1024,32000,2048 --no-port
"""
import argparse

from identirep.bench import GPT2, bench_compare, bench_paper, machine, markdown


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default=",".join(map(str, GPT2)), help="N,V,M")
    p.add_argument("--pivots", type=int, default=256, help="sampled label pivots")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-port", action="store_true", help="skip the paper-port comparison")
    p.add_argument("--port-shape", default="2000,1000,64", help="N,V,M of the port comparison")
    a = p.parse_args(argv)
    n, v, m = (int(x) for x in a.shape.split(","))
    rows = bench_compare(n, v, m, repeats=a.repeats, num_pivots=a.pivots)
    if not a.no_port:
        pn, pv, pm = (int(x) for x in a.port_shape.split(","))
        rows += bench_paper(v=pv, n=pn, m=pm)
    print(markdown({"machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
