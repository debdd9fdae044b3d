// float64 instantiation of the CUDA epilogue launcher (one translation unit per dtype).
#include "kernels/lse_kl.cuh"

namespace identirep {
namespace kernels {
template cudaError_t LseKl<double>(const double*, Index, const double*, Index, Index, Index,
                                   Index, double*, Index, Index*, Index,
                                   const DeviceLogitMoments&, cudaStream_t);
template cudaError_t LseKlFused<double>(const double*, Index, const double*, Index, Index, Index, Index,
                                     double*, Index, Index*, Index, const DeviceLogitMoments&,
                                     double*, cudaStream_t);
}  // namespace kernels
}  // namespace identirep
