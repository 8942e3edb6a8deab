#pragma once
// Text quoted back in one-line messages (gwd -t, gwctl, gwd's log): a name or
// value from a config file or the command line may hold a newline, which must
// not split the message over lines, or bytes a terminal would act on.

#include <string>
#include <string_view>

#include "gw/core/utf8.hpp"

namespace gw::core {

/// Calls `put(std::string_view)` with `s` in the pieces one_line() writes,
/// in order: a character kept as is, or the escape of one byte. A writer that
/// must cut (a log record of at most PIPE_BUF bytes) cuts between two pieces,
/// so never inside a UTF-8 character or an escape. Allocates nothing.
template <typename Put>
void one_line_pieces(std::string_view s, Put&& put) {
  static constexpr char kHex[] = "0123456789abcdef";
  auto hex = [&](unsigned char c) {
    const char e[4] = {'\\', 'x', kHex[c >> 4], kHex[c & 0xf]};
    put(std::string_view(e, sizeof(e)));
  };
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = utf8_sequence(s.substr(i));
    if (c == '\n') put(std::string_view("\\n"));
    else if (c == '\r') put(std::string_view("\\r"));
    else if (c == '\t') put(std::string_view("\\t"));
    else if (c < 0x20 || c == 0x7f || n == 0) hex(c);  // a C0 control, DEL, or a byte that is not UTF-8
    else if (n == 2 && c == 0xc2 && static_cast<unsigned char>(s[i + 1]) < 0xa0) {
      // A C1 control: both bytes, as one piece (a cut keeps or drops the character whole).
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      const char e[8] = {'\\', 'x', 'c', '2', '\\', 'x', kHex[c1 >> 4], kHex[c1 & 0xf]};
      put(std::string_view(e, sizeof(e)));
    } else {
      put(s.substr(i, n));
    }
    i += n ? n : 1;
  }
}

/// `s` with \n, \r and \t written as those escapes, and as \xHH each byte of
/// any other control character (C0, DEL, and the C1 controls U+0080..U+009F,
/// which terminals take as escape sequences: U+009B is CSI) and each byte
/// that is not part of well-formed UTF-8; everything else, UTF-8 included, as
/// is. So a quoted value can neither split a message nor drive a terminal.
inline std::string one_line(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  one_line_pieces(s, [&](std::string_view piece) { out.append(piece); });
  return out;
}

}  // namespace gw::core
