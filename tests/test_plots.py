"""Plots and the matrix command: files are written and are real images."""
import json

import numpy as np
import pytest

import identirep as ir
from identirep import constructions as C
from identirep.cli import main


def _models(tmp_path):
    base = C.random_model(N=200, V=40, M=3, scale=3, seed=0, name="base")
    paths = []
    for m, n in ((base, "base"), (C.perturbed_copy(base, 0.3, seed=1), "noisy"),
                 (C.linear_transform(base, seed=2), "linear")):
        p = tmp_path / f"{n}.npz"
        ir.save_model(m, p)
        paths.append(str(p))
    return paths


def _is_png(path, min_px=200):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.shape[0] >= min_px and img.shape[1] >= min_px
    assert img[..., :3].std() > 0.05          # not a blank canvas


@pytest.mark.requires("matplotlib")
def test_matrix_command_writes_csv_json_and_heatmaps(tmp_path, capsys):
    paths = _models(tmp_path)
    out = tmp_path / "out"
    assert main(["matrix", *paths, "--out", str(out), "--num-samples", "20"]) == 0
    assert "d_llv (row vs column)" in capsys.readouterr().out
    data = json.loads((out / "matrix.json").read_text())
    assert data["names"] == ["base", "base+noise(0.3)", "base (linear map)"]
    llv = np.array(data["values"]["d_llv"], float)
    assert llv[0, 2] < 1e-5 < llv[0, 1]
    assert (out / "kl.csv").read_text().count("\n") == 4
    for m in ("d_llv", "kl", "mcca_f"):
        _is_png(out / f"heatmap_{m}.png")
    _is_png(out / "kl_vs_d_llv.png")


@pytest.mark.requires("matplotlib")
def test_compare_label_term_plot(tmp_path, capsys):
    paths = _models(tmp_path)
    png = tmp_path / "terms.png"
    assert main(["compare", paths[0], paths[1], "--plot", str(png), "--num-samples", "20"]) == 0
    _is_png(png)
