#!/usr/bin/env python3
"""An instrumented application for the tracing tests: an HTTP server that continues the
W3C trace context it is called with and exports its own span to an OTLP collector over gRPC
(the official opentelemetry-proto messages, grpcio), as an application with an
OpenTelemetry SDK does.

  otlp_app.py --port 8080 --name v1 --collector 10.0.0.1:4317

Every GET is answered 200 with a JSON body: the name, and the trace headers it received
(traceparent, tracestate, x-amzn-trace-id, b3, x-b3-*). When the request's traceparent says
sampled, a SERVER span (service `app-NAME`, child of the traceparent's span) is exported.
"""
import argparse
import http.server
import json
import os
import time

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

TRACE_HEADERS = ("traceparent", "tracestate", "x-amzn-trace-id", "b3",
                 "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled")


def parse_traceparent(value):
    parts = (value or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    return bytes.fromhex(parts[1]), bytes.fromhex(parts[2]), int(parts[3], 16) & 1 == 1


def make_handler(name, exporter):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            start = time.time_ns()
            received = {h: self.headers[h] for h in TRACE_HEADERS if self.headers[h] is not None}
            body = json.dumps({"name": name, "headers": received}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            context = parse_traceparent(received.get("traceparent"))
            if context and context[2]:
                exporter(context, start, time.time_ns(), self.path)

        def log_message(self, *args):
            pass

    return Handler


def span_exporter(name, collector):
    stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(collector))

    def export(context, start, end, path):
        trace_id, parent, _ = context
        span = trace_pb2.Span(
            trace_id=trace_id, span_id=os.urandom(8), parent_span_id=parent,
            name=f"GET {path}", kind=trace_pb2.Span.SPAN_KIND_SERVER,
            start_time_unix_nano=start, end_time_unix_nano=end,
            attributes=[common_pb2.KeyValue(key="url.path", value=common_pb2.AnyValue(string_value=path))],
        )
        resource = resource_pb2.Resource(attributes=[
            common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=f"app-{name}"))
        ])
        request = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
            trace_pb2.ResourceSpans(resource=resource, scope_spans=[trace_pb2.ScopeSpans(spans=[span])])
        ])
        try:
            stub.Export(request, timeout=5)
        except grpc.RpcError as error:
            print(f"export failed: {error}", flush=True)

    return export


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--collector", required=True)
    args = parser.parse_args()
    handler = make_handler(args.name, span_exporter(args.name, args.collector))
    http.server.ThreadingHTTPServer(("0.0.0.0", args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
