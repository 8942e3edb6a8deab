// libFuzzer target for the HTTP/1.1 head parser and body decoder
// (src/http/parser.cpp).
//
// Input: 4 control bytes, then the byte stream (one or more messages).
//   b0: bit 0 response parser (else request); bits 1-2 the request method a
//       response answers {GET, HEAD, CONNECT, POST}; bits 3-5 the field array
//       size {64, 0, 1, 2, 3, 4, 8, 16}
//   b1: limits, 2 bits each, 0 = the default:
//       max_start_line {8192, 7, 20, 48}, max_head {32768, 16, 60, 200},
//       max_chunk_line {4096, 0, 3, 12}, max_trailer {8192, 0, 4, 30}
//   b2, b3: seed of the split patterns (chunk sizes, buffer moves)
// tests/fuzz/make_http_corpus.py writes seeds in this format.
//
// Checked (abort on failure):
//   - head, every prefix: a prefix of L bytes gives need_more while L <= D and
//     the whole stream's outcome once L > D, where D is the byte that decides
//     (head_len - 1 when done, error_offset on error). Once with every prefix
//     in its own exact-size allocation (one parser: the buffer moves at every
//     call, so the parser starts over), once with one buffer that grows in
//     place (the parser resumes), and once in random chunks where the buffer
//     is copied to a fresh exact-size allocation before some calls. Compared:
//     status, Error, error_offset, and when done the whole head (method, target,
//     status, version, every field, body kind, content_length, keep_alive,
//     upgrade/websocket/expect/tunnel flags, connection options, head_len);
//   - every head that is done: head_len <= the buffer and max_head, every view
//     lies in the head bytes of the buffer of that call, names are non-empty
//     tokens with the right FieldId, values hold no CTL but HTAB (no CR, LF,
//     NUL) and no OWS at either end, the field array is the caller's, and the
//     framing follows the header comment's rules (no until_close request, no
//     body for HEAD/1xx/204/304 responses, chunked never with Content-Length,
//     Host in every HTTP/1.1 request, ...);
//   - every error of a request (head or body) answers 400, 414, 431, 501 or 505;
//   - body, fed the bytes after the head whole, 1 byte at a time and in random
//     chunks (each chunk in its own exact-size allocation, empty inputs mixed
//     in): consumed never exceeds the step's input, consumed > 0 whenever the
//     input is non-empty and the status is `more`, data lies in the step's
//     consumed bytes, the sum of consumed never exceeds the input; the decoded
//     body, the bytes consumed, the final status and Error, and the EOF outcome
//     (finish()) are the same for every chunking; a Content-Length body that is
//     done holds content_length bytes; done and error are sticky;
//   - pipelining: the stream driven as a connection (a buffer that receives
//     the chunks, heads parsed from it, bodies decoded from it, consumed bytes
//     dropped, reset() between messages) gives the same messages whole, 1 byte
//     at a time, and in random chunks with the buffer moving; the first few
//     messages after the first get the head and body checks above too.
// Under AddressSanitizer the bytes of a connection buffer past its end (and
// those already consumed) are poisoned, so the parser reading beyond the bytes
// it was given is reported even when the buffer grows in place.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gw/http/parser.hpp"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GW_FUZZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define GW_FUZZ_ASAN 1
#endif
#ifdef GW_FUZZ_ASAN
#include <sanitizer/asan_interface.h>
#define GW_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define GW_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define GW_POISON(p, n) ((void)(p), (void)(n))
#define GW_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

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

namespace {

[[noreturn]] void fail(const char* what, int line) {
  std::fprintf(stderr, "http_parser_fuzz.cpp:%d: check failed: %s\n", line, what);
  std::abort();
}
#define FUZZ_CHECK(cond)                \
  do {                                  \
    if (!(cond)) fail(#cond, __LINE__); \
  } while (0)

// ---------------------------------------------------------------------------
// Configuration from the control bytes, and the split patterns.

struct Ctx {
  Kind kind = Kind::request;
  Method req = Method::get;  // responses: the method of the request answered
  size_t max_fields = 64;
  Limits limits{};
  uint32_t seed = 0;
};

Ctx ctx_of(const uint8_t* b) {
  static constexpr Method kMethods[4] = {Method::get, Method::head, Method::connect, Method::post};
  static constexpr size_t kFields[8] = {64, 0, 1, 2, 3, 4, 8, 16};
  static constexpr uint32_t kStart[4] = {Limits{}.max_start_line, 7, 20, 48};
  static constexpr uint32_t kHead[4] = {Limits{}.max_head, 16, 60, 200};
  static constexpr uint32_t kChunkLine[4] = {Limits{}.max_chunk_line, 0, 3, 12};
  static constexpr uint32_t kTrailer[4] = {Limits{}.max_trailer, 0, 4, 30};
  Ctx c;
  c.kind = (b[0] & 1u) ? Kind::response : Kind::request;
  c.req = kMethods[(b[0] >> 1) & 3u];
  c.max_fields = kFields[(b[0] >> 3) & 7u];
  c.limits.max_start_line = kStart[b[1] & 3u];
  c.limits.max_head = kHead[(b[1] >> 2) & 3u];
  c.limits.max_chunk_line = kChunkLine[(b[1] >> 4) & 3u];
  c.limits.max_trailer = kTrailer[(b[1] >> 6) & 3u];
  c.seed = static_cast<uint32_t>(b[2]) | static_cast<uint32_t>(b[3]) << 8;
  return c;
}

// splitmix64: the split patterns are a function of the input.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
  bool one_in(size_t n) { return below(n) == 0; }
};

// How a stream is delivered: all at once, 1 byte at a time, or in random
// chunks (mostly tiny, some up to 200 bytes).
enum class Plan : uint8_t { whole, bytes, random };

size_t next_chunk(Plan plan, Rng& rng, size_t left) {
  size_t k = left;
  if (plan == Plan::bytes) {
    k = 1;
  } else if (plan == Plan::random) {
    switch (rng.below(4)) {
      case 0: k = 1; break;
      case 1: k = 1 + rng.below(4); break;
      case 2: k = 1 + rng.below(24); break;
      default: k = 1 + rng.below(200); break;
    }
  }
  return k < left ? k : left;
}

// A buffer of exactly `n` bytes (n = 0 too), copied from `p`.
std::unique_ptr<char[]> exact_copy(const char* p, size_t n) {
  std::unique_ptr<char[]> b(new char[n]);
  if (n) std::memcpy(b.get(), p, n);
  return b;
}

bool inside(std::string_view v, const char* begin, const char* end) {
  const auto p = reinterpret_cast<uintptr_t>(v.data());
  const auto b = reinterpret_cast<uintptr_t>(begin);
  const auto e = reinterpret_cast<uintptr_t>(end);
  return p >= b && p <= e && v.size() <= e - p;
}
// An empty view that was never set (nullptr) is fine; anything else must be inside.
bool inside_or_unset(std::string_view v, const char* begin, const char* end) {
  return (v.empty() && v.data() == nullptr) || inside(v, begin, end);
}

// ---------------------------------------------------------------------------
// Head outcomes, copied out so they compare across buffers.

struct FieldR {
  std::string name, value;
  FieldId id = FieldId::other;
  bool hop = false;
  bool operator==(const FieldR&) const = default;
};

struct HeadR {
  ParseStatus status = ParseStatus::need_more;
  Error error = Error::none;
  size_t error_offset = 0;
  // done only
  Method method = Method::other;
  std::string method_name, target;
  TargetForm form = TargetForm::origin;
  uint16_t code = 0;
  std::string reason;
  Version version = Version::http11;
  std::vector<FieldR> fields;
  bool has_host = false;
  std::string host;
  BodyKind body = BodyKind::none;
  uint64_t content_length = 0;
  bool merged = false, keep_alive = false, upgrade = false, websocket = false, expect_continue = false,
       expect_other = false, tunnel = false;
  std::string upgrade_protocols;
  std::vector<std::string> options;
  uint32_t head_len = 0;
  bool operator==(const HeadR&) const = default;

  // The offset of the byte that decided (need_more: none).
  size_t decided_at() const { return status == ParseStatus::done ? head_len - 1 : error_offset; }
};

bool is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

FieldId expected_id(std::string_view name) {
  struct Known {
    const char* name;
    FieldId id;
  };
  static constexpr Known kKnown[] = {
      {"host", FieldId::host},
      {"content-length", FieldId::content_length},
      {"transfer-encoding", FieldId::transfer_encoding},
      {"connection", FieldId::connection},
      {"keep-alive", FieldId::keep_alive},
      {"proxy-connection", FieldId::proxy_connection},
      {"upgrade", FieldId::upgrade},
      {"te", FieldId::te},
      {"trailer", FieldId::trailer},
      {"expect", FieldId::expect},
  };
  for (const Known& k : kKnown) {
    const std::string_view n(k.name);
    if (n.size() != name.size()) continue;
    bool eq = true;
    for (size_t i = 0; i < n.size() && eq; ++i) {
      char c = name[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      eq = c == n[i];
    }
    if (eq) return k.id;
  }
  return FieldId::other;
}

bool request_status_ok(Error e) {
  const int s = gw::http::error_status(e);
  return s == 400 || s == 414 || s == 431 || s == 501 || s == 505;
}

void check_error(const Ctx& ctx, Error e) {
  FUZZ_CHECK(e != Error::none && e < Error::count);
  if (ctx.kind == Kind::request) FUZZ_CHECK(request_status_ok(e));
}

// Checks the parser's state right after parse(buf) returned `st`, and copies
// the outcome out (views are only read while `buf` is alive).
HeadR snap(const Ctx& ctx, const Parser& p, ParseStatus st, std::string_view buf, std::span<const Field> storage) {
  HeadR r;
  r.status = st;
  r.error = p.error();
  if (st == ParseStatus::need_more) {
    FUZZ_CHECK(r.error == Error::none);
    FUZZ_CHECK(buf.size() <= ctx.limits.max_head);
    return r;
  }
  if (st == ParseStatus::error) {
    check_error(ctx, r.error);
    r.error_offset = p.error_offset();
    FUZZ_CHECK(r.error_offset < buf.size());
    // Decided at max_head: a head too large, or a start line not ended there.
    if (r.error == Error::head_too_large) FUZZ_CHECK(r.error_offset == ctx.limits.max_head);
    else if (r.error == Error::start_line_too_long) FUZZ_CHECK(r.error_offset <= ctx.limits.max_head);
    else FUZZ_CHECK(r.error_offset < ctx.limits.max_head);
    return r;
  }
  FUZZ_CHECK(st == ParseStatus::done);
  FUZZ_CHECK(r.error == Error::none);
  const Head& h = p.head();
  FUZZ_CHECK(h.head_len >= 2 && h.head_len <= buf.size() && h.head_len <= ctx.limits.max_head);
  const char* const b = buf.data();
  const char* const e = buf.data() + h.head_len;
  // The head ends in the empty line.
  FUZZ_CHECK(b[h.head_len - 2] == '\r' && b[h.head_len - 1] == '\n');

  FUZZ_CHECK(h.fields.size() <= storage.size());
  FUZZ_CHECK(h.fields.empty() || h.fields.data() == storage.data());
  bool has_cl = false, has_te = false, has_host_field = false;
  for (const Field& f : h.fields) {
    FUZZ_CHECK(inside(f.name, b, e) && inside(f.value, b, e));
    FUZZ_CHECK(is_token(f.name));
    FUZZ_CHECK(f.id == expected_id(f.name));
    for (unsigned char c : f.value) FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
    if (!f.value.empty()) {
      FUZZ_CHECK(f.value.front() != ' ' && f.value.front() != '\t');
      FUZZ_CHECK(f.value.back() != ' ' && f.value.back() != '\t');
    }
    switch (f.id) {
      case FieldId::host:
        has_host_field = true;
        FUZZ_CHECK(!f.hop_by_hop);
        break;
      case FieldId::content_length:
        has_cl = true;
        FUZZ_CHECK(!f.hop_by_hop);
        break;
      case FieldId::transfer_encoding:
        has_te = true;
        FUZZ_CHECK(f.hop_by_hop);
        break;
      case FieldId::connection:
      case FieldId::keep_alive:
      case FieldId::proxy_connection:
      case FieldId::upgrade:
      case FieldId::te: FUZZ_CHECK(f.hop_by_hop); break;
      default: break;
    }
  }
  FUZZ_CHECK(!(has_cl && has_te));
  FUZZ_CHECK(h.connection_option_count <= gw::http::kMaxConnectionOptions);
  for (std::string_view o : h.connection_options()) FUZZ_CHECK(inside(o, b, e) && is_token(o));
  FUZZ_CHECK(inside_or_unset(h.upgrade_protocols, b, e));
  switch (h.body) {
    case BodyKind::none: break;
    case BodyKind::length: FUZZ_CHECK(has_cl); break;
    case BodyKind::chunked: FUZZ_CHECK(has_te && !has_cl); break;
    case BodyKind::until_close: FUZZ_CHECK(ctx.kind == Kind::response && !has_cl); break;
  }
  if (h.body != BodyKind::length) FUZZ_CHECK(!h.content_length_merged);
  if (h.keep_alive) FUZZ_CHECK(h.body != BodyKind::until_close);
  if (h.websocket) FUZZ_CHECK(h.upgrade);
  if (ctx.kind == Kind::request) {
    FUZZ_CHECK(is_token(h.method_name) && inside(h.method_name, b, e));
    FUZZ_CHECK(!h.target.empty() && inside(h.target, b, e));
    for (unsigned char c : h.target) FUZZ_CHECK(c > 0x20 && c != 0x7f);
    FUZZ_CHECK(h.has_host == has_host_field);
    if (h.has_host) FUZZ_CHECK(inside(h.host, b, e));
    if (h.version == Version::http11) FUZZ_CHECK(h.has_host);
    if (h.upgrade || h.expect_continue) FUZZ_CHECK(h.version == Version::http11);
    FUZZ_CHECK(!h.tunnel && h.status == 0);
    if (h.method == Method::connect) FUZZ_CHECK(h.target_form == TargetForm::authority);
    if (h.target_form == TargetForm::asterisk) FUZZ_CHECK(h.method == Method::options && h.target == "*");
  } else {
    FUZZ_CHECK(h.status >= 100 && h.status <= 599);
    FUZZ_CHECK(inside_or_unset(h.reason, b, e));
    for (unsigned char c : h.reason) FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
    if (ctx.req == Method::head || h.status < 200 || h.status == 204 || h.status == 304)
      FUZZ_CHECK(h.body == BodyKind::none);
    FUZZ_CHECK(h.tunnel == (h.status == 101 || (ctx.req == Method::connect && h.status >= 200 && h.status < 300)));
    FUZZ_CHECK(h.upgrade == (h.status == 101));
    if (h.tunnel) FUZZ_CHECK(h.body == BodyKind::none);
    FUZZ_CHECK(!h.has_host && h.method_name.empty() && h.target.empty());
  }

  r.method = h.method;
  r.method_name = h.method_name;
  r.target = h.target;
  r.form = h.target_form;
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
  for (std::string_view o : h.connection_options()) r.options.emplace_back(o);
  r.head_len = h.head_len;
  return r;
}

// ---------------------------------------------------------------------------
// A buffer that receives a stream: bytes are appended (in place, or after a
// copy to a fresh exact-size allocation) and dropped from the front. Under
// ASan only [off, off + len) of the allocation is addressable.

class ConnBuf {
 public:
  explicit ConnBuf(size_t capacity) : reserve_(capacity) {}
  ConnBuf(const ConnBuf&) = delete;
  ConnBuf& operator=(const ConnBuf&) = delete;
  ~ConnBuf() { unpoison_all(); }

  std::string_view view() const { return {mem_.get() + off_, len_}; }
  bool empty() const { return len_ == 0; }

  // Copies the bytes to a fresh allocation of exactly their size: the parser
  // sees a moved buffer. The new one is allocated before the old one is freed,
  // so the address always changes.
  void move_exact() { replace(len_, len_); }

  void append(const char* p, size_t k, bool move) {
    if (move || off_ + len_ + k > cap_) replace(move ? len_ + k : reserve_ > len_ + k ? reserve_ : len_ + k, len_);
    GW_UNPOISON(mem_.get() + off_ + len_, k);
    std::memcpy(mem_.get() + off_ + len_, p, k);
    len_ += k;
  }

  void consume(size_t k) {
    GW_POISON(mem_.get() + off_, k);
    off_ += k;
    len_ -= k;
  }

 private:
  void replace(size_t cap, size_t keep) {
    std::unique_ptr<char[]> m(new char[cap]);
    if (keep) std::memcpy(m.get(), mem_.get() + off_, keep);
    unpoison_all();
    mem_ = std::move(m);
    cap_ = cap;
    off_ = 0;
    GW_POISON(mem_.get() + keep, cap - keep);
  }
  void unpoison_all() {
    if (mem_) GW_UNPOISON(mem_.get(), cap_);
  }

  std::unique_ptr<char[]> mem_{new char[0]};
  size_t cap_ = 0, off_ = 0, len_ = 0;
  size_t reserve_;
};

// ---------------------------------------------------------------------------
// Head properties for the message at the start of `s` (n bytes).

HeadR parse_whole(const Ctx& ctx, const char* s, size_t n) {
  std::vector<Field> fields(ctx.max_fields);
  Parser p(ctx.kind, fields, ctx.limits);
  p.reset(ctx.req);
  auto buf = exact_copy(s, n);
  const std::string_view v(buf.get(), n);
  const HeadR r = snap(ctx, p, p.parse(v), v, fields);
  // Parsing the same buffer again changes nothing.
  FUZZ_CHECK(snap(ctx, p, p.parse(v), v, fields) == r);
  return r;
}

// What a prefix of `len` bytes must give.
void check_prefix_outcome(const HeadR& whole, const HeadR& got, size_t len) {
  if (whole.status == ParseStatus::need_more || len <= whole.decided_at())
    FUZZ_CHECK(got.status == ParseStatus::need_more);
  else FUZZ_CHECK(got == whole);
}

void check_head(const Ctx& ctx, const char* s, size_t n, const HeadR& whole, Rng& rng) {
  if (whole.status != ParseStatus::need_more) FUZZ_CHECK(whole.decided_at() < n);
  // Bytes past the decision are not looked at: they need not be covered one by one.
  const size_t last = whole.status == ParseStatus::need_more ? n : std::min(n, whole.decided_at() + 2);
  std::vector<Field> fields(ctx.max_fields);

  // 1. Every prefix in its own exact-size allocation, one parser: the buffer
  //    moves at every call and the parser starts over (long heads: a sample).
  {
    Parser p(ctx.kind, fields, ctx.limits);
    p.reset(ctx.req);
    std::vector<size_t> lens;
    const size_t stride = last > 1024 ? last / 256 : 1;
    for (size_t len = 0; len <= last; len += len < 64 ? 1 : stride) lens.push_back(len);
    if (whole.status != ParseStatus::need_more)
      for (size_t len = whole.decided_at() > 0 ? whole.decided_at() - 1 : 0; len <= last; ++len) lens.push_back(len);
    lens.push_back(last);
    std::sort(lens.begin(), lens.end());
    lens.erase(std::unique(lens.begin(), lens.end()), lens.end());
    for (size_t len : lens) {
      auto buf = exact_copy(s, len);
      const std::string_view v(buf.get(), len);
      check_prefix_outcome(whole, snap(ctx, p, p.parse(v), v, fields), len);
    }
    // And the whole once more in a new buffer (done: parsed again there).
    auto buf = exact_copy(s, n);
    const std::string_view v(buf.get(), n);
    FUZZ_CHECK(snap(ctx, p, p.parse(v), v, fields) == whole);
  }

  // 2. One buffer growing in place (bytes past the prefix poisoned): the parser
  //    resumes where it stopped.
  {
    Parser p(ctx.kind, fields, ctx.limits);
    p.reset(ctx.req);
    ConnBuf buf(n);
    for (size_t len = 0; len <= last; ++len) {
      if (len) buf.append(s + len - 1, 1, false);
      check_prefix_outcome(whole, snap(ctx, p, p.parse(buf.view()), buf.view(), fields), len);
    }
  }

  // 3. Random chunks; before some calls the buffer moves to an exact-size
  //    allocation; some calls repeat.
  {
    Parser p(ctx.kind, fields, ctx.limits);
    p.reset(ctx.req);
    ConnBuf buf(n);
    size_t len = 0;
    HeadR got;
    do {
      const size_t k = next_chunk(Plan::random, rng, n - len);
      buf.append(s + len, k, rng.one_in(3));
      len += k;
      got = snap(ctx, p, p.parse(buf.view()), buf.view(), fields);
      check_prefix_outcome(whole, got, len);
      if (rng.one_in(4)) {
        if (rng.one_in(2)) buf.move_exact();
        FUZZ_CHECK(snap(ctx, p, p.parse(buf.view()), buf.view(), fields) == got);
      }
    } while (len < n);
    FUZZ_CHECK(got == whole);
  }
}

// ---------------------------------------------------------------------------
// Bodies

struct BodyR {
  std::string data;
  size_t consumed = 0;
  BodyStatus status = BodyStatus::more;  // when the input ran out, or done/error
  Error error = Error::none;
  Error eof = Error::none;  // finish() after the input ran out
  bool operator==(const BodyR&) const = default;
};

// One decode() step on `in`, checked.
BodyStep step(const Ctx& ctx, BodyDecoder& d, std::string_view in) {
  const BodyKind kind = d.kind();
  const BodyStep s = d.decode(in);
  FUZZ_CHECK(s.consumed <= in.size());
  if (!s.data.empty())
    FUZZ_CHECK(s.data.data() >= in.data() && s.data.data() + s.data.size() <= in.data() + s.consumed);
  if (s.status == BodyStatus::more && !in.empty()) FUZZ_CHECK(s.consumed > 0);
  if (in.empty()) FUZZ_CHECK(s.consumed == 0 && s.data.empty());
  if (s.status == BodyStatus::error) {
    check_error(ctx, s.error);
    FUZZ_CHECK(d.error() == s.error && !d.done());
  } else {
    FUZZ_CHECK(s.error == Error::none && d.error() == Error::none);
    FUZZ_CHECK(d.done() == (s.status == BodyStatus::done));
  }
  switch (kind) {
    case BodyKind::none: FUZZ_CHECK(s.consumed == 0 && s.status == BodyStatus::done); break;
    case BodyKind::length: FUZZ_CHECK(s.data.size() == s.consumed && s.status != BodyStatus::error); break;
    case BodyKind::until_close: FUZZ_CHECK(s.data.size() == in.size() && s.status == BodyStatus::more); break;
    case BodyKind::chunked: break;
  }
  return s;
}

// A terminal decoder stays where it is.
void check_sticky(const Ctx& ctx, BodyDecoder& d, const BodyR& r) {
  static const char kByte[1] = {'0'};
  for (std::string_view in : {std::string_view(), std::string_view(kByte, 1)}) {
    const BodyStep s = step(ctx, d, in);
    FUZZ_CHECK(s.consumed == 0 && s.data.empty() && s.status == r.status && s.error == r.error);
  }
  FUZZ_CHECK(d.finish() == r.error);
}

// After the input ran out with the body open: EOF.
void finish_open(BodyDecoder& d, BodyR& r) {
  const BodyKind kind = d.kind();
  r.eof = d.finish();
  if (kind == BodyKind::until_close) FUZZ_CHECK(r.eof == Error::none && d.done());
  else FUZZ_CHECK(r.eof == Error::body_truncated && !d.done() && d.error() == Error::body_truncated);
  FUZZ_CHECK(d.finish() == r.eof);  // sticky
}

BodyDecoder decoder_for(const HeadR& h, const Limits& limits) {
  BodyDecoder d;
  d.reset(h.tunnel ? BodyKind::none : h.body, h.content_length, limits);
  return d;
}

// The bytes `s` (n) after a head, fed in pieces; each piece in its own
// exact-size allocation, freed before the next.
BodyR decode_body(const Ctx& ctx, const HeadR& h, const char* s, size_t n, Plan plan, Rng& rng) {
  BodyDecoder d = decoder_for(h, ctx.limits);
  BodyR r;
  size_t at = 0;
  bool open = true;
  while (open && at < n) {
    const size_t k = next_chunk(plan, rng, n - at);
    auto piece = exact_copy(s + at, k);
    at += k;
    std::string_view in(piece.get(), k);
    if (plan == Plan::random && rng.one_in(8)) step(ctx, d, {});
    while (!in.empty()) {
      const BodyStep st = step(ctx, d, in);
      r.data.append(st.data);
      r.consumed += st.consumed;
      in.remove_prefix(st.consumed);
      if (st.status != BodyStatus::more) {
        r.status = st.status;
        r.error = st.error;
        open = false;
        break;
      }
    }
  }
  if (n == 0) {  // nothing after the head: the decoder may be done already
    const BodyStep st = step(ctx, d, {});
    r.status = st.status;
    r.error = st.error;
    open = st.status == BodyStatus::more;
  }
  FUZZ_CHECK(r.consumed <= n);
  if (open) {
    FUZZ_CHECK(r.consumed == n);
    finish_open(d, r);
  } else {
    check_sticky(ctx, d, r);
  }
  if (h.body == BodyKind::length && !h.tunnel) {
    if (r.status == BodyStatus::done) FUZZ_CHECK(r.data.size() == h.content_length);
    else FUZZ_CHECK(r.data.size() == n && n < h.content_length);
  }
  if (h.body == BodyKind::chunked && !h.tunnel) FUZZ_CHECK(r.data.size() <= r.consumed);
  return r;
}

BodyR check_body(const Ctx& ctx, const HeadR& h, const char* s, size_t n, Rng& rng) {
  const BodyR whole = decode_body(ctx, h, s, n, Plan::whole, rng);
  FUZZ_CHECK(decode_body(ctx, h, s, n, Plan::bytes, rng) == whole);
  FUZZ_CHECK(decode_body(ctx, h, s, n, Plan::random, rng) == whole);
  FUZZ_CHECK(decode_body(ctx, h, s, n, Plan::random, rng) == whole);
  return whole;
}

// ---------------------------------------------------------------------------
// A connection: the stream arrives in chunks into one buffer; heads are parsed
// from it, bodies decoded from it, consumed bytes dropped.

struct Msg {
  HeadR head;
  BodyR body;
  bool operator==(const Msg&) const = default;
};

constexpr size_t kMaxMessages = 64;

std::vector<Msg> converse(const Ctx& ctx, const char* s, size_t n, Plan plan, Rng& rng) {
  std::vector<Field> fields(ctx.max_fields);
  Parser p(ctx.kind, fields, ctx.limits);
  p.reset(ctx.req);
  BodyDecoder d;
  ConnBuf buf(n);
  std::vector<Msg> out;
  Msg cur;
  bool in_body = false, stopped = false;
  size_t at = 0;
  while (!stopped && at < n) {
    const size_t k = next_chunk(plan, rng, n - at);
    buf.append(s + at, k, plan != Plan::whole && rng.one_in(plan == Plan::bytes ? 16 : 3));
    at += k;
    for (;;) {
      if (!in_body) {
        if (buf.empty()) break;
        const ParseStatus st = p.parse(buf.view());
        cur.head = snap(ctx, p, st, buf.view(), fields);
        if (st == ParseStatus::need_more) break;
        if (st == ParseStatus::error) {
          out.push_back(cur);
          stopped = true;
          break;
        }
        d.reset(p.head(), ctx.limits);
        buf.consume(cur.head.head_len);
        in_body = true;
      }
      std::string_view in = buf.view();
      size_t used = 0;
      BodyStep st;
      do {
        st = step(ctx, d, in.substr(used));
        cur.body.data.append(st.data);
        used += st.consumed;
      } while (st.status == BodyStatus::more && used < in.size());
      buf.consume(used);
      cur.body.consumed += used;
      if (st.status == BodyStatus::more) break;
      cur.body.status = st.status;
      cur.body.error = st.error;
      out.push_back(cur);
      if (st.status == BodyStatus::error || cur.head.tunnel || out.size() == kMaxMessages) {
        stopped = true;
        break;
      }
      cur = Msg{};
      in_body = false;
      p.reset(ctx.req);
    }
  }
  if (!stopped) {  // EOF
    if (in_body) {
      finish_open(d, cur.body);
      out.push_back(cur);
    } else if (!buf.empty()) {
      out.push_back(cur);  // a head cut short
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const Ctx ctx = ctx_of(data);
  const char* const s = reinterpret_cast<const char*>(data + 4);
  const size_t n = size - 4;
  Rng rng(ctx.seed);

  // The connection, all at once: the reference.
  const std::vector<Msg> ref = converse(ctx, s, n, Plan::whole, rng);

  // The first messages on their own: every prefix of the head, the body in
  // every chunking; the same as in the connection.
  size_t start = 0;
  for (size_t i = 0; i < ref.size() && i < 4; ++i) {
    const Msg& m = ref[i];
    const HeadR whole = parse_whole(ctx, s + start, n - start);
    FUZZ_CHECK(whole == m.head);
    check_head(ctx, s + start, n - start, whole, rng);
    if (whole.status != ParseStatus::done) break;
    const size_t body_at = start + whole.head_len;
    const BodyR body = check_body(ctx, whole, s + body_at, n - body_at, rng);
    FUZZ_CHECK(m.body == body);
    if (body.status == BodyStatus::more) FUZZ_CHECK(i + 1 == ref.size());
    start = body_at + body.consumed;
  }
  if (ref.empty()) FUZZ_CHECK(n == 0);

  // The same connection 1 byte at a time, and in random chunks with the buffer moving.
  FUZZ_CHECK(converse(ctx, s, n, Plan::bytes, rng) == ref);
  FUZZ_CHECK(converse(ctx, s, n, Plan::random, rng) == ref);
  FUZZ_CHECK(converse(ctx, s, n, Plan::random, rng) == ref);
  return 0;
}
