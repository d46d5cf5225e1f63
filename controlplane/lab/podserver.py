"""The lab's pod: answers on each container port with who it is and who it saw.

TCP: an HTTP request gets `200 OK` with one line `pod=NAME node=NODE client=IP:PORT`; any other
line gets that line back. UDP: every datagram gets it, and a datagram of more than
ECHO_ABOVE bytes gets itself back after it (so that large datagrams, fragmented both ways,
can be checked end to end). Like giving each nginx replica its own index page, so balancing
and client-IP preservation can be seen from the client.

    python -m controlplane.lab.podserver --pod NAME --node NODE --listen tcp/80 --listen udp/53
"""

from __future__ import annotations

import argparse
import selectors
import socket
import threading

ECHO_ABOVE = 512
HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def identity(pod: str, node: str, peer: tuple) -> str:
    host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
    return f"pod={pod} node={node} client={host}:{peer[1]}"


def serve_tcp_client(conn: socket.socket, peer: tuple, pod: str, node: str) -> None:
    with conn, conn.makefile("rwb", buffering=0) as stream:
        first = stream.readline()
        if first.startswith(HTTP_METHODS):
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass  # the request's headers
            body = (identity(pod, node, peer) + "\n").encode()
            stream.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + (b"" if first.startswith(b"HEAD ") else body)
            )
            return
        line = first
        while line:
            stream.write((identity(pod, node, peer) + "\n").encode())
            line = stream.readline()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--listen", action="append", default=[], help="tcp/PORT or udp/PORT")
    args = parser.parse_args(argv)

    sel = selectors.DefaultSelector()
    for spec in args.listen:
        proto, port = spec.split("/")
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET6, kind)  # dual-stack: IPv4 arrives mapped
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", int(port)))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s.type == socket.SOCK_STREAM:
                conn, peer = s.accept()
                peer = (_unmap(peer[0]), peer[1])
                threading.Thread(
                    target=serve_tcp_client, args=(conn, peer, args.pod, args.node), daemon=True
                ).start()
            else:
                data, peer = s.recvfrom(65535)
                line = identity(args.pod, args.node, (_unmap(peer[0]), peer[1])) + "\n"
                s.sendto(line.encode() + (data if len(data) > ECHO_ABOVE else b""), peer)


def _unmap(addr: str) -> str:
    return addr.removeprefix("::ffff:") if addr.startswith("::ffff:") and "." in addr else addr


if __name__ == "__main__":
    main()
