"""Power sharing: which module group feeds which connector (issue 16). Pure: no I/O, no clock (the time comes
in as an argument), builtin types only, so it runs under MicroPython like the rest of edge/limits.

Inputs (see :func:`allocate`): each connector's phase, request (kW, V), hardware limits, policy priority and
arrival order, min/max groups, the groups its relays reach, the groups it has now and when that last
changed; each group's availability, capability (A, kW), where it is and whether it carries current; the
site fuse's headroom for the whole DC output (kW); the policy and its hold time.

Output: the *target* allocation ``{connector: [groups]}`` (the best the policy allows), the allocation that
may be applied *now* (a group that carries current is never moved: it stays where it is and is listed in
``ramp_down`` until the switching sequence has brought it to 0 A), each connector's power limit (the
fuse headroom split by the policy) and a reason per connector.

Rules (every policy):

- a group feeds at most one connector, only one its relays reach, only while available (one that is not is
  left where it is, serving no one, and is in no list of the result);
- a connector gets at most ``max_groups``; while it charges, ``min_groups`` come first (as far as groups
  are there to give);
- a connector that is not charging gets no group and delivers nothing; the groups it has stay parked there
  until a charging connector needs them (no relay operation for nothing); a charging connector keeps the
  groups it has for ``hold_s`` after its last change (no flapping) unless a group is lost;
- the power limits add up to at most the fuse headroom; each is within the connector's hardware (kW, and
  A at the requested voltage) and its request.

Policies (what "the most power the policy allows" means, compared lexicographically):

- ``static``: each connector its home groups (the ``modules`` of its ``[[connector]]``);
- ``sequential``: one connector at a time, the one that came first, gets what it can use;
- ``first_come``: in order of arrival, each gets the most it can use of what is left;
- ``priority``: the same in order of priority (higher first; ties: who came first);
- ``even``: max-min fair: the smallest share as large as possible, then the next, ...

Among allocations equal for the policy the one that moves fewest groups wins (each move is a ramp-down
and two relay operations), then the fewest groups connected.

Search: groups that are alike (same capability and the same connectors to go to) are counted, not named,
so the default cabinet (4 equal groups, 2 connectors) has 15 candidates; the result is the optimum over all
assignments (tests/test_allocation.py compares it with brute force on every small case).
"""

POLICIES = ("static", "sequential", "even", "first_come", "priority")
ORDERED = ("sequential", "first_come", "priority")
WANT_PHASES = ("CableCheck", "PreCharge", "Charging")  # a connector in these phases wants groups
MIN_V = 50.0  # kW from A never at a lower voltage than this
DIGITS = 6  # powers compared at 1 mW: sums in another order must not change the winner


def wants(conn):
    """True when the connector charges (or is about to) and so needs groups."""
    if "wants" in conn:
        return bool(conn["wants"])
    return conn.get("phase") in WANT_PHASES


def deliverable_kw(conn, amps, kw):
    """What ``conn`` can deliver with groups giving ``amps`` and ``kw`` in all: the least of its request,
    its hardware (kW, and A at the requested voltage) and the groups (kW, and A at that voltage)."""
    return _deliverable(_limits_of(conn), amps, kw)


def _limits_of(conn):
    """(request kW, hardware kW, voltage for A -> kW, hardware A) of a connector, as floats."""
    volts = max(float(conn.get("request_v") or 0.0), MIN_V)
    return (float(conn["request_kw"]), float(conn["max_kw"]), volts, float(conn["max_a"]))


def _deliverable(lim, amps, kw):
    if amps <= 0 or kw <= 0:
        return 0.0
    best = min(lim[0], lim[1], kw, lim[2] * min(amps, lim[3]) / 1000.0)
    return round(max(best, 0.0), DIGITS)


def order(connectors, policy):
    """Connector names in the policy's order of service (ordered policies; even uses it for ties)."""
    if policy == "priority":
        keyed = [(-int(c.get("priority", 0)), float(c.get("arrival", 0)), c["name"]) for c in connectors]
    else:
        keyed = [(0, float(c.get("arrival", 0)), c["name"]) for c in connectors]
    keyed.sort()
    return [k[2] for k in keyed]


def split_kw(deliverable, names, headroom_kw, policy):
    """The fuse headroom split: ``{name: kW}``. ``names`` in the policy's order; even: water-filling (each
    the same share, what one cannot use goes to the others); else in order, each what it can use."""
    left = max(float(headroom_kw), 0.0)
    out = {}
    if policy == "even":
        ranked = sorted(names, key=lambda n: (deliverable[n], n))
        for i, name in enumerate(ranked):
            give = min(deliverable[name], left / (len(ranked) - i))
            out[name] = round(give, DIGITS)
            left -= give
        return out
    for name in names:
        give = min(deliverable[name], left)
        out[name] = round(give, DIGITS)
        left -= give
    return out


def score(connectors, groups, assign, policy, headroom_kw):
    """The objective of one assignment ``{group: connector or None}`` (larger is better) and the power
    limits ``{connector: kW}``. Shared by the search and the brute force of the tests."""
    amps = {}
    kw = {}
    count = {}
    for c in connectors:
        amps[c["name"]] = 0.0
        kw[c["name"]] = 0.0
        count[c["name"]] = 0
    for g, where in assign.items():
        if where is not None and groups[g].get("available", True):
            amps[where] += float(groups[g]["max_a"])
            kw[where] += float(groups[g]["max_kw"])
            count[where] += 1
    return _score_sums(context(connectors, policy), amps, kw, count, headroom_kw) + (
        -_moves(groups, assign),
        -sum(count.values()),
    )


def context(connectors, policy):
    """What the score needs of the connectors, computed once per evaluation: the order of service, who
    wants groups, each one's min_groups and limits."""
    want = {}
    least = {}
    lims = {}
    for c in connectors:
        want[c["name"]] = wants(c)
        least[c["name"]] = int(c.get("min_groups", 0))
        lims[c["name"]] = _limits_of(c) if want[c["name"]] else None
    return {"order": order(connectors, policy), "want": want, "min": least, "lims": lims, "policy": policy}


def _score_sums(ctx, amps, kw, count, headroom_kw):
    """(min-groups kept, the policy's vector, the limits) for per-connector sums."""
    deliverable = {}
    kept = 0
    want = ctx["want"]
    for name in ctx["order"]:
        if want[name]:
            deliverable[name] = _deliverable(ctx["lims"][name], amps[name], kw[name])
            kept += min(count[name], ctx["min"][name])
        else:
            deliverable[name] = 0.0
    limits = split_kw(deliverable, ctx["order"], headroom_kw, ctx["policy"])
    if ctx["policy"] == "even":
        shares = sorted(limits[n] for n in ctx["order"] if want[n])
        vector = tuple(shares) + (round(sum(shares), DIGITS),)
    else:
        vector = tuple(limits[n] for n in ctx["order"])
    return (kept, vector, limits)


def _moves(groups, assign):
    return sum(1 for g, where in assign.items() if groups[g].get("at") != where)


def _key(full):
    """The comparable part of a score (the limits dict is not compared)."""
    return (full[0], full[1], full[3], full[4])


def candidates(connectors, groups, policy, now_s, hold_s):
    """``(fixed, free)``: groups whose place is decided by a rule ``{group: connector or None}``, and for
    each other group the connectors it may go to (``None`` = no connector is always allowed)."""
    by_name = {}  # type: dict
    for c in connectors:
        by_name[c["name"]] = c
    fixed = {}  # type: dict
    free = {}  # type: dict
    dests = _destinations(connectors, policy)
    for g in sorted(groups):
        rule = _fixed_place(connectors, by_name, groups[g], g, policy, now_s, hold_s)
        if rule is not None:
            fixed[g] = rule[0]
        else:
            free[g] = [c for c in dests if g in by_name[c].get("reach", ())] + _parking(by_name, groups[g], g)
    return fixed, free


def _parking(by_name, info, g):
    """A group may stay parked on a connector that does not charge (no relay operation for nothing)."""
    at = info.get("at")
    if at is not None and at in by_name and not wants(by_name[at]) and g in by_name[at].get("reach", ()):
        return [at]
    return []


def _destinations(connectors, policy):
    """The connectors that may get groups: those charging; sequential: only the one that came first."""
    charging = [c["name"] for c in connectors if wants(c)]
    if policy == "sequential":
        first = [n for n in order(connectors, policy) if n in charging]
        return first[:1]
    return charging


def _fixed_place(connectors, by_name, info, g, policy, now_s, hold_s):
    """``[connector or None]`` when a rule decides where group ``g`` is; None when the policy may choose."""
    at = info.get("at")
    if not info.get("available", True):
        return [at]  # out of service or lost: not moved, and it serves no one (left out of every sum)
    if policy == "static":
        return [_home(connectors, g)]
    if at is not None and at in by_name and _held(by_name[at], now_s, hold_s):
        return [at]
    return None


def _home(connectors, g):
    for c in connectors:
        if g in c.get("home", ()) and g in c.get("reach", ()):
            return c["name"]
    return None


def _held(conn, now_s, hold_s):
    """A charging connector keeps its groups for hold_s after its last change."""
    changed = conn.get("changed_s")
    return wants(conn) and changed is not None and now_s - float(changed) < float(hold_s)


def allocate(connectors, groups, policy, headroom_kw, now_s, hold_s):
    """The allocation (see the module doc). ``connectors``: list of dicts ``name, phase (or wants),
    request_kw, request_v, max_a, max_kw, priority, arrival, min_groups, max_groups, reach [groups],
    home [groups], changed_s (None = never)``. ``groups``: ``{name: {available, max_a, max_kw, at
    (connector or None), live}}``. Returns ``{"target", "now": {connector: [groups]}, "ramp_down": [groups],
    "limit_kw": {connector: kW}, "moves": [[group, from, to]], "reasons": {connector: text}}``."""
    if policy not in POLICIES:
        raise ValueError("unknown policy %r" % (policy,))
    fixed, free = candidates(connectors, groups, policy, now_s, hold_s)
    assign = _search(connectors, groups, fixed, free, policy, headroom_kw)
    full = score(connectors, groups, assign, policy, headroom_kw)
    return _result(connectors, groups, assign, full[2], policy, now_s, hold_s)


# -- the search over counts of alike groups ---------------------------------------------------------------
def _search(connectors, groups, fixed, free, policy, headroom_kw):
    amps, kw, count = _fixed_sums(connectors, groups, fixed)
    room = {}
    for c in connectors:
        room[c["name"]] = max(0, int(c.get("max_groups", 64)) - count[c["name"]])
    kinds = _kinds(groups, free)
    best = [None, None]  # [key, [composition per kind]]
    ctx = context(connectors, policy)
    fixed_moves = sum(1 for g, where in fixed.items() if groups[g].get("at") != where)
    _walk(ctx, kinds, 0, [], amps, kw, count, room, headroom_kw, fixed_moves, best)
    assign = dict(fixed)
    comps = best[1] or []  # type: list
    for i, kind in enumerate(kinds):
        assign.update(_name_groups(groups, kind, comps[i]))
    return assign


def _fixed_sums(connectors, groups, fixed):
    """Per connector: A, kW and number of the available groups a rule already placed there."""
    amps = {}  # type: dict
    kw = {}  # type: dict
    count = {}  # type: dict
    for c in connectors:
        amps[c["name"]] = 0.0
        kw[c["name"]] = 0.0
        count[c["name"]] = 0
    for g, where in fixed.items():
        if where is not None and groups[g].get("available", True):
            amps[where] += float(groups[g]["max_a"])
            kw[where] += float(groups[g]["max_kw"])
            count[where] += 1
    return amps, kw, count


def _kinds(groups, free):
    """Free groups by (capability, destinations): ``[[key, dests, [group names], {place now: how many}]]``,
    sorted."""
    table = {}  # type: dict
    for g in sorted(free):
        key = (float(groups[g]["max_a"]), float(groups[g]["max_kw"]), tuple(free[g]))
        table.setdefault(key, []).append(g)
    out = []
    for k in sorted(table):
        here = {}  # type: dict
        for g in table[k]:
            here[groups[g].get("at")] = here.get(groups[g].get("at"), 0) + 1
        out.append([k, list(k[2]), table[k], here])
    return out


def _walk(ctx, kinds, i, comps, amps, kw, count, room, headroom_kw, moves, best):
    """Depth-first over the kinds: each composition of kind ``i`` with its moves (counted once, here)."""
    if i == len(kinds):
        _leaf(ctx, comps, amps, kw, count, headroom_kw, moves, best)
        return
    key, dests, members, here = kinds[i]
    for comp in _compositions(len(members), dests, room):
        for d, n in comp.items():
            amps[d] += n * key[0]
            kw[d] += n * key[1]
            count[d] += n
            room[d] -= n
        comps.append(comp)
        step = _kind_moves(here, len(members), comp)
        _walk(ctx, kinds, i + 1, comps, amps, kw, count, room, headroom_kw, moves + step, best)
        comps.pop()
        for d, n in comp.items():
            amps[d] -= n * key[0]
            kw[d] -= n * key[1]
            count[d] -= n
            room[d] += n


def _compositions(n, dests, room):
    """Every way to give up to ``n`` alike groups to ``dests`` within their room (the rest to no one):
    ``[{dest: count}]``, the empty one first."""
    out = [{}]  # type: list
    for d in dests:
        grown = []
        for comp in out:
            used = sum(comp.values())
            for k in range(0, min(n - used, room[d]) + 1):
                if k == 0:
                    grown.append(comp)
                else:
                    c2 = dict(comp)
                    c2[d] = k
                    grown.append(c2)
        out = grown
    return out


def _leaf(ctx, comps, amps, kw, count, headroom_kw, moves, best):
    kept, vector, _limits = _score_sums(ctx, amps, kw, count, headroom_kw)
    key = (kept, vector, -moves, -sum(count.values()))
    if best[0] is None or key > best[0]:
        best[0] = key
        best[1] = [dict(c) for c in comps]


def _kind_moves(here, n, comp):
    """Fewest moves to realise ``comp`` with ``n`` alike groups, ``here`` of them on each place now (None: on
    no connector): each stays where it is when it can."""
    stay = 0
    given = 0
    for d, k in comp.items():
        stay += min(k, here.get(d, 0))
        given += k
    stay += min(n - given, here.get(None, 0))
    return n - stay


def _name_groups(groups, kind, comp):
    """``{group: connector or None}`` for one kind's composition, keeping groups where they are first."""
    members = kind[2]
    want = dict(comp)
    want[None] = len(members) - sum(comp.values())
    out = _stays(groups, members, want)
    slots = []  # type: list
    for d in kind[1] + [None]:  # no [*x] in MicroPython
        slots += [d] * want.get(d, 0)
    rest = [g for g in members if g not in out]
    for i, g in enumerate(rest):  # as many slots as groups left (no zip(strict=): MicroPython)
        out[g] = slots[i]
    return out


def _stays(groups, members, want):
    """The groups that stay where they are (``want`` is used up as they do): on their connector first,
    then on no connector, the last names first (so the first names are the ones that go to work)."""
    out = {}  # type: dict
    for g in members:
        at = groups[g].get("at")
        if at is not None and want.get(at, 0) > 0:
            out[g] = at
            want[at] -= 1
    for g in reversed(members):
        if g not in out and groups[g].get("at") is None and want[None] > 0:
            out[g] = None
            want[None] -= 1
    return out


# -- the result -------------------------------------------------------------------------------------------
def _result(connectors, groups, assign, limits, policy, now_s, hold_s):
    target = {}  # type: dict
    now = {}  # type: dict
    for c in connectors:
        target[c["name"]] = []
        now[c["name"]] = []
    ramp_down = []  # type: list
    moves = []  # type: list
    for g in sorted(assign):
        if groups[g].get("available", True):  # one that is not stays where it is, serving no one: in no list
            _place(g, groups[g].get("at"), assign[g], groups[g].get("live"), target, now, ramp_down, moves)
    reasons = {}
    for c in connectors:
        reasons[c["name"]] = _reason(c, target[c["name"]], limits.get(c["name"], 0.0), policy, now_s, hold_s)
    return {
        "target": target,
        "now": now,
        "ramp_down": ramp_down,
        "limit_kw": limits,
        "moves": moves,
        "reasons": reasons,
    }


def _place(g, at, where, live, target, now, ramp_down, moves):
    """Group ``g`` into the lists of the result: target, now (a live group stays until ramped down), moves."""
    if where is not None:
        target[where].append(g)
    if at == where:
        if where is not None:
            now[where].append(g)
        return
    moves.append([g, at, where])
    if at in now and live:
        ramp_down.append(g)  # carries current: stays until ramped to 0 A
        now[at].append(g)
    elif where is not None:
        now[where].append(g)


def _reason(conn, got, limit_kw, policy, now_s, hold_s):
    if not wants(conn):
        return "not charging: %d group(s) parked" % len(got) if got else "not charging: no group"
    text = "%s: %d group(s), %s kW" % (policy, len(got), _num(limit_kw))
    if _held(conn, now_s, hold_s):
        text += ", held %s s more" % _num(float(conn["changed_s"]) + float(hold_s) - now_s)
    if policy == "sequential" and not got:
        text = "sequential: waits for the connector that came first"
    return text


def _num(x):
    return ("%.1f" % x).rstrip("0").rstrip(".")
