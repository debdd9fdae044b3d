// Argument checks and dtype dispatch for the CUDA fused epilogue (kernels/lse_kl.cuh).
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "kernels/lse_kl.cuh"

namespace identirep {
namespace kernels {
extern template cudaError_t LseKl<float>(const float*, Index, const float*, Index, Index, Index,
                                         Index, double*, Index, Index*, Index,
                                         const DeviceLogitMoments&, cudaStream_t);
extern template cudaError_t LseKl<double>(const double*, Index, const double*, Index, Index,
                                          Index, Index, double*, Index, Index*, Index,
                                          const DeviceLogitMoments&, cudaStream_t);
extern template cudaError_t LseKlFused<float>(const float*, Index, const float*, Index, Index,
                                              Index, Index, double*, Index, Index*, Index,
                                              const DeviceLogitMoments&, double*, cudaStream_t);
extern template cudaError_t LseKlFused<double>(const double*, Index, const double*, Index, Index,
                                               Index, Index, double*, Index, Index*, Index,
                                               const DeviceLogitMoments&, double*, cudaStream_t);
}  // namespace kernels

namespace {

void Require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("lse_kl_update_cuda: " + what);
}

// The rows of a (rows x cols) array with row stride ld do not overlap.
bool Disjoint(int64_t rows, int64_t cols, int64_t ld) {
  return rows <= 1 || ld >= cols || ld <= -cols;
}

}  // namespace

void lse_kl_update_cuda(uintptr_t l1, uintptr_t l2, int64_t n, int64_t v, int64_t ld1,
                        int64_t ld2, int64_t col0, uintptr_t state, int64_t state_ld,
                        uintptr_t args, int64_t args_ld, const std::string& dtype,
                        uintptr_t stream, uintptr_t row_moments, int64_t row_ld,
                        uintptr_t col_moments, int64_t col_ld, int64_t row0,
                        uintptr_t col_work, uintptr_t row_work) {
  const bool f32 = dtype == "float32";
  Require(f32 || dtype == "float64",
          "dtype must be \"float32\" or \"float64\", got \"" + dtype + "\"");
  Require(n >= 0 && v >= 0, "n and v must be >= 0");
  Require(col0 >= 0, "col0 must be >= 0, got " + std::to_string(col0));
  Require(row0 >= 0, "row0 must be >= 0, got " + std::to_string(row0));
  if (n == 0 || v == 0) return;
  Require(l1 != 0 && l2 != 0 && state != 0 && args != 0, "null device pointer");
  Require(Disjoint(n, v, ld1), "the rows of l1 overlap (|ld1| < v)");
  Require(Disjoint(n, v, ld2), "the rows of l2 overlap (|ld2| < v)");
  Require(Disjoint(8, n, state_ld), "the rows of state overlap (|state_ld| < n)");
  Require(Disjoint(2, n, args_ld), "the rows of args overlap (|args_ld| < n)");
  if (row_moments != 0)
    Require(Disjoint(5, n, row_ld), "the rows of row_moments overlap (|row_ld| < n)");
  if (col_moments != 0) {
    Require(col_ld >= col0 + v,
            "col_moments needs col_ld >= col0 + v = " + std::to_string(col0 + v) + ", got " +
                std::to_string(col_ld));
    Require(col_work != 0, "col_moments needs col_work (lse_kl_cuda_col_work_elems(v) float64, "
                           "or the second of lse_kl_cuda_fused_work_elems(n, v) with row_work)");
  }

  auto* st = reinterpret_cast<double*>(state);
  auto* ag = reinterpret_cast<kernels::Index*>(args);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const kernels::DeviceLogitMoments mom{reinterpret_cast<double*>(row_moments), row_ld,
                                        reinterpret_cast<double*>(col_moments), col_ld, row0,
                                        reinterpret_cast<double*>(col_work)};
  auto* rw = reinterpret_cast<double*>(row_work);
  cudaError_t err;
  if (f32) {
    const auto* a = reinterpret_cast<const float*>(l1);
    const auto* b = reinterpret_cast<const float*>(l2);
    err = rw ? kernels::LseKlFused(a, ld1, b, ld2, n, v, col0, st, state_ld, ag, args_ld, mom, rw, s)
             : kernels::LseKl(a, ld1, b, ld2, n, v, col0, st, state_ld, ag, args_ld, mom, s);
  } else {
    const auto* a = reinterpret_cast<const double*>(l1);
    const auto* b = reinterpret_cast<const double*>(l2);
    err = rw ? kernels::LseKlFused(a, ld1, b, ld2, n, v, col0, st, state_ld, ag, args_ld, mom, rw, s)
             : kernels::LseKl(a, ld1, b, ld2, n, v, col0, st, state_ld, ag, args_ld, mom, s);
  }
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("lse_kl_update_cuda: launch failed: ") +
                             cudaGetErrorString(err));
}

}  // namespace identirep
