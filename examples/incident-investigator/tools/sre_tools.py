#!/usr/bin/env python3
"""sre_tools: a zero-dependency MCP server over stdio for the service logs.

    python3 tools/sre_tools.py        (JSON-RPC 2.0, one message per line)

Reads every `data/*.log` relative to its working directory. Tools:

- error_rate(service)        share of the service's requests that failed
- top_errors(limit, service) the most frequent error messages
- slow_requests(threshold_ms, service, limit)  requests slower than a threshold

Only the standard library, so Karta can compile it into a WebAssembly
component (and run it as a plain process where it cannot).
"""

import glob
import json
import re
import sys
from collections import Counter

PROTOCOL_VERSION = "2025-06-18"
LINE = re.compile(
    r'^(?P<ts>\S+) service=(?P<service>\S+) level=(?P<level>\S+) '
    r'latency_ms=(?P<latency>\d+) status=(?P<status>\d+) msg="(?P<msg>[^"]*)"'
)

TOOLS = [
    {
        "name": "error_rate",
        "description": "Share of a service's requests that failed (level=ERROR) in data/*.log.",
        "inputSchema": {
            "type": "object",
            "properties": {"service": {"type": "string", "description": "e.g. checkout"}},
            "required": ["service"],
        },
    },
    {
        "name": "top_errors",
        "description": "The most frequent error messages in data/*.log, optionally for one service.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
                "service": {"type": "string"},
            },
        },
    },
    {
        "name": "slow_requests",
        "description": "Requests slower than threshold_ms in data/*.log, slowest first.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "threshold_ms": {"type": "integer", "minimum": 0},
                "service": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            },
            "required": ["threshold_ms"],
        },
    },
]


def records():
    for path in sorted(glob.glob("data/*.log")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = LINE.match(line)
                if m:
                    yield m


def error_rate(args):
    service = str(args["service"])
    total = errors = 0
    for r in records():
        if r["service"] == service:
            total += 1
            errors += r["level"] == "ERROR"
    rate = round(errors / total, 4) if total else 0.0
    return {"service": service, "requests": total, "errors": errors, "error_rate": rate}


def top_errors(args):
    limit = max(1, min(int(args.get("limit", 5)), 100))
    service = args.get("service")
    counts = Counter()
    for r in records():
        if r["level"] == "ERROR" and (service is None or r["service"] == service):
            counts[(r["service"], r["msg"])] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {
        "errors": [{"service": s, "message": m, "count": c} for (s, m), c in ranked],
    }


def slow_requests(args):
    threshold = int(args["threshold_ms"])
    limit = max(1, min(int(args.get("limit", 10)), 100))
    service = args.get("service")
    slow = []
    for r in records():
        latency = int(r["latency"])
        if latency > threshold and (service is None or r["service"] == service):
            slow.append((latency, r["ts"], r["service"], r["status"]))
    slow.sort(key=lambda s: (-s[0], s[1]))
    return {
        "count": len(slow),
        "slowest": [
            {"latency_ms": l, "timestamp": t, "service": s, "status": int(st)}
            for l, t, s, st in slow[:limit]
        ],
    }


HANDLERS = {"error_rate": error_rate, "top_errors": top_errors, "slow_requests": slow_requests}


def handle(message):
    method = message.get("method")
    if method == "initialize":
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "sre_tools", "version": "1.0.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        params = message.get("params") or {}
        handler = HANDLERS.get(params.get("name"))
        if handler is None:
            raise LookupError("unknown tool: %s" % params.get("name"))
        try:
            result = handler(params.get("arguments") or {})
        except (KeyError, ValueError, TypeError) as e:
            return {"content": [{"type": "text", "text": "bad arguments: %r" % (e,)}], "isError": True}
        return {
            "content": [{"type": "text", "text": json.dumps(result, sort_keys=True)}],
            "structuredContent": result,
            "isError": False,
        }
    raise NotImplementedError(method)


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError as e:
            reply = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": str(e)}}
        else:
            if "id" not in message:
                continue  # a notification (notifications/initialized): no answer
            try:
                reply = {"jsonrpc": "2.0", "id": message["id"], "result": handle(message)}
            except NotImplementedError as e:
                reply = {"jsonrpc": "2.0", "id": message["id"],
                         "error": {"code": -32601, "message": "method not found: %s" % e}}
            except Exception as e:  # a server must answer, whatever failed
                reply = {"jsonrpc": "2.0", "id": message["id"],
                         "error": {"code": -32603, "message": repr(e)}}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
