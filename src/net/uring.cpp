#include "gw/net/uring.hpp"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "gw/core/log.hpp"

namespace gw::net {

// ---------------------------------------------------------------------------
// BufRing

BufRing::BufRing(uint32_t count, uint32_t size) : count_(count), size_(size) {
  if (count == 0 || count > 32768 || (count & (count - 1)) != 0)
    throw std::runtime_error(fmt::format("buffer ring: {} entries is not a power of two in 1..32768", count));
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  br_bytes_ = (count * sizeof(io_uring_buf) + page - 1) / page * page;
  void* r = ::mmap(nullptr, br_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (r == MAP_FAILED) throw std::runtime_error(fmt::format("buffer ring: mmap: {}", std::strerror(errno)));
  br_ = static_cast<io_uring_buf_ring*>(r);
  base_bytes_ = size_t{count} * size;
  void* b = ::mmap(nullptr, base_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (b == MAP_FAILED) {
    ::munmap(br_, br_bytes_);
    throw std::runtime_error(fmt::format("buffer ring: mmap of {} bytes: {}", base_bytes_, std::strerror(errno)));
  }
  base_ = static_cast<char*>(b);
  out_.assign(count, 1);  // every buffer starts "out", then is given to the ring
  io_uring_buf_ring_init(br_);
  for (uint32_t i = 0; i < count; ++i) recycle(static_cast<uint16_t>(i));
  publish();
}

BufRing::~BufRing() {
  if (ring_) io_uring_unregister_buf_ring(ring_, bgid_);
  if (base_) ::munmap(base_, base_bytes_);
  if (br_) ::munmap(br_, br_bytes_);
}

int BufRing::attach(io_uring* ring, uint16_t bgid) noexcept {
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(br_);
  reg.ring_entries = count_;
  reg.bgid = bgid;
  int r = io_uring_register_buf_ring(ring, &reg, 0);
  if (r == 0) {
    ring_ = ring;
    bgid_ = bgid;
  }
  return r;
}

bool BufRing::taken(uint16_t bid) noexcept {
  if (bid >= count_ || out_[bid] || in_kernel_ == 0) return false;
  out_[bid] = 1;
  --in_kernel_;
  return true;
}

bool BufRing::recycle(uint16_t bid) noexcept {
  if (bid >= count_ || !out_[bid]) return false;
  out_[bid] = 0;
  io_uring_buf_ring_add(br_, buf(bid), size_, bid, io_uring_buf_ring_mask(count_), static_cast<int>(pending_));
  ++pending_;
  return true;
}

uint32_t BufRing::publish() noexcept {
  uint32_t n = pending_;
  if (n) {
    io_uring_buf_ring_advance(br_, static_cast<int>(n));
    in_kernel_ += n;
    pending_ = 0;
  }
  return n;
}

// ---------------------------------------------------------------------------
// Ring

namespace {

int setup(unsigned entries, unsigned flags, io_uring* ring) {
  io_uring_params p{};
  p.flags = flags | IORING_SETUP_CQSIZE;
  p.cq_entries = entries * 4;
  return io_uring_queue_init_params(entries, ring, &p);
}

}  // namespace

Ring::Ring(unsigned sq_entries) {
  // DEFER_TASKRUN runs completion work only when this thread waits, in one
  // batch, instead of interrupting it (kernel 6.1); COOP_TASKRUN is the older
  // half of that (5.19).
  const unsigned tries[] = {IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN, 0};
  int r = -EINVAL;
  for (unsigned f : tries) {
    r = setup(sq_entries, f, &ring_);
    if (r != -EINVAL) break;
  }
  if (r < 0) throw std::runtime_error(fmt::format("io_uring_setup: {}", std::strerror(-r)));
  // The ring fd is then passed by index: io_uring_enter skips an fd lookup.
  io_uring_register_ring_fd(&ring_);
}

Ring::~Ring() {
  io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::sqe() noexcept {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  for (int attempt = 0; !s && attempt < 1000; ++attempt) {
    int r = io_uring_submit(&ring_);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) break;
    s = io_uring_get_sqe(&ring_);
  }
  if (!s) {
    GW_LOG_ERROR("io_uring: the submission queue does not drain; aborting the worker");
    std::abort();
  }
  return s;
}

void Ring::reserve(unsigned n) noexcept {
  for (int attempt = 0; io_uring_sq_space_left(&ring_) < n; ++attempt) {
    const int r = io_uring_submit(&ring_);
    if (attempt == 1000 || (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)) {
      GW_LOG_ERROR("io_uring: the submission queue does not drain; aborting the worker");
      std::abort();
    }
  }
}

int Ring::submit_and_wait(int timeout_ms) noexcept {
  if (timeout_ms < 0) return io_uring_submit_and_wait(&ring_, 1);
  __kernel_timespec ts{};
  ts.tv_sec = timeout_ms / 1000;
  ts.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1000000;
  io_uring_cqe* cqe = nullptr;
  return io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
}

int Ring::submit() noexcept {
  return io_uring_submit(&ring_);
}

// ---------------------------------------------------------------------------
// Probe

std::string uring_unsupported() noexcept {
  try {
    io_uring ring{};
    io_uring_params p{};
    int r = io_uring_queue_init_params(8, &ring, &p);
    if (r < 0) return fmt::format("io_uring_setup failed: {}", std::strerror(-r));
    std::unique_ptr<io_uring, void (*)(io_uring*)> guard(&ring, io_uring_queue_exit);
    struct Feat {
      unsigned bit;
      const char* name;
    };
    for (Feat f : {Feat{IORING_FEAT_NODROP, "IORING_FEAT_NODROP (5.5)"},
                   Feat{IORING_FEAT_FAST_POLL, "IORING_FEAT_FAST_POLL (5.7)"},
                   Feat{IORING_FEAT_EXT_ARG, "IORING_FEAT_EXT_ARG (5.11)"},
                   Feat{IORING_FEAT_CQE_SKIP, "IORING_FEAT_CQE_SKIP (5.17)"}})
      if (!(p.features & f.bit)) return fmt::format("the kernel lacks {}", f.name);
    io_uring_probe* probe = io_uring_get_probe_ring(&ring);
    if (!probe) return "io_uring cannot be probed (IORING_REGISTER_PROBE, 5.6)";
    struct Op {
      int op;
      const char* name;
    };
    std::string missing;
    for (Op o : {Op{IORING_OP_ACCEPT, "ACCEPT"}, Op{IORING_OP_RECV, "RECV"}, Op{IORING_OP_SEND, "SEND"},
                 Op{IORING_OP_CONNECT, "CONNECT"}, Op{IORING_OP_POLL_ADD, "POLL_ADD"},
                 Op{IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"}, Op{IORING_OP_LINK_TIMEOUT, "LINK_TIMEOUT"},
                 Op{IORING_OP_SHUTDOWN, "SHUTDOWN"}, Op{IORING_OP_CLOSE, "CLOSE"}})
      if (!io_uring_opcode_supported(probe, o.op)) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", o.name);
    io_uring_free_probe(probe);
    if (!missing.empty()) return fmt::format("the kernel lacks io_uring opcodes {}", missing);

    // A provided buffer ring (5.19) and multishot receive (6.0), for real.
    BufRing bufs(2, 64);
    if (int e = bufs.attach(&ring, 0); e < 0)
      return fmt::format("cannot register a provided buffer ring (5.19): {}", std::strerror(-e));
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      return fmt::format("socketpair: {}", std::strerror(errno));
    struct Closer {
      int* fds;
      ~Closer() {
        ::close(fds[0]);
        ::close(fds[1]);
      }
    } closer{sv};
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv_multishot(sqe, sv[0], nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    if (::write(sv[1], "x", 1) != 1) return fmt::format("socketpair write: {}", std::strerror(errno));
    io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec ts{1, 0};
    r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
    if (r < 0) return fmt::format("multishot receive gave no completion: {}", std::strerror(-r));
    const int res = cqe->res;
    const unsigned flags = cqe->flags;
    io_uring_cqe_seen(&ring, cqe);
    if (res == -EINVAL) return "the kernel lacks multishot receive (6.0)";
    if (res != 1 || !(flags & IORING_CQE_F_BUFFER) || !(flags & IORING_CQE_F_MORE))
      return fmt::format("multishot receive misbehaves (res {}, flags {:#x}; needs 6.0)", res, flags);
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

bool uring_recv_limit_supported() noexcept {
  try {
    Ring ring(8);
    BufRing bufs(2, 64);
    if (bufs.attach(ring.raw(), 0) < 0) return false;
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return false;
    io_uring_sqe* sqe = ring.sqe();
    io_uring_prep_recv_multishot(sqe, sv[0], nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    sqe->file_index = 1;  // optlen: at most 1 byte (then one more buffer's worth at most)
    bool ok = ::write(sv[1], "xy", 2) == 2;
    int res = 0;
    unsigned flags = 0;
    if (ok) {
      ring.submit_and_wait(1000);
      ok = ring.drain([&](const io_uring_cqe& c) {
        res = c.res;
        flags = c.flags;
      }) == 1;
    }
    ::close(sv[0]);
    ::close(sv[1]);
    return ok && res > 0 && !(flags & IORING_CQE_F_MORE);
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace gw::net
