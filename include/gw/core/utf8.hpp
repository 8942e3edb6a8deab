#pragma once
// UTF-8 well-formedness (RFC 3629), for text that must go into JSON: rule
// values in the state file, and texts from outside in status documents.
// Written here rather than taken from a library: two small functions, and the
// Debian candidates (ICU, libunistring) are large for this.

#include <cstddef>
#include <string_view>

namespace gw::core {

/// The length of the well-formed UTF-8 sequence at the start of `s` (no
/// overlong forms, no surrogates, nothing past U+10FFFF), or 0. ASCII is 1.
inline size_t utf8_sequence(std::string_view s) noexcept {
  if (s.empty()) return 0;
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // the second byte's range
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    lo = c == 0xe0 ? 0xa0 : 0x80;
    hi = c == 0xed ? 0x9f : 0xbf;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    lo = c == 0xf0 ? 0x90 : 0x80;
    hi = c == 0xf4 ? 0x8f : 0xbf;
  } else {
    return 0;
  }
  if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i)
    if (b(i) < 0x80 || b(i) > 0xbf) return 0;
  return n;
}

/// Whether all of `s` is well-formed UTF-8.
inline bool utf8_valid(std::string_view s) noexcept {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s.substr(i));
    if (n == 0) return false;
    i += n;
  }
  return true;
}

/// The longest prefix of `s` of at most `max` bytes that does not end inside
/// a UTF-8 sequence (cut before a continuation byte).
inline std::string_view utf8_prefix(std::string_view s, size_t max) noexcept {
  if (s.size() <= max) return s;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
  return s.substr(0, cut);
}

}  // namespace gw::core
