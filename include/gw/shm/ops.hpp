#pragma once
// The changes an operator makes to a running gateway's table, shared by gwctl
// and the admin API: one function per verb, each a Writer commit with the same
// validation, the same event lines and the same messages, whoever calls it.
//
// Errors are TableError with a kind (not_found, exists, not_empty, full,
// invalid, refused) and gwctl's one-line message. Boundary code: allocates
// and throws; any process that maps the segment may call it (the writer lock
// orders them).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "gw/core/address.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::shm::ops {

/// What a verb did: "add host app/primary/c 127.0.0.1:8083 weight=1" and the
/// generation it made. changed = false: nothing to do (a host already down),
/// `what` says so and `generation` is the current one.
struct Result {
  uint64_t generation = 0;
  std::string what;
  bool changed = true;
  /// Not an error: what the change left that an operator should know (a
  /// chash pool past the ring's bound, whose keys no longer map as nginx's).
  std::string warning;
};

/// Lookups with gwctl's messages; throw TableError (not_found).
int find_upstream(const Table& t, const std::string& u);
int find_pool(const Table& t, const std::string& u, const std::string& p);
int find_host(const Table& t, const std::string& u, const std::string& p, const std::string& h);
int find_route(const Table& t, const std::string& l, const std::string& r);
int find_rule(const Table& t, const std::string& l, const std::string& r, const std::string& id);

/// Throws TableError (refused) when the gateway takes its pools and hosts
/// from etcd: a local change would be undone by the next etcd change.
void check_not_clustered(const Segment& seg);

// Pools and hosts (refused on a clustered gateway).
/// `down`: the host is added admin down (in the same commit: no request
/// reaches it before it is marked).
Result add_host(const Segment& seg, const std::string& u, const std::string& p, const std::string& id,
                const core::SockAddr& addr, uint32_t weight, bool down = false);
Result remove_host(const Segment& seg, const std::string& u, const std::string& p, const std::string& id);
/// `origin` names who asked, for the event: "(admin: gwctl down)".
Result set_host_down(const Segment& seg, const std::string& u, const std::string& p, const std::string& id, bool down,
                     std::string_view origin);
/// A new weight (0..kMaxWeight; 0 takes no new connections, as in the config)
/// and/or admin state, in one commit, live: the balancers rebuild from the next
/// table generation. What is already so is an "already" answer (changed false).
Result set_host(const Segment& seg, const std::string& u, const std::string& p, const std::string& id,
                std::optional<uint32_t> weight, std::optional<bool> down, std::string_view origin);
Result add_pool(const Segment& seg, const std::string& u, const std::string& p, int32_t priority, Method method);
Result remove_pool(const Segment& seg, const std::string& u, const std::string& p);
/// At least one of priority and method. What is already so is an "already"
/// answer (changed false; no generation, no event).
Result set_pool(const Segment& seg, const std::string& u, const std::string& p, std::optional<int32_t> priority,
                std::optional<Method> method);

// Rules (kept per node: allowed on a clustered gateway too). spec.id names the rule.
Result add_rule(const Segment& seg, const std::string& l, const std::string& r, const RuleSpec& spec);
Result set_rule(const Segment& seg, const std::string& l, const std::string& r, const RuleSpec& spec);
Result remove_rule(const Segment& seg, const std::string& l, const std::string& r, const std::string& id);

// key-auth consumers (kept per node, like rules). Only the key's SHA-256 is stored.
Result add_consumer(const Segment& seg, const std::string& name, const uint8_t (&key_sha256)[kSha256Len]);
Result remove_consumer(const Segment& seg, const std::string& name);

}  // namespace gw::shm::ops
