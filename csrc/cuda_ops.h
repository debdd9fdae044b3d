// CUDA operations on device pointers (csrc/lse_kl.cu, csrc/pivot_terms.cu), declared without
// CUDA or pybind11 headers so that bindings.cpp can export them. Pointers arrive as integers so
// that any caller (CuPy, torch) can pass its own device buffers; each runs on `stream` (a
// cudaStream_t as an integer, 0: the legacy default stream) and does not synchronise.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "plan.h"

namespace identirep {

// l1, l2: n x v logit tiles (dtype "float32" or "float64"), row strides ld1, ld2 (elements).
// state: float64 8 x n (row stride state_ld), args: int64 2 x n (row stride args_ld); layout as
// in csrc/kernels/lse_kl.h. Optional (0: skipped): row_moments float64 5 x n (row stride
// row_ld), col_moments float64 5 x col_ld (labels col0 .. col0+v-1 of it are updated, inputs
// seen so far: row0), which needs col_work, a float64 scratch of lse_kl_cuda_col_work_elems(v)
// elements (plan.h; reusable once the stream has passed this call). With row_work (a float64
// scratch of lse_kl_cuda_fused_work_elems(n, v).first elements) the fused one-read epilogue runs
// instead, and col_work must hold .second elements. Throws std::invalid_argument on bad
// arguments and std::runtime_error when a launch fails.
void lse_kl_update_cuda(uintptr_t l1, uintptr_t l2, int64_t n, int64_t v, int64_t ld1,
                        int64_t ld2, int64_t col0, uintptr_t state, int64_t state_ld,
                        uintptr_t args, int64_t args_ld, const std::string& dtype,
                        uintptr_t stream, uintptr_t row_moments, int64_t row_ld,
                        uintptr_t col_moments, int64_t col_ld, int64_t row0, uintptr_t col_work,
                        uintptr_t row_work);

// Label-side pivot criteria (kernels/pivot_terms.cuh): X1, X2 B x V of x_dtype "float32" or
// "float64" (row strides ld1, ld2), n1, n2, A1, A2, B12 float64 V, pivots int64 B, crit float64
// B (written); mode "max" or "mean". A pivot outside [0, V) gives NaN. Throws like
// lse_kl_update_cuda.
void pivot_criteria_cuda(uintptr_t X1, uintptr_t X2, int64_t ld1, int64_t ld2, uintptr_t n1,
                         uintptr_t n2, uintptr_t A1, uintptr_t A2, uintptr_t B12,
                         uintptr_t pivots, int64_t B, int64_t V, double tol,
                         const std::string& mode, uintptr_t crit, uintptr_t stream,
                         const std::string& x_dtype);

// Experimental until a GPU has confirmed it (opt-in: the pass driver's gemm):
// the logits and the epilogue in one kernel (kernels/lse_kl_gemm.cuh) for float16/bfloat16
// operands: f_k (n x k_k) and g_k (v x k_k) with contiguous rows (row strides ld, a multiple of
// 8 elements; pointers 16-byte aligned), kind "float16" or "bfloat16" for both pairs.
struct GemmOperands {
  uintptr_t f1, g1, f2, g2;
  int64_t ldf1, ldg1, ldf2, ldg2, k1, k2;
  std::string kind;
  int block_rows = 128;  // rows of a block's sub-tile: 128 or 64 (kernels/lse_kl_gemm.cuh)
  bool wgmma = false;    // wgmma (sm_90a, compute capability 9.0) instead of mma.sync
};

// Why the wgmma kernel cannot run on `device` ("" if it can; device < 0: whether it is built).
std::string lse_kl_gemm_wgmma_problem(int device);

// Why an operand (data pointer, row stride, columns) cannot go to the fused GEMM; "" if it can.
inline std::string lse_kl_gemm_operand_problem(uintptr_t ptr, int64_t ld, int64_t k) {
  if (ptr % 16 != 0) return "its data is not 16-byte aligned";
  if (ld % 8 != 0) return "its row stride (" + std::to_string(ld) + ") is not a multiple of 8";
  if (k < 1 || k >= (int64_t{1} << 31)) return "it needs 1 <= columns < 2^31";
  if (ld < k) return "its row stride is below its number of columns";
  return "";
}

// lse_kl_update_cuda (float32 logits, the fused epilogue's statistics) of the logits
// f_k g_k' of inputs 0..n-1 and labels 0..v-1 (offset the pointers for a tile), computed and
// reduced on chip. Same state, args and moments arguments; row_work, col_work and shift are
// scratch of lse_kl_gemm_work_elems(n, v). Needs compute capability 8.0+; asynchronous.
void lse_kl_gemm_update_cuda(const GemmOperands& op, int64_t n, int64_t v, int64_t col0,
                             uintptr_t state, int64_t state_ld, uintptr_t args, int64_t args_ld,
                             uintptr_t row_moments, int64_t row_ld, uintptr_t col_moments,
                             int64_t col_ld, int64_t row0, uintptr_t row_work,
                             uintptr_t col_work, uintptr_t shift, uintptr_t stream);

// A timing probe: the fused GEMM kernel over f_k[0:n] g_k[0:v]' without its epilogue (the
// GEMMs and the tile stores to shared memory alone; nothing is written). Asynchronous.
void lse_kl_gemm_mainloop_cuda(const GemmOperands& op, int64_t n, int64_t v, uintptr_t stream);

#ifdef IDENTIREP_WITH_CUBLAS
// ---- the pass driver (csrc/cuda_pass.cpp): cuBLAS tiles + the epilogue above, one call ----

// A 2-d device array: pointer, shape, strides in elements, kind "float16" | "bfloat16" |
// "float32" | "float64" (bfloat16 as its bits).
struct CudaOperand {
  uintptr_t ptr;
  int64_t rows, cols, s0, s1;
  std::string kind;
};

// Loads libcublas (the first candidate path or soname that dlopen accepts and whose major
// version is the headers'); returns the file loaded. Later calls return it again.
std::string cublas_load(const std::vector<std::string>& candidates);
// (major, minor, patch) of the loaded cuBLAS, and the major of the headers built against.
std::vector<int> cublas_version();
int cublas_header_major();

// The pass over labels [c_begin, c_end): for each label tile (tile_cols), for each row tile
// (tile_rows), the logit tiles f_k g_k' (cublasGemmEx; f_k, g_k of one kind; float32 output
// and accumulation, or float64 when dtype is "float64") and lse_kl_update_cuda on them (gemm
// = 128 or 64: lse_kl_gemm_update_cuda instead, blocks of that many rows (wgmma: its sm_90a
// kernel), without cuBLAS, for
// float16/bfloat16 operands of one kind with contiguous rows as it needs them; overlap and
// fused are then ignored; 0: cuBLAS tiles). state
// (8, N), args (2, N), row_moments (5, N) with row stride N and col_moments (5, V) with row
// stride V as in lse_kl_update_cuda. overlap: the epilogue on a second stream, ordered by
// events, beside the next tile's GEMMs (same results). Asynchronous on `stream` of `device`.
// Labels from c_begin > 0 are merged into the state as the continuation of labels
// [0, c_begin) (their row moments count c_begin labels before). workspace: 256-byte aligned,
// lse_kl_pass_cuda_workspace(...) bytes, of which cublas_workspace_bytes() are cuBLAS's.
void lse_kl_pass_cuda(const CudaOperand& f1, const CudaOperand& g1, const CudaOperand& f2,
                      const CudaOperand& g2, int64_t c_begin, int64_t c_end, int64_t tile_rows,
                      int64_t tile_cols, uintptr_t state, uintptr_t args, uintptr_t row_moments,
                      uintptr_t col_moments, uintptr_t workspace, int64_t workspace_bytes,
                      const std::string& dtype, bool overlap, bool fused, int gemm,
                      uintptr_t stream, int device, bool wgmma = false);

// The fused GEMM's view of the four operands of lse_kl_pass_cuda with gemm = block_rows (128 or
// 64) and wgmma; throws std::invalid_argument, saying which and why, unless they are float16 or
// bfloat16 of one kind with contiguous rows, row strides a multiple of 8 and 16-byte aligned
// data (no device is touched).
GemmOperands lse_kl_gemm_operands(const CudaOperand& f1, const CudaOperand& g1,
                                  const CudaOperand& f2, const CudaOperand& g2, int block_rows,
                                  bool wgmma);

// lse_kl_gemm_mainloop_cuda over the whole of f1, g1, f2, g2 (operands as lse_kl_pass_cuda's
// with gemm = 128 or 64 and wgmma) on `stream` of `device`: one launch.
void lse_kl_gemm_mainloop_pass(const CudaOperand& f1, const CudaOperand& g1,
                               const CudaOperand& f2, const CudaOperand& g2, int gemm,
                               bool wgmma, uintptr_t stream, int device);
#endif

}  // namespace identirep
