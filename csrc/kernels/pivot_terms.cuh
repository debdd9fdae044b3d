// CUDA label-side d_LLV pivot search epilogue: the same math as kernels/pivot_terms.h (terms,
// exclusion rule, modes and the criterion of each pivot row are documented there), on device
// arrays.
//
// Inputs: X1, X2 float32 or float64 (template TX; B x V, row strides ld1, ld2 in elements, unit
// stride along a row), the cross products g_k(y0)' C_k g_k(y), widened to float64 when read;
// n1, n2, A1, A2, B12 float64 (V); pivots int64 (B).
// Output: crit float64 (B). A pivot index outside [0, V) gives NaN (the device cannot raise).
// One block of kPivotThreads threads per pivot row: each thread evaluates its labels and keeps
// the count of valid labels, their sum and the two largest values (a multiset: a repeated
// maximum is also the second largest, as in the CPU kernel's "max over y != argmax"); the block
// merges them with warp shuffles and thread 0 writes the criterion. All arithmetic in float64.
// Compiles with nvcc (kernel + launcher) and NVRTC (kernel only), like kernels/lse_kl.cuh;
// its block size is kPivotThreads of kernels/launch_table.h.
#pragma once

#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif

#include "launch_table.h"

namespace identirep {
namespace kernels {

using PivotIndex = long long;

namespace pivot_detail {

__device__ __forceinline__ double NegInf() { return -__longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ double PosInf() { return __longlong_as_double(0x7ff0000000000000LL); }

// Insert v into the top-2 multiset (t1 >= t2).
__device__ __forceinline__ void Top2Insert(double& t1, double& t2, double v) {
  if (v > t1) {
    t2 = t1;
    t1 = v;
  } else if (v > t2) {
    t2 = v;
  }
}

}  // namespace pivot_detail

template <typename TX, int kThreads>
__global__ void __launch_bounds__(kThreads)
    PivotCriteriaKernel(const TX* __restrict__ X1, PivotIndex ld1,
                        const TX* __restrict__ X2, PivotIndex ld2,
                        const double* __restrict__ n1, const double* __restrict__ n2,
                        const double* __restrict__ A1, const double* __restrict__ A2,
                        const double* __restrict__ B12, const PivotIndex* __restrict__ pivots,
                        PivotIndex V, double tol, int mode, double* __restrict__ crit) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block must be whole warps");
  constexpr int kWarps = kThreads / 32;
  const PivotIndex j = static_cast<PivotIndex>(blockIdx.x);
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const PivotIndex y0 = pivots[j];
  if (y0 < 0 || y0 >= V) {  // uniform over the block
    if (tid == 0) crit[j] = __longlong_as_double(0x7ff8000000000000LL);
    return;
  }
  const TX* x1 = X1 + j * ld1;
  const TX* x2 = X2 + j * ld2;
  const double n10 = n1[y0], n20 = n2[y0];
  const double a10 = A1[y0], a20 = A2[y0], b0 = B12[y0];
  const double ninf = pivot_detail::NegInf();

  double t1 = ninf, t2 = ninf, sum = 0.0;
  PivotIndex count = 0;
  for (PivotIndex y = tid; y < V; y += kThreads) {
    const double s1 = n1[y] + n10 - 2.0 * static_cast<double>(x1[y]);
    const double s2 = n2[y] + n20 - 2.0 * static_cast<double>(x2[y]);
    const bool ok = (y != y0) & (s1 > tol * (n1[y] + n10)) & (s2 > tol * (n2[y] + n20));
    if (!ok) continue;
    const double i1 = 1.0 / s1, i2 = 1.0 / s2, c = 2.0 / sqrt(s1 * s2);
    const double r2 = A1[y] * i1 + A2[y] * i2 - B12[y] * c;
    const double p2 = a10 * i1 + a20 * i2 - b0 * c;
    double v;
    if (mode == 0) {
      const double m2 = r2 > p2 ? r2 : p2;
      v = sqrt(m2 > 0.0 ? m2 : 0.0);
    } else {
      v = sqrt(r2 > 0.0 ? r2 : 0.0) + sqrt(p2 > 0.0 ? p2 : 0.0);
    }
    ++count;
    sum += v;
    pivot_detail::Top2Insert(t1, t2, v);
  }

#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const double o1 = __shfl_xor_sync(0xffffffffu, t1, off);
    const double o2 = __shfl_xor_sync(0xffffffffu, t2, off);
    count += __shfl_xor_sync(0xffffffffu, count, off);
    sum += __shfl_xor_sync(0xffffffffu, sum, off);
    // the two largest of {t1, t2, o1, o2}, with t1 >= t2 and o1 >= o2
    const double hi = t1 > o1 ? t1 : o1;
    const double lo = t1 > o1 ? o1 : t1;
    const double second = t2 > o2 ? t2 : o2;
    t1 = hi;
    t2 = lo > second ? lo : second;
  }
  __shared__ double sh_t1[kWarps], sh_t2[kWarps], sh_sum[kWarps];
  __shared__ PivotIndex sh_count[kWarps];
  if (lane == 0) {
    sh_t1[warp] = t1;
    sh_t2[warp] = t2;
    sh_sum[warp] = sum;
    sh_count[warp] = count;
  }
  __syncthreads();
  if (tid != 0) return;
  for (int w = 1; w < kWarps; ++w) {
    pivot_detail::Top2Insert(t1, t2, sh_t1[w]);
    pivot_detail::Top2Insert(t1, t2, sh_t2[w]);
    sum += sh_sum[w];
    count += sh_count[w];
  }
  double out;
  if (count == 0) {
    out = pivot_detail::PosInf();
  } else if (mode == 0) {
    out = count == 1 ? t1 : t2;
  } else {
    out = count == 1 ? sum / 2.0 : (sum - t1) / (2.0 * static_cast<double>(count - 1));
  }
  crit[j] = out;
}

#ifndef __CUDACC_RTC__

// Device pointers and sizes of one block of pivots (mode 0: "max", 1: "mean"); X1, X2 point to
// float32 values when x_f32, float64 otherwise.
struct DevicePivotInputs {
  const void* X1;
  PivotIndex ld1;
  const void* X2;
  PivotIndex ld2;
  const double* n1;
  const double* n2;
  const double* A1;
  const double* A2;
  const double* B12;
  const PivotIndex* pivots;
  PivotIndex B;
  PivotIndex V;
  double tol;
  int mode;
  bool x_f32;
};

// Launcher: one block per pivot on `stream`. Returns the launch status.
inline cudaError_t PivotCriteria(const DevicePivotInputs& in, double* crit, cudaStream_t stream) {
  if (in.B <= 0) return cudaSuccess;
  if (in.B > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(in.B);
  if (in.x_f32) {
    PivotCriteriaKernel<float, kPivotThreads><<<grid, kPivotThreads, 0, stream>>>(
        static_cast<const float*>(in.X1), in.ld1, static_cast<const float*>(in.X2), in.ld2, in.n1,
        in.n2, in.A1, in.A2, in.B12, in.pivots, in.V, in.tol, in.mode, crit);
  } else {
    PivotCriteriaKernel<double, kPivotThreads><<<grid, kPivotThreads, 0, stream>>>(
        static_cast<const double*>(in.X1), in.ld1, static_cast<const double*>(in.X2), in.ld2,
        in.n1, in.n2, in.A1, in.A2, in.B12, in.pivots, in.V, in.tol, in.mode, crit);
  }
  return cudaGetLastError();
}

#endif  // __CUDACC_RTC__

}  // namespace kernels
}  // namespace identirep
