#!/usr/bin/env python3
"""A stand-in for kube-apiserver in tests: the list/watch protocol the Kubernetes source uses.

No kube-apiserver can be installed on the test machines; this serves what a client of the API
server sees, from memory:

* lists with a resourceVersion and paging (`limit`, `continue`; a continue token older than
  the compacted history is 410 Gone, as etcd compaction makes it);
* watches (`?watch=1&resourceVersion=N`): ADDED/MODIFIED/DELETED events after N as JSON
  lines in a chunked response, BOOKMARK events when asked for (`allowWatchBookmarks`), and an
  ERROR event with code 410 when N is older than the compacted history (the client relists);
* PATCH of `/status` (merge patch) and POST/PATCH of Events, recorded for the test to read.

The test drives it on /_test/: PUT objects (created or updated), DELETE objects, POST
compact (forgets the history and closes every watch, so watchers must relist), GET recorded
(status patches and events) and stats (lists served, 410s sent).

Plain HTTP on the address given; bodies over 1 MiB are refused; a watch lasts at most
--max-watch seconds (the client's timeoutSeconds when shorter).
"""
import argparse
import base64
import copy
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MAX_BODY = 1 << 20

# (group, version, plural) -> (kind, namespaced)
RESOURCES = {
    ("", "v1", "namespaces"): ("Namespace", False),
    ("", "v1", "pods"): ("Pod", True),
    ("", "v1", "services"): ("Service", True),
    ("", "v1", "events"): ("Event", True),
    ("discovery.k8s.io", "v1", "endpointslices"): ("EndpointSlice", True),
    ("events.k8s.io", "v1", "events"): ("Event", True),
    ("appmesh.k8s.aws", "v1beta2", "meshes"): ("Mesh", False),
    ("appmesh.k8s.aws", "v1beta2", "virtualnodes"): ("VirtualNode", True),
    ("appmesh.k8s.aws", "v1beta2", "virtualservices"): ("VirtualService", True),
    ("appmesh.k8s.aws", "v1beta2", "virtualrouters"): ("VirtualRouter", True),
    ("appmesh.k8s.aws", "v1beta2", "virtualgateways"): ("VirtualGateway", True),
    ("appmesh.k8s.aws", "v1beta2", "gatewayroutes"): ("GatewayRoute", True),
}
BY_KIND = {
    (g + "/" + v if g else v, kind): (g, v, plural)
    for (g, v, plural), (kind, _) in RESOURCES.items()
}


def api_version(resource):
    group, version, _ = resource
    return f"{group}/{version}" if group else version


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Store:
    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 1
        self.objects = {}  # resource -> {(ns, name): object}
        self.history = []  # (rv, resource, type, object)
        self.compacted = 0  # history at or below this is gone
        self.generation = 0  # bumped by compaction: open watches end
        self.recorded = {"status_patches": [], "events": []}
        self.stats = {"lists": {}, "gone": 0, "watches": 0}

    def _event(self, resource, kind, obj):
        self.history.append((self.rv, resource, kind, copy.deepcopy(obj)))
        self.lock.notify_all()

    def apply(self, obj, record_status=None):
        """Creates or replaces `obj` (a status patch when `record_status`)."""
        resource = BY_KIND.get((obj.get("apiVersion"), obj.get("kind")))
        if resource is None:
            raise KeyError(f"unknown apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')}")
        _, namespaced = RESOURCES[resource]
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace", "default") if namespaced else None
        if namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        key = (namespace, meta["name"])
        with self.lock:
            objects = self.objects.setdefault(resource, {})
            old = objects.get(key)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            objects[key] = obj
            self._event(resource, "MODIFIED" if old else "ADDED", obj)
            return copy.deepcopy(obj)

    def delete(self, obj):
        resource = BY_KIND[(obj["apiVersion"], obj["kind"])]
        _, namespaced = RESOURCES[resource]
        meta = obj["metadata"]
        key = (meta.get("namespace", "default") if namespaced else None, meta["name"])
        with self.lock:
            old = self.objects.get(resource, {}).pop(key, None)
            if old is None:
                return False
            self.rv += 1
            old["metadata"]["resourceVersion"] = str(self.rv)
            self._event(resource, "DELETED", old)
            return True

    def compact(self):
        with self.lock:
            self.rv += 1
            self.compacted = self.rv
            self.history.clear()
            self.generation += 1
            self.lock.notify_all()

    def get(self, resource, namespace, name):
        with self.lock:
            return copy.deepcopy(self.objects.get(resource, {}).get((namespace, name)))

    def items(self, resource, namespace):
        with self.lock:
            objects = self.objects.get(resource, {})
            keys = sorted(k for k in objects if namespace is None or k[0] == namespace)
            return self.rv, [copy.deepcopy(objects[k]) for k in keys]


STORE = Store()
MAX_WATCH = 60.0
BOOKMARK_EVERY = 1.0


def parse_path(path):
    """(resource, namespace, name, subresource) of an API path, or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    resource = (group, version, rest[0])
    if resource not in RESOURCES:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return resource, namespace, name, sub


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        print("%s - %s" % (self.address_string(), fmt % args), flush=True)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return json.loads(self.rfile.read(length) or b"null")

    # --- the API ---------------------------------------------------------------------
    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path.startswith("/_test/"):
            return self.test_get(url.path)
        parsed = parse_path(url.path)
        if parsed is None:
            return self.reply(404, status(404, "NotFound", f"no resource at {url.path}"))
        resource, namespace, name, _ = parsed
        if name is not None:
            obj = STORE.get(resource, namespace, name)
            if obj is None:
                return self.reply(404, status(404, "NotFound", f"{name} not found"))
            return self.reply(200, obj)
        if query.get("watch") in ("1", "true"):
            return self.watch(resource, namespace, query)
        return self.list(resource, namespace, query)

    def list(self, resource, namespace, query):
        stats = STORE.stats["lists"]
        stats[resource[2]] = stats.get(resource[2], 0) + 1
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        if token:
            list_rv, start = json.loads(base64.b64decode(token))
            if list_rv < STORE.compacted:
                STORE.stats["gone"] += 1
                return self.reply(410, status(410, "Expired",
                                              "The provided continue parameter is too old"))
        else:
            list_rv, start = None, 0
        rv, items = STORE.items(resource, namespace)
        list_rv = list_rv or rv
        page = items[start:start + limit] if limit else items[start:]
        meta = {"resourceVersion": str(list_rv)}
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(
                json.dumps([list_rv, start + limit]).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        kind, _ = RESOURCES[resource]
        self.reply(200, {"kind": kind + "List", "apiVersion": api_version(resource),
                         "metadata": meta, "items": page})

    def watch(self, resource, namespace, query):
        STORE.stats["watches"] += 1
        since = int(query.get("resourceVersion") or 0)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        timeout = min(float(query.get("timeoutSeconds") or MAX_WATCH), MAX_WATCH)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event):
            data = (json.dumps(event) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            if since and since < STORE.compacted:
                STORE.stats["gone"] += 1
                send({"type": "ERROR",
                      "object": status(410, "Expired", f"too old resource version: {since}")})
                return
            deadline = time.monotonic() + timeout
            with STORE.lock:
                generation = STORE.generation
            last_sent = time.monotonic()
            while time.monotonic() < deadline:
                with STORE.lock:
                    if STORE.generation != generation:
                        return  # compacted: the watch ends, the client resumes or relists
                    # Every event up to `current` is among `events`.
                    current = STORE.rv
                    events = [(rv, kind, obj) for rv, res, kind, obj in STORE.history
                              if res == resource and rv > since and (
                                  namespace is None
                                  or obj["metadata"].get("namespace") == namespace)]
                    if not events:
                        STORE.lock.wait(0.2)
                for rv, kind, obj in events:
                    send({"type": kind, "object": obj})
                    since = rv
                    last_sent = time.monotonic()
                if bookmarks and time.monotonic() - last_sent > BOOKMARK_EVERY:
                    kind_name, _ = RESOURCES[resource]
                    send({"type": "BOOKMARK", "object": {
                        "kind": kind_name, "apiVersion": api_version(resource),
                        "metadata": {"resourceVersion": str(current)}}})
                    since = max(since, current)
                    last_sent = time.monotonic()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True

    def do_POST(self):
        url = urlparse(self.path)
        if url.path == "/_test/compact":
            STORE.compact()
            return self.reply(200, {"compacted": STORE.compacted})
        parsed = parse_path(url.path)
        if parsed is None or parsed[0][2] != "events":
            return self.reply(405, status(405, "MethodNotAllowed", "only events are created"))
        try:
            event = self.body()
        except ValueError as error:
            return self.reply(413, status(413, "RequestEntityTooLarge", str(error)))
        event.setdefault("apiVersion", api_version(parsed[0]))
        event.setdefault("kind", "Event")
        event.setdefault("metadata", {}).setdefault("namespace", parsed[1] or "default")
        STORE.recorded["events"].append(copy.deepcopy(event))
        self.reply(201, STORE.apply(event))

    def do_PATCH(self):
        url = urlparse(self.path)
        parsed = parse_path(url.path)
        if parsed is None or parsed[2] is None:
            return self.reply(404, status(404, "NotFound", url.path))
        resource, namespace, name, sub = parsed
        try:
            patch = self.body()
        except ValueError as error:
            return self.reply(413, status(413, "RequestEntityTooLarge", str(error)))
        obj = STORE.get(resource, namespace, name)
        if obj is None:
            return self.reply(404, status(404, "NotFound", f"{name} not found"))
        if resource[2] == "events":
            STORE.recorded["events"].append({"patch": patch, "name": name})
        elif sub == "status":
            STORE.recorded["status_patches"].append({
                "kind": obj["kind"], "namespace": namespace, "name": name, "patch": patch})
            patch = {"status": patch.get("status")}
        else:
            return self.reply(405, status(405, "MethodNotAllowed", "only status is patched"))
        updated = merge_patch(obj, patch)
        updated["metadata"].pop("resourceVersion", None)
        self.reply(200, STORE.apply(updated))

    # --- the test's controls ---------------------------------------------------------
    def test_get(self, path):
        if path == "/_test/recorded":
            return self.reply(200, STORE.recorded)
        if path == "/_test/stats":
            return self.reply(200, STORE.stats)
        self.reply(404, {})

    def do_PUT(self):
        if self.path != "/_test/objects":
            return self.reply(404, {})
        try:
            body = self.body()
            objects = body["items"] if "items" in body else [body]
            applied = [STORE.apply(obj) for obj in objects]
        except (ValueError, KeyError) as error:
            return self.reply(400, {"error": str(error)})
        self.reply(200, {"items": applied})

    def do_DELETE(self):
        if self.path != "/_test/objects":
            return self.reply(404, {})
        body = self.body()
        objects = body["items"] if "items" in body else [body]
        self.reply(200, {"deleted": [STORE.delete(obj) for obj in objects]})


def main():
    global MAX_WATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--max-watch", type=float, default=MAX_WATCH)
    args = parser.parse_args()
    MAX_WATCH = args.max_watch
    server = ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    print(f"listening on {args.listen}:{port}", flush=True)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
