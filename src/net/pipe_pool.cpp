#include "gw/net/pipe_pool.hpp"

#include <fcntl.h>
#include <unistd.h>

namespace gw::net {

PipePool::PipePool(uint32_t max_pipes) : max_(max_pipes) {
  free_.reserve(max_pipes);
}

PipePool::~PipePool() {
  for (PipeFds p : free_) {
    ::close(p.r);
    ::close(p.w);
  }
}

PipeFds PipePool::acquire() noexcept {
  if (!free_.empty()) {
    PipeFds p = free_.back();
    free_.pop_back();
    ++acquired_;
    return p;
  }
  if (open_ >= max_) return {};
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return {};
  ++open_;
  ++acquired_;
  return PipeFds{fds[0], fds[1]};
}

void PipePool::release(PipeFds p, bool empty) noexcept {
  if (!p) return;
  if (empty && free_.size() < free_.capacity()) {
    free_.push_back(p);  // within the reservation: never allocates
    return;
  }
  ::close(p.r);
  ::close(p.w);
  --open_;
}

}  // namespace gw::net
