"""The main job as a plain API: pick the model, build it for a target, record what was built.

`compile/build.py` is the command line over this module; tests call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from mnv2_edge.compile.artifacts import artifact, isolated
from mnv2_edge.compile.generation import generate
from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.artifacts.manifest import LABELS, LIBRARY, Manifest
from mnv2_edge.compile.paths import DEFAULT_OUT
from mnv2_edge.compile.generation.variants import EXPANSION, NUM_CLASSES, Variant, official_variants
from mnv2_edge.targets.profiles import Profile, load_profile


@dataclass
class BuildRequest:
    target: str = "arm_cpu"
    width: float = 1.0
    resolution: int = 224
    dtype: str = "float32"
    int8_lowering: str = "integer"  # quantized files: integer kernels, or "float" (TVM's dequantize path)
    model: Path | None = None  # any .tflite instead of a generated variant
    tuning_log: Path | None = None  # default: tuning.database_path(profile) when it exists
    no_tuning: bool = False  # build untuned even when a database exists
    out: Path = DEFAULT_OUT
    all_variants: bool = False
    rebuild: bool = False  # build again even when dist/ already holds the same build
    labels: Path | None = None  # class names, one per line in output order: shipped as labels.txt
    value_range: tuple[float, float] = (-1.0, 1.0)  # the input's values for pixels 0..255 (the app contract)
    expansion: int = EXPANSION  # generated variants: the bottlenecks' expansion factor t
    classes: int = NUM_CLASSES  # generated variants: outputs of the classifier


@dataclass
class ModelSelection:
    """Which models a command works on, chosen by the same flags in build, tune and bench
    (cli_common.add_model_flags): the given .tflite files, or variants."""

    widths: list[float] = field(default_factory=lambda: [1.0])
    resolutions: list[int] = field(default_factory=lambda: [224])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    all_official: bool = False  # the 22 published variants instead of widths x resolutions
    models: list[Path] = field(default_factory=list)
    expansion: int = EXPANSION
    classes: int = NUM_CLASSES

    def variants(self) -> list[tuple[Variant, str]]:
        """(variant, dtype) per generated model chosen (none when files are)."""
        if self.models and self.all_official:
            raise UserError("--model and --all-official exclude each other: the files, or the 22 variants.")
        if self.models:
            return []
        unknown = [d for d in self.dtypes if d not in generate.DTYPES]
        if unknown or not self.dtypes:
            raise UserError(f"Unknown --dtype {','.join(unknown)!r}: use {' or '.join(generate.DTYPES)} "
                            f"(or both, comma-separated).")
        sizes = [(v.width, v.resolution) for v in official_variants()] if self.all_official else [
            (w, r) for w in self.widths for r in self.resolutions]
        return [(Variant(w, r, self.classes, self.expansion), dtype) for dtype in self.dtypes for w, r in sizes]

    def requests(self, **common) -> list[tuple[str, BuildRequest]]:
        """(label, BuildRequest) per model; `common` holds the other BuildRequest fields."""
        missing = [str(path) for path in self.models if not Path(path).exists()]
        if missing:  # all at once, before anything starts (what is there but unreadable, the front end names)
            raise UserError(f"Model file {', '.join(missing)} does not exist. Check the path given to --model.")
        files = [(Path(path).name, BuildRequest(model=Path(path), **common)) for path in self.models]
        return files + [(f"{v.tag} {dtype}", BuildRequest(width=v.width, resolution=v.resolution, dtype=dtype,
                                                          expansion=v.expansion, classes=v.num_classes, **common))
                        for v, dtype in self.variants()]


def artifact_dir(out: Path, profile: Profile, source: artifact.ModelSource) -> Path:
    return Path(out) / profile.name / source.name


def generated_source(variant: Variant, dtype: str, out: Path) -> artifact.ModelSource:
    """Generate the variant's .tflite under out/models/. Always generated (a second or two), never
    trusted from disk: a file left by an older generator would silently differ; it is rewritten only
    when its bytes change, so builds of unchanged models stay up to date."""
    path = Path(out) / "models" / f"mnv2_{variant.tag}_{dtype}.tflite"
    data = generate.variant_tflite(variant, dtype)
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return artifact.ModelSource(path, variant, dtype)


def sources(request: BuildRequest) -> list[artifact.ModelSource]:
    if request.labels is not None and not Path(request.labels).is_file():
        raise UserError(f"--labels {request.labels}: no such file (give a text file, one class name per line).")
    options = ("untuned",) * request.no_tuning + ("float-lowering",) * (request.int8_lowering == "float")
    return [replace(source, labels=request.labels, value_range=tuple(map(float, request.value_range)),
                    build_options=options) for source in _model_sources(request)]


def _model_sources(request: BuildRequest) -> list[artifact.ModelSource]:
    if request.model is not None and not request.all_variants:
        return [artifact.ModelSource(Path(request.model))]
    selection = ModelSelection([request.width], [request.resolution], [request.dtype], request.all_variants,
                               [request.model] if request.model is not None else [], request.expansion,
                               request.classes)
    return [generated_source(v, dtype, request.out) for v, dtype in selection.variants()]


def tuning_for(request: BuildRequest, profile: Profile):
    """The tuning database to apply: --tuning-log, else the profile's own (tuning.database_path) when it holds one."""
    from mnv2_edge.compile.schedules import tuning

    if request.no_tuning:
        return None
    path = Path(request.tuning_log) if request.tuning_log else tuning.database_path(profile)
    if request.tuning_log and not tuning.has_database(path):
        raise UserError(f"--tuning-log {path} holds no MetaSchedule database (database_workload.json).")
    return tuning.TuningDatabase(path) if tuning.has_database(path) else None


def tuning_note(request: BuildRequest, profile: Profile) -> str | None:
    """Why a host build applies no database although the project has some: they belong to other CPU
    classes (their schedules were chosen for another instruction set), so they are not applied."""
    from mnv2_edge.compile.schedules import tuning

    if request.no_tuning or request.tuning_log or tuning.has_database(tuning.database_path(profile)):
        return None
    others = tuning.other_classes(profile)
    if not others:
        return None
    here = tuning.database_path(profile)
    return (f"[tuning] {here.parent} holds databases for {', '.join(others)}, not for this CPU's class "
            f"{here.name} ({profile.target.get('mcpu')}): not applied, default schedules instead. "
            f"Tune this class with `python compile/tune.py --target {profile.name}` (it writes {here}).")


def _up_to_date(out_dir: Path, source: artifact.ModelSource, profile: Profile, tuning, lowering: str) -> bool:
    try:
        manifest = Manifest.read(out_dir)
    except UserError:  # none, damaged or of an older schema: rebuild
        return False
    labels = out_dir / LABELS
    return (
        (out_dir / LIBRARY).exists()
        and manifest.model.sha256 == artifact.sha256_file(source.path)
        and manifest.target.tvm == str(profile.tvm_target())
        and manifest.tuning.get("fingerprint") == (tuning.fingerprint() if tuning else None)
        and manifest.model.int8_lowering == lowering
        and manifest.builder == artifact.builder_fingerprint()
        and (manifest.app.preprocess is None or manifest.app.preprocess.value_range == source.value_range)
        and (labels.read_bytes() if labels.exists() else None)
        == (Path(source.labels).read_bytes() if source.labels else None)
    )


def build_each(requests: list[tuple[str, BuildRequest]], progress=print) -> list[Path]:
    """Build each (label, request) of ModelSelection.requests in turn (numbered when several); returns
    their artifact folders."""
    out_dirs = []
    for index, (_, request) in enumerate(requests, 1):
        prefix = f"({index}/{len(requests)}) " if len(requests) > 1 else ""
        manifest = build(request, progress=lambda m, prefix=prefix: progress(prefix + m))[0]
        out_dirs.append(Path(request.out) / manifest.target.profile / manifest.name)
    return out_dirs


def build(request: BuildRequest, progress=print) -> list[Manifest]:
    """Build every requested model for the target; returns one manifest per artifact."""
    profile = load_profile(request.target)
    tuning = tuning_for(request, profile)
    note = tuning_note(request, profile)
    if note:
        progress(note)
    manifests = []
    todo = sources(request)
    for index, source in enumerate(todo, 1):
        out_dir = artifact_dir(request.out, profile, source)
        prefix = f"({index}/{len(todo)}) " if len(todo) > 1 else ""
        if not request.rebuild and _up_to_date(out_dir, source, profile, tuning, request.int8_lowering):
            progress(f"{prefix}[skip] {out_dir} is up to date")
            manifests.append(Manifest.read(out_dir))
            continue
        # In a child process: a crash in TVM's native code on some file must not take the caller with it.
        manifests.append(isolated.call(
            artifact.build_artifact, source, profile, out_dir, tuning, int8_lowering=request.int8_lowering,
            what=f"building {source.name} for {profile.name}", progress=lambda m: progress(prefix + m)))
    return manifests
