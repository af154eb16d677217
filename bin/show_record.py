"""Print the newest run record under $CT_HOME (whole, or --brief one-line summary)."""

from __future__ import annotations

import argparse
import json
import sys

from ml.tracking import ct_home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--brief", action="store_true")
    args = parser.parse_args()
    records = sorted(ct_home().glob("runs/*/*/run_record.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        print("    no run record found", file=sys.stderr)
        return 1
    record = json.loads(records[-1].read_text())
    if not args.brief:
        print(json.dumps(record, indent=2))
        return 0
    failed = record.get("failed_gates") or []
    print(f"    status={record['status']} decision={record['decision']} "
          f"challenger=v{record.get('challenger_version')} champion=v{record.get('champion_version')} "
          f"deployment={record['deployment'].get('status')}" + (f" failed_gates={failed}" if failed else ""))
    print(f"    reason: {record['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
