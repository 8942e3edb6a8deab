#include "gw/api/guard.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "gw/api/hash.hpp"
#include "gw/core/base64.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"

namespace gw::api {

namespace {

// Decodes a query argument (or cookie) name as hosts' form parsers do (%XX,
// '+' as a space), calling fn(c) for each byte. False for a malformed escape.
template <typename Fn>
bool decode_name(std::string_view raw, Fn&& fn) noexcept {
  const auto hex = [](char h) {
    return h >= '0' && h <= '9'   ? h - '0'
           : h >= 'a' && h <= 'f' ? h - 'a' + 10
           : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                  : -1;
  };
  for (size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c == '%') {
      if (i + 2 >= raw.size() || hex(raw[i + 1]) < 0 || hex(raw[i + 2]) < 0) return false;
      c = static_cast<char>(hex(raw[i + 1]) * 16 + hex(raw[i + 2]));
      i += 2;
    } else if (c == '+') {
      c = ' ';
    }
    fn(c);
  }
  return true;
}

}  // namespace

QueryName query_name(std::string_view raw, std::string_view name) noexcept {
  // Two passes over the name, decoded in place (no copy: a name may be any
  // length, and "apikey]]]...]" is still "apikey" to Rack). The first looks
  // for the name itself and at PHP's brackets: whether a '[' comes, and a ']'
  // after it. PHP (php_register_variable_ex) drops leading spaces, ends a
  // name at a NUL, and reads ' ' and '.' as '_'; a '[' followed by a ']'
  // ends the name (an array: "apikey[]", "apikey[x]"), a '[' with none after
  // it is read as '_', as are the ' ', '.' and '[' behind it ("api[key" is
  // "api_key").
  size_t j = 0;
  bool same = true;
  bool lead = true, nul = false, closed = false;
  size_t len = 0, open = std::string_view::npos;  // PHP's bytes; its first '['
  if (!decode_name(raw, [&](char c) {
        same = same && j < name.size() && name[j] == c;
        ++j;
        if (nul || (lead && c == ' ')) return;
        lead = false;
        if (c == '\0') {
          nul = true;
          return;
        }
        if (open == std::string_view::npos && c == '[') open = len;
        else if (open != std::string_view::npos && c == ']') closed = true;
        ++len;
      }))
    return QueryName::malformed;
  if (same && j == name.size()) return QueryName::match;
  // The second reads it as PHP does, and as Rack 2 does (normalize_params):
  // leading '[' and ']' skipped, the key is the run of other bytes up to the
  // next bracket, and what follows makes it a string ("]" or nothing: "[apikey",
  // "apikey]"), an array or a hash ("apikey[]", "apikey[x") of that key;
  // only a lone "[" after it keeps the whole name as the key.
  const bool array = open != std::string_view::npos && closed;
  const auto mangled = [](char x) { return x == ' ' || x == '.' || x == '[' ? '_' : x; };
  size_t k = 0, pos = 0;
  bool php_same = true;
  lead = true;
  nul = false;
  int rack = 0;  // 0: leading brackets, 1: the key, 2: what follows it
  size_t r = 0, after = 0;
  bool rack_same = true;
  char after_first = 0;
  decode_name(raw, [&](char c) {
    if (!nul && !(lead && c == ' ')) {
      lead = false;
      if (c == '\0' || (array && pos == open)) {
        nul = true;  // the name ends here
      } else {
        php_same = php_same && k < name.size() && mangled(name[k]) == mangled(c);
        ++k;
      }
      ++pos;
    }
    const bool bracket = c == '[' || c == ']';
    if (rack == 0 && bracket) return;
    if (rack <= 1 && !bracket) {
      rack = 1;
      rack_same = rack_same && r < name.size() && name[r] == c;
      ++r;
      return;
    }
    rack = 2;
    if (after++ == 0) after_first = c;
  });
  const bool php = php_same && k == name.size();
  const bool rack2 = rack_same && r == name.size() && !(after == 1 && after_first == '[');
  return php || rack2 ? QueryName::alike : QueryName::other;
}

namespace {

std::string_view trim(std::string_view v) noexcept {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Calls fn(name, value) for each argument of the target's query (as sent),
// until fn returns false. `separators`: what ends an argument ("&", or "&;"
// as Rack 2 and Python before 3.9.2 split a query).
template <typename Fn>
void each_query_arg(std::string_view target, Fn&& fn, std::string_view separators = "&") noexcept {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return;
  std::string_view query = target.substr(q + 1);
  if (const size_t hash = query.find('#'); hash != std::string_view::npos) query = query.substr(0, hash);
  while (!query.empty()) {
    const size_t amp = query.find_first_of(separators);
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (!fn(pair.substr(0, eq), eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1))) return;
  }
}

// The value (as sent: not percent-decoded) of the first query argument
// whose name, percent-decoded, is `name`.
bool query_arg(std::string_view target, std::string_view name, std::string_view& value) noexcept {
  bool found = false;
  each_query_arg(target, [&](std::string_view n, std::string_view v) {
    if (query_name(n, name) != QueryName::match) return true;
    value = v;
    found = true;
    return false;
  });
  return found;
}

// Whether a cookie pair's name (the bytes before its '=') is `name`. Blanks
// around it do not count, as the hosts' cookie parsers read it (Go's
// net/http, Node's cookie, Python's http.cookies and Werkzeug trim them):
// "jwt =B" is a cookie named "jwt".
bool cookie_named(std::string_view pair, size_t eq, std::string_view name) noexcept {
  return eq != std::string_view::npos && trim(pair.substr(0, eq)) == name;
}

bool cookie(const http::Head& h, std::string_view name, std::string_view& value) noexcept {
  for (const http::Field& f : h.fields) {
    if (!http::iequals(f.name, "cookie")) continue;
    std::string_view rest = f.value;
    while (!rest.empty()) {
      const size_t semi = rest.find(';');
      const std::string_view pair = trim(rest.substr(0, semi));
      rest = semi == std::string_view::npos ? std::string_view{} : rest.substr(semi + 1);
      const size_t eq = pair.find('=');
      if (cookie_named(pair, eq, name)) {
        value = trim(pair.substr(eq + 1));
        if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
        return true;
      }
    }
  }
  return false;
}

// "Scheme credentials" of an Authorization field, scheme case-insensitive.
bool auth_scheme(const http::Head& h, std::string_view scheme, std::string_view& credentials) noexcept {
  const http::Field* f = http::find_field(h, "authorization");
  if (!f) return false;
  const std::string_view v = trim(f->value);
  if (v.size() <= scheme.size() || !http::iequals(v.substr(0, scheme.size()), scheme) || v[scheme.size()] != ' ')
    return false;
  credentials = trim(v.substr(scheme.size() + 1));
  return true;
}

// The credential of key-auth or jwt, from where the config says.
std::string_view credential(const config::AuthConf& a, const GuardRequest& rq) noexcept {
  std::string_view v;
  switch (a.from) {
    case config::CredFrom::header:
      if (const http::Field* f = http::find_field(*rq.head, a.from_name)) v = trim(f->value);
      break;
    case config::CredFrom::query: query_arg(rq.target, a.from_name, v); break;
    case config::CredFrom::cookie: cookie(*rq.head, a.from_name, v); break;
    case config::CredFrom::bearer: auth_scheme(*rq.head, "Bearer", v); break;
  }
  return v;
}

// Field names equal as a CGI/WSGI/PHP host sees them: case-insensitive, '_' = '-'.
bool names_alike(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] + 32) : a[i];
    char y = b[i] >= 'A' && b[i] <= 'Z' ? static_cast<char>(b[i] + 32) : b[i];
    if (x == '_') x = '-';
    if (y == '_') y = '-';
    if (x != y) return false;
  }
  return true;
}

// How often the carrier of the route's credential appears in the request.
// Twice is refused (400, as nginx answers a second Authorization): gw checks
// the first, and a host that reads the other would act on what gw never checked.
// `underscores`: the listener passes fields whose names hold '_' upstream, where
// X_Api_Key is read as X-Api-Key: it counts as the same field.
size_t credential_count(const config::AuthConf& a, const GuardRequest& rq, bool underscores) noexcept {
  size_t n = 0;
  auto fields = [&](std::string_view name) {
    for (const http::Field& f : rq.head->fields)
      n += underscores ? names_alike(f.name, name) : http::iequals(f.name, name);
  };
  if (a.type == config::AuthType::basic || a.from == config::CredFrom::bearer) {
    fields("authorization");
    return n;
  }
  switch (a.from) {
    case config::CredFrom::header: fields(a.from_name); break;
    case config::CredFrom::query:
      // Names compared percent-decoded, as the host will read them
      // ("api%6Bey" is a second "apikey"), and as PHP mangles them ("%20apikey",
      // "api.key" for "api_key"). A name with a malformed escape is read
      // differently by different hosts (kept as sent, cut, or the request
      // refused): it may be the key's, so it counts as a second one. An
      // argument behind a ';' ("x=1;apikey=B") counts too: Rack 2 and Python
      // before 3.9.2 split the query there as well.
      each_query_arg(
          rq.target,
          [&](std::string_view name, std::string_view) {
            const QueryName m = query_name(name, a.from_name);
            n += m == QueryName::malformed ? 2 : m != QueryName::other;
            return true;
          },
          "&;");
      break;
    case config::CredFrom::cookie:
      for (const http::Field& f : rq.head->fields) {
        if (!http::iequals(f.name, "cookie")) continue;
        std::string_view rest = f.value;
        while (!rest.empty()) {
          const size_t semi = rest.find(';');
          const std::string_view pair = trim(rest.substr(0, semi));
          rest = semi == std::string_view::npos ? std::string_view{} : rest.substr(semi + 1);
          const size_t eq = pair.find('=');
          if (eq == std::string_view::npos) continue;
          // PHP reads cookie names as it reads query argument names
          // (percent-decoded, then mangled): "access.token" is a second
          // "access_token" there, and " %6Awt" a second "jwt".
          auto named = [&](std::string_view p, size_t e) {
            const QueryName m = query_name(trim(p.substr(0, e)), a.from_name);
            return cookie_named(p, e, a.from_name) || m == QueryName::match || m == QueryName::alike;
          };
          // Python's http.cookies also ends a pair at a blank, and takes a
          // ',' into a value: "x=1 jwt=B" and "x=1, jwt=B" hold a cookie
          // "jwt" there. No valid cookie has a blank or ',' (RFC 6265
          // cookie-octet), so the pair's pieces are looked at one by one
          // too, and the larger count of the two readings is the pair's.
          size_t pieces = 0;
          for (std::string_view rest2 = pair; !rest2.empty();) {
            const size_t cut = rest2.find_first_of(" \t,");
            const std::string_view piece = rest2.substr(0, cut);
            rest2 = cut == std::string_view::npos ? std::string_view{} : rest2.substr(cut + 1);
            const size_t pe = piece.find('=');
            pieces += pe != std::string_view::npos && named(piece, pe);
          }
          n += std::max<size_t>(named(pair, eq) ? 1 : 0, pieces);
        }
      }
      break;
    case config::CredFrom::bearer: break;
  }
  return n;
}

}  // namespace

Guard::Guard(const config::Config& cfg, const shm::Segment& seg, uint32_t worker, ClockUs clock_us)
    : clock_us_(clock_us), seed_(seg.header().limit_seed), table_(seg, worker), counters_(seg.guard(worker)) {
  bool jwt = false, basic = false;
  routes_.resize(cfg.listeners.size());
  for (size_t li = 0; li < cfg.listeners.size(); ++li) {
    const config::ListenerConf& l = cfg.listeners[li];
    routes_[li].resize(l.routes.size());
    for (size_t ri = 0; ri < l.routes.size(); ++ri) {
      const config::RouteConf& rc = l.routes[ri];
      RouteGuard& g = routes_[li][ri];
      g.underscores = l.http.underscores_in_headers;
      g.name = l.name + "/" + rc.name;
      const uint64_t scope = scope_id(fmt::format("req/{}/{}", l.name, rc.name));
      if (rc.auth.type != config::AuthType::none) {
        g.active = true;
        g.auth = &rc.auth;
        if (rc.auth.type == config::AuthType::basic) {
          g.basic = std::make_unique<BasicAuth>(rc.auth, scope);
          basic = true;
        } else if (rc.auth.type == config::AuthType::jwt) {
          g.jwt = std::make_unique<JwtVerifier>(rc.auth);
          jwt = true;
        }
      }
      if (rc.limit_req.on) {
        g.active = true;
        g.limit = &rc.limit_req;
        g.rate = RateParams::from(rc.limit_req.rate, rc.limit_req.burst);
        g.scope = scope;
      }
    }
  }
  if (jwt) jwt_scratch_ = std::make_unique<JwtScratch>();
  if (basic) basic_cache_ = std::make_unique<BasicCache>();
}

Guard::~Guard() = default;

void Guard::refresh(const shm::Table& t) {
  consumers_.clear();
  for (const shm::ConsumerRecord& c : t.consumers()) {
    Consumer k;
    std::memcpy(k.digest, c.key_sha256, sizeof(k.digest));
    std::memcpy(k.name, c.name, sizeof(k.name));
    consumers_.push_back(k);
  }
}

void Guard::bump(std::atomic<uint64_t> shm::GuardCounters::*field) noexcept {
  auto& c = counters_.*field;
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

Verdict Guard::reject(int status, std::string_view header) noexcept {
  const size_t n = std::min(header.size(), sizeof(headers_));
  if (n) std::memcpy(headers_, header.data(), n);
  return {status, std::string_view(headers_, n)};
}

void Guard::log_refusal(const RouteGuard& g, const GuardRequest& rq, int status, std::string_view why,
                        std::string_view user, uint64_t now_ms) noexcept {
  if (core::log_level() > core::LogLevel::warn) return;
  if (logged_ && now_ms - last_log_ms_ < 1000) return;
  logged_ = true;
  last_log_ms_ = now_ms;
  const uint64_t refused =
      counters_.auth_failed.load(std::memory_order_relaxed) + counters_.auth_forbidden.load(std::memory_order_relaxed);
  // Formatted on the stack: no allocation on the worker's thread. log_write
  // escapes what the client chose (a user name, a consumer claim).
  char buf[512];
  // A 401 names the auth type: "basic-auth wrong password for user "alice"".
  const std::string_view type = status != 401                             ? ""
                                : g.auth->type == config::AuthType::key   ? "key-auth "
                                : g.auth->type == config::AuthType::basic ? "basic-auth "
                                                                          : "jwt ";
  const auto r =
      fmt::format_to_n(buf, sizeof(buf), "auth: {} to {} on route {}: {}{}", status, rq.client_ip, g.name, type, why);
  size_t n = std::min(r.size, sizeof(buf));
  if (!user.empty()) {
    const auto u = fmt::format_to_n(buf + n, sizeof(buf) - n, " \"{}\"", user);
    n += std::min(u.size, sizeof(buf) - n);
  }
  const auto tail = fmt::format_to_n(buf + n, sizeof(buf) - n,
                                     " (this worker has refused {} so far; logged at most once a second)", refused);
  n += std::min(tail.size, sizeof(buf) - n);
  core::log_write(core::LogLevel::warn, std::string_view(buf, n));
}

Verdict Guard::authenticate(const RouteGuard& g, const GuardRequest& rq, ConsumerName& consumer, const char*& why,
                            std::string_view& user) noexcept {
  const config::AuthConf& a = *g.auth;
  switch (a.type) {
    case config::AuthType::none: return {};
    case config::AuthType::key: {
      const std::string_view key = credential(a, rq);
      uint8_t digest[shm::kSha256Len];
      why = key.empty() ? "no key" : "unknown key";
      if (key.empty() || key.size() > config::kMaxApiKey || !sha256(key, digest)) break;
      // Every consumer is compared, each in constant time: the time taken
      // says nothing about which hash matched, or how much of it.
      const Consumer* found = nullptr;
      for (const Consumer& c : consumers_)
        if (equal_ct(c.digest, digest, sizeof(digest))) found = &c;
      if (!found) break;
      consumer.set(shm::name_of(found->name));
      return {};
    }
    case config::AuthType::basic: {
      std::string_view b64;
      why = "no credentials";
      if (!auth_scheme(*rq.head, "Basic", b64)) break;
      const ptrdiff_t n = core::base64_decode(b64, creds_, sizeof(creds_));
      why = "credentials not base64, or too long";
      if (n <= 0) break;
      const char* basic_why = "refused";
      const BasicAuth::Result r =
          g.basic->verify(std::string_view(creds_, static_cast<size_t>(n)), *basic_cache_, user, &basic_why);
      std::memset(creds_, 0, static_cast<size_t>(n));
      if (r == BasicAuth::Result::bad) {
        why = basic_why;
        break;
      }
      if (r == BasicAuth::Result::cached) bump(&shm::GuardCounters::basic_cache_hits);
      consumer.set(user);
      return {};
    }
    case config::AuthType::jwt: {
      const std::string_view token = credential(a, rq);
      std::string_view who;
      bool cached = false;
      const JwtError e =
          g.jwt->verify(token, static_cast<double>(core::wall_ms()) / 1000.0, *jwt_scratch_, who, &cached);
      if (cached) bump(&shm::GuardCounters::jwt_cache_hits);
      if (e == JwtError::ok) {
        consumer.set(who);
        return {};
      }
      // The reason is for the log: the client learns that the token is
      // invalid (RFC 6750 3.1), not which check failed (a signature that
      // held, say, and an audience that did not).
      why = jwt_error_name(e);
      bump(&shm::GuardCounters::auth_failed);
      return reject(401, e == JwtError::missing ? "WWW-Authenticate: Bearer realm=\"gw\"\r\n"
                                                : "WWW-Authenticate: Bearer realm=\"gw\", error=\"invalid_token\"\r\n");
    }
  }
  bump(&shm::GuardCounters::auth_failed);
  return reject(401, a.type == config::AuthType::basic ? "WWW-Authenticate: Basic realm=\"gw\", charset=\"UTF-8\"\r\n"
                                                       : "WWW-Authenticate: Key realm=\"gw\"\r\n");
}

Verdict Guard::check(uint32_t listener, uint32_t route, const GuardRequest& rq, ConsumerName& consumer,
                     uint64_t now_ms) noexcept {
  consumer.clear();
  if (!active(listener, route)) return {};
  const RouteGuard& g = routes_[listener][route];
  // limit_req keyed by the client or a header comes before auth, as nginx's
  // preaccess phase before its access phase: a client sending bad passwords
  // is limited before each one costs a crypt() on the worker's thread.
  // Keyed by the consumer, it needs auth first.
  const bool limit_first = g.limit && g.limit->key != config::LimitReqConf::Key::consumer;
  if (limit_first)
    if (const Verdict v = limit(g, rq, consumer, now_ms); v.status) return v;
  if (g.auth) {
    if (credential_count(*g.auth, rq, g.underscores) > 1) {
      bump(&shm::GuardCounters::auth_failed);
      log_refusal(g, rq, 400, "the credential sent twice", {}, now_ms);
      return reject(400, {});
    }
    const char* why = "";
    std::string_view user;
    const Verdict v = authenticate(g, rq, consumer, why, user);
    if (v.status) {
      consumer.clear();
      log_refusal(g, rq, v.status, why, user, now_ms);
      return v;
    }
    if (!g.auth->allow.empty()) {
      bool allowed = false;
      for (const std::string& name : g.auth->allow) allowed |= name == consumer.view();
      if (!allowed) {
        bump(&shm::GuardCounters::auth_forbidden);
        log_refusal(g, rq, 403, "consumer not allowed", consumer.view(), now_ms);
        return reject(403, {});
      }
    }
    bump(&shm::GuardCounters::auth_ok);
  }
  if (g.limit && !limit_first) return limit(g, rq, consumer, now_ms);
  return {};
}

Verdict Guard::limit(const RouteGuard& g, const GuardRequest& rq, const ConsumerName& consumer,
                     uint64_t now_ms) noexcept {
  std::string_view key;
  switch (g.limit->key) {
    case config::LimitReqConf::Key::ip: key = rq.client_ip; break;
    case config::LimitReqConf::Key::header:
      if (const http::Field* f = http::find_field(*rq.head, g.limit->header)) key = trim(f->value);
      break;
    case config::LimitReqConf::Key::consumer: key = consumer.view(); break;
  }
  if (key.empty()) return {};  // no key: not limited (nginx skips an empty key)
  const ReqDecision d = table_.take(limit_hash(seed_, g.scope, key), g.rate, clock_us_(), now_ms);
  if (d.result == LimitResult::limited) {
    char buf[48];
    const uint64_t secs = (d.wait_us + 999999) / 1000000;
    const auto r = fmt::format_to_n(buf, sizeof(buf), "Retry-After: {}\r\n", secs ? secs : 1);
    return reject(429, std::string_view(buf, r.size));
  }
  if (d.result == LimitResult::full) return reject(503, {});
  return {};
}

}  // namespace gw::api
