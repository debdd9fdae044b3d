// The CUDA kernels of csrc/kernels/lse_kl.cuh and pivot_terms.cuh run on the CPU in the SIMT
// emulator simt.h, launched as identirep/gpu/cupy_backend.py launches their NVRTC build
// (NvrtcEpilogue.__call__, pivot_criteria_device), with the geometry of their launch table
// (kernels/launch_table.h); tests/emulation/test_kernels_on_cpu.py builds this with
//   g++ -std=c++20 -pthread -D__CUDACC_RTC__ -I tests/emulation/simt -I csrc/kernels run_kernels.cpp
// Arrays are raw files in DIR (C order, float64 / int64 unless said otherwise):
//   run_kernels epilogue f32|f64 FUSED MOMENTS N V LD1 LD2 TR TC ROW_WORK COL_WORK REPEAT DIR
//     l1, l2: N x LD1, N x LD2 logits (f32|f64); state 8 x N, args 2 x N, row_m 5 x N,
//     col_m 5 x V. The pass of the cupy backend's tile loop (label tiles of TC outer, row
//     tiles of TR inner, each a view of l1, l2) with scratch arrays of ROW_WORK and COL_WORK
//     doubles (the scratch sizes of the launch table) updates them into state.out, args.out,
//     row_m.out, col_m.out.
//     MOMENTS 0: no moments (null pointers, as the compiled launchers LseKl / LseKlFused do
//     without them). REPEAT > 1: the pass again from the same inputs, bitwise equal or fail.
//   run_kernels gemm bf16|f16 BM MOMENTS N V K1 K2 LDF1 LDG1 LDF2 LDG2 TR TC REPEAT DIR
//     f1 (N x LDF1), g1 (V x LDG1), f2 (N x LDF2), g2 (V x LDG2): 16-bit patterns, the first
//     K1 (K2) columns used; state, args, row_m, col_m as for epilogue. The pass of the CUDA
//     driver with the fused GEMM (lse_kl_gemm.cuh: LseKlGemm's launches per tile), blocks of
//     BM (128 or 64) rows with mma.sync, or wg128 / wg64: with wgmma. With
//     RUN_KERNELS_MAINLOOP_FIRST set, each tile's GEMM kernel runs first as the timing probe
//     (mainloop_only, null shift and scratch: it must write nothing), and mma_issued.out holds
//     the tensor-core instructions issued by the probes and by the kernels (2 doubles).
//   run_kernels shift bf16|f16 V K1 K2 DIR
//     LseKlShiftKernel of f1 (K1), g1 (V x K1), f2 (K2), g2 (V x K2) -> shift.out (2 x V float)
//   run_kernels pivot f32|f64 max|mean B V TOL DIR
//     X1, X2: B x V (f32|f64); n1, n2, A1, A2, B12: V; pivots: B -> crit.out (B)
//   run_kernels race SYNC BLOCKS THREADS   self-test: a block sum through shared memory, with
//     or without __syncthreads; prints the number of wrong blocks
//   run_kernels matrix-desc ADDR           prints mma::MatrixDesc(ADDR) in hexadecimal
//   run_kernels fresh-shared               self-test: prints how many of 8 blocks found their
//     shared memory undefined (all 0xff bytes) before writing it
//   run_kernels shfl-exit | sync-exit      self-tests: a shuffle or a __syncthreads after a
//     thread returned (must fail)
//   run_kernels wgmma-toy FENCE SKEW       self-test: one wgmma of ones on copies, with or
//     without fence.proxy.async, with or without a warp whose descriptor differs; prints the
//     number of wrong outputs (each must be 16)
// Every array ends at an inaccessible page: a kernel reading or writing past one faults.
#ifndef __CUDACC_RTC__
#error "compile with -D__CUDACC_RTC__ (the kernels' NVRTC build: device code only)"
#endif
#include "simt.h"
// the emulator's primitives of the fused GEMM (this folder is on the include path before
// csrc/kernels: lse_kl_gemm.cuh's <gemm_primitives.cuh> is this one too)
#include <gemm_primitives.cuh>

#include "lse_kl.cuh"
#include "lse_kl_gemm.cuh"
#include "pivot_terms.cuh"

#include <fstream>
#include <string>

using identirep::kernels::Index;
namespace k = identirep::kernels;

namespace {

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "run_kernels: %s\n", msg.c_str());
  std::exit(2);
}

// n elements that end where an inaccessible page begins.
template <typename T>
class Array {
 public:
  explicit Array(Index n = 0) : n_(static_cast<size_t>(n)) {
    const size_t page = 4096, bytes = (n_ * sizeof(T) + page - 1) / page * page;
    len_ = bytes + page;
    void* p = mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(static_cast<char*>(p) + bytes, page, PROT_NONE) != 0)
      Die("out of memory");
    base_ = p;
    data_ = reinterpret_cast<T*>(static_cast<char*>(p) + bytes) - n_;
  }
  Array(const Array& o) : Array(static_cast<Index>(o.n_)) {
    std::memcpy(data_, o.data_, bytes());
  }
  Array& operator=(Array o) {
    std::swap(n_, o.n_);
    std::swap(len_, o.len_);
    std::swap(base_, o.base_);
    std::swap(data_, o.data_);
    return *this;
  }
  ~Array() { munmap(base_, len_); }
  bool operator==(const Array& o) const {  // bitwise (NaN payloads included)
    return n_ == o.n_ && std::memcmp(data_, o.data_, bytes()) == 0;
  }
  T* data() const { return data_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  size_t n_, len_;
  void* base_;
  T* data_;
};

template <typename T>
Array<T> Read(const std::string& dir, const std::string& name, Index count) {
  std::ifstream f(dir + "/" + name, std::ios::binary);
  Array<T> out(count);
  f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.bytes()));
  if (!f || f.peek() != std::ifstream::traits_type::eof())
    Die(name + ": expected " + std::to_string(count) + " elements");
  return out;
}

template <typename T>
void Write(const std::string& dir, const std::string& name, const Array<T>& a) {
  std::ofstream f(dir + "/" + name, std::ios::binary);
  f.write(reinterpret_cast<const char*>(a.data()), static_cast<std::streamsize>(a.bytes()));
  if (!f) Die("cannot write " + name);
}

Index Ceil(Index a, Index b) { return (a + b - 1) / b; }

dim3 Grid(Index x, Index y = 1) { return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y)); }

struct PassState {
  Index N, V;
  Array<double> state, row_m, col_m;
  Array<Index> args;
  bool operator==(const PassState&) const = default;
};

// The pass state read from dir; pass(state) run `repeat` times from it (bitwise equal or fail);
// the result written to dir as state.out, args.out, row_m.out, col_m.out.
template <typename Pass>
void RepeatedPass(const std::string& dir, Index N, Index V, int repeat, Pass pass) {
  const PassState init{N, V, Read<double>(dir, "state", 8 * N), Read<double>(dir, "row_m", 5 * N),
                       Read<double>(dir, "col_m", 5 * V), Read<Index>(dir, "args", 2 * N)};
  PassState first = init;
  for (int rep = 0; rep < repeat; ++rep) {
    PassState s = init;
    pass(s);
    if (rep == 0) {
      first = s;
    } else if (!(s == first)) {
      Die("the pass gave different results on run " + std::to_string(rep + 1));
    }
  }
  Write(dir, "state.out", first.state);
  Write(dir, "args.out", first.args);
  Write(dir, "row_m.out", first.row_m);
  Write(dir, "col_m.out", first.col_m);
}

// NvrtcEpilogue: its scratch arrays, one call per tile.
template <typename T>
struct Epilogue {
  bool fused, moments;
  Array<double> row_work, work;

  void operator()(const T* l1, Index ld1, const T* l2, Index ld2, Index n, Index v, Index c0,
                  Index r0, PassState& s) {
    const Index N = s.N, V = s.V;
    double* state = s.state.data() + r0;
    Index* args = s.args.data() + r0;
    double* row_m = moments ? s.row_m.data() + r0 : nullptr;
    double* col_work = moments ? work.data() : nullptr;
    Index chunks = 1;
    if (fused) {
      chunks = k::FusedChunks(n);
      simt::Launch(Grid(Ceil(v, k::kSlabCols), chunks), dim3(k::kSlabThreads), [&] {
        k::LseKlSlabKernel<T, k::SlabRows<T>::value>(l1, ld1, l2, ld2, n, v, row_work.data(), col_work);
      });
    } else {
      simt::Launch(Grid(n), dim3(k::kLseKlThreads), [&] {
        k::LseKlKernel<T, k::kLseKlThreads>(l1, ld1, l2, ld2, v, c0, state, N, args, N, row_m, N);
      });
      if (moments) {
        chunks = k::ColChunks(n);
        simt::Launch(Grid(Ceil(v, 32), chunks), dim3(32, k::kColRows), [&] {
          k::LseKlColKernel<T, k::kColRows>(l1, ld1, l2, ld2, n, v, col_work);
        });
      }
    }
    if (moments) {
      simt::Launch(Grid(Ceil(v, k::kMergeThreads)), dim3(k::kMergeThreads), [&] {
        k::LseKlColMergeKernel<T>(l1, l2, n, v, c0, chunks, col_work, s.col_m.data(), V, r0);
      });
    }
    if (fused) {
      simt::Launch(Grid(Ceil(n, k::kMergeThreads)), dim3(k::kMergeThreads), [&] {
        k::LseKlRowMergeKernel<T>(n, v, c0, row_work.data(), state, N, args, N, row_m, N);
      });
    }
  }
};

template <typename T>
void RunEpilogue(char** a, const std::string& dir) {
  const bool fused = std::stoi(a[0]) != 0, moments = std::stoi(a[1]) != 0;
  const Index N = std::stoll(a[2]), V = std::stoll(a[3]), ld1 = std::stoll(a[4]),
              ld2 = std::stoll(a[5]), tr = std::stoll(a[6]), tc = std::stoll(a[7]),
              row_work = std::stoll(a[8]), col_work = std::stoll(a[9]);
  const int repeat = std::stoi(a[10]);
  const Array<T> l1 = Read<T>(dir, "l1", N * ld1), l2 = Read<T>(dir, "l2", N * ld2);
  RepeatedPass(dir, N, V, repeat, [&](PassState& s) {
    Epilogue<T> epilogue{fused, moments, Array<double>(row_work), Array<double>(col_work)};
    for (Index c0 = 0; c0 < V; c0 += tc) {
      const Index c1 = c0 + tc < V ? c0 + tc : V;
      for (Index r0 = 0; r0 < N; r0 += tr) {
        const Index r1 = r0 + tr < N ? r0 + tr : N;
        epilogue(l1.data() + r0 * ld1 + c0, ld1, l2.data() + r0 * ld2 + c0, ld2, r1 - r0,
                 c1 - c0, c0, r0, s);
      }
    }
  });
}

// LseKlGemm (lse_kl_gemm.cuh) on the tiles of the driver: label tiles of TC outer, row tiles
// of TR inner.
template <bool kBf16, int kBM, bool kWg>
void RunGemm(char** a, const std::string& dir) {
  const bool moments = std::stoi(a[0]) != 0;
  const Index N = std::stoll(a[1]), V = std::stoll(a[2]), K1 = std::stoll(a[3]),
              K2 = std::stoll(a[4]), ldf1 = std::stoll(a[5]), ldg1 = std::stoll(a[6]),
              ldf2 = std::stoll(a[7]), ldg2 = std::stoll(a[8]), tr = std::stoll(a[9]),
              tc = std::stoll(a[10]);
  const int repeat = std::stoi(a[11]);
  using U = unsigned short;
  const Array<U> f1 = Read<U>(dir, "f1", N * ldf1), g1 = Read<U>(dir, "g1", V * ldg1),
                 f2 = Read<U>(dir, "f2", N * ldf2), g2 = Read<U>(dir, "g2", V * ldg2);
  const bool probe = std::getenv("RUN_KERNELS_MAINLOOP_FIRST") != nullptr;
  Array<double> mma_issued(2);  // tensor-core instructions of the probes and of the kernels
  mma_issued.data()[0] = mma_issued.data()[1] = 0.0;
  RepeatedPass(dir, N, V, repeat, [&](PassState& s) {
    Array<double> row_work(k::LseKlGemmRowWorkElems(tr, tc));
    Array<double> col_work(k::LseKlGemmColWorkElems(tc));
    Array<float> shift(k::LseKlGemmShiftElems(tc));
    for (Index c0 = 0; c0 < V; c0 += tc) {
      const Index v = (c0 + tc < V ? c0 + tc : V) - c0;
      for (Index r0 = 0; r0 < N; r0 += tr) {
        const Index n = (r0 + tr < N ? r0 + tr : N) - r0;
        const U *F1 = f1.data() + r0 * ldf1, *G1 = g1.data() + c0 * ldg1;
        const U *F2 = f2.data() + r0 * ldf2, *G2 = g2.data() + c0 * ldg2;
        double* state = s.state.data() + r0;
        Index* args = s.args.data() + r0;
        double* row_m = moments ? s.row_m.data() + r0 : nullptr;
        double* cw = moments ? col_work.data() : nullptr;
        const Index chunks = k::GemmChunks<kBM>(n);
        if (moments) {
          simt::Launch(Grid(Ceil(v, 8)), dim3(256), [&] {
            k::LseKlShiftKernel<kBf16>(F1, G1, ldg1, K1, F2, G2, ldg2, K2, v, shift.data());
          });
        }
        const unsigned long long issued0 = simt::g_mma_issued.load();
        if (probe) {  // the timing probe
          simt::Launch(Grid(k::GemmSlabs(v), chunks), dim3(k::kGemmThreads), [&] {
            k::LseKlGemmKernel<kBf16, kBM, kWg>(F1, ldf1, G1, ldg1, K1, F2, ldf2, G2, ldg2, K2,
                                                n, v, nullptr, nullptr, nullptr, true);
          });
        }
        const unsigned long long issued1 = simt::g_mma_issued.load();
        simt::Launch(Grid(k::GemmSlabs(v), chunks), dim3(k::kGemmThreads), [&] {
          k::LseKlGemmKernel<kBf16, kBM, kWg>(F1, ldf1, G1, ldg1, K1, F2, ldf2, G2, ldg2, K2, n, v,
                                              shift.data(), row_work.data(), cw, false);
        });
        mma_issued.data()[0] += static_cast<double>(issued1 - issued0);
        mma_issued.data()[1] += static_cast<double>(simt::g_mma_issued.load() - issued1);
        if (moments) {
          simt::Launch(Grid(Ceil(v, k::kMergeThreads)), dim3(k::kMergeThreads), [&] {
            k::LseKlColMergeKernel<float>(shift.data(), shift.data() + v, n, v, c0, chunks, cw,
                                          s.col_m.data(), V, r0);
          });
        }
        simt::Launch(Grid(Ceil(n, k::kMergeThreads)), dim3(k::kMergeThreads), [&] {
          k::LseKlRowMergeKernel<float, k::kGemmBN>(n, v, c0, row_work.data(), state, N, args,
                                                    N, row_m, N);
        });
      }
    }
  });
  if (probe) Write(dir, "mma_issued.out", mma_issued);
}

// LseKlShiftKernel alone: shift.out (2 x V float32) from f1, g1, f2, g2 (row strides = K).
template <bool kBf16>
void RunShift(char** a, const std::string& dir) {
  const Index V = std::stoll(a[0]), K1 = std::stoll(a[1]), K2 = std::stoll(a[2]);
  using U = unsigned short;
  const Array<U> f1 = Read<U>(dir, "f1", K1), g1 = Read<U>(dir, "g1", V * K1),
                 f2 = Read<U>(dir, "f2", K2), g2 = Read<U>(dir, "g2", V * K2);
  Array<float> shift(2 * V);
  simt::Launch(Grid(Ceil(V, 8)), dim3(256), [&] {
    k::LseKlShiftKernel<kBf16>(f1.data(), g1.data(), K1, K1, f2.data(), g2.data(), K2, K2, V,
                               shift.data());
  });
  Write(dir, "shift.out", shift);
}

template <typename TX>
void RunPivot(char** a, const std::string& dir) {
  const std::string mode = a[0];
  const Index B = std::stoll(a[1]), V = std::stoll(a[2]);
  const double tol = std::stod(a[3]);
  const Array<TX> X1 = Read<TX>(dir, "X1", B * V), X2 = Read<TX>(dir, "X2", B * V);
  std::vector<Array<double>> vec;
  for (const char* name : {"n1", "n2", "A1", "A2", "B12"})
    vec.push_back(Read<double>(dir, name, V));
  const Array<Index> pivots = Read<Index>(dir, "pivots", B);
  Array<double> crit(B);
  simt::Launch(Grid(B), dim3(k::kPivotThreads), [&] {
    k::PivotCriteriaKernel<TX, k::kPivotThreads>(
        X1.data(), V, X2.data(), V, vec[0].data(), vec[1].data(), vec[2].data(), vec[3].data(),
        vec[4].data(), pivots.data(), V, tol, mode == "max" ? 0 : 1, crit.data());
  });
  Write(dir, "crit.out", crit);
}

}  // namespace

// Self-tests of the emulator (in identirep::kernels, whose __shared__ it fills).
namespace identirep::kernels::selftest {

template <bool kSync>
__global__ void BlockSum(double* out) {
  __shared__ double sh[1024];
  sh[threadIdx.x] = blockIdx.x + threadIdx.x;
  if (kSync) __syncthreads();
  if (threadIdx.x != 0) return;
  double s = 0.0;
  for (unsigned t = 0; t < blockDim.x; ++t) s += sh[t];
  out[blockIdx.x] = s;
}

__global__ void ShuffleAfterExit(double* out) {
  if (threadIdx.x == 31) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0, 1);
}

__global__ void SyncAfterExit(double* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.0;
}

// Whether each block finds its shared memory undefined (all 0xff) before writing it.
__global__ void FreshShared(int* fresh) {
  __shared__ unsigned char sh[256];
  __syncthreads();
  if (sh[threadIdx.x] != 0xff) fresh[blockIdx.x] = 0;  // thread t reads byte t
  __syncthreads();
  sh[threadIdx.x] = 0;
}

// One warpgroup: cp.async of a (64 x 64) and b (64 x 64) bf16 into the 128-byte swizzle, then one
// m64n64k16 wgmma; with or without fence.proxy.async, with warp 3 reading a from another k
// (kSkew: descriptors that differ across the warpgroup).
template <bool kFence, bool kSkew>
__global__ void WgmmaToy(const unsigned short* src, float* out) {
  IDENTIREP_GEMM_DYNAMIC_SHARED(sh);
  const unsigned pad = (1024 - mma::SmemAddr(sh) % 1024) % 1024;
  unsigned char* base = sh + pad;
  for (unsigned i = threadIdx.x; i < 128 * 8; i += blockDim.x) {
    const unsigned row = i / 8, c = i % 8;
    mma::CpAsync16(base + row * 128 + (c ^ (row % 8)) * 16, src + row * 64 + 8 * c, 16);
  }
  mma::CpAsyncCommit();
  mma::CpAsyncWait<0>();
  if (kFence) mma::FenceProxyAsync();
  __syncthreads();
  float acc[32];
  const unsigned a = mma::SmemAddr(base) + (kSkew && threadIdx.x / 32 == 3 ? 32 : 0);
  mma::WgmmaFence();
  mma::Wgmma<true, 64>(acc, mma::MatrixDesc(a), mma::MatrixDesc(mma::SmemAddr(base) + 8192), 0);
  mma::WgmmaCommit();
  mma::WgmmaWait<0>();
  for (int i = 0; i < 32; ++i) out[threadIdx.x * 32 + i] = acc[i];
}

}  // namespace identirep::kernels::selftest

using namespace identirep::kernels::selftest;

int main(int argc, char** argv) {
  const std::string op = argc > 1 ? argv[1] : "";
  if (op == "epilogue" && argc == 15) {
    const std::string dt = argv[2];
    if (dt == "f32") RunEpilogue<float>(argv + 3, argv[14]);
    else if (dt == "f64") RunEpilogue<double>(argv + 3, argv[14]);
    else Die("dtype must be f32 or f64");
  } else if (op == "gemm" && argc == 17) {
    const std::string kind = argv[2], bm = argv[3];
    if (kind != "bf16" && kind != "f16") Die("kind must be bf16 or f16");
    const bool bf = kind == "bf16";
    char** a = argv + 4;
    const std::string dir = argv[16];
    if (bm == "128") (bf ? RunGemm<true, 128, false> : RunGemm<false, 128, false>)(a, dir);
    else if (bm == "64") (bf ? RunGemm<true, 64, false> : RunGemm<false, 64, false>)(a, dir);
    else if (bm == "wg128") (bf ? RunGemm<true, 128, true> : RunGemm<false, 128, true>)(a, dir);
    else if (bm == "wg64") (bf ? RunGemm<true, 64, true> : RunGemm<false, 64, true>)(a, dir);
    else Die("BM must be 128, 64, wg128 or wg64");
  } else if (op == "shift" && argc == 7) {
    const std::string kind = argv[2];
    if (kind == "bf16") RunShift<true>(argv + 3, argv[6]);
    else if (kind == "f16") RunShift<false>(argv + 3, argv[6]);
    else Die("kind must be bf16 or f16");
  } else if (op == "pivot" && argc == 8) {
    const std::string dt = argv[2];
    if (dt == "f32") RunPivot<float>(argv + 3, argv[7]);
    else if (dt == "f64") RunPivot<double>(argv + 3, argv[7]);
    else Die("dtype must be f32 or f64");
  } else if (op == "race" && argc == 5) {
    const bool sync = std::stoi(argv[2]) != 0;
    const unsigned blocks = std::stoul(argv[3]), threads = std::stoul(argv[4]);
    std::vector<double> out(blocks);
    simt::Launch(dim3(blocks), dim3(threads), [&] {
      if (sync) BlockSum<true>(out.data());
      else BlockSum<false>(out.data());
    });
    int wrong = 0;
    for (unsigned b = 0; b < blocks; ++b)
      wrong += out[b] != threads * (b + (threads - 1) / 2.0);
    std::printf("%d\n", wrong);
  } else if (op == "matrix-desc" && argc == 3) {
    const auto addr = static_cast<unsigned>(std::stoul(argv[2], nullptr, 0));
    std::printf("%llx\n", k::mma::MatrixDesc(addr));
  } else if (op == "fresh-shared" && argc == 2) {
    std::vector<int> fresh(8, 1);
    simt::Launch(dim3(8), dim3(256), [&] { FreshShared(fresh.data()); });
    int n = 0;
    for (int x : fresh) n += x;
    std::printf("%d\n", n);
  } else if (op == "wgmma-toy" && argc == 4) {
    const bool fence = std::stoi(argv[2]) != 0, skew = std::stoi(argv[3]) != 0;
    Array<unsigned short> src(128 * 64);
    for (int i = 0; i < 128 * 64; ++i) src.data()[i] = 0x3f80;  // bfloat16 1
    std::vector<float> out(128 * 32);
    simt::Launch(dim3(1), dim3(128), [&] {
      if (fence) (skew ? WgmmaToy<true, true> : WgmmaToy<true, false>)(src.data(), out.data());
      else (skew ? WgmmaToy<false, true> : WgmmaToy<false, false>)(src.data(), out.data());
    });
    int wrong = 0;
    for (float x : out) wrong += x != 16.0f;
    std::printf("%d\n", wrong);
  } else if ((op == "shfl-exit" || op == "sync-exit") && argc == 2) {
    std::vector<double> out(64);
    simt::Launch(dim3(1), dim3(64), [&] {
      if (op == "shfl-exit") ShuffleAfterExit(out.data());
      else SyncAfterExit(out.data());
    });
  } else {
    Die("usage: see the comment at the top of tests/emulation/simt/run_kernels.cpp");
  }
  return 0;
}
