"""English texts of the safety core and the daemon, as translation templates for the rendering edge.

The safety core (edge/limits) runs under MicroPython and imports nothing: it writes its reasons and fault
details in English (``"hardware limit 200 A"``). Each text it can produce is listed here once as a template
with named placeholders (the msgid in the catalogues); :func:`edge.i18n.core_text` matches a text against
them and renders the translation with the same values. A text no template matches stays English (never
lost, never wrong). Keep these in step with the ``%`` formats in edge/limits/*.py: tests/test_i18n.py
translates real decisions of the core and fails when a template no longer matches, and checks that every
text the core gives in the scenario vectors (tests/vectors) matches a template whole. This is how the core's
reasons stay structured for the CLI (issue 19 item 6): the template is the rule's text, its placeholders
the values and thresholds with their units; the core itself stays free of catalogues (MicroPython).
"""

from __future__ import annotations

from edge.i18n import N_

# Placeholders called detail, reason or text hold another text of this list (translated in turn).
CORE_TEXTS: tuple[str, ...] = (
    # limit reasons (edge/limits/core.py, connectors.py)
    N_("hardware limit {amps} A"),
    N_("vehicle request {amps} A"),
    N_("external limit {amps} A (CLI/cloud)"),
    N_("power modules: {available} of {configured} available x {per_a} A"),
    N_("tripped: {fault}: {detail} (+{more} more)"),
    N_("tripped: {fault}: {detail}"),
    N_("stopped by operator"),
    N_("held {seconds} s after a reduction"),
    N_("rising {rate} A/s"),
    N_("voltage set-point {volts} V invalid, 0 V sent"),
    N_("voltage set-point {volts} V clamped to {max_v} V"),
    N_("{sensor} {value} °C (derating {start}-{end} °C)"),
    N_("coolant flow {flow} l/min (derating {start}-{end} l/min)"),
    N_("site fuse: L{phase} at {amps} A of {fuse_a} A (margin {margin_a} A)"),
    N_("grid meter lost: fallback {amps} A per phase"),
    N_("grid meter not read yet: fallback {amps} A per phase"),
    N_("site fuse: last good meter reading {ms} ms ago"),
    N_("shared by {n} connectors"),
    N_("no session ({cause})"),
    N_("requested {volts} V below the connector minimum {min_v} V"),
    N_("requested power {kw} kW at {volts} V"),
    N_("{phase}: at most {amps} A"),
    N_("hardware power {kw} kW at {volts} V"),
    N_("connector {name}: {text}"),
    # fault details
    N_("{detail} (latched)"),
    N_("power module {address} not answering; its share removed"),
    N_("power module {address} alarm: {alarms}; its share removed"),
    N_("all {n} power modules lost: output stopped"),
    N_("no power module available ({n} configured): output stopped"),
    N_("{sensor} missing: no reading received"),
    N_("{sensor} stale: no valid value for {ms} ms (max {max_ms} ms)"),
    N_("{sensor} invalid: value unusable (sensor fault, out of range, or the cable monitor stuck or losing frames)"),
    N_("{sensor} {value} °C above trip {trip} °C"),
    N_("{sensor} jumped {step} °C in {ms} ms (max {rate} °C/s + {allowance} °C)"),
    N_("DC+ {plus} °C and DC- {minus} °C pins differ by {diff} °C (max {max_c} °C)"),
    N_("a pin sensor is not valid: cannot compare DC+ and DC-"),
    N_("{sensor} temperature {why} (max age {ms} ms)"),
    N_("{sensor} temperature not reported: cannot confirm it is below trip"),
    N_("{sensor} not valid: cannot confirm it is below trip"),
    N_("coolant flow not valid: cannot confirm it is back in range"),
    N_("leak sensor not valid: cannot confirm the leak is gone"),
    N_("condition still present: {detail}"),
    N_("coolant flow {flow} l/min below {trip} l/min for {ms} ms"),
    N_("coolant flow {flow} l/min below {trip} l/min: run the pump and check the level"),
    N_("output {amps} A above limit {limit} A + {tolerance} A for {ms} ms"),
    N_("output {amps} A above limit {limit} A + {tolerance} A for {ms} ms: {modules}"),
    N_("output {amps} A still above limit {limit} A + {tolerance} A"),
    N_("output {volts} V above {max_v} V for {ms} ms"),
    N_("output {volts} V still above {max_v} V"),
    N_("grid meter: no good reading for {ms} ms (max {max_ms} ms)"),
    N_("request stale: no mode or set-point for {ms} ms (max {max_ms} ms)"),
    N_("session ended ({cause}): output {amps} A below {off_a} A, contactor opened"),
    N_("session ended ({cause}): output still {amps} A after {ms} ms (off current {off_a} A), contactor opened anyway"),
    N_("session ended ({cause}): output not measured after {ms} ms (off current {off_a} A), contactor opened anyway"),
    N_("power sharing: no module group allocated"),
    N_("coolant leak detected by the cable monitor (pump stopped)"),
    N_("{sensor}: waiting for the first reading"),
    N_("not latched"),
    # contactor feedback and pre-charge (edge/limits/contactor.py)
    N_("mirror contact still reads closed {ms} ms after the open command: contactor welded, connector out of service"),
    N_(
        "mirror contact still reads closed {ms} ms after start-up (never commanded closed): contactor welded, "
        "connector out of service"
    ),
    N_("mirror contact still reads closed"),
    N_("mirror contact reads open {ms} ms after the close command: contactor failed to close"),
    N_("mirror contact not readable: cannot confirm the contactor is open"),
    N_("output {volts} V not within {tolerance} V of the pre-charge target {target} V after {ms} ms"),
    N_("pre-charge target not reached: at most {amps} A"),
    # insulation monitor and cable check (edge/limits/isolation.py)
    N_("isolation monitor reports a device fault"),
    N_("isolation monitor silent: no reading (max {ms} ms)"),
    N_("isolation monitor silent: last reading {age} ms ago (max {max_ms} ms)"),
    N_("cable check failed: {detail}"),
    N_("isolation monitor self-test failed"),
    N_("isolation monitor self-test not done within {ms} ms"),
    N_("insulation {ohm} below {min_ohm} at {volts} V"),
    N_("cable check passed: {n} readings of at least {min_ohm} at {volts} V"),
    N_("{phase} without a passed cable check this session"),
    N_("output {volts} V not yet below {safe_v} V after the cable check"),
    N_("output not measured not yet below {safe_v} V after the cable check"),
    N_("insulation {ohm} below {per_v} Ohm/V x {volts} V = {limit_ohm}"),
    N_("insulation still {ohm} (below {min_ohm})"),
    # cabinet safety inputs (edge/limits/safety_inputs.py)
    N_("emergency stop pressed"),
    N_("water detected in the cabinet"),
    N_("cabinet tilted"),
    N_("cabinet door open during a session"),
    N_("{detail} (input {inputs})"),
    N_("{detail}: stopped until it is closed"),
    N_("{detail}: derated to {amps} A"),
    N_("{detail}: release it first, then clear on site"),
    N_("emergency stop released, latched until cleared on site"),
    N_("water sensor dry again, latched until cleared on site"),
    N_("tilt switch level again, latched until cleared on site"),
    # a module group out of service (power sharing, edge/charging/sharing.py)
    N_("module group {group} (modules {modules}) out of service: {detail}"),
    N_("relay {relay}: mirror contact not open {ms} ms after open"),
    N_("relay {relay}: mirror contact not closed {ms} ms after close"),
    N_("group {group}: relay(s) to {connectors} not confirmed open"),
    N_("more than {amps} A {seconds} s after modules off"),
    N_("relay(s) {relays} still read closed (or unread): check the relay and its mirror contact"),
    N_("{name} is not active"),
    # fault hints (edge/api/commands.py)
    N_("fix the cause, then: edge clear {name}"),
    N_("clears by itself when the condition is gone"),
)

# What `edge config check` says most often (edge/config/__init__.py, pydantic's messages); the rest stays English
CONFIG_TEXTS: tuple[str, ...] = (
    N_("unknown key (typo?); allowed keys: {keys}"),
    N_("required key is missing"),
    N_("file not found"),
    N_("cannot read: {why}"),
    N_("not valid TOML: {why}"),
    N_("Input should be greater than or equal to {limit} (allowed: {allowed})"),
    N_("Input should be less than or equal to {limit} (allowed: {allowed})"),
    N_("Input should be greater than {limit} (allowed: {allowed})"),
    N_("Input should be less than {limit} (allowed: {allowed})"),
    N_("Input should be a valid string"),
    N_("Input should be a valid integer (allowed: {allowed})"),
    N_("Input should be a valid number (allowed: {allowed})"),
    N_("Input should be a valid boolean (allowed: {allowed})"),
)

# Rule names of a decision ("rule" in status JSON), shown as a label in the technician's language.
RULE_LABELS: dict[str, str] = {
    "hardware": N_("hardware"),
    "hardware_power": N_("hardware power"),
    "request": N_("vehicle request"),
    "request_power": N_("vehicle power request"),
    "request_stale": N_("request stale"),
    "precheck": N_("cable check"),
    "session": N_("session"),
    "voltage_range": N_("voltage range"),
    "external": N_("external limit"),
    "external_fault": N_("fault"),
    "modules": N_("power modules"),
    "stop": N_("stopped"),
    "trip": N_("tripped"),
    "sensor": N_("sensor"),
    "grid": N_("site fuse"),
    "grid_fallback": N_("grid meter lost"),
    "coolant_flow": N_("coolant flow"),
    "pin_temperature": N_("pin temperature"),
    "coolant_temperature": N_("coolant temperature"),
    "module_temperature": N_("module temperature"),
    "ambient_temperature": N_("ambient temperature"),
}
