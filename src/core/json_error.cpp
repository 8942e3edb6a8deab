#include "gw/core/json_error.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "gw/core/utf8.hpp"

namespace gw::core {

namespace {

// simdjson's default maximum depth of nested objects and arrays.
constexpr size_t kMaxDepth = 1024;

// A recursive-descent validator that records the first error and unwinds
// (every function returns false once one is found).
class Scanner {
 public:
  explicit Scanner(std::string_view d) : d_(d) {}

  JsonError run() {
    if (d_.starts_with("\xef\xbb\xbf")) fail(0, "a UTF-8 byte-order mark at the start: remove it (JSON text has none)");
    else if (skip_ws(); i_ == d_.size()) fail(i_, "the document is empty");
    else if (value(0) && (skip_ws(), i_ < d_.size())) unexpected(i_, "the end of the document after its value");
    return err_;
  }

 private:
  bool fail(size_t at, std::string what) {
    err_.found = true;
    err_.line = 1;
    size_t line_start = 0;
    for (size_t k = 0; k < at && k < d_.size(); ++k)
      if (d_[k] == '\n') ++err_.line, line_start = k + 1;
    err_.column = 1;
    for (size_t k = line_start; k < at && k < d_.size(); ++k)
      if ((static_cast<unsigned char>(d_[k]) & 0xc0) != 0x80) ++err_.column;  // not a continuation byte
    for (const auto& p : path_) err_.path += (err_.path.empty() || p[0] == '[') ? p : "." + p;
    err_.what = std::move(what);
    return false;
  }

  // The character at `at`, for "found ...".
  std::string found(size_t at) const {
    if (at >= d_.size()) return "the end of the document";
    const unsigned char c = static_cast<unsigned char>(d_[at]);
    if (c >= 0x20 && c < 0x7f) return fmt::format("'{}'", static_cast<char>(c));
    if (size_t n = utf8_sequence(d_.substr(at)); n > 1) return fmt::format("'{}'", d_.substr(at, n));
    return fmt::format("byte 0x{:02x}", c);
  }

  bool unexpected(size_t at, std::string_view expected) {
    if (at + 1 < d_.size() && d_[at] == '/' && (d_[at + 1] == '/' || d_[at + 1] == '*'))
      return fail(at, "a comment: JSON has none; remove it");
    if (at >= d_.size()) return fail(at, fmt::format("the document ends where {} is expected", expected));
    return fail(at, fmt::format("expected {}, found {}", expected, found(at)));
  }

  void skip_ws() {
    while (i_ < d_.size() && (d_[i_] == ' ' || d_[i_] == '\t' || d_[i_] == '\n' || d_[i_] == '\r')) ++i_;
  }

  bool value(size_t depth) {
    skip_ws();
    if (i_ >= d_.size()) return unexpected(i_, "a value");
    const char c = d_[i_];
    if (c == '{' || c == '[') {
      if (depth >= kMaxDepth) return fail(i_, fmt::format("objects and arrays nested deeper than {}", kMaxDepth));
      return c == '{' ? object(depth + 1) : array(depth + 1);
    }
    if (c == '"') return string(nullptr);
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    for (std::string_view lit : {"true", "false", "null"})
      if (d_.substr(i_, lit.size()) == lit) {
        i_ += lit.size();
        return true;
      }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      size_t e = i_;
      while (e < d_.size() && ((d_[e] >= 'a' && d_[e] <= 'z') || (d_[e] >= 'A' && d_[e] <= 'Z'))) ++e;
      return fail(i_, fmt::format("expected a value (a string in double quotes, a number, true, false, null, an "
                                  "object or an array), found '{}'",
                                  d_.substr(i_, std::min<size_t>(e - i_, 20))));
    }
    return unexpected(i_, "a value");
  }

  bool object(size_t depth) {
    ++i_;  // '{'
    skip_ws();
    if (i_ < d_.size() && d_[i_] == '}') return ++i_, true;
    for (;;) {
      skip_ws();
      if (i_ >= d_.size() || d_[i_] != '"') return unexpected(i_, "a key (a string in double quotes)");
      std::string key;
      if (!string(&key)) return false;
      skip_ws();
      if (i_ >= d_.size() || d_[i_] != ':') return unexpected(i_, fmt::format("':' after the key \"{}\"", key));
      ++i_;
      path_.push_back(std::move(key));
      if (!value(depth)) return false;
      path_.pop_back();
      skip_ws();
      if (i_ < d_.size() && d_[i_] == ',') {
        const size_t comma = i_++;
        skip_ws();
        if (i_ < d_.size() && d_[i_] == '}') return fail(comma, "a trailing comma: JSON has none before '}'");
        continue;
      }
      if (i_ < d_.size() && d_[i_] == '}') return ++i_, true;
      return unexpected(i_, "',' or '}' after a value");
    }
  }

  bool array(size_t depth) {
    ++i_;  // '['
    skip_ws();
    if (i_ < d_.size() && d_[i_] == ']') return ++i_, true;
    for (size_t n = 0;; ++n) {
      path_.push_back(fmt::format("[{}]", n));
      if (!value(depth)) return false;
      path_.pop_back();
      skip_ws();
      if (i_ < d_.size() && d_[i_] == ',') {
        const size_t comma = i_++;
        skip_ws();
        if (i_ < d_.size() && d_[i_] == ']') return fail(comma, "a trailing comma: JSON has none before ']'");
        continue;
      }
      if (i_ < d_.size() && d_[i_] == ']') return ++i_, true;
      return unexpected(i_, "',' or ']' after a value");
    }
  }

  // The 4 hex digits of a \u escape at `at` (the backslash), or -1.
  long hex4(size_t at) const {
    if (at + 6 > d_.size() || d_[at + 1] != 'u') return -1;
    long v = 0;
    for (size_t k = at + 2; k < at + 6; ++k) {
      const char h = d_[k];
      const int x = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
      if (x < 0) return -1;
      v = v * 16 + x;
    }
    return v;
  }

  // A string; `out` (keys, for the path) gets its bytes as written.
  bool string(std::string* out) {
    const size_t open = i_++;
    for (;;) {
      if (i_ >= d_.size()) return fail(open, "a string that is not closed (its '\"' is missing)");
      const unsigned char c = static_cast<unsigned char>(d_[i_]);
      if (c == '"') {
        if (out) *out = d_.substr(open + 1, i_ - open - 1);
        ++i_;
        return true;
      }
      if (c == '\\') {
        if (i_ + 1 >= d_.size()) return fail(open, "a string that is not closed (its '\"' is missing)");
        const char e = d_[i_ + 1];
        if (e == 'u') {
          const long u = hex4(i_);
          if (u < 0) return fail(i_, "a \\u escape without 4 hex digits");
          if (u >= 0xdc00 && u <= 0xdfff)
            return fail(i_, fmt::format("a \\u{:04x} escape: a lone UTF-16 surrogate", u));
          if (u >= 0xd800 && u <= 0xdbff) {
            const long low = hex4(i_ + 6);
            if (i_ + 6 >= d_.size() || d_[i_ + 6] != '\\' || low < 0xdc00 || low > 0xdfff)
              return fail(i_, fmt::format("a \\u{:04x} escape: a lone UTF-16 surrogate", u));
            i_ += 6;
          }
          i_ += 6;
          continue;
        }
        if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos)
          return fail(i_, fmt::format("an invalid escape \\{} in a string", found(i_ + 1)));
        i_ += 2;
        continue;
      }
      if (c < 0x20)
        return fail(i_, fmt::format("a control character (byte 0x{:02x}) in a string: write it escaped (\\n, \\t, "
                                    "\\u00XX)",
                                    c));
      if (c >= 0x80) {
        const size_t n = utf8_sequence(d_.substr(i_));
        if (n == 0) return fail(i_, fmt::format("invalid UTF-8 in a string (byte 0x{:02x})", c));
        i_ += n;
        continue;
      }
      ++i_;
    }
  }

  bool number() {
    const size_t start = i_;
    auto digit = [&](size_t k) { return k < d_.size() && d_[k] >= '0' && d_[k] <= '9'; };
    auto bad = [&](std::string_view why) {
      return fail(start,
                  fmt::format("an invalid number {}: {}", d_.substr(start, std::min<size_t>(i_ - start, 40)), why));
    };
    const bool negative = d_[i_] == '-';
    if (negative) ++i_;
    if (!digit(i_)) return bad("a digit must follow '-'");
    if (d_[i_] == '0' && digit(i_ + 1)) return i_ += 2, bad("no leading zeros");
    while (digit(i_)) ++i_;
    bool integer = true;
    if (i_ < d_.size() && d_[i_] == '.') {
      integer = false;
      if (!digit(++i_)) return bad("a digit must follow '.'");
      while (digit(i_)) ++i_;
    }
    if (i_ < d_.size() && (d_[i_] == 'e' || d_[i_] == 'E')) {
      integer = false;
      ++i_;
      if (i_ < d_.size() && (d_[i_] == '+' || d_[i_] == '-')) ++i_;
      if (!digit(i_)) return bad("a digit must follow the exponent's 'e'");
      while (digit(i_)) ++i_;
    }
    const std::string_view text = d_.substr(start, i_ - start);
    const std::string shown = text.size() > 40 ? std::string(text.substr(0, 40)) + "..." : std::string(text);
    if (integer) {
      // simdjson keeps an integer as int64 or uint64: anything beyond is refused.
      const std::string_view digits = negative ? text.substr(1) : text;
      const std::string_view limit = negative ? "9223372036854775808" : "18446744073709551615";
      if (digits.size() > limit.size() || (digits.size() == limit.size() && digits > limit))
        return fail(start, fmt::format("the number {} is out of range (an integer must be -9223372036854775808.."
                                       "18446744073709551615)",
                                       shown));
    } else if (std::isinf(std::strtod(std::string(text).c_str(), nullptr))) {
      return fail(start, fmt::format("the number {} is out of range (beyond a double's 1.8e308)", shown));
    }
    return true;
  }

  std::string_view d_;
  size_t i_ = 0;
  std::vector<std::string> path_;  // "key" or "[n]" per level
  JsonError err_;
};

}  // namespace

JsonError locate_json_error(std::string_view doc) {
  return Scanner(doc).run();
}

std::string json_error_text(const JsonError& e, std::string_view fallback) {
  if (!e.found) return fmt::format("invalid JSON: {}", fallback);
  return fmt::format("invalid JSON at line {}, column {}: {}", e.line, e.column, e.what);
}

}  // namespace gw::core
