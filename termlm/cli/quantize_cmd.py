"""`termlm models quantize`: write a model in another quantization and alias it."""

from __future__ import annotations

import sys
import time
from typing import IO, Annotated

import typer

from termlm.cli.common import handles_errors, state

TYPES_HELP = ("Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, "
              "Q6_K, F16 or BF16 (any case).")


class TensorProgress:
    """``quantizing: 120/272 tensors``: a live line on a terminal, every tenth otherwise."""

    def __init__(self, stream: IO[str], *, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._step = 0
        self._drawn = 0.0
        self._open = False

    def __call__(self, done: int, total: int) -> None:
        text = f"quantizing: {done}/{total} tensors"
        if self.live:
            now = time.monotonic()
            if done < total and now - self._drawn < 0.1:
                return
            self._drawn = now
            self.stream.write("\r\x1b[2K" + text)
            self._open = True
        else:
            step = done * 10 // total if total > 0 else 0
            if step <= self._step:
                return
            self._step = step
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line, so what follows starts on a line of its own."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


@handles_errors
def quantize(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(
        help="The model to quantize: a catalog name, a local alias, hf:owner/repo/file.gguf, "
        "or a .gguf path (pulled first if need be).", metavar="SRC", show_default=False)],
    type_name: Annotated[str, typer.Argument(help="The quantization: " + TYPES_HELP,
                                             metavar="TYPE", show_default=False)],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Where to write it: a file, or a directory (DIR/). Default: "
        "<models dir>/<source name>-<TYPE>.gguf.", metavar="PATH", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="The alias to add to the config file. Default: the source's name "
        "and the type, e.g. smollm2-q8.", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing output file (and repoint an existing alias).")
    ] = False,
    allow_requantize: Annotated[bool, typer.Option(
        "--allow-requantize", help="Allow a source that is already quantized (not F32, F16 "
        "or BF16): the result is no better than the source.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads for llama.cpp (default: one per core).",
        show_default=False)] = None,
) -> None:
    """Quantize a model with llama.cpp, then add it as a local alias.

    The file is written under a temporary name beside the output and renamed into
    place only after llama.cpp succeeds and its GGUF header checks out: Ctrl-C or a
    crash never leaves a partial model. Progress and sizes go to stderr; the output
    path goes to stdout.

    Example: termlm models quantize smollm2 Q8_0 --allow-requantize
    """
    from termlm.models.pull import human_size
    from termlm.models.quantize import QuantizeOptions, quantize_model
    from termlm.output import is_tty, notice

    options = QuantizeOptions(source=source, type_name=type_name, output=output, alias=name,
                              force=force, allow_requantize=allow_requantize, threads=threads)
    app_state = state(ctx)  # -v: llama.cpp log lines would break a live line
    progress = TensorProgress(sys.stderr, live=is_tty(sys.stderr) and not app_state.verbose)
    try:
        result = quantize_model(options, app_state.settings(), notify=notice,
                                on_progress=progress)
    finally:
        progress.close()
    change = (result.size - result.source_size) / result.source_size * 100
    notice(f"quantized in {result.seconds:.1f} s: {human_size(result.source_size)} "
           f"({result.source_quantization}) -> {human_size(result.size)} "
           f"({result.type_name}), {change:+.0f}%")
    notice(f"added alias {result.alias} to {result.config_file}; "
           f"use it with: termlm ask -m {result.alias} ...")
    sys.stdout.write(f"{result.path}\n")
