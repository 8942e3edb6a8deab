#pragma once
// The gateway's state as JSON: what `gwctl status --json` prints and the admin
// server's GET /status answers (one function, so the two never differ), the
// parts of it that the admin API's GET endpoints answer, and the event ring.
//
// Boundary code (gwctl, the admin process): allocates and may throw.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::admin {

/// A JSON string's contents: quotes, backslashes and control characters escaped.
std::string json_escape(std::string_view s);
/// "2026-11-21T23:40:00.123Z"; "" for 0.
std::string iso_time(uint64_t wall_ms);

/// The etcd sync state, read once.
struct ClusterView {
  bool on = false;
  uint32_t state = 0;
  uint64_t revision = 0, since_ms = 0, contact_ms = 0, reconnects = 0, relists = 0, applied = 0;
  int sync_pid = 0;
  shm::ClusterText text{};
};
ClusterView cluster_view(const shm::Segment& seg);
/// null, or the "cluster" object of the status.
std::string cluster_json(const ClusterView& v);
/// The `cluster:` line of `gwctl status`.
std::string cluster_line(const ClusterView& v);

/// "up", "down" (admin state aside: passive health or the checker keep it
/// out) or "unknown" (active checks have not decided yet).
const char* host_health(const shm::Segment& seg, const shm::Table& t, const shm::HostRecord& h);
/// Whether the balancer may use the host now: admin up, and not out on
/// passive or active health (a host its checks have not judged yet counts
/// when its upstream's check.unknown_usable says so).
bool host_usable(const shm::Segment& seg, const shm::Table& t, const shm::HostRecord& h);

/// A listener of the running master (the segment's header lists them) and
/// the sums of its ListenerStats rows over the workers.
struct ListenerView {
  std::string name;
  core::SockAddr addr;
  shm::ListenerTotals totals;
};
/// The running master's listeners, in the header's order: the status
/// document's "listeners" and gwctl status's LISTENER table. None when no
/// master runs (the rows of a stopped gateway are not counted on), or while
/// its list stays mid-write (see shm::read_listeners).
std::vector<ListenerView> listener_views(const shm::Segment& seg);

/// A byte count for people, in binary units with one decimal: "0 B",
/// "1023 B", "1.0 KiB", "1.5 MiB", up to "16.0 EiB" (rounded half up, to the
/// next unit when it rounds to 1024). At most 10 characters ("1023.9 KiB").
/// The exact counts are in the status document.
std::string byte_size(uint64_t bytes);

/// The whole status document (gwctl status --json, GET /status), one line.
std::string status_json(const shm::Segment& seg);
/// Reads the published table into `t` and returns status_json's document for it.
std::string status_json(const shm::Segment& seg, const shm::Table& t);

/// Parts of the status document, for the admin API's GET endpoints. `live`:
/// the master runs; when it does not, no connection is open, whatever the
/// counters of workers killed with it still say ("active" is 0).
std::string host_json(const shm::Segment& seg, const shm::Table& t, int host, bool live = true);
std::string pool_json(const shm::Segment& seg, const shm::Table& t, int pool, bool live = true);
std::string upstream_json(const shm::Segment& seg, const shm::Table& t, int upstream, bool live = true);
std::string rule_json(const shm::Segment& seg, const shm::Table& t, int rule);
/// {"listener", "route", "rules": [...]}.
std::string route_json(const shm::Segment& seg, const shm::Table& t, int route);

/// The event ring from sequence number `since` on, at most `limit` events:
/// {"head": H, "next": N, "lost": L, "events": [{"seq", "time", "generation",
/// "pid", "kind", "text"}]}. `next` is the `since` of the following call;
/// `lost` counts events the ring overwrote before they could be read.
std::string events_json(const shm::Segment& seg, uint64_t since, uint32_t limit);

}  // namespace gw::admin
