#pragma once
// The consumer a request was authenticated as, kept in the client connection
// (HttpProxy::Conn::consumer) for the upstream header X-Consumer-Username and
// for the access log. Fixed size: no allocation.

#include <cstdint>
#include <cstring>
#include <string_view>

#include "gw/config/api.hpp"

namespace gw::api {

struct ConsumerName {
  char name[config::kMaxConsumerName + 1] = {};
  uint8_t len = 0;  ///< 0: no consumer (the route has no auth, or it failed)

  std::string_view view() const noexcept { return {name, len}; }
  void clear() noexcept { len = 0; }
  /// Names longer than kMaxConsumerName are cut (the config and the table refuse them).
  void set(std::string_view s) noexcept {
    len = static_cast<uint8_t>(s.size() < config::kMaxConsumerName ? s.size() : config::kMaxConsumerName);
    if (len) std::memcpy(name, s.data(), len);
    name[len] = '\0';
  }
};

}  // namespace gw::api
