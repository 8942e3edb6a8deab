#pragma once
// Signal handling shared by the worker and the checker: the stop and control
// signals are blocked and delivered through a signalfd in the process's event
// loop, so no handler ever runs asynchronously.

#include <signal.h>
#include <sys/signalfd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "gw/core/fd.hpp"

namespace gw::process {

/// Blocks SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 and SIGUSR2 and returns a
/// non-blocking signalfd for them. Throws std::runtime_error on failure.
inline core::UniqueFd child_signal_fd() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2}) sigaddset(&set, s);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  core::UniqueFd fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!fd) throw std::runtime_error(fmt::format("signalfd: {}", std::strerror(errno)));
  return fd;
}

}  // namespace gw::process
