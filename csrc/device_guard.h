// Makes a CUDA device current for a scope and gives the caller's current device back after it
// (the compiled entry points run on their arrays' device, whatever device was current).
#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

namespace identirep {

class DeviceGuard {
 public:
  // `what` names the operation in the error a failed device switch throws.
  DeviceGuard(int device, const std::string& what) {
    Check(cudaGetDevice(&previous_), what, "cudaGetDevice");
    if (previous_ != device) Check(cudaSetDevice(device), what, "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_)
      cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  static void Check(cudaError_t e, const std::string& what, const char* call) {
    if (e != cudaSuccess)
      throw std::runtime_error(what + ": " + call + ": " + cudaGetErrorString(e));
  }
  int previous_ = -1;
};

}  // namespace identirep
