"""``termlm doctor``: will this machine work? Facts, then a live check in a child process.

:func:`gather` collects what llama.cpp and the system report; :func:`live_check`
loads the model in ``python -m termlm.probe`` and times a prompt and 32 tokens;
:func:`diagnose_crash` turns a child's death into a cause and a fix.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from termlm import __version__, paths, sysinfo
from termlm.config import Settings

PROBE_TIMEOUT_S = 600.0
REBUILD_HINT = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON" pip install --force-reinstall '
                '--no-cache-dir llama-cpp-python')
PROBE_COMMAND = [sys.executable, "-m", "termlm.probe"]  # the seam tests replace


@dataclass
class Report:
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.facts, "problems": list(self.problems)}


def llama_cpp_requirement() -> str:
    """The llama-cpp-python versions termlm is tested with, from its own metadata."""
    from importlib import metadata

    try:
        for req in metadata.requires("termlm") or []:
            name, _, rest = req.partition(";")
            if name.replace("_", "-").lower().startswith("llama-cpp-python") \
                    and "extra" not in rest:
                spec = name.strip()[len("llama-cpp-python"):].strip()
                parts = sorted(spec.split(","), key=lambda p: not p.startswith(">"))
                return ",".join(parts) or "any"
    except metadata.PackageNotFoundError:
        pass
    return "unknown"


def _installed(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _versions(report: Report) -> None:
    llama_version = _installed("llama_cpp_python")
    tested = llama_cpp_requirement()
    report.facts["versions"] = {
        "termlm": __version__, "python": platform.python_version(),
        "llama_cpp_python": llama_version, "llama_cpp_python_tested": tested}
    if llama_version is None:
        report.problems.append("llama-cpp-python is not installed: pip install termlm")
        return
    try:
        from packaging.specifiers import SpecifierSet

        if tested not in ("any", "unknown") and llama_version not in SpecifierSet(tested):
            report.problems.append(f"llama-cpp-python {llama_version} is outside the tested "
                                   f"range {tested}")
    except ImportError:  # pragma: no cover - packaging comes with pip
        pass


def _backend(report: Report, settings: Settings) -> Any:
    from termlm.engine.backend import backend_info, decide_extra_buffers
    from termlm.engine.llama_common import gpu_offload_supported

    info = backend_info()
    choice = decide_extra_buffers(settings.cpu_extra_buffers, info)
    report.facts["cpu"] = {
        "machine": platform.machine(), "features": sorted(info.cpu_features),
        "amx": "AMX_INT8" in info.cpu_features or info.has_amx_buffers,
        "extra_buffer_types": list(info.extra_buffer_types),
        "extra_buffers": {"setting": choice.setting, "use": choice.use,
                          "reason": choice.reason}}
    report.facts["gpu"] = {"offload_supported": gpu_offload_supported(),
                           "devices": [d.to_dict() for d in info.gpus]}
    return info


def _threads(report: Report, settings: Settings) -> None:
    cores = sysinfo.physical_cores()
    chosen = settings.threads or sysinfo.default_threads()
    report.facts["threads"] = {
        "generation": chosen, "batch": chosen,
        "from": settings.source.get("threads", "default") if settings.threads
        else "physical cores in this process's CPU affinity",
        "physical_cores": cores, "logical_cpus": len(sysinfo.allowed_cpus())}


def _model(report: Report, settings: Settings, info: Any, notify: Any) -> Any:
    from termlm.engine.loader import effective_ctx
    from termlm.errors import TermlmError
    from termlm.models.memory import memory_need
    from termlm.models.resolve import resolve_model

    available = sysinfo.available_ram()
    gpus = [d for d in info.gpus if d.memory_total] if settings.n_gpu_layers != 0 else []
    vram = max((d.memory_free for d in gpus), default=None)
    report.facts["memory"] = {"available_ram": available, "total_ram": sysinfo.total_ram(),
                              "free_vram": vram}
    try:
        model = resolve_model(settings.model, settings, allow_pull=not settings.offline,
                              notify=notify)
    except TermlmError as exc:
        report.facts["model"] = {"name": settings.model, "error": exc.message}
        report.problems.append(f"model {settings.model}: {exc.message}"
                               + (f" ({exc.hint})" if exc.hint else ""))
        return None
    n_ctx = effective_ctx(settings.n_ctx, model.header.context_length)
    need = memory_need(model.header, n_ctx)
    budget = vram if (vram is not None and gpus) else available
    fits = need.fits(budget)
    report.facts["model"] = {"name": model.name, "path": str(model.path),
                             "n_ctx": n_ctx, "need": need.to_dict(),
                             "fits_in": "vram" if (vram is not None and gpus) else "ram",
                             "fits": fits}
    if fits is False:
        report.problems.append(f"model {model.name} needs about {need.total >> 20} MiB at "
                               f"context {n_ctx}; {(budget or 0) >> 20} MiB is free "
                               "(lower --ctx or pick a smaller model)")
    return model


def _dirs(report: Report) -> None:
    report.facts["dirs"] = {
        name: {"path": str(path), "free_disk": sysinfo.free_disk(path)}
        for name, path in (("models", paths.models_dir()), ("cache", paths.cache_dir()),
                           ("config", paths.config_dir()))}


def gather(settings: Settings, *, notify: Any = None) -> tuple[Report, Any]:
    """Every fact but the live check; returns the report and the resolved model (or None)."""
    report = Report()
    _versions(report)
    info = _backend(report, settings)
    _threads(report, settings)
    model = _model(report, settings, info, notify)
    _dirs(report)
    return report, model


def diagnose_crash(signum: int, *, extra_buffers_used: bool, amx: bool) -> dict[str, str]:
    """The likely cause of a crash in llama.cpp, and what to do about it."""
    from termlm.crashguard import signal_name

    name = signal_name(signum)
    if amx and extra_buffers_used:
        cause = ("llama.cpp's AMX kernel (ggml_backend_amx_mul_mat), used for the weights on "
                 "CPUs with AMX, crashes (llama.cpp#20824)")
        fix = ("leave --cpu-extra-buffers at auto (or set it off), or rebuild: "
               + REBUILD_HINT)
    elif signum == signal.SIGILL:
        cause = ("llama-cpp-python was compiled for instructions this CPU lacks "
                 "(a build made on another machine)")
        fix = "rebuild it on this machine: " + REBUILD_HINT
    elif signum == signal.SIGKILL:
        cause = "the process was killed, most likely for lack of memory"
        fix = "pick a smaller model or lower --ctx"
    else:
        cause = "llama.cpp crashed in its CPU kernels"
        fix = "try --cpu-extra-buffers off, or rebuild: " + REBUILD_HINT
    return {"signal": name, "cause": cause, "fix": fix}


def live_check(settings: Settings, model: Any, report: Report) -> dict[str, Any]:
    """Load ``model`` in a child process, decode a prompt and 32 tokens; record the result."""
    from termlm.engine.loader import effective_ctx

    args = {"path": str(model.path), "name": model.name,
            "n_ctx": min(2048, effective_ctx(settings.n_ctx, model.header.context_length)),
            "n_ctx_train": model.header.context_length or 0, "threads": settings.threads,
            "n_gpu_layers": settings.n_gpu_layers, "flash_attn": settings.flash_attn,
            "cpu_extra_buffers": settings.cpu_extra_buffers}
    env = dict(os.environ)
    try:
        proc = subprocess.run([*PROBE_COMMAND, json.dumps(args)], capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S, env=env, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        result: dict[str, Any] = {"ok": False, "error": f"no answer within "
                                  f"{PROBE_TIMEOUT_S:.0f} s"}
        report.problems.append("live check: the model did not answer in time")
        return result
    if proc.returncode < 0:
        cpu = report.facts.get("cpu", {})
        crash = diagnose_crash(-proc.returncode,
                               extra_buffers_used=bool(cpu.get("extra_buffers", {}).get("use")),
                               amx=bool(cpu.get("amx")))
        result = {"ok": False, "crashed": True, **crash}
        report.problems.append(f"live check: llama.cpp crashed ({crash['signal']}): "
                               f"{crash['cause']}; fix: {crash['fix']}")
        return result
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        result = {"ok": False, "error": f"the check exited {proc.returncode}: {tail}"}
    if not result.get("ok"):
        report.problems.append(f"live check: {result.get('error', 'failed')}")
    elif not result.get("tokens"):
        result["ok"] = False
        report.problems.append("live check: the model generated nothing")
    return result


def run_doctor(settings: Settings, *, live: bool = True, notify: Any = None) -> Report:
    report, model = gather(settings, notify=notify)
    if live and model is not None:
        report.facts["live_check"] = live_check(settings, model, report)
    elif live:
        report.facts["live_check"] = {"ok": False, "error": "no model to check"}
    return report


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:,.0f} MiB"


def render(report: Report) -> list[str]:
    """The report as text lines for a person."""
    f = report.facts
    v, cpu, gpu, th = f["versions"], f["cpu"], f["gpu"], f["threads"]
    lines = [
        f"termlm {v['termlm']}, Python {v['python']}, llama-cpp-python "
        f"{v['llama_cpp_python'] or 'missing'} (tested: {v['llama_cpp_python_tested']})",
        f"CPU ({cpu['machine']}): {' '.join(cpu['features']) or 'no features reported'}",
        f"  AMX: {'yes' if cpu['amx'] else 'no'}; llama.cpp's extra buffer types: "
        f"{', '.join(cpu['extra_buffer_types']) or 'none'}",
        f"  extra buffers {cpu['extra_buffers']['reason']}",
        f"GPU offload: {'supported' if gpu['offload_supported'] else 'not in this build'}"
        + "".join(f"\n  {d['name']} ({d['description']}): {_mib(d['memory_free'])} free of "
                  f"{_mib(d['memory_total'])}" for d in gpu["devices"]),
        f"threads: {th['generation']} for generation and batches ({th['from']}; "
        f"{th['physical_cores']} physical cores, {th['logical_cpus']} logical CPUs)",
    ]
    mem, model = f["memory"], f.get("model", {})
    line = f"memory: {_mib(mem['available_ram'])} available of {_mib(mem['total_ram'])}"
    if mem.get("free_vram") is not None:
        line += f"; {_mib(mem['free_vram'])} free VRAM"
    lines.append(line)
    if "need" in model:
        need = model["need"]
        fits = {True: "fits", False: "does NOT fit", None: "fit unknown"}[model["fits"]]
        lines.append(f"model {model['name']} at context {model['n_ctx']}: needs "
                     f"{_mib(need['total'])} (weights {_mib(need['weights'])}, KV cache "
                     f"{_mib(need['kv_cache'])}, compute {_mib(need['compute'])}): {fits} "
                     f"in {model['fits_in'].upper()}")
        lines.append(f"  {model['path']}")
    elif model:
        lines.append(f"model {model['name']}: {model.get('error')}")
    for name, d in f["dirs"].items():
        lines.append(f"{name} dir: {d['path']} ({_mib(d['free_disk'])} free)")
    live = f.get("live_check")
    if live is not None:
        if live.get("ok"):
            lines.append(f"live check: loaded in {live['load_s']:.2f} s; prompt "
                         f"{live['prompt_tokens']} tokens at {live['prompt_tokens_per_s']:.0f}"
                         f" tok/s; generated {live['tokens']} tokens at "
                         f"{live['tokens_per_s']:.1f} tok/s")
        elif live.get("crashed"):
            lines.append(f"live check: FAILED, llama.cpp crashed ({live['signal']})")
            lines.append(f"  likely cause: {live['cause']}")
            lines.append(f"  fix: {live['fix']}")
        else:
            lines.append(f"live check: FAILED: {live.get('error')}")
    lines.append("ok: this machine is ready" if report.ok else
                 f"{len(report.problems)} problem(s):")
    lines.extend(f"  - {p}" for p in report.problems)
    return lines

