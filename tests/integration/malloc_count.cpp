// gw-malloc-count: an LD_PRELOAD library for test_alloc.py that counts every call to the
// malloc family (malloc, calloc, realloc, reallocarray, posix_memalign, aligned_alloc,
// memalign, valloc, pvalloc; free is not counted) in each process that loads it. operator
// new and the C library's own allocations (strdup, fopen, ...) reach malloc, so they count.
//
// With GW_MALLOC_COUNT_DIR set, each process counts into DIR/PID.count: 8 native-endian
// uint64 (calls in total, then malloc, calloc, realloc, reallocarray and the aligned ones,
// two spare), mapped shared, so a test reads a process's counts at any moment with a
// plain read. The file is made when the library loads (in gwd: the master), and again at
// once in the child of every fork() (pthread_atfork), so each worker counts into its own
// from its first instruction. Without the variable nothing is written anywhere.
//
// It never allocates itself (getenv, open, ftruncate, mmap, close) and forwards to glibc's
// __libc_* entry points. Built without sanitizers: an ASan or TSan gwd brings its own
// malloc, and test_alloc.py skips there.
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
}

namespace {

enum Slot { kTotal, kMalloc, kCalloc, kRealloc, kReallocarray, kAligned, kSlots = 8 };

std::atomic<uint64_t*> counts{nullptr};
uint64_t scratch[kSlots];  // while attaching, and without GW_MALLOC_COUNT_DIR

void Attach() {
  counts.store(scratch);  // an allocation made while attaching counts here: no recursion
  const char* dir = getenv("GW_MALLOC_COUNT_DIR");
  if (dir == nullptr || dir[0] == '\0') return;
  char path[4096];
  size_t n = 0;
  while (dir[n] != '\0' && n < sizeof path - 32) {
    path[n] = dir[n];
    n++;
  }
  path[n++] = '/';
  char digits[16];
  size_t d = 0;
  for (auto pid = static_cast<unsigned>(getpid()); d == 0 || pid != 0; pid /= 10) {
    digits[d++] = static_cast<char>('0' + pid % 10);
  }
  while (d > 0) path[n++] = digits[--d];
  for (char c : ".count") path[n++] = c;  // with the terminating NUL
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  if (ftruncate(fd, sizeof scratch) != 0) {
    close(fd);
    return;
  }
  void* p = mmap(nullptr, sizeof scratch, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p != MAP_FAILED) counts.store(static_cast<uint64_t*>(p));
}

void AtForkChild() {
  uint64_t* parents = counts.load();
  Attach();
  if (parents != nullptr && parents != scratch) munmap(parents, sizeof scratch);
}

__attribute__((constructor)) void Init() {
  if (counts.load() == nullptr) Attach();
  pthread_atfork(nullptr, nullptr, AtForkChild);
}

inline void Count(Slot which) {
  uint64_t* c = counts.load(std::memory_order_acquire);
  if (c == nullptr) {  // a call before the constructor ran
    Attach();
    c = counts.load();
  }
  std::atomic_ref<uint64_t>(c[kTotal]).fetch_add(1, std::memory_order_relaxed);
  std::atomic_ref<uint64_t>(c[which]).fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

extern "C" {

void* malloc(size_t n) {
  Count(kMalloc);
  return __libc_malloc(n);
}

void* calloc(size_t a, size_t b) {
  Count(kCalloc);
  return __libc_calloc(a, b);
}

void* realloc(void* p, size_t n) {
  Count(kRealloc);
  return __libc_realloc(p, n);
}

void* reallocarray(void* p, size_t a, size_t b) {
  Count(kReallocarray);
  size_t n = 0;
  if (__builtin_mul_overflow(a, b, &n)) {
    errno = ENOMEM;
    return nullptr;
  }
  return __libc_realloc(p, n);
}

void* memalign(size_t align, size_t n) {
  Count(kAligned);
  return __libc_memalign(align, n);
}

void* aligned_alloc(size_t align, size_t n) {
  Count(kAligned);
  return __libc_memalign(align, n);
}

void* valloc(size_t n) {
  Count(kAligned);
  return __libc_memalign(static_cast<size_t>(sysconf(_SC_PAGESIZE)), n);
}

void* pvalloc(size_t n) {
  Count(kAligned);
  auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return __libc_memalign(page, (n + page - 1) / page * page);
}

int posix_memalign(void** out, size_t align, size_t n) {
  Count(kAligned);
  if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
  void* p = __libc_memalign(align, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}

}  // extern "C"
