#pragma once
// Per-frame routing for frame listeners in mode "frame": every frame a device
// sends is routed by its own key, so one device connection fans out to a
// connection per chosen host ("links", opened on demand and kept).
//
// Device → hosts: frames are taken whole from the device's buffer, checked
// like a first frame (a bad one closes the device connection), and sent in
// order; a frame waits while its link connects or pushes back, and the
// frames behind it wait too, so order per device is kept.
// Hosts → device: a link takes the device's write side at a frame boundary
// and keeps it until its frame is out, so frames from several hosts are
// never interleaved mid-frame.
//
// Same slab, generation and back-pressure rules as TcpRelay. Worker thread
// only; noexcept; allocates nothing per connection or frame.

#include <cstdint>
#include <vector>

#include "gw/proxy/tcp_relay.hpp"

namespace gw::proxy {

class FrameMux {
 public:
  static constexpr uint32_t kMaxLinks = 32;  ///< hosts one device connection may use at once
  /// A link may be let go for another host only after this long without
  /// traffic either way (a host that still owes answers would lose them).
  static constexpr uint64_t kLinkEvictIdleMs = 5000;

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
  bool full() const noexcept { return free_head_ == kNone && devices_.size() == devices_.capacity(); }

 private:
  static constexpr uint32_t kNone = ~0u;
  static constexpr uint32_t kMaxTries = 16;

  struct Link {
    int fd = -1;
    uint32_t slot = 0, tag = 0, weight = 0;
    bool connecting = false;
    bool in = false, out = false, hup = false, eof = false;
    uint64_t connect_start_ns = 0;
    uint64_t connect_start_ms = 0;
    char* buf = nullptr;  // host → device bytes not yet written
    uint32_t head = 0, tail = 0;
    uint64_t last_used_ms = 0;
  };

  struct Device : net::TimerNode {
    int fd = -1;
    uint32_t gen = 0;
    uint32_t next_free = kNone;
    bool used = false;
    bool in = false, out = false, hup = false, eof = false, shut = false;
    bool first = true;  // no whole frame yet: first_frame_timeout_ms applies
    bool links_shut = false;  // the device's EOF was passed on to the hosts
    uint64_t first_deadline_ms = 0;
    uint64_t last_activity_ms = 0;
    uint16_t listener = 0;
    uint32_t idle_ms = 0;
    char* buf = nullptr;  // device → hosts bytes
    bool big = false;
    uint32_t head = 0, tail = 0;
    // The frame at `head`, once routed: its link, bytes sent, hosts tried.
    int8_t front_link = -1;
    uint8_t front_attempts = 0;
    uint32_t front_len = 0, front_sent = 0;
    uint32_t front_tried[kMaxTries] = {};
    // The link writing a frame to the device, and what is left of that frame.
    int8_t owner = -1;
    uint8_t next_owner = 0;  // round robin over links for fairness
    uint32_t owner_left = 0;
    Link links[kMaxLinks];
  };

  uint64_t data_of(const Device& d, uint32_t sub) const noexcept {
    return event_data(kKindMux, d.gen, (index_of(d) << 6) | sub);
  }
  uint32_t index_of(const Device& d) const noexcept { return static_cast<uint32_t>(&d - devices_.data()); }

  void drive(Device& d) noexcept;
  void schedule(Device& d) noexcept;
  bool pump_device_in(Device& d) noexcept;   // device → links; false = device closed
  bool pump_device_out(Device& d) noexcept;  // links → device; false = device closed
  bool route_front(Device& d, std::string_view key) noexcept;
  int open_link(Device& d, const shm::HostRecord& r, int ui) noexcept;
  void link_failed(Device& d, int li, int err) noexcept;
  void close_link(Device& d, int li) noexcept;
  void close_device(Device& d) noexcept;
  void release_device_buf(Device& d) noexcept;

  RelayEnv& env_;
  std::vector<Device> devices_;
  uint32_t free_head_ = kNone;
  uint32_t active_ = 0;
  uint64_t last_no_host_log_ms_ = 0;
  uint64_t last_reject_log_ms_ = 0;
  uint64_t last_link_log_ms_ = 0;
  balance::Rng rng_{0x6672'616d'656d'7578ull};
};

}  // namespace gw::proxy
