"""The manifest: the one contract between the build, the deploy harness and apps (manifest.json).

Every path in it is relative to the artifact's folder, so the folder can be copied to a board or into
an app as it is. `app` says how to call the library without reading this project's code: the Relax
VM calling sequence, the runtime libraries it needs, the threads to run, how to turn a picture into
the input tensor and what the output means. examples/ holds a C++ and a Python app that follow it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.frontend.tflite_file import TensorInfo

SCHEMA = "mnv2-edge/manifest/2"
FILE = "manifest.json"
LIBRARY = "model.so"
MODEL_COPY = "model.tflite"
KERNELS = "kernels.cl"
LABELS = "labels.txt"
RUNTIME_DIR = "runtime"
RUNTIME_LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")  # in runtime/, from the tvm and tvm_ffi packages

# How an app runs model.so (TVM's Relax VM), the same calls tvm.runtime.vm.VirtualMachine makes.
CALLING_SEQUENCE = (
    "lib = Module.LoadFromFile('model.so')  # the TVM runtime libraries loaded first",
    "vm = lib['vm_load_executable']()",
    "vm['vm_initialization'](device_type, device_id, 2, 1, 0, 2)  # pooled allocator; the CPU (1, 0) for shape code",
    "vm['set_input']('main', *inputs)",
    "vm['invoke_stateful']('main')",
    "n = vm['get_output_arity']('main')  # -1: one output tensor; else a tuple of n",
    "outputs = [vm['get_output']('main')] if n == -1 else [vm['get_output']('main', i) for i in range(n)]",
)


@dataclass
class Variant:
    width: float
    resolution: int
    dtype: str
    macs: int
    params: int
    expansion: int  # the bottlenecks' t (Table 2: 6)
    classes: int


@dataclass
class ModelInfo:
    file: str  # the .tflite the library was built from, copied beside it
    source_name: str  # its file name where it came from (never the build machine's path)
    sha256: str
    size_bytes: int
    ops: dict[str, int]
    int8_lowering: str  # what was asked
    lowering: str  # what was done: float, integer or dequantize
    lowering_note: str = ""
    variant: Variant | None = None


@dataclass
class TargetInfo:
    profile: str
    target: dict
    host: dict | None
    tvm: str  # the TVM target string the library was compiled for


@dataclass
class LibraryInfo:
    file: str
    machine: str  # ELF machine: x86_64, aarch64, arm
    size_bytes: int
    sha256: str


@dataclass
class KernelsInfo:
    file: str
    count: int


@dataclass
class Preprocess:
    """Picture -> input tensor: decode, convert to `color`, resize to the input's H x W (bilinear),
    map pixel values 0..255 linearly onto `value_range`, then, for an integer input, quantize with
    the input's scale and zero point (q = round(x / scale) + zero_point, clamped)."""

    layout: str = "NHWC"
    color: str = "RGB"
    resize: str = "bilinear"
    value_range: tuple[float, float] = (-1.0, 1.0)


@dataclass
class AppContract:
    runtime: str  # "relax-vm"
    entry: str
    calling_sequence: tuple[str, ...]
    runtime_libraries: tuple[str, ...]  # shipped in runtime/ by build.py --bundle-runtime
    device: str  # "cpu" or "opencl"
    threads: int | None  # what to ask the runtime's pool for (TVM_NUM_THREADS / runtime.config_threadpool)
    preprocess: Preprocess | None  # None: the input is not a picture
    output: str  # what the first output holds
    labels: str | None  # labels.txt, one class name per line in output order, when the build got --labels
    thread_pool_spin_count: int | None = None  # TVM_THREAD_POOL_SPIN_COUNT for CPU models (compile/threads.py)


@dataclass
class Manifest:
    name: str
    model: ModelInfo
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    target: TargetInfo
    tvm_version: str
    builder: str  # fingerprint of the code that built it (compile/*.py)
    tuning: dict  # TuningDatabase.summary(), or no database
    schedules: dict[str, str]  # kernel -> "tuned", the default rule that scheduled it, or "none"
    build_seconds: float
    library: LibraryInfo
    kernels: KernelsInfo | None
    app: AppContract
    schema: str = field(default=SCHEMA)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, out_dir: Path) -> None:
        (Path(out_dir) / FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        model = dict(data["model"])
        model["variant"] = Variant(**model["variant"]) if model.get("variant") else None
        app = dict(data["app"])
        app["preprocess"] = Preprocess(**{**app["preprocess"], "value_range": tuple(app["preprocess"]["value_range"])}) \
            if app.get("preprocess") else None
        app["calling_sequence"] = tuple(app["calling_sequence"])
        app["runtime_libraries"] = tuple(app["runtime_libraries"])
        return cls(
            name=data["name"], model=ModelInfo(**model),
            inputs=[TensorInfo(**t) for t in data["inputs"]], outputs=[TensorInfo(**t) for t in data["outputs"]],
            target=TargetInfo(**data["target"]), tvm_version=data["tvm_version"], builder=data["builder"],
            tuning=data["tuning"], schedules=data["schedules"], build_seconds=data["build_seconds"],
            library=LibraryInfo(**data["library"]),
            kernels=KernelsInfo(**data["kernels"]) if data.get("kernels") else None,
            app=AppContract(**app), schema=data["schema"],
        )

    @classmethod
    def read(cls, out_dir: str | Path) -> Manifest:
        """The manifest of a built artifact; a missing, damaged or older one is a UserError."""
        path = Path(out_dir) / FILE
        try:
            data = json.loads(path.read_text())
        except OSError:
            raise UserError(f"{out_dir} is not a built artifact: it has no {FILE}. Build it with "
                            f"compile/build.py (its folders are dist/<target>/<model>/).") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is damaged ({err}); build the model again with --rebuild.") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema", "none (an older build)") if isinstance(data, dict) else "none"
            raise UserError(f"{path} has manifest schema {found}; this version reads {SCHEMA}. "
                            f"Build the model again (compile/build.py ... --rebuild).")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError) as err:
            raise UserError(f"{path} does not follow {SCHEMA} ({type(err).__name__}: {err}); "
                            f"build the model again with --rebuild.") from None
