"""identirep repro width: the data set, the models and their training, the driver end to end
at a miniature setting, and (marker repro, minutes) the quick experiment's finding."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from identirep.cli import main
from identirep.repro.data import STD, make_dataset


@pytest.mark.parametrize("classes", [4, 6, 18])
def test_labels_against_boundary_directions(classes):
    data = make_dataset(classes, seed=3, n_train=3000, n_test=500)
    x = np.concatenate([data.x_train, data.x_test]).astype(np.float64)
    y = np.concatenate([data.y_train, data.y_test])
    # the class is the number of bin boundaries (angles k pi / C, 0 < k < C) that a point of
    # the upper half-plane lies counter-clockwise of: a cross product, no angle computed
    k = np.arange(1, classes)
    bx, by = np.cos(k * np.pi / classes), np.sin(k * np.pi / classes)
    cross = bx[None, :] * x[:, 1:2] - by[None, :] * x[:, 0:1]
    np.testing.assert_array_equal(y, (cross > 0).sum(1))
    assert (x[:, 1] >= 0).all() and y.min() == 0 and y.max() == classes - 1
    # the points are N(0, 3^2 I) draws of the seed, reflected through the origin when y < 0
    raw = STD * np.random.default_rng(3).standard_normal((3500, 2))
    np.testing.assert_allclose(x, np.where(raw[:, 1:2] < 0, -raw, raw), rtol=1e-6)
    counts = np.bincount(y, minlength=classes) / len(y)    # isotropic: equal bins
    assert np.abs(counts - 1 / classes).max() < 4 * np.sqrt(1 / classes / len(y))


def test_dataset_sizes_seed_and_edge_angles():
    from identirep.repro.data import angle_class
    d = make_dataset()
    assert d.x_train.shape == (20_000, 2) and d.x_test.shape == (2_000, 2)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert np.array_equal(make_dataset(seed=0).x_test, d.x_test)
    assert not np.array_equal(make_dataset(seed=1).x_test, d.x_test)
    # the positive x-axis and the negative one (angle pi, reflected to 0) are class 0
    edge = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [-1.0, 1e-12]])
    assert angle_class(edge, 4).tolist() == [0, 0, 2, 3]


@pytest.fixture
def one_thread():
    """torch on one thread (as identirep repro trains): tiny MLPs are overhead-bound, and
    two threads on a busy two-core machine are many times slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


def test_tiny_training_run_reaches_95_percent_in_500_steps(one_thread):
    from identirep.repro.train import TrainSettings, evaluate, train_models
    data = make_dataset()
    model = train_models(64, [0], data, TrainSettings(steps=500))
    (t,) = evaluate(model, [0], data)
    assert t.test_accuracy > 0.95 and t.train_nll < 0.3
    assert t.f_test.shape == (2000, 2) and t.g.shape == (4, 2) and t.f_test.dtype == np.float64


def _alone(torch, stacked, k, data, settings, seed, steps):
    """Model k of ``stacked`` (untrained) as plain torch layers, trained by itself with its
    own Adam on its own batches."""
    from identirep.repro.models import LEAKY_SLOPE
    from identirep.repro.train import BETAS, EPS, BatchOrder, stream_seed

    def plain(mlp):
        layers = []
        for i, w in enumerate(mlp.weights):
            lin = torch.nn.Linear(*w.shape[1:], bias=i < len(mlp.biases), dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[k].T)
                if lin.bias is not None:
                    lin.bias.copy_(mlp.biases[i][k, 0])
            layers += [lin, torch.nn.LeakyReLU(LEAKY_SLOPE)]
        return torch.nn.Sequential(*layers[:-1])
    f, g = plain(stacked.f), plain(stacked.g)
    opt = torch.optim.Adam([*f.parameters(), *g.parameters()], lr=settings.lr, betas=BETAS,
                           eps=EPS)
    order = BatchOrder(len(data.x_train), settings.batch, stream_seed(0, seed, 1))
    x, y = torch.from_numpy(data.x_train).double(), torch.from_numpy(data.y_train)
    one_hot = torch.eye(settings.classes, dtype=torch.float64)[:, :-1]
    for i in torch.from_numpy(order.take(steps)):
        loss = torch.nn.functional.cross_entropy(f(x[i]) @ g(one_hot).T, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return f, g


def test_stacked_training_equals_each_model_trained_alone(one_thread):
    """One Adam over the stacked weights of 2 models, loss = the sum of their mean NLLs, is
    two independent Adams: each model ends where it ends trained by itself, as plain torch
    layers (its initial weights do not depend on the other model either). In float64: Adam's
    first steps move a weight by about lr x the sign of its gradient, so in float32 a
    gradient within rounding of 0 (a leaky unit's) would move it either way."""
    torch = one_thread
    from identirep.repro.train import TrainSettings, stacked_models, train_models
    data = make_dataset(n_train=2000, n_test=100)
    settings = TrainSettings(steps=15, lr=1e-3)
    seeds = [3, 5]
    f64 = torch.float64
    both = train_models(16, seeds, data, settings, dtype=f64)
    start = stacked_models(16, seeds, settings, dtype=f64)
    for k, s in enumerate(seeds):
        alone = stacked_models(16, [s], settings, dtype=f64)
        for p, q in zip(alone.parameters(), start.parameters()):
            assert torch.equal(p[0], q[k])
        f, g = _alone(torch, start, k, data, settings, s, settings.steps)
        for mlp, seq in ((both.f, f), (both.g, g)):
            lins = [m for m in seq if isinstance(m, torch.nn.Linear)]
            for i, lin in enumerate(lins):
                torch.testing.assert_close(mlp.weights[i][k].T, lin.weight, rtol=1e-9,
                                           atol=1e-12)
                if lin.bias is not None:
                    torch.testing.assert_close(mlp.biases[i][k, 0], lin.bias, rtol=1e-9,
                                               atol=1e-12)
        moved = (both.f.weights[0][k] - start.f.weights[0][k]).abs().max()
        assert moved > 1e-3      # the steps did move the weights


def test_fixed_length_variant_rescales_to_norm_20():
    torch = pytest.importorskip("torch")
    from identirep.repro.models import FIXED_LENGTH, StackedModels
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    m = StackedModels(8, 5, gens, fixed_length="both")
    x = torch.randn(2, 7, 2)
    assert torch.allclose(m.embed(x).norm(dim=-1), torch.full((2, 7), FIXED_LENGTH))
    assert torch.allclose(m.unembed().norm(dim=-1), torch.full((2, 5), FIXED_LENGTH))
    only_f = StackedModels(8, 5, gens, fixed_length="f")
    assert not torch.allclose(only_f.unembed().norm(dim=-1), torch.full((2, 5), FIXED_LENGTH))


PAIR_KEYS = {"width", "seed_a", "seed_b", "kl_ab", "kl_ba", "d_llv", "d_svd_f", "d_svd_g",
             "d_svd_max", "mcca_f", "mcca_g", "M", "acc_a", "acc_b"}


@pytest.mark.requires("torch", "matplotlib")
def test_width_driver_end_to_end_and_reuse(tmp_path, capsys):
    out = tmp_path / "w"
    argv = ["repro", "width", "--widths", "8,64", "--seeds", "5", "--steps", "600",
            "--jobs", "1", "--out", str(out)]
    assert main(argv + ["--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads((out / "width_results.json").read_text())
    assert got["mode"] == "custom" and got["checkpoints"] == {
        "trained": 10, "reused": 0, "dir": "checkpoints"}
    assert any("600 training steps instead of 15000" in d for d in got["differences_from_paper"])
    narrow, wide = got["widths"]
    # width 8 learns too slowly for 600 steps: reported, left out of the means
    assert not narrow["enough_seeds"] and narrow["d_llv"]["mean"] is None
    assert "fewer than 5 seeds" in narrow["status"]
    accs = {(m["width"], m["seed"]): m["test_accuracy"] for m in got["models"]}
    ok = [s for s in range(5) if accs[(64, s)] > 0.9]
    assert wide["enough_seeds"] and wide["admissible_seeds"] == ok and len(ok) == 5
    pairs = [p for p in got["pairs"] if p["width"] == 64]
    assert len(pairs) == wide["pairs"] == 10
    for p in pairs:
        assert PAIR_KEYS <= set(p) and p["M"] == 2
        assert (p["acc_a"], p["acc_b"]) == (accs[(64, p["seed_a"])], accs[(64, p["seed_b"])])
        assert 0 < p["d_llv"] and 0 <= p["d_svd_max"] <= 1 and p["kl_ab"] > 0
        assert p["d_svd_max"] == max(p["d_svd_f"], p["d_svd_g"]) <= p["bound"] + 1e-9
    assert wide["d_llv"]["mean"] == pytest.approx(np.mean([p["d_llv"] for p in pairs]))
    assert got["finding"]["compared"] is None    # one width with enough seeds
    from scipy.stats import spearmanr
    rho = spearmanr([p["kl_sym"] for p in pairs], [p["d_llv"] for p in pairs])[0]
    assert got["kl_vs_d_llv"]["per_width"] == {"64": {"spearman": pytest.approx(rho),
                                                      "pairs": 10}}
    with open(out / "pairs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(got["pairs"]) and float(rows[0]["d_llv"]) == got["pairs"][0]["d_llv"]
    assert len((out / "widths.csv").read_text().splitlines()) == 3
    for name in ("width_d_llv_d_svd.png", "width_kl_vs_d_llv.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    ckpts = sorted((out / "checkpoints").rglob("*.safetensors"))
    assert sorted(out / m["checkpoint"] for m in got["models"]) == ckpts and len(ckpts) == 10
    import identirep as ir
    meta = ir.load_metadata(ckpts[0])
    assert {"width", "seed", "classes", "steps", "test_accuracy", "settings"} <= set(meta)
    stamps = [c.stat().st_mtime_ns for c in ckpts]
    # the second run reuses every checkpoint and gives the same numbers
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "reused 10 checkpoint(s)" in text and "trained 0 model(s)" in text
    for s in ("mean [q25, q75] over the pairs", "distance", "custom mode differs from the paper",
              "width 8: fewer than 5 seeds"):
        assert s in text
    assert [c.stat().st_mtime_ns for c in ckpts] == stamps
    again = json.loads((out / "width_results.json").read_text())
    assert again["pairs"] == got["pairs"]


@pytest.mark.parametrize("argv, message", [
    (["--classes", "3"], "--classes must be at least 4"),
    (["--seeds", "1"], "--seeds must be at least 2"),
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--jobs", "0"], "--jobs must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--widths", "16,0"], "widths must be distinct integers >= 1"),
    (["--widths", "16,x"], "expected comma-separated integers"),
    (["--quick", "--full"], "not allowed with argument"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_width_options_exit_2(argv, message, tmp_path, capsys):
    assert main(["repro", "width", "--out", str(tmp_path / "w")] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_out_file_and_missing_cuda_exit_2(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    f = tmp_path / "f"
    f.write_text("")
    assert main(["repro", "width", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["repro", "width", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err


def test_without_torch_exit_2_with_the_install_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)    # import torch raises ImportError
    assert main(["repro", "width", "--out", str(tmp_path / "w")]) == 2
    assert "pip install 'identirep[repro]'" in capsys.readouterr().err


def test_importing_identirep_and_its_command_line_imports_no_torch():
    code = ("import sys, identirep, identirep.repro.width, identirep.repro.cli\n"
            "from identirep.cli import build_parser\n"
            "build_parser()\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_training_tasks_split_by_width_and_cost():
    from identirep.repro.jobs import split
    tasks = split({16: [0, 1, 2, 3, 4], 256: [0, 1, 2]}, jobs=2)
    assert tasks == [(256, [0, 1]), (256, [2]), (16, [0, 1, 2]), (16, [3, 4])]
    assert split({64: [7]}, jobs=4) == [(64, [7])]


@pytest.mark.repro
@pytest.mark.requires("torch", "matplotlib")
def test_processes_train_the_same_models(tmp_path):
    """--jobs 2 (two processes, seeds split between them) writes the same models as --jobs 1."""
    import identirep as ir
    argv = ["repro", "width", "--widths", "32", "--seeds", "3", "--steps", "50", "--json"]
    for jobs in ("1", "2"):
        assert main(argv + ["--jobs", jobs, "--out", str(tmp_path / jobs)]) == 0
    for c in sorted((tmp_path / "1" / "checkpoints").rglob("*.safetensors")):
        a = ir.load_model(c)
        b = ir.load_model(tmp_path / "2" / c.relative_to(tmp_path / "1"))
        np.testing.assert_allclose(a.f, b.f, rtol=1e-6, atol=1e-9)


@pytest.mark.repro
@pytest.mark.requires("torch", "matplotlib")
def test_quick_experiment_wider_is_closer(tmp_path, capsys):
    """The quick mode (seed 0): mean d_LLV and mean max d_SVD at the widest width below those
    at the narrowest, as in the paper."""
    assert main(["repro", "width", "--out", str(tmp_path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    narrow, wide = got["widths"][0], got["widths"][-1]
    assert narrow["enough_seeds"] and wide["enough_seeds"]
    assert wide["d_llv"]["mean"] < narrow["d_llv"]["mean"]
    assert wide["d_svd_max"]["mean"] < narrow["d_svd_max"]["mean"]
    assert got["finding"]["holds"] is True


@pytest.mark.requires("torch", "matplotlib")
def test_checkpoints_that_cannot_be_written_exit_2_before_training(tmp_path, capsys):
    (tmp_path / "checkpoints").write_text("")
    argv = ["repro", "width", "--widths", "4", "--seeds", "2", "--steps", "5", "--jobs", "1",
            "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoints is a file, not a directory" in err and "training" not in err


def test_finding_skips_widths_without_measured_means():
    from identirep.repro.width import finding

    def width(w, llv, svd):
        return {"width": w, "enough_seeds": True, "d_llv": {"mean": llv},
                "d_svd_max": {"mean": svd}}
    assert finding([width(16, 0.5, 0.2), width(64, None, None)])["compared"] is None
    got = finding([width(16, 0.5, 0.2), width(32, 0.3, 0.1), width(64, None, 0.05)])
    assert got["compared"] == [16, 32] and got["holds"] is True


def test_trained_seeds_are_named_as_they_are():
    from identirep.repro.jobs import seed_list
    assert seed_list([0, 1, 2]) == "0..2" and seed_list([0, 2]) == "0, 2"
    assert seed_list([7]) == "7"


@pytest.mark.requires("matplotlib")
def test_kl_figure_plots_the_pairs_its_correlation_is_over():
    from identirep.repro.figures import kl_figure
    pairs = [{"width": w, "kl_sym": 0.01 * (i + 1), "d_llv": 0.1 * (i + 1)}
             for w in (16, 32) for i in range(6)]
    payload = {"widths": [{"width": 16, "enough_seeds": True},
                          {"width": 32, "enough_seeds": False}],
               "pairs": pairs, "kl_vs_d_llv": {"all": {"spearman": 1.0}}}
    fig = kl_figure(payload)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["width 16 (6 pairs)"]
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_a_checkpoint_trained_on_another_device_type_is_not_reused(tmp_path):
    """CUDA and CPU training give other floats, so a checkpoint's identity holds the device
    type: a CPU run neither finds nor overwrites a CUDA run's checkpoint (and the reverse)."""
    from identirep.repro.train import checkpoint_path, finished
    from identirep.repro.width import make_plan, missing
    plan = make_plan("quick", widths=[8], seeds=2, steps=10)
    cpu, cuda = plan.train_settings("cpu"), plan.train_settings("cuda:1")
    assert cuda.device == "cuda" and cpu.device == "cpu"
    p_cpu, p_cuda = checkpoint_path(tmp_path, cpu, 8, 0), checkpoint_path(tmp_path, cuda, 8, 0)
    assert p_cpu != p_cuda
    from identirep.repro.train import Trained, save_trained
    t = Trained(0, np.ones((3, 2)), np.eye(2)[[0, 1, 0, 1]] + 0.1 * np.arange(4)[:, None], 1.0,
                0.1)
    save_trained(t, p_cuda, 8, cuda, {"device": "cuda:1"})
    assert finished(p_cuda, 8, 0, cuda) and not finished(p_cuda, 8, 0, cpu)
    assert missing(tmp_path, plan, "cpu") == {8: [0, 1]}
    assert missing(tmp_path, plan, "cuda") == {8: [1]}
