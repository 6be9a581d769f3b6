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


def annotation(a, strings):
    if a.HasField("string_value_iid"):
        return strings[a.string_value_iid]
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
    # Interned strings, per table, as the sequence defines them (in file
    # order, before any sorting: the trace processor does the same).
    event_names, arg_names, arg_strings = {}, {}, {}
    cleared = False
    for p in trace.packet:
        if p.trusted_packet_sequence_id == 0:
            fail("a packet without a sequence id")
        if p.sequence_flags & pb.TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED:
            cleared = True
        if p.HasField("interned_data"):
            if not cleared:
                fail("interned data before the sequence's state was cleared")
            i = p.interned_data
            event_names.update((e.iid, e.name) for e in i.event_names)
            arg_names.update((e.iid, e.name) for e in i.debug_annotation_names)
            arg_strings.update(
                (e.iid, e.str.decode()) for e in i.debug_annotation_string_values
            )
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            tracks[d.uuid] = d
        elif p.HasField("track_event"):
            e = p.track_event
            if e.track_uuid not in tracks:
                fail(f"an event on undescribed track {e.track_uuid}")
            order += 1
            name = event_names[e.name_iid] if e.HasField("name_iid") else e.name
            args = {
                (arg_names[a.name_iid] if a.HasField("name_iid") else a.name): annotation(
                    a, arg_strings
                )
                for a in e.debug_annotations
            }
            events.setdefault(e.track_uuid, []).append((p.timestamp, order, e, name, args))

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
        for ts, _, e, name, args in evs:
            if e.type == BEGIN:
                s = {
                    "tid": thread_of(uuid),
                    "track": uuid,
                    "name": name,
                    "ts": ts,
                    "depth": len(stack),
                    "args": args,
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
