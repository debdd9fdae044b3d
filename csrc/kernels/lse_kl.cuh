// CUDA fused streaming epilogue: the same update as kernels/lse_kl.h (formulas, state layout,
// tie rule and the LogitMoments layouts are documented there), for logit tiles resident on the
// GPU.
//
// Inputs: l1, l2 (n x v, float32 or float64, row strides ld1, ld2 in elements, unit stride
// along a row), the logits of inputs row0 .. row0+n-1 and labels col0 .. col0+v-1.
// State: float64 8 x n (row stride state_ld), args: int64 2 x n (row stride args_ld).
// Optional moments (null pointer: skipped):
//   row moments float64 5 x n (row stride row_ld), rows [mean l1, mean l2, ssq l1, ssq l2,
//     ssq (l1 - l2)] over the labels seen (count col0);
//   column moments float64 5 x col_ld, indexed by the global label col0 + j, rows [mean l1,
//     mean l2, ssq l1, ssq l2, cross] over the inputs seen (count row0).
// Both are Chan-merged: label tiles of a row arrive in increasing col0 order, row tiles of a
// label in increasing row0 order, contiguous from 0 (as on the CPU).
//
// Kernels, launched in this order by LseKl on one stream:
// 1. LseKlKernel: one block per input row. Pass 1 reduces the row max and its first index and
//    the row sums of l1, l2 (the tile means); pass 2 the six LSE/KL sums relative to the new max
//    and the centred sums of squares about the tile means (the tile row is re-read, mostly from
//    L2). Thread 0 rescales and updates the state and Chan-merges the row moments.
// 2. LseKlColKernel (column moments only): blocks of 32 labels x kColRows warps over one chunk
//    of rows; each thread accumulates the sums of d_k = l_k - l_k[row 0 of the tile] and their
//    products (the shift of the CPU kernel) for one label, the block adds its warps in a fixed
//    order and writes the chunk's 5 partial sums to col_work (chunks x 5 x v float64).
// 3. LseKlColMergeKernel: one thread per label adds the chunks' partial sums in chunk order and
//    Chan-merges the tile into the column moments, exactly as ColMerge on the CPU.
// No atomics: the results are deterministic for a given tiling. col_work must hold
// LseKlColWorkElems(v) = kColMaxChunks * 5 * v doubles; LseKl uses ColChunks(n) chunks (any
// count from 1 to kColMaxChunks is valid: the column kernel sizes its chunks from gridDim.y).
//
// Accumulation: the LSE/KL sums of each thread in the tile dtype (float for float32 tiles,
// double for float64), everything else (block reductions, the state, all moments) in float64,
// as on the CPU. Indexing is 64-bit throughout (a tile may hold more than 2^31 logits).
//
// Launch geometry (threads, chunks) and scratch sizes: kernels/launch_table.h.
//
// The same text compiles with nvcc (kernels + launchers) and with NVRTC (kernels only, for the
// cupy backend, identirep/gpu/nvrtc.py): under __CUDACC_RTC__ no CUDA or standard header is
// included (launch_table.h includes none) and the host launchers are left out.
#pragma once

#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif

#include "launch_table.h"

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

constexpr Index kNoIndex = 0x7fffffffffffffffLL;

// (value, index) pair that keeps the larger value, and the smaller index on ties.
template <typename T>
__device__ __forceinline__ void ArgMaxCombine(T& m, Index& j, T m_other, Index j_other) {
  if (m_other > m || (m_other == m && j_other < j)) {
    m = m_other;
    j = j_other;
  }
}

// Reductions over the kGroup lanes of an aligned group within a warp (32: the whole warp);
// every lane ends with the result.
template <int kGroup, typename T>
__device__ __forceinline__ void GroupArgMax(T& m, Index& j) {
#pragma unroll
  for (int off = kGroup / 2; off > 0; off >>= 1) {
    const T m_o = __shfl_xor_sync(0xffffffffu, m, off);
    const Index j_o = __shfl_xor_sync(0xffffffffu, j, off);
    ArgMaxCombine(m, j, m_o, j_o);
  }
}

template <int kGroup>
__device__ __forceinline__ double GroupSum(double x) {
#pragma unroll
  for (int off = kGroup / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ void Rescale(double m, double m_new, double& s, double& a, double& e) {
  if (s == 0.0 || m == m_new) return;
  const double c = exp(m - m_new);
  e = c * (e + (m - m_new) * s);
  s *= c;
  a *= c;
}

// One model's state rows st[0], st[ld], st[2 ld], st[3 ld] = (m, s, a, e): move the sums to the
// new max m_new and add a tile's sums (relative to m_new).
__device__ __forceinline__ void UpdateState(double* st, Index ld, double m_new, double s,
                                            double a, double e) {
  double sg = st[ld], ag = st[2 * ld], eg = st[3 * ld];
  Rescale(st[0], m_new, sg, ag, eg);
  st[0] = m_new;
  st[ld] = sg + s;
  st[2 * ld] = ag + a;
  st[3 * ld] = eg + e;
}

// The centred squares of one logit pair: (a - mu1)^2, (b - mu2)^2 and of their difference.
template <typename T>
__device__ __forceinline__ void AddCentredSquares(T a, T b, double mu1, double mu2, double& q11,
                                                  double& q22, double& qdd) {
  const double c1 = static_cast<double>(a) - mu1;
  const double c2 = static_cast<double>(b) - mu2;
  const double cd = c1 - c2;
  q11 += c1 * c1;
  q22 += c2 * c2;
  qdd += cd * cd;
}

// One input's shifted logits of a label (d_k = l_k - shift_k) into the column sums
// [s1, s2, q11, q22, q12].
__device__ __forceinline__ void AddColumnSums(double (&acc)[5], double d1, double d2) {
  acc[0] += d1;
  acc[1] += d2;
  acc[2] += d1 * d1;
  acc[3] += d2 * d2;
  acc[4] += d1 * d2;
}

// Chan's update of (count na, mean a, sum sq) with a batch (nb, mean b, sum sq).
__device__ __forceinline__ void ChanMerge(double na, double nb, double mb, double qb, double& ma,
                                          double& qa) {
  const double n = na + nb;
  const double delta = mb - ma;
  ma += delta * (nb / n);
  qa += qb + delta * delta * (na * nb / n);
}

// Row moments r[0], r[ld], ..., r[4 ld] = [mean l1, mean l2, ssq l1, ssq l2, ssq (l1 - l2)]
// over na labels, merged (Chan) with a batch of nb labels: means b1, b2 and centred sums of
// squares q11, q22, qdd. na = 0 sets them to the batch.
__device__ __forceinline__ void MergeRowMoments(double na, double nb, double b1, double b2,
                                                double q11, double q22, double qdd, double* r,
                                                Index ld) {
  if (na == 0.0) {
    r[0] = b1; r[ld] = b2; r[2 * ld] = q11; r[3 * ld] = q22; r[4 * ld] = qdd;
    return;
  }
  const double dd = (b1 - b2) - (r[0] - r[ld]);  // shift of the mean of d, before r moves
  ChanMerge(na, nb, b1, q11, r[0], r[2 * ld]);
  ChanMerge(na, nb, b2, q22, r[ld], r[3 * ld]);
  r[4 * ld] += qdd + dd * dd * (na * nb / (na + nb));
}

}  // namespace cuda_detail

template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads)
    LseKlKernel(const T* __restrict__ l1, Index ld1, const T* __restrict__ l2, Index ld2, Index v,
                Index col0, double* __restrict__ state, Index state_ld, Index* __restrict__ args,
                Index args_ld, double* __restrict__ row_mom, Index row_ld) {
  static_assert(kThreads % 32 == 0 && kThreads >= 96 && kThreads <= 1024,
                "block must be at least three whole warps");
  constexpr int kWarps = kThreads / 32;
  using A = typename cuda_detail::Acc<T>::type;
  const Index i = static_cast<Index>(blockIdx.x);
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const T* x1 = l1 + i * ld1;
  const T* x2 = l2 + i * ld2;
  const bool moments = row_mom != nullptr;

  __shared__ T sh_m[2][kWarps];
  __shared__ Index sh_j[2][kWarps];
  __shared__ double sh_sum[9][kWarps];
  __shared__ double sh_new[4];

  // Pass 1: tile max and its first index per model, and the row sums for the tile means.
  T m1 = cuda_detail::NegInf<T>(), m2 = cuda_detail::NegInf<T>();
  Index j1 = cuda_detail::kNoIndex, j2 = cuda_detail::kNoIndex;
  double r1 = 0.0, r2 = 0.0;
  for (Index j = tid; j < v; j += kThreads) {
    const T a = x1[j];
    const T b = x2[j];
    if (a > m1) { m1 = a; j1 = j; }
    if (b > m2) { m2 = b; j2 = j; }
    r1 += static_cast<double>(a);
    r2 += static_cast<double>(b);
  }
  cuda_detail::GroupArgMax<32>(m1, j1);
  cuda_detail::GroupArgMax<32>(m2, j2);
  r1 = cuda_detail::GroupSum<32>(r1);
  r2 = cuda_detail::GroupSum<32>(r2);
  if (lane == 0) {
    sh_m[0][warp] = m1; sh_j[0][warp] = j1;
    sh_m[1][warp] = m2; sh_j[1][warp] = j2;
    sh_sum[0][warp] = r1; sh_sum[1][warp] = r2;
  }
  __syncthreads();
  if (tid == 0) {
    double t1 = 0.0, t2 = 0.0;
    for (int w = 0; w < kWarps; ++w) {
      if (w > 0) {
        cuda_detail::ArgMaxCombine(m1, j1, sh_m[0][w], sh_j[0][w]);
        cuda_detail::ArgMaxCombine(m2, j2, sh_m[1][w], sh_j[1][w]);
      }
      t1 += sh_sum[0][w];
      t2 += sh_sum[1][w];
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
    sh_new[2] = t1 / static_cast<double>(v);
    sh_new[3] = t2 / static_cast<double>(v);
  }
  __syncthreads();
  const double n1 = sh_new[0];
  const double n2 = sh_new[1];
  const double mu1 = sh_new[2];
  const double mu2 = sh_new[3];
  // Same rule as above: a row without a finite max keeps its LSE state (its moments still move).
  const bool lse = n1 > cuda_detail::NegInf<double>() && n2 > cuda_detail::NegInf<double>();
  if (!lse && !moments) return;  // uniform over the block

  // Pass 2: sums relative to the new maxima (exact in T: the max is one of the logits), and the
  // centred sums of squares about the tile means.
  const T t1 = lse ? static_cast<T>(n1) : T(0);
  const T t2 = lse ? static_cast<T>(n2) : T(0);
  A s1 = 0, a12 = 0, e1 = 0, s2 = 0, a21 = 0, e2 = 0;
  double q11 = 0.0, q22 = 0.0, qdd = 0.0;
  for (Index j = tid; j < v; j += kThreads) {
    const T a = x1[j];
    const T b = x2[j];
    if (lse) {
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
    if (moments) cuda_detail::AddCentredSquares(a, b, mu1, mu2, q11, q22, qdd);
  }
  double part[9] = {s1, a12, e1, s2, a21, e2, q11, q22, qdd};
#pragma unroll
  for (int k = 0; k < 9; ++k) part[k] = cuda_detail::GroupSum<32>(part[k]);
  // Thread 0 finished reading sh_sum before the barrier above, so it may be overwritten.
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 9; ++k) sh_sum[k][warp] = part[k];
  }
  __syncthreads();
  // The tail is split over three threads (lane 0 of warps 0, 1, 2), which keeps its registers
  // (two double exps, the old state) out of the streaming loops' budget.
  if (lane != 0 || warp > 2) return;
  const auto total = [&](int k) {
    double t = 0.0;
    for (int w = 0; w < kWarps; ++w) t += sh_sum[k][w];
    return t;
  };
  if (warp < 2) {
    if (!lse) return;
    const int k = 3 * warp;
    cuda_detail::UpdateState(state + 4 * warp * state_ld + i, state_ld, warp == 0 ? n1 : n2,
                             total(k), total(k + 1), total(k + 2));
    return;
  }
  if (!moments) return;
  cuda_detail::MergeRowMoments(static_cast<double>(col0), static_cast<double>(v), mu1, mu2,
                               total(6), total(7), total(8), row_mom + i, row_ld);
}

// Column partial sums of one chunk of rows: block (32, kRows), grid (ceil(v / 32), chunks);
// chunk c holds rows [c * r, (c + 1) * r), r = ceil(n / chunks).
// work[(c * 5 + k) * v + j], k = [s1, s2, q11, q22, q12] of d_k = l_k - l_k[row 0].
template <typename T, int kRows>
__global__ void __launch_bounds__(32 * kRows)
    LseKlColKernel(const T* __restrict__ l1, Index ld1, const T* __restrict__ l2, Index ld2,
                   Index n, Index v, double* __restrict__ work) {
  const Index j = static_cast<Index>(blockIdx.x) * 32 + threadIdx.x;
  const Index chunk = static_cast<Index>(blockIdx.y);
  const Index chunk_rows = (n + gridDim.y - 1) / gridDim.y;
  const Index r_begin = chunk * chunk_rows;
  const Index r_end = r_begin + chunk_rows < n ? r_begin + chunk_rows : n;
  double acc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  if (j < v) {
    const double k1 = static_cast<double>(l1[j]);
    const double k2 = static_cast<double>(l2[j]);
    for (Index i = r_begin + threadIdx.y; i < r_end; i += kRows) {
      cuda_detail::AddColumnSums(acc, static_cast<double>(l1[i * ld1 + j]) - k1,
                                 static_cast<double>(l2[i * ld2 + j]) - k2);
    }
  }
  __shared__ double sh[5][kRows][32];
#pragma unroll
  for (int k = 0; k < 5; ++k) sh[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y != 0 || j >= v) return;
#pragma unroll
  for (int k = 0; k < 5; ++k) {
    double s = 0.0;
    for (int r = 0; r < kRows; ++r) s += sh[k][r][threadIdx.x];
    work[(chunk * 5 + k) * v + j] = s;
  }
}

// Fold a tile's column partial sums (chunks of col_work) into the column moments: one thread
// per label, the arithmetic of ColMerge in kernels/lse_kl.h.
template <typename T>
__global__ void LseKlColMergeKernel(const T* __restrict__ l1, const T* __restrict__ l2, Index n,
                                    Index v, Index col0, Index chunks,
                                    const double* __restrict__ work, double* __restrict__ col,
                                    Index col_ld, Index row0) {
  const Index j = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= v) return;
  double acc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  for (Index c = 0; c < chunks; ++c) {
#pragma unroll
    for (int k = 0; k < 5; ++k) acc[k] += work[(c * 5 + k) * v + j];
  }
  const double nb = static_cast<double>(n), na = static_cast<double>(row0);
  const double s1 = acc[0], s2 = acc[1];
  const double mb1 = static_cast<double>(l1[j]) + s1 / nb;
  const double mb2 = static_cast<double>(l2[j]) + s2 / nb;
  const double q11 = acc[2] - s1 * s1 / nb;
  const double q22 = acc[3] - s2 * s2 / nb;
  const double q12 = acc[4] - s1 * s2 / nb;
  double* c = col + col0 + j;
  const Index ld = col_ld;
  if (row0 == 0) {
    c[0] = mb1; c[ld] = mb2; c[2 * ld] = q11; c[3 * ld] = q22; c[4 * ld] = q12;
    return;
  }
  const double f = na * nb / (na + nb);
  const double d1 = mb1 - c[0], d2 = mb2 - c[ld];
  c[0] += d1 * (nb / (na + nb));
  c[ld] += d2 * (nb / (na + nb));
  c[2 * ld] += q11 + d1 * d1 * f;
  c[3 * ld] += q22 + d2 * d2 * f;
  c[4 * ld] += q12 + d1 * d2 * f;
}

// ---------------------------------------------------------------- fused (one-read) epilogue
// The same update as the three kernels above, reading each logit once (they read it twice
// from memory: the row kernel and the column kernel), for small M where the epilogue's memory
// traffic rivals the GEMM's time:
// 1. LseKlSlabKernel: block (kSlabThreads) per slab of kSlabCols labels x one chunk of rows.
//    Sub-tiles of kRows rows are staged in shared memory (padded row stride kSlabStride: the
//    row phase reads without bank conflicts). Column phase: thread t sums label t of the slab
//    over the rows (d_k = l_k - l_k[row 0 of the tile], as LseKlColKernel) in registers, and
//    writes the chunk's 5 sums to col_work at the end (the layout LseKlColMergeKernel reads).
//    Row phase: kSlabThreads / kRows threads per row reduce the row's slab: max and first
//    argmax, mean, then the six LSE/KL sums relative to the slab max and the centred sums of
//    squares about the slab mean; one record of kRowFields doubles per (row, slab) goes to
//    row_work[(slab * kRowFields + field) * n + row].
// 2. LseKlColMergeKernel (above) with the chunks of 1.
// 3. LseKlRowMergeKernel: one thread per row combines its slabs in label order (first argmax,
//    rescaled LSE sums, Chan-merged moments) and updates the state and the row moments as the
//    tail of LseKlKernel does.
// Same formulas; the sums are grouped differently (per slab, then merged), so results agree
// with the three-kernel epilogue to rounding, not bit for bit. Deterministic, no atomics.
constexpr int kSlabStride = kSlabCols + 16;   // rows of a sub-tile in shared memory

// Rows of a sub-tile in shared memory: 2 x kRows x kSlabStride elements fit in 48 KiB.
template <typename T>
struct SlabRows;
template <>
struct SlabRows<float> {
  static constexpr int value = kSlabRowsFloat;
};
template <>
struct SlabRows<double> {
  static constexpr int value = kSlabRowsDouble;
};

namespace cuda_detail {

// The record of one (row, slab) (kRowFields doubles, to w[f * ld]): the kTpr threads of an
// aligned group of lanes reduce the row's ncols logits x1[0..ncols), x2[0..ncols) (in shared
// memory): max and first argmax (an all -inf slab keeps kNoIndex, written as -1), mean, then
// the six LSE/KL sums relative to the slab max and the centred sums of squares about the slab
// mean. Every thread of the group calls it (q: its index in the group); ncols = 0 writes nothing.
template <typename T, int kTpr>
__device__ __forceinline__ void SlabRowRecord(const T* x1, const T* x2, int ncols, int q,
                                              double* w, Index ld) {
  using A = typename Acc<T>::type;
  T m1 = NegInf<T>(), m2 = NegInf<T>();
  Index j1 = kNoIndex, j2 = kNoIndex;
  double t1 = 0.0, t2 = 0.0;
  for (int c = q; c < ncols; c += kTpr) {
    const T a = x1[c], b = x2[c];
    if (a > m1) { m1 = a; j1 = c; }
    if (b > m2) { m2 = b; j2 = c; }
    t1 += static_cast<double>(a);
    t2 += static_cast<double>(b);
  }
  GroupArgMax<kTpr>(m1, j1);
  GroupArgMax<kTpr>(m2, j2);
  t1 = GroupSum<kTpr>(t1);
  t2 = GroupSum<kTpr>(t2);
  const double mu1 = ncols > 0 ? t1 / ncols : 0.0;
  const double mu2 = ncols > 0 ? t2 / ncols : 0.0;
  const bool lse1 = m1 > NegInf<T>();
  const bool lse2 = m2 > NegInf<T>();
  A s1 = 0, a12 = 0, e1 = 0, s2 = 0, a21 = 0, e2 = 0;
  double q11 = 0.0, q22 = 0.0, qdd = 0.0;
  for (int c = q; c < ncols; c += kTpr) {
    const T a = x1[c], b = x2[c];
    const A diff = static_cast<A>(a - b);
    if (lse1) {
      const A d1 = static_cast<A>(a - m1);
      const A w1 = Acc<T>::Exp(d1);
      s1 += w1;
      a12 += w1 * diff;
      e1 += w1 * d1;
    } else if (a != a) {
      s1 = a;  // NaN in a slab without a finite max: it propagates, as in LseKlKernel
    }
    if (lse2) {
      const A d2 = static_cast<A>(b - m2);
      const A w2 = Acc<T>::Exp(d2);
      s2 += w2;
      a21 -= w2 * diff;
      e2 += w2 * d2;
    } else if (b != b) {
      s2 = b;
    }
    AddCentredSquares(a, b, mu1, mu2, q11, q22, qdd);
  }
  double part[9] = {s1, a12, e1, s2, a21, e2, q11, q22, qdd};
#pragma unroll
  for (int k = 0; k < 9; ++k) part[k] = GroupSum<kTpr>(part[k]);
  if (q != 0 || ncols == 0) return;
  const double rec[kRowFields] = {
      static_cast<double>(m1), j1 == kNoIndex ? -1.0 : static_cast<double>(j1),
      static_cast<double>(m2), j2 == kNoIndex ? -1.0 : static_cast<double>(j2),
      part[0], part[1], part[2], part[3], part[4], part[5], mu1, mu2, part[6], part[7],
      part[8]};
#pragma unroll
  for (int f = 0; f < kRowFields; ++f) w[f * ld] = rec[f];
}

}  // namespace cuda_detail

template <typename T, int kRows>
__global__ void __launch_bounds__(kSlabThreads)
    LseKlSlabKernel(const T* __restrict__ l1, Index ld1, const T* __restrict__ l2, Index ld2,
                    Index n, Index v, double* __restrict__ row_work,
                    double* __restrict__ col_work) {
  constexpr int kTpr = kSlabThreads / kRows;  // threads per row in the row phase
  static_assert(kSlabThreads % kRows == 0 && kTpr <= 32 && 32 % kTpr == 0,
                "a row's threads must be one aligned group of lanes within a warp");
  __shared__ T sh[2][kRows][kSlabStride];
  const int tid = threadIdx.x;
  const Index slab = blockIdx.x;
  const Index c0 = slab * kSlabCols;
  const int cols = static_cast<int>(v - c0 < kSlabCols ? v - c0 : kSlabCols);
  const Index chunk_rows = (n + gridDim.y - 1) / gridDim.y;
  const Index r_begin = static_cast<Index>(blockIdx.y) * chunk_rows;
  const Index r_end = r_begin + chunk_rows < n ? r_begin + chunk_rows : n;
  const bool columns = col_work != nullptr;
  const bool own = tid < cols;  // the label of this thread in the column phase
  const double k1 = own ? static_cast<double>(l1[c0 + tid]) : 0.0;
  const double k2 = own ? static_cast<double>(l2[c0 + tid]) : 0.0;
  double cacc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  const int rr = tid / kTpr;  // row of the sub-tile in the row phase
  const int q = tid % kTpr;

  for (Index r0 = r_begin; r0 < r_end; r0 += kRows) {
    const int rows = static_cast<int>(r_end - r0 < kRows ? r_end - r0 : kRows);
    __syncthreads();  // the previous sub-tile is consumed
    if (own) {
#pragma unroll 4
      for (int r = 0; r < rows; ++r) {
        sh[0][r][tid] = l1[(r0 + r) * ld1 + c0 + tid];
        sh[1][r][tid] = l2[(r0 + r) * ld2 + c0 + tid];
      }
    }
    __syncthreads();
    if (columns && own) {
      for (int r = 0; r < rows; ++r) {
        cuda_detail::AddColumnSums(cacc, static_cast<double>(sh[0][r][tid]) - k1,
                                   static_cast<double>(sh[1][r][tid]) - k2);
      }
    }
    // Row phase. Every thread takes part in the group reductions; a thread whose row is past
    // the sub-tile reads nothing and its group writes nothing.
    cuda_detail::SlabRowRecord<T, kTpr>(sh[0][rr], sh[1][rr], rr < rows ? cols : 0, q,
                                        row_work + (slab * kRowFields) * n + (r0 + rr), n);
  }
  if (columns && own) {
#pragma unroll
    for (int k = 0; k < 5; ++k)
      col_work[(static_cast<Index>(blockIdx.y) * 5 + k) * v + c0 + tid] = cacc[k];
  }
}

// One thread per row: the tile's slabs (of kCols labels) in label order, then the state and
// row-moment update of LseKlKernel's tail.
template <typename T, int kCols = kSlabCols>
__global__ void LseKlRowMergeKernel(Index n, Index v, Index col0,
                                    const double* __restrict__ row_work,
                                    double* __restrict__ state, Index state_ld,
                                    Index* __restrict__ args, Index args_ld,
                                    double* __restrict__ row_mom, Index row_ld) {
  const Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const Index slabs = (v + kCols - 1) / kCols;
  const double ninf = cuda_detail::NegInf<double>();
  const auto W = [&](Index s, int f) { return row_work[(s * kRowFields + f) * n + i]; };
  // tile max and its first index per model (slabs in increasing label order: strict >)
  double tm[2] = {ninf, ninf};
  Index tj[2] = {-1, -1};
  for (Index s = 0; s < slabs; ++s) {
    for (int k = 0; k < 2; ++k) {
      const double m = W(s, 2 * k), j = W(s, 2 * k + 1);
      if (j >= 0.0 && m > tm[k]) {
        tm[k] = m;
        tj[k] = s * kCols + static_cast<Index>(j);
      }
    }
  }
  const double old1 = state[0 * state_ld + i];
  const double old2 = state[4 * state_ld + i];
  const double new1 = fmax(old1, tm[0]);
  const double new2 = fmax(old2, tm[1]);
  const bool lse = new1 > ninf && new2 > ninf;
  if (lse) {
    if (tm[0] > old1 && tj[0] >= 0) args[i] = col0 + tj[0];
    if (tm[1] > old2 && tj[1] >= 0) args[args_ld + i] = col0 + tj[1];
    for (int k = 0; k < 2; ++k) {
      const double m_new = k == 0 ? new1 : new2;
      double S = 0.0, Acc = 0.0, E = 0.0;
      for (Index s = 0; s < slabs; ++s) {
        const double ms = W(s, 2 * k), ss = W(s, 4 + 3 * k);
        // A slab without a finite max is all -inf (or held a NaN: then ss is NaN). Under the
        // finite m_new its labels add exp(-inf) = 0 to S and 0 * -inf = NaN to the KL and
        // entropy sums, as in LseKlKernel and the CPU kernel.
        if (W(s, 2 * k + 1) < 0.0 && ss == 0.0) {
          Acc = E = __longlong_as_double(0x7ff8000000000000LL);  // NaN
          continue;
        }
        const double c = exp(ms - m_new);
        S += c * ss;
        Acc += c * W(s, 5 + 3 * k);
        E += c * (W(s, 6 + 3 * k) + (ms - m_new) * ss);
      }
      cuda_detail::UpdateState(state + 4 * k * state_ld + i, state_ld, m_new, S, Acc, E);
    }
  }
  if (row_mom == nullptr) return;
  // the tile's row moments (t: Chan merges of its slabs), merged into the row's
  double t[5], cnt = 0.0;
  for (Index s = 0; s < slabs; ++s) {
    const double nb = static_cast<double>(v - s * kCols < kCols ? v - s * kCols : kCols);
    cuda_detail::MergeRowMoments(cnt, nb, W(s, 10), W(s, 11), W(s, 12), W(s, 13), W(s, 14), t,
                                 1);
    cnt += nb;
  }
  cuda_detail::MergeRowMoments(static_cast<double>(col0), static_cast<double>(v), t[0], t[1],
                               t[2], t[3], t[4], row_mom + i, row_ld);
}

#ifndef __CUDACC_RTC__

// Device pointers of the optional moments (null: skipped), as LogitMoments in kernels/lse_kl.h
// plus the column scratch (LseKlColWorkElems(v) doubles, needed with col).
struct DeviceLogitMoments {
  double* row;
  Index row_ld;
  double* col;
  Index col_ld;
  Index row0;
  double* col_work;
};

// Launcher: the kernels above in order on `stream`. Returns the first launch error.
template <typename T>
cudaError_t LseKl(const T* l1, Index ld1, const T* l2, Index ld2, Index n, Index v, Index col0,
                  double* state, Index state_ld, Index* args, Index args_ld,
                  const DeviceLogitMoments& mom, cudaStream_t stream) {
  if (n <= 0 || v <= 0) return cudaSuccess;
  if (n > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  LseKlKernel<T, kLseKlThreads><<<static_cast<unsigned>(n), kLseKlThreads, 0, stream>>>(
      l1, ld1, l2, ld2, v, col0, state, state_ld, args, args_ld, mom.row, mom.row_ld);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || mom.col == nullptr) return err;
  if (mom.col_work == nullptr) return cudaErrorInvalidValue;
  const Index blocks = (v + 31) / 32;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const Index chunks = ColChunks(n);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(chunks));
  LseKlColKernel<T, kColRows><<<grid, dim3(32, kColRows), 0, stream>>>(l1, ld1, l2, ld2, n, v,
                                                                       mom.col_work);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const Index merge_blocks = (v + kMergeThreads - 1) / kMergeThreads;
  LseKlColMergeKernel<T><<<static_cast<unsigned>(merge_blocks), kMergeThreads, 0, stream>>>(
      l1, l2, n, v, col0, chunks, mom.col_work, mom.col, mom.col_ld, mom.row0);
  return cudaGetLastError();
}

// The merges that finish the one-read epilogue and the fused GEMM: LseKlColMergeKernel (with
// mom.col; column shifts k1, k2: the tile's first row, or LseKlShiftKernel's) over `chunks`
// chunks of col_work, then LseKlRowMergeKernel over the row records of kCols-label slabs.
template <typename T, int kCols>
cudaError_t LaunchMerges(const T* k1, const T* k2, Index n, Index v, Index col0, Index chunks,
                         const double* row_work, double* state, Index state_ld, Index* args,
                         Index args_ld, const DeviceLogitMoments& mom, cudaStream_t stream) {
  if (mom.col != nullptr) {
    LseKlColMergeKernel<T><<<static_cast<unsigned>((v + kMergeThreads - 1) / kMergeThreads),
                             kMergeThreads, 0, stream>>>(k1, k2, n, v, col0, chunks, mom.col_work,
                                                         mom.col, mom.col_ld, mom.row0);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  LseKlRowMergeKernel<T, kCols><<<static_cast<unsigned>((n + kMergeThreads - 1) / kMergeThreads),
                                  kMergeThreads, 0, stream>>>(n, v, col0, row_work, state,
                                                              state_ld, args, args_ld, mom.row,
                                                              mom.row_ld);
  return cudaGetLastError();
}

// Launcher of the fused epilogue: the arguments of LseKl plus row_work, a scratch of
// LseKlFusedRowWorkElems(n, v) doubles; with column moments mom.col_work must hold
// LseKlFusedColWorkElems(v) doubles. Returns the first launch error.
template <typename T>
cudaError_t LseKlFused(const T* l1, Index ld1, const T* l2, Index ld2, Index n, Index v,
                       Index col0, double* state, Index state_ld, Index* args, Index args_ld,
                       const DeviceLogitMoments& mom, double* row_work, cudaStream_t stream) {
  if (n <= 0 || v <= 0) return cudaSuccess;
  if (row_work == nullptr || (mom.col != nullptr && mom.col_work == nullptr))
    return cudaErrorInvalidValue;
  const Index slabs = FusedSlabs(v);
  const Index chunks = FusedChunks(n);
  if (slabs > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  double* col_work = mom.col != nullptr ? mom.col_work : nullptr;
  LseKlSlabKernel<T, SlabRows<T>::value>
      <<<dim3(static_cast<unsigned>(slabs), static_cast<unsigned>(chunks)), kSlabThreads, 0,
         stream>>>(l1, ld1, l2, ld2, n, v, row_work, col_work);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return LaunchMerges<T, kSlabCols>(l1, l2, n, v, col0, chunks, row_work, state, state_ld, args,
                                    args_ld, mom, stream);
}

#endif  // __CUDACC_RTC__

}  // namespace kernels
}  // namespace identirep
