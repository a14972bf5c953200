"""
A stand-in for the Istio guide's tcp-echo services: every connection to
ADDRESS:PORT gets back each chunk it sends, after PREFIX and a space.

    python tests/support/tcpecho.py ADDRESS PORT PREFIX

It prints C{ready PORT} once listening (PORT 0 picks a free one). Used by the
tests and by examples/walkthrough.sh.
"""

import socket
import sys
import threading


def serve(connection: socket.socket, prefix: bytes) -> None:
    with connection:
        while data := connection.recv(4096):
            connection.sendall(prefix + b" " + data)


def main() -> None:
    address, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    server = socket.create_server((address, port))
    print("ready", server.getsockname()[1], flush=True)
    while True:
        connection, _ = server.accept()
        threading.Thread(target=serve, args=(connection, prefix), daemon=True).start()


if __name__ == "__main__":
    main()
