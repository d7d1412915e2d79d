#!/usr/bin/python3
"""Fixtures for ermc's python-lz4 interop tests (values_test.go).

Run with Debian's python3-lz4 (apt-get install python3-lz4):

    /usr/bin/python3 testdata/pylz4/gen.py

1. Writes py_*.lz4: lz4.block.compress(original) with the default
   store_size=True (4-byte little-endian length + one raw LZ4 block), the
   format pyermc stores with flag 8. The originals are not committed: the
   Go test rebuilds them with the same deterministic generators as below.
2. Verifies go_*.lz4 (written by `go test -run TestPyLZ4Fixtures
   -update-pylz4`, ermc's appendCompressed) with lz4.block.decompress and
   prints the result. It exits non-zero if any of them fails.
"""
import hashlib
import os
import sys

import lz4
import lz4.block

HERE = os.path.dirname(os.path.abspath(__file__))


def lcg_text(n, seed):
    """Pseudo-random but compressible bytes: words picked by a 64-bit LCG
    (Knuth's MMIX constants), with one raw byte after every 16th word.
    Mirrored by lcgText in values_test.go."""
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"epsilon ",
             b"zeta ", b"eta\n", b"theta, "]
    x = seed
    out = bytearray()
    i = 0
    while len(out) < n:
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out += words[x >> 61]
        i += 1
        if i % 16 == 0:
            out.append((x >> 33) & 0xFF)
    return bytes(out[:n])


# name -> original bytes. Mirrored by pyFixtureOriginals in values_test.go.
ORIGINALS = {
    "empty": b"",
    "text200": (b"The quick brown fox jumps over the lazy dog. " * 5)[:200],
    "repeat15k": b"0123456789abcdef" * 960,  # 15 KiB
    "lcg100k": lcg_text(100_000, 42),
}


def main():
    for name, data in ORIGINALS.items():
        packed = lz4.block.compress(data)  # store_size=True by default
        assert lz4.block.decompress(packed) == data
        with open(os.path.join(HERE, "py_%s.lz4" % name), "wb") as f:
            f.write(packed)
        print("wrote py_%s.lz4: %d -> %d bytes, original sha256 %s"
              % (name, len(data), len(packed), hashlib.sha256(data).hexdigest()))
    hc = lz4.block.compress(ORIGINALS["lcg100k"], mode="high_compression")
    with open(os.path.join(HERE, "py_lcg100k_hc.lz4"), "wb") as f:
        f.write(hc)
    print("wrote py_lcg100k_hc.lz4: %d bytes (mode=high_compression)" % len(hc))

    failed = False
    for name, data in ORIGINALS.items():
        path = os.path.join(HERE, "go_%s.lz4" % name)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            packed = f.read()
        try:
            got = lz4.block.decompress(packed)
        except Exception as e:  # noqa: BLE001
            print("FAIL go_%s.lz4: %s" % (name, e))
            failed = True
            continue
        if got != data:
            print("FAIL go_%s.lz4: decodes to %d bytes, not the original" % (name, len(got)))
            failed = True
        else:
            print("ok   go_%s.lz4: python-lz4 %s decodes %d -> %d bytes, equal to the original"
                  % (name, lz4.__version__, len(packed), len(got)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
