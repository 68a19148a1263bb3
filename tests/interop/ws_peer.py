#!/usr/bin/env python3
"""A WebSocket peer (Python `websockets`), for interoperability tests of the mesh.

  ws_peer.py serve --port 8080
  ws_peer.py call --connect 10.0.0.2:8080 --uri ws://api.m.local:8080/echo

`serve` echoes every message back and closes with code 4000 when asked (the message
"close"). `call` connects to --connect (the proxy, or the server directly) with the Host and
path of --uri, exchanges text, binary and a 1 MiB message, asks for the close, and prints one
JSON object of what it saw; the test compares it direct and through the mesh.
"""
import argparse
import json
import socket

from websockets.sync.client import connect
from websockets.sync.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed


def serve(port):
    def echo(connection):
        try:
            for message in connection:
                if message == "close":
                    connection.close(4000, "asked to")
                    return
                connection.send(message)
        except ConnectionClosed:
            pass

    with ws_serve(echo, "0.0.0.0", port, max_size=None) as server:
        print(f"ws_peer serving on {port}", flush=True)
        server.serve_forever()


def call(address, uri):
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    results = {}
    with connect(uri, sock=sock, max_size=None, open_timeout=10) as ws:
        results["path"] = ws.request.path
        ws.send("hello")
        results["text"] = ws.recv(timeout=10)
        ws.send(b"\x00\x01\x02")
        results["binary"] = list(ws.recv(timeout=10))
        big = bytes(range(256)) * 4096
        ws.send(big)
        results["large_same"] = ws.recv(timeout=10) == big
        ws.send("close")
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as closed:
            results["close_code"] = closed.rcvd.code if closed.rcvd else None
    print(json.dumps(results, sort_keys=True), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("call")
    c.add_argument("--connect", required=True)
    c.add_argument("--uri", required=True)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
    else:
        call(args.connect, args.uri)


if __name__ == "__main__":
    main()
