#include "gw/process/worker.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "gw/api/conn_limiter.hpp"
#include "gw/api/guard.hpp"
#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/buffer_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/proxy/access_log.hpp"
#include "gw/proxy/frame_mux.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/http_io.hpp"
#include "gw/proxy/http_proxy.hpp"
#include "gw/proxy/tcp_relay.hpp"
#include "gw/proxy/uring_relay.hpp"
#include "gw/shm/runtime.hpp"
#include "process/signals.hpp"
#include "proxy/metrics.hpp"
#include "proxy/relay_common.hpp"

namespace gw::process {
namespace {

int g_access_log_fd = -1;

constexpr uint64_t kSignalIndex = 0xffffffffull;
constexpr uint64_t kHousekeepingMs = 1000;
// A listener paused on a full session table is retried this often.
constexpr int kFullRetryMs = 100;
constexpr uint64_t kAcceptPauseMs = 100;
// An exiting worker waits at most this long for a logger that is behind to
// take its queued access-log lines.
constexpr int kLogFinishMs = 1000;
// A drain past its limit waits at most this long for its ring accepts' cancels.
constexpr uint64_t kCancelWaitMs = 1000;

class Worker {
 public:
  Worker(const config::Config& cfg, const shm::Segment& seg, uint32_t slot, uint32_t index, const std::vector<int>& fds)
      : cfg_(cfg),
        seg_(seg),
        slot_(slot),
        index_(index),
        master_(::getppid()),
        listen_fds_(fds),
        timers_(core::monotonic_ms()),
        reader_(seg),
        cur_(std::make_unique<shm::Table>(seg.caps())),
        next_(std::make_unique<shm::Table>(seg.caps())),
        balancer_(seg.caps().max_hosts, (uint64_t{static_cast<uint32_t>(::getpid())} << 32) ^ core::monotonic_ns()),
        listeners_(cfg.listeners.size()),
        live_tag_(seg.caps().max_hosts, 0),
        limiter_(cfg, seg, slot),
        guard_(cfg, seg, slot),
        pipes_(cfg.splice_after_bytes ? max_pipes() : 0),
        max_sessions_(session_slots()),
        relay_(env_, max_sessions()),
        mux_(env_, max_sessions()),
        http_(env_, cfg, max_sessions()) {
    for (size_t i = 0; i < cfg.listeners.size(); ++i) {
      const config::ListenerConf& l = cfg.listeners[i];
      proxy::ListenerRuntime& lr = listeners_[i];
      lr.key_from_frame = l.hash_key == config::HashKey::frame;
      lr.close_on_host_remove = l.close_on_host_remove;
      lr.http = l.protocol == config::Protocol::http;
      lr.name = l.name.c_str();
      lr.stats_row = l.stats_row;
      if (!l.access_log.path.empty()) {
        lr.log_file = l.access_log.file;
        lr.log_format = l.access_log.format;
      }
      any_close_on_remove_ |= l.close_on_host_remove;
      if (l.protocol == config::Protocol::frame) {
        framers_.push_back(std::make_unique<proxy::Framer>(l.frame.spec));
        lr.framer = framers_.back().get();
        lr.first_frame_timeout_ms = l.frame.first_frame_timeout_ms;
        lr.per_frame = l.frame.mode == config::FrameMode::frame;
        lr.frame_timeout_ms = l.frame.frame_timeout_ms;
        lr.max_links = l.frame.max_links;
        lr.link_idle_ms = l.frame.link_idle_ms;
        // Settings the table does not carry come from the config, by name
        // (an upstream only the table has gets the defaults).
        lr.send_timeout_ms = config::UpstreamConf{}.send_timeout_ms;
        for (const config::UpstreamConf& uc : cfg.upstreams)
          if (uc.name == l.upstream) lr.send_timeout_ms = uc.send_timeout_ms;
        // Frames larger than a relay buffer get a whole-frame buffer while the
        // first frame (per-frame: each frame) is read; at most
        // max_frame_buffers of them per listener in this worker.
        const size_t frame_buffer = l.frame.spec.max_frame() + proxy::kPadding;
        if (frame_buffer > net::BufferPool::kBufferSize) {
          frame_buffers_.push_back(std::make_unique<net::BufferPool>(0, frame_buffer));
          lr.frame_buffers = frame_buffers_.back().get();
          lr.max_frame_buffers = l.frame.frame_buffer_limit();
        }
      }
    }
    full_paused_.assign(listen_fds_.size(), false);
    env_.epoll = &epoll_;
    env_.timers = &timers_;
    env_.buffers = &buffers_;
    env_.seg = &seg_;
    env_.worker = slot_;
    // Rows of the per-worker counters to sum (least_conn): after a reload a
    // generation may use any stats row, and the one before it others.
    env_.n_workers = seg.stat_workers();
    env_.snap = &snap_;
    env_.balancer = &balancer_;
    env_.pipes = &pipes_;
    env_.splice_after = cfg.splice_after_bytes;
    env_.listeners = listeners_;
    env_.live_tag = live_tag_;
    env_.now_ms = core::monotonic_ms();
    if (g_access_log_fd >= 0) access_log_.init(g_access_log_fd, cfg.access_log_paths.size());
    env_.access_log = &access_log_;

    env_.conn_limiter = &limiter_;
    env_.guard = &guard_;
    // Round-robin tickets are shared by all workers through shm.
    balancer_.set_tickets(
        [](void* ctx, uint32_t pool) -> std::atomic<uint64_t>* {
          const auto* segment = static_cast<const shm::Segment*>(ctx);
          return pool < segment->caps().max_pools ? &segment->pool(pool).ticket : nullptr;
        },
        const_cast<shm::Segment*>(&seg_));
    balancer_.set_latency(
        [](void* ctx, const shm::HostRecord& h) -> uint64_t {
          const auto* env = static_cast<const proxy::RelayEnv*>(ctx);
          return shm::latency_us(env->seg->host(h.slot), h.tag, env->now_ms);
        },
        &env_);
  }

  int run() {
    core::UniqueFd sfd = child_signal_fd();
    sfd_ = sfd.get();
    epoll_.add(sfd_, EPOLLIN, kSignalIndex);

    refresh();
    auto& wr = seg_.worker(slot_);
    wr.started_ms.store(core::wall_ms(), std::memory_order_relaxed);
    wr.heartbeat_ms.store(core::monotonic_ms(), std::memory_order_relaxed);
    wr.pid.store(::getpid(), std::memory_order_release);

    next_housekeeping_ = env_.now_ms + kHousekeepingMs;
    if (cfg_.event_engine == config::EventEngine::io_uring && start_uring()) return run_uring();
    for (size_t i = 0; i < listen_fds_.size(); ++i) epoll_.add(listen_fds_[i], EPOLLIN, i);
    return run_epoll();
  }

 private:
  // ---- the two engines' loops; what they dispatch to is shared below

  int run_epoll() {
    epoll_event events[kMaxEvents];
    for (;;) {
      int n = epoll_.wait(events, kMaxEvents, next_timeout());
      env_.now_ms = core::monotonic_ms();
      if (!dispatch(events, n)) return 0;
      if (!tick()) return 0;
    }
  }

  // io_uring: native L4 relay (tcp listeners, frame listeners in connection
  // mode) on completions; everything readiness-based (the signalfd, http and
  // per-frame listeners, HttpProxy, FrameMux) stays in the epoll set, which
  // is nested in the ring as one poll request. One io_uring_enter per
  // iteration submits and waits.
  bool start_uring() {
    // With no listener that runs natively on the ring (all http, or frame in
    // frame mode), the ring would only wrap the epoll set: one more system
    // call and a re-armed poll per wake-up, for the same readiness dispatch.
    // Such a worker runs the epoll loop itself.
    bool any_native = false, any_http = false;
    for (const proxy::ListenerRuntime& l : listeners_) {
      any_native = any_native || (!l.per_frame && !l.http);
      any_http = any_http || l.http;
    }
    if (!any_native && !any_http) {
      if (slot_ == 0)
        GW_LOG_INFO(
            "event_engine io_uring: no tcp, http or connection-mode frame listener runs on the ring; the "
            "workers run their per-frame listeners on the epoll loop");
      return false;
    }
    try {
      ring_ = std::make_unique<net::Ring>(kRingEntries);
      bufring_ = std::make_unique<net::BufRing>(kRingBuffers, kRingBufferSize);
      if (int e = bufring_->attach(ring_->raw(), 0); e < 0)
        throw std::runtime_error(fmt::format("cannot register the buffer ring: {}", std::strerror(-e)));
      const bool recv_limit = net::uring_recv_limit_supported();
      if (!recv_limit && slot_ == 0)
        GW_LOG_INFO("io_uring: no multishot receive byte limit (Linux 6.17); back-pressure cancels receives instead");
      urelay_ = std::make_unique<proxy::UringRelay>(env_, *ring_, *bufring_, max_sessions(), recv_limit);
      // Two sockets per http connection slot (client, upstream), and as
      // many again for closed ones still waiting for their completions.
      if (any_http) {
        http_io_ = std::make_unique<proxy::HttpIo>(*ring_, *bufring_, *env_.buffers, 4 * max_sessions(), recv_limit);
        http_.use_io(http_io_.get());
      }
    } catch (const std::exception& e) {
      GW_LOG_WARN("event_engine io_uring: {}; this worker uses epoll", e.what());
      http_.use_io(nullptr);
      http_io_.reset();
      urelay_.reset();
      bufring_.reset();
      ring_.reset();
      return false;
    }
    native_.assign(listen_fds_.size(), false);
    accept_armed_.assign(listen_fds_.size(), 0);
    accept_cancelling_.assign(listen_fds_.size(), 0);
    for (size_t i = 0; i < listen_fds_.size(); ++i) {
      native_[i] = !listeners_[i].per_frame && !listeners_[i].http;
      if (!native_[i]) epoll_.add(listen_fds_[i], EPOLLIN, i);
      else ++native_count_;
    }
    arm_accepts();
    return true;
  }

  int run_uring() {
    epoll_event events[kMaxEvents];
    bool epoll_armed = false;
    for (;;) {
      if (!epoll_armed) {
        // One-shot, re-armed after each dispatch: a poll checks the epoll
        // set's ready list when armed, so level-triggered fds that
        // epoll_wait re-queued (a listener with a backlog left) fire again.
        io_uring_sqe* sqe = ring_->sqe();
        io_uring_prep_poll_add(sqe, epoll_.fd(), POLLIN);
        io_uring_sqe_set_data64(sqe, net::pack_tag(proxy::uring_op::kEpoll, 0, 0));
        epoll_armed = true;
      }
      urelay_->flush();
      if (http_io_) http_io_->flush();
      // Readiness an http socket got during the last dispatch (a new
      // connection is writable) is dispatched without waiting.
      ring_->submit_and_wait(http_io_ && http_io_->has_events() ? 0 : next_timeout());
      env_.now_ms = core::monotonic_ms();
      // One acquire load per batch, before the completions (a first frame
      // received, a connect that failed over) pick a host: a gwctl change
      // applies to them as dispatch() applies it to readiness events.
      if (reader_.stale()) refresh();
      bool epoll_ready = false;
      ring_->drain([&](const io_uring_cqe& c) {
        const uint8_t op = net::tag_op(c.user_data);
        if (op >= proxy::uring_op::kHttpFirst) http_io_->on_completion(c.user_data, c.res, c.flags);
        else if (op >= proxy::uring_op::kRelayFirst) urelay_->on_completion(c.user_data, c.res, c.flags);
        else if (op == proxy::uring_op::kAccept) on_accept_completion(net::tag_slot(c.user_data), c.res);
        else if (op == proxy::uring_op::kEpoll) epoll_ready = true, epoll_armed = false;
        else if (op == proxy::uring_op::kAcceptCancel) on_accept_cancel_failed(net::tag_slot(c.user_data));
      });
      // The accepts this batch completed, and the slots it freed: armed
      // again once, for the whole batch.
      if (!accept_paused_ && !draining_) arm_accepts();
      if (http_io_ && http_io_->has_events()) {
        // The http sockets' completions as readiness, through the same
        // dispatch as epoll's (HttpProxy::close_idle_in first).
        const std::span<const epoll_event> ev = http_io_->take_events();
        if (!dispatch(ev.data(), static_cast<int>(ev.size()))) return 0;
      }
      if (epoll_ready) {
        int n = epoll_.wait(events, kMaxEvents, 0);
        if (!dispatch(events, n)) return 0;
      }
      if (!tick()) return 0;
    }
  }

  int next_timeout() const {
    // A per-frame device stopped at a cap with bytes left: tick() drives it
    // in the next iteration, which must not wait.
    if (mux_.busy()) return 0;
    int timeout = timers_.timeout_ms(env_.now_ms);
    int until_hk = static_cast<int>(next_housekeeping_ > env_.now_ms ? next_housekeeping_ - env_.now_ms : 0);
    if (timeout < 0 || timeout > until_hk) timeout = until_hk;
    // A listener paused on a full table: tick() retries it (an http one
    // closes connections that have turned idle meanwhile) every 100 ms,
    // not only when I/O or housekeeping wakes the loop.
    if (any_full_paused_ && timeout > kFullRetryMs) timeout = kFullRetryMs;
    // An accept pause (out of descriptors) ends when it says, not at the
    // next event or housekeeping round.
    if (accept_paused_) {
      const int until_resume = static_cast<int>(resume_accept_ms_ > env_.now_ms ? resume_accept_ms_ - env_.now_ms : 0);
      if (timeout > until_resume) timeout = until_resume;
    }
    // A drain closes what is left at its deadline (and then waits a bounded
    // time for the accepts' cancels): the loop wakes then, not at the next
    // housekeeping round (the timer wheel no longer wakes it every tick).
    if (draining_) {
      const uint64_t at = drain_closed_ ? drain_deadline_ms_ + kCancelWaitMs : drain_deadline_ms_;
      const int until = static_cast<int>(at > env_.now_ms ? at - env_.now_ms : 0);
      if (timeout > until) timeout = until;
    }
    return timeout;
  }

  // Readiness events (both engines). Returns false when the worker must exit now.
  bool dispatch(const epoll_event* events, int n) {
    // One acquire load per batch of events: a table change (a gwctl rule or
    // host change) applies to the next request on an open keep-alive
    // connection too, not only to new connections.
    if (n > 0 && reader_.stale()) refresh();
    http_.close_idle_in(events, n);  // before any event can reuse a dead one
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
        if (!on_signal(sfd_)) return false;
      } else {
        accept_on(static_cast<uint32_t>(d));
      }
    }
    return true;
  }

  // Access log, timers, housekeeping, accept pauses and the drain, once per
  // iteration (both engines). Returns false when the worker must exit now.
  bool tick() {
    // A timer, or a per-frame device going on, may pick a host (a retry after
    // a connect timeout): with the table of this moment, also when no event
    // woke the loop.
    const bool refreshed = reader_.stale();
    if (refreshed) refresh();
    if (mux_.busy()) mux_.run_again();  // per-frame devices that stopped at a cap
    access_log_.flush();                // once per round: the lines of every request this round ended
    timers_.advance(env_.now_ms, [this](net::TimerNode& t) {
      if (mux_.owns(t)) mux_.on_timer(t);
      else if (http_.owns(t)) http_.on_timer(t);
      else if (urelay_ && urelay_->owns(t)) urelay_->on_timer(t);
      else relay_.on_timer(t);
    });
    if (env_.now_ms >= next_housekeeping_) {
      next_housekeeping_ = env_.now_ms + kHousekeepingMs;
      // For gwctl check: a worker stopped or stuck in a loop stops this.
      seg_.worker(slot_).heartbeat_ms.store(core::monotonic_ms(), std::memory_order_relaxed);
      report_log_drops();
      if (!refreshed && any_close_on_remove_) close_orphans();  // active checks may have taken a host down
    }
    if (env_.fd_shortage) {
      // A relay found no descriptor for an upstream socket. Accepting more
      // would only take clients that cannot be served; and under io_uring an
      // accept keeps the open-files limit it was armed with (the kernel reads
      // it when the request is prepared), so only a pause and fresh accepts
      // apply a limit lowered since.
      const int err = env_.fd_shortage;
      env_.fd_shortage = 0;
      if (accept_paused_) {
        resume_accept_ms_ = env_.now_ms + kAcceptPauseMs;  // still short: stay paused
      } else if (!draining_) {
        log_accept_pause(err, "upstream socket");
        pause_accept();
      }
    } else if (accept_paused_ && env_.now_ms >= resume_accept_ms_) {
      resume_accept();
    }
    if (any_full_paused_) resume_full();
    if (draining_) {
      // Under io_uring an http socket closed with a send in flight is
      // closed once that send is done (HttpIo::close()): the process waits
      // for it, as the kernel would deliver it under epoll after its exit.
      if (!drain_closed_ && active() == 0 && accepts_armed_total_ == 0 && !(http_io_ && http_io_->lingering() > 0)) {
        // The cancels and closes of the last sessions, queued in this tick,
        // go out before the process does (the kernel would close those
        // sockets only when it tears the ring down).
        if (ring_) ring_->submit();
        access_log_.finish(kLogFinishMs);
        report_log_drops();
        GW_LOG_INFO("drained; exiting");
        return false;
      }
      if (env_.now_ms >= drain_deadline_ms_) {
        if (!drain_closed_) {
          GW_LOG_WARN("{} ({}) passed with {} connection(s) open; closing them", drain_limit_name_, drain_limit_ms_,
                      active());
          close_all();
          drain_closed_ = true;
        }
        // Under io_uring the exit waits for the accepts' cancels (a few
        // completions away): a listening socket that a newer worker shares
        // passes on, as it closes, the wake-ups its accepts took
        // (close_native_listener()).
        if (accepts_armed_total_ == 0 || env_.now_ms >= drain_deadline_ms_ + kCancelWaitMs) return false;
      }
    }
    return true;
  }

  // Access-log lines dropped since the last report (the logger behind or
  // stopped, its queue full): said in the error log, at most once per
  // housekeeping round, so that a gap in the access log is never silent.
  void report_log_drops() {
    const uint64_t dropped = access_log_.dropped();
    if (dropped == log_drops_reported_) return;
    GW_LOG_WARN(
        "access log: {} line(s) dropped: the logger is behind or stopped and this worker's queue is full ({} "
        "dropped in all)",
        dropped - log_drops_reported_, dropped);
    log_drops_reported_ = dropped;
  }

  uint32_t active() const {
    return relay_.active() + mux_.active() + http_.active() + (urelay_ ? urelay_->active() : 0);
  }
  void close_all() {
    relay_.close_all();
    mux_.close_all();
    http_.close_all();
    if (urelay_) {
      urelay_->close_all();
      ring_->submit();  // the closes go out before the process does
    }
    access_log_.finish(kLogFinishMs);
    report_log_drops();
  }

  static uint64_t fd_limit() {
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    return rl.rlim_cur == RLIM_INFINITY ? 1048576 : rl.rlim_cur;
  }
  // splice(2) pipes: two descriptors each, at most 1/16 of the descriptors.
  static uint32_t max_pipes() { return static_cast<uint32_t>(std::min<uint64_t>(fd_limit() / 16, 1024)); }
  // The session tables' size, from the open-files limit at start (a limit
  // changed since resizes nothing): max_sessions().
  uint32_t session_slots() const {
    uint64_t fds = fd_limit();
    uint64_t reserved = 64 + 2 * uint64_t{pipes_.max()};
    uint64_t n = fds > reserved + 2 ? (fds - reserved) / 2 : 1;  // two sockets per session
    return static_cast<uint32_t>(std::min<uint64_t>(n, 1u << 20));
  }
  uint32_t max_sessions() const { return max_sessions_; }

  void refresh() {
    const char* refused = nullptr;
    uint64_t gen = reader_.refresh(*next_, &refused);
    if (refused) {
      // A corrupt or foreign table (not one of gw's writers): keep routing with
      // the last good one (at start, the empty table read_published left). The
      // next publish is read again.
      GW_LOG_ERROR("the published routing table is refused: {}; keeping generation {}", refused,
                   cur_->header().generation);
      if (snap_built_) return;
    }
    std::swap(cur_, next_);
    snap_.build(*cur_);
    snap_built_ = true;
    balancer_.rebuild(snap_);
    for (size_t i = 0; i < cfg_.listeners.size(); ++i)
      listeners_[i].upstream = snap_.find_upstream(cfg_.listeners[i].upstream);
    http_.refresh();
    guard_.refresh(*cur_);
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
      // A verdict counts only while the upstream has checks: one left from
      // before a reload turned them off takes no traffic away.
      const bool checked = cur_->upstreams()[cur_->pools()[h.pool].upstream].check.type != shm::kCheckNone;
      if (checked && shm::active_state(seg_.host(h.slot), h.tag) == shm::kActiveDown) continue;
      live_tag_[h.slot] = h.tag;
    }
    relay_.close_orphans();
    mux_.close_orphans();
    http_.close_orphans();
    if (urelay_) urelay_->close_orphans();
  }

  // Returns false when the worker must exit now.
  bool on_signal(int sfd) {
    signalfd_siginfo si{};
    while (::read(sfd, &si, sizeof(si)) == sizeof(si)) {
      switch (si.ssi_signo) {
        case SIGTERM: begin_drain("SIGTERM", "shutdown_timeout_ms", cfg_.shutdown_timeout_ms, true); break;
        case SIGWINCH:
          // A reload: a new generation of workers serves the listening
          // sockets; this one finishes what it has.
          begin_drain("SIGWINCH (reload)", "worker_shutdown_timeout_ms", cfg_.worker_shutdown_timeout_ms, false);
          break;
        case SIGINT:
        case SIGQUIT: close_all(); return false;
        case SIGUSR1:
          // logrotate: the error log (access logs are the logger's).
          if (!cfg_.log_file.empty()) {
            try {
              core::log_open(cfg_.log_file);
            } catch (const std::exception& e) {
              GW_LOG_ERROR("{}", e.what());
            }
          }
          break;
        default: break;  // SIGHUP, SIGUSR2: the master handles them
      }
    }
    return true;
  }

  // Stop accepting and finish the open connections within `limit_ms`, then
  // exit (tick() checks). `why` and `limit_name` are for the log; `stop`: a
  // SIGTERM (a stop, or the hand-over of a binary upgrade), else a reload.
  // What is queued in a listening socket that no newer worker accepts on is
  // taken before it closes: after a stop no other process accepts on them
  // (the master has closed its copies, or died), and after a reload neither
  // on those of a listener or worker slot it removed, which stay in their
  // port's SO_REUSEPORT group until this close. What is queued in a socket
  // a newer worker shares (kept_listeners()) is left to that worker, as
  // nginx's old workers leave it: served with the new config and without
  // this drain's limit.
  void begin_drain(const char* why, const char* limit_name, uint32_t limit_ms, bool stop) {
    if (draining_) {
      // Draining already (a reload's SIGWINCH): a stop (SIGTERM, also the
      // master's death) asks for the end within its own limit, which may be
      // the sooner one; a new gwd waits only that long for this worker.
      if (env_.now_ms + limit_ms < drain_deadline_ms_) {
        GW_LOG_INFO("{}: draining already; {} connection(s) left get up to {} ms ({})", why, active(), limit_ms,
                    limit_name);
        drain_limit_name_ = limit_name;
        drain_limit_ms_ = limit_ms;
        drain_deadline_ms_ = env_.now_ms + limit_ms;
      }
      return;
    }
    GW_LOG_INFO("{}: stop accepting, draining {} connection(s) for up to {} ms", why, active(), limit_ms);
    stop_accepting();
    http_.drain();  // idle keep-alive connections close soon, busy ones after their response
    // Closing this process's copies lets the kernel drop the sockets once
    // the master has closed its own (it does so before SIGTERM); after a
    // reload the master and the new workers keep them open. A listener whose
    // ring accept is still being cancelled closes when that ends.
    draining_ = true;
    drain_limit_name_ = limit_name;
    drain_limit_ms_ = limit_ms;
    drain_deadline_ms_ = env_.now_ms + limit_ms;
    kept_ = kept_listeners(stop);
    for (size_t i = 0; i < listen_fds_.size(); ++i) {
      if (!native_.empty() && native_[i]) {
        if (!accept_armed_[i]) close_native_listener(static_cast<uint32_t>(i));
      } else if (listen_fds_[i] >= 0) {
        // With no time to serve them (a limit of 0), what is queued is left
        // where it is: after a stop the socket's last close resets it, as an
        // accept and a close at once would.
        if (limit_ms > 0 && !kept_[i]) take_queued(static_cast<uint32_t>(i));
        ::close(listen_fds_[i]);
        listen_fds_[i] = -1;
      }
    }
  }

  // By listener: whether a newer generation of workers accepts on this
  // worker's socket too. A reload's new worker of socket slot w takes over
  // old worker w's sockets of the listeners whose address stays, while w is
  // below the new worker count (reload()), and a binary upgrade's new master
  // does the same with the sockets it inherits (take_inherited()); either
  // has published its listeners and worker count in the segment's header
  // before this worker is told to drain. A stop of this worker's master, or
  // its death, leaves no other process on them.
  std::vector<bool> kept_listeners(bool stop) const {
    std::vector<bool> kept(listen_fds_.size(), false);
    const shm::SegmentHeader& hdr = seg_.header();
    const pid_t serving = hdr.master_pid.load(std::memory_order_acquire);
    if (::getppid() != master_ || serving <= 0 || (stop && serving == master_)) return kept;
    shm::ListenerList list;
    if (index_ >= hdr.workers.load() || !shm::read_listeners(hdr, list)) return kept;
    for (size_t i = 0; i < kept.size(); ++i)
      for (uint32_t k = 0; k < list.n && !kept[i]; ++k) kept[i] = list.items[k].addr == cfg_.listeners[i].listen;
    return kept;
  }

  void accept_on(uint32_t li) {
    int lfd = listen_fds_[li];
    // Level-triggered listener: a bounded batch per wake keeps the loop fair.
    for (int i = 0; i < 64 && !draining_; ++i) {
      if (table_full(li) && !(listeners_[li].http && reclaim_http())) {
        pause_full(li);  // the next connections wait in the listen queue
        return;
      }
      sockaddr_storage peer;
      socklen_t plen = sizeof(peer);
      int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          log_accept_pause(errno);
          pause_accept();
        }
        return;
      }
      serve(li, fd, peer);
    }
  }

  // A connection accepted (epoll) on listener `li` from `peer`.
  void serve(uint32_t li, int fd, const sockaddr_storage& peer) {
    if (reader_.stale()) refresh();  // one acquire load per new connection
    const auto* addr = reinterpret_cast<const sockaddr*>(&peer);
    if (cfg_.listeners[li].limit_conn.on) {
      // accept4 gives the address even of a client that reset while it
      // waited in the accept queue: admitted, it held a limit_conn place
      // until its first read failed, and a live client from the same address
      // accepted in the same batch was refused. Such a client is gone, not
      // refused: closed uncounted, as under io_uring (serve_accepted).
      sockaddr_storage now{};
      if (!peer_of(fd, now)) {
        ::close(fd);
        return;
      }
      // limit_conn: over the address's max the connection is closed here, unread (counted).
      if (!limiter_.admit(fd, li, addr, env_.now_ms)) {
        refuse_limit_conn(fd, li, now);
        return;
      }
    }
    if (listeners_[li].http) http_.accept(fd, li, addr);
    else if (listeners_[li].per_frame) mux_.accept(fd, li);
    else relay_.accept(fd, li, addr);
  }

  // limit_conn: over the address's max, the accepted connection is closed
  // unread. Counted as accepted and refused (as the other refusals: a
  // rejected/accepted ratio stays a share), and a tcp or frame listener logs
  // it, end=limit_conn (an http listener logs requests, and there was none).
  void refuse_limit_conn(int fd, uint32_t li, const sockaddr_storage& peer) {
    ::close(fd);
    proxy::metrics::listener_accepted_refused(env_, li);
    proxy::metrics::listener_reject(env_, li, shm::kRejectLimitConn);
    if (!listeners_[li].http && env_.access_log && env_.access_log->enabled() && listeners_[li].log_file >= 0)
      proxy::log_stream(env_, static_cast<uint16_t>(li),
                        core::SockAddr::from_sockaddr(reinterpret_cast<const sockaddr*>(&peer)), nullptr, 0, 0,
                        env_.now_ms, {}, "limit_conn");
  }

  // Draining (epoll): the connections queued in listener `li`'s socket, which
  // closing it would reset, are accepted and served (the drain lets them
  // finish), as far as its session table has room; at most a backlog's worth
  // (the socket takes new connections until it closes).
  void take_queued(uint32_t li) {
    for (int n = 0; n < cfg_.listeners[li].backlog; ++n) {
      if (table_full(li) && !(listeners_[li].http && reclaim_http())) return;
      sockaddr_storage peer;
      socklen_t plen = sizeof(peer);
      const int fd =
          ::accept4(listen_fds_[li], reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // EAGAIN: nothing queued (or EMFILE: nothing more can be taken)
      }
      serve(li, fd, peer);
    }
  }

  // io_uring: single-shot accepts, up to kAcceptDepth (4) in flight per native
  // listener, and never more in all than the session slots left: each takes
  // exactly one connection, so every connection the ring accepts has a slot,
  // and a full table leaves new connections in the kernel's listen queue.
  // A multishot accept is not bounded so: it accepts whatever arrives until
  // its cancel is processed, and at 10,000 churning clients one batch of
  // completions brought 4,225 connections to a worker whose listen queue
  // holds 511 (bench/RESULTS.md); its table overflowed and the connections
  // past it were reset.
  //
  // Near a full table the slots left are shared: a listener keeps at most
  // its share (the free slots over the native listeners, at least one)
  // armed, and what it holds above that is cancelled, so that an idle
  // listener's accepts cannot keep the last free slots from a busy one.
  void arm_accepts() {
    const uint32_t free = urelay_->free_slots();
    const uint32_t share = std::clamp<uint32_t>(free / std::max<uint32_t>(native_count_, 1), 1, kAcceptDepth);
    uint32_t budget = free > accepts_armed_total_ ? free - accepts_armed_total_ : 0;
    const size_t n = listen_fds_.size();
    for (size_t i = 0; i < n; ++i) {
      if (!native_[i]) continue;
      const uint32_t live = accept_armed_[i] - std::min(accept_armed_[i], accept_cancelling_[i]);
      for (uint32_t k = share; k < live; ++k) {
        io_uring_sqe* sqe = ring_->sqe();
        io_uring_prep_cancel64(sqe, net::pack_tag(proxy::uring_op::kAccept, static_cast<uint32_t>(i), 0), 0);
        io_uring_sqe_set_data64(sqe, net::pack_tag(proxy::uring_op::kAcceptCancel, static_cast<uint32_t>(i), 0));
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
        ++accept_cancelling_[i];
      }
    }
    for (bool armed = true; armed && budget > 0;) {
      armed = false;
      for (size_t k = 0; k < n && budget > 0; ++k) {
        const size_t i = (accept_turn_ + k) % n;
        if (!native_[i] || full_paused_[i] || listen_fds_[i] < 0 || accept_armed_[i] >= share) continue;
        io_uring_sqe* sqe = ring_->sqe();
        // TCP_NODELAY comes from the listening socket.
        io_uring_prep_accept(sqe, listen_fds_[i], nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        io_uring_sqe_set_data64(sqe, net::pack_tag(proxy::uring_op::kAccept, static_cast<uint32_t>(i), 0));
        ++accept_armed_[i];
        ++accepts_armed_total_;
        --budget;
        armed = true;
      }
    }
    accept_turn_ = n > 0 ? (accept_turn_ + 1) % n : 0;
  }

  void on_accept_completion(uint32_t li, int32_t res) {
    if (li >= listen_fds_.size() || accept_armed_[li] == 0) return;
    --accept_armed_[li];
    --accepts_armed_total_;
    if (res == -ECANCELED && accept_cancelling_[li] > 0) --accept_cancelling_[li];
    if (res >= 0) {
      take_accepted(li, res);
    } else if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM || res == -EINVAL ||
               res == -EBADF || res == -ENOTSOCK || res == -EOPNOTSUPP) {
      // Out of descriptors or memory, or an error that the next accept
      // would meet again at once: a pause, not a loop. The other accepts
      // in flight fail alike; one pause (and one line) covers them.
      if (!accept_paused_) {
        log_accept_pause(-res);
        pause_accept();
      }
      if (!draining_) return;
    }
    // Draining: the listener's last accept is done; what is queued is taken now.
    if (accept_armed_[li] == 0 && draining_) close_native_listener(li);
  }

  // A cancel of one accept found nothing to cancel (that accept completed).
  void on_accept_cancel_failed(uint32_t li) {
    if (li < accept_cancelling_.size() && accept_cancelling_[li] > 0) --accept_cancelling_[li];
  }

  // A connection the ring (or close_native_listener) accepted on listener `li`.
  void take_accepted(uint32_t li, int fd) {
    if (reader_.stale()) refresh();  // one acquire load per new connection
    serve_accepted(li, fd);          // it has a slot: see arm_accepts()
    // The last slot is taken: the listeners wait (and log it) until one frees.
    if (urelay_->full()) pause_native_full();
  }

  // The connected peer of an accepted socket; false for a client that reset
  // while it waited in the accept queue (getpeername: ENOTCONN), which is
  // gone. One syscall, paid on limit_conn listeners only.
  static bool peer_of(int fd, sockaddr_storage& peer) noexcept {
    socklen_t len = sizeof(peer);
    return ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0;
  }

  void serve_accepted(uint32_t li, int fd) {
    if (cfg_.listeners[li].limit_conn.on) {
      // The ring's accept asked for no address: limit_conn asks the socket.
      // A client that reset while it waited in the accept queue has none
      // left: it is gone, not refused, so it is not counted.
      sockaddr_storage peer{};
      if (!peer_of(fd, peer)) {
        ::close(fd);
        return;
      }
      if (!limiter_.admit(fd, li, reinterpret_cast<const sockaddr*>(&peer), env_.now_ms)) {
        refuse_limit_conn(fd, li, peer);
        return;
      }
    }
    urelay_->accept(fd, li);
  }

  // A full http table: idle client connections make room (at most every
  // 100 ms: each try walks the table). True if a slot is free now.
  bool reclaim_http() {
    if (env_.now_ms < next_reclaim_ms_) return false;
    next_reclaim_ms_ = env_.now_ms + kFullRetryMs;
    return http_.reclaim_idle(32) > 0;
  }

  // The session table that listener `li`'s connections go to has no free slot.
  bool table_full(uint32_t li) const {
    const proxy::ListenerRuntime& l = listeners_[li];
    if (l.http) return http_.full();
    if (l.per_frame) return mux_.full();
    if (!native_.empty() && native_[li]) return urelay_->full();
    return relay_.full();
  }

  // Listener `li`'s session table is full (its slots are bounded by the
  // open-files limit): it stops accepting, and new connections wait in the
  // kernel's listen queue, as under HAProxy's maxconn, instead of being
  // accepted and closed. tick() resumes it once a slot is free.
  void pause_full(uint32_t li) {
    if (full_paused_[li]) return;
    full_paused_[li] = true;
    any_full_paused_ = true;
    if (env_.now_ms - last_full_log_ms_ >= 1000) {
      last_full_log_ms_ = env_.now_ms;
      GW_LOG_WARN(
          "all {} session slots of listener {} in use (the open-files limit); new connections wait in its listen "
          "queue until one frees",
          max_sessions(), listeners_[li].name);
    }
    // An EMFILE pause or a drain has taken the listener out already;
    // resume_accept() leaves a full one out.
    if (!accept_paused_ && !draining_) stop_accepting_on(li);
  }

  void pause_native_full() {
    for (size_t i = 0; i < native_.size(); ++i)
      if (native_[i]) pause_full(static_cast<uint32_t>(i));
  }

  // Once per iteration while a listener is paused for a full table: let
  // each listener with a free slot accept again.
  void resume_full() {
    any_full_paused_ = false;
    for (size_t i = 0; i < full_paused_.size(); ++i) {
      if (!full_paused_[i]) continue;
      const auto li = static_cast<uint32_t>(i);
      const bool native = !native_.empty() && native_[li];
      if (table_full(li) && !(listeners_[li].http && reclaim_http())) {
        any_full_paused_ = true;
        continue;
      }
      full_paused_[i] = false;
      if (accept_paused_ || draining_) continue;  // resume_accept() or nothing
      if (native) arm_accepts();
      else epoll_.add(listen_fds_[li], EPOLLIN, li);
    }
  }

  // Draining, io_uring: the listener's last accept has ended (its cancel
  // is done). The kernel wakes one ring accept waiter per connection (they
  // wait exclusively), so a wake-up that this ring took while its accepts
  // were being cancelled, or before its cancelled requests left the socket's
  // wait queue, is lost for the other processes that wait on the socket: the
  // connection would sit in the queue until the next one arrives. On a
  // socket a newer worker shares (kept_), what is queued is its to serve:
  // shutdown(SHUT_WR), which leaves a listening socket as it is, wakes every
  // waiter, and their accepts take it. On one no other worker serves, what
  // is queued is accepted and served here (unless the drain has no time
  // for it), then the socket closes. Only into free session slots (beyond
  // those the other listeners' accepts still in flight may take): with the
  // table full, what is queued stays in the socket.
  void close_native_listener(uint32_t li) {
    int& fd = listen_fds_[li];
    if (fd < 0) return;
    if (kept_[li]) ::shutdown(fd, SHUT_WR);
    while (!kept_[li] && drain_limit_ms_ > 0 && env_.now_ms < drain_deadline_ms_ &&
           urelay_->free_slots() > accepts_armed_total_) {
      int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c >= 0) {
        take_accepted(li, c);
        continue;
      }
      if (errno == EINTR || errno == ECONNABORTED) continue;
      break;  // EAGAIN (or EMFILE: what is left is the other workers')
    }
    ::close(fd);
    fd = -1;
  }

  void stop_accepting() {
    for (size_t i = 0; i < listen_fds_.size(); ++i)
      if (!full_paused_[i]) stop_accepting_on(static_cast<uint32_t>(i));  // a full one is out already
    // Now, so that a listening socket closed right after has no request left.
    if (ring_) ring_->submit();
  }
  void stop_accepting_on(uint32_t i) {
    if (!native_.empty() && native_[i]) {
      if (accept_armed_[i] == 0) return;
      io_uring_sqe* sqe = ring_->sqe();
      io_uring_prep_cancel64(sqe, net::pack_tag(proxy::uring_op::kAccept, i, 0), IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, net::pack_tag(proxy::uring_op::kIgnore, 0, 0));
      sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    } else if (listen_fds_[i] >= 0) {
      epoll_.del(listen_fds_[i]);
    }
  }
  // At most one line a second while the limit holds (a pause ends every
  // kAcceptPauseMs, and the next accept may fail again).
  void log_accept_pause(int err, const char* where = "accept") {
    ++accept_pauses_;
    if (last_pause_log_ms_ != 0 && env_.now_ms - last_pause_log_ms_ < 1000) return;
    last_pause_log_ms_ = env_.now_ms;
    GW_LOG_ERROR("{}: {}; pausing accepts for {} ms ({} pause(s) so far)", where, std::strerror(err), kAcceptPauseMs,
                 accept_pauses_);
  }
  void pause_accept() {
    stop_accepting();
    accept_paused_ = true;
    resume_accept_ms_ = env_.now_ms + kAcceptPauseMs;
  }
  void resume_accept() {
    accept_paused_ = false;
    if (draining_) return;
    for (size_t i = 0; i < listen_fds_.size(); ++i)
      if ((native_.empty() || !native_[i]) && !full_paused_[i]) epoll_.add(listen_fds_[i], EPOLLIN, i);
    if (ring_) arm_accepts();
  }

  static constexpr int kMaxEvents = 256;
  static constexpr unsigned kRingEntries = 2048;      // SQEs (CQ: 4x)
  static constexpr uint32_t kRingBuffers = 256;       // provided receive buffers per worker...
  static constexpr uint32_t kRingBufferSize = 16384;  // ...of this size (4 MiB, touched as used)

  const config::Config& cfg_;
  const shm::Segment& seg_;
  uint32_t slot_;
  uint32_t index_;  // the master's socket slot (listen_fds_ are its sockets)
  pid_t master_;    // the master that forked this worker
  std::vector<int> listen_fds_;
  // Draining: by listener, whether a newer generation of workers accepts on
  // the same socket (kept_listeners()).
  std::vector<bool> kept_;
  net::Epoll epoll_;
  net::TimerWheel timers_;
  net::BufferPool buffers_;
  std::vector<std::unique_ptr<net::BufferPool>> frame_buffers_;  // one per frame listener with big frames
  std::vector<std::unique_ptr<proxy::Framer>> framers_;
  shm::TableReader reader_;
  std::unique_ptr<shm::Table> cur_, next_;
  bool snap_built_ = false;  ///< refresh() has built snap_ once
  balance::Snapshot snap_;
  balance::Balancer balancer_;
  std::vector<proxy::ListenerRuntime> listeners_;
  std::vector<uint32_t> live_tag_;
  bool any_close_on_remove_ = false;
  proxy::AccessLog access_log_;
  uint64_t log_drops_reported_ = 0;  // access_log_.dropped() when report_log_drops() last said it

  api::ConnLimiter limiter_;
  api::Guard guard_;
  proxy::RelayEnv env_;
  net::PipePool pipes_;
  uint32_t max_sessions_;  // session_slots() at start
  proxy::TcpRelay relay_;
  proxy::FrameMux mux_;
  proxy::HttpProxy http_;
  // io_uring engine (null under epoll)
  std::unique_ptr<net::Ring> ring_;
  std::unique_ptr<net::BufRing> bufring_;
  std::unique_ptr<proxy::UringRelay> urelay_;
  std::unique_ptr<proxy::HttpIo> http_io_;  // HttpProxy's sockets, when it has any listener
  std::vector<bool> native_;                // by listener: accepted by the ring
  // By listener: accepts in flight (a drain waits for them: a connection
  // accepted just before the cancel is still served); and their sum.
  std::vector<uint16_t> accept_armed_;
  std::vector<uint16_t> accept_cancelling_;  // ...of which single cancels are on their way (arm_accepts())
  uint32_t accepts_armed_total_ = 0;
  uint32_t native_count_ = 0;
  size_t accept_turn_ = 0;  // the listener that arms first next time
  int sfd_ = -1;
  uint64_t next_housekeeping_ = 0;
  bool draining_ = false;
  bool drain_closed_ = false;  // the drain's limit passed: close_all() is done
  uint64_t drain_deadline_ms_ = 0;
  const char* drain_limit_name_ = "";  // the config key that set the drain limit (for the log)
  uint32_t drain_limit_ms_ = 0;
  bool accept_paused_ = false;
  uint64_t accept_pauses_ = 0;  // EMFILE/ENFILE/ENOBUFS/ENOMEM pauses, for the log
  uint64_t last_pause_log_ms_ = 0;
  uint64_t last_full_log_ms_ = 0;
  uint64_t next_reclaim_ms_ = 0;
  uint64_t resume_accept_ms_ = 0;
  // io_uring: accepts in flight per native listener (see arm_accepts()),
  // which is also the most a listener admits per loop iteration. It bounds
  // the work in progress: with 8 or more, 10,000 churning frame clients kept
  // 5,000-8,944 sessions open per worker (32; a table full at times) and cost
  // 1.2-1.3x epoll's CPU per cycle; with 1, 2 or 4 a few hundred, at 0.9-1.0x
  // epoll's CPU per cycle and 0.94-1.06x its rate, and no change at 50 or
  // 1,000 clients (bench/churn_probe.sh; bench/RESULTS.md). nginx's default,
  // multi_accept off, admits one connection per notification.
  static constexpr uint16_t kAcceptDepth = 4;
  // Full session tables: listeners paused until a slot frees.
  std::vector<bool> full_paused_;  // by listener
  bool any_full_paused_ = false;
};

}  // namespace

void set_access_log_fd(int fd) noexcept {
  g_access_log_fd = fd;
}

int run_worker(const config::Config& cfg, const shm::Segment& seg, uint32_t slot, uint32_t index,
               const std::vector<int>& listen_fds) {
  try {
    // The master gives rows below stat_workers only; the counter and held
    // matrices have no row past them (shm ABI 10).
    if (slot >= seg.stat_workers())
      throw std::runtime_error(fmt::format("row {} is past the segment's {} worker rows", slot, seg.stat_workers()));
    Worker w(cfg, seg, slot, index, listen_fds);
    return w.run();
  } catch (const std::exception& e) {
    GW_LOG_ERROR("worker failed: {}", e.what());
    return 1;
  }
}

}  // namespace gw::process
