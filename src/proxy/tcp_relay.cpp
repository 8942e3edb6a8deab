#include "gw/proxy/tcp_relay.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "gw/api/conn_limiter.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/socket.hpp"
#include "gw/proxy/access_log.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "proxy/metrics.hpp"
#include "proxy/relay_common.hpp"

namespace gw::proxy {
namespace {
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

// On loopback the TCP handshake completes inside connect(): the first bytes
// can be sent at once instead of after the EPOLLOUT that reports it.
bool loopback(const core::SockAddr& a) noexcept {
  if (a.family == AF_INET) return a.ip[0] == 127;
  if (a.family != AF_INET6) return false;
  for (int i = 0; i < 15; ++i)
    if (a.ip[i] != 0) return false;
  return a.ip[15] == 1;
}
}  // namespace

TcpRelay::TcpRelay(RelayEnv& env, uint32_t max_sessions) : env_(env) {
  // Reserved, not touched: a slot's memory is paid for when it is first used.
  sessions_.reserve(max_sessions);
}

TcpRelay::Session* TcpRelay::new_session() noexcept {
  if (free_head_ != kNone) {
    Session& s = sessions_[free_head_];
    free_head_ = s.next_free;
    return &s;
  }
  if (sessions_.size() == sessions_.capacity()) return nullptr;
  sessions_.emplace_back();  // within the reservation: never reallocates
  return &sessions_.back();
}

void TcpRelay::accept(int fd, uint32_t listener, const sockaddr* peer) noexcept {
  Session* sp = new_session();
  if (!sp) {
    api::release_conn(env_.conn_limiter, fd);  // admitted by limit_conn: its count goes too
    ::close(fd);
    // No session slot (the worker stops accepting when its table is full, so
    // only a race gets here): counted, as the other refusals are.
    metrics::listener_accepted_refused(env_, listener);
    metrics::listener_reject(env_, listener, shm::kRejectNoSlot);
    return;
  }
  Session& s = *sp;
  ++active_;
  s.cfd = fd;
  s.ufd = -1;
  s.c_in = s.c_out = s.u_in = s.u_out = false;
  s.c_eof = s.u_eof = s.c_shut = s.u_shut = false;
  s.c_hup = s.u_hup = false;
  s.reset(static_cast<uint16_t>(listener), env_.now_ms);
  s.c2u = Pipe{};
  s.u2c = Pipe{};
  s.bytes_up = s.bytes_down = 0;
  if (peer) s.peer = core::SockAddr::from_sockaddr(peer);
  const ListenerRuntime& l = env_.listeners[listener];
  // The client IP as text only for a pool that hashes it (glibc's inet_ntop
  // formats with sprintf).
  if (s.peer.family != 0 && !l.key_from_frame && upstream_uses_key(env_, l.upstream)) {
    if (::inet_ntop(s.peer.family == AF_INET6 ? AF_INET6 : AF_INET, s.peer.ip, s.key, sizeof(s.key)))
      s.key_len = static_cast<uint8_t>(std::strlen(s.key));
  }
  s.state = l.framer ? State::sniff : State::connecting;
  // TCP_NODELAY comes from the listening socket (accepted sockets inherit it).
  metrics::listener_open(env_, listener);
  if (env_.epoll->add(fd, kSocketEvents, data_of(s, kKindClient)) != 0) {
    close_session(s);
    return;
  }
  if (s.state == State::sniff) {
    // Nothing is opened upstream until a whole, valid first frame is in. No
    // recv() yet: a device sends its first frame after its connect completes,
    // so it has rarely arrived already, and if it has, the edge-triggered
    // registration above reports it on the next wait.
    env_.timers->schedule(s, env_.now_ms + l.first_frame_timeout_ms);
    return;
  }
  connect_next(s);
}

void TcpRelay::sniff(Session& s) noexcept {
  const ListenerRuntime& l = env_.listeners[s.listener];
  Framer& framer = *l.framer;
  Pipe& p = s.c2u;
  while (s.c_in) {
    if (!p.buf) {
      p.buf = env_.buffers->acquire();
      if (!p.buf) {
        close_session(s);  // out of buffer memory: refuse rather than stall
        return;
      }
    }
    const size_t cap = (p.big ? l.frame_buffers->buffer_size() : net::BufferPool::kBufferSize) - kPadding;
    if (p.tail == cap) {
      // A valid header said the frame is larger than this buffer (a larger
      // declared body is refused on the header alone): move to a frame buffer.
      char* big = p.big ? nullptr : acquire_frame_buffer(l);
      if (!big) {
        reject(s, FrameError::no_frame_buffer);
        return;
      }
      std::memcpy(big, p.buf, p.tail);
      env_.buffers->release(p.buf);
      p.buf = big;
      p.big = true;
      continue;
    }
    const size_t want = cap - p.tail;
    ssize_t n = ::recv(s.cfd, p.buf + p.tail, want, MSG_DONTWAIT);
    if (n > 0) {
      p.tail += static_cast<uint32_t>(n);
      metrics::client_received(env_, s.listener, static_cast<uint64_t>(n));
      // The whole first frame is checked, key included, whatever is hashed.
      FrameDecision d = framer.inspect(reinterpret_cast<const uint8_t*>(p.buf), p.tail, true);
      if (d.kind == FrameDecision::Kind::reject) {
        reject(s, d.error);
        return;
      }
      if (d.kind == FrameDecision::Kind::frame) {
        if (l.key_from_frame) {
          std::memcpy(s.key, d.key.data(), d.key.size());
          s.key_len = static_cast<uint8_t>(d.key.size());
        }
        // Bytes past the first frame wait in the socket (or in this buffer)
        // and are relayed once a host is connected. A short read emptied the
        // socket: the next arrival raises a new (edge-triggered) event, so
        // no recv() that could only say EAGAIN is made (as in pump()).
        if (static_cast<size_t>(n) < want && !s.c_hup) s.c_in = false;
        env_.timers->cancel(s);
        s.state = State::connecting;
        connect_next(s);
        return;
      }
      continue;
    }
    if (n == 0) {
      // A connection closed before sending anything (a port probe) is not a
      // bad frame; one closed inside a frame is.
      if (p.tail == 0) close_session(s);
      else reject(s, framer.at_eof(p.tail));
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s.c_in = false;
      if (p.tail == 0) release_buf(s, p);  // hold no buffer while nothing has arrived
      return;
    }
    if (errno == EINTR) continue;
    // Reset by the client: the end of what it sent, as an EOF is (a frame
    // cut short is counted and logged as one; frame_mux does the same).
    if (p.tail == 0) close_session(s);
    else reject(s, framer.at_eof(p.tail));
    return;
  }
}

void TcpRelay::reject(Session& s, FrameError e) noexcept {
  count_reject(env_, s.listener, e, s.cfd);
  s.end = frame_error_name(e);
  close_session(s);
}

void TcpRelay::connect_next(Session& s) noexcept {
  const balance::Snapshot& snap = *env_.snap;
  int ui = s.listener < env_.listeners.size() ? env_.listeners[s.listener].upstream : -1;
  if (ui < 0) {
    close_session(s);
    return;
  }
  const balance::UpstreamView& uv = snap.upstreams()[static_cast<size_t>(ui)];
  while (const shm::HostRecord* rp = bind_next_host(env_, s, ui, uv, rng_)) {
    const shm::HostRecord& r = *rp;
    int err = 0;
    s.u_in = s.u_out = s.u_hup = false;  // nothing carries over from a failed attempt
    int fd = net::connect_tcp(r.addr, err);
    if (fd < 0) {
      if (start_fd_wait(env_, s, err, uv.connect_timeout_ms)) {
        env_.timers->schedule(s, env_.now_ms + kFdWaitMs);
        return;
      }
      connect_failed(env_, s, err, last_local_error_log_ms_);
      continue;
    }
    s.ufd = fd;
    if (env_.epoll->add(fd, kSocketEvents, data_of(s, kKindUpstream)) != 0) {
      int e = errno;
      ::close(fd);
      s.ufd = -1;
      connect_failed(env_, s, e, last_local_error_log_ms_);
      continue;
    }
    if (err == 0) {
      on_connected(s, true);
      return;
    }
    if (s.c2u.pending() && loopback(r.addr)) {
      // The sniffed first frame goes out at once if the handshake is done
      // (on loopback it is, as a rule): no wait for EPOLLOUT and no SO_ERROR
      // check. EAGAIN means still connecting; a reset means connected (and
      // reset since); another error is a failed connect.
      Pipe& p = s.c2u;
      ssize_t n = ::send(fd, p.buf + p.head, p.tail - p.head, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        p.head += static_cast<uint32_t>(n);
        s.bytes_up += static_cast<uint64_t>(n);
        metrics::host_sent(env_, s.host_slot, s.host_tag, static_cast<uint64_t>(n));
        if (!p.pending()) release(s, p);
        on_connected(s, false);  // nothing can have come back before the host had a byte
        return;
      }
      if (n < 0 && net::reset_after_connect(errno)) {
        on_connected_then_reset(s, errno);
        return;
      }
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        const int e = errno;
        ::close(fd);
        s.ufd = -1;
        connect_failed(env_, s, e, last_local_error_log_ms_);
        continue;
      }
    }
    env_.timers->schedule(s, env_.now_ms + uv.connect_timeout_ms);
    return;
  }
  count_unrouted(env_, s, ui, last_no_host_log_ms_);
  close_session(s);
}

void TcpRelay::on_connected(Session& s, bool readable) noexcept {
  record_connect_success(env_, s.host_slot, s.host_tag, s.connect_start_ns);
  s.state = State::relay;
  s.u_out = true;
  s.u_in = readable;  // else the host's first bytes raise an (edge-triggered) event
  env_.timers->schedule(s, env_.now_ms + s.idle_ms);
  drive(s);
}

void TcpRelay::on_connected_then_reset(Session& s, int err) noexcept {
  // The host accepted (and may have sent a banner: "server full") and reset
  // before the connect was seen. Had the reset come after, a read would have
  // reported it (src_failed); the same end follows: what the host sent is
  // still in the socket and is delivered (SO_ERROR, now cleared, is no longer
  // reported: reads return the bytes, then 0), then the client gets a FIN,
  // and the client's bytes are dropped. The host may have had bytes of the
  // client: no other host is tried (as nginx and HAProxy do for a session
  // reset once established).
  GW_LOG_DEBUG("session {}: host slot {} reset the connection once established: {}", index_of(s), s.host_slot,
               std::strerror(err));
  release(s, s.c2u);  // a sniffed first frame the host never took
  s.u_shut = true;
  s.u_hup = true;
  on_connected(s, true);
}

void TcpRelay::on_event(uint64_t data, uint32_t events) noexcept {
  uint32_t idx = static_cast<uint32_t>(data);
  if (idx >= sessions_.size()) return;
  Session& s = sessions_[idx];
  if (s.state == State::free || !event_gen_is(data, s.gen)) return;  // stale
  const bool in = events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  const bool out = events & (EPOLLOUT | EPOLLHUP | EPOLLERR);
  const bool hup = events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  if (event_kind(data) == kKindClient) {
    if (hup) s.c_hup = true;
    if (in) s.c_in = true;
    if (out) s.c_out = true;
    if (s.state == State::sniff) {
      // A reset too: sniff()'s recv() takes what is left, then the error,
      // and a frame cut short by it is counted as one.
      if (in) sniff(s);
      return;
    }
    if (s.state == State::connecting) {
      // The client's bytes wait in its socket until the upstream is ready; a
      // client that vanishes meanwhile ends the attempt.
      if (events & EPOLLERR) close_session(s);
      return;
    }
    if ((events & EPOLLERR) && s.c_eof && !s.c_shut) {
      // A reset after the client's FIN: no read is left to report it, and
      // nothing more can be written to it (see drive()).
      release(s, s.u2c);
      s.c_shut = true;
    }
    if ((events & EPOLLERR) && !s.c_eof) {
      // The client reset. A read reports it after the bytes that came
      // before, but none is made while the upstream does not drain
      // (back-pressure): what can move now moves, then the session ends, as
      // on a failed read.
      drive(s);
      if (s.state == State::relay) close_session(s);
      return;
    }
    if ((events & EPOLLHUP) && s.c_shut && !s.u_eof && !s.c_eof) {
      // A write to the client failed (c_shut before the upstream's EOF) and
      // it is closed both ways: it reset, and the failed write took the
      // reset's error (sock_error), so no EPOLLERR comes. As above: what can
      // move now moves (a read reaches the client's FIN, if it sent one, and
      // drive() then waits for the upstream's ack), else the session ends.
      drive(s);
      if (s.state == State::relay && !s.c_eof) close_session(s);
      return;
    }
  } else {
    if (s.state == State::connecting) {
      if (!out) return;
      // Writable without an error: connected (a failed connect always comes
      // with EPOLLERR or EPOLLHUP, and only then is SO_ERROR read).
      int err = (events & (EPOLLERR | EPOLLHUP)) ? net::socket_error(s.ufd) : 0;
      if (net::reset_after_connect(err)) {
        env_.timers->cancel(s);
        on_connected_then_reset(s, err);
        return;
      }
      if (err == 0) {
        env_.timers->cancel(s);
        // The backend may already have sent data and closed: this event is the
        // only report of its FIN (edge-triggered), so keep it.
        if (hup) s.u_hup = true;
        on_connected(s, in);
        return;
      }
      env_.timers->cancel(s);
      env_.epoll->del(s.ufd);
      ::close(s.ufd);
      s.ufd = -1;
      connect_failed(env_, s, err, last_local_error_log_ms_);
      connect_next(s);
      return;
    }
    if (hup) s.u_hup = true;
    if (in) s.u_in = true;
    if (out) s.u_out = true;
  }
  drive(s);
  if ((events & EPOLLERR) && event_kind(data) == kKindUpstream && s.state == State::relay && s.u_eof && !s.u_shut) {
    // A reset after the upstream's FIN (the FIN may have been read just now:
    // a read reports the EOF before the reset). No read is left to report
    // it, and nothing more can be written to it: what waits for it is
    // dropped, as after a failed write (see pump()); see drive() for the end.
    release(s, s.c2u);
    s.u_shut = true;
    drive(s);
  }
}

void TcpRelay::on_timer(net::TimerNode& n) noexcept {
  Session& s = static_cast<Session&>(n);
  if (s.state == State::sniff) {
    reject(s, FrameError::first_frame_timeout);
  } else if (s.state == State::connecting && s.fd_wait) {
    s.fd_wait = false;
    connect_next(s);
  } else if (s.state == State::connecting) {
    env_.epoll->del(s.ufd);
    ::close(s.ufd);
    s.ufd = -1;
    connect_failed(env_, s, ETIMEDOUT, last_local_error_log_ms_);
    connect_next(s);
  } else if (s.state == State::relay) {
    GW_LOG_DEBUG("session {}: idle for {} ms; closing", index_of(s), s.idle_ms);
    s.end = "idle_timeout";
    close_session(s);
  }
}

void TcpRelay::release_buf(const Session& s, Pipe& p) noexcept {
  if (p.buf) (p.big ? env_.listeners[s.listener].frame_buffers : env_.buffers)->release(p.buf);
  p.buf = nullptr;
  p.head = p.tail = 0;
  p.big = false;
}

void TcpRelay::release(const Session& s, Pipe& p) noexcept {
  release_buf(s, p);
  if (p.pipe) env_.pipes->release(p.pipe, p.piped == 0);
  p = Pipe{};
}

bool TcpRelay::pump(int src, bool& src_in, bool src_hup, bool& src_eof, Pipe& p, int dst, bool& dst_out, bool& dst_shut,
                    bool dst_done, Session& s) noexcept {
  for (;;) {
    if (p.pending()) {
      if (!dst_out) break;
      ssize_t n = p.piped ? ::splice(p.pipe.r, nullptr, dst, nullptr, p.piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                          : ::send(dst, p.buf + p.head, p.tail - p.head, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        p.moved += static_cast<uint64_t>(n);
        (&p == &s.c2u ? s.bytes_up : s.bytes_down) += static_cast<uint64_t>(n);
        metrics::stream_written(env_, s, &p == &s.c2u, static_cast<uint64_t>(n));
        if (p.piped) p.piped -= static_cast<uint32_t>(n);
        else p.head += static_cast<uint32_t>(n);
        s.deadline_ms = env_.now_ms + s.idle_ms;  // lazy: the wheel re-files it when due
        if (!p.pending()) {
          release_buf(s, p);
          if (p.pipe && !p.burst) {
            // The burst is over: small reads go back to plain copies.
            env_.pipes->release(p.pipe, true);
            p.pipe = net::PipeFds{};
          }
        }
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        dst_out = false;  // back-pressure: src is not read until dst drains
        break;
      }
      if (n < 0 && errno == EINTR) continue;
      // dst is gone (reset): what waits for it is dropped, but the session
      // goes on. What dst sent before it went is still in its socket (a read
      // reports the reset after the data) and the other direction delivers
      // it. src is read on and its bytes dropped (dst_shut before src_eof)
      // until its EOF: closing a socket with unread bytes resets it, and the
      // reset would discard what is still queued for it.
      release(s, p);
      dst_shut = true;
      continue;
    }
    if (src_eof || !src_in) break;
    // Bulk: past splice_after bytes, while reads fill whole buffers, this
    // direction moves through a pipe (no copy through user space), if the
    // pool has one. Small messages stay with recv/send.
    if (!p.pipe && p.burst && env_.splice_after && p.moved >= env_.splice_after && !p.buf)
      p.pipe = env_.pipes->acquire();
    if (p.pipe) {
      ssize_t n =
          ::splice(src, nullptr, p.pipe.w, nullptr, net::PipePool::kCapacity, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        // No short-read shortcut here: a splice also stops when the pipe's
        // slots are full, with bytes still in the socket.
        p.piped = static_cast<uint32_t>(n);
        p.burst = static_cast<size_t>(n) >= net::BufferPool::kBufferSize;
        metrics::stream_read(env_, s, &p == &s.c2u, static_cast<uint64_t>(n));
        s.deadline_ms = env_.now_ms + s.idle_ms;
        continue;
      }
      if (n == 0) {
        src_eof = true;
        break;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        src_in = false;
        break;
      }
      if (errno == EINTR) continue;
      if (!src_failed(s, p, src_eof)) return false;
      break;
    }
    if (!p.buf) {
      p.buf = env_.buffers->acquire();
      if (!p.buf) return false;
    }
    ssize_t n = ::recv(src, p.buf, net::BufferPool::kBufferSize, MSG_DONTWAIT);
    if (n > 0) {
      metrics::stream_read(env_, s, &p == &s.c2u, static_cast<uint64_t>(n));
      p.head = 0;
      p.tail = dst_shut ? 0 : static_cast<uint32_t>(n);  // dst is gone: dropped
      p.burst = static_cast<size_t>(n) == net::BufferPool::kBufferSize && !dst_shut;
      if (!dst_shut) s.deadline_ms = env_.now_ms + s.idle_ms;  // bytes dropped are no activity
      // A short read emptied the socket's receive queue. With edge-triggered
      // epoll the next arrival raises a new event, so the recv() that would
      // only say EAGAIN is skipped (nginx does the same). Not after the peer's
      // FIN was signalled: no further event would come to report the EOF.
      if (static_cast<size_t>(n) < net::BufferPool::kBufferSize && !src_hup) src_in = false;
      continue;
    }
    if (n == 0) {
      src_eof = true;
      release_buf(s, p);
      break;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      src_in = false;
      release_buf(s, p);
      break;
    }
    if (errno == EINTR) continue;
    if (!src_failed(s, p, src_eof)) return false;
    break;
  }
  if (src_eof && !p.pending() && !dst_shut) {
    // Half-close travels on, unless dst is finished too (it sent its EOF and
    // all of it was passed on): the session closes now, and close() sends
    // the FIN (nothing is left unread on dst).
    if (!dst_done) ::shutdown(dst, SHUT_WR);
    dst_shut = true;
  }
  return true;
}

bool TcpRelay::src_failed(Session& s, Pipe& p, bool& src_eof) noexcept {
  if (&p == &s.c2u) return false;  // the client reset (or failed): the relay ends
  // The host reset: taken as its EOF. What it sent before is delivered, then
  // the client gets a FIN; the client's bytes are dropped from now on, as
  // after a failed write to the host (see pump()), until it closes.
  src_eof = true;
  release_buf(s, p);
  release(s, s.c2u);
  s.u_shut = true;
  return true;
}

void TcpRelay::drive(Session& s) noexcept {
  if (!pump(s.cfd, s.c_in, s.c_hup, s.c_eof, s.c2u, s.ufd, s.u_out, s.u_shut, s.u_eof && s.c_shut, s) ||
      !pump(s.ufd, s.u_in, s.u_hup, s.u_eof, s.u2c, s.cfd, s.c_out, s.c_shut, s.c_eof && s.u_shut, s)) {
    close_session(s);
    return;
  }
  if (s.c_eof && s.u_eof && s.c_shut && s.u_shut) {
    close_session(s);
    return;
  }
  // The client is gone both ways: a write to it failed (c_shut before the
  // upstream's EOF) and its EOF or reset came. Nothing can reach it any more,
  // so once the upstream has acknowledged all the client sent (the reset that
  // close() sends over unread bytes loses nothing), the session ends rather
  // than drain an upstream that may stream for ever.
  if (s.c_eof && s.c_shut && s.u_shut && !s.u_eof && net::peer_has_all(s.ufd)) {
    close_session(s);
    return;
  }
  // The upstream is gone both ways: its EOF, then its reset (or a failed
  // write to it). All it sent has been passed on with the FIN (c_shut), and
  // the client's bytes have nowhere to go: once the client has acknowledged
  // it all, the session ends rather than wait for the client's own close.
  // Until then the client's bytes are read and dropped; its acknowledgement
  // of the FIN is a state change that epoll reports (FIN_WAIT1 to 2).
  if (s.u_eof && s.u_shut && s.c_shut && !s.c_eof && net::peer_has_all(s.cfd)) close_session(s);
}

void TcpRelay::log_session(const Session& s) noexcept {
  log_stream(env_, s.listener, s.peer, s.state == State::relay ? &s.host_addr : nullptr, s.bytes_up, s.bytes_down,
             s.start_ms, s.key_view(), s.end);
}

void TcpRelay::close_session(Session& s) noexcept {
  if (env_.access_log && env_.access_log->enabled() && env_.listeners[s.listener].log_file >= 0) log_session(s);
  env_.timers->cancel(s);
  api::release_conn(env_.conn_limiter, s.cfd);  // limit_conn
  if (s.cfd >= 0) ::close(s.cfd);
  if (s.ufd >= 0) ::close(s.ufd);
  s.cfd = s.ufd = -1;
  release(s, s.c2u);
  release(s, s.u2c);
  unbind_host(env_, s);
  s.state = State::free;
  ++s.gen;
  s.next_free = free_head_;
  free_head_ = index_of(s);
  --active_;
  metrics::listener_close(env_, s.listener);
}

void TcpRelay::close_all() noexcept {
  for (auto& s : sessions_)
    if (s.state != State::free) close_session(s);
}

void TcpRelay::close_orphans() noexcept {
  uint64_t closed = 0;
  for (auto& s : sessions_) {
    if (s.state != State::relay || !route_orphaned(env_, s)) continue;
    close_session(s);
    ++closed;
  }
  count_orphans(env_, closed, "connection(s)");
}

}  // namespace gw::proxy
