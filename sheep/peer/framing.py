"""Peer frames over a socket: `sheep.peer.wire` on top of `common.sockio`.

`FrameReader` cuts frames out of one read buffer (small payloads copied out of it,
large ones received into their own buffer); `FrameWriter` queues whole frames
(prefix+header bytes, then the payload buffer as given) for one ``sendmsg`` per
turn of the event loop.
"""
from __future__ import annotations

from common.errors import ProtocolError
from common.sockio import BufferWriter, SocketReader
from sheep.peer import wire

INLINE_PAYLOAD_BYTES = 64 << 10   # larger payloads get a buffer of their own


class FrameReader(SocketReader):
    def read_frame(self) -> wire.Frame:
        header_len, payload_len = wire.parse_prefix(self.take(wire.PREFIX.size))
        if header_len > self.buffer_bytes:
            raise ProtocolError(f"header of {header_len} bytes exceeds the read buffer")
        header = wire.parse_header(self.take(header_len))
        if payload_len == 0:
            return wire.Frame(header, b"")
        if payload_len <= INLINE_PAYLOAD_BYTES:
            return wire.Frame(header, bytes(self.take(payload_len)))
        return wire.Frame(header, self.take_into_new(payload_len))


class FrameWriter(BufferWriter):
    """`BufferWriter` of peer frames: prefix+header bytes, then the payload as given."""

    def send(self, header: dict, payload=b"") -> None:
        nbytes = memoryview(payload).nbytes
        super().send(wire.encode_prefix_and_header(header, nbytes), payload)
