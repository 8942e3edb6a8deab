#include "gw/http/parser.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <set>
#include <string>
#include <string_view>
#include <vector>

using gw::http::BodyDecoder;
using gw::http::BodyKind;
using gw::http::BodyStatus;
using gw::http::BodyStep;
using gw::http::Error;
using gw::http::Field;
using gw::http::FieldId;
using gw::http::Head;
using gw::http::Limits;
using gw::http::Method;
using gw::http::Parser;
using gw::http::ParseStatus;
using gw::http::TargetForm;
using gw::http::Version;
using Kind = Parser::Kind;
using namespace std::string_literals;
using namespace std::string_view_literals;

namespace {

// ---------------------------------------------------------------------------
// A parse outcome with every view copied out, so that outcomes from different
// buffers and parsers compare by value.

struct FieldCopy {
  std::string name, value;
  FieldId id = FieldId::other;
  bool hop = false;
  bool operator==(const FieldCopy&) const = default;
};

struct H {
  ParseStatus status = ParseStatus::need_more;
  Error error = Error::none;
  size_t error_offset = 0;
  Method method = Method::other;
  std::string method_name, target;
  TargetForm form = TargetForm::origin;
  std::string authority;
  uint16_t code = 0;
  std::string reason;
  Version version = Version::http11;
  std::vector<FieldCopy> fields;
  bool has_host = false;
  std::string host;
  BodyKind body = BodyKind::none;
  uint64_t content_length = 0;
  bool merged = false, keep_alive = false, upgrade = false, websocket = false, expect_continue = false,
       expect_other = false, tunnel = false;
  std::string upgrade_protocols;
  std::vector<std::string> options;
  uint32_t head_len = 0;
  bool operator==(const H&) const = default;

  bool ok() const { return status == ParseStatus::done; }
  const FieldCopy* field(std::string_view name) const {
    for (const auto& f : fields)
      if (gw::http::iequals(f.name, name)) return &f;
    return nullptr;
  }
};

const char* status_name(ParseStatus s) {
  return s == ParseStatus::need_more ? "need_more" : s == ParseStatus::done ? "done" : "error";
}

std::ostream& operator<<(std::ostream& os, const H& h) {
  os << "{" << status_name(h.status) << " " << gw::http::error_name(h.error) << "@" << h.error_offset << " \""
     << h.method_name << "\" \"" << h.target << "\" " << h.code << " fields " << h.fields.size() << " body "
     << static_cast<int>(h.body) << " len " << h.content_length << " head_len " << h.head_len << "}";
  return os;
}

H snap(const Parser& p, ParseStatus st) {
  const Head& h = p.head();
  H r;
  r.status = st;
  r.error = p.error();
  if (st == ParseStatus::error) r.error_offset = p.error_offset();
  r.method = h.method;
  r.method_name = h.method_name;
  r.target = h.target;
  r.form = h.target_form;
  r.authority = h.authority;
  r.code = h.status;
  r.reason = h.reason;
  r.version = h.version;
  for (const Field& f : h.fields) r.fields.push_back({std::string(f.name), std::string(f.value), f.id, f.hop_by_hop});
  r.has_host = h.has_host;
  r.host = h.host;
  r.body = h.body;
  r.content_length = h.content_length;
  r.merged = h.content_length_merged;
  r.keep_alive = h.keep_alive;
  r.upgrade = h.upgrade;
  r.websocket = h.websocket;
  r.expect_continue = h.expect_continue;
  r.expect_other = h.expect_other;
  r.tunnel = h.tunnel;
  r.upgrade_protocols = h.upgrade_protocols;
  for (auto o : h.connection_options()) r.options.emplace_back(o);
  r.head_len = h.head_len;
  return r;
}

struct Opts {
  Kind kind = Kind::request;
  Method req = Method::get;  // responses: the request's method
  Limits limits{};
  size_t max_fields = 64;
};

Opts response_to(Method m = Method::get) {
  Opts o;
  o.kind = Kind::response;
  o.req = m;
  return o;
}

// The whole message in a buffer of exactly its size (ASan sees overreads).
H parse_whole(std::string_view msg, const Opts& o = {}) {
  std::vector<Field> fields(o.max_fields);
  Parser p(o.kind, fields, o.limits);
  p.reset(o.req);
  std::vector<char> buf(msg.begin(), msg.end());
  return snap(p, p.parse({buf.data(), buf.size()}));
}

// Parses `msg` whole, then at every split offset three ways, and byte by byte;
// every way must give the whole's outcome. Returns it.
//  - one buffer: parse(prefix), then parse(all) on the same bytes;
//  - moved: the prefix in its own buffer, then all of it in another;
//  - byte by byte: parse(data, n) for n = 0..size: need_more until the outcome.
H check_splits(std::string_view msg, const Opts& o = {}) {
  const H whole = parse_whole(msg, o);
  std::vector<char> buf(msg.begin(), msg.end());
  const std::string_view all(buf.data(), buf.size());
  const size_t n = msg.size();
  const size_t stride = n > 1500 ? n / 300 : 1;  // long messages: a sample of the offsets
  std::vector<Field> fields(o.max_fields);
  for (size_t k = 0; k <= n; k += (k + stride <= n || k == n) ? stride : n - k) {
    CAPTURE(k);
    Parser p(o.kind, fields, o.limits);
    p.reset(o.req);
    const ParseStatus first = p.parse(all.substr(0, k));
    if (first != ParseStatus::need_more) CHECK(snap(p, first) == whole);
    CHECK(snap(p, p.parse(all)) == whole);

    Parser q(o.kind, fields, o.limits);
    q.reset(o.req);
    std::vector<char> prefix(msg.begin(), msg.begin() + static_cast<std::ptrdiff_t>(k));
    const ParseStatus qs = q.parse({prefix.data(), prefix.size()});
    if (qs != ParseStatus::need_more) CHECK(snap(q, qs) == whole);
    CHECK(snap(q, q.parse(all)) == whole);
    if (k == n) break;
  }
  Parser r(o.kind, fields, o.limits);
  r.reset(o.req);
  // Byte by byte: the same decision at the same length. After it, only the
  // status is compared (the head is the one the final check compares): a
  // snapshot per byte copied every field, 90% of this suite's time.
  bool decided = false;
  for (size_t len = 0; len <= n; ++len) {
    const ParseStatus st = r.parse(all.substr(0, len));
    if (st == ParseStatus::need_more) {
      if (decided) {
        CAPTURE(len);
        CHECK_FALSE(decided);
        break;
      }
      continue;
    }
    if (decided) {
      if (st != whole.status) {
        CAPTURE(len);
        CHECK(st == whole.status);
        break;
      }
      continue;
    }
    decided = true;
    if (snap(r, st) != whole) {
      CAPTURE(len);
      CHECK(snap(r, st) == whole);
      break;
    }
  }
  CHECK(snap(r, r.parse(all)) == whole);
  return whole;
}

// A request that must be rejected with `e` (and the status for it), at every split.
void check_rejected(std::string_view msg, Error e, int status, const Opts& o = {}) {
  const std::string shown(msg.substr(0, 200));
  CAPTURE(shown);
  const H h = check_splits(msg, o);
  CHECK(h.status == ParseStatus::error);
  CHECK(gw::http::error_name(h.error) == std::string(gw::http::error_name(e)));
  CHECK(gw::http::error_status(h.error) == status);
}

H check_ok(std::string_view msg, const Opts& o = {}) {
  const std::string shown(msg.substr(0, 200));
  CAPTURE(shown);
  const H h = check_splits(msg, o);
  CHECK(h.status == ParseStatus::done);
  CHECK(h.error == Error::none);
  return h;
}

std::string req(std::string_view fields, std::string_view line = "GET / HTTP/1.1") {
  std::string m = std::string(line) + "\r\n";
  if (!fields.empty()) m += std::string(fields) + "\r\n";
  return m + "\r\n";
}

// ---------------------------------------------------------------------------
// Bodies

struct B {
  std::string data;
  size_t consumed = 0;
  BodyStatus status = BodyStatus::more;
  Error error = Error::none;
  bool operator==(const B&) const = default;
};

std::ostream& operator<<(std::ostream& os, const B& b) {
  return os << "{data " << b.data.size() << " bytes, consumed " << b.consumed << ", "
            << (b.status == BodyStatus::more   ? "more"
                : b.status == BodyStatus::done ? "done"
                                               : "error")
            << " " << gw::http::error_name(b.error) << "}";
}

// Feeds `in` in pieces that end at `cuts`, each piece in its own buffer (the
// decoder must not need earlier bytes), looping on steps as a proxy does.
// With `eof`, finish() is called if the body is still open at the end.
B decode(BodyDecoder d, std::string_view in, std::vector<size_t> cuts = {}, bool eof = false) {
  B r;
  cuts.push_back(in.size());
  size_t at = 0;
  for (size_t cut : cuts) {
    if (cut < at) continue;
    std::vector<char> piece(in.begin() + static_cast<std::ptrdiff_t>(at),
                            in.begin() + static_cast<std::ptrdiff_t>(cut));
    std::string_view rest(piece.data(), piece.size());
    at = cut;
    for (;;) {
      const BodyStep s = d.decode(rest);
      // Zero copy: data is a view into the consumed bytes.
      REQUIRE(s.consumed <= rest.size());
      if (!s.data.empty()) {
        REQUIRE(s.data.data() >= rest.data());
        REQUIRE(s.data.data() + s.data.size() <= rest.data() + s.consumed);
      }
      r.data += s.data;
      r.consumed += s.consumed;
      rest.remove_prefix(s.consumed);
      if (s.status != BodyStatus::more) {
        r.status = s.status;
        r.error = s.error;
        return r;
      }
      if (rest.empty()) break;
      REQUIRE(s.consumed > 0);  // progress
    }
  }
  if (eof) {
    r.error = d.finish();
    r.status = r.error == Error::none ? BodyStatus::done : BodyStatus::error;
  }
  return r;
}

// Decodes whole, at every split offset, and byte by byte: all the same.
B check_body_splits(const BodyDecoder& d, std::string_view in, bool eof = false) {
  const B whole = decode(d, in, {}, eof);
  for (size_t k = 0; k <= in.size(); ++k) {
    CAPTURE(k);
    CHECK(decode(d, in, {k}, eof) == whole);
  }
  std::vector<size_t> every;
  for (size_t k = 1; k < in.size(); ++k) every.push_back(k);
  CHECK(decode(d, in, every, eof) == whole);
  return whole;
}

BodyDecoder chunked_decoder(const Limits& l = {}) {
  BodyDecoder d;
  d.reset(BodyKind::chunked, 0, l);
  return d;
}

// ---------------------------------------------------------------------------
// A connection as the proxy will drive it: bytes arrive in pieces (ending at
// `cuts`) and are appended to the connection's buffer; heads are parsed from
// that buffer, bodies decoded from it, consumed bytes dropped, and pipelined
// messages parsed from the rest. `stable`: the buffer never moves (reserved),
// else it may reallocate as it grows.

struct Msg {
  H head;
  std::string body;
  BodyStatus end = BodyStatus::more;
  Error body_error = Error::none;
  bool operator==(const Msg&) const = default;
};

std::vector<Msg> converse(std::string_view stream, std::vector<size_t> cuts, const Opts& o = {},
                          std::vector<Method> methods = {}, bool stable = true) {
  std::vector<Field> fields(o.max_fields);
  Parser p(o.kind, fields, o.limits);
  size_t nth = 0;
  auto next_method = [&] { return nth < methods.size() ? methods[nth] : o.req; };
  p.reset(next_method());
  BodyDecoder d;
  std::string buf;
  if (stable) buf.reserve(stream.size() + 1);
  std::vector<Msg> out;
  Msg cur;
  bool in_body = false, stopped = false;
  cuts.push_back(stream.size());
  size_t at = 0;
  for (size_t cut : cuts) {
    if (cut < at || stopped) continue;
    buf.append(stream.substr(at, cut - at));
    at = cut;
    for (;;) {
      if (!in_body) {
        if (buf.empty()) break;
        const ParseStatus st = p.parse(buf);
        if (st == ParseStatus::need_more) break;
        cur.head = snap(p, st);
        if (st == ParseStatus::error) {
          out.push_back(cur);
          stopped = true;
          break;
        }
        d.reset(p.head(), o.limits);
        buf.erase(0, p.head().head_len);
        in_body = true;
      }
      std::string_view in = buf;
      size_t used = 0;
      BodyStep s;
      do {
        s = d.decode(in.substr(used));
        cur.body += s.data;
        used += s.consumed;
      } while (s.status == BodyStatus::more && used < in.size());
      buf.erase(0, used);
      if (s.status == BodyStatus::more) break;
      cur.end = s.status;
      cur.body_error = s.error;
      out.push_back(cur);
      if (s.status == BodyStatus::error || cur.head.tunnel) {
        stopped = true;
        break;
      }
      cur = Msg{};
      in_body = false;
      ++nth;
      p.reset(next_method());
    }
  }
  if (!stopped && in_body) {  // EOF
    cur.body_error = d.finish();
    cur.end = cur.body_error == Error::none ? BodyStatus::done : BodyStatus::error;
    out.push_back(cur);
  }
  return out;
}

// The conversation at every split offset, byte by byte, and with a buffer
// that moves, against the stream received at once.
std::vector<Msg> check_conversation(std::string_view stream, const Opts& o = {}, std::vector<Method> methods = {}) {
  const auto whole = converse(stream, {}, o, methods);
  for (size_t k = 0; k <= stream.size(); ++k) {
    CAPTURE(k);
    CHECK(converse(stream, {k}, o, methods) == whole);
    CHECK(converse(stream, {k}, o, methods, false) == whole);
  }
  std::vector<size_t> every;
  for (size_t k = 1; k < stream.size(); ++k) every.push_back(k);
  CHECK(converse(stream, every, o, methods) == whole);
  CHECK(converse(stream, every, o, methods, false) == whole);
  return whole;
}

std::string chunk(std::string_view data, std::string_view ext = "") {
  char size[32];
  std::snprintf(size, sizeof size, "%zx", data.size());
  return std::string(size) + std::string(ext) + "\r\n" + std::string(data) + "\r\n";
}

}  // namespace

TEST_SUITE("http/parser") {
  // -------------------------------------------------------------------------
  // Valid requests: what the proxy reads from them

  TEST_CASE("a GET: request line, fields as views, host, keep-alive, no body") {
    const std::string msg =
        "GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t/1.0\r\nAccept:  */* \r\n\r\n";
    const H h = check_ok(msg);
    CHECK(h.method == Method::get);
    CHECK(h.method_name == "GET");
    CHECK(h.target == "/a/b?c=d");
    CHECK(h.form == TargetForm::origin);
    CHECK(h.version == Version::http11);
    REQUIRE(h.fields.size() == 3);
    CHECK(h.fields[0] == FieldCopy{"Host", "example.com:8080", FieldId::host, false});
    CHECK(h.fields[2] == FieldCopy{"Accept", "*/*", FieldId::other, false});  // OWS trimmed
    CHECK(h.has_host);
    CHECK(h.host == "example.com:8080");
    CHECK(h.body == BodyKind::none);
    CHECK(h.keep_alive);
    CHECK_FALSE(h.upgrade);
    CHECK(h.head_len == msg.size());

    // The views point into the caller's buffer: no copies.
    std::vector<Field> fields(8);
    Parser p(Kind::request, fields);
    REQUIRE(p.parse(msg) == ParseStatus::done);
    CHECK(p.head().target.data() == msg.data() + 4);
    CHECK(p.head().fields[1].value.data() == msg.data() + msg.find("t/1.0"));
    CHECK(p.head().fields.data() == fields.data());
    CHECK(gw::http::find_field(p.head(), "user-agent") == &fields[1]);
    CHECK(gw::http::find_field(p.head(), "cookie") == nullptr);
  }

  TEST_CASE("request_line_read(): set once the whole request line is read, kept through a later error") {
    std::vector<Field> fields(8);
    struct Case {
      const char* msg;
      bool line_read;
    };
    for (const Case& k : {Case{"GET /x HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n", true},
                          Case{"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", true},
                          Case{"G@T /x HTTP/1.1\r\nHost: a\r\n\r\n", false},
                          Case{"GET /x HTTP/9.9\r\nHost: a\r\n\r\n", false}, Case{"GET /x HTTP/1.1\n", false}}) {
      CAPTURE(k.msg);
      Parser p(Kind::request, fields);
      REQUIRE(p.parse(k.msg) == ParseStatus::error);
      CHECK(p.request_line_read() == k.line_read);
      if (k.line_read) {
        CHECK(p.head().method_name == "GET");
        CHECK(p.head().target == "/x");
        CHECK(p.head().version == Version::http11);
      }
      p.reset();
      CHECK_FALSE(p.request_line_read());
    }
    Parser p(Kind::request, fields);
    CHECK(p.parse("GET /x HTTP/1.1\r\nHo") == ParseStatus::need_more);
    CHECK(p.request_line_read());
  }

  TEST_CASE("methods, target forms and versions") {
    CHECK(check_ok(req("Host: a", "POST /x HTTP/1.1")).method == Method::post);
    CHECK(check_ok(req("Host: a", "DELETE /x HTTP/1.1")).method == Method::delete_);
    const H custom = check_ok(req("Host: a", "PROPFIND /x HTTP/1.1"));
    CHECK(custom.method == Method::other);
    CHECK(custom.method_name == "PROPFIND");
    CHECK(check_ok(req("Host: a", "get / HTTP/1.1")).method == Method::other);  // case-sensitive

    const H abs = check_ok(req("Host: a", "GET http://a.example/x?y HTTP/1.1"));
    CHECK(abs.form == TargetForm::absolute);
    CHECK(abs.authority == "a.example");
    CHECK(check_ok(req("Host: a", "GET HTTP://a.example:8080 HTTP/1.1")).authority == "a.example:8080");
    CHECK(check_ok(req("Host: a", "GET https://a.example?q HTTP/1.1")).authority == "a.example");
    CHECK(check_ok(req("Host: a", "GET http://[::1]:80/ HTTP/1.1")).authority == "[::1]:80");
    CHECK(check_ok(req("Host: a", "OPTIONS http://a.example HTTP/1.1")).authority == "a.example");
    CHECK(check_ok(req("Host: a", "GET /x HTTP/1.1")).authority.empty());
    const H conn = check_ok(req("Host: a.example:443", "CONNECT a.example:443 HTTP/1.1"));
    CHECK(conn.form == TargetForm::authority);
    CHECK(conn.method == Method::connect);
    CHECK(check_ok(req("Host: a", "CONNECT [::1]:443 HTTP/1.1")).form == TargetForm::authority);
    CHECK(check_ok(req("Host: a", "OPTIONS * HTTP/1.1")).form == TargetForm::asterisk);
    CHECK(check_ok(req("Host: a", "GET /caf\xc3\xa9 HTTP/1.1")).target == "/caf\xc3\xa9");  // obs-text kept

    const H v10 = check_ok(req("", "GET / HTTP/1.0"));  // Host is optional in 1.0
    CHECK(v10.version == Version::http10);
    CHECK_FALSE(v10.keep_alive);
    CHECK(check_ok(req("Host: a", "GET / HTTP/1.2")).version == Version::http11);  // higher minor: as 1.1
  }

  TEST_CASE("empty lines before the request line are skipped and counted") {
    const std::string msg = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const H h = check_ok(msg);
    CHECK(h.head_len == msg.size());
    CHECK(h.target == "/");
  }

  TEST_CASE("keep-alive: HTTP/1.1 default, Connection close, HTTP/1.0 keep-alive") {
    CHECK(check_ok(req("Host: a")).keep_alive);
    CHECK_FALSE(check_ok(req("Host: a\r\nConnection: close")).keep_alive);
    CHECK_FALSE(check_ok(req("Host: a\r\nConnection: Keep-Alive, CLOSE")).keep_alive);
    CHECK_FALSE(check_ok(req("", "GET / HTTP/1.0")).keep_alive);
    CHECK(check_ok(req("Connection: keep-alive", "GET / HTTP/1.0")).keep_alive);
    CHECK_FALSE(check_ok(req("Connection: keep-alive\r\nConnection: close", "GET / HTTP/1.0")).keep_alive);
  }

  TEST_CASE("hop-by-hop: Connection options and the fixed list; never Host or Content-Length") {
    const H h =
        check_ok(req("Host: a\r\nConnection: X-Foo, , keep-alive\r\nConnection: host,Content-Length\r\nX-Foo: 1\r\n"
                     "x-foo: 2\r\nX-Bar: 3\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\n"
                     "Upgrade: h2c\r\nContent-Length: 0"));
    CHECK(h.options == std::vector<std::string>{"X-Foo", "keep-alive", "host", "Content-Length"});
    for (const auto& f : h.fields) {
      CAPTURE(f.name);
      const bool want = !(gw::http::iequals(f.name, "host") || gw::http::iequals(f.name, "x-bar") ||
                          gw::http::iequals(f.name, "content-length"));
      CHECK(f.hop == want);
    }
    CHECK(h.field("Keep-Alive")->id == FieldId::keep_alive);
    CHECK(h.field("proxy-connection")->id == FieldId::proxy_connection);
    CHECK(h.field("TE")->id == FieldId::te);
  }

  TEST_CASE("upgrade: Connection upgrade and Upgrade websocket, HTTP/1.1 only") {
    const H ws =
        check_ok(req("Host: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"));
    CHECK(ws.upgrade);
    CHECK(ws.websocket);
    CHECK(ws.upgrade_protocols == "WebSocket");
    const H h2c = check_ok(req("Host: a\r\nConnection: upgrade\r\nUpgrade: h2c, foo/2"));
    CHECK(h2c.upgrade);
    CHECK_FALSE(h2c.websocket);
    CHECK_FALSE(check_ok(req("Host: a\r\nUpgrade: websocket")).upgrade);   // not named in Connection
    CHECK_FALSE(check_ok(req("Host: a\r\nConnection: upgrade")).upgrade);  // no Upgrade field
    CHECK_FALSE(check_ok(req("Connection: upgrade\r\nUpgrade: websocket", "GET / HTTP/1.0")).upgrade);
  }

  TEST_CASE("Expect: 100-continue (HTTP/1.1), other expectations flagged") {
    const H h = check_ok(req("Host: a\r\nContent-Length: 3\r\nExpect: 100-Continue"));
    CHECK(h.expect_continue);
    CHECK_FALSE(h.expect_other);
    const H other = check_ok(req("Host: a\r\nExpect: something-else"));
    CHECK_FALSE(other.expect_continue);
    CHECK(other.expect_other);
    CHECK_FALSE(check_ok(req("Expect: 100-continue", "PUT / HTTP/1.0")).expect_continue);
  }

  TEST_CASE("Host values") {
    for (const char* ok : {"a", "a.example", "a.example:80", "10.0.0.1:8080", "[::1]", "[2001:db8::1]:443",
                           "xn--bcher-kva.example", "a%20b", "a:", "", "under_score.example"}) {
      CAPTURE(ok);
      const H h = check_ok(req("Host: "s + ok));
      CHECK(h.has_host);
      CHECK(h.host == ok);
    }
    // An empty host before a port (":80", ":") is no host: an http URI with an
    // empty host is invalid (RFC 9110 4.2.1); nginx refuses it too.
    for (const char* bad :
         {"a b", "user@a.example", "a:b", "a:80:90", "[::1", "[]", "a%2", "a%zz", "a/b", "a\"b", ":80", ":"}) {
      check_rejected(req("Host: "s + bad), Error::bad_host, 400);
    }
  }

  TEST_CASE("Content-Length: value, identical repeats merged, leading zeros, the largest value") {
    const H h = check_ok(req("Host: a\r\nContent-Length: 42", "POST / HTTP/1.1"));
    CHECK(h.body == BodyKind::length);
    CHECK(h.content_length == 42);
    CHECK_FALSE(h.merged);
    const H list = check_ok(req("Host: a\r\nContent-Length: 5 , 5,5", "POST / HTTP/1.1"));
    CHECK(list.content_length == 5);
    CHECK(list.merged);
    const H lines = check_ok(req("Host: a\r\nContent-Length: 7\r\ncontent-length: 007", "POST / HTTP/1.1"));
    CHECK(lines.content_length == 7);
    CHECK(lines.merged);
    CHECK(check_ok(req("Host: a\r\nContent-Length: 9223372036854775807")).content_length == 9223372036854775807ull);
    const H zero = check_ok(req("Host: a\r\nContent-Length: 0"));
    CHECK(zero.body == BodyKind::length);
    CHECK(zero.content_length == 0);
  }

  // -------------------------------------------------------------------------
  // Rejected requests, each with the status the proxy answers

  TEST_CASE("Transfer-Encoding and Content-Length together: 400") {
    check_rejected(req("Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5", "POST / HTTP/1.1"),
                   Error::te_and_cl, 400);
    check_rejected(req("Host: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", "POST / HTTP/1.1"),
                   Error::te_and_cl, 400);
  }

  TEST_CASE("invalid or conflicting Content-Length: 400") {
    for (const char* bad : {"", "5a", "-5", "+5", "0x10", "1 0", "5,", ",5", "5,,5", "5;q", "\"5\"", "1e3",
                            "9223372036854775808", "99999999999999999999999"}) {
      CAPTURE(bad);
      check_rejected(req("Host: a\r\nContent-Length: "s + bad, "POST / HTTP/1.1"), Error::bad_content_length, 400);
    }
    check_rejected(req("Host: a\r\nContent-Length: 5, 6", "POST / HTTP/1.1"), Error::conflicting_content_length, 400);
    check_rejected(req("Host: a\r\nContent-Length: 5\r\nContent-Length: 6", "POST / HTTP/1.1"),
                   Error::conflicting_content_length, 400);
    check_rejected(req("Host: a\r\nContent-Length: 0\r\nContent-Length: 00\r\nContent-Length: 1"),
                   Error::conflicting_content_length, 400);
  }

  TEST_CASE("Transfer-Encoding: chunked last or 400, unknown codings 501, disguises rejected") {
    auto te = [](std::string_view v) {
      return req("Host: a\r\nTransfer-Encoding: "s + std::string(v), "POST / HTTP/1.1");
    };
    for (const char* ok : {"chunked", "Chunked", "CHUNKED", "gzip, chunked", "gzip;level=9 , chunked",
                           "x-gzip,deflate,compress,x-compress,chunked", ", chunked", "chunked ,", "\tchunked\t",
                           "gzip ; q=\"a \\\" b\", chunked", "gzip;q=\"\\#\",chunked"}) {
      CAPTURE(ok);
      CHECK(check_ok(te(ok)).body == BodyKind::chunked);
    }
    CHECK(check_ok(req("Host: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked")).body == BodyKind::chunked);

    for (const char* bad :
         {"chunked, identity", "chunked, gzip", "xchunked", "chunkedx", "identity", "gzip", "chunked, chunked",
          "chunked;a=b", "\"chunked\"", "chunked chunked", "chunked;", "gzip;=1, chunked", "gzip;a, chunked",
          "gzip;a=\"x, chunked", "", " , ", "chunked/1.1", "chunked\\"}) {
      CAPTURE(bad);
      check_rejected(te(bad), Error::bad_transfer_encoding, 400);
    }
    check_rejected(req("Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip"),
                   Error::bad_transfer_encoding, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
                   Error::bad_transfer_encoding, 400);

    for (const char* unknown : {"identity, chunked", "xchunked, chunked", "br, chunked", "foo;a=\"b c\", chunked"}) {
      CAPTURE(unknown);
      check_rejected(te(unknown), Error::unknown_transfer_coding, 501);
    }

    // Variants that would be read as "chunked" by a lax parser.
    check_rejected(req("Host: a\r\nTransfer-Encoding : chunked"), Error::space_before_colon, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding\t: chunked"), Error::space_before_colon, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding: gzip\r\n chunked"), Error::obs_fold, 400);
    check_rejected(req("Host: a\r\n Transfer-Encoding: chunked"), Error::obs_fold, 400);
    check_rejected(req(" Transfer-Encoding: chunked\r\nHost: a"), Error::obs_fold, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding: chunked\x0b"), Error::bad_field_value, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding: \x0c"
                       "chunked"),
                   Error::bad_field_value, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding: chunked\r\r\n"), Error::bare_cr, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding:\nchunked"), Error::bare_lf, 400);
    check_rejected(req("Host: a\r\nTransfer-Encoding: chunked\x00"s), Error::bad_field_value, 400);
    // Not Transfer-Encoding at all: another field, so no body.
    CHECK(check_ok(req("Host: a\r\nTransfer_Encoding: chunked")).body == BodyKind::none);
    CHECK(check_ok(req("Host: a\r\nX-Transfer-Encoding: chunked")).body == BodyKind::none);
  }

  TEST_CASE("Transfer-Encoding in HTTP/1.0: 400") {
    check_rejected(req("Transfer-Encoding: chunked", "POST / HTTP/1.0"), Error::te_in_http10, 400);
    check_rejected(req("Content-Length: 5\r\nTransfer-Encoding: chunked", "POST / HTTP/1.0"), Error::te_in_http10, 400);
  }

  TEST_CASE("Host missing in HTTP/1.1, or twice: 400") {
    check_rejected(req("Accept: */*"), Error::missing_host, 400);
    check_rejected(req("Accept: */*", "GET http://a.example/ HTTP/1.1"), Error::missing_host, 400);
    check_rejected(req("Host: a\r\nHost: a"), Error::duplicate_host, 400);
    check_rejected(req("Host: a\r\nhost: b"), Error::duplicate_host, 400);
    check_rejected(req("Host: a\r\nHost: b", "GET / HTTP/1.0"), Error::duplicate_host, 400);
  }

  TEST_CASE("field syntax: space before colon, obs-fold, CR/LF/NUL/CTL in values, names") {
    check_rejected(req("Host : a"), Error::space_before_colon, 400);
    check_rejected(req("Host: a\r\nX-A : b"), Error::space_before_colon, 400);
    check_rejected(req("Host: a\r\nX-A: b\r\n c"), Error::obs_fold, 400);
    check_rejected(req("Host: a\r\nX-A: b\r\n\tc"), Error::obs_fold, 400);
    check_rejected(req("Host: a\r\nX-A: b\rc"), Error::bare_cr, 400);
    check_rejected(req("Host: a\r\nX-A: b\nc: d"), Error::bare_lf, 400);
    check_rejected(req("Host: a\r\nX-A: b\x00"
                       "c"s),
                   Error::bad_field_value, 400);
    check_rejected(req("Host: a\r\nX-A: b\x7f"), Error::bad_field_value, 400);
    check_rejected(req("Host: a\r\nX-A: \x01"), Error::bad_field_value, 400);
    check_rejected(req("Host: a\r\n: b"), Error::bad_field_name, 400);
    check_rejected(req("Host: a\r\nX(A): b"), Error::bad_field_name, 400);
    check_rejected(req("Host: a\r\nX-A"), Error::bad_field_name, 400);
    check_rejected(req("Host: a\r\nX-\xc3\xa4: b"), Error::bad_field_name, 400);
    // Accepted: HTAB and obs-text in values, empty values, a colon in the value.
    const H h = check_ok(req("Host: a\r\nX-A: \tb\tc \r\nX-B: caf\xc3\xa9\r\nX-C:\r\nX-D: :x:"));
    CHECK(h.field("X-A")->value == "b\tc");
    CHECK(h.field("X-B")->value == "caf\xc3\xa9");
    CHECK(h.field("X-C")->value.empty());
    CHECK(h.field("X-D")->value == ":x:");
  }

  TEST_CASE("bare LF line endings in the head: 400") {
    check_rejected("GET / HTTP/1.1\nHost: a\n\n", Error::bare_lf, 400);
    check_rejected("GET / HTTP/1.1\r\nHost: a\n\r\n", Error::bare_lf, 400);
    check_rejected("GET / HTTP/1.1\r\nHost: a\r\n\n", Error::bare_lf, 400);
    check_rejected("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Error::bare_lf, 400);
    check_rejected("GET /\n", Error::bare_lf, 400);
    check_rejected("GET / HTTP/1.1\r\nHost: a\r\n\rX", Error::bare_cr, 400);
    check_rejected("\rGET / HTTP/1.1\r\n", Error::bare_cr, 400);
  }

  TEST_CASE("request line: method token, single spaces, target, version (400 / 505)") {
    check_rejected(req("Host: a", "G@T / HTTP/1.1"), Error::bad_method, 400);
    check_rejected(req("Host: a", "GET\t/ HTTP/1.1"), Error::bad_method, 400);
    check_rejected(req("Host: a", "GET  / HTTP/1.1"), Error::bad_request_line, 400);
    check_rejected(req("Host: a", " GET / HTTP/1.1"), Error::bad_request_line, 400);
    check_rejected(req("Host: a", "GET /"), Error::bad_request_line, 400);  // HTTP/0.9
    check_rejected(req("Host: a", "GET"), Error::bad_request_line, 400);
    check_rejected(req("Host: a", "GET / HTTP/1.1 "), Error::bad_version, 400);
    check_rejected(req("Host: a", "GET /  HTTP/1.1"), Error::bad_version, 400);
    check_rejected(req("Host: a", "GET / http/1.1"), Error::bad_version, 400);
    check_rejected(req("Host: a", "GET / HTTP/1.10"), Error::bad_version, 400);
    check_rejected(req("Host: a", "GET / HTTP/1"), Error::bad_version, 400);
    check_rejected(req("Host: a", "GET / HTTP/1.x"), Error::bad_version, 400);
    check_rejected(req("Host: a", "GET / HTTPS/1.1"), Error::bad_version, 400);
    check_rejected(req("Host: a", "GET / HTTP/2.0"), Error::version_not_supported, 505);
    check_rejected(req("Host: a", "GET / HTTP/0.9"), Error::version_not_supported, 505);
    check_rejected(req("Host: a", "GET / HTTP/3.1"), Error::version_not_supported, 505);
    check_rejected(req("Host: a",
                       "GET /a\x01"
                       "b HTTP/1.1"),
                   Error::bad_target, 400);
    check_rejected(req("Host: a", "GET /a\x7f HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET a HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET /a#f HTTP/1.1"), Error::bad_target, 400);  // a fragment
    check_rejected(req("Host: a", "GET /a?q=1# HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http://a/x#f HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET 1http://a/ HTTP/1.1"), Error::bad_target, 400);
    // absolute-form: the authority replaces Host, so it must be a host[:port] with a host
    check_rejected(req("Host: a", "GET http:foo HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET mailto:a@b HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http:/a/x HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http:///x HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http:// HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http://?q HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http://:80/x HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http://u:p@a.example/x HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http://a%zz/x HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http://a:8x/x HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET http://a#f HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET * HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "CONNECT / HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "CONNECT a.example HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "CONNECT a.example: HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "CONNECT :443 HTTP/1.1"), Error::bad_target, 400);
    check_rejected(req("Host: a", "GET /\r HTTP/1.1"), Error::bad_request_line, 400);
  }

  TEST_CASE("request line over max_start_line: 414; exactly at it: accepted") {
    Opts o;
    o.limits.max_start_line = 32;
    const std::string at_limit = "GET /" + std::string(32 - 14, 'a') + " HTTP/1.1";  // 32 bytes
    REQUIRE(at_limit.size() == 32);
    check_ok(req("Host: a", at_limit), o);
    const std::string over = "GET /" + std::string(32 - 13, 'a') + " HTTP/1.1";
    check_rejected(req("Host: a", over), Error::start_line_too_long, 414, o);
    // Decided at byte 32 even when the line never ends, whatever the part.
    check_rejected("GET /" + std::string(100, 'a'), Error::start_line_too_long, 414, o);
    check_rejected(std::string(100, 'G'), Error::start_line_too_long, 414, o);
    check_rejected("GET / HTTP/1.1" + std::string(40, ' '), Error::bad_version, 400, o);
    // An error before the limit wins over the length.
    check_rejected("G(T /" + std::string(100, 'a'), Error::bad_method, 400, o);
    // Default limit: 8 KiB.
    check_rejected(req("Host: a", "GET /" + std::string(9000, 'a') + " HTTP/1.1"), Error::start_line_too_long, 414);
    check_ok(req("Host: a", "GET /" + std::string(8000, 'a') + " HTTP/1.1"));
    // A max_head below max_start_line: a request line that does not end within
    // max_head is still a line too long (414, as nginx answers a line that does
    // not fit its buffers), not a head too large (431). Empty lines before it
    // are no part of the line: they make the head too large.
    Opts small;
    small.limits.max_head = 64;
    check_rejected(req("Host: a", "GET /" + std::string(100, 'a') + " HTTP/1.1"), Error::start_line_too_long, 414,
                   small);
    check_rejected("GET / HTTP/1.1" + std::string(100, '1'), Error::bad_version, 400, small);
    check_rejected(std::string(100, 'G'), Error::start_line_too_long, 414, small);
    std::string crlfs;
    for (int i = 0; i < 40; ++i) crlfs += "\r\n";
    check_rejected(crlfs + "GET / HTTP/1.1\r\n\r\n", Error::head_too_large, 431, small);
    check_rejected(req("Host: a\r\nX: " + std::string(100, 'v')), Error::head_too_large, 431, small);
  }

  TEST_CASE("check_request_line: a head's request line refused as soon as its bytes do, as parse() would") {
    Limits lim;
    lim.max_start_line = 32;
    std::vector<Field> fields(8);
    struct Case {
      std::string msg;
      Error error;  // none: no error, and the line is whole (done)
    };
    const Case cases[] = {
        {"\x16\x03\x01\x00\xa5\x01\x00"s, Error::bad_method},  // a TLS ClientHello
        {"G@T / HTTP/1.1\r\n", Error::bad_method},
        {"GET  / HTTP/1.1", Error::bad_request_line},
        {"GET /a#b", Error::bad_target},
        {"GET a HTTP/1.1", Error::bad_target},
        {"GET / HTTX", Error::bad_version},
        {"GET / HTTP/2.0\r\n", Error::version_not_supported},
        {"GET / HTTP/1.1\rX", Error::bare_cr},
        {"GET / HTTP/1.1\n", Error::bare_lf},
        {"\r\n\r\n\rX", Error::bare_cr},
        {"GET /" + std::string(40, 'a'), Error::start_line_too_long},
        {"\r\n\r\nOPTIONS * HTTP/1.0\r\n", Error::none},
        // The field lines are parse()'s: looked at once the head is whole.
        {"GET / HTTP/1.1\r\nbad field\r\n\x16", Error::none},
    };
    for (const Case& tc : cases) {
      CAPTURE(tc.msg);
      std::vector<char> all(tc.msg.begin(), tc.msg.end());
      Parser whole(Kind::request, fields, lim);
      const ParseStatus ws = whole.parse({all.data(), all.size()});
      // Whole, and byte by byte (each byte in a new buffer, as the proxy's may move).
      for (const bool bytewise : {false, true}) {
        CAPTURE(bytewise);
        gw::http::LineCheck lc;
        Parser c(Kind::request, fields, lim);
        ParseStatus st = ParseStatus::need_more;
        size_t len = bytewise ? 0 : all.size();
        while (len <= all.size()) {
          const std::vector<char> buf(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(len));
          st = c.check_request_line({buf.data(), buf.size()}, lc);
          if (st == ParseStatus::error || len == all.size()) break;
          ++len;
        }
        if (tc.error == Error::none) {
          CHECK(st == ParseStatus::need_more);
          CHECK(lc.done);
          continue;
        }
        REQUIRE(st == ParseStatus::error);
        CHECK(gw::http::error_name(c.error()) == std::string(gw::http::error_name(tc.error)));
        // parse() of the same bytes: the same error, decided at the same byte.
        REQUIRE(ws == ParseStatus::error);
        CHECK(whole.error() == c.error());
        CHECK(c.error_offset() == whole.error_offset());
        if (bytewise) CHECK(len == whole.error_offset() + 1);
      }
    }
    // A valid line still arriving: no error, not done.
    gw::http::LineCheck lc;
    Parser c(Kind::request, fields, lim);
    CHECK(c.check_request_line("GET /x HTTP/1.1\r", lc) == ParseStatus::need_more);
    CHECK_FALSE(lc.done);
    CHECK(c.check_request_line("GET /x HTTP/1.1\r\n", lc) == ParseStatus::need_more);
    CHECK(lc.done);
  }

  TEST_CASE("head over max_head or too many fields: 431") {
    Opts o;
    o.limits.max_head = 64;
    const std::string exact = req("Host: a\r\nX: " + std::string(64 - 16 - 9 - 2 - 5, 'v'));
    REQUIRE(exact.size() == 64);
    CHECK(check_ok(exact, o).head_len == 64);
    check_rejected(req("Host: a\r\nX: " + std::string(64 - 16 - 9 - 2 - 4, 'v')), Error::head_too_large, 431, o);
    check_rejected(req("Host: a\r\nX: " + std::string(1000, 'v')), Error::head_too_large, 431, o);
    // Empty lines before the start line count too.
    check_rejected(std::string(40, '\r') + "\n", Error::bare_cr, 400, o);
    std::string crlfs;
    for (int i = 0; i < 40; ++i) crlfs += "\r\n";
    check_rejected(crlfs, Error::head_too_large, 431, o);

    std::string many;
    for (int i = 0; i < 3000; ++i) many += "X-Field-" + std::to_string(i) + ": some value\r\n";
    check_rejected(req("Host: a\r\n" + many), Error::head_too_large, 431, Opts{Kind::request, Method::get, {}, 5000});

    Opts four;
    four.max_fields = 4;
    check_ok(req("Host: a\r\nA: 1\r\nB: 2\r\nC: 3"), four);
    check_rejected(req("Host: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4"), Error::too_many_fields, 431, four);
    Opts none;
    none.max_fields = 0;
    check_ok(req("", "GET / HTTP/1.0"), none);
    check_rejected(req("Host: a"), Error::too_many_fields, 431, none);
  }

  TEST_CASE("Connection: token list only, at most kMaxConnectionOptions") {
    check_rejected(req("Host: a\r\nConnection: keep alive"), Error::bad_connection, 400);
    check_rejected(req("Host: a\r\nConnection: \"close\""), Error::bad_connection, 400);
    check_rejected(req("Host: a\r\nConnection: close;x"), Error::bad_connection, 400);
    std::string opts;
    for (size_t i = 0; i < gw::http::kMaxConnectionOptions; ++i) opts += "o" + std::to_string(i) + ",";
    check_ok(req("Host: a\r\nConnection: " + opts));
    check_rejected(req("Host: a\r\nConnection: " + opts + "one-more"), Error::too_many_connection_options, 400);
  }

  TEST_CASE("error names are distinct and statuses are the proxy's answers") {
    std::set<std::string> names;
    for (size_t i = 0; i < gw::http::kErrorCount; ++i) names.insert(gw::http::error_name(static_cast<Error>(i)));
    CHECK(names.size() == gw::http::kErrorCount);
    CHECK(names.count("unknown") == 0);
    CHECK(gw::http::error_status(Error::none) == 0);
    for (size_t i = 1; i < gw::http::kErrorCount; ++i) {
      const int s = gw::http::error_status(static_cast<Error>(i));
      CHECK((s == 400 || s == 414 || s == 431 || s == 501 || s == 505));
    }
  }

  TEST_CASE("done and error are sticky; reset starts the next message") {
    std::vector<Field> fields(8);
    Parser p(Kind::request, fields);
    const std::string two = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n";
    REQUIRE(p.parse(two) == ParseStatus::done);
    const uint32_t n = p.head().head_len;
    CHECK(p.parse(two) == ParseStatus::done);
    CHECK(p.head().target == "/1");
    p.reset();
    REQUIRE(p.parse(std::string_view(two).substr(n)) == ParseStatus::done);
    CHECK(p.head().target == "/2");
    CHECK(p.head().host == "b");

    p.reset();
    REQUIRE(p.parse("GET / HTTP/1.1\r\nHost : a\r\n\r\n") == ParseStatus::error);
    CHECK(p.parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == ParseStatus::error);
    CHECK(p.error() == Error::space_before_colon);
    p.reset();
    CHECK(p.parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == ParseStatus::done);
  }

  TEST_CASE("a moved buffer: the head is parsed again and its views follow the bytes") {
    std::vector<Field> fields(8);
    Parser p(Kind::request, fields);
    std::string a = "GET /x HTTP/1.1\r\nHost: a\r\nX-Long: ";
    REQUIRE(p.parse(a) == ParseStatus::need_more);
    std::string b = "....." + a + "value\r\n\r\n";  // moved and grown
    const std::string_view moved = std::string_view(b).substr(5);
    REQUIRE(p.parse(moved) == ParseStatus::done);
    CHECK(p.head().target.data() == moved.data() + 4);
    CHECK(p.head().fields[1].value == "value");
    CHECK(p.head().fields[0].value.data() == moved.data() + moved.find("a\r\n"));
    // After done, the caller may move the head too: parse again to re-point the views.
    std::string c(moved);
    REQUIRE(p.parse(c) == ParseStatus::done);
    CHECK(p.head().target.data() == c.data() + 4);
  }

  // -------------------------------------------------------------------------
  // Responses

  TEST_CASE("responses: status line, reason, body length rules") {
    const H ok = check_ok("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nServer: x\r\n\r\n", response_to());
    CHECK(ok.code == 200);
    CHECK(ok.reason == "OK");
    CHECK(ok.body == BodyKind::length);
    CHECK(ok.content_length == 12);
    CHECK(ok.keep_alive);

    const H chunked = check_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", response_to());
    CHECK(chunked.body == BodyKind::chunked);
    CHECK(chunked.keep_alive);

    const H close = check_ok("HTTP/1.1 200 OK\r\n\r\n", response_to());
    CHECK(close.body == BodyKind::until_close);
    CHECK_FALSE(close.keep_alive);
    const H gzip = check_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", response_to());
    CHECK(gzip.body == BodyKind::until_close);
    CHECK_FALSE(gzip.keep_alive);
    CHECK(check_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: foo, chunked\r\n\r\n", response_to()).body ==
          BodyKind::chunked);

    for (const char* none : {"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                             "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", "HTTP/1.1 100 Continue\r\n\r\n",
                             "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"}) {
      CAPTURE(none);
      const H h = check_ok(none, response_to());
      CHECK(h.body == BodyKind::none);
      CHECK(h.keep_alive);
    }
    CHECK(check_ok("HTTP/1.1 100 Continue\r\n\r\n", response_to()).code == 100);

    // HEAD: no body whatever the fields say.
    const H head = check_ok("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", response_to(Method::head));
    CHECK(head.body == BodyKind::none);
    CHECK(head.content_length == 1000);
    CHECK(check_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", response_to(Method::head)).body ==
          BodyKind::none);

    // CONNECT 2xx: a tunnel; a refusal has a body as usual.
    const H tunnel = check_ok("HTTP/1.1 200 Connection Established\r\n\r\n", response_to(Method::connect));
    CHECK(tunnel.tunnel);
    CHECK(tunnel.body == BodyKind::none);
    const H refused = check_ok("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", response_to(Method::connect));
    CHECK_FALSE(refused.tunnel);
    CHECK(refused.body == BodyKind::length);

    const H up = check_ok("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                          response_to());
    CHECK(up.upgrade);
    CHECK(up.websocket);
    CHECK(up.tunnel);

    const H v10 = check_ok("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", response_to());
    CHECK(v10.version == Version::http10);
    CHECK_FALSE(v10.keep_alive);
    CHECK(check_ok("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", response_to()).keep_alive);
    CHECK_FALSE(
        check_ok("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", response_to()).keep_alive);
  }

  TEST_CASE("responses: reason phrases, and the status line without SP before an empty reason") {
    CHECK(check_ok("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", response_to()).reason.empty());
    CHECK(check_ok("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", response_to()).code == 200);  // lenient
    CHECK(check_ok("HTTP/1.1 404 Not\tFound \xe9\r\nContent-Length: 0\r\n\r\n", response_to()).reason ==
          "Not\tFound \xe9");
    CHECK(check_ok("HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n", response_to()).code == 599);
  }

  TEST_CASE("responses: malformed (the proxy answers 502)") {
    const Opts o = response_to();
    for (const char* bad :
         {"HTTP/1.1 99 X\r\n\r\n", "HTTP/1.1 600 X\r\n\r\n", "HTTP/1.1 099 X\r\n\r\n", "HTTP/1.1 2000 X\r\n\r\n",
          "HTTP/1.1 20x X\r\n\r\n", "HTTP/1.1  200 X\r\n\r\n", "HTTP/1.1 200 O\x01K\r\n\r\n", "HTTP/1.1\r\n\r\n"}) {
      CAPTURE(bad);
      const H h = check_splits(bad, o);
      CHECK(h.status == ParseStatus::error);
      CHECK(h.error == Error::bad_status_line);
    }
    check_rejected("HTTP/2.0 200 OK\r\n\r\n", Error::version_not_supported, 505, o);
    check_rejected("HTTP/2 200 OK\r\n\r\n", Error::bad_version, 400, o);
    check_rejected("HTTP/1.1 200 OK\nContent-Length: 0\n\n", Error::bare_lf, 400, o);
    check_rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Error::te_and_cl, 400,
                   o);
    check_rejected("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Error::te_in_http10, 400, o);
    check_rejected("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                   Error::conflicting_content_length, 400, o);
    check_rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Error::bad_transfer_encoding, 400,
                   o);
    // Host is not looked at in responses.
    check_ok("HTTP/1.1 200 OK\r\nHost: a\r\nHost: b c\r\nContent-Length: 0\r\n\r\n", o);
    Opts small = o;
    small.limits.max_start_line = 16;
    check_rejected("HTTP/1.1 200 A long reason phrase\r\n\r\n", Error::start_line_too_long, 414, small);
  }

  // -------------------------------------------------------------------------
  // Bodies

  TEST_CASE("Content-Length body: data is the body, the rest is the next message") {
    BodyDecoder d;
    d.reset(BodyKind::length, 11);
    const B b = check_body_splits(d, "hello worldGET / HTTP/1.1\r\n");
    CHECK(b.data == "hello world");
    CHECK(b.consumed == 11);
    CHECK(b.status == BodyStatus::done);

    BodyDecoder zero;
    zero.reset(BodyKind::length, 0);
    CHECK(zero.done());
    const BodyStep s = zero.decode("");
    CHECK(s.status == BodyStatus::done);
    CHECK(s.consumed == 0);

    BodyDecoder cut;
    cut.reset(BodyKind::length, 11);
    const B t = check_body_splits(cut, "hello", true);
    CHECK(t.data == "hello");
    CHECK(t.status == BodyStatus::error);
    CHECK(t.error == Error::body_truncated);
  }

  TEST_CASE("until close: everything is data, EOF ends it") {
    BodyDecoder d;
    d.reset(BodyKind::until_close);
    const B b = check_body_splits(d, "all of\r\n0\r\n\r\nthis", true);
    CHECK(b.data == "all of\r\n0\r\n\r\nthis");
    CHECK(b.status == BodyStatus::done);
    CHECK(decode(d, "abc").status == BodyStatus::more);
  }

  TEST_CASE("chunked: data concatenates to the body, extensions skipped, trailers validated") {
    const std::string body = "The quick brown fox jumps over the lazy dog. " + std::string(300, 'x') + "\r\n\r\n0\r\n";
    std::string enc;
    enc += chunk(body.substr(0, 1));
    enc += chunk(body.substr(1, 16), ";name=value");
    enc += chunk(body.substr(17, 100), " ; a ; b = \"q\\\"uo;ted\\#\" ;c=d");  // any VCHAR may be quoted, '#' too
    enc += chunk(body.substr(117, 200), ";x=\"\t \x80\xff\"");
    enc += "00000" + chunk(body.substr(317));  // leading zeros in the size
    enc += "0;last=1\r\nX-Checksum: abc\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n";
    const B b = check_body_splits(chunked_decoder(), enc + "NEXT");
    CHECK(b.data == body);
    CHECK(b.consumed == enc.size());
    CHECK(b.status == BodyStatus::done);

    BodyDecoder d = chunked_decoder();
    decode(d, "");
    B once = decode(chunked_decoder(), enc);
    CHECK(once.data == body);

    BodyDecoder t = chunked_decoder();
    const std::string with_trailers = "3\r\nabc\r\n0\r\nA: 1\r\nB: 2\r\n\r\n";
    size_t used = 0;
    for (;;) {
      const BodyStep s = t.decode(std::string_view(with_trailers).substr(used));
      used += s.consumed;
      if (s.status != BodyStatus::more) break;
    }
    CHECK(t.done());
    CHECK(t.trailer_fields() == 2);
    CHECK(used == with_trailers.size());

    // Upper-case hex, a zero-length body.
    CHECK(check_body_splits(chunked_decoder(), "A\r\n0123456789\r\n0\r\n\r\n").data == "0123456789");
    const B empty = check_body_splits(chunked_decoder(), "0\r\n\r\n");
    CHECK(empty.data.empty());
    CHECK(empty.status == BodyStatus::done);
  }

  TEST_CASE("chunked: one run of data per step, framing around it") {
    BodyDecoder d = chunked_decoder();
    const std::string enc = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    BodyStep s = d.decode(enc);
    CHECK(s.data == "hello");
    CHECK(s.consumed == 3 + 5 + 2 + 3);  // through "6\r\n", stopping before the next data
    CHECK(s.status == BodyStatus::more);
    s = d.decode(std::string_view(enc).substr(13));
    CHECK(s.data == " world");
    CHECK(s.consumed == enc.size() - 13);
    CHECK(s.status == BodyStatus::done);
    CHECK(d.decode("more").status == BodyStatus::done);  // sticky, consumes nothing
    CHECK(d.decode("more").consumed == 0);
  }

  TEST_CASE("chunked: bad sizes, extensions, line endings (400)") {
    struct Case {
      std::string in;
      Error e;
    };
    const std::vector<Case> cases = {
        {"\r\n", Error::bad_chunk_size},
        {"zz\r\n", Error::bad_chunk_size},
        {"-1\r\n", Error::bad_chunk_size},
        {"0x5\r\nhello\r\n", Error::bad_chunk_size},
        {" 5\r\nhello\r\n", Error::bad_chunk_size},
        {"+5\r\nhello\r\n", Error::bad_chunk_size},
        {"fffffffffffffffff\r\n", Error::bad_chunk_size},  // 17 digits: above 2^64-1
        {"10000000000000000\r\n", Error::bad_chunk_size},
        {"8000000000000000\r\n", Error::bad_chunk_size},  // 2^63: negative as a signed size
        {"ffffffffffffffff\r\n", Error::bad_chunk_size},
        {"00000000000000005\r\nhello\r\n", Error::bad_chunk_size},  // 17 digits, leading zeros
        {"5\nhello\r\n0\r\n\r\n", Error::bare_lf},
        {"5;a=b\nhello\r\n", Error::bare_lf},
        {"5\r\nhello\n0\r\n\r\n", Error::bare_lf},
        {"5\r\nhello\r\n0\n\r\n", Error::bare_lf},
        {"5\r\nhello\r\n0\r\n\n", Error::bare_lf},
        {"5\rhello", Error::bare_cr},
        {"5\r\nhello\rX", Error::bare_cr},
        {"5\r\nhelloX\r\n", Error::bad_chunk_end},
        {"5\r\nhello world\r\n", Error::bad_chunk_end},
        {"5 \r\nhello\r\n", Error::bad_chunk_extension},
        {"5\t\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a=\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a \r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a=b c\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a=b \r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a=\"b\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a=\"b\nc\"\r\nhello\r\n", Error::bare_lf},
        {"5;a=\"b\"c\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a=\"b\\\x01\"\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a=\"\x7f\"\r\nhello\r\n", Error::bad_chunk_extension},
        {"5;a(b)\r\nhello\r\n", Error::bad_chunk_extension},
        {"5 5\r\nhello\r\n", Error::bad_chunk_extension},
        {"5,6\r\nhello\r\n", Error::bad_chunk_size},
        {"0\r\nX : y\r\n\r\n", Error::space_before_colon},
        {"0\r\n X: y\r\n\r\n", Error::obs_fold},
        {"0\r\nX: y\r\n z\r\n\r\n", Error::obs_fold},
        {"0\r\nX: y\nZ: w\r\n\r\n", Error::bare_lf},
        {"0\r\nX: a\x00"
         "b\r\n\r\n"s,
         Error::bad_field_value},
        {"0\r\nX\r\n\r\n", Error::bad_field_name},
        {"0\r\n: y\r\n\r\n", Error::bad_field_name},
        {"0\r\nX: y\r\n\rZ", Error::bare_cr},
    };
    for (const auto& c : cases) {
      CAPTURE(c.in);
      const B b = check_body_splits(chunked_decoder(), c.in, true);
      CHECK(b.status == BodyStatus::error);
      CHECK(gw::http::error_name(b.error) == std::string(gw::http::error_name(c.e)));
      CHECK(gw::http::error_status(b.error) == 400);
    }
    // The largest size is accepted (and then the body is short: truncated at EOF).
    const B big = check_body_splits(chunked_decoder(), "7fffffffffffffff\r\nabc", true);
    CHECK(big.data == "abc");
    CHECK(big.error == Error::body_truncated);
  }

  TEST_CASE("chunked: limits on chunk lines and trailers") {
    Limits l;
    l.max_chunk_line = 16;
    l.max_trailer = 16;
    CHECK(check_body_splits(chunked_decoder(l), "3;abcdefghijk=lm\r\nabc\r\n0\r\n\r\n").status == BodyStatus::done);
    const B line = check_body_splits(chunked_decoder(l), "3;abcdefghijk=lmn\r\nabc\r\n0\r\n\r\n");
    CHECK(line.error == Error::chunk_line_too_long);
    CHECK(gw::http::error_status(line.error) == 400);
    CHECK(check_body_splits(chunked_decoder(l),
                            "0000000000000000"
                            "3\r\nabc\r\n")
              .error == Error::chunk_line_too_long);
    CHECK(check_body_splits(chunked_decoder(l), "0\r\nX: 012345678\r\n\r\n").status == BodyStatus::done);  // 16 bytes
    const B trailer = check_body_splits(chunked_decoder(l), "0\r\nX: 0123456789\r\n\r\n");
    CHECK(trailer.error == Error::trailer_too_large);
    CHECK(gw::http::error_status(trailer.error) == 431);
  }

  TEST_CASE("chunked with filter_trailers: hop-by-hop trailer lines dropped at every split, others kept") {
    std::vector<Field> fields(8);
    Parser p(Kind::request, fields);
    const std::string head =
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: X-Secret, close\r\n\r\n";
    REQUIRE(p.parse(head) == ParseStatus::done);
    BodyDecoder proto(p.head());
    proto.filter_trailers(p.head());
    const std::string enc =
        "3\r\nabc\r\n0\r\nX-Keep: 1\r\nx-secret: s\r\nConnection: c\r\nTE: t\r\nX-Secret2: k\r\n"
        "keep-alive: 1\r\nTransfer-Encoding: x\r\nUPGRADE: y\r\nProxy-Connection: z\r\nClose: 1\r\nX-Last: 2\r\n\r\n";
    const std::string want = "3\r\nabc\r\n0\r\nX-Keep: 1\r\nX-Secret2: k\r\nX-Last: 2\r\n\r\n";
    // Forwards as the proxy does: bytes not consumed are given again with the
    // next piece (in a buffer that moves), consumed ones go out less `drop`.
    auto forward = [&](std::vector<size_t> cuts) {
      BodyDecoder d = proto;
      std::string out, buf;
      cuts.push_back(enc.size() + 4);
      const std::string in = enc + "NEXT";
      size_t at = 0;
      for (const size_t cut : cuts) {
        if (cut < at) continue;
        buf.append(in, at, cut - at);
        buf.shrink_to_fit();
        at = cut;
        for (;;) {
          const BodyStep s = d.decode(buf);
          REQUIRE(s.consumed <= buf.size());
          REQUIRE(s.drop <= s.consumed);
          out.append(buf, 0, s.consumed - s.drop);
          buf.erase(0, s.consumed);
          if (s.status == BodyStatus::done) {
            CHECK(std::string_view("NEXT").starts_with(buf));  // the next message, not consumed
            return out;
          }
          REQUIRE(s.status == BodyStatus::more);
          if (s.consumed == 0 || buf.empty()) break;
        }
      }
      return out + "<not done>";
    };
    CHECK(forward({}) == want);
    for (size_t k = 0; k <= enc.size(); ++k) {
      CAPTURE(k);
      CHECK(forward({k}) == want);
    }
    std::vector<size_t> every;
    for (size_t k = 1; k < enc.size(); ++k) every.push_back(k);
    CHECK(forward(every) == want);
    CHECK(proto.trailer_fields() == 0);

    // A trailer line in progress is not consumed; a bad byte in it stops before the line.
    BodyDecoder d = proto;
    BodyStep s = d.decode("0\r\nX-A: 1");
    CHECK(s.consumed == 3);
    CHECK(s.status == BodyStatus::more);
    s = d.decode("X-A: 1");  // nothing new: nothing consumed
    CHECK(s.consumed == 0);
    s = d.decode("X-A: 1\x01\r\n");
    CHECK(s.status == BodyStatus::error);
    CHECK(s.error == Error::bad_field_value);
    CHECK(s.consumed == 0);

    // Without filter_trailers (and after a reset) every trailer line passes as it comes.
    BodyDecoder plain(p.head());
    CHECK(plain.decode("0\r\nX-Secret: 1").consumed == 14);
    BodyDecoder again = proto;
    again.reset(p.head());
    CHECK(again.decode("0\r\nX-Secret: 1").consumed == 14);
  }

  TEST_CASE("chunked: truncated bodies at EOF") {
    for (const char* cut : {"", "5", "5\r", "5\r\nhel", "5\r\nhello", "5\r\nhello\r\n", "5\r\nhello\r\n0\r\n",
                            "5\r\nhello\r\n0\r\nX: y\r\n", "5;a=\"b"}) {
      CAPTURE(cut);
      const B b = check_body_splits(chunked_decoder(), cut, true);
      CHECK(b.status == BodyStatus::error);
      CHECK(b.error == Error::body_truncated);
    }
  }

  // -------------------------------------------------------------------------
  // Whole conversations at every split offset

  TEST_CASE("pipelined requests: heads and bodies at every split offset") {
    const std::string body2 = "a=1&b=2";
    const std::string stream =
        "GET /one HTTP/1.1\r\nHost: a.example\r\n\r\n"
        "POST /two HTTP/1.1\r\nHost: a.example\r\nContent-Length: 7\r\n\r\n" +
        body2 +
        "\r\n"  // a stray CRLF between messages is skipped
        "PUT /three HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n"
        "GET /four HTTP/1.0\r\n\r\n";
    const auto msgs = check_conversation(stream);
    REQUIRE(msgs.size() == 4);
    CHECK(msgs[0].head.target == "/one");
    CHECK(msgs[0].body.empty());
    CHECK(msgs[1].head.target == "/two");
    CHECK(msgs[1].body == body2);
    CHECK(msgs[2].head.target == "/three");
    CHECK(msgs[2].head.body == BodyKind::chunked);
    CHECK(msgs[2].body == "Wikipedia in\r\n\r\nchunks.");
    CHECK(msgs[3].head.target == "/four");
    CHECK_FALSE(msgs[3].head.keep_alive);
    for (const auto& m : msgs) CHECK(m.end == BodyStatus::done);
  }

  TEST_CASE("a pipelined bad request stops the conversation at the same place") {
    const std::string stream =
        "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: a\r\n\r\n";
    const auto msgs = check_conversation(stream);
    REQUIRE(msgs.size() == 2);
    CHECK(msgs[0].head.ok());
    CHECK(msgs[1].head.error == Error::te_and_cl);

    const std::string bad_chunk =
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const auto m2 = check_conversation(bad_chunk);
    REQUIRE(m2.size() == 1);
    CHECK(m2[0].body == "abc");
    CHECK(m2[0].body_error == Error::bare_lf);
  }

  TEST_CASE("responses in a row: HEAD, 100 Continue, chunked with trailers, until close") {
    const std::string stream =
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  // to HEAD: no body
        "HTTP/1.1 100 Continue\r\n\r\n"
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\nServer-Timing: db;dur=53\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        "HTTP/1.0 200 OK\r\n\r\nuntil\r\nclose";
    const auto msgs =
        check_conversation(stream, response_to(), {Method::head, Method::post, Method::post, Method::get, Method::get});
    REQUIRE(msgs.size() == 5);
    CHECK(msgs[0].head.content_length == 5);
    CHECK(msgs[0].body.empty());
    CHECK(msgs[1].head.code == 100);
    CHECK(msgs[2].head.code == 201);
    CHECK(msgs[2].body == "abc");
    CHECK(msgs[3].body == "hi");
    CHECK(msgs[4].head.body == BodyKind::until_close);
    CHECK(msgs[4].body == "until\r\nclose");
    CHECK(msgs[4].end == BodyStatus::done);
  }

  TEST_CASE("upgrade and CONNECT: the head ends the parsed part of the stream") {
    const std::string ws =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        "\x81\x05hello";
    const auto m = check_conversation(ws, response_to());
    REQUIRE(m.size() == 1);
    CHECK(m[0].head.tunnel);
    CHECK(m[0].head.head_len == ws.size() - 7);
    const auto c = check_conversation("HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01", response_to(Method::connect));
    REQUIRE(c.size() == 1);
    CHECK(c[0].head.tunnel);
  }

  TEST_CASE("CONNECT answered with any 2xx, 204 included, starts a tunnel (RFC 9110 9.3.6)") {
    // 204 has no body (RFC 9112 6.3 rule 1), but to CONNECT it is still a 2xx:
    // the bytes after the head are the tunnel, not the next response.
    const H h = check_ok("HTTP/1.1 204 No Content\r\n\r\n", response_to(Method::connect));
    CHECK(h.tunnel);
    CHECK(h.body == BodyKind::none);
    const auto m =
        check_conversation("HTTP/1.1 204 No Content\r\n\r\n\x16\x03\x01\x00\x05hello", response_to(Method::connect));
    REQUIRE(m.size() == 1);
    CHECK(m[0].head.tunnel);
    // Not 2xx: no tunnel (1xx is interim, 304 ends the message).
    CHECK_FALSE(check_ok("HTTP/1.1 100 Continue\r\n\r\n", response_to(Method::connect)).tunnel);
    CHECK_FALSE(check_ok("HTTP/1.1 304 Not Modified\r\n\r\n", response_to(Method::connect)).tunnel);
    CHECK(check_ok("HTTP/1.1 299 X\r\nContent-Length: 9\r\n\r\n", response_to(Method::connect)).tunnel);
  }
}
