"""Wiring of the remote operations into a daemon: one call for the integrator (edge/build.py), one
argument for the command channel (``commands.handle(..., remote=...)`` in edge/telemetry/uplink.py).

    remote = build_remote(config, config_path, edge.__version__,
                          sessions_active=lambda: sessions_active_in(controller.decision),
                          active_faults=lambda: active_faults_in(controller.decision),
                          publish=lambda leaf, payload, retain: session.publish(
                              f"{topics.base}/{leaf}", payload, retain=retain),
                          on_event=lambda kind, name, data: uplink.to_loop(events.emit, kind, name, data),
                          diag_files=lambda: {**basic_files(config_path), **daemon_files(config.api.socket)})
    uplink.remote = remote     # commands.handle(..., remote=uplink.remote) in the uplink
    uplink.on_connected.append(remote.update.republish)   # the retained status again after each connect
    remote.update.resume()     # Cabinet.start: the retained update status, carry on an unfinished update
    remote.update.close()      # Cabinet.close (a download resumes after the restart)

edge/build.py does exactly this when ``telemetry.mqtt`` is enabled (the remote commands arrive over MQTT).

``diag_files`` runs in the diag worker thread: nothing that lives on the loop is read there directly
(daemon_files asks the daemon's own control socket, whose answer is made on the loop).

Every report of the update worker goes out retained on ``<prefix>/<site>/<cabinet>/update`` and, when it
is a new state, as an ``update`` event (name = the state, ``target`` = release or config) on the events
topic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.remote.commands import UPDATE_TOPIC, Publish, RemoteCommands, update_message
from edge.remote.diag import DiagUpload, Files, basic_files
from edge.remote.states import UpdateStatus
from edge.remote.update import UpdateManager

DIAG_MAX_BYTES = 16 * 1024 * 1024  # a bundle is text and a journal excerpt: far below this
EventSink = Callable[[str, str, dict[str, Any]], None]


IDLE_PHASES = ("Other", "Off")  # a connector's phase with no vehicle session (edge/charging/demand.py)


def sessions_active_in(decision: dict[str, Any] | None) -> bool:
    """True while any connector of the controller's last decision is in a session: asked to export, in a
    phase of one (a cable check's discharge is Off but still CableCheck), in the off-current wait, or with
    its contactor closed. Reads one dict the control loop replaces whole: safe from the update worker."""
    for cd in ((decision or {}).get("connectors") or {}).values():
        if cd.get("mode", "Off") != "Off" or cd.get("phase", "Other") not in IDLE_PHASES:
            return True
        if cd.get("ending") or cd.get("contactor"):
            return True
    return False


def active_faults_in(decision: dict[str, Any] | None) -> list[str]:
    """The faults of the controller's last decision (the health window's baseline)."""
    return list((decision or {}).get("faults") or ())


def event_data(status: UpdateStatus) -> dict[str, Any]:
    """An update event's fields: the status as on the topic, its ``kind`` (release or config) as ``target``
    (an event's own ``kind`` is ``update``)."""
    data = status.as_dict()
    data["target"] = data.pop("kind")
    return data


def state_dir_of(config: Config) -> Path:
    return Path(config.remote.state_dir or str(Path(config.storage.data_dir) / "update"))


def build_remote(
    config: Config,
    config_path: str | None,
    version: str,
    *,
    sessions_active: Callable[[], bool] = lambda: False,
    active_faults: Callable[[], Iterable[str]] = tuple,
    publish: Publish = lambda _leaf, _payload, _retain: None,
    on_event: EventSink = lambda _kind, _name, _data: None,
    diag_files: Callable[[], Files] | None = None,
) -> RemoteCommands:
    """The daemon's remote commands with its update manager. ``sessions_active`` defaults to never (until
    the connectors report sessions); ``publish`` and ``on_event`` are called from the update worker thread."""

    def report(status: UpdateStatus, new_state: bool) -> None:
        publish(UPDATE_TOPIC, update_message(status), True)
        if new_state:
            on_event("update", status.state, event_data(status))

    manager = UpdateManager(
        config.remote,
        state_dir_of(config),
        version,
        sessions_active=sessions_active,
        active_faults=active_faults,
        report=report,
        config_path=config_path,
    )
    collect = diag_files or (lambda: basic_files(config_path))
    uploader = DiagUpload(collect, DIAG_MAX_BYTES, publish=publish, on_event=on_event)
    return RemoteCommands(config.remote, update=manager, diag=uploader, config_path=config_path, publish=publish)
