#pragma once
// Makes a routing table hold exactly what etcd holds: the one place where the
// etcd model turns into shm table changes, used for the first list, every
// watch batch and every re-list after compaction, always as one commit.

#include <string>
#include <vector>

#include "gw/cluster/schema.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::cluster {

/// Rewrites, in `t`, the pools and hosts of every upstream of `t` that `m` has
/// an upstream key for, so that they are exactly the model's: pools ordered by
/// id, hosts by id within their pool. Upstreams `m` does not name keep theirs;
/// upstream records (settings from the node's config) are never touched. A host
/// that keeps its pool, id and address keeps its runtime slot (counters,
/// health); one whose address changed gets a new slot. Appends one event text
/// per logical change (host_added, host_removed, host_changed, host_down,
/// host_up, pool_changed), in the format gwctl's events use, one warning per
/// model upstream this node's config does not have, and one per chash pool of
/// a model upstream whose hosts' weights, as applied, sum past the ring's bound
/// ("pool U/P: " and balance::chash_bound_warning's text, as gwctl prints it).
/// The warnings describe the state: they come also when nothing changes (the
/// caller says each once while it holds). Returns false (and leaves `t`
/// untouched) if nothing would change. Throws shm::TableError if the result
/// does not fit the table's capacities. With `seg` (the segment whose runtime
/// state `t`'s hosts use), an admin change of a host its active checks hold
/// down is admin_down / admin_up instead, as gwctl's (it moves no traffic, and
/// runs no hook).
bool reconcile(shm::Table& t, const Model& m, std::vector<std::string>& events, std::vector<std::string>& warnings,
               const shm::Segment* seg = nullptr);

}  // namespace gw::cluster
