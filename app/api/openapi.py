"""The OpenAPI 3.1 document, built from the route declarations and their msgspec types."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.routing import BaseRoute

from app.api.routing import MAX_ID, PUBLIC, RouteSpec, route_spec

_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string", "description": "Chinese message for the user"},
            "status": {"type": "integer"},
            "code": {"type": "string", "description": "stable machine code"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
        },
    }


def build_openapi(routes: list[BaseRoute], version: str) -> dict[str, Any]:
    specs: list[RouteSpec] = [s for s in (route_spec(r) for r in routes) if s is not None and s.kind == "api"]
    types = [t for s in specs for t in (s.body, s.response, s.query) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for s in specs:
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", s.path)
        params = [
            {
                "name": m.group(1),
                "in": "path",
                "required": True,
                "schema": (
                    {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}
                    if m.group(2) == "int"
                    else {"type": "string"}
                ),
            }
            for m in _PARAM.finditer(s.path)
        ]
        if s.query is not None:
            qschema = by_type[s.query]
            ref = qschema.get("$ref", "").rsplit("/", 1)[-1]
            resolved: dict[str, Any] = components.get(ref) or qschema
            props = resolved.get("properties", {})
            required = set(resolved.get("required", []))
            params += [{"name": n, "in": "query", "required": n in required, "schema": p} for n, p in props.items()]
        for method in s.methods:
            op: dict[str, Any] = {
                "summary": s.summary,
                "tags": [s.tag],
                "x-roles": sorted(s.roles),
                "parameters": params,
                "responses": {
                    str(s.status): {
                        "description": "OK",
                        "content": {
                            s.media_type: {
                                "schema": by_type[s.response]
                                if s.response
                                else ({"type": "string"} if s.media_type != "application/json" else {})
                            }
                        },
                    },
                    "default": {
                        "description": "Problem (RFC 9457)",
                        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    },
                },
            }
            if PUBLIC not in s.roles:
                op["security"] = [{"bearer": []}]
            if s.body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_type[s.body]}}}
            paths.setdefault(path, {})[method.lower()] = op
    components["Problem"] = _problem_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "HuiYue 汇约 一站式检查预约平台 API", "version": version},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
