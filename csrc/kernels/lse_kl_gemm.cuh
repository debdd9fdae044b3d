// CUDA: the logit GEMM and the streaming epilogue in one kernel, for float16/bfloat16 operands
// (tensor cores, float32 accumulation: mma.sync m16n8k16 on sm_80 and newer, or, kWg, wgmma
// m64nNk16 on sm_90a, built by csrc/lse_kl_wgmma.cu alone). Experimental until a GPU has
// confirmed it (benchmarks/device_check.sh): opt-in only (cuda_pass(fused_gemm=True)); the
// SIMT emulator checks its logic, not its PTX. No logit tile goes to
// memory: each block computes l1 = f1 g1' and l2 = f2 g2' for a BM x BN sub-tile into shared
// memory and reduces it there, with the arithmetic of LseKlSlabKernel (kernels/lse_kl.cuh).
//
// Operands: f_k (n x K_k) and g_k (v x K_k) as 16-bit patterns, rows contiguous, row strides a
// multiple of 8 elements and pointers 16-byte aligned (cp.async moves 16 bytes); any K_k.
// Output, for the merge kernels of lse_kl.cuh:
//   row_work: one record of kRowFields doubles per (row, slab of kGemmBN labels), the layout of
//     LseKlSlabKernel's (LseKlRowMergeKernel<float, kGemmBN> reads it);
//   col_work (optional): per chunk of rows, the 5 column sums of d_k = l_k - shift_k[label]
//     (LseKlColMergeKernel<float> reads them with shift_1, shift_2 in place of the tile's first
//     row). shift (2 x v floats) comes from LseKlShiftKernel: the logits of the tile's first
//     row, which keeps the sums of squares away from cancellation as the first row does there.
// Grid (slabs, chunks), kGemmThreads threads, GemmShape<BM>::kSmemBytes of dynamic shared
// memory, BM = 128 or 64 rows per sub-tile (GemmShape). Each block takes one slab and one
// chunk of rows, BM rows at a time:
//   GEMMs of model 1 then model 2 in one cp.async pipeline (mma.sync: 4 stages, ldmatrix,
//   2 x 4 warps of BM / 2 x 32; wgmma: PairGemmWg, 2 warpgroups, 128-byte swizzled stages):
//   model 1's logits -> tile s1, model 2's -> tile s2 (over the pipeline's buffers, free by
//   then);
//   column phase: thread t sums label t % BN over half t / BN of the rows, in registers across
//     the chunk; row phase: 4 threads per row reduce the row's slab (max and first argmax, mean,
//     six LSE/KL sums relative to the slab max, centred squares) into its record.
// Deterministic for a given launch (no atomics). Slabs (kGemmBN) and scratch sizes:
// kernels/launch_table.h. Under __CUDACC_RTC__ no CUDA or standard header is included.
//
// The tensor-core and shared-memory primitives (mma.sync, ldmatrix, cp.async, wgmma, the proxy
// fence, the dynamic shared memory) come from gemm_primitives.cuh, included with angle brackets:
// the first of that name on the include path. The builds put csrc/kernels there; the SIMT
// emulator (tests/emulation/simt) puts its own gemm_primitives.cuh, which emulates them on the
// CPU, before it. Nothing else in this file differs between the two.
#pragma once

#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif

#include <gemm_primitives.cuh>

#include "lse_kl.cuh"

namespace identirep {
namespace kernels {

constexpr int kGemmBK = 32;   // K of a pipeline stage
constexpr int kGemmStages = 4;
constexpr int kGemmThreads = 256;
constexpr int kGemmKPad = kGemmBK + 8;  // halves per operand row in shared memory (80 bytes:
                                        // ldmatrix's 8 rows fall in distinct banks)
constexpr int kGemmTileStride = kGemmBN + 4;  // floats per logit row (4 mod 32: the row
                                              // phase's 8 rows x 4 lanes hit 32 banks)
constexpr int kGemmRowTpr = 4;  // threads per row in the row phase
static_assert(kGemmThreads == 2 * kGemmBN, "two threads per label in the column phase");

// The two block shapes, by rows of a sub-tile (kBM): 128 (1 block per SM) or 64 (2 blocks per
// SM, one's epilogue beside the other's GEMM); and the two GEMMs (kWg): mma.sync by 2 x 4 warps
// (sm_80+: BM / 2 x 32 per warp, k-tiles of 32 in padded rows) or wgmma by 2 warpgroups (sm_90a:
// 64 x 128 (BM 128) or 64 x 64 (BM 64) per warpgroup, k-tiles of 64 in 128-byte swizzled rows,
// the pipeline 1024-byte aligned).
template <int kBM, bool kWg = false>
struct GemmShape {
  static_assert(kBM == 64 || kBM == 128, "sub-tiles of 64 or 128 rows");
  static constexpr int kMI = kBM / 32;  // mma.sync: 16-row mma tiles per warp (2 x 4 warps)
  static constexpr int kBK = kWg ? 64 : kGemmBK;
  static constexpr int kKPad = kWg ? 64 : kGemmKPad;  // halves per operand row in shared memory
  static constexpr int kStages = kWg && kBM == 64 ? 3 : kGemmStages;
  static constexpr int kWgCols = kBM == 128 ? kGemmBN : kGemmBN / 2;  // wgmma: N per warpgroup
  static constexpr int kAccFloats = kWg ? kWgCols / 2 : kMI * 16;     // accumulators per thread
  static constexpr int kTileBytes = kBM * kGemmTileStride * 4;
  static constexpr int kAlignBytes = kWg ? 1024 : 0;  // room to align the pipeline
  static constexpr int kStageBytes = (kBM + kGemmBN) * kKPad * 2;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kSmemBytes = kTileBytes + kAlignBytes + kPipeBytes;
  static constexpr int kBlocksPerSm = kBM == 64 ? 2 : 1;
  static constexpr Index kMinChunkRows = 4 * kBM;
  static constexpr int kRowRounds = kBM * kGemmRowTpr / kGemmThreads;
  static_assert(kPipeBytes >= kTileBytes, "tile 2 lives in the pipeline's buffers");
  static_assert(5 * kGemmBN * 8 <= kTileBytes, "the column halves meet in tile 1");
  static_assert(kBlocksPerSm * (kSmemBytes + 1024) <= 228 * 1024, "shared memory of an SM");
  // wgmma descriptors with base offset 0: every 8-row group on a 1024-byte pattern boundary
  static_assert(!kWg || (kStageBytes % 1024 == 0 && kBM * 128 % 1024 == 0 &&
                         kWgCols % 8 == 0 && kGemmBN % 8 == 0),
                "wgmma operand tiles of whole 1024-byte swizzle patterns");
};

template <int kBM>
__host__ __device__ inline Index GemmChunks(Index n) {
  return ChunkCount(n, GemmShape<kBM>::kMinChunkRows, kFusedMaxChunks);
}

namespace mma {

// wgmma shared-memory matrix descriptor of a K-major operand in the 128-byte swizzle: rows of
// 128 bytes, 8-row groups 1024 bytes apart (stride byte offset), at shared address `addr`
// (a group's start plus the k offset of the slice; groups 1024-byte aligned, base offset 0).
__host__ __device__ inline unsigned long long MatrixDesc(unsigned addr) {
  return static_cast<unsigned long long>((addr & 0x3ffffu) >> 4) | (1ULL << 16) |
         (static_cast<unsigned long long>(1024 >> 4) << 32) | (1ULL << 62);
}

// float value of a 16-bit pattern (exact).
template <bool kBf16>
__device__ __forceinline__ float ToFloat(unsigned short h) {
  if constexpr (kBf16) {
    return __int_as_float(static_cast<int>(static_cast<unsigned>(h) << 16));
  } else {
    const unsigned sign = (static_cast<unsigned>(h) & 0x8000u) << 16;
    const unsigned e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {  // zero or subnormal: m * 2^-24
      const float x = static_cast<float>(m) * 5.9604644775390625e-8f;
      return sign ? -x : x;
    }
    const unsigned bits = e == 0x1fu ? (sign | 0x7f800000u | (m << 13))
                                     : (sign | ((e + 112u) << 23) | (m << 13));
    return __int_as_float(static_cast<int>(bits));
  }
}

}  // namespace mma

namespace gemm_detail {

template <int kMI>
using Acc = float[kMI][4][4];  // [16-row tile][8-col tile][fragment] of a warp's kMI 16 x 32

// One model's operands for the block's sub-tile: a (rows x K, row stride lda) and b (cols x K,
// row stride ldb); the logits are a b'.
struct Operands {
  const unsigned short* a;
  Index lda;
  const unsigned short* b;
  Index ldb;
  int K;
};

template <int kMI>
__device__ __forceinline__ void Zero(Acc<kMI>& acc) {
#pragma unroll
  for (int i = 0; i < kMI; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
}

// The warp's accumulators into the BM x BN logit tile s (row stride kGemmTileStride).
template <int kMI>
__device__ __forceinline__ void StoreTile(const Acc<kMI>& acc, float* s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int r = (warp / 4) * kMI * 16 + lane / 4, c = (warp % 4) * 32 + 2 * (lane % 4);
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float* p = s + (r + mi * 16 + h * 8) * kGemmTileStride + c + ni * 8;
        p[0] = acc[mi][ni][2 * h];
        p[1] = acc[mi][ni][2 * h + 1];
      }
}

// The block's BM x BN logits of both models in one pipeline (model 2's first stages load while
// model 1's last ones are multiplied): model 1's into the tile s1 (StoreTile), model 2's left
// in acc. Rows past `rows` and labels past `cols` read as zeros. All threads call it; on
// return the pipeline's buffers are free (every copy landed, every warp past its last read).
template <bool kBf16, int kBM>
__device__ __forceinline__ void PairGemm(const Operands (&op)[2], int rows, int cols,
                                         unsigned short* pipe,
                                         Acc<GemmShape<kBM>::kMI>& acc, float* s1) {
  constexpr int kMI = GemmShape<kBM>::kMI;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 4, wn = warp % 4;
  constexpr int kStage = (kBM + kGemmBN) * kGemmKPad;  // halves per stage
  Zero(acc);
  const int kt1 = (op[0].K + kGemmBK - 1) / kGemmBK;
  const int ktiles = kt1 + (op[1].K + kGemmBK - 1) / kGemmBK;
  // Stage s holds BM rows of a then BN rows of b, each BK halves (4 chunks of 16 bytes), of
  // k-tile kt of model 1 (kt < kt1) or kt - kt1 of model 2.
  const auto load = [&](int kt, int s) {
    const bool first = kt < kt1;  // selects by value: an indexed op[] would live in local memory
    const Operands o = first ? op[0] : op[1];
    const int k0 = (first ? kt : kt - kt1) * kGemmBK;
    unsigned short* dst = pipe + s * kStage;
    for (int i = tid; i < (kBM + kGemmBN) * 4; i += kGemmThreads) {
      const int row = i / 4, kc = (i % 4) * 8;
      const bool is_a = row < kBM;
      const int r = is_a ? row : row - kBM;
      const int k = k0 + kc;
      const unsigned short* src = is_a ? o.a : o.b;
      int bytes = 0;
      if (r < (is_a ? rows : cols) && k < o.K) {
        bytes = (o.K - k < 8 ? o.K - k : 8) * 2;
        src += static_cast<Index>(r) * (is_a ? o.lda : o.ldb) + k;
      }
      mma::CpAsync16(dst + row * kGemmKPad + kc, src, bytes);
    }
  };
#pragma unroll
  for (int s = 0; s < kGemmStages - 1; ++s) {
    if (s < ktiles) load(s, s);
    mma::CpAsyncCommit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    mma::CpAsyncWait<kGemmStages - 2>();  // stage kt has landed (for this thread's copies)
    __syncthreads();                      // ... for every thread's; stage kt - 1 is consumed
    const int next = kt + kGemmStages - 1;
    if (next < ktiles) load(next, next % kGemmStages);
    mma::CpAsyncCommit();
    const unsigned short* sa = pipe + (kt % kGemmStages) * kStage;
    const unsigned short* sb = sa + kBM * kGemmKPad;
#pragma unroll
    for (int kk = 0; kk < kGemmBK; kk += 16) {
      unsigned af[kMI][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
        mma::LdMatrixX4(af[mi], sa + (wm * kMI * 16 + mi * 16 + lane % 16) * kGemmKPad + kk +
                                    (lane / 16) * 8);
#pragma unroll
      for (int nj = 0; nj < 4; nj += 2) {
        unsigned r[4];
        mma::LdMatrixX4(r, sb + (wn * 32 + nj * 8 + (lane / 16) * 8 + lane % 8) * kGemmKPad +
                               kk + ((lane / 8) % 2) * 8);
        bf[nj][0] = r[0];
        bf[nj][1] = r[1];
        bf[nj + 1][0] = r[2];
        bf[nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
          mma::Mma16816<kBf16>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
    if (kt == kt1 - 1) {  // model 1 is done: its tile to s1, model 2 starts from zero
      StoreTile(acc, s1);
      Zero(acc);
    }
  }
  mma::CpAsyncWait<0>();
  __syncthreads();
}


// wgmma: warpgroup w of the block computes rows WgRow0(w) .. + 63 and columns WgCol0(w) .. +
// kWgCols - 1 of the sub-tile; thread t's accumulator i holds row 16 (warp % 4) + lane / 4 +
// 8 ((i / 2) % 2), column 8 (i / 4) + 2 (lane % 4) + i % 2 of that block (the PTX layout).
template <int kBM>
__device__ __forceinline__ int WgRow0(int wg) { return kBM == 128 ? 64 * wg : 0; }
template <int kBM>
__device__ __forceinline__ int WgCol0(int wg) { return kBM == 128 ? 0 : 64 * wg; }

template <int kBM>
__device__ __forceinline__ void StoreTileWg(const float (&acc)[GemmShape<kBM, true>::kAccFloats],
                                            float* s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int r = WgRow0<kBM>(warp / 4) + 16 * (warp % 4) + lane / 4;
  const int c = WgCol0<kBM>(warp / 4) + 2 * (lane % 4);
#pragma unroll
  for (int j = 0; j < GemmShape<kBM, true>::kWgCols / 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float* p = s + (r + 8 * h) * kGemmTileStride + c + 8 * j;
      p[0] = acc[4 * j + 2 * h];
      p[1] = acc[4 * j + 2 * h + 1];
    }
}

// PairGemm with wgmma (sm_90a). Stage s holds BM rows of a then BN rows of b, 64 halves each
// (128 bytes: 8 chunks of 16, chunk c of row r at position c ^ (r % 8), the 128-byte swizzle),
// at pipe + s * kStageBytes (pipe 1024-byte aligned). Loads run kStages - 2 k-tiles ahead and
// one k-tile's wgmmas stay in flight: the stage a load overwrites was read by wgmmas two
// k-tiles back, which every warpgroup has waited for before the barrier that precedes it.
template <bool kBf16, int kBM>
__device__ __forceinline__ void PairGemmWg(const Operands (&op)[2], int rows, int cols,
                                           unsigned char* pipe,
                                           float (&acc)[GemmShape<kBM, true>::kAccFloats],
                                           float* s1) {
  using Shape = GemmShape<kBM, true>;
  constexpr int kAhead = Shape::kStages - 2;
  const int tid = threadIdx.x, wg = tid / 128;
#pragma unroll
  for (int i = 0; i < Shape::kAccFloats; ++i) acc[i] = 0.0f;
  const int kt1 = (op[0].K + Shape::kBK - 1) / Shape::kBK;
  const int ktiles = kt1 + (op[1].K + Shape::kBK - 1) / Shape::kBK;
  const auto load = [&](int kt, int s) {
    const bool first = kt < kt1;
    const Operands o = first ? op[0] : op[1];
    const int k0 = (first ? kt : kt - kt1) * Shape::kBK;
    unsigned char* dst = pipe + s * Shape::kStageBytes;
    for (int i = tid; i < (kBM + kGemmBN) * 8; i += kGemmThreads) {
      const int row = i / 8, c = i % 8;
      const bool is_a = row < kBM;
      const int r = is_a ? row : row - kBM;
      const int k = k0 + 8 * c;
      const unsigned short* src = is_a ? o.a : o.b;
      int bytes = 0;
      if (r < (is_a ? rows : cols) && k < o.K) {
        bytes = (o.K - k < 8 ? o.K - k : 8) * 2;
        src += static_cast<Index>(r) * (is_a ? o.lda : o.ldb) + k;
      }
      mma::CpAsync16(dst + row * 128 + ((c ^ (row % 8)) * 16), src, bytes);
    }
  };
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < ktiles) load(s, s);
    mma::CpAsyncCommit();
  }
  const unsigned a_addr = mma::SmemAddr(pipe) + WgRow0<kBM>(wg) * 128;
  const unsigned b_addr = mma::SmemAddr(pipe) + (kBM + WgCol0<kBM>(wg)) * 128;
  for (int kt = 0; kt < ktiles; ++kt) {
    mma::CpAsyncWait<kAhead - 1>();  // stage kt has landed (for this thread's copies)
    mma::FenceProxyAsync();          // ... and is visible to the tensor cores
    __syncthreads();                 // ... for every thread's; k-tile kt - 2's wgmmas are done
    const unsigned stage = static_cast<unsigned>((kt % Shape::kStages) * Shape::kStageBytes);
    mma::PinRegisters(acc);
    mma::WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < Shape::kBK / 16; ++kk)
      mma::Wgmma<kBf16, Shape::kWgCols>(acc, mma::MatrixDesc(a_addr + stage + 32 * kk),
                                        mma::MatrixDesc(b_addr + stage + 32 * kk), 1);
    mma::WgmmaCommit();
    const int next = kt + kAhead;
    if (next < ktiles) load(next, next % Shape::kStages);
    mma::CpAsyncCommit();
    if (kt == kt1 - 1) {  // model 1 is done: its tile to s1, model 2 starts from zero
      mma::WgmmaWait<0>();
      mma::PinRegisters(acc);
      StoreTileWg<kBM>(acc, s1);
#pragma unroll
      for (int i = 0; i < Shape::kAccFloats; ++i) acc[i] = 0.0f;
    } else {
      mma::WgmmaWait<1>();
    }
  }
  mma::WgmmaWait<0>();
  mma::PinRegisters(acc);
  mma::CpAsyncWait<0>();
  __syncthreads();
}

}  // namespace gemm_detail

// The first row's logits of the tile, per model: shift[k * v + j] = f_k[0] . g_k[j] (float32
// sums), one warp per label.
template <bool kBf16>
__global__ void __launch_bounds__(256)
    LseKlShiftKernel(const unsigned short* __restrict__ f1, const unsigned short* __restrict__ g1,
                     Index ldg1, int k1, const unsigned short* __restrict__ f2,
                     const unsigned short* __restrict__ g2, Index ldg2, int k2, Index v,
                     float* __restrict__ shift) {
  const Index j = static_cast<Index>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const bool live = j < v;  // every lane takes part in the shuffles
  float s[2] = {0.0f, 0.0f};
  for (int m = 0; m < 2; ++m) {
    const unsigned short* f = m == 0 ? f1 : f2;
    const unsigned short* g = (m == 0 ? g1 : g2) + (live ? j : 0) * (m == 0 ? ldg1 : ldg2);
    const int K = m == 0 ? k1 : k2;
    for (int k = lane; live && k < K; k += 32)
      s[m] += mma::ToFloat<kBf16>(f[k]) * mma::ToFloat<kBf16>(g[k]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s[m] += __shfl_xor_sync(0xffffffffu, s[m], off);
  }
  if (live && lane == 0) {
    shift[j] = s[0];
    shift[v + j] = s[1];
  }
}

template <bool kBf16, int kBM, bool kWg = false>
__global__ void __launch_bounds__(kGemmThreads, GemmShape<kBM, kWg>::kBlocksPerSm)
    LseKlGemmKernel(const unsigned short* __restrict__ f1, Index ldf1,
                    const unsigned short* __restrict__ g1, Index ldg1, int k1,
                    const unsigned short* __restrict__ f2, Index ldf2,
                    const unsigned short* __restrict__ g2, Index ldg2, int k2, Index n, Index v,
                    const float* __restrict__ shift, double* __restrict__ row_work,
                    double* __restrict__ col_work, bool mainloop_only) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16, ldmatrix and cp.async need sm_80; the launcher checks first
#else
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kWg) __trap();  // wgmma needs sm_90a; the launcher checks first
#endif
  IDENTIREP_GEMM_DYNAMIC_SHARED(smem);
  float* s1 = reinterpret_cast<float*>(smem);
  using Shape = GemmShape<kBM, kWg>;
  // wgmma's swizzle follows shared addresses: its pipeline starts at a multiple of 1024
  const unsigned pipe_at = (mma::SmemAddr(smem) + Shape::kTileBytes + Shape::kAlignBytes) /
                           (kWg ? 1024u : 1u) * (kWg ? 1024u : 1u);
  unsigned char* pipe = smem + (pipe_at - mma::SmemAddr(smem));
  float* s2 = reinterpret_cast<float*>(pipe);
  const int tid = threadIdx.x;
  const Index slab = blockIdx.x;
  const Index c0 = slab * kGemmBN;
  const int cols = static_cast<int>(v - c0 < kGemmBN ? v - c0 : kGemmBN);
  // chunks of whole sub-tiles
  const Index per_chunk = (n + gridDim.y - 1) / gridDim.y;
  const Index chunk_rows = (per_chunk + kBM - 1) / kBM * kBM;
  const Index r_begin = static_cast<Index>(blockIdx.y) * chunk_rows;
  const Index r_end = r_begin + chunk_rows < n ? r_begin + chunk_rows : n;
  const bool columns = col_work != nullptr;
  const int col = tid % kGemmBN, half = tid / kGemmBN;
  const bool own = col < cols;
  const double sh1 = columns && own ? static_cast<double>(shift[c0 + col]) : 0.0;
  const double sh2 = columns && own ? static_cast<double>(shift[v + c0 + col]) : 0.0;
  double cacc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  gemm_detail::Acc<Shape::kMI> acc;  // mma.sync
  float wacc[kWg ? Shape::kAccFloats : 1];  // wgmma

  for (Index r0 = r_begin; r0 < r_end; r0 += kBM) {
    const int rows = static_cast<int>(r_end - r0 < kBM ? r_end - r0 : kBM);
    __syncthreads();  // the previous sub-tile's tiles are consumed
    const gemm_detail::Operands op[2] = {{f1 + r0 * ldf1, ldf1, g1 + c0 * ldg1, ldg1, k1},
                                         {f2 + r0 * ldf2, ldf2, g2 + c0 * ldg2, ldg2, k2}};
    if constexpr (kWg) {
      gemm_detail::PairGemmWg<kBf16, kBM>(op, rows, cols, pipe, wacc, s1);
      gemm_detail::StoreTileWg<kBM>(wacc, s2);
    } else {
      gemm_detail::PairGemm<kBf16, kBM>(op, rows, cols, reinterpret_cast<unsigned short*>(pipe),
                                        acc, s1);
      gemm_detail::StoreTile(acc, s2);
    }
    __syncthreads();
    if (mainloop_only) continue;  // a timing probe: the GEMMs and tile stores alone

    if (columns && own) {
      const int r_lo = half * (kBM / 2);
      const int r_hi = rows < r_lo + kBM / 2 ? rows : r_lo + kBM / 2;
      for (int r = r_lo; r < r_hi; ++r) {
        const int at = r * kGemmTileStride + col;
        cuda_detail::AddColumnSums(cacc, static_cast<double>(s1[at]) - sh1,
                                   static_cast<double>(s2[at]) - sh2);
      }
    }

    // Row phase, rounds of 64 rows: the record of LseKlSlabKernel per row.
#pragma unroll 1
    for (int round = 0; round < Shape::kRowRounds; ++round) {
      const int rr = round * (kGemmThreads / kGemmRowTpr) + tid / kGemmRowTpr;
      cuda_detail::SlabRowRecord<float, kGemmRowTpr>(
          s1 + rr * kGemmTileStride, s2 + rr * kGemmTileStride, rr < rows ? cols : 0,
          tid % kGemmRowTpr, row_work + (slab * kRowFields) * n + (r0 + rr), n);
    }
  }
  if (!columns || mainloop_only) return;
  // The two halves of each label meet in tile 1, in a fixed order.
  double* meet = reinterpret_cast<double*>(s1);
  __syncthreads();
  if (half == 1) {
#pragma unroll
    for (int k = 0; k < 5; ++k) meet[k * kGemmBN + col] = cacc[k];
  }
  __syncthreads();
  if (half == 0 && own) {
#pragma unroll
    for (int k = 0; k < 5; ++k)
      col_work[(static_cast<Index>(blockIdx.y) * 5 + k) * v + c0 + col] =
          cacc[k] + meet[k * kGemmBN + col];
  }
#endif
}

#ifndef __CUDACC_RTC__

// The GEMM kernel's arguments.
struct GemmKernelArgs {
  const unsigned short* f1;
  Index ldf1;
  const unsigned short* g1;
  Index ldg1;
  int k1;
  const unsigned short* f2;
  Index ldf2;
  const unsigned short* g2;
  Index ldg2;
  int k2;
  Index n, v;
  const float* shift;
  double* row_work;
  double* col_work;
  bool mainloop_only = false;  // a timing probe: no epilogue, nothing written
};

// LseKlGemmKernel<kBf16, kBM, kWg> alone on `stream`. csrc/lse_kl_wgmma.cu (sm_90a) launches
// only this: a launcher of other kernels instantiated there too would be a second definition of
// it, and the linker could keep the sm_90a copy for every GPU.
template <bool kBf16, int kBM, bool kWg>
cudaError_t LaunchGemmKernel(const GemmKernelArgs& a, cudaStream_t stream) {
  constexpr int kSmem = GemmShape<kBM, kWg>::kSmemBytes;
  const auto kernel = LseKlGemmKernel<kBf16, kBM, kWg>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err == cudaSuccess && GemmShape<kBM, kWg>::kBlocksPerSm > 1)  // room for both blocks
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(GemmSlabs(a.v)),
                  static_cast<unsigned>(GemmChunks<kBM>(a.n)));
  kernel<<<grid, kGemmThreads, kSmem, stream>>>(a.f1, a.ldf1, a.g1, a.ldg1, a.k1, a.f2, a.ldf2,
                                                a.g2, a.ldg2, a.k2, a.n, a.v, a.shift,
                                                a.row_work, a.col_work, a.mainloop_only);
  return cudaGetLastError();
}

// Launcher: shift (with column moments), the GEMM kernel (launch_gemm(GemmKernelArgs,
// stream): LaunchGemmKernel<kBf16, kBM, kWg>), then LseKlColMergeKernel<float> and
// LseKlRowMergeKernel<float, kGemmBN> on `stream`: the update of LseKlFused for the logits
// f_k[0:n] g_k[0:v]'. row_work, col_work (with mom.col) and shift: LseKlGemm*Elems. The caller
// checks the operands (csrc/lse_kl_gemm.cu). Returns the first launch error.
template <bool kBf16, int kBM, typename LaunchGemm>
cudaError_t LseKlGemm(const unsigned short* f1, Index ldf1, const unsigned short* g1, Index ldg1,
                      int k1, const unsigned short* f2, Index ldf2, const unsigned short* g2,
                      Index ldg2, int k2, Index n, Index v, Index col0, double* state,
                      Index state_ld, Index* args, Index args_ld, const DeviceLogitMoments& mom,
                      double* row_work, float* shift, cudaStream_t stream,
                      LaunchGemm&& launch_gemm) {
  if (n <= 0 || v <= 0) return cudaSuccess;
  if (row_work == nullptr || (mom.col != nullptr && (mom.col_work == nullptr || shift == nullptr)))
    return cudaErrorInvalidValue;
  const Index slabs = GemmSlabs(v), chunks = GemmChunks<kBM>(n);
  if (slabs > 0x7fffffffLL || (v + 7) / 8 > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  double* col_work = mom.col != nullptr ? mom.col_work : nullptr;
  cudaError_t err;
  if (col_work != nullptr) {
    LseKlShiftKernel<kBf16><<<static_cast<unsigned>((v + 7) / 8), 256, 0, stream>>>(
        f1, g1, ldg1, k1, f2, g2, ldg2, k2, v, shift);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  err = launch_gemm(GemmKernelArgs{f1, ldf1, g1, ldg1, k1, f2, ldf2, g2, ldg2, k2, n, v, shift,
                                   row_work, col_work},
                    stream);
  if (err != cudaSuccess) return err;
  return LaunchMerges<float, kGemmBN>(shift, shift + v, n, v, col0, chunks, row_work, state,
                                      state_ld, args, args_ld, mom, stream);
}

#endif  // __CUDACC_RTC__

}  // namespace kernels
}  // namespace identirep
