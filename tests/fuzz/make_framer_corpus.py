#!/usr/bin/python3
"""Writes the seed corpus for tests/fuzz/framer_fuzz.cpp into tests/fuzz/corpus/framer/.

Each input is 6 spec bytes (decoded by spec_of() in framer_fuzz.cpp) followed by
the byte stream. Run it again after changing the seeds; it only (re)writes the
files named here, so inputs the fuzzer added stay.
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "framer")
KEYS = {"devid": 0, "/devid": 1, "/d/id": 2, "/0/k": 3}


class Spec:
    def __init__(self, hs=6, ls=2, off=4, big=True, incl=False, types=False, versions=False, depth=16,
                 max_body=255, key="devid", max_key=64, chunk=1, seed=0):
        assert 1 <= hs <= 16 and ls in (1, 2, 4) and ls <= hs and off + ls <= hs and off < 64
        assert 1 <= depth <= 16 and 0 <= max_body <= 255 and 1 <= max_key <= 64 and 1 <= chunk <= 256
        self.hs, self.ls, self.off, self.big, self.incl = hs, ls, off, big, incl
        self.b = bytes([
            ((seed & 15) << 4) | (hs - 1),
            (off << 2) | {1: 0, 2: 1, 4: 2}[ls],
            int(big) | int(incl) << 1 | int(types) << 2 | int(versions) << 3 | (depth - 1) << 4,
            max_body,
            KEYS[key] | (max_key - 1) << 2,
            chunk - 1,
        ])

    def frame(self, body, type_=1, version=1, declared=None):
        if isinstance(body, str):
            body = body.encode()
        n = declared if declared is not None else len(body) + (self.hs if self.incl else 0)
        h = bytearray([0x5A] * self.hs)
        h[0] = type_
        if self.hs > 1:
            h[1] = version
        fmt = {1: "B", 2: "H", 4: "I"}[self.ls]
        h[self.off:self.off + self.ls] = struct.pack((">" if self.big else "<") + fmt, n)
        return bytes(h) + body


D = Spec()  # the default protocol: 6-byte big-endian header, length at 4..5, "devid"
STRICT = Spec(types=True, versions=True, depth=4, max_body=64, max_key=16, chunk=7)

SEEDS = {
    # valid frames
    "valid_default": D.b + D.frame('{"devid":"dev-0001","v":1}'),
    "valid_three_frames": D.b + D.frame('{"devid":"a"}') + D.frame('{"x":[1,{"y":null}],"devid":"b"}', 2)
                          + D.frame('{"devid":"c"}'),
    "valid_then_partial": D.b + D.frame('{"devid":"a"}') + D.frame('{"devid":"second"}')[:9],
    "valid_unicode_key": D.b + D.frame('{"devid":"\\u00e9\\"x\\\\","o":"\u00fc"}'),
    "valid_pointer_d_id": Spec(key="/d/id").b + Spec().frame('{"d":{"id":"ptr","z":[]}}'),
    "valid_pointer_array": Spec(key="/0/k").b + Spec().frame('[{"k":"arr"},2]'),
    "valid_pointer_devid": Spec(key="/devid").b + Spec().frame('{"devid":"p"}'),
    "valid_little_endian": Spec(big=False, chunk=3).b + Spec(big=False).frame('{"devid":"le"}') * 2,
    "valid_len1_header1": Spec(hs=1, ls=1, off=0).b + Spec(hs=1, ls=1, off=0).frame('{"devid":"h1"}'),
    "valid_len4_be_header8": Spec(hs=8, ls=4, off=4).b + Spec(hs=8, ls=4, off=4).frame('{"devid":"l4"}'),
    "valid_len4_le_header4": Spec(hs=4, ls=4, off=0, big=False).b
                             + Spec(hs=4, ls=4, off=0, big=False).frame('{"devid":"l4le"}'),
    "valid_includes_header": Spec(incl=True).b + Spec(incl=True).frame('{"devid":"inc"}'),
    "valid_strict": STRICT.b + STRICT.frame('{"devid":"s1"}', 2, 3) + STRICT.frame('{"devid":"s2"}', 7, 0),
    "many_tiny_frames": Spec(hs=1, ls=1, off=0, chunk=5).b + Spec(hs=1, ls=1, off=0).frame('{"devid":"t"}') * 20,
    # each error
    "header_truncated": D.b + D.frame('{"devid":"a"}')[:3],
    "body_truncated": D.b + D.frame('{"devid":"abcdef"}')[:12],
    "body_too_large": Spec(max_body=16).b + bytes([1, 1, 0, 0, 0, 17]),
    "body_too_large_len4": Spec(hs=8, ls=4, off=4, max_body=200).b + bytes([1, 1, 0, 0, 0xff, 0xff, 0xff, 0xff]),
    "bad_type": STRICT.b + STRICT.frame('{"devid":"a"}', 9, 1),
    "bad_version": STRICT.b + STRICT.frame('{"devid":"a"}', 1, 7),
    "bad_length": Spec(incl=True).b + Spec(incl=True).frame(b"", declared=3),
    "bad_json": D.b + D.frame('{"devid":"a",}'),
    "bad_json_empty_body": D.b + D.frame(''),
    "json_too_deep": Spec(depth=3).b + D.frame('{"devid":"a","x":[[[1]]]}'),
    "bad_utf8": D.b + D.frame(b'{"devid":"a\xc3\x28"}'),
    "key_missing": D.b + D.frame('{"id":"a"}'),
    "key_missing_array": D.b + D.frame('["devid","a"]'),
    "key_not_string": D.b + D.frame('{"devid":12}') + D.frame('{"devid":{}}'),
    "key_not_string_null": D.b + D.frame('{"devid":null}'),
    "key_empty": D.b + D.frame('{"devid":""}'),
    "key_too_long": Spec(max_key=4).b + D.frame('{"devid":"abcde"}'),
    "key_bad_char_escaped": D.b + D.frame('{"devid":"a\\u0001"}'),
    "key_bad_char_del": D.b + D.frame(b'{"devid":"a\x7f"}'),
    "key_duplicate": D.b + D.frame('{"devid":"a","devid":"b"}'),
    "key_duplicate_escaped": D.b + D.frame('{"devid":"a","dev\\u0069d":"b"}'),
    # streams ending in a bad frame
    "valid_then_bad_json": STRICT.b + STRICT.frame('{"devid":"a"}') + STRICT.frame('{"devid":"b"}', 2)
                           + STRICT.frame('{"devid":'),
    "valid_then_too_large": STRICT.b + STRICT.frame('{"devid":"a"}') + bytes([1, 1, 0, 0, 0, 65]),
    # bodies whose last token runs into the next bytes (the parser must stop at the body's end)
    "number_at_body_end": D.b + D.frame('{"devid":"a","n":1') + b'2}' + D.frame('{"devid":"b"}'),
    "atom_at_body_end": D.b + D.frame('{"devid":"a","t":tru') + b'e}',
    "scalar_body_then_digits": D.b + D.frame('12') + b'34',
    # odd specs
    "max_body_zero": Spec(max_body=0).b + bytes([1, 1, 0, 0, 0, 0]),
    "depth_one": Spec(depth=1).b + D.frame('{"devid":"a"}'),
    "header16_len_at_13": Spec(hs=16, ls=2, off=13, seed=9).b + Spec(hs=16, ls=2, off=13).frame('{"devid":"h16"}'),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()
