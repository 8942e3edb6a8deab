#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "gw/core/log.hpp"
#include "gw/process/logger.hpp"

using namespace gw;

namespace {

// A logger process writing `path` from one worker socket (returned), with
// its file size limited to `fsize` bytes: a write past it stops there and
// then fails (EFBIG), as on a full disk.
pid_t start_logger(const std::string& path, rlim_t fsize, int& worker_end, const std::string& error_log = "/dev/null") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(sv[1]);
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim{};
    ::getrlimit(RLIMIT_FSIZE, &lim);
    lim.rlim_cur = fsize;
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) ::_exit(2);
    try {
      core::log_open(error_log);                  // its "write: File too large" lines
      core::log_set_level(core::LogLevel::info);  // (the test binary's is error)
      ::_exit(process::run_logger({sv[0]}, {path}, ""));
    } catch (...) {
      ::_exit(3);
    }
  }
  ::close(sv[0]);
  worker_end = sv[1];
  return pid;
}

void send_chunk(int fd, const std::string& lines, char file = 0) {
  const std::string chunk = std::string(1, file) + lines;
  REQUIRE(::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(chunk.size()));
}

off_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

std::string read_file(const std::string& path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// Closes the worker end (the logger then exits) and waits for the logger.
int stop_logger(pid_t pid, int worker_end) {
  ::close(worker_end);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_SUITE("process") {
  TEST_CASE("logger: after a write cut short (a full disk), the next lines start on a line of their own") {
    char dir[] = "/tmp/gwunit-logger-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/access.log";
    const std::string a = std::string(59, 'a') + "\n", b = std::string(59, 'b') + "\n", c = std::string(59, 'c') + "\n";

    SUBCASE("the disk fills under a chunk, and space is freed") {
      int w = -1;
      const pid_t pid = start_logger(path, 100, w);
      send_chunk(w, a + b);  // 120 bytes: b is cut at the 100th
      for (int i = 0; i < 500 && file_size(path) < 100; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      REQUIRE(file_size(path) == 100);
      rlimit lim{};
      REQUIRE(::prlimit(pid, RLIMIT_FSIZE, nullptr, &lim) == 0);
      lim.rlim_cur = lim.rlim_max;  // the space is back
      REQUIRE(::prlimit(pid, RLIMIT_FSIZE, &lim, nullptr) == 0);
      send_chunk(w, c);
      CHECK(stop_logger(pid, w) == 0);
      // The cut line ends where it was cut; c was glued to it.
      CHECK(read_file(path) == a + b.substr(0, 40) + "\n" + c);
    }
    SUBCASE("a file left ending inside a line (a logger killed mid-write) when the logger starts") {
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      REQUIRE(fd >= 0);
      REQUIRE(::write(fd, "partial", 7) == 7);
      ::close(fd);
      int w = -1;
      const pid_t pid = start_logger(path, RLIM_INFINITY, w);
      send_chunk(w, c);
      CHECK(stop_logger(pid, w) == 0);
      CHECK(read_file(path) == "partial\n" + c);
    }
    SUBCASE("a file whose lines are whole gets nothing added") {
      int w = -1;
      const pid_t pid = start_logger(path, RLIM_INFINITY, w);
      send_chunk(w, a);
      send_chunk(w, b);
      CHECK(stop_logger(pid, w) == 0);
      CHECK(read_file(path) == a + b);
    }
    ::unlink(path.c_str());
    ::rmdir(dir);
  }

  TEST_CASE(
      "logger: each episode of failed writes is logged, with the lines lost; a truncated file gets no blank line") {
    // Failures were logged at the logger's 1st, 1001st, ... failed write:
    // a second full disk said nothing. And a file emptied after a cut write
    // (copytruncate) began with an empty line.
    char dir[] = "/tmp/gwunit-logger-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/access.log";
    const std::string a = std::string(59, 'a') + "\n", b = std::string(59, 'b') + "\n", c = std::string(59, 'c') + "\n";
    // The logger's own log goes to a pipe: its file size limit would cut a file's lines.
    int errpipe[2];
    REQUIRE(::pipe2(errpipe, O_NONBLOCK) == 0);
    int w = -1;
    const pid_t pid = start_logger(path, 100, w, "/proc/self/fd/" + std::to_string(errpipe[1]));
    ::close(errpipe[1]);
    std::string log;
    auto read_log = [&] {
      char buf[4096];
      for (ssize_t n; (n = ::read(errpipe[0], buf, sizeof buf)) > 0;) log.append(buf, static_cast<size_t>(n));
      return log;
    };
    auto set_limit = [&](rlim_t v) {
      rlimit lim{};
      REQUIRE(::prlimit(pid, RLIMIT_FSIZE, nullptr, &lim) == 0);
      lim.rlim_cur = v;
      REQUIRE(::prlimit(pid, RLIMIT_FSIZE, &lim, nullptr) == 0);
    };
    auto wait_for = [&](const std::string& text, int count) {
      for (int i = 0; i < 500; ++i) {
        const std::string t = read_log();
        size_t n = 0;
        for (size_t at = t.find(text); at != std::string::npos; at = t.find(text, at + 1)) ++n;
        if (static_cast<int>(n) >= count) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return false;
    };
    send_chunk(w, a + b);  // b is cut at the 100th byte
    REQUIRE(wait_for("line(s) lost (the next failures", 1));
    set_limit(RLIM_INFINITY);
    REQUIRE(::truncate(path.c_str(), 0) == 0);  // copytruncate
    send_chunk(w, a);
    REQUIRE(wait_for("writes go in again; 1 line(s) were lost", 1));
    CHECK(read_file(path) == a);  // no blank line first
    set_limit(100);               // the disk fills again: a second episode, logged again
    send_chunk(w, b + c);
    CHECK(wait_for("line(s) lost (the next failures", 2));
    CHECK(stop_logger(pid, w) == 0);
    CHECK(read_log().find("access log " + path + ": write: File too large; 1 line(s) lost") != std::string::npos);
    ::close(errpipe[0]);
    ::unlink(path.c_str());
    ::rmdir(dir);
  }

  TEST_CASE("logger: a worker that keeps its socket full (a slow disk) does not hold up another worker's lines") {
    char dir[] = "/tmp/gwunit-logger-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    // File 0 is a FIFO read slowly: the logger's writes to it wait, as on a
    // slow disk. File 1 is a regular file.
    const std::string slow = std::string(dir) + "/slow.log", fast = std::string(dir) + "/fast.log";
    REQUIRE(::mkfifo(slow.c_str(), 0644) == 0);
    std::atomic<bool> stop{false};
    // The reader is there before the logger opens the FIFO (an open that
    // finds none does not wait for one), and a writer of the test's own keeps
    // it from reading an end of file before the logger has opened it.
    const int rfd = ::open(slow.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    REQUIRE(rfd >= 0);
    const int keep = ::open(slow.c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(keep >= 0);
    ::fcntl(rfd, F_SETFL, ::fcntl(rfd, F_GETFL) & ~O_NONBLOCK);
    std::thread reader([&] {
      char buf[65536];
      while (::read(rfd, buf, sizeof(buf)) > 0)
        if (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      ::close(rfd);
    });
    int a[2], b[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, a) == 0);
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, b) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(a[1]);
      ::close(b[1]);
      try {
        core::log_open("/dev/null");
        ::_exit(process::run_logger({a[0], b[0]}, {slow, fast}, ""));
      } catch (...) {
        ::_exit(3);
      }
    }
    ::close(a[0]);
    ::close(b[0]);
    // Worker a sends as fast as the logger takes its chunks: its socket is never empty.
    std::thread flood([&] {
      const std::string chunk = std::string(1, '\0') + std::string(32767, 'a') + "\n";
      while (!stop && ::send(a[1], chunk.data(), chunk.size(), MSG_NOSIGNAL) > 0) {
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const std::string line = std::string(59, 'b') + "\n";
    send_chunk(b[1], line, 1);
    bool written = false;
    for (int i = 0; i < 300 && !written; ++i) {
      written = read_file(fast) == line;
      if (!written) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(written);
    stop = true;
    ::shutdown(a[1], SHUT_WR);  // (the flood's send returns)
    flood.join();
    ::close(b[1]);
    CHECK(stop_logger(pid, a[1]) == 0);
    ::close(keep);
    reader.join();
    ::unlink(slow.c_str());
    ::unlink(fast.c_str());
    ::rmdir(dir);
  }

  TEST_CASE("logger: a file that does not open again on SIGUSR1 keeps its lines going to the file open before") {
    char dir[] = "/tmp/gwunit-logger-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/access.log", errlog = std::string(dir) + "/error.log";
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(sv[1]);
      try {
        core::log_open(errlog);
        ::_exit(process::run_logger({sv[0]}, {path}, ""));
      } catch (...) {
        ::_exit(3);
      }
    }
    ::close(sv[0]);
    const std::string a = std::string(59, 'a') + "\n", b = std::string(59, 'b') + "\n";
    send_chunk(sv[1], a);
    for (int i = 0; i < 500 && read_file(path) != a; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(read_file(path) == a);
    // Rotated, and the path can no longer be opened for writing.
    REQUIRE(::rename(path.c_str(), (path + ".1").c_str()) == 0);
    REQUIRE(::mkdir(path.c_str(), 0755) == 0);
    REQUIRE(::kill(pid, SIGUSR1) == 0);
    for (int i = 0; i < 500 && read_file(errlog).find("cannot open access log") == std::string::npos; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    send_chunk(sv[1], b);
    CHECK(stop_logger(pid, sv[1]) == 0);
    CHECK(read_file(path + ".1") == a + b);  // as nginx, which keeps a file it cannot reopen
    const std::string log = read_file(errlog);
    CHECK(log.find("cannot open access log") != std::string::npos);
    CHECK(log.find("dropped") == std::string::npos);
    CHECK(log.find("its lines go on to the file it had open") != std::string::npos);
    ::rmdir(path.c_str());
    ::unlink((path + ".1").c_str());
    ::unlink(errlog.c_str());
    ::rmdir(dir);
  }

  TEST_CASE("logger: an access log that is a FIFO no one reads: the open does not wait for a reader") {
    char dir[] = "/tmp/gwunit-logger-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/access.fifo";
    REQUIRE(::mkfifo(path.c_str(), 0644) == 0);
    // In a child with an alarm: an open that waits for a reader is killed, not a hung test.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::alarm(2);
      try {
        ::_exit(process::open_access_log(path) == -1 ? 0 : 1);
      } catch (...) {
        ::_exit(3);
      }
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK((WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)) == 0);
    // With a reader it opens, and its writes block as on any file (no O_NONBLOCK left).
    const int reader = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    REQUIRE(reader >= 0);
    const int fd = process::open_access_log(path);
    REQUIRE(fd >= 0);
    CHECK((::fcntl(fd, F_GETFL) & O_NONBLOCK) == 0);
    CHECK(::write(fd, "line\n", 5) == 5);
    char buf[16] = {};
    CHECK(::read(reader, buf, sizeof(buf)) == 5);
    ::close(fd);
    ::close(reader);
    ::unlink(path.c_str());
    ::rmdir(dir);
  }
}
