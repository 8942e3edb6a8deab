#pragma once
// The L4 relay on io_uring: the same semantics as TcpRelay (balancer pick,
// connect with connect_timeout_ms, passive failure and the next host, half
// close both ways, idle_timeout_ms, back-pressure, shm counters,
// on_host_remove "close", frame listeners in connection mode), driven by
// completions instead of readiness.
//
// Per session and direction (client → upstream, upstream → client):
//
//   multishot recv ──cqe──► FIFO of ring buffers ──one send at a time──► dst
//   (buffer ring)           (linked through next_[bid])      │
//         ▲                                                  │ done
//         └───────────── recycle(bid), publish() ◄───────────┘
//
// Back-pressure: a side's receive is armed only while at most kLowWater
// buffers wait to be written to the other side, and ends by itself once it has
// brought in what fills the FIFO to kHighWater buffers (a multishot byte limit,
// Linux 6.17; a burst already in the socket cannot overrun it). Where the
// kernel lacks that limit, and for data that trickles in, the receive is also
// cancelled when the FIFO reaches kHighWater. A receive that finds the buffer
// ring empty (-ENOBUFS) waits on the starved list until buffers come back.
// Idle connections hold no buffer at all.
//
// Blocked destinations: sends are MSG_DONTWAIT, so a destination that does not
// read answers -EAGAIN (or a short count) at once instead of parking the send,
// and with it a ring buffer, in the kernel. What is queued then moves into the
// worker's own pool buffers (the spill, packed), the ring buffers go back to
// the kernel at once, and a one-shot POLLOUT brings the direction back. A
// stalled peer therefore holds at most kHighWater pool buffers per direction
// and none of the ring, which the worker's other sessions share. (A kernel
// that ignored MSG_DONTWAIT on io_uring sends would park the send as before.)
// The same holds while a sniffed first frame waits for its connect: the
// client's receive is cancelled once the frame is whole, and what it brought
// in meanwhile is spilled, so a host whose connects hang cannot make its
// clients hold the ring.
//
// Bulk: a direction that has carried env.splice_after bytes and receives full
// buffers (a burst) stops receiving into ring buffers and moves its bytes with
// splice(2) through a pipe until a read comes back short, driven
// by one-shot IORING_OP_POLL_ADD (readable source, writable destination); at
// most one pipe's worth is in flight, so back-pressure holds the same way.
// (IORING_OP_SPLICE itself would block an io-wq thread per waiting socket.)
//
// Client resets: from its upstream connect on, a session keeps one multishot
// POLL_ADD for POLLERR on the client. A receive reports a reset as long as one
// is armed; this poll reports it where none is: while the connect is pending
// (the client is not read then; the attempt is abandoned, as under epoll's
// EPOLLERR) and after the client's FIN (its receive has ended; what is still
// for the client is dropped, and the session ends once the upstream has all
// the client sent). Without it, both waited for connect_timeout_ms or
// idle_timeout_ms. The poll is edge-triggered: the FIN itself completes it
// once (the kernel always reports POLLRDHUP), and writes do not wake it.
// While the client's receive is paused (back-pressure) the same poll reports
// its reset, and the session ends.
//
// Upstream resets after its FIN: the upstream's receive ends with its EOF, so
// a session that lives on (the client has not closed) arms the same kind of
// poll on the upstream then (one more submission and its cancel at the close,
// for such sessions only). Its reset means the upstream is gone both ways:
// once all it sent and its FIN have reached the client and the client has
// acknowledged them (SIOCOUTQ 0; the timer looks again every 50 ms, as that
// acknowledgement completes nothing), the session ends.
//
// Connects are IORING_OP_CONNECT linked to an IORING_OP_LINK_TIMEOUT. Closing
// a session cancels what it still has in flight, each request by its tag (the
// session's `live` bits say which are), then closes its sockets: a cancel by
// tag is one lookup in io_uring's cancel hash, where a cancel by fd walks every
// poll the ring has armed (10% of a worker's CPU at 1,000 churning frame
// clients). The slot is reused only after its last completion, and tags carry
// the slot's generation besides.
//
// Worker thread only; noexcept; allocates nothing per connection.

#include <linux/time_types.h>
#include <netinet/in.h>

#include <cassert>
#include <cstdint>
#include <vector>

#include "gw/net/buffer_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/net/uring.hpp"
#include "gw/proxy/access_log.hpp"
#include "gw/proxy/tcp_relay.hpp"

namespace gw::proxy {

/// Tag ops (net::pack_tag) of the io_uring worker loop.
namespace uring_op {
inline constexpr uint8_t kIgnore = 0;        ///< cancels, closes: nothing to do
inline constexpr uint8_t kAccept = 1;        ///< an accept (single-shot); slot = listener index
inline constexpr uint8_t kEpoll = 2;         ///< multishot poll on the worker's epoll fd
inline constexpr uint8_t kAcceptCancel = 3;  ///< cancels one accept (reports only a failure); slot = listener
inline constexpr uint8_t kRelayFirst = 16;   ///< this op and above belong to UringRelay
}  // namespace uring_op

class UringRelay {
 public:
  static constexpr uint16_t kHighWater = 4;  ///< buffers queued per direction before its receive is paused
  static constexpr uint16_t kLowWater = 1;   ///< ... and re-armed

  /// `bufs` must be attached to `ring`. `recv_limit`: the kernel has the
  /// multishot receive byte limit (net::uring_recv_limit_supported()).
  UringRelay(RelayEnv& env, net::Ring& ring, net::BufRing& bufs, uint32_t max_sessions, bool recv_limit);

  /// Takes an accepted, non-blocking client socket.
  void accept(int fd, uint32_t listener) noexcept;
  /// A completion whose tag op is >= uring_op::kRelayFirst.
  void on_completion(uint64_t tag, int32_t res, uint32_t flags) noexcept;
  bool owns(const net::TimerNode& n) const noexcept {
    const auto* p = static_cast<const void*>(&n);
    return p >= static_cast<const void*>(sessions_.data()) &&
           p < static_cast<const void*>(sessions_.data() + sessions_.capacity());
  }
  void on_timer(net::TimerNode& n) noexcept;
  /// Once per loop iteration, before the ring is submitted: hands recycled
  /// buffers to the kernel and re-arms receives that starved.
  void flush() noexcept;
  void close_all() noexcept;
  void close_orphans() noexcept;

  uint32_t active() const noexcept { return active_; }
  /// Closed sessions whose slots still wait for completions.
  uint32_t retiring() const noexcept { return retiring_; }
  bool full() const noexcept { return free_head_ == kNone && sessions_.size() == sessions_.capacity(); }
  /// Slots that a new session could take (closed sessions waiting for completions hold theirs).
  uint32_t free_slots() const noexcept { return static_cast<uint32_t>(sessions_.capacity()) - active_ - retiring_; }

  /// How often each way of acting on a client's reset that no receive
  /// reports was taken: rare paths, counted so that a test that orders
  /// completions by hand can check which path its session took.
  struct ResetPaths {
    /// Noted (by the watch, or by a failed write to the client) while a read
    /// was armed, which then found the client's FIN.
    uint64_t at_eof = 0;
    /// Noted with no read armed, and the host took no more: the session ended.
    uint64_t unread = 0;
  };
  const ResetPaths& reset_paths() const noexcept { return reset_paths_; }

 private:
  static constexpr uint32_t kNone = ~0u;
  static constexpr uint16_t kNoBuf = 0xffff;

  static constexpr uint8_t kRelayFirstOp = uring_op::kRelayFirst;
  enum Op : uint8_t {
    kRecvClient = kRelayFirstOp,
    kRecvUpstream,
    kSendUpstream,  // client → upstream bytes
    kSendClient,    // upstream → client bytes
    kConnect,
    kLinkTimeout,
    kPollClientIn,     // splice mode: the client has bytes (client → upstream)
    kPollUpstreamIn,   // the upstream has bytes (upstream → client)
    kPollUpstreamOut,  // the upstream takes bytes again (client → upstream)
    kPollClientOut,    // the client takes bytes again (upstream → client)
    kWatchClient,      // multishot poll: the client's reset while no receive is armed on it
    kWatchUpstream,    // multishot poll: the upstream's reset after its EOF
  };
  enum class State : uint8_t { free, sniff, connecting, relay, closing };
  enum Recv : uint8_t { kIdle, kArmed, kCancelling };

  /// Bytes read from one side waiting to be written to the other.
  struct Dir {
    uint16_t head = kNoBuf, tail = kNoBuf;  // FIFO of ring buffer ids
    uint16_t queued = 0;
    uint8_t recv = kIdle;
    bool sending = false;  // a send of the front is in flight
    bool eof = false;      // the source said EOF
    bool shut = false;     // the destination's write side was shut down
    bool starved = false;  // on the starved list
    bool extra_big = false;
    uint32_t off = 0;       // bytes of the front buffer already sent
    char* extra = nullptr;  // a pool buffer sent before the FIFO (a sniffed first frame)
    uint32_t extra_off = 0, extra_len = 0;
    uint32_t starve_prev = kNone, starve_next = kNone;  // starved list, by side id (slot * 2 + side)
    uint64_t moved = 0;                                 // bytes written to the destination so far
    net::PipeFds pipe;                                  // splice mode
    uint32_t piped = 0;                                 // bytes in the pipe
    bool poll_in = false;                               // splice mode: waiting for the source
    bool poll_out = false;                              // splice mode: waiting for the destination
    bool burst = false;                                 // the last read filled a whole buffer or pipe
    uint8_t spilled = 0;                                // pool buffers in the spill
    char* spill = nullptr;  // bytes sent after `extra`, before the FIFO: a chain of pool buffers (SpillHdr)
  };

  struct Session : net::TimerNode, StreamRoute {
    int cfd = -1;
    int ufd = -1;
    uint32_t gen = 0;
    uint32_t next_free = kNone;
    State state = State::free;
    uint16_t live = 0;           // bit(op): a request of that op on a socket is in flight (at most one each)
    uint8_t t_ops = 0;           // connect timeouts in flight (a failed connect's may end after the next is armed)
    bool watch = false;          // kWatchClient is armed
    bool watch_u = false;        // kWatchUpstream is armed
    bool c_reset = false;        // the client reset (seen by the watch, or a write to it failed)
    uint64_t gone_until_ms = 0;  // a side is gone: until then, the timer looks for the other's ack
    __kernel_timespec connect_ts{};
    sockaddr_in6 addr{};  // the connect target (read by the kernel at submission)
    uint32_t addr_len = 0;
    Dir c2u, u2c;  // the access log's byte counts are Dir::moved
  };

  static constexpr uint16_t bit(Op op) noexcept { return static_cast<uint16_t>(1u << (op - kRelayFirstOp)); }
  /// The ops whose requests hold the client's socket, and the upstream's (the
  /// connect's linked timeout holds neither: cancelling the connect ends it).
  static constexpr uint16_t client_ops() noexcept {
    return bit(kRecvClient) | bit(kSendClient) | bit(kPollClientIn) | bit(kPollClientOut) | bit(kWatchClient);
  }
  static constexpr uint16_t upstream_ops() noexcept {
    return bit(kRecvUpstream) | bit(kSendUpstream) | bit(kConnect) | bit(kPollUpstreamIn) | bit(kPollUpstreamOut) |
           bit(kWatchUpstream);
  }
  /// A request of `op` goes in flight (none was), and its last completion came.
  static void started(Session& s, Op op) noexcept {
    assert(!(s.live & bit(op)));
    s.live = static_cast<uint16_t>(s.live | bit(op));
  }
  static void ended(Session& s, Op op) noexcept { s.live = static_cast<uint16_t>(s.live & ~bit(op)); }

  uint32_t index_of(const Session& s) const noexcept { return static_cast<uint32_t>(&s - sessions_.data()); }
  uint64_t tag(const Session& s, Op op) const noexcept { return net::pack_tag(op, index_of(s), s.gen); }

  Session* new_session() noexcept;
  void fetch_peer(Session& s, int fd, bool want_key) noexcept;
  bool logging(const ListenerRuntime& l) const noexcept {
    return env_.access_log && env_.access_log->enabled() && l.log_file >= 0;
  }
  void sniff(Session& s, uint16_t bid, uint32_t len) noexcept;
  void reject(Session& s, FrameError e) noexcept;
  void connect_next(Session& s) noexcept;
  void on_connect(Session& s, int32_t res) noexcept;
  void on_recv(Session& s, bool client, int32_t res, uint32_t flags) noexcept;
  void on_send(Session& s, bool client_to_upstream, int32_t res) noexcept;
  void arm_recv(Session& s, bool client) noexcept;
  void maybe_arm(Session& s, bool client) noexcept;
  void pump(Session& s, bool client_to_upstream) noexcept;
  void finish_dir(Session& s, bool client_to_upstream) noexcept;
  void dst_gone(Session& s, bool client_to_upstream) noexcept;
  void src_failed(Session& s, bool client_to_upstream) noexcept;
  void end_if_client_gone(Session& s) noexcept;
  bool upstream_gone(const Session& s) const noexcept;
  bool client_gone(const Session& s) const noexcept;
  void end_if_upstream_gone(Session& s) noexcept;
  bool start_splice(Session& s, bool client_to_upstream) noexcept;
  void splice_pump(Session& s, bool client_to_upstream) noexcept;
  void arm_poll(Session& s, bool client_to_upstream, bool out) noexcept;
  void on_poll(Session& s, bool client_to_upstream, bool out) noexcept;
  void watch_client(Session& s) noexcept;
  void on_watch(Session& s, int32_t res, uint32_t flags) noexcept;
  void client_reset_after_fin(Session& s) noexcept;
  void end_if_reset_unread(Session& s) noexcept;
  void watch_upstream(Session& s) noexcept;
  void on_watch_upstream(Session& s, int32_t res, uint32_t flags) noexcept;
  void enqueue(Dir& d, uint16_t bid, uint32_t len) noexcept;
  void spill_fifo(Dir& d) noexcept;
  void pop_spill(Dir& d) noexcept;
  void blocked(Session& s, bool client_to_upstream) noexcept;
  void pause_if_full(Session& s, bool client) noexcept;
  void cancel_recv(Session& s, bool client) noexcept;  // an armed receive; maybe_arm() re-arms it later
  void pop_front(Dir& d) noexcept;
  void starve(Session& s, bool client) noexcept;
  void unstarve(Session& s, bool client) noexcept;
  void release_dir(const Session& s, Dir& d) noexcept;
  /// Cancels the requests of `ops` still in flight on `fd`, then closes it.
  void close_fd(Session& s, int fd, uint16_t ops) noexcept;
  void close_session(Session& s) noexcept;
  void maybe_retire(Session& s) noexcept;

  RelayEnv& env_;
  net::Ring& ring_;
  net::BufRing& bufs_;
  bool recv_limit_;
  std::vector<uint16_t> next_;  // by buffer id: the next buffer in its FIFO
  std::vector<uint32_t> len_;   // by buffer id: bytes it holds
  std::vector<Session> sessions_;
  uint32_t free_head_ = kNone;
  uint32_t active_ = 0;
  uint32_t retiring_ = 0;
  uint32_t starved_head_ = kNone, starved_tail_ = kNone;
  uint64_t last_no_host_log_ms_ = 0;
  uint64_t last_local_error_log_ms_ = 0;
  ResetPaths reset_paths_;
  balance::Rng rng_{0x7572'696e'6772'6c79ull};  // slow-start admission
};

}  // namespace gw::proxy
