#pragma once
// Per-frame routing for frame listeners in mode "frame": every frame a device
// sends is routed by its own key, so one device connection fans out to a
// connection per chosen host ("links", opened on demand and kept).
//
// Device → hosts: frames are taken whole from the device's buffer, checked
// like a first frame (a bad one closes the device connection), and sent in
// order; a frame waits while its link connects or pushes back, and the
// frames behind it wait too, so order per device is kept. A frame must be
// whole within frame_timeout_ms of its start. One call takes at most
// kInFrames frames or kInBytes bytes from a device (as one takes at most 64
// rounds of host bytes): a device streaming a backlog must not hold the
// worker; the rest waits for the next loop iteration (see busy()).
// A frame goes out within the upstream's `tries`: each link opened for it is
// a try. A connect that fails leaves its host out of the frame's next tries;
// a fresh link that breaks (reset, EOF) before the frame is all written
// counts a passive failure, and its host may be tried again on a new link
// once no other host is left. A link that carried frames before and breaks
// is retried without blame or a try of its own (as a kept-alive HTTP
// connection). A host that takes no byte of the frame for the upstream's
// send_timeout_ms fails its link (a passive failure, left out of the next
// tries), so a stalled host does not hold a whole-frame buffer.
// Hosts → device: frames are delimited by the length field alone (the device
// rules, allowed_types / allowed_versions / max_body, are not applied to
// them) and streamed: a link takes the device's write side at a frame
// boundary and keeps it until its frame is out, so frames from several hosts
// are never interleaved mid-frame. A link that holds the write side and
// sends nothing for frame_timeout_ms while the device waits for the rest of
// its frame is closed, and so is the device (it has part of a frame that
// cannot be finished); otherwise one stalled host would hold every other
// host's frames to that device for good.
// Links: at most frame.max_links per device. A new host takes the place of the
// least recently used link quiet for link_idle_ms (nothing either way), or
// else the device connection is closed. gw cannot know whether a host still
// owes an answer (hosts push frames unprompted, and not every frame is
// answered), so an answer a host sends after its link was let go is lost.
// Links are not bounded by the session table (two descriptors a session):
// out of descriptors, a new link takes the place of a quiet one of its device,
// or the frame waits for one, up to connect_timeout_ms, as an L4 connect does.
//
// Same slab, generation and back-pressure rules as TcpRelay. Worker thread
// only; noexcept; allocates nothing per connection or frame.

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <vector>

#include "gw/proxy/tcp_relay.hpp"

namespace gw::proxy {

class FrameMux {
 public:
  /// The most host links one device connection may have (frame.max_links is 1..this).
  static constexpr uint32_t kMaxLinks = 32;
  /// Links kept in the device record itself. A device that needs more takes a
  /// block of the other kMaxLinks - kInlineLinks from the worker's link pool,
  /// and gives it back once none of them is open: an idle device that talks
  /// to one or two hosts stays small.
  static constexpr uint32_t kInlineLinks = 2;

  FrameMux(RelayEnv& env, uint32_t max_devices);

  void accept(int fd, uint32_t listener) noexcept;
  /// An epoll event of kind kKindMux.
  void on_event(uint64_t data, uint32_t events) noexcept;
  bool owns(const net::TimerNode& n) const noexcept {
    const auto* p = static_cast<const void*>(&n);
    return p >= static_cast<const void*>(devices_.data()) &&
           p < static_cast<const void*>(devices_.data() + devices_.capacity());
  }
  void on_timer(net::TimerNode& n) noexcept;
  void close_all() noexcept;
  /// on_host_remove "close": closes links to hosts that no longer take traffic.
  void close_orphans() noexcept;

  uint32_t active() const noexcept { return active_; }
  /// Some device stopped at a per-call cap with bytes left (edge-triggered:
  /// no event comes for them): the worker's loop must not sleep, and calls
  /// run_again() once per iteration.
  bool busy() const noexcept { return again_ > 0; }
  /// Drives the devices that stopped at a cap, once each (those that stop at
  /// it again wait for the next iteration).
  void run_again() noexcept;
  bool full() const noexcept { return free_head_ == kNone && devices_.size() == devices_.capacity(); }

  /// Bytes of one device record (its slab slot) and of one overflow link block.
  static size_t device_bytes() noexcept;
  static size_t link_block_bytes() noexcept;
  /// Overflow link blocks in use (devices with more than kInlineLinks links).
  size_t link_blocks_in_use() const noexcept { return link_blocks_.in_use(); }

 private:
  static constexpr uint32_t kNone = ~0u;
  static constexpr uint32_t kMaxTries = 16;
  static constexpr uint32_t kBlockLinks = kMaxLinks - kInlineLinks;
  // Per drive() of one device: frames routed from it, bytes read from it.
  static constexpr uint32_t kInFrames = 64;
  static constexpr uint32_t kInBytes = 256 * 1024;

  struct Link {
    int fd = -1;
    uint32_t slot = 0, tag = 0, weight = 0;
    bool connecting = false;
    bool in = false, out = false, eof = false;
    bool hup = false;  // EPOLLRDHUP/EPOLLHUP seen: read on to the EOF (no short-read shortcut)
    // A whole frame of the device's went out on it. A link that breaks under
    // the first frame it carries is the host's failure; one that carried
    // frames is like a kept-alive connection the host closed (no blame).
    bool proven = false;
    bool orphan = false;  // on_host_remove "close" came while gw held bytes of it for the device: closed once out
    uint64_t connect_start_ns = 0;
    uint64_t connect_start_ms = 0;
    char* buf = nullptr;  // host → device bytes not yet written
    uint32_t head = 0, tail = 0;
    uint64_t last_used_ms = 0;  // last byte either way
  };

  struct Device : net::TimerNode {
    int fd = -1;
    uint32_t gen = 0;
    uint32_t next_free = kNone;
    bool used = false;
    bool in = false, out = false, eof = false;
    bool first = true;        // no whole frame yet: first_frame_timeout_ms applies
    bool links_shut = false;  // the device's EOF was passed on to the hosts
    bool big = false;         // buf is a whole-frame buffer
    bool again = false;       // stopped at a cap with work left (counted in again_)
    bool listed = false;      // its slot is on again_list_ (kept across reuse of the slot)
    bool fd_wait = false;     // the frame at head waits for a descriptor; on_timer retries at fd_retry_ms
    bool hup = false;         // EPOLLRDHUP/EPOLLHUP seen: read on to the EOF
    bool reset = false;       // the device reset its connection: what it sent before goes out, nothing goes to it
    uint16_t listener = 0;
    uint32_t idle_ms = 0;
    uint64_t first_deadline_ms = 0;
    uint64_t frame_deadline_ms = 0;  // the incomplete frame at head must be whole by then; 0 = none
    uint64_t last_activity_ms = 0;
    uint64_t fd_retry_ms = 0;       // while fd_wait
    uint64_t fd_wait_until_ms = 0;  // how long the frame at head may wait for descriptors; 0 = not yet
    char* buf = nullptr;            // device → hosts bytes
    uint32_t head = 0, tail = 0;
    // The frame at `head`, once routed: its link, bytes sent, links opened
    // for it (its tries, against the upstream's `tries`), and the hosts
    // those went to (front_tried[0, front_n_tried)). A host whose fresh link
    // broke under the frame has its bit in front_soft: it is picked again
    // only when no other host is left. front_progress_ms: when the frame was
    // bound to its link, the link connected, or a byte of it was last taken;
    // a host must take more within the upstream's send_timeout_ms.
    int8_t front_link = -1;
    uint8_t front_attempts = 0;
    uint8_t front_n_tried = 0;
    uint16_t front_soft = 0;
    uint64_t front_progress_ms = 0;
    // The link writing a frame to the device, and what is left of that frame.
    int8_t owner = -1;
    uint8_t next_owner = 0;  // round robin over links for fairness
    uint32_t front_len = 0, front_sent = 0;
    uint64_t owner_left = 0;  // a host's frame may be as long as its length field says
    // The owner's last progress (a byte of its frame read from the host or
    // written to the device): with nothing of it buffered, the owner must
    // send more within frame_timeout_ms of this.
    uint64_t owner_progress_ms = 0;
    uint32_t front_tried[kMaxTries] = {};
    Link inline_links[kInlineLinks];
    Link* more = nullptr;  // links kInlineLinks.. (a block from link_blocks_), while any is open
  };

  uint64_t data_of(const Device& d, uint32_t sub) const noexcept {
    return event_data(kKindMux, d.gen, (index_of(d) << 6) | sub);
  }
  uint32_t index_of(const Device& d) const noexcept { return static_cast<uint32_t>(&d - devices_.data()); }

  // Link li of d: inline, or in the overflow block (nullptr without one).
  static Link* link_at(Device& d, int li) noexcept {
    if (li < static_cast<int>(kInlineLinks)) return &d.inline_links[li];
    return d.more ? &d.more[li - static_cast<int>(kInlineLinks)] : nullptr;
  }
  uint32_t max_links(const Device& d) const noexcept;
  // Link slots d can use now: the inline ones, and the block's while it has one.
  int link_slots(const Device& d) const noexcept {
    const uint32_t m = max_links(d);
    return static_cast<int>(d.more ? m : std::min(m, kInlineLinks));
  }

  void drive(Device& d) noexcept;
  void set_again(Device& d) noexcept {
    if (d.again) return;
    d.again = true;
    ++again_;
    if (!d.listed) again_list_.push_back(index_of(d));  // at most one entry per slot: within the reservation
    d.listed = true;
  }
  void clear_again(Device& d) noexcept {
    again_ -= d.again;
    d.again = false;
  }
  void schedule(Device& d) noexcept;
  bool pump_device_in(Device& d) noexcept;   // device → links; false = device closed
  bool pump_device_out(Device& d) noexcept;  // links → device; false = device closed
  // The owner's deadline while the device waits for the rest of its frame
  // (nothing of it buffered, nothing known to be readable); 0 = none.
  uint64_t owner_deadline(Device& d) noexcept;
  // When the host of the frame at head must have taken more of it
  // (send_timeout_ms after front_progress_ms) while its link pushes back; 0 = none.
  uint64_t front_deadline(Device& d) noexcept;
  // Schedules the device's timer for that deadline if it would come later.
  void arm_front_deadline(Device& d) noexcept;
  // That deadline passed: the host is blamed, left out of this frame's tries,
  // and its link closed; the frame goes again, whole.
  void front_timed_out(Device& d) noexcept;
  bool route_front(Device& d, std::string_view key) noexcept;
  /// open_link's answer when this worker is out of descriptors or memory
  /// (out_of_resources; the errno in local_errno_, what failed in local_what_): another host would fail
  /// the same way.
  static constexpr int kLocalError = -2;
  /// A link slot for host `r` with its connect started; -1 after a failure
  /// that leaves other hosts worth trying (or with the device closed), or
  /// kLocalError.
  int open_link(Device& d, const shm::HostRecord& r, int ui) noexcept;
  int quiet_link(Device& d, int except) noexcept;
  static bool out_of_resources(int err) noexcept;
  void local_error(int err, const char* what) noexcept;
  int free_link_slot(Device& d) noexcept;
  void link_failed(Device& d, int li, int err) noexcept;
  /// Closes link li. If the frame at head was going out on it, the frame goes
  /// again, whole; a link opened for that frame that broke (`err`) under it
  /// counts a passive failure, and its host may be tried again.
  void close_link(Device& d, int li, int err = ECONNRESET) noexcept;
  void trim_links(Device& d) noexcept;
  void close_device(Device& d) noexcept;
  /// Counts a refused device by reason (count_reject), notes the reason for
  /// its access-log line, and closes it.
  void reject(Device& d, FrameError e) noexcept;

  // The access log of per-frame devices: what a line needs that the device
  // record does not keep (so that a listener without access_log pays nothing).
  // By device index, grown with devices_ within the same reservation, on the
  // first device of a listener that logs.
  struct DeviceLog {
    uint64_t start_ms = 0;
    uint64_t bytes_up = 0;      // the device's frame bytes sent to hosts, each once
    uint64_t bytes_down = 0;    // bytes sent to the device
    uint32_t front_logged = 0;  // of the frame at the device's head: bytes in bytes_up (it may go out again)
    const char* end = "closed";
    core::SockAddr peer;  // the device's address
    uint8_t key_len = 0;
    char key[kMaxKey] = {};  // the first frame's key
  };
  DeviceLog* log_of(const Device& d) noexcept {
    const uint32_t i = index_of(d);
    return i < logs_.size() && logs_[i].start_ms != 0 ? &logs_[i] : nullptr;
  }
  void note_end(Device& d, const char* why) noexcept {
    if (DeviceLog* g = log_of(d)) g->end = why;
  }
  std::vector<DeviceLog> logs_;
  void release_device_buf(Device& d) noexcept;

  RelayEnv& env_;
  std::vector<Device> devices_;
  net::BufferPool link_blocks_;  // overflow link blocks (kBlockLinks links each)
  uint32_t free_head_ = kNone;
  uint32_t active_ = 0;
  uint32_t again_ = 0;                // devices with `again` set
  std::vector<uint32_t> again_list_;  // their indices, in the order they stopped
  uint64_t last_no_host_log_ms_ = 0;
  uint64_t last_link_log_ms_ = 0;
  uint64_t last_local_error_log_ms_ = 0;
  int local_errno_ = 0;
  const char* local_what_ = "";  // what failed with local_errno_, for the log
  balance::Rng rng_{0x6672'616d'656d'7578ull};
};

}  // namespace gw::proxy
