// Operations exported by the extension module; bindings.cpp only wires them to Python.
#pragma once

#include <cstdint>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace identirep {

// CPU fused epilogue (csrc/lse_kl.cpp); state layout in csrc/kernels/lse_kl.h.
void lse_kl_update(pybind11::handle l1, pybind11::handle l2, pybind11::handle state,
                   pybind11::handle args, int64_t col0, int threads,
                   pybind11::handle row_moments, pybind11::handle col_moments, int64_t row0,
                   pybind11::handle topk_values, pybind11::handle topk_ids);

// CPU Jensen-Shannon epilogue of the second pass (csrc/lse_kl.cpp, kernels/jsd.h).
void jsd_update(pybind11::handle l1, pybind11::handle l2, pybind11::handle L1,
                pybind11::handle L2, pybind11::handle out, int threads);

// Label-side pivot search epilogue (csrc/pivot_terms.cpp, kernels/pivot_terms.h).
pybind11::array_t<double> pivot_criteria(pybind11::handle X1, pybind11::handle X2,
                                         pybind11::handle n1, pybind11::handle n2,
                                         pybind11::handle A1, pybind11::handle A2,
                                         pybind11::handle B12, pybind11::handle pivots,
                                         double tol, const std::string& mode);

// Lower bounds of the bounded pivot search over label lists (same files).
pybind11::array_t<double> pivot_bounds(pybind11::handle X1, pybind11::handle X2,
                                       pybind11::handle n1, pybind11::handle n2,
                                       pybind11::handle A1, pybind11::handle A2,
                                       pybind11::handle B12, pybind11::handle pivots,
                                       pybind11::handle labels, double tol, double eps);

// Compile-time facts about this build (csrc/build_info.cpp).
pybind11::dict build_info();

}  // namespace identirep
