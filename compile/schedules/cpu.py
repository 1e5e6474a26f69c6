"""What the project reads of a CPU target, read in one place: LLVM's features of the target's CPU,
its architecture and cores. The default schedules size their register blocks from it, the int8
kernels pick their dot-product instruction from it, and host tuning databases are kept per the
instruction-set class it names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CPUShape:
    arch: str  # the target triple's architecture: x86_64, aarch64, armv7...
    features: frozenset[str]  # LLVM's features of the target's CPU (mcpu and mattr)
    cores: int

    @classmethod
    def of(cls, target) -> "CPUShape":
        from tvm.target import codegen

        triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
        aarch64 = triple.startswith("aarch64") or bool(target.attrs.get("feature.is_aarch64", False))
        return cls(arch="aarch64" if aarch64 else triple.split("-")[0],
                   features=frozenset(codegen.llvm_get_cpu_features(target)),
                   cores=int(target.attrs.get("num-cores", 1) or 1))

    @property
    def vector_bits(self) -> int:
        """The widest SIMD register: 512 AVX-512, 256 AVX2, 128 NEON/SSE. From the features: TVM
        0.27's llvm_get_vector_width answers 512 for haswell and x86-64."""
        return 512 if "avx512f" in self.features else 256 if "avx" in self.features else 128

    @property
    def registers(self) -> int:
        """SIMD registers: 32 on AArch64 and AVX-512, 16 on AVX2 and ARMv7 NEON."""
        return 32 if (self.arch == "aarch64" or self.vector_bits >= 512) else 16

    @property
    def int8_dot(self) -> bool:
        """ARMv8.2 sdot/udot: four int8 products summed into each int32 lane."""
        return self.arch == "aarch64" and "dotprod" in self.features

    @property
    def isa_class(self) -> str:
        """The instruction-set class a tuning record's speed belongs to: schedules picked for AVX-512
        are not the ones to pick for AVX2, so a host's records are kept and applied per class."""
        if self.arch in ("x86_64", "i686"):
            return "x86_64-avx512" if "avx512f" in self.features else "x86_64-avx2" if "avx2" in self.features \
                else "x86_64"
        if self.arch == "aarch64":
            return "aarch64-dotprod" if self.int8_dot else "aarch64"
        return self.arch

    def lanes(self, dtype_bits: int) -> int:
        return max(1, self.vector_bits // dtype_bits)
