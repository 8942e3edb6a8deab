#pragma once
// limit_conn: concurrent connections per client address, over all workers,
// counted in the shm limit table. The worker asks admit() right after
// accept(); a connection over the listener's `max` is closed there (no byte
// is read or written: the same for tcp, frame and http listeners) and
// counted (GuardCounters::conn_rejected). The relays call release(fd) just
// before they close a client socket; the ticket is kept by fd.
//
// One per worker; worker thread only; noexcept after construction.

#include <sys/socket.h>

#include <cstdint>
#include <vector>

#include "gw/api/limit_table.hpp"
#include "gw/config/config.hpp"
#include "gw/shm/segment.hpp"

namespace gw::api {

class ConnLimiter {
 public:
  ConnLimiter(const config::Config& cfg, const shm::Segment& seg, uint32_t worker);
  ~ConnLimiter();
  ConnLimiter(const ConnLimiter&) = delete;
  ConnLimiter& operator=(const ConnLimiter&) = delete;

  /// Whether the client connection `fd` of `listener` may stay open: true if
  /// the listener has no limit_conn or the address is under its max (then it
  /// is counted until release(fd)); false if it must be closed (counted).
  bool admit(int fd, uint32_t listener, const sockaddr* peer, uint64_t now_ms) noexcept;
  /// The client socket `fd` is about to be closed.
  void release(int fd) noexcept {
    if (fd >= 0 && static_cast<size_t>(fd) < n_fds_ && tickets_[fd]) {
      table_.release_conn(tickets_[fd]);
      tickets_[fd] = 0;
    }
  }

 private:
  struct ListenerLimit {
    uint64_t scope = 0;  ///< 0: no limit_conn
    uint32_t max = 0;
  };
  LimitTable table_;
  shm::GuardCounters& counters_;
  uint64_t seed_;
  std::vector<ListenerLimit> listeners_;
  uint32_t* tickets_ = nullptr;  ///< by fd: the held entry + 1, 0 = none (lazily zeroed pages)
  size_t n_fds_ = 0;
};

/// The hook the relays call before closing a client socket.
inline void release_conn(ConnLimiter* limiter, int fd) noexcept {
  if (limiter) limiter->release(fd);
}

}  // namespace gw::api
