"""Opens COUNT keep-alive HTTP/1.1 connections to HOST:PORT, one answered request on each,
then holds them all idle until killed. Prints "open COUNT" once every connection is idle."""
import resource
import socket
import sys
import time

host, port, authority, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
request = f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


def answered(conn):
    """Reads one response (content-length or chunked body) and checks it is a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"not a 200: {head!r}")
    fields = dict(
        line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
    )
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    if b"content-length" in fields:
        done = lambda: len(body) >= int(fields[b"content-length"])
    else:
        done = lambda: body.endswith(b"0\r\n\r\n")
    while not done():
        body += conn.recv(65536)


held = []
for _ in range(count):
    conn = socket.create_connection((host, port))
    conn.sendall(request)
    answered(conn)
    held.append(conn)
print("open", len(held), flush=True)
time.sleep(3600)
