// The primitives of the fused GEMM kernel for the SIMT emulator (simt.h): the emulator's
// csrc/kernels/gemm_primitives.cuh, of the same names. lse_kl_gemm.cuh includes
// <gemm_primitives.cuh>, and the emulator's builds put this folder on the include path before
// csrc/kernels, so this one is found first; simt.h must be included before it.
// - mma.sync.m16n8k16 (row.col, float32 accumulate) in the PTX ISA's fragment layouts: the warp
//   gathers its fragments and each lane computes its four outputs (products summed in double,
//   added to the accumulator, rounded to float32 once per instruction);
// - ldmatrix.x4: lane l reads row l / 4 (4 bytes at column 2 (l % 4)) of matrix i from the row
//   address lane 8 i + l / 4 gave; addresses must be 16-byte aligned and in shared memory;
// - cp.async (16 bytes, zero-filled past src_bytes), commit_group, wait_group: per thread
//   groups of copies. A block runs either eager (a copy lands when issued) or lazy (a group
//   lands only when a wait_group lets it, as late as PTX allows), drawn per block from the
//   launch seed, or SIMT_CP_ASYNC=eager|lazy: reading a stage before its wait sees undefined
//   shared memory in lazy blocks, overwriting one still read by other warps shows in eager ones;
// - shared-window addresses (SmemAddr): a variable's offset plus a per-launch base, a multiple
//   of 128 below 1024, so code that needs 1024-byte alignment must align itself;
// - wgmma (sm_90a): mma_async m64nNk16 with float32 accumulators in the PTX layout, A and B
//   K-major in shared memory through descriptors in the 128-byte swizzle (the XOR of address
//   bits 7-9 into bits 4-6; base offset 0, so each 8-row group must start on a 1024-byte
//   pattern boundary, else it fails); fence, commit_group, wait_group. Like cp.async, a block
//   runs eager (at issue) or lazy (at the wait that must complete it, reading shared memory
//   then; SIMT_WGMMA=eager|lazy); a wgmma needs a wgmma.fence since the thread's last wait, and
//   descriptors uniform across the warpgroup (each warp's lanes, and the 4 warps' n-th wgmma);
// - fence.proxy.async: a 16-byte chunk a cp.async wrote (the generic proxy) may be read by a
//   wgmma (the async proxy) only after the writing thread's fence.proxy.async once the copy
//   has landed; a wgmma that reads a chunk not yet fenced fails.
#pragma once

#include <map>
#include <unordered_map>
#include <vector>

// the block's dynamic shared memory: a __shared__ array (simt.h: per block) of the most a block
// may have
#define IDENTIREP_GEMM_DYNAMIC_SHARED(name) \
  __shared__ unsigned char name[simt::kDynamicSharedBytes] __attribute__((aligned(16)))

namespace simt {

constexpr size_t kDynamicSharedBytes = 227 << 10;  // the most a block may have on sm_90

// Tensor-core instructions issued (per thread: mma.sync and wgmma.mma_async), for tests.
inline std::atomic<unsigned long long> g_mma_issued{0};

inline unsigned long long BlockKey() {
  return (static_cast<unsigned long long>(g_launches) << 40) + 1 + blockIdx.x +
         (1ULL << 20) * blockIdx.y;
}

// Shared-memory chunks written by cp.async (generic proxy) and not yet fenced by their writer:
// chunk -> (block, writer thread), and per thread the chunks it wrote since its last fence.
struct ProxyMarks {
  std::mutex m;
  std::unordered_map<const void*, std::pair<unsigned long long, int>> unfenced;
  std::vector<std::vector<const void*>> written = std::vector<std::vector<const void*>>(kMaxThreads);
  std::vector<unsigned long long> written_block = std::vector<unsigned long long>(kMaxThreads);

  void Wrote(const void* chunk) {
    std::lock_guard<std::mutex> lk(m);
    unfenced[chunk] = {BlockKey(), self->index};
    std::vector<const void*>& mine = written[self->index];
    if (written_block[self->index] != BlockKey()) {
      written_block[self->index] = BlockKey();
      mine.clear();
    }
    mine.push_back(chunk);
  }
  void Fence() {
    std::lock_guard<std::mutex> lk(m);
    for (const void* c : written[self->index]) {
      auto it = unfenced.find(c);
      if (it != unfenced.end() && it->second.second == self->index) unfenced.erase(it);
    }
    written[self->index].clear();
  }
  bool Unfenced(const void* chunk) {
    std::lock_guard<std::mutex> lk(m);
    auto it = unfenced.find(chunk);
    return it != unfenced.end() && it->second.first == BlockKey();
  }
};

inline ProxyMarks& Proxy() {
  static ProxyMarks marks;
  return marks;
}

struct CpAsyncCopy {
  void* dst;
  const void* src;
  int bytes;
  void Run() const {
    std::memset(dst, 0, 16);
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
    Proxy().Wrote(dst);
  }
};

// Whether a block runs its asynchronous copies / wgmma eager or lazy: env, else drawn.
inline bool LazyBlock(const char* env_name, unsigned long long salt) {
  const char* env = std::getenv(env_name);
  const unsigned long long h =
      Mix(g_seed ^ Mix(salt + g_launches) ^ Mix(blockIdx.x + (1ULL << 32) * blockIdx.y));
  return env ? std::string(env) == "lazy" : (h >> 7 & 1) != 0;
}

// One thread's asynchronous operations of one kind (cp.async copies, wgmmas) in one block:
// those not yet committed, then the committed groups, oldest first. Lazy blocks run an
// operation when a wait completes its group, eager ones when it is issued.
template <typename Op>
struct AsyncGroups {
  unsigned long long block = 0;  // the launch and block these groups belong to
  bool lazy = false;
  bool fenced = false;  // wgmma: a wgmma.fence since the last wait
  std::vector<Op> open;
  std::vector<std::vector<Op>> groups;

  void Issue(const Op& op) {
    if (lazy) open.push_back(op);
    else op.Run();
  }
  void Commit() {
    groups.push_back(std::move(open));
    open.clear();
  }
  // Completes the oldest groups until at most `pending` are left.
  void Wait(size_t pending) {
    size_t done = 0;
    for (; groups.size() - done > pending; ++done)
      for (const Op& op : groups[done]) op.Run();
    groups.erase(groups.begin(), groups.begin() + static_cast<std::ptrdiff_t>(done));
  }
};

// The calling thread's AsyncGroups<Op>, fresh at a new block (its mode from env_name, else
// drawn with salt, nothing in flight).
template <typename Op>
AsyncGroups<Op>& AsyncOf(const char* env_name, unsigned long long salt) {
  static std::vector<AsyncGroups<Op>> states(kMaxThreads);
  AsyncGroups<Op>& st = states[self->index];
  const unsigned long long block = BlockKey();
  if (st.block != block) {
    st = AsyncGroups<Op>{};
    st.block = block;
    st.lazy = LazyBlock(env_name, salt);
  }
  return st;
}

inline AsyncGroups<CpAsyncCopy>& CpAsyncOf() {
  return AsyncOf<CpAsyncCopy>("SIMT_CP_ASYNC", 0x51ed27ULL);
}

// Shared-window addresses: per launch, the base of the __shared__ variable last addressed.
inline std::atomic<char*> g_window_var{nullptr};
inline unsigned WindowBase() { return static_cast<unsigned>(Mix(g_seed ^ g_launches) % 8) * 128; }

struct WgmmaOp {
  float* d;
  int n;
  unsigned long long da, db;
  int scale_d;
  bool bf16;
  void Run() const;
};

// The n-th wgmma of each warp of a warpgroup, as the warpgroup's first warp to issue it saw it:
// (block, warpgroup, n) -> arguments.
struct WarpgroupIssues {
  struct Args {
    unsigned long long da, db;
    int scale_d, n;
    bool operator!=(const Args& o) const {
      return da != o.da || db != o.db || scale_d != o.scale_d || n != o.n;
    }
  };
  std::mutex m;
  unsigned long long block = ~0ULL;
  std::map<std::pair<int, unsigned long long>, Args> seen;
  std::vector<unsigned long long> count = std::vector<unsigned long long>(kMaxThreads);

  // Called by lane 0 of each warp with its warp's (uniform) arguments.
  void Check(const Args& a) {
    std::lock_guard<std::mutex> lk(m);
    if (block != BlockKey()) {
      block = BlockKey();
      seen.clear();
      std::fill(count.begin(), count.end(), 0);
    }
    const auto key = std::make_pair(self->index / 128, count[self->index]++);
    const auto [it, fresh] = seen.emplace(key, a);
    if (!fresh && it->second != a) Fail("wgmma: operands differ across the warpgroup");
  }
};

inline WarpgroupIssues& Warpgroups() {
  static WarpgroupIssues w;
  return w;
}

inline AsyncGroups<WgmmaOp>& WgmmaOf() { return AsyncOf<WgmmaOp>("SIMT_WGMMA", 0x3a9d11ULL); }

}  // namespace simt

namespace identirep {
namespace kernels {
namespace mma {

template <bool kBf16>
inline float ToFloat(unsigned short h);  // defined by the kernel header

}  // namespace mma
}  // namespace kernels
}  // namespace identirep

namespace simt {

// Where element (row, k) of a K-major operand in the 128-byte swizzle lies, by descriptor.
inline const char* WgmmaAddress(unsigned long long desc, int row, int k) {
  const unsigned start = static_cast<unsigned>(desc & 0x3fff) << 4;
  const unsigned sbo = static_cast<unsigned>(desc >> 32 & 0x3fff) << 4;
  if ((desc >> 62) != 1 || (desc >> 49 & 7) != 0)
    Fail("wgmma descriptor: only the 128-byte swizzle with base offset 0 is emulated");
  const unsigned group = start + static_cast<unsigned>(row / 8) * sbo;
  if ((group >> 7 & 7) != 0)
    Fail("wgmma descriptor: an 8-row group off the 1024-byte swizzle pattern", group);
  const unsigned addr = group + static_cast<unsigned>(row % 8) * 128 + 2 * k;
  const unsigned phys = addr ^ ((addr >> 7 & 7) << 4);
  char* var = g_window_var.load();
  if (var == nullptr || phys < WindowBase()) Fail("wgmma: address below shared memory", phys);
  const char* p = var + (phys - WindowBase());
  if (!InShared(p, 2)) Fail("wgmma: operand outside shared memory", phys);
  return p;
}

inline double WgmmaElement(unsigned long long desc, int row, int k, bool bf16) {
  unsigned short h;
  std::memcpy(&h, WgmmaAddress(desc, row, k), 2);
  using identirep::kernels::mma::ToFloat;
  return static_cast<double>(bf16 ? ToFloat<true>(h) : ToFloat<false>(h));
}

// d (this thread's part of 64 x n) = a b' + (scale_d ? d : 0), products summed in double.
inline void WgmmaOp::Run() const {
  const int lane = self->lane, warp = self->index / 32 % 4;
  if (self->index % 128 == 0)  // the warpgroup's operands: 64 rows of a, n of b, 2 chunks each
    for (int r = 0; r < 64 || r < n; ++r)
      for (int k = 0; k < 16; k += 8)
        for (const bool is_a : {true, false})
          if (r < (is_a ? 64 : n) && Proxy().Unfenced(WgmmaAddress(is_a ? da : db, r, k)))
            Fail("wgmma reads a cp.async copy not followed by fence.proxy.async", r, k);
  for (int i = 0; i < n / 2; ++i) {
    const int row = 16 * warp + lane / 4 + 8 * (i / 2 % 2);
    const int col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
    double s = 0.0;
    for (int k = 0; k < 16; ++k)
      s += WgmmaElement(da, row, k, bf16) * WgmmaElement(db, col, k, bf16);
    d[i] = static_cast<float>((scale_d ? static_cast<double>(d[i]) : 0.0) + s);
  }
}

}  // namespace simt

namespace identirep {
namespace kernels {
namespace mma {

inline void CpAsync16(void* dst, const void* src, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || !simt::InShared(dst, 16))
    simt::Fail("cp.async: destination not 16-byte aligned shared memory");
  if (src_bytes < 0 || src_bytes > 16) simt::Fail("cp.async: src_bytes outside [0, 16]", src_bytes);
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0)
    simt::Fail("cp.async: source not 16-byte aligned");
  simt::CpAsyncOf().Issue({dst, src, src_bytes});
}

inline void CpAsyncCommit() { simt::CpAsyncOf().Commit(); }

template <int kPending>
inline void CpAsyncWait() {
  simt::CpAsyncOf().Wait(kPending);
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

inline unsigned SmemAddr(const void* p) {
  const char* c = static_cast<const char*>(p);
  for (const auto& [b, e] : simt::SharedRanges())
    if (c >= b && c <= e) {
      simt::g_window_var.store(b);
      return simt::WindowBase() + static_cast<unsigned>(c - b);
    }
  simt::Fail("SmemAddr: not a pointer into shared memory");
}

inline void FenceProxyAsync() { simt::Proxy().Fence(); }

template <int kN>
inline void PinRegisters(float (&)[kN]) {}

inline void WgmmaFence() { simt::WgmmaOf().fenced = true; }

template <bool kBf16, int kN>
inline void Wgmma(float (&d)[kN / 2], unsigned long long da, unsigned long long db, int scale_d) {
  if (!simt::WgmmaOf().fenced) simt::Fail("wgmma without a wgmma.fence since the last wait");
  struct Args {
    unsigned long long da, db;
    int scale_d, n;
  } mine{da, db, scale_d, kN}, all[32];
  simt::WarpGather(&mine, all, sizeof mine);
  for (const Args& a : all)
    if (a.da != da || a.db != db || a.scale_d != scale_d || a.n != kN)
      simt::Fail("wgmma: operands differ across the warp");
  if (simt::self->lane == 0) simt::Warpgroups().Check({da, db, scale_d, kN});
  simt::g_mma_issued.fetch_add(1, std::memory_order_relaxed);
  simt::WgmmaOf().Issue({d, kN, da, db, scale_d, kBf16});
}

inline void WgmmaCommit() { simt::WgmmaOf().Commit(); }

template <int kPending>
inline void WgmmaWait() {
  simt::WgmmaOf().Wait(kPending);
  simt::WgmmaOf().fenced = false;
}

template <bool kBf16>
inline void Mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  struct Frag {
    unsigned a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}}, all[32];
  simt::g_mma_issued.fetch_add(1, std::memory_order_relaxed);
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
