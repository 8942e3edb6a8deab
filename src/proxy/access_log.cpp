#include "gw/proxy/access_log.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <fmt/format.h>

#include "gw/core/clock.hpp"
#include "gw/core/utf8.hpp"

namespace gw::proxy {

namespace {

// Escaped bytes a value may take in a line (see Out::logval): the worst line
// (every other field at its longest, JSON's field names) stays under the
// 8 KiB line, so a client cannot keep its request out of the log by filling
// its target or headers with bytes that escape long.
constexpr size_t kTargetBudget = 4096;
constexpr size_t kFieldBudget = 1024;  // Referer, User-Agent
constexpr size_t kHostBudget = 512;
constexpr size_t kMethodBudget = 256;

// A bounded writer: appends until the buffer is full, then only remembers
// that it overflowed (the line is then not logged rather than cut).
struct Out {
  char* p;
  size_t len = 0;
  size_t cap;
  bool overflow = false;
  static constexpr size_t kNoBudget = ~size_t{0};
  void put(char c) noexcept {
    if (len < cap) p[len++] = c;
    else overflow = true;
  }
  void add(std::string_view s) noexcept {
    if (s.size() > cap - len) {
      overflow = true;
      len = cap;
      return;
    }
    if (!s.empty()) std::memcpy(p + len, s.data(), s.size());  // an empty view may be null
    len += s.size();
  }
  void num(uint64_t v) noexcept {
    char tmp[24];
    auto r = fmt::format_to_n(tmp, sizeof(tmp), "{}", v);
    add(std::string_view(tmp, r.size));
  }
  void inum(int64_t v) noexcept {
    if (v < 0) {
      put('-');
      v = -v;
    }
    num(static_cast<uint64_t>(v));
  }
  // Seconds with milliseconds, as nginx's $request_time: "0.002".
  void secs(uint64_t ms) noexcept {
    num(ms / 1000);
    put('.');
    char frac[4] = {static_cast<char>('0' + ms % 1000 / 100), static_cast<char>('0' + ms % 100 / 10),
                    static_cast<char>('0' + ms % 10), 0};
    add(std::string_view(frac, 3));
  }
  // nginx escapes '"', '\' and bytes outside 0x20..0x7e as \xHH in log values;
  // an empty value is "-". At most `budget` bytes are written: a value whose
  // escaped form is longer ends in "..." (escaping makes a value up to 4 times
  // longer, 6 in JSON; the line must still fit, or it would not be logged).
  void logval(std::string_view s, size_t budget = kNoBudget) noexcept {
    if (s.empty()) {
      put('-');
      return;
    }
    static constexpr char kHex[] = "0123456789ABCDEF";
    auto escapes = [](unsigned char c) { return c == '"' || c == '\\' || c < 0x20 || c > 0x7e; };
    size_t need = 0;
    if (budget != kNoBudget)
      for (unsigned char c : s) need += escapes(c) ? 4 : 1;
    const size_t end = need > budget ? len + budget : kNoBudget;  // (need: 0 without a budget)
    for (size_t i = 0; i < s.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      const bool esc = escapes(c);
      if (end != kNoBudget && len + (esc ? 4 : 1) + (i + 1 < s.size() ? 3 : 0) > end) {
        add("...");
        return;
      }
      if (esc) {
        put('\\');
        put('x');
        put(kHex[c >> 4]);
        put(kHex[c & 15]);
      } else {
        put(static_cast<char>(c));
      }
    }
  }
  // A JSON string: well-formed UTF-8 as is, each byte that is not part of it
  // (the target and headers may hold any) as \u00XX, and the controls
  // (C0, DEL, and the C1 controls U+0080..U+009F) as \u00XX, so the line is
  // valid UTF-8 whatever the client sent and "café" stays "café". `budget`
  // as logval's; a cut never splits a UTF-8 sequence.
  void jstr(std::string_view s, size_t budget = kNoBudget) noexcept {
    static constexpr char kHex[] = "0123456789abcdef";
    put('"');
    // The bytes at s[i] taken as one unit (a UTF-8 sequence, or one byte),
    // and the code point \u00XX-escaped (-1: none, the bytes go as they are).
    struct Unit {
      size_t bytes;
      int escaped;
    };
    auto unit = [&s](size_t i) -> Unit {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c < 0x20 || c == 0x7f) return {1, c};
      if (c < 0x80) return {1, -1};
      const size_t n = core::utf8_sequence(s.substr(i));
      if (n == 0) return {1, c};  // not UTF-8
      if (n == 2 && c == 0xc2 && static_cast<unsigned char>(s[i + 1]) < 0xa0)
        return {2, static_cast<unsigned char>(s[i + 1])};  // a C1 control
      return {n, -1};
    };
    auto width = [&s](size_t i, Unit u) -> size_t {
      if (u.escaped >= 0) return 6;
      return s[i] == '"' || s[i] == '\\' ? 2 : u.bytes;
    };
    size_t need = 0;
    if (budget != kNoBudget)
      for (size_t i = 0; i < s.size();) {
        const Unit u = unit(i);
        need += width(i, u);
        i += u.bytes;
      }
    const size_t end = need > budget ? len + budget : kNoBudget;
    for (size_t i = 0; i < s.size();) {
      const Unit u = unit(i);
      const size_t w = width(i, u);
      if (end != kNoBudget && len + w + (i + u.bytes < s.size() ? 3 : 0) > end) {
        add("...");
        break;
      }
      if (u.escaped >= 0) {
        add("\\u00");
        put(kHex[u.escaped >> 4]);
        put(kHex[u.escaped & 15]);
      } else if (s[i] == '"' || s[i] == '\\') {
        put('\\');
        put(s[i]);
      } else {
        add(s.substr(i, u.bytes));
      }
      i += u.bytes;
    }
    put('"');
  }
  void jfield(std::string_view name, std::string_view value, size_t budget = kNoBudget) noexcept {
    put(',');
    jstr(name);
    put(':');
    jstr(value, budget);
  }
  void jnum(std::string_view name, int64_t v) noexcept {
    put(',');
    jstr(name);
    put(':');
    inum(v);
  }
};

// "28/Nov/2026:01:36:03 +0000", nginx's $time_local (gw logs in UTC).
void time_local(Out& o, uint64_t wall_ms) noexcept {
  const time_t t = static_cast<time_t>(wall_ms / 1000);
  tm tmv{};
  ::gmtime_r(&t, &tmv);
  char buf[40];
  size_t n = std::strftime(buf, sizeof(buf), "%d/%b/%Y:%H:%M:%S +0000", &tmv);
  o.add(std::string_view(buf, n));
}

// "2026-11-28T01:36:03.123Z".
void time_iso(Out& o, uint64_t wall_ms) noexcept {
  const time_t t = static_cast<time_t>(wall_ms / 1000);
  tm tmv{};
  ::gmtime_r(&t, &tmv);
  char buf[40];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tmv);
  o.add(std::string_view(buf, n));
  auto r = fmt::format_to_n(buf, sizeof(buf), ".{:03}Z", wall_ms % 1000);
  o.add(std::string_view(buf, r.size));
}

}  // namespace

size_t AccessLog::format(char* buf, size_t cap, LogFormat f, const HttpLogEntry& e) noexcept {
  Out o{buf, 0, cap};
  if (f == LogFormat::json) {
    o.put('{');
    o.jstr("time");
    o.put(':');
    o.put('"');
    time_iso(o, e.wall_ms);
    o.put('"');
    o.jfield("client", e.client);
    o.jfield("listener", e.listener);
    o.jfield("method", e.method, kMethodBudget);
    o.jfield("target", e.target, kTargetBudget);
    o.jfield("version", e.version);
    o.jfield("host", e.host, kHostBudget);
    o.jnum("status", e.status);
    o.jnum("bytes", static_cast<int64_t>(e.body_bytes));
    o.jnum("request_length", static_cast<int64_t>(e.request_length));
    o.jnum("bytes_sent", static_cast<int64_t>(e.bytes_sent));
    o.jnum("request_time_ms", static_cast<int64_t>(e.request_ms));
    o.jfield("referer", e.referer, kFieldBudget);
    o.jfield("user_agent", e.user_agent, kFieldBudget);
    o.jfield("upstream_addr", e.upstream_addr);
    o.jnum("upstream_status", e.upstream_status);
    o.jnum("upstream_time_ms", e.upstream_ms);
    o.jfield("route", e.route);
    o.jfield("rule", e.rule);
    o.jfield("consumer", e.consumer);
    o.jnum("retries", e.retries);
    o.put('}');
    return o.overflow ? 0 : o.len;
  }
  // combined: $remote_addr - $remote_user [$time_local] "$request" $status
  //           $body_bytes_sent "$http_referer" "$http_user_agent"
  o.logval(e.client);
  o.add(" - ");
  o.logval(e.consumer);
  o.add(" [");
  time_local(o, e.wall_ms);
  o.add("] \"");
  if (e.method.empty()) {
    o.put('-');
  } else {
    o.logval(e.method, kMethodBudget);
    o.put(' ');
    o.logval(e.target, kTargetBudget);
    o.put(' ');
    o.logval(e.version);
  }
  o.add("\" ");
  o.num(static_cast<uint64_t>(e.status));
  o.put(' ');
  o.num(e.body_bytes);
  o.add(" \"");
  o.logval(e.referer, kFieldBudget);
  o.add("\" \"");
  o.logval(e.user_agent, kFieldBudget);
  o.put('"');
  if (f == LogFormat::main) {
    o.add(" rt=");
    o.secs(e.request_ms);
    o.add(" uaddr=");
    o.logval(e.upstream_addr);
    o.add(" ustatus=");
    if (e.upstream_status) o.num(static_cast<uint64_t>(e.upstream_status));
    else o.put('-');
    o.add(" urt=");
    if (e.upstream_ms >= 0) o.secs(static_cast<uint64_t>(e.upstream_ms));
    else o.put('-');
    o.add(" route=");
    o.logval(e.route);
    o.add(" rule=");
    o.logval(e.rule);
    o.add(" consumer=");
    o.logval(e.consumer);
    o.add(" retries=");
    o.num(e.retries);
    o.add(" host=\"");
    o.logval(e.host, kHostBudget);
    o.put('"');
  }
  return o.overflow ? 0 : o.len;
}

size_t AccessLog::format(char* buf, size_t cap, LogFormat f, const StreamLogEntry& e) noexcept {
  Out o{buf, 0, cap};
  if (f == LogFormat::json) {
    o.put('{');
    o.jstr("time");
    o.put(':');
    o.put('"');
    time_iso(o, e.wall_ms);
    o.put('"');
    o.jfield("client", e.client);
    o.jfield("listener", e.listener);
    o.jfield("protocol", e.protocol);
    o.jfield("upstream_addr", e.upstream_addr);
    o.jnum("bytes_in", static_cast<int64_t>(e.bytes_in));
    o.jnum("bytes_out", static_cast<int64_t>(e.bytes_out));
    o.jnum("duration_ms", static_cast<int64_t>(e.duration_ms));
    o.jfield("frame_key", e.frame_key);
    o.jfield("end", e.reason);
    o.put('}');
    return o.overflow ? 0 : o.len;
  }
  // nginx stream's usual log_format, with gw's names:
  // $remote_addr [$time_local] PROTOCOL listener in out time upstream key end
  o.logval(e.client);
  o.add(" [");
  time_local(o, e.wall_ms);
  o.add("] ");
  o.logval(e.protocol);
  o.add(" listener=");
  o.logval(e.listener);
  o.add(" in=");
  o.num(e.bytes_in);
  o.add(" out=");
  o.num(e.bytes_out);
  o.add(" time=");
  o.secs(e.duration_ms);
  o.add(" upstream=\"");
  o.logval(e.upstream_addr);
  o.add("\" key=\"");
  o.logval(e.frame_key);
  o.add("\" end=");
  o.logval(e.reason);
  return o.overflow ? 0 : o.len;
}

void AccessLog::init(int fd, size_t files) {
  fd_ = fd;
  files_.clear();
  files_.resize(files);
  for (File& f : files_) {
    f.chunks.resize(kMaxChunks);
    for (Chunk& c : f.chunks) c.data = std::make_unique<char[]>(kChunkBytes);
  }
}

char* AccessLog::reserve(uint8_t file, size_t n) noexcept {
  if (file >= files_.size() || n + 1 > kChunkBytes) return nullptr;
  File& f = files_[file];
  if (f.count > 0) {
    Chunk& last = f.chunks[(f.head + f.count - 1) % kMaxChunks];
    if (last.len + n <= kChunkBytes) return last.data.get() + last.len;
  }
  if (f.count == kMaxChunks) return nullptr;  // the logger is behind: drop
  Chunk& c = f.chunks[(f.head + f.count) % kMaxChunks];
  ++f.count;
  c.data[0] = static_cast<char>(file);
  c.len = 1;
  return c.data.get() + 1;
}

void AccessLog::commit(uint8_t file, size_t n) noexcept {
  File& f = files_[file];
  f.chunks[(f.head + f.count - 1) % kMaxChunks].len += static_cast<uint32_t>(n);
}

void AccessLog::log(uint8_t file, LogFormat f, const HttpLogEntry& e) noexcept {
  if (fd_ < 0) return;
  size_t n = format(line_, sizeof(line_) - 1, f, e);
  if (n == 0) {
    ++dropped_;  // longer than a line may be (an 8 KiB target, say)
    return;
  }
  line_[n++] = '\n';
  char* dst = reserve(file, n);
  if (!dst) {
    ++dropped_;
    return;
  }
  std::memcpy(dst, line_, n);
  commit(file, n);
}

void AccessLog::log(uint8_t file, LogFormat f, const StreamLogEntry& e) noexcept {
  if (fd_ < 0) return;
  size_t n = format(line_, sizeof(line_) - 1, f, e);
  if (n == 0) {
    ++dropped_;
    return;
  }
  line_[n++] = '\n';
  char* dst = reserve(file, n);
  if (!dst) {
    ++dropped_;
    return;
  }
  std::memcpy(dst, line_, n);
  commit(file, n);
}

void AccessLog::flush() noexcept {
  if (fd_ < 0) return;
  for (File& f : files_) {
    while (f.count > 0) {
      Chunk& c = f.chunks[f.head];
      if (c.len > 1) {
        ssize_t n = ::send(fd_, c.data.get(), c.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return;  // EAGAIN: the logger is behind; the chunks wait (EPIPE: it is being respawned)
      }
      c.len = 0;
      f.head = (f.head + 1) % kMaxChunks;
      --f.count;
    }
  }
}

void AccessLog::finish(int timeout_ms) noexcept {
  if (fd_ < 0) return;
  auto queued = [this] {
    uint32_t chunks = 0;
    for (const File& f : files_)
      for (uint32_t k = 0; k < f.count; ++k) chunks += f.chunks[(f.head + k) % kMaxChunks].len > 1;
    return chunks;
  };
  const uint64_t end = core::monotonic_ms() + static_cast<uint64_t>(std::max(timeout_ms, 0));
  for (uint32_t before = queued(); before > 0;) {
    flush();
    const uint32_t after = queued();
    if (after == 0) return;
    const uint64_t now = core::monotonic_ms();
    if (now >= end) break;
    // Wait for room; if the socket said writable and nothing went (room for
    // less than a chunk), wait a little rather than spin.
    pollfd p{fd_, POLLOUT, 0};
    const int r = ::poll(
        &p, 1, after < before ? static_cast<int>(end - now) : static_cast<int>(std::min<uint64_t>(5, end - now)));
    if (r < 0 && errno != EINTR) break;
    if (r > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL))) break;  // the logger's end is gone
    before = after;
  }
  // What the logger did not take in time: its lines count as dropped.
  for (File& f : files_) {
    for (uint32_t k = 0; k < f.count; ++k) {
      const Chunk& c = f.chunks[(f.head + k) % kMaxChunks];
      if (c.len > 1) dropped_ += static_cast<uint64_t>(std::count(c.data.get() + 1, c.data.get() + c.len, '\n'));
    }
    f.head = 0;
    f.count = 0;
  }
}

}  // namespace gw::proxy
