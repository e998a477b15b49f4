"""Render an HTML file in headless Chromium, save a screenshot, and say how much of it was drawn.

    python scripts/render_check.py report.html --out shot.png [--size 1200,900] [--budget-ms 5000]
        [--regions figure-needle,figure-attention]

Chromium runs offline-friendly (no background networking, a throwaway profile) with a virtual
time budget so the page's JavaScript (plotly, circuitsvis) runs before the screenshot. The PNG
is decoded here with ``zlib`` alone, so the check needs no imaging library. The script prints
the fraction of non-white pixels and of strongly coloured pixels: a page whose scripts failed
shows headings and text only, with almost no colour.

With ``--regions``, it first asks Chromium where those elements (by id) lie on the page, then
screenshots the whole page at that height and counts the coloured pixels inside each element:
a figure that did not draw has none, whatever the rest of the page shows.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium_path() -> str | None:
    """The Chromium (or Chrome) executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], html: Path, budget_ms: int, timeout: float) -> subprocess.CompletedProcess:
    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="render-check-") as profile:
        command = [exe, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args]
        return subprocess.run(
            [*command, Path(html).resolve().as_uri()], capture_output=True, text=True, timeout=timeout, check=False
        )


def screenshot(
    html: str | Path, png: str | Path, *, size: tuple[int, int] = (1200, 900), budget_ms: int = 5000, timeout=120.0
) -> Path:
    """Render ``html`` and write a ``size = (width, height)`` screenshot to ``png``."""
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    result = _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}"], Path(html), budget_ms, timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return png


def dump_dom(html: str | Path, *, budget_ms: int = 5000, timeout: float = 120.0) -> str:
    """The page's DOM after its scripts ran (what JavaScript built, as HTML)."""
    return _run(["--dump-dom"], Path(html), budget_ms, timeout).stdout


_BOXES = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const boxes = {};
  for (const id of IDS) {
    const element = document.getElementById(id);
    if (element) {
      const b = element.getBoundingClientRect();
      boxes[id] = [b.left + scrollX, b.top + scrollY, b.right + scrollX, b.bottom + scrollY].map(Math.round);
    }
  }
  const root = document.documentElement;
  boxes["__page__"] = [0, 0, root.scrollWidth, root.scrollHeight];
  const out = document.createElement("pre");
  out.id = "render-check-boxes";
  out.textContent = JSON.stringify(boxes);
  document.body.appendChild(out);
}, 500));
</script>"""


def element_boxes(
    html: str | Path, ids: list[str], *, width: int = 1200, budget_ms: int = 5000, timeout: float = 120.0
) -> dict[str, tuple[int, int, int, int]]:
    """``{id: (left, top, right, bottom)}`` in page pixels for each element found, plus ``"__page__"``.

    The page is laid out in a window ``width`` pixels wide (the height does not change the layout
    of a report). A copy of it with one script added at the end measures the elements after the
    page's own scripts ran; the box of an id not on the page is left out.
    """
    page = Path(html).read_text(encoding="utf-8")
    probe = _BOXES.replace("IDS", json.dumps(ids))
    with tempfile.TemporaryDirectory(prefix="render-boxes-") as folder:
        copy = Path(folder) / "page.html"
        copy.write_text(page.replace("</body>", probe + "</body>") if "</body>" in page else page + probe, "utf-8")
        dom = _run(["--dump-dom", f"--window-size={width},1000"], copy, budget_ms, timeout).stdout
    found = re.search(r'<pre id="render-check-boxes">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError("the page's element boxes were never written: did its scripts fail?")
    return {key: tuple(box) for key, box in json.loads(found.group(1)).items()}


def region_pixels(
    html: str | Path, ids: list[str], png: str | Path, *, width: int = 1200, budget_ms: int = 5000
) -> dict[str, dict[str, int]]:
    """Screenshot the whole page and count, inside each element of ``ids``, its pixels.

    Returns ``{id: {"pixels": area, "non_white": n, "coloured": n}}`` (an id not on the page
    maps to zeros). ``coloured`` pixels have a clear hue (plot ink, not black or grey text).
    """
    boxes = element_boxes(html, ids, width=width, budget_ms=budget_ms)
    height = min(boxes["__page__"][3] + 20, 16000)
    image = read_png(screenshot(html, png, size=(width, height), budget_ms=budget_ms))
    counts = {}
    for key in ids:
        box = boxes.get(key)
        if box is None:
            counts[key] = {"pixels": 0, "non_white": 0, "coloured": 0}
            continue
        rgb = _crop(image, box).astype(int)
        counts[key] = {
            "pixels": int(rgb.shape[0] * rgb.shape[1]),
            "non_white": int((rgb.min(axis=-1) < 235).sum()),
            "coloured": int((rgb.max(axis=-1) - rgb.min(axis=-1) > 40).sum()),
        }
    return counts


def read_png(path: str | Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG to a ``[height, width, channels]`` uint8 array."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise ValueError(f"{path} has no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    channels = {2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"only 8-bit non-interlaced RGB/RGBA PNGs are supported; got {header}")
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    image = np.zeros((height, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for row in range(height):
        kind, line = raw[row, 0], raw[row, 1:]
        if kind == 0:
            out = line.copy()
        elif kind == 1:  # Sub: a running sum along the row, per channel
            out = np.cumsum(line.reshape(width, channels).astype(np.int64), axis=0).astype(np.uint8).ravel()
        elif kind == 2:  # Up
            out = line + prior
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the decoded byte to its left
            out = _sequential(line, prior, channels, paeth=kind == 4)
        else:
            raise ValueError(f"row {row} has unknown PNG filter {kind}")
        image[row], prior = out, out
    return image.reshape(height, width, channels)


def _sequential(line: np.ndarray, prior: np.ndarray, bpp: int, *, paeth: bool) -> np.ndarray:
    out, up = [0] * len(line), prior.tolist()
    for i, x in enumerate(line.tolist()):
        a = out[i - bpp] if i >= bpp else 0
        b = up[i]
        if paeth:
            c = up[i - bpp] if i >= bpp else 0
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        else:
            pred = (a + b) // 2
        out[i] = (x + pred) & 0xFF
    return np.array(out, np.uint8)


def ink_fraction(image: np.ndarray, box: tuple[int, int, int, int] | None = None) -> float:
    """Fraction of pixels in ``box = (left, top, right, bottom)`` that are not near-white."""
    rgb = _crop(image, box)
    return float((rgb.min(axis=-1) < 235).mean())


def coloured_fraction(image: np.ndarray, box: tuple[int, int, int, int] | None = None) -> float:
    """Fraction of pixels in ``box`` with a clear hue (channels differ by more than 40): plot ink, not text."""
    rgb = _crop(image, box).astype(int)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1) > 40).mean())


def _crop(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    rgb = image[..., :3]
    if box is None:
        return rgb
    left, top, right, bottom = box
    return rgb[top:bottom, left:right]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--out", type=Path, default=Path("render-check.png"))
    parser.add_argument("--size", default="1200,900", help="window width,height in pixels")
    parser.add_argument("--budget-ms", type=int, default=5000, help="virtual time for the page's scripts")
    parser.add_argument("--regions", help="comma-separated element ids whose coloured pixels to count")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split(","))
    if args.regions:
        counts = region_pixels(args.html, args.regions.split(","), args.out, width=width, budget_ms=args.budget_ms)
        for key, count in counts.items():
            print(f"#{key}: {count['pixels']} pixels, {count['non_white']} non-white, {count['coloured']} coloured")
        return 0 if all(count["coloured"] > 0 for count in counts.values()) else 1
    png = screenshot(args.html, args.out, size=(width, height), budget_ms=args.budget_ms)
    image = read_png(png)
    print(f"{png}: {image.shape[1]}x{image.shape[0]}")
    print(f"non-white pixels: {ink_fraction(image):.1%}; coloured pixels: {coloured_fraction(image):.1%}")
    return 0 if ink_fraction(image) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
