"""``identirep repro width | table1 | bound``: the paper's experiments from the command line.

``width`` trains and measures (``width``); ``table1`` and ``bound`` are the constructed
experiments, whose modules give ``add_arguments(parser)`` and ``main(args)`` and are
imported here only when the command line is built. Exit codes as for every command: 0 ok,
2 bad input or a missing extra (the message says what to install), 1 internal error.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from .. import _rules as rules
from ..errors import IdentirepError

#: what installs the experiments' dependencies
INSTALL = "pip install 'identirep[repro]'"
HELP = {
    "width": "the synthetic width experiment: train MLPs of several widths from many seeds, "
             "then d_LLV, max d_SVD, KL and mCCA per pair (quick mode by default)",
    "table1": "the paper's Table 1: constructed models with KL -> 0 and constant d_LLV",
    "bound": "max d_SVD against 2 M d_LLV on constructed and trained pairs",
}


def width_list(text: str):
    """--widths: comma-separated integers >= 1, e.g. 16,64,256."""
    try:
        widths = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 16,64,256, got {text!r}") from None
    if not widths or min(widths) < 1 or len(set(widths)) != len(widths):
        raise argparse.ArgumentTypeError(
            f"widths must be distinct integers >= 1, e.g. 16,64,256, got {text!r}")
    return widths


def _add_width_arguments(p) -> None:
    from .width import PAPER_SEEDS, PAPER_STEPS, PAPER_WIDTHS, QUICK_SEEDS, QUICK_STEPS, \
        QUICK_WIDTHS
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help=f"(default) widths {','.join(map(str, QUICK_WIDTHS))}, "
                           f"{QUICK_SEEDS} seeds, {QUICK_STEPS} steps: minutes on a CPU")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help=f"the paper's settings: widths {','.join(map(str, PAPER_WIDTHS))}, "
                           f"{PAPER_SEEDS} seeds, {PAPER_STEPS} steps (about 16 CPU-minutes)")
    p.set_defaults(mode="quick")
    p.add_argument("--classes", type=int, default=4,
                   help="number of angle classes C (default 4; the paper also uses 6, 10, 18)")
    p.add_argument("--out", default="repro-width", metavar="DIR",
                   help="directory for width_results.json, pairs.csv, widths.csv, the figures "
                        "and the checkpoints (default repro-width; created when missing; "
                        "finished checkpoints in it are reused)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="torch device for training (default cpu)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the data and every model's initial weights and batch order, "
                        "and the measures' searches (default 0)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training processes of one thread each (default: the CPU cores, "
                        f"{_cores()} here); 1 trains here, one width after another")
    p.add_argument("--widths", type=width_list, default=None, metavar="W,W,...",
                   help="replace the mode's widths")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="replace the mode's number of seeds per width (seeds 0..N-1)")
    p.add_argument("--steps", type=int, default=None, help="replace the mode's training steps")
    p.add_argument("--fixed-length", choices=("none", "f", "g", "both"), default="none",
                   help="rescale f and/or g outputs to norm 20 (default none)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_width)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _part(name: str):
    """The module of ``table1`` or ``bound``, or None where it is not there."""
    try:
        if name == "table1":
            from . import table1 as module
        else:
            from . import bound as module
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.{name}":
            raise
        return None
    return module


def _run_part(name: str):
    def run(args) -> int:
        module = _part(name)
        if module is None:
            raise IdentirepError(f"identirep repro {name} is not part of this installation")
        return module.main(args)
    return run


def add_repro_parser(subparsers) -> None:
    """Register ``repro width | table1 | bound`` on the command line's subparsers."""
    p = subparsers.add_parser("repro", help="the paper's experiments, end to end "
                                            f"(needs torch and matplotlib: {INSTALL})")
    sub = p.add_subparsers(dest="experiment", required=True)
    _add_width_arguments(sub.add_parser("width", help=HELP["width"], description=HELP["width"]))
    for name in ("table1", "bound"):
        sp = sub.add_parser(name, help=HELP[name], description=HELP[name])
        module = _part(name)
        if module is not None:
            module.add_arguments(sp)
        sp.set_defaults(func=_run_part(name))


def require_extras(device: str) -> None:
    """torch (and CUDA with ``device`` "cuda") and matplotlib, or IdentirepError (exit 2)."""
    from .train import require_torch
    torch = require_torch()
    if importlib.util.find_spec("matplotlib") is None:
        raise IdentirepError("identirep repro draws its figures with matplotlib, which is not "
                             "installed", fix=INSTALL)
    if device == "cuda" and not torch.cuda.is_available():
        raise IdentirepError(f"--device cuda: torch {torch.__version__} sees no CUDA device",
                             fix="use --device cpu, or a torch built with CUDA on a machine "
                                 "with a GPU")


def check_width_options(args) -> None:
    """The options of ``width`` that argparse does not check, before any work."""
    if isinstance(args.classes, int) and args.classes < 4:
        raise IdentirepError(f"--classes must be at least 4, got {args.classes}: d_SVD needs "
                             "M + 2 = 4 classes for 2-d representations",
                             fix="give --classes 4 (the paper's main figure), 6, 10 or 18")
    rules.check_count("--classes", args.classes, 4)
    rules.check_count("--seed", args.seed, 0)
    for name in ("jobs", "seeds", "steps"):
        if getattr(args, name) is not None:      # None: the option was not given
            rules.check_count(f"--{name}", getattr(args, name), 1)
    if args.seeds is not None and args.seeds < 2:
        raise IdentirepError("--seeds must be at least 2: the experiment compares pairs of "
                             "seeds")


def cmd_width(args) -> int:
    from .width import make_plan, run
    check_width_options(args)
    require_extras(args.device)
    from .table1 import check_out
    check_out(args.out)     # a directory that can be written to, and matplotlib
    plan = make_plan(args.mode, args.widths, args.seeds, args.steps, args.classes, args.seed,
                     args.fixed_length)
    jobs = args.jobs or _cores()
    payload = run(plan, args.out, args.device, jobs,
                  say=lambda s: print(f"identirep: {s}", file=sys.stderr))
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        from .render import render_width
        render_width(payload, args.out)
    return 0
