// The GPU passes' plans in plain C++ (no CUDA, cuBLAS or pybind11), compiled into every build:
// the cupy backend needs them without CUDA, the pass driver (csrc/cuda_pass.cpp) with it.
// - the launch table of the kernels (kernels/launch_table.h) and their scratch sizes.
// Each throws std::invalid_argument on bad arguments.
#pragma once

#include <cstdint>
#include <map>
#include <string>
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

}  // namespace identirep
