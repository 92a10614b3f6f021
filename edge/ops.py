"""The operations layer: what an operator (technician or backend) may do to the cabinet, done one way.

Every operation (``stop``, ``resume``, ``limit_set``, ``limit_clear``, ``clear``, ``selftest``):

- has ONE argument model (pydantic, strict types, units in field names, bounds from the config, e.g.
  ``amps`` at most ``limits.max_output_current_a``), validated in ONE place (:func:`validate`);
- follows the authority rules of :mod:`edge.operator` (each stop and limit keeps its source, the lowest
  limit wins, a source lifts only what it set, a local stop or limit is lifted only locally);
- is evaluated at once (``evaluate_now()`` after every change), so a cloud command acts as fast as a
  local one;
- becomes ONE audit event (kind ``command``, name = the operation; who, args summarised and bounded in
  size, ok, result), accepted or not. Refusals of local requests are rate-limited per user
  (:class:`RefusalLimit`: the first ``AUDIT_REFUSED_PER_WINDOW`` per ``AUDIT_WINDOW_S`` are recorded, the
  rest counted into one ``audit_suppressed`` event when the window ends), so a read-only user's flood of
  refused requests cannot fill the store; an accepted change is always recorded;
- fails with ONE exception type, :class:`OpError`, whose ``code`` is ``invalid_argument``, ``refused`` or
  ``forbidden`` and whose message says what to do.

The socket API (:mod:`edge.api.commands`) and the MQTT commands (:mod:`edge.telemetry.commands`) are
thin adapters onto :class:`Operations`. Operation names are the control-socket (protocol v1) names.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from edge.config import Config
from edge.limits import core, inputs, safety_inputs
from edge.operator import CLOUD, LOCAL, ExternalLimit, Held, OperatorState, Source
from hal.clock import Clock, LinuxClock

# faults cleared on site only, never from the cloud: the core's (welded contactor, unreadable latch file) and
# the safety inputs' (e-stop, water, tilt)
LOCAL_CLEAR_ONLY = core.LOCAL_CLEAR_ONLY + safety_inputs.LOCAL_CLEAR_ONLY

INVALID_ARGUMENT = "invalid_argument"
REFUSED = "refused"
FORBIDDEN = "forbidden"

LOCAL_MAX_LIMIT_S = 7 * 86400.0
CLOUD_MAX_LIMIT_S = 86400.0  # a cloud limit must end by itself: the backend may forget it
MAX_AUDIT_KEYS = 8
MAX_AUDIT_TEXT = 64
MAX_RESULT_TEXT = 300
AUDIT_REFUSED_PER_WINDOW = 20  # refusals recorded per local user and window; the rest only counted
AUDIT_WINDOW_S = 60.0

AuditSink = Callable[[str, str, dict[str, Any]], None]  # (kind, name, data), e.g. the daemon's event()
StatusSource = Callable[[], dict[str, Any]]


class OpError(Exception):
    """An operation not done: ``code`` is invalid_argument / refused / forbidden, ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlPort(Protocol):
    """The part of :class:`edge.control.Controller` the operations use."""

    operator: OperatorState

    @property
    def decision(self) -> dict[str, Any] | None: ...

    def set_external_limit(self, amps: float, duration_s: float | None, source: Source) -> None: ...
    def clear_external_limit(self, source: Source) -> ExternalLimit | None: ...
    def stop(self, source: Source) -> None: ...
    def resume(self, source: Source) -> str | None: ...
    def set_test_outputs(self, pump: bool | None, fan: bool | None, duration_s: float) -> None: ...
    def request_clear(self, fault: str) -> tuple[bool, str]: ...
    def evaluate_now(self) -> dict[str, Any]: ...


# -- argument models ---------------------------------------------------------------------------------
class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NoArgs(Args):
    pass


class StopArgs(Args):
    reason: str = Field("", max_length=200, description="why (free text, kept in the event)")


class LimitSetArgs(Args):
    amps: float = Field(description="current limit in A, 0..limits.max_output_current_a")
    duration_s: float | None = Field(
        None,
        validate_default=True,
        description="s until it ends by itself: 1..604800 locally (until cleared when absent), 1..86400 from the cloud",
    )

    @field_validator("amps")
    @classmethod
    def _amps_within_hardware(cls, v: float, info: ValidationInfo) -> float:
        hw_a = (info.context or {}).get("max_output_current_a", math.inf)
        if v < 0:
            raise PydanticCustomError("range", f"amps = {v:g} A outside 0..{hw_a:g} A")
        if v > hw_a:
            raise PydanticCustomError(
                "above_hardware", f"{v:g} A is above the hardware limit {hw_a:g} A (limits.max_output_current_a)"
            )
        return v

    @field_validator("duration_s")
    @classmethod
    def _duration_for_the_source(cls, v: float | None, info: ValidationInfo) -> float | None:
        cloud = (info.context or {}).get("source_kind") == CLOUD
        hi = CLOUD_MAX_LIMIT_S if cloud else LOCAL_MAX_LIMIT_S
        if v is None and cloud:
            raise PydanticCustomError(
                "required", f"duration_s must be a number in s, 1..{hi:g} s: a cloud limit must end by itself"
            )
        if v is not None and not 1.0 <= v <= hi:
            raise PydanticCustomError("range", f"duration_s = {v:g} s outside 1..{hi:g} s")
        return v


class ClearArgs(Args):
    fault: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$", description="a latched fault")


class SelftestArgs(Args):
    duration_s: float = Field(5.0, ge=1.0, le=60.0, description="s the pump and fan run")
    pump: bool = True
    fan: bool = True


ARGS: dict[str, type[Args]] = {
    "stop": StopArgs,
    "resume": NoArgs,
    "limit_set": LimitSetArgs,
    "limit_clear": NoArgs,
    "clear": ClearArgs,
    "selftest": SelftestArgs,
}


def _unit(field: str) -> str:
    return "A" if field == "amps" else "ms" if field.endswith("_ms") else "s" if field.endswith("_s") else ""


_NOT_A_NUMBER = {"float_type", "float_parsing", "finite_number", "int_type", "int_parsing"}


def _problem(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "args"
    kind = err["type"]
    if kind in _NOT_A_NUMBER:
        return f"{where} must be a number in {_unit(where)}, got {err.get('input')!r}"[:200]
    if kind == "missing":
        return f"{where} is required"
    if kind in ("range", "above_hardware", "required"):
        return str(err["msg"])
    return f"{where}: {err['msg']}"


def validate(op: str, raw: Mapping[str, Any] | None, source: Source, max_output_current_a: float) -> Args:
    """The one validation of an operation's arguments; raises :class:`OpError` (invalid_argument)."""
    model = ARGS.get(op)
    if model is None:
        raise OpError(INVALID_ARGUMENT, f"unknown operation {op!r} (known: {', '.join(ARGS)})")
    context = {"max_output_current_a": max_output_current_a, "source_kind": source.kind}
    try:
        args = model.model_validate(dict(raw or {}), context=context)
    except ValidationError as exc:
        errors = exc.errors()
        extra = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden")
        problems = [_problem(e) for e in errors if e["type"] != "extra_forbidden"]
        if extra:
            allowed = ", ".join(model.model_fields) or "none"
            problems.insert(0, f"unexpected field(s) {', '.join(extra)[:200]}; allowed: {allowed}")
        raise OpError(INVALID_ARGUMENT, "; ".join(problems)) from None
    if isinstance(args, ClearArgs) and source.kind == CLOUD and on_site_only(args.fault):
        # someone must look at the cabinet (e-stop, water, tilt, a welded contactor, a lost latch file, a module
        # group's relay): whatever limits.remote_clear_allowed says
        raise OpError(FORBIDDEN, f"{args.fault} may be cleared only on site (edge clear {args.fault} at the cabinet)")
    return args


def on_site_only(fault: str) -> bool:
    """Faults cleared on site only: :data:`LOCAL_CLEAR_ONLY` and a module group's (``relay_stuck_C``: a relay
    to look at before its group may switch again)."""
    from edge.charging.sharing import group_of_fault  # only for a clear: the daemon without [sharing] never loads it

    return fault in LOCAL_CLEAR_ONLY or group_of_fault(fault) is not None


def authorise(op: str, source: Source, remote_clear_allowed: bool) -> None:
    """Rules on who may run an operation at all (the socket's group check comes before this)."""
    if op == "clear" and source.kind == CLOUD and not remote_clear_allowed:
        raise OpError(FORBIDDEN, "remote clears disabled (limits.remote_clear_allowed = false): clear on site")
    if op == "selftest" and source.kind == CLOUD:
        raise OpError(FORBIDDEN, "a self-test runs on site only (edge selftest)")


# -- audit -------------------------------------------------------------------------------------------
def _scalar(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if v.bit_length() <= 53 else f"<int of {v.bit_length()} bits>"
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v if len(v) <= MAX_AUDIT_TEXT else v[:MAX_AUDIT_TEXT] + "..."
    return f"<{type(v).__name__}>"


def summarise(raw: Any) -> dict[str, Any]:
    """Arguments as kept in an audit event: at most 8 keys, short texts, always JSON-safe."""
    if not isinstance(raw, Mapping):
        return {} if raw is None else {"_": _scalar(raw)}
    out: dict[str, Any] = {}
    for i, (key, value) in enumerate(raw.items()):
        if i == MAX_AUDIT_KEYS:
            out["..."] = f"{len(raw) - MAX_AUDIT_KEYS} more"
            break
        out[str(key)[:32]] = _scalar(value)
    return out


@dataclass
class _Window:
    start_s: float
    recorded: int = 0
    suppressed: int = 0
    by_op: dict[str, int] = field(default_factory=dict)


class RefusalLimit:
    """At most ``per_window`` refusals recorded per source (a local user) in ``window_s``; the others are
    counted per operation and reported by :meth:`ended` once the window is over. Memory: one small
    window per source that was refused in the last ``window_s`` (sources are local users, so few)."""

    def __init__(self, per_window: int = AUDIT_REFUSED_PER_WINDOW, window_s: float = AUDIT_WINDOW_S) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._windows: dict[Source, _Window] = {}
        self.suppressed_total = 0

    def admit(self, source: Source, op: str, now_s: float) -> bool:
        w = self._windows.get(source)
        if w is None:
            w = self._windows[source] = _Window(now_s)
        if w.recorded < self.per_window:
            w.recorded += 1
            return True
        w.suppressed += 1
        w.by_op[op] = w.by_op.get(op, 0) + 1
        self.suppressed_total += 1
        return False

    def ended(self, now_s: float) -> list[tuple[Source, _Window]]:
        """Windows that are over and suppressed something (forgotten here, so reported once)."""
        over = [(src, w) for src, w in self._windows.items() if now_s - w.start_s >= self.window_s]
        for src, _ in over:
            del self._windows[src]
        return [(src, w) for src, w in over if w.suppressed]


@dataclass(frozen=True)
class Done:
    """An operation done: ``answer`` is the socket API's data, ``result`` the one-line outcome (the
    audit event's result and the cloud's cmd-result reason); ``ok`` False only for a failed self-test."""

    answer: dict[str, Any]
    result: str
    ok: bool = True


# -- self-test helpers -------------------------------------------------------------------------------
_SELFTEST_SIGNALS = inputs.SELFTEST
SELFTEST_SAMPLE_S = 0.2


def cable_values(st: dict[str, Any], cable: str | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for sig in _SELFTEST_SIGNALS:
        r = st.get("readings", {}).get(f"{cable}.{inputs.reading(sig)}") if cable else None
        out[sig] = r["value"] if r and r.get("quality") == "ok" else None
    return out


def settled_flow(flows: list[float]) -> float | None:
    """The flow the pump holds: the median of the second half of the readings (after spin-up). The
    highest reading would pass a pump that surges once and then fails."""
    tail = sorted(flows[len(flows) // 2 :])
    return tail[len(tail) // 2] if tail else None


# -- operations --------------------------------------------------------------------------------------
class Operations:
    """The one way to change the cabinet's operator state. See the module docstring for the rules.

    ``audit`` receives one ``("command", op, data)`` event per call (None: not audited here, for a caller
    that records the outcome itself); ``status`` returns the daemon's status dict (faults, latched,
    outputs, readings, enable), read by ``clear`` to explain a refusal and by ``selftest``.
    """

    def __init__(
        self,
        config: Config,
        control: ControlPort,
        audit: AuditSink | None,
        status: StatusSource,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.control = control
        self._audit_sink = audit
        self.status = status
        self.clock = clock or LinuxClock()
        self._selftest_lock = asyncio.Lock()
        self.refusals = RefusalLimit()

    # -- plumbing ------------------------------------------------------------------------------------
    def audit(self, op: str, source: Source, args: Any, ok: bool, result: str, code: str | None = None) -> None:
        """Record one command event; also used by adapters for requests refused before an operation
        (socket permission, malformed MQTT envelope). A local refusal beyond the user's allowance is only
        counted (see :class:`RefusalLimit`)."""
        if self._audit_sink is None:
            return
        self.flush_suppressed()
        if not ok and source.kind == LOCAL and not self.refusals.admit(source, op[:64], self.clock.monotonic()):
            return
        data: dict[str, Any] = {"op": op[:64], "source": source.kind, "user": source.who[:64], "by": source.label[:80]}
        if source.uid is not None:
            data["uid"] = source.uid
        if source.kind == CLOUD:
            data["id"] = source.who[:64]
        data.update(args=summarise(args), ok=ok, result=result[:MAX_RESULT_TEXT])
        if code is not None:
            data["code"] = code
        self._audit_sink("command", op[:64], data)

    def flush_suppressed(self) -> int:
        """One ``audit_suppressed`` event per user whose refusal window ended with refusals not recorded
        (called on every audit and periodically by the socket server); returns how many were emitted."""
        if self._audit_sink is None:
            return 0
        ended = self.refusals.ended(self.clock.monotonic())
        for source, w in ended:
            data: dict[str, Any] = {"op": "audit_suppressed", "source": source.kind, "user": source.who[:64]}
            if source.uid is not None:
                data["uid"] = source.uid
            data.update(
                by=source.label[:80],
                ok=False,
                suppressed=w.suppressed,
                ops=dict(sorted(w.by_op.items())[:MAX_AUDIT_KEYS]),
                window_s=self.refusals.window_s,
                result=f"{w.suppressed} more refused requests by {source.label[:80]} not recorded "
                f"(at most {self.refusals.per_window} per {self.refusals.window_s:g} s)",
            )
            self._audit_sink("command", "audit_suppressed", data)
        return len(ended)

    def validate(self, op: str, source: Source, raw: Mapping[str, Any] | None) -> Args:
        authorise(op, source, self.config.limits.remote_clear_allowed)
        return validate(op, raw, source, self.config.limits.max_output_current_a)

    def run(self, op: str, source: Source, raw: Mapping[str, Any] | None = None) -> Done:
        """Validate, authorise, do, evaluate at once and audit one synchronous operation by name."""
        body = self._sync.get(op)
        if body is None:
            raise OpError(INVALID_ARGUMENT, f"{op!r} is not a synchronous operation (known: {', '.join(self._sync)})")
        try:
            args = self.validate(op, source, raw)
            done = body(self, source, args)
        except Held as exc:
            self.audit(op, source, raw, False, str(exc), REFUSED)
            raise OpError(REFUSED, str(exc)) from None
        except OpError as exc:
            self.audit(op, source, raw, False, exc.message, exc.code)
            raise
        self.audit(op, source, args.model_dump(), done.ok, done.result)
        return done

    # -- the operations (typed entry points) --------------------------------------------------------
    def stop(self, source: Source, raw: Mapping[str, Any] | None = None) -> Done:
        return self.run("stop", source, raw)

    def resume(self, source: Source) -> Done:
        return self.run("resume", source)

    def limit_set(self, source: Source, raw: Mapping[str, Any]) -> Done:
        return self.run("limit_set", source, raw)

    def limit_clear(self, source: Source) -> Done:
        return self.run("limit_clear", source)

    def clear_fault(self, source: Source, raw: Mapping[str, Any]) -> Done:
        return self.run("clear", source, raw)

    # -- bodies (called by run() with validated arguments) -------------------------------------------
    def _stop(self, source: Source, args: Args) -> Done:
        self.control.stop(source)
        d = self.control.evaluate_now()
        return Done({"stopped": True, "limit_a": d["limit_a"], "enable": d["enable"]}, "stopped")

    def _resume(self, source: Source, args: Args) -> Done:
        was = self.control.resume(source)
        d = self.control.evaluate_now()
        still = self.control.operator.held_by_others(source, below_a=-1.0)
        result = f"resumed (was stopped by {was})" if was else "was not stopped"
        return Done(
            {"resumed": was is not None, "limit_a": d["limit_a"], "target_a": d["target_a"], "reason": d["reason"]},
            f"{result}; still {still}" if still else result,
        )

    def _limit_set(self, source: Source, args: Args) -> Done:
        assert isinstance(args, LimitSetArgs)
        self.control.set_external_limit(args.amps, args.duration_s, source)
        self.control.evaluate_now()
        lower = self.control.operator.held_by_others(source, stops=False, below_a=args.amps)
        result = f"limit {args.amps:g} A" + (f" for {args.duration_s:g} s" if args.duration_s else " until cleared")
        if lower:
            result += f"; lower and in force: {lower}"
        return Done(
            {
                "amps": args.amps,
                "duration_s": args.duration_s,
                "hardware_limit_a": self.config.limits.max_output_current_a,
                "expires_at_ms": int((time.time() + args.duration_s) * 1000) if args.duration_s else None,
            },
            result,
        )

    def _limit_clear(self, source: Source, args: Args) -> Done:
        had = self.control.clear_external_limit(source)
        self.control.evaluate_now()
        result = f"cleared {had.amps:g} A from {had.source}" if had else "no limit was set"
        still = self.control.operator.held_by_others(source, stops=False)
        return Done({"cleared": had is not None, "result": result}, f"{result}; still {still}" if still else result)

    def _clear(self, source: Source, args: Args) -> Done:
        assert isinstance(args, ClearArgs)
        st = self.status()
        cleared, why = self.control.request_clear(args.fault)  # evaluates at once
        if cleared:
            return Done({"fault": args.fault, "cleared": True}, "cleared")
        if why == "not latched":
            active = st.get("faults", {})
            if args.fault in active:
                gone = f"it clears by itself when the condition is gone ({active[args.fault]})"
                why = f"{args.fault} is not latched: {gone}"
            else:
                why = f"{args.fault} is not latched; latched now: {', '.join(st.get('latched', [])) or 'none'}"
        raise OpError(REFUSED, why)

    _sync: ClassVar[dict[str, Callable[[Operations, Source, Args], Done]]] = {
        "stop": _stop,
        "resume": _resume,
        "limit_set": _limit_set,
        "limit_clear": _limit_clear,
        "clear": _clear,
    }

    # -- self-test (runs for seconds, so asynchronous) -----------------------------------------------
    async def selftest(self, source: Source, raw: Mapping[str, Any] | None = None) -> Done:
        """Run pump and fan with the output off; report coolant flow and temperatures before, during, after."""
        try:
            args = self.validate("selftest", source, raw)
            assert isinstance(args, SelftestArgs)
            self._selftest_refusal()
        except OpError as exc:
            self.audit("selftest", source, raw, False, exc.message, exc.code)
            raise
        async with self._selftest_lock:
            done = await self._selftest_run(args)
        self.audit("selftest", source, args.model_dump(), done.ok, done.result)
        return done

    def _selftest_refusal(self) -> None:
        decision = self.control.decision or {}
        if decision.get("enable") or self.status()["outputs"]["contactor"]:
            raise OpError(REFUSED, "output is on (charging); run `edge stop` first, or wait until the session ends")
        if self._selftest_lock.locked():
            raise OpError(REFUSED, "a self-test is already running")

    async def _selftest_run(self, args: SelftestArgs) -> Done:
        cable = self.config.cable[0].name if self.config.cable else None
        before = cable_values(self.status(), cable)
        self.control.set_test_outputs(args.pump, args.fan, args.duration_s)
        self.control.evaluate_now()
        try:
            flows, outputs_seen, aborted = await self._selftest_watch(args.duration_s, cable)
        finally:
            self.control.set_test_outputs(None, None, 0.0)
            self.control.evaluate_now()
        after = cable_values(self.status(), cable)
        rule = self.config.limits.coolant_flow
        flow = settled_flow(flows)
        verdict, why = aborted or self._selftest_verdict(args.pump, flow)
        answer = {
            "verdict": verdict,
            "why": why,
            "duration_s": args.duration_s,
            "before": before,
            "after": after,
            "flow_settled_lpm": flow,
            "flow_min_lpm": min(flows) if flows else None,
            "flow_max_lpm": max(flows) if flows else None,
            "outputs_seen": outputs_seen,
            "flow_full_current_lpm": rule.derate_start_lpm,
            "flow_trip_lpm": rule.trip_lpm,
        }
        return Done(answer, f"{verdict}: {why}", ok=verdict == "pass")

    async def _selftest_watch(
        self, duration_s: float, cable: str | None
    ) -> tuple[list[float], dict[str, int], tuple[str, str] | None]:
        flows: list[float] = []
        outputs_seen = {"pump": 0, "fan": 0}
        t_end = self.clock.monotonic() + duration_s
        while self.clock.monotonic() < t_end:
            await asyncio.sleep(SELFTEST_SAMPLE_S)
            st = self.status()
            if st.get("enable"):
                return flows, outputs_seen, ("aborted", "output was enabled during the test: test outputs released")
            flow = cable_values(st, cable)[inputs.COOLANT_FLOW]
            if flow is not None:
                flows.append(flow)
            for k, seen in outputs_seen.items():
                outputs_seen[k] = max(seen, int(st["outputs"][k]))
        return flows, outputs_seen, None

    def _selftest_verdict(self, pump: bool, flow: float | None) -> tuple[str, str]:
        rule = self.config.limits.coolant_flow
        if not pump:
            return "pass", "pump not tested"
        if flow is None:
            return "fail", "no valid coolant flow reading during the test"
        if flow >= rule.derate_start_lpm:
            return "pass", f"flow {flow:.2f} l/min >= {rule.derate_start_lpm:g} l/min (full current)"
        if flow >= rule.trip_lpm:
            return "warn", (
                f"flow {flow:.2f} l/min below {rule.derate_start_lpm:g} l/min: "
                "charging will be derated; check coolant level and filter"
            )
        return "fail", (
            f"flow {flow:.2f} l/min below trip {rule.trip_lpm:g} l/min with the pump on: "
            "check pump, fuse, coolant level, kinked hose"
        )
