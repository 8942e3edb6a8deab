#pragma once
// Parsing and checks of the guard's config keys (include/gw/config/api.hpp):
// route "limit_req" and "auth", listener "limit_conn", top-level "consumers".

#include <string>
#include <vector>

#include "config/json_util.hpp"
#include "gw/config/config.hpp"

namespace gw::config {

void parse_limit_req(Ctx& c, simdjson::dom::element e, const std::string& path, LimitReqConf& out);
void parse_limit_conn(Ctx& c, simdjson::dom::element e, const std::string& path, LimitConnConf& out);
void parse_auth(Ctx& c, simdjson::dom::element e, const std::string& path, AuthConf& out);
void parse_consumers(Ctx& c, simdjson::dom::element e, const std::string& path, std::vector<ConsumerConf>& out);
/// Checks across keys: limit_req "consumer" needs auth on its route; the
/// consumers fit shm.max_consumers.
void check_guard(Ctx& c, const Config& cfg);

/// A name passed upstream as X-Consumer-Username: 1..63 visible ASCII bytes.
bool consumer_name_ok(std::string_view name) noexcept;

}  // namespace gw::config
