#pragma once
// The HTTP proxy's socket I/O on io_uring completions, behind the calls its
// readiness-based state machine makes (receive, peek, send, shut down,
// close), so that HttpProxy runs the same code on either engine and only its
// system calls change:
//
//   epoll:    epoll_wait ► recv ► parse ► sendmsg ► recv ► sendmsg   (4+ calls a request)
//   io_uring: one io_uring_enter per loop iteration submits every send
//             queued in it and brings every completion in (0.1-0.4 a request)
//
// Receives: one multishot receive per socket into the worker's provided
// buffer ring (shared with UringRelay). Completed bytes wait in a FIFO of
// ring buffers; recv() copies them out (the proxy parses in its own buffer,
// so that a head split over two reads is one span). Each receive ends by
// itself after one pool buffer's worth (a multishot byte limit where the
// kernel has one, Linux 6.17; else a single-shot receive), and what the
// proxy did not take in the dispatch that followed leaves the ring, which
// the worker's sockets share, for a pool buffer of the socket's own (the
// spill, at the next flush()): a stalled reader holds one pool buffer, as
// under epoll the proxy's own buffer is what it holds, and no ring buffer.
// The receive is armed again once recv() has taken all that is held: a side
// the proxy does not read is not read from the kernel either, and TCP flow
// control holds its peer back, as under epoll. No more receives are armed
// than the ring has buffers, and one that finds it empty (-ENOBUFS) does
// not wait for it (buffers come back when other sockets' bytes are taken,
// maybe never): a one-shot poll waits for the socket, whose bytes, FIN or
// reset a receive into a pool buffer (the spill) then brings in.
//
// Sends: send() copies up to one pool buffer into the socket's staging
// buffer, queues the send and returns the count copied, as a send(2) that
// found room would. While that send is in flight, the next send() says
// EAGAIN, and the socket is reported writable once it is done. A failed send
// is reported as an error on the socket (EPOLLERR), as a reset is under
// epoll; a short one goes on from where it stopped. shutdown_wr() waits for
// the send in flight, so the FIN never overtakes bytes the proxy was told
// went out.
//
// Readiness: completions are turned into epoll-style events (EPOLLIN,
// EPOLLOUT, EPOLLRDHUP, EPOLLHUP, EPOLLERR) with the proxy's own event data,
// one per socket per batch with the bits ORed, so that the worker dispatches
// them through the same code as epoll_wait's (HttpProxy::close_idle_in
// first, then on_event), and the proxy's edge-triggered flags keep their
// meaning: EPOLLIN once bytes, the EOF or an error came in that recv() has
// not returned; EPOLLOUT once a socket can take a send() again.
//
// Resets no receive reports: once a socket's receive has ended at its EOF,
// or is paused by back-pressure, a multishot poll for POLLERR stands in for
// it (as UringRelay's watch), so that a reset then is still reported
// (EPOLLERR) as epoll would, and not only at the next timeout. Armed once per
// socket that needs it, cancelled by the close.
//
// Closing cancels what the socket still has in flight, each request by its tag
// (the `live` bits; see UringRelay::close_fd), and closes it, except a send:
// the proxy was told its bytes went out, so it goes on (at most
// kSendLingerMs) holding the socket, whose fd is closed at once (as close(2)
// leaves them to the kernel under epoll).
// At most a quarter of the slots so linger (the rest are the open sockets
// and those closed waiting for their cancels): beyond that a close cancels
// its send, as the kernel resets orphaned sockets beyond its limit, so that
// peers that never read cannot take the slots new sockets need. A slot is
// reused once its last completion came, and tags carry the slot's
// generation besides.
//
// Memory: a socket holds ring buffers only while their bytes wait for recv(),
// and its staging buffer only while a send is in flight; an idle keep-alive
// socket holds neither (its armed receive is the kernel's).
//
// Worker thread only; noexcept; allocates nothing after construction.

#include <sys/epoll.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cassert>
#include <cstdint>
#include <span>
#include <vector>

#include "gw/net/buffer_pool.hpp"
#include "gw/net/uring.hpp"

namespace gw::proxy {

namespace uring_op {
inline constexpr uint8_t kHttpFirst = 64;  ///< this op and above belong to HttpIo
}  // namespace uring_op

class HttpIo {
 public:
  static constexpr uint32_t kNone = ~0u;
  static constexpr uint16_t kHighWater = 2;         ///< ring buffers queued per socket before its receive is paused
  static constexpr uint16_t kLowWater = 0;          ///< ... and armed again
  static constexpr uint32_t kSendLingerMs = 60000;  ///< a send in flight at close() goes on this long at most

  /// `bufs` must be attached to `ring`; `pool` gives the staging buffers.
  /// `recv_limit`: the kernel has the multishot receive byte limit.
  HttpIo(net::Ring& ring, net::BufRing& bufs, net::BufferPool& pool, uint32_t max_socks, bool recv_limit);
  HttpIo(const HttpIo&) = delete;
  HttpIo& operator=(const HttpIo&) = delete;

  /// Takes `fd` (non-blocking, connected unless `connecting`), whose
  /// readiness is reported with `data`. A connected socket is reported
  /// writable at once (as epoll reports a socket just added), and its
  /// receive is armed; a connecting one is reported writable (or in error)
  /// once its connect is done. Returns the socket's id, or kNone with every
  /// slot taken (the caller still owns fd then). A connecting socket's
  /// receive is armed once the connect is reported done without an error.
  uint32_t open(int fd, uint64_t data, bool connecting) noexcept;

  /// As recv(fd, dst, len, MSG_DONTWAIT): the bytes received so far, 0 at the
  /// EOF, or -1 with errno (EAGAIN: nothing yet; else the socket's error).
  ssize_t recv(uint32_t s, char* dst, size_t len) noexcept;
  /// As recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT): 1 with bytes waiting, 0 at
  /// the EOF, -1 with errno. What the receive has brought in first, then the
  /// socket itself (a system call), where bytes may wait for their completion.
  ssize_t peek(uint32_t s) noexcept;
  /// As sendmsg(fd, iov, MSG_DONTWAIT | MSG_NOSIGNAL): copies up to one
  /// pool buffer and queues it; -1 with EAGAIN while a send is in flight (or
  /// no pool buffer is free), or with the socket's error.
  ssize_t send(uint32_t s, const iovec* iov, int n_iov) noexcept;
  /// shutdown(fd, SHUT_WR), once the send in flight (if any) is done.
  void shutdown_wr(uint32_t s) noexcept;
  /// Closes the socket (the fd is HttpIo's to close): cancels its receive.
  /// A send still in flight goes on, as close(2) leaves what send(2) took to
  /// the kernel: the proxy was told those bytes went out (a "Connection:
  /// close" answer's end, a tunnel's last bytes). The fd is closed at once;
  /// the socket, which the send holds, once it is done, or after
  /// kSendLingerMs (a peer that never reads), which then cancels it. With
  /// a quarter of the slots lingering so, the send is cancelled at once
  /// instead (the kernel's limit on orphaned sockets). The id must not be
  /// used again.
  void close(uint32_t s) noexcept;

  /// A completion whose tag op is >= uring_op::kHttpFirst.
  void on_completion(uint64_t tag, int32_t res, uint32_t flags) noexcept;
  /// Once per loop iteration, before the ring is submitted: hands recycled
  /// buffers to the kernel and arms the receives that may run again.
  void flush() noexcept;
  /// The readiness gathered since the last call (one entry per socket); the
  /// span is valid until the next call. Events made while they are being
  /// dispatched wait for the next call.
  std::span<const epoll_event> take_events() noexcept;
  bool has_events() const noexcept { return !events_.empty(); }

  /// Sockets whose slots wait for completions after their close.
  uint32_t retiring() const noexcept { return retiring_; }
  uint32_t open_count() const noexcept { return open_; }
  /// Sockets closed with a send in flight, which goes on (see close()).
  uint32_t lingering() const noexcept { return lingering_; }

 private:
  static constexpr uint16_t kNoBuf = 0xffff;
  enum Op : uint8_t { kRecv = uring_op::kHttpFirst, kSend, kConnectPoll, kWatch, kLinger };
  enum class State : uint8_t { free, open, closing };
  enum Recv : uint8_t { kIdle, kArmed, kCancelling };

  struct Sock {
    int fd = -1;
    uint32_t gen = 0;
    uint32_t next_free = kNone;
    uint64_t data = 0;
    State state = State::free;
    uint8_t recv = kIdle;
    uint8_t live = 0;                       // bit(op): a request of that op is in flight (at most one each)
    bool connecting = false;                // the connect poll is armed
    bool eof = false;                       // the receive brought the EOF
    bool sending = false;                   // the staging buffer is in flight
    bool want_out = false;                  // a send() said EAGAIN: report EPOLLOUT when it can go
    bool shut_pending = false;              // shutdown_wr() waits for the send in flight
    bool rearm = false;                     // on the re-arm list
    bool watch = false;                     // the multishot POLLERR poll is armed
    bool held = false;                      // on the held list: flush() spills what the proxy did not take
    bool close_after_send = false;          // closed with a send in flight: the fd closes once it is done
    bool linger = false;                    // the kSendLingerMs timeout is armed
    bool direct = false;                    // the ring ran dry: the receive armed is arm_direct()'s
    bool no_pool = false;                   // readable, no pool buffer for arm_direct(): waits for the ring
    int err = 0;                            // a failed receive or send (positive errno)
    uint16_t head = kNoBuf, tail = kNoBuf;  // FIFO of ring buffer ids
    uint16_t queued = 0;
    uint32_t off = 0;  // bytes of the front buffer already taken
    char* tx = nullptr;
    uint32_t tx_off = 0, tx_len = 0;
    char* spill = nullptr;  // a pool buffer: bytes received that the proxy did not take, before the FIFO's
    uint32_t spill_off = 0, spill_len = 0;
    uint32_t held_next = kNone;
    uint32_t ev = kNone;  // index into events_ in this batch
    uint32_t rearm_next = kNone;
  };

  static constexpr uint8_t bit(Op op) noexcept { return static_cast<uint8_t>(1u << (op - kRecv)); }
  /// A request of `op` goes in flight (none was), and its last completion came.
  static void started(Sock& k, Op op) noexcept {
    assert(!(k.live & bit(op)));
    k.live = static_cast<uint8_t>(k.live | bit(op));
  }
  static void ended(Sock& k, Op op) noexcept { k.live = static_cast<uint8_t>(k.live & ~bit(op)); }
  uint32_t index_of(const Sock& k) const noexcept { return static_cast<uint32_t>(&k - socks_.data()); }
  uint64_t tag(const Sock& k, Op op) const noexcept { return net::pack_tag(op, index_of(k), k.gen); }
  void emit(Sock& k, uint32_t events) noexcept;
  void arm_recv(Sock& k) noexcept;
  void arm_watch(Sock& k) noexcept;
  /// For a receive that found the ring empty: a poll for POLLIN, then (with
  /// k.spill, a pool buffer) a single-shot receive into the spill. Both
  /// are tagged kRecv, k.direct set.
  void arm_direct(Sock& k) noexcept;
  void on_direct(Sock& k, int32_t res) noexcept;
  void on_watch(Sock& k, int32_t res, uint32_t flags) noexcept;
  void maybe_rearm(Sock& k) noexcept;
  /// Nothing is held (FIFO at kLowWater, no spill) and the receive may run.
  bool may_receive(const Sock& k) const noexcept;
  /// Moves the FIFO's bytes (as many as fit) into the socket's spill buffer
  /// and gives their ring buffers back.
  void spill(Sock& k) noexcept;
  void submit_send(Sock& k) noexcept;
  void submit_shutdown(Sock& k) noexcept;
  void shut_now(Sock& k) noexcept;   // shutdown(SHUT_WR), and the readiness epoll would report for it
  void close_fd(Sock& k) noexcept;   // the send close() let go on is done: its linger timeout goes
  void on_linger(Sock& k) noexcept;  // kSendLingerMs passed: cancels that send, closes
  void on_recv(Sock& k, int32_t res, uint32_t flags) noexcept;
  void on_send(Sock& k, int32_t res) noexcept;
  void pop_front(Sock& k) noexcept;
  void maybe_retire(Sock& k) noexcept;

  net::Ring& ring_;
  net::BufRing& bufs_;
  net::BufferPool& pool_;
  bool recv_limit_;
  uint32_t max_lingering_;  // closed sockets whose send may go on (a quarter of the slots)
  std::vector<Sock> socks_;
  std::vector<uint16_t> next_;  // by buffer id: the next buffer in its FIFO
  std::vector<uint32_t> len_;   // by buffer id: bytes it holds
  std::vector<epoll_event> events_, dispatching_;
  std::vector<uint32_t> event_sock_;
  uint32_t free_head_ = kNone;
  uint32_t rearm_head_ = kNone;
  uint32_t held_head_ = kNone;  // sockets that received in this iteration
  uint32_t open_ = 0, retiring_ = 0, lingering_ = 0;
  __kernel_timespec linger_ts_{kSendLingerMs / 1000, 0};  // read by the kernel at submission
};

}  // namespace gw::proxy
