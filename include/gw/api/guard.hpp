#pragma once
// The guard of http routes: auth (key-auth, basic-auth, jwt, allow lists)
// then limit_req, run by HttpProxy::start_request once a route matched:
//
//   route ─► auth ─ 401 (WWW-Authenticate) / 403 (allow list) ─► consumer
//         ─► limit_req (key ip | header | consumer) ─ 429 (Retry-After) / 503 (table full)
//         ─► rules ─► upstream
//
// key-auth consumers live in the shm table (gwctl add/remove consumer) as
// SHA-256 hashes of their keys; refresh() copies them after each table
// change. A presented key is hashed and compared with every consumer's hash
// in constant time. limit_req buckets live in the shm limit table, shared
// by all workers. A request without the limit key (the header is absent or
// empty) is not limited, as nginx skips an empty key.
//
// A refusal of auth (400, 401, 403) tells the client no more than its status
// and challenge; why it was refused goes to the worker's log (warn), at most
// one line a second per worker, with how many it has refused so far.
//
// One per worker; worker thread only; check() is noexcept and allocates
// nothing (refresh() and the constructor do).

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gw/api/basic_auth.hpp"
#include "gw/api/consumer.hpp"
#include "gw/api/jwt.hpp"
#include "gw/api/limit_table.hpp"
#include "gw/config/config.hpp"
#include "gw/core/clock.hpp"
#include "gw/http/parser.hpp"
#include "gw/shm/segment.hpp"

namespace gw::api {

/// A query argument name as sent, against a configured one.
enum class QueryName { other, match, malformed, alike };
/// Whether `raw` (a query argument's name as sent) is `name` once decoded as
/// the host's query parser decodes it (%XX, and '+' as a space): "api%6Bey" is
/// "apikey". `malformed`: a '%' without two hex digits, which hosts read in
/// different ways. `alike`: not `name`, but PHP or Rack 2 reads it as `name`.
/// PHP drops leading spaces, reads ' ' and '.' as '_', ends a name at a NUL
/// or at a '[' that a ']' follows (an array), and reads a '[' that none
/// follows as '_' ("%20apikey", "api.key" and "api[key" for "api_key",
/// "apikey[]"). Rack 2 skips leading brackets and ends the name at the next
/// one ("[apikey", "apikey]", "apikey[x"). Compared in place: no copy, no
/// allocation.
QueryName query_name(std::string_view raw, std::string_view name) noexcept;

/// What the guard looks at in a request.
struct GuardRequest {
  const http::Head* head = nullptr;
  std::string_view target;     ///< the request target as sent (for query arguments)
  std::string_view client_ip;  ///< the client address as text (nginx's $remote_addr)
};

/// The guard's answer: pass (status 0), or the status to answer with and the
/// extra header lines for it (valid until the next check()).
struct Verdict {
  int status = 0;
  std::string_view headers;  ///< "WWW-Authenticate: ...\r\n", "Retry-After: 3\r\n"
};

class Guard {
 public:
  /// Monotonic microseconds, for limit_req's buckets (the caller's now_ms is
  /// per loop turn: too coarse for rates above 1,000/s). Tests inject a fake.
  using ClockUs = uint64_t (*)() noexcept;
  Guard(const config::Config& cfg, const shm::Segment& seg, uint32_t worker, ClockUs clock_us = &core::monotonic_us);
  ~Guard();
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

  /// Copies the key-auth consumers of a new table. Allocates.
  void refresh(const shm::Table& t);
  /// Whether route `route` (index in its listener's routes) has auth or limit_req.
  bool active(uint32_t listener, uint32_t route) const noexcept {
    return listener < routes_.size() && route < routes_[listener].size() && routes_[listener][route].active;
  }
  /// Runs auth and limit_req for a request of that route. Sets `consumer`
  /// (cleared first) when auth found one. `now_ms`: monotonic.
  Verdict check(uint32_t listener, uint32_t route, const GuardRequest& rq, ConsumerName& consumer,
                uint64_t now_ms) noexcept;

 private:
  struct RouteGuard {
    bool active = false;
    const config::AuthConf* auth = nullptr;  ///< type none: no auth
    std::unique_ptr<BasicAuth> basic;
    std::unique_ptr<JwtVerifier> jwt;
    const config::LimitReqConf* limit = nullptr;  ///< null: no limit_req
    RateParams rate;
    uint64_t scope = 0;
    bool underscores = false;  ///< the listener passes '_' field names upstream (X_Api_Key reads as X-Api-Key)
    std::string name;          ///< "LISTENER/ROUTE", for the log
  };
  struct Consumer {
    uint8_t digest[shm::kSha256Len];
    char name[shm::kNameCap];
  };

  /// On a refusal, `why` says why (for the log; static text) and `user` names
  /// the basic-auth user whose password was wrong.
  Verdict authenticate(const RouteGuard& g, const GuardRequest& rq, ConsumerName& consumer, const char*& why,
                       std::string_view& user) noexcept;
  /// Logs a refusal of auth, at most once a second (`now_ms`: monotonic).
  void log_refusal(const RouteGuard& g, const GuardRequest& rq, int status, std::string_view why, std::string_view user,
                   uint64_t now_ms) noexcept;
  Verdict limit(const RouteGuard& g, const GuardRequest& rq, const ConsumerName& consumer, uint64_t now_ms) noexcept;
  Verdict reject(int status, std::string_view header) noexcept;
  void bump(std::atomic<uint64_t> shm::GuardCounters::*field) noexcept;

  ClockUs clock_us_;
  uint64_t seed_;
  LimitTable table_;
  shm::GuardCounters& counters_;
  std::vector<std::vector<RouteGuard>> routes_;  ///< by listener, route
  std::vector<Consumer> consumers_;
  std::unique_ptr<JwtScratch> jwt_scratch_;
  std::unique_ptr<BasicCache> basic_cache_;
  char headers_[256] = {};
  char creds_[kMaxBasicCredentials] = {};
  uint64_t last_log_ms_ = 0;  ///< when a refusal was last logged
  bool logged_ = false;       ///< whether one was
};

}  // namespace gw::api
