// The primitives of the fused GEMM kernel (kernels/lse_kl_gemm.cuh), for sm_80 and newer:
// shared-window addresses, cp.async (16 bytes, zero-filled past src_bytes) with its commit and
// wait groups, ldmatrix.x4, mma.sync m16n8k16 (float32 accumulation), and for sm_90a the async
// proxy fence and wgmma (fence, mma_async m64nNk16, commit, wait), as inline PTX; and
// IDENTIREP_GEMM_DYNAMIC_SHARED(name), the declaration of the block's dynamic shared memory.
// Each instruction is compiled only for the architectures that have it (a no-op elsewhere: the
// kernels trap there, and their launchers check the GPU first).
//
// lse_kl_gemm.cuh includes this header as <gemm_primitives.cuh>: the SIMT emulator
// (tests/emulation/simt/gemm_primitives.cuh) swaps in its own, of the same names, which runs
// them on the CPU. No CUDA or standard header: NVRTC compiles it as is.
#pragma once

#define IDENTIREP_GEMM_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]

namespace identirep {
namespace kernels {
namespace mma {

__device__ __forceinline__ unsigned SmemAddr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, of which the first src_bytes are read and the rest zero-filled.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(dst)), "l"(src),
               "r"(src_bytes));
#endif
}

__device__ __forceinline__ void CpAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// Four 8 x 8 matrices of 16-bit elements; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void LdMatrixX4(unsigned (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(row)));
#endif
}

// d += a b: a 16 x 16 (row), b 16 x 8 (col), float32 d, in the PTX fragment layouts.
template <bool kBf16>
__device__ __forceinline__ void Mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// The async proxy (wgmma) sees this thread's earlier generic-proxy writes to shared memory
// (cp.async included) once a barrier follows.
__device__ __forceinline__ void FenceProxyAsync() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaFence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaCommit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving accesses of these registers across this point (wgmma writes
// its accumulators asynchronously: read them only between a wait and the next issue).
template <int kN>
__device__ __forceinline__ void PinRegisters(float (&d)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Waits until at most `kPending` of the warpgroup's committed wgmma groups are in flight.
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// wgmma.mma_async m64nNk16 with float32 accumulators d[N / 2] of element type T ("bf16" or
// "f16"); operands da, db, scale_d.
#define IDENTIREP_WGMMA_N128(T)                                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                        \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." T "." T " {"                         \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                                \
               "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "                      \
               "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "                      \
               "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                      \
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "                      \
               "%60, %61, %62, %63"                                                                \
               "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                                  \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),           \
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),         \
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),     \
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),     \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),     \
                 "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),     \
                 "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),     \
                 "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),     \
                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),     \
                 "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),     \
                 "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                \
               : "l"(da), "l"(db), "r"(scale_d))
#define IDENTIREP_WGMMA_N64(T)                                                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                        \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." T "." T " {"                          \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                                \
               "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "                      \
               "%24, %25, %26, %27, %28, %29, %30, %31"                                            \
               "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                                  \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),           \
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),         \
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),     \
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),     \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),     \
                 "+f"(d[30]), "+f"(d[31])                                                          \
               : "l"(da), "l"(db), "r"(scale_d))

// d (64 x kN over the warpgroup, in the wgmma accumulator layout) = a b' + (scale_d ? d : 0):
// a (64 x 16) and b (kN x 16) K-major in shared memory, given by descriptors (MatrixDesc).
template <bool kBf16, int kN>
__device__ __forceinline__ void Wgmma(float (&d)[kN / 2], unsigned long long da,
                                      unsigned long long db, int scale_d) {
  static_assert(kN == 64 || kN == 128, "wgmma N of 64 or 128");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kN == 128) {
    if constexpr (kBf16) IDENTIREP_WGMMA_N128("bf16");
    else IDENTIREP_WGMMA_N128("f16");
  } else {
    if constexpr (kBf16) IDENTIREP_WGMMA_N64("bf16");
    else IDENTIREP_WGMMA_N64("f16");
  }
#endif
}
#undef IDENTIREP_WGMMA_N128
#undef IDENTIREP_WGMMA_N64

}  // namespace mma
}  // namespace kernels
}  // namespace identirep
