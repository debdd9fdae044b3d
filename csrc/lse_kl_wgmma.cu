// The fused GEMM + epilogue with wgmma (kernels/lse_kl_gemm.cuh, kWg): this file alone is
// built for sm_90a (CMakeLists.txt), whose code runs on compute capability 9.0 only.
#include <cuda_runtime.h>

#include "kernels/lse_kl_gemm.cuh"
#include "lse_kl_wgmma.h"

namespace identirep {

cudaError_t LseKlGemmWgmma(bool bf16, int block_rows, const WgmmaLaunch& a) {
  const auto run = [&](auto launcher) {
    return launcher(a.f1, a.ldf1, a.g1, a.ldg1, a.k1, a.f2, a.ldf2, a.g2, a.ldg2, a.k2, a.n, a.v,
                    a.col0, a.state, a.state_ld, a.args, a.args_ld, a.mom, a.row_work, a.shift,
                    a.stream);
  };
  if (block_rows == 128)
    return bf16 ? run(kernels::LseKlGemm<true, 128, true>)
                : run(kernels::LseKlGemm<false, 128, true>);
  if (block_rows == 64)
    return bf16 ? run(kernels::LseKlGemm<true, 64, true>)
                : run(kernels::LseKlGemm<false, 64, true>);
  return cudaErrorInvalidValue;
}

}  // namespace identirep
