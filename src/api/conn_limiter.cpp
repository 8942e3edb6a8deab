#include "gw/api/conn_limiter.hpp"

#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <cstring>
#include <string_view>

#include "gw/api/hash.hpp"
#include "gw/core/log.hpp"

namespace gw::api {

ConnLimiter::ConnLimiter(const config::Config& cfg, const shm::Segment& seg, uint32_t worker)
    : table_(seg, worker), counters_(seg.guard(worker)), seed_(seg.header().limit_seed) {
  bool any = false;
  listeners_.resize(cfg.listeners.size());
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const auto& l = cfg.listeners[i];
    if (!l.limit_conn.on) continue;
    listeners_[i] = {scope_id("conn/" + l.name), l.limit_conn.max};
    any = true;
  }
  if (!any) return;
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  n_fds_ = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 24) ? (1u << 24) : rl.rlim_cur;
  // Untouched pages cost nothing: the array is paid for as descriptors are used.
  void* p = ::mmap(nullptr, n_fds_ * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    n_fds_ = 0;
    throw std::runtime_error("cannot map the limit_conn ticket array");
  }
  tickets_ = static_cast<uint32_t*>(p);
}

ConnLimiter::~ConnLimiter() {
  if (tickets_) ::munmap(tickets_, n_fds_ * sizeof(uint32_t));
}

bool ConnLimiter::admit(int fd, uint32_t listener, const sockaddr* peer, uint64_t now_ms) noexcept {
  if (listener >= listeners_.size() || listeners_[listener].scope == 0 || !peer) return true;
  if (fd < 0 || static_cast<size_t>(fd) >= n_fds_) return true;  // cannot happen: fds stay under RLIMIT_NOFILE
  const ListenerLimit& l = listeners_[listener];
  // The key is the address bytes; an IPv4-mapped IPv6 address counts as IPv4.
  std::string_view key;
  if (peer->sa_family == AF_INET) {
    key = {reinterpret_cast<const char*>(&reinterpret_cast<const sockaddr_in*>(peer)->sin_addr), 4};
  } else if (peer->sa_family == AF_INET6) {
    const auto* a = &reinterpret_cast<const sockaddr_in6*>(peer)->sin6_addr;
    key = IN6_IS_ADDR_V4MAPPED(a) ? std::string_view(reinterpret_cast<const char*>(a) + 12, 4)
                                  : std::string_view(reinterpret_cast<const char*>(a), 16);
  } else {
    return true;
  }
  if (tickets_[fd]) release(fd);  // a ticket of a socket closed without release(): give it back
  const ConnTicket t = table_.acquire_conn(limit_hash(seed_, l.scope, key), l.max, now_ms);
  if (t.result == LimitResult::allowed) {
    tickets_[fd] = t.entry;
    return true;
  }
  // Over the limit, or (full) every entry of its set holds connections: refused, as nginx does.
  counters_.conn_rejected.store(counters_.conn_rejected.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return false;
}

}  // namespace gw::api
