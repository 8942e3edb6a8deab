#pragma once
// What the data plane counts for the admin server's GET /metrics: small
// inline helpers, each called from one line of the relay, the frame
// multiplexer, the HTTP proxy or the worker.
//
// Every helper updates a row of a stats matrix in shm (HostStats,
// ListenerStats, RuleStats; see include/gw/shm/segment.hpp) that only this
// worker writes (row env.worker): a relaxed load and a relaxed store, never a
// locked instruction, no allocation, no system call. A row whose tag is not
// the host's (rule's) belongs to an earlier owner of the slot and is zeroed
// first, as shm::counter_open does for HostCounter.
//
// Worker thread only; noexcept.

#include <atomic>
#include <cstdint>
#include <string_view>

#include "gw/core/clock.hpp"
#include "gw/proxy/tcp_relay.hpp"
#include "gw/shm/segment.hpp"

namespace gw::proxy::metrics {

namespace detail {

inline void add(std::atomic<uint64_t>& c, uint64_t n = 1) noexcept {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

/// The row of this worker for listener `l`, or null (no row: a segment with
/// fewer stats rows than workers, or an index past the listeners).
inline shm::ListenerStats* listener_row(const RelayEnv& env, uint32_t l) noexcept {
  if (env.worker >= env.seg->stat_workers() || l >= env.listeners.size()) return nullptr;
  const uint32_t row = env.listeners[l].stats_row;
  return row < shm::kMaxListeners ? &env.seg->listener_stats(env.worker, row) : nullptr;
}

inline void zero(shm::LatencyHistogram& h) noexcept {
  for (auto& b : h.buckets) b.store(0, std::memory_order_relaxed);
  h.sum_us.store(0, std::memory_order_relaxed);
}

/// This worker's row for host (slot, tag), taken over from an earlier owner if
/// needed. A connection or request may outlive its host's hold on the slot (a
/// host removed while a request was in flight, its slot given to a new host):
/// what it counts then (a connect, a response, bytes) is dropped rather than
/// take the row from the slot's new host, whose counters would go back to 0.
/// (The writer resets the slot's HostRuntime to the new tag before it
/// publishes the new host.)
inline shm::HostStats* host_row(const RelayEnv& env, uint32_t slot, uint32_t tag) noexcept {
  if (tag == 0 || env.worker >= env.seg->stat_workers() || slot >= env.seg->caps().max_hosts) return nullptr;
  shm::HostStats& s = env.seg->host_stats(env.worker, slot);
  if (s.tag.load(std::memory_order_relaxed) != tag) {
    if (env.seg->host(slot).tag.load(std::memory_order_relaxed) != tag) return nullptr;
    for (auto& r : s.responses) r.store(0, std::memory_order_relaxed);
    s.status_failures.store(0, std::memory_order_relaxed);
    zero(s.connect);
    zero(s.response);
    s.sent_bytes.store(0, std::memory_order_relaxed);
    s.received_bytes.store(0, std::memory_order_relaxed);
    s.tag.store(tag, std::memory_order_relaxed);
  }
  return &s;
}

/// Counts one sample in its bucket (le is inclusive, as Prometheus says).
inline void observe(shm::LatencyHistogram& h, uint64_t us) noexcept {
  size_t i = 0;
  while (i < shm::kLatencyBuckets && us > shm::kLatencyBoundsUs[i]) ++i;
  add(h.buckets[i]);
  add(h.sum_us, us);
}

}  // namespace detail

/// A connection was accepted on listener `listener` and is now open: counted
/// in the listener's row and in the worker's totals (WorkerRuntime
/// connections and accepted, which every proxy of the worker shares).
inline void listener_open(RelayEnv& env, uint32_t listener) noexcept {
  auto& w = env.seg->worker(env.worker);
  detail::add(w.connections);
  detail::add(w.accepted);
  if (shm::ListenerStats* s = detail::listener_row(env, listener)) {
    detail::add(s->accepted);
    detail::add(s->active);
  }
}

/// A connection of listener `listener` accepted and refused at once (never
/// open): counted accepted, as listener_open() counts, but not active.
inline void listener_accepted_refused(RelayEnv& env, uint32_t listener) noexcept {
  detail::add(env.seg->worker(env.worker).accepted);
  if (shm::ListenerStats* s = detail::listener_row(env, listener)) detail::add(s->accepted);
}

/// A connection of listener `listener` that listener_open() counted is closed.
inline void listener_close(RelayEnv& env, uint32_t listener) noexcept {
  auto& c = env.seg->worker(env.worker).connections;
  const uint64_t n = c.load(std::memory_order_relaxed);
  c.store(n ? n - 1 : 0, std::memory_order_relaxed);
  if (shm::ListenerStats* s = detail::listener_row(env, listener)) {
    const uint64_t a = s->active.load(std::memory_order_relaxed);
    s->active.store(a ? a - 1 : 0, std::memory_order_relaxed);
  }
}

/// A connection of listener `listener` was refused or closed unserved;
/// `reason` is a proxy::FrameError value (1..23), shm::kRejectNoHost,
/// shm::kRejectNoSlot or shm::kRejectLimitConn.
inline void listener_reject(RelayEnv& env, uint32_t listener, size_t reason) noexcept {
  shm::ListenerStats* s = detail::listener_row(env, listener);
  if (s && reason < shm::kListenerRejectKinds) detail::add(s->rejects[reason]);
}

/// An http listener parsed a request head.
inline void http_request(RelayEnv& env, uint32_t listener) noexcept {
  if (shm::ListenerStats* s = detail::listener_row(env, listener)) detail::add(s->http_requests);
}

/// An http listener answered a request itself (an error page) with `status`.
inline void http_error(RelayEnv& env, uint32_t listener, int status) noexcept {
  if (shm::ListenerStats* s = detail::listener_row(env, listener))
    detail::add(s->http_errors[shm::http_code_index(status)]);
}

/// A gray-release rule matched a request. `rule_id` is the rule's id as the
/// HTTP proxy holds it: a view of RuleRecord::id in the worker's snapshot
/// table, which locates the record (a view from anywhere else counts nothing).
inline void rule_hit(RelayEnv& env, std::string_view rule_id) noexcept {
  if (env.worker >= env.seg->stat_workers()) return;
  auto rules = env.snap->table().rules();
  const auto base = reinterpret_cast<uintptr_t>(rules.data());
  const auto p = reinterpret_cast<uintptr_t>(rule_id.data());
  if (p < base || p >= base + rules.size_bytes()) return;
  const shm::RuleRecord& r = rules[(p - base) / sizeof(shm::RuleRecord)];
  if (reinterpret_cast<uintptr_t>(r.id) != p || r.stat_tag == 0 || r.stat_slot >= env.seg->caps().max_rules) return;
  shm::RuleStats& s = env.seg->rule_stats(env.worker, r.stat_slot);
  if (s.tag.load(std::memory_order_relaxed) != r.stat_tag) {
    s.hits.store(0, std::memory_order_relaxed);
    s.tag.store(r.stat_tag, std::memory_order_relaxed);
  }
  detail::add(s.hits);
}

/// A connect to host (slot, tag) succeeded after `us` microseconds (every listener kind).
inline void host_connected(RelayEnv& env, uint32_t slot, uint32_t tag, uint64_t us) noexcept {
  if (shm::HostStats* s = detail::host_row(env, slot, tag)) detail::observe(s->connect, us);
}

/// An http host answered with a response head of `status`; the attempt
/// (connect included, for a new connection) began at monotonic `start_ns`.
inline void host_response(RelayEnv& env, uint32_t slot, uint32_t tag, int status, uint64_t start_ns,
                          uint64_t now_ns) noexcept {
  shm::HostStats* s = detail::host_row(env, slot, tag);
  if (!s) return;
  if (status >= 100 && status < 600) detail::add(s->responses[status / 100 - 1]);
  if (start_ns != 0 && now_ns >= start_ns) detail::observe(s->response, (now_ns - start_ns) / 1000);
}

/// A 5xx answer of the host, listed in retry.on, counted as a passive failure
/// of the host as well (so that an error rate counts it once).
inline void host_status_failure(RelayEnv& env, uint32_t slot, uint32_t tag) noexcept {
  if (shm::HostStats* s = detail::host_row(env, slot, tag)) detail::add(s->status_failures);
}

// Byte counters. Each read or write adds its bytes at once (no batching in the
// session): a relaxed load and store on this worker's own row, so a
// long-lived tunnel's counters move as its bytes do and nothing is left to
// flush at close.

/// `n` bytes read from a client of listener `listener`.
inline void client_received(RelayEnv& env, uint32_t listener, uint64_t n) noexcept {
  if (shm::ListenerStats* s = detail::listener_row(env, listener)) detail::add(s->received_bytes, n);
}

/// `n` bytes written to a client of listener `listener`.
inline void client_sent(RelayEnv& env, uint32_t listener, uint64_t n) noexcept {
  if (shm::ListenerStats* s = detail::listener_row(env, listener)) detail::add(s->sent_bytes, n);
}

/// `n` bytes written to host (slot, tag).
inline void host_sent(RelayEnv& env, uint32_t slot, uint32_t tag, uint64_t n) noexcept {
  if (shm::HostStats* s = detail::host_row(env, slot, tag)) detail::add(s->sent_bytes, n);
}

/// `n` bytes read from host (slot, tag).
inline void host_received(RelayEnv& env, uint32_t slot, uint32_t tag, uint64_t n) noexcept {
  if (shm::HostStats* s = detail::host_row(env, slot, tag)) detail::add(s->received_bytes, n);
}

/// L4 relays: `n` bytes read from the client (`from_client`) or from the host of session `r`.
inline void stream_read(RelayEnv& env, const StreamRoute& r, bool from_client, uint64_t n) noexcept {
  if (from_client) client_received(env, r.listener, n);
  else host_received(env, r.host_slot, r.host_tag, n);
}

/// L4 relays: `n` bytes written to the host (`to_host`) or to the client of session `r`.
inline void stream_written(RelayEnv& env, const StreamRoute& r, bool to_host, uint64_t n) noexcept {
  if (to_host) host_sent(env, r.host_slot, r.host_tag, n);
  else client_sent(env, r.listener, n);
}

}  // namespace gw::proxy::metrics
