// float32 instantiation of the CPU epilogues (one translation unit per dtype).
#include "kernels/jsd.h"
#include "kernels/lse_kl.h"

namespace identirep {
namespace kernels {
template void LseKlUpdate<float>(const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                                 int64_t, LseKlState, int,
                                 const LogitMoments*, const TopK*);
template void JsdUpdate<float>(const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                               const double*, const double*, double*, int);
}  // namespace kernels
}  // namespace identirep
