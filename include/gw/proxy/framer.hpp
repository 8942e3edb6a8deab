#pragma once
// The private-protocol ("frame") framer: finds the first frame of a byte
// stream, checks its header, and pulls the routing key out of its JSON body.
//
// A frame is a fixed-size header that carries the body length at a
// configurable offset (1, 2 or 4 bytes, either byte order, with or without the
// header counted), followed by a JSON body. The decision for a stream prefix
// depends only on the bytes, never on how they were split into reads: the
// same bytes give the same decision at every split offset (tested, fuzzed).
//
// Data plane: noexcept, no allocation after construction. The JSON parser is
// simdjson's DOM parser, sized once for max_body and max_depth; it needs
// kPadding readable bytes after the body, so callers read into buffers that
// keep that much room free at their end.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace gw::proxy {

/// Why a device connection was refused. Stable names: they appear in
/// `gwctl status` and the logs.
enum class FrameError : uint8_t {
  none = 0,
  header_truncated,     ///< EOF inside the header
  body_truncated,       ///< EOF inside the body
  body_too_large,       ///< declared body above max_body (checked on the header alone)
  first_frame_timeout,  ///< no whole first frame within first_frame_timeout_ms
  bad_type,             ///< type byte not in allowed_types
  bad_version,          ///< version byte not in allowed_versions
  bad_length,           ///< a length that includes the header but is smaller than it
  bad_json,             ///< not a JSON document
  json_too_deep,        ///< nesting above max_depth
  bad_utf8,             ///< the body is not valid UTF-8
  key_missing,          ///< no value at the key's path
  key_not_string,
  key_empty,
  key_too_long,     ///< above max_key bytes
  key_bad_char,     ///< a control character (below 0x20, or 0x7f) in the key
  frame_timeout,    ///< mode "frame": a later frame not whole within frame_timeout_ms of its start
  no_frame_buffer,  ///< a frame larger than a relay buffer, and this worker's max_frame_buffers are in use
  key_duplicate,    ///< a member name on the key's path twice in one object (parsers differ on which wins)
  count
};
inline constexpr size_t kFrameErrorCount = static_cast<size_t>(FrameError::count);
const char* frame_error_name(FrameError e) noexcept;

/// The listener's `frame` settings (validated by the config loader).
struct FrameSpec {
  uint32_t header_size = 6;
  uint32_t length_offset = 4;
  uint32_t length_size = 2;  ///< 1, 2 or 4
  bool big_endian = true;
  bool length_includes_header = false;
  uint32_t max_body = 65536;
  std::string key = "devid";  ///< a top-level field name, or a JSON pointer ("/device/id")
  uint32_t max_key = 128;     ///< bytes; at most kMaxKey
  uint32_t max_depth = 32;
  uint32_t type_offset = 0;     ///< where allowed_types looks
  uint32_t version_offset = 1;  ///< where allowed_versions looks
  bool check_types = false;
  bool check_versions = false;
  uint8_t allowed_types[256] = {};     ///< 1 = allowed (when check_types)
  uint8_t allowed_versions[256] = {};  ///< 1 = allowed (when check_versions)

  /// The largest frame: header plus max_body.
  size_t max_frame() const noexcept { return size_t{header_size} + max_body; }
};

inline constexpr size_t kMaxKey = 128;  // a session keeps a copy while it connects
inline constexpr size_t kMaxHeader = 64;
/// Bytes that must stay readable after a body handed to the JSON parser.
inline constexpr size_t kPadding = 64;

/// What the start of a stream holds.
struct FrameDecision {
  enum class Kind : uint8_t { need_more, frame, reject };
  Kind kind = Kind::need_more;
  FrameError error = FrameError::none;
  uint32_t frame_len = 0;  ///< kind == frame: header + body; need_more: total needed once known, else 0
  std::string_view key;    ///< kind == frame with a key: valid until the next call on the same Framer
};

/// Header only, with the device-side rules (allowed_types, allowed_versions,
/// max_body): the whole frame's length, or an error. `len` >= header_size.
FrameError frame_length(const FrameSpec& spec, const uint8_t* data, size_t len, uint32_t& frame_len) noexcept;

/// Frames coming back from hosts (mode "frame"): delimited by the length field
/// alone. The device-side rules do not apply to them: a host may answer or
/// push with any type or version, and with a body up to what the length field
/// can say (replies are streamed, never buffered whole). The only error is
/// bad_length (a length that includes the header but is smaller than it).
/// `data` holds at least header_size bytes.
FrameError reply_length(const FrameSpec& spec, const uint8_t* data, uint64_t& frame_len) noexcept;

class Framer {
 public:
  /// Sizes the JSON parser for spec.max_body and spec.max_depth. Throws
  /// std::bad_alloc or std::runtime_error (start-up only).
  explicit Framer(const FrameSpec& spec);
  ~Framer();
  Framer(const Framer&) = delete;
  Framer& operator=(const Framer&) = delete;

  const FrameSpec& spec() const noexcept { return spec_; }

  /// Decides on the first frame of `data[0, len)`. With `want_key`, a whole
  /// frame is also parsed as JSON and its key checked; the bytes
  /// data[len, len + kPadding) must be readable.
  FrameDecision inspect(const uint8_t* data, size_t len, bool want_key = true) noexcept;
  /// The error for a stream that ended (EOF) while `inspect` said need_more.
  FrameError at_eof(size_t len) const noexcept {
    return len < spec_.header_size ? FrameError::header_truncated : FrameError::body_truncated;
  }

 private:
  FrameError key_of(const uint8_t* body, size_t len, std::string_view& key) noexcept;

  FrameSpec spec_;
  struct Json;
  std::unique_ptr<Json> json_;
};

}  // namespace gw::proxy
