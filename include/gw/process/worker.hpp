#pragma once
// A worker process: one single-threaded epoll reactor serving its slot's
// listening sockets (inherited from the master). It reads the routing table
// from shm (one acquire load per new connection to see a change), relays
// connections, and stops on SIGTERM (drain for shutdown_timeout_ms), SIGWINCH
// (a reload retires it: drain for worker_shutdown_timeout_ms) or SIGINT/SIGQUIT
// (at once). `slot` given to run_worker is its row in the shm segment (the
// master assigns rows; after a reload they differ from the socket slots).

#include <cstdint>
#include <vector>

#include "gw/config/config.hpp"
#include "gw/shm/segment.hpp"

namespace gw::process {

/// Runs worker `slot` until it stops; returns its exit code. `listen_fds[i]` is
/// the socket of the master's socket slot `index` for cfg.listeners[i]. Call
/// in the forked child only.
int run_worker(const config::Config& cfg, const shm::Segment& seg, uint32_t slot, uint32_t index,
               const std::vector<int>& listen_fds);

/// The worker's end of its access-log socket (the master sets it in the
/// forked child before run_worker; -1 = no access logs).
void set_access_log_fd(int fd) noexcept;

}  // namespace gw::process
