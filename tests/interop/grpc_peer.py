#!/usr/bin/env python3
"""A gRPC peer built on gRPC's C core (Python grpcio), for interoperability tests of the
mesh: an implementation the project did not write, on both ends.

  grpc_peer.py serve --port 8080 --name v1
  grpc_peer.py call --target 10.0.0.2:8080 [--authority api.m.local:8080]
  grpc_peer.py check --target 10.0.0.2:8080 [--authority ...] [--metadata k=v]

`serve` answers the service `interop.Echo` (raw bytes, no generated code):
  Unary         echoes the request; echoes request metadata `x-meta` as trailing metadata
                `x-echo`; `x-fail: CODE` answers with that status instead
  ServerStream  request = ASCII count N: N messages of 100 bytes
  ClientStream  answers the total bytes of the messages it got
  Bidi          echoes each message as it comes
  Slow          answers after the request's ASCII milliseconds (deadline tests); notes when
                its caller cancelled
The server also answers grpc.health.v1.Health/Check (SERVING), so other implementations'
health clients can call it; `check` is such a client, for other implementations' servers.
`call` runs every case against a target and prints one JSON object: per case, the status,
messages, trailing metadata and, where timing is the point, whether it stayed in bounds. The
test compares what it prints direct and through the mesh.
"""
import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "interop.Echo"
LARGE = 4 * 1024 * 1024
# grpc.health.v1.HealthCheckResponse{status: SERVING}, encoded by hand (field 1, varint 1).
SERVING = b"\x08\x01"
OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def serve(port, name):
    cancelled = []

    def unary(request, context):
        metadata = dict(context.invocation_metadata())
        if "x-fail" in metadata:
            code = grpc.StatusCode[metadata["x-fail"]]
            context.abort(code, f"{name} failed as asked")
        trailing = [("x-served-by", name)]
        if "x-meta" in metadata:
            trailing.append(("x-echo", metadata["x-meta"]))
        context.set_trailing_metadata(trailing)
        return request

    def server_stream(request, context):
        for i in range(int(request.decode())):
            yield bytes([i % 256]) * 100

    def client_stream(requests, context):
        return str(sum(len(r) for r in requests)).encode()

    def bidi(requests, context):
        for request in requests:
            yield request

    def slow(request, context):
        deadline = time.monotonic() + int(request.decode()) / 1000
        while time.monotonic() < deadline:
            if not context.is_active():
                cancelled.append(time.monotonic())
                return b""
            time.sleep(0.01)
        return b"done"

    def cancellations(request, context):
        return str(len(cancelled)).encode()

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Cancellations": grpc.unary_unary_rpc_method_handler(cancellations),
    }
    def health(request, context):
        return SERVING

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(SERVICE, handlers),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(health)}),
    ])
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(f"grpc_peer {name} serving on {port}", flush=True)
    server.wait_for_termination()


def method(channel, kind, name):
    path = f"/{SERVICE}/{name}"
    return getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)


def status_of(error):
    return {"code": error.code().name, "details": error.details()}


def trailing(call):
    return sorted([k, v] for k, v in (call.trailing_metadata() or ()) if k.startswith("x-"))


def run_cases(channel):
    results = {}

    def case(name, fn):
        try:
            results[name] = fn()
        except grpc.RpcError as error:
            results[name] = {"error": status_of(error)}

    unary = method(channel, "unary_unary", "Unary")

    def small():
        response, call = unary.with_call(b"hello", metadata=[("x-meta", "m1")], timeout=10)
        return {"response": response.decode(), "trailing": trailing(call)}

    def large():
        payload = bytes(range(256)) * (LARGE // 256)
        response = unary(payload, timeout=30)
        return {"bytes": len(response), "same": response == payload}

    def failing():
        unary(b"x", metadata=[("x-fail", "NOT_FOUND")], timeout=10)
        return {"unexpected": "ok"}

    def server_stream():
        messages = list(method(channel, "unary_stream", "ServerStream")(b"200", timeout=10))
        return {"messages": len(messages), "bytes": sum(len(m) for m in messages),
                "last": messages[-1][0] if messages else None}

    def client_stream():
        requests = (bytes([i % 256]) * (i + 1) for i in range(300))
        return {"response": method(channel, "stream_unary", "ClientStream")(requests, timeout=10).decode()}

    def bidi():
        requests = [bytes([i % 256]) * 1000 for i in range(100)]
        replies = list(method(channel, "stream_stream", "Bidi")(iter(requests), timeout=10))
        return {"messages": len(replies), "same": replies == requests}

    def deadline():
        started = time.monotonic()
        try:
            method(channel, "unary_unary", "Slow")(b"3000", timeout=0.3)
            return {"unexpected": "ok"}
        except grpc.RpcError as error:
            elapsed = time.monotonic() - started
            return {"code": error.code().name, "within_1s": elapsed < 1.0}

    def cancel():
        future = method(channel, "unary_unary", "Slow").future(b"3000", timeout=10)
        time.sleep(0.3)
        future.cancel()
        # The cancellation travels to the server (RST_STREAM through every hop).
        deadline = time.monotonic() + 2
        count = 0
        while time.monotonic() < deadline:
            count = int(method(channel, "unary_unary", "Cancellations")(b"", timeout=5).decode())
            if count > 0:
                break
            time.sleep(0.05)
        return {"client": "CANCELLED" if future.cancelled() else "not cancelled",
                "server_saw_cancellation": count > 0}

    for name, fn in [("unary", small), ("large_unary", large), ("status", failing),
                     ("server_stream", server_stream), ("client_stream", client_stream),
                     ("bidi", bidi), ("deadline", deadline), ("cancel", cancel)]:
        case(name, fn)
    return results


def call(target, authority):
    options = list(OPTIONS)
    if authority:
        options.append(("grpc.default_authority", authority))
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        print(json.dumps(run_cases(channel), sort_keys=True), flush=True)


def check(target, authority, metadata):
    """One grpc.health.v1.Health/Check; prints status=SERVING or error=CODE."""
    options = [("grpc.default_authority", authority)] if authority else []
    pairs = [tuple(pair.split("=", 1)) for pair in metadata]
    with grpc.insecure_channel(target, options=options) as channel:
        check_call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                         request_serializer=None, response_deserializer=None)
        try:
            response = check_call(b"", metadata=pairs, timeout=10)
            print("status=SERVING" if response == SERVING else f"status=other {response!r}")
        except grpc.RpcError as error:
            print(f"error={error.code().name}")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--authority")
    h = sub.add_parser("check")
    h.add_argument("--target", required=True)
    h.add_argument("--authority")
    h.add_argument("--metadata", action="append", default=[])
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.name)
    elif args.command == "check":
        check(args.target, args.authority, args.metadata)
    else:
        call(args.target, args.authority)


if __name__ == "__main__":
    sys.exit(main())
