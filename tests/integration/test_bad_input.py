"""Hostile and broken input over raw sockets: each gets a proper ErrorResponse with the right
SQLSTATE (where the protocol allows one) and the proxy then closes that connection, while a
healthy psycopg2 session keeps working and the proxy stays up. Also: a dead or silent shard
gives a class-08 error quickly, never a hang, and the proxy keeps serving the other shards."""

import os
import socket
import struct
import threading
import time
import types
import unittest

import psycopg2

import harness
from harness import SHARDGATE_BIN, ClusterTestCase, Cluster, Proxy
from wire import Closed, Raw, frame, parse_error, startup_packet

AUTH_TIMEOUT_MS = 1000
PROXY_KEYS = f"""
max_message_bytes = 65536
auth_timeout_ms = {AUTH_TIMEOUT_MS}
connect_timeout_ms = 1000
connect_retries = 1
"""


def start_proxy(cluster, proxy_keys="", **kw):
    """harness.Proxy with extra keys (raw TOML lines) in its [proxy] table."""
    return Proxy(cluster, proxy_options=proxy_keys or None, **kw)


# ---------------------------------------------------------------- the healthy bystander

class Bystander:
    """A psycopg2 session that writes and reads through the proxy in a thread until stopped."""

    def __init__(self, dsn, base):
        self.dsn, self.base = dsn, base
        self.errors, self.ok = [], 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn = psycopg2.connect(self.dsn, connect_timeout=10)
            conn.autocommit = True
            cur = conn.cursor()
            k = self.base
            while not self.stop_ev.is_set():
                cur.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'bystander', 1)", (k,))
                cur.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (k,))
                cur.execute("SELECT balance FROM accounts WHERE id = %s", (k,))
                if cur.fetchone() != (2,):
                    raise AssertionError(f"bystander read back a wrong balance for key {k}")
                self.ok += 1
                k += 1
                time.sleep(0.005)
            conn.close()
        except Exception as e:  # recorded, asserted by the test
            self.errors.append(repr(e))

    def finish(self):
        self.stop_ev.set()
        self.thread.join(30)
        return not self.thread.is_alive()


@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class BadInputTest(ClusterTestCase):
    SHARDS, REPLICAS = 1, 0
    _bystander_base = 10**9

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster.sql(cls.cluster.primary_port(0), "CREATE TABLE scratch(v text)", user="app")
        cls.proxy = start_proxy(cls.cluster, PROXY_KEYS)
        cls.addClassCleanup(cls.proxy.stop)
        # One worker, one backend connection: whatever one session leaves behind on its backend
        # connection, the next session gets; a leaked connection shows as a pool timeout.
        cls.tight = start_proxy(cls.cluster, PROXY_KEYS + "workers = 1\npool_size = 1\n"
                                                          "pool_timeout_ms = 2000\n")
        cls.addClassCleanup(cls.tight.stop)

    def setUp(self):
        self.assertTrue(self.proxy.alive(), f"proxy is down:\n{self.proxy.log()}")
        BadInputTest._bystander_base += 10**6
        self.bystander = Bystander(self.proxy.dsn(), self._bystander_base)
        time.sleep(0.05)  # let it get going before the bad input arrives

    def tearDown(self):
        time.sleep(0.05)
        stopped = self.bystander.finish()
        log = self.proxy.log()[-3000:]
        self.assertTrue(stopped, "the healthy session hung")
        self.assertEqual(self.bystander.errors, [], f"the healthy session failed; proxy log:\n{log}")
        self.assertGreater(self.bystander.ok, 0, "the healthy session made no progress")
        self.assertTrue(self.proxy.alive(), f"proxy died; log:\n{log}")
        # And a brand-new session still works.
        with psycopg2.connect(self.proxy.dsn(), connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone(), (1,))
        conn.close()

    def raw(self, port=None):
        r = Raw(port or self.proxy.port)
        self.addCleanup(r.close)
        return r

    def authed(self):
        r = self.raw()
        r.login()
        return r

    def assert_fatal(self, frames, sqlstate):
        """frames end in exactly one ErrorResponse with sqlstate (str or tuple), then EOF."""
        errors = [parse_error(b) for t, b in frames if t == "E"]
        self.assertEqual(len(errors), 1, f"expected one ErrorResponse, got frames {frames}")
        states = (sqlstate,) if isinstance(sqlstate, str) else sqlstate
        self.assertIn(errors[0].get("C"), states, errors[0])
        self.assertEqual(frames[-1][0], "E", f"the error must be the last thing sent: {frames}")
        self.assertEqual(errors[0].get("S"), "FATAL", errors[0])
        self.assertTrue(errors[0].get("M"), errors[0])
        return errors[0]

    # ------------------------------------------------------------------ before authentication

    def test_garbage_bytes(self):
        r = self.raw()
        r.send(b"GET / HTTP/1.1\r\n\r\n")
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_startup_length_too_small_or_huge(self):
        for packet in (struct.pack("!I", 4), struct.pack("!II", 2**31, 196608),
                       struct.pack("!II", 0xFFFFFFFF, 196608)):
            r = self.raw()
            r.send(packet)
            self.assert_fatal(r.read_until_close(), "08P01")

    def test_startup_without_terminator(self):
        r = self.raw()
        body = struct.pack("!I", 196608) + b"user\0app\0database\0app"  # no terminating NUL
        r.send(struct.pack("!I", len(body) + 4) + body)
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_unsupported_protocol_version(self):
        r = self.raw()
        r.send(startup_packet({"user": "app", "database": "app"}, code=2 << 16))
        self.assert_fatal(r.read_until_close(), "0A000")

    def test_startup_without_user(self):
        r = self.raw()
        r.send(startup_packet({"database": "app"}))
        self.assert_fatal(r.read_until_close(), "28000")

    def test_truncated_startup_closed_early(self):
        r = self.raw()
        r.send(b"\x00\x00\x00")
        r.close()
        # A half-sent length promising 100 bytes, then silence: closed by auth_timeout_ms.
        r = self.raw()
        r.send(struct.pack("!I", 100) + b"\x00\x03\x00\x00user\0")
        t0 = time.monotonic()
        frames = r.read_until_close(timeout=AUTH_TIMEOUT_MS / 1000 + 3)
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, AUTH_TIMEOUT_MS / 1000 + 1.5, "closed, but long after auth_timeout_ms")
        self.assertTrue(all(t == "E" for t, _ in frames), frames)

    def test_silent_client_is_dropped(self):
        r = self.raw()  # connects and never says anything
        t0 = time.monotonic()
        r.read_until_close(timeout=AUTH_TIMEOUT_MS / 1000 + 3)
        self.assertLess(time.monotonic() - t0, AUTH_TIMEOUT_MS / 1000 + 1.5)

    def test_stalled_authentication_is_dropped(self):
        r = self.raw()
        r.start()
        t0 = time.monotonic()
        frames = r.read_until_close(timeout=AUTH_TIMEOUT_MS / 1000 + 3)  # never answers SASL
        self.assertLess(time.monotonic() - t0, AUTH_TIMEOUT_MS / 1000 + 1.5)
        self.assertEqual(frames[0][0], "R", frames)

    def test_ssl_and_gssenc_requests_then_normal_startup(self):
        r = self.raw()
        r.send(struct.pack("!II", 8, 80877103))  # SSLRequest
        self.assertEqual(r.read_bytes(1), b"N")
        r.send(struct.pack("!II", 8, 80877104))  # GSSENCRequest
        self.assertEqual(r.read_bytes(1), b"N")
        frames = r.login()
        self.assertIn("K", [t for t, _ in frames])
        frames = r.query("SELECT 41 + 1")
        rows = [b for t, b in frames if t == "D"]
        self.assertEqual(len(rows), 1, frames)
        self.assertTrue(rows[0].endswith(b"42"), rows)
        r.send(frame(b"X"))
        self.assertEqual(r.read_until_close(), [])

    def test_cancel_request_with_unknown_key(self):
        r = self.raw()
        r.send(struct.pack("!IIii", 16, 80877102, 12345, 67890))
        self.assertEqual(r.read_until_close(), [])

    # ------------------------------------------------------------------ authentication failures

    def test_wrong_password(self):
        r = self.raw()
        r.start()
        r.scram("not-the-password")
        e = self.assert_fatal(r.read_until_close(), "28P01")
        self.assertIn("app", e["M"])

    def test_unknown_user(self):
        r = self.raw()
        r.start(user="mallory")
        r.scram("app-secret")  # the proxy runs a mock exchange rather than reveal the user is unknown
        self.assert_fatal(r.read_until_close(), ("28P01", "28000"))

    def test_bad_sasl_mechanism_and_malformed_scram(self):
        r = self.raw()
        r.start()
        r.read_frame()
        r.send(frame(b"p", b"SCRAM-SHA-1\0" + struct.pack("!i", 3) + b"n,,"))
        self.assert_fatal(r.read_until_close(), ("28000", "08P01"))
        r = self.raw()
        r.start()
        r.read_frame()
        r.send(frame(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 5) + b"xx,yy"))
        self.assert_fatal(r.read_until_close(), ("08P01", "28000"))

    def test_query_instead_of_password(self):
        r = self.raw()
        r.start()
        r.read_frame()
        r.send(frame(b"Q", b"SELECT 1\0"))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_unknown_database(self):
        r = self.raw()
        r.start(database="no_such_db")
        r.scram("app-secret")
        e = self.assert_fatal(r.read_until_close(), "3D000")
        self.assertIn("no_such_db", e["M"])

    # ------------------------------------------------------------------ after authentication

    def test_oversize_message_header(self):
        r = self.authed()
        r.send(b"Q" + struct.pack("!I", 100 * 1024 * 1024))  # promises 100 MB, sends nothing
        t0 = time.monotonic()
        self.assert_fatal(r.read_until_close(), "08P01")
        self.assertLess(time.monotonic() - t0, 2, "rejected at the header, not after waiting")

    def test_message_just_over_and_under_the_cap(self):
        r = self.authed()
        sql = "SELECT length('" + "x" * 60000 + "')"  # under max_message_bytes = 65536: fine
        frames = r.query(sql)
        self.assertTrue([b for t, b in frames if t == "D"][0].endswith(b"60000"), frames[:3])
        r.send(frame(b"Q", b"SELECT '" + b"y" * 70000 + b"'\0"))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_length_below_four(self):
        r = self.authed()
        r.send(b"Q" + struct.pack("!I", 2))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_unknown_message_type(self):
        r = self.authed()
        r.send(frame(b"z", b"whatever"))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_password_message_after_auth(self):
        r = self.authed()
        r.send(frame(b"p", b"app-secret\0"))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_query_without_terminator(self):
        r = self.authed()
        r.send(frame(b"Q", b"SELECT 1"))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_bind_with_inconsistent_counts(self):
        r = self.authed()
        r.send(frame(b"P", b"\0SELECT $1::int\0" + struct.pack("!h", 0)))
        # Two parameter format codes, but one parameter.
        bind = (b"\0\0" + struct.pack("!hhh", 2, 0, 0) + struct.pack("!h", 1) +
                struct.pack("!i", 1) + b"7" + struct.pack("!h", 0))
        r.send(frame(b"B", bind) + frame(b"E", b"\0" + struct.pack("!i", 0)) + frame(b"S"))
        frames = r.read_until_close()
        self.assert_fatal([f for f in frames if f[0] != "1"], "08P01")

    def test_bind_with_truncated_parameter(self):
        r = self.authed()
        r.send(frame(b"P", b"\0SELECT $1::int\0" + struct.pack("!h", 0)))
        bind = b"\0\0" + struct.pack("!h", 0) + struct.pack("!h", 1) + struct.pack("!i", 1000) + b"7"
        r.send(frame(b"B", bind) + frame(b"S"))
        frames = r.read_until_close()
        self.assert_fatal([f for f in frames if f[0] != "1"], "08P01")

    def test_parse_with_negative_parameter_count(self):
        r = self.authed()
        r.send(frame(b"P", b"\0SELECT 1\0" + struct.pack("!h", -1)) + frame(b"S"))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_describe_with_bad_kind(self):
        r = self.authed()
        r.send(frame(b"D", b"Xname\0") + frame(b"S"))
        self.assert_fatal(r.read_until_close(), "08P01")

    def test_session_survives_sql_errors(self):
        """Not bad protocol, just bad SQL: errors are not fatal and the session goes on."""
        r = self.authed()
        frames = r.query("SELEC 1")
        err = [parse_error(b) for t, b in frames if t == "E"]
        self.assertEqual([e.get("C") for e in err], ["42601"], frames)
        self.assertEqual(frames[-1], ("Z", b"I"))
        frames = r.query("SELECT 1")
        self.assertEqual(frames[-1], ("Z", b"I"))

    def test_too_many_messages_without_sync(self):
        r = self.authed()
        r.send(frame(b"C", b"Sx\0") * 100001)
        self.assert_fatal(r.read_until_close(timeout=15), "54000")

    # ------------------------------------------------------------------ abandoned sessions

    def primary(self, query):
        return self.cluster.sql(self.cluster.primary_port(0), query)

    def tight_session_works(self):
        """The single pooled backend connection of the tight proxy is usable (and not stuck in
        someone else's transaction): a write with a lock_timeout succeeds promptly."""
        with psycopg2.connect(self.tight.dsn(), connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SET lock_timeout = '2s'")
            cur.execute("SELECT count(*) FROM scratch")
            cur.execute("UPDATE accounts SET owner = owner WHERE id = 1")
        conn.close()

    def test_abandoned_unsynced_write_is_rolled_back(self):
        """Parse/Bind/Execute of an UPDATE, then Flush (no Sync), then the client vanishes. As with
        PostgreSQL itself, the implicit transaction must be rolled back, not committed later."""
        self.primary("INSERT INTO accounts (id, owner, balance) VALUES (1, 'abandon', 1) "
                     "ON CONFLICT (id) DO UPDATE SET balance = 1")
        r = self.raw(self.tight.port)
        r.login()
        q = b"UPDATE accounts SET balance = 999 WHERE id = 1"
        r.send(frame(b"P", b"\0" + q + b"\0" + struct.pack("!h", 0)) +
               frame(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0)) +
               frame(b"E", b"\0" + struct.pack("!i", 0)) + frame(b"H"))
        self.assertEqual(r.read_until("CE")[-1], ("C", b"UPDATE 1\0"))
        r.close()
        time.sleep(0.2)
        self.tight_session_works()  # the next session gets the same backend connection
        with psycopg2.connect(self.tight.dsn(), connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
        self.assertEqual(self.primary("SELECT balance FROM accounts WHERE id = 1"), [["1"]],
                         "an abandoned, never-synced UPDATE was committed by a later session")

    def test_abandoned_transaction_is_rolled_back(self):
        self.primary("INSERT INTO accounts (id, owner, balance) VALUES (2, 'abandon', 1) "
                     "ON CONFLICT (id) DO UPDATE SET balance = 1")
        r = self.raw(self.tight.port)
        r.login()
        self.assertEqual(r.query("BEGIN")[-1], ("Z", b"T"))
        self.assertEqual(r.query("UPDATE accounts SET balance = 999 WHERE id = 2")[-1], ("Z", b"T"))
        r.close()  # no COMMIT, no Terminate
        time.sleep(0.2)
        with psycopg2.connect(self.tight.dsn(), connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SET lock_timeout = '2s'")
            cur.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
        conn.close()
        self.assertEqual(self.primary("SELECT balance FROM accounts WHERE id = 2"), [["2"]])

    def test_abandoned_large_result(self):
        for _ in range(3):
            r = self.raw(self.tight.port)
            r.login()
            r.send(frame(b"Q", b"SELECT repeat('x', 1000) FROM generate_series(1, 20000)\0"))
            r.read_frame()  # the result has started
            r.close()
        time.sleep(0.2)
        self.tight_session_works()

    def test_abandoned_copy(self):
        r = self.raw(self.tight.port)
        r.login()
        r.send(frame(b"Q", b"COPY scratch FROM STDIN\0"))
        self.assertEqual(r.read_frame()[0], "G")
        r.send(frame(b"d", b"abandoned\n"))
        r.close()
        time.sleep(0.2)
        self.tight_session_works()
        self.assertEqual(self.primary("SELECT count(*) FROM scratch WHERE v = 'abandoned'"), [["0"]])

    def copy_in_progress(self):
        r = self.raw(self.tight.port)
        r.login()
        r.send(frame(b"Q", b"COPY scratch FROM STDIN\0"))
        self.assertEqual(r.read_frame()[0], "G")
        return r

    def test_protocol_violation_during_copy(self):
        """A Query in the middle of COPY FROM STDIN: FATAL 08P01 and the connection closes (as
        PostgreSQL does), the COPY is aborted, and the backend connection is not reused."""
        r = self.copy_in_progress()
        r.send(frame(b"d", b"violated\n") + frame(b"Q", b"SELECT 1\0"))
        self.assert_fatal(r.read_until_close(), "08P01")
        self.tight_session_works()
        self.assertEqual(self.primary("SELECT count(*) FROM scratch WHERE v = 'violated'"), [["0"]])

    def test_oversize_copy_data(self):
        r = self.copy_in_progress()
        r.send(frame(b"d", b"ok\n") + b"d" + struct.pack("!I", 70000 + 4))  # over max_message_bytes
        self.assert_fatal(r.read_until_close(), "08P01")
        self.tight_session_works()
        self.assertEqual(self.primary("SELECT count(*) FROM scratch WHERE v = 'ok'"), [["0"]])

    def test_startup_parameters_cannot_inject_sql(self):
        """Startup parameters become SET statements replayed on pooled backend connections; their
        values must stay values even on a connection where a previous session turned
        standard_conforming_strings off."""
        a = self.raw(self.tight.port)
        a.start(standard_conforming_strings="off")
        a.scram("app-secret")
        if a.read_until("ZE")[-1][0] == "Z":  # (refusing the setting would be fine too)
            self.assertEqual(a.query("SELECT 1")[-1], ("Z", b"I"))
        evil = "x\\'; CREATE TABLE pwned(); --"
        b = self.raw(self.tight.port)
        b.start(application_name=evil)
        b.scram("app-secret")
        self.assertEqual(b.read_until("ZE")[-1], ("Z", b"I"))
        frames = b.query("SELECT current_setting('application_name')")
        self.assertEqual(self.primary("SELECT to_regclass('pwned') IS NULL"), [["t"]],
                         "a startup parameter's value ran as SQL")
        rows = [body for t, body in frames if t == "D"]
        self.assertEqual(len(rows), 1, frames)
        self.assertEqual(rows[0][6:].decode(), evil, "the value must arrive unchanged")

    # ------------------------------------------------------------------ md5

    def test_md5_auth(self):
        p = start_proxy(self.cluster, 'auth = "md5"')
        self.addCleanup(p.stop)
        r = self.raw(p.port)
        r.login(method="md5")
        self.assertEqual(r.query("SELECT 1")[-1], ("Z", b"I"))
        r = self.raw(p.port)
        r.start()
        r.md5("app", "wrong")
        self.assert_fatal(r.read_until_close(), "28P01")
        r = self.raw(p.port)
        r.start(user="mallory")
        r.md5("mallory", "app-secret")
        self.assert_fatal(r.read_until_close(), ("28P01", "28000"))
        with psycopg2.connect(p.dsn(), connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()

    # ------------------------------------------------------------------ dead backends

    def test_dead_and_silent_shards(self):
        """s0 is the real primary, s1 a closed port, s2 a listener that never answers, s3 a
        second cluster's primary that gets kill -9'd. Queries for s1..s3 fail with SQLSTATE
        class 08 within connect_timeout_ms * (1 + connect_retries) plus slack; s0 keeps working,
        in the same session and in new ones."""
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # accepts into the backlog, never reads or answers
        self.addCleanup(silent.close)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()  # nothing listens here now
        other = Cluster("BadInputDead", shards=1, replicas=0)
        self.addCleanup(other.stop)
        other.sql(other.primary_port(0), harness.ACCOUNTS_DDL, user="app")
        c = self.cluster
        ports = [c.primary_port(0), closed_port, silent.getsockname()[1], other.primary_port(0)]
        shim = types.SimpleNamespace(shards=4, replicas=0, dir=c.dir,
                                     primary_port=lambda i: ports[i], replica_port=None)
        proxy = start_proxy(shim, PROXY_KEYS)
        self.addCleanup(proxy.stop)

        def key_on(shard):
            for k in range(2 * 10**12, 2 * 10**12 + 500):
                if proxy.locate("accounts", str(k)) == f"s{shard}":
                    return k
            self.fail(f"no key on s{shard}")
        keys = [key_on(i) for i in range(4)]

        conn = psycopg2.connect(proxy.dsn(), connect_timeout=5)
        conn.autocommit = True
        self.addCleanup(conn.close)
        cur = conn.cursor()
        for shard in (0, 3):
            cur.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'dead-test')", (keys[shard],))
        other.kill9(other.primary_port(0))

        limit = 1.0 * (1 + 1) + 3  # connect_timeout_ms * attempts, plus backoff and slack: < 5 s
        # s3 after the others: its pooled connection has been idle a while by then. (Right after
        # the kill, it may still hold the dying backend's FATAL 57P01: that case is
        # test_idle_backend_connection_terminated.)
        for shard in (1, 2, 3, 1):
            t0 = time.monotonic()
            with self.assertRaises(psycopg2.Error, msg=f"query for s{shard}") as cm:
                cur.execute("UPDATE accounts SET balance = 1 WHERE id = %s", (keys[shard],))
            elapsed = time.monotonic() - t0
            self.assertLess(elapsed, limit, f"s{shard}: error only after {elapsed:.1f}s")
            self.assertTrue((cm.exception.pgcode or "").startswith("08"),
                            f"s{shard}: {cm.exception.pgcode} {cm.exception}\nproxy log:\n"
                            f"{proxy.log()[-4000:]}")
            self.assertIn(f"s{shard}", str(cm.exception))
            # The same session still reaches the live shard.
            cur.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (keys[0],))
            self.assertEqual(cur.rowcount, 1)
        # A transaction on the dead shard fails the same way and can be rolled back.
        conn.autocommit = False
        with self.assertRaises(psycopg2.Error) as cm:
            cur.execute("SELECT * FROM accounts WHERE id = %s", (keys[1],))
        self.assertTrue((cm.exception.pgcode or "").startswith("08"), cm.exception)
        conn.rollback()
        conn.autocommit = True
        with psycopg2.connect(proxy.dsn(), connect_timeout=5) as c2, c2.cursor() as cur2:
            cur2.execute("SELECT balance FROM accounts WHERE id = %s", (keys[0],))
            self.assertEqual(cur2.fetchone(), (4,))
        c2.close()
        self.assertTrue(proxy.alive(), proxy.log()[-3000:])

    def test_idle_backend_connection_terminated(self):
        """The backend behind a pooled idle connection is terminated (pg_terminate_backend, as on
        a server restart or crash: it sends FATAL 57P01 and exits). The next statement, which
        never started anywhere, must not inherit that stale FATAL: it succeeds on a fresh
        connection, or at worst gets a non-fatal class-08 error, and the session goes on."""
        other = Cluster("BadInputTerm", shards=1, replicas=0)
        self.addCleanup(other.stop)
        port = other.primary_port(0)
        other.sql(port, harness.ACCOUNTS_DDL, user="app")
        proxy = start_proxy(other, PROXY_KEYS + "workers = 1\n")
        self.addCleanup(proxy.stop)
        r = self.raw(proxy.port)
        r.login()
        for attempt in range(3):
            self.assertEqual(r.query(f"INSERT INTO accounts (id) VALUES ({attempt})")[-1], ("Z", b"I"))
            # Every server connection of the proxy's (the pooled one is idle now) is terminated.
            other.sql(port, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE usename = 'app' AND pid <> pg_backend_pid()", db="postgres")
            deadline = time.monotonic() + 5
            while other.sql(port, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
                            db="postgres") != [["0"]] and time.monotonic() < deadline:
                time.sleep(0.01)
            r.send(frame(b"Q", f"UPDATE accounts SET balance = 7 WHERE id = {attempt}\0".encode()))
            frames = []
            try:
                while not frames or frames[-1][0] != "Z":
                    frames.append(r.read_frame())
            except Closed:
                pass
            errors = [parse_error(b) for t, b in frames if t == "E"]
            self.assertTrue(frames and frames[-1][0] == "Z" and
                            all(e.get("S") == "ERROR" and e.get("C", "").startswith("08")
                                for e in errors),
                            f"attempt {attempt}: the session was broken by a stale backend error: "
                            f"{errors or frames}, then closed={r.eof}\n"
                            f"proxy log:\n{proxy.log()[-3000:]}")
            if errors:  # a non-fatal 08 is tolerable; the statement then works on a retry
                frames = r.query(f"UPDATE accounts SET balance = 7 WHERE id = {attempt}")
            self.assertIn(("C", b"UPDATE 1\0"), frames)
        self.assertTrue(proxy.alive())


if __name__ == "__main__":
    unittest.main()
