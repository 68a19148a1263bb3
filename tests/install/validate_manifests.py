#!/usr/bin/env python3
"""Validates Kubernetes manifests with implementations the project did not write.

  validate_manifests.py objects FILE...
      Every object of the multi-document YAML FILEs: built-in kinds (and the CRDs themselves)
      against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields
      fail); custom resources of a CRD among the same files against that CRD's
      openAPIV3Schema (jsonschema). Kinds with no schema here are listed, not passed.
  validate_manifests.py resources --crds DIR FILE
      FILE: a JSON list of custom resources; each against its CRD in DIR.

Prints one line per failure and a summary; exit 1 on any failure.
"""
import argparse
import glob
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30.0"


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def crd_schemas(objects):
    """(group, kind) -> openAPIV3Schema of the served version."""
    schemas = {}
    for crd in objects:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def name_of(obj):
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')} {meta.get('namespace', '')}/{meta.get('name', '')}"


def check_custom(obj, schemas):
    schema = schemas.get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        return None
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def objects_command(files):
    objects = [o for f in files for o in documents(f)]
    schemas = crd_schemas(objects)
    failures, checked, unchecked = [], 0, []
    for obj in objects:
        errors = check_custom(obj, schemas)
        if errors is None:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unchecked.append(name_of(obj))
                continue
            except kubernetes_validate.ValidationError as error:
                errors = [f"{'/'.join(map(str, error.path))}: {error.message}"]
            else:
                errors = []
        checked += 1
        failures += [f"{name_of(obj)}: {e}" for e in errors]
    return report(failures, checked, unchecked)


def resources_command(crd_dir, path):
    crds = [o for f in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))) for o in documents(f)]
    schemas = crd_schemas(crds)
    with open(path) as f:
        resources = json.load(f)
    failures, unchecked = [], []
    for item in resources:
        obj, origin = item["object"], item["origin"]
        errors = check_custom(obj, schemas)
        if errors is None:
            unchecked.append(f"{origin}: {name_of(obj)}")
            continue
        failures += [f"{origin}: {name_of(obj)}: {e}" for e in errors]
    return report(failures, len(resources) - len(unchecked), unchecked)


def report(failures, checked, unchecked):
    for failure in failures:
        print(f"invalid: {failure}")
    for name in unchecked:
        print(f"no schema here (not checked): {name}")
    print(f"{checked} checked, {len(failures)} failures, {len(unchecked)} without a schema")
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    objects = commands.add_parser("objects")
    objects.add_argument("files", nargs="+")
    resources = commands.add_parser("resources")
    resources.add_argument("--crds", required=True)
    resources.add_argument("file")
    args = parser.parse_args()
    if args.command == "objects":
        return objects_command(args.files)
    return resources_command(args.crds, args.file)


if __name__ == "__main__":
    sys.exit(main())
