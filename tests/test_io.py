"""Model files: round trips in the three layouts, bfloat16 handling, and every error message."""
import json
import re

import numpy as np
import pytest

import identirep.io as iio
from identirep import IdentirepError, Model, load_metadata, load_model, save_model

FORMATS = {"safetensors": "m.safetensors", "npz": "m.npz", "dir": "m"}


def _model(bias=True, labels=True, dtype=np.float32, seed=0, N=7, V=11, M=5):
    rng = np.random.default_rng(seed)
    return Model(
        rng.standard_normal((N, M)).astype(dtype),
        rng.standard_normal((V, M)).astype(dtype),
        rng.standard_normal(V).astype(dtype) if bias else None,
        name="toy",
        labels=[f"tok{i}" for i in range(V)] if labels else None,
        metadata={"source": "test", "n": 3})


def _same_arrays(a: Model, b: Model):
    for x, y in ((a.f, b.f), (a.g, b.g), (a.bias, b.bias)):
        if x is None:
            assert y is None
            continue
        assert y.dtype == x.dtype and y.shape == x.shape
        assert np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("labels", [True, False])
def test_round_trip(tmp_path, fmt, bias, labels):
    m = _model(bias=bias, labels=labels)
    path = save_model(m, tmp_path / FORMATS[fmt], metadata={"extra": [1, 2]})
    back = load_model(path)
    _same_arrays(m, back)
    assert back.labels == m.labels
    assert back.name == "toy"
    assert back.metadata == {"source": "test", "n": 3, "extra": [1, 2], "name": "toy"}
    assert load_metadata(path) == back.metadata
    assert load_model(path, name="other").name == "other"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dtype_is_kept(tmp_path, fmt, dtype):
    m = _model(dtype=dtype)
    _same_arrays(m, load_model(save_model(m, tmp_path / FORMATS[fmt])))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_kept_with_ml_dtypes(tmp_path, fmt, ml_dtypes):
    m = _model(dtype=ml_dtypes.bfloat16)
    back = load_model(save_model(m, tmp_path / FORMATS[fmt]))
    assert back.f.dtype == ml_dtypes.bfloat16
    _same_arrays(m, back)
    assert "converted" not in back.metadata and "storage" not in back.metadata


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_widened_without_ml_dtypes(tmp_path, fmt, ml_dtypes, monkeypatch):
    m = _model(dtype=ml_dtypes.bfloat16)
    path = save_model(m, tmp_path / FORMATS[fmt])
    monkeypatch.setattr(iio, "_ml_dtypes", lambda: None)
    back = load_model(path)
    assert back.f.dtype == np.float32 and back.bias.dtype == np.float32
    assert np.array_equal(back.f, m.f.astype(np.float32))
    assert np.array_equal(back.g, m.g.astype(np.float32))
    assert set(back.metadata["converted"]) == {"f", "g", "b"}
    assert "bfloat16 -> float32" in back.metadata["converted"]["f"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("have_ml_dtypes", [True, False])
def test_torch_bfloat16_saved_as_bfloat16(tmp_path, fmt, have_ml_dtypes, torch, monkeypatch,
                                          request):
    if have_ml_dtypes:
        request.getfixturevalue("ml_dtypes")
    else:
        monkeypatch.setattr(iio, "_ml_dtypes", lambda: None)
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(6, 4, generator=gen).bfloat16()
    g = torch.randn(9, 4, generator=gen).bfloat16()
    path = save_model(Model(f, g), tmp_path / FORMATS[fmt])
    back = load_model(path)
    assert np.array_equal(np.asarray(back.f, dtype=np.float32), f.float().numpy())
    assert np.array_equal(np.asarray(back.g, dtype=np.float32), g.float().numpy())
    if fmt == "safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="np") as fh:
            assert fh.get_slice("f").get_dtype() == "BF16"


def _write_raw(tmp_path, fmt, arrays, name="raw"):
    if fmt == "safetensors":
        import safetensors.numpy
        p = tmp_path / f"{name}.safetensors"
        safetensors.numpy.save_file(arrays, str(p))
    elif fmt == "npz":
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
    else:
        p = tmp_path / name
        p.mkdir()
        for k, a in arrays.items():
            np.save(p / f"{k}.npy", a)
    return p


@pytest.mark.parametrize("fmt", FORMATS)
def test_bias_alias_and_plain_files(tmp_path, fmt):
    rng = np.random.default_rng(1)
    f, g, b = (rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (6, 3), (6,)))
    m = load_model(_write_raw(tmp_path, fmt, {"f": f, "g": g, "bias": b}))
    assert np.array_equal(m.bias, b) and m.labels is None and m.name == "raw"
    assert m.metadata == {}


def test_directory_overwrite_drops_stale_files(tmp_path):
    save_model(_model(bias=True, labels=True), tmp_path / "m")
    save_model(_model(bias=False, labels=False, seed=3), tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.bias is None and back.labels is None
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["f.npy", "g.npy", "meta.json"]


def test_safetensors_layout_is_documented(tmp_path):
    from safetensors import safe_open
    path = save_model(_model(), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="np") as fh:
        assert sorted(fh.keys()) == ["b", "f", "g"]
        strings = fh.metadata()
    assert json.loads(strings["identirep.labels"])[:2] == ["tok0", "tok1"]
    assert json.loads(strings["identirep.metadata"])["source"] == "test"


def test_npz_layout_is_documented(tmp_path):
    path = save_model(_model(), tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["b", "f", "g", "labels", "meta"]
        assert z["labels"].dtype.kind == "U"
        assert json.loads(str(z["meta"]))["n"] == 3


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name", ["none.safetensors", "none.npz", "none"])
def test_missing_file(tmp_path, name):
    with pytest.raises(IdentirepError, match=r"none.*: no such file or directory"):
        load_model(tmp_path / name)
    with pytest.raises(IdentirepError, match="no such file or directory"):
        load_metadata(tmp_path / name)


@pytest.mark.parametrize("name", ["model.pt", "model"])
def test_unknown_format(tmp_path, name):
    (tmp_path / name).write_bytes(b"\0" * 16)
    with pytest.raises(IdentirepError) as e:
        load_model(tmp_path / name)
    msg = str(e.value)
    assert "unknown model file format" in msg
    assert ".safetensors (preferred), .npz, or a directory of .npy files" in msg
    with pytest.raises(IdentirepError, match="unknown model file format '.h5'"):
        save_model(_model(), tmp_path / "out.h5")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("missing", ["f", "g"])
def test_missing_key_lists_found_keys(tmp_path, fmt, missing):
    rng = np.random.default_rng(2)
    arrays = {"f": rng.standard_normal((4, 3)), "g": rng.standard_normal((5, 3)),
              "weights": rng.standard_normal(5)}
    del arrays[missing]
    path = _write_raw(tmp_path, fmt, arrays)
    present = sorted(arrays)
    with pytest.raises(IdentirepError) as e:
        load_model(path)
    msg = str(e.value)
    assert f"no array '{missing}'" in msg
    assert f"found {present}" in msg
    assert "'f' (N x M) and 'g' (V x M)" in msg


@pytest.mark.parametrize("fmt", FORMATS)
def test_both_b_and_bias(tmp_path, fmt):
    arrays = {"f": np.ones((2, 2)), "g": np.eye(2), "b": np.zeros(2), "bias": np.zeros(2)}
    with pytest.raises(IdentirepError, match="holds both 'b' and 'bias'; keep one"):
        load_model(_write_raw(tmp_path, fmt, arrays))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arrays, message", [
    ({"f": np.ones((4, 3)), "g": np.ones((5, 2))},
     "f has 3 dimensions but g has 2; f.x. and g.y. must live in the same space"),
    ({"f": np.ones((4, 3)), "g": np.ones((5, 3)), "b": np.ones(4)},
     "bias has 4 entries but g has 5 labels"),
    ({"f": np.ones(4), "g": np.ones((5, 3))}, r"f \(embeddings\) must be a 2-d array"),
    ({"f": np.ones((4, 3), dtype=np.int32), "g": np.ones((5, 3))}, "f .embeddings. has dtype int32"),
])
def test_wrong_shapes_are_reported_with_the_path(tmp_path, fmt, arrays, message):
    path = _write_raw(tmp_path, fmt, arrays)
    with pytest.raises(IdentirepError, match=message) as e:
        load_model(path)
    assert str(e.value).startswith(str(path))


def test_wrong_label_count(tmp_path):
    path = save_model(_model(labels=False), tmp_path / "m")
    (path / "labels.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(IdentirepError, match="2 label names given for 11 labels"):
        load_model(path)


def test_corrupt_files(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(IdentirepError, match="is not a readable safetensors file"):
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(IdentirepError, match="is not a readable safetensors file"):
        load_metadata(tmp_path / "bad.safetensors")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(IdentirepError, match="is not a readable .npz file"):
        load_model(tmp_path / "bad.npz")
    path = save_model(_model(), tmp_path / "m")
    (path / "meta.json").write_text("{oops")
    with pytest.raises(IdentirepError, match="meta.json is not valid JSON"):
        load_model(path)


def test_object_arrays_are_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, f=np.ones((2, 2)), g=np.array([object(), object()], dtype=object))
    with pytest.raises(IdentirepError, match="unreadable array"):
        load_model(p)


def test_save_argument_errors(tmp_path):
    with pytest.raises(IdentirepError, match="save_model needs an identirep.Model, got dict"):
        save_model({"f": 1}, tmp_path / "m.npz")
    with pytest.raises(IdentirepError, match="metadata must be a dict, got list"):
        save_model(_model(), tmp_path / "m.npz", metadata=[1])
    with pytest.raises(IdentirepError, match="metadata must be JSON-serialisable"):
        save_model(_model(), tmp_path / "m.safetensors", metadata={"x": object()})
    assert not (tmp_path / "m.safetensors").exists()
    (tmp_path / "plainfile").write_text("x")
    with pytest.raises(IdentirepError, match="unknown model file format"):
        save_model(_model(), tmp_path / "plainfile")


def test_numpy_values_in_metadata_are_stored(tmp_path):
    path = save_model(_model(), tmp_path / "m.safetensors",
                      metadata={"err": np.float32(0.5), "ids": np.arange(3)})
    meta = load_metadata(path)
    assert meta["err"] == 0.5 and meta["ids"] == [0, 1, 2]


def test_check_output_refuses_what_save_model_could_not_write(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "d.npz").mkdir()
    for path, message in ((tmp_path / "m.h5", "unknown model file format '.h5'"),
                          (tmp_path / "file" / "m.npz", "file is a file, not a directory"),
                          (tmp_path / "file" / "deeper" / "m", "file is a file, not a directory"),
                          (tmp_path / "d.npz", "d.npz is a directory; give a file name")):
        with pytest.raises(IdentirepError, match=message):
            iio.check_output(path)
    # what save_model writes: a new file in a directory still to be created, a directory
    for path in (tmp_path / "new" / "sub" / "m.safetensors", tmp_path / "new_dir"):
        assert iio.check_output(path) == path
        save_model(_model(), path)
    assert not (tmp_path / "d.npz" / "x").exists()


def test_masked_labels_dropped_from_every_model_compared(tmp_path):
    a, b = _model(seed=1, labels=False), _model(seed=2, labels=False)
    ba, bb = np.array(a.bias), np.array(b.bias)
    ba[[1, 4]] = -np.inf
    bb[[4, 9]] = -np.inf
    paths = [_write_raw(tmp_path, "safetensors", {"f": a.f, "g": a.g, "b": ba}, "a"),
             _write_raw(tmp_path, "npz", {"f": b.f, "g": b.g, "b": bb}, "b")]
    with pytest.raises(IdentirepError, match=r"a.safetensors: bias is -inf for 2 label.s. "
                                             r".ids \[1, 4\]."):
        load_model(paths[0])
    assert load_model(paths[0], drop_masked_labels=True).dropped_labels.tolist() == [1, 4]
    with pytest.raises(IdentirepError, match="bias is -inf"):
        iio.load_models(paths)
    ma, mb = iio.load_models(paths, drop_masked_labels=True)
    for m, src in ((ma, a), (mb, b)):   # the union, from both: the same 8 labels
        assert m.V == 8 and m.dropped_labels.tolist() == [1, 4, 9]
        assert np.array_equal(m.g, np.delete(np.asarray(src.g), [1, 4, 9], axis=0))
        assert np.isfinite(m.bias).all()
    # what was dropped is stored with the model
    again = load_model(save_model(ma, tmp_path / "kept.safetensors"))
    assert again.V == 8 and again.metadata["masked_labels_dropped"]["ids"] == [1, 4, 9]


# ------------------------------------------------ per-input arrays: tokens, targets, documents

def _texted(N=7, V=11, seed=0, **kw):
    """A model whose 7 inputs are two texts: tokens, the next token as target (-1 at each
    text's end), the text index."""
    m = _model(N=N, V=V, seed=seed, **kw)
    tokens = np.array([3, 5, 2, 8, 1, 9, 4])[:N]
    documents = np.array([0, 0, 0, 2, 2, 2, 2])[:N]
    targets = np.array([5, 2, -1, 1, 9, 4, -1])[:N]
    return Model(m.f, m.g, m.bias, name=m.name, labels=m.labels, metadata=m.metadata,
                 tokens=tokens.astype(np.int32), targets=targets, documents=documents)


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_arrays_round_trip(tmp_path, fmt):
    m = _texted()
    assert all(getattr(m, k).dtype == np.int64 for k in ("tokens", "targets", "documents"))
    assert repr(m) == "Model(toy: N=7, V=11, M=5, bias)"
    back = load_model(save_model(m, tmp_path / FORMATS[fmt]))
    for k in ("tokens", "targets", "documents"):
        got = getattr(back, k)
        assert got.dtype == np.int64 and np.array_equal(got, getattr(m, k)), k
    # a model without them loads without them, and leaves no stale .npy behind
    plain = load_model(save_model(_model(), tmp_path / FORMATS[fmt]))
    assert plain.tokens is None and plain.targets is None and plain.documents is None
    if fmt == "dir":
        assert not any((tmp_path / "m" / f"{k}.npy").exists()
                       for k in ("tokens", "targets", "documents"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("key, value, message", [
    ("tokens", np.arange(6), r"tokens has shape \(6,\), but the model has N = 7 inputs"),
    ("targets", np.full(7, 11), r"targets\[0\] is 11, outside \[-1, 11\)"),
    ("targets", np.full(7, -2), r"targets\[0\] is -2, outside \[-1, 11\)"),
    ("tokens", np.zeros(7, np.float32), r"tokens has dtype float32; it must hold integers"),
    ("tokens", np.zeros(7, bool), r"tokens has dtype bool; it must hold integers"),
    ("documents", np.array([0, 0, 1, 1, 0, 2, 2]), r"documents decreases at position 4"),
    ("documents", np.zeros((7, 1), np.int64), r"documents has shape \(7, 1\)"),
    ("tokens", np.full(7, 2**64 - 1, np.uint64), r"tokens\[0\] is 18446744073709551615"),
])
def test_hostile_text_arrays_are_refused(tmp_path, fmt, key, value, message):
    m = _model(N=7, V=11)
    arrays = {"f": m.f, "g": m.g, key: value}
    with pytest.raises(IdentirepError, match=message) as e:
        load_model(_write_raw(tmp_path, fmt, arrays))
    assert "raw" in str(e.value) and e.value.fix


def test_text_array_sizes_are_checked_before_reading(tmp_path):
    m = _model(N=7, V=11)
    p = _write_raw(tmp_path, "dir", {"f": m.f, "g": m.g, "tokens": np.arange(7)})
    data = (p / "tokens.npy").read_bytes()
    (p / "tokens.npy").write_bytes(data[:-8])           # one entry short
    with pytest.raises(IdentirepError, match=r"tokens.npy: unreadable array 'tokens': its "
                                             r"header declares int64 \(7,\) .* truncated"):
        load_model(p)


def test_dropped_labels_renumber_tokens_and_targets(tmp_path):
    a, b = _texted(seed=1), _texted(seed=2)
    ba, bb = np.array(a.bias), np.array(b.bias)
    ba[[1, 4]] = -np.inf
    bb[[9]] = -np.inf
    paths = [_write_raw(tmp_path, fmt, {"f": m.f, "g": m.g, "b": bias, "tokens": m.tokens,
                                        "targets": m.targets, "documents": m.documents}, name)
             for m, bias, fmt, name in ((a, ba, "safetensors", "a"), (b, bb, "npz", "b"))]
    ma, mb = iio.load_models(paths, drop_masked_labels=True)
    for m, src in ((ma, a), (mb, b)):
        assert m.V == 8 and m.dropped_labels.tolist() == [1, 4, 9]
        labels = [f"tok{i}" for i in range(11) if i not in (1, 4, 9)]
        for k in ("tokens", "targets"):
            old, new = getattr(src, k), getattr(m, k)
            # a kept label keeps its name; a dropped one (or none) becomes -1
            for o, n in zip(old.tolist(), new.tolist()):
                if o < 0 or o in (1, 4, 9):
                    assert n == -1
                else:
                    assert labels[n] == src.labels[o]
        record = m.metadata["masked_labels_dropped"]
        assert record["tokens_lost"] == 3 and record["targets_lost"] == 3   # ids 1, 4, 9
        assert np.array_equal(m.documents, src.documents)
    # the renumbered arrays are stored and read back as they are
    again = load_model(save_model(ma, tmp_path / "kept"))
    assert np.array_equal(again.tokens, ma.tokens) and again.V == 8


def test_models_on_different_texts_or_tokenizers_are_refused():
    import identirep as ir
    from identirep.model import check_pair, check_same_tokenizer, tokenizer_note
    a = _texted(seed=1)
    tokens = a.tokens.copy()
    tokens[4] = 7
    other = Model(_texted(seed=2).f, a.g, a.bias, labels=a.labels, tokens=tokens)
    for call in (lambda: ir.compare(a, other), lambda: ir.matrix([a, a, other]),
                 lambda: ir.kl(a, other)):
        with pytest.raises(IdentirepError, match=r"extracted on different texts: their input "
                                                 r"tokens first differ at position 4, text 2: "
                                                 r"token 1 'tok1' in the first and 7 'tok7'"):
            call()
    docs = Model(other.f, a.g, a.bias, documents=[0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(IdentirepError, match="text boundaries first differ at position 2"):
        check_pair(a, docs)
    check_pair(a, Model(other.f, a.g, a.bias))          # nothing to compare: accepted
    # tokenizer fingerprints: equal, absent on one side, different
    tok = {"sha256": "ab" * 32, "size": 11}
    fa = Model(a.f, a.g, labels=a.labels, metadata={"tokenizer": tok})
    labels = list(a.labels)
    labels[6] = "other"
    fb = Model(a.f, a.g, labels=labels, metadata={"tokenizer": dict(tok, sha256="cd" * 32)})
    check_same_tokenizer(fa, Model(a.f, a.g, labels=a.labels, metadata={"tokenizer": tok}))
    check_same_tokenizer(fa, Model(a.f, a.g, labels=labels))
    with pytest.raises(IdentirepError, match=r"tokenizers differ .*: token id 6 is 'tok6' in "
                                             r"the first and 'other' in the second"):
        ir.compare(fa, fb)
    # the same strings, other settings: accepted, with a note for the report
    fc = Model(a.f, a.g, labels=a.labels, metadata={"tokenizer": dict(tok, sha256="cd" * 32)})
    check_pair(fa, fc)
    assert re.search(r"though their 11 token strings are equal: their settings differ.*not both "
                     r"carry their input tokens", tokenizer_note(fa, fc))
    assert tokenizer_note(fa, fa) is None
    # a measure on its own has no notes: the note comes as a warning; compare's report has it
    for fn, kw in ((ir.kl, {}), (ir.d_logit, dict(backend="reference")), (ir.d_rep, {}),
                   (ir.d_llv, dict(num_samples=5, backend="reference")), (ir.engine, {})):
        with pytest.warns(ir.IdentirepWarning, match="their settings differ.*carries no "
                                                     "notes") as said:
            fn(fa, fc, **kw)
        assert len(said) == 1 and said[0].filename == __file__, fn   # this line asked
    with pytest.raises(IdentirepError, match="token id 6"):   # refused, and no warning first
        ir.kl(fa, fb, backend="reference")
    r = ir.compare(fa, fc, num_samples=5)     # no warning (filterwarnings = error): a note
    assert any("their settings differ" in n for n in r.notes)
    ir.kl(fa, fa)                             # nothing to say: no warning
    # fingerprints of another scheme (a file extracted before the padding token left it):
    # not said to differ in their settings
    fd = Model(a.f, a.g, labels=a.labels,
               metadata={"tokenizer": dict(tok, sha256="ef" * 32, scheme=2)})
    check_pair(fa, fd)
    assert re.search(r"token strings are equal: the fingerprints were made by different "
                     r"schemes \(1 and 2;", tokenizer_note(fa, fd))
    assert "settings differ" in tokenizer_note(
        fd, Model(a.f, a.g, labels=a.labels,
                  metadata={"tokenizer": dict(tok, sha256="cd" * 32, scheme=2)}))
    # neither the strings nor the fingerprints' parts: whether the vocabularies differ is
    # unknown, and refused
    bare = [Model(a.f, a.g, metadata={"tokenizer": dict(tok, sha256=h * 32)}) for h in "ab"]
    with pytest.raises(IdentirepError, match="whether the vocabularies differ cannot be told"):
        check_pair(*bare)
    with ir.allow_tokenizer_mismatch():
        check_pair(*bare)
        check_pair(fa, fb)
        # False passes the surrounding setting through (so compare's default
        # check_tokenizer=True keeps the block's override): the override stays on
        with ir.allow_tokenizer_mismatch(False):
            check_pair(fa, fb)
    with ir.allow_tokenizer_mismatch(False), pytest.raises(IdentirepError, match="token id 6"):
        check_pair(fa, fb)
