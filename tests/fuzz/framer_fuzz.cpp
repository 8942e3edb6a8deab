// libFuzzer target for the frame framer (src/proxy/framer.cpp).
//
// Input: 6 spec bytes, then the byte stream.
//   b0: header_size = 1 + (b0 & 15); b0 >> 4 seeds the garbage put after `len`
//   b1: length_size = {1, 2, 4, 2}[b1 & 3] (the header grows to hold it);
//       length_offset = (b1 >> 2) % (header_size - length_size + 1)
//   b2: bit 0 big endian, bit 1 length includes the header, bit 2 check types
//       (0..7 allowed, at offset 0), bit 3 check versions (0..3 allowed, at
//       offset 1 when the header has it); max_depth = 1 + (b2 >> 4)
//   b3: max_body = b3 (0..255)
//   b4: key = {"devid", "/devid", "/d/id", "/0/k"}[b4 & 3]; max_key = 1 + (b4 >> 2)
//   b5: receive chunk size = 1 + b5
// tests/fuzz/make_framer_corpus.py writes seeds in this format.
//
// Checked (abort on failure):
//   - the decision on every prefix agrees with the decision on the whole
//     stream: need_more (length unknown) below header_size, a header error as
//     soon as the header is whole, need_more with the frame's length until the
//     frame is whole, then the same kind, error, length and key;
//   - the bytes after `len` (kPadding of them, garbage that differs between
//     calls) never change a decision;
//   - frame_len never exceeds header_size + max_body; a frame's key is 1..max_key
//     bytes without control characters;
//   - want_key = false agrees with frame_length() and with the keyed decision;
//   - receiving the stream in chunks and consuming whole frames gives the same
//     decisions as walking it in one segment.
// Each prefix is copied into its own allocation of exactly len + kPadding
// bytes, so AddressSanitizer catches a read past the padding.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gw/proxy/framer.hpp"

using gw::proxy::FrameDecision;
using gw::proxy::FrameError;
using gw::proxy::Framer;
using gw::proxy::FrameSpec;
using gw::proxy::kPadding;
using Kind = FrameDecision::Kind;

namespace {

[[noreturn]] void fail(const char* what, size_t len, int line) {
  std::fprintf(stderr, "framer_fuzz.cpp:%d: %s (prefix length %zu)\n", line, what, len);
  std::abort();
}
#define FUZZ_CHECK(cond, len)                  \
  do {                                         \
    if (!(cond)) fail(#cond, (len), __LINE__); \
  } while (0)

struct R {
  Kind kind = Kind::need_more;
  FrameError error = FrameError::none;
  uint32_t frame_len = 0;
  std::string key;
  bool operator==(const R&) const = default;
};

R of(const FrameDecision& d) {
  return R{d.kind, d.error, d.frame_len, std::string(d.key)};
}

uint8_t garbage(size_t i, unsigned seed) {
  static constexpr char kJunk[] = "9}\"]e1,{x\x7f\\u0\xff\x00 ";
  return static_cast<uint8_t>(kJunk[(i * 7 + seed) % (sizeof(kJunk) - 1)]);
}

// The first `len` bytes of `data` in their own allocation of len + kPadding
// bytes, garbage after `len`.
std::unique_ptr<uint8_t[]> padded(const uint8_t* data, size_t len, unsigned seed) {
  std::unique_ptr<uint8_t[]> p(new uint8_t[len + kPadding]);
  if (len) std::memcpy(p.get(), data, len);
  for (size_t i = 0; i < kPadding; ++i) p[len + i] = garbage(i, seed);
  return p;
}

R decide(Framer& f, const uint8_t* data, size_t len, unsigned seed, bool want_key = true) {
  auto buf = padded(data, len, seed);
  return of(f.inspect(buf.get(), len, want_key));
}

bool is_header_error(FrameError e) {
  return e == FrameError::bad_type || e == FrameError::bad_version || e == FrameError::bad_length ||
         e == FrameError::body_too_large;
}

// Checks one decision on its own (`keyed`: inspect was asked for the key).
void check_decision(const FrameSpec& spec, const R& d, size_t len, bool keyed = true) {
  const size_t hs = spec.header_size;
  FUZZ_CHECK(d.frame_len <= spec.max_frame(), len);
  switch (d.kind) {
    case Kind::need_more:
      FUZZ_CHECK(d.error == FrameError::none, len);
      FUZZ_CHECK(d.key.empty(), len);
      if (len < hs) FUZZ_CHECK(d.frame_len == 0, len);
      else FUZZ_CHECK(d.frame_len > len && d.frame_len >= hs, len);
      break;
    case Kind::frame:
      FUZZ_CHECK(d.error == FrameError::none, len);
      FUZZ_CHECK(d.frame_len >= hs && d.frame_len <= len, len);
      if (keyed) FUZZ_CHECK(!d.key.empty() && d.key.size() <= spec.max_key, len);
      else FUZZ_CHECK(d.key.empty(), len);
      for (unsigned char c : d.key) FUZZ_CHECK(c >= 0x20 && c != 0x7f, len);
      break;
    case Kind::reject:
      FUZZ_CHECK(len >= hs, len);
      FUZZ_CHECK(d.error != FrameError::none && d.error != FrameError::header_truncated &&
                     d.error != FrameError::body_truncated && d.error != FrameError::first_frame_timeout &&
                     d.error < FrameError::count,
                 len);
      FUZZ_CHECK(d.key.empty(), len);
      FUZZ_CHECK(keyed || is_header_error(d.error), len);
      if (is_header_error(d.error)) FUZZ_CHECK(d.frame_len == 0, len);
      else FUZZ_CHECK(d.frame_len >= hs && d.frame_len <= len, len);
      break;
  }
}

// What a prefix of `len` bytes must give, knowing the whole stream's decision.
R expected_for_prefix(const FrameSpec& spec, const R& whole, size_t len) {
  if (len < spec.header_size) return R{};
  if (whole.kind == Kind::reject && is_header_error(whole.error)) return whole;
  if (len < whole.frame_len) return R{Kind::need_more, FrameError::none, whole.frame_len, {}};
  return whole;
}

// Every prefix of data[0, n), against the decision on all of it.
void check_prefixes(Framer& f, const uint8_t* data, size_t n, unsigned seed) {
  const FrameSpec& spec = f.spec();
  const R whole = decide(f, data, n, seed);
  check_decision(spec, whole, n);

  // Without the key: the header alone decides, as frame_length() does.
  const R bare = decide(f, data, n, seed + 1, false);
  check_decision(spec, bare, n, false);
  if (n >= spec.header_size) {
    uint32_t fl = 0;
    FrameError e = gw::proxy::frame_length(spec, data, n, fl);
    if (e != FrameError::none) {
      FUZZ_CHECK(bare.kind == Kind::reject && bare.error == e && whole == bare, n);
    } else {
      FUZZ_CHECK(bare.frame_len == fl && whole.frame_len == fl, n);
      FUZZ_CHECK(bare.kind == (fl <= n ? Kind::frame : Kind::need_more), n);
      FUZZ_CHECK(bare.key.empty(), n);
    }
  } else {
    FUZZ_CHECK(bare == R{} && whole == R{}, n);
  }

  for (size_t len = 0; len <= n; ++len) {
    const R got = decide(f, data, len, seed + static_cast<unsigned>(len));
    check_decision(spec, got, len);
    FUZZ_CHECK(got == expected_for_prefix(spec, whole, len), len);
    if (got.kind == Kind::need_more)
      FUZZ_CHECK(f.at_eof(len) == (len < spec.header_size ? FrameError::header_truncated : FrameError::body_truncated),
                 len);
  }
}

// Decisions on whole frames, consuming each, with the stream received in
// chunks of `chunk` bytes (chunk 0: all at once); the EOF error last.
std::vector<R> receive(Framer& f, const uint8_t* data, size_t n, size_t chunk, unsigned seed) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[n + kPadding]);
  for (size_t i = 0; i < n + kPadding; ++i) buf[i] = garbage(i, seed);
  std::vector<R> out;
  size_t have = 0, start = 0;
  while (have < n || (n == 0 && have == 0)) {
    const size_t next = chunk == 0 ? n : std::min(n, have + chunk);
    if (next > have) std::memcpy(buf.get() + have, data + have, next - have);
    have = next;
    for (;;) {
      R d = of(f.inspect(buf.get() + start, have - start));
      check_decision(f.spec(), d, have - start);
      if (d.kind == Kind::need_more) break;
      out.push_back(d);
      if (d.kind == Kind::reject) return out;
      start += d.frame_len;
    }
    if (n == 0) break;
  }
  if (have > start) out.push_back(R{Kind::reject, f.at_eof(have - start), 0, {}});
  return out;
}

FrameSpec spec_of(const uint8_t* b) {
  FrameSpec s;
  s.header_size = 1 + (b[0] & 15u);
  static constexpr uint32_t kSizes[4] = {1, 2, 4, 2};
  s.length_size = kSizes[b[1] & 3u];
  if (s.length_size > s.header_size) s.header_size = s.length_size;
  s.length_offset = (b[1] >> 2) % (s.header_size - s.length_size + 1);
  s.big_endian = b[2] & 1u;
  s.length_includes_header = b[2] & 2u;
  s.check_types = b[2] & 4u;
  s.check_versions = b[2] & 8u;
  s.type_offset = 0;
  s.version_offset = s.header_size > 1 ? 1 : 0;
  for (unsigned t = 0; t < 8; ++t) s.allowed_types[t] = 1;
  for (unsigned v = 0; v < 4; ++v) s.allowed_versions[v] = 1;
  s.max_depth = 1 + (b[2] >> 4);
  s.max_body = b[3];
  static const char* const kKeys[4] = {"devid", "/devid", "/d/id", "/0/k"};
  s.key = kKeys[b[4] & 3u];
  s.max_key = 1 + (b[4] >> 2);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 6) return 0;
  const FrameSpec spec = spec_of(data);
  const unsigned seed = data[0] >> 4;
  const size_t chunk = 1 + size_t{data[5]};
  data += 6;
  size -= 6;
  Framer f(spec);

  // The first frame, at every split offset.
  check_prefixes(f, data, size, seed);

  // Frame by frame through the one segment; each frame's rest checked the same
  // way (bounded so that long streams of tiny frames stay fast).
  std::vector<R> walked;
  size_t at = 0, checked = 0;
  for (;;) {
    R d = decide(f, data + at, size - at, seed);
    if (d.kind == Kind::need_more) {
      if (size > at) walked.push_back(R{Kind::reject, f.at_eof(size - at), 0, {}});
      break;
    }
    walked.push_back(d);
    if (d.kind == Kind::reject) break;
    at += d.frame_len;
    if (at > 0 && checked < 8) {
      ++checked;
      check_prefixes(f, data + at, size - at, seed + 3);
    }
  }

  // Received in chunks, or all at once: the same decisions.
  FUZZ_CHECK(receive(f, data, size, 0, seed) == walked, size);
  FUZZ_CHECK(receive(f, data, size, chunk, seed + 5) == walked, size);
  FUZZ_CHECK(receive(f, data, size, 1, seed + 7) == walked, size);
  return 0;
}
