// Kernel socket splicing with a BPF sockmap, as a candidate L4 data path.
//
//   build-release/gw-sockmap-probe --listen PORT --backend PORT [--workers N]
//
// Needs root (CAP_BPF and CAP_NET_ADMIN). A minimal L4 proxy on 127.0.0.1:PORT: each
// accepted client gets a connection to 127.0.0.1:BACKEND, and both sockets go into a
// BPF_MAP_TYPE_SOCKHASH whose BPF_SK_SKB_VERDICT program redirects every received skb to
// the other socket's transmit side (bpf_sk_redirect_hash, keyed by the receiving
// socket's cookie). No byte of the relayed stream passes through this process; it only
// accepts, connects and closes a pair when either side ends. Point wrk at it, and at
// gwd and nginx stream over the same backend, in interleaved rounds (bench/RESULTS.md,
// "sockmap"). It is a probe, not a relay: no half-close, no drain before close, no
// timeouts, a blocking connect.
//
// The program is eight instructions, assembled here rather than compiled with clang
// and loaded with libbpf, so the probe builds with nothing beyond the kernel headers.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

namespace {

long sys_bpf(int cmd, bpf_attr& attr) {
  return ::syscall(SYS_bpf, cmd, &attr, sizeof(attr));
}

constexpr bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "gw-sockmap-probe: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// The sockhash maps a socket's cookie to its peer socket. The verdict program:
//   r6 = ctx; r0 = bpf_get_socket_cookie(ctx); *(u64 *)(r10 - 8) = r0;
//   return bpf_sk_redirect_hash(ctx, map, r10 - 8, 0)   /* 0: the peer's egress */
int load_program(int map) {
  const std::array<bpf_insn, 11> prog{
      insn(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),
      insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
      insn(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),
      insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
      insn(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, map),
      insn(0, 0, 0, 0, 0),  // the upper half of the 64-bit immediate
      insn(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
      insn(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
      insn(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),
      insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
      insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  static char log[16384];
  bpf_attr a{};
  a.prog_type = BPF_PROG_TYPE_SK_SKB;
  a.insns = reinterpret_cast<uintptr_t>(prog.data());
  a.insn_cnt = prog.size();
  a.license = reinterpret_cast<uintptr_t>("GPL");
  a.log_buf = reinterpret_cast<uintptr_t>(log);
  a.log_size = sizeof(log);
  a.log_level = 1;
  int fd = static_cast<int>(sys_bpf(BPF_PROG_LOAD, a));
  if (fd < 0) {
    std::fprintf(stderr, "gw-sockmap-probe: verifier log:\n%s\n", log);
    die("BPF_PROG_LOAD");
  }
  return fd;
}

// Fails (EOPNOTSUPP) for a socket that is no longer established, e.g. a client that
// closed before it was added.
bool map_put(int map, uint64_t cookie, int peer_fd) {
  uint64_t value = static_cast<uint64_t>(peer_fd);
  bpf_attr a{};
  a.map_fd = static_cast<uint32_t>(map);
  a.key = reinterpret_cast<uintptr_t>(&cookie);
  a.value = reinterpret_cast<uintptr_t>(&value);
  a.flags = BPF_ANY;
  return sys_bpf(BPF_MAP_UPDATE_ELEM, a) == 0;
}

uint64_t cookie_of(int fd) {
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) die("SO_COOKIE");
  return cookie;
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

[[noreturn]] void serve(int map, uint16_t listen_port, uint16_t backend_port) {
  int ls = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  sockaddr_in la = loopback(listen_port);
  if (::bind(ls, reinterpret_cast<sockaddr*>(&la), sizeof(la)) != 0) die("bind");
  if (::listen(ls, 4096) != 0) die("listen");
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = ls;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  sockaddr_in ba = loopback(backend_port);
  std::vector<int> peer(65536, -1);
  std::array<epoll_event, 64> evs{};
  for (;;) {
    int n = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), -1);
    for (int i = 0; i < n; ++i) {
      int fd = evs[static_cast<size_t>(i)].data.fd;
      if (fd == ls) {
        int c = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (u < 0 || static_cast<size_t>(std::max(c, u)) >= peer.size() ||
            ::connect(u, reinterpret_cast<sockaddr*>(&ba), sizeof(ba)) != 0) {
          ::close(c);
          if (u >= 0) ::close(u);
          continue;
        }
        ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        ::setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        // What c receives goes out on u, and the other way round.
        if (!map_put(map, cookie_of(c), u) || !map_put(map, cookie_of(u), c)) {
          ::close(c);  // closing removes a socket from the map
          ::close(u);
          continue;
        }
        peer[static_cast<size_t>(c)] = u;
        peer[static_cast<size_t>(u)] = c;
        for (int s : {c, u}) {
          ev.events = EPOLLIN | EPOLLRDHUP;
          ev.data.fd = s;
          ::epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
        }
      } else {
        // Only an end of stream or an error reaches here: data is redirected in the
        // kernel. Closing the sockets removes them from the sockhash.
        int other = peer[static_cast<size_t>(fd)];
        peer[static_cast<size_t>(fd)] = -1;
        ::close(fd);
        if (other >= 0) {
          peer[static_cast<size_t>(other)] = -1;
          ::close(other);
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  long listen_port = 0, backend_port = 0, workers = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view opt = argv[i];
    long v = std::strtol(argv[i + 1], nullptr, 10);
    if (opt == "--listen") listen_port = v;
    else if (opt == "--backend") backend_port = v;
    else if (opt == "--workers") workers = v;
  }
  if (listen_port <= 0 || listen_port > 65535 || backend_port <= 0 || backend_port > 65535 || workers < 1 ||
      workers > 64) {
    std::fprintf(stderr, "usage: gw-sockmap-probe --listen PORT --backend PORT [--workers N]\n");
    return 2;
  }
  bpf_attr a{};
  a.map_type = BPF_MAP_TYPE_SOCKHASH;
  a.key_size = sizeof(uint64_t);
  a.value_size = sizeof(uint64_t);
  a.max_entries = 65536;
  int map = static_cast<int>(sys_bpf(BPF_MAP_CREATE, a));
  if (map < 0) die("BPF_MAP_CREATE (sockhash; needs root)");
  int prog = load_program(map);
  bpf_attr at{};
  at.target_fd = static_cast<uint32_t>(map);
  at.attach_bpf_fd = static_cast<uint32_t>(prog);
  at.attach_type = BPF_SK_SKB_VERDICT;
  if (sys_bpf(BPF_PROG_ATTACH, at) != 0) die("BPF_PROG_ATTACH");
  // One process per worker, each with its own SO_REUSEPORT socket, sharing the map.
  for (long w = 1; w < workers; ++w) {
    pid_t pid = ::fork();
    if (pid < 0) die("fork");
    if (pid == 0) serve(map, static_cast<uint16_t>(listen_port), static_cast<uint16_t>(backend_port));
  }
  serve(map, static_cast<uint16_t>(listen_port), static_cast<uint16_t>(backend_port));
}
