// The tensor-core primitives of csrc/kernels/lse_kl_gemm.cuh for the SIMT emulator (simt.h):
// include after simt.h and before the kernel header.
// - mma.sync.m16n8k16 (row.col, float32 accumulate) in the PTX ISA's fragment layouts: the warp
//   gathers its fragments and each lane computes its four outputs (products summed in double,
//   added to the accumulator, rounded to float32 once per instruction);
// - ldmatrix.x4: lane l reads row l / 4 (4 bytes at column 2 (l % 4)) of matrix i from the row
//   address lane 8 i + l / 4 gave; addresses must be 16-byte aligned and in shared memory;
// - cp.async (16 bytes, zero-filled past src_bytes), commit_group, wait_group: per thread
//   groups of copies. A block runs either eager (a copy lands when issued) or lazy (a group
//   lands only when a wait_group lets it, as late as PTX allows), drawn per block from the
//   launch seed, or SIMT_CP_ASYNC=eager|lazy: reading a stage before its wait sees undefined
//   shared memory in lazy blocks, overwriting one still read by other warps shows in eager ones.
#pragma once

#include <map>
#include <vector>

#define IDENTIREP_SIMT 1
#define IDENTIREP_DYNAMIC_SHARED(name) \
  __shared__ unsigned char name[simt::kDynamicSharedBytes] __attribute__((aligned(16)))

namespace simt {

constexpr size_t kDynamicSharedBytes = 227 << 10;  // the most a block may have on sm_90

struct CpAsyncCopy {
  void* dst;
  const void* src;
  int bytes;
  void Run() const {
    std::memset(dst, 0, 16);
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  }
};

struct CpAsyncState {
  unsigned long long block = 0;  // the launch and block these groups belong to
  bool lazy = false;
  std::vector<CpAsyncCopy> open;
  std::vector<std::vector<CpAsyncCopy>> groups;
};

inline CpAsyncState& CpAsyncOf() {
  static std::vector<CpAsyncState> states(kMaxThreads);
  CpAsyncState& st = states[self->index];
  const unsigned long long block =
      (static_cast<unsigned long long>(g_launches) << 40) + 1 + blockIdx.x +
      (1ULL << 20) * blockIdx.y;
  if (st.block != block) {  // a new block: its mode, nothing in flight
    st = CpAsyncState{};
    st.block = block;
    const char* env = std::getenv("SIMT_CP_ASYNC");
    const unsigned long long h =
        Mix(g_seed ^ Mix(0x51ed27ULL + g_launches) ^ Mix(blockIdx.x + (1ULL << 32) * blockIdx.y));
    st.lazy = env ? std::string(env) == "lazy" : (h >> 7 & 1) != 0;
  }
  return st;
}

}  // namespace simt

namespace identirep {
namespace kernels {
namespace mma {

template <bool kBf16>
inline float ToFloat(unsigned short h);  // defined by the kernel header

inline void CpAsync16(void* dst, const void* src, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || !simt::InShared(dst, 16))
    simt::Fail("cp.async: destination not 16-byte aligned shared memory");
  if (src_bytes < 0 || src_bytes > 16) simt::Fail("cp.async: src_bytes outside [0, 16]", src_bytes);
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0)
    simt::Fail("cp.async: source not 16-byte aligned");
  simt::CpAsyncState& st = simt::CpAsyncOf();
  const simt::CpAsyncCopy c{dst, src, src_bytes};
  if (st.lazy) st.open.push_back(c);
  else c.Run();
}

inline void CpAsyncCommit() {
  simt::CpAsyncState& st = simt::CpAsyncOf();
  st.groups.push_back(std::move(st.open));
  st.open.clear();
}

template <int kPending>
inline void CpAsyncWait() {
  simt::CpAsyncState& st = simt::CpAsyncOf();
  size_t done = 0;
  for (; st.groups.size() - done > static_cast<size_t>(kPending); ++done)
    for (const simt::CpAsyncCopy& c : st.groups[done]) c.Run();
  st.groups.erase(st.groups.begin(), st.groups.begin() + static_cast<std::ptrdiff_t>(done));
}

inline void LdMatrixX4(unsigned (&r)[4], const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0 || !simt::InShared(row, 16))
    simt::Fail("ldmatrix: row address not 16-byte aligned shared memory");
  const void* rows[32];
  simt::WarpGather(&row, rows, sizeof row);
  const int lane = simt::self->lane;
  for (int i = 0; i < 4; ++i)
    std::memcpy(&r[i], static_cast<const char*>(rows[8 * i + lane / 4]) + 4 * (lane % 4), 4);
}

template <bool kBf16>
inline void Mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  struct Frag {
    unsigned a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}}, all[32];
  simt::WarpGather(&mine, all, sizeof mine);
  const auto half = [](unsigned word, int hi) {
    return static_cast<double>(ToFloat<kBf16>(static_cast<unsigned short>(word >> (16 * hi))));
  };
  // A(r, k): lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2;
  // B(k, n): lane n * 4 + (k % 8) / 2, register k / 8, half k % 2.
  const auto A = [&](int r, int k) {
    return half(all[(r % 8) * 4 + (k % 8) / 2].a[r / 8 + 2 * (k / 8)], k % 2);
  };
  const auto B = [&](int k, int n) { return half(all[n * 4 + (k % 8) / 2].b[k / 8], k % 2); };
  const int g = simt::self->lane / 4, t = simt::self->lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
    double s = 0.0;
    for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
    d[i] = static_cast<float>(static_cast<double>(d[i]) + s);
  }
}

}  // namespace mma
}  // namespace kernels
}  // namespace identirep
