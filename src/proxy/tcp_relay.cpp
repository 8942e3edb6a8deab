#include "gw/proxy/tcp_relay.hpp"

#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/socket.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"

namespace gw::proxy {
namespace {
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
}

TcpRelay::TcpRelay(RelayEnv& env, uint32_t max_sessions) : env_(env), sessions_(max_sessions) {
  // Free list in index order, so low indices are reused first (cache-warm).
  for (uint32_t i = max_sessions; i-- > 0;) {
    sessions_[i].next_free = free_head_;
    free_head_ = i;
  }
}

void TcpRelay::accept(int fd, uint32_t listener, const sockaddr* peer) noexcept {
  if (free_head_ == kNone) {
    ::close(fd);
    return;
  }
  Session& s = sessions_[free_head_];
  free_head_ = s.next_free;
  ++active_;
  s.cfd = fd;
  s.ufd = -1;
  s.state = State::connecting;
  s.c_in = s.c_out = s.u_in = s.u_out = false;
  s.c_eof = s.u_eof = s.c_shut = s.u_shut = false;
  s.c_hup = s.u_hup = false;
  s.bound = false;
  s.attempts = 0;
  s.listener = static_cast<uint16_t>(listener);
  s.c2u = Pipe{};
  s.u2c = Pipe{};
  s.key_len = 0;
  if (peer && peer->sa_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(peer);
    if (::inet_ntop(AF_INET6, &a->sin6_addr, s.key, sizeof(s.key))) s.key_len = static_cast<uint8_t>(std::strlen(s.key));
  } else if (peer && peer->sa_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(peer);
    if (::inet_ntop(AF_INET, &a->sin_addr, s.key, sizeof(s.key))) s.key_len = static_cast<uint8_t>(std::strlen(s.key));
  }
  net::set_nodelay(fd);
  auto& w = env_.seg->worker(env_.worker);
  w.connections.store(active_, std::memory_order_relaxed);
  w.accepted.store(w.accepted.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  if (env_.epoll->add(fd, kSocketEvents, data_of(s, kKindClient)) != 0) {
    close_session(s);
    return;
  }
  connect_next(s);
}

void TcpRelay::connect_next(Session& s) noexcept {
  const balance::Snapshot& snap = *env_.snap;
  int ui = s.listener < env_.listener_upstream.size() ? env_.listener_upstream[s.listener] : -1;
  if (ui < 0) {
    close_session(s);
    return;
  }
  const balance::UpstreamView& uv = snap.upstreams()[static_cast<size_t>(ui)];
  auto hosts = snap.table().hosts();
  const uint32_t tries = std::min<uint32_t>(uv.tries, kMaxTries);
  while (s.attempts < tries) {
    bool fell_back = false;
    bool ramp = true, ramped_out = false;
    auto eligible = [&](uint32_t i) noexcept {
      const shm::HostRecord& r = hosts[i];
      if (r.admin_down) return false;
      for (uint32_t k = 0; k < s.attempts; ++k)
        if (s.tried[k] == r.slot) return false;
      const shm::HostRuntime& hr = env_.seg->host(r.slot);
      if (!shm::host_usable(hr, r.tag, uv.health, env_.now_ms)) return false;
      if (uv.slow_start_ms == 0) return true;
      // Slow start: a host that just came back takes a growing share of its
      // weight (never applied to hash methods: keys must not wander).
      if (shm::method_uses_key(static_cast<shm::Method>(snap.table().pools()[r.pool].method))) return true;
      if (!ramp) return true;
      uint32_t share = shm::slow_start_permille(hr, r.tag, r.weight, uv.slow_start_ms, env_.now_ms);
      if (share >= 1000 || rng_.below(1000) < share) return true;
      ramped_out = true;
      return false;
    };
    auto load = [&](uint32_t i) noexcept {
      // Active connections over every worker: one relaxed load per row.
      const shm::HostRecord& r = hosts[i];
      uint64_t n = 0;
      for (uint32_t w = 0; w < env_.n_workers; ++w) {
        const shm::HostCounter& c = env_.seg->counter(w, r.slot);
        if (c.tag.load(std::memory_order_relaxed) == r.tag) n += c.active.load(std::memory_order_relaxed);
      }
      return n;
    };
    int h = env_.balancer->pick(snap, uv, std::string_view(s.key, s.key_len), eligible, load, &fell_back);
    if (h < 0 && ramped_out) {
      // Slow start lowers a host's share; it never refuses the only usable host.
      ramp = false;
      h = env_.balancer->pick(snap, uv, std::string_view(s.key, s.key_len), eligible, load, &fell_back);
    }
    if (fell_back && s.attempts == 0) {
      auto& w = env_.seg->worker(env_.worker);
      w.hash_fallbacks.store(w.hash_fallbacks.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    if (h < 0) break;
    if (env_.table_changed) {
      // Propagation: the first connection this worker routes with a new table.
      env_.table_changed = false;
      env_.seg->worker(env_.worker).applied_ns.store(core::monotonic_ns(), std::memory_order_release);
    }
    const shm::HostRecord& r = hosts[static_cast<size_t>(h)];
    s.tried[s.attempts++] = r.slot;
    s.host_slot = r.slot;
    s.host_tag = r.tag;
    s.host_weight = r.weight;
    s.bound = true;
    s.idle_ms = uv.idle_timeout_ms;
    shm::counter_open(env_.seg->counter(env_.worker, r.slot), r.tag);
    int err = 0;
    s.u_in = s.u_out = s.u_hup = false;  // nothing carries over from a failed attempt
    s.connect_start_ns = core::monotonic_ns();
    int fd = net::connect_tcp(r.addr, err);
    if (fd < 0) {
      on_connect_failed(s, err);
      continue;
    }
    s.ufd = fd;
    if (env_.epoll->add(fd, kSocketEvents, data_of(s, kKindUpstream)) != 0) {
      int e = errno;
      ::close(fd);
      s.ufd = -1;
      on_connect_failed(s, e);
      continue;
    }
    if (err == 0) {
      on_connected(s);
    } else {
      env_.timers->schedule(s, env_.now_ms + uv.connect_timeout_ms);
    }
    return;
  }
  {
    auto& w = env_.seg->worker(env_.worker);
    w.no_host.store(w.no_host.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  if (env_.now_ms - last_no_host_log_ms_ >= 1000) {
    last_no_host_log_ms_ = env_.now_ms;
    GW_LOG_WARN("upstream {}: no live host for a connection after {} attempt(s); closing it",
                shm::name_of(snap.table().upstreams()[static_cast<size_t>(ui)].name), s.attempts);
  }
  close_session(s);
}

void TcpRelay::host_event(uint32_t slot, uint32_t tag, bool down, int err) noexcept {
  const shm::Table& t = env_.snap->table();
  auto hosts = t.hosts();
  std::string path = "(removed host)", address = "-";
  uint32_t max_fails = 0, fail_timeout = 0;
  for (size_t i = 0; i < hosts.size(); ++i) {
    if (hosts[i].slot == slot && hosts[i].tag == tag) {
      try {
        path = t.host_path(static_cast<int>(i));
        address = hosts[i].addr.to_string();
      } catch (...) {
      }
      const auto& pool = t.pools()[hosts[i].pool];
      max_fails = t.upstreams()[pool.upstream].max_fails;
      fail_timeout = t.upstreams()[pool.upstream].fail_timeout_ms;
      break;
    }
  }
  try {
    std::string text =
        down ? fmt::format("host_down {} {} (passive: {} failure(s) within {} ms, last: {})", path, address,
                           max_fails, fail_timeout, std::strerror(err))
             : fmt::format("host_up {} {} (passive: a connection succeeded)", path, address);
    shm::emit_event(*env_.seg, shm::EventKind::health, t.header().generation, text);
    GW_LOG_WARN("{}", text);
  } catch (...) {
  }
}

namespace {
// Errors that say something about the backend or the path to it. Others
// (EMFILE, ENOBUFS, EADDRNOTAVAIL: out of ports, ...) are this machine's own
// trouble and must not take a healthy host out for every worker.
bool peer_error(int err) {
  switch (err) {
    case ECONNREFUSED: case ETIMEDOUT: case EHOSTUNREACH: case ENETUNREACH: case ECONNRESET:
    case ECONNABORTED: case EHOSTDOWN: case ENETDOWN: case EPIPE: case EPROTO:
      return true;
    default:
      return false;
  }
}
}  // namespace

void TcpRelay::on_connect_failed(Session& s, int err) noexcept {
  const balance::Snapshot& snap = *env_.snap;
  int ui = env_.listener_upstream[s.listener];
  const balance::UpstreamView& uv = snap.upstreams()[static_cast<size_t>(ui)];
  shm::HostRuntime& hr = env_.seg->host(s.host_slot);
  GW_LOG_DEBUG("connect to host slot {} failed: {}", s.host_slot, std::strerror(err));
  if (!peer_error(err)) {
    if (env_.now_ms - last_local_error_log_ms_ >= 1000) {
      last_local_error_log_ms_ = env_.now_ms;
      GW_LOG_ERROR("cannot connect upstream: {} (a local error: no host is blamed; the connection is closed)",
                   std::strerror(err));
    }
    s.attempts = kMaxTries;  // another host would fail the same way
    unbind(s);
    return;
  }
  if (shm::record_failure(hr, s.host_tag, uv.health, env_.now_ms)) host_event(s.host_slot, s.host_tag, true, err);
  env_.balancer->on_failure(s.host_slot, s.host_tag, s.host_weight, uv.health.max_fails);
  unbind(s);
}

void TcpRelay::unbind(Session& s) noexcept {
  if (!s.bound) return;
  shm::counter_close(env_.seg->counter(env_.worker, s.host_slot), s.host_tag);
  s.bound = false;
}

void TcpRelay::on_connected(Session& s) noexcept {
  shm::HostRuntime& hr = env_.seg->host(s.host_slot);
  shm::record_latency(hr, s.host_tag, (core::monotonic_ns() - s.connect_start_ns) / 1000, env_.now_ms);
  if (shm::record_success(hr, s.host_tag)) {
    shm::mark_up(hr, s.host_tag, env_.now_ms);
    host_event(s.host_slot, s.host_tag, false, 0);
  }
  s.state = State::relay;
  s.u_in = s.u_out = true;
  env_.timers->schedule(s, env_.now_ms + s.idle_ms);
  drive(s);
}

void TcpRelay::on_event(uint64_t data, uint32_t events) noexcept {
  uint32_t idx = static_cast<uint32_t>(data);
  if (idx >= sessions_.size()) return;
  Session& s = sessions_[idx];
  if (s.state == State::free || ((data >> 32) & 0x3fffffffu) != (s.gen & 0x3fffffffu)) return;  // stale
  const bool in = events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  const bool out = events & (EPOLLOUT | EPOLLHUP | EPOLLERR);
  const bool hup = events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  if (event_kind(data) == kKindClient) {
    if (hup) s.c_hup = true;
    if (in) s.c_in = true;
    if (out) s.c_out = true;
    if (s.state == State::connecting) {
      // The client's bytes wait in its socket until the upstream is ready; a
      // client that vanishes meanwhile ends the attempt.
      if (events & EPOLLERR) close_session(s);
      return;
    }
  } else {
    if (s.state == State::connecting) {
      if (!out) return;
      int err = net::socket_error(s.ufd);
      if (err == 0) {
        env_.timers->cancel(s);
        // The backend may already have sent data and closed: this event is the
        // only report of its FIN (edge-triggered), so keep it.
        if (hup) s.u_hup = true;
        on_connected(s);
        return;
      }
      env_.timers->cancel(s);
      env_.epoll->del(s.ufd);
      ::close(s.ufd);
      s.ufd = -1;
      on_connect_failed(s, err);
      connect_next(s);
      return;
    }
    if (hup) s.u_hup = true;
    if (in) s.u_in = true;
    if (out) s.u_out = true;
  }
  drive(s);
}

void TcpRelay::on_timer(net::TimerNode& n) noexcept {
  Session& s = static_cast<Session&>(n);
  if (s.state == State::connecting) {
    env_.epoll->del(s.ufd);
    ::close(s.ufd);
    s.ufd = -1;
    on_connect_failed(s, ETIMEDOUT);
    connect_next(s);
  } else if (s.state == State::relay) {
    GW_LOG_DEBUG("session {}: idle for {} ms; closing", index_of(s), s.idle_ms);
    close_session(s);
  }
}

void TcpRelay::release(Pipe& p) noexcept {
  if (p.buf) env_.buffers->release(p.buf);
  p = Pipe{};
}

bool TcpRelay::pump(int src, bool& src_in, bool src_hup, bool& src_eof, Pipe& p, int dst, bool& dst_out,
                    bool& dst_shut, Session& s) noexcept {
  for (;;) {
    if (p.pending()) {
      if (!dst_out) break;
      ssize_t n = ::send(dst, p.buf + p.head, p.tail - p.head, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        p.head += static_cast<uint32_t>(n);
        s.deadline_ms = env_.now_ms + s.idle_ms;  // lazy: the wheel re-files it when due
        if (!p.pending()) release(p);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        dst_out = false;  // back-pressure: src is not read until dst drains
        break;
      }
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    if (src_eof || !src_in) break;
    if (!p.buf) {
      p.buf = env_.buffers->acquire();
      if (!p.buf) return false;
    }
    ssize_t n = ::recv(src, p.buf, net::BufferPool::kBufferSize, MSG_DONTWAIT);
    if (n > 0) {
      p.head = 0;
      p.tail = static_cast<uint32_t>(n);
      s.deadline_ms = env_.now_ms + s.idle_ms;
      // A short read emptied the socket's receive queue. With edge-triggered
      // epoll the next arrival raises a new event, so the recv() that would
      // only say EAGAIN is skipped (nginx does the same). Not after the peer's
      // FIN was signalled: no further event would come to report the EOF.
      if (static_cast<size_t>(n) < net::BufferPool::kBufferSize && !src_hup) src_in = false;
      continue;
    }
    if (n == 0) {
      src_eof = true;
      release(p);
      break;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      src_in = false;
      release(p);
      break;
    }
    if (errno == EINTR) continue;
    return false;  // reset or error: the relay ends
  }
  if (src_eof && !p.pending() && !dst_shut) {
    ::shutdown(dst, SHUT_WR);  // half-close travels on
    dst_shut = true;
  }
  return true;
}

void TcpRelay::drive(Session& s) noexcept {
  if (!pump(s.cfd, s.c_in, s.c_hup, s.c_eof, s.c2u, s.ufd, s.u_out, s.u_shut, s) ||
      !pump(s.ufd, s.u_in, s.u_hup, s.u_eof, s.u2c, s.cfd, s.c_out, s.c_shut, s)) {
    close_session(s);
    return;
  }
  if (s.c_eof && s.u_eof && s.c_shut && s.u_shut) close_session(s);
}

void TcpRelay::close_session(Session& s) noexcept {
  env_.timers->cancel(s);
  if (s.cfd >= 0) ::close(s.cfd);
  if (s.ufd >= 0) ::close(s.ufd);
  s.cfd = s.ufd = -1;
  release(s.c2u);
  release(s.u2c);
  unbind(s);
  s.state = State::free;
  ++s.gen;
  s.next_free = free_head_;
  free_head_ = index_of(s);
  --active_;
  env_.seg->worker(env_.worker).connections.store(active_, std::memory_order_relaxed);
}

void TcpRelay::close_all() noexcept {
  for (auto& s : sessions_)
    if (s.state != State::free) close_session(s);
}

}  // namespace gw::proxy
