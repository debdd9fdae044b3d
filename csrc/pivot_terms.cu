// Argument checks for the CUDA label-side pivot search epilogue (kernels/pivot_terms.cuh).
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "kernels/pivot_terms.cuh"

namespace identirep {

namespace {

void Require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("pivot_criteria_cuda: " + what);
}

}  // namespace

void pivot_criteria_cuda(uintptr_t X1, uintptr_t X2, int64_t ld1, int64_t ld2, uintptr_t n1,
                         uintptr_t n2, uintptr_t A1, uintptr_t A2, uintptr_t B12,
                         uintptr_t pivots, int64_t B, int64_t V, double tol,
                         const std::string& mode, uintptr_t crit, uintptr_t stream,
                         const std::string& x_dtype) {
  Require(mode == "max" || mode == "mean", "mode must be 'max' or 'mean', got '" + mode + "'");
  Require(x_dtype == "float32" || x_dtype == "float64",
          "x_dtype must be 'float32' or 'float64', got '" + x_dtype + "'");
  Require(B >= 0 && V >= 0, "B and V must be >= 0");
  if (B == 0) return;
  Require(V >= 1, "V must be >= 1");
  Require(X1 != 0 && X2 != 0 && n1 != 0 && n2 != 0 && A1 != 0 && A2 != 0 && B12 != 0 &&
              pivots != 0 && crit != 0,
          "null device pointer");
  Require(B == 1 || ld1 >= V || ld1 <= -V, "the rows of X1 overlap (|ld1| < V)");
  Require(B == 1 || ld2 >= V || ld2 <= -V, "the rows of X2 overlap (|ld2| < V)");
  const kernels::DevicePivotInputs in{
      reinterpret_cast<const void*>(X1), ld1, reinterpret_cast<const void*>(X2), ld2,
      reinterpret_cast<const double*>(n1), reinterpret_cast<const double*>(n2),
      reinterpret_cast<const double*>(A1), reinterpret_cast<const double*>(A2),
      reinterpret_cast<const double*>(B12), reinterpret_cast<const kernels::PivotIndex*>(pivots),
      B, V, tol, mode == "max" ? 0 : 1, x_dtype == "float32"};
  const cudaError_t err =
      kernels::PivotCriteria(in, reinterpret_cast<double*>(crit),
                             reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("pivot_criteria_cuda: launch failed: ") +
                             cudaGetErrorString(err));
}

}  // namespace identirep
