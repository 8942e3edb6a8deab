#pragma once
// The gateway configuration: JSON, parsed with simdjson, validated in full.
// Every error names its JSON path ("upstreams[0].pools[0].hosts[1].weight:
// expected an integer 0..1000, got string \"0\""); unknown keys are errors.
// Boundary code: it may allocate and throw.

#include <cstdint>
#include <string>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/core/log.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/shm/table.hpp"

namespace gw::config {

struct HostConf {
  std::string id;
  core::SockAddr address;
  uint32_t weight = 1;
};

struct PoolConf {
  std::string id;
  int32_t priority = 0;
  shm::Method method = shm::Method::round_robin;
  bool method_set = false;  ///< "method" was given (else a frame listener's upstream defaults to chash)
  std::vector<HostConf> hosts;
};

struct UpstreamConf {
  std::string name;
  uint32_t connect_timeout_ms = 2000;
  uint32_t idle_timeout_ms = 600000;
  uint32_t max_fails = 1;
  uint32_t fail_timeout_ms = 10000;
  uint32_t tries = 3;
  shm::HealthCheck check{};  ///< "health": active checks; type kCheckNone = off
  uint32_t slow_start_ms = 0;
  uint32_t balance_factor = 0;  ///< "hash_balance_factor" x 100; 0 = off
  std::vector<PoolConf> pools;
};

enum class Protocol { tcp, frame };
/// What hash methods hash: the client IP, or the frame key.
enum class HashKey { ip, frame };
/// connection: route once, on the first frame; frame: route every frame.
enum class FrameMode { connection, frame };

struct FrameConf {
  proxy::FrameSpec spec;
  uint32_t first_frame_timeout_ms = 5000;
  FrameMode mode = FrameMode::connection;
};

struct ListenerConf {
  std::string name;
  core::SockAddr listen;
  Protocol protocol = Protocol::tcp;
  std::string upstream;
  int backlog = 511;
  HashKey hash_key = HashKey::ip;    ///< frame listeners default to HashKey::frame
  bool close_on_host_remove = false;  ///< "on_host_remove": "close" (default "keep")
  FrameConf frame;                    ///< protocol frame only
};

struct ShmConf {
  std::string name = "gw";
  shm::Caps caps;
};

/// How a worker waits for I/O: readiness (epoll) or completions (io_uring;
/// falls back to epoll with a warning where the kernel lacks what it needs).
enum class EventEngine { epoll, io_uring };

struct Config {
  std::string path;       ///< absolute path of the file it came from
  int workers = 0;        ///< resolved: "auto" = number of online CPUs
  EventEngine event_engine = EventEngine::epoll;  ///< "event_engine"
  /// "splice_after_bytes": an L4 direction that has carried this many bytes
  /// moves the rest with splice(2) through a pipe; 0 = always copy.
  uint32_t splice_after_bytes = 16384;
  std::string log_file;   ///< empty = stderr
  core::LogLevel log_level = core::LogLevel::info;
  uint32_t shutdown_timeout_ms = 10000;
  ShmConf shm;
  std::string state_file;  ///< absolute; empty = no persistence
  std::vector<ListenerConf> listeners;
  std::vector<UpstreamConf> upstreams;
  std::string hook_host_down;  ///< "hooks.host_down": shell command run by the master
  std::string hook_host_up;    ///< "hooks.host_up"
};

struct LoadResult {
  Config config;
  std::vector<std::string> errors;  ///< "json.path: message"; empty = valid
  bool ok() const noexcept { return errors.empty(); }
};

/// Reads and validates a config file.
LoadResult load_file(const std::string& path);
/// Validates JSON text; `path` is used for messages and relative paths only.
LoadResult load_string(const std::string& json, const std::string& path = "<string>");

/// Builds a table from the config's upstreams (hosts get no runtime slots yet).
/// Throws shm::TableError if it does not fit the capacities.
void build_table(const Config& c, shm::Table& t);
/// Copies the upstream settings of `u` into a table record.
shm::UpstreamRecord upstream_record(const UpstreamConf& u);

}  // namespace gw::config
