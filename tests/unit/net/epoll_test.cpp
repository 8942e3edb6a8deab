#include <doctest/doctest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "gw/net/reactor.hpp"

TEST_SUITE("net") {
  TEST_CASE("Epoll::wait: EINTR is no event; a broken epoll set ends the process with a message, not a busy loop") {
    int out[2];
    REQUIRE(::pipe(out) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::dup2(out[1], STDERR_FILENO);
      // doctest's own crash report for the child goes there too, not into the
      // test log, where it read as a failure of this (passing) test.
      ::dup2(out[1], STDOUT_FILENO);
      rlimit no_core{0, 0};
      ::setrlimit(RLIMIT_CORE, &no_core);
      gw::net::Epoll ep;
      epoll_event ev[4];
      // A timeout that ends the wait: nothing is ready.
      if (ep.wait(ev, 4, 1) != 0) ::_exit(2);
      // The epoll descriptor closed under the reactor (a double close elsewhere):
      // every further wait fails with EBADF at once.
      ::close(ep.fd());
      for (int i = 0; i < 1000; ++i) ep.wait(ev, 4, 10);
      ::_exit(0);  // looped silently
    }
    ::close(out[1]);
    std::string err;
    char buf[512];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof(buf))) > 0;) err.append(buf, static_cast<size_t>(n));
    ::close(out[0]);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    if (WIFSIGNALED(status)) CHECK(WTERMSIG(status) == SIGABRT);
    CHECK(err.find("epoll_wait") != std::string::npos);
  }
}
