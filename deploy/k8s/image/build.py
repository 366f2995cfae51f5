#!/usr/bin/env python3
"""Write the filter as an OCI image (the Wasm "compat" variant), without Docker.

The image is what an Istio WasmPlugin's `url: oci://...` pulls: one gzipped tar
layer (media type application/vnd.oci.image.layer.v1.tar+gzip) holding
`plugin.wasm`, and the annotation `module.wasm.image/variant: compat` on the
manifest (https://github.com/solo-io/wasm/blob/master/spec/spec-compat.md).
Istio tries this variant first and checks the WasmPlugin's `sha256` against the
digest of the *manifest*, not of the module.

The output is an OCI image layout directory (https://github.com/opencontainers/
image-spec/blob/main/image-layout.md), which skopeo copies to any registry:

    skopeo copy oci:target/oci/alpn-upgrade-filter:VERSION docker://REGISTRY/alpn-upgrade-filter:VERSION

Reproducible: the same module gives the same digest, byte for byte. The tar
entry has fixed mtime (0), owner (0:0, no names) and mode (0444); gzip writes no
file name and mtime 0; the config carries no creation time; JSON is written
with sorted keys and no spaces.

  build.py WASM OUT_DIR [--tag TAG]   write the layout, print the manifest digest
"""

import argparse
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import sys
import tarfile

VARIANT_ANNOTATION = "module.wasm.image/variant"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
# The file name Istio's fetcher looks for in the layer (pkg/wasm/imagefetcher.go).
PLUGIN_FILE = "plugin.wasm"


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(module):
    """An uncompressed tar with one entry, plugin.wasm, every field fixed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_FILE)
        info.size = len(module)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(module))
    return buf.getvalue()


def gzip_fixed(data):
    """gzip with no file name and mtime 0 in the header (RFC 1952)."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def descriptor(media_type, data, **extra):
    d = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}
    d.update(extra)
    return d


def image(module):
    """The blobs of the image and its manifest: (blobs, manifest bytes)."""
    tar = layer_tar(module)
    layer = gzip_fixed(tar)
    config = canonical_json({
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "config": {},
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, layer, annotations={
            "org.opencontainers.image.title": PLUGIN_FILE,
        })],
        "annotations": {VARIANT_ANNOTATION: "compat"},
    })
    return [config, layer, manifest], manifest


def write_layout(module, out, tag):
    blobs, manifest = image(module)
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    for blob in blobs:
        (out / "blobs" / "sha256" / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor(MANIFEST_MEDIA_TYPE, manifest, annotations={
            "org.opencontainers.image.ref.name": tag,
        })],
    }
    (out / "index.json").write_bytes(canonical_json(index))
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wasm", type=pathlib.Path, help="the built filter (.wasm)")
    p.add_argument("out", type=pathlib.Path, help="the OCI layout directory to (re)write")
    p.add_argument("--tag", default="latest", help="the reference name in index.json")
    a = p.parse_args()
    module = a.wasm.read_bytes()
    if not module.startswith(b"\0asm"):
        sys.exit(f"{a.wasm}: not a Wasm module")
    print(write_layout(module, a.out, a.tag))


if __name__ == "__main__":
    main()
