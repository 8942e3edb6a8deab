#include "gw/proxy/frame_mux.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "gw/api/conn_limiter.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/socket.hpp"
#include "gw/proxy/access_log.hpp"
#include "gw/shm/runtime.hpp"
#include "proxy/metrics.hpp"
#include "proxy/relay_common.hpp"

namespace gw::proxy {
namespace {
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr size_t kLinkBuffer = net::BufferPool::kBufferSize;
}  // namespace

size_t FrameMux::device_bytes() noexcept {
  return sizeof(Device);
}
size_t FrameMux::link_block_bytes() noexcept {
  return sizeof(Link) * kBlockLinks;
}

FrameMux::FrameMux(RelayEnv& env, uint32_t max_devices) : env_(env), link_blocks_(0, sizeof(Link) * kBlockLinks) {
  devices_.reserve(max_devices);  // touched only as it fills
  // A slot is on the list at most once (Device::listed), and run_again()
  // appends only devices it drives before it drops the entries it took: at
  // most twice the devices, so no allocation when a device stops at a cap.
  again_list_.reserve(2 * static_cast<size_t>(max_devices));
}

void FrameMux::run_again() noexcept {
  const size_t n = again_list_.size();  // drive() may append: those wait for the next call
  for (size_t i = 0; i < n; ++i) {
    Device& d = devices_[again_list_[i]];
    d.listed = false;
    if (d.used && d.again) drive(d);  // clears `again`; a device that stops at a cap again is listed anew
  }
  again_list_.erase(again_list_.begin(), again_list_.begin() + static_cast<std::ptrdiff_t>(n));
}

uint32_t FrameMux::max_links(const Device& d) const noexcept {
  const uint32_t m = env_.listeners[d.listener].max_links;
  return m == 0 ? kMaxLinks : std::min(m, kMaxLinks);
}

void FrameMux::accept(int fd, uint32_t listener) noexcept {
  Device* dp = nullptr;
  if (free_head_ != kNone) {
    dp = &devices_[free_head_];
    free_head_ = dp->next_free;
  } else if (devices_.size() < devices_.capacity()) {
    devices_.emplace_back();  // within the reservation: never reallocates
    dp = &devices_.back();
  } else {
    api::release_conn(env_.conn_limiter, fd);  // admitted by limit_conn: its count goes too
    ::close(fd);
    // No session slot (the worker stops accepting when its table is full, so
    // only a race gets here): counted, as the other refusals are.
    metrics::listener_accepted_refused(env_, listener);
    metrics::listener_reject(env_, listener, shm::kRejectNoSlot);
    return;
  }
  Device& d = *dp;
  d.fd = fd;
  d.used = true;
  d.in = false;  // the registration below reports bytes already queued, if any
  d.out = d.eof = d.reset = d.hup = false;
  d.first = true;
  d.listener = static_cast<uint16_t>(listener);
  d.buf = nullptr;
  d.big = false;
  d.again = false;
  d.head = d.tail = 0;
  d.front_link = -1;
  d.front_attempts = d.front_n_tried = 0;
  d.front_soft = 0;
  d.front_progress_ms = 0;
  d.fd_wait = false;
  d.fd_wait_until_ms = 0;
  d.front_len = d.front_sent = 0;
  d.owner = -1;
  d.next_owner = 0;
  d.owner_left = 0;
  d.owner_progress_ms = 0;
  d.links_shut = false;
  d.frame_deadline_ms = 0;
  d.last_activity_ms = env_.now_ms;
  for (Link& k : d.inline_links) k = Link{};
  d.more = nullptr;
  const ListenerRuntime& l = env_.listeners[listener];
  if (env_.access_log && env_.access_log->enabled() && l.log_file >= 0) {
    // Set-up, once: as many log records as device records may exist.
    if (logs_.capacity() < devices_.capacity()) logs_.reserve(devices_.capacity());
    const uint32_t i = index_of(d);
    while (logs_.size() <= i) logs_.emplace_back();
    DeviceLog& g = logs_[i];
    g.start_ms = env_.now_ms ? env_.now_ms : 1;
    g.bytes_up = g.bytes_down = 0;
    g.front_logged = 0;
    g.end = "closed";
    g.key_len = 0;
    g.peer = core::SockAddr{};
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0)
      g.peer = core::SockAddr::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss));
  } else if (index_of(d) < logs_.size()) {
    logs_[index_of(d)].start_ms = 0;  // not logged
  }
  d.idle_ms = l.upstream >= 0 ? env_.snap->upstreams()[static_cast<size_t>(l.upstream)].idle_timeout_ms : 60000;
  d.first_deadline_ms = env_.now_ms + l.first_frame_timeout_ms;
  ++active_;
  // TCP_NODELAY comes from the listening socket (accepted sockets inherit it).
  metrics::listener_open(env_, listener);
  if (env_.epoll->add(fd, kSocketEvents, data_of(d, 0)) != 0) {
    close_device(d);
    return;
  }
  env_.timers->schedule(d, d.first_deadline_ms);
}

void FrameMux::on_event(uint64_t data, uint32_t events) noexcept {
  const uint32_t idx = static_cast<uint32_t>(data) >> 6;
  const uint32_t sub = static_cast<uint32_t>(data) & 0x3f;
  if (idx >= devices_.size()) return;
  Device& d = devices_[idx];
  if (!d.used || !event_gen_is(data, d.gen)) return;  // stale
  const bool in = events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  const bool out = events & (EPOLLOUT | EPOLLHUP | EPOLLERR);
  if (sub == 0) {
    if (events & EPOLLERR) {
      // A reset (or another error): the kernel still returns the bytes that
      // came before it to a read, and the frames among them go out, as the
      // tcp relay passes a client's last bytes on (they were dropped with
      // the device: a device that closed with a host's push unread, which
      // makes the kernel reset, lost its last frames). Nothing more can go to
      // it; drive() closes it once what it sent is out.
      d.reset = true;
      d.in = true;
      d.out = false;
    } else {
      if (in) d.in = true;
      if (events & (EPOLLRDHUP | EPOLLHUP)) d.hup = true;
      if (out && !d.reset) d.out = true;
    }
  } else {
    const int li = static_cast<int>(sub) - 1;
    if (li >= link_slots(d)) return;
    Link& k = *link_at(d, li);
    if (k.fd < 0) return;
    if (k.connecting) {
      if (!out) return;
      int err = net::socket_error(k.fd);
      // A reset once the handshake was done (the host accepted, then reset
      // before this was looked at): the link connected, and broke as a link
      // reset later does (what the host sent is read, then its EOF; a frame
      // sent on it fails and goes again to a host picked afresh), with no
      // passive failure for the connect.
      if (err != 0 && !net::reset_after_connect(err)) {
        link_failed(d, li, err);
        if (d.used) drive(d);
        return;
      }
      // The event may be one of the link this slot held before (closed, and
      // this one opened, within one epoll batch): SO_ERROR is 0 while a
      // connect is still in progress too, so ask whether it has a peer.
      sockaddr_storage peer{};
      socklen_t peer_len = sizeof(peer);
      if (err == 0 && ::getpeername(k.fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0)
        return;  // its own event comes
      k.connecting = false;
      record_connect_success(env_, k.slot, k.tag, k.connect_start_ns);
      if (li == d.front_link) d.front_progress_ms = env_.now_ms;  // send_timeout_ms runs from here
    }
    if (in) k.in = true;
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) k.hup = true;
    if (out) k.out = true;
  }
  drive(d);
}

void FrameMux::on_timer(net::TimerNode& n) noexcept {
  Device& d = static_cast<Device&>(n);
  if (!d.used) return;
  const uint64_t now = env_.now_ms;
  const int ui = env_.listeners[d.listener].upstream;
  const uint32_t connect_ms = ui >= 0 ? env_.snap->upstreams()[static_cast<size_t>(ui)].connect_timeout_ms : 1000;
  for (int li = 0; li < link_slots(d); ++li) {
    Link& k = *link_at(d, li);
    if (k.fd >= 0 && k.connecting && now >= k.connect_start_ms + connect_ms) {
      link_failed(d, li, ETIMEDOUT);
      if (!d.used) return;
    }
  }
  if (d.first && now >= d.first_deadline_ms) {
    reject(d, FrameError::first_frame_timeout);
    return;
  }
  if (!d.first && d.frame_deadline_ms != 0 && now >= d.frame_deadline_ms) {
    // A frame was started and not finished in time (a device dripping bytes
    // would otherwise hold a whole-frame buffer for as long as it likes).
    reject(d, FrameError::frame_timeout);
    return;
  }
  if (const uint64_t sd = front_deadline(d); sd != 0 && now >= sd) {
    front_timed_out(d);  // the frame goes again (drive() below)
    if (!d.used) return;
  }
  if (const uint64_t od = owner_deadline(d); od != 0 && now >= od) {
    // The host that holds the device's write side stopped inside its frame:
    // as if it had closed there (the device cannot be given the rest), and
    // the other hosts' frames no longer wait behind it.
    const Link& k = *link_at(d, d.owner);
    if (now - last_link_log_ms_ >= 1000) {
      last_link_log_ms_ = now;
      GW_LOG_WARN(
          "host slot {} sent nothing for {} ms (frame_timeout_ms) inside a frame to a device ({} bytes of it "
          "left); closing its connection and the device's",
          k.slot, env_.listeners[d.listener].frame_timeout_ms, d.owner_left);
    }
    note_end(d, "host_frame_timeout");
    close_link(d, d.owner, 0);  // owner_left > 0: closes the device; no passive failure
    return;
  }
  if (d.fd_wait && now >= d.fd_retry_ms) d.fd_wait = false;  // drive() below routes the frame again
  if (!d.first && now >= d.last_activity_ms + d.idle_ms) {
    GW_LOG_DEBUG("device {}: idle for {} ms; closing", index_of(d), d.idle_ms);
    note_end(d, "idle_timeout");
    close_device(d);
    return;
  }
  schedule(d);
  drive(d);
}

void FrameMux::schedule(Device& d) noexcept {
  uint64_t deadline = d.first ? d.first_deadline_ms : d.last_activity_ms + d.idle_ms;
  if (!d.first && d.frame_deadline_ms != 0) deadline = std::min(deadline, d.frame_deadline_ms);
  if (const uint64_t od = owner_deadline(d); od != 0) deadline = std::min(deadline, od);
  if (const uint64_t sd = front_deadline(d); sd != 0) deadline = std::min(deadline, sd);
  if (d.fd_wait) deadline = std::min(deadline, d.fd_retry_ms);
  const int ui = env_.listeners[d.listener].upstream;
  if (ui >= 0) {
    const uint32_t connect_ms = env_.snap->upstreams()[static_cast<size_t>(ui)].connect_timeout_ms;
    for (int li = 0; li < link_slots(d); ++li) {
      const Link& k = *link_at(d, li);
      if (k.fd >= 0 && k.connecting) deadline = std::min<uint64_t>(deadline, k.connect_start_ms + connect_ms);
    }
  }
  env_.timers->schedule(d, deadline);
}

void FrameMux::drive(Device& d) noexcept {
  clear_again(d);  // set again below if a pump stops at its cap
  if (!pump_device_in(d)) return;
  const int8_t front = d.front_link;
  const bool was_reset = d.reset;
  if (!pump_device_out(d)) return;
  // pump_device_out closes a link whose host closed (or sent what cannot be
  // framed), and the frame at head may have been waiting on it (its socket
  // full): that frame goes again, to a host picked afresh, now. No event may
  // come for it otherwise (the device waits for answers; the link is gone),
  // and the device would sit until its idle timeout. A write that found the
  // device reset: what it sent before is read and routed now.
  if (((front >= 0 && d.front_link < 0) || d.reset != was_reset) && !pump_device_in(d)) return;
  // The device reset its connection and every whole frame it sent before is
  // out to its host: nothing can go to it, so it ends here (its links close
  // after the frames: each host reads them before it sees the reset).
  if (d.reset && d.eof && d.head == d.tail && d.front_link < 0) {
    // What the hosts sent for the device is dropped from the links first: a
    // socket closed with unread bytes is reset, and a reset throws away what
    // the kernel has not sent of the device's last frames yet (on loopback
    // it has; on a network it may not). Closed empty, a link ends with a FIN
    // behind them. Bounded: a host that streams is cut off.
    char sink[4096];
    for (int li = 0; li < link_slots(d); ++li) {
      const Link& k = *link_at(d, li);
      if (k.fd < 0 || k.connecting) continue;
      for (int i = 0; i < 16 && ::recv(k.fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; ++i) {
      }
    }
    close_device(d);
    return;
  }
  // The device said it is done and every frame it sent is out: pass the
  // half-close on to each host, then finish once the hosts have answered.
  if (d.eof && d.head == d.tail && d.front_link < 0) {
    bool open = false;
    for (int li = 0; li < link_slots(d); ++li) {
      const Link& k = *link_at(d, li);
      if (k.fd < 0 || k.connecting) continue;
      if (!d.links_shut) ::shutdown(k.fd, SHUT_WR);
      open = true;
    }
    d.links_shut = true;
    if (!open && d.owner < 0) {
      close_device(d);
      return;
    }
  }
  trim_links(d);
  // A pump that stopped at its cap with bytes left put the device on the
  // again list: with edge-triggered epoll no event comes for those bytes, so
  // the worker's next iteration drives it (run_again(); busy() keeps the
  // loop from sleeping).
}

bool FrameMux::pump_device_in(Device& d) noexcept {
  const ListenerRuntime& l = env_.listeners[d.listener];
  Framer& framer = *l.framer;
  uint32_t frames = 0, bytes = 0;  // this call's, against kInFrames / kInBytes
  constexpr size_t kSmallCap = net::BufferPool::kBufferSize - kPadding;
  for (;;) {
    uint32_t need = 0;  // the length of the incomplete frame at head, once its header is in
    if (frames >= kInFrames || bytes >= kInBytes) {
      // One device must not hold the worker (a backlog of small frames is
      // read and routed far faster than it drains): the rest next iteration.
      set_again(d);
      return true;
    }
    if (d.tail > d.head) {
      if (d.fd_wait) return true;  // the frame at head waits for a descriptor: on_timer retries
      const bool routed = d.front_link >= 0;
      FrameDecision fd = framer.inspect(reinterpret_cast<const uint8_t*>(d.buf + d.head), d.tail - d.head, !routed);
      if (fd.kind == FrameDecision::Kind::reject) {
        reject(d, fd.error);
        return false;
      }
      if (fd.kind == FrameDecision::Kind::frame) {
        if (d.first) {
          d.first = false;
          d.last_activity_ms = env_.now_ms;
          schedule(d);
        }
        d.frame_deadline_ms = 0;  // whole: the next frame's clock starts when it is needed
        if (!routed) {
          d.front_len = fd.frame_len;
          d.front_sent = 0;
          if (DeviceLog* g = log_of(d); g && g->key_len == 0) {  // the first frame's key (never empty)
            g->key_len = static_cast<uint8_t>(std::min(fd.key.size(), sizeof(g->key)));
            std::memcpy(g->key, fd.key.data(), g->key_len);
          }
          if (!route_front(d, fd.key)) return false;
          if (d.front_link < 0) return true;  // waits for a descriptor
        }
        Link& k = *link_at(d, d.front_link);
        if (k.connecting || !k.out) {
          arm_front_deadline(d);
          return true;  // resumes on the link's event
        }
        ssize_t n =
            ::send(k.fd, d.buf + d.head + d.front_sent, d.front_len - d.front_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          d.front_sent += static_cast<uint32_t>(n);
          if (DeviceLog* g = log_of(d); g && d.front_sent > g->front_logged) {
            // Each byte the device sent, once: a frame that goes again (whole,
            // after its link broke partway) counts from where it had got to.
            g->bytes_up += d.front_sent - g->front_logged;
            g->front_logged = d.front_sent;
          }
          metrics::host_sent(env_, k.slot, k.tag, static_cast<uint64_t>(n));
          d.last_activity_ms = k.last_used_ms = d.front_progress_ms = env_.now_ms;
          if (d.front_sent == d.front_len) {
            d.head += d.front_len;
            d.front_link = -1;
            k.proven = true;
            d.front_attempts = d.front_n_tried = 0;
            d.front_soft = 0;
            d.fd_wait_until_ms = 0;
            d.front_len = d.front_sent = 0;
            if (DeviceLog* g = log_of(d)) g->front_logged = 0;
            bump(env_.seg->worker(env_.worker).frames_routed);
            ++frames;
          }
          continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          k.out = false;
          arm_front_deadline(d);
          return true;
        }
        if (n < 0 && errno == EINTR) continue;
        // The link broke: the whole frame goes again (see close_link).
        link_failed(d, d.front_link, n < 0 ? errno : EPIPE);
        if (!d.used) return false;
        continue;
      }
      // The frame at head is incomplete: the device owes the rest, within
      // frame_timeout_ms (the first frame has first_frame_timeout_ms).
      need = fd.frame_len;
      if (!d.first && d.frame_deadline_ms == 0) {
        d.frame_deadline_ms = env_.now_ms + l.frame_timeout_ms;
        schedule(d);
      }
    }
    // Need more bytes: keep the partial frame at the start of the buffer.
    // A whole-frame buffer whose big frame is out goes back now, not when the
    // socket next drains: a device that keeps streaming small frames behind a
    // big one would hold it for good (and the listener has max_frame_buffers).
    char* small = d.big && d.tail > d.head && need <= kSmallCap ? env_.buffers->acquire() : nullptr;
    if (small) {
      std::memcpy(small, d.buf + d.head, d.tail - d.head);
      release_device_buf(d);
      d.buf = small;
      d.tail -= d.head;
      d.head = 0;
    } else if (d.head == d.tail) {
      d.head = d.tail = 0;
      if (d.buf && (d.big || !d.in || d.eof)) release_device_buf(d);
    } else if (d.head > 0) {
      std::memmove(d.buf, d.buf + d.head, d.tail - d.head);
      d.tail -= d.head;
      d.head = 0;
    }
    if (d.eof || !d.in) return true;
    if (!d.buf) {
      d.buf = env_.buffers->acquire();
      d.big = false;
      if (!d.buf) {
        close_device(d);
        return false;
      }
    }
    const size_t cap = (d.big ? l.frame_buffers->buffer_size() : net::BufferPool::kBufferSize) - kPadding;
    if (d.tail == cap) {
      // A header accepted a frame larger than this buffer: move to a frame buffer.
      char* big = d.big ? nullptr : acquire_frame_buffer(l);
      if (!big) {
        reject(d, FrameError::no_frame_buffer);
        return false;
      }
      std::memcpy(big, d.buf, d.tail);
      env_.buffers->release(d.buf);
      d.buf = big;
      d.big = true;
      continue;
    }
    ssize_t n = ::recv(d.fd, d.buf + d.tail, cap - d.tail, MSG_DONTWAIT);
    if (n > 0) {
      // Edge-triggered: a short read drained the socket, and the next bytes
      // raise a new event; the recv() that could only say EAGAIN is skipped
      // (as tcp_relay and http_proxy do), unless a FIN or reset was signalled.
      if (static_cast<size_t>(n) < cap - d.tail && !d.hup && !d.reset) d.in = false;
      d.tail += static_cast<uint32_t>(n);
      bytes += static_cast<uint32_t>(n);
      metrics::client_received(env_, d.listener, static_cast<uint64_t>(n));
      d.last_activity_ms = env_.now_ms;
      continue;
    }
    if (n == 0) {
      d.eof = true;
      if (d.tail > d.head) {
        reject(d, framer.at_eof(d.tail - d.head));
        return false;
      }
      return true;
    }
    if ((errno == EAGAIN || errno == EWOULDBLOCK) && !d.reset) {
      d.in = false;
      continue;  // releases an empty buffer above
    }
    if (errno == EINTR) continue;
    // A reset (ECONNRESET; EAGAIN once a write took the reset's error): the
    // end of what the device sent, as an EOF is, and nothing goes to it.
    d.eof = d.reset = true;
    d.out = false;
    if (d.tail > d.head) {
      reject(d, framer.at_eof(d.tail - d.head));  // a frame cut short
      return false;
    }
    return true;
  }
}

bool FrameMux::route_front(Device& d, std::string_view key) noexcept {
  const int ui = env_.listeners[d.listener].upstream;
  if (ui < 0) {
    close_device(d);
    return false;
  }
  const balance::UpstreamView& uv = env_.snap->upstreams()[static_cast<size_t>(ui)];
  auto hosts = env_.snap->table().hosts();
  const uint32_t tries = std::min<uint32_t>(uv.tries, kMaxTries);
  while (d.front_attempts < tries) {
    int h = pick_host(env_, ui, key, std::span<const uint32_t>(d.front_tried, d.front_n_tried), rng_,
                      d.front_attempts == 0);
    if (h < 0 && d.front_soft != 0) {
      // Every other host has been tried: one whose fresh link broke under
      // this frame may take it on a new link (a connect that failed, or a
      // host that took nothing for send_timeout_ms, stays out).
      uint32_t hard[kMaxTries];
      uint32_t n = 0;
      for (uint32_t i = 0; i < d.front_n_tried; ++i)
        if (!(d.front_soft >> i & 1u)) hard[n++] = d.front_tried[i];
      h = pick_host(env_, ui, key, std::span<const uint32_t>(hard, n), rng_, false);
    }
    if (h < 0) break;
    const shm::HostRecord& r = hosts[static_cast<size_t>(h)];
    for (int li = 0; li < link_slots(d); ++li) {
      const Link& k = *link_at(d, li);
      // Not one whose host has closed (its last frames may still wait for the
      // device): a frame sent there would be reset by the host and lost.
      if (k.fd >= 0 && k.slot == r.slot && k.tag == r.tag && !k.eof && !k.orphan) {
        d.front_link = static_cast<int8_t>(li);
        d.front_progress_ms = env_.now_ms;
        return true;
      }
    }
    // A try: the host goes on the list (again, for one whose fresh link
    // broke: it is no longer soft, as this is its link now).
    const uint8_t n_tried = d.front_n_tried;
    const uint16_t soft = d.front_soft;
    uint32_t t = 0;
    while (t < d.front_n_tried && d.front_tried[t] != r.slot) ++t;
    if (t == d.front_n_tried) d.front_tried[d.front_n_tried++] = r.slot;
    d.front_soft = static_cast<uint16_t>(d.front_soft & ~(1u << t));
    ++d.front_attempts;
    int li = open_link(d, r, ui);
    if (!d.used) return false;
    if (li >= 0) {
      d.front_link = static_cast<int8_t>(li);
      d.front_progress_ms = env_.now_ms;
      return true;
    }
    if (li == kLocalError) {
      // Another host would fail the same way, and no host is to blame. Out
      // of descriptors, the frame waits for one (as an L4 connection does)
      // up to connect_timeout_ms, retried every kFdWaitMs; the worker has
      // paused accepting meanwhile.
      --d.front_attempts;
      d.front_n_tried = n_tried;
      d.front_soft = soft;
      if (wait_for_fd(env_, local_errno_, d.fd_wait_until_ms, uv.connect_timeout_ms)) {
        d.fd_wait = true;
        d.fd_retry_ms = env_.now_ms + kFdWaitMs;
        schedule(d);
        return true;  // front_link stays -1
      }
      local_error(local_errno_, local_what_);
      metrics::listener_reject(env_, d.listener, shm::kRejectNoSlot);
      note_end(d, "local_error");
      close_device(d);
      return false;
    }
  }
  count_no_host(env_, d.listener, ui, d.front_attempts, last_no_host_log_ms_);
  note_end(d, "no_host");
  close_device(d);
  return false;
}

// A free link slot: an inline one first, then the overflow block's (taken
// from the pool when the device first needs more than kInlineLinks); -1 if
// all max_links slots are open.
int FrameMux::free_link_slot(Device& d) noexcept {
  for (int i = 0; i < link_slots(d); ++i)
    if (link_at(d, i)->fd < 0) return i;
  if (d.more || max_links(d) <= kInlineLinks) return -1;
  char* block = link_blocks_.acquire();
  if (!block) return -1;  // out of memory: as if every slot were taken
  for (uint32_t i = 0; i < kBlockLinks; ++i) new (block + i * sizeof(Link)) Link{};
  d.more = std::launder(reinterpret_cast<Link*>(block));
  return static_cast<int>(kInlineLinks);
}

int FrameMux::open_link(Device& d, const shm::HostRecord& r, int ui) noexcept {
  int li = free_link_slot(d);
  if (li < 0) {
    // Every link is in use: let the least recently used one go, but only if
    // it has been quiet (no byte either way) for link_idle_ms. Otherwise the
    // device is closed (it reconnects): gw cannot tell whether a busy host
    // still owes answers.
    li = quiet_link(d, -1);
    if (li < 0) {
      if (env_.now_ms - last_link_log_ms_ >= 1000) {
        last_link_log_ms_ = env_.now_ms;
        GW_LOG_WARN(
            "a device connection in mode \"frame\" needs more than {} busy hosts at once (max_links); "
            "closing it",
            max_links(d));
      }
      note_end(d, "link_limit");
      close_device(d);
      return -1;
    }
    close_link(d, li, 0);
  }
  Link& k = *link_at(d, li);
  k = Link{};
  k.slot = r.slot;
  k.tag = r.tag;
  k.weight = r.weight;
  k.last_used_ms = env_.now_ms;
  k.connect_start_ns = core::monotonic_ns();
  k.connect_start_ms = env_.now_ms;
  int err = 0;
  int fd = net::connect_tcp(r.addr, err);
  if (fd < 0 && (err == EMFILE || err == ENFILE)) {
    // Out of descriptors: a device may hold a link per host it has used, so
    // the worker's session table (two descriptors a session) does not bound
    // them. The worker stops accepting for a while (new devices could not be
    // served either), and a link of this device that is quiet enough to be
    // let go under max_links is let go for this one.
    env_.fd_shortage = err;
    const int quiet = quiet_link(d, li);
    if (quiet >= 0) {
      close_link(d, quiet, 0);
      fd = net::connect_tcp(r.addr, err);
    }
  }
  if (fd < 0) {
    if (peer_error(err)) {
      record_connect_failure(env_, ui, r.slot, r.tag, r.weight, err);
      return -1;
    }
    if (!out_of_resources(err)) return -1;  // EADDRNOTAVAIL, EPERM...: this host only; none blamed
    local_errno_ = err;
    local_what_ = "cannot connect upstream";
    return kLocalError;
  }
  shm::counter_open(env_.seg->counter(env_.worker, r.slot), r.tag);
  k.fd = fd;
  if (const int e = env_.epoll->add(fd, kSocketEvents, data_of(d, static_cast<uint32_t>(li) + 1)); e != 0) {
    // ENOMEM, or ENOSPC (max_user_watches): no host is to blame.
    close_link(d, li, 0);
    local_errno_ = e;
    local_what_ = "cannot watch an upstream socket";
    return kLocalError;
  }
  if (err == 0) {
    record_connect_success(env_, r.slot, r.tag, k.connect_start_ns);
    k.out = true;
  } else {
    k.connecting = true;
    schedule(d);  // the connect timeout may come before the device's own deadline
  }
  return li;
}

// The least recently used link of `d` (not `except`) that may be let go:
// not the one a frame is going out on or coming back from, not connecting,
// nothing buffered, and quiet (no byte either way) for link_idle_ms; -1 if none.
int FrameMux::quiet_link(Device& d, int except) noexcept {
  const uint64_t quiet_ms = env_.listeners[d.listener].link_idle_ms;
  uint64_t oldest = UINT64_MAX;
  int li = -1;
  for (int i = 0; i < link_slots(d); ++i) {
    const Link& k = *link_at(d, i);
    if (i != except && k.fd >= 0 && i != d.owner && i != d.front_link && !k.connecting && k.head == k.tail &&
        k.last_used_ms + quiet_ms <= env_.now_ms && k.last_used_ms < oldest) {
      oldest = k.last_used_ms;
      li = i;
    }
  }
  return li;
}

bool FrameMux::out_of_resources(int err) noexcept {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

void FrameMux::local_error(int err, const char* what) noexcept {
  if (env_.now_ms - last_local_error_log_ms_ < 1000) return;
  last_local_error_log_ms_ = env_.now_ms;
  GW_LOG_ERROR("{}: {}{} (a local error: no host is blamed; the device connection is closed)", what, std::strerror(err),
               err == EMFILE || err == ENFILE ? " for connect_timeout_ms" : "");
}

void FrameMux::link_failed(Device& d, int li, int err) noexcept {
  Link& k = *link_at(d, li);
  if (k.connecting) {
    // A failed connect: its host stays out of this frame's next tries.
    if (peer_error(err))
      record_connect_failure(env_, env_.listeners[d.listener].upstream, k.slot, k.tag, k.weight, err);
    if (d.front_link == li) {
      d.front_link = -1;
      d.front_sent = 0;
    }
  }
  close_link(d, li, err);
}

void FrameMux::arm_front_deadline(Device& d) noexcept {
  if (const uint64_t sd = front_deadline(d); sd != 0 && (!d.linked() || d.deadline_ms > sd)) schedule(d);
}

uint64_t FrameMux::front_deadline(Device& d) noexcept {
  if (d.front_link < 0) return 0;
  const Link& k = *link_at(d, d.front_link);
  const uint32_t ms = env_.listeners[d.listener].send_timeout_ms;
  // Connecting (connect_timeout_ms runs), or writable: the host is not the one behind.
  if (ms == 0 || k.fd < 0 || k.connecting || k.out) return 0;
  return d.front_progress_ms + ms;
}

void FrameMux::front_timed_out(Device& d) noexcept {
  const int li = d.front_link;
  Link& k = *link_at(d, li);
  if (env_.now_ms - last_link_log_ms_ >= 1000) {
    last_link_log_ms_ = env_.now_ms;
    GW_LOG_WARN(
        "host slot {} took no byte of a device's frame for {} ms (send_timeout_ms; {} of {} bytes sent); closing "
        "its connection, the frame goes again",
        k.slot, env_.listeners[d.listener].send_timeout_ms, d.front_sent, d.front_len);
  }
  record_connect_failure(env_, env_.listeners[d.listener].upstream, k.slot, k.tag, k.weight, ETIMEDOUT);
  // Out of this frame's next tries; a link it had before the frame makes this a try of its own.
  uint32_t t = 0;
  while (t < d.front_n_tried && d.front_tried[t] != k.slot) ++t;
  if (t == d.front_n_tried && d.front_n_tried < kMaxTries) {
    d.front_tried[d.front_n_tried++] = k.slot;
    if (d.front_attempts < kMaxTries) ++d.front_attempts;
  }
  d.front_soft = static_cast<uint16_t>(d.front_soft & ~(1u << t));
  d.front_link = -1;
  d.front_sent = 0;
  close_link(d, li, ETIMEDOUT);
}

void FrameMux::close_link(Device& d, int li, int err) noexcept {
  Link& k = *link_at(d, li);
  if (k.fd < 0) return;
  if (d.front_link == li && !k.connecting && !k.proven && peer_error(err)) {
    // It was opened for the frame at head and broke before the frame was all
    // written: a failure of its host (as a reset before an HTTP answer), and
    // a try. The host may take the frame again on a new link once no other
    // is left (route_front): it is fine more often than not, and a new link
    // may do. A link that carried frames before is let go without blame,
    // and the frame's next link is its try.
    record_connect_failure(env_, env_.listeners[d.listener].upstream, k.slot, k.tag, k.weight, err);
    for (uint32_t t = 0; t < d.front_n_tried; ++t)
      if (d.front_tried[t] == k.slot) d.front_soft = static_cast<uint16_t>(d.front_soft | 1u << t);
  }
  ::close(k.fd);
  shm::counter_close(env_.seg->counter(env_.worker, k.slot), k.tag);
  if (k.buf) env_.buffers->release(k.buf);
  k = Link{};
  if (d.front_link == li) {
    d.front_link = -1;
    d.front_sent = 0;
  }
  if (d.owner == li) {
    // The host went away in the middle of a frame to the device: the device
    // cannot be given the rest, so it is closed (it reconnects).
    d.owner = -1;
    if (d.owner_left > 0) {
      // Why, unless said already (host_frame_timeout: the host stalled).
      if (DeviceLog* g = log_of(d); g && std::strcmp(g->end, "closed") == 0) g->end = "host_closed_mid_frame";
      close_device(d);
    }
    d.owner_left = 0;
  }
}

// Gives the overflow block back once none of its links is open. Called only
// where no loop over the device's links is running (the end of drive()).
void FrameMux::trim_links(Device& d) noexcept {
  if (!d.more) return;
  for (uint32_t i = 0; i < kBlockLinks; ++i)
    if (d.more[i].fd >= 0) return;
  link_blocks_.release(reinterpret_cast<char*>(d.more));
  d.more = nullptr;
}

bool FrameMux::pump_device_out(Device& d) noexcept {
  const FrameSpec& spec = env_.listeners[d.listener].framer->spec();
  for (int round = 0; round < 64; ++round) {
    bool moved = false;
    // Read from each host while its buffer has room.
    for (int li = 0; li < link_slots(d); ++li) {
      Link& k = *link_at(d, li);
      if (k.fd < 0 || k.connecting) continue;
      while (k.in && !k.eof) {
        if (!k.buf) {
          k.buf = env_.buffers->acquire();
          if (!k.buf) break;
        }
        if (k.tail == kLinkBuffer && k.head > 0) {
          std::memmove(k.buf, k.buf + k.head, k.tail - k.head);
          k.tail -= k.head;
          k.head = 0;
        }
        if (k.tail == kLinkBuffer) break;  // full: back-pressure on this host
        size_t want = kLinkBuffer - k.tail;
        if (k.orphan) {
          // Its host was removed: only the rest of the frame it is writing to
          // the device is read (k.in stays set for when it takes the write side).
          const uint64_t held = k.tail - k.head;
          if (li != d.owner || d.owner_left <= held) break;
          want = static_cast<size_t>(std::min<uint64_t>(want, d.owner_left - held));
        }
        ssize_t n = ::recv(k.fd, k.buf + k.tail, want, MSG_DONTWAIT);
        if (n > 0) {
          if (static_cast<size_t>(n) < want && !k.hup && !k.orphan) k.in = false;  // drained (edge-triggered)
          k.tail += static_cast<uint32_t>(n);
          metrics::host_received(env_, k.slot, k.tag, static_cast<uint64_t>(n));
          k.last_used_ms = d.last_activity_ms = env_.now_ms;
          if (li == d.owner) d.owner_progress_ms = env_.now_ms;
          moved = true;
        } else if (n == 0) {
          k.eof = true;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          k.in = false;
        } else if (errno != EINTR) {
          k.eof = true;  // reset: what was read is still delivered
        }
      }
      if (k.eof && d.owner != li && k.tail > k.head && k.tail - k.head < spec.header_size) {
        // The host closed inside a frame header: no byte of that frame has
        // reached the device, and none can be framed; it goes with the link.
        if (env_.now_ms - last_link_log_ms_ >= 1000) {
          last_link_log_ms_ = env_.now_ms;
          GW_LOG_WARN("host slot {} closed its connection inside a frame header ({} of {} bytes); dropped", k.slot,
                      k.tail - k.head, spec.header_size);
        }
        close_link(d, li);
        if (!d.used) return false;
        moved = true;
        continue;
      }
      if (k.orphan && d.owner != li && k.tail - k.head < spec.header_size) {
        // A removed host's link whose frames gw held are all out (a part of
        // a header left is none the device has seen): it goes now.
        close_link(d, li, 0);
        if (!d.used) return false;
        moved = true;
        continue;
      }
      if (k.head == k.tail && k.buf) {
        env_.buffers->release(k.buf);
        k.buf = nullptr;
        k.head = k.tail = 0;
      }
      if (k.eof && k.head == k.tail && d.owner != li) {
        close_link(d, li);  // the host is done and everything it sent is out
        if (!d.used) return false;
        moved = true;
      }
    }
    // Write frames to the device, one link at a time, whole frames only.
    while (d.out) {
      if (d.owner < 0) {
        const int n_links = link_slots(d);
        int pick = -1;
        for (int i = 0; i < n_links && pick < 0; ++i) {
          const int li = (d.next_owner + i) % n_links;
          const Link& k = *link_at(d, li);
          if (k.fd >= 0 && k.tail - k.head >= spec.header_size) pick = li;
        }
        if (pick < 0) break;
        Link& k = *link_at(d, pick);
        uint64_t len = 0;
        // Only the length field delimits a host's frame: its type, version
        // and size are the host's business, not the device rules'.
        if (reply_length(spec, reinterpret_cast<const uint8_t*>(k.buf + k.head), len) != FrameError::none) {
          if (env_.now_ms - last_link_log_ms_ >= 1000) {
            last_link_log_ms_ = env_.now_ms;
            GW_LOG_WARN("host slot {} sent a frame whose length is smaller than its header; closing its connection",
                        k.slot);
          }
          close_link(d, pick, EPROTO);
          if (!d.used) return false;
          moved = true;
          continue;
        }
        if (k.eof && k.tail - k.head < len) {
          // The host closed before this frame was whole, and none of it has
          // reached the device (as with a header cut short): it goes with the
          // link, and the device stays.
          if (env_.now_ms - last_link_log_ms_ >= 1000) {
            last_link_log_ms_ = env_.now_ms;
            GW_LOG_WARN("host slot {} closed its connection inside a frame ({} of {} bytes); dropped", k.slot,
                        k.tail - k.head, len);
          }
          close_link(d, pick);
          if (!d.used) return false;
          moved = true;
          continue;
        }
        d.owner = static_cast<int8_t>(pick);
        d.owner_left = len;
        d.owner_progress_ms = env_.now_ms;
        d.next_owner = static_cast<uint8_t>((pick + 1) % n_links);
      }
      Link& k = *link_at(d, d.owner);
      if (k.tail == k.head) {
        if (k.eof) {
          close_link(d, d.owner);  // cut off mid-frame: closes the device
          if (!d.used) return false;
          break;
        }
        // The rest of the frame has not come yet: the host owes it within
        // frame_timeout_ms (without progress), or it loses the write side.
        if (const uint64_t od = owner_deadline(d); od != 0 && (!d.linked() || d.deadline_ms > od)) schedule(d);
        break;
      }
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(d.owner_left, k.tail - k.head));
      ssize_t n = ::send(d.fd, k.buf + k.head, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        k.head += static_cast<uint32_t>(n);
        d.owner_left -= static_cast<uint64_t>(n);
        if (DeviceLog* g = log_of(d)) g->bytes_down += static_cast<uint64_t>(n);
        metrics::client_sent(env_, d.listener, static_cast<uint64_t>(n));
        d.last_activity_ms = k.last_used_ms = d.owner_progress_ms = env_.now_ms;
        moved = true;
        if (d.owner_left == 0) {
          const int done = d.owner;
          d.owner = -1;
          if (k.orphan && k.tail - k.head < spec.header_size) {
            close_link(d, done, 0);  // its host was removed, and what gw held of it is out
            if (!d.used) return false;
          }
        }
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        d.out = false;
        break;
      }
      if (n < 0 && errno == EINTR) continue;
      // The device reset (EPIPE after its FIN and reset, ECONNRESET): what
      // it sent before is still read and routed (drive() reads it now).
      d.reset = d.in = true;
      d.out = false;
      break;
    }
    if (!moved) return true;
  }
  // The round cap (one device must not hold the loop) was reached with bytes
  // still moving: drive() has the timer bring it back (see pump_device_in).
  set_again(d);
  return true;
}

uint64_t FrameMux::owner_deadline(Device& d) noexcept {
  if (d.owner < 0 || d.owner_left == 0) return 0;
  const Link& k = *link_at(d, d.owner);
  // Bytes of it buffered, or readable: gw (or the device) is the one behind.
  if (k.fd < 0 || k.tail > k.head || (k.in && !k.eof)) return 0;
  return d.owner_progress_ms + env_.listeners[d.listener].frame_timeout_ms;
}

void FrameMux::release_device_buf(Device& d) noexcept {
  if (d.buf) (d.big ? env_.listeners[d.listener].frame_buffers : env_.buffers)->release(d.buf);
  d.buf = nullptr;
  d.big = false;
}

void FrameMux::reject(Device& d, FrameError e) noexcept {
  count_reject(env_, d.listener, e, d.fd);
  note_end(d, frame_error_name(e));
  close_device(d);
}

void FrameMux::close_device(Device& d) noexcept {
  if (!d.used) return;
  d.used = false;  // first: close_link() below must not recurse into here
  clear_again(d);
  if (DeviceLog* g = log_of(d)) {
    // One line per device connection: no single host (each frame had its own).
    log_stream(env_, d.listener, g->peer, nullptr, g->bytes_up, g->bytes_down, g->start_ms,
               std::string_view(g->key, g->key_len), g->end);
    g->start_ms = 0;
  }
  env_.timers->cancel(d);
  for (int li = 0; li < link_slots(d); ++li) {
    Link& k = *link_at(d, li);
    if (k.fd < 0) continue;
    ::close(k.fd);
    shm::counter_close(env_.seg->counter(env_.worker, k.slot), k.tag);
    if (k.buf) env_.buffers->release(k.buf);
    k = Link{};
  }
  if (d.more) {
    link_blocks_.release(reinterpret_cast<char*>(d.more));
    d.more = nullptr;
  }

  api::release_conn(env_.conn_limiter, d.fd);  // limit_conn
  if (d.fd >= 0) ::close(d.fd);
  d.fd = -1;
  release_device_buf(d);
  d.owner = d.front_link = -1;
  ++d.gen;
  d.next_free = free_head_;
  free_head_ = index_of(d);
  --active_;
  metrics::listener_close(env_, d.listener);
}

void FrameMux::close_all() noexcept {
  for (Device& d : devices_)
    if (d.used) close_device(d);
}

void FrameMux::close_orphans() noexcept {
  uint64_t closed = 0;
  for (Device& d : devices_) {
    if (!d.used || !env_.listeners[d.listener].close_on_host_remove) continue;
    const uint32_t header_size = env_.listeners[d.listener].framer->spec().header_size;
    for (int li = 0; d.used && li < link_slots(d); ++li) {
      Link& k = *link_at(d, li);
      if (k.fd < 0 || k.orphan || (k.slot < env_.live_tag.size() && env_.live_tag[k.slot] == k.tag)) continue;
      ++closed;
      if ((d.owner == li && d.owner_left > 0) || k.tail - k.head >= header_size) {
        // In the middle of a frame to the device, or holding frames of the
        // host's that gw has read and the device has not had: closing it now
        // would close the device too, or drop answers already in gw while the
        // device stays connected. It goes once what gw holds of it is out (or
        // at the host's frame_timeout_ms, as any host stopped inside a frame);
        // nothing more is read from it than the rest of the frame it is
        // writing, and no new frame is routed to it meanwhile. A frame of
        // the device's waiting on it (the host stopped reading) goes at once,
        // whole, to the key's new owner (drive() below), as it would had the
        // link closed now: any part of it the host got ends with its
        // connection.
        k.orphan = true;
        if (d.front_link == li) {
          d.front_link = -1;
          d.front_sent = 0;
        }
        continue;
      }
      close_link(d, li, 0);  // the next frames for its keys go to their new owner; no blame
    }
    if (d.used) drive(d);
  }
  count_orphans(env_, closed, "per-frame host connection(s)");
}

}  // namespace gw::proxy
