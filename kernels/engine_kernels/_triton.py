"""Optional triton import shared by the kernel modules.

Triton is a dependency on Linux, but the references must keep working where it is
missing (macOS, Windows, a broken install).  Kernel modules therefore write
``from engine_kernels._triton import triton, tl`` and decorate with ``@triton.jit`` as usual;
when triton is missing, ``triton`` and ``tl`` are small stand-ins whose ``jit``
returns a function that raises, so module import still succeeds and
:func:`triton_available` reports why the kernels cannot run.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - exercised only without triton
    _IMPORT_ERROR = f"triton cannot be imported: {exc!r}"

    class _MissingTriton:
        """Stand-in for ``triton``: ``jit`` yields functions that raise on use."""

        @staticmethod
        def jit(fn=None, **_kwargs):
            def wrap(f):
                def unavailable(*_a, **_k):
                    raise RuntimeError(_IMPORT_ERROR)

                unavailable.__name__ = f.__name__
                return unavailable

            return wrap(fn) if fn is not None else wrap

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, (n - 1).bit_length())

    class _MissingLanguage:
        """Stand-in for ``triton.language``: only what annotations touch at def time."""

        constexpr = "constexpr"

        def __getattr__(self, name):
            raise RuntimeError(_IMPORT_ERROR)

    triton = _MissingTriton()  # type: ignore[assignment]
    tl = _MissingLanguage()  # type: ignore[assignment]


def interpreting() -> bool:
    """True when triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_set_late() -> str | None:
    """Why the interpreter cannot run our kernels although ``TRITON_INTERPRET=1`` is set now
    (triton was imported before it was set -- e.g. by ``torch._dynamo`` -- so its own
    ``tl.sum`` & co. are compiled-mode functions that fail inside an interpreted kernel), or
    None when it can."""
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except Exception:  # noqa: BLE001 - another triton layout: nothing to tell
        return None
    fn = getattr(tl, "sum", None)
    if isinstance(fn, JITFunction) and not isinstance(fn, InterpretedFunction):
        return ("TRITON_INTERPRET=1 was set after triton was imported (by torch._dynamo, diffusers, ...), so triton "
                "runs its own functions compiled and our kernels cannot run in the interpreter: set "
                "TRITON_INTERPRET=1 before Python starts")
    return None


def triton_available() -> tuple[bool, str]:
    """Whether the Triton kernels can run here, and a human-readable reason.

    Returns ``(True, "cuda")`` with a CUDA device, ``(True, "interpreter")`` when
    ``TRITON_INTERPRET=1`` (CPU tensors, slow), otherwise ``(False, why)``.
    """
    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    if interpreting():
        late = interpreter_set_late()
        if late:
            return False, late
        return True, "interpreter (TRITON_INTERPRET=1, CPU tensors; slow, bfloat16 dot unreliable)"
    if torch.cuda.is_available():
        return True, f"cuda ({torch.cuda.get_device_name()})"
    return False, "no CUDA device and TRITON_INTERPRET is not set"


def check_device(*tensors: torch.Tensor) -> None:
    """Raise a clear error when tensors cannot be handed to a triton kernel here."""
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(f"triton kernels unavailable: {why}")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    (device,) = devices
    if interpreting():
        if device.type != "cpu":
            raise ValueError(f"TRITON_INTERPRET=1 runs kernels on CPU tensors, got {device}")
    elif device.type != "cuda":
        raise ValueError(f"triton kernels need CUDA tensors, got {device}")


def next_pow2(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()
