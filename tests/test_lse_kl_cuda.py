"""The CUDA epilogue _core.lse_kl_update_cuda against the CPU one."""
from __future__ import annotations

import numpy as np
import pytest

from identirep import _core
from identirep._stream import finalize, init_state
from reference_softmax import assert_close


def test_argument_checks_need_no_gpu(needs_cuda_build):
    with pytest.raises(ValueError, match='dtype must be "float32" or "float64"'):
        _core.lse_kl_update_cuda(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "float16")
    with pytest.raises(ValueError, match="col0 must be >= 0"):
        _core.lse_kl_update_cuda(0, 0, 4, 4, 4, 4, -1, 0, 4, 0, 4, "float32")
    with pytest.raises(ValueError, match="null device pointer"):
        _core.lse_kl_update_cuda(0, 0, 4, 4, 4, 4, 0, 0, 4, 0, 4, "float32")
    # nothing to do: returns without touching the device
    _core.lse_kl_update_cuda(0, 0, 0, 5, 5, 5, 0, 0, 0, 0, 0, "float64")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_cpu_epilogue(cupy, dtype):
    rng = np.random.default_rng(0)
    n, v, tile = 67, 5003, 1000
    l1 = (3 * rng.standard_normal((n, v))).astype(dtype)
    l2 = (l1 + rng.standard_normal((n, v))).astype(dtype)
    l1[5, 100:200] = 1e4  # large logits and ties (first index wins)
    l2[6, :] = -1000.0 * (np.arange(v) % 3)  # gaps of 1000

    cpu_state, cpu_args = init_state(n)
    d1 = cupy.asarray(np.pad(l1, ((0, 0), (0, 13))))  # row stride v + 13
    d2 = cupy.asarray(l2)
    state, args = init_state(n)
    dstate, dargs = cupy.asarray(state), cupy.asarray(args)
    cupy.cuda.Device().synchronize()  # the copies above ran on the default stream
    stream = cupy.cuda.Stream(non_blocking=True)
    for c0 in range(0, v, tile):
        c1 = min(v, c0 + tile)
        _core.lse_kl_update(l1[:, c0:c1], l2[:, c0:c1], cpu_state, cpu_args, c0)
        _core.lse_kl_update_cuda(
            d1.data.ptr + c0 * d1.itemsize, d2.data.ptr + c0 * d2.itemsize, n, c1 - c0,
            d1.shape[1], d2.shape[1], c0, dstate.data.ptr, n, dargs.data.ptr, n,
            np.dtype(dtype).name, stream.ptr)
    stream.synchronize()
    got = finalize(cupy.asnumpy(dstate), cupy.asnumpy(dargs))
    np.testing.assert_array_equal(cupy.asnumpy(dargs), cpu_args)
    scale = np.maximum(np.abs(l1).max(axis=1), np.abs(l2).max(axis=1))
    assert_close(got, finalize(cpu_state, cpu_args), dtype, scale)
