#pragma once
// The sync process (config `cluster`): forked and respawned by the master like
// the checker. It mirrors what etcd holds under the prefix into the local
// routing table, through the one writer path gwctl uses (so every change is
// persisted to the state file and becomes events):
//
//   list the prefix at revision R  ─► seed upstreams etcd lacks (from this node's table)
//   reconcile the table to it      ─► one commit
//   watch from R+1 ─► each batch of events ─► update the mirror ─► reconcile, one commit
//   stream broken  ─► next member, watch from the last applied revision + 1
//   compacted      ─► list again (a full reconcile: adds, removes, changes)
//   every member down ─► state "disconnected" in shm, keep the table, retry
//                         with backoff (100 ms doubling up to reconnect_max_ms)
//
// The state (synced at revision R / disconnected since T) is kept in
// SegmentHeader::cluster for `gwctl status`.

#include "gw/config/config.hpp"
#include "gw/shm/segment.hpp"

namespace gw::process {

/// Runs the sync process until SIGTERM/SIGINT/SIGQUIT; returns its exit code.
/// Call in the forked child only.
int run_sync(const config::Config& cfg, const shm::Segment& seg);

}  // namespace gw::process
