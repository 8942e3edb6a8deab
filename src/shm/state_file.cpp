#include "gw/shm/state_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <simdjson.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <type_traits>

#include "gw/core/clock.hpp"
#include "gw/core/fd.hpp"
#include "gw/core/json_error.hpp"
#include "gw/core/log.hpp"

namespace gw::shm {

State state_from_table(const Table& t) {
  State s;
  s.generation = t.header().generation;
  auto ups = t.upstreams();
  auto pools = t.pools();
  auto hosts = t.hosts();
  for (size_t u = 0; u < ups.size(); ++u) {
    StateUpstream su{std::string(name_of(ups[u].name)), {}};
    for (size_t p = 0; p < pools.size(); ++p) {
      if (pools[p].upstream != u) continue;
      StatePool sp{std::string(name_of(pools[p].id)), pools[p].priority, static_cast<Method>(pools[p].method), {}};
      for (const auto& h : hosts)
        if (h.pool == p) sp.hosts.push_back({std::string(name_of(h.id)), h.addr, h.weight, h.admin_down != 0});
      su.pools.push_back(std::move(sp));
    }
    s.upstreams.push_back(std::move(su));
  }
  s.has_routes = true;
  auto routes = t.routes();
  for (size_t r = 0; r < routes.size(); ++r) {
    StateRoute sr{std::string(name_of(routes[r].listener)), std::string(name_of(routes[r].name)), {}};
    auto rules = t.rules();
    for (size_t i = 0; i < rules.size(); ++i)
      if (rules[i].route == r) sr.rules.push_back(t.rule_spec(static_cast<int>(i)));
    s.routes.push_back(std::move(sr));
  }
  s.has_consumers = true;
  for (const auto& c : t.consumers()) {
    StateConsumer sc;
    sc.name = name_of(c.name);
    std::memcpy(sc.key_sha256, c.key_sha256, kSha256Len);
    s.consumers.push_back(std::move(sc));
  }
  return s;
}

namespace {

// Rule values may hold any visible character, '"' and '\\' included (UTF-8:
// check_rule() refuses other bytes, and they could not be read back).
std::string json_string(std::string_view v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Gives the temporary file `fd` the owner and group of `was` (the file it
// replaces). One this process may not give (EPERM; EINVAL: an id not mapped in
// its user namespace) is not an error: the file then belongs to this process's
// user or group, and a warning says so. The next rewrite finds it so and says
// nothing: the warning comes once per change of owner.
template <typename Fail>
void keep_owner(int fd, const std::string& path, const struct stat& was, Fail& fail) {
  struct stat now {};
  if (::fstat(fd, &now) != 0) fail("fstat");
  if (now.st_uid == was.st_uid && now.st_gid == was.st_gid) return;
  if (::fchown(fd, was.st_uid, was.st_gid) == 0) return;
  if (errno != EPERM && errno != EINVAL) fail("fchown");
  // The group alone (an owner that is not root may give its own groups).
  if (now.st_gid != was.st_gid && ::fchown(fd, static_cast<uid_t>(-1), was.st_gid) == 0) now.st_gid = was.st_gid;
  else if (now.st_gid != was.st_gid && errno != EPERM && errno != EINVAL) fail("fchown");
  GW_LOG_WARN(
      "state file {} was owned by uid {} gid {}; this process (uid {}) may not keep that, so it is now owned by uid "
      "{} gid {}",
      path, was.st_uid, was.st_gid, ::geteuid(), now.st_uid, now.st_gid);
}

// What a JSON value is, for a message: string "5", -1, 5.0, true, null, an
// object, an array. (The config's describe() is its twin; the shm layer does
// not reach into the config's.)
std::string json_value_text(simdjson::dom::element e) {
  switch (e.type()) {
    case simdjson::dom::element_type::ARRAY: return "an array";
    case simdjson::dom::element_type::OBJECT: return "an object";
    case simdjson::dom::element_type::INT64: return fmt::format("{}", int64_t(e));
    case simdjson::dom::element_type::UINT64: return fmt::format("{}", uint64_t(e));
    case simdjson::dom::element_type::DOUBLE: return fmt::format("{}", double(e));
    case simdjson::dom::element_type::BOOL: return bool(e) ? "true" : "false";
    case simdjson::dom::element_type::NULL_VALUE: return "null";
    case simdjson::dom::element_type::STRING: {
      std::string_view v = e.get_string().value_unsafe();
      return "string " + json_string(v.size() > 40 ? v.substr(0, 40) : v) + (v.size() > 40 ? "..." : "");
    }
  }
  return "a value";
}

template <typename T>
constexpr const char* json_kind() {
  if constexpr (std::is_same_v<T, std::string_view>) return "a string";
  else if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_same_v<T, simdjson::dom::array>) return "an array";
  else if constexpr (std::is_same_v<T, uint64_t>) return "a non-negative integer";
  else return "an integer";
}

// The member `key` of the object at `path` into `out`; "" if it is there
// with the right type, else why not, naming the JSON path as the config's
// errors do: `upstreams[0].pools[0].hosts[1].weight: expected an integer,
// got string "5"`.
template <typename T>
std::string json_member(simdjson::dom::element obj, const std::string& path, const char* key, T& out) {
  simdjson::dom::object o;
  if (obj.get(o))
    return fmt::format("{}: expected an object, got {}", path.empty() ? "(document)" : path, json_value_text(obj));
  const std::string at = path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
  simdjson::dom::element v;
  if (o[key].get(v)) return at + ": missing";
  if (v.get(out)) return fmt::format("{}: expected {}, got {}", at, json_kind<T>(), json_value_text(v));
  return {};
}
}  // namespace

std::string rule_to_json(const RuleSpec& r) {
  std::string out = fmt::format("{{\"id\": \"{}\", \"upstream\": \"{}\"", r.id, r.upstream);
  if (!r.cidrs.empty()) {
    out += ", \"ip\": [";
    for (size_t i = 0; i < r.cidrs.size(); ++i) out += fmt::format("{}\"{}\"", i ? ", " : "", r.cidrs[i].to_string());
    out += "]";
  }
  if (!r.header_name.empty())
    out += fmt::format(", \"header\": {{\"name\": \"{}\", \"value\": {}}}", r.header_name, json_string(r.header_value));
  if (!r.cookie_name.empty())
    out += fmt::format(", \"cookie\": {{\"name\": \"{}\", \"value\": {}}}", r.cookie_name, json_string(r.cookie_value));
  if (r.percent_bp >= 0) out += fmt::format(", \"percent\": {}", r.percent_bp / 100.0);
  return out + "}";
}

std::string state_to_json(const Table& t) {
  // Names and ids are restricted to [A-Za-z0-9._:-] (check_name) and addresses
  // are formatted here, so nothing needs JSON escaping.
  State s = state_from_table(t);
  char ts[40];
  core::format_iso8601(t.header().updated_wall_ms, ts, sizeof(ts));
  std::string out = fmt::format("{{\"gw_state\": {}, \"generation\": {}, \"updated\": \"{}\", \"upstreams\": [",
                                kStateVersion, s.generation, ts);
  for (size_t u = 0; u < s.upstreams.size(); ++u) {
    const auto& su = s.upstreams[u];
    out += fmt::format("{}\n  {{\"name\": \"{}\", \"pools\": [", u ? "," : "", su.name);
    for (size_t p = 0; p < su.pools.size(); ++p) {
      const auto& sp = su.pools[p];
      out += fmt::format("{}\n    {{\"id\": \"{}\", \"priority\": {}, \"method\": \"{}\", \"hosts\": [", p ? "," : "",
                         sp.id, sp.priority, method_name(sp.method));
      for (size_t h = 0; h < sp.hosts.size(); ++h) {
        const auto& sh = sp.hosts[h];
        out += fmt::format("{}\n      {{\"id\": \"{}\", \"address\": \"{}\", \"weight\": {}, \"down\": {}}}",
                           h ? "," : "", sh.id, sh.addr.to_string(), sh.weight, sh.down ? "true" : "false");
      }
      out += "]}";
    }
    out += "]}";
  }
  out += "],\n \"routes\": [";
  for (size_t r = 0; r < s.routes.size(); ++r) {
    const auto& sr = s.routes[r];
    out += fmt::format("{}\n  {{\"listener\": \"{}\", \"route\": \"{}\", \"rules\": [", r ? "," : "", sr.listener,
                       sr.name);
    for (size_t i = 0; i < sr.rules.size(); ++i)
      out += fmt::format("{}\n    {}", i ? "," : "", rule_to_json(sr.rules[i]));
    out += "]}";
  }
  out += "],\n \"consumers\": [";
  for (size_t i = 0; i < s.consumers.size(); ++i) {
    std::string hex;
    for (uint8_t b : s.consumers[i].key_sha256) hex += fmt::format("{:02x}", b);
    out += fmt::format("{}\n  {{\"name\": \"{}\", \"key_sha256\": \"{}\"}}", i ? "," : "", s.consumers[i].name, hex);
  }
  out += "]}\n";
  return out;
}

void write_state_file(const std::string& path, const std::string& json, const std::string* like) {
  std::string dir = ".";
  if (auto slash = path.rfind('/'); slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
  std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  bool renamed = false;
  auto fail = [&](const char* what) {
    int e = errno;
    if (!renamed) ::unlink(tmp.c_str());
    throw StateFileError(fmt::format("cannot write state file {}: {} failed: {}", path, what, std::strerror(e)),
                         renamed);
  };
  {
    // A leftover of a killed writer of this pid goes; then the file is made
    // anew (O_EXCL, O_NOFOLLOW): a link planted in a directory others can
    // write to would have this write the state through it.
    if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) fail("unlink of a leftover temporary file");
    core::UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (!fd) fail("open");
    // The file replaced keeps its permissions (an operator's chmod 600 of a
    // file that lists the consumers' key hashes), not this process's 0644,
    // and its owner and group as far as this process may give them (root or
    // CAP_CHOWN: both; an owner: one of its own groups), as GNU sed -i does:
    // a gwctl run as root must not leave a chmod 600 file its owner (a gwd
    // run as that user) can no longer read. Owner first: a chown may clear
    // mode bits.
    struct stat was {};
    if (::stat((like ? *like : path).c_str(), &was) == 0) {
      keep_owner(fd.get(), path, was, fail);
      if (::fchmod(fd.get(), was.st_mode & 07777) != 0) fail("fchmod");
    }
    size_t off = 0;
    while (off < json.size()) {
      ssize_t n = ::write(fd.get(), json.data() + off, json.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("write");
      off += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) fail("fsync");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename");
  renamed = true;
  // The rename is durable only once the directory is: until then a crash may
  // bring back the previous file. A failure here is the commit's failure (its
  // writer publishes nothing; the next one rewrites the file from the live
  // table, see Writer::repair).
  core::UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd) fail("open of its directory");
  if (::fsync(dfd.get()) != 0) fail("fsync of its directory");
}

bool read_state_file(const std::string& path, State& out) {
  // Only a file that is not there means "no state yet". Anything else (EACCES,
  // EIO, a symlink: gw replaces the file by rename, which would replace the
  // link, and a dangling one may be a volume not mounted yet) stops gwd:
  // starting from the config would overwrite every persisted change.
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    throw std::runtime_error(fmt::format("state file {}: {}", path, std::strerror(errno)));
  }
  if (S_ISLNK(st.st_mode))
    throw std::runtime_error(fmt::format(
        "state file {} is a symbolic link; gw replaces the file by rename, so point state_file at the file itself",
        path));
  if (!S_ISREG(st.st_mode)) throw std::runtime_error(fmt::format("state file {}: not a regular file", path));
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  auto bad = [&](const std::string& why) { return std::runtime_error(fmt::format("state file {}: {}", path, why)); };
  simdjson::padded_string text;
  if (auto err = simdjson::padded_string::load(path).get(text)) throw bad(simdjson::error_message(err));
  if (auto err = parser.parse(text).get(root)) {
    const core::JsonError where = core::locate_json_error(text);
    throw bad(fmt::format("{}{}", where.path.empty() ? "" : where.path + ": ",
                          core::json_error_text(where, simdjson::error_message(err))));
  }
  // Names and duplicates are checked here, so that a garbled or hand-edited
  // file is refused in one line that names it: the table ops would refuse most
  // of it without saying where it came from ("host app/primary/a already
  // exists"), and an upstream listed twice had its first entry dropped in
  // silence (and with it, at the next commit, its pools and hosts).
  auto name_ok = [&](const char* what, std::string_view n) {
    if (auto why = check_name(n); !why.empty()) throw bad(fmt::format("{} \"{}\" {}", what, n, why));
  };
  std::set<std::string> seen;
  auto once = [&](std::string key, std::string_view what) {
    if (!seen.insert(std::move(key)).second) throw bad(fmt::format("{} is listed twice", what));
  };
  State s;
  int64_t version = 0;
  if (root["gw_state"].get(version)) throw bad("not a gw state file (no \"gw_state\" version number)");
  if (version != kStateVersion)
    throw bad(fmt::format("it is a gw state file of version {}, this gw reads version {}{}", version, kStateVersion,
                          version > kStateVersion ? " (a newer gw wrote it: run that gw, or a gw that reads it)" : ""));
  uint64_t gen = 0;
  if (root["generation"].get(gen)) throw bad("\"generation\" missing or not an integer");
  // A garbled or hand-made number: the table would be published under a
  // generation no reader finds (see kMaxStateGeneration).
  if (gen > kMaxStateGeneration)
    throw bad(fmt::format("\"generation\" {} is out of range 0..{}", gen, kMaxStateGeneration));
  s.generation = gen;
  // Each member is read with json_member(), which names its JSON path.
  auto need = [&](std::string why) {
    if (!why.empty()) throw bad(why);
  };
  simdjson::dom::array ups;
  need(json_member(root, "", "upstreams", ups));
  size_t ui = 0;
  for (auto u : ups) {
    const std::string upath = fmt::format("upstreams[{}]", ui++);
    StateUpstream su;
    std::string_view name;
    simdjson::dom::array pools;
    need(json_member(u, upath, "name", name));
    need(json_member(u, upath, "pools", pools));
    name_ok("upstream name", name);
    once(fmt::format("u/{}", name), fmt::format("upstream \"{}\"", name));
    su.name = name;
    size_t pi = 0;
    for (auto p : pools) {
      const std::string ppath = fmt::format("{}.pools[{}]", upath, pi++);
      StatePool sp;
      std::string_view id, method;
      int64_t prio = 0;
      simdjson::dom::array hosts;
      need(json_member(p, ppath, "id", id));
      need(json_member(p, ppath, "priority", prio));
      need(json_member(p, ppath, "method", method));
      need(json_member(p, ppath, "hosts", hosts));
      name_ok("pool id", id);
      once(fmt::format("p/{}/{}", su.name, id), fmt::format("pool {}/{}", su.name, id));
      sp.id = id;
      if (prio < -1000000 || prio > 1000000)
        throw bad(fmt::format("pool {}/{}: priority {} out of range", su.name, id, prio));
      sp.priority = static_cast<int32_t>(prio);
      if (!parse_method(method, sp.method)) throw bad(fmt::format("unknown method \"{}\"", method));
      size_t hi = 0;
      for (auto h : hosts) {
        const std::string hpath = fmt::format("{}.hosts[{}]", ppath, hi++);
        StateHost sh;
        std::string_view hid, addr;
        uint64_t weight = 0;
        bool down = false;
        need(json_member(h, hpath, "id", hid));
        need(json_member(h, hpath, "address", addr));
        need(json_member(h, hpath, "weight", weight));
        need(json_member(h, hpath, "down", down));
        name_ok("host id", hid);
        once(fmt::format("h/{}/{}/{}", su.name, sp.id, hid), fmt::format("host {}/{}/{}", su.name, sp.id, hid));
        std::string why;
        if (!core::parse_address(addr, sh.addr, why)) throw bad(fmt::format("host {}: {}", hid, why));
        sh.id = hid;
        if (weight > kMaxWeight)
          throw bad(fmt::format("host {}: weight {} out of range 0..{}", hid, weight, kMaxWeight));
        sh.weight = static_cast<uint32_t>(weight);
        sh.down = down;
        sp.hosts.push_back(std::move(sh));
      }
      su.pools.push_back(std::move(sp));
    }
    s.upstreams.push_back(std::move(su));
  }
  // "routes" and "consumers" may be missing (a file of an older gw), but not
  // of another type: that would leave the rules or consumers to the config in
  // silence.
  simdjson::dom::array routes;
  if (root.at_key("routes").error() != simdjson::NO_SUCH_FIELD) {
    need(json_member(root, "", "routes", routes));
    s.has_routes = true;
    size_t ri = 0;
    for (auto r : routes) {
      const std::string rpath = fmt::format("routes[{}]", ri++);
      StateRoute sr;
      std::string_view listener, name;
      simdjson::dom::array rules;
      need(json_member(r, rpath, "listener", listener));
      need(json_member(r, rpath, "route", name));
      need(json_member(r, rpath, "rules", rules));
      name_ok("listener name", listener);
      name_ok("route name", name);
      once(fmt::format("r/{}/{}", listener, name), fmt::format("route {}/{}", listener, name));
      sr.listener = listener;
      sr.name = name;
      for (auto e : rules) {
        std::string why;
        RuleSpec spec;
        if (!rule_from_json(e, spec, why)) throw bad(fmt::format("route {}/{}: {}", sr.listener, sr.name, why));
        once(fmt::format("R/{}/{}/{}", sr.listener, sr.name, spec.id),
             fmt::format("rule {}/{}/{}", sr.listener, sr.name, spec.id));
        sr.rules.push_back(std::move(spec));
      }
      s.routes.push_back(std::move(sr));
    }
  }
  simdjson::dom::array consumers;
  if (root.at_key("consumers").error() != simdjson::NO_SUCH_FIELD) {
    need(json_member(root, "", "consumers", consumers));
    s.has_consumers = true;
    size_t ci = 0;
    for (auto c : consumers) {
      const std::string cpath = fmt::format("consumers[{}]", ci++);
      std::string_view name, hex;
      need(json_member(c, cpath, "name", name));
      need(json_member(c, cpath, "key_sha256", hex));
      StateConsumer sc;
      sc.name = name;
      name_ok("consumer name", name);
      once(fmt::format("c/{}", name), fmt::format("consumer \"{}\"", name));
      if (hex.size() != 2 * kSha256Len) throw bad(fmt::format("consumer {}: key_sha256 is not 64 hex digits", name));
      for (size_t i = 0; i < kSha256Len; ++i) {
        unsigned v = 0;
        for (char ch : hex.substr(2 * i, 2)) {
          v <<= 4;
          if (ch >= '0' && ch <= '9') v |= static_cast<unsigned>(ch - '0');
          else if (ch >= 'a' && ch <= 'f') v |= static_cast<unsigned>(ch - 'a' + 10);
          else throw bad(fmt::format("consumer {}: key_sha256 is not 64 lower-case hex digits", name));
        }
        sc.key_sha256[i] = static_cast<uint8_t>(v);
      }
      s.consumers.push_back(std::move(sc));
    }
  }
  out = std::move(s);
  return true;
}

bool rule_from_json(simdjson::dom::element e, RuleSpec& spec, std::string& why) {
  std::string_view id, upstream;
  if (e["id"].get(id) || e["upstream"].get(upstream)) {
    why = "a rule lacks \"id\" or \"upstream\"";
    return false;
  }
  spec = RuleSpec{};
  spec.id = id;
  spec.upstream = upstream;
  simdjson::dom::array ips;
  if (e["ip"].get(ips) == simdjson::SUCCESS) {
    for (auto ip : ips) {
      std::string_view text;
      core::Cidr c;
      std::string w;
      if (ip.get(text) || !core::parse_cidr(text, c, w)) {
        why = fmt::format("rule {}: bad address block: {}", spec.id, w.empty() ? "not a string" : w);
        return false;
      }
      spec.cidrs.push_back(c);
    }
  }
  for (const char* which : {"header", "cookie"}) {
    simdjson::dom::element m;
    if (e[which].get(m) != simdjson::SUCCESS) continue;
    std::string_view n, v;
    if (m["name"].get(n) || m["value"].get(v)) {
      why = fmt::format("rule {}: \"{}\" lacks \"name\" or \"value\"", spec.id, which);
      return false;
    }
    (which[0] == 'h' ? spec.header_name : spec.cookie_name) = n;
    (which[0] == 'h' ? spec.header_value : spec.cookie_value) = v;
  }
  double pct = 0;
  if (e["percent"].get(pct) == simdjson::SUCCESS) {
    if (!percent_to_bp(pct, spec.percent_bp)) {
      why = fmt::format("rule {}: percent {} is not 0..100 in steps of 0.01", spec.id, pct);
      return false;
    }
  }
  if (auto w = check_rule(spec); !w.empty()) {
    why = fmt::format("rule {}: {}", spec.id, w);
    return false;
  }
  return true;
}

size_t remove_stale_temp_files(const std::string& state_file) {
  std::string dir = ".", base = state_file;
  if (auto slash = state_file.rfind('/'); slash != std::string::npos) {
    dir = slash == 0 ? "/" : state_file.substr(0, slash);
    base = state_file.substr(slash + 1);
  }
  const std::string prefix = base + ".tmp.";
  size_t removed = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    long pid = 0;
    const char* p = name.c_str() + prefix.size();
    char* stop = nullptr;
    pid = std::strtol(p, &stop, 10);
    if (*stop != '\0' || pid <= 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM) continue;  // its writer may still be at it
    if (::unlink(it->path().c_str()) == 0) ++removed;
  }
  return removed;
}

}  // namespace gw::shm
