"""Running a local Hugging Face causal LM for ``identirep.extract``: the architectures' logit
scalings, the forward pre-hook that captures the lm_head input, tensor conversion, and the
check of f . g + b against the model's own logits. torch and transformers are imported only
when an extraction runs."""
from __future__ import annotations

import sys
from dataclasses import dataclass

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
