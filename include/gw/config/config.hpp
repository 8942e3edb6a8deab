#pragma once
// The gateway configuration: JSON, parsed with simdjson, validated in full.
// Every error names its JSON path ("upstreams[0].pools[0].hosts[1].weight:
// expected an integer 0..1000, got string \"0\""); unknown keys are errors.
// Boundary code: it may allocate and throw.

#include <cstdint>
#include <string>
#include <vector>

#include "gw/config/api.hpp"
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

  // HTTP (used by http listeners only).
  uint32_t read_timeout_ms =
      60000;  ///< waiting for the response head, and between two reads of it (proxy_read_timeout)
  uint32_t send_timeout_ms = 60000;  ///< between two writes of the request to the host (proxy_send_timeout)
  struct Keepalive {
    uint32_t max_idle = 64;            ///< idle connections kept per host per worker; 0 = no keep-alive
    uint32_t idle_timeout_ms = 60000;  ///< an idle connection is closed after this
    uint32_t max_requests = 1000;      ///< requests over one connection, then it is closed
  } keepalive;
  struct Retry {
    bool on_error = true;     ///< connect error, reset or close before a response
    bool on_timeout = true;   ///< connect or read timeout before a response
    bool on_invalid = false;  ///< an invalid response head
    uint64_t status[4] = {};  ///< bit (s - 400) set: retry on status s (400..599)
    bool retries_status(uint32_t s) const noexcept {
      return s >= 400 && s < 600 && ((status[(s - 400) / 64] >> ((s - 400) % 64)) & 1);
    }
    uint32_t tries = 0;       ///< attempts per request; 0 = the upstream's `tries`
    uint32_t timeout_ms = 0;  ///< no new attempt after this long since the first; 0 = no limit
  } retry;
};

enum class Protocol { tcp, frame, http };
/// What hash methods hash: the client IP, the frame key, or (http) a part of
/// the request.
enum class HashKey { ip, frame, header, cookie, arg, uri };
/// "ip", "frame", "header:NAME", ... (for messages and status).
std::string hash_key_text(HashKey k, const std::string& name);

/// One route of an http listener. The most specific host wins (exact, then
/// the longest "*.suffix", then "*"), then the longest path prefix.
struct RouteConf {
  std::string name;
  std::string host = "*";  ///< "api.example.com", "*.example.com" or "*" (lower case)
  std::string path = "/";  ///< path prefix
  std::string upstream;
  HashKey hash_key = HashKey::ip;
  std::string hash_key_name;         ///< header, cookie or argument name
  bool hash_key_set = false;         ///< else the listener's
  std::string set_host;              ///< non-empty: the Host sent upstream
  std::vector<shm::RuleSpec> rules;  ///< initial rules; live ones are in shm
  LimitReqConf limit_req;            ///< "limit_req": per-key request rate (shm, all workers)
  AuthConf auth;                     ///< "auth": key-auth, basic-auth or jwt
};

/// Client-side HTTP settings of an http listener (nginx's names in brackets).
struct HttpConf {
  uint32_t client_header_timeout_ms = 60000;  ///< the whole request head (client_header_timeout): 408
  uint32_t client_body_timeout_ms = 60000;    ///< between two reads of the body (client_body_timeout): 408
  uint32_t send_timeout_ms = 60000;           ///< between two writes to the client (send_timeout): close
  uint32_t keepalive_timeout_ms = 75000;      ///< idle between requests (keepalive_timeout): close
  uint32_t keepalive_requests = 1000;         ///< requests per client connection (keepalive_requests)
  uint32_t max_request_line = 8192;           ///< 414 above
  uint32_t max_header_bytes =
      15360;  ///< the request head; 431 above (a 16 KiB buffer keeps 1 KiB for the rewrite, as HAProxy's maxrewrite)
  uint32_t max_headers = 100;  ///< field lines; 431 above
  /// Pass request fields whose names hold '_' upstream (nginx's
  /// underscores_in_headers). Off, they are dropped: CGI, WSGI and PHP turn
  /// '-' into '_', so "X_Consumer_Username" would reach such a host as the
  /// X-Consumer-Username gw sets, and "Content_Length" as Content-Length.
  bool underscores_in_headers = false;
};
/// connection: route once, on the first frame; frame: route every frame.
enum class FrameMode { connection, frame };

struct FrameConf {
  proxy::FrameSpec spec;
  uint32_t first_frame_timeout_ms = 5000;
  FrameMode mode = FrameMode::connection;
  uint32_t frame_timeout_ms = 5000;  ///< mode frame: a later frame must be whole within this of its start
  uint32_t max_links = 32;           ///< mode frame: host connections per device connection (1..32)
  uint32_t link_idle_ms = 5000;      ///< mode frame: quiet time after which a link may make room for another
  /// Whole-frame buffers per worker (frames above a 16 KiB relay buffer);
  /// 0 = as many as fit in kFrameBufferBudget, at least 4.
  uint32_t max_frame_buffers = 0;
  static constexpr size_t kFrameBufferBudget = 32u << 20;
  /// max_frame_buffers with the default applied.
  uint32_t frame_buffer_limit() const noexcept {
    if (max_frame_buffers) return max_frame_buffers;
    const size_t n = kFrameBufferBudget / (spec.max_frame() + proxy::kPadding);
    return static_cast<uint32_t>(n < 4 ? 4 : n);
  }
};

/// "access_log" of a listener: where and how each request (http) or
/// connection (tcp, frame) is logged.
struct AccessLogConf {
  std::string path;    ///< absolute; empty = no access log
  uint8_t format = 0;  ///< proxy::LogFormat: 0 combined, 1 main, 2 json
  uint8_t file = 0;    ///< index among the config's distinct access-log paths
};

struct ListenerConf {
  std::string name;
  core::SockAddr listen;
  Protocol protocol = Protocol::tcp;
  std::string upstream;
  int backlog = 511;
  HashKey hash_key = HashKey::ip;     ///< frame listeners default to HashKey::frame
  std::string hash_key_name;          ///< http: header, cookie or argument name
  bool close_on_host_remove = false;  ///< "on_host_remove": "close" (default "keep")
  FrameConf frame;                    ///< protocol frame only
  HttpConf http;                      ///< protocol http only
  std::vector<RouteConf> routes;      ///< protocol http: given, or one route "default" to `upstream`
  AccessLogConf access_log;

  LimitConnConf limit_conn;  ///< "limit_conn": concurrent connections per client address
  /// Not from the file: the listener's row of the shm ListenerStats matrix.
  /// The loader sets its index; the master assigns the row it runs with
  /// before it forks the workers and the admin server (a listener keeps its
  /// row, by name, across reloads).
  uint32_t stats_row = 0;
};

struct ShmConf {
  std::string name = "gw";
  shm::Caps caps;
};

/// How a worker waits for I/O: readiness (epoll) or completions (io_uring;
/// falls back to epoll with a warning where the kernel lacks what it needs).
enum class EventEngine { epoll, io_uring };

/// "cluster": the pools and hosts are shared with other nodes through etcd.
struct ClusterConf {
  bool enabled = false;                    ///< the config has a "cluster" object
  std::vector<std::string> etcd;           ///< endpoint URLs as given ("http://127.0.0.1:2379")
  std::vector<core::SockAddr> etcd_addrs;  ///< the same, parsed
  std::string prefix = "/gw/";             ///< every key gw reads or writes starts with this
  uint32_t timeout_ms = 2000;              ///< connect and request timeout per etcd request
  uint32_t reconnect_max_ms = 5000;        ///< cap of the reconnect backoff (starts at 100 ms, doubles)
};

/// "admin": the admin server (metrics, status, the admin API, the dashboard),
/// served by a child process of the master.
struct AdminConf {
  bool enabled = false;         ///< the config has an "admin" object
  core::SockAddr listen;        ///< "listen": IP:PORT
  std::string token;            ///< "token": bearer token for writes; empty = writes refused (403)
  uint32_t timeout_ms = 10000;  ///< "timeout_ms": a request head, body gaps, write gaps, keep-alive idle
};

struct Config {
  std::string path;                               ///< absolute path of the file it came from
  int workers = 0;                                ///< resolved: "auto" = number of online CPUs
  EventEngine event_engine = EventEngine::epoll;  ///< "event_engine"
  /// "splice_after_bytes": an L4 direction that has carried this many bytes
  /// moves its bursts (reads that fill whole buffers) with splice(2) through
  /// a pipe; 0 = always copy.
  uint32_t splice_after_bytes = 16384;
  std::string log_file;  ///< empty = stderr
  core::LogLevel log_level = core::LogLevel::info;
  uint32_t shutdown_timeout_ms = 10000;  ///< SIGTERM: how long workers drain before closing what is left
  /// "worker_shutdown_timeout_ms": after a reload (SIGHUP), how long the old
  /// workers drain before closing what is left; default = shutdown_timeout_ms.
  uint32_t worker_shutdown_timeout_ms = 10000;
  ShmConf shm;
  std::string state_file;  ///< absolute; empty = no persistence
  std::vector<ListenerConf> listeners;
  std::vector<UpstreamConf> upstreams;
  std::vector<std::string> access_log_paths;  ///< distinct access-log files (AccessLogConf::file indexes it)
  std::string hook_host_down;                 ///< "hooks.host_down": shell command run by the master
  std::string hook_host_up;                   ///< "hooks.host_up"
  ClusterConf cluster;
  std::vector<ConsumerConf> consumers;  ///< "consumers": initial key-auth consumers
  AdminConf admin;
};

struct LoadResult {
  Config config;
  std::vector<std::string> errors;  ///< "json.path: message"; empty = valid
  /// The file gives shm.name, and that key has no error (config.shm.name holds
  /// it), even if other keys have: gwctl -c needs only the name.
  bool shm_name_given = false;
  /// The document was read and its "cluster" key (or its absence) has no
  /// error: config.cluster holds it, even if other keys have errors (gwctl
  /// --etcd -c needs only cluster.prefix).
  bool cluster_given = false;
  bool ok() const noexcept { return errors.empty(); }
};

/// Reads and validates a config file.
LoadResult load_file(const std::string& path);
/// Validates JSON text; `path` is used for messages and relative paths only.
LoadResult load_string(const std::string& json, const std::string& path = "<string>");

/// Parses a hash key ("ip", "frame", "header:NAME", "cookie:NAME", "arg:NAME",
/// "uri"). Returns false with `why`.
bool parse_hash_key(std::string_view text, HashKey& kind, std::string& name, std::string& why);

/// Builds a table from the config's upstreams, routes and rules (hosts get no runtime slots yet).
/// Throws shm::TableError if it does not fit the capacities.
void build_table(const Config& c, shm::Table& t);
/// Copies the upstream settings of `u` into a table record.
shm::UpstreamRecord upstream_record(const UpstreamConf& u);

}  // namespace gw::config
