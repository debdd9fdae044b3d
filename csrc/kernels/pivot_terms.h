// Label-side d_LLV pivot search epilogue: for a block of B pivots y0 (rows) and all V labels y
// (columns), turn the cross products X_k(y0, y) = g_k(y0)' C_k g_k(y) into the pair terms and
// reduce each pivot row to its best-leave-out criterion.
//
//   S_k    = n_k(y) + n_k(y0) - 2 X_k(y0, y)             (= (N-1) Var_x[log p_k(y) - log p_k(y0)])
//   rest^2 = A1(y)/S1 + A2(y)/S2 - 2 B12(y)/sqrt(S1 S2)
//   piv^2  = A1(y0)/S1 + A2(y0)/S2 - 2 B12(y0)/sqrt(S1 S2)
//   a pair is excluded when y == y0 or S_k <= tol (n_k(y) + n_k(y0)) for k = 1 or 2.
// mode 0 ("max"): m(y) = max(rest, piv); criterion = second largest m over valid y
//                 (largest when one is valid, +inf when none).
// mode 1 ("mean"): s(y) = rest + piv; criterion = (sum s - max s) / (2 (count - 1))
//                 (sum / 2 when one is valid, +inf when none).
// Inputs: X1, X2 float32 or float64 (B x V) with row strides ld1, ld2; n1, n2, A1, A2, B12 float64 (V);
// pivots int64 (B). Output crit float64 (B). All arithmetic in float64; rows in parallel
// (OpenMP), each with a V-long scratch row.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace identirep {
namespace kernels {

struct PivotInputs {
  const void* X1;     // float32 or float64 (B x V), see x_f32
  int64_t ld1;
  const void* X2;
  int64_t ld2;
  bool x_f32;
  const double* n1;
  const double* n2;
  const double* A1;
  const double* A2;
  const double* B12;
  const int64_t* pivots;
  int64_t B;
  int64_t V;
  double tol;
  int mode;
};

// One pivot row. MODE 0 keeps max(rest^2, piv^2) (sqrt is monotone: taken on the top two
// only); MODE 1 keeps rest + piv. Excluded pairs get -inf.
template <typename T, int MODE>
inline void PivotRow(const PivotInputs& in, int64_t j, double* scratch, double* crit) {
  const int64_t V = in.V;
  const int64_t y0 = in.pivots[j];
  const T* x1 = static_cast<const T*>(in.X1) + j * in.ld1;
  const T* x2 = static_cast<const T*>(in.X2) + j * in.ld2;
  const double n10 = in.n1[y0], n20 = in.n2[y0];
  const double a10 = in.A1[y0], a20 = in.A2[y0], b0 = in.B12[y0];
  const double ninf = -std::numeric_limits<double>::infinity();
  const double* n1 = in.n1;
  const double* n2 = in.n2;
  const double* A1 = in.A1;
  const double* A2 = in.A2;
  const double* B12 = in.B12;
  const double tol = in.tol;
  int64_t count = 0;
#pragma omp simd reduction(+ : count)
  for (int64_t y = 0; y < V; ++y) {
    const double s1 = n1[y] + n10 - 2.0 * static_cast<double>(x1[y]);
    const double s2 = n2[y] + n20 - 2.0 * static_cast<double>(x2[y]);
    const bool ok = (y != y0) & (s1 > tol * (n1[y] + n10)) & (s2 > tol * (n2[y] + n20));
    const double i1 = 1.0 / s1, i2 = 1.0 / s2;
    const double c = 2.0 * std::sqrt(i1 * i2);
    const double r2 = A1[y] * i1 + A2[y] * i2 - B12[y] * c;
    const double p2 = a10 * i1 + a20 * i2 - b0 * c;
    double v;
    if (MODE == 0) {
      const double m2 = r2 > p2 ? r2 : p2;
      v = m2 > 0.0 ? m2 : 0.0;
    } else {
      v = std::sqrt(r2 > 0.0 ? r2 : 0.0) + std::sqrt(p2 > 0.0 ? p2 : 0.0);
    }
    scratch[y] = ok ? v : ninf;
    count += ok ? 1 : 0;
  }
  if (count == 0) {
    crit[j] = std::numeric_limits<double>::infinity();
    return;
  }
  double top = ninf;
  int64_t arg = 0;
  for (int64_t y = 0; y < V; ++y) {
    if (scratch[y] > top) {
      top = scratch[y];
      arg = y;
    }
  }
  if (MODE == 0) {
    if (count == 1) {
      crit[j] = std::sqrt(top);
      return;
    }
    double second = ninf;
#pragma omp simd reduction(max : second)
    for (int64_t y = 0; y < V; ++y) {
      const double v = y == arg ? ninf : scratch[y];
      second = v > second ? v : second;
    }
    crit[j] = std::sqrt(second);
  } else {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t y = 0; y < V; ++y) sum += scratch[y] == ninf ? 0.0 : scratch[y];
    crit[j] = count == 1 ? sum / 2.0 : (sum - top) / (2.0 * static_cast<double>(count - 1));
  }
}

template <typename T>
inline void PivotRows(const PivotInputs& in, double* crit) {
#pragma omp parallel
  {
    std::vector<double> scratch(static_cast<size_t>(in.V));
#pragma omp for schedule(static)
    for (int64_t j = 0; j < in.B; ++j) {
      if (in.mode == 0)
        PivotRow<T, 0>(in, j, scratch.data(), crit);
      else
        PivotRow<T, 1>(in, j, scratch.data(), crit);
    }
  }
}

// Launcher: fills crit for all B pivots. Returns 0.
inline int PivotCriteria(const PivotInputs& in, double* crit) {
  if (in.x_f32)
    PivotRows<float>(in, crit);
  else
    PivotRows<double>(in, crit);
  return 0;
}

// Lower bounds for the bounded pivot search (engine.PairEngine._bounded_search): for pivot
// rows j and a list of K labels (columns; global indices labels[k], distinct), the second
// largest of max(rest^2, piv^2) - slack over the columns with labels[k] != y0 and
// S_k > tol (n_k(y) + n_k(y0)) (tol: the degenerate tolerance times a safety factor), as its
// square root; 0 with fewer than two such columns. slack = eps * size * (1 + s1/S1 + s2/S2),
// size = the larger of A1/S1 + A2/S2 + 2|B12|/sqrt(S1 S2) for y and for y0, s_k = n_k(y) +
// n_k(y0): the rounding allowance between these products and the pivot kernel's. The same
// arithmetic as PairEngine._pair_m2, which is its oracle and its GPU twin.
struct BoundInputs {
  PivotInputs p;          // X1, X2 are B x K here (p.V = K label columns); p.mode is unused
  const int64_t* labels;  // (K) global label indices of the columns
  double eps;
};

template <typename T>
inline double BoundRow(const BoundInputs& b, int64_t j) {
  const PivotInputs& in = b.p;
  const int64_t y0 = in.pivots[j];
  const T* x1 = static_cast<const T*>(in.X1) + j * in.ld1;
  const T* x2 = static_cast<const T*>(in.X2) + j * in.ld2;
  const double n10 = in.n1[y0], n20 = in.n2[y0];
  const double a10 = in.A1[y0], a20 = in.A2[y0], b0 = in.B12[y0];
  double top = -1.0, second = -1.0;  // m^2 - slack is clipped at 0, so -1 means none
  for (int64_t k = 0; k < in.V; ++k) {
    const int64_t y = b.labels[k];
    const double s1 = in.n1[y] + n10, s2 = in.n2[y] + n20;
    const double S1 = s1 - 2.0 * static_cast<double>(x1[k]);
    const double S2 = s2 - 2.0 * static_cast<double>(x2[k]);
    if (y == y0 || !(S1 > in.tol * s1) || !(S2 > in.tol * s2)) continue;
    const double i1 = 1.0 / S1, i2 = 1.0 / S2;
    const double c = 2.0 * std::sqrt(i1 * i2);
    const double a1 = in.A1[y], a2 = in.A2[y], by = in.B12[y];
    const double r2 = a1 * i1 + a2 * i2 - by * c;
    const double p2 = a10 * i1 + a20 * i2 - b0 * c;
    const double sr = a1 * i1 + a2 * i2 + std::fabs(by) * c;
    const double sp = a10 * i1 + a20 * i2 + std::fabs(b0) * c;
    const double slack = b.eps * (sr > sp ? sr : sp) * (1.0 + s1 * i1 + s2 * i2);
    double m2 = (r2 > p2 ? r2 : p2) - slack;
    m2 = m2 > 0.0 ? m2 : 0.0;
    if (m2 > top) {
      second = top;
      top = m2;
    } else if (m2 > second) {
      second = m2;
    }
  }
  return second < 0.0 ? 0.0 : std::sqrt(second);
}

// Launcher: fills lb for all B pivot rows (OpenMP over rows). Returns 0.
inline int PivotBounds(const BoundInputs& b, double* lb) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < b.p.B; ++j)
    lb[j] = b.p.x_f32 ? BoundRow<float>(b, j) : BoundRow<double>(b, j);
  return 0;
}

}  // namespace kernels
}  // namespace identirep
