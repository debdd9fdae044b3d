"""Plots and the matrix command: files are written and are real images; each figure is
built without saving and its axes inspected (colour scales, labels, the text it shows)."""
import json
from types import SimpleNamespace

import identirep as ir
import numpy as np
import pytest
from identirep import constructions as C
from identirep._matrix import MEASURES
from identirep.cli import main
from identirep.plots import (
    heatmap_figure,
    kl_vs_llv_figure,
    label_terms,
    label_terms_figure,
    top_labels,
)


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


# ---------------------------------------------------------------- figures, inspected directly
# (the figure builders are what heatmap / kl_vs_llv / label_terms save)

def _result(measure, off, names=("a", "b", "c")):
    """A stand-in for a MatrixResult: one measure, ``off`` off the diagonal."""
    K = len(names)
    vals = np.full((K, K), off, float) if np.isscalar(off) else np.array(off, float)
    np.fill_diagonal(vals, MEASURES.get(measure, (0.0, None))[0])
    return SimpleNamespace(names=list(names), values={measure: vals})


def _heat(measure, off, names=("a", "b", "c")):
    import matplotlib.pyplot as plt
    fig = heatmap_figure(_result(measure, off, names), measure)
    ax = fig.axes[0]
    im = ax.images[0]
    rgba = im.to_rgba(im.get_array())
    cbar_label = fig.axes[1].get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    return im.norm, rgba, cbar_label, texts, fig


def _gap(c1, c2):
    return float(np.abs(np.asarray(c1[:3]) - np.asarray(c2[:3])).max())


DISTANCES = ("kl", "d_llv", "d_logit", "max_d_svd", "d_rep")


@pytest.mark.requires("matplotlib")
@pytest.mark.parametrize("measure", DISTANCES)
def test_distance_heatmap_is_anchored_at_zero_so_tiny_values_stay_dark(measure):
    # identical models (d ~ 2e-8 everywhere) used to fill the whole colour range
    norm, tiny, label, _, _ = _heat(measure, 2e-8)
    assert norm.vmin == 0 and norm.vmax >= 1
    assert "0 = identical" in label
    assert _gap(tiny[0, 1], tiny[0, 0]) < 0.02        # off-diagonal looks like identical
    _, large, _, _, _ = _heat(measure, 0.98 if measure == "max_d_svd" else 50.0)
    assert _gap(large[0, 1], large[0, 0]) > 0.5       # a large distance does not


@pytest.mark.requires("matplotlib")
@pytest.mark.parametrize("measure", ("mcca_f", "mcca_g", "top1_agreement"))
def test_similarity_heatmap_uses_the_fixed_unit_range(measure):
    norm, rgba, label, _, _ = _heat(measure, 0.999)
    assert (norm.vmin, norm.vmax) == (0, 1)
    assert "1 = identical" in label and "fixed scale 0 to 1" in label
    assert _gap(rgba[0, 1], rgba[0, 0]) < 0.02        # 0.999 looks like identical (1)
    _, rgba, _, _, _ = _heat(measure, 0.05)
    assert _gap(rgba[0, 1], rgba[0, 0]) > 0.5


@pytest.mark.requires("matplotlib")
def test_max_d_svd_uses_the_fixed_unit_range_and_marks_cells_outside_it():
    norm, _, label, texts, fig = _heat("max_d_svd", [[0, 0.3, 1.2], [0.3, 0, 0.5], [0.1, 0.2, 0]])
    assert (norm.vmin, norm.vmax) == (0, 1) and "fixed scale 0 to 1" in label
    assert "1.200*" in texts and "0.300" in texts        # only the cell outside is marked
    assert "outside the colour scale" in fig.axes[0].get_xlabel()


@pytest.mark.requires("matplotlib")
@pytest.mark.parametrize("measure", ("kl", "d_rep"))
def test_heavy_tailed_heatmap_is_log_above_a_small_threshold(measure):
    from matplotlib.colors import SymLogNorm
    off = [[0, 0.2, 2e4], [0.2, 0, 2e4], [2e4, 2e4, 0]]
    norm, rgba, label, _, _ = _heat(measure, off)
    assert isinstance(norm, SymLogNorm) and norm.vmin == 0 and norm.vmax == 2e4
    assert "log above" in label
    assert 0.3 < float(norm(0.2)) < 0.8                 # 0.2 is not crushed by the outlier
    assert _gap(rgba[0, 1], rgba[0, 0]) > 0.2 and _gap(rgba[0, 1], rgba[0, 2]) > 0.2


@pytest.mark.requires("matplotlib")
@pytest.mark.parametrize("measure", ("d_llv", "mcca_f", "kl"))
def test_heatmap_cell_text_contrasts_with_its_cell(measure):
    import matplotlib.colors as mc
    import matplotlib.pyplot as plt
    off = np.array([[0, 0.01, 0.5], [0.9, 0, 3.0], [np.nan, 0.7, 0]])
    if measure == "mcca_f":
        off = np.clip(off, 0, 1)
    fig = heatmap_figure(_result(measure, off), measure)
    ax = fig.axes[0]
    im = ax.images[0]

    def lum(c):
        return float(np.dot(mc.to_rgb(c), [0.2126, 0.7152, 0.0722]))
    for t in ax.texts:
        j, i = (round(p) for p in t.get_position())
        v = im.get_array()[i, j]
        cell = mc.to_rgb(im.cmap.get_bad()) if np.ma.is_masked(v) else im.to_rgba(v)
        assert abs(lum(t.get_color()) - lum(cell)) > 0.4, (t.get_text(), t.get_color(), cell)
    plt.close(fig)


@pytest.mark.requires("matplotlib")
def test_kl_vs_llv_labels_each_point_by_model_names():
    import matplotlib.pyplot as plt
    names = ["base", "noisy", "a model with a very long name indeed"]
    kl = np.array([[0, 0.2, 5.0], [0.2, 0, 5.1], [4.8, 5.0, 0]])
    llv = np.array([[0, 0.4, 2.4], [0.4, 0, 2.5], [2.4, 2.5, 0]])
    fig = kl_vs_llv_figure(SimpleNamespace(names=names, values={"kl": kl, "d_llv": llv}))
    ax = fig.axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert "base vs noisy" in notes
    assert "base vs a model with a very\u2026" in "\n".join(notes)   # shortened to 20
    assert not any("-" in n and n.replace("-", "").isdigit() for n in notes)   # no "0-1"
    # the three pairs, each annotated at its own point: (mean KL, d_LLV)
    pts = {tuple(np.round(a.xy, 6)) for a in ax.texts}
    assert pts == {(0.2, 0.4), (4.9, 2.4), (5.05, 2.5)}
    # no two annotations overlap
    r = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(r) for a in ax.texts]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(3) for j in range(i + 1, 3))
    plt.close(fig)


@pytest.mark.requires("matplotlib")
def test_kl_vs_llv_pairs_at_one_spot_share_an_annotation():
    import matplotlib.pyplot as plt
    kl = np.zeros((3, 3))
    kl[0, 2] = kl[2, 0] = 1e-16
    llv = np.full((3, 3), 3e-8)
    fig = kl_vs_llv_figure(SimpleNamespace(names=["x", "y", "z"], values={"kl": kl, "d_llv": llv}))
    (note,) = fig.axes[0].texts
    assert note.get_text().split("\n") == ["x vs y", "x vs z", "y vs z"]
    plt.close(fig)


TRICKY = ["$x", "a$\\frac$b", "50% $\\alpha$", "tab\there"]


@pytest.mark.requires("matplotlib")
def test_user_text_is_shown_literally():
    import matplotlib.pyplot as plt
    kl = np.ones((4, 4))
    res = SimpleNamespace(names=TRICKY, values={"kl": kl, "d_llv": kl})
    for fig in (heatmap_figure(res, "kl"), kl_vs_llv_figure(res)):
        fig.canvas.draw()                 # "$\frac$" would fail to parse as mathtext
        shown = [t for t in fig.findobj(lambda a: hasattr(a, "get_parse_math"))
                 if any(n.split("\t")[0] in t.get_text() for n in TRICKY)]
        assert shown and all(not t.get_parse_math() for t in shown)
        joined = "\n".join(t.get_text() for t in shown)
        assert "$x" in joined and "a$\\frac$b" in joined and "50% $\\alpha$" in joined
        assert "tab\\there" in joined     # control characters escaped, not drawn
        plt.close(fig)


def _terms(V, seed=0):
    rng = np.random.default_rng(seed)
    rest, piv = rng.gamma(2, 0.05, V), rng.gamma(2, 0.04, V)
    valid = np.ones(V, bool)
    valid[[7, 100 % V, 2000 % V]] = False          # 7 is the pivot
    m = np.maximum(rest, piv)
    leave_out = int(np.argmax(np.where(valid, m, -1)))
    t1 = float(np.sort(m[valid])[-2])
    terms = {"rest": rest, "piv": piv, "t3": rest, "valid": valid}
    return terms, SimpleNamespace(pivot=7, leave_out=leave_out, t1=t1), m, valid


@pytest.mark.requires("matplotlib")
def test_label_terms_at_32000_labels_is_an_overview_and_named_top_labels():
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection
    V = 32000
    terms, d, m, valid = _terms(V)
    tokens = [f"tok{i}" for i in range(V)]
    tokens[d.leave_out] = "$x"
    fig = label_terms_figure(terms, d, tokens=tokens)
    ax, ax2 = fig.axes
    # no 32000-point scatter: the overview is one line of the sorted terms
    assert all(len(c.get_offsets()) < 100 for c in fig.findobj(PathCollection))
    (line,) = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 100]
    y = np.asarray(line.get_ydata())
    assert len(y) == valid.sum() and (np.diff(y) <= 0).all() and ax.get_xscale() == "log"
    assert "2 degenerate labels excluded" in [t.get_text() for t in ax.texts]
    # the top 10 by max(rest, piv), largest first, named by their token strings
    top = np.flatnonzero(valid)[np.argsort(-m[valid])][:10]
    labels = [t.get_text() for t in ax2.get_yticklabels()]
    assert labels == [f'"{tokens[i]}" ({i})' for i in top]
    assert labels[0] == f'"$x" ({d.leave_out})'
    assert all(not t.get_parse_math() for t in ax2.get_yticklabels())
    widths = [p.get_width() for p in ax2.patches]
    assert np.allclose(widths, m[top])
    colors = [p.get_facecolor() for p in ax2.patches]
    assert colors[0] != colors[1] and len({c for c in colors[1:]}) == 1   # leave-out stands out
    fig.canvas.draw()
    plt.close(fig)


@pytest.mark.requires("matplotlib")
def test_label_terms_without_tokens_names_labels_by_id():
    import matplotlib.pyplot as plt
    terms, d, _, _ = _terms(40)
    fig = label_terms_figure(terms, d, top=5)
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert labels == [f"label {y}" for y, _, _ in top_labels(terms, 5)]
    assert labels[0] == f"label {d.leave_out}" and len(labels) == 5
    plt.close(fig)
    with pytest.raises(ir.IdentirepError, match="tokens has 3 strings for 40 labels"):
        top_labels(terms, 5, tokens=["a", "b", "c"])


@pytest.mark.requires("matplotlib")
def test_label_terms_of_a_real_pair_writes_the_named_plot(tmp_path):
    from identirep.measures import engine
    base = C.random_model(N=200, V=40, M=3, scale=3, seed=0)
    other = C.perturbed_copy(base, 0.3, seed=1)
    d = ir.d_llv(base, other)
    e = engine(base, other, "auto")
    path = label_terms(e, d, tmp_path / "t.png", tokens=[f"w{i}" for i in range(40)])
    _is_png(path)
