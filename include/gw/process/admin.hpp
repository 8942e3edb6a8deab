#pragma once
// The admin server process (config `admin`): forked and respawned by the
// master like the checker and the sync process, on a listening socket the
// master made (so a respawned server keeps its accept queue and a taken port
// stops gwd at start). One thread, one poll loop, a small HTTP/1.1 server on
// gw's own parser (include/gw/http/parser.hpp):
//
//   accept ─► read ─► parse head (limits: 4 KiB line, 8 KiB head, 64 fields)
//          ─► body (Content-Length or chunked, at most 64 KiB: else 413)
//          ─► admin::Api::handle() ─► write ─► next request (keep-alive,
//             pipelining, at most 1000 per connection) or close
//
// A bad or slow client costs one of 128 connection slots until admin.timeout_ms
// runs out (the whole head, each body read, each write, keep-alive idle); when
// every slot is taken, a new connection evicts the one whose deadline is
// nearest. Nothing here touches the data plane: the admin server reads shm
// and writes through the shm writer, as gwctl does.

#include "gw/config/config.hpp"
#include "gw/shm/segment.hpp"

namespace gw::process {

/// Runs the admin server on `listen_fd` (a non-blocking listening socket)
/// until SIGTERM/SIGINT/SIGQUIT; returns its exit code. Forked child only.
int run_admin(const config::Config& cfg, const shm::Segment& seg, int listen_fd);

}  // namespace gw::process
