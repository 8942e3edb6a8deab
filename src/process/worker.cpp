#include "gw/process/worker.hpp"

#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/buffer_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/proxy/frame_mux.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/http_proxy.hpp"
#include "gw/proxy/tcp_relay.hpp"
#include "gw/shm/runtime.hpp"
#include "process/signals.hpp"
#include "proxy/metrics.hpp"

namespace gw::process {
namespace {

constexpr uint64_t kSignalIndex = 0xffffffffull;
constexpr uint64_t kHousekeepingMs = 1000;
constexpr uint64_t kAcceptPauseMs = 100;

class Worker {
 public:
  Worker(const config::Config& cfg, const shm::Segment& seg, uint32_t slot, const std::vector<int>& fds)
      : cfg_(cfg),
        seg_(seg),
        slot_(slot),
        listen_fds_(fds),
        timers_(core::monotonic_ms()),
        reader_(seg),
        cur_(std::make_unique<shm::Table>(seg.caps())),
        next_(std::make_unique<shm::Table>(seg.caps())),
        balancer_(seg.caps().max_hosts, (uint64_t{static_cast<uint32_t>(::getpid())} << 32) ^ core::monotonic_ns()),
        listeners_(cfg.listeners.size()),
        live_tag_(seg.caps().max_hosts, 0),
        relay_(env_, max_sessions()),
        mux_(env_, max_sessions()),
        http_(env_, cfg, max_sessions()) {
    size_t frame_buffer = 0;
    for (size_t i = 0; i < cfg.listeners.size(); ++i) {
      const config::ListenerConf& l = cfg.listeners[i];
      proxy::ListenerRuntime& lr = listeners_[i];
      lr.key_from_frame = l.hash_key == config::HashKey::frame;
      lr.close_on_host_remove = l.close_on_host_remove;
      lr.http = l.protocol == config::Protocol::http;
      any_close_on_remove_ |= l.close_on_host_remove;
      if (l.protocol == config::Protocol::frame) {
        framers_.push_back(std::make_unique<proxy::Framer>(l.frame.spec));
        lr.framer = framers_.back().get();
        lr.first_frame_timeout_ms = l.frame.first_frame_timeout_ms;
        lr.per_frame = l.frame.mode == config::FrameMode::frame;
        frame_buffer = std::max(frame_buffer, l.frame.spec.max_frame() + proxy::kPadding);
      }
    }
    // Frames larger than a relay buffer get a whole-frame buffer while their
    // first frame (or, per-frame, each frame) is read.
    if (frame_buffer > net::BufferPool::kBufferSize)
      frame_buffers_ = std::make_unique<net::BufferPool>(0, frame_buffer);
    env_.epoll = &epoll_;
    env_.timers = &timers_;
    env_.buffers = &buffers_;
    env_.seg = &seg_;
    env_.worker = slot_;
    env_.n_workers = static_cast<uint32_t>(cfg.workers);
    env_.snap = &snap_;
    env_.balancer = &balancer_;
    env_.frame_buffers = frame_buffers_.get();
    env_.listeners = listeners_;
    env_.live_tag = live_tag_;
    env_.now_ms = core::monotonic_ms();
    // Round-robin tickets are shared by all workers through shm.
    balancer_.set_tickets(
        [](void* ctx, uint32_t pool) -> std::atomic<uint64_t>* {
          const auto* segment = static_cast<const shm::Segment*>(ctx);
          return pool < segment->caps().max_pools ? &segment->pool(pool).ticket : nullptr;
        },
        const_cast<shm::Segment*>(&seg_));
    balancer_.set_latency(
        [](void* ctx, const shm::HostRecord& h) -> uint64_t {
          return shm::latency_us(static_cast<const shm::Segment*>(ctx)->host(h.slot), h.tag);
        },
        const_cast<shm::Segment*>(&seg_));
  }

  int run() {
    core::UniqueFd sfd = child_signal_fd();
    epoll_.add(sfd.get(), EPOLLIN, kSignalIndex);
    for (size_t i = 0; i < listen_fds_.size(); ++i) epoll_.add(listen_fds_[i], EPOLLIN, i);

    refresh();
    auto& wr = seg_.worker(slot_);
    wr.started_ms.store(core::wall_ms(), std::memory_order_relaxed);
    wr.pid.store(::getpid(), std::memory_order_release);

    epoll_event events[256];
    uint64_t next_housekeeping = env_.now_ms + kHousekeepingMs;
    for (;;) {
      int timeout = timers_.timeout_ms(env_.now_ms);
      int until_hk = static_cast<int>(next_housekeeping > env_.now_ms ? next_housekeeping - env_.now_ms : 0);
      if (timeout < 0 || timeout > until_hk) timeout = until_hk;
      int n = epoll_.wait(events, 256, timeout);
      env_.now_ms = core::monotonic_ms();
      // One acquire load per batch of events: a table change (a gwctl rule or
      // host change) applies to the next request on an open keep-alive
      // connection too, not only to new connections.
      if (n > 0 && reader_.stale()) refresh();
      for (int i = 0; i < n; ++i) {
        uint64_t d = events[i].data.u64;
        const uint64_t kind = proxy::event_kind(d);
        if (kind == proxy::kKindMux) {
          mux_.on_event(d, events[i].events);
        } else if (kind == proxy::kKindHttpClient || kind == proxy::kKindHttpUp) {
          http_.on_event(d, events[i].events);
        } else if (kind != proxy::kKindWorker) {
          relay_.on_event(d, events[i].events);
        } else if (d == kSignalIndex) {
          if (!on_signal(sfd.get())) return 0;
        } else {
          accept_on(static_cast<uint32_t>(d));
        }
      }
      timers_.advance(env_.now_ms, [this](net::TimerNode& t) {
        if (mux_.owns(t)) mux_.on_timer(t);
        else if (http_.owns(t)) http_.on_timer(t);
        else relay_.on_timer(t);
      });
      if (env_.now_ms >= next_housekeeping) {
        next_housekeeping = env_.now_ms + kHousekeepingMs;
        if (reader_.stale()) refresh();
        else if (any_close_on_remove_) close_orphans();  // active checks may have taken a host down
      }
      if (accept_paused_ && env_.now_ms >= resume_accept_ms_) resume_accept();
      if (draining_) {
        if (relay_.active() + mux_.active() + http_.active() == 0) {
          GW_LOG_INFO("drained; exiting");
          return 0;
        }
        if (env_.now_ms >= drain_deadline_ms_) {
          GW_LOG_WARN("shutdown_timeout_ms ({}) passed with {} connection(s) open; closing them",
                      cfg_.shutdown_timeout_ms, relay_.active() + mux_.active() + http_.active());
          relay_.close_all();
          mux_.close_all();
          http_.close_all();
          return 0;
        }
      }
    }
  }

 private:
  uint32_t max_sessions() const {
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    uint64_t fds = rl.rlim_cur == RLIM_INFINITY ? 1048576 : rl.rlim_cur;
    uint64_t n = fds > 64 ? (fds - 64) / 2 : 1;  // two sockets per session
    return static_cast<uint32_t>(std::min<uint64_t>(n, 1u << 20));
  }

  void refresh() {
    uint64_t gen = reader_.refresh(*next_);
    std::swap(cur_, next_);
    snap_.build(*cur_);
    balancer_.rebuild(snap_);
    for (size_t i = 0; i < cfg_.listeners.size(); ++i)
      listeners_[i].upstream = snap_.find_upstream(cfg_.listeners[i].upstream);
    http_.refresh();
    env_.table_changed = true;
    seg_.worker(slot_).generation.store(gen, std::memory_order_release);
    if (any_close_on_remove_) close_orphans();
  }

  // on_host_remove "close": which hosts still take traffic, then close the
  // connections bound to the others.
  void close_orphans() {
    std::fill(live_tag_.begin(), live_tag_.end(), 0u);
    for (const shm::HostRecord& h : cur_->hosts()) {
      if (h.admin_down || h.slot >= live_tag_.size()) continue;
      if (shm::active_state(seg_.host(h.slot), h.tag) == shm::kActiveDown) continue;
      live_tag_[h.slot] = h.tag;
    }
    relay_.close_orphans();
    mux_.close_orphans();
  }

  // Returns false when the worker must exit now.
  bool on_signal(int sfd) {
    signalfd_siginfo si{};
    while (::read(sfd, &si, sizeof(si)) == sizeof(si)) {
      switch (si.ssi_signo) {
        case SIGTERM:
          if (!draining_) {
            GW_LOG_INFO("SIGTERM: stop accepting, draining {} connection(s) for up to {} ms",
                        relay_.active() + mux_.active() + http_.active(), cfg_.shutdown_timeout_ms);
            stop_accepting();
            http_.drain();  // idle keep-alive connections close now, busy ones after their response
            // Closing this process's copies lets the kernel drop the sockets
            // once the master has closed its own (it does so before SIGTERM).
            for (int fd : listen_fds_) ::close(fd);
            draining_ = true;
            drain_deadline_ms_ = env_.now_ms + cfg_.shutdown_timeout_ms;
          }
          break;
        case SIGINT:
        case SIGQUIT:
          relay_.close_all();
          mux_.close_all();
          http_.close_all();
          return false;
        default:
          break;  // SIGHUP, SIGUSR1/2: the master handles them
      }
    }
    return true;
  }

  void accept_on(uint32_t li) {
    int lfd = listen_fds_[li];
    // Level-triggered listener: a bounded batch per wake keeps the loop fair.
    for (int i = 0; i < 64 && !draining_; ++i) {
      sockaddr_storage peer;
      socklen_t plen = sizeof(peer);
      int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          GW_LOG_ERROR("accept: {}; pausing accepts for {} ms", std::strerror(errno), kAcceptPauseMs);
          pause_accept();
        }
        return;
      }
      if (reader_.stale()) refresh();  // one acquire load per new connection
      const bool per_frame = listeners_[li].per_frame;
      const bool http = listeners_[li].http;
      if (http ? http_.full() : per_frame ? mux_.full() : relay_.full()) {
        ::close(fd);
        proxy::metrics::listener_reject(env_, li, shm::kRejectNoSlot);
        if (env_.now_ms - last_full_log_ms_ >= 1000) {
          last_full_log_ms_ = env_.now_ms;
          GW_LOG_WARN("all {} session slots in use (the open-files limit); refusing connections", max_sessions());
        }
        continue;
      }
      if (http) http_.accept(fd, li, reinterpret_cast<const sockaddr*>(&peer));
      else if (per_frame) mux_.accept(fd, li);
      else relay_.accept(fd, li, reinterpret_cast<const sockaddr*>(&peer));
    }
  }

  void stop_accepting() {
    for (int fd : listen_fds_) epoll_.del(fd);
  }
  void pause_accept() {
    stop_accepting();
    accept_paused_ = true;
    resume_accept_ms_ = env_.now_ms + kAcceptPauseMs;
  }
  void resume_accept() {
    accept_paused_ = false;
    if (draining_) return;
    for (size_t i = 0; i < listen_fds_.size(); ++i) epoll_.add(listen_fds_[i], EPOLLIN, i);
  }

  const config::Config& cfg_;
  const shm::Segment& seg_;
  uint32_t slot_;
  std::vector<int> listen_fds_;
  net::Epoll epoll_;
  net::TimerWheel timers_;
  net::BufferPool buffers_;
  std::unique_ptr<net::BufferPool> frame_buffers_;
  std::vector<std::unique_ptr<proxy::Framer>> framers_;
  shm::TableReader reader_;
  std::unique_ptr<shm::Table> cur_, next_;
  balance::Snapshot snap_;
  balance::Balancer balancer_;
  std::vector<proxy::ListenerRuntime> listeners_;
  std::vector<uint32_t> live_tag_;
  bool any_close_on_remove_ = false;
  proxy::RelayEnv env_;
  proxy::TcpRelay relay_;
  proxy::FrameMux mux_;
  proxy::HttpProxy http_;
  bool draining_ = false;
  uint64_t drain_deadline_ms_ = 0;
  bool accept_paused_ = false;
  uint64_t last_full_log_ms_ = 0;
  uint64_t resume_accept_ms_ = 0;
};

}  // namespace

int run_worker(const config::Config& cfg, const shm::Segment& seg, uint32_t slot, const std::vector<int>& listen_fds) {
  try {
    Worker w(cfg, seg, slot, listen_fds);
    return w.run();
  } catch (const std::exception& e) {
    GW_LOG_ERROR("worker failed: {}", e.what());
    return 1;
  }
}

}  // namespace gw::process
