#!/usr/bin/python3
"""The README's gwctl examples stay valid command lines.

Every `$ gwctl ...` line of the README's ```console blocks is run against a
segment that does not exist: gwctl must get past its command-line parsing
(exit 1, "no running gateway" or the like), never stop at a usage error
(exit 2, "see gwctl --help"). The README's JSON examples are checked by
test_config_check.test_readme_examples_pass."""

import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase  # noqa: E402

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")


def readme_gwctl_lines():
    """(line number, argv after "gwctl") of every `$ [dir/]gwctl ...` console line."""
    out, in_console = [], False
    with open(README, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.startswith("```"):
                in_console = not in_console and line.strip() == "```console"
                continue
            m = re.match(r"\$ (?:[\w./-]*/)?gwctl (.*)$", line.rstrip()) if in_console else None
            if m:
                out.append((n, shlex.split(m.group(1))))
    return out


class ReadmeGwctlTest(GwTestCase):
    needs = ("gwctl",)

    def gwctl(self, argv, shm):
        """argv with the README's gateway replaced by `shm` (which does not
        exist) and its etcd by a loopback port nothing listens on."""
        args, i = [], 0
        while i < len(argv):
            a = argv[i]
            if a in ("-c", "--shm"):
                i += 2
                continue
            args.append(a)
            if a == "--etcd":
                args.append("http://127.0.0.1:1")
                i += 1
            i += 1
        if "--etcd" not in args:
            args += ["--shm", shm]
        r = subprocess.run([gwtest.GWCTL, *args], capture_output=True, text=True, timeout=gwtest.T(30),
                           stdin=subprocess.DEVNULL)
        return args, r

    def test_console_examples_parse(self):
        shm = gwtest.unique_shm_name()  # never created
        lines = readme_gwctl_lines()
        self.assertGreaterEqual(len(lines), 10, "the README's `$ gwctl` lines were not found")
        # The check itself tells a usage error apart.
        args, r = self.gwctl(["add", "hots", "app/primary", "a"], shm)
        self.assertEqual(r.returncode, 2, r.stderr)
        for n, argv in lines:
            with self.subTest(readme_line=n, argv=argv):
                args, r = self.gwctl(argv, shm)
                self.assertNotIn("see gwctl --help", r.stderr, f"README line {n}: gwctl {shlex.join(args)}")
                self.assertEqual(r.returncode, 1, f"README line {n}: gwctl {shlex.join(args)}: {r.stderr}")
        self.assertFalse(os.path.exists(f"/dev/shm/{shm}"))


if __name__ == "__main__":
    gwtest.main()
