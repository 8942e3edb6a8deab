"""A test file that must run in a network namespace of its own (test_blackhole,
test_vip) re-executes itself in one with reexec_in_netns(), before it imports
the harness. Nothing it does to the network (nft rules, bridges, addresses)
then reaches the machine's, and all of it goes away with the namespace.

Without unshare(1), or if no namespace can be made, the file fails with a
message: it does not skip."""

import os
import shutil
import subprocess
import sys

NETNS_ENV = "GW_TEST_NETNS"      # set (to the outer namespace's id) in the re-executed process
SBIN_PATH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def tool(name):
    """name's path: PATH first, then the sbin dirs a non-root PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_PATH:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def fail_setup(test, msg):
    sys.stderr.write(f"{test}: FAIL: {msg}\n")
    sys.stderr.flush()
    sys.exit(1)


def reexec_in_netns(script, test):
    """Replaces this process with `script` inside a new network namespace (same
    pid: unshare(1) unshares, then execs), or exits 1 saying why it cannot."""
    unshare = tool("unshare")
    if unshare is None:
        fail_setup(test, "unshare(1) not found (Debian package util-linux); this test needs its own "
                   "network namespace")
    # As root a plain network namespace is enough; where that is refused (a
    # container without CAP_SYS_ADMIN) or when not root, a user namespace
    # mapping us to root in it gives the CAP_NET_ADMIN needed there.
    choices = ([["--net"]] if os.geteuid() == 0 else []) + [["--user", "--map-root-user", "--net"]]
    tried = []
    for flags in choices:
        try:
            r = subprocess.run([unshare, *flags, "true"], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            tried.append(f"`unshare {' '.join(flags)}`: {e}")
            continue
        if r.returncode == 0:
            env = dict(os.environ)
            env[NETNS_ENV] = os.readlink("/proc/self/ns/net")
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(unshare, [unshare, *flags, sys.executable, os.path.abspath(script), *sys.argv[1:]], env)
        tried.append(f"`unshare {' '.join(flags)}` exited {r.returncode}: {r.stderr.strip()}")
    fail_setup(test, "cannot create a network namespace: " + "; ".join(tried) +
               " (run as root, or allow unprivileged user namespaces: sysctl"
               " kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)")


def assert_own_netns(test, what):
    """Raises unless this process runs in the namespace reexec_in_netns() made:
    `what` would otherwise reach the machine's network."""
    outer = os.environ.get(NETNS_ENV)
    if outer is None:
        raise AssertionError(f"run {test}.py as a script: it re-executes itself in a network namespace")
    if os.readlink("/proc/self/ns/net") == outer:
        raise AssertionError(f"still in the outer network namespace {outer}: {what}")
