// Python bindings of the compiled core: exports only, no logic.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops.h"
#include "plan.h"
#ifdef IDENTIREP_WITH_CUDA
#include "cuda_ops.h"
#endif

namespace py = pybind11;

#ifdef IDENTIREP_WITH_CUBLAS
namespace {
// (ptr, rows, cols, stride0, stride1, kind) -> CudaOperand
identirep::CudaOperand Operand(const py::tuple& t) {
  if (t.size() != 6)
    throw py::value_error("an operand is (ptr, rows, cols, stride0, stride1, kind)");
  return {t[0].cast<uintptr_t>(), t[1].cast<int64_t>(), t[2].cast<int64_t>(),
          t[3].cast<int64_t>(), t[4].cast<int64_t>(), t[5].cast<std::string>()};
}
}  // namespace
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "identirep compiled core: fused streaming epilogues (CPU, and CUDA when built)";

  m.def("lse_kl_update", &identirep::lse_kl_update, py::arg("l1"), py::arg("l2"),
        py::arg("state"), py::arg("args"), py::arg("col0"), py::arg("threads") = 0,
        py::arg("row_moments") = py::none(), py::arg("col_moments") = py::none(),
        py::arg("row0") = 0,
        R"doc(Fold one pair of logit tiles into the running log-sum-exp / KL state.

l1, l2: (n, v) float32 or float64 arrays (same dtype and shape, contiguous rows, any row
stride): logits of model 1 and 2 for n inputs and labels col0 .. col0+v-1.
state: (8, n) float64, rows [m1, s1, a12, e1, m2, s2, a21, e2], updated in place.
args: (2, n) int64, rows [arg1, arg2] (global argmax label), updated in place.
threads: OpenMP threads for the rows (0: the OpenMP default).
Initialise state with m = -inf and zeros, args with -1; feed the label tiles of a row in
increasing col0 order. Releases the GIL.
row_moments: optional (5, n) float64, rows [mean l1, mean l2, ssq l1, ssq l2, ssq (l1 - l2)]
over the labels seen (count col0); col_moments: optional (5, V) float64, rows [mean l1,
mean l2, ssq l1, ssq l2, cross] over the inputs seen (count row0) for labels col0 .. col0+v-1;
centred sums of squares, Chan-merged (layout in csrc/kernels/lse_kl.h).)doc");

  m.def("pivot_criteria", &identirep::pivot_criteria, py::arg("X1"), py::arg("X2"), py::arg("n1"),
        py::arg("n2"), py::arg("A1"), py::arg("A2"), py::arg("B12"), py::arg("pivots"),
        py::arg("tol"), py::arg("mode"),
        R"doc(Best-leave-out criterion of each pivot of a block (kernels/pivot_terms.h).

X1, X2: (B, V) float64 cross products g_k(y0)' C_k g_k(y); n1, n2, A1, A2, B12: (V,) float64;
pivots: (B,) int64; mode 'max' or 'mean'. Returns (B,) float64. Releases the GIL.)doc");

  m.def("pivot_bounds", &identirep::pivot_bounds, py::arg("X1"), py::arg("X2"), py::arg("n1"),
        py::arg("n2"), py::arg("A1"), py::arg("A2"), py::arg("B12"), py::arg("pivots"),
        py::arg("labels"), py::arg("tol"), py::arg("eps"),
        R"doc(Lower bounds of the 'max' criterion of pivot rows over label lists
(kernels/pivot_terms.h, BoundRow).

X1, X2: (B, K) float32 or float64 cross products g_k(pivots[j])' C_k g_k(labels[k]); n1, n2,
A1, A2, B12: (V,) float64; pivots (B,), labels (K,) int64 in [0, V); tol: degenerate
tolerance times its safety factor; eps: rounding allowance. Returns (B,) float64.)doc");

  m.def("build_info", &identirep::build_info, "Compile-time facts about this build.");

  // The launch table of the CUDA kernels (csrc/kernels/launch_table.h), in every build: the
  // cupy backend launches their NVRTC build with it.
  m.def("launch_table", &identirep::launch_table,
        "The CUDA kernels' launch geometry (kernels/launch_table.h): {name: value}.");
  m.def("lse_kl_col_chunks", &identirep::lse_kl_col_chunks, py::arg("n"),
        "Row chunks of the column kernel for a tile of n rows (ColChunks).");
  m.def("lse_kl_fused_chunks", &identirep::lse_kl_fused_chunks, py::arg("n"),
        "Row chunks of the one-read epilogue for a tile of n rows (FusedChunks).");
  m.def("lse_kl_cuda_col_work_elems", &identirep::lse_kl_cuda_col_work_elems, py::arg("v"),
        "float64 elements of the col_work scratch of lse_kl_update_cuda for v labels.");
  m.def("lse_kl_cuda_fused_work_elems", &identirep::lse_kl_cuda_fused_work_elems, py::arg("n"),
        py::arg("v"),
        "float64 elements (row_work, col_work) of the fused epilogue for an n x v tile.");
  m.def("lse_kl_gemm_work_elems", &identirep::lse_kl_gemm_work_elems, py::arg("n"),
        py::arg("v"),
        "(row_work float64, col_work float64, shift float32) elements of the fused GEMM for an "
        "n x v tile.");

  // The plans of the GPU passes (csrc/plan.cpp), in every build.
  m.def(
      "blas_layout",
      [](int64_t rows, int64_t cols, int64_t s0, int64_t s1) -> py::object {
        const identirep::BlasLayout l = identirep::blas_layout(rows, cols, s0, s1);
        if (l.ld == 0) return py::none();
        return py::make_tuple(l.row ? "row" : "col", l.ld);
      },
      py::arg("rows"), py::arg("cols"), py::arg("s0"), py::arg("s1"),
      "(\"row\" | \"col\", leading dimension) of a rows x cols array with element strides "
      "(s0, s1) whose rows (or columns) are contiguous, or None: cuBLAS needs a copy.");
  m.def("gemm_nt_plan", &identirep::gemm_nt_plan, py::arg("a"), py::arg("b"),
        "cublasGemmEx (transa, transb, m, n, k, lda, ldb, ldc) for the row-major a @ b' (r x c, "
        "leading dimension c); a (r x k), b (c x k) as (rows, cols, s0, s1) in elements; None "
        "when one has neither rows nor columns contiguous (it needs a copy).");
  m.def("cublas_workspace_bytes", &identirep::cublas_workspace_bytes,
        "Bytes of cuBLAS workspace inside the pass driver's workspace.");
  m.def("lse_kl_pass_cuda_workspace", &identirep::lse_kl_pass_cuda_workspace,
        py::arg("tile_rows"), py::arg("tile_cols"), py::arg("dtype"), py::arg("overlap"),
        py::arg("fused"), py::arg("gemm") = false,
        "Bytes of device workspace lse_kl_pass_cuda needs.");
  m.def("plan_cupy_pass", &identirep::plan_cupy_pass, py::arg("n"), py::arg("v"),
        py::arg("converted_cols"), py::arg("itemsize"), py::arg("tile_rows"),
        py::arg("tile_cols"), py::arg("workspace_bytes"), py::arg("overlap"), py::arg("fused"),
        R"doc((tile_rows, tile_cols, overlap) of the cupy backend's tile loop over n x v logits.

All rows when they fit and tile_cols labels (None: 4096), shrunk until the logit tiles (two
pairs with overlap), the widened operand tiles (converted_cols columns of itemsize bytes) and
the epilogue's scratch fit in workspace_bytes; overlap only with more than one tile.)doc");
  m.def("plan_cuda_pass", &identirep::plan_cuda_pass, py::arg("n"), py::arg("v"),
        py::arg("dtype"), py::arg("tile_rows"), py::arg("tile_cols"), py::arg("workspace_bytes"),
        py::arg("overlap"), py::arg("fused"), py::arg("gemm"),
        R"doc((tile_rows, tile_cols, overlap, workspace bytes) of the pass driver's calls.

dtype: "float32" or "float64" logits. cuBLAS tiles as plan_cupy_pass's, with the driver's cuBLAS
workspace reserved; gemm (the fused GEMM kernel): all rows and 16384 labels (or the given
ones), labels halved down to 128, then rows, until its scratch fits in workspace_bytes.)doc");

#ifdef IDENTIREP_WITH_CUDA
  m.def("lse_kl_update_cuda", &identirep::lse_kl_update_cuda, py::arg("l1"), py::arg("l2"),
        py::arg("n"), py::arg("v"), py::arg("ld1"), py::arg("ld2"), py::arg("col0"),
        py::arg("state"), py::arg("state_ld"), py::arg("args"), py::arg("args_ld"),
        py::arg("dtype"), py::arg("stream") = 0, py::arg("row_moments") = 0,
        py::arg("row_ld") = 0, py::arg("col_moments") = 0, py::arg("col_ld") = 0,
        py::arg("row0") = 0, py::arg("col_work") = 0, py::arg("row_work") = 0,
        py::call_guard<py::gil_scoped_release>(),
        R"doc(CUDA version of lse_kl_update on device pointers passed as integers.

l1, l2: device pointers to (n, v) logit tiles of dtype "float32" or "float64", row strides
ld1, ld2 in elements. state: device pointer to float64 (8, n) with row stride state_ld;
args: device pointer to int64 (2, n) with row stride args_ld (layouts as in lse_kl_update).
stream: cudaStream_t as an integer (0: the legacy default stream). Asynchronous.
Optional moments (0: skipped), as in lse_kl_update: row_moments float64 (5, n) with row stride
row_ld; col_moments float64 (5, col_ld) (labels col0 .. col0+v-1, count row0), which needs
col_work: a float64 device scratch of lse_kl_cuda_col_work_elems(v) elements. row_work: when
given, the fused one-read epilogue runs (scratch sizes: lse_kl_cuda_fused_work_elems).)doc");

  m.def("lse_kl_gemm_wgmma_problem", &identirep::lse_kl_gemm_wgmma_problem,
        py::arg("device") = -1,
        "Why the wgmma fused GEMM cannot run on this CUDA device ('' if it can; device -1: "
        "whether this build has it).");

  m.def("pivot_criteria_cuda", &identirep::pivot_criteria_cuda, py::arg("X1"), py::arg("X2"),
        py::arg("ld1"), py::arg("ld2"), py::arg("n1"), py::arg("n2"), py::arg("A1"),
        py::arg("A2"), py::arg("B12"), py::arg("pivots"), py::arg("B"), py::arg("V"),
        py::arg("tol"), py::arg("mode"), py::arg("crit"), py::arg("stream") = 0,
        py::arg("x_dtype") = "float64", py::call_guard<py::gil_scoped_release>(),
        R"doc(CUDA version of pivot_criteria on device pointers passed as integers.

X1, X2: (B, V) of x_dtype "float32" or "float64" with row strides ld1, ld2 (elements);
n1, n2, A1, A2, B12: float64 (V,);
pivots: int64 (B,); crit: float64 (B,), written. mode 'max' or 'mean'. A pivot outside
[0, V) gives NaN. stream: cudaStream_t as an integer. Asynchronous.)doc");
#endif

#ifdef IDENTIREP_WITH_CUBLAS
  m.def("cublas_load", &identirep::cublas_load, py::arg("candidates"),
        "Load libcublas from the first of these paths or sonames that works; returns its file.");
  m.def("cublas_version", &identirep::cublas_version,
        "(major, minor, patch) of the loaded cuBLAS.");
  m.def("cublas_header_major", &identirep::cublas_header_major,
        "Major version of the cuBLAS headers this module was built against.");
  m.def(
      "lse_kl_pass_cuda",
      [](const py::tuple& f1, const py::tuple& g1, const py::tuple& f2, const py::tuple& g2,
         int64_t c_begin, int64_t c_end, int64_t tile_rows, int64_t tile_cols, uintptr_t state,
         uintptr_t args, uintptr_t row_moments, uintptr_t col_moments, uintptr_t workspace,
         int64_t workspace_bytes, const std::string& dtype, bool overlap, bool fused,
         int gemm, uintptr_t stream, int device, bool wgmma) {
        const auto a = Operand(f1), b = Operand(g1), c = Operand(f2), d = Operand(g2);
        py::gil_scoped_release release;
        identirep::lse_kl_pass_cuda(a, b, c, d, c_begin, c_end, tile_rows, tile_cols, state,
                                    args, row_moments, col_moments, workspace, workspace_bytes,
                                    dtype, overlap, fused, gemm, stream, device, wgmma);
      },
      py::arg("f1"), py::arg("g1"), py::arg("f2"), py::arg("g2"), py::arg("c_begin"),
      py::arg("c_end"), py::arg("tile_rows"), py::arg("tile_cols"), py::arg("state"),
      py::arg("args"), py::arg("row_moments"), py::arg("col_moments"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("dtype"), py::arg("overlap") = true,
      py::arg("fused") = false, py::arg("gemm") = 0, py::arg("stream") = 0,
      py::arg("device") = 0, py::arg("wgmma") = false,
      R"doc(The CUDA streaming pass over labels [c_begin, c_end) in one call (csrc/cuda_pass.cpp).

f1, g1, f2, g2: device operands as tuples (ptr, rows, cols, stride0, stride1, kind), strides in
elements, kind float16 | bfloat16 | float32 | float64, f_k and g_k of one kind, rows or
columns contiguous. Logit tiles of tile_rows x tile_cols come from cublasGemmEx (float32
output and accumulation; float64 when dtype is "float64") and go through lse_kl_update_cuda.
state, args, row_moments, col_moments: device pointers as in lse_kl_update_cuda, row strides N
(V for col_moments). workspace: lse_kl_pass_cuda_workspace(...) bytes of device memory.
overlap: epilogues on a second stream beside the next GEMMs (same results). gemm = 128 or 64:
the fused GEMM kernel instead, blocks of that many rows (float16/bfloat16 operands of one kind
with contiguous rows, row strides a multiple of 8, 16-byte aligned; compute capability 8.0+;
no cuBLAS); wgmma: its sm_90a kernel (compute capability 9.0, a build with it:
lse_kl_gemm_wgmma_problem). Asynchronous on stream
(cudaStream_t as an integer) of device; needs cublas_load first unless gemm.)doc");
  m.def(
      "lse_kl_gemm_mainloop_cuda",
      [](const py::tuple& f1, const py::tuple& g1, const py::tuple& f2, const py::tuple& g2,
         int gemm, bool wgmma, uintptr_t stream, int device) {
        const auto a = Operand(f1), b = Operand(g1), c = Operand(f2), d = Operand(g2);
        py::gil_scoped_release release;
        identirep::lse_kl_gemm_mainloop_pass(a, b, c, d, gemm, wgmma, stream, device);
      },
      py::arg("f1"), py::arg("g1"), py::arg("f2"), py::arg("g2"), py::arg("gemm") = 128,
      py::arg("wgmma") = false, py::arg("stream") = 0, py::arg("device") = 0,
      "A timing probe (benchmarks/bench_gpu.py): the fused GEMM kernel of lse_kl_pass_cuda's "
      "gemm and wgmma over the whole of f_k g_k' in one launch, without its epilogue "
      "(nothing written). Asynchronous.");
#endif
}
