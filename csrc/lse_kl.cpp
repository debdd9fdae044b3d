// Argument checks and dtype dispatch for the CPU fused epilogues (kernels/lse_kl.h, jsd.h).
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "kernels/jsd.h"
#include "kernels/lse_kl.h"
#include "ops.h"

namespace identirep {
namespace kernels {
extern template void LseKlUpdate<float>(const float*, int64_t, const float*, int64_t, int64_t,
                                        int64_t, int64_t, LseKlState, int,
                                        const LogitMoments*, const TopK*);
extern template void LseKlUpdate<double>(const double*, int64_t, const double*, int64_t,
                                         int64_t, int64_t, int64_t, LseKlState, int,
                                         const LogitMoments*, const TopK*);
extern template void JsdUpdate<float>(const float*, int64_t, const float*, int64_t, int64_t,
                                      int64_t, const double*, const double*, double*, int);
extern template void JsdUpdate<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                       int64_t, const double*, const double*, double*, int);
}  // namespace kernels

namespace py = pybind11;

namespace {

constexpr const char* kOp = "lse_kl_update: ";
constexpr const char* kJsdOp = "jsd_update: ";

py::array AsArray(py::handle h, const char* name, const char* op = kOp) {
  if (!py::isinstance<py::array>(h)) {
    throw py::type_error(std::string(op) + name + " must be a numpy.ndarray, got " +
                         Py_TYPE(h.ptr())->tp_name);
  }
  return py::reinterpret_borrow<py::array>(h);
}

std::string ShapeStr(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t k = 0; k < a.ndim(); ++k) s << (k ? ", " : "") << a.shape(k);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

std::string DtypeStr(const py::array& a) { return std::string(py::str(a.dtype())); }

// Row stride in elements of a 2-d array whose rows are contiguous; throws ValueError otherwise.
// An empty array has no element to reach (NumPy gives it zero strides): any strides serve.
int64_t RowStride(const py::array& a, const char* name, const char* op = kOp) {
  if (a.size() == 0) return 0;
  const int64_t item = a.itemsize();
  if (reinterpret_cast<uintptr_t>(a.data()) % item != 0)
    throw py::value_error(std::string(op) + name + " is not aligned; pass a copy " +
                          "(np.ascontiguousarray)");
  if (a.shape(1) > 1 && a.strides(1) != item)
    throw py::value_error(std::string(op) + name +
                          " must be contiguous along its last axis (stride " +
                          std::to_string(item) + " bytes, got " + std::to_string(a.strides(1)) +
                          "); pass np.ascontiguousarray(" + name + ")");
  if (a.shape(0) <= 1) return 0;
  if (a.strides(0) % item != 0)
    throw py::value_error(std::string(op) + name + " has a row stride of " +
                          std::to_string(a.strides(0)) + " bytes, not a multiple of its " +
                          "item size; pass np.ascontiguousarray(" + name + ")");
  return a.strides(0) / item;
}

void CheckDtype(const py::array& a, const char* name, const py::dtype& want,
                const char* want_name, const char* op = kOp) {
  if (!a.dtype().is(want))
    throw py::type_error(std::string(op) + name + " must have dtype " + want_name + ", got " +
                         DtypeStr(a));
}

void CheckState(const py::array& a, const char* name, const py::dtype& want, const char* want_name,
                py::ssize_t rows, py::ssize_t n) {
  CheckDtype(a, name, want, want_name);
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != n)
    throw py::value_error(std::string(kOp) + name + " must have shape (" + std::to_string(rows) +
                          ", " + std::to_string(n) + ") for " + std::to_string(n) +
                          " logit rows, got " + ShapeStr(a));
  if (!a.writeable())
    throw py::value_error(std::string(kOp) + name + " must be writeable");
}

// The two logit tiles: arrays of one float dtype (float32 or float64) and one 2-d shape.
// Returns whether they are float32.
bool CheckTiles(const py::array& l1, const py::array& l2, const char* op) {
  const bool f32 = l1.dtype().is(py::dtype::of<float>());
  const bool f64 = l1.dtype().is(py::dtype::of<double>());
  if (!f32 && !f64)
    throw py::type_error(std::string(op) + "logit tiles must be float32 or float64, got " +
                         DtypeStr(l1));
  if (!l2.dtype().is(l1.dtype()))
    throw py::type_error(std::string(op) + "l1 and l2 must have the same dtype, got " +
                         DtypeStr(l1) + " and " + DtypeStr(l2));
  if (l1.ndim() != 2 || l2.ndim() != 2)
    throw py::value_error(std::string(op) + "l1 and l2 must be 2-d (inputs x labels), got " +
                          "shapes " + ShapeStr(l1) + " and " + ShapeStr(l2));
  if (l1.shape(0) != l2.shape(0) || l1.shape(1) != l2.shape(1))
    throw py::value_error(std::string(op) + "l1 and l2 must have the same shape, got " +
                          ShapeStr(l1) + " and " + ShapeStr(l2));
  return f32;
}

void CheckThreads(int threads, const char* op) {
  if (threads < 0)
    throw py::value_error(std::string(op) + "threads must be >= 0 (0: OpenMP default), got " +
                          std::to_string(threads));
}

// A (2, n, k) top-k state array (k >= 1, k the same for values and ids): last axis
// contiguous, the rows of one model k elements apart, the two models' blocks apart. Returns
// the stride between the two models' blocks, in elements.
int64_t TopKStride(const py::array& a, const char* name, const py::dtype& want,
                   const char* want_name, py::ssize_t n, py::ssize_t k) {
  CheckDtype(a, name, want, want_name);
  if (a.ndim() != 3 || a.shape(0) != 2 || a.shape(1) != n || a.shape(2) < 1 ||
      (k > 0 && a.shape(2) != k))
    throw py::value_error(std::string(kOp) + name + " must have shape (2, " +
                          std::to_string(n) + ", k) with k >= 1 (k as in topk_values) for " +
                          std::to_string(n) + " logit rows, got " + ShapeStr(a));
  if (!a.writeable())
    throw py::value_error(std::string(kOp) + name + " must be writeable");
  const int64_t item = a.itemsize();
  const int64_t kk = a.shape(2);
  if (reinterpret_cast<uintptr_t>(a.data()) % item != 0 || a.strides(0) % item != 0 ||
      (kk > 1 && a.strides(2) != item) || (n > 1 && a.strides(1) != kk * item))
    throw py::value_error(std::string(kOp) + name + " must hold each model's (n, k) block "
                          "C-contiguous (a view [:, r0:r1] of a C-contiguous (2, N, k) array); "
                          "pass np.ascontiguousarray(" + name + ")");
  const int64_t ld = a.strides(0) / item;
  if (n > 0 && ld < n * kk && ld > -n * kk)
    throw py::value_error(std::string(kOp) + "the two models' blocks of " + name +
                          " overlap (stride " + std::to_string(ld) + " elements for " +
                          std::to_string(n * kk) + ")");
  return ld;
}

// The rows of a 2-d output of `cols` columns (row stride ld, elements) must not overlap: the
// kernel writes each element of each row.
void CheckRowsApart(int64_t ld, int64_t cols, const char* name) {
  if (cols > 0 && ld < cols && ld > -cols)
    throw py::value_error(std::string(kOp) + "the rows of " + name + " overlap (row stride " +
                          std::to_string(ld) + " elements for " + std::to_string(cols) +
                          " columns)");
}

}  // namespace

void lse_kl_update(py::handle l1_h, py::handle l2_h, py::handle state_h, py::handle args_h,
                   int64_t col0, int threads, py::handle row_moments_h,
                   py::handle col_moments_h, int64_t row0, py::handle topk_values_h,
                   py::handle topk_ids_h) {
  const py::array l1 = AsArray(l1_h, "l1");
  const py::array l2 = AsArray(l2_h, "l2");
  const py::array state = AsArray(state_h, "state");
  const py::array args = AsArray(args_h, "args");

  const bool f32 = CheckTiles(l1, l2, kOp);
  CheckThreads(threads, kOp);
  const py::ssize_t n = l1.shape(0);
  const py::ssize_t v = l1.shape(1);
  // The tile holds labels col0 .. col0+v-1 and inputs row0 .. row0+n-1: both ranges must be
  // representable (the kernel stores col0 + j in args). Compared as `a > max - b`, without
  // forming a sum that can overflow.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (col0 < 0)
    throw py::value_error(std::string(kOp) + "col0 must be >= 0, got " + std::to_string(col0));
  if (col0 > kMax - v)
    throw py::value_error(std::string(kOp) + "col0 + v must fit in int64, got col0 = " +
                          std::to_string(col0) + " for v = " + std::to_string(v) + " labels");
  if (row0 < 0)
    throw py::value_error(std::string(kOp) + "row0 must be >= 0, got " + std::to_string(row0));
  if (row0 > kMax - n)
    throw py::value_error(std::string(kOp) + "row0 + n must fit in int64, got row0 = " +
                          std::to_string(row0) + " for n = " + std::to_string(n) + " rows");
  CheckState(state, "state", py::dtype::of<double>(), "float64", 8, n);
  CheckState(args, "args", py::dtype::of<int64_t>(), "int64", 2, n);
  const int64_t ld1 = RowStride(l1, "l1");
  const int64_t ld2 = RowStride(l2, "l2");
  const int64_t state_ld = RowStride(state, "state");
  const int64_t args_ld = RowStride(args, "args");
  CheckRowsApart(state_ld, n, "state");
  CheckRowsApart(args_ld, n, "args");
  kernels::LogitMoments mom{nullptr, 0, nullptr, 0, row0};
  py::array row_m, col_m;
  if (!row_moments_h.is_none()) {
    row_m = AsArray(row_moments_h, "row_moments");
    CheckState(row_m, "row_moments", py::dtype::of<double>(), "float64", 5, n);
    mom.row = static_cast<double*>(const_cast<void*>(row_m.data()));
    mom.row_ld = RowStride(row_m, "row_moments");
    CheckRowsApart(mom.row_ld, n, "row_moments");
  }
  if (!col_moments_h.is_none()) {
    col_m = AsArray(col_moments_h, "col_moments");
    // labels col0 .. col0+v-1 of it are written: col0 + v <= V (no overflow: V, v >= 0)
    if (!col_m.dtype().is(py::dtype::of<double>()) || col_m.ndim() != 2 || col_m.shape(0) != 5 ||
        col0 > col_m.shape(1) - v || !col_m.writeable())
      throw py::value_error(std::string(kOp) + "col_moments must be a writeable float64 (5, V) "
                            "array with V >= col0 + v = " + std::to_string(col0 + v) +
                            ", got " + DtypeStr(col_m) + " " + ShapeStr(col_m));
    mom.col = static_cast<double*>(const_cast<void*>(col_m.data()));
    mom.col_ld = RowStride(col_m, "col_moments");
    CheckRowsApart(mom.col_ld, col_m.shape(1), "col_moments");
  }
  const kernels::LogitMoments* mp = (mom.row || mom.col) ? &mom : nullptr;
  kernels::TopK top{nullptr, nullptr, 0, 0};
  py::array top_v, top_i;
  if (topk_values_h.is_none() != topk_ids_h.is_none())
    throw py::value_error(std::string(kOp) + "topk_values and topk_ids go together: pass both "
                          "or neither");
  if (!topk_values_h.is_none()) {
    top_v = AsArray(topk_values_h, "topk_values");
    top_i = AsArray(topk_ids_h, "topk_ids");
    const int64_t ld_v = TopKStride(top_v, "topk_values", py::dtype::of<double>(), "float64", n,
                                    0);
    top.k = top_v.shape(2);
    const int64_t ld_i = TopKStride(top_i, "topk_ids", py::dtype::of<int64_t>(), "int64", n,
                                    top.k);
    if (ld_v != ld_i)
      throw py::value_error(std::string(kOp) + "topk_values and topk_ids must have the same "
                            "layout (strides between the models' blocks " +
                            std::to_string(ld_v) + " and " + std::to_string(ld_i) +
                            " elements)");
    top.values = static_cast<double*>(const_cast<void*>(top_v.data()));
    top.ids = static_cast<int64_t*>(const_cast<void*>(top_i.data()));
    top.model_ld = ld_v;
  }
  const kernels::TopK* tp = top.values ? &top : nullptr;
  if (n == 0 || v == 0) return;

  kernels::LseKlState st{static_cast<double*>(const_cast<void*>(state.data())), state_ld,
                         static_cast<int64_t*>(const_cast<void*>(args.data())), args_ld};
  const void* p1 = l1.data();
  const void* p2 = l2.data();
  py::gil_scoped_release release;
  if (f32) {
    kernels::LseKlUpdate(static_cast<const float*>(p1), ld1, static_cast<const float*>(p2), ld2,
                         n, v, col0, st, threads, mp, tp);
  } else {
    kernels::LseKlUpdate(static_cast<const double*>(p1), ld1, static_cast<const double*>(p2),
                         ld2, n, v, col0, st, threads, mp, tp);
  }
}

// A 1-d float64 array of n values, unit stride.
const double* Vector(const py::array& a, const char* name, py::ssize_t n, bool write) {
  CheckDtype(a, name, py::dtype::of<double>(), "float64", kJsdOp);
  if (a.ndim() != 1 || a.shape(0) != n)
    throw py::value_error(std::string(kJsdOp) + name + " must have shape (" + std::to_string(n) +
                          ",) for " + std::to_string(n) + " logit rows, got " + ShapeStr(a));
  if (n > 1 && a.strides(0) != a.itemsize())
    throw py::value_error(std::string(kJsdOp) + name + " must be contiguous; pass "
                          "np.ascontiguousarray(" + name + ")");
  if (reinterpret_cast<uintptr_t>(a.data()) % a.itemsize() != 0)
    throw py::value_error(std::string(kJsdOp) + name + " is not aligned; pass a copy " +
                          "(np.ascontiguousarray)");
  if (write && !a.writeable())
    throw py::value_error(std::string(kJsdOp) + name + " must be writeable");
  return static_cast<const double*>(a.data());
}

void jsd_update(py::handle l1_h, py::handle l2_h, py::handle L1_h, py::handle L2_h,
                py::handle out_h, int threads) {
  const py::array l1 = AsArray(l1_h, "l1", kJsdOp);
  const py::array l2 = AsArray(l2_h, "l2", kJsdOp);
  const py::array L1 = AsArray(L1_h, "L1", kJsdOp);
  const py::array L2 = AsArray(L2_h, "L2", kJsdOp);
  const py::array out = AsArray(out_h, "out", kJsdOp);
  const bool f32 = CheckTiles(l1, l2, kJsdOp);
  CheckThreads(threads, kJsdOp);
  const py::ssize_t n = l1.shape(0);
  const py::ssize_t v = l1.shape(1);
  const double* p_L1 = Vector(L1, "L1", n, false);
  const double* p_L2 = Vector(L2, "L2", n, false);
  double* p_out = const_cast<double*>(Vector(out, "out", n, true));
  const int64_t ld1 = RowStride(l1, "l1", kJsdOp);
  const int64_t ld2 = RowStride(l2, "l2", kJsdOp);
  if (n == 0 || v == 0) return;
  const void* p1 = l1.data();
  const void* p2 = l2.data();
  py::gil_scoped_release release;
  if (f32) {
    kernels::JsdUpdate(static_cast<const float*>(p1), ld1, static_cast<const float*>(p2), ld2,
                       n, v, p_L1, p_L2, p_out, threads);
  } else {
    kernels::JsdUpdate(static_cast<const double*>(p1), ld1, static_cast<const double*>(p2), ld2,
                       n, v, p_L1, p_L2, p_out, threads);
  }
}

}  // namespace identirep
