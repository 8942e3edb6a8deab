#include "gw/proxy/frame_mux.hpp"

#include <doctest/doctest.h>

TEST_SUITE("proxy/frame_mux") {
  TEST_CASE("a per-frame device record is small; links beyond the inline ones live out of line") {
    using gw::proxy::FrameMux;
    // Each device connection in mode "frame" costs one slab record. With the
    // 32 links inline it was 2,224 bytes; the inline links cover a device that
    // talks to one or two hosts, the rest come from a per-worker block pool
    // only while they are open.
    CHECK(FrameMux::kInlineLinks >= 1);
    CHECK(FrameMux::kInlineLinks < FrameMux::kMaxLinks);
    CHECK(FrameMux::device_bytes() <= 512);
    CHECK(FrameMux::link_block_bytes() >= (FrameMux::kMaxLinks - FrameMux::kInlineLinks) * 32);
    MESSAGE("device record ", FrameMux::device_bytes(), " B, overflow link block ", FrameMux::link_block_bytes(), " B");
  }
}
