"""Installing ShardGate like real software (issue 19): the .deb CPack builds from the release
build, installed with dpkg -i on this machine, then started the way the systemd unit starts it.

Proved here:
- `cmake --build build --target package` makes build/shardgate_<version>_<arch>.deb;
- dpkg -i installs /usr/bin/shardgate and shardgatectl, the systemd unit, the example config,
  the dashboard and alert rules, and the README; its postinst adds the system user shardgate
  and puts a config to edit in /etc/shardgate (root:shardgate, 0640) that passes --check;
- the unit names that config, reloads with SIGHUP, carries the hardening options, and
  `systemd-analyze verify` accepts it (this machine runs no systemd, so the unit's own commands
  are run as it would run them: as user shardgate, with its ExecStartPre check first);
- started so, against a 2-shard cluster, psql works through it and rows land on their owners;
  SIGHUP reloads (a new user can log in without a restart); SIGTERM stops it with status 0;
- `shardgate --help` is a manual page (NAME, SYNOPSIS, OPTIONS, SIGNALS, FILES, EXIT STATUS);
- dpkg --purge removes the files, the config and the user.

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_install.py -v
"""

import os
import pwd
import grp
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CONF = Path("/etc/shardgate/shardgate.toml")
UNIT = Path("/usr/lib/systemd/system/shardgate.service")


def run(cmd, check=True, timeout=600, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def installed():
    return run(["dpkg-query", "-W", "-f=${Status}", "shardgate"], check=False).stdout.startswith(
        "install ok installed")


@unittest.skipIf(os.geteuid() != 0, "dpkg -i needs root")
@unittest.skipIf(shutil.which("dpkg-shlibdeps") is None, "needs dpkg-dev")
class InstallTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 0

    def setUp(self):
        if installed():
            self.skipTest("a shardgate package is installed on this machine already; not touching it")

    def purge(self):
        run(["dpkg", "--purge", "shardgate"], check=False)

    def test_deb_installs_starts_reloads_and_purges(self):
        build = harness.BUILD_DIR
        for old in build.glob("shardgate_*.deb"):
            old.unlink()
        run(["cmake", "--build", build, "--target", "package"])
        debs = list(build.glob("shardgate_*.deb"))
        self.assertEqual(len(debs), 1, debs)
        info = run(["dpkg-deb", "--field", debs[0], "Package", "Version", "Depends"]).stdout
        self.assertIn("Package: shardgate", info)
        self.assertRegex(info, r"Depends: .*libpqxx")  # found by dpkg-shlibdeps

        self.addCleanup(self.purge)
        run(["dpkg", "-i", debs[0]])
        self.assertTrue(installed())
        for f in ["/usr/bin/shardgate", "/usr/bin/shardgatectl", UNIT,
                  "/usr/share/shardgate/shardgate.toml", "/usr/share/shardgate/grafana/shardgate.json",
                  "/usr/share/shardgate/prometheus/shardgate.rules.yml",
                  "/usr/share/doc/shardgate/README.md"]:
            self.assertTrue(Path(f).exists(), f)
        version = re.search(r"project\(shardgate VERSION ([0-9.]+)",
                            (harness.REPO / "CMakeLists.txt").read_text()).group(1)
        self.assertEqual(run(["/usr/bin/shardgate", "--version"]).stdout.strip(),
                         f"shardgate {version}")
        manual = run(["/usr/bin/shardgate", "--help"]).stdout
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "FILES",
                        "EXIT STATUS", "SEE ALSO"]:
            self.assertRegex(manual, rf"(?m)^{section}$")
        self.assertEqual(run(["/usr/bin/shardgatectl", "--help"]).returncode, 0)

        # postinst: the user, and a config to edit that is valid as shipped.
        user = pwd.getpwnam("shardgate")
        st = CONF.stat()
        self.assertEqual((st.st_uid, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)),
                         (0, "shardgate", 0o640))
        run(["runuser", "-u", "shardgate", "--", "/usr/bin/shardgate", "--config", CONF, "--check"])

        # The unit.
        unit = UNIT.read_text()
        exec_pre = re.search(r"(?m)^ExecStartPre=(.*)$", unit).group(1).split()
        exec_start = re.search(r"(?m)^ExecStart=(.*)$", unit).group(1).split()
        self.assertEqual(exec_start, ["/usr/bin/shardgate", "--config", str(CONF)])
        self.assertEqual(exec_pre, exec_start + ["--check"])
        for line in ["User=shardgate", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                     "CapabilityBoundingSet=", "WantedBy=multi-user.target"]:
            self.assertIn(line + "\n", unit)
        if shutil.which("systemd-analyze"):
            v = run(["systemd-analyze", "verify", UNIT], check=False)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

        # Started as the unit starts it, against the cluster.
        port = harness.free_port_block(1)
        meta = "[metadata]\nenabled = true\n"  # two-phase commit for the insert across shards
        CONF.write_text(harness.proxy_toml(self.cluster, port, extra_toml=meta))
        run(["runuser", "-u", "shardgate", "--", *exec_pre])
        log = open(self.cluster.dir / "installed-proxy.log", "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(["runuser", "-u", "shardgate", "--", *exec_start],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def stop(sig=signal.SIGKILL):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                proc.wait(10)
        self.addCleanup(stop)
        self.assertTrue(harness.wait_port(port, 15, lambda: proc.poll() is None),
                        (self.cluster.dir / "installed-proxy.log").read_text())
        pid = int(run(["pgrep", "-u", str(user.pw_uid), "-x", "shardgate"]).stdout.split()[0])

        def psql(sql, user="app", password="app-secret"):
            return run(["psql", "-h", "127.0.0.1", "-p", port, "-U", user, "-d", "app", "-qAtX",
                        "-v", "ON_ERROR_STOP=1", "-c", sql],
                       env={**os.environ, "PGPASSWORD": password}, check=False)

        p = psql("INSERT INTO accounts (id, balance) VALUES " +
                 ", ".join(f"({k}, {k})" for k in range(1, 21)))
        self.assertEqual(p.returncode, 0, p.stderr)
        for k in range(1, 21):
            owner = int(run(["/usr/bin/shardgate", "--config", CONF, "--locate", "accounts",
                             k]).stdout.strip()[1:])
            for i in range(self.cluster.shards):
                rows = self.cluster.sql(self.cluster.primary_port(i),
                                        f"SELECT balance FROM accounts WHERE id = {k}")
                self.assertEqual(rows, [[str(k)]] if i == owner else [], f"key {k} on s{i}")

        # SIGHUP (systemctl reload): a user added to the file logs in without a restart.
        self.assertNotEqual(psql("SELECT 1", "ops", "ops-secret").returncode, 0)
        CONF.write_text(harness.proxy_toml(self.cluster, port, users=(
            ("app", "app-secret"), ("ops", "ops-secret")), extra_toml=meta))
        os.kill(pid, signal.SIGHUP)
        deadline = time.time() + 10
        while psql("SELECT 1", "ops", "ops-secret").returncode != 0 and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(psql("SELECT 1", "ops", "ops-secret").stdout.strip(), "1")

        # SIGTERM (systemctl stop): a clean exit.
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(proc.wait(30), 0)

        run(["dpkg", "--purge", "shardgate"])
        self.assertFalse(installed())
        for f in ["/usr/bin/shardgate", UNIT, CONF]:
            self.assertFalse(Path(f).exists(), f)
        self.assertRaises(KeyError, pwd.getpwnam, "shardgate")


if __name__ == "__main__":
    unittest.main()
