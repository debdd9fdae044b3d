"""The command line: demo, compare, exit codes."""
import json
import subprocess
import sys

import numpy as np
import pytest

import identirep as ir
from identirep.cli import main

from helpers import random_pair


def test_demo_table_and_json(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for s in ("tiny KL, permuted labels", "linearly equivalent", "noisy copy", "d_LLV"):
        assert s in out
    assert main(["demo", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    tiny, linear, noisy = data["pairs"]
    assert tiny["kl"]["kl12"] < 1e-3 and tiny["d_llv"]["value"] > 1.0 and tiny["mcca_f"]["value"] < 0.05
    assert linear["d_llv"]["value"] < 1e-5 and linear["mcca_f"]["value"] > 0.999
    assert linear["d_llv"]["value"] < noisy["d_llv"]["value"] < tiny["d_llv"]["value"]
    assert noisy["d_svd"]["max_d_svd"] <= 2 * noisy["M1"] * noisy["d_llv"]["value"]


def test_demo_is_reproducible(capsys):
    main(["demo", "--json", "--seed", "3"])
    first = capsys.readouterr().out
    main(["demo", "--json", "--seed", "3"])
    second = json.loads(capsys.readouterr().out)
    first = json.loads(first)
    for p, q in zip(first["pairs"], second["pairs"]):
        p.pop("seconds"), q.pop("seconds")
    assert first == second


def test_compare_files_table_json_and_out(tmp_path, capsys):
    a, b = random_pair(N=120, V=17, M=3, bias=True)
    pa, pb = tmp_path / "a.npz", tmp_path / "b.safetensors"
    ir.save_model(a, pa)
    ir.save_model(b, pb)
    assert main(["compare", str(pa), str(pb), "--num-samples", "10"]) == 0
    out = capsys.readouterr().out
    assert "d_LLV" in out and "mCCA f" in out
    assert main(["compare", str(pa), str(pb), "--num-samples", "10", "--json",
                 "--out", str(tmp_path / "r.json")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads((tmp_path / "r.json").read_text()) | {"seconds": got["seconds"]}
    want = ir.compare(a, b, num_samples=10).to_dict()
    assert got["d_llv"]["value"] == pytest.approx(want["d_llv"]["value"], rel=1e-12)


def test_exit_codes(tmp_path, capsys):
    a, _ = random_pair(N=50, V=9, M=2)
    b, _ = random_pair(N=40, V=9, M=2)
    ir.save_model(a, tmp_path / "a.npz")
    ir.save_model(b, tmp_path / "b.npz")
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 2
    assert "different inputs: N=50 vs N=40" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing.npz"), str(tmp_path / "b.npz")]) == 2
    np.savez(tmp_path / "bad.npz", x=np.ones(3))
    assert main(["compare", str(tmp_path / "bad.npz"), str(tmp_path / "b.npz")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "found ['x']" in err


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "identirep.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout and "compare" in r.stdout


def test_bench_suite_runs_quickly_on_small_shapes(monkeypatch, capsys):
    """The suite's machinery (timing, floors, table) on tiny shapes; real numbers are in
    BENCHMARKS.md, from `identirep bench`."""
    import identirep.bench as bench
    monkeypatch.setattr(bench, "GPT2", (64, 500, 16))
    monkeypatch.setattr(bench, "LLAMA", (32, 300, 24))
    monkeypatch.setattr(bench, "INPUT_QUICK", (1024, 64, 4))
    monkeypatch.setattr(bench, "COMPARE_KL_QUICK", (256, 600, 16))
    monkeypatch.setattr(bench, "ACCUMULATOR_QUICK", (256, 600, 16))
    monkeypatch.setattr(bench, "GPT2_TOKENS", (64, 500, 16))
    monkeypatch.setattr(bench, "PER_TOKEN_QUICK", ((256, 600, 16),))
    paper = bench.bench_paper
    monkeypatch.setattr(bench, "bench_paper", lambda v=300, n=1000, m=32: paper(v=60, n=300, m=8))
    orig = bench.bench_pivots
    monkeypatch.setattr(bench, "bench_pivots", lambda v, m, repeats=3: orig(v // 16, 16, n=64, repeats=repeats))
    assert main(["bench", "--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for s in ("KL + L pass", "compare", "accumulator vs compare", "exact pivot search",
              "paper port", "same choices: True",
              "input_side (20000 sets)", "same choice: True", "compare vs KL", "| per-token |"):
        assert s in out


def test_compare_bfloat16_safetensors(tmp_path, capsys, ml_dtypes):
    a, b = random_pair(N=150, V=40, M=4, seed=5)
    for m, p in ((a, "a.safetensors"), (b, "b.safetensors")):
        ir.save_model(ir.Model(m.f.astype(ml_dtypes.bfloat16), m.g.astype(ml_dtypes.bfloat16)),
                      tmp_path / p)
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--json", "--num-samples", "10"]) == 0
    got = json.loads(capsys.readouterr().out)
    a16, b16 = ir.load_model(tmp_path / "a.safetensors"), ir.load_model(tmp_path / "b.safetensors")
    want = ir.compare(a16, b16, num_samples=10, backend="reference").to_dict()
    assert got["kl"]["kl12"] == pytest.approx(want["kl"]["kl12"], rel=1e-4)
    assert got["d_llv"]["value"] == pytest.approx(want["d_llv"]["value"], rel=1e-4)


def test_progress_bars_only_on_a_terminal(capsys):
    from identirep.progress import progress_bar
    with progress_bar("work", 2.0) as update:      # pytest's stderr is not a tty: silent
        update(1.0)
        update(2.0)
    assert capsys.readouterr().err == ""
    calls = []
    with progress_bar("work", 2.0, enabled=True) as update:
        update(1.0)
        calls.append(1)
    assert calls == [1]


def test_info_says_what_runs_here_and_why_not(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["build"] == ir.build_info() and info["version"] == ir.build_info()["version"]
    backends = info["backends"]
    assert backends["cpu"] is None and backends["reference"] is None
    for name in ("cuda", "cupy"):   # None where it works, else the reason
        assert backends[name] is None or isinstance(backends[name], str) and backends[name]
    gpu_ok = backends["cuda"] is None or backends["cupy"] is None
    assert (info["gpu_arrays"] is not None) == gpu_ok
    assert (info["gpu_arrays_problem"] is None) == gpu_ok
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for name, problem in backends.items():
        assert f"  {name:<10} " + ("available" if problem is None else "not available: ") in text
    assert text.startswith(f"identirep {info['version']}\nbuild: ")


@pytest.mark.parametrize("argv, message", [
    (["compare", "a", "b", "--seed", "-1"], "argument --seed: must be >= 0, got -1; the seed"),
    (["compare", "a", "b", "--seed", "x"], "argument --seed: expected an integer >= 0, got 'x'"),
    (["compare", "a", "b", "--num-samples", "0"], "argument --num-samples: must be >= 1, got 0"),
    (["matrix", "a", "b", "--sets-per-pivot", "0"], "argument --sets-per-pivot: must be >= 1"),
    (["compare", "a", "b", "--num-pivots", "-3"], "--num-pivots: must be >= 1, got -3; the number"),
    (["matrix", "a", "b", "--pivot-budget", "0"], "--pivot-budget: must be >= 1, got 0; the most"),
    (["compare", "a", "b", "--lam", "-1"], "argument --lam: must be a finite number >= 0, got '-1'"),
    (["compare", "a", "b", "--lam", "nan"], "argument --lam: must be a finite number >= 0"),
    (["compare", "a", "b", "--lam", "inf"], "argument --lam: must be a finite number >= 0"),
    (["demo", "--seed", "-2"], "argument --seed: must be >= 0, got -2"),
    (["bench", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
])
def test_bad_option_values_exit_2_before_any_work(argv, message, capsys):
    """Checked while parsing: the model paths 'a' and 'b' do not exist and are never read."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_paths_are_checked_before_any_model_is_read(tmp_path, capsys):
    """The model paths do not exist: each command stops at its output path first."""
    missing, a, b = tmp_path / "no" / "such", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (["compare", a, b, "--out", str(missing / "r.json")], "does not exist; create it first"),
        (["compare", a, b, "--plot", str(missing / "p.png")], "--plot"),
        (["compare", a, b, "--out", str(tmp_path)], "is a directory; give a file name"),
        (["matrix", a, b, "--out", str(tmp_path / "file.txt")], "is a file; --out takes a dir"),
        (["matrix", a, b, "--out", str(tmp_path / "file.txt" / "m")], "cannot be created"),
        (["demo", "--out", str(missing / "d.json")], "does not exist"),
        (["bench", "--out", str(missing / "b.json")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "no such file" not in err and "Traceback" not in err, err


def test_plots_without_matplotlib_are_refused_before_the_computation(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # as where it is not installed
    a = str(tmp_path / "a.npz")
    assert main(["compare", a, a, "--plot", str(tmp_path / "p.png")]) == 2
    assert '--plot needs matplotlib: pip install "identirep[plot]"' in capsys.readouterr().err
    assert main(["matrix", a, a, "--out", str(tmp_path / "m")]) == 2
    assert "or pass --no-plots" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_matrix_tables_show_model_names_literally(tmp_path, capsys):
    a, b = random_pair(N=60, V=9, M=2)
    paths = []
    for m, name in ((a, "[/bold]"), (b, "[red]b")):
        paths.append(str(ir.save_model(ir.Model(m.f, m.g, name=name), tmp_path / f"{len(paths)}.npz")))
    out = tmp_path / "[b]out"
    assert main(["matrix", *paths, "--num-samples", "5", "--no-plots", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[/bold]" in text and "[red]b" in text and f"to {out}" in text.replace("\n", "")


def _pyproject_version():
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE).group(1)


def test_version(capsys):
    assert ir.__version__ == _pyproject_version()
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"identirep {ir.__version__}\n"


def test_version_without_installed_metadata(monkeypatch, tmp_path):
    """A source tree on sys.path has no distribution metadata: the version in the tree's
    pyproject.toml, else "unknown"."""
    import importlib.metadata as md

    import identirep.cli as cli

    def missing(name):
        raise md.PackageNotFoundError(name)
    monkeypatch.setattr(md, "version", missing)
    (tmp_path / "python" / "identirep").mkdir(parents=True)
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "python" / "identirep" / "cli.py"))
    assert cli.package_version() == "unknown"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "identirep"\nversion = "9.8.7"\n')
    assert cli.package_version() == "9.8.7"


def test_package_is_marked_typed():
    """py.typed sits in the package directory; the wheel copies every file of it that git does
    not ignore (scikit-build-core's wheel.packages)."""
    from pathlib import Path
    assert (Path(ir.__file__).parent / "py.typed").is_file()


def test_drop_masked_labels(tmp_path, capsys):
    a, b = random_pair(N=40, V=12, M=2, bias=True)
    biases = [np.array(a.bias), np.array(b.bias)]
    biases[0][[3, 7]] = -np.inf
    biases[1][[7, 10]] = -np.inf
    paths = []
    for m, bias, name in ((a, biases[0], "a.npz"), (b, biases[1], "b.npz")):
        np.savez(tmp_path / name, f=m.f, g=m.g, b=bias)
        paths.append(str(tmp_path / name))
    assert main(["compare", *paths, "--num-samples", "5"]) == 2
    err = capsys.readouterr().err
    assert "bias is -inf for 2 label(s) (ids [3, 7])" in err and "--drop-masked-labels" in err
    assert main(["compare", *paths, "--num-samples", "5", "--json", "--drop-masked-labels"]) == 0
    out, err = capsys.readouterr()
    note = "dropped 3 label(s) whose bias is -inf in either model (masked or padded): ids [3, 7, 10]"
    assert note in err
    got = json.loads(out)
    assert got["V"] == 9 and any(note in n for n in got["notes"])
    keep = np.setdiff1d(np.arange(12), [3, 7, 10])
    want = ir.compare(*(ir.Model(m.f, m.g[keep], bias[keep]) for m, bias in zip((a, b), biases)),
                      num_samples=5)
    assert got["d_llv"]["value"] == pytest.approx(want.d_llv.value, rel=1e-12)
    assert main(["matrix", *paths, "--num-samples", "5", "--json", "--drop-masked-labels"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["dropped_labels"] == [3, 7, 10] and "in any model" in err


def test_input_set_limit_says_what_is_meaningful_and_affordable():
    from identirep.cli import MAX_INPUT_SETS, input_set_limit
    assert input_set_limit(300, 10) == (MAX_INPUT_SETS, input_set_limit(300, 10)[1])
    assert input_set_limit(300, 10, sets_per_pivot=4)[0] == 300       # distinct pivots
    limit, why = input_set_limit(12, 2)                                 # 12 x C(11, 2) sets
    assert limit == 660 and "only 660 distinct candidate sets" in why
    assert input_set_limit(12, 2, paper_compat=True)[0] == 4           # disjoint sets of 3
    limit, why = input_set_limit(100_000, 4096)                         # an LLM: memory binds
    assert limit == (1 << 26) // 4097 and "512 MiB" in why


def test_too_many_input_sets_are_refused(tmp_path, capsys):
    a, b = random_pair(N=12, V=6, M=2)
    paths = [str(ir.save_model(m, tmp_path / f"{m.name}.npz")) for m in (a, b)]
    cases = [   # the cap needs no model: the paths are checked later
        (["compare", "x", "y", "--num-samples", "10000000"],
         "at most 1000000 candidate sets", "--num-samples 1000000 or less"),
        (["matrix", "x", "y", "--num-samples", "600000", "--sets-per-pivot", "2"],
         "--num-samples 600000 x --sets-per-pivot 2", "--num-samples 500000 or less"),
        (["compare", *paths, "--num-samples", "661"],
         "N=12 inputs make only 660 distinct", "--num-samples 660 or less"),
        (["compare", *paths, "--num-samples", "5", "--paper-compat"],
         "hold 4 disjoint sets of M + 1 = 3", "--num-samples 4 or less"),
        (["matrix", *paths, "--num-samples", "13", "--sets-per-pivot", "2", "--no-plots"],
         "a distinct input pivot, and there are N=12", "(or a smaller --sets-per-pivot)"),
    ]
    for argv, why, fix in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert why in err and fix in err and "Traceback" not in err, err
    assert main(["compare", *paths, "--num-samples", "4", "--paper-compat", "--json"]) == 0


def test_paper_compat_input_sets_hold_the_first_models_dimension(tmp_path, capsys):
    a, b = random_pair(N=12, V=6, M=2, M2=3)
    paths = [str(ir.save_model(m, tmp_path / f"{m.name}.npz")) for m in (a, b)]
    # sets of M1 + 1 = 3: 4 disjoint ones in N=12 (M2 + 1 = 4 would allow only 3)
    assert main(["compare", *paths, "--num-samples", "4", "--paper-compat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["d_llv"]["input_search"]
    assert main(["compare", *paths[::-1], "--num-samples", "4", "--paper-compat"]) == 2
    assert "hold 3 disjoint sets of M + 1 = 4" in capsys.readouterr().err
