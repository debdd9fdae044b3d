"""Running a local Hugging Face causal LM for ``identirep.extract``: finding the checkpoint (a
revision in a local Hugging Face cache or git repository), the tokenizer's fingerprint, the
architectures' logit scalings, the forward pre-hook that captures the lm_head input, tensor
conversion, and the check of f . g + b against the model's own logits. torch and
transformers are imported only when an extraction runs."""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .errors import IdentirepError

#: Largest relative error of the extraction check, per computation dtype.
CHECK_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}

#: Constant factors applied to the lm_head output: model_type prefix -> (attribute, operation).
LOGIT_SCALES = (
    ("cohere", "logit_scale", "multiplies"),
    ("granite", "logits_scaling", "divides"),
    ("hyperclovax", "logits_scaling", "multiplies"),
    ("falcon_h1", "lm_head_multiplier", "multiplies"),
)

_INSTALL_HINT = 'pip install "identirep[hf]"'


@dataclass
class ExtractionCheck:
    """f . g + b recomputed against the model's own logits at sampled positions.

    ``max_rel_error`` is the largest, over the checked positions x, of
    max_y |recomputed - logits| / max_y |logits|.
    """

    positions: int
    max_abs_error: float
    max_rel_error: float
    tolerance: float

    def as_dict(self) -> dict:
        return {"positions": self.positions, "max_abs_error": self.max_abs_error,
                "max_rel_error": self.max_rel_error, "tolerance": self.tolerance}


def require_hf():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise IdentirepError(
            f"extracting from Hugging Face models needs torch and transformers ({e.msg}); "
            f"install them with: {_INSTALL_HINT}") from None
    return torch, transformers


def dtype_kwarg(transformers) -> str:
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def logit_scale(model_type: str, cfg):
    """(factor applied to the lm_head output, description) from the config."""
    for prefix, attr, op in LOGIT_SCALES:
        value = getattr(cfg, attr, None)
        if model_type.startswith(prefix) and value is not None:
            factor = float(value) if op == "multiplies" else 1.0 / float(value)
            return factor, f"config.{attr}={float(value)!r} ({op} the logits), folded into f and b"
    return 1.0, None


def pre_head_scaling(model_type: str, cfg):
    if model_type.startswith("minicpm") and getattr(cfg, "dim_model_base", None):
        k = cfg.hidden_size / cfg.dim_model_base
        return (f"hidden states divided by hidden_size/dim_model_base={k!r} before the lm_head; "
                "captured in f")
    return None


_CONFIG_FACTS = ("model_type", "architectures", "hidden_size", "n_embd", "num_hidden_layers",
                 "n_layer", "vocab_size", "tie_word_embeddings", "max_position_embeddings",
                 "n_positions", "final_logit_softcapping", "logit_scale", "logits_scaling",
                 "lm_head_multiplier", "dim_model_base", "scale_width")


def config_facts(cfg) -> dict:
    out = {}
    for k in _CONFIG_FACTS:
        v = getattr(cfg, k, None)
        if isinstance(v, (bool, int, float, str)) or (isinstance(v, list) and v):
            out[k] = v
    return out


class _Captured(Exception):
    """Raised by the lm_head pre-hook: the forward pass has produced f; stop it there."""


def _progress_reporter(progress, total: int):
    """(update(n), close()) for a callable, a rich bar on a terminal, or nothing."""
    if callable(progress):
        done = [0]

        def update(n):
            done[0] += n
            progress(done[0], total)
        return update, lambda: None
    if progress is True or (progress is None and sys.stderr.isatty()):
        from rich.console import Console
        from rich.progress import Progress
        bar = Progress(console=Console(stderr=True), transient=True)
        task = bar.add_task("extracting", total=total)
        bar.start()
        return (lambda n: bar.advance(task, n)), bar.stop
    return (lambda n: None), (lambda: None)


#: files of which a tokenizer directory holds at least one: the vocabulary of a fast
#: tokenizer, a SentencePiece model, a BPE or WordPiece vocabulary, a tiktoken file
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "tokenizer.tiktoken")


def check_tokenizer(tok, model_dir) -> None:
    """Refuse a tokenizer without a regular token: transformers builds such an empty tokenizer
    from a directory without tokenizer files, and every text then tokenizes to nothing."""
    special = set(getattr(tok, "all_special_ids", None) or [])
    if any(i not in special for i in tok.get_vocab().values()):
        return
    present = [f for f in TOKENIZER_FILES if (model_dir / f).is_file()]
    if present:
        where = (f"its tokenizer files ({', '.join(present)}) hold no regular token: they may "
                 "be truncated, or belong to another model")
    else:
        found = sorted(p.name for p in model_dir.iterdir())
        where = (f"it has none of the tokenizer files ({', '.join(TOKENIZER_FILES)}; found "
                 f"{', '.join(found[:12])}{', ...' if len(found) > 12 else ''})")
    raise IdentirepError(
        f"{model_dir} has no usable tokenizer: the tokenizer loaded from it has {len(tok)} "
        f"token(s), all special, so every text would tokenize to nothing; {where}. Save the "
        "model's tokenizer next to it: AutoTokenizer.from_pretrained(SOURCE)"
        f".save_pretrained('{model_dir}'), SOURCE being where the model came from "
        "(identirep reads local files only)")


def token_strings(tok, n: int) -> list:
    """The strings of token ids 0..n-1 (``"<id i>"`` where the tokenizer has none)."""
    return [t if t is not None else f"<id {i}>"
            for i, t in enumerate(tok.convert_ids_to_tokens(list(range(n))))]


def _sha256(obj) -> str:
    """sha256 of the canonical JSON of ``obj`` (keys sorted, no spaces, UTF-8)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: keys of a tokenizer.json that hold no tokenization setting: the format version, and the
#: truncation and padding that transformers sets on the backend while it tokenizes
_NOT_SETTINGS = ("version", "truncation", "padding", "added_tokens")


def _strings(smap: dict) -> set:
    """The token strings of a special-token map (values: a string or a list of them)."""
    out = set()
    for v in smap.values():
        out.update(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return out


#: the fingerprint's definition (``tokenizer_identity``), stored with it: 2 leaves the padding
#: token out of the special tokens; files without it were written by scheme 1
FINGERPRINT_SCHEME = 2


def tokenizer_identity(tok, strings: list) -> dict:
    """``metadata["tokenizer"]``: the tokenizer's fingerprint and facts. ``strings`` are the
    strings of all ``len(tok)`` token ids (:func:`token_strings`).

    ``sha256`` is the sha256 of the canonical JSON (keys sorted) of three parts' sha256
    (``parts``): ``vocabulary``, the ordered token strings of ids 0..size-1; ``special_tokens``,
    the special-token map and the special ids, both but the padding token (which no extracted
    input holds; ``pad_token = eos_token`` leaves the fingerprint as it is), and every added
    token with its flags;
    ``pipeline``, the backend tokenizer's definition (tokenizer.json: normalizer,
    pre-tokenizer, model with its vocabulary and merges, post-processor, decoder; not its
    truncation or padding state), or for a tokenizer without a backend its class, its
    SentencePiece model's sha256 and its boolean settings. File locations enter none of them:
    the same tokenizer saved in two directories has one fingerprint. ``scheme`` is
    ``FINGERPRINT_SCHEME``."""
    added = getattr(tok, "added_tokens_decoder", None) or {}
    # the padding token only fills batches (padded positions are skipped), and fine-tuning
    # recipes set pad_token = eos_token: that must not make the same tokenizer another
    full = getattr(tok, "special_tokens_map", None) or {}
    smap = {k: v for k, v in sorted(full.items()) if k != "pad_token"}
    ids = {int(i) for i in (getattr(tok, "all_special_ids", None) or [])}
    if full.get("pad_token") is not None and str(full["pad_token"]) not in _strings(smap):
        pad = getattr(tok, "pad_token_id", None)
        if isinstance(pad, int):
            ids.discard(pad)
    special = {
        "map": smap,
        "ids": sorted(ids),
        "added": [[int(i), str(t), *(bool(getattr(t, a, False)) for a in
                                      ("special", "normalized", "lstrip", "rstrip", "single_word"))]
                  for i, t in sorted(added.items())],
    }
    backend = getattr(tok, "backend_tokenizer", None)
    facts = {"class": type(tok).__name__, "fast": backend is not None}
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        for k in _NOT_SETTINGS:
            pipeline.pop(k, None)
        model = pipeline.get("model")
        if isinstance(model, dict) and model.get("type"):
            facts["model"] = str(model["type"])
        for part in ("normalizer", "pre_tokenizer"):
            if isinstance(pipeline.get(part), dict) and pipeline[part].get("type"):
                facts[part] = str(pipeline[part]["type"])
    else:
        sp = getattr(tok, "sp_model", None)
        proto = getattr(sp, "serialized_model_proto", None)
        pipeline = {"class": type(tok).__name__,
                    "sentencepiece": hashlib.sha256(proto()).hexdigest() if callable(proto) else None,
                    "settings": {k: v for k, v in sorted((getattr(tok, "init_kwargs", None) or {}).items())
                                 if isinstance(v, bool)}}
    parts = {"vocabulary": _sha256(strings), "special_tokens": _sha256(special),
             "pipeline": _sha256(pipeline)}
    return {"sha256": _sha256(parts), "size": len(strings), **facts, "parts": parts,
            "scheme": FINGERPRINT_SCHEME}


# --------------------------------------------------------------- checkpoint revisions

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


@dataclass
class Checkpoint:
    """Where a model's files are (``directory``), and for a revision what it resolved to
    (``revision``: requested, commit, source, repository) and the model's default name."""

    directory: Path
    revision: Optional[dict] = None
    name: Optional[str] = None


def _hf_cache_repo(d: Path) -> bool:
    """A Hugging Face cache repository folder (``models--ORG--NAME``): ``snapshots/`` beside
    ``refs/`` or ``blobs/``."""
    return (d / "snapshots").is_dir() and ((d / "refs").is_dir() or (d / "blobs").is_dir())


def _check_revision(revision) -> str:
    if not isinstance(revision, str) or not revision.strip() or "\0" in revision:
        raise IdentirepError(f"revision must be a branch, tag or commit name, got "
                             f"{revision!r:.60}", fix="e.g. revision='main' or a commit hash")
    if revision.startswith("-"):
        raise IdentirepError(f"revision {revision!r} starts with '-'; no branch, tag or commit "
                             "is named so", fix="give a branch, tag or commit hash")
    return revision


@contextlib.contextmanager
def local_checkpoint(model_dir: Path, revision: Optional[str]) -> Iterator[Checkpoint]:
    """The directory to load a model from: ``model_dir`` itself, or with ``revision`` the
    revision's files, from a Hugging Face cache repository folder (a branch or tag under
    ``refs/``, or a commit hash or its prefix under ``snapshots/``) or from a git repository
    (the commit's tree, written by ``git archive`` into a temporary directory removed on
    exit). A cache repository folder without ``revision`` reads ``refs/main``. Nothing is
    downloaded."""
    if revision is None and not _hf_cache_repo(model_dir):
        yield Checkpoint(model_dir)
        return
    if revision is None:
        revision = "main"
    else:
        revision = _check_revision(revision)
    repo = model_dir
    if not _hf_cache_repo(repo) and repo.parent.name == "snapshots" \
            and _hf_cache_repo(repo.parent.parent):
        repo = repo.parent.parent        # a snapshot folder: its repository's revision
    if _hf_cache_repo(repo):
        yield _hf_cache_revision(repo, revision)
        return
    with _git_revision(model_dir, revision) as ckpt:
        yield ckpt


def _hf_cache_revision(repo: Path, revision: str) -> Checkpoint:
    refs, snaps = repo / "refs", repo / "snapshots"
    ref = refs / revision
    inside = refs.resolve() in ref.resolve().parents
    snapshots = sorted(p.name for p in snaps.iterdir() if p.is_dir())
    if inside and ref.is_file():
        commit = ref.read_text(encoding="utf-8", errors="replace").strip()
        how = f"refs/{revision}"
    else:
        found = [c for c in snapshots if c.startswith(revision)] \
            if re.fullmatch(r"[0-9a-fA-F]{4,64}", revision) else []
        if len(found) > 1:
            raise IdentirepError(f"revision {revision!r} is ambiguous in {repo}: it begins the "
                                 f"snapshots {', '.join(found[:5])}",
                                 fix="give more digits of the commit hash")
        if not found:
            names = sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()) \
                if refs.is_dir() else []
            raise IdentirepError(
                f"{repo} has no revision {revision!r}: no refs/{revision} and no snapshot "
                f"whose commit begins so (refs: {', '.join(names) or 'none'}; snapshots: "
                f"{', '.join(c[:12] for c in snapshots[:8]) or 'none'})",
                fix="give one of these refs or commits (identirep reads local files only; "
                    "a revision not in the cache must be downloaded first)")
        commit, how = found[0], "snapshots/"
    snap = snaps / commit
    if not snap.is_dir():
        raise IdentirepError(f"{repo}: {how} names commit {commit[:40]!r}, which has no "
                             "snapshot folder in the cache (not downloaded)",
                             fix="download that revision first (identirep reads local files only)")
    stem = repo.name
    for prefix in ("models--", "datasets--", "spaces--"):
        if stem.startswith(prefix):
            stem = stem[len(prefix):].replace("--", "/")
    facts = {"requested": revision, "commit": commit, "source": "huggingface cache",
             "repository": str(repo.resolve())}
    return Checkpoint(snap, facts, f"{stem}@{revision}")


def _git_command(args, what: str) -> list:
    git = shutil.which("git")
    if git is None:
        raise IdentirepError(f"{what}: git is not installed", fix="install git, or give the "
                             "checkpoint's own directory without --revision")
    return [git, "-c", "core.quotepath=off", *args]


def _git(args, cwd: Path, what: str):
    return subprocess.run(_git_command(args, what), cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _git_archive(tree: str, top_dir: Path, out: Path, what: str) -> str:
    """Write git's tree ``tree`` into ``out``, streamed from ``git archive`` (no copy of the
    archive on disk); '' when done, else what went wrong."""
    proc = subprocess.Popen(_git_command(["archive", "--format=tar", tree], what), cwd=top_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    failed = ""
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            tf.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, OSError) as e:
        failed = str(e)
    finally:
        proc.stdout.close()
        said = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        proc.wait()
    return said or failed if proc.returncode != 0 or failed else ""


@contextlib.contextmanager
def _git_revision(model_dir: Path, revision: str) -> Iterator[Checkpoint]:
    where = f"revision {revision!r} of {model_dir}"
    top = _git(["rev-parse", "--show-toplevel"], model_dir, where) if model_dir.is_dir() else None
    if top is None or top.returncode != 0:
        said = (top.stderr.decode(errors="replace").strip().splitlines() or [""])[0] \
            if top is not None else "not a directory"
        raise IdentirepError(
            f"{model_dir} is neither a Hugging Face cache repository folder (models--ORG--NAME "
            f"with refs/ and snapshots/) nor inside a git repository ({said}), so --revision "
            f"{revision!r} names nothing there",
            fix="give the checkpoint's own directory without --revision, or the cache or git "
                "repository that holds the revision")
    top_dir = Path(top.stdout.decode().strip())
    prefix = _git(["rev-parse", "--show-prefix"], model_dir, where).stdout.decode().strip()
    got = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"],
               model_dir, where)
    if got.returncode != 0:
        names = _git(["for-each-ref", "--count=12", "--format=%(refname:short)",
                      "refs/heads", "refs/tags"], model_dir, where).stdout.decode().split()
        raise IdentirepError(f"the git repository {top_dir} has no commit {revision!r} "
                             f"(branches and tags: {', '.join(names) or 'none'})",
                             fix="give a branch, tag or commit hash of that repository")
    commit = got.stdout.decode().strip()
    tree = f"{commit}:{prefix.rstrip('/')}" if prefix else commit
    with tempfile.TemporaryDirectory(prefix="identirep-revision-") as tmp:
        out = Path(tmp)
        said = _git_archive(tree, top_dir, out, where)
        if said:
            raise IdentirepError(f"git archive of {where} failed: {said[:300]}",
                                 fix=f"check that {prefix or 'the directory'} exists at "
                                     f"commit {commit[:12]}")
        pointers = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                          if p.is_file() and p.stat().st_size < 1024
                          and p.read_bytes().startswith(_LFS_POINTER))
        if pointers:
            raise IdentirepError(
                f"{where} (commit {commit[:12]}): {', '.join(pointers[:5])} "
                f"{'is a Git LFS pointer' if len(pointers) == 1 else 'are Git LFS pointers'}, "
                "not the file itself: git keeps that content in LFS storage, which git archive "
                "does not expand",
                fix=f"check the revision out with its LFS files (git worktree add DIR {commit[:12]}"
                    "; cd DIR; git lfs pull) and give that directory without --revision "
                    "(identirep reads local files only)")
        facts = {"requested": revision, "commit": commit, "source": "git",
                 "repository": str(top_dir)}
        if prefix:
            facts["path"] = prefix.rstrip("/")
        yield Checkpoint(out, facts, f"{model_dir.resolve().name}@{revision}")


def load_or_explain(fn, message):
    try:
        return fn()
    except (OSError, ValueError, KeyError) as e:
        raise IdentirepError(f"{message}: {e}") from None


def numpy_dtype(dtype: str):
    if dtype != "bfloat16":
        return np.dtype(dtype), dtype
    try:
        import ml_dtypes
    except ImportError:
        return np.dtype(np.float32), "float32 (computed in bfloat16; install ml_dtypes to keep it)"
    return np.dtype(ml_dtypes.bfloat16), "bfloat16"


def fill_f(model, torch, head, seqs, offsets, f_out, pad_id, batch_size, scale, device,
            progress) -> int:
    """Run the texts in right-padded batches; write the scaled lm_head inputs into f_out.

    Returns the number of padding positions skipped. The pre-hook stops each forward pass at
    the lm_head, so no batch x length x V logits are ever computed here.
    """
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["input"]
        raise _Captured

    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")   # similar lengths together: less padding
    update, close = _progress_reporter(progress, int(offsets[-1]))
    handle = head.register_forward_pre_hook(hook, with_kwargs=True)
    pad_positions = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                input_ids = torch.full((len(batch), int(lengths[batch].max())), pad_id,
                                       dtype=torch.long)
                mask = torch.zeros_like(input_ids)
                for r, j in enumerate(batch):
                    input_ids[r, :lengths[j]] = torch.as_tensor(seqs[j])
                    mask[r, :lengths[j]] = 1
                pad_positions += int((mask == 0).sum())
                h = _capture(model, captured, input_ids.to(device), mask.to(device))
                for r, j in enumerate(batch):
                    rows_f = scaled(h[r, :lengths[j]], scale, torch)
                    f_out[offsets[j]:offsets[j + 1]] = as_numpy(rows_f, f_out.dtype, torch)
                update(int(lengths[batch].sum()))
    finally:
        handle.remove()
        close()
    return pad_positions


def _capture(model, captured, input_ids, mask):
    captured.clear()
    try:
        model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    except _Captured:
        return captured["h"]
    raise IdentirepError("the output embedding (lm_head) was not called during the forward "
                         "pass; cannot capture its input")


def scaled(t, scale: float, torch):
    if scale == 1.0:
        return t
    wide = t.double() if t.dtype == torch.float64 else t.float()
    return wide * scale


def as_numpy(t, np_dtype, torch) -> np.ndarray:
    t = t.detach().cpu()
    if np_dtype.name == "bfloat16":
        t = t.to(torch.bfloat16).contiguous()
        return t.view(torch.int16).numpy().view(np.uint16).view(np_dtype)
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().astype(np_dtype, copy=False)


def check_extraction(model, torch, seqs, offsets, f, g, b, cap, dtype, seed, k,
                     where) -> ExtractionCheck:
    """Recompute logits at ``k`` sampled positions and compare with the model's own logits,
    each text run alone (no padding, no batching)."""
    N, V = f.shape[0], g.shape[0]
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(N, size=min(k, N), replace=False))
    text_of = np.searchsorted(offsets, picked, side="right") - 1
    g64 = g.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    worst_abs, worst_rel = 0.0, 0.0
    fit = []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for j in np.unique(text_of):
            sel = picked[text_of == j]
            pos = torch.as_tensor(sel - offsets[j], device=device)
            input_ids = torch.as_tensor([seqs[j]], dtype=torch.long, device=device)
            logits = model(input_ids=input_ids, use_cache=False).logits[0, pos, :V]
            logits = logits.double().cpu().numpy()
            raw = f[sel].astype(np.float64) @ g64.T
            if b64 is not None:
                raw += b64
            recomputed = cap * np.tanh(raw / cap) if cap is not None else raw
            err = np.abs(recomputed - logits).max(axis=1)
            size = np.maximum(np.abs(logits).max(axis=1), np.finfo(np.float64).tiny)
            worst_abs = max(worst_abs, float(err.max()))
            worst_rel = max(worst_rel, float((err / size).max()))
            fit.append((raw, logits))
    check = ExtractionCheck(len(picked), worst_abs, worst_rel, CHECK_TOLERANCE[dtype])
    if worst_rel > check.tolerance:
        raw = np.concatenate([r for r, _ in fit])
        logits = np.concatenate([lg for _, lg in fit])
        ratio = float((raw * logits).sum() / max((raw * raw).sum(), np.finfo(float).tiny))
        resid = np.abs(ratio * raw - logits).max() / max(np.abs(logits).max(), 1e-300)
        hint = (f" The model's logits are {ratio:.6g} x (f.g + b) at the checked positions: "
                "the architecture applies a logit scaling identirep does not know."
                if resid <= check.tolerance else
                " The architecture may transform the lm_head output non-linearly.")
        raise IdentirepError(
            f"extraction check failed for {where}: f.g + b differs from the model's logits "
            f"by up to {worst_rel:.3g} relative ({worst_abs:.3g} absolute) over {len(picked)} "
            f"positions, above the {dtype} tolerance {check.tolerance:g}.{hint}")
    return check
