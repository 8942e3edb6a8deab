#pragma once
// The L4 relay: accepted client connection → balancer pick → non-blocking
// connect (timeout, passive failure, next host) → bytes both ways with
// half-close, idle timeout and back-pressure (a side is read only while the
// previous chunk from it has been written to the other side).
//
// A frame listener in connection mode first reads the whole first frame
// (State::sniff, bounded by first_frame_timeout_ms), checks it and takes the
// routing key from it, then replays every byte read so far to the chosen host.
//
// Sessions live in a per-worker slab, reserved up front and touched only as
// it fills (an idle slot costs no memory); epoll data packs {kind, generation,
// index} so an event for a closed and reused session is recognised and
// dropped. Buffers come from the worker's pool and are held only while bytes
// are in flight. Single-threaded; noexcept; allocates nothing per connection.

#include <sys/socket.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/core/address.hpp"
#include "gw/net/buffer_pool.hpp"
#include "gw/net/pipe_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/shm/segment.hpp"

namespace gw::api {
class ConnLimiter;
class Guard;
}  // namespace gw::api

namespace gw::proxy {

/// A listener as the data plane sees it (the worker fills it from the config
/// and the table).
struct ListenerRuntime {
  int upstream = -1;                  ///< upstream index in the snapshot, -1 = none
  Framer* framer = nullptr;           ///< protocol frame: checks the first frame (connection mode)
  bool key_from_frame = false;        ///< hash_key "frame" (else the client IP)
  bool close_on_host_remove = false;  ///< on_host_remove "close"
  bool per_frame = false;             ///< frame mode "frame": FrameMux routes every frame
  bool http = false;                  ///< protocol http: HttpProxy
  int16_t log_file = -1;              ///< access_log: the file index, -1 = none
  uint8_t log_format = 0;             ///< access_log: proxy::LogFormat
  const char* name = "";              ///< the listener's name (access log)
  uint32_t stats_row = 0;             ///< its row of the ListenerStats matrix (config::ListenerConf::stats_row)
  uint32_t first_frame_timeout_ms = 0;
  uint32_t frame_timeout_ms = 0;  ///< mode "frame": a later frame must be whole this long after it started
  uint32_t max_links = 0;         ///< mode "frame": host connections per device connection
  uint32_t link_idle_ms = 0;      ///< mode "frame": a link this quiet may make room for another host
  uint32_t send_timeout_ms = 0;   ///< mode "frame": its upstream's send_timeout_ms (from the config); 0 = none
  /// Whole-frame buffers (header_size + max_body) for frames larger than a
  /// relay buffer; null when every frame fits one. At most max_frame_buffers
  /// in use at once in this worker.
  net::BufferPool* frame_buffers = nullptr;
  uint32_t max_frame_buffers = 0;
};

/// What the relay needs from its worker. The worker updates the pointers
/// when the table changes and `now_ms` once per loop iteration.
struct RelayEnv {
  net::Epoll* epoll = nullptr;
  net::TimerWheel* timers = nullptr;
  net::BufferPool* buffers = nullptr;
  /// splice(2): a direction that has carried `splice_after` bytes and reads
  /// full buffers (a burst of bulk data) moves through a pipe from `pipes`
  /// until a read comes back short (null or 0: always copy).
  net::PipePool* pipes = nullptr;
  uint64_t splice_after = 0;
  const shm::Segment* seg = nullptr;
  uint32_t worker = 0;
  uint32_t n_workers = 1;  ///< rows of the shm counter matrix that are in use
  const balance::Snapshot* snap = nullptr;
  balance::Balancer* balancer = nullptr;
  std::span<const ListenerRuntime> listeners;  ///< by listener index
  /// By host slot: the tag of the host that holds it if it still takes
  /// traffic (in the table, not admin down, not down by active checks), else 0.
  std::span<const uint32_t> live_tag;
  uint64_t now_ms = 0;
  bool table_changed = false;             ///< set by the worker on refresh; the relay records propagation
  class AccessLog* access_log = nullptr;  ///< the worker's; enabled() says if logging is on
  /// When a refused frame connection was last logged: one limiter for the
  /// relay and FrameMux, so the worker logs rejects at most once a second.
  uint64_t last_reject_log_ms = 0;

  /// Set (to the errno) by a relay whose socket() for an upstream failed for
  /// want of a descriptor (EMFILE, ENFILE): the worker then pauses accepting,
  /// as when accept itself fails so, and clears it.
  int fd_shortage = 0;

  api::ConnLimiter* conn_limiter = nullptr;  ///< limit_conn: told before a client socket is closed
  api::Guard* guard = nullptr;               ///< http routes: auth and limit_req
};

/// The upstream side of an L4 (tcp or frame) session that does not depend on
/// the event engine: the routing key, the hosts tried so far, the host it is
/// bound to (counted as an active connection of that host) and what its
/// access-log line will say. TcpRelay's and UringRelay's sessions derive from
/// it; the functions in src/proxy/relay_common.hpp work on it.
struct StreamRoute {
  static constexpr uint32_t kMaxTries = 16;

  bool bound = false;    ///< counted on host (host_slot, host_tag)
  bool fd_wait = false;  ///< connecting: the timer is a wait for a free descriptor
  uint8_t attempts = 0;  ///< hosts tried; kAttemptsLocalError after a local error
  uint8_t key_len = 0;
  uint16_t listener = 0;
  uint32_t host_slot = 0, host_tag = 0, host_weight = 0;
  uint32_t idle_ms = 0;            ///< the upstream's idle_timeout_ms
  uint64_t connect_start_ns = 0;   ///< the current attempt's (connect latency)
  uint64_t fd_wait_until_ms = 0;   ///< see wait_for_fd (relay_common.hpp)
  uint64_t start_ms = 0;           ///< accepted at (access log)
  uint32_t tried[kMaxTries] = {};  ///< host slots tried
  char key[kMaxKey + 1] = {};      ///< the client IP as text (nginx's $remote_addr), or the frame key
  core::SockAddr peer;             ///< the client (access log)
  core::SockAddr host_addr;        ///< the host (access log)
  const char* end = "closed";      ///< how the session ended (access log)

  std::string_view key_view() const noexcept { return {key, key_len}; }
  /// Made ready for a client of `l` accepted at `now`.
  void reset(uint16_t l, uint64_t now) noexcept {
    bound = fd_wait = false;
    attempts = key_len = 0;
    listener = l;
    fd_wait_until_ms = 0;
    start_ms = now;
    peer = host_addr = core::SockAddr{};
    end = "closed";
  }
};

/// epoll data: kind (top 3 bits) | generation (29 bits) | index (32 bits).
/// The generation makes an event for a closed and reused slot recognisable.
inline constexpr uint64_t kKindWorker = 0;
inline constexpr uint64_t kKindClient = 1;
inline constexpr uint64_t kKindUpstream = 2;
inline constexpr uint64_t kKindMux = 3;         ///< per-frame routing (FrameMux)
inline constexpr uint64_t kKindHttpClient = 4;  ///< HttpProxy: a client connection
inline constexpr uint64_t kKindHttpUp = 5;      ///< HttpProxy: an upstream connection
inline constexpr uint32_t kGenMask = 0x1fffffffu;
inline constexpr uint64_t event_kind(uint64_t data) {
  return data >> 61;
}
inline constexpr uint64_t event_data(uint64_t kind, uint32_t gen, uint32_t low) {
  return (kind << 61) | (uint64_t{gen & kGenMask} << 32) | low;
}
/// Whether an event's generation is `gen`'s (else the slot was reused: stale).
inline constexpr bool event_gen_is(uint64_t data, uint32_t gen) {
  return ((data >> 32) & kGenMask) == (gen & kGenMask);
}

class TcpRelay {
 public:
  TcpRelay(RelayEnv& env, uint32_t max_sessions);

  /// Takes ownership of an accepted, non-blocking client socket; `peer` is the
  /// client's address (its IP is the hash key of hash methods).
  void accept(int fd, uint32_t listener, const sockaddr* peer) noexcept;
  /// Handles an epoll event whose kind is client or upstream.
  void on_event(uint64_t data, uint32_t events) noexcept;
  /// Handles an expired session timer.
  void on_timer(net::TimerNode& n) noexcept;
  /// Closes every session (fast stop, or the drain timeout ran out).
  void close_all() noexcept;
  /// on_host_remove "close": closes relayed sessions whose host no longer
  /// takes traffic (env.live_tag). Called after a table change and on the
  /// worker's housekeeping tick.
  void close_orphans() noexcept;

  uint32_t active() const noexcept { return active_; }
  bool full() const noexcept { return free_head_ == kNone && sessions_.size() == sessions_.capacity(); }

 private:
  static constexpr uint32_t kNone = ~0u;

  /// One direction's bytes in flight: a buffer, or (splice mode, once the
  /// direction has carried env.splice_after bytes) a pipe.
  struct Pipe {
    char* buf = nullptr;
    uint32_t head = 0;
    uint32_t tail = 0;
    bool big = false;    ///< from the listener's frame_buffers
    uint32_t piped = 0;  ///< bytes in the pipe
    net::PipeFds pipe;   ///< splice mode
    uint64_t moved = 0;  ///< bytes written on so far
    bool burst = false;  ///< the last read filled a whole buffer or pipe (bulk data is queued)
    bool pending() const noexcept { return tail > head || piped > 0; }
  };

  // sniff: a frame listener waits for the whole first frame (and its key).
  enum class State : uint8_t { free, sniff, connecting, relay };

  struct Session : net::TimerNode, StreamRoute {
    int cfd = -1;
    int ufd = -1;
    uint32_t gen = 0;
    uint32_t next_free = kNone;
    State state = State::free;
    bool c_in = false, c_out = false, u_in = false, u_out = false;  // edge-triggered readiness
    bool c_eof = false, u_eof = false;                              // read side saw EOF
    bool c_shut = false, u_shut = false;                            // we shut down the write side
    bool c_hup = false, u_hup = false;                              // epoll reported the peer's FIN (or an error)
    Pipe c2u, u2c;
    uint64_t bytes_up = 0, bytes_down = 0;  // for the access log
  };

  uint64_t data_of(const Session& s, uint64_t kind) const noexcept { return event_data(kind, s.gen, index_of(s)); }
  uint32_t index_of(const Session& s) const noexcept { return static_cast<uint32_t>(&s - sessions_.data()); }

  Session* new_session() noexcept;
  void sniff(Session& s) noexcept;
  void reject(Session& s, FrameError e) noexcept;
  void connect_next(Session& s) noexcept;
  void on_connected(Session& s, bool readable) noexcept;
  /// The connect's error (`err`, net::reset_after_connect) says the handshake
  /// completed and the host then reset: a connected session whose host is
  /// gone, not a failed connect (no passive failure, no other host tried).
  void on_connected_then_reset(Session& s, int err) noexcept;
  void drive(Session& s) noexcept;
  bool pump(int src, bool& src_in, bool src_hup, bool& src_eof, Pipe& p, int dst, bool& dst_out, bool& dst_shut,
            bool dst_done, Session& s) noexcept;
  /// A read from p's source failed: false ends the session, else the source
  /// is taken as ended (a host's reset).
  bool src_failed(Session& s, Pipe& p, bool& src_eof) noexcept;
  void release_buf(const Session& s, Pipe& p) noexcept;
  void release(const Session& s, Pipe& p) noexcept;
  void close_session(Session& s) noexcept;
  void log_session(const Session& s) noexcept;

  RelayEnv& env_;
  std::vector<Session> sessions_;
  uint32_t free_head_ = kNone;
  uint32_t active_ = 0;
  uint64_t last_no_host_log_ms_ = 0;
  uint64_t last_local_error_log_ms_ = 0;
  balance::Rng rng_{0x6777'7265'6c61'7921ull};  // slow-start admission
};

}  // namespace gw::proxy
