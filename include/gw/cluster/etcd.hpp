#pragma once
// A small client for etcd's v3 JSON gateway (grpc-gateway) over HTTP/1.1:
// /v3/kv/range, /v3/kv/txn, /v3/kv/compaction and the /v3/watch stream.
//
// Why our own: Debian ships no etcd C++ client (etcd-cpp-apiv3 is not
// packaged) and the project takes no dependency from outside Debian; the JSON
// gateway needs nothing but HTTP/1.1 and JSON, and gw already has both (its
// HTTP/1.1 parser and simdjson). Keys and values travel base64-encoded and
// int64 fields as JSON strings, as the gateway marshals them.
//
// Blocking sockets with deadlines: used by the sync process and gwctl, never
// by the data plane. Failures throw EtcdError.

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/core/fd.hpp"
#include "gw/http/parser.hpp"

namespace gw::cluster {

/// An etcd failure; the message is one line for the operator. `unavailable`:
/// the member could not be reached or cannot serve (down, no leader, timed
/// out), so another member may. `code`: the gRPC code of etcd's answer (0:
/// none, such as an I/O failure).
class EtcdError : public std::runtime_error {
 public:
  EtcdError(const std::string& msg, bool unavailable, int code = 0)
      : std::runtime_error(msg), unavailable_(unavailable), code_(code) {}
  bool unavailable() const noexcept { return unavailable_; }
  int code() const noexcept { return code_; }

 private:
  bool unavailable_;
  int code_;
};

struct KeyValue {
  std::string key, value;
  int64_t create_revision = 0, mod_revision = 0, version = 0;
};

struct RangeResult {
  int64_t revision = 0;     ///< the store revision the answer is from
  uint64_t cluster_id = 0;  ///< the header's cluster_id (0: not given)
  int64_t count = 0;        ///< keys in the range (also with count_only)
  bool more = false;        ///< a limit left keys of the range out
  std::vector<KeyValue> kvs;
};

struct TxnResult {
  bool succeeded = false;  ///< the compares held and the success ops ran
  int64_t revision = 0;
  /// The txn was sent more than once (an attempt failed or went unanswered):
  /// an earlier attempt may have run, so failed compares may be its own doing.
  bool resent = false;
};

struct WatchEvent {
  bool is_delete = false;
  KeyValue kv;  ///< a delete carries the key and its mod_revision only
};

/// One message of the watch stream.
struct WatchMessage {
  int64_t revision = 0;          ///< header revision
  uint64_t cluster_id = 0;       ///< header cluster_id (0: not given)
  bool created = false;          ///< the answer to the create request
  bool canceled = false;         ///< the watch ended (compaction, or an error)
  int64_t compact_revision = 0;  ///< canceled because start_revision was compacted: re-list
  std::string cancel_reason;
  /// A progress notification: no events, and every change of the watched
  /// range up to `revision` was sent before it (neither created nor canceled).
  bool progress = false;
  std::string error;               ///< the stream failed ({"error": ...}); the text
  std::vector<WatchEvent> events;  ///< in revision order
};

/// A comparison of a txn; every one is "target == value". With range_end set,
/// it must hold for every key of [key, range_end) (an empty range compares as a
/// missing key: create_revision 0).
struct Compare {
  enum class Target { create_revision, mod_revision };
  std::string key, range_end;
  Target target = Target::mod_revision;
  int64_t value = 0;
};

/// A put or a delete of one key.
struct Op {
  bool is_delete = false;
  std::string key, value;
};

// Request bodies (JSON).
/// limit: at most this many keys (0: all); revision: read the store as it was
/// at that revision (0: the latest).
std::string range_request(std::string_view key, std::string_view range_end, bool count_only = false, int64_t limit = 0,
                          int64_t revision = 0);
/// A watch of [key, range_end) from `start_revision` on, with progress
/// notifications: etcd then sends, on a watch that has nothing to report, a
/// message with no events whose header revision says that every change up to
/// it was sent (every 10 minutes by default, etcd's
/// --experimental-watch-progress-notify-interval).
std::string watch_create_request(std::string_view key, std::string_view range_end, int64_t start_revision);
std::string txn_request(const std::vector<Compare>& compares, const std::vector<Op>& success);

// Response parsers; throw EtcdError (not unavailable) on malformed input.
RangeResult parse_range_response(std::string_view json);
TxnResult parse_txn_response(std::string_view json);
WatchMessage parse_watch_message(std::string_view json);
/// Why a node that listed etcd (`listed_cluster_id`, and applied up to
/// `applied_revision`) must list it again, given what a member's answer header
/// says (`cluster_id`, `revision`; 0 where the header leaves one out):
/// `other_cluster` when the cluster_id differs (etcd was wiped and created
/// anew, or the endpoints now lead to another cluster: its revisions mean
/// other changes, whatever their numbers), `rewound` when the revision is
/// below the one applied (a wiped data dir, an older snapshot; from a member
/// that may only lag its leader, the caller confirms with a quorum read).
enum class Resync { none, other_cluster, rewound };
Resync resync_reason(uint64_t listed_cluster_id, int64_t applied_revision, uint64_t cluster_id, int64_t revision);

/// The message of a gateway error body ({"error": "...", "code": N}), or the body itself.
std::string error_message(std::string_view body, int& code);

/// Reads an HTTP/1.1 response from a socket: the head, then the body as it
/// arrives. Used for both the one-shot requests and the watch stream.
class ResponseReader {
 public:
  ResponseReader();
  ResponseReader(const ResponseReader&) = delete;  // the parser points into fields_
  ResponseReader& operator=(const ResponseReader&) = delete;
  /// Feeds received bytes; body data is appended to `body`. Returns true once
  /// the response is complete. Throws EtcdError on a malformed response.
  bool feed(std::string_view bytes, std::string& body);
  /// The peer closed: returns true if the response was complete (or ran until close).
  bool finish();
  bool head_done() const noexcept { return head_done_; }
  int status() const noexcept { return status_; }

 private:
  std::vector<http::Field> fields_;
  http::Parser parser_;
  http::BodyDecoder body_;
  std::string head_buf_;
  bool head_done_ = false;
  bool done_ = false;
  int status_ = 0;
};

/// One POST on a new connection ("Connection: close"), within timeout_ms.
/// Returns the status and body; throws EtcdError (unavailable) on I/O failure.
struct HttpReply {
  int status = 0;
  std::string body;
};
HttpReply http_post(const core::SockAddr& to, std::string_view path, std::string_view body, uint32_t timeout_ms);

/// The members of one etcd cluster, used in turn: a request goes to the
/// current member and moves on to the next while members are unavailable.
class Etcd {
 public:
  /// retry_ms: how long post() goes on trying (every 100 ms) while every
  /// member is unavailable (0: one round). A txn retried after a lost answer
  /// or "leader changed" may have been applied: its compares then fail
  /// (TxnResult::resent tells the caller to look); nothing is applied twice.
  Etcd(std::vector<std::string> urls, std::vector<core::SockAddr> addrs, uint32_t timeout_ms, uint32_t retry_ms = 0);

  RangeResult range(std::string_view key, std::string_view range_end = {}, bool count_only = false);
  /// Every key of [key, range_end), read in pages of `page` keys, all at the
  /// revision of the first page (as etcd's clients list: each next page
  /// starts after the last key of the one before), so the answer is one
  /// consistent snapshot, its `revision` the one to watch from + 1, however
  /// many keys there are; one range would bring them all in one answer,
  /// which etcd or the timeout may not allow. A page whose revision was
  /// compacted meanwhile starts the list over at the latest revision.
  RangeResult list(std::string_view key, std::string_view range_end, int64_t page = kListPage);
  static constexpr int64_t kListPage = 1000;  ///< etcd's mirror syncer reads 1000 keys a page too
  TxnResult txn(const std::vector<Compare>& compares, const std::vector<Op>& success);
  /// Compacts the history up to `revision` (tests and operators).
  void compact(int64_t revision);

  size_t current() const noexcept { return current_; }
  const std::string& url() const noexcept { return urls_[current_]; }
  const core::SockAddr& addr() const noexcept { return addrs_[current_]; }
  uint32_t timeout_ms() const noexcept { return timeout_ms_; }
  /// Makes the next member current (after a failure of the current one).
  void next() noexcept { current_ = (current_ + 1) % urls_.size(); }

  /// POSTs to the current member, then to the others in turn while they are
  /// unavailable. Returns the body of a 200 answer; throws EtcdError.
  std::string post(std::string_view path, std::string_view body);

 private:
  std::string post_round(std::string_view path, std::string_view body);
  uint32_t attempts_ = 0;  // requests sent by the last post() that may have run (not refused with 404 or 429)

  std::vector<std::string> urls_;
  std::vector<core::SockAddr> addrs_;
  uint32_t timeout_ms_;
  uint32_t retry_ms_;
  size_t current_ = 0;
};

/// The watch stream: one long-lived POST /v3/watch whose chunked answer
/// carries one JSON message per line.
class WatchStream {
 public:
  /// Connects to `to`, sends the create request and returns; the answer is
  /// read with read_available(). Throws EtcdError (unavailable).
  void open(const core::SockAddr& to, std::string_view url, std::string_view create_body, uint32_t timeout_ms);
  int fd() const noexcept { return fd_.get(); }
  bool is_open() const noexcept { return static_cast<bool>(fd_); }
  void close() noexcept { fd_.reset(); }
  /// Reads what the socket has (it must be readable, or this returns at once)
  /// and appends the complete messages. Throws EtcdError (unavailable) when the
  /// stream ends or fails.
  void read_available(std::vector<WatchMessage>& out);

 private:
  core::UniqueFd fd_;
  std::string url_;
  std::unique_ptr<ResponseReader> reader_;
  std::string pending_;  ///< body bytes not yet ending in a newline
};

}  // namespace gw::cluster
