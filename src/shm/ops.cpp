#include "gw/shm/ops.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "gw/balance/chash.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/writer.hpp"

namespace gw::shm::ops {

using Kind = TableError::Kind;

namespace {
// The event of an admin change of host `rec` (already changed in `t`): a
// host_up / host_down (the hooks' events) when it moves traffic. A host its
// active checks or passive health hold down is out either way: admin_up /
// admin_down, saying so, as the checker's health_up / health_down of an
// admin-down host.
std::string admin_event(const Segment& seg, const Table& t, const HostRecord& rec, bool down, const std::string& u,
                        const std::string& p, const std::string& id, std::string_view origin) {
  const char* verb = down ? "down" : "up";
  const char* held = held_out_reason(seg, t, rec);
  if (!held)
    return fmt::format("host_{} {}/{}/{} {} (admin: {} {})", verb, u, p, id, rec.addr.to_string(), origin, verb);
  return fmt::format("admin_{} {}/{}/{} {} (admin: {} {}; the host {} out: {})", verb, u, p, id, rec.addr.to_string(),
                     origin, verb, down ? "was already" : "stays", held);
}
}  // namespace

int find_upstream(const Table& t, const std::string& u) {
  int i = t.find_upstream(u);
  if (i < 0) throw TableError(fmt::format("unknown upstream \"{}\"", u), Kind::not_found);
  return i;
}

int find_pool(const Table& t, const std::string& u, const std::string& p) {
  int i = t.find_pool(find_upstream(t, u), p);
  if (i < 0) throw TableError(fmt::format("unknown pool \"{}/{}\"", u, p), Kind::not_found);
  return i;
}

int find_host(const Table& t, const std::string& u, const std::string& p, const std::string& h) {
  int i = t.find_host(find_pool(t, u, p), h);
  if (i < 0) throw TableError(fmt::format("unknown host \"{}/{}/{}\"", u, p, h), Kind::not_found);
  return i;
}

int find_route(const Table& t, const std::string& l, const std::string& r) {
  int i = t.find_route(l, r);
  if (i < 0) {
    bool listener = false;
    for (const auto& rr : t.routes()) listener |= name_of(rr.listener) == l;
    throw TableError(listener ? fmt::format("listener \"{}\" has no route \"{}\"", l, r)
                              : fmt::format("unknown listener \"{}\" (or it is not an http listener)", l),
                     Kind::not_found);
  }
  return i;
}

int find_rule(const Table& t, const std::string& l, const std::string& r, const std::string& id) {
  int i = t.find_rule(find_route(t, l, r), id);
  if (i < 0) throw TableError(fmt::format("unknown rule \"{}/{}/{}\"", l, r, id), Kind::not_found);
  return i;
}

void check_not_clustered(const Segment& seg) {
  if (seg.header().cluster.state.load() != kClusterOff)
    throw TableError(
        fmt::format("the gateway on shm \"{}\" takes its pools and hosts from etcd (cluster in its config); "
                    "change them with gwctl --etcd URL ...",
                    seg.name()),
        Kind::refused);
}

namespace {

Result commit(const Segment& seg, const Writer::Change& change, std::string what) {
  Writer w(seg);
  Result r;
  r.generation = w.commit(change);
  r.what = std::move(what);
  return r;
}

// The warning for pool `pool` of table `t` after a change that may have taken
// a chash pool past the ring's bound (a host added or reweighted, the method
// set): its ring is scaled down, and its keys no longer map as nginx's.
std::string chash_warning(const Table& t, int pool, const std::string& u, const std::string& p) {
  if (t.pools()[static_cast<size_t>(pool)].method != static_cast<uint8_t>(Method::chash)) return {};
  uint64_t total = 0;
  for (int h : t.pool_hosts(pool)) total += t.hosts()[static_cast<size_t>(h)].weight;
  std::string w = balance::chash_bound_warning(total);
  return w.empty() ? w : fmt::format("pool {}/{}: {}", u, p, w);
}

// A name a change adds: check_new_name(), so that the admin API can name it.
void check_new(const std::string& name, const char* what) {
  if (auto why = check_new_name(name); !why.empty())
    throw TableError(fmt::format("{} \"{}\" {}", what, name, why), TableError::Kind::invalid);
}

}  // namespace

Result add_host(const Segment& seg, const std::string& u, const std::string& p, const std::string& id,
                const core::SockAddr& addr, uint32_t weight, bool down) {
  check_not_clustered(seg);
  check_new(id, "host id");
  const char* state = down ? " admin down" : "";
  std::string what = fmt::format("add host {}/{}/{} {} weight={}{}", u, p, id, addr.to_string(), weight, state);
  std::string warning;
  Result r = commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        const int pool = find_pool(t, u, p);
        const int h = t.add_host(pool, id, addr, weight);
        if (down) t.hosts()[static_cast<size_t>(h)].admin_down = 1;
        ev.push_back(fmt::format("host_added {}/{}/{} {} weight={}{}", u, p, id, addr.to_string(), weight, state));
        warning = chash_warning(t, pool, u, p);
      },
      what);
  r.warning = std::move(warning);
  return r;
}

Result remove_host(const Segment& seg, const std::string& u, const std::string& p, const std::string& id) {
  check_not_clustered(seg);
  std::string what = fmt::format("remove host {}/{}/{}", u, p, id);
  return commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        int h = find_host(t, u, p, id);
        ev.push_back(
            fmt::format("host_removed {}/{}/{} {}", u, p, id, t.hosts()[static_cast<size_t>(h)].addr.to_string()));
        t.remove_host(h);
      },
      what);
}

Result set_host_down(const Segment& seg, const std::string& u, const std::string& p, const std::string& id, bool down,
                     std::string_view origin) {
  check_not_clustered(seg);
  const char* verb = down ? "down" : "up";
  bool already = false;
  // "Already down" is decided under the writer lock like a change, after the
  // repair of anything a stopped writer left: an answer of 0 is as durable as
  // a commit (a state file a killed writer left "down" is put back first).
  Result r = commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        auto& rec = t.hosts()[static_cast<size_t>(find_host(t, u, p, id))];
        if ((rec.admin_down != 0) == down) {
          already = true;
          throw Writer::Unchanged{};
        }
        rec.admin_down = down ? 1 : 0;
        ev.push_back(admin_event(seg, t, rec, down, u, p, id, origin));
      },
      fmt::format("{} host {}/{}/{}", verb, u, p, id));
  if (already) {
    r.what = fmt::format("host {}/{}/{} is already {}", u, p, id, verb);
    r.changed = false;
  }
  return r;
}

Result set_host(const Segment& seg, const std::string& u, const std::string& p, const std::string& id,
                std::optional<uint32_t> weight, std::optional<bool> down, std::string_view origin) {
  if (!weight && !down) throw TableError("set host needs a weight and/or an admin state");
  if (weight && *weight > kMaxWeight)
    throw TableError(fmt::format("weight {} out of range 0..{}", *weight, kMaxWeight));
  check_not_clustered(seg);
  std::string already, warning;
  Result r = commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        auto& rec = t.hosts()[static_cast<size_t>(find_host(t, u, p, id))];
        const bool same_weight = !weight || rec.weight == *weight, same_admin = !down || (rec.admin_down != 0) == *down;
        if (same_weight && same_admin) {
          std::vector<std::string> parts;
          if (weight) parts.push_back(fmt::format("has weight {}", *weight));
          if (down) parts.push_back(fmt::format("is {}", *down ? "down" : "up"));
          already = fmt::format("host {}/{}/{} already {}", u, p, id, fmt::join(parts, " and "));
          throw Writer::Unchanged{};
        }
        if (!same_weight) {
          ev.push_back(fmt::format("host_changed {}/{}/{} {} weight={} (was {})", u, p, id, rec.addr.to_string(),
                                   *weight, rec.weight));
          rec.weight = *weight;
          warning = chash_warning(t, rec.pool, u, p);
        }
        if (!same_admin) {
          rec.admin_down = *down ? 1 : 0;
          ev.push_back(admin_event(seg, t, rec, *down, u, p, id, origin));
        }
      },
      "");
  if (!already.empty()) {
    r.what = already;
    r.changed = false;
    return r;
  }
  std::string what = fmt::format("set host {}/{}/{}", u, p, id);
  if (weight) what += fmt::format(" weight={}", *weight);
  if (down) what += *down ? " admin down" : " admin up";
  r.what = what;
  r.warning = std::move(warning);
  return r;
}

Result add_pool(const Segment& seg, const std::string& u, const std::string& p, int32_t priority, Method method) {
  check_not_clustered(seg);
  check_new(p, "pool id");
  std::string what = fmt::format("add pool {}/{} priority={} method={}", u, p, priority, method_name(method));
  return commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        t.add_pool(find_upstream(t, u), p, priority, method);
        ev.push_back(
            fmt::format("pool_changed {}/{} added priority={} method={}", u, p, priority, method_name(method)));
      },
      what);
}

Result remove_pool(const Segment& seg, const std::string& u, const std::string& p) {
  check_not_clustered(seg);
  std::string what = fmt::format("remove pool {}/{}", u, p);
  return commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        t.remove_pool(find_pool(t, u, p));
        ev.push_back(fmt::format("pool_changed {}/{} removed", u, p));
      },
      what);
}

Result set_pool(const Segment& seg, const std::string& u, const std::string& p, std::optional<int32_t> priority,
                std::optional<Method> method) {
  if (!priority && !method) throw TableError("set pool needs a priority and/or a method");
  check_not_clustered(seg);
  std::string what, warning;
  bool already = false;
  Writer w(seg);
  Result r;
  r.generation = w.commit([&](Table& t, std::vector<std::string>& ev) {
    const int pool = find_pool(t, u, p);
    auto& pr = t.pools()[static_cast<size_t>(pool)];
    // What is already so changes nothing (as set_host): no generation, no
    // event, for a script or an API client that sends the same values again.
    if ((!priority || pr.priority == *priority) && (!method || pr.method == static_cast<uint8_t>(*method))) {
      what = fmt::format("pool {}/{} already has priority={} method={}", u, p, pr.priority,
                         method_name(static_cast<Method>(pr.method)));
      already = true;
      throw Writer::Unchanged{};
    }
    if (priority) pr.priority = *priority;
    if (method) pr.method = static_cast<uint8_t>(*method);
    const char* m = method_name(static_cast<Method>(pr.method));
    what = fmt::format("set pool {}/{} priority={} method={}", u, p, pr.priority, m);
    ev.push_back(fmt::format("pool_changed {}/{} priority={} method={}", u, p, pr.priority, m));
    if (method) warning = chash_warning(t, pool, u, p);
  });
  r.what = std::move(what);
  r.changed = !already;
  r.warning = std::move(warning);
  return r;
}

Result add_rule(const Segment& seg, const std::string& l, const std::string& r, const RuleSpec& spec) {
  check_new(spec.id, "rule id");
  std::string desc = describe_rule(spec);
  std::string what = fmt::format("add rule {}/{}/{} {}", l, r, spec.id, desc);
  return commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        t.add_rule(find_route(t, l, r), spec);
        ev.push_back(fmt::format("rule_changed {}/{}/{} added {}", l, r, spec.id, desc));
      },
      what);
}

Result set_rule(const Segment& seg, const std::string& l, const std::string& r, const RuleSpec& spec) {
  std::string desc = describe_rule(spec);
  std::string what = fmt::format("set rule {}/{}/{} {}", l, r, spec.id, desc);
  bool already = false;
  Result res = commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        const int i = find_rule(t, l, r, spec.id);
        // The rule as it is (a script, or the admin API's read, edit, write
        // sent unedited): changes nothing, as set_host and set_pool.
        const RuleSpec cur = t.rule_spec(i);
        if (cur.upstream == spec.upstream && cur.cidrs == spec.cidrs && cur.header_name == spec.header_name &&
            cur.header_value == spec.header_value && cur.cookie_name == spec.cookie_name &&
            cur.cookie_value == spec.cookie_value && cur.percent_bp == spec.percent_bp) {
          already = true;
          throw Writer::Unchanged{};
        }
        t.replace_rule(i, spec);
        ev.push_back(fmt::format("rule_changed {}/{}/{} set {}", l, r, spec.id, desc));
      },
      what);
  if (already) {
    res.what = fmt::format("rule {}/{}/{} is already {}", l, r, spec.id, desc);
    res.changed = false;
  }
  return res;
}

Result remove_rule(const Segment& seg, const std::string& l, const std::string& r, const std::string& id) {
  std::string what = fmt::format("remove rule {}/{}/{}", l, r, id);
  return commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        t.remove_rule(find_rule(t, l, r, id));
        ev.push_back(fmt::format("rule_changed {}/{}/{} removed", l, r, id));
      },
      what);
}

Result add_consumer(const Segment& seg, const std::string& name, const uint8_t (&key_sha256)[kSha256Len]) {
  check_new(name, "consumer name");
  return commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        t.add_consumer(name, key_sha256);
        ev.push_back(fmt::format("consumer_changed {} added", name));
      },
      fmt::format("add consumer {}", name));
}

Result remove_consumer(const Segment& seg, const std::string& name) {
  return commit(
      seg,
      [&](Table& t, std::vector<std::string>& ev) {
        const int i = t.find_consumer(name);
        if (i < 0) throw TableError(fmt::format("unknown consumer \"{}\"", name), TableError::Kind::not_found);
        t.remove_consumer(i);
        ev.push_back(fmt::format("consumer_changed {} removed", name));
      },
      fmt::format("remove consumer {}", name));
}

}  // namespace gw::shm::ops
