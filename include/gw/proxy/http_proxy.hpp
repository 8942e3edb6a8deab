#pragma once
// The HTTP/1.1 reverse proxy of `http` listeners (RFC 9110, RFC 9112), with
// WebSocket (RFC 6455) tunnels, upstream keep-alive, retries and live
// gray-release rules.
//
// One client connection carries one request at a time (pipelined requests
// wait in its input buffer and are answered in order):
//
//   head ──parse──► route (host, path) ► rules (shm, live) ► upstream, hash key
//        ──pick──► idle keep-alive connection of that host, or a new connect
//        ──send──► rewritten head (from `rq`) + body bytes as received (from `in`)
//        ◄─recv─── response head (into `rs`) ─► rewritten head (into `out`)
//        ◄─send─── `out` + body bytes (from `rs`; de-chunked for HTTP/1.0)
//   response done ► upstream connection back to its host's idle list
//                 ► next request (maybe already in `in`) or keep-alive wait
//
// A 101 answer to an Upgrade request turns the pair into a tunnel; any other
// answer keeps HTTP (a 426 or 200 to "Upgrade: websocket" is not a tunnel:
// the smuggling guard). Bodies stream through one buffer per direction;
// back-pressure is a side not being read while its buffer is full.
//
// Retries: a failure before the response head reaches the client (connect
// error or timeout, reset, read timeout, invalid head, a status listed in
// `retry.on`) is a passive failure of the host; the request goes to another
// host while tries and retry.timeout_ms allow, if its method is idempotent or
// nothing was sent yet, and every body byte sent so far is still in `in`.
//
// Memory: buffers come from the worker's pool and are held only while bytes
// are in flight; an idle keep-alive connection (either side) holds none.
// Single-threaded (the worker's); noexcept; no allocation per request after
// warm-up (refresh() allocates, on a table change).

#include <sys/epoll.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gw/api/consumer.hpp"
#include "gw/config/config.hpp"
#include "gw/core/address.hpp"
#include "gw/http/parser.hpp"
#include "gw/proxy/access_log.hpp"
#include "gw/proxy/http_io.hpp"
#include "gw/proxy/tcp_relay.hpp"

namespace gw::proxy {

/// Why the proxy answered a request itself, or closed it (counted per worker).
enum class HttpOutcome : uint8_t {
  ok = 0,
  bad_request,      ///< 400/414/431/501/505 from the parser
  no_route,         ///< 404
  no_host,          ///< 503: no pool has a usable host
  bad_gateway,      ///< 502: connect errors, resets, invalid responses, tries used up
  gateway_timeout,  ///< 504
  client_timeout,   ///< 408: head or body too slow
  local_error,      ///< 503: no descriptor (or port, or memory) for an upstream socket
  count
};
/// Their names in `gwctl status`, /status and /metrics (by HttpOutcome).
inline constexpr const char* kHttpOutcomeNames[] = {"ok",          "bad_request",     "no_route",       "no_host",
                                                    "bad_gateway", "gateway_timeout", "client_timeout", "local_error"};
static_assert(std::size(kHttpOutcomeNames) == static_cast<size_t>(HttpOutcome::count));

class HttpProxy {
 public:
  /// `cfg` must outlive the proxy (the worker's config).
  HttpProxy(RelayEnv& env, const config::Config& cfg, uint32_t max_conns);
  HttpProxy(const HttpProxy&) = delete;
  HttpProxy& operator=(const HttpProxy&) = delete;

  /// io_uring: the sockets' I/O goes through `io` (the worker's; it
  /// outlives the proxy's connections), its readiness comes back as events
  /// for on_event(). Call before the first accept(); null: system calls and
  /// the worker's epoll set.
  void use_io(HttpIo* io) noexcept { io_ = io; }

  /// Rebuilds routes (upstream indices) and rules from the table; call after
  /// each table change. Allocates; closes idle upstream connections whose
  /// host left the table.
  void refresh();

  /// Takes ownership of an accepted, non-blocking client socket of http
  /// listener `listener` (index into the config's listeners).
  void accept(int fd, uint32_t listener, const sockaddr* peer) noexcept;
  /// An epoll event of kind kKindHttpClient or kKindHttpUp.
  void on_event(uint64_t data, uint32_t events) noexcept;
  /// Before a batch of readiness events is dispatched: closes the idle
  /// upstream connections it reports data, a FIN or an error on, so that no
  /// event of the batch can take one for a request.
  void close_idle_in(const epoll_event* events, int n) noexcept;
  /// An expired timer of this proxy (see owns()).
  void on_timer(net::TimerNode& n) noexcept;
  bool owns(const net::TimerNode& n) const noexcept;

  /// SIGTERM: no new request on any connection; idle ones close now, busy
  /// ones after their response. Tunnels run on until they end.
  void drain() noexcept;
  /// Closes everything (fast stop, or the drain timeout ran out).
  void close_all() noexcept;
  /// on_host_remove "close": closes the WebSocket tunnels whose host no
  /// longer takes traffic (env.live_tag), so their clients reconnect to the
  /// key's new owner. A request still being answered is left to finish.
  /// Called after a table change and on the worker's housekeeping tick.
  void close_orphans() noexcept;

  /// Open client connections (tunnels included).
  uint32_t active() const noexcept { return active_; }
  bool full() const noexcept { return conn_free_ == kNone && conns_.size() == conns_.capacity(); }
  /// The table is full: closes up to `max` client connections that have
  /// waited at least kReclaimIdleMs for a request (idle keep-alive, or new
  /// and silent), as nginx reuses its idle connections when
  /// worker_connections run out. Returns how many it closed.
  uint32_t reclaim_idle(uint32_t max) noexcept;
  static constexpr uint64_t kReclaimIdleMs = 1000;

 private:
  static constexpr uint32_t kNone = ~0u;
  static constexpr uint32_t kMaxTries = 16;
  static constexpr size_t kMaxFields = 1000;

  // ---- routing, rebuilt by refresh() -------------------------------------
  struct RuleRt {
    std::string_view id;  ///< into the proxy's copy of the table
    int upstream = -1;    ///< snapshot index; -1 = the rule's upstream is gone (skipped)
    uint8_t match = 0;
    uint16_t percent_bp = 0;
    uint32_t first_cidr = 0, n_cidrs = 0;  ///< into cidrs_
    std::string_view header_name, header_value, cookie_name, cookie_value;
  };
  enum class HostKind : uint8_t { exact, suffix, any };
  struct RouteRt {
    const config::RouteConf* conf = nullptr;
    HostKind host_kind = HostKind::any;
    std::string_view host;                 ///< exact: the name; suffix: ".example.com"
    int upstream = -1;                     ///< snapshot index; -1 = gone (503)
    uint32_t first_rule = 0, n_rules = 0;  ///< into rules_
  };
  struct ListenerRt {
    const config::ListenerConf* conf = nullptr;
    http::Limits limits;
    bool log = false;  ///< access_log set
    uint8_t log_file = 0;
    LogFormat log_format = LogFormat::combined;
    uint32_t first_route = 0, n_routes = 0;  ///< into routes_
    std::string listen_text;                 ///< the Host sent for an HTTP/1.0 request without one
    bool wildcard = false;                   ///< on 0.0.0.0 or [::]: that Host is the connection's local address
  };
  struct UpstreamRt {
    const config::UpstreamConf* conf = nullptr;  ///< settings not kept in shm
    uint32_t tries = 1;
  };

  // ---- connections ---------------------------------------------------------
  /// A client connection. `in`: bytes from the client; `rq`: the request head
  /// as sent upstream (kept for retries until the response head arrives);
  /// `rs`: bytes from the upstream; `out`: a head or error page for the client.
  enum class CState : uint8_t { free, head, busy, tunnel, closing };
  struct Buf {
    char* p = nullptr;
    uint32_t head = 0;  ///< first byte not yet consumed/sent
    uint32_t tail = 0;  ///< end of the bytes held
    uint32_t size() const noexcept { return tail - head; }
  };
  struct Conn : net::TimerNode {
    int fd = -1;
    uint32_t io = kNone;  // HttpIo socket (io_uring)
    uint32_t gen = 0;
    uint32_t next_free = kNone;
    CState state = CState::free;
    uint16_t listener = 0;
    bool c_in = false, c_out = false, c_hup = false;  // edge-triggered readiness
    bool c_eof = false;                               // the client's FIN was read
    bool shut_wr = false;                             // we sent our FIN (closing)
    bool keep_alive = false;                          // this request allows another after it
    bool client_close = false;  // the client said it sends nothing after this request (close, or 1.0)
    bool http10 = false;
    bool head_req = false;  // HEAD: the response has no body
    bool idempotent = false;
    bool upgrade = false;        // an Upgrade request (forwarded with its Upgrade header)
    bool req_body_done = false;  // every body byte of the request is in `in` (maybe not yet sent)
    bool retryable = false;      // every body byte sent so far is still in `in`
    bool resp_started = false;   // the response head was written to `out`: no retry from here
    bool resp_done = false;
    bool dechunk = false;     // chunked response to an HTTP/1.0 client
    bool resp_close = false;  // close the client after this response
    bool up_cut = false;      // nothing more is sent to the host: it answered before the whole request head went out,
                              // or a send failed once its answer had begun
    bool up_keep = false;     // the response lets the upstream connection carry another request
    bool up_closes = false;   // an interim response said Connection: close (RFC 9112 9.6)
    bool tunnel_c_eof = false, tunnel_u_eof = false;    // tunnel: FIN read from the client / the upstream
    bool tunnel_c_shut = false, tunnel_u_shut = false;  // tunnel: FIN passed on to the client / the upstream
    bool tunnel_drop = false;  // tunnel: the host takes nothing more; the client's bytes are read and dropped
    bool fd_wait = false;      // no descriptor for an upstream socket: connect_next() again at fd_retry_ms
    uint8_t attempts = 0;
    uint8_t last_fail = 0;     // kFail* of the last failed attempt
    uint16_t last_status = 0;  // kFailStatus: the status the host answered
    http::Method method = http::Method::get;
    uint32_t scan = 0;        // head end search: bytes before this were looked at
    http::LineCheck line;     // state head: how far the request line was checked
    uint16_t route = 0xffff;  // index into routes_
    int32_t rule = -1;        // index into rules_ of the matched rule
    int32_t upstream = -1;    // snapshot upstream index
    // This request's upstream timeouts, taken when it is routed: a table
    // change may remove the upstream under it (upstream -1), and the request
    // must still time out by them.
    uint32_t u_connect_ms = 0, u_read_ms_max = 0, u_send_ms_max = 0, u_idle_ms = 0;
    uint32_t up = kNone;            // UpConn index while a request is in progress
    uint32_t requests = 0;          // requests on this connection
    uint32_t body_start = 0;        // in `in`: first body byte of the current request
    uint32_t body_end = 0;          // in `in`: end of the bytes the body decoder consumed
    uint32_t sent = 0;              // in `in`: end of the body bytes sent upstream
    uint64_t started_ms = 0;        // first byte of the current request (header timeout)
    uint64_t first_try_ms = 0;      // retry.timeout_ms
    uint64_t fd_retry_ms = 0;       // fd_wait: the next try
    uint64_t fd_wait_until_ms = 0;  // this request waits for a descriptor until then (0: has not waited)
    uint64_t c_read_ms = 0, c_write_ms = 0, u_read_ms = 0, u_write_ms = 0;  // last progress each way
    uint32_t rs_dec = 0;  // in `rs`: end of the bytes the response decoder consumed
    uint32_t tried[kMaxTries] = {};
    core::SockAddr peer;
    char ip[46] = {};  // the client address as text (nginx's $remote_addr), made once at accept
    uint8_t ip_len = 0;
    http::BodyDecoder req_body;
    http::BodyDecoder resp_body;
    Buf in, rq, rs, out;
    balance::HashKey key;  // the request's hash key (empty: none), hashed whole
    // Access log (only with access_log on): the request's text fields, kept
    // in `lg` (a pool buffer held while the request is in flight).
    enum LogField : uint8_t { kMethod, kTarget, kVersion, kReferer, kAgent, kHost, kRule, kLogFields };
    Buf lg;
    uint16_t lg_len[kLogFields] = {};
    bool log_pending = false;   // a request began and is not logged yet
    uint64_t log_start_ms = 0;  // the request's first byte (started_ms then counts the linger)
    uint16_t status_sent = 0;   // the status of the answer the client got
    uint16_t up_status = 0;     // the status a host answered with (0 = none)
    uint32_t head_bytes = 0;    // bytes of response heads sent (not body)
    uint64_t client_bytes = 0;  // bytes sent to the client for this request (a tunnel's included)
    // Bytes received from the client for this request, as on the wire (nginx's
    // $request_length): its head, the body bytes the decoder took (chunked
    // framing included), and for a tunnel every byte the client sent through it.
    uint64_t req_bytes = 0;
    uint64_t up_start_ms = 0;  // the request's first byte to the host that answered
    int64_t up_ms = -1;        // → its response head
    core::SockAddr up_addr;    // the last host tried

    api::ConsumerName consumer;  // who auth found for the current request (X-Consumer-Username, access log)

    /// The client's FIN was read and no byte after the current request is
    /// buffered: no request can follow it. (Requests pipelined before the FIN
    /// are still answered.)
    bool eof_after_request() const noexcept { return c_eof && in.tail <= body_end; }
  };

  /// An upstream connection: owned by a Conn while it carries a request, on
  /// its host's idle list between requests. Holds no buffer.
  enum class UState : uint8_t { free, connecting, busy, idle };
  struct UpConn : net::TimerNode {
    int fd = -1;
    uint32_t io = kNone;  // HttpIo socket (io_uring)
    uint32_t gen = 0;
    uint32_t next_free = kNone;
    UState state = UState::free;
    bool u_in = false, u_out = false, u_hup = false;
    bool u_err = false;      // an EPOLLERR was reported (a reset): nothing more can reach the host
    bool reused = false;     // taken from the idle list for this request
    bool interim = false;    // the host sent an interim (1xx) head for this request: it got the request
    bool bound = false;      // counted as active on its host
    uint32_t owner = kNone;  // Conn index
    uint32_t host_slot = 0, host_tag = 0, host_weight = 0;
    int32_t upstream = -1;  // snapshot upstream index (max_upstreams is up to 65535)
    uint32_t requests = 0;
    uint32_t idle_prev = kNone, idle_next = kNone;  // on the host's idle list
    uint32_t lru_prev = kNone, lru_next = kNone;    // on the worker's idle list (all hosts)
    uint64_t idle_since_ms = 0;                     // when it went on the idle list
    uint64_t connect_start_ns = 0;
  };

  uint64_t conn_data(const Conn& c) const noexcept { return event_data(kKindHttpClient, c.gen, index_of(c)); }
  uint64_t up_data(const UpConn& u) const noexcept { return event_data(kKindHttpUp, u.gen, index_of(u)); }
  uint32_t index_of(const Conn& c) const noexcept { return static_cast<uint32_t>(&c - conns_.data()); }
  uint32_t index_of(const UpConn& u) const noexcept { return static_cast<uint32_t>(&u - ups_.data()); }

  // Socket I/O: system calls and the epoll set, or HttpIo (use_io). The
  // calls take the fd and the HttpIo id both, and behave as recv(2),
  // recv(MSG_PEEK) of one byte, sendmsg(2) and shutdown(SHUT_WR), all
  // non-blocking; io_open() registers a socket for its events (false:
  // it could not, errno set), io_close() closes it and resets both.
  bool io_open(int fd, uint32_t& io, uint64_t data, bool connecting) noexcept;
  void io_close(int& fd, uint32_t& io) noexcept;
  /// What io_open()'s errno `e` means, for a log line.
  const char* io_open_error(int e) const noexcept;
  ssize_t io_recv(int fd, uint32_t io, char* p, size_t n) noexcept;
  ssize_t io_peek(int fd, uint32_t io) noexcept;
  ssize_t io_send(int fd, uint32_t io, const iovec* iov, int n_iov) noexcept;
  void io_shutdown(int fd, uint32_t io) noexcept;

  // client side
  Conn* new_conn() noexcept;
  void close_conn(Conn& c) noexcept;
  void on_client(Conn& c) noexcept;
  bool read_client(Conn& c) noexcept;      // false: the connection was closed
  bool request_line_ok(Conn& c) noexcept;  // the head so far may still begin a request
  void parse_request(Conn& c) noexcept;
  /// Answers `status` and closes, before a request began (a bad or
  /// incomplete head), counted as `o`; `line`: its request line, if it was
  /// read (the access log's request; "-" without it).
  void refuse_head(Conn& c, HttpOutcome o, int status, const http::Head& line = http::Head{}) noexcept;
  void start_request(Conn& c, const http::Head& h) noexcept;
  void finish_request(Conn& c) noexcept;
  /// `extra`: header lines to add ("Retry-After: 1\r\n"), e.g. from the guard.
  void respond_error(Conn& c, int status, bool keep_alive, std::string_view extra = {}) noexcept;
  /// The current time as an HTTP-date (RFC 9110 5.6.7), formatted at most once a second.
  std::string_view http_date() noexcept;
  bool flush_client(Conn& c) noexcept;  // false: closed
  void pump_request_body(Conn& c) noexcept;
  /// The request buffer is full of body bytes the host has not taken: gw
  /// does not read the client (back-pressure), so client_body_timeout_ms
  /// does not run.
  static bool request_stalled(const Conn& c) noexcept;
  void arm(Conn& c) noexcept;
  bool tunnel_send_timed_out(const Conn& c, const config::HttpConf& hc, uint64_t now) const noexcept;

  // routing
  /// The route for `host` and the normalised `path` (-1: none). `slash`: a
  /// route of that host whose prefix is `path` and a '/', when no prefix is
  /// `path` itself (nginx's auto_redirect: the request gets a 301 to it).
  int match_route(const ListenerRt& l, std::string_view host, std::string_view path, int& slash) const noexcept;
  int match_rule(const RouteRt& r, const Conn& c, const http::Head& h, balance::HashKey client_key) const noexcept;
  /// 301 to `prefix` (match_route's `slash`), the query kept.
  void redirect_to_slash(Conn& c, std::string_view target, std::string_view prefix) noexcept;
  bool build_request_head(Conn& c, const http::Head& h, const RouteRt& r) noexcept;

  // upstream side
  UpConn* new_up() noexcept;
  void close_up(UpConn& u) noexcept;
  void release_up(UpConn& u, bool reusable) noexcept;
  void connect_next(Conn& c, bool resend = false) noexcept;  // resend: a kept-alive connection closed on reuse
  /// Closes the upstream keep-alive connection idle longest, whatever its
  /// host. False if none is idle.
  bool close_oldest_idle_up() noexcept;
  /// socket() found no free descriptor: closes the upstream connection idle
  /// longest, or else a client connection idle keep-alive for
  /// kReclaimIdleMs, so that the caller can try again. False if there was
  /// none (then none is looked for again for kFdWaitMs).
  bool free_descriptor(int err) noexcept;
  void on_upstream(UpConn& u) noexcept;
  void on_connected(Conn& c, UpConn& u) noexcept;
  bool send_upstream(Conn& c, UpConn& u) noexcept;  // false: failed (handled)
  bool read_upstream(Conn& c, UpConn& u) noexcept;  // false: failed (handled)
  void parse_response(Conn& c, UpConn& u) noexcept;
  bool build_response_head(Conn& c, const http::Head& h) noexcept;
  void forward_response_body(Conn& c, UpConn& u) noexcept;
  void upstream_failed(Conn& c, uint8_t kind, int err) noexcept;
  /// The response buffer is full and the client has not taken any of it:
  /// gw does not read the host (back-pressure).
  static bool response_stalled(const Conn& c) noexcept;
  /// gw waits for bytes from the host `u` of `c`: the whole request went out
  /// (or the answer has begun), the answer is not done, and gw has room to
  /// read it. read_timeout_ms runs only then (nginx's proxy_read_timeout).
  static bool waits_for_host(const Conn& c, const UpConn& u) noexcept;
  void answer_failure(Conn& c) noexcept;
  void start_tunnel(Conn& c, UpConn& u) noexcept;
  void pump_tunnel(Conn& c, UpConn& u) noexcept;
  /// Nothing more can pass either way: closes, or, if the client's bytes
  /// were being dropped and may still come, lingers (state closing) so that
  /// they do not reset away what it has not yet taken.
  void end_tunnel(Conn& c) noexcept;
  void idle_push(UpConn& u) noexcept;
  /// The host's idle list holds more than max_idle: its tail's timer fires
  /// kSurplusIdleMs after the tail went idle (see on_idle_timer).
  void arm_surplus(uint32_t slot) noexcept;
  uint32_t max_idle_of(const UpConn& u) const noexcept;
  /// An idle connection's timer: closes it at keepalive.idle_timeout_ms, or
  /// as surplus (with every other surplus connection idle long enough).
  void on_idle_timer(UpConn& u) noexcept;
  void idle_unlink(UpConn& u) noexcept;
  /// `transparent`: the request can go again on a new connection if this one
  /// turns out dead (see idle_take).
  UpConn* idle_take(uint32_t slot, uint32_t tag, bool transparent) noexcept;

  void drive(Conn& c) noexcept;
  void log_begin(Conn& c, const http::Head& h) noexcept;
  void log_request(Conn& c) noexcept;
  void count(HttpOutcome o) noexcept;
  bool acquire(Buf& b) noexcept;
  void release(Buf& b) noexcept;

  RelayEnv& env_;
  const config::Config& cfg_;
  HttpIo* io_ = nullptr;
  std::vector<ListenerRt> listeners_;  // by config listener index (non-http: unused)
  std::vector<RouteRt> routes_;
  std::vector<RuleRt> rules_;
  std::vector<core::Cidr> cidrs_;
  std::vector<UpstreamRt> upstreams_;        // by snapshot upstream index
  std::vector<std::string> upstream_names_;  // the same, by name: to move in-flight requests to a new table
  /// upstreams_[ui], or one with no settings (conf null, one try) for an
  /// upstream a table change removed under an in-flight request (ui -1).
  const UpstreamRt& upstream_rt(int ui) const noexcept {
    static constexpr UpstreamRt kGone{};
    return ui >= 0 && static_cast<size_t>(ui) < upstreams_.size() ? upstreams_[static_cast<size_t>(ui)] : kGone;
  }
  std::vector<char> strings_;  // rule ids and values, owned here
  std::vector<Conn> conns_;
  std::vector<UpConn> ups_;
  uint32_t conn_free_ = kNone, up_free_ = kNone;
  std::vector<uint32_t> idle_head_;               // by host slot: most recently idle first
  std::vector<uint32_t> idle_tail_;               // by host slot: idle longest
  std::vector<uint32_t> idle_count_;              // by host slot
  uint32_t lru_head_ = kNone, lru_tail_ = kNone;  // every idle connection, most recently idle first
  uint32_t active_ = 0;
  size_t reclaim_cursor_ = 0;  // where reclaim_idle() looks next
  bool draining_ = false;
  std::vector<http::Field> fields_;  // the head being parsed (one at a time)
  char date_[40] = {};               // http_date(): the Date of our answers and of hosts' without one
  // The normalised path of the request being routed (a head fits one buffer).
  std::array<char, net::BufferPool::kBufferSize> path_buf_{};
  uint32_t date_len_ = 0;
  int64_t date_second_ = -1;
  uint64_t last_no_host_log_ms_ = 0;
  uint64_t last_error_log_ms_ = 0;
  uint64_t last_fd_log_ms_ = 0;
  uint64_t last_table_full_log_ms_ = 0;
  uint64_t last_accept_io_log_ms_ = 0;   // a client closed: io_open() failed
  uint64_t no_fd_to_free_until_ms_ = 0;  // free_descriptor() found nothing: not looked for again before
  balance::Rng rng_{0x6874'7470'7072'6f78ull};
};

}  // namespace gw::proxy
