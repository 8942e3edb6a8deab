// gwctl: changes the routing table of a running gateway through shm, live,
// and shows its state. Verb-noun commands; one line on stderr and a non-zero
// exit for every error; a change is applied whole or not at all.

#include <ifaddrs.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gw/admin/status.hpp"
#include "gw/api/hash.hpp"
#include "gw/api/limit_table.hpp"
#include "gw/balance/chash.hpp"
#include "gw/cluster/etcd.hpp"
#include "gw/cluster/schema.hpp"
#include "gw/config/config.hpp"
#include "gw/core/cli.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/fd.hpp"
#include "gw/core/log.hpp"
#include "gw/core/text.hpp"
#include "gw/net/socket.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/http_proxy.hpp"
#include "gw/shm/state_file.hpp"

#include "gw/shm/cluster.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/ops.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/writer.hpp"

namespace {

using gw::shm::name_of;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A command line that cannot be run as given (a missing or conflicting
// option): exit 2, as CLI11's own usage errors (1 is for a refused change).
struct UsageFailure : Failure {
  using Failure::Failure;
};

// ---------------------------------------------------------------- stdout
//
// Every line for stdout goes through out(). A failed write (a full disk, a
// closed pipe whose SIGPIPE is ignored) is not an exception in the middle of
// a command: it is remembered, and the command ends with exit status 1 and one
// line saying that standard output failed, and whether the change was made.

int g_stdout_errno = 0;      // the first write error on stdout, else 0
bool g_change_made = false;  // a change was committed (shm or etcd): its report is all that can fail now

template <typename... T>
void out(fmt::format_string<T...> f, T&&... args) {
  fmt::memory_buffer buf;
  fmt::format_to(std::back_inserter(buf), f, std::forward<T>(args)...);
  if (std::fwrite(buf.data(), 1, buf.size(), stdout) != buf.size() && !g_stdout_errno)
    g_stdout_errno = errno ? errno : EIO;
}

// Flushes stdout; on a write error, now or earlier, throws a Failure for it.
void flush_stdout() {
  errno = 0;
  if ((std::fflush(stdout) != 0 || std::ferror(stdout)) && !g_stdout_errno) g_stdout_errno = errno ? errno : EIO;
  if (!g_stdout_errno) return;
  const char* why = std::strerror(g_stdout_errno);
  throw Failure(
      g_change_made
          ? fmt::format("the change was made, but its report could not be written to standard output: {}", why)
          : fmt::format("cannot write to standard output: {}", why));
}

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

  std::vector<std::string> etcd;    // --etcd URL[,URL...]: write to etcd instead of shm
  std::string prefix;               // --prefix (default: the config's cluster.prefix, else /gw/)
  std::string timeout_ms = "1000";  // check: connect timeout per listener
  // consumers
  std::string key, key_file;
};

std::string shm_name(const Options& o) {
  if (!o.shm.empty() && !o.config.empty()) throw UsageFailure("give either --shm or -c, not both");
  if (!o.shm.empty()) return o.shm;
  if (!o.config.empty()) {
    auto r = gw::config::load_file(o.config);
    if (r.ok()) return r.config.shm.name;
    const size_t n = r.errors.size();
    // An operator editing the config during an incident keeps gwctl: it needs
    // only shm.name, which the file still gives without an error of its own.
    // (Not the default "gw" for a file that lacks it: that may be another gateway.)
    if (!r.shm_name_given)
      throw Failure(n == 1 ? fmt::format("{}: {}", o.config, r.errors[0])
                           : fmt::format("{}: {} (and {} more error(s); gwd -t -c {} lists them)", o.config,
                                         r.errors[0], n - 1, o.config));
    static bool warned = false;  // once, though a command may look the name up again
    if (!std::exchange(warned, true))
      fmt::print(stderr, "gwctl: warning: {}; using shm.name \"{}\" from it\n",
                 gw::core::one_line(n == 1 ? fmt::format("{} has an error ({})", o.config, r.errors[0])
                                           : fmt::format("{} has {} errors (first: {}; gwd -t -c {} lists them)",
                                                         o.config, n, r.errors[0], o.config)),
                 r.config.shm.name);
    return r.config.shm.name;
  }
  return "gw";
}

// shared: the change is to pools or hosts, which a clustered gateway takes
// from etcd (rules stay local to each node).
gw::shm::Segment attach(const Options& o, bool need_master) {
  std::string name = shm_name(o);
  gw::shm::Segment seg = gw::shm::Segment::attach(name);
  if (need_master && !seg.master_alive()) {
    int pid = seg.header().master_pid.load();
    throw Failure(pid ? fmt::format("no running gateway on shm \"{}\" (its master, pid {}, is gone)", name, pid)
                      : fmt::format("no running gateway on shm \"{}\" (gwd was stopped)", name));
  }
  // (A change to pools or hosts of a clustered gateway is refused by shm::ops:
  // etcd is its source of truth, and a local change would be undone.)
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

// The most --ip-file reads: 64 bytes a block the segment's address block
// table can hold (an IPv6 block with its line is under 45), at least 1 MiB
// for comments. A larger file, or a device such as /dev/zero, is refused
// rather than read into memory without end.
size_t ip_file_limit(const gw::shm::Caps& caps) {
  return std::max<size_t>(size_t{1} << 20, size_t{64} * caps.max_rule_cidrs);
}

// The whole of `path`, or a Failure naming `opt` and the file; at most `limit`
// bytes.
std::string read_file_bounded(const char* opt, const std::string& path, size_t limit, const std::string& limit_why) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) throw Failure(fmt::format("{} {}: {}", opt, path, std::strerror(errno)));
  std::string text;
  char buf[4096];
  size_t n;
  while (text.size() <= limit && (n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) throw Failure(fmt::format("{} {}: {}", opt, path, std::strerror(err)));
  if (text.size() > limit)
    throw Failure(fmt::format("{} {}: larger than the limit of {} bytes ({})", opt, path, limit, limit_why));
  return text;
}

// The matchers and upstream of a rule from --ip, --ip-file, --header,
// --cookie, --percent and --upstream; `caps` are the segment's (they bound
// what --ip-file reads).
gw::shm::RuleSpec rule_from_options(const Options& o, const gw::shm::Caps& caps) {
  gw::shm::RuleSpec r;
  r.id = o.id;
  r.upstream = o.upstream;
  if (o.upstream.empty()) throw Failure("a rule needs --upstream NAME (where matching requests go)");
  // A block given twice is refused (nginx's geo warns "duplicate network"):
  // each copy would take a slot of shm.max_rule_cidrs and match nothing more.
  std::map<std::string, std::string> seen;  // a block -> the option it was first given in
  auto add_cidrs = [&](std::string_view list, const std::string& where) {
    size_t i = 0;
    while (i <= list.size()) {
      size_t j = list.find_first_of(", \t\r\n", i);
      if (j == std::string_view::npos) j = list.size();
      std::string_view item = list.substr(i, j - i);
      if (!item.empty() && item.front() != '#') {
        gw::core::Cidr c;
        std::string why;
        if (!gw::core::parse_cidr(item, c, why))
          throw Failure(fmt::format("{}: bad address \"{}\": {}", where, item, why));
        if (auto [at, fresh] = seen.emplace(c.to_string(), where); !fresh)
          throw Failure(fmt::format("{}: address block {} is given twice{}", where, at->first,
                                    at->second == where ? "" : fmt::format(" (also in {})", at->second)));
        r.cidrs.push_back(c);
      }
      i = j + 1;
    }
  };
  if (!o.ip.empty()) {
    add_cidrs(o.ip, "--ip");
    // "," or " " (an empty variable beside a separator): no matcher at all
    // would match every client.
    if (r.cidrs.empty()) throw Failure(fmt::format("--ip \"{}\": no address in it", o.ip));
  }
  if (!o.ip_file.empty()) {
    const std::string text = read_file_bounded(
        "--ip-file", o.ip_file, ip_file_limit(caps),
        fmt::format("64 bytes for each of shm.max_rule_cidrs = {} blocks, at least 1 MiB", caps.max_rule_cidrs));
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
    const size_t before = r.cidrs.size();
    add_cidrs(cleaned, "--ip-file " + o.ip_file);
    if (r.cidrs.size() == before) throw Failure(fmt::format("--ip-file {}: no address in it", o.ip_file));
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
    if (ec != std::errc() || end != o.percent.data() + o.percent.size() || !gw::shm::percent_to_bp(pct, r.percent_bp))
      throw Failure(fmt::format("--percent must be a number 0..100 in steps of 0.01, got \"{}\"", o.percent));
  }
  if (auto why = gw::shm::check_rule(r); !why.empty()) throw Failure(why);
  return r;
}

// Prints a verb's result as gwctl always has: "ok: WHAT (generation N)", and
// on stderr what the change left that the operator should know.
// WHAT quotes the input (a rule's header value may hold a C1 control, valid
// UTF-8): escaped as the error lines are, so that no terminal acts on it.
int report(const gw::shm::ops::Result& r) {
  g_change_made = r.changed;  // not for "already down"
  out("ok: {} (generation {})\n", gw::core::one_line(r.what), r.generation);
  if (!r.warning.empty()) fmt::print(stderr, "gwctl: warning: {}\n", gw::core::one_line(r.warning));
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
    // As shm_name(): a config with errors still serves if its "cluster"
    // section (the prefix) has none of its own (an incident is no time to
    // make an unrelated key of the file valid first).
    auto r = gw::config::load_file(o.config);
    const size_t n = r.errors.size();
    if (!r.ok() && !r.cluster_given) {
      std::string first = r.errors[0];
      for (const auto& e : r.errors)
        if (e.starts_with("cluster")) {
          first = e;
          break;
        }
      throw Failure(
          fmt::format("{}: {} (the etcd prefix is read from it; give --prefix){}", o.config, first,
                      n > 1 ? fmt::format(" (and {} more error(s); gwd -t -c {} lists them)", n - 1, o.config) : ""));
    }
    if (!r.ok())
      fmt::print(stderr, "gwctl: warning: {}\n",
                 gw::core::one_line(fmt::format("{} has {} error(s) (first: {}; gwd -t -c {} lists them); using "
                                                "cluster.prefix \"{}\" from it",
                                                o.config, n, r.errors[0], o.config,
                                                r.config.cluster.enabled ? r.config.cluster.prefix : "/gw/")));
    if (r.config.cluster.enabled) prefix = r.config.cluster.prefix;
  }
  if (prefix.empty()) prefix = "/gw/";
  bool ok = prefix.size() >= 2 && prefix.size() <= 128 && prefix.front() == '/' && prefix.back() == '/';
  for (char ch : prefix) ok &= ch > ' ' && ch < 0x7f;
  if (!ok)
    throw Failure(
        fmt::format("--prefix must be 2..128 printable characters starting and ending with /, got \"{}\"", prefix));
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

using gw::cluster::Compare;
using Target = gw::cluster::Compare::Target;

[[noreturn]] void conflict(const std::string& what, const std::string& key, bool resent = false) {
  if (resent)
    throw Failure(
        fmt::format("{}: etcd key {} was changed by another writer while this command ran; an answer from etcd "
                    "was lost and the request sent again, so this command's change may have been applied before "
                    "that writer's: check the key in etcd (or gwctl status on a node)",
                    what, key));
  throw Failure(
      fmt::format("{}: etcd key {} was changed by another writer while this command ran; nothing was "
                  "changed, run it again",
                  what, key));
}

// The txn of this command, sent again after an answer was lost, found its
// compares broken: if every key now holds what the command wrote, the first
// attempt ran (the answer was what got lost), and the command succeeded.
// Returns the store revision then, or 0.
int64_t applied_before(EtcdCtl& c, const std::vector<gw::cluster::Op>& ops) {
  int64_t rev = 0;
  for (const auto& op : ops) {
    auto r = c.etcd.range(op.key);
    if (op.is_delete ? !r.kvs.empty() : (r.kvs.empty() || r.kvs[0].value != op.value)) return 0;
    rev = std::max(rev, op.is_delete ? r.revision : r.kvs[0].mod_revision);
  }
  return rev;
}

// Runs the command's txn; a resent txn that had run already counts as done.
gw::cluster::TxnResult run_txn(EtcdCtl& c, const std::vector<Compare>& cmp, const std::vector<gw::cluster::Op>& ops) {
  gw::cluster::TxnResult r = c.etcd.txn(cmp, ops);
  if (!r.succeeded && r.resent)
    if (int64_t rev = applied_before(c, ops)) {
      r.succeeded = true;
      r.revision = rev;
    }
  return r;
}

// The upstream's key, which must be there and hold a value the nodes accept
// (one they ignore, e.g. a newer gw's field, has them ignore the upstream).
gw::cluster::KeyValue etcd_upstream(EtcdCtl& c, const std::string& u) {
  auto ukv = etcd_get(c, gw::cluster::upstream_key(c.prefix, u));
  if (!ukv) throw gw::shm::TableError(fmt::format("unknown upstream \"{}\" in etcd (prefix {})", u, c.prefix));
  if (std::string why; !gw::cluster::decode_upstream(ukv->value, why))
    throw Failure(
        fmt::format("etcd key {} holds an invalid value ({}): no node applies a change under it", ukv->key, why));
  return *ukv;
}

// The pool's key, and in `up` its upstream's: a pool or host under an
// upstream key that is gone is ignored by every node, so a change to it would
// be acknowledged and never applied. The txns compare the upstream key's
// create_revision for the same reason.
gw::cluster::KeyValue etcd_pool(EtcdCtl& c, const std::string& u, const std::string& p, gw::cluster::KeyValue& up) {
  up = etcd_upstream(c, u);
  if (auto kv = etcd_get(c, gw::cluster::pool_key(c.prefix, u, p))) return *kv;
  throw gw::shm::TableError(fmt::format("unknown pool \"{}/{}\" in etcd", u, p));
}

// The host's key; in `up` its upstream's, in `pool` (if given) its pool's.
gw::cluster::KeyValue etcd_host(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h,
                                gw::cluster::KeyValue& up, gw::cluster::KeyValue* pool = nullptr) {
  const gw::cluster::KeyValue pkv = etcd_pool(c, u, p, up);
  if (pool) *pool = pkv;
  if (auto kv = etcd_get(c, gw::cluster::host_key(c.prefix, u, p, h))) return *kv;
  throw gw::shm::TableError(fmt::format("unknown host \"{}/{}/{}\" in etcd", u, p, h));
}

template <typename Spec, typename Decode>
Spec decode_or_fail(const gw::cluster::KeyValue& kv, Decode decode) {
  Spec spec;
  std::string why;
  if (!decode(kv.value, spec, why)) throw Failure(fmt::format("etcd key {} holds an invalid value: {}", kv.key, why));
  return spec;
}

// The names a command gives; the last one is new when `adds` (check_new_name:
// not "." or "..").
void check_names(std::initializer_list<std::pair<const char*, const std::string*>> names, bool adds = false) {
  size_t i = 0;
  for (auto [what, name] : names) {
    const bool added = adds && ++i == names.size();
    if (auto why = added ? gw::shm::check_new_name(*name) : gw::shm::check_name(*name); !why.empty())
      throw Failure(fmt::format("{} \"{}\" {}", what, *name, why));
  }
}

// Prints "ok: WHAT (etcd revision N)" and, on stderr, the warning the change
// left, as report() does for a change to shm.
int etcd_done(const std::string& what, int64_t rev, const std::string& warning = {}) {
  g_change_made = true;
  out("ok: {} (etcd revision {})\n", what, rev);
  if (!warning.empty()) fmt::print(stderr, "gwctl: warning: {}\n", gw::core::one_line(warning));
  return 0;
}

// Whether a pool key's value says chash (one that does not parse: no, the
// nodes keep what they have for it).
bool etcd_chash(const gw::cluster::KeyValue& pool) {
  gw::cluster::PoolSpec spec;
  std::string why;
  return gw::cluster::decode_pool(pool.value, spec, why) && spec.method == gw::shm::Method::chash;
}

// What a change to chash pool U/P leaves that the shm path warns of (the
// ring's bound): the weights of the pool's hosts in etcd, with host `h` at
// `weight` (added or reweighted; no `h` for a change to the pool itself).
// Read before the txn, so that a failure here has changed nothing; a host
// whose value does not parse counts for nothing (each node keeps its own
// weight for it). Empty, or "pool U/P: " and the bound's warning.
std::string etcd_chash_warning(EtcdCtl& c, const std::string& u, const std::string& p, const std::string* h = nullptr,
                               uint32_t weight = 0) {
  const std::string hp = gw::cluster::hosts_prefix(c.prefix, u, p);
  uint64_t total = h ? weight : 0;
  for (const auto& kv : c.etcd.list(hp, gw::cluster::prefix_end(hp)).kvs) {
    gw::cluster::Key key;
    gw::cluster::HostSpec spec;
    std::string why;
    if (!gw::cluster::parse_key(c.prefix, kv.key, key, why) || key.kind != gw::cluster::KeyKind::host) continue;
    if (h && key.host == *h) continue;  // counted at its new weight
    if (gw::cluster::decode_host(kv.value, spec, why)) total += spec.weight;
  }
  std::string w = gw::balance::chash_bound_warning(total);
  return w.empty() ? w : fmt::format("pool {}/{}: {}", u, p, w);
}

int etcd_add_host(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h,
                  const gw::core::SockAddr& addr, uint32_t weight) {
  check_names({{"upstream name", &u}, {"pool id", &p}, {"host id", &h}}, true);
  const std::string what = fmt::format("add host {}/{}/{} {} weight={}", u, p, h, addr.to_string(), weight);
  const std::string hk = gw::cluster::host_key(c.prefix, u, p, h);
  gw::cluster::KeyValue up;
  auto pool = etcd_pool(c, u, p, up);
  if (etcd_get(c, hk)) throw gw::shm::TableError(fmt::format("host {}/{}/{} already exists", u, p, h));
  const std::string warning = etcd_chash(pool) ? etcd_chash_warning(c, u, p, &h, weight) : std::string();
  test_delay();
  auto r = run_txn(c,
                   {{hk, "", Target::create_revision, 0},
                    {pool.key, "", Target::create_revision, pool.create_revision},
                    {up.key, "", Target::create_revision, up.create_revision}},
                   {{false, hk, gw::cluster::encode_host({addr, weight, false})}});
  if (!r.succeeded) {
    if (etcd_get(c, hk))
      throw gw::shm::TableError(
          fmt::format("host {}/{}/{} already exists (another writer added it meanwhile)", u, p, h));
    conflict(what, pool.key, r.resent);
  }
  return etcd_done(what, r.revision, warning);
}

int etcd_remove_host(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h) {
  check_names({{"upstream name", &u}, {"pool id", &p}, {"host id", &h}});
  const std::string what = fmt::format("remove host {}/{}/{}", u, p, h);
  gw::cluster::KeyValue up;
  auto kv = etcd_host(c, u, p, h, up);
  test_delay();
  auto r = run_txn(
      c,
      {{kv.key, "", Target::mod_revision, kv.mod_revision}, {up.key, "", Target::create_revision, up.create_revision}},
      {{true, kv.key, ""}});
  if (!r.succeeded) conflict(what, kv.key, r.resent);
  return etcd_done(what, r.revision);
}

int etcd_down_up(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h, bool down) {
  check_names({{"upstream name", &u}, {"pool id", &p}, {"host id", &h}});
  const std::string what = fmt::format("{} host {}/{}/{}", down ? "down" : "up", u, p, h);
  gw::cluster::KeyValue up;
  auto kv = etcd_host(c, u, p, h, up);
  auto spec = decode_or_fail<gw::cluster::HostSpec>(kv, gw::cluster::decode_host);
  if (spec.down == down) {
    out("ok: host {}/{}/{} is already {} (etcd revision {})\n", u, p, h, down ? "down" : "up", kv.mod_revision);
    return 0;
  }
  spec.down = down;
  test_delay();
  auto r = run_txn(
      c,
      {{kv.key, "", Target::mod_revision, kv.mod_revision}, {up.key, "", Target::create_revision, up.create_revision}},
      {{false, kv.key, gw::cluster::encode_host(spec)}});
  if (!r.succeeded) conflict(what, kv.key, r.resent);
  return etcd_done(what, r.revision);
}

int etcd_set_host_weight(EtcdCtl& c, const std::string& u, const std::string& p, const std::string& h,
                         uint32_t weight) {
  check_names({{"upstream name", &u}, {"pool id", &p}, {"host id", &h}});
  const std::string what = fmt::format("set host {}/{}/{} weight={}", u, p, h, weight);
  gw::cluster::KeyValue up, pool;
  auto kv = etcd_host(c, u, p, h, up, &pool);
  auto spec = decode_or_fail<gw::cluster::HostSpec>(kv, gw::cluster::decode_host);
  if (spec.weight == weight) {
    out("ok: host {}/{}/{} already has weight {} (etcd revision {})\n", u, p, h, weight, kv.mod_revision);
    return 0;
  }
  spec.weight = weight;
  const std::string warning = etcd_chash(pool) ? etcd_chash_warning(c, u, p, &h, weight) : std::string();
  test_delay();
  auto r = run_txn(
      c,
      {{kv.key, "", Target::mod_revision, kv.mod_revision}, {up.key, "", Target::create_revision, up.create_revision}},
      {{false, kv.key, gw::cluster::encode_host(spec)}});
  if (!r.succeeded) conflict(what, kv.key, r.resent);
  return etcd_done(what, r.revision, warning);
}

int etcd_add_pool(EtcdCtl& c, const std::string& u, const std::string& p, int32_t prio, gw::shm::Method m) {
  check_names({{"upstream name", &u}, {"pool id", &p}}, true);
  const std::string what = fmt::format("add pool {}/{} priority={} method={}", u, p, prio, gw::shm::method_name(m));
  const std::string pk = gw::cluster::pool_key(c.prefix, u, p);
  const gw::cluster::KeyValue up = etcd_upstream(c, u);
  if (etcd_get(c, pk)) throw gw::shm::TableError(fmt::format("pool {}/{} already exists", u, p));
  // Hosts may be there before their pool key (written by hand, or a seed cut
  // off halfway): the nodes take them with it.
  const std::string warning = m == gw::shm::Method::chash ? etcd_chash_warning(c, u, p) : std::string();
  test_delay();
  auto r = run_txn(c, {{pk, "", Target::create_revision, 0}, {up.key, "", Target::create_revision, up.create_revision}},
                   {{false, pk, gw::cluster::encode_pool({prio, m})}});
  if (!r.succeeded) {
    if (etcd_get(c, pk))
      throw gw::shm::TableError(fmt::format("pool {}/{} already exists (another writer added it meanwhile)", u, p));
    conflict(what, up.key, r.resent);
  }
  return etcd_done(what, r.revision, warning);
}

int etcd_remove_pool(EtcdCtl& c, const std::string& u, const std::string& p) {
  check_names({{"upstream name", &u}, {"pool id", &p}});
  const std::string what = fmt::format("remove pool {}/{}", u, p);
  gw::cluster::KeyValue up;
  auto kv = etcd_pool(c, u, p, up);
  const std::string hp = gw::cluster::hosts_prefix(c.prefix, u, p), he = gw::cluster::prefix_end(hp);
  auto hosts = [&] { return c.etcd.range(hp, he, true).count; };
  if (int64_t n = hosts(); n > 0)
    throw gw::shm::TableError(fmt::format("pool {}/{} still has {} host(s); remove them first", u, p, n));
  test_delay();
  auto r = run_txn(c,
                   {{kv.key, "", Target::mod_revision, kv.mod_revision},
                    {hp, he, Target::create_revision, 0},
                    {up.key, "", Target::create_revision, up.create_revision}},
                   {{true, kv.key, ""}});
  if (!r.succeeded) {
    if (int64_t n = hosts(); n > 0)
      throw gw::shm::TableError(fmt::format(
          "pool {}/{} still has {} host(s) (another writer added them meanwhile); remove them first", u, p, n));
    // The key that changed: the upstream's (deleted or recreated), else the pool's.
    auto now_up = etcd_get(c, up.key);
    conflict(what, !now_up || now_up->create_revision != up.create_revision ? up.key : kv.key, r.resent);
  }
  return etcd_done(what, r.revision);
}

int etcd_set_pool(EtcdCtl& c, const std::string& u, const std::string& p, std::optional<int32_t> prio,
                  std::optional<gw::shm::Method> m) {
  check_names({{"upstream name", &u}, {"pool id", &p}});
  gw::cluster::KeyValue up;
  auto kv = etcd_pool(c, u, p, up);
  auto spec = decode_or_fail<gw::cluster::PoolSpec>(kv, gw::cluster::decode_pool);
  const gw::cluster::PoolSpec was = spec;
  if (prio) spec.priority = *prio;
  if (m) spec.method = *m;
  if (spec == was) {  // as set host --weight: what is already so writes nothing
    out("ok: pool {}/{} already has priority={} method={} (etcd revision {})\n", u, p, spec.priority,
        gw::shm::method_name(spec.method), kv.mod_revision);
    return 0;
  }
  const std::string what =
      fmt::format("set pool {}/{} priority={} method={}", u, p, spec.priority, gw::shm::method_name(spec.method));
  // As the shm path: when the method is set (chash, or kept chash).
  const std::string warning = m && *m == gw::shm::Method::chash ? etcd_chash_warning(c, u, p) : std::string();
  test_delay();
  auto r = run_txn(
      c,
      {{kv.key, "", Target::mod_revision, kv.mod_revision}, {up.key, "", Target::create_revision, up.create_revision}},
      {{false, kv.key, gw::cluster::encode_pool(spec)}});
  if (!r.succeeded) conflict(what, kv.key, r.resent);
  return etcd_done(what, r.revision, warning);
}

// ---------------------------------------------------------------- gwctl check

// The state letter of /proc/PID/stat ('R', 'S', 'T', 'Z', ...): 'X' for a
// process that is gone, '?' where it cannot be read.
char process_state(int pid) {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno != EPERM)) return 'X';
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return '?';
  char buf[512] = {};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  const char* paren = std::strrchr(buf, ')');
  return paren && paren + 2 < buf + n ? paren[2] : '?';
}

// Is `a` an address of this host (its network namespace)? A listener may be
// bound to one that is not (the VIP, on a node that does not hold it, with
// net.ipv4.ip_nonlocal_bind=1): a connection to it would leave the node.
bool local_address(const gw::core::SockAddr& a) {
  if (a.family == AF_INET && a.ip[0] == 127) return true;  // 127.0.0.0/8 is all local
  static const uint8_t loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  if (a.family == AF_INET6 && std::memcmp(a.ip, loop6, 16) == 0) return true;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return true;  // unknown: connect, as before
  bool found = false;
  for (ifaddrs* i = list; i && !found; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != a.family) continue;
    gw::core::SockAddr x = gw::core::SockAddr::from_sockaddr(i->ifa_addr);
    found = std::memcmp(x.ip, a.ip, a.family == AF_INET ? 4 : 16) == 0;
  }
  ::freeifaddrs(list);
  return found;
}

// Does a TCP socket of this network namespace listen on exactly `a`? Read
// from /proc/net/tcp{,6}: each address word is printed as the host-order
// value of its network-order bytes, so copying it back gives those bytes.
bool listening_on(const gw::core::SockAddr& a) {
  FILE* f = std::fopen(a.family == AF_INET ? "/proc/net/tcp" : "/proc/net/tcp6", "r");
  if (!f) return false;
  char line[512];
  bool found = false;
  const size_t words = a.family == AF_INET ? 1 : 4;
  if (!std::fgets(line, sizeof(line), f)) line[0] = 0;  // the header
  while (!found && std::fgets(line, sizeof(line), f)) {
    char hex[33] = {};
    unsigned port = 0, state = 0;
    if (std::sscanf(line, " %*u: %32[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", hex, &port, &state) != 3) continue;
    if (state != 0x0A || port != a.port || std::strlen(hex) != words * 8) continue;  // 0x0A: TCP_LISTEN
    uint8_t ip[16] = {};
    for (size_t w = 0; w < words; ++w) {
      char word[9] = {};
      std::memcpy(word, hex + w * 8, 8);
      const uint32_t v = static_cast<uint32_t>(std::strtoul(word, nullptr, 16));
      std::memcpy(ip + w * 4, &v, 4);
    }
    found = std::memcmp(ip, a.ip, words * 4) == 0;
  }
  std::fclose(f);
  return found;
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
  // The master assigns each worker a row; after a reload the new workers use
  // other rows than the old ones, which drain (kWorkerRetiring) and exit. A
  // new worker is in its row once its table is built: right after a reload
  // or a respawn one may not be yet, so they are waited for up to
  // --timeout-ms (a reload used to fail checks for 50-100 ms). A worker
  // stopped (SIGSTOP, a debugger) or stuck (no loop round for
  // kStuckMs) fails at once: the connections its socket takes hang.
  constexpr uint64_t kStuckMs = 3000;  // its rounds are 1 s apart at most
  const uint64_t deadline = gw::core::monotonic_ms() + timeout;
  for (;;) {
    const uint32_t n = std::min(hdr.workers.load(), gw::shm::kMaxWorkers);
    uint32_t running = 0;
    for (uint32_t w = 0; w < gw::shm::kMaxWorkers; ++w) {
      const auto& row = seg.worker(w);
      const int pid = row.pid.load(std::memory_order_acquire);
      if (pid <= 0 || (row.flags.load(std::memory_order_relaxed) & gw::shm::kWorkerRetiring)) continue;
      const char st = process_state(pid);
      if (st == 'X' || st == 'Z') continue;
      if (st == 'T' || st == 't')
        throw Failure(
            fmt::format("check failed: worker pid {} is stopped (SIGSTOP or a debugger): the "
                        "connections its listening sockets take wait",
                        pid));
      const uint64_t beat = row.heartbeat_ms.load(std::memory_order_relaxed);
      const uint64_t now = gw::core::monotonic_ms();
      if (beat != 0 && now > beat + kStuckMs && row.pid.load(std::memory_order_acquire) == pid)
        throw Failure(
            fmt::format("check failed: worker pid {} has not run its event loop for {} ms (stuck?)", pid, now - beat));
      ++running;
    }
    if (running >= n) break;
    if (gw::core::monotonic_ms() >= deadline)
      throw Failure(fmt::format("check failed: {} of {} workers are running", running, n));
    ::usleep(10000);
  }
  const uint32_t n = std::min(hdr.workers.load(), gw::shm::kMaxWorkers);
  gw::shm::ListenerList listeners;
  if (!gw::shm::read_listeners(hdr, listeners))
    throw Failure("check failed: the listener list in shm stays mid-write (the master died while writing it?)");
  for (uint32_t i = 0; i < listeners.n; ++i) {
    const auto& l = listeners.items[i];
    gw::core::SockAddr a = l.addr;
    // A wildcard listener is checked on loopback.
    static const uint8_t zero[16] = {};
    if (std::memcmp(a.ip, zero, a.family == AF_INET ? 4 : 16) == 0) {
      std::memset(a.ip, 0, sizeof(a.ip));
      if (a.family == AF_INET) a.ip[0] = 127, a.ip[3] = 1;
      else a.ip[15] = 1;
    }
    if (!local_address(a)) {
      // Not an address of this node: a connection would test whichever node
      // holds it (or fail while none does, and keep this node from taking
      // it over). Its listening socket is what this node can check.
      if (!listening_on(a))
        throw Failure(
            fmt::format("check failed: listener {} ({}) is not listening (the address is not this "
                        "node's; no socket listens on it)",
                        name_of(l.name), l.addr.to_string()));
      continue;
    }
    int err = 0;
    int fd = gw::net::connect_wait(a, timeout, err);
    if (fd < 0)
      throw Failure(fmt::format("check failed: listener {} ({}) does not accept connections: {}", name_of(l.name),
                                l.addr.to_string(), err == ETIMEDOUT ? "connect timed out" : std::strerror(err)));
    ::close(fd);
  }
  out("ok: master pid {}, {} worker(s) running, {} listener(s) accepting\n", hdr.master_pid.load(), n, listeners.n);
  return 0;
}

// ---------------------------------------------------------------- status: cluster

// A text table whose columns are as wide as their widest cell (at least the
// width given), so a long name or a large count shifts the columns rather
// than running into the next one. Caption lines (an upstream, a pool) sit
// between the rows and take no part in the widths.
class TextTable {
 public:
  struct Column {
    std::string title;
    size_t min_width;
    bool right;  // numbers are right-aligned
  };
  explicit TextTable(std::vector<Column> cols) : cols_(std::move(cols)) {}

  void caption(std::string line) { lines_.push_back({std::move(line), {}}); }
  void row(std::vector<std::string> cells) { lines_.push_back({{}, std::move(cells)}); }

  // Writes the title line and then the captions and rows, in order.
  void print() const {
    std::vector<size_t> w;
    for (const auto& c : cols_) w.push_back(std::max(c.min_width, c.title.size()));
    for (const auto& l : lines_)
      for (size_t i = 0; i < l.cells.size() && i < w.size(); ++i) w[i] = std::max(w[i], l.cells[i].size());
    auto put = [&](const std::vector<std::string>& cells) {
      std::string line;
      for (size_t i = 0; i < cells.size() && i < w.size(); ++i) {
        if (i) line += ' ';
        line += cols_[i].right ? fmt::format("{:>{}}", cells[i], w[i]) : fmt::format("{:<{}}", cells[i], w[i]);
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out("{}\n", line);
    };
    std::vector<std::string> titles;
    for (const auto& c : cols_) titles.push_back(c.title);
    put(titles);
    for (const auto& l : lines_) {
      if (l.cells.empty()) out("{}\n", l.caption);
      else put(l.cells);
    }
  }

 private:
  struct Line {
    std::string caption;
    std::vector<std::string> cells;  // empty for a caption
  };
  std::vector<Column> cols_;
  std::vector<Line> lines_;
};

int cmd_status(const Options& o) {
  gw::shm::Segment seg = attach(o, false);
  gw::shm::Table t(seg.caps());
  const char* refused = nullptr;
  gw::shm::read_published(seg, t, &refused);
  if (refused)
    throw Failure(
        fmt::format("the published table of shm \"{}\" is inconsistent ({}); nothing to show", seg.name(), refused));
  if (o.json) {
    // One function builds it for gwctl and the admin server's GET /status.
    out("{}\n", gw::admin::status_json(seg, t));
    return 0;
  }
  const auto& hdr = seg.header();
  int master = seg.master_alive() ? hdr.master_pid.load() : 0;
  struct W {
    uint32_t slot;
    int pid;
    uint64_t gen, conns, accepted, fallbacks, no_host, frames, host_closed;
    uint64_t http_requests, http_retries, http_reused, http_tunnels;
    uint64_t outcomes[gw::shm::kHttpOutcomeKinds];
    // the guard (limit_conn, limit_req, auth)
    uint64_t conn_rejected, req_limited, limit_full, evictions, auth_ok, auth_failed, auth_forbidden, basic_cache_hits,
        jwt_cache_hits;
  };
  // The totals below sum every row, not only those of running workers: a row
  // keeps what its workers counted after they exit (a reload's old
  // generation, a respawned worker), so a total never goes back.
  uint64_t reject_totals[gw::proxy::kFrameErrorCount] = {};
  W sum{};
  std::vector<W> workers;
  for (uint32_t i = 0; i < gw::shm::kMaxWorkers && master; ++i) {
    const auto& w = seg.worker(i);
    W r{i,
        w.pid.load(),
        w.generation.load(),
        w.connections.load(),
        w.accepted.load(),
        w.hash_fallbacks.load(),
        w.no_host.load(),
        w.frames_routed.load(),
        w.host_closed.load(),
        w.http_requests.load(),
        w.http_retries.load(),
        w.http_keepalive_reused.load(),
        w.http_tunnels.load(),
        {},
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0};
    for (size_t k = 0; k < gw::shm::kHttpOutcomeKinds; ++k) r.outcomes[k] = w.http_outcomes[k].load();
    const auto& g = seg.guard(i);
    r.conn_rejected = g.conn_rejected.load(), r.req_limited = g.req_limited.load(), r.limit_full = g.limit_full.load();
    r.evictions = g.evictions.load(), r.auth_ok = g.auth_ok.load(), r.auth_failed = g.auth_failed.load();
    r.auth_forbidden = g.auth_forbidden.load(), r.basic_cache_hits = g.basic_cache_hits.load(),
    r.jwt_cache_hits = g.jwt_cache_hits.load();
    for (size_t k = 1; k < gw::proxy::kFrameErrorCount; ++k) reject_totals[k] += w.frame_rejects[k].load();
    sum.frames += r.frames, sum.host_closed += r.host_closed;
    sum.http_requests += r.http_requests, sum.http_retries += r.http_retries, sum.http_reused += r.http_reused;
    sum.http_tunnels += r.http_tunnels;
    for (size_t k = 0; k < gw::shm::kHttpOutcomeKinds; ++k) sum.outcomes[k] += r.outcomes[k];
    sum.conn_rejected += r.conn_rejected, sum.req_limited += r.req_limited, sum.limit_full += r.limit_full;
    sum.evictions += r.evictions, sum.auth_ok += r.auth_ok, sum.auth_failed += r.auth_failed;
    sum.auth_forbidden += r.auth_forbidden, sum.basic_cache_hits += r.basic_cache_hits,
        sum.jwt_cache_hits += r.jwt_cache_hits;
    if (r.pid > 0) workers.push_back(r);
  }
  const gw::api::LimitTable::Stats lim =
      gw::api::LimitTable(seg.limit_entries(), seg.caps().max_limit_keys, nullptr, nullptr).stats();
  auto hosts = t.hosts();
  char ts[40];
  gw::core::format_iso8601(t.header().updated_wall_ms, ts, sizeof(ts));
  if (master)
    out("gateway: shm \"{}\", master pid {}, {} worker(s), table generation {} (changed {})\n", seg.name(), master,
        workers.size(), t.header().generation, ts);
  else
    out("gateway: shm \"{}\", master NOT RUNNING, table generation {} (changed {})\n", seg.name(),
        t.header().generation, ts);
  if (auto cv = gw::admin::cluster_view(seg); cv.on) out("{}\n", gw::core::one_line(gw::admin::cluster_line(cv)));
  for (const auto& w : workers)
    out("  worker {}: pid {}, generation {}, {} connection(s), {} accepted, {} hash fallback(s), {} without a host\n",
        w.slot, w.pid, w.gen, w.conns, w.accepted, w.fallbacks, w.no_host);
  {
    std::string line;
    for (size_t k = 1; k < gw::proxy::kFrameErrorCount; ++k)
      if (reject_totals[k])
        line += fmt::format("{}{} {}", line.empty() ? "" : ", ",
                            gw::proxy::frame_error_name(static_cast<gw::proxy::FrameError>(k)), reject_totals[k]);
    if (sum.frames) out("  frames routed one by one (mode \"frame\"): {}\n", sum.frames);
    if (sum.host_closed)
      out("  connections closed because their host went (on_host_remove \"close\"): {}\n", sum.host_closed);
    if (!line.empty()) out("  frame connections refused: {}\n", line);
    const W& g = sum;
    if (g.conn_rejected || g.req_limited || g.limit_full || lim.used)
      out("  limits: {} of {} entries in use ({} with open connections, {} connection(s)), {} eviction(s); "
          "{} connection(s) refused by limit_conn, {} request(s) answered 429, {} refused for a full set\n",
          lim.used, seg.caps().max_limit_keys, lim.pinned, lim.conns, g.evictions, g.conn_rejected, g.req_limited,
          g.limit_full);
    if (g.auth_ok || g.auth_failed || g.auth_forbidden)
      out("  auth: {} request(s) authenticated ({} basic-auth and {} jwt from the cache), {} refused (401, or 400 for "
          "a credential sent twice), {} answered 403\n",
          g.auth_ok, g.basic_cache_hits, g.jwt_cache_hits, g.auth_failed, g.auth_forbidden);
    if (sum.http_requests) {
      std::string answered;
      for (size_t k = 1; k < std::size(gw::proxy::kHttpOutcomeNames); ++k)
        if (sum.outcomes[k]) answered += fmt::format(", {} {}", gw::proxy::kHttpOutcomeNames[k], sum.outcomes[k]);
      out("  http: {} request(s), {} retried attempt(s), {} over kept-alive upstream connections, {} tunnel(s){}\n",
          sum.http_requests, sum.http_retries, sum.http_reused, sum.http_tunnels, answered);
    }
  }
  // The hosts, under their upstream and pool. SENT and RECEIVED are the bytes
  // to and from the host (status --json: sent_bytes, received_bytes).
  out("\n");
  TextTable ht({{"UPSTREAM/POOL/HOST", 28, false},
                {"ADDRESS", 24, false},
                {"WEIGHT", 6, true},
                {"ADMIN", 6, false},
                {"HEALTH", 6, false},
                {"ACTIVE", 7, true},
                {"TOTAL", 9, true},
                {"FAILURES", 8, true},
                {"SENT", 10, true},
                {"RECEIVED", 10, true}});
  for (size_t u = 0; u < t.upstreams().size(); ++u) {
    const auto& ur = t.upstreams()[u];
    // retry.tries (http) is shown where it differs from tries (tcp and frame connects).
    const std::string retry = ur.retry_tries && ur.retry_tries != ur.tries
                                  ? fmt::format(", http retry.tries {}", ur.retry_tries)
                                  : std::string();
    ht.caption(fmt::format("{} (connect {} ms, idle {} ms, max_fails {} per {} ms, tries {}{})", name_of(ur.name),
                           ur.connect_timeout_ms, ur.idle_timeout_ms, ur.max_fails, ur.fail_timeout_ms, ur.tries,
                           retry));
    for (size_t p = 0; p < t.pools().size(); ++p) {
      const auto& pr = t.pools()[p];
      if (pr.upstream != u) continue;
      ht.caption(fmt::format("  {}/{} (priority {}, {})", name_of(ur.name), name_of(pr.id), pr.priority,
                             gw::shm::method_name(static_cast<gw::shm::Method>(pr.method))));
      for (size_t h = 0; h < hosts.size(); ++h) {
        const auto& hr = hosts[h];
        if (hr.pool != p) continue;
        auto tot = gw::shm::host_totals(seg, hr.slot, hr.tag);
        auto st = gw::shm::host_stats_totals(seg, hr.slot, hr.tag);
        // a table read before the slot went to another host: not that host's count
        const uint64_t failures = seg.host(hr.slot).tag.load() == hr.tag ? seg.host(hr.slot).failures.load() : 0;
        ht.row({fmt::format("    {}", name_of(hr.id)), hr.addr.to_string(), std::to_string(hr.weight),
                hr.admin_down ? "down" : "up", gw::admin::host_health(seg, t, hr),
                std::to_string(master ? tot.active : 0), std::to_string(tot.total), std::to_string(failures),
                gw::admin::byte_size(st.sent_bytes), gw::admin::byte_size(st.received_bytes)});
      }
    }
  }
  ht.print();
  // The running master's listeners (the bytes on their clients' sockets).
  if (const auto listeners = gw::admin::listener_views(seg); !listeners.empty()) {
    out("\n");
    TextTable lt({{"LISTENER", 28, false},
                  {"ADDRESS", 24, false},
                  {"ACCEPTED", 9, true},
                  {"ACTIVE", 7, true},
                  {"RECEIVED", 10, true},
                  {"SENT", 10, true}});
    for (const auto& l : listeners)
      lt.row({gw::core::one_line(l.name), l.addr.to_string(), std::to_string(l.totals.accepted),
              std::to_string(l.totals.active), gw::admin::byte_size(l.totals.received_bytes),
              gw::admin::byte_size(l.totals.sent_bytes)});
    lt.print();
  }
  if (!t.consumers().empty()) {
    std::string names;
    for (const auto& c : t.consumers()) names += fmt::format("{}{}", names.empty() ? "" : ", ", name_of(c.name));
    out("\nCONSUMERS (key-auth; keys are kept as SHA-256 hashes only): {}\n", names);
  }
  if (!t.routes().empty()) {
    // As wide as the longest rule id (the cells stay under their titles).
    size_t w = 26;
    for (size_t k = 0; k < t.rules().size(); ++k) w = std::max(w, name_of(t.rules()[k].id).size());
    out("\n{:<{}} {}\n", "LISTENER/ROUTE/RULE", w + 2, "MATCH -> UPSTREAM (first match wins)");
    for (size_t r = 0; r < t.routes().size(); ++r) {
      const auto& rr = t.routes()[r];
      out("{}/{}\n", name_of(rr.listener), name_of(rr.name));
      for (size_t k = 0; k < t.rules().size(); ++k) {
        if (t.rules()[k].route != r) continue;
        auto spec = t.rule_spec(static_cast<int>(k));
        out("  {:<{}} {}\n", spec.id, w, gw::core::one_line(gw::shm::describe_rule(spec)));
      }
    }
  }
  return 0;
}

volatile sig_atomic_t g_stop = 0;

// The identity of the segment's file (it is made again when gwd recreates it).
std::pair<dev_t, ino_t> segment_file_id(const std::string& name) {
  struct stat st {};
  if (::stat(("/dev/shm/" + name).c_str(), &st) != 0) return {0, 0};
  return {st.st_dev, st.st_ino};
}

// Is standard output a pipe or socket whose reading end is closed? (poll
// says POLLERR on such a pipe's writing end, POLLHUP on such a socket.)
bool stdout_reader_gone() {
  struct stat st {};
  if (::fstat(STDOUT_FILENO, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) return false;
  pollfd p{STDOUT_FILENO, 0, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP));
}

int cmd_events(const Options& o) {
  const std::string name = shm_name(o);
  auto file_id = segment_file_id(name);
  gw::shm::Segment seg = attach(o, false);
  uint64_t head = seg.header().event_head.load(std::memory_order_acquire);
  uint64_t cur = head > gw::shm::kEventCapacity ? head - gw::shm::kEventCapacity : 0;
  ::signal(SIGINT, [](int) { g_stop = 1; });
  ::signal(SIGTERM, [](int) { g_stop = 1; });
  uint64_t stuck_since = 0, lost = 0, unfinished = 0, next_file_check = 0;
  auto report_lost = [&] {
    if (!lost && !unfinished) return;
    flush_stdout();
    if (lost)
      fmt::print(stderr, "gwctl: {} event(s) lost: the ring ({} entries) wrapped before they were read\n", lost,
                 gw::shm::kEventCapacity);
    if (unfinished)
      fmt::print(stderr, "gwctl: {} event(s) skipped: their writer never finished them (killed while writing one)\n",
                 unfinished);
    lost = unfinished = 0;
  };
  for (;;) {
    head = seg.header().event_head.load(std::memory_order_acquire);
    if (head > cur + gw::shm::kEventCapacity) {  // fell behind by more than the ring
      lost += head - gw::shm::kEventCapacity - cur;
      cur = head - gw::shm::kEventCapacity;
    }
    while (cur < head) {
      gw::shm::EventData e{};
      auto r = gw::shm::read_event(seg, cur, e);
      if (r == gw::shm::EventRead::not_yet) {
        // Claimed but not yet complete; a writer that died mid-event never
        // completes it, so skip it: at once when the next event was completed
        // over a second ago (as GET /events does; a second's wait per entry
        // made a run over many such entries take that many seconds), else
        // after a second of waiting on it (also without --follow: the events
        // after it must not stay hidden).
        const bool dead = gw::shm::event_abandoned(seg, cur, head, gw::core::wall_ms());
        uint64_t now = gw::core::monotonic_ms();
        if (!stuck_since) stuck_since = now;
        if (!dead && now - stuck_since < 1000) {
          if (o.follow) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          continue;
        }
        ++unfinished;
      } else if (r == gw::shm::EventRead::ok) {
        // An event quotes values (a rule's header, an etcd error): escaped
        // as in the error lines, so that no terminal acts on them.
        out("{}\n", gw::core::one_line(gw::shm::format_event(cur, e)));
      } else {
        ++lost;
      }
      stuck_since = 0;
      ++cur;
    }
    report_lost();
    flush_stdout();
    if (!o.follow || g_stop) break;
    // The reader of a pipe gone (`| grep -m1 ...` matched): done, as tail -f
    // ends. Found only at the next write before, that is the next event,
    // and a pipeline waiting on a quiet gateway never returned.
    if (stdout_reader_gone()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    // gwd may make the segment again (new capacities, another ABI, a restart
    // after it was removed): follow the new one.
    const uint64_t now = gw::core::monotonic_ms();
    if (now >= next_file_check) {
      next_file_check = now + 1000;
      const auto id = segment_file_id(name);
      if (id.second != 0 && id != file_id) {
        try {
          gw::shm::Segment fresh = attach(o, false);
          seg = std::move(fresh);
          file_id = id;
          cur = 0;
          stuck_since = 0;
          fmt::print(stderr, "gwctl: shm \"{}\" was made again (gwd restarted); following the new segment\n", name);
        } catch (const std::exception&) {
          // Being made (not valid yet): tried again in a second.
        }
      }
    }
  }
  return 0;
}

}  // namespace

// An empty value given on purpose or by an unset variable ("--shm $NAME") is
// refused, never taken for the default (which could be another gateway).
void reject_empty(const CLI::App& a) {
  for (const CLI::Option* opt : a.get_options()) {
    if (opt->count() == 0 || opt->get_items_expected_max() == 0) continue;  // not given, or a flag
    for (const auto& v : opt->results())
      if (v.empty()) throw Failure(fmt::format("{}: an empty value", opt->get_name()));
  }
  for (const CLI::App* sub : a.get_subcommands()) reject_empty(*sub);
}

// What a command line gwctl did not understand was, for its usage error:
// the first word no command, object or option took ("stauts", "add hots",
// "add host ... -x"), or else what CLI11 says (a missing argument).
std::string usage_problem(const CLI::App& app, const CLI::ParseError& e) {
  // The deepest (sub)command given: gwctl, a verb, or a verb's object.
  const CLI::App* at = &app;
  std::string path;
  while (!at->get_subcommands().empty()) {
    at = at->get_subcommands().front();
    path += (path.empty() ? "" : " ") + at->get_name();
  }
  std::string choices;
  for (const CLI::App* sub : at->get_subcommands([](const CLI::App*) { return true; }))
    choices += (choices.empty() ? "" : ", ") + sub->get_name();
  const std::vector<std::string> extra = app.remaining(true);
  if (!extra.empty()) {
    const std::string& word = extra.front();
    if (word.size() > 1 && word.front() == '-') {
      // An id may start with '-' ("-1"): it is read as an option unless it
      // comes after "--" (as "-h", which shows the help and changes nothing).
      bool positionals = false;
      for (const CLI::Option* o : at->get_options()) positionals |= o->get_positional();
      return fmt::format("unknown option \"{}\"{}{}", word, path.empty() ? "" : fmt::format(" for \"{}\"", path),
                         positionals ? " (a name or id that starts with '-' goes after \"--\")" : "");
    }
    if (at == &app) return fmt::format("unknown command \"{}\"", word);
    if (!choices.empty()) return fmt::format("unknown object \"{}\" for \"{}\" (expected {})", word, path, choices);
    return fmt::format("unexpected argument \"{}\" for \"{}\"", word, path);
  }
  if (!choices.empty() && dynamic_cast<const CLI::RequiredError*>(&e))
    return at == &app ? fmt::format("a command is required ({})", choices)
                      : fmt::format("\"{}\" needs an object ({})", path, choices);
  // CLI11 says "--header: At Most 1 required but received 2".
  const std::string what = e.what();
  if (const size_t at_most = what.find(": At Most 1 required but received"); at_most != std::string::npos) {
    const std::string opt = what.substr(0, at_most);
    return fmt::format("{} may be given only once{}", opt,
                       opt == "--header" || opt == "--cookie" ? " (a rule has one header and one cookie matcher)" : "");
  }
  return what;
}

int main(int argc, char** argv) {
  if (!gw::core::ensure_std_fds()) return 1;  // (nowhere to say why)
  gw::core::log_set_role("gwctl");
  gw::core::log_set_level(gw::core::LogLevel::warn);
  gw::shm::Writer::require_live_master(true);  // never a change into a segment no gwd reads
  Options o;
  CLI::App app{"gwctl: inspect and change a running gw gateway, live"};
  app.fallthrough();
  app.require_subcommand(1);
  app.set_version_flag("-V,--version", fmt::format("gwctl {}", gw::core::kVersion));
  app.add_option("--shm", o.shm, "shm segment name (shm.name in the config; default gw)");
  app.add_option("-c,--config", o.config, "read the shm name (and, with --etcd, cluster.prefix) from this config file");
  app.add_option("--etcd", o.etcd, "change etcd (URL[,URL...], e.g. http://127.0.0.1:2379) instead of local shm")
      ->type_name("URL");
  app.add_option("--prefix", o.prefix, "with --etcd: the key prefix (default: the config's cluster.prefix, else /gw/)");

  auto* status = app.add_subcommand("status", "upstreams, pools, hosts and their state");
  status->add_flag("--json", o.json, "machine-readable output");
  auto* check = app.add_subcommand("check",
                                   "exit 0 if the master and every worker run and every listener accepts "
                                   "(for keepalived's vrrp_script), else 1 with the reason");
  check->add_option("--timeout-ms", o.timeout_ms, "connect timeout per listener (default 1000)");
  auto* events = app.add_subcommand("events", "print the event log");
  events->add_flag("-f,--follow", o.follow, "keep printing new events");

  auto* add = app.add_subcommand("add", "add a host, a pool, a rule or a consumer")->require_subcommand(1);
  auto* remove = app.add_subcommand("remove", "remove a host, a pool, a rule or a consumer")->require_subcommand(1);
  auto* down = app.add_subcommand("down", "take a host out of rotation (until `up`)")->require_subcommand(1);
  auto* up = app.add_subcommand("up", "put a host back into rotation")->require_subcommand(1);
  auto* set = app.add_subcommand("set", "change a host's weight, a pool or a rule")->require_subcommand(1);

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
  auto* set_host = set->add_subcommand("host", "set host UPSTREAM/POOL HOST_ID --weight N");
  set_host->add_option("pool", o.path, "UPSTREAM/POOL")->required();
  set_host->add_option("host", o.id, "host id")->required();
  set_host->add_option("--weight", o.weight, "0..1000 (0: no new connections)")->required();
  auto* set_pool = set->add_subcommand("pool", "set pool UPSTREAM POOL [--priority N] [--method M]");
  set_pool->add_option("upstream", o.path, "UPSTREAM")->required();
  set_pool->add_option("pool", o.id, "pool id")->required();
  set_pool->add_option("--priority", o.priority, "lower is preferred");
  set_pool->add_option("--method", o.method, "balancing method");

  // A matcher given an empty value ("--ip \"$CANARY_IPS\"" with the variable
  // unset) is refused: read as no matcher, the rule would match every client.
  const CLI::Validator not_empty(
      [](std::string& v) {
        return v.empty() ? std::string("an empty value: a rule without this matcher would match every client")
                         : std::string();
      },
      "NOT EMPTY");
  auto rule_matchers = [&o, &not_empty](CLI::App* cmd) {
    cmd->add_option("listener", o.listener, "http listener name")->required();
    cmd->add_option("route", o.route, "route name")->required();
    cmd->add_option("rule", o.id, "rule id")->required();
    cmd->add_option("--upstream", o.upstream, "where matching requests go")->required();
    cmd->add_option("--ip", o.ip, "client addresses: IP or IP/PREFIX, comma separated")->check(not_empty);
    cmd->add_option("--ip-file", o.ip_file, "client addresses, one IP or IP/PREFIX per line ('#' comments)")
        ->check(not_empty);
    cmd->add_option("--header", o.header, "NAME=VALUE: a request header equals VALUE")->check(not_empty);
    cmd->add_option("--cookie", o.cookie, "NAME=VALUE: a cookie equals VALUE")->check(not_empty);
    cmd->add_option("--percent", o.percent,
                    "0..100: a stable share of clients (hash of the route's key, else the client IP)")
        ->check(not_empty);
  };
  auto* add_rule = add->add_subcommand(
      "rule", "add rule LISTENER ROUTE RULE_ID --upstream U [matchers]: tried after the route's other rules");
  rule_matchers(add_rule);
  auto* set_rule =
      set->add_subcommand("rule", "set rule LISTENER ROUTE RULE_ID --upstream U [matchers]: replaces a rule in place");
  rule_matchers(set_rule);
  auto* add_consumer =
      add->add_subcommand("consumer", "add consumer NAME --key KEY | --key-file FILE: a key-auth consumer");
  add_consumer->add_option("consumer", o.id, "consumer name (passed upstream in X-Consumer-Username)")->required();
  add_consumer->add_option("--key", o.key, "the API key (1..512 visible ASCII characters); only its SHA-256 is stored");
  add_consumer->add_option("--key-file", o.key_file, "read the key from this file (one line), keeping it out of ps");
  auto* rm_consumer = remove->add_subcommand("consumer", "remove consumer NAME");
  rm_consumer->add_option("consumer", o.id, "consumer name")->required();
  auto* rm_rule = remove->add_subcommand("rule", "remove rule LISTENER ROUTE RULE_ID");
  rm_rule->add_option("listener", o.listener, "http listener name")->required();
  rm_rule->add_option("route", o.route, "route name")->required();
  rm_rule->add_option("rule", o.id, "rule id")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help and --version exit 0 as in gwd; a usage error names what was not
    // understood (CLI11 says "A subcommand is required" for a misspelt one).
    if (e.get_exit_code() == 0) {
      // (--help into a full disk is a failure too, as every command's output is.)
      errno = 0;
      const int rc = app.exit(e);  // (CLI11 flushes std::cout itself: its errno is the reason)
      if (std::ferror(stdout) && errno != 0 && !g_stdout_errno) g_stdout_errno = errno;
      try {
        flush_stdout();
      } catch (const std::exception& f) {
        fmt::print(stderr, "gwctl: {}\n", gw::core::one_line(f.what()));
        return 1;
      }
      return rc;
    }
    return gw::core::usage_error("gwctl", usage_problem(app, e));
  }

  // The command; its status, once its output is written.
  auto run = [&]() -> int {
    reject_empty(app);
    const bool to_etcd = !o.etcd.empty();
    if (!o.prefix.empty() && !to_etcd) throw UsageFailure("--prefix goes with --etcd (it names etcd keys)");
    if (to_etcd &&
        !(*add_host || *rm_host || *down_host || *up_host || *set_host || *add_pool || *rm_pool || *set_pool))
      throw Failure(
          "--etcd goes with a change to pools or hosts (add/remove/down/up/set host, add/remove/set pool); rules "
          "and consumers are kept per node, changed without --etcd");
    if (*status) return cmd_status(o);
    if (*events) return cmd_events(o);
    if (*check) return cmd_check(o);
    if (*add_host) {
      auto [u, p] = split_pool(o.path);
      gw::core::SockAddr addr;
      std::string why;
      if (!gw::core::parse_host_address(o.address, addr, why))
        throw Failure(fmt::format("bad address \"{}\": {}", o.address, why));
      uint32_t weight = o.weight.empty() ? 1 : parse_u32(o.weight, "--weight", 0, gw::shm::kMaxWeight);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_add_host(c, u, p, o.id, addr, weight);
      }
      return report(gw::shm::ops::add_host(attach(o, true), u, p, o.id, addr, weight));
    }
    if (*rm_host) {
      auto [u, p] = split_pool(o.path);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_remove_host(c, u, p, o.id);
      }
      return report(gw::shm::ops::remove_host(attach(o, true), u, p, o.id));
    }
    if (*down_host || *up_host) {
      auto [u, p] = split_pool(o.path);
      bool to_down = static_cast<bool>(*down_host);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_down_up(c, u, p, o.id, to_down);
      }
      return report(gw::shm::ops::set_host_down(attach(o, true), u, p, o.id, to_down, "gwctl"));
    }
    if (*set_host) {
      auto [u, p] = split_pool(o.path);
      const uint32_t weight = parse_u32(o.weight, "--weight", 0, gw::shm::kMaxWeight);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_set_host_weight(c, u, p, o.id, weight);
      }
      return report(gw::shm::ops::set_host(attach(o, true), u, p, o.id, weight, std::nullopt, "gwctl"));
    }
    if (*add_pool) {
      int32_t prio = o.priority.empty() ? 0 : parse_i32(o.priority, "--priority");
      gw::shm::Method m = o.method.empty() ? gw::shm::Method::round_robin : parse_method_arg(o.method);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_add_pool(c, o.path, o.id, prio, m);
      }
      return report(gw::shm::ops::add_pool(attach(o, true), o.path, o.id, prio, m));
    }
    if (*rm_pool) {
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_remove_pool(c, o.path, o.id);
      }
      return report(gw::shm::ops::remove_pool(attach(o, true), o.path, o.id));
    }
    if (*add_rule || *set_rule) {
      const bool replace = static_cast<bool>(*set_rule);
      gw::shm::Segment seg = attach(o, true);
      gw::shm::RuleSpec spec = rule_from_options(o, seg.caps());
      return report(replace ? gw::shm::ops::set_rule(seg, o.listener, o.route, spec)
                            : gw::shm::ops::add_rule(seg, o.listener, o.route, spec));
    }
    if (*add_consumer) {
      std::string key = o.key;
      if (!o.key.empty() && !o.key_file.empty()) throw UsageFailure("give either --key or --key-file, not both");
      if (!o.key_file.empty()) {
        std::FILE* f = std::fopen(o.key_file.c_str(), "r");
        if (!f) throw Failure(fmt::format("--key-file {}: {}", o.key_file, std::strerror(errno)));
        char buf[1024];
        size_t n = std::fread(buf, 1, sizeof(buf), f);
        const bool failed = std::ferror(f) != 0;
        const int err = errno;
        std::fclose(f);
        if (failed) throw Failure(fmt::format("--key-file {}: {}", o.key_file, std::strerror(err)));
        key.assign(buf, n);
        while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
        if (key.empty()) throw Failure(fmt::format("--key-file {}: no key in it (an empty file)", o.key_file));
        if (key.find('\n') != std::string::npos)
          throw Failure(fmt::format("--key-file {}: more than one line (the key is the file's one line)", o.key_file));
        if (!gw::config::valid_api_key(key))
          throw Failure(fmt::format("--key-file {}: the key must be 1..{} visible ASCII characters", o.key_file,
                                    gw::config::kMaxApiKey));
      }
      if (key.empty()) throw UsageFailure("add consumer needs --key KEY or --key-file FILE");
      if (!gw::config::valid_api_key(key))
        throw Failure(fmt::format("the key must be 1..{} visible ASCII characters", gw::config::kMaxApiKey));
      if (auto why = gw::shm::check_new_name(o.id); !why.empty())
        throw Failure(fmt::format("consumer name \"{}\" {}", o.id, why));
      uint8_t digest[gw::shm::kSha256Len];
      if (!gw::api::sha256(key, digest)) throw Failure("SHA-256 failed");
      return report(gw::shm::ops::add_consumer(attach(o, true), o.id, digest));
    }
    if (*rm_consumer) return report(gw::shm::ops::remove_consumer(attach(o, true), o.id));
    if (*rm_rule) return report(gw::shm::ops::remove_rule(attach(o, true), o.listener, o.route, o.id));
    if (*set_pool) {
      if (o.priority.empty() && o.method.empty()) throw UsageFailure("set pool needs --priority and/or --method");
      std::optional<int32_t> prio;
      std::optional<gw::shm::Method> m;
      if (!o.priority.empty()) prio = parse_i32(o.priority, "--priority");
      if (!o.method.empty()) m = parse_method_arg(o.method);
      if (to_etcd) {
        EtcdCtl c = etcd_ctl(o);
        return etcd_set_pool(c, o.path, o.id, prio, m);
      }
      return report(gw::shm::ops::set_pool(attach(o, true), o.path, o.id, prio, m));
    }
    return 2;
  };
  try {
    const int rc = run();
    flush_stdout();
    return rc;
  } catch (const UsageFailure& e) {
    return gw::core::usage_error("gwctl", e.what());
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "gwctl: {}\n", gw::core::one_line(e.what()));
    return 1;
  }
}
