"""Strategies build job DAGs on the latent-frame timeline; the runtime executes them.

``build_plan(strategy, num_latent_frames, **options)`` returns a validated :class:`Plan`.
Strategies: ``ar``, ``mmpl``, ``longdwm``, ``mila`` (options: :data:`STRATEGY_OPTIONS`).
Everything here is pure Python: no tensors, no devices.
"""

from __future__ import annotations

from .ar import OPTIONS as _AR_OPTIONS, build_ar
from .core import (INPUT, Job, Plan, PlanError, conditioned_visibility, default_sigmas, make_job, tpd_table,
                   uniform_table)
from .longdwm import OPTIONS as _LONGDWM_OPTIONS, build_longdwm
from .mila import OPTIONS as _MILA_OPTIONS, build_mila
from .mmpl import OPTIONS as _MMPL_OPTIONS, build_mmpl

BUILDERS = {"ar": build_ar, "mmpl": build_mmpl, "longdwm": build_longdwm, "mila": build_mila}
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "ar": _AR_OPTIONS, "mmpl": _MMPL_OPTIONS, "longdwm": _LONGDWM_OPTIONS, "mila": _MILA_OPTIONS,
}
STRATEGIES = tuple(BUILDERS)


def build_plan(strategy: str, num_frames: int, *, sigmas: list[float] | None = None, first_given: bool = False,
               **options) -> Plan:
    """A validated plan for ``num_frames`` latent frames.

    sigmas: the sampler's shared schedule [steps+1] (default: the few-step 1000/750/500/250
    table with shift 5); first_given: position 0 is a given clean frame; options: the
    strategy's own (see :data:`STRATEGY_OPTIONS`; ``None`` values mean "default").
    """
    if strategy not in BUILDERS:
        raise PlanError(f"unknown strategy {strategy!r}; available: {STRATEGIES}")
    unknown = sorted(k for k in options if k not in STRATEGY_OPTIONS[strategy])
    if unknown:
        raise PlanError(f"strategy {strategy!r} takes no option(s) {unknown}; its options are "
                        f"{list(STRATEGY_OPTIONS[strategy])}")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise PlanError(f"num_frames (latent) must be an int >= 1, got {num_frames!r}")
    opts = {k: v for k, v in options.items() if v is not None}
    base = list(sigmas) if sigmas is not None else default_sigmas()
    return BUILDERS[strategy](num_frames, base=base, first_given=first_given, **opts).validate()


__all__ = ["INPUT", "Job", "Plan", "PlanError", "STRATEGIES", "STRATEGY_OPTIONS", "build_plan", "default_sigmas",
           "conditioned_visibility", "make_job", "tpd_table", "uniform_table"]
