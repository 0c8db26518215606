"""What bounds a backup's memory: a pack is never copied whole on its way to the store, and
buffers of a pack's size go back to the system when freed (docs/PERFORMANCE.md, "Peak memory
after format 3")."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import textwrap
import tracemalloc

import pytest

from backup_agent.storage.bodies import Pieces


def test_a_pack_reads_back_as_its_pieces_joined_from_anywhere() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        parts = [rnd.randbytes(rnd.randint(0, 40)) for _ in range(rnd.randint(0, 20))]
        whole = b"".join(parts)
        body = Pieces(parts)
        assert len(body) == len(whole)
        for _ in range(8):
            pos, n = rnd.randint(0, len(whole) + 2), rnd.randint(0, 90)
            body.seek(pos)
            if rnd.random() < 0.5:
                got = body.read(n)
            else:
                buf = bytearray(n)
                got = bytes(buf[: body.readinto(buf)])
            assert got == whole[pos : pos + n]
        body.seek(0)
        assert body.read() == whole


def test_uploading_a_pack_copies_no_more_than_the_store_asks_for() -> None:
    # 16 MiB of small files' pieces, read as awscrt (1 MiB into its buffer) and botocore (16 KiB
    # reads) do: joining the pack first held two more copies of it per upload in flight.
    body = Pieces([os.urandom(7000) for _ in range(2400)])
    buf = bytearray(1 << 20)
    tracemalloc.start()
    try:
        while body.readinto(buf):
            pass
        body.seek(0)
        while body.read(16 << 10):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 << 10


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
@pytest.mark.parametrize("fixed", [True, False])
def test_a_freed_pack_sized_buffer_goes_back_to_the_system(fixed: bool) -> None:
    # As in a backup: a big buffer is freed while smaller objects made after it stay. Without a
    # fixed mmap threshold glibc keeps every later such buffer's memory in the heap.
    script = textwrap.dedent(f"""
        from backup_agent import memory
        if {fixed}:
            memory.return_big_buffers()
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096
        before, kept = rss(), []
        for n in (32, 16, 16, 16):
            buf = b"x" * (n << 20)
            kept.append(bytearray(1000))
            del buf
        print(rss() - before)
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    grown = int(subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                               text=True).stdout)
    if fixed:
        assert grown < 4 << 20
    else:  # the test still tells the two apart on this libc
        assert grown >= 12 << 20
