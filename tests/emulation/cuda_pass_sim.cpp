// The CUDA pass driver (csrc/cuda_pass.cpp, included unchanged, with its plans: csrc/plan.cpp)
// on the CPU, with the CUDA runtime, cuBLAS and the epilogue replaced by stand-ins: streams and events become a task
// graph, cublasGemmEx a column-major CPU GEMM, the epilogue a copy of its tiles that declares
// what it reads and writes. Each configuration checks that
//   - no two tasks unordered by the graph touch the same bytes, one of them writing (the
//     caller's fill before and read-back after the pass included);
//   - run in a random order the graph allows, the tiles reach the epilogue as f_k g_k', every
//     logit once, label tiles in order and row tiles in order within each, whether the pass
//     is one call or two (labels [0, c) and [c, V));
//   - when a GEMM fails mid-pass, the epilogues already queued are ordered before the caller's
//     next work.
// Built and run by tests/emulation/test_cuda_pass_sim.py (no GPU needed):
//   g++ -std=c++17 -O1 -DIDENTIREP_WITH_CUDA -DIDENTIREP_WITH_CUBLAS -I csrc -isystem <cuda
//       include> -isystem <cublas include> tests/emulation/cuda_pass_sim.cpp csrc/plan.cpp -o sim
//   ./sim [full]
// ("full": every layout pair in every shape, ~30 s).
#include "cuda_pass.cpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>

namespace {

struct Range {
  uintptr_t lo, hi;  // [lo, hi)
  bool write;
};
struct Task {
  std::string name;
  std::vector<int> deps;
  std::vector<Range> ranges;
  std::function<void()> run;
};
struct FakeStream {
  int last = -1;
  bool destroyed = false;
};
struct FakeEvent {
  int snapshot = -1;
  bool destroyed = false;
};

std::vector<Task> g_tasks;
FakeStream g_legacy;
int g_device = 0;
int g_misuse = 0;  // use of a destroyed stream or event

FakeStream* Fake(cudaStream_t s) {
  FakeStream* f = s ? reinterpret_cast<FakeStream*>(s) : &g_legacy;
  g_misuse += f->destroyed;
  return f;
}

int Add(cudaStream_t s, std::string name, std::vector<Range> ranges, std::function<void()> run,
        std::vector<int> deps = {}) {
  FakeStream* f = Fake(s);
  if (f->last >= 0) deps.push_back(f->last);
  g_tasks.push_back({std::move(name), std::move(deps), std::move(ranges), std::move(run)});
  return f->last = static_cast<int>(g_tasks.size()) - 1;
}

}  // namespace

extern "C" {
cudaError_t cudaGetDevice(int* d) { *d = g_device; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { g_device = d; return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* p, unsigned int) {
  *p = reinterpret_cast<cudaStream_t>(new FakeStream);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) { Fake(s)->destroyed = true; return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) {
  *e = reinterpret_cast<cudaEvent_t>(new FakeEvent);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  reinterpret_cast<FakeEvent*>(e)->destroyed = true;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  auto* f = reinterpret_cast<FakeEvent*>(e);
  g_misuse += f->destroyed;
  f->snapshot = Add(s, "record", {}, [] {});
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int) {
  auto* f = reinterpret_cast<FakeEvent*>(e);
  g_misuse += f->destroyed;
  std::vector<int> deps;
  if (f->snapshot >= 0) deps.push_back(f->snapshot);
  Add(s, "wait", {}, [] {}, deps);
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t) { return "simulated"; }
}

namespace {

// ---- cuBLAS stand-in
cudaStream_t g_blas_stream = nullptr;
Range g_blas_work{0, 0, true};
int g_gemms_left = -1;  // >= 0: fail once this many GEMMs have been queued

cublasStatus_t Create(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(new int(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t SetStream(cublasHandle_t, cudaStream_t s) {
  g_blas_stream = s;
  g_blas_work = {0, 0, true};  // as cuBLAS: back to the default workspace
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t SetWorkspace(cublasHandle_t, void* p, size_t bytes) {
  g_blas_work = {reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + bytes, true};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t SetPointerMode(cublasHandle_t, cublasPointerMode_t m) {
  return m == CUBLAS_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t GetProperty(libraryPropertyType, int* v) { *v = CUBLAS_VER_MAJOR; return CUBLAS_STATUS_SUCCESS; }
const char* StatusString(cublasStatus_t) { return "simulated"; }

double Load(const void* p, cudaDataType t, int64_t i) {
  if (t == CUDA_R_32F) return static_cast<const float*>(p)[i];
  if (t == CUDA_R_64F) return static_cast<const double*>(p)[i];
  uint32_t bits = uint32_t(static_cast<const uint16_t*>(p)[i]) << 16;  // bfloat16
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
int64_t Size(cudaDataType t) { return t == CUDA_R_64F ? 8 : t == CUDA_R_32F ? 4 : 2; }

cublasStatus_t Gemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const void* alpha, const void* A, cudaDataType at, int lda,
                    const void* B, cudaDataType bt, int ldb, const void* beta, void* C,
                    cudaDataType ct, int ldc, cublasComputeType_t comp, cublasGemmAlgo_t) {
  if (g_gemms_left == 0) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (g_gemms_left > 0) --g_gemms_left;
  const bool ok_ld = lda >= std::max(1, ta == CUBLAS_OP_N ? m : k) &&
                     ldb >= std::max(1, tb == CUBLAS_OP_N ? k : n) && ldc >= std::max(1, m);
  const bool f64 = comp == CUBLAS_COMPUTE_64F;
  if (!ok_ld || at != bt || (ct == CUDA_R_64F) != f64 || (at == CUDA_R_64F) != f64 ||
      g_blas_work.hi <= g_blas_work.lo)
    return CUBLAS_STATUS_INVALID_VALUE;
  const double al = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double be = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  if (be != 0.0) return CUBLAS_STATUS_INVALID_VALUE;
  auto extent = [](int64_t rows, int64_t cols, int64_t ld) { return (cols - 1) * ld + rows; };
  const int64_t ea = ta == CUBLAS_OP_N ? extent(m, k, lda) : extent(k, m, lda);
  const int64_t eb = tb == CUBLAS_OP_N ? extent(k, n, ldb) : extent(n, k, ldb);
  const auto a0 = reinterpret_cast<uintptr_t>(A), b0 = reinterpret_cast<uintptr_t>(B),
             c0 = reinterpret_cast<uintptr_t>(C);
  Add(g_blas_stream, "gemm",
      {{a0, a0 + ea * Size(at), false}, {b0, b0 + eb * Size(bt), false},
       {c0, c0 + extent(m, n, ldc) * Size(ct), true}, g_blas_work},
      [=] {
        for (int j = 0; j < n; ++j)
          for (int i = 0; i < m; ++i) {
            double s = 0;
            for (int p = 0; p < k; ++p)
              s += (ta == CUBLAS_OP_N ? Load(A, at, i + int64_t{p} * lda)
                                      : Load(A, at, p + int64_t{i} * lda)) *
                   (tb == CUBLAS_OP_N ? Load(B, bt, p + int64_t{j} * ldb)
                                      : Load(B, bt, j + int64_t{p} * ldb));
            if (ct == CUDA_R_64F) static_cast<double*>(C)[i + int64_t{j} * ldc] = al * s;
            else static_cast<float*>(C)[i + int64_t{j} * ldc] = static_cast<float>(al * s);
          }
      });
  return CUBLAS_STATUS_SUCCESS;
}

// ---- epilogue stand-in: copies its tiles into full N x V results
std::vector<double> g_l1, g_l2;
int64_t g_v = 0;
std::vector<std::pair<int64_t, int64_t>> g_order;  // (col0, row0) as the epilogues run

// What an epilogue writes of the pass state: rows of state, args and row moments for its n
// inputs, column moments for its v labels from col0.
void StateRanges(std::vector<Range>& rs, int64_t n, int64_t v, int64_t col0, uintptr_t state,
                 int64_t state_ld, uintptr_t args, int64_t args_ld, uintptr_t row_moments,
                 int64_t row_ld, uintptr_t col_moments, int64_t col_ld) {
  const auto rows = [&](uintptr_t base, int count, int64_t ld, int64_t lo, int64_t len) {
    for (int r = 0; r < count; ++r)
      rs.push_back({base + (r * ld + lo) * 8, base + (r * ld + lo + len) * 8, true});
  };
  rows(state, 8, state_ld, 0, n);
  rows(args, 2, args_ld, 0, n);
  rows(row_moments, 5, row_ld, 0, n);
  rows(col_moments, 5, col_ld, col0, v);
}

}  // namespace

namespace identirep {
void lse_kl_update_cuda(uintptr_t l1, uintptr_t l2, int64_t n, int64_t v, int64_t ld1,
                        int64_t ld2, int64_t col0, uintptr_t state, int64_t state_ld,
                        uintptr_t args, int64_t args_ld, const std::string& dtype,
                        uintptr_t stream, uintptr_t row_moments, int64_t row_ld,
                        uintptr_t col_moments, int64_t col_ld, int64_t row0, uintptr_t col_work,
                        uintptr_t row_work) {
  const int64_t it = dtype == "float64" ? 8 : 4;
  std::vector<Range> rs{{l1, l1 + ((n - 1) * ld1 + v) * it, false},
                        {l2, l2 + ((n - 1) * ld2 + v) * it, false}};
  StateRanges(rs, n, v, col0, state, state_ld, args, args_ld, row_moments, row_ld, col_moments,
              col_ld);
  const auto fused = lse_kl_cuda_fused_work_elems(n, v);
  rs.push_back({col_work, col_work + (row_work ? fused.second : lse_kl_cuda_col_work_elems(v)) * 8,
                true});
  if (row_work) rs.push_back({row_work, row_work + fused.first * 8, true});
  Add(reinterpret_cast<cudaStream_t>(stream), "epilogue", rs, [=] {
    g_order.push_back({col0, row0});
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < v; ++j) {
        const int64_t e = (row0 + i) * g_v + col0 + j;
        g_l1[e] = it == 8 ? reinterpret_cast<double*>(l1)[i * ld1 + j]
                          : reinterpret_cast<float*>(l1)[i * ld1 + j];
        g_l2[e] = it == 8 ? reinterpret_cast<double*>(l2)[i * ld2 + j]
                          : reinterpret_cast<float*>(l2)[i * ld2 + j];
      }
  });
}

// The fused GEMM: a stand-in that computes its tile's logits from the operands it is given
// (bfloat16) as the epilogue stand-in stores them, declaring what the kernels read and write.
int g_block_rows = 0;  // what the pass was asked for
void lse_kl_gemm_update_cuda(const GemmOperands& op, int64_t n, int64_t v, int64_t col0,
                             uintptr_t state, int64_t state_ld, uintptr_t args, int64_t args_ld,
                             uintptr_t row_moments, int64_t row_ld, uintptr_t col_moments,
                             int64_t col_ld, int64_t row0, uintptr_t row_work,
                             uintptr_t col_work, uintptr_t shift, uintptr_t stream) {
  g_misuse += op.block_rows != g_block_rows;
  const std::vector<int64_t> e = lse_kl_gemm_work_elems(n, v);
  std::vector<Range> rs{{op.f1, op.f1 + ((n - 1) * op.ldf1 + op.k1) * 2, false},
                        {op.g1, op.g1 + ((v - 1) * op.ldg1 + op.k1) * 2, false},
                        {op.f2, op.f2 + ((n - 1) * op.ldf2 + op.k2) * 2, false},
                        {op.g2, op.g2 + ((v - 1) * op.ldg2 + op.k2) * 2, false},
                        {row_work, row_work + e[0] * 8, true},
                        {col_work, col_work + e[1] * 8, true},
                        {shift, shift + e[2] * 4, true}};
  StateRanges(rs, n, v, col0, state, state_ld, args, args_ld, row_moments, row_ld, col_moments,
              col_ld);
  Add(reinterpret_cast<cudaStream_t>(stream), "fused gemm", rs, [=] {
    g_order.push_back({col0, row0});
    const auto dot = [](uintptr_t f, uintptr_t g, int64_t k) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p)
        s += Load(reinterpret_cast<const void*>(f), CUDA_R_16BF, p) *
             Load(reinterpret_cast<const void*>(g), CUDA_R_16BF, p);
      return s;
    };
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < v; ++j) {
        const int64_t at = (row0 + i) * g_v + col0 + j;
        g_l1[at] = dot(op.f1 + 2 * i * op.ldf1, op.g1 + 2 * j * op.ldg1, op.k1);
        g_l2[at] = dot(op.f2 + 2 * i * op.ldf2, op.g2 + 2 * j * op.ldg2, op.k2);
      }
  });
}
// The timing probe is not part of a pass: the simulation never calls it.
void lse_kl_gemm_mainloop_cuda(const GemmOperands&, int64_t, int64_t, uintptr_t) { ++g_misuse; }
}  // namespace identirep

namespace {

std::mt19937_64 g_rng(1);

// A strided operand with small exact values: layout 0 C, 1 F, 2 C padded, 3 F padded, 4 C with
// an odd row stride for one row, 5 F with an odd column stride for one column, 6 C with rows
// padded to a multiple of 8 elements and 16-byte aligned data (the fused GEMM's).
struct Operand {
  std::vector<char> mem;
  int64_t rows, cols, s0, s1, off = 3;
  std::string kind;
  int64_t Item() const { return kind == "float64" ? 8 : kind == "float32" ? 4 : 2; }
  double At(int64_t i, int64_t j) const {
    const int64_t e = off + i * s0 + j * s1;
    return Load(mem.data(), kind == "float64" ? CUDA_R_64F : kind == "float32" ? CUDA_R_32F
                                                                             : CUDA_R_16BF, e);
  }
  identirep::CudaOperand Op() const {
    return {reinterpret_cast<uintptr_t>(mem.data()) + off * Item(), rows, cols, s0, s1, kind};
  }
};

Operand Make(int64_t rows, int64_t cols, int layout, const std::string& kind) {
  Operand a;
  a.rows = rows;
  a.cols = cols;
  a.kind = kind;
  const int64_t pad = layout >= 2 ? 5 : 0;
  if (layout % 2 == 0) { a.s1 = 1; a.s0 = cols + pad; } else { a.s0 = 1; a.s1 = rows + pad; }
  if (layout == 4) { a.s1 = 1; a.s0 = rows == 1 ? 77 : cols; }
  if (layout == 5) { a.s0 = 1; a.s1 = cols == 1 ? 99 : rows; }
  if (layout == 6) { a.s1 = 1; a.s0 = (cols + 7) / 8 * 8 + 8 * (rows % 2); a.off = 8; }
  a.mem.assign((a.off + (rows - 1) * a.s0 + (cols - 1) * a.s1 + 9) * a.Item(), 0);
  std::uniform_int_distribution<int> d(-8, 8);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t e = a.off + i * a.s0 + j * a.s1;
      const float val = d(g_rng) * 0.25f;
      if (kind == "float32") reinterpret_cast<float*>(a.mem.data())[e] = val;
      else if (kind == "float64") reinterpret_cast<double*>(a.mem.data())[e] = val;
      else {
        uint32_t b;
        std::memcpy(&b, &val, 4);
        reinterpret_cast<uint16_t*>(a.mem.data())[e] = static_cast<uint16_t>(b >> 16);
      }
    }
  return a;
}

// Hazards (unordered conflicting tasks), then a random execution the graph allows.
int Hazards(const char* tag) {
  const int n = static_cast<int>(g_tasks.size());
  std::vector<std::vector<bool>> before(n, std::vector<bool>(n));
  for (int i = 0; i < n; ++i)
    for (int d : g_tasks[i].deps) {
      before[i][d] = true;
      for (int x = 0; x < n; ++x) if (before[d][x]) before[i][x] = true;
    }
  int bad = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) {
      if (before[i][j]) continue;
      for (const Range& a : g_tasks[i].ranges)
        for (const Range& b : g_tasks[j].ranges)
          if ((a.write || b.write) && a.lo < b.hi && b.lo < a.hi && bad++ < 3)
            std::printf("%s: %s #%d and %s #%d unordered\n", tag, g_tasks[i].name.c_str(), i,
                        g_tasks[j].name.c_str(), j);
    }
  std::vector<int> indeg(n);
  std::vector<std::vector<int>> next(n);
  for (int i = 0; i < n; ++i)
    for (int d : g_tasks[i].deps) { ++indeg[i]; next[d].push_back(i); }
  std::vector<int> ready;
  for (int i = 0; i < n; ++i) if (indeg[i] == 0) ready.push_back(i);
  while (!ready.empty()) {
    const size_t k = std::uniform_int_distribution<size_t>(0, ready.size() - 1)(g_rng);
    const int t = ready[k];
    ready.erase(ready.begin() + static_cast<long>(k));
    g_tasks[t].run();
    for (int o : next[t]) if (--indeg[o] == 0) ready.push_back(o);
  }
  return bad;
}

// One pass; returns the number of failed checks (printing them).
int Run(int64_t n, int64_t v, int64_t k, const char* kind, int lf, int lg, bool overlap,
        bool fused, int64_t tr, int64_t tc, int fail_after = -1, int gemm = 0) {
  const std::string dt = std::string(kind) == "float64" ? "float64" : "float32";
  const Operand f1 = Make(n, k, lf, kind), g1 = Make(v, k, lg, kind),
                f2 = Make(n, k, gemm ? 6 : (lf + 1) % 6, kind),
                g2 = Make(v, k, gemm ? 6 : (lg + 3) % 6, kind);
  g_tasks.clear();
  g_legacy = FakeStream();
  g_order.clear();
  g_v = v;
  g_l1.assign(n * v, NAN);
  g_l2.assign(n * v, NAN);
  g_gemms_left = fail_after;
  g_misuse = 0;
  identirep::g_block_rows = gemm;
  std::vector<double> state(8 * n), rowm(5 * n), colm(5 * v);
  std::vector<int64_t> args(2 * n);
  const int64_t ws = identirep::lse_kl_pass_cuda_workspace(std::min(tr, n), std::min(tc, v), dt,
                                                           overlap, fused, gemm != 0);
  std::unique_ptr<char[]> work(new char[ws + 256]);  // untouched pages cost nothing
  const uintptr_t wp = (reinterpret_cast<uintptr_t>(work.get()) + 255) / 256 * 256;
  FakeStream caller;
  cudaStream_t s = std::uniform_int_distribution<int>(0, 1)(g_rng)
                       ? reinterpret_cast<cudaStream_t>(&caller) : nullptr;
  auto span = [](const auto& vec, bool w) {
    const auto lo = reinterpret_cast<uintptr_t>(vec.data());
    return Range{lo, lo + vec.size() * sizeof(vec[0]), w};
  };
  const std::vector<Range> all{span(state, true), span(args, true), span(rowm, true),
                               span(colm, true), {wp, wp + ws, true}};
  Add(s, "fill", all, [] {});
  char tag[200];
  std::snprintf(tag, sizeof tag,
                "n%ld v%ld k%ld %s layouts %d,%d overlap %d fused %d gemm %d tiles %ldx%ld",
                static_cast<long>(n), static_cast<long>(v), static_cast<long>(k), kind, lf, lg,
                overlap, fused, gemm, static_cast<long>(tr), static_cast<long>(tc));
  bool threw = false;
  // in one call, or in two at a label-tile boundary (as a caller reporting progress does)
  const int64_t split = std::min(v, std::min(tc, v) * ((v / std::min(tc, v) + 1) / 2));
  const std::vector<std::pair<int64_t, int64_t>> calls =
      (v % 2) ? std::vector<std::pair<int64_t, int64_t>>{{0, v}}
              : std::vector<std::pair<int64_t, int64_t>>{{0, split}, {split, v}};
  try {
    for (const auto& [c_begin, c_end] : calls)
      identirep::lse_kl_pass_cuda(f1.Op(), g1.Op(), f2.Op(), g2.Op(), c_begin, c_end, tr, tc,
                                  reinterpret_cast<uintptr_t>(state.data()),
                                  reinterpret_cast<uintptr_t>(args.data()),
                                  reinterpret_cast<uintptr_t>(rowm.data()),
                                  reinterpret_cast<uintptr_t>(colm.data()), wp, ws, dt, overlap,
                                  fused, gemm, reinterpret_cast<uintptr_t>(s), 0);
  } catch (const std::exception& e) {
    threw = true;
    if (fail_after < 0) {
      std::printf("%s: threw %s\n", tag, e.what());
      return 1;
    }
  }
  Add(s, "read back", all, [] {});  // the caller's next work on its stream
  int bad = Hazards(tag) + g_misuse;
  if (fail_after >= 0) {
    if (!threw) std::printf("%s: no error after %d GEMMs\n", tag, fail_after);
    return bad + !threw;
  }
  double err = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < v; ++j) {
      double e1 = 0, e2 = 0;
      for (int64_t p = 0; p < k; ++p) {
        e1 += f1.At(i, p) * g1.At(j, p);
        e2 += f2.At(i, p) * g2.At(j, p);
      }
      const double d = std::max(std::fabs(e1 - g_l1[i * v + j]), std::fabs(e2 - g_l2[i * v + j]));
      err = std::isnan(d) ? INFINITY : std::max(err, d);
    }
  const bool ordered = std::is_sorted(g_order.begin(), g_order.end());
  const int64_t tiles = ((n + std::min(tr, n) - 1) / std::min(tr, n)) *
                        ((v + std::min(tc, v) - 1) / std::min(tc, v));
  if (err > 0 || !ordered || static_cast<int64_t>(g_order.size()) != tiles) {
    std::printf("%s: max error %g, tiles in order %d, %zu epilogues for %ld tiles\n", tag, err,
                ordered, g_order.size(), static_cast<long>(tiles));
    ++bad;
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  using identirep::g_api;
  g_api.lib = &g_api;
  g_api.path = "simulated";
  g_api.create = &Create;
  g_api.set_stream = &SetStream;
  g_api.set_workspace = &SetWorkspace;
  g_api.set_pointer_mode = &SetPointerMode;
  g_api.get_property = &GetProperty;
  g_api.status_string = &StatusString;
  g_api.gemm_ex = &Gemm;
  const bool full = argc > 1 && std::string(argv[1]) == "full";
  const int64_t shapes[][3] = {{1, 1, 1}, {1, 5, 3}, {7, 1, 2}, {9, 13, 1}, {33, 17, 5},
                               {5, 40, 7}};
  int runs = 0, fails = 0;
  for (int si = 0; si < 6; ++si)
    for (const char* kind : {"float32", "float64", "bfloat16"})
      for (int lf = 0; lf < 6; ++lf)
        for (int lg = 0; lg < 6; ++lg) {
          const int64_t* sh = shapes[si];
          if (!full && lf != (5 * lg + si) % 6) continue;  // each layout pair in one shape
          for (int ov = 0; ov < 2; ++ov)
            for (int fu = 0; fu < 2; ++fu)
              for (int64_t tr : {1, 3, 100})
                for (int64_t tc : {1, 4, 100}) {
                  fails += Run(sh[0], sh[1], sh[2], kind, lf, lg, ov, fu, tr, tc) > 0;
                  ++runs;
                }
        }
  for (int si = 0; si < 6; ++si)  // the fused GEMM: its tiles of the operands, in order
    for (int64_t tr : {1, 3, 100})
      for (int64_t tc : {1, 4, 100}) {
        const int64_t* sh = shapes[si];
        fails += Run(sh[0], sh[1], sh[2] + si, "bfloat16", 6, 6, si % 2, false, tr, tc, -1,
                     si % 2 ? 64 : 128) > 0;
        ++runs;
      }
  for (int fail_after : {0, 1, 2, 5, 9})  // a GEMM fails mid-pass
    for (int ov = 0; ov < 2; ++ov) {
      fails += Run(10, 20, 4, "float32", 0, 1, ov, false, 3, 4, fail_after) > 0;
      ++runs;
    }
  std::printf("%d simulated passes, %d failed\n", runs, fails);
  return fails != 0;
}
