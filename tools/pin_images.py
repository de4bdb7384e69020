"""Pin every image the production overlay runs to the digest its registry reports, at release time.

    python -m tools.pin_images [--janus REF] [--compose]   resolve and write the digests
    python -m tools.pin_images --check                     exit 1 naming what is not pinned

The base keeps readable tags (``nats:2.15.1-alpine``); the prod overlay's ``images:`` list gets one
entry per image with the tag and its ``digest:``, so ``kubectl kustomize deploy/k8s/overlays/prod``
renders ``nats:2.15.1-alpine@sha256:...`` and a node runs exactly the bytes that were tested, whatever
the tag points at later. Janus's own image is the overlay's ``newName:newTag`` unless ``--janus`` names
the one the release pushed. ``--compose`` pins docker-compose.yml's third-party images in place too.

A digest is only ever what a registry answered: ``crane digest REF``, else ``docker buildx imagetools
inspect REF``, or the command in ``JANUS_DIGEST_COMMAND`` (the reference is appended). If one image
cannot be resolved, nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = Path("deploy/k8s/base")
PROD = Path("deploy/k8s/overlays/prod/kustomization.yaml")
COMPOSE = Path("docker-compose.yml")
DIGEST_COMMAND_ENV = "JANUS_DIGEST_COMMAND"
JANUS = "janus"  # the name the base gives Janus's own image; the overlay sets where it comes from

_IMAGE = re.compile(r"^(\s*(?:-\s+)?image:\s*)([\"']?)([^\"'\s#]+)\2", re.M)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_IMAGES_BLOCK = re.compile(r"^images:\n(?:[ #].*\n|\n)*", re.M)


class PinError(RuntimeError):
    pass


def split(ref: str) -> tuple[str, str, str]:
    """``name[:tag][@digest]`` into its parts (a registry's port is not a tag)."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def base_images(root: Path) -> list[str]:
    """Every image reference in the base, in order of first appearance."""
    seen: dict[str, None] = {}
    for path in sorted((root / BASE).rglob("*.yaml")):
        for _, _, ref in _IMAGE.findall(path.read_text()):
            seen.setdefault(ref, None)
    return list(seen)


def digest_of(ref: str) -> str:
    """The digest the registry reports for ``ref``; PinError when no tool can say."""
    custom = os.environ.get(DIGEST_COMMAND_ENV)
    if custom:
        commands = [[*shlex.split(custom), ref]]
    else:
        commands = []
        if shutil.which("crane"):
            commands.append(["crane", "digest", ref])
        if shutil.which("docker"):
            commands.append(
                ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest}}"]
            )
    if not commands:
        raise PinError(f"{ref}: neither crane nor docker is installed (or set {DIGEST_COMMAND_ENV})")
    errors = []
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        out = done.stdout.strip()
        if done.returncode == 0 and out.startswith("{"):
            out = str(json.loads(out).get("digest", ""))
        if done.returncode == 0 and _DIGEST.match(out):
            return out
        errors.append(f"{cmd[0]}: {(done.stderr.strip() or out)[-300:]}")
    raise PinError(f"{ref}: no digest ({'; '.join(errors)})")


def overlay_images(root: Path) -> list[dict[str, str]]:
    return list(yaml.safe_load((root / PROD).read_text()).get("images") or [])


def wanted(root: Path, janus: str | None) -> list[tuple[dict[str, str], str]]:
    """(the overlay's images: entry, without its digest, and the reference to resolve) per image."""
    current = {e["name"]: e for e in overlay_images(root)}
    out = []
    for ref in base_images(root):
        name, tag, _ = split(ref)
        if name == JANUS:
            entry = {k: v for k, v in current.get(JANUS, {"name": JANUS}).items() if k != "digest"}
            if janus:
                entry["newName"], entry["newTag"], _ = split(janus)
            source = f"{entry.get('newName', JANUS)}:{entry.get('newTag', tag)}"
        else:
            entry = {"name": name, "newTag": tag}
            source = ref
        out.append((entry, source))
    return out


def render(entries: list[dict[str, str]]) -> str:
    lines = [
        "images:",
        "  # written by deploy/pin-images.sh from what the registries reported: the tag for people, the",
        "  # digest for the nodes (kustomize renders name:tag@digest)",
    ]
    for entry in entries:
        lines.append(f"  - name: {entry['name']}")
        lines += [f"    {key}: {entry[key]}" for key in ("newName", "newTag", "digest") if entry.get(key)]
    return "\n".join(lines) + "\n"


def write_overlay(root: Path, entries: list[dict[str, str]]) -> None:
    path = root / PROD
    text = path.read_text()
    block = render(entries)
    new, count = _IMAGES_BLOCK.subn(block + "\n", text, count=1)
    path.write_text(new if count else text.rstrip("\n") + "\n\n" + block)


def pin_compose(root: Path) -> dict[str, str]:
    """Each third-party ``name:tag`` of docker-compose.yml and its digest (the built image stays)."""
    text = (root / COMPOSE).read_text()
    pins = {}
    for _, _, ref in _IMAGE.findall(text):
        name, tag, digest = split(ref)
        if name != JANUS and tag and not digest:
            pins[ref] = digest_of(ref)
    return pins


def unpinned(root: Path) -> list[str]:
    digests = {e["name"]: e.get("digest", "") for e in overlay_images(root)}
    return [
        ref
        for ref in base_images(root)
        if not split(ref)[2] and not _DIGEST.match(digests.get(split(ref)[0], ""))
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if an image of the prod overlay has no digest"
    )
    ap.add_argument("--janus", help="the Janus image the release pushed (registry/janus:tag)")
    ap.add_argument("--compose", action="store_true", help="also pin docker-compose.yml's third-party images")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    root: Path = args.root
    if args.check:
        missing = unpinned(root)
        for ref in missing:
            print(f"not pinned by digest in {PROD}: {ref}", file=sys.stderr)
        return 1 if missing else 0
    try:
        entries = []
        for entry, source in wanted(root, args.janus):
            entries.append({**entry, "digest": digest_of(source)})
            print(f"{source} -> {entries[-1]['digest']}")
        compose = pin_compose(root) if args.compose else {}
    except PinError as exc:
        print(f"pin-images: {exc}; nothing written", file=sys.stderr)
        return 1
    write_overlay(root, entries)
    if compose:
        text = (root / COMPOSE).read_text()
        for ref, digest in compose.items():
            text = re.sub(rf"(image:\s*[\"']?){re.escape(ref)}(?=[\"'\s])", rf"\g<1>{ref}@{digest}", text)
        (root / COMPOSE).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
