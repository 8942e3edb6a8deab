#include "gw/proxy/http_io.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "gw/net/socket.hpp"

namespace gw::proxy {

HttpIo::HttpIo(net::Ring& ring, net::BufRing& bufs, net::BufferPool& pool, uint32_t max_socks, bool recv_limit)
    : ring_(ring),
      bufs_(bufs),
      pool_(pool),
      recv_limit_(recv_limit),
      max_lingering_(std::max<uint32_t>(1, max_socks / 4)),
      next_(bufs.count(), kNoBuf),
      len_(bufs.count(), 0) {
  // Reserved, not touched: a slot's memory is paid for when it is first used.
  // A batch has at most one entry per socket opened, and a slot can be
  // closed and opened again within one (a socket with nothing in flight
  // retires at once): twice the slots.
  socks_.reserve(max_socks);
  events_.reserve(2 * size_t{max_socks});
  dispatching_.reserve(2 * size_t{max_socks});
  event_sock_.reserve(2 * size_t{max_socks});
}

uint32_t HttpIo::open(int fd, uint64_t data, bool connecting) noexcept {
  Sock* k;
  if (free_head_ != kNone) {
    k = &socks_[free_head_];
    free_head_ = k->next_free;
  } else if (socks_.size() < socks_.capacity()) {
    k = &socks_.emplace_back();
  } else {
    return kNone;
  }
  // A slot keeps its generation, and its places on the re-arm and held
  // lists (flush() looks at what the socket needs then).
  const uint32_t gen = k->gen, rearm_next = k->rearm_next;
  const uint32_t held_next = k->held_next;
  const bool rearm = k->rearm, held = k->held;
  *k = Sock{};
  k->gen = gen;
  k->rearm = rearm;
  k->rearm_next = rearm_next;
  k->held = held;
  k->held_next = held_next;
  k->fd = fd;
  k->data = data;
  k->state = State::open;
  ++open_;
  if (connecting) {
    io_uring_sqe* sqe = ring_.sqe();
    io_uring_prep_poll_add(sqe, fd, POLLOUT);
    io_uring_sqe_set_data64(sqe, tag(*k, kConnectPoll));
    started(*k, kConnectPoll);
    k->connecting = true;
  } else {
    emit(*k, EPOLLOUT);  // as epoll reports a writable socket once it is added
    arm_recv(*k);
  }
  return index_of(*k);
}

void HttpIo::emit(Sock& k, uint32_t events) noexcept {
  if (k.ev != kNone) {
    events_[k.ev].events |= events;
    return;
  }
  k.ev = static_cast<uint32_t>(events_.size());
  epoll_event e{};
  e.events = events;
  e.data.u64 = k.data;
  events_.push_back(e);  // within the capacity reserved: one entry per socket
  event_sock_.push_back(index_of(k));
}

std::span<const epoll_event> HttpIo::take_events() noexcept {
  for (uint32_t i : event_sock_) socks_[i].ev = kNone;
  event_sock_.clear();
  dispatching_.clear();
  for (const epoll_event& e : events_)
    if (e.events) dispatching_.push_back(e);  // (a socket closed since has 0)
  events_.clear();
  return dispatching_;
}

void HttpIo::arm_recv(Sock& k) noexcept {
  io_uring_sqe* sqe = ring_.sqe();
  // At most one pool buffer's worth per receive, what a spill holds (it is
  // armed only with nothing held, see maybe_rearm()): a multishot receive
  // with that byte limit (optlen) where the kernel has one, else a
  // single-shot receive into one ring buffer (its size: a pool buffer).
  if (recv_limit_) {
    io_uring_prep_recv_multishot(sqe, k.fd, nullptr, 0, 0);
    sqe->file_index = static_cast<uint32_t>(std::min<size_t>(bufs_.size(), pool_.buffer_size()));
  } else {
    io_uring_prep_recv(sqe, k.fd, nullptr, static_cast<uint32_t>(std::min<size_t>(bufs_.size(), pool_.buffer_size())),
                       0);
  }
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = bufs_.group();
  io_uring_sqe_set_data64(sqe, tag(k, kRecv));
  started(k, kRecv);
  k.recv = kArmed;
  k.no_pool = false;
}

void HttpIo::arm_watch(Sock& k) noexcept {
  if (k.watch || k.state != State::open || k.err) return;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_poll_multishot(sqe, k.fd, POLLERR);
  io_uring_sqe_set_data64(sqe, tag(k, kWatch));
  started(k, kWatch);
  k.watch = true;
}

void HttpIo::on_watch(Sock& k, int32_t res, uint32_t flags) noexcept {
  if (!(flags & IORING_CQE_F_MORE)) {
    ended(k, kWatch);
    k.watch = false;
  }
  if (k.state == State::closing) {
    maybe_retire(k);
    return;
  }
  if (res > 0 && (res & POLLERR) && !k.err) {
    const int e = net::socket_error(k.fd);
    k.err = e > 0 ? e : ECONNRESET;
    emit(k, EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP);
  }
}

bool HttpIo::may_receive(const Sock& k) const noexcept {
  return k.state == State::open && k.recv == kIdle && !k.eof && !k.err && !k.connecting && k.queued <= kLowWater &&
         k.spill_off == k.spill_len;
}

void HttpIo::maybe_rearm(Sock& k) noexcept {
  if (k.rearm || !may_receive(k)) return;
  k.rearm = true;
  k.rearm_next = rearm_head_;
  rearm_head_ = index_of(k);
}

void HttpIo::flush() noexcept {
  // Bytes the proxy did not take in the last dispatch (its buffer is full:
  // a client that does not read the answer, a host that does not read the
  // body) leave the ring, which every socket of the worker shares, for a
  // pool buffer of their socket's own. Held in ring buffers, 128 such
  // sockets would hold all 256 and stop every receive of the worker.
  while (held_head_ != kNone) {
    Sock& k = socks_[held_head_];
    held_head_ = k.held_next;
    k.held = false;
    k.held_next = kNone;
    if (k.state == State::open && k.head != kNoBuf) spill(k);
  }
  bufs_.publish();
  // Each receive needs a buffer: no more are armed than the ring has (one
  // armed with the ring empty would only fail, -ENOBUFS); the rest wait
  // for their socket to be readable (arm_direct(): a poll, then a receive
  // into a pool buffer), so that their bytes, FIN or reset are not left
  // unseen for as long as the ring stays empty.
  // (One readable already with no pool buffer for it waits for the ring.)
  uint32_t budget = bufs_.in_kernel();
  uint32_t wait = kNone;
  while (rearm_head_ != kNone) {
    Sock& k = socks_[rearm_head_];
    rearm_head_ = k.rearm_next;
    k.rearm = false;
    k.rearm_next = kNone;
    if (!may_receive(k)) continue;
    if (budget > 0) {
      arm_recv(k);
      --budget;
    } else if (!k.no_pool) {
      arm_direct(k);
    } else {
      k.rearm = true;
      k.rearm_next = wait;
      wait = index_of(k);
    }
  }
  rearm_head_ = wait;
}

void HttpIo::spill(Sock& k) noexcept {
  if (!k.spill && !(k.spill = pool_.acquire())) return;  // the pool is at its bound: the ring buffers stay
  if (k.spill_off > 0) {
    std::memmove(k.spill, k.spill + k.spill_off, k.spill_len - k.spill_off);
    k.spill_len -= k.spill_off;
    k.spill_off = 0;
  }
  const size_t cap = pool_.buffer_size();
  while (k.head != kNoBuf && k.spill_len < cap) {
    const uint32_t n = std::min<uint32_t>(len_[k.head] - k.off, static_cast<uint32_t>(cap - k.spill_len));
    std::memcpy(k.spill + k.spill_len, bufs_.buf(k.head) + k.off, n);
    k.spill_len += n;
    k.off += n;
    if (k.off == len_[k.head]) pop_front(k);
  }
}

void HttpIo::on_completion(uint64_t t, int32_t res, uint32_t flags) noexcept {
  const uint32_t i = net::tag_slot(t);
  if (i >= socks_.size()) return;
  Sock& k = socks_[i];
  if (!net::tag_current(t, k.gen) || k.state == State::free) {
    // Only a receive can be in flight for a generation gone (its slot
    // retires after its last completion): a buffer it names goes back.
    if (flags & IORING_CQE_F_BUFFER) {
      const auto bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
      if (bufs_.taken(bid)) bufs_.recycle(bid);
    }
    return;
  }
  switch (net::tag_op(t)) {
    case kRecv: on_recv(k, res, flags); break;
    case kSend: on_send(k, res); break;
    case kWatch: on_watch(k, res, flags); break;
    case kLinger: on_linger(k); break;
    case kConnectPoll: {
      ended(k, kConnectPoll);
      k.connecting = false;
      if (k.state == State::closing) {
        maybe_retire(k);
        break;
      }
      uint32_t ev = EPOLLOUT;
      if (res < 0 || (res & POLLERR)) ev |= EPOLLERR;
      if (res >= 0 && (res & POLLHUP)) ev |= EPOLLHUP;
      emit(k, ev);
      // The proxy reads SO_ERROR; a receive armed on a failed connect only
      // completes with that error, which the close cancels.
      if (!(ev & (EPOLLERR | EPOLLHUP))) arm_recv(k);
      break;
    }
    default: break;
  }
}

void HttpIo::arm_direct(Sock& k) noexcept {
  io_uring_sqe* sqe = ring_.sqe();
  if (k.spill) {
    io_uring_prep_recv(sqe, k.fd, k.spill, static_cast<uint32_t>(pool_.buffer_size()), 0);
    k.spill_off = k.spill_len = 0;
  } else {
    io_uring_prep_poll_add(sqe, k.fd, POLLIN);  // (POLLERR and POLLHUP end it too)
  }
  io_uring_sqe_set_data64(sqe, tag(k, kRecv));
  started(k, kRecv);
  k.recv = kArmed;
  k.direct = true;
}

void HttpIo::on_direct(Sock& k, int32_t res) noexcept {
  k.direct = false;
  if (!k.spill) {  // the poll
    if (k.state == State::closing) {
      maybe_retire(k);
    } else if (res < 0 && res != -ECANCELED) {
      k.err = -res;
      emit(k, EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP);
    } else if (res > 0 && (k.spill = pool_.acquire())) {
      arm_direct(k);  // readable: bytes, the EOF or the error
    } else {
      k.no_pool = res > 0;  // no pool buffer: armed again once the ring has buffers
      arm_watch(k);
      maybe_rearm(k);
    }
    return;
  }
  if (k.state == State::closing || res <= 0) {
    pool_.release(k.spill);
    k.spill = nullptr;
    k.spill_off = k.spill_len = 0;
  }
  if (k.state == State::closing) {
    maybe_retire(k);
    return;
  }
  if (res > 0) {
    k.spill_len = static_cast<uint32_t>(res);
    emit(k, EPOLLIN);
    arm_watch(k);  // paused with bytes held until recv() takes them
  } else if (res == 0) {
    k.eof = true;
    emit(k, EPOLLIN | EPOLLRDHUP);
    arm_watch(k);
  } else if (res == -ECANCELED || res == -EAGAIN) {
    arm_watch(k);
    maybe_rearm(k);
  } else {
    k.err = -res;
    emit(k, EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP);
  }
}

void HttpIo::on_recv(Sock& k, int32_t res, uint32_t flags) noexcept {
  if (!(flags & IORING_CQE_F_MORE)) {
    k.recv = kIdle;
    ended(k, kRecv);
  }
  if (k.direct) {  // single-shot, into the spill: no ring buffer
    on_direct(k, res);
    return;
  }
  uint16_t bid = kNoBuf;
  if (flags & IORING_CQE_F_BUFFER) {
    bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    if (!bufs_.taken(bid)) bid = kNoBuf;
  }
  if (k.state == State::closing) {
    if (bid != kNoBuf) bufs_.recycle(bid);
    maybe_retire(k);
    return;
  }
  if (res > 0 && bid != kNoBuf) {
    len_[bid] = static_cast<uint32_t>(res);
    next_[bid] = kNoBuf;
    if (k.tail != kNoBuf) next_[k.tail] = bid;
    else k.head = bid;
    k.tail = bid;
    ++k.queued;
    emit(k, EPOLLIN);
    if (!k.held) {  // flush() looks whether the proxy took it
      k.held = true;
      k.held_next = held_head_;
      held_head_ = index_of(k);
    }
    if (k.queued >= kHighWater && k.recv == kArmed) {
      // Back-pressure: the proxy has not taken what came before.
      io_uring_sqe* sqe = ring_.sqe();
      io_uring_prep_cancel64(sqe, tag(k, kRecv), 0);
      io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
      sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
      k.recv = kCancelling;
    }
    // Paused, by the cancel or by the byte limit, which ended the receive by
    // itself (no F_MORE) with bytes held: a reset meanwhile is the watch's.
    if (k.recv != kArmed && !may_receive(k)) arm_watch(k);
    maybe_rearm(k);  // the receive ended (its byte limit) with nothing held
    return;
  }
  if (bid != kNoBuf) bufs_.recycle(bid);
  if (res == 0) {
    k.eof = true;
    emit(k, EPOLLIN | EPOLLRDHUP);
    arm_watch(k);  // a reset after the FIN
  } else if (res == -ENOBUFS) {
    // The ring was empty. Its buffers come back when other sockets' bytes
    // are taken or spilled: maybe not soon, maybe never (a pool at its
    // bound), and until then a receive armed would only fail again, and
    // nothing would report this socket's bytes, FIN or reset. It waits for
    // them with a poll instead, then reads them into a pool buffer of its
    // own, its spill, which is what the ring's bytes would have become
    // (and holds no memory while it waits). Not behind bytes held: they
    // came first.
    if (may_receive(k)) {
      arm_direct(k);
    } else {
      arm_watch(k);    // paused with bytes held: a reset is the watch's
      maybe_rearm(k);  // armed again once nothing is held
    }
  } else if (res == -ECANCELED) {
    maybe_rearm(k);  // back-pressure: armed again when it may run
  } else if (res < 0) {
    k.err = -res;
    emit(k, EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP);
  }
}

void HttpIo::pop_front(Sock& k) noexcept {
  const uint16_t b = k.head;
  k.head = next_[b];
  if (k.head == kNoBuf) k.tail = kNoBuf;
  --k.queued;
  k.off = 0;
  bufs_.recycle(b);
}

ssize_t HttpIo::recv(uint32_t s, char* dst, size_t len) noexcept {
  Sock& k = socks_[s];
  size_t got = 0;
  if (k.spill_off < k.spill_len) {  // before the FIFO: it came first
    const size_t n = std::min<size_t>(k.spill_len - k.spill_off, len);
    std::memcpy(dst, k.spill + k.spill_off, n);
    got = n;
    k.spill_off += static_cast<uint32_t>(n);
    if (k.spill_off == k.spill_len) {
      pool_.release(k.spill);
      k.spill = nullptr;
      k.spill_off = k.spill_len = 0;
    }
  }
  while (got < len && k.head != kNoBuf) {
    const uint32_t avail = len_[k.head] - k.off;
    const size_t n = std::min<size_t>(avail, len - got);
    std::memcpy(dst + got, bufs_.buf(k.head) + k.off, n);
    got += n;
    k.off += static_cast<uint32_t>(n);
    if (k.off == len_[k.head]) pop_front(k);
  }
  maybe_rearm(k);
  if (got > 0) return static_cast<ssize_t>(got);
  if (len == 0) return 0;
  if (k.err) {
    // A reset (the watch's, or a failed send's) that came while the receive
    // was paused: the bytes the socket took before it are still in it, and
    // recv(2) returns them first, as under epoll (a host's last bytes to a
    // client that had not taken the earlier ones yet). No receive is in
    // flight to overtake.
    if (k.recv == kIdle) {
      const ssize_t n = ::recv(k.fd, dst, len, MSG_DONTWAIT);
      if (n > 0) return n;
    }
    errno = k.err;
    return -1;
  }
  if (k.eof) return 0;
  errno = EAGAIN;
  return -1;
}

ssize_t HttpIo::peek(uint32_t s) noexcept {
  const Sock& k = socks_[s];
  if (k.head != kNoBuf || k.spill_off < k.spill_len) return 1;
  if (k.err) {
    errno = k.err;
    return -1;
  }
  if (k.eof) return 0;
  // Bytes, a FIN or a reset may be in the socket with their completion not
  // posted yet (the ring runs completions' task work only when the worker
  // enters it): the socket tells. The receive still brings them in.
  char b;
  const ssize_t n = ::recv(k.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n > 0 ? 1 : n;
}

ssize_t HttpIo::send(uint32_t s, const iovec* iov, int n_iov) noexcept {
  Sock& k = socks_[s];
  if (k.err) {
    errno = k.err;
    return -1;
  }
  if (k.sending || k.shut_pending || k.connecting) {
    k.want_out = true;
    errno = EAGAIN;
    return -1;
  }
  if (!k.tx && !(k.tx = pool_.acquire())) {
    errno = ENOMEM;  // the pool is at its bound: the proxy fails the request as for any send error
    return -1;
  }
  const size_t cap = pool_.buffer_size();
  size_t copied = 0;
  for (int i = 0; i < n_iov && copied < cap; ++i) {
    const size_t n = std::min(iov[i].iov_len, cap - copied);
    std::memcpy(k.tx + copied, iov[i].iov_base, n);
    copied += n;
  }
  if (copied == 0) {
    pool_.release(k.tx);
    k.tx = nullptr;
    return 0;
  }
  k.tx_off = 0;
  k.tx_len = static_cast<uint32_t>(copied);
  submit_send(k);
  return static_cast<ssize_t>(copied);
}

void HttpIo::submit_send(Sock& k) noexcept {
  io_uring_sqe* sqe = ring_.sqe();
  // MSG_WAITALL: the ring goes on after a short count by itself (a stream
  // socket), so that a send close() lets go on needs its fd no more.
  io_uring_prep_send(sqe, k.fd, k.tx + k.tx_off, k.tx_len - k.tx_off, MSG_NOSIGNAL | MSG_WAITALL);
  io_uring_sqe_set_data64(sqe, tag(k, kSend));
  started(k, kSend);
  k.sending = true;
}

void HttpIo::on_send(Sock& k, int32_t res) noexcept {
  ended(k, kSend);
  k.sending = false;
  if (k.state == State::closing) {
    if (k.tx) pool_.release(k.tx);
    k.tx = nullptr;
    if (k.close_after_send) close_fd(k);
    maybe_retire(k);
    return;
  }
  if (res > 0 && k.tx_off + static_cast<uint32_t>(res) < k.tx_len) {
    k.tx_off += static_cast<uint32_t>(res);  // short: the rest goes on
    submit_send(k);
    return;
  }
  pool_.release(k.tx);
  k.tx = nullptr;
  if (res < 0) {
    // The kernel would have reported this as an error on the socket (a
    // reset): the next recv() or send() says it.
    k.err = -res;
    k.shut_pending = false;
    emit(k, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLERR | EPOLLHUP);
    return;
  }
  if (k.shut_pending) {
    k.shut_pending = false;
    shut_now(k);
  }
  if (k.want_out) {
    k.want_out = false;
    emit(k, EPOLLOUT);
  }
}

void HttpIo::shutdown_wr(uint32_t s) noexcept {
  Sock& k = socks_[s];
  if (k.sending) k.shut_pending = true;
  else shut_now(k);
}

void HttpIo::shut_now(Sock& k) noexcept {
  ::shutdown(k.fd, SHUT_WR);
  // Both directions are done once the peer's FIN came too: epoll reports
  // that (EPOLLHUP, woken by the shutdown itself), and the proxy closes on
  // it (a lingering close waits for nothing more). No completion says it
  // here: the receive has ended, and the watch poll looks for POLLERR only.
  if (k.eof) emit(k, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLHUP);
}

void HttpIo::close(uint32_t s) noexcept {
  Sock& k = socks_[s];
  if (k.state != State::open) return;
  while (k.head != kNoBuf) pop_front(k);
  if (k.spill && !k.direct) {  // (a receive into it goes back with its completion)
    pool_.release(k.spill);
    k.spill = nullptr;
    k.spill_off = k.spill_len = 0;
  }
  if (k.tx && !k.sending) {
    pool_.release(k.tx);
    k.tx = nullptr;
  }
  if (k.ev != kNone) {
    events_[k.ev].events = 0;  // nothing more is reported for it
    k.ev = kNone;
  }
  k.state = State::closing;
  --open_;
  ++retiring_;
  if (k.sending && lingering_ < max_lingering_) {
    // The proxy was told these bytes went out: as close(2) would leave them
    // to the kernel, the send goes on, and the fd is closed once it is done
    // (a FIN after them, as close(2) sends). The receive and the watch end
    // now (cancelled by their tags: the fd number stays ours until then).
    k.close_after_send = true;
    ++lingering_;
    k.shut_pending = false;  // the close sends the FIN
    if (k.recv == kArmed) {
      io_uring_sqe* sqe = ring_.sqe();
      io_uring_prep_cancel64(sqe, tag(k, kRecv), 0);
      io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
      sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
      k.recv = kCancelling;
    }
    if (k.watch) {
      io_uring_sqe* sqe = ring_.sqe();
      io_uring_prep_cancel64(sqe, tag(k, kWatch), 0);
      io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
      sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    }
    io_uring_sqe* sqe = ring_.sqe();
    io_uring_prep_timeout(sqe, &linger_ts_, 0, 0);
    io_uring_sqe_set_data64(sqe, tag(k, kLinger));
    started(k, kLinger);
    k.linger = true;
    // The fd goes now, as close(2) gives it back under epoll: the send
    // holds its own reference to the socket, which closes (its FIN after
    // the bytes) once the send is done, as an orphaned socket would. Closed
    // by the ring, after the send in submission order: a send still queued
    // here takes the socket by this fd number when it is submitted.
    sqe = ring_.sqe();
    io_uring_prep_close(sqe, k.fd);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
    k.fd = -1;
    return;
  }
  const int fd = k.fd;
  k.fd = -1;
  if (k.live) {
    // Each request still in flight on the socket is cancelled by its tag: one
    // lookup in io_uring's cancel hash, where a cancel by fd walks every poll
    // the ring has armed. The requests hold the socket, so the close, queued
    // after them, takes effect once the last is gone; the tags name no fd, so
    // a newer socket with this fd number is never hit.
    // (A receive being cancelled for back-pressure needs no second cancel.)
    for (const Op op : {kRecv, kSend, kConnectPoll, kWatch}) {
      if (!(k.live & bit(op)) || (op == kRecv && k.recv == kCancelling)) continue;
      io_uring_sqe* sqe = ring_.sqe();
      io_uring_prep_cancel64(sqe, tag(k, op), 0);
      sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
      io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
    }
    io_uring_sqe* sqe = ring_.sqe();
    io_uring_prep_close(sqe, fd);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
  } else {
    ::close(fd);
  }
  maybe_retire(k);
}

void HttpIo::close_fd(Sock& k) noexcept {
  k.close_after_send = false;
  --lingering_;
  if (k.linger) {
    io_uring_sqe* sqe = ring_.sqe();
    io_uring_prep_timeout_remove(sqe, tag(k, kLinger), 0);
    io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
  }
}

void HttpIo::on_linger(Sock& k) noexcept {
  ended(k, kLinger);
  k.linger = false;
  if (k.state == State::closing && k.close_after_send) {
    // The peer took nothing for kSendLingerMs: the send is cancelled (its
    // socket then closes), as the kernel gives up an orphaned socket.
    k.close_after_send = false;
    --lingering_;
    io_uring_sqe* sqe = ring_.sqe();
    io_uring_prep_cancel64(sqe, tag(k, kSend), 0);
    io_uring_sqe_set_data64(sqe, net::pack_tag(0, 0, 0));
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
  }
  maybe_retire(k);
}

void HttpIo::maybe_retire(Sock& k) noexcept {
  if (k.state != State::closing || k.live) return;
  k.state = State::free;
  ++k.gen;
  k.next_free = free_head_;
  free_head_ = index_of(k);
  --retiring_;
}

}  // namespace gw::proxy
