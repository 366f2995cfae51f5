#!/usr/bin/env python3
"""Fill the bootstraps in envoy/ from envoy/fragment.yaml, the one source of truth.

A bootstrap marks where a piece of the fragment goes:

    # BEGIN fragment.yaml http_filters
    ... (replaced by the piece, indented like the marker)
    # END fragment.yaml http_filters

A marker may ask for one literal change to its copy, for settings that differ by
deployment:  # BEGIN fragment.yaml http_filters with "trusted_hops": 1 => "trusted_hops": 0

  render.py          rewrite the bootstraps in place
  render.py --check  exit 1 and name the file if any bootstrap differs from the fragment
"""

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
FRAGMENT = HERE / "fragment.yaml"
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
    out, i, seen = [], 0, 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        out.append(lines[i])
        i += 1
        if not m:
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
        out.extend(indent + l if l else "" for l in body.split("\n"))
    if seen == 0:
        sys.exit(f"{path.name}: no '# BEGIN fragment.yaml' markers")
    return "\n".join(out) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    frag = pieces(FRAGMENT.read_text())
    stale = []
    for path in sorted(HERE.glob("*.yaml")):
        if path == FRAGMENT:
            continue
        text = render(path, frag)
        if text != path.read_text():
            stale.append(path.name)
            if not check:
                path.write_text(text)
    if check and stale:
        sys.exit(f"out of date with fragment.yaml: {', '.join(stale)} (run: python3 envoy/render.py)")
    print(("checked" if check else "rendered"), "against fragment.yaml:",
          ", ".join(p.name for p in sorted(HERE.glob("*.yaml")) if p != FRAGMENT))


if __name__ == "__main__":
    main()
