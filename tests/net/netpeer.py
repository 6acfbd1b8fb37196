"""A peer for the network tests, run inside a network namespace the test
creates ("the internet"): an HTTP server and a TCP data service.

    python3 netpeer.py DIR HTTP_PORT DATA_PORT

HTTP serves DIR.  On DATA_PORT each connection sends one line:
``send N`` (the peer sends N bytes and closes), ``sink`` (the peer reads to
EOF and answers the count), ``slow`` (the peer sends 16 KiB every 5 ms
until the connection breaks).  Prints "ready" once both listen.
"""

import functools
import http.server
import socket
import sys
import threading
import time


def data(conn: socket.socket) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                return
            line += chunk
        words = line.split()
        if words[0] == b"send":
            left = int(words[1])
            block = b"x" * 65536
            while left:
                n = conn.send(block[: min(left, len(block))])
                left -= n
        elif words[0] == b"sink":
            total = 0
            while chunk := conn.recv(1 << 16):
                total += len(chunk)
            conn.sendall(b"%d\n" % total)
        elif words[0] == b"slow":
            block = b"s" * 16384
            try:
                while True:
                    conn.sendall(block)
                    time.sleep(0.005)
            except OSError:
                pass


def serve_data(port: int) -> socket.socket:
    srv = socket.create_server(("0.0.0.0", port), backlog=16)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=data, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def main() -> None:
    root, http_port, data_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", http_port), handler)
    serve_data(data_port)
    print("ready", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
