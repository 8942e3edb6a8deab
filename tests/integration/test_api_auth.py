#!/usr/bin/python3
"""Auth per route (issue 6): key-auth, basic-auth, jwt (HS256, RS256), allow lists.

Accept and reject paths of each method with the WWW-Authenticate of each;
key-auth consumers from the config and added/removed live with gwctl
(status shows names, never keys; events; persisted as SHA-256 hashes across
a restart whose shm segment is gone); 403 for a consumer outside an allow
list; the consumer name reaching the backend in X-Consumer-Username and a
client's spoofed one always removed; basic-auth with bcrypt and SHA-crypt
and the worker's verification cache on a keep-alive connection; jwt tokens
made here with hmac/hashlib (HS256) and the openssl CLI (RS256): good,
bad signature, expired, not yet valid, alg none, missing; limit_req keyed
by the consumer.
"""

import base64
import ctypes
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool, upstream  # noqa: E402
from httpbackend import HttpBackend, Reader, read_response  # noqa: E402

_crypt = ctypes.CDLL("libcrypt.so.1")
_crypt.crypt.restype = ctypes.c_char_p
_crypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_crypt.crypt_gensalt.restype = ctypes.c_char_p
_crypt.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]


def crypt_hash(password, prefix, cost):
    salt = _crypt.crypt_gensalt(prefix.encode(), cost, None, 0)
    return _crypt.crypt(password.encode(), salt).decode()


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256(claims, secret, header=None):
    h = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    c = b64url(claims if isinstance(claims, bytes) else json.dumps(claims).encode())  # bytes: as they are
    sig = hmac.new(secret.encode(), f"{h}.{c}".encode(), hashlib.sha256).digest()
    return f"{h}.{c}.{b64url(sig)}"


def openssl(*args, data=None):
    r = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=T(30))
    if r.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {r.stderr.decode()}")
    return r.stdout


def rs256(claims, key_path):
    h = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    c = b64url(json.dumps(claims).encode())
    sig = openssl("dgst", "-sha256", "-sign", key_path, data=f"{h}.{c}".encode())
    return f"{h}.{c}.{b64url(sig)}"


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection((gwtest.LOOPBACK, port), timeout=T(10))
        self.rd = Reader(self.sock)

    def get(self, path, headers=(), method="GET"):
        h = "".join(f"{n}: {v}\r\n" for n, v in headers)
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: auth.test\r\n{h}\r\n".encode())
        r = read_response(self.rd, method)
        if r is None:
            raise AssertionError("gw closed the connection")
        return r

    def close(self):
        self.sock.close()


def consumer_seen(r):
    """X-Consumer-Username values the backend received (from its JSON echo)."""
    return [v for n, v in r.json()["headers"] if n.lower() == "x-consumer-username"]


SECRET = "a-very-secret-hs256-key-of-32-bytes"


class ApiAuthTest(GwTestCase):
    needs = ("gwd", "gwctl")

    def setUp(self):
        super().setUp()
        self.be = HttpBackend("auth")
        self.addCleanup(self.be.stop)

    def config(self, routes, consumers=None, workers=1):
        shm_name = self.shm_name()
        cfg = {
            "workers": workers, "log_file": "", "log_level": "info", "shutdown_timeout_ms": 3000,
            "shm": {"name": shm_name, "max_upstreams": 4, "max_pools": 4, "max_hosts": 8, "max_limit_keys": 1024},
            "state_file": os.path.join(self.tmp, f"{shm_name}.state.json"),
            "listeners": [{"name": "web", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "http",
                           "routes": routes}],
            "upstreams": [upstream("app", [pool("p", [host("h", self.be.address)])])],
        }
        if consumers is not None:
            cfg["consumers"] = consumers
        return cfg

    def guard(self, gw):
        tot = {}
        for w in gw.status()["workers"]:
            for k, v in w["guard"].items():
                tot[k] = tot.get(k, 0) + v
        return tot

    def assert401(self, r, challenge):
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.header("WWW-Authenticate"), challenge)
        self.assertEqual(r.conn_tokens(), ["keep-alive"])

    # ------------------------------------------------------------------ key-auth

    def test_key_auth_consumers_live_and_persisted(self):
        routes = [{"name": "key", "path": "/key/", "upstream": "app", "auth": {"type": "key-auth"}},
                  {"name": "q", "path": "/q/", "upstream": "app", "auth": {"type": "key-auth", "query": "api_key"}},
                  {"name": "only", "path": "/only/", "upstream": "app", "auth": {"type": "key-auth", "allow": ["bob"]}},
                  {"name": "open", "path": "/", "upstream": "app"}]
        gw = self.gateway(self.config(routes, consumers=[{"name": "alice", "key": "alice-key-0001"}]))
        c = Client(gw.port)
        key_challenge = 'Key realm="gw"'
        self.assert401(c.get("/key/"), key_challenge)
        self.assert401(c.get("/key/", [("apikey", "wrong")]), key_challenge)
        self.assert401(c.get("/key/", [("apikey", "alice-key-000")]), key_challenge)  # a prefix is not the key
        r = c.get("/key/", [("apikey", "alice-key-0001"), ("X-Consumer-Username", "admin")])
        self.assertEqual(r.status, 200)
        self.assertEqual(consumer_seen(r), ["alice"], "the spoofed X-Consumer-Username must be replaced")
        r = c.get("/q/x?a=1&api_key=alice-key-0001")
        self.assertEqual(r.status, 200)
        self.assertEqual(consumer_seen(r), ["alice"])
        self.assert401(c.get("/q/x?api_key=nope"), key_challenge)
        # An open route never passes a client's X-Consumer-Username on.
        r = c.get("/", [("X-Consumer-Username", "admin"), ("x-consumer-username", "root")])
        self.assertEqual(r.status, 200)
        self.assertEqual(consumer_seen(r), [])
        # allow list: alice is known but not allowed
        r = c.get("/only/", [("apikey", "alice-key-0001")])
        self.assertEqual(r.status, 403)
        self.assertIsNone(r.header("WWW-Authenticate"))

        # Live: add bob, remove alice.
        out = self.assertGwctlOk(gw, "add", "consumer", "bob", "--key", "bob-key-0002")
        self.assertIn("ok: add consumer bob", out)
        self.assertEqual(c.get("/only/", [("apikey", "bob-key-0002")]).status, 200)
        r = c.get("/key/", [("apikey", "bob-key-0002")])
        self.assertEqual(consumer_seen(r), ["bob"])
        keyfile = os.path.join(self.tmp, "carol.key")
        with open(keyfile, "w") as f:
            f.write("carol-key-0003\n")
        self.assertGwctlOk(gw, "add", "consumer", "carol", "--key-file", keyfile)
        self.assertEqual(consumer_seen(c.get("/key/", [("apikey", "carol-key-0003")])), ["carol"])
        self.assertGwctlOk(gw, "remove", "consumer", "alice")
        self.assert401(c.get("/key/", [("apikey", "alice-key-0001")]), key_challenge)
        st = gw.status()
        self.assertEqual([x["name"] for x in st["consumers"]], ["bob", "carol"])
        rc, text, _ = gw.gwctl("status")
        self.assertIn("CONSUMERS", text)
        for secret in ("bob-key-0002", "carol-key-0003", "alice-key-0001"):
            self.assertNotIn(secret, text + json.dumps(st))
        self.assertEvent(gw, r"^consumer_changed bob added$")
        self.assertEvent(gw, r"^consumer_changed alice removed$")
        # Bad input changes nothing.
        self.assertGwctlError(gw, "add", "consumer", "bob", "--key", "other-key")
        self.assertGwctlError(gw, "add", "consumer", "dave", "--key", "bob-key-0002")
        self.assertGwctlError(gw, "add", "consumer", "bad/name", "--key", "k")
        self.assertGwctlError(gw, "add", "consumer", "dave", "--key", "has space")
        self.assertGwctlError(gw, "add", "consumer", "dave")
        self.assertGwctlError(gw, "remove", "consumer", "nobody")
        c.close()

        # The state file holds hashes only; a restart without the segment (a
        # reboot) keeps bob and carol, and alice stays removed although the
        # config lists her.
        with open(gw.config["state_file"]) as f:
            state = f.read()
        self.assertNotIn("bob-key-0002", state)
        self.assertIn(hashlib.sha256(b"bob-key-0002").hexdigest(), state)
        gw.stop()
        gwtest.remove_shm(gw.shm)
        gw.start()
        c = Client(gw.port)
        self.assertEqual(consumer_seen(c.get("/key/", [("apikey", "bob-key-0002")])), ["bob"])
        self.assertEqual(c.get("/key/", [("apikey", "carol-key-0003")]).status, 200)
        self.assert401(c.get("/key/", [("apikey", "alice-key-0001")]), key_challenge)
        g = self.guard(gw)
        self.assertEqual(g["auth_ok"], 2)
        self.assertEqual(g["auth_failed"], 1)
        c.close()

    # ------------------------------------------------------------------ basic-auth

    def test_basic_auth_bcrypt_sha_crypt_and_cache(self):
        users = {"alice": crypt_hash("wonderland", "$2b$", 10), "bob": crypt_hash("builder:42", "$6$", 5000)}
        routes = [{"name": "b", "upstream": "app", "auth": {"type": "basic-auth", "users": users}}]
        gw = self.gateway(self.config(routes))
        c = Client(gw.port)
        challenge = 'Basic realm="gw", charset="UTF-8"'

        def basic(u, p):
            return [("Authorization", "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode())]
        self.assert401(c.get("/"), challenge)
        self.assert401(c.get("/", basic("alice", "wrong")), challenge)
        self.assert401(c.get("/", basic("mallory", "wonderland")), challenge)
        self.assert401(c.get("/", [("Authorization", "Basic !!!")]), challenge)
        self.assert401(c.get("/", [("Authorization", "Bearer abc")]), challenge)
        r = c.get("/", basic("alice", "wonderland") + [("X-Consumer-Username", "bob")])
        self.assertEqual(r.status, 200)
        self.assertEqual(consumer_seen(r), ["alice"])
        self.assertEqual(consumer_seen(c.get("/", basic("bob", "builder:42"))), ["bob"])
        # A keep-alive client pays bcrypt once: the next 30 requests are answered from the cache.
        t0 = time.monotonic()
        for _ in range(30):
            self.assertEqual(c.get("/", basic("alice", "wonderland")).status, 200)
        took = time.monotonic() - t0
        g = self.guard(gw)
        self.assertEqual(g["basic_cache_hits"], 30)
        self.assertEqual(g["auth_failed"], 5)
        self.assertEqual(g["auth_ok"], 32)
        sys.stderr.write(f"[basic-auth] 30 cached verifications in {took * 1000:.0f} ms\n")
        c.close()

    # ------------------------------------------------------------------ jwt

    def test_jwt_hs256_and_consumer_rate_limit(self):
        routes = [{"name": "j", "upstream": "app", "auth": {"type": "jwt", "algorithm": "HS256", "secret": SECRET},
                   "limit_req": {"key": "consumer", "rate": 0.1, "burst": 1}},
                  {"name": "c", "path": "/cookie/", "upstream": "app",
                   "auth": {"type": "jwt", "algorithm": "HS256", "secret": SECRET, "cookie": "jwt", "leeway_s": 0}}]
        gw = self.gateway(self.config(routes))
        c = Client(gw.port)
        now = int(time.time())

        def bearer(tok):
            return [("Authorization", f"Bearer {tok}")]
        self.assert401(c.get("/"), 'Bearer realm="gw"')
        # Why a token was refused is for the log, not for the client (RFC 6750
        # 3.1 needs no more than "invalid_token").
        gwtest.wait_until(lambda: re.search(r"warn worker \d+\[\d+\]: auth: 401 to \S+ on route web/j: jwt missing",
                                            gw.log_text()), T(5), msg="the refusal logged")
        invalid = 'Bearer realm="gw", error="invalid_token"'
        good = hs256({"sub": "alice", "exp": now + 300}, SECRET)
        r = c.get("/", bearer(good) + [("X-Consumer-Username", "root")])
        self.assertEqual(r.status, 200)
        self.assertEqual(consumer_seen(r), ["alice"])
        tampered = good[:-2] + ("AA" if good[-2:] != "AA" else "BA")
        self.assert401(c.get("/", bearer(tampered)), invalid)
        self.assert401(c.get("/", bearer(hs256({"sub": "alice"}, "another-secret-of-enough-length"))),
                       invalid)
        self.assert401(c.get("/", bearer(hs256({"sub": "alice", "exp": now - 600}, SECRET))), invalid)
        self.assert401(c.get("/", bearer(hs256({"sub": "alice", "nbf": now + 600}, SECRET))),
                       invalid)
        none = b64url(b'{"alg":"none"}') + "." + b64url(json.dumps({"sub": "alice"}).encode()) + "."
        self.assert401(c.get("/", bearer(none)), invalid)
        self.assert401(c.get("/", bearer(hs256({"sub": "alice"}, SECRET, header={"alg": "none"}))),
                       invalid)
        # "sub" named twice: gw's parser would read the first, the host's (Python's json) the
        # last, so a host reading the token would see another consumer (RFC 7519 4): refused.
        self.assert401(c.get("/", bearer(hs256(b'{"sub":"alice","sub":"root"}', SECRET))), invalid)
        # The scheme is case-insensitive (RFC 7235 2.1).
        self.assertEqual(consumer_seen(c.get("/", [("Authorization", f"bearer {hs256({'sub': 'dave'}, SECRET)}")])),
                         ["dave"])
        # Within the leeway (60 s by default) an expired token still passes.
        self.assertEqual(c.get("/", bearer(hs256({"sub": "bob", "exp": now - 20}, SECRET))).status, 200)
        # limit_req keyed by the consumer: alice had 1 request, burst 1 lets one more, then 429; bob has his own.
        self.assertEqual(c.get("/", bearer(good)).status, 200)
        r = c.get("/", bearer(good))
        self.assertEqual(r.status, 429)
        self.assertIn(r.header("Retry-After"), ("9", "10"))
        self.assertEqual(c.get("/", bearer(hs256({"sub": "bob"}, SECRET))).status, 200)
        # A token from a cookie, no leeway.
        r = c.get("/cookie/", [("Cookie", f"a=1; jwt={hs256({'sub': 'carol', 'exp': now + 60}, SECRET)}")])
        self.assertEqual(consumer_seen(r), ["carol"])
        self.assert401(c.get("/cookie/", [("Cookie", f"jwt={hs256({'sub': 'carol', 'exp': now - 5}, SECRET)}")]),
                       invalid)
        c.close()

    def test_routes_match_the_normalised_path(self):
        """A route's auth cannot be stepped around by spelling its path another
        way: routes match the path with %XX decoded, slashes merged and dot
        segments resolved (nginx's $uri), so each of these reaches /admin/'s
        key-auth, while the target goes to the host as sent. A path that climbs
        above the root, or a bad %-escape, is a 400."""
        routes = [{"name": "adm", "path": "/admin/", "upstream": "app", "auth": {"type": "key-auth"}},
                  {"name": "pct", "path": "/100%/", "upstream": "app", "auth": {"type": "key-auth"}},
                  {"name": "ex", "path": "/exact/", "upstream": "app", "auth": {"type": "key-auth"}},
                  {"name": "ex2", "path": "/exact", "upstream": "app"},
                  {"name": "open", "path": "/", "upstream": "app"}]
        gw = self.gateway(self.config(routes, consumers=[{"name": "alice", "key": "alice-key-0001"}]))
        c = Client(gw.port)
        for p in ("/admin/x", "/x/../admin/x", "//admin/x", "/%61dmin/x", "/./admin/x", "/admin/./x",
                  "/x/..%2Fadmin/x", "/admin//x?q=1"):
            self.assert401(c.get(p), 'Key realm="gw"')
            r = c.get(p, [("apikey", "alice-key-0001")])
            self.assertEqual(r.status, 200, p)
            self.assertEqual(r.json()["target"], p, "the target is forwarded as sent")
        self.assertEqual(c.get("/x/y/../../z").status, 200)
        # The route's path without its final '/' is a 301 to the route (nginx's
        # auto_redirect), the query kept: routed to "/", a host that serves
        # "/admin" as "/admin/" would have served it without the key.
        for p, loc in (("/admin", "/admin/"), ("/admin?page=users", "/admin/?page=users"), ("//admin", "/admin/"),
                       ("/%61dmin", "/admin/"), ("/x/../admin", "/admin/"), ("/100%25", "/100%25/")):
            for key in ([], [("apikey", "alice-key-0001")]):
                r = c.get(p, key)
                self.assertEqual((r.status, r.header("Location")), (301, loc), p)
        self.assertEqual(c.get("/admin", method="HEAD").status, 301)
        # ...unless a route is that path itself.
        r = c.get("/exact")
        self.assertEqual((r.status, r.json()["target"]), (200, "/exact"))
        self.assertEqual(c.get("/exact/").status, 401)
        c.close()
        for p in ("/..", "/a/../../admin/x", "/%zz", "/a%00b", "/a%2"):
            c = Client(gw.port)
            self.assertEqual(c.get(p).status, 400, p)
            c.close()

    def test_a_second_credential_is_refused(self):
        """gw checks the first credential; a host that reads another one would act
        on what gw never checked, so two Authorization fields, two key headers, a
        key argument or cookie given twice get 400 (nginx refuses a second
        Authorization too)."""
        routes = [{"name": "k", "path": "/k/", "upstream": "app", "auth": {"type": "key-auth"}},
                  {"name": "q", "path": "/q/", "upstream": "app", "auth": {"type": "key-auth", "query": "key"}},
                  {"name": "j", "path": "/j/", "upstream": "app",
                   "auth": {"type": "jwt", "algorithm": "HS256", "secret": SECRET}}]
        gw = self.gateway(self.config(routes, consumers=[{"name": "alice", "key": "alice-key-0001"}]))
        c = Client(gw.port)
        self.assertEqual(c.get("/k/", [("apikey", "alice-key-0001")]).status, 200)
        self.assertEqual(c.get("/k/", [("apikey", "alice-key-0001"), ("APIKEY", "evil")]).status, 400)
        self.assertEqual(c.get("/q/?key=alice-key-0001").status, 200)
        self.assertEqual(c.get("/q/?key=alice-key-0001&key=evil").status, 400)
        # Names are compared as the host decodes them: "k%65y" is a second "key"
        # (it was let through), and the key is found under it too; "k+ey" is
        # "k ey"; a malformed escape in a name, which hosts read differently, is
        # refused as a possible second key.
        self.assertEqual(c.get("/q/?key=alice-key-0001&k%65y=evil").status, 400)
        self.assertEqual(c.get("/q/?k%65y=alice-key-0001").status, 200)
        self.assertEqual(c.get("/q/?key=alice-key-0001&k+ey=x").status, 200)
        self.assertEqual(c.get("/q/?key=alice-key-0001&ke%y=x").status, 400)
        self.assertEqual(c.get("/q/?key=alice-key-0001&x=1%").status, 200)  # a value is not a name
        good = hs256({"sub": "alice", "exp": time.time() + 600}, SECRET)
        forged = hs256({"sub": "root", "exp": time.time() + 600}, "x" * 32)
        self.assertEqual(c.get("/j/", [("Authorization", "Bearer " + good)]).status, 200)
        r = c.get("/j/", [("Authorization", "Bearer " + good), ("Authorization", "Bearer " + forged)])
        self.assertEqual(r.status, 400)
        c.close()

    def test_a_second_credential_as_the_host_reads_names_is_refused(self):
        """A cookie name with blanks around it ("jwt =B": Go, Node and Python
        trim them), a cookie or argument name as PHP mangles it ("access.token",
        "%20key"), an argument behind ';' (Rack 2, older Python): each is the
        credential's carrier for some host, so a second one is refused (400)."""
        routes = [{"name": "q", "path": "/q/", "upstream": "app", "auth": {"type": "key-auth", "query": "api_key"}},
                  {"name": "c", "path": "/c/", "upstream": "app",
                   "auth": {"type": "jwt", "algorithm": "HS256", "secret": SECRET, "cookie": "access_token"}}]
        gw = self.gateway(self.config(routes, consumers=[{"name": "alice", "key": "alice-key-0001"}]))
        c = Client(gw.port)
        self.assertEqual(c.get("/q/?api_key=alice-key-0001&a=1;b=2").status, 200)
        for q in ("api.key=evil", "%20api_key=evil", "api_key[]=evil"):
            self.assertEqual(c.get(f"/q/?api_key=alice-key-0001&{q}").status, 400, q)
        self.assertEqual(c.get("/q/?x=1;api_key=evil&api_key=alice-key-0001").status, 400)
        good = hs256({"sub": "alice", "exp": time.time() + 600}, SECRET)
        forged = hs256({"sub": "root", "exp": time.time() + 600}, "x" * 32)
        self.assertEqual(c.get("/c/", [("Cookie", f"access_token={good}; a.b=1")]).status, 200)
        for second in ("access_token =", " access_token=", "access.token=", "access%5Ftoken="):
            r = c.get("/c/", [("Cookie", f"access_token={good}; {second}{forged}")])
            self.assertEqual(r.status, 400, second)
        c.close()

    def test_a_second_key_header_spelt_with_underscores_is_refused(self):
        """With http.underscores_in_headers, X_Api_Key reaches a CGI/WSGI/PHP
        host as the same HTTP_X_API_KEY as X-Api-Key: it is the key header
        twice, and refused as such (400). Without the option gw drops the
        underscore field (nginx's default), so it is no second key."""
        routes = [{"name": "k", "path": "/k/", "upstream": "app", "auth": {"type": "key-auth", "header": "X-Api-Key"}}]
        cfg = self.config(routes, consumers=[{"name": "alice", "key": "alice-key-0001"}])
        cfg["listeners"][0]["http"] = {"underscores_in_headers": True}
        gw = self.gateway(cfg)
        c = Client(gw.port)
        self.assertEqual(c.get("/k/", [("X-Api-Key", "alice-key-0001")]).status, 200)
        self.assertEqual(c.get("/k/", [("X-Api-Key", "alice-key-0001"), ("X_Api_Key", "evil")]).status, 400)
        self.assertEqual(c.get("/k/", [("x_api_key", "evil"), ("X-Api-Key", "alice-key-0001")]).status, 400)
        c.close()
        gw.stop()
        cfg = self.config(routes, consumers=[{"name": "alice", "key": "alice-key-0001"}])
        gw = self.gateway(cfg)
        c = Client(gw.port)
        r = c.get("/k/", [("X-Api-Key", "alice-key-0001"), ("X_Api_Key", "evil")])
        self.assertEqual(r.status, 200)
        self.assertEqual([v for n, v in r.json()["headers"] if "api" in n.lower()], ["alice-key-0001"])
        c.close()

    def test_limit_req_by_ip_comes_before_basic_auth(self):
        """A client sending wrong passwords is limited before each one costs a
        crypt() (nginx's limit_req runs in the preaccess phase, auth_basic in
        access): with rate 1/s and burst 1, 10 pipelined bad requests get 401,
        401 and then 429, and only those two were checked."""
        users = {"alice": crypt_hash("wonderland", "$2b$", 8)}
        routes = [{"name": "b", "path": "/b/", "upstream": "app", "auth": {"type": "basic-auth", "users": users},
                   "limit_req": {"key": "ip", "rate": 1, "burst": 1}}]
        gw = self.gateway(self.config(routes))
        bad = base64.b64encode(b"alice:nope").decode()
        with socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(20)) as s:
            s.sendall(f"GET /b/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {bad}\r\n\r\n".encode() * 10)
            rd = Reader(s)
            statuses = [read_response(rd).status for _ in range(10)]
        self.assertEqual(statuses, [401, 401] + [429] * 8)
        self.assertEqual(self.guard(gw)["auth_failed"], 2)

    def test_jwt_rs256_from_openssl(self):
        key, pub, other = (os.path.join(self.tmp, n) for n in ("key.pem", "pub.pem", "other.pem"))
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", other)
        openssl("pkey", "-in", key, "-pubout", "-out", pub)
        routes = [{"name": "r", "upstream": "app",
                   "auth": {"type": "jwt", "algorithm": "RS256", "public_key": "@" + pub, "issuer": "idp",
                            "audience": "gw", "consumer_claim": "client_id", "allow": ["svc-a"]}}]
        gw = self.gateway(self.config(routes))
        c = Client(gw.port)
        now = int(time.time())
        claims = {"client_id": "svc-a", "iss": "idp", "aud": ["x", "gw"], "exp": now + 120}
        token = rs256(claims, key)
        r = c.get("/", [("Authorization", "Bearer " + token)])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(consumer_seen(r), ["svc-a"])
        # The same token again skips the RSA operation: answered from the worker's cache.
        for _ in range(5):
            r = c.get("/", [("Authorization", "Bearer " + token)])
            self.assertEqual(r.status, 200, r)
            self.assertEqual(consumer_seen(r), ["svc-a"])
        self.assertEqual(self.guard(gw)["jwt_cache_hits"], 5)
        invalid = 'Bearer realm="gw", error="invalid_token"'
        self.assert401(c.get("/", [("Authorization", "Bearer " + rs256(claims, other))]), invalid)
        self.assert401(c.get("/", [("Authorization", "Bearer " + rs256(dict(claims, iss="evil"), key))]),
                       invalid)
        self.assert401(c.get("/", [("Authorization", "Bearer " + rs256(dict(claims, aud="web"), key))]),
                       invalid)
        # HS256 "signed" with the public key's PEM: algorithm confusion, refused.
        with open(pub) as f:
            pem = f.read()
        self.assert401(c.get("/", [("Authorization", "Bearer " + hs256(claims, pem))]), invalid)
        # Authenticated but not allowed: 403.
        self.assertEqual(c.get("/", [("Authorization", "Bearer " + rs256(dict(claims, client_id="svc-b"), key))]).status,
                         403)
        c.close()

    def test_config_errors(self):
        cfg = self.config([{"name": "a", "upstream": "app", "auth": {"type": "basic-auth", "users": {"x": "plain"}}},
                           {"name": "b", "path": "/b", "upstream": "app",
                            "auth": {"type": "jwt", "algorithm": "RS256", "public_key": "not a key"}}],
                          consumers=[{"name": "x", "key": ""}])
        self.assertConfigErrors(cfg, ["listeners[0].routes[0].auth.users.x", "listeners[0].routes[1].auth.public_key",
                                      "consumers[0].key"])


if __name__ == "__main__":
    gwtest.main()
