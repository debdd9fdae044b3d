// The GPU passes' plans in plain C++ (no CUDA, cuBLAS or pybind11), compiled into every build:
// the cupy backend needs them without CUDA, the pass driver (csrc/cuda_pass.cpp) with it.
// - the launch table of the kernels (kernels/launch_table.h) and their scratch sizes;
// - the cuBLAS arguments of a logit tile a @ b' for strided operands;
// - the pass driver's workspace layout, and the tile shapes of both backends' loops.
// Each throws std::invalid_argument on bad arguments.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace identirep {

// ---- the launch table (exported as _core.launch_table() and the functions below)
std::map<std::string, int64_t> launch_table();
int64_t lse_kl_col_chunks(int64_t n);    // ColChunks
int64_t lse_kl_fused_chunks(int64_t n);  // FusedChunks
// Doubles of column scratch that lse_kl_update_cuda needs for a tile of v labels.
int64_t lse_kl_cuda_col_work_elems(int64_t v);
// Doubles of (row_work, col_work) that the one-read epilogue needs for an n x v tile.
std::pair<int64_t, int64_t> lse_kl_cuda_fused_work_elems(int64_t n, int64_t v);
// (row_work doubles, col_work doubles, shift floats) of the fused GEMM for an n x v tile.
std::vector<int64_t> lse_kl_gemm_work_elems(int64_t n, int64_t v);

// ---- cuBLAS
// cuBLAS operations (cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T; cuda_pass.cpp checks them).
constexpr int kGemmOpN = 0, kGemmOpT = 1;

// The BLAS layout of a rows x cols array with element strides (s0, s1): rows contiguous
// (row-major) or columns contiguous, and its leading dimension; ld 0: neither.
struct BlasLayout {
  bool row;
  int64_t ld;
};
BlasLayout BlasLayoutOf(int64_t rows, int64_t cols, int64_t s0, int64_t s1);
// For Python: ("row" | "col", ld), or nothing when neither is contiguous (a copy is needed).
std::optional<std::pair<std::string, int64_t>> blas_layout(int64_t rows, int64_t cols, int64_t s0,
                                                           int64_t s1);

// out^T (c x r) = op(labels block) op(rows block) in cuBLAS's column-major terms, for the
// row-major logits out (r x c) = rows @ labels': a row-major block is its transpose there.
inline int labels_op(const BlasLayout& l) { return l.row ? kGemmOpT : kGemmOpN; }
inline int rows_op(const BlasLayout& l) { return l.row ? kGemmOpN : kGemmOpT; }

// cublasGemmEx arguments (transa, transb, m, n, k, lda, ldb, ldc) for the row-major a @ b'
// (out: a.rows x b.rows, ld b.rows); operands as (rows, cols, s0, s1) in elements; nothing
// when a or b has neither rows nor columns contiguous.
using Strides2d = std::tuple<int64_t, int64_t, int64_t, int64_t>;
std::optional<std::vector<int64_t>> gemm_nt_plan(const Strides2d& a, const Strides2d& b);

// ---- the pass driver's workspace
// Bytes of cuBLAS workspace inside the driver's workspace (the size NVIDIA recommends for
// Hopper): a handle's default workspace is shared by every stream the handle is set to, so
// passes on different streams would race on it.
constexpr int64_t kCublasWorkspace = int64_t{32} << 20;
int64_t cublas_workspace_bytes();

// Byte offsets of the pieces of the driver's workspace, and its size. With gemm (the fused
// GEMM kernel) there are no logit tiles and no cuBLAS workspace; "tiles" then holds the column
// shifts (2 tc floats).
struct WorkspaceLayout {
  int64_t cublas, col_work, row_work, tiles, total;
};
WorkspaceLayout PlanWorkspace(int64_t tr, int64_t tc, bool f64, bool overlap, bool fused,
                              bool gemm);
int64_t AlignWorkspace(int64_t bytes);  // to 256 bytes
// Bytes of workspace lse_kl_pass_cuda needs for tile_rows x tile_cols tiles.
int64_t lse_kl_pass_cuda_workspace(int64_t tile_rows, int64_t tile_cols, const std::string& dtype,
                                   bool overlap, bool fused, bool gemm);

// ---- tile shapes
// The cupy backend's loop over n inputs x v labels: (tile rows, tile cols, overlap): all rows
// when they fit, tile_cols labels (default 4096), shrunk until the logit tiles (two pairs with
// overlap), the widened operand tiles (converted_cols columns of itemsize bytes: the columns
// of operands the loop widens per tile) and the epilogue's scratch fit in workspace_bytes;
// overlap only with more than one tile.
std::tuple<int64_t, int64_t, bool> plan_cupy_pass(int64_t n, int64_t v, int64_t converted_cols,
                                                  int64_t itemsize,
                                                  std::optional<int64_t> tile_rows,
                                                  std::optional<int64_t> tile_cols,
                                                  int64_t workspace_bytes, bool overlap,
                                                  bool fused);

// The pass driver's calls (dtype "float32" or "float64" logits; gemm: the fused GEMM kernel):
// (tile rows, tile cols, overlap, workspace bytes). cuBLAS tiles as for the cupy backend, with
// the cuBLAS workspace and the alignment of the pieces reserved; the fused GEMM: all rows and
// 16384 labels (or the given ones), labels halved down to 128 first, then rows, until its
// scratch fits.
std::tuple<int64_t, int64_t, bool, int64_t> plan_cuda_pass(int64_t n, int64_t v,
                                                           const std::string& dtype,
                                                           std::optional<int64_t> tile_rows,
                                                           std::optional<int64_t> tile_cols,
                                                           int64_t workspace_bytes, bool overlap,
                                                           bool fused, bool gemm);

}  // namespace identirep
