#include "gw/core/base64.hpp"

#include <cstdint>

namespace gw::core {
namespace {

constexpr char kStandard[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char kUrl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// 0..63, or -1.
int value_of(char c, bool url) noexcept {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == (url ? '-' : '+')) return 62;
  if (c == (url ? '_' : '/')) return 63;
  return -1;
}

// Decodes unpadded text of either alphabet.
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

// Encodes with `alphabet`, '=' padding to a multiple of four if `pad`.
std::string encode(std::string_view in, const char* alphabet, bool pad) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += alphabet[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += alphabet[(acc << (6 - bits)) & 63];
  while (pad && out.size() % 4 != 0) out += '=';
  return out;
}

// Padded base64 text without its trailing '=' (two at the most).
std::string_view unpad(std::string_view in) noexcept {
  size_t pad = 0;
  while (pad < 2 && pad < in.size() && in[in.size() - 1 - pad] == '=') ++pad;
  return in.substr(0, in.size() - pad);
}

}  // namespace

ptrdiff_t base64url_decode(std::string_view in, char* out, size_t cap) noexcept {
  return decode(in, out, cap, true);
}

ptrdiff_t base64_decode(std::string_view in, char* out, size_t cap) noexcept {
  if (in.size() % 4 != 0) return -1;
  // A third '=' (or one anywhere else) is left in the text, where it is not
  // a base64 character.
  return decode(unpad(in), out, cap, false);
}

bool base64_decode(std::string_view in, std::string& out) {
  out.resize(in.size() / 4 * 3);
  const ptrdiff_t n = base64_decode(in, out.data(), out.size());
  out.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return n >= 0;
}

std::string base64_encode(std::string_view in) {
  return encode(in, kStandard, true);
}

std::string base64url_encode(std::string_view in) {
  return encode(in, kUrl, false);
}

}  // namespace gw::core
