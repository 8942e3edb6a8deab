// gw-backend: a small, standalone test/benchmark backend for gw.
//
//   gw-backend --listen IP:PORT --name NAME [--mode http|echo|device] [--threads N]
//              [--stats IP:PORT]
//
// http mode answers every HTTP/1.x request with "200 OK" and the body "backend NAME\n"
// (keep-alive and pipelining supported, responses in request order). echo mode sends every
// byte back; when the client half-closes, the remaining data is echoed and then our write
// side is shut down too.
//
// device mode speaks the device frame protocol (docs/tools.md):
//
//   +--------+---------+----------+--------------+------------------------+
//   | u8 type| u8 ver  | u16 time | u16 body_len | body_len bytes of JSON |   (big-endian)
//   +--------+---------+----------+--------------+------------------------+
//
// A connection may carry frames of many devices (the gateway multiplexes them). Every devid
// seen is recorded. A heartbeat (type 2) is answered with one type 2 frame, same version and
// time, body {"devid":"<devid>","backend":"NAME"}; every other frame is echoed unchanged.
// --stats IP:PORT serves GET /devids and GET /reset (see StatsServer).
//
// Design: one epoll loop per thread, each thread with its own listening socket (SO_REUSEPORT
// when N > 1, so the kernel spreads connections). Level-triggered epoll, non-blocking
// sockets. The main thread only waits for SIGTERM/SIGINT and then stops the loops. An idle
// connection holds no buffer memory in device mode: input and output buffers only exist
// while a partial frame or unsent output is waiting.
//
// Deliberately self-contained: libc + libstdc++ only, no gw library.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

namespace {

enum class Mode { kHttp, kEcho, kDevice };

struct Options {
  std::string listen;
  std::string name;
  Mode mode = Mode::kHttp;
  int threads = 1;
  std::string stats;  // optional IP:PORT of the stats HTTP server
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
// Device frames: 6-byte header, body_len is a u16 so a body is at most 65535 bytes.
constexpr size_t kFrameHeader = 6;
constexpr size_t kMaxFrameBody = 65535;
constexpr uint8_t kFrameHeartbeat = 2;
// Longest --name accepted in device mode (it goes into every heartbeat answer).
constexpr size_t kMaxDeviceName = 1024;
// Stats server: request head limit and socket timeouts (it serves one client at a time).
constexpr size_t kMaxStatsRequest = 8 * 1024;
constexpr int kStatsIoTimeoutSec = 2;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "gw-backend: %s: %s\n", what, std::strerror(errno));
  std::_Exit(1);
}

// A usage error: one line and exit status 2, as gwd's and gwctl's.
[[noreturn]] void Usage(const char* msg) {
  std::fprintf(stderr, "gw-backend: %s (see gw-backend --help)\n", msg);
  std::exit(2);
}

[[noreturn]] void Help() {
  std::printf(
      "usage: gw-backend --listen IP:PORT --name NAME [--mode http|echo|device] "
      "[--threads N] [--stats IP:PORT]\n");
  std::exit(0);
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
      return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\nContent-Type: text/plain\r\n" +
             (close ? "Connection: close\r\n" : "") + "\r\n";
    };
    ok = head(false) + body;
    ok_close = head(true) + body;
    ok_head = head(false);
    ok_head_close = head(true);
    auto error = [](const char* status) {
      std::string text = std::string(status) + "\n";
      return "HTTP/1.1 " + std::string(status) + "\r\nContent-Length: " + std::to_string(text.size()) +
             "\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + text;
    };
    bad_request = error("400 Bad Request");
    too_large = error("431 Request Header Fields Too Large");
    not_impl = error("501 Not Implemented");
  }
};

// ---------------------------------------------------------------------------------------
// Device mode: the devid scan and the state shared with the stats server.

// A strict little scanner for one JSON object. It only needs to find the top-level string
// member "devid", but it checks the whole body so that invalid JSON records nothing.
class JsonScan {
 public:
  explicit JsonScan(std::string_view text) : p_(text.data()), end_(text.data() + text.size()) {}

  // The raw (still escaped) content of the top-level string member "devid", or nullopt if
  // the body is not one valid JSON object or has no such string member. The raw form is
  // valid inside a JSON string as it is, so it can be copied into replies verbatim.
  std::optional<std::string_view> Devid() {
    std::optional<std::string_view> found;
    SkipWs();
    if (!Eat('{')) return std::nullopt;
    SkipWs();
    if (!Eat('}')) {
      for (;;) {
        std::string_view key;
        if (!String(&key)) return std::nullopt;
        SkipWs();
        if (!Eat(':')) return std::nullopt;
        SkipWs();
        if (key == "devid" && !found && p_ < end_ && *p_ == '"') {
          std::string_view value;
          if (!String(&value)) return std::nullopt;
          found = value;
        } else if (!Value(0)) {
          return std::nullopt;
        }
        SkipWs();
        if (Eat('}')) break;
        if (!Eat(',')) return std::nullopt;
        SkipWs();
      }
    }
    SkipWs();
    if (p_ != end_) return std::nullopt;  // trailing garbage
    return found;
  }

 private:
  static constexpr int kMaxDepth = 64;

  void SkipWs() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  bool Eat(char c) {
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }

  // A string starting at the current '"'; `raw` gets the content between the quotes.
  bool String(std::string_view* raw) {
    if (!Eat('"')) return false;
    const char* start = p_;
    while (p_ < end_) {
      auto ch = static_cast<unsigned char>(*p_);
      if (ch == '"') {
        *raw = std::string_view(start, static_cast<size_t>(p_ - start));
        ++p_;
        return true;
      }
      if (ch < 0x20) return false;
      if (ch == '\\') {
        ++p_;
        if (p_ >= end_) return false;
        if (*p_ == 'u') {
          for (int i = 0; i < 4; ++i) {
            ++p_;
            if (p_ >= end_ || std::isxdigit(static_cast<unsigned char>(*p_)) == 0) return false;
          }
        } else if (std::strchr("\"\\/bfnrt", *p_) == nullptr) {
          return false;
        }
      }
      ++p_;
    }
    return false;
  }

  // Skips any value. Numbers and literals are checked loosely (their characters only).
  bool Value(int depth) {
    if (p_ >= end_ || depth > kMaxDepth) return false;
    char open = *p_;
    if (open == '"') {
      std::string_view ignored;
      return String(&ignored);
    }
    if (open == '{' || open == '[') {
      char close = open == '{' ? '}' : ']';
      ++p_;
      SkipWs();
      if (Eat(close)) return true;
      for (;;) {
        if (open == '{') {
          std::string_view ignored;
          if (!String(&ignored)) return false;
          SkipWs();
          if (!Eat(':')) return false;
          SkipWs();
        }
        if (!Value(depth + 1)) return false;
        SkipWs();
        if (Eat(close)) return true;
        if (!Eat(',')) return false;
        SkipWs();
      }
    }
    const char* start = p_;
    while (p_ < end_ &&
           (std::isalnum(static_cast<unsigned char>(*p_)) != 0 || *p_ == '-' || *p_ == '+' || *p_ == '.')) {
      ++p_;
    }
    return p_ != start;
  }

  const char* p_;
  const char* end_;
};

// Escapes a string for use inside a JSON string literal.
std::string JsonEscape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", u);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

// Counters of one loop thread. Only that thread writes them (plain load + store, no locked
// instruction); the stats server reads them. One cache line each so threads don't share.
struct alignas(64) ThreadCounters {
  std::atomic<int64_t> connections{0};  // currently open connections
  std::atomic<uint64_t> frames{0};      // device frames received in total
};

// Adds to a counter that only the calling thread writes.
template <typename T>
void SingleWriterAdd(std::atomic<T>* counter, T delta) {
  counter->store(counter->load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

// The set of devids seen, shared by all loop threads and the stats server.
class DevidRegistry {
 public:
  // Any thread.
  void Record(std::string_view devid) {
    std::lock_guard<std::mutex> lock(mu_);
    if (ids_.find(devid) == ids_.end()) ids_.emplace(devid);
  }

  // Any thread. A sorted copy.
  std::vector<std::string> Snapshot() const {
    std::vector<std::string> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      out.assign(ids_.begin(), ids_.end());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  // Any thread.
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    ids_.clear();
  }

 private:
  // Transparent hashing: looking up a string_view doesn't build a std::string.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  mutable std::mutex mu_;
  std::unordered_set<std::string, Hash, std::equal_to<>> ids_;
};

// Everything device mode shares between threads; created once in main.
struct Shared {
  Shared(const std::string& name, int threads)
      : name_json(JsonEscape(name)),
        counters(std::make_unique<ThreadCounters[]>(static_cast<size_t>(threads))),
        thread_count(threads) {}

  std::string name_json;  // NAME escaped for JSON
  DevidRegistry devids;
  std::unique_ptr<ThreadCounters[]> counters;  // one per loop thread
  int thread_count;
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
  // `counters` is this thread's slot in `shared`.
  Loop(const Options& opt, const Responses& responses, Shared* shared, ThreadCounters* counters, int listen_fd,
       int stop_fd)
      : opt_(opt),
        resp_(responses),
        shared_(shared),
        counters_(counters),
        listen_fd_(listen_fd),
        scratch_(kScratchBytes) {
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
          case Kind::kStop: return;  // stop eventfd is never read, so every thread sees it
          case Kind::kListener: Accept(); break;
          case Kind::kConn: OnConn(static_cast<Conn*>(h), evs[i].events); break;
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
      SingleWriterAdd<int64_t>(&counters_->connections, 1);
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
    SingleWriterAdd<int64_t>(&counters_->connections, -1);
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
        } else if (opt_.mode == Mode::kDevice) {
          if (!FeedDevice(c, data, len)) return false;
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

  // We stop reading while output is queued: always in echo and device mode (strict
  // back-pressure), past a threshold in http mode, and once a "close" response has been
  // queued.
  bool ReadPaused(const Conn* c) const {
    if (c->lingering) return false;
    if (opt_.mode == Mode::kEcho || opt_.mode == Mode::kDevice) return c->pending() > 0;
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
    if (opt_.mode == Mode::kDevice) {
      std::string().swap(c->out);  // an idle device connection keeps no buffer
    } else {
      c->out.clear();
    }
    c->out_off = 0;
    return true;
  }

  // Decides what to do next once reads/writes are done: shut down, close, or wait for
  // the right events. Returns false if the connection was closed.
  bool Update(Conn* c) {
    bool pending = c->pending() > 0;
    if (!pending && !c->lingering) {
      bool finish = (opt_.mode == Mode::kHttp) ? (c->close_after || c->peer_eof) : c->peer_eof;
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

  // Device mode: consumes frame bytes, answers every complete frame. Only called while no
  // output is pending (reads pause otherwise), so answers can be sent straight from stage_;
  // only what the socket doesn't take is copied into c->out. Returns false if the
  // connection was closed.
  bool FeedDevice(Conn* c, const char* data, size_t len) {
    stage_.clear();
    if (c->in.empty()) {
      // Fast path: parse straight from the read buffer, keep only a partial frame.
      size_t used = ParseFrames(std::string_view(data, len));
      if (used < len) c->in.assign(data + used, len - used);
    } else {
      c->in.append(data, len);
      size_t used = ParseFrames(c->in);
      c->in.erase(0, used);
      if (c->in.empty()) std::string().swap(c->in);
    }
    return SendStaged(c);
  }

  // Handles the complete frames at the start of `buf`; returns the bytes consumed.
  size_t ParseFrames(std::string_view buf) {
    size_t pos = 0;
    uint64_t frames = 0;
    while (buf.size() - pos >= kFrameHeader) {
      auto byte = [&](size_t i) { return static_cast<uint8_t>(buf[pos + i]); };
      size_t body_len = static_cast<size_t>(byte(4)) << 8 | byte(5);
      if (buf.size() - pos < kFrameHeader + body_len) break;
      OnFrame(buf.substr(pos, kFrameHeader + body_len));
      pos += kFrameHeader + body_len;
      ++frames;
    }
    if (frames > 0) SingleWriterAdd<uint64_t>(&counters_->frames, frames);
    return pos;
  }

  // One complete frame: record its devid, stage the answer.
  void OnFrame(std::string_view frame) {
    std::string_view body = frame.substr(kFrameHeader);
    std::optional<std::string_view> devid = JsonScan(body).Devid();
    if (devid) shared_->devids.Record(*devid);
    if (static_cast<uint8_t>(frame[0]) != kFrameHeartbeat) {
      stage_.append(frame);  // echoed byte for byte
      return;
    }
    // {"devid":"<devid>","backend":"<NAME>"}; an oversized devid is answered as "" (the
    // body length must fit the u16).
    constexpr std::string_view kOpen = "{\"devid\":\"";
    constexpr std::string_view kMid = "\",\"backend\":\"";
    constexpr std::string_view kClose = "\"}";
    const std::string& name = shared_->name_json;
    size_t fixed = kOpen.size() + kMid.size() + name.size() + kClose.size();
    std::string_view id = devid.value_or(std::string_view());
    if (fixed + id.size() > kMaxFrameBody) id = {};
    size_t reply_len = fixed + id.size();
    stage_.append(frame.substr(0, 4));  // type, version, time
    stage_ += static_cast<char>(reply_len >> 8);
    stage_ += static_cast<char>(reply_len & 0xff);
    stage_.append(kOpen);
    stage_.append(id);
    stage_.append(kMid);
    stage_.append(name);
    stage_.append(kClose);
  }

  // Sends stage_ (c has no pending output); queues the unsent rest. Returns false if the
  // connection was closed.
  bool SendStaged(Conn* c) {
    size_t off = 0;
    while (off < stage_.size()) {
      ssize_t n = send(c->fd, stage_.data() + off, stage_.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      Close(c);
      return false;
    }
    if (off < stage_.size()) Queue(c, stage_.data() + off, stage_.size() - off);
    if (stage_.capacity() > kScratchBytes * 4) std::string().swap(stage_);
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
  Shared* shared_;
  ThreadCounters* counters_;
  int ep_ = -1;
  int listen_fd_ = -1;
  Handle listener_{Kind::kListener};
  Handle stop_{Kind::kStop};
  bool listener_paused_ = false;
  std::chrono::steady_clock::time_point listener_resume_at_{};
  std::chrono::steady_clock::time_point next_linger_sweep_{};
  bool warned_fds_ = false;
  std::vector<char> scratch_;
  std::string stage_;  // device mode: answers to one read, before they are sent
  std::unordered_set<Conn*> conns_;
  std::unordered_set<Conn*> lingering_;
};

// ---------------------------------------------------------------------------------------
// The stats server: a tiny blocking HTTP/1.1 server on its own thread, one request per
// connection (Connection: close), one client at a time.
//
//   GET /devids  {"name":"NAME","connections":N,"frames":N,"devids":["a","b",...]}
//   GET /reset   clears the devid set, answers {"ok":true}

class StatsServer {
 public:
  StatsServer(Shared* shared, int listen_fd, int stop_fd) : shared_(shared), listen_fd_(listen_fd), stop_fd_(stop_fd) {}

  // Runs on the stats thread until the stop eventfd becomes readable.
  void Run() {
    for (;;) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        Die("poll");
      }
      if (fds[1].revents != 0) return;
      if (fds[0].revents == 0) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);  // blocking socket
      if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE) {
          std::this_thread::sleep_for(kAcceptPause);  // let the loops close something
        }
        continue;  // EAGAIN, ECONNABORTED, ...: try again on the next poll
      }
      Serve(fd);
      close(fd);
    }
  }

 private:
  void Serve(int fd) {
    timeval tv{};
    tv.tv_sec = kStatsIoTimeoutSec;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::string req;
    char buf[2048];
    while (req.find("\r\n\r\n") == std::string::npos) {
      if (req.size() > kMaxStatsRequest) return Send(fd, "431 Request Header Fields Too Large", "{}");
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // EOF, error or timeout: nothing to answer
      req.append(buf, static_cast<size_t>(n));
    }
    // Request line: METHOD SP TARGET SP VERSION
    std::string_view line(req.data(), req.find("\r\n"));
    size_t sp1 = line.find(' ');
    size_t sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) return Send(fd, "400 Bad Request", "{}");
    std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    if (method != "GET") return Send(fd, "405 Method Not Allowed", "{}");
    if (target == "/devids") return Send(fd, "200 OK", DevidsJson());
    if (target == "/reset") {
      shared_->devids.Clear();
      return Send(fd, "200 OK", "{\"ok\":true}");
    }
    Send(fd, "404 Not Found", "{}");
  }

  std::string DevidsJson() const {
    int64_t connections = 0;
    uint64_t frames = 0;
    for (int i = 0; i < shared_->thread_count; ++i) {
      connections += shared_->counters[i].connections.load(std::memory_order_relaxed);
      frames += shared_->counters[i].frames.load(std::memory_order_relaxed);
    }
    std::vector<std::string> ids = shared_->devids.Snapshot();
    std::string body = "{\"name\":\"" + shared_->name_json + "\",\"connections\":" + std::to_string(connections) +
                       ",\"frames\":" + std::to_string(frames) + ",\"devids\":[";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i > 0) body += ',';
      body += '"';
      body += ids[i];  // already valid JSON string content (JsonScan::Devid)
      body += '"';
    }
    body += "]}";
    return body;
  }

  static void Send(int fd, std::string_view status, std::string_view body) {
    std::string out = "HTTP/1.1 " + std::string(status) +
                      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size() + 1) +
                      "\r\nConnection: close\r\n\r\n";
    out.append(body);
    out += '\n';
    size_t off = 0;
    while (off < out.size()) {
      ssize_t n = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }

  Shared* shared_;
  int listen_fd_;
  int stop_fd_;
};

// Raises the soft descriptor limit to the hard one: device mode holds many idle connections.
void RaiseFdLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= lim.rlim_max) return;
  lim.rlim_cur = lim.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
    std::fprintf(stderr, "gw-backend: setrlimit(RLIMIT_NOFILE): %s\n", std::strerror(errno));
  }
}

}  // namespace

namespace {

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") Help();
    if (arg != "--listen" && arg != "--name" && arg != "--mode" && arg != "--threads" && arg != "--stats") {
      Usage(("unknown option " + std::string(arg)).c_str());
    }
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
      } else if (value == "device") {
        opt.mode = Mode::kDevice;
      } else {
        Usage("--mode must be http, echo or device");
      }
    } else if (arg == "--threads") {
      int n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc() || ptr != value.data() + value.size() || n < 1 || n > 256) {
        Usage("--threads must be an integer in 1..256");
      }
      opt.threads = n;
    } else {
      opt.stats = value;
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
  if (opt.mode == Mode::kDevice && opt.name.size() > kMaxDeviceName) {
    Usage("--name is too long for device mode (1024 bytes at most)");
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
  sockaddr_storage stats_addr{};
  socklen_t stats_len = 0;
  if (!opt.stats.empty() && !ParseAddress(opt.stats, &stats_addr, &stats_len)) {
    Usage(("bad --stats address (want IP:PORT or [IPv6]:PORT): " + opt.stats).c_str());
  }
  RaiseFdLimit();

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

  int stats_fd = opt.stats.empty() ? -1 : OpenListener(stats_addr, stats_len, false);

  // Never read: once written it stays readable and wakes every loop.
  int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) Die("eventfd");

  Responses responses(opt.name);
  Shared shared(opt.name, opt.threads);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < listeners.size(); ++i) {
    int fd = listeners[i];
    ThreadCounters* counters = &shared.counters[i];
    threads.emplace_back([&opt, &responses, &shared, counters, fd, stop_fd] {
      Loop loop(opt, responses, &shared, counters, fd, stop_fd);
      loop.Run();
    });
  }
  if (stats_fd >= 0) {
    threads.emplace_back([&shared, stats_fd, stop_fd] {
      StatsServer server(&shared, stats_fd, stop_fd);
      server.Run();
    });
  }

  // Print the address as given, but with the real port if 0 was requested.
  std::string shown = opt.listen.substr(0, opt.listen.rfind(':') + 1) + std::to_string(PortOf(addr));
  const char* mode_name = opt.mode == Mode::kHttp ? "http" : opt.mode == Mode::kEcho ? "echo" : "device";
  std::fprintf(stderr, "gw-backend %s listening on %s mode=%s\n", opt.name.c_str(), shown.c_str(), mode_name);
  if (stats_fd >= 0) {
    std::fprintf(stderr, "gw-backend %s stats on %s\n", opt.name.c_str(), opt.stats.c_str());
  }

  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
  }
  uint64_t one = 1;
  if (write(stop_fd, &one, sizeof(one)) != static_cast<ssize_t>(sizeof(one))) Die("eventfd write");
  for (auto& t : threads) t.join();
  for (int fd : listeners) close(fd);
  if (stats_fd >= 0) close(stats_fd);
  close(stop_fd);
  std::fprintf(stderr, "gw-backend %s stopped (signal %d)\n", opt.name.c_str(), sig);
  return 0;
}
