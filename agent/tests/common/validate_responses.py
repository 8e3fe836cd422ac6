"""Validates API responses against the OpenAPI document's response schemas.

Reads {"doc": <OpenAPI document>, "cases": [[method, path template, status, body], ...]} on
stdin; prints every violation and exits 1 if there is one. Run by agent/tests/golden.rs with
the Python of /opt/berth-tools/venv (jsonschema comes with openapi-spec-validator).
"""

import json
import sys

from jsonschema import Draft202012Validator

data = json.load(sys.stdin)
doc = data["doc"]
failures = []
for method, path, status, body in data["cases"]:
    where = f"{method.upper()} {path} {status}"
    try:
        response = doc["paths"][path][method]["responses"][str(status)]
        schema = response["content"]["application/json"]["schema"]
    except KeyError as e:
        failures.append(f"{where}: not in the document ({e})")
        continue
    # The schema's `#/components/...` references resolve against this root.
    root = dict(schema, components=doc["components"])
    for error in Draft202012Validator(root).iter_errors(body):
        at = "".join(f"[{p!r}]" for p in error.absolute_path)
        failures.append(f"{where}: body{at}: {error.message}")
for f in failures:
    print(f)
print(f"{len(data['cases'])} responses checked, {len(failures)} violations")
sys.exit(1 if failures else 0)
