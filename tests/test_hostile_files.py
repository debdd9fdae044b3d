"""Damaged, foreign and hostile model files: each ends in an IdentirepError that says what is
wrong, quickly, and without allocating more than the arrays a model uses."""
import io
import json
import os
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest

import identirep.io as iio
from identirep import IdentirepError, load_metadata, load_model
from identirep.io import load_models

RNG = np.random.default_rng(0)
F, G, B = RNG.standard_normal((6, 3)), RNG.standard_normal((5, 3)), RNG.standard_normal(5)


# ----------------------------------------------------------------------------- file makers

def npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npy_raw(header: str, data: bytes = b"", version=(1, 0)) -> bytes:
    """A .npy stream with ``header`` as its (unchecked) header text."""
    h = header.encode("latin1") + b"\n"
    size = struct.pack("<H" if version == (1, 0) else "<I", len(h))
    return b"\x93NUMPY" + bytes(version) + size + h + data


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def member(name, data, method=0, **kw):
    """One zip member: ``data`` as stored (already compressed for method 8)."""
    return dict(name=name, data=data, method=method, flags=kw.get("flags", 0),
                crc=kw.get("crc"), size=kw.get("size"), local_name=kw.get("local_name", name))


def array_members(compress=False, **arrays):
    out = []
    for k, a in arrays.items():
        raw = npy(a)
        out.append(member(f"{k}.npy", deflate(raw) if compress else raw, 8 if compress else 0,
                          crc=zlib.crc32(raw), size=len(raw)))
    return out


def write_zip(path, members):
    """A zip archive written byte by byte, so that any field can be made wrong."""
    body, central = b"", b""
    for m in members:
        crc = zlib.crc32(m["data"]) if m["crc"] is None else m["crc"]
        size = len(m["data"]) if m["size"] is None else m["size"]
        local, name = m["local_name"].encode(), m["name"].encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, m["flags"], m["method"],
                               0, 0x21, crc, len(m["data"]), size, len(name), 0, 0, 0, 0, 0,
                               len(body)) + name
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, m["flags"], m["method"], 0, 0x21,
                            crc, len(m["data"]), size, len(local), 0) + local + m["data"]
    path.write_bytes(body + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members),
                                                  len(members), len(central), len(body), 0))
    return path


def npz(tmp_path, members, name="m.npz"):
    return write_zip(tmp_path / name, members)


def model_dir(tmp_path, files, name="m"):
    d = tmp_path / name
    d.mkdir()
    for k, data in files.items():
        (d / k).write_bytes(data)
    return d


def refused(path, fragment, reader=load_model):
    t = time.perf_counter()
    with pytest.raises(IdentirepError) as e:
        reader(path)
    assert time.perf_counter() - t < 2
    msg = str(e.value)
    assert fragment in msg, msg
    for leak in ("allow_pickle", "<ast.", "object at 0x"):
        assert leak not in msg, msg
    return msg


# ----------------------------------------------------------------------------- .npz archives

def _good():
    return array_members(f=F, g=G)


def _patch(members, i, **kw):
    members[i].update(kw)
    return members


@pytest.mark.parametrize("make, fragment", [
    (lambda: _patch(_good(), 0, crc=123), "Bad CRC-32"),
    (lambda: _patch(_good(), 0, flags=1), "encrypted"),
    (lambda: _patch(_good(), 0, method=12), "compression method 12 is not supported"),
    (lambda: _patch(_good(), 0, method=99), "compression method 99 is not supported"),
    (lambda: _patch(_good(), 0, local_name="x.npy"), "damaged"),
    (lambda: _patch(_good(), 0, size=3 * 2**30), "zip directory declares 3 GiB"),
    (lambda: array_members(compress=True, f=F, g=G)[:1] + [member(
        "g.npy", deflate(npy(G))[:20], 8, size=len(npy(G)), crc=zlib.crc32(npy(G)))], "damaged"),
    (lambda: [member("f.npy", deflate(b"x" * 50), 8, size=4 * 10**9)] + _good()[1:],
     "zip directory declares 3.73 GiB"),
    (lambda: [member("f.npy", RNG.bytes(300))] + _good()[1:], "not a valid .npy array"),
    (lambda: [member("f.npy", b"")] + _good()[1:], "empty (0 bytes)"),
    (lambda: [member("f.npy", npy(F) + b"junk")] + _good()[1:], "data after the array"),
], ids=["bad-crc", "encrypted", "bzip2", "unknown-method", "names-differ", "stored-size-lies",
        "deflate-cut", "deflate-bomb-declared", "random-bytes", "empty-member", "trailing"])
def test_damaged_npz_members(tmp_path, make, fragment):
    msg = refused(npz(tmp_path, make()), fragment)
    assert "m.npz: unreadable array 'f'" in msg or "'g'" in msg


@pytest.mark.parametrize("cut", [10, 100, -30, -5])
def test_truncated_npz(tmp_path, cut):
    good = npz(tmp_path, _good(), "good.npz").read_bytes()
    p = tmp_path / "m.npz"
    p.write_bytes(good[:cut])
    refused(p, "is not a readable .npz file")
    refused(p, "is not a readable .npz file", load_metadata)


@pytest.mark.parametrize("meta, fragment", [
    (np.array("{oops"), "'meta' is not valid JSON"),
    (np.array("[" * 5000 + "]" * 5000), "nested more than 100 levels"),
    (np.array("[" * 150 + "]" * 150), "nested more than 100 levels"),
    (np.array("[1, 2]"), "must be a JSON object"),
    (np.arange(3.0), "'meta' must be a JSON string"),
])
def test_bad_npz_meta(tmp_path, meta, fragment):
    p = npz(tmp_path, _good() + array_members(meta=meta))
    refused(p, fragment)
    refused(p, fragment, load_metadata)


def test_damaged_meta_member_refused_by_load_metadata(tmp_path):
    p = npz(tmp_path, _good() + _patch(array_members(meta=np.array("{}")), 0, crc=1))
    refused(p, "Bad CRC-32", load_metadata)


# ----------------------------------------------------------------------------- .npy headers

_HEADER = "{'descr': '<f8', 'fortran_order': False, 'shape': (6, 3), }"


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty (0 bytes)"),
    (b"\x93NUM", "not a valid .npy array"),
    (RNG.bytes(1000), "not a valid .npy array"),
    (b"\x80\x04" + RNG.bytes(100), "not a valid .npy array"),                  # a pickle
    (npy_raw(_HEADER, version=(9, 0)), "unknown .npy format version 9.0"),
    (b"\x93NUMPY\x01\x00\xff", "header truncated"),
    (npy_raw(_HEADER)[:20], "header truncated"),
    (npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (6, 3), "), "malformed .npy header"),
    (npy_raw("{'descr': '''"), "malformed .npy header"),                        # TokenError
    (npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (f(),)}"), "malformed .npy header"),
    (npy_raw("{'descr': '<f8', 'fortran_order': 0, 'shape': (6, 3)}"), "malformed .npy header"),
    (npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (-6, 3)}"), "malformed .npy header"),
    (npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (6, 3), 'x': 1}"),
     "malformed .npy header"),
    (npy_raw("[" * 300 + "]" * 300), "malformed .npy header"),
    (npy_raw("x" * 20000, version=(2, 0)), "header 20001 bytes long, over the limit of 10000"),
    (npy_raw("{'descr': '<zz', 'fortran_order': False, 'shape': (6, 3)}"), "names no valid dtype"),
    (npy_raw("{'descr': '|O', 'fortran_order': False, 'shape': (2,)}", b"\0" * 16),
     "holds Python objects"),
    (npy_raw("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,)}", b"\0" * 16),
     "identirep reads plain numeric arrays"),
    (npy_raw(_HEADER, b"\0" * 100), "declares float64 (6, 3) = 144 bytes, but only 100 bytes follow"),
    (npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (200000, 200000)}", b"\0" * 64),
     "declares float64 (200000, 200000) = 298 GiB, over the limit of 256 GiB"),
    (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 400000)}", b"\0" * 64),
     "= 149 GiB, but only 64 bytes follow"),
    (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904)}"),
     "with a dimension beyond the limit of 256 GiB"),
], ids=["empty", "short-magic", "random", "pickle", "version", "size-cut", "header-cut",
        "syntax", "token", "call", "fortran-not-bool", "negative", "extra-key", "nesting",
        "header-too-long", "dtype", "object", "structured", "data-cut", "over-limit",
        "declared-huge", "empty-but-huge-dimension"])
@pytest.mark.parametrize("fmt", ["dir", "npz"])
def test_bad_npy(tmp_path, data, fragment, fmt):
    if fmt == "dir":
        path = model_dir(tmp_path, {"f.npy": data, "g.npy": npy(G)})
        msg = refused(path, fragment)
        assert "f.npy: unreadable array 'f'" in msg
    else:
        path = npz(tmp_path, [member("f.npy", data)] + array_members(g=G))
        msg = refused(path, fragment)
        assert "m.npz: unreadable array 'f' (member f.npy)" in msg


def test_python2_header_is_read(tmp_path):
    data = npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (6L, 3L), }", F.tobytes())
    m = load_model(model_dir(tmp_path, {"f.npy": data, "g.npy": npy(G)}))
    assert np.array_equal(m.f, F)


# ----------------------------------------------------------------------------- directories

def _not_a_file(path, case):
    """Make ``path`` a link loop, a dangling link, a directory or a pipe; what is said."""
    if case == "loop":
        os.symlink(path.name, path)
        return "Too many levels of symbolic links"
    if case == "dangling":
        os.symlink("gone", path)
        return "symbolic link to a missing file (gone)"
    if case == "directory":
        path.mkdir()
        return "is a directory, not a file"
    os.mkfifo(path)
    return "not a regular file"


@pytest.mark.parametrize("case", ["loop", "dangling", "directory", "fifo"])
@pytest.mark.parametrize("name", ["f.npy", "meta.json", "labels.json"])
def test_entry_that_is_not_a_file(tmp_path, case, name):
    files = {"f.npy": npy(F), "g.npy": npy(G)}
    files.pop(name, None)
    d = model_dir(tmp_path, files)
    fragment = _not_a_file(d / name, case)
    assert name in refused(d, fragment)
    if name == "meta.json":
        refused(d, fragment, load_metadata)


@pytest.mark.parametrize("name, text, fragment", [
    ("meta.json", b'{"a": "\xff\xfe"}', "meta.json is not UTF-8 text (invalid start byte"),
    ("labels.json", b'["\xe9"]', "labels.json is not UTF-8 text"),
    ("meta.json", b"[" * 5000 + b"]" * 5000, "nested more than 100 levels"),
    ("meta.json", b'{"a":' * 120 + b"1" + b"}" * 120, "nested more than 100 levels"),
    ("meta.json", b'"text"', "must be a JSON object, got str"),
    ("meta.json", b'{"name": {"x": 1}}', "'name' is a dict, not a string"),
    ("labels.json", json.dumps([0.5, 1, 2, 3, 4]).encode(), "labels[0] is float 0.5, not a name"),
    ("labels.json", b'{"a": 1}', "stored labels: labels must be a sequence of names"),
    ("labels.json", json.dumps(["a"] * 4).encode(), "4 label names given for 5 labels"),
    ("meta.json", b'{"storage": 5}', "malformed metadata 'storage'"),
    ("meta.json", b'{"storage": {"bfloat16_as_uint16": 3}}', "malformed metadata 'storage'"),
    ("meta.json", b'{"storage": {"bfloat16_as_uint16": [["f"]]}}', "malformed metadata"),
    ("meta.json", b'{"storage": {"bfloat16_as_uint16": ["f"]}}',
     "lists 'f' as bfloat16 bits, but 'f' has dtype float64"),
])
def test_bad_json_files(tmp_path, name, text, fragment):
    d = model_dir(tmp_path, {"f.npy": npy(F), "g.npy": npy(G), name: text})
    refused(d, fragment)
    if name == "meta.json" and b"storage" not in text and b"name" not in text:
        refused(d, fragment, load_metadata)     # which drops "storage" unread


# ----------------------------------------------------------------------------- labels in all formats

def _safetensors(tmp_path, strings=None, **arrays):
    import safetensors.numpy
    p = tmp_path / "m.safetensors"
    safetensors.numpy.save_file(arrays, str(p), metadata=strings)
    return p


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "dir"])
@pytest.mark.parametrize("labels, fragment", [
    (np.array(7), None), (["a", "b"], "2 label names given for 5 labels"),
    ([1.5, 2.5, 3.5, 4.5, 5.5], None), ("abcde", None)])
def test_bad_labels(tmp_path, fmt, labels, fragment):
    if fmt == "safetensors":
        text = json.dumps(labels.tolist() if isinstance(labels, np.ndarray) else labels)
        p = _safetensors(tmp_path, {"identirep.labels": text}, f=F, g=G)
        fragment = fragment or "stored labels: "
    elif fmt == "npz":
        p = npz(tmp_path, _good() + array_members(labels=np.array(labels)))
        fragment = fragment or "'labels' must be a 1-d str array"
    else:
        text = json.dumps(labels.tolist() if isinstance(labels, np.ndarray) else labels)
        p = model_dir(tmp_path, {"f.npy": npy(F), "g.npy": npy(G), "labels.json": text.encode()})
        fragment = fragment or "stored labels: "
    refused(p, fragment)


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "dir"])
def test_integer_labels_load_as_names(tmp_path, fmt):
    # as Model(labels=...) takes them: token ids written as labels stay readable
    ids = list(range(G.shape[0]))
    if fmt == "safetensors":
        p = _safetensors(tmp_path, {"identirep.labels": json.dumps(ids)}, f=F, g=G)
    elif fmt == "npz":
        p = npz(tmp_path, _good() + array_members(labels=np.array(ids)))
    else:
        p = model_dir(tmp_path, {"f.npy": npy(F), "g.npy": npy(G),
                                 "labels.json": json.dumps(ids).encode()})
    assert load_model(p).labels == [str(i) for i in ids]


@pytest.mark.parametrize("code", [0x11000000, 0x110000, 0xD800])
@pytest.mark.parametrize("key", ["labels", "meta"])
def test_npz_text_beyond_unicode(tmp_path, key, code):
    # NumPy str arrays hold any 32-bit code: a damaged one must not reach the tables
    a = np.array(["ab"] * 5) if key == "labels" else np.array("{}")
    raw = bytearray(a.tobytes())
    raw[:4] = code.to_bytes(4, "little")
    bad = np.frombuffer(bytes(raw), dtype=a.dtype).reshape(a.shape)
    p = npz(tmp_path, _good() + array_members(**{key: bad}))
    refused(p, f"'{key}' holds invalid text (code point {code:#x} is not a Unicode character)")


# ----------------------------------------------------------------------------- safetensors

def test_bad_safetensors(tmp_path):
    good = _safetensors(tmp_path, {"identirep.metadata": "{}"}, f=F, g=G).read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    for i, data in enumerate([
            b"", good[:8], struct.pack("<Q", 10**9) + good[8:], struct.pack("<Q", 2**63) + good[8:],
            good[:8] + b"[" + good[9:], good[:-8], good + b"\0" * 8, RNG.bytes(4000)]):
        p = tmp_path / f"bad{i}.safetensors"
        p.write_bytes(data)
        refused(p, "is not a readable safetensors file")
        refused(p, "is not a readable safetensors file", load_metadata)


@pytest.mark.parametrize("key, text, fragment", [
    ("identirep.metadata", "[" * 5000 + "]" * 5000, "nested more than 100 levels"),
    ("identirep.metadata", "{" + '"a": {' * 200 + "}" * 201, "nested more than 100 levels"),
    ("identirep.metadata", "{oops", "metadata 'identirep.metadata' is not valid JSON"),
    ("identirep.metadata", "[]", "must be a JSON object"),
    ("identirep.labels", "[" * 5000 + "]" * 5000, "nested more than 100 levels"),
    ("identirep.labels", "{}", "stored labels: labels must be a sequence of names"),
])
def test_bad_safetensors_strings(tmp_path, key, text, fragment):
    p = _safetensors(tmp_path, {key: text}, f=F, g=G)
    refused(p, fragment)
    if key == "identirep.metadata":
        refused(p, fragment, load_metadata)


# ----------------------------------------------------------------------------- limits

def test_limits_are_stated_and_enforced(tmp_path, monkeypatch):
    assert iio.MAX_ARRAY_BYTES == 256 * 2**30 and iio.MAX_JSON_BYTES == 64 * 2**20
    assert iio.MAX_JSON_DEPTH == 100 and iio.MAX_NPY_HEADER_BYTES == 10_000
    d = model_dir(tmp_path, {"f.npy": npy(F), "g.npy": npy(G), "meta.json": b'{"a": "xxxx"}'})
    p = npz(tmp_path, _good() + array_members(meta=np.array('{"a": "xxxx"}')))
    s = _safetensors(tmp_path, {"identirep.metadata": '{"a": "xxxx"}'}, f=F, g=G)
    for path in (d, p, s):
        load_model(path)
    monkeypatch.setattr(iio, "MAX_ARRAY_BYTES", 100)
    for path in (d, p, s):
        refused(path, "(6, 3) = 144 bytes, over the limit of 100 bytes")
    monkeypatch.setattr(iio, "MAX_JSON_BYTES", 10)
    for path in (d, s):
        refused(path, "over the limit of 10 bytes", load_metadata)
    refused(p, "<U13 () = 52 bytes, over the limit of 40 bytes", load_metadata)  # 4 bytes a character


# ----------------------------------------------------------------------------- paths

@pytest.mark.parametrize("path", [None, 5, 1.5, b"m.npz", ["m.npz"]])
def test_not_a_path(path):
    for reader in (load_model, load_metadata):
        refused(path, "a model path must be a str or os.PathLike, got", reader)


def test_odd_paths(tmp_path):
    refused(str(tmp_path / "a\0b.npz"), "cannot be opened")
    refused("m.npz", "load_models needs a list of paths, got str", load_models)
    refused(None, "load_models needs a list of paths, got NoneType", load_models)
    (tmp_path / "d.npz").mkdir()
    refused(tmp_path / "d.npz", "d.npz is a directory, not a .npz file")
    os.mkfifo(tmp_path / "p.safetensors")
    refused(tmp_path / "p.safetensors", "is not a regular file, not a .safetensors file")
    os.symlink("loop", tmp_path / "loop")
    refused(tmp_path / "loop", "Too many levels of symbolic links")
    os.symlink("gone.npz", tmp_path / "link.npz")
    refused(tmp_path / "link.npz", "symbolic link to a missing file (gone.npz)")


# ----------------------------------------------------------------------------- what loads

@pytest.mark.parametrize("fmt", ["npz", "npz-deflated", "dir"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_big_endian_and_fortran_order_load_as_native(tmp_path, fmt, order):
    arrays = {k: np.asarray(a.astype(">f8"), order=order) for k, a in (("f", F), ("g", G))}
    arrays["b"] = B.astype(">f4")
    labels = np.array([f"t{i}" for i in range(5)]).astype(">U2")
    if fmt == "dir":
        path = model_dir(tmp_path, {f"{k}.npy": npy(a) for k, a in arrays.items()})
    else:
        path = npz(tmp_path, array_members(compress=fmt == "npz-deflated", labels=labels,
                                           **arrays))
    m = load_model(path)
    assert m.f.dtype == np.float64 and m.f.dtype.isnative and m.bias.dtype == np.float32
    assert np.array_equal(m.f, F) and np.array_equal(m.g, G)
    assert np.array_equal(m.bias, B.astype(np.float32))
    if fmt != "dir":
        assert m.labels == [f"t{i}" for i in range(5)]


def test_unused_huge_member_is_never_read(tmp_path):
    """A small .npz with an extra all-zero member of 256 MiB (256 KiB deflated): the member
    is valid, but only f, g and meta are read, so loading is quick and takes little memory."""
    header = npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (33554432,), }")
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    mib = 2**20
    block = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = block.compress(b"\0" * mib) + block.flush(zlib.Z_FULL_FLUSH)
    crc, zeros = zlib.crc32(header), b"\0" * (64 * mib)
    for _ in range(4):
        crc = zlib.crc32(zeros, crc)
    del zeros
    junk = member("junk.npy", head + block * 256 + zlib.compressobj(6, zlib.DEFLATED, -15).flush(),
                  8, crc=crc, size=len(header) + 2**28)
    p = npz(tmp_path, _good() + [junk] + array_members(meta=np.array('{"x": 1}')))
    assert p.stat().st_size < mib
    import zipfile
    with zipfile.ZipFile(p) as zf, zf.open("junk.npy") as fh:   # a valid member
        assert fh.read(len(header) + 8) == header + b"\0" * 8
    tracemalloc.start()
    try:
        t = time.perf_counter()
        m = load_model(p)
        meta = load_metadata(p)
        elapsed = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(m.f, F) and meta == {"x": 1}
    assert elapsed < 1 and peak < 16 * mib, (elapsed, peak)
    with pytest.raises(IdentirepError, match=r"no array 'g'.*found \['f', 'junk'\]"):
        load_model(npz(tmp_path, _good()[:1] + [junk], "no_g.npz"))
