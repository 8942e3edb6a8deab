#include "gw/cluster/etcd.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <fmt/format.h>
#include <simdjson.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "gw/core/base64.hpp"
#include "gw/core/clock.hpp"
#include "gw/net/socket.hpp"

namespace gw::cluster {

using simdjson::dom::element;

// ---------------------------------------------------------------- JSON bodies

namespace {

std::string b64(std::string_view s) {
  return core::base64_encode(s);
}

[[noreturn]] void bad(std::string_view what, std::string_view json) {
  throw EtcdError(fmt::format("etcd answered with unexpected JSON ({}): {:.200}", what, json), false);
}

element parse_doc(simdjson::dom::parser& p, std::string_view json) {
  element root;
  if (p.parse(json.data(), json.size()).get(root) != simdjson::SUCCESS || !root.is_object()) bad("not an object", json);
  return root;
}

// int64 fields come as JSON strings ("12"); accept numbers too.
int64_t get_i64(element obj, std::string_view key, std::string_view json) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS) return 0;  // proto3 leaves out zero values
  int64_t x = 0;
  if (v.get(x) == simdjson::SUCCESS) return x;
  std::string_view s;
  if (v.get(s) != simdjson::SUCCESS) bad(key, json);
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
  if (ec != std::errc() || end != s.data() + s.size()) bad(key, json);
  return x;
}

// uint64 fields (cluster_id, member_id) come as JSON strings too, often above
// INT64_MAX.
uint64_t get_u64(element obj, std::string_view key, std::string_view json) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS) return 0;
  uint64_t x = 0;
  if (v.get(x) == simdjson::SUCCESS) return x;
  std::string_view s;
  if (v.get(s) != simdjson::SUCCESS) bad(key, json);
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
  if (ec != std::errc() || end != s.data() + s.size()) bad(key, json);
  return x;
}

bool get_bool(element obj, std::string_view key) {
  bool b = false;
  return obj[key].get(b) == simdjson::SUCCESS && b;
}

std::string get_b64(element obj, std::string_view key, std::string_view json) {
  std::string_view s;
  if (obj[key].get(s) != simdjson::SUCCESS) return {};
  std::string out;
  if (!core::base64_decode(s, out)) bad(fmt::format("{} is not base64", key), json);
  return out;
}

KeyValue parse_kv(element kv, std::string_view json) {
  KeyValue r;
  r.key = get_b64(kv, "key", json);
  r.value = get_b64(kv, "value", json);
  r.create_revision = get_i64(kv, "create_revision", json);
  r.mod_revision = get_i64(kv, "mod_revision", json);
  r.version = get_i64(kv, "version", json);
  return r;
}

int64_t header_revision(element root, std::string_view json) {
  element h;
  if (root["header"].get(h) != simdjson::SUCCESS) return 0;
  return get_i64(h, "revision", json);
}

uint64_t header_cluster_id(element root, std::string_view json) {
  element h;
  if (root["header"].get(h) != simdjson::SUCCESS) return 0;
  return get_u64(h, "cluster_id", json);
}

}  // namespace

std::string range_request(std::string_view key, std::string_view range_end, bool count_only, int64_t limit,
                          int64_t revision) {
  std::string r = fmt::format("{{\"key\": \"{}\"", b64(key));
  if (!range_end.empty()) r += fmt::format(", \"range_end\": \"{}\"", b64(range_end));
  if (count_only) r += ", \"count_only\": true";
  if (limit > 0) r += fmt::format(", \"limit\": \"{}\"", limit);
  if (revision > 0) r += fmt::format(", \"revision\": \"{}\"", revision);
  return r + "}";
}

std::string watch_create_request(std::string_view key, std::string_view range_end, int64_t start_revision) {
  return fmt::format(
      "{{\"create_request\": {{\"key\": \"{}\", \"range_end\": \"{}\", \"start_revision\": \"{}\", "
      "\"progress_notify\": true}}}}",
      b64(key), b64(range_end), start_revision);
}

std::string txn_request(const std::vector<Compare>& compares, const std::vector<Op>& success) {
  std::string r = "{\"compare\": [";
  for (size_t i = 0; i < compares.size(); ++i) {
    const auto& c = compares[i];
    const bool create = c.target == Compare::Target::create_revision;
    r += fmt::format("{}{{\"key\": \"{}\", ", i ? ", " : "", b64(c.key));
    if (!c.range_end.empty()) r += fmt::format("\"range_end\": \"{}\", ", b64(c.range_end));
    r += fmt::format("\"target\": \"{}\", \"result\": \"EQUAL\", \"{}\": \"{}\"}}", create ? "CREATE" : "MOD",
                     create ? "create_revision" : "mod_revision", c.value);
  }
  r += "], \"success\": [";
  for (size_t i = 0; i < success.size(); ++i) {
    const auto& o = success[i];
    if (o.is_delete) r += fmt::format("{}{{\"request_delete_range\": {{\"key\": \"{}\"}}}}", i ? ", " : "", b64(o.key));
    else
      r += fmt::format("{}{{\"request_put\": {{\"key\": \"{}\", \"value\": \"{}\"}}}}", i ? ", " : "", b64(o.key),
                       b64(o.value));
  }
  return r + "]}";
}

RangeResult parse_range_response(std::string_view json) {
  simdjson::dom::parser p;
  element root = parse_doc(p, json);
  RangeResult r;
  r.revision = header_revision(root, json);
  r.cluster_id = header_cluster_id(root, json);
  r.count = get_i64(root, "count", json);
  r.more = get_bool(root, "more");
  simdjson::dom::array kvs;
  if (root["kvs"].get(kvs) == simdjson::SUCCESS)
    for (element kv : kvs) r.kvs.push_back(parse_kv(kv, json));
  return r;
}

TxnResult parse_txn_response(std::string_view json) {
  simdjson::dom::parser p;
  element root = parse_doc(p, json);
  TxnResult r;
  r.revision = header_revision(root, json);
  r.succeeded = get_bool(root, "succeeded");
  return r;
}

WatchMessage parse_watch_message(std::string_view json) {
  simdjson::dom::parser p;
  element root = parse_doc(p, json);
  WatchMessage m;
  element err;
  if (root["error"].get(err) == simdjson::SUCCESS) {
    std::string_view s;
    m.error = err["message"].get(s) == simdjson::SUCCESS ? std::string(s) : std::string("watch stream error");
    return m;
  }
  element res;
  if (root["result"].get(res) != simdjson::SUCCESS) bad("no result", json);
  m.revision = header_revision(res, json);
  m.cluster_id = header_cluster_id(res, json);
  m.created = get_bool(res, "created");
  m.canceled = get_bool(res, "canceled");
  m.compact_revision = get_i64(res, "compact_revision", json);
  std::string_view reason;
  if (res["cancel_reason"].get(reason) == simdjson::SUCCESS) m.cancel_reason = reason;
  simdjson::dom::array evs;
  if (res["events"].get(evs) == simdjson::SUCCESS)
    for (element e : evs) {
      WatchEvent we;
      std::string_view type;
      if (e["type"].get(type) == simdjson::SUCCESS) {
        if (type == "DELETE") we.is_delete = true;
        else if (type != "PUT") bad("event type", json);
      }
      element kv;
      if (e["kv"].get(kv) != simdjson::SUCCESS) bad("event without kv", json);
      we.kv = parse_kv(kv, json);
      m.events.push_back(std::move(we));
    }
  // etcd's progress notification is a result with a header and nothing else.
  m.progress = !m.created && !m.canceled && m.events.empty() && m.revision > 0;
  return m;
}

Resync resync_reason(uint64_t listed_cluster_id, int64_t applied_revision, uint64_t cluster_id, int64_t revision) {
  if (listed_cluster_id != 0 && cluster_id != 0 && cluster_id != listed_cluster_id) return Resync::other_cluster;
  if (revision > 0 && revision < applied_revision) return Resync::rewound;
  return Resync::none;
}

std::string error_message(std::string_view body, int& code) {
  code = 0;
  simdjson::dom::parser p;
  element root;
  if (p.parse(body.data(), body.size()).get(root) == simdjson::SUCCESS && root.is_object()) {
    int64_t c = 0;
    if (root["code"].get(c) == simdjson::SUCCESS) code = static_cast<int>(c);
    std::string_view s;
    if (root["message"].get(s) == simdjson::SUCCESS || root["error"].get(s) == simdjson::SUCCESS) return std::string(s);
  }
  // Not JSON (an HTML error page of a proxy): its first 200 bytes on one
  // line, each run of whitespace or control bytes one space.
  std::string s;
  for (char ch : body.substr(0, 200)) {
    const bool space = static_cast<unsigned char>(ch) < 0x20 || ch == ' ' || ch == 0x7f;
    if (!space) s += ch;
    else if (!s.empty() && s.back() != ' ') s += ' ';
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// ---------------------------------------------------------------- HTTP

ResponseReader::ResponseReader() : fields_(64), parser_(http::Parser::Kind::response, fields_) {
  parser_.reset(http::Method::post);
}

bool ResponseReader::feed(std::string_view bytes, std::string& body) {
  if (done_) return true;
  std::string_view rest = bytes;
  if (!head_done_) {
    head_buf_.append(bytes);
    auto st = parser_.parse(head_buf_);
    if (st == http::ParseStatus::error)
      throw EtcdError(fmt::format("malformed HTTP response from etcd ({})", http::error_name(parser_.error())), true);
    if (st == http::ParseStatus::need_more) return false;
    if (parser_.head().informational()) {  // 100 Continue: the real answer follows
      head_buf_.erase(0, parser_.head().head_len);
      parser_.reset(http::Method::post);
      std::string again;
      again.swap(head_buf_);
      return feed(again, body);
    }
    head_done_ = true;
    status_ = parser_.head().status;
    body_.reset(parser_.head());
    rest = std::string_view(head_buf_).substr(parser_.head().head_len);
  }
  while (!rest.empty()) {
    http::BodyStep s = body_.decode(rest);
    body.append(s.data);
    rest.remove_prefix(s.consumed);
    if (s.status == http::BodyStatus::error)
      throw EtcdError(fmt::format("malformed HTTP body from etcd ({})", http::error_name(s.error)), true);
    if (s.status == http::BodyStatus::done) break;
  }
  if (body_.done()) done_ = true;
  if (head_done_) head_buf_.clear();  // every byte is consumed; later calls feed body bytes only
  return done_;
}

bool ResponseReader::finish() {
  if (done_) return true;
  return head_done_ && body_.finish() == http::Error::none;
}

namespace {

// One-shot requests close the connection (and ask for a leader: the gateway
// passes Grpc-Metadata-Hasleader to etcd as the "hasleader" gRPC metadata, so
// a member without a leader refuses at once and the next member is tried).
// The watch stays open and does not ask: during an election it simply waits,
// and the sync process's quorum probe finds a member cut off for good.
std::string request_text(std::string_view path, const core::SockAddr& to, std::string_view body, bool oneshot) {
  return fmt::format("POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{}",
                     path, to.to_string(), body.size(),
                     oneshot ? "Connection: close\r\nGrpc-Metadata-Hasleader: true\r\n" : "", body);
}

int remaining_ms(uint64_t deadline) {
  uint64_t now = core::monotonic_ms();
  return now >= deadline ? 0 : static_cast<int>(deadline - now);
}

void send_all(int fd, std::string_view data, uint64_t deadline, const std::string& who) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      throw EtcdError(fmt::format("etcd {}: send: {}", who, std::strerror(errno)), true);
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, remaining_ms(deadline)) == 0)
      throw EtcdError(fmt::format("etcd {}: timed out sending the request", who), true);
  }
}

core::UniqueFd connect_to(const core::SockAddr& to, uint32_t timeout_ms, const std::string& who) {
  int err = 0;
  core::UniqueFd fd(net::connect_wait(to, timeout_ms, err));
  if (!fd) throw EtcdError(fmt::format("etcd {}: cannot connect: {}", who, std::strerror(err)), true);
  return fd;
}

}  // namespace

HttpReply http_post(const core::SockAddr& to, std::string_view path, std::string_view body, uint32_t timeout_ms) {
  const uint64_t deadline = core::monotonic_ms() + timeout_ms;
  const std::string who = "http://" + to.to_string();
  core::UniqueFd fd = connect_to(to, timeout_ms, who);
  send_all(fd.get(), request_text(path, to, body, true), deadline, who);
  ResponseReader reader;
  HttpReply reply;
  char buf[16384];
  for (;;) {
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      if (reader.feed(std::string_view(buf, static_cast<size_t>(n)), reply.body)) break;
      continue;
    }
    if (n == 0) {
      if (reader.finish()) break;
      throw EtcdError(fmt::format("etcd {}: the connection closed before the answer was complete", who), true);
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) throw EtcdError(fmt::format("etcd {}: recv: {}", who, std::strerror(errno)), true);
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, remaining_ms(deadline)) == 0)
      throw EtcdError(fmt::format("etcd {}: no answer within {} ms", who, timeout_ms), true);
  }
  reply.status = reader.status();
  return reply;
}

// ---------------------------------------------------------------- Etcd

Etcd::Etcd(std::vector<std::string> urls, std::vector<core::SockAddr> addrs, uint32_t timeout_ms, uint32_t retry_ms)
    : urls_(std::move(urls)), addrs_(std::move(addrs)), timeout_ms_(timeout_ms), retry_ms_(retry_ms) {
  if (urls_.empty() || urls_.size() != addrs_.size()) throw EtcdError("no etcd endpoint given", false);
}

std::string Etcd::post(std::string_view path, std::string_view body) {
  const uint64_t deadline = core::monotonic_ms() + retry_ms_;
  attempts_ = 0;
  for (;;) {
    try {
      return post_round(path, body);
    } catch (const EtcdError& e) {
      // Every member unavailable: an election, or a restart under way.
      if (!e.unavailable() || core::monotonic_ms() + 100 >= deadline) throw;
      ::poll(nullptr, 0, 100);
    }
  }
}

std::string Etcd::post_round(std::string_view path, std::string_view body) {
  std::string errors;
  bool unavailable = false;  // some member may answer if asked again
  for (size_t tries = 0; tries < urls_.size(); ++tries) {
    try {
      ++attempts_;
      HttpReply r = http_post(addrs_[current_], path, body, timeout_ms_);
      if (r.status == 200) return std::move(r.body);
      int code = 0;
      std::string msg = error_message(r.body, code);
      std::string text = fmt::format("etcd {}: HTTP {}: {}", urls_[current_], r.status, msg);
      // 404 (no v3 gateway at that endpoint: a proxy, another service) and
      // 429 (a rate limit, or etcd's "too many requests") refuse the request
      // without running it: not an attempt that may have run (a txn's failed
      // compares after it are not its own doing).
      if (r.status == 404 || r.status == 429) --attempts_;
      // gRPC codes: 14 unavailable, 4 deadline exceeded; HTTP 5xx from the
      // gateway (or a proxy in front); 429 (transient). Each is worth the next
      // member and a retry: every txn gw sends is guarded by its compares, so
      // one that ran already fails them and is never applied twice.
      if (code == 14 || code == 4 || r.status >= 500 || r.status == 429) throw EtcdError(text, true);
      // 404: the next member may have a gateway; asking this one again will not.
      if (r.status == 404) {
        errors += errors.empty() ? text : fmt::format("; {}", text);
        if (tries + 1 < urls_.size()) next();
        continue;
      }
      throw EtcdError(text, false, code);
    } catch (const EtcdError& e) {
      if (!e.unavailable()) throw;
      unavailable = true;
      errors += errors.empty() ? e.what() : fmt::format("; {}", e.what());
      if (tries + 1 < urls_.size()) next();
    }
  }
  throw EtcdError(urls_.size() == 1 ? errors : fmt::format("no etcd member answered: {}", errors), unavailable);
}

RangeResult Etcd::range(std::string_view key, std::string_view range_end, bool count_only) {
  return parse_range_response(post("/v3/kv/range", range_request(key, range_end, count_only)));
}

RangeResult Etcd::list(std::string_view key, std::string_view range_end, int64_t page) {
  // A page read at the first page's revision after etcd compacted it away
  // fails (OutOfRange); the list starts over, a few times at most (etcd
  // compacting faster than a list takes is for the caller's backoff).
  for (int restarts = 0;; ++restarts) {
    RangeResult all;
    std::string from(key);
    try {
      for (;;) {
        RangeResult r =
            parse_range_response(post("/v3/kv/range", range_request(from, range_end, false, page, all.revision)));
        if (all.revision == 0) {
          // etcd's header carries its latest revision, also for a page read at
          // an older one: the first page's is the list's.
          all.revision = r.revision;
          all.cluster_id = r.cluster_id;
          all.count = r.count;
          if (all.revision <= 0) bad("no header revision", "");
        } else if (r.cluster_id != all.cluster_id) {
          throw EtcdError(
              fmt::format("etcd {}: the pages of a list came from two clusters (cluster_id {:x}, then {:x})", url(),
                          all.cluster_id, r.cluster_id),
              true);
        }
        if (r.more && r.kvs.empty()) bad("more keys, but none in the page", "");
        for (auto& kv : r.kvs) all.kvs.push_back(std::move(kv));
        if (!r.more) return all;
        from = all.kvs.back().key;
        from.push_back('\0');  // the next key after the last one read
      }
    } catch (const EtcdError& e) {
      constexpr int kOutOfRange = 11;  // gRPC code of etcd's ErrCompacted (and ErrFutureRev)
      if (e.code() != kOutOfRange || all.revision == 0 || restarts >= 3) throw;
    }
  }
}

TxnResult Etcd::txn(const std::vector<Compare>& compares, const std::vector<Op>& success) {
  TxnResult r = parse_txn_response(post("/v3/kv/txn", txn_request(compares, success)));
  r.resent = attempts_ > 1;
  return r;
}

void Etcd::compact(int64_t revision) {
  post("/v3/kv/compaction", fmt::format("{{\"revision\": \"{}\"}}", revision));
}

// ---------------------------------------------------------------- WatchStream

void WatchStream::open(const core::SockAddr& to, std::string_view url, std::string_view create_body,
                       uint32_t timeout_ms) {
  close();
  url_ = url;
  pending_.clear();
  reader_ = std::make_unique<ResponseReader>();
  const uint64_t deadline = core::monotonic_ms() + timeout_ms;
  core::UniqueFd fd = connect_to(to, timeout_ms, url_);
  send_all(fd.get(), request_text("/v3/watch", to, create_body, false), deadline, url_);
  fd_ = std::move(fd);
}

void WatchStream::read_available(std::vector<WatchMessage>& out) {
  char buf[65536];
  std::string body;
  bool complete = false, eof = false;
  for (;;) {
    ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      complete = reader_->feed(std::string_view(buf, static_cast<size_t>(n)), body);
      if (complete) break;
      continue;
    }
    if (n == 0) {
      eof = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) break;
    throw EtcdError(fmt::format("etcd {}: watch: {}", url_, std::strerror(errno)), true);
  }
  if (reader_->head_done() && reader_->status() != 200) {
    // An error answer instead of a stream: read it whole for its message.
    if (!complete && !eof) {
      pending_ += body;
      return;
    }
    int code = 0;
    throw EtcdError(
        fmt::format("etcd {}: watch: HTTP {}: {}", url_, reader_->status(), error_message(pending_ + body, code)),
        true);
  }
  pending_ += body;
  size_t start = 0;
  for (size_t nl; (nl = pending_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(pending_.data() + start, nl - start);
    if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
    out.push_back(parse_watch_message(line));
  }
  pending_.erase(0, start);
  if (complete || eof) throw EtcdError(fmt::format("etcd {}: the watch stream ended", url_), true);
}

}  // namespace gw::cluster
