"""Validate a custom resource against its CRD's schema, as strictly as `kubectl apply --validate=strict`.

The CRD's `openAPIV3Schema` is a JSON schema with Kubernetes extensions; an object schema that lists its
properties rejects any other (the API server prunes or refuses unknown fields), unless it preserves them.
CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "crds"


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def crd_errors(crd_file: str, resource: dict[str, Any]) -> list[str]:
    """What is wrong with `resource` by the CRD in tests/fixtures/crds/`crd_file`: [] when it is valid."""
    crd = yaml.safe_load((FIXTURES / crd_file).read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    api_version = resource.get("apiVersion", "")
    versions = {f"{group}/{v['name']}": v for v in crd["spec"]["versions"] if v.get("served")}
    if resource.get("kind") != kind or api_version not in versions:
        return [
            f"{resource.get('kind')} {api_version} is not served by this CRD ({kind}, {sorted(versions)})"
        ]
    schema = _closed(versions[api_version]["schema"]["openAPIV3Schema"])
    validator = jsonschema_rs.Draft4Validator(schema)
    return [
        f"{'.'.join(map(str, error.instance_path))}: {error.message}"
        for error in validator.iter_errors(resource)
    ]
