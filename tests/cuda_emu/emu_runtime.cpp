// The host side of the CPU emulation of the CUDA runtime (tests/cuda_emu/include/cuda_runtime.h): launches,
// memory, events, device queries. Single device, synchronous streams.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack and its pointer in *save, then continues on the
// stack `load` (as left by an earlier call, or by start_fiber).
extern "C" void prefcal_emu_switch(void** save, void* load);
asm(R"(
  .text
  .globl prefcal_emu_switch
  .type prefcal_emu_switch, @function
prefcal_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size prefcal_emu_switch, .-prefcal_emu_switch
)");
#else
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace emu {

namespace {

constexpr size_t kSmemDefault = 48 * 1024;  // dynamic shared memory without the opt-in attribute
constexpr int kSmemOptin = 232448;          // an H100's opt-in maximum a block
constexpr int kSmemPerSM = 233472;
constexpr std::align_val_t kAlign{256};

thread_local cudaError_t g_last = cudaSuccess;  // per host thread, as CUDA's

std::mutex g_mutex;
std::map<const void*, int>& max_smem() {
  static std::map<const void*, int> m;
  return m;
}

// The fibers of the running block, switched by run_grid (the scheduler) and Barrier::arrive_and_wait: on
// x86-64 by a switch of the stack pointer and the callee-saved registers (no system call: a block of 256
// threads starts 256 fibers), elsewhere by ucontext.
struct Fiber {
  enum State { kReady, kRunning, kWaiting, kDone };
  std::unique_ptr<char[]> stack;
  State state = kDone;
  Barrier* waiting = nullptr;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
};
constexpr size_t kStack = 256 * 1024;
std::vector<Fiber> g_fibers;
Fiber* g_current = nullptr;
const std::function<void()>* g_body = nullptr;
#if defined(__x86_64__)
void* g_scheduler_sp = nullptr;
#else
ucontext_t g_scheduler;
#endif
#if defined(__SANITIZE_ADDRESS__)
const void* g_scheduler_bottom = nullptr;  // the scheduler's stack, for AddressSanitizer's fiber switches
size_t g_scheduler_size = 0;
#endif

[[noreturn]] void fiber_entry();

void start_fiber(Fiber& f) {
  if (!f.stack) f.stack.reset(new char[kStack]);
#if defined(__SANITIZE_ADDRESS__)
  __asan_unpoison_memory_region(f.stack.get(), kStack);
#endif
#if defined(__x86_64__)
  // the stack as prefcal_emu_switch leaves it: six callee-saved registers, then the address it returns to
  // (fiber_entry, entered with the stack pointer 8 past a multiple of 16, as after a call)
  auto top = reinterpret_cast<uintptr_t>(f.stack.get() + kStack) / 16 * 16;
  auto* words = reinterpret_cast<void**>(top - 64);
  for (int i = 0; i < 6; ++i) words[i] = nullptr;
  words[6] = reinterpret_cast<void*>(&fiber_entry);
  words[7] = nullptr;
  f.sp = words;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.get();
  f.ctx.uc_stack.ss_size = kStack;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, &fiber_entry, 0);
#endif
  f.state = Fiber::kReady;
  f.waiting = nullptr;
}

// scheduler -> fiber f, until f waits or exits
void switch_into(Fiber& f) {
  g_current = &f;
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack.get(), kStack);
#endif
#if defined(__x86_64__)
  prefcal_emu_switch(&g_scheduler_sp, f.sp);
#else
  swapcontext(&g_scheduler, &f.ctx);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// fiber f -> scheduler; returns when f is resumed (never when it has exited)
void switch_out(Fiber& f, bool exiting) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, g_scheduler_bottom, g_scheduler_size);
#else
  (void)exiting;
#endif
#if defined(__x86_64__)
  prefcal_emu_switch(&f.sp, g_scheduler_sp);
#else
  swapcontext(&f.ctx, &g_scheduler);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, &g_scheduler_bottom, &g_scheduler_size);
#endif
}

void fiber_entry() {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &g_scheduler_bottom, &g_scheduler_size);
#endif
  Fiber& f = *g_current;
  f.state = Fiber::kRunning;
  (*g_body)();
  // the thread has exited: the scheduler sees kRunning after the switch
  switch_out(f, true);
  std::abort();  // never resumed
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const int i = std::atoi(v);
  return i > 0 ? i : fallback;
}

cudaError_t fail(cudaError_t e) {
  g_last = e;
  return e;
}

}  // namespace

void Barrier::arrive_and_wait() {
  Fiber& f = *g_current;
  ++arrived;
  f.state = Fiber::kWaiting;
  f.waiting = this;
  switch_out(f, false);
  f.state = Fiber::kRunning;
}

int multiprocessors() { return env_int("PREFCAL_EMU_SMS", 2); }

int occupancy(int block, size_t smem) {
  if (block <= 0 || block > 1024) return 0;
  int by_threads = 2048 / block;
  int by_smem = smem == 0 ? 32 : static_cast<int>(kSmemPerSM / (smem + 1024));
  int blocks = std::min(std::min(by_threads, by_smem), 32);
  // a smaller grid keeps the emulation fast; PREFCAL_EMU_BLOCKS_PER_SM caps the resident blocks of an SM
  return std::min(blocks, env_int("PREFCAL_EMU_BLOCKS_PER_SM", 1));
}

void set_max_dynamic_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  max_smem()[kernel] = bytes;
}

bool run_grid(const void* kernel, const Config& c, const std::function<void()>& body) {
  const unsigned threads = c.block.x * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.y > 65535 || c.grid.z > 65535 || threads == 0 ||
      threads > 1024 || c.block.y != 1 || c.block.z != 1 || c.grid.y != 1 || c.grid.z != 1) {
    std::fprintf(stderr, "emu: bad launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n", c.grid.x, c.grid.y,
                 c.grid.z, c.block.x, c.block.y, c.block.z);
    fail(cudaErrorInvalidConfiguration);
    return false;
  }
  size_t limit = kSmemDefault;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    const auto it = max_smem().find(kernel);
    if (it != max_smem().end()) limit = static_cast<size_t>(std::min(it->second, kSmemOptin));
  }
  if (c.smem > limit) {
    std::fprintf(stderr, "emu: %zu bytes of dynamic shared memory asked, %zu allowed\n", c.smem, limit);
    fail(cudaErrorInvalidValue);
    return false;
  }
  // one grid at a time, whichever host thread launches it: the fibers and the scheduler are globals
  static std::mutex launch_mutex;
  std::lock_guard<std::mutex> launch_lock(launch_mutex);
  const unsigned warps = (threads + 31) / 32;
  std::vector<Fiber>& fibers = g_fibers;
  if (fibers.size() < threads) fibers.resize(threads);
  // PREFCAL_EMU_REVERSE=1 runs the blocks, and the threads of a block, last first: code that is right only in
  // one order (a missing barrier or fence that the ascending order happens to cover) fails in one of the two
  const bool reverse = env_int("PREFCAL_EMU_REVERSE", 0) != 0;
  for (unsigned i = 0; i < c.grid.x; ++i) {
    const unsigned b = reverse ? c.grid.x - 1 - i : i;
    Block block(threads);
    block.count_calls.assign(threads, 0);
    for (unsigned w = 0; w < warps; ++w) block.warps.push_back(std::make_unique<Warp>(int(std::min(32u, threads - 32 * w))));
    // exactly the bytes asked for (none: a null pointer), so that an overrun is an AddressSanitizer report
    std::unique_ptr<unsigned char[]> smem(c.smem > 0 ? new unsigned char[c.smem] : nullptr);
    if (c.smem > 0) std::memset(smem.get(), 0xcd, c.smem);  // not zero: a kernel may not rely on it
    block.smem = smem.get();
    tl_block = &block;
    blockIdx = uint3{b, 0, 0};
    blockDim = c.block;
    gridDim = c.grid;
    g_body = &body;
    for (unsigned t = 0; t < threads; ++t) start_fiber(fibers[t]);
    unsigned done = 0;
    while (done < threads) {
      for (unsigned k = 0; k < threads; ++k) {
        const unsigned t = reverse ? threads - 1 - k : k;
        Fiber& f = fibers[t];
        if (f.state != Fiber::kReady) continue;
        threadIdx = uint3{t, 0, 0};
        switch_into(f);
        if (f.state == Fiber::kRunning) {  // returned from the kernel
          f.state = Fiber::kDone;
          ++done;
          --block.bar.live;
          --block.warps[t / 32]->bar.live;
        }
      }
      // open every barrier at which all its live threads wait
      bool opened = false;
      for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        if (f.state == Fiber::kWaiting && f.waiting->arrived == f.waiting->live) {
          for (unsigned u = t; u < threads; ++u) {
            if (fibers[u].state == Fiber::kWaiting && fibers[u].waiting == f.waiting) fibers[u].state = Fiber::kReady;
          }
          f.waiting->arrived = 0;
          opened = true;
        }
      }
      if (!opened && done < threads) {
        std::fprintf(stderr, "emu: block %u deadlocked: its live threads wait at different barriers (a barrier in "
                     "divergent code)\n", b);
        std::abort();
      }
    }
    tl_block = nullptr;
  }
  return true;
}

}  // namespace emu

namespace {

struct Event {
  std::chrono::steady_clock::time_point at;
};

}  // namespace

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorInvalidDevice: return "invalid device ordinal (emulated)";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch (emulated)";
  }
  return "unknown error (emulated)";
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::g_last;
  emu::g_last = cudaSuccess;
  return e;
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : emu::fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return emu::fail(cudaErrorInvalidDevice);
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "CPU emulation of a CUDA device (tests/cuda_emu)");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = emu::multiprocessors();
  p->l2CacheSize = 50 * 1024 * 1024;
  p->totalGlobalMem = size_t(8) << 30;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int device) {
  if (device != 0) return emu::fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = emu::multiprocessors(); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = emu::kSmemOptin; return cudaSuccess;
  }
  return emu::fail(cudaErrorInvalidValue);
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = ::operator new(bytes == 0 ? 1 : bytes, emu::kAlign, std::nothrow);
  if (*p == nullptr) return emu::fail(cudaErrorMemoryAllocation);
  // device memory comes uninitialised (a pool's reused blocks hold old values): filled with a pattern, so a
  // kernel that counts on zeros gets garbage here rather than zeros by luck
  std::memset(*p, 0xcd, bytes);
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p != nullptr) ::operator delete(p, emu::kAlign);
  return cudaSuccess;
}
cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps*) {
  static int the_pool;
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pool);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }
cudaError_t cudaMallocFromPoolAsync(void** p, size_t bytes, cudaMemPool_t, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes > 0) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes > 0) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new Event{});
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<Event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  reinterpret_cast<Event*>(e)->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  const auto d = reinterpret_cast<Event*>(end)->at - reinterpret_cast<Event*>(start)->at;
  *ms = std::chrono::duration<float, std::milli>(d).count();
  return cudaSuccess;
}
