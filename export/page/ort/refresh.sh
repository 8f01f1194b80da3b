#!/usr/bin/env bash
# Refresh the vendored onnxruntime-web runtime in this folder from the npm registry, and rewrite VERSION.
#
#     export/page/ort/refresh.sh 1.31.1
#
# For the maintainer only: it needs npm (Node.js) and python3; people who export or play a page need neither. It
# fetches the package's tarball with `npm pack` (which checks it against the registry's integrity hash), copies the
# three files the page uses (the WASM-only ES module build, and the SIMD + threads runtime it loads beside itself)
# over the old ones, and rewrites VERSION with the tarball's integrity, shasum and each file's sha256. Nothing else
# from the package is kept: the WebGPU/WebGL builds, source maps and the non-threaded fallbacks stay out (the page
# needs cross-origin isolation for threads anyway; the server sends the headers).
set -euo pipefail

PACKAGE=onnxruntime-web
FILES=(ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm)

if [[ $# -ne 1 || ! $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+([-.][0-9A-Za-z.-]+)?$ ]]; then
    echo "usage: $0 VERSION   (an exact onnxruntime-web version, e.g. 1.31.1; see: npm view $PACKAGE versions)" >&2
    exit 2
fi
VERSION=$1
for tool in npm python3 tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "refresh.sh: error: $tool is missing (needed by the maintainer only)" >&2; exit 1; }
done

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent --json "$PACKAGE@$VERSION" > pack.json)
tarball=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["filename"])' "$work/pack.json")
integrity=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["integrity"])' "$work/pack.json")
shasum=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["shasum"])' "$work/pack.json")
tar -xzf "$work/$tarball" -C "$work"
for f in "${FILES[@]}"; do
    [[ -f $work/package/dist/$f ]] || { echo "refresh.sh: error: $PACKAGE $VERSION has no dist/$f; the page's loader needs updating for this version" >&2; exit 1; }
done
grep -q '"version": *"'"$VERSION"'"' "$work/package/package.json" \
    || { echo "refresh.sh: error: the tarball is not $PACKAGE $VERSION" >&2; exit 1; }

{
    echo "# The onnxruntime-web runtime that the web export's page loads (export/page/ort/), written by refresh.sh."
    echo "# Only these files are kept: ort.wasm.min.mjs (the ES module: WASM backend only) imports"
    echo "# ort-wasm-simd-threaded.mjs, which instantiates ort-wasm-simd-threaded.wasm; both are found next to"
    echo "# ort.wasm.min.mjs by their relative names (import.meta.url), so the three must stay in one folder. A page"
    echo "# that imports ./ort/ort.wasm.min.mjs needs no ort.env.wasm.wasmPaths; setting it to this folder's URL"
    echo "# (new URL('ort/', import.meta.url).href) is harmless and needed if the module is ever bundled or moved."
    echo "# Set ort.env.wasm.numThreads explicitly. Threads need a cross-origin isolated page (COOP same-origin,"
    echo "# COEP require-corp: export/serve.py sends them); without isolation onnxruntime-web runs on one thread."
    echo "package: $PACKAGE"
    echo "version: $VERSION"
    echo "tarball: https://registry.npmjs.org/$PACKAGE/-/$tarball"
    echo "integrity: $integrity"
    echo "shasum: $shasum"
    echo "license: MIT, Copyright (c) Microsoft Corporation (see LICENSE)"
    echo "date: $(date -u +%Y-%m-%d)"
    echo "files: ${FILES[*]}"
    for f in "${FILES[@]}"; do
        echo "sha256 $f: $(sha256sum "$work/package/dist/$f" | cut -d' ' -f1)"
    done
} > "$work/VERSION"

# each file under a temporary name first, then renamed, so an interrupted refresh leaves no half-written runtime
for f in "${FILES[@]}"; do
    cp "$work/package/dist/$f" "$here/.$f.tmp" && mv -f "$here/.$f.tmp" "$here/$f"
done
cp "$work/VERSION" "$here/.VERSION.tmp" && mv -f "$here/.VERSION.tmp" "$here/VERSION"
echo "refreshed $here to $PACKAGE $VERSION ($integrity)"
