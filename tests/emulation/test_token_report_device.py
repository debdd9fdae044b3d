"""The per-token report on a GPU backend (the CuPy stand-in): off with a note when the models
carry their text, an error naming backend="cpu" when asked for."""
from __future__ import annotations

import numpy as np
import pytest

import identirep as ir
from identirep import IdentirepError

from standins import OPTS, device_models

pytestmark = pytest.mark.emulation


def test_a_gpu_backend_leaves_the_per_token_report_off_or_refuses_it(dev):
    (ga, gb), _ = device_models(dev.cp, N=120, V=30, M=4, seed=3)
    t = np.random.default_rng(0).integers(-1, 30, 120)
    ga, gb = (ir.Model(m.f, m.g, m.bias, name=m.name, targets=t) for m in (ga, gb))
    r = ir.compare(ga, gb, **OPTS)
    assert r.backend == "cupy" and r.tokens is None
    assert any("per-token report: off on the cupy backend" in n for n in r.notes)
    for kw in (dict(per_token=True), dict(jsd=True)):
        with pytest.raises(IdentirepError) as err:
            ir.compare(ga, gb, **OPTS, **kw)
        assert 'backend="cpu"' in err.value.fix
    # without their text, nothing to say
    (ga, gb), _ = device_models(dev.cp, N=120, V=30, M=4, seed=3)
    assert not any("per-token" in n for n in ir.compare(ga, gb, **OPTS).notes)
