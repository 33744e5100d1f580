#!/usr/bin/env python3
"""The operator's side of the demo: reviews every queued schema through the HTTP API.

For each queued review: claim it, then approve it with every column mirrored — the same calls
an operator (or `edgectl`) makes. Each call is printed as the equivalent curl command first.
Runs until stopped, so a schema change the application makes later is reviewed too.
"""
import json
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid

base, token, org, project = sys.argv[1:5]
api = f"{base}/core/api/v1/projects/{project}/edge"
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def call(method, path, body=None, show=True):
    url = f"{api}{path}"
    headers = {"Authorization": f"Bearer {token}", "ORG-ID": org}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = str(uuid.uuid4())
    if show:
        curl = f"curl -s -X {method} '{url}' -H 'Authorization: Bearer $TOKEN' -H 'ORG-ID: {org}'"
        if body is not None:
            curl += f" -H 'Idempotency-Key: {headers['Idempotency-Key']}' -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
        print(f"[operator] $ {curl}", flush=True)
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        answer = json.load(e)
        print(f"[operator]   -> HTTP {e.code}: {answer.get('error')}", flush=True)
        return answer


def columns_of(lineage_id, schema_hash):
    detail = call("GET", f"/lineages/{lineage_id}", show=False)["data"]
    for version in detail["schema_versions"]:
        if version["schema_hash"] == schema_hash:
            cols = version.get("columns") or {}
            return cols.get("columns", cols) if isinstance(cols, dict) else cols
    return []


def report_mirrors():
    lineages = call("GET", "/lineages?limit=100", show=False).get("data") or []
    for lineage in lineages:
        if not lineage.get("mirror_table_name"):
            print(f"[mirror] {lineage['source_table']}: {lineage['status']} "
                  f"({lineage.get('pause_reason')}), {lineage['staged_row_count']} rows staged", flush=True)
            continue
        page = call("GET", f"/lineages/{lineage['id']}/mirror-rows?limit=2", show=False)
        total = (page.get("meta") or {}).get("total")
        rows = (page.get("data") or {}).get("rows") or []
        sample = json.dumps(rows[0]["data"]) if rows else "-"
        print(f"[mirror] {lineage['mirror_table_name']}: {total} rows, "
              f"{lineage['staged_row_count']} staged; e.g. {sample}", flush=True)


seen = set()
tick = 0
while True:
    tick += 1
    if tick % 5 == 0:
        try:
            report_mirrors()
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError) as e:
            print(f"[mirror] (not yet: {e})", flush=True)
    try:
        reviews = call("GET", "/schema-reviews?status=queued", show=False).get("data") or []
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        time.sleep(1)
        continue
    for review in reviews:
        if review["id"] in seen:
            continue
        seen.add(review["id"])
        print(
            f"[operator] review {review['id']}: table {review['source_table']!r} is "
            f"{review['classification']} — {json.dumps(review.get('diff'))}",
            flush=True,
        )
        claimed = call("POST", f"/schema-reviews/{review['id']}/claim", {})
        if claimed.get("ok") != 1:
            continue
        version = claimed["data"]["action_version"]
        actions = [
            {"source_column_name": c["name"], "action": "mirror"}
            for c in columns_of(review["lineage_id"], review["schema_hash"])
        ]
        approved = call(
            "POST",
            f"/schema-reviews/{review['id']}/approve",
            {"action_version": version, "column_actions": actions},
        )
        if approved.get("ok") == 1:
            print(f"[operator]   -> approved; staged rows now replay into the mirror", flush=True)
    time.sleep(1)
