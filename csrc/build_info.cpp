// Compile-time facts about this build, surfaced by identirep.build_info().
#include <string>

#include <pybind11/pybind11.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"

#ifndef IDENTIREP_VERSION
#define IDENTIREP_VERSION "unknown"
#endif
#ifndef IDENTIREP_CPU_FLAGS
#define IDENTIREP_CPU_FLAGS ""
#endif
#ifndef IDENTIREP_CUDA_ARCHITECTURES
#define IDENTIREP_CUDA_ARCHITECTURES ""
#endif
#ifndef IDENTIREP_CUBLAS_OPTION
#define IDENTIREP_CUBLAS_OPTION "OFF"
#endif
#ifndef IDENTIREP_CUDA_VERSION
#define IDENTIREP_CUDA_VERSION ""
#endif

namespace identirep {

namespace py = pybind11;

namespace {

const char* SimdIsa() {
#if defined(__AVX512F__)
  return "avx512f";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE2__)
  return "sse2";
#elif defined(__ARM_FEATURE_SVE)
  return "sve";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "none";
#endif
}

}  // namespace

py::dict build_info() {
  py::dict d;
  d["version"] = IDENTIREP_VERSION;
  d["compiler"] = __VERSION__;
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = _OPENMP;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_version"] = py::none();
  d["openmp_max_threads"] = 1;
#endif
#ifdef IDENTIREP_NATIVE
  d["native"] = true;
#else
  d["native"] = false;
#endif
  d["cpu_flags"] = IDENTIREP_CPU_FLAGS;
  d["simd"] = SimdIsa();
#ifdef IDENTIREP_WITH_CUDA
  d["cuda_compiled"] = true;
  d["cuda_version"] = IDENTIREP_CUDA_VERSION;
#else
  d["cuda_compiled"] = false;
  d["cuda_version"] = py::none();
#endif
  d["cuda_architectures"] = IDENTIREP_CUDA_ARCHITECTURES;
#ifdef IDENTIREP_WITH_CUBLAS
  d["cuda_pass_driver"] = true;
#else
  d["cuda_pass_driver"] = false;
#endif
  d["cublas_option"] = IDENTIREP_CUBLAS_OPTION;
#ifdef IDENTIREP_WITH_WGMMA
  d["fused_gemm_wgmma"] = true;  // the sm_90a kernel (csrc/lse_kl_wgmma.cu)
#else
  d["fused_gemm_wgmma"] = false;
#endif
  return d;
}

}  // namespace identirep
