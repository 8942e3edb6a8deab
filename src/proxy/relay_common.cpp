#include "proxy/relay_common.hpp"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/proxy/access_log.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "proxy/metrics.hpp"

namespace gw::proxy {

static_assert(kFrameErrorCount <= shm::kFrameRejectKinds, "the shm worker row counts every frame reject reason");
static_assert(kFrameErrorCount <= shm::kRejectNoHost, "frame reasons come first in ListenerStats::rejects");

namespace {
constexpr int kTrialRepicks = 3;
}  // namespace

int pick_host(RelayEnv& env, int ui, balance::HashKey key, std::span<const uint32_t> tried, balance::Rng& rng,
              bool first, ClaimTrial claim) noexcept {
  const balance::Snapshot& snap = *env.snap;
  const balance::UpstreamView& uv = snap.upstreams()[static_cast<size_t>(ui)];
  auto hosts = snap.table().hosts();
  bool fell_back = false;
  bool ramp = true, ramped_out = false;
  uint64_t ramp_seed = 0;  // drawn when first needed: one draw per pick
  auto eligible = [&](uint32_t i) noexcept {
    const shm::HostRecord& r = hosts[i];
    if (r.admin_down) return false;
    for (uint32_t t : tried)
      if (t == r.slot) return false;
    const shm::HostRuntime& hr = env.seg->host(r.slot);
    if (!shm::host_usable(hr, r.tag, uv.health, env.now_ms)) return false;
    if (uv.slow_start_ms == 0) return true;
    // Slow start: a host that just came back takes a growing share of its
    // weight (never applied to hash methods: keys must not wander).
    if (shm::method_uses_key(static_cast<shm::Method>(snap.table().pools()[r.pool].method))) return true;
    if (!ramp) return true;
    uint32_t share = shm::slow_start_permille(hr, r.tag, uv.slow_start_ms, env.now_ms);
    if (share >= 1000) return true;
    // In or out for the whole pick, however often the method asks (weighted
    // random sums the weights, then walks them; least_conn looks at ties
    // again): a fresh draw per question made random's two passes disagree and
    // left a ramping host almost nothing. One draw per pick, mixed with the
    // slot, decides each host on its own.
    if (ramp_seed == 0) ramp_seed = rng.next() | 1;
    if (balance::mix64(ramp_seed ^ r.slot) % 1000 < share) return true;
    ramped_out = true;
    return false;
  };
  auto load = [&](uint32_t i) noexcept {
    // Active connections over every worker: one relaxed load per row.
    const shm::HostRecord& r = hosts[i];
    uint64_t n = 0;
    for (uint32_t w = 0; w < env.n_workers; ++w) {
      const shm::HostCounter& c = env.seg->counter(w, r.slot);
      if (c.tag.load(std::memory_order_relaxed) == r.tag) n += c.active.load(std::memory_order_relaxed);
    }
    return n;
  };
  // A pool whose usable hosts the ramp all turned away is picked from again
  // without it before the next pool is tried: slow start shapes the share of
  // a host inside its pool and never sends traffic to a backup pool while
  // this one has a usable host.
  auto unramp = [&]() noexcept {
    if (!ramped_out) return false;
    ramped_out = false;
    ramp = false;
    return true;
  };
  int h = -1;
  for (int round = 0;; ++round) {
    h = env.balancer->pick(snap, uv, key, eligible, load, &fell_back, unramp);
    if (h < 0) break;
    // A down host past its fail_timeout was usable for this pick: this
    // connection takes its one trial over all workers (no-op for a host that
    // is up). Another worker may have taken it since this pick found the host
    // usable: the host is then out again, and the pick is made again without
    // it (at most kTrialRepicks times; nginx holds its zone's lock instead).
    const shm::Trial t = claim(env.seg->host(hosts[h].slot), hosts[h].tag, uv.health, env.now_ms);
    if (t != shm::Trial::lost || round == kTrialRepicks) break;
  }
  if (fell_back && first) bump(env.seg->worker(env.worker).hash_fallbacks);
  if (h >= 0 && env.table_changed) {
    // Propagation: the first connection this worker routes with a new table.
    env.table_changed = false;
    env.seg->worker(env.worker).applied_ns.store(core::monotonic_ns(), std::memory_order_release);
  }
  return h;
}

bool host_left(const RelayEnv& env, int ui, std::span<const uint32_t> tried) noexcept {
  const balance::Snapshot& snap = *env.snap;
  if (ui < 0 || static_cast<size_t>(ui) >= snap.upstreams().size()) return false;
  const balance::UpstreamView& uv = snap.upstreams()[static_cast<size_t>(ui)];
  auto hosts = snap.table().hosts();
  for (const balance::PoolView& p : snap.pools(uv)) {
    for (const uint32_t i : snap.hosts(p)) {
      const shm::HostRecord& r = hosts[i];
      if (r.admin_down || r.weight == 0) continue;
      bool was_tried = false;
      for (const uint32_t t : tried) was_tried |= t == r.slot;
      if (!was_tried && shm::host_usable(env.seg->host(r.slot), r.tag, uv.health, env.now_ms)) return true;
    }
  }
  return false;
}

bool upstream_uses_key(const RelayEnv& env, int ui) noexcept {
  if (ui < 0) return false;
  const balance::Snapshot& snap = *env.snap;
  for (const balance::PoolView& p : snap.pools(snap.upstreams()[static_cast<size_t>(ui)]))
    if (shm::method_uses_key(p.method)) return true;
  return false;
}

const shm::HostRecord* bind_next_host(RelayEnv& env, StreamRoute& r, int ui, const balance::UpstreamView& uv,
                                      balance::Rng& rng) noexcept {
  const uint32_t tries = std::min<uint32_t>(uv.tries, StreamRoute::kMaxTries);
  if (r.attempts >= tries) return nullptr;  // kAttemptsLocalError too
  const int h = pick_host(env, ui, r.key_view(), std::span<const uint32_t>(r.tried, r.attempts), rng, r.attempts == 0);
  if (h < 0) return nullptr;
  const shm::HostRecord& rec = env.snap->table().hosts()[static_cast<size_t>(h)];
  r.tried[r.attempts++] = rec.slot;
  r.host_addr = rec.addr;
  r.host_slot = rec.slot;
  r.host_tag = rec.tag;
  r.host_weight = rec.weight;
  r.bound = true;
  r.idle_ms = uv.idle_timeout_ms;
  shm::counter_open(env.seg->counter(env.worker, rec.slot), rec.tag);
  r.connect_start_ns = core::monotonic_ns();
  return &rec;
}

void unbind_host(RelayEnv& env, StreamRoute& r, bool reached) noexcept {
  if (!r.bound) return;
  if (reached) shm::counter_close(env.seg->counter(env.worker, r.host_slot), r.host_tag);
  else shm::counter_unopen(env.seg->counter(env.worker, r.host_slot), r.host_tag);
  r.bound = false;
}

bool start_fd_wait(RelayEnv& env, StreamRoute& r, int err, uint32_t connect_timeout_ms) noexcept {
  if (!wait_for_fd(env, err, r.fd_wait_until_ms, connect_timeout_ms)) return false;
  // No descriptor: not the host's fault, nor a connection to it (its total
  // counted one per retry, ten a second). The caller tries again (any host) soon.
  unbind_host(env, r, false);
  --r.attempts;
  r.fd_wait = true;
  return true;
}

void connect_failed(RelayEnv& env, StreamRoute& r, int err, uint64_t& last_log_ms) noexcept {
  GW_LOG_DEBUG("connect to host slot {} failed: {}", r.host_slot, std::strerror(err));
  if (peer_error(err)) {
    record_connect_failure(env, env.listeners[r.listener].upstream, r.host_slot, r.host_tag, r.host_weight, err);
  } else {
    if (env.now_ms - last_log_ms >= 1000) {
      last_log_ms = env.now_ms;
      GW_LOG_ERROR("cannot connect upstream: {} (a local error: no host is blamed; the connection is closed)",
                   std::strerror(err));
    }
    r.attempts = kAttemptsLocalError;  // another host would fail the same way
  }
  unbind_host(env, r, peer_error(err));  // a local error: nothing reached the host
}

void count_unrouted(RelayEnv& env, StreamRoute& r, int ui, uint64_t& last_no_host_log_ms) noexcept {
  if (r.attempts == kAttemptsLocalError) {
    // Logged by connect_failed. The worker is out of descriptors (or ports,
    // or memory), as when no connection slot is left.
    metrics::listener_reject(env, r.listener, shm::kRejectNoSlot);
    r.end = "local_error";
  } else {
    count_no_host(env, r.listener, ui, r.attempts, last_no_host_log_ms);
    r.end = "no_host";
  }
}

bool route_orphaned(const RelayEnv& env, const StreamRoute& r) noexcept {
  if (!env.listeners[r.listener].close_on_host_remove) return false;
  return r.host_slot >= env.live_tag.size() || env.live_tag[r.host_slot] != r.host_tag;
}

void count_orphans(RelayEnv& env, uint64_t closed, std::string_view what) noexcept {
  if (!closed) return;
  bump(env.seg->worker(env.worker).host_closed, closed);
  GW_LOG_INFO("on_host_remove close: closed {} {} whose host was removed or is down", closed, what);
}

bool wait_for_fd(RelayEnv& env, int err, uint64_t& wait_until_ms, uint64_t limit_ms) noexcept {
  if (err != EMFILE && err != ENFILE) return false;
  env.fd_shortage = err;
  if (wait_until_ms == 0) wait_until_ms = env.now_ms + limit_ms;
  return env.now_ms < wait_until_ms;
}

namespace {

// `held_out`: the host's active checks hold it out, so this passive change
// moves no traffic: health_down, which runs no hook (the checker said
// host_down already); so does a host downed by hand.
void host_event(RelayEnv& env, uint32_t slot, uint32_t tag, bool down, int err, bool held_out = false) noexcept {
  const shm::Table& t = env.snap->table();
  auto hosts = t.hosts();
  try {
    std::string path = "(removed host)", address = "-";
    uint32_t max_fails = 0, fail_timeout = 0;
    bool admin_down = false;
    for (size_t i = 0; i < hosts.size(); ++i) {
      if (hosts[i].slot == slot && hosts[i].tag == tag) {
        admin_down = hosts[i].admin_down != 0;
        path = t.host_path(static_cast<int>(i));
        address = hosts[i].addr.to_string();
        const auto& pool = t.pools()[hosts[i].pool];
        const shm::UpstreamRecord& up = t.upstreams()[pool.upstream];
        max_fails = up.max_fails;
        fail_timeout = up.fail_timeout_ms;
        if (!down && up.check.type != shm::kCheckNone) {
          // A trial that passed while the checks hold the host out (they
          // failed meanwhile, or have not passed yet where an unchecked host
          // is unusable): it takes no traffic yet, and the checker's host_up
          // comes when they pass. It said host_up, and ran the hook twice.
          const uint32_t verdict = shm::active_state(env.seg->host(slot), tag);
          held_out = verdict == shm::kActiveDown || (verdict == shm::kActiveUnknown && up.check.unknown_usable == 0);
        }
        break;
      }
    }
    // A host downed by hand is out already too (gwctl down said host_down).
    const char* out_already = admin_down ? "; the host stays out: admin down, until gwctl up"
                              : held_out ? "; the host is out on its active checks"
                                         : "";
    std::string text = down ? fmt::format("{} {} {} (passive: {} failure(s) within {} ms, last: {}{})",
                                          *out_already ? "health_down" : "host_down", path, address, max_fails,
                                          fail_timeout, net::error_text(err), out_already)
                            : fmt::format("{} {} {} (passive: a connection succeeded{})",
                                          *out_already ? "health_up" : "host_up", path, address, out_already);
    shm::emit_event(*env.seg, shm::EventKind::health, t.header().generation, text);
    GW_LOG_WARN("{}", text);
  } catch (...) {
  }
}

}  // namespace

void record_connect_failure(RelayEnv& env, int ui, uint32_t slot, uint32_t tag, uint32_t weight, int err) noexcept {
  // An upstream a table change removed under the connection: its host's
  // health settings are gone with it.
  if (ui < 0 || static_cast<size_t>(ui) >= env.snap->upstreams().size()) return;
  // So is a host removed meanwhile (a connect begun before gwctl remove
  // host, failing now): its slot's failure would be counted for nothing, and
  // said as "host_down (removed host) - (passive: 0 failure(s) within 0 ms".
  const auto hosts = env.snap->table().hosts();
  if (std::none_of(hosts.begin(), hosts.end(),
                   [&](const shm::HostRecord& h) { return h.slot == slot && h.tag == tag; }))
    return;
  const balance::UpstreamView& uv = env.snap->upstreams()[static_cast<size_t>(ui)];
  shm::HostRuntime& hr = env.seg->host(slot);
  if (shm::record_failure(hr, tag, uv.health, env.now_ms)) {
    const uint32_t verdict = uv.health.active ? shm::active_state(hr, tag) : shm::kActiveUp;
    const bool held_out = verdict == shm::kActiveDown || (verdict == shm::kActiveUnknown && !uv.health.unknown_usable);
    host_event(env, slot, tag, true, err, held_out);
  }
  env.balancer->on_failure(slot, tag, weight, uv.health.max_fails);
}

void record_host_success(RelayEnv& env, uint32_t slot, uint32_t tag, uint64_t started_ms) noexcept {
  shm::HostRuntime& hr = env.seg->host(slot);
  if (!shm::passive_down(hr, tag)) return;  // the common case: nothing to bring back
  // (A host held out: rare. Its upstream's max_fails, from the table.)
  uint32_t max_fails = 1;
  const shm::Table& t = env.snap->table();
  for (const shm::HostRecord& h : t.hosts())
    if (h.slot == slot && h.tag == tag) {
      max_fails = t.upstreams()[t.pools()[h.pool].upstream].max_fails;
      break;
    }
  if (shm::record_success(hr, tag, started_ms, max_fails)) {
    shm::mark_up(hr, tag, env.now_ms);
    host_event(env, slot, tag, false, 0);
  }
}

void record_connect_success(RelayEnv& env, uint32_t slot, uint32_t tag, uint64_t start_ns, bool success,
                            bool ewma_sample) noexcept {
  const uint64_t us = (core::monotonic_ns() - start_ns) / 1000;
  if (ewma_sample) shm::record_latency(env.seg->host(slot), tag, us, env.now_ms);
  metrics::host_connected(env, slot, tag, us);
  if (success) record_host_success(env, slot, tag, start_ns / 1000000);
}

void count_no_host(RelayEnv& env, uint32_t listener, int ui, uint32_t attempts, uint64_t& last_log_ms) noexcept {
  bump(env.seg->worker(env.worker).no_host);
  metrics::listener_reject(env, listener, shm::kRejectNoHost);
  if (env.now_ms - last_log_ms >= 1000) {
    last_log_ms = env.now_ms;
    GW_LOG_WARN("upstream {}: no live host for a connection after {} attempt(s); closing it",
                ui >= 0 ? shm::name_of(env.snap->table().upstreams()[static_cast<size_t>(ui)].name) : "(none)",
                attempts);
  }
}

void count_reject(RelayEnv& env, uint32_t listener, FrameError e, int fd) noexcept {
  auto& w = env.seg->worker(env.worker);
  bump(w.frame_rejects[static_cast<size_t>(e)]);
  metrics::listener_reject(env, listener, static_cast<size_t>(e));
  if (env.last_reject_log_ms != 0 && env.now_ms - env.last_reject_log_ms < 1000) return;
  env.last_reject_log_ms = env.now_ms;
  char peer[INET6_ADDRSTRLEN + 8] = "?";
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (fd >= 0 && ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
    if (ss.ss_family == AF_INET)
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, peer, sizeof(peer));
    else if (ss.ss_family == AF_INET6)
      ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, peer, sizeof(peer));
  }
  uint64_t total = 0;
  for (size_t i = 1; i < kFrameErrorCount; ++i) total += w.frame_rejects[i].load(std::memory_order_relaxed);
  GW_LOG_WARN("frame connection from {} refused: {} (this worker has refused {} so far; logged at most once a second)",
              peer, frame_error_name(e), total);
}

void log_stream(RelayEnv& env, uint16_t listener, const core::SockAddr& peer, const core::SockAddr* host,
                uint64_t bytes_up, uint64_t bytes_down, uint64_t start_ms, std::string_view key,
                const char* reason) noexcept {
  const ListenerRuntime& l = env.listeners[listener];
  char client[64] = "", host_text[64] = "";
  auto text = [](const core::SockAddr& a, char* buf, size_t cap, bool port) -> std::string_view {
    if (a.family == 0) return {};
    char ip[INET6_ADDRSTRLEN] = "";
    ::inet_ntop(a.family == AF_INET6 ? AF_INET6 : AF_INET, a.ip, ip, sizeof(ip));
    if (!port) return std::string_view(buf, static_cast<size_t>(fmt::format_to_n(buf, cap - 1, "{}", ip).size));
    auto r = a.family == AF_INET6 ? fmt::format_to_n(buf, cap - 1, "[{}]:{}", ip, a.port)
                                  : fmt::format_to_n(buf, cap - 1, "{}:{}", ip, a.port);
    return std::string_view(buf, r.size);
  };
  StreamLogEntry e;
  e.wall_ms = core::wall_ms();
  e.client = text(peer, client, sizeof(client), false);
  e.listener = l.name;
  e.protocol = l.framer ? "frame" : "tcp";
  e.upstream_addr = host ? text(*host, host_text, sizeof(host_text), true) : std::string_view{};
  e.bytes_in = bytes_up;
  e.bytes_out = bytes_down;
  e.duration_ms = env.now_ms - start_ms;
  if (l.framer && l.key_from_frame) e.frame_key = key;
  e.reason = reason;
  env.access_log->log(static_cast<uint8_t>(l.log_file), static_cast<LogFormat>(l.log_format), e);
}

}  // namespace gw::proxy
