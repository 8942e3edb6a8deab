#pragma once
// The state file: every committed table, written atomically (temp file, fsync,
// rename, fsync of the directory) before it is published, so that a change
// gwctl reported as done survives a restart of gwd or of the machine.
//
// Format (JSON):
//   {"gw_state": 1, "generation": 12, "updated": "2026-11-21T23:40:00.123Z",
//    "upstreams": [{"name": "app", "pools": [{"id": "primary", "priority": 0,
//        "method": "round_robin", "hosts": [{"id": "a", "address": "127.0.0.1:8081",
//        "weight": 1, "down": false}]}]}]}
//    "routes": [{"listener": "web", "route": "v1", "rules": [{"id": "canary",
//        "upstream": "pre", "ip": ["127.0.0.2/32"], "header": {"name": "X-Canary",
//        "value": "1"}, "cookie": {"name": "beta", "value": "yes"}, "percent": 5}]}]
//    "consumers": [{"name": "alice", "key_sha256": "64 hex digits"}]}
// Upstream settings (timeouts, max_fails) are not stored: they come from the
// config. "routes" lists every route of the table, also those without rules, so
// that removing a route's last rule survives a restart; a file without
// "routes" (an older gw) leaves the rules to the config. "consumers" (key-auth)
// holds only SHA-256 hashes of the keys; a file without it leaves the
// consumers to the config.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/shm/table.hpp"

namespace simdjson::dom {
class element;
}

namespace gw::shm {

/// The state file's format version, its "gw_state" key; a file of another
/// version is refused, naming both.
inline constexpr int64_t kStateVersion = 1;

/// The largest "generation" a state file may hold. The segment publishes a
/// table as `generation << 1 | slot`, so a generation must stay below 2^63
/// (Writer::commit refuses one that does not); a file's is refused above 2^62,
/// which leaves room for as many commits after it.
inline constexpr uint64_t kMaxStateGeneration = 1ull << 62;

struct StateHost {
  std::string id;
  core::SockAddr addr;
  uint32_t weight = 1;
  bool down = false;
};
struct StatePool {
  std::string id;
  int32_t priority = 0;
  Method method = Method::round_robin;
  std::vector<StateHost> hosts;
};
struct StateUpstream {
  std::string name;
  std::vector<StatePool> pools;
};
struct StateRoute {
  std::string listener;
  std::string name;
  std::vector<RuleSpec> rules;  ///< in order: the first match wins
};
struct StateConsumer {
  std::string name;
  uint8_t key_sha256[kSha256Len] = {};
};
struct State {
  uint64_t generation = 0;
  std::vector<StateUpstream> upstreams;
  bool has_routes = false;  ///< the source listed routes (else rules come from the config)
  std::vector<StateRoute> routes;
  bool has_consumers = false;  ///< the source listed consumers (else they come from the config)
  std::vector<StateConsumer> consumers;
  const StateRoute* find_route(std::string_view listener, std::string_view name) const noexcept {
    for (const auto& r : routes)
      if (r.listener == listener && r.name == name) return &r;
    return nullptr;
  }
};

/// Serialises a table (pools and hosts of every upstream).
std::string state_to_json(const Table& t);
/// Extracts the state of a table.
State state_from_table(const Table& t);
/// A state file write that failed: the path, the step and errno's text.
/// replaced(): the failure came after the rename (the directory's fsync), so
/// the file at `path` may be the new one; before it, the old file is intact.
/// cause(): the failure alone (what() may add what it meant for a change).
class StateFileError : public std::runtime_error {
 public:
  StateFileError(const std::string& what, bool replaced) : StateFileError(what, replaced, what) {}
  StateFileError(const std::string& what, bool replaced, std::string cause)
      : std::runtime_error(what), replaced_(replaced), cause_(std::move(cause)) {}
  bool replaced() const noexcept { return replaced_; }
  const std::string& cause() const noexcept { return cause_; }

 private:
  bool replaced_;
  std::string cause_;
};

/// Writes atomically (temp file, fsync, rename, fsync of the directory).
/// Throws StateFileError.
/// `like`: the file whose owner and mode a new `path` takes (a backup of the
/// state file: its consumers' key hashes stay as private as they were);
/// by default `path`'s own, if it exists.
void write_state_file(const std::string& path, const std::string& json, const std::string* like = nullptr);

/// Removes the temporary files (`STATE.tmp.PID`) that writers killed while
/// writing `state_file` left, those of processes no longer alive; each
/// is a whole copy of the state, and they add up until the disk is full.
/// Returns how many went.
size_t remove_stale_temp_files(const std::string& state_file);
/// Reads a state file. Returns false if it does not exist; throws
/// std::runtime_error naming the file and the problem if it is unreadable or invalid.
bool read_state_file(const std::string& path, State& out);

/// Reads a rule object of the state file's form. Returns false with `why`.
bool rule_from_json(simdjson::dom::element e, RuleSpec& spec, std::string& why);
/// One rule as a JSON object (the state file's form; also gwctl status --json).
std::string rule_to_json(const RuleSpec& r);

}  // namespace gw::shm
