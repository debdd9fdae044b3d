"""Fuzzing: mutated model files and random option values end in an IdentirepError (the API)
or exit code 0 or 2 (the command line), never in another exception, a leaked warning or a
traceback.

Deterministic (derandomized hypothesis, no example database) and short by default; the long
variant, many times the examples, is marked ``fuzz`` and left out of the default run
(conftest.py): ``pytest -m fuzz tests/test_fuzz.py``.
"""
import io
import json
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import identirep as ir  # noqa: E402
from identirep import IdentirepError  # noqa: E402

#: the long variant (marker fuzz) runs this many times each test's examples
LONG = 30
FORMATS = ("safetensors", "npz", "dir")


def run(test, strategy, examples):
    """Run ``test(example)`` on ``examples`` deterministic draws of ``strategy``."""
    settings(max_examples=examples, deadline=None, derandomize=True, database=None,
             suppress_health_check=list(HealthCheck))(given(strategy)(test))()


def examples(default, long):
    """A test's examples: ``default`` (the default run: the whole file in about 3 s), or
    LONG times that."""
    return default * LONG if long else default


VARIANTS = [pytest.param(False, id="default"),
            pytest.param(True, id="long", marks=pytest.mark.fuzz)]


# --------------------------------------------------------------------------- model files

def _model(seed, dtype):
    rng = np.random.default_rng(seed)
    N, V, M = 16, 10, 2
    tokens = np.random.default_rng(0).integers(0, V, N)   # one text for every model
    documents = np.repeat([0, 1], N // 2)
    targets = np.where(np.r_[documents[1:] == documents[:-1], False], np.roll(tokens, -1), -1)
    return ir.Model(rng.standard_normal((N, M)).astype(dtype),
                    rng.standard_normal((V, M)).astype(dtype),
                    rng.standard_normal(V).astype(dtype), name=f"m{seed}",
                    labels=[f"tok{i}" for i in range(V)],
                    metadata={"source": "fuzz", "k": [1, 2],
                              "tokenizer": {"sha256": "ab" * 32, "size": V}},
                    tokens=tokens, targets=targets, documents=documents)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The bytes of a valid model in each layout: {format: {relative file: bytes}}, and a
    valid second model file to compare with."""
    d = tmp_path_factory.mktemp("fuzz")
    out = {}
    for fmt, dtype in zip(FORMATS, (np.float32, np.float64, np.float32)):
        path = ir.save_model(_model(1, dtype), d / ("m" if fmt == "dir" else f"m.{fmt}"))
        files = sorted(path.iterdir()) if fmt == "dir" else [path]
        out[fmt] = {(p.name if fmt == "dir" else ""): p.read_bytes() for p in files}
    other = ir.save_model(_model(2, np.float64), d / "other.npz")
    return out, str(other)


def _write(files, fmt, where: Path) -> Path:
    """The files of one model (relative name -> bytes) under ``where``; the model's path."""
    if fmt == "dir":
        path = where / "m"
        path.mkdir()
        for name, data in files.items():
            (path / name).write_bytes(data)
        return path
    path = where / f"m.{fmt}"
    path.write_bytes(files[""])
    return path


# mutations of bytes: (kind, position as a fraction of the length, bytes)
_bytes = st.binary(min_size=1, max_size=16)
BYTE_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1), _bytes),
    st.tuples(st.just("overwrite"), st.floats(0, 1), _bytes),
)


def _mutate_bytes(data: bytes, mutation) -> bytes:
    kind, where, arg = mutation
    i = min(int(where * len(data)), len(data) - 1)
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ arg]) + data[i + 1:]
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + arg + data[i:]
    return data[:i] + arg + data[i + len(arg):]


_ints = st.one_of(st.integers(-3, 40), st.integers(-2**63, 2**64), st.just(2**62))
_shape = st.lists(_ints, max_size=4)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
_descr = st.one_of(st.sampled_from(["<f4", "<f8", ">f8", "<f2", "<i8", "|u1", "|b1", "|O",
                                    "<U3", "|V8", "<c16", "<M8[s]", "float32", ""]),
                   st.text(max_size=6))
_st_dtype = st.one_of(st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL",
                                       "F8_E4M3", "C64", ""]), st.text(max_size=5))


def _safetensors_header_edit(data: bytes, edit) -> bytes:
    """A safetensors file with its JSON header edited (a tensor's dtype, shape or offsets,
    the string metadata, or the header length)."""
    what, key, value = edit
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    if what == "length":
        return struct.pack("<Q", value % 2**64) + data[8:]
    if what == "metadata":
        header["__metadata__"] = {"identirep.metadata" if key == "f" else "identirep.labels":
                                  value if isinstance(value, str) else json.dumps(value)}
    elif key in header:
        field = {"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[what]
        header[key][field] = value
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _npy_header_edit(data: bytes, edit) -> bytes:
    """An .npy file with its header dict rewritten (descr, fortran_order, shape)."""
    descr, fortran, shape = edit
    hlen = struct.unpack("<H", data[8:10])[0]
    body = data[10 + hlen:]
    text = "{'descr': %r, 'fortran_order': %r, 'shape': %r, }" % (descr, fortran, tuple(shape))
    text = text + " " * (-(len(text) + 11) % 64) + "\n"
    raw = text.encode("utf-8")   # not latin-1 where the descr is not: hostile too
    return data[:8] + struct.pack("<H", len(raw)) + raw + body


def _npz_member_edit(data: bytes, member: str, mutate) -> bytes:
    """An .npz (zip) with one member's bytes replaced by ``mutate(bytes)``."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info.filename)
            dst.writestr(info, mutate(raw) if info.filename == member else raw)
    return out.getvalue()


HEADER_EDIT = st.one_of(
    st.tuples(st.sampled_from(["dtype"]), st.sampled_from(["f", "g", "b"]), _st_dtype),
    st.tuples(st.sampled_from(["shape"]), st.sampled_from(["f", "g", "b"]), _shape),
    st.tuples(st.sampled_from(["offsets"]), st.sampled_from(["f", "g", "b"]),
              st.lists(_ints, min_size=0, max_size=3)),
    st.tuples(st.just("metadata"), st.sampled_from(["f", "g"]),
              st.one_of(_json, st.text(max_size=20))),
    st.tuples(st.just("length"), st.just(""), st.integers(0, 2**64 - 1)),
)
NPY_EDIT = st.tuples(_descr, st.one_of(st.booleans(), st.none(), st.integers(0, 2)), _shape)
JSON_TEXT = st.one_of(_json.map(json.dumps), st.text(max_size=30))

#: one mutation of one layout: (format, file or member, kind, argument)
FILE_MUTATION = st.one_of(
    st.tuples(st.sampled_from(FORMATS), st.just(None), st.just("bytes"), BYTE_MUTATION),
    st.tuples(st.just("safetensors"), st.just(""), st.just("header"), HEADER_EDIT),
    st.tuples(st.just("npz"), st.sampled_from(["f.npy", "g.npy", "b.npy"]), st.just("npy"),
              NPY_EDIT),
    st.tuples(st.just("npz"), st.sampled_from(["meta.npy", "labels.npy", "f.npy"]),
              st.just("bytes"), BYTE_MUTATION),
    st.tuples(st.just("dir"), st.sampled_from(["f.npy", "g.npy", "b.npy"]), st.just("npy"),
              NPY_EDIT),
    st.tuples(st.just("dir"), st.sampled_from(["meta.json", "labels.json"]), st.just("json"),
              JSON_TEXT),
    st.tuples(st.just("dir"), st.sampled_from(["f.npy", "g.npy", "b.npy", "meta.json",
                                               "labels.json"]), st.just("remove"), st.just(None)),
)


def _mutated(files: dict, fmt, member, kind, arg) -> dict:
    files = dict(files)
    if fmt == "dir":
        if member is None:
            member = sorted(files)[int(arg[1] * len(files)) % len(files)]
        if kind == "remove":
            files.pop(member, None)
        elif kind == "json":
            files[member] = arg.encode("utf-8", "surrogatepass")
        elif kind == "npy":
            files[member] = _npy_header_edit(files[member], arg)
        else:
            files[member] = _mutate_bytes(files[member], arg)
        return files
    data = files[""]
    if fmt == "safetensors" and kind == "header":
        files[""] = _safetensors_header_edit(data, arg)
    elif fmt == "npz" and member is not None:
        edit = (lambda raw: _npy_header_edit(raw, arg)) if kind == "npy" else (
            lambda raw: _mutate_bytes(raw, arg))
        files[""] = _npz_member_edit(data, member, edit)
    else:
        files[""] = _mutate_bytes(data, arg)
    return files


def _cli(argv):
    """identirep's command line in this process: (exit code, stderr)."""
    import contextlib

    from identirep.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("long", VARIANTS)
def test_mutated_model_files_load_or_raise_identirep_error(originals, long):
    """Byte flips, truncation, insertion, overwrites, edited headers (safetensors JSON, .npy
    dicts inside .npz and directories), edited or missing JSON and .npy files: load_model
    returns a Model or raises IdentirepError, and ``identirep compare`` exits 0 or 2."""
    files, other = originals

    def check(mutation):
        fmt, member, kind, arg = mutation
        with tempfile.TemporaryDirectory() as d:
            path = _write(_mutated(files[fmt], fmt, member, kind, arg), fmt, Path(d))
            try:
                m = ir.load_model(path)
            except IdentirepError:
                loaded = False
            else:
                assert isinstance(m, ir.Model)
                loaded = True
            code, err = _cli(["compare", str(path), other, "--num-samples", "3"])
            assert code in (0, 2) and "Traceback" not in err, err
            assert code == 2 or loaded, err

    run(check, FILE_MUTATION, examples(100, long))


# --------------------------------------------------------------------------- options

_value = st.one_of(
    st.integers(-5, 300), st.integers(-2**70, 2**70), st.floats(), st.booleans(), st.none(),
    st.text(max_size=6), st.sampled_from(["max", "sum", "mean", "auto", "cpu", "reference",
                                          "nan", "inf", "-1", "1e3", "True"]),
    st.integers(0, 50).map(np.int64), st.floats(width=32).map(np.float32),
    st.lists(st.integers(0, 3), max_size=3))
OPTIONS = ["lam", "combine", "term", "num_samples", "seed", "num_pivots", "sets_per_pivot",
           "paper_compat", "max_label_sets", "rep_sets", "pivot_budget", "backend"]


@pytest.fixture(scope="module")
def pair():
    a, b = _model(3, np.float64), _model(4, np.float64)
    return ir.Model(a.f, a.g), ir.Model(b.f, b.g)


@pytest.mark.parametrize("long", VARIANTS)
def test_random_option_values_of_compare(pair, long):
    """compare() with up to three options set to random values (numbers of every kind, NaN,
    inf, huge, negative, strings, None, bools, lists): a Report or an IdentirepError."""
    a, b = pair
    opts = st.dictionaries(st.sampled_from(OPTIONS), _value, max_size=3)

    def check(kw):
        kw.setdefault("num_samples", 3)
        try:
            r = ir.compare(a, b, **kw)
        except IdentirepError:
            return
        assert isinstance(r, ir.Report)
        for name, fail in r.failures.items():
            assert "internal error" not in fail.reason, (name, fail)

    run(check, opts, examples(100, long))


CLI_OPTIONS = ["--lam", "--combine", "--term", "--num-samples", "--seed", "--num-pivots",
               "--sets-per-pivot", "--pivot-budget", "--backend"]
_cli_value = st.one_of(_value.map(str), st.text(max_size=8))


@pytest.mark.parametrize("long", VARIANTS)
def test_random_option_values_of_the_command_line(originals, long):
    """``identirep compare A B`` with up to three options given random text: exit 0 or 2,
    never a traceback."""
    _, other = originals
    opts = st.lists(st.tuples(st.sampled_from(CLI_OPTIONS), _cli_value), max_size=3)

    def check(pairs):
        argv = ["compare", other, other, "--num-samples", "3"]
        for opt, value in pairs:
            argv.append(f"{opt}={value}")
        if "--backend" not in " ".join(argv):
            argv.append("--backend=cpu")
        code, err = _cli(argv)
        assert code in (0, 2) and "Traceback" not in err, (argv, err)

    run(check, opts, examples(50, long))
