// The GPU passes' plans (plan.h): the launch table, the cuBLAS plan of a logit tile, the pass
// driver's workspace and the tile shapes of both backends' loops.
#include "plan.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/launch_table.h"

namespace identirep {
namespace {

namespace k = kernels;

void Require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

int64_t NonNegative(int64_t x, const char* fn, const char* name) {
  if (x < 0)
    throw std::invalid_argument(std::string(fn) + ": " + name + " must be >= 0, got " +
                                std::to_string(x));
  return x;
}

// ---- sizes in saturating arithmetic
// The sizes below are products of extents that callers choose (rows, labels, tiles), so they
// can exceed int64: each is computed so that kMaxSize stands for "does not fit", and the
// formulas of launch_table.h (unchecked, device code too) run only on arguments where none of
// their steps overflows. Operands are >= 0.
constexpr int64_t kMaxSize = std::numeric_limits<int64_t>::max();

int64_t SatAdd(int64_t a, int64_t b) { return a > kMaxSize - b ? kMaxSize : a + b; }
int64_t SatMul(int64_t a, int64_t b) { return b != 0 && a > kMaxSize / b ? kMaxSize : a * b; }
// AlignWorkspace, saturating
int64_t SatAlign(int64_t bytes) {
  return bytes > kMaxSize - 255 ? kMaxSize : (bytes + 255) / 256 * 256;
}

// The scratch sizes of launch_table.h (elements), or kMaxSize where the header's arithmetic
// would overflow.
int64_t ColWorkElems(int64_t v) {  // kColMaxChunks * 5 * v
  return SatMul(int64_t{k::kColMaxChunks} * 5, v) == kMaxSize ? kMaxSize
                                                                : k::LseKlColWorkElems(v);
}
int64_t FusedColWorkElems(int64_t v) {  // kFusedMaxChunks * 5 * v
  return SatMul(int64_t{k::kFusedMaxChunks} * 5, v) == kMaxSize ? kMaxSize
                                                                  : k::LseKlFusedColWorkElems(v);
}
// SlabRecordElems: (v + cols - 1) / cols * kRowFields * n
bool SlabRecordsFit(int64_t n, int64_t v, int64_t cols) {
  if (v > kMaxSize - (cols - 1)) return false;
  return SatMul(SatMul(k::SlabCount(v, cols), k::kRowFields), n) != kMaxSize;
}
int64_t FusedRowWorkElems(int64_t n, int64_t v) {
  return SlabRecordsFit(n, v, k::kSlabCols) ? k::LseKlFusedRowWorkElems(n, v) : kMaxSize;
}
int64_t GemmRowWorkElems(int64_t n, int64_t v) {
  return SlabRecordsFit(n, v, k::kGemmBN) ? k::LseKlGemmRowWorkElems(n, v) : kMaxSize;
}
int64_t GemmColWorkElems(int64_t v) { return FusedColWorkElems(v); }  // as the header's
int64_t GemmShiftElems(int64_t v) {  // 2 * v
  return SatMul(2, v) == kMaxSize ? kMaxSize : k::LseKlGemmShiftElems(v);
}

// x, unless it stands for an overflow: then std::invalid_argument.
int64_t Fits(int64_t x, const std::string& what) {
  if (x == kMaxSize) throw std::invalid_argument(what + " does not fit in int64");
  return x;
}

// The workspace layout (PlanWorkspace) with every piece saturating: total is kMaxSize when
// the layout does not fit in int64. Arguments >= 0.
WorkspaceLayout LayoutOf(int64_t tr, int64_t tc, bool f64, bool overlap, bool fused, bool gemm) {
  int64_t col, row;
  if (gemm) {
    row = GemmRowWorkElems(tr, tc);
    col = GemmColWorkElems(tc);
  } else {
    col = fused ? FusedColWorkElems(tc) : ColWorkElems(tc);
    row = fused ? FusedRowWorkElems(tr, tc) : 0;
  }
  WorkspaceLayout w;
  w.cublas = 0;
  w.col_work = gemm ? 0 : kCublasWorkspace;
  w.row_work = SatAdd(w.col_work, SatAlign(SatMul(8, col)));
  w.tiles = SatAdd(w.row_work, SatAlign(SatMul(8, row)));
  const int64_t tile = SatAlign(SatMul(SatMul(tr, tc), f64 ? 8 : 4));
  w.total = SatAdd(w.tiles, gemm ? SatAlign(SatMul(4, GemmShiftElems(tc)))
                                 : SatMul(overlap ? 4 : 2, tile));
  return w;
}

constexpr int64_t kDefaultTileCols = 4096;  // labels per tile of cuBLAS logit tiles
constexpr int64_t kGemmTileCols = 16384;    // labels per call of the fused GEMM (fewer partial
                                            // waves of blocks)
constexpr int64_t kGemmMinTileCols = 128;
// Alignment of the driver's workspace pieces beyond the tiles and the epilogue's scratch.
constexpr int64_t kDriverReserve = kCublasWorkspace + 6 * 256;

// Bytes of the epilogue's scratch (row and column) for an r x c tile (saturating).
int64_t EpilogueScratchBytes(int64_t r, int64_t c, bool fused) {
  if (!fused) return SatMul(8, ColWorkElems(c));
  return SatMul(8, SatAdd(FusedRowWorkElems(r, c), FusedColWorkElems(c)));
}

void CheckTiles(std::optional<int64_t> tile_rows, std::optional<int64_t> tile_cols) {
  for (const auto& [name, t] : {std::make_pair("tile_rows", tile_rows),
                                std::make_pair("tile_cols", tile_cols)})
    if (t && *t < 1)
      throw std::invalid_argument(std::string(name) + " must be >= 1, got " + std::to_string(*t));
}

// Tiles of GEMM logits: all rows when they fit, tile_cols labels (default kDefaultTileCols);
// while `buffers` pairs of logit tiles, the widened operand tiles (converted_cols columns),
// the epilogue's scratch and `reserve` bytes do not fit in workspace_bytes, the rows shrink
// (straight to what fits, unless given), then the labels, by halves.
std::pair<int64_t, int64_t> LogitTiles(int64_t n, int64_t v, int64_t converted_cols,
                                       int64_t itemsize, std::optional<int64_t> tile_rows,
                                       std::optional<int64_t> tile_cols, int64_t workspace_bytes,
                                       int64_t buffers, bool fused, int64_t reserve) {
  CheckTiles(tile_rows, tile_cols);
  const int64_t tiles = 2 * buffers;
  // reserve + itemsize (tiles r c + (r + c) converted_cols) + scratch, saturating
  const auto need = [&](int64_t r, int64_t c) {
    const int64_t elems = SatAdd(SatMul(SatMul(tiles, r), c),
                                 SatMul(SatAdd(r, c), converted_cols));
    return SatAdd(SatAdd(reserve, SatMul(itemsize, elems)), EpilogueScratchBytes(r, c, fused));
  };
  const auto fits = [&](int64_t r, int64_t c) {
    const int64_t bytes = need(r, c);
    return bytes != kMaxSize && bytes <= workspace_bytes;
  };
  int64_t tc = std::min(v, tile_cols.value_or(kDefaultTileCols));
  int64_t tr = tile_rows ? std::min(n, *tile_rows) : n;
  while (!fits(tr, tc) && (tr > 1 || tc > 1)) {
    if (!tile_rows && tr > 1) {
      const int64_t per_row = SatMul(itemsize, SatAdd(SatMul(tiles, tc), converted_cols));
      const int64_t room = workspace_bytes - need(0, tc);  // need(0, tc) >= 0: no overflow
      tr = std::max<int64_t>(1, room < 0 ? 0 : std::min(tr / 2, room / per_row));
    } else if (tc > 1) {
      tc = std::max<int64_t>(1, tc / 2);
    } else {
      tr = std::max<int64_t>(1, tr / 2);
    }
  }
  Require(fits(tr, tc),
          "workspace_bytes=" + std::to_string(workspace_bytes) +
              " is too small for even one 1 x 1 tile; need at least " +
              (need(1, 1) == kMaxSize ? std::string("more than int64 holds")
                                      : std::to_string(need(1, 1)) + " bytes"));
  return {tr, std::min<int64_t>(tc, 0x7FFFFFFF)};
}

// The fused GEMM's calls: all rows and kGemmTileCols labels (or the given ones), the labels
// halved down to kGemmMinTileCols first, then the rows, until its scratch fits.
std::pair<int64_t, int64_t> GemmTiles(int64_t n, int64_t v, std::optional<int64_t> tile_rows,
                                      std::optional<int64_t> tile_cols,
                                      int64_t workspace_bytes) {
  CheckTiles(tile_rows, tile_cols);
  int64_t tr = tile_rows ? std::min(n, *tile_rows) : n;
  int64_t tc = std::min(v, tile_cols.value_or(kGemmTileCols));
  const auto need = [](int64_t r, int64_t c) {
    return LayoutOf(r, c, false, false, false, true).total;  // saturating
  };
  const auto fits = [&](int64_t r, int64_t c) {
    const int64_t bytes = need(r, c);
    return bytes != kMaxSize && bytes <= workspace_bytes;
  };
  while (!fits(tr, tc)) {
    if (!tile_cols && tc > kGemmMinTileCols) {
      tc = std::max(kGemmMinTileCols, tc / 2);
    } else if (!tile_rows && tr > 1) {
      tr = std::max<int64_t>(1, tr / 2);
    } else {
      const int64_t bytes = need(tr, tc);
      Require(false, "workspace_bytes=" + std::to_string(workspace_bytes) +
                         " is too small for the fused GEMM with " + std::to_string(tr) + " x " +
                         std::to_string(tc) + " tiles (" +
                         (bytes == kMaxSize ? std::string("more than int64 holds")
                                            : std::to_string(bytes) + " bytes") + ")");
    }
  }
  return {tr, tc};
}

bool OneTile(int64_t n, int64_t v, int64_t tr, int64_t tc) {
  return n <= tr && v <= tc;  // one tile of rows and one of labels (n, v >= 1)
}

}  // namespace

// ---------------------------------------------------------------- the launch table
std::map<std::string, int64_t> launch_table() {
  return {{"lse_kl_threads", k::kLseKlThreads},
          {"col_rows", k::kColRows},
          {"col_max_chunks", k::kColMaxChunks},
          {"col_min_chunk_rows", k::kColMinChunkRows},
          {"merge_threads", k::kMergeThreads},
          {"slab_cols", k::kSlabCols},
          {"slab_threads", k::kSlabThreads},
          {"slab_rows_float", k::kSlabRowsFloat},
          {"slab_rows_double", k::kSlabRowsDouble},
          {"row_fields", k::kRowFields},
          {"fused_max_chunks", k::kFusedMaxChunks},
          {"fused_min_chunk_rows", k::kFusedMinChunkRows},
          {"gemm_slab_cols", k::kGemmBN},
          {"pivot_threads", k::kPivotThreads}};
}

// The chunk counts saturate at their maximum, reached by this many rows: larger n give the
// same count, without the header's n + min_rows - 1 overflowing.
int64_t lse_kl_col_chunks(int64_t n) {
  NonNegative(n, "lse_kl_col_chunks", "n");
  return k::ColChunks(std::min<int64_t>(n, k::kColMinChunkRows * k::kColMaxChunks));
}

int64_t lse_kl_fused_chunks(int64_t n) {
  NonNegative(n, "lse_kl_fused_chunks", "n");
  return k::FusedChunks(std::min<int64_t>(n, k::kFusedMinChunkRows * k::kFusedMaxChunks));
}

int64_t lse_kl_cuda_col_work_elems(int64_t v) {
  NonNegative(v, "lse_kl_cuda_col_work_elems", "v");
  return Fits(ColWorkElems(v), "lse_kl_cuda_col_work_elems: the scratch of v=" +
                                   std::to_string(v) + " labels");
}

std::pair<int64_t, int64_t> lse_kl_cuda_fused_work_elems(int64_t n, int64_t v) {
  NonNegative(n, "lse_kl_cuda_fused_work_elems", "n");
  NonNegative(v, "lse_kl_cuda_fused_work_elems", "v");
  const std::string what = "lse_kl_cuda_fused_work_elems: the scratch of an n=" +
                           std::to_string(n) + " x v=" + std::to_string(v) + " tile";
  return {Fits(FusedRowWorkElems(n, v), what), Fits(FusedColWorkElems(v), what)};
}

std::vector<int64_t> lse_kl_gemm_work_elems(int64_t n, int64_t v) {
  NonNegative(n, "lse_kl_gemm_work_elems", "n");
  NonNegative(v, "lse_kl_gemm_work_elems", "v");
  const std::string what = "lse_kl_gemm_work_elems: the scratch of an n=" + std::to_string(n) +
                           " x v=" + std::to_string(v) + " tile";
  return {Fits(GemmRowWorkElems(n, v), what), Fits(GemmColWorkElems(v), what),
          Fits(GemmShiftElems(v), what)};
}

// ---------------------------------------------------------------- cuBLAS
constexpr int64_t kMaxGemmExtent = (int64_t{1} << 31) - 1;  // cuBLAS's int

BlasLayout BlasLayoutOf(int64_t rows, int64_t cols, int64_t s0, int64_t s1) {
  constexpr int64_t kMaxLd = kMaxGemmExtent;
  if (cols == 1 || s1 == 1) {
    const int64_t ld = rows > 1 ? s0 : cols;
    if (ld >= cols && ld <= kMaxLd) return {true, std::max<int64_t>(ld, 1)};
  }
  if (rows == 1 || s0 == 1) {
    const int64_t ld = cols > 1 ? s1 : rows;
    if (ld >= rows && ld <= kMaxLd) return {false, std::max<int64_t>(ld, 1)};
  }
  return {true, 0};
}

std::optional<std::pair<std::string, int64_t>> blas_layout(int64_t rows, int64_t cols, int64_t s0,
                                                           int64_t s1) {
  NonNegative(rows, "blas_layout", "rows");
  NonNegative(cols, "blas_layout", "cols");
  const BlasLayout l = BlasLayoutOf(rows, cols, s0, s1);
  if (l.ld == 0) return std::nullopt;
  return std::make_pair(std::string(l.row ? "row" : "col"), l.ld);
}

std::optional<std::vector<int64_t>> gemm_nt_plan(const Strides2d& a, const Strides2d& b) {
  const auto [ra, ca, a0, a1] = a;
  const auto [rb, cb, b0, b1] = b;
  for (const auto& [x, name] : {std::make_pair(ra, "a's rows"), std::make_pair(ca, "a's columns"),
                                std::make_pair(rb, "b's rows"), std::make_pair(cb, "b's columns")})
    Require(x >= 0 && x <= kMaxGemmExtent,
            "gemm_nt_plan: " + std::string(name) + " must be in [0, 2^31 - 1] (cublasGemmEx " +
                "takes int), got " + std::to_string(x));
  Require(ca == cb, "gemm_nt_plan: a and b need the same number of columns, got " +
                        std::to_string(ca) + " and " + std::to_string(cb));
  const BlasLayout la = BlasLayoutOf(ra, ca, a0, a1), lb = BlasLayoutOf(rb, cb, b0, b1);
  if (la.ld == 0 || lb.ld == 0) return std::nullopt;
  return std::vector<int64_t>{labels_op(lb), rows_op(la), rb, ra, ca, lb.ld, la.ld, rb};
}

// ---------------------------------------------------------------- the driver's workspace
int64_t cublas_workspace_bytes() { return kCublasWorkspace; }

int64_t AlignWorkspace(int64_t bytes) {
  Require(bytes >= 0 && bytes <= kMaxSize - 255,
          "AlignWorkspace: bytes must be in [0, 2^63 - 256], got " + std::to_string(bytes));
  return (bytes + 255) / 256 * 256;
}

WorkspaceLayout PlanWorkspace(int64_t tr, int64_t tc, bool f64, bool overlap, bool fused,
                              bool gemm) {
  NonNegative(tr, "PlanWorkspace", "tile rows");
  NonNegative(tc, "PlanWorkspace", "tile cols");
  const WorkspaceLayout w = LayoutOf(tr, tc, f64, overlap, fused, gemm);
  Fits(w.total, "the workspace of " + std::to_string(tr) + " x " + std::to_string(tc) +
                    " tiles");
  return w;
}

int64_t lse_kl_pass_cuda_workspace(int64_t tile_rows, int64_t tile_cols, const std::string& dtype,
                                   bool overlap, bool fused, bool gemm) {
  const std::string what = "lse_kl_pass_cuda_workspace: ";
  Require(tile_rows >= 1 && tile_cols >= 1, what + "tile_rows and tile_cols must be >= 1");
  Require(dtype == "float32" || dtype == "float64", what + "dtype must be float32 or float64");
  Require(!gemm || dtype == "float32", what + "the fused GEMM computes float32 logits");
  return PlanWorkspace(tile_rows, tile_cols, dtype == "float64", overlap, fused, gemm).total;
}

// ---------------------------------------------------------------- tile shapes
std::tuple<int64_t, int64_t, bool> plan_cupy_pass(int64_t n, int64_t v, int64_t converted_cols,
                                                  int64_t itemsize,
                                                  std::optional<int64_t> tile_rows,
                                                  std::optional<int64_t> tile_cols,
                                                  int64_t workspace_bytes, bool overlap,
                                                  bool fused) {
  Require(n >= 1 && v >= 1 && converted_cols >= 0 && (itemsize == 4 || itemsize == 8),
          "plan_cupy_pass: need n, v >= 1, converted_cols >= 0 and itemsize 4 or 8");
  NonNegative(workspace_bytes, "plan_cupy_pass", "workspace_bytes");
  const auto [tr, tc] = LogitTiles(n, v, converted_cols, itemsize, tile_rows, tile_cols,
                                   workspace_bytes, overlap ? 2 : 1, fused, 0);
  return {tr, tc, overlap && !OneTile(n, v, tr, tc)};
}

std::tuple<int64_t, int64_t, bool, int64_t> plan_cuda_pass(int64_t n, int64_t v,
                                                           const std::string& dtype,
                                                           std::optional<int64_t> tile_rows,
                                                           std::optional<int64_t> tile_cols,
                                                           int64_t workspace_bytes, bool overlap,
                                                           bool fused, bool gemm) {
  Require(n >= 1 && v >= 1, "plan_cuda_pass: need n, v >= 1");
  Require(dtype == "float32" || dtype == "float64",
          "plan_cuda_pass: dtype must be float32 or float64, got \"" + dtype + "\"");
  Require(!gemm || dtype == "float32", "plan_cuda_pass: the fused GEMM computes float32 logits");
  NonNegative(workspace_bytes, "plan_cuda_pass", "workspace_bytes");
  const int64_t itemsize = dtype == "float64" ? 8 : 4;
  const auto [tr, tc] =
      gemm ? GemmTiles(n, v, tile_rows, tile_cols, workspace_bytes)
           : LogitTiles(n, v, 0, itemsize, tile_rows, tile_cols, workspace_bytes,
                        overlap ? 2 : 1, fused, kDriverReserve);
  const bool over = overlap && !gemm && !OneTile(n, v, tr, tc);
  const bool fuse = fused && !gemm;
  return {tr, tc, over, PlanWorkspace(tr, tc, itemsize == 8, over, fuse, gemm).total};
}

}  // namespace identirep
