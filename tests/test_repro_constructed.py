"""identirep repro table1 and bound: the paper's constructed experiments, end to end at small
settings (the functions, the drivers through their own options, and the command line)."""
import argparse
import json

import pytest

from identirep.cli import main
from identirep.repro import bound, table1


def run(driver, argv) -> int:
    """``driver``'s exit code for ``argv``, through its own options (argparse exits 2 on a
    bad value)."""
    p = argparse.ArgumentParser()
    driver.add_arguments(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code
    return driver.main(args)


def test_table1_kl_vanishes_while_d_llv_stays():
    res = table1.run_table1(rhos=(18, 3, 5, 10), inputs_per_class=100, seed=0)
    assert res.column("rho") == [3.0, 5.0, 10.0, 18.0]
    for key in ("kl12", "kl21"):
        kl = res.column(key)
        assert all(x > y for x, y in zip(kl, kl[1:])), (key, kl)
    assert res.rows[-1]["kl12"] < 2e-4 and res.rows[-1]["kl21"] < 4e-4
    for r in res.rows:   # d_LLV stays within 1.317 +- 0.02; representations stay unrelated
        assert abs(r["d_llv"] - 1.317) <= 0.02, r
        assert r["max_d_svd"] > 0.99 and r["mcca_f"] < 0.05, r
        assert r["max_d_svd"] <= r["bound"] == pytest.approx(4 * r["d_llv"])
    data = json.loads(json.dumps(res.to_dict()))
    assert data["summary"]["d_llv_max"] - data["summary"]["d_llv_min"] < 0.01
    assert set(data["rows"][0]) == set(data["columns"])
    lines = res.to_csv().splitlines()
    assert lines[0].split(",") == list(table1.COLUMNS) and len(lines) == 5


@pytest.mark.requires("matplotlib")
def test_table1_driver_writes_table_json_csv_and_figure(tmp_path, capsys):
    out = tmp_path / "t1"
    assert run(table1, ["--rhos", "2,18", "--inputs-per-class", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for s in ("Table 1", "KL(1||2)", "d_LLV", "mCCA f", "distance, nats", "similarity in [0, 1]"):
        assert s in text
    data = json.loads((out / "table1.json").read_text())
    assert [r["rho"] for r in data["rows"]] == [2.0, 18.0]
    assert data["settings"]["inputs_per_class"] == 40 and data["settings"]["lam"] == 1e-5
    assert len((out / "table1.csv").read_text().splitlines()) == 3
    png = (out / "table1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000


def test_bound_holds_on_every_constructed_pair():
    res = bound.run_bound(num_pairs=2, seed=0)
    fams = [p["family"] for p in res.points]
    assert fams.count("noisy copy") == fams.count("linear map of a noisy copy") == 4
    assert fams.count("linear map (equivalent)") == 2
    assert fams.count("Table 1 pair (labels permuted)") == len(bound.TABLE1_RHOS)
    over = [(p["family"], p["bound"], p["max_d_svd"]) for p in res.points
            if not p["max_d_svd"] <= 2 * p["M"] * p["d_llv"] + bound.BOUND_ATOL]
    assert not over and res.summary()["under"] == len(res.points)
    noisy = [p for p in res.points if p["family"] == "noisy copy"]
    assert max(p["max_d_svd"] for p in noisy) > 100 * min(p["max_d_svd"] for p in noisy)


def _width_results(tmp_path, pairs):
    d = tmp_path / "width"
    d.mkdir()
    (d / "width_results.json").write_text(json.dumps({"classes": 4, "pairs": pairs}))
    return d


def _pair(width, seed_b, d_llv, d_svd, M=2):
    return {"width": width, "seed_a": 0, "seed_b": seed_b, "kl_ab": 0.01, "kl_ba": 0.02,
            "d_llv": d_llv, "d_svd_f": d_svd, "d_svd_g": d_svd, "d_svd_max": d_svd, "M": M}


@pytest.mark.requires("matplotlib")
def test_bound_driver_reads_width_results(tmp_path, capsys):
    wr = _width_results(tmp_path, [_pair(16, 1, 0.2, 0.1), _pair(64, 2, 0.05, 0.01),
                                   _pair(64, 3, None, None)])
    out = tmp_path / "b"
    assert run(bound, ["--num-pairs", "1", "--width-results", str(wr), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "trained, width 16" in text and "1 trained pair(s) left out" in text
    data = json.loads((out / "bound.json").read_text())
    trained = [p for p in data["points"] if p["kind"] == "trained"]
    assert [(p["width"], p["bound"], p["max_d_svd"]) for p in trained] == [
        (16, 0.8, 0.1), (64, 0.2, 0.01)]
    assert data["skipped"] == [{"width": 64, "seed_a": 0, "seed_b": 3,
                                "why": "d_LLV or max d_SVD not computed"}]
    assert data["summary"]["over"] == 0 and f"All {len(data['points'])} points" in text
    assert len((out / "bound.csv").read_text().splitlines()) == len(data["points"]) + 1
    assert len((out / "bound.png").read_bytes()) < 200_000


def test_bound_reports_a_point_above_the_line(tmp_path, capsys):
    wr = _width_results(tmp_path, [_pair(64, 2, 0.001, 0.5)])
    assert run(bound, ["--num-pairs", "1", "--width-results", str(wr)]) == 0
    text = capsys.readouterr().out
    assert "BOUND VIOLATED: 1 of" in text
    assert "trained, width 64, seeds 0 and 2: 2 M d_LLV = 0.0040, max d_SVD = 0.5000" in text


@pytest.mark.parametrize("driver, argv, message", [
    (table1, ["--rhos", "0,1"], "finite numbers > 0"),
    (table1, ["--rhos", "1,x"], "must be numbers"),
    (table1, ["--rhos", "2,2"], "repeat a value"),
    (table1, ["--rhos", ","], "finite numbers > 0"),
    (table1, ["--inputs-per-class", "0"], "--inputs-per-class must be an integer >= 1"),
    (table1, ["--inputs-per-class", "1.5"], "invalid int value: '1.5'"),
    (table1, ["--inputs-per-class", "10000000000"], "--inputs-per-class must be at most"),
    (table1, ["--seed", "-1"], "--seed must be an integer >= 0"),
    (bound, ["--seed", "-2"], "--seed must be an integer >= 0"),
    (bound, ["--num-pairs", "0"], "--num-pairs must be an integer >= 1"),
    (bound, ["--width-results", "missing-dir"], "is not a directory"),
])
def test_bad_options_exit_2(driver, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(driver, argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"),
    ('{"runs": []}', 'has no list "pairs"'),
    (json.dumps({"pairs": [{"width": 16}]}), "pairs[0] lacks seed_a"),
    (json.dumps({"pairs": [_pair(16, 1, "0.2", 0.1)]}), "d_llv must be a finite number"),
    (json.dumps({"pairs": [_pair(16, 1, 0.2, 0.1, M=0)]}), "M must be an integer >= 1"),
    (json.dumps({"pairs": [_pair(16, None, 0.2, 0.1)]}), "seed_b must be a finite number"),
    (json.dumps({"pairs": [_pair(16, 1.5, 0.2, 0.1)]}), "seed_b must be an integer >= 0"),
])
def test_bad_width_results_exit_2(content, message, tmp_path, capsys):
    (tmp_path / "width_results.json").write_text(content)
    assert run(bound, ["--width-results", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_out_that_is_a_file_exits_2_before_any_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    for driver in (table1, bound):
        assert run(driver, ["--out", str(f)]) == 2
        assert "is a file" in capsys.readouterr().err


def test_command_line(tmp_path, capsys):
    assert main(["repro", "table1", "--rhos", "3,18", "--inputs-per-class", "30",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["kl12"] > rows[1]["kl12"] and abs(rows[1]["d_llv"] - 1.317) <= 0.02
    assert main(["repro", "table1", "--rhos", "-1"]) == 2
    assert main(["repro", "bound", "--width-results", str(tmp_path)]) == 2
    assert "has no width_results.json" in capsys.readouterr().err


def test_a_rho_the_measures_refuse_exits_2_naming_it(capsys):
    assert main(["repro", "table1", "--rhos", "3,1e-300", "--inputs-per-class", "5"]) == 2
    err = capsys.readouterr().err
    assert "rho=1e-300: " in err and "give other rhos" in err
