"""Check Helm values against the zero-to-jupyterhub chart's schema, as `helm` would.

Helm merges the user's values over the chart's values.yaml (a null deletes a
default) and validates the result against values.schema.json/yaml. The chart is
not part of this repository; point this at a checkout of it:

    python -m sac_testing.z2jh CHART_DIR hub_config/z2jh-values.yaml

where CHART_DIR holds the chart's values.yaml and values.schema.yaml (the
`jupyterhub/` folder of jupyterhub/zero-to-jupyterhub-k8s). Prints each
violation and exits non-zero if there are any.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml


def helm_merge(defaults: Any, values: Any) -> Any:
    """``values`` over ``defaults`` as Helm coalesces them: maps merge, a null deletes."""
    if not (isinstance(defaults, dict) and isinstance(values, dict)):
        return values
    merged = dict(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def violations(
    schema: dict[str, Any], defaults: dict[str, Any], *values: dict[str, Any]
) -> list[str]:
    merged = defaults
    for layer in values:
        merged = helm_merge(merged, layer)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    chart = Path(argv[0])
    schema_path = next(
        (chart / n for n in ("values.schema.yaml", "values.schema.json") if (chart / n).exists()),
        None,
    )
    if schema_path is None:
        print(f"no values.schema.yaml or values.schema.json in {chart}", file=sys.stderr)
        return 2
    schema = yaml.safe_load(schema_path.read_text())
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    layers = [yaml.safe_load(Path(p).read_text()) for p in argv[1:]]
    found = violations(schema, defaults, *layers)
    for line in found:
        print(line)
    print(f"{len(found)} violation(s) of {schema_path}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
