#include "gw/cluster/schema.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include "gw/core/json_error.hpp"

namespace gw::cluster {

std::string upstream_key(std::string_view prefix, std::string_view u) {
  return fmt::format("{}upstreams/{}", prefix, u);
}
std::string upstream_children_prefix(std::string_view prefix, std::string_view u) {
  return fmt::format("{}upstreams/{}/", prefix, u);
}
std::string pool_key(std::string_view prefix, std::string_view u, std::string_view p) {
  return fmt::format("{}upstreams/{}/pools/{}", prefix, u, p);
}
std::string hosts_prefix(std::string_view prefix, std::string_view u, std::string_view p) {
  return fmt::format("{}upstreams/{}/pools/{}/hosts/", prefix, u, p);
}
std::string host_key(std::string_view prefix, std::string_view u, std::string_view p, std::string_view h) {
  return fmt::format("{}upstreams/{}/pools/{}/hosts/{}", prefix, u, p, h);
}

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& c = reinterpret_cast<unsigned char&>(end.back());
    if (c < 0xff) {
      ++c;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // etcd: from the key to the end of the keyspace
}

namespace {

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t slash = s.find('/', start);
    parts.push_back(s.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) return parts;
    start = slash + 1;
  }
}

bool check(std::string_view what, std::string_view name, std::string& why) {
  // (`.` and `..` too: no name in the config, gwctl or the admin API is one)
  std::string bad = shm::check_new_name(name);
  if (bad.empty()) return true;
  why = fmt::format("{} \"{}\" {}", what, name, bad);
  return false;
}

using simdjson::dom::element;

// Calls fn(key, value) for each field of the object `json`; fn returns an
// error text or "". Rejects anything but an object, and duplicate keys.
template <typename Fn>
bool each_field(std::string_view json, std::string& why, Fn&& fn) {
  simdjson::dom::parser parser;
  element root;
  if (auto err = parser.parse(json.data(), json.size()).get(root)) {
    const core::JsonError where = core::locate_json_error(json);
    why = fmt::format("{}{}", where.path.empty() ? "" : where.path + ": ",
                      core::json_error_text(where, simdjson::error_message(err)));
    return false;
  }
  simdjson::dom::object obj;
  if (root.get(obj) != simdjson::SUCCESS) {
    why = "expected a JSON object";
    return false;
  }
  std::vector<std::string_view> seen;
  for (auto f : obj) {
    for (auto s : seen)
      if (s == f.key) {
        why = fmt::format("{}: duplicate key", f.key);
        return false;
      }
    seen.push_back(f.key);
    std::string e = fn(f.key, f.value);
    if (!e.empty()) {
      why = fmt::format("{}: {}", f.key, e);
      return false;
    }
  }
  return true;
}

std::string get_int(element v, int64_t lo, int64_t hi, int64_t& out) {
  int64_t x = 0;
  if (v.get(x) != simdjson::SUCCESS || x < lo || x > hi) return fmt::format("expected an integer {}..{}", lo, hi);
  out = x;
  return {};
}

}  // namespace

bool parse_key(std::string_view prefix, std::string_view key, Key& out, std::string& why) {
  if (key.substr(0, prefix.size()) != prefix) {
    why = "outside the prefix";
    return false;
  }
  auto parts = split(key.substr(prefix.size()));
  out = Key{};
  if (parts.empty() || parts[0] != "upstreams" || (parts.size() != 2 && parts.size() != 4 && parts.size() != 6) ||
      (parts.size() >= 4 && parts[2] != "pools") || (parts.size() == 6 && parts[4] != "hosts")) {
    why = "not a key of the gw schema (upstreams/U[/pools/P[/hosts/H]])";
    return false;
  }
  if (!check("upstream name", parts[1], why)) return false;
  out.upstream = parts[1];
  out.kind = KeyKind::upstream;
  if (parts.size() >= 4) {
    if (!check("pool id", parts[3], why)) return false;
    out.pool = parts[3];
    out.kind = KeyKind::pool;
  }
  if (parts.size() == 6) {
    if (!check("host id", parts[5], why)) return false;
    out.host = parts[5];
    out.kind = KeyKind::host;
  }
  return true;
}

std::string encode_pool(const PoolSpec& p) {
  return fmt::format("{{\"priority\": {}, \"method\": \"{}\"}}", p.priority, shm::method_name(p.method));
}

std::string encode_host(const HostSpec& h) {
  return fmt::format("{{\"address\": \"{}\", \"weight\": {}, \"down\": {}}}", h.addr.to_string(), h.weight,
                     h.down ? "true" : "false");
}

bool decode_pool(std::string_view json, PoolSpec& out, std::string& why) {
  out = PoolSpec{};
  return each_field(json, why, [&](std::string_view k, element v) -> std::string {
    if (k == "priority") {
      int64_t x = 0;
      auto e = get_int(v, -1000000, 1000000, x);
      out.priority = static_cast<int32_t>(x);
      return e;
    }
    if (k == "method") {
      std::string_view m;
      if (v.get(m) != simdjson::SUCCESS || !shm::parse_method(m, out.method))
        return fmt::format("expected one of {}", shm::method_names());
      return {};
    }
    return "unknown key";
  });
}

bool decode_host(std::string_view json, HostSpec& out, std::string& why) {
  out = HostSpec{};
  bool has_address = false;
  bool ok = each_field(json, why, [&](std::string_view k, element v) -> std::string {
    if (k == "address") {
      std::string_view a;
      std::string bad;
      if (v.get(a) != simdjson::SUCCESS) return "expected a string IP:PORT";
      if (!core::parse_host_address(a, out.addr, bad)) return fmt::format("bad address \"{}\": {}", a, bad);
      has_address = true;
      return {};
    }
    if (k == "weight") {
      int64_t x = 0;
      auto e = get_int(v, 0, shm::kMaxWeight, x);
      out.weight = static_cast<uint32_t>(x);
      return e;
    }
    if (k == "down") {
      bool b = false;
      if (v.get(b) != simdjson::SUCCESS) return "expected true or false";
      out.down = b;
      return {};
    }
    return "unknown key";
  });
  if (ok && !has_address) {
    why = "address: missing required key";
    return false;
  }
  return ok;
}

bool decode_upstream(std::string_view json, std::string& why) {
  return each_field(json, why, [](std::string_view, element) { return std::string("unknown key"); });
}

Model build_model(std::string_view prefix, const std::map<std::string, std::string>& kv,
                  std::vector<std::string>& warnings) {
  Model m;
  struct PendingHost {
    std::string key;
    Key k;
    HostSpec h;
  };
  std::vector<std::pair<std::string, Key>> pools;
  std::vector<PendingHost> hosts;
  // Upstream keys present whose value does not parse: the node keeps the
  // upstream as it has it, so its pools and hosts are not applied either (one
  // warning says so, not one per key claiming that the upstream key or the
  // pool key is missing).
  std::set<std::string>& held_upstreams = m.held_upstreams;
  for (const auto& [key, value] : kv) {
    Key k;
    std::string why;
    if (!parse_key(prefix, key, k, why)) {
      warnings.push_back(fmt::format("etcd key {} ignored: {}", key, why));
      continue;
    }
    if (k.kind == KeyKind::upstream) {
      // The value is reserved for later settings; it must be an object.
      if (!decode_upstream(value, why)) {
        warnings.push_back(fmt::format(
            "etcd key {} not applied: {}; the node keeps the upstream's pools and hosts as it has them", key, why));
        held_upstreams.insert(k.upstream);
      } else {
        m.upstreams[k.upstream] = true;
      }
    } else if (held_upstreams.count(k.upstream)) {
      continue;  // under an upstream key that does not parse (keys come sorted: it came first)
    } else if (k.kind == KeyKind::pool) {
      PoolSpec p;
      if (decode_pool(value, p, why)) {
        m.pools[{k.upstream, k.pool}] = p;
      } else {
        warnings.push_back(fmt::format("etcd key {} not applied: {}; the node keeps the pool as it has it", key, why));
        m.held_pools.insert({k.upstream, k.pool});
      }
    } else {
      HostSpec h;
      if (decode_host(value, h, why)) {
        hosts.push_back({key, k, h});
      } else {
        warnings.push_back(fmt::format("etcd key {} not applied: {}; the node keeps the host as it has it", key, why));
        m.held_hosts.insert({k.upstream, k.pool, k.host});
      }
    }
  }
  for (auto it = m.pools.begin(); it != m.pools.end();) {
    if (!m.upstreams.count(it->first.first)) {
      warnings.push_back(fmt::format("etcd key {} ignored: its upstream key {} is missing",
                                     pool_key(prefix, it->first.first, it->first.second),
                                     upstream_key(prefix, it->first.first)));
      it = m.pools.erase(it);
    } else {
      ++it;
    }
  }
  std::erase_if(m.held_pools, [&](const auto& p) { return !m.upstreams.count(p.first); });
  std::erase_if(m.held_hosts, [&](const auto& h) {
    return !m.pools.count({std::get<0>(h), std::get<1>(h)}) && !m.held_pools.count({std::get<0>(h), std::get<1>(h)});
  });
  for (auto& ph : hosts) {
    if (!m.pools.count({ph.k.upstream, ph.k.pool}) && !m.held_pools.count({ph.k.upstream, ph.k.pool})) {
      warnings.push_back(fmt::format("etcd key {} ignored: its pool key {} is missing", ph.key,
                                     pool_key(prefix, ph.k.upstream, ph.k.pool)));
      continue;
    }
    m.hosts[{ph.k.upstream, ph.k.pool, ph.k.host}] = ph.h;
  }
  return m;
}

Model only_upstream(const Model& m, const std::string& u) {
  Model one;
  if (auto it = m.upstreams.find(u); it != m.upstreams.end()) one.upstreams.insert(*it);
  for (const auto& [k, p] : m.pools)
    if (k.first == u) one.pools.emplace(k, p);
  for (const auto& [k, h] : m.hosts)
    if (std::get<0>(k) == u) one.hosts.emplace(k, h);
  for (const auto& k : m.held_pools)
    if (k.first == u) one.held_pools.insert(k);
  for (const auto& k : m.held_hosts)
    if (std::get<0>(k) == u) one.held_hosts.insert(k);
  if (m.held_upstreams.count(u)) one.held_upstreams.insert(u);
  return one;
}

}  // namespace gw::cluster
