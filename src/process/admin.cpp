#include "gw/process/admin.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "gw/admin/api.hpp"
#include "gw/admin/status.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/fd.hpp"
#include "gw/core/log.hpp"
#include "gw/http/parser.hpp"
#include "gw/net/socket.hpp"
#include "process/signals.hpp"

namespace gw::process {
namespace {

constexpr size_t kMaxConns = 128;
constexpr size_t kMaxFields = 64;
constexpr http::Limits kLimits{4096, 8192, 1024, 4096};  // start line, head, chunk line, trailer
constexpr size_t kMaxBody = 64 * 1024;
constexpr size_t kInCap = 8192 + kMaxBody + 16384;  // never buffer more unprocessed input than this
constexpr uint32_t kMaxRequests = 1000;
constexpr uint64_t kLingerMs = 2000;
constexpr uint64_t kEvictGraceMs = 1000;   // see evict_one()
constexpr uint64_t kAcceptPauseMs = 100;   // out of descriptors (the workers' pause)
constexpr size_t kMaxUnsent = 128 << 20;   // answers held for clients that do not read them, in all (respond())
constexpr size_t kSmallAnswer = 64 << 10;  // answers up to this size are always made

const char* reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
  }
}

std::string http_date() {
  char buf[64];
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  std::strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

// Writes run on a thread of their own: a commit waits for the shm writer
// lock (up to 10 s behind a gwctl stopped mid-change) and for the state
// file's fsync, and the poll loop must go on answering reads meanwhile
// (/metrics scrapes, the dashboard, /status all stood still behind one).
// One at a time, in the order they came; their answers wake the loop
// through an eventfd.
class WriteThread {
 public:
  struct Job {
    uint64_t conn = 0;
    std::string method, target, authorization, body;
  };
  struct Done {
    uint64_t conn = 0;
    admin::Response response;
  };

  WriteThread(const shm::Segment& seg, const config::Config& cfg)
      : state_(std::make_shared<State>(seg, cfg)), efd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (!efd_) throw std::runtime_error(fmt::format("admin: eventfd: {}", std::strerror(errno)));
    state_->efd = efd_.get();
    // The thread holds the state: a stop while a write waits for the lock
    // leaves it behind (detached) rather than wait the lock's 10 s; the
    // process then exits (_exit) with it.
    thread_ = std::thread([st = state_] { st->run(); });
  }
  ~WriteThread() {
    {
      std::lock_guard<std::mutex> l(state_->m);
      state_->stop = true;
    }
    state_->cv.notify_one();
    thread_.detach();
  }
  WriteThread(const WriteThread&) = delete;
  WriteThread& operator=(const WriteThread&) = delete;

  int fd() const noexcept { return efd_.get(); }

  void submit(Job job) {
    {
      std::lock_guard<std::mutex> l(state_->m);
      state_->jobs.push_back(std::move(job));
    }
    state_->cv.notify_one();
  }

  std::deque<Done> take() {
    uint64_t n = 0;
    [[maybe_unused]] auto r = ::read(efd_.get(), &n, sizeof n);
    std::lock_guard<std::mutex> l(state_->m);
    return std::exchange(state_->done, {});
  }

 private:
  struct State {
    State(const shm::Segment& seg, const config::Config& cfg) : api(seg, cfg) {}
    void run() {
      std::unique_lock<std::mutex> l(m);
      for (;;) {
        cv.wait(l, [&] { return stop || !jobs.empty(); });
        if (stop) return;
        Job job = std::move(jobs.front());
        jobs.pop_front();
        l.unlock();
        admin::Response r = api.handle({job.method, job.target, job.authorization, job.body});  // never throws
        l.lock();
        done.push_back({job.conn, std::move(r)});
        const uint64_t one = 1;
        [[maybe_unused]] auto w = ::write(efd, &one, sizeof one);
      }
    }
    admin::Api api;  // the thread's own (its table cache is not the loop's)
    int efd = -1;
    std::mutex m;
    std::condition_variable cv;
    std::deque<Job> jobs;
    std::deque<Done> done;
    bool stop = false;
  };
  std::shared_ptr<State> state_;
  core::UniqueFd efd_;
  std::thread thread_;
};

struct Conn {
  core::UniqueFd fd;
  uint64_t id = 0;       // names it to the write thread
  bool writing = false;  // its write is on the write thread: nothing more is read or parsed until answered
  enum class State : uint8_t { head, body, linger } state = State::head;
  std::string in;   // bytes read and not yet consumed
  std::string out;  // bytes to send, from out_off
  size_t out_off = 0;
  uint64_t deadline_ms = 0;
  uint64_t request_ms = 0;   // when the current request (or the wait for the next one) began
  bool close_after = false;  // close (lingering) once `out` is sent
  bool eof = false;          // the client's FIN was read: answer what is buffered, then close
  uint32_t requests = 0;
  // The request whose body is being read.
  std::string method, target, authorization;
  bool keep_alive = false, head_request = false, http10 = false;
  http::BodyDecoder body_dec;
  std::string body;
  bool pending() const noexcept { return out_off < out.size(); }
};

class AdminServer {
 public:
  AdminServer(const config::Config& cfg, const shm::Segment& seg, int listen_fd)
      : cfg_(cfg), api_(seg, cfg), writes_(seg, cfg), listen_fd_(listen_fd), fields_(kMaxFields) {}

  int run() {
    core::UniqueFd sfd = child_signal_fd();
    std::vector<pollfd> pfds;
    GW_LOG_INFO("admin server on {} ({} token: writes {})", cfg_.admin.listen.to_string(),
                cfg_.admin.token.empty() ? "no" : "a", cfg_.admin.token.empty() ? "refused" : "allowed");
    for (;;) {
      pfds.clear();
      pfds.push_back({sfd.get(), POLLIN, 0});
      // Draining: the new admin server accepts. Paused: out of descriptors.
      const bool paused = core::monotonic_ms() < accept_paused_until_ms_;
      pfds.push_back({draining_ || paused ? -1 : listen_fd_, POLLIN, 0});
      for (auto& c : conns_) {
        short ev = 0;
        if (c->pending()) ev = POLLOUT;  // back-pressure: nothing more is read until the answer is out
        else if (!c->writing && !c->eof && c->in.size() < kInCap) ev = POLLIN;
        pfds.push_back({c->fd.get(), ev, 0});
      }
      pfds.push_back({writes_.fd(), POLLIN, 0});
      int timeout = 1000;
      const uint64_t now0 = core::monotonic_ms();
      if (draining_)
        timeout = static_cast<int>(std::min<uint64_t>(1000, drain_until_ms_ > now0 ? drain_until_ms_ - now0 : 0));
      if (paused)
        timeout = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(timeout), accept_paused_until_ms_ - now0));
      for (auto& c : conns_)
        timeout = static_cast<int>(
            std::min<uint64_t>(static_cast<uint64_t>(timeout), c->deadline_ms > now0 ? c->deadline_ms - now0 : 0));
      ::poll(pfds.data(), pfds.size(), timeout);
      if (pfds[0].revents) {
        const StopSignal stop = read_child_signals(sfd.get(), cfg_.log_file);
        if (stop == StopSignal::now) return 0;
        if (stop == StopSignal::graceful && !draining_) {
          // A reload's new admin server takes over the socket (or gwd stops
          // gracefully): the requests under way are answered, the connections
          // then close; nothing new is accepted.
          draining_ = true;
          drain_until_ms_ = core::monotonic_ms() + cfg_.admin.timeout_ms;
        }
      }
      // Connections first (their pollfds are by position), then new ones.
      const size_t n = conns_.size();
      for (size_t i = 0; i < n; ++i) {
        if (const short rev = pfds[i + 2].revents) on_ready(*conns_[i], rev);
      }
      if (pfds[n + 2].revents) written();
      const uint64_t now = core::monotonic_ms();
      for (auto& c : conns_) {
        if (!c->fd || now < c->deadline_ms) continue;
        // A request begun and not in whole within admin.timeout_ms gets a 408
        // and the close, as gw's http listeners and HAProxy answer; an idle
        // keep-alive connection, or one whose answer or linger timed out, is
        // closed (it used to be closed with no answer in every case).
        const bool begun = c->state == Conn::State::body || (c->state == Conn::State::head && !c->in.empty());
        if (begun && !c->pending() && !c->writing) {
          c->in.clear();
          c->head_request = false;
          respond(*c,
                  admin::error_response(
                      408, fmt::format("the request {} did not come in whole within admin.timeout_ms "
                                       "({} ms)",
                                       c->state == Conn::State::body ? "body" : "head", cfg_.admin.timeout_ms)),
                  false, true);
          continue;
        }
        c->fd.reset();  // timed out (a slow or idle client)
      }
      if (draining_) {
        // Idle between requests: closed (as nginx closes idle keep-alive
        // connections on a graceful stop; a client retries on a new one).
        for (auto& c : conns_)
          if (c->fd && c->state == Conn::State::head && c->in.empty() && !c->pending()) c->fd.reset();
      }
      std::erase_if(conns_, [](const std::unique_ptr<Conn>& c) { return !c->fd; });
      if (draining_ && (conns_.empty() || now >= drain_until_ms_)) return 0;
      if (pfds[1].revents) accept_all();
    }
  }

 private:
  void accept_all() {
    bool evicted = false;
    for (int i = 0; i < 64; ++i) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        const int err = errno;
        if (err == EINTR || err == ECONNABORTED) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
          // Linux takes the descriptor before it looks at the queue: with
          // none left, an empty queue says EMFILE too. Nothing waits: fine.
          pollfd q{listen_fd_, POLLIN, 0};
          if (::poll(&q, 1, 0) <= 0 || !(q.revents & POLLIN)) return;
          // A client waits: a connection makes room for it (as when all
          // kMaxConns are taken), so that idle clients holding the last
          // descriptors cannot lock the API out; once per round.
          if (!evicted && !conns_.empty()) {
            evict_one(core::monotonic_ms());
            evicted = true;
            continue;
          }
          // Still none (the machine's, or other users' of this process):
          // stop polling the socket for a while, as the workers do; it
          // stayed readable and the loop spun, one log line per turn.
          const uint64_t now = core::monotonic_ms();
          accept_paused_until_ms_ = now + kAcceptPauseMs;
          ++accept_pauses_;
          if (last_pause_log_ms_ == 0 || now - last_pause_log_ms_ >= 1000) {
            last_pause_log_ms_ = now;
            GW_LOG_ERROR("admin: accept: {}; pausing accepts for {} ms ({} pause(s) so far)", std::strerror(err),
                         kAcceptPauseMs, accept_pauses_);
          }
          return;
        }
        GW_LOG_WARN("admin: accept: {}", std::strerror(err));
        return;
      }
      const uint64_t now = core::monotonic_ms();
      if (conns_.size() >= kMaxConns) evict_one(now);
      auto c = std::make_unique<Conn>();
      c->fd.reset(fd);
      c->id = ++last_id_;
      net::set_nodelay(fd);
      c->request_ms = now;
      c->deadline_ms = now + cfg_.admin.timeout_ms;
      conns_.push_back(std::move(c));
    }
  }

  // Answers of the write thread, to the connections still there.
  void written() {
    for (WriteThread::Done& d : writes_.take()) {
      auto it = std::find_if(conns_.begin(), conns_.end(), [&](const auto& c) { return c->id == d.conn; });
      if (it == conns_.end() || !(*it)->fd) continue;  // gone meanwhile (the change is made all the same)
      Conn& c = **it;
      c.writing = false;
      respond(c, d.response, c.keep_alive, false);
      process(c);  // pipelined requests behind it
      if (c.fd && c.eof && !c.pending() && c.state != Conn::State::linger) c.fd.reset();
    }
  }

  // Every slot is taken (slow or idle clients). An idle keep-alive
  // connection goes first, the one idle longest: its answers are all sent
  // and it has nothing unread, so its close is a FIN behind them (its client
  // opens a new connection, as nginx closes its reusable ones).
  // Then the connection whose request (or wait for its first one) began
  // longest ago. A request has a fixed time for its head and one for its
  // body (trickled bytes do not extend them), so holding slots means making
  // requests; and a connection younger than the grace period goes only if
  // every other one is younger still. Then one being answered, and last a
  // lingering close: its answer is all sent but may be unread, and closing
  // it while the client still sends turns the FIN into a reset that
  // destroys that answer. No set of slow or idle clients locks the API out.
  void evict_one(uint64_t now) {
    const uint64_t grace = std::min<uint64_t>(kEvictGraceMs, cfg_.admin.timeout_ms);
    auto cls = [&](const Conn& c) {  // lower goes first
      if (c.state == Conn::State::linger) return 4;
      if (c.pending() || c.writing) return 3;
      if (c.requests > 0 && c.state == Conn::State::head && c.in.empty()) return 0;  // idle keep-alive
      return now - c.request_ms >= grace ? 1 : 2;
    };
    auto rank = [&](const std::unique_ptr<Conn>& c) { return std::pair<int, uint64_t>(cls(*c), c->request_ms); };
    auto victim =
        std::min_element(conns_.begin(), conns_.end(), [&](const auto& a, const auto& b) { return rank(a) < rank(b); });
    conns_.erase(victim);
  }

  void on_ready(Conn& c, short rev) {
    if (rev & POLLNVAL) {
      c.fd.reset();
      return;
    }
    if (c.pending() && (rev & (POLLOUT | POLLERR | POLLHUP))) {
      if (!flush(c)) return;
    }
    if (!c.pending() && (rev & (POLLIN | POLLERR | POLLHUP))) {
      if (!read_in(c)) return;
    }
    process(c);
    // A half-closed client whose buffered requests are all answered (or
    // whose last request is cut short) is done.
    if (c.fd && c.eof && !c.pending() && !c.writing && c.state != Conn::State::linger) c.fd.reset();
  }

  // Reads what the socket has; false if the connection was closed.
  bool read_in(Conn& c) {
    char buf[16384];
    for (;;) {
      if (c.in.size() >= kInCap) return true;
      const ssize_t n = ::recv(c.fd.get(), buf, std::min(sizeof(buf), kInCap - c.in.size()), MSG_DONTWAIT);
      if (n > 0) {
        if (c.state == Conn::State::linger) continue;  // drained and dropped
        c.in.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n == 0 && c.state != Conn::State::linger) {
        // A half-close: the requests already in are answered, then the connection closes.
        c.eof = true;
        return true;
      }
      c.fd.reset();  // a reset, or the end of a lingering close
      return false;
    }
  }

  // Sends what it can of `out`; false if the connection was closed.
  bool flush(Conn& c) {
    while (c.pending()) {
      const ssize_t n =
          ::send(c.fd.get(), c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        c.out_off += static_cast<size_t>(n);
        c.deadline_ms = core::monotonic_ms() + cfg_.admin.timeout_ms;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      c.fd.reset();
      return false;
    }
    c.out.clear();
    c.out_off = 0;
    if (c.close_after && c.state != Conn::State::linger) {
      // Our FIN; the client's unread bytes are drained for a while so that
      // they do not turn the FIN into a reset that destroys the answer.
      ::shutdown(c.fd.get(), SHUT_WR);
      c.state = Conn::State::linger;
      c.in.clear();
      c.deadline_ms = core::monotonic_ms() + std::min<uint64_t>(kLingerMs, cfg_.admin.timeout_ms);
    }
    return true;
  }

  void process(Conn& c) {
    while (c.fd && !c.pending() && !c.writing && !c.close_after) {
      if (c.state == Conn::State::head) {
        if (c.in.empty()) return;
        http::Parser p(http::Parser::Kind::request, std::span<http::Field>(fields_.data(), fields_.size()), kLimits);
        const http::ParseStatus st = p.parse(c.in);
        if (st == http::ParseStatus::need_more) return;
        if (st == http::ParseStatus::error) {
          respond(c,
                  admin::error_response(http::error_status(p.error()),
                                        fmt::format("bad request: {}", http::error_name(p.error()))),
                  false, true);
          continue;
        }
        const http::Head& h = p.head();
        c.method = h.method_name;
        c.target = h.target;
        if (h.target_form == http::TargetForm::absolute) {
          // A server must take the absolute-form too (RFC 9112 3.2.2): its
          // path and query are what follows the authority, and an empty path
          // is "/".
          const std::string_view rest =
              h.target.substr(static_cast<size_t>(h.authority.data() - h.target.data()) + h.authority.size());
          c.target = rest.empty() || rest.front() == '?' ? "/" + std::string(rest) : std::string(rest);
        }
        const http::Field* auth = http::find_field(h, "authorization");
        c.authorization = auth ? auth->value : std::string_view();
        c.keep_alive = h.keep_alive && c.requests + 1 < kMaxRequests && !draining_;
        c.http10 = h.version == http::Version::http10;
        c.head_request = h.method == http::Method::head;
        c.body.clear();
        if (h.body == http::BodyKind::length && h.content_length > kMaxBody) {
          c.in.clear();
          respond(c,
                  admin::error_response(
                      413, fmt::format("the body is {} bytes; at most {} are accepted", h.content_length, kMaxBody)),
                  false, true);
          continue;
        }
        // "*" (OPTIONS only, the parser checks) asks about the server: api_ answers it.
        if (h.target_form != http::TargetForm::origin && h.target_form != http::TargetForm::absolute &&
            h.target_form != http::TargetForm::asterisk) {
          c.in.clear();
          respond(c, admin::error_response(400, "expected a path or an absolute URI as the request target"), false,
                  true);
          continue;
        }
        const bool expect_continue = h.expect_continue;
        c.body_dec.reset(h, kLimits);
        c.in.erase(0, h.head_len);
        c.state = Conn::State::body;
        // The whole body within timeout_ms of its head (not per read: a
        // trickle does not keep a slot).
        c.deadline_ms = core::monotonic_ms() + cfg_.admin.timeout_ms;
        if (!c.body_dec.done()) {
          // Refused whatever the body says (no such endpoint, no token):
          // answered now, before the client sends it or is asked to.
          admin::Request pre{c.method, c.target, c.authorization, {}};
          if (std::optional<admin::Response> refused = api_.precheck(pre)) {
            c.in.clear();
            respond(c, *refused, false, true);
            continue;
          }
        }
        if (expect_continue && !c.body_dec.done() && c.in.empty()) c.out = "HTTP/1.1 100 Continue\r\n\r\n";
        if (!flush(c)) return;
        continue;
      }
      if (c.state == Conn::State::body) {
        std::string_view in = c.in;
        size_t used = 0;
        while (!c.body_dec.done() && !in.empty()) {
          http::BodyStep s = c.body_dec.decode(in);
          c.body.append(s.data);
          in.remove_prefix(s.consumed);
          used += s.consumed;
          if (s.status == http::BodyStatus::error) {
            c.in.clear();
            respond(c, admin::error_response(400, fmt::format("bad request body: {}", http::error_name(s.error))),
                    false, true);
            break;
          }
          if (c.body.size() > kMaxBody) {
            c.in.clear();
            respond(c, admin::error_response(413, fmt::format("the body is over {} bytes", kMaxBody)), false, true);
            break;
          }
          if (s.status == http::BodyStatus::done) break;
        }
        if (c.close_after) return;
        c.in.erase(0, used);
        if (!c.body_dec.done()) return;  // more body to come
        if (c.method != "GET" && c.method != "HEAD" && c.method != "OPTIONS") {
          // A change: answered once the write thread made it; the connection
          // does not time out meanwhile (the lock wait is bounded).
          c.writing = true;
          c.deadline_ms = std::numeric_limits<uint64_t>::max();
          writes_.submit({c.id, c.method, c.target, c.authorization, std::move(c.body)});
          c.body.clear();
          return;
        }
        admin::Request rq{c.method, c.target, c.authorization, c.body};
        admin::Response rs = api_.handle(rq);
        respond(c, rs, c.keep_alive, false);
        continue;
      }
      return;  // linger: nothing to process
    }
  }

  // Queues an answer and starts sending it. `abort`: the request was not
  // read whole; the connection closes after the answer.
  void respond(Conn& c, const admin::Response& r0, bool keep_alive, bool abort) {
    // Answers wait in memory until their client takes them: clients that
    // ask for /metrics of a large table (22 MB at 4,000 hosts) and read
    // nothing held it all (480 MB for 20 of them). Past kMaxUnsent in all,
    // a large answer is a 503 instead, to try again.
    admin::Response busy;
    const admin::Response* rp = &r0;
    if (r0.body.size() > kSmallAnswer) {
      size_t unsent = 0;
      for (const auto& o : conns_) unsent += o->out.size() - o->out_off;
      if (unsent + r0.body.size() > kMaxUnsent) {
        busy = admin::error_response(
            503, fmt::format("{} bytes of answers wait for their clients to read them; try again", unsent));
        busy.retry_after = "1";
        rp = &busy;
      }
    }
    const admin::Response& r = *rp;
    const bool close = abort || !keep_alive;
    ++c.requests;
    std::string head = fmt::format(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: gw-admin\r\nContent-Type: {}\r\n"
        "Content-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        r.status, reason(r.status), http_date(), r.content_type, r.body.size());
    if (!r.allow.empty()) head += fmt::format("Allow: {}\r\n", r.allow);
    if (!r.www_authenticate.empty()) head += fmt::format("WWW-Authenticate: {}\r\n", r.www_authenticate);
    if (!r.retry_after.empty()) head += fmt::format("Retry-After: {}\r\n", r.retry_after);
    if (!r.location.empty()) head += fmt::format("Location: {}\r\n", r.location);
    if (close) head += "Connection: close\r\n";
    else if (c.http10) head += "Connection: keep-alive\r\n";  // else an HTTP/1.0 client waits for our close
    head += "\r\n";
    c.out += head;
    if (!c.head_request) c.out += r.body;
    c.state = Conn::State::head;
    c.close_after = close;
    c.head_request = false;
    c.request_ms = core::monotonic_ms();
    c.deadline_ms = c.request_ms + cfg_.admin.timeout_ms;  // the next head (and idle) from here
    if (r.status >= 500) GW_LOG_WARN("admin: {} {} -> {}", c.method, c.target, r.status);
    flush(c);
  }

  const config::Config& cfg_;
  admin::Api api_;
  WriteThread writes_;
  uint64_t last_id_ = 0;
  int listen_fd_;
  std::vector<http::Field> fields_;
  std::vector<std::unique_ptr<Conn>> conns_;
  bool draining_ = false;                // SIGTERM: answering what is under way, then exit
  uint64_t drain_until_ms_ = 0;          // ...at the latest (admin.timeout_ms after the signal)
  uint64_t accept_paused_until_ms_ = 0;  // out of descriptors: the listening socket is not polled until then
  uint64_t accept_pauses_ = 0;
  uint64_t last_pause_log_ms_ = 0;
};

}  // namespace

int run_admin(const config::Config& cfg, const shm::Segment& seg, int listen_fd) {
  try {
    AdminServer s(cfg, seg, listen_fd);
    return s.run();
  } catch (const std::exception& e) {
    GW_LOG_ERROR("admin server failed: {}", e.what());
    return 1;
  }
}

}  // namespace gw::process
