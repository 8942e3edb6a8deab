#!/usr/bin/python3
"""bench/compare.sh's parsers of the load generators' output, fed canned output.

parse_wrk and parse_gwload are cut out of compare.sh as they stand (the script
itself starts contenders and runs for minutes) and run in bash on files written
here. Each prints "rate p50_ms p99_ms errors requests"; `requests` divides the
CPU time measured over the whole run (cpu us/req). Other parts are cut out
the same way and run on canned input: the summary (what it writes where)."""

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402

COMPARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "compare.sh")

WRK = """Running 10s test @ http://127.0.0.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   {avg}    1.00ms  {max}   90.00%
    Req/Sec    10.00k     1.00k   12.00k    70.00%
  Latency Distribution
     50%  {p50}
     75%    1.00ms
     90%    2.00ms
     99%  {p99}
  200000 requests in 10.00s, 30.00MB read
{extra}Requests/sec:  20000.00
Transfer/sec:      3.00MB
"""


def function_text(name):
    """The shell function `name` as compare.sh defines it."""
    with open(COMPARE, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^%s\(\) \{(?: [^\n]*\}$|\n.*?^\}$)" % name, text, re.S | re.M)
    assert m, f"{name} not found in compare.sh"
    return m.group(0)


class BenchParsersTest(unittest.TestCase):
    def parse(self, name, output):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(output)
        self.addCleanup(os.unlink, f.name)
        script = "PY=/usr/bin/python3\n%s\n%s \"$1\"\n" % (function_text(name), name)
        r = subprocess.run(["bash", "-c", script, "parse", f.name], capture_output=True, text=True,
                           timeout=gwtest.T(30), stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout.split()

    def wrk(self, p50="500.00us", p99="3.00ms", extra=""):
        return self.parse("parse_wrk", WRK.format(avg="1.00ms", max="9.00ms", p50=p50, p99=p99, extra=extra))

    def test_wrk_latency_units(self):
        """wrk prints each latency in us, ms, s or m: all come out in ms."""
        self.assertEqual(self.wrk(), (0, ["20000.00", "0.500", "3.000", "0", "200000"]))
        self.assertEqual(self.wrk(p50="1.50s", p99="1.20m")[1][1:3], ["1500.000", "72000.000"])

    def test_wrk_failed_requests_are_counted(self):
        """Socket errors (connect, read, write, timeout) and non-2xx/3xx replies
        are errors: wrk counts them in Requests/sec."""
        extra = ("  Socket errors: connect 1, read 20, write 300, timeout 4000\n"
                 "  Non-2xx or 3xx responses: 50000\n")
        self.assertEqual(self.wrk(extra=extra), (0, ["20000.00", "0.500", "3.000", "54321", "200000"]))

    def test_wrk_without_a_latency_distribution_fails(self):
        out = "\n".join(line for line in WRK.splitlines() if "%  " not in line)
        self.assertNotEqual(self.parse("parse_wrk", out.format(avg="1ms", max="2ms", extra=""))[0], 0)

    def test_gwload_churn_report(self):
        """The rate is churn_connects_per_s (cycles done within -T); the
        requests that divide the CPU time are all the cycles the run completed
        (`established`, the drain's included: the CPU time covers them), not
        churn_connects, which left them out and overstated cpu/req."""
        report = {"mode": "churn", "established": 10050, "errors": 0, "churn_connects": 10000,
                  "churn_connects_per_s": 1000.0,
                  "first_latency_us": {"count": 10050, "p50": 1500, "p99": 25000, "p999": 30000, "max": 31000,
                                       "mean": 2000.0}}
        out = "progress\n" + json.dumps(report) + "\n"
        self.assertEqual(self.parse("parse_gwload", out), (0, ["1000.0", "1.500", "25.000", "0", "10050"]))
        self.assertNotEqual(self.parse("parse_gwload", "gwload: usage\n")[0], 0)

    def test_gwload_errors_are_reported_not_fatal(self):
        """gwload exits 1 when it counted errors (its report has them); wrk
        exits 0 with failed requests. compare.sh took gwload's 1 for a failed
        run and stopped the whole benchmark, so a frame contender's errors
        never reached the errors column or the verdicts. Exit 1 is a run with
        errors in frame mode only; any other non-zero status is a failure."""
        for mode, rc, ran in (("frame", 0, True), ("frame", 1, True), ("frame", 2, False), ("frame", 137, False),
                              ("l7", 0, True), ("l7", 1, False), ("l4", 1, False)):
            script = "MODE=%s\n%s\nload_ran %d\n" % (mode, function_text("load_ran"), rc)
            r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=gwtest.T(30),
                               stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode == 0, ran, (mode, rc, r.stderr))

    RUNS = ("50\t1\tgw\t1000.00\t0.500\t3.000\t0\t10.00\t30000\t20000\t8.00\t6.00\n"
            "50\t1\tnginx\t900.00\t0.600\t3.500\t0\t12.00\t31000\t21000\t8.10\t6.10\n"
            "50\t2\tnginx\t910.00\t0.610\t3.400\t0\t12.10\t31000\t21000\t8.20\t6.20\n"
            "50\t2\tgw\t1010.00\t0.490\t2.900\t0\t9.90\t30000\t20000\t7.90\t5.90\n")

    def summary(self, d):
        """Runs compare.sh's summary (from `DATE=` to the end) on RUNS, l4 with
        gw and nginx, results in d/results and d/RESULTS.md."""
        with open(COMPARE, encoding="utf-8") as f:
            text = f.read()
        summary = text[text.index("\nDATE=$(date"):]
        with open(os.path.join(d, "runs.tsv"), "w") as f:
            f.write(self.RUNS)
        results = os.path.join(d, "results")
        script = ("set -euo pipefail\nPY=/usr/bin/python3\nMODE=l4\nCONTENDER_LIST=(gw nginx)\n"
                  "has_contender() { local c; for c in \"${CONTENDER_LIST[@]}\"; do [ \"$c\" = \"$1\" ] && return 0; done; return 1; }\n"
                  "log() { echo \"== $*\" >&2; }\n"
                  "ROOT=%s RUNS=%s/runs.tsv RESULTS_DIR=%s RESULTS_MD=%s/RESULTS.md TMP=%s BUILD_DIR=%s\n"
                  "SKIPPED=() ROUNDS=2 ORDER_TEXT=order DURATION=1 WORKERS=2 RULES_DONE=0 NOOP_DONE=0 ELAPSED=1\n"
                  "NGINX_KEEPALIVE=1024 RULES_DURATION=1 RULES_PAIRS=1\n%s"
                  % (d, d, results, d, d, d, summary))
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=gwtest.T(60),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return results

    def test_summary_keeps_the_per_run_data(self):
        """The summary writes runs.tsv, with a header line, beside the report
        (bench/results/MODE-STAMP.tsv) and names it in the report and in
        RESULTS.md: it was left in the temp dir, which goes at exit, so no
        run's per-round figures were kept."""
        runs = self.RUNS
        with tempfile.TemporaryDirectory() as d:
            results = self.summary(d)
            kept = [n for n in os.listdir(results) if n.endswith(".tsv")]
            self.assertEqual(len(kept), 1, os.listdir(results))
            with open(os.path.join(results, kept[0])) as f:
                lines = f.read().splitlines()
            self.assertEqual(lines[0].split("\t")[:3], ["connections", "round", "contender"])
            self.assertEqual(lines[1:], runs.splitlines())
            with open(os.path.join(results, kept[0][:-len(".tsv")] + ".md")) as f:
                self.assertIn(kept[0], f.read())
            with open(os.path.join(d, "RESULTS.md")) as f:
                self.assertIn("bench/results/" + kept[0], f.read())

    def test_report_says_the_cores_are_shared(self):
        """The report's header, and its section in RESULTS.md, say that no
        core is pinned and the load generator, the backends and the proxy
        share them: every figure depends on it."""
        with tempfile.TemporaryDirectory() as d:
            results = self.summary(d)
            want = "cores unpinned, shared by the load generator, the two backends and the proxy"
            for path in [os.path.join(results, n) for n in os.listdir(results) if n.endswith(".md")] + \
                    [os.path.join(d, "RESULTS.md")]:
                with open(path) as f:
                    self.assertIn(want, f.read(), path)

    def test_rules_run_counts_every_gwctl_call(self):
        """rules_run (l7's gray-rule runs) counts the gwctl calls it made when
        the load ends before all of them: the count stopped one short, since
        the call that found the load gone was made and left out. Here gwctl is
        a stub that logs each call and ends the load at its third."""
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "wrk.txt"), "w") as f:
                f.write(WRK.format(avg="1.00ms", max="9.00ms", p50="500.00us", p99="3.00ms", extra=""))
            gwctl = os.path.join(d, "gwctl")
            with open(gwctl, "w") as f:
                f.write('#!/bin/bash\necho "$*" >>"%s/calls"\n'
                        'if [ "$(wc -l <"%s/calls")" -eq 3 ]; then\n'
                        '  : >"%s/stop"\n'
                        '  # until the load has exited (gone, or a zombie)\n'
                        '  while [ -e /proc/$(cat "%s/load.pid")/status ] &&\n'
                        '        ! grep -q "^State:.*Z" /proc/$(cat "%s/load.pid")/status 2>/dev/null; do sleep 0.01; done\n'
                        'fi\n' % (d, d, d, d, d))
            os.chmod(gwctl, 0o755)
            script = ("set -euo pipefail\nPY=/usr/bin/python3\nD=%s\nTMP=$D GWCTL=$D/gwctl SHM_NAME=x conns=50\n"
                      "RULES_DURATION=20 RULES_PAIRS=1 RULES_DONE=0 NOOP_DONE=0 RULE_IP=127.0.0.1 RUNS=$D/runs.tsv\n"
                      "die() { echo \"die: $*\" >&2; exit 1; }\nshow_logs() { :; }\n"
                      "load() {\n  cp $D/wrk.txt \"$4\"\n"
                      "  bash -c 'until [ -e \"$1\" ]; do sleep 0.01; done' _ $D/stop &\n"
                      "  WRK_PID=$!\n  echo $WRK_PID >$D/load.pid\n}\n"
                      "%s\n%s\nrules_run rules 1 50\necho \"$RULES_DONE $(wc -l <$D/calls)\"\n"
                      % (d, function_text("parse_wrk"), function_text("rules_run")))
            r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=gwtest.T(60),
                               stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            done, made = map(int, r.stdout.split()[-2:])
            self.assertGreaterEqual(made, 3)
            self.assertLess(made, 50)
            self.assertEqual(done, made, r.stderr)
            self.assertIn("only %d of 50 gwctl calls" % made, r.stderr)

    def orders(self, n, rounds):
        """compare.sh's order() for n contenders: the contender indexes of
        each of the first `rounds` rounds, in running order."""
        script = "CONTENDER_LIST=(%s)\n%s\nfor ((r = 0; r < %d; r++)); do\n  line=\n" \
                 "  for ((k = 0; k < %d; k++)); do line+=\"$(order $r $k) \"; done\n  echo \"$line\"\ndone\n" % (
                     " ".join("c%d" % i for i in range(n)), function_text("order"), rounds, n)
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=gwtest.T(30),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [[int(x) for x in line.split()] for line in r.stdout.splitlines()]

    def test_order_is_balanced_over_each_design(self):
        """Over each full design (n rounds for an even n of contenders, 2n for
        an odd one), every contender runs in each position equally often and
        right after each other one equally often."""
        for n in range(2, 8):
            design = n if n % 2 == 0 else 2 * n
            rows = self.orders(n, 2 * design)
            for start in (0, design):
                block = rows[start:start + design]
                for row in block:
                    self.assertEqual(sorted(row), list(range(n)), (n, row))
                pos = collections.Counter((c, k) for row in block for k, c in enumerate(row))
                pairs = collections.Counter((a, b) for row in block for a, b in zip(row, row[1:]))
                self.assertEqual(set(pos.values()), {design // n}, (n, block))
                self.assertEqual(len(pairs), n * (n - 1), (n, block))
                self.assertEqual(len(set(pairs.values())), 1, (n, block))

    def test_order_varies_who_runs_before_whom_in_the_default_rounds(self):
        """With an odd number of contenders, the default 5 rounds are less than
        the design's 2n: taking the forward rows 0..4 in turn, each of l4's 5
        contenders always ran right after the same two others. Forward and
        reversed rows alternate now: each follows at least three others."""
        rows = self.orders(5, 5)
        before = collections.defaultdict(set)
        for row in rows:
            for a, b in zip(row, row[1:]):
                before[b].add(a)
        for c in range(5):
            self.assertGreaterEqual(len(before[c]), 3, (c, rows))


if __name__ == "__main__":
    gwtest.main()
