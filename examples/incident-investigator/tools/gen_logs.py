#!/usr/bin/env python3
"""Writes a deterministic service log for the incident investigator.

    python3 tools/gen_logs.py [--lines N] [--seed S] [--out data/app.log]

One line per request:

    2025-03-14T09:00:00.000Z service=checkout level=ERROR latency_ms=812 status=502 msg="payment gateway timeout"

From the middle of the log on, `payments` starts timing out and `checkout`
fails with it: the incident the example app is about. The same arguments
always give the same bytes (the tests compare tool answers on it).
"""

import argparse
import random

SERVICES = ["checkout", "payments", "catalog", "auth", "search"]
ERRORS = {
    "checkout": ["payment gateway timeout", "cart not found", "inventory lock failed"],
    "payments": ["upstream 504 from acquirer", "card declined", "idempotency key reused"],
    "catalog": ["product not found", "cache miss storm"],
    "auth": ["token expired", "invalid signature"],
    "search": ["index shard unavailable", "query timeout"],
}


def line(rng, i, lines):
    service = SERVICES[rng.randrange(len(SERVICES))]
    incident = i > lines // 2 and service in ("payments", "checkout")
    p_error = 0.35 if incident else 0.02
    latency = int(rng.expovariate(1 / (900 if incident else 80)))
    seconds = i * 3600 // max(lines, 1)
    stamp = "2025-03-14T%02d:%02d:%02d.000Z" % (9 + seconds // 3600, seconds // 60 % 60, seconds % 60)
    if rng.random() < p_error:
        errors = ERRORS[service]
        msg = errors[0] if incident else errors[rng.randrange(len(errors))]
        status = 502 if incident else 500
        return f'{stamp} service={service} level=ERROR latency_ms={latency} status={status} msg="{msg}"'
    return f'{stamp} service={service} level=INFO latency_ms={latency} status=200 msg="ok"'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="data/app.log")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as out:
        for i in range(args.lines):
            out.write(line(rng, i, args.lines) + "\n")


if __name__ == "__main__":
    main()
