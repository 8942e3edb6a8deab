// gw-emit-events: a test helper for the integration tests (not installed).
// Writes into a running gateway's event ring what no gw command can make on
// demand: COUNT events at once (a flapping pool's worth, faster than the
// master reads them), or an event number claimed and never written (its
// writer killed while writing it).
//
//   gw-emit-events SHM COUNT          COUNT events "health_up rv/p/x ..." (no hook kind)
//   gw-emit-events SHM --claim-only   claim one event number and leave it unwritten

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "gw/shm/events.hpp"
#include "gw/shm/segment.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SHM COUNT|--claim-only\n", argv[0]);
    return 2;
  }
  try {
    const gw::shm::Segment seg = gw::shm::Segment::attach(argv[1]);
    if (std::string_view(argv[2]) == "--claim-only") {
      const uint64_t n = seg.header().event_head.fetch_add(1, std::memory_order_acq_rel);
      std::printf("%llu\n", static_cast<unsigned long long>(n));
      return 0;
    }
    char* end = nullptr;
    const unsigned long count = std::strtoul(argv[2], &end, 10);
    if (!end || *end || count == 0) {
      std::fprintf(stderr, "%s: COUNT must be a positive integer\n", argv[0]);
      return 2;
    }
    for (unsigned long i = 0; i < count; ++i)
      gw::shm::emit_event(seg, gw::shm::EventKind::health, 0,
                          "health_up test/emitted/" + std::to_string(i) + " 127.0.0.1:1 (gw-emit-events)");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
}
