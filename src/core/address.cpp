#include "gw/core/address.hpp"

#include <arpa/inet.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace gw::core {

socklen_t SockAddr::to_sockaddr(sockaddr_storage& out) const noexcept {
  std::memset(&out, 0, sizeof(out));
  if (family == AF_INET6) {
    auto* s = reinterpret_cast<sockaddr_in6*>(&out);
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    std::memcpy(&s->sin6_addr, ip, 16);
    return sizeof(sockaddr_in6);
  }
  auto* s = reinterpret_cast<sockaddr_in*>(&out);
  s->sin_family = AF_INET;
  s->sin_port = htons(port);
  std::memcpy(&s->sin_addr, ip, 4);
  return sizeof(sockaddr_in);
}

SockAddr SockAddr::from_sockaddr(const sockaddr* sa) noexcept {
  SockAddr a;
  if (sa->sa_family == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(sa);
    a.family = AF_INET6;
    a.port = ntohs(s->sin6_port);
    std::memcpy(a.ip, &s->sin6_addr, 16);
  } else if (sa->sa_family == AF_INET) {
    const auto* s = reinterpret_cast<const sockaddr_in*>(sa);
    a.family = AF_INET;
    a.port = ntohs(s->sin_port);
    std::memcpy(a.ip, &s->sin_addr, 4);
  }
  return a;
}

std::string SockAddr::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == AF_INET6) {
    ::inet_ntop(AF_INET6, ip, buf, sizeof(buf));
    return fmt::format("[{}]:{}", buf, port);
  }
  if (family == AF_INET) {
    ::inet_ntop(AF_INET, ip, buf, sizeof(buf));
    return fmt::format("{}:{}", buf, port);
  }
  return "(unset)";
}

bool parse_address(std::string_view text, SockAddr& out, std::string& why) {
  std::string_view host, port;
  const bool bracketed = !text.empty() && text.front() == '[';
  if (bracketed) {
    auto close = text.find(']');
    if (close == std::string_view::npos) {
      why = "missing ']' after an IPv6 address";
      return false;
    }
    host = text.substr(1, close - 1);
    if (close + 1 >= text.size() || text[close + 1] != ':') {
      why = "missing port (expected [IPv6]:PORT)";
      return false;
    }
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      why = "missing port (expected IP:PORT)";
      return false;
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      // "fe80::1:8080": an address and a port, or an address alone?
      why = "an IPv6 address goes in brackets: [IPv6]:PORT";
      return false;
    }
  }
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535) {
    why = fmt::format("port must be an integer 1..65535, got \"{}\"", port);
    return false;
  }
  if (host.find('\0') != std::string_view::npos) {
    why = "the host part has a NUL byte";  // inet_pton would read only up to it
    return false;
  }
  std::string h(host);
  SockAddr a;
  a.port = static_cast<uint16_t>(p);
  if (bracketed) {
    // Brackets hold an IPv6 address only, as RFC 3986's IP-literal.
    if (::inet_pton(AF_INET6, h.c_str(), a.ip) != 1) {
      why =
          ::inet_pton(AF_INET, h.c_str(), a.ip) == 1
              ? fmt::format("\"{}\" in brackets is not an IPv6 address (an IPv4 address goes without them: IP:PORT)", h)
              : fmt::format("\"{}\" is not an IPv6 address", h);
      return false;
    }
    a.family = AF_INET6;
  } else if (::inet_pton(AF_INET, h.c_str(), a.ip) == 1) {
    a.family = AF_INET;
  } else {
    why = fmt::format("\"{}\" is not an IPv4 or IPv6 address (host names are not resolved)", h);
    return false;
  }
  out = a;
  return true;
}

bool Cidr::contains(const SockAddr& a) const noexcept {
  const uint8_t* ip_bytes = a.ip;
  uint16_t fam = a.family;
  // ::ffff:a.b.c.d (a dual-stack listener's IPv4 client) is matched as IPv4.
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (fam == AF_INET6 && family == AF_INET && std::memcmp(a.ip, kMapped, 12) == 0) {
    ip_bytes = a.ip + 12;
    fam = AF_INET;
  }
  if (fam != family) return false;
  const unsigned whole = prefix / 8, rest = prefix % 8;
  if (std::memcmp(ip_bytes, ip, whole) != 0) return false;
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xff00u >> rest);
  return (ip_bytes[whole] & mask) == ip[whole];
}

std::string Cidr::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family == AF_INET6 ? AF_INET6 : AF_INET, ip, buf, sizeof(buf));
  return fmt::format("{}/{}", buf, prefix);
}

bool parse_host_address(std::string_view text, SockAddr& out, std::string& why) {
  SockAddr a;
  if (!parse_address(text, a, why)) return false;
  static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  const bool mapped = a.family == AF_INET6 && std::memcmp(a.ip, kMappedPrefix, sizeof(kMappedPrefix)) == 0;
  const uint8_t* ip = mapped ? a.ip + 12 : a.ip;
  const size_t len = a.family == AF_INET || mapped ? 4 : 16;
  if (std::all_of(ip, ip + len, [](uint8_t b) { return b == 0; })) {
    why =
        "the unspecified address is not a host to connect to (a connect to it reaches this machine); "
        "give the host's own address, e.g. 127.0.0.1";
    return false;
  }
  out = a;
  return true;
}

bool parse_cidr(std::string_view text, Cidr& out, std::string& why) {
  if (text.find('\0') != std::string_view::npos) {
    why = "the address has a NUL byte";  // inet_pton would read only up to it
    return false;
  }
  std::string_view host = text, len;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    host = text.substr(0, slash);
    len = text.substr(slash + 1);
  }
  std::string h(host);
  Cidr c;
  unsigned max = 0;
  if (::inet_pton(AF_INET, h.c_str(), c.ip) == 1) {
    c.family = AF_INET;
    max = 32;
  } else if (::inet_pton(AF_INET6, h.c_str(), c.ip) == 1) {
    c.family = AF_INET6;
    max = 128;
  } else {
    why = fmt::format("\"{}\" is not an IPv4 or IPv6 address", h);
    return false;
  }
  unsigned p = max;
  if (text.find('/') != std::string_view::npos) {
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), p);
    if (len.empty() || ec != std::errc() || end != len.data() + len.size() || p > max) {
      why = fmt::format("prefix length must be an integer 0..{}, got \"{}\"", max, len);
      return false;
    }
  }
  c.prefix = static_cast<uint8_t>(p);
  for (unsigned bit = p; bit < max; ++bit)
    if (c.ip[bit / 8] & (0x80u >> (bit % 8))) {
      why = fmt::format("\"{}\" has bits set past its /{} prefix", text, p);
      return false;
    }
  // ::ffff:a.b.c.d/96+N is the IPv4 block a.b.c.d/N. Kept as IPv6 it matched
  // nothing: listeners are IPV6_V6ONLY, so an IPv4 client's address is IPv4.
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (c.family == AF_INET6 && c.prefix >= 96 && std::memcmp(c.ip, kMapped, sizeof(kMapped)) == 0) {
    std::memmove(c.ip, c.ip + 12, 4);
    std::memset(c.ip + 4, 0, sizeof(c.ip) - 4);
    c.family = AF_INET;
    c.prefix = static_cast<uint8_t>(c.prefix - 96);
  }
  out = c;
  return true;
}

bool parse_http_url(std::string_view url, SockAddr& out, std::string& why) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, 8) == "https://") {
    why = "https is not supported (gw talks plain HTTP to etcd; keep etcd on loopback or a private network)";
    return false;
  }
  if (url.substr(0, kScheme.size()) != kScheme) {
    why = "expected http://IP:PORT";
    return false;
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos) {
    why = "expected http://IP:PORT without a path";
    return false;
  }
  if (!parse_address(rest, out, why)) {
    why = "expected http://IP:PORT (host names are not resolved): " + why;
    return false;
  }
  return true;
}

}  // namespace gw::core
