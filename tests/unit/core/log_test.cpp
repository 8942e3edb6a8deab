#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gw/core/log.hpp"

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
    CHECK(text.find("bad key \"x?error master[1]: FORGED??[2J\"\tend\n") != std::string::npos);
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
}
