"""The simulated cabinet's fault knobs, driven across processes through its control socket."""

from __future__ import annotations

import os

from tests.conftest import api_request, wait_for


def knob(d, **req):
    path = os.path.join(os.path.dirname(d.socket_path), "sim-control.sock")
    answer = api_request(path, req)
    assert answer["ok"], answer
    return answer


def test_module_silenced_by_knob_is_reported_lost_then_recovers(sim_daemon):
    d = sim_daemon()
    wait_for(lambda: not d.status()["modules"]["2"]["lost"], timeout=10, what="module 2 present")
    knob(d, knob="module_silent", address=2, value=True)
    wait_for(lambda: d.status()["modules"]["2"]["lost"], timeout=6, what="module 2 lost")
    assert not d.status()["modules"]["1"]["lost"]
    knob(d, knob="module_silent", address=2, value=False)
    wait_for(lambda: not d.status()["modules"]["2"]["lost"], timeout=6, what="module 2 back")


def test_unknown_knob_is_refused_with_reason(sim_daemon):
    d = sim_daemon()
    path = os.path.join(os.path.dirname(d.socket_path), "sim-control.sock")
    answer = api_request(path, {"knob": "warp_drive", "value": 1})
    assert not answer["ok"] and "unknown knob" in answer["error"]
    physics = knob(d, get="physics")["physics"]
    assert set(physics["modules"]) == {"1", "2", "3", "4"}
