"""The per-token report on small causal LMs built here (tests/lm_models.py): a trained
GPT-2-style base model, a copy with every weight rounded to int8 per output channel, and a
copy fine-tuned for a few steps, extracted in float64. Every per-position quantity and every
summary of the report equals what torch computes in float64 from the models' own logits
(materialised, each text run alone) to 1e-6 relative, and the quantised copy comes out closer
to the base than the fine-tune.
"""
import json
import math

import numpy as np
import pytest

import identirep as ir
from identirep import extract as ex

import lm_models as lm

RTOL = 1e-6


@pytest.fixture(scope="session")
def lms(tmp_path_factory, torch, transformers):
    """The three models: their directories, float64 extractions (Model), the texts and the
    torch float64 logits of each, with the token ids, targets and documents of the texts."""
    root = tmp_path_factory.mktemp("lms")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # tiny models: one thread, and no spinning workers on a
    try:                        # loaded machine
        built = lm.build_models(root, torch, transformers)
        texts = built["texts"]
        models, logits = {}, {}
        for name, d in built["dirs"].items():
            out = root / f"{name}.safetensors"
            e = ex.extract(d, texts, out, dtype="float64", progress=False)
            assert e.check.max_rel_error < ex.CHECK_TOLERANCE["float64"]
            models[name] = ir.load_model(out)
            logits[name], ids, targets, docs = lm.model_logits(torch, transformers, d, texts,
                                                               built["tokenizer"])
    finally:
        torch.set_num_threads(threads)
    return dict(built, root=root, models=models, logits=logits, ids=ids, targets=targets,
                documents=docs)


@pytest.fixture(scope="session")
def reports(lms):
    """compare(base, other, jsd=True) for other = int8 and finetune (the per-token report is
    on by default: the models carry their text)."""
    base = lms["models"]["base"]
    return {name: ir.compare(base, lms["models"][name], jsd=True) for name in ("int8", "finetune")}


@pytest.fixture
def one_torch_thread(torch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _oracle(lms, torch, other):
    return lm.per_token_torch(torch, lms["logits"]["base"], lms["logits"][other],
                              lms["targets"])


def test_models_are_real_language_models(lms):
    """Training moved the base model far from uniform; the copies differ from it."""
    losses = lms["losses"]["base"]
    assert losses[-1] < 0.4 * losses[0]
    V = lms["logits"]["base"].shape[1]
    assert V > 200 and lms["rounded"] >= 10          # wte, wpe and 4 Conv1D per layer
    for name in ("int8", "finetune"):
        assert not np.array_equal(lms["logits"]["base"], lms["logits"][name])


def test_extraction_keeps_the_text(lms):
    """tokens, targets, documents and the tokenizer fingerprint of each extraction are those
    of the texts as the tokenizer reads them."""
    base = lms["models"]["base"]
    np.testing.assert_array_equal(base.tokens, lms["ids"])
    np.testing.assert_array_equal(base.targets, lms["targets"])
    np.testing.assert_array_equal(base.documents, lms["documents"])
    tok = lms["tokenizer"]
    assert base.labels == tok.convert_ids_to_tokens(list(range(base.V)))
    fps = {m.metadata["tokenizer"]["sha256"] for m in lms["models"].values()}
    assert len(fps) == 1 and base.metadata["tokenizer"]["size"] == len(tok)


def _document_interval(x, docs):
    """95% interval of mean(x): t(G - 1) x the cluster-robust standard error over documents,
    computed text by text here."""
    from scipy import stats
    mean = x.mean()
    groups = [x[docs == d] for d in np.unique(docs)]
    G = len(groups)
    resid = np.array([g.sum() - len(g) * mean for g in groups])
    se = math.sqrt(G / (G - 1) * (resid ** 2).sum()) / len(x)
    h = stats.t.ppf(0.975, G - 1) * se
    return [mean - h, mean + h]


def _agreement(top1, top2, k):
    return np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(top1, top2)])


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0, err_msg=what)


@pytest.mark.parametrize("other", ["int8", "finetune"])
def test_report_equals_torch_float64(lms, reports, torch, other):
    """compare(base, other, jsd=True): the per-position arrays and every summary of
    report.tokens against torch on the models' own float64 logits."""
    a = lms["models"]["base"]
    t = reports[other].tokens
    assert t is not None and t.positions == a.N == len(lms["targets"])
    want = _oracle(lms, torch, other)
    got = t.arrays
    for key in ("kl12", "kl21", "jsd", "logp1", "logp2", "p2_of_top1", "p1_of_top2", "L1", "L2"):
        _close(got[key], want[key], key)
    np.testing.assert_array_equal(got["top1"], want["top1"])
    np.testing.assert_array_equal(got["top2"], want["top2"])

    docs, has = lms["documents"], lms["targets"] >= 0
    assert t.positions_with_target == int(has.sum()) and t.documents == len(lms["texts"])
    for key in ("kl12", "kl21"):
        _close(getattr(t, f"{key}_mean"), want[key].mean(), key)
        _close(getattr(t, f"{key}_ci"), _document_interval(want[key], docs), f"{key} interval")
        _close(getattr(t, f"{key}_max"), want[key].max(), f"{key} max")
    for key in ("kl12", "kl21", "jsd"):
        qs = getattr(t, f"{key}_quantiles")
        _close([qs[q] for q in ("q50", "q90", "q95", "q99", "q99.9")],
               np.quantile(want[key], [0.5, 0.9, 0.95, 0.99, 0.999]), f"{key} quantiles")
    _close(t.jsd_mean, want["jsd"].mean(), "jsd mean")
    _close(t.jsd_max, want["jsd"].max(), "jsd max")
    assert t.jsd_seconds is not None and t.jsd_seconds > 0

    lp1, lp2 = want["logp1"][has], want["logp2"][has]
    _close(t.ppl1, np.exp(-lp1.mean()), "ppl1")
    _close(t.ppl2, np.exp(-lp2.mean()), "ppl2")
    _close(t.ppl_ratio, np.exp(-lp2.mean()) / np.exp(-lp1.mean()), "ppl ratio")
    dp = np.exp(lp2) - np.exp(lp1)
    _close(t.dp_mean, dp.mean(), "mean delta p")
    _close(t.dp_rms, np.sqrt((dp ** 2).mean()), "rms delta p")
    for k in (1, 5, 10):
        _close(t.agreement[f"top{k}"], _agreement(want["top1"], want["top2"], k), f"top-{k}")
    _close(t.p2_of_top1_mean, want["p2_of_top1"].mean(), "p2 of top1")
    _close(t.p1_of_top2_mean, want["p1_of_top2"].mean(), "p1 of top2")

    # the positions and target tokens with the largest KL, as text
    order = np.argsort(-want["kl12"], kind="stable")[:10]
    assert [p.position for p in t.top_positions] == order.tolist()
    assert t.token_text == "'▁' as a space"       # the tokenizer is SentencePiece-style
    shown = [s.replace("▁", " ") for s in a.labels]
    ids, docs_of = lms["ids"], lms["documents"]
    for p in t.top_positions:
        i = p.position
        start = max(i - 11, int(np.flatnonzero(docs_of == docs_of[i])[0]))   # 12 tokens
        assert p.context_tokens == [shown[j] for j in ids[start:i + 1]]
        assert p.context == "".join(p.context_tokens) and p.document == docs_of[i]
        assert p.target == lms["targets"][i]
        if p.target >= 0:
            assert p.target_token == shown[p.target]
            _close(math.log(p.p1_target), want["logp1"][i], "p1 of the target")
            _close(math.log(p.p2_target), want["logp2"][i], "p2 of the target")
        assert [s.id for s in p.top1] == want["top1"][i, :len(p.top1)].tolist()
        assert [s.id for s in p.top2] == want["top2"][i, :len(p.top2)].tolist()
    sums = {}
    for i in np.flatnonzero(has):
        sums.setdefault(int(lms["targets"][i]), []).append(want["kl12"][i])
    ranked = sorted(sums, key=lambda y: (-sum(sums[y]), y))[:10]
    assert [x.id for x in t.top_targets] == ranked
    for x in t.top_targets:
        assert x.count == len(sums[x.id]) and x.token == shown[x.id]
        _close(x.sum_kl12, sum(sums[x.id]), f"sum of KL at target {x.token}")


def test_quantised_copy_is_closer_than_the_finetune(reports):
    """Rounding to int8 moves the distributions far less than four optimiser steps: KL both
    ways, JSD and top-1 disagreement are smaller, and the perplexity ratio nearer 1."""
    q, f = reports["int8"], reports["finetune"]
    assert q.tokens.kl12_mean < 0.01 * f.tokens.kl12_mean
    assert q.tokens.kl21_mean < 0.01 * f.tokens.kl21_mean
    assert q.tokens.kl12_ci[1] < f.tokens.kl12_ci[0]          # the intervals do not meet
    assert q.tokens.jsd_mean < 0.01 * f.tokens.jsd_mean
    assert 1 - q.tokens.agreement["top1"] < 1 - f.tokens.agreement["top1"]
    assert abs(math.log(q.tokens.ppl_ratio)) < abs(math.log(f.tokens.ppl_ratio))
    assert float(q.tokens) == q.tokens.kl12_mean and float(q.kl) == pytest.approx(
        q.tokens.kl12_mean, rel=RTOL)


def test_command_line_extract_and_compare(lms, torch, tmp_path, capsys, one_torch_thread):
    """identirep extract (float64) for base and int8, then identirep compare --jsd
    --per-token FILE --json: exit 0, and the JSON and the per-position file equal torch."""
    from identirep.cli import main
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(lms["texts"]) + "\n")
    outs = {}
    for name in ("base", "int8"):
        outs[name] = tmp_path / f"{name}.safetensors"
        assert main(["extract", str(lms["dirs"][name]), "--texts", str(txt), "-o",
                     str(outs[name]), "--dtype", "float64"]) == 0
    capsys.readouterr()
    per_token = tmp_path / "per_token.npz"
    assert main(["compare", str(outs["base"]), str(outs["int8"]), "--jsd", "--per-token",
                 str(per_token), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = _oracle(lms, torch, "int8")
    tok = got["tokens"]
    _close(tok["kl12_mean"], want["kl12"].mean(), "JSON kl12_mean")
    _close(tok["jsd_mean"], want["jsd"].mean(), "JSON jsd_mean")
    has = lms["targets"] >= 0
    _close(tok["ppl1"], np.exp(-want["logp1"][has].mean()), "JSON ppl1")
    _close(tok["ppl2"], np.exp(-want["logp2"][has].mean()), "JSON ppl2")
    with np.load(per_token) as z:
        for key in ("kl12", "kl21", "jsd", "logp1", "logp2"):
            _close(z[key], want[key], f"{per_token.name}: {key}")
        np.testing.assert_array_equal(z["top1"], want["top1"])
