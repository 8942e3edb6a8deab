#include "gw/process/master.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "gw/api/hash.hpp"
#include "gw/api/limit_table.hpp"
#include "gw/balance/chash.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/fd.hpp"
#include "gw/core/log.hpp"
#include "gw/core/text.hpp"
#include "gw/net/socket.hpp"
#include "gw/net/uring.hpp"
#include "gw/process/admin.hpp"
#include "gw/process/checker.hpp"
#include "gw/process/logger.hpp"
#include "gw/process/sync.hpp"
#include "gw/process/worker.hpp"
#include "gw/shm/cluster.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/state_file.hpp"
#include "gw/shm/writer.hpp"

namespace gw::process {
namespace {

bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

// True if the object exists and is empty or its first 8 bytes (the magic) are zero.
bool never_initialised(const std::string& name) {
  core::UniqueFd fd(::open(("/dev/shm/" + name).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  uint64_t magic = 1;
  ssize_t n = ::pread(fd.get(), &magic, sizeof(magic), 0);
  return n == 0 || (n == static_cast<ssize_t>(sizeof(magic)) && magic == 0);
}

// The ABI version of a gw segment that another build made (gw's magic, a
// different ABI), else 0 (this build's, not gw's, or unreadable).
uint32_t other_build_abi(const std::string& name) {
  core::UniqueFd fd(::open(("/dev/shm/" + name).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return 0;
  struct {
    uint64_t magic;
    uint32_t abi;
  } head{};
  if (::pread(fd.get(), &head, sizeof(head), 0) != static_cast<ssize_t>(sizeof(head))) return 0;
  return head.magic == shm::kMagic && head.abi != shm::kAbiVersion ? head.abi : 0;
}

// "shm.max_hosts 4096 -> 8192, ..." for each capacity that differs: the
// setting an operator has to put back (or restart for).
std::string caps_change(const shm::Caps& from, const shm::Caps& to) {
  std::string out;
  auto one = [&](const char* key, uint32_t a, uint32_t b) {
    if (a != b) out += fmt::format("{}shm.{} {} -> {}", out.empty() ? "" : ", ", key, a, b);
  };
  one("max_upstreams", from.max_upstreams, to.max_upstreams);
  one("max_pools", from.max_pools, to.max_pools);
  one("max_hosts", from.max_hosts, to.max_hosts);
  one("max_routes", from.max_routes, to.max_routes);
  one("max_rules", from.max_rules, to.max_rules);
  one("max_rule_cidrs", from.max_rule_cidrs, to.max_rule_cidrs);
  one("max_consumers", from.max_consumers, to.max_consumers);
  one("max_limit_keys", from.max_limit_keys, to.max_limit_keys);
  return out;
}

// Why the segment `seg` does not fit capacities `caps` and `rows` worker rows.
std::string segment_misfit(const shm::Segment& seg, const shm::Caps& caps, uint32_t rows) {
  if (!(seg.caps() == caps))
    return fmt::format("has other capacities than the config ({})", caps_change(seg.caps(), caps));
  return fmt::format("has {} worker rows, {} workers need {} (two per worker)", seg.stat_workers(), rows / 2, rows);
}

// Table::add_host() for a pool being filled: the duplicate check against the
// hosts added to it so far is done with `ids` (the pool's ids so far), not
// with add_host()'s walk over every host of the table, which made a start
// with 20000 hosts take seconds (hosts squared).
int add_new_host(shm::Table& t, int pool, std::unordered_set<std::string_view>& ids, std::string_view id,
                 const core::SockAddr& addr, uint32_t weight) {
  if (!ids.insert(id).second)
    throw shm::TableError(fmt::format("host {}/{} already exists", t.pool_path(pool), id),
                          shm::TableError::Kind::exists);
  return t.add_unique_host(pool, id, addr, weight);
}

// Adds the pools and hosts of `su` under upstream `ui` of `t`.
void add_state_upstream(shm::Table& t, int ui, const shm::StateUpstream& su) {
  for (const auto& sp : su.pools) {
    int pi = t.add_pool(ui, sp.id, sp.priority, sp.method);
    std::unordered_set<std::string_view> ids;
    for (const auto& sh : sp.hosts) {
      int hi = add_new_host(t, pi, ids, sh.id, sh.addr, sh.weight);
      t.hosts()[static_cast<size_t>(hi)].admin_down = sh.down ? 1 : 0;
    }
  }
}

// How the config's pools and hosts of upstream `u` differ from the runtime
// state `su` that replaces them ("" if they do not): an operator who edits the
// config and reloads expects the edit, and gets the runtime state (gwctl
// changes win), so the difference is said, at most kMax items of it.
std::string upstream_drift(const config::UpstreamConf& u, const shm::StateUpstream& su) {
  constexpr size_t kMax = 6;
  std::vector<std::string> d;
  for (const auto& p : u.pools) {
    const shm::StatePool* sp = nullptr;
    for (const auto& x : su.pools)
      if (x.id == p.id) sp = &x;
    if (!sp) {
      d.push_back(fmt::format("pool \"{}\" is in the config only", p.id));
      continue;
    }
    if (sp->priority != p.priority)
      d.push_back(
          fmt::format("pool \"{}\" has priority {} in the config, {} at runtime", p.id, p.priority, sp->priority));
    if (sp->method != p.method)
      d.push_back(
          fmt::format("pool \"{}\" has method {} in the config{}, {} at runtime", p.id, shm::method_name(p.method),
                      p.method_set                           ? ""
                      : p.method == shm::Method::round_robin ? " (the default)"
                                                             : " (the default for an upstream of a frame listener)",
                      shm::method_name(sp->method)));
    // (By id: a walk over the other list for each host cost hosts squared,
    // 400 million compares for a config and a state file of 20000 hosts.)
    std::unordered_map<std::string_view, const shm::StateHost*> runtime;
    for (const auto& x : sp->hosts) runtime[x.id] = &x;
    std::unordered_set<std::string_view> configured;
    for (const auto& h : p.hosts) {
      configured.insert(h.id);
      const auto it = runtime.find(h.id);
      const shm::StateHost* sh = it == runtime.end() ? nullptr : it->second;
      if (!sh) {
        d.push_back(fmt::format("host \"{}/{}\" is in the config only", p.id, h.id));
        continue;
      }
      if (sh->addr.to_string() != h.address.to_string())
        d.push_back(fmt::format("host \"{}/{}\" has address {} in the config, {} at runtime", p.id, h.id,
                                h.address.to_string(), sh->addr.to_string()));
      if (sh->weight != h.weight)
        d.push_back(
            fmt::format("host \"{}/{}\" has weight {} in the config, {} at runtime", p.id, h.id, h.weight, sh->weight));
    }
    for (const auto& x : sp->hosts)
      if (!configured.contains(x.id)) d.push_back(fmt::format("host \"{}/{}\" is at runtime only", p.id, x.id));
  }
  for (const auto& x : su.pools) {
    bool in_config = false;
    for (const auto& p : u.pools) in_config |= p.id == x.id;
    if (!in_config) d.push_back(fmt::format("pool \"{}\" is at runtime only", x.id));
  }
  if (d.empty()) return {};
  std::string out =
      fmt::format("{}", fmt::join(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(std::min(d.size(), kMax)), "; "));
  if (d.size() > kMax) out += fmt::format("; and {} more", d.size() - kMax);
  return out;
}

// Whether a config rule and a runtime rule of the same id match the same
// requests and send them to the same upstream (the order of address blocks
// aside).
bool same_rule(const shm::RuleSpec& a, const shm::RuleSpec& b) {
  if (a.upstream != b.upstream || a.header_name != b.header_name || a.header_value != b.header_value ||
      a.cookie_name != b.cookie_name || a.cookie_value != b.cookie_value || a.percent_bp != b.percent_bp ||
      a.cidrs.size() != b.cidrs.size())
    return false;
  auto sorted = [](std::vector<core::Cidr> v) {
    std::sort(v.begin(), v.end(),
              [](const core::Cidr& x, const core::Cidr& y) { return std::memcmp(&x, &y, sizeof x) < 0; });
    return v;
  };
  return sorted(a.cidrs) == sorted(b.cidrs);
}

// The routing table of `cfg` with the runtime changes of `src` (null: the
// config alone): an upstream the runtime state lists keeps its pools and
// hosts from there (hosts added, removed or downed with gwctl stay so), the
// same for route rules and key-auth consumers; the rest comes from the config.
// Used at start (src: the segment or the state file) and by a reload (src:
// the live table). What the config says and the runtime state overrides, or
// drops, goes to `warnings` (the caller logs those of the table it publishes).
// Throws shm::TableError if it does not fit the capacities.
shm::Table merge_runtime(const config::Config& cfg, const shm::State* src, std::vector<std::string>& warnings,
                         bool* dropped = nullptr) {
  shm::Table merged(cfg.shm.caps);
  auto drop = [&](std::string why) {
    warnings.push_back(std::move(why));
    if (dropped) *dropped = true;
  };
  for (const auto& u : cfg.upstreams) {
    int ui = merged.add_upstream(config::upstream_record(u));
    const shm::StateUpstream* su = nullptr;
    if (src)
      for (const auto& x : src->upstreams)
        if (x.name == u.name) su = &x;
    if (su) {
      add_state_upstream(merged, ui, *su);
      // A clustered node takes them from etcd (its sync process lists it
      // again): local changes are refused there and the state file does not
      // decide them.
      if (std::string drift = upstream_drift(u, *su); !drift.empty())
        warnings.push_back(
            cfg.cluster.enabled
                ? fmt::format("upstream \"{}\": its pools and hosts come from etcd (cluster; from the runtime state "
                              "until etcd has the upstream), which differs from the config: {}. Make such changes with "
                              "gwctl --etcd",
                              u.name, drift)
                : fmt::format("upstream \"{}\": its pools and hosts come from the runtime state (gwctl changes win "
                              "over the config), which differs from the config: {}. Make such changes with gwctl, or "
                              "stop gwd and delete the state file and /dev/shm/{} to start over from the config",
                              u.name, drift, cfg.shm.name));
    } else {
      for (const auto& p : u.pools) {
        int pi = merged.add_pool(ui, p.id, p.priority, p.method);
        std::unordered_set<std::string_view> ids;
        for (const auto& h : p.hosts) add_new_host(merged, pi, ids, h.id, h.address, h.weight);
      }
    }
  }
  if (src) {
    for (const auto& x : src->upstreams)
      if (merged.find_upstream(x.name) < 0)
        drop(fmt::format("upstream \"{}\" from the runtime state is not in the config; its pools and hosts are dropped",
                         x.name));
  }
  // Routes come from the config; their rules from the runtime state when it
  // lists the route (a route whose rules were all removed stays empty), else
  // from the config.
  const bool state_rules = src && src->has_routes;
  for (const auto& l : cfg.listeners)
    for (const auto& r : l.routes) {
      int ri = merged.add_route(l.name, r.name);
      const shm::StateRoute* sr = state_rules ? src->find_route(l.name, r.name) : nullptr;
      if (sr)
        for (const auto& cr : r.rules) {
          const shm::RuleSpec* kept = nullptr;
          for (const auto& x : sr->rules)
            if (x.id == cr.id) kept = &x;
          if (!kept)
            warnings.push_back(fmt::format(
                "rule {}/{}/{} is in the config only: the route's rules come from the runtime state (gwctl changes "
                "win over the config); add it with gwctl add rule",
                l.name, r.name, cr.id));
          else if (!same_rule(cr, *kept))
            warnings.push_back(fmt::format(
                "rule {}/{}/{} is {} in the config, {} at runtime: the route's rules come from the runtime state "
                "(gwctl changes win over the config); change it with gwctl set rule",
                l.name, r.name, cr.id, shm::describe_rule(cr), shm::describe_rule(*kept)));
        }
      for (const auto& rule : sr ? sr->rules : r.rules) {
        if (merged.find_upstream(rule.upstream) < 0) {
          std::string why =
              fmt::format("rule {}/{}/{} sends to upstream \"{}\", which is not in the config; the rule is dropped",
                          l.name, r.name, rule.id, rule.upstream);
          if (sr) drop(std::move(why));  // a runtime rule (a config one is still in the config)
          else warnings.push_back(std::move(why));
          continue;
        }
        merged.add_rule(ri, rule);
      }
    }
  if (state_rules)
    for (const auto& x : src->routes)
      if (merged.find_route(x.listener, x.name) < 0 && !x.rules.empty())
        drop(fmt::format("route {}/{} from the runtime state is not in the config; its {} rule(s) are dropped",
                         x.listener, x.name, x.rules.size()));

  // key-auth consumers: from the runtime state when it lists them (a consumer
  // removed with gwctl stays removed), else from the config.
  if (src && src->has_consumers) {
    for (const auto& sc : src->consumers) merged.add_consumer(sc.name, sc.key_sha256);
    for (const auto& cc : cfg.consumers) {
      const shm::StateConsumer* kept = nullptr;
      for (const auto& sc : src->consumers)
        if (sc.name == cc.name) kept = &sc;
      if (!kept) {
        warnings.push_back(fmt::format(
            "consumer \"{}\" is in the config only: consumers come from the runtime state (gwctl changes win over "
            "the config); add it with gwctl add consumer",
            cc.name));
        continue;
      }
      // A rotated key: the old one keeps working until gwctl replaces it,
      // which the operator must hear of (the keys are never printed).
      uint8_t digest[shm::kSha256Len];
      if (!api::sha256(cc.key, digest)) throw std::runtime_error("SHA-256 failed");
      if (std::memcmp(digest, kept->key_sha256, sizeof digest) != 0)
        warnings.push_back(fmt::format(
            "consumer \"{}\" has another key in the config than at runtime, where the runtime's key stays in force: "
            "consumers come from the runtime state (gwctl changes win over the config); replace it with gwctl "
            "remove consumer and gwctl add consumer",
            cc.name));
    }
  } else {
    for (const auto& cc : cfg.consumers) {
      uint8_t digest[shm::kSha256Len];
      if (!api::sha256(cc.key, digest)) throw std::runtime_error("SHA-256 failed");
      merged.add_consumer(cc.name, digest);
    }
  }
  return merged;
}

// A start or reload whose config drops part of the runtime state (an
// upstream, or a route's rules, it no longer has) keeps that state first, in
// a file beside the state file named for its generation: a typo in an
// upstream's name must not take every gwctl change made to it for good (the
// state file is rewritten without them at once). `json` is the runtime state
// before the change, as the state file holds it. Adds the warning that says
// where it is and how to get it back.
void keep_dropped_state(const config::Config& cfg, const std::string& json, uint64_t generation,
                        std::vector<std::string>& warnings) {
  if (cfg.state_file.empty()) return;  // nothing is persisted: nowhere to keep it either
  const std::string path = fmt::format("{}.before-{}", cfg.state_file, generation);
  shm::write_state_file(path, json, &cfg.state_file);  // (as private as the state file)
  warnings.push_back(fmt::format(
      "the runtime state as it was before (generation {}) is kept in {}: to have what was dropped back, stop gwd, "
      "fix the config, move that file to {} and delete /dev/shm/{} (changes made since are lost then)",
      generation, path, cfg.state_file, cfg.shm.name));
}

// merge_runtime(), but a table that does not fit the config's capacities is
// an error that names `src_name` (where the runtime state came from) and,
// for each capacity it exceeds, how many it needs: "the table from state
// file X needs 64 hosts, more than shm.max_hosts = 32" (its upstreams with
// those of the config it lacks).
shm::Table merge_runtime_named(const config::Config& cfg, const shm::State* src, const std::string& src_name,
                               std::vector<std::string>& warnings, bool* dropped = nullptr) {
  try {
    return merge_runtime(cfg, src, warnings, dropped);
  } catch (const shm::TableError& e) {
    if (e.kind() != shm::TableError::Kind::full || !src) throw;
    // Merged again with room for all of both, to count what it needs.
    config::Config roomy = cfg;
    shm::Caps& c = roomy.shm.caps;
    for (const auto& u : cfg.upstreams)
      for (const auto& p : u.pools) ++c.max_pools, c.max_hosts += static_cast<uint32_t>(p.hosts.size());
    for (const auto& su : src->upstreams)
      for (const auto& sp : su.pools) ++c.max_pools, c.max_hosts += static_cast<uint32_t>(sp.hosts.size());
    for (const auto& l : cfg.listeners)
      for (const auto& r : l.routes)
        for (const auto& rule : r.rules) ++c.max_rules, c.max_rule_cidrs += static_cast<uint32_t>(rule.cidrs.size());
    for (const auto& sr : src->routes)
      for (const auto& rule : sr.rules) ++c.max_rules, c.max_rule_cidrs += static_cast<uint32_t>(rule.cidrs.size());
    c.max_consumers += static_cast<uint32_t>(cfg.consumers.size() + src->consumers.size());
    std::vector<std::string> ignored;  // (the same as the failed merge's)
    const shm::Table all = merge_runtime(roomy, src, ignored);
    const shm::Caps& have = cfg.shm.caps;
    std::string over;
    auto check = [&](size_t need, uint32_t cap, const char* what, const char* key) {
      if (need > cap)
        over += fmt::format("{}{} {}, more than shm.{} = {}", over.empty() ? "" : ", ", need, what, key, cap);
    };
    check(all.pools().size(), have.max_pools, "pools", "max_pools");
    check(all.hosts().size(), have.max_hosts, "hosts", "max_hosts");
    check(all.rules().size(), have.max_rules, "rules", "max_rules");
    check(all.cidrs().size(), have.max_rule_cidrs, "address blocks", "max_rule_cidrs");
    check(all.consumers().size(), have.max_consumers, "consumers", "max_consumers");
    if (over.empty()) throw;
    throw shm::TableError(fmt::format("the table from {} needs {}", src_name, over), shm::TableError::Kind::full);
  }
}

// Hosts of `merged` that `live` has too (same upstream, pool and id) keep
// their runtime slots there: their counters, health and connections go on.
// So do rules (same listener, route and id): their hit counters.
void keep_runtime_slots(shm::Table& merged, const shm::Table& live) {
  // The live hosts by (pool, id): a find_host() walk over them for each host
  // made a restart with 20000 hosts take seconds.
  std::map<std::pair<int, std::string_view>, int> live_hosts;
  for (size_t i = 0; i < live.hosts().size(); ++i)
    live_hosts.emplace(std::pair<int, std::string_view>(live.hosts()[i].pool, shm::name_of(live.hosts()[i].id)),
                       static_cast<int>(i));
  for (auto& h : merged.hosts()) {
    int u = live.find_upstream(shm::name_of(merged.upstreams()[merged.pools()[h.pool].upstream].name));
    int p = u < 0 ? -1 : live.find_pool(u, shm::name_of(merged.pools()[h.pool].id));
    const auto it = p < 0 ? live_hosts.end() : live_hosts.find({p, shm::name_of(h.id)});
    const int o = it == live_hosts.end() ? -1 : it->second;
    if (o >= 0) {
      h.slot = live.hosts()[static_cast<size_t>(o)].slot;
      h.tag = live.hosts()[static_cast<size_t>(o)].tag;
    }
  }
  for (auto& r : merged.rules()) {
    const shm::RouteRecord& rt = merged.routes()[r.route];
    const int lr = live.find_route(shm::name_of(rt.listener), shm::name_of(rt.name));
    const int o = lr < 0 ? -1 : live.find_rule(lr, shm::name_of(r.id));
    if (o >= 0) {
      r.stat_slot = live.rules()[static_cast<size_t>(o)].stat_slot;
      r.stat_tag = live.rules()[static_cast<size_t>(o)].stat_tag;
    }
  }
}

}  // namespace

void publish_listeners(const shm::Segment& seg, config::Config& cfg, bool keep, ListenerRowTimes& free_at,
                       uint64_t now_ms, uint64_t old_gone_ms) {
  constexpr uint32_t kNoRow = ~0u;
  shm::SegmentHeader& hdr = seg.header();
  std::array<bool, shm::kMaxListeners> old_row{};  // rows the running config's workers count in
  std::array<bool, shm::kMaxListeners> taken{};
  // (A list left mid-write by a master that died there keeps no row: the new
  // listeners' counters start at 0.)
  shm::ListenerList old;
  if (keep && !shm::read_listeners(hdr, old))
    GW_LOG_WARN("the listener list in shm was left mid-write; listener counters start again at 0");
  const size_t n = std::min<size_t>(cfg.listeners.size(), shm::kMaxListeners);
  std::vector<uint32_t> row(n, kNoRow);
  for (uint32_t j = 0; j < old.n; ++j) {
    const uint32_t r = shm::listener_stats_row(old.items[j], j);
    old_row[r] = true;
    for (size_t i = 0; i < n; ++i)
      if (row[i] == kNoRow && !taken[r] && cfg.listeners[i].name == shm::name_of(old.items[j].name)) {
        row[i] = r;  // the same listener: its counters go on
        taken[r] = true;
        break;
      }
  }
  // A row given up now is free again once the old workers that count in it
  // have gone (they drain up to worker_shutdown_timeout_ms).
  for (uint32_t r = 0; r < shm::kMaxListeners; ++r)
    if (old_row[r] && !taken[r]) free_at[r] = old_gone_ms;
  for (size_t i = 0; i < n; ++i) {
    if (row[i] != kNoRow) continue;
    // A new listener: a row no worker counts in, else one whose workers may
    // still be draining (more than 64 listeners changed within a drain).
    for (int pass = 0; pass < 3 && row[i] == kNoRow; ++pass)
      for (uint32_t r = 0; r < shm::kMaxListeners; ++r)
        if (!taken[r] && (pass == 2 || !old_row[r]) && (pass >= 1 || free_at[r] <= now_ms)) {
          row[i] = r;
          break;
        }
    taken[row[i]] = true;
    shm::clear_listener_row(seg, row[i]);  // starts at 0, not at what a removed listener left
  }
  for (size_t i = 0; i < n; ++i) cfg.listeners[i].stats_row = row[i];
  write_listener_header(hdr, cfg);
}

void write_listener_header(shm::SegmentHeader& hdr, const config::Config& cfg) {
  // The listeners' addresses for `gwctl check`, and their rows for a binary upgrade.
  const size_t n = std::min<size_t>(cfg.listeners.size(), shm::kMaxListeners);
  shm::ListenerList list;
  list.n = static_cast<uint32_t>(n);
  for (uint32_t i = 0; i < n; ++i) {
    shm::set_name(list.items[i].name, cfg.listeners[i].name);
    list.items[i].addr = cfg.listeners[i].listen;
    list.items[i].stats_row = cfg.listeners[i].stats_row + 1;
  }
  shm::write_listeners(hdr, list);
}

namespace {

// The etcd sync state starts over with each master (and each reload: the
// sync process is started again). The counters (reconnects, relists,
// applied) start at 0 with a master that starts on its own only: a reload, a
// binary upgrade and a failed one's undo keep them, so they never go back
// while gwd runs (Prometheus counters; a respawned sync process counts on too).
void reset_cluster_state(shm::SegmentHeader& hdr, const config::Config& cfg, bool keep_counters) {
  auto& cl = hdr.cluster;
  cl.sync_pid.store(0);
  cl.revision.store(0);
  cl.contact_ms.store(0);
  if (!keep_counters) {
    cl.reconnects.store(0);
    cl.relists.store(0);
    cl.applied.store(0);
  }
  shm::set_cluster_text(cl, cfg.cluster.enabled ? cfg.cluster.etcd[0] : "", "");
  cl.since_ms.store(core::wall_ms());
  cl.state.store(cfg.cluster.enabled ? shm::kClusterConnecting : shm::kClusterOff, std::memory_order_release);
}

// The runtime state a start takes (prepare_segment, check_runtime_state): the
// segment's table if it is as new as the state file or newer, else the file.
enum class Source { config, segment, file };
Source runtime_source(const shm::Table* live, const shm::State* file_state) {
  const uint64_t seg_gen = live ? live->header().generation : 0;
  if (live && seg_gen > 0 && seg_gen >= (file_state ? file_state->generation : 0)) return Source::segment;
  return file_state ? Source::file : Source::config;
}

// Why a reload of the master running on `seg` (with `state_file` and
// `workers`) into `next`, of the same shm.name, is refused (a restart is
// needed), or "".
std::string reload_refusal(const shm::Segment& seg, const std::string& state_file, int workers,
                           const config::Config& next) {
  if (!(next.shm.caps == seg.caps()))
    return fmt::format("the shm capacities changed ({})", caps_change(seg.caps(), next.shm.caps));
  if (next.state_file != state_file)
    return fmt::format("state_file changed (\"{}\" -> \"{}\")", state_file, next.state_file);
  const uint32_t rows = seg.stat_workers();
  if (static_cast<uint32_t>(next.workers + workers) > rows)
    return fmt::format("{} workers: the shm segment has worker rows for {} running + new workers, {} are running",
                       next.workers, rows, workers);
  return {};
}

}  // namespace

uint32_t stat_rows_for(int workers) noexcept {
  return static_cast<uint32_t>(std::min<int64_t>(int64_t{workers} * 2, shm::kMaxWorkers));
}

// Why a binary upgrade finds too few free worker rows: the running master's
// reload or the master it replaced (an upgrade before) still drains workers.
constexpr const char* kRowsHeldWhy =
    "(workers of an earlier reload, or of the master the running one replaced, still draining?)";

shm::Segment prepare_segment(config::Config& cfg, pid_t upgrade_from, ListenerRowTimes* row_free_at,
                             const std::vector<uint32_t>& old_rows) {
  const std::string& name = cfg.shm.name;
  shm::Segment seg;
  std::unique_ptr<shm::Table> seg_table;
  if (shm_exists(name) && never_initialised(name)) {
    // A creation that died before its header was complete (magic still 0):
    // nothing was ever published in it. Only a gwd creates segments, and the
    // instance lock says none is running, so it is safe to start over.
    GW_LOG_WARN("shm \"{}\" was never fully created (an earlier start died); recreating it", name);
    shm::Segment::unlink(name);
  }
  if (const uint32_t abi = upgrade_from > 0 ? 0 : other_build_abi(name); abi != 0) {
    // Left by a gwd of another build (an upgrade with a stop and a start): no
    // gwd runs on it (this one holds the instance lock), and its layout is not
    // this build's. Runtime changes come back from the state file, if any.
    GW_LOG_WARN(
        "shm \"{}\" was made by another gw build (ABI {}, this one speaks {}) and no gwd runs on it; "
        "recreating it{}",
        name, abi, shm::kAbiVersion,
        cfg.state_file.empty() ? " (no state_file: gwctl changes made since the config are not kept)"
                               : fmt::format(" (gwctl changes come back from {})", cfg.state_file));
    shm::Segment::unlink(name);
  }
  if (shm_exists(name)) {
    seg = shm::Segment::attach(name);  // throws a clear error for garbage or another ABI
    const pid_t owner = seg.header().master_pid.load();
    if (seg.master_alive() && owner != ::getpid() && !(upgrade_from > 0 && owner == upgrade_from))
      throw std::runtime_error(
          fmt::format("another gwd (pid {}) is running with shm \"{}\"; stop it first, or give this "
                      "one another shm.name",
                      seg.header().master_pid.load(), name));
    seg_table = std::make_unique<shm::Table>(seg.caps());
    const char* refused = nullptr;
    shm::read_published(seg, *seg_table, &refused);
    if (refused && upgrade_from > 0)
      // The old master serves on with it: it is not this one's to remove.
      throw std::runtime_error(
          fmt::format("binary upgrade: the running shm segment \"{}\" holds an inconsistent routing table ({}); a "
                      "restart is needed",
                      name, refused));
    if (upgrade_from > 0) {
      // As a reload refuses it: the new master would take its table from
      // the other file (a newer one there dropped the live changes), and
      // name it in the segment, where a failed upgrade left it for gwctl to
      // persist to while the old master read its own.
      const auto& hdr = seg.header();
      const std::string running(hdr.state_file, ::strnlen(hdr.state_file, sizeof(hdr.state_file)));
      if (running != cfg.state_file)
        throw std::runtime_error(fmt::format(
            "binary upgrade: state_file changed (\"{}\" -> \"{}\"), which a reload refuses too; a restart is "
            "needed for that",
            running, cfg.state_file));
    }
    if (refused) {
      // Not a table any gw writer publishes: start over from the state file
      // and the config, as for a segment of another build.
      GW_LOG_WARN("shm \"{}\" holds an inconsistent routing table ({}); recreating it", name, refused);
      seg_table.reset();
      seg = shm::Segment();
      shm::Segment::unlink(name);
    }
  }

  if (!cfg.state_file.empty()) {
    // Like nginx's temp paths: create the directory if it is missing.
    std::filesystem::path dir = std::filesystem::path(cfg.state_file).parent_path();
    std::error_code ec;
    // The directories this start makes, deepest first: each one's entry in
    // its parent is made durable below, or a power cut after the first
    // acknowledged gwctl change could take the directory, and the state file
    // in it, away (the state file's own fsyncs cover only its directory).
    std::vector<std::filesystem::path> made;
    for (auto p = dir; !p.empty() && !std::filesystem::exists(p, ec); p = p.parent_path()) {
      made.push_back(p);
      if (p == p.parent_path()) break;
    }
    std::filesystem::create_directories(dir, ec);
    if (ec || ::access(dir.c_str(), W_OK) != 0)
      throw std::runtime_error(fmt::format("state_file directory {} is not writable: {}", dir.string(),
                                           ec ? ec.message() : std::strerror(errno)));
    for (const auto& p : made) {
      const auto parent = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
      core::UniqueFd dfd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!dfd || ::fsync(dfd.get()) != 0)
        throw std::runtime_error(fmt::format("state_file directory {}: cannot sync {}: {}", dir.string(),
                                             parent.string(), std::strerror(errno)));
    }
    // What writers killed while writing it left (gwctl SIGKILLed mid-change):
    // a whole copy of the state each, never removed, until the disk is full.
    if (const size_t n = shm::remove_stale_temp_files(cfg.state_file))
      GW_LOG_INFO("removed {} temporary file(s) {}.tmp.PID left by writers that were killed", n, cfg.state_file);
  }

  // The runtime source: whichever of segment and state file is newer. A state
  // file newer than the segment means the segment is gone (a reboot) or was
  // made again, so the file holds the truth. (A file that a writer stopped
  // before its publish left ahead of a live segment is put back by the next
  // writer, Writer::repair, before this runs under the lock below.)
  Source source = Source::config;
  std::vector<std::string> merge_warnings;  // of the last plan: logged once it is published
  bool dropped = false;                     // the last plan drops part of the runtime state
  const shm::Table* plan_live = nullptr;    // its source, when that is a segment's table
  auto plan = [&](const shm::Table* live, const shm::State* file_state) {
    source = runtime_source(live, file_state);
    plan_live = live;
    const shm::State src = source == Source::segment ? shm::state_from_table(*live)
                           : file_state              ? *file_state
                                                     : shm::State{};
    merge_warnings.clear();
    dropped = false;
    return merge_runtime_named(cfg, source == Source::config ? nullptr : &src,
                               source == Source::segment ? fmt::format("shm segment \"{}\"", name)
                                                         : fmt::format("state file {}", cfg.state_file),
                               merge_warnings, &dropped);
  };
  shm::State state;
  bool have_state = !cfg.state_file.empty() && shm::read_state_file(cfg.state_file, state);
  uint64_t base_gen = std::max(seg_table ? seg_table->header().generation : 0, state.generation);
  shm::Table merged = plan(seg_table.get(), have_state ? &state : nullptr);

  // The stats matrices have a row per worker, twice over: a reload starts a new
  // generation while the old one drains, each in rows of its own. A segment
  // made with fewer rows is made again.
  const uint32_t stat_workers = stat_rows_for(cfg.workers);
  bool reuse = seg.valid() && seg.caps() == cfg.shm.caps && seg.stat_workers() >= stat_workers;
  if (upgrade_from > 0 && !reuse)
    throw std::runtime_error(
        fmt::format("binary upgrade: the running shm segment \"{}\" {}; a restart is needed", name,
                    !seg.valid() ? "is missing" : segment_misfit(seg, cfg.shm.caps, stat_workers)));
  // A start killed between retiring the segment and its unlink (below) left it
  // retired; this start uses it again.
  if (reuse && seg.header().retired.load() != 0) shm::Writer(seg).set_retired(false);
  if (seg.valid() && !reuse) {
    // A gwctl that attached before this start may be committing into the old
    // segment (its change goes to the table and the state file read above):
    // retire it, which waits out a commit under way and refuses later ones,
    // then read both again. Undone if the table no longer fits.
    shm::Writer(seg).set_retired(true);
    try {
      state = shm::State{};
      have_state = !cfg.state_file.empty() && shm::read_state_file(cfg.state_file, state);
      shm::read_published(seg, *seg_table);
      base_gen = std::max(seg_table->header().generation, state.generation);
      merged = plan(seg_table.get(), have_state ? &state : nullptr);
    } catch (...) {
      shm::Writer(seg).set_retired(false);
      throw;
    }
    GW_LOG_INFO("shm \"{}\" {}; recreating it", name, segment_misfit(seg, cfg.shm.caps, stat_workers));
    seg = shm::Segment();
    shm::Segment::unlink(name);
  }
  if (!reuse) seg = shm::Segment::create(name, cfg.shm.caps, stat_workers);
  if (upgrade_from > 0) {
    // The rows the old master's workers leave free (Master::run takes them):
    // too few is a failure to find now, before this config is published.
    uint32_t free = 0;
    for (uint32_t r = 0; r < seg.stat_workers(); ++r) {
      const pid_t pid = seg.worker(r).pid.load(std::memory_order_acquire);
      const bool old = std::find(old_rows.begin(), old_rows.end(), r) != old_rows.end();
      free += !old && !(pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH));
    }
    if (free < static_cast<uint32_t>(cfg.workers))
      throw std::runtime_error(
          fmt::format("binary upgrade: {} free worker row(s) in the shm segment, {} needed {}; a "
                      "restart is needed, or retry later",
                      free, cfg.workers, kRowsHeldWhy));
  }

  auto& hdr = seg.header();
  for (uint32_t w = 0; w < shm::kMaxWorkers; ++w) {
    // A binary upgrade: the old master's workers run on in their rows (and
    // one in its respawn back-off comes back to its own).
    const pid_t pid = seg.worker(w).pid.load();
    if (upgrade_from > 0 && pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH)) continue;
    if (upgrade_from > 0 && std::find(old_rows.begin(), old_rows.end(), w) != old_rows.end()) continue;
    seg.worker(w).pid.store(0);
    seg.worker(w).flags.store(0);
    shm::clear_worker_counters(seg, w);  // no worker of a previous run is alive
  }
  if (upgrade_from == 0) {
    api::LimitTable::reset_conns(seg);  // their connections are gone too
    shm::clear_listener_stats(seg);     // listener rows are by config index: this config's start at 0
  }
  // For `gwctl check`: how many workers should run, and where to connect.
  hdr.workers.store(static_cast<uint32_t>(cfg.workers));
  ListenerRowTimes free_at{};
  // A binary upgrade: the old master's workers count in the rows of its
  // listeners until it quits, so rows it gives up stay out of use.
  const uint64_t now_ms = core::monotonic_ms();
  publish_listeners(seg, cfg, upgrade_from != 0, free_at, now_ms, upgrade_from != 0 ? UINT64_MAX : now_ms);
  if (row_free_at) *row_free_at = free_at;
  reset_cluster_state(hdr, cfg, upgrade_from != 0);

  const char* what = "the config";
  shm::Writer writer(seg);
  uint64_t gen = 0;
  try {
    gen = writer.commit([&](shm::Table& t, std::vector<std::string>& events) {
      // The paths under the writer lock: every writer's commit persists to the
      // state file the header names, and one reading it while it is rewritten
      // could find it empty (its change not persisted) or cut short. This
      // commit persists to the new one.
      std::memset(hdr.state_file, 0, sizeof(hdr.state_file));
      std::memcpy(hdr.state_file, cfg.state_file.data(), std::min(cfg.state_file.size(), sizeof(hdr.state_file) - 1));
      std::memset(hdr.config_file, 0, sizeof(hdr.config_file));
      std::memcpy(hdr.config_file, cfg.path.data(), std::min(cfg.path.size(), sizeof(hdr.config_file) - 1));
      if (reuse) {
        // Decided again from what is live now that the lock is ours: during a
        // binary upgrade the old master, its admin API and gwctl commit until
        // this moment, and a change made after the reads above must not be
        // copied over (nor its state file).
        shm::State now{};
        const bool have_now = !cfg.state_file.empty() && shm::read_state_file(cfg.state_file, now);
        merged = plan(&t, have_now ? &now : nullptr);
        base_gen = std::max(t.header().generation, now.generation);
        // Hosts keep their runtime slots (counters, health) only when the
        // segment itself is the source; otherwise they get fresh slots.
        if (source == Source::segment) keep_runtime_slots(merged, t);
      }
      what = source == Source::segment ? "the shm segment" : source == Source::file ? "the state file" : "the config";
      if (dropped && source != Source::config) {
        // (Under the writer lock: the state file is not rewritten meanwhile.)
        std::string before;
        if (source == Source::segment) {
          before = shm::state_to_json(*plan_live);
        } else {
          std::ifstream in(cfg.state_file, std::ios::binary);
          before.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
          if (!in.good() && !in.eof())
            throw std::runtime_error(fmt::format("state file {}: cannot read it again", cfg.state_file));
        }
        keep_dropped_state(cfg, before, base_gen, merge_warnings);
      }
      uint32_t next_tag = std::max(t.header().next_tag, 1u);
      std::memcpy(t.words(), merged.words(), t.bytes());
      t.header().generation = base_gen;
      t.header().next_tag = next_tag;
      events.push_back(fmt::format("gwd_started pid={}: {} upstream(s), {} pool(s), {} host(s) from {}", ::getpid(),
                                   t.upstreams().size(), t.pools().size(), t.hosts().size(), what));
      for (const auto& w : merge_warnings) events.push_back("config_not_applied: " + w);
    });
  } catch (const shm::StateFileError& e) {
    // A start makes no "change" an operator could try again: say what it means.
    throw std::runtime_error(fmt::format("{}; gwd cannot start without persisting its table", e.cause()));
  }
  GW_LOG_INFO("routing table generation {} from {} ({} host(s))", gen, what, merged.hosts().size());
  for (const auto& w : merge_warnings) GW_LOG_WARN("{}", w);
  return seg;
}

std::vector<std::string> check_runtime_state(const config::Config& cfg) {
  shm::State state;
  const bool have_state = !cfg.state_file.empty() && shm::read_state_file(cfg.state_file, state);
  // The segment a start reads (not one it makes again: never complete, of
  // another build, or holding an inconsistent table), attached as the start
  // attaches it. Without a state file it is the only runtime state.
  const std::string& name = cfg.shm.name;
  std::unique_ptr<shm::Table> live;
  std::string reload_warning;
  if (shm_exists(name) && !never_initialised(name) && other_build_abi(name) == 0) {
    const shm::Segment seg = shm::Segment::attach(name);
    live = std::make_unique<shm::Table>(seg.caps());
    const char* refused = nullptr;
    shm::read_published(seg, *live, &refused);
    if (refused) live.reset();
    // A gwd runs on it: this config is for its reload (SIGHUP), or for a
    // restart. What the reload refuses is said; the restart takes it.
    if (seg.master_alive()) {
      const auto& hdr = seg.header();
      const std::string running_state_file(hdr.state_file, ::strnlen(hdr.state_file, sizeof(hdr.state_file)));
      if (std::string why = reload_refusal(seg, running_state_file, static_cast<int>(hdr.workers.load()), cfg);
          !why.empty())
        reload_warning = fmt::format(
            "the gwd running with shm \"{}\" (pid {}) refuses this config on a reload (SIGHUP): {}; a restart of "
            "gwd is needed for that",
            name, hdr.master_pid.load(), why);
    }
  }
  std::vector<std::string> warnings;
  if (!reload_warning.empty()) warnings.push_back(reload_warning);
  const Source source = runtime_source(live.get(), have_state ? &state : nullptr);
  if (source == Source::segment) {
    const shm::State src = shm::state_from_table(*live);
    merge_runtime_named(cfg, &src, fmt::format("shm segment \"{}\"", name), warnings);
  } else if (source == Source::file) {
    merge_runtime_named(cfg, &state, fmt::format("state file {}", cfg.state_file), warnings);
  }
  // A chash pool past the ring's bound: valid, and balanced by weight, but a
  // user coming from nginx would find its keys on other hosts.
  for (const auto& u : cfg.upstreams)
    for (const auto& p : u.pools) {
      if (p.method != shm::Method::chash) continue;
      uint64_t total = 0;
      for (const auto& h : p.hosts) total += h.weight;
      if (auto w = balance::chash_bound_warning(total); !w.empty())
        warnings.push_back(fmt::format("upstream \"{}\" pool \"{}\": {}", u.name, p.id, w));
    }
  return warnings;
}

namespace {

// "killed by signal 9" / "exited with code 1", for the log.
std::string exit_text(int status) {
  return WIFSIGNALED(status) ? fmt::format("killed by signal {}", WTERMSIG(status))
                             : fmt::format("exited with code {}", WEXITSTATUS(status));
}

// " l4=127.0.0.1:7000 web=..." for the log.
std::string listener_text(const config::Config& cfg) {
  std::string out;
  for (const auto& l : cfg.listeners) out += fmt::format(" {}={}", l.name, l.listen.to_string());
  return out;
}

// io_uring: checked once, by the master, so that every worker runs the same
// engine and a kernel without what the engine needs is reported in one line.
config::Config effective_config(config::Config cfg) {
  if (cfg.event_engine == config::EventEngine::io_uring) {
    std::string why = net::uring_unsupported();
    if (!why.empty()) {
      GW_LOG_WARN("event_engine io_uring is not available: {}; using epoll", why);
      cfg.event_engine = config::EventEngine::epoll;
    }
  }
  return cfg;
}

// What a master started by a binary upgrade (SIGUSR2) inherits from the old
// one, from the environment variable GW_UPGRADE:
//   "ppid=PID lock=FD [rows=R,R,...] [admin=ADDR@FD] l=SLOT@ADDR@FD ... [err=FD]"
// (the instance lock's descriptor, the worker rows the old master holds,
// the admin server's socket, each worker slot's listening socket with its
// address, and a pipe to the old master for what makes the new one fail
// before it serves: the old master logs it). A key this build does not know
// (one a later build passes) is ignored, so a downgrade is not refused.
struct Inherited {
  pid_t parent = 0;  // the old master; 0 = not an upgrade
  int lock_fd = -1;
  std::string admin_addr;
  int admin_fd = -1;
  struct Listen {
    size_t slot;
    std::string addr;
    int fd;
  };
  std::vector<Listen> listeners;
  int err_fd = -1;
  // The old master's worker rows: its workers' (one in its respawn back-off
  // too, whose row names no pid then) and those of its reload's draining ones.
  std::vector<uint32_t> rows;
};

constexpr const char* kUpgradeEnv = "GW_UPGRADE";

// The pipe to the old master (err=FD), while this master is not serving yet:
// -2 = not looked up yet, -1 = none (not an upgrade, or closed once serving).
int g_upgrade_err_fd = -2;

int upgrade_err_fd() {
  if (g_upgrade_err_fd != -2) return g_upgrade_err_fd;
  g_upgrade_err_fd = -1;
  const char* env = ::getenv(kUpgradeEnv);
  if (!env) return -1;
  std::string_view v(env);
  for (size_t at = v.find("err="); at != std::string_view::npos; at = v.find("err=", at + 1)) {
    if (at != 0 && v[at - 1] != ' ') continue;
    int fd = 0;
    size_t i = at + 4;
    for (; i < v.size() && v[i] >= '0' && v[i] <= '9' && fd < 100000000; ++i) fd = fd * 10 + (v[i] - '0');
    if (i == at + 4 || (i < v.size() && v[i] != ' ')) return -1;
    if (::fcntl(fd, F_GETFD) < 0) return -1;
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    g_upgrade_err_fd = fd;
    break;
  }
  return g_upgrade_err_fd;
}

}  // namespace

void tell_old_master(std::string_view line) {
  const int fd = upgrade_err_fd();
  if (fd < 0) return;
  std::string l = core::one_line(line);
  l += '\n';
  [[maybe_unused]] auto n = ::write(fd, l.data(), l.size());  // (a full pipe drops it: the old master is stuck)
}

namespace {

void close_upgrade_err() {
  if (upgrade_err_fd() >= 0) ::close(g_upgrade_err_fd);
  g_upgrade_err_fd = -1;
}

// Opens each access log once to check it (throws with a message). A FIFO that
// no process reads is no error (its reader may start after gwd): the logger
// says so and opens it once one does. The open never waits for a reader.
void check_access_logs(const config::Config& cfg) {
  for (const auto& path : cfg.access_log_paths) {
    try {
      if (const int fd = open_access_log(path); fd >= 0) ::close(fd);
    } catch (const std::exception& e) {
      // Named by the first listener that logs there, as a bind error names
      // its listener (one path may serve several).
      for (const auto& l : cfg.listeners)
        if (l.access_log.path == path)
          throw std::runtime_error(fmt::format("listener \"{}\": access_log: {}", l.name, e.what()));
      throw;
    }
  }
}

// `listener "web"`: the setting a listener's bind error names.
std::string listener_what(const config::ListenerConf& l) {
  return fmt::format("listener \"{}\"", l.name);
}

// What can fail once this master has created or changed the segment is tried
// first: the addresses it does not inherit (every one at a plain start) and
// the access logs. So a start that fails on them leaves no trace (no segment
// made, no generation published, no state file written), and a binary upgrade
// that fails on them leaves nothing for the old master to undo. (The worker
// rows are checked in prepare_segment, before its commit.) A process that
// binds an address between this check and run()'s bind still fails the start
// after the segment is made: the check is not a reservation.
void preflight(const config::Config& cfg, const Inherited& in) {
  // Only the sockets that exist (the inherited ones): a bind failure is not
  // excused by a listener of this config that has none yet, as 127.0.0.1:P
  // beside 0.0.0.0:P would each excuse the other's failure on another
  // program's port.
  std::vector<core::SockAddr> ours;
  for (const auto& il : in.listeners) {
    core::SockAddr a;
    std::string why;
    if (core::parse_address(il.addr, a, why)) ours.push_back(a);
  }
  // As nginx does at start (5 binds, 500 ms apart), an address in use is
  // tried again for 2 s before the start fails: the sockets of a gwd that
  // was just killed can outlive its processes for a moment (an io_uring
  // instance lets go of the files its requests held in a kernel work item
  // after the process is gone), so a restart right after a crash found its
  // own old port taken.
  constexpr int kBindTries = 5;
  auto check_free = [&](const core::SockAddr& addr, std::string_view what) {
    for (int attempt = 1;; ++attempt) {
      try {
        net::check_address_free(addr, ours, what);
        return;
      } catch (const net::AddressInUse& e) {
        if (attempt == kBindTries) throw;
        GW_LOG_WARN("{}; trying again in 500 ms ({} of {})", e.what(), attempt, kBindTries - 1);
        ::usleep(500 * 1000);
      }
    }
  };
  for (const auto& l : cfg.listeners) {
    const std::string a = l.listen.to_string();
    bool inherited = false;
    for (const auto& il : in.listeners) inherited |= il.addr == a;
    if (!inherited) check_free(l.listen, listener_what(l));
  }
  if (cfg.admin.enabled && in.admin_addr != cfg.admin.listen.to_string()) check_free(cfg.admin.listen, "admin.listen");
  check_access_logs(cfg);
}

Inherited parse_inherited(const char* text) {
  Inherited in;
  auto fail = [&] { return std::runtime_error(fmt::format("{}: malformed value \"{}\"", kUpgradeEnv, text)); };
  auto num = [&](std::string_view v) {
    long long n = 0;
    if (v.empty() || v.size() > 10) throw fail();
    for (char c : v) {
      if (c < '0' || c > '9') throw fail();
      n = n * 10 + (c - '0');
    }
    return n;
  };
  std::string_view all(text);
  while (!all.empty()) {
    size_t sp = all.find(' ');
    std::string_view tok = all.substr(0, sp);
    all = sp == std::string_view::npos ? std::string_view() : all.substr(sp + 1);
    if (tok.empty()) continue;
    size_t eq = tok.find('=');
    if (eq == std::string_view::npos) throw fail();
    std::string_view k = tok.substr(0, eq), v = tok.substr(eq + 1);
    if (k == "ppid") {
      in.parent = static_cast<pid_t>(num(v));
    } else if (k == "lock") {
      in.lock_fd = static_cast<int>(num(v));
    } else if (k == "admin") {
      size_t at = v.rfind('@');
      if (at == std::string_view::npos) throw fail();
      in.admin_addr = std::string(v.substr(0, at));
      in.admin_fd = static_cast<int>(num(v.substr(at + 1)));
    } else if (k == "err") {
      in.err_fd = static_cast<int>(num(v));
    } else if (k == "rows") {
      for (std::string_view rest = v; !rest.empty();) {
        const size_t c = rest.find(',');
        in.rows.push_back(static_cast<uint32_t>(num(rest.substr(0, c))));
        rest = c == std::string_view::npos ? std::string_view() : rest.substr(c + 1);
      }
    } else if (k == "l") {
      size_t a1 = v.find('@'), a2 = v.rfind('@');
      if (a1 == std::string_view::npos || a2 == a1) throw fail();
      in.listeners.push_back({static_cast<size_t>(num(v.substr(0, a1))), std::string(v.substr(a1 + 1, a2 - a1 - 1)),
                              static_cast<int>(num(v.substr(a2 + 1)))});
    }
    // (another key: a later build's, ignored)
  }
  if (in.parent <= 0 || in.lock_fd < 0) throw fail();
  return in;
}

class Master {
 public:
  Master(config::Config cfg, shm::Segment seg, std::vector<std::string> argv, int lock_fd, Inherited inherited,
         const ListenerRowTimes& row_free_at)
      : cfg_(std::move(cfg)),
        seg_(std::move(seg)),
        argv_(std::move(argv)),
        lock_fd_(lock_fd),
        inherited_(std::move(inherited)),
        row_free_at_(row_free_at) {}

  int run() {
    const int n = cfg_.workers;
    // One socket per worker slot and listener, made here so a respawned worker
    // (or, after a reload, the new worker of the slot) inherits its slot's
    // socket and its accept queue (nothing queued is lost).
    // After a binary upgrade they are the old master's (same slot and
    // address), so nothing queued in them is lost either.
    fds_.resize(static_cast<size_t>(n));
    std::vector<core::SockAddr> ours;  // the addresses this gwd has a socket on so far (see preflight)
    for (const auto& il : inherited_.listeners) {
      core::SockAddr a;
      std::string why;
      if (core::parse_address(il.addr, a, why)) ours.push_back(a);
    }
    for (int w = 0; w < n; ++w)
      for (const auto& l : cfg_.listeners) {
        core::UniqueFd fd = take_inherited(static_cast<size_t>(w), l);
        if (!fd && w == 0)
          net::check_address_free(l.listen, ours, listener_what(l));  // a new address: no one else may listen there
        fds_[static_cast<size_t>(w)].push_back(fd ? std::move(fd) : net::listen_tcp(l.listen, l.backlog, true));
        if (w == 0) ours.push_back(l.listen);
      }
    // The admin server's socket, made here too: a port in use stops gwd now,
    // and a respawned admin server inherits the accept queue.
    if (cfg_.admin.enabled) {
      if (inherited_.admin_fd >= 0 && inherited_.admin_addr == cfg_.admin.listen.to_string()) {
        admin_fd_ = core::UniqueFd(inherited_.admin_fd);
        ::fcntl(admin_fd_.get(), F_SETFD, FD_CLOEXEC);  // as the inherited listeners (take_inherited)
        inherited_.admin_fd = -1;
      } else {
        net::check_address_free(cfg_.admin.listen, ours, "admin.listen");
        admin_fd_ = net::listen_tcp(cfg_.admin.listen, 128, false);
      }
      admin_.fd = admin_fd_.get();
    }
    // Inherited sockets this config has no use for.
    for (auto& l : inherited_.listeners)
      if (l.fd >= 0) ::close(l.fd);
    if (inherited_.admin_fd >= 0) ::close(inherited_.admin_fd);
    inherited_.listeners.clear();
    inherited_.admin_fd = -1;

    sigset_t set;
    sigemptyset(&set);
    // SIGWINCH too (the master ignores it): a worker inherits it blocked, so
    // the one that retires it (a reload right after its start) waits in its
    // signalfd rather than being lost before the worker made one.
    for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set, s);
    ::sigprocmask(SIG_BLOCK, &set, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    // What a hook leaves running when it exits (`cmd &`) comes to this master,
    // which reaps it (reap): its process group empties as its members exit,
    // and the stop ends what is left of it (stop_hooks).
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);

    // Access logs: a socket per worker slot to the logger process (made here,
    // so a respawned worker or logger finds its end), and the files checked now.
    open_access_logs(cfg_, log_rd_, log_wr_);
    logger_.wanted = !cfg_.access_log_paths.empty();

    // gwctl and a starting gwd take the pid in the header for a running
    // master only if its command name starts with "gwd" (a pid reused by
    // another program is not one): so it is, whatever the name gwd was run
    // by (a symlink, a copy, a container's entry point).
    ::prctl(PR_SET_NAME, "gwd");
    seg_.header().master_started_ms.store(core::wall_ms());
    seg_.header().master_pid.store(::getpid(), std::memory_order_release);
    event_cursor_ = seg_.header().event_head.load();

    // Rows 0..n-1 at a plain start; after a binary upgrade those the old
    // master's workers do not use.
    rows_ = free_rows();
    if (rows_.size() < static_cast<size_t>(n))
      throw std::runtime_error(fmt::format(
          "binary upgrade: {} free worker row(s) in the shm segment, {} needed {}; a restart is needed, or retry later",
          rows_.size(), n, kRowsHeldWhy));
    rows_.resize(static_cast<size_t>(n));
    start_generation();
    notify_parent_ = inherited_.parent > 0;
    std::string addrs = listener_text(cfg_);
    if (cfg_.admin.enabled) addrs += fmt::format(" (admin {})", cfg_.admin.listen.to_string());
    GW_LOG_INFO("ready: {} worker(s), engine {}, shm \"{}\", listeners:{}", n,
                cfg_.event_engine == config::EventEngine::io_uring ? "io_uring" : "epoll", cfg_.shm.name, addrs);

    for (;;) {
      timespec ts{0, 100 * 1000 * 1000};
      siginfo_t si{};
      int sig = ::sigtimedwait(&set, &si, &ts);
      uint64_t now = core::monotonic_ms();
      if (sig == SIGCHLD) reap(now);
      else if (sig == SIGTERM) begin_stop(true, now, si.si_pid);
      else if (sig == SIGINT || sig == SIGQUIT) begin_stop(false, now, si.si_pid);
      else if (sig == SIGHUP && stopping_) GW_LOG_WARN("SIGHUP while stopping: no reload; gwd is stopping");
      else if (sig == SIGHUP) reload(now, true);
      else if (sig == SIGUSR1) reopen_logs();
      else if (sig == SIGUSR2) start_upgrade();
      else if (sig == SIGWINCH && upgrade_pid_ > 0 && si.si_pid == upgrade_pid_) hand_over(now);
      if (notify_parent_) tell_parent_ready();
      else if (handover_again_ms_ != 0 && now >= handover_again_ms_) hand_over_again(now);
      if (upgrade_pid_ > 0 && !handed_over_ && !stopping_ && now >= upgrade_warn_ms_) {
        // A new master that hangs in its start leaves this one serving
        // forever, and every SIGHUP put off: said, so it is seen.
        GW_LOG_WARN("binary upgrade: the new master (pid {}) has not taken over after {} s", upgrade_pid_,
                    (now - upgrade_started_ms_) / 1000);
        upgrade_warn_ms_ = now + kUpgradeWarnMs;
      }
      if (reload_pending_ && now >= pending_check_ms_) {
        // Rows are also freed by workers that are not this master's children
        // (the old master's, after a binary upgrade): looked for every 250 ms.
        pending_check_ms_ = now + 250;
        if (free_rows().size() >= pending_workers_) retry_reload_ = true;
      }
      if (retry_reload_) {
        retry_reload_ = false;
        reload(now, false);  // a deferred reload: rows were freed
      }
      respawn_due(now);
      expire_retiring(now);
      log_events();
      expire_hooks();
      run_queued_hooks();
      if (stopping_) {
        reap(now);
        run_queued_hooks();
        stop_hooks(core::monotonic_ms(), alive() == 0 && hooks_.empty() && queued_hooks_.empty());
        if (alive() == 0 && hooks_.empty() && queued_hooks_.empty() && hook_groups_.empty()) break;
        if (now >= kill_deadline_ms_) {
          GW_LOG_WARN("workers still running after the stop deadline; killing them");
          for (pid_t p : pids_)
            if (p > 0) ::kill(p, SIGKILL);
          for (Aux* a : auxes())
            if (a->pid > 0) ::kill(a->pid, SIGKILL);
          for (const auto& [p, r] : retiring_) ::kill(p, SIGKILL);
          for (const auto& [p, t] : retiring_aux_) ::kill(p, SIGKILL);
          if (upgrade_pid_ > 0 && !handed_over_) ::kill(upgrade_pid_, SIGKILL);  // (its workers stop on its death)
          kill_deadline_ms_ = now + 60000;
        }
      }
    }
    log_events();
    // (after a binary upgrade the segment is the new master's)
    pid_t self = ::getpid();
    seg_.header().master_pid.compare_exchange_strong(self, 0, std::memory_order_acq_rel);
    GW_LOG_INFO("stopped");
    return 0;
  }

 private:
  // The old master's socket for `slot` and the address of `conf` (binary upgrade), if any.
  core::UniqueFd take_inherited(size_t slot, const config::ListenerConf& conf) {
    const std::string a = conf.listen.to_string();
    for (auto& l : inherited_.listeners)
      if (l.fd >= 0 && l.slot == slot && l.addr == a) {
        core::UniqueFd fd(l.fd);
        l.fd = -1;
        ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
        // This config's backlog (listen(2) again sets it; the queue stays).
        if (::listen(fd.get(), conf.backlog) != 0)
          GW_LOG_WARN("binary upgrade: {}: listen on the inherited socket of {}: {}", listener_what(conf), a,
                      std::strerror(errno));
        // Accepted sockets inherit TCP_NODELAY from it, and the proxies set it
        // on none: an older master's socket may lack it.
        net::set_nodelay(fd.get());
        return fd;
      }
    return core::UniqueFd();
  }

  // Access-log sockets by worker slot for `cfg` (none without access logs);
  // the files are opened once to check them. Throws with a message.
  static void open_access_logs(const config::Config& cfg, std::vector<core::UniqueFd>& rd,
                               std::vector<core::UniqueFd>& wr) {
    if (cfg.access_log_paths.empty()) return;
    check_access_logs(cfg);
    for (int w = 0; w < cfg.workers; ++w) {
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        throw std::runtime_error(fmt::format("socketpair for the access log: {}", std::strerror(errno)));
      int sndbuf = 4 << 20;  // room for bursts while the logger writes
      ::setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
      rd.emplace_back(sv[0]);
      wr.emplace_back(sv[1]);
    }
  }

  // Forks the workers of cfg_ (in rows_) and the helpers it wants.
  void start_generation() {
    const size_t n = static_cast<size_t>(cfg_.workers);
    pids_.assign(n, 0);
    started_ms_.assign(n, 0);
    quick_deaths_.assign(n, 0);
    respawn_at_.clear();
    for (uint32_t w = 0; w < n; ++w) {
      auto& wr = seg_.worker(rows_[w]);
      wr.flags.store(0, std::memory_order_relaxed);
      shm::clear_worker_counters(seg_, rows_[w]);
      // A row is free only with no live worker in it; limit_conn counts its
      // last worker still held (one this master did not reap: the old
      // master's, after a binary upgrade whose old master was killed) go.
      api::LimitTable::release_worker(seg_, rows_[w]);
      spawn(w);
    }
    checker_.wanted = false;
    for (const auto& u : cfg_.upstreams) checker_.wanted |= u.check.type != shm::kCheckNone;
    sync_.wanted = cfg_.cluster.enabled;
    admin_.wanted = cfg_.admin.enabled;
    logger_.wanted = !cfg_.access_log_paths.empty();
    admin_.fd = admin_fd_.get();
    for (Aux* a : auxes()) {
      a->respawn_at = 0;
      if (a->wanted) spawn_aux(*a);
    }
  }

  // ---- reload (SIGHUP)
  //
  //   read + validate the file ─ errors: log each, keep running
  //   refuse what needs a restart (shm name or capacities, state_file, rows)
  //   open new listening sockets, access-log sockets, a new log_file ─ failure: keep running
  //   merge the config into the live table (one commit) ─ failure: keep running
  //   ── from here nothing fails ──
  //   fork the new workers (same-address listeners: the same sockets) and helpers
  //   SIGWINCH the old workers (stop accepting, drain for their
  //   worker_shutdown_timeout_ms), SIGQUIT/SIGTERM the old helpers

  // Why `next` cannot be applied without a restart; empty if it can.
  std::string restart_needed(const config::Config& next) const {
    if (next.shm.name != cfg_.shm.name)
      return fmt::format("shm.name changed (\"{}\" -> \"{}\")", cfg_.shm.name, next.shm.name);
    return reload_refusal(seg_, cfg_.state_file, cfg_.workers, next);
  }

  bool is_ours(pid_t pid) const {
    for (pid_t p : pids_)
      if (p == pid) return true;
    return retiring_.count(pid) > 0;
  }

  // Rows (< stat_workers) no worker of any generation holds, lowest first.
  std::vector<uint32_t> free_rows() const {
    std::vector<bool> busy(seg_.stat_workers(), false);
    for (uint32_t r : rows_)
      if (r < busy.size()) busy[r] = true;
    for (const auto& [p, r] : retiring_)
      if (r.row < busy.size()) busy[r.row] = true;
    // The old master's rows while it runs (a binary upgrade): a worker of its
    // that died is respawned there, so the row is its own, pid 0 or not.
    if (inherited_.parent > 0 && ::getppid() == inherited_.parent)
      for (uint32_t r : inherited_.rows)
        if (r < busy.size()) busy[r] = true;
    // Rows of another master's workers (the old master's, right after a
    // binary upgrade) until they exit.
    for (uint32_t r = 0; r < busy.size(); ++r) {
      const pid_t pid = seg_.worker(r).pid.load(std::memory_order_acquire);
      if (pid > 0 && !is_ours(pid) && (::kill(pid, 0) == 0 || errno != ESRCH)) busy[r] = true;
    }
    std::vector<uint32_t> out;
    for (uint32_t r = 0; r < busy.size(); ++r)
      if (!busy[r]) out.push_back(r);
    return out;
  }

  size_t draining_rows() const {
    const size_t busy = seg_.stat_workers() - free_rows().size();
    return busy > rows_.size() ? busy - rows_.size() : 0;
  }

  // `signalled`: for a SIGHUP (else a deferred reload run again).
  void reload(uint64_t now, bool signalled) {
    if (stopping_) return;
    if (upgrade_pid_ > 0) {
      // The new master picks its rows as it starts, and this one would see
      // them as free until its workers run: two generations in one row, and
      // an upgrade that never completes. Run it if the upgrade fails; once
      // the new master serves, reload that one.
      GW_LOG_WARN(
          "SIGHUP: a binary upgrade (pid {}) is in progress; the reload runs here if it fails, else in the new "
          "master once it serves (this master sends it the SIGHUP then)",
          upgrade_pid_);
      reload_after_upgrade_ = true;
      reload_pending_ = false;  // (not retried every 250 ms meanwhile)
      return;
    }
    if (signalled) GW_LOG_INFO("SIGHUP: reloading {}", cfg_.path);
    else if (!reload_lock_since_ms_) GW_LOG_INFO("reloading {} (a deferred reload; the file is read again)", cfg_.path);
    // The wait for the writer lock (below) ends with any outcome but another
    // round of it.
    struct LockWaitEnd {
      uint64_t& since;
      bool goes_on = false;
      ~LockWaitEnd() {
        if (!goes_on) since = 0;
      }
    } lock_wait{reload_lock_since_ms_};
    config::LoadResult r = config::load_file(cfg_.path);
    if (!r.ok()) {
      for (const auto& e : r.errors) GW_LOG_ERROR("reload: {}: {}", cfg_.path, e);
      GW_LOG_ERROR("reload failed: {} error(s) in {}; the running configuration stays", r.errors.size(), cfg_.path);
      reload_pending_ = false;
      return;
    }
    config::Config next = effective_config(std::move(r.config));
    if (std::string why = restart_needed(next); !why.empty()) {
      GW_LOG_ERROR("reload refused: {}; a restart of gwd is needed for that; the running configuration stays", why);
      reload_pending_ = false;
      return;
    }
    std::vector<uint32_t> rows = free_rows();
    if (rows.size() < static_cast<size_t>(next.workers)) {
      // Held by the workers of an earlier reload that are still draining.
      // Each SIGHUP says so (a second one said nothing after "SIGHUP:
      // reloading"); a retry that still finds too few rows says nothing.
      if (!reload_pending_ || signalled)
        GW_LOG_WARN(
            "reload {}deferred: {} worker(s) of an earlier reload or of the master this one replaced are still "
            "draining; it runs when they exit (within their worker_shutdown_timeout_ms), reading the file again",
            reload_pending_ ? "still " : "", draining_rows());
      reload_pending_ = true;
      pending_workers_ = static_cast<size_t>(next.workers);
      return;
    }
    reload_pending_ = false;
    rows.resize(static_cast<size_t>(next.workers));

    // Sockets first: a port that cannot be bound leaves everything as it is.
    const size_t n_old = fds_.size();
    std::vector<std::vector<core::UniqueFd>> fds(static_cast<size_t>(next.workers));
    std::vector<int> reuse(next.listeners.size(), -1);  // new listener -> old listener index with the same address
    for (size_t i = 0; i < next.listeners.size(); ++i)
      for (size_t j = 0; j < cfg_.listeners.size(); ++j)
        if (cfg_.listeners[j].listen == next.listeners[i].listen) reuse[i] = static_cast<int>(j);
    core::UniqueFd admin_fd;
    const bool admin_same = next.admin.enabled && cfg_.admin.enabled && next.admin.listen == cfg_.admin.listen;
    std::vector<core::UniqueFd> log_rd, log_wr;
    try {
      // The addresses this gwd has a socket on: the new listeners' come once
      // they are bound (see preflight).
      std::vector<core::SockAddr> ours;
      for (const auto& l : cfg_.listeners) ours.push_back(l.listen);
      if (cfg_.admin.enabled) ours.push_back(cfg_.admin.listen);  // the admin server's socket is this gwd's too
      // The admin server's socket is not a listener's (no SO_REUSEPORT, another
      // process accepts on it): an address passing between the two cannot be
      // bound while the running one holds it.
      auto handed_over = [](const std::string& what, const core::SockAddr& a, const std::string& holder) {
        return std::runtime_error(fmt::format(
            "{}: {} is still this gwd's {} until the reload; an address passes between the admin server and a "
            "listener in two reloads (the first frees it, the second takes it), or by a restart",
            what, a.to_string(), holder));
      };
      for (size_t i = 0; i < next.listeners.size(); ++i)
        if (reuse[i] < 0 && cfg_.admin.enabled && next.listeners[i].listen == cfg_.admin.listen)
          throw handed_over(listener_what(next.listeners[i]), next.listeners[i].listen, "admin.listen");
      if (next.admin.enabled && !admin_same)
        for (const auto& l : cfg_.listeners)
          if (l.listen == next.admin.listen) throw handed_over("admin.listen", l.listen, listener_what(l));
      for (size_t i = 0; i < next.listeners.size(); ++i)
        if (reuse[i] < 0)  // a new address: nobody else's
          net::check_address_free(next.listeners[i].listen, ours, listener_what(next.listeners[i]));
      // A new slot's socket on an address that stays only binds now: once it
      // listens it takes its share of the port's connections (SO_REUSEPORT),
      // and a reload that failed after that would reset them as it closed it.
      for (size_t w = 0; w < fds.size(); ++w)
        for (size_t i = 0; i < next.listeners.size(); ++i)
          fds[w].push_back(w < n_old && reuse[i] >= 0 ? core::UniqueFd()
                           : reuse[i] >= 0
                               ? net::bind_tcp(next.listeners[i].listen, true)
                               : net::listen_tcp(next.listeners[i].listen, next.listeners[i].backlog, true));
      for (const auto& l : next.listeners) ours.push_back(l.listen);
      if (next.admin.enabled && !admin_same) {
        net::check_address_free(next.admin.listen, ours, "admin.listen");
        admin_fd = net::listen_tcp(next.admin.listen, 128, false);
      }
      open_access_logs(next, log_rd, log_wr);
      // A log_file that cannot be opened fails the reload, as `gwd -t` fails
      // it and nginx fails a reload whose error_log it cannot open.
      if (!next.log_file.empty()) {
        try {
          const core::UniqueFd f(core::log_open_file(next.log_file, true));
        } catch (const std::exception& e) {
          throw std::runtime_error(fmt::format("log_file: {}", e.what()));
        }
      }
      commit_reload(next, kReloadLockTryMs);
    } catch (const shm::WriterLockTimeout&) {
      // Another writer holds the lock: a gwctl in the middle of a change, or
      // one stopped there. The master's loop does not wait on it (waiting
      // 10 s, it respawned no worker, read no event and took no signal):
      // tried again every 250 ms, the file read again, for 10 s.
      if (!reload_lock_since_ms_) {
        reload_lock_since_ms_ = now;
        GW_LOG_WARN(
            "reload waits for the shm writer lock, which another writer holds (a gwctl in the middle of a change, "
            "or stopped there); tried again every 250 ms for up to 10 s");
      } else if (now - reload_lock_since_ms_ >= kReloadLockWaitMs) {
        GW_LOG_ERROR(
            "reload failed: another writer has held the shm writer lock for 10 s; is a gwctl stopped (SIGSTOP)?; "
            "the running configuration stays");
        return;
      }
      lock_wait.goes_on = true;
      reload_pending_ = true;
      pending_workers_ = 0;
      pending_check_ms_ = now + 250;
      return;
    } catch (const std::exception& e) {
      GW_LOG_ERROR("reload failed: {}; the running configuration stays", e.what());
      return;
    }

    // ---- nothing fails from here
    for (size_t w = 0; w < fds.size(); ++w)
      for (size_t i = 0; i < next.listeners.size(); ++i) {
        if (reuse[i] < 0) continue;
        if (!fds[w][i]) fds[w][i] = std::move(fds_[w][static_cast<size_t>(reuse[i])]);
        // A new slot's socket starts taking connections; a kept one takes the
        // new config's backlog (listen(2) again sets it, as nginx and HAProxy do).
        if (::listen(fds[w][i].get(), next.listeners[i].backlog) != 0)
          GW_LOG_ERROR("reload: {}: cannot listen on {} (worker slot {}): {}", listener_what(next.listeners[i]),
                       next.listeners[i].listen.to_string(), w, std::strerror(errno));
      }
    // The master's copies of sockets no listener uses any more close now: the
    // old workers close theirs as they start draining, so the kernel drops
    // them (a closed port refuses rather than queueing for nobody).
    fds_ = std::move(fds);
    if (next.admin.enabled && !admin_same) admin_fd_ = std::move(admin_fd);
    else if (!next.admin.enabled) admin_fd_.reset();
    // The old logger keeps its ends and writes the old workers' last lines.
    log_rd_ = std::move(log_rd);
    log_wr_ = std::move(log_wr);

    std::vector<std::pair<pid_t, uint32_t>> old_workers;
    for (size_t w = 0; w < pids_.size(); ++w)
      if (pids_[w] > 0) old_workers.emplace_back(pids_[w], rows_[w]);
    const uint64_t old_kill_at = now + cfg_.worker_shutdown_timeout_ms + 5000;
    const uint64_t old_shutdown_ms = cfg_.shutdown_timeout_ms;
    std::vector<std::pair<Aux*, pid_t>> old_aux;
    for (Aux* a : auxes())
      if (a->pid > 0) old_aux.emplace_back(a, a->pid);

    const int old_n = cfg_.workers;
    // Opened again even at the same path, as nginx's reload opens its logs
    // (and the new logger the access logs): a file renamed by a rotation is
    // left to the old workers, and the new generation inherits the new one.
    if (!next.log_file.empty() || !cfg_.log_file.empty()) {
      try {
        core::log_open(next.log_file);
      } catch (const std::exception& e) {
        // (opened a moment ago, before the commit: gone or refused since)
        GW_LOG_ERROR("reload: {} (logging goes on where it went)", e.what());
      }
    }
    core::log_set_level(next.log_level);
    cfg_ = std::move(next);
    auto& hdr = seg_.header();
    hdr.workers.store(static_cast<uint32_t>(cfg_.workers));
    publish_listeners(seg_, cfg_, true, row_free_at_, now, old_kill_at);
    reset_cluster_state(hdr, cfg_, true);
    rows_ = std::move(rows);
    for (auto& [a, pid] : old_aux) {
      retiring_aux_[pid] = old_kill_at;
      a->pid = 0;
    }
    start_generation();  // the new workers serve before the old ones stop accepting
    for (const auto& [pid, row] : old_workers) {
      seg_.worker(row).flags.store(shm::kWorkerRetiring, std::memory_order_release);
      retiring_[pid] = Retiring{row, old_kill_at, old_shutdown_ms};
      ::kill(pid, SIGWINCH);
    }
    for (const auto& [a, pid] : old_aux) {
      // The logger: after the old workers' last lines; the admin server:
      // after the requests under way (the new one accepts on the same socket).
      ::kill(pid, a == &logger_ || a == &admin_ ? SIGTERM : SIGQUIT);
      if (a == &logger_) retiring_loggers_.insert(pid);
    }
    GW_LOG_INFO("reloaded: {} worker(s) started, {} old worker(s) draining (from {}), listeners:{}", cfg_.workers,
                old_workers.size(), old_n, listener_text(cfg_));
  }

  // The reload's one table commit: the new config merged with the live table
  // (read under the writer lock, so a concurrent gwctl change is not lost).
  static constexpr uint32_t kReloadLockTryMs = 50;      // one try for the writer lock from the loop
  static constexpr uint64_t kReloadLockWaitMs = 10000;  // ...and how long the tries go on

  /// `lock_wait_ms` 0: the writers' default wait for the lock (10 s).
  void commit_reload(const config::Config& next, uint32_t lock_wait_ms = 0) {
    shm::Writer writer(seg_);
    writer.set_lock_wait_ms(lock_wait_ms);
    std::vector<std::string> warnings;
    uint64_t gen = writer.commit([&](shm::Table& t, std::vector<std::string>& events) {
      const shm::State live = shm::state_from_table(t);
      warnings.clear();
      bool dropped = false;
      shm::Table merged = merge_runtime(next, &live, warnings, &dropped);
      if (dropped) keep_dropped_state(next, shm::state_to_json(t), t.header().generation, warnings);
      keep_runtime_slots(merged, t);
      const uint64_t generation = t.header().generation;
      const uint32_t next_tag = std::max(t.header().next_tag, 1u);
      std::memcpy(t.words(), merged.words(), t.bytes());
      t.header().generation = generation;
      t.header().next_tag = next_tag;
      events.push_back(fmt::format("config_reloaded pid={}: {} upstream(s), {} pool(s), {} host(s)", ::getpid(),
                                   t.upstreams().size(), t.pools().size(), t.hosts().size()));
      for (const auto& w : warnings) events.push_back("config_not_applied: " + w);
    });
    GW_LOG_INFO("reload: routing table generation {}", gen);
    for (const auto& w : warnings) GW_LOG_WARN("reload: {}", w);
  }

  // ---- binary upgrade (SIGUSR2), nginx-style
  //
  //   old master: fork + exec argv_ with GW_UPGRADE naming the inherited fds
  //   new master: adopts the segment as it is, takes the sockets, starts its
  //               workers in free rows; once they run: SIGWINCH to the old one
  //   old master: SIGTERM to its workers (stop accepting, drain), then exits
  // If the new master exits before that, the old one goes on as before.

  void start_upgrade() {
    if (stopping_ || upgrade_pid_ > 0 || argv_.empty()) {
      GW_LOG_WARN("SIGUSR2: binary upgrade {}; ignored", stopping_          ? "while stopping"
                                                         : upgrade_pid_ > 0 ? "already in progress"
                                                                            : "without a command line");
      return;
    }
    std::string env = fmt::format("ppid={} lock={}", ::getpid(), lock_fd_);
    // This master's rows: the new one leaves them alone while this one runs
    // (a worker in its respawn back-off names no pid in its row).
    std::string rows;
    for (uint32_t r : rows_) rows += fmt::format("{}{}", rows.empty() ? "" : ",", r);
    for (const auto& [p, r] : retiring_) rows += fmt::format("{}{}", rows.empty() ? "" : ",", r.row);
    if (!rows.empty()) env += " rows=" + rows;
    std::vector<int> pass{lock_fd_};
    if (admin_fd_) {
      env += fmt::format(" admin={}@{}", cfg_.admin.listen.to_string(), admin_fd_.get());
      pass.push_back(admin_fd_.get());
    }
    for (size_t w = 0; w < fds_.size(); ++w)
      for (size_t i = 0; i < fds_[w].size() && i < cfg_.listeners.size(); ++i) {
        env += fmt::format(" l={}@{}@{}", w, cfg_.listeners[i].listen.to_string(), fds_[w][i].get());
        pass.push_back(fds_[w][i].get());
      }
    // What makes the new master fail before it serves (a config error, most
    // often) goes to its stderr, which is not this master's log_file: it
    // writes that to this pipe too, and the failure's log line quotes it.
    core::UniqueFd err_w;
    if (int p[2]; ::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
      upgrade_err_.reset(p[0]);
      err_w.reset(p[1]);
      env += fmt::format(" err={}", p[1]);
      pass.push_back(p[1]);
    }
    std::vector<char*> args;
    for (auto& a : argv_) args.push_back(a.data());
    args.push_back(nullptr);
    // (a pid named there by an earlier stop could be the new master's; not
    // the mark of the master this one replaced while it still drains: its
    // pid is not free, and its mark tells hand_over_again it took over)
    if (pid_t named = seg_.header().stopping_master.load();
        named <= 0 || named != inherited_.parent || ::getppid() != inherited_.parent)
      seg_.header().stopping_master.compare_exchange_strong(named, 0);
    pid_t pid = ::fork();
    if (pid < 0) {
      GW_LOG_ERROR("SIGUSR2: binary upgrade: fork: {}", std::strerror(errno));
      return;
    }
    if (pid == 0) {
      for (int fd : pass) ::fcntl(fd, F_SETFD, 0);  // these cross the exec; nothing else does
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::setenv(kUpgradeEnv, env.c_str(), 1);
      ::execvp(args[0], args.data());
      const std::string why = fmt::format("exec {}: {}", args[0], std::strerror(errno));
      std::fprintf(stderr, "gwd: binary upgrade: %s\n", why.c_str());
      if (err_w) {
        [[maybe_unused]] auto n = ::write(err_w.get(), why.data(), why.size());
      }
      ::_exit(127);
    }
    upgrade_pid_ = pid;
    upgrade_started_ms_ = core::monotonic_ms();
    upgrade_warn_ms_ = upgrade_started_ms_ + kUpgradeWarnMs;
    GW_LOG_INFO("SIGUSR2: binary upgrade: started {} (pid {}); this master serves until it is ready", argv_[0], pid);
  }

  // New master: its workers run (each wrote its pid into its row): the old
  // master may stop its own.
  void tell_parent_ready() {
    for (size_t w = 0; w < rows_.size(); ++w)
      if (pids_[w] <= 0 || seg_.worker(rows_[w]).pid.load(std::memory_order_acquire) != pids_[w]) return;
    notify_parent_ = false;
    close_upgrade_err();  // serving: what goes wrong from now on is this master's to log
    if (::getppid() != inherited_.parent) {
      GW_LOG_WARN("binary upgrade: the old master (pid {}) is gone", inherited_.parent);
      return;
    }
    ::kill(inherited_.parent, SIGWINCH);
    handover_again_ms_ = core::monotonic_ms() + kHandOverAgainMs;
    GW_LOG_INFO("binary upgrade: serving; the old master (pid {}) drains and exits", inherited_.parent);
  }

  // New master: SIGWINCH is a standard signal, so copies merge while one is
  // pending: one an operator sent the old master (nginx's "stop the workers")
  // and still unread there when this master's came is all the old master
  // sees, with the operator's pid, and it would never hand over. Sent again
  // every kHandOverAgainMs until the old master has begun to stop (it names
  // itself in stopping_master, begin_stop) or is gone; a duplicate that
  // arrives while it stops is ignored there (hand_over).
  void hand_over_again(uint64_t now) {
    const pid_t parent = inherited_.parent;
    if (stopping_ || ::getppid() != parent || seg_.header().stopping_master.load() == parent) {
      handover_again_ms_ = 0;
      return;
    }
    if (!handover_resent_)
      GW_LOG_WARN("binary upgrade: the old master (pid {}) has not taken the hand-over; sending it again every {} ms",
                  parent, kHandOverAgainMs);
    handover_resent_ = true;
    ::kill(parent, SIGWINCH);
    handover_again_ms_ = now + kHandOverAgainMs;
  }

  // Old master: the new master failed after it had published its config (a
  // port it could not bind, no free rows, ...): this one's config goes back
  // in (merged with the live table, as a reload does), and so do its
  // listeners and worker count in the header. (Hosts that gwctl added to an
  // upstream the new config dropped went with that upstream.)
  // The segment header still says what this master published (listeners, rows,
  // worker count, its sync process).
  bool header_is_ours() const {
    const auto& hdr = seg_.header();
    if (hdr.workers.load() != static_cast<uint32_t>(cfg_.workers)) return false;
    if (cfg_.cluster.enabled && hdr.cluster.sync_pid.load() != sync_.pid) return false;
    const size_t n = std::min<size_t>(cfg_.listeners.size(), shm::kMaxListeners);
    shm::ListenerList list;
    if (!shm::read_listeners(hdr, list) || list.n != n) return false;
    for (size_t i = 0; i < n; ++i) {
      const auto& l = list.items[i];
      if (shm::name_of(l.name) != cfg_.listeners[i].name || !(l.addr == cfg_.listeners[i].listen) ||
          l.stats_row != cfg_.listeners[i].stats_row + 1)
        return false;
    }
    return true;
  }

  // Old master: a new master that took this one's listening sockets gave
  // them its config's backlog (take_inherited); a failed upgrade puts this
  // one's back.
  void relisten() {
    for (auto& slot : fds_)
      for (size_t i = 0; i < slot.size() && i < cfg_.listeners.size(); ++i)
        if (slot[i]) ::listen(slot[i].get(), cfg_.listeners[i].backlog);
  }

  void undo_failed_upgrade() {
    auto& hdr = seg_.header();
    write_listener_header(hdr, cfg_);
    hdr.workers.store(static_cast<uint32_t>(cfg_.workers));
    try {
      commit_reload(cfg_);
    } catch (const std::exception& e) {
      GW_LOG_ERROR("binary upgrade failed: cannot put this master's config back in the table: {}", e.what());
    }
    // The new master reset the cluster state (and its sync process took the
    // commits over): this master's sync process starts over, listing again.
    if (sync_.pid > 0) ::kill(sync_.pid, SIGQUIT);
    reset_cluster_state(hdr, cfg_, true);
    if (reload_after_upgrade_) {
      reload_after_upgrade_ = false;
      retry_reload_ = true;  // the SIGHUP that came meanwhile
    }
  }

  // What the new master of a binary upgrade wrote to its pipe before it
  // failed, as one line ("a; b"); the pipe is closed.
  std::string upgrade_said() {
    std::string text;
    if (!upgrade_err_) return text;
    char buf[4096];
    for (ssize_t n; text.size() < 16384 && (n = ::read(upgrade_err_.get(), buf, sizeof buf)) > 0;)
      text.append(buf, static_cast<size_t>(n));
    upgrade_err_.reset();
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    std::string out;
    for (char c : text) out += c == '\n' ? std::string("; ") : std::string(1, c);
    return core::one_line(out);
  }

  // Old master: the new one says it serves (its SIGWINCH). Taken only from a
  // new master that still holds the segment and has not begun to stop: one
  // stopped (SIGTERM: a roll-back) after it signalled, before this master took
  // the signal, is going away, and this one serves on (its exit is a failed
  // upgrade, see reap). The new master names itself in stopping_master before
  // it signals anything, so it is seen here once it stops.
  void hand_over(uint64_t now) {
    if (stopping_) return;
    const auto& hdr = seg_.header();
    if (hdr.stopping_master.load() == upgrade_pid_ || hdr.master_pid.load() != upgrade_pid_) {
      GW_LOG_WARN(
          "binary upgrade: hand-over signal from the new master (pid {}), which is stopping; this master goes on "
          "serving",
          upgrade_pid_);
      return;
    }
    handed_over_ = true;
    GW_LOG_INFO("binary upgrade: the new master (pid {}) serves; stopping this one's workers gracefully", upgrade_pid_);
    if (reload_after_upgrade_) {
      // The SIGHUP put off during the upgrade: the new master reloads.
      reload_after_upgrade_ = false;
      GW_LOG_INFO("binary upgrade: the SIGHUP that came during the upgrade goes to the new master (pid {})",
                  upgrade_pid_);
      ::kill(upgrade_pid_, SIGHUP);
    }
    begin_stop(true, now);
  }

  // Old workers and helpers past their deadline (worker_shutdown_timeout_ms
  // plus a margin: a worker closes its connections itself at the limit).
  void expire_retiring(uint64_t now) {
    for (auto& [pid, r] : retiring_)
      if (now >= r.kill_at) {
        GW_LOG_WARN("old worker pid {} still running after worker_shutdown_timeout_ms; killing it", pid);
        ::kill(pid, SIGKILL);
        r.kill_at = now + 60000;
      }
    for (auto& [pid, kill_at] : retiring_aux_)
      if (now >= kill_at) {
        ::kill(pid, SIGKILL);
        kill_at = now + 60000;
      }
  }

  // SIGUSR1 (logrotate): the master, the workers and the logger reopen their files.
  void reopen_logs() {
    GW_LOG_INFO("SIGUSR1: reopening log files");
    if (!cfg_.log_file.empty()) {
      try {
        core::log_open(cfg_.log_file);
      } catch (const std::exception& e) {
        GW_LOG_ERROR("{}", e.what());
      }
    }
    for (pid_t p : pids_)
      if (p > 0) ::kill(p, SIGUSR1);
    for (Aux* a : auxes())
      if (a->pid > 0) ::kill(a->pid, SIGUSR1);
    // The old generation of a reload too: it may drain for hours
    // (worker_shutdown_timeout_ms) and would write into the rotated files.
    for (const auto& [p, r] : retiring_) ::kill(p, SIGUSR1);
    for (const auto& [p, t] : retiring_aux_) ::kill(p, SIGUSR1);
  }

  int alive() const {
    int a = (checker_.pid > 0) + (sync_.pid > 0) + (logger_.pid > 0) + (admin_.pid > 0);
    for (pid_t p : pids_) a += p > 0;
    a += upgrade_pid_ > 0 && !handed_over_;  // a new master stopped with this one (begin_stop)
    return a + static_cast<int>(retiring_.size() + retiring_aux_.size());
  }

  void spawn(uint32_t w) {
    const pid_t master = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) {
      GW_LOG_ERROR("fork: {}; retrying in 1 s", std::strerror(errno));
      respawn_at_[w] = core::monotonic_ms() + 1000;
      return;
    }
    if (pid == 0) {
      // Child: if the master dies, drain and exit rather than serve unsupervised.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != master) ::_exit(0);  // the master died before prctl took effect
      ::prctl(PR_SET_NAME, fmt::format("gwd-worker-{}", w).c_str());
      core::log_set_role(fmt::format("worker {}", rows_[w]));
      // The worker's control signals stay blocked: one sent before its
      // signalfd exists is read from it, not lost (or fatal).
      sigset_t ctl;
      sigemptyset(&ctl);
      for (int s : {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&ctl, s);
      ::sigprocmask(SIG_SETMASK, &ctl, nullptr);
      std::vector<int> mine;
      for (size_t s = 0; s < fds_.size(); ++s)
        for (auto& fd : fds_[s]) {
          if (s == w) mine.push_back(fd.get());
          else fd.reset();
        }
      log_rd_.clear();
      for (size_t s = 0; s < log_wr_.size(); ++s)
        if (s != w) log_wr_[s].reset();
      if (w < log_wr_.size()) set_access_log_fd(log_wr_[w].get());
      admin_fd_.reset();  // the admin server's, not a worker's
      int rc = run_worker(cfg_, seg_, rows_[w], w, mine);
      ::_exit(rc);
    }
    pids_[w] = pid;
    started_ms_[w] = core::monotonic_ms();
    respawn_at_.erase(w);
  }

  // A helper child (the checker, the sync process, the admin server): forked
  // like a worker but without the workers' listening sockets (the admin
  // server gets its own, `fd`), respawned when it dies (after 1 s if it died
  // within a second of its start).
  struct Aux {
    const char* name;  // process name suffix and log role
    const char* what;  // for log lines
    int (*run)(const config::Config&, const shm::Segment&, int fd);
    int fd = -1;  // a listening socket it keeps (the admin server's), else -1
    bool wanted = false;
    pid_t pid = 0;
    uint64_t started_ms = 0;
    uint64_t respawn_at = 0;
  };

  std::array<Aux*, 4> auxes() { return {&checker_, &sync_, &logger_, &admin_}; }

  void spawn_aux(Aux& a) {
    const pid_t master = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) {
      GW_LOG_ERROR("fork ({}): {}; retrying in 1 s", a.what, std::strerror(errno));
      a.respawn_at = core::monotonic_ms() + 1000;
      return;
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != master) ::_exit(0);
      ::prctl(PR_SET_NAME, fmt::format("gwd-{}", a.name).c_str());
      core::log_set_role(a.name);
      // As in a worker, the control signals stay blocked until its signalfd
      // reads them: a SIGUSR1 the master passes on right after the fork (a
      // logrotate just after a reload or respawn) is a reopen, not a death.
      sigset_t ctl;
      sigemptyset(&ctl);
      for (int s : {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&ctl, s);
      ::sigprocmask(SIG_SETMASK, &ctl, nullptr);
      fds_.clear();  // it accepts nothing of the workers'
      log_wr_.clear();
      if (&a == &logger_) {
        admin_fd_.reset();  // the admin server's
        std::vector<int> socks;
        for (auto& fd : log_rd_) socks.push_back(fd.get());
        ::_exit(run_logger(socks, cfg_.access_log_paths, cfg_.log_file));
      }
      log_rd_.clear();
      if (a.fd < 0) admin_fd_.reset();
      ::_exit(a.run(cfg_, seg_, a.fd));
    }
    a.pid = pid;
    a.started_ms = core::monotonic_ms();
    a.respawn_at = 0;
  }

  // True if `pid` was that helper; respawns it.
  bool reap_aux(Aux& a, pid_t pid, int status, uint64_t now) {
    if (pid != a.pid) return false;
    a.pid = 0;
    if (stopping_) return true;
    const bool quick = died_at_start(now, a.started_ms);
    GW_LOG_WARN("{} (pid {}) {}; respawning{}", a.what, pid, exit_text(status), quick ? " in 1 s" : "");
    if (quick) a.respawn_at = now + 1000;
    else spawn_aux(a);
    return true;
  }

  void reap(uint64_t now) {
    for (;;) {
      int status = 0;
      pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) return;
      if (auto hook = hooks_.find(pid); hook != hooks_.end()) {
        hooks_.erase(hook);
        // Processes it started and left running keep its process group: ended
        // at the stop (stop_hooks), as the hook would have been.
        if (group_alive(pid)) hook_groups_[pid] = 0;
        else hooks_termed_.erase(pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) GW_LOG_WARN("hook pid {} {}", pid, exit_text(status));
        continue;
      }
      if (pid == upgrade_pid_) {
        upgrade_pid_ = 0;
        const std::string how = exit_text(status);
        const std::string said = upgrade_said();
        if (handed_over_) {
          GW_LOG_INFO("the new master (pid {}) {}", pid, how);
        } else if (stopping_) {
          // Stopped with this one (begin_stop): the segment is this master's
          // again until it exits (it names no master then).
          GW_LOG_INFO("binary upgrade: the new master (pid {}) stopped with this one: {}", pid, how);
          pid_t failed = pid;
          seg_.header().master_pid.compare_exchange_strong(failed, ::getpid(), std::memory_order_acq_rel);
        } else {
          GW_LOG_ERROR("binary upgrade failed: the new master (pid {}) {}{}; this one goes on serving", pid, how,
                       said.empty() ? "" : ": " + said);
          relisten();
          // It may have claimed the segment before it failed: gwctl refuses
          // changes while the master named there is gone. One that stopped
          // (a SIGTERM before the hand-over) cleared the name as it exited.
          pid_t failed = pid, cleared = 0;
          auto& named = seg_.header().master_pid;
          const bool claimed = named.compare_exchange_strong(failed, ::getpid(), std::memory_order_acq_rel) ||
                               named.compare_exchange_strong(cleared, ::getpid(), std::memory_order_acq_rel);
          // A new master that failed before it touched the segment (a bad
          // config, another ABI) left nothing to undo.
          if (claimed || !header_is_ours()) undo_failed_upgrade();
          else if (reload_after_upgrade_) {
            reload_after_upgrade_ = false;
            retry_reload_ = true;  // the SIGHUP that came meanwhile
          }
        }
        continue;
      }
      if (retiring_aux_.erase(pid)) {  // a helper of the configuration before a reload
        retiring_loggers_.erase(pid);
        continue;
      }
      if (auto old = retiring_.find(pid); old != retiring_.end()) {
        const uint32_t row = old->second.row;
        retiring_.erase(old);
        release_row(row, pid);
        GW_LOG_INFO("old worker (pid {}) {}; {} still draining", pid, exit_text(status), retiring_.size());
        retry_reload_ |= reload_pending_;
        continue;
      }
      if (reap_aux(checker_, pid, status, now) || reap_aux(sync_, pid, status, now) ||
          reap_aux(logger_, pid, status, now) || reap_aux(admin_, pid, status, now))
        continue;
      for (uint32_t w = 0; w < pids_.size(); ++w) {
        if (pids_[w] != pid) continue;
        pids_[w] = 0;
        release_row(rows_[w], pid);
        std::string how = exit_text(status);
        if (stopping_) {
          GW_LOG_INFO("worker {} (pid {}) {}", w, pid, how);
          break;
        }
        // Respawn at once, unless it keeps dying right after start.
        quick_deaths_[w] = died_at_start(now, started_ms_[w]) ? quick_deaths_[w] + 1 : 0;
        uint64_t delay = quick_deaths_[w] >= 3 ? 1000 : 0;
        GW_LOG_WARN("worker {} (pid {}) {}; respawning{}", w, pid, how, delay ? " in 1 s" : "");
        shm::emit_event(seg_, shm::EventKind::process, seg_.header().published.load() >> 1,
                        fmt::format("worker_respawned {} pid={} {}", w, pid, how));
        if (delay) respawn_at_[w] = now + delay;
        else spawn(w);
        break;
      }
    }
  }

  // A worker exited: its row's connection counts and limit_conn holds go,
  // unless another master's worker holds the row by now (a binary upgrade).
  void release_row(uint32_t row, pid_t pid) {
    pid_t seen = seg_.worker(row).pid.load(std::memory_order_acquire);
    if (seen != 0 && (seen != pid || !seg_.worker(row).pid.compare_exchange_strong(seen, 0, std::memory_order_acq_rel)))
      return;
    seg_.worker(row).pid.store(0, std::memory_order_release);
    seg_.worker(row).flags.store(0, std::memory_order_relaxed);
    shm::clear_worker_counters(seg_, row);
    api::LimitTable::release_worker(seg_, row);  // limit_conn counts of its connections
  }

  void respawn_due(uint64_t now) {
    if (stopping_) return;
    for (Aux* a : auxes())
      if (a->wanted && a->pid == 0 && a->respawn_at && now >= a->respawn_at) spawn_aux(*a);
    for (auto it = respawn_at_.begin(); it != respawn_at_.end();) {
      uint32_t w = it->first;
      if (now >= it->second && pids_[w] == 0) {
        it = respawn_at_.erase(it);
        spawn(w);
      } else {
        ++it;
      }
    }
  }

  // `from`: the signal's sender (the old master stops a new one that has not
  // taken over yet with itself).
  void begin_stop(bool graceful, uint64_t now, pid_t from = 0) {
    if (stopping_ && graceful) return;
    stopping_ = true;
    // A new master (binary upgrade) that stops does not hand over: the old
    // master serves on. Named before anything is signalled, so an old master
    // that takes a hand-over signal sent before this stop sees it (hand_over).
    seg_.header().stopping_master.store(::getpid());
    if (notify_parent_) {
      notify_parent_ = false;
      if (from > 0 && from == inherited_.parent)
        GW_LOG_INFO("binary upgrade: the old master (pid {}) stops; stopping this one with it", inherited_.parent);
      else
        GW_LOG_WARN("binary upgrade: stopping before the hand-over; the old master (pid {}) goes on serving",
                    inherited_.parent);
    }
    // Close the master's copies of the listening sockets first: once the
    // workers close theirs, the kernel stops queueing new connections.
    fds_.clear();
    admin_fd_.reset();
    GW_LOG_INFO("{}: stopping {}",
                handed_over_ ? "binary upgrade"
                : graceful   ? "SIGTERM"
                             : "SIGINT/SIGQUIT",
                graceful ? "gracefully" : "now");
    for (pid_t p : pids_)
      if (p > 0) ::kill(p, graceful ? SIGTERM : SIGQUIT);
    // A new master (binary upgrade) that has not taken over yet stops too, as
    // this one does: the operator stops gwd, not one of its two masters.
    if (upgrade_pid_ > 0 && !handed_over_) {
      GW_LOG_INFO("binary upgrade: stopping the new master (pid {}) too", upgrade_pid_);
      ::kill(upgrade_pid_, graceful ? SIGTERM : SIGQUIT);
    }
    // Old workers of a reload drain already, within their own limit: a
    // graceful stop holds them to shutdown_timeout_ms too, if that ends
    // sooner (the worker decides); a fast stop ends them.
    for (const auto& [p, r] : retiring_) ::kill(p, graceful ? SIGTERM : SIGQUIT);
    // Old helpers stop now, but an old logger (told to stop at the reload)
    // still writes the draining workers' last lines on a graceful stop.
    for (const auto& [p, t] : retiring_aux_)
      if (!graceful || !retiring_loggers_.count(p)) ::kill(p, SIGQUIT);
    for (Aux* a : {&checker_, &sync_})
      if (a->pid > 0) ::kill(a->pid, SIGQUIT);  // nothing to drain
    // The admin server answers the requests under way (a graceful stop).
    if (admin_.pid > 0) ::kill(admin_.pid, graceful ? SIGTERM : SIGQUIT);
    // The logger writes the workers' last lines and exits when they have all
    // closed their ends (the master's copies go now).
    log_wr_.clear();
    if (logger_.pid > 0) ::kill(logger_.pid, SIGTERM);
    // A SIGTERM holds every worker to shutdown_timeout_ms (it was the longer
    // of that and worker_shutdown_timeout_ms, which applies to reloads only:
    // one hung worker made a stop with 1 s and 20 s take 22 s).
    kill_deadline_ms_ = now + (graceful ? cfg_.shutdown_timeout_ms + 2000 : 2000);
    // Running hooks may finish while the connections drain; a fast stop ends
    // them now (stop_hooks). (A fast stop after a graceful one comes sooner.)
    const uint64_t hooks_end = graceful ? now + cfg_.shutdown_timeout_ms : now;
    hooks_stop_at_ = hooks_stop_at_ ? std::min(hooks_stop_at_, hooks_end) : hooks_end;
    // Old workers of a reload: the sooner of their drain's end and their own
    // config's shutdown_timeout_ms, which may be longer than this one's.
    if (graceful)
      for (const auto& [p, r] : retiring_)
        kill_deadline_ms_ = std::max(kill_deadline_ms_, std::min(r.kill_at, now + r.shutdown_ms + 2000));
  }

  void log_events() {
    uint64_t head = seg_.header().event_head.load(std::memory_order_acquire);
    // Entries older than the ring are overwritten: never walk more than one
    // ring's worth (a head that jumped, from a buggy or foreign writer, would
    // otherwise keep this loop going for as long as the numbers differ).
    uint64_t overwritten = 0, unfinished = 0;
    if (head > event_cursor_ && head - event_cursor_ > shm::kEventCapacity) {
      overwritten += head - shm::kEventCapacity - event_cursor_;
      event_cursor_ = head - shm::kEventCapacity;
    }
    while (event_cursor_ < head) {
      shm::EventData e{};
      auto r = shm::read_event(seg_, event_cursor_, e);
      if (r == shm::EventRead::not_yet && ++stuck_rounds_ < 20) break;  // being written; next round
      // (an entry still unwritten after 2 s belongs to a writer that died: skip it)
      stuck_rounds_ = 0;
      if (r == shm::EventRead::ok) {
        if (e.pid != ::getpid() && e.kind != static_cast<uint32_t>(shm::EventKind::health))
          GW_LOG_INFO("event: {}", e.text);   // workers and the checker log their own health events
        if (!handed_over_) run_hook(e.text);  // after a binary upgrade, the new master runs them
      } else if (r == shm::EventRead::lost) {
        ++overwritten;
      } else {
        ++unfinished;
      }
      ++event_cursor_;
    }
    // Such events were neither logged here nor given their hooks: say so (a
    // host_down hook that silently did not run is a page that never came).
    if (overwritten)
      GW_LOG_WARN(
          "{} event(s) written over in the event ring ({} entries) before the master read them: not "
          "logged, and no hook ran for them",
          overwritten, shm::kEventCapacity);
    if (unfinished)
      GW_LOG_WARN(
          "{} event(s) never finished by their writer (killed while writing one): not logged, and no hook "
          "ran for them",
          unfinished);
  }

  // Hooks: "host_down app/primary/a 127.0.0.1:8081 (...)" runs hooks.host_down
  // with GW_EVENT, GW_UPSTREAM, GW_POOL, GW_HOST and GW_ADDRESS set. The master
  // forks and never waits for it: a slow hook is killed after kHookTimeoutMs,
  // and at most kMaxHooks run at once (the next wait in queued_hooks_). On a
  // stop the master waits for the running ones until hooks_stop_at_, then
  // ends them (stop_hooks): no hook outlives gwd.
  static constexpr uint64_t kHookTimeoutMs = 60000;
  static constexpr size_t kMaxHooks = 32;
  static constexpr size_t kMaxQueuedHooks = 4096;     // events whose hooks wait for one of the 32 to end
  static constexpr uint64_t kHookKillAfterMs = 2000;  // on a stop: SIGTERM, then SIGKILL this much later

  void run_hook(std::string_view text) {
    std::string_view kind = text.substr(0, text.find(' '));
    const std::string& cmd = kind == "host_down" ? cfg_.hook_host_down : kind == "host_up" ? cfg_.hook_host_up : empty_;
    if (cmd.empty()) return;
    if (stopping_ && core::monotonic_ms() >= hooks_stop_at_) {
      GW_LOG_WARN("hook for \"{}\" not run: gwd is stopping and no longer waits for hooks", text);
      return;
    }
    std::string_view rest = text.substr(std::min(text.size(), kind.size() + 1));
    std::string_view path = rest.substr(0, rest.find(' '));
    size_t s1 = path.find('/'), s2 = path.find('/', s1 == std::string_view::npos ? path.size() : s1 + 1);
    if (s1 == std::string_view::npos || s2 == std::string_view::npos) return;
    // kMaxHooks running: the event waits its turn, in order, rather than
    // being dropped (a flapping pool of 100 hosts must still page 100 times).
    if (hooks_.size() >= kMaxHooks || !queued_hooks_.empty()) {
      if (queued_hooks_.size() >= kMaxQueuedHooks) {
        GW_LOG_WARN("hook for \"{}\" not run: {} hooks are running and {} are waiting", text, hooks_.size(),
                    queued_hooks_.size());
        return;
      }
      if (queued_hooks_.empty())
        GW_LOG_WARN("{} hooks are running: the next ones wait for them to end (at most {})", hooks_.size(),
                    kMaxQueuedHooks);
      queued_hooks_.emplace_back(text);
      return;
    }
    start_hook(text, kind, cmd);
  }

  // Starts queued hooks while fewer than kMaxHooks run; past the point a stop
  // waits for hooks, says how many of them will not run.
  void run_queued_hooks() {
    if (queued_hooks_.empty()) return;
    if (stopping_ && core::monotonic_ms() >= hooks_stop_at_) {
      GW_LOG_WARN("{} queued hook(s) not run: gwd is stopping and no longer waits for hooks (the first: \"{}\")",
                  queued_hooks_.size(), queued_hooks_.front());
      queued_hooks_.clear();
      return;
    }
    while (hooks_.size() < kMaxHooks && !queued_hooks_.empty()) {
      const std::string text = std::move(queued_hooks_.front());
      queued_hooks_.pop_front();
      std::string_view kind = std::string_view(text).substr(0, text.find(' '));
      start_hook(text, kind, kind == "host_down" ? cfg_.hook_host_down : cfg_.hook_host_up);
    }
  }

  void start_hook(std::string_view text, std::string_view kind, const std::string& cmd) {
    std::string_view rest = text.substr(std::min(text.size(), kind.size() + 1));
    std::string_view path = rest.substr(0, rest.find(' '));
    std::string_view tail = rest.substr(std::min(rest.size(), path.size() + 1));
    std::string_view address = tail.substr(0, tail.find(' '));
    size_t s1 = path.find('/'), s2 = path.find('/', s1 + 1);
    std::string env[] = {fmt::format("GW_EVENT={}", kind), fmt::format("GW_UPSTREAM={}", path.substr(0, s1)),
                         fmt::format("GW_POOL={}", path.substr(s1 + 1, s2 - s1 - 1)),
                         fmt::format("GW_HOST={}", path.substr(s2 + 1)), fmt::format("GW_ADDRESS={}", address)};
    pid_t pid = ::fork();
    if (pid < 0) {
      GW_LOG_ERROR("hook for \"{}\": fork: {}", text, std::strerror(errno));
      return;
    }
    if (pid == 0) {
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      // An ignored signal stays ignored across exec (and a shell cannot trap
      // one ignored at its start): the hook gets SIGPIPE back, so that
      // `producer | head -1` ends the producer, as in a shell started by hand.
      ::signal(SIGPIPE, SIG_DFL);
      fds_.clear();
      admin_fd_.reset();
      ::setsid();
      for (auto& kv : env) ::putenv(kv.data());
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    hooks_[pid] = core::monotonic_ms();
  }

  // Whether process group `pgid` has a member (a zombie counts until reaped).
  static bool group_alive(pid_t pgid) { return ::kill(-pgid, 0) == 0 || errno == EPERM; }

  void expire_hooks() {
    const uint64_t now = core::monotonic_ms();  // hooks may have started after the loop's `now`
    // Groups whose last member exited: forgotten (their number is free again).
    for (auto it = hook_groups_.begin(); it != hook_groups_.end();)
      if (group_alive(it->first)) {
        ++it;
      } else {
        hooks_termed_.erase(it->first);
        it = hook_groups_.erase(it);
      }
    for (auto& [pid, started] : hooks_)
      if (now > started + kHookTimeoutMs) {
        GW_LOG_WARN("hook pid {} ran for over {} ms; killing it", pid, kHookTimeoutMs);
        ::kill(-pid, SIGKILL);
        started = now;  // reaped through SIGCHLD
      }
  }

  // Stopping: from hooks_stop_at_ on, a hook still running gets SIGTERM, and
  // SIGKILL kHookKillAfterMs later, each to its process group (the hook runs
  // in a session of its own: what it started goes too). The master exits once
  // they are reaped. What an exited hook left running in its group is not
  // waited for: it gets the same from hooks_stop_at_ or once nothing else
  // keeps the master (`only_groups_left`), and the master exits when the
  // group is empty, or kHookKillAfterMs after its SIGKILL at the latest.
  void stop_hooks(uint64_t now, bool only_groups_left) {
    expire_hooks();  // (groups emptied since the last look)
    if (now < hooks_stop_at_ && !(only_groups_left && !hook_groups_.empty())) return;
    for (const auto& [pid, started] : hooks_) signal_hook_group(pid, false, now);
    for (auto it = hook_groups_.begin(); it != hook_groups_.end();) {
      if (signal_hook_group(it->first, true, now)) {
        ++it;
        continue;
      }
      if (it->second == 0) it->second = now + kHookKillAfterMs;
      if (now < it->second) {
        ++it;
        continue;
      }
      // Members that SIGKILL did not end (in an uninterruptible sleep, or
      // zombies of a process of the group that does not reap them).
      GW_LOG_WARN("what hook pid {} left running is still there {} ms after SIGKILL; not waiting for it", it->first,
                  kHookKillAfterMs);
      hooks_termed_.erase(it->first);
      it = hook_groups_.erase(it);
    }
  }

  // SIGTERM to the process group of hook `pgid` once, SIGKILL kHookKillAfterMs
  // later; false once SIGKILL was sent.
  bool signal_hook_group(pid_t pgid, bool leftover, uint64_t now) {
    const std::string what =
        leftover ? fmt::format("what hook pid {} left is", pgid) : fmt::format("hook pid {}", pgid);
    auto [it, first] = hooks_termed_.try_emplace(pgid, now + kHookKillAfterMs);
    if (first) {
      GW_LOG_WARN("{} still running at the stop; sending it SIGTERM", what);
      ::kill(-pgid, SIGTERM);
    } else if (it->second != 0 && now >= it->second) {
      GW_LOG_WARN("{} still running {} ms after SIGTERM; killing it", what, kHookKillAfterMs);
      ::kill(-pgid, SIGKILL);
      it->second = 0;  // reaped through SIGCHLD
    }
    return it->second != 0;
  }

  config::Config cfg_;  // the running configuration (a reload replaces it)
  shm::Segment seg_;
  std::vector<uint32_t> rows_;  // by worker slot: the shm row of its worker (stats, counters)
  struct Retiring {
    uint32_t row;          // its shm row, free again when it exits
    uint64_t kill_at;      // SIGKILL if still running then
    uint64_t shutdown_ms;  // its config's shutdown_timeout_ms: a SIGTERM's limit for it
  };
  std::map<pid_t, Retiring> retiring_;      // workers of a configuration before a reload, draining
  std::map<pid_t, uint64_t> retiring_aux_;  // helpers of one, stopping → kill deadline
  std::set<pid_t> retiring_loggers_;        // ...of which loggers (they drain, as workers do)
  uint64_t pending_check_ms_ = 0;           // reload_pending_: when free rows are looked for again
  size_t pending_workers_ = 0;              // ...and how many the deferred reload needs
  bool reload_after_upgrade_ = false;       // a SIGHUP came during a binary upgrade
  std::vector<std::string> argv_;           // gwd's command line, executed on SIGUSR2
  int lock_fd_;                             // the instance lock (passed on to a new master)
  Inherited inherited_;                     // from the old master, after a binary upgrade
  ListenerRowTimes row_free_at_;            // when each listener stats row is free again (publish_listeners)
  static constexpr uint64_t kHandOverAgainMs = 1000;
  static constexpr uint64_t kUpgradeWarnMs = 10000;  // old master: how often a new master not taking over is said
  uint64_t handover_again_ms_ = 0;                   // new master: when the hand-over signal goes again (0: not)
  bool handover_resent_ = false;                     // ...and whether that was logged
  bool notify_parent_ = false;                       // new master: tell the old one when the workers run
  pid_t upgrade_pid_ = 0;                            // old master: the new master it started
  uint64_t upgrade_started_ms_ = 0;                  // old master: when (monotonic)
  uint64_t upgrade_warn_ms_ = 0;       // old master: when it says again that the new one has not taken over
  core::UniqueFd upgrade_err_;         // old master: the read end of the new master's pipe for its failure
  bool handed_over_ = false;           // old master: the new one serves; this one stops
  bool reload_pending_ = false;        // a reload waits for rows that draining workers hold
  uint64_t reload_lock_since_ms_ = 0;  // ...or for the shm writer lock, since then (0: not)
  bool retry_reload_ = false;          // ...and one of them just exited
  std::vector<std::vector<core::UniqueFd>> fds_;
  std::vector<pid_t> pids_;
  std::vector<uint64_t> started_ms_;
  std::vector<uint32_t> quick_deaths_;
  std::map<uint32_t, uint64_t> respawn_at_;
  bool stopping_ = false;
  uint64_t kill_deadline_ms_ = 0;
  uint64_t event_cursor_ = 0;
  int stuck_rounds_ = 0;
  std::map<pid_t, uint64_t> hooks_;         // running hook → start time
  std::deque<std::string> queued_hooks_;    // events whose hooks wait for a free run (kMaxHooks)
  std::map<pid_t, uint64_t> hook_groups_;   // process group of an exited hook, still with members → 0, or
                                            // (stopping, SIGKILL sent) when no longer waited for
  std::map<pid_t, uint64_t> hooks_termed_;  // hook groups sent SIGTERM at the stop → when SIGKILL is due (0: sent)
  uint64_t hooks_stop_at_ = 0;              // stopping: when running hooks are no longer waited for
  const std::string empty_;
  core::UniqueFd admin_fd_;  // the admin server's listening socket
  Aux checker_{"checker", "health checker",
               [](const config::Config& c, const shm::Segment& s, int) { return run_checker(c, s); }};
  Aux sync_{"sync", "etcd sync process",
            [](const config::Config& c, const shm::Segment& s, int) { return run_sync(c, s); }};
  Aux logger_{"logger", "access logger", nullptr};  // runs run_logger (see spawn_aux)
  Aux admin_{"admin", "admin server", &run_admin};
  std::vector<core::UniqueFd> log_rd_, log_wr_;  // access-log sockets by worker slot: logger / worker ends
};

}  // namespace

// Whether `pid` runs (a zombie, killed and not yet reaped, does not).
bool process_runs(pid_t pid) {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno != EPERM)) return false;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  core::UniqueFd f(::open(path, O_RDONLY | O_CLOEXEC));
  char buf[512];
  const ssize_t n = f ? ::read(f.get(), buf, sizeof(buf) - 1) : -1;
  if (n <= 0) return true;  // cannot tell: as running
  buf[n] = '\0';
  const char* close = std::strrchr(buf, ')');  // "PID (COMM) STATE ..."; COMM may hold anything
  return !(close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X'));
}

// The lock of shm `name` is held. By a running master, or by a segment this
// gwd cannot read: refused at once. By the workers (and helpers) of a master
// that is gone (SIGKILL, the OOM killer): they finish their connections, for
// up to their shutdown_timeout_ms, and exit. A new master waits for them, with
// a line every 5 s, up to this config's shutdown_timeout_ms + 10 s: a restart
// by systemd after such a death must not fail while they drain. Returns false
// if a stop signal came meanwhile.
bool wait_for_lock(int fd, const config::Config& cfg) {
  const std::string refused = fmt::format(
      "another gwd is running with shm \"{}\"{}; stop it first, or give this one another shm.name", cfg.shm.name, "{}");
  const uint64_t start = core::monotonic_ms(), limit = uint64_t{cfg.shutdown_timeout_ms} + 10000;
  uint64_t next_log = start;
  sigset_t stop;
  sigemptyset(&stop);
  for (int s : {SIGTERM, SIGINT, SIGQUIT}) sigaddset(&stop, s);
  for (;;) {
    pid_t master = -1;
    std::vector<pid_t> left;
    try {
      shm::Segment seg = shm::Segment::attach(cfg.shm.name);
      const pid_t m = seg.header().master_pid.load(std::memory_order_acquire);
      master = process_runs(m) ? m : 0;
      for (uint32_t r = 0; r < shm::kMaxWorkers; ++r)
        if (const pid_t p = seg.worker(r).pid.load(std::memory_order_acquire); process_runs(p)) left.push_back(p);
    } catch (const std::exception&) {
    }
    if (master > 0)
      throw std::runtime_error(fmt::format(fmt::runtime(refused), fmt::format(" (master pid {})", master)));
    if (master < 0)
      throw std::runtime_error(fmt::format(
          fmt::runtime(refused), " (its lock /dev/shm/" + cfg.shm.name + ".lock is held; the segment cannot be read)"));
    const std::string who = left.empty() ? "its processes" : fmt::format("its workers (pid {})", fmt::join(left, ", "));
    const uint64_t now = core::monotonic_ms();
    if (now - start >= limit)
      throw std::runtime_error(fmt::format(
          "the master of shm \"{}\" is gone, but {} still hold its lock after {} s (shutdown_timeout_ms + 10 s); "
          "stop them, or give this gwd another shm.name",
          cfg.shm.name, who, (now - start) / 1000));
    if (now >= next_log) {
      GW_LOG_WARN(
          "the master of shm \"{}\" is gone (killed?), and {} finish their connections; waiting for them to exit "
          "({} s so far, at most {} s)",
          cfg.shm.name, who, (now - start) / 1000, limit / 1000);
      next_log = now + 5000;
    }
    const timespec tick{0, 100'000'000};
    if (const int sig = ::sigtimedwait(&stop, nullptr, &tick); sig > 0) {
      GW_LOG_INFO("{} while waiting for the processes of the gwd that was killed: not started", ::strsignal(sig));
      return false;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      GW_LOG_INFO("the processes of the gwd that was killed are gone ({} ms); starting", core::monotonic_ms() - start);
      return true;
    }
  }
}

int run_master(const config::Config& cfg, const std::vector<std::string>& argv) {
  // The control signals wait (in the master's sigtimedwait) from the first
  // moment: a SIGHUP or SIGUSR1 sent while the segment and the sockets are
  // set up would otherwise kill gwd by their default action.
  {
    sigset_t ctl;
    sigemptyset(&ctl);
    for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&ctl, s);
    ::sigprocmask(SIG_BLOCK, &ctl, nullptr);
  }
  // A binary upgrade: what the old master passed on (and no one after us sees it).
  Inherited inherited;
  if (const char* up = ::getenv(kUpgradeEnv)) {
    inherited = parse_inherited(up);
    upgrade_err_fd();  // (looked up before the variable goes)
    ::unsetenv(kUpgradeEnv);
  }
  // One gwd per shm name: an flock held for the life of the master and, through
  // fork, of its workers and checker. Two masters started at once cannot both
  // pass, and a new master waits out the workers of one that was killed. A
  // master started by a binary upgrade shares the old master's lock (the same
  // open file, inherited).
  core::UniqueFd lock(inherited.parent > 0
                          ? inherited.lock_fd
                          : ::shm_open(("/" + cfg.shm.name + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock)
    throw std::runtime_error(
        fmt::format("cannot open the lock /dev/shm/{}.lock: {}", cfg.shm.name, std::strerror(errno)));
  ::fcntl(lock.get(), F_SETFD, FD_CLOEXEC);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0 && !wait_for_lock(lock.get(), cfg)) return 0;
  // As nginx's worker_rlimit_nofile: the relay needs two descriptors per connection.
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  config::Config effective = effective_config(cfg);
  preflight(effective, inherited);
  ListenerRowTimes row_free_at{};
  shm::Segment seg = prepare_segment(effective, inherited.parent, &row_free_at, inherited.rows);
  // The command line for a later upgrade: argv[0] made absolute if it is a
  // path (gwd may be started from another directory than the next one's).
  std::vector<std::string> args = argv;
  if (!args.empty() && args[0].find('/') != std::string::npos) args[0] = std::filesystem::absolute(args[0]).string();
  Master m(std::move(effective), std::move(seg), std::move(args), lock.get(), std::move(inherited), row_free_at);
  return m.run();
}

}  // namespace gw::process
