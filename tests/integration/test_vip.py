#!/usr/bin/python3
"""keepalived in front of two gw nodes: the virtual IP (VIP) moves to the other
node when `gwctl check` fails on the node that holds it, and comes back when
the check passes again (conf/keepalived.conf.example, README "Cluster").

This file re-executes itself in a fresh network namespace (see netns.py), the
"LAN": a bridge with the client's address. Each node is a network namespace of
its own, made by the test (`unshare --net` holding it open), joined to the
bridge by a veth pair, and runs its own gw-backend (on the node's loopback), gwd
(a tcp listener on 0.0.0.0:7000) and keepalived (VRRP on the veth, the check
script `gwctl check --shm NAME`). Node A has priority 150, node B 100.

Addresses: 192.0.2.0/24 (TEST-NET-1, for documentation) inside these
namespaces only: the client 192.0.2.1, the nodes .11 and .12, the VIP .100.
Nothing is ever sent to an address outside the test's own namespaces.

Without keepalived (Debian package keepalived, installed by tools/setup.sh),
ip(8) or nsenter(1), the file fails with a message: it does not skip."""

import itertools
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402

if __name__ == "__main__" and netns.NETNS_ENV not in os.environ:
    netns.reexec_in_netns(__file__, "test_vip")

import gwtest  # noqa: E402
import httpbackend as hb  # noqa: E402
from gwtest import GWCTL, GW_BACKEND, T, host, pool, wait_until  # noqa: E402

LAN = "192.0.2"
CLIENT = f"{LAN}.1"
VIP = f"{LAN}.100"
PORT = 7000           # every namespace is fresh: the port is free in each
BACKEND_PORT = 8081

TOOLS = {}
_VETH_SEQ = itertools.count(1)


def setUpModule():
    netns.assert_own_netns("test_vip", "the bridge and VIP would be the machine's")
    for name, pkg in (("ip", "iproute2"), ("nsenter", "util-linux"), ("unshare", "util-linux"),
                      ("keepalived", "keepalived")):
        TOOLS[name] = netns.tool(name)
        if TOOLS[name] is None:
            raise AssertionError(f"{name} not found (Debian package {pkg}, installed by tools/setup.sh)")
    ip("link", "set", "lo", "up")
    ip("link", "add", "br0", "type", "bridge")
    ip("addr", "add", f"{CLIENT}/24", "dev", "br0")
    ip("link", "set", "br0", "up")


def run(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=T(10), stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def ip(*args):
    return run([TOOLS["ip"], *args])


def served_by(timeout=0.5):
    """The name of the backend that answers a request to the VIP (each node
    has its own), or an exception."""
    with hb.connect(PORT, timeout, host=VIP) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        r = hb.read_response(s)
    if r is None or r.status != 200:
        raise AssertionError(f"answer {r!r}")
    return r.body.decode().strip().removeprefix("backend ")


class Node:
    """A network namespace joined to the bridge, with gw-backend, gwd and
    keepalived in it."""

    def __init__(self, tc, name, index, priority, listen="0.0.0.0"):
        self.tc = tc
        self.name = name
        self.listen = listen
        self.addr = f"{LAN}.{index}"
        self.priority = priority
        self.holder = subprocess.Popen([TOOLS["unshare"], "--net", "sleep", "infinity"], stdin=subprocess.DEVNULL,
                                       preexec_fn=gwtest._child_preexec)
        tc.addCleanup(self._stop_holder)
        ours = os.readlink("/proc/self/ns/net")
        wait_until(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/net") != ours, T(5),
                   msg=f"node {name}'s namespace")
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        self.netns_id = os.readlink(self.netns)
        # A veth pair of its own per node made, even for a name used before in
        # this run: the kernel takes an earlier node's namespace down, and its
        # end of the pair with it, in its own time (once the last process in
        # it has gone; on a loaded host that took more than 30 s, CI stop 34).
        # The pair is also deleted at clean-up, from the LAN side, which takes
        # both ends down at once.
        seq = next(_VETH_SEQ)
        dev, peer = f"v{name}{seq}", f"b{name}{seq}"
        ip("link", "add", dev, "type", "veth", "peer", "name", peer)
        tc.addCleanup(self._delete_pair, peer)
        ip("link", "set", dev, "netns", str(self.holder.pid))
        ip("link", "set", peer, "master", "br0", "up")
        self.dev = dev
        self.ip("link", "set", "lo", "up")
        self.ip("addr", "add", f"{self.addr}/24", "dev", dev)
        self.ip("link", "set", dev, "up")
        self.procs = []

    @staticmethod
    def _delete_pair(peer):
        # Gone already if the namespace went first: not an error.
        subprocess.run([TOOLS["ip"], "link", "del", peer], capture_output=True, timeout=T(10),
                       stdin=subprocess.DEVNULL)

    def _stop_holder(self):
        self.holder.kill()
        self.holder.wait()

    def argv(self, *args):
        # The holder is our unreaped child, so its pid cannot have been reused;
        # the namespace id is checked all the same before anything enters it.
        if self.holder.poll() is not None or os.readlink(self.netns) != self.netns_id:
            raise AssertionError(f"node {self.name}'s namespace holder is gone")
        return [TOOLS["nsenter"], f"--net={self.netns}", *args]

    def ip(self, *args):
        return run(self.argv(TOOLS["ip"], *args))

    def spawn(self, argv, log):
        with open(log, "wb") as f:
            p = subprocess.Popen(self.argv(*argv), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=gwtest._child_preexec)
        gwtest.remember_pids([p.pid], p.pid)
        self.tc.addCleanup(self._kill_group, p)
        return p

    @staticmethod
    def _kill_group(p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # keepalived: its VRRP child stops with it
            try:
                p.wait(T(5))
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.wait()

    def start(self):
        tc = self.tc
        self.spawn([GW_BACKEND, "--listen", f"127.0.0.1:{BACKEND_PORT}", "--name", self.name, "--mode", "http"],
                   os.path.join(tc.tmp, f"backend-{self.name}.log"))
        cfg = tc.make_config([pool("p", [host("be", f"127.0.0.1:{BACKEND_PORT}")])], workers=2,
                             listeners=[{"name": "vip", "listen": f"{self.listen}:{PORT}", "protocol": "tcp",
                                         "upstream": "app"}])
        self.gw = gwtest.Gateway(tc, cfg, conf_name=f"gw-{self.name}.json")
        self.gw.netns = self.netns
        tc._gateways.append(self.gw)
        self.gw.start()
        self.ka_log = os.path.join(tc.tmp, f"keepalived-{self.name}.log")
        conf = os.path.join(tc.tmp, f"keepalived-{self.name}.conf")
        # Checks once a second; one failure gives the VIP up, one pass takes it
        # again (the example's 2 s interval and fall/rise 2, made faster).
        with open(conf, "w") as f:
            f.write(f"""global_defs {{
    script_user root
}}
vrrp_script gw_check {{
    script "{GWCTL} check --shm {self.gw.shm} --timeout-ms 500"
    interval 1
    timeout 2
    fall 1
    rise 1
}}
vrrp_instance gw_vip {{
    state BACKUP
    interface {self.dev}
    virtual_router_id 51
    priority {self.priority}
    advert_int 1
    virtual_ipaddress {{
        {VIP}/24
    }}
    track_script {{
        gw_check
    }}
}}
""")
        self.ka = self.spawn([TOOLS["keepalived"], "--dont-fork", "--log-console", "--no-syslog", "--vrrp", "-f", conf,
                              "-p", os.path.join(tc.tmp, f"ka-{self.name}.pid"),
                              "-r", os.path.join(tc.tmp, f"vrrp-{self.name}.pid")], self.ka_log)

    def allow_nonlocal_bind(self):
        run(self.argv("/bin/sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind"))

    def holds_vip(self):
        return f" {VIP}/" in self.ip("-4", "-o", "addr", "show", "dev", self.dev)

    def check(self):
        r = subprocess.run(self.argv(GWCTL, "check", "-c", self.gw.conf_path, "--timeout-ms", "2000"),
                           capture_output=True, text=True, timeout=T(10), stdin=subprocess.DEVNULL)
        return r.returncode, r.stderr.strip()

    def ka_text(self):
        with open(self.ka_log, "rb") as f:
            return f.read().decode(errors="replace")


class VipTest(gwtest.GwTestCase):
    needs = ("gwd", "gwctl", "gw-backend")

    def setUp(self):
        super().setUp()
        self.a = Node(self, "nodeA", 11, 150)
        self.b = Node(self, "nodeB", 12, 100)
        self.a.start()
        self.b.start()

    def dump(self):
        super().dump()
        for n in (self.a, self.b):
            try:
                sys.stderr.write(f"--- {n.ka_log} ---\n{gwtest.tail(n.ka_text(), 40)}\n")
            except (OSError, AttributeError):
                pass

    def wait_served_by(self, name, timeout):
        t0 = time.monotonic()
        wait_until(lambda: served_by() == name, timeout, interval=0.05, msg=f"the VIP to be served by {name}")
        return time.monotonic() - t0

    def assertVipOn(self, node):
        other = self.b if node is self.a else self.a
        self.assertTrue(node.holds_vip(), f"{node.name} holds the VIP")
        self.assertFalse(other.holds_vip(), f"{other.name} holds the VIP too")

    def test_vip_moves_when_gwctl_check_fails_and_comes_back(self):
        self.wait_served_by("nodeA", T(15))
        self.assertVipOn(self.a)
        self.assertEqual(self.a.check(), (0, ""))

        # Node A's gateway dies (every gw process SIGKILLed): its check fails,
        # its keepalived gives the VIP up and node B takes it.
        self.a.gw.kill_all()
        t0 = time.monotonic()
        rc, why = self.a.check()
        self.assertEqual(rc, 1)
        self.assertIn("check failed: the master", why)
        self.wait_served_by("nodeB", T(10))
        failover = time.monotonic() - t0
        self.assertVipOn(self.b)
        wait_until(lambda: "Entering FAULT STATE" in self.a.ka_text(), T(5), msg="node A's keepalived in FAULT")
        self.assertIn("Entering MASTER STATE", self.b.ka_text())

        # Restarted, node A passes its check again and takes the VIP back (it
        # has the higher priority).
        self.a.gw.start()
        t1 = time.monotonic()
        self.wait_served_by("nodeA", T(15))
        failback = time.monotonic() - t1
        self.assertVipOn(self.a)
        self.assertEqual(self.b.check(), (0, ""), "node B's gateway was fine all along")
        sys.stderr.write(f"\n[test_vip] failover {failover:.2f} s, failback {failback:.2f} s\n")


class VipBoundTest(VipTest):
    """The same, with each node's listener bound to the VIP itself
    (net.ipv4.ip_nonlocal_bind=1), the other set-up the example names. On a
    node that does not hold the VIP, `gwctl check` checks that its socket
    listens there: it used to connect to the VIP, which tested the other
    node's gateway, and failed while no node held the VIP, so the backup
    node went to FAULT and never took the VIP over."""

    def setUp(self):
        gwtest.GwTestCase.setUp(self)
        self.a = Node(self, "nodeA", 11, 150, listen=VIP)
        self.b = Node(self, "nodeB", 12, 100, listen=VIP)
        for n in (self.a, self.b):
            n.allow_nonlocal_bind()
            n.start()


if __name__ == "__main__":
    gwtest.main()
