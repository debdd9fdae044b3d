// A SIMT emulator for CUDA kernels written for NVRTC (compiled with -D__CUDACC_RTC__, the kernel
// headers include nothing and hold device code only): g++ -std=c++20 -pthread, Linux/glibc.
//
// simt::Launch(grid, block, body) runs the blocks of a grid one after another; the threads of a
// block run concurrently and free-running between synchronisation points:
// - each CUDA thread is a fiber with its own stack; thread t runs on OS worker thread
//   t % workers (SIMT_WORKERS, default 4; 0: one OS thread per CUDA thread), so every warp and
//   the block span all workers, which run in parallel. A worker switches fibers only where one
//   waits (a barrier or a shuffle), picking them in an order drawn at random for each block
//   (SIMT_SEED fixes the draws); in half of the blocks, drawn too, the warps run one at a time
//   between __syncthreads, each as far ahead of the others as a GPU may let it run;
// - __shared__ is a function-local static, hence per block (blocks do not overlap). Those of
//   functions in namespace identirep::kernels (the kernels, and the self-tests of
//   run_kernels.cpp) are found in the executable's symbol table and filled with 0xff bytes (NaN,
//   -1) before every block, as shared memory is undefined when a block starts (a linker section
//   would not do: GCC ignores the section attribute of statics in templates);
// - __syncthreads is a barrier over the block. A thread that returns while others wait at one,
//   or before they reach one, is an error (undefined: a barrier in divergent code);
// - __shfl_xor_sync follows PTX shfl.sync.bfly (width; a source beyond the caller's segment
//   gives the caller's own value). Warps are 32 consecutive linear thread ids that exchange
//   values through a per-warp double buffer and barrier. A lane of the mask that does not take
//   part (it returned, or is not in the block) is an error: undefined on a GPU;
// - no barrier completing for kStallSeconds (a deadlock) ends the process.
// Errors print "simt: ..." on stderr and exit with status 3.
#pragma once
#undef _FORTIFY_SOURCE  // its longjmp check rejects the switch between fiber stacks

#include <elf.h>
#include <link.h>
#include <math.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <bitset>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

// The ELF object (the harness executable, or a shared library of kernels) whose symbol table
// SharedRanges reads is the one holding this function.
extern "C" __attribute__((used, noinline)) inline void identirep_simt_anchor() {}

namespace simt {

constexpr int kStallSeconds = 20;
constexpr size_t kStackBytes = 256 << 10;
constexpr int kMaxThreads = 1024;

inline unsigned long long g_seed = 0;  // of the schedules

[[noreturn]] inline void Fail(const char* what, int a = -1, int b = -1) {
  static std::atomic_flag failed;
  if (failed.test_and_set()) std::this_thread::sleep_for(std::chrono::hours(1));  // one report
  std::fprintf(stderr, "simt: %s (block %u,%u, thread %u,%u; %d %d; SIMT_SEED=%llu)\n", what,
               blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y, a, b, g_seed);
  std::fflush(stderr);
  std::_Exit(3);
}

inline std::atomic<unsigned long long> g_progress{0};  // barrier phases completed

// [begin, end) of every __shared__ variable: the function-local statics (mangled "_ZZ") of
// functions in identirep::kernels, from the symbol table of the object holding
// identirep_simt_anchor (the executable, or a shared library), sorted.
inline const std::vector<std::pair<char*, char*>>& SharedRanges() {
  static const std::vector<std::pair<char*, char*>> ranges = [] {
    std::vector<std::pair<char*, char*>> out;
    const void* anchor = reinterpret_cast<const void*>(&identirep_simt_anchor);
    // the loaded object whose segments hold the anchor: a shared library names its file, the
    // executable has no name here (dladdr would give argv[0])
    struct Found {
      uintptr_t addr;
      const char* name;
    } found{reinterpret_cast<uintptr_t>(anchor), nullptr};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
          Found& fd = *static_cast<Found*>(data);
          for (int k = 0; k < info->dlpi_phnum; ++k) {
            const ElfW(Phdr)& ph = info->dlpi_phdr[k];
            const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
            if (ph.p_type == PT_LOAD && fd.addr >= lo && fd.addr < lo + ph.p_memsz) {
              fd.name = info->dlpi_name;
              return 1;
            }
          }
          return 0;
        },
        &found);
    FILE* f = std::fopen(found.name != nullptr && found.name[0] ? found.name : "/proc/self/exe",
                         "rb");
    if (f == nullptr) Fail("cannot open the kernels' ELF file");
    std::vector<char> img;
    char buf[1 << 16];
    for (size_t got; (got = std::fread(buf, 1, sizeof buf, f)) > 0;)
      img.insert(img.end(), buf, buf + got);
    std::fclose(f);
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(img.data());
    if (img.size() < sizeof(Elf64_Ehdr) || std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
        eh->e_ident[EI_CLASS] != ELFCLASS64)
      Fail("the kernels' ELF file is not 64-bit ELF");
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(img.data() + eh->e_shoff);
    uintptr_t bias = 0;
    bool have_bias = false;
    const char* prefix = "_ZZN9identirep7kernels";
    for (int i = 0; i < eh->e_shnum; ++i) {
      if (sh[i].sh_type != SHT_SYMTAB) continue;
      const auto* sym = reinterpret_cast<const Elf64_Sym*>(img.data() + sh[i].sh_offset);
      const char* names = img.data() + sh[sh[i].sh_link].sh_offset;
      const size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
      for (size_t k = 0; k < count; ++k) {
        const char* name = names + sym[k].st_name;
        if (std::strcmp(name, "identirep_simt_anchor") == 0) {
          bias = reinterpret_cast<uintptr_t>(anchor) - sym[k].st_value;
          have_bias = true;
        }
      }
      for (size_t k = 0; k < count; ++k) {
        const char* name = names + sym[k].st_name;
        if (ELF64_ST_TYPE(sym[k].st_info) == STT_OBJECT && sym[k].st_size > 0 &&
            std::strncmp(name, prefix, std::strlen(prefix)) == 0)
          out.emplace_back(reinterpret_cast<char*>(sym[k].st_value),
                           reinterpret_cast<char*>(sym[k].st_value + sym[k].st_size));
      }
    }
    if (!have_bias) Fail("no symbol table in the kernels' ELF file (do not strip it)");
    for (auto& [b, e] : out) {
      b += bias;
      e += bias;
    }
    std::sort(out.begin(), out.end());
    return out;
  }();
  return ranges;
}

struct Worker {
  std::atomic<unsigned> epoch{0};  // bumped when a barrier one of its fibers waits on completes
};

struct Barrier;

struct Fiber {
  jmp_buf jb;
  ucontext_t uc;
  int index;  // linear thread id
  uint3 tid, bid;
  int worker;
  struct Block* block;
  struct Warp* warp;
  int lane;
  unsigned shuffles;
  const Barrier* waiting;  // blocked until its generation moves past wait_gen
  unsigned wait_gen;
  bool started, finished;
};

inline unsigned long long Mix(unsigned long long x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline thread_local Fiber* self;
inline thread_local jmp_buf worker_jb;

// Back to the worker's scheduler; returns when the worker resumes this fiber.
inline void Yield() {
  if (!_setjmp(self->jb)) _longjmp(worker_jb, 1);
}

// A barrier of fibers over all workers: of the lanes of a warp (a shuffle), of the threads of a
// block (__syncthreads: a thread that returns while others wait there, or before they arrive,
// is an error), or of all threads between two blocks.
enum class Kind { kShuffle, kSync, kBetween };
constexpr const char* kDivergentSync = "__syncthreads not reached by a thread that returned";

struct Barrier {
  Barrier(int n, std::vector<Worker>& w, Kind k, std::function<void()> done = {})
      : kind(k), threads(n), expected(n), workers(w), on_complete(std::move(done)) {}

  void Wait() {
    std::unique_lock<std::mutex> lk(m);
    if (kind == Kind::kSync && expected != threads)
      Fail(kDivergentSync);
    const unsigned g = gen.load(std::memory_order_relaxed);
    if (++arrived == expected) return Complete();
    waiting.set(self->worker);
    self->waiting = this;
    self->wait_gen = g;
    lk.unlock();
    Yield();
  }

  void Drop() {
    std::lock_guard<std::mutex> lk(m);
    if (kind == Kind::kSync && arrived > 0)
      Fail(kDivergentSync);
    --expected;
    if (arrived > 0 && arrived == expected) Complete();
  }

  const Kind kind;
  std::atomic<unsigned> gen{0};

 private:
  void Complete() {  // with m held
    arrived = 0;
    if (on_complete) on_complete();
    gen.fetch_add(1, std::memory_order_release);
    g_progress.fetch_add(1, std::memory_order_relaxed);
    for (size_t w = waiting._Find_first(); w < waiting.size(); w = waiting._Find_next(w)) {
      workers[w].epoch.fetch_add(1, std::memory_order_release);
      workers[w].epoch.notify_one();
    }
    waiting.reset();
  }

  std::mutex m;
  const int threads;
  int arrived = 0, expected;
  std::bitset<kMaxThreads> waiting;  // workers with a fiber waiting
  std::vector<Worker>& workers;
  std::function<void()> on_complete;
};

struct Slot {
  unsigned long long bits;
  unsigned seq;  // shuffle number of the lane that wrote it
};

struct Warp {
  Warp(int n, std::vector<Worker>& w) : lanes(n), bar(n, w, Kind::kShuffle) {
    for (auto& buf : slot)
      for (Slot& s : buf) s = {0, ~0u};
  }
  int lanes;
  Barrier bar;
  Slot slot[2][32];  // shuffles alternate buffers: one barrier per shuffle is enough
  unsigned char wide[2][32][64];  // WarpGather's payloads, alternating with the same count
};

struct Block {
  Block(int threads, std::vector<Worker>& w) : bar(threads, w, Kind::kSync) {
    for (int i = 0; i * 32 < threads; ++i)
      warps.push_back(std::make_unique<Warp>(threads - 32 * i < 32 ? threads - 32 * i : 32, w));
  }
  Barrier bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

// Fiber stacks (with a guard page below), reused by the launches.
inline char* Stack(size_t i) {
  static std::vector<char*> stacks;
  const size_t page = 4096;
  while (stacks.size() <= i) {
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) Fail("cannot map a fiber stack");
    stacks.push_back(static_cast<char*>(p) + page);
  }
  return stacks[i];
}

// SIMT_SEED, or a random seed (printed on stderr when a launch fails) of the schedules.
inline unsigned long long Seed() {
  const char* env = std::getenv("SIMT_SEED");
  const unsigned long long s = env ? std::strtoull(env, nullptr, 0) : std::random_device{}();
  g_seed = s;
  return s;
}

inline int WorkerCount(int threads) {
  const char* env = std::getenv("SIMT_WORKERS");
  const int w = env ? std::atoi(env) : 4;
  return w <= 0 || w > threads ? threads : w;
}

struct Grid {
  dim3 grid, block;
  int threads;
  long long blocks;
  std::function<void()> body;
  unsigned long long seed;
  std::vector<Worker> workers;
  std::vector<Fiber> fibers;
  std::unique_ptr<Block> current;
  std::atomic<long long> next_block{0};
  // Scheduling priorities in the current block (warp << 32 | thread, random for each block),
  // and whether it runs one warp at a time.
  std::unique_ptr<std::atomic<unsigned long long>[]> keys;
  std::atomic<bool> strict{false};
  Barrier between;  // all threads, between blocks: sets up the next one

  Grid(dim3 g, dim3 b, std::function<void()> f, unsigned long long s, int nworkers)
      : grid(g), block(b), threads(static_cast<int>(b.x * b.y * b.z)),
        blocks(1LL * g.x * g.y * g.z), body(std::move(f)), seed(s), workers(nworkers),
        fibers(threads), keys(new std::atomic<unsigned long long>[threads]()),
        between(threads, workers, Kind::kBetween, [this] {
          current = std::make_unique<Block>(threads, workers);
          for (const auto& [b, e] : SharedRanges()) std::memset(b, 0xff, e - b);
          const unsigned long long h = Mix(seed ^ Mix(next_block.load()));
          strict.store(h & 1, std::memory_order_relaxed);
          for (int t = 0; t < threads; ++t)
            keys[t].store(Mix(h ^ Mix(t / 32)) << 32 | Mix(h ^ Mix(kMaxThreads + t)) >> 32,
                          std::memory_order_relaxed);
          next_block.fetch_add(1, std::memory_order_release);
        }) {}

  static void FiberMain();

  void Run(Fiber& f) {
    const int t = f.index;
    for (long long b = 0; b < blocks; ++b) {
      between.Wait();
      f.bid = blockIdx = {static_cast<unsigned>(b % grid.x),
                          static_cast<unsigned>(b / grid.x % grid.y),
                          static_cast<unsigned>(b / (1LL * grid.x * grid.y))};
      f.block = current.get();
      f.warp = current->warps[t / 32].get();
      f.lane = t % 32;
      f.shuffles = 0;
      body();
      f.block->bar.Drop();
      f.warp->bar.Drop();
    }
  }

  void Resume(Fiber& f) {
    self = &f;
    threadIdx = f.tid;
    blockIdx = f.bid;
    if (_setjmp(worker_jb)) return;
    if (!f.started) {
      f.started = true;
      setcontext(&f.uc);
    }
    _longjmp(f.jb, 1);
  }

  // Worker w resumes its runnable fibers in rounds, in the order of their keys, random for
  // each block (by warp, then by thread). In a strict block, only the warp of highest priority
  // that is not waiting at a block barrier runs (its lanes on the other workers too): warps run
  // one after another between __syncthreads, in a random order, as far ahead of each other as a
  // GPU may let them. Otherwise all warps run, interleaved.
  void Schedule(int w) {
    blockDim = block;
    gridDim = grid;
    std::vector<Fiber*> mine;
    for (int t = w; t < threads; t += static_cast<int>(workers.size())) mine.push_back(&fibers[t]);
    const auto key = [this](const Fiber* f) {
      return keys[f->index].load(std::memory_order_relaxed);
    };
    const auto blocked = [](const Fiber* f) {
      return f->waiting && f->waiting->gen.load(std::memory_order_acquire) == f->wait_gen;
    };
    size_t left = mine.size();
    long long sorted_for = -1;
    while (left > 0) {
      const unsigned e0 = workers[w].epoch.load(std::memory_order_acquire);
      const long long b = next_block.load(std::memory_order_acquire);
      if (b != sorted_for) {
        std::sort(mine.begin(), mine.end(), [&](Fiber* x, Fiber* y) { return key(x) < key(y); });
        sorted_for = b;
      }
      unsigned long long lead = ~0ULL;  // strict: the warp at work
      if (strict.load(std::memory_order_relaxed)) {
        for (const Fiber* f : mine) {
          if (!f->finished && !(blocked(f) && f->waiting->kind != Kind::kShuffle)) {
            lead = key(f) >> 32;
            break;
          }
        }
      }
      bool ran = false;
      for (Fiber* f : mine) {
        if (key(f) >> 32 > lead) break;
        if (f->finished || blocked(f)) continue;
        f->waiting = nullptr;
        Resume(*f);
        ran = true;
        left -= f->finished;
      }
      if (!ran) workers[w].epoch.wait(e0, std::memory_order_acquire);
    }
  }
};

inline Grid* g_grid;  // the running launch
inline unsigned g_launches = 0;
inline std::atomic<bool> g_active{false};

// Ends the process when a launch completes no barrier for kStallSeconds.
inline void Watchdog() {
  unsigned long long seen = 0;
  auto since = std::chrono::steady_clock::now();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const unsigned long long now = g_progress.load(std::memory_order_relaxed);
    if (now != seen || !g_active.load()) {
      seen = now;
      since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - since > std::chrono::seconds(kStallSeconds)) {
      std::fprintf(stderr, "simt: no barrier completed for %d s (deadlock; SIMT_SEED=%llu)\n",
                   kStallSeconds, g_seed);
      std::_Exit(3);
    }
  }
}

inline void Grid::FiberMain() {
  g_grid->Run(*self);
  self->finished = true;
  Yield();  // never resumed
  std::abort();
}

// Run body() as the kernel on grid x block threads; returns when the grid is done.
template <typename Body>
void Launch(dim3 grid, dim3 block, Body body) {
  const long long threads = 1LL * block.x * block.y * block.z;
  if (threads < 1 || threads > kMaxThreads || 1LL * grid.x * grid.y * grid.z < 1)
    Fail("bad launch configuration", static_cast<int>(threads));
  static const unsigned long long seed = Seed();
  Grid g(grid, block, body, Mix(seed + g_launches++), WorkerCount(static_cast<int>(threads)));
  g_grid = &g;
  for (int t = 0; t < g.threads; ++t) {
    Fiber& f = g.fibers[t];
    f.index = t;
    f.tid = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
    f.worker = t % static_cast<int>(g.workers.size());
    getcontext(&f.uc);
    f.uc.uc_stack = {Stack(t), 0, kStackBytes};
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, &Grid::FiberMain, 0);
  }
  static std::once_flag watchdog;
  std::call_once(watchdog, [] { std::thread(Watchdog).detach(); });
  g_active = true;
  std::vector<std::thread> pool;
  for (size_t w = 0; w < g.workers.size(); ++w)
    pool.emplace_back([&g, w] { g.Schedule(static_cast<int>(w)); });
  for (auto& th : pool) th.join();
  g_active = false;
}

}  // namespace simt

inline void __syncthreads() { simt::self->block->bar.Wait(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
  simt::Fiber& me = *simt::self;
  simt::Warp& w = *me.warp;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) simt::Fail("bad shuffle width", width);
  const unsigned seq = me.shuffles++;
  simt::Slot(&slot)[32] = w.slot[seq & 1];
  slot[me.lane].bits = 0;
  std::memcpy(&slot[me.lane].bits, &var, sizeof var);
  slot[me.lane].seq = seq;
  w.bar.Wait();
  if (!(mask >> me.lane & 1u)) simt::Fail("shuffle by a lane outside its mask", me.lane);
  for (int l = 0; l < 32; ++l) {
    if (mask >> l & 1u && (l >= w.lanes || slot[l].seq != seq))
      simt::Fail("a lane of the shuffle mask did not take part", l, static_cast<int>(seq));
  }
  // PTX shfl.sync.bfly with c = ((32 - width) << 8) | 31
  const int seg = 32 - width;
  const int max_lane = (me.lane & seg) | (31 & ~seg);
  int src = me.lane ^ (laneMask & 31);
  if (src > max_lane) src = me.lane;
  T out;
  std::memcpy(&out, &slot[src].bits, sizeof out);
  return out;
}

namespace simt {
// All 32 lanes' `bytes` (<= 64) from `mine` into all[32 * bytes], lane by lane: the exchange
// behind ldmatrix and mma.sync (gemm_primitives.cuh of this folder). Every lane of the warp takes part.
inline void WarpGather(const void* mine, void* all, size_t bytes) {
  Fiber& me = *self;
  Warp& w = *me.warp;
  if (bytes > 64 || w.lanes != 32) Fail("WarpGather needs a full warp and <= 64 bytes");
  const unsigned seq = me.shuffles++;
  std::memcpy(w.wide[seq & 1][me.lane], mine, bytes);
  w.slot[seq & 1][me.lane].seq = seq;
  w.bar.Wait();
  for (int l = 0; l < 32; ++l) {
    if (w.slot[seq & 1][l].seq != seq) Fail("a lane did not take part in a warp-wide op", l);
    std::memcpy(static_cast<unsigned char*>(all) + l * bytes, w.wide[seq & 1][l], bytes);
  }
}

// Whether p .. p + bytes lies in one __shared__ variable.
inline bool InShared(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (const auto& [b, e] : SharedRanges())
    if (c >= b && c + bytes <= e) return true;
  return false;
}
}  // namespace simt

inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline double __longlong_as_double(long long i) { return std::bit_cast<double>(i); }
