#!/usr/bin/env python3
"""Fill the bootstraps in envoy/ from envoy/fragment.yaml, the one source of truth.

A bootstrap marks where a piece of the fragment goes:

    # BEGIN fragment.yaml http_filters
    ... (replaced by the piece, indented like the marker)
    # END fragment.yaml http_filters

A marker may ask for one literal change to its copy, for settings that differ by
deployment:  # BEGIN fragment.yaml http_filters with "trusted_hops": 1 => "trusted_hops": 0

For more changes (the Helm chart's bootstrap puts template expressions where its
values reach the pieces), lines right above the marker, at its indent, each
replace every occurrence of a text (which must occur) in the copy, in order;
`\n` in the new text is a line break, followed by spaces relative to the piece:
    # replace /connectionupgrade => {{ include "alpn-tunnel.upgradePath" . }}
    # BEGIN fragment.yaml routes

Bootstraps: envoy/*.yaml, and the Pod's in the Helm chart (TARGETS below).

  render.py          rewrite the bootstraps in place
  render.py --check  exit 1 and name the file if any bootstrap differs from the fragment
"""

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
FRAGMENT = HERE / "fragment.yaml"
# The chart's Envoy bootstrap, a Helm template (rendered with `tpl`).
CHART_BOOTSTRAP = HERE.parent / "deploy/k8s/helm/alpn-tunnel/files/envoy.yaml"
REPLACE = re.compile(r"^(?P<indent> *)# replace (?P<old>.+?) => (?P<new>.+)$")
BEGIN = re.compile(r"^(?P<indent> *)# BEGIN fragment\.yaml (?P<piece>[a-z_]+)(?: with (?P<old>.+?) => (?P<new>.+))?$")


def pieces(text):
    """The fragment's top-level keys, each with its content dedented."""
    out, name, body = {}, None, []
    for line in text.splitlines() + ["end:"]:
        top_level = line and not line[0].isspace() and not line.startswith("-")
        if top_level:
            if name is not None:
                while body and not body[-1].strip():
                    body.pop()
                indent = min(len(l) - len(l.lstrip()) for l in body if l.strip())
                out[name] = [l[indent:] if l.strip() else "" for l in body]
            name, body = None, []
            if not line.startswith("#"):
                name = line.rstrip(":")
        elif name is not None:
            body.append(line)
    return out


def render(path, frag):
    lines = path.read_text().splitlines()
    out, i, seen, replaces = [], 0, 0, []
    while i < len(lines):
        m = BEGIN.match(lines[i])
        r = REPLACE.match(lines[i])
        out.append(lines[i])
        i += 1
        if r:
            replaces.append(r)
            continue
        if not m:
            replaces = []
            continue
        seen += 1
        piece, indent = m["piece"], m["indent"]
        if piece not in frag:
            sys.exit(f"{path.name}: no piece {piece!r} in fragment.yaml")
        end = f"{indent}# END fragment.yaml {piece}"
        while i < len(lines) and lines[i] != end:
            i += 1
        if i == len(lines):
            sys.exit(f"{path.name}: '# BEGIN fragment.yaml {piece}' has no matching END line")
        body = "\n".join(frag[piece])
        if m["old"]:
            if body.count(m["old"]) != 1:
                sys.exit(f"{path.name}: {m['old']!r} must occur once in piece {piece!r}")
            body = body.replace(m["old"], m["new"])
        for r in replaces:
            if r["indent"] != indent:
                sys.exit(f"{path.name}: '# replace' above {piece!r} must be indented like its marker")
            if r["old"] not in body:
                sys.exit(f"{path.name}: {r['old']!r} does not occur in piece {piece!r}")
            body = body.replace(r["old"], r["new"].replace("\\n", "\n"))
        replaces = []
        out.extend(indent + l if l else "" for l in body.split("\n"))
    if seen == 0:
        sys.exit(f"{path.name}: no '# BEGIN fragment.yaml' markers")
    return "\n".join(out) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    frag = pieces(FRAGMENT.read_text())
    stale = []
    for path in targets():
        text = render(path, frag)
        if text != path.read_text():
            stale.append(path.name)
            if not check:
                path.write_text(text)
    if check and stale:
        sys.exit(f"out of date with fragment.yaml: {', '.join(stale)} (run: python3 envoy/render.py)")
    print(("checked" if check else "rendered"), "against fragment.yaml:",
          ", ".join(p.name for p in targets()))


def targets():
    return [p for p in sorted(HERE.glob("*.yaml")) if p != FRAGMENT] + [CHART_BOOTSTRAP]


if __name__ == "__main__":
    main()
