#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <string>

#include "gw/core/fd.hpp"

namespace {

std::string target_of(int fd) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof(buf));
  return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
}

}  // namespace

TEST_SUITE("core") {
  TEST_CASE("ensure_std_fds opens /dev/null where 0, 1 or 2 is closed, and leaves open ones alone") {
    // In a child: the test runner's own descriptors stay as they are. Exit
    // code 0 = all checks held; otherwise the number of the first that failed.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int pipefd[2];
      if (::pipe(pipefd) != 0) ::_exit(10);
      // 1 stays open (as a pipe's write end); 0 and 2 are closed.
      if (::dup2(pipefd[1], 1) < 0) ::_exit(11);
      ::close(0);
      ::close(2);
      ::close(pipefd[0]);
      ::close(pipefd[1]);
      if (!gw::core::ensure_std_fds()) ::_exit(12);
      if (target_of(0) != "/dev/null") ::_exit(13);
      if (target_of(2) != "/dev/null") ::_exit(14);
      if (target_of(1).rfind("pipe:", 0) != 0) ::_exit(15);
      // The next descriptor opened is past them.
      const int next = ::dup(1);
      if (next < 3) ::_exit(16);
      if (!gw::core::ensure_std_fds()) ::_exit(17);  // nothing to do: still true
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
}
