#!/usr/bin/env python3
"""Validates every manifest under manifests/ against the real schemas.

- Kubernetes kinds: kubernetes-validate (PyPI), strict mode, for one Kubernetes version.
- The mesh's custom resources (the examples, the GatewayClass): the openAPIV3Schema of their
  own CRD in manifests/crds/ (the one the API server would check), with jsonschema.
- The CRDs themselves: kubernetes-validate (CustomResourceDefinition is a Kubernetes kind).

Usage: scripts/validate-manifests.py [KUBERNETES_VERSION]   (default 1.37.0, the newest kubernetes-validate knows)
Exit status 0 when everything passes; each failure is printed with its file and object.
"""
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "manifests")
VERSION = sys.argv[1] if len(sys.argv) > 1 else "1.37.0"


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def nullable(schema):
    """OpenAPI's `nullable: true` as JSON Schema: null is also allowed."""
    if isinstance(schema, dict):
        out = {k: nullable(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(schema, list):
        return [nullable(v) for v in schema]
    return schema


def crd_schemas():
    schemas = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "crds", "*.yaml"))):
        for crd in documents(path):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = nullable(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main():
    schemas = crd_schemas()
    files = sorted(
        p
        for p in glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True)
        if os.path.basename(p) != "kustomization.yaml"
    )
    failures, checked = [], 0
    for path in files:
        rel = os.path.relpath(path, os.path.join(ROOT, ".."))
        for doc in documents(path):
            name = f"{rel}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            checked += 1
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in schemas:
                    jsonschema.validate(doc, schemas[key])
                else:
                    kubernetes_validate.validate(doc, VERSION, True)
            except Exception as e:  # each failure is reported, none stops the others
                message = getattr(e, "message", str(e))
                failures.append(f"{name}: {message}")
    for f in failures:
        print(f"FAIL {f}")
    print(f"{checked} objects in {len(files)} files checked against Kubernetes {VERSION} and the mesh's CRDs: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
