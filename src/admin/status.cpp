#include "gw/admin/status.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>
#include <memory>
#include <vector>

#include "gw/api/limit_table.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/utf8.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/http_proxy.hpp"
#include "gw/shm/cluster.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/state_file.hpp"

namespace gw::admin {

using shm::name_of;

std::string json_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<int>(u));
    } else if (u >= 0x80) {
      // Texts from outside (an etcd error, a foreign segment) may not be
      // UTF-8, which JSON must be: a byte that starts no well-formed sequence
      // becomes U+FFFD.
      if (const size_t n = core::utf8_sequence(s.substr(i))) {
        out.append(s.substr(i, n));
        i += n;
        continue;
      }
      out += "\\ufffd";
    } else {
      out += c;
    }
    ++i;
  }
  return out;
}

std::string iso_time(uint64_t ms) {
  if (!ms) return "";
  char ts[40];
  core::format_iso8601(ms, ts, sizeof(ts));
  return ts;
}

ClusterView cluster_view(const shm::Segment& seg) {
  const auto& c = seg.header().cluster;
  ClusterView v;
  v.state = c.state.load(std::memory_order_acquire);
  v.on = v.state != shm::kClusterOff;
  v.revision = c.revision.load();
  v.since_ms = c.since_ms.load();
  v.contact_ms = c.contact_ms.load();
  v.reconnects = c.reconnects.load();
  v.relists = c.relists.load();
  v.applied = c.applied.load();
  v.sync_pid = c.sync_pid.load();
  v.text = shm::read_cluster_text(c);
  return v;
}

std::string cluster_json(const ClusterView& v) {
  if (!v.on) return "null";
  return fmt::format(
      "{{\"state\": \"{}\", \"revision\": {}, \"endpoint\": \"{}\", \"since\": \"{}\", \"last_contact\": \"{}\", "
      "\"error\": \"{}\", \"sync_pid\": {}, \"reconnects\": {}, \"relists\": {}, \"applied\": {}}}",
      shm::cluster_state_name(v.state), v.revision, json_escape(v.text.endpoint), iso_time(v.since_ms),
      iso_time(v.contact_ms), json_escape(v.text.error), v.sync_pid, v.reconnects, v.relists, v.applied);
}

std::string cluster_line(const ClusterView& v) {
  std::string err = v.text.error[0] ? fmt::format("; last error: {}", v.text.error) : "";
  switch (v.state) {
    case shm::kClusterSynced:
      return fmt::format("cluster: etcd synced at revision {} ({}), since {}{}", v.revision, v.text.endpoint,
                         iso_time(v.since_ms), err);
    case shm::kClusterDisconnected:
      // Revision 0: etcd was unreachable since gwd started or reloaded (the
      // sync state starts over then); the table served is the one gwd had
      // (its state file or config, or the table before the reload), not an
      // empty one.
      if (v.revision == 0)
        return fmt::format(
            "cluster: etcd DISCONNECTED since {}, reconnecting; serving the local table (not synced with etcd since "
            "gwd started or reloaded){}",
            iso_time(v.since_ms), err);
      return fmt::format("cluster: etcd DISCONNECTED since {}, reconnecting; serving the table of revision {}{}",
                         iso_time(v.since_ms), v.revision, err);
    default: return fmt::format("cluster: etcd connecting ({}) since {}{}", v.text.endpoint, iso_time(v.since_ms), err);
  }
}

const char* host_health(const shm::Segment& seg, const shm::Table& t, const shm::HostRecord& h) {
  const auto& up = t.upstreams()[t.pools()[h.pool].upstream];
  shm::HealthPolicy p{up.max_fails, up.fail_timeout_ms, up.check.type != shm::kCheckNone, up.check.unknown_usable != 0};
  const bool usable = shm::host_usable(seg.host(h.slot), h.tag, p, core::monotonic_ms());
  // Down on passive health until a connection's trial passes, as its events
  // say (host_down, and host_up only from the trial): also once its
  // fail_timeout is over and the trial may be taken (it said "up" then, with
  // no host_up, for a host that may still be dead). Before its checks'
  // verdict is in as well (it said "unknown" for a host that refused its
  // connections).
  if (up.max_fails != 0 && shm::passive_down(seg.host(h.slot), h.tag)) return "down";
  if (p.active && shm::active_state(seg.host(h.slot), h.tag) == shm::kActiveUnknown) return "unknown";
  return usable ? "up" : "down";
}

bool host_usable(const shm::Segment& seg, const shm::Table& t, const shm::HostRecord& h) {
  const auto& up = t.upstreams()[t.pools()[h.pool].upstream];
  const shm::HealthPolicy p{up.max_fails, up.fail_timeout_ms, up.check.type != shm::kCheckNone,
                            up.check.unknown_usable != 0};
  // Weight 0 takes no new connections (a drain), whatever its health. A host
  // down on passive health is not counted once its fail_timeout is over: it
  // waits for one trial connection, and is up when that passes.
  return !h.admin_down && h.weight > 0 && shm::host_usable(seg.host(h.slot), h.tag, p, core::monotonic_ms()) &&
         !(up.max_fails != 0 && shm::passive_down(seg.host(h.slot), h.tag));
}

std::string host_json(const shm::Segment& seg, const shm::Table& t, int host, bool live) {
  const shm::HostRecord& h = t.hosts()[static_cast<size_t>(host)];
  auto tot = shm::host_totals(seg, h.slot, h.tag);
  auto st = shm::host_stats_totals(seg, h.slot, h.tag);
  // A table read before the slot went to another host: not that host's count.
  const uint64_t failures = seg.host(h.slot).tag.load() == h.tag ? seg.host(h.slot).failures.load() : 0;
  return fmt::format(
      "{{\"id\": \"{}\", \"address\": \"{}\", \"weight\": {}, \"admin\": \"{}\", \"health\": \"{}\", "
      "\"active\": {}, \"total\": {}, \"failures\": {}, \"status_failures\": {}, \"responses\": {{\"1xx\": {}, "
      "\"2xx\": {}, \"3xx\": {}, \"4xx\": {}, \"5xx\": {}}}, \"sent_bytes\": {}, \"received_bytes\": {}}}",
      name_of(h.id), h.addr.to_string(), h.weight, h.admin_down ? "down" : "up", host_health(seg, t, h),
      live ? tot.active : 0, tot.total, failures, st.status_failures, st.responses[0], st.responses[1], st.responses[2],
      st.responses[3], st.responses[4], st.sent_bytes, st.received_bytes);
}

std::string pool_json(const shm::Segment& seg, const shm::Table& t, int pool, bool live) {
  const auto& pr = t.pools()[static_cast<size_t>(pool)];
  std::string out = fmt::format("{{\"id\": \"{}\", \"priority\": {}, \"method\": \"{}\", \"hosts\": [", name_of(pr.id),
                                pr.priority, shm::method_name(static_cast<shm::Method>(pr.method)));
  bool first = true;
  auto hosts = t.hosts();
  for (size_t h = 0; h < hosts.size(); ++h) {
    if (hosts[h].pool != static_cast<uint32_t>(pool)) continue;
    out += (first ? "" : ", ") + host_json(seg, t, static_cast<int>(h), live);
    first = false;
  }
  return out + "]}";
}

std::string upstream_json(const shm::Segment& seg, const shm::Table& t, int upstream, bool live) {
  // The hosts the balancer may use, as gw_upstream_hosts_usable counts them:
  // a host whose health is "unknown" may be one.
  uint32_t usable = 0;
  for (const shm::HostRecord& h : t.hosts())
    if (t.pools()[h.pool].upstream == static_cast<uint32_t>(upstream) && host_usable(seg, t, h)) ++usable;
  std::string out = fmt::format("{{\"name\": \"{}\", \"hosts_usable\": {}, \"pools\": [",
                                name_of(t.upstreams()[static_cast<size_t>(upstream)].name), usable);
  bool first = true;
  for (size_t p = 0; p < t.pools().size(); ++p) {
    if (t.pools()[p].upstream != static_cast<uint32_t>(upstream)) continue;
    out += (first ? "" : ", ") + pool_json(seg, t, static_cast<int>(p), live);
    first = false;
  }
  return out + "]}";
}

std::string rule_json(const shm::Segment& seg, const shm::Table& t, int rule) {
  std::string j = shm::rule_to_json(t.rule_spec(rule));
  const shm::RuleRecord& r = t.rules()[static_cast<size_t>(rule)];
  j.pop_back();  // the closing brace
  return j + fmt::format(", \"hits\": {}}}", shm::rule_hits(seg, r.stat_slot, r.stat_tag));
}

std::string route_json(const shm::Segment& seg, const shm::Table& t, int route) {
  const auto& rr = t.routes()[static_cast<size_t>(route)];
  std::string j =
      fmt::format("{{\"listener\": \"{}\", \"route\": \"{}\", \"rules\": [", name_of(rr.listener), name_of(rr.name));
  bool first = true;
  for (size_t k = 0; k < t.rules().size(); ++k) {
    if (t.rules()[k].route != static_cast<uint32_t>(route)) continue;
    j += (first ? "" : ", ") + rule_json(seg, t, static_cast<int>(k));
    first = false;
  }
  return j + "]}";
}

std::vector<ListenerView> listener_views(const shm::Segment& seg) {
  std::vector<ListenerView> out;
  if (!seg.master_alive()) return out;
  // (None if the master's list was left mid-write.)
  shm::ListenerList list;
  if (!shm::read_listeners(seg.header(), list)) return out;
  out.reserve(list.n);
  for (uint32_t i = 0; i < list.n; ++i) {
    const shm::ListenerInfo& li = list.items[i];
    out.push_back({std::string(name_of(li.name)), li.addr, shm::listener_totals(seg, shm::listener_stats_row(li, i))});
  }
  return out;
}

std::string byte_size(uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  size_t u = 0;
  uint64_t unit = 1024;
  // The largest unit the count reaches (EiB: 2^60 is the last that fits).
  while (u + 1 < std::size(kUnits) && bytes / 1024 >= unit) unit *= 1024, ++u;
  // Tenths of the unit, rounded half up, in integers: (bytes % unit) * 10 is
  // below 2^60 * 10, which fits in 64 bits.
  uint64_t tenths = bytes / unit * 10 + ((bytes % unit) * 10 + unit / 2) / unit;
  if (tenths >= 10240 && u + 1 < std::size(kUnits)) {  // 1023.95 KiB and up: 1.0 MiB
    unit *= 1024, ++u;
    tenths = bytes / unit * 10 + ((bytes % unit) * 10 + unit / 2) / unit;
  }
  return fmt::format("{}.{} {}", tenths / 10, tenths % 10, kUnits[u]);
}

std::string status_json(const shm::Segment& seg) {
  auto t = std::make_unique<shm::Table>(seg.caps());
  shm::read_published(seg, *t);
  return status_json(seg, *t);
}

std::string status_json(const shm::Segment& seg, const shm::Table& t) {
  const auto& hdr = seg.header();
  const int master = seg.master_alive() ? hdr.master_pid.load() : 0;
  uint64_t reject_totals[proxy::kFrameErrorCount] = {};
  // {"header_truncated": 0, ...}: every reason, so scripts can rely on the keys.
  auto rejects_json = [](const uint64_t* counts) {
    std::string j = "{";
    for (size_t k = 1; k < proxy::kFrameErrorCount; ++k)
      j += fmt::format("{}\"{}\": {}", k > 1 ? ", " : "", proxy::frame_error_name(static_cast<proxy::FrameError>(k)),
                       counts[k]);
    return j + "}";
  };
  // The totals sum every row, not only those of running workers: a row keeps
  // what its workers counted after they exit (a reload's old generation, a
  // respawned worker), so a total never goes back.
  for (uint32_t i = 0; i < shm::kMaxWorkers && master; ++i)
    for (size_t k = 1; k < proxy::kFrameErrorCount; ++k) reject_totals[k] += seg.worker(i).frame_rejects[k].load();
  std::string workers;
  for (uint32_t i = 0; i < shm::kMaxWorkers && master; ++i) {
    const auto& w = seg.worker(i);
    const int pid = w.pid.load();
    if (pid <= 0) continue;
    uint64_t rejects[proxy::kFrameErrorCount] = {};
    for (size_t k = 1; k < proxy::kFrameErrorCount; ++k) rejects[k] = w.frame_rejects[k].load();
    std::string http = fmt::format("{{\"requests\": {}, \"retries\": {}, \"keepalive_reused\": {}, \"tunnels\": {}",
                                   w.http_requests.load(), w.http_retries.load(), w.http_keepalive_reused.load(),
                                   w.http_tunnels.load());
    for (size_t k = 1; k < std::size(proxy::kHttpOutcomeNames); ++k)
      http += fmt::format(", \"{}\": {}", proxy::kHttpOutcomeNames[k], w.http_outcomes[k].load());
    http += "}";
    const auto& g = seg.guard(i);
    const std::string guard = fmt::format(
        "{{\"conn_rejected\": {}, \"req_limited\": {}, \"limit_full\": {}, \"evictions\": {}, \"auth_ok\": {}, "
        "\"auth_failed\": {}, \"auth_forbidden\": {}, \"basic_cache_hits\": {}, \"jwt_cache_hits\": {}}}",
        g.conn_rejected.load(), g.req_limited.load(), g.limit_full.load(), g.evictions.load(), g.auth_ok.load(),
        g.auth_failed.load(), g.auth_forbidden.load(), g.basic_cache_hits.load(), g.jwt_cache_hits.load());
    workers += fmt::format(
        "{}{{\"slot\": {}, \"pid\": {}, \"generation\": {}, \"connections\": {}, \"accepted\": {}, "
        "\"hash_fallbacks\": {}, \"no_host\": {}, \"frames_routed\": {}, \"host_closed\": {}, "
        "\"frame_rejects\": {}, \"http\": {}, \"guard\": {}}}",
        workers.empty() ? "" : ", ", i, pid, w.generation.load(), w.connections.load(), w.accepted.load(),
        w.hash_fallbacks.load(), w.no_host.load(), w.frames_routed.load(), w.host_closed.load(), rejects_json(rejects),
        http, guard);
  }
  std::string out =
      fmt::format("{{\"shm\": \"{}\", \"generation\": {}, \"master_pid\": {}, \"cluster\": {}, \"workers\": [",
                  seg.name(), t.header().generation, master, cluster_json(cluster_view(seg)));
  out += workers;
  out += "], \"listeners\": [";
  bool first_listener = true;
  for (const ListenerView& l : listener_views(seg)) {
    out += fmt::format(
        "{}{{\"name\": \"{}\", \"address\": \"{}\", \"accepted\": {}, \"active\": {}, \"http_requests\": {}, "
        "\"received_bytes\": {}, \"sent_bytes\": {}}}",
        first_listener ? "" : ", ", json_escape(l.name), l.addr.to_string(), l.totals.accepted, l.totals.active,
        l.totals.http_requests, l.totals.received_bytes, l.totals.sent_bytes);
    first_listener = false;
  }
  out += "], \"frame_rejects\": " + rejects_json(reject_totals) + ", \"upstreams\": [";
  for (size_t u = 0; u < t.upstreams().size(); ++u)
    out += (u ? ", " : "") + upstream_json(seg, t, static_cast<int>(u), master != 0);
  out += "], \"routes\": [";
  for (size_t r = 0; r < t.routes().size(); ++r) out += (r ? ", " : "") + route_json(seg, t, static_cast<int>(r));
  out += "], \"consumers\": [";
  for (size_t i = 0; i < t.consumers().size(); ++i)
    out += fmt::format("{}{{\"name\": \"{}\"}}", i ? ", " : "", json_escape(name_of(t.consumers()[i].name)));
  const api::LimitTable::Stats lim =
      api::LimitTable(seg.limit_entries(), seg.caps().max_limit_keys, nullptr, nullptr).stats();
  out += fmt::format("], \"limits\": {{\"capacity\": {}, \"used\": {}, \"pinned\": {}, \"connections\": {}}}",
                     seg.caps().max_limit_keys, lim.used, lim.pinned, lim.conns);
  return out + "}";
}

std::string events_json(const shm::Segment& seg, uint64_t since, uint32_t limit) {
  const uint64_t head = seg.header().event_head.load(std::memory_order_acquire);
  uint64_t cur = since;
  uint64_t lost = 0;
  if (head > shm::kEventCapacity && cur < head - shm::kEventCapacity) {
    lost = head - shm::kEventCapacity - cur;
    cur = head - shm::kEventCapacity;
  }
  if (cur > head) cur = head;  // a `since` from the future (another gateway's numbers)
  std::string events;
  uint32_t n = 0;
  for (; cur < head && n < limit; ++cur) {
    shm::EventData e{};
    auto r = shm::read_event(seg, cur, e);
    if (r == shm::EventRead::not_yet) {
      // Being written (the next call gets it), unless a later event was
      // completed over a second ago: then its writer died mid-event.
      if (shm::event_abandoned(seg, cur, head, core::wall_ms())) {
        ++lost;
        continue;
      }
      break;
    }
    if (r == shm::EventRead::lost) {
      ++lost;
      continue;
    }
    const char* kind = e.kind == static_cast<uint32_t>(shm::EventKind::config)   ? "config"
                       : e.kind == static_cast<uint32_t>(shm::EventKind::health) ? "health"
                                                                                 : "process";
    events += fmt::format(
        "{}{{\"seq\": {}, \"time\": \"{}\", \"generation\": {}, \"pid\": {}, \"kind\": \"{}\", "
        "\"text\": \"{}\"}}",
        n ? ", " : "", cur, iso_time(e.wall_ms), e.generation, e.pid, kind, json_escape(e.text));
    ++n;
  }
  return fmt::format("{{\"head\": {}, \"next\": {}, \"lost\": {}, \"events\": [{}]}}", head, cur, lost, events);
}

}  // namespace gw::admin
