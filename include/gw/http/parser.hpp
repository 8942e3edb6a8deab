#pragma once
// Incremental, zero-copy HTTP/1.1 parser (RFC 9110 / RFC 9112) for the HTTP
// reverse proxy: a head parser (request line or status line, and the header
// section) and a body decoder (Content-Length, chunked, read-until-close).
//
// Head: the caller reads into its buffer and calls parse() with all the bytes
// of the message so far, from its first byte:
//
//     buf: [ GET / HTTP/1.1\r\nHost: a\r\nX-Y: z|             ]
//          ^ data()                          ^ size(): parse() says need_more
//     read more, parse() again with the longer buffer ... done:
//          [ GET / HTTP/1.1\r\nHost: a\r\nX-Y: z\r\n\r\nbody...|pipelined... ]
//          |<------------- head().head_len --------->|
//
// The parser keeps offsets, not copies: it resumes at the byte where it
// stopped, so feeding a head byte by byte costs O(head). The buffer may move
// between calls (the caller compacts it): then the parser starts over on the
// new buffer, with the same result. Every decision depends only on the bytes
// before and at the byte that decides it, so the outcome for any split of the
// input equals the outcome for the whole (tested at every split, fuzzed).
// The views in head() point into the buffer of the last parse() call.
//
// Body: BodyDecoder is a byte-level state machine. It never needs earlier
// bytes again, so the proxy can forward (or drop) every byte it was given. Each
// decode() step says how many bytes it consumed and which of them are body
// data; the rest is framing (chunk-size lines, CRLFs, trailers).
//
// Pipelining: a message is head().head_len bytes of head plus the bytes the
// BodyDecoder consumed up to `done`; the next message starts right after.
//
// Data plane: every function is noexcept and allocates nothing. Header fields
// go into a caller-provided array whose size is the field limit.
//
// Strictness (each rejection names an Error; error_status() gives the status
// the proxy answers the client with; any error in an upstream response makes
// the proxy answer 502 instead):
//   - lines end in CRLF; a bare LF or a CR not followed by LF is rejected (400)
//     everywhere: start line, header and trailer lines, chunk lines.
//   - exactly one SP between the parts of the request line (400); method a
//     token (400); target without CTL or SP (obs-text allowed) and of the form
//     its method allows (400); an absolute-form target is scheme "://"
//     authority, the authority a uri-host[:port] with a non-empty host and no
//     userinfo (RFC 9110 4.2.1, 4.2.4), else 400; version exactly
//     "HTTP/" DIGIT "." DIGIT (else 400); a major version other than 1 answers 505; HTTP/1.2..1.9 are
//     handled as 1.1 (RFC 9110 2.5).
//   - empty lines (CRLF) before the start line are skipped (RFC 9112 2.2); they
//     count toward max_head.
//   - field names are tokens; whitespace before the colon (400), obs-fold and
//     whitespace before the first field (400), any CTL but HTAB in a value
//     (CR, LF, NUL, DEL, ...: 400).
//   - Host: required in HTTP/1.1 requests, at most one, empty or a valid
//     uri-host[:port] with a non-empty host (400). Content-Length: 1*DIGIT up to 2^63-1; several field lines or a
//     comma list of the *same* value are accepted as that value (RFC 9110 8.6;
//     content_length_merged tells the proxy to send one), differing values
//     and anything else are rejected (400).
//   - Transfer-Encoding: rejected in HTTP/1.0 messages (400) and together with
//     Content-Length (400, also in responses: RFC 9112 6.1 lets a proxy
//     reject, and 6.3 calls it a likely smuggling attempt); in a request,
//     chunked must be the last coding and appear once, else 400; a known
//     coding before it (gzip, x-gzip, deflate, compress, x-compress) is
//     accepted, any other ("identity", "xchunked", ...) answers 501; chunked
//     takes no parameters. In a response, chunked not last means read until
//     close; unknown codings are passed through.
//   - chunk lines: 1*HEXDIG (at most 16 digits, leading zeros counted, and at
//     most 2^63-1, as Content-Length), then extensions that follow the
//     RFC 9112 7.1.1 grammar exactly (token or quoted-string values, BWS only
//     before ';' and '='); otherwise 400. Trailer fields follow the header
//     field rules and max_trailer.
//   - limits: start line over max_start_line or not ended within max_head (414,
//     as nginx), head over max_head or more fields than the array holds (431),
//     trailer section over max_trailer (431), chunk line over max_chunk_line (400).

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace gw::http {

/// Why a message was rejected. Stable names: they appear in logs and stats.
enum class Error : uint8_t {
  none = 0,
  // start line
  bad_request_line,       ///< missing part, extra SP, CR inside the line
  bad_method,             ///< a method byte that is not a tchar
  bad_target,             ///< CTL in the target, or a form its method does not allow
  bad_version,            ///< not "HTTP/" DIGIT "." DIGIT
  version_not_supported,  ///< a major version other than 1 (505)
  bad_status_line,        ///< response: malformed status line, status outside 100..599
  start_line_too_long,    ///< over max_start_line (414)
  // lines of the head and of the trailer section
  bare_lf,             ///< LF without CR before it
  bare_cr,             ///< CR not followed by LF
  bad_field_name,      ///< empty name, a byte that is not a tchar, no colon
  space_before_colon,  ///< "Name : value" (RFC 9112 5.1)
  obs_fold,            ///< a line starting with SP/HTAB (RFC 9112 5.2)
  bad_field_value,     ///< CTL (other than HTAB) in a value: CR, NUL, DEL, ...
  head_too_large,      ///< over max_head (431)
  too_many_fields,     ///< more fields than the caller's array holds (431)
  // header semantics
  missing_host,                 ///< HTTP/1.1 request without Host
  duplicate_host,               ///< more than one Host field line
  bad_host,                     ///< Host (or a CONNECT target) not uri-host[:port]
  bad_content_length,           ///< not 1*DIGIT, or above 2^63-1
  conflicting_content_length,   ///< differing values
  te_and_cl,                    ///< Transfer-Encoding and Content-Length together
  te_in_http10,                 ///< Transfer-Encoding in an HTTP/1.0 message
  bad_transfer_encoding,        ///< syntax, chunked twice, chunked not last (request)
  unknown_transfer_coding,      ///< request: a coding this proxy does not know (501)
  bad_connection,               ///< Connection is not a token list
  too_many_connection_options,  ///< over kMaxConnectionOptions
  // body
  bad_chunk_size,       ///< empty, not hex, over 16 digits or above 2^63-1
  bad_chunk_extension,  ///< not the chunk-ext grammar (also BWS after the size with no ';')
  chunk_line_too_long,  ///< over max_chunk_line
  bad_chunk_end,        ///< chunk data not followed by CRLF
  trailer_too_large,    ///< over max_trailer (431)
  body_truncated,       ///< EOF before the end of a Content-Length or chunked body
  count
};
inline constexpr size_t kErrorCount = static_cast<size_t>(Error::count);

/// The error's stable name ("bare_lf", ...).
const char* error_name(Error e) noexcept;
/// The status the proxy answers a client's bad request with: 400, 414, 431,
/// 501 or 505 (0 for Error::none). An error in an upstream response is a 502.
int error_status(Error e) noexcept;

enum class Version : uint8_t { http10, http11 };

/// Methods the proxy treats specially or counts; any other token is `other`
/// (method names are case-sensitive: "get" is `other`).
enum class Method : uint8_t { other, get, head, post, put, delete_, connect, options, trace, patch };
const char* method_name(Method m) noexcept;

/// RFC 9112 3.2. CONNECT takes only authority-form, "*" only OPTIONS.
enum class TargetForm : uint8_t { origin, absolute, authority, asterisk };

/// Fields the parser interprets; the rest are `other`.
enum class FieldId : uint8_t {
  other,
  host,
  content_length,
  transfer_encoding,
  connection,
  keep_alive,
  proxy_connection,
  upgrade,
  te,
  trailer,
  expect,
};

/// One field line: name and value (OWS around the value trimmed) are views
/// into the parsed buffer.
struct Field {
  std::string_view name;
  std::string_view value;
  FieldId id = FieldId::other;
  /// Must not be forwarded (RFC 9110 7.6.1): Connection, Proxy-Connection,
  /// Keep-Alive, TE, Transfer-Encoding, Upgrade, and every field named in
  /// Connection except Host and Content-Length (a client cannot make the
  /// proxy drop the message's routing or framing). The proxy writes its own
  /// framing and, for an upgrade, its own Connection/Upgrade.
  bool hop_by_hop = false;
};

/// How the body that follows the head is delimited.
enum class BodyKind : uint8_t {
  none,         ///< no body (or a tunnel, see Head::tunnel)
  length,       ///< Content-Length bytes (maybe 0)
  chunked,      ///< chunked transfer coding
  until_close,  ///< response: everything until the upstream closes
};

inline constexpr size_t kMaxConnectionOptions = 16;

struct Limits {
  uint32_t max_start_line = 8192;  ///< request/status line bytes before CRLF (414)
  uint32_t max_head = 32768;       ///< head bytes, from the first byte to the final CRLF (431)
  uint32_t max_chunk_line = 4096;  ///< chunk-size line bytes (size and extensions) before CRLF
  uint32_t max_trailer = 8192;     ///< trailer section bytes, final CRLF included (431)
};

/// A parsed head. Views point into the buffer given to the last parse().
struct Head {
  // request line (requests)
  Method method = Method::other;
  std::string_view method_name;
  std::string_view target;
  TargetForm target_form = TargetForm::origin;
  std::string_view authority;  ///< absolute-form: the target's host[:port] (it replaces Host, RFC 9112 3.2.2)
  // status line (responses)
  uint16_t status = 0;
  std::string_view reason;

  Version version = Version::http11;
  std::span<const Field> fields;  ///< in the caller's array, in message order

  bool has_host = false;
  std::string_view host;  ///< requests: the Host value (may be empty)

  BodyKind body = BodyKind::none;
  uint64_t content_length = 0;         ///< body == length
  bool content_length_merged = false;  ///< several identical values were merged into one
  bool keep_alive = false;             ///< the connection may carry another message after this one
  bool upgrade = false;                ///< request: HTTP/1.1, Connection: upgrade and an Upgrade field;
                                       ///< response: 101 Switching Protocols
  bool websocket = false;              ///< upgrade, and Upgrade lists "websocket"
  std::string_view upgrade_protocols;  ///< the first Upgrade field's value
  bool expect_continue = false;        ///< HTTP/1.1 request with Expect: 100-continue
  bool expect_other = false;           ///< an Expect value other than 100-continue (the proxy may answer 417)
  bool tunnel = false;                 ///< response: 101, or 2xx to CONNECT: the bytes after the head are a tunnel

  uint32_t head_len = 0;  ///< bytes of the head, leading empty lines and the final CRLF included

  /// The tokens of the Connection field lines, in order (also close,
  /// keep-alive and upgrade).
  std::span<const std::string_view> connection_options() const noexcept {
    return {connection_option_list.data(), connection_option_count};
  }
  /// Informational (1xx) response other than 101: the final response follows.
  bool informational() const noexcept { return status >= 100 && status < 200 && status != 101; }

  std::array<std::string_view, kMaxConnectionOptions> connection_option_list{};
  uint8_t connection_option_count = 0;
};

/// ASCII case-insensitive equality (field names, tokens).
bool iequals(std::string_view a, std::string_view b) noexcept;
/// The first field called `name` (case-insensitive), or nullptr.
const Field* find_field(const Head& head, std::string_view name) noexcept;

enum class ParseStatus : uint8_t { need_more, done, error };

/// How far Parser::check_request_line() has got in a request line, kept by
/// the caller between reads (16 bytes, where a Parser is not kept). Offsets
/// count from the message's first byte. A value-initialised one starts over.
struct LineCheck {
  uint32_t pos = 0;         ///< the bytes before this were looked at
  uint32_t line_start = 0;  ///< the request line's first byte (after empty lines)
  uint32_t tok_start = 0;   ///< the first byte of the part being looked at
  uint8_t state = 0;        ///< the parser's scan state there
  Method method = Method::other;
  bool done = false;  ///< the whole request line was looked at and is valid
};

/// Parses one message head. Single-threaded; one per connection direction.
class Parser {
 public:
  enum class Kind : uint8_t { request, response };

  /// `fields` receives the field lines; its size is the field limit. It must
  /// outlive the parser's use (the proxy keeps one array per connection).
  Parser(Kind kind, std::span<Field> fields, const Limits& limits = {}) noexcept;

  /// Starts the next message (after a message's body, for pipelining). For a
  /// response parser, `request_method` is the method of the request being
  /// answered: responses to HEAD have no body, 2xx to CONNECT start a tunnel.
  void reset(Method request_method = Method::get) noexcept;

  /// `buf` holds the message's bytes from its first byte: the same bytes as
  /// the last call, maybe followed by more (or moved elsewhere). Returns
  /// need_more, done (head() is complete; bytes after head_len are not
  /// looked at) or error (error() says why). done and error are sticky until
  /// reset().
  ParseStatus parse(std::string_view buf) noexcept;

  /// A request whose head has not all arrived: checks the request line as far
  /// as it has, so that bytes which cannot begin a request (a TLS ClientHello
  /// on a plain port) are refused at once, not when a whole head or a timeout
  /// has come. `buf` is as for parse(); the check resumes at `lc`, so each
  /// byte is looked at once however the line arrives. Returns error (error()
  /// says why, the error parse() gives for the same bytes) or need_more (no
  /// error so far; lc.done once the line is whole). Fills in no head; the
  /// parser must be reset() before parse().
  ParseStatus check_request_line(std::string_view buf, LineCheck& lc) noexcept;

  const Head& head() const noexcept { return head_; }
  Error error() const noexcept { return error_; }
  /// A request's whole request line was read (head().method_name, target and
  /// version hold it), even if an error came after it, in a header field.
  bool request_line_read() const noexcept { return line_read_; }
  /// error: the offset of the byte that decided it (max_head for head_too_large,
  /// and for start_line_too_long when the line did not end within max_head).
  size_t error_offset() const noexcept { return pos_; }
  Kind kind() const noexcept { return kind_; }
  const Limits& limits() const noexcept { return limits_; }

 private:
  enum class State : uint8_t {
    start,
    start_lf,
    method,
    target,
    version,
    line_lf,
    rversion,
    status,
    reason,
    field_start,
    field_name,
    field_ows,
    field_value,
    field_lf,
    end_lf,
    done,
    error,
  };

  void restart() noexcept;
  Error run(const char* data, size_t len) noexcept;
  Error on_target() noexcept;
  Error on_field(Field& f) noexcept;
  Error on_content_length(std::string_view v) noexcept;
  Error on_transfer_encoding(std::string_view v) noexcept;
  Error on_connection(std::string_view v) noexcept;
  Error finish() noexcept;

  Kind kind_;
  std::span<Field> storage_;
  Limits limits_;
  Method request_method_ = Method::get;

  // Scan state: offsets into the message.
  State state_ = State::start;
  Error error_ = Error::none;
  bool line_read_ = false;  // request_line_read()
  const char* base_ = nullptr;
  size_t pos_ = 0;         // next byte to look at
  size_t line_start_ = 0;  // first byte of the current line
  size_t tok_start_ = 0;   // first byte of the current part of the line
  size_t name_end_ = 0;    // the colon
  size_t value_start_ = 0;
  size_t value_end_ = 0;
  size_t count_ = 0;

  // Facts gathered from the fields so far.
  bool cl_seen_ = false;
  bool te_seen_ = false;
  bool te_chunked_ = false;       // chunked appeared
  bool te_chunked_last_ = false;  // the last coding so far is chunked
  bool te_unknown_ = false;
  bool conn_close_ = false;
  bool conn_keep_alive_ = false;
  bool conn_upgrade_ = false;
  bool upgrade_seen_ = false;
  bool websocket_listed_ = false;
  bool expect_continue_seen_ = false;

  Head head_;
};

enum class BodyStatus : uint8_t { more, done, error };

/// One decode() step: the first `consumed` bytes of the input were used;
/// `data` (a view into them, maybe empty) is body data, the rest framing.
struct BodyStep {
  size_t consumed = 0;
  std::string_view data;
  BodyStatus status = BodyStatus::more;
  Error error = Error::none;
  /// filter_trailers(): the last `drop` of the consumed bytes are a whole
  /// trailer field line that must not be forwarded (a hop-by-hop field).
  uint32_t drop = 0;
};

/// Decodes one message body, incrementally and without copying. A step
/// consumes framing and at most one run of data; the caller loops:
///
///     while (!in.empty()) {
///       BodyStep s = dec.decode(in);
///       forward(s.data);                 // or in.substr(0, s.consumed) as is
///       in.remove_prefix(s.consumed);
///       if (s.status != BodyStatus::more) break;   // done: `in` is the next message
///     }
///
/// Progress: with non-empty input and status `more`, consumed > 0. Bytes given
/// once are never needed again. Single-threaded.
///
/// filter_trailers() changes two of these rules for a proxy that forwards the
/// framing as it came: a trailer field line is not consumed until it is whole
/// (a step may consume 0 bytes while one is incomplete; the caller gives them
/// again, followed by more: the decoder does not look at them twice), and a
/// whole line naming a hop-by-hop field comes in a step of its own `drop`.
class BodyDecoder {
 public:
  BodyDecoder() noexcept = default;  // BodyKind::none: done at once
  BodyDecoder(const Head& head, const Limits& limits = {}) noexcept { reset(head, limits); }

  void reset(BodyKind kind, uint64_t content_length = 0, const Limits& limits = {}) noexcept;
  void reset(const Head& head, const Limits& limits = {}) noexcept {
    reset(head.tunnel ? BodyKind::none : head.body, head.content_length, limits);
  }

  /// After reset(), for a chunked body: hold each trailer field line until it
  /// is whole, and report (BodyStep::drop) those that are hop-by-hop
  /// (RFC 9110 7.6.1): Connection, Proxy-Connection, Keep-Alive, TE,
  /// Transfer-Encoding, Upgrade, and the fields named in `head`'s Connection,
  /// as the head's own are. The names are kept as 64-bit hashes, so the head's
  /// buffer may be gone by the time the trailers come; a collision could only
  /// drop a field of the message whose own Connection named the other name.
  void filter_trailers(const Head& head) noexcept;

  /// done and error are sticky (consumed 0). On error, `consumed` stops
  /// before the offending byte (filter_trailers: before its trailer line) and
  /// `data` holds the step's data before it.
  BodyStep decode(std::string_view in) noexcept;
  /// The peer closed the connection: until_close bodies are done; a body that
  /// is not done is truncated (Error::body_truncated). Returns the error.
  Error finish() noexcept;

  BodyKind kind() const noexcept { return kind_; }
  bool done() const noexcept { return state_ == State::done; }
  Error error() const noexcept { return error_; }
  /// length: body bytes still to come; chunked: bytes left in the current chunk.
  uint64_t remaining() const noexcept { return remaining_; }
  /// chunked: trailer field lines seen so far.
  uint32_t trailer_fields() const noexcept { return trailer_fields_; }

 private:
  enum class State : uint8_t {
    length,
    until_close,
    size_first,
    size,
    ext_bws,       // BWS, then ';' must follow
    ext_name_bws,  // BWS after ';', before the name
    ext_name,
    ext_eq_bws,     // BWS after the name: '=' or ';'
    ext_value_bws,  // BWS after '='
    ext_token,
    ext_quoted,
    ext_quoted_pair,
    ext_after_quote,
    size_lf,
    data,
    data_cr,
    data_lf,
    trailer_start,
    trailer_name,
    trailer_value,
    trailer_lf,
    end_lf,
    done,
    error,
  };

  BodyStep chunked(std::string_view in) noexcept;

  BodyKind kind_ = BodyKind::none;
  State state_ = State::done;
  Error error_ = Error::none;
  uint64_t remaining_ = 0;
  uint32_t line_len_ = 0;  // chunk line bytes so far
  uint32_t trailer_bytes_ = 0;
  uint32_t trailer_fields_ = 0;
  uint32_t max_chunk_line_ = Limits{}.max_chunk_line;
  uint32_t max_trailer_ = Limits{}.max_trailer;
  // filter_trailers()
  bool filter_ = false;
  uint8_t drop_count_ = 0;
  uint32_t line_seen_ = 0;                                   // bytes of the held trailer line already looked at
  std::array<uint64_t, kMaxConnectionOptions> drop_hash_{};  // the head's Connection options
};

}  // namespace gw::http
