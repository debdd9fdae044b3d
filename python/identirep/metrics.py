"""identirep as a torchmetrics ``Metric`` (the optional extra ``identirep[torchmetrics]``):
``IdentirepMetric`` wraps an ``Accumulator``; across ``torch.distributed`` ranks its state is
gathered and merged exactly (``Accumulator.merge``, in rank order), so that rank r's inputs
count as coming after those of ranks 0..r-1.

``identirep.metrics.IdentirepMetric`` is made on first use: without torch and torchmetrics,
this module imports and naming the class raises IdentirepError with what to install."""
from __future__ import annotations

import json
import math
import zlib

import numpy as np

from .errors import IdentirepError

#: how to install what this module needs
INSTALL = 'pip install "identirep[torchmetrics]"'
#: the packed state's leading bytes (``pack_state``; 2: each array with its CRC-32)
_MAGIC = b"IDRPSTATE2"
#: the leading bytes of earlier formats (refused, by name)
_OLD_MAGIC = (b"IDRPSTATE1",)


def pack_state(state: dict) -> np.ndarray:
    """An ``Accumulator.state_dict()`` (NumPy arrays and Python scalars) as one uint8 array:
    a JSON header of the keys, scalars, dtypes, shapes and each array's CRC-32, then the
    arrays' bytes. Exact (no value is converted), and nothing in it is executed when unpacked
    (no pickle)."""
    header, blobs, offset = [], [], 0
    for key, v in state.items():
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            if a.dtype.hasobject:
                raise IdentirepError(f"state entry {key!r} holds Python objects")
            raw = a.reshape(-1).view(np.uint8)
            header.append({"k": key, "dtype": a.dtype.str, "shape": list(a.shape),
                           "at": offset, "nbytes": a.nbytes, "crc32": zlib.crc32(raw)})
            blobs.append(raw)
            offset += a.nbytes
        else:
            if isinstance(v, np.generic):
                v = v.item()
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise IdentirepError(f"state entry {key!r} is a {type(v).__name__}, not an "
                                     "array or a number or string")
            header.append({"k": key, "v": v})
    text = json.dumps(header).encode()
    head = np.frombuffer(_MAGIC + len(text).to_bytes(8, "little") + text, np.uint8)
    return np.concatenate([head] + blobs) if blobs else head.copy()


def unpack_state(buf) -> dict:
    """The state ``pack_state`` packed (``buf``: its uint8 array, or a CPU tensor of it); a
    truncated or altered buffer (its structure, or an array's bytes against its CRC-32) is an
    IdentirepError."""
    buf = np.asarray(buf, np.uint8).reshape(-1)
    n = len(_MAGIC)
    if len(buf) >= n and buf[:n].tobytes() in _OLD_MAGIC:
        raise IdentirepError("a state packed by an older identirep (no checksums)",
                             fix="pack it again with this version (every rank the same version)")
    if len(buf) < n + 8 or buf[:n].tobytes() != _MAGIC:
        raise IdentirepError("not a packed identirep state (its leading bytes differ)")
    size = int.from_bytes(buf[n:n + 8].tobytes(), "little")
    start = n + 8 + size
    if start > len(buf):
        raise _damaged(f"its header of {size} bytes runs past its end ({len(buf)} bytes)")
    try:
        header = json.loads(buf[n + 8:start].tobytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(f"its header is not JSON ({e})") from None
    if not isinstance(header, list):
        raise _damaged("its header is not a list of entries")
    out = {}
    for e in header:
        if not isinstance(e, dict) or not isinstance(e.get("k"), str):
            raise _damaged(f"header entry {e!r:.60} names no key")
        if "v" in e:
            out[e["k"]] = e["v"]
            continue
        try:
            dtype, shape = np.dtype(e["dtype"]), tuple(int(x) for x in e["shape"])
            at, nbytes, crc = int(e["at"]), int(e["nbytes"]), int(e["crc32"])
        except (KeyError, TypeError, ValueError) as err:
            raise _damaged(f"entry {e['k']!r} has no valid dtype, shape and offset "
                           f"({err})") from None
        if dtype.hasobject or min(shape, default=0) < 0 or at < 0 or \
                nbytes != dtype.itemsize * math.prod(shape) or start + at + nbytes > len(buf):
            raise _damaged(f"entry {e['k']!r} ({dtype}, shape {shape}, {nbytes} bytes at "
                           f"{at}) does not fit its {len(buf) - start} bytes of arrays")
        raw = buf[start + at:start + at + nbytes]
        if zlib.crc32(raw) != crc:
            raise _damaged(f"the bytes of entry {e['k']!r} do not match their CRC-32 (altered "
                           "in transit or in storage)")
        out[e["k"]] = raw.view(dtype).reshape(shape).copy()
    return out


def _damaged(why: str) -> IdentirepError:
    return IdentirepError(f"a packed identirep state is damaged: {why}",
                          fix="pack it again with pack_state (a state cut short in transit or "
                              "written by another version does not load)")


def _host(x):
    """A torch tensor detached from autograd (the Accumulator reads its values); anything
    else as it is."""
    detach = getattr(x, "detach", None)
    return detach() if callable(detach) else x


def _metric_class():
    try:
        import torch
        from torchmetrics import Metric
    except ImportError as e:
        raise IdentirepError(f"identirep.metrics needs torch and torchmetrics, which are not "
                             f"installed ({e})", fix=INSTALL) from None
    from .accumulate import Accumulator
    from .measures import check_compare_options

    class IdentirepMetric(Metric):
        """Every measure of ``compare`` for a pair of models, over the batches of a data
        loader and across ``torch.distributed`` ranks.

        Parameters
        ----------
        g1, g2 : tensor or array (V x M1), (V x M2)
            The models' label vectors (CPU), e.g. copies of the LM heads' weights. They
            are read as they are when used: for heads that train, pass copies and give
            each evaluation its heads with ``set_heads``.
        bias1, bias2 : tensor or array (V), optional
        reservoir, seed, dtype, labels, names
            As ``Accumulator``.
        compare_options : dict, optional
            ``compare``'s options for ``compute`` (num_samples, seed, lam, ...).
        **kwargs
            torchmetrics' Metric options (process_group, dist_sync_fn, sync_on_compute, ...).

        ``update(f1, f2)`` folds a batch (rows: inputs; CPU tensors or arrays; a tensor that
        requires grad is read detached); ``compute()`` returns the ``Report``, from the
        statistics of every rank merged in rank order when torch.distributed is running;
        ``reset()`` forgets every input; ``set_heads(g1, g2, bias1, bias2)`` takes new label
        vectors (and forgets every input: statistics of other heads do not merge). Calling the metric (``forward``) only updates it
        and returns None: the measures are not computed per batch. ``accumulator`` is this
        rank's ``Accumulator`` (its ``state_dict`` saves a run to resume).
        """
        full_state_update = False
        is_differentiable = False
        higher_is_better = None

        def __init__(self, g1, g2, bias1=None, bias2=None, *, reservoir: int = 4096,
                     seed: int = 0, dtype=None, labels=None, names=(None, None),
                     compare_options=None, **kwargs):
            super().__init__(**kwargs)
            if compare_options is not None and not isinstance(compare_options, dict):
                raise IdentirepError(f"compare_options must be a dict of compare's options, "
                                     f"got {type(compare_options).__name__}")
            self.compare_options = dict(compare_options or {})
            check_compare_options(**self.compare_options)
            self._g = tuple(None if x is None else _host(x) for x in (g1, g2, bias1, bias2))
            self._cfg = dict(reservoir=reservoir, seed=seed, dtype=dtype, labels=labels,
                             names=names)
            # made once: each rank's state at compute, and reset, start from an empty copy
            # of it (g checked, widened and hashed once)
            self._proto = Accumulator(*self._g, **self._cfg)
            self.accumulator = self._proto.empty_like()
            # at sync: one packed state per rank, in rank order; merged by compute
            self.add_state("packed", default=[], dist_reduce_fx=None)

        def update(self, f1, f2, targets=None) -> None:
            self.accumulator.update(_host(f1), _host(f2), targets)

        def forward(self, *args, **kwargs) -> None:
            self.update(*args, **kwargs)

        def sync(self, *args, **kwargs) -> None:
            if not self._is_synced:   # else the gathered states stay (a sync made by hand)
                state = pack_state(self.accumulator.state_dict(model=False))
                self.packed = [torch.from_numpy(state).to(self.device)]
            super().sync(*args, **kwargs)

        def compute(self):
            acc = None
            parts = self.packed if self._is_synced and self.packed else \
                [pack_state(self.accumulator.state_dict(model=False))]
            for part in parts:
                if isinstance(part, torch.Tensor):
                    part = part.detach().cpu().numpy()
                one = self._proto.empty_like().load_state_dict(unpack_state(part))
                acc = one if acc is None else acc.merge(one)
            return acc.compute(**self.compare_options)

        def reset(self) -> None:
            super().reset()
            self.accumulator = self._proto.empty_like()

        def set_heads(self, g1, g2, bias1=None, bias2=None) -> None:
            """New label vectors and biases (e.g. the LM heads now, at the start of a
            validation epoch), as the constructor takes them; every input is forgotten.

            Parameters
            ----------
            g1, g2 : tensor or array (V x M1), (V x M2)
                Of the same shapes as before; CPU (``.detach().cpu().clone()`` of a head:
                a copy, which later training steps leave as it is).
            bias1, bias2 : tensor or array (V), optional
                None: no bias.
            """
            g = tuple(None if x is None else _host(x) for x in (g1, g2, bias1, bias2))
            acc = Accumulator(*g, **self._cfg)      # checked before anything changes
            if (acc.V, acc.M1, acc.M2) != (self.accumulator.V, self.accumulator.M1,
                                           self.accumulator.M2):
                raise IdentirepError(
                    f"set_heads: V x M of the heads changed from {self.accumulator.V} x "
                    f"({self.accumulator.M1}, {self.accumulator.M2}) to {acc.V} x "
                    f"({acc.M1}, {acc.M2})", fix="make a new IdentirepMetric for other models")
            super().reset()
            self._g, self._proto, self.accumulator = g, acc, acc.empty_like()

        def merge_state(self, incoming_state) -> None:
            """Fold another IdentirepMetric of the same models in (its inputs after
            these). torchmetrics' dict of states is refused: a packed state means nothing
            without its metric's heads."""
            if not isinstance(incoming_state, IdentirepMetric):
                raise IdentirepError(
                    "IdentirepMetric merges the state of another IdentirepMetric, got "
                    f"{type(incoming_state).__name__}",
                    fix="pass the other metric itself; for a saved state, load it into an "
                        "IdentirepMetric of the same heads (metric.accumulator."
                        "load_state_dict) and merge that")
            self._computed = None
            self.accumulator.merge(incoming_state.accumulator)

    IdentirepMetric.__module__ = __name__
    return IdentirepMetric


def __getattr__(name):
    if name == "IdentirepMetric":
        cls = globals()["IdentirepMetric"] = _metric_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
