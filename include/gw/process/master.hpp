#pragma once
// The master process: prepares the shm segment (create, or adopt and merge with
// the state file), creates one SO_REUSEPORT socket per worker slot and
// listener, forks the workers, respawns any that dies, logs events, and handles
// signals (SIGTERM drain, SIGINT/SIGQUIT fast stop, SIGHUP reload, SIGUSR1
// reopen logs).

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gw/config/config.hpp"
#include "gw/shm/segment.hpp"

namespace gw::process {

/// Creates or adopts the segment named in the config and publishes the merged
/// table (config + the newest of segment and state file). Throws with a message
/// for the operator. Used by the master at start-up; testable on its own.
/// `upgrade_from`: the pid of the master this one replaces (a binary upgrade,
/// SIGUSR2): its segment is adopted as it is (never recreated) and the rows of
/// its running workers are left alone.
/// When each ListenerStats row is free again (monotonic ms): see publish_listeners().
using ListenerRowTimes = std::array<uint64_t, shm::kMaxListeners>;

/// It also gives each listener its stats row (publish_listeners(); `cfg` is
/// updated), and `row_free_at`, if given, receives the rows' times.
/// `old_rows`: a binary upgrade's old master's worker rows (left alone too,
/// pid or not: one whose worker is in its respawn back-off names none).
shm::Segment prepare_segment(config::Config& cfg, pid_t upgrade_from = 0, ListenerRowTimes* row_free_at = nullptr,
                             const std::vector<uint32_t>& old_rows = {});

/// What `gwd -t` checks of the runtime state a start would take: reads the
/// state file (if there is one) and the shm segment (if there is one), and
/// merges the newer with the config as prepare_segment() would. Throws with a
/// message for the operator that names the file or the segment. Reads only:
/// the file and any shm segment stay as they are.
/// Returns what of the config that runtime state overrides or drops (the
/// warnings a start would log: config edits a restart or reload would not apply),
/// and, with a gwd running on the segment, why its reload would refuse the
/// config (a change only a restart makes).
std::vector<std::string> check_runtime_state(const config::Config& cfg);

/// Gives each listener of `cfg` its row of the ListenerStats matrix
/// (cfg.listeners[i].stats_row) and publishes the listeners' names, addresses
/// and rows in the segment header. `keep`: the header lists the listeners of a
/// running config (a reload, a binary upgrade): a listener of the same name
/// keeps its row, so its counters go on; a new one takes a cleared row that no
/// running worker counts in, preferring rows whose `free_at` has passed
/// (`now_ms`). The rows the running config gives up get `old_gone_ms`.
void publish_listeners(const shm::Segment& seg, config::Config& cfg, bool keep, ListenerRowTimes& free_at,
                       uint64_t now_ms, uint64_t old_gone_ms);
/// Writes the listeners of `cfg`, with the rows they have, into the header.
void write_listener_header(shm::SegmentHeader& hdr, const config::Config& cfg);

/// Did a child started at `started_ms` die right after its start (under 1 s)
/// at `now_ms`? Such deaths, in a row, delay its respawn (no fork loop).
/// `now_ms` can be older than the start: the master reads its clock once per
/// signal, and may reap in the same round a child it forked after reading it
/// (an unsigned difference then wrapped, and the death counted as one of a
/// long-lived child, restarting the count).
constexpr bool died_at_start(uint64_t now_ms, uint64_t started_ms) noexcept {
  return now_ms < started_ms || now_ms - started_ms < 1000;
}

/// Rows of the stats matrices a segment gets for `workers` workers: two
/// generations (the running one and the one a reload starts) side by side.
uint32_t stat_rows_for(int workers) noexcept;

/// Runs the master until it stops; returns the process exit code. `argv`: the
/// command line gwd was started with, executed again on SIGUSR2 (binary
/// upgrade). A master started that way finds what it inherits in the
/// environment variable GW_UPGRADE.
int run_master(const config::Config& cfg, const std::vector<std::string>& argv);

/// A master started by a binary upgrade, before it serves: also writes `line`
/// to the old master, which quotes it in its log's "binary upgrade failed"
/// (the new master's stderr is not the old one's log_file). Otherwise nothing.
void tell_old_master(std::string_view line);

}  // namespace gw::process
