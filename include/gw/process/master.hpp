#pragma once
// The master process: prepares the shm segment (create, or adopt and merge with
// the state file), creates one SO_REUSEPORT socket per worker slot and
// listener, forks the workers, respawns any that dies, logs events, and handles
// signals (SIGTERM drain, SIGINT/SIGQUIT fast stop, SIGHUP reload, SIGUSR1
// reopen logs).

#include <sys/types.h>

#include <string>
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
shm::Segment prepare_segment(const config::Config& cfg, pid_t upgrade_from = 0);

/// Rows of the stats matrices a segment gets for `workers` workers: two
/// generations (the running one and the one a reload starts) side by side.
uint32_t stat_rows_for(int workers) noexcept;

/// Runs the master until it stops; returns the process exit code. `argv`: the
/// command line gwd was started with, executed again on SIGUSR2 (binary
/// upgrade). A master started that way finds what it inherits in the
/// environment variable GW_UPGRADE.
int run_master(const config::Config& cfg, const std::vector<std::string>& argv);

}  // namespace gw::process
