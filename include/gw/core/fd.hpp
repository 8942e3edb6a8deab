#pragma once
// Move-only owner of a file descriptor.

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace gw::core {

class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

/// Opens /dev/null on whichever of descriptors 0, 1 and 2 is closed (a
/// supervisor that started us without them): else the first sockets or files
/// opened would take those numbers, and a log line written to stderr, or a
/// message printed to stdout, would land in a client's connection or in the
/// state file. Call first thing in main(). Returns false if /dev/null could
/// not be opened in a closed one's place.
inline bool ensure_std_fds() noexcept {
  for (int fd = 0; fd < 3; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
    // The lowest free number: `fd` itself, as those below it are open.
    const int n = ::open("/dev/null", O_RDWR);
    if (n < 0) return false;
    if (n != fd) {
      ::close(n);
      return false;
    }
  }
  return true;
}

}  // namespace gw::core
