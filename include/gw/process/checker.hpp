#pragma once
// The checker process: active health checks (TCP connect, or an HTTP GET with
// an expected status class) once per host for the whole gateway, not once per
// worker. Its verdicts go into shm (HostRuntime::active), where every worker's
// balancer sees them; each change becomes a `health up|down` event.
//
// A host not checked yet is `unknown` (usable or not, per the upstream's
// `health.unknown`); its first check decides up or down; after that `rise`
// consecutive passes bring it up and `fall` consecutive failures take it down.
// A newly added host (a new slot tag) is checked at once. The admin state is
// separate: a passing check never brings back a host that `gwctl down` took out.

#include <string>

#include "gw/config/config.hpp"
#include "gw/core/address.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::process {

/// Runs the checker until SIGTERM/SIGINT/SIGQUIT; returns its exit code. Call in
/// the forked child only.
int run_checker(const config::Config& cfg, const shm::Segment& seg);

/// The state machine of one host, separated from the I/O for unit tests.
struct CheckRuns {
  uint32_t passes = 0;
  uint32_t failures = 0;
  /// Applies one result; returns the verdict (kActiveUp/kActiveDown) or the
  /// current one if unchanged. `current` is the verdict before this result.
  uint32_t apply(bool ok, uint32_t current, uint32_t rise, uint32_t fall) noexcept;
};

/// The request of an http check of the host at `addr`: GET check.path, with
/// check.host as the Host header, or the host's address (ip:port, [ip6]:port)
/// when check.host is empty.
std::string http_check_request(const shm::HealthCheck& check, const core::SockAddr& addr);

}  // namespace gw::process
