"""Column profile of a CSV file, as Markdown tables (used by the summarise-csv skill).

    python profile_csv.py data.csv [--max-rows 1000000]

Prints shape, per-column type, missing values and distinct values, numeric
statistics with 1.5 IQR outlier counts, and the top values of text columns.
Needs pandas; reads at most --max-rows rows and says so when the file is longer.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd


def load(path: str, max_rows: int) -> tuple[pd.DataFrame, bool]:
    # sep=None sniffs the delimiter (comma, semicolon, tab) with the python engine.
    for encoding in ("utf-8", "latin-1"):
        try:
            frame = pd.read_csv(path, sep=None, engine="python", nrows=max_rows + 1,
                                encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        sys.exit(f"cannot decode {path} as UTF-8 or Latin-1")
    truncated = len(frame) > max_rows
    frame = frame.head(max_rows)
    for column in frame.columns:
        if pd.api.types.is_string_dtype(frame[column]):
            parsed = pd.to_datetime(frame[column], errors="coerce", format="mixed")
            if parsed.notna().mean() > 0.9:
                frame[column] = parsed
    return frame, truncated


def table(rows: list[list[object]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    frame, truncated = load(args.path, args.max_rows)
    print(f"# {args.path}\n")
    print(f"{len(frame):,} rows x {len(frame.columns)} columns"
          + (f" (first {args.max_rows:,} rows only)" if truncated else "")
          + f"; {int(frame.duplicated().sum()):,} duplicated rows\n")
    print(table([[c, frame[c].dtype, int(frame[c].isna().sum()), frame[c].nunique()]
                 for c in frame.columns], ["column", "type", "missing", "distinct"]))
    numeric = frame.select_dtypes("number")
    if not numeric.empty:
        rows = []
        for column in numeric.columns:
            s = numeric[column].dropna()
            q1, q3 = s.quantile(0.25), s.quantile(0.75)
            outliers = int(((s < q1 - 1.5 * (q3 - q1)) | (s > q3 + 1.5 * (q3 - q1))).sum())
            rows.append([column, f"{s.mean():.4g}", f"{s.std():.4g}", f"{s.min():.4g}",
                         f"{q1:.4g}", f"{s.median():.4g}", f"{q3:.4g}", f"{s.max():.4g}",
                         outliers])
        print("\n## Numeric columns\n")
        print(table(rows, ["column", "mean", "std", "min", "25%", "50%", "75%", "max",
                           "outliers (1.5 IQR)"]))
    text = frame.select_dtypes(exclude=["number", "datetime"])
    if not text.empty:
        print("\n## Text columns: top values\n")
        rows = [[c, ", ".join(f"{k} ({v})" for k, v in text[c].value_counts().head(5).items())]
                for c in text.columns]
        print(table(rows, ["column", "top 5"]))


if __name__ == "__main__":
    main()
