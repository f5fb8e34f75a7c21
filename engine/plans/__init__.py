"""Strategies build job DAGs over clips; the runtime executes them.

``build_plan(strategy, num_latent_frames, **options)`` (or ``options=MmplOptions(...)``)
returns a validated :class:`Plan`. Strategies: ``ar``, ``mmpl``, ``longdwm``, ``mila``;
their options are typed dataclasses (:data:`STRATEGY_OPTION_TYPES`), whose field names
are :data:`STRATEGY_OPTIONS`. Everything here is pure Python: no tensors, no devices.
"""

from __future__ import annotations

import dataclasses

from .ar import ArOptions, build_ar
from .core import (INPUT, CacheSpec, Clip, DecodeJob, EncodeJob, Job, Plan, PlanError, conditioned_visibility,
                   default_sigmas, make_job, tpd_table, uniform_table)
from .longdwm import LongdwmOptions, build_longdwm
from .mila import MilaOptions, build_mila
from .mmpl import MmplOptions, build_mmpl

BUILDERS = {"ar": build_ar, "mmpl": build_mmpl, "longdwm": build_longdwm, "mila": build_mila}
STRATEGY_OPTION_TYPES = {"ar": ArOptions, "mmpl": MmplOptions, "longdwm": LongdwmOptions, "mila": MilaOptions}
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    k: tuple(f.name for f in dataclasses.fields(t)) for k, t in STRATEGY_OPTION_TYPES.items()}
STRATEGIES = tuple(BUILDERS)


def strategy_options(strategy: str, options=None, **kw):
    """The typed options of ``strategy``: ``options`` (its dataclass) with ``kw`` replacing
    fields (``None`` values mean "default"). Raises :class:`PlanError` naming unknown
    strategies or options."""
    if strategy not in BUILDERS:
        raise PlanError(f"unknown strategy {strategy!r}; available: {STRATEGIES}")
    cls = STRATEGY_OPTION_TYPES[strategy]
    if options is not None and not isinstance(options, cls):
        raise PlanError(f"strategy {strategy!r} takes options={cls.__name__}(...), got {type(options).__name__}")
    unknown = sorted(k for k in kw if k not in STRATEGY_OPTIONS[strategy])
    if unknown:
        raise PlanError(f"strategy {strategy!r} takes no option(s) {unknown}; its options are "
                        f"{list(STRATEGY_OPTIONS[strategy])}")
    return dataclasses.replace(options or cls(), **{k: v for k, v in kw.items() if v is not None})


def build_plan(strategy: str, num_frames: int, *, sigmas: list[float] | None = None, first_given: bool = False,
               options=None, prior_frames: int = 0, **kw) -> Plan:
    """A validated plan for ``num_frames`` latent frames of video.

    sigmas: the sampler's shared schedule [steps+1] (default: the few-step 1000/750/500/250
    table with shift 5); first_given: position 0 is a given clean frame; prior_frames: P
    given condition frames before the video (``mila`` only: MiLA's prior frames); options /
    kw: the strategy's own (:func:`strategy_options`).
    """
    opts = strategy_options(strategy, options, **kw)
    if not isinstance(num_frames, int) or num_frames < 1:
        raise PlanError(f"num_frames (latent) must be an int >= 1, got {num_frames!r}")
    base = list(sigmas) if sigmas is not None else default_sigmas()
    extra = {}
    if prior_frames:
        if strategy != "mila":
            raise PlanError(f"prior_frames are MiLA's condition frames: strategy 'mila' takes them, {strategy!r} does not")
        extra["prior_frames"] = int(prior_frames)
    return BUILDERS[strategy](num_frames, base=base, first_given=first_given, **dataclasses.asdict(opts),
                              **extra).validate()


__all__ = ["INPUT", "ArOptions", "CacheSpec", "Clip", "DecodeJob", "EncodeJob", "Job", "LongdwmOptions", "MilaOptions",
           "MmplOptions", "Plan", "PlanError", "STRATEGIES", "STRATEGY_OPTIONS", "STRATEGY_OPTION_TYPES",
           "build_plan", "conditioned_visibility", "default_sigmas", "make_job", "strategy_options", "tpd_table",
           "uniform_table"]
