#!/usr/bin/python3
"""The backend fault matrix for http listeners: for each way a backend can
fail, what the client gets, whether gw tries another host, and what passive
health makes of the faulty host (max_fails 1: one failure takes it out for
fail_timeout_ms). Each fault runs against a pool of the faulty host and a good
one, with GET (idempotent: retried on the faults in the default retry.on) and
checks the faulty host is then left alone while it is down.

The finer cases (POST not retried after it was sent, retry.on lists, the tries
and timeout bounds, 504 timings) are in test_http.py's RetryTest. A blackholed
host (packets dropped by nftables, at connect and on an established
connection, for http and tcp listeners) is test_blackhole.py's."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import httpbackend as hb  # noqa: E402
from gwtest import T, free_port, pool  # noqa: E402
from test_http import HttpCase, get, host  # noqa: E402

# fault -> (backend keywords, upstream options, status of the first request
# that meets the fault, whether another host is tried, whether the fault is a
# passive failure of the host)
FAULTS = {
    "refused": (None, {}, 200, True, True),
    "reset before the response head": ({"action": "reset_after_head"}, {}, 200, True, True),
    "closed before the response head": ({"action": "close_after_head"}, {}, 200, True, True),
    "slow (past read_timeout_ms)": ({"delay_head": 5}, {"read_timeout_ms": 300}, 200, True, True),
    "TE and CL together": ({"action": "te_cl"}, {}, 502, False, True),
    "a bad status line": ({"action": "bad_status"}, {}, 502, False, True),
    "an oversized response head": ({"action": "huge_headers"}, {}, 502, False, True),
    "5xx answer (not in retry.on)": ({"status": 500}, {}, 500, False, False),
}

# the "last:" of the host_down event (a read timeout said "Connection timed out",
# which reads as a connect that timed out)
LAST = {
    "refused": "Connection refused",
    "slow (past read_timeout_ms)": "no answer within read_timeout_ms",
}


class BackendFaultTest(HttpCase):

    def check_fault(self, name):
        kw, opts, first_status, retried, blamed = FAULTS[name]
        good = self.hb("good")
        if kw is None:
            bad_addr, bad = f"127.0.0.1:{free_port()}", None
        else:
            bad = self.hb("bad", **kw)
            bad_addr = bad.address
        gw = self.http_gw([pool("p", [host("bad", bad_addr), host("good", good)])],
                          upstream_opts={"max_fails": 1, "fail_timeout_ms": 60000, **opts})
        # Round robin starts anywhere: send until the faulty host has met a request.
        statuses = []
        for i in range(4):
            r = get(gw.port, f"/{i}")
            statuses.append(r.status if r else None)
            met = (bad.requests if bad else gwtest.find_host(gw.status(), "app/p/bad")["failures"]) > 0
            if met:
                break
        self.assertTrue(met, f"{name}: the faulty host never got a request: {statuses}")
        self.assertEqual(statuses[-1], first_status, f"{name}: the request that met the fault")
        self.assertTrue(all(s == 200 for s in statuses[:-1]), f"{name}: {statuses}")
        good_before = good.requests
        h = gwtest.find_host(gw.status(), "app/p/bad")
        if blamed:
            self.assertEqual(h["failures"], 1, f"{name}: one passive failure")
            self.assertEqual(h["health"], "down", f"{name}: max_fails 1 takes the host out")
            if name in LAST:  # what the host_down event says of it
                down = [e for e in gw.event_texts() if e.startswith("host_down app/p/bad ")]
                self.assertTrue(down and down[-1].endswith(f"last: {LAST[name]})"), f"{name}: {down}")
        else:
            self.assertEqual(h["failures"], 0, f"{name}: not a failure of the host")
            self.assertEqual(h["health"], "up")
        # Every request the good host answered: all of them when the failed
        # attempt went on to it, all but the one that met the fault otherwise.
        self.assertEqual(good_before, len(statuses) if retried else len(statuses) - 1,
                         f"{name}: retried={retried}, statuses {statuses}")
        # While it is down, every request goes to the good host.
        if blamed:
            bad_before = bad.requests if bad else 0
            for i in range(6):
                self.assertEqual(get(gw.port, f"/after{i}").status, 200, f"{name}: after the fault")
            self.assertEqual(good.requests - good_before, 6, f"{name}: all to the good host while the bad one is down")
            if bad:
                self.assertEqual(bad.requests, bad_before, f"{name}: the downed host got requests")


def _make(name):
    return lambda self: self.check_fault(name)


for _i, _name in enumerate(FAULTS):
    setattr(BackendFaultTest, f"test_{_i:02d}_" + "".join(c if c.isalnum() else "_" for c in _name).strip("_"),
            _make(_name))


if __name__ == "__main__":
    gwtest.main()
