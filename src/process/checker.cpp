#include "gw/process/checker.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "gw/core/clock.hpp"
#include "gw/core/fd.hpp"
#include "gw/core/log.hpp"
#include "gw/net/socket.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "process/checker_loop.hpp"
#include "process/signals.hpp"

namespace gw::process {

uint32_t CheckRuns::apply(bool ok, uint32_t current, uint32_t rise, uint32_t fall) noexcept {
  if (ok) {
    ++passes;
    failures = 0;
    if (current == shm::kActiveUnknown || (current == shm::kActiveDown && passes >= rise)) return shm::kActiveUp;
  } else {
    ++failures;
    passes = 0;
    if (current == shm::kActiveUnknown || (current == shm::kActiveUp && failures >= fall)) return shm::kActiveDown;
  }
  return current;
}

std::string http_check_request(const shm::HealthCheck& check, const core::SockAddr& addr) {
  const size_t n = ::strnlen(check.host, sizeof(check.host));
  return fmt::format("GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: gw-health\r\nConnection: close\r\n\r\n",
                     std::string_view(check.path, ::strnlen(check.path, sizeof(check.path))),
                     n ? std::string(check.host, n) : addr.to_string());
}

namespace {
constexpr uint64_t kTickMs = 20;  // the longest wait between two looks at the table
}  // namespace

CheckerIo CheckerIo::real() noexcept {
  return {core::monotonic_ms, net::connect_tcp};
}

Checker::Checker(const shm::Segment& seg, CheckerIo io)
    : seg_(seg),
      io_(io),
      reader_(seg),
      table_(std::make_unique<shm::Table>(seg.caps())),
      next_(std::make_unique<shm::Table>(seg.caps())),
      hosts_(seg.caps().max_hosts),
      index_(seg.caps().max_hosts, -1),
      epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (!epfd_) throw std::runtime_error(fmt::format("epoll_create1: {}", std::strerror(errno)));
}

int Checker::run(int signal_fd, const std::string& log_file) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // (a probe's is its Probe)
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, signal_fd, &ev) != 0)
    throw std::runtime_error(fmt::format("epoll_ctl: {}", std::strerror(errno)));
  for (;;) {
    const uint64_t wake = start_due();
    if (wait_probes(wake) && drain_child_signals(signal_fd, log_file)) return 0;
  }
}

bool Checker::wait_probes(uint64_t wake) {
  const uint64_t before = io_.now_ms();  // (the connects took some)
  const int n = ::epoll_wait(epfd_.get(), events_.data(), static_cast<int>(events_.size()),
                             static_cast<int>(wake > before ? wake - before : 0));
  const uint64_t after = io_.now_ms();
  // Results are judged by the newest table (a reload may have turned
  // checks off while the probes ran).
  refresh();
  bool signalled = false;
  for (int i = 0; i < n; ++i) {
    if (!events_[static_cast<size_t>(i)].data.ptr) {
      signalled = true;
      continue;
    }
    // (Each probe is reported once per epoll_wait, and only its own event
    // ends it: the pointer is live.)
    Probe& p = *static_cast<Probe*>(events_[static_cast<size_t>(i)].data.ptr);
    int err = 0;
    bool ok = false;
    if (step(p, ok, err)) {
      finish(p, ok, err, after);
      remove(p);
      continue;
    }
    // Connecting or sending: wait to write; then only to read (EPOLLOUT
    // would be ready all the time and spin the loop).
    const bool reading = p.connected && p.request.empty();
    if (reading != p.reading) {
      p.reading = reading;
      epoll_event ev{};
      ev.events = reading ? EPOLLIN : EPOLLOUT;
      ev.data.ptr = &p;
      ::epoll_ctl(epfd_.get(), EPOLL_CTL_MOD, p.fd.get(), &ev);
    }
  }
  // The probes whose time is up (one with a result above was judged by it).
  while (!deadlines_.empty() && deadlines_.begin()->first <= after) {
    Probe& p = *deadlines_.begin()->second;
    finish(p, false, ETIMEDOUT, after);
    remove(p);
  }
  return signalled;
}

// Ends probe `p`: its socket closes (which takes it out of epfd_).
void Checker::remove(Probe& p) {
  deadlines_.erase({p.deadline_ms, &p});
  const size_t i = p.index;
  if (i + 1 != probes_.size()) {
    probes_[i] = std::move(probes_.back());  // the last one takes its place
    probes_[i]->index = i;
  }
  probes_.pop_back();
}

// Starts the checks that are due, the ones due longest first. Woken when the
// next check falls due or a probe's time is up, not on the tick only: an
// interval or timeout of 50 ms ran as 60 (the next tick), one of 10 as 20.
// The table is looked at again at most kTickMs on: a new host added alone is
// checked at once (see refresh() for the spread of many new hosts).
uint64_t Checker::start_due() {
  refresh();
  uint64_t next = io_.now_ms() + kTickMs;
  if (!deadlines_.empty()) next = std::min(next, deadlines_.begin()->first);
  while (!due_.empty()) {
    const Due d = due_.top();
    HostState& st = hosts_[d.slot];
    if (st.tag != d.tag || !st.queued || st.due_ms != d.due_ms) {
      due_.pop();  // stale
      continue;
    }
    const int i = host_index(d.slot, d.tag);
    const shm::UpstreamRecord* up = i < 0 ? nullptr : upstream_of(d.slot, d.tag);
    if (!up || up->check.type == shm::kCheckNone) {
      // Removed, or its checks turned off: queued again by the refresh
      // that turns them on.
      due_.pop();
      st.queued = false;
      continue;
    }
    // Each probe is timed from its own start: with many hosts, the connects
    // before it took a while (a deadline from the round's start failed the
    // hosts late in a round before their time, or at once).
    const uint64_t now = io_.now_ms();
    if (now < d.due_ms) {
      next = std::min(next, d.due_ms);
      break;
    }
    const shm::HostRecord& h = table_->hosts()[static_cast<size_t>(i)];
    int err = 0;
    const int fd = io_.connect(h.addr, err);
    if (fd < 0 && (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)) {
      // Out of descriptors or memory: no check can start now. This host and
      // the rest stay due, in their order, and start as the probes under way
      // end: the hosts that waited longest first. (Put off to the next
      // interval, or taken in table order, the hosts late in the table were
      // never checked: the ones before them took the descriptors first.) A
      // local error says nothing of the host: no verdict.
      log_local_error(d.slot, d.tag, err, now);
      return next;
    }
    due_.pop();
    st.queued = false;
    st.in_flight = true;
    st.due_ms = now + up->check.interval_ms;
    auto p = std::make_unique<Probe>();
    p->slot = h.slot;
    p->tag = h.tag;
    p->deadline_ms = now + up->check.timeout_ms;
    if (up->check.type == shm::kCheckHttp) p->request = http_check_request(up->check, h.addr);
    if (fd < 0) {
      finish(*p, false, err, now);  // refused at once: a failed check; a local error (no port): skipped
      continue;
    }
    p->fd.reset(fd);
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.ptr = p.get();
    if (::epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      finish(*p, false, errno, now);  // (out of memory or of epoll watches: a local error, skipped)
      continue;
    }
    next = std::min(next, p->deadline_ms);
    deadlines_.emplace(p->deadline_ms, p.get());
    p->index = probes_.size();
    probes_.push_back(std::move(p));
  }
  return next;
}

// Takes a newer table if there is one, indexes its hosts by slot (each
// finished check looks its host up, and a walk over the table for each would
// make a round of checks cost hosts squared), and queues the checked hosts
// not queued yet. A refused table (corrupt, or a foreign writer's) is not
// taken: the checks go on with the last good one, as the workers route with
// theirs, until the next publish.
//
// The first checks of the hosts new in this table (a new tag; at start and
// after a reload, which starts a new checker, every host) are spread: the
// k-th new host, of n checked hosts in the table, is first due k * interval
// / n on (its upstream's interval), the pace of n hosts checked once an
// interval. All at once, thousands of hosts meant thousands of connects in
// one wakeup: a burst on the backends and on the checker's descriptors. At
// start (every host new) the first checks fill the interval; a host added
// live is checked at once, and a batch added in one change follows it an
// interval / n apart, within moments of each other in a big table. Later
// checks keep the interval from their own start, so the spread holds.
void Checker::refresh() {
  if (!reader_.stale()) return;
  const char* refused = nullptr;
  reader_.refresh(*next_, &refused);
  if (refused) {
    GW_LOG_ERROR("the published routing table is refused: {}; checking the hosts of generation {}", refused,
                 table_->header().generation);
    return;
  }
  std::swap(table_, next_);
  const uint64_t now = io_.now_ms();
  auto hosts = table_->hosts();
  auto check_of = [&](const shm::HostRecord& h) -> const shm::HealthCheck& {
    return table_->upstreams()[table_->pools()[h.pool].upstream].check;
  };
  uint64_t checked = 0;
  for (const shm::HostRecord& h : hosts) checked += h.slot < index_.size() && check_of(h).type != shm::kCheckNone;
  uint64_t fresh = 0;  // the new hosts so far
  for (int32_t& i : index_) i = -1;
  for (size_t i = 0; i < hosts.size(); ++i) {
    const shm::HostRecord& h = hosts[i];
    if (h.slot >= index_.size()) continue;
    index_[h.slot] = static_cast<int32_t>(i);
    const shm::HealthCheck& check = check_of(h);
    if (check.type == shm::kCheckNone) continue;
    HostState& st = hosts_[h.slot];
    if (st.tag != h.tag) st = HostState{h.tag, now + fresh++ * check.interval_ms / checked, false, false, {}};
    if (!st.in_flight && !st.queued) queue(st, h.slot);
  }
}

// Puts the host in slot `slot` in due_ at its due time.
void Checker::queue(HostState& st, uint32_t slot) {
  st.queued = true;
  due_.push({st.due_ms, slot, st.tag});
}

// The index in the current table of the host holding (slot, tag), or -1.
int Checker::host_index(uint32_t slot, uint32_t tag) const noexcept {
  if (slot >= index_.size() || index_[slot] < 0) return -1;
  const int i = index_[slot];
  return table_->hosts()[static_cast<size_t>(i)].tag == tag ? i : -1;
}

// The upstream of the host holding (slot, tag) in the current table, or null.
const shm::UpstreamRecord* Checker::upstream_of(uint32_t slot, uint32_t tag) const noexcept {
  const int i = host_index(slot, tag);
  if (i < 0) return nullptr;
  return &table_->upstreams()[table_->pools()[table_->hosts()[static_cast<size_t>(i)].pool].upstream];
}

// Advances a probe; returns true when it has a result.
bool Checker::step(Probe& p, bool& ok, int& err) {
  if (!p.connected) {
    err = net::socket_error(p.fd.get());
    // A reset once the handshake was done (the host accepted, then reset
    // before this was looked at) is a connect that succeeded: a tcp check
    // passed. An http check fails on it (no answer).
    const bool reset = net::reset_after_connect(err);
    if (err != 0 && !(reset && p.request.empty())) return true;
    p.connected = true;
    if (p.request.empty()) {  // tcp check: the connect is the check
      err = 0;
      ok = true;
      return true;
    }
  }
  while (!p.request.empty()) {
    ssize_t n = ::send(p.fd.get(), p.request.data(), p.request.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN) return false;
      err = errno;
      return true;
    }
    p.request.erase(0, static_cast<size_t>(n));
  }
  char buf[256];
  ssize_t n = ::recv(p.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN) return false;
    err = errno;
    return true;
  }
  if (n == 0 && p.reply.size() < 12) {  // closed (not reset: that is an error above) before a status line
    err = EPROTO;
    last_status_ = p.reply.empty() ? "closed without an answer" : "not an HTTP response";
    return true;
  }
  p.reply.append(buf, static_cast<size_t>(n));
  // The byte after the status code too (unless the host closed right after
  // it): a code of four digits ("HTTP/1.1 2000") is no status line.
  if (p.reply.size() < 13 && n != 0) return false;
  // "HTTP/d.d NNN" and a space or the end of the line (or of the answer),
  // judged by the host's upstream as the table now has it (a host removed
  // meanwhile: a failed check of nobody, dropped in finish). Anything else
  // is no HTTP response: a failed check, said so.
  const shm::UpstreamRecord* up = upstream_of(p.slot, p.tag);
  auto digit = [&](size_t i) { return p.reply[i] >= '0' && p.reply[i] <= '9'; };
  const bool ended = p.reply.size() == 12 || p.reply[12] == ' ' || p.reply[12] == '\r' || p.reply[12] == '\n';
  const bool http = p.reply.compare(0, 5, "HTTP/") == 0 && digit(5) && p.reply[6] == '.' && digit(7) &&
                    p.reply[8] == ' ' && digit(9) && digit(10) && digit(11) && ended;
  const char cls = p.reply[9];
  ok = up && http && cls >= '1' && cls <= '5' && (up->check.expect_mask & (1u << (cls - '0')));
  if (!ok) err = EPROTO;
  last_status_ = http ? "HTTP status " + p.reply.substr(9, 3) : "not an HTTP response";
  return true;
}

void Checker::finish(Probe& p, bool ok, int err, uint64_t now) {
  HostState& st = hosts_[p.slot];
  if (st.tag != p.tag) return;  // the host was removed meanwhile
  st.in_flight = false;
  st.due_ms = std::max(st.due_ms, now);
  queue(st, p.slot);  // (dropped when it comes up if the host is gone or its checks off by then)
  // The upstream is looked up again: a table refresh since the probe began
  // may have moved or removed upstreams (their index is not the host's), or
  // turned its checks off (the verdict the writer cleared must stay so).
  const shm::UpstreamRecord* up = upstream_of(p.slot, p.tag);
  if (!up || up->check.type == shm::kCheckNone) return;
  std::string path = "(removed host)", address = "-";
  bool admin_down = false;
  auto name_host = [&] {  // only for a log line or an event
    const int i = host_index(p.slot, p.tag);
    if (i < 0) return;
    const shm::HostRecord& h = table_->hosts()[static_cast<size_t>(i)];
    path = table_->host_path(i);
    address = h.addr.to_string();
    admin_down = h.admin_down != 0;
  };
  if (!ok && err != 0 && !net::peer_error(err)) {
    // The checker's own trouble (EMFILE; EADDRNOTAVAIL: the ephemeral ports
    // towards the host all taken by proxied connections; ...) says nothing
    // of the host: counted as a failed check, it would take a healthy host
    // out for every worker. The check is skipped; the next one runs at the
    // interval.
    log_local_error(p.slot, p.tag, err, now);
    return;
  }
  shm::HostRuntime& hr = seg_.host(p.slot);
  const auto& check = up->check;
  uint32_t before = shm::active_state(hr, p.tag);
  uint32_t after = st.runs.apply(ok, before, check.rise, check.fall);
  if (after == before || !shm::record_check(hr, p.tag, after)) return;
  if (after == shm::kActiveUp && before == shm::kActiveDown) shm::mark_up(hr, p.tag, now);
  name_host();
  std::string why = ok ? fmt::format("active: {} passed check(s)", st.runs.passes)
                       : fmt::format("active: {} failed check(s), last: {}", st.runs.failures,
                                     err == EPROTO ? last_status_ : std::strerror(err));
  // A host downed by hand is out whatever its checks say: its verdict
  // changes no routing, so it is not a host_up/host_down (no hook runs;
  // a script reading the events is not told it is back). Nor is one that
  // passive health holds out (a connection found it refusing before its
  // checks failed): that said host_down already, and its trial, once a
  // connection makes it, says host_up.
  // Nor is the first verdict on a host that health.unknown already let
  // take traffic (up) or kept out (down): every start would run every
  // host_up hook, and a script would be told of hosts that never moved.
  const bool passive_out = up->max_fails != 0 && shm::passive_down(hr, p.tag);
  const bool first_same = before == shm::kActiveUnknown && (after == shm::kActiveUp) == (up->check.unknown_usable != 0);
  const char* verdict = after == shm::kActiveUp ? "up" : "down";
  std::string text =
      admin_down ? fmt::format("health_{} {} {} ({}; the host stays out: admin down, until gwctl up)", verdict, path,
                               address, why)
      : passive_out
          ? fmt::format("health_{} {} {} ({}; the host is out on passive health until a connection's trial passes)",
                        verdict, path, address, why)
      : first_same
          ? fmt::format("health_{} {} {} ({}; the first verdict, and the host {}: health.unknown is {})", verdict, path,
                        address, why, after == shm::kActiveUp ? "took traffic until then" : "took none until then",
                        after == shm::kActiveUp ? "usable" : "unusable")
          : fmt::format("host_{} {} {} ({})", verdict, path, address, why);
  shm::emit_event(seg_, shm::EventKind::health, table_->header().generation, text);
  GW_LOG_WARN("{}", text);
}

int run_checker(const config::Config& cfg, const shm::Segment& seg) {
  try {
    core::UniqueFd sfd = child_signal_fd();
    Checker c(seg, CheckerIo::real());
    return c.run(sfd.get(), cfg.log_file);
  } catch (const std::exception& e) {
    GW_LOG_ERROR("checker failed: {}", e.what());
    return 1;
  }
}

// Logs a check skipped on the checker's own trouble, at most once a second.
void Checker::log_local_error(uint32_t slot, uint32_t tag, int err, uint64_t now) {
  if (now - last_local_log_ms_ < 1000) return;
  last_local_log_ms_ = now;
  const int i = host_index(slot, tag);
  GW_LOG_ERROR("health check of {} {}: {} (a local error: the check is skipped, the host's state stays)",
               i < 0 ? std::string("(removed host)") : table_->host_path(i),
               i < 0 ? std::string("-") : table_->hosts()[static_cast<size_t>(i)].addr.to_string(), std::strerror(err));
}

}  // namespace gw::process
