#include "gw/shm/runtime.hpp"

#include <algorithm>
#include <cmath>

#include "gw/shm/table.hpp"

namespace gw::shm {
namespace testing {
void (*failure_gap_hook)() = nullptr;
void (*verdict_gap_hook)() = nullptr;
}  // namespace testing

namespace {
constexpr uint64_t pack(uint32_t tag, uint32_t n) {
  return (uint64_t{tag} << 32) | n;
}
constexpr uint32_t tag_of(uint64_t w) {
  return static_cast<uint32_t>(w >> 32);
}
// The low word: the window's failure count, and kTrialBit while a down
// host's trial (claim_trial) is under way; a failure clears it.
constexpr uint32_t kTrialBit = 0x80000000u;
constexpr uint32_t count_of(uint64_t w) {
  return static_cast<uint32_t>(w) & ~kTrialBit;
}
constexpr bool trial_of(uint64_t w) {
  return (static_cast<uint32_t>(w) & kTrialBit) != 0;
}
constexpr double kTauMs = 10000.0;  // peak-EWMA decay time

// The verdicts word's low half: kPassiveDownBit | the active state.
constexpr uint32_t active_of(uint64_t v) {
  return static_cast<uint32_t>(v) & kActiveMask;
}
constexpr bool passive_down_of(uint64_t v) {
  return (static_cast<uint32_t>(v) & kPassiveDownBit) != 0;
}

// Rewrites the low half of host `tag`'s verdicts with `next(low half)`, as
// long as the word still carries `tag`: false, with nothing written, once
// the slot has another tag. `before` gets the low half it replaced.
template <class F>
bool update_verdicts(HostRuntime& h, uint32_t tag, F next, uint32_t& before) noexcept {
  uint64_t v = h.verdicts.load(std::memory_order_acquire);
  for (;;) {
    if (tag_of(v) != tag) return false;
    before = static_cast<uint32_t>(v);
    const uint32_t after = next(before);
    if (after == before) return true;
    if (testing::verdict_gap_hook) testing::verdict_gap_hook();
    if (h.verdicts.compare_exchange_weak(v, pack(tag, after), std::memory_order_acq_rel)) return true;
  }
}
// Passive health's verdict of host `tag` to `down`: true if this call changed it.
bool set_passive(HostRuntime& h, uint32_t tag, bool down) noexcept {
  uint32_t before = 0;
  const auto set = [down](uint32_t w) { return down ? w | kPassiveDownBit : w & ~kPassiveDownBit; };
  return update_verdicts(h, tag, set, before) && ((before & kPassiveDownBit) != 0) != down;
}
}  // namespace

uint32_t active_state(const HostRuntime& h, uint32_t tag) noexcept {
  const uint64_t v = h.verdicts.load(std::memory_order_acquire);
  return tag_of(v) == tag ? active_of(v) : kActiveUnknown;
}

bool passive_down(const HostRuntime& h, uint32_t tag) noexcept {
  const uint64_t v = h.verdicts.load(std::memory_order_acquire);
  return tag_of(v) == tag && passive_down_of(v);
}

bool record_check(HostRuntime& h, uint32_t tag, uint32_t new_state) noexcept {
  uint32_t before = 0;
  const auto set = [new_state](uint32_t w) { return (w & ~kActiveMask) | (new_state & kActiveMask); };
  return update_verdicts(h, tag, set, before) && (before & kActiveMask) != (new_state & kActiveMask);
}

bool clear_active(HostRuntime& h, uint32_t tag) noexcept {
  uint32_t before = 0;
  const auto clear = [](uint32_t w) { return (w & ~kActiveMask) | kActiveUnknown; };
  return update_verdicts(h, tag, clear, before) && (before & kActiveMask) == kActiveDown;
}

bool clear_passive(HostRuntime& h, uint32_t tag) noexcept {
  return set_passive(h, tag, false);
}

const char* held_out_reason(const Segment& seg, const Table& t, const HostRecord& h) noexcept {
  if (h.tag == 0 || h.slot >= seg.caps().max_hosts || h.pool >= t.pools().size()) return nullptr;
  const uint16_t u = t.pools()[h.pool].upstream;
  if (u >= t.upstreams().size()) return nullptr;
  const UpstreamRecord& up = t.upstreams()[u];
  const HostRuntime& hr = seg.host(h.slot);
  if (up.check.type != kCheckNone && active_state(hr, h.tag) == kActiveDown) return "its health check fails";
  // Not checked yet, where such a host takes no traffic (health.unknown
  // "unusable"): out as well (gwctl down/up said host_down and host_up, and
  // ran their hooks, for a host that took traffic neither before nor after).
  if (up.check.type != kCheckNone && up.check.unknown_usable == 0 && active_state(hr, h.tag) == kActiveUnknown)
    return "its health checks have not passed yet (health.unknown is unusable)";
  // Down on passive health, its fail_timeout over or not: it gets one trial
  // connection, whose success says host_up (record_success).
  if (up.max_fails != 0 && passive_down(hr, h.tag)) return "passive health, until a connection's trial passes";
  return nullptr;
}

bool host_usable(const HostRuntime& h, uint32_t tag, HealthPolicy p, uint64_t now_ms) noexcept {
  // One load for both verdicts. A word of another tag (the slot is being
  // given to another host) says nothing of this one: unknown, and up.
  const uint64_t v = h.verdicts.load(std::memory_order_acquire);
  const bool mine = tag_of(v) == tag;
  if (p.active) {
    const uint32_t a = mine ? active_of(v) : kActiveUnknown;
    if (a == kActiveDown || (a == kActiveUnknown && !p.unknown_usable)) return false;
  }
  if (p.max_fails == 0 || !mine || !passive_down_of(v)) return true;
  // Down: usable again once fail_timeout has passed since the last failure.
  // (Workers' clocks are read at different moments: a last failure "after"
  // now means it just happened.)
  const uint64_t last = h.last_fail_ms.load(std::memory_order_relaxed);
  return now_ms > last && now_ms - last >= p.fail_timeout_ms;
}

bool record_failure(HostRuntime& h, uint32_t tag, HealthPolicy p, uint64_t now_ms) noexcept {
  uint64_t w = h.window_fails.load(std::memory_order_acquire);
  uint32_t n;  // the window's failures before this one
  for (;;) {
    if (tag_of(w) != tag) return false;
    uint64_t last = h.last_fail_ms.load(std::memory_order_acquire);
    n = count_of(w);
    const bool ended = n != 0 && now_ms > last && now_ms - last >= p.fail_timeout_ms;
    if (!ended) {
      if (h.window_fails.compare_exchange_weak(w, pack(tag, n + 1), std::memory_order_acq_rel)) break;
      continue;
    }
    // The previous window ended: this failure starts a new one. Two workers
    // failing together both find it ended, and each reset the count to 1,
    // losing the other's failure. So the start is claimed on last_fail_ms,
    // one winner: a loser finds the window live and counts in it, on the old
    // count if the winner has not reset it yet; the winner's reset keeps
    // what was added since it read `w`.
    if (!h.last_fail_ms.compare_exchange_strong(last, now_ms, std::memory_order_acq_rel)) {
      w = h.window_fails.load(std::memory_order_acquire);
      continue;
    }
    const uint32_t old = n;
    for (;;) {
      const uint32_t c = count_of(w);
      n = c >= old ? c - old : c;  // (a trial's success cleared it meanwhile: all of it is new)
      if (h.window_fails.compare_exchange_weak(w, pack(tag, n + 1), std::memory_order_acq_rel)) break;
      if (tag_of(w) != tag) return false;
    }
    break;
  }
  if (testing::failure_gap_hook) testing::failure_gap_hook();
  h.last_fail_ms.store(now_ms, std::memory_order_release);
  h.failures.fetch_add(1, std::memory_order_relaxed);
  if (p.max_fails == 0 || n + 1 < p.max_fails) return false;
  return set_passive(h, tag, true);
}

bool record_success(HostRuntime& h, uint32_t tag, uint64_t started_ms, uint32_t max_fails) noexcept {
  uint64_t w = h.window_fails.load(std::memory_order_relaxed);
  if (tag_of(w) != tag) return false;
  // An up host's window keeps its failures: successes between them do not
  // hide a host that fails every other request (nginx clears its count only
  // after a trial, too).
  if (!passive_down(h, tag)) return false;
  // Down: only the trial's success counts: a trial is under way (no failure
  // since it was claimed) and this attempt began at or after its stamp. An
  // attempt under way when the host went down (a slow request answered at
  // last, a connection that was already open) says nothing about new ones: a
  // host that refuses new connections while it finishes old ones must stay
  // out (nginx's "accessed < checked").
  if (!trial_of(w) || started_ms < h.last_fail_ms.load(std::memory_order_acquire)) return false;
  // A failure since the trial was claimed cleared its mark: the trial is
  // void, and the host stays down (the failure's, which came later, holds).
  if (!h.window_fails.compare_exchange_strong(w, pack(tag, 0), std::memory_order_acq_rel)) return false;
  if (!set_passive(h, tag, false)) return false;
  // The count and the passive bit are two words: failures that reached
  // max_fails between the two stores above found the host still down and
  // left it so, and this call has just brought it up behind them. They win.
  const uint64_t after = h.window_fails.load(std::memory_order_acquire);
  if (max_fails != 0 && tag_of(after) == tag && count_of(after) >= max_fails) {
    set_passive(h, tag, true);
    return false;
  }
  return true;
  // (the caller stamps up_since_ms for slow start when this returns true)
}

Trial claim_trial(HostRuntime& h, uint32_t tag, HealthPolicy p, uint64_t now_ms) noexcept {
  if (p.max_fails == 0 || !passive_down(h, tag)) return Trial::none;
  uint64_t last = h.last_fail_ms.load(std::memory_order_relaxed);
  if (!(now_ms > last && now_ms - last >= p.fail_timeout_ms)) return Trial::lost;
  // One winner over all workers: the others now see the host out again.
  if (!h.last_fail_ms.compare_exchange_strong(last, now_ms, std::memory_order_acq_rel)) return Trial::lost;
  // Marked, so that only this trial's success brings the host back (a
  // failure meanwhile clears the mark).
  uint64_t w = h.window_fails.load(std::memory_order_relaxed);
  while (tag_of(w) == tag && !trial_of(w) &&
         !h.window_fails.compare_exchange_weak(w, w | kTrialBit, std::memory_order_acq_rel)) {
  }
  return Trial::taken;
}

void reset_slot(HostRuntime& h, uint32_t tag) noexcept {
  h.window_fails.store(pack(tag, 0), std::memory_order_relaxed);
  h.last_fail_ms.store(0, std::memory_order_relaxed);
  h.failures.store(0, std::memory_order_relaxed);
  h.verdicts.store(pack(tag, kActiveUnknown), std::memory_order_relaxed);  // up on passive health
  h.up_since_ms.store(0, std::memory_order_relaxed);
  h.ewma.store(0, std::memory_order_relaxed);
  h.tag.store(tag, std::memory_order_release);
}

uint32_t slow_start_permille(const HostRuntime& h, uint32_t tag, uint32_t slow_start_ms, uint64_t now_ms) noexcept {
  if (slow_start_ms == 0 || h.tag.load(std::memory_order_relaxed) != tag) return 1000;
  uint64_t up = h.up_since_ms.load(std::memory_order_relaxed);
  if (up == 0 || now_ms >= up + slow_start_ms) return 1000;
  // Linear from nothing to the full weight, as nginx's slow_start ("from
  // zero to a nominal value") and HAProxy's slowstart, so that a host of
  // weight 1 (the default) ramps too; at least 1 per mille (and a pick never
  // refuses the only usable host for it, see pick_host()). A stamp "after"
  // now is another process's clock (the checker, the writer, a worker that
  // read its clock later): no time has passed yet (the difference, wrapped,
  // gave a share of millions, that is full weight at once).
  const uint64_t elapsed = now_ms > up ? now_ms - up : 0;
  return static_cast<uint32_t>(std::max<uint64_t>(elapsed * 1000 / slow_start_ms, 1));
}

void record_latency(HostRuntime& h, uint32_t tag, uint64_t sample_us, uint64_t now_ms) noexcept {
  if (h.tag.load(std::memory_order_relaxed) != tag) return;
  uint64_t w = h.ewma.load(std::memory_order_relaxed);
  uint64_t old = w >> 32;
  uint32_t last = static_cast<uint32_t>(w);
  uint64_t next = sample_us;
  // A stamp "after" now is another worker's (each reads the clock once per
  // loop turn): no time has passed, and the stamp stays (a wrapped difference
  // would decay the peak to nothing).
  uint32_t dt = static_cast<uint32_t>(now_ms) - last;
  uint32_t stamp = static_cast<uint32_t>(now_ms);
  if (dt > 0x80000000u) {
    dt = 0;
    stamp = last;
  }
  if (old != 0 && sample_us < old) {
    const double keep = std::exp(-static_cast<double>(dt) / kTauMs);
    next = static_cast<uint64_t>(static_cast<double>(old) * keep + static_cast<double>(sample_us) * (1.0 - keep));
  }
  next = std::clamp<uint64_t>(next, 1, 0xffffffffu);
  h.ewma.store((next << 32) | stamp, std::memory_order_relaxed);
}

uint64_t latency_us(const HostRuntime& h, uint32_t tag, uint64_t now_ms) noexcept {
  if (h.tag.load(std::memory_order_relaxed) != tag) return 0;
  const uint64_t w = h.ewma.load(std::memory_order_relaxed);
  const uint64_t value = w >> 32;
  const uint32_t dt = static_cast<uint32_t>(now_ms) - static_cast<uint32_t>(w);
  if (value == 0 || dt == 0 || dt > 0x80000000u) return value;  // (a store "after" now: another worker's clock)
  const double decayed = static_cast<double>(value) * std::exp(-static_cast<double>(dt) / kTauMs);
  return std::max<uint64_t>(1, static_cast<uint64_t>(decayed));
}

HostTotals host_totals(const Segment& seg, uint32_t slot, uint32_t tag) noexcept {
  HostTotals t;
  for (uint32_t w = 0; w < seg.stat_workers(); ++w) {
    const HostCounter& c = seg.counter(w, slot);
    if (c.tag.load(std::memory_order_relaxed) != tag) continue;
    t.active += c.active.load(std::memory_order_relaxed);
    t.total += c.total.load(std::memory_order_relaxed);
  }
  return t;
}

void clear_worker_counters(const Segment& seg, uint32_t worker) noexcept {
  for (uint32_t i = 0; i < seg.caps().max_hosts && worker < seg.stat_workers(); ++i) {
    // Its connections died with it; totals stay, they are history.
    seg.counter(worker, i).active.store(0, std::memory_order_relaxed);
  }
  if (worker < seg.stat_workers())
    for (uint32_t l = 0; l < kMaxListeners; ++l)
      seg.listener_stats(worker, l).active.store(0, std::memory_order_relaxed);
  seg.worker(worker).connections.store(0, std::memory_order_relaxed);
}

namespace {
void add_histogram(HistogramTotals& t, const LatencyHistogram& h) noexcept {
  for (size_t i = 0; i <= kLatencyBuckets; ++i) t.buckets[i] += h.buckets[i].load(std::memory_order_relaxed);
  t.sum_us += h.sum_us.load(std::memory_order_relaxed);
}
}  // namespace

HostStatsTotals host_stats_totals(const Segment& seg, uint32_t slot, uint32_t tag) noexcept {
  HostStatsTotals t;
  for (uint32_t w = 0; w < seg.stat_workers(); ++w) {
    const HostStats& s = seg.host_stats(w, slot);
    if (s.tag.load(std::memory_order_relaxed) != tag) continue;
    for (size_t c = 0; c < 5; ++c) t.responses[c] += s.responses[c].load(std::memory_order_relaxed);
    t.status_failures += s.status_failures.load(std::memory_order_relaxed);
    add_histogram(t.connect, s.connect);
    add_histogram(t.response, s.response);
    t.sent_bytes += s.sent_bytes.load(std::memory_order_relaxed);
    t.received_bytes += s.received_bytes.load(std::memory_order_relaxed);
  }
  return t;
}

ListenerTotals listener_totals(const Segment& seg, uint32_t listener) noexcept {
  ListenerTotals t;
  for (uint32_t w = 0; w < seg.stat_workers(); ++w) {
    const ListenerStats& s = seg.listener_stats(w, listener);
    t.accepted += s.accepted.load(std::memory_order_relaxed);
    t.active += s.active.load(std::memory_order_relaxed);
    t.http_requests += s.http_requests.load(std::memory_order_relaxed);
    t.received_bytes += s.received_bytes.load(std::memory_order_relaxed);
    t.sent_bytes += s.sent_bytes.load(std::memory_order_relaxed);
    for (size_t i = 0; i < kListenerRejectKinds; ++i) t.rejects[i] += s.rejects[i].load(std::memory_order_relaxed);
    for (size_t i = 0; i < kHttpCodeSlots; ++i) t.http_errors[i] += s.http_errors[i].load(std::memory_order_relaxed);
  }
  return t;
}

uint64_t rule_hits(const Segment& seg, uint32_t slot, uint32_t tag) noexcept {
  uint64_t n = 0;
  if (slot >= seg.caps().max_rules) return 0;
  for (uint32_t w = 0; w < seg.stat_workers(); ++w) {
    const RuleStats& s = seg.rule_stats(w, slot);
    if (s.tag.load(std::memory_order_relaxed) == tag) n += s.hits.load(std::memory_order_relaxed);
  }
  return n;
}

void clear_listener_row(const Segment& seg, uint32_t row) noexcept {
  if (row >= kMaxListeners) return;
  for (uint32_t w = 0; w < seg.stat_workers(); ++w) {
    ListenerStats& s = seg.listener_stats(w, row);
    s.accepted.store(0, std::memory_order_relaxed);
    s.active.store(0, std::memory_order_relaxed);
    s.http_requests.store(0, std::memory_order_relaxed);
    s.received_bytes.store(0, std::memory_order_relaxed);
    s.sent_bytes.store(0, std::memory_order_relaxed);
    for (auto& r : s.rejects) r.store(0, std::memory_order_relaxed);
    for (auto& e : s.http_errors) e.store(0, std::memory_order_relaxed);
  }
}

void clear_listener_stats(const Segment& seg) noexcept {
  for (uint32_t l = 0; l < kMaxListeners; ++l) clear_listener_row(seg, l);
}

}  // namespace gw::shm
