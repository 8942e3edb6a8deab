#include "gw/cluster/reconcile.hpp"

#include <fmt/format.h>
#include <algorithm>

#include <cstring>
#include <map>

#include "gw/balance/chash.hpp"
#include "gw/shm/runtime.hpp"

namespace gw::cluster {

using shm::name_of;

namespace {

template <typename T>
bool same_span(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

// Equal entries in use (the bytes past them may hold leftovers of removals).
bool same_entries(const shm::Table& a, const shm::Table& b) {
  return same_span(a.upstreams(), b.upstreams()) && same_span(a.pools(), b.pools()) && same_span(a.hosts(), b.hosts());
}

}  // namespace

bool reconcile(shm::Table& t, const Model& model, std::vector<std::string>& events, std::vector<std::string>& warnings,
               const shm::Segment* seg) {
  // Keys whose value did not parse: what this node has for them stays (a
  // typo in etcd must not take a pool and its hosts off every node).
  const Model* mp = &model;
  Model held;
  if (!model.held_pools.empty() || !model.held_hosts.empty()) {
    held = model;
    for (const auto& [u, p] : model.held_pools) {
      const int ui = t.find_upstream(u);
      const int pi = ui < 0 ? -1 : t.find_pool(ui, p);
      if (pi < 0) continue;  // nothing to keep: the pool is not here
      const auto& pr = t.pools()[static_cast<size_t>(pi)];
      held.pools[{u, p}] = PoolSpec{pr.priority, static_cast<shm::Method>(pr.method)};
    }
    for (const auto& [u, p, h] : model.held_hosts) {
      const int ui = t.find_upstream(u);
      const int pi = ui < 0 ? -1 : t.find_pool(ui, p);
      const int hi = pi < 0 ? -1 : t.find_host(pi, h);
      if (hi < 0 || !held.pools.count({u, p})) continue;
      const auto& hr = t.hosts()[static_cast<size_t>(hi)];
      held.hosts[{u, p, h}] = HostSpec{hr.addr, hr.weight, hr.admin_down != 0};
    }
    mp = &held;
  }
  const Model& m = *mp;
  for (const auto& [u, present] : m.upstreams)
    if (present && t.find_upstream(u) < 0)
      warnings.push_back(fmt::format("upstream \"{}\" in etcd is not in this node's config; ignored", u));

  shm::Table nt(t.caps());
  nt.header() = t.header();
  nt.header().n_upstreams = nt.header().n_pools = nt.header().n_hosts = 0;
  // Routes and their rules are not shared through etcd: they stay as they are
  // (the header copied their counts; the records follow).
  std::copy(t.routes().begin(), t.routes().end(), nt.routes().begin());
  std::copy(t.rules().begin(), t.rules().end(), nt.rules().begin());
  std::copy(t.cidrs().begin(), t.cidrs().end(), nt.cidrs().begin());
  std::copy(t.consumers().begin(), t.consumers().end(), nt.consumers().begin());  // key-auth consumers: local too
  std::vector<std::string> removed, changed, added;
  // The old table's hosts by (pool, id), looked up once per host of the model:
  // a scan of the table for each made a large pool quadratic (seconds per
  // watched change at 20,000 hosts). The ids point into `t`, unchanged until
  // the copy at the end.
  std::map<std::pair<int, std::string_view>, int> old_hosts;
  for (size_t hi = 0; hi < t.hosts().size(); ++hi)
    old_hosts.emplace(std::pair{static_cast<int>(t.hosts()[hi].pool), name_of(t.hosts()[hi].id)}, static_cast<int>(hi));

  for (size_t ui = 0; ui < t.upstreams().size(); ++ui) {
    const shm::UpstreamRecord ur = t.upstreams()[ui];
    const std::string uname(name_of(ur.name));
    const int nu = nt.add_upstream(ur);
    if (!m.upstreams.count(uname)) {
      // Not shared through etcd: copied as it is.
      for (size_t pi = 0; pi < t.pools().size(); ++pi) {
        const auto& pr = t.pools()[pi];
        if (pr.upstream != ui) continue;
        int np = nt.add_pool(nu, name_of(pr.id), pr.priority, static_cast<shm::Method>(pr.method));
        for (int hi : t.pool_hosts(static_cast<int>(pi))) {
          const auto& hr = t.hosts()[static_cast<size_t>(hi)];
          int nh = nt.add_unique_host(np, name_of(hr.id), hr.addr, hr.weight);  // unique in their pool in `t`
          auto& x = nt.hosts()[static_cast<size_t>(nh)];
          x = hr;
          x.pool = static_cast<uint16_t>(np);
        }
      }
      continue;
    }
    // Removed pools and hosts first (their events come first).
    for (size_t pi = 0; pi < t.pools().size(); ++pi) {
      const auto& pr = t.pools()[pi];
      if (pr.upstream != ui) continue;
      const std::string pid(name_of(pr.id));
      const bool pool_stays = m.pools.count({uname, pid}) != 0;
      for (int hi : t.pool_hosts(static_cast<int>(pi))) {
        const auto& hr = t.hosts()[static_cast<size_t>(hi)];
        auto it = m.hosts.find({uname, pid, std::string(name_of(hr.id))});
        if (!pool_stays || it == m.hosts.end() || it->second.addr != hr.addr)
          removed.push_back(fmt::format("host_removed {}/{}/{} {}", uname, pid, name_of(hr.id), hr.addr.to_string()));
      }
      if (!pool_stays) removed.push_back(fmt::format("pool_changed {}/{} removed", uname, pid));
    }
    // The new pools and hosts, in key order.
    for (auto pit = m.pools.lower_bound({uname, ""}); pit != m.pools.end() && pit->first.first == uname; ++pit) {
      const std::string& pid = pit->first.second;
      const PoolSpec& ps = pit->second;
      const int op = t.find_pool(static_cast<int>(ui), pid);
      if (op < 0) {
        changed.push_back(fmt::format("pool_changed {}/{} added priority={} method={}", uname, pid, ps.priority,
                                      shm::method_name(ps.method)));
      } else {
        const auto& opr = t.pools()[static_cast<size_t>(op)];
        if (opr.priority != ps.priority || opr.method != static_cast<uint8_t>(ps.method))
          changed.push_back(fmt::format("pool_changed {}/{} priority={} method={}", uname, pid, ps.priority,
                                        shm::method_name(ps.method)));
      }
      const int np = nt.add_pool(nu, pid, ps.priority, ps.method);
      for (auto hit = m.hosts.lower_bound({uname, pid, ""});
           hit != m.hosts.end() && std::get<0>(hit->first) == uname && std::get<1>(hit->first) == pid; ++hit) {
        const std::string& hid = std::get<2>(hit->first);
        const HostSpec& hs = hit->second;
        const int nh = nt.add_unique_host(np, hid, hs.addr, hs.weight);  // the model's keys are unique
        auto& x = nt.hosts()[static_cast<size_t>(nh)];
        x.admin_down = hs.down ? 1 : 0;
        const auto found = op < 0 ? old_hosts.end() : old_hosts.find({op, hid});
        const int oh = found == old_hosts.end() ? -1 : found->second;
        const shm::HostRecord* old = oh < 0 ? nullptr : &t.hosts()[static_cast<size_t>(oh)];
        const std::string path = fmt::format("{}/{}/{}", uname, pid, hid), addr = hs.addr.to_string();
        if (old && old->addr == hs.addr) {
          x.slot = old->slot;  // the same host: keeps its counters and health
          x.tag = old->tag;
          if (old->weight != hs.weight)
            changed.push_back(fmt::format("host_changed {} {} weight={}", path, addr, hs.weight));
          if ((old->admin_down != 0) != hs.down) {
            const char* verb = hs.down ? "down" : "up";
            const char* why = seg ? shm::held_out_reason(*seg, t, *old) : nullptr;
            if (why)
              changed.push_back(fmt::format("admin_{} {} {} (admin: etcd; the host {} out: {})", verb, path, addr,
                                            hs.down ? "was already" : "stays", why));
            else changed.push_back(fmt::format("host_{} {} {} (admin: etcd)", verb, path, addr));
          }
        } else {
          added.push_back(fmt::format("host_added {} {} weight={}", path, addr, hs.weight));
          if (hs.down) added.push_back(fmt::format("host_down {} {} (admin: etcd)", path, addr));
        }
      }
    }
  }
  // A chash pool from etcd past the ring's bound: applied, and balanced by
  // weight, but its keys no longer map as nginx's (what gwd -t and gwctl say
  // of one). Said on every call while it holds, as the other warnings: the
  // sync process logs a warning when it first appears, not on each sync.
  std::vector<uint64_t> totals(nt.pools().size());
  for (const auto& h : nt.hosts()) totals[h.pool] += h.weight;
  for (size_t pi = 0; pi < nt.pools().size(); ++pi) {
    const auto& pr = nt.pools()[pi];
    if (pr.method != static_cast<uint8_t>(shm::Method::chash)) continue;
    const std::string uname(name_of(nt.upstreams()[pr.upstream].name));
    if (!m.upstreams.count(uname)) continue;  // from the config, which gwd -t checks
    if (std::string w = balance::chash_bound_warning(totals[pi]); !w.empty())
      warnings.push_back(fmt::format("pool {}/{}: {}", uname, name_of(pr.id), w));
  }
  if (removed.empty() && changed.empty() && added.empty() && same_entries(nt, t)) return false;
  std::memcpy(t.words(), nt.words(), t.bytes());
  // (No event when only the order changed: the first sync after a start from
  // the config puts pools and hosts in key order.)
  for (auto* v : {&removed, &changed, &added}) events.insert(events.end(), v->begin(), v->end());
  return true;
}

}  // namespace gw::cluster
