"""Extraction of (f, g, b) from tiny local causal LMs built from configs with fixed seeds.

Every test checks the defining identity f . g + b == the model's own logits (relative error
below 1e-4 in float32) against logits recomputed here, text by text, independently of the
extraction's built-in check.
"""
import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from identirep import IdentirepError, load_model
from identirep import _hf
from identirep import extract as ex

WORDS = 116                     # tokenizer size: 4 special tokens + WORDS words = 120
V_TOK = 4 + WORDS
TOL = 1e-4


def _texts(seed=0, n=6):
    rng = np.random.default_rng(seed)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, WORDS, rng.integers(2, 14)))
             for _ in range(n)]
    return texts + ["w1 unknownword w2"]


TEXTS = _texts()


@pytest.fixture(scope="session")
def tokenizer(transformers):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
                                       + [f"w{i}" for i in range(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A",
                                                       special_tokens=[("[BOS]", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
        eos_token="[EOS]")


SPECIAL = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, **SPECIAL)


@pytest.fixture(scope="session")
def build(tmp_path_factory, torch, transformers, tokenizer, hf_class):
    """build(kind, seed=0, vocab=V_TOK, edit=None, **config) -> directory of a saved tiny LM."""
    def _build(kind, seed=0, vocab=V_TOK, edit=None, **overrides):
        cfg_cls = hf_class(kind)
        cfg = cfg_cls(vocab_size=vocab, **overrides)
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        if edit is not None:
            edit(model)
        d = tmp_path_factory.mktemp(kind.replace("Config", "").lower())
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        return d
    return _build


def _reference_logits(transformers, torch, model_dir, texts, tokenizer):
    """The model's logits at every position of every text, each text run alone (N x V_TOK)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, **{_hf.dtype_kwarg(transformers): torch.float32})
    model.eval()
    out = []
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([tokenizer(t)["input_ids"]])
            out.append(model(input_ids=ids).logits[0, :, :V_TOK].double().numpy())
    return np.concatenate(out)


def _rel_error(recomputed, logits):
    err = np.abs(recomputed - logits).max(axis=1)
    return float((err / np.abs(logits).max(axis=1)).max())


def _recompute(e):
    z = e.f.astype(np.float64) @ e.g.astype(np.float64).T
    return z if e.b is None else z + e.b.astype(np.float64)


@pytest.fixture
def identity(transformers, torch, tokenizer):
    """identity(model_dir, extraction): relative error of f.g+b against the model's logits."""
    def _identity(model_dir, e, transform=None):
        logits = _reference_logits(transformers, torch, model_dir, TEXTS, tokenizer)
        z = _recompute(e)
        assert z.shape == logits.shape
        return _rel_error(transform(z) if transform else z, logits)
    return _identity


def _extract(d, **kw):
    kw.setdefault("progress", False)
    return ex.extract(d, TEXTS, **kw)


# ----------------------------------------------------------------------------- architectures

def test_gpt2_tied(build, identity, tokenizer):
    d = build("GPT2Config", n_embd=32, n_layer=2, n_head=2, n_positions=64,
              initializer_range=0.2, **SPECIAL)
    e = _extract(d)
    n_tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert (e.N, e.V, e.M) == (n_tokens, V_TOK, 32) and e.b is None
    assert e.f.dtype == np.float32 and e.g.dtype == np.float32
    assert e.metadata["config"]["tie_word_embeddings"] is True
    assert e.check.max_rel_error < TOL and e.check.positions == min(64, e.N)
    assert identity(d, e) < TOL
    assert e.token_ids[0] == 2 and e.labels[:3] == ["[PAD]", "[UNK]", "[BOS]"]
    assert np.array_equal(e.positions[:3], [[0, 0], [0, 1], [0, 2]])
    assert e.token_ids[e.positions[:, 0] == len(TEXTS) - 1].tolist()[:3] == [2, 5, 1]


def test_llama_untied(build, identity, torch, transformers):
    d = build("LlamaConfig", tie_word_embeddings=False, **LLAMA)
    e = _extract(d)
    assert identity(d, e) < TOL
    m = transformers.AutoModelForCausalLM.from_pretrained(d)
    assert np.array_equal(e.g, m.lm_head.weight.detach().numpy())
    assert not np.allclose(e.g, m.get_input_embeddings().weight.detach().numpy())


GEMMA2 = dict(LLAMA, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
              final_logit_softcapping=1.0)


def test_softcap_refused(build):
    d = build("Gemma2Config", **GEMMA2)
    with pytest.raises(IdentirepError) as err:
        _extract(d)
    msg = str(err.value)
    for part in ("soft-caps its logits", "final_logit_softcapping = 1.0",
                 "tanh soft-capping makes log p non-linear in f(x).g(y)",
                 "outside the softmax-linear family", "allow_softcap=True"):
        assert part in msg


def test_softcap_allowed_gives_precap_factors(build, identity):
    d = build("Gemma2Config", **GEMMA2)
    e = _extract(d, allow_softcap=True)
    assert identity(d, e, transform=lambda z: np.tanh(z)) < TOL   # cap c = 1
    assert identity(d, e) > 1e-2        # the cap matters: pre-cap logits are not the logits
    assert e.metadata["final_logit_softcapping"] == 1.0
    assert "ignore the tanh cap" in e.metadata["softcap_ignored"]


def test_lm_head_bias_is_absorbed(build, identity, torch):
    def random_bias(model):
        with torch.no_grad():
            model.lm_head.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(5))
    d = build("PhiConfig", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2,
              edit=random_bias, **SPECIAL)
    e = _extract(d)
    assert e.b is not None and e.b.shape == (V_TOK,) and np.abs(e.b).max() > 0.5
    assert e.metadata["bias"] is True
    assert identity(d, e) < TOL


def test_padded_vocabulary_matches_truncated_model(build, identity, torch):
    padded = build("LlamaConfig", vocab=V_TOK + 8, tie_word_embeddings=False, **LLAMA)

    def truncate_from_padded(model):
        from transformers import AutoModelForCausalLM
        src = AutoModelForCausalLM.from_pretrained(padded).state_dict()
        state = {k: v[:V_TOK] if v.shape[:1] == (V_TOK + 8,) else v for k, v in src.items()}
        model.load_state_dict(state)
    exact = build("LlamaConfig", tie_word_embeddings=False, edit=truncate_from_padded, **LLAMA)
    a, b = _extract(padded), _extract(exact)
    assert a.V == V_TOK and a.metadata["vocab_padding_rows_dropped"] == 8
    assert a.metadata["lm_head_rows"] == V_TOK + 8 and "dropped" in a.metadata["vocab_padding_note"]
    assert b.metadata["vocab_padding_rows_dropped"] == 0
    np.testing.assert_array_equal(a.g, b.g)
    np.testing.assert_allclose(a.f, b.f, rtol=0, atol=1e-6)
    assert identity(padded, a) < TOL


@pytest.mark.parametrize("kind, scaling, factor", [
    ("CohereConfig", {"logit_scale": 0.25}, 0.25),
    ("GraniteConfig", {"logits_scaling": 4.0, "embedding_multiplier": 2.0,
                       "residual_multiplier": 0.5, "attention_multiplier": 0.125}, 0.25),
])
def test_logit_scaling_is_folded_into_f(build, identity, kind, scaling, factor, monkeypatch):
    d = build(kind, **LLAMA, **scaling)
    e = _extract(d)
    assert e.metadata["logit_scale_folded"] == pytest.approx(factor)
    assert "folded into f and b" in e.metadata["logit_scaling"]
    assert identity(d, e) < TOL
    # without the fold, the check catches the scale and names it
    monkeypatch.setattr(_hf, "LOGIT_SCALES", ())
    with pytest.raises(IdentirepError, match=r"extraction check failed .* logits are 0\.25 x "
                                             r"\(f\.g \+ b\) .* logit scaling identirep does not know"):
        _extract(d)


def test_minicpm_hidden_scaling_is_captured(build, identity):
    d = build("MiniCPM3Config", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
              initializer_range=0.2, kv_lora_rank=8, q_lora_rank=16, qk_nope_head_dim=4,
              qk_rope_head_dim=4, v_head_dim=8, dim_model_base=8, **SPECIAL)
    e = _extract(d)
    assert e.metadata["logit_scale_folded"] == 1.0
    assert "hidden_size/dim_model_base=4.0" in e.metadata["hidden_scaling"]
    assert identity(d, e) < TOL


# ----------------------------------------------------------------------------- behaviour

@pytest.fixture(scope="session")
def gpt2_pair(build):
    kw = dict(n_embd=32, n_layer=2, n_head=2, n_positions=64, initializer_range=0.2, **SPECIAL)
    return build("GPT2Config", seed=1, **kw), build("GPT2Config", seed=2, **kw)


def test_two_seeds_are_ready_for_comparison(gpt2_pair):
    a, b = (_extract(d) for d in gpt2_pair)
    assert (a.N, a.V) == (b.N, b.V)
    assert np.array_equal(a.token_ids, b.token_ids) and a.labels == b.labels
    assert a.metadata["inputs_sha256"] == b.metadata["inputs_sha256"]
    assert not np.allclose(a.f, b.f)
    ma, mb = a.to_model(), b.to_model()
    assert (ma.N, ma.V) == (mb.N, mb.V)


def test_batching_and_padding_do_not_change_f(gpt2_pair):
    one = _extract(gpt2_pair[0], batch_size=1)
    many = _extract(gpt2_pair[0], batch_size=3)
    assert one.metadata["padding_positions_skipped"] == 0
    assert many.metadata["padding_positions_skipped"] > 0
    np.testing.assert_allclose(one.f, many.f, rtol=0, atol=1e-5)


def test_text_file_output_file_and_progress(gpt2_pair, tmp_path):
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS[:3]) + "\n\n   \n" + TEXTS[3] + "\n")
    calls = []
    e = ex.extract(gpt2_pair[0], txt, tmp_path / "out.safetensors",
                   progress=lambda done, total: calls.append((done, total)))
    assert e.metadata["n_texts"] == 4 and calls[-1] == (e.N, e.N)
    m = load_model(tmp_path / "out.safetensors")
    np.testing.assert_array_equal(m.f, e.f)
    assert m.labels == e.labels and m.metadata["check"]["positions"] == e.check.positions
    assert m.name == gpt2_pair[0].name


def test_bfloat16_extraction(gpt2_pair, identity, ml_dtypes):
    e = _extract(gpt2_pair[0], dtype="bfloat16")
    assert e.f.dtype == ml_dtypes.bfloat16 and e.metadata["stored_dtype"] == "bfloat16"
    assert e.check.tolerance == ex.CHECK_TOLERANCE["bfloat16"]
    assert identity(gpt2_pair[0], e) < ex.CHECK_TOLERANCE["bfloat16"]


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_other_dtypes(gpt2_pair, identity, dtype):
    e = _extract(gpt2_pair[0], dtype=dtype)
    assert e.f.dtype == np.dtype(dtype) and e.g.dtype == np.dtype(dtype)
    assert e.check.max_rel_error < ex.CHECK_TOLERANCE[dtype]
    assert identity(gpt2_pair[0], e) < max(ex.CHECK_TOLERANCE[dtype], TOL)


def test_max_length_truncates(gpt2_pair, tokenizer):
    e = _extract(gpt2_pair[0], max_length=4, check_positions=3)
    lengths = [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    assert e.N == sum(min(n, 4) for n in lengths)
    assert e.metadata["texts_at_max_length"] == sum(n >= 4 for n in lengths)
    assert e.check.positions == 3
    assert _extract(gpt2_pair[0], max_length=1000).metadata["max_length"] == 64  # n_positions


# ----------------------------------------------------------------------------- errors and CLI

def test_bad_arguments(gpt2_pair, tmp_path):
    d = gpt2_pair[0]
    cases = [
        (dict(model_dir=tmp_path, texts=TEXTS), "is not a local model directory .no config.json"),
        (dict(model_dir=d, texts=[]), "texts is empty"),
        (dict(model_dir=d, texts=[1, 2]), "texts must be a list of strings"),
        (dict(model_dir=d, texts=str(tmp_path / "none.txt")), "is not a file"),
        (dict(model_dir=d, texts=TEXTS, dtype="int8"), "dtype must be one of float64, float32"),
        (dict(model_dir=d, texts=TEXTS, batch_size=0), "batch_size must be a positive integer"),
        (dict(model_dir=d, texts=TEXTS, device="nonsense"), "device must be a torch device"),
        (dict(model_dir=d, texts=TEXTS, seed=-1), "seed must be a non-negative integer"),
        (dict(model_dir=d, texts=TEXTS, out=tmp_path / "m.txt"), "unknown model file format"),
        (dict(model_dir=d, texts=TEXTS, out=tmp_path / "t.txt" / "m.npz"), "t.txt is a file"),
    ]
    (tmp_path / "t.txt").write_text("a file")
    for kwargs, message in cases:
        with pytest.raises(IdentirepError, match=message):
            ex.extract(**kwargs, progress=False)


def test_missing_hf_dependencies_are_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(IdentirepError, match=r'needs torch and transformers .*pip install "identirep\[hf\]"'):
        _hf.require_hf()


def test_import_does_not_load_torch():
    code = "import sys, identirep, identirep.extract; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="identirep")
    ex.add_extract_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(gpt2_pair, tmp_path, capsys):
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(TEXTS))
    out = tmp_path / "m.npz"
    assert _cli(["extract", str(gpt2_pair[1]), "--texts", str(txt), "-o", str(out),
                 "--batch-size", "2", "--check-positions", "5", "--seed", "3"]) == 0
    stdout = capsys.readouterr().out
    assert f"V={V_TOK} labels, M=32 dimensions" in stdout
    assert "check over 5 positions: max abs error" in stdout
    assert load_model(out).V == V_TOK

    assert _cli(["extract", str(tmp_path), "--texts", str(txt), "-o", str(out)]) == 2
    assert "identirep extract: error:" in capsys.readouterr().err


def test_cli_refuses_softcap_unless_allowed(build, tmp_path, capsys):
    d = build("Gemma2Config", **GEMMA2)
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(TEXTS))
    argv = ["extract", str(d), "--texts", str(txt), "-o", str(tmp_path / "g.safetensors")]
    assert _cli(argv) == 2
    assert "soft-caps its logits" in capsys.readouterr().err
    assert _cli(argv + ["--allow-softcap"]) == 0
    assert load_model(tmp_path / "g.safetensors").metadata["final_logit_softcapping"] == 1.0


def test_extract_two_seeds_and_compare_from_the_command_line(gpt2_pair, tmp_path, capsys):
    """The whole user path: two checkpoints -> two files -> one JSON report == the Python API."""
    import json

    import identirep as ir
    from identirep.cli import main
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(_texts(seed=5, n=30)))
    outs = [tmp_path / f"m{i}.safetensors" for i in (1, 2)]
    for d, out in zip(gpt2_pair, outs):
        assert main(["extract", str(d), "--texts", str(txt), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["compare", str(outs[0]), str(outs[1]), "--json", "--num-samples", "3"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = ir.compare(load_model(outs[0]), load_model(outs[1]), num_samples=3).to_dict()
    assert got["N"] == want["N"] > 33 and got["V"] == V_TOK
    for sec in ("kl", "d_llv", "d_logit", "mcca_f"):
        for k, v in want[sec].items():
            if isinstance(v, float):
                assert got[sec][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (sec, k)
            else:
                assert got[sec][k] == v
    assert got["kl"]["kl12"] > 0 and got["d_llv"]["value"] > 0


def test_missing_tokenizer_is_named_before_the_model_loads(gpt2_pair, tmp_path, monkeypatch,
                                                           transformers):
    """A model directory without tokenizer files (transformers then builds an empty tokenizer):
    the error names the missing files and the fix, and the weights are never read."""
    import shutil
    d = tmp_path / "no-tokenizer"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(gpt2_pair[0] / name, d / name)

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(IdentirepError) as e:
        _extract(d)
    msg = str(e.value)
    for part in ("has no usable tokenizer", "all special, so every text would tokenize to nothing",
                 "none of the tokenizer files (tokenizer.json, tokenizer.model",
                 "found config.json, model.safetensors", ".save_pretrained("):
        assert part in msg, msg
    # tokenizer files that hold no regular token are named as such
    (d / "vocab.json").write_text("{}")
    (d / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(IdentirepError, match=r"tokenizer files \(vocab.json\) hold no regular"):
        _extract(d)


def test_size_note_says_which_measures_a_small_extraction_misses():
    from identirep.extract import size_note
    assert size_note(1000, 50000, 768) == ""
    note = size_note(300, 50000, 768)
    assert "N >= M + 2 = 770" in note and "KL, d_logit, mCCA" in note
    note = size_note(1000, 500, 768)
    assert "V >= M + 2 = 770" in note and "d_rep's V >= M + 1 = 769" in note


# ----------------------------------------------------------------------------- the text

def _by_hand(texts):
    """(tokens, targets, documents) of ``texts`` tokenized here, without the tokenizer: [BOS]
    (id 2), then w<i> -> 4 + i, anything else [UNK] (1); the target is the next token of the
    same text, -1 after its last."""
    tokens, targets, documents = [], [], []
    for j, t in enumerate(texts):
        ids = [2] + [4 + int(w[1:]) if re.fullmatch(r"w\d+", w) and int(w[1:]) < WORDS else 1
                     for w in t.split()]
        tokens += ids
        targets += ids[1:] + [-1]
        documents += [j] * len(ids)
    return tuple(np.array(x, np.int64) for x in (tokens, targets, documents))


def test_tokens_targets_documents_and_fingerprint(gpt2_pair, tokenizer):
    e = _extract(gpt2_pair[0])
    m = e.to_model()
    tokens, targets, documents = _by_hand(TEXTS)
    assert np.array_equal(m.tokens, tokens) and np.array_equal(m.targets, targets)
    assert np.array_equal(m.documents, documents)
    assert (m.targets == -1).sum() == len(TEXTS) and m.labels[m.targets[1]] == TEXTS[0].split()[1]
    tok = e.metadata["tokenizer"]
    assert re.fullmatch(r"[0-9a-f]{64}", tok["sha256"]) and tok["size"] == V_TOK
    assert tok["fast"] is True and tok["model"] == "WordLevel"
    assert tok["pre_tokenizer"] == "WhitespaceSplit" and set(tok["parts"]) == {
        "vocabulary", "special_tokens", "pipeline"}
    assert tok["scheme"] == _hf.FINGERPRINT_SCHEME == 2
    assert tok == _hf.tokenizer_identity(tokenizer, _hf.token_strings(tokenizer, V_TOK))
    # truncated texts end where they were cut: the target after the cut is unknown (-1)
    cut = _extract(gpt2_pair[0], max_length=4, check_positions=3).to_model()
    keep = np.concatenate([np.flatnonzero(documents == j)[:4] for j in range(len(TEXTS))])
    ends = np.r_[cut.documents[1:] != cut.documents[:-1], True]
    assert np.array_equal(cut.tokens, tokens[keep])
    assert np.array_equal(cut.targets, np.where(ends, -1, tokens[np.minimum(keep + 1, len(tokens) - 1)]))
    assert cut.metadata["tokenizer"] == tok        # tokenizing does not change the fingerprint


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ""])
def test_text_arrays_are_stored_in_every_format(gpt2_pair, tmp_path, suffix):
    e = _extract(gpt2_pair[0], out=tmp_path / f"m{suffix}")
    m = load_model(tmp_path / f"m{suffix}")
    want = e.to_model()
    for k in ("tokens", "targets", "documents"):
        assert np.array_equal(getattr(m, k), getattr(want, k)), k
    assert m.metadata["tokenizer"] == e.metadata["tokenizer"]


@pytest.mark.parametrize("key, value, message", [
    ("targets", lambda m: m.targets[:-1], r"targets has shape \(\d+,\), but the model has N"),
    ("targets", lambda m: np.where(m.targets < 0, V_TOK, m.targets), r"outside \[-1, 120\)"),
    ("tokens", lambda m: m.tokens.astype(np.float64), r"tokens has dtype float64"),
])
def test_hostile_text_arrays_in_an_extracted_file(gpt2_pair, tmp_path, key, value, message):
    _extract(gpt2_pair[0], out=tmp_path / "m.npz")
    m = load_model(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[key] = value(m)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(IdentirepError, match=message):
        load_model(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- tokenizers

def _tokenizer(transformers, rename=None, lowercase=False, eos="[EOS]", pad="[PAD]"):
    """The test tokenizer, with word ``rename = (old, new)`` renamed, a lowercasing
    normalizer, another end-of-text token, or another padding token (None: none)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + [f"w{i}" for i in range(WORDS)]
    if rename:
        words[words.index(rename[0])] = rename[1]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A",
                                                       special_tokens=[("[BOS]", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token=eos,
        **({} if pad is None else {"pad_token": pad}))


def _with_tokenizer(src, tok, d):
    """A copy of model directory ``src`` with tokenizer ``tok``."""
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, d / name)
    tok.save_pretrained(d)
    return d


def test_same_tokenizer_twice_one_fingerprint_any_change_another(gpt2_pair, transformers):
    def identity(tok):
        return _hf.tokenizer_identity(tok, _hf.token_strings(tok, len(tok)))
    loaded = [identity(transformers.AutoTokenizer.from_pretrained(d)) for d in gpt2_pair]
    assert loaded[0] == loaded[1]                       # two directories, one tokenizer
    base = identity(_tokenizer(transformers))
    assert base["sha256"] == loaded[0]["sha256"]
    changed = {"renamed": identity(_tokenizer(transformers, rename=("w50", "x50"))),
               "lowercase": identity(_tokenizer(transformers, lowercase=True)),
               "eos": identity(_tokenizer(transformers, eos="[PAD]"))}
    parts = {k: {p for p in base["parts"] if base["parts"][p] != v["parts"][p]}
             for k, v in changed.items()}
    assert parts == {"renamed": {"vocabulary", "pipeline"}, "lowercase": {"pipeline"},
                     "eos": {"special_tokens"}}
    assert all(v["sha256"] != base["sha256"] for v in changed.values())


def test_differing_tokenizers_are_refused_naming_the_token(gpt2_pair, transformers, tmp_path,
                                                           capsys):
    import identirep as ir
    from identirep.cli import main
    other = _with_tokenizer(gpt2_pair[1], _tokenizer(transformers, rename=("w50", "x50")),
                            tmp_path / "renamed")
    lower = _with_tokenizer(gpt2_pair[1], _tokenizer(transformers, lowercase=True),
                            tmp_path / "lower")
    paths = [tmp_path / f"{n}.safetensors" for n in ("a", "renamed", "lower")]
    for d, p in zip((gpt2_pair[0], other, lower), paths):
        _extract(d, out=p, check_positions=4)
    a, b, c = (load_model(p) for p in paths)
    named = r"tokenizers differ .*: token id 54 is 'w50' in the first and 'x50' in the second"
    for call in (lambda: ir.compare(a, b), lambda: ir.matrix([a, b]), lambda: ir.kl(a, b)):
        with pytest.raises(IdentirepError, match=named) as err:
            call()
        assert "--allow-tokenizer-mismatch" in err.value.fix
    for argv in (["compare", str(paths[0]), str(paths[1])],
                 ["matrix", str(paths[0]), str(paths[1]), "--no-plots"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "token id 54 is 'w50' in the first and 'x50' in the second" in err, err
    # the same tokenizer in two directories: accepted
    ir.kl(a, _extract(gpt2_pair[1], check_positions=4).to_model())
    # the same strings, other settings: compared, with a note saying what differs
    said = (r"their 120 token strings are equal: their settings differ \(pipeline\).*input "
            r"tokens are equal \(checked\)")
    assert any(re.search(said, n) for n in ir.compare(a, c, num_samples=20).notes)
    assert any(re.search(said, n) for n in ir.matrix([a, c], num_samples=20).notes)


def test_differing_vocabularies_are_compared_when_asked(gpt2_pair, transformers, tmp_path,
                                                        capsys):
    import json

    import identirep as ir
    from identirep.cli import main
    other = _with_tokenizer(gpt2_pair[1], _tokenizer(transformers, rename=("w50", "x50")),
                            tmp_path / "renamed")
    paths = [tmp_path / f"{n}.safetensors" for n in ("a", "renamed")]
    for d, p in zip((gpt2_pair[0], other), paths):
        _extract(d, out=p, check_positions=4)
    a, b = (load_model(p) for p in paths)
    said = "token id 54 is 'w50' in the first and 'x50' in the second"
    r = ir.compare(a, b, num_samples=20, check_tokenizer=False)
    assert any(said in n and "compared by token id" in n for n in r.notes), r.notes
    assert r.tokens is not None and r.kl.kl12 > 0
    assert any(said in n for n in ir.matrix([a, b], num_samples=20,
                                            check_tokenizer=False).notes)
    with ir.allow_tokenizer_mismatch():      # a measure on its own: the note as a warning
        for backend, rel in (("cpu", 1e-12), ("reference", 1e-6)):   # the float32 pass's
            with pytest.warns(ir.IdentirepWarning, match=re.escape(said) + ".*carries no notes"):
                assert ir.kl(a, b, backend=backend).kl12 == pytest.approx(r.kl.kl12, rel=rel)
        with pytest.warns(ir.IdentirepWarning, match=re.escape(said)):
            ir.d_rep(a, b)
    with pytest.raises(IdentirepError, match=said):       # the check is back on after it
        ir.kl(a, b)
    with pytest.raises(IdentirepError, match="check_tokenizer must be True or False"):
        ir.compare(a, b, check_tokenizer="no")
    capsys.readouterr()
    assert main(["compare", *map(str, paths), "--num-samples", "20", "--json",
                 "--allow-tokenizer-mismatch"]) == 0
    assert any(said in n for n in json.loads(capsys.readouterr().out)["notes"])
    assert main(["matrix", *map(str, paths), "--num-samples", "20", "--json",
                 "--allow-tokenizer-mismatch"]) == 0
    assert any(said in n for n in json.loads(capsys.readouterr().out)["notes"])
    assert main(["matrix", *map(str, paths), "--num-samples", "20",     # the table says it too
                 "--allow-tokenizer-mismatch"]) == 0
    assert "note: " in (out := capsys.readouterr().out) and "'x50'" in out, out
    # texts that differ are refused all the same
    moved = ir.Model(b.f, b.g, b.bias, labels=b.labels, tokens=np.roll(b.tokens, 1),
                     metadata=b.metadata)
    with pytest.raises(IdentirepError, match="extracted on different texts"):
        ir.compare(a, moved, check_tokenizer=False)


@pytest.mark.parametrize("pad", ["[PAD]", None])
def test_a_padding_token_set_to_eos_is_the_same_tokenizer(gpt2_pair, transformers, tmp_path,
                                                           pad):
    """The usual fine-tuning recipe (pad_token = eos_token) leaves the fingerprint as it is:
    padding never reaches an extracted input."""
    import identirep as ir

    def identity(tok):
        return _hf.tokenizer_identity(tok, _hf.token_strings(tok, len(tok)))
    base, tuned = _tokenizer(transformers, pad=pad), _tokenizer(transformers, pad=pad)
    tuned.pad_token = tuned.eos_token
    assert tuned.pad_token_id == 3
    assert identity(tuned) == identity(base)
    if pad is None:
        return
    d = _with_tokenizer(gpt2_pair[1], tuned, tmp_path / "tuned")
    a = _extract(gpt2_pair[0], check_positions=4).to_model()
    b = _extract(d, check_positions=4).to_model()
    r = ir.compare(a, b, num_samples=20)
    assert r.tokens is not None and not any("tokenizer" in n for n in r.notes)
    ir.matrix([a, b], num_samples=20)


# ----------------------------------------------------------------------------- revisions

def _copy_model(src, d):
    d.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        shutil.copy(p, d / p.name)
    return d


def test_revision_in_a_hugging_face_cache_folder(gpt2_pair, tmp_path):
    repo = tmp_path / "models--org--tiny"
    commits = ["a1" * 20, "b2" * 20]
    for commit, src in zip(commits, gpt2_pair):
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for p in src.iterdir():              # as the hub client lays it out: links to blobs
            blob = repo / "blobs" / f"{commit[:4]}-{p.name}"
            blob.parent.mkdir(exist_ok=True)
            shutil.copy(p, blob)
            (snap / p.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commits[1])
    (repo / "refs" / "v1").write_text(commits[0])
    old, new = (_extract(d, check_positions=4) for d in gpt2_pair)
    assert not np.allclose(old.f, new.f, atol=1e-3)
    for revision, want, commit in (("v1", old, commits[0]), ("b2b2b2", new, commits[1]),
                                   (None, new, commits[1])):
        e = _extract(repo, revision=revision, check_positions=4)
        np.testing.assert_allclose(e.f, want.f, rtol=0, atol=1e-6)
        rev = e.metadata["revision"]
        assert rev == {"requested": revision or "main", "commit": commit,
                       "source": "huggingface cache", "repository": str(repo.resolve())}
        assert e.metadata["name"] == f"org/tiny@{revision or 'main'}"
        assert e.metadata["model_dir"] == str(repo.resolve())
    with pytest.raises(IdentirepError, match=r"has no revision 'v2': .*refs: main, v1"):
        _extract(repo, revision="v2")
    with pytest.raises(IdentirepError, match=r"no branch, tag or commit is named so"):
        _extract(repo, revision="--help")
    # a plain directory has no revisions
    with pytest.raises(IdentirepError, match=r"is neither a Hugging Face cache repository "
                                             r"folder .* nor inside a git repository"):
        _extract(gpt2_pair[0], revision="v1")


def _git(repo, *args):
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_revision_in_a_git_repository(gpt2_pair, tmp_path, capsys):
    from identirep.cli import main
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "trunk")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "empty")
    _git(repo, "tag", "v0")
    model = repo / "ckpt"                          # the model in a folder of the repository
    for tag, src in (("v1", gpt2_pair[0]), ("v2", gpt2_pair[1])):
        _copy_model(src, model)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", tag)
        _git(repo, "tag", tag)
    old, new = (_extract(d, check_positions=4) for d in gpt2_pair)
    e = _extract(model, revision="v1", check_positions=4)
    np.testing.assert_allclose(e.f, old.f, rtol=0, atol=1e-6)
    assert not np.allclose(e.f, new.f, atol=1e-3)
    assert e.metadata["revision"] == {"requested": "v1", "commit": _git(repo, "rev-parse", "v1"),
                                      "source": "git", "repository": str(repo.resolve()),
                                      "path": "ckpt"}
    assert e.metadata["name"] == "ckpt@v1"
    np.testing.assert_allclose(_extract(model, revision="trunk", check_positions=4).f, new.f, rtol=0, atol=1e-6)
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(TEXTS))
    out = tmp_path / "m.safetensors"
    assert main(["extract", str(model), "--texts", str(txt), "-o", str(out),
                 "--revision", _git(repo, "rev-parse", "--short", "v1")]) == 0
    assert "= commit " + _git(repo, "rev-parse", "v1")[:12] in capsys.readouterr().out
    np.testing.assert_allclose(load_model(out).f, old.f, rtol=0, atol=1e-6)
    with pytest.raises(IdentirepError, match=r"has no commit 'v9' \(branches and tags: "):
        _extract(model, revision="v9")
    with pytest.raises(IdentirepError, match=r"git archive of revision 'v0' .* failed: .*; "
                                             r"fix: check that ckpt/ exists at commit"):
        _extract(model, revision="v0")
    # a revision whose weights are a Git LFS pointer
    (model / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 9\n")
    _git(repo, "commit", "-q", "-am", "lfs")
    with pytest.raises(IdentirepError, match=r"model.safetensors is a Git LFS pointer, not the "
                                             r"file itself.*git lfs pull"):
        _extract(model, revision="trunk")
    # an error in the revision's files says which revision it is
    (model / "config.json").unlink()
    shutil.copy(gpt2_pair[1] / "model.safetensors", model)
    _git(repo, "commit", "-q", "-am", "no config")
    with pytest.raises(IdentirepError, match=r"^revision 'trunk' of .*ckpt \(commit [0-9a-f]{12}\):"
                                             r" .* is not a local model directory"):
        _extract(model, revision="trunk")


def test_fingerprint_of_a_tokenizer_without_backend():
    """A slow (Python) tokenizer has no tokenizer.json: its class, SentencePiece model and
    boolean settings make the pipeline part; its location does not enter."""
    class Slow:
        all_special_ids = [0]
        special_tokens_map = {"unk_token": "<unk>"}

        def __init__(self, proto=b"model", lower=False, path="/a"):
            self.sp_model = type("SP", (), {"serialized_model_proto": lambda s: proto})()
            self.init_kwargs = {"do_lower_case": lower, "vocab_file": path}

    def sha(tok, strings=("<unk>", "a", "b")):
        return _hf.tokenizer_identity(tok, list(strings))
    base = sha(Slow())
    assert base["fast"] is False and base["class"] == "Slow" and base["size"] == 3
    assert sha(Slow(path="/elsewhere")) == base
    for other in (sha(Slow(proto=b"other")), sha(Slow(lower=True))):
        assert other["parts"]["pipeline"] != base["parts"]["pipeline"]
        assert other["sha256"] != base["sha256"]
    assert sha(Slow(), ("<unk>", "a", "c"))["parts"]["vocabulary"] != base["parts"]["vocabulary"]
