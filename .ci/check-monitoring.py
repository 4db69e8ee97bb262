#!/usr/bin/env python3
"""Checks the Prometheus-operator objects of a rendered kustomization strictly, and writes
the PrometheusRule's rule groups out for promtool.

kubernetes-validate knows only the core API, so for PodMonitor and PrometheusRule the
schemas come from the operator's CRDs as cloudcoil-models-prometheus-operator 0.80.1.0
(operator v0.80, the newest release that installs on Python 3.11) generates them, made strict (an unknown field anywhere is an error, as `kubectl apply
--validate=strict` would say).

usage: check-monitoring.py RENDERED.yaml RULES_OUT.yaml
"""
import sys

import jsonschema
import yaml
from cloudcoil.models.prometheus_operator import v1


def strict(schema):
    """Every object with declared properties rejects undeclared ones."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        # Go's regexps allow a flag group after `^`; Python's want it first.
        if isinstance(schema.get("pattern"), str) and schema["pattern"].startswith("^(?i)"):
            schema["pattern"] = "(?i)^" + schema["pattern"][5:]
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


MODELS = {"PrometheusRule": v1.PrometheusRule, "PodMonitor": v1.PodMonitor}


def main(rendered, rules_out):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    seen = {}
    for doc in docs:
        kind = doc.get("kind")
        if doc.get("apiVersion") != "monitoring.coreos.com/v1":
            continue
        model = MODELS.get(kind)
        if model is None:
            sys.exit(f"{kind}: no schema to check it against")
        schema = strict(model.model_json_schema(by_alias=True))
        # ObjectMeta's generated schema is partial; kubernetes-validate checks metadata
        # for the core kinds, and kustomize wrote these.
        schema["$defs"].pop("ObjectMeta", None)
        schema["properties"]["metadata"] = {"type": "object"}
        try:
            jsonschema.validate(doc, schema)
        except jsonschema.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path)
            sys.exit(f"{kind}/{doc['metadata']['name']}: {path}: {e.message}")
        seen[kind] = doc
    for kind in MODELS:
        if kind not in seen:
            sys.exit(f"no {kind} in {rendered}")
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": seen["PrometheusRule"]["spec"]["groups"]}, f, sort_keys=False)
    rules = sum(len(g["rules"]) for g in seen["PrometheusRule"]["spec"]["groups"])
    print(f"monitoring: PodMonitor and PrometheusRule ({rules} rules) valid against the operator's CRD schemas (strict)")


if __name__ == "__main__":
    main(*sys.argv[1:])
