#include "gw/core/log.hpp"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "gw/core/text.hpp"

namespace gw::core {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
// Atomic, and a reopen moves the file under the same number (dup3): a thread
// (the admin server's writes) may log while the main thread reopens.
std::atomic<int> g_fd{STDERR_FILENO};
char g_role[32] = "gw";

const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warn: return "warn";
    case LogLevel::error: return "error";
  }
  return "?";
}
}  // namespace

bool parse_log_level(std::string_view s, LogLevel& out) {
  if (s == "debug") out = LogLevel::debug;
  else if (s == "info") out = LogLevel::info;
  else if (s == "warn") out = LogLevel::warn;
  else if (s == "error") out = LogLevel::error;
  else return false;
  return true;
}

void log_set_role(std::string_view role) {
  size_t n = std::min(role.size(), sizeof(g_role) - 1);
  std::memcpy(g_role, role.data(), n);
  g_role[n] = '\0';
}

void log_set_level(LogLevel level) {
  g_level.store(static_cast<int>(level));
}
LogLevel log_level() {
  return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed));
}

int log_open_file(const std::string& path, bool create) {
  // O_NONBLOCK, kept: a FIFO that no process reads fails the open at once
  // (ENXIO) rather than hang the master's start or reload, and a full one
  // loses a record rather than stop the process writing it.
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NONBLOCK | (create ? O_CREAT : 0), 0644);
  if (const int err = errno; fd < 0 && (create || err != ENOENT))
    throw std::runtime_error(fmt::format("cannot open log file {}: {}{}", path, std::strerror(err),
                                         err == ENXIO ? " (a FIFO that no process reads)" : ""));
  return fd;
}

void log_open(const std::string& path) {
  const int old = g_fd.load();
  if (path.empty()) {
    g_fd.store(STDERR_FILENO);
    if (old != STDERR_FILENO) ::close(old);
    return;
  }
  const int fd = log_open_file(path, true);
  if (old != STDERR_FILENO && ::dup3(fd, old, O_CLOEXEC) == old) {
    ::close(fd);
    return;
  }
  g_fd.store(fd);
  if (old != STDERR_FILENO) ::close(old);
}

void log_write(LogLevel level, std::string_view text) noexcept {
  // One write of at most PIPE_BUF bytes: a record is never split or mixed
  // with another process's, on a pipe (stderr to journald) as in a file.
  char buf[PIPE_BUF];
  timeval tv{};
  ::gettimeofday(&tv, nullptr);
  tm t{};
  ::gmtime_r(&tv.tv_sec, &t);
  const size_t cap = sizeof(buf) - 1;  // and the '\n'
  auto r = fmt::format_to_n(buf, cap, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {}[{}]: ", t.tm_year + 1900,
                            t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, tv.tv_usec / 1000,
                            level_name(level), g_role, ::getpid());
  size_t n = std::min(r.size, cap);
  // One record, one line, escaped as gwctl escapes what it quotes: a control
  // character or a byte that is not UTF-8 in the text (a value from gwctl,
  // etcd, a request, a file) can neither forge another line nor drive the
  // terminal of whoever reads the log.
  size_t fits = n;  // the end of the last piece with room for "..." after it
  bool cut = false;
  one_line_pieces(text, [&](std::string_view piece) {
    if (cut || n + piece.size() > cap) {
      cut = true;
      return;
    }
    std::memcpy(buf + n, piece.data(), piece.size());
    n += piece.size();
    if (n + 3 <= cap) fits = n;
  });
  if (cut) {  // cut between two pieces, and visibly so
    n = fits;
    std::memcpy(buf + n, "...", 3);
    n += 3;
  }
  buf[n++] = '\n';
  ssize_t w = ::write(g_fd.load(std::memory_order_relaxed), buf, n);
  (void)w;
}

}  // namespace gw::core
