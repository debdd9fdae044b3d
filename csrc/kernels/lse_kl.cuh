// CUDA fused streaming epilogue: the same update as kernels/lse_kl.h (formulas, state layout
// and tie rule documented there), for logit tiles resident on the GPU.
//
// Inputs: l1, l2 (n x v, float32 or float64, row strides ld1, ld2 in elements, unit stride
// along a row). State: float64 8 x n (row stride state_ld), args: int64 2 x n (row stride
// args_ld). One thread block per input row: pass 1 reduces the row max and its first index,
// pass 2 the six sums relative to the new max. Accumulation: each thread sums its labels in the
// tile dtype's accumulator (float for float32 tiles, double for float64), the block reduction
// and the state update run in float64.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace identirep {
namespace kernels {

namespace cuda_detail {

template <typename T>
struct Acc;
template <>
struct Acc<float> {
  using type = float;
  __device__ static float Exp(float x) { return expf(x); }
};
template <>
struct Acc<double> {
  using type = double;
  __device__ static double Exp(double x) { return exp(x); }
};

template <typename T>
__device__ __forceinline__ T NegInf();
template <>
__device__ __forceinline__ float NegInf<float>() { return -__int_as_float(0x7f800000); }
template <>
__device__ __forceinline__ double NegInf<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}

// (value, index) pair that keeps the larger value, and the smaller index on ties.
template <typename T>
__device__ __forceinline__ void ArgMaxCombine(T& m, int64_t& j, T m_other, int64_t j_other) {
  if (m_other > m || (m_other == m && j_other < j)) {
    m = m_other;
    j = j_other;
  }
}

template <typename T>
__device__ __forceinline__ void WarpArgMax(T& m, int64_t& j) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const T m_o = __shfl_xor_sync(0xffffffffu, m, off);
    const long long j_o = __shfl_xor_sync(0xffffffffu, static_cast<long long>(j), off);
    ArgMaxCombine(m, j, m_o, static_cast<int64_t>(j_o));
  }
}

__device__ __forceinline__ double WarpSum(double x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ void Rescale(double m, double m_new, double& s, double& a, double& e) {
  if (s == 0.0 || m == m_new) return;
  const double c = exp(m - m_new);
  e = c * (e + (m - m_new) * s);
  s *= c;
  a *= c;
}

}  // namespace cuda_detail

template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads)
    LseKlKernel(const T* __restrict__ l1, int64_t ld1, const T* __restrict__ l2, int64_t ld2,
                int64_t v, int64_t col0, double* __restrict__ state, int64_t state_ld,
                int64_t* __restrict__ args, int64_t args_ld) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block must be whole warps");
  constexpr int kWarps = kThreads / 32;
  using A = typename cuda_detail::Acc<T>::type;
  const int64_t i = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const T* x1 = l1 + i * ld1;
  const T* x2 = l2 + i * ld2;

  __shared__ T sh_m[2][kWarps];
  __shared__ int64_t sh_j[2][kWarps];
  __shared__ double sh_sum[6][kWarps];
  __shared__ double sh_new[2];

  // Pass 1: tile max and its first index, per model.
  T m1 = cuda_detail::NegInf<T>(), m2 = cuda_detail::NegInf<T>();
  int64_t j1 = INT64_MAX, j2 = INT64_MAX;
  for (int64_t j = tid; j < v; j += kThreads) {
    const T a = x1[j];
    const T b = x2[j];
    if (a > m1) { m1 = a; j1 = j; }
    if (b > m2) { m2 = b; j2 = j; }
  }
  cuda_detail::WarpArgMax(m1, j1);
  cuda_detail::WarpArgMax(m2, j2);
  if (lane == 0) {
    sh_m[0][warp] = m1; sh_j[0][warp] = j1;
    sh_m[1][warp] = m2; sh_j[1][warp] = j2;
  }
  __syncthreads();
  if (tid == 0) {
    for (int w = 1; w < kWarps; ++w) {
      cuda_detail::ArgMaxCombine(m1, j1, sh_m[0][w], sh_j[0][w]);
      cuda_detail::ArgMaxCombine(m2, j2, sh_m[1][w], sh_j[1][w]);
    }
    const double old1 = state[0 * state_ld + i];
    const double old2 = state[4 * state_ld + i];
    const double new1 = fmax(old1, static_cast<double>(m1));
    const double new2 = fmax(old2, static_cast<double>(m2));
    // A row of -inf logits (or NaN) cannot be normalised; leave its state untouched.
    if (new1 > cuda_detail::NegInf<double>() && new2 > cuda_detail::NegInf<double>()) {
      if (static_cast<double>(m1) > old1) args[i] = col0 + j1;
      if (static_cast<double>(m2) > old2) args[args_ld + i] = col0 + j2;
    }
    sh_new[0] = new1;
    sh_new[1] = new2;
  }
  __syncthreads();
  const double n1 = sh_new[0];
  const double n2 = sh_new[1];
  // Same rule as above: a row without a finite max keeps its state.
  if (!(n1 > cuda_detail::NegInf<double>()) || !(n2 > cuda_detail::NegInf<double>())) return;

  // Pass 2: sums relative to the new maxima (exact in T: the max is one of the logits).
  const T t1 = static_cast<T>(n1);
  const T t2 = static_cast<T>(n2);
  A s1 = 0, a12 = 0, e1 = 0, s2 = 0, a21 = 0, e2 = 0;
  for (int64_t j = tid; j < v; j += kThreads) {
    const T a = x1[j];
    const T b = x2[j];
    const A d1 = static_cast<A>(a - t1);
    const A d2 = static_cast<A>(b - t2);
    const A diff = static_cast<A>(a - b);
    const A w1 = cuda_detail::Acc<T>::Exp(d1);
    const A w2 = cuda_detail::Acc<T>::Exp(d2);
    s1 += w1;
    a12 += w1 * diff;
    e1 += w1 * d1;
    s2 += w2;
    a21 -= w2 * diff;
    e2 += w2 * d2;
  }
  double part[6] = {s1, a12, e1, s2, a21, e2};
#pragma unroll
  for (int k = 0; k < 6; ++k) {
    part[k] = cuda_detail::WarpSum(part[k]);
    if (lane == 0) sh_sum[k][warp] = part[k];
  }
  __syncthreads();
  if (tid == 0) {
    double tot[6];
#pragma unroll
    for (int k = 0; k < 6; ++k) {
      tot[k] = 0.0;
      for (int w = 0; w < kWarps; ++w) tot[k] += sh_sum[k][w];
    }
    double* st = state + i;
    double s1g = st[1 * state_ld], a12g = st[2 * state_ld], e1g = st[3 * state_ld];
    double s2g = st[5 * state_ld], a21g = st[6 * state_ld], e2g = st[7 * state_ld];
    cuda_detail::Rescale(st[0], n1, s1g, a12g, e1g);
    cuda_detail::Rescale(st[4 * state_ld], n2, s2g, a21g, e2g);
    st[0] = n1;
    st[1 * state_ld] = s1g + tot[0];
    st[2 * state_ld] = a12g + tot[1];
    st[3 * state_ld] = e1g + tot[2];
    st[4 * state_ld] = n2;
    st[5 * state_ld] = s2g + tot[3];
    st[6 * state_ld] = a21g + tot[4];
    st[7 * state_ld] = e2g + tot[5];
  }
}

// Launcher: one block of 256 threads per row, on `stream`. Returns the launch status.
template <typename T>
cudaError_t LseKl(const T* l1, int64_t ld1, const T* l2, int64_t ld2, int64_t n, int64_t v,
                  int64_t col0, double* state, int64_t state_ld, int64_t* args, int64_t args_ld,
                  cudaStream_t stream) {
  constexpr int kThreads = 256;
  if (n <= 0 || v <= 0) return cudaSuccess;
  if (n > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  LseKlKernel<T, kThreads><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      l1, ld1, l2, ld2, v, col0, state, state_ld, args, args_ld);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace identirep
