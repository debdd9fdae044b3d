// Argument checks and dtype dispatch for the CUDA fused epilogue (kernels/lse_kl.cuh).
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "kernels/lse_kl.cuh"
#include "lse_kl_cuda.h"

namespace identirep {

namespace {

void Require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("lse_kl_update_cuda: " + what);
}

}  // namespace

void lse_kl_update_cuda(uintptr_t l1, uintptr_t l2, int64_t n, int64_t v, int64_t ld1,
                        int64_t ld2, int64_t col0, uintptr_t state, int64_t state_ld,
                        uintptr_t args, int64_t args_ld, const std::string& dtype,
                        uintptr_t stream) {
  const bool f32 = dtype == "float32";
  Require(f32 || dtype == "float64",
          "dtype must be \"float32\" or \"float64\", got \"" + dtype + "\"");
  Require(n >= 0 && v >= 0, "n and v must be >= 0");
  Require(col0 >= 0, "col0 must be >= 0, got " + std::to_string(col0));
  if (n == 0 || v == 0) return;
  Require(l1 != 0 && l2 != 0 && state != 0 && args != 0, "null device pointer");
  Require(n == 1 || (ld1 >= v || ld1 <= -v), "the rows of l1 overlap (|ld1| < v)");
  Require(n == 1 || (ld2 >= v || ld2 <= -v), "the rows of l2 overlap (|ld2| < v)");
  Require(state_ld >= n || state_ld <= -n, "the rows of state overlap (|state_ld| < n)");
  Require(args_ld >= n || args_ld <= -n, "the rows of args overlap (|args_ld| < n)");

  auto* st = reinterpret_cast<double*>(state);
  auto* ag = reinterpret_cast<int64_t*>(args);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  cudaError_t err;
  if (f32) {
    err = kernels::LseKl(reinterpret_cast<const float*>(l1), ld1,
                         reinterpret_cast<const float*>(l2), ld2, n, v, col0, st, state_ld, ag,
                         args_ld, s);
  } else {
    err = kernels::LseKl(reinterpret_cast<const double*>(l1), ld1,
                         reinterpret_cast<const double*>(l2), ld2, n, v, col0, st, state_ld, ag,
                         args_ld, s);
  }
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("lse_kl_update_cuda: launch failed: ") +
                             cudaGetErrorString(err));
}

}  // namespace identirep
