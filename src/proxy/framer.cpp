#include "gw/proxy/framer.hpp"

#include <simdjson.h>

#include <stdexcept>

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
};

Framer::Framer(const FrameSpec& spec) : spec_(spec), json_(std::make_unique<Json>()) {
  // One allocation, at start-up: documents up to max_body bytes, nested up to
  // max_depth. parse() is then called without reallocation. simdjson counts
  // the document root as a level of its own, hence the + 1: max_depth 1
  // accepts {"devid": "x"}.
  if (json_->parser.allocate(std::max<size_t>(spec_.max_body, 64), spec_.max_depth + 1) != simdjson::SUCCESS)
    throw std::runtime_error("cannot allocate the frame JSON parser");
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
  simdjson::dom::element v;
  const std::string_view path = spec_.key;
  if (!path.empty() && path.front() == '/') {
    err = doc.at_pointer(path).get(v);
  } else {
    simdjson::dom::object obj;
    if (doc.get_object().get(obj)) return FrameError::key_missing;
    err = obj.at_key(path).get(v);
  }
  if (err == simdjson::NO_SUCH_FIELD || err == simdjson::INDEX_OUT_OF_BOUNDS || err == simdjson::INCORRECT_TYPE)
    return FrameError::key_missing;
  if (err) return FrameError::key_missing;
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
