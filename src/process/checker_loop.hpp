#pragma once
// The checker process's loop (see gw/process/checker.hpp), with its clock and
// its connect injected so that unit tests can drive it: run_checker() uses
// the monotonic clock and net::connect_tcp. Checker process only; not
// thread-safe.

#include <sys/epoll.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/core/fd.hpp"
#include "gw/process/checker.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::process {

/// Where the checker gets the time and its sockets from.
struct CheckerIo {
  uint64_t (*now_ms)() noexcept;  ///< monotonic milliseconds
  /// A non-blocking connect: an fd, or -1 and `err`.
  int (*connect)(const core::SockAddr& addr, int& err) noexcept;
  static CheckerIo real() noexcept;
};

class Checker {
 public:
  Checker(const shm::Segment& seg, CheckerIo io);

  /// Runs until a stop signal arrives on `signal_fd`; returns the exit code.
  int run(int signal_fd, const std::string& log_file);

  /// Takes a newer table, starts the checks that are due; returns when the
  /// loop must look again (the next check due, a probe's deadline, or the
  /// next look at the table).
  uint64_t start_due();
  /// Waits for the probes under way (and the signal fd run() watches) at
  /// most until `wake`, then judges the ones with a result and the ones whose
  /// time is up. Returns true if the signal fd is readable.
  bool wait_probes(uint64_t wake);

  size_t probes_in_flight() const noexcept { return probes_.size(); }

 private:
  struct HostState {
    uint32_t tag = 0;
    uint64_t due_ms = 0;
    bool in_flight = false;
    bool queued = false;  // its due time is in due_
    CheckRuns runs;
  };
  // A host's next check, in due_ (ordered by time). An entry whose host
  // has another tag, another due time or is not queued any more is stale,
  // and dropped when it comes up.
  struct Due {
    uint64_t due_ms;
    uint32_t slot, tag;
    bool operator>(const Due& o) const noexcept { return due_ms != o.due_ms ? due_ms > o.due_ms : slot > o.slot; }
  };
  struct Probe {
    core::UniqueFd fd;
    uint32_t slot = 0, tag = 0;
    uint64_t deadline_ms = 0;
    size_t index = 0;  // in probes_
    bool connected = false;
    bool reading = false;  // waits for EPOLLIN (else EPOLLOUT: connecting or sending)
    std::string request;   // http: bytes still to send
    std::string reply;     // http: the status line so far
  };

  void refresh();
  int host_index(uint32_t slot, uint32_t tag) const noexcept;
  const shm::UpstreamRecord* upstream_of(uint32_t slot, uint32_t tag) const noexcept;
  bool step(Probe& p, bool& ok, int& err);
  void finish(Probe& p, bool ok, int err, uint64_t now);
  void queue(HostState& st, uint32_t slot);
  void log_local_error(uint32_t slot, uint32_t tag, int err, uint64_t now);
  void remove(Probe& p);

  const shm::Segment& seg_;
  CheckerIo io_;
  shm::TableReader reader_;
  std::unique_ptr<shm::Table> table_;
  std::unique_ptr<shm::Table> next_;  // the table being read; swapped in if it is not refused
  std::vector<HostState> hosts_;
  std::vector<int32_t> index_;  // slot -> index of its host in table_, or -1
  std::vector<std::unique_ptr<Probe>> probes_;
  // The probes under way by deadline, and their sockets in epfd_: a wakeup
  // looks at the probes with an event or past their time, not at every
  // probe (a poll() over 8000 probes under way took 0.7 ms a wakeup).
  std::set<std::pair<uint64_t, Probe*>> deadlines_;
  core::UniqueFd epfd_;
  std::array<epoll_event, 256> events_{};
  // The checked hosts by due time: a wakeup looks at the ones due, not at
  // every host (a walk over 20000 hosts on each of them).
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due_;
  // The last http answer judged: "HTTP status NNN", "not an HTTP response", ...
  std::string last_status_;
  uint64_t last_local_log_ms_ = 0;
};

}  // namespace gw::process
