#pragma once
// A socket address that is plain old data, so it can live in shared memory.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace gw::core {

struct SockAddr {
  uint16_t family = 0;  ///< AF_INET or AF_INET6; 0 = unset
  uint16_t port = 0;    ///< host byte order
  uint8_t ip[16] = {};  ///< network byte order; IPv4 uses the first 4 bytes

  /// Fills a sockaddr_storage; returns its length.
  socklen_t to_sockaddr(sockaddr_storage& out) const noexcept;
  static SockAddr from_sockaddr(const sockaddr* sa) noexcept;
  /// "127.0.0.1:80" or "[::1]:80".
  std::string to_string() const;
  bool operator==(const SockAddr&) const = default;
};

/// Parses "IPv4:PORT" or "[IPv6]:PORT" with a port 1..65535. On failure returns
/// false and sets `why` to a short reason ("missing port", "bad IP address", ...).
bool parse_address(std::string_view text, SockAddr& out, std::string& why);

/// parse_address() for an upstream host, the address gw connects to: the
/// unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0) is refused too. A
/// connect(2) to it reaches this machine (Linux takes it as a loopback
/// address), so a host written so would silently be whatever listens here.
bool parse_host_address(std::string_view text, SockAddr& out, std::string& why);

/// An address block ("10.0.0.0/8", "127.0.0.2", "::1/128"): plain old data,
/// so it can live in shared memory. A bare address is a /32 (or /128).
struct Cidr {
  uint8_t family = 0;   ///< AF_INET or AF_INET6 (both fit a byte); 0 = unset
  uint8_t prefix = 0;   ///< leading bits that must match
  uint8_t ip[16] = {};  ///< network byte order, bits past the prefix zero
  uint8_t reserved[6] = {};

  /// Whether `a` (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts as
  /// IPv4) lies in the block. Data plane: noexcept, no allocation.
  bool contains(const SockAddr& a) const noexcept;
  /// "10.0.0.0/8".
  std::string to_string() const;
  bool operator==(const Cidr&) const = default;
};

/// Parses "IP" or "IP/PREFIX". Bits past the prefix must be zero, as in
/// "10.1.0.0/16" (a typo such as "10.1.2.3/16" is refused, not rounded).
bool parse_cidr(std::string_view text, Cidr& out, std::string& why);

/// Parses "http://IP:PORT" (an optional trailing "/" allowed) as etcd endpoints
/// are written. Host names are not resolved and https is not supported; on
/// failure returns false and sets `why`.
bool parse_http_url(std::string_view url, SockAddr& out, std::string& why);

}  // namespace gw::core
