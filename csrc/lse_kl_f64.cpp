// float64 instantiation of the CPU epilogue (one translation unit per dtype).
#include "kernels/lse_kl.h"

namespace identirep {
namespace kernels {
template void LseKlUpdate<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                  int64_t, int64_t, LseKlState, int,
                                 const LogitMoments*);
}  // namespace kernels
}  // namespace identirep
