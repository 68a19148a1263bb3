#!/usr/bin/env python3
"""A stand-in for the AWS App Mesh API, for running App Mesh users' own scripts (the AWS CLI,
pointed here by AWS_ENDPOINT_URL) against mesh-agent's validation.

Every operation of the API model (service-2.json: its HTTP method, URI template, input and
output shapes) is routed; create/update/delete change a whole-mesh state kept as API JSON
files in --state, and each change is accepted only when `mesh-agent validate` accepts the
state it makes (references included) — as App Mesh refuses a request that would leave the
mesh invalid. Each accepted change is then compiled (`mesh-agent compile`). One JSON line per
change goes to --log: operation, resource, verdicts, first error.

  appmesh_api.py --model service-2.json --mesh-agent BIN --state DIR --log FILE
Prints `listening on PORT` once it serves (127.0.0.1).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse


def routes(model):
    """(method, regex of the URI template, operation name)."""
    found = []
    for name, op in model["operations"].items():
        http = op["http"]
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", http["requestUri"].split("?")[0])
        found.append((http["method"], re.compile(f"^{pattern}$"), name))
    return found


class State:
    def __init__(self, args, model):
        self.dir = args.state
        self.mesh_agent = args.mesh_agent
        self.log = args.log
        self.model = model

    def path(self, identity):
        return os.path.join(self.dir, "--".join(identity) + ".json")

    def check(self):
        """`mesh-agent validate` of the state: None when valid, else its first error line."""
        if not os.listdir(self.dir):
            return None
        result = subprocess.run([self.mesh_agent, "validate", self.dir],
                                capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return None
        errors = [l for l in result.stdout.splitlines() if "error:" in l]
        return (errors or [result.stdout.strip() or result.stderr.strip()])[0]

    def compiles(self):
        if not os.listdir(self.dir):
            return None
        result = subprocess.run([self.mesh_agent, "compile", self.dir],
                                capture_output=True, text=True, timeout=60)
        return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]

    def record(self, entry):
        with open(self.log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def identity_of(kind, values):
    """The name members of a resource of `kind` (VirtualNode: meshName, virtualNodeName)."""
    lower = kind[0].lower() + kind[1:]
    parents = {"Route": ["virtualRouterName"], "GatewayRoute": ["virtualGatewayName"]}
    names = ["meshName"] + parents.get(kind, []) + ([f"{lower}Name"] if kind != "Mesh" else [])
    return names, [values.get(n, "") for n in names]


class Handler(BaseHTTPRequestHandler):
    state = None
    table = None

    def log_message(self, *args):
        pass

    def reply(self, status, body, error_type=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def fail(self, status, error_type, message):
        self.reply(status, {"message": message}, error_type)

    def handle_any(self):
        url = urlparse(self.path)
        for method, pattern, operation in self.table:
            match = pattern.match(url.path)
            if method == self.command and match:
                break
        else:
            return self.fail(404, "NotFoundException", f"no operation {self.command} {url.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        values = {**body, **match.groupdict()}
        parsed = re.match(r"(Create|Update|Delete|Describe)(\w+)$", operation)
        if parsed is None:
            # Lists and tags: nothing the scripts' meshes depend on.
            return self.reply(200, {})
        verb, kind = parsed.groups()
        names, identity = identity_of(kind, values)
        path = self.state.path([kind] + identity)
        exists = os.path.exists(path)
        if verb == "Describe":
            if not exists:
                return self.fail(404, "NotFoundException", f"{kind} {'/'.join(identity)} not found")
            with open(path) as f:
                return self.reply(200, self.data(json.load(f)))
        if verb == "Create" and exists:
            return self.fail(409, "ConflictException", f"{kind} {'/'.join(identity)} exists")
        if verb in ("Update", "Delete") and not exists:
            return self.fail(404, "NotFoundException", f"{kind} {'/'.join(identity)} not found")
        previous = open(path).read() if exists else None
        resource = {n: v for n, v in zip(names, identity)}
        resource["spec"] = body.get("spec", {})
        if verb == "Delete":
            with open(path) as f:
                resource = json.load(f)
            os.remove(path)
        else:
            with open(path, "w") as f:
                json.dump(resource, f)
        error = self.state.check()
        entry = {"operation": operation, "resource": "/".join(identity), "valid": error is None}
        if error is not None:
            # Refused: the state stays as it was.
            if previous is None:
                os.remove(path)
            else:
                with open(path, "w") as f:
                    f.write(previous)
            entry["error"] = error
            self.state.record(entry)
            status, error_type = (409, "ResourceInUseException") if verb == "Delete" else (400, "BadRequestException")
            return self.fail(status, error_type, error)
        compile_error = self.state.compiles()
        entry["compiled"] = compile_error is None
        if compile_error:
            entry["error"] = compile_error
        self.state.record(entry)
        self.reply(200, self.data(resource))

    def data(self, resource):
        """The output's payload (the whole body, in the REST-JSON protocol): the resource with
        metadata and an ACTIVE status."""
        metadata = {"uid": str(uuid.uuid4()), "version": 1, "meshOwner": "123456789012",
                    "resourceOwner": "123456789012", "createdAt": 0, "lastUpdatedAt": 0,
                    "arn": f"arn:aws:appmesh:us-east-1:123456789012:mesh/{resource.get('meshName', '')}"}
        return {**resource, "metadata": metadata, "status": {"status": "ACTIVE"}}

    do_GET = do_PUT = do_POST = do_DELETE = handle_any


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--mesh-agent", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    with open(args.model) as f:
        model = json.load(f)
    Handler.state = State(args, model)
    Handler.table = routes(model)
    # One request at a time: each change is checked against the state the previous left.
    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
