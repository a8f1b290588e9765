"""One unary gRPC call over HTTP/2 on a unix socket, without grpcio.

The agent asks the kubelet one question a second (``List``) and one now and then
(``GetAllocatableResources``), each a small request and an answer of a few KiB. grpcio
does that with a C core, four event-engine threads and about 13 MB of the agent's memory,
and spends 1.3 to 1.5 ms of CPU a second doing it (``benchmarks/README.md``,
``agent_bench.py``). Here a call is one short-lived connection, as plain as HTTP/2 allows
(RFC 9113; gRPC's wire format: ``PROTOCOL-HTTP2.md`` of grpc/grpc):

1. the client preface, our SETTINGS (a large stream window, so a long answer never waits
   on flow control) and a connection WINDOW_UPDATE;
2. stream 1: HEADERS (``POST``, ``content-type: application/grpc``, ``te: trailers``),
   then DATA with the length-prefixed request and END_STREAM;
3. read frames until stream 1 ends, acknowledging the server's SETTINGS and PINGs: the
   response headers, DATA (the length-prefixed answer), trailers with ``grpc-status``.

Header blocks are HPACK (RFC 7541), decoded with the ``hpack`` package (the servers use
Huffman coding and the dynamic table). A failure is an :class:`RpcError` with gRPC's
status name (``unavailable``, ``deadline_exceeded``, ``unimplemented``, ...), as grpcio
named it, so the faults the agent counts keep their names.
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import unquote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
INITIAL_WINDOW_SIZE = 0x4
WINDOW = 1 << 24  # bytes the server may send before we say more: above any answer we accept
STREAM = 1

#: gRPC status codes by number (grpc/grpc doc/statuscodes.md), lower-case as the faults name them
STATUS = ("ok", "cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists",
          "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
          "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated")


class RpcError(Exception):
    """A call that did not return an answer: ``code`` is a name of :data:`STATUS`."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def request_bytes(path: str, message: bytes, timeout_s: float) -> bytes:
    """Everything the client sends for one call, in one write."""
    from hpack import Encoder

    headers = Encoder().encode([
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
        ("content-type", "application/grpc"), ("te", "trailers"),
        ("grpc-timeout", f"{max(1, int(timeout_s * 1000))}m"),
    ])
    return (PREFACE + _frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, WINDOW))
            + _frame(0x8, 0, 0, struct.pack(">I", WINDOW))  # WINDOW_UPDATE of the connection
            + _frame(HEADERS, END_HEADERS, STREAM, headers)
            + _frame(DATA, END_STREAM, STREAM, b"\x00" + struct.pack(">I", len(message)) + message))


def call(socket_path: str, path: str, message: bytes, timeout_s: float = 5.0, max_message: int = 16 << 20) -> bytes:
    """The answer's message (serialized protobuf) of the unary method ``path``
    (``/package.Service/Method``) on the gRPC server at ``socket_path``; RpcError otherwise."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(socket_path)
            sock.sendall(request_bytes(path, message, timeout_s))
            headers, body = _read_stream(sock, max_message)
        except socket.timeout:
            raise RpcError("deadline_exceeded", f"no answer in {timeout_s:g} s") from None
        except OSError as err:  # the socket gone, refused, reset: the kubelet restarting
            raise RpcError("unavailable", f"{socket_path}: {err.strerror or err}") from None
        except RpcError:
            raise
        except Exception as err:  # noqa: BLE001 - hpack's errors, a short frame: whatever garbage makes them raise
            raise RpcError("internal", f"a malformed answer: {err}") from None
    finally:
        sock.close()
    return _message(headers, body, max_message)


def _read_stream(sock: socket.socket, max_message: int) -> tuple[dict[str, str], bytes]:
    """Read frames until stream 1 ends: its headers and trailers (merged) and its DATA."""
    from hpack import Decoder

    decoder = Decoder()
    buf = bytearray()
    block = bytearray()  # a header block still waiting for its CONTINUATION frames
    block_ends_stream = False
    headers: dict[str, str] = {}
    data = bytearray()
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RpcError("unavailable", "the server closed the connection before the answer ended")
            buf += chunk
        size = int.from_bytes(buf[:3], "big")
        kind, flags = buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload = bytes(buf[9:9 + size])
        del buf[:9 + size]
        if kind == SETTINGS and not flags & ACK:
            sock.sendall(_frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            if last & 0x7FFFFFFF < STREAM:
                raise RpcError("unavailable", f"the server is going away (HTTP/2 error {code})")
        elif stream != STREAM:
            continue  # WINDOW_UPDATE and anything else of the connection
        elif kind == RST_STREAM:
            code = struct.unpack(">I", payload[:4])[0]
            raise RpcError("cancelled" if code == 0x8 else "unavailable" if code == 0x7 else "internal",
                           f"the server reset the stream (HTTP/2 error {code})")
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                payload = _unpad(payload, flags)
                if flags & PRIORITY:
                    payload = payload[5:]
                block_ends_stream = bool(flags & END_STREAM)
            block += payload
            if flags & END_HEADERS:
                for name, value in decoder.decode(bytes(block)):
                    headers[name] = value
                block.clear()
                if block_ends_stream:
                    return headers, bytes(data)
        elif kind == DATA:
            data += _unpad(payload, flags)
            if len(data) > max_message + 5:
                raise RpcError("resource_exhausted", f"an answer above {max_message:,} bytes")
            if flags & END_STREAM:
                return headers, bytes(data)


def _unpad(payload: bytes, flags: int) -> bytes:
    if not flags & PADDED:
        return payload
    pad = payload[0]
    return payload[1:len(payload) - pad]


def _message(headers: dict[str, str], body: bytes, max_message: int) -> bytes:
    """The answer's one message, or the RpcError its status says."""
    if headers.get(":status") != "200":
        raise RpcError("unavailable" if headers.get(":status") in ("502", "503", "504") else "unknown",
                       f"HTTP status {headers.get(':status')}")
    status = headers.get("grpc-status")
    if status is None:
        raise RpcError("internal", "the answer ended without grpc-status")
    if status != "0":
        code = STATUS[int(status)] if status.isdigit() and int(status) < len(STATUS) else "unknown"
        raise RpcError(code, unquote(headers.get("grpc-message", "")) or f"grpc-status {status}")
    if len(body) < 5:
        raise RpcError("internal", "an answer without a message")
    compressed, size = body[0], int.from_bytes(body[1:5], "big")
    if compressed:
        raise RpcError("internal", "a compressed answer (none was offered)")
    if size > max_message or len(body) != 5 + size:
        raise RpcError("internal" if size <= max_message else "resource_exhausted",
                       f"a message of {size:,} bytes in {len(body) - 5:,}")
    return body[5:]
