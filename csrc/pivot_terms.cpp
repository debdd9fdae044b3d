// Argument checks for the label-side pivot search epilogue (kernels/pivot_terms.h).
#include <cstdint>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "kernels/pivot_terms.h"
#include "ops.h"

namespace identirep {

namespace py = pybind11;

namespace {

constexpr const char* kPivOp = "pivot_criteria: ";
using F64 = py::array_t<double, py::array::c_style>;

F64 Vec(py::handle h, const char* name, int64_t V) {
  F64 a = py::cast<F64>(h);  // converts (copy) when not float64 C-contiguous
  if (a.ndim() != 1 || a.shape(0) != V)
    throw py::value_error(std::string(kPivOp) + name + " must be 1-d of length " +
                          std::to_string(V));
  return a;
}

// X1, X2 as float32 when X1 is float32 (both converted to it), else float64; same 2-d shape.
struct Cross {
  py::array X1, X2;
  bool f32;
};

Cross CrossProducts(py::handle X1_h, py::handle X2_h, const std::string& op) {
  using F32 = py::array_t<float, py::array::c_style>;
  const bool f32 = py::isinstance<py::array>(X1_h) &&
                   py::reinterpret_borrow<py::array>(X1_h).dtype().is(py::dtype::of<float>());
  py::array X1 = f32 ? py::array(py::cast<F32>(X1_h)) : py::array(py::cast<F64>(X1_h));
  py::array X2 = f32 ? py::array(py::cast<F32>(X2_h)) : py::array(py::cast<F64>(X2_h));
  if (X1.ndim() != 2 || X2.ndim() != 2 || X1.shape(0) != X2.shape(0) ||
      X1.shape(1) != X2.shape(1))
    throw py::value_error(op + "X1 and X2 must be 2-d of the same shape");
  return {X1, X2, f32};
}

}  // namespace

py::array_t<double> pivot_criteria(py::handle X1_h, py::handle X2_h, py::handle n1_h,
                                   py::handle n2_h, py::handle A1_h, py::handle A2_h,
                                   py::handle B12_h, py::handle pivots_h, double tol,
                                   const std::string& mode) {
  auto [X1, X2, f32] = CrossProducts(X1_h, X2_h, kPivOp);
  const int64_t B = X1.shape(0), V = X1.shape(1);
  auto pivots = py::cast<py::array_t<int64_t, py::array::c_style>>(pivots_h);
  if (pivots.ndim() != 1 || pivots.shape(0) != B)
    throw py::value_error(std::string(kPivOp) + "pivots must be 1-d of length B=" +
                          std::to_string(B));
  for (int64_t j = 0; j < B; ++j)
    if (pivots.data()[j] < 0 || pivots.data()[j] >= V)
      throw py::value_error(std::string(kPivOp) + "pivot index out of range");
  if (mode != "max" && mode != "mean")
    throw py::value_error(std::string(kPivOp) + "mode must be 'max' or 'mean'");
  F64 n1 = Vec(n1_h, "n1", V), n2 = Vec(n2_h, "n2", V), A1 = Vec(A1_h, "A1", V),
      A2 = Vec(A2_h, "A2", V), B12 = Vec(B12_h, "B12", V);
  py::array_t<double> crit(B);
  kernels::PivotInputs in{X1.data(), V, X2.data(), V, f32, n1.data(), n2.data(), A1.data(),
                          A2.data(), B12.data(), pivots.data(), B, V, tol,
                          mode == "max" ? 0 : 1};
  double* out = crit.mutable_data();
  {
    py::gil_scoped_release release;
    kernels::PivotCriteria(in, out);
  }
  return crit;
}

py::array_t<double> pivot_bounds(py::handle X1_h, py::handle X2_h, py::handle n1_h,
                                 py::handle n2_h, py::handle A1_h, py::handle A2_h,
                                 py::handle B12_h, py::handle pivots_h, py::handle labels_h,
                                 double tol, double eps) {
  constexpr const char* kOp = "pivot_bounds: ";
  auto [X1, X2, f32] = CrossProducts(X1_h, X2_h, kOp);
  const int64_t B = X1.shape(0), K = X1.shape(1);
  auto pivots = py::cast<py::array_t<int64_t, py::array::c_style>>(pivots_h);
  auto labels = py::cast<py::array_t<int64_t, py::array::c_style>>(labels_h);
  if (pivots.ndim() != 1 || pivots.shape(0) != B || labels.ndim() != 1 || labels.shape(0) != K)
    throw py::value_error(std::string(kOp) + "pivots must have length B and labels length K");
  F64 n1 = py::cast<F64>(n1_h);
  const int64_t V = n1.ndim() == 1 ? n1.shape(0) : -1;
  if (V < 0) throw py::value_error(std::string(kOp) + "n1 must be 1-d");
  for (auto* idx : {&pivots, &labels})
    for (int64_t j = 0; j < idx->shape(0); ++j)
      if (idx->data()[j] < 0 || idx->data()[j] >= V)
        throw py::value_error(std::string(kOp) + "label index out of range");
  F64 n2 = Vec(n2_h, "n2", V), A1 = Vec(A1_h, "A1", V), A2 = Vec(A2_h, "A2", V),
      B12 = Vec(B12_h, "B12", V);
  py::array_t<double> lb(B);
  kernels::BoundInputs in{{X1.data(), K, X2.data(), K, f32, n1.data(), n2.data(), A1.data(),
                           A2.data(), B12.data(), pivots.data(), B, K, tol, 0},
                          labels.data(), eps};
  double* out = lb.mutable_data();
  {
    py::gil_scoped_release release;
    kernels::PivotBounds(in, out);
  }
  return lb;
}

}  // namespace identirep
