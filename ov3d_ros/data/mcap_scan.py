"""Messages of an MCAP file read front to back, for recordings whose end is missing (a recorder killed or a disk
filled): rosbags needs the footer and summary at the end of the file, this reader needs none of it.

MCAP layout (https://mcap.dev/spec): 8 magic bytes, then records of ``opcode (u8), length (u64 LE), content``.
Schema (0x03) and Channel (0x04) records name the topics and types; Message (0x05) records carry the serialised
messages; a Chunk (0x06) holds further records, compressed with lz4 or zstd (or not at all). Reading stops at the
first record that is cut off or does not decode, and says so in ``damage``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["McapScan", "ScannedChannel"]

MAGIC = b"\x89MCAP0\r\n"
_SCHEMA, _CHANNEL, _MESSAGE, _CHUNK, _FOOTER, _DATA_END = 0x03, 0x04, 0x05, 0x06, 0x02, 0x0F


@dataclass
class ScannedChannel:
    id: int
    topic: str
    msgtype: str
    msgcount: int = 0


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4:pos + 4 + n]).decode(), pos + 4 + n


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "lz4":
        from lz4.frame import decompress

        return decompress(data)
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            try:
                from backports import zstd  # what rosbags installs before 3.14
            except ImportError:
                import zstandard as zstd
        return zstd.decompress(data)
    raise ValueError(f"chunk compression '{compression}' is not supported")


class McapScan:
    """``channels`` (id -> ScannedChannel, with message counts) after a first pass; ``messages()`` yields
    (channel, log_time ns, serialised bytes) in file order. ``damage`` says where and why reading stopped early
    (None when the file was read to its end)."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            if f.read(8) != MAGIC:
                raise ValueError(f"{self.path} is not an MCAP file (no magic bytes)")
        self.damage: str | None = None
        self._schemas: dict[int, str] = {}
        self.channels: dict[int, ScannedChannel] = {}
        for _ in self._records(count_only=True):
            pass

    def _top_level(self, f):
        """(opcode, content) of the file's records until its end or the damage."""
        offset = 8
        while True:
            head = f.read(9)
            if not head:
                return
            if len(head) < 9:
                self.damage = f"a record is cut off at byte {offset}"
                return
            opcode, length = head[0], struct.unpack_from("<Q", head, 1)[0]
            content = f.read(length)
            if len(content) < length:
                self.damage = f"a record is cut off at byte {offset}"
                return
            offset += 9 + length
            if opcode in (_FOOTER, _DATA_END):
                return
            yield opcode, content

    def _inner(self, chunk: bytes):
        buf = memoryview(chunk)
        uncompressed_size = struct.unpack_from("<Q", buf, 16)[0]
        compression, pos = _string(buf, 28)
        (size,) = struct.unpack_from("<Q", buf, pos)
        data = _decompress(bytes(buf[pos + 8:pos + 8 + size]), compression, uncompressed_size)
        records, pos = memoryview(data), 0
        while pos + 9 <= len(records):
            opcode, length = records[pos], struct.unpack_from("<Q", records, pos + 1)[0]
            yield opcode, records[pos + 9:pos + 9 + length]
            pos += 9 + length

    def _records(self, count_only: bool = False):
        with self.path.open("rb") as f:
            f.seek(8)
            for opcode, content in self._top_level(f):
                try:
                    inner = list(self._inner(content)) if opcode == _CHUNK else [(opcode, memoryview(content))]
                except Exception as exc:  # a chunk that does not decompress: the damage starts here
                    self.damage = f"a chunk does not decode ({exc})"
                    return
                for op, rec in inner:
                    if op == _SCHEMA:
                        (sid,) = struct.unpack_from("<H", rec, 0)
                        self._schemas[sid] = _string(rec, 2)[0]
                    elif op == _CHANNEL:
                        cid, sid = struct.unpack_from("<HH", rec, 0)
                        topic, _ = _string(rec, 4)
                        if cid not in self.channels:
                            self.channels[cid] = ScannedChannel(cid, topic, self._schemas.get(sid, ""))
                    elif op == _MESSAGE:
                        cid, _, log_time = struct.unpack_from("<HIQ", rec, 0)
                        channel = self.channels.get(cid)
                        if channel is None:
                            continue
                        if count_only:
                            channel.msgcount += 1
                        else:
                            yield channel, log_time, bytes(rec[22:])

    def messages(self, topics=None):
        """(channel, log_time, data) of the messages on ``topics`` (all when None), in file order."""
        for channel, log_time, data in self._records():
            if topics is None or channel.topic in topics:
                yield channel, log_time, data
