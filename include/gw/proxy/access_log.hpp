#pragma once
// Access logs. A worker never touches the disk: it formats each line into a
// per-file staging chunk and hands whole chunks to the logger process over
// its own SOCK_SEQPACKET socket (one message = one chunk = complete lines for
// one file), without blocking. The logger (process/logger) writes them out and
// reopens the files on SIGUSR1, for logrotate.
//
//   worker ── line ──► chunk [file | lines...] ──send(MSG_DONTWAIT)──► logger ──write──► file
//                        (kMaxChunks queued per file while the logger is behind;
//                         beyond that new lines are dropped and counted)
//
// Formats: `combined` (nginx's), `main` (combined + gw's fields as key=value),
// `json` (one object per line). Single-threaded (the worker's); noexcept; the
// chunks are allocated once, at start.

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace gw::proxy {

enum class LogFormat : uint8_t { combined, main, json };

/// What one HTTP request leaves in the log. Views must stay valid during log().
struct HttpLogEntry {
  uint64_t wall_ms = 0;                      ///< when the response ended
  std::string_view client;                   ///< client address text
  std::string_view method, target, version;  ///< "GET", "/x?y", "HTTP/1.1"; empty if the request line was not read
  int status = 0;                            ///< status sent to the client (0: none, the connection was closed)
  uint64_t body_bytes = 0;                   ///< response body bytes sent to the client
  uint64_t bytes_sent = 0;      ///< all bytes sent to the client: heads (1xx included) and body; a tunnel's too
  uint64_t request_length = 0;  ///< bytes received from the client: head and body as on the wire; a tunnel's too
  uint64_t request_ms = 0;      ///< first request byte → last response byte
  std::string_view referer, user_agent, host;
  std::string_view upstream_addr;  ///< the last host tried ("" = none)
  int upstream_status = 0;         ///< 0 = no response from a host
  int64_t upstream_ms = -1;        ///< request sent → response head, -1 = none
  std::string_view route, rule, consumer;
  uint32_t retries = 0;
  std::string_view listener;
};

/// What one L4 or frame connection leaves in the log when it closes.
struct StreamLogEntry {
  uint64_t wall_ms = 0;
  std::string_view client, listener, protocol;  ///< protocol "tcp" or "frame"
  std::string_view upstream_addr;               ///< "" = no host was connected
  uint64_t bytes_in = 0;                        ///< client → host
  uint64_t bytes_out = 0;                       ///< host → client
  uint64_t duration_ms = 0;
  std::string_view frame_key;  ///< frame listeners: the routing key
  std::string_view reason;     ///< how it ended: "closed", "no_host", "timeout", a frame reject reason, ...
};

class AccessLog {
 public:
  static constexpr size_t kChunkBytes = 32 * 1024;
  static constexpr size_t kMaxChunks = 16;  ///< per file: 512 KiB queued while the logger is behind

  /// `fd`: this worker's end of its logger socket (-1: logging off). `files`:
  /// how many log files there are (indices 0..files-1).
  void init(int fd, size_t files);
  bool enabled() const noexcept { return fd_ >= 0; }

  void log(uint8_t file, LogFormat f, const HttpLogEntry& e) noexcept;
  void log(uint8_t file, LogFormat f, const StreamLogEntry& e) noexcept;
  /// Sends what is staged (once per event-loop round).
  void flush() noexcept;
  /// Before the worker exits: sends what is staged, waiting (poll) up to
  /// `timeout_ms` in all while the logger is behind; lines still queued then
  /// are counted in dropped().
  void finish(int timeout_ms) noexcept;
  uint64_t dropped() const noexcept { return dropped_; }

  /// Formats a line (no newline appended) into buf; returns its length, or 0
  /// if it did not fit. Exposed for tests.
  static size_t format(char* buf, size_t cap, LogFormat f, const HttpLogEntry& e) noexcept;
  static size_t format(char* buf, size_t cap, LogFormat f, const StreamLogEntry& e) noexcept;

 private:
  struct Chunk {
    std::unique_ptr<char[]> data;
    uint32_t len = 0;  ///< bytes used, the file byte included
  };
  struct File {
    std::vector<Chunk> chunks;  ///< a ring of kMaxChunks
    uint32_t head = 0;          ///< oldest queued chunk
    uint32_t count = 0;         ///< queued chunks (the last one may still be filling)
  };
  char* reserve(uint8_t file, size_t n) noexcept;
  void commit(uint8_t file, size_t n) noexcept;

  int fd_ = -1;
  std::vector<File> files_;
  uint64_t dropped_ = 0;
  char line_[8192];
};

}  // namespace gw::proxy
