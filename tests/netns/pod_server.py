"""A pod's server for the netns tests: HTTP on 8080 answering with the pod's name and the
client address it saw, and a line echo on 9000. Run as: python pod_server.py NAME ADDRESS."""

import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, ADDRESS = sys.argv[1], sys.argv[2]


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{NAME} {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def echo(conn: socket.socket) -> None:
    with conn, conn.makefile("rwb", buffering=0) as f:
        for line in f:
            f.write(line)


def echo_server() -> None:
    s = socket.create_server((ADDRESS, 9000))
    while True:
        conn, _ = s.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


class Server(ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer would look up its own name (getfqdn): DNS timeouts in an isolated netns
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = NAME, self.server_address[1]


threading.Thread(target=echo_server, daemon=True).start()
Server((ADDRESS, 8080), Hello).serve_forever()
