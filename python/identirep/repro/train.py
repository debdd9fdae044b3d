"""Training of the width experiment's models, and their checkpoints.

Adam (learning rate 1e-4, betas (0.9, 0.999), eps 1e-8, no weight decay) on the mean negative
log-likelihood of softmax(f(x) . g(y)), batches of 128 training points. Model k of a run with
base seed S draws its initial weights from a torch generator and its batch order (a fresh
permutation of the training set per epoch) from a NumPy generator, both seeded from
(S, k) alone: a model is the same whichever other models it is trained with.

All the models of one width train at once as one :class:`~.models.StackedModels`. The loss
is the sum over the models of each model's mean NLL, and one Adam runs over the stacked
weights. That is exactly K independent Adams: the gradient of the sum with respect to model
k's weights is the gradient of model k's own loss (no other term depends on them), and Adam's
update is elementwise in the gradient and its state (the step count is shared, and equal for
every model anyway). tests/test_repro.py checks it against models trained alone.

A trained model is saved as an identirep model file (``save_model``): f on the held-out test
inputs (N_TEST x 2), g on every class (C x 2), both evaluated in float64, with the settings
that made it and its test accuracy in the metadata. A checkpoint whose settings match is
reused, never retrained.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..errors import IdentirepError
from ..io import load_metadata, load_model, save_model
from ..model import Model
from .data import Dataset

#: Adam's settings (torch's defaults but the learning rate)
BETAS = (0.9, 0.999)
EPS = 1e-8
#: steps whose batch indices are drawn in one go
_CHUNK = 250


@dataclass(frozen=True)
class TrainSettings:
    """What determines a trained model besides its width and seed."""
    classes: int = 4
    steps: int = 15_000
    lr: float = 1e-4
    batch: int = 128
    fixed_length: str = "none"
    data_seed: int = 0
    base_seed: int = 0
    device: str = "cpu"     # the torch device type trained on: CPU and CUDA give other floats

    def to_dict(self) -> dict:
        return {**asdict(self), "optimizer": "Adam", "betas": list(BETAS), "eps": EPS,
                "weight_decay": 0.0, "loss": "mean NLL of softmax_y(f(x) . g(y))",
                "hidden_layers": 3, "activation": "leaky ReLU (slope 0.01)",
                "init": "torch.nn.Linear's: uniform in +-1/sqrt(fan_in)",
                "batch_order": "a fresh permutation of the training set per epoch"}


def device_type(device) -> str:
    """The type of a torch device given as text ("cuda:1" -> "cuda"): checkpoints trained on
    another type differ in their last bits, so the type is part of their identity."""
    return str(device).split(":", 1)[0]


def stream_seed(base_seed: int, seed: int, stream: int) -> int:
    """The seed of one random stream of model ``seed`` (0: initial weights, 1: batch order)."""
    return int(np.random.SeedSequence([base_seed, seed, stream]).generate_state(1)[0])


class BatchOrder:
    """Model k's batches: consecutive runs of ``batch`` indices from a stream of permutations
    of range(n), one per epoch (a batch may span two epochs)."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch = n, batch
        self.rng = np.random.default_rng(seed)
        self.left = np.empty(0, np.int64)

    def take(self, steps: int) -> np.ndarray:
        """The indices of the next ``steps`` batches: (steps, batch)."""
        need = steps * self.batch
        parts, have = [self.left], len(self.left)
        while have < need:
            parts.append(self.rng.permutation(self.n))
            have += self.n
        stream = np.concatenate(parts)
        self.left = stream[need:]
        return stream[:need].reshape(steps, self.batch)


@dataclass
class Trained:
    """One trained model, evaluated in float64: f on the test inputs, g on every class."""
    seed: int
    f_test: np.ndarray
    g: np.ndarray
    test_accuracy: float
    train_nll: float


def require_torch():
    """torch, or IdentirepError with the install line."""
    try:
        import torch
    except ImportError as e:
        raise IdentirepError(f"identirep repro trains models with torch ({e.msg})",
                             fix="pip install 'identirep[repro]'") from None
    return torch


def stacked_models(width: int, seeds: Sequence[int], settings: TrainSettings, dtype=None):
    """The untrained models of ``seeds``, each initialised from its own generator (float32
    weights unless ``dtype`` is given)."""
    torch = require_torch()
    from .models import StackedModels
    gens = [torch.Generator().manual_seed(stream_seed(settings.base_seed, s, 0)) for s in seeds]
    return StackedModels(width, settings.classes, gens, settings.fixed_length,
                         dtype or torch.float32)


def train_models(width: int, seeds: Sequence[int], data: Dataset, settings: TrainSettings,
                 device: str = "cpu", progress: Optional[Callable[[int], None]] = None,
                 steps: Optional[int] = None, dtype=None):
    """Train the models of ``seeds`` together for ``steps`` (default ``settings.steps``);
    returns the StackedModels (on ``device``). ``progress(steps done)`` every chunk. The
    weights and the data are float32 unless ``dtype`` is given."""
    torch = require_torch()
    F = torch.nn.functional
    steps = settings.steps if steps is None else steps
    model = stacked_models(width, seeds, settings, dtype).to(device)
    x = torch.from_numpy(data.x_train).to(device, model.f.weights[0].dtype)
    y = torch.from_numpy(data.y_train).to(device)
    orders = [BatchOrder(len(data.x_train), settings.batch, stream_seed(settings.base_seed, s, 1))
              for s in seeds]
    # one Adam over the stacked weights = one Adam per model (see the module's docstring)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=BETAS, eps=EPS,
                           weight_decay=0.0)
    K, C = len(seeds), settings.classes
    done = 0
    while done < steps:
        n = min(_CHUNK, steps - done)
        idx = torch.from_numpy(np.stack([o.take(n) for o in orders], 1)).to(device)
        for t in range(n):
            i = idx[t]                                   # (K, batch)
            logits = model(x[i])                         # (K, batch, C)
            nll = F.cross_entropy(logits.reshape(-1, C), y[i].reshape(-1), reduction="none")
            loss = nll.view(K, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        done += n
        if progress is not None:
            progress(done)
    return model


def evaluate(model, seeds: Sequence[int], data: Dataset) -> List[Trained]:
    """Each model's f on the test inputs and g on every class, in float64, its test accuracy
    and its mean NLL over the training set."""
    torch = require_torch()
    m = model.to("cpu").double()
    with torch.no_grad():
        g = m.unembed()                                          # (K, C, 2)
        out = []
        for split in ("test", "train"):
            xs = torch.from_numpy(getattr(data, f"x_{split}")).double()
            out.append(m.embed(xs.expand(m.count, -1, -1)))    # (K, n, 2)
        f_test, f_train = out
        acc = (torch.bmm(f_test, g.transpose(1, 2)).argmax(-1)
               == torch.from_numpy(data.y_test)).double().mean(1)
        logp = torch.log_softmax(torch.bmm(f_train, g.transpose(1, 2)), -1)
        y = torch.from_numpy(data.y_train)
        nll = -logp.gather(2, y.expand(m.count, -1)[..., None])[..., 0].mean(1)
    return [Trained(int(s), f_test[k].numpy().copy(), g[k].numpy().copy(), float(acc[k]),
                    float(nll[k])) for k, s in enumerate(seeds)]


# ------------------------------------------------------------------------- checkpoints

def checkpoint_dir(root, settings: TrainSettings) -> Path:
    """Where the checkpoints of one set of training settings live, under ``root``."""
    s = settings
    name = f"C{s.classes}-steps{s.steps}-data{s.data_seed}-seed{s.base_seed}"
    if (s.lr, s.batch) != (TrainSettings.lr, TrainSettings.batch):
        name += f"-lr{s.lr:g}-batch{s.batch}"
    if s.fixed_length != "none":
        name += f"-fixed_{s.fixed_length}"
    if s.device != "cpu":
        name += f"-{s.device}"
    return Path(root) / name


def checkpoint_path(root, settings: TrainSettings, width: int, seed: int) -> Path:
    return checkpoint_dir(root, settings) / f"width{width}-seed{seed}.safetensors"


def _wanted(width: int, seed: int, settings: TrainSettings) -> dict:
    return {"width": width, "seed": seed, **settings.to_dict()}


def finished(path: Path, width: int, seed: int, settings: TrainSettings) -> bool:
    """Whether ``path`` is a checkpoint of exactly this model."""
    if not path.is_file():
        return False
    try:
        return load_metadata(path).get("settings") == _wanted(width, seed, settings)
    except IdentirepError:
        return False


def save_trained(t: Trained, path: Path, width: int, settings: TrainSettings,
                 extra: dict) -> Path:
    meta = {"experiment": "identirep repro width", "width": width, "seed": t.seed,
            "classes": settings.classes, "steps": settings.steps,
            "test_accuracy": t.test_accuracy, "train_nll": t.train_nll,
            "settings": _wanted(width, t.seed, settings), **extra}
    labels = [f"class {c}" for c in range(settings.classes)]
    return save_model(Model(t.f_test, t.g, name=f"width {width}, seed {t.seed}", labels=labels),
                      path, meta)


def train_width(root, width: int, seeds: Sequence[int], data: Dataset, settings: TrainSettings,
                device: str = "cpu", progress: Optional[Callable[[int], None]] = None) -> dict:
    """Train (together) the models of ``seeds`` at ``width`` that have no finished checkpoint
    under ``root`` and save them. Returns {"trained": [seeds], "reused": [seeds],
    "seconds": training time}."""
    torch = require_torch()
    todo = [s for s in seeds
            if not finished(checkpoint_path(root, settings, width, s), width, s, settings)]
    out = {"trained": todo, "reused": [s for s in seeds if s not in todo], "seconds": 0.0}
    if not todo:
        return out
    t0 = time.perf_counter()
    model = train_models(width, todo, data, settings, device, progress)
    seconds = time.perf_counter() - t0
    extra = {"trained_with_seeds": todo, "train_seconds": seconds, "device": str(device),
             "torch_version": torch.__version__.split("+")[0]}
    for t in evaluate(model, todo, data):
        save_trained(t, checkpoint_path(root, settings, width, t.seed), width, settings, extra)
    out["seconds"] = seconds
    return out


def load_checkpoint(root, settings: TrainSettings, width: int, seed: int):
    """(Model, metadata) of a finished checkpoint."""
    path = checkpoint_path(root, settings, width, seed)
    return load_model(path), load_metadata(path)
