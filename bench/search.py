"""Offerings search benchmark on one database: `python -m bench.search --db sqlite|postgres`.

Writes its result as JSON to --out (the parent, `python -m bench`, collects it).
"""

import argparse
import json
from pathlib import Path

from . import database


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search")
    parser.add_argument("--db", choices=database.DATABASES, required=True)
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    with database.prepared(args.db) as db:
        from . import _search  # imports models: only once Django is set up

        result = {"database": args.db, "db_options": db.options, **_search.run(quick=args.quick)}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
