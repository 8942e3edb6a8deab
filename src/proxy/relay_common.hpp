#pragma once
// What the L4 relay and the per-frame multiplexer share: host choice with the
// relay's eligibility rules, connect outcomes recorded in shm (passive health,
// latency, events), and frame-reject accounting. Worker thread only; noexcept.

#include <cstdint>
#include <span>
#include <string_view>

#include "gw/balance/hash.hpp"
#include "gw/net/socket.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/tcp_relay.hpp"
#include "gw/shm/runtime.hpp"

namespace gw::proxy {

/// Picks a host of upstream `ui` for `key`, skipping hosts whose slots are in
/// `tried`. Applies admin state, health and slow start (which lowers a host's
/// share but never refuses the only usable host). Returns a host index into
/// the snapshot's table, or -1. Counts a hash fallback when `first` is set.
/// `claim` takes a down host's trial (shm::claim_trial; tests put a race in).
using ClaimTrial = shm::Trial (*)(shm::HostRuntime&, uint32_t, shm::HealthPolicy, uint64_t) noexcept;
int pick_host(RelayEnv& env, int ui, balance::HashKey key, std::span<const uint32_t> tried, balance::Rng& rng,
              bool first, ClaimTrial claim = shm::claim_trial) noexcept;
inline int pick_host(RelayEnv& env, int ui, std::string_view key, std::span<const uint32_t> tried, balance::Rng& rng,
                     bool first) noexcept {
  return pick_host(env, ui, balance::HashKey::of(key), tried, rng, first);
}

/// Whether upstream `ui` has a host pick_host() could still choose: one not
/// in `tried`, admin up, not drained (weight 0), and usable as passive and
/// active health say. It claims no trial and moves no balancer state: a
/// status answer listed in retry.on asks it before giving the answer up for
/// another try (when it is the last, the host's own answer goes on, as nginx
/// passes its last try on).
bool host_left(const RelayEnv& env, int ui, std::span<const uint32_t> tried) noexcept;

/// Errors that say something about the backend or the path to it (the
/// others must not take a healthy host out for every worker).
using net::peer_error;

/// Session::attempts after a local error (see peer_error): no host is tried
/// again, and the connection is closed as `local_error`, not `no_host`.
inline constexpr uint8_t kAttemptsLocalError = 0xff;

/// How long a session whose upstream socket() found no free descriptor waits
/// before it tries again (the worker's accept pause is as long).
inline constexpr uint64_t kFdWaitMs = 100;

/// socket() for an upstream failed with `err`. If that is a shortage of
/// descriptors (EMFILE, ENFILE: the open-files limit, lowered while gw runs or
/// used by something else), nothing is wrong with the host and the client
/// need not be dropped: the worker is told to pause accepting, and the result
/// says whether the session may wait and try again (until `limit_ms` after
/// its first wait, kept in `wait_until_ms`; 0 = not waiting yet).
bool wait_for_fd(RelayEnv& env, int err, uint64_t& wait_until_ms, uint64_t limit_ms) noexcept;

/// A connect to host (slot, tag) failed with a peer error: passive health,
/// the balancer's effective weight, and a host_down event if this took it down.
void record_connect_failure(RelayEnv& env, int ui, uint32_t slot, uint32_t tag, uint32_t weight, int err) noexcept;
/// A connect succeeded after `start_ns`: latency sample, and host_up if it was down.
/// A connect to the host succeeded: its latency sample and metrics, and (with
/// `success`, the L4 and frame relays, for which the connect is the outcome)
/// a success for passive health. The HTTP proxy passes false and counts a
/// success at the response (a host that accepts and never answers is not a
/// healthy one). `ewma_sample`: the connect time feeds the host's latency
/// EWMA (the HTTP proxy feeds it the time to each response head instead).
void record_connect_success(RelayEnv& env, uint32_t slot, uint32_t tag, uint64_t start_ns, bool success = true,
                            bool ewma_sample = true) noexcept;
/// A success for passive health (a down host's trial succeeded: it comes back).
void record_host_success(RelayEnv& env, uint32_t slot, uint32_t tag, uint64_t started_ms) noexcept;

/// Counts a connection of listener `listener` no pool could take (and logs
/// it, at most once a second).
void count_no_host(RelayEnv& env, uint32_t listener, int ui, uint32_t attempts, uint64_t& last_log_ms) noexcept;

/// Whether a pool of upstream `ui` hashes the routing key (so a client's
/// address must be formatted as text for it).
bool upstream_uses_key(const RelayEnv& env, int ui) noexcept;

/// Binds `r` to the next host of upstream `ui` (the snapshot's `uv`) that it
/// has not tried: records the try, counts the session active on the host and
/// starts the connect clock. nullptr when the tries are used up or no host is
/// usable.
const shm::HostRecord* bind_next_host(RelayEnv& env, StreamRoute& r, int ui, const balance::UpstreamView& uv,
                                      balance::Rng& rng) noexcept;
/// Undoes bind_next_host's count on the host (no-op when not bound).
/// `reached`: false for a connection that never got to the host (no
/// descriptor, port or memory for it): its counter_open is taken back whole.
void unbind_host(RelayEnv& env, StreamRoute& r, bool reached = true) noexcept;
/// socket() for the bound host failed with `err`. If that was a shortage of
/// descriptors the session may wait out (wait_for_fd), the try is given back,
/// the host unbound and fd_wait set: the caller arms a kFdWaitMs timer and
/// returns. Else false, and the caller goes on to connect_failed.
bool start_fd_wait(RelayEnv& env, StreamRoute& r, int err, uint32_t connect_timeout_ms) noexcept;
/// The connect to the bound host failed with `err`: passive health for a
/// peer error (record_connect_failure); a local error ends the tries
/// (kAttemptsLocalError) and is logged at most once a second (`last_log_ms`).
/// Unbinds either way.
void connect_failed(RelayEnv& env, StreamRoute& r, int err, uint64_t& last_log_ms) noexcept;
/// No host took the session (connect_next ran out): counted as a no_slot
/// reject after a local error, else as no_host (count_no_host); sets r.end.
/// The caller closes the session.
void count_unrouted(RelayEnv& env, StreamRoute& r, int ui, uint64_t& last_no_host_log_ms) noexcept;
/// Whether an on_host_remove "close" listener's relayed session `r` lost its
/// host (removed, down, or the slot reused).
bool route_orphaned(const RelayEnv& env, const StreamRoute& r) noexcept;
/// Counts and logs the sessions close_orphans() closed (`what` names them).
void count_orphans(RelayEnv& env, uint64_t closed, std::string_view what) noexcept;

/// Counts a refused frame connection of listener `listener` by reason, and
/// logs it at most once a second per worker (env.last_reject_log_ms, shared
/// by the relay and FrameMux), with how many this worker has refused so far.
void count_reject(RelayEnv& env, uint32_t listener, FrameError e, int fd) noexcept;

/// A whole-frame buffer of listener `l`, or nullptr when the listener has
/// none or its max_frame_buffers are all in use in this worker (or on OOM).
inline char* acquire_frame_buffer(const ListenerRuntime& l) noexcept {
  if (!l.frame_buffers || l.frame_buffers->in_use() >= l.max_frame_buffers) return nullptr;
  return l.frame_buffers->acquire();
}

/// Writes a stream (tcp/frame) access-log line for a connection of listener
/// `listener` that ends now: `host` is the connected host (null: none), `key`
/// the routing key (logged for frame listeners that hash it).
void log_stream(RelayEnv& env, uint16_t listener, const core::SockAddr& peer, const core::SockAddr* host,
                uint64_t bytes_up, uint64_t bytes_down, uint64_t start_ms, std::string_view key,
                const char* reason) noexcept;

/// Increments a per-worker shm counter (single writer: relaxed load + store).
inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) noexcept {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace gw::proxy
