// The compiled CUDA entry points as Python calls them (bindings.cpp exports these): each takes
// device arrays through __cuda_array_interface__ (CuPy arrays, torch CUDA tensors, numba arrays,
// identirep.gpu's DeviceArray.data), checks what the operation of cuda_ops.h needs of them
// (dtype, shape, strides, alignment, writable outputs, all on one device: the memory type and
// device of each pointer, cudaPointerGetAttributes), names the argument and the reason when one
// does not fit, and runs the operation on `stream` (a cudaStream_t as an integer, 0: the legacy
// default stream) of the arrays' device, without the GIL. Nothing synchronises. The `stream`
// entry of a version-3 interface is not read, and the stream is not checked against the
// arrays' device: the caller passes the stream the arrays are ready on, one of their device
// (identirep's callers pass CuPy's current stream, on the current device).
//
// bfloat16 arrives as its 16-bit patterns: a uint16 or int16 array is bfloat16 to these
// functions (CuPy has no bfloat16 dtype of its own, and torch's does not cross
// __cuda_array_interface__: view it as int16).
//
// The checks of the arrays need no device and run first. Arguments that describe no work (an
// empty label range of the pass, a tile of no rows) are checked in full and touch no device.
#pragma once

#include <cstdint>
#include <string>

#include <pybind11/pybind11.h>

namespace identirep {
namespace arrays {

// lse_kl_update_cuda of cuda_ops.h: l1, l2 (n, v) float32 or float64 logits, rows contiguous;
// state (8, n) float64, args (2, n) int64, row_moments (5, n) float64 (optional), col_moments
// (5, V) float64 with V >= col0 + v (optional; then col_work is needed), col_work and row_work
// 1-d float64 scratch (row_work: the one-read epilogue).
void lse_kl_update_cuda(pybind11::handle l1, pybind11::handle l2, pybind11::handle state,
                        pybind11::handle args, int64_t col0, pybind11::handle row_moments,
                        pybind11::handle col_moments, int64_t row0, pybind11::handle col_work,
                        pybind11::handle row_work, uintptr_t stream);

// pivot_criteria_cuda of cuda_ops.h: X1, X2 (B, V) float32 or float64 (one dtype), rows
// contiguous; n1, n2, A1, A2, B12 (V,) float64 and pivots (B,) int64, contiguous; crit (B,)
// float64, written.
void pivot_criteria_cuda(pybind11::handle X1, pybind11::handle X2, pybind11::handle n1,
                         pybind11::handle n2, pybind11::handle A1, pybind11::handle A2,
                         pybind11::handle B12, pybind11::handle pivots, double tol,
                         const std::string& mode, pybind11::handle crit, uintptr_t stream);

#ifdef IDENTIREP_WITH_CUBLAS
// lse_kl_pass_cuda of cuda_ops.h: f1 (N, M1), g1 (V, M1), f2 (N, M2), g2 (V, M2) of float16,
// bfloat16 (its bits), float32 or float64, f_k and g_k of one kind, rows or columns contiguous;
// float64 logits when all four are float64, float32 otherwise. state (8, N), row_moments (5, N),
// col_moments (5, V) float64 and args (2, N) int64, C-contiguous; workspace: 1-d uint8 of
// lse_kl_pass_cuda_workspace(...) bytes or more, 256-byte aligned.
void lse_kl_pass_cuda(pybind11::handle f1, pybind11::handle g1, pybind11::handle f2,
                      pybind11::handle g2, pybind11::handle state, pybind11::handle args,
                      pybind11::handle row_moments, pybind11::handle col_moments,
                      pybind11::handle workspace, int64_t c_begin, int64_t c_end,
                      int64_t tile_rows, int64_t tile_cols, bool overlap, bool fused, int gemm,
                      bool wgmma, uintptr_t stream);

// lse_kl_gemm_mainloop_pass of cuda_ops.h: the fused GEMM kernel over f_k g_k' without its
// epilogue (a timing probe); operands as lse_kl_pass_cuda's with gemm.
void lse_kl_gemm_mainloop_cuda(pybind11::handle f1, pybind11::handle g1, pybind11::handle f2,
                               pybind11::handle g2, int gemm, bool wgmma, uintptr_t stream);
#endif

}  // namespace arrays
}  // namespace identirep
