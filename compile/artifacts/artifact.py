"""Relax module -> built artifact: model.so (+ kernels.cl for OpenCL) and manifest.json."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mnv2_edge.compile.schedules import default_schedules
from mnv2_edge.compile.schedules.tuning import MEASURED
from mnv2_edge.compile.frontend import convert
from mnv2_edge.compile.artifacts import toolchain
from mnv2_edge.compile.artifacts import manifest as contract
from mnv2_edge.targets.errors import UserError, last_line
from mnv2_edge.compile.artifacts.manifest import KERNELS, LIBRARY, Manifest
from mnv2_edge.compile.threads import SPIN_COUNT, profile_threads
from mnv2_edge.compile.generation.variants import Variant
from mnv2_edge.targets.profiles import Profile

ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm"}


def elf_machine(path: str | Path) -> str:
    """The CPU architecture an ELF file is built for, read from its header."""
    header = Path(path).read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        raise UserError(f"{path} is not an ELF shared library.")
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), f"unknown-{header[18:20].hex()}")


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class ModelSource:
    """What is being built: a .tflite file, and the generated variant it came from, if any."""

    path: Path
    variant: Variant | None = None
    dtype: str | None = None
    labels: Path | None = None  # class names, one per line in output order
    value_range: tuple[float, float] = (-1.0, 1.0)  # what pixel values 0..255 map onto
    # How it is built, where not the default: "untuned", "float-lowering". Part of the name, so
    # builds of one model made differently keep their own folders in dist/.
    build_options: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        base = f"mnv2_{self.variant.tag}_{self.dtype}" if self.variant is not None else self.path.stem
        return "_".join((base, *self.build_options))


def builder_fingerprint() -> str:
    """sha256 of the code that turns a model into a library (every .py under compile/): a build made
    by other code (other default schedules, other converters) is not reused."""
    digest = hashlib.sha256()
    compile_dir = Path(__file__).resolve().parent.parent
    for source in sorted(compile_dir.rglob("*.py")):
        digest.update(str(source.relative_to(compile_dir)).encode() + source.read_bytes())
    return digest.hexdigest()


def compile_relax(mod, profile: Profile, tuning=None):
    """Compile a Relax module for a profile: (executable, schedules). On a CPU every kernel gets its
    tuned record from the database or else its default schedule by rule; schedules maps each kernel
    to "tuned", "transferred" (a record replayed from a similar task, compile/schedules/transfer.py), the
    rule's name, or "none" (left as TVM lowers it)."""
    import contextlib

    import tvm
    from tvm import relax

    target = profile.tvm_target()
    if profile.is_gpu:  # TVM's own GPU flow: dlight rules for untuned kernels
        if tuning is not None:
            return tuning.compile(mod, target), {}
        with target:
            return tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target)), {}
    database = tuning.prepare(mod, target) if tuning is not None else None
    applied: dict[str, str] = {}
    with target, (database if database is not None else contextlib.nullcontext()), \
            tvm.transform.PassContext(opt_level=3):
        executable = default_schedules.compile_cpu(mod, target, database, applied)
    for name in (tuning.summary().get("transferred", {}) if tuning is not None else {}):
        if applied.get(name) == "tuned":
            applied[name] = "transferred"
    return executable, applied


def opencl_source(executable) -> str:
    """All OpenCL C of a built GPU executable; empty when no OpenCL module came out."""
    chunks = []
    pending = list(executable.mod.imports)
    while pending:
        module = pending.pop(0)
        if module.kind == "opencl":
            chunks.append(module.inspect_source("cl"))
        pending.extend(module.imports)
    return "\n".join(chunks)


def kernel_names(source: str) -> list[str]:
    """Kernels defined in TVM's OpenCL source: one chunk per kernel, each opening `// Function: name`
    (every chunk also declares the others, so counting `__kernel` overcounts)."""
    return re.findall(r"^// Function: (\w+)", source, flags=re.MULTILINE)


def tuning_line(tuning, profile: Profile, schedules: dict[str, str]) -> str:
    """What the build's kernels got, in one line: never untuned code in silence."""
    if profile.is_gpu:
        source = "none: no tuning database" if tuning is None else \
            f"{tuning.summary().get('tuned_tasks')}/{tuning.summary().get('tasks')} tasks from the database {tuning.path}"
        return f"{source}; the other kernels get TVM's dlight GPU schedules for {profile.name}"
    counts: dict[str, int] = {}
    for how in schedules.values():
        counts[how] = counts.get(how, 0) + 1
    from_database = ("tuned", "transferred", "none")
    rules = ", ".join(f"{rule} {n}" for rule, n in sorted(counts.items()) if rule not in from_database)
    defaulted = sum(n for rule, n in counts.items() if rule not in from_database)
    transferred = counts.get("transferred", 0)
    head = (f"none for {profile.name}" if tuning is None else
            f"{counts.get('tuned', 0) + transferred}/{len(schedules)} kernels from the database {tuning.path}"
            + (f" ({transferred} transferred from similar tasks, see the manifest)" if transferred else "")
            + ("" if tuning is None or tuning.summary().get("timed_by") in (None, MEASURED)
               else f" (its times {tuning.summary()['timed_by']})"))
    line = f"{head}; {defaulted}/{len(schedules)} kernels got default schedules by rule ({rules or '-'})"
    rule_fastest = len(tuning.summary().get("rule_fastest", [])) if tuning is not None else 0
    if rule_fastest:
        line += f", {rule_fastest} of them where the tuner measured the rule fastest"
    if counts.get("none"):
        naive = sorted(name for name, how in schedules.items() if how == "none")
        line += f"; {len(naive)} left unscheduled (slow): {', '.join(naive[:5])}"
    if tuning is None or tuning.summary().get("untuned"):
        line += f". Tuning can make them faster: `python compile/tune.py --target {profile.name}`"
    return line


def build_artifact(source: ModelSource, profile: Profile, out_dir: Path, tuning=None, progress=print,
                   int8_lowering: str = "integer") -> Manifest:
    """Build source for profile into out_dir; return (and write) the manifest."""
    import tvm

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    progress(f"[import] {source.path}")
    mod, info = convert.load_relax(source.path, int8_lowering)
    if source.labels is not None:  # before compiling: misaligned class names are worse than none
        names = Path(source.labels).read_text().splitlines()
        classes = info.outputs[0].shape[-1] if info.outputs and info.outputs[0].shape else None
        if len(info.outputs) != 1 or len(names) != classes:
            raise UserError(f"--labels {source.labels} has {len(names)} lines, but {source.name}'s output has "
                            f"{classes} classes{'' if len(info.outputs) == 1 else ' (and several outputs)'}: "
                            f"give one class name per line, in output order.")
    if info.lowering != "float":
        progress(f"[int8] {info.lowering} lowering" + (f": {info.lowering_note}" if info.lowering_note else
                                                      " (integer kernels, bit-exact with TFLite's reference kernels)"))
    fcompile = toolchain.fcompile_for(profile)  # fail on a missing toolchain before compiling
    progress(f"[compile] {source.name} for {profile.name} ({profile.tvm_target().kind.name})")
    try:
        executable, schedules = compile_relax(mod, profile, tuning)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a failure inside TVM's compiler on this model
        raise UserError(
            f"TVM could not compile {source.name} for {profile.name} ({type(err).__name__}: "
            f"{last_line(err)}). Try --no-tuning (a tuning record that no longer fits) or "
            f"another target; if it persists, report the model and target to Apache TVM."
        ) from None
    progress(f"[tuning] {tuning_line(tuning, profile, schedules)}")
    kernels = None
    if profile.is_gpu:
        kernels = opencl_source(executable)
        if not kernel_names(kernels):
            raise UserError(
                f"Building for {profile.name} produced no OpenCL kernels, only host code: the GPU "
                f"schedules were not applied. This is a bug in the build pipeline; please report it."
            )
        (out_dir / KERNELS).write_text(kernels)
    library = out_dir / LIBRARY
    progress(f"[link] {library}")
    try:
        executable.export_library(str(library), fcompile=fcompile)
    except Exception as err:  # noqa: BLE001 - the linker's failure, with its own words
        raise UserError(
            f"Linking {library} for {profile.name} failed ({last_line(err)}). Check the target's "
            f"toolchain ({profile.link.get('compiler') or profile.link.get('kind')}): run the build again "
            f"after `apt-get install {profile.link.get('apt', 'gcc')}`."
        ) from None
    machine = elf_machine(library)
    if machine != profile.machine:
        raise UserError(f"{library} was linked for {machine}, but {profile.name} needs {profile.machine}.")
    model_copy = out_dir / contract.MODEL_COPY
    if source.path.resolve() != model_copy.resolve():
        shutil.copyfile(source.path, model_copy)
    if source.labels is not None:
        shutil.copyfile(source.labels, out_dir / contract.LABELS)
    else:
        (out_dir / contract.LABELS).unlink(missing_ok=True)
    variant = source.variant
    manifest = Manifest(
        name=source.name,
        model=contract.ModelInfo(
            file=contract.MODEL_COPY, source_name=source.path.name, sha256=info.sha256, size_bytes=info.size_bytes,
            ops=info.ops, int8_lowering=int8_lowering, lowering=info.lowering, lowering_note=info.lowering_note,
            variant=None if variant is None else contract.Variant(
                width=variant.width, resolution=variant.resolution, dtype=source.dtype, macs=variant.macs,
                params=variant.params, expansion=variant.expansion, classes=variant.num_classes)),
        inputs=info.inputs, outputs=info.outputs,
        target=contract.TargetInfo(profile=profile.name, target=profile.target, host=profile.host,
                                   tvm=str(profile.tvm_target())),
        tvm_version=tvm.__version__,
        builder=builder_fingerprint(),
        tuning=tuning.summary() if tuning is not None else {"database": None, "tasks": None, "tuned_tasks": 0},
        schedules=schedules,
        build_seconds=round(time.perf_counter() - started, 3),
        library=contract.LibraryInfo(file=LIBRARY, machine=machine, size_bytes=library.stat().st_size,
                                     sha256=sha256_file(library)),
        kernels=None if kernels is None else contract.KernelsInfo(file=KERNELS, count=len(kernel_names(kernels))),
        app=app_contract(info, profile, source),
    )
    manifest.write(out_dir)
    progress(f"[done] {out_dir} ({manifest.build_seconds:.1f} s, {manifest.library.size_bytes / 1e6:.1f} MB)")
    return manifest


def app_contract(info, profile: Profile, source: ModelSource) -> contract.AppContract:
    """How an app calls this library (see compile/artifacts/manifest.py)."""
    pictures = len(info.inputs) == 1 and len(info.inputs[0].shape) == 4 and info.inputs[0].shape[3] == 3
    scores = len(info.outputs) == 1 and len(info.outputs[0].shape) == 2
    return contract.AppContract(
        runtime="relax-vm", entry="main", calling_sequence=contract.CALLING_SEQUENCE,
        runtime_libraries=contract.RUNTIME_LIBRARIES, device="opencl" if profile.is_gpu else "cpu",
        threads=profile_threads(profile),
        preprocess=contract.Preprocess(value_range=tuple(source.value_range)) if pictures else None,
        output=("scores per class, the highest is the prediction (dequantize with the output's scale and "
                "zero point when it is integer)") if scores else "the model's outputs, in the order of `outputs`",
        labels=contract.LABELS if source.labels is not None else None,
        thread_pool_spin_count=None if profile.is_gpu else SPIN_COUNT,
    )
