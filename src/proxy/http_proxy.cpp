#include "gw/proxy/http_proxy.hpp"

#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "gw/api/conn_limiter.hpp"
#include "gw/api/guard.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/socket.hpp"
#include "gw/shm/runtime.hpp"
#include "proxy/metrics.hpp"
#include "proxy/relay_common.hpp"

namespace gw::proxy {

static_assert(static_cast<size_t>(HttpOutcome::count) <= shm::kHttpOutcomeKinds);

namespace {

constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr uint32_t kBufSize = static_cast<uint32_t>(net::BufferPool::kBufferSize);
/// After an error answer the connection is shut for writing and read (and
/// discarded) for at most this long, so that unread request bytes do not
/// turn our FIN into a reset that destroys the answer (nginx lingering_close).
constexpr uint64_t kLingerMs = 2000;
// Draining: an idle keep-alive connection is closed once it has been idle this
// long. Closing it at once races with a request the client may be sending
// (it would see a reset); a client that is using it sends its next request
// within this time and gets the response with "Connection: close".
constexpr uint64_t kDrainIdleMs = 1000;
/// An idle upstream connection is checked with MSG_PEEK before reuse once it
/// has been idle this long, whatever the request (see idle_take). Far below
/// any keep-alive timeout a host is likely to have (nginx 75 s, Node 5 s).
constexpr uint64_t kPeekAfterIdleMs = 50;
/// A connection released to a host whose idle list already holds max_idle is
/// kept this long before the ones idle longest are closed down to max_idle
/// (HAProxy purges surplus idle connections gradually too). Closing at once,
/// as nginx does, makes a burst of more requests in flight than max_idle open
/// a new connection for each request beyond it.
constexpr uint64_t kSurplusIdleMs = 1000;
/// A response head must fit the response buffer.
constexpr http::Limits kResponseLimits{8192, kBufSize, 4096, 8192};

// Why an attempt failed (retry.on and the answer when no retry is left).
constexpr uint8_t kFailError = 1;    // connect error, reset, close before the response
constexpr uint8_t kFailTimeout = 2;  // connect, send or read timeout
constexpr uint8_t kFailInvalid = 3;  // an invalid response head
constexpr uint8_t kFailStatus = 4;   // a status listed in retry.on
// A valid answer gw cannot pass to this client (not the host's failure, not retried).
constexpr uint8_t kFailUnsendable = 5;
// This machine's own trouble, before any byte went to a host: no descriptor,
// port or memory for the upstream socket. 503, as HAProxy answers a resource
// error; no host is blamed.
constexpr uint8_t kFailLocal = 6;

const char* reason_phrase(int status) noexcept {
  switch (status) {
    case 301: return "Moved Permanently";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

bool idempotent(http::Method m) noexcept {
  // RFC 9110 9.2.2.
  switch (m) {
    case http::Method::get:
    case http::Method::head:
    case http::Method::put:
    case http::Method::delete_:
    case http::Method::options:
    case http::Method::trace: return true;
    default: return false;
  }
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  return http::iequals(a, b);
}

bool iends_with(std::string_view s, std::string_view suffix) noexcept {
  return s.size() >= suffix.size() && iequals(s.substr(s.size() - suffix.size()), suffix);
}

/// "Example.com:8080" → "Example.com"; "[::1]:80" → "[::1]"; one trailing dot dropped.
std::string_view host_without_port(std::string_view h) noexcept {
  if (!h.empty() && h.front() == '[') {
    auto close = h.find(']');
    return close == std::string_view::npos ? h : h.substr(0, close + 1);
  }
  if (auto colon = h.rfind(':'); colon != std::string_view::npos) h = h.substr(0, colon);
  if (!h.empty() && h.back() == '.') h.remove_suffix(1);
  return h;
}

/// An absolute-form target's path and query (maybe empty): what follows its authority.
std::string_view after_authority(const http::Head& h) noexcept {
  return h.target.substr(static_cast<size_t>(h.authority.data() - h.target.data()) + h.authority.size());
}

/// Field names equal as a CGI gateway sees them: case-insensitive, '_' = '-'.
bool names_alike(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] + 32) : a[i];
    char y = b[i] >= 'A' && b[i] <= 'Z' ? static_cast<char>(b[i] + 32) : b[i];
    if (x == '_') x = '-';
    if (y == '_') y = '-';
    if (x != y) return false;
  }
  return true;
}

int hex_digit(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// The path as routes match it, written to `out` (room for raw.size() bytes):
/// %XX decoded, runs of '/' merged, "." and ".." segments resolved, as nginx
/// normalises $uri for its locations. Matching the raw target let
/// "/x/../admin/x", "//admin/x" or "/%61dmin/x" pass a route in front of
/// "/admin/" (its auth and limits) to a host that reads them as /admin/x.
/// Returns the length, or -1 for a path no host should get: a bad or NUL
/// %-escape, or ".." above the root. `raw` starts with '/'.
int normalize_path(std::string_view raw, char* out) noexcept {
  // Decode and merge slashes.
  size_t n = 0;
  for (size_t i = 0; i < raw.size(); ++i) {
    char ch = raw[i];
    if (ch == '%') {
      if (i + 2 >= raw.size()) return -1;
      const int hi = hex_digit(raw[i + 1]), lo = hex_digit(raw[i + 2]);
      if (hi < 0 || lo < 0) return -1;
      ch = static_cast<char>(hi * 16 + lo);
      if (ch == '\0') return -1;
      i += 2;
    }
    if (ch == '/' && n > 0 && out[n - 1] == '/') continue;
    out[n++] = ch;
  }
  // Dot segments: out[0, w) is the result so far ("" or "/a/b", no trailing
  // '/'); segments only move left, so the pass can run in place.
  size_t w = 0, r = 0;
  bool trailing = false;
  while (r < n) {
    const size_t s = r + 1;  // out[r] == '/'
    size_t e = s;
    while (e < n && out[e] != '/') ++e;
    const std::string_view seg(out + s, e - s);
    trailing = e == n && (seg.empty() || seg == "." || seg == "..");
    if (seg == "..") {
      if (w == 0) return -1;  // above the root
      while (w > 0 && out[w - 1] != '/') --w;
      --w;  // the '/' before the dropped segment
    } else if (!seg.empty() && seg != ".") {
      out[w++] = '/';
      std::memmove(out + w, out + s, seg.size());
      w += seg.size();
    }
    r = e;
  }
  if (trailing || w == 0) out[w++] = '/';
  return static_cast<int>(w);
}

/// The value of cookie `name` in a Cookie field value ("a=1; b=2"), if present.
bool find_cookie(std::string_view header, std::string_view name, std::string_view& value) noexcept {
  while (!header.empty()) {
    auto semi = header.find(';');
    std::string_view pair = header.substr(0, semi);
    header = semi == std::string_view::npos ? std::string_view{} : header.substr(semi + 1);
    while (!pair.empty() && (pair.front() == ' ' || pair.front() == '\t')) pair.remove_prefix(1);
    auto eq = pair.find('=');
    if (eq == std::string_view::npos || pair.substr(0, eq) != name) continue;
    value = pair.substr(eq + 1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    return true;
  }
  return false;
}

/// The value of cookie `name` as nginx's $cookie_NAME reads it, for hash keys
/// (a key nginx and gw must hash alike): the name matched case-insensitively,
/// blanks before and after the '=', the value raw (quotes and blanks kept) up
/// to the next ';'; a pair that does not match is skipped past the next ';'
/// or ',', then its blanks. (Gray rules read cookies as find_cookie does.)
bool nginx_cookie(std::string_view v, std::string_view name, std::string_view& value) noexcept {
  size_t i = 0;
  const size_t n = v.size();
  while (i < n) {
    if (n - i >= name.size() && iequals(v.substr(i, name.size()), name)) {
      i += name.size();
      while (i < n && v[i] == ' ') ++i;
      if (i < n && v[i++] == '=') {
        while (i < n && v[i] == ' ') ++i;
        const size_t end = std::min(n, v.find(';', i));
        value = v.substr(i, end - i);
        return true;
      }
    }
    while (i < n) {
      const char ch = v[i++];
      if (ch == ';' || ch == ',') break;
    }
    while (i < n && v[i] == ' ') ++i;
  }
  return false;
}

/// The value of query argument `name` (raw, as nginx's $arg_NAME), if present.
bool find_arg(std::string_view query, std::string_view name, std::string_view& value) noexcept {
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    auto eq = pair.find('=');
    std::string_view k = pair.substr(0, eq);
    if (k.size() == name.size() && iequals(k, name)) {  // nginx compares $arg_ names case-insensitively
      value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
      return true;
    }
  }
  return false;
}

/// Appends to a fixed buffer; remembers an overflow instead of failing each call.
struct Writer {
  char* p;
  uint32_t len;
  uint32_t cap;
  bool overflow = false;
  Writer& add(std::string_view s) noexcept {
    if (overflow || s.size() > cap - len) {
      overflow = true;
      return *this;
    }
    if (!s.empty()) std::memcpy(p + len, s.data(), s.size());  // an empty view may be null
    len += static_cast<uint32_t>(s.size());
    return *this;
  }
  Writer& num(uint64_t v) noexcept {
    char tmp[24];
    auto r = fmt::format_to_n(tmp, sizeof(tmp), "{}", v);
    return add(std::string_view(tmp, r.size));
  }
  Writer& field(std::string_view name, std::string_view value) noexcept {
    return add(name).add(": ").add(value).add("\r\n");
  }
};

/// Calls `f` with each list element of the Transfer-Encoding field lines of
/// `h` (which the parser accepted), in order, OWS trimmed, empty ones skipped.
template <class F>
void each_transfer_coding(const http::Head& h, F&& f) noexcept {
  for (const http::Field& fl : h.fields) {
    if (fl.id != http::FieldId::transfer_encoding) continue;
    const std::string_view v = fl.value;
    size_t i = 0;
    while (i < v.size()) {
      // One list element: up to a comma outside a quoted-string (a parameter value).
      const size_t from = i;
      for (bool quoted = false; i < v.size() && (quoted || v[i] != ','); ++i) {
        if (v[i] == '"') quoted = !quoted;
        else if (quoted && v[i] == '\\') ++i;
      }
      std::string_view e = v.substr(from, std::min(i, v.size()) - from);
      ++i;  // the comma
      while (!e.empty() && (e.front() == ' ' || e.front() == '\t')) e.remove_prefix(1);
      while (!e.empty() && (e.back() == ' ' || e.back() == '\t')) e.remove_suffix(1);
      if (!e.empty()) f(e);
    }
  }
}

/// Writes the Transfer-Encoding of `h` as one field line in a canonical
/// form: no empty list elements or OWS, "chunked" in lower case, several
/// field lines joined. "chunked,", ", CHUNKED" and
/// "Transfer-Encoding: gzip" + "Transfer-Encoding: Chunked" mean the same to
/// gw, but not to every host; a host that misreads the framing gw forwards
/// takes the body for a request (smuggling). Other codings keep their text.
/// Writes nothing when `h` has no coding (a response read until the close
/// that had no Transfer-Encoding at all).
void write_transfer_codings(Writer& w, const http::Head& h) noexcept {
  bool first = true;
  each_transfer_coding(h, [&](std::string_view e) {
    w.add(first ? "Transfer-Encoding: " : ", ");
    first = false;
    w.add(iequals(e, "chunked") ? std::string_view("chunked") : e);
  });
  if (!first) w.add("\r\n");
}

/// Whether `h` has a transfer coding other than chunked (gzip, ...): one gw
/// passes on and does not undo.
bool has_coding_besides_chunked(const http::Head& h) noexcept {
  bool other = false;
  each_transfer_coding(h, [&](std::string_view e) { other = other || !iequals(e, "chunked"); });
  return other;
}

/// Whether `buf[from, to)` holds the end of a head: LF followed by CRLF or LF
/// (a bare-LF head is then rejected by the parser). `from` may point just
/// past an LF seen by an earlier scan.
bool head_end_in(const char* buf, uint32_t start, uint32_t from, uint32_t to) noexcept {
  uint32_t i = from > start + 2 ? from - 2 : start;
  while (i < to) {
    const void* lf = std::memchr(buf + i, '\n', to - i);
    if (!lf) return false;
    uint32_t at = static_cast<uint32_t>(static_cast<const char*>(lf) - buf);
    if (at + 1 < to && buf[at + 1] == '\n') return true;
    if (at + 2 < to && buf[at + 1] == '\r' && buf[at + 2] == '\n') return true;
    i = at + 1;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------
// set-up

HttpProxy::HttpProxy(RelayEnv& env, const config::Config& cfg, uint32_t max_conns) : env_(env), cfg_(cfg) {
  // Reserved, not touched: a slot's memory is paid for when it is first used.
  conns_.reserve(max_conns);
  ups_.reserve(max_conns);
  fields_.resize(kMaxFields);
  listeners_.resize(cfg.listeners.size());
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const config::ListenerConf& l = cfg.listeners[i];
    ListenerRt& lr = listeners_[i];
    lr.conf = &l;
    lr.limits.max_start_line = l.http.max_request_line;
    lr.limits.max_head = l.http.max_header_bytes;
    lr.log = !l.access_log.path.empty();
    lr.log_file = l.access_log.file;
    lr.log_format = static_cast<LogFormat>(l.access_log.format);
    lr.listen_text = l.listen.to_string();
    const uint8_t* ip = l.listen.ip;
    lr.wildcard = std::all_of(ip, ip + (l.listen.family == AF_INET6 ? 16 : 4), [](uint8_t b) { return b == 0; });
  }
}

void HttpProxy::refresh() {
  if (idle_head_.empty()) {
    // The worker fills env_ after constructing its parts: size here.
    idle_head_.assign(env_.seg->caps().max_hosts, kNone);
    idle_tail_.assign(env_.seg->caps().max_hosts, kNone);
    idle_count_.assign(env_.seg->caps().max_hosts, 0);
  }
  const balance::Snapshot& snap = *env_.snap;
  const shm::Table& t = snap.table();
  routes_.clear();
  rules_.clear();
  for (size_t li = 0; li < cfg_.listeners.size(); ++li) {
    const config::ListenerConf& l = cfg_.listeners[li];
    ListenerRt& lr = listeners_[li];
    lr.first_route = static_cast<uint32_t>(routes_.size());
    lr.n_routes = 0;
    if (l.protocol != config::Protocol::http) continue;
    for (const config::RouteConf& rc : l.routes) {
      RouteRt r;
      r.conf = &rc;
      if (rc.host == "*") {
        r.host_kind = HostKind::any;
      } else if (rc.host.starts_with("*.")) {
        r.host_kind = HostKind::suffix;
        r.host = std::string_view(rc.host).substr(1);  // ".example.com"
      } else {
        r.host_kind = HostKind::exact;
        r.host = rc.host;
      }
      r.upstream = snap.find_upstream(rc.upstream);
      r.first_rule = static_cast<uint32_t>(rules_.size());
      const int ti = t.find_route(l.name, rc.name);
      auto recs = t.rules();
      for (size_t k = 0; ti >= 0 && k < recs.size(); ++k) {
        const shm::RuleRecord& rec = recs[k];
        if (rec.route != ti) continue;
        RuleRt rr;
        rr.id = shm::name_of(rec.id);
        rr.upstream = snap.find_upstream(shm::name_of(rec.upstream));
        rr.match = rec.match;
        rr.percent_bp = rec.percent_bp;
        rr.first_cidr = rec.first_cidr;
        rr.n_cidrs = rec.n_cidrs;
        rr.header_name = shm::name_of(rec.header_name);
        rr.header_value = std::string_view(rec.header_value, ::strnlen(rec.header_value, shm::kRuleValueCap));
        rr.cookie_name = shm::name_of(rec.cookie_name);
        rr.cookie_value = std::string_view(rec.cookie_value, ::strnlen(rec.cookie_value, shm::kRuleValueCap));
        // A quoted value (beta="yes", as a Cookie field may send it) is the
        // value without its quotes, on both sides: find_cookie() drops the
        // request's, so a rule written with them would match nothing.
        if (rr.cookie_value.size() >= 2 && rr.cookie_value.front() == '"' && rr.cookie_value.back() == '"')
          rr.cookie_value = rr.cookie_value.substr(1, rr.cookie_value.size() - 2);
        rules_.push_back(rr);
      }
      r.n_rules = static_cast<uint32_t>(rules_.size()) - r.first_rule;
      routes_.push_back(r);
      ++lr.n_routes;
    }
  }
  // Requests in flight hold upstream positions in the table they started
  // with. A reload or a live change may remove or reorder upstreams: each is
  // moved to its upstream's position in this table, or to -1 if it is gone
  // (no retry then; settings fall back), so a retry never goes to another
  // upstream, nor a timeout come from another's settings.
  if (!upstream_names_.empty()) {
    std::vector<int32_t> moved(upstream_names_.size());
    for (size_t o = 0; o < moved.size(); ++o) moved[o] = static_cast<int32_t>(snap.find_upstream(upstream_names_[o]));
    auto move = [&](int32_t ui) -> int32_t {
      return ui >= 0 && static_cast<size_t>(ui) < moved.size() ? moved[static_cast<size_t>(ui)] : int32_t{-1};
    };
    for (Conn& c : conns_)
      if (c.state != CState::free) c.upstream = move(c.upstream);
    for (UpConn& u : ups_)
      if (u.state != UState::free) u.upstream = move(u.upstream);
  }
  // Settings the table does not carry come from the config, by name.
  upstreams_.assign(snap.upstreams().size(), UpstreamRt{});
  auto recs = t.upstreams();
  upstream_names_.clear();
  for (const auto& rec : recs) upstream_names_.emplace_back(shm::name_of(rec.name));
  for (size_t u = 0; u < recs.size() && u < upstreams_.size(); ++u) {
    for (const auto& uc : cfg_.upstreams)
      if (uc.name == shm::name_of(recs[u].name)) upstreams_[u].conf = &uc;
    const uint32_t tries = upstreams_[u].conf && upstreams_[u].conf->retry.tries ? upstreams_[u].conf->retry.tries
                                                                                 : snap.upstreams()[u].tries;
    upstreams_[u].tries = std::clamp<uint32_t>(tries, 1, kMaxTries);
  }
  // Idle upstream connections to hosts that left the table (or whose slot
  // now belongs to another host) are closed.
  std::vector<uint32_t> live(idle_head_.size(), 0);
  for (const shm::HostRecord& h : t.hosts())
    if (h.slot < live.size()) live[h.slot] = h.tag;
  for (uint32_t slot = 0; slot < idle_head_.size(); ++slot) {
    uint32_t i = idle_head_[slot];
    while (i != kNone) {
      UpConn& u = ups_[i];
      i = u.idle_next;
      if (live[slot] != u.host_tag) close_up(u);
    }
  }
}

// ---------------------------------------------------------------------------
// buffers and bookkeeping

bool HttpProxy::acquire(Buf& b) noexcept {
  if (b.p) return true;
  b.p = env_.buffers->acquire();
  b.head = b.tail = 0;
  return b.p != nullptr;
}

void HttpProxy::release(Buf& b) noexcept {
  if (b.p) env_.buffers->release(b.p);
  b = Buf{};
}

void HttpProxy::count(HttpOutcome o) noexcept {
  bump(env_.seg->worker(env_.worker).http_outcomes[static_cast<size_t>(o)]);
}

HttpProxy::Conn* HttpProxy::new_conn() noexcept {
  if (conn_free_ != kNone) {
    Conn& c = conns_[conn_free_];
    conn_free_ = c.next_free;
    return &c;
  }
  if (conns_.size() == conns_.capacity()) return nullptr;
  conns_.emplace_back();  // within the reservation: never reallocates
  return &conns_.back();
}

HttpProxy::UpConn* HttpProxy::new_up() noexcept {
  if (up_free_ != kNone) {
    UpConn& u = ups_[up_free_];
    up_free_ = u.next_free;
    return &u;
  }
  if (ups_.size() == ups_.capacity()) return nullptr;
  ups_.emplace_back();
  return &ups_.back();
}

bool HttpProxy::owns(const net::TimerNode& n) const noexcept {
  const auto* p = reinterpret_cast<const char*>(&n);
  const auto* c0 = reinterpret_cast<const char*>(conns_.data());
  const auto* u0 = reinterpret_cast<const char*>(ups_.data());
  return (p >= c0 && p < c0 + conns_.size() * sizeof(Conn)) || (p >= u0 && p < u0 + ups_.size() * sizeof(UpConn));
}

// ---------------------------------------------------------------------------
// socket I/O

bool HttpProxy::io_open(int fd, uint32_t& io, uint64_t data, bool connecting) noexcept {
  if (!io_) return env_.epoll->add(fd, kSocketEvents, data) == 0;
  io = io_->open(fd, data, connecting);
  if (io != kNone) return true;
  errno = ENOBUFS;  // every HttpIo slot is taken (it has one for each connection slot of either kind)
  return false;
}

const char* HttpProxy::io_open_error(int e) const noexcept {
  return io_ && e == ENOBUFS ? "every io_uring socket slot is in use" : std::strerror(e);
}

void HttpProxy::io_close(int& fd, uint32_t& io) noexcept {
  if (fd < 0) return;
  if (io != kNone) io_->close(io);
  else ::close(fd);
  fd = -1;
  io = kNone;
}

ssize_t HttpProxy::io_recv(int fd, uint32_t io, char* p, size_t n) noexcept {
  return io_ ? io_->recv(io, p, n) : ::recv(fd, p, n, MSG_DONTWAIT);
}

ssize_t HttpProxy::io_peek(int fd, uint32_t io) noexcept {
  if (io_) return io_->peek(io);
  char b;
  return ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
}

ssize_t HttpProxy::io_send(int fd, uint32_t io, const iovec* iov, int n_iov) noexcept {
  if (io_) return io_->send(io, iov, n_iov);
  msghdr m{};
  m.msg_iov = const_cast<iovec*>(iov);
  m.msg_iovlen = static_cast<size_t>(n_iov);
  return ::sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

void HttpProxy::io_shutdown(int fd, uint32_t io) noexcept {
  if (io_) io_->shutdown_wr(io);
  else ::shutdown(fd, SHUT_WR);
}

// ---------------------------------------------------------------------------
// accept and close

void HttpProxy::accept(int fd, uint32_t listener, const sockaddr* peer) noexcept {
  Conn* cp = new_conn();
  if (!cp) {
    api::release_conn(env_.conn_limiter, fd);  // admitted by limit_conn: its count goes too
    ::close(fd);
    return;
  }
  Conn& c = *cp;
  const uint32_t gen = c.gen;
  c = Conn{};
  c.gen = gen;
  c.fd = fd;
  c.state = CState::head;
  c.listener = static_cast<uint16_t>(listener);
  if (peer) c.peer = core::SockAddr::from_sockaddr(peer);
  // Its text once per connection (inet_ntop formats IPv4 with sprintf): the
  // hash key, X-Forwarded-For, X-Real-IP and the access log use it.
  if ((c.peer.family == AF_INET || c.peer.family == AF_INET6) &&
      ::inet_ntop(c.peer.family == AF_INET6 ? AF_INET6 : AF_INET, c.peer.ip, c.ip, sizeof(c.ip)))
    c.ip_len = static_cast<uint8_t>(std::strlen(c.ip));
  c.c_read_ms = env_.now_ms;
  ++active_;
  // TCP_NODELAY comes from the listening socket (accepted sockets inherit it).
  metrics::listener_open(env_, listener);
  if (!io_open(c.fd, c.io, conn_data(c), false)) {
    const int e = errno;
    if (env_.now_ms - last_accept_io_log_ms_ >= 1000) {
      last_accept_io_log_ms_ = env_.now_ms;
      GW_LOG_WARN("cannot watch a client socket: {}; closed the connection", io_open_error(e));
    }
    close_conn(c);
    return;
  }
  c.c_in = true;  // a request may already be queued
  drive(c);
}

void HttpProxy::close_up(UpConn& u) noexcept {
  if (u.state == UState::free) return;
  if (u.state == UState::idle) idle_unlink(u);
  if (u.bound) {
    shm::counter_close(env_.seg->counter(env_.worker, u.host_slot), u.host_tag);
    u.bound = false;
  }
  env_.timers->cancel(u);
  io_close(u.fd, u.io);
  u.state = UState::free;
  u.owner = kNone;
  ++u.gen;
  u.next_free = up_free_;
  up_free_ = index_of(u);
}

void HttpProxy::close_conn(Conn& c) noexcept {
  if (c.state == CState::free) return;
  if (c.log_pending) log_request(c);
  if (c.up != kNone) {
    close_up(ups_[c.up]);
    c.up = kNone;
  }
  env_.timers->cancel(c);
  api::release_conn(env_.conn_limiter, c.fd);  // limit_conn
  io_close(c.fd, c.io);
  release(c.in);
  release(c.rq);
  release(c.rs);
  release(c.out);
  release(c.lg);
  c.state = CState::free;
  ++c.gen;
  c.next_free = conn_free_;
  conn_free_ = index_of(c);
  --active_;
  metrics::listener_close(env_, c.listener);
}

void HttpProxy::close_all() noexcept {
  for (Conn& c : conns_) close_conn(c);
  for (UpConn& u : ups_) close_up(u);
}

void HttpProxy::close_orphans() noexcept {
  uint64_t closed = 0;
  for (Conn& c : conns_) {
    if (c.state != CState::tunnel || c.up == kNone || !env_.listeners[c.listener].close_on_host_remove) continue;
    const UpConn& u = ups_[c.up];
    if (u.host_slot < env_.live_tag.size() && env_.live_tag[u.host_slot] == u.host_tag) continue;
    close_conn(c);
    ++closed;
  }
  count_orphans(env_, closed, "WebSocket tunnel(s)");
}

uint32_t HttpProxy::reclaim_idle(uint32_t max) noexcept {
  // A walk from where the last one stopped, so the same connections are not
  // looked at first every time; it runs only with every slot taken.
  uint32_t closed = 0;
  const size_t n = conns_.size();
  for (size_t k = 0; k < n && closed < max; ++k) {
    if (reclaim_cursor_ >= n) reclaim_cursor_ = 0;
    Conn& c = conns_[reclaim_cursor_++];
    if (c.state != CState::head || c.in.size() != 0 || env_.now_ms < c.c_read_ms + kReclaimIdleMs) continue;
    // A request may be in the socket, its event not yet dispatched (later in
    // this batch): closing would drop it unanswered. nginx's reusable
    // connections race the same way; a peek costs one call per candidate.
    if (c.c_in || io_peek(c.fd, c.io) > 0) continue;
    close_conn(c);
    ++closed;
  }
  return closed;
}

void HttpProxy::drain() noexcept {
  draining_ = true;
  for (Conn& c : conns_) {
    if (c.state == CState::head && c.in.size() == 0) {  // idle keep-alive
      if (env_.now_ms >= c.c_read_ms + kDrainIdleMs) close_conn(c);
      else arm(c);  // closes at c_read_ms + kDrainIdleMs unless a request comes
    } else {
      c.keep_alive = false;
    }
  }
  for (UpConn& u : ups_)
    if (u.state == UState::idle) close_up(u);
}

// ---------------------------------------------------------------------------
// the keep-alive lists: one per host slot, most recently idle first

void HttpProxy::idle_push(UpConn& u) noexcept {
  const uint32_t i = index_of(u);
  u.state = UState::idle;
  u.owner = kNone;
  u.idle_prev = kNone;
  u.idle_since_ms = env_.now_ms;
  u.idle_next = idle_head_[u.host_slot];
  if (u.idle_next != kNone) ups_[u.idle_next].idle_prev = i;
  else idle_tail_[u.host_slot] = i;
  idle_head_[u.host_slot] = i;
  ++idle_count_[u.host_slot];
  u.lru_prev = kNone;
  u.lru_next = lru_head_;
  if (lru_head_ != kNone) ups_[lru_head_].lru_prev = i;
  else lru_tail_ = i;
  lru_head_ = i;
}

void HttpProxy::idle_unlink(UpConn& u) noexcept {
  const bool was_tail = u.idle_next == kNone;
  if (u.idle_prev != kNone) ups_[u.idle_prev].idle_next = u.idle_next;
  else idle_head_[u.host_slot] = u.idle_next;
  if (u.idle_next != kNone) ups_[u.idle_next].idle_prev = u.idle_prev;
  else idle_tail_[u.host_slot] = u.idle_prev;
  u.idle_prev = u.idle_next = kNone;
  --idle_count_[u.host_slot];
  // The tail carried the surplus timer (the host closed it, say): the new one does.
  if (was_tail && idle_tail_[u.host_slot] != kNone && idle_count_[u.host_slot] > max_idle_of(u))
    arm_surplus(u.host_slot);
  if (u.lru_prev != kNone) ups_[u.lru_prev].lru_next = u.lru_next;
  else lru_head_ = u.lru_next;
  if (u.lru_next != kNone) ups_[u.lru_next].lru_prev = u.lru_prev;
  else lru_tail_ = u.lru_prev;
  u.lru_prev = u.lru_next = kNone;
}

HttpProxy::UpConn* HttpProxy::idle_take(uint32_t slot, uint32_t tag, bool transparent) noexcept {
  while (slot < idle_head_.size() && idle_head_[slot] != kNone) {
    UpConn& u = ups_[idle_head_[slot]];
    idle_unlink(u);
    env_.timers->cancel(u);
    if (u.host_tag == tag && !u.u_hup) {
      // A connection the host closed (or wrote to) while idle must not carry a
      // request. close_idle_in() has closed those whose event is in this
      // batch; one whose FIN came after the batch was read is looked at with
      // a MSG_PEEK, a system call per request, only where it matters:
      //  - the request could not go again (a POST, or a body no longer all
      //    in the buffer): a dead connection would cost it a 502;
      //  - the connection has been idle a while, long enough for the host's
      //    own keep-alive timeout, which may write a 408 before its FIN that
      //    would pass for the answer.
      // A request that can go again, on a connection idle only briefly, is
      // sent at once (nginx and HAProxy never look): if the host closed it
      // meanwhile, the failure is retried on a new connection and the host is
      // not blamed (upstream_failed, "stale").
      if (transparent && env_.now_ms - u.idle_since_ms < kPeekAfterIdleMs) return &u;
      const ssize_t n = io_peek(u.fd, u.io);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return &u;
    }
    u.state = UState::busy;  // close_up() must not unlink it again
    close_up(u);
  }
  return nullptr;
}

void HttpProxy::release_up(UpConn& u, bool reusable) noexcept {
  if (u.bound) {
    shm::counter_close(env_.seg->counter(env_.worker, u.host_slot), u.host_tag);
    u.bound = false;
  }
  const UpstreamRt* ur = u.upstream >= 0 && static_cast<size_t>(u.upstream) < upstreams_.size()
                             ? &upstreams_[static_cast<size_t>(u.upstream)]
                             : nullptr;
  const config::UpstreamConf* uc = ur ? ur->conf : nullptr;
  if (!reusable || !uc || draining_ || uc->keepalive.max_idle == 0 || u.requests >= uc->keepalive.max_requests ||
      u.u_hup) {
    close_up(u);
    return;
  }
  if (u.u_in) {
    // The host wrote after its answer (a body to a HEAD, another answer)
    // while the client was still taking that answer: nothing reads the
    // upstream once the answer is done, and no new edge comes for those
    // bytes. On the idle list they would pass for the next request's answer
    // (idle_take does not look at a connection idle only briefly). u_in may
    // also be left from a read that filled the buffer: one peek tells.
    const ssize_t n = io_peek(u.fd, u.io);
    if (!(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
      close_up(u);
      return;
    }
    u.u_in = false;
  }
  idle_push(u);
  env_.timers->schedule(u, env_.now_ms + uc->keepalive.idle_timeout_ms);
  // Over max_idle: the surplus goes once idle kSurplusIdleMs, oldest first.
  if (idle_count_[u.host_slot] > uc->keepalive.max_idle) arm_surplus(u.host_slot);
}

void HttpProxy::arm_surplus(uint32_t slot) noexcept {
  UpConn& t = ups_[idle_tail_[slot]];
  const uint64_t due = t.idle_since_ms + kSurplusIdleMs;
  if (t.deadline_ms > due) env_.timers->schedule(t, due);
}

uint32_t HttpProxy::max_idle_of(const UpConn& u) const noexcept {
  const config::UpstreamConf* uc = upstream_rt(u.upstream).conf;
  return uc ? uc->keepalive.max_idle : 0;
}

void HttpProxy::on_idle_timer(UpConn& u) noexcept {
  const uint32_t slot = u.host_slot;
  const config::UpstreamConf* uc = upstream_rt(u.upstream).conf;
  const uint64_t idle_end = u.idle_since_ms + (uc ? uc->keepalive.idle_timeout_ms : 0);
  // Only the tail is ever given a surplus deadline (arm_surplus): the tail
  // stays the tail until it leaves the list, which cancels its timer.
  const bool surplus = idle_tail_[slot] == index_of(u) && idle_count_[slot] > max_idle_of(u);
  if (env_.now_ms < idle_end && !surplus) {
    env_.timers->schedule(u, idle_end);  // a surplus timer, and the surplus is gone
    return;
  }
  close_up(u);  // keepalive.idle_timeout_ms, or the surplus idle longest
  // The rest of the surplus that has waited long enough, oldest first.
  while (idle_tail_[slot] != kNone && idle_count_[slot] > max_idle_of(ups_[idle_tail_[slot]])) {
    UpConn& t = ups_[idle_tail_[slot]];
    if (env_.now_ms < t.idle_since_ms + kSurplusIdleMs) {
      arm_surplus(slot);
      break;
    }
    close_up(t);
  }
}

// ---------------------------------------------------------------------------
// events and timers

void HttpProxy::close_idle_in(const epoll_event* events, int n) noexcept {
  for (int i = 0; i < n; ++i) {
    const uint64_t data = events[i].data.u64;
    if (event_kind(data) != kKindHttpUp) continue;
    const uint32_t idx = static_cast<uint32_t>(data);
    if (idx >= ups_.size()) continue;
    UpConn& u = ups_[idx];
    if (u.state == UState::idle && event_gen_is(data, u.gen) &&
        (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
      close_up(u);  // its event, dispatched later, is then stale
  }
}

void HttpProxy::on_event(uint64_t data, uint32_t events) noexcept {
  const uint32_t idx = static_cast<uint32_t>(data);
  const bool hup = events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  if (event_kind(data) == kKindHttpClient) {
    if (idx >= conns_.size()) return;
    Conn& c = conns_[idx];
    if (c.state == CState::free || !event_gen_is(data, c.gen)) return;  // stale
    if (events & EPOLLIN) c.c_in = true;
    if (events & EPOLLOUT) c.c_out = true;
    if (hup) {
      c.c_hup = true;
      c.c_in = true;  // the FIN or the error is read like data
    }
    // A reset after the client's FIN: a read says 0 again (the FIN), only
    // EPOLLERR reports it. The client can take no answer: abort, as a reset
    // read before the FIN does (read_client(), pump_tunnel()).
    auto reset_after_fin = [&c] {
      return (c.state == CState::busy && c.c_eof) || (c.state == CState::tunnel && c.tunnel_c_eof);
    };
    if ((events & EPOLLERR) && reset_after_fin()) {
      close_conn(c);
      return;
    }
    drive(c);
    // A reset while a request or tunnel is under way, after drive() moved what
    // could move (as the tcp relay does): a read reports it only once no byte
    // is left before it, and none may come. The FIN and the reset in one
    // report: drive() read the FIN (a 0, not the error). Bytes of a pipelined
    // request that came after its head: a busy connection only peeks at them,
    // and the peek returns them. No later report comes for the error
    // (edge-triggered).
    if ((events & EPOLLERR) && c.state != CState::free && event_gen_is(data, c.gen) &&
        (c.state == CState::busy || c.state == CState::tunnel))
      close_conn(c);
    return;
  }
  if (idx >= ups_.size()) return;
  UpConn& u = ups_[idx];
  if (u.state == UState::free || !event_gen_is(data, u.gen)) return;
  if (events & EPOLLIN) u.u_in = true;
  if (events & EPOLLOUT) u.u_out = true;
  if (hup) {
    u.u_hup = true;
    u.u_in = true;
  }
  if (events & EPOLLERR) u.u_err = true;
  if (u.state == UState::idle) {
    // An idle connection has nothing to say: data or a FIN means it is done.
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) close_up(u);
    return;
  }
  if (u.owner == kNone) return;
  Conn& c = conns_[u.owner];
  if (u.state == UState::connecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    const int err = net::socket_error(u.fd);
    // A reset once the handshake was done (the host accepted, then reset
    // before this was looked at): the connect succeeded (its latency counts),
    // and the reset before any answer is a failure of the request (passive
    // failure, retried per retry.on "error"), as a reset seen later is.
    if (net::reset_after_connect(err)) on_connected(c, u);
    if (err != 0) {
      upstream_failed(c, kFailError, err);
      if (c.state != CState::free) drive(c);
      return;
    }
    on_connected(c, u);
  }
  drive(c);  // a tunnel's host reset after its FIN: see pump_tunnel()
}

void HttpProxy::on_timer(net::TimerNode& n) noexcept {
  const auto* p = reinterpret_cast<const char*>(&n);
  const auto* u0 = reinterpret_cast<const char*>(ups_.data());
  if (p >= u0 && p < u0 + ups_.size() * sizeof(UpConn)) {
    UpConn& u = static_cast<UpConn&>(n);
    if (u.state == UState::idle) on_idle_timer(u);
    return;
  }
  Conn& c = static_cast<Conn&>(n);
  const uint64_t now = env_.now_ms;
  const config::HttpConf& hc = listeners_[c.listener].conf->http;
  switch (c.state) {
    case CState::free: return;
    case CState::head:
      if (c.in.size() > 0 && now >= c.started_ms + hc.client_header_timeout_ms) {
        refuse_head(c, HttpOutcome::client_timeout, 408);  // logged with "-" for the request, as nginx's 408
        if (c.state != CState::free) drive(c);
        return;
      }
      if (c.in.size() == 0) {
        close_conn(c);  // silent: client_header_timeout_ms, or keepalive_timeout_ms (draining: kDrainIdleMs)
        return;
      }
      break;
    case CState::busy: {
      if (c.fd_wait && c.up == kNone && now >= c.fd_retry_ms) {
        connect_next(c);
        if (c.state != CState::free) drive(c);  // sends, or arms the next try
        return;
      }
      UpConn* u = c.up != kNone ? &ups_[c.up] : nullptr;
      if (u) {
        // Which timeout it was names the failure in the host's event.
        const int timed_out = u->state == UState::connecting && now >= c.u_write_ms + c.u_connect_ms ? ETIMEDOUT
                              : waits_for_host(c, *u) && now >= std::max(c.u_read_ms, c.u_write_ms) + c.u_read_ms_max
                                  ? net::kErrNoAnswer
                              : u->state == UState::busy && !u->u_out && now >= c.u_write_ms + c.u_send_ms_max &&
                                      (c.rq.size() > 0 || c.sent < c.body_end)
                                  ? net::kErrNotTaken
                                  : 0;
        if (timed_out != 0) {
          if (c.resp_started) {
            close_conn(c);  // mid-response: nothing to answer with
            return;
          }
          upstream_failed(c, kFailTimeout, timed_out);
          if (c.state != CState::free) drive(c);
          return;
        }
      }
      if (!c.req_body_done && !request_stalled(c) && now >= c.c_read_ms + hc.client_body_timeout_ms) {
        count(HttpOutcome::client_timeout);
        if (c.resp_started) close_conn(c);
        else respond_error(c, 408, false);
        if (c.state != CState::free) drive(c);
        return;
      }
      if (!c.c_out && (c.out.size() > 0 || c.rs.head < c.rs_dec) && now >= c.c_write_ms + hc.send_timeout_ms) {
        close_conn(c);
        return;
      }
      break;
    }
    case CState::tunnel: {
      const uint32_t idle = c.u_idle_ms;
      if (now >= std::max({c.c_read_ms, c.c_write_ms, c.u_read_ms, c.u_write_ms}) + idle) {
        close_conn(c);
        return;
      }
      // A side that takes nothing of what waits for it: send_timeout_ms for
      // the client, the upstream's send_timeout_ms for the host, between two
      // writes, as nginx times an upgraded connection's blocked writes. The
      // idle timeout alone never cut a client that stopped reading while it
      // (or the host) kept sending.
      if (tunnel_send_timed_out(c, hc, now)) {
        close_conn(c);
        return;
      }
      break;
    }
    case CState::closing:
      if (now >= c.started_ms + kLingerMs) {
        close_conn(c);
        return;
      }
      break;
  }
  arm(c);
}

bool HttpProxy::tunnel_send_timed_out(const Conn& c, const config::HttpConf& hc, uint64_t now) const noexcept {
  if (!c.c_out && (c.out.size() > 0 || c.rs.size() > 0) && now >= c.c_write_ms + hc.send_timeout_ms) return true;
  return c.up != kNone && !ups_[c.up].u_out && c.in.size() > 0 && now >= c.u_write_ms + c.u_send_ms_max;
}

void HttpProxy::arm(Conn& c) noexcept {
  if (c.state == CState::free) return;
  const config::HttpConf& hc = listeners_[c.listener].conf->http;
  uint64_t d = ~0ull;
  auto at = [&d](uint64_t t) { d = std::min(d, t); };
  switch (c.state) {
    case CState::free: return;
    case CState::head:
      if (c.in.size() > 0) {
        at(c.started_ms + hc.client_header_timeout_ms);
      } else {
        // A new connection waits for its first request as long as a head
        // may take (nginx's client_header_timeout); between requests, it is
        // keepalive_timeout_ms.
        uint64_t idle = c.requests == 0 ? hc.client_header_timeout_ms : hc.keepalive_timeout_ms;
        if (draining_) idle = std::min<uint64_t>(idle, kDrainIdleMs);
        at(c.c_read_ms + idle);
      }
      break;
    case CState::busy: {
      if (c.fd_wait && c.up == kNone) at(c.fd_retry_ms);
      const UpConn* u = c.up != kNone ? &ups_[c.up] : nullptr;
      if (u) {
        if (u->state == UState::connecting) at(c.u_write_ms + c.u_connect_ms);
        if (waits_for_host(c, *u)) at(std::max(c.u_read_ms, c.u_write_ms) + c.u_read_ms_max);
        if (u->state == UState::busy && !u->u_out && (c.rq.size() > 0 || c.sent < c.body_end))
          at(c.u_write_ms + c.u_send_ms_max);
      }
      if (!c.req_body_done && !request_stalled(c)) at(c.c_read_ms + hc.client_body_timeout_ms);
      if (!c.c_out && (c.out.size() > 0 || c.rs.head < c.rs_dec)) at(c.c_write_ms + hc.send_timeout_ms);
      break;
    }
    case CState::tunnel: {
      at(std::max({c.c_read_ms, c.c_write_ms, c.u_read_ms, c.u_write_ms}) + c.u_idle_ms);
      if (!c.c_out && (c.out.size() > 0 || c.rs.size() > 0)) at(c.c_write_ms + hc.send_timeout_ms);
      if (c.up != kNone && !ups_[c.up].u_out && c.in.size() > 0) at(c.u_write_ms + c.u_send_ms_max);
      break;
    }
    case CState::closing: at(c.started_ms + kLingerMs); break;
  }
  if (d == ~0ull) env_.timers->cancel(c);
  else if (!c.linked() || c.deadline_ms != d) env_.timers->schedule(c, d);
}

// ---------------------------------------------------------------------------
// the client side

void HttpProxy::drive(Conn& c) noexcept {
  const uint32_t gen = c.gen;
  for (;;) {
    bool progress = false;
    switch (c.state) {
      case CState::free: return;
      case CState::head: progress = read_client(c); break;
      case CState::busy: {
        if (!c.req_body_done && c.c_in) progress |= read_client(c);
        if (c.state != CState::busy || c.gen != gen) break;
        if (c.req_body_done && c.c_hup && c.c_in) progress |= read_client(c);  // a FIN or reset while waiting
        if (c.state != CState::busy || c.gen != gen) break;
        UpConn* u = c.up != kNone ? &ups_[c.up] : nullptr;
        // Bytes nothing more is sent of (up_cut, resp_done) are dropped
        // whether or not the host's socket has room: a host that stopped
        // reading would otherwise hold them until send_timeout_ms.
        if (u && u->state == UState::busy && (u->u_out || c.up_cut || c.resp_done) &&
            (c.rq.size() > 0 || c.sent < c.body_end)) {
          progress |= send_upstream(c, *u);
          if (c.state != CState::busy || c.gen != gen) break;
        }
        u = c.up != kNone ? &ups_[c.up] : nullptr;
        if (u && u->state == UState::busy && u->u_in && !c.resp_done) {
          progress |= read_upstream(c, *u);
          if (c.state != CState::busy || c.gen != gen) break;
        }
        if (c.c_out && (c.out.size() > 0 || c.rs.head < c.rs_dec)) {
          progress |= flush_client(c);
          if (c.state != CState::busy || c.gen != gen) break;
        }
        if (c.resp_done && c.out.size() == 0 && c.rs.head >= c.rs_dec) {
          finish_request(c);
          progress = true;
        }
        break;
      }
      case CState::tunnel:
        pump_tunnel(c, ups_[c.up]);             // runs each side until it would block
        progress = c.state == CState::closing;  // end_tunnel(): the client is read on there
        break;
      case CState::closing:
        progress = flush_client(c);
        if (c.state != CState::closing || c.gen != gen) break;
        if (c.out.size() == 0) {
          if (!c.shut_wr) {
            if (c.client_close && c.req_body_done && !c.c_in && (!c.in.p || c.in.tail <= c.body_end)) {
              // The client said this request was its last ("Connection:
              // close", or HTTP/1.0 without keep-alive), it was read whole
              // and nothing follows it: no byte of the client's can come to
              // turn the close into a reset, so there is nothing to linger
              // for (nginx closes so too). The answer is the kernel's to
              // deliver, and under io_uring a send still in flight goes on.
              close_conn(c);
              return;
            }
            io_shutdown(c.fd, c.io);
            c.shut_wr = true;
          }
          // Read and drop whatever the client still sends, until its FIN.
          char sink[4096];
          while (c.c_in) {
            ssize_t n = io_recv(c.fd, c.io, sink, sizeof(sink));
            if (n > 0) {
              metrics::client_received(env_, c.listener, static_cast<uint64_t>(n));
              continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
              c.c_in = false;
              break;
            }
            close_conn(c);  // FIN or error: done
            return;
          }
        }
        progress = false;
        break;
    }
    if (c.state == CState::free || c.gen != gen) return;
    if (!progress) break;
  }
  arm(c);
}

// Reads from the client into `in`. In state head it also parses; in busy it
// feeds the request body decoder. Returns whether anything happened.
bool HttpProxy::read_client(Conn& c) noexcept {
  if (c.state == CState::head) {
    if (c.scan < c.in.head || c.scan > c.in.tail) {  // the buffer was given back or moved
      c.scan = c.in.head;
      c.line = {};
    }
    // A pipelined request may already be whole in the buffer.
    if (c.in.size() > 0 && c.scan < c.in.tail) {
      const ListenerRt& l = listeners_[c.listener];
      const bool end = head_end_in(c.in.p, c.in.head, c.scan, c.in.tail);
      c.scan = c.in.tail;
      // A head still arriving is parsed once whole, but refused as soon as its
      // request line cannot begin a request (nginx does; a TLS ClientHello on
      // this port would otherwise wait for client_header_timeout_ms).
      if (end || c.in.size() >= l.limits.max_head || !request_line_ok(c)) {
        parse_request(c);
        return true;
      }
    }
    if (c.c_eof) {
      close_conn(c);  // the FIN came before the rest of this head: it is dropped, as nginx does
      return false;
    }
    if (!c.c_in) return false;
    if (!acquire(c.in)) {
      close_conn(c);  // out of buffer memory
      return false;
    }
    if (c.in.head > 0) {  // the previous request's bytes are done with
      const uint32_t n = c.in.size();
      std::memmove(c.in.p, c.in.p + c.in.head, n);
      c.scan -= c.in.head;
      c.in.head = 0;
      c.in.tail = n;
    }
    const uint32_t room = kBufSize - c.in.tail;
    if (room == 0) {
      // Only leading empty lines can fill the buffer without the parser
      // having refused the head already.
      refuse_head(c, HttpOutcome::bad_request, 431);
      return true;
    }
    const ssize_t n = io_recv(c.fd, c.io, c.in.p + c.in.tail, room);
    if (n > 0) {
      metrics::client_received(env_, c.listener, static_cast<uint64_t>(n));
      if (c.in.size() == 0) c.started_ms = env_.now_ms;
      c.in.tail += static_cast<uint32_t>(n);
      c.c_read_ms = env_.now_ms;
      if (static_cast<uint32_t>(n) < room && !c.c_hup) c.c_in = false;  // edge-triggered: a short read drained it
      return true;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      close_conn(c);  // the client is gone; an unfinished head is dropped as nginx does
      return false;
    }
    if (errno == EINTR) return true;
    c.c_in = false;
    if (c.in.size() == 0) release(c.in);  // an idle keep-alive connection holds no buffer
    return false;
  }

  // busy: the request body, or a FIN/reset while waiting for the response.
  if (!acquire(c.in)) {
    close_conn(c);
    return false;
  }
  if (c.in.tail == kBufSize) {
    // Make room: drop bytes already sent upstream, unless a retry may need
    // them; then give up on retries rather than stall.
    uint32_t keep = c.retryable ? c.body_start : c.sent;
    if (keep == 0 && c.retryable && c.sent > 0) {
      c.retryable = false;
      keep = c.sent;
    }
    if (keep == 0) return false;  // full of unsent bytes: back-pressure
    std::memmove(c.in.p, c.in.p + keep, c.in.tail - keep);
    c.in.tail -= keep;
    c.body_end -= keep;
    c.sent -= keep;
    c.body_start = c.body_start > keep ? c.body_start - keep : 0;
  }
  if (c.req_body_done) {
    // Only a FIN or reset is of interest now; pipelined bytes may follow in
    // the socket and are read once this request is done.
    const ssize_t n = io_peek(c.fd, c.io);
    if (n == 0) {
      // A half-close after a whole request is not an abort (HAProxy's
      // default); requests already buffered are answered, then we close.
      c.c_eof = true;
      c.c_in = false;
      c.c_hup = false;
      return false;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      close_conn(c);  // reset by the client: abort
      return false;
    }
    // n > 0: pipelined bytes, maybe a FIN behind them. Both flags stay set:
    // no new edge comes for either, and the head state reads them once this
    // request is done.
    if (n < 0) {
      c.c_in = false;
      c.c_hup = false;
    }
    return false;
  }
  const uint32_t room = kBufSize - c.in.tail;
  const ssize_t n = io_recv(c.fd, c.io, c.in.p + c.in.tail, room);
  if (n > 0) {
    metrics::client_received(env_, c.listener, static_cast<uint64_t>(n));
    c.in.tail += static_cast<uint32_t>(n);
    c.c_read_ms = env_.now_ms;
    if (static_cast<uint32_t>(n) < room && !c.c_hup) c.c_in = false;
    pump_request_body(c);
    return true;
  }
  if (n == 0 && c.resp_done) {
    // The FIN cuts the body short, but the host has answered whole (early):
    // the answer still goes out (it says Connection: close), then we close.
    c.c_eof = true;
    c.c_in = c.c_hup = false;
    return false;
  }
  if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    // The body ended early: the request is incomplete; nothing can be answered.
    close_conn(c);
    return false;
  }
  if (errno == EINTR) return true;
  c.c_in = false;
  return false;
}

bool HttpProxy::request_stalled(const Conn& c) noexcept {
  // read_client() makes room by dropping bytes already sent: none are.
  return !c.req_body_done && c.in.p && c.in.tail == kBufSize && c.sent == 0;
}

// Runs the request body decoder over the bytes read so far.
void HttpProxy::pump_request_body(Conn& c) noexcept {
  while (!c.req_body_done && c.body_end < c.in.tail) {
    http::BodyStep st = c.req_body.decode(std::string_view(c.in.p + c.body_end, c.in.tail - c.body_end));
    c.body_end += static_cast<uint32_t>(st.consumed);
    c.req_bytes += st.consumed;  // as on the wire: a dropped trailer line too
    if (st.drop > 0) {
      // A hop-by-hop trailer field: the decoder held its line (not sent), so
      // it is cut out of the buffer here.
      std::memmove(c.in.p + c.body_end - st.drop, c.in.p + c.body_end, c.in.tail - c.body_end);
      c.in.tail -= st.drop;
      c.body_end -= st.drop;
    }
    if (st.status == http::BodyStatus::done) {
      c.req_body_done = true;
    } else if (st.status == http::BodyStatus::error) {
      count(HttpOutcome::bad_request);
      // 400, or 431 for a trailer section over its limit, as a head over max_header_bytes.
      if (c.resp_started) close_conn(c);
      else respond_error(c, http::error_status(st.error), false);
      return;
    } else if (st.consumed == 0) {
      break;
    }
  }
  if (c.req_body.done()) c.req_body_done = true;
}

void HttpProxy::refuse_head(Conn& c, HttpOutcome o, int status, const http::Head& line) noexcept {
  count(o);
  // No request began: nothing of the connection's last one may shape the
  // answer (a HEAD's bodiless answer, a response begun) or its log line. A
  // HEAD whose method was read gets its error without content (RFC 9110
  // 9.3.2), as nginx answers it.
  c.state = CState::busy;
  c.resp_started = c.resp_done = false;
  c.head_req = line.method == http::Method::head;
  c.route = 0xffff;
  c.attempts = 0;
  c.consumer.clear();
  if (listeners_[c.listener].log) {
    log_begin(c, line);         // logged with "-" for the request if its line was not read
    c.req_bytes = c.in.size();  // what was read of the head (the connection closes: all of it)
  }
  respond_error(c, status, false);
}

// State head, the head not yet whole: whether its request line, as far as it
// has come, may still begin a request. Looks only at bytes not looked at
// before (a head sent byte by byte costs O(head)); the error itself is found
// again by parse_request(), which the parser guarantees gives the same.
bool HttpProxy::request_line_ok(Conn& c) noexcept {
  if (c.line.done) return true;
  const ListenerRt& l = listeners_[c.listener];
  http::Parser p(http::Parser::Kind::request, std::span<http::Field>(fields_.data(), l.conf->http.max_headers),
                 l.limits);
  return p.check_request_line(std::string_view(c.in.p + c.in.head, c.in.size()), c.line) != http::ParseStatus::error;
}

void HttpProxy::parse_request(Conn& c) noexcept {
  const ListenerRt& l = listeners_[c.listener];
  http::Parser p(http::Parser::Kind::request, std::span<http::Field>(fields_.data(), l.conf->http.max_headers),
                 l.limits);
  const http::ParseStatus st = p.parse(std::string_view(c.in.p + c.in.head, c.in.size()));
  if (st == http::ParseStatus::need_more) return;  // more bytes are needed: read on
  bump(env_.seg->worker(env_.worker).http_requests);
  metrics::http_request(env_, c.listener);
  if (st == http::ParseStatus::error) {
    // A bad header field after a whole request line: the line is logged (as
    // nginx logs a 400's), not its fields, which were not all read.
    http::Head line;
    // A HEAD's answer has no content, refused or not, also when the error is
    // in the rest of its request line (505, a bad or overlong target), as
    // nginx answers it.
    if (!p.head().method_name.empty()) line.method = p.head().method;
    if (p.request_line_read()) {
      line.method_name = p.head().method_name;
      line.target = p.head().target;
      line.version = p.head().version;
    }
    refuse_head(c, HttpOutcome::bad_request, http::error_status(p.error()), line);
    return;
  }
  start_request(c, p.head());
}

void HttpProxy::start_request(Conn& c, const http::Head& h) noexcept {
  const ListenerRt& l = listeners_[c.listener];
  c.state = CState::busy;
  ++c.requests;
  c.http10 = h.version == http::Version::http10;
  c.head_req = h.method == http::Method::head;
  c.idempotent = idempotent(h.method);
  // Only WebSocket becomes a tunnel. Any other Upgrade (h2c above all) is
  // forwarded as a plain request without it: a tunnel to a host speaking
  // another protocol would carry later requests past routes, rules, auth
  // and limits ("h2c smuggling").
  c.upgrade = h.websocket;
  c.keep_alive = h.keep_alive && !draining_ && c.requests < l.conf->http.keepalive_requests &&
                 l.conf->http.keepalive_timeout_ms > 0;
  c.client_close = !h.keep_alive;
  c.resp_started = c.resp_done = c.dechunk = c.resp_close = c.up_cut = false;
  c.req_body_done = false;
  c.retryable = true;
  c.attempts = 0;
  c.last_fail = kFailError;
  c.fd_wait = false;
  c.fd_wait_until_ms = 0;
  c.rule = -1;
  c.upstream = -1;
  c.u_connect_ms = c.u_read_ms_max = c.u_send_ms_max = c.u_idle_ms = 0;
  c.route = 0xffff;
  c.first_try_ms = env_.now_ms;
  c.u_read_ms = c.u_write_ms = c.c_write_ms = env_.now_ms;
  c.rs_dec = 0;
  c.scan = 0;  // now searches the response buffer
  c.up_keep = false;
  c.up_closes = false;
  c.last_status = 0;
  c.method = h.method;
  if (l.log) log_begin(c, h);

  c.consumer.clear();

  // The body: from right after the head; the head itself is done with once
  // the request head for the upstream is written below.
  c.body_start = c.body_end = c.sent = c.in.head + h.head_len;
  c.req_body.reset(h);
  c.req_body.filter_trailers(h);  // the fields Connection names are hop-by-hop in trailers too

  if (h.method == http::Method::connect) {
    // A reverse proxy does not open tunnels to arbitrary authorities.
    count(HttpOutcome::bad_request);
    respond_error(c, 501, false);
    return;
  }

  // Host and path: an absolute-form target names them itself (RFC 9112 3.2.2).
  std::string_view host = h.host, target = h.target, path = h.target;
  if (h.target_form == http::TargetForm::absolute) {
    host = h.authority;
    target = after_authority(h);
    if (target.empty()) target = "/";
    path = target;
  } else if (h.target_form == http::TargetForm::asterisk) {
    path = "/";
  }
  if (auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
  if (path.empty()) path = "/";  // "http://host?q" has the empty path, that is "/" (RFC 9112 3.2.2)
  // Routes (and so their auth and limits) match the normalised path; the
  // target goes to the host as sent (nginx's proxy_pass without a URI).
  const int path_len = normalize_path(path, path_buf_.data());
  if (path_len < 0) {
    count(HttpOutcome::bad_request);
    pump_request_body(c);
    if (c.state != CState::busy) return;  // the body itself was bad: answered (400) and closed
    respond_error(c, 400, true);
    return;
  }
  path = std::string_view(path_buf_.data(), static_cast<size_t>(path_len));

  int slash = -1;
  const int ri = match_route(l, host_without_port(host), path, slash);
  if (slash >= 0) {
    // "/admin" where a route is "/admin/": a 301 to it, as nginx answers for
    // a prefix location ending in '/'. Routed to a shorter prefix instead
    // ("/"), the request would skip the "/admin/" route's auth and limits,
    // and most hosts serve "/admin" as "/admin/".
    redirect_to_slash(c, target, routes_[static_cast<size_t>(slash)].conf->path);
    return;
  }
  if (ri < 0) {
    count(HttpOutcome::no_route);
    pump_request_body(c);
    if (c.state != CState::busy) return;  // the body itself was bad: answered (400) and closed
    respond_error(c, 404, true);
    return;
  }
  c.route = static_cast<uint16_t>(ri);
  const RouteRt& route = routes_[static_cast<size_t>(ri)];

  // The hash key (also the client key of percentage rules).
  std::string_view key;
  bool have_key = false;
  const std::string_view ip(c.ip, c.ip_len);
  const config::RouteConf& rc = *route.conf;
  switch (rc.hash_key) {
    case config::HashKey::ip:
    case config::HashKey::frame: break;
    case config::HashKey::header:
      if (const http::Field* f = http::find_field(h, rc.hash_key_name)) key = f->value, have_key = true;
      break;
    case config::HashKey::cookie:
      for (const http::Field& f : h.fields)
        if (iequals(f.name, "cookie") && nginx_cookie(f.value, rc.hash_key_name, key)) {
          have_key = true;
          break;
        }
      break;
    case config::HashKey::arg:
      if (auto q = target.find('?'); q != std::string_view::npos)
        have_key = find_arg(target.substr(q + 1), rc.hash_key_name, key);
      break;
    case config::HashKey::uri:
      // nginx's $request_uri: the target as sent, from its path on when it
      // came in absolute form (http://host/p?q hashes as /p?q).
      key = target;
      have_key = true;
      break;
  }
  // The client address as nginx's $remote_addr writes it.
  if (rc.hash_key == config::HashKey::ip) key = ip, have_key = true;
  // Kept as its CRC32 and length, which is all the hash methods need: a key
  // of any length hashes as nginx hashes it, and the head may go before a
  // retry picks again. An empty key is a missing key (round robin, counted).
  c.key = have_key ? balance::HashKey::of(key) : balance::HashKey{};

  // The route's guard: auth, then limit_req (gw::api::Guard), before the rules.
  if (env_.guard && env_.guard->active(c.listener, static_cast<uint32_t>(ri) - l.first_route)) {
    const api::Verdict v = env_.guard->check(c.listener, static_cast<uint32_t>(ri) - l.first_route, {&h, target, ip},
                                             c.consumer, env_.now_ms);
    if (v.status) {
      pump_request_body(c);
      if (c.state != CState::busy) return;  // the body itself was bad: answered (400) and closed
      respond_error(c, v.status, true, v.headers);
      return;
    }
  }

  // Rules (first match wins), then the route's own upstream. A percentage
  // hashes the route's key when the request has one, else the client address.
  const int rule = match_rule(route, c, h, c.key.empty() ? balance::HashKey::of(ip) : c.key);
  c.rule = static_cast<int32_t>(rule);
  if (rule >= 0 && c.lg.p) {
    // The rule's id, for the access log (the rule may change before the request ends).
    const std::string_view id = rules_[static_cast<size_t>(rule)].id;
    const size_t n = std::min<size_t>(id.size(), kBufSize - c.lg.tail);
    if (n) std::memcpy(c.lg.p + c.lg.tail, id.data(), n);
    c.lg.tail += static_cast<uint32_t>(n);
    c.lg_len[Conn::kRule] = static_cast<uint16_t>(n);
  }
  if (rule >= 0) metrics::rule_hit(env_, rules_[static_cast<size_t>(rule)].id);
  c.upstream = static_cast<int32_t>(rule >= 0 ? rules_[static_cast<size_t>(rule)].upstream : route.upstream);
  if (c.upstream < 0) {
    // The route's upstream is not in the table: nothing can serve it.
    count(HttpOutcome::no_host);
    bump(env_.seg->worker(env_.worker).no_host);
    pump_request_body(c);
    if (c.state != CState::busy) return;  // the body itself was bad: answered (400) and closed
    respond_error(c, 503, true);
    return;
  }
  {
    // Its timeouts, kept with the request (see Conn::u_connect_ms). An
    // upstream the table has and this worker's config does not (a newer
    // table while this worker drains) gets the config's defaults.
    static const config::UpstreamConf kDefaults{};
    const config::UpstreamConf* uc = upstream_rt(c.upstream).conf;
    if (!uc) uc = &kDefaults;
    const balance::UpstreamView& uv = env_.snap->upstreams()[static_cast<size_t>(c.upstream)];
    c.u_connect_ms = uv.connect_timeout_ms;
    c.u_idle_ms = uv.idle_timeout_ms;
    c.u_read_ms_max = uc->read_timeout_ms;
    c.u_send_ms_max = uc->send_timeout_ms;
  }

  if (!acquire(c.rq)) {
    // The worker is out of buffer memory: its own trouble, not the client's
    // (it was a 431) nor a host's. 503, as for a worker short of descriptors;
    // the head's buffer is let go for the answer, and nothing more of the
    // client's is read (the connection closes after it).
    count(HttpOutcome::local_error);
    release(c.in);
    respond_error(c, 503, false);
    return;
  }
  if (!build_request_head(c, h, route)) {
    // The head with the fields gw adds does not fit its buffer.
    count(HttpOutcome::bad_request);
    respond_error(c, 431, false);
    return;
  }
  c.in.head = c.body_start;  // the head's bytes are no longer needed
  pump_request_body(c);
  if (c.state != CState::busy) return;
  if (c.c_eof && !c.req_body_done) {
    // A request pipelined before the client's FIN whose body is cut short by
    // it: the rest can never come, so it is not sent anywhere.
    close_conn(c);
    return;
  }
  connect_next(c);
}

int HttpProxy::match_route(const ListenerRt& l, std::string_view host, std::string_view path,
                           int& slash) const noexcept {
  slash = -1;
  // The most specific host pattern first: exact, the longest "*.suffix", "*".
  int best_rank = -1;
  std::string_view best_host;
  for (uint32_t i = 0; i < l.n_routes; ++i) {
    const RouteRt& r = routes_[l.first_route + i];
    int rank = -1;
    switch (r.host_kind) {
      case HostKind::exact:
        if (iequals(host, r.host)) rank = 3 << 16;
        break;
      case HostKind::suffix:
        if (host.size() > r.host.size() && iends_with(host, r.host)) rank = (2 << 16) + static_cast<int>(r.host.size());
        break;
      case HostKind::any: rank = 1 << 16; break;
    }
    if (rank > best_rank) {
      best_rank = rank;
      best_host = r.host;
    }
  }
  if (best_rank < 0) return -1;
  // Then the longest path prefix among that host's routes.
  int best = -1;
  size_t best_len = 0;
  for (uint32_t i = 0; i < l.n_routes; ++i) {
    const RouteRt& r = routes_[l.first_route + i];
    const int rank = r.host_kind == HostKind::exact    ? 3 << 16
                     : r.host_kind == HostKind::suffix ? (2 << 16) + static_cast<int>(r.host.size())
                                                       : 1 << 16;
    if (rank != best_rank || r.host != best_host) continue;
    const std::string& prefix = r.conf->path;
    if (path.starts_with(prefix) && (best < 0 || prefix.size() > best_len)) {
      best = static_cast<int>(l.first_route + i);
      best_len = prefix.size();
    }
    if (prefix.size() == path.size() + 1 && prefix.back() == '/' && prefix.starts_with(path))
      slash = static_cast<int>(l.first_route + i);
  }
  if (best >= 0 && best_len == path.size()) slash = -1;  // a route is the path itself
  return best;
}

void HttpProxy::redirect_to_slash(Conn& c, std::string_view target, std::string_view prefix) noexcept {
  // Location: the route's path and the request's query, as nginx sends the
  // location's name and $args. Made in path_buf_ (the path is done with)
  // before the body is read past (which may move the head's bytes).
  const size_t q = target.find('?');
  const std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q);
  // The route's path is decoded (a request's %XX is decoded before
  // matching): bytes a path segment cannot hold as they are go back to %XX
  // (RFC 3986 3.3), as nginx escapes a location's name.
  const auto plain = [](unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           std::string_view("-._~!$&'()*+,;=:@/").find(static_cast<char>(ch)) != std::string_view::npos;
  };
  constexpr std::string_view kField = "Location: ";
  size_t n = kField.size() + query.size() + 2;
  for (char ch : prefix) n += plain(static_cast<unsigned char>(ch)) ? 1 : 3;
  // The answer's head must fit its buffer: a longer one (a query of
  // kilobytes) is a 414, the target being too long to send back.
  const bool fits = n <= path_buf_.size() / 2;
  if (fits) {
    char* p = path_buf_.data();
    size_t k = kField.size();
    std::memcpy(p, kField.data(), k);
    for (char ch : prefix) {
      const auto u = static_cast<unsigned char>(ch);
      if (plain(u)) {
        p[k++] = ch;
      } else {
        p[k++] = '%';
        p[k++] = "0123456789ABCDEF"[u >> 4];
        p[k++] = "0123456789ABCDEF"[u & 15];
      }
    }
    if (!query.empty()) std::memcpy(p + k, query.data(), query.size());
    std::memcpy(p + n - 2, "\r\n", 2);
  }
  pump_request_body(c);
  if (c.state != CState::busy) return;  // the body itself was bad: answered (400) and closed
  if (!fits) {
    respond_error(c, 414, true);
    return;
  }
  respond_error(c, 301, true, std::string_view(path_buf_.data(), n));
}

int HttpProxy::match_rule(const RouteRt& r, const Conn& c, const http::Head& h,
                          balance::HashKey client_key) const noexcept {
  for (uint32_t k = 0; k < r.n_rules; ++k) {
    const RuleRt& rule = rules_[r.first_rule + k];
    if (rule.upstream < 0) continue;
    if (rule.match & shm::kMatchIp) {
      auto cidrs = env_.snap->table().cidrs();
      bool in = false;
      for (uint32_t i = 0; i < rule.n_cidrs && !in; ++i)
        in = rule.first_cidr + i < cidrs.size() && cidrs[rule.first_cidr + i].contains(c.peer);
      if (!in) continue;
    }
    if (rule.match & shm::kMatchHeader) {
      bool ok = false;
      for (const http::Field& f : h.fields)
        if (iequals(f.name, rule.header_name) && f.value == rule.header_value) {
          ok = true;
          break;
        }
      if (!ok) continue;
    }
    if (rule.match & shm::kMatchCookie) {
      bool ok = false;
      std::string_view v;
      for (const http::Field& f : h.fields)
        if (iequals(f.name, "cookie") && find_cookie(f.value, rule.cookie_name, v) && v == rule.cookie_value) {
          ok = true;
          break;
        }
      if (!ok) continue;
    }
    if (rule.match & shm::kMatchPercent) {
      // A stable share: the same client key always falls on the same side.
      const uint32_t bucket = client_key.crc % shm::kPercentScale;
      if (bucket >= rule.percent_bp) continue;
    }
    return static_cast<int>(r.first_rule + k);
  }
  return -1;
}

namespace {

// "IP:PORT" or "[IPv6]:PORT" of a socket's local end, in `buf` (no
// allocation: a request's path); empty if the socket has none (RFC 9112 3.2
// allows an empty Host where there is no authority).
std::string_view local_authority(int fd, char (&buf)[INET6_ADDRSTRLEN + 8]) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  const core::SockAddr a = core::SockAddr::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss));
  const bool v6 = a.family == AF_INET6;
  if (a.family != AF_INET && !v6) return {};
  char ip[INET6_ADDRSTRLEN];
  if (!::inet_ntop(a.family, a.ip, ip, sizeof(ip))) return {};
  const auto r = v6 ? fmt::format_to_n(buf, sizeof(buf), "[{}]:{}", ip, a.port)
                    : fmt::format_to_n(buf, sizeof(buf), "{}:{}", ip, a.port);
  return {buf, std::min(r.size, sizeof(buf))};
}

}  // namespace

bool HttpProxy::build_request_head(Conn& c, const http::Head& h, const RouteRt& route) noexcept {
  if (!acquire(c.rq)) return false;  // (the caller has taken it)
  Writer w{c.rq.p, 0, kBufSize};
  std::string_view target = h.target;
  std::string_view host = h.has_host ? h.host : std::string_view{};
  if (h.target_form == http::TargetForm::absolute) {
    host = h.authority;
    target = after_authority(h);
  }
  // An absolute-form target's empty path ("http://a", "http://a?q") is "/" in
  // origin-form, but "OPTIONS http://a" asks about the server: "*" (RFC 9112 3.2.4).
  w.add(h.method_name).add(" ");
  if (target.empty() && h.method == http::Method::options) w.add("*");
  else if (target.empty() || target.front() == '?') w.add("/");
  w.add(target).add(" HTTP/1.1\r\n");
  if (!route.conf->set_host.empty()) host = route.conf->set_host;
  // HTTP/1.0 without Host, sent up as HTTP/1.1, which needs one: the address
  // the client connected to (RFC 9112 3.3, the connection's local address and
  // port), the listener's unless that is the wildcard address, which is no
  // name of this server (nor an address a link built from it could reach).
  char local[INET6_ADDRSTRLEN + 8];
  if (host.empty())
    host = listeners_[c.listener].wildcard ? local_authority(c.fd, local) : listeners_[c.listener].listen_text;
  w.field("Host", host);
  const std::string_view ip(c.ip, c.ip_len);
  const bool underscores = listeners_[c.listener].conf->http.underscores_in_headers;
  for (const http::Field& f : h.fields) {
    if (f.hop_by_hop || f.id == http::FieldId::host || f.id == http::FieldId::content_length) continue;
    // A 100-continue expectation in an HTTP/1.0 request is ignored (RFC 9110
    // 10.1.1): not passed on in this HTTP/1.1 request, where a host would act on it.
    if (f.id == http::FieldId::expect && h.version == http::Version::http10 && http::iequals(f.value, "100-continue"))
      continue;
    if (!underscores && f.name.find('_') != std::string_view::npos) continue;  // as nginx does by default
    // Written below (a client's X-Consumer-Username is never passed on). With
    // underscores allowed, X_Real_IP reaches a CGI/WSGI/PHP host as the same
    // HTTP_X_REAL_IP: '_' matches '-' here.
    if (names_alike(f.name, "x-forwarded-for") || names_alike(f.name, "x-real-ip") ||
        names_alike(f.name, "x-forwarded-proto") || names_alike(f.name, "x-consumer-username"))
      continue;
    w.field(f.name, f.value);
  }
  // X-Forwarded-For is appended to, as nginx's $proxy_add_x_forwarded_for:
  // the client's lines merged into one, then this client's address.
  w.add("X-Forwarded-For: ");
  for (const http::Field& f : h.fields)
    if (iequals(f.name, "x-forwarded-for") && !f.value.empty()) w.add(f.value).add(", ");
  w.add(ip).add("\r\n");
  w.field("X-Real-IP", ip).field("X-Forwarded-Proto", "http");
  if (c.consumer.len) w.field("X-Consumer-Username", c.consumer.view());
  switch (h.body) {
    case http::BodyKind::length: w.add("Content-Length: ").num(h.content_length).add("\r\n"); break;
    case http::BodyKind::chunked:
      // The client's codings (chunked last): the body is forwarded with its framing.
      write_transfer_codings(w, h);
      break;
    default: break;
  }
  const config::UpstreamConf* uc = upstreams_[static_cast<size_t>(c.upstream)].conf;
  if (c.upgrade) {
    w.field("Connection", "upgrade").field("Upgrade", "websocket");  // not the rest of the client's list
  } else if (!uc || uc->keepalive.max_idle == 0) {
    w.field("Connection", "close");
  }
  w.add("\r\n");
  if (w.overflow) return false;
  c.rq.head = 0;
  c.rq.tail = w.len;
  return true;
}

// ---------------------------------------------------------------------------
// the upstream side

void HttpProxy::connect_next(Conn& c, bool resend) noexcept {
  const balance::Snapshot& snap = *env_.snap;
  const int ui = c.upstream;
  if (ui < 0 || static_cast<size_t>(ui) >= snap.upstreams().size()) {
    count(HttpOutcome::no_host);  // a table change removed the upstream (e.g. during a wait for a descriptor)
    respond_error(c, 503, true);
    return;
  }
  const UpstreamRt& ur = upstreams_[static_cast<size_t>(ui)];
  const config::UpstreamConf* uc = ur.conf;
  auto hosts = snap.table().hosts();
  // Back from a wait for a descriptor, or sending again after a kept-alive
  // connection the host closed as it was reused: not a retry (the access
  // log's retries leave both out too).
  bool resumed = c.fd_wait || resend;
  c.fd_wait = false;
  while (c.attempts < ur.tries) {
    if (c.attempts > 0 && uc && uc->retry.timeout_ms && env_.now_ms - c.first_try_ms >= uc->retry.timeout_ms) break;
    const int h = pick_host(env_, ui, c.key, std::span<const uint32_t>(c.tried, c.attempts), rng_, c.attempts == 0);
    if (h < 0) break;
    const shm::HostRecord& r = hosts[static_cast<size_t>(h)];
    if (c.attempts > 0 && !resumed) bump(env_.seg->worker(env_.worker).http_retries);
    resumed = false;
    c.tried[c.attempts++] = r.slot;
    // The log's upstream address, status and time are this host's, once it is
    // contacted; a local failure before that puts the last host's back.
    const core::SockAddr prev_addr = c.up_addr;
    const uint16_t prev_status = c.up_status;
    const int64_t prev_ms = c.up_ms;
    auto not_contacted = [&] {
      c.up_addr = prev_addr;
      c.up_status = prev_status;
      c.up_ms = prev_ms;
    };
    c.up_addr = r.addr;
    c.up_status = 0;
    c.up_ms = -1;
    c.rq.head = 0;          // (re)send the whole head
    c.sent = c.body_start;  // and the body from its first byte
    c.up_cut = false;       // to a host that has none of it yet
    c.u_read_ms = c.u_write_ms = env_.now_ms;
    if (UpConn* idle = idle_take(r.slot, r.tag, c.idempotent && c.retryable && c.req_body_done)) {
      UpConn& u = *idle;
      u.state = UState::busy;
      u.owner = index_of(c);
      u.reused = true;
      u.interim = false;
      u.upstream = static_cast<int32_t>(ui);
      u.bound = true;
      u.u_out = true;  // an idle connection's send buffer is empty
      ++u.requests;
      shm::counter_open(env_.seg->counter(env_.worker, r.slot), r.tag);
      u.connect_start_ns = core::monotonic_ns();  // this attempt's start, for its response time
      c.up = index_of(u);
      bump(env_.seg->worker(env_.worker).http_keepalive_reused);
      return;  // drive() sends
    }
    UpConn* up = new_up();
    // The upstream table (as large as the client table) is full: it holds
    // idle keep-alive connections then, as no client has more than one busy.
    if (!up && close_oldest_idle_up()) {
      up = new_up();
      if (env_.now_ms - last_table_full_log_ms_ >= 1000) {
        last_table_full_log_ms_ = env_.now_ms;
        GW_LOG_WARN("all {} upstream connection slots in use; closed the keep-alive connection idle longest",
                    ups_.capacity());
      }
    }
    if (!up) {
      not_contacted();
      c.last_fail = kFailLocal;
      break;
    }
    UpConn& u = *up;
    const uint32_t gen = u.gen;
    u = UpConn{};
    u.gen = gen;
    u.owner = index_of(c);
    u.upstream = static_cast<int32_t>(ui);
    u.host_slot = r.slot;
    u.host_tag = r.tag;
    u.host_weight = r.weight;
    u.requests = 1;
    u.connect_start_ns = core::monotonic_ns();
    int err = 0;
    int fd = net::connect_tcp(r.addr, err);
    if (fd < 0 && (err == EMFILE || err == ENFILE) && free_descriptor(err)) fd = net::connect_tcp(r.addr, err);
    if (fd < 0) {
      u.state = UState::busy;  // so that close_up() frees the slot
      close_up(u);
      if (!peer_error(err)) {
        // Out of descriptors (the open-files limit, lowered while gw runs or
        // taken by something else): nothing is wrong with the host, and the
        // request need not fail at once. The worker pauses accepting, and the
        // request waits (its client still sending the body, if any) and tries
        // again every kFdWaitMs, up to connect_timeout_ms from its first wait.
        not_contacted();
        if (wait_for_fd(env_, err, c.fd_wait_until_ms, c.u_connect_ms)) {
          --c.attempts;  // the host was not tried
          c.fd_wait = true;
          c.fd_retry_ms = env_.now_ms + kFdWaitMs;
          return;  // the caller (drive) arms the timer
        }
        if (env_.now_ms - last_error_log_ms_ >= 1000) {
          last_error_log_ms_ = env_.now_ms;
          GW_LOG_ERROR("cannot connect upstream: {}{} (a local error: no host is blamed)", std::strerror(err),
                       err == EMFILE || err == ENFILE ? " for connect_timeout_ms" : "");
        }
        c.last_fail = kFailLocal;
        break;
      }
      record_connect_failure(env_, ui, r.slot, r.tag, r.weight, err);
      c.last_fail = kFailError;
      if (!uc || !uc->retry.on_error) break;
      continue;
    }
    u.fd = fd;
    u.state = UState::connecting;
    shm::counter_open(env_.seg->counter(env_.worker, r.slot), r.tag);
    u.bound = true;
    c.up = index_of(u);
    if (!io_open(u.fd, u.io, up_data(u), err != 0)) {
      const int e = errno;
      close_up(u);  // (its connect may have begun: the log keeps this host)
      c.up = kNone;
      c.last_fail = kFailLocal;
      if (env_.now_ms - last_error_log_ms_ >= 1000) {
        last_error_log_ms_ = env_.now_ms;
        GW_LOG_ERROR("cannot watch an upstream socket: {}", io_open_error(e));
      }
      break;
    }
    if (err == 0) on_connected(c, u);
    return;
  }
  if (c.attempts == 0) {
    count(HttpOutcome::no_host);
    count_no_host(env_, c.listener, ui, c.attempts, last_no_host_log_ms_);
    respond_error(c, 503, true);
    return;
  }
  answer_failure(c);
}

bool HttpProxy::close_oldest_idle_up() noexcept {
  if (lru_tail_ == kNone) return false;
  close_up(ups_[lru_tail_]);
  return true;
}

bool HttpProxy::free_descriptor(int err) noexcept {
  if (env_.now_ms < no_fd_to_free_until_ms_) return false;
  const char* what = nullptr;
  if (close_oldest_idle_up()) what = "an idle upstream keep-alive connection";
  if (!what && reclaim_idle(1) > 0) what = "an idle client keep-alive connection";
  if (!what) {
    no_fd_to_free_until_ms_ = env_.now_ms + kFdWaitMs;
    return false;
  }
  if (env_.now_ms - last_fd_log_ms_ >= 1000) {
    last_fd_log_ms_ = env_.now_ms;
    GW_LOG_WARN("upstream socket: {}; closed {} to make room", std::strerror(err), what);
  }
  return true;
}

void HttpProxy::answer_failure(Conn& c) noexcept {
  if (c.last_fail == kFailLocal) {
    // The worker is short of descriptors: closing this connection gives one back.
    count(HttpOutcome::local_error);
    respond_error(c, 503, false);
  } else if (c.last_fail == kFailTimeout) {
    count(HttpOutcome::gateway_timeout);
    respond_error(c, 504, true);
  } else if (c.last_fail == kFailStatus && c.last_status >= 400) {
    // Every host answered with a status listed in retry.on: pass the last one
    // on (as nginx answers with the status of its last proxy_next_upstream try).
    if (c.last_status >= 500) count(HttpOutcome::bad_gateway);
    respond_error(c, c.last_status, true);
  } else {
    count(HttpOutcome::bad_gateway);
    respond_error(c, 502, true);
  }
}

void HttpProxy::on_connected(Conn& c, UpConn& u) noexcept {
  // Only the connect time here: the response decides whether the host did
  // well, and its time feeds the latency EWMA (parse_response()).
  record_connect_success(env_, u.host_slot, u.host_tag, u.connect_start_ns, false, false);
  u.state = UState::busy;
  u.u_out = true;
  c.u_write_ms = c.u_read_ms = env_.now_ms;
}

bool HttpProxy::send_upstream(Conn& c, UpConn& u) noexcept {
  bool progress = false;
  // While the request buffer is full gw does not read the client: its
  // client_body_timeout_ms starts over once the host has made room.
  const bool stalled = request_stalled(c);
  if (c.up_cut || c.resp_done) {
    // Dropped: see parse_response, and below. Once the answer is whole,
    // nothing more is wanted from the host (nginx sends nothing more once it
    // has answered): a send then could only fail or time out, and close the
    // client connection under an answer it has not yet taken. The host lacks
    // these bytes: its connection carries no other request.
    if (stalled) c.c_read_ms = env_.now_ms;
    c.sent = c.body_end;
    c.up_keep = false;
    return false;
  }
  while (c.rq.size() > 0 || c.sent < c.body_end) {
    iovec iov[2];
    int n_iov = 0;
    if (c.rq.size() > 0) iov[n_iov++] = {c.rq.p + c.rq.head, c.rq.size()};
    if (c.sent < c.body_end) iov[n_iov++] = {c.in.p + c.sent, c.body_end - c.sent};
    const ssize_t n = io_send(u.fd, u.io, iov, n_iov);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        u.u_out = false;
        return progress;
      }
      if (c.resp_started) {
        // The host reset, its answer begun: what it sent before the reset
        // is still read (all of the answer, maybe) and passed on; a read
        // finds where the reset cut it. Nothing more goes to the host.
        c.up_cut = true;
        c.up_keep = false;
        c.sent = c.body_end;
        u.u_in = true;
        return true;
      }
      upstream_failed(c, kFailError, errno);
      return true;
    }
    progress = true;
    metrics::host_sent(env_, u.host_slot, u.host_tag, static_cast<uint64_t>(n));
    if (c.rq.head == 0) c.up_start_ms = env_.now_ms;  // this attempt's first byte
    c.u_write_ms = env_.now_ms;
    size_t left = static_cast<size_t>(n);
    const size_t from_head = std::min<size_t>(left, c.rq.size());
    c.rq.head += static_cast<uint32_t>(from_head);
    left -= from_head;
    c.sent += static_cast<uint32_t>(left);
  }
  if (stalled && progress) c.c_read_ms = env_.now_ms;
  return progress;
}

bool HttpProxy::read_upstream(Conn& c, UpConn& u) noexcept {
  if (!acquire(c.rs)) {
    close_conn(c);
    return false;
  }
  if (c.rs.tail == kBufSize) {
    if (c.rs.head == 0) {
      if (c.resp_started) return false;          // the client has not taken the buffer yet: back-pressure
      upstream_failed(c, kFailInvalid, EPROTO);  // a response head larger than the buffer
      return true;
    }
    const uint32_t n = c.rs.tail - c.rs.head;
    std::memmove(c.rs.p, c.rs.p + c.rs.head, n);
    c.rs_dec = c.rs_dec > c.rs.head ? c.rs_dec - c.rs.head : 0;
    c.scan = c.scan > c.rs.head ? c.scan - c.rs.head : 0;
    c.rs.head = 0;
    c.rs.tail = n;
  }
  const ssize_t n = io_recv(u.fd, u.io, c.rs.p + c.rs.tail, kBufSize - c.rs.tail);
  if (n > 0) {
    metrics::host_received(env_, u.host_slot, u.host_tag, static_cast<uint64_t>(n));
    const uint32_t room = kBufSize - c.rs.tail;
    c.rs.tail += static_cast<uint32_t>(n);
    c.u_read_ms = env_.now_ms;
    if (static_cast<uint32_t>(n) < room && !u.u_hup) u.u_in = false;
    if (!c.resp_started) parse_response(c, u);
    else forward_response_body(c, u);
    return true;
  }
  if (n < 0 && errno == EINTR) return true;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    u.u_in = false;
    return false;
  }
  // The upstream closed (or reset).
  const int err = n == 0 ? 0 : errno;
  u.u_in = false;
  u.u_hup = true;
  if (!c.resp_started) {
    upstream_failed(c, kFailError, err ? err : ECONNRESET);
    return true;
  }
  // Mid-body: a close ends a read-until-close body; any other body is cut.
  if (c.resp_body.finish() == http::Error::none) {
    c.resp_done = true;
    c.resp_close = true;
  } else {
    if (env_.now_ms - last_error_log_ms_ >= 1000) {
      last_error_log_ms_ = env_.now_ms;
      GW_LOG_WARN("upstream closed in the middle of a response body; closing the client connection");
    }
    // Send what we have, then close: the client sees a short body.
    c.resp_done = true;
    c.resp_close = true;
    c.keep_alive = false;
  }
  if (c.up != kNone) {
    close_up(ups_[c.up]);
    c.up = kNone;
  }
  return true;
}

void HttpProxy::parse_response(Conn& c, UpConn& u) noexcept {
  for (;;) {
    if (c.rs.size() == 0) return;
    const bool end = head_end_in(c.rs.p, c.rs.head, std::max(c.scan, c.rs.head), c.rs.tail);
    c.scan = c.rs.tail;
    if (!end) return;
    http::Parser p(http::Parser::Kind::response, std::span<http::Field>(fields_.data(), fields_.size()),
                   kResponseLimits);
    p.reset(c.method);
    const http::ParseStatus st = p.parse(std::string_view(c.rs.p + c.rs.head, c.rs.size()));
    if (st == http::ParseStatus::need_more) return;
    if (st == http::ParseStatus::error) {
      if (env_.now_ms - last_error_log_ms_ >= 1000) {
        last_error_log_ms_ = env_.now_ms;
        GW_LOG_WARN("invalid response head from host slot {}: {}", u.host_slot, http::error_name(p.error()));
      }
      upstream_failed(c, kFailInvalid, EPROTO);
      return;
    }
    const http::Head& h = p.head();
    if (h.informational()) {
      // 100 Continue and friends go to HTTP/1.1 clients (never to HTTP/1.0
      // ones, RFC 9110 15.2) less their hop-by-hop fields, as a final head
      // does; the final response follows on the same connection.
      if (!c.http10) {
        if (!acquire(c.out)) {
          // Out of buffer memory: gw's own trouble, not the host's (no
          // passive failure); 503, as for a worker short of descriptors.
          c.last_fail = kFailLocal;
          answer_failure(c);
          return;
        }
        Writer w{c.out.p, c.out.tail, kBufSize};
        w.add("HTTP/1.1 ").num(h.status).add(" ").add(h.reason).add("\r\n");
        for (const http::Field& f : h.fields)
          if (!f.hop_by_hop && f.id != http::FieldId::content_length) w.field(f.name, f.value);
        w.add("\r\n");
        if (w.overflow) {
          upstream_failed(c, kFailInvalid, EPROTO);
          return;
        }
        c.head_bytes += w.len - c.out.tail;
        c.out.tail = w.len;
      }
      // Its Connection: close closes the connection after the final response,
      // whatever that says (RFC 9112 9.6): it is not kept for another request.
      if (!h.keep_alive) c.up_closes = true;
      // The host has the request: a close now is its failure, not the
      // keep-alive race (the buffer starts over below, so rs.tail says
      // nothing of it); and the head counts in its responses (no timing).
      u.interim = true;
      metrics::host_response(env_, u.host_slot, u.host_tag, h.status, 0, 0);
      c.rs.head += h.head_len;
      c.scan = c.rs.head;
      continue;
    }
    // The time to the head (from the connect, or the send on a kept-alive
    // connection) is the host's latency sample: on keep-alive connections
    // there is no connect to time, and ewma, fed by connects alone, kept
    // all the traffic on whichever host's last connect was the faster.
    const uint64_t now_ns = core::monotonic_ns();
    metrics::host_response(env_, u.host_slot, u.host_tag, h.status, u.connect_start_ns, now_ns);
    if (u.connect_start_ns != 0 && now_ns >= u.connect_start_ns)
      shm::record_latency(env_.seg->host(u.host_slot), u.host_tag, (now_ns - u.connect_start_ns) / 1000, env_.now_ms);
    const UpstreamRt& ur = upstream_rt(c.upstream);
    const bool listed = ur.conf && ur.conf->retry.retries_status(h.status);
    if (listed && c.attempts < ur.tries && c.retryable && c.idempotent &&
        (!ur.conf->retry.timeout_ms || env_.now_ms - c.first_try_ms < ur.conf->retry.timeout_ms) && c.out.size() == 0 &&
        host_left(env_, c.upstream, std::span<const uint32_t>(c.tried, c.attempts))) {
      // A status listed in retry.on: try another host (a 5xx is also a
      // failure of this one, see upstream_failed). Logged as this host's
      // answer unless another host is tried.
      c.last_status = h.status;
      c.up_status = h.status;
      c.up_ms = static_cast<int64_t>(env_.now_ms - c.up_start_ms);
      upstream_failed(c, kFailStatus, EPROTO);
      return;
    }
    // An answer before the whole request head went out (a host that answers
    // early while gw's send was blocked): the connection carries half a head,
    // so it cannot carry another request, nor a tunnel.
    const bool head_unsent = c.rq.size() > 0;
    // The host has half a head: body bytes sent after it would be read as
    // the rest of the head, or as a request of their own that never passed
    // routing or auth. Nothing more goes to it (the body is read and dropped).
    if (head_unsent) c.up_cut = true;
    if (h.status == 101 && (!(c.upgrade && h.websocket) || head_unsent)) {
      // A 101 needs an upgrade asked for, and an Upgrade field naming the
      // protocol switched to (RFC 9110 15.2.2): the one gw asked for,
      // websocket (a host MUST NOT switch to another, 7.8).
      upstream_failed(c, kFailInvalid, EPROTO);
      return;
    }
    if (c.http10 && h.body != http::BodyKind::none && has_coding_besides_chunked(h)) {
      // A coding other than chunked (gzip, ...), delimited by the close or
      // before a chunked that gw takes off: an HTTP/1.0 client cannot be told
      // of it (no Transfer-Encoding to HTTP/1.0, RFC 9112 6.1) and gw does not
      // undo it, so the client would get coded bytes it takes for the
      // content. 502, as nginx answers every such coding.
      if (env_.now_ms - last_error_log_ms_ >= 1000) {
        last_error_log_ms_ = env_.now_ms;
        GW_LOG_WARN("host slot {} answered an HTTP/1.0 client with a transfer coding gw cannot pass on: 502",
                    u.host_slot);
      }
      upstream_failed(c, kFailUnsendable, EPROTO);
      return;
    }
    // Passive health: a listed 5xx is a failure even with no try left (as
    // lua-resty-upstream's status_codes); any other answer is a success,
    // which brings a host on trial back. A 4xx is the request's doing, never
    // the host's (nginx does not count 403 or 404 either): a client asking
    // for missing paths must not take hosts out.
    if (listed && h.status >= 500) {
      record_connect_failure(env_, c.upstream, u.host_slot, u.host_tag, u.host_weight, EPROTO);
      metrics::host_status_failure(env_, u.host_slot, u.host_tag);
    } else {
      record_host_success(env_, u.host_slot, u.host_tag, c.up_start_ms);
    }
    c.resp_started = true;
    release(c.rq);  // no retry from here on
    c.up_status = h.status;
    c.status_sent = h.status;
    c.up_ms = static_cast<int64_t>(env_.now_ms - c.up_start_ms);
    c.up_keep = h.keep_alive && !c.up_closes && h.body != http::BodyKind::until_close && !head_unsent;
    c.resp_body.reset(h);
    c.dechunk = h.body == http::BodyKind::chunked && c.http10;
    if (!c.dechunk) c.resp_body.filter_trailers(h);  // de-chunking drops every trailer
    // Connection is hop-by-hop: a host that closes after a length-delimited
    // answer does not close the client's connection.
    // A response that comes before the whole request body ends the connection
    // (finish_request), since the rest of the request cannot be told from the
    // next one: say so, or the client may send its next request into the close.
    c.resp_close = !c.keep_alive || h.body == http::BodyKind::until_close || c.dechunk || c.eof_after_request() ||
                   !c.req_body_done;
    if (!acquire(c.out)) {  // out of buffer memory: as for an interim head above
      c.resp_started = false;
      c.last_fail = kFailLocal;
      answer_failure(c);
      return;
    }
    if (!build_response_head(c, h)) {  // a head too large to rebuild
      c.resp_started = false;
      upstream_failed(c, kFailInvalid, EPROTO);
      return;
    }
    c.rs.head += h.head_len;
    c.rs_dec = c.rs.head;
    if (h.status == 101) {
      start_tunnel(c, u);
      return;
    }
    forward_response_body(c, u);
    return;
  }
}

bool HttpProxy::build_response_head(Conn& c, const http::Head& h) noexcept {
  if (!acquire(c.out)) return false;
  Writer w{c.out.p, c.out.tail, kBufSize};
  char status[4] = {static_cast<char>('0' + h.status / 100), static_cast<char>('0' + h.status / 10 % 10),
                    static_cast<char>('0' + h.status % 10), 0};
  w.add("HTTP/1.1 ").add(std::string_view(status, 3)).add(" ").add(h.reason).add("\r\n");
  const bool no_body = h.body == http::BodyKind::none;
  bool has_date = false;
  bool cl_written = false;
  for (const http::Field& f : h.fields) {
    if (f.hop_by_hop) continue;
    has_date = has_date || iequals(f.name, "date");
    if (f.id == http::FieldId::content_length) {
      // A bodiless response (HEAD, 304) keeps the Content-Length it describes;
      // otherwise the framing below replaces it. A 101 or 204 has none (RFC
      // 9110 8.6). Kept, it goes as one field line with the value the parser
      // read: "5, 5", "005" or the same value on two lines must not be
      // forwarded as sent (RFC 9110 8.6), and strict clients refuse them.
      if (!no_body || h.status == 101 || h.status == 204 || cl_written) continue;
      w.add(f.name).add(": ").num(h.content_length).add("\r\n");
      cl_written = true;
      continue;
    }
    w.field(f.name, f.value);
  }
  // A recipient with a clock adds the Date a host left out (RFC 9110 6.6.1).
  if (!has_date) w.field("Date", http_date());
  if (h.status == 101) {
    w.field("Connection", "upgrade").field("Upgrade", "websocket");  // the one protocol asked for (and checked)
  } else {
    // The body goes as it came, so do its transfer codings: chunked (unless
    // de-chunked for HTTP/1.0), and codings without chunked last (gzip, ...,
    // delimited by the close) for HTTP/1.1 clients, which can undo them.
    if (h.body == http::BodyKind::length) w.add("Content-Length: ").num(h.content_length).add("\r\n");
    if ((h.body == http::BodyKind::chunked && !c.dechunk) || (h.body == http::BodyKind::until_close && !c.http10))
      write_transfer_codings(w, h);
    if (c.resp_close) w.field("Connection", "close");
    else if (c.http10) w.field("Connection", "keep-alive");
  }
  w.add("\r\n");
  if (w.overflow) return false;
  c.head_bytes += w.len - c.out.tail;
  c.out.tail = w.len;
  return true;
}

void HttpProxy::forward_response_body(Conn& c, UpConn& u) noexcept {
  // Decode what arrived. Raw bytes are forwarded as they are (the framing
  // stays: the head says the same); for an HTTP/1.0 client a chunked body is
  // de-chunked in place: data moves down over the framing it followed.
  while (!c.resp_done && c.rs_dec < c.rs.tail) {
    const uint32_t from = c.rs_dec;
    http::BodyStep st = c.resp_body.decode(std::string_view(c.rs.p + from, c.rs.tail - from));
    if (c.dechunk) {
      // Keep [rs.head, rs_dec) = data to send, [rs_dec, tail) = not decoded.
      if (!st.data.empty()) std::memmove(c.rs.p + c.rs_dec, st.data.data(), st.data.size());
      const uint32_t consumed = static_cast<uint32_t>(st.consumed), data = static_cast<uint32_t>(st.data.size());
      std::memmove(c.rs.p + c.rs_dec + data, c.rs.p + from + consumed, c.rs.tail - from - consumed);
      c.rs.tail -= consumed - data;
      c.rs_dec += data;
    } else {
      c.rs_dec += static_cast<uint32_t>(st.consumed);
      if (st.drop > 0) {
        // A hop-by-hop trailer field, held by the decoder (not sent): cut out.
        std::memmove(c.rs.p + c.rs_dec - st.drop, c.rs.p + c.rs_dec, c.rs.tail - c.rs_dec);
        c.rs.tail -= st.drop;
        c.rs_dec -= st.drop;
      }
    }
    if (st.status == http::BodyStatus::done) {
      c.resp_done = true;
      if (c.rs_dec < c.rs.tail) {
        // Bytes after the response: the upstream is not to be trusted again.
        c.rs.tail = c.rs_dec;
        u.u_hup = true;
      }
    } else if (st.status == http::BodyStatus::error) {
      if (env_.now_ms - last_error_log_ms_ >= 1000) {
        last_error_log_ms_ = env_.now_ms;
        GW_LOG_WARN("invalid response body from host slot {}: {}", u.host_slot, http::error_name(st.error));
      }
      c.rs.tail = c.rs_dec;
      c.resp_done = true;
      c.resp_close = true;
      c.keep_alive = false;
      u.u_hup = true;
    } else if (st.consumed == 0) {
      break;
    }
  }
  if (c.resp_body.done()) c.resp_done = true;
}

bool HttpProxy::response_stalled(const Conn& c) noexcept {
  return c.resp_started && !c.resp_done && c.rs.p && c.rs.head == 0 && c.rs.tail == kBufSize;
}

bool HttpProxy::waits_for_host(const Conn& c, const UpConn& u) noexcept {
  if (u.state != UState::busy || c.resp_done || response_stalled(c)) return false;
  // Until the request is all sent the host may be waiting for the rest of it
  // (a client sending its body slowly, within client_body_timeout_ms);
  // send_timeout_ms covers a host that does not take it.
  return c.resp_started || (c.req_body_done && c.rq.size() == 0 && c.sent == c.body_end);
}

void HttpProxy::upstream_failed(Conn& c, uint8_t kind, int err) noexcept {
  if (c.up == kNone) return;
  UpConn& u = ups_[c.up];
  const int ui = c.upstream;
  // A kept-alive connection that the host closed as it was reused is the
  // known keep-alive race, not a failure of the host (nginx does the same).
  const bool stale = u.reused && kind == kFailError && c.rs.tail == 0 && !u.interim;
  const bool blame = kind == kFailStatus ? c.last_status >= 500 : kind != kFailUnsendable;
  if (!stale && blame && (kind != kFailError || peer_error(err) || err == 0)) {
    record_connect_failure(env_, ui, u.host_slot, u.host_tag, u.host_weight, err ? err : ECONNRESET);
    if (kind == kFailStatus) metrics::host_status_failure(env_, u.host_slot, u.host_tag);
  }
  close_up(u);
  c.up = kNone;
  // Whatever the host sent is dropped.
  c.rs.head = c.rs.tail = 0;
  c.rs_dec = 0;
  c.scan = 0;
  c.up_closes = false;
  c.last_fail = kind;
  if (c.resp_started || (c.out.size() > 0 && c.out.head > 0)) {
    // The response has begun, or an interim (1xx) head is half sent: no
    // other answer, another host's or our own, can follow it (the client
    // would read it as the rest of that head).
    close_conn(c);
    return;
  }
  release(c.out);  // interim heads the client has seen nothing of go with their host
  const bool sent_any = c.rq.head > 0 || c.sent > c.body_start;
  const config::UpstreamConf* uc = upstream_rt(ui).conf;
  bool allowed = c.retryable && (c.idempotent || !sent_any) && uc != nullptr;
  if (allowed && !stale) {
    switch (kind) {
      case kFailError: allowed = uc->retry.on_error; break;
      case kFailTimeout: allowed = uc->retry.on_timeout; break;
      case kFailInvalid: allowed = uc->retry.on_invalid; break;
      case kFailUnsendable: allowed = false; break;
      default: break;  // kFailStatus: checked by the caller
    }
  }
  if (stale && allowed && c.attempts > 0) --c.attempts;  // the host may be tried again, on a new connection
  if (allowed) {
    connect_next(c, stale);
    return;
  }
  answer_failure(c);
}

// ---------------------------------------------------------------------------
// answers, the end of a request, tunnels

bool HttpProxy::flush_client(Conn& c) noexcept {
  bool progress = false;
  // While the response buffer is full gw does not read the host: its
  // read_timeout_ms starts over once the client has made room.
  const bool stalled = c.state == CState::busy && response_stalled(c);
  for (;;) {
    const uint32_t rs_pending = c.state == CState::closing ? 0 : (c.rs_dec > c.rs.head ? c.rs_dec - c.rs.head : 0);
    if (c.out.size() == 0 && rs_pending == 0) break;
    iovec iov[2];
    int n_iov = 0;
    if (c.out.size() > 0) iov[n_iov++] = {c.out.p + c.out.head, c.out.size()};
    if (rs_pending > 0) iov[n_iov++] = {c.rs.p + c.rs.head, rs_pending};
    const ssize_t n = io_send(c.fd, c.io, iov, n_iov);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c.c_out = false;
        break;
      }
      close_conn(c);  // the client is gone
      return false;
    }
    progress = true;
    c.c_write_ms = env_.now_ms;
    c.client_bytes += static_cast<uint64_t>(n);
    metrics::client_sent(env_, c.listener, static_cast<uint64_t>(n));
    size_t left = static_cast<size_t>(n);
    const size_t from_out = std::min<size_t>(left, c.out.size());
    c.out.head += static_cast<uint32_t>(from_out);
    left -= from_out;
    c.rs.head += static_cast<uint32_t>(left);
  }
  if (stalled && progress) c.u_read_ms = env_.now_ms;
  if (c.out.p && c.out.size() == 0) release(c.out);
  if (c.rs.p && c.rs.head == c.rs.tail) {
    // Everything read has gone out: start the buffer over (or give it back).
    c.rs.head = c.rs.tail = 0;
    c.rs_dec = 0;
    if (c.resp_started) release(c.rs);
    else c.scan = 0;  // after a 1xx: the final head's end is searched for from its first byte
  }
  return progress;
}

std::string_view HttpProxy::http_date() noexcept {
  const time_t now = static_cast<time_t>(core::wall_ms() / 1000);
  if (now != date_second_) {
    tm t{};
    ::gmtime_r(&now, &t);
    date_len_ = static_cast<uint32_t>(std::strftime(date_, sizeof(date_), "%a, %d %b %Y %H:%M:%S GMT", &t));
    date_second_ = now;
  }
  return {date_, date_len_};
}

void HttpProxy::respond_error(Conn& c, int status, bool keep_alive, std::string_view extra) noexcept {
  c.fd_wait = false;
  if (c.up != kNone) {
    close_up(ups_[c.up]);
    c.up = kNone;
  }
  if (c.resp_started || (c.out.size() > 0 && c.out.head > 0)) {
    // The response has begun, or an interim (1xx) head is half sent:
    // nothing else can be said.
    close_conn(c);
    return;
  }
  metrics::http_error(env_, c.listener, status);
  release(c.rq);
  c.rs.head = c.rs.tail = 0;
  c.rs_dec = 0;
  release(c.rs);
  release(c.out);
  if (!acquire(c.out)) {
    close_conn(c);
    return;
  }
  // Keep the connection only if the request was read whole (what follows is
  // the next request) and both sides allow it.
  const bool keep = keep_alive && c.keep_alive && c.req_body_done && !c.eof_after_request() && !draining_;
  const char* reason = reason_phrase(status);
  char body[64];
  const auto body_len = fmt::format_to_n(body, sizeof(body), "{} {}\n", status, reason).size;
  Writer w{c.out.p, 0, kBufSize};
  w.add("HTTP/1.1 ").num(static_cast<uint64_t>(status)).add(" ").add(reason).add("\r\n");
  w.field("Server", "gw").field("Date", http_date());
  w.field("Content-Type", "text/plain; charset=utf-8");
  if (!extra.empty()) w.add(extra);
  w.add("Content-Length: ").num(body_len).add("\r\n");
  w.field("Connection", keep ? "keep-alive" : "close");
  w.add("\r\n");
  c.head_bytes += w.len;
  c.status_sent = static_cast<uint16_t>(status);
  if (!c.head_req) w.add(std::string_view(body, body_len));
  c.out.head = 0;
  c.out.tail = w.len;
  c.resp_started = true;
  c.resp_done = true;
  if (keep) {
    c.state = CState::busy;
    c.resp_close = false;
  } else {
    c.state = CState::closing;
    c.started_ms = env_.now_ms;  // the linger deadline counts from here
    c.c_out = true;              // try at once; EAGAIN clears it
  }
}

void HttpProxy::finish_request(Conn& c) noexcept {
  if (c.log_pending && c.state != CState::tunnel) log_request(c);
  if (c.up != kNone) {
    UpConn& u = ups_[c.up];
    // The upstream connection may carry another request if the exchange
    // ended cleanly on both sides.
    const bool reusable = u.state == UState::busy && c.req_body_done && c.sent == c.body_end && c.rq.size() == 0 &&
                          !u.u_hup && c.resp_body.kind() != http::BodyKind::until_close && !c.upgrade &&
                          c.resp_body.done();
    c.up = kNone;
    release_up(u, reusable && c.up_keep);
  }
  release(c.rq);
  release(c.out);
  c.rs.head = c.rs.tail = 0;
  c.rs_dec = 0;
  release(c.rs);
  const bool keep = c.keep_alive && !c.resp_close && c.req_body_done && !c.eof_after_request() && !draining_;
  if (!keep) {
    // Our FIN after the response; unread pipelined bytes are drained for a while.
    c.state = CState::closing;
    c.started_ms = env_.now_ms;
    c.c_out = true;
    return;
  }
  c.state = CState::head;
  c.in.head = c.body_end;
  c.scan = c.in.head;
  c.line = {};
  c.c_read_ms = env_.now_ms;
  if (c.in.size() == 0) {
    release(c.in);
  } else {
    c.started_ms = env_.now_ms;
  }
  // c_in stays as it is: set if bytes were left in the socket while busy,
  // and an edge-triggered event comes for anything that arrived since.
}

void HttpProxy::start_tunnel(Conn& c, UpConn& u) noexcept {
  // The bytes after the 101 head (the server's first frames) follow the head
  // out; the client's bytes after its request (it may not wait) go upstream,
  // behind any request body bytes not sent yet: from `sent`, not `body_end`.
  bump(env_.seg->worker(env_.worker).http_tunnels);
  c.state = CState::tunnel;
  c.tunnel_c_eof = c.tunnel_u_eof = c.tunnel_c_shut = c.tunnel_u_shut = c.tunnel_drop = false;
  // The client's bytes read after its request (early frames) are the
  // tunnel's, so its request's too (see req_bytes).
  if (c.in.p && c.in.tail > c.body_end) c.req_bytes += c.in.tail - c.body_end;
  c.in.head = c.sent;
  c.c_read_ms = c.c_write_ms = c.u_read_ms = c.u_write_ms = env_.now_ms;
  c.c_in = c.c_out = true;
  u.u_in = u.u_out = true;
}

void HttpProxy::pump_tunnel(Conn& c, UpConn& u) noexcept {
  // Client → upstream through `in`, upstream → client through `out` then
  // `rs`, until both sides would block; half-closes pass through.
  const uint32_t gen = c.gen;
  for (bool moved = true; moved;) {
    moved = false;
    // client → upstream
    if (c.in.size() > 0 && u.u_out) {
      const iovec iov{c.in.p + c.in.head, c.in.size()};
      const ssize_t n = io_send(u.fd, u.io, &iov, 1);
      if (n > 0) {
        metrics::host_sent(env_, u.host_slot, u.host_tag, static_cast<uint64_t>(n));
        c.in.head += static_cast<uint32_t>(n);
        c.u_write_ms = env_.now_ms;
        moved = true;
        if (c.in.size() == 0) {
          c.in.head = c.in.tail = 0;
          release(c.in);
        }
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        u.u_out = false;
      } else if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
        // The host is gone for writing (it closed, and reset what came
        // after): what it sent before still goes to the client, with its
        // FIN; the client's bytes, which can go nowhere, are read and
        // dropped meanwhile (unread, they would turn the close into a reset
        // that destroys what the client has not taken yet).
        c.tunnel_drop = c.tunnel_u_shut = true;
        c.in.head = c.in.tail = 0;
        release(c.in);
        moved = true;
      } else if (!(n < 0 && errno == EINTR)) {
        close_conn(c);
        return;
      }
    }
    if (c.in.size() == 0 && c.tunnel_c_eof && !c.tunnel_u_shut) {
      io_shutdown(u.fd, u.io);
      c.tunnel_u_shut = true;
    }
    if (c.in.size() == 0 && c.c_in && !c.tunnel_c_eof) {
      if (!acquire(c.in)) {
        close_conn(c);
        return;
      }
      const ssize_t n = io_recv(c.fd, c.io, c.in.p, kBufSize);
      if (n > 0) {
        metrics::client_received(env_, c.listener, static_cast<uint64_t>(n));
        c.req_bytes += static_cast<uint64_t>(n);
        c.in.head = 0;
        c.in.tail = c.tunnel_drop ? 0 : static_cast<uint32_t>(n);
        c.c_read_ms = env_.now_ms;
        moved = true;
      } else if (n == 0) {
        c.tunnel_c_eof = true;
        moved = true;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c.c_in = false;
      } else if (errno != EINTR) {
        close_conn(c);
        return;
      }
      if (c.in.size() == 0 && c.in.p) release(c.in);
    }
    // upstream → client
    if ((c.out.size() > 0 || c.rs.size() > 0) && c.c_out) {
      c.rs_dec = c.rs.tail;  // everything read is to be sent
      const size_t before = c.out.size() + c.rs.size();
      flush_client(c);
      if (c.state == CState::free || c.gen != gen) return;
      if (c.out.size() + c.rs.size() < before) {
        moved = true;
        c.u_read_ms = std::max(c.u_read_ms, c.c_write_ms);
      }
    }
    if (c.out.size() == 0 && c.rs.size() == 0 && c.tunnel_u_eof && !c.tunnel_c_shut) {
      io_shutdown(c.fd, c.io);
      c.tunnel_c_shut = true;
    }
    // The host reset after its FIN: a read says 0 again (none is made after
    // the FIN anyway), only an EPOLLERR tells, and it may have come while gw
    // was not reading the host (the client had not taken the bytes before
    // the FIN yet): u_err keeps it. Its FIN was passed on with all it sent,
    // and nothing more can go to it: the tunnel ends, as on a reset read
    // before the FIN.
    if (c.tunnel_c_shut && (u.u_err || c.tunnel_u_shut)) {
      end_tunnel(c);  // both directions ended, or nothing more can reach the host
      return;
    }
    if (c.out.size() == 0 && c.rs.size() == 0 && u.u_in && !c.tunnel_u_eof) {
      if (!acquire(c.rs)) {
        close_conn(c);
        return;
      }
      const ssize_t n = io_recv(u.fd, u.io, c.rs.p, kBufSize);
      if (n > 0) {
        metrics::host_received(env_, u.host_slot, u.host_tag, static_cast<uint64_t>(n));
        c.rs.head = 0;
        c.rs.tail = static_cast<uint32_t>(n);
        c.rs_dec = c.rs.tail;
        c.u_read_ms = env_.now_ms;
        moved = true;
      } else if (n == 0 || (c.tunnel_drop && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        // (A host gone for writing: its reset comes after all it sent.)
        c.tunnel_u_eof = true;
        moved = true;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        u.u_in = false;
      } else if (errno != EINTR) {
        close_conn(c);
        return;
      }
      if (c.rs.size() == 0 && c.rs.p) release(c.rs);
    }
  }
}

void HttpProxy::end_tunnel(Conn& c) noexcept {
  if (!c.tunnel_drop || c.tunnel_c_eof) {
    close_conn(c);
    return;
  }
  // Our FIN went out (tunnel_c_shut) behind all the host sent; the client
  // may still be sending: drop its bytes until its FIN, for kLingerMs at most.
  if (c.up != kNone) {
    close_up(ups_[c.up]);
    c.up = kNone;
  }
  release(c.in);
  release(c.rs);
  c.state = CState::closing;
  c.shut_wr = true;
  c.started_ms = env_.now_ms;
  c.c_in = true;  // read on at once; EAGAIN clears it
}

// ---------------------------------------------------------------------------
// the access log

void HttpProxy::log_begin(Conn& c, const http::Head& h) noexcept {
  c.log_pending = true;
  c.log_start_ms = c.started_ms;
  c.status_sent = c.up_status = 0;
  c.head_bytes = 0;
  c.client_bytes = 0;
  c.req_bytes = h.head_len;  // the body's bytes follow as the decoder takes them
  c.up_ms = -1;
  c.up_addr = core::SockAddr{};
  std::fill(std::begin(c.lg_len), std::end(c.lg_len), uint16_t{0});
  if (!acquire(c.lg)) return;  // logged without the request's text
  c.lg.head = c.lg.tail = 0;
  auto put = [&](Conn::LogField f, std::string_view v, size_t max) {
    const size_t n = std::min({v.size(), max, static_cast<size_t>(kBufSize - c.lg.tail)});
    if (n) std::memcpy(c.lg.p + c.lg.tail, v.data(), n);  // (an empty view may hold a null pointer)
    c.lg.tail += static_cast<uint32_t>(n);
    c.lg_len[f] = static_cast<uint16_t>(n);
  };
  if (h.method_name.empty()) return;  // a request refused before its line was read
  std::string_view referer, agent;
  for (const http::Field& f : h.fields) {
    if (referer.empty() && iequals(f.name, "referer")) referer = f.value;
    else if (agent.empty() && iequals(f.name, "user-agent")) agent = f.value;
  }
  // One byte more than the log's escaped budgets (src/proxy/access_log.cpp):
  // a longer value is cut there and ends in "...", never cut here unmarked.
  put(Conn::kMethod, h.method_name, 256 + 1);
  put(Conn::kTarget, h.target, 4096 + 1);
  put(Conn::kVersion, h.version == http::Version::http10 ? "HTTP/1.0" : "HTTP/1.1", 8);
  put(Conn::kReferer, referer, 1024 + 1);
  put(Conn::kAgent, agent, 1024 + 1);
  put(Conn::kHost, h.host, 512 + 1);
}

void HttpProxy::log_request(Conn& c) noexcept {
  c.log_pending = false;
  const ListenerRt& l = listeners_[c.listener];
  if (!l.log || !env_.access_log || !env_.access_log->enabled()) return;
  HttpLogEntry e;
  e.wall_ms = core::wall_ms();
  e.client = std::string_view(c.ip, c.ip_len);
  e.listener = l.conf->name;
  if (c.lg.p) {
    std::string_view parts[Conn::kLogFields];
    uint32_t off = 0;
    for (int f = 0; f < Conn::kLogFields; ++f) {
      parts[f] = std::string_view(c.lg.p + off, c.lg_len[f]);
      off += c.lg_len[f];
    }
    e.method = parts[Conn::kMethod];
    e.target = parts[Conn::kTarget];
    e.version = parts[Conn::kVersion];
    e.referer = parts[Conn::kReferer];
    e.user_agent = parts[Conn::kAgent];
    e.host = parts[Conn::kHost];
    e.rule = parts[Conn::kRule];
  }
  // No answer reached the client: nginx's 499 (the client went first).
  e.status = c.status_sent ? c.status_sent : 499;
  e.body_bytes = c.client_bytes > c.head_bytes ? c.client_bytes - c.head_bytes : 0;
  e.bytes_sent = c.client_bytes;
  e.request_length = c.req_bytes;
  // An answer that closes the connection ends the request when it is queued
  // (respond_error, finish_request): the linger that follows is not its time.
  const uint64_t end_ms = c.state == CState::closing ? c.started_ms : env_.now_ms;
  e.request_ms = end_ms >= c.log_start_ms ? end_ms - c.log_start_ms : 0;
  char up[INET6_ADDRSTRLEN + 8] = "";
  if (c.up_addr.family != 0) {
    char ipbuf[INET6_ADDRSTRLEN] = "";
    ::inet_ntop(c.up_addr.family == AF_INET6 ? AF_INET6 : AF_INET, c.up_addr.ip, ipbuf, sizeof(ipbuf));
    auto r = c.up_addr.family == AF_INET6 ? fmt::format_to_n(up, sizeof(up) - 1, "[{}]:{}", ipbuf, c.up_addr.port)
                                          : fmt::format_to_n(up, sizeof(up) - 1, "{}:{}", ipbuf, c.up_addr.port);
    e.upstream_addr = std::string_view(up, r.size);
  }
  e.upstream_status = c.up_status;
  e.upstream_ms = c.up_ms;
  if (c.route < routes_.size()) e.route = routes_[c.route].conf->name;
  e.consumer = c.consumer.view();
  e.retries = c.attempts > 0 ? c.attempts - 1u : 0;
  env_.access_log->log(l.log_file, l.log_format, e);
  release(c.lg);
}

}  // namespace gw::proxy
