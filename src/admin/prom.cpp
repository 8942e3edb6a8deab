#include "gw/admin/prom.hpp"

#include <fmt/format.h>

#include <array>
#include <cmath>
#include <iterator>
#include <vector>

#include "gw/admin/status.hpp"
#include "gw/api/limit_table.hpp"
#include "gw/core/clock.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/http_proxy.hpp"
#include "gw/shm/cluster.hpp"
#include "gw/shm/limits.hpp"
#include "gw/shm/runtime.hpp"

namespace gw::admin {

using shm::name_of;

std::string prom_escape_label(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string prom_escape_help(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string prom_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 9e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

void PromWriter::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, prom_escape_help(help), name, type);
}

void PromWriter::series(std::string_view name, std::string_view suffix, std::span<const Label> labels,
                        const Label* extra) {
  out_ += name;
  out_ += suffix;
  if (labels.empty() && !extra) return;
  out_ += '{';
  bool first = true;
  auto put = [&](const Label& l) {
    if (!first) out_ += ',';
    first = false;
    out_ += l.name;
    out_ += "=\"";
    out_ += prom_escape_label(l.value);
    out_ += '"';
  };
  for (const Label& l : labels) put(l);
  if (extra) put(*extra);
  out_ += '}';
}

void PromWriter::sample(std::string_view name, std::span<const Label> labels, uint64_t value) {
  series(name, "", labels);
  out_ += fmt::format(" {}\n", value);
}

void PromWriter::sample_double(std::string_view name, std::span<const Label> labels, double value) {
  series(name, "", labels);
  out_ += ' ';
  out_ += prom_value(value);
  out_ += '\n';
}

void PromWriter::histogram(std::string_view name, std::span<const Label> labels, std::span<const double> bounds,
                           std::span<const uint64_t> counts, double sum) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds.size(); ++i) {
    cumulative += i < counts.size() ? counts[i] : 0;
    const std::string le = i < bounds.size() ? prom_value(bounds[i]) : "+Inf";
    const Label extra{"le", le};
    series(name, "_bucket", labels, &extra);
    out_ += fmt::format(" {}\n", cumulative);
  }
  series(name, "_sum", labels);
  out_ += ' ';
  out_ += prom_value(sum);
  out_ += '\n';
  series(name, "_count", labels);
  out_ += fmt::format(" {}\n", cumulative);
}

namespace {

const char* protocol_name(config::Protocol p) {
  switch (p) {
    case config::Protocol::tcp: return "tcp";
    case config::Protocol::frame: return "frame";
    case config::Protocol::http: return "http";
  }
  return "tcp";
}

struct HostSnap {
  std::string upstream, pool, id, address;
  uint32_t weight = 0;
  bool admin_up = true;
  const char* health = "up";
  shm::HostTotals counts;
  shm::HostStatsTotals stats;
  uint64_t failures = 0;
  uint64_t ewma_us = 0;
};

}  // namespace

std::string metrics_text(const shm::Segment& seg, const shm::Table& t, const config::Config& cfg) {
  PromWriter w;
  const auto& hdr = seg.header();

  // ---- the gateway
  w.family("gw_info", "gauge", "Always 1; the labels name the shm segment and its ABI version.");
  {
    const std::string abi = std::to_string(hdr.abi);
    w.sample("gw_info", {{"shm", seg.name()}, {"abi", abi}}, 1);
  }
  w.family("gw_table_generation", "gauge", "Generation of the published routing table (bumped by every change).");
  w.sample("gw_table_generation", t.header().generation);
  w.family("gw_events_total", "counter", "Events written to the event ring (see GET /events).");
  w.sample("gw_events_total", hdr.event_head.load(std::memory_order_acquire));
  w.family("gw_workers", "gauge", "Worker processes the master runs.");
  w.sample("gw_workers", hdr.workers.load());
  if (ClusterView cv = cluster_view(seg); cv.on) {
    w.family("gw_cluster_state", "gauge", "etcd sync state: 1 for the current state, 0 for the others.");
    for (uint32_t s : {shm::kClusterConnecting, shm::kClusterSynced, shm::kClusterDisconnected})
      w.sample("gw_cluster_state", {{"state", shm::cluster_state_name(s)}}, cv.state == s ? 1 : 0);
    w.family("gw_cluster_revision", "gauge", "The etcd revision the table reflects.");
    w.sample("gw_cluster_revision", cv.revision);
    // Counted since gwd started: a reload and a respawned sync process count on.
    w.family("gw_cluster_reconnects_total", "counter",
             "Watches the sync process started on etcd (the first one and each reconnection).");
    w.sample("gw_cluster_reconnects_total", cv.reconnects);
    w.family("gw_cluster_relists_total", "counter",
             "Full lists of the etcd prefix (at start, on a reload or a respawn of the sync process, after a "
             "compaction, or when etcd came back behind or as another cluster).");
    w.sample("gw_cluster_relists_total", cv.relists);
    w.family("gw_cluster_applied_total", "counter", "Table commits made from etcd.");
    w.sample("gw_cluster_applied_total", cv.applied);
  }

  // ---- workers: the counters of every row a worker ever ran in, the gauges
  // of the running workers. A row keeps what its workers counted after they
  // exit (a reload's old generation, a respawned worker), so a sum over the
  // rows never goes back; a row the next generation takes counts on from there.
  struct WorkerSnap {
    std::string slot;
    const shm::WorkerRuntime* w;
    uint32_t index;
    bool running;
  };
  std::vector<WorkerSnap> workers;
  for (uint32_t i = 0; i < shm::kMaxWorkers; ++i) {
    const bool running = seg.worker(i).pid.load(std::memory_order_acquire) > 0;
    if (running || seg.worker(i).started_ms.load(std::memory_order_relaxed) != 0)
      workers.push_back({std::to_string(i), &seg.worker(i), i, running});
  }
  auto worker_family = [&](const char* name, const char* type, const char* help, auto get) {
    w.family(name, type, help);
    const bool gauge = std::string_view(type) == "gauge";
    for (const auto& ws : workers)
      if (ws.running || !gauge) w.sample(name, {{"worker", ws.slot}}, get(*ws.w));
  };
  worker_family("gw_worker_connections", "gauge", "Open client connections of the worker.",
                [](const shm::WorkerRuntime& r) { return r.connections.load(); });
  worker_family("gw_worker_accepted_total", "counter", "Client connections the worker accepted.",
                [](const shm::WorkerRuntime& r) { return r.accepted.load(); });
  worker_family("gw_worker_hash_fallbacks_total", "counter",
                "Connections or requests a hash method routed by round robin for want of a key.",
                [](const shm::WorkerRuntime& r) { return r.hash_fallbacks.load(); });
  worker_family("gw_worker_no_host_total", "counter", "Connections or requests no pool had a usable host for.",
                [](const shm::WorkerRuntime& r) { return r.no_host.load(); });
  worker_family("gw_worker_frames_routed_total", "counter", "Frames routed one by one (frame mode \"frame\").",
                [](const shm::WorkerRuntime& r) { return r.frames_routed.load(); });
  worker_family("gw_worker_host_closed_total", "counter",
                "Connections closed because their host went (on_host_remove \"close\").",
                [](const shm::WorkerRuntime& r) { return r.host_closed.load(); });
  w.family("gw_worker_frame_rejects_total", "counter", "Frame connections refused, by reason.");
  for (const auto& ws : workers)
    for (size_t k = 1; k < proxy::kFrameErrorCount; ++k)
      w.sample("gw_worker_frame_rejects_total",
               {{"worker", ws.slot}, {"reason", proxy::frame_error_name(static_cast<proxy::FrameError>(k))}},
               ws.w->frame_rejects[k].load());
  worker_family("gw_worker_http_requests_total", "counter", "HTTP request heads the worker parsed.",
                [](const shm::WorkerRuntime& r) { return r.http_requests.load(); });
  worker_family("gw_worker_http_retries_total", "counter", "HTTP attempts after a request's first.",
                [](const shm::WorkerRuntime& r) { return r.http_retries.load(); });
  worker_family("gw_worker_http_keepalive_reused_total", "counter",
                "HTTP requests sent over an idle kept-alive upstream connection.",
                [](const shm::WorkerRuntime& r) { return r.http_keepalive_reused.load(); });
  worker_family("gw_worker_http_tunnels_total", "counter", "WebSocket/Upgrade tunnels opened (101).",
                [](const shm::WorkerRuntime& r) { return r.http_tunnels.load(); });
  w.family("gw_worker_http_outcomes_total", "counter",
           "HTTP requests the proxy answered itself or closed, by outcome.");
  for (const auto& ws : workers)
    for (size_t k = 1; k < std::size(proxy::kHttpOutcomeNames); ++k)
      w.sample("gw_worker_http_outcomes_total", {{"worker", ws.slot}, {"outcome", proxy::kHttpOutcomeNames[k]}},
               ws.w->http_outcomes[k].load());
  worker_family("gw_worker_table_generation", "gauge", "Table generation the worker routes with.",
                [](const shm::WorkerRuntime& r) { return r.generation.load(); });

  // ---- the guard: limit_req, limit_conn and auth, per worker; the shared limit table
  auto guard_family = [&](const char* name, const char* help, auto get) {
    w.family(name, "counter", help);
    for (const auto& ws : workers) w.sample(name, {{"worker", ws.slot}}, get(seg.guard(ws.index)));
  };
  guard_family("gw_worker_limit_conn_rejected_total", "Connections closed at accept by limit_conn.",
               [](const shm::GuardCounters& g) { return g.conn_rejected.load(); });
  guard_family("gw_worker_limit_req_rejected_total", "Requests answered 429 by limit_req.",
               [](const shm::GuardCounters& g) { return g.req_limited.load(); });
  guard_family("gw_worker_limit_full_total",
               "Limit lookups refused because every entry of the key's set held open connections.",
               [](const shm::GuardCounters& g) { return g.limit_full.load(); });
  guard_family("gw_worker_limit_evictions_total", "Limit-table entries taken over from another key (LRU).",
               [](const shm::GuardCounters& g) { return g.evictions.load(); });
  w.family("gw_worker_auth_total", "counter",
           "Requests of routes with auth, by result: ok, failed (401), forbidden (403).");
  for (const auto& ws : workers) {
    const shm::GuardCounters& g = seg.guard(ws.index);
    w.sample("gw_worker_auth_total", {{"worker", ws.slot}, {"result", "ok"}}, g.auth_ok.load());
    w.sample("gw_worker_auth_total", {{"worker", ws.slot}, {"result", "failed"}}, g.auth_failed.load());
    w.sample("gw_worker_auth_total", {{"worker", ws.slot}, {"result", "forbidden"}}, g.auth_forbidden.load());
  }
  {
    const api::LimitTable::Stats lim =
        api::LimitTable(seg.limit_entries(), seg.caps().max_limit_keys, nullptr, nullptr).stats();
    w.family("gw_limit_entries", "gauge", "Entries of the shared limit table (limit_req, limit_conn), by state.");
    w.sample("gw_limit_entries", {{"state", "capacity"}}, seg.caps().max_limit_keys);
    w.sample("gw_limit_entries", {{"state", "used"}}, lim.used);
    w.sample("gw_limit_entries", {{"state", "pinned"}}, lim.pinned);
    w.family("gw_limit_connections", "gauge", "Connections limit_conn counts now, over all addresses.");
    w.sample("gw_limit_connections", lim.conns);
  }

  // ---- listeners
  struct ListenerSnap {
    std::string name;
    const char* protocol;
    config::Protocol kind;
    bool limit_conn;
    shm::ListenerTotals tot;
  };
  std::vector<ListenerSnap> listeners;
  for (size_t i = 0; i < cfg.listeners.size() && i < shm::kMaxListeners; ++i)
    listeners.push_back({cfg.listeners[i].name, protocol_name(cfg.listeners[i].protocol), cfg.listeners[i].protocol,
                         cfg.listeners[i].limit_conn.on, shm::listener_totals(seg, cfg.listeners[i].stats_row)});
  w.family("gw_listener_accepted_total", "counter", "Connections the listener accepted.");
  for (const auto& l : listeners)
    w.sample("gw_listener_accepted_total", {{"listener", l.name}, {"protocol", l.protocol}}, l.tot.accepted);
  w.family("gw_listener_active", "gauge", "Connections of the listener open now.");
  for (const auto& l : listeners)
    w.sample("gw_listener_active", {{"listener", l.name}, {"protocol", l.protocol}}, l.tot.active);
  w.family("gw_listener_received_bytes_total", "counter",
           "Bytes read from the listener's clients (http: heads and bodies as on the wire).");
  for (const auto& l : listeners)
    w.sample("gw_listener_received_bytes_total", {{"listener", l.name}, {"protocol", l.protocol}},
             l.tot.received_bytes);
  w.family("gw_listener_sent_bytes_total", "counter",
           "Bytes written to the listener's clients (http: heads and bodies as on the wire, the gateway's own "
           "answers too).");
  for (const auto& l : listeners)
    w.sample("gw_listener_sent_bytes_total", {{"listener", l.name}, {"protocol", l.protocol}}, l.tot.sent_bytes);
  w.family("gw_listener_rejected_total", "counter",
           "Connections the listener refused or closed unserved, by reason: the frame reasons (frame listeners), "
           "no_host (no pool had a usable host), no_slot (an L4 connection got no descriptor, port or memory for its "
           "upstream socket), limit_conn "
           "(the client address was over the "
           "listener's limit_conn max).");
  for (const auto& l : listeners) {
    if (l.kind == config::Protocol::frame)
      for (size_t k = 1; k < proxy::kFrameErrorCount; ++k)
        w.sample("gw_listener_rejected_total",
                 {{"listener", l.name},
                  {"protocol", l.protocol},
                  {"reason", proxy::frame_error_name(static_cast<proxy::FrameError>(k))}},
                 l.tot.rejects[k]);
    w.sample("gw_listener_rejected_total", {{"listener", l.name}, {"protocol", l.protocol}, {"reason", "no_host"}},
             l.tot.rejects[shm::kRejectNoHost]);
    w.sample("gw_listener_rejected_total", {{"listener", l.name}, {"protocol", l.protocol}, {"reason", "no_slot"}},
             l.tot.rejects[shm::kRejectNoSlot]);
    if (l.limit_conn)
      w.sample("gw_listener_rejected_total", {{"listener", l.name}, {"protocol", l.protocol}, {"reason", "limit_conn"}},
               l.tot.rejects[shm::kRejectLimitConn]);
  }
  w.family("gw_listener_http_requests_total", "counter", "HTTP request heads parsed on the listener.");
  for (const auto& l : listeners)
    if (l.kind == config::Protocol::http)
      w.sample("gw_listener_http_requests_total", {{"listener", l.name}, {"protocol", l.protocol}},
               l.tot.http_requests);
  w.family("gw_listener_http_errors_total", "counter",
           "HTTP answers the gateway made itself (400, 404, 408, 502, 503, 504, ...), by status code; "
           "code \"other\" counts codes not listed.");
  for (const auto& l : listeners) {
    if (l.kind != config::Protocol::http) continue;
    for (size_t k = 0; k < shm::kHttpCodeSlots; ++k) {
      if (k > 0 && shm::kHttpCodes[k] == 0) break;
      const std::string code = k == 0 ? "other" : std::to_string(shm::kHttpCodes[k]);
      w.sample("gw_listener_http_errors_total", {{"listener", l.name}, {"protocol", l.protocol}, {"code", code}},
               l.tot.http_errors[k]);
    }
  }

  // ---- upstreams and hosts
  std::vector<HostSnap> hosts;
  auto hrecs = t.hosts();
  hosts.reserve(hrecs.size());
  std::vector<uint64_t> up_hosts(t.upstreams().size(), 0), up_usable(t.upstreams().size(), 0);
  for (size_t i = 0; i < hrecs.size(); ++i) {
    const shm::HostRecord& h = hrecs[i];
    const shm::PoolRecord& p = t.pools()[h.pool];
    HostSnap s;
    s.upstream = name_of(t.upstreams()[p.upstream].name);
    s.pool = name_of(p.id);
    s.id = name_of(h.id);
    s.address = h.addr.to_string();
    s.weight = h.weight;
    s.admin_up = !h.admin_down;
    s.health = host_health(seg, t, h);
    s.counts = shm::host_totals(seg, h.slot, h.tag);
    s.stats = shm::host_stats_totals(seg, h.slot, h.tag);
    s.failures = seg.host(h.slot).tag.load() == h.tag ? seg.host(h.slot).failures.load() : 0;
    s.ewma_us = shm::latency_us(seg.host(h.slot), h.tag, core::monotonic_ms());
    ++up_hosts[p.upstream];
    // As the balancer sees it: a host its checks have not judged yet counts
    // when the upstream lets such hosts take traffic (check.unknown_usable).
    if (host_usable(seg, t, h)) ++up_usable[p.upstream];
    hosts.push_back(std::move(s));
  }
  w.family("gw_upstream_hosts", "gauge", "Hosts of the upstream, over all its pools.");
  for (size_t u = 0; u < t.upstreams().size(); ++u)
    w.sample("gw_upstream_hosts", {{"upstream", name_of(t.upstreams()[u].name)}}, up_hosts[u]);
  w.family("gw_upstream_hosts_usable", "gauge",
           "Hosts of the upstream the balancer may use (admin up, weight above 0, not out on health).");
  for (size_t u = 0; u < t.upstreams().size(); ++u)
    w.sample("gw_upstream_hosts_usable", {{"upstream", name_of(t.upstreams()[u].name)}}, up_usable[u]);

  auto labels = [](const HostSnap& h) {
    return std::array<Label, 4>{Label{"upstream", h.upstream}, Label{"pool", h.pool}, Label{"host", h.id},
                                Label{"address", h.address}};
  };
  w.family("gw_upstream_host_requests_total", "counter",
           "Connections (tcp, frame) or request attempts (http) sent to the host.");
  for (const auto& h : hosts) w.sample("gw_upstream_host_requests_total", labels(h), h.counts.total);
  w.family("gw_upstream_host_responses_total", "counter", "HTTP response heads from the host, by status class.");
  for (const auto& h : hosts)
    for (size_t c = 0; c < 5; ++c) {
      auto l = labels(h);
      const std::string cls = fmt::format("{}xx", c + 1);
      const Label all[] = {l[0], l[1], l[2], l[3], {"class", cls}};
      w.sample("gw_upstream_host_responses_total", all, h.stats.responses[c]);
    }
  w.family("gw_upstream_host_sent_bytes_total", "counter",
           "Bytes written to the host (every listener kind; http: request heads as on the wire and bodies; "
           "WebSocket tunnels after the 101).");
  for (const auto& h : hosts) w.sample("gw_upstream_host_sent_bytes_total", labels(h), h.stats.sent_bytes);
  w.family("gw_upstream_host_received_bytes_total", "counter",
           "Bytes read from the host (every listener kind; http: response heads and bodies as on the wire).");
  for (const auto& h : hosts) w.sample("gw_upstream_host_received_bytes_total", labels(h), h.stats.received_bytes);
  w.family("gw_upstream_host_failures_total", "counter",
           "Passive failures of the host (connect errors and timeouts, resets, invalid answers, retried statuses).");
  for (const auto& h : hosts) w.sample("gw_upstream_host_failures_total", labels(h), h.failures);
  w.family("gw_upstream_host_active", "gauge",
           "Connections (tcp, frame) or requests in flight (http) to the host, over all workers.");
  for (const auto& h : hosts) w.sample("gw_upstream_host_active", labels(h), h.counts.active);
  w.family("gw_upstream_host_health", "gauge",
           "Health of the host (passive and active checks): 1 for its state (up, down, unknown), 0 for the others.");
  for (const auto& h : hosts)
    for (const char* state : {"up", "down", "unknown"}) {
      auto l = labels(h);
      const Label all[] = {l[0], l[1], l[2], l[3], {"state", state}};
      w.sample("gw_upstream_host_health", all, std::string_view(h.health) == state ? 1 : 0);
    }
  w.family("gw_upstream_host_admin_up", "gauge", "Admin state of the host: 1 up, 0 down (gwctl down / the admin API).");
  for (const auto& h : hosts) w.sample("gw_upstream_host_admin_up", labels(h), h.admin_up ? 1 : 0);
  w.family("gw_upstream_host_weight", "gauge", "Configured weight of the host.");
  for (const auto& h : hosts) w.sample("gw_upstream_host_weight", labels(h), h.weight);
  w.family("gw_upstream_host_latency_ewma_seconds", "gauge",
           "Peak-EWMA of the host's connect time, on http upstreams the time to the response head (the ewma "
           "method's measure); 0 before the first sample.");
  for (const auto& h : hosts)
    w.sample_double("gw_upstream_host_latency_ewma_seconds", labels(h), static_cast<double>(h.ewma_us) / 1e6);

  double bounds[shm::kLatencyBuckets];
  for (size_t i = 0; i < shm::kLatencyBuckets; ++i) bounds[i] = static_cast<double>(shm::kLatencyBoundsUs[i]) / 1e6;
  w.family("gw_upstream_host_connect_seconds", "histogram",
           "Time to connect to the host (every listener kind), successful connects.");
  for (const auto& h : hosts)
    w.histogram("gw_upstream_host_connect_seconds", labels(h), bounds, h.stats.connect.buckets,
                static_cast<double>(h.stats.connect.sum_us) / 1e6);
  w.family("gw_upstream_host_response_seconds", "histogram",
           "HTTP: time from the start of an attempt (connect included on a new connection) to the host's response "
           "head.");
  for (const auto& h : hosts)
    w.histogram("gw_upstream_host_response_seconds", labels(h), bounds, h.stats.response.buckets,
                static_cast<double>(h.stats.response.sum_us) / 1e6);

  // ---- rules
  w.family("gw_rule_hits_total", "counter", "Requests a gray-release rule matched.");
  for (size_t k = 0; k < t.rules().size(); ++k) {
    const shm::RuleRecord& r = t.rules()[k];
    const shm::RouteRecord& route = t.routes()[r.route];
    w.sample("gw_rule_hits_total",
             {{"listener", name_of(route.listener)},
              {"route", name_of(route.name)},
              {"rule", name_of(r.id)},
              {"upstream", name_of(r.upstream)}},
             shm::rule_hits(seg, r.stat_slot, r.stat_tag));
  }
  return w.text();
}

}  // namespace gw::admin
