#include "gw/proxy/framer.hpp"

#include <simdjson.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace gw::proxy {

static_assert(kPadding >= simdjson::SIMDJSON_PADDING, "frame buffers must leave simdjson's padding free");

const char* frame_error_name(FrameError e) noexcept {
  switch (e) {
    case FrameError::none: return "none";
    case FrameError::header_truncated: return "header_truncated";
    case FrameError::body_truncated: return "body_truncated";
    case FrameError::body_too_large: return "body_too_large";
    case FrameError::first_frame_timeout: return "first_frame_timeout";
    case FrameError::bad_type: return "bad_type";
    case FrameError::bad_version: return "bad_version";
    case FrameError::bad_length: return "bad_length";
    case FrameError::bad_json: return "bad_json";
    case FrameError::json_too_deep: return "json_too_deep";
    case FrameError::bad_utf8: return "bad_utf8";
    case FrameError::key_missing: return "key_missing";
    case FrameError::key_not_string: return "key_not_string";
    case FrameError::key_empty: return "key_empty";
    case FrameError::key_too_long: return "key_too_long";
    case FrameError::key_bad_char: return "key_bad_char";
    case FrameError::frame_timeout: return "frame_timeout";
    case FrameError::no_frame_buffer: return "no_frame_buffer";
    case FrameError::key_duplicate: return "key_duplicate";
    case FrameError::count: break;
  }
  return "unknown";
}

namespace {

// The body length the header declares, or bad_length.
FrameError declared_body(const FrameSpec& spec, const uint8_t* data, uint64_t& body) noexcept {
  const uint8_t* p = data + spec.length_offset;
  uint64_t n = 0;
  for (uint32_t i = 0; i < spec.length_size; ++i) {
    const uint32_t byte = spec.big_endian ? i : spec.length_size - 1 - i;
    n = (n << 8) | p[byte];
  }
  body = n;
  if (spec.length_includes_header) {
    if (n < spec.header_size) return FrameError::bad_length;
    body = n - spec.header_size;
  }
  return FrameError::none;
}

}  // namespace

FrameError frame_length(const FrameSpec& spec, const uint8_t* data, size_t len, uint32_t& frame_len) noexcept {
  (void)len;  // the caller guarantees len >= header_size
  if (spec.check_types && !spec.allowed_types[data[spec.type_offset]]) return FrameError::bad_type;
  if (spec.check_versions && !spec.allowed_versions[data[spec.version_offset]]) return FrameError::bad_version;
  uint64_t body = 0;
  if (FrameError e = declared_body(spec, data, body); e != FrameError::none) return e;
  if (body > spec.max_body) return FrameError::body_too_large;
  frame_len = static_cast<uint32_t>(spec.header_size + body);
  return FrameError::none;
}

FrameError reply_length(const FrameSpec& spec, const uint8_t* data, uint64_t& frame_len) noexcept {
  uint64_t body = 0;
  if (FrameError e = declared_body(spec, data, body); e != FrameError::none) return e;
  frame_len = spec.header_size + body;  // at most 64 + 2^32 - 1: no overflow
  return FrameError::none;
}

struct Framer::Json {
  simdjson::dom::parser parser;
  // The key's path, one member name or array index per step: the field name
  // itself, or a JSON pointer's reference tokens, unescaped ("~1" is '/',
  // "~0" is '~'; RFC 6901 section 4).
  std::vector<std::string> path;
  bool pointer = false;
};

Framer::Framer(const FrameSpec& spec) : spec_(spec), json_(std::make_unique<Json>()) {
  const std::string_view k = spec_.key;
  json_->pointer = !k.empty() && k.front() == '/';
  if (!json_->pointer) {
    json_->path.emplace_back(k);
  } else {
    for (size_t at = 1;;) {
      const size_t end = std::min(k.find('/', at), k.size());
      std::string tok;
      for (size_t i = at; i < end; ++i) {
        if (k[i] == '~' && i + 1 < end && (k[i + 1] == '0' || k[i + 1] == '1')) {
          tok += k[++i] == '1' ? '/' : '~';
        } else {
          tok += k[i];
        }
      }
      json_->path.push_back(std::move(tok));
      if (end == k.size()) break;
      at = end + 1;
    }
  }
  // Allocated at start-up: documents up to max_body bytes, nested up to
  // max_depth. parse() is then called without reallocation. simdjson counts
  // the document root as a level of its own, hence the + 1: max_depth 1
  // accepts {"devid": "x"}.
  const size_t capacity = std::max<size_t>(spec_.max_body, 64);
  if (json_->parser.allocate(capacity, spec_.max_depth + 1) != simdjson::SUCCESS)
    throw std::runtime_error("cannot allocate the frame JSON parser");
  // parser.allocate() sizes the parser, not the document it fills (its tape
  // and strings): parse() would allocate that on the worker's thread for the
  // first body and again for every body larger than any before. A document of
  // `capacity` bytes (a number, then blanks) sizes it now for them all.
  std::vector<uint8_t> blank(capacity + simdjson::SIMDJSON_PADDING, ' ');
  blank[0] = '0';
  simdjson::dom::element ignored;
  if (json_->parser.parse(blank.data(), capacity, false).get(ignored) != simdjson::SUCCESS)
    throw std::runtime_error("cannot allocate the frame JSON document");
}

Framer::~Framer() = default;

FrameDecision Framer::inspect(const uint8_t* data, size_t len, bool want_key) noexcept {
  FrameDecision d;
  if (len < spec_.header_size) return d;  // need_more, length not known yet
  uint32_t frame_len = 0;
  if (FrameError e = frame_length(spec_, data, len, frame_len); e != FrameError::none) {
    d.kind = FrameDecision::Kind::reject;
    d.error = e;
    return d;
  }
  d.frame_len = frame_len;
  if (len < frame_len) return d;  // need_more, total known
  d.kind = FrameDecision::Kind::frame;
  if (!want_key) return d;
  FrameError e = key_of(data + spec_.header_size, frame_len - spec_.header_size, d.key);
  if (e != FrameError::none) {
    d.kind = FrameDecision::Kind::reject;
    d.error = e;
    d.key = {};
  }
  return d;
}

FrameError Framer::key_of(const uint8_t* body, size_t len, std::string_view& key) noexcept {
  simdjson::dom::element doc;
  // The caller's buffer keeps kPadding bytes readable after the body, so the
  // parser reads it in place.
  simdjson::error_code err = json_->parser.parse(body, len, false).get(doc);
  if (err == simdjson::DEPTH_ERROR) return FrameError::json_too_deep;
  if (err == simdjson::UTF8_ERROR) return FrameError::bad_utf8;
  if (err) return FrameError::bad_json;
  // Walked here rather than with at_key/at_pointer, which take the first of
  // two members with the same name: a host whose parser keeps the last (as
  // most do) would act on another key than the one the frame was routed by.
  simdjson::dom::element v = doc;
  for (const std::string& name : json_->path) {
    simdjson::dom::object obj;
    simdjson::dom::array arr;
    if (v.get_object().get(obj) == simdjson::SUCCESS) {
      bool found = false;
      for (simdjson::dom::key_value_pair field : obj) {
        if (field.key != name) continue;
        if (found) return FrameError::key_duplicate;
        found = true;
        v = field.value;
      }
      if (!found) return FrameError::key_missing;
    } else if (json_->pointer && v.get_array().get(arr) == simdjson::SUCCESS) {
      // An array index: decimal digits, no leading zero (RFC 6901 section 4).
      if (name.empty() || name.size() > 9 || (name.size() > 1 && name[0] == '0')) return FrameError::key_missing;
      size_t index = 0;
      for (char c : name) {
        if (c < '0' || c > '9') return FrameError::key_missing;
        index = index * 10 + static_cast<size_t>(c - '0');
      }
      if (arr.at(index).get(v) != simdjson::SUCCESS) return FrameError::key_missing;
    } else {
      return FrameError::key_missing;
    }
  }
  std::string_view s;
  if (v.get_string().get(s)) return FrameError::key_not_string;
  if (s.empty()) return FrameError::key_empty;
  if (s.size() > spec_.max_key) return FrameError::key_too_long;
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return FrameError::key_bad_char;
  key = s;
  return FrameError::none;
}

}  // namespace gw::proxy
