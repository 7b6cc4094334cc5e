"""Prints the orders in a CSV file as a Markdown table (uses `tabulate`,
installed by the app's setup script)."""

import argparse
import csv

from tabulate import tabulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv_file")
    parser.add_argument("--status", help="only orders with this status")
    args = parser.parse_args()
    with open(args.csv_file, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if args.status:
        rows = [r for r in rows if r.get("status") == args.status]
    print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
