// The wgmma GEMM kernel (csrc/lse_kl_wgmma.cu, sm_90a) for lse_kl_gemm.cu, which launches the
// shift and merge kernels around it.
#pragma once

#include <cuda_runtime.h>

#include "kernels/lse_kl_gemm.cuh"

namespace identirep {

// kernels::LaunchGemmKernel<bf16, block_rows (128 or 64), wgmma = true>; the launch error.
cudaError_t LaunchGemmKernelWgmma(bool bf16, int block_rows, const kernels::GemmKernelArgs& a,
                                  cudaStream_t stream);

}  // namespace identirep
