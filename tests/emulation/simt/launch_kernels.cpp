// The NVRTC kernels of identirep/gpu/nvrtc.py (kernel_names, PIVOT_KERNELS) in the SIMT emulator
// (simt.h), as a shared library that a stand-in for cupy.RawModule (fake_cupy.py) calls
// with the arguments the real launches pass, so that the Python launch code itself runs on the
// CPU. Built by tests/emulation/test_kernels_on_cpu.py:
//   g++ -std=c++20 -shared -fPIC -pthread -D__CUDACC_RTC__ -I csrc/kernels
//       launch_kernels.cpp -o libsimt_launch.so
// The template arguments are those of the launch table (kernels/launch_table.h), which
// identirep.gpu.nvrtc reads through _core.launch_table().
// simt_signature(name): one code per kernel parameter, or null for a kernel it does not have:
//   F, D, Q: pointers to float, double, long long (the array's dtype must match); P: another
//   pointer; f, d, q, i: float, double, long long, int.
// simt_launch(name, grid, block, params, n): params[k] points to parameter k's value, as
// cuLaunchKernel's kernelParams do; returns 0, or 1 for an unknown kernel or parameter count.
#ifndef __CUDACC_RTC__
#error "compile with -D__CUDACC_RTC__ (the kernels' NVRTC build: device code only)"
#endif
#include "simt.h"

#include "lse_kl.cuh"
#include "pivot_terms.cuh"

#include <functional>
#include <map>
#include <string>
#include <utility>

namespace {

namespace k = identirep::kernels;

template <typename T>
char Code() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer_v<U>) {
    using E = std::remove_cv_t<std::remove_pointer_t<U>>;
    return std::is_same_v<E, float> ? 'F' : std::is_same_v<E, double> ? 'D'
         : std::is_same_v<E, long long> ? 'Q' : 'P';
  } else {
    static_assert(std::is_same_v<U, float> || std::is_same_v<U, double> ||
                  std::is_same_v<U, long long> || std::is_same_v<U, int>);
    return std::is_same_v<U, float> ? 'f' : std::is_same_v<U, double> ? 'd'
         : std::is_same_v<U, long long> ? 'q' : 'i';
  }
}

struct Entry {
  std::string signature;
  std::function<void(dim3, dim3, void**)> launch;
};

template <typename... A, size_t... I>
void Call(void (*kernel)(A...), void** p, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}

template <typename... A>
Entry Make(void (*kernel)(A...)) {
  return {std::string{Code<A>()...}, [kernel](dim3 grid, dim3 block, void** p) {
            simt::Launch(grid, block, [&] { Call(kernel, p, std::index_sequence_for<A...>{}); });
          }};
}

std::string N(const char* kernel, const char* type, int param = -1) {
  std::string s = std::string("identirep::kernels::") + kernel + "<" + type;
  if (param >= 0) s += ", " + std::to_string(param);
  return s + ">";
}

const std::map<std::string, Entry>& Table() {
  static const std::map<std::string, Entry> table = {
      {N("LseKlKernel", "float", k::kLseKlThreads), Make(&k::LseKlKernel<float, k::kLseKlThreads>)},
      {N("LseKlKernel", "double", k::kLseKlThreads),
       Make(&k::LseKlKernel<double, k::kLseKlThreads>)},
      {N("LseKlColKernel", "float", k::kColRows), Make(&k::LseKlColKernel<float, k::kColRows>)},
      {N("LseKlColKernel", "double", k::kColRows), Make(&k::LseKlColKernel<double, k::kColRows>)},
      {N("LseKlColMergeKernel", "float"), Make(&k::LseKlColMergeKernel<float>)},
      {N("LseKlColMergeKernel", "double"), Make(&k::LseKlColMergeKernel<double>)},
      {N("LseKlSlabKernel", "float", k::kSlabRowsFloat),
       Make(&k::LseKlSlabKernel<float, k::kSlabRowsFloat>)},
      {N("LseKlSlabKernel", "double", k::kSlabRowsDouble),
       Make(&k::LseKlSlabKernel<double, k::kSlabRowsDouble>)},
      {N("LseKlRowMergeKernel", "float"), Make(&k::LseKlRowMergeKernel<float>)},
      {N("LseKlRowMergeKernel", "double"), Make(&k::LseKlRowMergeKernel<double>)},
      {N("PivotCriteriaKernel", "float", k::kPivotThreads),
       Make(&k::PivotCriteriaKernel<float, k::kPivotThreads>)},
      {N("PivotCriteriaKernel", "double", k::kPivotThreads),
       Make(&k::PivotCriteriaKernel<double, k::kPivotThreads>)},
  };
  return table;
}

}  // namespace

extern "C" const char* simt_signature(const char* name) {
  const auto it = Table().find(name);
  return it == Table().end() ? nullptr : it->second.signature.c_str();
}

extern "C" int simt_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                           unsigned by, unsigned bz, void** params, int n) {
  const auto it = Table().find(name);
  if (it == Table().end() || n != static_cast<int>(it->second.signature.size())) return 1;
  it->second.launch(dim3(gx, gy, gz), dim3(bx, by, bz), params);
  return 0;
}
