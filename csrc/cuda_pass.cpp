// The CUDA streaming pass driver: cuBLAS logit tiles and the epilogue of csrc/lse_kl.cu in one
// compiled loop (no Python per tile), with the epilogue overlapped with the next tile's GEMMs.
// libcublas is loaded at run time (dlopen): the build needs only its headers, and the module
// imports on machines without it.
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <cublas_api.h>
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "device_guard.h"

namespace identirep {
namespace {

// cublasGemmEx has a C++ overload in cublas_api.h; the static_cast picks the C one and fails to
// compile if its signature drifts from GemmExFn (unevaluated: no link dependency).
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                    int, int, const void*, const void*, cudaDataType, int,
                                    const void*, cudaDataType, int, const void*, void*,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
static_assert(std::is_same_v<decltype(static_cast<GemmExFn>(&cublasGemmEx)), GemmExFn>);
// The GEMM plan (plan.h) names cuBLAS's operations without its headers.
static_assert(kGemmOpN == CUBLAS_OP_N && kGemmOpT == CUBLAS_OP_T, "cublasOperation_t values");

struct CublasApi {
  void* lib = nullptr;
  std::string path;
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetPointerMode_v2) set_pointer_mode = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  decltype(&cublasGetProperty) get_property = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
  GemmExFn gemm_ex = nullptr;
};

std::mutex g_load_mutex;
CublasApi g_api;                         // set once, under g_load_mutex
std::mutex g_pass_mutex;                 // one pass at a time uses the handles
std::map<int, cublasHandle_t> g_handles; // per device, for the life of the process

template <typename Fn>
bool Symbol(void* lib, const char* name, Fn* out, std::string* missing) {
  *out = reinterpret_cast<Fn>(dlsym(lib, name));
  if (*out == nullptr) *missing += std::string(missing->empty() ? "" : ", ") + name;
  return *out != nullptr;
}

const CublasApi& Api() {
  std::lock_guard<std::mutex> lock(g_load_mutex);
  if (g_api.lib == nullptr)
    throw std::runtime_error("cuBLAS is not loaded (identirep._core.cublas_load)");
  return g_api;
}

std::string CublasError(const CublasApi& api, cublasStatus_t s, const char* what) {
  return std::string(what) + " failed: " + api.status_string(s) + " (cuBLAS status " +
         std::to_string(static_cast<int>(s)) + ")";
}

void CheckCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("lse_kl_pass_cuda: ") + what + ": " +
                             cudaGetErrorString(e));
}

void Require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("lse_kl_pass_cuda: " + what);
}

struct Kind {
  cudaDataType type;
  int64_t size;
};

Kind KindOf(const std::string& kind) {
  if (kind == "float16") return {CUDA_R_16F, 2};
  if (kind == "bfloat16") return {CUDA_R_16BF, 2};
  if (kind == "float32") return {CUDA_R_32F, 4};
  if (kind == "float64") return {CUDA_R_64F, 8};
  throw std::invalid_argument("lse_kl_pass_cuda: operand kind must be float16, bfloat16, "
                              "float32 or float64, got \"" + kind + "\"");
}

// One model's operands (f: n x k, g: v x k) and their cuBLAS view.
struct GemmPair {
  const char* f;
  const char* g;
  BlasLayout lf, lg;  // plan.h
  int64_t sf, sg;  // row strides in bytes (the offset of row r is r * sf)
  int64_t k;
  cudaDataType type;
};

GemmPair MakePair(const CudaOperand& f, const CudaOperand& g, int which, bool f64) {
  const std::string name = std::to_string(which);
  Require(f.ptr != 0 && g.ptr != 0, "f" + name + " or g" + name + " is a null pointer");
  Require(f.kind == g.kind, "f" + name + " is " + f.kind + " but g" + name + " is " + g.kind +
                                " (widen one first)");
  const Kind kd = KindOf(f.kind);
  Require(f64 ? f.kind == "float64" : f.kind != "float64",
          "pair " + name + " is " + f.kind + " in a " + (f64 ? "float64" : "float32") + " pass");
  Require(f.cols == g.cols && f.cols > 0 && f.rows > 0 && g.rows > 0,
          "f" + name + " and g" + name + " must be non-empty with the same number of columns");
  const BlasLayout lf = BlasLayoutOf(f.rows, f.cols, f.s0, f.s1);
  const BlasLayout lg = BlasLayoutOf(g.rows, g.cols, g.s0, g.s1);
  Require(lf.ld > 0 && lg.ld > 0, "f" + name + " and g" + name +
                                      " need contiguous rows or columns (copy them first)");
  Require(f.cols < (int64_t{1} << 31), "more than 2^31 - 1 columns");
  return {reinterpret_cast<const char*>(f.ptr), reinterpret_cast<const char*>(g.ptr), lf, lg,
          f.s0 * kd.size, g.s0 * kd.size, f.cols, kd.type};
}

// RAII for the per-call side stream and events.
struct Stream {
  cudaStream_t s = nullptr;
  ~Stream() { if (s) cudaStreamDestroy(s); }
};
struct Event {
  cudaEvent_t e = nullptr;
  bool recorded = false;
  ~Event() { if (e) cudaEventDestroy(e); }
};

cublasHandle_t Handle(const CublasApi& api, int device) {
  auto it = g_handles.find(device);
  if (it != g_handles.end()) return it->second;
  cublasHandle_t h = nullptr;
  const cublasStatus_t s = api.create(&h);
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("lse_kl_pass_cuda: " + CublasError(api, s, "cublasCreate"));
  g_handles[device] = h;
  return h;
}

// out (r x c, row-major, ld c) = f[r0:r0+r] @ g[c0:c0+c]^T, as the column-major product
// out^T = op(g block) . op(f block).
void Logits(const CublasApi& api, cublasHandle_t h, const GemmPair& p, int64_t r0, int64_t r,
            int64_t c0, int64_t c, void* out, bool f64) {
  const auto ta = static_cast<cublasOperation_t>(labels_op(p.lg));
  const auto tb = static_cast<cublasOperation_t>(rows_op(p.lf));
  const void* a = p.g + c0 * p.sg;
  const void* b = p.f + r0 * p.sf;
  const float one32 = 1.0f, zero32 = 0.0f;
  const double one64 = 1.0, zero64 = 0.0;
  const void* alpha = f64 ? static_cast<const void*>(&one64) : &one32;
  const void* beta = f64 ? static_cast<const void*>(&zero64) : &zero32;
  const cublasStatus_t s = api.gemm_ex(
      h, ta, tb, static_cast<int>(c), static_cast<int>(r), static_cast<int>(p.k), alpha, a,
      p.type, static_cast<int>(p.lg.ld), b, p.type, static_cast<int>(p.lf.ld), beta, out,
      f64 ? CUDA_R_64F : CUDA_R_32F, static_cast<int>(c),
      f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("lse_kl_pass_cuda: " + CublasError(api, s, "cublasGemmEx"));
}

}  // namespace

std::string cublas_load(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(g_load_mutex);
  if (g_api.lib != nullptr) return g_api.path;
  std::string tried;
  for (const std::string& cand : candidates) {
    void* lib = dlopen(cand.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* err = dlerror();
      tried += "\n  " + cand + ": " + (err ? err : "not found");
      continue;
    }
    CublasApi api;
    std::string missing;
    Symbol(lib, "cublasCreate_v2", &api.create, &missing);
    Symbol(lib, "cublasSetStream_v2", &api.set_stream, &missing);
    Symbol(lib, "cublasSetPointerMode_v2", &api.set_pointer_mode, &missing);
    Symbol(lib, "cublasSetWorkspace_v2", &api.set_workspace, &missing);
    Symbol(lib, "cublasGetProperty", &api.get_property, &missing);
    Symbol(lib, "cublasGetStatusString", &api.status_string, &missing);
    Symbol(lib, "cublasGemmEx", &api.gemm_ex, &missing);
    int major = -1;
    if (missing.empty()) api.get_property(MAJOR_VERSION, &major);
    if (!missing.empty() || major != CUBLAS_VER_MAJOR) {
      tried += "\n  " + cand + ": " +
               (missing.empty() ? "cuBLAS " + std::to_string(major) + ", built for " +
                                      std::to_string(CUBLAS_VER_MAJOR)
                                : "lacks " + missing);
      dlclose(lib);
      continue;
    }
    Dl_info info;
    api.lib = lib;
    api.path = dladdr(reinterpret_cast<void*>(api.create), &info) && info.dli_fname
                   ? info.dli_fname : cand;
    g_api = api;
    return g_api.path;
  }
  throw std::runtime_error("could not load cuBLAS " + std::to_string(CUBLAS_VER_MAJOR) +
                           " (libcublas.so." + std::to_string(CUBLAS_VER_MAJOR) + "); tried:" +
                           (tried.empty() ? std::string(" nothing") : tried));
}

std::vector<int> cublas_version() {
  const CublasApi& api = Api();
  std::vector<int> v(3, -1);
  api.get_property(MAJOR_VERSION, &v[0]);
  api.get_property(MINOR_VERSION, &v[1]);
  api.get_property(PATCH_LEVEL, &v[2]);
  return v;
}

int cublas_header_major() { return CUBLAS_VER_MAJOR; }

// The fused GEMM's view of the four operands (checked: one half kind, rows contiguous, row
// strides and pointers as lse_kl_gemm_update_cuda needs).
GemmOperands lse_kl_gemm_operands(const CudaOperand& f1, const CudaOperand& g1,
                                  const CudaOperand& f2, const CudaOperand& g2, int block_rows,
                                  bool wgmma) {
  const CudaOperand* ops[4] = {&f1, &g1, &f2, &g2};
  const char* names[4] = {"f1", "g1", "f2", "g2"};
  int64_t ld[4];  // row strides; a single row's is any multiple of 8 that holds it
  for (int i = 0; i < 4; ++i) {
    const CudaOperand& o = *ops[i];
    Require(o.kind == f1.kind && (o.kind == "bfloat16" || o.kind == "float16"),
            std::string("the fused GEMM takes float16 or bfloat16 operands of one kind; ") +
                names[i] + " is " + o.kind);
    Require(o.cols == 1 || o.s1 == 1,
            std::string("the fused GEMM needs contiguous rows; ") + names[i] + " has not");
    ld[i] = o.rows > 1 ? o.s0 : (o.cols + 7) / 8 * 8;
    const std::string why = lse_kl_gemm_operand_problem(o.ptr, ld[i], o.cols);
    Require(why.empty(), std::string("the fused GEMM cannot take ") + names[i] + ": " + why);
  }
  Require(f1.cols == g1.cols && f2.cols == g2.cols && f2.rows == f1.rows && g2.rows == g1.rows,
          "f_k and g_k need the same columns, f1 and f2 (g1 and g2) the same rows");
  Require(block_rows == 128 || block_rows == 64,
          "the fused GEMM's blocks have 128 or 64 rows, got " + std::to_string(block_rows));
  return {f1.ptr,  g1.ptr,  f2.ptr,  g2.ptr, ld[0], ld[1], ld[2], ld[3],
          f1.cols, f2.cols, f1.kind, block_rows, wgmma};
}

namespace {

// The pass with the fused GEMM kernel: label tiles outer, row tiles inner, one stream.
void GemmPass(const GemmOperands& op, int64_t n, int64_t v, int64_t c_begin, int64_t c_end,
              int64_t tr, int64_t tc, uintptr_t state, uintptr_t args, uintptr_t row_moments,
              uintptr_t col_moments, char* base, const WorkspaceLayout& w, cudaStream_t stream) {
  for (int64_t c0 = c_begin; c0 < c_end; c0 += tc) {
    const int64_t c = std::min(c_end, c0 + tc) - c0;
    for (int64_t r0 = 0; r0 < n; r0 += tr) {
      const int64_t r = std::min(n, r0 + tr) - r0;
      GemmOperands tile = op;
      tile.f1 += 2 * r0 * op.ldf1;
      tile.f2 += 2 * r0 * op.ldf2;
      tile.g1 += 2 * c0 * op.ldg1;
      tile.g2 += 2 * c0 * op.ldg2;
      lse_kl_gemm_update_cuda(tile, r, c, c0, state + 8 * r0, n, args + 8 * r0, n,
                              row_moments + 8 * r0, n, col_moments, v, r0,
                              reinterpret_cast<uintptr_t>(base + w.row_work),
                              reinterpret_cast<uintptr_t>(base + w.col_work),
                              reinterpret_cast<uintptr_t>(base + w.tiles),
                              reinterpret_cast<uintptr_t>(stream));
    }
  }
}

}  // namespace

void lse_kl_pass_cuda(const CudaOperand& f1, const CudaOperand& g1, const CudaOperand& f2,
                      const CudaOperand& g2, int64_t c_begin, int64_t c_end, int64_t tile_rows,
                      int64_t tile_cols, uintptr_t state, uintptr_t args, uintptr_t row_moments,
                      uintptr_t col_moments, uintptr_t workspace, int64_t workspace_bytes,
                      const std::string& dtype, bool overlap, bool fused, int gemm,
                      uintptr_t stream, int device, bool wgmma) {
  Require(dtype == "float32" || dtype == "float64",
          "dtype must be \"float32\" or \"float64\", got \"" + dtype + "\"");
  const bool f64 = dtype == "float64";
  Require(!gemm || !f64, "the fused GEMM computes float32 logits (dtype \"float32\")");
  const GemmPair p1 = MakePair(f1, g1, 1, f64), p2 = MakePair(f2, g2, 2, f64);
  Require(!wgmma || gemm, "wgmma is a kind of the fused GEMM (gemm = 128 or 64)");
  const GemmOperands gemm_ops =
      gemm ? lse_kl_gemm_operands(f1, g1, f2, g2, gemm, wgmma) : GemmOperands{};
  const int64_t n = f1.rows, v = g1.rows;
  Require(f2.rows == n && g2.rows == v, "f1, f2 need the same rows and g1, g2 the same rows");
  Require(0 <= c_begin && c_begin <= c_end && c_end <= v, "need 0 <= c_begin <= c_end <= V");
  Require(tile_rows >= 1 && tile_cols >= 1, "tile_rows and tile_cols must be >= 1");
  constexpr int64_t kIntLimit = int64_t{1} << 31;
  Require(std::min(tile_cols, v) < kIntLimit && std::min(tile_rows, n) < kIntLimit,
          "tiles must have fewer than 2^31 rows and columns");
  Require(state != 0 && args != 0 && row_moments != 0 && col_moments != 0 && workspace != 0,
          "null state, args, moments or workspace pointer");
  Require(workspace % 256 == 0, "workspace must be 256-byte aligned");
  Require(device >= 0, "device must be >= 0");
  const int64_t tr = std::min(tile_rows, n), tc = std::min(tile_cols, v);
  const WorkspaceLayout w = PlanWorkspace(tr, tc, f64, overlap, fused, gemm != 0);
  Require(workspace_bytes >= w.total, "workspace_bytes " + std::to_string(workspace_bytes) +
                                          " < the " + std::to_string(w.total) + " this needs");
  if (c_begin == c_end) return;
  if (gemm) {  // no cuBLAS
    DeviceGuard guard(device, "lse_kl_pass_cuda");
    GemmPass(gemm_ops, n, v, c_begin, c_end, tr, tc, state, args, row_moments, col_moments,
             reinterpret_cast<char*>(workspace), w, reinterpret_cast<cudaStream_t>(stream));
    return;
  }

  const CublasApi& api = Api();
  std::lock_guard<std::mutex> lock(g_pass_mutex);
  DeviceGuard guard(device, "lse_kl_pass_cuda");
  auto* main = reinterpret_cast<cudaStream_t>(stream);
  const cublasHandle_t h = Handle(api, device);
  char* base = reinterpret_cast<char*>(workspace);
  // cublasSetStream resets the workspace to the handle's default: set ours after it.
  const std::pair<cublasStatus_t, const char*> setup[] = {
      {api.set_stream(h, main), "cublasSetStream"},
      {api.set_workspace(h, base + w.cublas, kCublasWorkspace), "cublasSetWorkspace"},
      {api.set_pointer_mode(h, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode"}};
  for (const auto& [status, what] : setup)
    if (status != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error("lse_kl_pass_cuda: " + CublasError(api, status, what));

  char* col_work = base + w.col_work;
  const uintptr_t row_work = fused ? reinterpret_cast<uintptr_t>(base + w.row_work) : 0;
  const int64_t tile_bytes = AlignWorkspace(tr * tc * (f64 ? 8 : 4));
  const int nbuf = overlap ? 2 : 1;

  Stream side;
  Event ready, released[2];
  cudaStream_t epi = main;
  if (nbuf > 1) {
    CheckCuda(cudaStreamCreateWithFlags(&side.s, cudaStreamNonBlocking), "cudaStreamCreate");
    CheckCuda(cudaEventCreateWithFlags(&ready.e, cudaEventDisableTiming), "cudaEventCreate");
    for (Event& e : released)
      CheckCuda(cudaEventCreateWithFlags(&e.e, cudaEventDisableTiming), "cudaEventCreate");
    epi = side.s;
  }
  // Each epilogue on `epi` waits for an event recorded on `main` after its GEMMs, hence after
  // everything the caller queued before (the state's initial fill).
  auto* st = reinterpret_cast<double*>(state);
  auto* ag = reinterpret_cast<int64_t*>(args);
  auto* rm = reinterpret_cast<double*>(row_moments);
  int64_t done = 0;
  try {
    for (int64_t c0 = c_begin; c0 < c_end; c0 += tc) {
      const int64_t c = std::min(c_end, c0 + tc) - c0;
      for (int64_t r0 = 0; r0 < n; r0 += tr) {
        const int64_t r = std::min(n, r0 + tr) - r0;
        const int b = static_cast<int>(done % nbuf);
        char* l1 = base + w.tiles + 2 * b * tile_bytes;
        char* l2 = l1 + tile_bytes;
        if (released[b].recorded)
          CheckCuda(cudaStreamWaitEvent(main, released[b].e, 0), "cudaStreamWaitEvent");
        Logits(api, h, p1, r0, r, c0, c, l1, f64);
        Logits(api, h, p2, r0, r, c0, c, l2, f64);
        if (epi != main) {
          CheckCuda(cudaEventRecord(ready.e, main), "cudaEventRecord");
          CheckCuda(cudaStreamWaitEvent(epi, ready.e, 0), "cudaStreamWaitEvent");
        }
        lse_kl_update_cuda(reinterpret_cast<uintptr_t>(l1), reinterpret_cast<uintptr_t>(l2), r, c,
                           c, c, c0, reinterpret_cast<uintptr_t>(st + r0), n,
                           reinterpret_cast<uintptr_t>(ag + r0), n, dtype,
                           reinterpret_cast<uintptr_t>(epi), reinterpret_cast<uintptr_t>(rm + r0),
                           n, col_moments, v, r0, reinterpret_cast<uintptr_t>(col_work), row_work);
        if (epi != main) {
          CheckCuda(cudaEventRecord(released[b].e, epi), "cudaEventRecord");
          released[b].recorded = true;
        }
        ++done;
      }
    }
  } catch (...) {
    // The caller frees the buffers in its stream's order: it must not pass epilogues still
    // queued on the side stream.
    if (epi != main && cudaEventRecord(ready.e, epi) == cudaSuccess)
      cudaStreamWaitEvent(main, ready.e, 0);
    throw;
  }
  if (epi != main) {  // the caller's stream waits for the last epilogue
    CheckCuda(cudaEventRecord(ready.e, epi), "cudaEventRecord");
    CheckCuda(cudaStreamWaitEvent(main, ready.e, 0), "cudaStreamWaitEvent");
  }
}

void lse_kl_gemm_mainloop_pass(const CudaOperand& f1, const CudaOperand& g1,
                               const CudaOperand& f2, const CudaOperand& g2, int gemm,
                               bool wgmma, uintptr_t stream, int device) {
  const GemmOperands op = lse_kl_gemm_operands(f1, g1, f2, g2, gemm, wgmma);  // checks the shapes too
  Require(device >= 0, "device must be >= 0");
  DeviceGuard guard(device, "lse_kl_gemm_mainloop_cuda");
  lse_kl_gemm_mainloop_cuda(op, f1.rows, g1.rows, stream);
}

}  // namespace identirep
