#!/usr/bin/env python3
"""Summarises bench/vs-dovecot.sh's runs: a Markdown table and an SVG chart.

Reads the pop3bench JSON files of every run (SERVER-PART-REPEAT.json, PART being `main`
for sessions/retr/bigbox or `idle`) and the index the script keeps (load averages, exit
statuses, warnings in the server logs). For each figure: the median over the runs, the range
(min-max), the ratio pop3d/Dovecot of the medians and whether the issue's target is met.
Python 3 standard library only.
"""

import argparse
import glob
import html
import json
import os
import re
import statistics
import sys
from datetime import datetime, timezone

SERVERS = ("pop3d", "dovecot")

# (key, label, part, workload, transport, metric, unit, better, target)
# target: (ratio, "ge"|"le") on pop3d/Dovecot, or None.
FIGURES = [
    ("sessions_plain", "Sessions/s, plain", "main", "sessions", "plain",
     "sessions_per_s", "/s", "higher", (3.0, "ge")),
    ("sessions_stls", "Sessions/s, STLS", "main", "sessions", "stls",
     "sessions_per_s", "/s", "higher", (2.0, "ge")),
    ("sessions_tls", "Sessions/s, implicit TLS", "main", "sessions", "tls",
     "sessions_per_s", "/s", "higher", (2.0, "ge")),
    ("retr_plain", "RETR, plain", "main", "retr", "plain",
     "mb_per_s_median", "MB/s", "higher", (4.0, "ge")),
    ("retr_tls", "RETR, implicit TLS", "main", "retr", "tls",
     "mb_per_s_median", "MB/s", "higher", (3.0, "ge")),
    ("cpu_session_plain", "CPU per session, plain", "main", "sessions", "plain",
     "server_cpu_ms_per_session", "ms", "lower", (0.25, "le")),
    ("cpu_session_stls", "CPU per session, STLS", "main", "sessions", "stls",
     "server_cpu_ms_per_session", "ms", "lower", None),
    ("cpu_session_tls", "CPU per session, TLS", "main", "sessions", "tls",
     "server_cpu_ms_per_session", "ms", "lower", None),
    ("cpu_mb_plain", "CPU per MB sent, plain", "main", "retr", "plain",
     "server_cpu_ms_per_mb", "ms", "lower", (0.2, "le")),
    ("cpu_mb_tls", "CPU per MB sent, TLS", "main", "retr", "tls",
     "server_cpu_ms_per_mb", "ms", "lower", None),
    ("idle_pss", "Memory per idle session (PSS)", "idle", "idle", "plain",
     "pss_kb_per_session", "KB", "lower", (0.05, "le")),
    ("idle_tls_pss", "Memory per idle TLS session (PSS)", "idle", "idle", "tls",
     "pss_kb_per_session", "KB", "lower", None),
    ("bigbox_cold_login", "100k mailbox: login+STAT, cold", "main", "bigbox", "plain",
     "cold_login_stat_s", "s", "lower", None),
    ("bigbox_warm_login", "100k mailbox: login+STAT, warm", "main", "bigbox", "plain",
     "warm_login_stat_s", "s", "lower", (0.25, "le")),
    ("bigbox_cold_uidl", "100k mailbox: UIDL, cold", "main", "bigbox", "plain",
     "cold_uidl_s", "s", "lower", None),
    ("bigbox_warm_uidl", "100k mailbox: UIDL, warm", "main", "bigbox", "plain",
     "uidl_s", "s", "lower", (0.25, "le")),
    ("bigbox_warm_list", "100k mailbox: LIST, warm", "main", "bigbox", "plain",
     "list_s", "s", "lower", None),
]

# Above this share of the machine used by other processes, a run is called disturbed
# (pop3bench flags the same threshold).
DISTURBED = 0.10


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True, help="folder of the runs' JSON files")
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-svg", required=True)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--command", required=True, help="the command that reproduces this")
    ap.add_argument("--pop3d", default="pop3d")
    ap.add_argument("--dovecot", default="Dovecot", help="Dovecot's short name, for labels")
    ap.add_argument("--dovecot-build", help="Dovecot's full version (default --dovecot)")
    ap.add_argument("--os", default="")
    ap.add_argument("--settings", default="", help="KEY=VALUE ... of the run")
    ap.add_argument("--dovecot-config", help="`doveconf -n` output to include")
    ap.add_argument("--elapsed", type=float, help="the script's run time in seconds")
    args = ap.parse_args()

    runs = load_runs(args.runs)
    if not any(runs[s] for s in SERVERS):
        sys.exit("report.py: no runs found in " + args.runs)
    settings = dict(kv.split("=", 1) for kv in args.settings.split() if "=" in kv)
    rows = [summarise(f, runs, settings) for f in FIGURES]
    dovecot_config = None
    if args.dovecot_config and os.path.exists(args.dovecot_config):
        with open(args.dovecot_config) as f:
            dovecot_config = f.read()
    md = markdown(args, runs, rows, settings, dovecot_config)
    with open(args.out_md, "w") as f:
        f.write(md)
    with open(args.out_svg, "w") as f:
        f.write(svg(args, runs, rows, settings))
    with open(args.out_json, "w") as f:
        json.dump(
            {
                "command": args.command,
                "pop3d": args.pop3d,
                "dovecot": args.dovecot_build or args.dovecot,
                "settings": settings,
                "figures": rows,
                "runs": {s: runs[s] for s in (*SERVERS, "disturbed")},
            },
            f,
            indent=1,
        )
        f.write("\n")
    sys.stdout.write(md)


def load_runs(folder):
    """{server: [{"name", "part", "repeat", "json", "busy_before_percent", ...}]}"""
    index = {}
    path = os.path.join(folder, "index.tsv")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) >= 5:
                    index[fields[0]] = {
                        "busy_before_percent": fields[1],
                        "load_average_after": fields[2],
                        "status": int(fields[3] or 0),
                        "server_log_warnings": int(fields[4] or 0),
                    }
    runs = {s: [] for s in SERVERS}
    runs["disturbed"] = []
    for file in sorted(glob.glob(os.path.join(folder, "*.disturbed*.json"))):
        with open(file) as f:
            data = json.load(f)
        runs["disturbed"].append({"name": os.path.basename(file)[: -len(".json")], "json": data})
    for file in sorted(glob.glob(os.path.join(folder, "*.json"))):
        name = os.path.basename(file)[: -len(".json")]
        m = re.fullmatch(r"(pop3d|dovecot)-(main|idle)-(\d+)", name)
        if not m:
            continue
        with open(file) as f:
            data = json.load(f)
        run = {"name": name, "part": m.group(2), "repeat": int(m.group(3)), "json": data}
        run.update(index.get(name, {}))
        runs[m.group(1)].append(run)
    return runs


def metric(run, workload, transport, name):
    for r in run["json"].get("results", []):
        if r.get("workload") == workload and r.get("transport") == transport:
            v = r.get("metrics", {}).get(name)
            return v if isinstance(v, (int, float)) else None
    return None


def summarise(figure, runs, settings):
    key, label, part, workload, transport, name, unit, better, target = figure
    if "bigbox" in settings and settings["bigbox"].isdigit():
        n = int(settings["bigbox"])
        label = label.replace("100k", f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}")
    row = {"key": key, "label": label, "unit": unit, "better": better}
    for server in SERVERS:
        values = [
            v
            for run in runs[server]
            if run["part"] == part
            for v in [metric(run, workload, transport, name)]
            if v is not None
        ]
        row[server] = {
            "values": values,
            "median": statistics.median(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
        }
    p, d = row["pop3d"]["median"], row["dovecot"]["median"]
    row["ratio"] = p / d if p is not None and d else None
    row["target"] = target
    if target and row["ratio"] is not None:
        goal, how = target
        row["met"] = row["ratio"] >= goal if how == "ge" else row["ratio"] <= goal
    else:
        row["met"] = None
    return row


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def display(value, unit):
    """How to show values of the size of `value`: (factor, digits, suffix)."""
    if unit == "s":
        if value >= 1:
            return 1, 2, " s"
        return 1e3, (0 if value >= 0.01 else 2), " ms"
    if unit == "ms":
        return 1, (2 if value >= 0.1 else 3), " ms"
    if unit == "/s":
        return 1, 0, "/s"
    if unit == "MB/s":
        return 1, 0, " MB/s"
    if unit == "KB":
        return 1, (0 if value >= 100 else 1), " KB"
    return 1, 3, " " + unit


def number(value, factor, digits):
    return f"{value * factor:,.{digits}f}"


def fmt(value, unit):
    if value is None:
        return "n/a"
    factor, digits, suffix = display(value, unit)
    return number(value, factor, digits) + suffix


def fmt_range(cell, unit):
    """The median with its unit, then the range in the same unit: 1,269/s (1,161–1,377)."""
    if cell["median"] is None:
        return "n/a"
    factor, digits, suffix = display(cell["median"], unit)
    text = number(cell["median"], factor, digits) + suffix
    if len(cell["values"]) > 1:
        low, high = (number(cell[k], factor, digits) for k in ("min", "max"))
        text += f" ({low}–{high})"
    return text


def fmt_ratio(ratio):
    if ratio is None:
        return "n/a"
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.3g}×"


def fmt_target(target):
    if not target:
        return ""
    goal, how = target
    fractions = {0.25: "¼", 0.2: "⅕", 0.05: "1/20"}
    if how == "ge":
        return f"≥ {goal:g}×"
    return f"≤ {fractions.get(goal, f'{goal:g}×')}"


def machine(runs):
    for server in SERVERS:
        for run in runs[server]:
            m = run["json"].get("machine")
            if m:
                return m
    return {}


def tls_negotiated(runs, server):
    seen = {run["json"].get("tls_negotiated") for run in runs[server]} - {None}
    return ", ".join(sorted(seen)) or "n/a"


def idle_tls_detail(runs):
    """How many implicit-TLS idle sessions each server held, the fewest over its runs."""
    counts = [
        metric(r, "idle", "tls", "sessions")
        for server in ("pop3d", "dovecot")
        for r in runs[server]
        if r["part"] == "idle"
    ]
    counts = [int(c) for c in counts if c is not None]
    if not counts:
        return ""
    return (
        f" Then {min(counts):,} implicit-TLS sessions on each, opened while the plain ones "
        "are held, so their memory is what TLS sessions add."
    )


def idle_detail(runs, server):
    sessions = [metric(r, "idle", "plain", "sessions") for r in runs[server] if r["part"] == "idle"]
    procs = [
        metric(r, "idle", "plain", "server_processes_during")
        for r in runs[server]
        if r["part"] == "idle"
    ]
    sessions = [int(s) for s in sessions if s is not None]
    procs = [int(p) for p in procs if p is not None]
    text = f"{min(sessions):,}" if sessions else "n/a"
    if sessions and max(sessions) != min(sessions):
        text += f"–{max(sessions):,}"
    if procs:
        text += f" sessions, {max(procs):,} processes"
    else:
        text += " sessions, 1 process"
    return text


def worst_share(run):
    """The largest share of the machine other processes used in any workload of a run."""
    shares = [
        u.get("other_processes_share")
        for u in (run["json"].get("cpu_use") or {}).values()
        if isinstance(u, dict) and u.get("other_processes_share") is not None
    ]
    return max(shares) if shares else None


def disturbance(runs):
    return [(run["name"], worst_share(run)) for server in SERVERS for run in runs[server]]


def markdown(args, runs, rows, settings, dovecot_config):
    m = machine(runs)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    repeats = settings.get("repeats", "?")
    out = []
    w = out.append
    w(f"## pop3d vs {args.dovecot}\n")
    w(
        f"Machine: {m.get('nproc', '?')} CPUs, {m.get('cpu', '?')}, Linux {m.get('kernel', '?')}"
        + (f", {args.os}" if args.os else "")
        + f", TCP congestion control {m.get('tcp_congestion', '?')}"
        + f". {args.pop3d}, {args.dovecot_build or args.dovecot}. {now}"
        + (f"; the script took {args.elapsed / 60:.1f} min." if args.elapsed else ".")
        + "\n"
    )
    w(f"Reproduce (from the repository root): `{args.command}`\n")
    w(
        f"{repeats} runs per server, the order alternating, each on a freshly started server; "
        "medians, with the range over the runs in parentheses; the ratio is pop3d/Dovecot of "
        f"the medians. Sessions: {settings.get('clients', '?')} clients, each looping over "
        "connect, [STLS,] USER/PASS, STAT, QUIT for "
        f"{settings.get('seconds', '?')} s per transport, a full TLS handshake every session "
        f"({tls_negotiated(runs, 'pop3d')} on both). RETR: one client downloads the "
        f"{settings.get('messages', '?')}-message mixed mailbox with pipelined RETRs, "
        f"{settings.get('rounds', '?')} times per run, every message checked against its file. "
        f"Idle: pop3d {idle_detail(runs, 'pop3d')}; Dovecot {idle_detail(runs, 'dovecot')}."
        f"{idle_tls_detail(runs)} "
        "CPU: utime+stime of the server's whole process tree from /proc, ended processes "
        "included. MB = 10^6 octets. Both servers share the 2 CPUs with the client.\n"
    )
    w("| figure | better | pop3d | Dovecot | pop3d/Dovecot | target | met |")
    w("|---|---|---|---|---|---|---|")
    for r in rows:
        met = {True: "✅ yes", False: "❌ no", None: ""}[r["met"]]
        w(
            f"| {r['label']} | {'↑' if r['better'] == 'higher' else '↓'} "
            f"| {fmt_range(r['pop3d'], r['unit'])} | {fmt_range(r['dovecot'], r['unit'])} "
            f"| **{fmt_ratio(r['ratio'])}** | {fmt_target(r['target'])} | {met} |"
        )
    w("")
    targets = [r for r in rows if r["met"] is not None]
    met = [r for r in targets if r["met"]]
    w(f"Targets met: {len(met)} of {len(targets)}"
      + (f"; not met: {'; '.join(r['label'] for r in targets if not r['met'])}." if len(met) < len(targets) else ".")
      + "\n")

    # How much else ran on the machine meanwhile.
    dist = disturbance(runs)
    shares = [s for _, s in dist if s is not None]
    if shares:
        noisy = [f"{n} ({s:.0%})" for n, s in dist if s is not None and s > DISTURBED]
        w(
            f"Load from other processes (share of the machine, worst workload of each run): "
            f"median {statistics.median(shares):.0%}, max {max(shares):.0%}"
            + (f"; runs above {DISTURBED:.0%}: {', '.join(noisy)}." if noisy else ".")
            + "\n"
        )
    redone = [f"{r['name'].split('.')[0]} ({worst_share(r) or 0:.0%})" for r in runs["disturbed"]]
    if redone:
        w(
            f"Redone because other processes used over {DISTURBED:.0%} of the machine meanwhile "
            f"(left out of the medians, kept in results.json): {', '.join(redone)}.\n"
        )
    failures = [
        run["name"] for s in SERVERS for run in runs[s] if run.get("status", 0) != 0
    ]
    if failures:
        w(f"**pop3bench reported errors in: {', '.join(failures)}** (see the runs' logs).\n")
    uncounted = [
        metric(run, "retr", "plain", "list_sizes_without_added_crlf")
        for run in runs["dovecot"]
        if run["part"] == "main"
    ]
    uncounted = [int(u) for u in uncounted if u]
    if uncounted:
        w(
            f"Dovecot's LIST leaves out the CRLF that RETR adds to the {max(uncounted)} "
            "messages without a final line end (pop3d counts it); the content is identical, "
            "checked by XXH3-128, and pop3bench tolerates exactly this difference.\n"
        )
    if dovecot_config:
        w("<details><summary>Dovecot's configuration (<code>doveconf -n</code>)</summary>\n")
        w("```text")
        w(dovecot_config.rstrip())
        w("```\n</details>\n")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The chart
# ---------------------------------------------------------------------------------------------

COLOURS = {"pop3d": "#e8731a", "dovecot": "#8a94a6"}


def svg(args, runs, rows, settings):
    m = machine(runs)
    panels = [
        ("Throughput: higher is better", [r for r in rows if r["better"] == "higher"]),
        ("Cost: CPU, memory, time. Lower is better", [r for r in rows if r["better"] == "lower"]),
    ]
    width = 980
    label_w = 250
    bar_x = label_w + 10
    bar_w = 470
    bar_h = 13
    row_h = 2 * bar_h + 14
    top = 96
    parts = []
    y = top
    for title, panel_rows in panels:
        panel_rows = [r for r in panel_rows if r["ratio"] is not None]
        if not panel_rows:
            continue
        # Room for every bar and every target mark.
        scale_max = max(
            [1.0] + [r["ratio"] for r in panel_rows] + [r["target"][0] for r in panel_rows if r["target"]]
        )
        scale_max = nice_ceiling(scale_max)
        unit_px = bar_w / scale_max
        parts.append(text(14, y + 4, title, size=15, weight="bold"))
        y += 16
        grid_top = y
        height = len(panel_rows) * row_h
        for tick in ticks(scale_max):
            x = bar_x + tick * unit_px
            style = 'stroke="#555"' if tick == 1 else 'stroke="#ddd" stroke-dasharray="3,3"'
            parts.append(
                f'<line x1="{x:.1f}" y1="{grid_top}" x2="{x:.1f}" y2="{grid_top + height}" '
                f'{style} stroke-width="1"/>'
            )
            parts.append(text(x, grid_top + height + 13, f"{tick:g}×", size=11, anchor="middle",
                              fill="#555"))
        for r in panel_rows:
            mid = y + row_h / 2 - 2
            parts.append(text(label_w, mid - 3, r["label"], size=12.5, anchor="end"))
            target = fmt_target(r["target"])
            sub = f"pop3d/Dovecot {fmt_ratio(r['ratio'])}"
            if target:
                sub += f", target {target} " + ("✓" if r["met"] else "✗")
            parts.append(text(label_w, mid + 12, sub, size=11, anchor="end",
                              fill=("#1a7f37" if r["met"] else "#c62828" if r["met"] is False
                                    else "#555")))
            for i, server in enumerate(("pop3d", "dovecot")):
                by = y + 4 + i * (bar_h + 2)
                ratio = r["ratio"] if server == "pop3d" else 1.0
                length = max(ratio * unit_px, 1.5)
                parts.append(
                    f'<rect x="{bar_x}" y="{by}" width="{length:.1f}" height="{bar_h}" '
                    f'fill="{COLOURS[server]}"/>'
                )
                value = fmt(r[server]["median"], r["unit"])
                name = "pop3d" if server == "pop3d" else "Dovecot"
                parts.append(text(bar_x + length + 5, by + bar_h - 2.5, f"{name} {value}", size=11))
            if r["target"]:
                goal = r["target"][0]
                tx = bar_x + goal * unit_px
                parts.append(
                    f'<line x1="{tx:.1f}" y1="{y + 1}" x2="{tx:.1f}" y2="{y + bar_h + 7}" '
                    'stroke="#1a1a1a" stroke-width="2" stroke-dasharray="2,2"/>'
                )
            y += row_h
        y += 34
    # Legend and caption.
    legend_y = 68
    legend, x = [], bar_x
    for colour, name in ((COLOURS["pop3d"], args.pop3d), (COLOURS["dovecot"], f"{args.dovecot} = 1×")):
        legend.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>')
        legend.append(text(x + 17, legend_y, name, size=12))
        x += 17 + text_width(name, 12) + 24
    legend.append(
        f'<line x1="{x + 4}" y1="{legend_y - 11}" x2="{x + 4}" y2="{legend_y + 2}" '
        'stroke="#1a1a1a" stroke-width="2" stroke-dasharray="2,2"/>'
    )
    legend.append(text(x + 10, legend_y, "the issue's target for pop3d", size=12))
    caption = (
        f"{m.get('nproc', '?')} CPUs, {m.get('cpu', '?')}, Linux {m.get('kernel', '?')} "
        f"({m.get('tcp_congestion', '?')}); "
        f"medians of {settings.get('repeats', '?')} runs each; bars normalised to Dovecot = 1, "
        "labelled with the absolute values"
    )
    height = y + 10
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        text(14, 24, f"{args.pop3d} vs {args.dovecot}: POP3 on loopback", size=17, weight="bold"),
        text(14, 44, caption, size=11.5, fill="#555"),
        text(width - 14, height - 8, f"reproduce: {args.command}", size=10.5, anchor="end",
             fill="#555"),
    ]
    return "\n".join(head + legend + parts + ["</svg>"]) + "\n"


def text(x, y, s, size=12, anchor="start", weight="normal", fill="#1a1a1a"):
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}">{html.escape(s)}</text>'
    )


def text_width(s, size):
    """A generous estimate of a Helvetica string's width, for laying out the legend."""
    return len(s) * size * 0.6


def nice_ceiling(x):
    for step in (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 100):
        if x <= step:
            return step
    return x


def ticks(scale_max):
    step = 0.25 if scale_max <= 1.5 else 0.5 if scale_max <= 3 else 1 if scale_max <= 8 else 5
    out, t = [], 0.0
    while t <= scale_max + 1e-9:
        out.append(round(t, 2))
        t += step
    return out


if __name__ == "__main__":
    main()
