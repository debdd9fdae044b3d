// CUDA fused epilogue on device pointers (csrc/lse_kl.cu), declared without CUDA or pybind11
// headers so that bindings.cpp can export it. Pointers arrive as integers so that any caller
// (CuPy, torch) can pass its own device buffers; runs on `stream` and does not synchronise.
#pragma once

#include <cstdint>
#include <string>

namespace identirep {

// l1, l2: n x v logit tiles (dtype "float32" or "float64"), row strides ld1, ld2 (elements).
// state: float64 8 x n (row stride state_ld), args: int64 2 x n (row stride args_ld); layout as
// in csrc/kernels/lse_kl.h. Throws std::invalid_argument on bad arguments and
// std::runtime_error when the launch fails.
void lse_kl_update_cuda(uintptr_t l1, uintptr_t l2, int64_t n, int64_t v, int64_t ld1,
                        int64_t ld2, int64_t col0, uintptr_t state, int64_t state_ld,
                        uintptr_t args, int64_t args_ld, const std::string& dtype,
                        uintptr_t stream);

}  // namespace identirep
