// gwload: a tcpkali-style load generator for the device frame protocol (docs/tools.md).
//
//   gwload --target IP:PORT[,IP:PORT...] [-c N] [--connect-rate N] [-r R] [-T S] [--src A,B,...]
//          [--procs N] [--devid-prefix P] [--devid-offset K] [--json] [--churn]
//          [--first-reply|--no-first-reply] [--timeout-ms MS]
//
// Hold mode (default): open N connections at --connect-rate; each sends a login frame
// (type 1) and waits for its echo, then sends heartbeats (type 2) at -r per second with a
// random phase and times each reply. Once every connection is up (or has failed), in every
// process, hold for -T seconds, then stop sending and drain: wait, at most --timeout-ms, for
// the replies still due (a missing one is a timeout), close everything and report. Heartbeat
// latency is recorded separately for the ramp and the hold (and its drain): the hold figures
// see no connection set-up.
// Churn mode: each of the N slots loops connect -> login -> echo -> close for -T seconds.
//
// Frame: u8 type, u8 version, u16 time, u16 body_len (big-endian), then body_len bytes of
// JSON: {"devid":"<prefix><i>"}, i = --devid-offset + global connection index.
//
// Design: one single-threaded, level-triggered epoll loop per process. Connection slots
// live in one vector; an epoll tag packs {generation, slot} so an event for a closed and
// reused slot is recognised. Each slot has at most one timer (its next heartbeat or reply
// deadline) in a hashed timing wheel with 1 ms ticks. --procs N forks N workers, each
// owning an equal share of the slots; workers send progress and their final counters and
// histograms to the parent over a pipe, and the parent prints one merged report.
//
// Standalone: libc, libstdc++, fmt and CLI11 (header-only); no gw library.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "histogram.hpp"

namespace gwload {
namespace {

// Frame protocol.
constexpr size_t kFrameHeader = 6;
constexpr uint8_t kTypeLogin = 1;
constexpr uint8_t kTypeHeartbeat = 2;
constexpr uint8_t kFrameVersion = 1;
constexpr size_t kMaxPrefix = 1000;
constexpr size_t kMaxFrame = kFrameHeader + kMaxPrefix + 64;

// Loop tuning.
constexpr size_t kScratchBytes = 64 * 1024;
constexpr int kMaxEvents = 1024;
// Connection starts between two epoll_waits, so replies keep being read (and timed) while
// thousands of connections start with --connect-rate 0.
constexpr size_t kMaxStartsPerPass = 256;
// How far the connect pacer may catch up after the loop was late (seconds of rate).
constexpr double kPacerBurstSeconds = 0.05;
constexpr int64_t kProgressUs = 1'000'000;
// Descriptors a worker needs besides its connections (epoll, pipes, stdio).
constexpr uint64_t kSpareFds = 32;

constexpr int kExitOk = 0;
constexpr int kExitErrors = 1;
constexpr int kExitUsage = 2;

// errno values are small; anything larger is counted in slot 0.
constexpr size_t kErrnoSlots = 256;

volatile std::sig_atomic_t g_stop = 0;
// --procs N: the parent's SIGUSR1 once every worker has ramped up; workers hold only then.
volatile std::sig_atomic_t g_hold_go = 0;

void OnStopSignal(int) {
  g_stop = 1;
}
void OnHoldSignal(int) {
  g_hold_go = 1;
}

int64_t NowUs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000;
}

[[noreturn]] void UsageError(const std::string& msg) {
  std::fprintf(stderr, "gwload: %s (see gwload --help)\n", msg.c_str());
  std::exit(kExitUsage);
}

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "gwload: %s: %s\n", what, std::strerror(errno));
  std::exit(kExitErrors);
}

// "ECONNREFUSED" for 111; slot 0 collects errno values too large for the tables.
std::string ErrnoName(size_t err) {
  if (err == 0) return "other";
  const char* name = strerrorname_np(static_cast<int>(err));
  return name != nullptr ? std::string(name) : fmt::format("errno{}", err);
}

// ---------------------------------------------------------------------------------------
// Options.

struct Address {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

struct Options {
  std::string target;
  uint64_t connections = 100;
  double connect_rate = 1000;  // new connections per second over all processes; 0 = no limit
  double rate = 1;             // heartbeats per second per connection; 0 = none
  double duration = 10;        // hold (or churn) seconds
  std::vector<std::string> src;
  int procs = 1;
  std::string devid_prefix = "dev-";
  uint64_t devid_offset = 0;
  bool json = false;
  bool churn = false;
  bool first_reply = true;
  int64_t timeout_ms = 5000;

  std::vector<Address> target_addrs;  // connection i goes to target_addrs[i % n]
  std::vector<Address> src_addrs;
};

// "1.2.3.4:80" or "[::1]:80"; port_required = false also accepts a bare IP (port 0).
bool ParseAddress(const std::string& text, bool port_required, Address* out) {
  *out = Address{};
  std::string host = text;
  unsigned port = 0;
  size_t colon = text.rfind(':');
  bool bracketed = !text.empty() && text.front() == '[';
  bool has_port =
      colon != std::string::npos && (bracketed ? colon > 0 && text[colon - 1] == ']' : text.find(':') == colon);
  if (has_port) {
    host = text.substr(0, colon);
    std::string_view port_text = std::string_view(text).substr(colon + 1);
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc() || ptr != port_text.data() + port_text.size() || port > 65535) {
      return false;
    }
  } else if (port_required) {
    return false;
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto* sin = reinterpret_cast<sockaddr_in*>(&out->addr);
  if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    out->len = sizeof(sockaddr_in);
    return true;
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out->addr);
  if (inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    out->len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

uint16_t PortOf(const Address& a) {
  if (a.addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&a.addr)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&a.addr)->sin_port);
}

Options ParseOptions(int argc, char** argv) {
  Options opt;
  CLI::App app{"gwload: load generator for the device frame protocol (docs/tools.md)", "gwload"};
  app.add_option("--target", opt.target,
                 "IP:PORT to connect to; several, comma-separated: connection i goes to the i-th modulo n")
      ->required();
  app.add_option("-c,--connections", opt.connections, "connections (slots) in total")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{100'000'000}));
  app.add_option("--connect-rate", opt.connect_rate, "new connections per second over all processes (0 = no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("-r,--rate", opt.rate, "heartbeats per second per connection (0 = none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("-T,--duration", opt.duration, "seconds to hold once all connections are up (churn: seconds to churn)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--src", opt.src, "source IPs to bind to, round robin over connections")->delimiter(',');
  app.add_option("--procs", opt.procs, "worker processes, each with an equal share")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("--devid-prefix", opt.devid_prefix, "devid of connection i is PREFIX<K+i>")->capture_default_str();
  app.add_option("--devid-offset", opt.devid_offset, "K: the first connection's number")->capture_default_str();
  app.add_flag("--json", opt.json, "print the final report as one JSON object on stdout");
  app.add_flag("--churn", opt.churn, "loop connect/login/echo/close instead of holding");
  app.add_flag("--first-reply,!--no-first-reply", opt.first_reply,
               "wait for the login echo before sending heartbeats (default on)");
  app.add_option("--timeout-ms", opt.timeout_ms, "connect+login and per-reply timeout; counts an error")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{3'600'000}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    std::exit(rc == 0 ? kExitOk : kExitUsage);
  }

  for (size_t at = 0; at <= opt.target.size();) {
    size_t comma = opt.target.find(',', at);
    if (comma == std::string::npos) comma = opt.target.size();
    std::string one = opt.target.substr(at, comma - at);
    Address a;
    if (!ParseAddress(one, true, &a) || PortOf(a) == 0) {
      UsageError("bad --target (want IP:PORT or [IPv6]:PORT, comma-separated): " + one);
    }
    if (!opt.target_addrs.empty() && a.addr.ss_family != opt.target_addrs[0].addr.ss_family) {
      UsageError("--target addresses must be of one address family");
    }
    opt.target_addrs.push_back(a);
    at = comma + 1;
  }
  for (const std::string& s : opt.src) {
    Address a;
    if (!ParseAddress(s, false, &a) || PortOf(a) != 0) {
      UsageError("bad --src address (want an IP without a port): " + s);
    }
    if (a.addr.ss_family != opt.target_addrs[0].addr.ss_family) {
      UsageError("--src " + s + " is not of the --target's address family");
    }
    opt.src_addrs.push_back(a);
  }
  if (opt.devid_prefix.size() > kMaxPrefix) UsageError("--devid-prefix is too long");
  for (char ch : opt.devid_prefix) {
    auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f || ch == '"' || ch == '\\') {
      UsageError("--devid-prefix must not contain control characters, '\"' or '\\'");
    }
  }
  if (!std::isfinite(opt.rate) || !std::isfinite(opt.connect_rate) || !std::isfinite(opt.duration)) {
    UsageError("rates and durations must be finite");
  }
  if (opt.rate > 0 && opt.rate < 1e-3) UsageError("--rate must be 0 or at least 0.001");
  opt.procs = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(opt.procs), opt.connections));
  return opt;
}

// ---------------------------------------------------------------------------------------
// What a worker measures. Trivially copyable: workers send it to the parent as bytes.

struct Report {
  uint64_t connections = 0;     // connection slots owned
  uint64_t attempts = 0;        // connects started
  uint64_t established = 0;     // login round trips completed (churn: every cycle, drain included)
  uint64_t churn_cycles = 0;    // churn: cycles completed within -T (the rate's numerator)
  uint64_t connect_errors = 0;  // socket/bind/connect failures and connect timeouts
  uint64_t connect_errno[kErrnoSlots] = {};
  uint64_t io_errno[kErrnoSlots] = {};  // read/write errors other than resets
  uint64_t resets = 0;                  // ECONNRESET / EPIPE on an open connection
  uint64_t eofs = 0;                    // the peer closed an open connection
  uint64_t timeouts = 0;                // login echo or heartbeat reply later than --timeout-ms
  uint64_t protocol = 0;                // unexpected frame, echo or devid mismatch
  uint64_t workers_lost = 0;            // parent only: a worker that sent no report
  uint64_t hb_sent = 0;
  uint64_t hb_received = 0;
  uint64_t hold_hb_sent = 0;      // during the hold phase
  uint64_t hold_hb_received = 0;  // during the hold phase
  double ramp_s = 0;              // first connect -> every slot established or failed
  double hold_s = 0;              // hold (or churn) phase
  // Per-process rates, summed when merging (the processes run side by side).
  double hold_sent_per_s = 0;
  double hold_received_per_s = 0;
  double churn_per_s = 0;
  Histogram first_latency;    // connect start -> login echo, us
  Histogram hb_latency;       // heartbeat sent -> reply, us, replies during the hold
  Histogram hb_ramp_latency;  // the same during the ramp (connections still being set up)

  uint64_t IoErrors() const {
    uint64_t n = 0;
    for (uint64_t v : io_errno) n += v;
    return n;
  }

  uint64_t Errors() const { return connect_errors + resets + eofs + timeouts + protocol + IoErrors() + workers_lost; }

  void Merge(const Report& o) {
    connections += o.connections;
    attempts += o.attempts;
    established += o.established;
    churn_cycles += o.churn_cycles;
    connect_errors += o.connect_errors;
    for (size_t i = 0; i < kErrnoSlots; ++i) {
      connect_errno[i] += o.connect_errno[i];
      io_errno[i] += o.io_errno[i];
    }
    resets += o.resets;
    eofs += o.eofs;
    timeouts += o.timeouts;
    protocol += o.protocol;
    workers_lost += o.workers_lost;
    hb_sent += o.hb_sent;
    hb_received += o.hb_received;
    hold_hb_sent += o.hold_hb_sent;
    hold_hb_received += o.hold_hb_received;
    ramp_s = std::max(ramp_s, o.ramp_s);
    hold_s = std::max(hold_s, o.hold_s);
    hold_sent_per_s += o.hold_sent_per_s;
    hold_received_per_s += o.hold_received_per_s;
    churn_per_s += o.churn_per_s;
    first_latency.Merge(o.first_latency);
    hb_latency.Merge(o.hb_latency);
    hb_ramp_latency.Merge(o.hb_ramp_latency);
  }
};
static_assert(std::is_trivially_copyable_v<Report>);

// kDrain: the hold is over, no heartbeat is sent; the replies still due are awaited. Churn:
// no cycle starts; the cycles under way are followed to their end.
enum Phase : uint32_t { kRamp = 0, kHold = 1, kChurn = 2, kDrain = 3, kDone = 4 };

const char* PhaseName(uint32_t phase) {
  switch (phase) {
    case kRamp: return "ramp";
    case kHold: return "hold";
    case kChurn: return "churn";
    case kDrain: return "drain";
    default: return "done";
  }
}

// A once-per-second snapshot; cumulative counters, so the parent can sum workers.
struct Progress {
  uint64_t tick = 0;         // whole seconds since the worker started
  uint64_t open = 0;         // hold: established connections open; churn: sockets open
  uint64_t established = 0;  // login round trips completed
  uint64_t hb_sent = 0;
  uint64_t hb_received = 0;
  uint64_t errors = 0;
  uint32_t phase = kRamp;
  uint32_t ramp_done = 0;  // every connection of the worker is up or failed; it waits for the go
};
static_assert(std::is_trivially_copyable_v<Progress>);

// Prints "t=3s conns=12000/50000 connects/s=4000 frames/s=11990 errors=0 phase=ramp".
class ProgressPrinter {
 public:
  explicit ProgressPrinter(uint64_t total) : total_(total) {}

  void Print(const Progress& p) {
    double dt = static_cast<double>(p.tick > last_.tick ? p.tick - last_.tick : 1);
    auto per_s = [dt](uint64_t now, uint64_t before) {
      return static_cast<uint64_t>(std::llround(static_cast<double>(now - std::min(now, before)) / dt));
    };
    std::fprintf(stderr, "t=%llus conns=%llu/%llu connects/s=%llu frames/s=%llu errors=%llu phase=%s\n",
                 static_cast<unsigned long long>(p.tick), static_cast<unsigned long long>(p.open),
                 static_cast<unsigned long long>(total_),
                 static_cast<unsigned long long>(per_s(p.established, last_.established)),
                 static_cast<unsigned long long>(per_s(p.hb_received, last_.hb_received)),
                 static_cast<unsigned long long>(p.errors), PhaseName(p.phase));
    last_ = p;
  }

 private:
  uint64_t total_;
  Progress last_;
};

// ---------------------------------------------------------------------------------------
// Connection slots and the timer wheel.

constexpr uint32_t kNil = std::numeric_limits<uint32_t>::max();

enum class State : uint8_t {
  kIdle,        // no socket
  kConnecting,  // non-blocking connect in progress
  kLogin,       // login sent, waiting for its echo before heartbeats (--first-reply)
  kActive,      // sending heartbeats (the login echo may still be pending: --no-first-reply)
};

struct Conn {
  int fd = -1;
  uint32_t gen = 0;     // bumped on every close; part of the epoll tag
  uint64_t number = 0;  // devid number: --devid-offset + global index
  State state = State::kIdle;
  bool login_pending = false;  // login sent, echo not yet received
  bool established = false;    // login echo received on the current socket
  bool want_out = false;       // EPOLLOUT is in the interest set
  uint16_t login_time = 0;     // time field of the login frame (to check the echo)
  int64_t start_us = 0;        // connect start
  int64_t next_send_us = 0;    // next heartbeat
  // Timer wheel links (see TimerWheel).
  int64_t timer_tick = 0;
  uint32_t timer_prev = kNil;
  uint32_t timer_next = kNil;
  bool timer_armed = false;
  // Heartbeat send times, oldest first, from inflight_head (replies come back in order).
  uint32_t inflight_head = 0;
  std::vector<int64_t> inflight;
  std::string in;   // a partial reply frame, only while one is waiting
  std::string out;  // unsent output, only while the socket is full
};

// A hashed timing wheel: kSlots lists of 1 ms ticks; an entry further out than one turn
// sits in its slot and is re-inserted when passed over early. Intrusive: the links live in
// Conn, so arming never allocates.
class TimerWheel {
 public:
  static constexpr int64_t kSlots = 4096;

  explicit TimerWheel(std::vector<Conn>* conns) : conns_(conns), heads_(kSlots, kNil) {}

  // Arms (or re-arms) `slot` for `tick`; a tick already passed fires on the next Expire.
  void Arm(uint32_t slot, int64_t tick) {
    Disarm(slot);
    Conn& c = (*conns_)[slot];
    c.timer_tick = std::max(tick, cursor_);
    Link(slot);
  }

  void Disarm(uint32_t slot) {
    Conn& c = (*conns_)[slot];
    if (!c.timer_armed) return;
    if (c.timer_prev != kNil) {
      (*conns_)[c.timer_prev].timer_next = c.timer_next;
    } else {
      heads_[Bucket(c.timer_tick)] = c.timer_next;
    }
    if (c.timer_next != kNil) (*conns_)[c.timer_next].timer_prev = c.timer_prev;
    c.timer_armed = false;
    --armed_;
  }

  // Calls fire(slot) for every entry due at or before now_tick. fire may re-arm the slot
  // (it then fires again on a later call at the earliest).
  template <typename Fire>
  void Expire(int64_t now_tick, Fire&& fire) {
    if (now_tick < cursor_) return;
    int64_t first = cursor_;
    int64_t steps = std::min(now_tick - first + 1, kSlots);
    cursor_ = now_tick + 1;
    for (int64_t i = 0; i < steps; ++i) {
      size_t bucket = Bucket(first + i);
      uint32_t e = heads_[bucket];
      heads_[bucket] = kNil;
      while (e != kNil) {
        Conn& c = (*conns_)[e];
        uint32_t next = c.timer_next;
        c.timer_armed = false;
        --armed_;
        if (c.timer_tick <= now_tick) {
          fire(e);
        } else {
          Link(e);  // a later turn of the wheel
        }
        e = next;
      }
    }
  }

  // A lower bound of the earliest armed tick, or -1 if nothing is armed.
  int64_t NextTick() const {
    if (armed_ == 0) return -1;
    for (int64_t i = 0; i < kSlots; ++i) {
      if (heads_[Bucket(cursor_ + i)] != kNil) return cursor_ + i;
    }
    return cursor_;
  }

 private:
  static size_t Bucket(int64_t tick) { return static_cast<size_t>(tick & (kSlots - 1)); }

  void Link(uint32_t slot) {
    Conn& c = (*conns_)[slot];
    size_t bucket = Bucket(c.timer_tick);
    c.timer_prev = kNil;
    c.timer_next = heads_[bucket];
    if (c.timer_next != kNil) (*conns_)[c.timer_next].timer_prev = slot;
    heads_[bucket] = slot;
    c.timer_armed = true;
    ++armed_;
  }

  std::vector<Conn>* conns_;
  std::vector<uint32_t> heads_;
  int64_t cursor_ = 0;  // the next tick to process
  size_t armed_ = 0;
};

// ---------------------------------------------------------------------------------------
// The worker: one epoll loop driving a share of the connections.

using ProgressSink = std::function<void(const Progress&)>;

class Worker {
 public:
  // Owns global connection indexes [first, first + count); connect_rate is this process's
  // share (0 = no limit).
  // wait_for_go: hold only after the parent's SIGUSR1 (several processes ramp side by side;
  // the hold starts when all of them are up).
  Worker(const Options& opt, uint64_t first, uint64_t count, double connect_rate, ProgressSink sink,
         bool wait_for_go = false)
      : opt_(opt),
        wait_for_go_(wait_for_go),
        first_(first),
        conns_(count),
        wheel_(&conns_),
        connect_rate_(connect_rate),
        sink_(std::move(sink)),
        scratch_(kScratchBytes),
        rng_(std::random_device{}() ^ static_cast<uint64_t>(getpid())) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) Die("epoll_create1");
    for (uint64_t i = 0; i < count; ++i) conns_[i].number = opt_.devid_offset + first + i;
    if (opt_.rate > 0) period_us_ = static_cast<int64_t>(std::llround(1e6 / opt_.rate));
    timeout_us_ = opt_.timeout_ms * 1000;
  }

  ~Worker() {
    for (Conn& c : conns_) {
      if (c.fd >= 0) close(c.fd);
    }
    close(ep_);
  }

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs the whole test; returns what was measured.
  Report Run() {
    report_.connections = conns_.size();
    base_us_ = NowUs();
    next_progress_us_ = base_us_ + kProgressUs;
    unresolved_ = conns_.size();
    for (uint32_t i = 0; i < conns_.size(); ++i) pending_.push_back(i);
    tokens_ = 1;  // the first connection starts at once
    last_refill_us_ = base_us_;
    burst_ = std::max(1.0, connect_rate_ * kPacerBurstSeconds);
    if (opt_.churn) {
      phase_ = kChurn;
      phase_start_us_ = base_us_;
      phase_end_us_ = base_us_ + DurationUs();
    } else {
      phase_ = conns_.empty() ? kDone : kRamp;
    }

    std::vector<epoll_event> events(kMaxEvents);
    while (phase_ != kDone) {
      int64_t now = NowUs();
      if (g_stop != 0) {
        EndPhase(now);
        break;
      }
      StartConnections(now);
      wheel_.Expire(TickOf(now), [this](uint32_t slot) { OnTimer(slot); });
      UpdatePhase(NowUs());
      if (phase_ == kDone) break;
      MaybeProgress(NowUs());
      int n = epoll_wait(ep_, events.data(), kMaxEvents, TimeoutMs(NowUs()));
      if (n < 0) {
        if (errno == EINTR) continue;
        Die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) OnEvent(events[static_cast<size_t>(i)]);
    }
    Finish();
    return report_;
  }

 private:
  int64_t DurationUs() const { return static_cast<int64_t>(std::llround(opt_.duration * 1e6)); }
  int64_t TickOf(int64_t us) const { return (us - base_us_) / 1000; }
  int64_t TickCeil(int64_t us) const { return (us - base_us_ + 999) / 1000; }

  static uint64_t Tag(uint32_t slot, uint32_t gen) { return static_cast<uint64_t>(gen) << 32 | slot; }

  // --- phases -------------------------------------------------------------------------

  void UpdatePhase(int64_t now) {
    if (phase_ == kRamp && unresolved_ == 0) {
      if (!ramp_done_) {
        ramp_done_ = true;
        report_.ramp_s = static_cast<double>(now - base_us_) / 1e6;
        if (open_ == 0) {
          phase_ = kDone;  // nothing to hold
          return;
        }
        if (wait_for_go_) SendProgress(now);  // the parent waits for every worker's word
      }
      if (wait_for_go_ && g_hold_go == 0) return;  // still ramp: others are connecting
      phase_ = kHold;
      phase_start_us_ = now;
      phase_end_us_ = now + DurationUs();
      hold_sent_base_ = report_.hb_sent;
      hold_received_base_ = report_.hb_received;
    }
    if ((phase_ == kHold || phase_ == kChurn) && now >= phase_end_us_) StartDrain(now);
    if (phase_ == kDrain) {
      // Churn: a cycle still under way (a stalled login among them) is waited for too, so
      // that it shows in the latencies or as a timeout instead of vanishing at the end.
      auto waiting = [this] { return opt_.churn ? sockets_ : inflight_; };
      if (waiting() > 0 && now >= drain_end_us_) DropUnanswered();
      if (waiting() == 0) EndPhase(now);
    }
  }

  // The hold (churn) is over: no more heartbeats (cycles); the replies still due get
  // --timeout-ms to arrive.
  void StartDrain(int64_t now) {
    report_.hold_s = static_cast<double>(now - phase_start_us_) / 1e6;
    report_.hold_hb_sent = report_.hb_sent - hold_sent_base_;
    report_.churn_cycles = report_.established;
    phase_ = kDrain;
    drain_end_us_ = now + timeout_us_;
  }

  // The drain's deadline: every connection still owing a reply (churn: every cycle not
  // done) counts a timeout (as its timer would a moment later).
  void DropUnanswered() {
    for (uint32_t i = 0; i < conns_.size(); ++i) {
      const Conn& c = conns_[i];
      if (c.fd < 0) continue;
      if (c.state == State::kConnecting) {
        ConnectFailed(i, ETIMEDOUT);
      } else if (opt_.churn || c.inflight_head < c.inflight.size()) {
        ++report_.timeouts;
        Drop(i);
      }
    }
  }

  // Ends the run now (phase over, or a stop signal).
  void EndPhase(int64_t now) {
    if (phase_ == kRamp && !ramp_done_) report_.ramp_s = static_cast<double>(now - base_us_) / 1e6;
    if (phase_ == kHold || phase_ == kChurn) {
      report_.hold_s = static_cast<double>(now - phase_start_us_) / 1e6;
    }
    if (phase_ == kHold) report_.hold_hb_sent = report_.hb_sent - hold_sent_base_;
    if (phase_ == kChurn) report_.churn_cycles = report_.established;
    if (phase_ == kHold || phase_ == kDrain) report_.hold_hb_received = report_.hb_received - hold_received_base_;
    phase_ = kDone;
  }

  void Finish() {
    for (uint32_t i = 0; i < conns_.size(); ++i) {
      if (conns_[i].fd >= 0) CloseConn(i);
    }
    if (report_.hold_s > 0) {
      report_.hold_sent_per_s = static_cast<double>(report_.hold_hb_sent) / report_.hold_s;
      report_.hold_received_per_s = static_cast<double>(report_.hold_hb_received) / report_.hold_s;
      if (opt_.churn) report_.churn_per_s = static_cast<double>(report_.churn_cycles) / report_.hold_s;
    }
  }

  void MaybeProgress(int64_t now) {
    if (now < next_progress_us_) return;
    uint64_t tick = SendProgress(now);
    next_progress_us_ = base_us_ + static_cast<int64_t>(tick + 1) * kProgressUs;
  }

  // Sends a progress snapshot now; returns its tick.
  uint64_t SendProgress(int64_t now) {
    Progress p;
    p.tick = static_cast<uint64_t>((now - base_us_) / kProgressUs);
    p.open = opt_.churn ? sockets_ : open_;
    p.established = report_.established;
    p.hb_sent = report_.hb_sent;
    p.hb_received = report_.hb_received;
    p.errors = report_.Errors();
    p.phase = phase_;
    p.ramp_done = ramp_done_ ? 1 : 0;
    sink_(p);
    return p.tick;
  }

  int TimeoutMs(int64_t now) const {
    int64_t wake = next_progress_us_;
    if (phase_ == kHold || phase_ == kChurn) wake = std::min(wake, phase_end_us_);
    if (phase_ == kDrain) wake = std::min(wake, drain_end_us_);
    if ((phase_ == kRamp || phase_ == kChurn) && !pending_.empty()) {
      if (connect_rate_ <= 0 || tokens_ >= 1) return 0;
      wake = std::min(wake, now + static_cast<int64_t>(std::ceil((1 - tokens_) / connect_rate_ * 1e6)));
    }
    int64_t tick = wheel_.NextTick();
    if (tick >= 0) wake = std::min(wake, base_us_ + tick * 1000);
    if (wake <= now) return 0;
    return static_cast<int>(std::min<int64_t>((wake - now + 999) / 1000, kProgressUs / 1000));
  }

  // --- connecting ---------------------------------------------------------------------

  void StartConnections(int64_t now) {
    if ((phase_ != kRamp && phase_ != kChurn) || pending_.empty()) return;
    size_t budget = kMaxStartsPerPass;
    if (connect_rate_ > 0) {
      tokens_ = std::min(burst_, tokens_ + static_cast<double>(now - last_refill_us_) * connect_rate_ / 1e6);
      last_refill_us_ = now;
      budget = std::min(budget, static_cast<size_t>(tokens_));
    }
    while (budget > 0 && !pending_.empty()) {
      uint32_t slot = pending_.front();
      pending_.pop_front();
      --budget;
      if (connect_rate_ > 0) tokens_ -= 1;
      StartConnect(slot);
    }
  }

  void StartConnect(uint32_t slot) {
    Conn& c = conns_[slot];
    ++report_.attempts;
    c.start_us = NowUs();
    const Address& dst = opt_.target_addrs[(first_ + slot) % opt_.target_addrs.size()];
    int fd = socket(dst.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return ConnectFailed(slot, errno);
    c.fd = fd;
    ++sockets_;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!opt_.src_addrs.empty()) {
      const Address& src = opt_.src_addrs[(first_ + slot) % opt_.src_addrs.size()];
      // Pick the port at connect() time, per destination: many more connections per source
      // address, and TIME_WAIT ports can be reused (churn). An IPv6 socket takes this IPv4-level
      // option too (Linux passes SOL_IP options of TCP over IPv6 to the IPv4 code).
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
      if (bind(fd, reinterpret_cast<const sockaddr*>(&src.addr), src.len) != 0) {
        return ConnectFailed(slot, errno);
      }
    }
    int rc = connect(fd, reinterpret_cast<const sockaddr*>(&dst.addr), dst.len);
    if (rc != 0 && errno != EINPROGRESS) return ConnectFailed(slot, errno);
    c.state = State::kConnecting;
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = Tag(slot, c.gen);
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) Die("epoll_ctl ADD");
    c.want_out = true;
    if (rc == 0) {
      OnConnected(slot);
    } else {
      Rearm(slot);
    }
  }

  void OnConnected(uint32_t slot) {
    Conn& c = conns_[slot];
    SetWantOut(slot, false);
    char frame[kMaxFrame];
    c.login_time = WallTime16();
    size_t len = BuildFrame(frame, kTypeLogin, c.login_time, c.number);
    c.login_pending = true;
    if (opt_.first_reply || opt_.churn) {  // a churn cycle never sends heartbeats
      c.state = State::kLogin;
    } else {
      StartHeartbeats(slot, NowUs());
    }
    if (!Send(slot, frame, len)) return;
    Rearm(slot);
  }

  void StartHeartbeats(uint32_t slot, int64_t now) {
    Conn& c = conns_[slot];
    c.state = State::kActive;
    if (period_us_ > 0) {
      // A random phase, so the connections' heartbeats spread over the period.
      c.next_send_us = now + static_cast<int64_t>(rng_() % static_cast<uint64_t>(period_us_));
    }
  }

  // --- timers -------------------------------------------------------------------------

  // Arms the slot's timer for its earliest deadline: connect/login timeout, the oldest
  // reply's timeout, or the next heartbeat.
  void Rearm(uint32_t slot) {
    Conn& c = conns_[slot];
    int64_t wake = std::numeric_limits<int64_t>::max();
    if (c.state == State::kConnecting || c.state == State::kLogin || c.login_pending) {
      wake = c.start_us + timeout_us_;
    }
    if (c.state == State::kActive) {
      if (period_us_ > 0 && Sending()) wake = std::min(wake, c.next_send_us);
      if (c.inflight_head < c.inflight.size()) {
        wake = std::min(wake, c.inflight[c.inflight_head] + timeout_us_);
      }
    }
    if (wake == std::numeric_limits<int64_t>::max()) {
      wheel_.Disarm(slot);
    } else {
      wheel_.Arm(slot, TickCeil(wake));
    }
  }

  // Heartbeats are sent during the ramp and the hold only.
  bool Sending() const { return phase_ == kRamp || phase_ == kHold; }

  void OnTimer(uint32_t slot) {
    Conn& c = conns_[slot];
    int64_t now = NowUs();
    bool login_late = (c.state == State::kConnecting || c.state == State::kLogin || c.login_pending) &&
                      now >= c.start_us + timeout_us_;
    if (login_late && c.state == State::kConnecting) return ConnectFailed(slot, ETIMEDOUT);
    bool reply_late = c.inflight_head < c.inflight.size() && now >= c.inflight[c.inflight_head] + timeout_us_;
    if (login_late || reply_late) {
      ++report_.timeouts;
      return Drop(slot);
    }
    if (c.state == State::kActive && period_us_ > 0 && Sending() && now >= c.next_send_us) {
      if (!SendHeartbeat(slot)) return;
      c.next_send_us += period_us_;
      if (c.next_send_us <= now) c.next_send_us = now + period_us_;  // skip what was missed
    }
    Rearm(slot);
  }

  // --- frames -------------------------------------------------------------------------

  static uint16_t WallTime16() { return static_cast<uint16_t>(static_cast<uint64_t>(std::time(nullptr)) & 0xffff); }

  // Writes the devid (prefix + number) at `out`; returns its end.
  char* PutDevid(char* out, uint64_t number) const {
    std::memcpy(out, opt_.devid_prefix.data(), opt_.devid_prefix.size());
    out += opt_.devid_prefix.size();
    return std::to_chars(out, out + 20, number).ptr;
  }

  // A frame with body {"devid":"<devid>"}; returns its length (at most kMaxFrame).
  size_t BuildFrame(char* out, uint8_t type, uint16_t time, uint64_t number) const {
    constexpr std::string_view kOpen = "{\"devid\":\"";
    constexpr std::string_view kClose = "\"}";
    char* p = out + kFrameHeader;
    std::memcpy(p, kOpen.data(), kOpen.size());
    p = PutDevid(p + kOpen.size(), number);
    std::memcpy(p, kClose.data(), kClose.size());
    p += kClose.size();
    size_t body_len = static_cast<size_t>(p - out) - kFrameHeader;
    out[0] = static_cast<char>(type);
    out[1] = static_cast<char>(kFrameVersion);
    out[2] = static_cast<char>(time >> 8);
    out[3] = static_cast<char>(time & 0xff);
    out[4] = static_cast<char>(body_len >> 8);
    out[5] = static_cast<char>(body_len & 0xff);
    return static_cast<size_t>(p - out);
  }

  // True if the reply body's "devid" string is this connection's devid.
  bool DevidMatches(const Conn& c, std::string_view body) const {
    size_t at = body.find("\"devid\"");
    if (at == std::string_view::npos) return false;
    size_t p = at + 7;
    auto skip_ws = [&] {
      while (p < body.size() && (body[p] == ' ' || body[p] == '\t' || body[p] == '\n' || body[p] == '\r')) ++p;
    };
    skip_ws();
    if (p >= body.size() || body[p] != ':') return false;
    ++p;
    skip_ws();
    if (p >= body.size() || body[p] != '"') return false;
    ++p;
    char want[kMaxPrefix + 24];
    auto want_len = static_cast<size_t>(PutDevid(want, c.number) - want);
    return body.substr(p, want_len) == std::string_view(want, want_len) && p + want_len < body.size() &&
           body[p + want_len] == '"';
  }

  bool SendHeartbeat(uint32_t slot) {
    Conn& c = conns_[slot];
    char frame[kMaxFrame];
    size_t len = BuildFrame(frame, kTypeHeartbeat, WallTime16(), c.number);
    c.inflight.push_back(NowUs());
    ++inflight_;
    ++report_.hb_sent;
    return Send(slot, frame, len);
  }

  // --- I/O ----------------------------------------------------------------------------

  void OnEvent(const epoll_event& ev) {
    auto slot = static_cast<uint32_t>(ev.data.u64 & 0xffffffffu);
    auto gen = static_cast<uint32_t>(ev.data.u64 >> 32);
    if (slot >= conns_.size()) return;
    Conn& c = conns_[slot];
    if (c.gen != gen || c.fd < 0) return;  // stale: the socket was closed in this batch
    if (c.state == State::kConnecting) {
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) return ConnectFailed(slot, err);
      if ((ev.events & EPOLLOUT) == 0) return;  // not yet (spurious)
      return OnConnected(slot);
    }
    if ((ev.events & EPOLLERR) != 0) {
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      return IoFailed(slot, err != 0 ? err : EIO);
    }
    if ((ev.events & EPOLLOUT) != 0 && !Flush(slot)) return;
    if ((ev.events & (EPOLLIN | EPOLLHUP)) != 0) Read(slot);
  }

  // Sends a whole frame or queues what the socket didn't take. Returns false if the
  // connection was dropped.
  bool Send(uint32_t slot, const char* data, size_t len) {
    Conn& c = conns_[slot];
    if (!c.out.empty()) {
      c.out.append(data, len);
      return true;
    }
    size_t off = 0;
    while (off < len) {
      ssize_t n = send(c.fd, data + off, len - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      IoFailed(slot, n < 0 ? errno : EIO);
      return false;
    }
    if (off < len) {
      c.out.assign(data + off, len - off);
      SetWantOut(slot, true);
    }
    return true;
  }

  bool Flush(uint32_t slot) {
    Conn& c = conns_[slot];
    size_t off = 0;
    while (off < c.out.size()) {
      ssize_t n = send(c.fd, c.out.data() + off, c.out.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      IoFailed(slot, n < 0 ? errno : EIO);
      return false;
    }
    c.out.erase(0, off);
    if (c.out.empty()) {
      std::string().swap(c.out);
      SetWantOut(slot, false);
    }
    return true;
  }

  void SetWantOut(uint32_t slot, bool want) {
    Conn& c = conns_[slot];
    if (c.want_out == want) return;
    epoll_event ev{};
    ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
    ev.data.u64 = Tag(slot, c.gen);
    if (epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev) != 0) Die("epoll_ctl MOD");
    c.want_out = want;
  }

  void Read(uint32_t slot) {
    for (;;) {
      Conn& c = conns_[slot];
      ssize_t n = recv(c.fd, scratch_.data(), scratch_.size(), 0);
      if (n > 0) {
        if (!Feed(slot, scratch_.data(), static_cast<size_t>(n))) return;
        if (static_cast<size_t>(n) < scratch_.size()) return;  // probably drained
        continue;
      }
      if (n == 0) {
        ++report_.eofs;
        return Drop(slot);
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      return IoFailed(slot, errno);
    }
  }

  // Handles the complete frames in c.in + data and keeps a partial one. Returns false if
  // the socket was closed (churn cycle done, or an error).
  bool Feed(uint32_t slot, const char* data, size_t len) {
    Conn& c = conns_[slot];
    if (c.in.empty()) {
      size_t used = 0;
      if (!OnFrames(slot, std::string_view(data, len), &used)) return false;
      if (used < len) conns_[slot].in.assign(data + used, len - used);
      return true;
    }
    // Parse from a local buffer: handling a frame may close the slot, which frees c.in.
    std::string buf = std::move(c.in);
    c.in.clear();
    buf.append(data, len);
    size_t used = 0;
    if (!OnFrames(slot, buf, &used)) return false;
    buf.erase(0, used);
    if (!buf.empty()) conns_[slot].in = std::move(buf);
    return true;
  }

  bool OnFrames(uint32_t slot, std::string_view buf, size_t* used) {
    size_t pos = 0;
    while (buf.size() - pos >= kFrameHeader) {
      size_t body_len =
          static_cast<size_t>(static_cast<uint8_t>(buf[pos + 4])) << 8 | static_cast<uint8_t>(buf[pos + 5]);
      if (buf.size() - pos < kFrameHeader + body_len) break;
      if (!OnFrame(slot, buf.substr(pos, kFrameHeader + body_len))) return false;
      pos += kFrameHeader + body_len;
    }
    *used = pos;
    return true;
  }

  // One reply frame. Returns false if the socket was closed.
  bool OnFrame(uint32_t slot, std::string_view frame) {
    Conn& c = conns_[slot];
    int64_t now = NowUs();
    auto type = static_cast<uint8_t>(frame[0]);
    if (type == kTypeLogin) {
      char expected[kMaxFrame];
      size_t len = BuildFrame(expected, kTypeLogin, c.login_time, c.number);
      if (!c.login_pending || frame != std::string_view(expected, len)) {
        ++report_.protocol;
        Drop(slot);
        return false;
      }
      c.login_pending = false;
      c.established = true;
      ++report_.established;
      ++open_;
      report_.first_latency.Record(static_cast<uint64_t>(now - c.start_us));
      if (!opt_.churn) --unresolved_;
      if (opt_.churn) {
        CloseConn(slot);
        Requeue(slot);
        return false;
      }
      if (c.state == State::kLogin) StartHeartbeats(slot, now);
      Rearm(slot);
      return true;
    }
    if (type == kTypeHeartbeat && c.inflight_head < c.inflight.size()) {
      int64_t sent = c.inflight[c.inflight_head++];
      --inflight_;
      if (c.inflight_head == c.inflight.size()) {
        c.inflight.clear();
        c.inflight_head = 0;
      }
      ++report_.hb_received;
      // Only the hold's replies count as heartbeat latency: during the ramp the target is
      // also busy setting up connections.
      (phase_ == kHold || phase_ == kDrain ? report_.hb_latency : report_.hb_ramp_latency)
          .Record(static_cast<uint64_t>(now - sent));
      if (DevidMatches(c, frame.substr(kFrameHeader))) return true;
    }
    ++report_.protocol;  // a frame we didn't ask for, or another device's answer
    Drop(slot);
    return false;
  }

  // --- failures and closing -----------------------------------------------------------

  void ConnectFailed(uint32_t slot, int err) {
    ++report_.connect_errors;
    ++report_.connect_errno[static_cast<size_t>(err) < kErrnoSlots ? static_cast<size_t>(err) : 0];
    Drop(slot);
  }

  void IoFailed(uint32_t slot, int err) {
    if (err == ECONNRESET || err == EPIPE) {
      ++report_.resets;
    } else {
      ++report_.io_errno[static_cast<size_t>(err) < kErrnoSlots ? static_cast<size_t>(err) : 0];
    }
    Drop(slot);
  }

  // Closes a failed connection (the error is already counted). Hold mode doesn't retry;
  // churn mode puts the slot back in the connect queue.
  void Drop(uint32_t slot) {
    Conn& c = conns_[slot];
    if (!opt_.churn && !c.established) --unresolved_;
    CloseConn(slot);
    if (opt_.churn) Requeue(slot);
  }

  void Requeue(uint32_t slot) {
    if (phase_ == kChurn) pending_.push_back(slot);
  }

  // Closes the socket (close() also leaves the epoll set) and frees the slot's buffers.
  void CloseConn(uint32_t slot) {
    Conn& c = conns_[slot];
    if (c.fd >= 0) {
      close(c.fd);
      --sockets_;
    }
    if (c.established) --open_;
    inflight_ -= c.inflight.size() - c.inflight_head;
    wheel_.Disarm(slot);
    c.fd = -1;
    ++c.gen;
    c.state = State::kIdle;
    c.login_pending = false;
    c.established = false;
    c.want_out = false;
    c.inflight_head = 0;
    std::vector<int64_t>().swap(c.inflight);
    std::string().swap(c.in);
    std::string().swap(c.out);
  }

  const Options& opt_;
  bool wait_for_go_;
  bool ramp_done_ = false;
  uint64_t first_;  // global index of slot 0
  std::vector<Conn> conns_;
  TimerWheel wheel_;
  double connect_rate_;
  ProgressSink sink_;
  std::vector<char> scratch_;
  std::mt19937_64 rng_;
  int ep_ = -1;

  int64_t period_us_ = 0;   // heartbeat period; 0 = no heartbeats
  int64_t timeout_us_ = 0;  // --timeout-ms
  int64_t base_us_ = 0;     // start of the run; tick 0 of the wheel
  uint32_t phase_ = kRamp;
  int64_t phase_start_us_ = 0;
  int64_t phase_end_us_ = 0;
  int64_t drain_end_us_ = 0;
  int64_t next_progress_us_ = 0;

  std::deque<uint32_t> pending_;  // slots waiting to connect, in order
  double tokens_ = 0;             // connect pacer (token bucket)
  double burst_ = 1;
  int64_t last_refill_us_ = 0;

  uint64_t unresolved_ = 0;  // hold mode: slots neither established nor failed yet
  uint64_t open_ = 0;        // established connections open now
  uint64_t sockets_ = 0;     // sockets open now
  uint64_t inflight_ = 0;    // heartbeats sent and not yet answered, over all connections
  uint64_t hold_sent_base_ = 0;
  uint64_t hold_received_base_ = 0;
  Report report_;
};

// ---------------------------------------------------------------------------------------
// Processes: workers report to the parent over a pipe as {u32 type, u32 size, payload}.

enum MsgType : uint32_t { kMsgProgress = 1, kMsgReport = 2 };

struct MsgHeader {
  uint32_t type;
  uint32_t size;
};

bool WriteAll(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteMsg(int fd, MsgType type, const void* payload, size_t size) {
  MsgHeader h{type, static_cast<uint32_t>(size)};
  return WriteAll(fd, &h, sizeof(h)) && WriteAll(fd, payload, size);
}

struct Child {
  pid_t pid = -1;
  int fd = -1;  // read end of its pipe; -1 once at EOF
  std::string buf;
  Progress latest;
  bool has_progress = false;
  std::unique_ptr<Report> report;  // set once its final report arrived
};

// Consumes whole messages from child.buf.
void ParseMessages(Child* child) {
  size_t pos = 0;
  while (child->buf.size() - pos >= sizeof(MsgHeader)) {
    MsgHeader h{};
    std::memcpy(&h, child->buf.data() + pos, sizeof(h));
    if (child->buf.size() - pos - sizeof(h) < h.size) break;
    const char* payload = child->buf.data() + pos + sizeof(h);
    if (h.type == kMsgProgress && h.size == sizeof(Progress)) {
      std::memcpy(&child->latest, payload, sizeof(Progress));
      child->has_progress = true;
    } else if (h.type == kMsgReport && h.size == sizeof(Report)) {
      child->report = std::make_unique<Report>();
      std::memcpy(static_cast<void*>(child->report.get()), payload, sizeof(Report));
    }
    pos += sizeof(h) + h.size;
  }
  child->buf.erase(0, pos);
}

// Runs the workers in --procs child processes; returns the merged report.
std::unique_ptr<Report> RunProcesses(const Options& opt) {
  auto procs = static_cast<uint64_t>(opt.procs);
  std::vector<Child> children(procs);
  for (uint64_t p = 0; p < procs; ++p) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) Die("pipe2");
    uint64_t first = opt.connections * p / procs;
    uint64_t count = opt.connections * (p + 1) / procs - first;
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) Die("fork");
    if (pid == 0) {
      close(fds[0]);
      for (uint64_t q = 0; q < p; ++q) close(children[q].fd);
      int out = fds[1];
      auto report = std::make_unique<Report>();
      {
        Worker worker(
            opt, first, count, opt.connect_rate / static_cast<double>(procs),
            [out](const Progress& pr) { WriteMsg(out, kMsgProgress, &pr, sizeof(pr)); },
            /*wait_for_go=*/true);
        *report = worker.Run();
      }
      bool ok = WriteMsg(out, kMsgReport, report.get(), sizeof(Report));
      _exit(ok ? kExitOk : kExitErrors);
    }
    close(fds[1]);
    children[p].pid = pid;
    children[p].fd = fds[0];
  }

  ProgressPrinter printer(opt.connections);
  uint64_t next_tick = 1;
  bool forwarded = false;
  bool go_sent = opt.churn;  // churn has no hold
  std::vector<char> buf(64 * 1024);
  for (;;) {
    if (g_stop != 0 && !forwarded) {
      for (const Child& c : children) kill(c.pid, SIGTERM);
      forwarded = true;
    }
    std::vector<pollfd> fds;
    std::vector<Child*> owners;
    for (Child& c : children) {
      if (c.fd >= 0) {
        fds.push_back({c.fd, POLLIN, 0});
        owners.push_back(&c);
      }
    }
    if (fds.empty()) break;
    int n = poll(fds.data(), fds.size(), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("poll");
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      Child* c = owners[i];
      ssize_t got = read(c->fd, buf.data(), buf.size());
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        close(c->fd);
        c->fd = -1;
        continue;
      }
      c->buf.append(buf.data(), static_cast<size_t>(got));
      ParseMessages(c);
    }
    // Every running worker has all its connections up (or failed): start the hold everywhere.
    if (!go_sent) {
      bool any = false, all = true;
      for (const Child& c : children) {
        if (c.report || c.fd < 0) continue;
        any = true;
        all = all && c.has_progress && c.latest.ramp_done != 0;
      }
      if (any && all) {
        for (const Child& c : children) {
          if (!c.report && c.fd >= 0) kill(c.pid, SIGUSR1);
        }
        go_sent = true;
      }
    }
    // One merged progress line per second, once every running worker has reported it.
    uint64_t min_tick = std::numeric_limits<uint64_t>::max();
    bool any_running = false;
    for (const Child& c : children) {
      if (c.report) continue;
      any_running = true;
      min_tick = std::min(min_tick, c.has_progress ? c.latest.tick : 0);
    }
    if (any_running && min_tick >= next_tick) {
      Progress sum;
      sum.tick = min_tick;
      sum.phase = kDone;
      for (const Child& c : children) {
        if (!c.has_progress) continue;
        if (!c.report) {
          sum.open += c.latest.open;
          sum.phase = std::min(sum.phase, c.latest.phase);
        }
        sum.established += c.latest.established;
        sum.hb_sent += c.latest.hb_sent;
        sum.hb_received += c.latest.hb_received;
        sum.errors += c.latest.errors;
      }
      printer.Print(sum);
      next_tick = min_tick + 1;
    }
  }

  auto merged = std::make_unique<Report>();
  for (Child& c : children) {
    int status = 0;
    while (waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (c.report) {
      merged->Merge(*c.report);
    } else {
      std::fprintf(stderr, "gwload: worker %d ended without a report (status %d)\n", static_cast<int>(c.pid), status);
      ++merged->workers_lost;
    }
  }
  return merged;
}

// ---------------------------------------------------------------------------------------
// The final report.

std::string ErrorDetailJson(const Report& r) {
  std::string out = "{";
  auto add = [&out](const std::string& key, uint64_t n) {
    if (n == 0) return;
    if (out.size() > 1) out += ',';
    out += fmt::format("\"{}\":{}", key, n);
  };
  for (size_t i = 0; i < kErrnoSlots; ++i) add("connect:" + ErrnoName(i), r.connect_errno[i]);
  add("reset", r.resets);
  add("eof", r.eofs);
  for (size_t i = 0; i < kErrnoSlots; ++i) add("io:" + ErrnoName(i), r.io_errno[i]);
  add("timeout", r.timeouts);
  add("protocol", r.protocol);
  add("worker_lost", r.workers_lost);
  out += '}';
  return out;
}

std::string LatencyJson(const Histogram& h) {
  return fmt::format(R"({{"count":{},"p50":{},"p99":{},"p999":{},"max":{},"mean":{:.1f}}})", h.Count(), h.Quantile(0.5),
                     h.Quantile(0.99), h.Quantile(0.999), h.Max(), h.Mean());
}

std::string LatencyText(const Histogram& h) {
  return fmt::format("p50={}us p99={}us p999={}us max={}us mean={:.0f}us (n={})", h.Quantile(0.5), h.Quantile(0.99),
                     h.Quantile(0.999), h.Max(), h.Mean(), h.Count());
}

void PrintReport(const Options& opt, const Report& r) {
  double connect_rate = opt.churn ? r.churn_per_s : r.ramp_s > 0 ? static_cast<double>(r.established) / r.ramp_s : 0.0;
  if (opt.json) {
    std::string churn;
    if (opt.churn) {
      churn = fmt::format(R"("churn_connects":{},"churn_connects_per_s":{:.1f},)", r.churn_cycles, r.churn_per_s);
    }
    fmt::print(R"({{"mode":"{}","target":"{}","procs":{},"connections":{},"established":{},)"
               R"("connect_errors":{},"errors":{},"error_detail":{},"connect_rate":{:.1f},"ramp_s":{:.3f},)"
               R"("hb_sent":{},"hb_received":{},"hb_sent_per_s":{:.1f},"frames_per_s":{:.1f},{})"
               R"("first_latency_us":{},"hb_latency_us":{},"hb_ramp_latency_us":{},"duration_s":{:.3f}}})"
               "\n",
               opt.churn ? "churn" : "hold", opt.target, opt.procs, r.connections, r.established, r.connect_errors,
               r.Errors(), ErrorDetailJson(r), connect_rate, r.ramp_s, r.hb_sent, r.hb_received, r.hold_sent_per_s,
               r.hold_received_per_s, churn, LatencyJson(r.first_latency), LatencyJson(r.hb_latency),
               LatencyJson(r.hb_ramp_latency), r.hold_s);
    return;
  }
  fmt::print("gwload {} mode: {} connections to {} ({} process{})\n", opt.churn ? "churn" : "hold", r.connections,
             opt.target, opt.procs, opt.procs == 1 ? "" : "es");
  if (opt.churn) {
    fmt::print("  churn          {} login round trips in {:.2f}s: {:.0f} connects/s\n", r.churn_cycles, r.hold_s,
               r.churn_per_s);
  } else {
    fmt::print("  established    {}/{} in {:.2f}s: {:.0f} connects/s\n", r.established, r.connections, r.ramp_s,
               connect_rate);
  }
  fmt::print("  errors         {} (connect {}): {}\n", r.Errors(), r.connect_errors, ErrorDetailJson(r));
  if (!opt.churn) {
    fmt::print("  heartbeats     sent {} received {}; hold {:.2f}s: {:.0f} sent/s {:.0f} received/s\n", r.hb_sent,
               r.hb_received, r.hold_s, r.hold_sent_per_s, r.hold_received_per_s);
  }
  fmt::print("  first frame    {}\n", LatencyText(r.first_latency));
  if (!opt.churn) {
    fmt::print("  heartbeat rtt  {} (hold)\n", LatencyText(r.hb_latency));
    fmt::print("                 {} (ramp)\n", LatencyText(r.hb_ramp_latency));
  }
}

// Raises the soft descriptor limit to the hard one; returns the soft limit now in force.
uint64_t RaiseFdLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 1024;
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit want = lim;
    want.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) lim = want;
  }
  return lim.rlim_cur == RLIM_INFINITY ? std::numeric_limits<uint64_t>::max() : lim.rlim_cur;
}

int Main(int argc, char** argv) {
  Options opt = ParseOptions(argc, argv);

  uint64_t fd_limit = RaiseFdLimit();
  auto procs = static_cast<uint64_t>(opt.procs);
  uint64_t per_proc = (opt.connections + procs - 1) / procs;
  if (per_proc + kSpareFds > fd_limit) {
    uint64_t usable = fd_limit > kSpareFds ? fd_limit - kSpareFds : 1;
    UsageError(
        fmt::format("{} connections per process need {} descriptors but RLIMIT_NOFILE is {}; use --procs {} "
                    "or more",
                    per_proc, per_proc + kSpareFds, fd_limit, (opt.connections + usable - 1) / usable));
  }

  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);  // no SA_RESTART: epoll_wait/poll return EINTR
  sigaction(SIGTERM, &sa, nullptr);
  sa.sa_handler = OnHoldSignal;
  sigaction(SIGUSR1, &sa, nullptr);  // before the fork: workers inherit it
  signal(SIGPIPE, SIG_IGN);          // belt and braces: every send() uses MSG_NOSIGNAL

  std::fprintf(stderr,
               "gwload: %s %llu connections to %s, %d process%s, connect-rate %g/s, %g hb/s per "
               "connection, %gs\n",
               opt.churn ? "churn" : "hold", static_cast<unsigned long long>(opt.connections), opt.target.c_str(),
               opt.procs, opt.procs == 1 ? "" : "es", opt.connect_rate, opt.rate, opt.duration);

  std::unique_ptr<Report> report;
  if (opt.procs == 1) {
    ProgressPrinter printer(opt.connections);
    report = std::make_unique<Report>();
    Worker worker(opt, 0, opt.connections, opt.connect_rate, [&printer](const Progress& p) { printer.Print(p); });
    *report = worker.Run();
  } else {
    report = RunProcesses(opt);
  }
  PrintReport(opt, *report);
  std::fflush(stdout);
  return report->Errors() == 0 ? kExitOk : kExitErrors;
}

}  // namespace
}  // namespace gwload

int main(int argc, char** argv) {
  return gwload::Main(argc, argv);
}
