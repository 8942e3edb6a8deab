#!/usr/bin/python3
"""Writes the config fuzz target's seeds into tests/fuzz/corpus/config: the demo
config, one config per listener kind and feature group, and broken variants of
each (cut short, a wrong type, an unknown key). Run from the repository root."""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus", "config")

UP = [{"name": "app", "pools": [{"id": "p", "method": "chash",
                                 "hosts": [{"id": "a", "address": "127.0.0.1:8081", "weight": 2},
                                           {"id": "b", "address": "127.0.0.1:8082"}]},
                                {"id": "dr", "priority": 1, "hosts": [{"id": "c", "address": "127.0.0.1:8083"}]}],
       "health": {"type": "http", "path": "/health", "host": "api.example.com", "interval_ms": 1000},
       "keepalive": {"max_idle": 8}, "retry": {"on": ["error", "503"], "tries": 2}},
      {"name": "pre", "pools": [{"id": "p", "hosts": [{"id": "x", "address": "127.0.0.1:8084"}]}]}]

SEEDS = {
    "tcp": {"workers": 2, "shm": {"name": "gw"}, "listeners": [
        {"name": "l4", "listen": "127.0.0.1:7000", "protocol": "tcp", "upstream": "app",
         "limit_conn": {"key": "ip", "max": 10}}], "upstreams": UP},
    "frame": {"workers": "auto", "listeners": [
        {"name": "dev", "listen": "127.0.0.1:7100", "protocol": "frame", "upstream": "app", "hash_key": "frame",
         "frame": {"header_size": 6, "length_offset": 4, "length_size": 2, "byte_order": "big",
                   "key": "/device/id", "mode": "frame", "max_links": 4}}], "upstreams": UP},
    "http": {"event_engine": "io_uring", "listeners": [
        {"name": "web", "listen": "127.0.0.1:7080", "protocol": "http",
         "access_log": {"path": "/tmp/a.log", "format": "json"},
         "routes": [{"name": "v1", "host": "*.example.com", "path": "/v1/", "upstream": "app",
                     "hash_key": "cookie:sid", "limit_req": {"key": "ip", "rate": 10, "burst": 5},
                     "auth": {"type": "key-auth", "header": "apikey"},
                     "rules": [{"id": "gray", "upstream": "pre", "ip": ["10.0.0.0/8"], "percent": 5}]},
                    {"name": "rest", "upstream": "app"}]}],
        "consumers": [{"name": "alice", "key": "k1"}], "upstreams": UP},
    "admin_cluster": {"admin": {"listen": "127.0.0.1:9900", "token": "fuzz-seed-token-0123456789"},
                      "cluster": {"etcd": ["http://127.0.0.1:2379"], "prefix": "/gw/"},
                      "listeners": [{"name": "l4", "listen": "127.0.0.1:7000", "upstream": "app"}],
                      "upstreams": UP},
}


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(ROOT, "conf", "gateway.json"), "rb") as f:
        write("gateway", f.read())
    for name, cfg in SEEDS.items():
        text = json.dumps(cfg, indent=1).encode()
        write(name, text)
        write(name + "-cut", text[: len(text) // 2])
        write(name + "-type", text.replace(b'"listeners"', b'"listeners": 5, "x"', 1))
        write(name + "-unknown", text.replace(b"{", b'{"nope": 1, ', 1))


if __name__ == "__main__":
    main()
