// CUDA operations on device pointers (csrc/lse_kl.cu, csrc/pivot_terms.cu), declared without
// CUDA or pybind11 headers so that bindings.cpp can export them. Pointers arrive as integers so
// that any caller (CuPy, torch) can pass its own device buffers; each runs on `stream` (a
// cudaStream_t as an integer, 0: the legacy default stream) and does not synchronise.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace identirep {

// l1, l2: n x v logit tiles (dtype "float32" or "float64"), row strides ld1, ld2 (elements).
// state: float64 8 x n (row stride state_ld), args: int64 2 x n (row stride args_ld); layout as
// in csrc/kernels/lse_kl.h. Optional (0: skipped): row_moments float64 5 x n (row stride
// row_ld), col_moments float64 5 x col_ld (labels col0 .. col0+v-1 of it are updated, inputs
// seen so far: row0), which needs col_work, a float64 scratch of lse_kl_cuda_col_work_elems(v)
// elements (reusable once the stream has passed this call). With row_work (a float64 scratch
// of lse_kl_cuda_fused_work_elems(n, v).first elements) the fused one-read epilogue runs
// instead, and col_work must hold .second elements. Throws std::invalid_argument on bad
// arguments and std::runtime_error when a launch fails.
void lse_kl_update_cuda(uintptr_t l1, uintptr_t l2, int64_t n, int64_t v, int64_t ld1,
                        int64_t ld2, int64_t col0, uintptr_t state, int64_t state_ld,
                        uintptr_t args, int64_t args_ld, const std::string& dtype,
                        uintptr_t stream, uintptr_t row_moments, int64_t row_ld,
                        uintptr_t col_moments, int64_t col_ld, int64_t row0, uintptr_t col_work,
                        uintptr_t row_work);

// Doubles of column scratch that lse_kl_update_cuda needs for a tile of v labels.
int64_t lse_kl_cuda_col_work_elems(int64_t v);

// Doubles of (row_work, col_work) that the fused epilogue needs for an n x v tile.
std::pair<int64_t, int64_t> lse_kl_cuda_fused_work_elems(int64_t n, int64_t v);

// Label-side pivot criteria (kernels/pivot_terms.cuh): X1, X2 B x V of x_dtype "float32" or
// "float64" (row strides ld1, ld2), n1, n2, A1, A2, B12 float64 V, pivots int64 B, crit float64
// B (written); mode "max" or "mean". A pivot outside [0, V) gives NaN. Throws like
// lse_kl_update_cuda.
void pivot_criteria_cuda(uintptr_t X1, uintptr_t X2, int64_t ld1, int64_t ld2, uintptr_t n1,
                         uintptr_t n2, uintptr_t A1, uintptr_t A2, uintptr_t B12,
                         uintptr_t pivots, int64_t B, int64_t V, double tol,
                         const std::string& mode, uintptr_t crit, uintptr_t stream,
                         const std::string& x_dtype);

}  // namespace identirep
