#!/usr/bin/env python3
"""An HTTPS server on Python's ssl (OpenSSL), for interoperability tests of the mesh's TLS.

  tls_peer.py --port 8443 --cert ext.pem --key ext.key --ca ca.pem

Requires a client certificate signed by --ca (mutual TLS) and answers every GET with the
client certificate's subject alternative names and the negotiated TLS version, so a test
sees what the mesh's client side presented and spoke.
"""
import argparse
import http.server
import ssl


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        peer = self.connection.getpeercert() or {}
        sans = ",".join(value for _, value in peer.get("subjectAltName", ()))
        body = f"peer {sans} over {self.connection.version()}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.load_verify_locations(args.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
