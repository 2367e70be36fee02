"""Build hook: the gRPC code is generated from protos/*.proto while the wheel is built.

Generated code is never committed, so a wheel built from a checkout (or an sdist) must make it;
`make protos` does the same for a checkout. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_protos(out_dir: Path) -> None:
    """protoc (from the pinned grpcio-tools) over every protos/*/v1/*.proto into `out_dir`."""
    proto_files = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("protos/*/v1/*.proto"))
    if not proto_files:
        raise SystemExit("no .proto files under protos/: is this a Paylayer source tree?")
    command = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT),
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
    ]  # fmt: skip
    # Type stubs too when mypy-protobuf's plugins are at hand (they are in the build env).
    mypy_plugin = shutil.which("protoc-gen-mypy") or _beside_python("protoc-gen-mypy")
    grpc_plugin = shutil.which("protoc-gen-mypy_grpc") or _beside_python("protoc-gen-mypy_grpc")
    if mypy_plugin and grpc_plugin:
        command += [
            f"--plugin=protoc-gen-mypy={mypy_plugin}", f"--mypy_out={out_dir}",
            f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}", f"--mypy_grpc_out={out_dir}",
        ]  # fmt: skip
    subprocess.run([*command, *proto_files], cwd=ROOT, check=True)


def _beside_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        # An editable install imports from the source tree, so the code goes there.
        out_dir = ROOT if self.editable_mode else Path(self.build_lib)
        generate_protos(out_dir)


setup(cmdclass={"build_py": BuildPyWithProtos})
