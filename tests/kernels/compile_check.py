"""Compile every Triton kernel ahead of time for an NVIDIA target, without a GPU.

Run as a script in a fresh process (TRITON_INTERPRET must be off when the kernels are
defined): ``python tests/kernels/compile_check.py [capability]``.  Prints one line per
kernel variant; exit 0 = all compiled, 1 = some failed, 77 = this triton cannot compile
ahead of time here (API or toolchain missing), which the test treats as a skip.
"""

import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except Exception as exc:  # pragma: no cover
    print(f"SKIP: {exc!r}")
    sys.exit(77)

import kernels  # noqa: E402,F401

BA, SP, NO, FU = (sys.modules["kernels." + m] for m in ("block_attention", "spectral", "noise", "fused"))


def compile_one(fn, types, constexprs, target, **options):
    signature = dict(zip(fn.arg_names, list(types) + ["constexpr"] * len(constexprs)))
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=target, options=options)


def variants(dt):
    prec = "ieee" if dt == "fp32" else "tf32"
    bm, bn, warps, stages = (64, 32, 4, 2) if dt == "fp32" else (128, 64, 8, 3)  # default_tiles on GPU
    p = f"*{dt}"
    yield (f"block_attention {dt}", BA._block_attention_fwd,
           [p, p, p, p, "*fp32", "*i32", "*i32", "*i8", "*i32", "*i32", "*i32", "*i32", "i32", "i32"]
           + ["i32"] * 16 + ["i32", "i32", "i32", "i32", "fp32"],
           {"HEAD_DIM": 128, "BLOCK_M": bm, "BLOCK_N": bn, "RETURN_LSE": True, "PRECISION": prec},
           dict(num_warps=warps, num_stages=stages))
    for mode in range(4):
        yield (f"spectral mode {mode} {dt}", SP._spectral_kernel,
               [p, p, p, p, "*fp32" if mode == 3 else p, "i32", "i32"] + ["i32"] * 9,
               {"BH": 64, "BW": 128, "MODE": mode, "PRECISION": prec}, dict(num_warps=8))
    yield (f"noise_init {dt}", NO._noise_init_kernel,
           [p] * 4 + ["*i32", "*i32", "*fp32", "*fp32", "*fp32", "i32", "i32", "i32", "fp32"] + ["i32"] * 12,
           {"HAS_FRESH": True, "HAS_SIGMA": True, "BLOCK": 4096}, dict(num_warps=8))
    yield (f"layernorm_modulate {dt}", FU._layernorm_modulate_kernel,
           [p] * 4 + ["i32", "i32", "i32", "fp32"] + ["i32"] * 12, {"BLOCK_D": 2048}, dict(num_warps=8))
    yield (f"qk_rmsnorm_rope {dt}", FU._qk_rmsnorm_rope_kernel,
           [p, p, "*fp32", "*fp32", p, "i32", "i32", "i32", "fp32"] + ["i32"] * 8, {"BLOCK_P": 1024},
           dict(num_warps=4))


def main() -> int:
    capability = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    target = GPUTarget("cuda", capability, 32)
    failed = 0
    for dt in ("bf16", "fp16", "fp32"):
        for name, fn, types, consts, opts in variants(dt):
            try:
                k = compile_one(fn, types, consts, target, **opts)
                print(f"OK   {name}: {len(k.asm.get('cubin', b''))} bytes cubin")
            except (ImportError, FileNotFoundError, NotImplementedError) as exc:
                print(f"SKIP: toolchain unavailable: {exc!r}")
                return 77
            except Exception as exc:
                failed += 1
                print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
