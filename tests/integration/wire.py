"""A tiny PostgreSQL frontend over a raw socket, for tests that need exact control of the
bytes and of how they are cut into writes (test_bad_input, test_clients)."""

import base64
import hashlib
import hmac
import os
import socket
import struct
import time


def frame(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


def startup_packet(params, code=196608):
    body = struct.pack("!I", code) + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                              for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def parse_error(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


class Closed(Exception):
    pass


class Raw:
    """One raw connection to the proxy."""

    def __init__(self, port, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            raise Closed()
        self.buf += d

    def read_bytes(self, n, timeout=5):
        while len(self.buf) < n:
            self._fill(timeout)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout=5):
        """(type, body); raises Closed at EOF and socket.timeout when nothing comes."""
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= n + 1:
                    t, body = chr(self.buf[0]), self.buf[5:n + 1]
                    self.buf = self.buf[n + 1:]
                    return t, body
            self._fill(timeout)

    def read_until_close(self, timeout=5):
        """Frames until the proxy closes the connection; fails the test on a hang."""
        frames, deadline = [], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"proxy did not close the connection within {timeout}s; "
                                     f"frames so far: {frames}")
            try:
                frames.append(self.read_frame(left))
            except Closed:
                return frames
            except socket.timeout:
                continue

    def read_until(self, types_, timeout=5):
        frames = []
        while True:
            f = self.read_frame(timeout)
            frames.append(f)
            if f[0] in types_:
                return frames

    # -- authentication

    def start(self, user="app", database="app", **extra):
        self.send(startup_packet({"user": user, "database": database, **extra}))

    def scram(self, password):
        """Answers AuthenticationSASL; returns the frames after the client-final-message."""
        t, body = self.read_frame()
        assert (t, struct.unpack("!I", body[:4])[0]) == ("R", 10), (t, body)
        assert b"SCRAM-SHA-256" in body
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={cnonce}"
        first = ("n,," + first_bare).encode()
        self.send(frame(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        t, body = self.read_frame()
        assert (t, struct.unpack("!I", body[:4])[0]) == ("R", 11), (t, body)
        server_first = body[4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        assert attrs["r"].startswith(cnonce)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        final_wo_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{final_wo_proof}".encode()
        sig = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        self.send(frame(b"p", f"{final_wo_proof},p={base64.b64encode(proof).decode()}".encode()))
        self._server_key = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth_message,
                                       "sha256")

    def md5(self, user, password):
        t, body = self.read_frame()
        assert (t, struct.unpack("!I", body[:4])[0]) == ("R", 5), (t, body)
        inner = hashlib.md5((password + user).encode()).hexdigest()
        h = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
        self.send(frame(b"p", h.encode() + b"\0"))

    def login(self, user="app", password="app-secret", database="app", method="scram"):
        """Full startup; returns the frames up to ReadyForQuery."""
        self.start(user, database)
        if method == "scram":
            self.scram(password)
        else:
            self.md5(user, password)
        frames = self.read_until("ZE")
        assert frames[-1][0] == "Z", frames
        assert ("R", struct.pack("!I", 0)) in frames, frames
        return frames

    def query(self, sql):
        self.send(frame(b"Q", sql.encode() + b"\0"))
        return self.read_until("Z")
