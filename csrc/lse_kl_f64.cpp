// float64 instantiation of the CPU epilogues (one translation unit per dtype).
#include "kernels/jsd.h"
#include "kernels/lse_kl.h"

namespace identirep {
namespace kernels {
template void LseKlUpdate<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                  int64_t, int64_t, LseKlState, int,
                                  const LogitMoments*, const TopK*);
template void JsdUpdate<double>(const double*, int64_t, const double*, int64_t, int64_t, int64_t,
                                const double*, const double*, double*, int);
}  // namespace kernels
}  // namespace identirep
