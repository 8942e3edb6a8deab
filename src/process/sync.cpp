#include "gw/process/sync.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>

#include "gw/cluster/etcd.hpp"
#include "gw/cluster/reconcile.hpp"
#include "gw/cluster/schema.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/shm/cluster.hpp"
#include "gw/shm/writer.hpp"
#include "process/signals.hpp"

namespace gw::process {
namespace {

using cluster::EtcdError;

struct NoChange {};    // thrown out of a writer change that changes nothing: nothing is published
struct Relist {};      // the watch's start revision was compacted
struct Stop {};        // a stop signal arrived
struct Superseded {};  // another sync process owns the commits now (a reload or binary upgrade started it)

constexpr uint64_t kProbeIntervalMs = 1000;  // a quorum read on the watched member this often
constexpr uint64_t kFirstBackoffMs = 100;
constexpr int kProbeFailures = 3;          // probes failed in a row that end a watch
constexpr uint64_t kCommitBudgetMs = 200;  // watched revisions reconciled in one commit: at most this long

class Sync {
 public:
  Sync(const config::Config& cfg, const shm::Segment& seg)
      : cfg_(cfg),
        seg_(seg),
        cl_(seg.header().cluster),
        etcd_(cfg.cluster.etcd, cfg.cluster.etcd_addrs, cfg.cluster.timeout_ms),
        prefix_(cfg.cluster.prefix),
        end_(cluster::prefix_end(prefix_)) {}

  int run() {
    sfd_ = child_signal_fd();
    cl_.sync_pid.store(::getpid(), std::memory_order_release);
    try {
      for (;;) {
        bool all_tried = false;
        try {
          if (!listed_) {
            all_tried = true;  // a request fails only once every member has
            relist();
            all_tried = false;
          }
          open_watch();
          serve();
        } catch (const Relist&) {
          listed_ = false;
          continue;  // at once: etcd is there
        } catch (const EtcdError& e) {
          if (!failed(e.what(), all_tried)) continue;  // another member may take over at once
        }
        wait(backoff_);
        backoff_ = std::min<uint64_t>(backoff_ * 2, cfg_.cluster.reconnect_max_ms);
      }
    } catch (const Stop&) {
      // Only if still ours: after a reload the new sync process has put its own.
      pid_t self = ::getpid();
      cl_.sync_pid.compare_exchange_strong(self, 0, std::memory_order_acq_rel);
      return 0;
    }
  }

 private:
  // ------------------------------------------------------------ listing

  void relist() {
    cluster::RangeResult r = etcd_.list(prefix_, end_);
    load(r);
    if (seed_missing()) {
      r = etcd_.list(prefix_, end_);
      load(r);
    }
    rev_ = r.revision;
    cluster_id_ = r.cluster_id;
    listed_ = true;
    cl_.relists.fetch_add(1, std::memory_order_relaxed);
    GW_LOG_INFO("listed {} key(s) under {} at etcd revision {} from {} (cluster_id {:x})", kv_.size(), prefix_, rev_,
                etcd_.url(), cluster_id_);
    apply();
  }

  void load(const cluster::RangeResult& r) {
    kv_.clear();
    for (const auto& kv : r.kvs) kv_[kv.key] = kv.value;
  }

  // An upstream of this node's table that etcd does not have yet goes into
  // etcd from this table. Nodes take an upstream from etcd only once its
  // upstream key is there, so the key goes last: the pools and hosts first,
  // in txns of at most kSeedBatch puts (etcd refuses more than --max-txn-ops,
  // 128 by default, in one), the first of them only while etcd has nothing
  // under the upstream (so of several nodes starting at once, one seeds it),
  // every one only while the upstream key is still absent. Returns true if it
  // tried.
  static constexpr size_t kSeedBatch = 100;

  bool seed_missing() {
    std::vector<std::string> warnings;
    cluster::Model m = cluster::build_model(prefix_, kv_, warnings);
    shm::Table t(seg_.caps());
    shm::read_published(seg_, t);
    bool tried = false;
    seed_errors_.clear();
    for (size_t ui = 0; ui < t.upstreams().size(); ++ui) {
      const std::string u(shm::name_of(t.upstreams()[ui].name));
      if (m.upstreams.count(u)) continue;
      const std::string ukey = cluster::upstream_key(prefix_, u),
                        children = cluster::upstream_children_prefix(prefix_, u);
      if (kv_.count(ukey)) {
        // The key is there, with a value this gw does not parse (a newer gw's
        // field, a typo): not missing, so not seeded (its txn would fail on the
        // key); the upstream stays local, as the model's warning says.
        seed_errors_[u] = held_reason(u);
        continue;
      }
      std::vector<cluster::Op> ops;
      size_t hosts = 0;
      for (size_t pi = 0; pi < t.pools().size(); ++pi) {
        const auto& pr = t.pools()[pi];
        if (pr.upstream != ui) continue;
        const std::string pid(shm::name_of(pr.id));
        ops.push_back({false, cluster::pool_key(prefix_, u, pid),
                       cluster::encode_pool({pr.priority, static_cast<shm::Method>(pr.method)})});
        for (int hi : t.pool_hosts(static_cast<int>(pi))) {
          const auto& h = t.hosts()[static_cast<size_t>(hi)];
          ops.push_back({false, cluster::host_key(prefix_, u, pid, shm::name_of(h.id)),
                         cluster::encode_host({h.addr, h.weight, h.admin_down != 0})});
          ++hosts;
        }
      }
      ops.push_back({false, ukey, "{}"});  // last
      // Pools or hosts without their upstream key: a seed that did not finish
      // (its node stopped, or etcd went away between its txns), or keys
      // written by hand. Taken over only when every one of them holds what this
      // table would write (this node's own partial seed, or that of a node with
      // the same table, so writing it again is harmless): another node may be
      // seeding something else right now.
      bool partial = false, ours = true;
      {
        std::map<std::string_view, std::string_view> want;
        for (const auto& o : ops) want.emplace(o.key, o.value);
        for (auto it = kv_.lower_bound(children); it != kv_.end() && it->first.starts_with(children); ++it) {
          partial = true;
          const auto w = want.find(it->first);
          if (w == want.end() || w->second != it->second) {
            ours = false;
            break;
          }
        }
      }
      if (partial && !ours) {
        // The status holds 183 bytes: a short form there, what to do first
        // (with a 47-byte name the remedy still fits; the prefix, up to 128
        // bytes, comes last and may be cut).
        seed_errors_[u] = fmt::format(
            "upstream \"{}\" stays local: etcd has keys under it but not its key; delete them, then reload a node, "
            "to seed it again ({})",
            u, children);
        GW_LOG_WARN(
            "etcd has keys under {} but not the upstream key {} (another node seeding it, or a seed that did not "
            "finish): the upstream stays local until the key is there; if it never comes, delete {} in etcd and "
            "reload a node (the next list seeds it)",
            children, ukey, children);
        continue;
      }
      tried = true;
      try {
        int64_t revision = 0;
        bool lost = false;
        for (size_t at = 0; at < ops.size() && !lost; at += kSeedBatch) {
          std::vector<cluster::Compare> cmp = {{ukey, "", cluster::Compare::Target::create_revision, 0}};
          if (at == 0 && !partial)
            cmp.push_back({children, cluster::prefix_end(children), cluster::Compare::Target::create_revision, 0});
          const std::vector<cluster::Op> batch(
              ops.begin() + static_cast<std::ptrdiff_t>(at),
              ops.begin() + static_cast<std::ptrdiff_t>(std::min(ops.size(), at + kSeedBatch)));
          auto res = etcd_.txn(cmp, batch);
          // Sent again after a lost answer, its compares fail on its own first
          // run's puts: it landed if etcd holds every put of it.
          if (!res.succeeded && res.resent && (res.revision = landed(ukey, children, batch)) > 0) res.succeeded = true;
          lost = !res.succeeded;
          revision = res.revision;
        }
        if (!lost)
          GW_LOG_INFO(
              "seeded etcd with upstream \"{}\" from this node's table ({} key(s), {} host(s)){} at revision {}", u,
              ops.size(), hosts, partial ? ", finishing a seed that had stopped halfway" : "", revision);
        else GW_LOG_INFO("upstream \"{}\" was seeded in etcd by another node meanwhile", u);
      } catch (const EtcdError& e) {
        if (e.unavailable()) throw;
        seed_errors_[u] =
            fmt::format("cannot seed upstream \"{}\" into etcd ({} operations): {}", u, ops.size(), e.what());
        GW_LOG_ERROR("{}", seed_errors_[u]);
      }
    }
    return tried;
  }

  // The revision at which etcd holds every put of `batch` (keys under
  // `children`, or the upstream key itself), or 0 if it does not.
  int64_t landed(const std::string& ukey, const std::string& children, const std::vector<cluster::Op>& batch) {
    std::map<std::string, std::string> have;
    cluster::RangeResult r = etcd_.list(children, cluster::prefix_end(children));
    for (auto& kv : r.kvs) have.emplace(std::move(kv.key), std::move(kv.value));
    for (auto& kv : etcd_.range(ukey).kvs) have.emplace(std::move(kv.key), std::move(kv.value));
    for (const auto& o : batch)
      if (auto it = have.find(o.key); it == have.end() || it->second != o.value) return 0;
    return r.revision;
  }

  // ------------------------------------------------------------ applying

  // Watched revisions, each with its events, applied in one commit.
  using Steps = std::vector<std::pair<int64_t, std::vector<const cluster::WatchEvent*>>>;

  // Reconciles the table to kv_ in one commit; with `steps`, kv_ takes each
  // watched revision in turn and the table is reconciled after each (so the
  // event log shows every change as it was made), still in one commit: one
  // table generation and one state file write for a burst.
  void apply(const Steps* steps = nullptr) {
    std::vector<std::string> warnings;
    cluster::Model m;
    if (!steps) m = cluster::build_model(prefix_, kv_, warnings);
    size_t next_step = 0;
    auto advance = [&] {  // kv_ and rev_ take the next step
      const auto& [rev, evs] = (*steps)[next_step++];
      for (const cluster::WatchEvent* ev : evs) {
        if (ev->is_delete) kv_.erase(ev->kv.key);
        else kv_[ev->kv.key] = ev->kv.value;
      }
      rev_ = std::max(rev_, rev);  // the resume point: the last revision taken
    };
    std::string error;
    bool superseded = false;
    for (bool more = true; more && error.empty() && !superseded;) {
      try {
        uint64_t gen = shm::Writer(seg_).commit([&](shm::Table& t, std::vector<std::string>& events) {
          // A sync process of the config before a reload (stopping) must not
          // commit after the new one started: decided under the writer lock,
          // which the new one's commits take too.
          if (!owns()) throw Superseded{};
          bool changed = false;
          if (!steps) {
            changed = cluster::reconcile(t, m, events, warnings, &seg_);
          } else {
            const uint64_t start = core::monotonic_ms();
            while (next_step < steps->size()) {
              advance();
              warnings.clear();  // the last revision's are the ones that hold
              m = cluster::build_model(prefix_, kv_, warnings);
              changed |= cluster::reconcile(t, m, events, warnings, &seg_);
              // The writer lock is held for a bounded time: the rest of a long
              // backlog is the next commit (gwctl, the admin API and reloads
              // get the lock in between).
              if (core::monotonic_ms() - start >= kCommitBudgetMs) break;
            }
          }
          if (!changed) throw NoChange{};
        });
        cl_.applied.fetch_add(1, std::memory_order_relaxed);
        GW_LOG_INFO("table generation {} from etcd revision {}", gen, rev_);
      } catch (const NoChange&) {
      } catch (const Superseded&) {
        // The master has reset the cluster state for the sync process that
        // replaces this one, and sends this one its stop signal next. Nothing
        // of this process's is committed or shown any more (the loop used to
        // go round for ever here, with the stop signal never read).
        superseded = true;
      } catch (const std::exception& e) {
        // Capacity, or the state file: the table keeps the last good state; the
        // next etcd change or the next probe tries again (kv_ has every step).
        // (then each upstream alone, below)
        error = fmt::format("etcd revision {} not applied: {}", rev_, e.what());
      }
      more = steps && next_step < steps->size();
    }
    // A failed commit still takes every step into kv_: the watch goes on past
    // them, and the retry reconciles to all of them.
    while (steps && next_step < steps->size()) advance();
    if (!error.empty() && !superseded) {
      // One upstream's change the table cannot hold (shm.max_hosts) held back
      // every other one, an urgent `down` elsewhere too: each upstream is now
      // tried alone, and those that fit are applied.
      if (steps) {
        warnings.clear();
        m = cluster::build_model(prefix_, kv_, warnings);
      }
      error = apply_each_upstream(m, superseded);
    }
    // Retried each second (the probe): logged when the reason changes (the
    // revision in it does not count).
    const std::string reason = error.substr(std::min(error.size(), error.find(" not applied")));
    if (!error.empty() && reason != last_apply_reason_)
      GW_LOG_ERROR("{} (retried every second; logged again if the reason changes)", error);
    last_apply_reason_ = reason;
    if (superseded) {
      if (!superseded_logged_)
        GW_LOG_INFO("another sync process took over the table from etcd; this one (pid {}) applies nothing more",
                    ::getpid());
      superseded_logged_ = true;
      return;
    }
    // Seeded after all (by another node): the reasons of the others stay.
    std::erase_if(seed_errors_, [&](const auto& e) { return m.upstreams.count(e.first) != 0; });
    // An upstream key that stops parsing on the watch says so as one found
    // by a list does (that one only came with the next list).
    held_errors_.clear();
    for (const auto& u : m.held_upstreams)
      if (local_upstream(u)) held_errors_[u] = held_reason(u);
    apply_failed_ = !error.empty();
    const std::string shown = error.empty() ? seed_error() : error;
    if (shown != last_error_) {
      shm::set_cluster_text(cl_, etcd_.url(), shown);
      last_error_ = shown;
    }
    std::set<std::string> now(warnings.begin(), warnings.end());
    for (const auto& w : now)
      if (!warned_.count(w)) GW_LOG_WARN("{}", w);
    warned_ = std::move(now);
    if (!apply_failed_) cl_.revision.store(static_cast<uint64_t>(rev_), std::memory_order_release);
  }

  // Each upstream of the model reconciled alone, one commit each; returns
  // what did not go in ("" if everything did).
  std::string apply_each_upstream(const cluster::Model& m, bool& superseded) {
    std::vector<std::string> failed;
    std::string why;
    for (const auto& [u, present] : m.upstreams) {
      const cluster::Model one = cluster::only_upstream(m, u);
      try {
        uint64_t gen = shm::Writer(seg_).commit([&](shm::Table& t, std::vector<std::string>& events) {
          if (!owns()) throw Superseded{};
          std::vector<std::string> w;  // (the whole model's warnings are the ones kept)
          if (!cluster::reconcile(t, one, events, w, &seg_)) throw NoChange{};
        });
        cl_.applied.fetch_add(1, std::memory_order_relaxed);
        GW_LOG_INFO("table generation {} from etcd revision {}, upstream \"{}\" alone", gen, rev_, u);
      } catch (const NoChange&) {
      } catch (const Superseded&) {
        superseded = true;
        return {};
      } catch (const std::exception& e) {
        failed.push_back(u);
        if (why.empty()) why = e.what();
      }
    }
    if (failed.empty()) return {};
    return fmt::format(
        "etcd revision {} not applied to upstream(s) {}: {}; the node keeps what it has for them and applies the "
        "others",
        rev_, fmt::join(failed, ", "), why);
  }

  bool local_upstream(const std::string& u) const {
    shm::Table t(seg_.caps());
    shm::read_published(seg_, t);
    return t.find_upstream(u) >= 0;
  }

  std::string held_reason(const std::string& u) const {
    return fmt::format(
        "upstream \"{}\" stays local: its etcd key holds a value that does not parse (see the log); fix or delete it "
        "({})",
        u, cluster::upstream_key(prefix_, u));
  }

  std::string seed_error() const {
    return !held_errors_.empty()  ? held_errors_.begin()->second
           : seed_errors_.empty() ? std::string()
                                  : seed_errors_.begin()->second;
  }

  // ------------------------------------------------------------ watching

  void open_watch() {
    probe_fails_ = 0;  // "in a row" on this watch: another member's failed probes do not count
    watch_.open(etcd_.addr(), etcd_.url(), cluster::watch_create_request(prefix_, end_, rev_ + 1),
                cfg_.cluster.timeout_ms);
  }

  void serve() {
    bool created = false;
    const uint64_t create_deadline = core::monotonic_ms() + cfg_.cluster.timeout_ms;
    uint64_t next_probe = core::monotonic_ms() + kProbeIntervalMs;
    std::vector<cluster::WatchMessage> msgs;
    Steps steps;
    for (;;) {
      uint64_t now = core::monotonic_ms();
      pollfd p[2] = {{sfd_.get(), POLLIN, 0}, {watch_.fd(), POLLIN, 0}};
      uint64_t until = created ? next_probe : std::min(next_probe, create_deadline);
      ::poll(p, 2, static_cast<int>(until > now ? until - now : 0));
      check_stop();
      if (p[1].revents) {
        msgs.clear();
        watch_.read_available(msgs);
        int64_t progress = 0;  // the highest revision a progress notification of this read said
        for (const auto& m : msgs) {
          if (!m.error.empty()) throw EtcdError(fmt::format("etcd {}: watch failed: {}", etcd_.url(), m.error), true);
          if (m.canceled) {
            watch_.close();
            if (m.compact_revision > 0) {
              GW_LOG_WARN("etcd compacted its history up to revision {} (this node had applied {}); listing again",
                          m.compact_revision, rev_);
              throw Relist{};
            }
            throw EtcdError(fmt::format("etcd {}: watch cancelled: {}", etcd_.url(),
                                        m.cancel_reason.empty() ? "no reason given" : m.cancel_reason),
                            true);
          }
          if (m.created && !created) {
            // A watch from a revision etcd has not reached is accepted: etcd
            // came back behind this node (a wiped data dir, an older snapshot)?
            // The member's header may only lag its leader: a linearizable
            // read (the probe) decides.
            // Another cluster (etcd wiped and created anew) is listed again
            // whatever its revision: a watch resumed at this node's revision
            // would miss what it holds below that.
            if (cluster::resync_reason(cluster_id_, rev_, m.cluster_id, m.revision) == cluster::Resync::other_cluster)
              resync_check(m.cluster_id, m.revision);
            // A member cut off from its quorum (no leader) confirms a watch
            // too, which then brings nothing: only a quorum read on it says
            // the node is synced (it said so, and counted a reconnect, every
            // few seconds while the member had no leader).
            probe();
            created = true;
            on_synced();
          }
          if (m.progress && created) progress = std::max(progress, m.revision);
          // A txn's keys share one revision; a message carries all of it.
          for (const auto& ev : m.events) {
            if (steps.empty() || steps.back().first != ev.kv.mod_revision) steps.push_back({ev.kv.mod_revision, {}});
            steps.back().second.push_back(&ev);
          }
        }
        // What one read brought is one commit (a burst is one table generation
        // and one state file write, not a publish and two fsyncs per revision).
        if (!steps.empty()) {
          apply(&steps);
          steps.clear();
        }
        if (progress > 0) progressed(progress);
        cl_.contact_ms.store(core::wall_ms(), std::memory_order_relaxed);
      }
      now = core::monotonic_ms();
      if (!created && now >= create_deadline)
        throw EtcdError(
            fmt::format("etcd {}: the watch was not confirmed within {} ms", etcd_.url(), cfg_.cluster.timeout_ms),
            true);
      if (now >= next_probe) {
        // An election makes a probe or two fail; a member cut off for good
        // fails them all.
        try {
          probe();
          probe_fails_ = 0;
          if (created) {
            // The watch works (confirmed, and its member answers a quorum
            // read): failures and the backoff start over. Not at the
            // confirmation itself: a member that confirms watches and ends
            // them at once had the node reconnect in a tight loop.
            fails_ = 0;
            backoff_ = kFirstBackoffMs;
          }
        } catch (const EtcdError&) {
          if (++probe_fails_ >= kProbeFailures) {
            probe_fails_ = 0;
            throw;
          }
        }
        if (apply_failed_) apply();
        next_probe = core::monotonic_ms() + kProbeIntervalMs;
      }
    }
  }

  // etcd's progress notification: etcd has sent every change of the prefix
  // up to `revision` (this read's events included), so kv_ is etcd's at that
  // revision. Without it, a prefix that nobody changes kept the node's
  // revision where its last change was, and a watch resumed from there after
  // a break asked for a revision that etcd may have compacted long ago: a
  // full re-list instead of a resume. Never moves back (a member that lags
  // its leader may say less than what this node applied).
  void progressed(int64_t revision) {
    if (revision <= rev_ || !owns()) return;
    rev_ = revision;
    // The table is that of rev_ too, unless the last commit failed (then the
    // status keeps the revision of the table served, as apply() does).
    if (!apply_failed_) cl_.revision.store(static_cast<uint64_t>(rev_), std::memory_order_release);
  }

  // A quorum read on the member being watched: a member that is up but cut off
  // from its cluster (or stopped) would otherwise keep a silent watch open.
  void probe() {
    cluster::HttpReply r = cluster::http_post(etcd_.addr(), "/v3/kv/range", cluster::range_request(prefix_, end_, true),
                                              cfg_.cluster.timeout_ms);
    if (r.status != 200) {
      int code = 0;
      throw EtcdError(fmt::format("etcd {}: HTTP {}: {}", etcd_.url(), r.status, cluster::error_message(r.body, code)),
                      true);
    }
    cl_.contact_ms.store(core::wall_ms(), std::memory_order_relaxed);
    const cluster::RangeResult res = cluster::parse_range_response(r.body);
    resync_check(res.cluster_id, res.revision);
  }

  // etcd's store revision only grows; one below what this node has applied
  // means etcd lost or rewound its history (a wiped data dir, a restore from
  // an older snapshot). A watch resumed at this node's revision would wait
  // for revisions that mean something else, and what was written below it
  // would never be seen: list everything again instead. The same for another
  // cluster_id (etcd wiped and created anew, then written past this node's
  // revision): its revisions are another history, whatever their numbers.
  void resync_check(uint64_t cluster_id, int64_t etcd_revision) {
    switch (cluster::resync_reason(cluster_id_, rev_, cluster_id, etcd_revision)) {
      case cluster::Resync::none: return;
      case cluster::Resync::other_cluster:
        GW_LOG_WARN(
            "etcd {} belongs to another cluster (cluster_id {:x}, this node listed {:x}: etcd wiped and created "
            "anew?) at revision {} (this node applied {}); dropping the revision and listing again",
            etcd_.url(), cluster_id, cluster_id_, etcd_revision, rev_);
        break;
      case cluster::Resync::rewound:
        GW_LOG_WARN(
            "etcd {} is at revision {}, below the {} this node applied (a wiped or restored etcd?); listing again",
            etcd_.url(), etcd_revision, rev_);
        break;
    }
    watch_.close();
    throw Relist{};
  }

  void on_synced() {
    if (!owns()) return;  // superseded: the state shown is the new sync process's
    cl_.reconnects.fetch_add(1, std::memory_order_relaxed);
    cl_.contact_ms.store(core::wall_ms(), std::memory_order_relaxed);
    if (!apply_failed_) {
      shm::set_cluster_text(cl_, etcd_.url(), seed_error());
      last_error_ = seed_error();
    }
    if (cl_.state.load() != shm::kClusterSynced)
      GW_LOG_INFO("etcd: synced at revision {}, watching {} on {}", rev_, prefix_, etcd_.url());
    shm::set_cluster_state(cl_, shm::kClusterSynced, core::wall_ms());
  }

  // Returns true when every member has failed in a row (the caller waits out
  // the backoff); false to try the next member at once.
  bool failed(const std::string& what, bool all_tried) {
    watch_.close();
    const std::string from = etcd_.url();
    etcd_.next();
    if (!all_tried && ++fails_ < cfg_.cluster.etcd.size()) {
      // Through an outage of every member this came twice per backoff round
      // for as long as it lasted: once disconnected (said once, below), the
      // members tried in turn are at debug level.
      if (cl_.state.load() == shm::kClusterDisconnected) GW_LOG_DEBUG("{}; trying {}", what, etcd_.url());
      else GW_LOG_WARN("{}; trying {}", what, etcd_.url());
      return false;
    }
    fails_ = 0;
    if (!owns()) return true;  // superseded: the state shown is the new sync process's
    if (cl_.state.load() != shm::kClusterDisconnected || what != last_error_)
      GW_LOG_WARN("etcd unreachable, serving {}: {}",
                  rev_ ? fmt::format("the last good table (revision {})", rev_)
                       : std::string("the local table (not synced with etcd since gwd started or reloaded)"),
                  what);
    shm::set_cluster_text(cl_, from, what);
    last_error_ = what;
    shm::set_cluster_state(cl_, shm::kClusterDisconnected, core::wall_ms());
    return true;
  }

  // Whether this process is still the node's sync process: a reload or a
  // binary upgrade resets sync_pid and starts another, then stops this one.
  bool owns() const noexcept { return cl_.sync_pid.load(std::memory_order_acquire) == ::getpid(); }

  void check_stop() {
    if (drain_child_signals(sfd_.get(), cfg_.log_file)) throw Stop{};
  }

  void wait(uint64_t ms) {
    const uint64_t until = core::monotonic_ms() + ms;
    for (uint64_t now; (now = core::monotonic_ms()) < until;) {
      pollfd p{sfd_.get(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(until - now));
      check_stop();
    }
  }

  const config::Config& cfg_;
  const shm::Segment& seg_;
  shm::ClusterRuntime& cl_;
  cluster::Etcd etcd_;
  const std::string prefix_, end_;
  core::UniqueFd sfd_;
  cluster::WatchStream watch_;
  std::map<std::string, std::string> kv_;  ///< the mirror of etcd's keys under the prefix
  int64_t rev_ = 0;                        ///< the revision kv_ reflects
  uint64_t cluster_id_ = 0;                ///< the etcd cluster kv_ was listed from (0: not given)
  bool listed_ = false;
  bool apply_failed_ = false;
  bool superseded_logged_ = false;
  uint64_t backoff_ = kFirstBackoffMs;
  size_t fails_ = 0;
  int probe_fails_ = 0;
  std::string last_error_;
  std::string last_apply_reason_;  // why the last apply failed (logged once per reason)
  // Why each upstream of this node that etcd does not hold could not be
  // seeded (an entry goes once etcd has the upstream); the status shows the
  // first one.
  std::map<std::string, std::string> seed_errors_;
  std::map<std::string, std::string> held_errors_;  // upstream → its key does not parse (from the last apply)
  std::set<std::string> warned_;
};

}  // namespace

int run_sync(const config::Config& cfg, const shm::Segment& seg) {
  try {
    Sync s(cfg, seg);
    return s.run();
  } catch (const std::exception& e) {
    GW_LOG_ERROR("sync failed: {}", e.what());
    return 1;
  }
}

}  // namespace gw::process
