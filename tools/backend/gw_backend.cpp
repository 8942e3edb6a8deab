// gw-backend: a small, standalone test/benchmark backend for gw.
//
//   gw-backend --listen IP:PORT --name NAME [--mode http|echo] [--threads N]
//
// http mode answers every HTTP/1.x request with "200 OK" and the body "backend NAME\n"
// (keep-alive and pipelining supported, responses in request order). echo mode sends every
// byte back; when the client half-closes, the remaining data is echoed and then our write
// side is shut down too.
//
// Design: one epoll loop per thread, each thread with its own listening socket (SO_REUSEPORT
// when N > 1, so the kernel spreads connections). Level-triggered epoll, non-blocking
// sockets. The main thread only waits for SIGTERM/SIGINT and then stops the loops.
//
// Deliberately self-contained: libc + libstdc++ only, no gw library.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

namespace {

enum class Mode { kHttp, kEcho };

struct Options {
  std::string listen;
  std::string name;
  Mode mode = Mode::kHttp;
  int threads = 1;
};

// Limits. A request head larger than this is rejected with 431.
constexpr size_t kMaxHeadBytes = 64 * 1024;
// Stop reading from a connection while this much output is queued (back-pressure).
constexpr size_t kMaxPendingOut = 1024 * 1024;
// Reads per readiness event, so one busy connection cannot starve the others.
constexpr int kReadsPerEvent = 16;
// How long a connection being closed may take to send its EOF before we drop it.
constexpr auto kLingerTimeout = std::chrono::seconds(5);
// How long to stop accepting after running out of descriptors.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
// How often lingering connections are checked for their deadline.
constexpr auto kSweepInterval = std::chrono::milliseconds(100);
constexpr size_t kScratchBytes = 64 * 1024;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "gw-backend: %s: %s\n", what, std::strerror(errno));
  std::_Exit(1);
}

[[noreturn]] void Usage(const char* msg) {
  if (msg != nullptr) std::fprintf(stderr, "gw-backend: %s\n", msg);
  std::fprintf(stderr,
               "usage: gw-backend --listen IP:PORT --name NAME [--mode http|echo] "
               "[--threads N]\n");
  std::exit(2);
}

// ---------------------------------------------------------------------------------------
// Address parsing: "1.2.3.4:80" or "[::1]:80".

bool ParseAddress(const std::string& text, sockaddr_storage* out, socklen_t* len) {
  std::memset(out, 0, sizeof(*out));
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 >= text.size()) return false;
  std::string host = text.substr(0, colon);
  std::string_view port_text = std::string_view(text).substr(colon + 1);
  unsigned port = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port > 65535) {
    return false;
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(out);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &sin6->sin6_addr) != 1) {
      return false;
    }
    *len = sizeof(sockaddr_in6);
    return true;
  }
  auto* sin = reinterpret_cast<sockaddr_in*>(out);
  sin->sin_family = AF_INET;
  sin->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) != 1) return false;
  *len = sizeof(sockaddr_in);
  return true;
}

uint16_t PortOf(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
}

void SetPort(sockaddr_storage* addr, uint16_t port) {
  if (addr->ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(addr)->sin6_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in*>(addr)->sin_port = htons(port);
  }
}

int OpenListener(const sockaddr_storage& addr, socklen_t len, bool reuse_port) {
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) Die("SO_REUSEADDR");
  // SO_REUSEPORT only when we share the port between our own threads: with a single
  // thread it would let a second process silently share the port by accident.
  if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    Die("SO_REUSEPORT");
  }
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0) Die("bind");
  if (listen(fd, 4096) != 0) Die("listen");
  return fd;
}

// ---------------------------------------------------------------------------------------
// Small helpers for header parsing.

char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// True if the comma-separated header value contains `token` (case-insensitive).
bool HasToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = Trim(value.substr(0, comma));
    if (IEquals(item, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

// Pre-rendered responses (they never change).
struct Responses {
  std::string ok;        // keep-alive 200
  std::string ok_close;  // 200 + Connection: close
  std::string ok_head;   // HEAD variants: same headers, no body
  std::string ok_head_close;
  std::string bad_request;  // 400, closes
  std::string too_large;    // 431, closes
  std::string not_impl;     // 501 (chunked bodies are not supported), closes

  explicit Responses(const std::string& name) {
    std::string body = "backend " + name + "\n";
    auto head = [&](bool close) {
      return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\nContent-Type: text/plain\r\n" + (close ? "Connection: close\r\n" : "") + "\r\n";
    };
    ok = head(false) + body;
    ok_close = head(true) + body;
    ok_head = head(false);
    ok_head_close = head(true);
    auto error = [](const char* status) {
      std::string text = std::string(status) + "\n";
      return "HTTP/1.1 " + std::string(status) +
             "\r\nContent-Length: " + std::to_string(text.size()) +
             "\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + text;
    };
    bad_request = error("400 Bad Request");
    too_large = error("431 Request Header Fields Too Large");
    not_impl = error("501 Not Implemented");
  }
};

// ---------------------------------------------------------------------------------------
// Connections and the per-thread event loop.

enum class Kind { kListener, kStop, kConn };

// Everything registered with epoll is a Handle, so epoll's data.ptr can be inspected
// before knowing the concrete type.
struct Handle {
  Kind kind;
};

struct Conn : Handle {
  Conn() : Handle{Kind::kConn} {}

  int fd = -1;
  uint32_t events = 0;  // current epoll interest set

  std::string in;      // unparsed input (http mode; only holds partial requests)
  std::string out;     // queued output
  size_t out_off = 0;  // bytes of `out` already sent

  // http request state
  uint64_t body_left = 0;             // request body bytes still to skip
  bool resp_pending = false;          // headers parsed, response waits for the body
  const std::string* resp = nullptr;  // the response to queue once the body is consumed
  bool close_req = false;             // the pending request asked for the connection to close
  bool close_after = false;           // final response queued: stop parsing, close once written

  bool peer_eof = false;   // read side saw EOF
  bool lingering = false;  // our write side is shut down; draining until EOF
  std::chrono::steady_clock::time_point linger_deadline{};

  size_t pending() const { return out.size() - out_off; }
};

class Loop {
 public:
  Loop(const Options& opt, const Responses& responses, int listen_fd, int stop_fd)
      : opt_(opt), resp_(responses), listen_fd_(listen_fd), scratch_(kScratchBytes) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) Die("epoll_create1");
    Add(listen_fd_, EPOLLIN, &listener_);
    Add(stop_fd, EPOLLIN, &stop_);
  }

  ~Loop() {
    for (Conn* c : conns_) {
      close(c->fd);
      delete c;
    }
    close(ep_);
  }

  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void Run() {
    std::vector<epoll_event> evs(256);
    for (;;) {
      // Wake up periodically only when there is something time-based to do.
      int timeout = (!lingering_.empty() || listener_paused_) ? 100 : -1;
      int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), timeout);
      if (n < 0) {
        if (errno == EINTR) continue;
        Die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        auto* h = static_cast<Handle*>(evs[i].data.ptr);
        switch (h->kind) {
          case Kind::kStop:
            return;  // stop eventfd is never read, so every thread sees it
          case Kind::kListener:
            Accept();
            break;
          case Kind::kConn:
            OnConn(static_cast<Conn*>(h), evs[i].events);
            break;
        }
      }
      Housekeeping();
    }
  }

 private:
  void Add(int fd, uint32_t events, Handle* ptr) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = ptr;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) Die("epoll_ctl ADD");
  }

  void SetInterest(Conn* c, uint32_t events) {
    if (c->events == events) return;
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = static_cast<Handle*>(c);
    if (epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev) != 0) Die("epoll_ctl MOD");
    c->events = events;
  }

  void Accept() {
    for (;;) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          // Out of descriptors: stop accepting for a moment instead of spinning on a
          // listener that stays readable.
          if (!warned_fds_) {
            std::fprintf(stderr, "gw-backend %s: accept: %s (pausing accepts)\n", opt_.name.c_str(),
                         std::strerror(errno));
            warned_fds_ = true;
          }
          PauseListener();
          return;
        }
        Die("accept4");
      }
      int one = 1;
      // Responses are small and written whole; don't let Nagle delay them.
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      auto* c = new Conn;
      c->fd = fd;
      c->events = EPOLLIN | EPOLLRDHUP;
      Add(fd, c->events, static_cast<Handle*>(c));
      conns_.insert(c);
    }
  }

  void PauseListener() {
    epoll_event ev{};
    ev.data.ptr = &listener_;
    epoll_ctl(ep_, EPOLL_CTL_MOD, listen_fd_, &ev);  // no events
    listener_paused_ = true;
    listener_resume_at_ = std::chrono::steady_clock::now() + kAcceptPause;
  }

  // Time-based work, run after each batch of events: resuming a paused listener and
  // dropping connections whose lingering close takes too long.
  void Housekeeping() {
    if (!listener_paused_ && lingering_.empty()) return;
    auto now = std::chrono::steady_clock::now();
    if (listener_paused_ && now >= listener_resume_at_) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = &listener_;
      epoll_ctl(ep_, EPOLL_CTL_MOD, listen_fd_, &ev);
      listener_paused_ = false;
    }
    if (!lingering_.empty() && now >= next_linger_sweep_) {
      next_linger_sweep_ = now + kSweepInterval;
      std::vector<Conn*> expired;
      for (Conn* c : lingering_) {
        if (now >= c->linger_deadline) expired.push_back(c);
      }
      for (Conn* c : expired) Close(c);
    }
  }

  void Close(Conn* c) {
    // close() also removes the fd from the epoll set (we never dup it).
    close(c->fd);
    lingering_.erase(c);
    conns_.erase(c);
    delete c;
  }

  // Returns false if the connection was closed.
  bool OnConn(Conn* c, uint32_t events) {
    if (events & EPOLLERR) {
      Close(c);
      return false;
    }
    if (events & EPOLLOUT) {
      if (!Flush(c)) return false;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) {
      if (!ReadSome(c)) return false;
    }
    return Update(c);
  }

  // Reads what is available (bounded), feeding the mode's handler.
  bool ReadSome(Conn* c) {
    for (int i = 0; i < kReadsPerEvent; ++i) {
      if (c->peer_eof || ReadPaused(c)) break;
      ssize_t n = recv(c->fd, scratch_.data(), scratch_.size(), 0);
      if (n > 0) {
        if (c->lingering) continue;  // discarding input while waiting for EOF
        const char* data = scratch_.data();
        size_t len = static_cast<size_t>(n);
        if (opt_.mode == Mode::kEcho) {
          Queue(c, data, len);
        } else {
          FeedHttp(c, data, len);
        }
        // Write eagerly: in the common case the whole response/echo leaves right away.
        if (!Flush(c)) return false;
        if (static_cast<size_t>(n) < scratch_.size()) break;  // probably drained
        continue;
      }
      if (n == 0) {
        c->peer_eof = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Close(c);  // ECONNRESET and friends
      return false;
    }
    return true;
  }

  // We stop reading while output is queued: always in echo mode (strict back-pressure),
  // past a threshold in http mode, and once a "close" response has been queued.
  bool ReadPaused(const Conn* c) const {
    if (c->lingering) return false;
    if (opt_.mode == Mode::kEcho) return c->pending() > 0;
    return c->close_after || c->pending() >= kMaxPendingOut;
  }

  void Queue(Conn* c, const char* data, size_t len) {
    if (c->out_off == c->out.size()) {
      c->out.clear();
      c->out_off = 0;
    }
    c->out.append(data, len);
  }

  void Queue(Conn* c, const std::string& s) { Queue(c, s.data(), s.size()); }

  // Sends queued output. Returns false if the connection was closed.
  bool Flush(Conn* c) {
    while (c->pending() > 0) {
      ssize_t n = send(c->fd, c->out.data() + c->out_off, c->pending(), MSG_NOSIGNAL);
      if (n > 0) {
        c->out_off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      Close(c);
      return false;
    }
    c->out.clear();
    c->out_off = 0;
    return true;
  }

  // Decides what to do next once reads/writes are done: shut down, close, or wait for
  // the right events. Returns false if the connection was closed.
  bool Update(Conn* c) {
    bool pending = c->pending() > 0;
    if (!pending && !c->lingering) {
      bool finish = (opt_.mode == Mode::kEcho) ? c->peer_eof : (c->close_after || c->peer_eof);
      if (finish) {
        // Our side is done: send FIN after all data. If the peer already sent EOF
        // nothing can arrive any more, so close now; otherwise drain until its EOF
        // (closing with unread input would make the kernel send RST, which can destroy
        // the response we just sent before the client reads it).
        shutdown(c->fd, SHUT_WR);
        if (c->peer_eof) {
          Close(c);
          return false;
        }
        c->lingering = true;
        c->linger_deadline = std::chrono::steady_clock::now() + kLingerTimeout;
        lingering_.insert(c);
      }
    }
    if (c->lingering && c->peer_eof) {
      Close(c);
      return false;
    }
    uint32_t want = 0;
    if (pending) want |= EPOLLOUT;
    if (!c->peer_eof && !ReadPaused(c)) want |= EPOLLIN | EPOLLRDHUP;
    SetInterest(c, want);
    return true;
  }

  // Consumes request bytes; queues one response per complete request.
  void FeedHttp(Conn* c, const char* data, size_t len) {
    if (c->in.empty()) {
      // Fast path: parse straight from the read buffer, keep only the leftover.
      size_t used = ParseHttp(c, std::string_view(data, len));
      if (used < len && !c->close_after) c->in.assign(data + used, len - used);
    } else {
      c->in.append(data, len);
      size_t used = ParseHttp(c, c->in);
      if (c->close_after) {
        c->in.clear();
      } else {
        c->in.erase(0, used);
      }
    }
  }

  // Returns the number of bytes consumed from `buf`.
  size_t ParseHttp(Conn* c, std::string_view buf) {
    size_t pos = 0;
    while (!c->close_after) {
      if (c->body_left > 0) {
        size_t skip = static_cast<size_t>(std::min<uint64_t>(c->body_left, buf.size() - pos));
        pos += skip;
        c->body_left -= skip;
        if (c->body_left > 0) break;  // need more body bytes
      }
      if (c->resp_pending) {
        Queue(c, *c->resp);
        c->resp_pending = false;
        if (c->close_req) c->close_after = true;  // anything after it is ignored
        continue;
      }
      // Tolerate empty lines between requests (RFC 9112 section 2.2).
      while (pos + 1 < buf.size() && buf[pos] == '\r' && buf[pos + 1] == '\n') pos += 2;
      if (pos >= buf.size()) break;
      size_t end = buf.find("\r\n\r\n", pos);
      if (end == std::string_view::npos) {
        if (buf.size() - pos > kMaxHeadBytes) Reject(c, resp_.too_large);
        break;
      }
      std::string_view head = buf.substr(pos, end + 2 - pos);  // keeps the last line's CRLF
      pos = end + 4;
      ParseHead(c, head);
    }
    return pos;
  }

  void Reject(Conn* c, const std::string& response) {
    Queue(c, response);
    c->close_after = true;
    c->resp_pending = false;
  }

  // Parses one request head (request line + header lines, each ending in CRLF).
  void ParseHead(Conn* c, std::string_view head) {
    size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    head.remove_prefix(eol + 2);

    // Request line: METHOD SP TARGET SP HTTP/1.x
    size_t sp1 = line.find(' ');
    size_t sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) return Reject(c, resp_.bad_request);
    std::string_view method = line.substr(0, sp1);
    std::string_view version = line.substr(sp2 + 1);
    if (version.size() != 8 || version.substr(0, 7) != "HTTP/1.") {
      return Reject(c, resp_.bad_request);
    }
    bool keep_alive = version[7] != '0';  // HTTP/1.1 default on, HTTP/1.0 default off

    uint64_t content_length = 0;
    bool seen_length = false;
    while (!head.empty()) {
      eol = head.find("\r\n");
      line = head.substr(0, eol);
      head.remove_prefix(eol + 2);
      size_t colon = line.find(':');
      if (colon == std::string_view::npos || colon == 0) return Reject(c, resp_.bad_request);
      std::string_view name = line.substr(0, colon);
      std::string_view value = Trim(line.substr(colon + 1));
      if (IEquals(name, "content-length")) {
        uint64_t v = 0;
        auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() ||
            (seen_length && v != content_length)) {
          return Reject(c, resp_.bad_request);
        }
        content_length = v;
        seen_length = true;
      } else if (IEquals(name, "connection")) {
        if (HasToken(value, "close")) keep_alive = false;
        if (HasToken(value, "keep-alive")) keep_alive = true;
      } else if (IEquals(name, "transfer-encoding")) {
        if (!IEquals(value, "identity")) return Reject(c, resp_.not_impl);
      }
    }

    bool is_head = method == "HEAD";
    if (keep_alive) {
      c->resp = is_head ? &resp_.ok_head : &resp_.ok;
    } else {
      c->resp = is_head ? &resp_.ok_head_close : &resp_.ok_close;
    }
    // The response is queued by ParseHttp once the body has been skipped, so responses
    // stay in request order even when bodies arrive in pieces.
    c->body_left = content_length;
    c->resp_pending = true;
    c->close_req = !keep_alive;
  }

  const Options& opt_;
  const Responses& resp_;
  int ep_ = -1;
  int listen_fd_ = -1;
  Handle listener_{Kind::kListener};
  Handle stop_{Kind::kStop};
  bool listener_paused_ = false;
  std::chrono::steady_clock::time_point listener_resume_at_{};
  std::chrono::steady_clock::time_point next_linger_sweep_{};
  bool warned_fds_ = false;
  std::vector<char> scratch_;
  std::unordered_set<Conn*> conns_;
  std::unordered_set<Conn*> lingering_;
};

}  // namespace

namespace {

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") Usage(nullptr);
    if (i + 1 >= argc) Usage(("missing value for " + std::string(arg)).c_str());
    std::string value = argv[++i];
    if (arg == "--listen") {
      opt.listen = value;
    } else if (arg == "--name") {
      opt.name = value;
    } else if (arg == "--mode") {
      if (value == "http") {
        opt.mode = Mode::kHttp;
      } else if (value == "echo") {
        opt.mode = Mode::kEcho;
      } else {
        Usage("--mode must be http or echo");
      }
    } else if (arg == "--threads") {
      int n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc() || ptr != value.data() + value.size() || n < 1 || n > 256) {
        Usage("--threads must be an integer in 1..256");
      }
      opt.threads = n;
    } else {
      Usage(("unknown option " + std::string(arg)).c_str());
    }
  }
  if (opt.listen.empty()) Usage("--listen is required");
  if (opt.name.empty()) Usage("--name is required");
  // The name goes verbatim into the response body; keep the HTTP framing intact.
  for (char ch : opt.name) {
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
      Usage("--name must not contain control characters");
    }
  }
  return opt;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);

  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  if (!ParseAddress(opt.listen, &addr, &addr_len)) {
    Usage(("bad --listen address (want IP:PORT or [IPv6]:PORT): " + opt.listen).c_str());
  }

  // Block the stop signals before any thread exists so that all threads inherit the mask
  // and only the main thread receives them (via sigwait below).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  if (pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr) != 0) Die("pthread_sigmask");
  signal(SIGPIPE, SIG_IGN);  // belt and braces: every send() uses MSG_NOSIGNAL

  // Open all listening sockets up front so bind errors are reported before "listening".
  // With port 0 the first bind picks the port and the other threads reuse it.
  bool reuse_port = opt.threads > 1;
  std::vector<int> listeners;
  for (int i = 0; i < opt.threads; ++i) {
    listeners.push_back(OpenListener(addr, addr_len, reuse_port));
    if (i == 0 && PortOf(addr) == 0) {
      sockaddr_storage bound{};
      socklen_t bound_len = sizeof(bound);
      if (getsockname(listeners[0], reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) {
        Die("getsockname");
      }
      SetPort(&addr, PortOf(bound));
    }
  }

  // Never read: once written it stays readable and wakes every loop.
  int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) Die("eventfd");

  Responses responses(opt.name);
  std::vector<std::thread> threads;
  for (int fd : listeners) {
    threads.emplace_back([&opt, &responses, fd, stop_fd] {
      Loop loop(opt, responses, fd, stop_fd);
      loop.Run();
    });
  }

  // Print the address as given, but with the real port if 0 was requested.
  std::string shown =
      opt.listen.substr(0, opt.listen.rfind(':') + 1) + std::to_string(PortOf(addr));
  std::fprintf(stderr, "gw-backend %s listening on %s mode=%s\n", opt.name.c_str(), shown.c_str(),
               opt.mode == Mode::kHttp ? "http" : "echo");

  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
  }
  uint64_t one = 1;
  if (write(stop_fd, &one, sizeof(one)) != static_cast<ssize_t>(sizeof(one))) Die("eventfd write");
  for (auto& t : threads) t.join();
  for (int fd : listeners) close(fd);
  close(stop_fd);
  std::fprintf(stderr, "gw-backend %s stopped (signal %d)\n", opt.name.c_str(), sig);
  return 0;
}
