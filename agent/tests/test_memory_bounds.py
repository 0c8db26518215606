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
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from backup_agent import config
from backup_agent.jobs.files import FilesJob
from backup_agent.storage.bodies import Pieces
from backup_agent.storage.memory import MemoryStore
from backup_agent.storage.store import Readable


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


class SlowStore(MemoryStore):
    """Packs take a while to go up, as on a slow link: how many wait at once is what memory holds."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.most = 0
        self.count = threading.Lock()

    def put(self, key: str, data: bytes | Readable, *, sha256: str, storage_class: str | None = None) -> None:
        packs = "/packs/" in key
        if packs:
            with self.count:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(0.05)
        try:
            super().put(key, data, sha256=sha256, storage_class=storage_class)
        finally:
            if packs:
                with self.count:
                    self.now -= 1


def test_packs_in_flight_are_bounded_for_small_and_big_files_together(tmp_path: Path) -> None:
    # concurrency 4: at most 2 packs of 1 MiB wait for their PUT, whether small files or big
    # files' chunks fill them (each costs about twice its size until the PUT ends).
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(3)
    for i in range(40):
        (src / f"small{i}").write_bytes(rnd.randbytes(100_000))
    for i in range(2):
        (src / f"big{i}").write_bytes(rnd.randbytes(3 << 20))
    cfg = config.from_dict({"state_dir": str(tmp_path / "state"),
                            "storage": {"bucket": "mem", "prefix": "n", "concurrency": 4, "pack_size_mb": 1,
                                        "large_file_mb": 1},
                            "jobs": {"data": {"type": "files", "paths": [str(src)]}}})
    store = SlowStore()
    result = FilesJob(cfg, cfg.job("data"), store=store).run()
    assert result.status == "success" and result.files_new == 42
    assert sum("/packs/" in k for k in store.objects) >= 8
    assert store.most == 2
