#pragma once
// Socket helpers. Start-up helpers throw; data-plane helpers return errno.

#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/core/fd.hpp"

namespace gw::net {

/// A non-blocking listening socket with SO_REUSEADDR, TCP_NODELAY (inherited
/// by accepted sockets) and, if asked, SO_REUSEPORT. Throws
/// std::runtime_error naming the address on failure.
core::UniqueFd listen_tcp(const core::SockAddr& addr, int backlog, bool reuseport);
/// listen_tcp() without the listen(2): the socket is bound, and takes no
/// connection until it listens. A SO_REUSEPORT socket gets its share of the
/// port's connections from its listen(2) on, so one made for a reload that
/// may still fail listens only once the reload can no longer fail.
core::UniqueFd bind_tcp(const core::SockAddr& addr, bool reuseport);
/// Throws unless `addr` can be bound without SO_REUSEPORT: a listener of
/// another process there (another gwd, any SO_REUSEPORT socket of the same
/// user) would otherwise share the port with us, and the kernel would split
/// its connections between the two. Called before a new address's sockets
/// are made (a race with a process binding it meanwhile remains). `ours`:
/// addresses this gwd has a socket on now (not those it will bind: a failure
/// they cannot have caused is not excused by them): one of them on the same
/// port and family that overlaps `addr` (one of the two is the wildcard:
/// 0.0.0.0:P beside 127.0.0.1:P) also makes the bind fail, and then the port
/// is taken to be ours; 127.0.0.2:P of ours does not excuse a failure on
/// 127.0.0.1:P. `what` names the setting in the message
/// (`listener "web"`, `admin.listen`): "admin.listen: cannot bind
/// 127.0.0.1:9900: the address is in use by another process (...)".
/// Throws AddressInUse when another process holds the address, and
/// std::runtime_error for any other failure.
void check_address_free(const core::SockAddr& addr, const std::vector<core::SockAddr>& ours, std::string_view what);

/// check_address_free's error when another process holds the address (EADDRINUSE).
struct AddressInUse : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Starts a non-blocking connect. Returns the fd (>= 0) and sets `err` to 0
/// (connected), EINPROGRESS, or an errno; on failure returns -1.
int connect_tcp(const core::SockAddr& addr, int& err) noexcept;

/// Connects within timeout_ms (blocking the caller in poll). Returns a
/// connected non-blocking fd, or -1 with `err` set (ETIMEDOUT on timeout).
/// For the control plane (gwctl check, the etcd client), not the data plane.
int connect_wait(const core::SockAddr& addr, uint32_t timeout_ms, int& err) noexcept;

/// SO_ERROR of a socket (0 = connected).
int socket_error(int fd) noexcept;

/// Whether the peer has acknowledged every byte written to this TCP socket
/// (SIOCOUTQ is 0): a close() that resets it now loses nothing sent. Any
/// thread; false if it cannot be asked.
bool peer_has_all(int fd) noexcept;

/// Whether a connect or I/O error says something about the peer or the path
/// to it. Others (EMFILE, ENOBUFS, EADDRNOTAVAIL: out of ports, ...) are this
/// machine's own trouble and must not count against a healthy host.
bool peer_error(int err) noexcept;

/// Failures of a host that no errno names, for the "last:" of its passive
/// failure event (a read timeout said "Connection timed out", read as a
/// connect that timed out). Peer errors; above every errno.
inline constexpr int kErrNoAnswer = 0x10001;  ///< http: read_timeout_ms passed without the answer
inline constexpr int kErrNotTaken = 0x10002;  ///< http: send_timeout_ms passed with the request not taken
/// strerror(), or the text of a code above.
const char* error_text(int err) noexcept;

/// Whether the error a connecting socket reports (SO_ERROR, or an io_uring
/// connect's result) says the handshake completed and the peer then reset the
/// connection: ECONNRESET or EPIPE (Linux's tcp_reset gives ECONNREFUSED to a
/// reset in SYN-SENT). That is a connected session that ended, not a failed
/// connect: what the peer sent before its reset is still readable, and a read
/// after SO_ERROR (which clears the error) returns it, then 0. ECONNABORTED
/// is not one (a local abort, e.g. `ss -K`, which may come in SYN-SENT).
bool reset_after_connect(int err) noexcept;

/// TCP_NODELAY on: a relay forwards what it got at once.
void set_nodelay(int fd) noexcept;

}  // namespace gw::net
