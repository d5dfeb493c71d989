"""What llama.cpp's ggml backends say about this machine, and the AMX guard.

llama-cpp-python binds llama.h only; the backend registry (devices, the CPU
backend's features and its extra weight buffer types) lives in ``libggml``, which
ships beside ``libllama`` and is already loaded with it. This module asks it
through ctypes, so every fact comes from llama.cpp itself, not from a CPU model
name.

The guard: llama.cpp's AMX buffer type (used for the weights when the CPU backend
lists it among its extra buffer types) crashes the process in
``ggml_backend_amx_mul_mat`` on current Xeons (ggml-org/llama.cpp#20824). With
``cpu_extra_buffers: auto`` termlm then loads models with
``use_extra_bufts = false``: plain CPU weights, which also gives up llama.cpp's
other weight repacking (``CPU_REPACK``) on that machine.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from termlm.errors import EngineError

EXTRA_BUFFER_CHOICES = ("auto", "on", "off")
AMX_BUFFER_TYPE = "AMX"

_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # cpu, gpu, igpu, accel
    memory_free: int
    memory_total: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "kind": self.kind,
                "memory_free": self.memory_free, "memory_total": self.memory_total}


@dataclass(frozen=True)
class BackendInfo:
    """The CPU backend's features and extra buffer types, and every device."""

    cpu_features: dict[str, str] = field(default_factory=dict)
    extra_buffer_types: tuple[str, ...] = ()
    devices: tuple[Device, ...] = ()

    @property
    def has_amx_buffers(self) -> bool:
        return AMX_BUFFER_TYPE in self.extra_buffer_types

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind in ("gpu", "igpu"))

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_features": self.cpu_features,
                "extra_buffer_types": list(self.extra_buffer_types),
                "devices": [d.to_dict() for d in self.devices]}


@dataclass(frozen=True)
class ExtraBuffers:
    """Whether models load with llama.cpp's extra CPU buffer types, and why."""

    use: bool
    setting: str
    reason: str


def decide_extra_buffers(setting: str, info: BackendInfo) -> ExtraBuffers:
    """The guard: ``auto`` leaves the extra buffer types out when one of them is AMX's."""
    if setting not in EXTRA_BUFFER_CHOICES:
        raise EngineError(f"cpu_extra_buffers must be auto, on or off, not {setting!r}")
    listed = ", ".join(info.extra_buffer_types) or "none"
    if setting == "on":
        return ExtraBuffers(True, setting, f"on by setting (llama.cpp lists: {listed})")
    if setting == "off":
        return ExtraBuffers(False, setting, "off by setting")
    if info.has_amx_buffers:
        return ExtraBuffers(False, setting, "off: llama.cpp would put the weights in its AMX "
                            "buffer type, which crashes (llama.cpp#20824); "
                            "--cpu-extra-buffers on to use it anyway")
    return ExtraBuffers(True, setting, f"on: no AMX buffer type among llama.cpp's extra "
                        f"buffer types ({listed})")


def _ggml(llama_cpp: Any) -> ctypes.CDLL:
    """``libggml`` from beside the loaded ``libllama`` (the same library, not a second copy)."""
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    names = ("libggml.so", "libggml.dylib", "ggml.dll")
    for name in names:
        path = lib_dir / name
        if path.exists():
            lib = ctypes.CDLL(str(path), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
            _declare(lib)
            return lib
    raise EngineError(f"llama.cpp's ggml library is not in {lib_dir}")


def _declare(lib: ctypes.CDLL) -> None:
    vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    for name, args, res in (
        ("ggml_backend_dev_count", [], sz),
        ("ggml_backend_dev_get", [sz], vp),
        ("ggml_backend_dev_name", [vp], cp),
        ("ggml_backend_dev_description", [vp], cp),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ("ggml_backend_dev_backend_reg", [vp], vp),
        ("ggml_backend_reg_get_proc_address", [vp, cp], vp),
        ("ggml_backend_buft_name", [vp], cp),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


@functools.lru_cache(maxsize=1)
def backend_info() -> BackendInfo:
    """Ask llama.cpp's backend registry (loads the bindings; cached for the process)."""
    from termlm.engine.llama_common import bindings

    llama_cpp = bindings()
    llama_cpp.llama_backend_init()
    lib = _ggml(llama_cpp)
    devices: list[Device] = []
    cpu_dev: int | None = None
    for i in range(int(lib.ggml_backend_dev_count())):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = _DEVICE_TYPES.get(int(lib.ggml_backend_dev_type(dev)), "other")
        devices.append(Device(_text(lib.ggml_backend_dev_name(dev)),
                              _text(lib.ggml_backend_dev_description(dev)), kind,
                              int(free.value), int(total.value)))
        if kind == "cpu" and cpu_dev is None:
            cpu_dev = dev
    features: dict[str, str] = {}
    extra: list[str] = []
    if cpu_dev is not None:
        reg = lib.ggml_backend_dev_backend_reg(cpu_dev)
        get_features = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
        if get_features:
            fn = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)(get_features)
            items = fn(reg)
            i = 0
            while items and items[i].name:
                features[_text(items[i].name)] = _text(items[i].value)
                i += 1
        get_extra = lib.ggml_backend_reg_get_proc_address(
            reg, b"ggml_backend_dev_get_extra_bufts")
        if get_extra:
            fn2 = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(get_extra)
            bufts = fn2(cpu_dev)
            i = 0
            while bufts and bufts[i]:
                extra.append(_text(lib.ggml_backend_buft_name(bufts[i])))
                i += 1
    return BackendInfo(features, tuple(extra), tuple(devices))


def extra_buffers(setting: str) -> ExtraBuffers:
    """The guard's choice for ``setting`` on this machine, logged for ``-v``."""
    import logging

    choice = decide_extra_buffers(setting, backend_info())
    logging.getLogger("termlm.llama").debug("cpu extra buffers %s", choice.reason)
    return choice


def patch_llama_defaults(setting: str) -> ExtraBuffers:
    """Make llama-cpp-python's ``Llama`` (and its server) load with the guard's choice.

    ``Llama`` has no option for ``use_extra_bufts``; it fills its model parameters from
    ``llama_model_default_params()``, so this wraps that function. For the reference
    engine, the benchmark's baselines and the test server.
    """
    from termlm.engine.llama_common import bindings

    low = bindings()
    choice = extra_buffers(setting)
    original = getattr(low.llama_model_default_params, "_termlm_original",
                       low.llama_model_default_params)

    def default_params() -> Any:
        params = original()
        params.use_extra_bufts = choice.use
        return params

    default_params._termlm_original = original  # type: ignore[attr-defined]
    low.llama_model_default_params = default_params
    return choice
