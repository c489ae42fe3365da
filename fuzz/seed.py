#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/corpus/.

Run once before fuzzing a fresh corpus (docs/fuzzing.md); the committed
corpus already holds what survived of these after minimisation. Each input
is named seed-<what it is>, so a seed can be found and read.
"""

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


def line(obj):
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# --- line_protocol: [flags, seed, data...] (see tests/fuzzing/src/line.rs) ---

PROFILE = {"tiny": 0, "small": 1, "roomy": 2, "default": 3}
ADMIN_MODE = 4
TOKEN = {"none": 0, "admin": 1 << 3, "user": 2 << 3, "stranger": 3 << 3}
MODE = {"stream": 0, "messages": 1 << 5, "execute": 2 << 5, "mixed": 3 << 5}
EAGER = 0x80

BASIC = b"".join(
    [
        line({"command": "ping"}),
        line({"command": "subscribe", "tags": ["a"]}),
        line({"command": "subscribe", "tags": ["a", "b"]}),
        line({"command": "publish", "tags": ["a", "b", "c"], "data": "hello"}),
        line({"command": "list"}),
        line({"command": "unsubscribe", "tags": ["a"]}),
        line({"command": "who"}),
        line({"command": "ping"}),
    ]
)

ADMIN = b"".join(
    [
        line({"command": "register", "tags": ["a", "b"], "data": "t1"}),
        line({"command": "register", "tags": ["a"], "data": "t1"}),
        line({"command": "set", "tags": ["c"], "data": "t1"}),
        line({"command": "tags", "data": "t1"}),
        line({"command": "unset", "tags": ["a"], "data": "user-token"}),
        line({"command": "unregister", "data": "t1"}),
        line({"command": "unregister", "data": "nobody"}),
        line({"command": "tags", "data": "user-token"}),
        line({"command": "register", "data": "t2"}),
        line({"command": "auth", "data": "t2"}),
    ]
)

AUTH = b"".join(
    [
        line({"command": "auth", "data": "user-token"}),
        line({"command": "subscribe", "tags": ["a"]}),
        line({"command": "subscribe", "tags": ["z"]}),
        line({"command": "publish", "tags": ["a", "b"], "data": "mine"}),
        line({"command": "publish", "tags": ["q"], "data": "not mine"}),
        line({"command": "auth", "data": "admin-token"}),
        line({"command": "list"}),
    ]
)

ECHO = b"".join(
    [
        line({"command": "echo", "tags": ["a"], "data": "back"}),
        line({"command": "echo", "data": "twice\n\u0000"}),
        line({"command": "echo", "data": "fail"}),
        line({"command": "echo", "tags": [], "data": 5}),
        line({"command": "echo", "tags": [""]}),
        line({"command": "dance"}),
    ]
)

WEIRD = b"".join(
    [
        b'{"command":"publish","tags":["a"],"data":"x"}\r\n',
        b'{"command":"publish","tags":["a", "b"],"data":"spaced"}\n',
        b'{"command":"publish","tags":["\\u0061"],"data":"escaped \\" \\\\ \\n \\u0000 \\ud83d\\ude00"}\n',
        b'{"command":"publish","tags":["a"],"data":"\xff\xfe"}\n',
        b'{"command":"publish","tags":["\xc3\xa9"],"data":"\xe2\x82\xac"}\n',
        b'{"command":"publish","tags":["a"],"data":"tab\there"}\n',
        b'{"command":"publish","tags":["a"],"data":5}\n',
        b'{"command":"publish","tags":["a"],"data":null}\n',
        b'{"command":"publish","tags":["a"]}\n',
        b'{"command":"publish","tags":[],"data":"x"}\n',
        b'{"command":"publish","tags":[""],"data":"x"}\n',
        b'{"command":"publish","tags":"a","data":"x"}\n',
        b'{"command":"publish","tags":[1,2],"data":"x"}\n',
        b'{"command":"publish","tags":null,"data":"x"}\n',
        b'{"command":"publish","command":"ping"}\n',
        b'{"command":null}\n',
        b'{"command":""}\n',
        b'{"tags":["a"]}\n',
        b"[1,2,3]\n",
        b'"just a string"\n',
        b"not json at all\n",
        b"{\n",
        b"\n",
        b"   \t \r\n",
        b'{"command":"subscribe","tags":["a"],"extra":{"deep":[[[[[[[[[]]]]]]]]]}}\n',
        b'{"command":"ping"}{"command":"ping"}\n',
        b'\xef\xbb\xbf{"command":"ping"}\n',
        b'{"command":"publish","tags":["a"],"data":"unterminated',
    ]
)

# Inputs stay under the 8 KiB the targets are fuzzed with (-max_len).
MANY_TAGS = line({"command": "subscribe", "tags": ["t%d" % i for i in range(100)]}) + line(
    # One over the default limit of 1024 tags.
    {"command": "publish", "tags": ["a"] * 1025, "data": "x"}
)
BIG = line({"command": "publish", "tags": ["a"], "data": "x" * 1000}) + line({"command": "ping"})
MANY_SUBS = b"".join(line({"command": "subscribe", "tags": ["s%d" % i]}) for i in range(20))
FLOOD = line({"command": "ping"}) * 100 + line({"command": "publish", "tags": ["a"], "data": "y" * 50}) * 30

line_inputs = {
    "basic": BASIC,
    "admin": ADMIN,
    "auth": AUTH,
    "echo": ECHO,
    "weird": WEIRD,
    "many-tags": MANY_TAGS,
    "big": BIG,
    "many-subs": MANY_SUBS,
    "flood": FLOOD,
}
variants = [
    ("default-stream", PROFILE["default"] | MODE["stream"], 0),
    ("tiny-stream-cut", PROFILE["tiny"] | MODE["stream"], 7),
    ("small-messages", PROFILE["small"] | MODE["messages"], 19),
    ("roomy-execute", PROFILE["roomy"] | MODE["execute"], 33),
    ("admin-stream-cut", PROFILE["small"] | ADMIN_MODE | TOKEN["admin"] | MODE["stream"], 101),
    ("user-mixed-eager", PROFILE["roomy"] | ADMIN_MODE | TOKEN["user"] | MODE["mixed"] | EAGER, 77),
    ("anonymous-messages", PROFILE["default"] | ADMIN_MODE | MODE["messages"], 5),
    ("stranger-eager", PROFILE["tiny"] | ADMIN_MODE | TOKEN["stranger"] | MODE["stream"] | EAGER, 250),
]
for name, data in line_inputs.items():
    assert len(data) <= 8190, name
    for variant, flags, seed in variants:
        write("line_protocol", "%s-%s" % (name, variant), bytes([flags, seed]) + data)

# --- http_publish_body: the body ---

bodies = {
    "plain": b'{"tags":["a"],"data":"x"}',
    "two-tags": b'{"tags":["a","b"],"data":"both"}',
    "other-tag": b'{"tags":["c"],"data":"not watched"}',
    "with-command": b'{"command":"subscribe","tags":["a"],"data":"still a publish"}',
    "no-data": b'{"tags":["a"]}',
    "null-data": b'{"tags":["a"],"data":null}',
    "number-data": b'{"tags":["a"],"data":5}',
    "object-data": b'{"tags":["a"],"data":{"x":1}}',
    "no-tags": b'{"data":"x"}',
    "null-tags": b'{"tags":null,"data":"x"}',
    "empty-tags": b'{"tags":[],"data":"x"}',
    "empty-tag": b'{"tags":[""],"data":"x"}',
    "string-tags": b'{"tags":"a","data":"x"}',
    "number-tags": b'{"tags":[1],"data":"x"}',
    "nine-tags": json.dumps({"tags": ["t%d" % i for i in range(9)], "data": "x"}).encode(),
    "eight-tags": json.dumps({"tags": ["a"] + ["t%d" % i for i in range(7)], "data": "x"}).encode(),
    "duplicate-tags": b'{"tags":["a","a","b"],"data":"dup"}',
    "duplicate-keys": b'{"tags":["z"],"tags":["a"],"data":"last wins"}',
    "escapes": b'{"tags":["a","\\u00e9"],"data":"\\n\\r\\t\\"\\\\\\u0000\\ud83d\\ude00"}',
    "lone-surrogate": b'{"tags":["a"],"data":"\\ud800"}',
    "raw-utf8": '{"tags":["a","é"],"data":"€ 😀"}'.encode(),
    "invalid-utf8": b'{"tags":["a"],"data":"\xff"}',
    "big-data": json.dumps({"tags": ["a"], "data": "x" * 2000}).encode(),
    "near-limit": json.dumps({"tags": ["a"], "data": "x" * 980}).encode(),
    "array": b'[{"tags":["a"],"data":"x"}]',
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "empty": b"",
    "whitespace": b" \n\t ",
    "crlf": b'{"tags":["a"],\r\n"data":"x"}\r\n',
    "bom": b'\xef\xbb\xbf{"tags":["a"],"data":"x"}',
    "truncated": b'{"tags":["a"],"data":"x',
    "deep": b'{"tags":["a"],"data":"x","deep":' + b"[" * 200 + b"]" * 200 + b"}",
    "huge-number": b'{"tags":["a"],"data":"x","n":1e400}',
    "extra-fields": b'{"tags":["a"],"data":"x","error":"e","who":1}',
    "two-objects": b'{"tags":["a"],"data":"x"}{"tags":["a"]}',
    "user-forbidden": b'{"tags":["a","c"],"data":"x"}',
}
for name, body in bodies.items():
    write("http_publish_body", name, body)

# --- websocket_frames: raw client frames ---

MASK = b"\x11\x22\x33\x44"


def frame(opcode, payload, fin=True, masked=True, rsv=0, length=None):
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload) if length is None else length
    m = 0x80 if masked else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 1 << 16:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if masked:
        head += MASK
        payload = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + payload


def text(obj_or_bytes, **kw):
    data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else line(obj_or_bytes)[:-1]
    return frame(0x1, data, **kw)


PING_TEXT = text({"command": "ping"})
frames = {
    "ping": PING_TEXT,
    "session": b"".join(
        [
            text({"command": "subscribe", "tags": ["a"]}),
            text({"command": "publish", "tags": ["a", "b"], "data": "to the watcher"}),
            text({"command": "publish", "tags": ["b", "c"], "data": "also"}),
            text({"command": "list"}),
            text({"command": "who"}),
            PING_TEXT,
        ]
    ),
    "fragmented": frame(0x1, b'{"command":', fin=False)
    + frame(0x0, b'"pi', fin=False)
    + frame(0x9, b"between")
    + frame(0x0, b'ng"}'),
    "ping-frame": frame(0x9, b"hello") + PING_TEXT,
    "pong-frame": frame(0xA, b"unsolicited") + PING_TEXT,
    "close": PING_TEXT + frame(0x8, struct.pack(">H", 1000) + b"bye") + PING_TEXT,
    "close-empty": frame(0x8, b""),
    "close-bad-code": frame(0x8, struct.pack(">H", 999)),
    "binary": frame(0x2, b"\x00\x01binary") + PING_TEXT,
    "oversized-message": text({"command": "publish", "tags": ["a"], "data": "x" * 2000}) + PING_TEXT,
    "length-16": text({"command": "publish", "tags": ["a"], "data": "y" * 300}),
    "huge-length": frame(0x1, b"{}", length=1 << 40),
    "length-over-limit": frame(0x1, b"", length=17 << 20),
    "unmasked": text({"command": "ping"}, masked=False),
    "invalid-utf8": frame(0x1, b'{"command":"\xff"}') + PING_TEXT,
    "reserved-bits": text({"command": "ping"}, rsv=4),
    "reserved-opcode": frame(0x3, b"x") + PING_TEXT,
    "fragmented-control": frame(0x9, b"x", fin=False),
    "continuation-first": frame(0x0, b"orphan") + PING_TEXT,
    "many-fragments": frame(0x1, b"{", fin=False)
    + b"".join(frame(0x0, b" ", fin=False) for _ in range(50))
    + frame(0x0, b'"command":"ping"}'),
    "pipelined-pings": PING_TEXT * 20,
    "not-json": text(b"hello") + text(b"") + text(b"\n") + PING_TEXT,
    "newline-inside": text(b'{"command":"ping"}\n{"command":"who"}') + PING_TEXT,
    "admin-commands": text({"command": "register", "data": "t"}) + text({"command": "auth", "data": "t"}),
    "truncated": PING_TEXT + text({"command": "ping"})[:5],
    "http-request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}
for name, data in frames.items():
    write("websocket_frames", name, data)

# --- cluster_payload: [flags, chunk...] (see tests/fuzzing/src/cluster.rs) ---

KEYED, SMALL = 1, 2
RAW, SEALED, ALTERED, REPLAY = 0, 1, 2, 3
OTHER_KEY, UNSIGNED = 0x20, 0x40
MESSAGES, HEARTBEAT, TOKEN, LEAVING, RECHECK = 0, 1, 2, 3, 4
VICTIM = 1  # origin byte: origin = b % 4 + 1 = 2
ME = 0  # origin 1: the node itself


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def message(tags, data):
    out = varint(len(tags))
    for tag in tags:
        tag = tag.encode() if isinstance(tag, str) else tag
        out += varint(len(tag)) + tag
    data = data.encode() if isinstance(data, str) else data
    return out + varint(len(data)) + data


def messages(*pairs):
    return varint(len(pairs)) + b"".join(message(t, d) for t, d in pairs)


def chunk(mode, payload, clock=0):
    return struct.pack("<H", len(payload)) + bytes([mode | (clock << 2)]) + payload


def sealed(kind, origin, seq, body=b"", skew=0, mode=SEALED, clock=0):
    head = bytes([kind, origin]) + struct.pack("<H", seq) + struct.pack("b", skew)
    return chunk(mode, head + body, clock)


def raw(kind, origin, seq, body=b"", time=0):
    # Version 2, unsigned (key id 0).
    return bytes([2, kind]) + b"\0" * 4 + struct.pack(">QQQ", origin, seq, time) + body


ONE = messages((["a"], '"hello"'))
cluster = {
    "keyed-genuine-replayed-altered": bytes([KEYED])
    + sealed(MESSAGES, VICTIM, 1, ONE)
    + chunk(REPLAY, b"\0")
    + sealed(MESSAGES, VICTIM, 2, ONE, mode=ALTERED)
    + sealed(MESSAGES, VICTIM, 3, ONE, mode=SEALED | OTHER_KEY)
    + sealed(MESSAGES, VICTIM, 4, ONE, mode=SEALED | UNSIGNED)
    + sealed(MESSAGES, VICTIM, 5, ONE, skew=100)
    + chunk(RAW, raw(1, 2, 6, ONE)),
    "keyed-control": bytes([KEYED])
    + sealed(HEARTBEAT, VICTIM, 1, varint(1000))
    + sealed(TOKEN, 2, 1, bytes(range(32)))
    + sealed(RECHECK, 3, 1)
    + sealed(LEAVING, VICTIM, 2)
    + sealed(LEAVING, VICTIM, 2, mode=SEALED, clock=7),
    "keyed-old-after-new": bytes([KEYED])
    + sealed(MESSAGES, VICTIM, 60000, ONE)
    + sealed(MESSAGES, VICTIM, 3, ONE)
    + sealed(MESSAGES, ME, 1, ONE),
    "open-forged-huge-sequence": bytes([0])
    + chunk(RAW, raw(1, 2, 5, ONE))
    + chunk(RAW, raw(1, 2, (1 << 64) - 1, messages((["a"], '"forged"'))))
    + chunk(RAW, raw(1, 2, 6, ONE))
    + chunk(RAW, raw(1, 1, 7, ONE)),
    "open-line-injection": bytes([0])
    + chunk(RAW, raw(1, 3, 1, messages((["a"], '"x"\n\n  \r\n'))))
    + chunk(RAW, raw(1, 3, 2, messages((["a"], '"a"}\n{"command":"x"'))))
    + chunk(RAW, raw(1, 3, 3, messages((["a"], '"\\ude00"'))))
    + chunk(RAW, raw(1, 3, 4, messages((["a"], '"\\ud83d\\ude00 fine"'), (["b\nc", "\x01"], '"\\n"')))),
    "open-limits": bytes([SMALL])
    + sealed(MESSAGES, VICTIM, 1, messages((["a", "b", "c", "d"], '"many tags"'), (["a"], '"%s"' % ("x" * 300)), (["a"], '"fits"'))),
    "open-truncated-and-trailing": bytes([0])
    + chunk(RAW, raw(1, 2, 1, ONE)[:-1])
    + chunk(RAW, raw(1, 2, 2, ONE + b"\0"))
    + chunk(RAW, raw(9, 2, 3))
    + chunk(RAW, b"\x01" + raw(1, 2, 4, ONE)[1:]),
    "json-strings": bytes([0])
    + b"".join(
        chunk(RAW, s.encode())
        for s in ['"x"', '"x" ', '"\\u00e9"', '"\\ud800"', '"a\\"b"', '"\\/"', '"\t"', '""']
    ),
}
for name, data in cluster.items():
    write("cluster_payload", name, data)

print("seeds written under", os.path.join(HERE, "corpus"), file=sys.stderr)
