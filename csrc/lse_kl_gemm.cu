// Argument checks and dispatch of the fused GEMM + epilogue kernel (kernels/lse_kl_gemm.cuh).
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "kernels/lse_kl_gemm.cuh"
#ifdef IDENTIREP_WITH_WGMMA
#include "lse_kl_wgmma.h"
#endif

namespace identirep {
namespace {

void Require(bool ok, const std::string& what, const std::string& why) {
  if (!ok) throw std::invalid_argument(what + ": " + why);
}

int GemmSmemBytes(int block_rows, bool wgmma) {
  if (block_rows == 128)
    return wgmma ? kernels::GemmShape<128, true>::kSmemBytes : kernels::GemmShape<128>::kSmemBytes;
  return wgmma ? kernels::GemmShape<64, true>::kSmemBytes : kernels::GemmShape<64>::kSmemBytes;
}

// The operands' kind and block shape, then (CheckOperands) their pointers and strides.
void CheckShape(const GemmOperands& op, const std::string& what) {
  Require(op.kind == "bfloat16" || op.kind == "float16", what,
          "operands must be float16 or bfloat16, got \"" + op.kind + "\"");
  Require(op.block_rows == 128 || op.block_rows == 64, what,
          "block_rows must be 128 or 64, got " + std::to_string(op.block_rows));
}

void CheckOperands(const GemmOperands& op, const std::string& what) {
  const char* names[4] = {"f1", "g1", "f2", "g2"};
  const uintptr_t ptrs[4] = {op.f1, op.g1, op.f2, op.g2};
  const int64_t lds[4] = {op.ldf1, op.ldg1, op.ldf2, op.ldg2};
  const int64_t ks[4] = {op.k1, op.k1, op.k2, op.k2};
  for (int i = 0; i < 4; ++i) {
    Require(ptrs[i] != 0, what, std::string(names[i]) + " is a null pointer");
    const std::string why = lse_kl_gemm_operand_problem(ptrs[i], lds[i], ks[i]);
    Require(why.empty(), what, std::string(names[i]) + ": " + why);
  }
}

void CheckDevice(const GemmOperands& op, const std::string& what) {
  int device = 0, major = 0, smem = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) throw std::runtime_error(what + ": " + cudaGetErrorString(err));
  if (major < 8)
    throw std::runtime_error(what + ": the fused GEMM needs a GPU of compute capability 8.0 or "
                             "newer (bfloat16 mma.sync, cp.async)");
  if (op.wgmma) {
    const std::string why = lse_kl_gemm_wgmma_problem(device);
    if (!why.empty()) throw std::runtime_error(what + ": " + why);
  }
  const int need = GemmSmemBytes(static_cast<int>(op.block_rows), op.wgmma);
  if (smem < need)
    throw std::runtime_error(
        what + ": " + std::to_string(op.block_rows) + "-row blocks need " +
        std::to_string(need / 1024) + " KiB of shared memory per block, this GPU allows " +
        std::to_string(smem / 1024) + " KiB" +
        (op.block_rows == 128 ? "; 64-row blocks (gemm_block_rows=64) may fit" : ""));
}

// The GEMM kernel's launch for op (mma.sync here, wgmma from its sm_90a object).
template <bool kBf16, int kBM>
cudaError_t LaunchGemm(bool wgmma, const kernels::GemmKernelArgs& a, cudaStream_t stream) {
#ifdef IDENTIREP_WITH_WGMMA
  if (wgmma) return LaunchGemmKernelWgmma(kBf16, kBM, a, stream);
#else
  (void)wgmma;
#endif
  return kernels::LaunchGemmKernel<kBf16, kBM, false>(a, stream);
}

// fn(std::bool_constant<bf16>, std::integral_constant<int, block_rows>) for op's kind and rows.
template <typename Fn>
cudaError_t Dispatch(const GemmOperands& op, Fn&& fn) {
  using Rows128 = std::integral_constant<int, 128>;
  using Rows64 = std::integral_constant<int, 64>;
  const bool bf16 = op.kind == "bfloat16";
  if (op.block_rows == 128)
    return bf16 ? fn(std::true_type{}, Rows128{}) : fn(std::false_type{}, Rows128{});
  return bf16 ? fn(std::true_type{}, Rows64{}) : fn(std::false_type{}, Rows64{});
}

}  // namespace

std::string lse_kl_gemm_wgmma_problem(int device) {
#ifndef IDENTIREP_WITH_WGMMA
  (void)device;
  return "this build has no wgmma kernel (it needs nvcc 12+ and CUDA architecture 90 among "
         "CMAKE_CUDA_ARCHITECTURES)";
#else
  if (device < 0) return "";
  int major = 0, minor = 0;
  cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (major != 9 || minor != 0)
    return "the wgmma kernel is sm_90a code: it runs on compute capability 9.0 only (H100, "
           "H200), this GPU is " + std::to_string(major) + "." + std::to_string(minor);
  return "";
#endif
}

void lse_kl_gemm_update_cuda(const GemmOperands& op, int64_t n, int64_t v, int64_t col0,
                             uintptr_t state, int64_t state_ld, uintptr_t args, int64_t args_ld,
                             uintptr_t row_moments, int64_t row_ld, uintptr_t col_moments,
                             int64_t col_ld, int64_t row0, uintptr_t row_work,
                             uintptr_t col_work, uintptr_t shift, uintptr_t stream) {
  const std::string what = "lse_kl_gemm_update_cuda";
  CheckShape(op, what);
  Require(n >= 0 && v >= 0 && col0 >= 0 && row0 >= 0, what, "n, v, col0 and row0 must be >= 0");
  if (n == 0 || v == 0) return;
  CheckOperands(op, what);
  Require(state != 0 && args != 0 && row_work != 0, what, "null state, args or row_work pointer");
  Require(state_ld >= n && args_ld >= n, what, "state_ld and args_ld must be >= n");
  if (row_moments != 0) Require(row_ld >= n, what, "row_ld must be >= n");
  if (col_moments != 0)
    Require(col_ld >= col0 + v && col_work != 0 && shift != 0, what,
            "col_moments needs col_ld >= col0 + v, col_work and shift");
  CheckDevice(op, what);

  const auto* f1 = reinterpret_cast<const unsigned short*>(op.f1);
  const auto* g1 = reinterpret_cast<const unsigned short*>(op.g1);
  const auto* f2 = reinterpret_cast<const unsigned short*>(op.f2);
  const auto* g2 = reinterpret_cast<const unsigned short*>(op.g2);
  const kernels::DeviceLogitMoments mom{reinterpret_cast<double*>(row_moments), row_ld,
                                        reinterpret_cast<double*>(col_moments), col_ld, row0,
                                        reinterpret_cast<double*>(col_work)};
  auto* st = reinterpret_cast<double*>(state);
  auto* ag = reinterpret_cast<kernels::Index*>(args);
  auto* rw = reinterpret_cast<double*>(row_work);
  auto* sh = reinterpret_cast<float*>(shift);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int k1 = static_cast<int>(op.k1), k2 = static_cast<int>(op.k2);
  const bool wgmma = op.wgmma;
  const cudaError_t err = Dispatch(op, [&](auto bf, auto bm) {
    constexpr bool kBf16 = decltype(bf)::value;
    constexpr int kBM = decltype(bm)::value;
    return kernels::LseKlGemm<kBf16, kBM>(
        f1, op.ldf1, g1, op.ldg1, k1, f2, op.ldf2, g2, op.ldg2, k2, n, v, col0, st, state_ld, ag,
        args_ld, mom, rw, sh, s, [wgmma](const kernels::GemmKernelArgs& a, cudaStream_t t) {
          return LaunchGemm<kBf16, kBM>(wgmma, a, t);
        });
  });
  if (err != cudaSuccess)
    throw std::runtime_error(what + ": launch failed: " + cudaGetErrorString(err));
}

void lse_kl_gemm_mainloop_cuda(const GemmOperands& op, int64_t n, int64_t v, uintptr_t stream) {
  const std::string what = "lse_kl_gemm_mainloop_cuda";
  CheckShape(op, what);
  Require(n >= 0 && v >= 0, what, "n and v must be >= 0");
  if (n == 0 || v == 0) return;
  CheckOperands(op, what);
  CheckDevice(op, what);
  const kernels::GemmKernelArgs a{reinterpret_cast<const unsigned short*>(op.f1), op.ldf1,
                                  reinterpret_cast<const unsigned short*>(op.g1), op.ldg1,
                                  static_cast<int>(op.k1),
                                  reinterpret_cast<const unsigned short*>(op.f2), op.ldf2,
                                  reinterpret_cast<const unsigned short*>(op.g2), op.ldg2,
                                  static_cast<int>(op.k2), n, v, nullptr, nullptr, nullptr, true};
  const bool wgmma = op.wgmma;
  const cudaError_t err = Dispatch(op, [&](auto bf, auto bm) {
    return LaunchGemm<decltype(bf)::value, decltype(bm)::value>(
        wgmma, a, reinterpret_cast<cudaStream_t>(stream));
  });
  if (err != cudaSuccess)
    throw std::runtime_error(what + ": launch failed: " + cudaGetErrorString(err));
}

}  // namespace identirep
