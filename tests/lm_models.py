"""Small causal language models built here, for the per-token tests: a corpus written by a
seeded grammar, a BPE tokenizer trained on it, a GPT-2-style model trained on it briefly
(so that its distributions are far from uniform), a copy with every weight rounded to int8
per output channel, and a copy fine-tuned for a few steps; and the per-token statistics of a
pair computed by torch in float64 from the models' own logits (materialised), the oracle of
identirep's per-token report. Nothing is downloaded; everything is written under the
directory given.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "our teacher", "the children",
            "a young woman", "the farmer", "his brother", "the little bird", "a stranger",
            "the doctor", "her mother", "the baker", "a soldier", "the king"]
VERBS = ["sees", "likes", "finds", "wants", "carries", "paints", "follows", "remembers",
         "watches", "builds", "sells", "cleans", "opens", "reads", "hides", "brings"]
OBJECTS = ["a red apple", "the blue door", "an empty box", "the green garden", "a long letter",
           "the broken window", "a small boat", "the heavy stone", "a bright lamp",
           "the wooden table", "a warm coat", "the silver key", "an old map", "the yellow kite"]
PLACES = ["in the morning", "at the market", "near the river", "after dinner",
          "before the storm", "under the bridge", "on the hill", "every sunday",
          "in the kitchen", "by the sea", "at night", "behind the school"]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)


def sentence(rng) -> str:
    """One sentence; the subject narrows the verbs and the verb the objects, so that a model
    can learn distributions far from uniform."""
    s = int(rng.integers(len(SUBJECTS)))
    v = (s + int(rng.integers(4))) % len(VERBS)
    o = (2 * v + int(rng.integers(3))) % len(OBJECTS)
    words = [SUBJECTS[s], VERBS[v], OBJECTS[o]]
    if rng.random() < 0.6:
        words.append(PLACES[(s + o + int(rng.integers(2))) % len(PLACES)])
    return " ".join(words) + " ."


def texts(n: int, seed: int) -> list:
    """``n`` texts of 2 to 4 sentences each."""
    rng = np.random.default_rng(seed)
    return [" ".join(sentence(rng) for _ in range(int(rng.integers(2, 5)))) for _ in range(n)]


def train_tokenizer(transformers, corpus, vocab_size: int = 320):
    """A BPE tokenizer (Metaspace pre-tokenizer, so tokens read as "▁word") trained on
    ``corpus``; every text starts with [BOS]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size,
                                                        special_tokens=SPECIALS,
                                                        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A",
                                                       special_tokens=[("[BOS]", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
        eos_token="[EOS]")


def _batches(tokenizer, torch, corpus, batch_size, rng):
    order = rng.permutation(len(corpus))
    for i in range(0, len(order) - batch_size + 1, batch_size):
        enc = tokenizer([corpus[j] for j in order[i:i + batch_size]], padding=True,
                        return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        yield enc["input_ids"], enc["attention_mask"], labels


def train(model, tokenizer, torch, corpus, steps: int, lr: float, seed: int,
          batch_size: int = 32) -> list:
    """``steps`` AdamW steps of next-token loss on ``corpus``; the losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    while len(losses) < steps:
        for ids, mask, labels in _batches(tokenizer, torch, corpus, batch_size, rng):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
            if len(losses) == steps:
                break
    model.eval()
    return losses


def quantise_int8(model, torch, transformers) -> int:
    """Round every Linear, Conv1D and embedding weight to int8 per output channel (scale =
    max |w| / 127 over the channel) and back to float, in place; the number of weight
    matrices rounded (a tied weight once)."""
    from transformers.pytorch_utils import Conv1D
    seen = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                axis = 1          # weight (out, in) / (num, dim): a channel is a row
            elif isinstance(module, Conv1D):
                axis = 0          # weight (in, out): a channel is a column
            else:
                continue
            w = module.weight
            if id(w) in seen:
                continue
            seen.add(id(w))
            scale = w.abs().amax(dim=axis, keepdim=True) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            w.copy_(torch.clamp(torch.round(w / scale), -127, 127) * scale)
    return len(seen)


def build_models(root: Path, torch, transformers, *, train_steps: int = 120,
                 finetune_steps: int = 4, seed: int = 0) -> dict:
    """Build the tokenizer and three models under ``root``: "base" (trained), "int8" (base
    rounded per channel) and "finetune" (base after ``finetune_steps`` more steps on the
    evaluation texts). Returns {"texts": evaluation texts, "tokenizer", "dirs": {name: dir},
    "losses": {"base": [...], "finetune": [...]}, "rounded": count}."""
    import copy
    corpus = texts(600, seed)
    evaluation = texts(40, seed + 1)
    tokenizer = train_tokenizer(transformers, corpus + evaluation)
    cfg = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4,
                                  n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0, **SPECIAL_IDS)
    torch.manual_seed(seed)
    base = transformers.GPT2LMHeadModel(cfg)
    losses = {"base": train(base, tokenizer, torch, corpus, train_steps, 3e-3, seed,
                            batch_size=16)}
    int8 = copy.deepcopy(base)
    rounded = quantise_int8(int8, torch, transformers)
    tuned = copy.deepcopy(base)
    losses["finetune"] = train(tuned, tokenizer, torch, evaluation, finetune_steps, 1e-3,
                               seed + 1, batch_size=8)
    dirs = {}
    for name, model in (("base", base), ("int8", int8), ("finetune", tuned)):
        d = Path(root) / name
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        dirs[name] = d
    return {"texts": evaluation, "tokenizer": tokenizer, "dirs": dirs, "losses": losses,
            "rounded": rounded}


def model_logits(torch, transformers, model_dir, texts_, tokenizer) -> tuple:
    """(logits N x V float64, token ids, targets, documents): the model's own logits, loaded
    and run in float64, each text alone, over the tokenizer's tokens; the target of a position
    is the next token of its text (-1 at a text's last position)."""
    from identirep._hf import dtype_kwarg
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, **{dtype_kwarg(transformers): torch.float64})
    model.eval()
    V = min(len(tokenizer), model.get_output_embeddings().weight.shape[0])
    out, ids_all, targets, docs = [], [], [], []
    with torch.inference_mode():
        for i, t in enumerate(texts_):
            ids = tokenizer(t)["input_ids"]
            out.append(model(input_ids=torch.tensor([ids])).logits[0, :, :V].numpy())
            ids_all += ids
            targets += ids[1:] + [-1]
            docs += [i] * len(ids)
    ids_all, targets, docs = (np.asarray(x, dtype=np.int64) for x in (ids_all, targets, docs))
    return np.concatenate(out), ids_all, targets, docs


def per_token_torch(torch, z1, z2, targets, k: int = 10) -> dict:
    """Per-position statistics of two models' float64 logits (N x V), by torch, materialised:
    KL both ways (nats, clipped at 0), JSD (nats), log p of the target under each (NaN where
    there is none), each model's k top tokens (decreasing probability, ties to the lower id),
    and the probability of each model's top token under the other."""
    a, b = torch.from_numpy(z1), torch.from_numpy(z2)
    lp1, lp2 = torch.log_softmax(a, dim=1), torch.log_softmax(b, dim=1)
    p1, p2 = lp1.exp(), lp2.exp()
    log_m = torch.logaddexp(lp1, lp2) - np.log(2.0)
    kl12 = (p1 * (lp1 - lp2)).sum(1).clamp(min=0)
    kl21 = (p2 * (lp2 - lp1)).sum(1).clamp(min=0)
    jsd = 0.5 * (p1 * (lp1 - log_m)).sum(1) + 0.5 * (p2 * (lp2 - log_m)).sum(1)
    t = torch.from_numpy(np.asarray(targets))
    has = t >= 0
    rows = torch.arange(len(t))
    nan = torch.full((len(t),), float("nan"), dtype=torch.float64)
    logp1 = torch.where(has, lp1[rows, t.clamp(min=0)], nan)
    logp2 = torch.where(has, lp2[rows, t.clamp(min=0)], nan)
    top1 = torch.sort(a, dim=1, descending=True, stable=True).indices[:, :k]
    top2 = torch.sort(b, dim=1, descending=True, stable=True).indices[:, :k]
    return {"kl12": kl12.numpy(), "kl21": kl21.numpy(), "jsd": jsd.numpy(),
            "logp1": logp1.numpy(), "logp2": logp2.numpy(),
            "top1": top1.numpy(), "top2": top2.numpy(),
            "p2_of_top1": p2[rows, top1[:, 0]].numpy(), "p1_of_top2": p1[rows, top2[:, 0]].numpy(),
            "L1": torch.logsumexp(a, dim=1).numpy(), "L2": torch.logsumexp(b, dim=1).numpy()}
