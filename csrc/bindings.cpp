// Python bindings of the compiled core: exports only, no logic.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops.h"
#include "plan.h"
#ifdef IDENTIREP_WITH_CUDA
#include "cuda_arrays.h"
#include "cuda_ops.h"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "identirep compiled core: fused streaming epilogues (CPU, and CUDA when built)";

  m.def("lse_kl_update", &identirep::lse_kl_update, py::arg("l1"), py::arg("l2"),
        py::arg("state"), py::arg("args"), py::arg("col0"), py::arg("threads") = 0,
        py::arg("row_moments") = py::none(), py::arg("col_moments") = py::none(),
        py::arg("row0") = 0, py::arg("topk_values") = py::none(),
        py::arg("topk_ids") = py::none(),
        R"doc(Fold one pair of logit tiles into the running log-sum-exp / KL state.

l1, l2: (n, v) float32 or float64 arrays (same dtype and shape, contiguous rows, any row
stride): logits of model 1 and 2 for n inputs and labels col0 .. col0+v-1.
state: (8, n) float64, rows [m1, s1, a12, e1, m2, s2, a21, e2], updated in place.
args: (2, n) int64, rows [arg1, arg2] (global argmax label), updated in place.
threads: OpenMP threads for the rows (0: the OpenMP default; more than it, or than n, are not
started). col0 + v and row0 + n must fit in int64; every argument is checked (ValueError,
TypeError) before any element is read or written.
Initialise state with m = -inf and zeros, args with -1; feed the label tiles of a row in
increasing col0 order. Releases the GIL.
row_moments: optional (5, n) float64, rows [mean l1, mean l2, ssq l1, ssq l2, ssq (l1 - l2)]
over the labels seen (count col0); col_moments: optional (5, V) float64, rows [mean l1,
mean l2, ssq l1, ssq l2, cross] over the inputs seen (count row0) for labels col0 .. col0+v-1;
centred sums of squares, Chan-merged (layout in csrc/kernels/lse_kl.h).
topk_values (2, n, k) float64 and topk_ids (2, n, k) int64, optional, together: each model's
k largest logits of each row and their global label ids, decreasing, ties to the lower id, NaN
never entering; initialise with -inf and -1 (id -1: an empty slot). Each model's (n, k) block
C-contiguous (a view [:, r0:r1] of a C-contiguous (2, N, k) array serves).)doc");

  m.def("jsd_update", &identirep::jsd_update, py::arg("l1"), py::arg("l2"), py::arg("L1"),
        py::arg("L2"), py::arg("out"), py::arg("threads") = 0,
        R"doc(Add each row's Jensen-Shannon divergence over one pair of logit tiles to out.

l1, l2: (n, v) float32 or float64 tiles as in lse_kl_update; L1, L2: (n,) float64, each
model's log-normaliser of the rows (from the first pass); out: (n,) float64, contiguous,
updated in place: out[i] += sum over the tile's labels of 0.5 p1 log(p1/m) + 0.5 p2 log(p2/m),
p_k = exp(l_k - L_k), m = (p1 + p2)/2, in nats (a term with p = 0 counts 0; formula in
csrc/kernels/jsd.h). threads as in lse_kl_update. Releases the GIL.)doc");

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
  m.def("blas_layout", &identirep::blas_layout, py::arg("rows"), py::arg("cols"), py::arg("s0"),
        py::arg("s1"),
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
  m.def("lse_kl_update_cuda", &identirep::arrays::lse_kl_update_cuda, py::arg("l1"),
        py::arg("l2"), py::arg("state"), py::arg("args"), py::arg("col0"),
        py::arg("row_moments") = py::none(), py::arg("col_moments") = py::none(),
        py::arg("row0") = 0, py::arg("col_work") = py::none(), py::arg("row_work") = py::none(),
        py::arg("stream") = 0,
        R"doc(CUDA version of lse_kl_update, on GPU arrays (__cuda_array_interface__).

l1, l2: (n, v) float32 or float64 logit tiles (one dtype, contiguous rows, any row stride).
state: (8, n) float64, args: (2, n) int64 (layouts as in lse_kl_update; views of bigger arrays
welcome, rows contiguous). Optional, as in lse_kl_update: row_moments (5, n) float64;
col_moments (5, V) float64 (labels col0 .. col0+v-1, count row0), which needs col_work: a
1-d float64 scratch of lse_kl_cuda_col_work_elems(v) elements. row_work: when given (1-d
float64, lse_kl_cuda_fused_work_elems(n, v)[0] elements; col_work then holds [1]), the fused
one-read epilogue runs. All on one GPU, checked; runs on that GPU's `stream` (a cudaStream_t as
an integer, 0: the legacy default stream). Asynchronous.)doc");

  m.def("lse_kl_gemm_wgmma_problem", &identirep::lse_kl_gemm_wgmma_problem,
        py::arg("device") = -1,
        "Why the wgmma fused GEMM cannot run on this CUDA device ('' if it can; device -1: "
        "whether this build has it).");

  m.def("pivot_criteria_cuda", &identirep::arrays::pivot_criteria_cuda, py::arg("X1"),
        py::arg("X2"), py::arg("n1"), py::arg("n2"), py::arg("A1"), py::arg("A2"),
        py::arg("B12"), py::arg("pivots"), py::arg("tol"), py::arg("mode"), py::arg("crit"),
        py::arg("stream") = 0,
        R"doc(CUDA version of pivot_criteria, on GPU arrays (__cuda_array_interface__).

X1, X2: (B, V) float32 or float64 (one dtype, contiguous rows); n1, n2, A1, A2, B12: (V,)
float64; pivots: (B,) int64; crit: (B,) float64, written. mode 'max' or 'mean'. A pivot
outside [0, V) gives NaN. All on one GPU, checked; runs on that GPU's `stream` (a cudaStream_t
as an integer). Asynchronous.)doc");
#endif

#ifdef IDENTIREP_WITH_CUBLAS
  m.def("cublas_load", &identirep::cublas_load, py::arg("candidates"),
        "Load libcublas from the first of these paths or sonames that works; returns its file.");
  m.def("cublas_version", &identirep::cublas_version,
        "(major, minor, patch) of the loaded cuBLAS.");
  m.def("cublas_header_major", &identirep::cublas_header_major,
        "Major version of the cuBLAS headers this module was built against.");
  m.def("lse_kl_pass_cuda", &identirep::arrays::lse_kl_pass_cuda, py::arg("f1"),
        py::arg("g1"), py::arg("f2"), py::arg("g2"), py::arg("state"), py::arg("args"),
        py::arg("row_moments"), py::arg("col_moments"), py::arg("workspace"),
        py::arg("c_begin"), py::arg("c_end"), py::arg("tile_rows"), py::arg("tile_cols"),
        py::arg("overlap") = true, py::arg("fused") = false, py::arg("gemm") = 0,
        py::arg("wgmma") = false, py::arg("stream") = 0,
        R"doc(The CUDA streaming pass over labels [c_begin, c_end) in one call (csrc/cuda_pass.cpp).

f1 (N, M1), g1 (V, M1), f2 (N, M2), g2 (V, M2): GPU arrays (__cuda_array_interface__) of
float16, bfloat16 (as its uint16 or int16 bits), float32 or float64; f_k and g_k of one kind,
rows or columns contiguous; a float64 pair only when all four are float64. Logit tiles of
tile_rows x tile_cols come from cublasGemmEx (float32 output and accumulation; float64 when all
four are float64) and go through lse_kl_update_cuda. state (8, N), row_moments (5, N),
col_moments (5, V) float64 and args (2, N) int64, C-contiguous, as in lse_kl_update_cuda.
workspace: a 1-d uint8 array of at least lse_kl_pass_cuda_workspace(...) bytes, 256-byte
aligned. overlap: epilogues on a second stream beside the next GEMMs (same results). gemm = 128
or 64: the fused GEMM kernel instead, blocks of that many rows (experimental until a GPU has
confirmed it; float16/bfloat16 operands of one kind with contiguous rows, row strides a
multiple of 8, 16-byte aligned; compute capability 8.0+; no cuBLAS); wgmma: its sm_90a kernel
(compute capability 9.0, a build with it: lse_kl_gemm_wgmma_problem). Every array on one GPU,
checked; runs on that GPU's `stream` (a cudaStream_t as an integer). An empty label range checks
the arguments and touches no device. Asynchronous; needs cublas_load first unless gemm.)doc");
  m.def("lse_kl_gemm_mainloop_cuda", &identirep::arrays::lse_kl_gemm_mainloop_cuda,
        py::arg("f1"), py::arg("g1"), py::arg("f2"), py::arg("g2"), py::arg("gemm") = 128,
        py::arg("wgmma") = false, py::arg("stream") = 0,
        "A timing probe (benchmarks/bench_gpu.py): the fused GEMM kernel of lse_kl_pass_cuda's "
        "gemm and wgmma over the whole of f_k g_k' in one launch, without its epilogue "
        "(nothing written); operands as lse_kl_pass_cuda's. Asynchronous.");
#endif
}
