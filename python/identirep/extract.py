"""Extract (f, g, b) from a local Hugging Face causal language model.

For a causal LM, p(y | x) = softmax_y(f(x) . g(y) + b(y)) where x is a prefix of a text,
f(x) the input of the lm_head at the prefix's last position (the final hidden state after the
final norm and any scaling the architecture applies before the head), g the lm_head weight and
b its bias. f is captured with a forward pre-hook on ``model.get_output_embeddings()``, which is
the lm_head for every architecture and the input embedding when the two are tied.

Architectures that transform the lm_head output are handled explicitly:

- a constant factor after the head (Cohere ``logit_scale`` multiplies, Granite
  ``logits_scaling`` divides, Falcon-H1 ``lm_head_multiplier`` and HyperCLOVA X
  ``logits_scaling`` multiply) is folded into f and b, so f . g + b equals the model's logits;
- scaling before the head (MiniCPM's ``hidden_size / dim_model_base``) is already in the
  captured input;
- tanh soft-capping of the final logits (Gemma 2 ``final_logit_softcapping``) makes log p
  non-linear in f . g, so such models are refused unless ``allow_softcap=True``.

Every extraction is checked: at ``check_positions`` sampled positions the model is run again on
its text alone (no padding) and f . g + b is compared with the model's own output logits.

torch and transformers are optional (``pip install "identirep[hf]"``) and imported only when an
extraction runs. Models and tokenizers are read from local files only; nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from . import _rules as rules
from ._hf import (CHECK_TOLERANCE, ExtractionCheck, as_numpy, check_extraction,
                  check_tokenizer, config_facts, dtype_kwarg, fill_f, load_or_explain,
                  local_checkpoint, logit_scale, numpy_dtype, pre_head_scaling, require_hf,
                  scaled, token_strings, tokenizer_identity)
from .errors import IdentirepError
from .model import Model

__all__ = ["extract", "Extraction", "ExtractionCheck", "add_extract_parser"]


@dataclass(eq=False)
class Extraction:
    """The factors of a causal LM on a set of texts.

    ``f`` (N x M) has one row per non-padding token position, texts in the order given,
    positions in order; ``token_ids`` (N) are the tokens at those positions and ``positions``
    (N x 2) their (text index, position in text); ``targets`` (N) the next token of the same
    text, -1 at each text's last position. ``g`` (V x M) and ``b`` (V or None) have one
    row per label; ``label_ids`` (V) are the token ids of those rows and ``labels`` their
    token strings.
    """

    f: np.ndarray
    g: np.ndarray
    b: Optional[np.ndarray]
    token_ids: np.ndarray
    label_ids: np.ndarray
    positions: np.ndarray
    labels: list
    check: ExtractionCheck
    metadata: dict = field(default_factory=dict)

    @property
    def N(self) -> int:
        return int(self.f.shape[0])

    @property
    def V(self) -> int:
        return int(self.g.shape[0])

    @property
    def M(self) -> int:
        return int(self.f.shape[1])

    @property
    def targets(self) -> np.ndarray:
        """The next token id of each position in the same text, -1 at a text's last position
        (the text's end, or where it was truncated)."""
        out = np.full(self.N, -1, np.int64)
        same = self.positions[1:, 0] == self.positions[:-1, 0]
        out[:-1][same] = self.token_ids[1:][same]
        return out

    def to_model(self, name: Optional[str] = None) -> Model:
        """The factors as a :class:`~identirep.Model`, with ``tokens`` (the input tokens),
        ``targets`` and ``documents`` (the text index of each position)."""
        return Model(self.f, self.g, self.b, name=name or self.metadata.get("name"),
                     labels=self.labels, metadata=dict(self.metadata), tokens=self.token_ids,
                     targets=self.targets, documents=self.positions[:, 0])

    def __repr__(self) -> str:
        b = ", bias" if self.b is not None else ""
        return (f"Extraction({self.metadata.get('name', '?')}: N={self.N}, V={self.V}, "
                f"M={self.M}{b}, check max rel error {self.check.max_rel_error:.2e})")


def _read_texts(texts) -> list:
    if isinstance(texts, (str, os.PathLike)):
        p = Path(texts)
        if not p.is_file():
            raise IdentirepError(
                f"texts must be a list of strings or the path of a .txt file (one text per "
                f"line); {str(p)!r} is not a file")
        texts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise IdentirepError(f"{p} holds no non-empty line")
        return texts
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise IdentirepError("texts must be a list of strings or the path of a .txt file")
    if not texts:
        raise IdentirepError("texts is empty; give at least one text")
    return list(texts)


def extract(model_dir, texts, out=None, *, max_length: int = 512, batch_size: int = 8,
            dtype: str = "float32", check_positions: int = 64, allow_softcap: bool = False,
            seed: int = 0, progress: Union[None, bool, Callable[[int, int], None]] = None,
            device: str = "cpu", revision: Optional[str] = None) -> Extraction:
    """Extract f (every non-padding position), g and b from a local causal LM directory.

    ``texts``: a list of strings, or the path of a .txt file with one text per non-empty line.
    Each text is tokenized (with the tokenizer's special tokens) and truncated to
    ``max_length`` tokens; texts are run in batches of ``batch_size`` with right padding and
    an attention mask, in ``dtype`` (float32, float64, bfloat16, float16). Label rows beyond
    the tokenizer (vocabulary padding) are dropped. ``check_positions`` positions, drawn with
    ``seed``, are checked against the model's own logits; an error above
    ``CHECK_TOLERANCE[dtype]`` raises. ``progress``: a callable ``(done, total)`` over token
    positions, ``True`` for a progress bar on stderr, ``False`` for none, or ``None`` for a
    bar when stderr is a terminal.
    ``device`` is the torch device the model runs on ("cpu", "cuda", "cuda:1", ...).
    ``revision`` picks a checkpoint revision when ``model_dir`` is a local Hugging Face
    cache repository folder (``models--ORG--NAME``: a branch or tag under ``refs/``, a commit
    hash or prefix under ``snapshots/``; ``refs/main`` when not given) or lies in a git
    repository (any branch, tag or commit; its files are written by ``git archive`` to a
    temporary directory; Git LFS pointer files are refused); ``metadata["revision"]`` records
    it and the commit it resolved to. Nothing is downloaded.
    With ``out``, the result is also written there by :func:`identirep.save_model`; the
    model file carries ``tokens``, ``targets`` (the next token, -1 at a text's end) and
    ``documents`` (the text index), and ``metadata["tokenizer"]`` the tokenizer's
    fingerprint (:func:`identirep._hf.tokenizer_identity`).
    """
    check_extract_options(dtype, max_length, batch_size, check_positions, allow_softcap, seed,
                          progress, device)
    # NumPy integers as Python ints: the tokenizer and the metadata (JSON) take those
    max_length, batch_size, check_positions, seed = (
        int(v) for v in (max_length, batch_size, check_positions, seed))
    allow_softcap = bool(allow_softcap)
    if out is not None:   # a bad output path fails now, not after the extraction
        from .io import check_output
        check_output(out)
    if not isinstance(model_dir, (str, os.PathLike)):
        raise IdentirepError(f"model_dir must be a str or os.PathLike, got "
                             f"{type(model_dir).__name__} {model_dir!r:.60}",
                             fix="give the directory written by save_pretrained")
    texts = _read_texts(texts)
    with local_checkpoint(Path(model_dir), revision) as ckpt:
        try:
            ext = _extract_local(ckpt.directory, texts, max_length=max_length,
                                 batch_size=batch_size, dtype=dtype,
                                 check_positions=check_positions, allow_softcap=allow_softcap,
                                 seed=seed, progress=progress, device=device)
        except IdentirepError as e:
            if ckpt.revision is None:
                raise
            rev = ckpt.revision      # the files may be in a temporary directory: say whose
            raise IdentirepError(f"revision {rev['requested']!r} of {model_dir} (commit "
                                 f"{rev['commit'][:12]}): {e.reason}", fix=e.fix) from None
    if ckpt.revision is not None:
        ext.metadata.update(name=ckpt.name, model_dir=str(Path(model_dir).resolve()),
                            revision=ckpt.revision)
    if out is not None:
        from .io import save_model
        save_model(ext.to_model(), out)
    return ext


def _extract_local(model_dir: Path, texts: list, *, max_length, batch_size, dtype,
                   check_positions, allow_softcap, seed, progress, device) -> Extraction:
    """:func:`extract` from the local model directory ``model_dir`` (options checked)."""
    if not (model_dir / "config.json").is_file():
        raise IdentirepError(
            f"{model_dir} is not a local model directory (no config.json); give the directory "
            "written by save_pretrained — identirep never downloads models")
    torch, transformers = require_hf()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise IdentirepError(f"device must be a torch device such as 'cpu' or 'cuda': {e}") from None

    cfg = load_or_explain(
        lambda: transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True),
        f"could not read the model config in {model_dir}")
    tcfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    model_type = str(getattr(tcfg, "model_type", None) or getattr(cfg, "model_type", ""))
    cap = getattr(tcfg, "final_logit_softcapping", None)
    if cap is not None and not allow_softcap:
        raise IdentirepError(
            f"{model_dir} ({model_type}) soft-caps its logits: logits = c*tanh(z/c) with "
            f"c = final_logit_softcapping = {cap}. tanh soft-capping makes log p non-linear in "
            "f(x).g(y), so the model is outside the softmax-linear family that identirep "
            "compares. Pass allow_softcap=True (--allow-softcap) to extract the factors of the "
            "pre-cap logits z = f.g + b; comparisons will then ignore the cap")

    tok = load_or_explain(
        lambda: transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True),
        f"could not load a tokenizer from {model_dir} (it needs its tokenizer files, "
        "e.g. tokenizer.json and tokenizer_config.json)")
    check_tokenizer(tok, model_dir)   # before the model: its weights take the time
    strings = token_strings(tok, len(tok))
    tokenizer = tokenizer_identity(tok, strings)   # before tokenizing: that sets truncation
    torch_dtype = getattr(torch, dtype)
    model = load_or_explain(lambda: transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, **{dtype_kwarg(transformers): torch_dtype}),
        f"could not load a causal language model from {model_dir}")
    model.eval()
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise IdentirepError(f"cannot move the model to {device}: {e}") from None

    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or weight.ndim != 2:
        raise IdentirepError(
            f"{model_dir}: the model has no linear output embedding (lm_head) module, so its "
            "logits are not f(x).g(y)")
    rows, M = weight.shape
    V = min(len(tok), rows)
    scale, scale_note = logit_scale(model_type, tcfg)

    limit = getattr(tcfg, "max_position_embeddings", None) or getattr(tcfg, "n_positions", None)
    eff_length = min(max_length, int(limit)) if limit else max_length
    ids = tok(texts, add_special_tokens=True, truncation=True, max_length=eff_length)["input_ids"]
    keep = [i for i, s in enumerate(ids) if len(s) > 0]
    if not keep:
        raise IdentirepError(
            f"every text tokenized to zero tokens (the tokenizer has {len(tok)} tokens); "
            "give texts with words the tokenizer knows")
    top = max(max(ids[i]) for i in keep)
    if top >= rows:
        raise IdentirepError(
            f"the tokenizer produced token id {top} but the model has {rows} embedding rows; "
            "tokenizer and model do not match")
    lengths = np.array([len(ids[i]) for i in keep], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    N = int(offsets[-1])

    np_dtype, stored = numpy_dtype(dtype)
    f_out = np.empty((N, M), dtype=np_dtype)
    token_ids = np.concatenate([np.asarray(ids[i], dtype=np.int64) for i in keep])
    positions = np.stack([np.repeat(np.asarray(keep, dtype=np.int64), lengths),
                          np.concatenate([np.arange(n) for n in lengths])], axis=1)

    pad_id = tok.pad_token_id if tok.pad_token_id is not None and tok.pad_token_id < rows else 0
    seqs = [ids[i] for i in keep]
    pad_positions = fill_f(model, torch, head, seqs, offsets, f_out, pad_id, batch_size,
                           scale, device, progress)

    with torch.inference_mode():
        g = as_numpy(weight[:V], np_dtype, torch)
        bias = getattr(head, "bias", None)
        b = None if bias is None else as_numpy(scaled(bias[:V], scale, torch), np_dtype, torch)

    check = check_extraction(model, torch, seqs, offsets, f_out, g, b, cap, dtype, seed,
                             check_positions,
                             f"{model_dir} ({model_type}, logit scale folded: {scale:g})")
    label_ids = np.arange(V, dtype=np.int64)
    labels = strings[:V]
    digest = hashlib.sha256(token_ids.tobytes() + lengths.tobytes()).hexdigest()
    meta = {
        "name": model_dir.resolve().name,
        "source": "huggingface",
        "model_dir": str(model_dir.resolve()),
        "model_type": model_type,
        "config": config_facts(tcfg),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "dtype": dtype,
        "device": str(device),
        "stored_dtype": stored,
        "n_texts": len(texts),
        "empty_texts_skipped": len(texts) - len(keep),
        "texts_at_max_length": int((lengths == eff_length).sum()),
        "max_length": eff_length,
        "batch_size": batch_size,
        "N": N,
        "padding_positions_skipped": pad_positions,
        "inputs_sha256": digest,
        "tokenizer_size": len(tok),
        "tokenizer": tokenizer,
        "targets": "the next token of the same text; -1 at each text's last position",
        "lm_head_rows": int(rows),
        "vocab_padding_rows_dropped": int(rows - V),
        "bias": b is not None,
        "logit_scale_folded": scale,
        "check": check.as_dict(),
        "seed": seed,
    }
    if rows > V:
        meta["vocab_padding_note"] = (
            f"lm_head rows {V}..{rows - 1} have no token in the tokenizer and were dropped; "
            "the softmax runs over the tokenizer's tokens only")
    if scale_note:
        meta["logit_scaling"] = scale_note
    pre = pre_head_scaling(model_type, tcfg)
    if pre:
        meta["hidden_scaling"] = pre
    if cap is not None:
        meta["final_logit_softcapping"] = float(cap)
        meta["softcap_ignored"] = (
            "f.g + b are the pre-cap logits; comparisons of this model ignore the tanh cap")
    return Extraction(f_out, g, b, token_ids, label_ids, positions, labels, check, meta)


def check_extract_options(dtype="float32", max_length=512, batch_size=8, check_positions=64,
                          allow_softcap=False, seed=0, progress=None, device="cpu") -> None:
    """``extract``'s options, before torch or any model is loaded: counts are Python or
    NumPy integers (not bools), flags True or False."""
    if not isinstance(dtype, str) or dtype not in CHECK_TOLERANCE:
        raise IdentirepError(f"dtype must be one of {', '.join(CHECK_TOLERANCE)}, got {dtype!r}")
    for name, value in (("max_length", max_length), ("batch_size", batch_size),
                        ("check_positions", check_positions)):
        _count(name, value, 1, "a positive integer")
    _count("seed", seed, 0, "a non-negative integer (it seeds NumPy's random generator)")
    rules.check_flag("allow_softcap", allow_softcap)
    rules.check_callable("progress", progress, True, "a callable progress(done, total)")
    torch = sys.modules.get("torch")   # a torch.device comes with torch imported
    if isinstance(device, (bool, np.bool_)) or not (
            isinstance(device, (str, numbers.Integral))
            or (torch is not None and isinstance(device, torch.device))):
        raise IdentirepError(f"device must be a torch device such as 'cpu' or 'cuda', got "
                             f"{type(device).__name__} {device!r:.60}")


def _count(name: str, value, minimum: int, what: str) -> None:
    """``rules.check_count`` (a Python or NumPy integer, not a bool, >= ``minimum``) in
    extract's words."""
    try:
        rules.check_count(name, value, minimum)
    except IdentirepError:
        raise IdentirepError(f"{name} must be {what}, got {rules._shown(value)}") from None


def add_extract_parser(subparsers):
    """Register ``extract MODEL_DIR --texts FILE.txt -o OUT [...]`` on an argparse subparsers."""
    p = subparsers.add_parser(
        "extract", help="extract f, g, b from a local Hugging Face causal LM",
        description="Extract f (final hidden states at every token position), g (lm_head "
                    "weight) and b (lm_head bias) from a local causal LM directory, check them "
                    "against the model's logits and save them.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="directory written by save_pretrained")
    p.add_argument("--texts", required=True, metavar="FILE.txt",
                   help="text file, one text per non-empty line")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="output: NAME.safetensors (preferred), NAME.npz or a directory")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="texts per batch (default 8)")
    p.add_argument("--dtype", default="float32", choices=list(CHECK_TOLERANCE),
                   help="computation dtype (default float32)")
    p.add_argument("--check-positions", type=int, default=64,
                   help="positions checked against the model's logits (default 64)")
    p.add_argument("--allow-softcap", action="store_true",
                   help="extract soft-capped models' pre-cap logits (the cap is ignored)")
    p.add_argument("--seed", type=int, default=0, help="seed of the checked positions")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--revision", metavar="REV",
                   help="checkpoint revision: a branch, tag or commit of the local Hugging Face "
                        "cache repository folder (models--ORG--NAME) or git repository "
                        "MODEL_DIR (nothing is downloaded)")
    p.set_defaults(func=_run_extract)
    return p


def _run_extract(args) -> int:
    try:
        ext = extract(args.model_dir, args.texts, args.out, max_length=args.max_length,
                      batch_size=args.batch_size, dtype=args.dtype,
                      check_positions=args.check_positions, allow_softcap=args.allow_softcap,
                      seed=args.seed, device=args.device, revision=args.revision)
    except IdentirepError as e:
        print(f"identirep extract: error: {e}", file=sys.stderr)
        return 2
    c = ext.check
    print(f"N={ext.N} positions, V={ext.V} labels, M={ext.M} dimensions"
          f"{', with bias' if ext.b is not None else ''}")
    print(f"check over {c.positions} positions: max abs error {c.max_abs_error:.3g}, "
          f"max rel error {c.max_rel_error:.3g} (tolerance {c.tolerance:g})")
    rev = ext.metadata.get("revision")
    if rev:
        print(f"revision {rev['requested']} = commit {rev['commit'][:12]} ({rev['source']} "
              f"{rev['repository']})")
    print(f"wrote {args.out}")
    short = size_note(ext.N, ext.V, ext.M)
    if short:
        print(f"note: {short}", file=sys.stderr)
    return 0


def size_note(N: int, V: int, M: int) -> str:
    """What a model of these sizes can be compared with, when it is too small for d_LLV
    and d_SVD (N >= M + 2 inputs) or d_SVD's label sets (V >= M + 2 labels: a pivot, a
    leave-out and M more; d_rep needs M + 1); '' when every measure applies."""
    missing = []
    if N < M + 2:
        missing.append(f"d_LLV and d_SVD need N >= M + 2 = {M + 2} positions (give more or "
                       "longer texts)")
    if V < M + 2:
        missing.append(f"d_SVD's label sets need V >= M + 2 = {M + 2} labels"
                       + (f" and d_rep's V >= M + 1 = {M + 1}" if V < M + 1 else ""))
    if not missing:
        return ""
    return ("; ".join(missing) + ". compare reports the other measures (KL, d_logit, mCCA) "
            "and says why these are missing")
