// splice() against plain copies for the L4 relay's data path, by body size.
//
//   build-release/gw-splice-bench [--seconds S]
//
// For each body size (64 KiB .. 16 MiB) and method, a source thread sends the
// body over loopback TCP to the relay thread, which moves it to a second TCP
// connection read by a sink thread, then the connections close. Methods:
//   copy16k / copy64k  recv() into a user buffer, send() it on (what the
//                      relays do; 16 KiB is their buffer size)
//   splice             socket -> pipe -> socket with splice(2), no user copy
// Reported per method and size: the relay thread's CPU time per MiB (CLOCK_THREAD_CPUTIME_ID:
// what the proxy pays) and the wall-clock throughput (all three
// threads share the machine). Each cell runs repeated transfers for about S/15
// seconds (default S = 15) and reports medians. Loopback only.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

int listener(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 16) != 0) {
    std::perror("bind/listen");
    std::exit(1);
  }
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

double thread_cpu_s() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

enum class Method { copy16k, copy64k, splice };
const char* name(Method m) {
  return m == Method::copy16k ? "copy16k" : m == Method::copy64k ? "copy64k" : "splice";
}

// Moves everything from `in` to `out` until EOF; returns bytes moved.
size_t relay(Method m, int in, int out, char* buf, int pipefd[2]) {
  size_t total = 0;
  if (m == Method::splice) {
    for (;;) {
      ssize_t n = ::splice(in, nullptr, pipefd[1], nullptr, 1 << 20, SPLICE_F_MOVE | SPLICE_F_MORE);
      if (n <= 0) break;
      ssize_t left = n;
      while (left > 0) {
        ssize_t w =
            ::splice(pipefd[0], nullptr, out, nullptr, static_cast<size_t>(left), SPLICE_F_MOVE | SPLICE_F_MORE);
        if (w <= 0) return total;
        left -= w;
      }
      total += static_cast<size_t>(n);
    }
    return total;
  }
  const size_t cap = m == Method::copy16k ? 16384 : 65536;
  for (;;) {
    ssize_t n = ::recv(in, buf, cap, 0);
    if (n <= 0) break;
    ssize_t off = 0;
    while (off < n) {
      ssize_t w = ::send(out, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
      if (w <= 0) return total;
      off += w;
    }
    total += static_cast<size_t>(n);
  }
  return total;
}

struct Cell {
  double cpu_ms_per_mib;
  double mib_per_s;
};

Cell run(Method m, size_t size, double budget_s, const std::vector<char>& body) {
  uint16_t pa, pb;
  int la = listener(pa), lb = listener(pb);
  std::vector<char> buf(65536);
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) std::exit(1);
  ::fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20);
  std::vector<double> cpu, wall;
  const auto t_end = std::chrono::steady_clock::now() + std::chrono::duration<double>(budget_s);
  for (int it = 0; it < 3 || (std::chrono::steady_clock::now() < t_end && it < 2000); ++it) {
    std::atomic<size_t> sunk{0};
    std::thread source([&] {
      int fd = connect_to(pa);
      size_t off = 0;
      while (off < size) {
        ssize_t w = ::send(fd, body.data() + off, std::min<size_t>(size - off, 1 << 20), MSG_NOSIGNAL);
        if (w <= 0) break;
        off += static_cast<size_t>(w);
      }
      ::shutdown(fd, SHUT_WR);
      char c;
      while (::recv(fd, &c, 1, 0) > 0) {
      }
      ::close(fd);
    });
    std::thread sink([&] {
      int fd = ::accept4(lb, nullptr, nullptr, SOCK_CLOEXEC);
      std::vector<char> b(1 << 20);
      size_t n = 0;
      for (;;) {
        ssize_t r = ::recv(fd, b.data(), b.size(), 0);
        if (r <= 0) break;
        n += static_cast<size_t>(r);
      }
      sunk = n;
      ::close(fd);
    });
    const auto w0 = std::chrono::steady_clock::now();
    int a = ::accept4(la, nullptr, nullptr, SOCK_CLOEXEC);
    int one = 1;
    ::setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int b = connect_to(pb);
    const double c0 = thread_cpu_s();
    size_t moved = relay(m, a, b, buf.data(), pipefd);
    const double c1 = thread_cpu_s();
    ::shutdown(b, SHUT_WR);
    ::close(b);
    ::close(a);
    source.join();
    sink.join();
    const auto w1 = std::chrono::steady_clock::now();
    if (moved != size || sunk != size) {
      std::fprintf(stderr, "%s %zu: moved %zu, sunk %zu\n", name(m), size, moved, sunk.load());
      std::exit(1);
    }
    const double mib = static_cast<double>(size) / (1 << 20);
    cpu.push_back((c1 - c0) * 1000 / mib);
    wall.push_back(mib / std::chrono::duration<double>(w1 - w0).count());
  }
  ::close(pipefd[0]);
  ::close(pipefd[1]);
  ::close(la);
  ::close(lb);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  return {median(cpu), median(wall)};
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 15;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) seconds = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: gw-splice-bench [--seconds S]\n");
      return 2;
    }
  }
  const std::vector<size_t> sizes = {64u << 10, 256u << 10, 1u << 20, 4u << 20, 16u << 20};
  const Method methods[] = {Method::copy16k, Method::copy64k, Method::splice};
  std::vector<char> body(16u << 20);
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 2654435761u >> 13);
  const double budget = seconds / static_cast<double>(sizes.size() * 3);
  std::printf("relay thread CPU ms per MiB (lower is better) / wall MiB/s, medians\n");
  std::printf("%-10s", "size");
  for (Method m : methods) std::printf(" %22s", name(m));
  std::printf("\n");
  for (size_t size : sizes) {
    std::printf(
        "%-10s",
        (size >= (1u << 20) ? std::to_string(size >> 20) + " MiB" : std::to_string(size >> 10) + " KiB").c_str());
    for (Method m : methods) {
      Cell c = run(m, size, budget, body);
      std::printf(" %10.3f / %9.0f", c.cpu_ms_per_mib, c.mib_per_s);
      std::fflush(stdout);
    }
    std::printf("\n");
  }
}
