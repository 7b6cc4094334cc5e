#!/usr/bin/env python3
"""Where a harness's threads wait for a CPU during the overhead bench's turns.

Reads a `perf` trace of `cargo bench --bench overhead` run with
`KARTA_OVERHEAD_MARKERS=1` (each timed turn is marked at its start and end by
a `kill(5000000 + code, 0)`; code 2 × route index, + 1 at the end), recorded
with:

    KARTA_OVERHEAD_MARKERS=1 KARTA_OVERHEAD_ROUNDS=120 KARTA_OVERHEAD_PROCESSES=6 \\
      perf record -a -o trace.data \\
        -e sched:sched_switch -e sched:sched_waking -e sched:sched_wakeup \\
        -e sched:sched_wakeup_new -e sched:sched_migrate_task \\
        -e sched:sched_process_fork -e syscalls:sys_enter_kill \\
        -- target/release/deps/overhead-<hash> --bench zzz

then `scripts/sched_waits.py trace.data`. For each route (Karta, bare CLI)
it prints, as means per timed turn:

- how long the turn's `claude` process had a thread runnable but not running,
  and how much of that while a CPU sat idle (a scheduler that spreads
  wake-ups would have run it there);
- what the CPUs were running meanwhile (`claude` itself, this bench's
  threads — for Karta the host's —, other processes, idle);
- which of `claude`'s threads waited with a CPU idle;
- its main thread's wake-ups: how many landed on the waker's CPU, and on a
  busy CPU while the other was idle;
- how often each of its threads was put on a CPU, and migrations.

Only the scheduler's own events are used: no sampling, no guesses.
"""

import collections
import re
import statistics
import subprocess
import sys

MARKER_BASE = 5_000_000
ROUTES = {0: "karta", 1: "karta_in_process", 2: "bare", 3: "bare_via_gateway", 4: "floor"}

LINE = re.compile(r"^\s*(.*?)\s+(-?\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+\w+:(\w+):\s+(.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")


def load(path):
    """The trace's events, with each thread's process id and name."""
    try:
        done = subprocess.run(
            ["perf", "script", "-i", path, "-F", "comm,pid,tid,cpu,time,event,trace"],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        sys.exit("sched_waits: `perf` is not installed (Debian: linux-perf)")
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
        sys.exit(f"sched_waits: perf cannot read {path}: {reason}")
    text = done.stdout
    events, tgid, comm = [], {}, {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        name, pid, tid, cpu, time, event, rest = m.groups()
        tid = int(tid)
        tgid[tid] = int(pid)
        comm[tid] = name.strip()
        if event == "sys_enter_kill":
            target = re.search(r"pid: (0x[0-9a-f]+)", rest)
            fields = {"code": int(target.group(1), 16) - MARKER_BASE} if target else {}
        else:
            fields = dict(FIELD.findall(rest))
        events.append((float(time), int(cpu), tid, event, fields))
    return events, tgid, comm


def is_marker(event, fields):
    return event == "sys_enter_kill" and 0 <= fields.get("code", -1) < 2 * len(ROUTES)


def analyse(events, tgid, comm):
    bench = next((tgid[tid] for (_, _, tid, ev, f) in events if is_marker(ev, f)), None)
    if bench is None:
        sys.exit(
            "sched_waits: no turn markers in this trace: run the bench with "
            "KARTA_OVERHEAD_MARKERS=1 and record -e syscalls:sys_enter_kill"
        )
    cpus = sorted({cpu for (_, cpu, _, _, _) in events})
    running = {cpu: 0 for cpu in cpus}
    runnable = {}  # thread -> since when it waits for a CPU
    turns, turn, last = [], None, None

    def kind(tid, claude):
        if tid == 0:
            return "idle"
        if tgid.get(tid) == claude:
            return "claude"
        if tgid.get(tid) == bench:
            return "bench"
        return "other"

    for time, cpu, tid, event, fields in events:
        if turn is not None and turn["claude"] is not None and last is not None:
            span = time - last
            waiting = [t for t in runnable if tgid.get(t) == turn["claude"]]
            if waiting:
                states = tuple(sorted(kind(running[c], turn["claude"]) for c in cpus))
                turn["wait"] += span * len(waiting)
                turn["busy"][" + ".join(states)] += span
                if "idle" in states:
                    turn["wait_idle"] += span
                    for t in waiting:
                        turn["waiters"][re.sub(r"\d+$", "", comm.get(t, "?"))] += span
        last = time
        if is_marker(event, fields):
            code = fields["code"]
            if code % 2 == 0:
                turn = {
                    "route": ROUTES[code // 2],
                    "start": time,
                    "claude": None,
                    "wait": 0.0,
                    "wait_idle": 0.0,
                    "busy": collections.Counter(),
                    "waiters": collections.Counter(),
                    "runs": collections.Counter(),
                    "wakeups": collections.Counter(),
                    "migrations": 0,
                }
            elif turn is not None:
                turn["length"] = time - turn["start"]
                if turn["claude"] is not None:
                    turns.append(turn)
                turn = None
            continue
        if event in ("sched_waking", "sched_wakeup_new"):
            runnable.setdefault(int(fields["pid"]), time)
        elif event == "sched_wakeup" and turn is not None:
            woken, target = int(fields["pid"]), int(fields["target_cpu"])
            if woken == turn["claude"]:
                others_idle = all(running[c] == 0 for c in cpus if c != target)
                turn["wakeups"]["all"] += 1
                turn["wakeups"]["on the waker's CPU"] += target == cpu
                turn["wakeups"]["onto a busy CPU, another idle"] += (
                    running[target] != 0 and others_idle
                )
        elif event == "sched_migrate_task" and turn is not None:
            if tgid.get(int(fields["pid"])) == turn["claude"]:
                turn["migrations"] += 1
        elif event == "sched_switch":
            prev, nxt = int(fields["prev_pid"]), int(fields["next_pid"])
            running[cpu] = nxt
            if fields["prev_state"].startswith("R") and prev != 0:
                runnable[prev] = time
            runnable.pop(nxt, None)
            if turn is not None and comm.get(tgid.get(nxt), "").startswith("claude"):
                if turn["claude"] is None and tgid.get(nxt) != bench:
                    turn["claude"] = tgid[nxt]
                if tgid.get(nxt) == turn["claude"]:
                    turn["runs"][re.sub(r"\d+$", "", comm.get(nxt, "?"))] += 1
    return turns


def report(turns):
    by_route = collections.defaultdict(list)
    for turn in turns:
        by_route[turn["route"]].append(turn)
    for route, group in by_route.items():
        n = len(group)

        def per_turn(counter_key):
            total = collections.Counter()
            for turn in group:
                total.update(turn[counter_key])
            return total

        ms = lambda seconds: f"{1000 * seconds / n:.2f}"
        print(f"{route}: {n} turns, median {1000 * statistics.median(t['length'] for t in group):.2f} ms")
        print(
            f"  claude's threads runnable, not running: {ms(sum(t['wait'] for t in group))} ms a turn "
            f"(thread-summed); with a CPU idle: {ms(sum(t['wait_idle'] for t in group))} ms"
        )
        print("  the CPUs meanwhile:", ", ".join(f"{k} {ms(v)}" for k, v in per_turn("busy").most_common(6)))
        print("  waiting with a CPU idle:", ", ".join(f"{k} {ms(v)}" for k, v in per_turn("waiters").most_common(6)))
        wakeups = per_turn("wakeups")
        total = wakeups.pop("all", 0) or 1
        print(
            f"  main thread: {total / n:.1f} wake-ups a turn; "
            + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in wakeups.items())
        )
        print(
            "  put on a CPU a turn:",
            ", ".join(f"{k} {v / n:.1f}" for k, v in per_turn("runs").most_common(6)),
            f"; migrations {sum(t['migrations'] for t in group) / n:.1f}",
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    report(analyse(*load(sys.argv[1])))
