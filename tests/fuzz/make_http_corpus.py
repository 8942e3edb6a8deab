#!/usr/bin/python3
"""Writes the seed corpus for tests/fuzz/http_parser_fuzz.cpp into tests/fuzz/corpus/http/.

Each input is 4 control bytes (decoded by ctx_of() in http_parser_fuzz.cpp)
followed by the byte stream. Run it again after changing the seeds; it only
(re)writes the files named here, so inputs the fuzzer added stay.
"""
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "http")

METHODS = {"GET": 0, "HEAD": 1, "CONNECT": 2, "POST": 3}
FIELDS = {64: 0, 0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 8: 6, 16: 7}
START = {8192: 0, 7: 1, 20: 2, 48: 3}
HEAD = {32768: 0, 16: 1, 60: 2, 200: 3}
CHUNK_LINE = {4096: 0, 0: 1, 3: 2, 12: 3}
TRAILER = {8192: 0, 0: 1, 4: 2, 30: 3}


def ctl(response=False, method="GET", fields=64, start=8192, head=32768, chunk_line=4096, trailer=8192, seed=0):
    return bytes([
        int(response) | METHODS[method] << 1 | FIELDS[fields] << 3,
        START[start] | HEAD[head] << 2 | CHUNK_LINE[chunk_line] << 4 | TRAILER[trailer] << 6,
        seed & 0xFF,
        (seed >> 8) & 0xFF,
    ])


def b(s):
    return s.encode("latin-1") if isinstance(s, str) else s


def req(stream, seed=0, **kw):
    return ctl(seed=seed, **kw) + b(stream)


def resp(stream, method="GET", seed=0, **kw):
    return ctl(response=True, method=method, seed=seed, **kw) + b(stream)


def get(fields="Host: a", line="GET / HTTP/1.1"):
    return line + "\r\n" + (fields + "\r\n" if fields else "") + "\r\n"


def te_req(te, body="5\r\nhello\r\n0\r\n\r\n", line="POST /up HTTP/1.1"):
    return line + "\r\nHost: a\r\nTransfer-Encoding: " + te + "\r\n\r\n" + body


def chunked_req(body):
    return te_req("chunked", body)


CHUNKED_BODY = '4;name=val\r\nWiki\r\n5 ; q="a \\"b" ;flag\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\nServer-Timing: db;dur=53\r\n\r\n'

SEEDS = {
    # ---- valid requests
    "req_get": req("GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t/1.0\r\nAccept:  */* \r\n\r\n"),
    "req_get_http10": req("GET / HTTP/1.0\r\n\r\n"),
    "req_http12_as_11": req(get(line="GET / HTTP/1.2")),
    "req_leading_empty_lines": req("\r\n\r\n" + get()),
    "req_custom_method_obs_text": req(get("Host: a\r\nX-Name: caf\xc3\xa9\tb", "PROPFIND /caf\xc3\xa9 HTTP/1.1")),
    "req_post_cl": req("POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\na=1&b=2"),
    "req_post_cl_merged": req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc"),
    "req_cl_zero_then_get": req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" + get()),
    "req_chunked_ext_trailers": req(chunked_req(CHUNKED_BODY), seed=1),
    "req_chunked_gzip": req(te_req("gzip, chunked", "3\r\nabc\r\n0\r\n\r\n")),
    "req_chunked_two_lines": req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "req_chunked_leading_zeros": req(chunked_req("00000a\r\n0123456789\r\n000\r\n\r\n")),
    "req_chunked_upper_hex": req(chunked_req("A\r\n0123456789\r\n0\r\n\r\n")),
    "req_pipelined_pair": req(get("Host: a.example", "GET /one HTTP/1.1")
                              + "POST /two HTTP/1.1\r\nHost: a.example\r\nContent-Length: 7\r\n\r\na=1&b=2", seed=2),
    "req_pipelined_three": req(get("Host: a", "GET /one HTTP/1.1") + "\r\n"
                               + chunked_req("4\r\nWiki\r\n0\r\n\r\n") + get("", "GET /four HTTP/1.0"), seed=3),
    "req_pipelined_keepalive10": req(get("Connection: keep-alive", "GET / HTTP/1.0") + get("", "GET /2 HTTP/1.0")),
    "req_connect": req("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03\x01\x00\x05hello"),
    "req_connect_ipv6": req(get("Host: [::1]:443", "CONNECT [::1]:443 HTTP/1.1")),
    "req_options_star": req(get("Host: a", "OPTIONS * HTTP/1.1")),
    "req_absolute_form": req(get("Host: a.example", "GET http://a.example/x?y HTTP/1.1")),
    "req_websocket": req("GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x85"),
    "req_upgrade_h2c_http10": req(get("Upgrade: h2c\r\nConnection: upgrade", "GET / HTTP/1.0")),
    "req_expect_continue": req("POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
    "req_expect_other": req(get("Host: a\r\nExpect: something")),
    "req_hop_by_hop": req(get("Host: a\r\nConnection: X-Foo, , keep-alive\r\nConnection: host,Content-Length\r\n"
                              "X-Foo: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nContent-Length: 0")),
    "req_host_forms": req(get("Host: [::1]:8080") + get("Host: 10.0.0.1") + get("Host: a%2Eb.example:") + get("Host:")),
    "req_empty_value_tab": req(get("Host: a\r\nX-Empty:\r\nX-Tab:\tv\t")),
    "req_fields_at_limit": req(get("Host: a\r\nB: 2"), fields=2),
    "req_start_line_at_limit": req(get("", "GET /abcdef HTTP/1.0"), start=20),
    "req_head_at_limit": req("GET / HTTP/1.0\r\nA: 1234567890123456789012345678901234567\r\n\r\n", head=60),
    "req_small_limits_chunked": req(chunked_req("1;a\r\nx\r\n0\r\nA:b\r\n\r\n"), chunk_line=3, trailer=30, seed=4),

    # ---- request rejections
    "rej_te_and_cl": req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "rej_cl_and_te": req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
    "rej_cl_duplicate_differs": req(get("Host: a\r\nContent-Length: 3\r\nContent-Length: 4", "POST / HTTP/1.1") + "abcd"),
    "rej_cl_list_differs": req(get("Host: a\r\nContent-Length: 3, 4", "POST / HTTP/1.1")),
    "rej_cl_negative": req(get("Host: a\r\nContent-Length: -1", "POST / HTTP/1.1")),
    "rej_cl_plus": req(get("Host: a\r\nContent-Length: +3", "POST / HTTP/1.1")),
    "rej_cl_hex": req(get("Host: a\r\nContent-Length: 0x10", "POST / HTTP/1.1")),
    "rej_cl_overflow": req(get("Host: a\r\nContent-Length: 9223372036854775808", "POST / HTTP/1.1")),
    "rej_cl_empty": req(get("Host: a\r\nContent-Length:", "POST / HTTP/1.1")),
    "rej_te_chunked_identity": req(te_req("chunked, identity")),
    "rej_te_xchunked": req(te_req("xchunked")),
    "rej_te_identity_chunked": req(te_req("identity, chunked")),
    "rej_te_unknown_chunked": req(te_req("foo, chunked")),
    "rej_te_chunked_twice": req(te_req("chunked, chunked")),
    "rej_te_chunked_param": req(te_req("chunked;q=1")),
    "rej_te_quoted": req(te_req('"chunked"')),
    "rej_te_gzip_only": req(te_req("gzip")),
    "rej_te_space_before_colon": req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    "rej_te_folded": req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n"),
    "rej_te_leading_space_line": req("POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n0\r\n\r\n"),
    "rej_te_vtab": req(te_req("chunked\x0b")),
    "rej_te_in_http10": req(te_req("chunked", line="POST / HTTP/1.0")),
    "rej_chunk_size_not_hex": req(chunked_req("zz\r\nhello\r\n0\r\n\r\n")),
    "rej_chunk_size_empty": req(chunked_req("\r\nhello\r\n0\r\n\r\n")),
    "rej_chunk_size_negative": req(chunked_req("-5\r\nhello\r\n0\r\n\r\n")),
    "rej_chunk_size_0x": req(chunked_req("0x5\r\nhello\r\n0\r\n\r\n")),
    "rej_chunk_size_overflow": req(chunked_req("10000000000000000\r\nx\r\n0\r\n\r\n")),
    "rej_chunk_size_space_no_ext": req(chunked_req("5 \r\nhello\r\n0\r\n\r\n")),
    "rej_chunk_ext_empty": req(chunked_req("5;\r\nhello\r\n0\r\n\r\n")),
    "rej_chunk_ext_no_value": req(chunked_req("5;a=\r\nhello\r\n0\r\n\r\n")),
    "rej_chunk_ext_open_quote": req(chunked_req('5;a="x\r\nhello\r\n0\r\n\r\n')),
    "rej_chunk_bare_lf_size": req(chunked_req("5\nhello\r\n0\r\n\r\n")),
    "rej_chunk_bare_lf_last": req(chunked_req("3\r\nabc\r\n0\n\r\n") + get()),
    "rej_chunk_bare_lf_data_end": req(chunked_req("5\r\nhello\n0\r\n\r\n")),
    "rej_chunk_bad_end": req(chunked_req("5\r\nhelloX\r\n0\r\n\r\n")),
    "rej_chunk_bare_cr": req(chunked_req("5\r\nhello\rX0\r\n\r\n")),
    "rej_chunk_line_too_long": req(chunked_req("0;abcdefghijklm=1\r\n\r\n"), chunk_line=12),
    "rej_trailer_too_large": req(chunked_req("0\r\nX-Trailer: 1\r\n\r\n"), trailer=4),
    "rej_trailer_space_before_colon": req(chunked_req("0\r\nX-T : 1\r\n\r\n")),
    "rej_trailer_obs_fold": req(chunked_req("0\r\nX-T: 1\r\n 2\r\n\r\n")),
    "rej_trailer_nul": req(chunked_req("0\r\nX-T: a\x00b\r\n\r\n")),
    "rej_body_truncated_cl": req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"),
    "rej_body_truncated_chunked": req(chunked_req("5\r\nhel")),
    "rej_space_before_colon": req(get("Host: a\r\nX-A : 1")),
    "rej_obs_fold": req(get("Host: a\r\nX-A: 1\r\n  2")),
    "rej_ws_before_first_field": req("GET / HTTP/1.1\r\n\tHost: a\r\n\r\n"),
    "rej_cr_in_value": req(get("Host: a\r\nX-A: 1\r2")),
    "rej_lf_in_value": req(get("Host: a\r\nX-A: 1\n2")),
    "rej_nul_in_value": req(get("Host: a\r\nX-A: 1\x002")),
    "rej_del_in_value": req(get("Host: a\r\nX-A: 1\x7f")),
    "rej_bad_field_name": req(get("Host: a\r\nX(A): 1")),
    "rej_no_colon": req(get("Host: a\r\nX-A")),
    "rej_bare_lf_field": req("GET / HTTP/1.1\r\nHost: a\n\r\n"),
    "rej_bare_lf_end": req("GET / HTTP/1.1\r\nHost: a\r\n\n"),
    "rej_bare_lf_start_line": req("GET / HTTP/1.1\nHost: a\r\n\r\n"),
    "rej_bare_cr_start_line": req("GET / HTTP/1.1\rHost: a\r\n\r\n"),
    "rej_missing_host": req(get("")),
    "rej_duplicate_host": req(get("Host: a\r\nHost: a")),
    "rej_bad_host": req(get("Host: a/b")),
    "rej_bad_host_ipv6": req(get("Host: [::1")),
    "rej_start_line_too_long": req(get("Host: a", "GET /abcdefghijklmnop HTTP/1.1"), start=20),
    "rej_start_line_tiny": req(get(), start=7),
    "rej_head_too_large": req(get("Host: a\r\nX-Long: " + "v" * 50), head=60),
    "rej_head_too_large_tiny": req(get(), head=16),
    "rej_too_many_fields": req(get("Host: a\r\nA: 1\r\nB: 2"), fields=2),
    "rej_no_fields_allowed": req(get(), fields=0),
    "rej_version_505": req(get(line="GET / HTTP/2.0")),
    "rej_version_lowercase": req(get(line="GET / http/1.1")),
    "rej_version_short": req(get(line="GET / HTTP/1")),
    "rej_version_long": req(get(line="GET / HTTP/1.10")),
    "rej_method_bad_char": req(get(line="G@T / HTTP/1.1")),
    "rej_double_space": req(get(line="GET  / HTTP/1.1")),
    "rej_target_form": req(get(line="GET a HTTP/1.1")),
    "rej_star_not_options": req(get(line="GET * HTTP/1.1")),
    "rej_connect_origin_form": req(get(line="CONNECT /x HTTP/1.1")),
    "rej_target_ctl": req(get(line="GET /a\x01b HTTP/1.1")),
    "rej_bad_connection": req(get("Host: a\r\nConnection: a b")),
    "rej_too_many_connection_options": req(get("Host: a\r\nConnection: " + ",".join("o%d" % i for i in range(17)))),
    "rej_pipelined_smuggle": req(get("Host: a", "GET /ok HTTP/1.1")
                                 + "POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + "0\r\n\r\n" + get("Host: a", "GET /hidden HTTP/1.1"), seed=5),

    # ---- valid responses
    "resp_cl": resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    "resp_chunked_trailers": resp("HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + CHUNKED_BODY, seed=6),
    "resp_until_close": resp("HTTP/1.0 200 OK\r\n\r\nuntil\r\nclose"),
    "resp_te_not_chunked_until_close": resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, br\r\n\r\nraw bytes"),
    "resp_204_then_200": resp("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
    "resp_304": resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: \"x\"\r\n\r\n"),
    "resp_101_websocket": resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"),
    "resp_100_then_200": resp("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", method="POST"),
    "resp_head": resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                      method="HEAD"),
    "resp_connect_200": resp("HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01", method="CONNECT"),
    "resp_connect_204": resp("HTTP/1.1 204 No Content\r\n\r\n\x16\x03\x01\x00\x05hello", method="CONNECT"),
    "resp_connect_407": resp("HTTP/1.1 407 Proxy Auth\r\nContent-Length: 3\r\n\r\nabc", method="CONNECT"),
    "resp_no_reason": resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"),
    "resp_keepalive10": resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"
                             "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    "resp_pipelined_mix": resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                               "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                               "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\nbye", seed=7),
    "resp_te_unknown_passthrough": resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n"),

    # ---- response rejections (the proxy answers 502)
    "resp_rej_status_4digits": resp("HTTP/1.1 2000 OK\r\n\r\n"),
    "resp_rej_status_low": resp("HTTP/1.1 099 X\r\n\r\n"),
    "resp_rej_status_high": resp("HTTP/1.1 600 X\r\n\r\n"),
    "resp_rej_bare_lf": resp("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"),
    "resp_rej_te_and_cl": resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
    "resp_rej_te_http10": resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "resp_rej_version_2": resp("HTTP/2.0 200 OK\r\n\r\n"),
    "resp_rej_bad_chunk": resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n"),
    "resp_rej_reason_ctl": resp("HTTP/1.1 200 O\x01K\r\n\r\n"),
    "resp_rej_status_line_too_long": resp("HTTP/1.1 200 A very long reason phrase\r\n\r\n", start=20),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()
