"""Build gslb/data/world-110m.json, the country outlines the status page draws its map from.

Source: Natural Earth 1:110m Admin 0 countries (public domain), as the TopoJSON file
`countries-110m.json` of the npm package `world-atlas` 2.0.2 (Natural Earth 4.1.0), and the
ISO 3166-1 table of the PyPI package `pycountry` for numeric → alpha-2 codes. Rebuild:

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    pip download --no-deps pycountry && unzip pycountry-*.whl 'pycountry/databases/*'
    python geodb/build_world.py package/countries-110m.json \
        pycountry/databases/iso3166-1.json gslb/data/world-110m.json

The output holds one SVG path per country in an equirectangular projection (x = longitude,
y = latitude, SCALE units per degree, latitudes TOP..BOTTOM: Antarctica is left out, nobody
asks DNS from there), rounded to a tenth of a unit and with repeated points dropped.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

SCALE = 2  # SVG units per degree
TOP, BOTTOM = 84.0, -58.0  # latitudes kept
# Natural Earth entities without an ISO 3166-1 numeric code, as GeoIP databases code them.
UNCODED = {"Kosovo": "XK", "N. Cyprus": "CY", "Somaliland": "SO"}


def decode_arcs(topology: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """TopoJSON arcs (quantized, delta-encoded) as (longitude, latitude) lists."""
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def ring(arcs: list[list[tuple[float, float]]], indexes: list[int]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for index in indexes:
        arc = arcs[index] if index >= 0 else arcs[~index][::-1]
        # Consecutive arcs share their end point.
        points.extend(arc[1:] if points else arc)
    return points


def project(lon: float, lat: float) -> tuple[float, float]:
    lat = min(max(lat, BOTTOM), TOP)
    return round((lon + 180) * SCALE, 1), round((TOP - lat) * SCALE, 1)


def unwrap(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Make longitudes continuous where a ring crosses the antimeridian (Russia, Fiji)."""
    out = [points[0]]
    shift = 0.0
    for (lon0, _), (lon, lat) in itertools.pairwise(points):
        if lon - lon0 > 180:
            shift -= 360
        elif lon0 - lon > 180:
            shift += 360
        out.append((lon + shift, lat))
    return out


def path(polygons: list[list[list[int]]], arcs: list[list[tuple[float, float]]]) -> str:
    parts = []
    for polygon in polygons:
        for indexes in polygon:
            ring_points = unwrap(ring(arcs, indexes))
            lons = [lon for lon, _ in ring_points]
            # A ring reaching past ±180 after unwrapping is drawn again a world away, so
            # that both sides of the map show their part (the SVG clips the rest).
            copies = [0.0]
            if max(lons) > 180:
                copies.append(-360.0)
            if min(lons) < -180:
                copies.append(360.0)
            for offset in copies:
                points: list[tuple[float, float]] = []
                for lon, lat in ring_points:
                    p = project(lon + offset, lat)
                    if not points or points[-1] != p:
                        points.append(p)
                if len(points) < 3 or all(y == points[0][1] for _, y in points):
                    continue  # vanished at this scale, or entirely beyond the kept latitudes
                text = " ".join(f"{x:g},{y:g}" for x, y in points)
                parts.append(f"M{text}Z")
    return "".join(parts)


def main(countries_json: str, iso_json: str, output: str) -> None:
    topology = json.loads(Path(countries_json).read_text())
    iso = {c["numeric"]: c["alpha_2"] for c in json.loads(Path(iso_json).read_text())["3166-1"]}
    arcs = decode_arcs(topology)
    countries = []
    for geometry in topology["objects"]["countries"]["geometries"]:
        name = geometry["properties"]["name"]
        code = iso.get(geometry.get("id", "")) or UNCODED.get(name)
        if code is None:
            raise SystemExit(f"no ISO code for {name!r}")
        if code == "AQ":
            continue
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        d = path(polygons, arcs)
        if d:
            countries.append({"cc": code, "name": name, "d": d})
    countries.sort(key=lambda c: (c["cc"], c["name"]))
    out = {
        "source": "Natural Earth 1:110m Admin 0 countries 4.1.0 (public domain), "
                  "via the npm package world-atlas 2.0.2; built by geodb/build_world.py",
        "projection": "equirectangular",
        "scale": SCALE,
        "top": TOP,
        "bottom": BOTTOM,
        "width": 360 * SCALE,
        "height": round((TOP - BOTTOM) * SCALE),
        "countries": countries,
    }
    Path(output).write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"{output}: {len(countries)} countries, {Path(output).stat().st_size} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
