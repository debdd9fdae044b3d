// Launch geometry of identirep's CUDA kernels and the sizes of their scratch, in one table:
// the kernel headers (lse_kl.cuh, lse_kl_gemm.cuh, pivot_terms.cuh) and their launchers use it,
// the pass driver's workspace plan (csrc/plan.cpp) sizes its scratch with it, the cupy backend
// launches its NVRTC build with it (identirep/gpu/nvrtc.py reads _core.launch_table(), which
// csrc/plan.cpp fills from here), and so does the SIMT emulator (tests/emulation/simt).
//
// Plain C++ without CUDA or standard headers: nvcc, NVRTC and the host compiler all compile it
// (the sizes are __host__ __device__ under nvcc and NVRTC).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define IDENTIREP_HOST_DEVICE __host__ __device__
#else
#define IDENTIREP_HOST_DEVICE
#endif

namespace identirep {
namespace kernels {

// 64-bit signed index, spelled without <cstdint> so that NVRTC compiles this file as is.
using Index = long long;
static_assert(sizeof(Index) == 8, "Index must be 64-bit");

// ---- LseKl (lse_kl.cuh): the row kernel, the column kernel and the merges
constexpr int kLseKlThreads = 256;  // threads per row block of LseKlKernel
constexpr int kColRows = 8;         // warps (row lanes) per block of LseKlColKernel
constexpr int kColMaxChunks = 16;   // row chunks of one tile in the column kernel, at most
constexpr Index kColMinChunkRows = 64;
constexpr int kMergeThreads = 256;  // threads per block of LseKlColMergeKernel, LseKlRowMergeKernel

// ---- LseKlFused (lse_kl.cuh): the one-read epilogue
constexpr int kSlabCols = 256;     // labels of a slab: one block of LseKlSlabKernel
constexpr int kSlabThreads = 256;  // one label per thread in the column phase
constexpr int kSlabRowsFloat = 16;  // rows of a sub-tile in shared memory (SlabRows<T>)
constexpr int kSlabRowsDouble = 8;
constexpr int kRowFields = 15;  // m1 j1 m2 j2 s1 a12 e1 s2 a21 e2 mean1 mean2 q11 q22 qdd
constexpr int kFusedMaxChunks = 64;
constexpr Index kFusedMinChunkRows = 256;

// ---- LseKlGemm (lse_kl_gemm.cuh): the fused GEMM's slabs
constexpr int kGemmBN = 128;  // labels of a slab

// ---- PivotCriteria (pivot_terms.cuh)
constexpr int kPivotThreads = 256;  // threads per pivot row block

// Chunks of n rows of at least min_rows each (the last may have fewer), 1 to max_chunks.
IDENTIREP_HOST_DEVICE inline Index ChunkCount(Index n, Index min_rows, Index max_chunks) {
  const Index by_rows = (n + min_rows - 1) / min_rows;
  return by_rows < 1 ? 1 : (by_rows > max_chunks ? max_chunks : by_rows);
}

// Row chunks of the column kernel for a tile of n rows (>= 1 row each).
IDENTIREP_HOST_DEVICE inline Index ColChunks(Index n) {
  return ChunkCount(n, kColMinChunkRows, kColMaxChunks);
}

// Size of the col_work scratch of a tile of v labels, in doubles.
IDENTIREP_HOST_DEVICE inline Index LseKlColWorkElems(Index v) { return kColMaxChunks * 5 * v; }

// Row chunks of the one-read epilogue for a tile of n rows.
IDENTIREP_HOST_DEVICE inline Index FusedChunks(Index n) {
  return ChunkCount(n, kFusedMinChunkRows, kFusedMaxChunks);
}
// Slabs of `cols` labels in a tile of v labels, and the doubles of their row records.
IDENTIREP_HOST_DEVICE inline Index SlabCount(Index v, Index cols) { return (v + cols - 1) / cols; }
IDENTIREP_HOST_DEVICE inline Index SlabRecordElems(Index n, Index v, Index cols) {
  return SlabCount(v, cols) * kRowFields * n;
}
IDENTIREP_HOST_DEVICE inline Index FusedSlabs(Index v) { return SlabCount(v, kSlabCols); }
// Scratch of the one-read epilogue for an n x v tile, in doubles.
IDENTIREP_HOST_DEVICE inline Index LseKlFusedRowWorkElems(Index n, Index v) {
  return SlabRecordElems(n, v, kSlabCols);
}
IDENTIREP_HOST_DEVICE inline Index LseKlFusedColWorkElems(Index v) {
  return kFusedMaxChunks * 5 * v;
}

IDENTIREP_HOST_DEVICE inline Index GemmSlabs(Index v) { return SlabCount(v, kGemmBN); }
// Scratch of LseKlGemm for an n x v tile: row_work and col_work (the one-read epilogue's
// layout, with kGemmBN-label slabs) in doubles, shift in floats.
IDENTIREP_HOST_DEVICE inline Index LseKlGemmRowWorkElems(Index n, Index v) {
  return SlabRecordElems(n, v, kGemmBN);
}
IDENTIREP_HOST_DEVICE inline Index LseKlGemmColWorkElems(Index v) {
  return LseKlFusedColWorkElems(v);
}
IDENTIREP_HOST_DEVICE inline Index LseKlGemmShiftElems(Index v) { return 2 * v; }

}  // namespace kernels
}  // namespace identirep
