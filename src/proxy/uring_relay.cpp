#include "gw/proxy/uring_relay.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>

#include "gw/api/conn_limiter.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/socket.hpp"
#include "gw/shm/runtime.hpp"
#include "proxy/metrics.hpp"
#include "proxy/relay_common.hpp"

namespace gw::proxy {

namespace {

// How often the timer looks for a client's acknowledgement once the upstream
// is gone (see end_if_upstream_gone).
constexpr uint64_t kGoneCheckMs = 50;

// The head of each pool buffer of a spill (Dir::spill); the data follows at
// kSpillData. The chain's first buffer also keeps the chain's tail.
struct SpillHdr {
  char* next;
  char* tail;
  uint32_t len;  // data bytes in this buffer
  uint32_t off;  // ... of which already sent
};
constexpr uint32_t kSpillData = 32;
static_assert(sizeof(SpillHdr) <= kSpillData);
constexpr uint32_t kSpillCap = static_cast<uint32_t>(net::BufferPool::kBufferSize) - kSpillData;

SpillHdr& spill_hdr(char* b) noexcept {
  return *std::launder(reinterpret_cast<SpillHdr*>(b));
}

}  // namespace

UringRelay::UringRelay(RelayEnv& env, net::Ring& ring, net::BufRing& bufs, uint32_t max_sessions, bool recv_limit)
    : env_(env), ring_(ring), bufs_(bufs), recv_limit_(recv_limit), next_(bufs.count(), kNoBuf), len_(bufs.count(), 0) {
  // Reserved, not touched: a slot's memory is paid for when it is first used.
  sessions_.reserve(max_sessions);
}

UringRelay::Session* UringRelay::new_session() noexcept {
  if (free_head_ != kNone) {
    Session& s = sessions_[free_head_];
    free_head_ = s.next_free;
    return &s;
  }
  if (sessions_.size() == sessions_.capacity()) return nullptr;
  sessions_.emplace_back();  // within the reservation: never reallocates
  return &sessions_.back();
}

void UringRelay::fetch_peer(Session& s, int fd, bool want_key) noexcept {
  // The ring's accepts ask for no address; it is asked for only when a pool of
  // the upstream hashes the client IP, or the listener has an access log.
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
  s.peer = core::SockAddr::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss));
  if (!want_key) return;
  const void* ip = nullptr;
  if (ss.ss_family == AF_INET) ip = &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr;
  else if (ss.ss_family == AF_INET6) ip = &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
  if (ip && ::inet_ntop(ss.ss_family, ip, s.key, sizeof(s.key))) s.key_len = static_cast<uint8_t>(std::strlen(s.key));
}

void UringRelay::accept(int fd, uint32_t listener) noexcept {
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
  s.live = 0;
  s.t_ops = 0;
  s.watch = s.watch_u = s.c_reset = false;
  s.gone_until_ms = 0;
  s.reset(static_cast<uint16_t>(listener), env_.now_ms);
  s.c2u = Dir{};
  s.u2c = Dir{};
  const ListenerRuntime& l = env_.listeners[listener];
  s.state = l.framer ? State::sniff : State::connecting;
  metrics::listener_open(env_, listener);
  const bool want_key = !l.key_from_frame && upstream_uses_key(env_, l.upstream);
  if (want_key || logging(l)) fetch_peer(s, fd, want_key);
  if (s.state == State::sniff) {
    arm_recv(s, true);
    // Nothing is opened upstream until a whole, valid first frame is in.
    env_.timers->schedule(s, env_.now_ms + l.first_frame_timeout_ms);
    return;
  }
  connect_next(s);
}

// ---------------------------------------------------------------------------
// Frame listeners: the first frame

void UringRelay::sniff(Session& s, uint16_t bid, uint32_t len) noexcept {
  const ListenerRuntime& l = env_.listeners[s.listener];
  Framer& framer = *l.framer;
  Dir& d = s.c2u;
  const char* src = bufs_.buf(bid);
  uint32_t used = 0;
  while (used < len) {
    if (!d.extra) {
      d.extra = env_.buffers->acquire();
      if (!d.extra) {
        bufs_.recycle(bid);
        close_session(s);  // out of buffer memory: refuse rather than stall
        return;
      }
      d.extra_off = d.extra_len = 0;
      d.extra_big = false;
    }
    const size_t cap = (d.extra_big ? l.frame_buffers->buffer_size() : net::BufferPool::kBufferSize) - kPadding;
    if (d.extra_len == cap) {
      // A valid header said the frame is larger than this buffer (a larger
      // declared body is refused on the header alone): move to a frame buffer,
      // within the listener's max_frame_buffers.
      char* big = d.extra_big ? nullptr : acquire_frame_buffer(l);
      if (!big) {
        bufs_.recycle(bid);
        reject(s, FrameError::no_frame_buffer);
        return;
      }
      std::memcpy(big, d.extra, d.extra_len);
      env_.buffers->release(d.extra);
      d.extra = big;
      d.extra_big = true;
      continue;
    }
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(len - used, cap - d.extra_len));
    std::memcpy(d.extra + d.extra_len, src + used, n);
    d.extra_len += n;
    used += n;
    FrameDecision dec = framer.inspect(reinterpret_cast<const uint8_t*>(d.extra), d.extra_len, true);
    if (dec.kind == FrameDecision::Kind::reject) {
      bufs_.recycle(bid);
      reject(s, dec.error);
      return;
    }
    if (dec.kind == FrameDecision::Kind::frame) {
      if (l.key_from_frame) {
        std::memcpy(s.key, dec.key.data(), dec.key.size());
        s.key_len = static_cast<uint8_t>(dec.key.size());
      }
      // Everything read so far is replayed to the host: the sniff buffer,
      // then what did not fit of this chunk (moved to the pool: no ring
      // buffer is held while the connect is pending, however long it takes).
      if (used < len) {
        enqueue(d, bid, len);
        d.off = used;
        spill_fifo(d);
      } else {
        bufs_.recycle(bid);
      }
      env_.timers->cancel(s);
      s.state = State::connecting;
      // The client is not read while connecting (see maybe_arm()): the
      // receive armed for sniffing stops here, and on_connect() re-arms it.
      if (d.recv == kArmed) cancel_recv(s, true);
      connect_next(s);
      return;
    }
  }
  bufs_.recycle(bid);
}

void UringRelay::reject(Session& s, FrameError e) noexcept {
  count_reject(env_, s.listener, e, s.cfd);
  s.end = frame_error_name(e);
  close_session(s);
}

// ---------------------------------------------------------------------------
// Upstream connects

void UringRelay::connect_next(Session& s) noexcept {
  const balance::Snapshot& snap = *env_.snap;
  int ui = s.listener < env_.listeners.size() ? env_.listeners[s.listener].upstream : -1;
  if (ui < 0) {
    close_session(s);
    return;
  }
  const balance::UpstreamView& uv = snap.upstreams()[static_cast<size_t>(ui)];
  watch_client(s);  // the client is not read while connecting: its reset is seen here
  while (const shm::HostRecord* rp = bind_next_host(env_, s, ui, uv, rng_)) {
    const shm::HostRecord& r = *rp;
    sockaddr_storage ss;
    const socklen_t alen = r.addr.to_sockaddr(ss);
    // Non-blocking: io_uring polls it all the same, and splice(2) calls on
    // it (bulk mode) must never block.
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      const int err = errno;
      if (start_fd_wait(env_, s, err, uv.connect_timeout_ms)) {
        env_.timers->schedule(s, env_.now_ms + kFdWaitMs);
        return;
      }
      connect_failed(env_, s, err, last_local_error_log_ms_);
      continue;
    }
    net::set_nodelay(fd);
    s.ufd = fd;
    std::memcpy(&s.addr, &ss, std::min<size_t>(alen, sizeof(s.addr)));
    s.addr_len = alen;
    s.connect_ts.tv_sec = uv.connect_timeout_ms / 1000;
    s.connect_ts.tv_nsec = static_cast<long long>(uv.connect_timeout_ms % 1000) * 1000000;
    ring_.reserve(2);  // the connect and its timeout go in one submission
    io_uring_sqe* sqe = ring_.sqe();
    io_uring_prep_connect(sqe, fd, reinterpret_cast<const sockaddr*>(&s.addr), s.addr_len);
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_sqe_set_data64(sqe, tag(s, kConnect));
    started(s, kConnect);
    sqe = ring_.sqe();
    io_uring_prep_link_timeout(sqe, &s.connect_ts, 0);
    io_uring_sqe_set_data64(sqe, tag(s, kLinkTimeout));
    ++s.t_ops;
    return;
  }
  count_unrouted(env_, s, ui, last_no_host_log_ms_);
  close_session(s);
}

void UringRelay::on_connect(Session& s, int32_t res) noexcept {
  ended(s, kConnect);
  if (s.state != State::connecting) {
    maybe_retire(s);
    return;
  }
  // The connect completes after the socket's error is taken: a host that
  // accepted and reset (maybe after a banner) before that gives -ECONNRESET.
  // The handshake was done: a connected session whose host is gone, not a
  // failed connect (see the epoll relay's on_connected_then_reset).
  const bool reset = net::reset_after_connect(-res);
  if (res == 0 || reset) {
    record_connect_success(env_, s.host_slot, s.host_tag, s.connect_start_ns);
    s.state = State::relay;
    env_.timers->schedule(s, env_.now_ms + s.idle_ms);
    if (reset) {
      GW_LOG_DEBUG("session {}: host slot {} reset the connection once established: {}", index_of(s), s.host_slot,
                   std::strerror(-res));
      // What it sent is still read (then 0: the error is cleared); the
      // client's bytes are dropped from now on, as after a failed write to
      // it (dst_gone), and no other host is tried.
      dst_gone(s, true);
    }
    arm_recv(s, false);
    maybe_arm(s, true);  // the client's bytes, from now on
    pump(s, true);       // what a sniffed first frame left, and an EOF
    return;
  }
  // -ECANCELED: the linked timeout fired first.
  const int err = res == -ECANCELED ? ETIMEDOUT : -res;
  ::close(s.ufd);  // nothing else is in flight on it
  s.ufd = -1;
  connect_failed(env_, s, err, last_local_error_log_ms_);
  connect_next(s);
}

// ---------------------------------------------------------------------------
// Completions

void UringRelay::on_completion(uint64_t t, int32_t res, uint32_t flags) noexcept {
  const uint32_t idx = net::tag_slot(t);
  Session* sp = idx < sessions_.size() ? &sessions_[idx] : nullptr;
  if (!sp || sp->state == State::free || !net::tag_current(t, sp->gen)) {
    // Cannot happen while slots wait for their last completion; a buffer
    // that came with one still goes back to the ring.
    if (flags & IORING_CQE_F_BUFFER) {
      const auto bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
      if (bufs_.taken(bid)) bufs_.recycle(bid);
    }
    GW_LOG_DEBUG("stale completion op {} slot {} gen {}", net::tag_op(t), idx, net::tag_gen(t));
    return;
  }
  Session& s = *sp;
  switch (net::tag_op(t)) {
    case kRecvClient: on_recv(s, true, res, flags); break;
    case kRecvUpstream: on_recv(s, false, res, flags); break;
    case kSendUpstream: on_send(s, true, res); break;
    case kSendClient: on_send(s, false, res); break;
    case kConnect: on_connect(s, res); break;
    case kLinkTimeout:
      --s.t_ops;
      maybe_retire(s);
      break;
    case kPollClientIn: on_poll(s, true, false); break;
    case kPollUpstreamIn: on_poll(s, false, false); break;
    case kPollUpstreamOut: on_poll(s, true, true); break;
    case kPollClientOut: on_poll(s, false, true); break;
    case kWatchClient: on_watch(s, res, flags); break;
    case kWatchUpstream: on_watch_upstream(s, res, flags); break;
    default: break;
  }
}

void UringRelay::arm_recv(Session& s, bool client) noexcept {
  Dir& d = client ? s.c2u : s.u2c;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_recv_multishot(sqe, client ? s.cfd : s.ufd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = bufs_.group();
  // The byte limit (optlen): what brings the FIFO up to kHighWater buffers.
  if (recv_limit_)
    sqe->file_index = (kHighWater - std::min<uint32_t>(kHighWater - 1, d.queued + d.spilled)) * bufs_.size();
  io_uring_sqe_set_data64(sqe, tag(s, client ? kRecvClient : kRecvUpstream));
  started(s, client ? kRecvClient : kRecvUpstream);
  d.recv = kArmed;
}

void UringRelay::maybe_arm(Session& s, bool client) noexcept {
  Dir& d = client ? s.c2u : s.u2c;
  if (d.recv != kIdle || d.eof || d.starved || d.pipe || d.queued + d.spilled > kLowWater) return;
  if (start_splice(s, client)) return;  // pump() moves on to the pipe once the FIFO is out
  // The client is not read while its upstream connect is pending (as the
  // epoll relay): a receive armed then takes ring buffers that only a
  // connect can give back, and a few hundred clients of a blackholed host
  // would hold the worker's whole ring (every other connection starved).
  const bool ok = client ? (s.state == State::sniff || s.state == State::relay) : s.state == State::relay;
  if (ok) arm_recv(s, client);
}

void UringRelay::on_recv(Session& s, bool client, int32_t res, uint32_t flags) noexcept {
  Dir& d = client ? s.c2u : s.u2c;
  if (!(flags & IORING_CQE_F_MORE)) {
    d.recv = kIdle;
    ended(s, client ? kRecvClient : kRecvUpstream);
  }
  uint16_t bid = kNoBuf;
  if (flags & IORING_CQE_F_BUFFER) {
    bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    bufs_.taken(bid);
  }
  if (s.state == State::closing) {
    if (bid != kNoBuf) bufs_.recycle(bid);
    maybe_retire(s);
    return;
  }
  if (res > 0 && bid != kNoBuf) metrics::stream_read(env_, s, client, static_cast<uint64_t>(res));
  if (res > 0 && bid != kNoBuf && d.shut) {
    bufs_.recycle(bid);  // the destination is gone (dst_gone): dropped
    if (!client) end_if_client_gone(s);
    else end_if_upstream_gone(s);
    if (s.state == State::closing) return;
  } else if (res > 0 && bid != kNoBuf) {
    if (s.state == State::sniff) {
      sniff(s, bid, static_cast<uint32_t>(res));
      if (s.state == State::closing) return;
    } else {
      if (s.state == State::relay) s.deadline_ms = env_.now_ms + s.idle_ms;  // lazy: re-filed when due
      d.burst = static_cast<uint32_t>(res) == bufs_.size();
      enqueue(d, bid, static_cast<uint32_t>(res));
      // Behind a spill, a blocked destination (a sniffed first frame
      // waiting in `extra`), or a pending connect (bytes the cancelled
      // sniffing receive had already brought in): copied out at once, so
      // that the ring buffer goes back to the kernel.
      if (d.spill || d.poll_out || s.state == State::connecting) spill_fifo(d);
      pause_if_full(s, client);
      pump(s, client);
      if (s.state == State::closing) return;
    }
  } else if (res == 0) {
    d.eof = true;
    if (s.state == State::sniff) {
      // A connection closed before sending anything (a port probe) is not a
      // bad frame; one closed inside a frame is.
      if (!d.extra || d.extra_len == 0) close_session(s);
      else reject(s, env_.listeners[s.listener].framer->at_eof(d.extra_len));
      return;
    }
    pump(s, client);  // the half-close travels on once the queue is out
    if (s.state == State::closing) return;
    if (!client) watch_upstream(s);       // no receive is left to report its reset
    else if (s.c_reset && !s.u2c.shut) {  // the watch saw it while this receive was armed
      ++reset_paths_.at_eof;
      client_reset_after_fin(s);
    }
    if (s.state == State::closing) return;
  } else if (res == -ENOBUFS) {
    starve(s, client);  // re-armed by flush() once buffers come back
  } else if (res != -ECANCELED) {
    if (client && s.state == State::sniff) {
      // Reset inside the first frame: the end of what the device sent, as an
      // EOF is (counted and logged as a frame cut short; it was neither).
      if (!d.extra || d.extra_len == 0) close_session(s);
      else reject(s, env_.listeners[s.listener].framer->at_eof(d.extra_len));
      return;
    }
    src_failed(s, client);  // reset or error
    if (!client || s.state != State::relay) return;
  }
  if (d.recv == kIdle) maybe_arm(s, client);
  if (client) end_if_reset_unread(s);
}

void UringRelay::on_send(Session& s, bool c2u, int32_t res) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  ended(s, c2u ? kSendUpstream : kSendClient);
  d.sending = false;
  if (s.state == State::closing) {
    // The one buffer the kernel was still reading from (see pump() for the order).
    if (d.extra) {
      (d.extra_big ? env_.listeners[s.listener].frame_buffers : env_.buffers)->release(d.extra);
      d.extra = nullptr;
    } else if (d.spill) {
      pop_spill(d);
    } else if (d.head != kNoBuf) {
      pop_front(d);
    }
    maybe_retire(s);
    return;
  }
  if (res == -EAGAIN || res == -EWOULDBLOCK) {
    blocked(s, c2u);  // the destination's socket buffer is full
    if (c2u) end_if_reset_unread(s);
    return;
  }
  if (res <= 0) {
    dst_gone(s, c2u);
    // An EOF that came while this send was in flight (pump() waited for it)
    // is taken now: with both ways done, the session ends.
    pump(s, c2u);
    return;
  }
  bool rest = false;  // the destination took only part of it: its buffer is full
  if (d.extra) {
    d.extra_off += static_cast<uint32_t>(res);
    if (d.extra_off >= d.extra_len) {
      (d.extra_big ? env_.listeners[s.listener].frame_buffers : env_.buffers)->release(d.extra);
      d.extra = nullptr;
      d.extra_off = d.extra_len = 0;
      d.extra_big = false;
    } else {
      rest = true;
    }
  } else if (d.spill) {
    SpillHdr& h = spill_hdr(d.spill);
    h.off += static_cast<uint32_t>(res);
    if (h.off >= h.len) pop_spill(d);
    else rest = true;
  } else if (d.head != kNoBuf) {
    d.off += static_cast<uint32_t>(res);
    if (d.off >= len_[d.head]) pop_front(d);
    else rest = true;
  }
  d.moved += static_cast<uint64_t>(res);
  metrics::stream_written(env_, s, c2u, static_cast<uint64_t>(res));
  s.deadline_ms = env_.now_ms + s.idle_ms;
  if (rest) {
    blocked(s, c2u);
    if (c2u) end_if_reset_unread(s);
    return;
  }
  maybe_arm(s, c2u);
  pump(s, c2u);
  if (c2u) end_if_reset_unread(s);
}

// The destination of this direction takes no more for now: what waits for it
// moves out of the shared ring into the worker's pool, and POLLOUT resumes it.
void UringRelay::blocked(Session& s, bool c2u) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  spill_fifo(d);
  pause_if_full(s, c2u);
  arm_poll(s, c2u, true);
}

void UringRelay::pause_if_full(Session& s, bool client) noexcept {
  Dir& d = client ? s.c2u : s.u2c;
  if (d.queued + d.spilled < kHighWater || d.recv != kArmed) return;
  cancel_recv(s, client);  // back-pressure: the other side has not taken what came before
}

void UringRelay::cancel_recv(Session& s, bool client) noexcept {
  Dir& d = client ? s.c2u : s.u2c;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_cancel64(sqe, tag(s, client ? kRecvClient : kRecvUpstream), 0);
  io_uring_sqe_set_data64(sqe, net::pack_tag(uring_op::kIgnore, 0, 0));
  sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
  d.recv = kCancelling;
}

// Sends, in this order: `extra` (a sniffed first frame), the spill, the FIFO;
// then the pipe (bulk mode); then the EOF. Only the first of them that holds
// bytes can have a send in flight.
void UringRelay::pump(Session& s, bool c2u) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  if (s.state != State::relay || d.sending || d.poll_out) return;  // poll_out: waiting for the destination
  const int dst = c2u ? s.ufd : s.cfd;
  char* p;
  uint32_t n;
  if (d.extra) {
    p = d.extra + d.extra_off;
    n = d.extra_len - d.extra_off;
  } else if (d.spill) {
    const SpillHdr& h = spill_hdr(d.spill);
    p = d.spill + kSpillData + h.off;
    n = h.len - h.off;
  } else if (d.head != kNoBuf) {
    p = bufs_.buf(d.head) + d.off;
    n = len_[d.head] - d.off;
  } else if (d.pipe) {
    splice_pump(s, c2u);
    return;
  } else {
    finish_dir(s, c2u);
    return;
  }
  io_uring_sqe* sqe = ring_.sqe();
  // MSG_DONTWAIT: a full destination answers at once (-EAGAIN or a short
  // count), and blocked() moves what waits out of the ring.
  io_uring_prep_send(sqe, dst, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  io_uring_sqe_set_data64(sqe, tag(s, c2u ? kSendUpstream : kSendClient));
  started(s, c2u ? kSendUpstream : kSendClient);
  d.sending = true;
}

// Nothing of this direction is left in flight: pass its EOF on.
void UringRelay::finish_dir(Session& s, bool c2u) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  if (!d.eof) return;
  const bool gone = d.shut;  // the destination is gone (dst_gone), or the EOF was passed on before
  d.shut = true;
  const Dir& o = c2u ? s.u2c : s.c2u;
  if (o.eof && o.shut) {
    close_session(s);  // both ways done: the close carries this FIN
    return;
  }
  if (gone) return;
  // A direct call: IORING_OP_SHUTDOWN always runs in an io-wq thread
  // (a thread wake-up per half-close), this is one short syscall.
  ::shutdown(c2u ? s.ufd : s.cfd, SHUT_WR);
  if (c2u) end_if_client_gone(s);
  else end_if_upstream_gone(s);
}

// The upstream is gone both ways (its EOF, then its reset or a failed write to
// it), and all it sent has been passed on with the FIN (or the client's
// writes failed): the client's bytes have nowhere to go.
bool UringRelay::upstream_gone(const Session& s) const noexcept {
  return s.state == State::relay && s.u2c.eof && s.u2c.shut && s.c2u.shut && !s.c2u.eof;
}

// Once the client has acknowledged all it was sent (the reset that the close
// sends over unread bytes then loses nothing), the session ends rather than
// wait for the client's own close. That acknowledgement completes nothing on
// the ring: until it comes, the timer looks again (up to idle_timeout_ms).
void UringRelay::end_if_upstream_gone(Session& s) noexcept {
  if (!upstream_gone(s)) return;
  if (net::peer_has_all(s.cfd)) {
    close_session(s);
    return;
  }
  if (s.gone_until_ms == 0) s.gone_until_ms = env_.now_ms + s.idle_ms;
  if (env_.now_ms >= s.gone_until_ms) {
    // Called on each read dropped too, each moving the check below 50 ms
    // on: a side that streams faster than that would hold the timer off.
    s.end = "idle_timeout";
    close_session(s);
    return;
  }
  env_.timers->schedule(s, std::min(env_.now_ms + kGoneCheckMs, s.gone_until_ms));
}

// The client is gone both ways: a write to it failed (u2c shut before its
// EOF) and its EOF was passed on. Nothing can reach it any more, so once the
// upstream has acknowledged all the client sent (the reset that the close
// sends over unread bytes loses nothing), the session ends rather than drain
// an upstream that may stream for ever. As in end_if_upstream_gone, the
// acknowledgement (of the FIN just sent, at least) completes nothing on the
// ring: until it comes, the timer looks again.
bool UringRelay::client_gone(const Session& s) const noexcept {
  return s.state == State::relay && s.c2u.eof && s.c2u.shut && s.u2c.shut && !s.u2c.eof;
}

void UringRelay::end_if_client_gone(Session& s) noexcept {
  if (!client_gone(s)) return;
  if (net::peer_has_all(s.ufd)) {
    close_session(s);
    return;
  }
  if (s.gone_until_ms == 0) s.gone_until_ms = env_.now_ms + s.idle_ms;
  if (env_.now_ms >= s.gone_until_ms) {
    // Called on each read dropped too, each moving the check below 50 ms
    // on: a side that streams faster than that would hold the timer off.
    s.end = "idle_timeout";
    close_session(s);
    return;
  }
  env_.timers->schedule(s, std::min(env_.now_ms + kGoneCheckMs, s.gone_until_ms));
}

// The destination of this direction is gone (a write failed: reset). What
// waits for it is dropped, but the session goes on: what the destination sent
// before it went is still in its socket (a read reports the reset after the
// data), and the other direction delivers it. The source is read on and its
// bytes dropped (shut before eof) until its EOF: closing a socket with unread
// bytes resets it, and the reset would discard what is still queued for it.
// (A send still in flight keeps its buffer until it completes; see release_dir.)
void UringRelay::dst_gone(Session& s, bool c2u) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  release_dir(s, d);
  d.shut = true;
  d.burst = false;  // no splice for bytes that are dropped
  maybe_arm(s, c2u);
  if (c2u) {
    end_if_upstream_gone(s);
    return;
  }
  // A write to the client failed: it reset (or closed, and reset on our
  // bytes). The failed write took the reset's error (sock_error), so the
  // watch sees no POLLERR (POLLHUP only): with no read of the client armed
  // (back-pressure), nothing would report it. Noted as the watch notes one.
  s.c_reset = true;
  end_if_reset_unread(s);
}

// A read from this direction's source failed. A client's reset ends the
// session, once what came before it is out. A host's is taken as its EOF:
// what it sent before is delivered, then the client gets a FIN, and the
// client's bytes are dropped from now on (as after a failed write to the
// host: dst_gone) until it closes.
void UringRelay::src_failed(Session& s, bool c2u) noexcept {
  if (c2u) {
    // The multishot receive runs ahead of the sends: the bytes it brought in
    // before the reset may still wait here for the host. They go out first,
    // as they do under epoll (its read comes after the send): the reset is
    // noted as the watch notes one, and the next read, armed as the host
    // drains, says EOF (the error is taken; the socket is shut down both
    // ways). If the host takes no more, end_if_reset_unread ends the session.
    const Dir& d = s.c2u;
    const bool queued = d.extra || d.spill || d.head != kNoBuf || d.sending;
    if (s.state != State::relay || d.pipe || d.shut || !queued) {
      close_session(s);
      return;
    }
    s.c_reset = true;
    return;
  }
  s.u2c.eof = true;
  dst_gone(s, true);
  pump(s, false);
}

// ---------------------------------------------------------------------------
// Bulk directions: splice(2) through a pipe

bool UringRelay::start_splice(Session& s, bool c2u) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  if (!env_.splice_after || !d.burst || d.moved < env_.splice_after || s.state != State::relay || d.pipe) return false;
  d.pipe = env_.pipes->acquire();
  if (!d.pipe) return false;  // the pool is at its bound: keep copying
  d.piped = 0;
  pump(s, c2u);  // the pipe takes over once what is queued has been sent
  return true;
}

void UringRelay::arm_poll(Session& s, bool c2u, bool out) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  bool& armed = out ? d.poll_out : d.poll_in;
  if (armed) return;
  // The source is the client for c2u; the destination the other one.
  const bool on_client = out ? !c2u : c2u;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_poll_add(sqe, on_client ? s.cfd : s.ufd, out ? POLLOUT : (POLLIN | POLLRDHUP));
  const Op op = out ? (c2u ? kPollUpstreamOut : kPollClientOut) : (c2u ? kPollClientIn : kPollUpstreamIn);
  io_uring_sqe_set_data64(sqe, tag(s, op));
  started(s, op);
  armed = true;
}

void UringRelay::on_poll(Session& s, bool c2u, bool out) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  (out ? d.poll_out : d.poll_in) = false;
  ended(s, out ? (c2u ? kPollUpstreamOut : kPollClientOut) : (c2u ? kPollClientIn : kPollUpstreamIn));
  if (s.state == State::closing) {
    maybe_retire(s);
    return;
  }
  pump(s, c2u);  // a spill or the FIFO first, then the pipe
  // The client's EOF spliced, after the watch saw its reset while this
  // poll was armed (see on_watch).
  if (c2u && !out && s.c_reset && s.c2u.eof && !s.u2c.shut) {
    ++reset_paths_.at_eof;
    client_reset_after_fin(s);
  }
  if (c2u) end_if_reset_unread(s);
}

// Armed once per session, when its upstream connect starts, and kept until
// the close cancels it (see the header).
void UringRelay::watch_client(Session& s) noexcept {
  if (s.watch) return;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_poll_multishot(sqe, s.cfd, POLLERR);
  io_uring_sqe_set_data64(sqe, tag(s, kWatchClient));
  started(s, kWatchClient);
  s.watch = true;
}

void UringRelay::on_watch(Session& s, int32_t res, uint32_t flags) noexcept {
  const bool more = flags & IORING_CQE_F_MORE;
  if (!more) {
    s.watch = false;
    ended(s, kWatchClient);
  }
  if (s.state == State::closing) {
    maybe_retire(s);
    return;
  }
  if (res < 0) return;  // not supported, or cancelled: receives and timeouts remain
  if (!(res & POLLERR)) {
    // The client's FIN (POLLRDHUP), or a wake-up that reported nothing: no
    // error yet. A poll that the kernel ended is armed again (it completes
    // at once only while the socket shows POLLRDHUP, then waits).
    if (!more && (s.state == State::connecting || s.state == State::relay)) watch_client(s);
    return;
  }
  if (s.state == State::connecting) {
    // The client reset while its upstream connect was pending: the attempt
    // is abandoned (close_session cancels the connect; no passive failure, the
    // host did nothing wrong), as the epoll relay does on the client's EPOLLERR.
    close_session(s);
    return;
  }
  if (s.state != State::relay) return;
  if (!s.c2u.eof) {
    // An armed receive (or splice poll) reports the reset, after the bytes
    // that came before it. But a socket that has had the client's FIN reads
    // 0 (EOF) even with a reset pending: a FIN and a reset back to back, with
    // the receive armed but not yet run, would lose the reset. So the reset
    // is noted: the EOF looks at it, and so does every step of the client's
    // direction while no read is armed (end_if_reset_unread).
    s.c_reset = true;
    end_if_reset_unread(s);
    return;
  }
  client_reset_after_fin(s);
}

// The client reset (c_reset: the watch saw it, or a write to it failed) and
// no read of it is armed, so none reports the reset. While what waits for the
// host goes out (a send in flight), a read is armed again once the FIFO is
// down to kLowWater (or the ring has buffers again), and it reads on to the
// client's FIN or the reset: a host that takes the bytes gets all the client
// sent before it. Once the host takes no more (its socket buffer is full:
// POLLOUT armed), the session ends, as the epoll relay's does where its
// drive() stops: a host that does not read cannot hold it.
void UringRelay::end_if_reset_unread(Session& s) noexcept {
  if (s.state != State::relay || !s.c_reset || s.c2u.eof || s.c2u.recv == kArmed || s.c2u.poll_in) return;
  if (s.c2u.poll_out) {
    ++reset_paths_.unread;
    close_session(s);
  }
}

// A reset after the client's FIN: nothing more can be written to it. What
// waits for it is dropped; the session ends once the upstream has all the
// client sent (end_if_client_gone), or at once if the upstream is done too.
void UringRelay::client_reset_after_fin(Session& s) noexcept {
  if (s.state != State::relay || s.u2c.shut) return;
  dst_gone(s, false);
  pump(s, false);  // an upstream EOF that waited for the client: both ways done
  if (s.state == State::relay) end_if_client_gone(s);
}

// Armed when the upstream's EOF comes and the session lives on; kept until
// the close cancels it (see the header).
void UringRelay::watch_upstream(Session& s) noexcept {
  if (s.watch_u || s.state != State::relay) return;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_poll_multishot(sqe, s.ufd, POLLERR);
  io_uring_sqe_set_data64(sqe, tag(s, kWatchUpstream));
  started(s, kWatchUpstream);
  s.watch_u = true;
}

void UringRelay::on_watch_upstream(Session& s, int32_t res, uint32_t flags) noexcept {
  const bool more = flags & IORING_CQE_F_MORE;
  if (!more) {
    s.watch_u = false;
    ended(s, kWatchUpstream);
  }
  if (s.state == State::closing) {
    maybe_retire(s);
    return;
  }
  if (res < 0 || s.state != State::relay) return;  // not supported, or cancelled: the timeouts remain
  if (!(res & POLLERR)) {
    // Its FIN (POLLRDHUP, shown at once) or a state change: no error yet.
    if (!more) watch_upstream(s);
    return;
  }
  if (s.c2u.shut) return;  // already known gone (a failed write), or the client's EOF passed on
  // A reset after the upstream's FIN: nothing more can be written to it.
  // What waits for it is dropped, the client is read on and its bytes
  // dropped, and the session ends once the client has all (dst_gone).
  dst_gone(s, true);
}

void UringRelay::splice_pump(Session& s, bool c2u) noexcept {
  Dir& d = c2u ? s.c2u : s.u2c;
  if (s.state != State::relay) return;
  const int src = c2u ? s.cfd : s.ufd;
  const int dst = c2u ? s.ufd : s.cfd;
  // Bounded, so that one fast stream cannot hold the loop: after this many
  // rounds a (level-triggered) poll brings it back next iteration.
  for (int round = 0; round < 16; ++round) {
    if (d.piped) {
      if (d.poll_out) return;
      ssize_t n = ::splice(d.pipe.r, nullptr, dst, nullptr, d.piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d.piped -= static_cast<uint32_t>(n);
        d.moved += static_cast<uint64_t>(n);
        metrics::stream_written(env_, s, c2u, static_cast<uint64_t>(n));
        s.deadline_ms = env_.now_ms + s.idle_ms;
        if (d.piped == 0 && !d.burst && !d.eof) {
          // The burst is over: small reads go back to ring buffers.
          env_.pipes->release(d.pipe, true);
          d.pipe = net::PipeFds{};
          maybe_arm(s, c2u);
          return;
        }
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        arm_poll(s, c2u, true);  // back-pressure: the source waits too
        return;
      }
      if (n < 0 && errno == EINTR) continue;
      dst_gone(s, c2u);
      return;
    }
    if (d.eof) {
      finish_dir(s, c2u);
      // The client's EOF after its reset (noted by the watch, or by a
      // receive that reported it with bytes still queued: src_failed).
      if (c2u && s.c_reset && !s.u2c.shut) {
        ++reset_paths_.at_eof;
        client_reset_after_fin(s);
      }
      return;
    }
    if (d.poll_in) return;
    ssize_t n = ::splice(src, nullptr, d.pipe.w, nullptr, net::PipePool::kCapacity, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      d.piped = static_cast<uint32_t>(n);
      d.burst = static_cast<uint32_t>(n) >= bufs_.size();
      metrics::stream_read(env_, s, c2u, static_cast<uint64_t>(n));
      s.deadline_ms = env_.now_ms + s.idle_ms;
      continue;
    }
    if (n == 0) {
      d.eof = true;
      if (!c2u) watch_upstream(s);  // no receive is left to report its reset
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      arm_poll(s, c2u, false);
      return;
    }
    if (errno == EINTR) continue;
    src_failed(s, c2u);  // reset or error
    return;
  }
  arm_poll(s, c2u, d.piped != 0);
}

void UringRelay::enqueue(Dir& d, uint16_t bid, uint32_t len) noexcept {
  len_[bid] = len;
  next_[bid] = kNoBuf;
  if (d.tail != kNoBuf) next_[d.tail] = bid;
  else d.head = bid;
  d.tail = bid;
  ++d.queued;
}

void UringRelay::spill_fifo(Dir& d) noexcept {
  while (d.head != kNoBuf) {
    const char* src = bufs_.buf(d.head) + d.off;
    uint32_t n = len_[d.head] - d.off;
    while (n > 0) {
      char* t = d.spill ? spill_hdr(d.spill).tail : nullptr;
      // Not appended to the buffer a send is reading (its length is what
      // tells a complete send from a short one).
      const bool in_flight = t && t == d.spill && d.sending && !d.extra;
      if (!t || in_flight || spill_hdr(t).len == kSpillCap) {
        char* b = env_.buffers->acquire();
        if (!b) return;  // out of buffer memory: the rest waits in the ring, as without a spill
        ::new (b) SpillHdr{nullptr, nullptr, 0, 0};
        if (t) spill_hdr(t).next = b;
        else d.spill = b;
        spill_hdr(d.spill).tail = b;
        ++d.spilled;
        t = b;
      }
      SpillHdr& h = spill_hdr(t);
      const uint32_t k = std::min(n, kSpillCap - h.len);
      std::memcpy(t + kSpillData + h.len, src, k);
      h.len += k;
      src += k;
      n -= k;
      d.off += k;
    }
    pop_front(d);
  }
}

void UringRelay::pop_spill(Dir& d) noexcept {
  char* b = d.spill;
  char* next = spill_hdr(b).next;
  if (next) spill_hdr(next).tail = spill_hdr(b).tail;
  d.spill = next;
  --d.spilled;
  env_.buffers->release(b);
}

void UringRelay::pop_front(Dir& d) noexcept {
  const uint16_t bid = d.head;
  d.head = next_[bid];
  if (d.head == kNoBuf) d.tail = kNoBuf;
  --d.queued;
  d.off = 0;
  bufs_.recycle(bid);
}

// ---------------------------------------------------------------------------
// Starved receives (the buffer ring ran dry)

void UringRelay::starve(Session& s, bool client) noexcept {
  Dir& d = client ? s.c2u : s.u2c;
  if (d.starved) return;
  const uint32_t id = index_of(s) * 2 + (client ? 0 : 1);
  d.starved = true;
  d.starve_next = kNone;
  d.starve_prev = starved_tail_;
  if (starved_tail_ != kNone) {
    Session& t = sessions_[starved_tail_ / 2];
    ((starved_tail_ & 1) ? t.u2c : t.c2u).starve_next = id;
  } else {
    starved_head_ = id;
  }
  starved_tail_ = id;
}

void UringRelay::unstarve(Session& s, bool client) noexcept {
  Dir& d = client ? s.c2u : s.u2c;
  if (!d.starved) return;
  auto dir_of = [this](uint32_t id) -> Dir& {
    Session& o = sessions_[id / 2];
    return (id & 1) ? o.u2c : o.c2u;
  };
  if (d.starve_prev != kNone) dir_of(d.starve_prev).starve_next = d.starve_next;
  else starved_head_ = d.starve_next;
  if (d.starve_next != kNone) dir_of(d.starve_next).starve_prev = d.starve_prev;
  else starved_tail_ = d.starve_prev;
  d.starve_prev = d.starve_next = kNone;
  d.starved = false;
}

void UringRelay::flush() noexcept {
  bufs_.publish();
  // Each re-armed receive needs at least one buffer; wake no more than there are.
  uint32_t budget = bufs_.in_kernel();
  while (starved_head_ != kNone && budget > 0) {
    const uint32_t id = starved_head_;
    Session& s = sessions_[id / 2];
    const bool client = (id & 1) == 0;
    unstarve(s, client);
    maybe_arm(s, client);
    --budget;
  }
}

// ---------------------------------------------------------------------------
// Timers and closing

void UringRelay::on_timer(net::TimerNode& n) noexcept {
  Session& s = static_cast<Session&>(n);
  if (s.state == State::sniff) {
    reject(s, FrameError::first_frame_timeout);
  } else if (s.state == State::connecting && s.fd_wait) {
    s.fd_wait = false;
    connect_next(s);
  } else if (s.state == State::relay) {
    if (s.gone_until_ms && env_.now_ms < s.gone_until_ms) {
      // Has the live side acknowledged all yet?
      if (upstream_gone(s)) {
        end_if_upstream_gone(s);
        return;
      }
      if (client_gone(s)) {
        end_if_client_gone(s);
        return;
      }
    }
    GW_LOG_DEBUG("session {}: idle for {} ms; closing", index_of(s), s.idle_ms);
    s.end = "idle_timeout";
    close_session(s);
  }
}

void UringRelay::release_dir(const Session& s, Dir& d) noexcept {
  if (d.pipe) {
    env_.pipes->release(d.pipe, d.piped == 0);  // no operation in flight uses it
    d.pipe = net::PipeFds{};
    d.piped = 0;
  }
  // Keeps only what a send in flight still reads; on_send gives that back.
  if (d.extra && !d.sending) {
    (d.extra_big ? env_.listeners[s.listener].frame_buffers : env_.buffers)->release(d.extra);
    d.extra = nullptr;
  }
  const bool keep_spill = d.sending && !d.extra && d.spill;
  char* sb = keep_spill ? spill_hdr(d.spill).next : d.spill;
  while (sb) {
    char* next = spill_hdr(sb).next;
    env_.buffers->release(sb);
    sb = next;
  }
  if (keep_spill) {
    spill_hdr(d.spill).next = nullptr;
    spill_hdr(d.spill).tail = d.spill;
    d.spilled = 1;
  } else {
    d.spill = nullptr;
    d.spilled = 0;
  }
  const bool keep_head = d.sending && !d.extra && !d.spill;
  uint16_t b = keep_head && d.head != kNoBuf ? next_[d.head] : d.head;
  while (b != kNoBuf) {
    const uint16_t nb = next_[b];
    bufs_.recycle(b);
    b = nb;
  }
  if (keep_head && d.head != kNoBuf) {
    next_[d.head] = kNoBuf;
    d.tail = d.head;
    d.queued = 1;
  } else {
    d.head = d.tail = kNoBuf;
    d.queued = 0;
  }
}

void UringRelay::close_fd(Session& s, int fd, uint16_t ops) noexcept {
  if (fd < 0) return;
  // Each request still in flight on the socket is cancelled by its tag (see
  // the header), and its completion comes back as -ECANCELED, or as what it
  // had done. The requests hold the socket, so the close, queued after them,
  // takes effect once the last is gone; the tags name no fd, so a newer
  // socket with this fd number is never hit.
  for (uint16_t left = ops; left; left = static_cast<uint16_t>(left & (left - 1))) {
    const auto op = static_cast<Op>(kRelayFirstOp + std::countr_zero(left));
    io_uring_sqe* sqe = ring_.sqe();
    io_uring_prep_cancel64(sqe, tag(s, op), 0);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, net::pack_tag(uring_op::kIgnore, 0, 0));
  }
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_close(sqe, fd);
  sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
  io_uring_sqe_set_data64(sqe, net::pack_tag(uring_op::kIgnore, 0, 0));
}

void UringRelay::close_session(Session& s) noexcept {
  if (s.state == State::free || s.state == State::closing) return;
  if (logging(env_.listeners[s.listener]))
    log_stream(env_, s.listener, s.peer, s.state == State::relay ? &s.host_addr : nullptr, s.c2u.moved, s.u2c.moved,
               s.start_ms, s.key_view(), s.end);
  env_.timers->cancel(s);
  unstarve(s, true);
  unstarve(s, false);
  release_dir(s, s.c2u);
  release_dir(s, s.u2c);
  api::release_conn(env_.conn_limiter, s.cfd);  // limit_conn
  // (A receive being cancelled for back-pressure needs no second cancel.)
  const auto cancelling = static_cast<uint16_t>((s.c2u.recv == kCancelling ? bit(kRecvClient) : 0) |
                                                (s.u2c.recv == kCancelling ? bit(kRecvUpstream) : 0));
  const auto ops = static_cast<uint16_t>(s.live & ~cancelling);
  close_fd(s, s.cfd, static_cast<uint16_t>(ops & client_ops()));
  close_fd(s, s.ufd, static_cast<uint16_t>(ops & upstream_ops()));
  s.cfd = s.ufd = -1;
  unbind_host(env_, s);
  s.state = State::closing;
  --active_;
  ++retiring_;
  metrics::listener_close(env_, s.listener);
  maybe_retire(s);
}

void UringRelay::maybe_retire(Session& s) noexcept {
  if (s.state != State::closing || s.live || s.t_ops) return;
  s.state = State::free;
  ++s.gen;
  s.next_free = free_head_;
  free_head_ = index_of(s);
  --retiring_;
}

void UringRelay::close_all() noexcept {
  for (auto& s : sessions_)
    if (s.state != State::free && s.state != State::closing) close_session(s);
}

void UringRelay::close_orphans() noexcept {
  uint64_t closed = 0;
  for (auto& s : sessions_) {
    if (s.state != State::relay || !route_orphaned(env_, s)) continue;
    close_session(s);
    ++closed;
  }
  count_orphans(env_, closed, "connection(s)");
}

}  // namespace gw::proxy
