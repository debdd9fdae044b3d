// Argument checks and dtype dispatch for the CPU fused epilogue (kernels/lse_kl.h).
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "kernels/lse_kl.h"
#include "ops.h"

namespace identirep {
namespace kernels {
extern template void LseKlUpdate<float>(const float*, int64_t, const float*, int64_t, int64_t,
                                        int64_t, int64_t, LseKlState, int,
                                        const LogitMoments*);
extern template void LseKlUpdate<double>(const double*, int64_t, const double*, int64_t,
                                         int64_t, int64_t, int64_t, LseKlState, int,
                                         const LogitMoments*);
}  // namespace kernels

namespace py = pybind11;

namespace {

constexpr const char* kOp = "lse_kl_update: ";

py::array AsArray(py::handle h, const char* name) {
  if (!py::isinstance<py::array>(h)) {
    throw py::type_error(std::string(kOp) + name + " must be a numpy.ndarray, got " +
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
int64_t RowStride(const py::array& a, const char* name) {
  if (a.size() == 0) return 0;
  const int64_t item = a.itemsize();
  if (reinterpret_cast<uintptr_t>(a.data()) % item != 0)
    throw py::value_error(std::string(kOp) + name + " is not aligned; pass a copy " +
                          "(np.ascontiguousarray)");
  if (a.shape(1) > 1 && a.strides(1) != item)
    throw py::value_error(std::string(kOp) + name +
                          " must be contiguous along its last axis (stride " +
                          std::to_string(item) + " bytes, got " + std::to_string(a.strides(1)) +
                          "); pass np.ascontiguousarray(" + name + ")");
  if (a.shape(0) <= 1) return 0;
  if (a.strides(0) % item != 0)
    throw py::value_error(std::string(kOp) + name + " has a row stride of " +
                          std::to_string(a.strides(0)) + " bytes, not a multiple of its " +
                          "item size; pass np.ascontiguousarray(" + name + ")");
  return a.strides(0) / item;
}

void CheckState(const py::array& a, const char* name, const py::dtype& want, const char* want_name,
                py::ssize_t rows, py::ssize_t n) {
  if (!a.dtype().is(want))
    throw py::type_error(std::string(kOp) + name + " must have dtype " + want_name + ", got " +
                         DtypeStr(a));
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != n)
    throw py::value_error(std::string(kOp) + name + " must have shape (" + std::to_string(rows) +
                          ", " + std::to_string(n) + ") for " + std::to_string(n) +
                          " logit rows, got " + ShapeStr(a));
  if (!a.writeable())
    throw py::value_error(std::string(kOp) + name + " must be writeable");
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
                   py::handle col_moments_h, int64_t row0) {
  const py::array l1 = AsArray(l1_h, "l1");
  const py::array l2 = AsArray(l2_h, "l2");
  const py::array state = AsArray(state_h, "state");
  const py::array args = AsArray(args_h, "args");

  const bool f32 = l1.dtype().is(py::dtype::of<float>());
  const bool f64 = l1.dtype().is(py::dtype::of<double>());
  if (!f32 && !f64)
    throw py::type_error(std::string(kOp) + "logit tiles must be float32 or float64, got " +
                         DtypeStr(l1));
  if (!l2.dtype().is(l1.dtype()))
    throw py::type_error(std::string(kOp) + "l1 and l2 must have the same dtype, got " +
                         DtypeStr(l1) + " and " + DtypeStr(l2));
  if (l1.ndim() != 2 || l2.ndim() != 2)
    throw py::value_error(std::string(kOp) + "l1 and l2 must be 2-d (inputs x labels), got " +
                          "shapes " + ShapeStr(l1) + " and " + ShapeStr(l2));
  if (l1.shape(0) != l2.shape(0) || l1.shape(1) != l2.shape(1))
    throw py::value_error(std::string(kOp) + "l1 and l2 must have the same shape, got " +
                          ShapeStr(l1) + " and " + ShapeStr(l2));
  if (threads < 0)
    throw py::value_error(std::string(kOp) + "threads must be >= 0 (0: OpenMP default), got " +
                          std::to_string(threads));
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
  if (n == 0 || v == 0) return;

  kernels::LseKlState st{static_cast<double*>(const_cast<void*>(state.data())), state_ld,
                         static_cast<int64_t*>(const_cast<void*>(args.data())), args_ld};
  const void* p1 = l1.data();
  const void* p2 = l2.data();
  py::gil_scoped_release release;
  if (f32) {
    kernels::LseKlUpdate(static_cast<const float*>(p1), ld1, static_cast<const float*>(p2), ld2,
                         n, v, col0, st, threads, mp);
  } else {
    kernels::LseKlUpdate(static_cast<const double*>(p1), ld1, static_cast<const double*>(p2),
                         ld2, n, v, col0, st, threads, mp);
  }
}

}  // namespace identirep
