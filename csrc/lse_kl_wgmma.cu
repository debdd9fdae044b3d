// The fused GEMM kernel with wgmma (kernels/lse_kl_gemm.cuh, kWg): this file alone is built for
// sm_90a (CMakeLists.txt), whose code runs on compute capability 9.0 only. It launches that
// kernel and nothing else (see LaunchGemmKernel).
#include <cuda_runtime.h>

#include "kernels/lse_kl_gemm.cuh"
#include "lse_kl_wgmma.h"

namespace identirep {

cudaError_t LaunchGemmKernelWgmma(bool bf16, int block_rows, const kernels::GemmKernelArgs& a,
                                  cudaStream_t stream) {
  if (block_rows == 128)
    return bf16 ? kernels::LaunchGemmKernel<true, 128, true>(a, stream)
                : kernels::LaunchGemmKernel<false, 128, true>(a, stream);
  if (block_rows == 64)
    return bf16 ? kernels::LaunchGemmKernel<true, 64, true>(a, stream)
                : kernels::LaunchGemmKernel<false, 64, true>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace identirep
