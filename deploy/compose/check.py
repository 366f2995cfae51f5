#!/usr/bin/env python3
"""Check deploy/compose/docker-compose.yml without a Docker engine: it must
validate against the Compose specification's JSON schema, and every file it
mounts or builds from must exist. A deliberately broken copy must be rejected,
so that the check is shown to work.

  check.py SCHEMA.json
"""

import copy
import json
import pathlib
import sys

import jsonschema
import yaml

HERE = pathlib.Path(__file__).resolve().parent


def problems(doc, schema):
    # The specification's schema declares JSON Schema draft 2019-09.
    validator = jsonschema.Draft201909Validator(schema)
    found = [f"schema: {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(doc)]
    for name, service in (doc.get("services") or {}).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not (HERE / source).exists():
                found.append(f"service {name}: mounts {source}, which does not exist")
        build = service.get("build")
        if isinstance(build, dict):
            context = HERE / build.get("context", ".")
            if not context.is_dir():
                found.append(f"service {name}: build context {context} does not exist")
            elif not (context / build.get("dockerfile", "Dockerfile")).is_file():
                found.append(f"service {name}: {build.get('dockerfile')} does not exist")
    return found


def main():
    schema = json.loads(pathlib.Path(sys.argv[1]).read_text())
    doc = yaml.safe_load((HERE / "docker-compose.yml").read_text())
    found = problems(doc, schema)
    if found:
        sys.exit("docker-compose.yml:\n  " + "\n  ".join(found))
    broken = copy.deepcopy(doc)
    broken["services"]["router"]["restart_policy"] = "sometimes"
    broken["services"]["alb"]["volumes"].append("../load-balancers/missing.conf:/x:ro")
    if len(problems(broken, schema)) < 2:
        sys.exit("the check accepted a broken compose file: it checks nothing")
    print(f"docker-compose.yml: valid against the Compose specification; {len(doc['services'])} services, "
          "every mounted file and Dockerfile present (validated, not run: no Docker engine here)")


if __name__ == "__main__":
    main()
