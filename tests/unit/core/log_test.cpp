#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gw/core/log.hpp"
#include "gw/core/text.hpp"

TEST_SUITE("core") {
  TEST_CASE("a log record is one line: control characters in the text cannot forge another") {
    char path[] = "/tmp/gw-log-test-XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    gw::core::log_open(path);
    gw::core::log_write(gw::core::LogLevel::warn, "bad key \"x\nerror master[1]: FORGED\r\x1b[2J\"\tend");
    gw::core::log_open("");  // back to stderr
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    ::unlink(path);
    const std::string text = ss.str();
    CHECK(text.find('\n') == text.size() - 1);
    CHECK(text.find("bad key \"x\\nerror master[1]: FORGED\\r\\x1b[2J\"\\tend\n") != std::string::npos);
  }

  TEST_CASE("a log_file that is a FIFO no process reads: the open fails at once (it waited for a reader)") {
    char dir[] = "/tmp/gw-log-test-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/error.fifo";
    REQUIRE(::mkfifo(path.c_str(), 0644) == 0);
    // In a child with an alarm: an open that waits for a reader is killed, not a hung test.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::alarm(2);
      try {
        gw::core::log_open(path);
        ::_exit(1);
      } catch (const std::exception& e) {
        ::_exit(std::string(e.what()).find("a FIFO that no process reads") != std::string::npos ? 0 : 2);
      }
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK((WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)) == 0);
    ::unlink(path.c_str());
    ::rmdir(dir);
  }
}

TEST_SUITE("core") {
  namespace {
  std::string logged(std::string_view text) {
    char path[] = "/tmp/gw-log-test-XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    gw::core::log_open(path);
    gw::core::log_write(gw::core::LogLevel::info, text);
    gw::core::log_open("");  // back to stderr
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    ::unlink(path);
    return ss.str();
  }
  }  // namespace

  TEST_CASE("a long log record is written whole (a ready line naming 64 listeners), one write of at most PIPE_BUF") {
    std::string text = "ready: 2 worker(s), engine epoll, shm \"gw\", listeners:";
    for (int i = 0; i < 64; ++i) text += " listener-" + std::to_string(i) + "=127.0.0.1:" + std::to_string(20000 + i);
    REQUIRE(text.size() > 1500);
    REQUIRE(text.size() < 3500);
    const std::string out = logged(text);
    CHECK(out.find('\n') == out.size() - 1);
    CHECK(out.find(text + "\n") != std::string::npos);
  }

  TEST_CASE("a record too long for one line is cut visibly, with ..., and stays one line") {
    const std::string text(10000, 'x');
    const std::string out = logged(text);
    CHECK(out.size() <= 4096);
    CHECK(out.find('\n') == out.size() - 1);
    CHECK(out.size() >= 5);
    CHECK(out.substr(out.size() - 5) == "x...\n");
  }

  TEST_CASE("a log record escapes C1 controls and bytes that are not UTF-8 as gwctl does (a rule's header value)") {
    // U+009B is CSI: a terminal showing the log would act on "\xc2\x9b31m".
    const std::string out = logged(
        "event: add rule web/main/r header=X-T=a\xc2\x9b"
        "31m\xff\x1b[2J\nforged caf\xc3\xa9 -> app");
    CHECK(out.find('\n') == out.size() - 1);
    CHECK(out.find("event: add rule web/main/r header=X-T=a\\xc2\\x9b31m\\xff\\x1b[2J\\nforged caf\xc3\xa9 -> app\n") !=
          std::string::npos);
  }

  TEST_CASE("a record cut for length is cut between characters and escapes, never inside one") {
    for (const std::string unit : {"\xe2\x82\xac", "\x1b", "\xc2\x9b"}) {
      std::string text;
      while (text.size() < 6000) text += unit;
      const std::string out = logged(text);
      CAPTURE(gw::core::one_line(unit));
      CHECK(out.size() <= 4096);
      CHECK(out.find('\n') == out.size() - 1);
      REQUIRE(out.size() >= 4);
      CHECK(out.substr(out.size() - 4) == "...\n");
      const std::string body = out.substr(out.find("]: ") + 3, out.size() - 4 - (out.find("]: ") + 3));
      const std::string escaped = gw::core::one_line(unit);
      REQUIRE(body.size() % escaped.size() == 0);
      for (size_t i = 0; i < body.size(); i += escaped.size()) CHECK(body.substr(i, escaped.size()) == escaped);
    }
  }
}
