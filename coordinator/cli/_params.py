"""Parameter types of concordctl's commands: `DURATION` (seconds, or with a unit, in
milliseconds) and `ID` (a positive integer id)."""

from __future__ import annotations

import click


class Duration(click.ParamType[int]):
    """A duration > 0: seconds (`10`, `2.5`), or with a unit: `500ms`, `10s`, `5m`, `1h`."""

    name = "DURATION"
    _UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        """The duration in milliseconds."""
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        scale = 1.0
        for unit, factor in self._UNITS:
            if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
                text, scale = text[: -len(unit)], factor
                break
        try:
            ms = round(float(text) * scale * 1000)
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 30, 30s, 500ms, 5m)", param, ctx)
        if ms <= 0:
            self.fail(f"{value!r}: the TTL must be > 0 (leases live 1 s to 1 day)", param, ctx)
        return ms


DURATION = Duration()
ID = click.IntRange(min=1)
