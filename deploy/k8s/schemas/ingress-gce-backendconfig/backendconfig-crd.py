#!/usr/bin/env python3
"""The BackendConfig (cloud.google.com/v1) CRD schema, as GKE's ingress-gce builds it.

ingress-gce publishes no CRD YAML: its controller installs the CRD itself,
condensing the OpenAPI definitions generated from its Go types
(pkg/apis/backendconfig/v1/zz_generated.openapi.go) into one openAPIV3Schema
(pkg/crd/validation.go, condenseSchema). This script does the same from the
pinned copy of that file beside it and writes backendconfig-v1.openapi.json.

  backendconfig-crd.py           write backendconfig-v1.openapi.json
  backendconfig-crd.py --check   exit 1 if the JSON differs from what the Go file gives
"""

import json
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
GO = HERE / "ingress-gce-backendconfig-v1-zz_generated.openapi.go"
OUT = HERE / "backendconfig-v1.openapi.json"
PREFIX = "k8s.io/ingress-gce/pkg/apis/backendconfig/v1."
TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<punct>[{}:,()])|(?P<word>[^\s{}:,()"]+))')


def tokens(text):
    pos, out = 0, []
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
        if m["str"] is not None:
            out.append(("str", json.loads(m["str"])))
        elif m["punct"]:
            out.append(("p", m["punct"]))
        else:
            out.append(("w", m["word"]))
    return out


class Parser:
    """Go composite literals as dicts (keyed fields or map entries), lists and scalars."""

    def __init__(self, toks):
        self.t, self.i = toks, 0

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else (None, None)

    def take(self, want=None):
        tok = self.t[self.i]
        self.i += 1
        if want and tok[1] != want:
            raise SyntaxError(f"expected {want!r}, got {tok!r}")
        return tok

    def value(self):
        kind, v = self.take()
        if kind == "str":
            return v
        if kind == "w" and self.peek()[1] == "(":  # ref("...")
            self.take("(")
            arg = self.value()
            self.take(")")
            return {"$ref": arg}
        if kind == "w" and self.peek()[1] == "{":  # Type{...}
            return self.body()
        if kind == "p" and v == "{":  # an element of a typed composite: {...}
            self.i -= 1
            return self.body()
        return {"true": True, "false": False, "nil": None}.get(v, v)

    def body(self):
        self.take("{")
        items, keyed = [], {}
        while self.peek()[1] != "}":
            if self.peek(1)[1] == ":":
                key = self.take()[1]
                self.take(":")
                keyed[key] = self.value()
            else:
                items.append(self.value())
            if self.peek()[1] == ",":
                self.take(",")
        self.take("}")
        return keyed if keyed or not items else items


def definitions(text):
    out = {}
    for m in re.finditer(r"func schema_pkg_apis_backendconfig_v1_(\w+)\(ref common.ReferenceCallback\) common.OpenAPIDefinition \{\n\treturn common.OpenAPIDefinition", text):
        p = Parser(tokens(text[m.end():]))
        out[PREFIX + m.group(1)] = p.body()["Schema"]
    return out


def props(schema):
    """spec.Schema{SchemaProps: ...} as JSON Schema (what json.Marshal gives)."""
    sp = schema.get("SchemaProps", {})
    out = {}
    if "Description" in sp:
        out["description"] = sp["Description"]
    if sp.get("Type"):
        out["type"] = sp["Type"][0]
    if sp.get("Format"):
        out["format"] = sp["Format"]
    if "Ref" in sp:
        out["$ref"] = sp["Ref"]["$ref"]
    if "Properties" in sp:
        out["properties"] = {k: props(v) for k, v in sp["Properties"].items()}
    if "Items" in sp:
        out["items"] = props(sp["Items"]["Schema"])
    if "Required" in sp:
        out["required"] = sp["Required"]
    if "Enum" in sp:
        out["enum"] = sp["Enum"]
    return out


def condense(schema, defs):
    """pkg/crd/validation.go condenseSchema: references inlined as objects; metadata dropped."""
    for name, prop in list(schema.get("properties", {}).items()):
        if prop.get("type") == "array":
            ref = prop["items"].pop("$ref", None)
            if ref:
                prop["items"] = condense(referenced(ref, defs), defs)
            continue
        ref = prop.pop("$ref", None)
        if ref:
            schema["properties"][name] = condense(referenced(ref, defs), defs)
    schema.get("properties", {}).pop("metadata", None)
    return schema


def referenced(ref, defs):
    # Unknown references (the status type) become a plain object, as in ingress-gce.
    s = props(defs[ref]) if ref in defs else {}
    s["type"] = "object"
    return s


def main():
    defs = {k: v for k, v in definitions(GO.read_text()).items()}
    schema = condense(props(defs[PREFIX + "BackendConfig"]), defs)
    text = json.dumps(schema, indent=1, sort_keys=True) + "\n"
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            sys.exit(f"{OUT.name} differs from what {GO.name} gives (run {pathlib.Path(__file__).name})")
    else:
        OUT.write_text(text)
    print(f"{OUT.name}: {len(schema['properties']['spec']['properties'])} spec fields")


if __name__ == "__main__":
    main()
