// The launch of the wgmma fused GEMM (csrc/lse_kl_wgmma.cu, sm_90a) for lse_kl_gemm.cu: the
// arguments of kernels::LseKlGemm.
#pragma once

#include <cuda_runtime.h>

#include "kernels/lse_kl.cuh"

namespace identirep {

struct WgmmaLaunch {
  const unsigned short *f1, *g1, *f2, *g2;
  kernels::Index ldf1, ldg1, ldf2, ldg2;
  int k1, k2;
  kernels::Index n, v, col0;
  double* state;
  kernels::Index state_ld;
  kernels::Index* args;
  kernels::Index args_ld;
  kernels::DeviceLogitMoments mom;
  double* row_work;
  float* shift;
  cudaStream_t stream;
};

// kernels::LseKlGemm<bf16, block_rows (128 or 64), wgmma>; the first launch error.
cudaError_t LseKlGemmWgmma(bool bf16, int block_rows, const WgmmaLaunch& a);

}  // namespace identirep
