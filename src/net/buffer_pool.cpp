#include "gw/net/buffer_pool.hpp"

#include <new>

namespace gw::net {

bool BufferPool::grow() noexcept {
  if (max_ != 0 && capacity() >= max_) return false;
  try {
    chunks_.reserve(chunks_.size() + 1);
    std::unique_ptr<char[]> chunk(new (std::nothrow) char[size_ * chunk_buffers_]);
    if (!chunk) return false;
    for (size_t i = 0; i < chunk_buffers_; ++i) {
      auto* n = reinterpret_cast<FreeNode*>(chunk.get() + i * size_);
      n->next = free_;
      free_ = n;
    }
    chunks_.push_back(std::move(chunk));
    return true;
  } catch (...) {
    return false;
  }
}

char* BufferPool::acquire() noexcept {
  if (!free_ && !grow()) return nullptr;
  FreeNode* n = free_;
  free_ = n->next;
  ++in_use_;
  return reinterpret_cast<char*>(n);
}

void BufferPool::release(char* b) noexcept {
  auto* n = reinterpret_cast<FreeNode*>(b);
  n->next = free_;
  free_ = n;
  --in_use_;
}

}  // namespace gw::net
