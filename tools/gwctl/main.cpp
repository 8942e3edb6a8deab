// gwctl: changes the routing table of a running gateway through shm, live,
// and shows its state. Verb-noun commands; one line on stderr and a non-zero
// exit for every error; a change is applied whole or not at all.

#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <iterator>
#include <cstdio>
#include <optional>
#include <thread>

#include "gw/cluster/etcd.hpp"
#include "gw/cluster/schema.hpp"
#include "gw/config/config.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/net/socket.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/http_proxy.hpp"
#include "gw/shm/state_file.hpp"

#include "gw/shm/cluster.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/writer.hpp"

namespace {

using gw::shm::name_of;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string shm;
  std::string config;
  bool json = false;
  bool follow = false;
  std::string path;  // UPSTREAM/POOL or UPSTREAM
  std::string id;
  std::string address;
  std::string weight;
  std::string priority;
  std::string method;
  // rules
  std::string listener, route, upstream, ip, ip_file, header, cookie, percent;

  std::vector<std::string> etcd;  // --etcd URL[,URL...]: write to etcd instead of shm
  std::string prefix;             // --prefix (default: the config's cluster.prefix, else /gw/)
  std::string timeout_ms = "1000";  // check: connect timeout per listener
};

std::string json_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", static_cast<int>(c));
    else out += c;
  }
  return out;
}

std::string shm_name(const Options& o) {
  if (!o.shm.empty() && !o.config.empty()) throw Failure("give either --shm or -c, not both");
  if (!o.shm.empty()) return o.shm;
  if (!o.config.empty()) {
    auto r = gw::config::load_file(o.config);
    if (!r.ok()) throw Failure(fmt::format("{}: {} (and {} more error(s))", o.config, r.errors[0], r.errors.size() - 1));
    return r.config.shm.name;
  }
  return "gw";
}

// shared: the change is to pools or hosts, which a clustered gateway takes
// from etcd (rules stay local to each node).
gw::shm::Segment attach(const Options& o, bool need_master, bool shared = true) {
  std::string name = shm_name(o);
  gw::shm::Segment seg = gw::shm::Segment::attach(name);
  if (need_master && !seg.master_alive()) {
    int pid = seg.header().master_pid.load();
    throw Failure(pid ? fmt::format("no running gateway on shm \"{}\" (its master, pid {}, is gone)", name, pid)
                      : fmt::format("no running gateway on shm \"{}\" (gwd was stopped)", name));
  }
  // need_master: a change. etcd is the source of truth of a clustered gateway:
  // a local change would be undone by the next etcd change.
  if (need_master && shared && seg.header().cluster.state.load() != gw::shm::kClusterOff)
    throw Failure(fmt::format("the gateway on shm \"{}\" takes its pools and hosts from etcd (cluster in its config); "
                              "change them with gwctl --etcd URL ...",
                              name));
  return seg;
}

uint32_t parse_u32(const std::string& s, const char* what, uint32_t lo, uint32_t hi) {
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < lo || v > hi)
    throw Failure(fmt::format("{} must be an integer {}..{}, got \"{}\"", what, lo, hi, s));
  return v;
}

int32_t parse_i32(const std::string& s, const char* what) {
  int32_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < -1000000 || v > 1000000)
    throw Failure(fmt::format("{} must be an integer -1000000..1000000, got \"{}\"", what, s));
  return v;
}

gw::shm::Method parse_method_arg(const std::string& s) {
  gw::shm::Method m;
  if (!gw::shm::parse_method(s, m))
    throw Failure(fmt::format("unknown method \"{}\" (known: {})", s, gw::shm::method_names()));
  return m;
}

// "app/primary" → ("app", "primary")
std::pair<std::string, std::string> split_pool(const std::string& s) {
  auto slash = s.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == s.size() || s.find('/', slash + 1) != std::string::npos)
    throw Failure(fmt::format("expected UPSTREAM/POOL, got \"{}\"", s));
  return {s.substr(0, slash), s.substr(slash + 1)};
}

int find_upstream(const gw::shm::Table& t, const std::string& u) {
  int i = t.find_upstream(u);
  if (i < 0) throw gw::shm::TableError(fmt::format("unknown upstream \"{}\"", u));
  return i;
}
int find_pool(const gw::shm::Table& t, const std::string& u, const std::string& p) {
  int i = t.find_pool(find_upstream(t, u), p);
  if (i < 0) throw gw::shm::TableError(fmt::format("unknown pool \"{}/{}\"", u, p));
  return i;
}
int find_host(const gw::shm::Table& t, const std::string& u, const std::string& p, const std::string& h) {
  int i = t.find_host(find_pool(t, u, p), h);
  if (i < 0) throw gw::shm::TableError(fmt::format("unknown host \"{}/{}/{}\"", u, p, h));
  return i;
}

// The matchers and upstream of a rule from --ip, --ip-file, --header,
// --cookie, --percent and --upstream.
gw::shm::RuleSpec rule_from_options(const Options& o) {
  gw::shm::RuleSpec r;
  r.id = o.id;
  r.upstream = o.upstream;
  if (o.upstream.empty()) throw Failure("a rule needs --upstream NAME (where matching requests go)");
  auto add_cidrs = [&](std::string_view list, const std::string& where) {
    size_t i = 0;
    while (i <= list.size()) {
      size_t j = list.find_first_of(", \t\r\n", i);
      if (j == std::string_view::npos) j = list.size();
      std::string_view item = list.substr(i, j - i);
      if (!item.empty() && item.front() != '#') {
        gw::core::Cidr c;
        std::string why;
        if (!gw::core::parse_cidr(item, c, why)) throw Failure(fmt::format("{}: bad address \"{}\": {}", where, item, why));
        r.cidrs.push_back(c);
      }
      i = j + 1;
    }
  };
  if (!o.ip.empty()) add_cidrs(o.ip, "--ip");
  if (!o.ip_file.empty()) {
    std::FILE* f = std::fopen(o.ip_file.c_str(), "r");
    if (!f) throw Failure(fmt::format("--ip-file {}: {}", o.ip_file, std::strerror(errno)));
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
    std::fclose(f);
    // One block per line; '#' starts a comment line.
    std::string cleaned;
    size_t i = 0;
    while (i < text.size()) {
      size_t j = text.find('\n', i);
      if (j == std::string::npos) j = text.size();
      std::string line = text.substr(i, j - i);
      if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
      cleaned += line + "\n";
      i = j + 1;
    }
    add_cidrs(cleaned, "--ip-file " + o.ip_file);
    if (r.cidrs.empty()) throw Failure(fmt::format("--ip-file {}: no address in it", o.ip_file));
  }
  auto name_value = [](const std::string& s, const char* opt, std::string& name, std::string& value) {
    auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) throw Failure(fmt::format("{} expects NAME=VALUE, got \"{}\"", opt, s));
    name = s.substr(0, eq);
    value = s.substr(eq + 1);
  };
  if (!o.header.empty()) name_value(o.header, "--header", r.header_name, r.header_value);
  if (!o.cookie.empty()) name_value(o.cookie, "--cookie", r.cookie_name, r.cookie_value);
  if (!o.percent.empty()) {
    double pct = -1;
    auto [end, ec] = std::from_chars(o.percent.data(), o.percent.data() + o.percent.size(), pct);
    if (ec != std::errc() || end != o.percent.data() + o.percent.size() || !(pct >= 0 && pct <= 100))  // NaN too
      throw Failure(fmt::format("--percent must be a number 0..100, got \"{}\"", o.percent));
    r.percent_bp = static_cast<int32_t>(pct * 100 + 0.5);
  }
  if (auto why = gw::shm::check_rule(r); !why.empty()) throw Failure(why);
  return r;
}

int find_route(const gw::shm::Table& t, const std::string& l, const std::string& r) {
  int i = t.find_route(l, r);
  if (i < 0) {
    bool listener = false;
    for (const auto& rr : t.routes()) listener |= name_of(rr.listener) == l;
    throw gw::shm::TableError(listener ? fmt::format("listener \"{}\" has no route \"{}\"", l, r)
                                       : fmt::format("unknown listener \"{}\" (or it is not an http listener)", l));
  }
  return i;
}
int find_rule(const gw::shm::Table& t, const std::string& l, const std::string& r, const std::string& id) {
  int i = t.find_rule(find_route(t, l, r), id);
  if (i < 0) throw gw::shm::TableError(fmt::format("unknown rule \"{}/{}/{}\"", l, r, id));
  return i;
}

int commit(const Options& o, const gw::shm::Writer::Change& change, const std::string& what, bool shared = true) {
  gw::shm::Segment seg = attach(o, true, shared);
  gw::shm::Writer w(seg);
  uint64_t gen = w.commit(change);
  fmt::print("ok: {} (generation {})\n", what, gen);
  return 0;
}

// ---------------------------------------------------------------- gwctl --etcd
//
// Every change reads the keys it depends on, then writes with one txn whose
// compares say "nothing I read has changed" (mod_revision equal, or
// create_revision 0 for a key that must not exist yet). Two operators changing
// the same thing at once: one txn fails, and that gwctl says so and changes
// nothing. Changes to different keys both land.

struct EtcdCtl {
  gw::cluster::Etcd etcd;
  std::string prefix;
};

EtcdCtl etcd_ctl(const Options& o) {
  std::vector<std::string> urls;
  std::vector<gw::core::SockAddr> addrs;
  for (const auto& arg : o.etcd) {
    size_t start = 0;
    for (;;) {
      size_t comma = arg.find(',', start);
      std::string url = arg.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      gw::core::SockAddr a;
      std::string why;
      if (!gw::core::parse_http_url(url, a, why)) throw Failure(fmt::format("--etcd \"{}\": {}", url, why));
      urls.push_back(url);
      addrs.push_back(a);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  std::string prefix = o.prefix;
  if (prefix.empty() && !o.config.empty()) {
    auto r = gw::config::load_file(o.config);
    if (!r.ok()) throw Failure(fmt::format("{}: {}", o.config, r.errors[0]));
    if (r.config.cluster.enabled) prefix = r.config.cluster.prefix;
  }
  if (prefix.empty()) prefix = "/gw/";
  bool ok = prefix.size() >= 2 && prefix.size() <= 128 && prefix.front() == '/' && prefix.back() == '/';
  for (char ch : prefix) ok &= ch > ' ' && ch < 0x7f;
  if (!ok) throw Failure(fmt::format("--prefix must be 2..128 printable characters starting and ending with /, got \"{}\"", prefix));
  return {gw::cluster::Etcd(urls, addrs, 3000, 5000), prefix};
}

std::optional<gw::cluster::KeyValue> etcd_get(EtcdCtl& c, const std::string& key) {
  auto r = c.etcd.range(key);
  if (r.kvs.empty()) return std::nullopt;
  return r.kvs[0];
}

// Tests widen the window between the read and the txn to make two writers
// overlap for sure (GW_TEST_ETCD_TXN_DELAY_MS).
void test_delay() {
  if (const char* d = std::getenv("GW_TEST_ETCD_TXN_DELAY_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(d)));
}

[[noreturn]] void conflict(const std::string& what, const std::string& key) {
  throw Failure(fmt::format("{}: etcd key {} was changed by another writer while this command ran; nothing was "
                            "changed, run it again",
                            what, key));
}

gw::cluster::KeyValue etcd_pool(EtcdCtl& c, const std::string& u, const std::string& p) {
  if (auto kv = etcd_get(c, gw::cluster::pool_key(c.prefix, u, p))) return *kv;
  if (!etcd_get(c, gw::cluster::upstream_key(c.prefix, u)))
    throw gw::shm::TableError(fmt::format("unknown upstream \"{}\" in etcd (prefix {})", u, c.prefix));
  throw gw::shm::TableError(fmt::format("unknown pool \"{}/{}\" in etcd", u, p));
}

gw::cluster::KeyValue etcd_host(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h) {
  if (auto kv = etcd_get(c, gw::cluster::host_key(c.prefix, u, p, h))) return *kv;
  etcd_pool(c, u, p);
  throw gw::shm::TableError(fmt::format("unknown host \"{}/{}/{}\" in etcd", u, p, h));
}

template <typename Spec, typename Decode>
Spec decode_or_fail(const gw::cluster::KeyValue& kv, Decode decode) {
  Spec spec;
  std::string why;
  if (!decode(kv.value, spec, why)) throw Failure(fmt::format("etcd key {} holds an invalid value: {}", kv.key, why));
  return spec;
}

void check_names(std::initializer_list<std::pair<const char*, const std::string*>> names) {
  for (auto [what, name] : names)
    if (auto why = gw::shm::check_name(*name); !why.empty()) throw Failure(fmt::format("{} \"{}\" {}", what, *name, why));
}

int etcd_done(const std::string& what, int64_t rev) {
  fmt::print("ok: {} (etcd revision {})\n", what, rev);
  return 0;
}

using gw::cluster::Compare;
using Target = gw::cluster::Compare::Target;

int etcd_add_host(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h,
                  const gw::core::SockAddr& addr, uint32_t weight) {
  check_names({{"upstream name", &u}, {"pool id", &p}, {"host id", &h}});
  const std::string what = fmt::format("add host {}/{}/{} {} weight={}", u, p, h, addr.to_string(), weight);
  const std::string hk = gw::cluster::host_key(c.prefix, u, p, h);
  auto pool = etcd_pool(c, u, p);
  if (etcd_get(c, hk)) throw gw::shm::TableError(fmt::format("host {}/{}/{} already exists", u, p, h));
  test_delay();
  auto r = c.etcd.txn({{hk, "", Target::create_revision, 0}, {pool.key, "", Target::create_revision, pool.create_revision}},
                      {{false, hk, gw::cluster::encode_host({addr, weight, false})}});
  if (!r.succeeded) {
    if (etcd_get(c, hk))
      throw gw::shm::TableError(fmt::format("host {}/{}/{} already exists (another writer added it meanwhile)", u, p, h));
    conflict(what, pool.key);
  }
  return etcd_done(what, r.revision);
}

int etcd_remove_host(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h) {
  check_names({{"upstream name", &u}, {"pool id", &p}, {"host id", &h}});
  const std::string what = fmt::format("remove host {}/{}/{}", u, p, h);
  auto kv = etcd_host(c, u, p, h);
  test_delay();
  auto r = c.etcd.txn({{kv.key, "", Target::mod_revision, kv.mod_revision}}, {{true, kv.key, ""}});
  if (!r.succeeded) conflict(what, kv.key);
  return etcd_done(what, r.revision);
}

int etcd_down_up(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h, bool down) {
  check_names({{"upstream name", &u}, {"pool id", &p}, {"host id", &h}});
  const std::string what = fmt::format("{} host {}/{}/{}", down ? "down" : "up", u, p, h);
  auto kv = etcd_host(c, u, p, h);
  auto spec = decode_or_fail<gw::cluster::HostSpec>(kv, gw::cluster::decode_host);
  if (spec.down == down) {
    fmt::print("ok: host {}/{}/{} is already {} (etcd revision {})\n", u, p, h, down ? "down" : "up", kv.mod_revision);
    return 0;
  }
  spec.down = down;
  test_delay();
  auto r = c.etcd.txn({{kv.key, "", Target::mod_revision, kv.mod_revision}},
                      {{false, kv.key, gw::cluster::encode_host(spec)}});
  if (!r.succeeded) conflict(what, kv.key);
  return etcd_done(what, r.revision);
}

int etcd_add_pool(EtcdCtl& c, const std::string& u, const std::string& p, int32_t prio, gw::shm::Method m) {
  check_names({{"upstream name", &u}, {"pool id", &p}});
  const std::string what = fmt::format("add pool {}/{} priority={} method={}", u, p, prio, gw::shm::method_name(m));
  const std::string pk = gw::cluster::pool_key(c.prefix, u, p);
  auto up = etcd_get(c, gw::cluster::upstream_key(c.prefix, u));
  if (!up) throw gw::shm::TableError(fmt::format("unknown upstream \"{}\" in etcd (prefix {})", u, c.prefix));
  if (etcd_get(c, pk)) throw gw::shm::TableError(fmt::format("pool {}/{} already exists", u, p));
  test_delay();
  auto r = c.etcd.txn({{pk, "", Target::create_revision, 0}, {up->key, "", Target::create_revision, up->create_revision}},
                      {{false, pk, gw::cluster::encode_pool({prio, m})}});
  if (!r.succeeded) {
    if (etcd_get(c, pk))
      throw gw::shm::TableError(fmt::format("pool {}/{} already exists (another writer added it meanwhile)", u, p));
    conflict(what, up->key);
  }
  return etcd_done(what, r.revision);
}

int etcd_remove_pool(EtcdCtl& c, const std::string& u, const std::string& p) {
  check_names({{"upstream name", &u}, {"pool id", &p}});
  const std::string what = fmt::format("remove pool {}/{}", u, p);
  auto kv = etcd_pool(c, u, p);
  const std::string hp = gw::cluster::hosts_prefix(c.prefix, u, p), he = gw::cluster::prefix_end(hp);
  auto hosts = [&] { return c.etcd.range(hp, he, true).count; };
  if (int64_t n = hosts(); n > 0)
    throw gw::shm::TableError(fmt::format("pool {}/{} still has {} host(s); remove them first", u, p, n));
  test_delay();
  auto r = c.etcd.txn({{kv.key, "", Target::mod_revision, kv.mod_revision}, {hp, he, Target::create_revision, 0}},
                      {{true, kv.key, ""}});
  if (!r.succeeded) {
    if (int64_t n = hosts(); n > 0)
      throw gw::shm::TableError(
          fmt::format("pool {}/{} still has {} host(s) (another writer added them meanwhile); remove them first", u, p, n));
    conflict(what, kv.key);
  }
  return etcd_done(what, r.revision);
}

int etcd_set_pool(EtcdCtl& c, const std::string& u, const std::string& p, std::optional<int32_t> prio,
                  std::optional<gw::shm::Method> m) {
  check_names({{"upstream name", &u}, {"pool id", &p}});
  auto kv = etcd_pool(c, u, p);
  auto spec = decode_or_fail<gw::cluster::PoolSpec>(kv, gw::cluster::decode_pool);
  if (prio) spec.priority = *prio;
  if (m) spec.method = *m;
  const std::string what =
      fmt::format("set pool {}/{} priority={} method={}", u, p, spec.priority, gw::shm::method_name(spec.method));
  test_delay();
  auto r = c.etcd.txn({{kv.key, "", Target::mod_revision, kv.mod_revision}},
                      {{false, kv.key, gw::cluster::encode_pool(spec)}});
  if (!r.succeeded) conflict(what, kv.key);
  return etcd_done(what, r.revision);
}

// ---------------------------------------------------------------- gwctl check

bool process_alive(int pid) {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno != EPERM)) return false;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return true;
  char buf[512] = {};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  const char* paren = std::strrchr(buf, ')');
  return !(paren && paren + 2 < buf + n && (paren[2] == 'Z' || paren[2] == 'X'));  // a zombie is dead
}

int cmd_check(const Options& o) {
  uint32_t timeout = parse_u32(o.timeout_ms, "--timeout-ms", 1, 60000);
  gw::shm::Segment seg = gw::shm::Segment::attach(shm_name(o));
  const auto& hdr = seg.header();
  if (!seg.master_alive()) {
    int pid = hdr.master_pid.load();
    throw Failure(pid ? fmt::format("check failed: the master (pid {}) is not running", pid)
                      : "check failed: gwd is stopped");
  }
  const uint32_t n = std::min(hdr.workers.load(), gw::shm::kMaxWorkers);
  for (uint32_t w = 0; w < n; ++w) {
    int pid = seg.worker(w).pid.load(std::memory_order_acquire);
    if (!process_alive(pid))
      throw Failure(pid > 0 ? fmt::format("check failed: worker {} (pid {}) is not running", w, pid)
                            : fmt::format("check failed: worker {} is not running", w));
  }
  const uint32_t nl = std::min(hdr.n_listeners, gw::shm::kMaxListeners);
  for (uint32_t i = 0; i < nl; ++i) {
    const auto& l = hdr.listeners[i];
    gw::core::SockAddr a = l.addr;
    // A wildcard listener is checked on loopback.
    static const uint8_t zero[16] = {};
    if (std::memcmp(a.ip, zero, a.family == AF_INET ? 4 : 16) == 0) {
      std::memset(a.ip, 0, sizeof(a.ip));
      if (a.family == AF_INET) a.ip[0] = 127, a.ip[3] = 1;
      else a.ip[15] = 1;
    }
    int err = 0;
    int fd = gw::net::connect_wait(a, timeout, err);
    if (fd < 0)
      throw Failure(fmt::format("check failed: listener {} ({}) does not accept connections: {}", name_of(l.name),
                                l.addr.to_string(), err == ETIMEDOUT ? "connect timed out" : std::strerror(err)));
    ::close(fd);
  }
  fmt::print("ok: master pid {}, {} worker(s) running, {} listener(s) accepting\n", hdr.master_pid.load(), n, nl);
  return 0;
}

// ---------------------------------------------------------------- status: cluster

struct ClusterView {
  bool on = false;
  uint32_t state = 0;
  uint64_t revision = 0, since_ms = 0, contact_ms = 0, reconnects = 0, relists = 0, applied = 0;
  int sync_pid = 0;
  gw::shm::ClusterText text{};
};

ClusterView cluster_view(const gw::shm::Segment& seg) {
  const auto& c = seg.header().cluster;
  ClusterView v;
  v.state = c.state.load(std::memory_order_acquire);
  v.on = v.state != gw::shm::kClusterOff;
  v.revision = c.revision.load();
  v.since_ms = c.since_ms.load();
  v.contact_ms = c.contact_ms.load();
  v.reconnects = c.reconnects.load();
  v.relists = c.relists.load();
  v.applied = c.applied.load();
  v.sync_pid = c.sync_pid.load();
  v.text = gw::shm::read_cluster_text(c);
  return v;
}

std::string iso(uint64_t ms) {
  if (!ms) return "";
  char ts[40];
  gw::core::format_iso8601(ms, ts, sizeof(ts));
  return ts;
}

std::string cluster_json(const ClusterView& v) {
  if (!v.on) return "null";
  return fmt::format(
      "{{\"state\": \"{}\", \"revision\": {}, \"endpoint\": \"{}\", \"since\": \"{}\", \"last_contact\": \"{}\", "
      "\"error\": \"{}\", \"sync_pid\": {}, \"reconnects\": {}, \"relists\": {}, \"applied\": {}}}",
      gw::shm::cluster_state_name(v.state), v.revision, json_escape(v.text.endpoint), iso(v.since_ms),
      iso(v.contact_ms), json_escape(v.text.error), v.sync_pid, v.reconnects, v.relists, v.applied);
}

std::string cluster_line(const ClusterView& v) {
  std::string err = v.text.error[0] ? fmt::format("; last error: {}", v.text.error) : "";
  switch (v.state) {
    case gw::shm::kClusterSynced:
      return fmt::format("cluster: etcd synced at revision {} ({}), since {}{}", v.revision, v.text.endpoint,
                         iso(v.since_ms), err);
    case gw::shm::kClusterDisconnected:
      return fmt::format("cluster: etcd DISCONNECTED since {}, reconnecting; serving the table of revision {}{}",
                         iso(v.since_ms), v.revision, err);
    default:
      return fmt::format("cluster: etcd connecting ({}) since {}{}", v.text.endpoint, iso(v.since_ms), err);
  }
}

std::string health_of(const gw::shm::Segment& seg, const gw::shm::Table& t, const gw::shm::HostRecord& h) {
  const auto& up = t.upstreams()[t.pools()[h.pool].upstream];
  gw::shm::HealthPolicy p{up.max_fails, up.fail_timeout_ms, up.check.type != gw::shm::kCheckNone,
                          up.check.unknown_usable != 0};
  if (p.active && gw::shm::active_state(seg.host(h.slot), h.tag) == gw::shm::kActiveUnknown) return "unknown";
  return gw::shm::host_usable(seg.host(h.slot), h.tag, p, gw::core::monotonic_ms()) ? "up" : "down";
}

int cmd_status(const Options& o) {
  gw::shm::Segment seg = attach(o, false);
  gw::shm::Table t(seg.caps());
  gw::shm::read_published(seg, t);
  const auto& hdr = seg.header();
  int master = seg.master_alive() ? hdr.master_pid.load() : 0;
  struct W {
    uint32_t slot;
    int pid;
    uint64_t gen, conns, accepted, fallbacks, no_host, frames, host_closed;
    uint64_t rejects[gw::proxy::kFrameErrorCount];
    uint64_t http_requests, http_retries, http_reused, http_tunnels;
    uint64_t outcomes[gw::shm::kHttpOutcomeKinds];
  };
  static constexpr const char* kOutcomeNames[] = {"ok", "bad_request", "no_route", "no_host", "bad_gateway",
                                                  "gateway_timeout", "client_timeout"};
  static_assert(std::size(kOutcomeNames) == static_cast<size_t>(gw::proxy::HttpOutcome::count));
  uint64_t reject_totals[gw::proxy::kFrameErrorCount] = {};
  std::vector<W> workers;
  for (uint32_t i = 0; i < gw::shm::kMaxWorkers; ++i) {
    const auto& w = seg.worker(i);
    int pid = w.pid.load();
    if (pid > 0 && master) {
      W r{i, pid, w.generation.load(), w.connections.load(), w.accepted.load(), w.hash_fallbacks.load(),
          w.no_host.load(), w.frames_routed.load(), w.host_closed.load(), {}, w.http_requests.load(),
          w.http_retries.load(), w.http_keepalive_reused.load(), w.http_tunnels.load(), {}};
      for (size_t k = 0; k < gw::shm::kHttpOutcomeKinds; ++k) r.outcomes[k] = w.http_outcomes[k].load();
      for (size_t k = 1; k < gw::proxy::kFrameErrorCount; ++k) {
        r.rejects[k] = w.frame_rejects[k].load();
        reject_totals[k] += r.rejects[k];
      }
      workers.push_back(r);
    }
  }
  // {"header_truncated": 0, ...}: every reason, so scripts can rely on the keys.
  auto rejects_json = [](const uint64_t* counts) {
    std::string j = "{";
    for (size_t k = 1; k < gw::proxy::kFrameErrorCount; ++k)
      j += fmt::format("{}\"{}\": {}", k > 1 ? ", " : "", gw::proxy::frame_error_name(static_cast<gw::proxy::FrameError>(k)),
                       counts[k]);
    return j + "}";
  };
  auto http_json = [](const W& w) {
    std::string j = fmt::format("{{\"requests\": {}, \"retries\": {}, \"keepalive_reused\": {}, \"tunnels\": {}",
                                w.http_requests, w.http_retries, w.http_reused, w.http_tunnels);
    for (size_t k = 1; k < std::size(kOutcomeNames); ++k) j += fmt::format(", \"{}\": {}", kOutcomeNames[k], w.outcomes[k]);
    return j + "}";
  };
  auto routes_json = [&t]() {
    std::string j = "[";
    for (size_t r = 0; r < t.routes().size(); ++r) {
      const auto& rr = t.routes()[r];
      j += fmt::format("{}{{\"listener\": \"{}\", \"route\": \"{}\", \"rules\": [", r ? ", " : "", name_of(rr.listener),
                       name_of(rr.name));
      bool first = true;
      for (size_t k = 0; k < t.rules().size(); ++k) {
        if (t.rules()[k].route != r) continue;
        j += (first ? "" : ", ") + gw::shm::rule_to_json(t.rule_spec(static_cast<int>(k)));
        first = false;
      }
      j += "]}";
    }
    return j + "]";
  };
  auto hosts = t.hosts();
  if (o.json) {
    std::string out = fmt::format("{{\"shm\": \"{}\", \"generation\": {}, \"master_pid\": {}, \"cluster\": {}, \"workers\": [",
                                  seg.name(), t.header().generation, master, cluster_json(cluster_view(seg)));
    for (size_t i = 0; i < workers.size(); ++i)
      out += fmt::format(
          "{}{{\"slot\": {}, \"pid\": {}, \"generation\": {}, \"connections\": {}, \"accepted\": {}, "
          "\"hash_fallbacks\": {}, \"no_host\": {}, \"frames_routed\": {}, \"host_closed\": {}, "
          "\"frame_rejects\": {}, \"http\": {}}}",
          i ? ", " : "", workers[i].slot, workers[i].pid, workers[i].gen, workers[i].conns, workers[i].accepted,
          workers[i].fallbacks, workers[i].no_host, workers[i].frames, workers[i].host_closed,
          rejects_json(workers[i].rejects), http_json(workers[i]));
    out += "], \"frame_rejects\": " + rejects_json(reject_totals) + ", \"upstreams\": [";
    for (size_t u = 0; u < t.upstreams().size(); ++u) {
      out += fmt::format("{}{{\"name\": \"{}\", \"pools\": [", u ? ", " : "", name_of(t.upstreams()[u].name));
      bool first_pool = true;
      for (size_t p = 0; p < t.pools().size(); ++p) {
        const auto& pr = t.pools()[p];
        if (pr.upstream != u) continue;
        out += fmt::format("{}{{\"id\": \"{}\", \"priority\": {}, \"method\": \"{}\", \"hosts\": [", first_pool ? "" : ", ",
                           name_of(pr.id), pr.priority, gw::shm::method_name(static_cast<gw::shm::Method>(pr.method)));
        first_pool = false;
        bool first_host = true;
        for (const auto& h : hosts) {
          if (h.pool != p) continue;
          auto tot = gw::shm::host_totals(seg, h.slot, h.tag);
          out += fmt::format(
              "{}{{\"id\": \"{}\", \"address\": \"{}\", \"weight\": {}, \"admin\": \"{}\", \"health\": \"{}\", "
              "\"active\": {}, \"total\": {}, \"failures\": {}}}",
              first_host ? "" : ", ", name_of(h.id), h.addr.to_string(), h.weight, h.admin_down ? "down" : "up",
              health_of(seg, t, h), tot.active, tot.total, seg.host(h.slot).failures.load());
          first_host = false;
        }
        out += "]}";
      }
      out += "]}";
    }
    out += "], \"routes\": " + routes_json() + "}\n";
    fmt::print("{}", out);
    return 0;
  }
  char ts[40];
  gw::core::format_iso8601(t.header().updated_wall_ms, ts, sizeof(ts));
  if (master)
    fmt::print("gateway: shm \"{}\", master pid {}, {} worker(s), table generation {} (changed {})\n", seg.name(), master,
               workers.size(), t.header().generation, ts);
  else
    fmt::print("gateway: shm \"{}\", master NOT RUNNING, table generation {} (changed {})\n", seg.name(),
               t.header().generation, ts);
  if (ClusterView cv = cluster_view(seg); cv.on) fmt::print("{}\n", cluster_line(cv));
  for (const auto& w : workers)
    fmt::print("  worker {}: pid {}, generation {}, {} connection(s), {} accepted, {} hash fallback(s), {} without a host\n",
               w.slot, w.pid, w.gen, w.conns, w.accepted, w.fallbacks, w.no_host);
  {
    std::string line;
    for (size_t k = 1; k < gw::proxy::kFrameErrorCount; ++k)
      if (reject_totals[k])
        line += fmt::format("{}{} {}", line.empty() ? "" : ", ",
                            gw::proxy::frame_error_name(static_cast<gw::proxy::FrameError>(k)), reject_totals[k]);
    uint64_t frames = 0, closed = 0;
    for (const auto& w : workers) frames += w.frames, closed += w.host_closed;
    if (frames) fmt::print("  frames routed one by one (mode \"frame\"): {}\n", frames);
    if (closed) fmt::print("  connections closed because their host went (on_host_remove \"close\"): {}\n", closed);
    if (!line.empty()) fmt::print("  frame connections refused: {}\n", line);
    W sum{};
    for (const auto& w : workers) {
      sum.http_requests += w.http_requests, sum.http_retries += w.http_retries, sum.http_reused += w.http_reused;
      sum.http_tunnels += w.http_tunnels;
      for (size_t k = 0; k < gw::shm::kHttpOutcomeKinds; ++k) sum.outcomes[k] += w.outcomes[k];
    }
    if (sum.http_requests) {
      std::string answered;
      for (size_t k = 1; k < std::size(kOutcomeNames); ++k)
        if (sum.outcomes[k]) answered += fmt::format(", {} {}", kOutcomeNames[k], sum.outcomes[k]);
      fmt::print("  http: {} request(s), {} retried attempt(s), {} over kept-alive upstream connections, {} tunnel(s){}\n",
                 sum.http_requests, sum.http_retries, sum.http_reused, sum.http_tunnels, answered);
    }
  }
  fmt::print("\n{:<28} {:<24} {:>6} {:<6} {:<6} {:>7} {:>9} {:>8}\n", "UPSTREAM/POOL/HOST", "ADDRESS", "WEIGHT", "ADMIN",
             "HEALTH", "ACTIVE", "TOTAL", "FAILURES");
  for (size_t u = 0; u < t.upstreams().size(); ++u) {
    const auto& ur = t.upstreams()[u];
    fmt::print("{} (connect {} ms, idle {} ms, max_fails {} per {} ms, tries {})\n", name_of(ur.name),
               ur.connect_timeout_ms, ur.idle_timeout_ms, ur.max_fails, ur.fail_timeout_ms, ur.tries);
    for (size_t p = 0; p < t.pools().size(); ++p) {
      const auto& pr = t.pools()[p];
      if (pr.upstream != u) continue;
      fmt::print("  {}/{} (priority {}, {})\n", name_of(ur.name), name_of(pr.id), pr.priority,
                 gw::shm::method_name(static_cast<gw::shm::Method>(pr.method)));
      for (size_t h = 0; h < hosts.size(); ++h) {
        const auto& hr = hosts[h];
        if (hr.pool != p) continue;
        auto tot = gw::shm::host_totals(seg, hr.slot, hr.tag);
        fmt::print("    {:<24} {:<24} {:>6} {:<6} {:<6} {:>7} {:>9} {:>8}\n", name_of(hr.id), hr.addr.to_string(),
                   hr.weight, hr.admin_down ? "down" : "up", health_of(seg, t, hr), tot.active, tot.total,
                   seg.host(hr.slot).failures.load());
      }
    }
  }
  if (!t.routes().empty()) {
    fmt::print("\n{:<28} {}\n", "LISTENER/ROUTE/RULE", "MATCH -> UPSTREAM (first match wins)");
    for (size_t r = 0; r < t.routes().size(); ++r) {
      const auto& rr = t.routes()[r];
      fmt::print("{}/{}\n", name_of(rr.listener), name_of(rr.name));
      for (size_t k = 0; k < t.rules().size(); ++k) {
        if (t.rules()[k].route != r) continue;
        auto spec = t.rule_spec(static_cast<int>(k));
        fmt::print("  {:<26} {}\n", spec.id, gw::shm::describe_rule(spec));
      }
    }
  }
  return 0;
}


volatile sig_atomic_t g_stop = 0;

int cmd_events(const Options& o) {
  gw::shm::Segment seg = attach(o, false);
  uint64_t head = seg.header().event_head.load(std::memory_order_acquire);
  uint64_t cur = head > gw::shm::kEventCapacity ? head - gw::shm::kEventCapacity : 0;
  ::signal(SIGINT, [](int) { g_stop = 1; });
  ::signal(SIGTERM, [](int) { g_stop = 1; });
  uint64_t stuck_since = 0;
  for (;;) {
    head = seg.header().event_head.load(std::memory_order_acquire);
    while (cur < head) {
      gw::shm::EventData e{};
      auto r = gw::shm::read_event(seg, cur, e);
      if (r == gw::shm::EventRead::not_yet) {
        // Claimed but not yet complete; a writer that died mid-event never
        // completes it, so skip it after a second.
        uint64_t now = gw::core::monotonic_ms();
        if (!stuck_since) stuck_since = now;
        if (now - stuck_since < 1000) break;
      } else if (r == gw::shm::EventRead::ok) {
        fmt::print("{}\n", gw::shm::format_event(cur, e));
      }
      stuck_since = 0;
      ++cur;
    }
    std::fflush(stdout);
    if (!o.follow || g_stop) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gw::core::log_set_role("gwctl");
  gw::core::log_set_level(gw::core::LogLevel::warn);
  Options o;
  CLI::App app{"gwctl: inspect and change a running gw gateway, live"};
  app.fallthrough();
  app.require_subcommand(1);
  app.add_option("--shm", o.shm, "shm segment name (shm.name in the config; default gw)");
  app.add_option("-c,--config", o.config, "read the shm name (and, with --etcd, cluster.prefix) from this config file");
  app.add_option("--etcd", o.etcd, "change etcd (URL[,URL...], e.g. http://127.0.0.1:2379) instead of local shm")
      ->type_name("URL");
  app.add_option("--prefix", o.prefix, "with --etcd: the key prefix (default: the config's cluster.prefix, else /gw/)");

  auto* status = app.add_subcommand("status", "upstreams, pools, hosts and their state");
  status->add_flag("--json", o.json, "machine-readable output");
  auto* check = app.add_subcommand("check", "exit 0 if the master and every worker run and every listener accepts "
                                             "(for keepalived's vrrp_script), else 1 with the reason");
  check->add_option("--timeout-ms", o.timeout_ms, "connect timeout per listener (default 1000)");
  auto* events = app.add_subcommand("events", "print the event log");
  events->add_flag("-f,--follow", o.follow, "keep printing new events");

  auto* add = app.add_subcommand("add", "add a host, a pool or a rule")->require_subcommand(1);
  auto* remove = app.add_subcommand("remove", "remove a host, a pool or a rule")->require_subcommand(1);
  auto* down = app.add_subcommand("down", "take a host out of rotation (until `up`)")->require_subcommand(1);
  auto* up = app.add_subcommand("up", "put a host back into rotation")->require_subcommand(1);
  auto* set = app.add_subcommand("set", "change a pool or a rule")->require_subcommand(1);

  auto* add_host = add->add_subcommand("host", "add host UPSTREAM/POOL HOST_ID IP:PORT [--weight N]");
  add_host->add_option("pool", o.path, "UPSTREAM/POOL")->required();
  add_host->add_option("host", o.id, "host id")->required();
  add_host->add_option("address", o.address, "IP:PORT")->required();
  add_host->add_option("--weight", o.weight, "0..1000 (default 1)");
  auto* add_pool = add->add_subcommand("pool", "add pool UPSTREAM POOL [--priority N] [--method M]");
  add_pool->add_option("upstream", o.path, "UPSTREAM")->required();
  add_pool->add_option("pool", o.id, "pool id")->required();
  add_pool->add_option("--priority", o.priority, "lower is preferred (default 0)");
  add_pool->add_option("--method", o.method, "balancing method (default round_robin)");
  auto* rm_host = remove->add_subcommand("host", "remove host UPSTREAM/POOL HOST_ID");
  rm_host->add_option("pool", o.path, "UPSTREAM/POOL")->required();
  rm_host->add_option("host", o.id, "host id")->required();
  auto* rm_pool = remove->add_subcommand("pool", "remove pool UPSTREAM POOL (it must have no hosts)");
  rm_pool->add_option("upstream", o.path, "UPSTREAM")->required();
  rm_pool->add_option("pool", o.id, "pool id")->required();
  auto* down_host = down->add_subcommand("host", "down host UPSTREAM/POOL HOST_ID");
  down_host->add_option("pool", o.path, "UPSTREAM/POOL")->required();
  down_host->add_option("host", o.id, "host id")->required();
  auto* up_host = up->add_subcommand("host", "up host UPSTREAM/POOL HOST_ID");
  up_host->add_option("pool", o.path, "UPSTREAM/POOL")->required();
  up_host->add_option("host", o.id, "host id")->required();
  auto* set_pool = set->add_subcommand("pool", "set pool UPSTREAM POOL [--priority N] [--method M]");
  set_pool->add_option("upstream", o.path, "UPSTREAM")->required();
  set_pool->add_option("pool", o.id, "pool id")->required();
  set_pool->add_option("--priority", o.priority, "lower is preferred");
  set_pool->add_option("--method", o.method, "balancing method");

  auto rule_matchers = [&o](CLI::App* cmd) {
    cmd->add_option("listener", o.listener, "http listener name")->required();
    cmd->add_option("route", o.route, "route name")->required();
    cmd->add_option("rule", o.id, "rule id")->required();
    cmd->add_option("--upstream", o.upstream, "where matching requests go")->required();
    cmd->add_option("--ip", o.ip, "client addresses: IP or IP/PREFIX, comma separated");
    cmd->add_option("--ip-file", o.ip_file, "client addresses, one IP or IP/PREFIX per line ('#' comments)");
    cmd->add_option("--header", o.header, "NAME=VALUE: a request header equals VALUE");
    cmd->add_option("--cookie", o.cookie, "NAME=VALUE: a cookie equals VALUE");
    cmd->add_option("--percent", o.percent, "0..100: a stable share of clients (hash of the route's key, else the client IP)");
  };
  auto* add_rule = add->add_subcommand("rule", "add rule LISTENER ROUTE RULE_ID --upstream U [matchers]: tried after the route's other rules");
  rule_matchers(add_rule);
  auto* set_rule = set->add_subcommand("rule", "set rule LISTENER ROUTE RULE_ID --upstream U [matchers]: replaces a rule in place");
  rule_matchers(set_rule);
  auto* rm_rule = remove->add_subcommand("rule", "remove rule LISTENER ROUTE RULE_ID");
  rm_rule->add_option("listener", o.listener, "http listener name")->required();
  rm_rule->add_option("route", o.route, "route name")->required();
  rm_rule->add_option("rule", o.id, "rule id")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "gwctl: {} (see gwctl --help)\n", e.what());
    return 2;
  }

  try {
    const bool to_etcd = !o.etcd.empty();
    if (to_etcd && !(*add_host || *rm_host || *down_host || *up_host || *add_pool || *rm_pool || *set_pool))
      throw Failure("--etcd goes with a change to pools or hosts (add/remove/down/up host, add/remove/set pool); rules are kept per node, changed without --etcd");
    if (*status) return cmd_status(o);
    if (*events) return cmd_events(o);
    if (*check) return cmd_check(o);
    if (*add_host) {
      auto [u, p] = split_pool(o.path);
      gw::core::SockAddr addr;
      std::string why;
      if (!gw::core::parse_address(o.address, addr, why)) throw Failure(fmt::format("bad address \"{}\": {}", o.address, why));
      uint32_t weight = o.weight.empty() ? 1 : parse_u32(o.weight, "--weight", 0, gw::shm::kMaxWeight);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_add_host(c, u, p, o.id, addr, weight);
      }
      std::string what = fmt::format("add host {}/{}/{} {} weight={}", u, p, o.id, addr.to_string(), weight);
      return commit(o, [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        t.add_host(find_pool(t, u, p), o.id, addr, weight);
        ev.push_back(fmt::format("host_added {}/{}/{} {} weight={}", u, p, o.id, addr.to_string(), weight));
      }, what);
    }
    if (*rm_host) {
      auto [u, p] = split_pool(o.path);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_remove_host(c, u, p, o.id);
      }
      std::string what = fmt::format("remove host {}/{}/{}", u, p, o.id);
      return commit(o, [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        int h = find_host(t, u, p, o.id);
        ev.push_back(fmt::format("host_removed {}/{}/{} {}", u, p, o.id, t.hosts()[static_cast<size_t>(h)].addr.to_string()));
        t.remove_host(h);
      }, what);
    }
    if (*down_host || *up_host) {
      auto [u, p] = split_pool(o.path);
      bool to_down = static_cast<bool>(*down_host);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_down_up(c, u, p, o.id, to_down);
      }
      std::string what = fmt::format("{} host {}/{}/{}", to_down ? "down" : "up", u, p, o.id);
      {
        gw::shm::Segment seg = attach(o, true);
        gw::shm::Table t(seg.caps());
        gw::shm::read_published(seg, t);
        int h = find_host(t, u, p, o.id);
        if ((t.hosts()[static_cast<size_t>(h)].admin_down != 0) == to_down) {
          fmt::print("ok: host {}/{}/{} is already {} (generation {})\n", u, p, o.id, to_down ? "down" : "up",
                     t.header().generation);
          return 0;
        }
      }
      return commit(o, [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        auto& rec = t.hosts()[static_cast<size_t>(find_host(t, u, p, o.id))];
        rec.admin_down = to_down ? 1 : 0;
        ev.push_back(fmt::format("host_{} {}/{}/{} {} (admin: gwctl {})", to_down ? "down" : "up", u, p, o.id,
                                 rec.addr.to_string(), to_down ? "down" : "up"));
      }, what);
    }
    if (*add_pool) {
      int32_t prio = o.priority.empty() ? 0 : parse_i32(o.priority, "--priority");
      gw::shm::Method m = o.method.empty() ? gw::shm::Method::round_robin : parse_method_arg(o.method);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_add_pool(c, o.path, o.id, prio, m);
      }
      std::string what = fmt::format("add pool {}/{} priority={} method={}", o.path, o.id, prio, gw::shm::method_name(m));
      return commit(o, [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        t.add_pool(find_upstream(t, o.path), o.id, prio, m);
        ev.push_back(fmt::format("pool_changed {}/{} added priority={} method={}", o.path, o.id, prio,
                                 gw::shm::method_name(m)));
      }, what);
    }
    if (*rm_pool) {
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_remove_pool(c, o.path, o.id);
      }
      std::string what = fmt::format("remove pool {}/{}", o.path, o.id);
      return commit(o, [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        t.remove_pool(find_pool(t, o.path, o.id));
        ev.push_back(fmt::format("pool_changed {}/{} removed", o.path, o.id));
      }, what);
    }
    if (*add_rule || *set_rule) {
      const bool replace = static_cast<bool>(*set_rule);
      gw::shm::RuleSpec spec = rule_from_options(o);
      std::string desc = gw::shm::describe_rule(spec);
      std::string what = fmt::format("{} rule {}/{}/{} {}", replace ? "set" : "add", o.listener, o.route, o.id, desc);
      return commit(o, [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        if (replace) t.replace_rule(find_rule(t, o.listener, o.route, o.id), spec);
        else t.add_rule(find_route(t, o.listener, o.route), spec);
        ev.push_back(fmt::format("rule_changed {}/{}/{} {} {}", o.listener, o.route, o.id, replace ? "set" : "added", desc));
      }, what, false);
    }
    if (*rm_rule) {
      std::string what = fmt::format("remove rule {}/{}/{}", o.listener, o.route, o.id);
      return commit(o, [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        t.remove_rule(find_rule(t, o.listener, o.route, o.id));
        ev.push_back(fmt::format("rule_changed {}/{}/{} removed", o.listener, o.route, o.id));
      }, what, false);
    }
    if (*set_pool) {
      if (o.priority.empty() && o.method.empty()) throw Failure("set pool needs --priority and/or --method");
      std::optional<int32_t> prio;
      std::optional<gw::shm::Method> m;
      if (!o.priority.empty()) prio = parse_i32(o.priority, "--priority");
      if (!o.method.empty()) m = parse_method_arg(o.method);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_set_pool(c, o.path, o.id, prio, m);
      }
      std::string what;
      gw::shm::Writer::Change change = [&](gw::shm::Table& t, std::vector<std::string>& ev) {
        auto& pr = t.pools()[static_cast<size_t>(find_pool(t, o.path, o.id))];
        if (prio) pr.priority = *prio;
        if (m) pr.method = static_cast<uint8_t>(*m);
        what = fmt::format("set pool {}/{} priority={} method={}", o.path, o.id, pr.priority,
                           gw::shm::method_name(static_cast<gw::shm::Method>(pr.method)));
        ev.push_back(fmt::format("pool_changed {}/{} priority={} method={}", o.path, o.id, pr.priority,
                                 gw::shm::method_name(static_cast<gw::shm::Method>(pr.method))));
      };
      gw::shm::Segment seg = attach(o, true);
      uint64_t gen = gw::shm::Writer(seg).commit(change);
      fmt::print("ok: {} (generation {})\n", what, gen);
      return 0;
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "gwctl: {}\n", e.what());
    return 1;
  }
  return 2;
}
