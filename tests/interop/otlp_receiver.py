#!/usr/bin/env python3
"""An OTLP trace receiver built on the official OpenTelemetry protobuf definitions (the
opentelemetry-proto package) and gRPC's C core (grpcio): what a collector is to mesh-agent,
written by neither. The end-to-end tests read what it received; the sandbox prints it.

  otlp_receiver.py serve --host 10.0.0.1 --grpc-port 4317 --http-port 4318 --out spans.jsonl
  otlp_receiver.py tree --spans spans.jsonl [--trace TRACE_ID]

`serve` takes TraceService/Export over gRPC and POST /v1/traces (application/x-protobuf)
over HTTP, and appends each span it receives to --out as one JSON object per line:
trace_id, span_id, parent_span_id (hex, "" for a root), name, kind (CLIENT, SERVER, ...),
service (the resource's service.name), start and end (Unix ns), status (OK, ERROR, UNSET),
attributes (key: value), events (name: ns after start).
`tree` prints the spans of each trace (or of one) as a tree, children under their parent.
"""
import argparse
import http.server
import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

# The most of one HTTP export the receiver reads.
MAX_BODY = 16 * 1024 * 1024


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def span_records(request):
    for resource_spans in request.resource_spans:
        resource = {kv.key: value_of(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    "service": resource.get("service.name", ""),
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "status": trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix(
                        "STATUS_CODE_"
                    ),
                    "attributes": {kv.key: value_of(kv.value) for kv in span.attributes},
                    "events": {
                        e.name: e.time_unix_nano - span.start_time_unix_nano for e in span.events
                    },
                }


class Sink:
    """Appends spans to the output file, one line each, whichever transport brought them."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.out = open(path, "a", encoding="utf-8")

    def take(self, request):
        with self.lock:
            for record in span_records(request):
                self.out.write(json.dumps(record) + "\n")
            self.out.flush()


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        self.sink.take(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def http_handler(sink):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            if self.path != "/v1/traces" or not 0 <= length <= MAX_BODY:
                self.send_error(404 if self.path != "/v1/traces" else 413)
                return
            if self.headers.get("content-type") != "application/x-protobuf":
                self.send_error(415)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(length))
            sink.take(request)
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def serve(args):
    sink = Sink(args.out)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(sink), server)
    server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    server.start()
    web = http.server.ThreadingHTTPServer((args.host, args.http_port), http_handler(sink))
    print(f"receiving OTLP on {args.host}:{args.grpc_port} (gRPC), :{args.http_port} (HTTP)", flush=True)
    web.serve_forever()


def load(path):
    with open(path, encoding="utf-8") as spans:
        return [json.loads(line) for line in spans if line.strip()]


def tree(args):
    spans = load(args.spans)
    traces = {}
    for span in spans:
        traces.setdefault(span["trace_id"], []).append(span)
    for trace_id, members in traces.items():
        if args.trace and trace_id != args.trace:
            continue
        print(f"trace {trace_id}")
        ids = {s["span_id"] for s in members}
        children = {}
        for span in members:
            parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
            children.setdefault(parent, []).append(span)

        def show(parent, depth):
            for span in sorted(children.get(parent, []), key=lambda s: s["start"]):
                took = (span["end"] - span["start"]) / 1e6
                attributes = span["attributes"]
                facts = [
                    f"{key.removeprefix('appmesh.')}={attributes[key]}"
                    for key in ("appmesh.route", "appmesh.cluster", "appmesh.upstream_host",
                                "http.response.status_code")
                    if key in attributes
                ]
                remote = "" if depth or not span["parent_span_id"] else f" (parent {span['parent_span_id']}, not received)"
                print(f"{'  ' * (depth + 1)}{span['service']}: {span['kind']} {span['name']!r} "
                      f"{took:.2f} ms {' '.join(facts)}{remote}")
                show(span["span_id"], depth + 1)

        show(None, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--grpc-port", type=int, default=4317)
    s.add_argument("--http-port", type=int, default=4318)
    s.add_argument("--out", required=True)
    t = commands.add_parser("tree")
    t.add_argument("--spans", required=True)
    t.add_argument("--trace")
    args = parser.parse_args()
    {"serve": serve, "tree": tree}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
