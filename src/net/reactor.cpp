#include "gw/net/reactor.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "gw/core/log.hpp"

namespace gw::net {

Epoll::Epoll() : fd_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (!fd_) throw std::runtime_error(fmt::format("epoll_create1: {}", std::strerror(errno)));
}

int Epoll::add(int fd, uint32_t events, uint64_t data) noexcept {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  return ::epoll_ctl(fd_.get(), EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : errno;
}

int Epoll::del(int fd) noexcept {
  return ::epoll_ctl(fd_.get(), EPOLL_CTL_DEL, fd, nullptr) == 0 ? 0 : errno;
}

int Epoll::wait(epoll_event* events, int max, int timeout_ms) noexcept {
  int n = ::epoll_wait(fd_.get(), events, max, timeout_ms);
  if (n >= 0) return n;
  if (errno == EINTR) return 0;
  // EBADF, EINVAL, EFAULT: the set itself is broken (its descriptor closed
  // under it by a double close, say). Every later wait fails the same way at
  // once, so returning would spin the worker at full CPU, serving nothing and
  // saying nothing; the master respawns a worker that ends.
  GW_LOG_ERROR("epoll_wait on fd {}: {}; aborting the worker", fd_.get(), std::strerror(errno));
  std::abort();
}

TimerWheel::TimerWheel(uint64_t now_ms) noexcept : tick_(now_ms / kTickMs) {
  for (auto& s : slots_) s.prev = s.next = &s;
}

void TimerWheel::link(TimerNode& n, uint64_t deadline_ms) noexcept {
  uint64_t t = deadline_ms / kTickMs;
  if (advancing_ && t <= tick_) t = advance_to_;  // due now: later in this advance, or the next
  else if (t < tick_) t = tick_;
  TimerNode& head = slots_[t % kSlots];
  n.next = &head;
  n.prev = head.prev;
  head.prev->next = &n;
  head.prev = &n;
  ++count_;
}

void TimerWheel::schedule(TimerNode& n, uint64_t deadline_ms) noexcept {
  if (n.linked()) cancel(n);
  n.deadline_ms = deadline_ms;
  link(n, deadline_ms);
}

void TimerWheel::cancel(TimerNode& n) noexcept {
  if (!n.linked()) return;
  unlink_raw(n);
  --count_;
}

int TimerWheel::timeout_ms(uint64_t now_ms) const noexcept {
  if (count_ == 0) return -1;
  // The first tick after the current one whose slot holds a node (a node
  // due a turn or more later sits in its slot and is re-filed when the
  // wheel passes it): an idle worker with connections open does not wake
  // every tick. The current tick's slot is visited again at the next tick.
  uint64_t k = 1;
  while (k < kSlots) {
    const TimerNode& head = slots_[(tick_ + k) % kSlots];
    if (head.next != &head) break;
    ++k;
  }
  const TimerNode& cur = slots_[tick_ % kSlots];
  if (cur.next != &cur) k = 1;
  uint64_t next = (tick_ + k) * kTickMs;
  return next > now_ms ? static_cast<int>(next - now_ms) : 1;
}

}  // namespace gw::net
