#include "gw/proxy/framer.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <ostream>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "../test_util.hpp"

using gw::proxy::FrameDecision;
using gw::proxy::FrameError;
using gw::proxy::Framer;
using gw::proxy::FrameSpec;
using gw::proxy::kPadding;
using Kind = FrameDecision::Kind;
using Bytes = std::vector<uint8_t>;

namespace {

// A decision with its key copied out of the parser (a FrameDecision's key is
// only valid until the next call on the same Framer).
struct R {
  Kind kind = Kind::need_more;
  FrameError error = FrameError::none;
  uint32_t frame_len = 0;
  std::string key;
  bool operator==(const R&) const = default;
};

std::ostream& operator<<(std::ostream& os, const R& r) {
  const char* k = r.kind == Kind::need_more ? "need_more" : r.kind == Kind::frame ? "frame" : "reject";
  return os << "{" << k << ", " << gw::proxy::frame_error_name(r.error) << ", len " << r.frame_len << ", key \""
            << r.key << "\"}";
}

R of(const FrameDecision& d) {
  return R{d.kind, d.error, d.frame_len, std::string(d.key)};
}
R need_more(uint32_t total = 0) {
  return R{Kind::need_more, FrameError::none, total, {}};
}
R ok(uint32_t len, std::string key) {
  return R{Kind::frame, FrameError::none, len, std::move(key)};
}
R rejected(FrameError e, uint32_t len = 0) {
  return R{Kind::reject, e, len, {}};
}

Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A header for `spec`: `fill` everywhere but the length field, which holds
// `declared` in the spec's width and byte order.
Bytes header(const FrameSpec& spec, uint64_t declared, uint8_t fill = 0x01) {
  Bytes h(spec.header_size, fill);
  for (uint32_t i = 0; i < spec.length_size; ++i) {
    const uint32_t shift = 8 * (spec.big_endian ? spec.length_size - 1 - i : i);
    h[spec.length_offset + i] = static_cast<uint8_t>(declared >> shift);
  }
  return h;
}

// A whole frame whose length field tells the body's real size.
Bytes frame(const FrameSpec& spec, std::string_view body, uint8_t fill = 0x01) {
  uint64_t n = body.size() + (spec.length_includes_header ? spec.header_size : 0);
  Bytes f = header(spec, n, fill);
  f.insert(f.end(), body.begin(), body.end());
  return f;
}

// The default 6-byte header: u8 type, u8 version, u16 time, u16 body_len (big endian).
Bytes frame6(std::string_view body, uint8_t type = 1, uint8_t version = 1) {
  // Sized once and filled in place: GCC 12 at -O3 (a Release build) warns
  // falsely (-Warray-bounds) on an insert after a 6-byte initializer list.
  Bytes f(6 + body.size());
  f[0] = type;
  f[1] = version;
  f[2] = 0x12;
  f[3] = 0x34;
  f[4] = static_cast<uint8_t>(body.size() >> 8);
  f[5] = static_cast<uint8_t>(body.size());
  std::copy(body.begin(), body.end(), f.begin() + 6);
  return f;
}

// Garbage for the bytes after `len` that the framer may read but must not be
// swayed by: digits, closers and quotes that would change a JSON document if
// they were taken as part of it.
uint8_t garbage(size_t i) {
  static constexpr char kJunk[] = "9}\"]e1,{x\x7f";
  return static_cast<uint8_t>(kJunk[i % (sizeof(kJunk) - 1)]);
}

// Inspects the first `len` bytes of `bytes`, copied into a buffer that keeps
// kPadding readable bytes (of garbage) after them.
R decide_n(Framer& f, const Bytes& bytes, size_t len, bool want_key = true) {
  REQUIRE(len <= bytes.size());
  Bytes buf(len + kPadding);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = garbage(i);
  std::copy(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len), buf.begin());
  return of(f.inspect(buf.data(), len, want_key));
}
R decide(Framer& f, const Bytes& bytes, bool want_key = true) {
  return decide_n(f, bytes, bytes.size(), want_key);
}

// The decision for a stream whose whole first frame gives `first`: checks
// every prefix of `s` (and the EOF error for each prefix that needs more).
void check_every_prefix(Framer& f, const Bytes& s, const R& first) {
  const size_t hs = f.spec().header_size;
  const bool header_error = first.kind == Kind::reject && first.frame_len == 0;
  for (size_t len = 0; len <= s.size(); ++len) {
    CAPTURE(len);
    R want;
    if (len < hs) want = need_more();
    else if (header_error) want = first;
    else if (len < first.frame_len) want = need_more(first.frame_len);
    else want = first;
    R got = decide_n(f, s, len);
    CHECK(got == want);
    if (got.kind == Kind::need_more)
      CHECK(f.at_eof(len) == (len < hs ? FrameError::header_truncated : FrameError::body_truncated));
  }
}

// Receives `s` in chunks that end at `cuts` (then at s.size()), consuming
// whole frames as a relay does; returns every decision on a whole frame, then
// the EOF error if the stream ends inside a frame. Bytes not received yet are
// garbage, so the parser sees different padding at different splits.
std::vector<R> receive(Framer& f, const Bytes& s, std::vector<size_t> cuts) {
  Bytes buf(s.size() + kPadding);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = garbage(i + 3);
  cuts.push_back(s.size());
  size_t have = 0, start = 0;
  std::vector<R> out;
  for (size_t cut : cuts) {
    if (cut < have) continue;
    std::copy(s.begin() + static_cast<std::ptrdiff_t>(have), s.begin() + static_cast<std::ptrdiff_t>(cut),
              buf.begin() + static_cast<std::ptrdiff_t>(have));
    have = cut;
    for (;;) {
      FrameDecision d = f.inspect(buf.data() + start, have - start);
      if (d.kind == Kind::need_more) break;
      out.push_back(of(d));
      if (d.kind == Kind::reject) return out;
      start += d.frame_len;
    }
  }
  if (have > start) out.push_back(rejected(f.at_eof(have - start)));
  return out;
}

// A spec under which every error can happen.
FrameSpec strict_spec() {
  FrameSpec s;
  s.max_body = 64;
  s.max_key = 16;
  s.max_depth = 4;
  s.check_types = true;
  s.allowed_types[1] = s.allowed_types[2] = 1;
  s.check_versions = true;
  s.allowed_versions[1] = 1;
  return s;
}

}  // namespace

TEST_SUITE("proxy/framer") {
  TEST_CASE("a valid frame gives its length and key") {
    Framer f(FrameSpec{});
    const std::string body = R"({"devid":"dev-0001","v":[1,2,{"x":null}],"s":"é"})";
    Bytes fr = frame6(body);
    CHECK(decide(f, fr) == ok(static_cast<uint32_t>(6 + body.size()), "dev-0001"));
    // Bytes after the frame (the next frame) do not change the decision.
    CHECK(decide(f, fr + frame6(R"({"devid":"b"})")) == ok(static_cast<uint32_t>(6 + body.size()), "dev-0001"));
    // Without the key, the body is not parsed.
    CHECK(decide(f, frame6("not json"), false) == R{Kind::frame, FrameError::none, 14, {}});
    // Keys are unescaped; non-ASCII UTF-8 is allowed.
    CHECK(decide(f, frame6(R"({"devid":"a\"b\\c\u00e9"})")).key == "a\"b\\c\xc3\xa9");
    // Whitespace around the document is fine.
    const std::string spaced = " \r\n\t{ \"devid\" : \"w\" } \n";
    CHECK(decide(f, frame6(spaced)) == ok(static_cast<uint32_t>(6 + spaced.size()), "w"));
  }

  TEST_CASE("the header alone: frame_length") {
    FrameSpec s;
    uint32_t n = 0;
    Bytes h = header(s, 300);
    CHECK(gw::proxy::frame_length(s, h.data(), h.size(), n) == FrameError::none);
    CHECK(n == 306);
    h = header(s, 65535);
    CHECK(gw::proxy::frame_length(s, h.data(), h.size(), n) == FrameError::none);
    CHECK(n == 6 + 65535);
    s.max_body = 100;
    h = header(s, 101);
    CHECK(gw::proxy::frame_length(s, h.data(), h.size(), n) == FrameError::body_too_large);
  }

  TEST_CASE("frames from hosts: reply_length applies no device rule") {
    FrameSpec s = strict_spec();  // allowed types and versions, a small max_body
    s.max_body = 100;
    uint64_t n = 0;
    uint32_t n32 = 0;
    // A type and a version the device may not send, a body above max_body:
    // refused from a device, delimited as is from a host.
    Bytes h = header(s, 65535, 0xee);
    CHECK(gw::proxy::frame_length(s, h.data(), h.size(), n32) != FrameError::none);
    CHECK(gw::proxy::reply_length(s, h.data(), n) == FrameError::none);
    CHECK(n == 6 + 65535);
    h = header(s, 0);
    CHECK(gw::proxy::reply_length(s, h.data(), n) == FrameError::none);
    CHECK(n == 6);
    // A 4-byte length is taken whole (up to 4 GiB - 1 plus the header).
    FrameSpec w;
    w.header_size = 8;
    w.length_offset = 4;
    w.length_size = 4;
    w.big_endian = false;
    w.max_body = 10;
    h = header(w, 0xffffffffu);
    CHECK(gw::proxy::reply_length(w, h.data(), n) == FrameError::none);
    CHECK(n == 8 + 0xffffffffull);
    // A length that counts the header but is below it is the one error.
    w.length_includes_header = true;
    h = header(w, 7);
    CHECK(gw::proxy::reply_length(w, h.data(), n) == FrameError::bad_length);
    h = header(w, 8);
    CHECK(gw::proxy::reply_length(w, h.data(), n) == FrameError::none);
    CHECK(n == 8);
  }

  TEST_CASE("the decision is the same at every split offset") {
    FrameSpec spec = strict_spec();
    Framer f(spec);
    const Bytes v1 = frame6(R"({"devid":"dev-1","n":1})");
    const Bytes v2 = frame6(R"({"n":[1,[2]],"devid":"dev-2"})", 2);
    const Bytes v3 = frame6(R"({"devid":"d3"})");
    const Bytes valid = v1 + v2 + v3;
    const std::vector<R> valid_keys{ok(static_cast<uint32_t>(v1.size()), "dev-1"),
                                    ok(static_cast<uint32_t>(v2.size()), "dev-2"),
                                    ok(static_cast<uint32_t>(v3.size()), "d3")};

    struct Bad {
      const char* name;
      Bytes bytes;
      R decision;  // for the bad frame once whole (or at EOF)
    };
    auto body_err = [](FrameError e, const Bytes& b) { return rejected(e, static_cast<uint32_t>(b.size())); };
    const Bytes deep = frame6(R"({"devid":"a","x":[[[[[1]]]]]})");
    const Bytes bad_json = frame6(R"({"devid":"a",})");
    const Bytes bad_utf8 = frame6("{\"devid\":\"a\xff\"}");
    const Bytes missing = frame6(R"({"id":"a"})");
    const Bytes not_string = frame6(R"({"devid":12})");
    const Bytes empty = frame6(R"({"devid":""})");
    const Bytes too_long = frame6(R"({"devid":"0123456789abcdefg"})");
    const Bytes bad_char = frame6(R"({"devid":"a\u0001"})");
    Bytes truncated_body = frame6(R"({"devid":"cut"})");
    truncated_body.resize(truncated_body.size() - 3);
    const std::vector<Bad> bads{
        {"bad_type", frame6(R"({"devid":"a"})", 7), rejected(FrameError::bad_type)},
        {"bad_version", frame6(R"({"devid":"a"})", 1, 9), rejected(FrameError::bad_version)},
        {"body_too_large", Bytes{1, 1, 0, 0, 0, 65}, rejected(FrameError::body_too_large)},
        {"bad_json", bad_json, body_err(FrameError::bad_json, bad_json)},
        {"json_too_deep", deep, body_err(FrameError::json_too_deep, deep)},
        {"bad_utf8", bad_utf8, body_err(FrameError::bad_utf8, bad_utf8)},
        {"key_missing", missing, body_err(FrameError::key_missing, missing)},
        {"key_not_string", not_string, body_err(FrameError::key_not_string, not_string)},
        {"key_empty", empty, body_err(FrameError::key_empty, empty)},
        {"key_too_long", too_long, body_err(FrameError::key_too_long, too_long)},
        {"key_bad_char", bad_char, body_err(FrameError::key_bad_char, bad_char)},
        {"header_truncated", Bytes{1, 1, 0}, rejected(FrameError::header_truncated)},
        {"body_truncated", truncated_body, rejected(FrameError::body_truncated)},
    };

    {  // valid frames only
      // Each frame, then the rest of the stream from each frame boundary.
      check_every_prefix(f, valid, valid_keys[0]);
      check_every_prefix(f, v2 + v3, valid_keys[1]);
      check_every_prefix(f, v3, valid_keys[2]);
      CHECK(receive(f, valid, {}) == valid_keys);
      for (size_t cut = 0; cut <= valid.size(); ++cut) {
        CAPTURE(cut);
        CHECK(receive(f, valid, {cut}) == valid_keys);
        for (size_t cut2 = cut; cut2 <= valid.size(); cut2 += 3) CHECK(receive(f, valid, {cut, cut2}) == valid_keys);
      }
      std::vector<size_t> every;
      for (size_t i = 1; i < valid.size(); ++i) every.push_back(i);
      CHECK(receive(f, valid, every) == valid_keys);
    }

    for (const Bad& bad : bads) {
      CAPTURE(bad.name);
      const Bytes s = valid + bad.bytes;
      std::vector<R> want = valid_keys;
      want.push_back(bad.decision);
      // The bad frame alone, and from every frame boundary before it.
      const bool eof_error =
          bad.decision.error == FrameError::header_truncated || bad.decision.error == FrameError::body_truncated;
      if (!eof_error) {
        check_every_prefix(f, bad.bytes, bad.decision);
        check_every_prefix(f, v3 + bad.bytes, valid_keys[2]);
      } else {
        for (size_t len = 0; len <= bad.bytes.size(); ++len) {
          R got = decide_n(f, bad.bytes, len);
          CHECK(got.kind == Kind::need_more);
          CHECK(f.at_eof(len) == (len < 6 ? FrameError::header_truncated : FrameError::body_truncated));
        }
        CHECK(f.at_eof(bad.bytes.size()) == bad.decision.error);
      }
      check_every_prefix(f, s, valid_keys[0]);
      CHECK(receive(f, s, {}) == want);
      for (size_t cut = 0; cut <= s.size(); ++cut) {
        CAPTURE(cut);
        CHECK(receive(f, s, {cut}) == want);
      }
      std::vector<size_t> every;
      for (size_t i = 1; i < s.size(); ++i) every.push_back(i);
      CHECK(receive(f, s, every) == want);
    }
  }

  TEST_CASE("walking frame by frame through one segment gives each frame's key") {
    Framer f(FrameSpec{});
    Bytes seg;
    std::vector<std::string> keys;
    for (int i = 0; i < 50; ++i) {
      keys.push_back("dev-" + std::to_string(i));
      std::string pad(static_cast<size_t>(i * 7), 'p');
      seg = seg + frame6(R"({"p":")" + pad + R"(","devid":")" + keys.back() + R"("})", 1, static_cast<uint8_t>(i));
    }
    Bytes buf = seg;  // then the padding (a copy into a sized buffer: a false -Wstringop-overflow at -O3)
    buf.resize(seg.size() + kPadding, 0);
    size_t at = 0;
    std::vector<std::string> got;
    while (at < seg.size()) {
      FrameDecision d = f.inspect(buf.data() + at, seg.size() - at);
      REQUIRE(d.kind == Kind::frame);
      got.emplace_back(d.key);
      at += d.frame_len;
    }
    CHECK(at == seg.size());
    CHECK(got == keys);
  }

  TEST_CASE("truncation: EOF inside the header or the body") {
    Framer f(FrameSpec{});
    Bytes fr = frame6(R"({"devid":"abc"})");
    for (size_t len = 0; len < 6; ++len) {
      CHECK(decide_n(f, fr, len) == need_more());
      CHECK(f.at_eof(len) == FrameError::header_truncated);
    }
    for (size_t len = 6; len < fr.size(); ++len) {
      CHECK(decide_n(f, fr, len) == need_more(static_cast<uint32_t>(fr.size())));
      CHECK(f.at_eof(len) == FrameError::body_truncated);
    }
    CHECK(decide(f, fr) == ok(static_cast<uint32_t>(fr.size()), "abc"));
  }

  TEST_CASE("body_too_large is decided on the header alone") {
    FrameSpec s;
    s.max_body = 100;
    Framer f(s);
    // Only the header: no body byte is needed to refuse.
    CHECK(decide(f, Bytes{1, 1, 0, 0, 0, 101}) == rejected(FrameError::body_too_large));
    CHECK(decide(f, Bytes{1, 1, 0, 0, 0xff, 0xff}) == rejected(FrameError::body_too_large));
    // max_body itself is fine: it needs the body.
    CHECK(decide(f, Bytes{1, 1, 0, 0, 0, 100}) == need_more(106));
    std::string body = R"({"devid":"x","p":")" + std::string(100 - 20, 'p') + R"("})";
    REQUIRE(body.size() == 100);
    CHECK(decide(f, frame6(body)) == ok(106, "x"));
    // A 4-byte length far above max_body (and above 4 GiB - header) is refused too.
    FrameSpec s4;
    s4.header_size = 8;
    s4.length_offset = 4;
    s4.length_size = 4;
    s4.max_body = 1000;
    Framer f4(s4);
    CHECK(decide(f4, header(s4, 0xffffffffu)) == rejected(FrameError::body_too_large));
    CHECK(decide(f4, header(s4, 1001)) == rejected(FrameError::body_too_large));
    CHECK(decide(f4, header(s4, 1000)) == need_more(1008));
  }

  TEST_CASE("JSON errors: invalid, too deep, not UTF-8") {
    FrameSpec s;
    s.max_depth = 4;
    Framer f(s);
    for (const char* body : {"", " ", "not json", R"({"devid":"a")", R"({"devid":"a",})", R"({"devid":"a"} x)",
                             R"({"devid":"a"}{})", R"({devid:"a"})", "{\"devid\":\"a\x01\"}", "\xef\xbb\xbf{}"}) {
      CAPTURE(body);
      CHECK(decide(f, frame6(body)).error == FrameError::bad_json);
    }
    CHECK(decide(f, frame6(R"({"devid":"a","x":[{"y":1}]})")) == ok(6 + 27, "a"));  // 3 levels
    CHECK(decide(f, frame6(R"({"devid":"a","x":[[[[[[[[1]]]]]]]]})")).error == FrameError::json_too_deep);
    CHECK(decide(f, frame6(std::string(40, '[') + std::string(40, ']'))).error == FrameError::json_too_deep);
    CHECK(decide(f, frame6("{\"devid\":\"\xc3\x28\"}")).error == FrameError::bad_utf8);
    CHECK(decide(f, frame6("{\"devid\":\"a\",\"o\":\"\xff\xfe\"}")).error == FrameError::bad_utf8);
    CHECK(decide(f, frame6("{\"devid\":\"a\",\"o\":\"\xed\xa0\x80\"}")).error == FrameError::bad_utf8);  // surrogate
    CHECK(decide(f, frame6("{\"devid\":\"a\",\"o\":\"\xf8\x88\x80\x80\x80\"}")).error == FrameError::bad_utf8);
  }

  // max_depth is the deepest nesting accepted: N nested containers pass, N+1
  // do not, and max_depth 1 takes a flat object.
  TEST_CASE("max_depth is the deepest nesting accepted") {
    const std::string levels[] = {R"({"devid":"a"})", R"({"devid":"a","x":[1]})", R"({"devid":"a","x":[{"y":1}]})",
                                  R"({"devid":"a","x":[{"y":[1]}]})"};
    for (uint32_t depth = 1; depth <= 3; ++depth) {
      CAPTURE(depth);
      FrameSpec s;
      s.max_depth = depth;
      Framer f(s);
      for (uint32_t n = 1; n <= 4; ++n) {
        CAPTURE(n);
        const uint32_t len = static_cast<uint32_t>(6 + levels[n - 1].size());
        const R got = decide(f, frame6(levels[n - 1]));
        if (n <= depth) CHECK(got == ok(len, "a"));
        else CHECK(got == rejected(FrameError::json_too_deep, len));
      }
    }
    // simdjson does not count an empty innermost object or array as a level:
    // max_depth 1 takes {"x":[]} but not {"x":[[]]} (README, max_depth).
    {
      FrameSpec s;
      s.max_depth = 1;
      Framer f1(s);
      const std::string empty_inner = R"({"devid":"a","x":[]})", nested_empty = R"({"devid":"a","x":[[]]})";
      CHECK(decide(f1, frame6(empty_inner)) == ok(static_cast<uint32_t>(6 + empty_inner.size()), "a"));
      CHECK(decide(f1, frame6(nested_empty)) ==
            rejected(FrameError::json_too_deep, static_cast<uint32_t>(6 + nested_empty.size())));
    }
    // The default, 32.
    Framer f(FrameSpec{});
    auto nested = [](size_t n) {  // the root object and n - 1 arrays
      return R"({"devid":"a","x":)" + std::string(n - 1, '[') + "1" + std::string(n - 1, ']') + "}";
    };
    CHECK(decide(f, frame6(nested(32))).kind == Kind::frame);
    CHECK(decide(f, frame6(nested(33))).error == FrameError::json_too_deep);
  }

  TEST_CASE("key errors: missing, empty, not a string, too long, control characters") {
    FrameSpec s;
    s.max_key = 8;
    Framer f(s);
    CHECK(decide(f, frame6(R"({"id":"a"})")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({"Devid":"a"})")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({})")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({"x":{"devid":"a"}})")).error == FrameError::key_missing);  // not top level
    CHECK(decide(f, frame6(R"(["devid","a"])")).error == FrameError::key_missing);        // an array
    CHECK(decide(f, frame6(R"([{"devid":"a"}])")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"("devid")")).error == FrameError::key_missing);  // a scalar document
    CHECK(decide(f, frame6("12")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({"devid":""})")).error == FrameError::key_empty);
    for (const char* v : {"12", "-1", "1.5", "true", "false", "null", "{}", R"({"id":"a"})", "[]", R"(["a"])"}) {
      CAPTURE(v);
      CHECK(decide(f, frame6(std::string(R"({"devid":)") + v + "}")).error == FrameError::key_not_string);
    }
    CHECK(decide(f, frame6(R"({"devid":"12345678"})")) == ok(6 + 20, "12345678"));
    CHECK(decide(f, frame6(R"({"devid":"123456789"})")).error == FrameError::key_too_long);
    // max_key counts bytes, not characters: 4 x U+00E9 is 8 bytes, 5 is 10.
    CHECK(decide(f, frame6(R"({"devid":"ééééé"})")).error == FrameError::key_too_long);
    CHECK(decide(f, frame6(R"({"devid":"éééé"})")).key == "éééé");
    // Escapes are counted after unescaping.
    CHECK(decide(f, frame6(R"({"devid":"\u0041\u0042\u0043\u0044\u0045\u0046\u0047\u0048"})")).key == "ABCDEFGH");
    for (const char* v :
         {R"("a\u0001")", R"("\u0000")", R"("a\tb")", R"("a\nb")", R"("\u001f")", R"("a\u007f")", "\"a\x7f\""}) {
      CAPTURE(v);
      CHECK(decide(f, frame6(std::string(R"({"devid":)") + v + "}")).error == FrameError::key_bad_char);
    }
    // Raw control characters are not JSON at all.
    CHECK(decide(f, frame6("{\"devid\":\"a\x01\"}")).error == FrameError::bad_json);
    CHECK(decide(f, frame6("{\"devid\":\"a\tb\"}")).error == FrameError::bad_json);
    // Other fields may hold anything.
    CHECK(decide(f, frame6(R"({"x":"\u0001","y":null,"devid":"k"})")).key == "k");
    // A duplicated key is refused: parsers differ on which one wins (simdjson
    // the first, most host-side parsers the last), so the frame could be routed
    // by one key and acted on by the host as the other. Also when an escape
    // spells the same name; duplicates elsewhere in the body do not matter.
    CHECK(decide(f, frame6(R"({"devid":"a","devid":"b"})")).error == FrameError::key_duplicate);
    CHECK(decide(f, frame6(R"({"devid":"a","x":1,"devid":"a"})")).error == FrameError::key_duplicate);
    CHECK(decide(f, frame6(R"({"devid":"a","dev\u0069d":"b"})")).error == FrameError::key_duplicate);
    CHECK(decide(f, frame6(R"({"x":1,"x":2,"devid":"k","y":{"z":1,"z":2}})")).key == "k");
    CHECK(std::string(gw::proxy::frame_error_name(FrameError::key_duplicate)) == "key_duplicate");
  }

  TEST_CASE("JSON pointer keys") {
    FrameSpec s;
    s.key = "/device/id";
    Framer f(s);
    CHECK(decide(f, frame6(R"({"device":{"id":"d-9","x":1}})")).key == "d-9");
    CHECK(decide(f, frame6(R"({"device":{"idx":"a"}})")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({"device":"id"})")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({"device":["id"]})")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({"devid":"a"})")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"([1])")).error == FrameError::key_missing);
    CHECK(decide(f, frame6(R"({"device":{"id":7}})")).error == FrameError::key_not_string);
    CHECK(decide(f, frame6(R"({"device":{"id":""}})")).error == FrameError::key_empty);

    FrameSpec sa;
    sa.key = "/ids/1";
    Framer fa(sa);
    CHECK(decide(fa, frame6(R"({"ids":["a","b"]})")).key == "b");
    CHECK(decide(fa, frame6(R"({"ids":["a"]})")).error == FrameError::key_missing);

    FrameSpec se;  // "~1" is "/" and "~0" is "~" inside a pointer token
    se.key = "/a~1b/c~0d";
    Framer fe(se);
    CHECK(decide(fe, frame6(R"({"a/b":{"c~d":"z"}})")).key == "z");

    FrameSpec st;  // a pointer into a top-level array
    st.key = "/0/devid";
    Framer ft(st);
    CHECK(decide(ft, frame6(R"([{"devid":"arr"}])")).key == "arr");
    CHECK(decide(ft, frame6(R"({"devid":"a"})")).error == FrameError::key_missing);
    CHECK(decide(ft, frame6(R"({"0":{"devid":"obj"}})")).key == "obj");  // "0" names a member of an object

    // A member name twice on the path, at any level, is refused; an index
    // takes decimal digits without a leading zero (RFC 6901).
    CHECK(decide(f, frame6(R"({"device":{"id":"a"},"device":{"id":"b"}})")).error == FrameError::key_duplicate);
    CHECK(decide(f, frame6(R"({"device":{"id":"a","id":"b"}})")).error == FrameError::key_duplicate);
    CHECK(decide(f, frame6(R"({"device":{"id":"a","x":1,"x":2},"y":1,"y":2})")).key == "a");
    CHECK(decide(fa, frame6(R"({"ids":["a","b"],"ids":["c","d"]})")).error == FrameError::key_duplicate);
    FrameSpec sz;
    sz.key = "/ids/01";
    Framer fz(sz);
    CHECK(decide(fz, frame6(R"({"ids":["a","b"]})")).error == FrameError::key_missing);
    FrameSpec sn;
    sn.key = "/ids/-";
    Framer fn(sn);
    CHECK(decide(fn, frame6(R"({"ids":["a","b"]})")).error == FrameError::key_missing);
    FrameSpec sr;  // "/" is the member named "" (an empty reference token)
    sr.key = "/";
    Framer fr(sr);
    CHECK(decide(fr, frame6(R"({"":"empty-name"})")).key == "empty-name");
  }

  TEST_CASE("allowed_types and allowed_versions are checked on the header") {
    FrameSpec s;
    s.check_types = true;
    s.allowed_types[1] = s.allowed_types[3] = 1;
    s.check_versions = true;
    s.allowed_versions[2] = 1;
    Framer f(s);
    const std::string body = R"({"devid":"t"})";
    CHECK(decide(f, frame6(body, 1, 2)) == ok(19, "t"));
    CHECK(decide(f, frame6(body, 3, 2)) == ok(19, "t"));
    CHECK(decide(f, frame6(body, 2, 2)) == rejected(FrameError::bad_type));
    CHECK(decide(f, frame6(body, 1, 1)) == rejected(FrameError::bad_version));
    CHECK(decide(f, frame6(body, 0, 0)) == rejected(FrameError::bad_type));  // types first
    // On the header alone, before any body byte.
    CHECK(decide_n(f, frame6(body, 2, 2), 6) == rejected(FrameError::bad_type));
    CHECK(decide_n(f, frame6(body, 1, 2), 5) == need_more());
    // Other offsets.
    FrameSpec o = s;
    o.type_offset = 2;
    o.version_offset = 3;
    Framer fo(o);
    Bytes fr = frame6(body, 0xee, 0xee);
    fr[2] = 3;
    fr[3] = 2;
    CHECK(decide(fo, fr) == ok(19, "t"));
    fr[3] = 0;
    CHECK(decide(fo, fr) == rejected(FrameError::bad_version));
    // With checks off, any byte goes.
    Framer any(FrameSpec{});
    CHECK(decide(any, frame6(body, 0xff, 0xff)) == ok(19, "t"));
  }

  TEST_CASE("length fields: includes header, byte order, 1 and 4 bytes") {
    const std::string body = R"({"devid":"len"})";
    const uint32_t bl = static_cast<uint32_t>(body.size());

    SUBCASE("length_includes_header") {
      FrameSpec s;
      s.length_includes_header = true;
      Framer f(s);
      CHECK(decide(f, frame(s, body)) == ok(6 + bl, "len"));
      CHECK(decide(f, header(s, 5)) == rejected(FrameError::bad_length));
      CHECK(decide(f, header(s, 0)) == rejected(FrameError::bad_length));
      CHECK(decide(f, header(s, 6)) == rejected(FrameError::bad_json, 6));  // an empty body
      CHECK(decide(f, header(s, 7)) == need_more(7));
      s.max_body = 10;
      Framer small(s);
      CHECK(decide(small, header(s, 16)) == need_more(16));
      CHECK(decide(small, header(s, 17)) == rejected(FrameError::body_too_large));
    }
    SUBCASE("little endian") {
      FrameSpec s;
      s.big_endian = false;
      Framer f(s);
      Bytes fr = frame(s, body);
      CHECK(fr[4] == bl);
      CHECK(fr[5] == 0);
      CHECK(decide(f, fr) == ok(6 + bl, "len"));
      CHECK(decide(f, Bytes{1, 1, 0, 0, 0x00, 0x01}) == need_more(6 + 256));
      CHECK(decide(f, Bytes{1, 1, 0, 0, 0x01, 0x00}) == need_more(6 + 1));
    }
    SUBCASE("a 1-byte length, the whole header") {
      FrameSpec s;
      s.header_size = 1;
      s.length_offset = 0;
      s.length_size = 1;
      Framer f(s);
      CHECK(decide(f, frame(s, body)) == ok(1 + bl, "len"));
      CHECK(decide(f, Bytes{0}) == rejected(FrameError::bad_json, 1));
      CHECK(decide(f, Bytes{255}) == need_more(256));
      CHECK(decide(f, Bytes{}) == need_more());
      CHECK(f.at_eof(0) == FrameError::header_truncated);
      CHECK(f.at_eof(1) == FrameError::body_truncated);
    }
    SUBCASE("a 4-byte length in a 12-byte header, both byte orders") {
      for (bool big : {true, false}) {
        CAPTURE(big);
        FrameSpec s;
        s.header_size = 12;
        s.length_offset = 8;
        s.length_size = 4;
        s.big_endian = big;
        s.max_body = 1 << 20;
        Framer f(s);
        CHECK(decide(f, frame(s, body, 0xab)) == ok(12 + bl, "len"));
        CHECK(decide(f, header(s, 0x00010203)) == need_more(12 + 0x00010203));
        Bytes h = header(s, 0x00010203);
        CHECK(h[8] == (big ? 0x00 : 0x03));
        CHECK(h[11] == (big ? 0x03 : 0x00));
        CHECK(decide(f, header(s, (1u << 20) + 1)) == rejected(FrameError::body_too_large));
      }
    }
    SUBCASE("a 2-byte length at offset 0 of an 8-byte header") {
      FrameSpec s;
      s.header_size = 8;
      s.length_offset = 0;
      Framer f(s);
      CHECK(decide(f, frame(s, body, 0x00)) == ok(8 + bl, "len"));
      for (size_t len = 0; len < 8; ++len) CHECK(decide_n(f, frame(s, body), len) == need_more());
    }
  }

  TEST_CASE("max_body 0: every body is empty and not JSON") {
    FrameSpec s;
    s.max_body = 0;
    Framer f(s);
    CHECK(decide(f, Bytes{1, 1, 0, 0, 0, 0}) == rejected(FrameError::bad_json, 6));
    CHECK(decide(f, Bytes{1, 1, 0, 0, 0, 0}, false) == R{Kind::frame, FrameError::none, 6, {}});
    CHECK(decide(f, Bytes{1, 1, 0, 0, 0, 1}) == rejected(FrameError::body_too_large));
  }

  TEST_CASE("inspect allocates nothing, whatever the size of the frames that come") {
    // The data plane allocates nothing per frame. simdjson's parser.allocate()
    // sizes the parser but not the document (tape and strings), which parse()
    // grew to each body larger than any before: the first frame, then every
    // new largest one, up to max_body, allocated on the worker's thread.
    FrameSpec s;  // max_body 65536
    Framer f(s);
    std::vector<Bytes> bufs;
    for (size_t pad : {0, 10, 100, 1000, 10000, 65000}) {
      Bytes fr = frame6(R"({"devid":"k","pad":")" + std::string(pad, 'x') + "\"}");
      fr.resize(fr.size() + kPadding, ' ');
      bufs.push_back(std::move(fr));
    }
    for (const Bytes& b : bufs) {
      CAPTURE(b.size());
      const uint64_t before = gw::testing::allocations();
      const FrameDecision d = f.inspect(b.data(), b.size() - kPadding);
      const uint64_t allocated = gw::testing::allocations() - before;
      CHECK(d.kind == Kind::frame);
      CHECK(d.key == "k");
      CHECK(allocated == 0);
    }
  }

  TEST_CASE("frame_error_name gives a distinct name for every error") {
    std::set<std::string> names;
    for (size_t i = 0; i < gw::proxy::kFrameErrorCount; ++i) {
      std::string n = gw::proxy::frame_error_name(static_cast<FrameError>(i));
      CAPTURE(i);
      CHECK(n != "unknown");
      CHECK(!n.empty());
      CHECK(names.insert(n).second);
    }
    CHECK(names.size() == gw::proxy::kFrameErrorCount);
    CHECK(std::string(gw::proxy::frame_error_name(FrameError::none)) == "none");
    CHECK(std::string(gw::proxy::frame_error_name(FrameError::key_bad_char)) == "key_bad_char");
    CHECK(std::string(gw::proxy::frame_error_name(FrameError::frame_timeout)) == "frame_timeout");
    CHECK(std::string(gw::proxy::frame_error_name(FrameError::no_frame_buffer)) == "no_frame_buffer");
    CHECK(std::string(gw::proxy::frame_error_name(FrameError::count)) == "unknown");
  }
}
