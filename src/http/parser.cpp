#include "gw/http/parser.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>

namespace gw::http {

namespace {

// Character classes (RFC 9110 5.6.2 tchar, 5.5 field-vchar, RFC 3986 host).
enum : uint8_t {
  kTchar = 1,
  kValue = 2,   // field value / reason phrase: VCHAR, obs-text, SP, HTAB
  kTarget = 4,  // request-target: VCHAR except '#', obs-text
  kHex = 8,
  kDigit = 16,
  kHostChar = 32,  // unreserved / sub-delims
  kQdtext = 64,    // quoted-string text
  kVchar = 128,    // VCHAR, obs-text (the second octet of a quoted-pair)
};

constexpr bool in_set(const char* s, int c) {
  for (; *s; ++s)
    if (*s == c) return true;
  return false;
}

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    const bool digit = c >= '0' && c <= '9';
    const bool vchar = c >= 0x21 && c <= 0x7e;
    const bool obs_text = c >= 0x80;
    uint8_t v = 0;
    if (alpha || digit || in_set("!#$%&'*+-.^_`|~", c)) v |= kTchar;
    if (vchar || obs_text || c == ' ' || c == '\t') v |= kValue;
    // A fragment is the client's own (RFC 9110 4.2.5): never part of a
    // request-target (RFC 9112 3.2). A '#' is refused, as HAProxy does, rather
    // than forwarded to a host that may read the path differently.
    if ((vchar || obs_text) && c != '#') v |= kTarget;
    if (vchar || obs_text) v |= kVchar;
    if (digit || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) v |= kHex;
    if (digit) v |= kDigit;
    if (alpha || digit || in_set("-._~!$&'()*+,;=", c)) v |= kHostChar;
    if (c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e) || obs_text)
      v |= kQdtext;
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}

constexpr std::array<uint8_t, 256> kClass = make_classes();

inline bool is(char c, uint8_t cls) noexcept {
  return (kClass[static_cast<unsigned char>(c)] & cls) != 0;
}
inline bool ows(char c) noexcept {
  return c == ' ' || c == '\t';
}
inline char lower(char c) noexcept {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c;
}

inline unsigned hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return static_cast<unsigned>(c - '0');
  return static_cast<unsigned>(lower(c) - 'a' + 10);
}

// "HTTP/" DIGIT "." DIGIT, byte i of it (case-sensitive: RFC 9112 2.3).
inline bool version_byte(size_t i, char c) noexcept {
  static constexpr char kName[] = "HTTP/";
  if (i < 5) return c == kName[i];
  if (i == 6) return c == '.';
  return is(c, kDigit);  // i == 5 or 7
}

size_t skip_ows(std::string_view v, size_t i) noexcept {
  while (i < v.size() && ows(v[i])) ++i;
  return i;
}

size_t skip_token(std::string_view v, size_t i) noexcept {
  while (i < v.size() && is(v[i], kTchar)) ++i;
  return i;
}

// v[i] == '"'. The index after the closing quote, or npos.
size_t skip_quoted(std::string_view v, size_t i) noexcept {
  for (++i; i < v.size(); ++i) {
    const char c = v[i];
    if (c == '"') return i + 1;
    if (c == '\\') {
      if (++i == v.size()) return std::string_view::npos;
      const char e = v[i];
      if (!(ows(e) || is(e, kVchar))) return std::string_view::npos;
    } else if (!is(c, kQdtext)) {
      return std::string_view::npos;
    }
  }
  return std::string_view::npos;
}

// uri-host [":" port] (RFC 9110 7.2, RFC 3986 3.2.2), or empty. authority_form:
// a CONNECT target, which needs a non-empty host and a port.
bool valid_host(std::string_view v, bool authority_form) noexcept {
  const size_t n = v.size();
  if (n == 0) return !authority_form;
  size_t i = 0;
  if (v[0] == '[') {  // IP-literal: IPv6address or IPvFuture
    const size_t close = v.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    for (i = 1; i < close; ++i)
      if (!(is(v[i], kHostChar) || v[i] == ':')) return false;
    i = close + 1;
  } else {  // IPv4address or reg-name
    while (i < n && v[i] != ':') {
      if (v[i] == '%') {
        if (i + 2 >= n || !is(v[i + 1], kHex) || !is(v[i + 2], kHex)) return false;
        i += 3;
        continue;
      }
      if (!is(v[i], kHostChar)) return false;
      ++i;
    }
    // ":80": a port with no host. An empty value (no authority) is fine, an
    // empty host is not (RFC 9110 4.2.1; nginx refuses it too).
    if (i == 0) return false;
  }
  if (i == n) return !authority_form;
  if (v[i] != ':') return false;
  if (authority_form && i + 1 == n) return false;
  for (++i; i < n; ++i)
    if (!is(v[i], kDigit)) return false;
  return true;
}

// absolute-URI: scheme ":" ...; scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
bool has_scheme(std::string_view t) noexcept {
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (t.empty() || !alpha(t[0])) return false;
  for (size_t i = 1; i < t.size(); ++i) {
    const char c = t[i];
    if (c == ':') return true;
    if (!(alpha(c) || is(c, kDigit) || c == '+' || c == '-' || c == '.')) return false;
  }
  return false;
}

Method method_of(std::string_view m) noexcept {
  switch (m.size()) {
    case 3:
      if (m == "GET") return Method::get;
      if (m == "PUT") return Method::put;
      break;
    case 4:
      if (m == "HEAD") return Method::head;
      if (m == "POST") return Method::post;
      break;
    case 5:
      if (m == "TRACE") return Method::trace;
      if (m == "PATCH") return Method::patch;
      break;
    case 6:
      if (m == "DELETE") return Method::delete_;
      break;
    case 7:
      if (m == "CONNECT") return Method::connect;
      if (m == "OPTIONS") return Method::options;
      break;
    default: break;
  }
  return Method::other;
}

FieldId field_id(std::string_view n) noexcept {
  switch (n.size()) {
    case 2:
      if (iequals(n, "te")) return FieldId::te;
      break;
    case 4:
      if (iequals(n, "host")) return FieldId::host;
      break;
    case 6:
      if (iequals(n, "expect")) return FieldId::expect;
      break;
    case 7:
      if (iequals(n, "upgrade")) return FieldId::upgrade;
      if (iequals(n, "trailer")) return FieldId::trailer;
      break;
    case 10:
      if (iequals(n, "connection")) return FieldId::connection;
      if (iequals(n, "keep-alive")) return FieldId::keep_alive;
      break;
    case 14:
      if (iequals(n, "content-length")) return FieldId::content_length;
      break;
    case 16:
      if (iequals(n, "proxy-connection")) return FieldId::proxy_connection;
      break;
    case 17:
      if (iequals(n, "transfer-encoding")) return FieldId::transfer_encoding;
      break;
    default: break;
  }
  return FieldId::other;
}

// Transfer codings other than chunked that the proxy passes through (the
// IANA registry, minus the reserved "identity" and "trailers").
bool known_coding(std::string_view c) noexcept {
  return iequals(c, "gzip") || iequals(c, "x-gzip") || iequals(c, "deflate") || iequals(c, "compress") ||
         iequals(c, "x-compress");
}

// Upgrade = #protocol; protocol = protocol-name ["/" protocol-version]
bool lists_websocket(std::string_view v) noexcept {
  size_t i = 0;
  while (i < v.size()) {
    if (v[i] == ',' || ows(v[i])) {
      ++i;
      continue;
    }
    const size_t s = i;
    i = skip_token(v, i);
    if (iequals(v.substr(s, i - s), "websocket")) return true;
    while (i < v.size() && v[i] != ',') ++i;
  }
  return false;
}

}  // namespace

const char* error_name(Error e) noexcept {
  switch (e) {
    case Error::none: return "none";
    case Error::bad_request_line: return "bad_request_line";
    case Error::bad_method: return "bad_method";
    case Error::bad_target: return "bad_target";
    case Error::bad_version: return "bad_version";
    case Error::version_not_supported: return "version_not_supported";
    case Error::bad_status_line: return "bad_status_line";
    case Error::start_line_too_long: return "start_line_too_long";
    case Error::bare_lf: return "bare_lf";
    case Error::bare_cr: return "bare_cr";
    case Error::bad_field_name: return "bad_field_name";
    case Error::space_before_colon: return "space_before_colon";
    case Error::obs_fold: return "obs_fold";
    case Error::bad_field_value: return "bad_field_value";
    case Error::head_too_large: return "head_too_large";
    case Error::too_many_fields: return "too_many_fields";
    case Error::missing_host: return "missing_host";
    case Error::duplicate_host: return "duplicate_host";
    case Error::bad_host: return "bad_host";
    case Error::bad_content_length: return "bad_content_length";
    case Error::conflicting_content_length: return "conflicting_content_length";
    case Error::te_and_cl: return "te_and_cl";
    case Error::te_in_http10: return "te_in_http10";
    case Error::bad_transfer_encoding: return "bad_transfer_encoding";
    case Error::unknown_transfer_coding: return "unknown_transfer_coding";
    case Error::bad_connection: return "bad_connection";
    case Error::too_many_connection_options: return "too_many_connection_options";
    case Error::bad_chunk_size: return "bad_chunk_size";
    case Error::bad_chunk_extension: return "bad_chunk_extension";
    case Error::chunk_line_too_long: return "chunk_line_too_long";
    case Error::bad_chunk_end: return "bad_chunk_end";
    case Error::trailer_too_large: return "trailer_too_large";
    case Error::body_truncated: return "body_truncated";
    case Error::count: break;
  }
  return "unknown";
}

int error_status(Error e) noexcept {
  switch (e) {
    case Error::none: return 0;
    case Error::start_line_too_long: return 414;
    case Error::head_too_large:
    case Error::too_many_fields:
    case Error::trailer_too_large: return 431;
    case Error::unknown_transfer_coding: return 501;
    case Error::version_not_supported: return 505;
    default: return 400;
  }
}

const char* method_name(Method m) noexcept {
  switch (m) {
    case Method::other: return "other";
    case Method::get: return "GET";
    case Method::head: return "HEAD";
    case Method::post: return "POST";
    case Method::put: return "PUT";
    case Method::delete_: return "DELETE";
    case Method::connect: return "CONNECT";
    case Method::options: return "OPTIONS";
    case Method::trace: return "TRACE";
    case Method::patch: return "PATCH";
  }
  return "other";
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

const Field* find_field(const Head& head, std::string_view name) noexcept {
  for (const Field& f : head.fields)
    if (iequals(f.name, name)) return &f;
  return nullptr;
}

// ---------------------------------------------------------------------------
// Parser

Parser::Parser(Kind kind, std::span<Field> fields, const Limits& limits) noexcept
    : kind_(kind), storage_(fields), limits_(limits) {
  restart();
}

void Parser::reset(Method request_method) noexcept {
  request_method_ = request_method;
  restart();
}

void Parser::restart() noexcept {
  state_ = State::start;
  error_ = Error::none;
  line_read_ = false;
  base_ = nullptr;
  pos_ = line_start_ = tok_start_ = name_end_ = value_start_ = value_end_ = count_ = 0;
  cl_seen_ = te_seen_ = te_chunked_ = te_chunked_last_ = te_unknown_ = false;
  conn_close_ = conn_keep_alive_ = conn_upgrade_ = upgrade_seen_ = websocket_listed_ = false;
  expect_continue_seen_ = false;
  head_ = Head{};
}

ParseStatus Parser::parse(std::string_view buf) noexcept {
  if (state_ == State::error) return ParseStatus::error;
  if (buf.data() != base_ || buf.size() < pos_) {
    // The bytes moved (or the caller went back): the views are stale, so
    // parse again from the first byte. Same bytes, same result.
    if (pos_ != 0) restart();
    base_ = buf.data();
  }
  if (state_ == State::done) return ParseStatus::done;
  // Bytes at or past max_head are never looked at: the head must end before.
  const size_t len = std::min<size_t>(buf.size(), limits_.max_head);
  Error e = run(buf.data(), len);
  if (e == Error::none && state_ != State::done && buf.size() > limits_.max_head) {
    // A start line that has not ended within max_head (a max_head below
    // max_start_line) is a line too long, as nginx answers a request line
    // that does not fit its buffers (414); anything else, empty lines before
    // the start line included, is a head too large.
    const bool in_line = state_ == State::method || state_ == State::target || state_ == State::version ||
                         state_ == State::rversion || state_ == State::status || state_ == State::reason;
    e = in_line ? Error::start_line_too_long : Error::head_too_large;
  }
  if (e != Error::none) {
    error_ = e;
    state_ = State::error;
    return ParseStatus::error;
  }
  return state_ == State::done ? ParseStatus::done : ParseStatus::need_more;
}

ParseStatus Parser::check_request_line(std::string_view buf, LineCheck& lc) noexcept {
  if (lc.done) return ParseStatus::need_more;
  restart();
  state_ = static_cast<State>(lc.state);
  pos_ = lc.pos;
  line_start_ = lc.line_start;
  tok_start_ = lc.tok_start;
  head_.method = lc.method;  // the target's form depends on it
  base_ = buf.data();
  const char* const data = buf.data();
  const size_t end = std::min<size_t>(buf.size(), limits_.max_head);
  // One line at a time (empty lines may come first, RFC 9112 2.2), up to the
  // request line's LF: the field lines are parse()'s, once the head is whole.
  while (pos_ < end && state_ != State::field_start) {
    const void* lf = std::memchr(data + pos_, '\n', end - pos_);
    const size_t stop = lf ? static_cast<size_t>(static_cast<const char*>(lf) - data) + 1 : end;
    if (const Error e = run(data, stop); e != Error::none) {
      error_ = e;
      state_ = State::error;
      return ParseStatus::error;
    }
  }
  lc.pos = static_cast<uint32_t>(pos_);
  lc.line_start = static_cast<uint32_t>(line_start_);
  lc.tok_start = static_cast<uint32_t>(tok_start_);
  lc.state = static_cast<uint8_t>(state_);
  lc.method = head_.method;
  lc.done = state_ == State::field_start;
  return ParseStatus::need_more;
}

// Resumes at pos_ and runs to `len` bytes, the end of the head, or an error.
// Each decision is made at one byte from the bytes up to it, so any split of
// the input gives the same outcome.
Error Parser::run(const char* data, size_t len) noexcept {
  const char* p = data + pos_;
  const char* const end = data + len;
  const size_t max_line = limits_.max_start_line;
  auto off = [&](const char* q) { return static_cast<size_t>(q - data); };
  auto view = [&](size_t from, size_t to) { return std::string_view(data + from, to - from); };
  auto fail = [&](Error e) {
    pos_ = off(p);
    return e;
  };
  // The end of the scan for a start-line part: the buffer's, or the byte at
  // max_start_line, which may only be the line's CR.
  auto line_stop = [&]() { return std::min(end, data + line_start_ + max_line); };

  while (p < end) {
    switch (state_) {
      case State::start: {
        const char c = *p;
        if (c == '\r') {  // an empty line before the start line (RFC 9112 2.2)
          state_ = State::start_lf;
          ++p;
          break;
        }
        if (c == '\n') return fail(Error::bare_lf);
        line_start_ = tok_start_ = off(p);
        state_ = kind_ == Kind::request ? State::method : State::rversion;
        break;
      }

      case State::start_lf:
        if (*p != '\n') return fail(Error::bare_cr);
        ++p;
        state_ = State::start;
        break;

      case State::method: {
        const char* const stop = line_stop();
        while (p < stop && is(*p, kTchar)) ++p;
        if (p == stop) {
          if (stop == end) break;
          return fail(Error::start_line_too_long);
        }
        const char c = *p;
        if (c != ' ') return fail(c == '\n' ? Error::bare_lf : c == '\r' ? Error::bad_request_line : Error::bad_method);
        if (off(p) == tok_start_) return fail(Error::bad_request_line);
        head_.method_name = view(tok_start_, off(p));
        head_.method = method_of(head_.method_name);
        ++p;
        tok_start_ = off(p);
        state_ = State::target;
        break;
      }

      case State::target: {
        const char* const stop = line_stop();
        while (p < stop && is(*p, kTarget)) ++p;
        if (p == stop) {
          if (stop == end) break;
          return fail(Error::start_line_too_long);
        }
        const char c = *p;
        if (c != ' ') return fail(c == '\n' ? Error::bare_lf : c == '\r' ? Error::bad_request_line : Error::bad_target);
        if (off(p) == tok_start_) return fail(Error::bad_request_line);
        head_.target = view(tok_start_, off(p));
        if (const Error e = on_target(); e != Error::none) return fail(e);
        ++p;
        tok_start_ = off(p);
        state_ = State::version;
        break;
      }

      case State::version: {
        const size_t i = off(p) - tok_start_;
        const char c = *p;
        if (i == 8 && c == '\r') {
          if (data[tok_start_ + 5] != '1') return fail(Error::version_not_supported);
          head_.version = data[tok_start_ + 7] == '0' ? Version::http10 : Version::http11;
          ++p;
          state_ = State::line_lf;
          break;
        }
        if (off(p) - line_start_ >= max_line) return fail(Error::start_line_too_long);
        if (i >= 8 || !version_byte(i, c)) return fail(c == '\n' ? Error::bare_lf : Error::bad_version);
        ++p;
        break;
      }

      case State::line_lf:
        if (*p != '\n') return fail(Error::bare_cr);
        ++p;
        line_start_ = off(p);
        state_ = State::field_start;
        line_read_ = true;
        break;

      case State::rversion: {
        const size_t i = off(p) - tok_start_;
        const char c = *p;
        if (off(p) - line_start_ >= max_line) return fail(Error::start_line_too_long);
        if (i == 8) {
          if (c != ' ') return fail(c == '\n' ? Error::bare_lf : Error::bad_status_line);
          if (data[tok_start_ + 5] != '1') return fail(Error::version_not_supported);
          head_.version = data[tok_start_ + 7] == '0' ? Version::http10 : Version::http11;
          ++p;
          tok_start_ = off(p);
          state_ = State::status;
          break;
        }
        if (!version_byte(i, c)) return fail(c == '\n' ? Error::bare_lf : Error::bad_version);
        ++p;
        break;
      }

      case State::status: {
        const size_t i = off(p) - tok_start_;
        const char c = *p;
        if (off(p) - line_start_ >= max_line && c != '\r') return fail(Error::start_line_too_long);
        if (i < 3) {
          if (!is(c, kDigit)) return fail(c == '\n' ? Error::bare_lf : Error::bad_status_line);
          ++p;
          break;
        }
        const char* s = data + tok_start_;
        head_.status = static_cast<uint16_t>((s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0'));
        if (head_.status < 100 || head_.status > 599) return fail(Error::bad_status_line);
        if (c == ' ') {
          ++p;
          tok_start_ = off(p);
          state_ = State::reason;
          break;
        }
        if (c == '\r') {  // lenient: "HTTP/1.1 200" without the SP before an empty reason
          ++p;
          state_ = State::line_lf;
          break;
        }
        return fail(c == '\n' ? Error::bare_lf : Error::bad_status_line);
      }

      case State::reason: {
        const char* const stop = line_stop();
        while (p < stop && is(*p, kValue)) ++p;
        if (p == stop) {
          if (stop == end) break;
          if (*p != '\r') return fail(Error::start_line_too_long);
        }
        const char c = *p;
        if (c != '\r') return fail(c == '\n' ? Error::bare_lf : Error::bad_status_line);
        head_.reason = view(tok_start_, off(p));
        ++p;
        state_ = State::line_lf;
        break;
      }

      case State::field_start: {
        const char c = *p;
        if (c == '\r') {
          ++p;
          state_ = State::end_lf;
          break;
        }
        if (c == '\n') return fail(Error::bare_lf);
        // obs-fold, or whitespace between the start line and the first field
        // (RFC 9112 2.2, 5.2): both rejected.
        if (ows(c)) return fail(Error::obs_fold);
        if (!is(c, kTchar)) return fail(Error::bad_field_name);
        if (count_ == storage_.size()) return fail(Error::too_many_fields);
        tok_start_ = off(p);
        ++p;
        state_ = State::field_name;
        break;
      }

      case State::field_name: {
        while (p < end && is(*p, kTchar)) ++p;
        if (p == end) break;
        const char c = *p;
        if (c == ':') {
          name_end_ = off(p);
          ++p;
          state_ = State::field_ows;
          break;
        }
        if (ows(c)) return fail(Error::space_before_colon);
        return fail(c == '\n' ? Error::bare_lf : Error::bad_field_name);
      }

      case State::field_ows: {
        while (p < end && ows(*p)) ++p;
        if (p == end) break;
        const char c = *p;
        value_start_ = off(p);
        if (c == '\r') {
          value_end_ = value_start_;
          ++p;
          state_ = State::field_lf;
          break;
        }
        if (!is(c, kValue)) return fail(c == '\n' ? Error::bare_lf : Error::bad_field_value);
        state_ = State::field_value;
        break;
      }

      case State::field_value: {
        while (p < end && is(*p, kValue)) ++p;
        if (p == end) break;
        const char c = *p;
        if (c != '\r') return fail(c == '\n' ? Error::bare_lf : Error::bad_field_value);
        size_t e = off(p);
        while (e > value_start_ && ows(data[e - 1])) --e;
        value_end_ = e;
        ++p;
        state_ = State::field_lf;
        break;
      }

      case State::field_lf: {
        if (*p != '\n') return fail(Error::bare_cr);
        Field& f = storage_[count_];
        f = Field{view(tok_start_, name_end_), view(value_start_, value_end_), FieldId::other, false};
        if (const Error e = on_field(f); e != Error::none) return fail(e);
        ++count_;
        head_.fields = std::span<const Field>(storage_.data(), count_);
        ++p;
        line_start_ = off(p);
        state_ = State::field_start;
        break;
      }

      case State::end_lf: {
        if (*p != '\n') return fail(Error::bare_cr);
        head_.head_len = static_cast<uint32_t>(off(p) + 1);
        if (const Error e = finish(); e != Error::none) return fail(e);
        ++p;
        pos_ = off(p);
        state_ = State::done;
        return Error::none;
      }

      case State::done:
      case State::error: pos_ = off(p); return Error::none;  // not reached: parse() returns first
    }
  }
  pos_ = off(p);
  return Error::none;
}

// At the SP after the target: the form must fit the method (RFC 9112 3.2).
Error Parser::on_target() noexcept {
  const std::string_view t = head_.target;
  if (head_.method == Method::connect) {
    if (!valid_host(t, true)) return Error::bad_target;
    head_.target_form = TargetForm::authority;
  } else if (t == "*") {
    if (head_.method != Method::options) return Error::bad_target;
    head_.target_form = TargetForm::asterisk;
  } else if (t[0] == '/') {
    head_.target_form = TargetForm::origin;
  } else if (has_scheme(t)) {
    // scheme "://" authority [path] ["?" query]. The authority replaces Host
    // and routes the request, so it is held to Host's grammar, and it must
    // name a host: an empty one is invalid (RFC 9110 4.2.1) and so is
    // userinfo (4.2.4; '@' is not a host character).
    const size_t colon = t.find(':');
    if (t.substr(colon, 3) != "://") return Error::bad_target;
    const size_t from = colon + 3;
    const std::string_view a = t.substr(from, t.find_first_of("/?", from) - from);
    if (a.empty() || a[0] == ':' || !valid_host(a, false)) return Error::bad_target;
    head_.authority = a;
    head_.target_form = TargetForm::absolute;
  } else {
    return Error::bad_target;
  }
  return Error::none;
}

// At the LF of a field line.
Error Parser::on_field(Field& f) noexcept {
  f.id = field_id(f.name);
  switch (f.id) {
    case FieldId::host:
      if (kind_ != Kind::request) break;
      if (head_.has_host) return Error::duplicate_host;
      if (!valid_host(f.value, false)) return Error::bad_host;
      head_.has_host = true;
      head_.host = f.value;
      break;
    case FieldId::content_length: return on_content_length(f.value);
    case FieldId::transfer_encoding:
      // RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
      if (head_.version == Version::http10) return Error::te_in_http10;
      return on_transfer_encoding(f.value);
    case FieldId::connection: return on_connection(f.value);
    case FieldId::upgrade:
      if (!upgrade_seen_) head_.upgrade_protocols = f.value;
      upgrade_seen_ = true;
      if (lists_websocket(f.value)) websocket_listed_ = true;
      break;
    case FieldId::expect:
      if (iequals(f.value, "100-continue")) expect_continue_seen_ = true;
      else if (!f.value.empty()) head_.expect_other = true;
      break;
    default: break;
  }
  return Error::none;
}

// Content-Length = 1*DIGIT. Identical values, as a list or on several lines,
// are accepted as one (RFC 9110 8.6); differing values are not.
Error Parser::on_content_length(std::string_view v) noexcept {
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  size_t i = 0;
  for (;;) {
    if (i == v.size() || !is(v[i], kDigit)) return Error::bad_content_length;
    uint64_t x = 0;
    for (; i < v.size() && is(v[i], kDigit); ++i) {
      const auto d = static_cast<uint64_t>(v[i] - '0');
      if (x > (kMax - d) / 10) return Error::bad_content_length;
      x = x * 10 + d;
    }
    if (cl_seen_) {
      if (x != head_.content_length) return Error::conflicting_content_length;
      head_.content_length_merged = true;
    }
    cl_seen_ = true;
    head_.content_length = x;
    i = skip_ows(v, i);
    if (i == v.size()) return Error::none;
    if (v[i] != ',') return Error::bad_content_length;
    i = skip_ows(v, i + 1);
  }
}

// Transfer-Encoding = #transfer-coding;
// transfer-coding = token *( OWS ";" OWS token BWS "=" BWS ( token / quoted-string ) )
// Empty list elements are skipped (RFC 9110 5.6.1). Field lines add up in order.
Error Parser::on_transfer_encoding(std::string_view v) noexcept {
  te_seen_ = true;
  bool any = false;
  size_t i = 0;
  while (i < v.size()) {
    if (v[i] == ',' || ows(v[i])) {
      ++i;
      continue;
    }
    const size_t s = i;
    i = skip_token(v, i);
    if (i == s) return Error::bad_transfer_encoding;
    const std::string_view name = v.substr(s, i - s);
    bool params = false;
    for (;;) {
      size_t j = skip_ows(v, i);
      if (j == v.size() || v[j] != ';') {
        i = j;
        break;
      }
      params = true;
      j = skip_ows(v, j + 1);
      const size_t ps = j;
      j = skip_token(v, j);
      if (j == ps) return Error::bad_transfer_encoding;
      j = skip_ows(v, j);
      if (j == v.size() || v[j] != '=') return Error::bad_transfer_encoding;
      j = skip_ows(v, j + 1);
      if (j < v.size() && v[j] == '"') {
        j = skip_quoted(v, j);
        if (j == std::string_view::npos) return Error::bad_transfer_encoding;
      } else {
        const size_t vs = j;
        j = skip_token(v, j);
        if (j == vs) return Error::bad_transfer_encoding;
      }
      i = j;
    }
    if (i < v.size() && v[i] != ',') return Error::bad_transfer_encoding;
    any = true;
    if (iequals(name, "chunked")) {
      // chunked has no parameters and is applied at most once (RFC 9112 7).
      if (params || te_chunked_) return Error::bad_transfer_encoding;
      te_chunked_ = te_chunked_last_ = true;
    } else {
      te_chunked_last_ = false;
      if (!known_coding(name)) te_unknown_ = true;
    }
  }
  return any ? Error::none : Error::bad_transfer_encoding;
}

// Connection = #connection-option; connection-option = token
Error Parser::on_connection(std::string_view v) noexcept {
  size_t i = 0;
  while (i < v.size()) {
    if (v[i] == ',' || ows(v[i])) {
      ++i;
      continue;
    }
    const size_t s = i;
    i = skip_token(v, i);
    if (i == s) return Error::bad_connection;
    const std::string_view tok = v.substr(s, i - s);
    i = skip_ows(v, i);
    if (i < v.size() && v[i] != ',') return Error::bad_connection;
    if (head_.connection_option_count == kMaxConnectionOptions) return Error::too_many_connection_options;
    head_.connection_option_list[head_.connection_option_count++] = tok;
    if (iequals(tok, "close")) conn_close_ = true;
    else if (iequals(tok, "keep-alive")) conn_keep_alive_ = true;
    else if (iequals(tok, "upgrade")) conn_upgrade_ = true;
  }
  return Error::none;
}

// At the LF of the empty line: framing, persistence, hop-by-hop fields.
Error Parser::finish() noexcept {
  Head& h = head_;
  const bool v11 = h.version == Version::http11;
  if (te_seen_ && cl_seen_) return Error::te_and_cl;
  if (kind_ == Kind::request) {
    // RFC 9112 6.3: chunked last, or the length cannot be known (400).
    if (te_seen_) {
      if (!te_chunked_last_) return Error::bad_transfer_encoding;
      if (te_unknown_) return Error::unknown_transfer_coding;
      h.body = BodyKind::chunked;
    } else {
      h.body = cl_seen_ ? BodyKind::length : BodyKind::none;
    }
    if (v11 && !h.has_host) return Error::missing_host;
    // An Upgrade in HTTP/1.0 is ignored (RFC 9110 7.8), and so is 100-continue (10.1.1).
    h.upgrade = v11 && conn_upgrade_ && upgrade_seen_;
    h.websocket = h.upgrade && websocket_listed_;
    h.expect_continue = v11 && expect_continue_seen_;
    h.keep_alive = !conn_close_ && (v11 || conn_keep_alive_);
  } else {
    // RFC 9112 6.3. Any 2xx to CONNECT is a tunnel (RFC 9110 9.3.6), 204
    // included: rule 1 (no body) and rule 2 (tunnel) both apply to it, so
    // CONNECT is decided first.
    const uint16_t s = h.status;
    if (request_method_ == Method::connect && s >= 200 && s < 300) {
      h.body = BodyKind::none;
      h.tunnel = true;
    } else if (request_method_ == Method::head || s < 200 || s == 204 || s == 304) {
      h.body = BodyKind::none;
    } else if (te_seen_) {
      h.body = te_chunked_last_ ? BodyKind::chunked : BodyKind::until_close;
    } else {
      h.body = cl_seen_ ? BodyKind::length : BodyKind::until_close;
    }
    if (s == 101) {
      h.upgrade = h.tunnel = true;
      h.websocket = websocket_listed_;
    }
    h.keep_alive = !conn_close_ && (v11 || conn_keep_alive_) && h.body != BodyKind::until_close;
  }
  for (size_t k = 0; k < count_; ++k) {
    Field& f = storage_[k];
    switch (f.id) {
      case FieldId::connection:
      case FieldId::keep_alive:
      case FieldId::proxy_connection:
      case FieldId::te:
      case FieldId::transfer_encoding:
      case FieldId::upgrade: f.hop_by_hop = true; break;
      case FieldId::host:
      case FieldId::content_length: break;
      default:
        for (const std::string_view o : h.connection_options())
          if (iequals(f.name, o)) {
            f.hop_by_hop = true;
            break;
          }
    }
  }
  return Error::none;
}

// ---------------------------------------------------------------------------
// BodyDecoder

namespace {

// FNV-1a, 64 bits, of the name in lower case: the trailer filter's names.
uint64_t name_hash(std::string_view name) noexcept {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace

void BodyDecoder::reset(BodyKind kind, uint64_t content_length, const Limits& limits) noexcept {
  kind_ = kind;
  error_ = Error::none;
  remaining_ = 0;
  line_len_ = trailer_bytes_ = trailer_fields_ = 0;
  filter_ = false;
  drop_count_ = 0;
  line_seen_ = 0;
  max_chunk_line_ = limits.max_chunk_line;
  max_trailer_ = limits.max_trailer;
  switch (kind) {
    case BodyKind::none: state_ = State::done; break;
    case BodyKind::length:
      remaining_ = content_length;
      state_ = content_length == 0 ? State::done : State::length;
      break;
    case BodyKind::chunked: state_ = State::size_first; break;
    case BodyKind::until_close: state_ = State::until_close; break;
  }
}

void BodyDecoder::filter_trailers(const Head& head) noexcept {
  filter_ = kind_ == BodyKind::chunked;
  drop_count_ = 0;
  for (const std::string_view o : head.connection_options()) drop_hash_[drop_count_++] = name_hash(o);
}

BodyStep BodyDecoder::decode(std::string_view in) noexcept {
  switch (state_) {
    case State::done: return {0, {}, BodyStatus::done, Error::none};
    case State::error: return {0, {}, BodyStatus::error, error_};
    case State::length: {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size()));
      remaining_ -= n;
      if (remaining_ == 0) state_ = State::done;
      return {n, in.substr(0, n), state_ == State::done ? BodyStatus::done : BodyStatus::more, Error::none};
    }
    case State::until_close: return {in.size(), in, BodyStatus::more, Error::none};
    default: return chunked(in);
  }
}

Error BodyDecoder::finish() noexcept {
  switch (state_) {
    case State::until_close: state_ = State::done; return Error::none;
    case State::done: return Error::none;
    case State::error: return error_;
    default:
      state_ = State::error;
      error_ = Error::body_truncated;
      return error_;
  }
}

// chunked-body = *chunk last-chunk trailer-section CRLF (RFC 9112 7.1)
// chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
// chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
BodyStep BodyDecoder::chunked(std::string_view in) noexcept {
  const char* const begin = in.data();
  const char* const end = begin + in.size();
  const char* p = begin;
  // filter_: the first byte of the trailer field line being looked at, held
  // (not consumed) until the line is whole.
  const char* line = nullptr;
  if (line_seen_ > 0) {  // `in` starts with the held line, looked at up to line_seen_
    if (in.size() <= line_seen_) return {0, {}, BodyStatus::more, Error::none};
    line = begin;
    p = begin + line_seen_;
    line_seen_ = 0;
  }
  std::string_view data;
  auto step = [&](BodyStatus s) { return BodyStep{static_cast<size_t>(p - begin), data, s, Error::none}; };
  auto fail = [&](Error e) {
    state_ = State::error;
    error_ = e;
    return BodyStep{static_cast<size_t>((line ? line : p) - begin), data, BodyStatus::error, e};
  };
  // Where an unexpected byte in a chunk line is a bare LF or simply wrong.
  auto bad = [&](char c, Error e) { return fail(c == '\n' ? Error::bare_lf : e); };

  while (p < end) {
    if (state_ == State::data) {
      if (!data.empty()) return step(BodyStatus::more);  // one run of data per step
      const auto n = static_cast<size_t>(std::min<uint64_t>(remaining_, static_cast<uint64_t>(end - p)));
      data = std::string_view(p, n);
      p += n;
      remaining_ -= n;
      if (remaining_ == 0) state_ = State::data_cr;
      continue;
    }
    const char c = *p;
    if (state_ >= State::size_first && state_ <= State::ext_after_quote && c != '\r') {
      if (line_len_ >= max_chunk_line_) return fail(Error::chunk_line_too_long);
      ++line_len_;
    } else if (state_ >= State::trailer_start && state_ <= State::end_lf) {
      if (trailer_bytes_ >= max_trailer_) return fail(Error::trailer_too_large);
      ++trailer_bytes_;
    }
    State next = state_;
    switch (state_) {
      case State::size_first:
        if (!is(c, kHex)) return fail(Error::bad_chunk_size);
        remaining_ = hex_value(c);
        next = State::size;
        break;
      case State::size:
        if (is(c, kHex)) {
          // At most 16 digits (leading zeros included) and 2^63 - 1, as
          // Content-Length: a size no backend can read differently (one that
          // keeps fewer digits or a signed 64-bit size), nginx's limit too.
          if (line_len_ > 16 || remaining_ > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) >> 4))
            return fail(Error::bad_chunk_size);
          remaining_ = (remaining_ << 4) | hex_value(c);
        } else if (c == '\r') {
          next = State::size_lf;
        } else if (c == ';') {
          next = State::ext_name_bws;
        } else if (ows(c)) {
          next = State::ext_bws;
        } else {
          return bad(c, Error::bad_chunk_size);
        }
        break;
      case State::ext_bws:  // BWS that must lead to ';'
        if (c == ';') next = State::ext_name_bws;
        else if (!ows(c)) return bad(c, Error::bad_chunk_extension);
        break;
      case State::ext_name_bws:
        if (is(c, kTchar)) next = State::ext_name;
        else if (!ows(c)) return bad(c, Error::bad_chunk_extension);
        break;
      case State::ext_name:
        if (c == '\r') next = State::size_lf;
        else if (c == ';') next = State::ext_name_bws;
        else if (c == '=') next = State::ext_value_bws;
        else if (ows(c)) next = State::ext_eq_bws;
        else if (!is(c, kTchar)) return bad(c, Error::bad_chunk_extension);
        break;
      case State::ext_eq_bws:  // BWS after a name: '=' or ';' must follow
        if (c == '=') next = State::ext_value_bws;
        else if (c == ';') next = State::ext_name_bws;
        else if (!ows(c)) return bad(c, Error::bad_chunk_extension);
        break;
      case State::ext_value_bws:
        if (c == '"') next = State::ext_quoted;
        else if (is(c, kTchar)) next = State::ext_token;
        else if (!ows(c)) return bad(c, Error::bad_chunk_extension);
        break;
      case State::ext_token:
        if (c == '\r') next = State::size_lf;
        else if (c == ';') next = State::ext_name_bws;
        else if (ows(c)) next = State::ext_bws;
        else if (!is(c, kTchar)) return bad(c, Error::bad_chunk_extension);
        break;
      case State::ext_quoted:
        if (c == '"') next = State::ext_after_quote;
        else if (c == '\\') next = State::ext_quoted_pair;
        else if (!is(c, kQdtext)) return bad(c, Error::bad_chunk_extension);
        break;
      case State::ext_quoted_pair:  // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
        if (!(ows(c) || is(c, kVchar))) return bad(c, Error::bad_chunk_extension);
        next = State::ext_quoted;
        break;
      case State::ext_after_quote:
        if (c == '\r') next = State::size_lf;
        else if (c == ';') next = State::ext_name_bws;
        else if (ows(c)) next = State::ext_bws;
        else return bad(c, Error::bad_chunk_extension);
        break;
      case State::size_lf:
        if (c != '\n') return fail(Error::bare_cr);
        line_len_ = 0;
        next = remaining_ == 0 ? State::trailer_start : State::data;
        break;
      case State::data_cr:
        if (c != '\r') return bad(c, Error::bad_chunk_end);
        next = State::data_lf;
        break;
      case State::data_lf:
        if (c != '\n') return fail(Error::bare_cr);
        next = State::size_first;
        break;
      case State::trailer_start:
        if (c == '\r') {
          next = State::end_lf;
        } else if (is(c, kTchar)) {
          ++trailer_fields_;
          next = State::trailer_name;
          if (filter_) line = p;
        } else {
          return fail(c == '\n' ? Error::bare_lf : ows(c) ? Error::obs_fold : Error::bad_field_name);
        }
        break;
      case State::trailer_name:
        if (c == ':') next = State::trailer_value;
        else if (ows(c)) return fail(Error::space_before_colon);
        else if (!is(c, kTchar)) return bad(c, Error::bad_field_name);
        break;
      case State::trailer_value:
        if (c == '\r') next = State::trailer_lf;
        else if (!is(c, kValue)) return bad(c, Error::bad_field_value);
        break;
      case State::trailer_lf:
        if (c != '\n') return fail(Error::bare_cr);
        next = State::trailer_start;
        if (line) {
          // The whole line is in `in`: its name ends at the first colon.
          const std::string_view whole(line, static_cast<size_t>(p + 1 - line));
          const std::string_view name = whole.substr(0, whole.find(':'));
          bool hop = iequals(name, "connection") || iequals(name, "proxy-connection") || iequals(name, "keep-alive") ||
                     iequals(name, "te") || iequals(name, "transfer-encoding") || iequals(name, "upgrade");
          const uint64_t h = name_hash(name);
          for (size_t k = 0; k < drop_count_ && !hop; ++k) hop = drop_hash_[k] == h;
          line = nullptr;
          if (hop) {
            state_ = next;
            ++p;
            BodyStep s = step(BodyStatus::more);
            s.drop = static_cast<uint32_t>(whole.size());
            return s;
          }
        }
        break;
      case State::end_lf:
        if (c != '\n') return fail(Error::bare_cr);
        ++p;
        state_ = State::done;
        return step(BodyStatus::done);
      default: return step(BodyStatus::more);  // not reached: decode() dispatches the rest
    }
    state_ = next;
    ++p;
  }
  if (line) {
    line_seen_ = static_cast<uint32_t>(p - line);
    p = line;
  }
  return step(BodyStatus::more);
}

}  // namespace gw::http
