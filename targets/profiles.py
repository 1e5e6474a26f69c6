"""Load device profiles (targets/*.toml) into TVM targets."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mnv2_edge.targets.errors import UserError

PROFILE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    rpc_key: str
    target: dict  # TVM target in dict form
    host: dict | None  # host target for GPU profiles
    link: dict = field(default_factory=dict)  # how to link the .so: kind, compiler, machine, apt
    detect_host: bool = False  # the target is whatever CPU runs the build (its databases go per CPU class)
    core: dict | None = None  # the simulated core for estimates (deploy/simulated_core): [core] of the file

    @property
    def is_gpu(self) -> bool:
        return self.target["kind"] != "llvm"

    @property
    def cpu_target(self) -> dict:
        """The target the CPU code (whole model, or host side of a GPU model) is compiled for."""
        return self.host if self.is_gpu else self.target

    @property
    def machine(self) -> str:
        """ELF machine of the built library: aarch64, arm or x86_64."""
        return self.link.get("machine") or os.uname().machine

    def tvm_target(self):
        from tvm.target import Target

        if self.host is not None:
            return Target(self.target, host=self.host)
        return Target(self.target)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "rpc_key": self.rpc_key,
                "target": self.target, "host": self.host, "link": self.link}


def _detect_host(target: dict) -> dict:
    """This machine's CPU, or the one MNV2_HOST_CPU names (an LLVM CPU such as znver3 or haswell: to
    build and measure here the code another class of x86 machine would get)."""
    import tvm

    cpu = os.environ.get("MNV2_HOST_CPU") or tvm.target.codegen.llvm_get_system_cpu()
    if not tvm.target.codegen.llvm_is_valid_cpu(cpu, tvm.target.codegen.llvm_get_system_triple()):
        raise UserError(f"MNV2_HOST_CPU={cpu} is not a CPU LLVM knows (examples: znver3, znver4, haswell, "
                        f"skylake-avx512, x86-64-v3).")
    return {**target, "mcpu": cpu, "num-cores": os.cpu_count() or 1}


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name: str) -> Profile:
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        raise UserError(
            f"Unknown target {name!r}. Known targets: {', '.join(profile_names())}. "
            f"To add a board, add a TOML file to {PROFILE_DIR} (copy one that is close)."
        )
    try:
        data = tomllib.loads(path.read_text())
        target = dict(data["target"])
        if data.get("detect_host"):
            target = _detect_host(target)
        return Profile(
            name=name,
            description=data["description"],
            rpc_key=data["rpc_key"],
            target=target,
            host=data.get("host"),
            link=data.get("link", {}),
            detect_host=bool(data.get("detect_host", False)),
            core=data.get("core"),
        )
    except (tomllib.TOMLDecodeError, KeyError) as err:
        raise UserError(f"Device profile {path} is malformed ({type(err).__name__}: {err}).") from None


def all_profiles() -> list[Profile]:
    return [load_profile(name) for name in profile_names()]
