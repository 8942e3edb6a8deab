#pragma once
// Signal handling shared by the worker and the auxiliary processes: the stop and control
// signals are blocked and delivered through a signalfd in the process's event
// loop, so no handler ever runs asynchronously.

#include <signal.h>
#include <sys/signalfd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "gw/core/fd.hpp"
#include "gw/core/log.hpp"

namespace gw::process {

/// Blocks SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 and SIGWINCH (the
/// master retires a worker generation with it) and returns a non-blocking
/// signalfd for them. Throws std::runtime_error on failure.
inline core::UniqueFd child_signal_fd() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set, s);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  core::UniqueFd fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!fd) throw std::runtime_error(fmt::format("signalfd: {}", std::strerror(errno)));
  return fd;
}

/// What the stop signals among those read ask for.
enum class StopSignal : uint8_t {
  none,
  graceful,  ///< SIGTERM: finish what is under way, take nothing new
  now,       ///< SIGINT or SIGQUIT
};

/// Reads every pending signal from `sfd` (a child_signal_fd): SIGUSR1 reopens
/// the error log `log_file` (logrotate; empty = stderr, nothing to do).
/// Returns the strongest stop signal among them.
inline StopSignal read_child_signals(int sfd, const std::string& log_file) {
  StopSignal stop = StopSignal::none;
  signalfd_siginfo si{};
  while (::read(sfd, &si, sizeof(si)) == sizeof(si)) {
    if (si.ssi_signo == SIGINT || si.ssi_signo == SIGQUIT) stop = StopSignal::now;
    if (si.ssi_signo == SIGTERM && stop == StopSignal::none) stop = StopSignal::graceful;
    if (si.ssi_signo == SIGUSR1 && !log_file.empty()) {
      try {
        core::log_open(log_file);
      } catch (const std::exception& e) {
        GW_LOG_ERROR("{}", e.what());
      }
    }
  }
  return stop;
}

/// read_child_signals for a process that stops the same way on every stop
/// signal: true when one (SIGTERM, SIGINT, SIGQUIT) was among them.
inline bool drain_child_signals(int sfd, const std::string& log_file) {
  return read_child_signals(sfd, log_file) != StopSignal::none;
}

}  // namespace gw::process
