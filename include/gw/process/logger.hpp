#pragma once
// The logger process: writes the workers' access-log lines to their files.
// Each worker sends chunks of whole lines over its own SOCK_SEQPACKET socket
// (the first byte of a chunk is the file index); the logger writes each chunk
// with one write(2), so lines never interleave. SIGUSR1 reopens the files
// and the error log (logrotate). It exits once every worker end is closed (the gateway
// stopped), or at once on SIGQUIT. Forked and respawned by the master.

#include <string>
#include <vector>

namespace gw::process {

/// `socks`: the logger's ends, one per worker slot; `paths`: the files, by
/// index; `log_file`: the error log to reopen on SIGUSR1 ("" = stderr).
int run_logger(const std::vector<int>& socks, const std::vector<std::string>& paths, const std::string& log_file);

/// Opens (creating, appending) an access-log file; returns the fd, or -1 for
/// a FIFO that no process reads yet (never waits for one), or throws
/// std::runtime_error naming the path (the master checks them at start).
int open_access_log(const std::string& path);

}  // namespace gw::process
