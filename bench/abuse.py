"""Abuse campaign (issue 17): the daemon on the simulator, attacked from the cloud and the local socket.

Runs the daemon in this process on the simulated cabinet with the uplink on a real mosquitto (loopback,
free port), a backend stand-in subscribed to everything from before the daemon starts. Then, area by
area, it tries what an attacker would and checks after each case that nothing was applied that should
have been rejected (no cloud or local limit, no stop):

- quiet: nothing, the reference for the tick.
- cloud: future / old ``t_ms``, retained commands (published before the daemon starts, and delivered again
  after a broker restart), an id done before sent again, duplicate keys, a 400-digit integer, 800 levels of
  nesting, an oversized payload, bad ids, then a flood of bad commands.
- local: admin requests from a read-only peer (uid ``nobody`` in ``api.group = "nogroup"``, when this
  runs as root), admin requests with bad arguments, big ``events`` / ``diag`` requests, many connections,
  a slow ``watch`` reader. The local-socket protections are built elsewhere: whatever the daemon answers
  is reported, not judged, except for what was applied and what was lost.

The attackers that send in bulk (the cloud flood's publisher, the many connections) run as processes of
their own, as a real attacker does: in a thread of this process they competed with the daemon for the
GIL, which no attacker on the network or the local socket can. The backend stand-in stays in this
process (it reads the answers); the cloud answers are indexed as they come, so the wait for one does not
scan every message received on the daemon's loop. Each area's tick window runs until one tick has ended
after the area, so a stall at its end counts and a short area has at least one tick.

At the end it waits for the uplink to drain and counts records lost (seqs missing at the backend). Prints a
table per area and one line per goal (0 applied wrongly, 0 lost, tick p99 within 5 % of quiet). Bounded:
it stops by itself (about a minute with the defaults).

    python -m bench.abuse [--quiet-s 15] [--flood 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/can.py shadows python-can
sys.path.insert(0, str(_HERE.parent))

from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from bench.report import goals  # noqa: E402
from edge.api.client import ApiError, Client, Unreachable  # noqa: E402
from edge.api.commands import MAX_EVENTS  # noqa: E402
from edge.build import Backends  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.daemon import Daemon  # noqa: E402
from edge.sim.cabinet import SimCabinet  # noqa: E402
from tests.mqtt_broker import Broker, Consumer  # noqa: E402

SIM = (_HERE.parent / "edge" / "sim" / "sim-bench.toml").read_text()
BASE = "cabinet/sim-site/sim-cab"
TICK_GOAL = 1.05  # tick p99 under abuse within 5 % of quiet
NOBODY = 65534


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100.0 * len(s)))]


@dataclass
class Area:
    name: str
    tried: int = 0
    wrong: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    seq_first: int = 0
    seq_last: int = 0
    lost: int = 0
    up: bool = True


class Rig:
    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.tmp = tmp
        self.broker = broker
        text = (
            SIM.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp}/run/edge.sock"\ngroup = "nogroup"')
            .replace('data_dir = ".edge-sim"', f'data_dir = "{tmp}/data"')
            .replace('backend = "systemd"', 'backend = "sim"')
            .replace(
                '[telemetry.mqtt]\nhost = "127.0.0.1"\nport = 1883\n',
                f'[telemetry.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min_s = 0.1\n'
                "reconnect_max_s = 1.0\nkeepalive_s = 5\n",
            )
        )
        (tmp / "run").mkdir()
        os.chmod(tmp, 0o755)  # the read-only peer (nobody) must reach the socket
        os.chmod(tmp / "run", 0o755)
        self.sock = f"{tmp}/run/edge.sock"
        self.sim = SimCabinet(parse_config(text))
        self.backend = Consumer(broker.port, topic=f"{BASE}/#", client_id="abuse-backend")
        self.daemon: Daemon | None = None
        self._answers: dict[str, list[dict[str, Any]]] = {}  # cmd-result bodies by id, in arrival order
        self._scanned = 0  # backend messages indexed so far
        self.task: asyncio.Task[Any] | None = None
        self.store_stats: dict[str, Any] = {}

    # -- what the cabinet holds -------------------------------------------------------------------
    def holds(self) -> str | None:
        """A stop or a limit the campaign never set legitimately: its description, else None."""
        assert self.daemon is not None
        ctl = self.daemon.cabinet.controller
        ext = ctl.external_limit
        if ext is not None:
            return f"limit {ext.amps} A from {ext.source}"
        if ctl.stopped_by is not None:
            return f"stopped by {ctl.stopped_by}"
        return None

    def last_seq(self) -> int:
        assert self.daemon is not None
        return self.daemon.cabinet.store.last_seq()

    # -- the cloud side ---------------------------------------------------------------------------
    def publish(self, name: str, payload: bytes, retain: bool = False, expiry_s: int | None = None) -> None:
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry_s
        self.backend.client.publish(f"{BASE}/cmd/{name}", payload, qos=1, retain=retain, properties=props)

    def results(self, cmd_id: str) -> list[dict[str, Any]]:
        with self.backend.lock:
            new = self.backend.messages[self._scanned :]
            self._scanned += len(new)
        for m in new:
            if m.topic.endswith("/cmd-result") and m.body:
                self._answers.setdefault(str(m.body.get("id")), []).append(m.body)
        return list(self._answers.get(cmd_id, ()))

    async def answer(self, cmd_id: str, after: int = 0, timeout_s: float = 3.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.results(cmd_id)[after:]
            if got:
                return got[-1]
            await asyncio.sleep(0.02)
        return None


def _raw(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def cloud_cases(now_ms: int) -> list[tuple[str, str, bytes]]:
    """(case, command, payload): every one must be rejected."""
    lim = {"amps": 10, "duration_s": 600}
    return [
        ("t_ms +1 h", "set-current-limit", _raw({"id": "c-fut-h", **lim, "t_ms": now_ms + 3_600_000})),
        ("t_ms +1 year", "set-current-limit", _raw({"id": "c-fut-y", **lim, "t_ms": now_ms + 31_536_000_000})),
        ("t_ms 1e15", "stop", _raw({"id": "c-fut-max", "t_ms": 10**15})),
        ("t_ms -1 h", "stop", _raw({"id": "c-old", "t_ms": now_ms - 3_600_000})),
        ("duplicate keys", "set-current-limit", b'{"id":"c-dupkey","amps":500,"amps":10,"duration_s":600}'),
        ("400-digit amps", "set-current-limit", b'{"id":"c-big","amps":' + b"9" * 400 + b',"duration_s":600}'),
        ("400-digit t_ms", "stop", b'{"id":"c-big-t","t_ms":' + b"9" * 400 + b"}"),
        ("800 levels", "stop", b'{"id":"c-deep","reason":' + b"[" * 800 + b"]" * 800 + b"}"),
        ("100 kB payload", "stop", b'{"id":"c-huge","reason":"' + b"x" * 100_000 + b'"}'),
        ("id with newline", "stop", b'{"id":"c-nl\\n"}'),
        ("id of 65", "stop", _raw({"id": "i" * 65})),
        ("NaN amps", "set-current-limit", b'{"id":"c-nan","amps":NaN,"duration_s":600}'),
        ("above hardware", "set-current-limit", _raw({"id": "c-over", "amps": 10**6, "duration_s": 600})),
        ("remote clear", "clear-fault", _raw({"id": "c-clear", "fault": "coolant_flow_low"})),
        ("unknown command", "open-contactor", _raw({"id": "c-unknown"})),
        ("not JSON", "stop", b"\xff\xfe{"),
    ]


def check(rig: Rig, area: Area, case: str) -> None:
    held = rig.holds()
    if held:
        area.wrong.append(f"{case}: {held}")


async def cloud(rig: Rig, area: Area) -> None:
    """Each case on its own, answered before the next; a valid limit, cleared, then its id again."""

    # retained commands published before the daemon started were ignored on connect
    for cmd_id in ("c-ret-limit", "c-ret-stop"):
        got = await rig.answer(cmd_id)
        area.tried += 1
        if got is None or got["reason"] != "retained command ignored":
            area.notes.append(f"retained {cmd_id}: {got and got['reason']}")
    check(rig, area, "retained at connect")
    for case, name, payload in cloud_cases(int(time.time() * 1000)):
        area.tried += 1
        rig.publish(name, payload)
        has_id = payload.startswith(b'{"id":"c-') and b"\\n" not in payload
        case_id: str | None = json.loads(payload).get("id") if has_id else None
        if case_id:
            got = await rig.answer(case_id)
            if got is None or got["result"] != "rejected":
                area.wrong.append(f"{case}: answered {got}")
        else:
            await asyncio.sleep(0.3)
        check(rig, area, case)
    # a valid limit, cleared, then its id again: must not apply again
    rig.publish("set-current-limit", _raw({"id": "c-ok-1", "amps": 30, "duration_s": 600}))
    ok = await rig.answer("c-ok-1")
    rig.publish("clear-current-limit", _raw({"id": "c-ok-clr"}))
    await rig.answer("c-ok-clr")
    area.tried += 1
    rig.publish("set-current-limit", _raw({"id": "c-ok-1", "amps": 30, "duration_s": 600}))
    await rig.answer("c-ok-1", after=1)
    check(rig, area, "id c-ok-1 again")
    if ok is None or ok["result"] != "accepted":
        area.notes.append(f"the valid limit was not accepted: {ok}")


async def cloud_restart(rig: Rig, area: Area) -> None:
    """The broker restarts: the retained commands are delivered again, and must be ignored again."""
    n_ret = len(rig.results("c-ret-limit"))
    await asyncio.to_thread(rig.broker.restart)
    area.tried += 1
    got = await rig.answer("c-ret-limit", after=n_ret, timeout_s=15)
    area.notes.append(f"retained after broker restart: {got and got['reason']}")
    check(rig, area, "retained after broker restart")


FLOOD_PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, base, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="abuse-flood", protocol=mqtt.MQTTv5)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
infos = []
for i in range(n):
    if i % 4 == 0:
        name, body = "set-current-limit", json.dumps({"id": "c-ok-1", "amps": 30, "duration_s": 600}).encode()
    elif i % 4 == 1:
        name, body = "stop", b'{"id":"f-' + str(i).encode() + b'","a":' + b"[" * 50 + b"]" * 50 + b"}"
    elif i % 4 == 2:
        name, body = "set-current-limit", b'{"id":"f-%d","amps":5,"amps":6,"duration_s":60}' % i
    else:
        name, body = "resume", json.dumps({"id": f"f-{i}", "t_ms": int(time.time() * 1000) + 86_400_000}).encode()
    infos.append(c.publish(f"{base}/cmd/{name}", body, qos=1))
for info in infos:
    info.wait_for_publish(30)
c.disconnect()
c.loop_stop()
print(sum(1 for info in infos if info.is_published()))
"""


async def cloud_flood(rig: Rig, area: Area, flood: int) -> None:
    """Bad commands and one id again and again, in one burst, from a publisher process of its own."""
    t0 = time.monotonic()
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", FLOOD_PUBLISHER, str(rig.broker.port), BASE, str(flood)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    area.tried += flood
    if r.returncode != 0:
        area.notes.append(f"flood publisher failed: {r.stderr.strip()[-200:]}")
    last = f"f-{flood - 1 if (flood - 1) % 4 else flood - 2}"
    got = await rig.answer(last, timeout_s=30)
    area.notes.append(
        f"flood of {flood} ({r.stdout.strip() or '?'} acknowledged by the broker): last answered after "
        f"{time.monotonic() - t0:.1f} s: {got and got['reason'][:60]}"
    )
    uplink = rig.daemon.cabinet.uplink if rig.daemon else None
    if uplink is not None:
        st = uplink.status()
        area.notes.append(
            f"commands handled {st['commands']}, rate limited {st.get('commands_rate_limited', '-')}, "
            f"dropped {st['commands_dropped']}, duplicates {st['commands_duplicate']}"
        )
    check(rig, area, "flood")


# -- the local socket ---------------------------------------------------------------------------------
READ_ONLY_PEER = r"""
import json, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
answers = {}
for i in range(n):
    cmd, args = [("stop", {"reason": "x" * 60000}), ("limit_set", {"amps": 1}), ("resume", {}),
                 ("stop", {"why": float("nan")})][i % 4]
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(json.dumps({"v": 1, "id": i, "cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        code = json.loads(buf.split(b"\n")[0]).get("code", "ok") if buf else "closed"
    except OSError as exc:
        code = type(exc).__name__
    finally:
        s.close()
    answers[code] = answers.get(code, 0) + 1
print(json.dumps(answers))
"""


def _read_only_peer(sock: str, n: int) -> str:
    if os.geteuid() != 0:
        return "skipped (not root: cannot run as another uid)"
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # nobody may not reach the venv
    try:
        r = subprocess.run(
            [python, "-c", READ_ONLY_PEER, sock, str(n)],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"skipped ({exc})"[:120]
    return f"answers by code {r.stdout.strip()}" if r.returncode == 0 else r.stderr.strip()[-200:]


def _admin_bad_args(sock: str, n: int) -> dict[str, int]:
    client = Client(sock)
    bad: list[tuple[str, dict[str, Any]]] = [
        ("stop", {"why": float("nan")}),
        ("limit_set", {"amps": 10**400}),
        ("limit_set", {"amps": 20, "duration_s": -1, "pad": "x" * 60000}),
        ("clear", {"fault": "x" * 10000}),
        ("no_such_command", {"pad": "y" * 60000}),
    ]
    codes: dict[str, int] = {}
    for i in range(n):
        cmd, args = bad[i % len(bad)]
        try:
            client.request(cmd, args)
            code = "ok"
        except ApiError as exc:
            code = exc.code
        except Unreachable as exc:
            code = f"unreachable:{exc}"[:40]
        codes[code] = codes.get(code, 0) + 1
    return codes


def _big_reads(sock: str) -> str:
    client = Client(sock, timeout_s=30)
    sizes = []
    for cmd, args in (("events", {"limit": 100000}), ("events", {"limit": MAX_EVENTS}), ("diag", None)) * 2:
        what = f"{cmd} {args['limit']}" if args else cmd
        t0 = time.perf_counter()
        try:
            data = client.request(cmd, args)
            sizes.append(f"{what}: {len(json.dumps(data)) // 1024} kB {1000 * (time.perf_counter() - t0):.0f} ms")
        except ApiError as exc:
            sizes.append(f"{what}: {exc.code}")
        except Unreachable as exc:
            sizes.append(f"{what}: {exc}"[:60])
    return "; ".join(sizes)


MANY_CONNECTIONS = r"""
import json, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held, refused = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(path)
        held.append(s)
    except OSError:
        refused += 1
        s.close()
try:
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(5)
    c.connect(path)
    c.sendall(b'{"v": 1, "id": 1, "cmd": "status"}\n')
    buf = b""
    while b"\n" not in buf:
        chunk = c.recv(65536)
        if not chunk:
            break
        buf += chunk
    answer = json.loads(buf.split(b"\n")[0]) if buf else {}
    status = "status answered" if answer.get("ok") else f"status failed: {answer.get('error', 'closed')}"
    c.close()
except OSError as exc:
    status = f"status failed: {exc}"
time.sleep(2.0)
for s in held:
    s.close()
print(f"{len(held)} held, {refused} refused at connect, {status}"[:160])
"""


def _many_connections(sock: str, n: int) -> str:
    """``n`` connections from a process of its own (as root, like the campaign), held for 2 s."""
    r = subprocess.run(
        [sys.executable, "-c", MANY_CONNECTIONS, sock, str(n)], capture_output=True, text=True, timeout=120
    )
    return r.stdout.strip() if r.returncode == 0 else r.stderr.strip()[-200:]


def _slow_watch(sock: str, pause_s: float) -> str:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(sock)
    s.sendall(json.dumps({"v": 1, "id": 1, "cmd": "watch", "args": {"interval_s": 0.1}}).encode() + b"\n")
    time.sleep(pause_s)  # reads nothing: the daemon's frames pile up
    buf = b""
    frame: dict[str, Any] = {}
    while True:  # the next complete frame
        buf += s.recv(65536)
        if b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            frame = json.loads(line)
            break
    s.close()
    now_up = Client(sock).request("status")["uptime_s"]
    return f"first frame read after {pause_s:g} s is {now_up - frame.get('data', {}).get('uptime_s', now_up):.1f} s old"


def local_step(n: int, fn: Callable[..., Any], *args: Any) -> Callable[[Rig, Area], Awaitable[None]]:
    async def step(rig: Rig, area: Area) -> None:
        area.tried += n
        area.notes.append(str(await asyncio.to_thread(fn, rig.sock, *args)))
        check(rig, area, area.name)

    return step


LOCAL: list[tuple[str, Callable[[Rig, Area], Awaitable[None]]]] = [
    ("local read-only admin", local_step(400, _read_only_peer, 400)),
    ("local bad arguments", local_step(200, _admin_bad_args, 200)),
    ("local big events/diag", local_step(5, _big_reads)),
    ("local connections", local_step(900, _many_connections, 900)),
    ("local slow watch", local_step(1, _slow_watch, 5.0)),
]


# -- the run ------------------------------------------------------------------------------------------
async def run_areas(rig: Rig, args: argparse.Namespace) -> list[Area]:
    rig.daemon = Daemon(rig.sim.patched_config(), Backends(board=rig.sim.board))
    rig.task = asyncio.create_task(rig.daemon.run())
    ticks = rig.daemon.cabinet.controller.tick_periods_ms
    deadline = time.monotonic() + 20
    while not (rig.daemon.cabinet.uplink and rig.daemon.cabinet.uplink.stats.connected):
        if time.monotonic() > deadline:
            raise SystemExit("uplink did not connect")
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # start-up transients out of the way
    areas = []

    ctl = rig.daemon.cabinet.controller

    async def measure(area: Area, body: Awaitable[None]) -> None:
        ticks.clear()
        area.seq_first = rig.last_seq() + 1
        await body
        ended = ctl.ticks
        deadline = time.monotonic() + 5
        while ctl.ticks == ended and time.monotonic() < deadline:  # the tick running when the area ended
            await asyncio.sleep(0.005)
        area.ticks = list(ticks)
        area.seq_last = rig.last_seq()
        area.up = not rig.task.done() if rig.task else False
        areas.append(area)

    await measure(Area("quiet"), asyncio.sleep(args.quiet_s))
    for name, fn in (
        ("cloud cases", cloud),
        ("cloud broker restart", cloud_restart),
        ("cloud flood", lambda r, a: cloud_flood(r, a, args.flood)),
        *LOCAL,
    ):
        area = Area(name)
        await measure(area, fn(rig, area))
    # drain: every record to the backend, then count what is missing
    deadline = time.monotonic() + 60
    store = rig.daemon.cabinet.store
    while store.backlog() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    seen = set(rig.backend.seqs())
    for a in areas:
        a.lost = sum(1 for s in range(a.seq_first, a.seq_last + 1) if s not in seen)
    rig.store_stats = store.stats()
    rig.daemon.stopping.set()
    await asyncio.wait_for(rig.task, 10)
    return areas


def report(areas: list[Area], store_stats: dict[str, Any]) -> int:
    quiet = areas[0]
    q99 = pct(quiet.ticks, 99)
    print(f"{'area':<24}{'cases':>7}{'up':>5}{'tick p50':>10}{'p99':>8}{'max':>8}{'wrong':>7}{'lost':>6}  (ms)")
    for a in areas:
        print(
            f"{a.name:<24}{a.tried:>7}{'yes' if a.up else 'NO':>5}{pct(a.ticks, 50):>10.1f}"
            f"{pct(a.ticks, 99):>8.1f}{max(a.ticks, default=float('nan')):>8.1f}{len(a.wrong):>7}{a.lost:>6}"
        )
    for a in areas:
        for line in a.notes:
            print(f"  {a.name}: {line}")
        for line in a.wrong:
            print(f"  {a.name}: APPLIED WRONGLY: {line}")
    print(f"  store: {json.dumps(store_stats)}")
    wrong = sum(len(a.wrong) for a in areas)
    lost = sum(a.lost for a in areas)
    over = [f"{a.name} {pct(a.ticks, 99):.1f} ms" for a in areas[1:] if not pct(a.ticks, 99) <= q99 * TICK_GOAL]
    down = [a.name for a in areas if not a.up]
    met = goals(
        [
            ("applied_wrongly", wrong == 0, f"{wrong} case(s)", "0"),
            ("lost", lost == 0, f"{lost} record(s) missing by seq", "0"),
            ("tick_p99", not over, "; ".join(over), f"{q99 * TICK_GOAL:.1f} ms"),
            ("daemon_up", not down, f"down in {', '.join(down)}", "up through every area"),
        ]
    )
    return 0 if met else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quiet-s", type=float, default=15.0, help="quiet window for the reference tick, s")
    ap.add_argument("--flood", type=int, default=2000, help="bad cloud commands sent in one burst")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edge-abuse-"))
    broker = Broker(tmp / "broker")
    broker.start()
    rig = Rig(tmp, broker)
    # retained commands waiting on the broker before the cabinet ever connects
    rig.publish("set-current-limit", _raw({"id": "c-ret-limit", "amps": 20, "duration_s": 600}), retain=True)
    rig.publish("stop", _raw({"id": "c-ret-stop"}), retain=True)
    rig.publish("resume", b"{}", retain=True)
    rig.sim.start()
    try:
        areas = asyncio.run(run_areas(rig, args))
    finally:
        rig.sim.stop()
        rig.backend.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"(machine: {os.cpu_count()} cores, {threading.active_count()} threads at the end)")
    return report(areas, rig.store_stats)


if __name__ == "__main__":
    sys.exit(main())
