#include "gw/process/logger.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "gw/core/clock.hpp"
#include "gw/core/fd.hpp"
#include "gw/core/log.hpp"
#include "process/signals.hpp"

namespace gw::process {

int open_access_log(const std::string& path) {
  // O_NONBLOCK: a FIFO no process reads fails at once (ENXIO) rather than
  // block the open until a reader comes (the master opens each file to check
  // it, and would hang). Writes then block as on any file, so the flag goes.
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
  if (fd < 0 && errno == ENXIO) return -1;
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open access log {}: {}", path, std::strerror(errno)));
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

namespace {

constexpr int kChunksPerRound = 16;

// Whether the regular file open as `fd` (for writing, at `path`) ends inside
// a line: a write cut short by a full disk, or a logger killed mid-write.
bool ends_mid_line(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return false;
  core::UniqueFd rd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  char last = '\n';
  return rd && ::pread(rd.get(), &last, 1, st.st_size - 1) == 1 && last != '\n';
}

// Appends a chunk of whole lines to `fd`, first ending the line a failed
// write left unfinished (`mid_line`), so the cut line stands alone and the
// lines after it start on lines of their own (unless the file was emptied
// meanwhile: a copytruncate rotation). Returns false with errno set if a
// write failed; `mid_line` then says whether the file ends inside a line, and
// `done` how many bytes of the chunk went in.
bool write_lines(int fd, const char* p, size_t n, bool& mid_line, size_t& done) {
  static char newline = '\n';
  done = 0;
  if (mid_line) {
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0) mid_line = false;
  }
  iovec iov[2] = {{&newline, mid_line ? 1u : 0u}, {const_cast<char*>(p), n}};
  iovec* v = iov;
  int count = 2;
  while (count > 0) {
    if (v->iov_len == 0) {
      ++v;
      --count;
      continue;
    }
    const ssize_t w = ::writev(fd, v, count);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    for (auto left = static_cast<size_t>(w); left > 0;) {
      const size_t take = std::min(left, v->iov_len);
      mid_line = static_cast<const char*>(v->iov_base)[take - 1] != '\n';
      if (v == iov + 1) done += take;
      v->iov_base = static_cast<char*>(v->iov_base) + take;
      v->iov_len -= take;
      left -= take;
      if (v->iov_len == 0) {
        ++v;
        --count;
      }
    }
  }
  return true;
}

}  // namespace

int run_logger(const std::vector<int>& socks, const std::vector<std::string>& paths, const std::string& log_file) {
  std::vector<int> files(paths.size(), -1);
  std::vector<bool> mid_line(paths.size(), false);  // by file: it ends inside a line
  std::vector<bool> waiting(paths.size(), false);   // by file: a FIFO with no reader, said once
  // `all`: every file (the start, SIGUSR1); else those not open (a FIFO whose
  // reader had not come, or went), tried again each second.
  auto open_files = [&](bool all) {
    for (size_t i = 0; i < paths.size(); ++i) {
      if (!all && files[i] >= 0) continue;
      try {
        int fd = open_access_log(paths[i]);
        if (fd < 0) {
          if (files[i] >= 0) continue;  // a FIFO no one reads now: the one open before stays
          if (!waiting[i])
            GW_LOG_WARN(
                "access log {} is a FIFO that no process reads: its lines are dropped until one opens it for reading "
                "(tried each second)",
                paths[i]);
          waiting[i] = true;
          continue;
        }
        if (waiting[i]) GW_LOG_INFO("access log {}: a reader came; its lines go to it", paths[i]);
        waiting[i] = false;
        if (files[i] >= 0) ::close(files[i]);
        files[i] = fd;
        mid_line[i] = ends_mid_line(fd, paths[i]);
      } catch (const std::exception& e) {
        // A reopen that fails keeps the file open before, as nginx's does.
        if (all)
          GW_LOG_ERROR(
              "{} ({})", e.what(),
              files[i] >= 0 ? "its lines go on to the file it had open" : "lines for it are dropped until it opens");
      }
    }
  };
  auto open_all = [&] { open_files(true); };
  open_all();
  core::UniqueFd sfd = child_signal_fd();
  std::vector<pollfd> pfds;
  pfds.push_back({sfd.get(), POLLIN, 0});
  for (int s : socks) pfds.push_back({s, POLLIN, 0});
  size_t open_socks = socks.size();
  auto buf = std::make_unique<char[]>(256 * 1024);
  // Write failures, by file, as episodes: the first failure is logged at
  // once, then at most one line a minute while they go on, and the first
  // success after them says how many lines were lost. (One count for the
  // logger's life, logged at failures 1, 1001, ..., said nothing of a second
  // full disk or of a FIFO reader's second departure.)
  struct Failing {
    bool on = false;
    uint64_t lost = 0, since_ms = 0, logged_ms = 0;
    int err = 0;
  };
  std::vector<Failing> failing(paths.size());
  bool quit = false;
  uint64_t next_retry = 0;
  while (!quit && open_socks > 0) {
    const bool closed = std::find(files.begin(), files.end(), -1) != files.end();
    if (closed && core::monotonic_ms() >= next_retry) {
      open_files(false);
      next_retry = core::monotonic_ms() + 1000;
    }
    if (::poll(pfds.data(), pfds.size(), closed ? 1000 : -1) < 0) {
      if (errno == EINTR) continue;
      GW_LOG_ERROR("poll: {}", std::strerror(errno));
      return 1;
    }
    if (pfds[0].revents & POLLIN) {
      signalfd_siginfo si{};
      while (::read(sfd.get(), &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGUSR1) {
          if (!log_file.empty()) {
            try {
              core::log_open(log_file);
            } catch (const std::exception& e) {
              GW_LOG_ERROR("{}", e.what());
            }
          }
          GW_LOG_INFO("SIGUSR1: reopening {} access log(s)", paths.size());
          open_all();
        } else if (si.ssi_signo == SIGQUIT || si.ssi_signo == SIGINT) {
          quit = true;
        }
        // SIGTERM: keep going until the workers have closed their ends (their
        // last lines still arrive), as the master stops them.
      }
    }
    for (size_t i = 1; i < pfds.size(); ++i) {
      if (pfds[i].fd < 0 || !(pfds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      // A few chunks per socket and round: a worker that keeps its socket
      // full (the logger behind a slow disk) must not keep the other workers'
      // lines, or a SIGUSR1, waiting for as long as it does. (What is left
      // makes the next poll return at once.)
      for (int taken = 0; taken < kChunksPerRound; ++taken) {
        ssize_t n = ::recv(pfds[i].fd, buf.get(), 256 * 1024, MSG_DONTWAIT);
        if (n > 1) {
          const auto file = static_cast<uint8_t>(buf[0]);
          if (file < files.size() && files[file] >= 0) {
            bool mid = mid_line[file];
            size_t done = 0;
            const char* lines = buf.get() + 1;
            const auto len = static_cast<size_t>(n - 1);
            Failing& f = failing[file];
            if (write_lines(files[file], lines, len, mid, done)) {
              if (f.on)
                GW_LOG_WARN("access log {}: writes go in again; {} line(s) were lost in {} ms ({})", paths[file],
                            f.lost, core::monotonic_ms() - f.since_ms, std::strerror(f.err));
              f = Failing{};
            } else {
              const int err = errno;
              const uint64_t lost = static_cast<uint64_t>(std::count(lines + done, lines + len, '\n'));
              const uint64_t now = core::monotonic_ms();
              if (!f.on) {
                f = Failing{true, lost, now, now, err};
                GW_LOG_ERROR(
                    "access log {}: write: {}; {} line(s) lost (the next failures are counted, and said "
                    "once a minute, until a write goes in)",
                    paths[file], std::strerror(err), lost);
              } else {
                f.lost += lost;
                f.err = err;
                if (now - f.logged_ms >= 60000) {
                  f.logged_ms = now;
                  GW_LOG_ERROR("access log {}: write: {}; {} line(s) lost in {} ms so far", paths[file],
                               std::strerror(err), f.lost, now - f.since_ms);
                }
              }
              if (err == EPIPE) {
                // A FIFO whose reader went: opened again (each second) once another comes.
                ::close(files[file]);
                files[file] = -1;
                mid = false;
              }
            }
            mid_line[file] = mid;
          }
          continue;
        }
        if (n == 0) {
          // Every writer of this slot is gone (the gateway is stopping).
          pfds[i].fd = -1;
          --open_socks;
          break;
        }
        if (n == 1) continue;
        if (errno == EINTR) continue;
        break;  // EAGAIN
      }
    }
  }
  for (int fd : files)
    if (fd >= 0) ::close(fd);
  return 0;
}

}  // namespace gw::process
