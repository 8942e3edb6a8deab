#pragma once
// The etcd key schema of a gw cluster. Every key starts with the configured
// prefix P (default "/gw/"); names are shm names ([A-Za-z0-9._:-], no "/").
//
//   P upstreams/U                        {}                                   U's pools and hosts come from etcd
//   P upstreams/U/pools/POOL             {"priority": 0, "method": "round_robin"}
//   P upstreams/U/pools/POOL/hosts/ID    {"address": "127.0.0.1:8081", "weight": 1, "down": false}
//
// Upstream settings (timeouts, health checks, ...) stay in each node's config:
// the upstream key only says that etcd holds that upstream's pools and hosts.
// Values are JSON objects; unknown fields are errors, missing ones take the
// defaults above. A key or value that does not parse is ignored (and logged)
// by every node alike, so all nodes still build the same table.

#include <map>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/shm/table.hpp"

namespace gw::cluster {

struct PoolSpec {
  int32_t priority = 0;
  shm::Method method = shm::Method::round_robin;
  bool operator==(const PoolSpec&) const = default;
};

struct HostSpec {
  core::SockAddr addr;
  uint32_t weight = 1;
  bool down = false;
  bool operator==(const HostSpec&) const = default;
};

enum class KeyKind { upstream, pool, host };

struct Key {
  KeyKind kind = KeyKind::upstream;
  std::string upstream, pool, host;
};

std::string upstream_key(std::string_view prefix, std::string_view u);
std::string pool_key(std::string_view prefix, std::string_view u, std::string_view p);
std::string host_key(std::string_view prefix, std::string_view u, std::string_view p, std::string_view h);
/// The key prefix of a pool's hosts ("P upstreams/U/pools/POOL/hosts/").
std::string hosts_prefix(std::string_view prefix, std::string_view u, std::string_view p);
/// The key prefix of everything under an upstream except its own key ("P upstreams/U/").
std::string upstream_children_prefix(std::string_view prefix, std::string_view u);

/// etcd's range end for "every key starting with `prefix`": the prefix with its
/// last byte incremented (trailing 0xff bytes dropped); "\0" if none is left.
std::string prefix_end(std::string_view prefix);

/// Parses a full key. Returns false with `why` for a key outside the schema.
bool parse_key(std::string_view prefix, std::string_view key, Key& out, std::string& why);

std::string encode_pool(const PoolSpec& p);
std::string encode_host(const HostSpec& h);
/// Strict JSON decoding (simdjson); false with `why` on any problem.
bool decode_pool(std::string_view json, PoolSpec& out, std::string& why);
bool decode_host(std::string_view json, HostSpec& out, std::string& why);
/// An upstream key's value: an object with no fields yet (reserved for later settings).
bool decode_upstream(std::string_view json, std::string& why);

/// What etcd holds under the prefix, parsed and checked for consistency.
struct Model {
  std::map<std::string, bool> upstreams;                                        ///< upstream name → present
  std::map<std::pair<std::string, std::string>, PoolSpec> pools;                ///< (upstream, pool)
  std::map<std::tuple<std::string, std::string, std::string>, HostSpec> hosts;  ///< (upstream, pool, host)
  /// Keys present whose value does not parse (a typo, a newer gw's field):
  /// reconcile() keeps what the node has for them rather than remove them.
  std::set<std::pair<std::string, std::string>> held_pools;
  std::set<std::tuple<std::string, std::string, std::string>> held_hosts;
  /// Upstream keys whose value does not parse: the node keeps the upstream
  /// as it has it (it is not in `upstreams`, and nothing under it is here).
  std::set<std::string> held_upstreams;
};

/// The part of `m` under upstream `u` (its key, pools, hosts, held keys):
/// reconciled alone, the other upstreams stay as the table has them.
Model only_upstream(const Model& m, const std::string& u);

/// Builds the model from raw key → value pairs (keys with the prefix). Keys
/// outside the schema, pools without their upstream key and hosts without
/// their pool key are left out; a pool or host whose value does not parse is
/// held (Model::held_*); each with a line in `warnings`.
Model build_model(std::string_view prefix, const std::map<std::string, std::string>& kv,
                  std::vector<std::string>& warnings);

}  // namespace gw::cluster
