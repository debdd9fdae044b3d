"""Command line: ``identirep demo | compare | matrix | extract | bench | info | repro``.

Exit codes: 0 ok, 2 bad input (the message says what and how to fix), 1 internal error.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import traceback
from pathlib import Path

from ._rules import MAX_INPUT_SET_INDICES, MAX_INPUT_SETS
from .errors import IdentirepError


def package_version() -> str:
    """The installed distribution's version, else (a source tree on sys.path) the version in
    pyproject.toml, else "unknown". ``identirep.__version__`` holds it."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("identirep")
    except PackageNotFoundError:
        import re
        try:
            text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
        except OSError:
            return "unknown"
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return found.group(1) if found else "unknown"


def _checked(convert, ok, expected: str, bad, hint: str):
    """An argparse ``type``: ``convert(text)`` that must satisfy ``ok``; a bad value exits 2
    with what was ``expected`` (text that does not convert) or ``bad(text, value)``, and
    ``hint``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {expected}, got {text!r}; {hint}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{bad(text, value)}; {hint}")
        return value
    return parse


def int_at_least(low: int, hint: str):
    """An argparse ``type``: an integer >= ``low``; a bad value exits 2 with ``hint``."""
    return _checked(int, lambda v: v >= low, f"an integer >= {low}",
                    lambda text, v: f"must be >= {low}, got {v}", hint)


def non_negative_float(hint: str):
    """An argparse ``type``: a finite float >= 0; a bad value exits 2 with ``hint``."""
    return _checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0",
                    lambda text, v: f"must be a finite number >= 0, got {text!r}", hint)


def top_k(text: str) -> int:
    """compare's --top-k (an argparse ``type``): an integer from 1 to tokens.MAX_TOP_K."""
    from .tokens import MAX_TOP_K
    return _checked(int, lambda v: 1 <= v <= MAX_TOP_K, f"an integer from 1 to {MAX_TOP_K}",
                    lambda text, v: f"must be from 1 to {MAX_TOP_K}, got {v}",
                    "the most likely tokens per position kept for the top-k agreement, e.g. "
                    "the default 10")(text)


#: the --seed of every command
SEED = int_at_least(0, "the seed of NumPy's random generator is a non-negative integer, "
                       "e.g. --seed 0")


def _add_measure_options(p):
    p.add_argument("--lam", type=non_negative_float("the weight of terms t3, t4, e.g. --lam 1e-5"),
                   default=1e-5, help="weight of terms t3, t4 (default 1e-5)")
    p.add_argument("--combine", choices=("max", "sum"), default="max")
    p.add_argument("--term", choices=("max", "mean"), default="max")
    p.add_argument("--num-samples", type=int_at_least(1, "the number of candidate input sets, "
                                                         "e.g. the default 200"),
                   default=200, help="candidate input pivots (default 200)")
    p.add_argument("--sets-per-pivot", type=int_at_least(1, "input sets per input pivot, e.g. "
                                                            "the default 1"), default=1)
    p.add_argument("--num-pivots", type=int_at_least(1, "the number of sampled label pivots; "
                                                        "leave it out for the exact search"),
                   default=None, help="sample this many label pivots instead of the exact search")
    p.add_argument("--pivot-budget", type=int_at_least(1, "the most pivots the exact search "
                                                          "evaluates; leave it out for the "
                                                          "default"),
                   default=None,
                   help="most pivots the exact search evaluates beyond 4096 labels "
                        "(default 2048 on a CPU, all on a GPU); the result says when it stopped")
    p.add_argument("--paper-compat", action="store_true",
                   help="draw input sets exactly like the paper's code (incl. its threshold quirk)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--drop-masked-labels", action="store_true",
                   help="drop the labels whose bias is -inf (masked or padded) in any model "
                        "from every model; the output lists them")
    p.add_argument("--allow-tokenizer-mismatch", action="store_true",
                   help="compare models whose tokenizers' vocabularies differ, by token id (a "
                        "note says what differs)")
    p.add_argument("--backend", default="auto", choices=("auto", "cpu", "cuda", "cupy", "reference"),
                   help="auto: where the arrays live (the CPU for model files); cuda, cupy: the "
                        "models are copied to the GPU and every measure runs there")


def check_out_file(path, option: str) -> None:
    """An output file (--out, --plot): its directory must exist and be writable. Checked
    before any model is read, so that a typo does not cost the whole computation."""
    p = Path(path)
    if p.is_dir():
        raise IdentirepError(f"{option} {path} is a directory; give a file name in it, "
                             f"e.g. {p / 'report.json'}")
    parent = p.parent
    if not parent.is_dir():
        raise IdentirepError(f"{option} {path}: the directory {parent} does not exist; create "
                             "it first (mkdir -p) or give a path in an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise IdentirepError(f"{option} {path}: cannot write there (permission denied); give "
                             "a path in a directory you can write to")


def check_out_dir(path, option: str) -> None:
    """An output directory (matrix --out): an existing writable directory, or one that can be
    created (its nearest existing parent is a writable directory)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise IdentirepError(f"{option} {path} is a file; {option} takes a directory (it is "
                             "created when missing)")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise IdentirepError(f"{option} {path}: {existing} is a file, so the directory cannot "
                             "be created; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IdentirepError(f"{option} {path}: cannot write in {existing} (permission "
                             "denied); give a directory you can write to")


def check_plotting(option: str, alternative: str = "") -> None:
    """Plots need matplotlib: say so before the computation, not after it."""
    if importlib.util.find_spec("matplotlib") is None:
        raise IdentirepError(f'{option} needs matplotlib: pip install "identirep[plot]"'
                             + (f", or {alternative}" if alternative else ""))




def _comb_capped(n: int, k: int, cap: int) -> int:
    """C(n, k), or a number above ``cap`` when C(n, k) is (without computing a huge one)."""
    if k < 0 or k > n:
        return 0
    k = min(k, n - k)
    c = 1
    for i in range(k):
        c = c * (n - i) // (i + 1)
        if c > cap:
            return cap + 1
    return c


def input_set_limit(N: int, M: int, sets_per_pivot: int = 1, paper_compat: bool = False):
    """(the largest num_samples, why) for candidate input sets of M + 1 of N inputs: the sets
    must be affordable (MAX_INPUT_SETS sets, MAX_INPUT_SET_INDICES indices) and meaningful
    (no more than the distinct sets there are; distinct pivots with sets_per_pivot > 1;
    disjoint sets with paper_compat)."""
    s, size = sets_per_pivot, M + 1
    limits = [(MAX_INPUT_SETS // s, (
        f"identirep draws at most {MAX_INPUT_SETS} candidate sets (num_samples x "
        "sets_per_pivot): each costs O(M) time, and a million take about 10 s on a CPU core"))]
    limits.append((MAX_INPUT_SET_INDICES // (size * s), (
        f"the sets would hold more than {MAX_INPUT_SET_INDICES} input indices of M + 1 = "
        f"{size} each (512 MiB)")))
    cap = MAX_INPUT_SETS * s
    distinct = N * _comb_capped(N - 1, M, cap)
    if distinct <= cap:
        limits.append((distinct // s, (
            f"N={N} inputs make only {distinct} distinct candidate sets (a pivot and M = {M} "
            "other inputs); more would repeat them")))
    if s > 1:
        limits.append((N, (
            f"--sets-per-pivot > 1 gives each set a distinct input pivot, and there are N={N} "
            "inputs")))
    if paper_compat:
        limits.append((N // size, (
            f"--paper-compat draws disjoint sets, and N={N} inputs hold {N // size} disjoint "
            f"sets of M + 1 = {size}")))
    return min(limits, key=lambda x: x[0])


def check_input_sets(args, pairs) -> None:
    """--num-samples (x --sets-per-pivot) against input_set_limit for each (N, M) of
    ``pairs`` (M: the larger dimension of a pair); without pairs, the cap alone."""
    s = args.sets_per_pivot
    for N, M in pairs or [(None, None)]:
        if N is None:
            limit, why = MAX_INPUT_SETS // s, input_set_limit(10**9, 1, s)[1]
        else:
            limit, why = input_set_limit(N, M, s, args.paper_compat)
        if args.num_samples <= limit:
            continue
        asked = f"--num-samples {args.num_samples}" + (
            f" x --sets-per-pivot {s}" if s > 1 else "")
        if s > MAX_INPUT_SETS:      # not even one set per pivot fits the cap
            fix = f"give --sets-per-pivot {MAX_INPUT_SETS} or less"
        elif limit < 1:
            fix = f"N={N} inputs are too few for sets of M + 1 = {M + 1}"
        else:
            fix = f"give --num-samples {limit} or less" + (
                " (or a smaller --sets-per-pivot)" if s > 1 else "")
        raise IdentirepError(f"{asked} candidate input sets is too many: {why}; {fix}")


def _pairs_of(models):
    """(N, set size - 1) of the pairs of ``matrix``: each pair runs both ways, so the larger M
    (also with --paper-compat, whose sets hold M of the first model + 1)."""
    return sorted({(a.N, max(a.M, b.M)) for i, a in enumerate(models) for b in models[i + 1:]})


def _dropped_note(models, which: str):
    """What --drop-masked-labels dropped, for the report and stderr (None: nothing)."""
    from .model import first_ids
    ids = models[0].dropped_labels
    if not len(ids):
        return None
    V = models[0].V
    return (f"dropped {len(ids)} label(s) whose bias is -inf in {which} (masked or padded): "
            f"ids {first_ids(ids)} of V={V + len(ids)}; V={V} labels remain, and the label "
            "indices of the results (pivot, leave-out) count the remaining labels only")


def _measure_kwargs(args):
    return dict(lam=args.lam, combine=args.combine, term=args.term, num_samples=args.num_samples,
                seed=args.seed, num_pivots=args.num_pivots, sets_per_pivot=args.sets_per_pivot,
                paper_compat=args.paper_compat, pivot_budget=args.pivot_budget,
                backend=args.backend)


def _emit(payload, args, render):
    text = json.dumps(payload, indent=2)
    if getattr(args, "out", None):
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        print(text)
    else:
        render()


def cmd_demo(args) -> int:
    from .demo import run_demo
    if args.out:
        check_out_file(args.out, "--out")
    if args.json or args.out:
        payload = run_demo(args.seed, as_json=True)
        _emit(payload, args, lambda: run_demo(args.seed))
    else:
        run_demo(args.seed)
    return 0


def cmd_compare(args) -> int:
    from .io import load_models
    from .measures import _engine, _report_from_engine, compare, report_choices, with_tokens
    from .report import render_report
    check_input_sets(args, [])
    if args.out:
        check_out_file(args.out, "--out")
    if args.plot:
        check_out_file(args.plot, "--plot")
        check_plotting("--plot")
    per_token = _per_token_option(args)
    a, b = load_models([args.model_a, args.model_b], args.drop_masked_labels)
    if a.N == b.N:   # else compare says the inputs differ; --paper-compat sets hold M1 + 1
        check_input_sets(args, [(a.N, a.M if args.paper_compat else max(a.M, b.M))])
    dropped = _dropped_note([a, b], "either model")
    if dropped:
        print(f"identirep: {dropped}", file=sys.stderr)
    kw = _measure_kwargs(args)
    k_top = 10 if args.top_k is None else args.top_k
    tok = dict(per_token=per_token, top_k=k_top, jsd=args.jsd)
    if args.plot:
        import time

        from .model import check_pair, tokenizer_note
        from .plots import label_terms
        from .tokens import engine_token_report
        from ._backends import resolve
        t0 = time.perf_counter()
        backend = kw.pop("backend")
        check_pair(a, b)
        on, note, spread = report_choices(a, b, resolve(backend, a, b), **tok)
        e = _engine(a, b, backend, topk=k_top if on else 0, logit_failure=spread)
        r = _report_from_engine(e, t0=t0, backend=e.stats.backend, **kw)
        r = with_tokens(r, t0, lambda: engine_token_report(e, args.jsd) if on else None,
                        tokenizer_note(a, b), note)
        if r.d_llv is not None:
            labels = a.labels if a.labels is not None else b.labels
            label_terms(e, r.d_llv, args.plot, tokens=labels)
        else:
            r.notes.append(f"--plot: no plot, d_LLV could not be computed "
                           f"({r.failures['d_llv'].reason})")
    else:
        r = compare(a, b, **kw, **tok)
    if dropped:
        r.notes.append(dropped)
    if r.tokens is None and args.top_k is not None:
        from .tokens import carries_text
        from .model import logit_spread_failure
        spread = logit_spread_failure(a, b)     # checked by compare: None or its failure
        turn_on = "" if spread else "; --per-token FILE or --jsd turn it on for any models"
        if not (carries_text(a) and carries_text(b)):
            why = ("the models do not both carry their text (tokens or targets: identirep "
                   f"extract stores them){turn_on}")
        elif r.backend in ("cuda", "cupy"):
            why = f"it runs on the CPU backend, not {r.backend}{turn_on}"
        elif spread is not None:
            why = f"it reads the logits, which vary too little ({spread.reason})"
        else:
            why = "--no-per-token turned it off"
        r.notes.append(f"--top-k {args.top_k} had no effect: the per-token report is off, as "
                       f"{why}")
    if args.per_token:
        from .tokens import save_per_token
        save_per_token(args.per_token, r.tokens, a.labels if a.labels is not None else b.labels)
        print(f"identirep: wrote the per-position arrays of {r.tokens.positions} positions to "
              f"{args.per_token}", file=sys.stderr)
    _emit(r.to_dict(), args, lambda: render_report(r))
    return 0


def _per_token_option(args):
    """compare's per_token from --per-token FILE (on), --no-per-token (off) or neither
    (None: on for models that carry their text), with the file's path checked first."""
    if args.per_token and args.no_per_token:
        raise IdentirepError("--per-token FILE writes the per-token arrays and --no-per-token "
                             "turns the per-token report off; give one of them")
    if args.jsd and args.no_per_token:
        raise IdentirepError("--jsd adds the per-token Jensen-Shannon divergence and "
                             "--no-per-token turns the per-token report off; give one of them")
    if args.top_k is not None and args.no_per_token:
        raise IdentirepError("--top-k sets the per-token report's top-k agreement and "
                             "--no-per-token turns the per-token report off; give one of them")
    if args.per_token:
        from .tokens import check_per_token_path
        check_per_token_path(args.per_token)
        check_out_file(args.per_token, "--per-token")
        return True
    return False if args.no_per_token else None


def cmd_matrix(args) -> int:
    import numpy as np

    from .io import load_models
    from ._matrix import matrix
    check_input_sets(args, [])
    if args.out:
        check_out_dir(args.out, "--out")
        if not args.no_plots:
            check_plotting("--out (its heatmaps)", "pass --no-plots")
    seen = []

    def prepare(models):   # before the pairs run: the sets' limits, what was dropped
        if len({m.N for m in models}) == 1:   # else matrix says the inputs differ
            check_input_sets(args, _pairs_of(models))
        dropped = _dropped_note(models, "any model")
        if dropped:
            print(f"identirep: {dropped}", file=sys.stderr)
        seen.extend(models)
    if args.scheduler is None and args.models_per_task is not None:
        raise IdentirepError("--models-per-task groups the pairs into Dask tasks",
                             fix="add --scheduler local:N or ADDRESS, or leave it out")
    if args.scheduler is None:
        models = load_models(args.models, args.drop_masked_labels)
        prepare(models)
        res = matrix(models, **_measure_kwargs(args))
    else:   # the workers read the files; here only their shapes and the results arrive
        from . import dask as on_dask
        on_dask.distributed()   # the extra is installed, before any work
        on_dask.check_backend(args.backend)
        with on_dask.client_for(args.scheduler) as client:
            res = on_dask.matrix(args.models, client, drop_masked_labels=args.drop_masked_labels,
                                 check=prepare, models_per_task=args.models_per_task or 1,
                                 **_measure_kwargs(args))
        models = seen
    dropped = _dropped_note(models, "any model")
    payload = res.to_dict()
    if dropped:
        payload["dropped_labels"] = models[0].dropped_labels.tolist()
        payload["notes"] = [dropped] + list(payload.get("notes") or [])
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for m in res.values:
            with open(os.path.join(args.out, f"{m}.csv"), "w") as fh:
                fh.write(res.to_csv(m))
        with open(os.path.join(args.out, "matrix.json"), "w") as fh:
            json.dump(payload, fh, indent=2)
        if not args.no_plots:
            from .plots import heatmaps, kl_vs_llv
            heatmaps(res, args.out)
            kl_vs_llv(res, os.path.join(args.out, "kl_vs_d_llv.png"))
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .report import fmt, literal
    console = Console(width=None if sys.stdout.isatty() else 120)
    names = [literal(n) for n in res.names]   # user text: "[b]" is a name, not markup
    for m in ("d_llv", "kl", "mcca_f"):
        t = Table(title=f"{m} (row vs column)")
        t.add_column("")
        for n in names:
            t.add_column(n, justify="right")
        for n, row in zip(names, res.values[m]):
            t.add_row(n, *(fmt(float(v), 3) if np.isfinite(v) else "-" for v in row))
        console.print(t)
    # "-": not computed; each distinct reason once, with the pairs it stopped
    reasons = {}
    for f in res.failures:
        reasons.setdefault((f["reason"], f.get("fix")), []).append(
            f"{f['measure']} {res.names[f['i']]} vs {res.names[f['j']]}")
    for (reason, fix), where in reasons.items():
        shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
        console.print(Text.assemble("not computed (", literal(shown), "): ", literal(reason),
                                    *((("; fix: ", literal(fix)) if fix else ()))))
    for note in res.notes:   # the dropped labels' note went to stderr before the pairs ran
        console.print(Text.assemble("note: ", literal(note)))
    if args.out:
        console.print(Text.assemble(
            f"wrote CSV, JSON{'' if args.no_plots else ' and PNG heatmaps'} to ",
            literal(args.out)))
    return 0


def _scheduler(text: str):
    """An argparse ``type``: --scheduler local:N or ADDRESS (``dask.parse_scheduler``)."""
    from .dask import parse_scheduler
    try:
        return parse_scheduler(text)
    except IdentirepError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_bench(args) -> int:
    from .bench import markdown, run_suite
    if args.out:
        check_out_file(args.out, "--out")
    say = (lambda s: print(f"running: {s}", file=sys.stderr)) if not args.json else None
    res = run_suite(quick=args.quick, progress=say, repeats=args.repeats)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2)
    print(json.dumps(res, indent=2) if args.json else markdown(res))
    return 0


def cmd_info(args) -> int:
    from ._backends import availability
    info = availability()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    b = info["build"]
    cpu = f"CPU core ({b.get('simd', '?')}, OpenMP {'on' if b.get('openmp') else 'off'})"
    if b.get("cuda_compiled"):
        cuda = (f"CUDA {b.get('cuda_version')} for {', '.join(b.get('cuda_architectures', []))}"
                f" (pass driver: {'yes' if b.get('cuda_pass_driver') else 'no'}, wgmma kernel: "
                f"{'yes' if b.get('fused_gemm_wgmma') else 'no'})")
    else:
        cuda = "no CUDA"
    lines = [f"identirep {info['version']}", f"build: {cpu}; {cuda}", "backends:"]
    for name, problem in info["backends"].items():
        state = "available" if problem is None else f"not available: {problem}"
        lines.append(f"  {name:<10} {state}")
    lines.append("GPU arrays: " + (f"backend {info['gpu_arrays']!r}" if info["gpu_arrays"]
                                   else f"not processed here: {info['gpu_arrays_problem']}"))
    for g in info["gpus"]:
        if "problem" in g:
            lines.append(f"GPU {g['index']}: {g['problem']}")
            continue
        wg = ""
        if "wgmma" in g:
            wg = "; wgmma kernel: " + ("runs" if g["wgmma"] is None else g["wgmma"])
        lines.append(f"GPU {g['index']}: {g['name']} (compute capability "
                     f"{g['compute_capability']}, {g['memory_gib']} GiB{wg})")
    if not info["gpus"]:
        lines.append("GPUs: none visible to CuPy")
    if "cublas" in info:
        lines.append("cuBLAS of the pass driver: " + (info["cublas"] or info["cublas_problem"]))
    lines.append(f"IDENTIREP_BACKEND: {info['IDENTIREP_BACKEND'] or 'unset'}")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="identirep",
        description="Closeness in distribution and representational similarity of softmax-family models.")
    p.add_argument("--version", action="version", version=f"identirep {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the paper's point on built-in models, in seconds")
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.add_argument("--out", help="also write the JSON report to this file")
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("compare", help="every measure for two saved models (.safetensors, .npz, .npy dir)")
    c.add_argument("model_a")
    c.add_argument("model_b")
    _add_measure_options(c)
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--out", help="also write the JSON report to this file")
    c.add_argument("--plot", help="also save the per-label term plot (PNG) here")
    c.add_argument("--per-token", metavar="FILE",
                   help="also write the per-position arrays here: FILE.npz (NumPy arrays) or "
                        "FILE.csv (one row per position); turns the per-token report on")
    c.add_argument("--jsd", action="store_true",
                   help="per-token Jensen-Shannon divergence too (a second pass over the "
                        "logits; the report says what it cost)")
    c.add_argument("--top-k", type=top_k, default=None, metavar="K",
                   help="each model's K most likely tokens per position for the top-k "
                        "agreement (default 10); with models that carry no text, a note says "
                        "it had no effect")
    c.add_argument("--no-per-token", action="store_true",
                   help="no per-token report (on by default when both models carry their "
                        "text: tokens or targets)")
    c.set_defaults(func=cmd_compare)
    m = sub.add_parser("matrix", help="K x K matrices of every measure (CSV, JSON, heatmaps)")
    m.add_argument("models", nargs="+")
    _add_measure_options(m)
    m.add_argument("--out", help="directory for <measure>.csv, matrix.json and heatmap PNGs")
    m.add_argument("--json", action="store_true", help="print JSON instead of tables")
    m.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    m.add_argument("--scheduler", type=_scheduler, default=None, metavar="local:N|ADDRESS",
                   help="run the pairs on Dask (identirep[dask]): local:N starts N worker "
                        "processes here, ADDRESS ([tcp://]host:port) is a running scheduler "
                        "whose workers read the model files at these paths")
    m.add_argument("--models-per-task", type=int_at_least(1, "e.g. 4"), default=None,
                   metavar="B", help="with --scheduler: run the pairs in tasks of two blocks "
                   "of B models, each read once per task (fewer reads, up to 2B models per "
                   "worker; default 1: a task per pair)")
    m.set_defaults(func=cmd_matrix)
    bn = sub.add_parser("bench", help="run the benchmark suite here; ratios to the GEMM floor")
    bn.add_argument("--quick", action="store_true", help="smaller paper-port case, fewer rows")
    bn.add_argument("--repeats", type=int_at_least(1, "interleaved rounds, e.g. the default 3"),
                    default=3, help="interleaved rounds (default 3)")
    bn.add_argument("--json", action="store_true")
    bn.add_argument("--out", help="also write the JSON results here")
    bn.set_defaults(func=cmd_bench)
    i = sub.add_parser("info", help="what this installation can run here: build, backends, GPUs")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.set_defaults(func=cmd_info)
    try:
        from .extract import add_extract_parser
        add_extract_parser(sub)
    except ImportError:
        pass
    from .repro.cli import add_repro_parser
    add_repro_parser(sub)
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:   # --help, --version (0); a bad option (2, with its message)
        return e.code if isinstance(e.code, int) else 2
    try:
        if getattr(args, "allow_tokenizer_mismatch", False):   # compare, matrix
            from .model import allow_tokenizer_mismatch
            with allow_tokenizer_mismatch():
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except IdentirepError as e:
        print(f"identirep: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"identirep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - the exit code contract needs a catch-all
        traceback.print_exc()
        print("identirep: internal error (exit 1); please report it with the traceback above",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
