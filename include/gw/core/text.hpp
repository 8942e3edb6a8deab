#pragma once
// Text quoted back in one-line messages (gwd -t, gwctl): a name or value from
// a config file or the command line may hold a newline, which must not split
// the message over lines.

#include <string>
#include <string_view>

namespace gw::core {

/// `s` with \n, \r and \t written as those escapes and any other control
/// character (and DEL) as \xHH; everything else, UTF-8 included, as is.
inline std::string one_line(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else out += static_cast<char>(c);
  }
  return out;
}

}  // namespace gw::core
