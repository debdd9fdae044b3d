// Fused streaming epilogue: online log-sum-exp of two models plus the running sums that give
// KL(p1||p2), KL(p2||p1), both entropies and top-1 agreement, one logit tile at a time.
//
// Inputs: two logit tiles l1, l2 (n rows = inputs x, v columns = labels col0 .. col0+v-1, taken
// from the same rows and the same label columns), float32 or float64, row stride ld (elements),
// unit stride along a row.
//
// State (float64), one column per input row i, row r at state[r*state_ld + i]:
//   r=0 m1   running max of l1 over the labels seen        (initial -inf)
//   r=1 s1   sum exp(l1 - m1)                              (initial 0)
//   r=2 a12  sum exp(l1 - m1) * (l1 - l2)                  (initial 0)
//   r=3 e1   sum exp(l1 - m1) * (l1 - m1)                  (initial 0)
//   r=4..7   m2, s2, a21 = sum exp(l2 - m2) * (l2 - l1), e2 (same for model 2)
// args (int64), row r at args[r*args_ld + i]: r=0 arg1, r=1 arg2, the global label index of the
// row max of l1 / l2 (initial -1). Ties keep the first index, provided tiles of one row arrive
// in increasing col0 order.
//
// When the max of a row moves from m to m', the sums are rescaled by c = exp(m - m') and the
// entropy sum gets the shift correction: e <- c * (e + (m - m') * s).
// Finalisation: L = m + log s, KL12 = a12/s1 - L1 + L2, KL21 = a21/s2 - L2 + L1,
// H = log s - e/s, top-1 agreement = (arg1 == arg2).
//
// Accumulation: float64 tiles in float64 with a vectorised float64 exp (~1 ulp). float32 tiles
// use a vectorised float32 exp (Cody-Waite range reduction + degree-6 polynomial, ~1 ulp,
// arguments below -87.5 flush to 0) and float32 partial sums over chunks of kChunk labels, added
// into float64 per chunk.
// Rows run in parallel (OpenMP); each row is read twice (max pass, then sums pass) while in cache.
//
// Optional per-row top-k (TopK, below), folded in from the same tiles: each model's k largest
// logits of each row with their global label ids, in decreasing order, ties to the lower label
// id, NaN never entering. Kept sorted in caller-owned state: values (float64, initial -inf) and
// ids (int64, initial -1; a slot with id -1 is empty, and the filled slots come first). The
// maxima of a row's blocks of 256 labels come from the read that finds its maximum (for the
// log-sum-exp). A row whose tile maximum is not above its current k-th value is skipped;
// otherwise only the blocks, then sub-blocks of 16, whose maximum can enter are read label by
// label; where more than k blocks could, the k-th largest block maximum (of up to 64 blocks)
// bounds the candidates from below (k labels of those blocks are at least that). The rare
// logits that enter are inserted one by one. An equal logit never enters, which keeps the
// lower id because a row's tiles arrive in increasing col0 order (as for args).
//
// The Jensen-Shannon divergence needs both log-normalisers before its first term: it is a
// second pass over the same tiles, with its own epilogue (kernels/jsd.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace identirep {
namespace kernels {

// Optional logit moments, updated in the same pass (members may be null to skip):
//   row (5 x row_ld): over the labels seen so far (count col0) of each input row i:
//     mean l1, mean l2, sum (l1 - mean)^2, sum (l2 - mean)^2, sum (d - mean d)^2, d = l1 - l2;
//   col (5 x col_ld), indexed by the global label col0 + j: over the inputs seen so far (count
//     row0) of each label: mean l1, mean l2, sum (l1 - mean)^2, sum (l2 - mean)^2,
//     sum (l1 - mean)(l2 - mean).
// Tiles are folded in with Chan's update, so rows must arrive in increasing col0 order and
// columns in increasing row0 order (contiguous from 0). Column sums are shifted by the tile's
// first row and accumulated in float64 per thread.
struct LogitMoments {
  double* row;
  int64_t row_ld;
  double* col;
  int64_t col_ld;
  int64_t row0;
};

// Per-row top-k state of both models: model r (0, 1), row i, slot q (0 .. k-1) at
// values[r*model_ld + i*k + q] and ids[r*model_ld + i*k + q] (one layout for both arrays).
struct TopK {
  double* values;
  int64_t* ids;
  int64_t k;          // >= 1
  int64_t model_ld;   // elements between the two models' blocks, |model_ld| >= n*k
};

struct LseKlState {
  double* state;       // 8 rows, see above
  int64_t state_ld;    // row stride of state (elements), >= n
  int64_t* args;       // 2 rows
  int64_t args_ld;     // row stride of args (elements), >= n
};

namespace detail {

constexpr int64_t kChunk = 512;        // float32 partial sums over at most this many labels
constexpr int64_t kParallelWork = 1 << 15;  // below this many tile elements, stay on one thread

inline float BitsToFloat(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t FloatToBits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

inline double BitsToDouble(int64_t i) {
  double f;
  std::memcpy(&f, &i, sizeof i);
  return f;
}

inline int64_t DoubleToBits(double f) {
  int64_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// exp(x) for float32 x <= 0, branch-free so that it vectorises inside `omp simd` loops.
// Relative error ~1 ulp down to x = -87.3; x < -87.5 returns 0 (e^x < 1e-38 there). NaN in,
// NaN out; x > 0 is outside its domain.
inline float ExpNonPositiveF32(float x) {
  // n = round(x / ln 2) with the 1.5 * 2^23 shifter: its low mantissa bits hold n.
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const int32_t n = FloatToBits(t) - FloatToBits(shifter);
  const float nf = t - shifter;
  float r = x - nf * 0.693359375f;  // Cody-Waite: ln 2 = 0.693359375 - 2.12194440e-4
  r = r + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  // 2^n by building the exponent field (n >= -127 here; -127 gives +0).
  const float scale = BitsToFloat(static_cast<int32_t>(static_cast<uint32_t>(n + 127) << 23));
  return x < -87.5f ? 0.0f : er * scale;
}

// The reduction of the float64 exps (ExpNonPositiveF64, and ExpM1NonPositiveF64 in jsd.h):
// x = n ln 2 + r with fdlibm's two-part ln 2, |r| <= ln(2)/2; returns e^r - 1 = p r^2 + r by
// the degree-13 Taylor polynomial (truncation < 1e-17) and sets *scale = 2^n (n >= -1023).
inline double ExpReducedF64(double x, double* scale) {
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634 + shifter;
  const int64_t n = DoubleToBits(t) - DoubleToBits(shifter);
  const double nf = t - shifter;
  double r = x - nf * 6.93147180369123816490e-01;
  r = r - nf * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  *scale = BitsToDouble(static_cast<int64_t>(static_cast<uint64_t>(n + 1023) << 52));
  return p * r * r + r;
}

// exp(x) for float64 x <= 0, the same scheme as the float32 one (ExpReducedF64), ~1 ulp.
// x < -708 returns 0.
inline double ExpNonPositiveF64(double x) {
  double scale;
  const double er = ExpReducedF64(x, &scale) + 1.0;
  return x < -708.0 ? 0.0 : er * scale;
}

// Index of the first element equal to `target` in x[0..v), or -1.
template <typename T>
inline int64_t FindFirst(const T* x, int64_t v, T target) {
  constexpr int64_t kBlock = 64;
  int64_t j0 = 0;
  for (; j0 + kBlock <= v; j0 += kBlock) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t k = 0; k < kBlock; ++k) hit |= (x[j0 + k] == target);
    if (hit) break;
  }
  for (int64_t j = j0; j < v; ++j)
    if (x[j] == target) return j;
  return -1;
}

template <typename T>
inline void TileMax(const T* x1, const T* x2, int64_t v, T* mx1, T* mx2) {
  T a = -std::numeric_limits<T>::infinity();
  T b = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : a, b)
  for (int64_t j = 0; j < v; ++j) {
    a = x1[j] > a ? x1[j] : a;
    b = x2[j] > b ? x2[j] : b;
  }
  *mx1 = a;
  *mx2 = b;
}

// Sums of one tile row relative to the maxima m1, m2:
// out = {s1, a12, e1, s2, a21, e2}.
inline void TileSums(const float* x1, const float* x2, int64_t v, double m1, double m2,
                     double out[6]) {
  const float mf1 = static_cast<float>(m1);  // exact: m is always one of the float logits
  const float mf2 = static_cast<float>(m2);
  double acc[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t c0 = 0; c0 < v; c0 += kChunk) {
    const int64_t c1 = c0 + kChunk < v ? c0 + kChunk : v;
    float s1 = 0, a12 = 0, e1 = 0, s2 = 0, a21 = 0, e2 = 0;
#pragma omp simd reduction(+ : s1, a12, e1, s2, a21, e2)
    for (int64_t j = c0; j < c1; ++j) {
      const float d1 = x1[j] - mf1;
      const float d2 = x2[j] - mf2;
      const float diff = x1[j] - x2[j];
      const float w1 = ExpNonPositiveF32(d1);
      const float w2 = ExpNonPositiveF32(d2);
      s1 += w1;
      a12 += w1 * diff;
      e1 += w1 * d1;
      s2 += w2;
      a21 -= w2 * diff;
      e2 += w2 * d2;
    }
    acc[0] += s1; acc[1] += a12; acc[2] += e1;
    acc[3] += s2; acc[4] += a21; acc[5] += e2;
  }
  for (int k = 0; k < 6; ++k) out[k] = acc[k];
}

inline void TileSums(const double* x1, const double* x2, int64_t v, double m1, double m2,
                     double out[6]) {
  double s1 = 0, a12 = 0, e1 = 0, s2 = 0, a21 = 0, e2 = 0;
#pragma omp simd reduction(+ : s1, a12, e1, s2, a21, e2)
  for (int64_t j = 0; j < v; ++j) {
    const double d1 = x1[j] - m1;
    const double d2 = x2[j] - m2;
    const double diff = x1[j] - x2[j];
    const double w1 = ExpNonPositiveF64(d1);
    const double w2 = ExpNonPositiveF64(d2);
    s1 += w1;
    a12 += w1 * diff;
    e1 += w1 * d1;
    s2 += w2;
    a21 -= w2 * diff;
    e2 += w2 * d2;
  }
  out[0] = s1; out[1] = a12; out[2] = e1;
  out[3] = s2; out[4] = a21; out[5] = e2;
}

// Move one model's running sums from max m to max m_new >= m.
inline void Rescale(double m, double m_new, double* s, double* a, double* e) {
  if (*s == 0.0 || m == m_new) return;  // also covers m = -inf (nothing accumulated yet)
  const double c = std::exp(m - m_new);
  *e = c * (*e + (m - m_new) * *s);
  *s *= c;
  *a *= c;
}

// Fold one row of both tiles, whose maxima (NaN ignored) are t1, t2, into the state.
template <typename T>
inline void UpdateRow(const T* x1, const T* x2, int64_t v, int64_t col0, int64_t i,
                      const LseKlState& st, T t1, T t2) {
  double* m1 = st.state + 0 * st.state_ld + i;
  double* s1 = st.state + 1 * st.state_ld + i;
  double* a12 = st.state + 2 * st.state_ld + i;
  double* e1 = st.state + 3 * st.state_ld + i;
  double* m2 = st.state + 4 * st.state_ld + i;
  double* s2 = st.state + 5 * st.state_ld + i;
  double* a21 = st.state + 6 * st.state_ld + i;
  double* e2 = st.state + 7 * st.state_ld + i;

  const double n1 = std::fmax(*m1, static_cast<double>(t1));
  const double n2 = std::fmax(*m2, static_cast<double>(t2));
  // A row of -inf logits (or NaN) cannot be normalised; leave its state untouched.
  if (!(n1 > -std::numeric_limits<double>::infinity()) ||
      !(n2 > -std::numeric_limits<double>::infinity()))
    return;
  if (static_cast<double>(t1) > *m1) {
    const int64_t j = FindFirst(x1, v, t1);
    if (j >= 0) st.args[i] = col0 + j;
  }
  if (static_cast<double>(t2) > *m2) {
    const int64_t j = FindFirst(x2, v, t2);
    if (j >= 0) st.args[st.args_ld + i] = col0 + j;
  }
  Rescale(*m1, n1, s1, a12, e1);
  Rescale(*m2, n2, s2, a21, e2);
  *m1 = n1;
  *m2 = n2;

  double sums[6];
  TileSums(x1, x2, v, n1, n2, sums);
  *s1 += sums[0]; *a12 += sums[1]; *e1 += sums[2];
  *s2 += sums[3]; *a21 += sums[4]; *e2 += sums[5];
}

// Insert logit x of label id into the decreasing list val/ids of *count <= k entries, after
// every entry >= x (the entries hold lower ids); dropped when it would land past slot k-1.
inline void TopKInsert(double x, int64_t id, double* val, int64_t* ids, int64_t k,
                       int64_t* count) {
  const int64_t c = *count;
  int64_t p = c;
  while (p > 0 && val[p - 1] < x) --p;
  if (p >= k) return;
  for (int64_t q = (c < k ? c : k - 1); q > p; --q) {
    val[q] = val[q - 1];
    ids[q] = ids[q - 1];
  }
  val[p] = x;
  ids[p] = id;
  if (c < k) *count = c + 1;
}

// The largest T not above the double d (d is a logit of this tile's dtype, so usually exact;
// NaN stays NaN, and no value out of T's range is converted).
template <typename T>
inline T NotAbove(double d) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  constexpr double kHi = static_cast<double>(std::numeric_limits<T>::max());
  if (std::isnan(d)) return std::numeric_limits<T>::quiet_NaN();
  if (d > kHi) return d == std::numeric_limits<double>::infinity() ? kInf
                                                                   : std::numeric_limits<T>::max();
  if (d < -kHi) return -kInf;
  T t = static_cast<T>(d);
  if (static_cast<double>(t) > d) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// The largest of x[0..n) (NaN ignored; -inf for none).
template <typename T>
inline T BlockMax(const T* x, int64_t n) {
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t q = 0; q < n; ++q) mx = x[q] > mx ? x[q] : mx;
  return mx;
}

constexpr int64_t kTopKBlock = 256;  // labels per vectorised threshold test
constexpr int64_t kTopKSub = 16;     // and per sub-block of a block that passes it
constexpr int64_t kTopKChunk = 64;   // blocks whose maxima bound the candidates together

// The maxima of both tile rows' blocks of kTopKBlock labels (bm1, bm2: ceil(v / kTopKBlock)
// each), read once for both; *t1, *t2 get the rows' maxima (NaN ignored, as TileMax's).
template <typename T>
inline void TileBlockMax(const T* x1, const T* x2, int64_t v, T* bm1, T* bm2, T* t1, T* t2) {
  T a = -std::numeric_limits<T>::infinity();
  T b = a;
  for (int64_t j = 0, q = 0; j < v; j += kTopKBlock, ++q) {
    const int64_t w = j + kTopKBlock < v ? kTopKBlock : v - j;
    T m1 = -std::numeric_limits<T>::infinity();
    T m2 = m1;
#pragma omp simd reduction(max : m1, m2)
    for (int64_t r = 0; r < w; ++r) {
      m1 = x1[j + r] > m1 ? x1[j + r] : m1;
      m2 = x2[j + r] > m2 ? x2[j + r] : m2;
    }
    bm1[q] = m1;
    bm2[q] = m2;
    a = m1 > a ? m1 : a;
    b = m2 > b ? m2 : b;
  }
  *t1 = a;
  *t2 = b;
}

// Fold one tile row x[0..v) (labels col0 ..), whose largest value is tmax and whose blocks of
// kTopKBlock labels have the maxima bm, into a row's top-k list (val, ids, k slots).
// Per chunk of up to kTopKChunk blocks: where more than k blocks could hold a candidate, the
// k-th largest of their maxima, lo, bounds the candidates from below (k labels of the chunk
// are >= lo, so a label below it cannot be among the k largest); then the blocks, their
// sub-blocks and labels that can enter, in label order.
template <typename T>
inline void TopKRow(const T* x, int64_t v, int64_t col0, double* val, int64_t* ids,
                    int64_t k, T tmax, const T* bm) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  int64_t count = 0;
  while (count < k && ids[count] >= 0) ++count;
  T thr = count < k ? kNegInf : NotAbove<T>(val[k - 1]);
  if (count == k && !(tmax > thr)) return;  // nothing in this tile row can enter
  T open[kTopKChunk];
  for (int64_t c0 = 0, b0 = 0; c0 < v; c0 += kTopKChunk * kTopKBlock, b0 += kTopKChunk) {
    const int64_t c1 = c0 + kTopKChunk * kTopKBlock < v ? c0 + kTopKChunk * kTopKBlock : v;
    const int64_t nb = (c1 - c0 + kTopKBlock - 1) / kTopKBlock;
    int64_t n_open = 0;
    for (int64_t b = 0; b < nb; ++b)
      if (count < k || bm[b0 + b] > thr) open[n_open++] = bm[b0 + b];
    T lo = kNegInf;
    if (n_open > k) {
      std::nth_element(open, open + (k - 1), open + n_open, [](T a, T b) { return a > b; });
      lo = open[k - 1];
    }
    // a value that can enter: >= lo, and above the k-th value once the list is full (NaN
    // never: it fails x >= lo)
    auto enters = [&](T y) { return y >= lo && (count < k || y > thr); };
    for (int64_t b = 0; b < nb; ++b) {
      if (!enters(bm[b0 + b])) continue;
      const int64_t j = c0 + b * kTopKBlock;
      const int64_t e = j + kTopKBlock < c1 ? j + kTopKBlock : c1;
      for (int64_t s0 = j; s0 < e; s0 += kTopKSub) {
        const int64_t s1 = s0 + kTopKSub < e ? s0 + kTopKSub : e;
        if (!enters(BlockMax(x + s0, s1 - s0))) continue;
        for (int64_t q = s0; q < s1; ++q) {
          if (enters(x[q])) {
            TopKInsert(static_cast<double>(x[q]), col0 + q, val, ids, k, &count);
            if (count == k) thr = NotAbove<T>(val[k - 1]);
          }
        }
      }
    }
  }
}

// Chan's update of (count na, mean a, sum sq) with a batch (nb, mean b, sum sq).
inline void ChanMerge(double na, double nb, double mb, double qb, double* ma, double* qa) {
  const double n = na + nb;
  const double delta = mb - *ma;
  *ma += delta * (nb / n);
  *qa += qb + delta * delta * (na * nb / n);
}

template <typename T>
inline void RowMomentsUpdate(const T* x1, const T* x2, int64_t v, int64_t col0, int64_t i,
                             const LogitMoments& mom) {
  double s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < v; ++j) {
    s1 += static_cast<double>(x1[j]);
    s2 += static_cast<double>(x2[j]);
  }
  const double mu1 = s1 / v, mu2 = s2 / v, mud = mu1 - mu2;
  double q11 = 0, q22 = 0, qdd = 0;
#pragma omp simd reduction(+ : q11, q22, qdd)
  for (int64_t j = 0; j < v; ++j) {
    const double c1 = static_cast<double>(x1[j]) - mu1;
    const double c2 = static_cast<double>(x2[j]) - mu2;
    const double cd = c1 - c2;
    q11 += c1 * c1;
    q22 += c2 * c2;
    qdd += cd * cd;
  }
  double* r = mom.row + i;
  const int64_t ld = mom.row_ld;
  if (col0 == 0) {
    r[0] = mu1; r[ld] = mu2; r[2 * ld] = q11; r[3 * ld] = q22; r[4 * ld] = qdd;
    return;
  }
  const double na = static_cast<double>(col0), nb = static_cast<double>(v);
  const double dd = mud - (r[0] - r[ld]);  // shift of the mean of d, before r[0], r[ld] move
  ChanMerge(na, nb, mu1, q11, &r[0], &r[2 * ld]);
  ChanMerge(na, nb, mu2, q22, &r[ld], &r[3 * ld]);
  r[4 * ld] += qdd + dd * dd * (na * nb / (na + nb));
}

// Shifted column sums (acc rows [s1, s2, q11, q22, q12] relative to the tile's first row)
// over rows [i0, i1) of a tile, a block of kColBlock columns at a time, so the
// five accumulator rows of the block stay in L1 while the rows stream past.
constexpr int64_t kColBlock = 512;
constexpr int64_t kColGroupRows = 16;  // rows per column-sum group (LseKlUpdate)

template <typename T>
inline void ColAccumulateRows(const T* l1, int64_t ld1, const T* l2, int64_t ld2, int64_t i0,
                              int64_t i1, int64_t v, double* acc) {
  for (int64_t c0 = 0; c0 < v; c0 += kColBlock) {
    const int64_t w = c0 + kColBlock < v ? kColBlock : v - c0;
    double* a0 = acc + c0;
    double* a1 = acc + v + c0;
    double* a2 = acc + 2 * v + c0;
    double* a3 = acc + 3 * v + c0;
    double* a4 = acc + 4 * v + c0;
    const T* k1 = l1 + c0;
    const T* k2 = l2 + c0;
    for (int64_t i = i0; i < i1; ++i) {
      const T* x1 = l1 + i * ld1 + c0;
      const T* x2 = l2 + i * ld2 + c0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        const double d1 = static_cast<double>(x1[j]) - static_cast<double>(k1[j]);
        const double d2 = static_cast<double>(x2[j]) - static_cast<double>(k2[j]);
        a0[j] += d1;
        a1[j] += d2;
        a2[j] += d1 * d1;
        a3[j] += d2 * d2;
        a4[j] += d1 * d2;
      }
    }
  }
}

// Fold a tile's shifted column sums (n rows, shifts k1, k2) into the column moments: writes
// labels col0 .. col0+v-1 of mom.col, which the caller has checked lie inside it.
template <typename T>
inline void ColMerge(const double* acc, const T* k1, const T* k2, int64_t n, int64_t v,
                     int64_t col0, const LogitMoments& mom) {
  const double nb = static_cast<double>(n), na = static_cast<double>(mom.row0);
  const int64_t ld = mom.col_ld;
  for (int64_t j = 0; j < v; ++j) {
    const double s1 = acc[j], s2 = acc[v + j];
    const double mb1 = static_cast<double>(k1[j]) + s1 / nb;
    const double mb2 = static_cast<double>(k2[j]) + s2 / nb;
    const double q11 = acc[2 * v + j] - s1 * s1 / nb;
    const double q22 = acc[3 * v + j] - s2 * s2 / nb;
    const double q12 = acc[4 * v + j] - s1 * s2 / nb;
    double* c = mom.col + col0 + j;
    if (mom.row0 == 0) {
      c[0] = mb1; c[ld] = mb2; c[2 * ld] = q11; c[3 * ld] = q22; c[4 * ld] = q12;
      continue;
    }
    const double f = na * nb / (na + nb);
    const double d1 = mb1 - c[0], d2 = mb2 - c[ld];
    c[0] += d1 * (nb / (na + nb));
    c[ld] += d2 * (nb / (na + nb));
    c[2 * ld] += q11 + d1 * d1 * f;
    c[3 * ld] += q22 + d2 * d2 * f;
    c[4 * ld] += q12 + d1 * d2 * f;
  }
}

// Threads for an n x v tile: `threads` caps the OpenMP default (0: the default), and no more
// threads than rows (a count beyond them would only have the runtime allocate, or fail to
// start, idle threads); one for a tile of fewer than kParallelWork elements or without OpenMP.
inline int TileThreads(int threads, int64_t n, int64_t v) {
#ifdef _OPENMP
  const int most = omp_get_max_threads();
  int nt = threads > 0 && threads < most ? threads : most;
  if (nt > n) nt = static_cast<int>(n);
  // n * v < kParallelWork, without forming n * v
  if (n < 2 || v <= (kParallelWork - 1) / n) nt = 1;
  return nt;
#else
  (void)threads;
  (void)n;
  (void)v;
  return 1;
#endif
}

}  // namespace detail

// Update the state with one pair of logit tiles (n x v, row strides ld1, ld2). Host code,
// parallel over rows when built with OpenMP: `threads` > 0 caps the thread count (at most the
// OpenMP default and n), 0 takes the OpenMP default; small tiles run on the calling thread.
// The caller checks the ranges (csrc/lse_kl.cpp): col0 + v fits in int64 (args get col0 + j),
// and with column moments, labels col0 .. col0+v-1 lie inside their col_ld-wide rows.
// `topk` (optional): each model's per-row top-k, for rows 0 .. n-1 of its state.
template <typename T>
void LseKlUpdate(const T* l1, int64_t ld1, const T* l2, int64_t ld2, int64_t n, int64_t v,
                 int64_t col0, LseKlState st, int threads = 0,
                 const LogitMoments* mom = nullptr, const TopK* topk = nullptr) {
  if (n <= 0 || v <= 0) return;
  const bool rows = mom != nullptr && mom->row != nullptr;
  const bool cols = mom != nullptr && mom->col != nullptr;
  std::vector<double> total(cols ? 5 * v : 0, 0.0);
  const int nt = detail::TileThreads(threads, n, v);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
  {
    std::vector<double> acc(cols && nt > 1 ? 5 * v : 0, 0.0);
    const int64_t nb = (v + detail::kTopKBlock - 1) / detail::kTopKBlock;
    std::vector<T> bm(topk != nullptr ? 2 * nb : 0);  // both rows' block maxima (top-k)
    double* a = cols ? (nt > 1 ? acc.data() : total.data()) : nullptr;
    int64_t tid = 0, nth = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    const int64_t i0 = n * tid / nth, i1 = n * (tid + 1) / nth;  // a static schedule
    // Groups of rows: the column sums read a group right after the row passes, from cache
    // (same order of rows per column as one call over [i0, i1)).
    for (int64_t r0 = i0; r0 < i1; r0 += detail::kColGroupRows) {
      const int64_t r1 = r0 + detail::kColGroupRows < i1 ? r0 + detail::kColGroupRows : i1;
      for (int64_t i = r0; i < r1; ++i) {
        const T* x1 = l1 + i * ld1;
        const T* x2 = l2 + i * ld2;
        T t1, t2;
        if (topk != nullptr)  // the row maxima from the block maxima, in the same read
          detail::TileBlockMax(x1, x2, v, bm.data(), bm.data() + nb, &t1, &t2);
        else
          detail::TileMax(x1, x2, v, &t1, &t2);
        detail::UpdateRow(x1, x2, v, col0, i, st, t1, t2);
        if (rows) detail::RowMomentsUpdate(x1, x2, v, col0, i, *mom);
        if (topk != nullptr) {
          const int64_t o = i * topk->k;
          detail::TopKRow(x1, v, col0, topk->values + o, topk->ids + o, topk->k, t1,
                          bm.data());
          const int64_t o2 = o + topk->model_ld;
          detail::TopKRow(x2, v, col0, topk->values + o2, topk->ids + o2, topk->k, t2,
                          bm.data() + nb);
        }
      }
      if (cols) detail::ColAccumulateRows(l1, ld1, l2, ld2, r0, r1, v, a);
    }
    if (cols && nt > 1) {
#ifdef _OPENMP
#pragma omp critical
#endif
      for (int64_t j = 0; j < 5 * v; ++j) total[j] += acc[j];
    }
  }
  if (cols) detail::ColMerge(total.data(), l1, l2, n, v, col0, *mom);
}

}  // namespace kernels
}  // namespace identirep
