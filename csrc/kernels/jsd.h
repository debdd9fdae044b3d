// Jensen-Shannon divergence epilogue: the second streaming pass, given both models'
// log-normalisers L1, L2 from the first (kernels/lse_kl.h).
//
// Per input row i, over the labels of the tiles folded in:
//   JSD(x) = 0.5 KL(p1||m) + 0.5 KL(p2||m),  m = (p1 + p2) / 2,  p_k = exp(l_k - L_k(x)),
// in nats, a term with p = 0 counting 0. out[i] += the sum over one tile's labels.
//
// Per label, with lp_k = l_k - L_k, a = |lp1 - lp2|, u = exp(-a) and t = tanh(a/2) =
// (1 - u)/(1 + u), the two terms of the larger probability P = exp(max(lp1, lp2)) and the
// smaller P u add up to
//   p1 log(p1/m) + p2 log(p2/m) = P [(1 + u) log(2/(1 + u)) - a u] = P h(t) / (1 + t),
//   h(t) = (1 + t) log(1 + t) + (1 - t) log(1 - t) = t a + log1p(-t^2)
//                                                  = log 4 - 2 a u/(1 + u) - 2 log1p(u),
// a sum of positive terms t^2 + t^4/6 + ... that the first form keeps (no cancellation of the
// O(a) parts that the plain p1 log(p1/m) + p2 log(p2/m) cancels); the first form for a <= 1.1,
// the second beyond (t -> 1 as a grows). log1p(z) = 2 atanh(z / (2 + z)) by its series
// (|z/(2 + z)| <= 0.144 on both branches, 10 terms, < 1e-17 truncation), 1 - u = -expm1(-a)
// from the exp's own polynomial (no cancellation for small a): each label's term to a few ulp
// of its exact value given lp1, lp2 (tests/test_per_token_pass.py checks it against mpmath).
// float32 and float64 tiles alike are evaluated and summed in float64, vectorised.
#pragma once

#include <cmath>
#include <cstdint>

#include "lse_kl.h"

namespace identirep {
namespace kernels {
namespace detail {

// e^x - 1 for float64 x <= 0 (-1 below -708): ExpNonPositiveF64's reduction, with
// e^x - 1 = 2^n (e^r - 1) + (2^n - 1) and e^r - 1 kept apart from the 1, so small |x| loses
// nothing to cancellation. ~1 ulp.
inline double ExpM1NonPositiveF64(double x) {
  double scale;
  const double em = ExpReducedF64(x, &scale);
  return x < -708.0 ? -1.0 : scale * em + (scale - 1.0);
}

constexpr double kJsdSplit = 1.1;  // a at which h(t) changes form (see above)

// p1 log(p1/m) + p2 log(p2/m) for one label, from lp1 = log p1, lp2 = log p2 (twice its JSD
// term). 0 where both probabilities are 0; NaN in, NaN out.
inline double JsdPairTerm(double lp1, double lp2) {
  const double mx = lp1 > lp2 ? lp1 : lp2;
  const double a = std::fabs(lp1 - lp2);
  const double big = ExpNonPositiveF64(mx);
  const double em = ExpM1NonPositiveF64(-a);  // u - 1
  const double u = 1.0 + em;
  const double t = -em / (2.0 + em);
  const bool small = a <= kJsdSplit;
  const double z = small ? -t * t : u;
  const double s = z / (2.0 + z);
  const double s2 = s * s;
  double q = 0.0;  // sum_k s2^k / (2k + 1), k = 1 .. 9, by Horner
  for (int k = 9; k >= 1; --k) q = (q + 1.0 / (2 * k + 1)) * s2;
  const double lg = 2.0 * s + 2.0 * s * q;  // log1p(z)
  const double au = u > 0.0 ? a * u / (1.0 + u) : 0.0;  // a = inf where u = 0
  const double h = small ? t * a + lg : 1.3862943611198906 - 2.0 * au - 2.0 * lg;
  const double term = big * (h / (1.0 + t));
  return big == 0.0 ? 0.0 : term;
}

template <typename T>
inline double JsdRow(const T* x1, const T* x2, int64_t v, double L1, double L2) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < v; ++j)
    acc += JsdPairTerm(static_cast<double>(x1[j]) - L1, static_cast<double>(x2[j]) - L2);
  return 0.5 * acc;
}

}  // namespace detail

// Add each row's JSD over this tile's labels to out[i] (n x v tiles, row strides ld1, ld2;
// L1, L2, out: n values each, unit stride). Threads as LseKlUpdate's.
template <typename T>
void JsdUpdate(const T* l1, int64_t ld1, const T* l2, int64_t ld2, int64_t n, int64_t v,
               const double* L1, const double* L2, double* out, int threads = 0) {
  if (n <= 0 || v <= 0) return;
  const int nt = detail::TileThreads(threads, n, v);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
#endif
  for (int64_t i = 0; i < n; ++i)
    out[i] += detail::JsdRow(l1 + i * ld1, l2 + i * ld2, v, L1[i], L2[i]);
}

}  // namespace kernels
}  // namespace identirep
