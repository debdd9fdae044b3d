// Operations exported by the extension module; bindings.cpp only wires them to Python.
#pragma once

#include <cstdint>

#include <pybind11/pybind11.h>

namespace identirep {

// CPU fused epilogue (csrc/lse_kl.cpp); state layout in csrc/kernels/lse_kl.h.
void lse_kl_update(pybind11::handle l1, pybind11::handle l2, pybind11::handle state,
                   pybind11::handle args, int64_t col0, int threads);

// Compile-time facts about this build (csrc/build_info.cpp).
pybind11::dict build_info();

}  // namespace identirep
