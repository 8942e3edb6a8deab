#include "gw/api/base64.hpp"

#include <cstdint>

namespace gw::api {
namespace {

// 0..63, or -1.
int value_of(char c, bool url) noexcept {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == (url ? '-' : '+')) return 62;
  if (c == (url ? '_' : '/')) return 63;
  return -1;
}

// Decodes unpadded base64 text of either alphabet.
ptrdiff_t decode(std::string_view in, char* out, size_t cap, bool url) noexcept {
  if (in.size() % 4 == 1) return -1;
  const size_t n = in.size() / 4 * 3 + (in.size() % 4 == 0 ? 0 : in.size() % 4 - 1);
  if (n > cap) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const int v = value_of(c, url);
    if (v < 0) return -1;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return -1;  // non-zero padding bits
  return static_cast<ptrdiff_t>(o);
}

}  // namespace

ptrdiff_t base64url_decode(std::string_view in, char* out, size_t cap) noexcept { return decode(in, out, cap, true); }

ptrdiff_t base64_decode(std::string_view in, char* out, size_t cap) noexcept {
  if (in.size() % 4 != 0) return -1;
  size_t pad = 0;
  while (pad < 2 && pad < in.size() && in[in.size() - 1 - pad] == '=') ++pad;
  return decode(in.substr(0, in.size() - pad), out, cap, false);
}

std::string base64url_encode(std::string_view in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 63];
  return out;
}

}  // namespace gw::api
