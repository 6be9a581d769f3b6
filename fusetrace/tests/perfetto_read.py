"""Reads a Perfetto trace with Perfetto's own compiled protos (the `perfetto`
package on PyPI) and prints what it holds as one JSON object, for
tests/perfetto.rs to compare with the recording it came from.

Slices are rebuilt as the trace processor does: per track, events in
timestamp order (ties in file order), each SLICE_END closing the innermost
open slice. Anything a viewer would reject fails here: an END with nothing
open, a slice left open, a packet on a track never described, a child
sticking out of its parent.
"""

import json
import sys

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

BEGIN = pb.TrackEvent.Type.TYPE_SLICE_BEGIN
END = pb.TrackEvent.Type.TYPE_SLICE_END
COUNTER = pb.TrackEvent.Type.TYPE_COUNTER


def fail(msg):
    print(f"perfetto_read: {msg}", file=sys.stderr)
    sys.exit(1)


def annotation(a):
    for field in ("uint_value", "int_value", "string_value", "bool_value", "double_value"):
        if a.HasField(field):
            return getattr(a, field)
    return None


def main(path):
    trace = pb.Trace()
    with open(path, "rb") as f:
        trace.ParseFromString(f.read())
    tracks = {}
    events = {}
    order = 0
    for p in trace.packet:
        if p.trusted_packet_sequence_id == 0:
            fail("a packet without a sequence id")
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            tracks[d.uuid] = d
        elif p.HasField("track_event"):
            e = p.track_event
            if e.track_uuid not in tracks:
                fail(f"an event on undescribed track {e.track_uuid}")
            order += 1
            events.setdefault(e.track_uuid, []).append((p.timestamp, order, e))

    def thread_of(uuid):
        d = tracks[uuid]
        while not d.HasField("thread") and d.HasField("parent_uuid"):
            d = tracks[d.parent_uuid]
        return d.thread.tid if d.HasField("thread") else None

    slices = []
    counters = {}
    for uuid, evs in events.items():
        evs.sort(key=lambda x: (x[0], x[1]))
        stack = []
        for ts, _, e in evs:
            if e.type == BEGIN:
                s = {
                    "tid": thread_of(uuid),
                    "track": uuid,
                    "name": e.name,
                    "ts": ts,
                    "depth": len(stack),
                    "args": {a.name: annotation(a) for a in e.debug_annotations},
                    "flow_ids": list(e.flow_ids),
                    "terminating_flow_ids": list(e.terminating_flow_ids),
                    "children": [],
                }
                if stack:
                    stack[-1]["children"].append(s)
                else:
                    slices.append(s)
                stack.append(s)
            elif e.type == END:
                if not stack:
                    fail(f"SLICE_END at {ts} on track {uuid} with no slice open")
                s = stack.pop()
                s["dur"] = ts - s["ts"]
                if stack and ts > stack[-1]["ts"] and "dur" in stack[-1]:
                    fail("a child ends after its parent")
            elif e.type == COUNTER:
                counters.setdefault(tracks[uuid].name, []).append([ts, e.counter_value])
        if stack:
            fail(f"{len(stack)} slices left open on track {uuid}")
    for s in slices:
        for c in s["children"]:
            if c["ts"] < s["ts"] or c["ts"] + c["dur"] > s["ts"] + s["dur"]:
                fail(f"child {c['name']} outside its parent {s['name']}")
    for v in counters.values():
        v.sort()
    json.dump({"slices": slices, "counters": counters}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
