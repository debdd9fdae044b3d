// The GPU passes' plans (plan.h): the launch table.
#include "plan.h"

#include <stdexcept>
#include <string>

#include "kernels/launch_table.h"

namespace identirep {
namespace {

namespace k = kernels;

int64_t NonNegative(int64_t x, const char* fn, const char* name) {
  if (x < 0)
    throw std::invalid_argument(std::string(fn) + ": " + name + " must be >= 0, got " +
                                std::to_string(x));
  return x;
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

int64_t lse_kl_col_chunks(int64_t n) {
  return k::ColChunks(NonNegative(n, "lse_kl_col_chunks", "n"));
}

int64_t lse_kl_fused_chunks(int64_t n) {
  return k::FusedChunks(NonNegative(n, "lse_kl_fused_chunks", "n"));
}

int64_t lse_kl_cuda_col_work_elems(int64_t v) {
  return k::LseKlColWorkElems(NonNegative(v, "lse_kl_cuda_col_work_elems", "v"));
}

std::pair<int64_t, int64_t> lse_kl_cuda_fused_work_elems(int64_t n, int64_t v) {
  NonNegative(n, "lse_kl_cuda_fused_work_elems", "n");
  NonNegative(v, "lse_kl_cuda_fused_work_elems", "v");
  return {k::LseKlFusedRowWorkElems(n, v), k::LseKlFusedColWorkElems(v)};
}

std::vector<int64_t> lse_kl_gemm_work_elems(int64_t n, int64_t v) {
  NonNegative(n, "lse_kl_gemm_work_elems", "n");
  NonNegative(v, "lse_kl_gemm_work_elems", "v");
  return {k::LseKlGemmRowWorkElems(n, v), k::LseKlGemmColWorkElems(v),
          k::LseKlGemmShiftElems(v)};
}

}  // namespace identirep
