#include "gw/net/socket.hpp"

#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>

#include <netinet/tcp.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace gw::net {

core::UniqueFd bind_tcp(const core::SockAddr& addr, bool reuseport) {
  sockaddr_storage ss;
  socklen_t len = addr.to_sockaddr(ss);
  core::UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(fmt::format("socket() for {}: {}", addr.to_string(), std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (reuseport && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
    throw std::runtime_error(fmt::format("SO_REUSEPORT on {}: {}", addr.to_string(), std::strerror(errno)));
  if (ss.ss_family == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  // Accepted sockets inherit TCP_NODELAY (Linux copies it from the listener):
  // one call here instead of one per connection.
  set_nodelay(fd.get());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0)
    throw std::runtime_error(fmt::format("cannot bind {}: {}", addr.to_string(), std::strerror(errno)));
  return fd;
}

core::UniqueFd listen_tcp(const core::SockAddr& addr, int backlog, bool reuseport) {
  core::UniqueFd fd = bind_tcp(addr, reuseport);
  if (::listen(fd.get(), backlog) != 0)
    throw std::runtime_error(fmt::format("cannot listen on {}: {}", addr.to_string(), std::strerror(errno)));
  return fd;
}

namespace {

// 0.0.0.0 or ::, the address that takes the port on every interface.
bool is_wildcard(const core::SockAddr& a) noexcept {
  const size_t n = a.family == AF_INET6 ? 16 : 4;
  for (size_t i = 0; i < n; ++i)
    if (a.ip[i] != 0) return false;
  return true;
}

}  // namespace

void check_address_free(const core::SockAddr& addr, const std::vector<core::SockAddr>& ours, std::string_view what) {
  sockaddr_storage ss;
  socklen_t len = addr.to_sockaddr(ss);
  core::UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(fmt::format("socket() for {}: {}", addr.to_string(), std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as listen_tcp: TIME_WAIT is no obstacle
  if (ss.ss_family == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0) return;
  const int err = errno;
  // Two addresses on one port and family collide only if one of them is the
  // wildcard (0.0.0.0:P and 127.0.0.1:P); 127.0.0.2:P of ours does not make
  // 127.0.0.1:P fail, so a failure there is another process's listener.
  if (err == EADDRINUSE)
    for (const auto& o : ours)
      if (!(o == addr) && o.port == addr.port && o.family == addr.family && (is_wildcard(o) || is_wildcard(addr)))
        return;  // overlaps one of ours
  if (err == EADDRINUSE)
    throw AddressInUse(
        fmt::format("{}: cannot bind {}: the address is in use by another process (another gwd, or any program "
                    "listening there)",
                    what, addr.to_string()));
  throw std::runtime_error(fmt::format("{}: cannot bind {}: {}", what, addr.to_string(), std::strerror(err)));
}

int connect_tcp(const core::SockAddr& addr, int& err) noexcept {
  sockaddr_storage ss;
  socklen_t len = addr.to_sockaddr(ss);
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = errno;
    return -1;
  }
  set_nodelay(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) {
    err = 0;
  } else if (errno == EINPROGRESS) {
    err = EINPROGRESS;
  } else {
    err = errno;
    ::close(fd);
    return -1;
  }
  return fd;
}

int connect_wait(const core::SockAddr& addr, uint32_t timeout_ms, int& err) noexcept {
  int fd = connect_tcp(addr, err);
  if (fd < 0 || err == 0) return fd;
  pollfd p{fd, POLLOUT, 0};
  int n;
  do n = ::poll(&p, 1, static_cast<int>(timeout_ms));
  while (n < 0 && errno == EINTR);
  err = n == 0 ? ETIMEDOUT : n < 0 ? errno : socket_error(fd);
  if (err != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool peer_has_all(int fd) noexcept {
  int n = 0;
  return ::ioctl(fd, SIOCOUTQ, &n) == 0 && n == 0;
}

int socket_error(int fd) noexcept {
  int e = 0;
  socklen_t len = sizeof(e);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) return errno;
  return e;
}

const char* error_text(int err) noexcept {
  switch (err) {
    case kErrNoAnswer: return "no answer within read_timeout_ms";
    case kErrNotTaken: return "the request not taken within send_timeout_ms";
    default: return std::strerror(err);
  }
}

bool peer_error(int err) noexcept {
  switch (err) {
    case kErrNoAnswer:
    case kErrNotTaken:
    case ECONNREFUSED:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ECONNRESET:
    case ECONNABORTED:
    case EHOSTDOWN:
    case ENETDOWN:
    case EPIPE:
    case EPROTO: return true;
    default: return false;
  }
}

bool reset_after_connect(int err) noexcept {
  return err == ECONNRESET || err == EPIPE;
}

void set_nodelay(int fd) noexcept {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace gw::net
